/**
 * Selection kernels: argmax (the greedy decode step reads back only its u32 result) and top-k
 * (the cache policies' prefill and refresh selections), both multi-workgroup over rows of up to
 * hundreds of thousands of f32 values. Ordering rules (shared with cache/analysis.ts topkSet and
 * testing/reference_ops.ts): NaN ranks as -Infinity, -0 equals +0, ties go to the lower index.
 *
 * Both take a caller-owned device `scratch` buffer (size from `scratchBytes`) so nothing is
 * allocated at record time and a recorded step replays as is. `record` adds the barriers between
 * its own dispatches but none before the first or after the last: put `cmd.barrier()` between it
 * and the dispatch that writes `x`, and between it and whatever reads its outputs.
 */
import type { Binding, CommandList, Device, Kernel } from "../vk/mod.ts";
import {
  checkedWindow,
  checkInt,
  checkWorkgroupSize,
  grid2d,
  gridRows,
  splitRows,
  subWindow,
  type Window,
} from "./elementwise.ts";

const F32 = 4;
/** Largest row the selection kernels accept (indices and counts stay far inside u32). */
export const MAX_SELECT_ROW = 1 << 28;

function checkRows(n: number, rows: number, rowStride: number): void {
  checkInt(n, "n", 1, MAX_SELECT_ROW);
  checkInt(rows, "rows", 1, 1 << 24);
  checkInt(rowStride, "rowStride", n);
}

export interface ArgmaxArgs {
  /** `rows` rows of `n` values, `rowStride` elements apart. */
  x: Binding;
  n: number;
  rows?: number;
  rowStride?: number;
  /** u32 results: out[outOffset + r] = argmax of row r. */
  out: Binding;
  outOffset?: number;
  /** At least scratchBytes(n, rows) bytes. */
  scratch: Binding;
}

/** Argmax per row: a partial pass (one workgroup per chunk of a row) and a merge pass. */
export class Argmax implements Disposable {
  readonly device: Device;
  readonly #partial: Kernel;
  readonly #merge: Kernel;
  readonly #chunkElems: number;

  constructor(
    device: Device,
    options: { workgroupSize?: number; itemsPerInvocation?: number } = {},
  ) {
    this.device = device;
    const wg = checkWorkgroupSize(device, options.workgroupSize ?? 256);
    this.#chunkElems = wg *
      checkInt(options.itemsPerInvocation ?? 8, "itemsPerInvocation", 1, 4096);
    this.#partial = device.kernel("argmax_partial", { bindings: 3, pushBytes: 24, spec: [wg] });
    try {
      this.#merge = device.kernel("argmax_merge", { bindings: 3, pushBytes: 24, spec: [wg] });
    } catch (e) {
      this.#partial.dispose();
      throw e;
    }
  }

