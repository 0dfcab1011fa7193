import assert from "node:assert/strict";
import { isHcError } from "../src/errors.ts";
import {
  resolveSamplingOptions,
  Sampler,
  type SamplingOptions,
  Xoshiro128,
} from "../src/model/sampler.ts";

function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = Math.imul(a ^ (a >>> 15), a | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function randomLogits(n: number, seed: number, spread = 4): Float32Array {
  const r = rng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = (r() - 0.5) * 2 * spread;
  return out;
}

function softmax(x: ArrayLike<number>, t = 1): number[] {
  let max = -Infinity;
  for (let i = 0; i < x.length; i++) max = Math.max(max, x[i]);
  const e = Array.from(x, (v) => Math.exp((v - max) / t));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / s);
}

/**
 * Straightforward llama.cpp-style chain with a full sort, to check the optimized sampler
 * against: penalties, top-k, top-p, min-p (on untempered probabilities), then temperature.
 */
function referenceDistribution(
  logits: Float32Array,
  recent: number[],
  o: Required<SamplingOptions>,
): Map<number, number> {
  const v = Array.from(logits);
  const window = o.repeatLastN === -1 ? recent : recent.slice(recent.length - o.repeatLastN);
  const counts = new Map<number, number>();
  if (o.repeatLastN !== 0) { for (const id of window) counts.set(id, (counts.get(id) ?? 0) + 1); }
  for (const [id, c] of counts) {
    let x = v[id];
    x = x <= 0 ? x * o.repeatPenalty : x / o.repeatPenalty;
    x -= c * o.frequencyPenalty + o.presencePenalty;
    v[id] = Math.fround(x);
  }
  let cand = v.map((logit, id) => ({ id, logit }));
  cand.sort((a, b) => b.logit - a.logit || a.id - b.id);
  if (o.topK > 0) cand = cand.slice(0, o.topK);
  if (o.topP < 1) {
    const p = softmax(cand.map((c) => c.logit));
    let cum = 0;
    let keep = cand.length;
    for (let i = 0; i < p.length; i++) {
      cum += p[i];
      if (cum >= o.topP) {
        keep = i + 1;
        break;
      }
    }
    cand = cand.slice(0, keep);
  }
  if (o.minP > 0) {
    const max = cand[0].logit;
    cand = cand.filter((c) => c.logit >= max + Math.log(o.minP));
  }
  const p = softmax(cand.map((c) => c.logit), o.temperature);
  return new Map(cand.map((c, i) => [c.id, p[i]]));
}

function assertCode(fn: () => unknown, field: string): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(isHcError(e, "E_BAD_REQUEST"), `expected E_BAD_REQUEST, got ${String(e)}`);
    assert.match((e as Error).message, new RegExp(field));
    return true;
  });
}

Deno.test("greedy is the argmax, lowest index on ties, logits untouched", () => {
  const logits = randomLogits(1000, 1);
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
  const copy = logits.slice();
  const s = new Sampler({ temperature: 0, topK: 5, topP: 0.5, minP: 0.2 });
  for (let k = 0; k < 5; k++) assert.equal(s.sample(logits, []), best);
  assert.deepEqual(logits, copy);
  assert.equal(new Sampler({ temperature: 0 }).sample(Float32Array.of(1, 3, 3, 2), []), 1);
  assert.equal(new Sampler({ temperature: 0 }).sample(Float32Array.of(-Infinity, -Infinity)), 0);
  assert.equal(new Sampler({ temperature: 0 }).sample(Float32Array.of(NaN, 0.5, NaN)), 1);
  const d = new Sampler({ temperature: 0 }).distribution(Float32Array.of(0, 9, 9));
  assert.deepEqual([...d.ids], [1]);
  assert.deepEqual([...d.probs], [1]);
});

