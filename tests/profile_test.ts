// deno-lint-ignore-file no-explicit-any
import assert from "node:assert/strict";
import { isHcError } from "../src/errors.ts";
import {
  checkProfileMatches,
  fullHeadCount,
  type HeadProfile,
  importOfficialProfile,
  type ModelIdentity,
  parseProfile,
  roleCounts,
  serializeProfile,
} from "../src/cache/profile/profile.ts";
import {
  baseLength,
  capsFromBase,
  headCaps,
  headCapsFromTokens,
  keptSummary,
  minimumKeep,
  uniformCap,
} from "../src/cache/budget.ts";

const LLAMA = "Head_Analysis_llama-3.1-8b-instruct_topk1024_th0.5_sim0.5_step5000.json";
const DEEPSEEK = "Head_Analysis_deepseek-r1-distill-llama-8b_topk1024_th0.5_sim0.4_step5000.json";
const QWEN = "Head_Analysis_qwen2.5-14b-instruct_topk1024_th0.4_sim0.5_step5000.json";

function readShared(name: string): string {
  const url = new URL(`../../shared/profiles/${name}`, import.meta.url);
  try {
    return Deno.readTextFileSync(url);
  } catch (e) {
    throw new Error(`missing test file ${url.pathname}: ${(e as Error).message}`);
  }
}

function importShared(name: string): HeadProfile {
  return importOfficialProfile(readShared(name), undefined, { fileName: name });
}

function rejects(code: string, fn: () => unknown, message?: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(isHcError(e), `expected HcError, got ${e}`);
    assert.equal(e.code, code, e.message);
    if (message) assert.match(e.message, message);
    return true;
  });
}

const LLAMA_ID: ModelIdentity = {
  arch: "llama",
  nLayers: 32,
  nKvHeads: 8,
  headDim: 128,
  attnHash: "abc123",
};

Deno.test("official profiles import with the counts of docs/algorithm.md §1g", () => {
  const cases: [string, number, [number, number, number, number], [number, number]][] = [
    [LLAMA, 32, [10, 17, 33, 196], [0.567, 1.997]],
    [DEEPSEEK, 32, [0, 5, 32, 219], [0.511, 2.055]],
    [QWEN, 48, [37, 25, 55, 267], [0.698, 2.172]],
  ];
  for (const [name, nLayers, [anchor, volatile, pivot, satellite], [lo, hi]] of cases) {
    const p = importShared(name);
    assert.equal(p.model.nLayers, nLayers, name);
    assert.equal(p.model.nKvHeads, 8, name);
    assert.deepEqual(roleCounts(p), { anchor, volatile, pivot, satellite }, name);
    const ratios = p.layers.flatMap((l) => l.multipliers.filter((m) => m > 0));
    assert.equal(ratios.length, anchor + satellite);
    assert.equal(Math.min(...ratios).toFixed(3), lo.toFixed(3), name);
    assert.equal(Math.max(...ratios).toFixed(3), hi.toFixed(3), name);
    const mean = ratios.reduce((a, b) => a + b, 0) / ratios.length;
    assert.ok(Math.abs(mean - 1) < 1e-9, `${name}: multipliers average ${mean}`);
    assert.equal(p.params.source, "official");
    assert.ok(p.layers.every((l) => l.stability.every((s) => s === null)));
  }
  const qwen = importShared(QWEN);
  assert.equal(qwen.params.stableThreshold, 0.4);
  assert.equal(qwen.params.simThreshold, 0.5);
  assert.equal(qwen.params.topk, 1024);
  assert.equal(qwen.params.similarityKeyTokens, 5000);
});

Deno.test("Llama layer 23 keeps two clusters in dict order, original head indices", () => {
  const p = importShared(LLAMA);
  assert.deepEqual(p.layers[23].clusters, [
    { pivot: 6, satellites: [0, 1, 2, 3, 5] },
    { pivot: 4, satellites: [7] },
  ]);
  // §8 row 23: SSSSPSPS
  assert.deepEqual(p.layers[23].roles, [
    "satellite",
    "satellite",
    "satellite",
    "satellite",
    "pivot",
    "satellite",
    "pivot",
    "satellite",
  ]);
  assert.equal(p.layers[23].multipliers[4], -1);
  assert.equal(p.layers[23].multipliers[7].toFixed(2), "1.56");
  // §8: every other layer has exactly one pivot.
  p.layers.forEach((l, i) => assert.equal(l.clusters.length, i === 23 ? 2 : 1, `layer ${i}`));
  // §8 row 7: SSAPSSSS, pivot 3 → 0,1,4,5,6,7
  assert.deepEqual(p.layers[7].clusters, [{ pivot: 3, satellites: [0, 1, 4, 5, 6, 7] }]);
  assert.equal(p.layers[7].roles[2], "anchor");
});