  /** Partials written per row. */
  chunks(n: number): number {
    return Math.ceil(n / this.#chunkElems);
  }

  /** Scratch the record of (n, rows) needs: one (key, index) pair per chunk and row. */
  scratchBytes(n: number, rows = 1): number {
    checkRows(n, rows, n);
    const runRows = splitRows(this.device, rows, [n * F32])[0][1];
    return runRows * this.chunks(n) * 8;
  }

  record(cmd: CommandList, a: ArgmaxArgs): void {
    const rows = a.rows ?? 1;
    const stride = a.rowStride ?? a.n;
    checkRows(a.n, rows, stride);
    const outOffset = checkInt(a.outOffset ?? 0, "outOffset");
    const chunks = this.chunks(a.n);
    const x = checkedWindow(this.device, a.x, ((rows - 1) * stride + a.n) * F32, "argmax x");
    const out = checkedWindow(this.device, a.out, (outOffset + rows) * 4, "argmax out");
    const runs = splitRows(this.device, rows, [stride * F32]);
    const scratch = checkedWindow(
      this.device,
      a.scratch,
      runs[0][1] * chunks * 8,
      "argmax scratch",
    );
    runs.forEach(([r0, count], run) => {
      if (run > 0) cmd.barrier(); // the runs share the scratch
      const xb = subWindow(x, r0 * stride * F32, count * stride * F32);
      const sb = subWindow(scratch, 0, count * chunks * 8);
      const ob = subWindow(out, 0, (outOffset + rows) * 4);
      const push = new Uint32Array([a.n, count, stride, this.#chunkElems, chunks, outOffset + r0]);
      cmd.dispatch(this.#partial, [xb, sb, ob], push, gridRows(this.device, chunks, count));
      cmd.barrier();
      cmd.dispatch(this.#merge, [xb, sb, ob], push, grid2d(this.device, count));
    });
  }

  [Symbol.dispose](): void {
    this.#partial.dispose();
    this.#merge.dispose();
  }
}

export interface TopkArgs {
  /** `rows` rows of `n` values, `rowStride` elements apart. */
  x: Binding;
  n: number;
  /** 0 <= k <= n; k = 0 records nothing. */
  k: number;
  rows?: number;
  rowStride?: number;
  /** u32 positions of the k largest of row r, ascending, at indices[outOffset + r·outStride ..]. */
  indices: Binding;
  /** Optional f32 values of the selected elements, same layout as `indices`. */
  values?: Binding;
  outStride?: number;
  outOffset?: number;
  /** At least scratchBytes(n, rows) bytes. */
  scratch: Binding;
}

/** Digit passes of the radix select, from the top bits down: [shift, bits]. */
const PASSES: readonly [number, number][] = [[21, 11], [10, 11], [0, 10]];
const HIST_BINS = 2048;
/** Elements per invocation in the hist/count/compact stages (ITEMS in shaders/topk.comp). */
const ITEMS = 16;

/**
 * Top-k per row by radix select: three histogram passes over the float bits pin the k-th
 * largest key T exactly, then a count pass and a stable compaction write the indices above T
 * plus the lowest-index ones equal to T, in ascending position order. Eight dispatches; every
 * invocation loops at most a few dozen times (safe under lavapipe's loop cap).
 */
export class TopK implements Disposable {
  readonly device: Device;
  readonly #wg: number;
  readonly #kernels: { hist: Kernel; select: Kernel; count: Kernel; compact: Kernel };

  constructor(device: Device, options: { workgroupSize?: number } = {}) {
    this.device = device;
    this.#wg = checkWorkgroupSize(device, options.workgroupSize ?? 256);
    const made: Kernel[] = [];
    try {
      const k = (name: string) => {
        const kernel = device.kernel(name, { bindings: 4, pushBytes: 56, spec: [this.#wg] });
        made.push(kernel);
        return kernel;
      };
      this.#kernels = {
        hist: k("topk_hist"),
        select: k("topk_select"),
        count: k("topk_count"),
        compact: k("topk_compact"),
      };
    } catch (e) {
      for (const m of made) m.dispose();
      throw e;
    }
  }

  /** Chunks (workgroups) per row in the data-parallel stages. */
  chunks(n: number): number {
    return Math.ceil(n / (this.#wg * ITEMS));
  }

  #layout(n: number, rows: number) {
    const hist = 0;
    const state = rows * HIST_BINS;
    const count = state + rows * 2;
    return { hist, state, count, words: count + rows * this.chunks(n) * 2 };
  }

  /** Scratch the record of (n, rows) needs (histograms, per-row state, per-chunk counts). */
  scratchBytes(n: number, rows = 1): number {
    checkRows(n, rows, n);
    // Runs split by x alone are at least as long as the runs record() makes.
    return this.#layout(n, splitRows(this.device, rows, [n * F32])[0][1]).words * 4;
  }

  record(cmd: CommandList, a: TopkArgs): void {
    const rows = a.rows ?? 1;
    const stride = a.rowStride ?? a.n;
    checkRows(a.n, rows, stride);
    const k = checkInt(a.k, "k", 0, a.n);
    if (k === 0) return;
    const outStride = checkInt(a.outStride ?? k, "outStride", k);
    const outOffset = checkInt(a.outOffset ?? 0, "outOffset");
    const outBytes = (outOffset + (rows - 1) * outStride + k) * 4;
    const x = checkedWindow(this.device, a.x, ((rows - 1) * stride + a.n) * F32, "topk x");
    const idx = checkedWindow(this.device, a.indices, outBytes, "topk indices");
    const val = a.values ? checkedWindow(this.device, a.values, outBytes, "topk values") : null;
    const runs = splitRows(this.device, rows, [stride * F32, outStride * 4]);
    const layout = this.#layout(a.n, runs[0][1]);
    const scratch = checkedWindow(this.device, a.scratch, layout.words * 4, "topk scratch");
    const chunks = this.chunks(a.n);
    runs.forEach(([r0, count]) => {
      cmd.barrier(); // earlier users of the scratch (an earlier run or top-k) finish first
      this.#recordRun(cmd, a.n, k, count, stride, chunks, layout, {
        x: subWindow(x, r0 * stride * F32, count * stride * F32),
        scratch,
        out: [idx, val ?? idx].map((w) =>
          subWindow(w, r0 * outStride * 4, outOffset * 4 + count * outStride * 4)
        ),
        outStride,
        outOffset,
        values: val !== null,
      });
    });
  }

  #recordRun(
    cmd: CommandList,
    n: number,
    k: number,
    rows: number,
    stride: number,
    chunks: number,
    layout: { hist: number; state: number; count: number },
    b: {
      x: Binding;
      scratch: Window;
      out: Binding[];
      outStride: number;
      outOffset: number;
      values: boolean;
    },
  ): void {
    const binds = [b.x, b.scratch, ...b.out];
    cmd.fill(b.scratch.buffer, b.scratch.offset + layout.hist * 4, rows * HIST_BINS * 4, 0)
      .barrier();
    const push = (pass: number) =>
      new Uint32Array([
        n,
        k,
        rows,
        stride,
        chunks,
        PASSES[Math.min(pass, 2)][0],
        PASSES[Math.min(pass, 2)][1],
        pass,
        layout.hist,
        layout.state,
        layout.count,
        b.outStride,
        b.outOffset,
        b.values ? 1 : 0,
      ]);
    const perChunk = gridRows(this.device, chunks, rows);
    for (let pass = 0; pass < PASSES.length; pass++) {
      cmd.dispatch(this.#kernels.hist, binds, push(pass), perChunk).barrier();
      cmd.dispatch(this.#kernels.select, binds, push(pass), grid2d(this.device, rows)).barrier();
    }
    cmd.dispatch(this.#kernels.count, binds, push(3), perChunk).barrier();
    cmd.dispatch(this.#kernels.compact, binds, push(3), perChunk);
  }

  [Symbol.dispose](): void {
    for (const kernel of Object.values(this.#kernels)) kernel.dispose();
  }
}

/** Both selection kernels of one device. */
export class SelectKernels implements Disposable {
  readonly argmax: Argmax;
  readonly topk: TopK;

  constructor(device: Device) {
    this.argmax = new Argmax(device);
    try {
      this.topk = new TopK(device);
    } catch (e) {
      this.argmax[Symbol.dispose]();
      throw e;
    }
  }

  [Symbol.dispose](): void {
    this.argmax[Symbol.dispose]();
    this.topk[Symbol.dispose]();
  }
}
