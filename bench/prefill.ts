/**
 * `deno task bench:prefill`: prompt prefill speed, the matvec prompt path (8-column matrix-vector
 * kernels) next to the tiled matmul path (src/kernels/matmul.ts), side by side in one run, on a
 * synthetic model with Llama-3.1-8B's attention shape (dim 4096, 32 query / 8 KV heads x 128),
 * 2 layers, FFN 4096, vocabulary 4096. Also, in the same run:
 *  - the device's multiply-add ceiling, from an FMA-only kernel (shaders/fma_peak.comp);
 *  - the GFLOPS of one 4096 x 4096 F16 projection over a 256-token chunk with each kernel, timed
 *    with device timestamps, as a share of that ceiling (in rounds of all three back to back);
 *  - prefill attention alone at `--attention-tokens` prompt lengths (bench/prefill_attention.ts):
 *    one layer's last 256-token chunk, with K/V as texels and as storage buffers on CPU devices.
 * A prefill is timed to its first token (Session.complete with maxTokens 1), after a warm-up
 * prompt that compiles the pipelines. Paths alternate, so a noisy machine slows both alike.
 * llama.cpp (node-llama-cpp's prebuilt build, its CPU backend; `--llamacpp cpu,vulkan` adds its
 * Vulkan backend on the same device) prefills the same prompt of the same GGUF in the same run.
 *
 * Long prompts: a HeteroCache (keep 0.25) prefill of `--long-tokens` tokens on the same shape
 * with 4 layers (profile: layers 0-3 of the official Llama-3.1-8B one), layer by layer and in
 * chunks, each timed to its first token, with its peak device KV bytes next to one layer's full
 * KV plus the compressed caches (the layer-by-layer bound), and llama.cpp's prefill beside.
 *
 *   deno run -A bench/prefill.ts [--tokens 512,1024] [--types F16,Q8_0,Q4_K]
 *     [--long-tokens 4096 (0: none)] [--long-chunked false] [--llamacpp cpu|cpu,vulkan|none]
 *     [--vulkan-max-tokens N]
 *     [--attention-tokens 2048,4096,8192 (0: none)] [--write]
 */
import { parseArgs } from "node:util";
import { writeResult } from "./paths.ts";
import { loadModel } from "../mod.ts";
import { GgmlType } from "../src/gguf/types.ts";
import { MatMul } from "../src/kernels/matmul.ts";
import type { PrefillVariant } from "../src/kernels/attention.ts";
import { HcError } from "../src/errors.ts";
import { MatVec } from "../src/kernels/matvec.ts";
import { quantize } from "../src/model/quant/mod.ts";
import type { PromptKernel } from "../src/model/llama.ts";
import { type CommandList, Device, pushLayout } from "../src/vk/mod.ts";
import { writeSyntheticModel } from "../testing/synthetic_model.ts";
import { join } from "node:path";
import type { PrefillOrder } from "../src/cache/policy.ts";
import { SHAPES } from "./decode.ts";
import { fastestThreads, runLlamaCppScript } from "./llamacpp_node.ts";
import { type AttentionRow, attentionTable, prefillAttentionRows } from "./prefill_attention.ts";

const LLAMACPP = join(new URL(".", import.meta.url).pathname, "llamacpp");

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
  /** llama.cpp's prefill of the same prompt, per backend (an error text when it failed). */
  llamacpp: Record<string, number | string>;
}

export interface LongRow {
  order: PrefillOrder;
  tokens: number;
  /** Time to first token. */
  ms: number;
  peakKvBytes: number;
  /** One layer's full prompt KV. */
  layerKvBytes: number;
  /** The compressed caches after the prompt (every layer). */
  compressedKvBytes: number;
  /** peak / (one layer's full KV + the compressed caches). */
  ofBound: number;
  /** Every layer's full prompt KV (what the chunked path holds before it compresses). */
  allLayersKvBytes: number;
  /** The prompt's hidden states between layers (layered only; not KV). */
  hiddenBytes: number;
}

export interface LongResult {
  tokens: number;
  layers: number;
  rows: LongRow[];
  llamacpp: Record<string, number | string>;
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
  attention: AttentionRow[];
  rows: PrefillRow[];
  long: LongResult | null;
  table: string;
}

