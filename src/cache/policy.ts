/**
 * The one interface through which the engine drives a KV-cache policy. The engine does not know
 * which policy runs; the model forward pass only sees the per-layer caches a policy hands it.
 *
 * A generation goes: begin(L, maxNew) → prefill chunks (advance(B) before each) → endPrefill()
 * (the policy may compress: select rows, build smaller caches, keep the full KV in host memory)
 * → decode steps (advance(1), the step waiting for transferWait(), then afterStep()).
 * A long prompt may instead go layer by layer (src/engine/layered_prefill.ts): begin(L, maxNew,
 * "layered") → for each layer l in order: the whole prompt through layer l into
 * prefillLayer(l), then endPrefillLayer(l) (a compressing policy keeps that layer's rows and
 * frees or reuses its full KV) → advance(L) → endPrefill().
 * A continued conversation then goes: extend(n, maxNew) → the n new tokens (prefill chunks when
 * `appendByPrefill`, else one decode step each, exactly as generated tokens) → decode steps.
 */
import { HcError } from "../errors.ts";
import type { KvLayerCache } from "./kv_layer.ts";
import type { Captures } from "../model/forward.ts";
import type { HeadRole } from "./profile/profile.ts";

export const POLICY_NAMES = [
  "full",
  "snapkv",
  "streaming",
  "heterocache",
  "per-step",
  "fixed-interval",
] as const;
export type PolicyName = (typeof POLICY_NAMES)[number];

/** Whether `name` is one of POLICY_NAMES (the one check of a policy name from outside). */
export function isPolicyName(name: unknown): name is PolicyName {
  return (POLICY_NAMES as readonly unknown[]).includes(name);
}

/** `name` as a PolicyName, or E_BAD_REQUEST naming the choices. */
export function checkPolicyName(name: unknown): PolicyName {
  if (!isPolicyName(name)) {
    throw new HcError(
      "E_BAD_REQUEST",
      `unknown cache policy "${name}"; use one of ${POLICY_NAMES.join(", ")}`,
    );
  }
  return name;
}

/** A policy's state for a session file: plain JSON and byte blobs (device rows, host rows). */
export interface PolicyState {
  state: Record<string, unknown>;
  blobs: Uint8Array[];
}

/** A session file's policy state that does not hold together (E_SESSION_FILE). */
export function badState(what: string): HcError {
  return new HcError("E_SESSION_FILE", `the session file's cache state is invalid: ${what}`);
}

/** `v` as an integer in [min, max], or E_SESSION_FILE naming `what`. */
export function stateInt(v: unknown, what: string, min = 0, max = 2 ** 31): number {
  if (!Number.isSafeInteger(v) || (v as number) < min || (v as number) > max) {
    throw badState(`${what} is ${JSON.stringify(v)}`);
  }
  return v as number;
}

/** `v` as an array of `n` integers (or of any length when n is null). */
export function stateInts(v: unknown, what: string, n: number | null, max = 2 ** 31): number[] {
  if (!Array.isArray(v) || (n !== null && v.length !== n)) throw badState(`${what} is malformed`);
  return v.map((x, i) => stateInt(x, `${what}[${i}]`, 0, max));
}

/** Device KV bytes and retrieval accounting (docs/algorithm.md §10.4), per generation. */
export interface CacheStats {
  policy: PolicyName;
  /** Device bytes of the KV pools in use now (K and V). */
  deviceKvBytes: number;
  /** Most device KV bytes held at once while the prompt went in (the prefill caches and the
   * caches made from them). */
  prefillPeakKvBytes: number;
  deviceKvBytesByRole: { full: number; compressed: number };
  /** Bytes the same prompt and generation would take with every head full. */
  fullKvBytes: number;
  promptTokens: number;
  /** The keep (fraction of prompt KV) this generation's budget ran with: the one asked for, or
   * HeteroCache's floor when the profile cannot go that low. null: a token budget, or no prompt. */
  keep: number | null;
  decodeSteps: number;
  /** Decode steps after which the trigger was evaluated (every step for the coverage trigger,
   * whose statistic the decode attention computes; every Nth for the drift test). */
  stepsWithCheck: number;
  driftChecks: number;
  triggers: number;
  refreshedHeads: number;
  rowsMoved: number;
  bytesMoved: number;
  /** Decode steps that waited for, or carried, a host→device transfer. */
  stepsWithTransfer: number;
  /** Refreshes that landed by a gather straight into the device rows (a CPU device), not by a
   * staged copy (heterocache/retrieval.ts). */
  directLandings: number;
  /** triggers / driftChecks. */
  triggerRate: number;
  /** stepsWithTransfer / decodeSteps. */
  stepRetrievalRate: number;
  /** Time spent in drift checks and refresh selection (device round trips), ms. */
  monitorMs: number;
  /** Time the decode loop waited for refresh work on the host (a free staging slot, or the
   * gather itself in compat mode), ms. Device-side waits for a landing copy are in stepMs. */
  transferWaitMs: number;
  /** Decode steps' device time, ms (filled in by the session; transfer waits included). */
  stepMs: number;
  /** Heads refreshed during the current generation, per layer (for the playground's map). */
  refreshedMap: boolean[][];
}

