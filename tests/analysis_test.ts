import assert from "node:assert/strict";
import { isHcError } from "../src/errors.ts";
import {
  avgPool1d,
  buildProfile,
  calibrationDefaults,
  CalibrationRecorder,
  calibrationSet,
  greedyStarClusters,
  groupMax,
  groupMean,
  median,
  multipliers,
  overlap,
  similarityGraph,
  stability,
  topkSet,
} from "../src/cache/profile/analysis.ts";
import {
  driftStatistic,
  driftTriggered,
  pooledGroupMax,
  prefillSelect,
  satelliteRefresh,
  snapkvScores,
  snapkvSelect,
  streamingSelect,
} from "../testing/reference_cache.ts";
import type { ProfileModel } from "../src/cache/profile/profile.ts";
import { parseProfile, serializeProfile } from "../src/cache/profile/profile.ts";

const f32 = (xs: number[]) => Float32Array.from(xs);
const i32 = (xs: number[]) => Int32Array.from(xs);
const arr = (xs: ArrayLike<number>) => Array.from(xs);

function rejects(code: string, fn: () => unknown): void {
  assert.throws(fn, (e: unknown) => isHcError(e) && e.code === code);
}

/** A row that is 1 on [start, start+width) and 0 elsewhere, with `extra` trailing keys. */
function block(len: number, start: number, width: number, extra = 0): Float32Array {
  const row = new Float32Array(len + extra);
  for (let i = start; i < start + width; i++) row[i] = 1;
  // Decoded-token keys past the prompt get the highest scores: they must be ignored.
  for (let i = len; i < len + extra; i++) row[i] = 5;
  return row;
}

const range = (a: number, b: number) => Array.from({ length: b - a }, (_, i) => a + i);

// ---------------------------------------------------------------------------------------------
// Primitives

Deno.test("avgPool1d divides by the kernel everywhere (count_include_pad)", () => {
  const out = avgPool1d(f32([1, 2, 3, 4, 5, 6]));
  const want = [6 / 5, 10 / 5, 15 / 5, 20 / 5, 18 / 5, 15 / 5];
  out.forEach((v, i) => assert.ok(Math.abs(v - want[i]) < 1e-6, `${i}: ${v} vs ${want[i]}`));
  assert.deepEqual(arr(avgPool1d(f32([3, 6]), 3)), [3, 3]);
  assert.equal(avgPool1d(new Float32Array(0)).length, 0);
  assert.ok(Math.abs(avgPool1d(f32([5]))[0] - 1) < 1e-7);
  rejects("E_BAD_REQUEST", () => avgPool1d(f32([1, 2]), 4));
});

Deno.test("topkSet: ascending indices, lower index wins ties, NaN ranks last", () => {
  assert.deepEqual(arr(topkSet(f32([0.1, 0.9, 0.5, 0.7, 0.2]), 3)), [1, 2, 3]);
  assert.deepEqual(arr(topkSet(f32([1, 1, 1, 1, 1]), 2)), [0, 1]);
  assert.deepEqual(arr(topkSet(f32([0, 2, 1, 2, 1, 2]), 4)), [1, 2, 3, 5]);
  assert.deepEqual(arr(topkSet(f32([NaN, 0, NaN, -1]), 3)), [0, 1, 3]);
  assert.deepEqual(arr(topkSet(f32([-0, 0, 0]), 2)), [0, 1]);
  assert.deepEqual(arr(topkSet(f32([3, 1]), 0)), []);
  assert.deepEqual(arr(topkSet(f32([3, 1]), 2)), [0, 1]);
  rejects("E_BAD_REQUEST", () => topkSet(f32([1, 2]), 3));
  rejects("E_BAD_REQUEST", () => topkSet(f32([1, 2]), -1));
  // Against a plain comparator sort on random data with many ties.
  let seed = 7;
  const rnd = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
  const s = Float32Array.from({ length: 5000 }, () => Math.floor(rnd() * 50) / 50);
  const k = 777;
  const ref = range(0, s.length).sort((a, b) => s[b] - s[a] || a - b).slice(0, k).sort((a, b) =>
    a - b
  );
  assert.deepEqual(arr(topkSet(s, k)), ref);
});

