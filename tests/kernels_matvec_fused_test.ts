/**
 * The matvec kernels' decode fusions (src/kernels/matvec.ts `norm` and `glu`) against the TS
 * reference on fresh random data: RMSNorm of x folded into the product, and gate/up rows paired
 * in one product that writes act(gate) * up. Every weight type on the generic (GPU) path, the
 * CPU run path's row loop over texels, 64- and 32-bit storage loads and the lanes layout, the
 * subgroup and shared-memory reductions, output counts that are not multiples of a
 * workgroup's rows, row-loop slices, several columns, and wrong recordings that must fail.
 */
import assert from "node:assert/strict";
import { isHcError } from "../src/errors.ts";
import { GgmlType } from "../src/gguf/types.ts";
import { MatVec, type MatVecOptions, type MatVecPlan } from "../src/kernels/matvec.ts";
import { lanesLayoutType, toLanesLayout } from "../src/kernels/matvec_layout.ts";
import { quantizeAny } from "../testing/quantizers.ts";
import { ORACLE_TYPES, type OracleType } from "../testing/llamacpp_oracle.ts";
import { referenceMatvec } from "../testing/reference_matvec.ts";
import { gegluRef, swigluRef } from "../testing/reference_ops.ts";
import { Device } from "../src/vk/mod.ts";
import { randomF32, relError } from "./helpers.ts";

const SEED = Date.now() >>> 0;
let seedCounter = 0;
const nextSeed = () => (SEED + 7919 * ++seedCounter) >>> 0;

// Every weight type the engine runs (the llama.cpp fixtures cover them all).
const ALL_TYPES = ORACLE_TYPES;
const RUN_TYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_K", "Q6_K"] as const;
type TypeName = OracleType;

interface Case {
  type: TypeName;
  /** Output rows (with glu: F; the weight then holds 2F rows). */
  rows: number;
  cols: number;
  batch?: number;
  norm?: boolean;
  glu?: "silu" | "gelu";
  options?: MatVecOptions;
  lanes?: boolean;
  /** Record the norm weight but check against the un-normalised product (must fail). */
  wrongReference?: boolean;
}

/** x ⊙ g / sqrt(mean(x²) + eps), column by column, in f64. */
function normalised(x: Float32Array, g: Float32Array, cols: number, eps: number): Float32Array {
  const out = new Float32Array(x.length);
  for (let c0 = 0; c0 < x.length; c0 += cols) {
    let ss = 0;
    for (let i = 0; i < cols; i++) ss += x[c0 + i] * x[c0 + i];
    const s = 1 / Math.sqrt(ss / cols + eps);
    for (let i = 0; i < cols; i++) out[c0 + i] = x[c0 + i] * s * g[i];
  }
  return out;
}

const EPS = 1e-5;
const pool = new Map<string, MatVec>();

function matvecFor(dev: Device, type: TypeName, options: MatVecOptions = {}): MatVec {
  const key = `${type} ${JSON.stringify(options)} ${dev.subgroups}`;
  let mv = pool.get(key);
  if (!mv || mv.device !== dev) {
    mv = new MatVec(dev, GgmlType[type], options);
    pool.set(key, mv);
  }
  return mv;
}

function release(dev: Device): void {
  for (const [key, mv] of pool) {
    if (mv.device !== dev) continue;
    mv.dispose();
    pool.delete(key);
  }
}

