/**
 * The weight types added for the GGUFs people download (Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q5_K,
 * IQ4_NL, IQ4_XS): matvec (batch 1 and prompt batches, accumulate, offsets, odd row counts) and
 * the row fetch, against the plain-TS dequantizer (testing/reference_matvec.ts), on fresh
 * random data every run. Weights are random BYTES (with the f16 scale fields made finite), so
 * every bit of every field is exercised, not only the patterns an encoder writes; one case per
 * type also runs weights encoded from floats by testing/quantizers.ts.
 */
import assert from "node:assert/strict";
import { GgmlType, ggmlTypeInfo } from "../src/gguf/types.ts";
import { GetRows } from "../src/kernels/get_rows.ts";
import { MatVec, type MatVecPlan } from "../src/kernels/matvec.ts";
import { f32ToF16 } from "../src/model/quant/mod.ts";
import { quantizeAny } from "../testing/quantizers.ts";
import { referenceGetRows, referenceMatvec } from "../testing/reference_matvec.ts";
import { Device } from "../src/vk/mod.ts";
import { randomF32, rng } from "./helpers.ts";

const SEED = Date.now() >>> 0;
let seedCounter = 0;
const nextSeed = () => (SEED + 6151 * ++seedCounter) >>> 0;

const TYPES = ["Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q5_K", "IQ4_NL", "IQ4_XS"] as const;
type TypeName = typeof TYPES[number];

/** Byte offsets of each block's f16 fields (scales and mins). */
const HALF_FIELDS: Record<TypeName, number[]> = {
  Q4_1: [0, 2],
  Q5_0: [0],
  Q5_1: [0, 2],
  Q2_K: [80, 82],
  Q3_K: [108],
  Q5_K: [0, 2],
  IQ4_NL: [0],
  IQ4_XS: [0],
};

function info(type: TypeName) {
  return ggmlTypeInfo(GgmlType[type])!;
}

/** Random bytes in the type's layout, its f16 fields set to finite values of ~1e-2. */
function randomBlocks(type: TypeName, rows: number, cols: number): Uint8Array {
  const { blockElems, blockBytes } = info(type);
  const blocks = rows * cols / blockElems;
  const r = rng(nextSeed());
  const out = Uint8Array.from({ length: blocks * blockBytes }, () => Math.floor(r() * 256));
  for (let b = 0; b < blocks; b++) {
    for (const f of HALF_FIELDS[type]) {
      const h = f32ToF16((r() * 2 - 1) * 0.02);
      out[b * blockBytes + f] = h & 0xff;
      out[b * blockBytes + f + 1] = h >>> 8;
    }
  }
  return out;
}

/** ||a - b|| / ||b||, Infinity on NaN. */
function normRelError(a: Float32Array, b: Float32Array): number {
  let d = 0, n = 0;
  for (let i = 0; i < a.length; i++) {
    d += (a[i] - b[i]) ** 2;
    n += b[i] ** 2;
  }
  const e = Math.sqrt(d) / Math.sqrt(n || 1);
  return a.length === b.length && !Number.isNaN(e) ? e : Infinity;
}

interface Case {
  type: TypeName;
  rows: number;
  cols: number;
  batch?: number;
  accumulate?: boolean;
  weightOffset?: number;
  encoded?: boolean;
  /** Record with this many columns instead (to prove the check can fail). */
  recordCols?: number;
}

function runMatvec(dev: Device, mv: MatVec, c: Case): { err: number; plan: MatVecPlan } {
  const batch = c.batch ?? 1;
  const weight = c.encoded
    ? quantizeAny(GgmlType[c.type], randomF32(c.rows * c.cols, nextSeed()))
    : randomBlocks(c.type, c.rows, c.cols);
  const x = randomF32(batch * c.cols, nextSeed());
  const yInit = c.accumulate ? randomF32(batch * c.rows, nextSeed(), 4) : undefined;
  const want = referenceMatvec({
    type: GgmlType[c.type],
    weight,
    rows: c.rows,
    cols: c.cols,
    x,
    batch,
    yInit,
  });
  const offset = c.weightOffset ?? 0;
  const total = offset + weight.length + 64;
  // Garbage around the weight: a kernel reading outside its rows would pick it up.
  const filler = new Uint8Array(total).map((_, i) => (i * 131 + 7) & 0xff);
  filler.set(weight, offset);
  using wbuf = dev.buffer(total);
  dev.upload(wbuf, filler);
  using xbuf = dev.buffer(x.byteLength);
  dev.upload(xbuf, x);
  using ybuf = dev.buffer(batch * c.rows * 4);
  dev.upload(ybuf, yInit ?? new Float32Array(batch * c.rows).fill(Number.NaN));
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
  });
  cmd.end();
  dev.waitSync("compute", cmd.submit());
  return { err: normRelError(new Float32Array(dev.download(ybuf).buffer), want), plan };
}