Deno.test("overlap, groupMean, groupMax, median", () => {
  assert.equal(overlap(i32([1, 3, 5, 7]), i32([3, 4, 5, 6])), 0.5);
  assert.equal(overlap(i32([1, 3]), i32([1, 2, 3, 4])), 1);
  assert.equal(overlap(i32([1, 2, 3, 4]), i32([1, 3])), 0.5);
  assert.equal(overlap(i32([]), i32([1])), 0);
  const rows = [f32([1, 4]), f32([3, 0]), f32([2, 2]), f32([6, 8])];
  assert.deepEqual(groupMean(rows, 2).map(arr), [[2, 2], [4, 5]]);
  assert.deepEqual(groupMax(rows, 2).map(arr), [[3, 4], [6, 8]]);
  assert.deepEqual(groupMean(rows, 4).map(arr), [[3, 3.5]]);
  rejects("E_BAD_REQUEST", () => groupMean(rows, 3));
  assert.equal(median([3, 1, 2]), 2);
  assert.equal(median([4, 1, 3, 2]), 2.5);
  assert.equal(stability(i32([1, 2]), [i32([1, 2]), i32([5, 6]), i32([1, 9])]), 0.5);
  rejects("E_BAD_REQUEST", () => stability(i32([1]), []));
});

Deno.test("greedy star clustering: most unassigned neighbours, ties to the lowest index", () => {
  const adj = (n: number, edges: [number, number][]) => {
    const m = Array.from({ length: n }, () => new Array<boolean>(n).fill(false));
    for (const [a, b] of edges) m[a][b] = m[b][a] = true;
    return m;
  };
  // 4 has degree 3 and goes first; then 0's neighbours are taken, so 0 and 5 stay unique.
  assert.deepEqual(greedyStarClusters(adj(6, [[4, 2], [4, 3], [4, 1], [0, 1], [0, 2]])), [
    { pivot: 4, satellites: [1, 2, 3] },
  ]);
  assert.deepEqual(greedyStarClusters(adj(4, [[2, 3], [0, 1]])), [
    { pivot: 0, satellites: [1] },
    { pivot: 2, satellites: [3] },
  ]);
  assert.deepEqual(greedyStarClusters(adj(3, [])), []);
  // Directed edges count from the candidate's side only.
  const directed = [[false, true, true], [false, false, false], [false, false, false]];
  assert.deepEqual(greedyStarClusters(directed), [{ pivot: 0, satellites: [1, 2] }]);
  const sets = [i32([0, 1, 2, 3]), i32([0, 1, 2, 9]), i32([7, 8, 9, 10]), i32([0, 1, 8, 9])];
  assert.deepEqual(similarityGraph(sets, 0.5), [
    [false, true, false, true],
    [true, false, false, true],
    [false, false, false, true],
    [true, true, true, false],
  ]);
});

Deno.test("multipliers: -1 for full heads, mean exactly 1 over model-wide targets, ∝ 1/m", () => {
  const roles = [
    ["anchor", "volatile", "pivot", "satellite"],
    ["satellite", "satellite", "anchor", "pivot"],
  ] as const;
  const stab = [[0.8, 0.1, 0.9, 0.5], [0.25, 1, 0.6, 0.3]];
  const m = multipliers(roles.map((r) => [...r]), stab);
  assert.equal(m[0][1], -1);
  assert.equal(m[0][2], -1);
  assert.equal(m[1][3], -1);
  const targets: [number, number][] = [[0, 0], [0, 3], [1, 0], [1, 1], [1, 2]];
  const mean = targets.reduce((a, [l, h]) => a + m[l][h], 0) / targets.length;
  assert.ok(Math.abs(mean - 1) < 1e-12, `mean ${mean}`);
  const c = m[0][0] * (0.8 + 1e-6);
  for (const [l, h] of targets) {
    assert.ok(Math.abs(m[l][h] * (stab[l][h] + 1e-6) - c) < 1e-12, `head ${l}.${h}`);
  }
  assert.ok(m[1][0] > m[0][0], "a less stable head gets a bigger budget");
});

