/**
 * Row fetch (src/kernels/get_rows.ts) against the plain-TS dequantizer on fresh random data:
 * every weight type, odd row widths, invalid ids, strided output, more ids than one dispatch
 * takes, weights split into row ranges (by a small cap and by the device's real limit), replay
 * of one recording with a new id written into a host-visible buffer, and a wrong recording.
 */
import assert from "node:assert/strict";
import { isHcError } from "../src/errors.ts";
import { GgmlType } from "../src/gguf/types.ts";
import { GetRows } from "../src/kernels/get_rows.ts";
import { quantize } from "../src/model/quant/mod.ts";
import { referenceGetRows } from "../testing/reference_matvec.ts";
import { type Binding, type Buffer, Device } from "../src/vk/mod.ts";
import { randomF32, rng } from "./helpers.ts";

const SEED = Date.now() >>> 0;
let seedCounter = 0;
const nextSeed = () => (SEED + 104729 * ++seedCounter) >>> 0;

const TYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_K", "Q6_K"] as const;
type TypeName = typeof TYPES[number];

/** Largest |a - b| over the largest |b|; exact conversions should give 0, K-quants ~1e-7. */
function relError(a: Float32Array, b: Float32Array): number {
  if (a.length !== b.length) return Infinity;
  let d = 0, m = 0;
  for (let i = 0; i < a.length; i++) {
    const e = Math.abs(a[i] - b[i]);
    d = Number.isNaN(e) ? Infinity : Math.max(d, e);
    m = Math.max(m, Math.abs(b[i]));
  }
  return d / (m || 1);
}

function randomIds(n: number, rows: number): Uint32Array {
  const r = rng(nextSeed());
  return Uint32Array.from({ length: n }, () => Math.floor(r() * rows));
}

interface Fetch {
  type: TypeName;
  rows: number;
  cols: number;
  ids: Uint32Array;
  outStride?: number;
  weightOffset?: number;
  maxBindingBytes?: number;
  recordCols?: number;
}

function upload(dev: Device, data: ArrayBufferView, bytes = data.byteLength): Buffer {
  const b = dev.buffer(Math.max(4, bytes));
  dev.upload(b, data);
  return b;
}

/** Fetches on the device; returns [device rows (packed to cols), reference, dispatches]. */
function fetchRows(dev: Device, f: Fetch): [Float32Array, Float32Array, number] {
  const type = GgmlType[f.type];
  const weight = quantize(type, randomF32(f.rows * f.cols, nextSeed()));
  const want = referenceGetRows(type, weight, f.rows, f.cols, f.ids);
  const offset = f.weightOffset ?? 0;
  const padded = new Uint8Array(offset + weight.length + 4).fill(0x5a);
  padded.set(weight, offset);
  using w = upload(dev, padded);
  const ids = new Uint32Array(f.ids.length + 4).fill(7); // ids bound at a 16-byte offset
  ids.set(f.ids, 4);
  using idBuf = upload(dev, ids);
  const stride = f.outStride ?? f.cols;
  using out = dev.buffer(f.ids.length * stride * 4);
  dev.upload(out, new Float32Array(f.ids.length * stride).fill(Number.NaN));
  using g = new GetRows(dev, type, { maxBindingBytes: f.maxBindingBytes });
  using cmd = dev.commands();
  cmd.begin();
  const { dispatches } = g.record(cmd, {
    weight: w,
    weightOffset: offset,
    rows: f.rows,
    cols: f.recordCols ?? f.cols,
    ids: { buffer: idBuf, offset: 16 } as Binding,
    count: f.ids.length,
    out,
    outStride: stride,
  });
  cmd.end();
  dev.waitSync("compute", cmd.submit());
  const raw = new Float32Array(dev.download(out).buffer);
  const got = new Float32Array(f.ids.length * f.cols);
  for (let i = 0; i < f.ids.length; i++) {
    got.set(raw.subarray(i * stride, i * stride + f.cols), i * f.cols);
  }
  return [got, want, dispatches];
}

function check(dev: Device, f: Fetch, tol = 1e-6): number {
  const [got, want, dispatches] = fetchRows(dev, f);
  const err = relError(got, want);
  assert.ok(
    err <= tol,
    `${f.type} ${f.rows}x${f.cols}: error ${err.toExponential(2)} (seed ${SEED})`,
  );
  return dispatches;
}

Deno.test("get_rows: every type, odd widths, invalid ids give zero rows", () => {
  using dev = Device.open();
  for (const type of TYPES) {
    const cols = type.endsWith("K") ? 768 : type.startsWith("Q") ? 96 : 100;
    const ids = randomIds(9, 50);
    ids[3] = 50; // one past the end
    ids[6] = 0xffffffff;
    check(dev, { type, rows: 50, cols, ids });
    const wide = type.startsWith("Q") ? cols * 2 : 4096;
    check(dev, { type, rows: 37, cols: wide, ids: randomIds(5, 37), outStride: wide + 8 });
  }
  // F16/BF16 rows of odd width start at every 2-byte phase.
  for (const cols of [1, 7, 33]) {
    check(dev, { type: "F16", rows: 11, cols, ids: randomIds(11, 11) });
    check(dev, { type: "BF16", rows: 11, cols, ids: randomIds(11, 11) });
  }
});

