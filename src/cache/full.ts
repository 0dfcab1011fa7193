/**
 * `full`: every head keeps every token, in caches allocated once for the session's context; a
 * sliding-window layer keeps its window, in a ring (src/cache/window.ts).
 */
import { HcError } from "../errors.ts";
import { KvLayerCache } from "./kv_layer.ts";
import { KvLengths } from "./kv_lengths.ts";
import type { ModelConfig } from "../model/config.ts";
import type { Device } from "../vk/mod.ts";
import {
  type CachePolicy,
  type CacheStats,
  emptyStats,
  type HeadInfo,
  type PolicyState,
  type PrefillOrder,
  stateInt,
  withRates,
} from "./policy.ts";
import { downloadRows, uploadRows } from "./snapshot.ts";
import { ringRewindable, windowCache } from "./window.ts";

export class FullCache implements CachePolicy {
  readonly name = "full" as const;
  readonly captureWindow = 0;
  readonly captureSteps = false;
  readonly appendByPrefill = true;
  /** A new array whenever the caches move (recorded steps are keyed by the array). */
  caches: KvLayerCache[] = [];
  /** Every layer's lengths, layer l at window l: the caches, and those that replace them when
   * they grow, take their windows here (one upload per step). */
  #lengths: KvLengths | null = null;
  readonly #device: Device;
  readonly #config: ModelConfig;
  #length = 0;
  #maxNew = 0;
  /** Positions the caches hold room for. */
  #rows = 0;
  #stats: CacheStats;

  constructor(device: Device, config: ModelConfig, contextTokens: number) {
    this.#device = device;
    this.#config = config;
    this.#stats = emptyStats("full", config.nLayers, config.nKvHeads);
    try {
      this.#lengths = KvLengths.create(device, { layers: config.nLayers, heads: config.nKvHeads });
      this.caches = this.#allocate(contextTokens);
    } catch (e) {
      this[Symbol.dispose]();
      throw e;
    }
  }

  /** The order the prompt goes in changes nothing here: every layer keeps all of it. */
  begin(promptTokens: number, maxNewTokens: number, _prefill?: PrefillOrder): void {
    this.#length = 0;
    this.#grow(promptTokens + maxNewTokens);
    this.#maxNew = maxNewTokens;
    this.#stats = emptyStats("full", this.#config.nLayers, this.#config.nKvHeads);
    this.#stats.promptTokens = promptTokens;
    this.#stats.keep = 1;
  }

  prefillLayer(layer: number): KvLayerCache {
    const cache = this.caches[layer];
    if (!cache || this.#length !== 0) {
      throw new HcError("E_BAD_REQUEST", `layer ${layer} cannot take a prompt now`);
    }
    cache.lengths.fill(0);
    return cache;
  }

  endPrefillLayer(): Promise<void> {
    return Promise.resolve();
  }

  /** Appending is counting, unless the session grew past the caches (Session.reserve). */
  extend(tokens: number, maxNewTokens: number): Promise<void> {
    this.#maxNew = this.#length - this.#stats.promptTokens + tokens + maxNewTokens;
    this.#grow(this.#length + tokens + maxNewTokens);
    return Promise.resolve();
  }

  /** Caches for `rows` positions: rings for the windowed layers. Layer l's takes window l of
   * the lengths (a cache it replaces keeps reading the same lengths until it goes). */
  #allocate(rows: number): KvLayerCache[] {
    const c = this.#config;
    const made: KvLayerCache[] = [];
    try {
      for (let l = 0; l < c.nLayers; l++) {
        const lengths = { arena: this.#lengths!, layer: l };
        made.push(
          windowCache(this.#device, c, l, rows, lengths) ??
            KvLayerCache.create(this.#device, {
              headDim: c.headDim,
              capRows: Array(c.nKvHeads).fill(rows),
              lengths,
            }),
        );
      }
    } catch (e) {
      for (const m of made) m.dispose();
      throw e;
    }
    this.#rows = rows;
    return made;
  }

  /** Moves the first #length rows of every head into caches of `rows` rows when the caches
   * hold fewer (one submission). A ring that has wrapped is already as large as it gets, so
   * its rows keep their places. */
  #grow(rows: number): void {
    const old = this.caches;
    if (old.length === 0 || rows <= this.#rows) return;
    const c = this.#config;
    const rowBytes = c.headDim * 2;
    const n = this.#length;
    const before = this.#rows;
    let moved: KvLayerCache[] = [];
    try {
      moved = this.#allocate(rows);
      if (n > 0) {
        using cmd = this.#device.commands();
        cmd.begin();
        old.forEach((src, l) => {
          for (let h = 0; h < c.nKvHeads; h++) {
            const from = src.location(h, 0);
            const to = moved[l].location(h, 0);
            const held = Math.min(n, src.capRows(h));
            const region = [[from.byteOffset, to.byteOffset, held * rowBytes]] as const;
            cmd.copy(from.k, to.k, region);
            cmd.copy(from.v, to.v, region);
          }
        });
        cmd.end();
        this.#device.waitSync("compute", cmd.submit());
      }
    } catch (e) {
      for (const m of moved) m.dispose();
      this.#rows = before;
      throw e;
    }
    for (const m of moved) m.lengths.fill(n);
    for (const o of old) o.dispose();
    this.caches = moved;
  }

  saveState(): Promise<PolicyState> {
    return Promise.resolve({
      state: { length: this.#length, maxNew: this.#maxNew, promptTokens: this.#stats.promptTokens },
      blobs: downloadRows(this.caches),
    });
  }

  loadState(s: PolicyState): void {
    const length = stateInt(s.state.length, "length");
    const maxNew = stateInt(s.state.maxNew, "maxNew");
    const promptTokens = stateInt(s.state.promptTokens, "promptTokens");
    this.begin(promptTokens, maxNew);
    this.#grow(length);
    const c = this.#config;
    const lengths = Array.from({ length: c.nLayers }, () => Array(c.nKvHeads).fill(length));
    uploadRows(this.caches, lengths, s.blobs, 0);
    this.#length = length;
  }

  rewind(positions: number): boolean {
    if (!Number.isInteger(positions) || positions < 0 || positions > this.#length) return false;
    // A ring forgets what the dropped positions overwrote.
    if (!this.caches.every((c) => ringRewindable(c, this.#length - positions))) return false;
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

  transferWait(): Promise<bigint> {
    return Promise.resolve(0n);
  }

  landRefreshes(): Promise<void> {
    return Promise.resolve();
  }

  afterStep(): Promise<void> {
    this.#stats.decodeSteps++;
    return Promise.resolve();
  }

  stats(): CacheStats {
    const bytes = this.caches.reduce((s, c) => s + c.poolBytes, 0);
    const s = this.#stats;
    s.deviceKvBytes = bytes;
    s.prefillPeakKvBytes = bytes;
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
    this.#lengths?.dispose();
    this.#lengths = null;
  }
}
