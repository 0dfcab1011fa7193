// Mean and median decode step time of llama.cpp (node-llama-cpp's prebuilt build, its CPU or
// its Vulkan backend) with a full KV cache of CONTEXT tokens. Prints one JSON line. Run by
// bench/decode.ts under Node.
// Usage: node step.mjs MODEL.gguf CONTEXT STEPS cpu|vulkan
//
// The cache is filled the way bench/decode.ts fills ours (Session.benchPrefill): with random
// K/V rows, not by a real prefill, which is quadratic and on a CPU driver takes hours at 64K (a
// 4K prefill of the 8B shape ran 16 minutes without finishing). llama.cpp has a door for that:
// a sequence state file (`llama_state_seq_load_file`). We let llama.cpp save one after a short
// real prompt, check that we read its layout exactly (every byte accounted for), and write the
// same layout for CONTEXT - STEPS - 2 cells of random f16 rows; llama.cpp loads it as its own.
// The context is exactly CONTEXT tokens: one more and, at 64K, a layer's K tensor of 8 heads x
// 128 would pass the 128 MiB a CPU driver can bind. One cell stays free: node-llama-cpp shifts
// a full context (re-evaluating all of it) before it would fill the last one.
import { getLlama } from "node-llama-cpp";
import { closeSync, openSync, readFileSync, rmSync, writeSync } from "node:fs";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { cpuThreads } from "./threads.mjs";

const [modelPath, ctxArg, stepsArg, backend] = process.argv.slice(2);
if (backend !== "cpu" && backend !== "vulkan") throw new Error(`backend '${backend}': cpu or vulkan`);
const context = Number(ctxArg);
const steps = Number(stepsArg);
const cells = context - steps - 2;
if (!(cells >= 16)) throw new Error(`context ${context} too small for ${steps} steps`);

const llama = await getLlama({
  gpu: backend === "vulkan" ? "vulkan" : false,
  build: "never",
  logLevel: "error",
});
const model = await llama.loadModel({ modelPath, gpuLayers: backend === "vulkan" ? "max" : 0 });
// node-llama-cpp's default attention path (flash attention off): with it on, a 16K step of the
// TinyLlama shape was slower here (1.6-1.8 s against 1.1-1.4 s, one run each).
const ctx = await model.createContext({
  contextSize: context,
  batchSize: Math.min(512, context),
  threads: cpuThreads,
});
// Ordinary token ids from 3 up, as bench/decode.ts feeds our engine.
const ids = (n) => Array.from({ length: n }, (_, i) => 3 + ((i * 7919) % 250));

/** Median time of the decode steps after the state the sequence holds (first token excluded:
 * it carries the evaluation of the token fed in). */
async function steps_(seq, last, n) {
  const times = [];
  let t = performance.now();
  for await (const _ of seq.evaluate([last], { temperature: 0 })) {
    const now = performance.now();
    times.push(now - t);
    process.stderr.write(`llama.cpp step ${times.length}: ${(now - t).toFixed(1)} ms\n`);
    t = now;
    if (times.length >= n + 1) break;
  }
  // The first step warms up; the mean of the rest is the headline, the median stands beside it.
  const after = times.slice(1);
  const s = [...after].sort((a, b) => a - b);
  return { median: s[Math.floor(s.length / 2)], mean: after.reduce((a, b) => a + b, 0) / after.length };
}

/**
 * The layout of a llama.cpp sequence state file (LLAMA_STATE_SEQ_VERSION 3, one stream, no
 * per-cell extension) as offsets and sizes, read from a file llama.cpp wrote. Throws unless the
 * parts add up to the file's exact size.
 */
