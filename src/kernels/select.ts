/**
 * Selection kernel: argmax (the greedy decode step reads back only its u32 result),
 * multi-workgroup over rows of up to hundreds of thousands of f32 values. (The cache policies'
 * top-k selections are fused with their scores: kernels/scores.ts.) Ordering rules (shared with
 * cache/analysis.ts topkSet and testing/reference_ops.ts): NaN ranks as -Infinity, -0 equals +0,
 * ties go to the lower index.
 *
 * It takes a caller-owned device `scratch` buffer (size from `scratchBytes`) so nothing is
 * allocated at record time and a recorded step replays as is. `record` adds the barriers between
 * its own dispatches but none before the first or after the last: put `cmd.barrier()` between it
 * and the dispatch that writes `x`, and between it and whatever reads its outputs.
 */
import { type Binding, type CommandList, type Device, type Kernel, pushLayout } from "../vk/mod.ts";
import {
  checkedWindow,
  checkInt,
  checkWorkgroupSize,
  grid2d,
  gridRows,
  splitRows,
  subWindow,
} from "./checks.ts";
import { SHADERS } from "../../shaders/variants.ts";

const F32 = 4;

/** shaders/argmax.comp's push block (both stages). */
const ARGMAX_PUSH = pushLayout({
  n: "u32",
  rows: "u32",
  rowStride: "u32",
  chunkElems: "u32",
  chunks: "u32",
  outOffset: "u32",
});

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
    this.#partial = device.kernel(SHADERS.argmax.variant({ stage: "partial" }), {
      bindings: 3,
      push: ARGMAX_PUSH,
      spec: [wg],
    });
    try {
      this.#merge = device.kernel(SHADERS.argmax.variant({ stage: "merge" }), {
        bindings: 3,
        push: ARGMAX_PUSH,
        spec: [wg],
      });
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
      const push = ARGMAX_PUSH.pack({
        n: a.n,
        rows: count,
        rowStride: stride,
        chunkElems: this.#chunkElems,
        chunks,
        outOffset: outOffset + r0,
      });
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
