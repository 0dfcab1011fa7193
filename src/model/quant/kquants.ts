/**
 * ggml's 256-element "K" super-blocks Q4_K and Q6_K (ggml-common.h, QK_K = 256):
 *
 *   block_q4_K (144 bytes) = { f16 d; f16 dmin; uint8 scales[12]; uint8 qs[128] }
 *     eight sub-blocks of 32; sub-block j has a 6-bit scale sc_j and 6-bit min m_j packed in
 *     `scales` (see packScaleMinK4); x = d*sc_j*q - dmin*m_j with q a 4-bit quant. Each 64
 *     elements share 32 bytes of qs: low nibbles are sub-block 2i, high nibbles sub-block 2i+1.
 *
 *   block_q6_K (210 bytes) = { uint8 ql[128]; uint8 qh[64]; int8 scales[16]; f16 d }
 *     sixteen sub-blocks of 16 with 8-bit signed scales; x = d*scales[k]*(q - 32) with q 6-bit:
 *     low 4 bits in ql, high 2 bits in qh. Each half (128 elements) uses 64 bytes of ql and 32
 *     of qh: element l (+0, +32, +64, +96) takes ql[l] low, ql[l+32] low, ql[l] high,
 *     ql[l+32] high nibble and qh[l] bits 0-1, 2-3, 4-5, 6-7.
 *
 * The quantizers follow ggml's quantize_row_q4_K_ref (make_qkx2_quants) and
 * quantize_row_q6_K_ref (make_qx_quants, rmse_type 1). They compute in f64, so a rare tie may
 * land on the other side than in ggml; the layout and the dequantizers are exactly ggml's.
 */
import { f16LookupTable, f16ToF32, f32ToF16 } from "./f16.ts";

export const QK_K = 256;
export const Q4_K_BLOCK_BYTES = 144;
export const Q6_K_BLOCK_BYTES = 210;

/** Below this a group is treated as all zero (ggml's GROUP_MAX_EPS). */
const GROUP_MAX_EPS = 1e-15;

/** ggml's nearest_int: round to nearest, ties to even. */
export function nearestInt(x: number): number {
  const r = Math.round(x); // ties toward +inf
  return r - x === 0.5 && (r & 1) !== 0 ? r - 1 : r;
}

/**
 * Unpacks sub-block j's 6-bit scale and min from the 12 packed bytes of a Q4_K block
 * (ggml's get_scale_min_k4). Bytes 0-3: scales 0-3 in bits 0-5, and bits 4-5 of scales 4-7 in
 * bits 6-7; bytes 4-7: the same for mins; bytes 8-11: low nibble = bits 0-3 of scale j+4,
 * high nibble = bits 0-3 of min j+4.
 */
export function getScaleMinK4(
  j: number,
  packed: Uint8Array,
  offset = 0,
): { scale: number; min: number } {
  const q = (i: number) => packed[offset + i];
  if (j < 4) return { scale: q(j) & 63, min: q(j + 4) & 63 };
  return {
    scale: (q(j + 4) & 0x0f) | ((q(j - 4) >>> 6) << 4),
    min: (q(j + 4) >>> 4) | ((q(j) >>> 6) << 4),
  };
}

/** Packs eight 6-bit scales and mins (each 0..63) into 12 bytes, the inverse of getScaleMinK4. */
export function packScaleMinK4(
  scales: ArrayLike<number>,
  mins: ArrayLike<number>,
  out: Uint8Array,
  offset = 0,
): void {
  for (let i = 0; i < 12; i++) out[offset + i] = 0;
  for (let j = 0; j < 8; j++) {
    const ls = scales[j] & 63;
    const lm = mins[j] & 63;
    if (j < 4) {
      out[offset + j] |= ls;
      out[offset + j + 4] |= lm;
    } else {
      out[offset + j + 4] = (ls & 0x0f) | ((lm & 0x0f) << 4);
      out[offset + j - 4] |= (ls >>> 4) << 6;
      out[offset + j] |= (lm >>> 4) << 6;
    }
  }
}

/**
 * Fits x ≈ scale*L + min with L in [0, nmax] and min <= 0 by weighted least squares over a
 * small sweep of trial inverse scales (ggml's make_qkx2_quants). Writes L and returns
 * [scale, -min].
 */
