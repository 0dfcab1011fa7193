/**
 * Policies that choose once, at the end of prefill, and never move anything afterwards:
 * `snapkv` (observation window, pooled attention, per KV head with its query group combined)
 * and `streaming` (attention sinks plus the most recent tokens). Every head gets the same budget.
 */
import type { KvLayerCache } from "../kernels/kv.ts";
import type { Captures } from "../model/forward.ts";
import type { Buffer } from "../vk/mod.ts";
import { uniformCap } from "./budget.ts";
import {
  checkBudgetTokens,
  checkKeep,
  CompressedCache,
  type HeadSelection,
  type PolicyDeps,
} from "./compressed.ts";
import type { HeadInfo } from "./policy.ts";

export interface StaticOptions {
  keep: number;
  /** Tokens of prompt KV per head instead of a fraction (overrides keep). */
  budgetTokens?: number;
  /** SnapKV observation window (default 32). */
  window?: number;
  /** SnapKV pooling kernel (default 5). */
  poolKernel?: number;
  /** StreamingLLM sink tokens (default 4). */
  sinkTokens?: number;
}

/** Rows per head for a prompt of L tokens: a fraction of it, or a fixed token budget. */
function budgetOf(
  opts: StaticOptions,
): { cap: (promptTokens: number) => number; keep: number | null } {
  if (opts.budgetTokens !== undefined) {
    const t = checkBudgetTokens(opts.budgetTokens);
    return { cap: (L) => Math.min(t, L), keep: null };
  }
  const keep = checkKeep(opts.keep);
  return { cap: (L) => uniformCap(keep, L), keep };
}

/** The sinks and the most recent tokens, `cap` rows in all (StreamingLLM). */
export class StreamingCache extends CompressedCache {
  readonly name = "streaming" as const;
  readonly captureWindow = 0;
  readonly #budget: (promptTokens: number) => number;
  readonly #sinks: number;

  constructor(deps: PolicyDeps, opts: StaticOptions) {
    super(deps, "streaming");
    const budget = budgetOf(opts);
    this.#budget = budget.cap;
    this.keepFraction = budget.keep;
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

  protected roleOf(): HeadInfo["role"] {
    return "compressed";
  }
}

/**
 * SnapKV: the last `window` prompt queries score every earlier position (softmax over all L
 * keys, summed over the window and averaged over the KV head's query group, then 1-D average
 * pooled with kernel 5); each head keeps the window itself plus its top cap - window positions.
 */
export class SnapKvCache extends CompressedCache {
  readonly name = "snapkv" as const;
  readonly captureWindow: number;
  readonly #budget: (promptTokens: number) => number;
  readonly #poolKernel: number;

  constructor(deps: PolicyDeps, opts: StaticOptions) {
    super(deps, "snapkv");
    const budget = budgetOf(opts);
    this.#budget = budget.cap;
    this.keepFraction = budget.keep;
    this.captureWindow = opts.window ?? 32;
    this.#poolKernel = opts.poolKernel ?? 5;
  }

  protected select(
    prefill: readonly KvLayerCache[],
    captures: Captures,
  ): Promise<{ selections: HeadSelection[][]; owned: Buffer[] }> {
    const c = this.config;
    const L = this.promptTokens;
    const cap = this.#budget(L);
    const W = Math.min(this.captureWindow, L);
    const all = (s: HeadSelection) =>
      Array.from({ length: c.nLayers }, () => Array(c.nKvHeads).fill(s));
    if (cap >= L) return Promise.resolve({ selections: all({ kind: "all" }), owned: [] });
    if (cap <= W || L - W < 1) {
      return Promise.resolve({
        selections: all({ kind: "ranges", ranges: [[L - cap, cap]] }),
        owned: [],
      });
    }
    const k = cap - W;
    const n = L - W;
    const K = this.kernels;
    const indices = this.device.buffer(c.nLayers * c.nKvHeads * cap * 4);
    try {
      const how = {
        window: W,
        groupReduce: "mean",
        windowMode: "sum",
        poolFirst: false,
        poolKernel: this.#poolKernel,
      } as const;
      this.scoreLayers(prefill, captures, how, (cmd, scores, l) => {
        // Top positions of the prefix; the window itself is appended below.
        K.topk.record(cmd, {
          rows: scores,
          rowStride: L,
          rowCount: c.nKvHeads,
          n,
          k,
          out: indices,
          outOffset: l * c.nKvHeads * cap,
          outStride: cap,
        });
      });
      // The window positions complete each head's index list.
      const idx = new Uint32Array(this.device.download(indices).buffer);
      for (let row = 0; row < c.nLayers * c.nKvHeads; row++) {
        for (let i = 0; i < W; i++) idx[row * cap + k + i] = n + i;
      }
      this.device.upload(indices, idx);
    } catch (e) {
      indices.dispose();
      throw e;
    }
    const selections = Array.from(
      { length: c.nLayers },
      (_, l) =>
        Array.from({ length: c.nKvHeads }, (_, h): HeadSelection => ({
          kind: "indices",
          buffer: indices,
          start: (l * c.nKvHeads + h) * cap,
          count: cap,
        })),
    );
    return Promise.resolve({ selections, owned: [indices] });
  }

  protected roleOf(): HeadInfo["role"] {
    return "compressed";
  }
}