/** llama.cpp's prefill (to the first token's logits) of our prompt ids, in ms, or why not. */
async function llamaCppPrefill(
  path: string,
  tokens: number,
  backend: string,
): Promise<number | string> {
  try {
    await Deno.stat(join(LLAMACPP, "node_modules", "node-llama-cpp"));
  } catch {
    return "node-llama-cpp not installed (npm install in bench/llamacpp)";
  }
  const run = async (n: number, threads: number) => {
    const j = await runLlamaCppScript("prefill.mjs", [path, String(n), backend], threads);
    return typeof j === "string" ? j : j.prefillMs as number;
  };
  let threads = 0;
  if (backend === "cpu") {
    // Its fastest thread count here, picked once per model on a 256-token prompt.
    let pick = CPU_THREADS.get(path);
    if (pick === undefined) {
      pick = (await fastestThreads((t) => run(256, t))).threads;
      CPU_THREADS.set(path, pick);
    }
    threads = pick;
  }
  return await run(tokens, threads);
}

/** llama.cpp's CPU threads per model file (see llamaCppPrefill). */
const CPU_THREADS = new Map<string, number>();

async function llamaCppAll(
  path: string,
  tokens: number,
  backends: readonly string[],
  vulkanMaxTokens: number,
): Promise<Record<string, number | string>> {
  const out: Record<string, number | string> = {};
  for (const b of backends) {
    out[b] = b === "vulkan" && tokens > vulkanMaxTokens
      ? `not run above ${vulkanMaxTokens} tokens`
      : await llamaCppPrefill(path, tokens, b);
  }
  return out;
}

/** One long HeteroCache (keep 0.25) prefill per order, timed to the first token. */
async function longPrefill(
  path: string,
  tokens: number,
  orders: readonly PrefillOrder[],
): Promise<LongRow[]> {
  await using model = await loadModel(path);
  const c = model.config;
  const profile = await SHAPES[0].profile();
  const prompt = Array.from({ length: tokens }, (_, i) => 3 + ((i * 7919) % 4000));
  const rowBytes = c.headDim * 2 * 2;
  const layerKvBytes = c.nKvHeads * tokens * rowBytes;
  const rows: LongRow[] = [];
  for (const order of orders) {
    using s = model.session({
      cache: "heterocache",
      keep: 0.25,
      profile,
      contextTokens: tokens + 4,
    });
    // Warm-up: the pipelines, and the policy's scoring and top-k kernels, compile here.
    await s.complete(prompt.slice(0, 300), { temperature: 0, maxTokens: 1, prefill: order });
    const r = await s.complete(prompt, {
      temperature: 0,
      maxTokens: 1,
      ignoreEos: true,
      prefill: order,
      onPrefillProgress: (done, total, pass) => {
        if (done === total) console.error(`long ${order}: layer ${pass?.layer ?? "all"} done`);
      },
    });
    const st = s.cacheStats();
    rows.push({
      order,
      tokens,
      ms: r.prefillMs,
      peakKvBytes: st.prefillPeakKvBytes,
      layerKvBytes,
      compressedKvBytes: st.deviceKvBytes,
      ofBound: st.prefillPeakKvBytes / (layerKvBytes + st.deviceKvBytes),
      allLayersKvBytes: c.nLayers * layerKvBytes,
      hiddenBytes: order === "layered" ? tokens * c.dim * 4 : 0,
    });
    console.error(`long prefill: ${JSON.stringify(rows.at(-1))}`);
  }
  return rows;
}

function timed(device: Device, cmd: CommandList): number {
  device.waitSync("compute", cmd.submit());
  return cmd.elapsedMs();
}

