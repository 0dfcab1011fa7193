/**
 * ggml's 256-element super-blocks Q2_K, Q3_K and Q5_K (ggml-common.h, QK_K = 256):
 *
 *   block_q2_K (84 bytes) = { uint8 scales[16]; uint8 qs[64]; f16 d; f16 dmin }
 *     sixteen sub-blocks of 16; scales[k] holds a 4-bit scale (low) and 4-bit min (high);
 *     x = d*sc*q - dmin*m with q 2-bit. Element 128n + 32j + l (n < 2, j < 4, l < 32) is bits
 *     2j..2j+1 of qs[32n + l], in sub-block 8n + 2j + l/16.
 *
 *   block_q3_K (110 bytes) = { uint8 hmask[32]; uint8 qs[64]; uint8 scales[12]; f16 d }
 *     sixteen sub-blocks of 16 with 6-bit scales (stored +32); x = d*(sc - 32)*q with q in
 *     -4..3: the low 2 bits placed as Q2_K's, minus 4 unless bit 4n + j of hmask[l] is set.
 *     Scale k: low nibble of scales[k] (k < 8) or high nibble of scales[k - 8], plus bits
 *     2*(k/4)..+1 of scales[8 + k%4] as bits 4-5.
 *
 *   block_q5_K (176 bytes) = { f16 d; f16 dmin; uint8 scales[12]; uint8 qh[32]; uint8 qs[128] }
 *     Q4_K's layout (scales and mins packed as get_scale_min_k4, 64-element groups of two
 *     sub-blocks) with a fifth bit: bit 2g (group g's first half) or 2g + 1 (second half) of
 *     qh[l].
 */
import { f16LookupTable } from "./f16.ts";
import { getScaleMinK4, QK_K } from "./kquants.ts";

export const Q2_K_BLOCK_BYTES = 84;
export const Q3_K_BLOCK_BYTES = 110;
export const Q5_K_BLOCK_BYTES = 176;

/** The 6-bit scale (0..63, before the -32) of sub-block k of the Q3_K block at `o`. */
export function q3kScale(bytes: Uint8Array, o: number, k: number): number {
  const s = o + 96;
  const low = k < 8 ? bytes[s + k] & 0x0f : bytes[s + k - 8] >>> 4;
  return low | (((bytes[s + 8 + (k & 3)] >>> (2 * (k >>> 2))) & 3) << 4);
}

export function dequantizeQ2_K(
  bytes: Uint8Array,
  offset: number,
  blocks: number,
  out: Float32Array,
  outOffset: number,
): void {
  const half = f16LookupTable();
  for (let b = 0; b < blocks; b++) {
    const o = offset + b * Q2_K_BLOCK_BYTES;
    const d = half[bytes[o + 80] | (bytes[o + 81] << 8)];
    const dmin = half[bytes[o + 82] | (bytes[o + 83] << 8)];
    for (let n = 0; n < 2; n++) {
      for (let j = 0; j < 4; j++) {
        for (let l = 0; l < 32; l++) {
          const sc = bytes[o + 8 * n + 2 * j + (l >>> 4)];
          const q = (bytes[o + 16 + 32 * n + l] >>> (2 * j)) & 3;
          out[outOffset + QK_K * b + 128 * n + 32 * j + l] = d * (sc & 0x0f) * q -
            dmin * (sc >>> 4);
        }
      }
    }
  }
}

export function dequantizeQ3_K(
  bytes: Uint8Array,
  offset: number,
  blocks: number,
  out: Float32Array,
  outOffset: number,
): void {
  const half = f16LookupTable();
  const dl = new Float64Array(16);
  for (let b = 0; b < blocks; b++) {
    const o = offset + b * Q3_K_BLOCK_BYTES;
    const d = half[bytes[o + 108] | (bytes[o + 109] << 8)];
    for (let k = 0; k < 16; k++) dl[k] = d * (q3kScale(bytes, o, k) - 32);
    for (let n = 0; n < 2; n++) {
      for (let j = 0; j < 4; j++) {
        for (let l = 0; l < 32; l++) {
          const low = (bytes[o + 32 + 32 * n + l] >>> (2 * j)) & 3;
          const high = (bytes[o + l] >>> (4 * n + j)) & 1;
          out[outOffset + QK_K * b + 128 * n + 32 * j + l] = dl[8 * n + 2 * j + (l >>> 4)] *
            (low - (high ? 0 : 4));
        }
      }
    }
  }
}

export function dequantizeQ5_K(
  bytes: Uint8Array,
  offset: number,
  blocks: number,
  out: Float32Array,
  outOffset: number,
): void {
  const half = f16LookupTable();
  for (let b = 0; b < blocks; b++) {
    const o = offset + b * Q5_K_BLOCK_BYTES;
    const d = half[bytes[o] | (bytes[o + 1] << 8)];
    const dmin = half[bytes[o + 2] | (bytes[o + 3] << 8)];
    for (let g = 0; g < 4; g++) {
      const a = getScaleMinK4(2 * g, bytes, o + 4);
      const c = getScaleMinK4(2 * g + 1, bytes, o + 4);
      const y = outOffset + QK_K * b + 64 * g;
      for (let l = 0; l < 32; l++) {
        const ql = bytes[o + 48 + 32 * g + l];
        const qh = bytes[o + 16 + l];
        out[y + l] = d * a.scale * ((ql & 0x0f) + (((qh >>> (2 * g)) & 1) << 4)) -
          dmin * a.min;
        out[y + 32 + l] = d * c.scale * ((ql >>> 4) + (((qh >>> (2 * g + 1)) & 1) << 4)) -
          dmin * c.min;
      }
    }
  }
}
