/**
 * Matvec kernels (src/kernels/matvec.ts) against the plain-TS reference over the DEQUANTIZED
 * weights (testing/reference_matvec.ts), on fresh random data every run. Covers every weight
 * type on the generic (GPU) path and the CPU run path (row loop at batch 1, step variant for
 * batches; weights and x as texel buffers, or as storage buffers with 64- and 32-bit chunk
 * loads, and the fallback from texels to storage buffers), the subgroup and shared-memory
 * reductions, K = 16384,
 * row counts that are not multiples of the rows per workgroup, batches, the accumulate flag,
 * weights bound at an offset and split into row ranges, and a deliberately wrong recording.
 */
import assert from "node:assert/strict";
import { isHcError } from "../src/errors.ts";
import { GgmlType } from "../src/gguf/types.ts";
import { MatVec, type MatVecOptions, type MatVecPlan } from "../src/kernels/matvec.ts";
import { quantize } from "../src/model/quant/mod.ts";
import { referenceMatvec } from "../testing/reference_matvec.ts";
import { type Binding, Device } from "../src/vk/mod.ts";
import { randomF32 } from "./helpers.ts";

const SEED = Date.now() >>> 0;
let seedCounter = 0;
const nextSeed = () => (SEED + 7919 * ++seedCounter) >>> 0;

const TYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_K", "Q6_K"] as const;
type TypeName = typeof TYPES[number];
const typeId = (t: TypeName): number => GgmlType[t];
const tolerance = (t: TypeName) => (t === "F32" || t === "F16" || t === "BF16" ? 1e-4 : 1e-3);

/** ||a - b|| / ||b||: robust for outputs near zero, and it fails loudly on NaN. */
function normRelError(a: Float32Array, b: Float32Array): number {
  if (a.length !== b.length) return Infinity;
  let d = 0, n = 0;
  for (let i = 0; i < a.length; i++) {
    const e = a[i] - b[i];
    d += e * e;
    n += b[i] * b[i];
  }
  const r = Math.sqrt(d) / Math.sqrt(n || 1);
  return Number.isNaN(r) ? Infinity : r;
}

function assertClose(got: Float32Array, want: Float32Array, tol: number, what: string): void {
  const err = normRelError(got, want);
  assert.ok(err <= tol, `${what}: relative error ${err.toExponential(2)} > ${tol} (seed ${SEED})`);
}

interface Case {
  type: TypeName;
  rows: number;
  cols: number;
  batch?: number;
  accumulate?: boolean;
  /** Bytes of other data placed before the weight in its buffer. */
  weightOffset?: number;
  /** Spare bytes after the weight in its buffer. */
  spare?: number;
  options?: MatVecOptions;
  /** Record with these instead of the true shape (to prove the check can fail). */
  recordCols?: number;
  /** Cap on one weight binding, to force a split into row ranges. */
  maxBindingBytes?: number;
}

function randomWeight(type: TypeName, rows: number, cols: number): Uint8Array {
  return quantize(typeId(type), randomF32(rows * cols, nextSeed()));
}

/** MatVec objects (and so compiled pipelines) shared by the cases of one test. */
const pool = new Map<string, MatVec>();

function matvecFor(dev: Device, type: TypeName, options: MatVecOptions = {}): MatVec {
  const key = `${type} ${JSON.stringify(options)} ${dev.subgroups}`;
  let mv = pool.get(key);
  if (!mv || mv.device !== dev) {
    mv = new MatVec(dev, typeId(type), options);
    pool.set(key, mv);
  }
  return mv;
}

/** Disposes the pooled MatVecs of `dev` (before it closes). */
function releasePooled(dev: Device): void {
  for (const [key, mv] of pool) {
    if (mv.device !== dev) continue;
    mv.dispose();
    pool.delete(key);
  }
}

/** One device for the whole file, so each pipeline is compiled once (the last test closes it). */
let shared: Device | null = null;

function withDevice(fn: (dev: Device) => void): () => void {
  return () => {
    shared ??= Device.open();
    fn(shared);
  };
}

