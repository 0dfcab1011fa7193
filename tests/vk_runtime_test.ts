import assert from "node:assert/strict";
import {
  type BindingKind,
  type CommandList,
  Device,
  listDevices,
  TIMESTAMP_SLOTS,
} from "../src/vk/mod.ts";
import { isHcError } from "../src/errors.ts";
import { randomF32, relError } from "./helpers.ts";

Deno.test("devices are listed with their limits", () => {
  const devices = listDevices();
  assert.ok(devices.length >= 1);
  for (const d of devices) {
    assert.equal(typeof d.name, "string");
    assert.ok(d.subgroupSize >= 1);
    assert.ok(d.maxStorageBufferRange > 0);
  }
});

Deno.test("device selection by index and by name; a bad selector is a clear error", () => {
  const first = listDevices()[0];
  using byIndex = Device.open("0");
  assert.equal(byIndex.info.name, first.name);
  using byName = Device.open(first.name.slice(0, 4).toUpperCase());
  assert.equal(byName.info.name, first.name);
  assert.throws(() => Device.open("no-such-gpu-anywhere"), (e) => isHcError(e, "E_VK_NO_DEVICE"));
  assert.throws(() => Device.open("99"), (e) => isHcError(e, "E_VK_NO_DEVICE"));
});

Deno.test("upload and download round-trip through every buffer kind, at offsets", () => {
  using dev = Device.open();
  const data = randomF32(3 << 20, 7); // 12 MiB
  for (const kind of ["device", "upload", "readback"] as const) {
    using b = dev.buffer(data.byteLength + 64, kind);
    dev.upload(b, data, 64);
    const back = new Float32Array(dev.download(b, 64, data.byteLength).buffer);
    assert.deepEqual(back, data, kind);
  }
});

Deno.test("a recorded dispatch replays with new inputs, and timestamps are taken", async () => {
  using dev = Device.open();
  const n = 100_003;
  using a = dev.buffer(n * 4, "upload");
  using b = dev.buffer(n * 4);
  using o = dev.buffer(n * 4, "readback");
  using add = dev.kernel("add", { bindings: 3, pushBytes: 4, spec: [128] });
  using cmd = dev.commands();
  const x = randomF32(n, 1), y = randomF32(n, 2);
  dev.upload(b, y);
  cmd.begin().timestamp(0).dispatch(add, [a, b, o], new Uint32Array([n]), [Math.ceil(n / 128)])
    .timestamp(1).end();
  for (let rep = 0; rep < 3; rep++) {
    const xs = x.map((v) => v * (rep + 1));
    new Float32Array(a.mapped().buffer).set(xs);
    await dev.wait("compute", cmd.submit());
    const out = new Float32Array(o.mapped().buffer.slice(0));
    assert.ok(relError(out, xs.map((v, i) => v + y[i])) < 1e-6, `replay ${rep}`);
  }
  const [t0, t1] = cmd.timestamps(2);
  assert.ok(t1 >= t0 && t1 > 0);
});

Deno.test("a profiled recording times every dispatch, in order, and only while profiling", async () => {
  using dev = Device.open();
  const n = 1 << 16;
  using a = dev.buffer(n * 4);
  using b = dev.buffer(n * 4);
  using o = dev.buffer(n * 4);
  using add = dev.kernel("add", { bindings: 3, pushBytes: 4, spec: [128] });
  using fma = dev.kernel("fma_peak", { bindings: 1, pushBytes: 4, spec: [64] });
  const record = (cmd: CommandList) => {
    cmd.begin();
    for (let i = 0; i < 3; i++) {
      cmd.dispatch(add, [a, b, o], new Uint32Array([n]), [n / 128]).barrier();
    }
    // The slowest of the four: 64 workgroups of FMA loops.
    cmd.dispatch(fma, [o], new Uint32Array([512]), [64]).end();
  };
  using plain = dev.commands();
  record(plain);
  await dev.wait("compute", plain.submit());
  assert.equal(plain.profile(), null);
  assert.equal(dev.lastComputeList, plain);

  dev.profileDispatches = true;
  using timed = dev.commands();
  try {
    record(timed);
  } finally {
    dev.profileDispatches = false;
  }
  for (let rep = 0; rep < 2; rep++) {
    await dev.wait("compute", timed.submit());
    const p = timed.profile();
    assert.ok(p, "profiled");
    assert.deepEqual(p.map((d) => d.kernel), ["add", "add", "add", "fma_peak"]);
    assert.ok(p.every((d) => d.ms >= 0), JSON.stringify(p));
    // The dispatch times add up to the recording's span, slot 0 to the last slot.
    const sum = p.reduce((s, d) => s + d.ms, 0);
    assert.ok(Math.abs(sum - timed.elapsedMs(0, 4)) < 1e-6, `${sum} vs ${timed.elapsedMs(0, 4)}`);
    assert.ok(p[3].ms > p[0].ms, JSON.stringify(p));
  }
  // The last slot is usable, the next one is an argument error.
  using edge = dev.commands();
  edge.begin().timestamp(TIMESTAMP_SLOTS - 1);
  assert.throws(() => edge.timestamp(TIMESTAMP_SLOTS), (e) => isHcError(e, "E_VK"));
  edge.end();
});