Deno.test("same seed gives the same sequence, a different seed a different one", () => {
  const logits = randomLogits(5000, 2, 2);
  const run = (seed: number) => {
    const s = new Sampler({ temperature: 1, seed });
    return Array.from({ length: 64 }, () => s.sample(logits, []));
  };
  assert.deepEqual(run(42), run(42));
  assert.notDeepEqual(run(42), run(43));
  assert.notDeepEqual(run(42), run(42 + 2 ** 32)); // the high half of the seed counts too
  const a = new Xoshiro128(7);
  const b = new Xoshiro128(7);
  for (let i = 0; i < 100; i++) {
    const f = a.nextFloat();
    assert.equal(f, b.nextFloat());
    assert.ok(f >= 0 && f < 1);
  }
  // An absent seed is drawn at random and reported, so the run can be replayed.
  const s1 = new Sampler({});
  const s2 = new Sampler({ seed: s1.options.seed });
  const seq1 = Array.from({ length: 20 }, () => s1.sample(logits));
  const seq2 = Array.from({ length: 20 }, () => s2.sample(logits));
  assert.deepEqual(seq1, seq2);
});

Deno.test("PRNG output is uniform enough", () => {
  const g = new Xoshiro128(123);
  const bins = new Array(10).fill(0);
  const n = 100_000;
  for (let i = 0; i < n; i++) bins[Math.floor(g.nextFloat() * 10)]++;
  let chi2 = 0;
  for (const b of bins) chi2 += (b - n / 10) ** 2 / (n / 10);
  assert.ok(chi2 < 30, `chi2 ${chi2} with 9 degrees of freedom`);
});

Deno.test("empirical distribution of 20k samples matches the softmax", () => {
  const logits = Float32Array.of(1.0, 2.0, 0.5, -1.0, 1.5, 0.0);
  for (const temperature of [1, 0.6]) {
    const s = new Sampler({ temperature, seed: 2024 });
    const n = 20_000;
    const counts = new Array(logits.length).fill(0);
    for (let i = 0; i < n; i++) counts[s.sample(logits, [])]++;
    const p = softmax(logits, temperature);
    for (let i = 0; i < p.length; i++) {
      const sd = Math.sqrt((p[i] * (1 - p[i])) / n);
      const got = counts[i] / n;
      assert.ok(
        Math.abs(got - p[i]) < 5 * sd + 1e-3,
        `T=${temperature} token ${i}: ${got} vs ${p[i]}`,
      );
    }
  }
});

Deno.test("top-k keeps exactly the k best", () => {
  const logits = Float32Array.of(0.1, 5, 3, 4, -2, 4.5, 1);
  const s = new Sampler({ topK: 3, seed: 1 });
  const d = s.distribution(logits, []);
  assert.deepEqual([...d.ids], [1, 5, 3]);
  const p = softmax([5, 4.5, 4]);
  d.probs.forEach((v, i) => assert.ok(Math.abs(v - p[i]) < 1e-12));
  for (let i = 0; i < 2000; i++) assert.ok([1, 5, 3].includes(s.sample(logits, [])));
  // Ties at the cut go to the lower id.
  const tie = new Sampler({ topK: 2 }).distribution(Float32Array.of(1, 2, 1, 2, 2), []);
  assert.deepEqual([...tie.ids], [1, 3]);
  // k larger than the vocabulary keeps everything.
  assert.equal(new Sampler({ topK: 50 }).distribution(logits, []).ids.length, 7);
});

Deno.test("top-p keeps the smallest set that reaches p", () => {
  // Probabilities 0.5, 0.25, 0.125, 0.0625, 0.0625 (logits are log2 steps).
  const l = [0, -1, -2, -3, -3].map((v) => v * Math.LN2);
  const logits = Float32Array.from([l[3], l[0], l[2], l[4], l[1]]); // shuffled: ids 1,4,2,0,3
  const ids = (p: number) => [...new Sampler({ topP: p }).distribution(logits, []).ids];
  assert.deepEqual(ids(0.5), [1]);
  assert.deepEqual(ids(0.6), [1, 4]);
  assert.deepEqual(ids(0.8), [1, 4, 2]);
  assert.deepEqual(ids(0.9), [1, 4, 2, 0]);
  assert.equal(ids(1).length, 5);
  assert.deepEqual(ids(1e-9), [1]); // never empty
  const d = new Sampler({ topP: 0.8 }).distribution(logits, []);
  assert.ok(Math.abs(d.probs[0] - 0.5 / 0.875) < 1e-6);
  // With top-k first, p is measured on the k survivors.
  const kp = new Sampler({ topK: 2, topP: 0.7 }).distribution(logits, []);
  assert.deepEqual([...kp.ids], [1, 4]); // 0.5/0.75 = 0.67 < 0.7, so both stay
});

