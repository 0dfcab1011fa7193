/** Cache policies behind one interface, and the factory the engine uses. */
import { HcError } from "../errors.ts";
import type { ModelConfig } from "../model/config.ts";
import type { Device } from "../vk/mod.ts";
import { FullCache } from "./full.ts";
import { HeteroCache } from "./heterocache/heterocache.ts";
import type { CacheKernels } from "./kernels.ts";
import { type CachePolicy, POLICY_NAMES, type PolicyName } from "./policy.ts";
import { checkProfileMatches, type HeadProfile, type ModelIdentity } from "./profile/profile.ts";
import { SnapKvCache, StreamingCache } from "./snapkv.ts";

export * from "./policy.ts";
export { CacheKernels } from "./kernels.ts";

export interface CacheOptions {
  /** Which policy (default "full"). */
  cache?: PolicyName;
  /** Fraction of the prompt KV kept on the device (the official compression_ratio); default 0.5. */
  keep?: number;
  /** Or: prompt-KV tokens per (compressed) head; overrides keep. */
  budgetTokens?: number;
  /** The head profile HeteroCache and its ablations need. */
  profile?: HeadProfile;
  /** HeteroCache: reproduce the official code, quirks included. */
  compat?: boolean;
  /** HeteroCache: drift check every N decode steps (default 5). */
  checkEvery?: number;
  /** HeteroCache: drift threshold (default: the profile's). */
  threshold?: number;
  /** fixed-interval: refresh every N steps (default 2). */
  interval?: number;
  /** Prefill observation window: the last `window` prompt queries score which rows a
   * compressed head keeps (SnapKV default 32; HeteroCache default 16, compat 1: the last token). */
  window?: number;
  /** StreamingLLM sink tokens (default 4). */
  sinkTokens?: number;
  /** HeteroCache: log every refresh with its scores (tests, debugging). */
  record?: boolean;
}

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

export const DEFAULT_KEEP = 0.5;

export function createPolicy(opts: CacheOptions, ctx: PolicyContext): CachePolicy {
  const name = opts.cache ?? "full";
  if (!(POLICY_NAMES as readonly string[]).includes(name)) {
    throw new HcError(
      "E_BAD_REQUEST",
      `unknown cache policy "${name}"; use one of ${POLICY_NAMES.join(", ")}`,
    );
  }
  const keep = opts.keep ?? DEFAULT_KEEP;
  switch (name) {
    case "full":
      return new FullCache(ctx.device, ctx.config, ctx.contextTokens);
    case "snapkv":
      return new SnapKvCache({ device: ctx.device, config: ctx.config, kernels: ctx.kernels() }, {
        keep,
        budgetTokens: opts.budgetTokens,
        window: opts.window,
      });
    case "streaming":
      return new StreamingCache(
        { device: ctx.device, config: ctx.config, kernels: ctx.kernels() },
        { keep, budgetTokens: opts.budgetTokens, sinkTokens: opts.sinkTokens },
      );
    case "heterocache":
    case "per-step":
    case "fixed-interval": {
      if (!opts.profile) {
        throw new HcError(
          "E_PROFILE",
          `the ${name} policy needs a head profile: run \`hc calibrate\` or import the official one`,
        );
      }
      checkProfileMatches(opts.profile, ctx.identity);
      return new HeteroCache(
        { device: ctx.device, config: ctx.config, kernels: ctx.kernels() },
        name,
        {
          record: opts.record,
          keep,
          budgetTokens: opts.budgetTokens,
          profile: opts.profile,
          compat: opts.compat,
          checkEvery: opts.checkEvery,
          threshold: opts.threshold,
          interval: opts.interval,
          window: opts.window,
        },
      );
    }
  }
}
