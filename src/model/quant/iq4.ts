/**
 * ggml's non-linear 4-bit types (ggml-common.h): each nibble indexes IQ4_NL_VALUES, a fixed
 * table of 16 signed levels denser near zero.
 *   block_iq4_nl (18 bytes / 32) = { f16 d; uint8 qs[16] }
 *     x[j] = d * V[lo(qs[j])], x[j + 16] = d * V[hi(qs[j])]
 *   block_iq4_xs (136 bytes / 256) = { f16 d; u16 scales_h; uint8 scales_l[4]; uint8 qs[128] }
 *     eight sub-blocks of 32 with 6-bit scales ls = low nibble (scales_l[ib/2] >> 4*(ib%2)) |
 *     2 bits (scales_h >> 2*ib) << 4; x = d*(ls - 32)*V[q], each sub-block's 16 qs bytes laid
 *     out as IQ4_NL's.
 */
import { f16LookupTable } from "./f16.ts";

/** ggml's kvalues_iq4nl. */
export const IQ4_NL_VALUES: readonly number[] = [
  -127,
  -104,
  -83,
  -65,
  -49,
  -35,
  -22,
  -10,
  1,
  13,
  25,
  38,
  53,
  69,
  89,
  113,
];
export const IQ4_NL_BLOCK_BYTES = 18;
export const IQ4_XS_BLOCK_BYTES = 136;

/** The 6-bit scale (0..63, before the -32) of sub-block ib of the IQ4_XS block at `o`. */
export function iq4xsScale(bytes: Uint8Array, o: number, ib: number): number {
  const h = bytes[o + 2] | (bytes[o + 3] << 8);
  return ((bytes[o + 4 + (ib >> 1)] >>> (4 * (ib & 1))) & 0x0f) | (((h >>> (2 * ib)) & 3) << 4);
}

function sub32(bytes: Uint8Array, q: number, dl: number, out: Float32Array, y: number): void {
  for (let j = 0; j < 16; j++) {
    out[y + j] = dl * IQ4_NL_VALUES[bytes[q + j] & 0x0f];
    out[y + j + 16] = dl * IQ4_NL_VALUES[bytes[q + j] >>> 4];
  }
}

export function dequantizeIQ4_NL(
  bytes: Uint8Array,
  offset: number,
  blocks: number,
  out: Float32Array,
  outOffset: number,
): void {
  const half = f16LookupTable();
  for (let b = 0; b < blocks; b++) {
    const o = offset + b * IQ4_NL_BLOCK_BYTES;
    sub32(bytes, o + 2, half[bytes[o] | (bytes[o + 1] << 8)], out, outOffset + 32 * b);
  }
}

export function dequantizeIQ4_XS(
  bytes: Uint8Array,
  offset: number,
  blocks: number,
  out: Float32Array,
  outOffset: number,
): void {
  const half = f16LookupTable();
  for (let b = 0; b < blocks; b++) {
    const o = offset + b * IQ4_XS_BLOCK_BYTES;
    const d = half[bytes[o] | (bytes[o + 1] << 8)];
    for (let ib = 0; ib < 8; ib++) {
      const dl = d * (iq4xsScale(bytes, o, ib) - 32);
      sub32(bytes, o + 8 + 16 * ib, dl, out, outOffset + 256 * b + 32 * ib);
    }
  }
}