function makeQkx2Quants(
  n: number,
  nmax: number,
  x: Float32Array,
  xOff: number,
  weights: Float64Array,
  L: Uint8Array,
  lOff: number,
  Laux: Uint8Array,
  rmin: number,
  rdelta: number,
  nstep: number,
): [number, number] {
  let min = x[xOff];
  let max = x[xOff];
  let sumW = weights[0];
  let sumX = sumW * x[xOff];
  for (let i = 1; i < n; i++) {
    const v = x[xOff + i];
    if (v < min) min = v;
    if (v > max) max = v;
    sumW += weights[i];
    sumX += weights[i] * v;
  }
  if (min > 0) min = 0;
  if (max === min) {
    for (let i = 0; i < n; i++) L[lOff + i] = 0;
    return [0, -min];
  }
  let iscale = nmax / (max - min);
  let scale = 1 / iscale;
  let bestError = 0;
  for (let i = 0; i < n; i++) {
    const l = Math.max(0, Math.min(nmax, nearestInt(iscale * (x[xOff + i] - min))));
    L[lOff + i] = l;
    const diff = scale * l + min - x[xOff + i];
    bestError += weights[i] * diff * diff;
  }
  for (let is = 0; is <= nstep; is++) {
    iscale = (rmin + rdelta * is + nmax) / (max - min);
    let sumL = 0;
    let sumL2 = 0;
    let sumXL = 0;
    for (let i = 0; i < n; i++) {
      const l = Math.max(0, Math.min(nmax, nearestInt(iscale * (x[xOff + i] - min))));
      Laux[i] = l;
      const w = weights[i];
      sumL += w * l;
      sumL2 += w * l * l;
      sumXL += w * l * x[xOff + i];
    }
    const D = sumW * sumL2 - sumL * sumL;
    if (D > 0) {
      let thisScale = (sumW * sumXL - sumX * sumL) / D;
      let thisMin = (sumL2 * sumX - sumL * sumXL) / D;
      if (thisMin > 0) {
        thisMin = 0;
        thisScale = sumXL / sumL2;
      }
      let err = 0;
      for (let i = 0; i < n; i++) {
        const diff = thisScale * Laux[i] + thisMin - x[xOff + i];
        err += weights[i] * diff * diff;
      }
      if (err < bestError) {
        for (let i = 0; i < n; i++) L[lOff + i] = Laux[i];
        bestError = err;
        scale = thisScale;
        min = thisMin;
      }
    }
  }
  return [scale, -min];
}

/**
 * Symmetric fit x ≈ scale*(L - nmax), L in [0, 2*nmax), weighted by x^2, trying 19 inverse
 * scales around nmax/max (ggml's make_qx_quants with rmse_type 1 and no importance weights).
 */
function makeQxQuants(
  n: number,
  nmax: number,
  x: Float32Array,
  xOff: number,
  L: Uint8Array,
  lOff: number,
): number {
  let max = 0;
  let amax = 0;
  for (let i = 0; i < n; i++) {
    const ax = Math.abs(x[xOff + i]);
    if (ax > amax) {
      amax = ax;
      max = x[xOff + i];
    }
  }
  if (amax < GROUP_MAX_EPS) {
    for (let i = 0; i < n; i++) L[lOff + i] = 0;
    return 0;
  }
  const clampL = (v: number) => Math.max(-nmax, Math.min(nmax - 1, nearestInt(v)));
  let iscale = -nmax / max;
  let sumLX = 0;
  let sumL2 = 0;
  for (let i = 0; i < n; i++) {
    const v = x[xOff + i];
    const l = clampL(iscale * v);
    L[lOff + i] = l + nmax;
    const w = v * v;
    sumLX += w * v * l;
    sumL2 += w * l * l;
  }
  let scale = sumL2 ? sumLX / sumL2 : 0;
  let best = scale * sumLX;
  for (let is = -9; is <= 9; is++) {
    if (is === 0) continue;
    iscale = -(nmax + 0.1 * is) / max;
    sumLX = 0;
    sumL2 = 0;
    for (let i = 0; i < n; i++) {
      const v = x[xOff + i];
      const l = clampL(iscale * v);
      const w = v * v;
      sumLX += w * v * l;
      sumL2 += w * l * l;
    }
    if (sumL2 > 0 && sumLX * sumLX > best * sumL2) {
      for (let i = 0; i < n; i++) L[lOff + i] = nmax + clampL(iscale * x[xOff + i]);
      scale = sumLX / sumL2;
      best = scale * sumLX;
    }
  }
  return scale;
}