/** The FMA-only kernel's command list and its FLOPs (shaders/fma_peak.comp). */
function fmaCommand(device: Device): { cmd: CommandList; flop: number } & Disposable {
  const push = pushLayout({ iters: "u32" });
  const k = device.kernel("fma_peak", { bindings: 1, push, spec: [64] });
  const groups = 512, iters = 1000;
  const out = device.buffer(groups * 64 * 4);
  const cmd = device.commands();
  cmd.begin().timestamp(0).dispatch(k, [out], push.pack({ iters }), [groups, 1, 1]).timestamp(1)
    .end();
  return {
    cmd,
    flop: 2 * 96 * iters * 64 * groups,
    [Symbol.dispose]() {
      cmd[Symbol.dispose]();
      out[Symbol.dispose]();
      k[Symbol.dispose]();
    },
  };
}

/**
 * GFLOPS of one 4096 x 4096 F16 projection of `tokens` tokens with each prompt kernel, and of
 * the FMA-only kernel, in `n` rounds of all three back to back: each kernel's share of the
 * ceiling is the median of its per-round ratios, so a slow spell of a shared machine (which
 * slows the memory-bound products more than the register-only FMA kernel) moves one round, not
 * the ceiling of every round.
 */
function kernelGflops(
  device: Device,
  tokens = 256,
  n = 7,
): { fma: number; matvec: number; matmul: number; matvecOf: number; matmulOf: number } {
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
  using fma = fmaCommand(device);
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
  timed(device, fma.cmd);
  timed(device, cmdMv);
  timed(device, cmdMm);
  const flop = 2 * rows * cols * tokens;
  const f: number[] = [], a: number[] = [], b: number[] = [];
  for (let i = 0; i < n; i++) {
    f.push(fma.flop / timed(device, fma.cmd) / 1e6);
    a.push(flop / timed(device, cmdMv) / 1e6);
    b.push(flop / timed(device, cmdMm) / 1e6);
  }
  const med = (v: number[]) => [...v].sort((p, q) => p - q)[v.length >> 1];
  return {
    fma: med(f),
    matvec: med(a),
    matmul: med(b),
    matvecOf: med(a.map((g, i) => g / f[i])),
    matmulOf: med(b.map((g, i) => g / f[i])),
  };
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
  opts: {
    tokens?: number[];
    types?: string[];
    /** Long HeteroCache prefill length (0: none). */
    longTokens?: number;
    /** Also run the long prompt in chunks (today's path) for comparison. */
    longChunked?: boolean;
    /** llama.cpp backends to run beside ("cpu", "vulkan"). */
    llamacpp?: string[];
    /** Longest prompt llama.cpp's Vulkan backend prefills (default: every one): on lavapipe it
     * takes minutes per thousand tokens of the 8B shape. */
    vulkanMaxTokens?: number;
    /** Prompt lengths of the attention-only rows (empty: none). */
    attentionTokens?: number[];
    /** The attention-only rows' kernel (default: the device's; "tiled": the GPU kernel). */
    attentionVariant?: PrefillVariant;
    write?: boolean;
  } = {},
): Promise<PrefillResult> {
  const tokenList = opts.tokens ?? [512, 1024];
  const types = opts.types ?? ["F16"];
  const longTokens = opts.longTokens ?? 4096;
  const backends = opts.llamacpp ?? ["cpu"];
  const vulkanMax = opts.vulkanMaxTokens ?? Infinity;
  let long: LongResult | null = null;
  let k: ReturnType<typeof kernelGflops>;
  let device: string;
  let attention: AttentionRow[];
  {
    using dev = Device.open();
    device = dev.info.name;
    k = kernelGflops(dev);
    attention = prefillAttentionRows(
      dev,
      opts.attentionTokens ?? [2048, 4096, 8192],
      3,
      opts.attentionVariant,
    );
  }
  const kernels: KernelRow[] = [
    { kernel: "matvec (8 columns), F16 4096x4096", gflops: k.matvec, ofCeiling: k.matvecOf },
    { kernel: "matmul (tiled), F16 4096x4096", gflops: k.matmul, ofCeiling: k.matmulOf },
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
        const llamacpp = await llamaCppAll(path, tokens, backends, vulkanMax);
        rows.push({ type, tokens, ...r, speedup: r.matvecMs / r.matmulMs, llamacpp });
        console.error(`prefill ${type} ${tokens}: ${JSON.stringify(rows.at(-1))}`);
      }
    }
    if (longTokens > 0) {
      const orders: PrefillOrder[] = opts.longChunked === false
        ? ["layered"]
        : ["layered", "chunked"];
      long = await longSection(tmp, longTokens, orders, backends, vulkanMax);
    }
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
  const lines = [
    `Synthetic model: Llama-3.1-8B attention shape, ${SPEC.nLayers} layers, FFN ${SPEC.ffnDim}, ` +
    `vocabulary ${SPEC.vocabSize}, on ${device}. FMA-only ceiling in this run: ` +
    `${k.fma.toFixed(1)} GFLOPS (median of 7 rounds; each round runs the FMA kernel, the ` +
    "matvec path and the matmul back to back, and a kernel's share is the median of its " +
    "per-round ratios).",
    "",
    "| kernel (256-token chunk) | GFLOPS | of the FMA ceiling |",
    "|---|---:|---:|",
    ...kernels.map((r) =>
      `| ${r.kernel} | ${r.gflops.toFixed(1)} | ${(r.ofCeiling * 100).toFixed(0)}% |`
    ),
    "",
    ...(attention.length === 0 ? [] : [...attentionTable(attention, device), ""]),
    ...(rows.length === 0 ? [] : [
      `| weights | prompt tokens | matvec path: prefill | tok/s | matmul path: prefill | tok/s | matmul vs matvec | ${
        backends.map((b) => `llama.cpp ${b}: prefill | ours (faster path) vs llama.cpp ${b}`).join(
          " | ",
        )
      } |`,
      `|---|---:|---:|---:|---:|---:|---:|${backends.map(() => "---:|---:|").join("")}`,
      ...rows.map((r) =>
        `| ${r.type} | ${r.tokens} | ${(r.matvecMs / 1000).toFixed(2)} s | ${
          (r.tokens * 1000 / r.matvecMs).toFixed(1)
        } | ${(r.matmulMs / 1000).toFixed(2)} s | ${(r.tokens * 1000 / r.matmulMs).toFixed(1)} | ${
          r.speedup.toFixed(2)
        }x | ${
          backends.map((b) => llamaCells(r.llamacpp[b], Math.min(r.matvecMs, r.matmulMs))).join(
            " | ",
          )
        } |`
      ),
    ]),
    ...(long ? ["", ...longTable(long, backends)] : []),
    ...(CPU_THREADS.size && backends.includes("cpu")
      ? [
        "",
        `llama.cpp cpu ran with ${
          [...new Set(CPU_THREADS.values())].join(" / ")
        } thread(s): its fastest here on a 256-token prompt, of 1 to ${navigator.hardwareConcurrency}.`,
      ]
      : []),
  ];
  const result = {
    date: new Date().toISOString(),
    device,
    fmaGflops: k.fma,
    kernels,
    attention,
    rows,
    long,
    table: lines.join("\n"),
  };
  if (opts.write) await writeResult("prefill.json", result);
  return result;
}

