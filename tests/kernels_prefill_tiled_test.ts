/**
 * The GPU prefill attention (shaders/attn_prefill.comp, PrefillAttention variant "tiled")
 * against testing/reference_attention.ts on fresh random data: head dims 64 and 128, GQA groups
 * of 1, 4 and 8, prompts that are not multiples of the tile, continuation chunks (p0 > 0), key
 * passes, sliding-window rings and soft-capping, through the subgroup twin and the shared-memory
 * fallback. lavapipe runs it at 8-lane subgroups (each 64-row workgroup is 32 subgroups). A
 * build with a deliberately broken tile index must fail the same comparison.
 */
import assert from "node:assert/strict";
import { Device } from "../src/vk/mod.ts";
import { PrefillAttention } from "../src/kernels/attention.ts";
import { prefillTileShape } from "../src/kernels/attention_tiles.ts";
import { KvLayerCache } from "../src/cache/kv_layer.ts";
import {
  f16ScaledQueries,
  refPrefillAttention,
  roundToF16,
} from "../testing/reference_attention.ts";
import { f32ToF16Array } from "../src/model/quant/mod.ts";
import { randomF32, relError, runPrefill } from "./helpers.ts";
import { compileShader } from "../vk-native/build.ts";

const SEED = Date.now() >>> 0;
let seedCounter = SEED;
const nextSeed = () => (seedCounter = (seedCounter + 0x9e3779b9) >>> 0);
const TOL = 1e-4;

interface Case {
  D: number;
  G: number;
  nKv: number;
  /** Query tokens, at positions p0 .. p0 + B - 1. */
  B: number;
  p0: number;
  keysPerPass?: number;
  /** Sliding window W: the heads are rings of W + B - 1 + extra rows. */
  window?: number;
  extra?: number;
  softcap?: number;
}

/** Heads holding positions 0 .. len - 1: row = position, or a ring whose dropped rows (and the
 * rows past the length) hold garbage the kernel must not read. */
function fillCache(dev: Device, c: Case, len: number) {
  const window = c.window ?? 0;
  const cap = window > 0 ? window + c.B - 1 + (c.extra ?? 0) : len + 3;
  const cache = KvLayerCache.create(dev, {
    headDim: c.D,
    capRows: Array(c.nKv).fill(cap),
    window,
  });
  const k: Float32Array[] = [];
  const v: Float32Array[] = [];
  for (let h = 0; h < c.nKv; h++) {
    const kAll = roundToF16(randomF32(len * c.D, nextSeed()));
    const vAll = roundToF16(randomF32(len * c.D, nextSeed()));
    const kRows = roundToF16(randomF32(cap * c.D, nextSeed(), 100));
    const vRows = roundToF16(randomF32(cap * c.D, nextSeed(), 100));
    for (let p = Math.max(0, len - cap); p < len; p++) {
      kRows.set(kAll.subarray(p * c.D, (p + 1) * c.D), (p % cap) * c.D);
      vRows.set(vAll.subarray(p * c.D, (p + 1) * c.D), (p % cap) * c.D);
    }
    const loc = cache.location(h, 0);
    dev.upload(loc.k, f32ToF16Array(kRows), loc.byteOffset);
    dev.upload(loc.v, f32ToF16Array(vRows), loc.byteOffset);
    k.push(kAll);
    v.push(vAll);
  }
  cache.setLengths(Array(c.nKv).fill(len));
  return { cache, k, v };
}

/** The kernel's output and the reference's for one case, on the kernels `attn` of `dev`. */
function run(
  dev: Device,
  attn: PrefillAttention,
  c: Case,
): { got: Float32Array; want: Float32Array } {
  const fc = fillCache(dev, c, c.p0 + c.B);
  try {
    const q = randomF32(c.B * c.nKv * c.G * c.D, nextSeed(), 3);
    const got = runPrefill(dev, attn, q, {
      cache: fc.cache,
      tokens: c.B,
      position: c.p0,
      keysPerPass: c.keysPerPass,
      softcap: c.softcap,
    });
    const want = refPrefillAttention({
      q: f16ScaledQueries(q, c.D),
      tokens: c.B,
      position: c.p0,
      k: fc.k,
      v: fc.v,
      headDim: c.D,
      groupSize: c.G,
      window: c.window,
      softcap: c.softcap,
    });
    return { got, want };
  } finally {
    fc.cache.dispose();
  }
}

function label(c: Case): string {
  return `D=${c.D} G=${c.G} nKv=${c.nKv} B=${c.B} p0=${c.p0} pass=${c.keysPerPass} ` +
    `W=${c.window ?? 0} cap=${c.softcap ?? 0} (seed ${SEED})`;
}

/** Runs the cases of one (D, G, softcap) kernel on a device, each within TOL of the reference. */
function check(
  dev: Device,
  D: number,
  G: number,
  softcap: boolean,
  cases: Omit<Case, "D" | "G">[],
) {
  using attn = new PrefillAttention(dev, { headDim: D, groupSize: G, variant: "tiled", softcap });
  for (const rest of cases) {
    const c = { D, G, ...rest };
    const { got, want } = run(dev, attn, c);
    const err = relError(got, want);
    assert.ok(err <= TOL, `${label(c)}: relative error ${err.toExponential(3)} > ${TOL}`);
  }
}

