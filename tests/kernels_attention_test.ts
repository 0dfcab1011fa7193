/**
 * KV append, decode attention (ragged per-head caches, GQA, split-K) and causal prefill against
 * testing/reference_attention.ts on fresh random data, through both the subgroup and the
 * shared-memory reduction paths, and for the CPU decode variant with K/V bound as texel or as
 * storage buffers.
 */
import assert from "node:assert/strict";
import { type Buffer, type CommandList, Device } from "../src/vk/mod.ts";
import {
  DecodeAttention,
  type DecodeAttentionOptions,
  PrefillAttention,
  type PrefillAttentionOptions,
} from "../src/kernels/attention.ts";
import { KvAppend } from "../src/kernels/kv.ts";
import { AttentionScores } from "../src/kernels/scores.ts";
import { KvLayerCache, planKvLayer } from "../src/cache/kv_layer.ts";
import {
  f16ScaledQueries,
  refDecodeAttention,
  refPrefillAttention,
  roundToF16,
} from "../testing/reference_attention.ts";
import { f32ToF16Array } from "../src/model/quant/mod.ts";
import { randomF32, relError, runPrefill } from "./helpers.ts";

const SEED = Date.now() >>> 0;
let seedCounter = SEED;
const nextSeed = () => (seedCounter = (seedCounter + 0x9e3779b9) >>> 0);
const TOL = 1e-4;

function expectClose(got: Float32Array, want: Float32Array, what: string, tol = TOL): void {
  const err = relError(got, want);
  assert.ok(err <= tol, `${what}: relative error ${err.toExponential(3)} > ${tol} (seed ${SEED})`);
}

function f32(bytes: Uint8Array): Float32Array {
  return new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
}

interface FilledCache {
  cache: KvLayerCache;
  /** Valid rows of each head, as the device holds them (f16-rounded). */
  k: Float32Array[];
  v: Float32Array[];
  /** Every row up to the capacity. */
  kFull: Float32Array[];
  vFull: Float32Array[];
}

/** A cache whose heads are filled with random rows up to their capacity (rows past the length
 * are garbage that attention must not read). */
function filledCache(
  dev: Device,
  headDim: number,
  caps: number[],
  lens: number[],
  maxChunkBytes?: number,
): FilledCache {
  const cache = KvLayerCache.create(dev, { headDim, capRows: caps, maxChunkBytes });
  const k: Float32Array[] = [];
  const v: Float32Array[] = [];
  const kFull: Float32Array[] = [];
  const vFull: Float32Array[] = [];
  caps.forEach((cap, h) => {
    if (cap === 0) {
      for (const list of [k, v, kFull, vFull]) list.push(new Float32Array(0));
      return;
    }
    const kr = roundToF16(randomF32(cap * headDim, nextSeed()));
    const vr = roundToF16(randomF32(cap * headDim, nextSeed()));
    const loc = cache.location(h, 0);
    dev.upload(loc.k, f32ToF16Array(kr), loc.byteOffset);
    dev.upload(loc.v, f32ToF16Array(vr), loc.byteOffset);
    k.push(kr.subarray(0, lens[h] * headDim));
    v.push(vr.subarray(0, lens[h] * headDim));
    kFull.push(kr);
    vFull.push(vr);
  });
  cache.setLengths(lens);
  return { cache, k, v, kFull, vFull };
}

function runDecode(
  dev: Device,
  fc: FilledCache,
  G: number,
  q: Float32Array,
  opts: Omit<DecodeAttentionOptions, "headDim" | "groupSize"> = {},
  onRecord?: (attn: DecodeAttention) => void,
  attnDev: Device = dev,
): Float32Array {
  const D = fc.cache.headDim;
  using attn = new DecodeAttention(attnDev, { headDim: D, groupSize: G, ...opts });
  using qBuf = dev.buffer(q.byteLength);
  using out = dev.buffer(q.byteLength);
  using scratch = dev.buffer(attn.scratchBytes(fc.cache));
  attn.zeroCounters(scratch, fc.cache.nKvHeads);
  dev.upload(qBuf, q);
  using cmd = dev.commands();
  cmd.begin();
  attn.record(cmd, { cache: fc.cache, q: qBuf, out, scratch });
  onRecord?.(attn);
  cmd.end();
  dev.waitSync("compute", cmd.submit());
  return f32(dev.download(out));
}

/** Records one replayable decode step: the cache's lengths upload, then attention. */
function recordDecodeStep(
  cmd: CommandList,
  attn: DecodeAttention,
  fc: FilledCache,
  io: { q: Buffer; out: Buffer; scratch: Buffer },
): void {
  cmd.begin();
  fc.cache.recordLengthsUpload(cmd);
  cmd.barrier();
  attn.record(cmd, { cache: fc.cache, ...io });
  cmd.end();
}

/** The reference over each head's first `lens[h]` rows of `fc`. */
function refAtLengths(fc: FilledCache, lens: number[], q: Float32Array, G: number): Float32Array {
  const D = fc.cache.headDim;
  return refDecodeAttention({
    q,
    k: lens.map((n, h) => fc.kFull[h].subarray(0, n * D)),
    v: lens.map((n, h) => fc.vFull[h].subarray(0, n * D)),
    headDim: D,
    groupSize: G,
  });
}

/** "simd" reads K/V as texels where the device has them; "simd-storage" never does. */
type Variant = "lanes" | "simd" | "simd-storage";

function decodeCase(
  dev: Device,
  variant: Variant,
  D: number,
  G: number,
  caps: number[],
  lens: number[],
  maxChunkBytes?: number,
) {
  const fc = filledCache(dev, D, caps, lens, maxChunkBytes);
  try {
    const q = randomF32(caps.length * G * D, nextSeed(), 3);
    const opts = variant === "simd-storage"
      ? { variant: "simd" as const, texel: false }
      : { variant };
    const got = runDecode(dev, fc, G, q, opts, (attn) => {
      const texel = variant === "simd" && dev.info.texelBuffer;
      assert.equal(attn.lastBindings.storage === 0, texel, JSON.stringify(attn.lastBindings));
    });
    const want = refDecodeAttention({ q, k: fc.k, v: fc.v, headDim: D, groupSize: G });
    expectClose(got, want, `decode ${variant} D=${D} G=${G} lens=${lens}`);
  } finally {
    fc.cache.dispose();
  }
}