Deno.test("bad handles, bad ranges and limits are errors, not crashes", () => {
  using dev = Device.open();
  using add = dev.kernel("add", { bindings: 3, pushBytes: 4, spec: [64] });
  const b = dev.buffer(256);
  b.dispose();
  using c = dev.buffer(256);
  using cmd = dev.commands();
  cmd.begin();
  assert.throws(
    () => cmd.dispatch(add, [b, c, c], new Uint32Array([1]), [1]),
    (e) => isHcError(e, "E_VK_BAD_HANDLE"),
  );
  assert.throws(
    () => cmd.dispatch(add, [c, c], new Uint32Array([1]), [1]),
    (e) => isHcError(e, "E_VK"),
  );
  assert.throws(
    () =>
      cmd.dispatch(add, [c, c, c], new Uint32Array([1]), [
        dev.info.maxComputeWorkGroupCount[0] + 1,
      ]),
    (e) => isHcError(e, "E_VK_LIMIT"),
  );
  assert.throws(
    () => cmd.dispatch(add, [{ buffer: c, offset: 3 }, c, c], new Uint32Array([1]), [1]),
    (e) => isHcError(e, "E_VK"),
  );
  assert.throws(() => cmd.copy(c, c, [[200, 0, 100]]), (e) => isHcError(e, "E_VK"));
  cmd.end();
  assert.throws(
    () => dev.buffer(dev.info.maxAllocationBytes + 1),
    (e) => isHcError(e, "E_VK_LIMIT"),
  );
  assert.throws(
    () => dev.kernel("no_such_kernel", { bindings: 1 }),
    (e) => isHcError(e, "E_SHADER_MISSING"),
  );
  assert.throws(
    () => dev.kernel("add", { bindings: 3, pushBytes: 256 }),
    (e) => isHcError(e, "E_VK_LIMIT"),
  );
});

Deno.test("a binding over maxStorageBufferRange is refused with a hint to split", () => {
  using dev = Device.open();
  const range = dev.info.maxStorageBufferRange;
  if (range >= dev.info.maxAllocationBytes) return; // nothing to test on this device
  using big = dev.buffer(range + 256);
  using add = dev.kernel("add", { bindings: 3, pushBytes: 4, spec: [64] });
  using cmd = dev.commands();
  cmd.begin();
  assert.throws(
    () => cmd.dispatch(add, [big, big, big], new Uint32Array([1]), [1]),
    (e) => isHcError(e, "E_VK_LIMIT"),
  );
  cmd.dispatch(
    add,
    [
      { buffer: big, offset: 0, bytes: range },
      big.bytes > range ? { buffer: big, offset: 256, bytes: range } : big,
      { buffer: big, offset: 0, bytes: 1024 },
    ],
    new Uint32Array([1]),
    [1],
  );
  cmd.end();
});

