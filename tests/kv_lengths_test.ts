/**
 * The lengths arena (src/cache/kv_lengths.ts): the layers of a set share one device buffer and
 * one staging buffer, each at its own aligned window, and one recorded copy uploads them all.
 * Each layer's append and decode attention must read its own window (checked against
 * testing/reference_attention.ts), every policy's caches must share one arena, and the arena
 * must outlive the caches that use it.
 */
import assert from "node:assert/strict";
import { loadModel } from "../mod.ts";
import { Device } from "../src/vk/mod.ts";
import { DecodeAttention } from "../src/kernels/attention.ts";
import { KvAppend } from "../src/kernels/kv.ts";
import { KvLayerCache, recordLengthsUploads } from "../src/cache/kv_layer.ts";
import { KvLengths } from "../src/cache/kv_lengths.ts";
import type { CacheOptions } from "../src/cache/mod.ts";
import { uniformProfile } from "../src/cache/profile/profile_io.ts";
import { refDecodeAttention, roundToF16 } from "../testing/reference_attention.ts";
import { writeSyntheticModel } from "../testing/synthetic_model.ts";
import { archSpec } from "../testing/llamacpp_arch_oracle.ts";
import { f32ToF16Array } from "../src/model/quant/mod.ts";
import { randomF32, relError, sharedPath } from "./helpers.ts";

const SEED = Date.now() >>> 0;
let seedCounter = SEED;
const nextSeed = () => (seedCounter = (seedCounter + 0x9e3779b9) >>> 0);

function f32(bytes: Uint8Array): Float32Array {
  return new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
}

