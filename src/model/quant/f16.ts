/**
 * IEEE half (f16) and bfloat16 conversions, bit-compatible with ggml:
 * - f32 → f16 rounds to nearest, ties to even, with correct subnormals; overflow gives ±inf and
 *   NaN gives the canonical quiet NaN 0x7e00 with the input's sign (ggml's software fp32_to_fp16).
 * - f32 → bf16 rounds to nearest even; NaN keeps its top bits and is forced quiet
 *   (ggml_compute_fp32_to_bf16).
 *
 * The bulk versions work on typed arrays and assume a little-endian host, as do GGUF files.
 */

import { HcError } from "../../errors.ts";

const scratchF32 = new Float32Array(1);
const scratchU32 = new Uint32Array(scratchF32.buffer);

/** Bits of the f32 nearest to `x` (JS numbers are f64; the f32 rounding comes first). */
function f32Bits(x: number): number {
  scratchF32[0] = x;
  return scratchU32[0];
}

function f32FromBits(bits: number): number {
  scratchU32[0] = bits;
  return scratchF32[0];
}

/** f16 bits of an f32 given by its bits. Shared by the scalar and bulk paths. */
function halfFromF32Bits(b: number): number {
  const sign = (b >>> 16) & 0x8000;
  const exp = (b >>> 23) & 0xff;
  const mant = b & 0x7fffff;
  if (exp === 0xff) return sign | (mant !== 0 ? 0x7e00 : 0x7c00);
  // 2^16 and above cannot round down into the f16 range (max finite 65504).
  if (exp > 142) return sign | 0x7c00;
  if (exp >= 113) {
    // Normal f16: keep 10 mantissa bits; a carry out of the mantissa correctly bumps the
    // exponent, up to and including infinity (0x7c00).
    let h = ((exp - 112) << 10) | (mant >>> 13);
    const rest = mant & 0x1fff;
    if (rest > 0x1000 || (rest === 0x1000 && (h & 1) !== 0)) h++;
    return sign | h;
  }
  // At or below 2^-25 (half the smallest subnormal), ties-to-even gives zero.
  if (exp < 102) return sign;
  // Subnormal f16: the value in units of 2^-24, from the 24-bit significand.
  const sig = mant | 0x800000;
  const shift = 126 - exp; // 14..24
  let m = sig >>> shift;
  const rest = sig & ((1 << shift) - 1);
  const half = 1 << (shift - 1);
  if (rest > half || (rest === half && (m & 1) !== 0)) m++;
  return sign | m;
}

/** f32 bits of an f16 given by its bits (exact: every f16 is an f32). */
function f32BitsFromHalf(h: number): number {
  const sign = (h & 0x8000) << 16;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0x1f) return (sign | 0x7f800000 | (mant << 13)) >>> 0;
  if (exp !== 0) return (sign | ((exp + 112) << 23) | (mant << 13)) >>> 0;
  if (mant === 0) return sign >>> 0;
  // Subnormal f16: normalise into an f32 exponent.
  let e = 113;
  let m = mant;
  while ((m & 0x400) === 0) {
    m <<= 1;
    e--;
  }
  return (sign | (e << 23) | ((m & 0x3ff) << 13)) >>> 0;
}

/** The f16 (as its 16 bits) nearest to the f32 nearest to `x`. */
export function f32ToF16(x: number): number {
  return halfFromF32Bits(f32Bits(x));
}

/** The value of an f16 given by its 16 bits. */
export function f16ToF32(h: number): number {
  return f32FromBits(f32BitsFromHalf(h & 0xffff));
}

/** bf16 bits for an f32 given by its bits (ggml_compute_fp32_to_bf16). */
function bf16FromF32Bits(b: number): number {
  if ((b & 0x7fffffff) >>> 0 > 0x7f800000) return ((b >>> 16) | 0x40) & 0xffff;
  // Non-NaN inputs stay below 2^32 after the bias (max 0xff800000 + 0x8000), so no wrap.
  return ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff;
}

/** The bf16 (as its 16 bits) nearest to the f32 nearest to `x`, ties to even. */
export function f32ToBf16(x: number): number {
  return bf16FromF32Bits(f32Bits(x));
}

/** The value of a bf16 given by its 16 bits. */
export function bf16ToF32(h: number): number {
  return f32FromBits(((h & 0xffff) << 16) >>> 0);
}

let halfTable: Float32Array | undefined;

/** All 65536 f16 values as f32, built once (256 KiB) so bulk decoding is a table lookup. */
function f16Table(): Float32Array {
  if (halfTable) return halfTable;
  const bits = new Uint32Array(65536);
  for (let h = 0; h < 65536; h++) bits[h] = f32BitsFromHalf(h);
  halfTable = new Float32Array(bits.buffer);
  return halfTable;
}

/** Looks up one f16 value through the shared table (for hot dequantization loops). */
export function f16TableValue(h: number): number {
  return f16Table()[h & 0xffff];
}

/** The table itself, for loops that want to hoist the lookup. */
export function f16LookupTable(): Float32Array {
  return f16Table();
}

function checkOut<T extends { length: number }>(out: T, need: number, what: string): T {
  if (out.length < need) {
    throw new HcError(
      "E_MODEL_TENSOR",
      `${what}: output holds ${out.length} elements, needs ${need}`,
    );
  }
  return out;
}

/** Converts every element to f16 bits (round to nearest even). */
export function f32ToF16Array(src: Float32Array, out?: Uint16Array): Uint16Array {
  const dst = out ? checkOut(out, src.length, "f32ToF16Array") : new Uint16Array(src.length);
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  for (let i = 0; i < bits.length; i++) dst[i] = halfFromF32Bits(bits[i]);
  return dst;
}

/** Decodes f16 bits to f32. */
export function f16ToF32Array(src: Uint16Array, out?: Float32Array): Float32Array {
  const dst = out ? checkOut(out, src.length, "f16ToF32Array") : new Float32Array(src.length);
  const table = f16Table();
  for (let i = 0; i < src.length; i++) dst[i] = table[src[i]];
  return dst;
}

/** Converts every element to bf16 bits (round to nearest even, NaN forced quiet). */
export function f32ToBf16Array(src: Float32Array, out?: Uint16Array): Uint16Array {
  const dst = out ? checkOut(out, src.length, "f32ToBf16Array") : new Uint16Array(src.length);
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  for (let i = 0; i < bits.length; i++) dst[i] = bf16FromF32Bits(bits[i]);
  return dst;
}

/** Decodes bf16 bits to f32 (exact). */
export function bf16ToF32Array(src: Uint16Array, out?: Float32Array): Float32Array {
  const dst = out ? checkOut(out, src.length, "bf16ToF32Array") : new Float32Array(src.length);
  const bits = new Uint32Array(dst.buffer, dst.byteOffset, src.length);
  for (let i = 0; i < src.length; i++) bits[i] = src[i] << 16;
  return dst;
}
