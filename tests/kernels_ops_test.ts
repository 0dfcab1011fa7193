/**
 * Device tests of RMSNorm, RoPE, SwiGLU, axpby and the row gather against
 * testing/reference_ops.ts, on fresh random data (the seed is printed in every failure), at
 * sizes that break naive kernels on lavapipe. Reducing kernels run once on the subgroup path and
 * once on the shared-memory path.
 */
import assert from "node:assert/strict";
import { type Buffer, type CommandList, Device } from "../src/vk/mod.ts";
import { isHcError } from "../src/errors.ts";
import {
  Axpby,
  RmsNorm,
  Rope,
  RopeTable,
  ropeTurnWords,
  Swiglu,
} from "../src/kernels/elementwise.ts";
import { splitRows } from "../src/kernels/checks.ts";
import { RowGather } from "../src/kernels/gather.ts";
import {
  gatherRows,
  gegluRef,
  rmsNormRows,
  ropeInvFreq,
  ropeRows,
  softcapRef,
  swigluRef,
} from "../testing/reference_ops.ts";
import { f32ToF16Array } from "../src/model/quant/mod.ts";
import { randomF32, relError, rng } from "./helpers.ts";

const SEED = Date.now() >>> 0;
const why = (what: string, err: number) => `${what}: error ${err.toExponential(2)} (seed ${SEED})`;

function upload(dev: Device, data: ArrayBufferView, extraBytes = 0): Buffer {
  const b = dev.buffer(data.byteLength + extraBytes);
  dev.upload(b, data);
  return b;
}

function run(dev: Device, record: (cmd: CommandList) => void): void {
  using cmd = dev.commands();
  cmd.begin();
  record(cmd);
  cmd.end();
  dev.waitSync("compute", cmd.submit());
}

function f32(
  dev: Device,
  b: Buffer,
  offsetBytes = 0,
  n = (b.bytes - offsetBytes) / 4,
): Float32Array {
  return new Float32Array(dev.download(b, offsetBytes, n * 4).buffer);
}

for (const subgroup of [true, false]) {
  const path = subgroup ? "subgroup" : "shared memory";

  Deno.test(`rmsnorm: rows of 16384 (vec4) and of 4099 with strides, in place (${path})`, () => {
    using dev = Device.open(undefined, { subgroups: subgroup });
    using norm = new RmsNorm(dev);
    const r = rng(SEED);
    for (const [n, rows, stride] of [[16384, 3, 16384], [4099, 2, 4103]]) {
      const x = randomF32(rows * stride, SEED + n, 3);
      for (let i = 0; i < x.length; i++) x[i] += r() < 0.01 ? 40 : 0; // a few outliers
      const w = randomF32(n, SEED + 1, 2);
      const want = rmsNormRows(x, w, n, rows, 1e-5, stride);
      using xb = upload(dev, x);
      using wb = upload(dev, w);
      using ob = dev.buffer(rows * n * 4);
      run(
        dev,
        (cmd) =>
          norm.record(cmd, { x: xb, weight: wb, out: ob, n, rows, eps: 1e-5, xStride: stride }),
      );
      const err = relError(f32(dev, ob), want);
      assert.ok(err < 1e-5, why(`rmsnorm n=${n}`, err));
      // In place: out is x's own window, with x's stride.
      run(
        dev,
        (cmd) =>
          norm.record(cmd, {
            x: xb,
            weight: wb,
            out: xb,
            n,
            rows,
            eps: 1e-5,
            xStride: stride,
            outStride: stride,
          }),
      );
      const inPlace = f32(dev, xb);
      const packed = new Float32Array(rows * n);
      for (let row = 0; row < rows; row++) {
        packed.set(inPlace.subarray(row * stride, row * stride + n), row * n);
      }
      assert.ok(
        relError(packed, want) < 1e-5,
        why(`rmsnorm in place n=${n}`, relError(packed, want)),
      );
    }
  });
}

