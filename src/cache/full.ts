/** `full`: every head keeps every token, in caches allocated once for the session's context. */
import { KvLayerCache } from "./kv_layer.ts";
import type { ModelConfig } from "../model/config.ts";
import type { Device } from "../vk/mod.ts";
import {
  type CachePolicy,
  type CacheStats,
  emptyStats,
  type HeadInfo,
  withRates,
} from "./policy.ts";

export class FullCache implements CachePolicy {
  readonly name = "full" as const;
  readonly captureWindow = 0;
  readonly captureSteps = false;
  readonly appendByPrefill = true;
  readonly caches: KvLayerCache[] = [];
  readonly #config: ModelConfig;
  #length = 0;
  #maxNew = 0;
  #stats: CacheStats;

  constructor(device: Device, config: ModelConfig, contextTokens: number) {
    this.#config = config;
    this.#stats = emptyStats("full", config.nLayers, config.nKvHeads);
    try {
      for (let l = 0; l < config.nLayers; l++) {
        this.caches.push(
          KvLayerCache.create(device, {
            headDim: config.headDim,
            capRows: Array(config.nKvHeads).fill(contextTokens),
          }),
        );
      }
    } catch (e) {
      this[Symbol.dispose]();
      throw e;
    }
  }

  begin(promptTokens: number, maxNewTokens: number): void {
    this.#length = 0;
    this.#maxNew = maxNewTokens;
    this.#stats = emptyStats("full", this.#config.nLayers, this.#config.nKvHeads);
    this.#stats.promptTokens = promptTokens;
    this.#stats.keep = 1;
  }

  /** The caches hold the session's whole context already: appending is only counting. */
  extend(tokens: number, maxNewTokens: number): Promise<void> {
    this.#maxNew = this.#length - this.#stats.promptTokens + tokens + maxNewTokens;
    return Promise.resolve();
  }

  rewind(positions: number): boolean {
    if (!Number.isInteger(positions) || positions < 0 || positions > this.#length) return false;
    this.#length = positions;
    for (const c of this.caches) c.lengths.fill(positions);
    return true;
  }

  advance(tokens: number): void {
    this.#length += tokens;
    for (const c of this.caches) c.lengths.fill(this.#length);
  }

  endPrefill(): Promise<void> {
    return Promise.resolve();
  }

  transferWait(): bigint {
    return 0n;
  }

  afterStep(): Promise<void> {
    this.#stats.decodeSteps++;
    return Promise.resolve();
  }

  stats(): CacheStats {
    const bytes = this.caches.reduce((s, c) => s + c.poolBytes, 0);
    const s = this.#stats;
    s.deviceKvBytes = bytes;
    s.deviceKvBytesByRole = { full: bytes, compressed: 0 };
    const c = this.#config;
    s.fullKvBytes = c.nLayers * c.nKvHeads * (s.promptTokens + this.#maxNew) * c.headDim * 2 * 2;
    return withRates({ ...s });
  }

  heads(): HeadInfo[][] {
    return this.caches.map(() =>
      Array.from(
        { length: this.#config.nKvHeads },
        () => ({ role: "full" as const, budgetTokens: null }),
      )
    );
  }

  [Symbol.dispose](): void {
    for (const c of this.caches.splice(0)) c.dispose();
  }
}
