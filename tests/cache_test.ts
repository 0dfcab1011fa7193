import assert from "node:assert/strict";
import { loadModel } from "../mod.ts";
import type { LoadedModel } from "../src/engine/model.ts";
import type { CacheOptions } from "../src/cache/mod.ts";
import {
  changedRows,
  coverageShare,
  type HeteroCache,
  takeByScore,
} from "../src/cache/heterocache/heterocache.ts";
import type { HeadRole } from "../src/cache/profile/profile.ts";
import { uniformProfile } from "../src/cache/profile/profile_io.ts";
import { satelliteRefresh } from "../testing/reference_cache.ts";
import { copyRuns } from "../src/cache/heterocache/retrieval.ts";
import { writeSyntheticModel } from "../testing/synthetic_model.ts";
import { rankRows } from "../src/vk/mod.ts";
import { relError, sharedPath } from "./helpers.ts";
import { SyntheticDecode } from "../bench/synthetic_prompt.ts";

const makeProfile = uniformProfile;

const SMALL_PROFILE = (nLayers: number) =>
  makeProfile(nLayers, ["satellite", "pivot", "satellite", "anchor"], [1.2, -1, 0.8, 1]);

const PROMPT =
  "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. " +
  "One day, she saw a big red ball. She wanted to play with it, but it was too high. Her mom said";

async function teacherForced(
  model: LoadedModel,
  opts: CacheOptions,
  prompt: number[],
  forced: number[],
): Promise<Float32Array[]> {
  using s = model.session({ ...opts, contextTokens: prompt.length + forced.length + 1 });
  const out: Float32Array[] = [];
  await s.teacherForce(prompt, forced, (_, logits) => out.push(logits.slice()));
  return out;
}

async function keepOneMatchesFull(model: LoadedModel): Promise<void> {
  const prompt = model.tokenizer.encode(PROMPT);
  using full = model.session({ contextTokens: 256 });
  const greedy = await full.complete(PROMPT, { temperature: 0, maxTokens: 24, ignoreEos: true });
  const forced = model.tokenizer.encode(greedy.text, { addSpecial: false }).slice(0, 20);
  const reference = await teacherForced(model, {}, prompt, forced);
  const profile = SMALL_PROFILE(model.config.nLayers);
  const variants: CacheOptions[] = [
    { cache: "snapkv", keep: 1 },
    { cache: "streaming", keep: 1 },
    { cache: "heterocache", keep: 1, profile },
    { cache: "heterocache", keep: 1, profile, compat: true },
    { cache: "per-step", keep: 1, profile },
    { cache: "fixed-interval", keep: 1, profile },
  ];
  for (const v of variants) {
    const got = await teacherForced(model, v, prompt, forced);
    assert.equal(got.length, reference.length);
    got.forEach((g, i) => {
      const e = relError(g, reference[i]);
      assert.ok(
        e < 1e-4,
        `${v.cache}${
          "compat" in v && v.compat ? " compat" : ""
        } step ${i}: logits differ from full by ${e}`,
      );
    });
  }
}

Deno.test("keep = 1: every policy's logits equal full's (stories260K)", async () => {
  await using model = await loadModel(sharedPath("models/stories260K.gguf"));
  await keepOneMatchesFull(model);
});

Deno.test("keep = 1: every policy's logits equal full's (babyllama tok105)", async () => {
  await using model = await loadModel(sharedPath("models/babyllama-tok105/model5000.bin"), {
    tokenizerPath: sharedPath("models/babyllama-tok105/tok105.bin"),
  });
  await keepOneMatchesFull(model);
});

Deno.test("a compressing session generates again and again (fresh caches every time, same greedy text)", async () => {
  await using model = await loadModel(sharedPath("models/stories260K.gguf"));
  const profile = SMALL_PROFILE(model.config.nLayers);
  for (
    const opts of [{ cache: "snapkv" as const, keep: 0.5 }, {
      cache: "heterocache" as const,
      keep: 0.5,
      profile,
    }]
  ) {
    using s = model.session({ ...opts, contextTokens: 200 });
    const a = await s.complete(PROMPT, { temperature: 0, maxTokens: 12 });
    const b = await s.complete(PROMPT, { temperature: 0, maxTokens: 12 });
    const c = await s.complete("Once", { temperature: 0, maxTokens: 5 });
    assert.equal(b.text, a.text, opts.cache);
    assert.equal(c.completionTokens, 5);
  }
});

