/**
 * The device top-k's paths (shaders/scores_topk.comp) against testing/reference_attention.ts
 * refTopK: the sample select, the radix histograms that finish in shared memory after a sample
 * misses, the six-pass select where the k-th value's bin never fits (many equal values), and a
 * row that fits in shared memory whole. Test builds of the kernel show which rows took which
 * path: HC_TEST_BREAK counts the shared candidates for the wrong invocation (only rows that went
 * through shared memory come out wrong), HC_TEST_MISS turns the sample's bracket inside out (empty on distinct values), so the
 * sample select misses.
 */
import assert from "node:assert/strict";
import { Device } from "../src/vk/mod.ts";
import { TopK } from "../src/kernels/scores.ts";
import { refTopK } from "../testing/reference_attention.ts";
import { topkSet } from "../src/cache/profile/analysis.ts";
import { rng } from "./helpers.ts";
import { compileShader } from "../vk-native/build.ts";

const SEED = Date.now() >>> 0;
let seedCounter = SEED;
const nextSeed = () => (seedCounter = (seedCounter + 0x9e3779b9) >>> 0);

interface Layout {
  /** Floats before row 0 and between row starts. */
  rowOffset: number;
  rowStride: number;
  /** A whole number of texels (the texel path on CPU devices) or not (the storage path). */
  texel: boolean;
}

/** Runs TopK over `rows` (each n long) laid out per `l`, the output at an offset and a stride
 * wider than k; returns each row's min(k, n) indices. */
function runTopK(dev: Device, rows: Float32Array[], n: number, k: number, l: Layout) {
  using topk = new TopK(dev);
  const end = l.rowOffset + rows.length * l.rowStride;
  const data = new Float32Array(l.texel ? Math.ceil(end / 4) * 4 : (end >> 2) * 4 + 5);
  data.fill(2); // above every row value: a read outside its row shows
  rows.forEach((r, i) => data.set(r, l.rowOffset + i * l.rowStride));
  const kk = Math.min(k, n);
  const outOffset = 3, outStride = kk + 2;
  using rowBuf = dev.buffer(data.byteLength);
  using out = dev.buffer((outOffset + rows.length * outStride) * 4);
  dev.upload(rowBuf, data);
  using cmd = dev.commands();
  cmd.begin();
  topk.record(cmd, {
    rows: rowBuf,
    rowOffset: l.rowOffset,
    rowStride: l.rowStride,
    rowCount: rows.length,
    n,
    k,
    out,
    outOffset,
    outStride,
  });
  cmd.end();
  const cpuTexel = dev.info.type === "cpu" && dev.info.texelBuffer;
  assert.equal(topk.lastBinding, l.texel && cpuTexel ? "texel" : "storage");
  dev.waitSync("compute", cmd.submit());
  const bytes = dev.download(out);
  const all = new Uint32Array(bytes.buffer, bytes.byteOffset, outOffset + rows.length * outStride);
  return rows.map((_, i) => all.slice(outOffset + i * outStride, outOffset + i * outStride + kk));
}

const N = 131_072;

/** Rows of N values: distinct, with NaN/-0/+0/negatives, and two kinds of ties. */
function rowsOf(cap: number) {
  const r = rng(nextSeed());
  const uniform = Float32Array.from({ length: N }, () => r());
  const spread = Float32Array.from({ length: N }, () => Math.exp(-20 * r()));
  const odd = Float32Array.from(
    { length: N },
    (_, i) => (i % 97 === 0 ? NaN : i % 89 === 0 ? -0 : i % 83 === 0 ? 0 : r() - 0.5),
  );
  // 8 levels: every level holds about N / 8 equal values, more than shared memory holds.
  const flood = Float32Array.from({ length: N }, () => Math.floor(r() * 8) / 8);
  // 48 levels: the k-th value's ties fit in shared memory.
  const ties = Float32Array.from({ length: N }, () => Math.floor(r() * 48) / 48);
  assert.ok(N / 8 > 1.5 * cap && N / 48 < 0.9 * cap, `candidate cap ${cap}: re-pick the levels`);
  return { uniform, spread, odd, flood, ties };
}

function check(got: Uint32Array[], rows: Float32Array[], k: number, what: string): void {
  rows.forEach((row, i) => {
    assert.deepEqual(got[i], refTopK(row, k), `${what}: row ${i} k ${k} (seed ${SEED})`);
  });
}

/** How many of `rows` come out different from the reference. */
function wrongRows(got: Uint32Array[], rows: Float32Array[], k: number): number {
  return rows.filter((row, i) => {
    const want = refTopK(row, k);
    return got[i].length !== want.length || got[i].some((v, j) => v !== want[j]);
  }).length;
}

