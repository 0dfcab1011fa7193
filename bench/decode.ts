/**
 * `deno task bench:decode`: decode speed, two ways, each side by side with llama.cpp
 * (node-llama-cpp's prebuilt build, run under Node) with its CPU backend, the peer a user of a
 * GPU-less machine picks, and with its Vulkan backend on the same Vulkan device as ours.
 *
 * 1. The context sweep (`runSpeed`): median decode step time of each cache policy at contexts
 *    1K..64K on synthetic models with real attention shapes (Llama-3.1-8B's 32 query / 8 KV
 *    heads x 128, TinyLlama-1.1B's 32 / 4 x 64; four layers, a small FFN), next to the bytes a
 *    step reads and the device's copy bandwidth measured in the same run. The prompt KV is
 *    synthetic (bench/synthetic_prompt.ts): a real 64K prefill is quadratic and takes hours on a CPU
 *    driver. llama.cpp's cache is filled the same way, from a sequence state file of random
 *    K/V rows (bench/llamacpp/step.mjs). With `--write`, writes bench/results/speed.json.
 * 2. Throughput (`runThroughput`): prefill and greedy decode tokens/s for stories260K and a
 *    synthetic ~100M-parameter Llama in F16 and Q8_0, full cache. With `--write`, writes
 *    bench/results/decode.json.
 *
 *   deno run -A bench/decode.ts [--full] [--contexts 1024,4096] [--llamacpp-max N] [--keep X]
 *     [--llamacpp-backends cpu,vulkan] [--steps N] [--skip-throughput] [--write]
 */
import { parseArgs } from "node:util";
import { dirname, fromFileUrl, join, writeResult } from "./paths.ts";
import { loadModel } from "../mod.ts";
import { GgmlType } from "../src/gguf/types.ts";
import { writeSyntheticModel } from "../testing/synthetic_model.ts";
import {
  type HeadProfile,
  type HeadRole,
  importOfficialProfile,
  parseProfile,
  serializeProfile,
} from "../src/cache/profile/profile.ts";
import { layeredProfile } from "../src/cache/profile/profile_io.ts";
import { benchCopy } from "./matvec_bench.ts";
import { isFullRole } from "../src/cache/profile/profile.ts";
import { cacheOptions, type CacheRequest } from "../src/cache/options.ts";
import { Device, listDevices } from "../src/vk/mod.ts";
import { HcError } from "../src/errors.ts";
import type { Session } from "../src/engine/session.ts";
import { SyntheticDecode } from "./synthetic_prompt.ts";
import { fastestThreads, runLlamaCppScript } from "./llamacpp_node.ts";

const HERE = dirname(fromFileUrl(import.meta.url));
const LLAMACPP = join(HERE, "llamacpp");

/** llama.cpp's backends, each beside our engine: its CPU backend, and its Vulkan backend on
 * the device ours runs on (on a GPU-less machine: lavapipe, which llama.cpp takes only when
 * named, see llamacpp_node.ts). */
export const LLAMACPP_BACKENDS = ["cpu", "vulkan"] as const;
type LlamaCppBackend = (typeof LLAMACPP_BACKENDS)[number];
const llamaCppEngine = (b: LlamaCppBackend) => `llama.cpp ${b}`;

interface Row {
  model: string;
  /** "heterocache-vk" or llamaCppEngine(backend). */
  engine: string;
  prefillTokensPerSecond: number;
  decodeTokensPerSecond: number;
  /** llama.cpp cpu: the threads it ran with (its fastest decode here, see fastestThreads). */
  threads?: number;
}

/** An engine's table label, with llama.cpp cpu's thread count where it has one. */
function withThreads(engine: string, threads?: number): string {
  return threads ? `${engine} (${threads} thread${threads > 1 ? "s" : ""})` : engine;
}

function promptIds(n: number): number[] {
  // The same ids bench/llamacpp/run.mjs feeds llama.cpp.
  return Array.from({ length: n }, (_, i) => 3 + ((i * 7919) % 250));
}

