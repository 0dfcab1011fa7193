/**
 * How a weight's bytes are ordered on the device: GGUF's own order ("ggml"), or one of two
 * layouts the loader writes at upload for the kernels that read them.
 *
 * "split" (the GPU set's generic matvec and the prompt matmul, Q8_0 and Q6_K): GGUF's Q8_0 and
 * Q6_K blocks (34 and 210 bytes) are only 2-byte aligned, so a kernel reads them word by word and
 * joins half-words. In the split layout each row holds its blocks' bodies first (Q8_0: the 32
 * quants; Q6_K: ql, qh and the 16 scales, 208 bytes), then the blocks' f16 scales `d` in order,
 * then zeros up to a multiple of 16 bytes: every body starts 16-byte aligned and is read as whole
 * uvec4s, and a row's `d` values sit side by side. Rows stay rows (a row range is a byte range),
 * only the row stride grows (`layoutRowBytes`, by at most 14 bytes).
 *
 * The "lanes" weight layout of the CPU matvec path (shaders/matvec_run.comp, LOADU): a weight's
 * 16-byte texels permuted so that the 8 lanes of one texel fetch read one contiguous run and the
 * row loop walks memory in order.
 *
 * The run path gives each lane a unit of 512 elements (Q8_0: 16 blocks = 34 texels; Q4_0 and
 * Q4_K: 18 texels), or of 256 where the width is a multiple of 256 but not of 512 (768, 2304:
 * 17 and 9 texels), and walks the rows of a row group with it. In GGUF order a unit is one
 * contiguous range, so one fetch touches 8 ranges 288-544 bytes apart and each lane's range ends
 * after a few cache lines: the CPU's prefetchers do not follow that, and lavapipe's fetches
 * stall on memory. In the lanes layout the units of every row go in groups of 8 (a row's last
 * group may hold fewer, g); group G of all rows, row after row, forms band G (the bands before
 * it hold 8 units per row), and inside a row's part of a band texel k of the j-th unit sits at
 * k * g + j. Each unit keeps its bytes, so the shader's block decode is unchanged. Rows of 8 or
 * fewer units form a single band, in which each row keeps its place.
 *
 * Only matvec's run path reads this layout, through texel bindings (one view of the whole
 * weight); the loader permutes the weights that only matvec reads (never the embedding table,
 * which get_rows reads) where `lanesLayoutFits` says the run path will read them.
 */
import { HcError } from "../errors.ts";
import { GgmlType, ggmlTypeInfo } from "../gguf/types.ts";
import { MAX_BINDING_BYTES } from "./checks.ts";
import { type Device, TEXEL_BYTES } from "../vk/mod.ts";

/** How a weight's bytes are ordered on the device. */
export type WeightLayout = "ggml" | "lanes" | "split";

/** Elements per unit of the run path in the lanes layout, for rows of `cols` elements: 512, or
 * the half unit where 512 does not divide the row (the run path's HALF_UNIT variants). */
export function lanesUnit(cols: number): number {
  return cols % 512 === 0 ? 512 : 256;
}
/** Units per group: lavapipe's subgroup, the lanes of one fetch. */
const GROUP = 8;

/** Types the lanes layout exists for (shaders/variants.ts LANES_TYPES). */
const LANES_TYPES: ReadonlySet<number> = new Set([GgmlType.Q8_0, GgmlType.Q4_0, GgmlType.Q4_K]);

/** Bytes per row of a `cols`-wide weight of `type`. */
function rowBytesOf(type: number, cols: number): number {
  const info = ggmlTypeInfo(type);
  if (!info) throw new HcError("E_MODEL_TENSOR", `matvec layout: unknown type ${type}`);
  return cols / info.blockElems * info.blockBytes;
}

/** Whether `type` has a lanes layout for rows of `cols` elements. */
export function lanesLayoutType(type: number, cols: number): boolean {
  return LANES_TYPES.has(type) && cols > 0 && cols % 256 === 0;
}

/**
 * Whether a [rows x cols] weight of `type` should be uploaded in the lanes layout on `device`:
 * the CPU variant set (where matvec takes the run path), texel buffers, and the whole weight in
 * one texel view (the run path binds a lanes weight only as texels).
 */
export function lanesLayoutFits(device: Device, type: number, rows: number, cols: number): boolean {
  const info = device.info;
  if (device.variants !== "cpu" || !info.texelBuffer || !lanesLayoutType(type, cols)) return false;
  const limit = Math.min(info.maxTexelBufferElements * TEXEL_BYTES, MAX_BINDING_BYTES);
  return rows * rowBytesOf(type, cols) <= limit;
}

/** Units per row, texels per unit and bytes per row of a lanes-layout weight. */
function lanesShape(type: number, cols: number): { units: number; T: number; rowBytes: number } {
  if (!lanesLayoutType(type, cols)) {
    throw new HcError(
      "E_BAD_REQUEST",
      `matvec layout: no lanes layout for type ${type} with ${cols} columns`,
    );
  }
  const rowBytes = rowBytesOf(type, cols);
  const units = cols / lanesUnit(cols);
  return { units, T: rowBytes / units / TEXEL_BYTES, rowBytes };
}