for (const subgroup of [true, false]) {
  const path = subgroup ? "subgroup" : "shared-memory";
  const withPath = (fn: (dev: Device) => void) => () => {
    using dev = Device.open(undefined, { subgroups: subgroup });
    fn(dev);
  };

  // The simd variant has no reductions: it runs once, under the default path.
  const variants = subgroup ? ["lanes", "simd", "simd-storage"] as const : ["lanes"] as const;
  for (const variant of variants) {
    const label = variant === "lanes" ? `${variant}, ${path}` : variant;
    Deno.test(
      `decode attention (${label}): ragged heads, GQA 1/2/4`,
      withPath((dev) => {
        for (const G of [1, 2, 4]) {
          decodeCase(dev, variant, 64, G, [40, 7, 1100, 4200], [1, 7, 1000, 4097]);
        }
        // Tiny head dims of the real test models, an empty head, several chunks.
        decodeCase(dev, variant, 8, 2, [3, 300, 0, 90], [3, 257, 0, 5]);
        decodeCase(dev, variant, 16, 2, [600, 600, 600, 600], [600, 1, 599, 300], 16 * 2 * 1200);
        decodeCase(dev, variant, 128, 4, [5000, 20, 2100], [4999, 20, 2049], 128 * 2 * 5100);
      }),
    );

    Deno.test(
      `decode attention (${label}): KV length 100,000`,
      withPath((dev) => {
        decodeCase(dev, variant, 128, 4, [100_000], [100_000]);
      }),
    );
  }
}

Deno.test("decode attention (simd): a chunk over the texel view limit falls back to storage", () => {
  using dev = Device.open();
  if (!dev.info.texelBuffer || !dev.info.int64) return; // no texel (or simd) path to leave
  // Chunk 0 holds heads 0-1 (5020 rows of 256 bytes), chunk 1 head 2 (2100 rows); a texel
  // limit of exactly chunk 1's texels sends chunk 0 to the storage-buffer kernel.
  const fc = filledCache(dev, 128, [5000, 20, 2100], [4999, 20, 2049], 128 * 2 * 5100);
  const small = Object.create(dev, {
    info: { value: { ...dev.info, maxTexelBufferElements: 2100 * 256 / 16 } },
  }) as Device;
  try {
    const q = randomF32(3 * 4 * 128, nextSeed(), 3);
    const want = refDecodeAttention({ q, k: fc.k, v: fc.v, headDim: 128, groupSize: 4 });
    const got = runDecode(dev, fc, 4, q, { variant: "simd" }, (attn) => {
      assert.deepEqual(attn.lastBindings, { texel: 1, storage: 1 });
    }, small);
    expectClose(got, want, "decode simd, texel and storage chunks");
  } finally {
    fc.cache.dispose();
  }
});

Deno.test("decode attention: a wrong length is caught by the comparison", () => {
  using dev = Device.open();
  const D = 64, G = 2;
  const fc = filledCache(dev, D, [500, 300], [500, 300]);
  try {
    const q = randomF32(2 * G * D, nextSeed(), 3);
    const want = refDecodeAttention({ q, k: fc.k, v: fc.v, headDim: D, groupSize: G });
    expectClose(runDecode(dev, fc, G, q), want, "correct lengths");
    fc.cache.setLengths([450, 300]); // 50 rows short on head 0
    const got = runDecode(dev, fc, G, q);
    assert.throws(() => expectClose(got, want, "short length"), /relative error/);
  } finally {
    fc.cache.dispose();
  }
});

Deno.test("decode attention: replay with growing lengths and small splits", () => {
  using dev = Device.open();
  const D = 32, G = 4;
  const fc = filledCache(dev, D, [700, 900], [10, 20]);
  try {
    using attn = new DecodeAttention(dev, {
      headDim: D,
      groupSize: G,
      minTokensPerSplit: 16,
      maxTokensPerSplit: 64,
    });
    const q = randomF32(2 * G * D, nextSeed(), 3);
    using qBuf = dev.buffer(q.byteLength);
    using out = dev.buffer(q.byteLength);
    using scratch = dev.buffer(attn.scratchBytes(fc.cache));
    attn.zeroCounters(scratch, fc.cache.nKvHeads);
    dev.upload(qBuf, q);
    using cmd = dev.commands();
    recordDecodeStep(cmd, attn, fc, { q: qBuf, out, scratch });
    for (const lens of [[10, 20], [11, 21], [300, 899], [700, 900]]) {
      fc.cache.lengths.set(lens);
      dev.waitSync("compute", cmd.submit());
      const want = refAtLengths(fc, lens, q, G);
      expectClose(f32(dev.download(out)), want, `replay lens=${lens}`);
    }
  } finally {
    fc.cache.dispose();
  }
});

/** Halves of a head's rows [row0, row0 + n) as the device holds them. */
function readRows(
  dev: Device,
  cache: KvLayerCache,
  which: "k" | "v",
  head: number,
  row0: number,
  n: number,
) {
  const loc = cache.location(head, row0);
  const bytes = dev.download(which === "k" ? loc.k : loc.v, loc.byteOffset, n * cache.headDim * 2);
  return new Uint16Array(bytes.buffer, bytes.byteOffset, n * cache.headDim);
}

