/**
 * The "lanes" weight layout of the CPU matvec path (shaders/matvec_run.comp, LOADU): a weight's
 * 16-byte texels permuted so that the 8 lanes of one texel fetch read one contiguous run and the
 * row loop walks memory in order.
 *
 * The run path gives each lane a unit of 512 elements (Q8_0: 16 blocks = 34 texels; Q4_0 and
 * Q4_K: 18 texels) and walks the rows of a row group with it. In GGUF order a unit is one
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
export type WeightLayout = "ggml" | "lanes";

/** Elements per unit of the run path in the lanes layout. */
export const LANES_UNIT = 512;
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
  return LANES_TYPES.has(type) && cols > 0 && cols % LANES_UNIT === 0;
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
  const units = cols / LANES_UNIT;
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