Deno.test("get_rows: weight at an offset, split into row ranges, more ids than one dispatch", () => {
  using dev = Device.open();
  check(dev, { type: "Q4_K", rows: 40, cols: 512, ids: randomIds(40, 40), weightOffset: 1028 });
  const n = check(dev, {
    type: "Q8_0",
    rows: 300,
    cols: 256,
    ids: randomIds(64, 300),
    weightOffset: 20,
    maxBindingBytes: 3000,
  });
  assert.ok(n >= 9, `${n} dispatches`);
  const ids = randomIds(70_000, 9);
  ids[69_999] = 9; // invalid, and in the second batch of ids
  const m = check(dev, { type: "F32", rows: 9, cols: 4, ids, maxBindingBytes: 64 });
  assert.ok(m >= 6, `${m} dispatches`);
});

Deno.test("get_rows: an embedding larger than maxStorageBufferRange", () => {
  using dev = Device.open();
  const rows = 8300, cols = 4096; // 136 MB of F32: over lavapipe's 128 MiB
  if (rows * cols * 4 <= dev.info.maxStorageBufferRange) return;
  const emb = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    emb.fill(r + 0.5, r * cols, r * cols + 17).fill(-r, r * cols + 17, (r + 1) * cols);
  }
  using w = upload(dev, emb);
  const ids = Uint32Array.from([0, rows - 1, 4000, 8200, rows, 8191, 1]);
  using idBuf = upload(dev, ids);
  using out = dev.buffer(ids.length * cols * 4);
  using g = new GetRows(dev, GgmlType.F32);
  using cmd = dev.commands();
  cmd.begin();
  assert.ok(
    g.record(cmd, { weight: w, rows, cols, ids: idBuf, count: ids.length, out }).dispatches >= 2,
  );
  cmd.end();
  dev.waitSync("compute", cmd.submit());
  const got = new Float32Array(dev.download(out).buffer);
  const want = referenceGetRows(GgmlType.F32, new Uint8Array(emb.buffer), rows, cols, ids);
  assert.equal(relError(got, want), 0);
});

Deno.test("get_rows: one recording replayed with the id written into a host-visible buffer", () => {
  using dev = Device.open();
  const rows = 64, cols = 256;
  const weight = quantize(GgmlType.Q6_K, randomF32(rows * cols, nextSeed()));
  using w = upload(dev, weight, weight.length + 4);
  using idBuf = dev.buffer(16, "upload");
  const idView = new Uint32Array(idBuf.mapped().buffer, idBuf.mapped().byteOffset, 4);
  using out = dev.buffer(cols * 4, "readback");
  using g = new GetRows(dev, GgmlType.Q6_K);
  using cmd = dev.commands();
  cmd.begin();
  g.record(cmd, { weight: w, rows, cols, ids: idBuf, count: 1, out });
  cmd.end();
  for (const id of [5, 63, 0, 17]) {
    idView[0] = id;
    dev.waitSync("compute", cmd.submit());
    const got = new Float32Array(dev.download(out).buffer);
    assert.equal(
      relError(got, referenceGetRows(GgmlType.Q6_K, weight, rows, cols, [id])) <= 1e-6,
      true,
      `id ${id}`,
    );
  }
});

Deno.test("get_rows: a wrong recording is detected; bad arguments are HcErrors", () => {
  using dev = Device.open();
  // Recording with cols - 32 reads every row at the wrong stride.
  const [got, want] = fetchRows(dev, {
    type: "Q8_0",
    rows: 20,
    cols: 256,
    ids: randomIds(6, 20),
    recordCols: 224,
  });
  assert.ok(relError(got, want) > 1e-2, `wrong cols went unnoticed (seed ${SEED})`);

  using w = dev.buffer(4096);
  using ids = dev.buffer(64);
  using out = dev.buffer(4096);
  using g = new GetRows(dev, GgmlType.Q4_0);
  using cmd = dev.commands();
  cmd.begin();
  const base = { weight: w, rows: 10, cols: 64, ids, count: 4, out };
  const code = (c: string) => (e: unknown) => isHcError(e) && e.code === c;
  assert.throws(() => new GetRows(dev, GgmlType.Q8_1), code("E_MODEL_TENSOR"));
  assert.throws(() => g.record(cmd, { ...base, cols: 48 }), code("E_MODEL_TENSOR"));
  assert.throws(() => g.record(cmd, { ...base, count: 0 }), code("E_BAD_REQUEST"));
  assert.throws(() => g.record(cmd, { ...base, weightOffset: 2 }), code("E_BAD_REQUEST"));
  assert.throws(() => g.record(cmd, { ...base, rows: 1000 }), code("E_VK_LIMIT"));
  assert.throws(() => g.record(cmd, { ...base, count: 17 }), code("E_VK_LIMIT")); // ids too short
  assert.throws(() => g.record(cmd, { ...base, count: 16, outStride: 65 }), code("E_VK_LIMIT")); // out too short
  assert.throws(() => g.record(cmd, { ...base, outStride: 32 }), code("E_BAD_REQUEST"));
  cmd.end();
});
