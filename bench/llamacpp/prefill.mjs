// Times llama.cpp's prefill of a prompt to its first token (node-llama-cpp's prebuilt build) on
// one model and backend, after a warm-up. Prints one JSON line. Run by bench/prefill.ts.
// Usage: node prefill.mjs MODEL.gguf PROMPT_TOKENS cpu|vulkan
import { getLlama } from "node-llama-cpp";
import { cpuThreads } from "./threads.mjs";

const [modelPath, promptArg, backend] = process.argv.slice(2);
const promptTokens = Number(promptArg);
const contextSize = promptTokens + 16;

const llama = await getLlama({
  gpu: backend === "vulkan" ? "vulkan" : false,
  build: "never",
  logLevel: "error",
});
const model = await llama.loadModel({
  modelPath,
  gpuLayers: backend === "vulkan" ? "max" : 0,
});
const ctx = await model.createContext({
  contextSize,
  batchSize: Math.min(512, contextSize),
  threads: cpuThreads,
});
// The ids bench/prefill.ts feeds our engine.
const prompt = Array.from({ length: promptTokens }, (_, i) => 3 + ((i * 7919) % 4000));

async function run(ids) {
  const seq = ctx.getSequence();
  const t0 = performance.now();
  // The prompt's last batch computes the last token's logits: the first token's time.
  await seq.evaluateWithoutGeneratingNewTokens(ids);
  const ms = performance.now() - t0;
  seq.dispose();
  return ms;
}

await run(prompt.slice(0, 64)); // warm-up
const prefillMs = await run(prompt);
console.log(JSON.stringify({
  backend,
  threads: ctx.currentThreads,
  device: backend === "vulkan" ? (await llama.getGpuDeviceNames()).join(", ") : "CPU",
  prefillMs,
}));
await ctx.dispose();
await model.dispose();
await llama.dispose();
