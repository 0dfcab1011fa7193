/**
 * What a session asks of its cache policy: one options type per policy, told apart by `cache`,
 * each with only the knobs that policy reads. The compressing policies take their budget as
 * `keep` (a fraction of the prompt's KV, default 0.5) or `tokens` (per compressed head), one or
 * the other (budgetOf turns it into a Budget and refuses both).
 */
import { HcError } from "../errors.ts";
import { type Budget, budgetFromKeep, DEFAULT_KEEP } from "./budget.ts";
import { checkPolicyName } from "./policy.ts";
import type { HeadProfile } from "./profile/profile.ts";
import type { TriggerName } from "./heterocache/heterocache.ts";

/** The budget as callers give it: at most one of the two (see Budget in budget.ts). */
export interface BudgetOptions {
  /** Fraction of the prompt's KV kept on the device (the official compression_ratio). */
  keep?: number;
  /** Or: prompt-KV tokens per compressed head. */
  tokens?: number;
}

/** `full`: every head keeps every token (the default). */
export interface FullOptions {
  cache?: "full";
}

export type SnapKvCacheOptions = {
  cache: "snapkv";
  /** Prefill observation window: the last `window` prompt queries score the rows (default 32). */
  window?: number;
} & BudgetOptions;

export type StreamingCacheOptions = {
  cache: "streaming";
  /** Attention sink tokens (default 4). */
  sinkTokens?: number;
} & BudgetOptions;

/** What HeteroCache and its ablations share. */
interface HeteroCacheCommon {
  /** The head profile (`hc calibrate`, or the official one imported). */
  profile: HeadProfile;
  /** Reproduce the official code, quirks included. */
  compat?: boolean;
  /** Prefill observation window (default 16; compat 1: the last token). */
  window?: number;
  /** Log every refresh with its scores (tests, debugging). */
  record?: boolean;
}

export type HeteroCacheOptions =
  & HeteroCacheCommon
  & BudgetOptions
  & (
    | {
      cache: "heterocache";
      /** "coverage" (default; read from the decode attention every step, no extra work) or
       * the official "drift" overlap test every `checkEvery` steps (compat's default). */
      trigger?: TriggerName;
      /** Coverage trigger: refresh a cluster when its pivot's held share falls below this
       * fraction of its share after the last refresh (default 0.5). */
      coverageDrop?: number;
      /** Drift check every N decode steps (default 5). */
      checkEvery?: number;
      /** Drift threshold (default: the profile's). */
      threshold?: number;
    }
    /** The ablation that refreshes every step. */
    | { cache: "per-step" }
    /** The ablation that refreshes every `interval` steps (default 2). */
    | { cache: "fixed-interval"; interval?: number }
  );

export type CacheOptions =
  | FullOptions
  | SnapKvCacheOptions
  | StreamingCacheOptions
  | HeteroCacheOptions;

/** The budget of options that carry one; both forms at once is an error. */
export function budgetOf(opts: BudgetOptions): Budget {
  if (opts.tokens === undefined) return { keep: opts.keep ?? DEFAULT_KEEP };
  if (opts.keep !== undefined) {
    throw new HcError("E_BAD_REQUEST", "give the budget as keep or as tokens, not both");
  }
  return { tokens: opts.tokens };
}

/** Options as loosely typed input gives them (a server request, CLI or benchmark flags). */
export interface CacheRequest {
  cache?: string | null;
  /** A fraction in (0, 1], or above 1 a token budget per head (budgetFromKeep). */
  keep?: number | null;
  profile?: HeadProfile | null;
  compat?: boolean;
  window?: number;
  threshold?: number;
  trigger?: TriggerName;
  coverageDrop?: number;
  interval?: number;
}

/**
 * Typed options from loosely typed input: checks the policy name, reads `keep` as
 * budgetFromKeep does, requires a profile where the policy needs one, and keeps only the knobs
 * the chosen policy reads.
 */
export function cacheOptions(input: CacheRequest): CacheOptions {
  const cache = checkPolicyName(input.cache ?? "full");
  const read = input.keep === null || input.keep === undefined ? null : budgetFromKeep(input.keep);
  const budget: BudgetOptions = read === null
    ? {}
    : "tokens" in read
    ? { tokens: read.tokens }
    : { keep: read.keep };
  const hetero = () => {
    if (!input.profile) throw needsProfile(cache);
    return { ...budget, profile: input.profile, compat: input.compat, window: input.window };
  };
  switch (cache) {
    case "full":
      return { cache };
    case "snapkv":
      return { cache, ...budget, window: input.window };
    case "streaming":
      return { cache, ...budget };
    case "heterocache":
      return {
        cache,
        ...hetero(),
        threshold: input.threshold,
        trigger: input.trigger,
        coverageDrop: input.coverageDrop,
      };
    case "per-step":
      return { cache, ...hetero() };
    case "fixed-interval":
      return { cache, ...hetero(), interval: input.interval };
  }
}

export function needsProfile(name: string): HcError {
  return new HcError(
    "E_PROFILE",
    `the ${name} policy needs a head profile: run \`hc calibrate\` or import the official one`,
  );
}