Deno.test("rmsnorm: a dispatch with a wrong size is caught by the comparison", () => {
  using dev = Device.open();
  using norm = new RmsNorm(dev);
  const n = 4096;
  const x = randomF32(n, SEED + 5);
  const w = randomF32(n, SEED + 6);
  using xb = upload(dev, x);
  using wb = upload(dev, w);
  using ob = dev.buffer(n * 4);
  // Broken: the kernel told the row is half as long (mean over the wrong count, half unwritten).
  const push = new DataView(new ArrayBuffer(24));
  push.setUint32(0, n / 2, true);
  push.setUint32(4, 1, true);
  push.setUint32(8, n, true);
  push.setUint32(12, n, true);
  push.setFloat32(16, 1e-5, true);
  push.setUint32(20, 1, true);
  run(
    dev,
    (cmd) => cmd.fill(ob, 0, n * 4, 0).barrier().dispatch(norm.kernel, [xb, wb, ob], push, [1]),
  );
  assert.ok(relError(f32(dev, ob), rmsNormRows(x, w, n, 1, 1e-5)) > 0.1);
});

Deno.test("rope: both pairings with frequency factors at positions up to 131072, vs f64", () => {
  using dev = Device.open();
  using rope = new Rope(dev);
  const headDim = 128, nHeads = 4, nTokens = 6;
  const r = rng(SEED + 10);
  const factors = Float32Array.from({ length: headDim / 2 }, () => 1 + 7 * r());
  for (const pairing of ["adjacent", "halves"] as const) {
    for (const [base, ff] of [[10000, null], [500000, factors]] as const) {
      const inv = ropeInvFreq(headDim, base, ff);
      using table = RopeTable.create(dev, { headDim, base, freqFactors: ff });
      const x = randomF32(nTokens * nHeads * headDim, SEED + base);
      using xb = upload(dev, x);
      using ob = dev.buffer(x.byteLength);
      // Position 131066 lives in slot 2 of the parameter buffer; offset 1 moves it to 131067.
      using pos = dev.buffer(16, "upload");
      new Uint32Array(pos.mapped().buffer).set([7, 9, 131066, 3]);
      run(dev, (cmd) =>
        rope.record(cmd, {
          x: xb,
          out: ob,
          table,
          positions: pos,
          positionSlot: 2,
          positionOffset: 1,
          nTokens,
          nHeads,
          headDim,
          pairing,
        }));
      const want = ropeRows(
        x,
        [131067, 131068, 131069, 131070, 131071, 131072],
        nHeads,
        headDim,
        inv,
        pairing,
      );
      const err = relError(f32(dev, ob), want);
      // Angle error ~4e-7 rad at any position, plus sin/cos and f32 rounding (see rope.comp);
      // a plain f32 product pos * invFreq would be ~1e-2 off here.
      assert.ok(err < 2e-6, why(`rope ${pairing} base ${base}`, err));
    }
  }
});

Deno.test("rope: per-token positions, strided in place (fused QKV rows), and replay with a moved position", () => {
  using dev = Device.open();
  using rope = new Rope(dev);
  const headDim = 64, nHeads = 2, nTokens = 3, stride = 5 * headDim; // q heads, then 3 other heads
  const inv = ropeInvFreq(headDim, 1e6);
  using table = RopeTable.fromInverseFrequencies(dev, inv);
  const x = randomF32(nTokens * stride, SEED + 20);
  using xb = dev.buffer(x.byteLength);
  using pos = dev.buffer(16, "upload");
  const positions = new Uint32Array(pos.mapped().buffer);
  using cmd = dev.commands();
  cmd.begin();
  rope.record(cmd, {
    x: xb,
    table,
    positions: pos,
    perTokenPositions: true,
    nTokens,
    nHeads,
    headDim,
    pairing: "halves",
    xTokenStride: stride,
  });
  cmd.end();
  for (const p of [[0, 5, 100000], [65535, 65536, 2 ** 20]]) {
    dev.upload(xb, x);
    positions.set(p);
    dev.waitSync("compute", cmd.submit());
    const got = f32(dev, xb);
    const packedIn = new Float32Array(nTokens * nHeads * headDim);
    const packedOut = new Float32Array(packedIn.length);
    for (let t = 0; t < nTokens; t++) {
      packedIn.set(x.subarray(t * stride, t * stride + nHeads * headDim), t * nHeads * headDim);
      packedOut.set(got.subarray(t * stride, t * stride + nHeads * headDim), t * nHeads * headDim);
      // The other heads of the row are untouched.
      assert.deepEqual(
        got.subarray(t * stride + nHeads * headDim, (t + 1) * stride),
        x.subarray(t * stride + nHeads * headDim, (t + 1) * stride),
      );
    }
    const err = relError(packedOut, ropeRows(packedIn, p, nHeads, headDim, inv, "halves"));
    assert.ok(err < 2e-6, why(`rope replay at ${p}`, err));
  }
});

