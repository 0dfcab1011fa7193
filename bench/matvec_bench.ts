/**
 * Matvec bandwidth benchmark: y = W·x for a [rows x cols] weight (cols = K, the reduced
 * dimension, GGUF dims[0]) of every supported type, at 4096x4096 and 4096x14336, next to a
 * plain buffer-to-buffer copy of 256 MiB.
 *
 * Bytes read per matvec = weight bytes + x bytes + y bytes; GB/s = bytes / median time of one
 * matvec, timed with device timestamps around `reps` back-to-back replays recorded in one
 * command list. The copy's GB/s is bytes copied / time, i.e. (read + write) / 2 / time: the floor
 * a memory-bound kernel can aim for. The machine may be shared, so every shape alternates copy
 * and matvec submissions (copy, matvec, copy, matvec, ...) and reports the median of each: both
 * see the same load, and the ratio is what to compare between runs.
 *
 * `--layout` picks the weight's byte order: "auto" (default) the one the model loader uploads
 * (matvec's "lanes" layout for Q8_0, Q4_0 and Q4_K under the CPU variant set, the "split" layout
 * for Q8_0 and Q6_K under the GPU set, else GGUF order), "ggml", "lanes", "split", or "both":
 * every shape in GGUF order and then in the loader's layout where that is another, for a
 * before/after comparison in one run.
 *
 *   deno run -A bench/matvec_bench.ts [--reps 10] [--submits 5] [--types F16,Q8_0] [--path auto|generic|run]
 *     [--layout auto|ggml|lanes|split|both] [--shapes 4096x4096,1024x4096]
 */
import { parseArgs } from "node:util";
import { GgmlType, ggmlTypeInfo } from "../src/gguf/types.ts";
import { MatVec, type MatVecOptions } from "../src/kernels/matvec.ts";
import {
  lanesLayoutFits,
  splitLayoutFits,
  toLanesLayout,
  toSplitLayout,
  type WeightLayout,
} from "../src/kernels/matvec_layout.ts";
import { quantize } from "../src/model/quant/mod.ts";
import { CpuShare } from "./cpu_share.ts";
import { type Buffer, type CommandList, Device } from "../src/vk/mod.ts";

export interface MatvecBenchRow {
  type: string;
  rows: number;
  cols: number;
  ms: number;
  gbps: number;
  /** The 256 MiB copy, submitted alternately with this shape's matvec: bytes copied / s. */
  copyGbps: number;
  /** Cores the matvec submissions used on average (see cpu_share.ts); on lavapipe a value
   * well under the machine's core count means another process took CPU time. */
  cores: number;
  kernel: string;
  layout: WeightLayout;
}

export type BenchLayout = WeightLayout | "auto" | "both";

export const BENCH_TYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_K", "Q6_K"] as const;
export const BENCH_SHAPES: readonly [number, number][] = [[4096, 4096], [4096, 14336]];

/** Distinct random weight rows: enough to defeat caching of a repeated tile. */
const TILE_ELEMS = 1 << 18;