/**
 * A head's role in maps and reports: its profile role under HeteroCache and its ablations;
 * "full" or "compressed" under the policies that treat every head alike.
 */
export type CacheHeadRole = HeadRole | "full" | "compressed";

/** Per-head description for maps and reports. */
export interface HeadInfo {
  role: CacheHeadRole;
  /** Rows of prompt KV kept on the device (null before a prompt). */
  budgetTokens: number | null;
}

/** How a prompt goes in: chunks through every layer, or the whole prompt one layer at a time. */
export type PrefillOrder = "chunked" | "layered";

export interface CachePolicy extends Disposable {
  readonly name: PolicyName;
  /** Queries of the last `captureWindow` prompt positions the policy needs (0: none). */
  readonly captureWindow: number;
  /** Whether decode steps must capture their q/k/v for afterStep. */
  readonly captureSteps: boolean;
  /** The caches the next step reads and appends to. */
  readonly caches: readonly KvLayerCache[];
  /** Whether continuation tokens may go in as prefill chunks: every head holds every row at
   * its position (the prefill attention's layout). Otherwise they go in as decode steps. */
  readonly appendByPrefill: boolean;
  /** Starts a generation of `promptTokens` prompt tokens and up to `maxNewTokens` more, its
   * prompt fed in chunks through every layer, or layer by layer. */
  begin(promptTokens: number, maxNewTokens: number, prefill?: PrefillOrder): void;
  /** Layer-by-layer prefill: the cache layer `layer`'s whole prompt goes into, every head
   * holding row = position, lengths 0 (the caller counts them up chunk by chunk). */
  prefillLayer(layer: number): KvLayerCache;
  /** Layer-by-layer prefill: layer `layer` holds the whole prompt (its queries are captured);
   * the policy keeps what it keeps of it before the next layer reuses the room. */
  endPrefillLayer(layer: number, captures: Captures): Promise<void>;
  /** Continues the current context: makes room on every head for `tokens` more context tokens
   * and up to `maxNewTokens` generated after them (rows already held stay as they are). */
  extend(tokens: number, maxNewTokens: number): Promise<void>;
  /** Forgets every position from `positions` on (a conversation rewound to a shared prefix);
   * false, with nothing changed, when the policy cannot (a compressing policy keeps its prompt
   * selection, so it rewinds only tokens after the prompt). */
  rewind(positions: number): boolean;
  /** Sets every head's length to count `tokens` more tokens (call before each step). */
  advance(tokens: number): void;
  /** After the whole prompt is in the caches: compress as the policy does. */
  endPrefill(captures: Captures): Promise<void>;
  /** A transfer-queue value the next step must wait for (0n: none), once the refreshes due
   * at that step are submitted. */
  transferWait(): Promise<bigint>;
  /** After each decode step (its captures hold the step's q/k/v when captureSteps). */
  afterStep(captures: Captures): Promise<void>;
  /** Lands every refresh in flight now, ahead of its step, and waits for it: before caches move
   * or are saved, and before a continued turn's last token (so the answer reads the rows its
   * question's tokens asked for). */
  landRefreshes(): Promise<void>;
  /** The state a session file keeps (after every refresh has landed); statistics restart. */
  saveState(): Promise<PolicyState>;
  /** Takes a saved state in place of the current one (the caches are made anew). */
  loadState(s: PolicyState): void;
  stats(): CacheStats;
  heads(): HeadInfo[][];
}

export function emptyStats(policy: PolicyName, nLayers: number, nKvHeads: number): CacheStats {
  return {
    policy,
    deviceKvBytes: 0,
    prefillPeakKvBytes: 0,
    deviceKvBytesByRole: { full: 0, compressed: 0 },
    fullKvBytes: 0,
    promptTokens: 0,
    keep: null,
    decodeSteps: 0,
    stepsWithCheck: 0,
    driftChecks: 0,
    triggers: 0,
    refreshedHeads: 0,
    rowsMoved: 0,
    bytesMoved: 0,
    stepsWithTransfer: 0,
    directLandings: 0,
    triggerRate: 0,
    stepRetrievalRate: 0,
    monitorMs: 0,
    transferWaitMs: 0,
    stepMs: 0,
    refreshedMap: Array.from({ length: nLayers }, () => Array(nKvHeads).fill(false)),
  };
}

/** Fills the derived rates of a stats record. */
export function withRates(s: CacheStats): CacheStats {
  s.triggerRate = s.driftChecks > 0 ? s.triggers / s.driftChecks : 0;
  s.stepRetrievalRate = s.decodeSteps > 0 ? s.stepsWithTransfer / s.decodeSteps : 0;
  return s;
}