Deno.test("rope: the wrong pairing is caught by the comparison; bad tables are refused", () => {
  using dev = Device.open();
  using rope = new Rope(dev);
  const headDim = 128, nHeads = 2;
  const inv = ropeInvFreq(headDim, 10000);
  using table = RopeTable.fromInverseFrequencies(dev, inv);
  const x = randomF32(nHeads * headDim, SEED + 30);
  using xb = upload(dev, x);
  using pos = upload(dev, new Uint32Array([4242]));
  run(
    dev,
    (cmd) =>
      rope.record(cmd, {
        x: xb,
        table,
        positions: pos,
        nTokens: 1,
        nHeads,
        headDim,
        pairing: "halves",
      }),
  );
  const err = relError(f32(dev, xb), ropeRows(x, [4242], nHeads, headDim, inv, "adjacent"));
  assert.ok(err > 0.1, `wrong pairing went unnoticed (error ${err})`);
  using spare = dev.commands();
  assert.throws(
    () =>
      rope.record(spare, {
        x: xb,
        table,
        positions: pos,
        nTokens: 1,
        nHeads,
        headDim: 64,
        pairing: "halves",
      }),
    (e) => isHcError(e, "E_VK_LIMIT"),
  );
  assert.throws(
    () => RopeTable.create(dev, { headDim: 8, base: 1e4, freqFactors: [1, 0, 1, 1] }),
    (e) => isHcError(e, "E_VK_LIMIT"),
  );
  // The fixed-point table is frac(invFreq / 2pi) * 2^64: frequency 2pi is a whole turn (0).
  assert.deepEqual(Array.from(ropeTurnWords([Math.PI, 2 * Math.PI])), [0, 2 ** 31, 0, 0]);
});

Deno.test("swiglu: vec4 rows and strided scalar rows, in place", () => {
  using dev = Device.open();
  using swiglu = new Swiglu(dev);
  for (const [n, rows, stride] of [[14336, 2, 14336], [1001, 3, 1003]]) {
    const g = randomF32(rows * stride, SEED + 40 + n, 12);
    const u = randomF32(rows * stride, SEED + 41 + n, 3);
    const pick = (a: Float32Array) => {
      const out = new Float32Array(rows * n);
      for (let r = 0; r < rows; r++) out.set(a.subarray(r * stride, r * stride + n), r * n);
      return out;
    };
    const want = swigluRef(pick(g), pick(u));
    using gb = upload(dev, g);
    using ub = upload(dev, u);
    run(
      dev,
      (cmd) =>
        swiglu.record(cmd, {
          gate: gb,
          up: ub,
          out: gb,
          n,
          rows,
          gateStride: stride,
          upStride: stride,
          outStride: stride,
        }),
    );
    const err = relError(pick(f32(dev, gb)), want);
    assert.ok(err < 1e-5, why(`swiglu n=${n}`, err));
  }
});

Deno.test("geglu and soft-capping (Gemma): vec4 and scalar rows against the references", () => {
  using dev = Device.open();
  using swiglu = new Swiglu(dev);
  for (const n of [1024, 1001]) {
    const g = randomF32(2 * n, SEED + 50 + n, 6);
    const u = randomF32(2 * n, SEED + 51 + n, 3);
    using gb = upload(dev, g);
    using ub = upload(dev, u);
    using ob = upload(dev, new Float32Array(2 * n));
    run(dev, (cmd) => swiglu.record(cmd, { gate: gb, up: ub, out: ob, n, rows: 2, act: "gelu" }));
    const err = relError(f32(dev, ob), gegluRef(g, u));
    // The GELU is rounded to f16 (as ggml's CPU table is): where the device's tanh and the
    // reference's differ by an ulp across an f16 rounding boundary, that element moves by an f16
    // ulp (~1e-3 of it), ~2e-5 of the whole vector; one seed of 1e-5 runs failed at 1.03e-5.
    assert.ok(err < 1e-4, why(`geglu n=${n}`, err));
    // Logits far past the cap (50 x 30) saturate at +-cap instead of overflowing tanh.
    const x = randomF32(2 * n, SEED + 52 + n, 50 * 30);
    using xb = upload(dev, x);
    run(
      dev,
      (cmd) =>
        swiglu.record(cmd, { gate: xb, up: xb, out: xb, n, rows: 2, act: "softcap", cap: 30 }),
    );
    const err2 = relError(f32(dev, xb), softcapRef(x, 30));
    assert.ok(err2 < 1e-5, why(`softcap n=${n}`, err2));
  }
});

