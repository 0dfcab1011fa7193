/**
 * TypeScript reference of the ggml weight formats this engine runs: F32, F16, BF16, Q8_0, Q4_0,
 * Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL and IQ4_XS. Bytes are laid out exactly
 * as in GGUF files (little-endian), so a GGUF tensor dequantizes here to the values ggml's
 * dequantize_row_* gives. Tests and tools use it to check the device kernels; the block layouts
 * are documented in quant/q8_q4.ts, q4_q5.ts, kquants.ts, kquants_more.ts and iq4.ts.
 *
 * Encoding (`quantize`) is here for F32, F16, BF16, Q8_0, Q4_0, Q4_K and Q6_K, bit for bit as
 * ggml's reference quantizers; the other types are only read (tests encode them with
 * testing/quantizers.ts).
 */
import { HcError } from "../../errors.ts";
import { GgmlType, ggmlTypeInfo, SUPPORTED_WEIGHT_TYPES } from "../../gguf/types.ts";
import { bf16ToF32Array, f16ToF32Array, f32ToBf16Array, f32ToF16Array } from "./f16.ts";
import { dequantizeQ4_0, dequantizeQ8_0, quantizeQ4_0, quantizeQ8_0 } from "./q8_q4.ts";
import { dequantizeQ4_K, dequantizeQ6_K, quantizeQ4_K, quantizeQ6_K } from "./kquants.ts";
import { dequantizeQ2_K, dequantizeQ3_K, dequantizeQ5_K } from "./kquants_more.ts";
import { dequantizeQ4_1, dequantizeQ5_0, dequantizeQ5_1 } from "./q4_q5.ts";
import { dequantizeIQ4_NL, dequantizeIQ4_XS } from "./iq4.ts";

export {
  bf16ToF32,
  bf16ToF32Array,
  f16ToF32,
  f16ToF32Array,
  f32ToBf16,
  f32ToBf16Array,
  f32ToF16,
  f32ToF16Array,
} from "./f16.ts";
export { getScaleMinK4, nearestInt, packScaleMinK4, QK_K } from "./kquants.ts";
export { q3kScale } from "./kquants_more.ts";
export { IQ4_NL_VALUES, iq4xsScale } from "./iq4.ts";

type BlockQuantizer = (
  src: Float32Array,
  blocks: number,
  out: Uint8Array,
  outOffset: number,
) => void;
type BlockDequantizer = (
  bytes: Uint8Array,
  offset: number,
  blocks: number,
  out: Float32Array,
  outOffset: number,
) => void;

const BLOCK_CODECS: Record<number, { quantize?: BlockQuantizer; dequantize: BlockDequantizer }> = {
  [GgmlType.Q8_0]: { quantize: quantizeQ8_0, dequantize: dequantizeQ8_0 },
  [GgmlType.Q4_0]: { quantize: quantizeQ4_0, dequantize: dequantizeQ4_0 },
  [GgmlType.Q4_1]: { dequantize: dequantizeQ4_1 },
  [GgmlType.Q5_0]: { dequantize: dequantizeQ5_0 },
  [GgmlType.Q5_1]: { dequantize: dequantizeQ5_1 },
  [GgmlType.Q2_K]: { dequantize: dequantizeQ2_K },
  [GgmlType.Q3_K]: { dequantize: dequantizeQ3_K },
  [GgmlType.Q4_K]: { quantize: quantizeQ4_K, dequantize: dequantizeQ4_K },
  [GgmlType.Q5_K]: { dequantize: dequantizeQ5_K },
  [GgmlType.Q6_K]: { quantize: quantizeQ6_K, dequantize: dequantizeQ6_K },
  [GgmlType.IQ4_NL]: { dequantize: dequantizeIQ4_NL },
  [GgmlType.IQ4_XS]: { dequantize: dequantizeIQ4_XS },
};

/** Whether `quantize` can encode this type (every supported type decodes). */
export function canQuantize(type: number): boolean {
  return type === GgmlType.F32 || type === GgmlType.F16 || type === GgmlType.BF16 ||
    BLOCK_CODECS[type]?.quantize !== undefined;
}

/** Whether quantize/dequantize handle this ggml type id. */
export function isQuantTypeSupported(type: number): boolean {
  return (SUPPORTED_WEIGHT_TYPES as readonly number[]).includes(type);
}

function layoutOf(type: number): { name: string; blockElems: number; blockBytes: number } {
  const info = ggmlTypeInfo(type);
  if (!info || !isQuantTypeSupported(type)) {
    const name = info ? info.name : `unknown type id ${type}`;
    const names = SUPPORTED_WEIGHT_TYPES.map((t) => ggmlTypeInfo(t)?.name).join(", ");
    throw new HcError(
      "E_MODEL_TENSOR",
      `tensor type ${name} is not supported here (supported: ${names}); requantize the model`,
    );
  }
  return info;
}