Deno.test("kv append: preset lengths, fused QKV layout, capacity guard", () => {
  using dev = Device.open();
  const D = 32, nKv = 3, nHeads = 6, B = 2;
  const stride = (nHeads + 2 * nKv) * D;
  const qkv = randomF32(B * stride, nextSeed(), 50);
  using src = dev.buffer(qkv.byteLength);
  dev.upload(src, qkv);
  using append = new KvAppend(dev, { headDim: D });
  const kOffset = nHeads * D, vOffset = (nHeads + nKv) * D;
  const expectRows = (cache: KvLayerCache, head: number, row0: number, tokens: number[]) => {
    for (const which of ["k", "v"] as const) {
      const got = readRows(dev, cache, which, head, row0, tokens.length);
      tokens.forEach((t, i) => {
        const off = (which === "k" ? kOffset : vOffset) + t * stride + head * D;
        const want = f32ToF16Array(qkv.subarray(off, off + D));
        assert.deepEqual(
          got.subarray(i * D, (i + 1) * D),
          want,
          `${which} head ${head} row ${row0 + i} (seed ${SEED})`,
        );
      });
    }
  };
  // Heads 0 and 1 share chunk 0 (head 1's rows right after head 0's), head 2 gets chunk 1.
  using cache = KvLayerCache.create(dev, {
    headDim: D,
    capRows: [5, 10, 20],
    maxChunkBytes: 20 * D * 2,
  });
  assert.deepEqual(cache.layout.chunkHeads, [[0, 2], [2, 3]]);
  const marker = new Uint16Array(D).fill(0x3c00); // 1.0 in head 1's row 0
  const row10 = cache.location(1, 0);
  dev.upload(row10.k, marker, row10.byteOffset);
  dev.upload(row10.v, marker, row10.byteOffset);
  // Head 0 (capacity 5) can take only the first of the two tokens (a host bug that the kernel
  // must contain: setLengths would refuse it, the raw staging array does not).
  cache.lengths.set([6, 5, 2]);
  dev.upload(cache.lengthsWindow.buffer, cache.lengths, cache.lengthsWindow.offset);
  using cmd = dev.commands();
  cmd.begin();
  append.record(cmd, {
    cache,
    k: src,
    v: src,
    kOffset,
    vOffset,
    tokenStride: stride,
    tokens: B,
  });
  cmd.end();
  dev.waitSync("compute", cmd.submit());
  expectRows(cache, 0, 4, [0]);
  expectRows(cache, 1, 3, [0, 1]);
  expectRows(cache, 2, 0, [0, 1]);
  assert.deepEqual([...cache.readLengths()], [6, 5, 2]);
  assert.deepEqual(
    readRows(dev, cache, "k", 1, 0, 1),
    marker,
    "head 0's overflow spilled into head 1",
  );
  assert.deepEqual(
    readRows(dev, cache, "v", 1, 0, 1),
    marker,
    "head 0's overflow spilled into head 1",
  );
});

Deno.test("decode step replay: append + attention recorded once, lengths advance", () => {
  using dev = Device.open();
  const D = 64, G = 2, nKv = 2, steps = 4;
  const caps = [50, 30];
  const start = [20, 3];
  const fc = filledCache(dev, D, caps, start);
  try {
    using append = new KvAppend(dev, { headDim: D });
    using attn = new DecodeAttention(dev, { headDim: D, groupSize: G, minTokensPerSplit: 8 });
    using qBuf = dev.buffer(nKv * G * D * 4);
    using kvBuf = dev.buffer(2 * nKv * D * 4);
    using out = dev.buffer(nKv * G * D * 4);
    using scratch = dev.buffer(attn.scratchBytes(fc.cache));
    attn.zeroCounters(scratch, fc.cache.nKvHeads);
    using cmd = dev.commands();
    cmd.begin();
    fc.cache.recordLengthsUpload(cmd);
    cmd.barrier();
    append.record(cmd, {
      cache: fc.cache,
      k: kvBuf,
      v: kvBuf,
      vOffset: nKv * D,
      tokens: 1,
    });
    cmd.barrier();
    attn.record(cmd, { cache: fc.cache, q: qBuf, out, scratch });
    cmd.end();
    const rows = fc.kFull.map((k, h) => ({
      k: k.slice(0, start[h] * D),
      v: fc.vFull[h].slice(0, start[h] * D),
    }));
    for (let step = 0; step < steps; step++) {
      const q = randomF32(nKv * G * D, nextSeed(), 3);
      const kv = randomF32(2 * nKv * D, nextSeed());
      dev.upload(qBuf, q);
      dev.upload(kvBuf, kv);
      for (let h = 0; h < nKv; h++) fc.cache.lengths[h] = start[h] + step + 1;
      dev.waitSync("compute", cmd.submit());
      rows.forEach((r, h) => {
        const kr = roundToF16(kv.subarray(h * D, (h + 1) * D));
        const vr = roundToF16(kv.subarray((nKv + h) * D, (nKv + h + 1) * D));
        r.k = Float32Array.from([...r.k, ...kr]);
        r.v = Float32Array.from([...r.v, ...vr]);
      });
      const want = refDecodeAttention({
        q,
        k: rows.map((r) => r.k),
        v: rows.map((r) => r.v),
        headDim: D,
        groupSize: G,
      });
      expectClose(f32(dev.download(out)), want, `step ${step}`);
    }
    assert.deepEqual([...fc.cache.readLengths()], start.map((n) => n + steps));
  } finally {
    fc.cache.dispose();
  }
});

/** Decode variants as runDecode's options. */
function variantOptions(variant: Variant): Omit<DecodeAttentionOptions, "headDim" | "groupSize"> {
  return variant === "simd-storage" ? { variant: "simd", texel: false } : { variant };
}

