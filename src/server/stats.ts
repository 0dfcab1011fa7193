/**
 * The `hc` object of every answer: what the cache did for one request, and the head map (layers x
 * KV heads) the playground draws. Only numbers the engine measures are reported; the HeteroCache
 * counters (drift checks, triggers, bytes moved) are read from the session's stats object and are
 * zero until a policy that produces them runs.
 */
import type { GenerationSummary, SessionStats } from "../engine/session.ts";

/** Counters a compressing cache policy reports (zero for the full cache). */
export interface CacheCounters {
  driftChecks: number;
  triggers: number;
  bytesMoved: number;
}

/** A head as a cache policy describes it. */
export interface EngineHead {
  role: string;
  budgetTokens: number | null;
}

/**
 * What the server reads from a session beyond SessionStats, when the engine offers it: the cache
 * policy's own statistics (`cacheStats()`) and its per-head description (`policy.heads()`). Read
 * structurally, so the server works with an engine that has no cache policies yet (full cache:
 * zero counters, every head full).
 */
interface CacheView {
  cacheStats?: () => Partial<CacheCounters> & { refreshedMap?: boolean[][]; keep?: number | null };
  policy?: { heads?: () => EngineHead[][] };
}

function view(session: object): CacheView {
  return session as CacheView;
}

export function cacheCounters(session: object, stats: SessionStats): CacheCounters {
  const fromPolicy = view(session).cacheStats?.() ?? {};
  const s = { ...stats, ...fromPolicy } as SessionStats & Partial<CacheCounters>;
  return {
    driftChecks: s.driftChecks ?? 0,
    triggers: s.triggers ?? 0,
    bytesMoved: s.bytesMoved ?? 0,
  };
}

/**
 * layers x KV heads, as three parallel [layer][kvHead] grids a policy fills in: `roles` ("full":
 * every token on the device; otherwise the policy's name for a compressed head, e.g.
 * "compressed", "anchor", "volatile"), `budget_tokens` (prompt rows kept on the device; null for a
 * full head or before a prompt) and `refreshed` (whether the head's device rows were refreshed
 * from host memory during the request).
 */
export interface HeadMapJson {
  object: "hc.head_map";
  cache: string;
  layers: number;
  kv_heads: number;
  roles: string[][];
  budget_tokens: (number | null)[][];
  refreshed: boolean[][];
}

function grid<T>(layers: number, kvHeads: number, value: T): T[][] {
  return Array.from({ length: layers }, () => Array.from({ length: kvHeads }, () => value));
}

/** The head map of the `full` policy: every head keeps every token and is never refreshed. */
export function fullHeadMap(layers: number, kvHeads: number): HeadMapJson {
  return {
    object: "hc.head_map",
    cache: "full",
    layers,
    kv_heads: kvHeads,
    roles: grid(layers, kvHeads, "full"),
    budget_tokens: grid<number | null>(layers, kvHeads, null),
    refreshed: grid(layers, kvHeads, false),
  };
}

/** The head map of a running (or finished) session, from its policy where the engine reports one. */
export function sessionHeadMap(
  session: object,
  cache: string,
  layers: number,
  kvHeads: number,
): HeadMapJson {
  const map = fullHeadMap(layers, kvHeads);
  map.cache = cache;
  const v = view(session);
  const heads = v.policy?.heads?.();
  const refreshed = v.cacheStats?.().refreshedMap;
  for (let l = 0; l < layers; l++) {
    for (let h = 0; h < kvHeads; h++) {
      const head = heads?.[l]?.[h];
      if (head) {
        map.roles[l][h] = head.role;
        map.budget_tokens[l][h] = head.budgetTokens;
      }
      map.refreshed[l][h] = refreshed?.[l]?.[h] === true;
    }
  }
  return map;
}

export interface HcStatsJson {
  cache: string;
  /** The budget the request asked for, or the default it got: a fraction of the prompt KV in
   * (0, 1] (1 for the full cache), or a per-head token budget above 1. */
  keep: number;
  /** The fraction the budget ran with: `keep`, or HeteroCache's floor when the profile cannot
   * go as low as `keep` (README, "Cache policies"). null: a token budget. */
  effective_keep: number | null;
  context_tokens: number;
  device_kv_bytes: number;
  prompt_tokens: number;
  completion_tokens: number;
  prefill_ms: number;
  decode_ms: number;
  decode_tokens_per_second: number;
  drift_checks: number;
  triggers: number;
  bytes_moved: number;
  heads?: HeadMapJson;
}

const round = (x: number, digits = 3) => Number(x.toFixed(digits));

/** Stats of one request while it runs (for stream chunks) or once it ended (with the summary). */
export function hcStats(
  cache: string,
  keep: number,
  session: { stats(): SessionStats },
  progress: { promptTokens: number; completionTokens: number; prefillMs: number; decodeMs: number },
  summary: GenerationSummary | null,
): HcStatsJson {
  const stats = session.stats();
  const c = cacheCounters(session, stats);
  const completion = summary?.completionTokens ?? progress.completionTokens;
  const decodeMs = summary?.decodeMs ?? progress.decodeMs;
  // Decode speed counts the steps after the first token, as GenerationSummary does.
  const live = completion > 1 && decodeMs > 0 ? ((completion - 1) * 1000) / decodeMs : 0;
  // Before the policy has begun (no prompt yet) its stats hold no keep: the asked one applies.
  const ran = view(session).cacheStats?.().keep;
  return {
    cache,
    keep,
    effective_keep: ran ?? (keep <= 1 ? keep : null),
    context_tokens: stats.capacity,
    device_kv_bytes: stats.deviceKvBytes,
    prompt_tokens: summary?.promptTokens ?? progress.promptTokens,
    completion_tokens: completion,
    prefill_ms: round(summary?.prefillMs ?? progress.prefillMs),
    decode_ms: round(decodeMs),
    decode_tokens_per_second: round(summary?.decodeTokensPerSecond ?? live, 2),
    drift_checks: c.driftChecks,
    triggers: c.triggers,
    bytes_moved: c.bytesMoved,
  };
}
