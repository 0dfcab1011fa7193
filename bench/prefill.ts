/**
 * `deno task bench:prefill`: prompt prefill speed, the matvec prompt path (8-column matrix-vector
 * kernels) next to the tiled matmul path (src/kernels/matmul.ts), side by side in one run, on a
 * synthetic model with Llama-3.1-8B's attention shape (dim 4096, 32 query / 8 KV heads x 128),
 * 2 layers, FFN 4096, vocabulary 4096. Also, in the same run:
 *  - the device's multiply-add ceiling, from an FMA-only kernel (shaders/fma_peak.comp);
 *  - the GFLOPS of one 4096 x 4096 F16 projection over a 256-token chunk with each kernel, timed
 *    with device timestamps, as a share of that ceiling.
 * A prefill is timed to its first token (Session.complete with maxTokens 1), after a warm-up
 * prompt that compiles the pipelines. Paths alternate, so a noisy machine slows both alike.
 * llama.cpp is not run here (bench/decode.ts measures its prefill at 128 tokens).
 *
 *   deno run -A bench/prefill.ts [--tokens 512,1024] [--types F16,Q8_0,Q4_K] [--write]
 */
import { parseArgs } from "node:util";
import { writeResult } from "./paths.ts";
import { loadModel } from "../mod.ts";
import { GgmlType } from "../src/gguf/types.ts";
import { MatMul } from "../src/kernels/matmul.ts";
import { MatVec } from "../src/kernels/matvec.ts";
import { quantize } from "../src/model/quant/mod.ts";
import type { PromptKernel } from "../src/model/llama.ts";
import { type CommandList, Device, pushLayout } from "../src/vk/mod.ts";
import { writeSyntheticModel } from "../testing/synthetic_model.ts";

const SPEC = {
  dim: 4096,
  nLayers: 2,
  nHeads: 32,
  nKvHeads: 8,
  ffnDim: 4096,
  vocabSize: 4096,
  contextLength: 8192,
  seed: 1,
};

export interface PrefillRow {
  type: string;
  tokens: number;
  matvecMs: number;
  matmulMs: number;
  speedup: number;
}

export interface KernelRow {
  kernel: string;
  gflops: number;
  ofCeiling: number;
}

export interface PrefillResult {
  date: string;
  device: string;
  fmaGflops: number;
  kernels: KernelRow[];
  rows: PrefillRow[];
  table: string;
}

function timed(device: Device, cmd: CommandList): number {
  device.waitSync("compute", cmd.submit());
  const [t0, t1] = cmd.timestamps(2);
  return (t1 - t0) * device.info.timestampPeriodNs / 1e6;
}

/** Median GFLOPS of the FMA-only kernel over `n` submissions. */
function fmaCeiling(device: Device, n = 5): number {
  const push = pushLayout({ iters: "u32" });
  using k = device.kernel("fma_peak", { bindings: 1, push, spec: [64] });
  const groups = 512, iters = 1000;
  using out = device.buffer(groups * 64 * 4);
  using cmd = device.commands();
  cmd.begin().timestamp(0).dispatch(k, [out], push.pack({ iters }), [groups, 1, 1]).timestamp(1)
    .end();
  timed(device, cmd);
  const g = Array.from(
    { length: n },
    () => 2 * 96 * iters * 64 * groups / timed(device, cmd) / 1e6,
  );
  return g.sort((a, b) => a - b)[n >> 1];
}

/** GFLOPS of one 4096 x 4096 F16 projection of `tokens` tokens, each kernel, alternating. */
function kernelGflops(device: Device, tokens = 256, n = 3): { matvec: number; matmul: number } {
  const rows = 4096, cols = 4096;
  const src = new Float32Array(rows * cols);
  for (let i = 0; i < src.length; i++) src[i] = Math.random() - 0.5;
  const wb = quantize(GgmlType.F16, src);
  using w = device.buffer(wb.length);
  device.upload(w, wb);
  using x = device.buffer(tokens * cols * 4);
  device.upload(x, new Float32Array(tokens * cols).map(() => Math.random() - 0.5));
  using y = device.buffer(tokens * rows * 4);
  using mv = new MatVec(device, GgmlType.F16);
  using mm = new MatMul(device, GgmlType.F16);
  using cmdMv = device.commands();
  cmdMv.begin().timestamp(0);
  // The engine's matvec prompt path: 8 columns per dispatch.
  for (let t = 0; t < tokens; t += 8) {
    const b = Math.min(8, tokens - t);
    mv.record(cmdMv, {
      weight: w,
      rows,
      cols,
      x: { buffer: x, offset: t * cols * 4, bytes: b * cols * 4 },
      y: { buffer: y, offset: t * rows * 4, bytes: b * rows * 4 },
      batch: b,
    });
  }
  cmdMv.timestamp(1).end();
  using cmdMm = device.commands();
  cmdMm.begin().timestamp(0);
  mm.record(cmdMm, { weight: w, rows, cols, x, y, batch: tokens });
  cmdMm.timestamp(1).end();
  timed(device, cmdMv);
  timed(device, cmdMm);
  const flop = 2 * rows * cols * tokens;
  const a: number[] = [], b: number[] = [];
  for (let i = 0; i < n; i++) {
    a.push(flop / timed(device, cmdMv) / 1e6);
    b.push(flop / timed(device, cmdMm) / 1e6);
  }
  const med = (v: number[]) => v.sort((p, q) => p - q)[v.length >> 1];
  return { matvec: med(a), matmul: med(b) };
}

