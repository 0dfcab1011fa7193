/**
 * Encoders for the weight types the engine reads but src/model/quant does not write (Q4_1,
 * Q5_0, Q5_1, Q2_K, Q3_K, Q5_K, IQ4_NL, IQ4_XS), for tests and synthetic models. Q4_1, Q5_0 and
 * Q5_1 follow ggml's quantize_row_*_ref step by step; the K and IQ4 types use a plain
 * round-to-nearest fit (ggml searches scales more cleverly), which changes which bytes a value
 * gets, never how bytes decode: the block layouts are exactly GGUF's, so what these write loads
 * in llama.cpp as it does here.
 */
import { GgmlType, ggmlTypeInfo } from "../src/gguf/types.ts";
import {
  canQuantize,
  f16ToF32,
  f32ToF16,
  IQ4_NL_VALUES,
  nearestInt,
  packScaleMinK4,
  quantize,
} from "../src/model/quant/mod.ts";

const fround = Math.fround;

/** Writes x as f16 at `o` and returns the value it decodes to. */
function putF16(out: Uint8Array, o: number, x: number): number {
  const h = f32ToF16(x);
  out[o] = h & 0xff;
  out[o + 1] = h >>> 8;
  return f16ToF32(h);
}

function clamp(v: number, lo: number, hi: number): number {
  return Math.max(lo, Math.min(hi, v));
}

/** C's (int8_t) cast of a float in range: truncation toward zero. */
const trunc = Math.trunc;

function q4_1(src: Float32Array, out: Uint8Array): void {
  for (let b = 0; b < src.length / 32; b++) {
    const x = src.subarray(32 * b, 32 * b + 32);
    const o = 20 * b;
    let min = Infinity;
    let max = -Infinity;
    for (const v of x) {
      min = Math.min(min, v);
      max = Math.max(max, v);
    }
    const d = fround((max - min) / 15);
    const id = d ? fround(1 / d) : 0;
    putF16(out, o, d);
    putF16(out, o + 2, min);
    for (let j = 0; j < 16; j++) {
      const a = Math.min(15, trunc(fround(fround(fround(x[j] - min) * id) + 0.5)));
      const c = Math.min(15, trunc(fround(fround(fround(x[j + 16] - min) * id) + 0.5)));
      out[o + 4 + j] = a | (c << 4);
    }
  }
}

function q5(src: Float32Array, out: Uint8Array, withMin: boolean): void {
  const blockBytes = withMin ? 24 : 22;
  const head = withMin ? 4 : 2;
  for (let b = 0; b < src.length / 32; b++) {
    const x = src.subarray(32 * b, 32 * b + 32);
    const o = blockBytes * b;
    let d: number;
    let min = 0;
    if (withMin) {
      let max = -Infinity;
      min = Infinity;
      for (const v of x) {
        min = Math.min(min, v);
        max = Math.max(max, v);
      }
      d = fround((max - min) / 31);
      putF16(out, o + 2, min);
    } else {
      let amax = 0;
      let max = 0;
      for (const v of x) {
        if (amax < Math.abs(v)) {
          amax = Math.abs(v);
          max = v;
        }
      }
      d = fround(max / -16);
    }
    const id = d ? fround(1 / d) : 0;
    putF16(out, o, d);
    let qh = 0;
    for (let j = 0; j < 16; j++) {
      const enc = (v: number) =>
        withMin
          ? trunc(fround(fround(fround(v - min) * id) + 0.5))
          : Math.min(31, trunc(fround(fround(v * id) + 16.5)));
      const a = enc(x[j]);
      const c = enc(x[j + 16]);
      out[o + head + 4 + j] = (a & 0x0f) | ((c & 0x0f) << 4);
      qh |= ((a >>> 4) & 1) << j;
      qh |= ((c >>> 4) & 1) << (j + 16);
    }
    out[o + head] = qh & 0xff;
    out[o + head + 1] = (qh >>> 8) & 0xff;
    out[o + head + 2] = (qh >>> 16) & 0xff;
    out[o + head + 3] = qh >>> 24;
  }
}