Deno.test("lengths arena: three layers, one recorded upload, each layer appends and attends at its own lengths", () => {
  using dev = Device.open();
  const D = 32, G = 2, nKv = 2;
  // Different capacities and lengths per layer; the lengths reach the device only through the
  // recorded upload (the staging arrays are written directly).
  const caps = [[40, 64], [96, 50], [30, 80]];
  const steps = [[[7, 12], [60, 3], [25, 41]], [[8, 13], [61, 4], [26, 42]], [[40, 1], [1, 50], [
    30,
    80,
  ]]];
  using arena = KvLengths.create(dev, { layers: caps.length, heads: nKv });
  const caches = caps.map((c, l) =>
    KvLayerCache.create(dev, { headDim: D, capRows: c, lengths: { arena, layer: l } })
  );
  try {
    const align = dev.info.minStorageBufferOffsetAlignment;
    const offsets = caches.map((c) => c.lengthsWindow.offset);
    assert.equal(new Set(offsets).size, caps.length);
    for (const [l, c] of caches.entries()) {
      assert.equal(c.lengthsWindow.buffer, arena.buffer);
      assert.equal(c.lengthsWindow.offset % align, 0, `window ${l} at ${c.lengthsWindow.offset}`);
      assert.equal(c.lengthsWindow.bytes, nKv * 4);
    }
    // Every row up to the capacity random (f16-exact), so a wrong length reads different rows.
    const kFull = caps.map((c) => c.map((cap) => roundToF16(randomF32(cap * D, nextSeed()))));
    const vFull = caps.map((c) => c.map((cap) => roundToF16(randomF32(cap * D, nextSeed()))));
    caches.forEach((cache, l) =>
      caps[l].forEach((_, h) => {
        const loc = cache.location(h, 0);
        dev.upload(loc.k, f32ToF16Array(kFull[l][h]), loc.byteOffset);
        dev.upload(loc.v, f32ToF16Array(vFull[l][h]), loc.byteOffset);
      })
    );
    using append = new KvAppend(dev, { headDim: D });
    using attn = new DecodeAttention(dev, { headDim: D, groupSize: G });
    const newK = caches.map(() => roundToF16(randomF32(nKv * D, nextSeed(), 2)));
    const newV = caches.map(() => roundToF16(randomF32(nKv * D, nextSeed(), 2)));
    const q = caches.map(() => randomF32(nKv * G * D, nextSeed(), 3));
    const bufs = caches.map((cache, l) => {
      const b = {
        k: dev.buffer(nKv * D * 4),
        v: dev.buffer(nKv * D * 4),
        q: dev.buffer(nKv * G * D * 4),
        out: dev.buffer(nKv * G * D * 4),
        scratch: dev.buffer(attn.scratchBytes(cache)),
      };
      dev.upload(b.k, newK[l]);
      dev.upload(b.v, newV[l]);
      dev.upload(b.q, q[l]);
      attn.zeroCounters(b.scratch, nKv);
      return b;
    });
    try {
      using cmd = dev.commands();
      cmd.begin();
      recordLengthsUploads(cmd, caches);
      cmd.barrier();
      caches.forEach((cache, l) => {
        append.record(cmd, { cache, k: bufs[l].k, v: bufs[l].v, tokens: 1 });
      });
      cmd.barrier();
      caches.forEach((cache, l) => {
        attn.record(cmd, { cache, q: bufs[l].q, out: bufs[l].out, scratch: bufs[l].scratch });
      });
      cmd.end();
      assert.equal(cmd.counts.transfers, 1, "one upload for every layer's lengths");
      // Replayed with new lengths each time: each step appends one row at len - 1 of every head.
      for (const lens of steps) {
        caches.forEach((cache, l) => cache.lengths.set(lens[l]));
        dev.waitSync("compute", cmd.submit());
        caches.forEach((cache, l) => {
          assert.deepEqual([...cache.readLengths()], lens[l], `layer ${l} device lengths`);
          // What the head holds now: its rows, with this step's token at row len - 1.
          for (let h = 0; h < nKv; h++) {
            kFull[l][h].set(newK[l].subarray(h * D, (h + 1) * D), (lens[l][h] - 1) * D);
            vFull[l][h].set(newV[l].subarray(h * D, (h + 1) * D), (lens[l][h] - 1) * D);
          }
          const want = refDecodeAttention({
            q: q[l],
            k: lens[l].map((n, h) => kFull[l][h].subarray(0, n * D)),
            v: lens[l].map((n, h) => vFull[l][h].subarray(0, n * D)),
            headDim: D,
            groupSize: G,
          });
          const err = relError(f32(dev.download(bufs[l].out)), want);
          assert.ok(err <= 1e-4, `layer ${l}, lengths ${lens[l]}: error ${err} (seed ${SEED})`);
        });
      }
    } finally {
      for (const b of bufs) for (const x of Object.values(b)) x.dispose();
    }
    // setLengths writes one window, device and staging, and no other.
    caches[1].setLengths([5, 6]);
    assert.deepEqual([...caches[0].readLengths()], steps.at(-1)![0]);
    assert.deepEqual([...caches[1].readLengths()], [5, 6]);
    assert.deepEqual([...caches[2].readLengths()], steps.at(-1)![2]);
    // A single layer's upload (the layer-by-layer prefill) copies that window alone.
    caches[0].lengths.set([1, 2]);
    caches[2].lengths.set([3, 4]);
    using one = dev.commands();
    one.begin();
    caches[2].recordLengthsUpload(one);
    one.end();
    dev.waitSync("compute", one.submit());
    assert.deepEqual([...caches[0].readLengths()], steps.at(-1)![0]);
    assert.deepEqual([...caches[2].readLengths()], [3, 4]);
  } finally {
    for (const c of caches) c.dispose();
  }
});

Deno.test("lengths arena: the buffers stay while a cache holds a window, and go with the last", () => {
  using dev = Device.open();
  const arena = KvLengths.create(dev, { layers: 2, heads: 3 });
  const a = KvLayerCache.create(dev, {
    headDim: 8,
    capRows: [4, 4, 4],
    lengths: { arena, layer: 1 },
  });
  // A cache that replaces another of the same layer reads the same lengths.
  const b = KvLayerCache.create(dev, {
    headDim: 8,
    capRows: [9, 9, 9],
    lengths: { arena, layer: 1 },
  });
  a.setLengths([1, 2, 3]);
  assert.deepEqual([...b.lengths], [1, 2, 3]);
  arena.dispose();
  assert.equal(arena.buffer.disposed, false);
  assert.throws(
    () => KvLayerCache.create(dev, { headDim: 8, capRows: [4], lengths: { arena, layer: 0 } }),
    /disposed/,
  );
  a.dispose();
  b.setLengths([4, 4, 4]);
  assert.deepEqual([...b.readLengths()], [4, 4, 4]);
  assert.equal(arena.buffer.disposed, false);
  b.dispose();
  assert.equal(arena.buffer.disposed, true);
  assert.equal(arena.staging.disposed, true);
  // A cache made alone has an arena of its own, freed with it.
  const c = KvLayerCache.create(dev, { headDim: 8, capRows: [2, 2] });
  assert.equal(c.lengthsArena.layers, 1);
  c.dispose();
  assert.equal(c.lengthsArena.buffer.disposed, true);
  // Windows and head counts outside the arena are errors.
  using small = KvLengths.create(dev, { layers: 1, heads: 2 });
  assert.throws(
    () =>
      KvLayerCache.create(dev, {
        headDim: 8,
        capRows: [1, 1],
        lengths: { arena: small, layer: 1 },
      }),
    /outside/,
  );
  assert.throws(
    () =>
      KvLayerCache.create(dev, {
        headDim: 8,
        capRows: [1, 1, 1],
        lengths: { arena: small, layer: 0 },
      }),
    /do not fit/,
  );
});

