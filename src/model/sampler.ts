/**
 * Token sampling with llama.cpp's order of operations:
 *   penalties → top-k → top-p → min-p → temperature → draw.
 * top-p and min-p look at the distribution before temperature, as in llama.cpp's default chain.
 * temperature <= 0 is greedy: the argmax of the penalized logits, lowest index on ties.
 *
 * Work per call is O(vocab) plus O(vocab·log k) for top-k (a size-k heap, no full sort) and, for
 * top-p without top-k, a heap that pops only the tokens inside the nucleus. Ties between equal
 * logits always go to the lower token id, so results do not depend on sort stability.
 *
 * Randomness: xoshiro128** (Blackman & Vigna), seeded through splitmix32 from the 64 bits of
 * the seed's two 32-bit halves; each draw uses 53 bits from two outputs. The same seed and the
 * same inputs give the same tokens on every platform.
 */
import { HcError } from "../errors.ts";

export interface SamplingOptions {
  /** Divides the logits; 0 = greedy. Default 1. */
  temperature?: number;
  /** Keep the k most likely tokens; 0 = off. Default 0. */
  topK?: number;
  /** Keep the smallest set of tokens whose probability reaches p; 1 = off. In (0, 1]. Default 1. */
  topP?: number;
  /** Drop tokens less likely than minP times the most likely one; 0 = off. In [0, 1]. Default 0. */
  minP?: number;
  /** llama.cpp repetition penalty: positive logits divided, negative multiplied. 1 = off. */
  repeatPenalty?: number;
  /** How many of the most recent tokens the penalties look at; -1 = all given, 0 = none. Default 64. */
  repeatLastN?: number;
  /** OpenAI presence penalty in [-2, 2], subtracted once from each token seen in the window. */
  presencePenalty?: number;
  /** OpenAI frequency penalty in [-2, 2], subtracted once per occurrence in the window. */
  frequencyPenalty?: number;
  /** Seed of the PRNG (any safe integer); random when absent. */
  seed?: number;
}

export type ResolvedSamplingOptions = Required<SamplingOptions>;

/** Probabilities of the tokens that survive the filters, in candidate order. */
export interface SamplingDistribution {
  readonly ids: Int32Array;
  readonly probs: Float64Array;
}

function bad(field: string, why: string, value: unknown): never {
  throw new HcError("E_BAD_REQUEST", `sampling option ${field} ${why} (got ${String(value)})`);
}

function num(
  opts: SamplingOptions,
  field: keyof SamplingOptions,
  fallback: number,
  check: (v: number) => string | undefined,
): number {
  const v: unknown = opts[field];
  if (v == null) return fallback;
  if (typeof v !== "number" || Number.isNaN(v)) bad(field, "must be a number", v);
  const why = check(v);
  if (why !== undefined) bad(field, why, v);
  return v;
}

const finite = (v: number) => (Number.isFinite(v) ? undefined : "must be finite");

/** Checks every option and fills in defaults; throws E_BAD_REQUEST naming the first bad field. */
export function resolveSamplingOptions(opts: SamplingOptions = {}): ResolvedSamplingOptions {
  if (typeof opts !== "object" || opts === null) bad("options", "must be an object", opts);
  const penalty = (v: number) =>
    finite(v) ?? (v < -2 || v > 2 ? "must be between -2 and 2" : undefined);
  return {
    temperature: num(
      opts,
      "temperature",
      1,
      (v) => finite(v) ?? (v < 0 ? "must be >= 0" : undefined),
    ),
    topK: num(
      opts,
      "topK",
      0,
      (v) => Number.isSafeInteger(v) && v >= 0 ? undefined : "must be an integer >= 0",
    ),
    topP: num(opts, "topP", 1, (v) => (v > 0 && v <= 1 ? undefined : "must be in (0, 1]")),
    minP: num(opts, "minP", 0, (v) => (v >= 0 && v <= 1 ? undefined : "must be in [0, 1]")),
    repeatPenalty: num(
      opts,
      "repeatPenalty",
      1,
      (v) => finite(v) ?? (v <= 0 ? "must be > 0" : undefined),
    ),
    repeatLastN: num(
      opts,
      "repeatLastN",
      64,
      (v) => Number.isSafeInteger(v) && v >= -1 ? undefined : "must be an integer >= -1",
    ),
    presencePenalty: num(opts, "presencePenalty", 0, penalty),
    frequencyPenalty: num(opts, "frequencyPenalty", 0, penalty),
    seed: num(
      opts,
      "seed",
      randomSeed(),
      (v) => Number.isSafeInteger(v) ? undefined : "must be a safe integer",
    ),
  };
}

function randomSeed(): number {
  const w = new Uint32Array(2);
  crypto.getRandomValues(w);
  return (w[0] & 0x1fffff) * 2 ** 32 + w[1];
}

/** xoshiro128** PRNG (32-bit state words), seeded by splitmix32. */
export class Xoshiro128 {
  #s = new Uint32Array(4);

