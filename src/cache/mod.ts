/** Cache policies behind one interface, and the factory the engine uses. */
import type { ModelConfig } from "../model/config.ts";
import type { Device } from "../vk/mod.ts";
import { FullCache } from "./full.ts";
import { HeteroCache } from "./heterocache/heterocache.ts";
import type { CacheKernels } from "./kernels.ts";
import { type CachePolicy, checkPolicyName } from "./policy.ts";
import { checkProfileMatches, type ModelIdentity } from "./profile/profile.ts";
import { budgetOf, type CacheOptions, needsProfile } from "./options.ts";
import { SnapKvCache } from "./snapkv.ts";
import { StreamingCache } from "./streaming.ts";

export * from "./policy.ts";
export * from "./options.ts";
export { type Budget, budgetFromKeep, DEFAULT_KEEP } from "./budget.ts";
export { CacheKernels } from "./kernels.ts";

export interface PolicyContext {
  device: Device;
  config: ModelConfig;
  /** Most tokens (prompt + generated) of the session. */
  contextTokens: number;
  /** The model's shared cache kernels (made on first use). */
  kernels: () => CacheKernels;
  /** What a head profile must match. */
  identity: ModelIdentity;
}

export function createPolicy(opts: CacheOptions, ctx: PolicyContext): CachePolicy {
  checkPolicyName(opts.cache ?? "full");
  const deps = () => ({ device: ctx.device, config: ctx.config, kernels: ctx.kernels() });
  switch (opts.cache) {
    case undefined:
    case "full":
      return new FullCache(ctx.device, ctx.config, ctx.contextTokens);
    case "snapkv":
      return new SnapKvCache(deps(), { budget: budgetOf(opts), window: opts.window });
    case "streaming":
      return new StreamingCache(deps(), { budget: budgetOf(opts), sinkTokens: opts.sinkTokens });
    case "heterocache":
    case "per-step":
    case "fixed-interval": {
      // Typed callers always pass a profile; JavaScript callers and casts may not.
      if (!opts.profile) throw needsProfile(opts.cache);
      checkProfileMatches(opts.profile, ctx.identity);
      return new HeteroCache(deps(), opts.cache, {
        record: opts.record,
        budget: budgetOf(opts),
        profile: opts.profile,
        compat: opts.compat,
        checkEvery: opts.cache === "heterocache" ? opts.checkEvery : undefined,
        threshold: opts.cache === "heterocache" ? opts.threshold : undefined,
        interval: opts.cache === "fixed-interval" ? opts.interval : undefined,
        trigger: opts.cache === "heterocache" ? opts.trigger : undefined,
        coverageDrop: opts.cache === "heterocache" ? opts.coverageDrop : undefined,
        window: opts.window,
      });
    }
  }
}
