/**
 * HeteroCache (HETEROCACHE.md §2-4, §10) and its ablations. Volatile and pivot heads keep their
 * whole KV; anchors and satellites keep a budget chosen from their own last-prompt-token
 * attention. Pivots watch for drift; when a pivot's attention drifts, its satellites' prompt
 * rows are refreshed from the host KV store (retrieval.ts). The ablations share everything and
 * differ only in the trigger: `per-step` refreshes every step, `fixed-interval` every N steps.
 *
 * Modes: `compat` reproduces the official code, quirks included (first cap_s by position; the
 * reference set of the i-th pivot in ascending index order used for the i-th cluster in dict
 * order; refresh applied before the next step). The default refreshes by score, keeps one
 * reference set per pivot, and lets the host gather run off the JS thread while decoding goes on.
 */
import { HcError } from "../errors.ts";
import type { KvLayerCache } from "../kernels/kv.ts";
import type { Captures } from "../model/forward.ts";
import type { Buffer, CommandList } from "../vk/mod.ts";
import { TopK } from "../kernels/scores.ts";
import { intersectionSize, median } from "./analysis.ts";
import { baseLength, effectiveKeep, headCaps, headCapsFromTokens } from "./budget.ts";
import {
  checkBudgetTokens,
  checkKeep,
  CompressedCache,
  type HeadSelection,
  type PolicyDeps,
} from "./compressed.ts";
import { HostKvStore } from "./host_store.ts";
import type { PolicyName } from "./policy.ts";
import { fullHeadCount, type HeadProfile, type HeadRole, isFullRole } from "./profile.ts";
import { type RefreshJob, Retrieval } from "./retrieval.ts";

export type Trigger = { kind: "drift"; every: number; threshold: number } | {
  kind: "interval";
  every: number;
};

export interface HeteroOptions {
  keep: number;
  /** Mean prompt-KV tokens of a compressed head instead of a fraction (overrides keep). */
  budgetTokens?: number;
  profile: HeadProfile;
  /** Official behaviour, quirks included (HETEROCACHE.md §1-4). */
  compat?: boolean;
  /** Drift checks every `checkEvery` steps (official `--steps`, default 5). */
  checkEvery?: number;
  /** Drift threshold (default: the profile's stable threshold, else 0.5). */
  threshold?: number;
  /** For fixed-interval: refresh every N steps (default 2). */
  interval?: number;
  poolKernel?: number;
  /** Prompt queries whose summed attention picks the rows a compressed head keeps at prefill.
   * Default 16 (compat: 1, the official last token; SnapKV sums 32): on the real models' full
   * fidelity run, 16 kept agreement (98.3% vs 98.3%, 96.5% vs 96.0%) and cut the mean KL by
   * 38% and 16% against 1 (HETEROCACHE.md §10.8). Pivots' drift references always come from the
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
  positions: Uint32Array;
  /** The pivot's pooled, group-maxed scores row (last buffered query) the positions came from. */
  scores: Float32Array;
}

interface PivotState {
  layer: number;
  pivot: number;
  satellites: number[];
  /** Reference top-K set (ascending positions) drift is measured against. */
  ref: Int32Array;
  /** Device rows [window][L]: pooled, group-maxed scores of the buffered queries. */
  scores: Buffer | null;
}

export class HeteroCache extends CompressedCache {
  readonly name: PolicyName;
  readonly captureWindow: number;
  override readonly captureSteps = true;
  readonly #profile: HeadProfile;
  readonly #keep: number;
  readonly #budgetTokens: number | null;
  readonly #compat: boolean;
  readonly #trigger: Trigger;
  readonly #poolKernel: number;
  readonly #store: HostKvStore;
  readonly #retrieval: Retrieval;
  #base = 0;
  #landedBefore = 0;
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
  readonly #record: boolean;
  /** Refreshes of the current generation (only with `record`). */
  readonly refreshLog: RefreshRecord[] = [];

  constructor(
    deps: PolicyDeps,
    name: "heterocache" | "per-step" | "fixed-interval",
    opts: HeteroOptions,
  ) {
    super(deps, name);
    this.name = name;
    this.#profile = opts.profile;
    this.#keep = checkKeep(opts.keep);
    this.#budgetTokens = opts.budgetTokens === undefined
      ? null
      : checkBudgetTokens(opts.budgetTokens);
    this.keepFraction = this.#budgetTokens === null ? this.#keep : null;
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
    if (name === "heterocache") {
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
    this.#retrieval = new Retrieval(deps.device, c.headDim, !this.#compat);
  }

  /** Queries buffered per drift check. */
  get #window(): number {
    return this.#trigger.kind === "drift" ? this.#trigger.every : 1;
  }

  protected roleOf(layer: number, head: number): HeadRole {
    return this.#profile.layers[layer].roles[head];
  }

