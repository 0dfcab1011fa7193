/**
 * Row gather / scatter between device buffers, in raw 32-bit words (f32 rows, or f16 / bf16 rows
 * of an even element count): compacts the selected KV rows of a head into its cache slots, or
 * scatters rows back. Row i of the call copies source row srcRows[i] to destination row
 * dstRows[i]; either side may instead be contiguous (row start + i). A row that falls outside
 * its binding (a bad index in a device index buffer) is skipped: never read or written out of
 * bounds.
 *
 * Buffers larger than maxStorageBufferRange are covered by overlapping windows, one dispatch per
 * (source window, destination window) pair, each copying only the rows that start in its own
 * part, so every row is copied exactly once. `record` adds no barrier before or after itself.
 * The rows copied must not overlap the rows read (invocations copy in no particular order).
 */
import { type Binding, type CommandList, type Device, type Kernel, pushLayout } from "../vk/mod.ts";
import {
  badKernelArgs,
  checkedWindow,
  checkInt,
  checkWorkgroupSize,
  grid2d,
  subWindow,
  type Window,
} from "./checks.ts";
import { SHADERS } from "../../shaders/variants.ts";

const U32_MAX = 0xffff_ffff;

/** shaders/gather.comp's push block. */
const GATHER_PUSH = pushLayout({
  count: "u32",
  rowWords: "u32",
  srcStride: "u32",
  dstStride: "u32",
  srcBase: "u32",
  dstBase: "u32",
  srcIdxStart: "u32",
  dstIdxStart: "u32",
  srcWin: "u32",
  dstWin: "u32",
  srcOwnLo: "u32",
  srcOwnHi: "u32",
  dstOwnLo: "u32",
  dstOwnHi: "u32",
  srcLen: "u32",
  dstLen: "u32",
  flags: "u32",
});

/** One side (source or destination) of a gather. */
export interface RowSide {
  /** The rows' buffer (or a window of one); word positions count from the window's start. */
  buffer: Binding;
  /** u32 row numbers, one per copied row, from element `indexStart`; omitted: contiguous. */
  rows?: Binding;
  /** First element of `rows` used, or with `rows` omitted the first row number (default 0). */
  indexStart?: number;
  /** Words between consecutive rows (default rowWords). */
  strideWords?: number;
  /** Word of row 0 (default 0), e.g. a head's offset within a token's row of all heads. */
  baseWords?: number;
}

export interface GatherArgs {
  src: RowSide;
  dst: RowSide;
  /** Rows to copy. */
  count: number;
  /** 32-bit words per row (a row of f16 values holds two per word). */
  rowWords: number;
}

interface Part {
  /** Bound window, in the caller's window. */
  winWords: number;
  lenWords: number;
  /** Row starts owned by this part. */
  ownLo: number;
  ownHi: number;
}

/**
 * Windows covering `w` such that every row of `rowWords` that starts in [ownLo, ownHi) lies
 * inside the window: consecutive windows overlap by at least one row.
 */
function parts(device: Device, w: Window, rowWords: number): Part[] {
  const words = Math.floor(w.bytes / 4);
  const range = device.info.maxStorageBufferRange;
  if (w.bytes <= range) return [{ winWords: 0, lenWords: words, ownLo: 0, ownHi: U32_MAX }];
  const align = device.info.minStorageBufferOffsetAlignment;
  const winBytes = Math.floor(range / align) * align;
  const stepBytes = Math.floor((winBytes - rowWords * 4) / align) * align;
  if (stepBytes <= 0) badKernelArgs(`a row of ${rowWords * 4} bytes cannot be bound`);
  const out: Part[] = [];
  for (let start = 0; start < w.bytes; start += stepBytes) {
    const len = Math.min(winBytes, w.bytes - start);
    const last = start + len >= w.bytes;
    out.push({
      winWords: start / 4,
      lenWords: Math.floor(len / 4),
      ownLo: start / 4,
      ownHi: last ? U32_MAX : (start + stepBytes) / 4,
    });
    if (last) break;
  }
  return out;
}

/** Row gather/scatter of 32-bit words. */
export class RowGather implements Disposable {
  readonly device: Device;
  readonly kernel: Kernel;
  readonly #wg: number;