function median(v: number[]): number {
  const s = [...v].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

/** A quantized weight of `rows` x `cols`: one random 1M-element tile, repeated. */
function weightBytes(type: number, rows: number, cols: number): Uint8Array {
  const tileRows = Math.max(1, Math.min(rows, Math.floor(TILE_ELEMS / cols)));
  const src = new Float32Array(tileRows * cols);
  for (let i = 0; i < src.length; i++) src[i] = Math.random() * 2 - 1;
  const tile = quantize(type, src);
  const rowBytes = tile.length / tileRows;
  const out = new Uint8Array(rowBytes * rows);
  for (let r = 0; r < rows; r += tileRows) {
    const n = Math.min(tileRows, rows - r);
    out.set(tile.subarray(0, n * rowBytes), r * rowBytes);
  }
  return out;
}

/** A buffer-to-buffer copy recorded once, timed per submission. */
export class CopyProbe implements Disposable {
  readonly bytes: number;
  #a: Buffer;
  #b: Buffer;
  #cmd: CommandList;

  constructor(readonly device: Device, bytes = 256 << 20) {
    this.bytes = bytes;
    this.#a = device.buffer(bytes);
    this.#b = device.buffer(bytes);
    this.#cmd = device.commands();
    this.#cmd.begin().fill(this.#a, 0, bytes, 0x3f800000).fill(this.#b, 0, bytes, 0).end();
    device.waitSync("compute", this.#cmd.submit());
    this.#cmd.begin().timestamp(0).copy(this.#a, this.#b, [[0, 0, bytes]]).timestamp(1).end();
  }

  /** GPU ms of one copy. */
  async time(): Promise<number> {
    await this.device.wait("compute", this.#cmd.submit());
    return this.#cmd.elapsedMs();
  }

  [Symbol.dispose](): void {
    this.#cmd[Symbol.dispose]();
    this.#b[Symbol.dispose]();
    this.#a[Symbol.dispose]();
  }
}

/**
 * Times one matvec shape, alternating with `copy` (a fresh 256 MiB probe when omitted); ms per
 * matvec and the copy's GB/s are medians over `submits` submissions of each.
 */
export async function benchOne(
  device: Device,
  type: number,
  rows: number,
  cols: number,
  opts:
    & { reps?: number; submits?: number; copy?: CopyProbe; layout?: WeightLayout }
    & MatVecOptions = {},
): Promise<MatvecBenchRow> {
  const reps = opts.reps ?? 10;
  const submits = opts.submits ?? 5;
  using ownCopy = opts.copy ? null : new CopyProbe(device);
  const copy = opts.copy ?? ownCopy!;
  using mv = new MatVec(device, type, opts);
  const layout = opts.layout ?? "ggml";
  let wb = weightBytes(type, rows, cols);
  if (layout === "lanes") {
    const lanes = new Uint8Array(wb.length);
    toLanesLayout(type, cols, wb, lanes);
    wb = lanes;
  } else if (layout === "split") {
    wb = toSplitLayout(type, cols, wb);
  }
  using w = device.buffer(Math.ceil(wb.length / 4) * 4 + 256);
  device.upload(w, wb);
  using x = device.buffer(cols * 4);
  device.upload(x, new Float32Array(cols).map(() => Math.random() * 2 - 1));
  using y = device.buffer(rows * 4);
  using cmd = device.commands();
  cmd.begin().timestamp(0);
  let kernel = "";
  for (let i = 0; i < reps; i++) {
    kernel = mv.record(cmd, { weight: w, rows, cols, x, y, layout }).kernel;
    cmd.barrier();
  }
  cmd.timestamp(1).end();
  await device.wait("compute", cmd.submit()); // warm-up: pipeline compile, page faults
  await copy.time();
  const times: number[] = [];
  const copyTimes: number[] = [];
  const share = new CpuShare();
  for (let s = 0; s < submits; s++) {
    copyTimes.push(await copy.time());
    share.start();
    await device.wait("compute", cmd.submit());
    share.stop();
    times.push(cmd.elapsedMs() / reps);
  }
  const ms = median(times);
  const bytes = wb.length + cols * 4 + rows * 4;
  return {
    type: ggmlTypeInfo(type)?.name ?? String(type),
    rows,
    cols,
    ms,
    gbps: bytes / ms / 1e6,
    copyGbps: copy.bytes / median(copyTimes) / 1e6,
    cores: share.cores,
    kernel,
    layout,
  };
}

/** Every type at every benchmark shape. */
export async function benchMatvec(
  device: Device,
  opts: {
    reps: number;
    submits?: number;
    types?: readonly string[];
    layout?: BenchLayout;
    shapes?: readonly [number, number][];
  } & MatVecOptions,
): Promise<MatvecBenchRow[]> {
  using copy = new CopyProbe(device);
  const out: MatvecBenchRow[] = [];
  for (const name of opts.types ?? BENCH_TYPES) {
    const type = (GgmlType as Record<string, number>)[name];
    if (type === undefined) throw new Error(`unknown type ${name}`);
    for (const [rows, cols] of opts.shapes ?? BENCH_SHAPES) {
      const loader: WeightLayout = lanesLayoutFits(device, type, rows, cols)
        ? "lanes"
        : splitLayoutFits(device, type)
        ? "split"
        : "ggml";
      const layouts: WeightLayout[] = opts.layout === "both"
        ? (loader === "ggml" ? ["ggml"] : ["ggml", loader])
        : opts.layout === "auto" || opts.layout === undefined
        ? [loader]
        : [opts.layout];
      for (const layout of layouts) {
        out.push(await benchOne(device, type, rows, cols, { ...opts, copy, layout }));
      }
    }
  }
  return out;
}

/** GB/s of a 256 MiB buffer-to-buffer copy: bytes copied / time = (read + write) / 2 / time. */
export async function benchCopy(
  device: Device,
  opts: { bytes?: number; submits?: number } = {},
): Promise<{ bytes: number; ms: number; gbps: number }> {
  using probe = new CopyProbe(device, opts.bytes);
  const times: number[] = [];
  for (let s = 0; s < (opts.submits ?? 5); s++) times.push(await probe.time());
  const ms = median(times);
  return { bytes: probe.bytes, ms, gbps: probe.bytes / ms / 1e6 };
}

if (import.meta.main) {
  const { values } = parseArgs({
    options: {
      reps: { type: "string", default: "10" },
      submits: { type: "string", default: "5" },
      types: { type: "string" },
      path: { type: "string", default: "auto" },
      rows: { type: "string" },
      wg: { type: "string" },
      layout: { type: "string", default: "auto" },
      shapes: { type: "string" },
    },
  });
  if (!["auto", "ggml", "lanes", "split", "both"].includes(values.layout)) {
    throw new Error(`--layout ${values.layout}: one of auto, ggml, lanes, split, both`);
  }
  using device = Device.open();
  const opts: MatVecOptions = { path: values.path as MatVecOptions["path"] };
  if (values.rows) opts.rowsPerGroup = Number(values.rows);
  if (values.wg) opts.workgroupSize = Number(values.wg);
  const types = values.types ? values.types.split(",") : BENCH_TYPES;
  console.log(`device: ${device.info.name}`);
  const rows = await benchMatvec(device, {
    ...opts,
    types,
    reps: Number(values.reps),
    submits: Number(values.submits),
    layout: values.layout as BenchLayout,
    shapes: values.shapes?.split(",").map((s) => {
      const [r, c] = s.split("x").map(Number);
      if (!(r > 0 && c > 0)) throw new Error(`--shapes: ${s} is not ROWSxCOLS`);
      return [r, c] as [number, number];
    }),
  });
  console.log("type   rows x cols      ms      GB/s  copy GB/s  vs copy  cores  layout  kernel");
  for (const r of rows) {
    console.log(
      `${r.type.padEnd(6)} ${`${r.rows}x${r.cols}`.padEnd(12)} ${r.ms.toFixed(3).padStart(8)} ${
        r.gbps.toFixed(2).padStart(8)
      } ${r.copyGbps.toFixed(2).padStart(10)} ${
        (r.gbps / r.copyGbps * 100).toFixed(0).padStart(7)
      }%  ${r.cores.toFixed(2).padStart(5)}  ${r.layout.padEnd(6)}  ${r.kernel}`,
    );
  }
}