/** Runs the case on the device; returns [device result, reference, plan]. */
function runCase(dev: Device, c: Case): [Float32Array, Float64Array, MatVecPlan] {
  const batch = c.batch ?? 1;
  const wRows = c.glu ? 2 * c.rows : c.rows;
  const type = GgmlType[c.type];
  const weight = quantizeAny(type, randomF32(wRows * c.cols, nextSeed()));
  // Activations of a residual stream: not unit scale, so the norm matters.
  const x = randomF32(batch * c.cols, nextSeed(), 3);
  const g = randomF32(c.cols, nextSeed(), 2);
  const xIn = c.norm && !c.wrongReference ? normalised(x, g, c.cols, EPS) : x;
  const y = referenceMatvec({ type, weight, rows: wRows, cols: c.cols, x: xIn, batch });
  let want = Float64Array.from(y);
  if (c.glu) {
    want = new Float64Array(batch * c.rows);
    for (let b = 0; b < batch; b++) {
      const gate = y.subarray(b * wRows, b * wRows + c.rows);
      const up = y.subarray(b * wRows + c.rows, (b + 1) * wRows);
      want.set((c.glu === "gelu" ? gegluRef : swigluRef)(gate, up), b * c.rows);
    }
  }
  const bytes = c.lanes ? new Uint8Array(weight.length) : weight;
  if (c.lanes) toLanesLayout(type, c.cols, weight, bytes);
  using wbuf = dev.buffer(bytes.length + 256);
  dev.upload(wbuf, bytes);
  using xbuf = dev.buffer(x.byteLength);
  dev.upload(xbuf, x);
  using gbuf = dev.buffer(g.byteLength);
  dev.upload(gbuf, g);
  using ybuf = dev.buffer(batch * c.rows * 4);
  dev.upload(ybuf, new Float32Array(batch * c.rows).fill(Number.NaN));
  const mv = matvecFor(dev, c.type, c.options);
  using cmd = dev.commands();
  cmd.begin();
  const plan = mv.record(cmd, {
    weight: wbuf,
    rows: c.rows,
    cols: c.cols,
    x: xbuf,
    y: ybuf,
    batch,
    layout: c.lanes ? "lanes" : "ggml",
    norm: c.norm ? { weight: gbuf, eps: EPS } : undefined,
    glu: c.glu,
  });
  cmd.end();
  dev.waitSync("compute", cmd.submit());
  return [new Float32Array(dev.download(ybuf).buffer), want, plan];
}

function check(dev: Device, c: Case, variant?: MatVecPlan["variant"]): void {
  const [got, want, plan] = runCase(dev, c);
  const what = `${c.type} ${c.rows}x${c.cols} batch ${c.batch ?? 1}${c.norm ? " norm" : ""}${
    c.glu ? ` ${c.glu}` : ""
  }${c.lanes ? " lanes" : ""} via ${plan.kernel}`;
  const float = c.type === "F32" || c.type === "F16" || c.type === "BF16";
  // GeGLU rounds the gate to f16 (as ggml does), so a gate on a rounding boundary may land
  // one f16 step away from the f64 reference's.
  const tol = c.glu === "gelu" ? 3e-3 : float ? 1e-4 : 1e-3;
  const err = relError(got, want);
  assert.ok(err <= tol, `${what}: relative error ${err.toExponential(2)} > ${tol} (seed ${SEED})`);
  if (variant) assert.equal(plan.variant, variant, `${what}: variant`);
}

const GENERIC: MatVecOptions = { path: "generic" };
const RUN: MatVecOptions = { path: "run" };
const RUN64: MatVecOptions = { path: "run", texel: false };
const RUN32: MatVecOptions = { path: "run", texel: false, load64: false };

let shared: Device | null = null;
const withDevice = (fn: (dev: Device) => void) => () => fn(shared ??= Device.open());

Deno.test(
  "matvec fusions: every type on the generic path (norm, SwiGLU, GeGLU, both, ragged rows)",
  withDevice((dev) => {
    for (const type of ALL_TYPES) {
      const cols = 512;
      check(dev, { type, rows: 37, cols, norm: true, options: GENERIC }, "generic");
      check(dev, { type, rows: 21, cols, glu: "silu", options: GENERIC }, "generic");
      check(dev, { type, rows: 21, cols, glu: "silu", norm: true, options: GENERIC }, "generic");
    }
    check(dev, { type: "Q4_K", rows: 19, cols: 768, glu: "gelu", norm: true, options: GENERIC });
    // Several columns: each column has its own norm.
    check(dev, { type: "Q8_0", rows: 13, cols: 512, batch: 3, norm: true, options: GENERIC });
    check(dev, { type: "F16", rows: 9, cols: 256, batch: 5, glu: "silu", norm: true });
  }),
);

