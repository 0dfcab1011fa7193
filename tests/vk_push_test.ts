import assert from "node:assert/strict";
import { Device, MAX_PUSH_BYTES, pushLayout } from "../src/vk/mod.ts";
import { isHcError } from "../src/errors.ts";

Deno.test("a push layout derives offsets and size and packs values by name", () => {
  const layout = pushLayout({ n: "u32", eps: "f32", delta: "i32", flags: "u32" });
  assert.equal(layout.bytes, 16);
  assert.deepEqual(layout.offsets, { n: 0, eps: 4, delta: 8, flags: 12 });
  // Given in another order than the layout's: packing goes by name.
  const bytes = layout.pack({ flags: 0x8000_0001, delta: -3, eps: 1e-5, n: 4096 });
  assert.equal(bytes.byteLength, 16);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  assert.equal(view.getUint32(0, true), 4096);
  assert.equal(view.getFloat32(4, true), Math.fround(1e-5));
  assert.equal(view.getInt32(8, true), -3);
  assert.equal(view.getUint32(12, true), 0x8000_0001);
});

Deno.test("u32 fields wrap modulo 2^32 like a Uint32Array store", () => {
  const layout = pushLayout({ a: "u32", b: "u32" });
  const words = new Uint32Array(layout.pack({ a: -1, b: 2 ** 32 + 5 }).buffer);
  assert.deepEqual([...words], [0xffff_ffff, 5]);
});

Deno.test("push layouts reject a missing value, a bad type and an oversized block", () => {
  const layout = pushLayout({ a: "u32", b: "f32" });
  assert.throws(
    () => layout.pack({ a: 1 } as unknown as { a: number; b: number }),
    (e) => isHcError(e, "E_VK") && /field b/.test((e as Error).message),
  );
  assert.throws(
    () => pushLayout({ a: "u64" } as unknown as { a: "u32" }),
    (e) => isHcError(e, "E_VK"),
  );
  const many = Object.fromEntries(
    Array.from({ length: MAX_PUSH_BYTES / 4 + 1 }, (_, i) => [`f${i}`, "u32" as const]),
  );
  assert.throws(() => pushLayout(many), (e) => isHcError(e, "E_VK"));
  delete many.f0;
  assert.equal(pushLayout(many).bytes, MAX_PUSH_BYTES);
});

Deno.test("a kernel declares its push layout's size; a block of another size is refused", () => {
  using dev = Device.open();
  const layout = pushLayout({ n: "u32" });
  using add = dev.kernel("add", { bindings: 3, push: layout, spec: [64] });
  assert.equal(add.pushBytes, 4);
  assert.throws(
    () => dev.kernel("add", { bindings: 3, push: layout, pushBytes: 4 }),
    (e) => isHcError(e, "E_VK"),
  );
  using buf = dev.buffer(64);
  using cmd = dev.commands();
  cmd.begin();
  assert.throws(() => cmd.dispatch(add, [buf, buf, buf], new Uint8Array(8), [1]));
  cmd.dispatch(add, [buf, buf, buf], layout.pack({ n: 16 }), [1]).end();
});
