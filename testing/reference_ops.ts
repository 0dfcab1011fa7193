/**
 * Plain-TS ground truth for the element-wise, selection and gather kernels (src/kernels/
 * elementwise.ts, select.ts, gather.ts): readable loops, f64 arithmetic, batched the way the
 * kernels are (rows of tokens, heads packed per token).
 *
 * Ordering rules shared with the kernels and with cache/analysis.ts topkSet: NaN ranks below
 * every number (as -Infinity), -0 equals +0, and among equal values the lower index wins.
 */
import type { RopePairing } from "../src/model/config.ts";
import { f16ToF32Array, f32ToF16Array } from "../src/model/quant/mod.ts";

/** out[r] = x[r] / sqrt(mean(x[r]²) + eps) · weight, for `rows` rows of n (strides in elements). */
export function rmsNormRows(
  x: Float32Array,
  weight: Float32Array,
  n: number,
  rows: number,
  eps: number,
  xStride = n,
): Float64Array {
  const out = new Float64Array(rows * n);
  for (let r = 0; r < rows; r++) {
    let ss = 0;
    for (let i = 0; i < n; i++) ss += x[r * xStride + i] ** 2;
    const scale = 1 / Math.sqrt(ss / n + eps);
    for (let i = 0; i < n; i++) out[r * n + i] = x[r * xStride + i] * scale * weight[i];
  }
  return out;
}

/** θ_i / pos for each pair: base^(−2i/headDim) / freqFactors[i] (factor 1 when absent). */
export function ropeInvFreq(
  headDim: number,
  base: number,
  freqFactors: ArrayLike<number> | null = null,
): Float64Array {
  const inv = new Float64Array(headDim / 2);
  for (let i = 0; i < inv.length; i++) {
    inv[i] = Math.pow(base, (-2 * i) / headDim) / (freqFactors ? freqFactors[i] : 1);
  }
  return inv;
}

/**
 * RoPE of nTokens tokens, each nHeads packed heads of headDim (token stride nHeads·headDim),
 * token t at positions[t]. "adjacent" rotates (2i, 2i+1), "halves" (i, i + headDim/2), by
 * θ = pos · invFreq[i], all in f64.
 */
export function ropeRows(
  x: Float32Array,
  positions: ArrayLike<number>,
  nHeads: number,
  headDim: number,
  invFreq: Float64Array,
  pairing: RopePairing,
): Float64Array {
  const half = headDim / 2;
  const out = Float64Array.from(x);
  for (let t = 0; t < positions.length; t++) {
    for (let h = 0; h < nHeads; h++) {
      const head = (t * nHeads + h) * headDim;
      for (let i = 0; i < half; i++) {
        const theta = positions[t] * invFreq[i];
        const c = Math.cos(theta);
        const s = Math.sin(theta);
        const a = pairing === "adjacent" ? head + 2 * i : head + i;
        const b = pairing === "adjacent" ? a + 1 : a + half;
        out[a] = x[a] * c - x[b] * s;
        out[b] = x[a] * s + x[b] * c;
      }
    }
  }
  return out;
}

/** silu(gate) · up = gate / (1 + e^−gate) · up. */
export function swigluRef(gate: Float32Array, up: Float32Array): Float64Array {
  const out = new Float64Array(gate.length);
  for (let i = 0; i < gate.length; i++) out[i] = (gate[i] / (1 + Math.exp(-gate[i]))) * up[i];
  return out;
}

/**
 * GeGLU as ggml's CPU backend computes it: GELU's tanh approximation of the gate looked up at
 * the gate rounded to f16 and rounded to f16 itself (its GGML_GELU_FP16 table), 0 at or below
 * -10 and the gate itself at or above 10, times up.
 */
export function gegluRef(gate: Float32Array, up: Float32Array): Float64Array {
  const f16 = (v: number) => f16ToF32Array(f32ToF16Array(Float32Array.of(v)))[0];
  const out = new Float64Array(gate.length);
  for (let i = 0; i < gate.length; i++) {
    const x = gate[i];
    const h = f16(x);
    const g = f16(0.5 * h * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * h * (1 + 0.044715 * h * h))));
    out[i] = (x <= -10 ? 0 : x >= 10 ? x : g) * up[i];
  }
  return out;
}

/** Logit soft-capping: cap * tanh(x / cap). */
export function softcapRef(x: Float32Array, cap: number): Float64Array {
  return Float64Array.from(x, (v) => cap * Math.tanh(v / cap));
}

/** The value as the kernels rank it: NaN as -Infinity (-0 and +0 already compare equal). */
function rankValue(v: number): number {
  return Number.isNaN(v) ? -Infinity : v;
}

/** Index of the largest value of each row (lowest index among equals; 0 for an all-NaN row). */
export function argmaxRows(x: Float32Array, n: number, rows: number, rowStride = n): Uint32Array {
  const out = new Uint32Array(rows);
  for (let r = 0; r < rows; r++) {
    let best = 0;
    for (let i = 1; i < n; i++) {
      if (rankValue(x[r * rowStride + i]) > rankValue(x[r * rowStride + best])) best = i;
    }
    out[r] = best;
  }
  return out;
}

/**
 * Row gather of 32-bit words: for i < count, dst row dstRows[i] (else i) takes src row
 * srcRows[i] (else i); rows are rowWords long, `stride` words apart. Rows whose source or
 * destination falls outside its array are skipped, as the kernel does.
 */
export function gatherRows(
  src: Uint32Array,
  dst: Uint32Array,
  count: number,
  rowWords: number,
  o: {
    srcRows?: ArrayLike<number>;
    dstRows?: ArrayLike<number>;
    srcStride?: number;
    dstStride?: number;
    srcBase?: number;
    dstBase?: number;
  } = {},
): Uint32Array {
  const out = dst.slice();
  const ss = o.srcStride ?? rowWords;
  const ds = o.dstStride ?? rowWords;
  for (let i = 0; i < count; i++) {
    const s = (o.srcBase ?? 0) + (o.srcRows ? o.srcRows[i] : i) * ss;
    const d = (o.dstBase ?? 0) + (o.dstRows ? o.dstRows[i] : i) * ds;
    if (s + rowWords > src.length || d + rowWords > out.length) continue;
    for (let w = 0; w < rowWords; w++) out[d + w] = src[s + w];
  }
  return out;
}