// ---------------------------------------------------------------------------------------------
// Calibration recorder

const MODEL: ProfileModel = { arch: "llama", nLayers: 2, nKvHeads: 5, headDim: 64, attnHash: "h" };
const L = 64;

/**
 * Layer 0, heads (top-16 blocks, k = L/4 = 16):
 *  0 anchor: [0,16) then [4,20)         → S = 0.75
 *  1 volatile: [16,32) then [48,64)     → S = 0
 *  2,3,4 identical at prefill [32,48): one cluster, pivot 2; in decode 3 stays, 4 shifts by 8.
 * Layer 1 is layer 0 with heads reversed, so its pivot (lowest index of the tie) is 0, not 2.
 */
function layer0Rows(step: number, extra: number): Float32Array[] {
  if (step < 0) {
    return [
      block(L, 0, 16, extra),
      block(L, 16, 16, extra),
      ...[0, 1, 2].map(() => block(L, 32, 16, extra)),
    ];
  }
  return [
    block(L, 4, 16, extra),
    block(L, 48, 16, extra),
    block(L, 32, 16, extra),
    block(L, 32, 16, extra),
    block(L, 40, 16, extra),
  ];
}

function feed(rec: CalibrationRecorder, steps: number): void {
  for (let s = -1; s < steps; s++) {
    const rows0 = layer0Rows(s, s + 1);
    const rows = [rows0, [...rows0].reverse()];
    rows.forEach((layerRows, l) =>
      layerRows.forEach((row, h) =>
        s < 0 ? rec.recordPrefill(l, h, row) : rec.recordDecode(s, l, h, row)
      )
    );
  }
}

Deno.test("recorder: anchor, volatile and a three-head cluster from hand-made attention", () => {
  const rec = new CalibrationRecorder({ model: MODEL, promptTokens: L });
  assert.equal(rec.topk, 16);
  feed(rec, 3);
  assert.equal(rec.decodeSteps, 3);
  const p = rec.finish();
  assert.deepEqual(p.layers[0].roles, ["anchor", "volatile", "pivot", "satellite", "satellite"]);
  assert.deepEqual(p.layers[0].clusters, [{ pivot: 2, satellites: [3, 4] }]);
  assert.deepEqual(p.layers[0].stability, [0.75, 0, 1, 1, 0.5]);
  assert.deepEqual(p.layers[1].roles, ["pivot", "satellite", "satellite", "volatile", "anchor"]);
  assert.deepEqual(p.layers[1].clusters, [{ pivot: 0, satellites: [1, 2] }]);
  assert.deepEqual(p.layers[1].stability, [0.5, 1, 1, 0, 0.75]);
  // Targets model-wide, row-major: L0 h0 h3 h4, L1 h1 h2 h4.
  const targetM = [0.75, 1, 0.5, 1, 1, 0.75];
  let total = 0;
  for (const m of targetM) total += 1 / (m + 1e-6);
  const want = (m: number) => (1 / (m + 1e-6)) / total * 6;
  assert.deepEqual(p.layers[0].multipliers, [want(0.75), -1, -1, want(1), want(0.5)]);
  assert.deepEqual(p.layers[1].multipliers, [-1, want(1), want(1), -1, want(0.75)]);
  assert.deepEqual(p.params, {
    source: "calibrated",
    topk: 16,
    stableThreshold: 0.5,
    simThreshold: 0.5,
    calibrationTokens: L,
    decodeSteps: 3,
    similarityKeyTokens: L,
    groupReduce: "mean",
    poolKernel: 5,
  });
  assert.deepEqual(parseProfile(serializeProfile(p)), p);
});

