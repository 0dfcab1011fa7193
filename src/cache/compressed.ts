/**
 * The machinery every compressing policy shares. Prefill runs over temporary full caches (every
 * head holds all L prompt rows, row = position); endPrefill then asks the policy which rows each
 * head keeps, allocates decode caches sized exactly to those budgets plus the generation
 * (`kept + maxNew` rows per head: real device savings, nothing masked), copies the kept rows on
 * the device, and frees the prefill caches.
 *
 * Layer by layer (begin(..., "layered")), one full cache takes each layer's prompt in turn:
 * endPrefillLayer selects, copies and hands that layer's rows to the policy before the next
 * layer reuses the cache, so the device never holds more than one layer's full KV.
 *
 * A sliding-window layer (src/cache/window.ts) takes its prompt into its own ring and keeps it
 * as its decode cache: the policy never selects, compresses or refreshes it.
 */
import { HcError } from "../errors.ts";
import { KvLayerCache } from "./kv_layer.ts";
import { KvLengths, type LengthsSlot } from "./kv_lengths.ts";
import type { ModelConfig } from "../model/config.ts";
import type { Captures } from "../model/forward.ts";
import { type ScoresArgs, TopK } from "../kernels/scores.ts";
import type { Buffer, CommandList, Device } from "../vk/mod.ts";
import type { CacheKernels } from "./kernels.ts";
import {
  type CacheHeadRole,
  type CachePolicy,
  type CacheStats,
  emptyStats,
  type HeadInfo,
  type PolicyName,
  type PolicyState,
  type PrefillOrder,
  stateInt,
  stateInts,
  withRates,
} from "./policy.ts";
import { badState } from "./policy.ts";
import { downloadRows, uploadRows } from "./snapshot.ts";
import { ringRewindable, windowCache } from "./window.ts";
import { layerWindow } from "../model/arch.ts";

/** Which prompt rows of one head stay on the device, in position order. */
export type HeadSelection =
  | { kind: "all" }
  | { kind: "ranges"; ranges: readonly (readonly [number, number])[] }
  /** `count` u32 positions at element `start` of a device buffer, ascending. */
  | { kind: "indices"; buffer: Buffer; start: number; count: number };

export function selectionRows(s: HeadSelection, promptTokens: number): number {
  if (s.kind === "all") return promptTokens;
  if (s.kind === "ranges") return s.ranges.reduce((n, r) => n + r[1], 0);
  return s.count;
}

export interface PolicyDeps {
  device: Device;
  config: ModelConfig;
  kernels: CacheKernels;
}

export abstract class CompressedCache implements CachePolicy {
  abstract readonly name: PolicyName;
  abstract readonly captureWindow: number;
  readonly captureSteps: boolean = false;
  /** Heads hold chosen rows, not row = position: continuation tokens go in as decode steps. */
  readonly appendByPrefill = false;
  caches: readonly KvLayerCache[] = [];
  protected readonly device: Device;
  protected readonly config: ModelConfig;
  protected readonly kernels: CacheKernels;
  protected promptTokens = 0;
  protected maxNew = 0;
  /** Tokens advanced through since begin (prompt, generated and appended). */
  protected positions = 0;
  /** Prompt rows kept per layer and head (set by endPrefill). */
  protected kept: number[][] = [];
  protected stat: CacheStats;
  /** The keep reported in stats() (null: the budget is in tokens); set by the policy. */
  protected keepFraction: number | null = null;
  // New arrays for every generation: a session's recorded steps are keyed by the caches array,
  // so a reused array would replay steps recorded against freed buffers.
  #prefill: KvLayerCache[] = [];
  #decode: KvLayerCache[] = [];
  /** Layer by layer: the one full cache every layer's prompt goes into in turn. */
  #layered = false;
  /** Per layer: its ring when it is a sliding-window layer (prefill and decode cache alike). */
  #rings: (KvLayerCache | null)[] = [];
  /** The decode caches' lengths, layer l at window l (the rings', from begin on, and those of
   * caches that replace a layer's when it moves): one upload per decode step. */
  #decodeLengths: KvLengths | null = null;
  /** The prefill caches' lengths (window l for layer l; one window, layer by layer). */
  #prefillLengths: KvLengths | null = null;

  constructor(deps: PolicyDeps, name: PolicyName) {
    this.device = deps.device;
    this.config = deps.config;
    this.kernels = deps.kernels;
    this.stat = emptyStats(name, deps.config.nLayers, deps.config.nKvHeads);
  }