function readLayout(bytes) {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let o = 0;
  const u32 = () => (o += 4, v.getUint32(o - 4, true));
  const i32 = () => (o += 4, v.getInt32(o - 4, true));
  const u64 = () => (o += 8, Number(v.getBigUint64(o - 8, true)));
  const magic = u32(), version = u32();
  if (magic !== 0x67677371 || version !== 3) {
    throw new Error(`state file: magic ${magic.toString(16)} version ${version}, expected ggsq 3`);
  }
  const nTokens = u32();
  o += 4 * nTokens;
  if (u32() !== 1) throw new Error("state file: more than one KV stream");
  const nCells = u32();
  if (nCells !== nTokens) throw new Error(`state file: ${nCells} cells for ${nTokens} tokens`);
  for (let i = 0; i < nCells; i++) {
    if (i32() !== i || u32() !== 1) throw new Error(`state file: cell ${i} is not (pos ${i}, 1 seq)`);
    o += 4;
  }
  const vTrans = u32(), nLayer = u32();
  const k = [], val = [];
  for (let l = 0; l < nLayer; l++) {
    const type = i32(), row = u64();
    k.push({ type, row });
    o += row * nCells;
  }
  for (let l = 0; l < nLayer; l++) {
    const type = i32();
    if (vTrans) {
      const el = u32(), width = u32();
      val.push({ type, el, width });
      o += el * width * nCells;
    } else {
      const row = u64();
      val.push({ type, row });
      o += row * nCells;
    }
  }
  if (o !== bytes.byteLength) {
    throw new Error(`state file: layout accounts for ${o} of ${bytes.byteLength} bytes`);
  }
  for (const t of [...k, ...val]) {
    if (t.type !== 1) throw new Error(`state file: KV type ${t.type}, expected f16 (1)`);
  }
  return { vTrans, k, val };
}

/** Writes the layout for `n` cells, tokens `tokens`, K/V rows of random f16 in ±[0.5, 1). */
function writeState(path, layout, tokens) {
  const n = tokens.length;
  const fd = openSync(path, "w");
  try {
    const head = new DataView(new ArrayBuffer(12 + 4 * n + 8 + 12 * n + 8));
    let o = 0;
    const put = (x) => (head.setUint32(o, x >>> 0, true), o += 4);
    put(0x67677371), put(3), put(n);
    for (const t of tokens) put(t);
    put(1), put(n);
    for (let i = 0; i < n; i++) put(i), put(1), put(0);
    put(layout.vTrans), put(layout.k.length);
    writeSync(fd, new Uint8Array(head.buffer));
    // One random block, written over and over: the step's cost does not depend on the values.
    const block = new Uint16Array(1 << 20);
    let s = 12345;
    for (let i = 0; i < block.length; i++) {
      s = (s * 1103515245 + 12345) >>> 0;
      block[i] = ((s >>> 16) & 0x83ff) | 0x3800;
    }
    const bytes = new Uint8Array(block.buffer);
    const fill = (size) => {
      for (let left = size; left > 0; left -= bytes.length) {
        writeSync(fd, bytes, 0, Math.min(left, bytes.length));
      }
    };
    const meta = (parts) => {
      const d = new DataView(new ArrayBuffer(4 * parts.length + 4));
      let p = 0;
      for (const [x, w] of parts) {
        if (w === 8) d.setBigUint64(p, BigInt(x), true);
        else d.setUint32(p, x >>> 0, true);
        p += w;
      }
      writeSync(fd, new Uint8Array(d.buffer, 0, p));
    };
    for (const t of layout.k) meta([[t.type, 4], [t.row, 8]]), fill(t.row * n);
    for (const t of layout.val) {
      if (layout.vTrans) meta([[t.type, 4], [t.el, 4], [t.width, 4]]), fill(t.el * t.width * n);
      else meta([[t.type, 4], [t.row, 8]]), fill(t.row * n);
    }
  } finally {
    closeSync(fd);
  }
}

const dir = mkdtempSync(join(tmpdir(), "hc-llamacpp-"));
try {
  // A short real prompt: compiles the pipelines and gives llama.cpp's own state file to read.
  const warm = ctx.getSequence();
  await warm.evaluateWithoutGeneratingNewTokens(ids(16));
  await warm.saveStateToFile(join(dir, "sample.bin"));
  const layout = readLayout(readFileSync(join(dir, "sample.bin")));
  await steps_(warm, 3, 3);
  warm.dispose();

  const tokens = ids(cells);
  const t0 = performance.now();
  writeState(join(dir, "state.bin"), layout, tokens);
  const seq = ctx.getSequence();
  await seq.loadStateFromFile(join(dir, "state.bin"), { acceptRisk: true });
  const fillMs = performance.now() - t0;
  rmSync(join(dir, "state.bin"));
  if (seq.contextTokens.length !== cells) {
    throw new Error(`loaded ${seq.contextTokens.length} tokens, expected ${cells}`);
  }
  const { median: stepMs, mean: meanMs } = await steps_(seq, tokens[cells - 1], steps);
  seq.dispose();
  console.log(JSON.stringify({ context, cells, fillMs, stepMs, meanMs, threads: ctx.currentThreads }));
} finally {
  rmSync(dir, { recursive: true, force: true });
  await model.dispose();
  await llama.dispose();
}