Deno.test("axpby: residual add, scale and copy at vec4 and odd sizes; a short dispatch is caught", () => {
  using dev = Device.open();
  using axpby = new Axpby(dev);
  for (const n of [262144, 100003]) {
    const a = randomF32(n, SEED + 50), b = randomF32(n, SEED + 51);
    using ab = upload(dev, a);
    using bb = upload(dev, b);
    using ob = dev.buffer(n * 4);
    run(dev, (cmd) => axpby.recordAdd(cmd, { a: ab, b: bb, out: ob, n }));
    assert.ok(relError(f32(dev, ob), a.map((v, i) => v + b[i])) < 1e-6, `add n=${n}`);
    run(dev, (cmd) => axpby.recordScale(cmd, { x: ab, out: ob, n, scale: -0.25 }));
    assert.ok(relError(f32(dev, ob), a.map((v) => v * -0.25)) < 1e-6, `scale n=${n}`);
    run(dev, (cmd) => axpby.record(cmd, { a: ab, b: bb, out: ab, n, alpha: 2, beta: -3 }));
    assert.ok(
      relError(f32(dev, ab), a.map((v, i) => 2 * v - 3 * b[i])) < 1e-6,
      `axpby in place n=${n}`,
    );
  }
  const n = 4096;
  const a = randomF32(n, SEED + 52);
  using ab = upload(dev, a);
  using ob = dev.buffer(n * 4);
  run(dev, (cmd) => cmd.fill(ob, 0, n * 4, 0).barrier());
  run(dev, (cmd) => axpby.recordScale(cmd, { x: ab, out: ob, n: n - 4, scale: 1 }));
  assert.ok(relError(f32(dev, ob), a) > 0.01, "a copy 4 elements short went unnoticed");
});

Deno.test("gather: f16 KV rows by index into contiguous slots, a scatter, strides and a bad index", () => {
  using dev = Device.open();
  using gather = new RowGather(dev);
  const r = rng(SEED + 60);
  // K of 5000 tokens x 4 KV heads x 128 f16: compact head 2's selected rows into its slots.
  const tokens = 5000, heads = 4, headDim = 128, rowWords = headDim / 2;
  const kv = new Uint32Array(f32ToF16Array(randomF32(tokens * heads * headDim, SEED + 61)).buffer);
  const count = 1000;
  const sel = Uint32Array.from({ length: count }, () => Math.floor(r() * tokens)).sort();
  using kvb = upload(dev, kv);
  using selb = upload(dev, sel);
  using slots = dev.buffer(count * rowWords * 4);
  run(dev, (cmd) => cmd.fill(slots, 0, slots.bytes, 0).barrier());
  run(dev, (cmd) =>
    gather.record(cmd, {
      src: { buffer: kvb, rows: selb, strideWords: heads * rowWords, baseWords: 2 * rowWords },
      dst: { buffer: slots },
      count,
      rowWords,
    }));
  const want = gatherRows(kv, new Uint32Array(count * rowWords), count, rowWords, {
    srcRows: sel,
    srcStride: heads * rowWords,
    srcBase: 2 * rowWords,
  });
  assert.deepEqual(new Uint32Array(dev.download(slots).buffer), want, `gather (seed ${SEED})`);

  // Scatter 37 f32 rows of 3 words (scalar path) to shuffled rows; index 999999 is skipped.
  const src = Uint32Array.from({ length: 37 * 3 }, () => Math.floor(r() * 2 ** 32));
  const dstRows = Uint32Array.from({ length: 37 }, (_, i) => (i * 17) % 40);
  dstRows[5] = 999_999;
  const before = Uint32Array.from({ length: 40 * 3 }, () => Math.floor(r() * 2 ** 32));
  using sb = upload(dev, src);
  using db = upload(dev, before);
  using ib = upload(dev, dstRows);
  run(
    dev,
    (cmd) =>
      gather.record(cmd, {
        src: { buffer: sb },
        dst: { buffer: db, rows: ib },
        count: 37,
        rowWords: 3,
      }),
  );
  const scattered = new Uint32Array(dev.download(db).buffer);
  assert.deepEqual(
    scattered,
    gatherRows(src, before, 37, 3, { dstRows }),
    `scatter (seed ${SEED})`,
  );

  // A wrong row length is caught by the comparison; contiguous rows past the end are refused.
  run(
    dev,
    (cmd) =>
      gather.record(cmd, {
        src: { buffer: sb },
        dst: { buffer: db, rows: ib },
        count: 37,
        rowWords: 2,
      }),
  );
  assert.notDeepEqual(
    new Uint32Array(dev.download(db).buffer),
    gatherRows(src, before, 37, 3, { dstRows }),
  );
  using spare = dev.commands();
  assert.throws(
    () =>
      gather.record(spare, {
        src: { buffer: sb, indexStart: 1 },
        dst: { buffer: db },
        count: 37,
        rowWords: 3,
      }),
    (e) => isHcError(e, "E_VK_LIMIT"),
  );
});