Deno.test(
  "matvec fusions: run path row loop (texel, 64- and 32-bit loads, slices, lanes layout)",
  withDevice((dev) => {
    for (const type of RUN_TYPES) {
      for (const options of [RUN, RUN64, RUN32]) {
        check(dev, { type, rows: 75, cols: 1024, norm: true, options }, "rowloop");
        check(dev, { type, rows: 75, cols: 1024, glu: "silu", norm: true, options }, "rowloop");
      }
    }
    // Q6_K: a one-block last unit (its clamped x must not count in the norm).
    check(dev, { type: "Q6_K", rows: 33, cols: 1280, norm: true, options: RUN }, "rowloop");
    check(dev, { type: "Q6_K", rows: 33, cols: 1280, glu: "gelu", norm: true, options: RUN });
    // 28 units of 512 on 8 lanes: the row loop splits each unit's rows into slices.
    check(dev, { type: "Q4_K", rows: 200, cols: 14336, norm: true, options: RUN }, "rowloop");
    check(dev, { type: "Q8_0", rows: 70, cols: 14336, glu: "silu", norm: true, options: RUN });
    // Few rows per workgroup: many workgroups, the last one ragged.
    const r8 = { ...RUN, rowsPerGroup: 8 };
    check(dev, { type: "Q4_0", rows: 45, cols: 1024, glu: "silu", norm: true, options: r8 });
    if (dev.info.texelBuffer) {
      for (const type of ["Q8_0", "Q4_0", "Q4_K"] as const) {
        assert.ok(lanesLayoutType(GgmlType[type], 5120));
        check(dev, {
          type,
          rows: 61,
          cols: 5120,
          glu: "silu",
          norm: true,
          lanes: true,
          options: RUN,
        });
        check(
          dev,
          { type, rows: 61, cols: 5120, norm: true, lanes: true, options: RUN },
          "rowloop",
        );
        // Half units (768 = 3 x 256): the norm's x² once per unit, GLU pairs over row slices.
        check(dev, { type, rows: 45, cols: 768, norm: true, lanes: true, options: RUN }, "rowloop");
        check(dev, {
          type,
          rows: 45,
          cols: 768,
          glu: "silu",
          norm: true,
          lanes: true,
          options: RUN,
        }, "rowloop");
      }
    }
    for (const type of ["F16", "BF16"] as const) {
      for (const options of [RUN, RUN64, RUN32]) {
        check(dev, { type, rows: 45, cols: 768, glu: "silu", norm: true, options }, "rowloop");
      }
    }
    // Fused batches on the CPU path take the generic kernel (the step variant has no fusions).
    check(dev, { type: "Q8_0", rows: 40, cols: 1024, batch: 2, norm: true }, "generic");
  }),
);

Deno.test("matvec fusions: shared-memory reductions", () => {
  using dev = Device.open(undefined, { subgroups: false });
  try {
    for (const type of ["F16", "Q4_K", "Q6_K"] as const) {
      check(dev, { type, rows: 27, cols: 1024, glu: "silu", norm: true, options: GENERIC });
      check(dev, { type, rows: 70, cols: 1024, glu: "silu", norm: true, options: RUN });
      check(dev, { type, rows: 70, cols: 1024, norm: true, options: RUN }, "rowloop");
    }
    const wide = { ...GENERIC, workgroupSize: 64 };
    check(dev, { type: "Q8_0", rows: 9, cols: 512, norm: true, glu: "silu", options: wide });
  } finally {
    release(dev);
  }
});

Deno.test(
  "matvec fusions: a norm checked against the plain product fails; bad calls are HcErrors",
  withDevice((dev) => {
    assert.throws(
      () => check(dev, { type: "Q8_0", rows: 16, cols: 512, norm: true, wrongReference: true }),
      assert.AssertionError,
    );
    using w = dev.buffer(1 << 16);
    using x = dev.buffer(4096);
    using g = dev.buffer(1024);
    using cmd = dev.commands();
    cmd.begin();
    const mv = matvecFor(dev, "F32", GENERIC);
    const base = { weight: w, rows: 8, cols: 512, x, y: x };
    const bad = (args: object, code: "E_BAD_REQUEST" | "E_VK_LIMIT") =>
      assert.throws(() => mv.record(cmd, { ...base, ...args }), (e) => isHcError(e, code));
    bad({ glu: "silu", accumulate: true }, "E_BAD_REQUEST");
    bad({ glu: "relu" }, "E_BAD_REQUEST");
    bad({ norm: { weight: g, eps: 1e-5 } }, "E_VK_LIMIT"); // 256 floats < 512 columns
    bad({ norm: { weight: x, eps: -1 } }, "E_BAD_REQUEST");
    bad({ rows: 17, glu: "silu" }, "E_VK_LIMIT"); // 34 rows of 2 KiB overrun 64 KiB
    cmd.end();
  }),
);

Deno.test("matvec fusions: release the shared device", () => {
  if (!shared) return;
  release(shared);
  shared.close();
  shared = null;
});
