// llama.cpp against itself: teacher-forces a token sequence through each GGUF twice, once as one
// batch (as oracle.mjs does for the fixtures) and once a token at a time (as its greedy
// decoding does), and records the top-1 token and probability at every position of each.
// Runs llama.cpp's CPU backend (node-llama-cpp's prebuilt build).
// Usage: node batching.mjs JOB.json   (JOB: { tokens, vocab, models: [{ name, path }] })
// Prints one JSON object: { name: { batch: [[token, p]...], single: [[token, p]...] } }.
import { readFileSync } from "node:fs";
import { getLlama } from "node-llama-cpp";

const job = JSON.parse(readFileSync(process.argv[2], "utf8"));
const llama = await getLlama({ gpu: false, build: "never", logLevel: "error" });

function top1(map, vocab) {
  const a = new Float64Array(vocab).fill(-Infinity);
  for (const [t, v] of map) a[t] = v;
  let b = 0;
  for (let i = 1; i < vocab; i++) if (a[i] > a[b]) b = i;
  let z = 0;
  for (const v of a) z += Math.exp(v - a[b]);
  return [b, 1 / z];
}

const out = {};
for (const { name, path } of job.models) {
  const model = await llama.loadModel({ modelPath: path, gpuLayers: 0 });
  const runs = {};
  for (const mode of ["batch", "single"]) {
    const ctx = await model.createContext({ contextSize: 256, batchSize: 256 });
    const seq = ctx.getSequence();
    const item = (t) => [t, { generateNext: { logits: true } }];
    const res = [];
    if (mode === "batch") res.push(...await seq.controlledEvaluate(job.tokens.map(item)));
    else for (const t of job.tokens) res.push(...await seq.controlledEvaluate([item(t)]));
    runs[mode] = res.map((r) => top1(r.next.logits, job.vocab));
    seq.dispose();
    await ctx.dispose();
  }
  out[name] = runs;
  await model.dispose();
}
console.log(JSON.stringify(out));
await llama.dispose();