/** Copies 16-byte texel `from` of `src` to texel `to` of `dst`. */
function moveTexel(src: Uint8Array, from: number, dst: Uint8Array, to: number): void {
  dst.set(src.subarray(from * TEXEL_BYTES, (from + 1) * TEXEL_BYTES), to * TEXEL_BYTES);
}

/**
 * Writes rows [0, n) of band `band`: `src` holds those rows whole, in GGUF order; `dst`
 * receives the band's part for them (n * g * T texels). Moves 32-bit words where both arrays
 * are 4-aligned (a model's weights go through here: a few ns per word, not an object per texel).
 */
function fillBand(
  s: { units: number; T: number; rowBytes: number },
  band: number,
  n: number,
  src: Uint8Array,
  dst: Uint8Array,
): void {
  const g = Math.min(GROUP, s.units - band * GROUP);
  const rowTexels = s.rowBytes / TEXEL_BYTES;
  if (src.byteOffset % 4 === 0 && dst.byteOffset % 4 === 0) {
    const sw = new Uint32Array(src.buffer, src.byteOffset, src.length >> 2);
    const dw = new Uint32Array(dst.buffer, dst.byteOffset, dst.length >> 2);
    for (let i = 0; i < n; i++) {
      for (let j = 0; j < g; j++) {
        let from = (i * rowTexels + (band * GROUP + j) * s.T) * 4;
        let to = (i * g * s.T + j) * 4;
        for (let k = 0; k < s.T; k++, from += 4, to += 4 * g) {
          dw[to] = sw[from];
          dw[to + 1] = sw[from + 1];
          dw[to + 2] = sw[from + 2];
          dw[to + 3] = sw[from + 3];
        }
      }
    }
    return;
  }
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < g; j++) {
      const from = i * rowTexels + (band * GROUP + j) * s.T;
      const to = i * g * s.T + j;
      for (let k = 0; k < s.T; k++) moveTexel(src, from + k, dst, to + k * g);
    }
  }
}

/**
 * Permutes a whole weight of `type` (GGUF order, rows of `cols` elements) from `src` into `dst`
 * in the lanes layout (`dst` may not be `src`). Throws where the type or width has no lanes
 * layout.
 */
export function toLanesLayout(type: number, cols: number, src: Uint8Array, dst: Uint8Array): void {
  const s = lanesShape(type, cols);
  checkArrays(s.rowBytes, src, dst);
  const rows = src.length / s.rowBytes;
  for (let band = 0; band * GROUP < s.units; band++) {
    const at = band * rows * GROUP * s.T * TEXEL_BYTES;
    const g = Math.min(GROUP, s.units - band * GROUP);
    fillBand(s, band, rows, src, dst.subarray(at, at + rows * g * s.T * TEXEL_BYTES));
  }
}

/** The inverse of toLanesLayout. */
export function fromLanesLayout(
  type: number,
  cols: number,
  src: Uint8Array,
  dst: Uint8Array,
): void {
  const s = lanesShape(type, cols);
  checkArrays(s.rowBytes, src, dst);
  const rows = src.length / s.rowBytes;
  const rowTexels = s.rowBytes / TEXEL_BYTES;
  for (let band = 0; band * GROUP < s.units; band++) {
    const base = band * rows * GROUP * s.T;
    const g = Math.min(GROUP, s.units - band * GROUP);
    for (let r = 0; r < rows; r++) {
      for (let j = 0; j < g; j++) {
        for (let k = 0; k < s.T; k++) {
          moveTexel(
            src,
            base + r * g * s.T + k * g + j,
            dst,
            r * rowTexels + (band * GROUP + j) * s.T + k,
          );
        }
      }
    }
  }
}

function checkArrays(rowBytes: number, src: Uint8Array, dst: Uint8Array): void {
  if (src.length !== dst.length || src.length % rowBytes !== 0 || src === dst) {
    throw new HcError(
      "E_BAD_REQUEST",
      "matvec layout: src and dst must be distinct arrays of equal length, in whole rows",
    );
  }
}

/** Rows read from the file at once while a chunk is filled (bounds the temporary memory). */
const FILL_ROWS = 256;

/**
 * A `fill` for Device.uploadFrom that reads a [rows x cols] weight in GGUF order through `read`
 * (bytes from an offset, as ModelTensor.read) and writes it in the lanes layout: each band's
 * part of a chunk is cut from the whole rows it covers, read a few hundred rows at a time (a
 * weight of several bands is read once per band).
 */
