/**
 * The tiled prompt matmul (src/kernels/matmul.ts) against the plain-TS reference over the
 * dequantized weights (testing/reference_matvec.ts, which takes batches), on fresh random data
 * every run: every weight type in the CPU and GPU tile shapes, row counts and token counts that
 * are not multiples of the tile (ragged last tiles in both directions), several K steps, the
 * accumulate flag, a weight at an offset, padded x columns, a split into row ranges, the CPU
 * path's all-texel kernel (F32/F16/BF16) and its shared-memory fallback, and the variants with a
 * deliberately broken tile index, which must fail the same check.
 */
import assert from "node:assert/strict";
import { isHcError } from "../src/errors.ts";
import { GgmlType } from "../src/gguf/types.ts";
import { MatMul, type MatMulOptions, type MatMulPlan } from "../src/kernels/matmul.ts";
import { quantize } from "../src/model/quant/mod.ts";
import { referenceMatvec } from "../testing/reference_matvec.ts";
import { Device } from "../src/vk/mod.ts";
import { randomF32 } from "./helpers.ts";

const SEED = Date.now() >>> 0;
let seedCounter = 0;
const nextSeed = () => (SEED + 7919 * ++seedCounter) >>> 0;

const TYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_K", "Q6_K"] as const;
type TypeName = typeof TYPES[number];
const tolerance = (t: TypeName) => (t === "F32" || t === "F16" || t === "BF16" ? 1e-4 : 1e-3);

function normRelError(a: Float32Array, b: Float32Array): number {
  if (a.length !== b.length) return Infinity;
  let d = 0, n = 0;
  for (let i = 0; i < a.length; i++) {
    d += (a[i] - b[i]) ** 2;
    n += b[i] ** 2;
  }
  const r = Math.sqrt(d) / Math.sqrt(n || 1);
  return Number.isNaN(r) ? Infinity : r;
}

interface Case {
  type: TypeName;
  rows: number;
  cols: number;
  tokens: number;
  accumulate?: boolean;
  weightOffset?: number;
  /** Floats between x columns (default cols). */
  xStride?: number;
  options?: MatMulOptions;
}

let shared: Device | null = null;
const kernels = new Map<string, MatMul>();

function matmulFor(dev: Device, type: TypeName, options: MatMulOptions = {}): MatMul {
  const key = `${type} ${JSON.stringify(options)}`;
  let mm = kernels.get(key);
  if (!mm) {
    mm = new MatMul(dev, GgmlType[type], options);
    kernels.set(key, mm);
  }
  return mm;
}

/** [relative error against the reference, plan]. */
function run(dev: Device, c: Case): [number, MatMulPlan] {
  const xStride = c.xStride ?? c.cols;
  const weight = quantize(GgmlType[c.type], randomF32(c.rows * c.cols, nextSeed()));
  const x = randomF32((c.tokens - 1) * xStride + c.cols, nextSeed());
  const yInit = c.accumulate ? randomF32(c.tokens * c.rows, nextSeed(), 4) : undefined;
  const want = referenceMatvec({
    type: GgmlType[c.type],
    weight,
    rows: c.rows,
    cols: c.cols,
    x,
    batch: c.tokens,
    xStride,
    yInit,
  });
  const offset = c.weightOffset ?? 0;
  // Garbage around the weight: a tile reading outside its rows would pick it up.
  const bytes = offset + weight.length + 64;
  const filler = new Uint8Array(bytes).map((_, i) => (i * 131 + 7) & 0xff);
  filler.set(weight, offset);
  using wbuf = dev.buffer(bytes);
  dev.upload(wbuf, filler);
  using xbuf = dev.buffer(x.byteLength);
  dev.upload(xbuf, x);
  using ybuf = dev.buffer(c.tokens * c.rows * 4);
  dev.upload(ybuf, yInit ?? new Float32Array(c.tokens * c.rows).fill(Number.NaN));
  const mm = matmulFor(dev, c.type, c.options);
  using cmd = dev.commands();
  cmd.begin();
  const plan = mm.record(cmd, {
    weight: wbuf,
    weightOffset: offset,
    rows: c.rows,
    cols: c.cols,
    x: xbuf,
    y: ybuf,
    batch: c.tokens,
    xStride,
    accumulate: c.accumulate,
  });
  cmd.end();
  dev.waitSync("compute", cmd.submit());
  return [normRelError(new Float32Array(dev.download(ybuf).buffer), want), plan];
}

function check(dev: Device, c: Case): MatMulPlan {
  const [err, plan] = run(dev, c);
  const what = `${c.type} ${c.rows}x${c.cols}, ${c.tokens} tokens${
    c.accumulate ? " accumulate" : ""
  } via ${plan.kernel}`;
  assert.ok(
    err <= tolerance(c.type),
    `${what}: relative error ${err.toExponential(2)} (seed ${SEED})`,
  );
  return plan;
}