const LAYOUTS: Layout[] = [
  { rowOffset: 0, rowStride: N, texel: true },
  // Rows that start inside a texel, and a buffer that is not whole texels (storage path).
  { rowOffset: 7, rowStride: N + 5, texel: true },
  { rowOffset: 2, rowStride: N + 3, texel: false },
];

Deno.test("top-k: every path exact at 128K values (sample, ties, NaN, -0, k edges, layouts)", () => {
  using dev = Device.open();
  using probe = new TopK(dev);
  const { uniform, spread, odd, flood, ties } = rowsOf(probe.candidateCap);
  const rows = [uniform, spread, odd, flood, ties];
  for (const [k, l] of [[10_000, 0], [10_000, 1], [10_000, 2], [1, 1], [N - 1, 2], [65_536, 0]]) {
    const got = runTopK(dev, rows, N, k, LAYOUTS[l]);
    check(got, rows, k, `layout ${l}`);
    rows.forEach((row, i) => {
      assert.deepEqual(Int32Array.from(got[i]), topkSet(row, k), `row ${i} k ${k}: topkSet`);
    });
  }
});

Deno.test("top-k: rows not a multiple of 4, shorter than the sample, and that fit whole", () => {
  using dev = Device.open();
  using probe = new TopK(dev);
  const cap = probe.candidateCap;
  const r = rng(nextSeed());
  // n <= cap: the whole row in shared memory; cap < n <= 2 cap: every value sampled; then more.
  for (const n of [13, cap - 1, cap + 3, 2 * cap + 1, 50_001]) {
    const rows = [0, 1, 2].map((j) =>
      Float32Array.from(
        { length: n },
        (_, i) => j === 2 ? (i % 7) / 7 : j === 1 && i % 5 === 0 ? NaN : r(),
      )
    );
    for (const k of [1, Math.floor(n / 3), n - 1]) {
      for (
        const l of [{ rowOffset: 1, rowStride: n + 2, texel: true }, {
          rowOffset: 0,
          rowStride: n,
          texel: false,
        }]
      ) {
        check(runTopK(dev, rows, n, k, l), rows, k, `n ${n} texel ${l.texel}`);
      }
    }
  }
});

/** Compiles scores_topk.comp (storage and texel) with `defines` into `dir`. */
async function buildTest(dir: string, defines: string[]): Promise<void> {
  for (const [name, texel] of [["scores_topk", false], ["scores_topk_texel", true]] as const) {
    const defs = Object.fromEntries([...defines, ...(texel ? ["TEXEL"] : [])].map((d) => [d, 1]));
    const r = await compileShader("scores_topk.comp", `${dir}/${name}.spv`, defs);
    assert.ok(r.ok, r.out);
  }
}

Deno.test("top-k: test builds show each row's path; a broken candidate count fails", async () => {
  const root = await Deno.makeTempDir();
  try {
    const dirs = { broken: `${root}/broken`, miss: `${root}/miss`, missBroken: `${root}/mb` };
    await Promise.all([
      Deno.mkdir(dirs.broken).then(() => buildTest(dirs.broken, ["HC_TEST_BREAK"])),
      Deno.mkdir(dirs.miss).then(() => buildTest(dirs.miss, ["HC_TEST_MISS"])),
      Deno.mkdir(dirs.missBroken).then(() =>
        buildTest(dirs.missBroken, ["HC_TEST_MISS", "HC_TEST_BREAK"])
      ),
    ]);
    const cap = (() => {
      using dev = Device.open();
      using t = new TopK(dev);
      return t.candidateCap;
    })();
    const { uniform, spread, odd, flood, ties } = rowsOf(cap);
    const k = 10_000;
    for (const l of [LAYOUTS[1], LAYOUTS[2]]) {
      {
        // The sample select copies every row but flood into shared memory: the broken count
        // spoils them; flood's bins never fit, so its six-pass select is untouched.
        using dev = Device.open(undefined, { shaderDir: dirs.broken });
        const sampled = [uniform, spread, odd, ties];
        assert.equal(wrongRows(runTopK(dev, sampled, N, k, l), sampled, k), sampled.length);
        check(runTopK(dev, [flood], N, k, l), [flood], k, "flood, broken copy");
      }
      {
        // A bracket that misses: the radix histograms take over and stay exact ...
        using dev = Device.open(undefined, { shaderDir: dirs.miss });
        const rows = [uniform, spread, odd, flood, ties];
        check(runTopK(dev, rows, N, k, l), rows, k, "missed sample");
      }
      {
        // ... and finish in shared memory: uniform and spread, distinct values, missed the
        // sample for sure, so their copy came from the histograms.
        using dev = Device.open(undefined, { shaderDir: dirs.missBroken });
        const rows = [uniform, spread];
        assert.equal(wrongRows(runTopK(dev, rows, N, k, l), rows, k), rows.length);
      }
    }
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