/** Runs one matvec on the device and returns [device result, reference, plan]. */
function runCase(dev: Device, c: Case): [Float32Array, Float32Array, MatVecPlan] {
  const batch = c.batch ?? 1;
  const weight = randomWeight(c.type, c.rows, c.cols);
  const x = randomF32(batch * c.cols, nextSeed());
  const yInit = c.accumulate ? randomF32(batch * c.rows, nextSeed(), 4) : undefined;
  const want = referenceMatvec({
    type: typeId(c.type),
    weight,
    rows: c.rows,
    cols: c.cols,
    x,
    batch,
    yInit,
  });
  const offset = c.weightOffset ?? 0;
  const spare = c.spare ?? 128;
  using wbuf = dev.buffer(offset + weight.length + spare);
  // Garbage around the weight: a kernel reading outside its rows would pick it up.
  const filler = new Uint8Array(offset + weight.length + spare).map((_, i) => (i * 131 + 7) & 0xff);
  filler.set(weight, offset);
  dev.upload(wbuf, filler);
  using xbuf = dev.buffer(x.byteLength);
  dev.upload(xbuf, x);
  using ybuf = dev.buffer(batch * c.rows * 4);
  dev.upload(ybuf, yInit ?? new Float32Array(batch * c.rows).fill(Number.NaN));
  const mv = matvecFor(dev, c.type, c.options);
  using cmd = dev.commands();
  cmd.begin();
  const plan = mv.record(cmd, {
    weight: wbuf,
    weightOffset: offset,
    rows: c.rows,
    cols: c.recordCols ?? c.cols,
    x: xbuf,
    y: ybuf,
    batch,
    xStride: c.cols,
    accumulate: c.accumulate,
    maxBindingBytes: c.maxBindingBytes,
  });
  cmd.end();
  dev.waitSync("compute", cmd.submit());
  return [new Float32Array(dev.download(ybuf).buffer), want, plan];
}

function check(dev: Device, c: Case, expect?: Partial<MatVecPlan>): MatVecPlan {
  const [got, want, plan] = runCase(dev, c);
  const what = `${c.type} ${c.rows}x${c.cols} batch ${c.batch ?? 1}${
    c.accumulate ? " accumulate" : ""
  } via ${plan.kernel}`;
  assertClose(got, want, tolerance(c.type), what);
  if (expect?.variant) assert.equal(plan.variant, expect.variant, `${what}: variant`);
  if (expect?.dispatches) assert.equal(plan.dispatches, expect.dispatches, `${what}: dispatches`);
  if (expect?.texel !== undefined) assert.equal(plan.texel, expect.texel, `${what}: texel`);
  return plan;
}

const GENERIC: MatVecOptions = { path: "generic" };
const RUN: MatVecOptions = { path: "run" };
/** The run path with storage buffers, as on devices without texel buffers. */
const RUN64: MatVecOptions = { path: "run", texel: false };
const RUN32: MatVecOptions = { path: "run", texel: false, load64: false };

Deno.test(
  "matvec: every type, generic path, rows not a multiple of the workgroup's rows",
  withDevice((dev) => {
    for (const type of TYPES) {
      const cols = type === "Q4_K" || type === "Q6_K" ? 1024 : 512;
      check(dev, { type, rows: 77, cols, options: GENERIC }, { variant: "generic" });
    }
  }),
);

Deno.test(
  "matvec: every type, run path (row loop; texel, 64- and 32-bit chunk loads)",
  withDevice((dev) => {
    for (const type of TYPES) {
      check(dev, { type, rows: 131, cols: 1024, options: RUN }, {
        variant: "rowloop",
        texel: dev.info.texelBuffer,
      });
      check(dev, { type, rows: 131, cols: 1024, options: RUN64 }, {
        variant: "rowloop",
        texel: false,
      });
    }
    // F16 and BF16 rows of 768: the row loop's half unit (3 x 256, row slices).
    for (const type of ["F16", "BF16"] as const) {
      for (const options of [RUN, RUN64, RUN32]) {
        const plan = check(dev, { type, rows: 70, cols: 768, options }, { variant: "rowloop" });
        assert.match(plan.kernel, /^matvec_rl(t|64)?h_/);
      }
    }
    const r16 = { ...RUN32, rowsPerGroup: 16 };
    check(dev, { type: "Q8_0", rows: 67, cols: 1024, options: r16 }, { variant: "rowloop" });
    check(dev, { type: "Q6_K", rows: 67, cols: 1024, options: r16 }, { variant: "rowloop" });
  }),
);