  override begin(promptTokens: number, maxNewTokens: number): void {
    this.#retrieval.reset();
    this.#store.clear();
    this.#freeDecodeBuffers();
    super.begin(promptTokens, maxNewTokens);
    const N = this.config.nLayers * this.config.nKvHeads;
    if (this.#budgetTokens !== null) {
      this.#base = Math.min(this.#budgetTokens, promptTokens);
      this.#caps = headCapsFromTokens(this.#profile, this.#budgetTokens, promptTokens);
    } else {
      // Below the profile's floor, the smallest budget it allows (reported as stats().keep).
      const keep = effectiveKeep(this.#keep, N, fullHeadCount(this.#profile));
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
  }

  /** Whether a refresh is in flight (gathering on the host or copying to the device). */
  get refreshInFlight(): boolean {
    return this.#retrieval.busy;
  }

  /** Waits until every refresh started so far has landed on the device. */
  async settle(): Promise<void> {
    await this.#retrieval.settle();
  }

  protected select(
    prefill: readonly KvLayerCache[],
    captures: Captures,
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
      this.scoreLayers(prefill, captures, last, pick(true), wanted(true));
      if (W > 1) {
        this.scoreLayers(
          prefill,
          captures,
          { ...last, window: W, windowMode: "sum" },
          pick(false),
          wanted(false),
        );
      }
      all = new Int32Array(this.device.download(indices).buffer);
    } catch (e) {
      indices.dispose();
      throw e;
    }
    this.#pivots = this.#makePivots((l, p) =>
      all.slice(offsets[l][p], offsets[l][p] + slots[l][p])
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
   * official code does (HETEROCACHE.md §9.1). */
  #makePivots(refOf: (layer: number, pivot: number) => Int32Array): PivotState[] {
    const out: PivotState[] = [];
    this.#profile.layers.forEach((layer, l) => {
      const byIndex = layer.clusters.map((cl) => cl.pivot).sort((a, b) => a - b);
      layer.clusters.forEach((cl, i) => {
        const refPivot = this.#compat ? byIndex[i] : cl.pivot;
        out.push({
          layer: l,
          pivot: cl.pivot,
          satellites: cl.satellites,
          ref: refOf(l, refPivot),
          scores: null,
        });
      });
    });
    return out;
  }

  protected override async afterCompress(prefill: readonly KvLayerCache[]): Promise<void> {
    const L = this.promptTokens;
    for (const p of this.#pivots) {
      for (const s of p.satellites) {
        this.#store.capture(this.device, prefill[p.layer], p.layer, s, L, L + this.maxNew);
      }
    }
    const c = this.config;
    const W = this.#window;
    this.#queries = this.device.buffer(c.nLayers * W * c.nHeads * c.headDim * 4, "upload");
    const m = this.#queries.mapped();
    this.#queryView = new Float32Array(m.buffer, m.byteOffset, m.byteLength / 4);
    for (const p of this.#pivots) p.scores = this.device.buffer(TopK.rowsBytes(W * L));
    const K = this.kernels;
    this.#scratch = this.device.buffer(K.scores.scratchBytes({ headCount: 1, n: L, window: W }));
    this.#ensureIndices(this.#pivots.length * W * Math.min(this.#base, L) * 4);
    await Promise.resolve();
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

  override transferWait(): bigint {
    const v = this.#retrieval.landing();
    // A step carries a transfer when a refresh landed since the previous step (or it must wait).
    if (v > 0n || this.#retrieval.submitted > this.#landedBefore) this.stat.stepsWithTransfer++;
    this.#landedBefore = this.#retrieval.submitted;
    return v;
  }

  override async afterStep(captures: Captures): Promise<void> {
    this.stat.decodeSteps++;
    const c = this.config;
    const qDim = c.nHeads * c.headDim;
    const kvDim = c.nKvHeads * c.headDim;
    const per = qDim + 2 * kvDim;
    const step = captures.step;
    // Decoded rows of satellites go to the host store; queries to the drift buffer.
    for (const p of this.#pivots) {
      const base = p.layer * per;
      for (const s of p.satellites) {
        this.#store.append(
          p.layer,
          s,
          step.subarray(base + qDim + s * c.headDim, base + qDim + (s + 1) * c.headDim),
          step.subarray(
            base + qDim + kvDim + s * c.headDim,
            base + qDim + kvDim + (s + 1) * c.headDim,
          ),
        );
      }
    }
    const W = this.#window;
    const slot = this.#buffered % W;
    for (let l = 0; l < c.nLayers; l++) {
      this.#queryView!.set(step.subarray(l * per, l * per + qDim), (l * W + slot) * qDim);
    }
    this.#buffered++;
    if (this.#buffered % this.#trigger.every !== 0 || this.#pivots.length === 0) return;
    const t0 = performance.now();
    const triggered = await this.#check(slot);
    const jobs = triggered.length ? await this.#selectRefresh(triggered, slot) : [];
    this.stat.monitorMs += performance.now() - t0;
    if (jobs.length) {
      const t1 = performance.now();
      await this.#retrieval.start(jobs, this.caches);
      this.stat.transferWaitMs += performance.now() - t1;
      for (const j of jobs) {
        this.stat.refreshedHeads++;
        this.stat.rowsMoved += j.positions.length;
        this.stat.bytesMoved += j.positions.length * c.headDim * 2 * 2;
        this.stat.refreshedMap[j.layer][j.head] = true;
      }
    }
  }

  /** Scores every pivot's buffered queries; returns the pivots whose clusters refresh. */
  async #check(lastSlot: number): Promise<PivotState[]> {
    const W = this.#window;
    const L = this.promptTokens;
    const K = this.kernels;
    const c = this.config;
    const qDim = c.nHeads * c.headDim;
    const drift = this.#trigger.kind === "drift";
    const kRef = Math.min(this.#base, L);
    const cmd = (this.#checkCmd ??= this.device.commands());
    cmd.begin();
    this.#pivots.forEach((p, i) => {
      if (i > 0) cmd.barrier(); // the scores scratch is shared
      K.scores.record(cmd, {
        cache: this.caches[p.layer],
        headStart: p.pivot,
        headCount: 1,
        n: L,
        q: this.#queries!,
        qOffset: p.layer * W * qDim,
        qStride: qDim,
        window: W,
        groupReduce: "max",
        windowMode: "separate",
        poolFirst: true,
        poolKernel: this.#poolKernel,
        out: p.scores!,
        scratch: this.#scratch!,
      });
    });
    if (drift && kRef > 0) {
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
    if (!drift) return this.#pivots;
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
   */
  async #selectRefresh(fired: PivotState[], lastSlot: number): Promise<RefreshJob[]> {
    const L = this.promptTokens;
    const K = this.kernels;
    let at = 0;
    const plan = fired.map((p) => {
      const caps = p.satellites.map((s) => this.#caps[p.layer][s]);
      const e = { p, caps, M: Math.max(...caps), at };
      at += e.M;
      return e;
    });
    if (this.#trigger.kind !== "drift") this.stat.driftChecks += fired.length;
    if (this.#trigger.kind !== "drift") this.stat.triggers += fired.length;
    // The readback holds the indices, then each pivot's scores row where the default ranking
    // or the refresh log needs it.
    const rows = !this.#compat || this.#record;
    const rowsAt = at * 4;
    this.#ensureIndices(rowsAt + (rows ? fired.length * L * 4 : 0));
    const cmd = (this.#selectCmd ??= this.device.commands());
    cmd.begin();
    for (const e of plan) {
      K.topk.record(cmd, {
        rows: e.p.scores!,
        rowOffset: lastSlot * L,
        rowStride: L,
        rowCount: 1,
        n: L,
        k: e.M,
        out: this.#indices!,
        outOffset: e.at,
      });
    }
    cmd.barrier();
    cmd.copy(this.#indices!, this.#readback!, [[0, 0, rowsAt]]);
    if (rows) {
      plan.forEach((e, i) =>
        cmd.copy(e.p.scores!, this.#readback!, [[lastSlot * L * 4, rowsAt + i * L * 4, L * 4]])
      );
    }
    cmd.end();
    await this.device.wait("compute", cmd.submit());
    const m = this.#readback!.mapped();
    const all = new Uint32Array(m.buffer, m.byteOffset, at);
    const jobs: RefreshJob[] = [];
    plan.forEach((e, i) => {
      const top = all.slice(e.at, e.at + e.M);
      const row = rows ? new Float32Array(m.buffer, m.byteOffset + rowsAt + i * L * 4, L) : null;
      let byScore = top;
      if (!this.#compat) {
        const key = (j: number) => (Number.isNaN(row![j]) ? -Infinity : row![j]);
        byScore = top.slice().sort((x, y) => key(y) - key(x) || x - y);
      }
      e.p.satellites.forEach((s, j) => {
        const take = e.caps[j];
        const positions = this.#compat ? top.slice(0, take) : byScore.slice(0, take).sort();
        if (this.#record) {
          this.refreshLog.push({
            layer: e.p.layer,
            pivot: e.p.pivot,
            head: s,
            caps: e.caps,
            index: j,
            positions,
            scores: row!.slice(), // the readback is reused by the next selection
          });
        }
        // A satellite whose budget rounds to zero rows has nothing to refresh.
        if (take > 0) {
          jobs.push({ layer: e.p.layer, head: s, positions, host: this.#store.head(e.p.layer, s) });
        }
      });
    });
    return jobs;
  }

  #freeDecodeBuffers(): void {
    for (const p of this.#pivots) p.scores?.dispose();
    this.#pivots = [];
    for (const b of [this.#queries, this.#scratch, this.#indices, this.#readback]) b?.dispose();
    this.#queries =
      this.#scratch =
      this.#indices =
      this.#readback =
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
