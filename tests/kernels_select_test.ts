/**
 * Device tests of argmax and top-k against testing/reference_ops.ts (and cache/analysis.ts
 * topkSet, which the cache policies use on the host), on fresh random data with planted ties,
 * NaNs and signed zeros; every test runs on the subgroup and on the shared-memory path.
 */
import assert from "node:assert/strict";
import { type Buffer, type CommandList, Device } from "../src/vk/mod.ts";
import { isHcError } from "../src/errors.ts";
import { Argmax, TopK } from "../src/kernels/select.ts";
import { argmaxRows, topkRef } from "../testing/reference_ops.ts";
import { topkSet } from "../src/cache/analysis.ts";
import { randomF32, rng } from "./helpers.ts";

const SEED = Date.now() >>> 0;

function withPath<T>(subgroup: boolean, make: () => T): T {
  const prev = Deno.env.get("HC_NO_SUBGROUP");
  Deno.env.set("HC_NO_SUBGROUP", subgroup ? "0" : "1");
  try {
    return make();
  } finally {
    if (prev === undefined) Deno.env.delete("HC_NO_SUBGROUP");
    else Deno.env.set("HC_NO_SUBGROUP", prev);
  }
}

function upload(dev: Device, data: ArrayBufferView): Buffer {
  const b = dev.buffer(data.byteLength);
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

function u32(dev: Device, b: Buffer): Uint32Array {
  return new Uint32Array(dev.download(b).buffer);
}

/** Values drawn from `levels` distinct numbers, so ties are everywhere, including at the k-th. */
function tiedRow(n: number, seed: number, levels: number): Float32Array {
  const r = rng(seed);
  return Float32Array.from({ length: n }, () => Math.floor(r() * levels) / levels - 0.5);
}

/** First index where two index lists differ, for a readable failure. */
function firstDiff(a: ArrayLike<number>, b: ArrayLike<number>): string {
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    if (a[i] !== b[i]) return `at ${i}: ${a[i]} vs ${b[i]} (lengths ${a.length}, ${b.length})`;
  }
  return "none";
}