// The last workgroup of each KV head merges its splits, counted by arrival counters in the
// scratch: a replay needs them back at zero, every workgroup of the grid must arrive (those
// of splits a short head does not use too), and a prefill on the same scratch must leave them.
for (const subgroup of [true, false]) {
  const variants = subgroup ? ["lanes", "simd", "simd-storage"] as const : ["lanes"] as const;
  for (const variant of variants) {
    const label = variant === "lanes" ? `${variant}, ${subgroup ? "subgroup" : "shared"}` : variant;
    Deno.test(`decode attention (${label}): one recording replayed, 16+ splits, empty splits, a prefill between`, () => {
      using dev = Device.open(undefined, { subgroups: subgroup });
      const D = 32, G = 2;
      const caps = [4000, 40, 0, 1500, 300];
      const nKv = caps.length;
      const fc = filledCache(dev, D, caps, caps);
      // A full cache with as many KV heads, for a prefill in 4 key passes whose records (64
      // tokens x 10 query heads x 8 bytes) would cover the counters if they started at the
      // scratch's start.
      const pc = filledCache(dev, D, Array(nKv).fill(64), Array(nKv).fill(64));
      try {
        using attn = new DecodeAttention(dev, {
          headDim: D,
          groupSize: G,
          minTokensPerSplit: 16,
          maxTokensPerSplit: 256,
          ...variantOptions(variant),
        });
        const S = attn.splitsFor(fc.cache);
        assert.ok(S >= 16, `${S} splits`);
        using prefill = new PrefillAttention(dev, { headDim: D, groupSize: G });
        const nH = nKv * G;
        using qBuf = dev.buffer(nH * D * 4);
        using out = dev.buffer(nH * D * 4);
        using scratch = dev.buffer(
          Math.max(attn.scratchBytes(fc.cache), prefill.scratchBytes(pc.cache, 64)),
        );
        attn.zeroCounters(scratch, nKv);
        using cmd = dev.commands();
        recordDecodeStep(cmd, attn, fc, { q: qBuf, out, scratch });
        const pq = randomF32(64 * nH * D, nextSeed(), 3);
        using pqBuf = dev.buffer(pq.byteLength);
        using pOut = dev.buffer(pq.byteLength);
        dev.upload(pqBuf, pq);
        using pcmd = dev.commands();
        pcmd.begin();
        prefill.record(pcmd, {
          cache: pc.cache,
          q: pqBuf,
          out: pOut,
          scratch,
          tokens: 64,
          position: 0,
          keysPerPass: 16,
        });
        pcmd.end();
        // Head 1 fills 1 of its splits (or 3 of 40 rows), head 2 none, head 4 7 or 19 or fewer.
        const steps = [[4000, 5, 0, 1500, 100], [3999, 40, 0, 17, 300], [1, 0, 0, 1500, 299]];
        for (const [i, lens] of steps.entries()) {
          fc.cache.lengths.set(lens);
          const q = randomF32(nH * D, nextSeed(), 3);
          dev.upload(qBuf, q);
          dev.waitSync("compute", cmd.submit());
          const want = refAtLengths(fc, lens, q, G);
          expectClose(f32(dev.download(out)), want, `${label} S=${S} replay ${i} lens=${lens}`);
          dev.waitSync("compute", pcmd.submit());
        }
      } finally {
        fc.cache.dispose();
        pc.cache.dispose();
      }
    });
  }
}

function prefillCase(
  dev: Device,
  D: number,
  G: number,
  nKv: number,
  B: number,
  p0: number,
  keysPerPass?: number,
  opts: Partial<PrefillAttentionOptions> = {},
  more: {
    /** Cache chunks of at most this many bytes (several dispatches per pass). */
    maxChunkBytes?: number;
    /** The device the kernel sees (a view with other limits); default `dev`. */
    view?: Device;
    check?: (attn: PrefillAttention) => void;
  } = {},
): void {
  const rowsNeeded = p0 + B;
  const fc = filledCache(
    dev,
    D,
    Array(nKv).fill(rowsNeeded + 3),
    Array(nKv).fill(rowsNeeded),
    more.maxChunkBytes,
  );
  try {
    using attn = new PrefillAttention(more.view ?? dev, { headDim: D, groupSize: G, ...opts });
    if (opts.variant) assert.equal(attn.variant, opts.variant);
    const nHeads = nKv * G;
    const q = randomF32(B * nHeads * D, nextSeed(), 3);
    const got = runPrefill(dev, attn, q, { cache: fc.cache, tokens: B, position: p0, keysPerPass });
    more.check?.(attn);
    const want = refPrefillAttention({
      // The GPU kernel holds its queries in f16.
      q: attn.variant === "tiled" ? f16ScaledQueries(q, D) : q,
      tokens: B,
      position: p0,
      k: fc.k,
      v: fc.v,
      headDim: D,
      groupSize: G,
    });
    expectClose(
      got,
      want,
      `prefill ${attn.variant} D=${D} G=${G} B=${B} p0=${p0} pass=${keysPerPass}`,
    );
  } finally {
    fc.cache.dispose();
  }
}

Deno.test("prefill attention: causal, tiles and key passes crossed, GQA 1/2/4", () => {
  using dev = Device.open();
  prefillCase(dev, 64, 4, 2, 37, 50); // 4 tokens per workgroup, 32-key tiles: both cut mid-way
  prefillCase(dev, 64, 4, 2, 37, 50, 40); // three key passes carrying state
  prefillCase(dev, 16, 2, 3, 70, 0, 33);
  prefillCase(dev, 8, 1, 2, 17, 5);
  prefillCase(dev, 256, 2, 1, 11, 20); // big head dim: 16-key tiles, 8 rows per workgroup
  prefillCase(dev, 128, 1, 2, 20, 2500); // default passes on CPU drivers (2048 keys each)
});

Deno.test("prefill attention: every variant, GQA 1/2/3/4, key passes, row blocks cut mid-way", () => {
  using dev = Device.open();
  // "tiled" is the GPU shape: it must stay right on any device.
  prefillCase(dev, 64, 4, 2, 37, 50, 40, { variant: "tiled" });
  prefillCase(dev, 16, 3, 1, 23, 9, undefined, { variant: "tiled" });
  // "rows": lanes own whole query rows (any head dim); the state crosses three passes.
  prefillCase(dev, 8, 1, 2, 41, 60, undefined, { variant: "rows" });
  prefillCase(dev, 24, 3, 2, 29, 100, 50, { variant: "rows" });
  prefillCase(dev, 64, 2, 1, 19, 300, undefined, { variant: "rows", rowsPerLane: 3 });
  // "split": lanes own head-dim slices; 32-row groups hold several tokens x heads.
  prefillCase(dev, 16, 4, 2, 37, 50, 40, { variant: "split" });
  prefillCase(dev, 32, 3, 1, 23, 7, undefined, { variant: "split" });
  prefillCase(dev, 128, 1, 1, 13, 700, 301, { variant: "split", rowsPerGroup: 8 });
});

