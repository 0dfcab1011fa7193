/**
 * Calibration statistics (docs/algorithm.md §1b-1f, §10.5): the CPU ground truth for the pooled
 * top-k sets, stability, similarity clustering and budget multipliers, and a streaming recorder
 * that turns the engine's per-head attention rows into a HeadProfile without keeping matrices.
 */
import { HcError } from "../../errors.ts";
import {
  type Cluster,
  type HeadProfile,
  type HeadRole,
  isFullRole,
  type LayerProfile,
  parseProfile,
  PROFILE_SCHEMA,
  PROFILE_VERSION,
  type ProfileModel,
} from "./profile.ts";

function bad(message: string): never {
  throw new HcError("E_BAD_REQUEST", message);
}

function checkCount(n: number, what: string, min: number, max: number): void {
  if (!Number.isInteger(n) || n < min || n > max) {
    bad(`${what} must be an integer in [${min}, ${max}], got ${n}`);
  }
}

/**
 * 1-D average pool, stride 1, padding kernel/2, count_include_pad (PyTorch's default): every
 * output is divided by `kernel`, so the edges are diluted exactly as in the official code.
 */
export function avgPool1d(scores: Float32Array, kernel = 5): Float32Array {
  checkCount(kernel, "pool kernel", 1, 1023);
  if (kernel % 2 === 0) {
    bad(`pool kernel must be odd (output length = input length), got ${kernel}`);
  }
  const n = scores.length;
  const half = kernel >> 1;
  const out = new Float32Array(n);
  let sum = 0;
  for (let j = 0; j < Math.min(half, n); j++) sum += scores[j];
  for (let i = 0; i < n; i++) {
    const enter = i + half;
    if (enter < n) sum += scores[enter];
    out[i] = sum / kernel;
    const leave = i - half;
    if (leave >= 0) sum -= scores[leave];
  }
  return out;
}

/**
 * Indices of the k largest scores, returned sorted ascending. Ties at the threshold go to the
 * lower index (torch.topk leaves them unspecified; we fix them so runs are reproducible).
 * NaN ranks below every number.
 */
export function topkSet(scores: Float32Array, k: number): Int32Array {
  const n = scores.length;
  checkCount(k, "top-k size", 0, n);
  const out = new Int32Array(k);
  if (k === 0) return out;
  const keys = new Float32Array(n);
  for (let i = 0; i < n; i++) keys[i] = Number.isNaN(scores[i]) ? -Infinity : scores[i];
  // Native numeric sort of a copy finds the k-th largest value far faster than a comparator sort.
  const sorted = keys.slice().sort();
  const threshold = sorted[n - k];
  let above = 0;
  for (let i = n - k + 1; i < n; i++) if (sorted[i] > threshold) above++;
  let ties = k - above;
  let w = 0;
  for (let i = 0; i < n && w < k; i++) {
    const v = keys[i];
    if (v > threshold) out[w++] = i;
    else if (v === threshold && ties > 0) {
      out[w++] = i;
      ties--;
    }
  }
  return out;
}

/** Throws unless `set` is strictly ascending (what topkSet returns). */
export function assertSortedSet(set: Int32Array, what: string): void {
  for (let i = 1; i < set.length; i++) {
    if (set[i] <= set[i - 1]) bad(`${what} must be strictly ascending (a top-k set)`);
  }
}

/** |A∩B| / |A| for sorted sets (the official code's definition, §1c); 0 if either is empty. */
export function overlap(a: Int32Array, b: Int32Array): number {
  if (a.length === 0 || b.length === 0) return 0;
  return intersectionSize(a, b) / a.length;
}

export function intersectionSize(a: Int32Array, b: Int32Array): number {
  let i = 0;
  let j = 0;
  let count = 0;
  while (i < a.length && j < b.length) {
    if (a[i] === b[j]) {
      count++;
      i++;
      j++;
    } else if (a[i] < b[j]) i++;
    else j++;
  }
  return count;
}

function groupReduce(
  rows: readonly Float32Array[],
  groupSize: number,
  reduce: (acc: Float64Array, row: Float32Array) => void,
  init: number,
  finish: (v: number) => number,
): Float32Array[] {
  checkCount(groupSize, "GQA group size", 1, 1024);
  if (rows.length === 0 || rows.length % groupSize !== 0) {
    bad(`${rows.length} query-head rows do not split into groups of ${groupSize}`);
  }
  const len = rows[0].length;
  const out: Float32Array[] = [];
  for (let g = 0; g < rows.length; g += groupSize) {
    const acc = new Float64Array(len).fill(init);
    for (let q = g; q < g + groupSize; q++) {
      if (rows[q].length !== len) {
        bad(`query-head rows differ in length (${rows[q].length} vs ${len})`);
      }
      reduce(acc, rows[q]);
    }
    out.push(Float32Array.from(acc, finish));
  }
  return out;
}