  /** The rows each head of the layers `layers` (ascending; every layer at once, or one at a
   * time from 0 on when layer by layer) keeps; prefill[l] holds layer l's whole prompt. Other
   * layers' selections are not read. Index buffers it makes are returned in `owned` and freed
   * after the copy. */
  protected abstract select(
    prefill: readonly KvLayerCache[],
    captures: Captures,
    layers: readonly number[],
  ): Promise<{ selections: HeadSelection[][]; owned: Buffer[] }>;

  /**
   * Scores the KV heads `heads(layer)` picks (default all) of the prefill layers `layers` with
   * the last `window` captured prompt queries (head h's row at [h][L] in a scratch buffer),
   * then lets `select` record its top-k picks from them; one submission per layer, so the
   * scores buffer is reused.
   */
  protected scoreLayers(
    prefill: readonly KvLayerCache[],
    captures: Captures,
    how: Pick<ScoresArgs, "window" | "groupReduce" | "windowMode" | "poolFirst" | "poolKernel">,
    select: (cmd: CommandList, scores: Buffer, layer: number) => void,
    layers: readonly number[],
    heads: (layer: number) => boolean[] = () => Array(this.config.nKvHeads).fill(true),
  ): void {
    const c = this.config;
    const L = this.promptTokens;
    const qDim = c.nHeads * c.headDim;
    const K = this.kernels;
    using scores = this.device.buffer(TopK.rowsBytes(c.nKvHeads * L));
    using scratch = this.device.buffer(
      K.scores.scratchBytes({ headCount: c.nKvHeads, n: L, window: how.window }),
    );
    using cmd = this.device.commands();
    for (const l of layers) {
      // One record per run of wanted heads; the runs share the scratch, hence the barriers.
      const want = heads(l);
      const runs: [number, number][] = [];
      want.forEach((w, h) => {
        if (!w) return;
        const r = runs.at(-1);
        if (r && r[1] === h) r[1]++;
        else runs.push([h, h + 1]);
      });
      if (runs.length === 0) continue;
      cmd.begin();
      runs.forEach(([h0, h1], i) => {
        if (i > 0) cmd.barrier();
        K.scores.record(cmd, {
          ...how,
          cache: prefill[l],
          headStart: h0,
          headCount: h1 - h0,
          n: L,
          q: captures.prefillQ!,
          qOffset: (l * captures.prefillWindow + captures.prefillWindow - how.window) * qDim,
          qStride: qDim,
          out: scores,
          outOffset: h0 * L,
          scratch,
        });
      });
      cmd.barrier();
      select(cmd, scores, l);
      cmd.end();
      this.device.waitSync("compute", cmd.submit());
    }
  }

  /** Hook: runs after the kept rows of `layers` are copied, while their prefill caches still
   * hold the prompt. */
  protected afterCompress(
    _prefill: readonly KvLayerCache[],
    _layers: readonly number[],
  ): Promise<void> {
    return Promise.resolve();
  }

  /** Role of each head, for maps and for byte accounting. */
  protected abstract roleOf(layer: number, head: number): CacheHeadRole;

