/**
 * HeteroCache (docs/algorithm.md §2-4, §10) and its ablations. Volatile and pivot heads keep their
 * whole KV; anchors and satellites keep a budget chosen from their own last-prompt-token
 * attention. Pivots watch for drift; when a pivot's attention drifts, its satellites' prompt
 * rows are refreshed from the host KV store (retrieval.ts). The ablations share everything and
 * differ only in the trigger: `per-step` refreshes every step, `fixed-interval` every N steps.
 *
 * Modes: `compat` reproduces the official code, quirks included (first cap_s by position; the
 * reference set of the i-th pivot in ascending index order used for the i-th cluster in dict
 * order; refresh applied before the next step). The default refreshes by score, keeps one
 * reference set per pivot, and lets the host gather run off the JS thread while decoding goes on.
 *
 * Triggers (docs/algorithm.md §10): "drift" is the official overlap test (every `checkEvery`
 * steps, the top-K sets of the buffered queries against the pivot's reference set: a device
 * round trip per check). "coverage" (the default) costs almost nothing: the decode attention
 * already reads every prompt row of a pivot, so it also sums the pivot's attention mass over the
 * prompt and over the rows its satellites hold (a bit mask per cluster, refreshed with them;
 * src/cache/kv_layer.ts KvWatch). After each step the host reads those two numbers per pivot;
 * when the held share falls below `coverageDrop` times what it was just after the cluster's last
 * refresh (or the prompt), the cluster refreshes.
 *
 * Refresh selection: the fired pivots' pooled, group-maxed attention of this step's query over
 * their prompt rows. An interval (the ablations) knows its refresh steps ahead, so on those steps
 * the same watch has the decode attention store the pivots' prompt logits and softmax statistics,
 * and selecting pools G floats per prompt row (src/kernels/scores.ts recordPooledLogits). The
 * coverage trigger learns that a pivot fired only after the step; storing every pivot's logits
 * on every step in case cost about a sixth of its attention on llvmpipe, and selecting one step
 * later from the next step's logits lost answers on the retrieval task (95.9% to 88.5% at 16K),
 * so it scores the fired pivots' prompt keys with the step's query (fires are rare; the check is
 * what runs every step).
 */
import { HcError } from "../../errors.ts";
import { type KvLayerCache, WATCH_NONE } from "../kv_layer.ts";
import { type Captures, stepView } from "../../model/forward.ts";
import { type Buffer, type CommandList, rankRows } from "../../vk/mod.ts";
import { TopK } from "../../kernels/scores.ts";
import { deviceParallelism } from "../../kernels/checks.ts";
import { intersectionSize, median } from "../profile/analysis.ts";
import {
  baseLength,
  type Budget,
  checkBudget,
  effectiveKeep,
  headCaps,
  headCapsFromTokens,
} from "../budget.ts";
import { CompressedCache, type HeadSelection, type PolicyDeps } from "../compressed.ts";
import { HostKvStore } from "./host_store.ts";
import { badState, type PolicyName, type PrefillOrder, stateInt, stateInts } from "../policy.ts";
import {
  fullHeadCount,
  type HeadProfile,
  type HeadRole,
  isFullRole,
  markWindowLayers,
} from "../profile/profile.ts";
import { type RefreshJob, Retrieval } from "./retrieval.ts";

export type Trigger =
  | { kind: "drift"; every: number; threshold: number }
  | { kind: "coverage"; every: 1; drop: number }
  | { kind: "interval"; every: number };

/** HeteroCache's trigger: the official overlap test, or the attention-coverage test. */
export const TRIGGER_NAMES = ["coverage", "drift"] as const;
export type TriggerName = (typeof TRIGGER_NAMES)[number];

/** Default coverage drop: a cluster refreshes when its pivot's held share falls below this
 * fraction of the share right after its last refresh. */
export const DEFAULT_COVERAGE_DROP = 0.5;

export interface HeteroOptions {
  /** keep, or the mean prompt-KV tokens of a compressed head. */
  budget: Budget;
  profile: HeadProfile;
  /** Official behaviour, quirks included (docs/algorithm.md §1-4). */
  compat?: boolean;
  /** Drift checks every `checkEvery` steps (official `--steps`, default 5). */
  checkEvery?: number;
  /** Drift threshold (default: the profile's stable threshold, else 0.5). */
  threshold?: number;
  /** For fixed-interval: refresh every N steps (default 2). */
  interval?: number;
  /** heterocache: "coverage" (default) or the official "drift" test (compat's default). */
  trigger?: TriggerName;
  /** The coverage trigger's drop (default DEFAULT_COVERAGE_DROP), in (0, 1). */
  coverageDrop?: number;
  poolKernel?: number;
  /** Prompt queries whose summed attention picks the rows a compressed head keeps at prefill.
   * Default 16 (compat: 1, the official last token; SnapKV sums 32): on the real models' full
   * fidelity run, 16 kept agreement (98.3% vs 98.3%, 96.5% vs 96.0%) and cut the mean KL by
   * 38% and 16% against 1 (docs/algorithm.md §10.8). Pivots' drift references always come from the
   * last token. */
  window?: number;
  /** Keep a log of every refresh with the scores row it came from (tests, debugging). */
  record?: boolean;
}

/** One satellite refresh, as logged with `record`. */
export interface RefreshRecord {
  layer: number;
  pivot: number;
  head: number;
  /** Caps of the cluster's satellites, in satellite order, and this head's index there. */
  caps: number[];
  index: number;
  /** The positions the satellite holds after this refresh, ascending. */
  positions: Uint32Array;
  /** The position each of its device rows holds after it (rows move only where they change). */
  held: Uint32Array;
  /** The pivot's pooled, group-maxed scores row (last buffered query) the positions came from. */
  scores: Float32Array;
}

interface PivotState {
  layer: number;
  pivot: number;
  satellites: number[];
  /** Reference top-K set (ascending positions) drift is measured against. */
  ref: Int32Array;
  /** Drift test: device rows [window][L], pooled, group-maxed scores of the buffered queries. */
  scores: Buffer | null;
  /** Coverage trigger: prompt rows the satellites hold (bit per position), its word offset in
   * the device masks, the held share right after the last refresh (null: take the next), and
   * the refresh in flight (its Retrieval sequence number; 0: none). */
  mask: Uint32Array;
  maskWord: number;
  /** Float offset of its logits ([G][prompt]) in its layer's watch logits buffer (set with
   * the watch). */
  logitsAt: number;
  refCoverage: number | null;
  refreshing: number;
  /** The share the last refresh aimed at: the selecting query's (pooled) mass on its rows. */
  expectedCoverage: number;
  /** Per satellite (in `satellites` order), the prompt position each of its device rows holds
   * once the refreshes started so far have landed (a refresh moves only the rows that change);
   * null where unknown (a session file without it): the next refresh rewrites every row. */
  held: (Uint32Array | null)[];
}

