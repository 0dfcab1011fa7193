// Median decode step time of llama.cpp (node-llama-cpp's prebuilt Vulkan build) after one
// prompt of CONTEXT tokens, full KV cache. A short warm-up compiles the pipelines first, so the
// long prefill runs once. Prints one JSON line. Run by bench/decode.ts under Node.
// Usage: node step.mjs MODEL.gguf CONTEXT STEPS
import { getLlama } from "node-llama-cpp";

const [modelPath, ctxArg, stepsArg] = process.argv.slice(2);
const context = Number(ctxArg);
const steps = Number(stepsArg);

const llama = await getLlama({ gpu: "vulkan", build: "never", logLevel: "error" });
const model = await llama.loadModel({ modelPath, gpuLayers: "max" });
const ctx = await model.createContext({
  contextSize: context + steps + 16,
  batchSize: Math.min(512, context),
});
// Ordinary token ids from 3 up, as bench/decode.ts feeds our engine.
const ids = (n) => Array.from({ length: n }, (_, i) => 3 + ((i * 7919) % 250));

async function decode(prompt, n) {
  const seq = ctx.getSequence();
  const t0 = performance.now();
  await seq.evaluateWithoutGeneratingNewTokens(prompt);
  const prefillMs = performance.now() - t0;
  const times = [];
  let last = performance.now();
  for await (const _ of seq.evaluate([prompt[prompt.length - 1]], { temperature: 0 })) {
    const now = performance.now();
    times.push(now - last);
    last = now;
    if (times.length >= n) break;
  }
  seq.dispose();
  // The first token carries the last prompt token's evaluation: steps are the rest.
  const s = times.slice(1).sort((a, b) => a - b);
  return { prefillMs, stepMs: s[Math.floor(s.length / 2)] };
}

await decode(ids(16), 4);
const r = await decode(ids(context), steps + 1);
console.log(JSON.stringify({ context, prefillMs: r.prefillMs, stepMs: r.stepMs }));
await model.dispose();
await llama.dispose();