function writeF16(out: Uint8Array, offset: number, x: number): number {
  const h = f32ToF16(x);
  out[offset] = h & 0xff;
  out[offset + 1] = h >>> 8;
  return f16ToF32(h);
}

export function quantizeQ4_K(
  src: Float32Array,
  blocks: number,
  out: Uint8Array,
  outOffset: number,
): void {
  const L = new Uint8Array(QK_K);
  const Laux = new Uint8Array(32);
  const weights = new Float64Array(32);
  const scales = new Float64Array(8);
  const mins = new Float64Array(8);
  const ls = new Uint8Array(8);
  const lm = new Uint8Array(8);
  for (let b = 0; b < blocks; b++) {
    const x0 = b * QK_K;
    const o = outOffset + b * Q4_K_BLOCK_BYTES;
    let maxScale = 0;
    let maxMin = 0;
    for (let j = 0; j < 8; j++) {
      const xs = x0 + 32 * j;
      let sumX2 = 0;
      for (let l = 0; l < 32; l++) sumX2 += src[xs + l] * src[xs + l];
      // Weighting by magnitude favours the large values that dominate a dot product.
      const avX = Math.sqrt(sumX2 / 32);
      for (let l = 0; l < 32; l++) weights[l] = avX + Math.abs(src[xs + l]);
      const [scale, min] = makeQkx2Quants(32, 15, src, xs, weights, L, 32 * j, Laux, -1, 0.1, 20);
      scales[j] = scale;
      mins[j] = min;
      if (scale > maxScale) maxScale = scale;
      if (min > maxMin) maxMin = min;
    }
    const invScale = maxScale > 0 ? 63 / maxScale : 0;
    const invMin = maxMin > 0 ? 63 / maxMin : 0;
    for (let j = 0; j < 8; j++) {
      ls[j] = Math.max(0, Math.min(63, nearestInt(invScale * scales[j])));
      lm[j] = Math.max(0, Math.min(63, nearestInt(invMin * mins[j])));
    }
    packScaleMinK4(ls, lm, out, o + 4);
    const d = writeF16(out, o, maxScale / 63);
    const dmin = writeF16(out, o + 2, maxMin / 63);
    // Re-quantize against the scales as they will be decoded (f16 d times 6-bit sc).
    for (let j = 0; j < 8; j++) {
      const dl = d * ls[j];
      if (dl === 0) continue;
      const ml = dmin * lm[j];
      for (let i = 0; i < 32; i++) {
        const l = nearestInt((src[x0 + 32 * j + i] + ml) / dl);
        L[32 * j + i] = Math.max(0, Math.min(15, l));
      }
    }
    const qs = o + 16;
    for (let g = 0; g < 4; g++) {
      for (let l = 0; l < 32; l++) {
        out[qs + 32 * g + l] = L[64 * g + l] | (L[64 * g + 32 + l] << 4);
      }
    }
  }
}

export function dequantizeQ4_K(
  bytes: Uint8Array,
  offset: number,
  blocks: number,
  out: Float32Array,
  outOffset: number,
): void {
  const half = f16LookupTable();
  for (let b = 0; b < blocks; b++) {
    const o = offset + b * Q4_K_BLOCK_BYTES;
    const d = half[bytes[o] | (bytes[o + 1] << 8)];
    const dmin = half[bytes[o + 2] | (bytes[o + 3] << 8)];
    const sc = o + 4;
    const qs = o + 16;
    let y = outOffset + b * QK_K;
    for (let g = 0; g < 4; g++) {
      const a = getScaleMinK4(2 * g, bytes, sc);
      const c = getScaleMinK4(2 * g + 1, bytes, sc);
      const d1 = d * a.scale;
      const m1 = dmin * a.min;
      const d2 = d * c.scale;
      const m2 = dmin * c.min;
      const q = qs + 32 * g;
      for (let l = 0; l < 32; l++) out[y + l] = d1 * (bytes[q + l] & 0x0f) - m1;
      for (let l = 0; l < 32; l++) out[y + 32 + l] = d2 * (bytes[q + l] >>> 4) - m2;
      y += 64;
    }
  }
}