Deno.test("prefill attention (split): K/V as texels or storage, per-word and whole-texel slices", () => {
  using dev = Device.open();
  const kinds = (texel: boolean) => (attn: PrefillAttention) => {
    const n = attn.lastBindings.texel + attn.lastBindings.storage;
    assert.deepEqual(
      attn.lastBindings,
      texel && dev.info.texelBuffer ? { texel: n, storage: 0 } : { texel: 0, storage: n },
    );
  };
  for (const texel of [true, false]) {
    const check = { check: kinds(texel) };
    // 8 words per lane (whole texels), three key passes carrying the state.
    prefillCase(dev, 128, 4, 2, 37, 50, 40, { variant: "split", texel }, check);
    // 1 and 2 words per lane: one texel fetch per word.
    prefillCase(dev, 16, 4, 2, 29, 13, undefined, { variant: "split", texel }, check);
    prefillCase(dev, 32, 3, 3, 23, 70, undefined, { variant: "split", texel }, check);
  }
});

Deno.test("prefill attention (split): a chunk over the texel view limit falls back to storage", () => {
  using dev = Device.open();
  if (!dev.info.texelBuffer) return; // no texel path to leave
  // 3 KV heads of 130 rows x 256 bytes with chunks of at most 2 heads: chunk 0 holds heads 0-1,
  // chunk 1 head 2. A texel limit of one head's rows sends chunk 0 to the storage kernel.
  const view = Object.create(dev, {
    info: { value: { ...dev.info, maxTexelBufferElements: 130 * 256 / 16 } },
  }) as Device;
  prefillCase(dev, 128, 2, 3, 57, 70, undefined, { variant: "split" }, {
    maxChunkBytes: 2 * 130 * 256,
    view,
    check: (attn) => assert.deepEqual(attn.lastBindings, { texel: 1, storage: 1 }),
  });
});

Deno.test("prefill attention (CPU variants): over 65,535 keys in one pass", () => {
  using dev = Device.open();
  // An invocation loops once per key block, so a 70,000-key pass stays under lavapipe's
  // per-invocation loop cap; a kernel looping per key would silently stop and fail here.
  prefillCase(dev, 16, 1, 1, 9, 70_000, undefined, { variant: "split" });
  prefillCase(dev, 8, 2, 1, 5, 70_000, undefined, { variant: "rows" });
  using attn = new PrefillAttention(dev, { headDim: 16, groupSize: 1, variant: "split" });
  const fc = filledCache(dev, 16, [300_000], [300_000]);
  try {
    using q = dev.buffer(16 * 4);
    using out = dev.buffer(16 * 4);
    using scratch = dev.buffer(attn.scratchBytes(fc.cache, 1));
    using cmd = dev.commands();
    assert.throws(
      () =>
        attn.record(cmd, {
          cache: fc.cache,
          q,
          tokens: 1,
          position: 299_999,
          out,
          scratch,
          keysPerPass: 300_000,
        }),
      /loop cap/,
    );
  } finally {
    fc.cache.dispose();
  }
});

Deno.test("prefill attention: a wrong position is caught by the comparison", () => {
  using dev = Device.open();
  const D = 32, G = 2, B = 9, p0 = 12;
  const fc = filledCache(dev, D, [p0 + B], [p0 + B]);
  try {
    using attn = new PrefillAttention(dev, { headDim: D, groupSize: G });
    const q = randomF32(B * G * D, nextSeed(), 3);
    using qBuf = dev.buffer(q.byteLength);
    using out = dev.buffer(q.byteLength);
    using scratch = dev.buffer(attn.scratchBytes(fc.cache, B));
    dev.upload(qBuf, q);
    using cmd = dev.commands();
    cmd.begin();
    attn.record(cmd, { cache: fc.cache, q: qBuf, tokens: B, position: p0 - 1, out, scratch });
    cmd.end();
    dev.waitSync("compute", cmd.submit());
    const want = refPrefillAttention({
      q,
      tokens: B,
      position: p0,
      k: fc.k,
      v: fc.v,
      headDim: D,
      groupSize: G,
    });
    assert.throws(
      () => expectClose(f32(dev.download(out)), want, "shifted position"),
      /relative error/,
    );
    assert.throws(
      () =>
        attn.record(cmd, { cache: fc.cache, q: qBuf, tokens: B, position: p0 + 1, out, scratch }),
      /E_CONTEXT_FULL|holds/,
    );
  } finally {
    fc.cache.dispose();
  }
});

Deno.test("kv layout: planning splits chunks by head and rejects bad sizes", () => {
  const plan = planKvLayer({
    headDim: 128,
    capRows: [100, 50, 200, 0, 10],
    maxChunkBytes: 256 * 250,
  });
  assert.deepEqual(plan.chunkHeads, [[0, 2], [2, 5]]);
  assert.deepEqual(plan.heads.map((h) => [h.chunk, h.baseRow, h.capRows]), [
    [0, 0, 100],
    [0, 100, 50],
    [1, 0, 200],
    [1, 200, 0],
    [1, 200, 10],
  ]);
  assert.throws(
    () => planKvLayer({ headDim: 128, capRows: [300], maxChunkBytes: 256 * 250 }),
    /exceeds one chunk/,
  );
  assert.throws(
    () => planKvLayer({ headDim: 12, capRows: [3], maxChunkBytes: 1 << 20 }),
    /head dim/,
  );
  assert.throws(
    () => planKvLayer({ headDim: 64, capRows: [-1], maxChunkBytes: 1 << 20 }),
    /capacity/,
  );
});