for (const subgroup of [true, false]) {
  const path = subgroup ? "subgroup" : "shared memory";

  Deno.test(`argmax: 152064-entry rows with planted ties, NaN and signed zeros (${path})`, () => {
    using dev = Device.open();
    using argmax = withPath(subgroup, () => new Argmax(dev));
    const n = 152064, rows = 4, stride = n + 4;
    const x = randomF32(rows * stride, SEED);
    // Row 0: the maximum planted thrice; the lowest index must win.
    for (const i of [150000, 77778, 77777]) x[i] = 5;
    // Row 1: NaNs above everything (they rank as -inf) and a tie straddling two chunks.
    for (const i of [3, 2047, 2048, 100000]) x[stride + i] = i === 2048 || i === 100000 ? 4 : NaN;
    // Row 2: all negative but for -0 at 9000 and +0 at 9001: equal, so 9000.
    for (let i = 0; i < n; i++) x[2 * stride + i] = -1 - Math.abs(x[2 * stride + i]);
    x[2 * stride + 9000] = -0;
    x[2 * stride + 9001] = 0;
    // Row 3: the maximum is the very last element.
    x[3 * stride + n - 1] = 7;
    using xb = upload(dev, x);
    using out = dev.buffer(rows * 4 + 8);
    using scratch = dev.buffer(argmax.scratchBytes(n, rows));
    run(
      dev,
      (cmd) =>
        argmax.record(cmd, { x: xb, n, rows, rowStride: stride, out, outOffset: 2, scratch }),
    );
    const got = u32(dev, out).slice(2, 2 + rows);
    const want = argmaxRows(x, n, rows, stride);
    assert.deepEqual(Array.from(want), [77777, 2048, 9000, n - 1], "the reference itself");
    assert.deepEqual(got, want, `seed ${SEED}`);
  });

  Deno.test(`argmax: one replayed decode-step recording follows new logits (${path})`, () => {
    using dev = Device.open();
    using argmax = withPath(subgroup, () => new Argmax(dev));
    const n = 32000;
    using logits = dev.buffer(n * 4, "upload");
    using out = dev.buffer(4, "readback");
    using scratch = dev.buffer(argmax.scratchBytes(n));
    using cmd = dev.commands();
    cmd.begin();
    argmax.record(cmd, { x: logits, n, out, scratch });
    cmd.end();
    const view = new Float32Array(logits.mapped().buffer, 0, n);
    for (let step = 0; step < 4; step++) {
      view.set(randomF32(n, SEED + step));
      dev.waitSync("compute", cmd.submit());
      assert.equal(
        new Uint32Array(out.mapped().buffer)[0],
        argmaxRows(view, n, 1)[0],
        `step ${step}, seed ${SEED}`,
      );
    }
  });

  Deno.test(`topk: k=1024 of 100000 and k=4096 of 131072 with planted ties (${path})`, () => {
    using dev = Device.open();
    using topk = withPath(subgroup, () => new TopK(dev));
    for (const [n, k, levels] of [[100_000, 1024, 4096], [131_072, 4096, 257]]) {
      const x = tiedRow(n, SEED + n, levels);
      // NaNs rank last; -0 and +0 tie; a large plateau of equal values at the top.
      for (let i = 0; i < 50; i++) x[(i * 7919) % n] = NaN;
      for (let i = 0; i < 300; i++) x[(i * 104729 + 11) % n] = 0.75;
      x[17] = -0;
      using xb = upload(dev, x);
      using idx = dev.buffer(k * 4);
      using val = dev.buffer(k * 4);
      using scratch = dev.buffer(topk.scratchBytes(n));
      run(dev, (cmd) => topk.record(cmd, { x: xb, n, k, indices: idx, values: val, scratch }));
      const got = u32(dev, idx);
      const want = topkRef(x, k);
      assert.equal(firstDiff(got, want), "none", `n=${n} k=${k} seed ${SEED}`);
      assert.equal(firstDiff(got, topkSet(x, k)), "none", "agrees with the host's topkSet");
      const values = new Float32Array(dev.download(val).buffer);
      assert.deepEqual(values, Float32Array.from(want, (i) => x[i]));
    }
  });

  Deno.test(`topk: several rows at once, all-equal and k = n edge cases (${path})`, () => {
    using dev = Device.open();
    using topk = withPath(subgroup, () => new TopK(dev));
    const n = 20_000, rows = 3, stride = 20_008, k = 777, outStride = 800;
    const x = new Float32Array(rows * stride);
    x.set(randomF32(n, SEED + 1), 0);
    x.fill(0.5, stride, stride + n); // row 1: all equal -> the first k
    x.set(tiedRow(n, SEED + 2, 3), 2 * stride);
    using xb = upload(dev, x);
    using idx = dev.buffer(rows * outStride * 4);
    using scratch = dev.buffer(topk.scratchBytes(n, rows));
    run(
      dev,
      (cmd) =>
        topk.record(cmd, {
          x: xb,
          n,
          k,
          rows,
          rowStride: stride,
          indices: idx,
          outStride,
          scratch,
        }),
    );
    const got = u32(dev, idx);
    for (let r = 0; r < rows; r++) {
      const want = topkRef(x.subarray(r * stride, r * stride + n), k);
      assert.equal(
        firstDiff(got.subarray(r * outStride, r * outStride + k), want),
        "none",
        `row ${r}, seed ${SEED}`,
      );
    }
    // k = n selects everything, in order.
    const small = randomF32(5000, SEED + 3);
    using sb = upload(dev, small);
    using all = dev.buffer(5000 * 4);
    using scratch2 = dev.buffer(topk.scratchBytes(5000));
    run(
      dev,
      (cmd) => topk.record(cmd, { x: sb, n: 5000, k: 5000, indices: all, scratch: scratch2 }),
    );
    assert.deepEqual(u32(dev, all), Uint32Array.from({ length: 5000 }, (_, i) => i));
  });
}

Deno.test("topk and argmax: a broken call fails the comparison; bad arguments are refused", () => {
  using dev = Device.open();
  using topk = new TopK(dev);
  using argmax = new Argmax(dev);
  const n = 50_000, k = 1000;
  const x = randomF32(n, SEED + 9);
  x[40_000] = 10;
  using xb = upload(dev, x);
  using idx = dev.buffer(k * 4);
  using scratch = dev.buffer(topk.scratchBytes(n));
  // Broken: the row is declared 1000 elements short, so the tail's large values are missed.
  run(dev, (cmd) => topk.record(cmd, { x: xb, n: n - 1000, k, indices: idx, scratch }));
  assert.notEqual(firstDiff(u32(dev, idx), topkRef(x, k)), "none");
  using out = dev.buffer(4);
  using as = dev.buffer(argmax.scratchBytes(n));
  run(dev, (cmd) => argmax.record(cmd, { x: xb, n: 40_000, out, scratch: as })); // stops short of the max
  assert.notEqual(u32(dev, out)[0], argmaxRows(x, n, 1)[0]);

  using cmd = dev.commands();
  const limit = (e: unknown) => isHcError(e, "E_VK_LIMIT");
  assert.throws(() => topk.record(cmd, { x: xb, n, k: n + 1, indices: idx, scratch }), limit);
  assert.throws(() => topk.record(cmd, { x: xb, n, k: 2000, indices: idx, scratch }), limit); // out too small
  assert.throws(() => topk.record(cmd, { x: xb, n: n + 1, k, indices: idx, scratch }), limit); // x too small
  assert.throws(
    () => topk.record(cmd, { x: { buffer: xb, offset: 4 }, n: 10, k: 1, indices: idx, scratch }),
    limit,
  );
  assert.throws(() => argmax.record(cmd, { x: xb, n, out, scratch: out }), limit); // scratch too small
  assert.throws(() => argmax.record(cmd, { x: xb, n: 0, out, scratch: as }), limit);
});