for (const compat of [false, true]) {
  Deno.test(`refreshed satellites hold the host rows at the ${compat ? "compat (§4)" : "default (§10.1)"} positions`, async () => {
    await using model = await loadModel(sharedPath("models/stories260K.gguf"));
    const profile = SMALL_PROFILE(model.config.nLayers);
    using s = model.session({
      cache: "per-step",
      keep: 0.4,
      profile,
      compat,
      record: true,
      contextTokens: 200,
    });
    await s.complete(PROMPT, { temperature: 0, maxTokens: 6 });
    const policy = s.policy as HeteroCache;
    await policy.landRefreshes();
    // The last refresh of each satellite is what its device rows hold now.
    const latest = new Map<string, (typeof policy.refreshLog)[number]>();
    for (const r of policy.refreshLog) latest.set(`${r.layer}/${r.head}`, r);
    assert.ok(latest.size >= model.config.nLayers * 2, `refreshes seen: ${latest.size}`);
    // Reference rows: the same prompt through a full cache gives the same K/V rows.
    using full = model.session({ contextTokens: 200 });
    const prompt = model.tokenizer.encode(PROMPT);
    await full.teacherForce(prompt, [], () => {});
    const rowBytes = model.config.headDim * 2;
    for (const r of latest.values()) {
      const expected = satelliteRefresh(r.scores, r.caps, compat ? "compat" : "default")[r.index];
      assert.deepEqual(
        Array.from(r.positions),
        Array.from(expected),
        `layer ${r.layer} head ${r.head} positions`,
      );
      // A refresh moves only the rows that change: device row i holds position held[i].
      assert.deepEqual(
        Array.from(r.held).sort((a, b) => a - b),
        Array.from(r.positions),
        `layer ${r.layer} head ${r.head} held rows`,
      );
      const dev = policy.caches[r.layer].location(r.head, 0);
      const ref = full.policy.caches[r.layer].location(r.head, 0);
      for (const side of ["k", "v"] as const) {
        const got = model.device.download(dev[side], dev.byteOffset, r.positions.length * rowBytes);
        const all = model.device.download(ref[side], ref.byteOffset, prompt.length * rowBytes);
        r.held.forEach((p, i) => {
          assert.deepEqual(
            got.subarray(i * rowBytes, (i + 1) * rowBytes),
            all.subarray(p * rowBytes, (p + 1) * rowBytes),
            `layer ${r.layer} head ${r.head} ${side} row ${i}`,
          );
        });
      }
    }
  });
}