Deno.test("a host→device transfer runs beside a dispatch, ordered only where its data is used", async () => {
  using dev = Device.open();
  const n = 1 << 22; // 16 MiB per vector
  const rowBytes = 4096;
  const rows = (n * 4) / rowBytes;
  using a = dev.buffer(n * 4), b = dev.buffer(n * 4), x = dev.buffer(n * 4);
  using d = dev.buffer(n * 4), out = dev.buffer(n * 4, "readback");
  using staging = dev.buffer(n * 4, "upload");
  using add = dev.kernel("add", { bindings: 3, pushBytes: 4, spec: [256] });
  const av = randomF32(n, 11), bv = randomF32(n, 12);
  dev.upload(a, av);
  dev.upload(b, bv);
  // Host store: rows in scrambled order; the gather puts them back in order off the JS thread.
  const hostRows = randomF32(n, 13);
  const order = new Uint32Array(rows).map((_, i) => (i * 7919) % rows);
  const host = new Uint8Array(n * 4);
  for (let i = 0; i < rows; i++) {
    host.set(new Uint8Array(hostRows.buffer, i * rowBytes, rowBytes), order[i] * rowBytes);
  }
  const groups = [Math.min(n / 256, 65535), Math.ceil(n / 256 / 65535)] as const;
  using compute = dev.commands("compute");
  compute.begin();
  for (let i = 0; i < 8; i++) {
    compute.dispatch(add, [a, b, x], new Uint32Array([n]), groups).barrier();
  }
  compute.end();
  using transfer = dev.commands("transfer");
  transfer.begin().copy(staging, d, [[0, 0, n * 4]]).end();
  using consume = dev.commands("compute");
  consume.begin().dispatch(add, [x, d, out], new Uint32Array([n]), groups).end();

  const vCompute = compute.submit();
  let ticks = 0;
  const timer = setInterval(() => ticks++, 1);
  const t0 = performance.now();
  await dev.gatherRows([{
    dst: staging,
    dstOffsetBytes: 0,
    dstStrideBytes: rowBytes,
    src: host,
    srcStrideBytes: rowBytes,
    rows: order,
    rowBytes,
  }]);
  const vTransfer = transfer.submit();
  // The consumer waits for the transfer's value (and the compute queue's order), nothing else.
  const vConsume = consume.submit({ transfer: vTransfer });
  await dev.wait("compute", vConsume);
  const ms = performance.now() - t0;
  clearInterval(timer);
  assert.ok(vCompute < vConsume || dev.info.separateTransferQueue);
  const got = new Float32Array(out.mapped().buffer.slice(0));
  const want = av.map((v, i) => v + bv[i] + hostRows[i]);
  assert.ok(relError(got, want) < 1e-6);
  // The event loop kept running while the gather and the device work were in flight.
  assert.ok(ticks >= 1, `JS timer ticked ${ticks} times during ${ms.toFixed(1)} ms of device work`);
});

Deno.test("row gathers: scattered destination rows, on two threads, into a host-visible device buffer; a buffer disposed mid-gather lives until it ends", async () => {
  using dev = Device.open();
  const rowBytes = 64, n = 300;
  const host = new Uint8Array(n * rowBytes).map((_, i) => (i * 31 + (i >> 6)) & 255);
  // Two jobs: job 0 scatters rows 5, 9, 200 into device rows 7, 0, 3; job 1 fills rows 10.. in order.
  const device = dev.buffer(20 * rowBytes);
  const probe = dev.buffer(20 * rowBytes, "upload");
  const jobs = (dst: typeof device) => [
    {
      dst,
      dstOffsetBytes: 0,
      dstStrideBytes: rowBytes,
      src: host,
      srcStrideBytes: rowBytes,
      rows: new Uint32Array([5, 9, 200]),
      rowBytes,
      dstRows: new Uint32Array([7, 0, 3]),
    },
    {
      dst,
      dstOffsetBytes: 10 * rowBytes,
      dstStrideBytes: rowBytes,
      src: host,
      srcStrideBytes: rowBytes,
      rows: new Uint32Array([1, 2, 299]),
      rowBytes,
    },
  ];
  const check = (got: Uint8Array) => {
    const row = (r: number) => host.subarray(r * rowBytes, (r + 1) * rowBytes);
    const at = (r: number) => got.subarray(r * rowBytes, (r + 1) * rowBytes);
    for (const [d, s] of [[7, 5], [0, 9], [3, 200], [10, 1], [11, 2], [12, 299]]) {
      assert.deepEqual(at(d), row(s), `device row ${d}`);
    }
  };
  await dev.gatherRows(jobs(probe), 2);
  check(probe.mapped());
  // A CPU device's memory is host memory: its device buffers map (what a direct refresh needs).
  if (dev.info.type === "cpu") assert.ok(device.hostVisible);
  if (device.hostVisible) {
    await dev.gatherRows(jobs(device), 2);
    check(device.mapped());
    const running = dev.gatherRows(jobs(device), 2);
    device.dispose(); // freed only once the gather ends
    await running;
    await dev.settled();
  } else device.dispose();
  // Destination rows out of range, or not one per row, are errors before anything runs.
  const bad = jobs(probe);
  bad[0].dstRows = new Uint32Array([7, 0, 20]);
  await assert.rejects(dev.gatherRows(bad), (e) => isHcError(e, "E_VK_LIMIT"));
  bad[0].dstRows = new Uint32Array([7, 0]);
  await assert.rejects(dev.gatherRows(bad), (e) => isHcError(e, "E_VK_LIMIT"));
  probe.dispose();
});