/** K of a few steps for every type (Q4_K and Q6_K blocks hold 256). */
const colsOf = (t: TypeName) => (t === "Q4_K" || t === "Q6_K" ? 512 : 96);

function withDevice(fn: (dev: Device) => void): () => void {
  return () => {
    shared ??= Device.open();
    fn(shared);
  };
}

Deno.test(
  "matmul: every type, CPU tile shape, ragged rows and tokens",
  withDevice((dev) => {
    for (const type of TYPES) {
      const plan = check(dev, {
        type,
        rows: 37,
        cols: colsOf(type),
        tokens: 70,
        options: { shape: "cpu" },
      });
      // 37 rows and 70 tokens end in partial tiles both ways.
      assert.ok(37 % plan.tileRows !== 0 && 70 % plan.tileTokens !== 0, JSON.stringify(plan));
    }
  }),
);

Deno.test(
  "matmul: F32/F16/BF16 on the CPU shape take the texel kernel where allowed, else shared memory",
  withDevice((dev) => {
    for (const type of ["F32", "F16", "BF16"] as const) {
      const texel = check(dev, {
        type,
        rows: 45,
        cols: 96,
        tokens: 133,
        options: { shape: "cpu" },
      });
      assert.equal(texel.kernel.includes("texel"), dev.info.texelBuffer, texel.kernel);
      const shared = check(dev, {
        type,
        rows: 45,
        cols: 96,
        tokens: 133,
        accumulate: true,
        options: { shape: "cpu", texel: false },
      });
      assert.ok(!shared.kernel.includes("texel"), shared.kernel);
    }
  }),
);

Deno.test(
  "matmul: every type, GPU tile shape, ragged rows and tokens, accumulate",
  withDevice((dev) => {
    for (const type of TYPES) {
      const plan = check(dev, {
        type,
        rows: 21,
        cols: colsOf(type),
        tokens: 259,
        accumulate: true,
        options: { shape: "gpu" },
      });
      assert.ok(21 % plan.tileRows !== 0 && 259 % plan.tileTokens !== 0, JSON.stringify(plan));
    }
  }),
);

Deno.test(
  "matmul: weight at an offset, padded x columns, one token, a row-range split",
  withDevice((dev) => {
    check(dev, { type: "Q8_0", rows: 19, cols: 64, tokens: 5, weightOffset: 36, xStride: 68 });
    check(dev, { type: "F16", rows: 33, cols: 128, tokens: 1, weightOffset: 48 });
    check(dev, { type: "Q6_K", rows: 18, cols: 256, tokens: 9, weightOffset: 4, xStride: 260 });
    // maxStorageBufferRange is 128 MiB: a 4100 x 8192 F32 weight (134 MB) needs two ranges.
    if (dev.info.maxStorageBufferRange <= 134 * 2 ** 20) {
      const plan = check(dev, { type: "F32", rows: 4100, cols: 8192, tokens: 3 });
      assert.equal(plan.dispatches, 2);
    }
  }),
);

Deno.test(
  "matmul: a tile index off by one row fails the reference check",
  withDevice((dev) => {
    const cases: [TypeName, MatMulOptions][] = [
      ["F16", { shape: "cpu" }],
      ["F16", { shape: "cpu", texel: false }],
      ["Q4_K", { shape: "cpu" }],
    ];
    for (const [type, options] of cases) {
      const c: Case = { type, rows: 40, cols: colsOf(type), tokens: 20 };
      check(dev, { ...c, options });
      const [err, plan] = run(dev, { ...c, options: { ...options, brokenTileIndex: true } });
      assert.match(plan.kernel, /shift/);
      assert.ok(err > 0.1, `${type}: the broken tile index passed (error ${err})`);
    }
  }),
);

Deno.test(
  "matmul: unsupported layouts and bad arguments are clear errors",
  withDevice((dev) => {
    const mm = matmulFor(dev, "F16", { shape: "cpu" });
    assert.equal(mm.supports(100), false);
    assert.equal(mm.supports(128, 8), false);
    assert.equal(matmulFor(dev, "Q4_K", { shape: "cpu" }).supports(288), false);
    using w = dev.buffer(4096);
    using x = dev.buffer(4096);
    using y = dev.buffer(4096);
    using cmd = dev.commands();
    cmd.begin();
    const bad = (f: () => void, code: string) =>
      assert.throws(f, (e: unknown) => isHcError(e) && e.code === code);
    bad(() => mm.record(cmd, { weight: w, rows: 4, cols: 100, x, y }), "E_BAD_REQUEST");
    bad(() => mm.record(cmd, { weight: w, rows: 64, cols: 64, x, y }), "E_VK_LIMIT");
    bad(() => mm.record(cmd, { weight: w, rows: 4, cols: 64, x, y, batch: 0 }), "E_BAD_REQUEST");
    cmd.end();
  }),
);

Deno.test("matmul: release the device", () => {
  for (const mm of kernels.values()) mm.dispose();
  kernels.clear();
  shared?.close();
  shared = null;
});