export function quantizeQ6_K(
  src: Float32Array,
  blocks: number,
  out: Uint8Array,
  outOffset: number,
): void {
  const L = new Uint8Array(QK_K);
  const scales = new Float64Array(16);
  const isc = new Int8Array(16);
  for (let b = 0; b < blocks; b++) {
    const x0 = b * QK_K;
    const o = outOffset + b * Q6_K_BLOCK_BYTES;
    let maxScale = 0;
    let maxAbsScale = 0;
    for (let ib = 0; ib < 16; ib++) {
      const scale = makeQxQuants(16, 32, src, x0 + 16 * ib, L, 16 * ib);
      scales[ib] = scale;
      if (Math.abs(scale) > maxAbsScale) {
        maxAbsScale = Math.abs(scale);
        maxScale = scale;
      }
    }
    if (maxAbsScale < GROUP_MAX_EPS) {
      out.fill(0, o, o + Q6_K_BLOCK_BYTES);
      continue;
    }
    // The sub-block scale of largest magnitude maps to -128, like Q4_0's max maps to -8.
    const iscale = -128 / maxScale;
    const d = writeF16(out, o + 208, 1 / iscale);
    for (let ib = 0; ib < 16; ib++) {
      isc[ib] = Math.max(-128, Math.min(127, nearestInt(iscale * scales[ib])));
      out[o + 192 + ib] = isc[ib] & 0xff;
    }
    for (let j = 0; j < 16; j++) {
      const dl = d * isc[j];
      if (dl === 0) continue;
      for (let i = 0; i < 16; i++) {
        const l = nearestInt(src[x0 + 16 * j + i] / dl);
        L[16 * j + i] = Math.max(-32, Math.min(31, l)) + 32;
      }
    }
    for (let h = 0; h < 2; h++) {
      const ql = o + 64 * h;
      const qh = o + 128 + 32 * h;
      const base = 128 * h;
      for (let l = 0; l < 32; l++) {
        const q1 = L[base + l];
        const q2 = L[base + l + 32];
        const q3 = L[base + l + 64];
        const q4 = L[base + l + 96];
        out[ql + l] = (q1 & 0x0f) | ((q3 & 0x0f) << 4);
        out[ql + l + 32] = (q2 & 0x0f) | ((q4 & 0x0f) << 4);
        out[qh + l] = (q1 >>> 4) | ((q2 >>> 4) << 2) | ((q3 >>> 4) << 4) | ((q4 >>> 4) << 6);
      }
    }
  }
}

export function dequantizeQ6_K(
  bytes: Uint8Array,
  offset: number,
  blocks: number,
  out: Float32Array,
  outOffset: number,
): void {
  const half = f16LookupTable();
  for (let b = 0; b < blocks; b++) {
    const o = offset + b * Q6_K_BLOCK_BYTES;
    const d = half[bytes[o + 208] | (bytes[o + 209] << 8)];
    for (let h = 0; h < 2; h++) {
      const ql = o + 64 * h;
      const qh = o + 128 + 32 * h;
      const sc = o + 192 + 8 * h;
      const y = outOffset + b * QK_K + 128 * h;
      for (let l = 0; l < 32; l++) {
        const is = l >>> 4;
        const hb = bytes[qh + l];
        const q1 = ((bytes[ql + l] & 0x0f) | ((hb & 3) << 4)) - 32;
        const q2 = ((bytes[ql + l + 32] & 0x0f) | (((hb >>> 2) & 3) << 4)) - 32;
        const q3 = ((bytes[ql + l] >>> 4) | (((hb >>> 4) & 3) << 4)) - 32;
        const q4 = ((bytes[ql + l + 32] >>> 4) | (((hb >>> 6) & 3) << 4)) - 32;
        out[y + l] = d * signed8(bytes[sc + is]) * q1;
        out[y + l + 32] = d * signed8(bytes[sc + is + 2]) * q2;
        out[y + l + 64] = d * signed8(bytes[sc + is + 4]) * q3;
        out[y + l + 96] = d * signed8(bytes[sc + is + 6]) * q4;
      }
    }
  }
}

function signed8(v: number): number {
  return v > 127 ? v - 256 : v;
}
