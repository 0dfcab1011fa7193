/**
 * ggml's 32-element blocks Q8_0 and Q4_0 (ggml-common.h):
 *   block_q8_0 = { f16 d; int8 qs[32] }            34 bytes, x[j] = qs[j] * d
 *   block_q4_0 = { f16 d; uint8 qs[16] }           18 bytes, x[j] = ((qs[j] & 15) - 8) * d,
 *                                                             x[j + 16] = ((qs[j] >> 4) - 8) * d
 * The quantizers follow quantize_row_q8_0_ref / quantize_row_q4_0_ref step by step, with every
 * intermediate rounded to f32 as C does, so the bytes match ggml's reference bit for bit.
 */
import { f16LookupTable, f32ToF16 } from "./f16.ts";

export const QK8_0 = 32;
export const Q8_0_BLOCK_BYTES = 34;
export const QK4_0 = 32;
export const Q4_0_BLOCK_BYTES = 18;

const fround = Math.fround;

/** C's roundf: half away from zero. */
function roundAwayFromZero(x: number): number {
  return x < 0 ? -Math.floor(-x + 0.5) : Math.floor(x + 0.5);
}

function writeF16(out: Uint8Array, offset: number, x: number): void {
  const h = f32ToF16(x);
  out[offset] = h & 0xff;
  out[offset + 1] = h >>> 8;
}

export function quantizeQ8_0(
  src: Float32Array,
  blocks: number,
  out: Uint8Array,
  outOffset: number,
): void {
  for (let b = 0; b < blocks; b++) {
    const x0 = b * QK8_0;
    const o = outOffset + b * Q8_0_BLOCK_BYTES;
    let amax = 0;
    for (let j = 0; j < QK8_0; j++) amax = Math.max(amax, Math.abs(src[x0 + j]));
    const d = fround(amax / 127);
    const id = d !== 0 ? fround(1 / d) : 0;
    writeF16(out, o, d);
    for (let j = 0; j < QK8_0; j++) {
      out[o + 2 + j] = roundAwayFromZero(fround(src[x0 + j] * id)) & 0xff;
    }
  }
}

export function dequantizeQ8_0(
  bytes: Uint8Array,
  offset: number,
  blocks: number,
  out: Float32Array,
  outOffset: number,
): void {
  const half = f16LookupTable();
  for (let b = 0; b < blocks; b++) {
    const o = offset + b * Q8_0_BLOCK_BYTES;
    const d = half[bytes[o] | (bytes[o + 1] << 8)];
    const y = outOffset + b * QK8_0;
    for (let j = 0; j < QK8_0; j++) {
      const q = bytes[o + 2 + j];
      out[y + j] = (q > 127 ? q - 256 : q) * d;
    }
  }
}

export function quantizeQ4_0(
  src: Float32Array,
  blocks: number,
  out: Uint8Array,
  outOffset: number,
): void {
  for (let b = 0; b < blocks; b++) {
    const x0 = b * QK4_0;
    const o = outOffset + b * Q4_0_BLOCK_BYTES;
    // The signed value of largest magnitude maps to -8, so the full [-8, 7] range is used.
    let amax = 0;
    let max = 0;
    for (let j = 0; j < QK4_0; j++) {
      const v = src[x0 + j];
      if (amax < Math.abs(v)) {
        amax = Math.abs(v);
        max = v;
      }
    }
    const d = fround(max / -8);
    const id = d !== 0 ? fround(1 / d) : 0;
    writeF16(out, o, d);
    for (let j = 0; j < QK4_0 / 2; j++) {
      const lo = fround(src[x0 + j] * id);
      const hi = fround(src[x0 + QK4_0 / 2 + j] * id);
      const q0 = Math.max(0, Math.min(15, Math.trunc(fround(lo + 8.5))));
      const q1 = Math.max(0, Math.min(15, Math.trunc(fround(hi + 8.5))));
      out[o + 2 + j] = q0 | (q1 << 4);
    }
  }
}

export function dequantizeQ4_0(
  bytes: Uint8Array,
  offset: number,
  blocks: number,
  out: Float32Array,
  outOffset: number,
): void {
  const half = f16LookupTable();
  for (let b = 0; b < blocks; b++) {
    const o = offset + b * Q4_0_BLOCK_BYTES;
    const d = half[bytes[o] | (bytes[o + 1] << 8)];
    const y = outOffset + b * QK4_0;
    for (let j = 0; j < QK4_0 / 2; j++) {
      const q = bytes[o + 2 + j];
      out[y + j] = ((q & 0x0f) - 8) * d;
      out[y + j + QK4_0 / 2] = ((q >>> 4) - 8) * d;
    }
  }
}