Deno.test("pre-parsed official JSON recovers the same (greedy) cluster order as the text", () => {
  for (const name of [LLAMA, DEEPSEEK, QWEN]) {
    const text = readShared(name);
    const fromText = importOfficialProfile(text);
    const fromObject = importOfficialProfile(JSON.parse(text));
    assert.deepEqual(fromObject, fromText, name);
  }
  // Qwen layer 14 is one where numeric key order (0, 7) differs from dict order (7, 0).
  const q = importShared(QWEN);
  assert.deepEqual(q.layers[14].clusters.map((c) => c.pivot), [7, 0]);
  assert.deepEqual(q.layers[39].clusters.map((c) => c.pivot), [4, 3]);
});

Deno.test("importing against the wrong shape is E_PROFILE_MISMATCH", () => {
  const text = readShared(QWEN);
  rejects(
    "E_PROFILE_MISMATCH",
    () => importOfficialProfile(text, { nLayers: 32, nKvHeads: 8 }),
    /48 layers × 8 KV heads.*32 × 8/,
  );
  rejects(
    "E_PROFILE_MISMATCH",
    () => importOfficialProfile(readShared(LLAMA), { nLayers: 32, nKvHeads: 4 }),
  );
  const ok = importOfficialProfile(readShared(LLAMA), {
    nLayers: 32,
    nKvHeads: 8,
    arch: "llama",
    attnHash: "abc123",
  });
  assert.equal(ok.model.arch, "llama");
  assert.equal(ok.model.attnHash, "abc123");
  assert.equal(ok.model.headDim, null);
});

Deno.test("checkProfileMatches names what differs", () => {
  const p = importOfficialProfile(readShared(LLAMA), LLAMA_ID);
  checkProfileMatches(p, LLAMA_ID);
  rejects(
    "E_PROFILE_MISMATCH",
    () => checkProfileMatches(p, { ...LLAMA_ID, nLayers: 48 }),
    /layers: profile 32, model 48/,
  );
  rejects(
    "E_PROFILE_MISMATCH",
    () => checkProfileMatches(p, { ...LLAMA_ID, nKvHeads: 4 }),
    /KV heads per layer/,
  );
  rejects(
    "E_PROFILE_MISMATCH",
    () => checkProfileMatches(p, { ...LLAMA_ID, arch: "qwen2" }),
    /arch: profile llama, model qwen2/,
  );
  rejects(
    "E_PROFILE_MISMATCH",
    () => checkProfileMatches(p, { ...LLAMA_ID, attnHash: "ffff" }),
    /attention weight hash: profile abc123, model ffff/,
  );
  // An import with no recorded hash or arch is checked on shape only.
  const bare = importShared(LLAMA);
  checkProfileMatches(bare, { ...LLAMA_ID, arch: "anything", attnHash: "x" });
});

Deno.test("parse(serialize(p)) round-trips", () => {
  for (const name of [LLAMA, QWEN]) {
    const p = importOfficialProfile(readShared(name), undefined, { fileName: name });
    const text = serializeProfile(p);
    assert.deepEqual(parseProfile(text), p);
    assert.deepEqual(parseProfile(JSON.parse(text)), p);
    assert.equal(serializeProfile(parseProfile(text)), text);
  }
  // A calibrated-style profile with stability numbers survives as well.
  const p = importShared(LLAMA);
  const withStab: HeadProfile = {
    ...p,
    params: { ...p.params, source: "calibrated", calibrationTokens: 5000, decodeSteps: 99 },
    layers: p.layers.map((l) => ({ ...l, stability: l.roles.map((_, h) => (h + 1) / 9) })),
  };
  assert.deepEqual(parseProfile(serializeProfile(withStab)), withStab);
});

