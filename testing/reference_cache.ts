/**
 * Selection decisions of the cache policies, on score rows the device returns (CPU side).
 * HeteroCache prefill/refresh follow docs/algorithm.md §3-4; SnapKV and StreamingLLM are the
 * uniform baselines. Every position set is returned sorted ascending (the order the tokens are
 * written into a head's pages).
 */
import { HcError } from "../src/errors.ts";
import {
  assertSortedSet,
  avgPool1d,
  intersectionSize,
  median,
  topkSet,
} from "../src/cache/profile/analysis.ts";

function bad(message: string): never {
  throw new HcError("E_BAD_REQUEST", message);
}

function checkCap(cap: number, length: number, what: string): void {
  if (!Number.isInteger(cap) || cap < 0 || cap > length) {
    bad(`${what} must be an integer in [0, ${length}], got ${cap}`);
  }
}

function range(start: number, end: number): Int32Array {
  const out = new Int32Array(Math.max(0, end - start));
  for (let i = 0; i < out.length; i++) out[i] = start + i;
  return out;
}

/**
 * Runtime scores of one KV head (§3 steps 3-4): avg-pool each query head's softmax row, then
 * element-wise max over the G query heads of the group.
 */
export function pooledGroupMax(queryHeadRows: readonly Float32Array[], kernel = 5): Float32Array {
  if (queryHeadRows.length === 0) bad("pooledGroupMax needs at least one query-head row");
  const len = queryHeadRows[0].length;
  const out = new Float32Array(len).fill(-Infinity);
  for (const row of queryHeadRows) {
    if (row.length !== len) bad(`query-head rows differ in length (${row.length} vs ${len})`);
    const pooled = avgPool1d(row, kernel);
    for (let i = 0; i < len; i++) if (pooled[i] > out[i]) out[i] = pooled[i];
  }
  return out;
}

/** Prefill compression of an anchor/satellite (§3 step 5): top-cap by score, position order. */
export function prefillSelect(pooledGroupMaxScores: Float32Array, cap: number): Int32Array {
  checkCap(cap, pooledGroupMaxScores.length, "head cap");
  return topkSet(pooledGroupMaxScores, cap);
}

/**
 * Drift statistic of one pivot (§4 steps c-e): median over the buffered queries of
 * |topK(row) ∩ ref| / K. Rows are pooled, group-maxed scores over the prompt keys.
 */
export function driftStatistic(
  bufferedPooledRows: readonly Float32Array[],
  refSet: Int32Array,
  K: number,
): number {
  if (bufferedPooledRows.length === 0) bad("driftStatistic needs at least one buffered row");
  if (!Number.isInteger(K) || K < 1) bad(`K must be a positive integer, got ${K}`);
  assertSortedSet(refSet, "reference set");
  return median(bufferedPooledRows.map((row) => {
    checkCap(K, row.length, "K");
    return intersectionSize(topkSet(row, K), refSet) / K;
  }));
}

/** The official trigger: refresh when the drift statistic falls below the threshold. */
export function driftTriggered(statistic: number, stableThreshold: number): boolean {
  return statistic < stableThreshold;
}

export type RefreshMode = "compat" | "default";

/**
 * Positions each satellite of a triggered pivot takes from the pivot's last buffered row.
 * compat (§4, quirk): the top-M positions (M = largest cap) sorted by position, and satellite s
 * takes the FIRST cap_s of that list, i.e. the earliest-positioned ones.
 * default (§10.1): satellite s takes its own top-cap_s by score, then sorted by position.
 */
export function satelliteRefresh(
  lastRow: Float32Array,
  caps: readonly number[],
  mode: RefreshMode,
): Int32Array[] {
  for (const c of caps) checkCap(c, lastRow.length, "satellite cap");
  if (mode === "compat") {
    const idx = topkSet(lastRow, caps.length === 0 ? 0 : Math.max(...caps));
    return caps.map((c) => idx.slice(0, c));
  }
  if (mode !== "default") bad(`refresh mode must be "compat" or "default", got ${String(mode)}`);
  return caps.map((c) => topkSet(lastRow, c));
}

export interface SnapKvOptions {
  /** Observation window: the last `window` prompt tokens' queries (SnapKV: 32). */
  window?: number;
  /** Average-pool kernel (the brief's choice; SnapKV's code max-pools). */
  kernel?: number;
}

/**
 * SnapKV scores of one KV head over the prefix keys [0, L − window): the SUM over all given rows
 * (every window query of every query head in the GQA group; a sum over the group ranks exactly
 * like the group mean), then avg-pooled.
 */
export function snapkvScores(
  windowRows: readonly Float32Array[],
  promptTokens: number,
  opts: SnapKvOptions = {},
): Float32Array {
  const window = opts.window ?? 32;
  if (!Number.isInteger(promptTokens) || promptTokens < 1) bad(`bad prompt length ${promptTokens}`);
  checkCap(window, 1 << 20, "SnapKV window");
  if (windowRows.length === 0) bad("snapkvScores needs at least one observation row");
  const prefix = Math.max(0, promptTokens - window);
  const sum = new Float64Array(prefix);
  for (const row of windowRows) {
    if (row.length < prefix) bad(`observation row has ${row.length} keys, need ${prefix}`);
    for (let i = 0; i < prefix; i++) sum[i] += row[i];
  }
  return avgPool1d(Float32Array.from(sum), opts.kernel ?? 5);
}

/**
 * SnapKV positions for one KV head: the window's own tokens are always kept, the rest of the
 * cap goes to the best-scoring prefix positions. cap ≥ L keeps everything; cap ≤ window keeps
 * only the most recent cap tokens.
 */
export function snapkvSelect(
  windowRows: readonly Float32Array[],
  promptTokens: number,
  cap: number,
  opts: SnapKvOptions = {},
): Int32Array {
  const window = opts.window ?? 32;
  checkCap(window, 1 << 20, "SnapKV window");
  if (!Number.isInteger(cap) || cap < 0) {
    bad(`SnapKV cap must be a whole number of tokens, got ${cap}`);
  }
  if (cap >= promptTokens) return range(0, promptTokens);
  if (cap <= window) return range(promptTokens - cap, promptTokens);
  const scores = snapkvScores(windowRows, promptTokens, opts);
  const chosen = topkSet(scores, cap - window);
  const out = new Int32Array(cap);
  out.set(chosen);
  out.set(range(promptTokens - window, promptTokens), chosen.length);
  return out;
}

/** StreamingLLM: the first `sinkTokens` positions plus the most recent ones, cap in total. */
export function streamingSelect(promptTokens: number, cap: number, sinkTokens = 4): Int32Array {
  if (!Number.isInteger(promptTokens) || promptTokens < 0) bad(`bad prompt length ${promptTokens}`);
  if (!Number.isInteger(cap) || cap < 0) {
    bad(`streaming cap must be a whole number of tokens, got ${cap}`);
  }
  if (!Number.isInteger(sinkTokens) || sinkTokens < 0) bad(`bad sink count ${sinkTokens}`);
  if (cap >= promptTokens) return range(0, promptTokens);
  const sinks = Math.min(sinkTokens, cap);
  const out = new Int32Array(cap);
  out.set(range(0, sinks));
  out.set(range(promptTokens - (cap - sinks), promptTokens), sinks);
  return out;
}
