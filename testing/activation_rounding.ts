/**
 * llama.cpp's CPU backend rounds the activations before every product with a weight to the
 * weight type's `vec_dot_type`: Q8_0 blocks of 32 for Q8_0, Q4_0, Q5_0 and IQ4_NL, Q8_1 for
 * Q4_1 and Q5_1, Q8_K blocks of 256 for the K types and IQ4_XS, f16 for F16 and bf16 for BF16
 * weights. This is the plain-TS form of that rounding (ggml's quantize_row_q8_0/q8_1/q8_K
 * followed by their dequantization), the oracle for the device's own.
 *
 * Rounding ties: ggml's x86 quantizers round half to even (`_mm256_round_ps` nearest for Q8_0 and
 * Q8_1, `nearest_int`'s 1.5 * 2^23 trick for Q8_K), as does this.
 */
import { GgmlType } from "../src/gguf/types.ts";
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16, nearestInt } from "../src/model/quant/mod.ts";

export type ActivationRounding = "q8_0" | "q8_1" | "q8_K" | "f16" | "bf16" | "none";

/** The rounding llama.cpp's CPU backend applies to the input of a product with `weightType`. */
export function activationRoundingOf(weightType: number): ActivationRounding {
  switch (weightType) {
    case GgmlType.Q8_0:
    case GgmlType.Q4_0:
    case GgmlType.Q5_0:
    case GgmlType.IQ4_NL:
      return "q8_0";
    case GgmlType.Q4_1:
    case GgmlType.Q5_1:
      return "q8_1";
    case GgmlType.Q2_K:
    case GgmlType.Q3_K:
    case GgmlType.Q4_K:
    case GgmlType.Q5_K:
    case GgmlType.Q6_K:
    case GgmlType.IQ4_XS:
      return "q8_K";
    case GgmlType.F16:
      return "f16";
    case GgmlType.BF16:
      return "bf16";
    default:
      return "none";
  }
}

const f32 = Math.fround;

/** A Q8_0 / Q8_1 block's scale d = amax / levels (f32) and its inverse (0 for a zero block). */
function q8Scale(x: Float32Array, b: number, levels: number): { d: number; id: number } {
  let amax = 0;
  for (let j = b; j < b + 32; j++) amax = Math.max(amax, Math.abs(x[j]));
  const d = f32(amax / levels);
  return { d, id: d ? f32(1 / d) : 0 };
}

/**
 * Q8_0 / Q8_1: per block of 32, d = amax / 127 (f32), q = round(x / d), stored scale f16(d);
 * the value a product sees is f16(d) * q.
 */
function roundQ8Blocks(x: Float32Array, out: Float32Array, levels: number): void {
  for (let b = 0; b < x.length; b += 32) {
    const { d, id } = q8Scale(x, b, levels);
    const dh = f16ToF32(f32ToF16(d));
    for (let j = b; j < b + 32; j++) out[j] = f32(dh * nearestInt(f32(x[j] * id)));
  }
}

/**
 * Q8_K: per block of 256, the signed value of largest magnitude `max` sets iscale = -127 / max
 * (so that value maps to -127 and the other sign may reach +128, clamped to 127); the scale
 * 1 / iscale stays f32.
 */
function roundQ8K(x: Float32Array, out: Float32Array, levels: number): void {
  for (let b = 0; b < x.length; b += 256) {
    let amax = 0, max = 0;
    for (let j = b; j < b + 256; j++) {
      const a = Math.abs(x[j]);
      if (a > amax) {
        amax = a;
        max = x[j];
      }
    }
    if (!amax) {
      out.fill(0, b, b + 256);
      continue;
    }
    const iscale = f32(-levels / max);
    const d = f32(1 / iscale);
    for (let j = b; j < b + 256; j++) {
      out[j] = f32(d * Math.min(127, nearestInt(f32(iscale * x[j]))));
    }
  }
}

/**
 * Q8_1 also stores s = f16(d * Σq) per block, which a Q4_1 / Q5_1 product multiplies by the
 * weight block's min m in place of Σ x̂ (= f16(d) * Σq). Returns s - f16(d) * Σq per block: the
 * product llama.cpp computes is Σ w x̂ + Σ_blocks m * correction.
 */
export function q8_1Corrections(x: Float32Array, levels = 127): Float32Array {
  const out = new Float32Array(x.length / 32);
  for (let b = 0; b < x.length; b += 32) {
    const { d, id } = q8Scale(x, b, levels);
    let sum = 0;
    for (let j = b; j < b + 32; j++) sum += nearestInt(f32(x[j] * id));
    out[b / 32] = f16ToF32(f32ToF16(f32(d * sum))) - f16ToF32(f32ToF16(d)) * sum;
  }
  return out;
}

/** The per-block min m of a Q4_1 or Q5_1 tensor (f16 at bytes 2-3 of every block). */
export function blockMins(blockBytes: number, bytes: Uint8Array): Float32Array {
  const out = new Float32Array(bytes.length / blockBytes);
  for (let b = 0; b < out.length; b++) {
    const o = b * blockBytes;
    out[b] = f16ToF32(bytes[o + 2] | (bytes[o + 3] << 8));
  }
  return out;
}

/**
 * x rounded as llama.cpp rounds it for `rounding` (x.length a multiple of the block). `levels`
 * (127 in ggml) exists so that tests can check that a rounding one step off is caught.
 */
export function roundActivations(
  rounding: ActivationRounding,
  x: Float32Array,
  out: Float32Array = new Float32Array(x.length),
  levels = 127,
): Float32Array {
  switch (rounding) {
    case "q8_0":
    case "q8_1":
      roundQ8Blocks(x, out, levels);
      break;
    case "q8_K":
      roundQ8K(x, out, levels);
      break;
    case "f16":
      for (let i = 0; i < x.length; i++) out[i] = f16ToF32(f32ToF16(x[i]));
      break;
    case "bf16":
      for (let i = 0; i < x.length; i++) out[i] = bf16ToF32(f32ToBf16(x[i]));
      break;
    default:
      out.set(x);
  }
  return out;
}