Deno.test("splitRows: runs stay within the binding range and start at aligned offsets", () => {
  const info = { maxStorageBufferRange: 1 << 20, minStorageBufferOffsetAlignment: 64 };
  const dev = { info } as unknown as Device;
  assert.deepEqual(splitRows(dev, 10, [4096]), [[0, 10]]);
  for (const rowBytes of [[4100], [12, 4100], [6 * 4, 1000 * 4], [(1 << 20) - 64]]) {
    for (const rows of [1, 255, 1000, 4097]) {
      const runs = splitRows(dev, rows, rowBytes, 1);
      let next = 0;
      for (const [r0, count] of runs) {
        assert.equal(r0, next);
        next += count;
        for (const b of rowBytes) {
          assert.ok(count * b <= info.maxStorageBufferRange, `run of ${count} rows of ${b} bytes`);
          assert.equal((r0 * b) % 64, 0, `run at row ${r0} of ${b}-byte rows is misaligned`);
        }
      }
      assert.equal(next, rows);
    }
  }
  assert.throws(() => splitRows(dev, 2, [(1 << 20) + 4]), (e) => isHcError(e, "E_VK_LIMIT"));
  // Sixteen unaligned rows of almost the whole range cannot start a run at an aligned offset.
  assert.throws(() => splitRows(dev, 2, [(1 << 20) - 4]), (e) => isHcError(e, "E_VK_LIMIT"));
});

Deno.test("gather: a source larger than one binding is covered by overlapping windows", () => {
  using dev = Device.open();
  const range = dev.info.maxStorageBufferRange;
  if (range + (1 << 16) > dev.info.maxAllocationBytes) return; // cannot exceed a binding here
  using gather = new RowGather(dev);
  const rowWords = 64, rowBytes = rowWords * 4;
  using big = dev.buffer(range + (1 << 16));
  const lastRow = Math.floor(big.bytes / rowBytes) - 1;
  // Rows on both sides of each window edge, and the buffer's last row.
  const picks = [
    0,
    1,
    range / rowBytes - 2,
    range / rowBytes - 1,
    range / rowBytes,
    range / rowBytes + 1,
    lastRow,
  ];
  const r = rng(SEED + 70);
  const rows = picks.map(() =>
    Uint32Array.from({ length: rowWords }, () => Math.floor(r() * 2 ** 32))
  );
  picks.forEach((p, i) => dev.upload(big, rows[i], p * rowBytes));
  const order = Uint32Array.from(picks).reverse();
  using ib = upload(dev, order);
  using out = dev.buffer(picks.length * rowBytes);
  run(
    dev,
    (cmd) =>
      gather.record(cmd, {
        src: { buffer: big, rows: ib },
        dst: { buffer: out },
        count: picks.length,
        rowWords,
      }),
  );
  const got = new Uint32Array(dev.download(out).buffer);
  picks.forEach((p, i) => {
    const at = picks.length - 1 - i;
    assert.deepEqual(got.subarray(at * rowWords, (at + 1) * rowWords), rows[i], `row ${p}`);
  });
});