  constructor(device: Device, options: { workgroupSize?: number } = {}) {
    this.device = device;
    this.#wg = checkWorkgroupSize(device, options.workgroupSize ?? 256);
    this.kernel = device.kernel(SHADERS.gather.variant(), {
      bindings: 4,
      push: GATHER_PUSH,
      spec: [this.#wg],
    });
  }

  #side(s: RowSide, count: number, rowWords: number, what: string) {
    const stride = checkInt(s.strideWords ?? rowWords, `${what} strideWords`, 1);
    const base = checkInt(s.baseWords ?? 0, `${what} baseWords`);
    const start = checkInt(s.indexStart ?? 0, `${what} indexStart`);
    const win = checkedWindow(this.device, s.buffer, 0, `${what} buffer`);
    if (win.bytes / 4 > U32_MAX) badKernelArgs(`${what} buffer is over 16 GiB of words`);
    let rows: Binding | null = null;
    if (s.rows) {
      const iw = checkedWindow(this.device, s.rows, (start + count) * 4, `${what} rows`);
      rows = subWindow(iw, 0, (start + count) * 4);
      if ((start + count) * 4 > this.device.info.maxStorageBufferRange) {
        badKernelArgs(`${what} rows: ${start + count} indices exceed one binding`);
      }
    } else {
      // Contiguous rows are known here, so a bad range is an error rather than a silent skip.
      if (
        start + count > U32_MAX || base + (start + count - 1) * stride + rowWords > win.bytes / 4
      ) {
        badKernelArgs(`${what}: rows ${start}..${start + count - 1} do not fit the buffer`);
      }
    }
    return { win, stride, base, start, rows };
  }

  record(cmd: CommandList, a: GatherArgs): void {
    const count = checkInt(a.count, "count", 0);
    const rowWords = checkInt(a.rowWords, "rowWords", 1);
    if (count === 0) return;
    const src = this.#side(a.src, count, rowWords, "gather src");
    const dst = this.#side(a.dst, count, rowWords, "gather dst");
    const srcParts = parts(this.device, src.win, rowWords);
    const dstParts = parts(this.device, dst.win, rowWords);
    const wide = rowWords % 4 === 0 && src.stride % 4 === 0 && dst.stride % 4 === 0 &&
      src.base % 4 === 0 && dst.base % 4 === 0 &&
      [
        ...srcParts.map((p) => src.win.offset + p.winWords * 4),
        ...dstParts.map((p) => dst.win.offset + p.winWords * 4),
      ]
        .every((o) => o % 16 === 0);
    const units = wide ? rowWords / 4 : rowWords;
    if (count * units > U32_MAX) badKernelArgs(`gather of ${count} rows is too large for one call`);
    const groups = grid2d(this.device, Math.ceil((count * units) / this.#wg));
    const flags = (src.rows ? 1 : 0) | (dst.rows ? 2 : 0) | (wide ? 4 : 0);
    for (const sp of srcParts) {
      for (const dp of dstParts) {
        const push = GATHER_PUSH.pack({
          count,
          rowWords,
          srcStride: src.stride,
          dstStride: dst.stride,
          srcBase: src.base,
          dstBase: dst.base,
          srcIdxStart: src.start,
          dstIdxStart: dst.start,
          srcWin: sp.winWords,
          dstWin: dp.winWords,
          srcOwnLo: sp.ownLo,
          srcOwnHi: sp.ownHi,
          dstOwnLo: dp.ownLo,
          dstOwnHi: dp.ownHi,
          srcLen: sp.lenWords,
          dstLen: dp.lenWords,
          flags,
        });
        // An unused index binding still needs a valid buffer; the flags keep it unread.
        const anyIdx = src.rows ?? dst.rows ?? subWindow(src.win, sp.winWords * 4, 16);
        cmd.dispatch(
          this.kernel,
          [
            subWindow(src.win, sp.winWords * 4, sp.lenWords * 4),
            subWindow(dst.win, dp.winWords * 4, dp.lenWords * 4),
            src.rows ?? anyIdx,
            dst.rows ?? anyIdx,
          ],
          push,
          groups,
        );
      }
    }
  }

  [Symbol.dispose](): void {
    this.kernel.dispose();
  }
}