async function ours(
  path: string,
  promptTokens: number,
  decodeTokens: number,
): Promise<Omit<Row, "model" | "engine">> {
  await using model = await loadModel(path);
  using s = model.session({ contextTokens: promptTokens + decodeTokens + 16 });
  const prompt = promptIds(promptTokens);
  const run = () =>
    s.complete(prompt, { temperature: 0, maxTokens: decodeTokens, ignoreEos: true });
  await run(); // warm-up: the first use of each pipeline compiles it
  const r = await run();
  return {
    prefillTokensPerSecond: (promptTokens * 1000) / r.prefillMs,
    decodeTokensPerSecond: r.decodeTokensPerSecond,
  };
}

async function ensureLlamaCpp(): Promise<void> {
  try {
    await Deno.stat(join(LLAMACPP, "node_modules", "node-llama-cpp"));
    return;
  } catch { /* install below */ }
  console.error("bench: installing node-llama-cpp (benchmark-only dependency) with npm");
  const r = await new Deno.Command("npm", {
    args: ["install", "--no-audit", "--no-fund"],
    cwd: LLAMACPP,
    stdout: "inherit",
    stderr: "inherit",
  }).output();
  if (!r.success) throw new Error("npm install of node-llama-cpp failed");
}

async function llamaCpp(
  path: string,
  promptTokens: number,
  decodeTokens: number,
  backend: LlamaCppBackend,
): Promise<Omit<Row, "model" | "engine"> | string> {
  const run = (tokens: number, threads: number) =>
    runLlamaCppScript("run.mjs", [path, String(promptTokens), String(tokens), backend], threads);
  // The CPU backend with the thread count its decode runs fastest with here (16 tokens each).
  let threads = 0;
  if (backend === "cpu") {
    threads = (await fastestThreads(async (t) => {
      const j = await run(16, t);
      return typeof j === "string" ? j : 1000 / (j.decodeTokensPerSecond as number);
    })).threads;
  }
  const j = await run(decodeTokens, threads);
  if (typeof j === "string") return j;
  return {
    prefillTokensPerSecond: j.prefillTokensPerSecond as number,
    decodeTokensPerSecond: j.decodeTokensPerSecond as number,
    ...(backend === "cpu" ? { threads: j.threads as number } : {}),
  };
}

export interface ThroughputResult {
  date: string;
  device: string;
  promptTokens: number;
  decodeTokens: number;
  rows: (Row | { model: string; engine: string; error: string })[];
  table: string;
}

