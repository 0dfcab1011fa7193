/**
 * Selection scores (softmax, group reduce, window sum, average pool) and the device top-k
 * against testing/reference_attention.ts on fresh random data, through both reduction paths.
 */
import assert from "node:assert/strict";
import { Device } from "../src/vk/mod.ts";
import { KvLayerCache } from "../src/cache/kv_layer.ts";
import { AttentionScores, TopK } from "../src/kernels/scores.ts";
import { refScores, refTopK, roundToF16 } from "../testing/reference_attention.ts";
import { f32ToF16Array } from "../src/model/quant/mod.ts";
import { topkSet } from "../src/cache/profile/analysis.ts";
import { randomF32, relError, rng } from "./helpers.ts";

const SEED = Date.now() >>> 0;
let seedCounter = SEED;
const nextSeed = () => (seedCounter = (seedCounter + 0x9e3779b9) >>> 0);

function expectClose(got: Float32Array, want: Float32Array, what: string, tol = 1e-4): void {
  const err = relError(got, want);
  assert.ok(err <= tol, `${what}: relative error ${err.toExponential(3)} > ${tol} (seed ${SEED})`);
}

interface ScoreCase {
  D: number;
  G: number;
  nKv: number;
  caps: number[];
  n: number;
  headStart: number;
  headCount: number;
  window: number;
  groupReduce: "max" | "mean";
  windowMode: "sum" | "separate";
  poolFirst: boolean;
  poolKernel?: number;
  maxChunkBytes?: number;
  /** Deliberately wrong n given to the device (the comparison must then fail). */
  deviceN?: number;
  variant?: "lanes" | "simd";
  /** "simd": false makes the pool pass recompute the logits instead of reading stored ones. */
  storeLogits?: boolean;
  /** "simd": false makes the stats pass read K as a storage buffer even where texels exist. */
  texel?: boolean;
  /** Output row stride (default n) and float offset of the first row (default 0). */
  outStride?: number;
  outOffset?: number;
}

function runScores(dev: Device, c: ScoreCase): { got: Float32Array[]; want: Float32Array[] } {
  using cache = KvLayerCache.create(dev, {
    headDim: c.D,
    capRows: c.caps,
    maxChunkBytes: c.maxChunkBytes,
  });
  const kRows: Float32Array[] = c.caps.map((cap, h) => {
    const k = roundToF16(randomF32(cap * c.D, nextSeed()));
    const loc = cache.location(h, 0);
    dev.upload(loc.k, f32ToF16Array(k), loc.byteOffset);
    return k;
  });
  const nHeads = c.nKv * c.G;
  const q = randomF32(c.window * nHeads * c.D, nextSeed(), 4);
  using scores = new AttentionScores(dev, {
    headDim: c.D,
    groupSize: c.G,
    variant: c.variant,
    storeLogits: c.storeLogits,
    texel: c.texel,
  });
  const n = c.deviceN ?? c.n;
  const rowsPerHead = c.windowMode === "separate" ? c.window : 1;
  const outStride = c.outStride ?? n;
  const outOffset = c.outOffset ?? 0;
  const outFloats = outOffset + c.headCount * rowsPerHead * outStride;
  using qBuf = dev.buffer(q.byteLength);
  using out = dev.buffer(outFloats * 4);
  // A sentinel fill shows writes outside the rows (padding of a wider stride, the offset).
  dev.upload(out, new Float32Array(outFloats).fill(-7));
  using scratch = dev.buffer(scores.scratchBytes({ headCount: c.headCount, n, window: c.window }));
  dev.upload(qBuf, q);
  using cmd = dev.commands();
  cmd.begin();
  scores.record(cmd, {
    cache,
    headStart: c.headStart,
    headCount: c.headCount,
    n,
    q: qBuf,
    window: c.window,
    groupReduce: c.groupReduce,
    windowMode: c.windowMode,
    poolFirst: c.poolFirst,
    poolKernel: c.poolKernel,
    out,
    outStride: c.outStride,
    outOffset: c.outOffset,
    scratch,
  });
  cmd.end();
  if (scores.variant === "simd") {
    // The path asked for is the path taken: texels wherever the device has them, unless off.
    const texel = (c.texel ?? true) && dev.info.texelBuffer;
    const { texel: t, storage } = scores.lastStatsBindings;
    assert.ok(
      texel ? t > 0 && storage === 0 : t === 0 && storage > 0,
      `stats pass ${t}/${storage}`,
    );
  }
  dev.waitSync("compute", cmd.submit());
  const bytes = dev.download(out);
  const all = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
  const untouched = all.filter((_, i) => {
    const r = i - outOffset;
    return r < 0 || r % outStride >= n;
  });
  assert.ok(untouched.every((v) => v === -7), `scores wrote outside their rows (seed ${SEED})`);
  const got: Float32Array[] = [];
  const want: Float32Array[] = [];
  for (let i = 0; i < c.headCount; i++) {
    const h = c.headStart + i;
    const rows = refScores({
      q,
      nHeads,
      window: c.window,
      head: h,
      k: kRows[h],
      n: c.n,
      headDim: c.D,
      groupSize: c.G,
      groupReduce: c.groupReduce,
      windowMode: c.windowMode,
      poolFirst: c.poolFirst,
      poolKernel: c.poolKernel,
    });
    rows.forEach((r, w) => {
      want.push(r);
      const off = outOffset + (i * rowsPerHead + w) * outStride;
      got.push(all.slice(off, off + c.n));
    });
  }
  return { got, want };
}