Deno.test("matvec: the added weight types, batch 1 and prompt batches, against the TS reference", () => {
  using dev = Device.open();
  for (const type of TYPES) {
    const k = info(type).blockElems === 256 ? 512 : 96;
    // Default options: on lavapipe "auto" picks the run path, which these types lack, so the
    // generic path must be chosen rather than an error raised.
    using mv = new MatVec(dev, GgmlType[type]);
    const cases: Case[] = [
      { type, rows: 37, cols: k },
      { type, rows: 19, cols: 2 * k, batch: 5, accumulate: true },
      { type, rows: 8, cols: k, batch: 11, weightOffset: 48 },
      { type, rows: 21, cols: k, encoded: true },
    ];
    for (const c of cases) {
      const { err, plan } = runMatvec(dev, mv, c);
      const what = `${type} ${c.rows}x${c.cols} batch ${c.batch ?? 1} via ${plan.kernel}`;
      assert.equal(plan.variant, "generic", what);
      assert.ok(err < 1e-4, `${what}: relative error ${err.toExponential(2)} (seed ${SEED})`);
    }
    // The same check fails on a deliberately wrong recording (rows read with the wrong width).
    const half = info(type).blockElems === 256 ? 256 : 32;
    const bad = runMatvec(dev, mv, { type, rows: 9, cols: 2 * half, recordCols: half });
    assert.ok(bad.err > 1e-2, `${type}: a wrong recording went unnoticed (${bad.err})`);
  }
});

Deno.test("get_rows: the added weight types, invalid ids give zero rows", () => {
  using dev = Device.open();
  for (const type of TYPES) {
    const cols = info(type).blockElems === 256 ? 768 : 96;
    const rows = 23;
    const weight = randomBlocks(type, rows, cols);
    const ids = Uint32Array.from({ length: 9 }, (_, i) => (i * 7 + 3) % rows);
    ids[4] = rows; // one past the end
    const want = referenceGetRows(GgmlType[type], weight, rows, cols, ids);
    using w = dev.buffer(weight.length + 4);
    const padded = new Uint8Array(weight.length + 4).fill(0x5a);
    padded.set(weight);
    dev.upload(w, padded);
    using idBuf = dev.buffer(ids.byteLength);
    dev.upload(idBuf, ids);
    using out = dev.buffer(ids.length * cols * 4);
    dev.upload(out, new Float32Array(ids.length * cols).fill(Number.NaN));
    using g = new GetRows(dev, GgmlType[type]);
    using cmd = dev.commands();
    cmd.begin();
    g.record(cmd, { weight: w, rows, cols, ids: idBuf, count: ids.length, out });
    cmd.end();
    dev.waitSync("compute", cmd.submit());
    const got = new Float32Array(dev.download(out).buffer);
    let maxErr = 0, scale = 0;
    for (let i = 0; i < got.length; i++) {
      maxErr = Math.max(maxErr, Number.isNaN(got[i]) ? Infinity : Math.abs(got[i] - want[i]));
      scale = Math.max(scale, Math.abs(want[i]));
    }
    assert.ok(scale > 0, `${type}: reference rows are all zero`);
    assert.ok(maxErr <= 1e-6 * scale, `${type}: error ${maxErr} of ${scale} (seed ${SEED})`);
    assert.ok(got.subarray(4 * cols, 5 * cols).every((v) => v === 0), `${type}: invalid id`);
  }
});