/** KV head h = mean of query heads [h·G, (h+1)·G) (calibration, §1b). */
export function groupMean(rows: readonly Float32Array[], groupSize: number): Float32Array[] {
  return groupReduce(
    rows,
    groupSize,
    (acc, row) => {
      for (let i = 0; i < row.length; i++) acc[i] += row[i];
    },
    0,
    (v) => v / groupSize,
  );
}

/** KV head h = element-wise max of query heads [h·G, (h+1)·G) (runtime selection, §3). */
export function groupMax(rows: readonly Float32Array[], groupSize: number): Float32Array[] {
  return groupReduce(
    rows,
    groupSize,
    (acc, row) => {
      for (let i = 0; i < row.length; i++) if (row[i] > acc[i]) acc[i] = row[i];
    },
    -Infinity,
    (v) => v,
  );
}

/** numpy/statistics median: the mean of the two middle values for an even count. */
export function median(values: readonly number[]): number {
  if (values.length === 0) bad("median of no values");
  const s = [...values].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 === 1 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** S_stable (§1d): median over decode steps of O(prefill set, step set). */
export function stability(prefillSet: Int32Array, decodeSets: readonly Int32Array[]): number {
  if (decodeSets.length === 0) bad("stability needs at least one decode-step set");
  return median(decodeSets.map((d) => overlap(prefillSet, d)));
}

/** adjacency[i][j]: edge i→j when O(K_i, K_j) ≥ simThreshold (§1e); no self-edges. */
export function similarityGraph(sets: readonly Int32Array[], simThreshold: number): boolean[][] {
  return sets.map((a, i) => sets.map((b, j) => i !== j && overlap(a, b) >= simThreshold));
}

/**
 * Greedy star clustering (§1e): repeatedly take the unassigned head with the most unassigned
 * out-neighbours (ties → lowest index) as a pivot with those neighbours as satellites; stop when
 * the best count is 0. Clusters come back in pick order.
 */
export function greedyStarClusters(adjacency: readonly (readonly boolean[])[]): Cluster[] {
  const n = adjacency.length;
  for (const row of adjacency) if (row.length !== n) bad("adjacency matrix must be square");
  const assigned = new Array<boolean>(n).fill(false);
  const clusters: Cluster[] = [];
  for (;;) {
    let best = -1;
    let bestDegree = 0;
    for (let i = 0; i < n; i++) {
      if (assigned[i]) continue;
      let degree = 0;
      for (let j = 0; j < n; j++) if (adjacency[i][j] && !assigned[j] && j !== i) degree++;
      if (degree > bestDegree) {
        best = i;
        bestDegree = degree;
      }
    }
    if (best < 0) return clusters;
    const satellites: number[] = [];
    for (let j = 0; j < n; j++) {
      if (adjacency[best][j] && !assigned[j] && j !== best) satellites.push(j);
    }
    assigned[best] = true;
    for (const s of satellites) assigned[s] = true;
    clusters.push({ pivot: best, satellites });
  }
}

const EPSILON = 1e-6;

/**
 * Budget multipliers (§1f): targets are the anchors and satellites of the WHOLE model;
 * ratio_h = [1/(m_h+ε)] / Σ_t 1/(m_t+ε) × N_t, so ratios average 1 over targets and a less
 * stable head gets more. Full heads get -1. Same operation order as the official code.
 */
export function multipliers(
  roles: readonly (readonly HeadRole[])[],
  stabilities: readonly (readonly number[])[],
): number[][] {
  let total = 0;
  let nTargets = 0;
  roles.forEach((row, l) =>
    row.forEach((role, h) => {
      if (isFullRole(role)) return;
      const m = stabilities[l]?.[h];
      if (typeof m !== "number" || !(m >= 0)) bad(`stability of layer ${l} head ${h} is ${m}`);
      total += 1 / (m + EPSILON);
      nTargets++;
    })
  );
  return roles.map((row, l) =>
    row.map((role, h) =>
      isFullRole(role) ? -1 : (1 / (stabilities[l][h] + EPSILON)) / total * nTargets
    )
  );
}

export interface CalibrationDefaults {
  topk: number;
  stableThreshold: number;
  simThreshold: number;
}

/** §10.5: topk = min(1024, floor(L/4)); thresholds 0.5 as in the official defaults. */
export function calibrationDefaults(promptTokens: number): CalibrationDefaults {
  checkCount(promptTokens, "calibration prompt length", 4, 2 ** 31 - 1);
  return {
    topk: Math.min(1024, Math.floor(promptTokens / 4)),
    stableThreshold: 0.5,
    simThreshold: 0.5,
  };
}

/**
 * A calibration top-k set from one group-averaged attention row (§1b): keys restricted to the
 * prompt [0, L), then avg-pooled, then top-k. The official code restricts to max_length=5000,
 * which is the prompt length when the prompt was truncated to it.
 */
export function calibrationSet(
  row: Float32Array,
  promptTokens: number,
  topk: number,
  kernel = 5,
): Int32Array {
  if (row.length < promptTokens) {
    bad(`attention row has ${row.length} keys, fewer than the ${promptTokens}-token prompt`);
  }
  return topkSet(avgPool1d(row.subarray(0, promptTokens), kernel), topk);
}

export interface CalibrationParams {
  topk: number;
  stableThreshold: number;
  simThreshold: number;
  calibrationTokens: number;
  decodeSteps: number;
  similarityKeyTokens: number;
  poolKernel: number;
}

/** Roles, clusters and multipliers from per-head stability and the similarity-step sets. */
export function profileFromStats(input: {
  model: ProfileModel;
  params: CalibrationParams;
  /** [layer][head] S_stable. */
  stability: readonly (readonly number[])[];
  /** [layer][head] top-k set at the similarity step. */
  similaritySets: readonly (readonly Int32Array[])[];
}): HeadProfile {
  const { model, params } = input;
  if (input.stability.length !== model.nLayers || input.similaritySets.length !== model.nLayers) {
    bad(`expected statistics for ${model.nLayers} layers`);
  }
  const layers: LayerProfile[] = input.similaritySets.map((sets, l) => {
    if (sets.length !== model.nKvHeads || input.stability[l].length !== model.nKvHeads) {
      bad(`layer ${l}: expected statistics for ${model.nKvHeads} KV heads`);
    }
    const clusters = greedyStarClusters(similarityGraph(sets, params.simThreshold));
    const roles = input.stability[l].map((s): HeadRole =>
      s < params.stableThreshold ? "volatile" : "anchor"
    );
    for (const c of clusters) {
      roles[c.pivot] = "pivot";
      for (const s of c.satellites) roles[s] = "satellite";
    }
    return { roles, multipliers: [], stability: [...input.stability[l]], clusters };
  });
  const mult = multipliers(layers.map((l) => l.roles), input.stability);
  layers.forEach((l, i) => (l.multipliers = mult[i]));
  return parseProfile({
    schema: PROFILE_SCHEMA,
    version: PROFILE_VERSION,
    model,
    params: { source: "calibrated", ...params, groupReduce: "mean" },
    layers,
  });
}

/**
 * Non-streaming form: sets already computed per [layer][head] (decode sets per
 * [layer][head][step]). `similaritySets` is the step chosen for the graph (§1e).
 */
export function buildProfile(input: {
  model: ProfileModel;
  params: Omit<CalibrationParams, "decodeSteps">;
  prefillSets: readonly (readonly Int32Array[])[];
  decodeSets: readonly (readonly (readonly Int32Array[])[])[];
  similaritySets: readonly (readonly Int32Array[])[];
}): HeadProfile {
  if (
    input.prefillSets.length !== input.model.nLayers ||
    input.decodeSets.length !== input.model.nLayers
  ) {
    bad(`expected sets for ${input.model.nLayers} layers`);
  }
  const decodeSteps = input.decodeSets[0]?.[0]?.length ?? 0;
  const stab = input.prefillSets.map((row, l) =>
    row.map((set, h) => {
      const steps = input.decodeSets[l]?.[h];
      if (!steps || steps.length !== decodeSteps) {
        bad(`layer ${l} head ${h}: expected ${decodeSteps} decode-step sets`);
      }
      return stability(set, steps);
    })
  );
  return profileFromStats({
    model: input.model,
    params: { ...input.params, decodeSteps },
    stability: stab,
    similaritySets: input.similaritySets,
  });
}

export interface CalibrationRecorderOptions {
  model: ProfileModel;
  promptTokens: number;
  topk?: number;
  stableThreshold?: number;
  simThreshold?: number;
  /**
   * Key length of the step whose sets build the similarity graph (the official `--decode_step`).
   * Prefill has key length L, decode step t (0-based) has L+1+t. Default L: the last prompt
   * token, which is what the official default does with its 5000-token prompt. If no recorded
   * step has this key length, the last decode step is used, as in the official code.
   */
  similarityKeyTokens?: number;
  poolKernel?: number;
}

interface HeadState {
  prefill: Int32Array | null;
  similarity: Int32Array | null;
  lastDecode: Int32Array | null;
  overlaps: number[];
}

/**
 * Streaming calibration: the engine feeds one group-averaged attention row per (layer, KV head)
 * at the last prompt token and at every decode step; only the top-k sets of the prefill and
 * similarity steps and one overlap number per decode step are kept.
 */
export class CalibrationRecorder {
  readonly model: ProfileModel;
  readonly promptTokens: number;
  readonly topk: number;
  readonly stableThreshold: number;
  readonly simThreshold: number;
  readonly similarityKeyTokens: number;
  readonly poolKernel: number;
  readonly #heads: HeadState[];

  constructor(opts: CalibrationRecorderOptions) {
    const m = opts.model;
    checkCount(m.nLayers, "layer count", 1, 1024);
    checkCount(m.nKvHeads, "KV head count", 1, 1024);
    const defaults = calibrationDefaults(opts.promptTokens);
    this.model = { ...m };
    this.promptTokens = opts.promptTokens;
    this.topk = opts.topk ?? defaults.topk;
    checkCount(this.topk, "topk", 1, opts.promptTokens);
    this.stableThreshold = opts.stableThreshold ?? defaults.stableThreshold;
    this.simThreshold = opts.simThreshold ?? defaults.simThreshold;
    for (
      const [name, t] of [["stableThreshold", this.stableThreshold], [
        "simThreshold",
        this.simThreshold,
      ]] as const
    ) {
      if (!(t > 0 && t <= 1)) bad(`${name} must be in (0, 1], got ${t}`);
    }
    this.similarityKeyTokens = opts.similarityKeyTokens ?? opts.promptTokens;
    checkCount(this.similarityKeyTokens, "similarityKeyTokens", opts.promptTokens, 2 ** 31 - 1);
    this.poolKernel = opts.poolKernel ?? 5;
    this.#heads = Array.from({ length: m.nLayers * m.nKvHeads }, () => ({
      prefill: null,
      similarity: null,
      lastDecode: null,
      overlaps: [],
    }));
  }

  #head(layer: number, kvHead: number): HeadState {
    checkCount(layer, "layer", 0, this.model.nLayers - 1);
    checkCount(kvHead, "KV head", 0, this.model.nKvHeads - 1);
    return this.#heads[layer * this.model.nKvHeads + kvHead];
  }

  /** Attention of the last prompt token over (at least) the L prompt keys. */
  recordPrefill(layer: number, kvHead: number, row: Float32Array): void {
    const h = this.#head(layer, kvHead);
    if (h.prefill) bad(`prefill row of layer ${layer} head ${kvHead} recorded twice`);
    h.prefill = calibrationSet(row, this.promptTokens, this.topk, this.poolKernel);
    if (this.similarityKeyTokens === this.promptTokens) h.similarity = h.prefill;
  }

  /** Attention of decode step `step` (0-based); keys past the prompt are ignored. */
  recordDecode(step: number, layer: number, kvHead: number, row: Float32Array): void {
    const h = this.#head(layer, kvHead);
    if (!h.prefill) bad(`layer ${layer} head ${kvHead}: record the prefill row before decode rows`);
    if (step !== h.overlaps.length) {
      bad(`layer ${layer} head ${kvHead}: expected decode step ${h.overlaps.length}, got ${step}`);
    }
    const set = calibrationSet(row, this.promptTokens, this.topk, this.poolKernel);
    h.overlaps.push(overlap(h.prefill, set));
    h.lastDecode = set;
    if (this.promptTokens + 1 + step === this.similarityKeyTokens) h.similarity = set;
  }

  /** Decode steps recorded for every head so far. */
  get decodeSteps(): number {
    return Math.min(...this.#heads.map((h) => h.overlaps.length));
  }

  finish(): HeadProfile {
    const { nLayers, nKvHeads } = this.model;
    const steps = this.#heads[0].overlaps.length;
    this.#heads.forEach((h, i) => {
      const where = `layer ${Math.floor(i / nKvHeads)} head ${i % nKvHeads}`;
      if (!h.prefill) {
        throw new HcError("E_PROFILE", `calibration incomplete: ${where} has no prefill row`);
      }
      if (steps === 0) throw new HcError("E_PROFILE", "calibration needs at least one decode step");
      if (h.overlaps.length !== steps) {
        throw new HcError(
          "E_PROFILE",
          `calibration incomplete: ${where} has ${h.overlaps.length} decode steps, head 0 has ${steps}`,
        );
      }
    });
    const at = (l: number) => this.#heads.slice(l * nKvHeads, (l + 1) * nKvHeads);
    return profileFromStats({
      model: this.model,
      params: {
        topk: this.topk,
        stableThreshold: this.stableThreshold,
        simThreshold: this.simThreshold,
        calibrationTokens: this.promptTokens,
        decodeSteps: steps,
        similarityKeyTokens: this.similarityKeyTokens,
        poolKernel: this.poolKernel,
      },
      stability: Array.from({ length: nLayers }, (_, l) => at(l).map((h) => median(h.overlaps))),
      similaritySets: Array.from(
        { length: nLayers },
        (_, l) => at(l).map((h) => (h.similarity ?? h.lastDecode)!),
      ),
    });
  }
}