export function lanesUploadFill(
  type: number,
  rows: number,
  cols: number,
  read: (dst: Uint8Array, offset: number) => Promise<void>,
): (chunk: Uint8Array, offset: number) => Promise<void> {
  const s = lanesShape(type, cols);
  const bandBytes = rows * GROUP * s.T * TEXEL_BYTES;
  return async (chunk, offset) => {
    const end = offset + chunk.length;
    for (let at = offset; at < end;) {
      const band = Math.min(Math.floor(at / bandBytes), Math.ceil(s.units / GROUP) - 1);
      const g = Math.min(GROUP, s.units - band * GROUP);
      const segBytes = g * s.T * TEXEL_BYTES;
      const bandStart = band * bandBytes;
      const row0 = Math.floor((at - bandStart) / segBytes);
      const row1 = Math.min(
        Math.ceil((Math.min(end, bandStart + rows * segBytes) - bandStart) / segBytes),
        row0 + FILL_ROWS,
      );
      const raw = new Uint8Array((row1 - row0) * s.rowBytes);
      await read(raw, row0 * s.rowBytes);
      const part = new Uint8Array((row1 - row0) * segBytes);
      fillBand(s, band, row1 - row0, raw, part);
      const partStart = bandStart + row0 * segBytes;
      const stop = Math.min(end, partStart + part.length);
      chunk.set(part.subarray(at - partStart, stop - partStart), at - offset);
      at = stop;
    }
  };
}

/** Bytes of a block's body in the split layout, and where its f16 `d` sits in a GGUF block. */
const SPLIT_TYPES: ReadonlyMap<number, { body: number; dAt: number }> = new Map([
  [GgmlType.Q8_0, { body: 32, dAt: 0 }],
  [GgmlType.Q6_K, { body: 208, dAt: 208 }],
]);

/** Whether `type` has a split layout. */
export function splitLayoutType(type: number): boolean {
  return SPLIT_TYPES.has(type);
}

/** Whether weights of `type` go in the split layout on `device`: the GPU variant set, whose
 * generic matvec and prompt matmul read it. */
export function splitLayoutFits(device: Device, type: number): boolean {
  return device.variants === "gpu" && splitLayoutType(type);
}

/** Bytes per row of a `cols`-wide weight of `type` in `layout` (the row stride). */
export function layoutRowBytes(type: number, cols: number, layout: WeightLayout): number {
  const bytes = rowBytesOf(type, cols);
  return layout === "split" ? Math.ceil(bytes / 16) * 16 : bytes;
}

/** Rows in the split layout from whole rows in GGUF order (`dst` zero-filled by the caller or
 * fresh: the padding is not written). */
function splitRows(type: number, cols: number, src: Uint8Array, dst: Uint8Array): void {
  const t = SPLIT_TYPES.get(type);
  if (!t) throw new HcError("E_BAD_REQUEST", `matvec layout: no split layout for type ${type}`);
  const info = ggmlTypeInfo(type)!;
  const nb = cols / info.blockElems;
  const srcRow = nb * info.blockBytes;
  const dstRow = layoutRowBytes(type, cols, "split");
  const rows = src.length / srcRow;
  if (!Number.isInteger(rows) || dst.length !== rows * dstRow) {
    throw new HcError("E_BAD_REQUEST", "matvec layout: split rows need whole rows on both sides");
  }
  const bodyAt = t.dAt === 0 ? 2 : 0;
  for (let r = 0; r < rows; r++) {
    const s0 = r * srcRow, d0 = r * dstRow;
    for (let b = 0; b < nb; b++) {
      const blk = s0 + b * info.blockBytes;
      dst.set(src.subarray(blk + bodyAt, blk + bodyAt + t.body), d0 + b * t.body);
      dst[d0 + nb * t.body + 2 * b] = src[blk + t.dAt];
      dst[d0 + nb * t.body + 2 * b + 1] = src[blk + t.dAt + 1];
    }
  }
}

/** A whole weight of `type` (GGUF order) in the split layout, as a fresh array. */
export function toSplitLayout(type: number, cols: number, src: Uint8Array): Uint8Array {
  const rows = src.length / rowBytesOf(type, cols);
  const dst = new Uint8Array(rows * layoutRowBytes(type, cols, "split"));
  splitRows(type, cols, src, dst);
  return dst;
}

/**
 * A `fill` for Device.uploadFrom that reads a [rows x cols] weight in GGUF order through `read`
 * and writes it in the split layout, a few hundred rows at a time.
 */
export function splitUploadFill(
  type: number,
  cols: number,
  read: (dst: Uint8Array, offset: number) => Promise<void>,
): (chunk: Uint8Array, offset: number) => Promise<void> {
  const srcRow = rowBytesOf(type, cols);
  const dstRow = layoutRowBytes(type, cols, "split");
  return async (chunk, offset) => {
    const end = offset + chunk.length;
    for (let at = offset; at < end;) {
      const row0 = Math.floor(at / dstRow);
      const row1 = Math.min(Math.ceil(end / dstRow), row0 + FILL_ROWS);
      const raw = new Uint8Array((row1 - row0) * srcRow);
      await read(raw, row0 * srcRow);
      const part = new Uint8Array((row1 - row0) * dstRow);
      splitRows(type, cols, raw, part);
      const stop = Math.min(end, row1 * dstRow);
      chunk.set(part.subarray(at - row0 * dstRow, stop - row0 * dstRow), at - offset);
      at = stop;
    }
  };
}