  begin(promptTokens: number, maxNewTokens: number, prefill: PrefillOrder = "chunked"): void {
    this.#free();
    this.#layered = prefill === "layered";
    this.promptTokens = promptTokens;
    this.maxNew = maxNewTokens;
    this.positions = 0;
    this.stat = emptyStats(this.name, this.config.nLayers, this.config.nKvHeads);
    this.stat.promptTokens = promptTokens;
    this.stat.keep = this.keepFraction;
    const c = this.config;
    const prefillLayers = this.#layered ? 1 : c.nLayers;
    this.#decodeLengths = KvLengths.create(this.device, { layers: c.nLayers, heads: c.nKvHeads });
    this.#prefillLengths = KvLengths.create(this.device, {
      layers: prefillLayers,
      heads: c.nKvHeads,
    });
    for (let l = 0; l < c.nLayers; l++) {
      this.#rings.push(
        windowCache(this.device, c, l, Infinity, this.#decodeWindow(l)),
      );
    }
    for (let l = 0; l < prefillLayers; l++) {
      // Every head holds the whole prompt during prefill (row = position); endPrefill copies
      // what each head keeps into caches sized to its budget.
      this.#prefill.push(
        (!this.#layered && this.#rings[l]) ||
          KvLayerCache.create(this.device, {
            headDim: c.headDim,
            capRows: Array(c.nKvHeads).fill(promptTokens),
            lengths: { arena: this.#prefillLengths, layer: l },
          }),
      );
    }
    this.caches = this.#layered ? [] : this.#prefill;
    this.#notePeak();
  }

  prefillLayer(layer: number): KvLayerCache {
    const cache = this.#rings[layer] ?? this.#sharedFor(layer);
    this.#sharedFor(layer);
    cache.lengths.fill(0);
    return cache;
  }

  async endPrefillLayer(layer: number, captures: Captures): Promise<void> {
    const cache = this.#rings[layer] ?? this.#sharedFor(layer);
    this.#sharedFor(layer);
    // As after a chunked prefill: every head of the layer holds the whole prompt.
    cache.setLengths(Array(cache.nKvHeads).fill(this.promptTokens));
    await this.#compress(Array(this.config.nLayers).fill(cache), captures, [layer]);
  }

  /** The full cache layer `layer` goes into, when it is that layer's turn. */
  #sharedFor(layer: number): KvLayerCache {
    if (!this.#layered || this.#decode.length !== layer) {
      throw new HcError(
        "E_BAD_REQUEST",
        `layer ${layer} cannot take the prompt now (layer-by-layer prefill goes 0, 1, ... after ` +
          `begin(..., "layered"))`,
      );
    }
    return this.#prefill[0];
  }

  /** Selects, allocates and copies the kept rows of `layers` (ascending, from #decode.length). */
  async #compress(
    prefill: readonly KvLayerCache[],
    captures: Captures,
    layers: readonly number[],
  ): Promise<void> {
    const c = this.config;
    const L = this.promptTokens;
    // Windowed layers keep their rings as they are.
    const chosen = layers.filter((l) => !this.#rings[l]);
    const { selections, owned } = chosen.length > 0
      ? await this.select(prefill, captures, chosen)
      : { selections: [], owned: [] };
    try {
      for (const l of layers) {
        const ring = this.#rings[l];
        if (ring) {
          this.kept[l] = Array(c.nKvHeads).fill(L);
          this.#decode.push(ring);
          continue;
        }
        this.kept[l] = selections[l].map((s) => selectionRows(s, L));
        this.#decode.push(KvLayerCache.create(this.device, {
          headDim: c.headDim,
          capRows: this.kept[l].map((k) => k + this.maxNew),
          lengths: this.#decodeWindow(l),
        }));
      }
      this.#notePeak();
      if (chosen.length > 0) {
        this.#copyKept(prefill, selections, chosen);
        await this.afterCompress(prefill, chosen);
      }
    } finally {
      for (const b of owned) b.dispose();
    }
  }

  /** Layer `layer`'s window of the decode lengths. */
  #decodeWindow(layer: number): LengthsSlot {
    if (!this.#decodeLengths) throw badState("the cache has not begun");
    return { arena: this.#decodeLengths, layer };
  }

  /** Whether layer `layer` is a sliding-window layer (kept whole in its ring). */
  protected isWindowed(layer: number): boolean {
    return layerWindow(this.config, layer) > 0;
  }

  #notePeak(): void {
    const all = new Set([...this.#prefill, ...this.#decode, ...this.#rings]);
    all.delete(null);
    const bytes = [...all].reduce((s, c) => s + c!.poolBytes, 0);
    this.stat.prefillPeakKvBytes = Math.max(this.stat.prefillPeakKvBytes, bytes);
  }

  advance(tokens: number): void {
    this.positions += tokens;
    for (const c of this.caches) {
      for (let h = 0; h < c.nKvHeads; h++) c.lengths[h] += tokens;
    }
  }

  async endPrefill(captures: Captures): Promise<void> {
    const c = this.config;
    if (!this.#layered) {
      await this.#compress(this.#prefill, captures, Array.from({ length: c.nLayers }, (_, l) => l));
    } else if (this.#decode.length !== c.nLayers) {
      throw new HcError(
        "E_BAD_REQUEST",
        `the layer-by-layer prefill ended after ${this.#decode.length} of ${c.nLayers} layers`,
      );
    }
    for (const p of this.#prefill) if (!this.#rings.includes(p)) p.dispose();
    this.#prefill = [];
    this.#prefillLengths?.dispose();
    this.#prefillLengths = null;
    this.#decode.forEach((cache, l) => cache.setLengths(this.kept[l]));
    this.caches = this.#decode;
  }

  /**
   * Continuation: every head appends the new tokens after its rows, as it appends generated
   * ones (the prompt selection is not redone). Heads without room move, rows and watch, into
   * caches sized to what they hold plus `tokens + maxNewTokens` (one submission); a new caches
   * array, so steps recorded against the old buffers are never replayed.
   */
  async extend(tokens: number, maxNewTokens: number): Promise<void> {
    this.maxNew = this.positions - this.promptTokens + tokens + maxNewTokens;
    const old = this.#decode;
    const fits = old.every((cache) =>
      cache.window > 0 ||
      Array.from(cache.lengths).every((n, h) => n + tokens + maxNewTokens <= cache.capRows(h))
    );
    if (fits) return;
    await this.landRefreshes(); // nothing may still be copying into the caches that move
    const c = this.config;
    const rowBytes = c.headDim * 2;
    const moved: KvLayerCache[] = [];
    try {
      for (const [l, cache] of old.entries()) {
        // A ring never fills: it stays where it is. The others take over their layer's lengths.
        moved.push(
          cache.window > 0 ? cache : KvLayerCache.create(this.device, {
            headDim: c.headDim,
            capRows: Array.from(cache.lengths, (n) => n + tokens + maxNewTokens),
            lengths: this.#decodeWindow(l),
          }),
        );
      }
      using cmd = this.device.commands();
      cmd.begin();
      old.forEach((src, l) => {
        if (src.window > 0) return;
        for (let h = 0; h < src.nKvHeads; h++) {
          const n = src.lengths[h];
          if (n === 0) continue;
          const from = src.location(h, 0);
          const to = moved[l].location(h, 0);
          cmd.copy(from.k, to.k, [[from.byteOffset, to.byteOffset, n * rowBytes]]);
          cmd.copy(from.v, to.v, [[from.byteOffset, to.byteOffset, n * rowBytes]]);
        }
      });
      cmd.end();
      this.device.waitSync("compute", cmd.submit());
    } catch (e) {
      for (const m of moved) if (m.window === 0) m.dispose();
      throw e;
    }
    moved.forEach((m, l) => {
      m.setLengths(old[l].lengths);
      m.watch = old[l].watch;
    });
    for (const o of old) if (o.window === 0) o.dispose();
    this.#decode = moved;
    this.caches = moved;
  }

  /** Drops the rows of positions past `positions` from every head: those after the prompt are
   * each head's last rows, in order. The prompt itself cannot be rewound. */
  rewind(positions: number): boolean {
    const drop = this.positions - positions;
    if (!Number.isInteger(positions) || drop < 0) return false;
    if (drop === 0) return true;
    if (this.#decode.length === 0 || positions < this.promptTokens) return false;
    if (!this.#decode.every((c) => ringRewindable(c, drop))) return false;
    for (const c of this.#decode) {
      for (let h = 0; h < c.nKvHeads; h++) c.lengths[h] -= drop;
    }
    this.positions = positions;
    this.afterRewind(drop);
    return true;
  }

  /** Decode caches (rows and their layout) and the prompt bookkeeping; subclasses add theirs
   * (saveExtra, after the rows' blobs). */
  async saveState(): Promise<PolicyState> {
    if (this.#decode.length === 0) throw badState("the prompt has not been compressed yet");
    await this.landRefreshes();
    const blobs = downloadRows(this.#decode);
    const extra = this.saveExtra(blobs);
    return {
      state: {
        promptTokens: this.promptTokens,
        maxNew: this.maxNew,
        positions: this.positions,
        kept: this.kept,
        capRows: this.#decode.map((c) =>
          Array.from({ length: c.nKvHeads }, (_, h) => c.capRows(h))
        ),
        lengths: this.#decode.map((c) => Array.from(c.lengths)),
        extra,
      },
      blobs,
    };
  }

  loadState(s: PolicyState): void {
    const c = this.config;
    const L = stateInt(s.state.promptTokens, "promptTokens", 1);
    const layers = (v: unknown, what: string) => {
      if (!Array.isArray(v) || v.length !== c.nLayers) throw badState(`${what} is malformed`);
      return v.map((x, l) => stateInts(x, `${what}[${l}]`, c.nKvHeads));
    };
    const capRows = layers(s.state.capRows, "capRows");
    const lengths = layers(s.state.lengths, "lengths");
    const kept = layers(s.state.kept, "kept");
    const maxNew = stateInt(s.state.maxNew, "maxNew");
    const positions = stateInt(s.state.positions, "positions", L);
    this.begin(L, maxNew);
    // begin made prefill caches for a prompt; the saved state is past it.
    for (const p of new Set([...this.#prefill, ...this.#rings])) p?.dispose();
    this.#prefill = [];
    this.#rings = [];
    this.#prefillLengths?.dispose();
    this.#prefillLengths = null;
    this.caches = [];
    try {
      for (let l = 0; l < c.nLayers; l++) {
        this.#decode.push(KvLayerCache.create(this.device, {
          headDim: c.headDim,
          capRows: capRows[l],
          window: layerWindow(c, l),
          lengths: this.#decodeWindow(l),
        }));
      }
      const next = uploadRows(this.#decode, lengths, s.blobs, 0);
      this.kept = kept;
      this.positions = positions;
      this.caches = this.#decode;
      this.loadExtra(s.state.extra, s.blobs, next);
    } catch (e) {
      this.#free();
      throw e;
    }
  }

  /** Hook: the subclass's own state; may append blobs. */
  protected saveExtra(_blobs: Uint8Array[]): unknown {
    return null;
  }

  /** Hook: takes what saveExtra saved (its blobs from `first` on). */
  protected loadExtra(_extra: unknown, _blobs: readonly Uint8Array[], _first: number): void {}

  /** Hook: `rows` positions were dropped from the end of every head. */
  protected afterRewind(_rows: number): void {}

  /** One submission: contiguous runs by copy regions, index selections by the gather kernel. */
  #copyKept(
    prefill: readonly KvLayerCache[],
    selections: HeadSelection[][],
    layers: readonly number[],
  ): void {
    const rowBytes = this.config.headDim * 2;
    using cmd = this.device.commands();
    cmd.begin();
    for (const l of layers) {
      const src = prefill[l];
      const dst = this.#decode[l];
      selections[l].forEach((s, h) => {
        const from = src.location(h, 0);
        const to = dst.location(h, 0);
        if (s.kind === "indices") {
          for (const side of ["k", "v"] as const) {
            this.kernels.gather.record(cmd, {
              src: {
                buffer: from[side],
                rows: s.buffer,
                indexStart: s.start,
                baseWords: from.byteOffset / 4,
              },
              dst: { buffer: to[side], baseWords: to.byteOffset / 4 },
              count: s.count,
              rowWords: rowBytes / 4,
            });
          }
          return;
        }
        const ranges = s.kind === "all" ? [[0, this.promptTokens] as const] : s.ranges;
        let at = 0;
        const regions = ranges.filter((r) => r[1] > 0).map(([start, n]) => {
          const region = [
            from.byteOffset + start * rowBytes,
            to.byteOffset + at * rowBytes,
            n * rowBytes,
          ] as const;
          at += n;
          return region;
        });
        if (regions.length) {
          cmd.copy(from.k, to.k, regions);
          cmd.copy(from.v, to.v, regions);
        }
      });
    }
    cmd.end();
    this.device.waitSync("compute", cmd.submit());
  }

  transferWait(): Promise<bigint> {
    return Promise.resolve(0n);
  }

  landRefreshes(): Promise<void> {
    return Promise.resolve();
  }

  afterStep(_captures: Captures): Promise<void> {
    this.stat.decodeSteps++;
    return Promise.resolve();
  }

  stats(): CacheStats {
    const c = this.config;
    const rowBytes = c.headDim * 2 * 2;
    const s = this.stat;
    let full = 0;
    let compressed = 0;
    this.caches.forEach((cache, l) => {
      for (let h = 0; h < cache.nKvHeads; h++) {
        const bytes = cache.capRows(h) * rowBytes;
        const role = cache.window > 0 ? "full" : this.roleOf(l, h);
        if (role === "full" || role === "volatile" || role === "pivot") full += bytes;
        else compressed += bytes;
      }
    });
    s.deviceKvBytes = full + compressed;
    s.deviceKvBytesByRole = { full, compressed };
    s.fullKvBytes = c.nLayers * c.nKvHeads * (this.promptTokens + this.maxNew) * rowBytes;
    return withRates({ ...s, deviceKvBytesByRole: { ...s.deviceKvBytesByRole } });
  }

  heads(): HeadInfo[][] {
    return Array.from(
      { length: this.config.nLayers },
      (_, l) =>
        Array.from({ length: this.config.nKvHeads }, (_, h) => ({
          role: this.isWindowed(l) ? "full" as const : this.roleOf(l, h),
          budgetTokens: this.kept[l]?.[h] ?? null,
        })),
    );
  }

  #free(): void {
    for (const c of [...this.#prefill, ...this.#decode, ...this.#rings]) c?.dispose();
    this.#prefill = [];
    this.#decode = [];
    this.#rings = [];
    this.#prefillLengths?.dispose();
    this.#decodeLengths?.dispose();
    this.#prefillLengths = null;
    this.#decodeLengths = null;
    this.caches = [];
    this.kept = [];
  }

  [Symbol.dispose](): void {
    this.#free();
  }
}