Deno.test("min-p drops tokens below minP times the best", () => {
  const logits = Float32Array.from([0.1, 0.3, 0.05, 0.4, 0.15].map(Math.log));
  const ids = new Sampler({ minP: 0.2 }).distribution(logits, []).ids;
  assert.deepEqual([...ids].sort(), [0, 1, 3, 4]); // 0.05 < 0.2*0.4 = 0.08 <= 0.1
  const ids3 = new Sampler({ minP: 0.3 }).distribution(logits, []).ids;
  assert.deepEqual([...ids3].sort(), [1, 3, 4]); // 0.1 < 0.3*0.4 = 0.12
  const ids2 = new Sampler({ minP: 0.5 }).distribution(logits, []).ids;
  assert.deepEqual([...ids2].sort(), [1, 3]);
  assert.deepEqual([...new Sampler({ minP: 1 }).distribution(logits, []).ids], [3]);
  // Temperature does not change which tokens min-p keeps (it runs before temperature).
  const hot = new Sampler({ minP: 0.2, temperature: 5 }).distribution(logits, []).ids;
  assert.deepEqual([...hot].sort(), [0, 1, 3, 4]);
});

Deno.test("repetition penalty divides positive and multiplies negative logits", () => {
  const greedy = (logits: number[], recent: number[], o: SamplingOptions) =>
    new Sampler({ temperature: 0, ...o }).sample(Float32Array.from(logits), recent);
  // 2.0 / 1.1 = 1.818 < 1.85 (a subtraction of 0.1 would have kept token 0 ahead).
  assert.equal(greedy([2.0, 1.85], [0], { repeatPenalty: 1.1 }), 1);
  assert.equal(greedy([2.0, 1.85], [], { repeatPenalty: 1.1 }), 0);
  // -1 * 1.1 = -1.1 < -1.05 (a division would have made token 0 -0.909 and kept it ahead).
  assert.equal(greedy([-1.0, -1.05], [0], { repeatPenalty: 1.1 }), 1);
  // Applied once per distinct token, however often it occurs.
  assert.equal(greedy([2.0, 1.7], [0, 0, 0, 0], { repeatPenalty: 1.1 }), 0);
  // Only the last repeatLastN tokens count.
  const hist = [0, 2, 2];
  assert.equal(greedy([2.0, 1.85, 0], hist, { repeatPenalty: 1.1, repeatLastN: 2 }), 0);
  assert.equal(greedy([2.0, 1.85, 0], hist, { repeatPenalty: 1.1, repeatLastN: 3 }), 1);
  assert.equal(greedy([2.0, 1.85, 0], hist, { repeatPenalty: 1.1, repeatLastN: -1 }), 1);
  assert.equal(greedy([2.0, 1.85], [0], { repeatPenalty: 1.1, repeatLastN: 0 }), 0);
  // Out-of-range ids in the history are ignored, not a crash.
  assert.equal(greedy([2.0, 1.85], [-1, 7, 2.5, 0], { repeatPenalty: 1.1 }), 1);

  // Exact values through the distribution: penalized logits, then softmax.
  const d = new Sampler({ repeatPenalty: 2 }).distribution(Float32Array.of(2, -1, 0.5), [0, 1]);
  const p = softmax([1, -2, 0.5]);
  const byId = new Map([...d.ids].map((id, i) => [id, d.probs[i]]));
  for (let i = 0; i < 3; i++) assert.ok(Math.abs(byId.get(i)! - p[i]) < 1e-6);
});

Deno.test("presence and frequency penalties (OpenAI semantics)", () => {
  const logits = Float32Array.of(1, 1, 1);
  const d = new Sampler({ presencePenalty: 0.5, frequencyPenalty: 0.25 }).distribution(
    logits,
    [0, 0, 0, 1],
  );
  // token 0: 1 - 3*0.25 - 0.5 = -0.25; token 1: 1 - 0.25 - 0.5 = 0.25; token 2: 1.
  const p = softmax([-0.25, 0.25, 1]);
  const byId = new Map([...d.ids].map((id, i) => [id, d.probs[i]]));
  for (let i = 0; i < 3; i++) assert.ok(Math.abs(byId.get(i)! - p[i]) < 1e-6);
  // A negative presence penalty encourages repetition.
  const g = new Sampler({ temperature: 0, presencePenalty: -1 });
  assert.equal(g.sample(Float32Array.of(1, 0.5), [1]), 1);
});