/** Min and max (min clamped to <= 0) of n values from `off`. */
function range(x: Float32Array, off: number, n: number): { min: number; max: number } {
  let min = 0;
  let max = -Infinity;
  for (let i = 0; i < n; i++) {
    min = Math.min(min, x[off + i]);
    max = Math.max(max, x[off + i]);
  }
  return { min, max: Math.max(max, min) };
}

/** The value of largest magnitude among n values from `off`, with its sign. */
function signedMax(x: ArrayLike<number>, off: number, n: number): number {
  let best = 0;
  for (let i = 0; i < n; i++) if (Math.abs(x[off + i]) > Math.abs(best)) best = x[off + i];
  return best;
}

function q2_K(src: Float32Array, out: Uint8Array): void {
  const scale = new Float64Array(16);
  const mins = new Float64Array(16);
  for (let b = 0; b < src.length / 256; b++) {
    const x0 = 256 * b;
    const o = 84 * b;
    out.fill(0, o, o + 84);
    for (let k = 0; k < 16; k++) {
      const r = range(src, x0 + 16 * k, 16);
      scale[k] = (r.max - r.min) / 3;
      mins[k] = -r.min;
    }
    const d = putF16(out, o + 80, Math.max(...scale) / 15);
    const dmin = putF16(out, o + 82, Math.max(...mins) / 15);
    for (let k = 0; k < 16; k++) {
      const sc = d ? clamp(nearestInt(scale[k] / d), 0, 15) : 0;
      const m = dmin ? clamp(nearestInt(mins[k] / dmin), 0, 15) : 0;
      out[o + k] = sc | (m << 4);
      // Element 128n + 32j + l sits in sub-block 8n + 2j + l/16.
      const n = k >> 3;
      const j = (k >> 1) & 3;
      for (let i = 0; i < 16; i++) {
        const l = 16 * (k & 1) + i;
        const v = src[x0 + 128 * n + 32 * j + l];
        const q = sc ? clamp(nearestInt((v + dmin * m) / (d * sc)), 0, 3) : 0;
        out[o + 16 + 32 * n + l] |= q << (2 * j);
      }
    }
  }
}

function q3_K(src: Float32Array, out: Uint8Array): void {
  const scale = new Float64Array(16);
  for (let b = 0; b < src.length / 256; b++) {
    const x0 = 256 * b;
    const o = 110 * b;
    out.fill(0, o, o + 110);
    for (let k = 0; k < 16; k++) scale[k] = signedMax(src, x0 + 16 * k, 16) / -4;
    const d = putF16(out, o + 108, signedMax(scale, 0, 16) / -32);
    for (let k = 0; k < 16; k++) {
      const sc = d ? clamp(nearestInt(scale[k] / d), -32, 31) : 0;
      const l6 = sc + 32;
      if (k < 8) out[o + 96 + k] |= l6 & 0x0f;
      else out[o + 96 + k - 8] |= (l6 & 0x0f) << 4;
      out[o + 96 + 8 + (k & 3)] |= (l6 >>> 4) << (2 * (k >> 2));
      const n = k >> 3;
      const j = (k >> 1) & 3;
      for (let i = 0; i < 16; i++) {
        const l = 16 * (k & 1) + i;
        const v = src[x0 + 128 * n + 32 * j + l];
        const q = (sc ? clamp(nearestInt(v / (d * sc)), -4, 3) : 0) + 4;
        out[o + 32 + 32 * n + l] |= (q & 3) << (2 * j);
        out[o + l] |= (q >> 2) << (4 * n + j);
      }
    }
  }
}