/** llama.cpp's time, and ours as a multiple of its speed (above 1: we are faster). */
function llamaCells(l: number | string | undefined, oursMs: number): string {
  if (typeof l !== "number") return `${l ?? "-"} | -`;
  return `${(l / 1000).toFixed(2)} s | ${(l / oursMs).toFixed(2)}x`;
}

function longTable(long: LongResult, backends: readonly string[]): string[] {
  const mib = (b: number) => `${(b / 2 ** 20).toFixed(0)} MiB`;
  return [
    `Long prompt: HeteroCache (keep 0.25), ${long.tokens} tokens, the same shape with ` +
    `${long.layers} layers (F16), time to first token and peak device KV while the prompt goes in.`,
    "",
    "| prefill order | time to first token | tok/s | peak device KV | one layer's full KV + compressed caches | peak / that | every layer's full KV | hidden states (f32, not KV) |",
    "|---|---:|---:|---:|---:|---:|---:|---:|",
    ...long.rows.map((r) =>
      `| ${r.order} | ${(r.ms / 1000).toFixed(1)} s | ${(r.tokens * 1000 / r.ms).toFixed(1)} | ${
        mib(r.peakKvBytes)
      } | ${mib(r.layerKvBytes)} + ${mib(r.compressedKvBytes)} | ${r.ofBound.toFixed(2)}x | ${
        mib(r.allLayersKvBytes)
      } | ${mib(r.hiddenBytes)} |`
    ),
    ...backends.map((b) => {
      const l = long.llamacpp[b];
      return `| llama.cpp ${b} (full cache) | ${
        typeof l === "number"
          ? `${(l / 1000).toFixed(1)} s | ${(long.tokens * 1000 / l).toFixed(1)}`
          : `${l} | -`
      } | - | - | - | - | - |`;
    }),
  ];
}

