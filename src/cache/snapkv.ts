/**
 * `snapkv`: chooses once, at the end of prefill, and never moves anything afterwards. Every
 * head gets the same budget; its rows are picked by an observation window of the last prompt
 * queries (pooled attention, per KV head with its query group combined).
 */
import type { KvLayerCache } from "./kv_layer.ts";
import type { Captures } from "../model/forward.ts";
import type { Buffer } from "../vk/mod.ts";
import { type Budget, uniformBudget } from "./budget.ts";
import { CompressedCache, type HeadSelection, type PolicyDeps } from "./compressed.ts";
import type { CacheHeadRole } from "./policy.ts";

export interface SnapKvOptions {
  budget: Budget;
  /** Observation window (default 32). */
  window?: number;
  /** Pooling kernel (default 5). */
  poolKernel?: number;
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

  constructor(deps: PolicyDeps, opts: SnapKvOptions) {
    super(deps, "snapkv");
    this.#budget = uniformBudget(opts.budget);
    this.keepFraction = "keep" in opts.budget ? opts.budget.keep : null;
    this.captureWindow = opts.window ?? 32;
    this.#poolKernel = opts.poolKernel ?? 5;
  }

  protected select(
    prefill: readonly KvLayerCache[],
    captures: Captures,
    layers: readonly number[],
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
      }, layers);
      // The window positions complete each head's index list.
      const idx = new Uint32Array(this.device.download(indices).buffer);
      for (const l of layers) {
        for (let row = l * c.nKvHeads; row < (l + 1) * c.nKvHeads; row++) {
          for (let i = 0; i < W; i++) idx[row * cap + k + i] = n + i;
        }
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

  protected roleOf(): CacheHeadRole {
    return "compressed";
  }
}