Deno.test("texel bindings: one view per bound range, owned by its buffer; bad ranges are errors", () => {
  using dev = Device.open();
  const kinds = ["texel", "texel", "storage"] as const;
  // matvec_rlt_f32: the CPU row-loop matvec reading weights (binding 0) and x (1) as texels.
  const make = () =>
    dev.kernel("matvec_rlt_f32", { bindings: 3, kinds, pushBytes: 36, spec: [8, 4, 1] });
  if (!dev.info.texelBuffer) {
    assert.throws(make, (e) => isHcError(e, "E_VK_LIMIT"));
    return;
  }
  assert.ok(dev.info.maxTexelBufferElements >= 65536); // the Vulkan minimum
  for (const bad of [["texel"], ["toString", "texel", "storage"]]) {
    assert.throws(
      () => dev.kernel("matvec_rlt_f32", { bindings: 3, kinds: bad as BindingKind[] }),
      (e) => isHcError(e, "E_VK"),
    );
  }
  using mv = make();
  // cols: one row-loop unit of F32 (256 elements).
  const rows = 4, cols = 256, wBytes = rows * cols * 4;
  // Three weights in one buffer at 16-byte aligned offsets, each its own view.
  const offsets = [0, wBytes + 16, 2 * wBytes + 48];
  using w = dev.buffer(3 * wBytes + 48);
  using x = dev.buffer(cols * 4);
  using y = dev.buffer(offsets.length * rows * 4, "readback");
  const ws = offsets.map((_, i) => randomF32(rows * cols, 40 + i));
  ws.forEach((wi, i) => dev.upload(w, wi, offsets[i]));
  const xv = randomF32(cols, 50);
  dev.upload(x, xv);
  const push = new Uint32Array([rows, cols, 0, cols * 4, cols, rows, 0, 1, 1 << 8]);
  using cmd = dev.commands();
  for (let rep = 0; rep < 2; rep++) { // a second recording reuses the buffer's views
    cmd.begin();
    offsets.forEach((off, i) => {
      const yb = { buffer: y, offset: i * rows * 4, bytes: rows * 4 };
      cmd.dispatch(mv, [{ buffer: w, offset: off, bytes: wBytes }, x, yb], push, [1]);
    });
    cmd.end();
    dev.waitSync("compute", cmd.submit());
    const got = new Float32Array(y.mapped().buffer.slice(0));
    ws.forEach((wi, i) => {
      const want = Array.from({ length: rows }, (_, r) => {
        let s = 0;
        for (let k = 0; k < cols; k++) s += wi[r * cols + k] * xv[k];
        return s;
      });
      assert.ok(relError(got.subarray(i * rows, (i + 1) * rows), want) < 1e-5, `weight ${i}`);
    });
  }
  cmd.begin();
  const bad = (binding: { buffer: typeof w; offset: number; bytes?: number }, code: string) =>
    assert.throws(
      () => cmd.dispatch(mv, [binding, x, y], push, [1]),
      (e) => isHcError(e, code as "E_VK"),
    );
  bad({ buffer: w, offset: 8, bytes: wBytes }, "E_VK"); // offset off the texel alignment
  bad({ buffer: w, offset: 0, bytes: wBytes + 4 }, "E_VK"); // not whole texels
  using odd = dev.buffer(wBytes + 4);
  bad({ buffer: odd, offset: 0 }, "E_VK"); // "to the end": a partial texel
  cmd.end();
});