function blockCount(type: number, elems: number): { blocks: number; bytes: number } {
  const info = layoutOf(type);
  if (!Number.isSafeInteger(elems) || elems < 0) {
    throw new HcError("E_MODEL_TENSOR", `element count ${elems} is not a non-negative integer`);
  }
  if (elems % info.blockElems !== 0) {
    throw new HcError(
      "E_MODEL_TENSOR",
      `${info.name} stores whole blocks of ${info.blockElems} elements; ${elems} is not a multiple`,
    );
  }
  const blocks = elems / info.blockElems;
  return { blocks, bytes: blocks * info.blockBytes };
}

/** Bytes of one row of `rowElems` elements of `type` (whole blocks only). */
export function rowBytes(type: number, rowElems: number): number {
  return blockCount(type, rowElems).bytes;
}

/** Elements per block of `type` (1 for F32/F16/BF16, 32 for Q8_0/Q4_0/Q5_x/IQ4_NL, 256 for
 * K-quants and IQ4_XS). */
export function blockElems(type: number): number {
  return layoutOf(type).blockElems;
}

/** Encodes `src` as `type`. Its length must be whole blocks. */
export function quantize(type: number, src: Float32Array): Uint8Array {
  const { blocks, bytes } = blockCount(type, src.length);
  const out = new Uint8Array(bytes);
  switch (type) {
    case GgmlType.F32:
      out.set(new Uint8Array(src.buffer, src.byteOffset, bytes));
      return out;
    case GgmlType.F16:
      f32ToF16Array(src, new Uint16Array(out.buffer));
      return out;
    case GgmlType.BF16:
      f32ToBf16Array(src, new Uint16Array(out.buffer));
      return out;
  }
  const encode = BLOCK_CODECS[type].quantize;
  if (!encode) {
    throw new HcError(
      "E_MODEL_TENSOR",
      `encoding ${layoutOf(type).name} is not implemented; the engine only reads it`,
    );
  }
  encode(src, blocks, out, 0);
  return out;
}

/** 16-bit words of `bytes`, viewed in place when aligned, else copied. */
function u16Words(bytes: Uint8Array, count: number): Uint16Array {
  if (bytes.byteOffset % 2 === 0) return new Uint16Array(bytes.buffer, bytes.byteOffset, count);
  return new Uint16Array(bytes.slice(0, count * 2).buffer);
}

/**
 * Decodes the first `elems` elements stored in `bytes` into `out` at `outOffset`, with the
 * semantics of ggml's dequantize_row_*. `bytes` may be longer than needed, never shorter.
 */
export function dequantizeInto(
  type: number,
  bytes: Uint8Array,
  elems: number,
  out: Float32Array,
  outOffset = 0,
): void {
  const { blocks, bytes: need } = blockCount(type, elems);
  const name = layoutOf(type).name;
  if (bytes.length < need) {
    throw new HcError(
      "E_MODEL_TENSOR",
      `${elems} ${name} elements need ${need} bytes, got ${bytes.length}`,
    );
  }
  if (!Number.isSafeInteger(outOffset) || outOffset < 0 || out.length - outOffset < elems) {
    throw new HcError(
      "E_MODEL_TENSOR",
      `output of ${out.length} floats cannot hold ${elems} at offset ${outOffset}`,
    );
  }
  const dst = out.subarray(outOffset, outOffset + elems);
  switch (type) {
    case GgmlType.F32:
      new Uint8Array(dst.buffer, dst.byteOffset, need).set(bytes.subarray(0, need));
      return;
    case GgmlType.F16:
      f16ToF32Array(u16Words(bytes, elems), dst);
      return;
    case GgmlType.BF16:
      bf16ToF32Array(u16Words(bytes, elems), dst);
      return;
  }
  BLOCK_CODECS[type].dequantize(bytes, 0, blocks, out, outOffset);
}

/** Decodes the first `elems` elements stored in `bytes`. */
export function dequantize(type: number, bytes: Uint8Array, elems: number): Float32Array {
  const { bytes: need } = blockCount(type, elems);
  // Checked before allocating so a bogus count cannot ask for a huge buffer.
  if (bytes.length < need) {
    throw new HcError(
      "E_MODEL_TENSOR",
      `${elems} ${layoutOf(type).name} elements need ${need} bytes, got ${bytes.length}`,
    );
  }
  const out = new Float32Array(elems);
  dequantizeInto(type, bytes, elems, out, 0);
  return out;
}

/**
 * Decodes row `row` of a row-major matrix of `rowElems`-element rows stored in `bytes`
 * (e.g. one token's embedding). Writes into `out` when given.
 */
export function dequantizeRow(
  type: number,
  bytes: Uint8Array,
  row: number,
  rowElems: number,
  out?: Float32Array,
): Float32Array {
  const stride = rowBytes(type, rowElems);
  if (!Number.isSafeInteger(row) || row < 0 || (row + 1) * stride > bytes.length) {
    throw new HcError(
      "E_MODEL_TENSOR",
      `row ${row} of ${rowElems}-element rows lies outside a ${bytes.length}-byte tensor`,
    );
  }
  const dst = out ?? new Float32Array(rowElems);
  dequantizeInto(type, bytes.subarray(row * stride, (row + 1) * stride), rowElems, dst, 0);
  return dst;
}