export class HeteroCache extends CompressedCache {
  readonly name: PolicyName;
  readonly captureWindow: number;
  override readonly captureSteps = true;
  readonly #profile: HeadProfile;
  readonly #budget: Budget;
  readonly #compat: boolean;
  readonly #trigger: Trigger;
  readonly #poolKernel: number;
  readonly #store: HostKvStore;
  readonly #retrieval: Retrieval;
  #base = 0;
  #landedBefore = 0;
  #directBefore = 0;
  /** The refresh selection ranks whole scores rows on the host, not with the top-k kernel (a
   * CPU device outside compat; see the constructor). */
  readonly #rankOnHost: boolean;
  #caps: number[][] = [];
  #pivots: PivotState[] = [];
  /** Mapped upload buffer [nLayers][window][qDim] of buffered decode queries. */
  #queries: Buffer | null = null;
  #queryView: Float32Array | null = null;
  #buffered = 0;
  #scratch: Buffer | null = null;
  #indices: Buffer | null = null;
  #readback: Buffer | null = null;
  /** Command lists of the drift check and the refresh selection, re-recorded each time. */
  #checkCmd: CommandList | null = null;
  #selectCmd: CommandList | null = null;
  /** The watch (coverage and interval triggers): per-layer tables (256-byte aligned, mapped:
   * the logits entries switch per step), the coverage masks, per-layer logits buffers (null for
   * a layer without pivots), and the read-back (held, prompt) fractions [nLayers][nHeads][2]
   * followed by the prompt statistics (max, 1 / sum) [nLayers][nHeads][2]. */
  #watchTable: Buffer | null = null;
  #watchTableView: Uint32Array | null = null;
  #watchStride = 0;
  #watchMasks: Buffer | null = null;
  #watchLogits: (Buffer | null)[] = [];
  #watchOut: Buffer | null = null;
  /** Coverage and interval triggers: the fired pivots' pooled rows [nPivots][L], side by side
   * for one top-k dispatch. */
  #selRows: Buffer | null = null;
  /** The logits binding of a watch that stores none (coverage trigger). */
  #noLogits: Buffer | null = null;

  readonly #record: boolean;
  /** Refreshes of the current generation (only with `record`). */
  readonly refreshLog: RefreshRecord[] = [];
  /** With `record`: per refresh, the decode step after which it was decided and the first step
   * that read its rows (steps counted from 1). */
  readonly landingLog: { decidedAfter: number; firstRead: number | null }[] = [];
  readonly #landingBySeq = new Map<number, number>();

