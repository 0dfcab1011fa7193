/**
 * Device tests of argmax against testing/reference_ops.ts, on fresh random data with planted
 * ties, NaNs and signed zeros; every test runs on the subgroup and on the shared-memory path.
 */
import assert from "node:assert/strict";
import { type Buffer, type CommandList, Device } from "../src/vk/mod.ts";
import { isHcError } from "../src/errors.ts";
import { Argmax } from "../src/kernels/select.ts";
import { argmaxRows } from "../testing/reference_ops.ts";
import { randomF32 } from "./helpers.ts";

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
}

Deno.test("argmax: a broken call fails the comparison; bad arguments are refused", () => {
  using dev = Device.open();
  using argmax = new Argmax(dev);
  const n = 50_000;
  const x = randomF32(n, SEED + 9);
  x[40_000] = 10;
  using xb = upload(dev, x);
  using out = dev.buffer(4);
  using as = dev.buffer(argmax.scratchBytes(n));
  run(dev, (cmd) => argmax.record(cmd, { x: xb, n: 40_000, out, scratch: as })); // stops short of the max
  assert.notEqual(u32(dev, out)[0], argmaxRows(x, n, 1)[0]);

  using cmd = dev.commands();
  const limit = (e: unknown) => isHcError(e, "E_VK_LIMIT");
  assert.throws(() => argmax.record(cmd, { x: xb, n: n + 1, out, scratch: as }), limit); // x too small
  assert.throws(() => argmax.record(cmd, { x: xb, n, out, scratch: out }), limit); // scratch too small
  assert.throws(() => argmax.record(cmd, { x: xb, n: 0, out, scratch: as }), limit);
});