/** Prefill and decode tokens/s of both engines on three models (full cache). */
export async function runThroughput(
  opts: { quick?: boolean; promptTokens?: number; decodeTokens?: number; write?: boolean } = {},
): Promise<ThroughputResult> {
  const promptTokens = opts.promptTokens ?? 128;
  const decodeTokens = opts.decodeTokens ?? 64;
  await ensureLlamaCpp();
  const tmp = await Deno.makeTempDir();
  const models: [string, string][] = [[
    "stories260K (F32)",
    new URL("../../shared/models/stories260K.gguf", import.meta.url).pathname,
  ]];
  // ~100M parameters: 12 layers of 768 (Llama shape, 12 heads x 64, 4 KV heads), 16K vocab.
  const spec = {
    dim: 768,
    nLayers: 12,
    nHeads: 12,
    nKvHeads: 4,
    ffnDim: 2048,
    vocabSize: 16000,
    contextLength: 2048,
    seed: 1,
  };
  if (!opts.quick) {
    for (const [name, type] of [["F16", GgmlType.F16], ["Q8_0", GgmlType.Q8_0]] as const) {
      const path = join(tmp, `synthetic-100m-${name}.gguf`);
      await writeSyntheticModel(path, { ...spec, weightType: type });
      models.push([`synthetic 100M (${name})`, path]);
    }
  }
  const rows: ThroughputResult["rows"] = [];
  try {
    for (const [name, path] of models) {
      rows.push({
        model: name,
        engine: "heterocache-vk",
        ...(await ours(path, promptTokens, decodeTokens)),
      });
      for (const b of LLAMACPP_BACKENDS) {
        const l = await llamaCpp(path, promptTokens, decodeTokens, b);
        const engine = llamaCppEngine(b);
        rows.push(
          typeof l === "string" ? { model: name, engine, error: l } : { model: name, engine, ...l },
        );
      }
    }
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
  const device = listDevices()[0]?.name ?? "unknown";
  const lines = [
    `Prompt ${promptTokens} tokens, ${decodeTokens} greedy tokens, full KV cache, on ${device}.`,
    "",
    "| model | engine | prefill tok/s | decode tok/s | decode vs llama.cpp cpu | decode vs llama.cpp vulkan |",
    "|---|---|---:|---:|---:|---:|",
  ];
  for (const r of rows) {
    if ("error" in r) {
      lines.push(`| ${r.model} | ${r.engine} | - | - | ${r.error} | |`);
      continue;
    }
    const ratios = LLAMACPP_BACKENDS.map((b) => {
      const other = rows.find((o) =>
        o.model === r.model && o.engine === llamaCppEngine(b) && !("error" in o)
      ) as Row | undefined;
      return r.engine === "heterocache-vk" && other
        ? `${(r.decodeTokensPerSecond / other.decodeTokensPerSecond).toFixed(2)}x`
        : "";
    });
    const engine = withThreads(r.engine, r.threads);
    lines.push(
      `| ${r.model} | ${engine} | ${r.prefillTokensPerSecond.toFixed(1)} | ${
        r.decodeTokensPerSecond.toFixed(1)
      } | ${ratios.join(" | ")} |`,
    );
  }
  const result = {
    date: new Date().toISOString(),
    device,
    promptTokens,
    decodeTokens,
    rows,
    table: lines.join("\n"),
  };
  if (opts.write) await writeResult("decode.json", result);
  return result;
}

// ---------------------------------------------------------------------------------------------
// The context sweep.

const OFFICIAL_LLAMA8B = new URL(
  "../../shared/profiles/Head_Analysis_llama-3.1-8b-instruct_topk1024_th0.5_sim0.5_step5000.json",
  import.meta.url,
).pathname;

/** The sweep's engines of ours: every policy at the same device KV, and HeteroCache twice: its
 * default trigger as it behaves on a random prompt, and a refresh every 5th step (a controlled
 * 20% refresh rate; random prompt KV makes triggers unrealistic). */
const ENGINES: Readonly<Record<string, CacheRequest>> = {
  "full": { cache: "full" },
  "snapkv": { cache: "snapkv" },
  "streaming": { cache: "streaming" },
  "heterocache": { cache: "heterocache" },
  "hc every 5": { cache: "fixed-interval", interval: 5 },
  // Not in the default sweep: the official overlap test (a device round trip every 5th step).
  "hc drift": { cache: "heterocache", trigger: "drift" },
};
const DEFAULT_ENGINES = ["full", "snapkv", "streaming", "heterocache", "hc every 5"];

interface Shape {
  id: string;
  label: string;
  dim: number;
  nHeads: number;
  nKvHeads: number;
  headDim: number;
  profile: () => Promise<HeadProfile>;
  profileNote: string;
}

/** Rescales the compressed heads' multipliers to mean 1 over all layers (the budget rule's
 * assumption), in place. */
function normalizeMultipliers(layers: { roles: HeadRole[]; multipliers: number[] }[]): void {
  const ratios = layers.flatMap((l) =>
    l.roles.flatMap((r, h) => (isFullRole(r) ? [] : [l.multipliers[h]]))
  );
  const mean = ratios.reduce((a, b) => a + b, 0) / ratios.length;
  for (const l of layers) {
    l.roles.forEach((r, h) => {
      if (!isFullRole(r)) l.multipliers[h] /= mean;
    });
  }
}

/** Keeps `layers` of a profile, multipliers rescaled to mean 1 over its compressed heads. */
function sliceProfile(p: HeadProfile, layers: readonly number[]): HeadProfile {
  const kept = layers.map((l) => structuredClone(p.layers[l]));
  normalizeMultipliers(kept);
  const json = JSON.parse(serializeProfile({
    ...p,
    model: { ...p.model, arch: null, nLayers: layers.length, headDim: null, attnHash: null },
    layers: kept,
  }));
  return parseProfile(json);
}

/** A profile of `nLayers` layers alternating a one-cluster layer and an all-anchor layer. */
function alternatingProfile(nLayers: number, nKvHeads: number): HeadProfile {
  const clustered: HeadRole[] = ["pivot", ...Array(nKvHeads - 1).fill("satellite")];
  const anchors: HeadRole[] = Array(nKvHeads).fill("anchor");
  const layers = Array.from({ length: nLayers }, (_, l) => {
    const roles = l % 2 === 0 ? clustered : anchors;
    const multipliers = roles.map((r, h) => (isFullRole(r) ? -1 : 0.8 + (0.4 * h) / nKvHeads));
    return { roles, multipliers };
  });
  normalizeMultipliers(layers);
  return layeredProfile(layers);
}

const SWEEP_LAYERS = 4;

export const SHAPES: readonly Shape[] = [
  {
    id: "llama8b",
    label: "Llama-3.1-8B attention (32 q / 8 KV heads x 128), 4 layers",
    dim: 4096,
    nHeads: 32,
    nKvHeads: 8,
    headDim: 128,
    profile: async () => {
      const text = await Deno.readTextFile(OFFICIAL_LLAMA8B);
      const p = importOfficialProfile(text, { nLayers: 32, nKvHeads: 8 }, {
        fileName: OFFICIAL_LLAMA8B.split("/").pop(),
      });
      return sliceProfile(p, [0, 1, 2, 3]);
    },
    profileNote: "layers 0-3 of the official Llama-3.1-8B profile (6 of 32 heads full)",
  },
  {
    id: "tinyllama",
    label: "TinyLlama-1.1B attention (32 q / 4 KV heads x 64), 4 layers",
    dim: 2048,
    nHeads: 32,
    nKvHeads: 4,
    headDim: 64,
    profile: () => Promise.resolve(alternatingProfile(SWEEP_LAYERS, 4)),
    profileNote: "synthetic: a pivot + 3 satellites, then 4 anchors, alternating (2 of 16 full)",
  },
];

export interface SpeedCell {
  shape: string;
  /** A cache policy, or "llama.cpp cpu" / "llama.cpp vulkan". */
  engine: string;
  context: number;
  /** Median decode step, ms (null: not measured, see `note`). */
  stepMs: number | null;
  /** Mean decode step, ms, over every step after the first (drift checks and refreshes
   * included): what a user waits for per token, the headline figure. */
  meanMs?: number;
  /** Shares of the measured steps that evaluated a trigger and that carried a refresh. */
  checkRate?: number;
  /** Device KV bytes the step's caches hold (llama.cpp: its full cache). */
  kvBytes: number | null;
  triggerRate?: number;
  stepRetrievalRate?: number;
  note?: string;
  /** llama.cpp cpu: the threads it ran with, its fastest at this context (and what each gave). */
  threads?: number;
  threadsTried?: string;
}

export interface SpeedResult {
  date: string;
  device: string;
  cores: number;
  quick: boolean;
  keep: number;
  steps: number;
  /** Steps in llama.cpp's median. */
  llamaSteps: number;
  copyGbps: number;
  shapes: {
    id: string;
    label: string;
    profile: string;
    weightBytes: number;
  }[];
  cells: SpeedCell[];
  table: string;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.floor(s.length / 2)] : NaN;
}

