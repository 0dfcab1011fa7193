/**
 * Per-head prompt-KV budgets (docs/algorithm.md §3). Full heads (volatile, pivot) keep all L prompt
 * tokens; a compressed head (anchor, satellite) keeps cap_h = min(int(base·ratio_h), L) tokens,
 * where ratio_h is the profile multiplier (mean 1 over compressed heads model-wide). The uniform
 * policies (snapkv, streaming) give every head the same cap.
 */
import { HcError } from "../errors.ts";
import { fullHeadCount, type HeadProfile, isFullRole } from "./profile/profile.ts";

const MAX_PROMPT_TOKENS = 2 ** 31 - 1;

/**
 * A compressing policy's prompt-KV budget: `keep`, the fraction of the prompt's KV kept on the
 * device (the official compression_ratio), or `tokens` of prompt KV per compressed head.
 */
export type Budget = { keep: number } | { tokens: number };

/** The budget of a compressing policy given none. */
export const DEFAULT_KEEP = 0.5;

/**
 * The one reading of a single user-given number (the server's `keep`, the CLI's `--keep`): a
 * fraction in (0, 1], or above 1 an integer token budget per head.
 */
export function budgetFromKeep(keep: number): Budget {
  return checkBudget(keep > 1 ? { tokens: keep } : { keep });
}

/** Returns the budget if it is valid, else throws E_BAD_REQUEST. */
export function checkBudget(budget: Budget): Budget {
  if ("tokens" in budget) {
    if (!Number.isSafeInteger(budget.tokens) || budget.tokens < 1) {
      throw new HcError(
        "E_BAD_REQUEST",
        `a token budget must be a positive integer, got ${budget.tokens}`,
      );
    }
  } else checkKeep(budget.keep);
  return budget;
}

function checkPromptTokens(promptTokens: number): void {
  if (!Number.isInteger(promptTokens) || promptTokens < 1 || promptTokens > MAX_PROMPT_TOKENS) {
    throw new HcError(
      "E_BAD_REQUEST",
      `prompt length must be an integer in [1, ${MAX_PROMPT_TOKENS}] tokens, got ${promptTokens}`,
    );
  }
}

function checkKeep(keep: number): void {
  if (!(keep > 0 && keep <= 1)) {
    throw new HcError("E_BAD_REQUEST", `keep must be a fraction in (0, 1], got ${keep}`);
  }
}

/** Smallest keep that passes the load-time assert int(keep·N) > F. */
export function minimumKeep(nTotalHeads: number, nFullHeads: number): number {
  return (nFullHeads + 1) / nTotalHeads;
}

/**
 * The keep a HeteroCache budget runs with. The official formula needs int(keep·N) > F (room for
 * at least one compressed head-equivalent beside the F full heads); a smaller keep asks for less
 * than the profile can give, so it gets the smallest budget the profile allows, (F + 1) / N, and
 * the caller reports the keep it ran with. A profile with every head full runs uncompressed (1).
 */
export function effectiveKeep(keep: number, nTotalHeads: number, nFullHeads: number): number {
  checkKeep(keep);
  if (nFullHeads >= nTotalHeads) return 1;
  if (Math.trunc(keep * nTotalHeads) > nFullHeads) return keep;
  let floor = minimumKeep(nTotalHeads, nFullHeads);
  // (F + 1) / N · N can round to just under F + 1; step up by ulps until int() clears F.
  while (Math.trunc(floor * nTotalHeads) <= nFullHeads) floor += floor * Number.EPSILON;
  return Math.min(floor, 1);
}

/**
 * base = int((r·N − F)·L / (N − F)), evaluated in the same order as the official
 * `get_compress_len` so the doubles (and the truncation) agree bit for bit.
 */