Deno.test(
  "matvec: shared-memory reductions, generic and run paths",
  () => {
    using dev = Device.open(undefined, { subgroups: false });
    try {
      for (const type of TYPES) {
        const cols = type === "Q4_K" || type === "Q6_K" ? 1024 : 512;
        check(dev, { type, rows: 45, cols, batch: 2, options: GENERIC });
      }
      check(dev, { type: "Q4_K", rows: 70, cols: 1024, options: RUN }, { variant: "rowloop" });
      check(dev, { type: "F32", rows: 21, cols: 1024, batch: 3, options: RUN }, {
        variant: "step",
      });
      check(dev, { type: "Q8_0", rows: 9, cols: 512, options: { ...GENERIC, workgroupSize: 64 } });
    } finally {
      releasePooled(dev);
    }
  },
);

Deno.test(
  "matvec: K = 16384",
  withDevice((dev) => {
    for (const type of ["F16", "Q8_0", "Q4_K"] as const) {
      check(dev, { type, rows: 40, cols: 16384, options: RUN }, { variant: "rowloop" });
      check(dev, { type, rows: 19, cols: 16384, options: GENERIC });
    }
    check(dev, { type: "Q6_K", rows: 23, cols: 16384, options: RUN }, { variant: "rowloop" });
  }),
);

Deno.test(
  "matvec: batches (step variant, generic, more than 8 columns) and the accumulate flag",
  withDevice((dev) => {
    for (const type of TYPES) {
      // Q6_K has no step variant: its row loop runs once per column.
      const variant = type === "Q6_K" ? "rowloop" : "step";
      for (const options of [RUN, RUN64]) {
        check(dev, { type, rows: 29, cols: 1024, batch: 2, accumulate: true, options }, {
          variant,
          texel: options === RUN && dev.info.texelBuffer,
        });
      }
      check(dev, { type, rows: 29, cols: 1024, batch: 2, accumulate: true, options: GENERIC });
      check(dev, { type, rows: 90, cols: 1024, accumulate: true, options: RUN });
    }
    check(dev, { type: "F32", rows: 50, cols: 1024, batch: 11, options: RUN }, { variant: "step" });
    check(dev, { type: "Q8_0", rows: 50, cols: 512, batch: 11, options: GENERIC });
    check(dev, { type: "F16", rows: 33, cols: 1024, batch: 2, options: RUN32 }, {
      variant: "step",
    });
  }),
);

Deno.test(
  "matvec: odd shapes fall back to the generic path and still match",
  withDevice((dev) => {
    // 3 blocks per row: rows start 2 bytes off a word boundary for Q8_0/Q4_0.
    check(dev, { type: "Q8_0", rows: 13, cols: 96 }, { variant: "generic" });
    check(dev, { type: "Q4_0", rows: 13, cols: 96 }, { variant: "generic" });
    // 3 super-blocks: Q6_K rows at every even phase; its row loop handles them.
    check(dev, { type: "Q6_K", rows: 19, cols: 768, options: RUN }, { variant: "rowloop" });
    check(dev, { type: "Q6_K", rows: 19, cols: 768, options: GENERIC });
    // 5 super-blocks: a row-loop unit of 4 and one of 1 (and x read clamped past the row's end).
    for (const options of [RUN, RUN64]) {
      check(dev, { type: "Q6_K", rows: 21, cols: 1280, batch: 2, accumulate: true, options }, {
        variant: "rowloop",
      });
    }
    check(dev, { type: "Q4_K", rows: 9, cols: 768 }, { variant: "generic" });
    // stories260K's FFN width: 172 columns.
    check(dev, { type: "F32", rows: 64, cols: 172 }, { variant: "generic" });
    check(dev, { type: "F16", rows: 7, cols: 172 }, { variant: "generic" });
    // The Q6_K row loop reads a window past the last block; without room it goes generic.
    check(dev, { type: "Q6_K", rows: 5, cols: 256, spare: 2 }, { variant: "generic" });
  }),
);

