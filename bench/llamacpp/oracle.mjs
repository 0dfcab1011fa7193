// llama.cpp as the oracle for the engine's weight formats: for each GGUF, teacher-forces a token
// sequence and records the two most likely next tokens and their probabilities at every
// position (softmax of llama.cpp's raw logits), then greedily continues a short prompt, with
// the top-2 probability margin of each greedy step. Runs
// llama.cpp's CPU backend (node-llama-cpp's prebuilt build), so no GPU is needed.
// Usage: node oracle.mjs JOB.json   (JOB: { tokens, prompt, greedy, models: [{ name, path }] })
// Prints one JSON object: { llamaCpp, answers: { name: { top, greedy } } }.
import { readFileSync } from "node:fs";
import { getLlama } from "node-llama-cpp";

const job = JSON.parse(readFileSync(process.argv[2], "utf8"));
const llama = await getLlama({ gpu: false, build: "never", logLevel: "error" });

function logitsArray(map, vocab) {
  const a = new Float64Array(vocab).fill(-Infinity);
  for (const [t, v] of map) a[t] = v;
  return a;
}

function top2(logits) {
  let m = -Infinity;
  for (const v of logits) m = Math.max(m, v);
  let z = 0;
  for (const v of logits) z += Math.exp(v - m);
  let a = 0, b = -1;
  for (let i = 1; i < logits.length; i++) {
    if (logits[i] > logits[a]) {
      b = a;
      a = i;
    } else if (b < 0 || logits[i] > logits[b]) b = i;
  }
  const p = (i) => Math.exp(logits[i] - m) / z;
  return [a, +p(a).toFixed(5), b, +p(b).toFixed(5)];
}

const answers = {};
for (const { name, path } of job.models) {
  const model = await llama.loadModel({ modelPath: path, gpuLayers: 0 });
  const size = job.vocab;
  const ctx = await model.createContext({ contextSize: 256, batchSize: 256, sequences: 2 });
  let seq = ctx.getSequence();
  const forced = await seq.controlledEvaluate(
    job.tokens.map((t) => [t, { generateNext: { logits: true } }]),
  );
  const top = forced.map((r) => top2(logitsArray(r.next.logits, size)));
  seq.dispose();
  seq = ctx.getSequence();
  const prompt = job.tokens.slice(0, job.prompt);
  let res = await seq.controlledEvaluate(
    prompt.map((t, i) => i === prompt.length - 1 ? [t, { generateNext: { logits: true } }] : t),
  );
  const greedy = [];
  const greedyMargin = [];
  for (let i = 0; i < job.greedy; i++) {
    const [next, p1, , p2] = top2(logitsArray(res[res.length - 1].next.logits, size));
    greedy.push(next);
    greedyMargin.push(+(p1 - p2).toFixed(5));
    if (i + 1 < job.greedy) {
      res = await seq.controlledEvaluate([[next, { generateNext: { logits: true } }]]);
    }
  }
  seq.dispose();
  answers[name] = { top, greedy, greedyMargin };
  await ctx.dispose();
  await model.dispose();
}
const pkg = JSON.parse(
  readFileSync(new URL("./node_modules/node-llama-cpp/package.json", import.meta.url), "utf8"),
);
console.log(JSON.stringify({ llamaCpp: `node-llama-cpp ${pkg.version}, CPU backend`, answers }));
await llama.dispose();