/** The prompt length of the long-prompt section. */
export const LONG_PREFILL_TOKENS = 32768;

/** The long-prompt section (`deno task bench --full`, or `--only prefill-long`): a HeteroCache
 * (keep 0.25) prefill of `tokens` tokens, layer by layer only, on the 4-layer 8B shape, timed to
 * its first token with its peak device KV. One order and no llama.cpp: at 32K tokens the
 * quadratic attention alone takes most of an hour on a 2-core CPU device, and the `prefill`
 * section already sets both orders and llama.cpp side by side at a shorter length. */
export async function runLongPrefill(
  opts: { tokens: number; write?: boolean },
): Promise<LongPrefillResult> {
  const tmp = await Deno.makeTempDir();
  let long: LongResult;
  try {
    long = await longSection(tmp, opts.tokens, ["layered"], [], Infinity);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
  using dev = Device.open();
  const device = dev.info.name;
  const result = {
    date: new Date().toISOString(),
    device,
    long,
    table: [`On ${device}.`, "", ...longTable(long, [])].join("\n"),
  };
  if (opts.write) await writeResult("prefill_long.json", result);
  return result;
}

export interface LongPrefillResult {
  date: string;
  device: string;
  long: LongResult;
  table: string;
}

/** The 4-layer F16 model of the long rows, then one HeteroCache prefill per order. */
async function longSection(
  tmp: string,
  tokens: number,
  orders: PrefillOrder[],
  backends: readonly string[],
  vulkanMax: number,
): Promise<LongResult> {
  const path = `${tmp}/synthetic-8b-shape-4-layers.gguf`;
  const layers = 4;
  await writeSyntheticModel(path, {
    ...SPEC,
    nLayers: layers,
    contextLength: Math.max(SPEC.contextLength, tokens + 16),
    weightType: GgmlType.F16,
  });
  const rows = await longPrefill(path, tokens, orders);
  const llamacpp = await llamaCppAll(path, tokens, backends, vulkanMax);
  return { tokens, layers, rows, llamacpp };
}

function attentionVariant(v: string | undefined): PrefillVariant | undefined {
  if (v === undefined || v === "tiled" || v === "split" || v === "rows") return v;
  throw new HcError("E_BAD_REQUEST", `--attention-variant must be tiled, split or rows, got ${v}`);
}

if (import.meta.main) {
  const { values } = parseArgs({
    options: {
      tokens: { type: "string", default: "512,1024" },
      types: { type: "string", default: "F16" },
      "long-tokens": { type: "string", default: "4096" },
      "long-chunked": { type: "string", default: "true" },
      llamacpp: { type: "string", default: "cpu" },
      "vulkan-max-tokens": { type: "string" },
      "attention-tokens": { type: "string", default: "2048,4096,8192" },
      // The attention rows' kernel: tiled, split or rows (default: the device's).
      "attention-variant": { type: "string" },
      write: { type: "boolean" },
    },
  });
  const r = await runPrefill({
    tokens: values.tokens ? values.tokens.split(",").map(Number) : [],
    types: values.types.split(","),
    longTokens: Number(values["long-tokens"]),
    longChunked: values["long-chunked"] !== "false",
    llamacpp: values.llamacpp === "none" ? [] : values.llamacpp.split(","),
    vulkanMaxTokens: values["vulkan-max-tokens"] ? Number(values["vulkan-max-tokens"]) : undefined,
    attentionTokens: values["attention-tokens"].split(",").map(Number).filter((n) => n > 0),
    attentionVariant: attentionVariant(values["attention-variant"]),
    write: values.write,
  });
  console.log(r.table);
}