function checkScores(dev: Device, c: ScoreCase, what: string): void {
  const { got, want } = runScores(dev, c);
  got.forEach((g, i) => expectClose(g, want[i], `${what} row ${i}`));
}

// The "simd" variant (CPU drivers) has no reductions, so one path; the "lanes" variant (GPUs)
// runs through both reduction paths.
for (
  const [variant, subgroup, storeLogits, texel] of [
    ["simd", true, true, true],
    ["simd", true, true, false],
    ["simd", true, false, true],
    ["lanes", true, false, false],
    ["lanes", false, false, false],
  ] as const
) {
  const path = `${variant}${
    variant === "simd"
      ? `${storeLogits ? ", stored logits" : ", recomputed"}, K ${texel ? "texels" : "storage"}`
      : ""
  }, ${subgroup ? "subgroup" : "shared-memory"}`;
  const withPath = (fn: (dev: Device) => void) => () => {
    using dev = Device.open(undefined, { subgroups: subgroup });
    fn(dev);
  };

  Deno.test(
    `scores: HeteroCache, SnapKV and drift-check shapes (${path})`,
    withPath((dev) => {
      // HeteroCache prefill selection: last prompt token, pool then max over the group; two heads
      // in different chunks.
      checkScores(dev, {
        variant,
        storeLogits,
        texel,
        D: 64,
        G: 4,
        nKv: 3,
        caps: [3000, 2600, 2600],
        n: 2500,
        headStart: 1,
        headCount: 2,
        window: 1,
        groupReduce: "max",
        windowMode: "sum",
        poolFirst: true,
        maxChunkBytes: 3000 * 128,
      }, "heterocache prefill");
      // Drift check: 5 buffered queries, one row each.
      checkScores(dev, {
        variant,
        storeLogits,
        texel,
        D: 32,
        G: 2,
        nKv: 2,
        caps: [700, 900],
        n: 650,
        headStart: 0,
        headCount: 2,
        window: 5,
        groupReduce: "max",
        windowMode: "separate",
        poolFirst: true,
      }, "drift check");
      // SnapKV: window summed, reduce first, kernel 7, mean and max.
      for (const groupReduce of ["mean", "max"] as const) {
        checkScores(dev, {
          variant,
          storeLogits,
          texel,
          D: 16,
          G: 4,
          nKv: 2,
          caps: [1500, 1500],
          n: 1500,
          headStart: 0,
          headCount: 2,
          window: 12,
          groupReduce,
          windowMode: "sum",
          poolFirst: false,
          poolKernel: 7,
        }, `snapkv ${groupReduce}`);
      }
      // Tiny rows: pool padding on both sides of a 3-row head.
      checkScores(dev, {
        variant,
        storeLogits,
        texel,
        D: 8,
        G: 1,
        nKv: 1,
        caps: [3],
        n: 3,
        headStart: 0,
        headCount: 1,
        window: 2,
        groupReduce: "max",
        windowMode: "sum",
        poolFirst: false,
      }, "three rows");
      // Calibration shape (pool width 1, mean), an odd group, a wider output stride and an
      // offset; then separate windows over more rows than one chunk holds.
      checkScores(dev, {
        variant,
        storeLogits,
        texel,
        D: 24,
        G: 3,
        nKv: 2,
        caps: [999, 1001],
        n: 997,
        headStart: 0,
        headCount: 2,
        window: 1,
        groupReduce: "mean",
        windowMode: "separate",
        poolFirst: false,
        poolKernel: 1,
        outStride: 1003,
        outOffset: 5,
      }, "calibration");
      checkScores(dev, {
        variant,
        storeLogits,
        texel,
        D: 128,
        G: 2,
        nKv: 1,
        caps: [700],
        n: 700,
        headStart: 0,
        headCount: 1,
        window: 9,
        groupReduce: "max",
        windowMode: "separate",
        poolFirst: true,
        poolKernel: 9,
      }, "separate windows, big head");
    }),
  );

  Deno.test(
    `scores: one head over 100,000 rows (${path})`,
    withPath((dev) => {
      checkScores(dev, {
        variant,
        storeLogits,
        texel,
        D: 128,
        G: 4,
        nKv: 1,
        caps: [100_000],
        n: 100_000,
        headStart: 0,
        headCount: 1,
        window: 1,
        groupReduce: "max",
        windowMode: "sum",
        poolFirst: true,
      }, "100k rows");
    }),
  );
}