for (const trigger of ["drift", "coverage"] as const) {
  Deno.test(`${trigger}: a synthetic model whose attention moves triggers refreshes; a still one never does`, async () => {
    const dir = await Deno.makeTempDir();
    try {
      const spec = {
        dim: 64,
        nLayers: 2,
        nHeads: 4,
        nKvHeads: 4,
        ffnDim: 96,
        contextLength: 1024,
        seed: 5,
      };
      const moving = `${dir}/moving.gguf`;
      const still = `${dir}/still.gguf`;
      await writeSyntheticModel(moving, { ...spec, weightScale: 0.6 });
      await writeSyntheticModel(still, { ...spec, queryScale: 0 });
      const profile = makeProfile(2, ["pivot", "satellite", "satellite", "anchor"], [-1, 1, 1, 1]);
      const prompt = "the cat and the dog went to the park and played with a ball. ".repeat(8);
      const run = async (path: string) => {
        await using model = await loadModel(path);
        using s = model.session({
          cache: "heterocache",
          keep: 0.5,
          profile,
          contextTokens: 512,
          trigger,
        });
        // 41 tokens: the first comes from the prompt, then 40 decode steps.
        await s.complete(prompt, { temperature: 1, seed: 3, maxTokens: 41, ignoreEos: true });
        return s.cacheStats();
      };
      const m = await run(moving);
      const st = await run(still);
      if (trigger === "drift") {
        assert.equal(m.driftChecks, 2 * 8, "two pivots checked every 5 of 40 steps");
        assert.equal(st.driftChecks, 2 * 8);
        assert.equal(m.stepsWithCheck, 8);
      } else {
        // Every step is checked; the first sets each pivot's reference, and a refreshing
        // cluster is not tested until its rows land.
        assert.equal(st.stepsWithCheck, 40);
        assert.equal(st.driftChecks, 2 * 39, JSON.stringify(st));
        assert.ok(m.driftChecks > 0 && m.driftChecks <= 2 * 39, JSON.stringify(m));
      }
      assert.ok(
        m.triggers > 0 && m.refreshedHeads >= 2 * m.triggers && m.bytesMoved > 0,
        JSON.stringify(m),
      );
      assert.equal(st.triggers, 0, JSON.stringify(st));
      assert.equal(st.bytesMoved, 0);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
}

Deno.test("device memory at keep 0.25, 8 KV heads, 16K prompt: as budgeted, under 40% of full", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/m.gguf`;
    await writeSyntheticModel(path, {
      dim: 64,
      nLayers: 2,
      nHeads: 8,
      nKvHeads: 8,
      headDim: 8,
      ffnDim: 64,
      contextLength: 20000,
      seed: 2,
    });
    const roles: HeadRole[] = [
      "pivot",
      "satellite",
      "satellite",
      "satellite",
      "satellite",
      "satellite",
      "anchor",
      "anchor",
    ];
    const mult = [-1, 0.6, 0.8, 1.0, 1.2, 1.4, 0.9, 1.1];
    const profile = makeProfile(2, roles, mult);
    await using model = await loadModel(path);
    const L = 16384;
    const maxNew = 8;
    const prompt = Array.from({ length: L }, (_, i) => 3 + ((i * 7919) % 300));
    using s = model.session({
      cache: "heterocache",
      keep: 0.25,
      profile,
      contextTokens: L + maxNew + 1,
    });
    await s.teacherForce(prompt, Array(maxNew).fill(5), () => {});
    const st = s.cacheStats();
    // Prediction from the budgets: N = 16 heads, F = 2 full heads.
    const base = Math.trunc(((0.25 * 16 - 2) * L) / 14);
    const rowBytes = 8 * 2 * 2;
    let predicted = 0;
    for (let l = 0; l < 2; l++) {
      roles.forEach((
        r,
        h,
      ) => (predicted += ((r === "pivot" ? L : Math.min(Math.trunc(base * mult[h]), L)) + maxNew) *
        rowBytes)
      );
    }
    assert.ok(
      Math.abs(st.deviceKvBytes - predicted) / predicted < 0.05,
      `device ${st.deviceKvBytes} vs predicted ${predicted}`,
    );
    assert.ok(
      st.deviceKvBytes < 0.4 * st.fullKvBytes,
      `device ${st.deviceKvBytes} vs full ${st.fullKvBytes}`,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("synthetic prompt (prefillWritten + decodeStep): decode steps after a synthetic prompt, every policy at its budget; the session stays usable", async () => {
  await using model = await loadModel(sharedPath("models/stories260K.gguf"));
  const profile = SMALL_PROFILE(model.config.nLayers);
  const bytes: Record<string, number> = {};
  for (const cache of ["full", "snapkv", "heterocache"] as const) {
    using s = model.session({ cache, keep: 0.5, profile, contextTokens: 420 });
    const run = await SyntheticDecode.start(s, 400, 6);
    for (let i = 0; i < 6; i++) assert.ok((await run.step()) > 0);
    await assert.rejects(
      run.step(),
      (e: Error & { code?: string }) => e.code === "E_CONTEXT_FULL",
    );
    const st = s.cacheStats();
    assert.equal(st.promptTokens, 400);
    assert.equal(s.stats().positions, 406);
    bytes[cache] = st.deviceKvBytes;
    await assert.rejects(
      SyntheticDecode.start(s, 415, 6),
      (e: Error & { code?: string }) => e.code === "E_CONTEXT_FULL",
    );
    // A real generation afterwards starts from a clean cache: the same text as a fresh session.
    using fresh = model.session({ cache, keep: 0.5, profile, contextTokens: 420 });
    await assert.rejects(
      fresh.decodeStep(1),
      (e: Error & { code?: string }) => e.code === "E_BAD_REQUEST",
    );
    const want = await fresh.complete(PROMPT, { temperature: 0, maxTokens: 12 });
    const got = await s.complete(PROMPT, { temperature: 0, maxTokens: 12 });
    assert.equal(got.text, want.text);
  }
  assert.ok(bytes.snapkv < 0.6 * bytes.full, JSON.stringify(bytes));
  assert.ok(bytes.heterocache < 0.6 * bytes.full, JSON.stringify(bytes));
});

Deno.test("heterocache observation window: a wider window changes what compressed heads keep; bad windows are errors", async () => {
  await using model = await loadModel(sharedPath("models/stories260K.gguf"));
  const profile = SMALL_PROFILE(model.config.nLayers);
  const prompt = model.tokenizer.encode(PROMPT);
  const forced = model.tokenizer.encode(" the ball was red and big", { addSpecial: false });
  // The drift trigger checks every 5th step, so over these few steps no refresh lands at a
  // timing-dependent step and runs compare exactly (the coverage trigger may refresh sooner).
  const run = (window?: number) =>
    teacherForced(
      model,
      { cache: "heterocache", keep: 0.5, profile, window, trigger: "drift" },
      prompt,
      forced,
    );
  const one = await run(1);
  const eight = await run(8);
  assert.deepEqual(await run(), await run(16), "16 is the default");
  const compat = (window?: number) =>
    teacherForced(
      model,
      { cache: "heterocache", keep: 0.5, profile, compat: true, window },
      prompt,
      forced,
    );
  assert.deepEqual(await compat(), await compat(1), "compat keeps the official last token");
  assert.ok(
    eight.some((l, i) => relError(l, one[i]) > 1e-3),
    "summing 8 prompt queries must select other rows than the last token alone",
  );
  for (const bad of [0, 65, 1.5]) {
    assert.throws(
      () => model.session({ cache: "heterocache", keep: 0.5, profile, window: bad }),
      (e: Error & { code?: string }) => e.code === "E_BAD_REQUEST",
    );
  }
});

Deno.test("coverage: each pivot's share is read from its own layer and query heads", () => {
  const nLayers = 3, nKvHeads = 4, G = 2, nHeads = nKvHeads * G;
  const out = new Float32Array(nLayers * nHeads * 2);
  // Query head qh of layer l: held = (l * 10 + qh) / 100 of a prompt mass of 0.5.
  for (let l = 0; l < nLayers; l++) {
    for (let qh = 0; qh < nHeads; qh++) {
      out[(l * nHeads + qh) * 2] = (l * 10 + qh) / 100;
      out[(l * nHeads + qh) * 2 + 1] = 0.5;
    }
  }
  for (const [l, p] of [[0, 0], [1, 3], [2, 1]]) {
    const want = ((l * 10 + p * G) + (l * 10 + p * G + 1)) / 100 / (0.5 * G);
    assert.ok(
      Math.abs(coverageShare(out, nHeads, G, l, p)! - want) < 1e-6,
      `layer ${l} pivot ${p}`,
    );
  }
  // A pivot whose prompt mass is negligible gives no share.
  out.fill(0, (2 * nHeads) * 2);
  assert.equal(coverageShare(out, nHeads, G, 2, 1), null);
});

Deno.test("a refresh is read by the next step in compat, one step later by default, whatever the gather's speed", async () => {
  await using model = await loadModel(sharedPath("models/stories260K.gguf"));
  const profile = SMALL_PROFILE(model.config.nLayers);
  let slowGathers = 0;
  const run = async (compat: boolean, slowGather: boolean) => {
    using s = model.session({
      cache: "fixed-interval",
      interval: 3,
      keep: 0.4,
      profile,
      compat,
      record: true,
      contextTokens: 200,
    });
    if (slowGather) {
      // A host that gathers slowly: each gather resolves only after ~two steps' time.
      const gather = model.device.gatherRows.bind(model.device);
      model.device.gatherRows = (jobs) => {
        slowGathers++;
        return gather(jobs).then(() => new Promise((r) => setTimeout(r, 60)));
      };
    }
    try {
      const r = await s.complete(PROMPT, { temperature: 0, maxTokens: 14, ignoreEos: true });
      const log = (s.policy as HeteroCache).landingLog.filter((x) => x.firstRead !== null);
      return { text: r.text, log };
    } finally {
      delete (model.device as { gatherRows?: unknown }).gatherRows;
    }
  };
  const compat = await run(true, false);
  const late = await run(false, false);
  assert.ok(
    compat.log.length >= 3 && late.log.length >= 3,
    `${compat.log.length} / ${late.log.length}`,
  );
  for (const x of compat.log) assert.equal(x.firstRead, x.decidedAfter + 1, JSON.stringify(x));
  for (const x of late.log) assert.equal(x.firstRead, x.decidedAfter + 2, JSON.stringify(x));
  // The landing step, and so the tokens, do not depend on how long the host took to gather.
  const slow = await run(false, true);
  assert.ok(slowGathers >= slow.log.length, `${slowGathers} slow gathers`); // the last may land after the end
  assert.deepEqual(slow.log, late.log);
  assert.equal(slow.text, late.text);
});

Deno.test("a refresh moves only the rows that change; copies go by runs of rows", () => {
  const held = new Uint32Array([10, 3, 7, 20, 5]);
  const next = new Uint32Array([3, 5, 8, 9, 20]);
  const m = changedRows(held, next);
  // 10 (row 0) and 7 (row 2) leave; 8 and 9 take rows 0 and 2; the rest stay.
  assert.deepEqual(Array.from(m.positions), [8, 9]);
  assert.deepEqual(Array.from(m.rows!), [0, 2]);
  assert.deepEqual(Array.from(m.held), [8, 3, 9, 20, 5]);
  assert.deepEqual(Array.from(changedRows(m.held, next).positions), []);
  // Unknown rows (or another count): every row, ascending.
  for (const h of [null, new Uint32Array([1, 2])]) {
    const all = changedRows(h, next);
    assert.deepEqual([Array.from(all.positions), all.rows, Array.from(all.held)], [
      [3, 5, 8, 9, 20],
      null,
      [3, 5, 8, 9, 20],
    ]);
  }
  assert.deepEqual(copyRuns(new Uint32Array([0, 1, 2, 7, 9, 10]), 6, 4, 100, 1000), [
    [100, 1000, 12],
    [112, 1028, 4],
    [116, 1036, 8],
  ]);
  assert.deepEqual(copyRuns(null, 3, 4, 0, 8), [[0, 8, 12]]);
  assert.deepEqual(copyRuns(new Uint32Array(0), 0, 4, 0, 8), []);
});

Deno.test("takeByScore takes as the kernel ranks: score descending, NaN lowest, ties by position", () => {
  const row = new Float32Array([0.5, NaN, 0.5, -1, 0, -0, 3e-39, Infinity, -Infinity, 0.25]);
  const all10 = new Uint32Array(10).map((_, i) => i);
  // Ranked: 7, 0, 2, 9, 6, 4, 5, 3, 8, 1.
  assert.deepEqual(
    takeByScore(all10, row, [0, 1, 3, 6, 7, 9, 10, 12]).map((t) => Array.from(t)),
    [[], [7], [0, 2, 7], [0, 2, 4, 6, 7, 9], [0, 2, 4, 5, 6, 7, 9], [0, 2, 3, 4, 5, 6, 7, 8, 9], [
      0,
      1,
      2,
      3,
      4,
      5,
      6,
      7,
      8,
      9,
    ], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]],
  );
  // Against a comparator sort on random rows with many ties (and negative scores), on a subset
  // of the positions as the top-k kernel hands them over.
  let seed = 7;
  const rnd = () => (seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0) / 2 ** 32;
  const big = new Float32Array(5000).map(() => Math.round(rnd() * 50) / 50 - 0.2);
  const top = new Uint32Array(5000).map((_, i) => i).filter(() => rnd() < 0.7);
  const ranked = Array.from(top).sort((x, y) => big[y] - big[x] || x - y);
  const caps = [1, 17, 500, 1234, 2000, top.length - 1];
  const got = takeByScore(top, big, caps);
  caps.forEach((cap, i) => {
    const want = ranked.slice(0, cap).sort((x, y) => x - y);
    assert.deepEqual(Array.from(got[i]), want, `cap ${cap}`);
  });
});

Deno.test("rankRows (native) over a whole row takes what takeByScore takes from the kernel's top-k", async () => {
  let seed = 11;
  const rnd = () => (seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0) / 2 ** 32;
  const rows = {
    // The ranking example above.
    small: new Float32Array([0.5, NaN, 0.5, -1, 0, -0, 3e-39, Infinity, -Infinity, 0.25]),
    // Many ties, negatives: thresholds inside crowded buckets.
    ties: new Float32Array(5000).map(() => Math.round(rnd() * 50) / 50 - 0.2),
    // Pooled probabilities: tiny, spread over exponents, a few large.
    pooled: new Float32Array(20000).map(() => rnd() ** 12 * (rnd() < 0.01 ? 1 : 1e-3)),
    // All equal: every take is by position.
    flat: new Float32Array(3000).fill(0.125),
    // Signed zeros, NaNs and infinities among small values.
    odd: new Float32Array(4000).map(() =>
      [0, -0, NaN, Infinity, -Infinity, rnd() - 0.5][
        Math.floor(rnd() * 6)
      ]
    ),
  };
  for (const [name, row] of Object.entries(rows)) {
    const n = row.length;
    const all = new Uint32Array(n).map((_, i) => i);
    const caps = [0, 1, 3, Math.floor(n / 7), Math.floor(n / 3), n - 1, n, n + 5];
    const want = takeByScore(all, row, caps);
    const got = await rankRows(row, caps);
    caps.forEach((cap, i) => {
      assert.deepEqual(Array.from(got[i]), Array.from(want[i]), `${name}, cap ${cap}`);
    });
  }
});