Deno.test("malformed profiles are rejected with E_PROFILE and a precise message", () => {
  const good = JSON.parse(serializeProfile(importShared(LLAMA)));
  const variants: [string, (j: any) => unknown, RegExp][] = [
    ["not JSON", () => "{not json", /not valid JSON/],
    ["null", () => null, /root: expected an object/],
    ["schema", (j) => ({ ...j, schema: "other" }), /schema: expected "heterocache-profile"/],
    ["version", (j) => ({ ...j, version: 2 }), /version: this build reads version 1, got 2/],
    [
      "layer count",
      (j) => ({ ...j, layers: j.layers.slice(1) }),
      /layers: expected 32 entries, got 31/,
    ],
    ["nKvHeads", (j) => ({ ...j, model: { ...j.model, nKvHeads: 0 } }), /model.nKvHeads/],
    ["huge nLayers", (j) => ({ ...j, model: { ...j.model, nLayers: 1e9 } }), /model.nLayers/],
    ["role", (j) => set(j, 3, "roles", 0, "leader"), /layers\[3\]\.roles\[0\]: expected one of/],
    [
      "pivot multiplier",
      (j) => set(j, 0, "multipliers", 5, 0.8),
      /layers\[0\]\.multipliers\[5\]: pivot head must have -1/,
    ],
    [
      "satellite multiplier",
      (j) => set(j, 0, "multipliers", 0, -1),
      /satellite head needs a finite multiplier/,
    ],
    ["multiplier type", (j) => set(j, 0, "multipliers", 0, "1"), /expected a number/],
    [
      "stability range",
      (j) => set(j, 0, "stability", 0, 1.5),
      /stability\[0\]: expected a number in \[0, 1\]/,
    ],
    [
      "short roles",
      (j) => ({ ...j, layers: j.layers.map((l: any) => ({ ...l, roles: l.roles.slice(1) })) }),
      /roles: expected 8 entries/,
    ],
    [
      "cluster pivot role",
      (j) => setCluster(j, 0, { pivot: 0, satellites: [1] }),
      /head 0 is satellite, not a pivot/,
    ],
    [
      "satellite order",
      (j) => setCluster(j, 0, { pivot: 5, satellites: [1, 0, 2, 3, 4, 6, 7] }),
      /strictly ascending/,
    ],
    [
      "orphan satellite",
      (j) => setCluster(j, 0, { pivot: 5, satellites: [0, 1, 2, 3, 4, 6] }),
      /satellite 7 belongs to no cluster/,
    ],
    [
      "empty cluster",
      (j) => setCluster(j, 0, { pivot: 5, satellites: [] }),
      /at least one satellite/,
    ],
    [
      "out of range",
      (j) => setCluster(j, 0, { pivot: 9, satellites: [0] }),
      /clusters\[0\]\.pivot: expected an integer in \[0, 7\]/,
    ],
    [
      "twice",
      (j) => ({
        ...j,
        layers: j.layers.map((l: any, i: number) =>
          i === 23 ? { ...l, clusters: [l.clusters[0], { pivot: 4, satellites: [0, 7] }] } : l
        ),
      }),
      /satellite 0 already belongs to pivot 6/,
    ],
    [
      "params",
      (j) => ({ ...j, params: { ...j.params, stableThreshold: 0 } }),
      /params.stableThreshold/,
    ],
    [
      "kernel",
      (j) => ({ ...j, params: { ...j.params, poolKernel: 4 } }),
      /poolKernel: must be odd/,
    ],
  ];
  for (const [what, mutate, message] of variants) {
    const input = mutate(structuredClone(good));
    rejects("E_PROFILE", () => parseProfile(input), message);
    void what;
  }
  rejects(
    "E_PROFILE",
    () => parseProfile(JSON.parse(readShared(LLAMA))),
    /use importOfficialProfile/,
  );
});

Deno.test("malformed official JSON is rejected with E_PROFILE", () => {
  const good = JSON.parse(readShared(LLAMA));
  const variants: [(j: any) => unknown, RegExp][] = [
    [() => "[", /not valid JSON/],
    [(j) => ({ ...j, meta: {} }), /meta.type_map/],
    [(j) => ({ ...j, meta: { ...j.meta, type_map: { a: 1, b: 2, c: 3, d: 4 } } }), /neither/],
    [
      (j) => ({
        ...j,
        meta: { ...j.meta, type_map: { anchor: 1, volatile: 1, pivot: 3, satellite: 4 } },
      }),
      /used twice/,
    ],
    [(j) => {
      j.classification_matrix[2][1] = 7;
      return j;
    }, /classification_matrix\[2\]\[1\]: unknown type code 7/],
    [(j) => {
      j.classification_matrix[2].pop();
      return j;
    }, /classification_matrix\[2\]: expected 8 entries/],
    [(j) => {
      j.allocation_matrix[0][0] = -1;
      return j;
    }, /satellite head needs a finite multiplier/],
    [(j) => {
      j.allocation_matrix[0][5] = 0.5;
      return j;
    }, /pivot head must have -1/],
    [(j) => {
      j.allocation_matrix.pop();
      return j;
    }, /allocation_matrix: expected 32 entries/],
    [(j) => {
      j.leader_member_relations[0] = { x: [1] };
      return j;
    }, /key "x" is not a KV head index/],
    [(j) => {
      j.leader_member_relations[0] = { "5": [0, 1, 2, 3, 4, 6] };
      return j;
    }, /satellite 7 belongs to no cluster/],
    [(j) => {
      j.leader_member_relations[0] = { "5": [0, 1, 2, 3, 4, 6, "7"] };
      return j;
    }, /expected an integer/],
    [(j) => {
      j.meta.counts.pivot = 34;
      return j;
    }, /meta.counts.pivot: says 34, the matrix has 33/],
    [(j) => ({ ...j, classification_matrix: [] }), /classification_matrix/],
  ];
  for (const [mutate, message] of variants) {
    const input = mutate(structuredClone(good));
    rejects("E_PROFILE", () => importOfficialProfile(input), message);
    if (typeof input !== "string") {
      rejects("E_PROFILE", () => importOfficialProfile(JSON.stringify(input)), message);
    }
  }
});