Deno.test("optimized chain equals a full-sort reference on a 150k vocabulary", () => {
  const vocab = 150_000;
  const logits = randomLogits(vocab, 77, 6);
  for (let i = 0; i < 50; i++) logits[(i * 2999) % vocab] = 9 + (i % 5) * 0.3; // a few peaks
  logits[123] = logits[2999]; // an exact tie across the list
  const recent = [0, 2999, 5998, 5998, 149_999, 123];
  const cases: SamplingOptions[] = [
    { topK: 40, topP: 0.9, minP: 0.05, temperature: 0.8, repeatPenalty: 1.1 },
    { topK: 0, topP: 0.95, temperature: 1.2 },
    { topK: 0, topP: 1, minP: 0.02, temperature: 0.7, frequencyPenalty: 0.3 },
    { topK: 5, temperature: 1, presencePenalty: 1, repeatLastN: -1 },
    { topK: 0, topP: 0.5, minP: 0.1, temperature: 2, repeatPenalty: 1.3, repeatLastN: 3 },
  ];
  for (const o of cases) {
    const s = new Sampler({ ...o, seed: 5 });
    const got = s.distribution(logits, recent);
    const want = referenceDistribution(logits, recent, s.options);
    assert.equal(got.ids.length, want.size, JSON.stringify(o));
    got.ids.forEach((id, i) => {
      assert.ok(want.has(id), `${JSON.stringify(o)}: unexpected id ${id}`);
      assert.ok(Math.abs(got.probs[i] - want.get(id)!) < 1e-9, JSON.stringify(o));
    });
    for (let k = 0; k < 20; k++) assert.ok(want.has(s.sample(logits, recent)));
  }
});

Deno.test("sampling a 150k vocabulary with top-k is fast", () => {
  const logits = randomLogits(150_000, 8, 5);
  const s = new Sampler({ topK: 40, topP: 0.95, minP: 0.05, temperature: 0.8, seed: 1 });
  s.sample(logits, []); // warm up
  const t0 = performance.now();
  for (let i = 0; i < 100; i++) s.sample(logits, [1, 2, 3]);
  const msEach = (performance.now() - t0) / 100;
  // A full sort of 150k entries costs tens of ms; selection should stay far below that.
  assert.ok(msEach < 15, `${msEach.toFixed(2)} ms per sample`);
});

Deno.test("options are validated, naming the field", () => {
  assertCode(() => new Sampler({ temperature: -0.1 }), "temperature");
  assertCode(() => new Sampler({ temperature: NaN }), "temperature");
  assertCode(() => new Sampler({ temperature: Infinity }), "temperature");
  assertCode(() => new Sampler({ topP: 0 }), "topP");
  assertCode(() => new Sampler({ topP: 1.01 }), "topP");
  assertCode(() => new Sampler({ minP: -0.1 }), "minP");
  assertCode(() => new Sampler({ minP: 2 }), "minP");
  assertCode(() => new Sampler({ topK: -1 }), "topK");
  assertCode(() => new Sampler({ topK: 2.5 }), "topK");
  assertCode(() => new Sampler({ repeatPenalty: 0 }), "repeatPenalty");
  assertCode(() => new Sampler({ repeatLastN: -2 }), "repeatLastN");
  assertCode(() => new Sampler({ presencePenalty: 3 }), "presencePenalty");
  assertCode(() => new Sampler({ frequencyPenalty: -2.5 }), "frequencyPenalty");
  assertCode(() => new Sampler({ seed: 1.5 }), "seed");
  assertCode(() => new Sampler({ topK: "5" as unknown as number }), "topK");
  assertCode(() => new Sampler({}).sample(new Float32Array(0), []), "empty");
  const r = resolveSamplingOptions({ temperature: 0, seed: 3 });
  assert.equal(r.temperature, 0);
  assert.equal(r.topP, 1);
  assert.equal(r.repeatLastN, 64);
  assert.equal(r.seed, 3);
});
