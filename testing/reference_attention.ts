/**
 * Plain-TS ground truth for the attention, KV and score kernels (f64 accumulation, readable
 * loops). K and V are passed as the values the device holds, i.e. already rounded to f16
 * (`roundToF16`). Query head qh reads KV head floor(qh / groupSize) (GQA, see attention.ts).
 */
import { HcError } from "../src/errors.ts";
import { f16ToF32Array, f32ToF16Array } from "../src/model/quant/mod.ts";

/** The f32 values an f16 store would keep (round to nearest even). */
export function roundToF16(x: Float32Array): Float32Array {
  return f16ToF32Array(f32ToF16Array(x));
}

/**
 * The queries as the GPU prefill kernel (shaders/attn_prefill.comp) sees them: it stores each
 * query times its scale (log2(e) / sqrt(headDim) by default) as f16 in shared memory. Feeding
 * these to refPrefillAttention leaves only f32 rounding between the two.
 */
export function f16ScaledQueries(
  q: Float32Array,
  headDim: number,
  scale = 1 / Math.sqrt(headDim),
): Float32Array {
  const s = Math.fround(scale * Math.LOG2E);
  const scaled = roundToF16(q.map((x) => Math.fround(x * s)));
  return scaled.map((x) => x / s);
}

function bad(message: string): never {
  throw new HcError("E_BAD_REQUEST", message);
}

/**
 * softmax(scale * q . K_j) over rows [0, n) of `k` ([rows][headDim]); with `softcap` c, each
 * scaled score s is c * tanh(s / c) first (Gemma 2's attention logit soft-capping).
 */
export function softmaxRow(
  q: Float32Array,
  qOffset: number,
  k: Float32Array,
  n: number,
  headDim: number,
  scale: number,
  softcap = 0,
): Float64Array {
  if (k.length < n * headDim) bad(`softmaxRow: K holds ${k.length / headDim} rows, needs ${n}`);
  const s = new Float64Array(n);
  let mx = -Infinity;
  for (let j = 0; j < n; j++) {
    let acc = 0;
    for (let d = 0; d < headDim; d++) acc += q[qOffset + d] * k[j * headDim + d];
    s[j] = acc * scale;
    if (softcap > 0) s[j] = softcap * Math.tanh(s[j] / softcap);
    if (s[j] > mx) mx = s[j];
  }
  let sum = 0;
  for (let j = 0; j < n; j++) {
    s[j] = Math.exp(s[j] - mx);
    sum += s[j];
  }
  for (let j = 0; j < n; j++) s[j] /= sum;
  return s;
}

export interface RefDecodeArgs {
  /** f32 [nKvHeads * G][headDim]. */
  q: Float32Array;
  /** Per KV head, its valid rows [len][headDim] (f16-rounded). */
  k: Float32Array[];
  v: Float32Array[];
  headDim: number;
  groupSize: number;
  scale?: number;
  /** Sliding window W: only the last W rows are seen (0: all). */
  window?: number;
  /** Logit soft-capping c (0: none). */
  softcap?: number;
}

/** One decode step: out[qh] = softmax(q[qh] . K_h / sqrt(d)) V_h over head h's own length. */
export function refDecodeAttention(a: RefDecodeArgs): Float32Array {
  const D = a.headDim;
  const G = a.groupSize;
  const nKv = a.k.length;
  const scale = a.scale ?? 1 / Math.sqrt(D);
  const out = new Float32Array(nKv * G * D);
  for (let h = 0; h < nKv; h++) {
    const all = a.k[h].length / D;
    if (a.v[h].length !== a.k[h].length) bad(`head ${h}: K and V row counts differ`);
    const first = a.window ? Math.max(0, all - a.window) : 0;
    const len = all - first;
    const k = a.k[h].subarray(first * D);
    const v = a.v[h].subarray(first * D);
    for (let g = 0; g < G; g++) {
      const qh = h * G + g;
      if (len === 0) continue;
      const p = softmaxRow(a.q, qh * D, k, len, D, scale, a.softcap);
      for (let d = 0; d < D; d++) {
        let acc = 0;
        for (let j = 0; j < len; j++) acc += p[j] * v[j * D + d];
        out[qh * D + d] = acc;
      }
    }
  }
  return out;
}

export interface RefPrefillArgs {
  /** f32 [tokens][nKvHeads * G][headDim]. */
  q: Float32Array;
  tokens: number;
  /** Position of query token 0; token t sees rows 0 .. position + t. */
  position: number;
  /** Per KV head, rows [position + tokens][headDim] (f16-rounded). */
  k: Float32Array[];
  v: Float32Array[];
  headDim: number;
  groupSize: number;
  scale?: number;
  /** Sliding window W: position pos sees positions pos - W + 1 .. pos, as llama.cpp masks
   * (pos - key < W); 0: all before it. */
  window?: number;
  /** Logit soft-capping c (0: none). */
  softcap?: number;
}