/**
 * A copy of a synthetic GGUF whose `llama.context_length` says `n`: node-llama-cpp sizes its KV
 * tensors by the trained context, and on lavapipe one above 128 MiB (8 KV heads x 128 past 64K
 * tokens) cannot be bound, so llama.cpp gets a model trained for exactly the context it runs.
 */
export async function withContextLength(src: string, dst: string, n: number): Promise<void> {
  await Deno.copyFile(src, dst);
  using f = await Deno.open(dst, { read: true, write: true });
  const head = new Uint8Array(1 << 16);
  const got = await f.read(head) ?? 0;
  const key = new TextEncoder().encode("llama.context_length");
  const at = head.subarray(0, got).findIndex((_, i) => key.every((b, j) => head[i + j] === b));
  // The key is followed by its value type (u32 = 4) and the u32 value.
  const view = new DataView(head.buffer);
  if (at < 0 || view.getUint32(at + key.length, true) !== 4) {
    throw new Error(`${src}: no u32 llama.context_length in the header`);
  }
  const value = new Uint8Array(4);
  new DataView(value.buffer).setUint32(0, n, true);
  await f.seek(at + key.length + 4, Deno.SeekMode.Start);
  await f.write(value);
}

async function llamaCppStep(
  path: string,
  context: number,
  steps: number,
  backend: LlamaCppBackend,
  threads: number,
): Promise<{ stepMs: number; meanMs: number; cells: number; fillMs: number } | string> {
  const j = await runLlamaCppScript(
    "step.mjs",
    [path, String(context), String(steps), backend],
    threads,
  );
  return typeof j === "string"
    ? j
    : (j as { stepMs: number; meanMs: number; cells: number; fillMs: number });
}

