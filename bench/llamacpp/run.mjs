// Measures llama.cpp (node-llama-cpp's prebuilt build, its CPU or its Vulkan backend) on one
// model: prefill and greedy decode tokens/s, after a warm-up. Prints one JSON line. Run by
// bench/decode.ts under Node.
// Usage: node run.mjs MODEL.gguf PROMPT_TOKENS DECODE_TOKENS cpu|vulkan [CONTEXT]
import { getLlama } from "node-llama-cpp";
import { cpuThreads } from "./threads.mjs";

const [modelPath, promptArg, decodeArg, backend, ctxArg] = process.argv.slice(2);
if (backend !== "cpu" && backend !== "vulkan") throw new Error(`backend '${backend}': cpu or vulkan`);
const promptTokens = Number(promptArg);
const decodeTokens = Number(decodeArg);
const contextSize = Number(ctxArg ?? promptTokens + decodeTokens + 16);

const llama = await getLlama({
  gpu: backend === "vulkan" ? "vulkan" : false,
  build: "never",
  logLevel: "error",
});
const model = await llama.loadModel({ modelPath, gpuLayers: backend === "vulkan" ? "max" : 0 });
const ctx = await model.createContext({
  contextSize,
  batchSize: Math.min(512, contextSize),
  threads: cpuThreads,
});
const vocab = model.tokens;
// A fixed prompt of ordinary tokens (ids from 3 up), the same one bench/decode.ts feeds us.
const prompt = Array.from({ length: promptTokens }, (_, i) => 3 + ((i * 7919) % 250));

async function run() {
  const seq = ctx.getSequence();
  const t0 = performance.now();
  // Prefill: evaluate the prompt without generating (the first sample is timed as decode).
  await seq.evaluateWithoutGeneratingNewTokens(prompt);
  const t1 = performance.now();
  let n = 0;
  for await (const _ of seq.evaluate([prompt[prompt.length - 1]], { temperature: 0 })) {
    if (++n >= decodeTokens) break;
  }
  const t2 = performance.now();
  seq.dispose();
  return { prefillMs: t1 - t0, decodeMs: t2 - t1, decoded: n };
}

await run(); // warm-up: pipelines compile lazily on first use
const r = await run();
console.log(JSON.stringify({
  device: (await llama.getGpuDeviceNames()).join(", "),
  prefillTokensPerSecond: (promptTokens * 1000) / r.prefillMs,
  decodeTokensPerSecond: (r.decoded * 1000) / r.decodeMs,
  decoded: r.decoded,
  threads: ctx.currentThreads,
  vocab: vocab?.bos ?? null,
}));
await model.dispose();
await llama.dispose();