function set(j: any, layer: number, field: string, head: number, value: unknown): any {
  j.layers[layer][field][head] = value;
  return j;
}
function setCluster(j: any, layer: number, cluster: unknown): any {
  j.layers[layer].clusters = [cluster];
  return j;
}

// ---------------------------------------------------------------------------------------------
// Budgets (docs/algorithm.md §3, §8)

Deno.test("baseLength matches §3's worked values and enforces the minimum keep", () => {
  const p = importShared(LLAMA);
  assert.equal(fullHeadCount(p), 50);
  assert.equal(baseLength(0.5, 256, 50, 32768), 12407);
  assert.equal(baseLength(0.5, 256, 50, 131072), 49629);
  assert.equal(baseLength(0.5, 256, 50, 229376), 86851);
  assert.equal(minimumKeep(256, 50), 51 / 256);
  assert.ok(baseLength(0.2, 256, 50, 1000) >= 0); // int(51.2) = 51 > 50
  rejects("E_PROFILE", () => baseLength(0.19, 256, 50, 1000), /keep ≥ 0\.1992 \(51\/256\)/);
  rejects("E_PROFILE", () => headCaps(p, 0.15, 4096), /50 heads in full/);
  rejects("E_BAD_REQUEST", () => baseLength(0, 256, 50, 1000));
  rejects("E_BAD_REQUEST", () => baseLength(1.5, 256, 50, 1000));
  rejects("E_BAD_REQUEST", () => baseLength(0.5, 256, 50, 0));
  rejects("E_BAD_REQUEST", () => baseLength(0.5, 256, 300, 1000));
});

Deno.test("Llama profile at keep 0.5 keeps 0.500 of prompt KV; per-layer kept matches §8", () => {
  const p = importShared(LLAMA);
  const L = 131072;
  const caps = headCaps(p, 0.5, L);
  const base = baseLength(0.5, 256, 50, L);
  p.layers.forEach((layer, l) =>
    layer.roles.forEach((role, h) => {
      const cap = caps[l][h];
      if (role === "volatile" || role === "pivot") assert.equal(cap, L);
      else {
        assert.equal(cap, Math.min(Math.trunc(base * layer.multipliers[h]), L));
        // §8: a compressed head keeps between 0.215·L and 0.756·L
        assert.ok(cap > 0.21 * L && cap < 0.76 * L, `layer ${l} head ${h}: ${cap}`);
      }
    })
  );
  const s = keptSummary(caps, L);
  assert.ok(Math.abs(s.keptFraction - 0.5) < 5e-4, `model-wide kept ${s.keptFraction}`);
  assert.ok(s.keptFraction <= 0.5);
  const table: [number, number][] = [
    [0, 0.381],
    [5, 0.623],
    [10, 0.635],
    [19, 0.499],
    [23, 0.543],
    [
      31,
      0.453,
    ],
  ];
  for (const [layer, kept] of table) {
    assert.ok(
      Math.abs(s.layerKeptFraction[layer] - kept) <= 0.0005,
      `layer ${layer}: ${s.layerKeptFraction[layer]} vs ${kept}`,
    );
  }
});

Deno.test("token-budget form scales by multipliers and keeps the same total", () => {
  const p = importShared(LLAMA);
  const L = 100_000;
  const tokens = 2000;
  const caps = headCapsFromTokens(p, tokens, L);
  let compressedSum = 0;
  let nCompressed = 0;
  p.layers.forEach((layer, l) =>
    layer.roles.forEach((role, h) => {
      if (role === "volatile" || role === "pivot") return assert.equal(caps[l][h], L);
      assert.equal(caps[l][h], Math.trunc(tokens * layer.multipliers[h]));
      compressedSum += caps[l][h];
      nCompressed++;
    })
  );
  assert.equal(nCompressed, 206);
  // Truncation loses < 1 token per head.
  assert.ok(
    compressedSum <= tokens * 206 && compressedSum > tokens * 206 - 206,
    `${compressedSum}`,
  );
  // A budget above L clips at L.
  assert.ok(capsFromBase(p, 10 * L, L).every((row) => row.every((c) => c === L)));
  assert.equal(uniformCap(0.5, 1001), 500);
  rejects("E_BAD_REQUEST", () => headCapsFromTokens(p, -1, L));
  rejects("E_BAD_REQUEST", () => headCapsFromTokens(p, 1.5, L));
});
