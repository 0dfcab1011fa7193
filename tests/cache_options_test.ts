/** Cache options: the typed union, the one reading of a user's `keep`, and the budget rules. */
import assert from "node:assert/strict";
import { type HcErrorCode, isHcError } from "../src/errors.ts";
import { budgetOf, cacheOptions } from "../src/cache/options.ts";
import { budgetFromKeep, uniformBudget } from "../src/cache/budget.ts";
import { checkPolicyName, isPolicyName, POLICY_NAMES } from "../src/cache/policy.ts";
import { uniformProfile } from "../src/cache/profile/profile_io.ts";

const code = (c: HcErrorCode) => (e: unknown) => isHcError(e, c);

Deno.test("keep: a fraction up to 1, above 1 a whole token budget per head", () => {
  assert.deepEqual(budgetFromKeep(0.25), { keep: 0.25 });
  assert.deepEqual(budgetFromKeep(1), { keep: 1 });
  assert.deepEqual(budgetFromKeep(512), { tokens: 512 });
  assert.throws(() => budgetFromKeep(1.5), code("E_BAD_REQUEST"));
  assert.throws(() => budgetFromKeep(0), code("E_BAD_REQUEST"));
  assert.throws(() => budgetFromKeep(-2), code("E_BAD_REQUEST"));
  assert.deepEqual(budgetOf({}), { keep: 0.5 }, "the default budget");
  assert.deepEqual(budgetOf({ tokens: 64 }), { tokens: 64 });
  assert.throws(() => budgetOf({ keep: 0.5, tokens: 64 }), code("E_BAD_REQUEST"));
  assert.equal(uniformBudget({ keep: 0.5 })(1001), 500);
  assert.equal(uniformBudget({ tokens: 64 })(1001), 64);
  assert.equal(uniformBudget({ tokens: 64 })(10), 10, "never more than the prompt");
  assert.throws(() => uniformBudget({ tokens: 2.5 }), code("E_BAD_REQUEST"));
});

Deno.test("policy names: one check, no casts", () => {
  for (const name of POLICY_NAMES) assert.ok(isPolicyName(name));
  assert.equal(isPolicyName("h2o"), false);
  assert.equal(isPolicyName(3), false);
  assert.throws(() => checkPolicyName("h2o"), /unknown cache policy "h2o"; use one of full,/);
});

Deno.test("cacheOptions: loose input to the member of the union its policy reads", () => {
  const profile = uniformProfile(2, ["anchor", "pivot", "satellite", "volatile"], [1, -1, 1, -1]);
  assert.deepEqual(cacheOptions({}), { cache: "full" });
  assert.deepEqual(cacheOptions({ cache: "full", keep: 1, profile }), { cache: "full" });
  assert.deepEqual(cacheOptions({ cache: "snapkv", keep: 0.25, window: 8 }), {
    cache: "snapkv",
    keep: 0.25,
    window: 8,
  });
  assert.deepEqual(cacheOptions({ cache: "streaming", keep: 300 }), {
    cache: "streaming",
    tokens: 300,
  });
  const hc = cacheOptions({ cache: "heterocache", keep: 0.5, profile, threshold: 0.4 });
  assert.equal(hc.cache, "heterocache");
  assert.ok(hc.cache === "heterocache" && hc.profile === profile && hc.threshold === 0.4);
  assert.throws(() => cacheOptions({ cache: "per-step" }), code("E_PROFILE"));
  assert.throws(() => cacheOptions({ cache: "fixed-interval", profile: null }), code("E_PROFILE"));
  assert.throws(() => cacheOptions({ cache: "h2o" }), code("E_BAD_REQUEST"));
  assert.throws(() => cacheOptions({ cache: "snapkv", keep: 2.5 }), code("E_BAD_REQUEST"));
});