  constructor(
    deps: PolicyDeps,
    name: "heterocache" | "per-step" | "fixed-interval",
    opts: HeteroOptions,
  ) {
    super(deps, name);
    this.name = name;
    // Sliding-window layers keep their rings: their heads count as volatile whatever the
    // profile says.
    this.#profile = markWindowLayers(opts.profile, deps.config.layerWindows);
    this.#budget = checkBudget(opts.budget);
    this.keepFraction = "keep" in this.#budget ? this.#budget.keep : null;
    this.#compat = opts.compat ?? false;
    this.#record = opts.record ?? false;
    this.#poolKernel = opts.poolKernel ?? opts.profile.params.poolKernel ?? 5;
    this.captureWindow = opts.window ?? (this.#compat ? 1 : 16);
    if (
      !Number.isInteger(this.captureWindow) || this.captureWindow < 1 || this.captureWindow > 64
    ) {
      throw new HcError(
        "E_BAD_REQUEST",
        `the observation window must be 1..64 prompt tokens, got ${this.captureWindow}`,
      );
    }
    const threshold = opts.threshold ?? opts.profile.params.stableThreshold ?? 0.5;
    const trigger = opts.trigger ?? (this.#compat ? "drift" : "coverage");
    if (!(TRIGGER_NAMES as readonly string[]).includes(trigger)) {
      throw new HcError(
        "E_BAD_REQUEST",
        `unknown trigger "${trigger}"; use one of ${TRIGGER_NAMES.join(", ")}`,
      );
    }
    if (name === "heterocache" && trigger === "coverage") {
      const drop = opts.coverageDrop ?? DEFAULT_COVERAGE_DROP;
      if (!(drop > 0 && drop < 1)) {
        throw new HcError("E_BAD_REQUEST", `coverageDrop must be in (0, 1), got ${drop}`);
      }
      this.#trigger = { kind: "coverage", every: 1, drop };
    } else if (name === "heterocache") {
      this.#trigger = { kind: "drift", every: opts.checkEvery ?? 5, threshold };
    } else if (name === "per-step") this.#trigger = { kind: "interval", every: 1 };
    else this.#trigger = { kind: "interval", every: opts.interval ?? 2 };
    if (
      !Number.isInteger(this.#trigger.every) || this.#trigger.every < 1 || this.#trigger.every > 64
    ) {
      throw new HcError(
        "E_BAD_REQUEST",
        `the refresh interval must be 1..64 steps, got ${this.#trigger.every}`,
      );
    }
    const c = deps.config;
    const p = opts.profile;
    if (p.layers.length !== c.nLayers || p.layers.some((l) => l.roles.length !== c.nKvHeads)) {
      throw new HcError(
        "E_PROFILE_MISMATCH",
        `the profile describes ${p.layers.length} layers x ${
          p.layers[0]?.roles.length
        } KV heads; the model has ${c.nLayers} x ${c.nKvHeads}`,
      );
    }
    this.#store = new HostKvStore(c.headDim);
    // A CPU device lands refreshes by gathering into the device rows (retrieval.ts); the gpu
    // variant set keeps the staged copy a GPU takes, so lavapipe tests both.
    const cpu = deviceParallelism(deps.device);
    const direct = cpu.cpu && cpu.cpuDriver;
    this.#retrieval = new Retrieval(deps.device, c.headDim, !this.#compat, direct);
    // Its selection ranks on the host too (rankRows, native threads): the top-k kernel would
    // run on the same cores, slower. A lavapipe-only path, like the landing; compat keeps the
    // kernel's top-M by position (the §4 quirk).
    this.#rankOnHost = direct && !this.#compat;
  }

  /** Queries buffered per drift check. */
  get #window(): number {
    return this.#trigger.kind === "drift" ? this.#trigger.every : 1;
  }

  protected roleOf(layer: number, head: number): HeadRole {
    return this.#profile.layers[layer].roles[head];
  }

  override begin(promptTokens: number, maxNewTokens: number, prefill?: PrefillOrder): void {
    this.#retrieval.reset();
    this.#store.clear();
    this.#freeDecodeBuffers();
    super.begin(promptTokens, maxNewTokens, prefill);
    const N = this.config.nLayers * this.config.nKvHeads;
    const budget = this.#budget;
    if ("tokens" in budget) {
      this.#base = Math.min(budget.tokens, promptTokens);
      this.#caps = headCapsFromTokens(this.#profile, budget.tokens, promptTokens);
    } else {
      // Below the profile's floor, the smallest budget it allows (reported as stats().keep).
      const keep = effectiveKeep(budget.keep, N, fullHeadCount(this.#profile));
      this.stat.keep = keep;
      if (keep >= 1) {
        // keep = 1 means no compression at all (the official formula would still trim heads
        // whose multiplier is below 1).
        this.#base = promptTokens;
        this.#caps = this.#profile.layers.map((l) => l.roles.map(() => promptTokens));
      } else {
        this.#base = baseLength(keep, N, fullHeadCount(this.#profile), promptTokens);
        this.#caps = headCaps(this.#profile, keep, promptTokens);
      }
    }
    this.#buffered = 0;
    this.refreshLog.length = 0;
    this.landingLog.length = 0;
    this.#landingBySeq.clear();
  }

  /** Continuation: as every compressing policy, plus room in the host store for the rows the
   * new tokens (as decode steps) append; the trigger then decides refreshes as for any step. */
  override async extend(tokens: number, maxNewTokens: number): Promise<void> {
    // Nothing may still gather from the store or copy into the caches while they grow.
    await this.landRefreshes();
    await super.extend(tokens, maxNewTokens);
    if (this.#pivots.length) this.#store.reserve(tokens + maxNewTokens);
  }

  /** The host store forgets the same rows (a gather reads only prompt rows, which stay). */
  protected override afterRewind(rows: number): void {
    for (const p of this.#pivots) {
      for (const s of p.satellites) this.#store.drop(p.layer, s, rows);
    }
  }

  /** Rows the host store holds for (layer, head) (prompt + appended), or null when the head
   * is not refreshable. */
  hostRows(layer: number, head: number): number | null {
    return this.#pivots.some((p) => p.layer === layer && p.satellites.includes(head))
      ? this.#store.rows(layer, head)
      : null;
  }

  /** Whether a refresh is in flight (gathering on the host or copying to the device). */
  get refreshInFlight(): boolean {
    return this.#retrieval.busy;
  }

  /** Every refresh started so far lands now and is waited for on the device. */
  override landRefreshes(): Promise<void> {
    return this.#retrieval.settle();
  }

  protected select(
    prefill: readonly KvLayerCache[],
    captures: Captures,
    layers: readonly number[],
  ): Promise<{ selections: HeadSelection[][]; owned: Buffer[] }> {
    const L = this.promptTokens;
    const K = this.kernels;
    const base = Math.min(this.#base, L);
    // One index list per head: cap rows for compressed heads, the reference set for pivots.
    const slots = this.#caps.map((layer, l) =>
      layer.map((cap, h) =>
        this.roleOf(l, h) === "pivot" ? base : isFullRole(this.roleOf(l, h)) ? 0 : cap
      )
    );
    const offsets: number[][] = [];
    let total = 0;
    for (const layer of slots) offsets.push(layer.map((n) => (total += n) - n));
    const indices = this.device.buffer(Math.max(16, total * 4));
    const topk = (cmd: CommandList, scores: Buffer, l: number, h: number) =>
      K.topk.record(cmd, {
        rows: scores,
        rowOffset: h * L,
        rowStride: L,
        rowCount: 1,
        n: L,
        k: slots[l][h],
        out: indices,
        outOffset: offsets[l][h],
      });
    const last = {
      window: 1,
      groupReduce: "max",
      windowMode: "separate",
      poolFirst: true,
      poolKernel: this.#poolKernel,
    } as const;
    const W = Math.min(this.captureWindow, L);
    // Pivots' references (and, with a one-token window, every head's rows) come from the last
    // prompt token; with a wider window, the other heads' rows come from the window. Each head
    // is scored once.
    const wanted = (pivots: boolean) => (l: number) =>
      slots[l].map((k, h) => k > 0 && (W === 1 || (this.roleOf(l, h) === "pivot") === pivots));
    const pick = (pivots: boolean) => (cmd: CommandList, scores: Buffer, l: number) =>
      wanted(pivots)(l).forEach((w, h) => w && topk(cmd, scores, l, h));
    let all: Int32Array;
    try {
      this.scoreLayers(prefill, captures, last, pick(true), layers, wanted(true));
      if (W > 1) {
        this.scoreLayers(
          prefill,
          captures,
          { ...last, window: W, windowMode: "sum" },
          pick(false),
          layers,
          wanted(false),
        );
      }
      all = new Int32Array(this.device.download(indices).buffer);
    } catch (e) {
      indices.dispose();
      throw e;
    }
    const rows = (l: number, h: number) => all.subarray(offsets[l][h], offsets[l][h] + slots[l][h]);
    // Layer by layer, each layer's pivots follow the earlier layers' (begin emptied the list).
    this.#pivots.push(
      ...this.#makePivots((l, p) => rows(l, p).slice(), (l, s) => rows(l, s), layers),
    );
    const selections = slots.map((layer, l) =>
      layer.map((k, h): HeadSelection => {
        const role = this.roleOf(l, h);
        if (isFullRole(role)) return { kind: "all" };
        return { kind: "indices", buffer: indices, start: offsets[l][h], count: k };
      })
    );
    return Promise.resolve({ selections, owned: [indices] });
  }

  /** Pivot states in cluster (dict) order; compat pairs them with reference sets the way the
   * official code does (docs/algorithm.md §9.1). */
  #makePivots(
    refOf: (layer: number, pivot: number) => Int32Array,
    keptOf: (layer: number, head: number) => ArrayLike<number>,
    layers: readonly number[],
  ): PivotState[] {
    const out: PivotState[] = [];
    const first = this.#pivots.length;
    const words = Math.ceil(this.promptTokens / 32);
    this.#profile.layers.forEach((layer, l) => {
      if (!layers.includes(l)) return;
      const byIndex = layer.clusters.map((cl) => cl.pivot).sort((a, b) => a - b);
      layer.clusters.forEach((cl, i) => {
        const refPivot = this.#compat ? byIndex[i] : cl.pivot;
        const mask = new Uint32Array(words);
        for (const s of cl.satellites) markRows(mask, keptOf(l, s));
        out.push({
          layer: l,
          pivot: cl.pivot,
          satellites: cl.satellites,
          ref: refOf(l, refPivot),
          scores: null,
          mask,
          maskWord: (first + out.length) * words,
          logitsAt: 0,
          refCoverage: null,
          refreshing: 0,
          expectedCoverage: 0,
          // The compressed cache holds the kept rows in selection (ascending) order.
          held: cl.satellites.map((s) => Uint32Array.from(keptOf(l, s))),
        });
      });
    });
    return out;
  }

  /** Coverage trigger: after the decode caches exist, each layer's cache gets its watch. */
  override async endPrefill(captures: Captures): Promise<void> {
    await super.endPrefill(captures);
    this.#allocDecodeBuffers();
    this.#setupWatch();
  }

  /** Floats between two query heads' logits rows of a pivot: whole 16-byte texels, so the
   * pooling can read them as texels. */
  get #logitRow(): number {
    return Math.ceil(this.promptTokens / 4) * 4;
  }