/** Host reference of the decode attention's watch: per query head of each watched KV head, the
 * fractions of its softmax mass on rows [0, prompt) and on the marked rows of that range. */
function refWatch(
  q: Float32Array,
  k: Float32Array[],
  D: number,
  G: number,
  prompt: number,
  marked: (h: number, row: number) => boolean,
): Float32Array {
  const out = new Float32Array(k.length * G * 2);
  k.forEach((rows, h) => {
    const n = rows.length / D;
    for (let g = 0; g < G; g++) {
      const qh = h * G + g;
      const s = new Float64Array(n);
      let mx = -Infinity;
      for (let j = 0; j < n; j++) {
        let d = 0;
        for (let i = 0; i < D; i++) d += q[qh * D + i] * rows[j * D + i];
        s[j] = d / Math.sqrt(D);
        mx = Math.max(mx, s[j]);
      }
      let total = 0, held = 0, inPrompt = 0;
      for (let j = 0; j < n; j++) {
        const p = Math.exp(s[j] - mx);
        total += p;
        if (j < prompt) {
          inPrompt += p;
          if (marked(h, j)) held += p;
        }
      }
      out[qh * 2] = held / total;
      out[qh * 2 + 1] = inPrompt / total;
    }
  });
  return out;
}

for (const subgroup of [true, false]) {
  const variants = subgroup ? ["lanes", "simd", "simd-storage"] as const : ["lanes"] as const;
  for (const variant of variants) {
    const label = variant === "lanes" ? `${variant}, ${subgroup ? "subgroup" : "shared"}` : variant;
    Deno.test(`decode attention (${label}): the watch's mass, logits and statistics equal the host's`, () => {
      using dev = Device.open(undefined, { subgroups: subgroup });
      for (
        const [D, G, caps, lens, prompt] of [
          [64, 4, [3000, 700, 5000], [2990, 700, 4100], 2900],
          // A prompt that ends inside a group of 4 logits (the simd kernel stores 4 at once).
          [16, 2, [600, 40, 600, 600], [600, 33, 301, 599], 301],
          // More query heads than lanes: the simd kernel stores one logit per lane.
          [16, 16, [300, 200], [290, 150], 150],
        ] as const
      ) {
        const fc = filledCache(dev, D, [...caps], [...lens]);
        try {
          const nH = caps.length;
          // Watch every head but the second: head 0 with a mask and logits, head 2 with logits
          // only, the others with a mask only; random marks, one word past the prompt unused.
          const words = Math.ceil(prompt / 32);
          const table = new Uint32Array(nH * 2).fill(0xffffffff);
          const masks = new Uint32Array(nH * words);
          let next = nextSeed();
          for (let i = 0; i < masks.length; i++) {
            next = (Math.imul(next, 1664525) + 1013904223) >>> 0;
            masks[i] = next;
          }
          const hasMask = (h: number) => h !== 1 && h !== 2;
          const hasLogits = (h: number) => h === 0 || h === 2;
          // Rows a few floats apart: the kernels must use the stride, not the prompt length.
          const stride = Math.ceil(prompt / 4) * 4 + 4;
          const logitsAt = (h: number) => 16 + h * G * stride;
          for (let h = 0; h < nH; h++) {
            if (hasMask(h)) table[2 * h] = h * words;
            if (hasLogits(h)) table[2 * h + 1] = logitsAt(h);
          }
          using tableBuf = dev.buffer(table.byteLength);
          using maskBuf = dev.buffer(masks.byteLength);
          using logitsBuf = dev.buffer((16 + nH * G * stride) * 4);
          const statsAt = 8 + nH * G * 2 + 6;
          using covBuf = dev.buffer((statsAt + nH * G * 2) * 4);
          dev.upload(tableBuf, table);
          dev.upload(maskBuf, masks);
          fc.cache.watch = {
            table: tableBuf,
            masks: maskBuf,
            logits: logitsBuf,
            promptRows: prompt,
            logitStride: stride,
            out: covBuf,
            outOffset: 8,
            statsOffset: statsAt,
          };
          const q = randomF32(nH * G * D, nextSeed(), 3);
          const opts = variant === "simd-storage"
            ? { variant: "simd" as const, texel: false }
            : { variant };
          const got = runDecode(dev, fc, G, q, opts);
          expectClose(
            got,
            refDecodeAttention({ q, k: fc.k, v: fc.v, headDim: D, groupSize: G }),
            `decode ${variant} with a watch`,
          );
          const covAll = f32(dev.download(covBuf));
          const cov = covAll.subarray(8);
          const marked = (h: number, r: number) =>
            hasMask(h) && ((masks[h * words + (r >> 5)] >>> (r & 31)) & 1) === 1;
          const want = refWatch(q, fc.k, D, G, prompt, marked);
          for (let h = 0; h < nH; h++) {
            if (h === 1) continue; // not watched: not written
            for (let i = h * G * 2; i < (h + 1) * G * 2; i++) {
              assert.ok(
                Math.abs(cov[i] - want[i]) <= 1e-4,
                `${variant} D=${D} head ${h} value ${i}: ${cov[i]} vs ${want[i]} (seed ${SEED})`,
              );
            }
          }
          // A mask that marks nothing is caught.
          assert.ok(want.some((x, i) => i % 2 === 0 && x > 1e-3));
          // Logits (log2 domain) of the prompt rows, and their softmax from the statistics.
          const logits = f32(dev.download(logitsBuf));
          const stats = covAll.subarray(statsAt);
          for (let h = 0; h < nH; h++) {
            if (!hasLogits(h)) continue;
            const rows = fc.k[h];
            for (let g = 0; g < G; g++) {
              const qh = h * G + g;
              const s = new Float64Array(prompt);
              for (let j = 0; j < prompt; j++) {
                let d = 0;
                for (let i = 0; i < D; i++) d += q[qh * D + i] * rows[j * D + i];
                s[j] = (d / Math.sqrt(D)) * Math.LOG2E;
              }
              const mx = Math.max(...s);
              const total = s.reduce((a, x) => a + 2 ** (x - mx), 0);
              let worst = 0;
              for (let j = 0; j < prompt; j++) {
                const got = logits[logitsAt(h) + g * stride + j];
                assert.ok(
                  Math.abs(got - s[j]) <= 1e-3 * Math.max(1, Math.abs(s[j])),
                  `${variant} D=${D} head ${h} q ${g} logit ${j}: ${got} vs ${s[j]} (seed ${SEED})`,
                );
                const p = 2 ** (got - stats[qh * 2]) * stats[qh * 2 + 1];
                worst = Math.max(worst, Math.abs(p - 2 ** (s[j] - mx) / total));
              }
              assert.ok(worst <= 1e-4, `${variant} head ${h} q ${g}: softmax off by ${worst}`);
            }
            // Pooling the stored logits gives the row the scores kernels compute from the keys.
            using scores = new AttentionScores(dev, {
              headDim: D,
              groupSize: G,
              variant: variant === "lanes" ? "lanes" : "simd",
            });
            using qBuf = dev.buffer(q.byteLength);
            using fromKeys = dev.buffer(prompt * 4);
            using fromLogits = dev.buffer(prompt * 4);
            using scratch = dev.buffer(scores.scratchBytes({ headCount: 1, n: prompt, window: 1 }));
            dev.upload(qBuf, q);
            const pool = { groupReduce: "max", poolFirst: true, poolKernel: 5 } as const;
            using cmd = dev.commands();
            cmd.begin();
            scores.record(cmd, {
              ...pool,
              cache: fc.cache,
              headStart: h,
              headCount: 1,
              n: prompt,
              q: qBuf,
              window: 1,
              windowMode: "separate",
              out: fromKeys,
              scratch,
            });
            scores.recordPooledLogits(cmd, {
              ...pool,
              logits: { buffer: logitsBuf, offset: logitsAt(h) * 4, bytes: G * stride * 4 },
              logitStride: stride,
              stats: covBuf,
              statsOffset: statsAt + h * G * 2,
              n: prompt,
              out: fromLogits,
            });
            cmd.end();
            dev.waitSync("compute", cmd.submit());
            const a = f32(dev.download(fromKeys));
            const b = f32(dev.download(fromLogits));
            for (let j = 0; j < prompt; j++) {
              assert.ok(
                Math.abs(a[j] - b[j]) <= 1e-6 + 1e-3 * Math.abs(a[j]),
                `${variant} head ${h} pooled ${j}: ${b[j]} vs ${a[j]} (seed ${SEED})`,
              );
            }
          }
        } finally {
          fc.cache.dispose();
        }
      }
    });
  }
}