function q5_K(src: Float32Array, out: Uint8Array): void {
  const scale = new Float64Array(8);
  const mins = new Float64Array(8);
  const ls = new Uint8Array(8);
  const lm = new Uint8Array(8);
  for (let b = 0; b < src.length / 256; b++) {
    const x0 = 256 * b;
    const o = 176 * b;
    out.fill(0, o, o + 176);
    for (let s = 0; s < 8; s++) {
      const r = range(src, x0 + 32 * s, 32);
      scale[s] = (r.max - r.min) / 31;
      mins[s] = -r.min;
    }
    const d = putF16(out, o, Math.max(...scale) / 63);
    const dmin = putF16(out, o + 2, Math.max(...mins) / 63);
    for (let s = 0; s < 8; s++) {
      ls[s] = d ? clamp(nearestInt(scale[s] / d), 0, 63) : 0;
      lm[s] = dmin ? clamp(nearestInt(mins[s] / dmin), 0, 63) : 0;
    }
    packScaleMinK4(ls, lm, out, o + 4);
    for (let s = 0; s < 8; s++) {
      const g = s >> 1;
      const hi = s & 1;
      for (let l = 0; l < 32; l++) {
        const v = src[x0 + 32 * s + l];
        const q = ls[s] ? clamp(nearestInt((v + dmin * lm[s]) / (d * ls[s])), 0, 31) : 0;
        out[o + 48 + 32 * g + l] |= (q & 0x0f) << (4 * hi);
        out[o + 16 + l] |= (q >> 4) << s;
      }
    }
  }
}

/** Index of the IQ4_NL level nearest to v. */
function nearestLevel(v: number): number {
  let best = 0;
  for (let i = 1; i < 16; i++) {
    if (Math.abs(IQ4_NL_VALUES[i] - v) < Math.abs(IQ4_NL_VALUES[best] - v)) best = i;
  }
  return best;
}

/** 32 values as IQ4_NL nibbles at `q` with scale dl (the layout both IQ4 types share). */
function iq4Nibbles(x: Float32Array, off: number, dl: number, out: Uint8Array, q: number): void {
  for (let j = 0; j < 16; j++) {
    const a = dl ? nearestLevel(x[off + j] / dl) : 8;
    const c = dl ? nearestLevel(x[off + j + 16] / dl) : 8;
    out[q + j] = a | (c << 4);
  }
}

function iq4_nl(src: Float32Array, out: Uint8Array): void {
  for (let b = 0; b < src.length / 32; b++) {
    // The value of largest magnitude maps to the level -127.
    const d = putF16(out, 18 * b, signedMax(src, 32 * b, 32) / -127);
    iq4Nibbles(src, 32 * b, d, out, 18 * b + 2);
  }
}

function iq4_xs(src: Float32Array, out: Uint8Array): void {
  const scale = new Float64Array(8);
  for (let b = 0; b < src.length / 256; b++) {
    const x0 = 256 * b;
    const o = 136 * b;
    out.fill(0, o, o + 136);
    for (let ib = 0; ib < 8; ib++) scale[ib] = signedMax(src, x0 + 32 * ib, 32) / -127;
    const d = putF16(out, o, signedMax(scale, 0, 8) / -32);
    let h = 0;
    for (let ib = 0; ib < 8; ib++) {
      const ls = (d ? clamp(nearestInt(scale[ib] / d), -32, 31) : 0) + 32;
      out[o + 4 + (ib >> 1)] |= (ls & 0x0f) << (4 * (ib & 1));
      h |= (ls >> 4) << (2 * ib);
      iq4Nibbles(src, x0 + 32 * ib, d * (ls - 32), out, o + 8 + 16 * ib);
    }
    out[o + 2] = h & 0xff;
    out[o + 3] = h >>> 8;
  }
}

const ENCODERS: Record<number, (src: Float32Array, out: Uint8Array) => void> = {
  [GgmlType.Q4_1]: q4_1,
  [GgmlType.Q5_0]: (s, o) => q5(s, o, false),
  [GgmlType.Q5_1]: (s, o) => q5(s, o, true),
  [GgmlType.Q2_K]: q2_K,
  [GgmlType.Q3_K]: q3_K,
  [GgmlType.Q5_K]: q5_K,
  [GgmlType.IQ4_NL]: iq4_nl,
  [GgmlType.IQ4_XS]: iq4_xs,
};

/** Encodes `src` (whole blocks) as any weight type the engine runs. */
export function quantizeAny(type: number, src: Float32Array): Uint8Array {
  if (canQuantize(type)) return quantize(type, src);
  const info = ggmlTypeInfo(type);
  const encode = ENCODERS[type];
  if (!info || !encode || src.length % info.blockElems !== 0) {
    throw new Error(`quantizeAny: cannot encode ${src.length} values as type ${type}`);
  }
  const out = new Uint8Array((src.length / info.blockElems) * info.blockBytes);
  encode(src, out);
  return out;
}