/** Causal attention of a token batch: output [tokens][nHeads][headDim]. */
export function refPrefillAttention(a: RefPrefillArgs): Float32Array {
  const D = a.headDim;
  const G = a.groupSize;
  const nKv = a.k.length;
  const nHeads = nKv * G;
  const scale = a.scale ?? 1 / Math.sqrt(D);
  const out = new Float32Array(a.tokens * nHeads * D);
  for (let t = 0; t < a.tokens; t++) {
    const pos = a.position + t;
    const first = a.window ? Math.max(0, pos + 1 - a.window) : 0;
    const visible = pos + 1 - first;
    for (let h = 0; h < nKv; h++) {
      const k = a.k[h].subarray(first * D);
      const v = a.v[h].subarray(first * D);
      for (let g = 0; g < G; g++) {
        const qh = h * G + g;
        const base = (t * nHeads + qh) * D;
        const p = softmaxRow(a.q, base, k, visible, D, scale, a.softcap);
        for (let d = 0; d < D; d++) {
          let acc = 0;
          for (let j = 0; j < visible; j++) acc += p[j] * v[j * D + d];
          out[base + d] = acc;
        }
      }
    }
  }
  return out;
}

export interface RefScoresArgs {
  /** f32 [window][nHeads][headDim]: query w, query head qh at (w * nHeads + qh) * headDim. */
  q: Float32Array;
  nHeads: number;
  window: number;
  /** The KV head scored, and its rows [n][headDim] (f16-rounded). */
  head: number;
  k: Float32Array;
  n: number;
  headDim: number;
  groupSize: number;
  groupReduce: "max" | "mean";
  windowMode: "sum" | "separate";
  poolFirst: boolean;
  poolKernel?: number;
  scale?: number;
}

/** 1-D average pool, odd kernel, stride 1, zero padding kernel/2, always divided by kernel. */
export function avgPoolSame(x: ArrayLike<number>, kernel: number): Float64Array {
  const half = kernel >> 1;
  const out = new Float64Array(x.length);
  for (let i = 0; i < x.length; i++) {
    let acc = 0;
    for (let j = i - half; j <= i + half; j++) if (j >= 0 && j < x.length) acc += x[j];
    out[i] = acc / kernel;
  }
  return out;
}

/** Score rows for one KV head: `window` rows (separate) or one row (summed), each of length n. */
export function refScores(a: RefScoresArgs): Float32Array[] {
  const D = a.headDim;
  const G = a.groupSize;
  const K = a.poolKernel ?? 5;
  const scale = a.scale ?? 1 / Math.sqrt(D);
  const probs: Float64Array[][] = []; // [w][g] -> row
  for (let w = 0; w < a.window; w++) {
    const rowG: Float64Array[] = [];
    for (let g = 0; g < G; g++) {
      rowG.push(softmaxRow(a.q, (w * a.nHeads + a.head * G + g) * D, a.k, a.n, D, scale));
    }
    probs.push(rowG);
  }
  const reduce = (vals: number[]) =>
    a.groupReduce === "max" ? Math.max(...vals) : vals.reduce((x, y) => x + y, 0) / vals.length;
  const finish = (perG: Float64Array[]): Float32Array => {
    if (a.poolFirst) {
      const pooled = perG.map((r) => avgPoolSame(r, K));
      return Float32Array.from({ length: a.n }, (_, i) => reduce(pooled.map((r) => r[i])));
    }
    const red = Float64Array.from({ length: a.n }, (_, i) => reduce(perG.map((r) => r[i])));
    return Float32Array.from(avgPoolSame(red, K));
  };
  if (a.windowMode === "separate") return probs.map(finish);
  const summed = Array.from({ length: G }, (_, g) => {
    const s = new Float64Array(a.n);
    for (let w = 0; w < a.window; w++) for (let i = 0; i < a.n; i++) s[i] += probs[w][g][i];
    return s;
  });
  return [finish(summed)];
}

/** Indices of the k largest values, ascending by position; NaN counts as -inf; ties go to the
 * lower position (the same set as src/cache/analysis.ts topkSet). */
export function refTopK(scores: Float32Array, k: number): Uint32Array {
  const n = scores.length;
  const kk = Math.min(Math.max(0, k), n);
  const key = (i: number) => (Number.isNaN(scores[i]) ? -Infinity : scores[i]);
  const order = Array.from({ length: n }, (_, i) => i);
  order.sort((x, y) => key(y) - key(x) || x - y);
  return Uint32Array.from(order.slice(0, kk)).sort();
}