// Lengths 1, 37, 100 and 300 cut the 64-row tiles (and the 8- and 16-token tiles of G = 8 and
// G = 4) and the 64-key tiles mid-way; p0 > 0 is a continuation chunk, whose first tiles lie
// wholly below the diagonal.
const LENGTHS: Omit<Case, "D" | "G">[] = [
  { nKv: 2, B: 1, p0: 0 },
  { nKv: 2, B: 37, p0: 0 },
  { nKv: 1, B: 100, p0: 77 },
  { nKv: 2, B: 300, p0: 0 },
  { nKv: 1, B: 37, p0: 200, keysPerPass: 100 }, // three key passes carrying the state
];

for (const subgroups of [true, false]) {
  const path = subgroups ? "subgroup shuffles" : "shared-memory fallback";
  Deno.test(`prefill tiled (${path}): head dims 64/128, GQA 1/4/8, ragged lengths, p0 > 0`, () => {
    using dev = Device.open(undefined, { subgroups });
    for (const D of [64, 128]) {
      for (const G of [1, 4, 8]) check(dev, D, G, false, LENGTHS);
    }
  });

  Deno.test(`prefill tiled (${path}): sliding-window rings and logit soft-capping`, () => {
    using dev = Device.open(undefined, { subgroups });
    // A ring of exactly W + B - 1 rows, wrapped; several passes inside the window; the first
    // tokens seeing fewer than W keys; a window longer than one key tile.
    check(dev, 64, 4, false, [
      { nKv: 2, B: 37, p0: 50, window: 24 },
      { nKv: 1, B: 37, p0: 50, window: 24, extra: 5, keysPerPass: 10 },
      { nKv: 1, B: 20, p0: 0, window: 8, extra: 3 },
      { nKv: 1, B: 100, p0: 300, window: 130 },
    ]);
    check(dev, 128, 8, true, [
      { nKv: 1, B: 37, p0: 0, softcap: 2 },
      { nKv: 1, B: 9, p0: 300, window: 70, softcap: 2 },
    ]);
  });
}

Deno.test("prefill tiled: head dims 8, 80 and 256 (narrow, unswizzled and 32-row tiles)", () => {
  for (const subgroups of [true, false]) {
    using dev = Device.open(undefined, { subgroups });
    check(dev, 8, 1, false, [{ nKv: 2, B: 37, p0: 20 }]);
    // 10 columns of 8 dims: a swizzle over pairs, lanes past the last column idle.
    check(dev, 80, 2, false, [{ nKv: 1, B: 37, p0: 70 }]);
    check(dev, 256, 8, false, [{ nKv: 1, B: 20, p0: 50, keysPerPass: 40 }]);
  }
});

Deno.test("prefill tiled: the tile shape follows shared memory and subgroups", () => {
  using dev = Device.open();
  const view = (shared: number, subgroups: boolean, subgroupSize = 32) =>
    Object.create(dev, {
      info: {
        value: {
          ...dev.info,
          maxComputeSharedMemoryBytes: shared,
          subgroupSize,
          maxComputeWorkGroupInvocations: 1024,
        },
      },
      subgroups: { value: subgroups },
    }) as Device;
  const shape = (d: Device, D: number, G = 4) => {
    const s = prefillTileShape(d, D, G);
    return [s.rows, s.keys, s.workgroupSize, s.subgroup];
  };
  // Subgroups: queries and one K/V tile in f16 (32 KiB at head dim 128: lavapipe's limit).
  assert.deepEqual(shape(view(32768, true), 128), [64, 64, 256, true]);
  assert.deepEqual(shape(view(32768, true), 256), [32, 32, 128, true]);
  assert.deepEqual(shape(view(49152, true), 256), [64, 32, 256, true]);
  // The fallback adds an f32 score tile.
  assert.deepEqual(shape(view(49152, false), 128), [64, 64, 256, false]);
  assert.deepEqual(shape(view(32768, false), 128), [64, 32, 256, false]);
  // 4-lane subgroups: row groups of 4 lanes.
  const four = prefillTileShape(view(32768, true, 4), 64, 4);
  assert.deepEqual([four.lanesPerGroup, four.workgroupSize], [4, 128]);
  // No tile fitting is a limit, not a bad read.
  assert.throws(() => prefillTileShape(view(1024, true), 128, 4), /no tile/);
  // The device itself: every shape fits what it declares.
  const own = prefillTileShape(dev, 128, 4);
  assert.ok(own.sharedBytes <= dev.info.maxComputeSharedMemoryBytes);
  assert.equal(own.subgroup, dev.subgroups);
});

/** Compiles attn_prefill.comp with HC_TEST_BREAK (the V tile's row index off) into `dir`. */
async function buildBroken(dir: string): Promise<void> {
  for (const [name, sg] of [["attn_prefill", false], ["attn_prefill__sg", true]] as const) {
    const defines = { HC_TEST_BREAK: 1, ...(sg ? { HC_SUBGROUP: 1 } : {}) };
    const r = await compileShader("attn_prefill.comp", `${dir}/${name}.spv`, defines);
    assert.ok(r.ok, r.out);
  }
}

Deno.test("prefill tiled: a broken tile index fails the reference comparison", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await buildBroken(dir);
    for (const subgroups of [true, false]) {
      using dev = Device.open(undefined, { subgroups, shaderDir: dir });
      using attn = new PrefillAttention(dev, { headDim: 64, groupSize: 4, variant: "tiled" });
      const c = { D: 64, G: 4, nKv: 1, B: 37, p0: 20 };
      const { got, want } = run(dev, attn, c);
      const err = relError(got, want);
      assert.ok(err > 1e-2, `broken kernel not caught: ${label(c)} error ${err.toExponential(3)}`);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