/**
 * A sliding-window layer's cache: every head a ring of `cap` rows holding positions [0, len) at
 * row position % cap (only the last `cap` survive). Returns every position's rows for the
 * reference, which sees positions, not rows.
 */
function ringCache(
  dev: Device,
  D: number,
  nKv: number,
  cap: number,
  window: number,
  len: number,
): { cache: KvLayerCache; k: Float32Array[]; v: Float32Array[] } {
  const cache = KvLayerCache.create(dev, {
    headDim: D,
    capRows: Array(nKv).fill(cap),
    window,
  });
  const k: Float32Array[] = [];
  const v: Float32Array[] = [];
  for (let h = 0; h < nKv; h++) {
    const kAll = roundToF16(randomF32(len * D, nextSeed()));
    const vAll = roundToF16(randomF32(len * D, nextSeed()));
    // Stale rows (positions the ring dropped) are garbage the kernels must not read.
    const kRing = roundToF16(randomF32(cap * D, nextSeed(), 100));
    const vRing = roundToF16(randomF32(cap * D, nextSeed(), 100));
    for (let p = Math.max(0, len - cap); p < len; p++) {
      kRing.set(kAll.subarray(p * D, (p + 1) * D), (p % cap) * D);
      vRing.set(vAll.subarray(p * D, (p + 1) * D), (p % cap) * D);
    }
    const loc = cache.location(h, 0);
    dev.upload(loc.k, f32ToF16Array(kRing), loc.byteOffset);
    dev.upload(loc.v, f32ToF16Array(vRing), loc.byteOffset);
    k.push(kAll);
    v.push(vAll);
  }
  cache.setLengths(Array(nKv).fill(len));
  return { cache, k, v };
}

Deno.test("decode attention: sliding-window rings and logit soft-capping, every variant", () => {
  using dev = Device.open();
  const cases = [
    // [D, G, nKv, cap, window, len, softcap]
    [64, 2, 2, 40, 32, 100, 0], // wrapped ring, window < capacity
    [64, 2, 2, 40, 32, 20, 0], // shorter than the window
    [16, 4, 1, 7, 7, 1000, 0], // ring exactly the window
    [64, 2, 2, 40, 32, 100, 2], // window and soft-capping together
    [32, 1, 2, 0, 0, 300, 1.5], // soft-capping alone (a full cache of 300 rows)
  ] as const;
  for (const variant of ["lanes", "simd", "simd-storage"] as const) {
    for (const [D, G, nKv, cap, window, len, softcap] of cases) {
      const rc = window > 0 ? ringCache(dev, D, nKv, cap, window, len) : (() => {
        const fc = filledCache(dev, D, Array(nKv).fill(len), Array(nKv).fill(len));
        return { cache: fc.cache, k: fc.k, v: fc.v };
      })();
      try {
        const q = randomF32(nKv * G * D, nextSeed(), 4);
        const opts = variant === "simd-storage"
          ? { variant: "simd" as const, texel: false }
          : { variant };
        using attn = new DecodeAttention(dev, {
          headDim: D,
          groupSize: G,
          ...opts,
          softcap: softcap > 0,
        });
        using qBuf = dev.buffer(q.byteLength);
        using out = dev.buffer(q.byteLength);
        using scratch = dev.buffer(attn.scratchBytes(rc.cache));
        attn.zeroCounters(scratch, rc.cache.nKvHeads);
        dev.upload(qBuf, q);
        using cmd = dev.commands();
        cmd.begin();
        attn.record(cmd, { cache: rc.cache, q: qBuf, out, scratch, softcap });
        cmd.end();
        dev.waitSync("compute", cmd.submit());
        const ref = { q, k: rc.k, v: rc.v, headDim: D, groupSize: G };
        const want = refDecodeAttention({ ...ref, window, softcap });
        const what = `decode ${variant} D=${D} G=${G} window=${window} len=${len} cap=${softcap}`;
        expectClose(f32(dev.download(out)), want, what);
        // The case is one where ignoring the window (or the cap) would be caught.
        if (len > window && window > 0) {
          assert.ok(relError(refDecodeAttention({ ...ref, softcap }), want) > 1e-2, what);
        }
        if (softcap > 0) {
          assert.ok(relError(refDecodeAttention({ ...ref, window }), want) > 1e-2, what);
        }
      } finally {
        rc.cache.dispose();
      }
    }
  }
});

