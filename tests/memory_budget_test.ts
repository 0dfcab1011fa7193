/**
 * Running out of device memory: an allocation past the budget (here a simulated one,
 * Device.setMemoryBudget) is E_VK_OOM naming the bytes needed and free, leaks nothing, and the
 * model and its other sessions carry on.
 */
import assert from "node:assert/strict";
import { isHcError, loadModel } from "../mod.ts";
import { Device } from "../src/vk/mod.ts";
import { sharedPath } from "./helpers.ts";

const PROMPT = "Once upon a time, there was a little girl named Lily.";

function sizes(e: unknown): { needed: number; free: number } {
  assert.ok(isHcError(e, "E_VK_OOM"), String(e));
  const m = /(\d+) bytes needed, (\d+) bytes free/.exec(e.message);
  assert.ok(m, e.message);
  return { needed: Number(m[1]), free: Number(m[2]) };
}

Deno.test("a simulated budget: past it is E_VK_OOM with the sizes; then generation goes on", async () => {
  using device = Device.open();
  await using model = await loadModel(sharedPath("models/stories260K.gguf"), { device });
  using before = model.session({ contextTokens: 128 });
  const expected = await before.complete(PROMPT, { temperature: 0, maxTokens: 16 });

  const held = device.memory().heldBytes;
  device.setMemoryBudget(held + 200_000);
  assert.equal(device.memory().capBytes, held + 200_000);
  assert.equal(device.memory().freeBytes, 200_000);
  // A raw buffer past the budget.
  let oom: unknown;
  try {
    device.buffer(300_000);
  } catch (e) {
    oom = e;
  }
  assert.deepEqual(sizes(oom), { needed: 300_000, free: 200_000 });
  // A whole session's KV (2048 tokens: about 1.3 MB here) past it.
  oom = undefined;
  try {
    model.session({ contextTokens: model.config.contextLength });
  } catch (e) {
    oom = e;
  }
  const s = sizes(oom);
  assert.ok(s.needed > s.free && s.free <= 200_000, JSON.stringify(s));
  assert.equal(device.memory().heldBytes, held, "a failed session frees what it took");
  assert.equal(model.sessionCount, 1);

  // Under the same budget: the running session and a small new one generate as before.
  const again = await before.complete(PROMPT, { temperature: 0, maxTokens: 16 });
  assert.equal(again.text, expected.text);
  using small = model.session({ contextTokens: 64 });
  assert.equal(
    (await small.complete(PROMPT, { temperature: 0, maxTokens: 16 })).text,
    expected.text,
  );

  device.setMemoryBudget(null);
  assert.equal(device.memory().capBytes, null);
  using big = model.session({ contextTokens: model.config.contextLength });
  assert.equal((await big.complete(PROMPT, { temperature: 0, maxTokens: 16 })).text, expected.text);
});

Deno.test("memory budget options: bad values are errors; the device reports its extensions", () => {
  assert.throws(
    () => Device.open(undefined, { memoryBudgetBytes: -1 }),
    (e) => isHcError(e, "E_BAD_REQUEST"),
  );
  using device = Device.open(undefined, { memoryBudgetBytes: 1 << 20 });
  assert.equal(device.memory().capBytes, 1 << 20);
  assert.throws(() => device.buffer(2 << 20), (e) => sizes(e).needed === 2 << 20);
  assert.throws(() => device.setMemoryBudget(0.5), (e) => isHcError(e, "E_BAD_REQUEST"));
  for (const k of ["memoryBudget", "subgroupSizeControl", "fullSubgroups"] as const) {
    assert.equal(typeof device.info[k], "boolean", k);
  }
  const m = device.memory();
  assert.ok(m.budgetBytes > 0 && m.freeBytes <= m.budgetBytes, JSON.stringify(m));
});