Deno.test(
  "matvec: weight bound at an offset and split into row ranges",
  withDevice((dev) => {
    // Offsets that are not multiples of the 32-byte-aligned binding offsets.
    check(dev, { type: "Q8_0", rows: 150, cols: 1024, weightOffset: 4096 + 16, options: GENERIC });
    check(dev, { type: "Q4_K", rows: 150, cols: 1024, weightOffset: 4096 + 32, options: RUN }, {
      variant: "rowloop",
    });
    // A small binding cap forces several dispatches whose row starts fall mid-alignment.
    const cases = [["Q8_0", GENERIC], ["Q8_0", RUN], ["Q6_K", RUN], ["F16", RUN]] as const;
    for (const [type, options] of cases) {
      const c: Case = {
        type,
        rows: 333,
        cols: 1024,
        weightOffset: 256,
        options,
        maxBindingBytes: 40_000,
      };
      const plan = check(dev, c);
      assert.ok(plan.dispatches > 3, `${type}: ${plan.dispatches} dispatches`);
    }
    const c: Case = {
      type: "Q4_K",
      rows: 200,
      cols: 1024,
      batch: 2,
      accumulate: true,
      options: RUN,
      maxBindingBytes: 10_000,
    };
    assert.ok(check(dev, c, { variant: "step" }).dispatches > 5);
  }),
);

Deno.test(
  "matvec: texel path falls back to storage buffers without texel support or room",
  withDevice((dev) => {
    if (!dev.info.texelBuffer) return; // the fallback is the only path there, tested above
    const c: Case = { type: "Q4_K", rows: 100, cols: 1024, weightOffset: 4096 + 32, options: RUN };
    const bytes = 100 * 1024 / 256 * 144;
    check(dev, c, { variant: "rowloop", texel: true, dispatches: 1 });
    // A weight over the texel view limit (here a cap) goes to storage buffers, split.
    const plan = check(dev, { ...c, maxBindingBytes: bytes - 32 }, { texel: false });
    assert.ok(plan.dispatches >= 2, `${plan.dispatches} dispatches`);
    check(dev, { ...c, batch: 3, maxBindingBytes: bytes - 32 }, { variant: "step", texel: false });
    check(dev, { ...c, type: "Q6_K", maxBindingBytes: 100 * 1024 / 256 * 210 }, { texel: false });
    // A device whose info says it lacks the format: same kernels, storage bindings.
    const noTexel = Object.create(dev, {
      info: { value: { ...dev.info, texelBuffer: false } },
    }) as Device;
    for (const batch of [1, 3]) {
      using mv = new MatVec(noTexel, GgmlType.Q4_K, RUN);
      const weight = randomWeight("Q4_K", 64, 1024);
      const x = randomF32(batch * 1024, nextSeed());
      const want = referenceMatvec({ type: GgmlType.Q4_K, weight, rows: 64, cols: 1024, x, batch });
      using wbuf = dev.buffer(weight.length);
      dev.upload(wbuf, weight);
      using xbuf = dev.buffer(x.byteLength);
      dev.upload(xbuf, x);
      using ybuf = dev.buffer(batch * 64 * 4);
      using cmd = dev.commands();
      cmd.begin();
      const plan = mv.record(cmd, { weight: wbuf, rows: 64, cols: 1024, x: xbuf, y: ybuf, batch });
      cmd.end();
      dev.waitSync("compute", cmd.submit());
      assert.equal(plan.texel, false);
      assert.ok(!/_(rl|run)t_/.test(plan.kernel), plan.kernel);
      assertClose(new Float32Array(dev.download(ybuf).buffer), want, 1e-3, `no texel ${batch}`);
    }
  }),
);

Deno.test("matvec: a weight larger than maxStorageBufferRange is split by the device limit", () => {
  using dev = Device.open();
  const rows = 2100, cols = 16384; // 137.6 MB of F32: over lavapipe's 128 MiB range
  const limit = dev.info.maxStorageBufferRange;
  const w = randomF32(rows * cols, nextSeed());
  if (w.byteLength <= limit) return; // a device with a larger range needs no split
  const x = randomF32(cols, nextSeed());
  const want = referenceMatvec({
    type: GgmlType.F32,
    weight: new Uint8Array(w.buffer),
    rows,
    cols,
    x,
  });
  using wbuf = dev.buffer(w.byteLength);
  dev.upload(wbuf, w);
  using xbuf = dev.buffer(cols * 4);
  dev.upload(xbuf, x);
  using ybuf = dev.buffer(rows * 4);
  // Storage buffers split by maxStorageBufferRange; a texel view (up to
  // maxTexelBufferElements, 2 GiB on lavapipe) takes the weight whole.
  for (const texel of [false, true]) {
    using mv = new MatVec(dev, GgmlType.F32, { texel });
    using cmd = dev.commands();
    cmd.begin();
    const plan = mv.record(cmd, { weight: wbuf, rows, cols, x: xbuf, y: ybuf });
    cmd.end();
    dev.waitSync("compute", cmd.submit());
    const whole = texel && plan.texel;
    assert.ok(whole || plan.dispatches >= 2, `${plan.dispatches} dispatches`);
    if (whole) assert.equal(plan.dispatches, 1);
    const got = new Float32Array(dev.download(ybuf).buffer);
    assertClose(got, want, 1e-4, `F32 ${rows}x${cols} ${whole ? "texel" : "split"}`);
  }
});