  /** Floats between two pivots' logits in a layer's watch logits buffer (256-byte aligned, the
   * binding offset alignment). */
  get #logitsStride(): number {
    const G = this.config.nHeads / this.config.nKvHeads;
    return Math.ceil((G * this.#logitRow) / 64) * 64;
  }

  /** Warms the decode-time scoring and, except for the drift test (which scores keys itself),
   * gives each layer with pivots its watch: the coverage trigger's masks, and the pivots'
   * logits for the refresh selection. */
  #setupWatch(): void {
    if (this.#pivots.length === 0) return;
    const c = this.config;
    const L = this.promptTokens;
    if (this.#trigger.kind === "drift") {
      // Recording creates the pipelines of the decode-time scoring (nothing runs): CPU drivers
      // compile at creation, ~0.7 s that would otherwise land on the first refresh's step.
      const warm = (this.#checkCmd ??= this.device.commands());
      warm.begin();
      this.#recordScores(warm, this.#pivots.slice(0, 1));
      this.#warmSelection(warm, this.#pivots[0].scores!);
      return;
    }
    const coverage = this.#trigger.kind === "coverage";
    const words = Math.ceil(L / 32);
    const stride = Math.ceil((c.nKvHeads * 8) / 256) * 256;
    this.#watchStride = stride;
    this.#watchTable = this.device.buffer(c.nLayers * stride, "upload");
    const tm = this.#watchTable.mapped();
    this.#watchTableView = new Uint32Array(tm.buffer, tm.byteOffset, tm.byteLength / 4);
    this.#watchTableView.fill(WATCH_NONE);
    // Masks for the coverage trigger, logits for an interval; the other is a 16-byte stand-in.
    this.#watchMasks = this.device.buffer(
      Math.max(16, coverage ? this.#pivots.length * words * 4 : 0),
    );
    this.#watchOut = this.device.buffer(c.nLayers * c.nHeads * 4 * 4, "readback");
    // A layer's pivots' logits side by side, in pivot order.
    const inLayer = this.caches.map(() => 0);
    for (const p of this.#pivots) p.logitsAt = inLayer[p.layer]++ * this.#logitsStride;
    this.#watchLogits = inLayer.map((n) =>
      n && !coverage ? this.device.buffer(n * this.#logitsStride * 4) : null
    );
    this.#noLogits ??= this.device.buffer(16);
    if (coverage) {
      const masks = new Uint32Array(this.#pivots.length * words);
      for (const p of this.#pivots) {
        this.#watchTableView[(p.layer * stride) / 4 + 2 * p.pivot] = p.maskWord;
        masks.set(p.mask, p.maskWord);
      }
      this.device.upload(this.#watchMasks, masks);
    }
    this.#setLogits();
    this.caches.forEach((cache, l) => {
      const watched = this.#pivots.some((p) => p.layer === l);
      cache.watch = watched
        ? {
          table: { buffer: this.#watchTable!, offset: l * stride, bytes: c.nKvHeads * 8 },
          masks: this.#watchMasks!,
          logits: this.#watchLogits[l] ?? this.#noLogits!,
          promptRows: L,
          logitStride: this.#logitRow,
          out: this.#watchOut!,
          outOffset: l * c.nHeads * 2,
          statsOffset: (c.nLayers + l) * c.nHeads * 2,
        }
        : null;
    });
    // Record the selection's scoring once so its pipelines compile now, not on the first
    // refresh's step (CPU drivers compile at creation, ~0.7 s).
    const p0 = this.#pivots[0];
    this.#selRows ??= this.device.buffer(TopK.rowsBytes(this.#pivots.length * L));
    const warm = (this.#selectCmd ??= this.device.commands());
    warm.begin();
    if (coverage) this.#recordKeyScores(warm, [p0], 0);
    else this.#recordPooled(warm, p0, 0);
    this.#warmSelection(warm, this.#selRows);
  }

  /** Ends `warm` (the selection's scoring, recorded) with a top-k over `rows` and runs it once
   * on whatever the buffers hold: llvmpipe compiles a kernel for the bindings it first runs
   * with (texel views included), so creating the pipelines is not enough; at a 16K-token prompt
   * on the 8B shape the first selection took 69 ms against 2-3 ms after, on the step of the
   * first refresh. */
  #warmSelection(warm: CommandList, rows: Buffer): void {
    const L = this.promptTokens;
    const caps = this.#pivots.flatMap((p) => p.satellites.map((s) => this.#caps[p.layer][s]));
    const k = Math.max(1, Math.min(L, Math.max(0, ...caps)));
    this.#ensureIndices(k * 4);
    if (!this.#rankOnHost) {
      warm.barrier();
      this.kernels.topk.record(warm, {
        rows,
        rowStride: L,
        rowCount: 1,
        n: L,
        k,
        out: this.#indices!,
      });
    }
    warm.end();
    this.device.waitSync("compute", warm.submit());
    // V8 compiles the host half of a selection (the take, the moved rows) at its first large
    // call: 23 ms against 3 ms after, on the first refresh's step at 64K tokens (8B shape). One
    // run at the real sizes on a dummy ranking moves that into the prefill (8 ms after it).
    // Ranking on the host, the take is native: only the moved rows run here.
    const top = new Uint32Array(k).map((_, i) => i);
    const taken = this.#rankOnHost
      ? [top.subarray(0, Math.min(k, caps[0] ?? k))]
      : takeByScore(top, new Float32Array(L), caps.length ? caps : [k]);
    changedRows(taken[0], top.subarray(k - taken[0].length));
  }

  /** Sets the watch table's logits entries for the next step (the mapped table is read when
   * the step runs): an interval's refresh steps store every pivot's logits, other steps none
   * (storing costs a pivot's attention about a sixth on llvmpipe: a scattered store per key
   * block). */
  #setLogits(): void {
    const t = this.#watchTableView;
    const trigger = this.#trigger;
    if (!t || trigger.kind !== "interval") return;
    const on = (this.#buffered + 1) % trigger.every === 0;
    for (const p of this.#pivots) {
      t[(p.layer * this.#watchStride) / 4 + 2 * p.pivot + 1] = on ? p.logitsAt : WATCH_NONE;
    }
  }

  /** The pooled, group-maxed scores row of `p` into row `row` of the selection rows, from the
   * logits and statistics the last step's attention stored. */
  #recordPooled(cmd: CommandList, p: PivotState, row: number): void {
    const c = this.config;
    const G = c.nHeads / c.nKvHeads;
    const L = this.promptTokens;
    this.kernels.scores.recordPooledLogits(cmd, {
      logits: {
        buffer: this.#watchLogits[p.layer]!,
        offset: p.logitsAt * 4,
        bytes: G * this.#logitRow * 4,
      },
      logitStride: this.#logitRow,
      stats: this.#watchOut!,
      statsOffset: ((c.nLayers + p.layer) * c.nHeads + p.pivot * G) * 2,
      n: L,
      groupReduce: "max",
      poolFirst: true,
      poolKernel: this.#poolKernel,
      out: this.#selRows!,
      outOffset: row * L,
    });
  }

  protected override afterCompress(
    prefill: readonly KvLayerCache[],
    layers: readonly number[],
  ): Promise<void> {
    const L = this.promptTokens;
    for (const p of this.#pivots) {
      if (!layers.includes(p.layer)) continue;
      for (const s of p.satellites) {
        this.#store.capture(this.device, prefill[p.layer], p.layer, s, L, L + this.maxNew);
      }
    }
    return Promise.resolve();
  }

  /** The decode-time buffers: buffered queries, pivots' scores rows, scratch, indices. */
  #allocDecodeBuffers(): void {
    const L = this.promptTokens;
    const c = this.config;
    const W = this.#window;
    this.#queries = this.device.buffer(c.nLayers * W * c.nHeads * c.headDim * 4, "upload");
    const m = this.#queries.mapped();
    this.#queryView = new Float32Array(m.buffer, m.byteOffset, m.byteLength / 4);
    if (this.#trigger.kind === "drift") {
      for (const p of this.#pivots) p.scores = this.device.buffer(TopK.rowsBytes(W * L));
    }
    if (this.#trigger.kind !== "interval") {
      const K = this.kernels;
      this.#scratch = this.device.buffer(
        K.scores.scratchBytes({ headCount: 1, n: L, window: W }),
      );
    }
    this.#ensureIndices(this.#pivots.length * W * Math.min(this.#base, L) * 4);
    // The largest refresh: every satellite's K and V rows, and each pivot's mask.
    let most = 0;
    for (const p of this.#pivots) {
      for (const s of p.satellites) most += 2 * this.#caps[p.layer][s] * this.#store.rowBytes;
      if (this.#trigger.kind === "coverage") most += p.mask.byteLength;
    }
    this.#retrieval.reserve(most, this.#trigger.kind === "interval");
  }

  /** Budgets, pivots (references, masks, coverage), the host store's rows and the buffered
   * queries; a refresh in flight has landed (saveState settles first). */
  protected override saveExtra(blobs: Uint8Array[]): unknown {
    const host: { layer: number; head: number; rows: number }[] = [];
    const rowBytes = this.#store.rowBytes;
    for (const p of this.#pivots) {
      for (const s of p.satellites) {
        const h = this.#store.head(p.layer, s);
        host.push({ layer: p.layer, head: s, rows: h.rows });
        blobs.push(h.k.slice(0, h.rows * rowBytes), h.v.slice(0, h.rows * rowBytes));
      }
    }
    // Which position each satellite's device rows hold: a blob each, then the queries.
    const held = this.#pivots.flatMap((p) => p.held.map((h) => h !== null));
    for (const p of this.#pivots) {
      for (const h of p.held) if (h) blobs.push(new Uint8Array(h.slice().buffer));
    }
    const q = this.#queryView;
    if (q) blobs.push(new Uint8Array(q.buffer.slice(q.byteOffset, q.byteOffset + q.byteLength)));
    return {
      base: this.#base,
      caps: this.#caps,
      buffered: this.#buffered,
      queries: q !== null,
      held,
      host,
      pivots: this.#pivots.map((p) => ({
        layer: p.layer,
        pivot: p.pivot,
        satellites: p.satellites,
        ref: Array.from(p.ref),
        mask: Array.from(p.mask),
        maskWord: p.maskWord,
        refCoverage: p.refCoverage,
        expectedCoverage: p.expectedCoverage,
        refreshing: p.refreshing !== 0,
      })),
    };
  }

  protected override loadExtra(extra: unknown, blobs: readonly Uint8Array[], first: number): void {
    if (typeof extra !== "object" || extra === null) throw badState("HeteroCache state missing");
    const e = extra as Record<string, unknown>;
    const c = this.config;
    const L = this.promptTokens;
    this.#base = stateInt(e.base, "base");
    if (!Array.isArray(e.caps) || e.caps.length !== c.nLayers) throw badState("caps malformed");
    this.#caps = e.caps.map((row, l) => stateInts(row, `caps[${l}]`, c.nKvHeads));
    this.#buffered = stateInt(e.buffered, "buffered");
    const words = Math.ceil(L / 32);
    const share = (v: unknown, what: string) => {
      if (typeof v !== "number" || !Number.isFinite(v)) throw badState(`${what} is not a number`);
      return v;
    };
    if (!Array.isArray(e.pivots)) throw badState("pivots malformed");
    this.#pivots = e.pivots.map((x, i): PivotState => {
      const p = (x ?? {}) as Record<string, unknown>;
      const mask = stateInts(p.mask, `pivot ${i} mask`, words, 2 ** 32 - 1);
      return {
        layer: stateInt(p.layer, `pivot ${i} layer`, 0, c.nLayers - 1),
        pivot: stateInt(p.pivot, `pivot ${i} head`, 0, c.nKvHeads - 1),
        satellites: stateInts(p.satellites, `pivot ${i} satellites`, null, c.nKvHeads - 1),
        ref: Int32Array.from(stateInts(p.ref, `pivot ${i} ref`, null, L - 1)),
        scores: null,
        mask: Uint32Array.from(mask),
        maskWord: stateInt(p.maskWord, `pivot ${i} maskWord`),
        logitsAt: 0,
        refCoverage: p.refCoverage === null ? null : share(p.refCoverage, "refCoverage"),
        // A landed refresh the trigger has not looked at yet: no Retrieval slot has seq -1,
        // so the next check sees it as landed, as the saved session's would have.
        refreshing: p.refreshing === true ? -1 : 0,
        expectedCoverage: share(p.expectedCoverage, "expectedCoverage"),
        held: [],
      };
    });
    if (!Array.isArray(e.host)) throw badState("host store malformed");
    let at = first;
    const rowBytes = this.#store.rowBytes;
    for (const [i, x] of e.host.entries()) {
      const h = (x ?? {}) as Record<string, unknown>;
      const layer = stateInt(h.layer, `host ${i} layer`, 0, c.nLayers - 1);
      const head = stateInt(h.head, `host ${i} head`, 0, c.nKvHeads - 1);
      const rows = stateInt(h.rows, `host ${i} rows`, L);
      const k = blobs[at++];
      const v = blobs[at++];
      if (!k || !v || k.byteLength !== rows * rowBytes || v.byteLength !== rows * rowBytes) {
        throw badState(`host rows of layer ${layer} head ${head}`);
      }
      this.#store.restore(layer, head, k, v, rows, Math.max(rows, L + this.maxNew));
    }
    this.#allocDecodeBuffers();
    // Files without the held rows (or a satellite without them): its next refresh rewrites
    // every row.
    const held = Array.isArray(e.held) ? e.held : [];
    let k = 0;
    for (const p of this.#pivots) {
      p.held = p.satellites.map((s) => {
        if (held[k++] !== true) return null;
        const b = blobs[at++];
        const cap = this.#caps[p.layer][s];
        if (!b || b.byteLength !== cap * 4) {
          throw badState(`held rows of layer ${p.layer} head ${s}`);
        }
        const rows = new Uint32Array(b.slice().buffer);
        if (rows.some((r) => r >= L)) throw badState(`held rows of layer ${p.layer} head ${s}`);
        return rows;
      });
    }
    if (e.queries === true) {
      const q = blobs[at++];
      if (!q || q.byteLength !== this.#queryView!.byteLength) throw badState("buffered queries");
      this.#queryView!.set(new Float32Array(q.buffer, q.byteOffset, q.byteLength / 4));
    }
    if (at !== blobs.length) throw badState(`${blobs.length - at} blobs left over`);
    this.#setupWatch();
  }

  /** Grows the device index buffer and its readback twin to `bytes`. */
  #ensureIndices(bytes: number): void {
    if (this.#indices && this.#indices.bytes >= bytes) return;
    this.#indices?.dispose();
    this.#readback?.dispose();
    this.#indices = this.#readback = null;
    this.#indices = this.device.buffer(Math.max(16, bytes));
    this.#readback = this.device.buffer(Math.max(16, bytes), "readback");
  }

  /** Notes, with `record`, which step first reads the refreshes submitted just now. */
  #logLandings(): void {
    for (const seq of this.#retrieval.drainSubmitted()) {
      const i = this.#landingBySeq.get(seq);
      if (i !== undefined) this.landingLog[i].firstRead = this.stat.decodeSteps + 1;
      this.#landingBySeq.delete(seq);
    }
  }

  override async transferWait(): Promise<bigint> {
    const v = await this.#retrieval.landing(this.stat.decodeSteps + 1);
    this.#logLandings();
    // A step carries a transfer when a refresh landed since the previous step (or it must wait).
    if (v > 0n || this.#retrieval.submitted > this.#landedBefore) this.stat.stepsWithTransfer++;
    this.#landedBefore = this.#retrieval.submitted;
    this.stat.directLandings += this.#retrieval.direct - this.#directBefore;
    this.#directBefore = this.#retrieval.direct;
    return v;
  }

  override async afterStep(captures: Captures): Promise<void> {
    this.stat.decodeSteps++;
    const c = this.config;
    const qDim = c.nHeads * c.headDim;
    const step = stepView(c, captures);
    // Decoded rows of satellites go to the host store; queries to the drift buffer.
    for (const p of this.#pivots) {
      for (const s of p.satellites) {
        this.#store.append(p.layer, s, step.k(p.layer, s), step.v(p.layer, s));
      }
    }
    const W = this.#window;
    const slot = this.#buffered % W;
    for (let l = 0; l < c.nLayers; l++) {
      this.#queryView!.set(step.q(l), (l * W + slot) * qDim);
    }
    this.#buffered++;
    this.#setLogits();
    if (this.#buffered % this.#trigger.every !== 0 || this.#pivots.length === 0) return;
    const t0 = performance.now();
    this.stat.stepsWithCheck++;
    const coverage = this.#trigger.kind === "coverage";
    const drift = this.#trigger.kind === "drift";
    const triggered = coverage
      ? this.#coverageCheck()
      : drift
      ? await this.#check(slot)
      : this.#pivots;
    // The drift test scored every window query already; an interval's step stored the pivots'
    // logits; the coverage trigger scores the fired pivots' keys (see the header).
    const source = drift ? "drift" : coverage ? "keys" : "logits";
    const jobs = triggered.length ? await this.#selectRefresh(triggered, slot, source) : [];
    this.stat.monitorMs += performance.now() - t0;
    if (jobs.length) {
      const t1 = performance.now();
      const tails = coverage
        ? triggered.map((p) => ({
          bytes: new Uint8Array(p.mask.buffer, p.mask.byteOffset, p.mask.byteLength),
          dst: this.#watchMasks!,
          dstOffset: p.maskWord * 4,
        }))
        : [];
      // Compat reads a refresh at the next step (the official timing, the gather awaited here);
      // the default one step later, so the gather overlaps the next step.
      const due = this.stat.decodeSteps + (this.#compat ? 1 : 2);
      const seq = await this.#retrieval.start(jobs, this.caches, tails, due);
      for (const p of triggered) p.refreshing = seq;
      if (this.#record) {
        this.#landingBySeq.set(seq, this.landingLog.length);
        this.landingLog.push({ decidedAfter: this.stat.decodeSteps, firstRead: null });
        this.#logLandings(); // compat submits at once
      }
      this.stat.transferWaitMs += performance.now() - t1;
      for (const j of jobs) {
        this.stat.refreshedHeads++;
        this.stat.rowsMoved += j.positions.length;
        this.stat.bytesMoved += j.positions.length * c.headDim * 2 * 2;
        this.stat.refreshedMap[j.layer][j.head] = true;
      }
    }
  }

  /**
   * Coverage trigger: the step's (held, prompt) attention fractions of each pivot (the decode
   * attention wrote them; the step has completed). A pivot whose refresh has landed takes this
   * step's share as its new reference; one still refreshing is not tested.
   */
  #coverageCheck(): PivotState[] {
    const c = this.config;
    const G = c.nHeads / c.nKvHeads;
    const m = this.#watchOut!.mapped();
    const out = new Float32Array(m.buffer, m.byteOffset, c.nLayers * c.nHeads * 2);
    const drop = (this.#trigger as { drop: number }).drop;
    const fired: PivotState[] = [];
    for (const p of this.#pivots) {
      let landed = false;
      if (p.refreshing) {
        if (!this.#retrieval.landed(p.refreshing, this.stat.decodeSteps)) continue;
        p.refreshing = 0;
        landed = true;
      }
      const share = coverageShare(out, c.nHeads, G, p.layer, p.pivot);
      if (share === null) continue;
      if (p.refCoverage === null) {
        p.refCoverage = share;
        continue;
      }
      this.stat.driftChecks++;
      // A landed refresh sets the new reference, unless it fell well short of the share its
      // selecting query aimed at: the attention moved again while it landed, so refresh again.
      if (landed) {
        p.refCoverage = share;
        if (share >= drop * p.expectedCoverage) continue;
      }
      if (share < drop * p.refCoverage || landed) {
        this.stat.triggers++;
        fired.push(p);
      }
    }
    return fired;
  }

  /** The drift test's scores: the pooled, group-maxed rows of `pivots` over all their buffered
   * queries (row w for window slot w), from their prompt keys. */
  #recordScores(cmd: CommandList, pivots: readonly PivotState[]): void {
    pivots.forEach((p, i) => {
      if (i > 0) cmd.barrier(); // the scores scratch is shared
      this.#recordPivotScores(cmd, p, 0, this.#window, p.scores!, 0);
    });
  }

  /** The coverage trigger's selection rows: pivot i's pooled, group-maxed scores of window slot
   * `slot`'s query alone, from its prompt keys, into row i of the selection rows. */
  #recordKeyScores(cmd: CommandList, pivots: readonly PivotState[], slot: number): void {
    pivots.forEach((p, i) => {
      if (i > 0) cmd.barrier(); // the scores scratch is shared
      this.#recordPivotScores(cmd, p, slot, 1, this.#selRows!, i * this.promptTokens);
    });
  }

  #recordPivotScores(
    cmd: CommandList,
    p: PivotState,
    slot: number,
    window: number,
    out: Buffer,
    outOffset: number,
  ): void {
    const qDim = this.config.nHeads * this.config.headDim;
    this.kernels.scores.record(cmd, {
      cache: this.caches[p.layer],
      headStart: p.pivot,
      headCount: 1,
      n: this.promptTokens,
      q: this.#queries!,
      qOffset: (p.layer * this.#window + slot) * qDim,
      qStride: qDim,
      window,
      groupReduce: "max",
      windowMode: "separate",
      poolFirst: true,
      poolKernel: this.#poolKernel,
      out,
      outOffset,
      scratch: this.#scratch!,
    });
  }

  /** The drift test: scores every pivot's buffered queries; returns the pivots whose clusters
   * refresh. */
  async #check(lastSlot: number): Promise<PivotState[]> {
    const W = this.#window;
    const L = this.promptTokens;
    const K = this.kernels;
    const kRef = Math.min(this.#base, L);
    const cmd = (this.#checkCmd ??= this.device.commands());
    cmd.begin();
    this.#recordScores(cmd, this.#pivots);
    if (kRef > 0) {
      cmd.barrier();
      this.#pivots.forEach((p, i) => {
        K.topk.record(cmd, {
          rows: p.scores!,
          rowStride: L,
          rowCount: W,
          n: L,
          k: kRef,
          out: this.#indices!,
          outOffset: i * W * kRef,
        });
      });
      cmd.barrier();
      cmd.copy(this.#indices!, this.#readback!, [[0, 0, this.#pivots.length * W * kRef * 4]]);
    }
    cmd.end();
    await this.device.wait("compute", cmd.submit());
    const m = this.#readback!.mapped();
    const sets = new Int32Array(m.buffer, m.byteOffset, this.#pivots.length * W * kRef);
    const fired: PivotState[] = [];
    const th = (this.#trigger as { threshold: number }).threshold;
    this.#pivots.forEach((p, i) => {
      this.stat.driftChecks++;
      const overlaps: number[] = [];
      for (let w = 0; w < W; w++) {
        overlaps.push(
          intersectionSize(sets.subarray((i * W + w) * kRef, (i * W + w + 1) * kRef), p.ref) / kRef,
        );
      }
      if (median(overlaps) < th) {
        this.stat.triggers++;
        fired.push(p);
        // Later checks measure drift against this refresh (the last buffered query).
        p.ref = sets.slice((i * W + lastSlot) * kRef, (i * W + lastSlot + 1) * kRef);
      }
    });
    return fired;
  }

  /**
   * Positions each satellite of the fired pivots takes from the pivot's last scores row. One
   * top-M pass per pivot (M: its largest satellite cap) serves all its satellites: compat takes
   * the first cap_s of the top-M by position (the §4 quirk); the default takes the top cap_s by
   * score, which lie inside the top-M because the kernel ranks by one total order (score
   * descending, NaN lowest, then position ascending), so the host ranks the M again by score.
   * Without compat, the fired pivots' rows sit side by side and one top-k dispatch serves them
   * all at the largest M (one workgroup per row: one dispatch per row kept a CPU driver on one
   * thread); a larger M changes nothing there, as the ranking takes by score. A CPU device
   * skips the kernel and ranks the whole rows on the host (rankRows: the same takes).
   */
  async #selectRefresh(
    fired: PivotState[],
    lastSlot: number,
    source: "drift" | "keys" | "logits",
  ): Promise<RefreshJob[]> {
    const score = source !== "drift";
    const L = this.promptTokens;
    const K = this.kernels;
    const plan = fired.map((p) => {
      const caps = p.satellites.map((s) => this.#caps[p.layer][s]);
      return { p, caps, M: Math.max(...caps), at: 0 };
    });
    const batched = !this.#compat;
    const Mall = Math.max(...plan.map((e) => e.M));
    let at = 0;
    for (const e of plan) {
      if (batched) e.M = Mall;
      e.at = at;
      at += e.M;
    }
    if (this.#trigger.kind === "interval") {
      this.stat.driftChecks += fired.length;
      this.stat.triggers += fired.length;
    }
    // Where pivot i's row is: the drift test's scores hold every window slot; otherwise each
    // fired pivot's row is pooled from this step's logits into row i of the selection rows.
    const rowOf = (e: (typeof plan)[number], i: number) =>
      score
        ? { buffer: this.#selRows!, offset: i * L }
        : { buffer: e.p.scores!, offset: lastSlot * L };
    // The readback holds the indices, then each pivot's scores row where the default ranking
    // or the refresh log needs it.
    const rows = !this.#compat || this.#record || score;
    // Ranking on the host (rankRows): no top-k, no indices.
    const host = this.#rankOnHost;
    const rowsAt = host ? 0 : at * 4;
    this.#ensureIndices(rowsAt + (rows ? fired.length * L * 4 : 0));
    const cmd = (this.#selectCmd ??= this.device.commands());
    cmd.begin();
    if (source === "logits") plan.forEach((e, i) => this.#recordPooled(cmd, e.p, i));
    if (source === "keys") this.#recordKeyScores(cmd, fired, lastSlot);
    if (score) cmd.barrier();
    if (!host && batched && score) {
      K.topk.record(cmd, {
        rows: this.#selRows!,
        rowStride: L,
        rowCount: plan.length,
        n: L,
        k: Mall,
        out: this.#indices!,
        outStride: Mall,
      });
    } else if (!host) {
      plan.forEach((e, i) => {
        const r = rowOf(e, i);
        K.topk.record(cmd, {
          rows: r.buffer,
          rowOffset: r.offset,
          rowStride: L,
          rowCount: 1,
          n: L,
          k: e.M,
          out: this.#indices!,
          outOffset: e.at,
        });
      });
    }
    cmd.barrier();
    if (!host) cmd.copy(this.#indices!, this.#readback!, [[0, 0, rowsAt]]);
    if (rows) {
      plan.forEach((e, i) => {
        const r = rowOf(e, i);
        cmd.copy(r.buffer, this.#readback!, [[r.offset * 4, rowsAt + i * L * 4, L * 4]]);
      });
    }
    cmd.end();
    await this.device.wait("compute", cmd.submit());
    const m = this.#readback!.mapped();
    const all = host ? null : new Uint32Array(m.buffer, m.byteOffset, at);
    const scoreRows = plan.map((_, i) =>
      rows ? new Float32Array(m.buffer, m.byteOffset + rowsAt + i * L * 4, L) : null
    );
    // The fired pivots' rows rank at once, each on a worker thread.
    const ranked = host
      ? await Promise.all(plan.map((e, i) => rankRows(scoreRows[i]!, e.caps)))
      : null;
    const jobs: RefreshJob[] = [];
    plan.forEach((e, i) => {
      const row = scoreRows[i];
      const top = all?.slice(e.at, e.at + Math.min(e.M, L));
      const taken = ranked
        ? ranked[i]
        : this.#compat
        ? e.caps.map((take) => top!.slice(0, take))
        : takeByScore(top!, row!, e.caps);
      const mask = this.#trigger.kind === "coverage" ? new Uint32Array(e.p.mask.length) : null;
      e.p.satellites.forEach((s, j) => {
        const positions = taken[j];
        if (mask) markRows(mask, positions);
        const moved = changedRows(e.p.held[j], positions);
        e.p.held[j] = moved.held;
        if (this.#record) {
          this.refreshLog.push({
            layer: e.p.layer,
            pivot: e.p.pivot,
            head: s,
            caps: e.caps,
            index: j,
            positions,
            held: moved.held.slice(),
            scores: row!.slice(), // the readback is reused by the next selection
          });
        }
        // Nothing to move where no row changes (or the budget rounds to zero rows).
        if (moved.positions.length > 0) {
          jobs.push({
            layer: e.p.layer,
            head: s,
            positions: moved.positions,
            rows: moved.rows,
            host: this.#store.head(e.p.layer, s),
          });
        }
      });
      if (mask) {
        e.p.mask = mask;
        e.p.expectedCoverage = maskedShare(row!, mask);
      }
    });
    return jobs;
  }

  #freeDecodeBuffers(): void {
    for (const p of this.#pivots) p.scores?.dispose();
    this.#pivots = [];
    for (const cache of this.caches) cache.watch = null;
    const owned = [this.#queries, this.#scratch, this.#indices, this.#readback];
    owned.push(this.#watchTable, this.#watchMasks, this.#watchOut, this.#selRows);
    owned.push(this.#noLogits, ...this.#watchLogits);
    this.#selRows = this.#noLogits = null;
    this.#watchLogits = [];
    this.#watchTableView = null;
    for (const b of owned) b?.dispose();
    this.#queries =
      this.#scratch =
      this.#indices =
      this.#readback =
      this.#watchTable =
      this.#watchMasks =
      this.#watchOut =
        null;
    this.#queryView = null;
  }

  override [Symbol.dispose](): void {
    this.#checkCmd?.dispose();
    this.#selectCmd?.dispose();
    this.#retrieval[Symbol.dispose]();
    this.#freeDecodeBuffers();
    this.#store.clear();
    super[Symbol.dispose]();
  }
}

/**
 * A refresh that moves only what changes: a satellite's device rows hold `held` (row i holds
 * position held[i]; null: unknown, so every row is rewritten in ascending order) and must come to
 * hold the positions `next` (ascending, as many). The positions that enter take, in ascending
 * order, the rows of those that leave, in ascending row order; the rest stay where they are.
 */
export function changedRows(
  held: Uint32Array | null,
  next: Uint32Array,
): { positions: Uint32Array; rows: Uint32Array | null; held: Uint32Array } {
  if (held === null || held.length !== next.length) {
    return { positions: next, rows: null, held: next.slice() };
  }
  // Bit masks over the positions, not hash sets: a refresh at long context compares tens of
  // thousands of rows per satellite.
  let top = 0;
  for (let i = 0; i < held.length; i++) top = Math.max(top, held[i], next[i]);
  const wanted = new Uint32Array((top >>> 5) + 1);
  markRows(wanted, next);
  const kept = new Uint32Array(wanted.length);
  const free = new Uint32Array(held.length);
  let nFree = 0;
  for (let i = 0; i < held.length; i++) {
    const p = held[i];
    if ((wanted[p >>> 5] >>> (p & 31)) & 1) kept[p >>> 5] |= 1 << (p & 31);
    else free[nFree++] = i;
  }
  const positions = new Uint32Array(nFree);
  const out = held.slice();
  for (let i = 0, k = 0; i < next.length; i++) {
    const p = next[i];
    if (((kept[p >>> 5] >>> (p & 31)) & 1) === 0) {
      positions[k] = p;
      out[free[k]] = p;
      k++;
    }
  }
  return { positions, rows: free.slice(0, nFree), held: out };
}

/** Sets the bits of `rows` (prompt positions) in a row mask. */
function markRows(mask: Uint32Array, rows: ArrayLike<number>): void {
  for (let i = 0; i < rows.length; i++) mask[rows[i] >>> 5] |= 1 << (rows[i] & 31);
}

/**
 * The held share of one pivot from the decode attention's watch output ([nLayers][nHeads] pairs
 * of (held, prompt) fractions): its G query heads' mass on held prompt rows over their mass on
 * all prompt rows; null when the pivot looks almost only at generated tokens (the share then
 * says nothing about the prompt rows).
 */
export function coverageShare(
  out: Float32Array,
  nHeads: number,
  groupSize: number,
  layer: number,
  pivot: number,
): number | null {
  let held = 0, prompt = 0;
  for (let g = 0; g < groupSize; g++) {
    const at = (layer * nHeads + pivot * groupSize + g) * 2;
    held += out[at];
    prompt += out[at + 1];
  }
  return prompt > 1e-3 * groupSize ? held / prompt : null;
}

/** The share of a scores row's total on the rows a mask marks (NaN counts as 0). */
function maskedShare(row: Float32Array, mask: Uint32Array): number {
  let held = 0, total = 0;
  for (let i = 0; i < row.length; i++) {
    const x = Number.isNaN(row[i]) ? 0 : row[i];
    total += x;
    if ((mask[i >>> 5] >>> (i & 31)) & 1) held += x;
  }
  return total > 0 ? held / total : 0;
}

/**
 * The default refresh's take: for each cap, the `cap` positions of `top` (ascending, the top-k
 * kernel's output) ranked first by the kernel's total order on `row` (score descending, NaN
 * lowest, -0 as +0, then position ascending), returned ascending by position. Each take finds
 * its cap-th key by a radix select over a monotonic u32 image of the scores and keeps the
 * positions above it plus the lowest positions equal to it: linear, where ranking the top-k by a
 * sort took 5-9 ms per pivot at 128K-token prompts.
 */
export function takeByScore(
  top: Uint32Array,
  row: Float32Array,
  caps: readonly number[],
): Uint32Array[] {
  const n = top.length;
  const keys = new Uint32Array(n);
  for (let i = 0; i < n; i++) keys[i] = orderKey(row[top[i]]);
  const hist = new Uint32Array(256);
  return caps.map((cap) => {
    const want = Math.min(cap, n);
    if (want === n) return top.slice();
    const out = new Uint32Array(want);
    if (want === 0) return out;
    // The want-th largest key, one byte at a time from the top.
    let prefix = 0, decided = 0, above = 0, need = want;
    for (let shift = 24; shift >= 0; shift -= 8) {
      hist.fill(0);
      for (let i = 0; i < n; i++) {
        if (((keys[i] & decided) >>> 0) === prefix) hist[(keys[i] >>> shift) & 255]++;
      }
      let d = 255;
      for (; d > 0 && hist[d] < need; d--) {
        need -= hist[d];
        above += hist[d];
      }
      prefix = (prefix | (d << shift)) >>> 0;
      decided = (decided | (255 << shift)) >>> 0;
    }
    let ties = want - above;
    for (let i = 0, k = 0; k < want; i++) {
      const key = keys[i];
      if (key > prefix || (key === prefix && ties-- > 0)) out[k++] = top[i];
    }
    return out;
  });
}

const F32_BITS = new Uint32Array(1);
const F32_VIEW = new Float32Array(F32_BITS.buffer);

/** A u32 that orders scores as the top-k kernel does: larger first, NaN below every number,
 * -0 equal to +0. */
function orderKey(x: number): number {
  if (Number.isNaN(x)) return 0;
  F32_VIEW[0] = x === 0 ? 0 : x;
  const bits = F32_BITS[0];
  return bits & 0x80000000 ? ~bits >>> 0 : (bits | 0x80000000) >>> 0;
}
