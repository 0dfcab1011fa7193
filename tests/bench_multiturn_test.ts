import assert from "node:assert/strict";
import { multiturnCharts, runMultiturn } from "../bench/multiturn.ts";

Deno.test("multi-turn bench: full and HeteroCache answer every follow-up; SnapKV keeps only turn 1's fact", async () => {
  const r = await runMultiturn({
    lengths: [600],
    turns: 3,
    docs: 1,
    policies: [
      { label: "full", cache: "full" },
      { label: "snapkv", cache: "snapkv" },
      { label: "heterocache", cache: "heterocache" },
    ],
    log: () => {},
  });
  const cell = (p: string) => r.cells.find((c) => c.policy === p)!;
  assert.deepEqual(cell("full").accuracy, [1, 1, 1]);
  assert.deepEqual(cell("heterocache").accuracy, [1, 1, 1]);
  assert.equal(cell("snapkv").accuracy[0], 1);
  for (const c of r.cells) {
    // Turn 1 prefills the document; later turns only the question (+ the pending answer).
    assert.ok(c.turnTokens[0] > 600);
    assert.deepEqual(c.turnTokens.slice(1), [5, 5]);
    assert.ok(c.reprefillRight, `${c.policy}: the fresh re-prefill answers too`);
    assert.ok(c.deviceKvBytes.every((b) => b > 0));
  }
  assert.ok(cell("heterocache").deviceKvBytes[2] < cell("full").deviceKvBytes[2]);
  assert.equal(multiturnCharts(r).length, 1);
  assert.match(r.table, /\| 600 \| heterocache \| 0.25 \|/);
});