Deno.test(
  "matvec: a deliberately wrong recording fails the comparison",
  withDevice((dev) => {
    for (const options of [GENERIC, RUN]) {
      // Recording with cols - 512 reads every row with the wrong stride and drops 512 terms.
      const [got, want] = runCase(dev, {
        type: "Q8_0",
        rows: 64,
        cols: 2048,
        recordCols: 2048 - 512,
        options,
      });
      const err = normRelError(got, want);
      assert.ok(err > 1e-2, `a wrong cols went unnoticed (error ${err}, seed ${SEED})`);
      assert.throws(() => assertClose(got, want, 1e-3, "wrong cols"));
    }
    // cols - 32 on the generic path: still detected.
    const [got, want] = runCase(dev, {
      type: "F16",
      rows: 64,
      cols: 1024,
      recordCols: 1024 - 32,
      options: GENERIC,
    });
    assert.ok(normRelError(got, want) > 1e-2, `cols - 32 went unnoticed (seed ${SEED})`);
  }),
);

Deno.test("matvec: bad shapes and bindings are HcErrors", () => {
  using dev = Device.open();
  using w = dev.buffer(1 << 16);
  using x = dev.buffer(4096);
  using y = dev.buffer(4096);
  const rec = (
    type: number,
    over: Partial<Parameters<MatVec["record"]>[1]>,
    opts?: MatVecOptions,
  ) => {
    using mv = new MatVec(dev, type, opts);
    using cmd = dev.commands();
    cmd.begin();
    try {
      mv.record(cmd, { weight: w, rows: 16, cols: 256, x, y, ...over });
    } finally {
      cmd.end();
    }
  };
  const code = (c: string) => (e: unknown) => isHcError(e) && e.code === c;
  assert.throws(() => new MatVec(dev, GgmlType.Q8_1), code("E_MODEL_TENSOR"));
  assert.throws(() => rec(GgmlType.Q8_0, { cols: 100 }), code("E_MODEL_TENSOR"));
  assert.throws(() => rec(GgmlType.Q4_K, { cols: 128 }), code("E_MODEL_TENSOR"));
  assert.throws(() => rec(GgmlType.F16, { cols: 6 }), code("E_MODEL_TENSOR"));
  assert.throws(() => rec(GgmlType.F32, { weightOffset: 8 }), code("E_BAD_REQUEST"));
  assert.throws(() => rec(GgmlType.F32, { rows: 0 }), code("E_BAD_REQUEST"));
  assert.throws(() => rec(GgmlType.F32, { batch: 1.5 }), code("E_BAD_REQUEST"));
  assert.throws(() => rec(GgmlType.F32, { rows: 64, cols: 1024 }), code("E_VK_LIMIT")); // weight overruns
  assert.throws(() => rec(GgmlType.F32, { rows: 2000, cols: 4 }), code("E_VK_LIMIT")); // y too small
  assert.throws(
    () => rec(GgmlType.F32, { x: { buffer: x, offset: 4, bytes: 1024 } as Binding }),
    code("E_VK_LIMIT"),
  );
  assert.throws(() => rec(GgmlType.F32, { xStride: 255 }), code("E_BAD_REQUEST"));
  assert.throws(() => rec(GgmlType.Q8_0, { cols: 96 }, RUN), code("E_BAD_REQUEST")); // run path impossible
  // A Q8_0 weight ending 2 bytes short of a word at the very end of its buffer.
  using tight = dev.buffer(34 * 3);
  assert.throws(() => rec(GgmlType.Q8_0, { weight: tight, rows: 1, cols: 96 }), code("E_VK_LIMIT"));
});

Deno.test("matvec: release the shared device", () => {
  if (shared) releasePooled(shared);
  shared?.close();
  shared = null;
});