export interface SpeedOptions {
  quick?: boolean;
  contexts?: number[];
  /** Largest context llama.cpp is measured at (default: every one); 0: not at all (a machine
   * without node-llama-cpp, such as the GPU box, which reaches no registry). */
  llamaCppMax?: number;
  /** llama.cpp's backends in the sweep (default both; the GPU box packs only the Vulkan one). */
  llamaCppBackends?: readonly LlamaCppBackend[];
  keep?: number;
  steps?: number;
  /** Our engines (names of ENGINES; default DEFAULT_ENGINES). */
  engines?: readonly string[];
  /** Write bench/results/speed.json. */
  write?: boolean;
  log?: (line: string) => void;
}

export async function runSpeed(opts: SpeedOptions = {}): Promise<SpeedResult> {
  const quick = opts.quick ?? true;
  const contexts = opts.contexts ??
    (quick ? [1024, 16384, 65536, 131072] : [1024, 4096, 16384, 65536, 131072]);
  const llamaCppMax = opts.llamaCppMax ?? Infinity;
  const keep = opts.keep ?? 0.25;
  const steps = opts.steps ?? (quick ? 16 : 32);
  // llama.cpp's long-context steps take seconds on a CPU driver (about 20 s at 64K on the 8B
  // shape), and far apart from ours, so a few of them make the quick median.
  const llamaSteps = quick ? Math.min(steps, 4) : steps;
  const log = opts.log ?? ((l: string) => console.error(l));
  const engines = (opts.engines ?? DEFAULT_ENGINES).map((engine) => {
    const options = ENGINES[engine];
    if (!options) {
      throw new Error(`unknown engine "${engine}"; one of ${Object.keys(ENGINES).join(", ")}`);
    }
    return { engine, options };
  });
  if (opts.llamaCppMax !== 0) await ensureLlamaCpp();
  const { copyGbps, maxBinding } = await (async () => {
    using dev = Device.open();
    return { copyGbps: (await benchCopy(dev)).gbps, maxBinding: dev.info.maxStorageBufferRange };
  })();
  log(`speed: copy bandwidth ${copyGbps.toFixed(1)} GB/s`);
  const cells: SpeedCell[] = [];
  const shapes: SpeedResult["shapes"] = [];
  const tmp = await Deno.makeTempDir();
  try {
    for (const shape of SHAPES) {
      const path = join(tmp, `${shape.id}.gguf`);
      await writeSyntheticModel(path, {
        dim: shape.dim,
        nLayers: SWEEP_LAYERS,
        nHeads: shape.nHeads,
        nKvHeads: shape.nKvHeads,
        headDim: shape.headDim,
        ffnDim: 1024,
        vocabSize: 4096,
        contextLength: Math.max(...contexts) + steps + 64,
        weightType: GgmlType.Q8_0,
        seed: 7,
      });
      const profile = await shape.profile();
      await using model = await loadModel(path);
      shapes.push({
        id: shape.id,
        label: shape.label,
        profile: shape.profileNote,
        weightBytes: model.info().weightBytes,
      });
      for (const context of contexts) {
        // Every policy's session at once, their steps interleaved (one of each in turn), so a
        // noisy machine slows them alike and the ratios hold.
        const sessions: Session[] = [];
        try {
          for (const e of engines) {
            sessions.push(
              model.session({
                ...cacheOptions({ ...e.options, keep, profile }),
                contextTokens: context + steps + 1,
              }),
            );
          }
          const runs: SyntheticDecode[] = [];
          for (const s of sessions) runs.push(await SyntheticDecode.start(s, context, steps));
          const times: number[][] = sessions.map(() => []);
          for (let i = 0; i < steps; i++) {
            for (const [j, r] of runs.entries()) times[j].push(await r.step());
          }
          sessions.forEach((s, j) => {
            const st = s.cacheStats();
            const after = times[j].slice(1); // the first step warms up
            const cell: SpeedCell = {
              shape: shape.id,
              engine: engines[j].engine,
              context,
              stepMs: median(after),
              meanMs: after.reduce((a, b) => a + b, 0) / after.length,
              kvBytes: st.deviceKvBytes,
              triggerRate: st.triggerRate,
              checkRate: st.decodeSteps ? st.stepsWithCheck / st.decodeSteps : 0,
              stepRetrievalRate: st.stepRetrievalRate,
            };
            cells.push(cell);
            log(
              `speed: ${shape.id} ${context} ${cell.engine}: mean ${
                cell.meanMs!.toFixed(1)
              } ms, median ${cell.stepMs!.toFixed(1)} ms`,
            );
          });
        } catch (e) {
          // "Where memory allows": a context the device cannot hold is a row of notes.
          if (!(e instanceof HcError && e.code === "E_VK_OOM")) throw e;
          const note = `out of device memory at this context (${e.message})`;
          for (const { engine } of engines) {
            cells.push({ shape: shape.id, engine, context, stepMs: null, kvBytes: null, note });
          }
          log(`speed: ${shape.id} ${context}: ${note}`);
        } finally {
          for (const s of sessions) s[Symbol.dispose]();
        }
        for (const backend of opts.llamaCppBackends ?? LLAMACPP_BACKENDS) {
          const engine = llamaCppEngine(backend);
          // llama.cpp's Vulkan backend clamps each binding to maxStorageBufferRange
          // (VULKAN-NOTES.md §1.2): with a larger per-layer K tensor its attention would read
          // part of the cache and time that.
          const kTensor = context * shape.nKvHeads * shape.headDim * 2;
          const skip = context > llamaCppMax
            ? llamaCppMax > 0
              ? `not run above --llamacpp-max ${llamaCppMax}`
              : "not run (--llamacpp-max 0)"
            : backend === "vulkan" && kTensor > maxBinding
            ? `not run at ${fmtCtx(context)} on ${shape.id}: a layer's K cache (${
              kTensor / 2 ** 20
            } MiB) passes the device's ${
              maxBinding / 2 ** 20
            } MiB storage-buffer range, which llama.cpp clamps its bindings to`
            : null;
          if (skip !== null) {
            cells.push({
              shape: shape.id,
              engine,
              context,
              stepMs: null,
              kvBytes: null,
              note: skip,
            });
            log(`speed: ${shape.id} ${context} ${engine}: ${skip}`);
            continue;
          }
          const lcPath = join(tmp, `${shape.id}-llamacpp.gguf`);
          // llama.cpp's context is exactly `context` (its steps end there; ours go `steps` past
          // it): one token more and, at 64K, a layer's K tensor passes a CPU driver's 128 MiB.
          await withContextLength(path, lcPath, context);
          // Its CPU backend with the thread count it runs fastest with at this context (a
          // 4-step run of each, 1 to cores): the 8B shape's 1 and 2 threads tied at 1K, where
          // one thread then took 370 ms a step at 16K against 102 ms with two.
          let threads = 0, tried = "";
          if (backend === "cpu") {
            const pick = await fastestThreads(async (t) => {
              const r = await llamaCppStep(lcPath, context, 4, "cpu", t);
              return typeof r === "string" ? r : r.meanMs;
            });
            threads = pick.threads;
            tried = pick.tried;
          }
          const l = await llamaCppStep(lcPath, context, llamaSteps, backend, threads);
          await Deno.remove(lcPath);
          const kv = SWEEP_LAYERS * shape.nKvHeads * context * shape.headDim * 2 * 2;
          cells.push(
            typeof l === "string"
              ? { shape: shape.id, engine, context, stepMs: null, kvBytes: kv, note: l }
              : {
                shape: shape.id,
                engine,
                context,
                stepMs: l.stepMs,
                meanMs: l.meanMs,
                kvBytes: kv,
                ...(threads ? { threads, threadsTried: tried } : {}),
              },
          );
          log(
            `speed: ${shape.id} ${context} ${engine}: ${
              typeof l === "string" ? l : `mean ${l.meanMs.toFixed(1)} ms`
            }`,
          );
        }
      }
    }
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
  const device = listDevices()[0]?.name ?? "unknown";
  const result: SpeedResult = {
    date: new Date().toISOString(),
    device,
    cores: navigator.hardwareConcurrency,
    quick,
    keep,
    steps,
    llamaSteps,
    copyGbps,
    shapes,
    cells,
    table: "",
  };
  result.table = speedReport(result);
  if (opts.write) await writeResult("speed.json", result);
  return result;
}

const fmtCtx = (n: number) => (n % 1024 === 0 ? `${n / 1024}K` : String(n));

/** Per shape and context: each engine's mean step (the headline) and median, the mean against
 * full's and SnapKV's, and the shares of steps that checked a trigger and carried a refresh. */
export function speedReport(r: SpeedResult): string {
  const engines = [...new Set(r.cells.map((c) => c.engine))];
  const out: string[] = [
    `Decode step time (ms) after a synthetic prompt of the given context: the **mean** over ` +
    `${r.steps - 1} steps after a warm-up step (drift checks and refreshes included: what a user ` +
    "waits for per token), the median beside it. keep " +
    `${r.keep} for the compressing policies (the same device KV), Q8_0 weights. ` +
    '"hc every 5" is HeteroCache refreshing every cluster every 5th step (fixed-interval 5). ' +
    '"checks" and "refreshes" are the shares of steps that evaluated a trigger and that carried ' +
    "a host-to-device refresh. " +
    `Copy bandwidth ${r.copyGbps.toFixed(1)} GB/s on ${r.device}; "bytes" is what a full-cache ` +
    'step reads (weights + KV), "at copy speed" that over the copy bandwidth. llama.cpp ' +
    '("cpu": its CPU backend, the peer on a GPU-less machine; "vulkan": its Vulkan backend on ' +
    `the same device as ours; full cache, its default attention path; mean and median of ${r.llamaSteps} steps) had its cache ` +
    "filled from a state file of random rows so that its steps end just short of the context " +
    "(ours start at it).",
  ];
  const fmt = (
    x: number | null | undefined,
  ) => (x === null || x === undefined ? "-" : x.toFixed(1));
  const ratio = (a: number | null | undefined, b: number | null | undefined) =>
    a !== null && a !== undefined && b !== null && b !== undefined ? `${(b / a).toFixed(2)}x` : "-";
  const pct = (x: number | undefined) => (x === undefined ? "-" : `${(100 * x).toFixed(0)}%`);
  for (const shape of r.shapes) {
    const cell = (e: string, c: number) =>
      r.cells.find((x) => x.shape === shape.id && x.engine === e && x.context === c);
    const contexts = [
      ...new Set(r.cells.filter((x) => x.shape === shape.id).map((x) => x.context)),
    ];
    out.push(
      "",
      `**${shape.label}**; profile: ${shape.profile}; weights ${
        (shape.weightBytes / 2 ** 20).toFixed(0)
      } MiB. llama.cpp cpu runs with the thread count it is fastest with at each context ` +
        "(a 4-step run of each, 1 to all cores), named beside it.",
      "",
      "| context | engine | mean | median | full / this (mean) | snapkv / this (mean) | checks | refreshes | device KV | bytes (full) | at copy speed |",
      "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    );
    for (const c of contexts) {
      const full = cell("full", c);
      const snap = cell("snapkv", c);
      const bytes = shape.weightBytes + (full?.kvBytes ?? 0);
      for (const e of engines) {
        const x = cell(e, c);
        if (!x) continue;
        const name = withThreads(e, x.threads);
        out.push(
          `| ${fmtCtx(c)} | ${name} | ${fmt(x.meanMs)} | ${fmt(x.stepMs)} | ${
            ratio(x.meanMs, full?.meanMs)
          } | ${ratio(x.meanMs, snap?.meanMs)} | ${pct(x.checkRate)} | ${
            pct(x.stepRetrievalRate)
          } | ${x.kvBytes === null ? "-" : `${(x.kvBytes / 2 ** 20).toFixed(0)} MiB`} | ${
            (bytes / 2 ** 20).toFixed(0)
          } MiB | ${(bytes / r.copyGbps / 1e6).toFixed(1)} ms |`,
        );
      }
    }
  }
  const notes = [...new Set(r.cells.flatMap((x) => x.note ? [`${x.engine}: ${x.note}.`] : []))];
  for (const n of notes) out.push("", n);
  return out.join("\n");
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      full: { type: "boolean" },
      contexts: { type: "string" },
      "llamacpp-max": { type: "string" },
      "llamacpp-backends": { type: "string" },
      keep: { type: "string" },
      steps: { type: "string" },
      engines: { type: "string" },
      "skip-throughput": { type: "boolean" },
      write: { type: "boolean" },
      help: { type: "boolean" },
    },
  });
  if (values.help) {
    console.log(
      "deno run -A bench/decode.ts [--full] [--contexts 1024,4096] [--llamacpp-max N] [--keep X]\n" +
        "  [--llamacpp-backends cpu,vulkan] [--steps N] [--skip-throughput] [--write]\n" +
        "--write saves bench/results/speed.json and decode.json; without it nothing is written.",
    );
    Deno.exit(0);
  }
  const quick = !values.full;
  const speed = await runSpeed({
    quick,
    contexts: values.contexts?.split(",").map(Number),
    llamaCppMax: values["llamacpp-max"] ? Number(values["llamacpp-max"]) : undefined,
    llamaCppBackends: values["llamacpp-backends"]?.split(",").map((b) => {
      if (!(LLAMACPP_BACKENDS as readonly string[]).includes(b)) {
        throw new Error(
          `--llamacpp-backends: "${b}" is not one of ${LLAMACPP_BACKENDS.join(", ")}`,
        );
      }
      return b as LlamaCppBackend;
    }),
    keep: values.keep ? Number(values.keep) : undefined,
    steps: values.steps ? Number(values.steps) : undefined,
    engines: values.engines?.split(","),
    write: values.write,
  });
  console.log(`\n## Decode step time vs context\n\n${speed.table}`);
  if (!values["skip-throughput"]) {
    const t = await runThroughput({ quick, write: values.write });
    console.log(`\n## Throughput\n\n${t.table}`);
  }
}