Deno.test("scores: a wrong row count is caught by the comparison", () => {
  using dev = Device.open();
  const c: ScoreCase = {
    D: 32,
    G: 2,
    nKv: 1,
    caps: [800],
    n: 800,
    headStart: 0,
    headCount: 1,
    window: 1,
    groupReduce: "max",
    windowMode: "sum",
    poolFirst: true,
  };
  checkScores(dev, c, "right n");
  // The device scores only 790 rows: compare those (the softmax normalisation differs).
  const { got, want } = runScores(dev, { ...c, deviceN: 790 });
  assert.equal(got[0].length, 790);
  assert.throws(
    () => expectClose(got[0], want[0].subarray(0, 790), "n short by 10"),
    /relative error/,
  );
});

/** `texel`: the rows buffer is a whole number of texels (the texel path on CPU devices) or
 * one float past it (the storage path). */
function runTopK(
  dev: Device,
  rows: Float32Array[],
  n: number,
  k: number,
  stride = n,
  texel = true,
): Uint32Array[] {
  using topk = new TopK(dev);
  const floats = rows.length * stride;
  const data = new Float32Array(texel ? Math.ceil(floats / 4) * 4 : (floats >> 2) * 4 + 5);
  rows.forEach((r, i) => data.set(r, i * stride));
  const kk = Math.min(k, n);
  using rowBuf = dev.buffer(data.byteLength);
  using out = dev.buffer(Math.max(1, rows.length * kk) * 4);
  dev.upload(rowBuf, data);
  using cmd = dev.commands();
  cmd.begin();
  topk.record(cmd, { rows: rowBuf, rowStride: stride, rowCount: rows.length, n, k, out });
  cmd.end();
  if (k > 0) {
    const cpuTexel = dev.info.type === "cpu" && dev.info.texelBuffer;
    assert.equal(topk.lastBinding, texel && cpuTexel ? "texel" : "storage");
  }
  dev.waitSync("compute", cmd.submit());
  const bytes = dev.download(out);
  const all = new Uint32Array(bytes.buffer, bytes.byteOffset, rows.length * kk);
  return rows.map((_, i) => all.slice(i * kk, (i + 1) * kk));
}

Deno.test("top-k: exact sets sorted by position, ties, NaN, -0, k edge cases", () => {
  using dev = Device.open();
  const r = rng(nextSeed());
  const n = 131_072;
  const smooth = Float32Array.from({ length: n }, () => r() / n);
  const ties = Float32Array.from({ length: n }, () => Math.floor(r() * 40) / 40); // many equal values
  const odd = Float32Array.from(
    { length: n },
    (_, i) => (i % 97 === 0 ? NaN : i % 89 === 0 ? -0 : r() - 0.5),
  );
  const rows = [smooth, ties, odd];
  for (const [k, texel] of [[4096, true], [1, true], [3000, true], [3000, false]] as const) {
    // Rows n + 5 apart: every row but the first starts inside a texel.
    const got = runTopK(dev, rows, n, k, n + 5, texel);
    rows.forEach((row, i) => {
      const want = refTopK(row, k);
      assert.deepEqual(got[i], want, `row ${i} k=${k} texel ${texel} (seed ${SEED})`);
      assert.deepEqual(Int32Array.from(got[i]), topkSet(row, k), `row ${i} k=${k} matches topkSet`);
    });
  }
  const small = Float32Array.from({ length: 10 }, () => r());
  assert.deepEqual(runTopK(dev, [small], 10, 10)[0], Uint32Array.from({ length: 10 }, (_, i) => i));
  assert.deepEqual(runTopK(dev, [small], 10, 25)[0], Uint32Array.from({ length: 10 }, (_, i) => i));
  assert.deepEqual(runTopK(dev, [small], 10, 3)[0], refTopK(small, 3));
  // A wrong length is visible: the row's largest value sits in its last position.
  const peaked = smooth.slice();
  peaked[n - 1] = 1;
  assert.deepEqual(runTopK(dev, [peaked], n, 4096)[0], refTopK(peaked, 4096));
  const short = runTopK(dev, [peaked], n - 1, 4096, n)[0];
  assert.ok(!short.includes(n - 1), "a row one short must miss its last (largest) value");
  assert.notDeepEqual(short, refTopK(peaked, 4096));
});