Deno.test("recorder and buildProfile agree; stream order and completeness are enforced", () => {
  const rec = new CalibrationRecorder({ model: MODEL, promptTokens: L });
  feed(rec, 2);
  const sets = (step: number) =>
    [layer0Rows(step, 0), [...layer0Rows(step, 0)].reverse()].map((rows) =>
      rows.map((r) => calibrationSet(r, L, 16))
    );
  const prefillSets = sets(-1);
  const d0 = sets(0);
  const d1 = sets(1);
  const built = buildProfile({
    model: MODEL,
    params: {
      topk: 16,
      stableThreshold: 0.5,
      simThreshold: 0.5,
      calibrationTokens: L,
      similarityKeyTokens: L,
      poolKernel: 5,
    },
    prefillSets,
    decodeSets: prefillSets.map((row, l) => row.map((_, h) => [d0[l][h], d1[l][h]])),
    similaritySets: prefillSets,
  });
  assert.deepEqual(built, rec.finish());

  const r2 = new CalibrationRecorder({ model: MODEL, promptTokens: L });
  rejects("E_BAD_REQUEST", () => r2.recordDecode(0, 0, 0, block(L, 0, 16)));
  r2.recordPrefill(0, 0, block(L, 0, 16));
  rejects("E_BAD_REQUEST", () => r2.recordPrefill(0, 0, block(L, 0, 16)));
  rejects("E_BAD_REQUEST", () => r2.recordDecode(1, 0, 0, block(L, 0, 16)));
  rejects("E_BAD_REQUEST", () => r2.recordPrefill(2, 0, block(L, 0, 16)));
  rejects("E_BAD_REQUEST", () => r2.recordPrefill(0, 1, block(L - 1, 0, 16)));
  rejects("E_PROFILE", () => r2.finish());
  rejects("E_BAD_REQUEST", () => new CalibrationRecorder({ model: MODEL, promptTokens: 3 }));
  rejects(
    "E_BAD_REQUEST",
    () => new CalibrationRecorder({ model: MODEL, promptTokens: L, topk: L + 1 }),
  );
  assert.deepEqual(calibrationDefaults(10_000), {
    topk: 1024,
    stableThreshold: 0.5,
    simThreshold: 0.5,
  });
  assert.equal(calibrationDefaults(1000).topk, 250);
});

Deno.test("recorder: the similarity step is chosen by key length, else the last decode step", () => {
  const model: ProfileModel = { ...MODEL, nLayers: 1, nKvHeads: 2 };
  const run = (similarityKeyTokens?: number) => {
    const rec = new CalibrationRecorder({ model, promptTokens: L, similarityKeyTokens });
    rec.recordPrefill(0, 0, block(L, 0, 16));
    rec.recordPrefill(0, 1, block(L, 32, 16));
    // Step 0: still different; step 1: both heads look at the same block.
    rec.recordDecode(0, 0, 0, block(L, 0, 16, 1));
    rec.recordDecode(0, 0, 1, block(L, 32, 16, 1));
    rec.recordDecode(1, 0, 0, block(L, 0, 16, 2));
    rec.recordDecode(1, 0, 1, block(L, 0, 16, 2));
    return rec.finish().layers[0];
  };
  assert.deepEqual(run().clusters, []);
  assert.deepEqual(run().roles, ["anchor", "anchor"]);
  assert.deepEqual(run(L + 1).clusters, []);
  assert.deepEqual(run(L + 2).clusters, [{ pivot: 0, satellites: [1] }]);
  assert.deepEqual(run(L + 50).clusters, [{ pivot: 0, satellites: [1] }]);
  assert.deepEqual(run(L + 2).stability, [1, 0.5]);
});

// ---------------------------------------------------------------------------------------------
// Selection (select.ts)

Deno.test("prefillSelect and pooledGroupMax: pool each query head, then max", () => {
  const a = f32([0, 0, 0, 0, 10, 0, 0, 0, 0, 0]);
  const b = f32([0, 0, 0, 0, 0, 0, 0, 0, 0, 9]);
  const s = pooledGroupMax([a, b]);
  assert.deepEqual(arr(s).map((x) => Math.round(x * 10) / 10), [
    0,
    0,
    2,
    2,
    2,
    2,
    2,
    1.8,
    1.8,
    1.8,
  ]);
  assert.deepEqual(arr(prefillSelect(s, 3)), [2, 3, 4]);
  assert.deepEqual(arr(prefillSelect(s, 6)), [2, 3, 4, 5, 6, 7]);
  rejects("E_BAD_REQUEST", () => prefillSelect(s, 11));
});