export function baseLength(
  keep: number,
  nTotalHeads: number,
  nFullHeads: number,
  promptTokens: number,
): number {
  checkKeep(keep);
  checkPromptTokens(promptTokens);
  if (
    !Number.isInteger(nTotalHeads) || nTotalHeads < 1 || !Number.isInteger(nFullHeads) ||
    nFullHeads < 0 || nFullHeads > nTotalHeads
  ) {
    throw new HcError(
      "E_BAD_REQUEST",
      `head counts must satisfy 0 ≤ full (${nFullHeads}) ≤ total (${nTotalHeads})`,
    );
  }
  if (Math.trunc(keep * nTotalHeads) <= nFullHeads) {
    const min = minimumKeep(nTotalHeads, nFullHeads);
    throw new HcError(
      "E_PROFILE",
      `keep=${keep} leaves int(${keep}·${nTotalHeads}) = ${Math.trunc(keep * nTotalHeads)} ` +
        `head-equivalents of prompt KV, but the profile keeps ${nFullHeads} heads in full ` +
        `(volatile + pivot); use keep ≥ ${min.toFixed(4)} (${nFullHeads + 1}/${nTotalHeads}) ` +
        "or a profile with fewer full heads",
    );
  }
  return Math.trunc(
    ((keep * nTotalHeads - nFullHeads) * promptTokens) / (nTotalHeads - nFullHeads),
  );
}

/** caps[layer][head] for a given base: L for full heads, min(int(base·ratio), L) otherwise. */
export function capsFromBase(
  profile: HeadProfile,
  baseTokens: number,
  promptTokens: number,
): number[][] {
  checkPromptTokens(promptTokens);
  if (!Number.isInteger(baseTokens) || baseTokens < 0) {
    throw new HcError(
      "E_BAD_REQUEST",
      `base budget must be a whole number of tokens, got ${baseTokens}`,
    );
  }
  return profile.layers.map((layer) =>
    layer.roles.map((role, h) =>
      isFullRole(role)
        ? promptTokens
        : Math.min(Math.trunc(baseTokens * layer.multipliers[h]), promptTokens)
    )
  );
}

/** The official budget: keep = fraction of the model's prompt KV kept on the device. */
export function headCaps(profile: HeadProfile, keep: number, promptTokens: number): number[][] {
  const nTotal = profile.model.nLayers * profile.model.nKvHeads;
  const base = baseLength(keep, nTotal, fullHeadCount(profile), promptTokens);
  return capsFromBase(profile, base, promptTokens);
}

/**
 * Token-budget form: `tokensPerHead` is the mean budget of a compressed head; each gets
 * tokensPerHead·ratio_h (clipped to L), so the compressed heads together hold about
 * tokensPerHead × (number of compressed heads), the same total a uniform budget would.
 */
export function headCapsFromTokens(
  profile: HeadProfile,
  tokensPerHead: number,
  promptTokens: number,
): number[][] {
  return capsFromBase(profile, tokensPerHead, promptTokens);
}

/** Per-KV-head cap for the uniform policies (snapkv, streaming) at the same device KV bytes. */
export function uniformCap(keep: number, promptTokens: number): number {
  checkKeep(keep);
  checkPromptTokens(promptTokens);
  return Math.trunc(keep * promptTokens);
}

/** Rows per head of the uniform policies as a function of the prompt length (checks the
 * budget now). */
export function uniformBudget(budget: Budget): (promptTokens: number) => number {
  const b = checkBudget(budget);
  return "tokens" in b ? (L) => Math.min(b.tokens, L) : (L) => uniformCap(b.keep, L);
}

export interface KeptSummary {
  keptTokens: number;
  totalTokens: number;
  keptFraction: number;
  /** Per layer: kept prompt rows / (KV heads × L), the "kept" column of docs/algorithm.md §8. */
  layerKeptFraction: number[];
}

export function keptSummary(
  caps: readonly (readonly number[])[],
  promptTokens: number,
): KeptSummary {
  checkPromptTokens(promptTokens);
  let keptTokens = 0;
  let totalTokens = 0;
  const layerKeptFraction = caps.map((row) => {
    const kept = row.reduce((a, b) => a + b, 0);
    keptTokens += kept;
    totalTokens += row.length * promptTokens;
    return row.length === 0 ? 0 : kept / (row.length * promptTokens);
  });
  return {
    keptTokens,
    totalTokens,
    keptFraction: totalTokens === 0 ? 0 : keptTokens / totalTokens,
    layerKeptFraction,
  };
}