/** Every policy's decode caches (after a generation, and after a continuation that moves the
 * compressed ones) share one arena, and a step uploads their lengths in one transfer. */
async function oneArenaPerPolicy(path: string, prefill: "chunked" | "layered"): Promise<void> {
  await using model = await loadModel(path);
  const four = model.config.nKvHeads === 4;
  const profile = uniformProfile(
    model.config.nLayers,
    four ? ["satellite", "pivot", "satellite", "anchor"] : ["pivot", "satellite"],
    four ? [1.2, -1, 0.8, 1] : [-1, 1],
  );
  const policies: CacheOptions[] = [
    { cache: "full" },
    { cache: "snapkv", keep: 0.5 },
    { cache: "streaming", keep: 0.5 },
    { cache: "heterocache", keep: 0.5, profile },
  ];
  const prompt = Array.from({ length: 24 }, (_, i) => 40 + ((i * 7) % 200));
  const turn = Array.from({ length: 5 }, (_, i) => 60 + i);
  const greedy = { temperature: 0, ignoreEos: true } as const;
  const d = model.device;
  for (const opts of policies) {
    using s = model.session({ ...opts, contextTokens: 96 });
    const r = await s.complete(prompt, { ...greedy, maxTokens: 6, prefill });
    assert.equal(r.completionTokens, 6);
    for (const when of ["after a generation", "after a continuation"]) {
      const arenas = new Set(s.policy.caches.map((c) => c.lengthsArena));
      assert.equal(arenas.size, 1, `${opts.cache} ${when}: ${arenas.size} arenas`);
      assert.equal(s.policy.caches.length, model.config.nLayers);
      // Layer l at window l: no two layers share lengths (they often agree, so no forward
      // comparison would notice).
      assert.deepEqual(s.policy.caches.map((c) => c.lengthsLayer), [...s.policy.caches.keys()]);
      if (opts.cache === "full") {
        // The last submission was a decode step: the lengths upload and at most the copy of the
        // last position's hidden state (per-layer uploads made it nLayers + 1).
        const t = d.lastComputeSubmit!.transfers;
        assert.ok(t <= 2, `${opts.cache} ${when}: ${t} transfers in the decode step`);
      }
      using cmd = d.commands();
      cmd.begin();
      recordLengthsUploads(cmd, s.policy.caches);
      cmd.end();
      assert.equal(cmd.counts.transfers, 1, `${opts.cache} ${when}`);
      if (when === "after a generation") {
        // Past the 6 new rows each compressed head was sized for: its caches move.
        const before = s.policy.caches;
        await s.complete(turn, { ...greedy, maxTokens: 30, continue: true });
        if (opts.cache !== "full") assert.notEqual(s.policy.caches, before, "moved");
      }
    }
  }
}

Deno.test("lengths arena: every policy's caches share one, one upload per step (stories260K)", async () => {
  await oneArenaPerPolicy(sharedPath("models/stories260K.gguf"), "chunked");
});

Deno.test("lengths arena: rings and global layers share one, layer by layer too (gemma3 synthetic)", async () => {
  const path = await Deno.makeTempFile({ suffix: ".gguf" });
  try {
    await writeSyntheticModel(path, { ...archSpec("gemma3", 7), contextLength: 256 });
    await oneArenaPerPolicy(path, "layered");
  } finally {
    await Deno.remove(path);
  }
});
