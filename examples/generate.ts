/**
 * Generates text with the library API and streams it to stdout.
 *
 *   deno run -A examples/generate.ts [model.gguf] [prompt]
 *
 * The model is the first argument, else HC_MODEL, else the default model (downloaded once).
 */
import { loadModel, resolveModelPath } from "../mod.ts";

const [modelArg, ...words] = Deno.args;
const path = await resolveModelPath({ model: modelArg });
const prompt = words.length > 0 ? words.join(" ") : "Once upon a time";

await using model = await loadModel(path);
using session = model.session();
const encoder = new TextEncoder();
const pieces = session.generate(prompt, { maxTokens: 64, temperature: 0 });
for (;;) {
  const r = await pieces.next();
  if (r.done) {
    const s = r.value;
    console.log(
      `\n[${s.completionTokens} tokens, ${
        s.decodeTokensPerSecond.toFixed(1)
      } tok/s, finished: ${s.finishReason}; ` +
        `device KV ${session.stats().deviceKvBytes} bytes on ${model.info().device}]`,
    );
    break;
  }
  await Deno.stdout.write(encoder.encode(r.value.text));
}