  constructor(seed: number) {
    // splitmix32 over the seed's low and high 32-bit halves fills the 128-bit state; it never
    // yields an all-zero state in practice, and we guard against it anyway.
    let x = (seed >>> 0) ^ Math.imul(Math.floor(seed / 2 ** 32) >>> 0, 0x9e3779b9);
    for (let i = 0; i < 4; i++) {
      x = (x + 0x9e3779b9) >>> 0;
      let z = x;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
      this.#s[i] = (z ^ (z >>> 16)) >>> 0;
    }
    if ((this.#s[0] | this.#s[1] | this.#s[2] | this.#s[3]) === 0) this.#s[0] = 1;
  }

  nextU32(): number {
    const s = this.#s;
    const r = Math.imul(rotl(Math.imul(s[1], 5), 7), 9) >>> 0;
    const t = s[1] << 9;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 11);
    return r;
  }

  /** Uniform in [0, 1) with 53 random bits. */
  nextFloat(): number {
    const hi = this.nextU32() >>> 5; // 27 bits
    const lo = this.nextU32() >>> 6; // 26 bits
    return (hi * 67108864 + lo) / 9007199254740992;
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

const F32_MAX = 3.4028234663852886e38;

export class Sampler {
  readonly options: Readonly<ResolvedSamplingOptions>;
  #rng: Xoshiro128;
  #logits = new Float32Array(0);
  #ids = new Int32Array(0);
  #heap = new Int32Array(0);

  constructor(opts: SamplingOptions = {}) {
    this.options = Object.freeze(resolveSamplingOptions(opts));
    this.#rng = new Xoshiro128(this.options.seed);
  }

  /** Picks the next token id. `logits` is left untouched. */
  sample(logits: Float32Array, recentTokens: readonly number[] = []): number {
    const s = this.#prepare(logits, recentTokens);
    if (this.options.temperature <= 0) return argmax(s);
    const n = this.#filter(s);
    const ids = this.#ids;
    const t = this.options.temperature;
    let max = -Infinity;
    for (let i = 0; i < n; i++) max = Math.max(max, s[ids[i]]);
    if (max === -Infinity) return ids[0];
    let total = 0;
    for (let i = 0; i < n; i++) total += Math.exp((s[ids[i]] - max) / t);
    const r = this.#rng.nextFloat() * total;
    let cum = 0;
    let last = ids[0];
    for (let i = 0; i < n; i++) {
      const w = Math.exp((s[ids[i]] - max) / t);
      if (w === 0) continue;
      cum += w;
      last = ids[i];
      if (r < cum) return ids[i];
    }
    return last;
  }

  /** The distribution `sample` draws from (after every filter and the temperature). */
  distribution(logits: Float32Array, recentTokens: readonly number[] = []): SamplingDistribution {
    const s = this.#prepare(logits, recentTokens);
    if (this.options.temperature <= 0) {
      return { ids: Int32Array.of(argmax(s)), probs: Float64Array.of(1) };
    }
    const n = this.#filter(s);
    const ids = this.#ids.slice(0, n);
    const probs = new Float64Array(n);
    let max = -Infinity;
    for (let i = 0; i < n; i++) max = Math.max(max, s[ids[i]]);
    if (max === -Infinity) return { ids: ids.slice(0, 1), probs: Float64Array.of(1) };
    let total = 0;
    for (let i = 0; i < n; i++) {
      probs[i] = Math.exp((s[ids[i]] - max) / this.options.temperature);
      total += probs[i];
    }
    for (let i = 0; i < n; i++) probs[i] /= total;
    return { ids, probs };
  }

  /** Copies the logits, makes them orderable (NaN → -inf, +inf → f32 max), applies penalties. */
  #prepare(logits: Float32Array, recent: readonly number[]): Float32Array {
    const vocab = logits.length;
    if (vocab === 0) throw new HcError("E_BAD_REQUEST", "cannot sample from empty logits");
    if (this.#logits.length !== vocab) {
      this.#logits = new Float32Array(vocab);
      this.#ids = new Int32Array(vocab);
      this.#heap = new Int32Array(vocab);
    }
    const s = this.#logits;
    s.set(logits);
    for (let i = 0; i < vocab; i++) {
      const v = s[i];
      if (!(v < Infinity)) s[i] = Number.isNaN(v) ? -Infinity : F32_MAX;
    }
    this.#applyPenalties(s, recent);
    return s;
  }

  #applyPenalties(s: Float32Array, recent: readonly number[]): void {
    const o = this.options;
    const lastN = o.repeatLastN === -1 ? recent.length : Math.min(o.repeatLastN, recent.length);
    if (lastN === 0) return;
    if (o.repeatPenalty === 1 && o.frequencyPenalty === 0 && o.presencePenalty === 0) return;
    const counts = new Map<number, number>();
    for (let i = recent.length - lastN; i < recent.length; i++) {
      const id = recent[i];
      // Ids outside the vocabulary cannot be penalized; skipping them keeps bad input harmless.
      if (!Number.isInteger(id) || id < 0 || id >= s.length) continue;
      counts.set(id, (counts.get(id) ?? 0) + 1);
    }
    for (const [id, count] of counts) {
      let v = s[id];
      v = v <= 0 ? v * o.repeatPenalty : v / o.repeatPenalty;
      v -= count * o.frequencyPenalty + o.presencePenalty;
      s[id] = v;
    }
  }

  /** Runs top-k, top-p and min-p; leaves the survivors in #ids[0..n) and returns n. */
  #filter(s: Float32Array): number {
    const o = this.options;
    const vocab = s.length;
    const ids = this.#ids;
    let n: number;
    let sorted = false;
    if (o.topK > 0 && o.topK < vocab) {
      n = selectTopK(s, o.topK, ids, this.#heap);
      sorted = true;
    } else {
      n = vocab;
      for (let i = 0; i < vocab; i++) ids[i] = i;
    }

    if (o.topP < 1) {
      let max = -Infinity;
      for (let i = 0; i < n; i++) max = Math.max(max, s[ids[i]]);
      if (max > -Infinity) {
        let total = 0;
        for (let i = 0; i < n; i++) total += Math.exp(s[ids[i]] - max);
        const need = o.topP * total;
        if (!sorted) {
          n = nucleusByHeap(s, n, ids, this.#heap, max, need);
          sorted = true;
        } else {
          let cum = 0;
          for (let i = 0; i < n; i++) {
            cum += Math.exp(s[ids[i]] - max);
            if (cum >= need) {
              n = i + 1;
              break;
            }
          }
        }
      }
    }

    if (o.minP > 0) {
      let max = -Infinity;
      for (let i = 0; i < n; i++) max = Math.max(max, s[ids[i]]);
      const threshold = max + Math.log(o.minP);
      let kept = 0;
      for (let i = 0; i < n; i++) {
        if (s[ids[i]] >= threshold) ids[kept++] = ids[i];
      }
      n = kept;
    }
    return n;
  }
}

/** Index of the largest value, the lowest index on ties. */
function argmax(s: Float32Array): number {
  let best = 0;
  let bestV = s[0];
  for (let i = 1; i < s.length; i++) {
    if (s[i] > bestV) {
      bestV = s[i];
      best = i;
    }
  }
  return best;
}

/** a ranks above b: larger value, or equal value and lower id. */
function above(s: Float32Array, a: number, b: number): boolean {
  return s[a] > s[b] || (s[a] === s[b] && a < b);
}

/**
 * Writes the k best ids into out[0..k), best first. A min-heap of size k keeps the current best
 * k; a value that does not beat the heap's worst costs one comparison.
 */
function selectTopK(s: Float32Array, k: number, out: Int32Array, heap: Int32Array): number {
  for (let i = 0; i < k; i++) {
    heap[i] = i;
    siftUpMin(s, heap, i);
  }
  for (let i = k; i < s.length; i++) {
    // Later ids lose ties, so only a strictly larger value can enter.
    if (s[i] > s[heap[0]]) {
      heap[0] = i;
      siftDownMin(s, heap, 0, k);
    }
  }
  // Pop worst-first into the back of out, so out ends best-first.
  for (let size = k; size > 0; size--) {
    out[size - 1] = heap[0];
    heap[0] = heap[size - 1];
    siftDownMin(s, heap, 0, size - 1);
  }
  return k;
}

function siftUpMin(s: Float32Array, h: Int32Array, i: number): void {
  while (i > 0) {
    const p = (i - 1) >> 1;
    if (!above(s, h[p], h[i])) break;
    const t = h[p];
    h[p] = h[i];
    h[i] = t;
    i = p;
  }
}

function siftDownMin(s: Float32Array, h: Int32Array, i: number, size: number): void {
  for (;;) {
    const l = 2 * i + 1;
    if (l >= size) return;
    let m = l;
    if (l + 1 < size && above(s, h[m], h[l + 1])) m = l + 1;
    if (!above(s, h[i], h[m])) return;
    const t = h[m];
    h[m] = h[i];
    h[i] = t;
    i = m;
  }
}

function siftDownMax(s: Float32Array, h: Int32Array, i: number, size: number): void {
  for (;;) {
    const l = 2 * i + 1;
    if (l >= size) return;
    let m = l;
    if (l + 1 < size && above(s, h[l + 1], h[m])) m = l + 1;
    if (!above(s, h[m], h[i])) return;
    const t = h[m];
    h[m] = h[i];
    h[i] = t;
    i = m;
  }
}

/**
 * top-p over unsorted candidates ids[0..n): heapifies them (O(n)) and pops best-first until the
 * popped weight reaches `need`, writing the nucleus best-first into ids. Returns its size.
 */
function nucleusByHeap(
  s: Float32Array,
  n: number,
  ids: Int32Array,
  heap: Int32Array,
  max: number,
  need: number,
): number {
  heap.set(ids.subarray(0, n));
  for (let i = (n >> 1) - 1; i >= 0; i--) siftDownMax(s, heap, i, n);
  let cum = 0;
  let size = n;
  let kept = 0;
  while (size > 0) {
    const top = heap[0];
    ids[kept++] = top;
    cum += Math.exp(s[top] - max);
    if (cum >= need) break;
    heap[0] = heap[--size];
    siftDownMax(s, heap, 0, size);
  }
  return kept;
}