async function prefillMs(
  path: string,
  tokens: number,
): Promise<{ matvecMs: number; matmulMs: number }> {
  await using model = await loadModel(path);
  const prompt = Array.from({ length: tokens }, (_, i) => 3 + ((i * 7919) % 4000));
  const run = async (kernel: PromptKernel, ids: number[]) => {
    model.llama.promptKernel = kernel;
    using s = model.session({ contextTokens: ids.length + 4 });
    const r = await s.complete(ids, { temperature: 0, maxTokens: 1, ignoreEos: true });
    return r.prefillMs;
  };
  // Warm-up: compiles both paths' pipelines (a chunk of 64 tokens uses every kernel).
  await run("matvec", prompt.slice(0, 64));
  await run("matmul", prompt.slice(0, 64));
  const matvecMs = await run("matvec", prompt);
  const matmulMs = await run("matmul", prompt);
  return { matvecMs, matmulMs };
}

export async function runPrefill(
  opts: { tokens?: number[]; types?: string[]; write?: boolean } = {},
): Promise<PrefillResult> {
  const tokenList = opts.tokens ?? [512, 1024];
  const types = opts.types ?? ["F16"];
  let fmaGflops: number;
  let k: { matvec: number; matmul: number };
  let device: string;
  {
    using dev = Device.open();
    device = dev.info.name;
    const before = fmaCeiling(dev);
    k = kernelGflops(dev);
    fmaGflops = Math.max(before, fmaCeiling(dev));
  }
  const kernels: KernelRow[] = [
    {
      kernel: "matvec (8 columns), F16 4096x4096",
      gflops: k.matvec,
      ofCeiling: k.matvec / fmaGflops,
    },
    { kernel: "matmul (tiled), F16 4096x4096", gflops: k.matmul, ofCeiling: k.matmul / fmaGflops },
  ];
  const rows: PrefillRow[] = [];
  const tmp = await Deno.makeTempDir();
  try {
    for (const type of types) {
      const id = (GgmlType as Record<string, number>)[type];
      if (id === undefined) throw new Error(`unknown type ${type}`);
      const path = `${tmp}/synthetic-8b-shape-${type}.gguf`;
      await writeSyntheticModel(path, { ...SPEC, weightType: id });
      for (const tokens of tokenList) {
        const r = await prefillMs(path, tokens);
        rows.push({ type, tokens, ...r, speedup: r.matvecMs / r.matmulMs });
        console.error(`prefill ${type} ${tokens}: ${JSON.stringify(rows.at(-1))}`);
      }
    }
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
  const lines = [
    `Synthetic model: Llama-3.1-8B attention shape, ${SPEC.nLayers} layers, FFN ${SPEC.ffnDim}, ` +
    `vocabulary ${SPEC.vocabSize}, on ${device}. FMA-only ceiling in this run: ` +
    `${fmaGflops.toFixed(1)} GFLOPS.`,
    "",
    "| kernel (256-token chunk) | GFLOPS | of the FMA ceiling |",
    "|---|---:|---:|",
    ...kernels.map((r) =>
      `| ${r.kernel} | ${r.gflops.toFixed(1)} | ${(r.ofCeiling * 100).toFixed(0)}% |`
    ),
    "",
    "| weights | prompt tokens | matvec path: prefill | tok/s | matmul path: prefill | tok/s | matmul vs matvec |",
    "|---|---:|---:|---:|---:|---:|---:|",
    ...rows.map((r) =>
      `| ${r.type} | ${r.tokens} | ${(r.matvecMs / 1000).toFixed(2)} s | ${
        (r.tokens * 1000 / r.matvecMs).toFixed(1)
      } | ${(r.matmulMs / 1000).toFixed(2)} s | ${(r.tokens * 1000 / r.matmulMs).toFixed(1)} | ${
        r.speedup.toFixed(2)
      }x |`
    ),
  ];
  const result = {
    date: new Date().toISOString(),
    device,
    fmaGflops,
    kernels,
    rows,
    table: lines.join("\n"),
  };
  if (opts.write) await writeResult("prefill.json", result);
  return result;
}

if (import.meta.main) {
  const { values } = parseArgs({
    options: {
      tokens: { type: "string", default: "512,1024" },
      types: { type: "string", default: "F16" },
      write: { type: "boolean" },
    },
  });
  const r = await runPrefill({
    tokens: values.tokens.split(",").map(Number),
    types: values.types.split(","),
    write: values.write,
  });
  console.log(r.table);
}
