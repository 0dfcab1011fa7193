/**
 * `streaming` (StreamingLLM): chooses once, at the end of prefill, and never moves anything
 * afterwards. Every head keeps the attention sinks plus the most recent tokens, the same budget
 * for all.
 */
import type { Buffer } from "../vk/mod.ts";
import { type Budget, uniformBudget } from "./budget.ts";
import { CompressedCache, type HeadSelection, type PolicyDeps } from "./compressed.ts";
import type { CacheHeadRole } from "./policy.ts";

export interface StreamingOptions {
  budget: Budget;
  /** Sink tokens (default 4). */
  sinkTokens?: number;
}

/** The sinks and the most recent tokens, `cap` rows in all (StreamingLLM). */
export class StreamingCache extends CompressedCache {
  readonly name = "streaming" as const;
  readonly captureWindow = 0;
  readonly #budget: (promptTokens: number) => number;
  readonly #sinks: number;

  constructor(deps: PolicyDeps, opts: StreamingOptions) {
    super(deps, "streaming");
    this.#budget = uniformBudget(opts.budget);
    this.keepFraction = "keep" in opts.budget ? opts.budget.keep : null;
    this.#sinks = opts.sinkTokens ?? 4;
  }

  protected select(): Promise<{ selections: HeadSelection[][]; owned: Buffer[] }> {
    const L = this.promptTokens;
    const cap = this.#budget(L);
    const sinks = Math.min(this.#sinks, cap);
    const sel: HeadSelection = cap >= L
      ? { kind: "all" }
      : { kind: "ranges", ranges: [[0, sinks], [L - (cap - sinks), cap - sinks]] };
    return Promise.resolve({
      selections: Array.from(
        { length: this.config.nLayers },
        () => Array(this.config.nKvHeads).fill(sel),
      ),
      owned: [],
    });
  }

  protected roleOf(): CacheHeadRole {
    return "compressed";
  }
}