Deno.test("soft-capping is a build option: a record that disagrees with the build is refused", () => {
  using dev = Device.open();
  const fc = filledCache(dev, 32, [40], [40]);
  try {
    using q = dev.buffer(32 * 4);
    using out = dev.buffer(32 * 4);
    for (const built of [false, true]) {
      using attn = new DecodeAttention(dev, { headDim: 32, groupSize: 1, softcap: built });
      using scratch = dev.buffer(attn.scratchBytes(fc.cache));
      attn.zeroCounters(scratch, fc.cache.nKvHeads);
      using cmd = dev.commands();
      cmd.begin();
      assert.throws(
        () => attn.record(cmd, { cache: fc.cache, q, out, scratch, softcap: built ? 0 : 2 }),
        /soft-cap/,
      );
      cmd.end();
    }
  } finally {
    fc.cache.dispose();
  }
});

Deno.test("prefill attention: sliding-window rings and logit soft-capping, every variant", () => {
  using dev = Device.open();
  const cases = [
    // [D, G, nKv, window, extra ring rows, B, p0, keysPerPass, softcap]
    [64, 2, 2, 24, 0, 37, 50, undefined, 0], // ring of exactly window + B - 1 rows, wrapped
    [64, 2, 2, 24, 5, 37, 50, 10, 0], // several key passes inside the window
    [16, 4, 1, 8, 3, 20, 0, undefined, 0], // the first tokens see fewer than W keys
    [32, 1, 2, 16, 0, 9, 300, undefined, 2], // window and soft-capping together
  ] as const;
  for (const variant of ["tiled", "rows", "split"] as const) {
    for (const [D, G, nKv, window, extra, B, p0, keysPerPass, softcap] of cases) {
      const cap = window + B - 1 + extra;
      const rc = ringCache(dev, D, nKv, cap, window, p0 + B);
      try {
        using attn = new PrefillAttention(dev, {
          headDim: D,
          groupSize: G,
          variant,
          softcap: softcap > 0,
        });
        const q = randomF32(B * nKv * G * D, nextSeed(), 4);
        const got = runPrefill(dev, attn, q, {
          cache: rc.cache,
          tokens: B,
          position: p0,
          keysPerPass,
          softcap,
        });
        const ref = {
          q: variant === "tiled" ? f16ScaledQueries(q, D) : q,
          tokens: B,
          position: p0,
          k: rc.k,
          v: rc.v,
          headDim: D,
          groupSize: G,
        };
        const want = refPrefillAttention({ ...ref, window, softcap });
        const what = `prefill ${variant} D=${D} G=${G} W=${window} B=${B} p0=${p0} cap=${softcap}`;
        expectClose(got, want, what);
        assert.ok(relError(refPrefillAttention({ ...ref, softcap }), want) > 1e-2, what);
      } finally {
        rc.cache.dispose();
      }
    }
    // A ring too small for the batch is refused, not read wrong.
    using attn = new PrefillAttention(dev, { headDim: 16, groupSize: 1, variant });
    using small = ringCache(dev, 16, 1, 10, 8, 0).cache;
    using buf = dev.buffer(16 * 16 * 4);
    using cmd = dev.commands();
    assert.throws(
      () =>
        attn.record(cmd, { cache: small, q: buf, tokens: 4, position: 10, out: buf, scratch: buf }),
      /prefill needs 11 rows/,
    );
  }
});

Deno.test("kv append: a sliding-window ring writes position p at row p % capacity", () => {
  using dev = Device.open();
  const D = 16, cap = 10, B = 3;
  using append = new KvAppend(dev, { headDim: D });
  using cache = KvLayerCache.create(dev, { headDim: D, capRows: [cap, cap], window: 8 });
  const all = randomF32(30 * 2 * D, nextSeed(), 5);
  using src = dev.buffer(all.byteLength);
  dev.upload(src, all);
  for (let step = 0; step < 10; step++) {
    cache.setLengths([(step + 1) * B, (step + 1) * B]);
    using cmd = dev.commands();
    cmd.begin();
    append.record(cmd, { cache, k: src, v: src, kOffset: step * B * 2 * D, tokens: B });
    cmd.end();
    dev.waitSync("compute", cmd.submit());
  }
  // Positions 20..29 survive, position p at row p % 10.
  for (let h = 0; h < 2; h++) {
    const got = readRows(dev, cache, "k", h, 0, cap);
    for (let p = 20; p < 30; p++) {
      const want = f32ToF16Array(all.subarray((p * 2 + h) * D, (p * 2 + h + 1) * D));
      assert.deepEqual(got.subarray((p % cap) * D, (p % cap + 1) * D), want, `position ${p}`);
    }
  }
  using cmd = dev.commands();
  assert.throws(
    () => append.record(cmd, { cache, k: src, v: src, tokens: 11 }),
    /ring of 10 rows/,
  );
});
