/**
 * The "lanes" weight layout of the CPU matvec path (shaders/matvec_run.comp, LOADU): each row's
 * 16-byte texels permuted so that the 8 lanes of one texel fetch read one contiguous run.
 *
 * The run path gives each lane a unit of 512 elements (Q8_0: 16 blocks = 34 texels; Q4_0 and
 * Q4_K: 18 texels), and in GGUF order a unit is one contiguous range, so one fetch touches 8
 * ranges 288-544 bytes apart and each lane's range ends after a few cache lines: the CPU's
 * prefetchers do not follow that, and lavapipe's fetches stall on memory. In the lanes layout a
 * row's units go in groups of 8 (the last group of a row may hold fewer, g), and texel k of the
 * group's j-th unit sits at the group's start + k * g + j. Each unit keeps its bytes (the
 * shader's block decode is unchanged) and each row keeps its place and size; only the order of
 * the texels inside a row changes.
 *
 * Only matvec's run path reads this layout, through texel bindings; the loader permutes the
 * weights that only matvec reads (never the embedding table, which get_rows reads) where
 * `lanesLayoutFits` says the run path will read them.
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

/**
 * Permutes whole rows of `type` (GGUF order, `cols` elements each) from `src` into `dst` in
 * the lanes layout (`dst` may not be `src`). Throws where the type or width has no lanes layout.
 */
export function toLanesLayout(type: number, cols: number, src: Uint8Array, dst: Uint8Array): void {
  lanesPermute(type, cols, src, dst, true);
}

/** The inverse of toLanesLayout. */
export function fromLanesLayout(
  type: number,
  cols: number,
  src: Uint8Array,
  dst: Uint8Array,
): void {
  lanesPermute(type, cols, src, dst, false);
}

function lanesPermute(
  type: number,
  cols: number,
  src: Uint8Array,
  dst: Uint8Array,
  forward: boolean,
): void {
  if (!lanesLayoutType(type, cols)) {
    throw new HcError(
      "E_BAD_REQUEST",
      `matvec layout: no lanes layout for type ${type} with ${cols} columns`,
    );
  }
  const rowBytes = rowBytesOf(type, cols);
  if (src.length !== dst.length || src.length % rowBytes !== 0 || src === dst) {
    throw new HcError(
      "E_BAD_REQUEST",
      "matvec layout: src and dst must be distinct arrays of equal length, in whole rows",
    );
  }
  const units = cols / LANES_UNIT;
  const unitTexels = rowBytes / units / TEXEL_BYTES;
  // Texel moves within one row, as 32-bit words (4 per texel) from a 4-aligned view when the
  // arrays allow, else bytes.
  const aligned = src.byteOffset % 4 === 0 && dst.byteOffset % 4 === 0;
  const s32 = aligned ? new Uint32Array(src.buffer, src.byteOffset, src.length / 4) : null;
  const d32 = aligned ? new Uint32Array(dst.buffer, dst.byteOffset, dst.length / 4) : null;
  for (let row = 0; row < src.length / rowBytes; row++) {
    const rowTexel = row * rowBytes / TEXEL_BYTES;
    for (let u = 0; u < units; u++) {
      const group = Math.floor(u / GROUP);
      const g = Math.min(GROUP, units - group * GROUP);
      const base = rowTexel + group * GROUP * unitTexels + (u % GROUP);
      for (let k = 0; k < unitTexels; k++) {
        const ggml = rowTexel + u * unitTexels + k;
        const lanes = base + k * g;
        const from = forward ? ggml : lanes;
        const to = forward ? lanes : ggml;
        if (s32 && d32) {
          d32.set(s32.subarray(from * 4, from * 4 + 4), to * 4);
        } else {
          dst.set(src.subarray(from * TEXEL_BYTES, (from + 1) * TEXEL_BYTES), to * TEXEL_BYTES);
        }
      }
    }
  }
}

/**
 * A `fill` for Device.uploadFrom that reads a weight in GGUF order through `read` (bytes from
 * an offset, as ModelTensor.read) and writes it in the lanes layout: each chunk is cut from the
 * whole rows that cover it, read and permuted.
 */
export function lanesUploadFill(
  type: number,
  cols: number,
  read: (dst: Uint8Array, offset: number) => Promise<void>,
): (chunk: Uint8Array, offset: number) => Promise<void> {
  const rowBytes = rowBytesOf(type, cols);
  return async (chunk, offset) => {
    const row0 = Math.floor(offset / rowBytes);
    const row1 = Math.ceil((offset + chunk.length) / rowBytes);
    const raw = new Uint8Array((row1 - row0) * rowBytes);
    await read(raw, row0 * rowBytes);
    const out = new Uint8Array(raw.length);
    toLanesLayout(type, cols, raw, out);
    const at = offset - row0 * rowBytes;
    chunk.set(out.subarray(at, at + chunk.length));
  };
}
