/**
 * ggml's 32-element blocks with an offset or a fifth bit (ggml-common.h), all little-endian:
 *   block_q4_1 = { f16 d; f16 m; uint8 qs[16] }            20 bytes, x[j] = lo(qs[j])*d + m,
 *                                                                    x[j + 16] = hi(qs[j])*d + m
 *   block_q5_0 = { f16 d; uint8 qh[4]; uint8 qs[16] }      22 bytes, q = nibble | bit << 4,
 *                                                                    x = (q - 16)*d
 *   block_q5_1 = { f16 d; f16 m; uint8 qh[4]; uint8 qs[16] } 24 bytes, x = q*d + m
 * qh read as a little-endian u32: bit j is the fifth bit of element j, bit j + 16 that of
 * element j + 16 (ggml's dequantize_row_q5_0/q5_1).
 */
import { f16LookupTable } from "./f16.ts";

export const Q4_1_BLOCK_BYTES = 20;
export const Q5_0_BLOCK_BYTES = 22;
export const Q5_1_BLOCK_BYTES = 24;

function u32At(b: Uint8Array, o: number): number {
  return (b[o] | (b[o + 1] << 8) | (b[o + 2] << 16) | (b[o + 3] << 24)) >>> 0;
}

export function dequantizeQ4_1(
  bytes: Uint8Array,
  offset: number,
  blocks: number,
  out: Float32Array,
  outOffset: number,
): void {
  const half = f16LookupTable();
  for (let b = 0; b < blocks; b++) {
    const o = offset + b * Q4_1_BLOCK_BYTES;
    const d = half[bytes[o] | (bytes[o + 1] << 8)];
    const m = half[bytes[o + 2] | (bytes[o + 3] << 8)];
    const y = outOffset + b * 32;
    for (let j = 0; j < 16; j++) {
      const q = bytes[o + 4 + j];
      out[y + j] = (q & 0x0f) * d + m;
      out[y + j + 16] = (q >>> 4) * d + m;
    }
  }
}

/** Shared by Q5_0 (offset -16, no m) and Q5_1 (offset 0, with m). */
function dequantizeQ5(
  bytes: Uint8Array,
  offset: number,
  blocks: number,
  out: Float32Array,
  outOffset: number,
  withMin: boolean,
): void {
  const half = f16LookupTable();
  const blockBytes = withMin ? Q5_1_BLOCK_BYTES : Q5_0_BLOCK_BYTES;
  const head = withMin ? 4 : 2;
  const bias = withMin ? 0 : 16;
  for (let b = 0; b < blocks; b++) {
    const o = offset + b * blockBytes;
    const d = half[bytes[o] | (bytes[o + 1] << 8)];
    const m = withMin ? half[bytes[o + 2] | (bytes[o + 3] << 8)] : 0;
    const qh = u32At(bytes, o + head);
    const y = outOffset + b * 32;
    for (let j = 0; j < 16; j++) {
      const q = bytes[o + head + 4 + j];
      const q0 = ((q & 0x0f) | (((qh >>> j) & 1) << 4)) - bias;
      const q1 = ((q >>> 4) | (((qh >>> (j + 16)) & 1) << 4)) - bias;
      out[y + j] = q0 * d + m;
      out[y + j + 16] = q1 * d + m;
    }
  }
}

export function dequantizeQ5_0(
  bytes: Uint8Array,
  offset: number,
  blocks: number,
  out: Float32Array,
  outOffset: number,
): void {
  dequantizeQ5(bytes, offset, blocks, out, outOffset, false);
}

export function dequantizeQ5_1(
  bytes: Uint8Array,
  offset: number,
  blocks: number,
  out: Float32Array,
  outOffset: number,
): void {
  dequantizeQ5(bytes, offset, blocks, out, outOffset, true);
}