Deno.test("driftStatistic is the median overlap with the reference; trigger below threshold", () => {
  const L2 = 40;
  const ref = i32(range(0, 8));
  const rows = [block(L2, 0, 8), block(L2, 4, 8), block(L2, 20, 8)]; // overlaps 1, 0.5, 0
  assert.equal(driftStatistic(rows, ref, 8), 0.5);
  assert.equal(driftStatistic([...rows, block(L2, 2, 8)], ref, 8), 0.625); // median of 0,0.5,0.75,1
  assert.equal(driftStatistic([rows[2]], ref, 8), 0);
  assert.equal(driftTriggered(0.5, 0.5), false);
  assert.equal(driftTriggered(0.49, 0.5), true);
  rejects("E_BAD_REQUEST", () => driftStatistic(rows, i32([3, 1]), 2));
  rejects("E_BAD_REQUEST", () => driftStatistic([], ref, 8));
});

Deno.test("satelliteRefresh: compat takes the first cap_s by position, default by score", () => {
  // Scores: best at 9, then 8, then 1; a pivot cluster with caps [3, 1, 2].
  const row = f32([0, 0.5, 0, 0.1, 0, 0, 0, 0.2, 0.8, 0.9]);
  const compat = satelliteRefresh(row, [3, 1, 2], "compat");
  assert.deepEqual(compat.map(arr), [[1, 8, 9], [1], [1, 8]]);
  const best = satelliteRefresh(row, [3, 1, 2], "default");
  assert.deepEqual(best.map(arr), [[1, 8, 9], [9], [8, 9]]);
  assert.deepEqual(satelliteRefresh(row, [], "compat"), []);
  rejects("E_BAD_REQUEST", () => satelliteRefresh(row, [11], "default"));
});

Deno.test("SnapKV: window sum over group and queries, avg-pool 5, window always kept", () => {
  const Lp = 20;
  const w = 4;
  // Two query heads × two window queries; prefix [0, 16) attention.
  const rows = [
    block(Lp, 2, 1),
    block(Lp, 2, 1),
    block(Lp, 12, 1),
    f32(range(0, Lp).map((i) => (i === 12 ? 3 : 0))),
  ];
  const scores = snapkvScores(rows, Lp, { window: w });
  assert.equal(scores.length, 16);
  assert.ok(Math.abs(scores[12] - 4 / 5) < 1e-6 && Math.abs(scores[2] - 2 / 5) < 1e-6);
  assert.deepEqual(arr(snapkvSelect(rows, Lp, 9, { window: w })), [
    10,
    11,
    12,
    13,
    14,
    16,
    17,
    18,
    19,
  ]);
  assert.deepEqual(arr(snapkvSelect(rows, Lp, 3, { window: w })), [17, 18, 19]);
  assert.deepEqual(arr(snapkvSelect(rows, Lp, 25, { window: w })), range(0, Lp));
  // Default window 32 on a longer prompt keeps the last 32 tokens.
  const long = [block(100, 10, 1)];
  const sel = snapkvSelect(long, 100, 40);
  assert.deepEqual(arr(sel.slice(8)), range(68, 100));
  assert.ok(arr(sel).includes(10));
});

Deno.test("StreamingLLM: sinks plus the most recent tokens", () => {
  assert.deepEqual(arr(streamingSelect(100, 10)), [0, 1, 2, 3, 94, 95, 96, 97, 98, 99]);
  assert.deepEqual(arr(streamingSelect(100, 2)), [0, 1]);
  assert.deepEqual(arr(streamingSelect(5, 10)), [0, 1, 2, 3, 4]);
  assert.deepEqual(arr(streamingSelect(100, 6, 0)), range(94, 100));
  rejects("E_BAD_REQUEST", () => streamingSelect(100, -1));
});