Deno.test("scores then top-k in one recorded list (HeteroCache selection)", () => {
  using dev = Device.open();
  const D = 64, G = 4, n = 5000, cap = 1200;
  using cache = KvLayerCache.create(dev, { headDim: D, capRows: [n, n] });
  const kRows = [0, 1].map((h) => {
    const k = roundToF16(randomF32(n * D, nextSeed()));
    const loc = cache.location(h, 0);
    dev.upload(loc.k, f32ToF16Array(k), loc.byteOffset);
    return k;
  });
  const q = randomF32(2 * G * D, nextSeed(), 4);
  using scores = new AttentionScores(dev, { headDim: D, groupSize: G });
  using topk = new TopK(dev);
  using qBuf = dev.buffer(q.byteLength);
  using rowsBuf = dev.buffer(2 * n * 4);
  using idx = dev.buffer(2 * cap * 4);
  using scratch = dev.buffer(scores.scratchBytes({ headCount: 2, n, window: 1 }));
  dev.upload(qBuf, q);
  using cmd = dev.commands();
  cmd.begin();
  scores.record(cmd, {
    cache,
    headStart: 0,
    headCount: 2,
    n,
    q: qBuf,
    window: 1,
    groupReduce: "max",
    windowMode: "sum",
    poolFirst: true,
    out: rowsBuf,
    scratch,
  });
  cmd.barrier();
  topk.record(cmd, { rows: rowsBuf, rowStride: n, rowCount: 2, n, k: cap, out: idx });
  cmd.end();
  dev.waitSync("compute", cmd.submit());
  const rowBytes = dev.download(rowsBuf);
  const devRows = new Float32Array(rowBytes.buffer, rowBytes.byteOffset, 2 * n);
  const idxBytes = dev.download(idx);
  const got = new Uint32Array(idxBytes.buffer, idxBytes.byteOffset, 2 * cap);
  for (let h = 0; h < 2; h++) {
    const want = refScores({
      q,
      nHeads: 2 * G,
      window: 1,
      head: h,
      k: kRows[h],
      n,
      headDim: D,
      groupSize: G,
      groupReduce: "max",
      windowMode: "sum",
      poolFirst: true,
    })[0];
    expectClose(devRows.subarray(h * n, (h + 1) * n), want, `head ${h} scores`);
    // The device's own rows select exactly; against the f64 reference rows most picks agree.
    assert.deepEqual(
      got.subarray(h * cap, (h + 1) * cap),
      refTopK(devRows.subarray(h * n, (h + 1) * n), cap),
    );
    const ref = new Set(refTopK(want, cap));
    const agree = [...got.subarray(h * cap, (h + 1) * cap)].filter((i) => ref.has(i)).length;
    assert.ok(
      agree >= cap * 0.98,
      `head ${h}: only ${agree}/${cap} picks agree with the reference`,
    );
  }
});

Deno.test("scores: a scratch sized for H heads serves a record of fewer heads (kept logits)", () => {
  using dev = Device.open();
  // 64 window rows x G 4 x 40000 positions: one head's logits (41 MB) fit the stored-logits
  // budget, two heads' (82 MB) do not, so a one-head record needs more scratch per head.
  const D = 64, G = 4, n = 40_000, window = 64;
  using cache = KvLayerCache.create(dev, { headDim: D, capRows: [n, n] });
  using scores = new AttentionScores(dev, { headDim: D, groupSize: G, variant: "simd" });
  const two = scores.scratchBytes({ headCount: 2, n, window });
  assert.ok(two >= scores.scratchBytes({ headCount: 1, n, window }));
  assert.ok(two > 41_000_000, `a two-head scratch of ${two} bytes cannot hold one head's logits`);
  using scratch = dev.buffer(two);
  using q = dev.buffer(window * 2 * G * D * 4);
  using out = dev.buffer(window * n * 4);
  using cmd = dev.commands();
  cmd.begin();
  scores.record(cmd, {
    cache,
    headStart: 1,
    headCount: 1,
    n,
    q,
    window,
    groupReduce: "max",
    windowMode: "separate",
    poolFirst: true,
    out,
    scratch,
  });
  cmd.end();
});
