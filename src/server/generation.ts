/**
 * One request's trip through the engine: check it against the model (context, cache policy),
 * wait for a slot, continue a parked session that shares the prompt's prefix or run a fresh
 * one, and always give the session (parked for reuse, or freed) and the slot back, whether the
 * generation finished, failed, or the client went away.
 */
import {
  cacheOptions,
  DEFAULT_KEEP,
  type HeadProfile,
  isPolicyName,
  type LoadedModel,
} from "../engine/model.ts";
import type { GenerationSummary, Session } from "../engine/session.ts";
import { isHcError } from "../errors.ts";
import { ApiError } from "./errors.ts";
import type { PromptCache } from "./prompt_cache.ts";
import type { AdmissionQueue } from "./limits.ts";
import type { Metrics } from "./metrics.ts";
import {
  type CachePolicyName,
  checkKeepForPolicy,
  type GenerationRequest,
  NEEDS_PROFILE,
} from "./openai.ts";
import {
  cacheCounters,
  fullHeadMap,
  hcStats,
  type HcStatsJson,
  type HeadMapJson,
  sessionHeadMap,
} from "./stats.ts";

/** OpenAI's default for /v1/completions. */
export const COMPLETION_DEFAULT_MAX_TOKENS = 16;

/** A loaded model as the server serves it. */
export interface ServedModel {
  model: LoadedModel;
  /** The name clients use in `model`. */
  id: string;
  /** Most tokens (prompt + generated) one request may use. */
  contextTokens: number;
  /** The policy and budget a request gets when it names none. */
  defaultCache: CachePolicyName;
  defaultKeep: number | null;
  /** The head profile HeteroCache and its ablations use (null: those policies are refused). */
  profile: HeadProfile | null;
}

/** A request checked against the model, ready to run. */
export interface PreparedRequest {
  req: GenerationRequest;
  cache: CachePolicyName;
  /** The budget: a fraction in (0, 1], or a per-head token budget above 1. */
  keep: number;
  promptTokens: number;
  /** The prompt's token ids (what prompt reuse matches). */
  promptIds: number[];
  maxTokens: number;
  /** The session's size: what this request can use, so memory follows the request. */
  sessionTokens: number;
}

/** Checks what only the model can tell: the model name, the prompt's length, the policy. */
export function prepareRequest(served: ServedModel, req: GenerationRequest): PreparedRequest {
  if (req.model !== null && req.model !== served.id) {
    throw new ApiError(
      404,
      `the model '${req.model}' does not exist; this server serves '${served.id}'`,
      {
        type: "invalid_request_error",
        code: "model_not_found",
        param: "model",
      },
    );
  }
  const cache = req.cache ?? served.defaultCache;
  if (!isPolicyName(cache)) {
    throw new ApiError(500, `the server's default cache policy '${cache}' is not available`);
  }
  const asked = req.keep ?? (req.cache === null ? served.defaultKeep : null);
  checkKeepForPolicy(cache, asked);
  // Report the budget that applies, the engine's default included (full keeps everything: 1).
  const keep = asked ?? (cache === "full" ? 1 : DEFAULT_KEEP);
  if (NEEDS_PROFILE.has(cache) && !served.profile) {
    throw new ApiError(
      400,
      `the '${cache}' cache policy needs a head profile; start the server with --profile PATH`,
      {
        code: "profile_required",
        param: "cache",
      },
    );
  }
  let promptIds: number[];
  try {
    promptIds = served.model.tokenize(req.prompt);
  } catch (e) {
    if (isHcError(e, "E_BAD_REQUEST") || isHcError(e, "E_TEMPLATE")) {
      throw new ApiError(400, e.message, {
        code: "invalid_prompt",
        param: req.kind === "chat" ? "messages" : "prompt",
      });
    }
    throw e;
  }
  const promptTokens = promptIds.length;
  const ctx = served.contextTokens;
  if (promptTokens === 0) {
    throw new ApiError(400, "the prompt is empty and the model adds no BOS token", {
      code: "invalid_prompt",
      param: req.kind === "chat" ? "messages" : "prompt",
    });
  }
  if (promptTokens >= ctx) {
    throw new ApiError(
      400,
      `this model's maximum context length is ${ctx} tokens, but the prompt has ${promptTokens} tokens ` +
        "(and at least one token must be generated); shorten the prompt",
      { code: "context_length_exceeded", param: req.kind === "chat" ? "messages" : "prompt" },
    );
  }
  let maxTokens: number;
  if (req.maxTokens !== null) {
    if (promptTokens + req.maxTokens > ctx) {
      throw new ApiError(
        400,
        `this model's maximum context length is ${ctx} tokens, but ${
          promptTokens + req.maxTokens
        } were requested ` +
          `(${promptTokens} in the prompt, ${req.maxTokens} in the completion); reduce the prompt or max_tokens`,
        { code: "context_length_exceeded", param: "max_tokens" },
      );
    }
    maxTokens = req.maxTokens;
  } else {
    const room = ctx - promptTokens;
    maxTokens = req.kind === "completion" ? Math.min(COMPLETION_DEFAULT_MAX_TOKENS, room) : room;
  }
  return {
    req,
    cache,
    keep,
    promptTokens,
    promptIds,
    maxTokens,
    sessionTokens: Math.min(ctx, promptTokens + maxTokens),
  };
}

export interface StepUpdate {
  text: string;
  hc: HcStatsJson;
}

export interface Outcome {
  summary: GenerationSummary;
  hc: HcStatsJson;
}

export interface RunContext {
  served: ServedModel;
  queue: AdmissionQueue;
  metrics: Metrics;
  /** The sessions running now (for /metrics). */
  liveSessions: Set<Session>;
  /** Parked sessions that later requests may continue. */
  promptCache: PromptCache;
}

const profileIds = new WeakMap<HeadProfile, number>();
let nextProfileId = 1;

/** What a parked session must have been made with to serve a request: the same policy, budget
 * and profile (by identity: a server may be given another profile object). */
function reuseKey(served: ServedModel, p: PreparedRequest): string {
  let profile = 0;
  if (NEEDS_PROFILE.has(p.cache) && served.profile) {
    profile = profileIds.get(served.profile) ?? nextProfileId++;
    profileIds.set(served.profile, profile);
  }
  return `${p.cache}/${p.keep}/${profile}`;
}

/**
 * Takes a slot and opens the session; throws before anything streams (429, 499, 503), so those
 * failures are real HTTP statuses. The caller iterates `updates()` and must call `close()` when
 * done with it in any way (close is idempotent, and also runs when `updates()` ends).
 */
export async function startGeneration(
  ctx: RunContext,
  p: PreparedRequest,
  signal: AbortSignal,
): Promise<Generation> {
  const release = await ctx.queue.acquire(signal);
  const reuse = p.req.cachePrompt && ctx.promptCache.enabled;
  const key = reuseKey(ctx.served, p);
  let session: Session;
  let reused = 0;
  try {
    const taken = reuse ? ctx.promptCache.take(key, p.promptIds) : null;
    if (taken) {
      session = taken.session;
      reused = taken.reused;
      // As large as a fresh session for this request would be (its caches grow as needed).
      session.reserve(p.sessionTokens);
    } else {
      session = ctx.served.model.session({
        ...cacheOptions({ cache: p.cache, keep: p.keep, profile: ctx.served.profile }),
        contextTokens: p.sessionTokens,
      });
    }
  } catch (e) {
    release();
    throw e;
  }
  return new Generation(ctx, p, session, release, signal, reuse ? key : null, reused);
}

export class Generation {
  readonly #ctx: RunContext;
  readonly #p: PreparedRequest;
  readonly #session: Session;
  readonly #release: () => void;
  readonly #signal: AbortSignal;
  /** The prompt-cache key to park the session under when done (null: free it). */
  readonly #parkKey: string | null;
  /** Prompt tokens the session already holds (its context was rewound to them). */
  readonly #reused: number;
  readonly #progress: {
    promptTokens: number;
    completionTokens: number;
    prefillMs: number;
    decodeMs: number;
  };
  #summary: GenerationSummary | null = null;
  /** The generation threw (a failure, not the client going away). */
  #failed = false;
  #closed = false;

  constructor(
    ctx: RunContext,
    p: PreparedRequest,
    session: Session,
    release: () => void,
    signal: AbortSignal,
    parkKey: string | null = null,
    reused = 0,
  ) {
    this.#ctx = ctx;
    this.#p = p;
    this.#session = session;
    this.#release = release;
    this.#signal = signal;
    this.#parkKey = parkKey;
    this.#reused = reused;
    this.#progress = {
      promptTokens: p.promptTokens,
      completionTokens: 0,
      prefillMs: 0,
      decodeMs: 0,
    };
    ctx.liveSessions.add(session);
  }

  /** The pieces of text as they come, each with the request's stats so far; returns the outcome. */
  async *updates(): AsyncGenerator<StepUpdate, Outcome, undefined> {
    const p = this.#p;
    const progress = this.#progress;
    const t0 = performance.now();
    let tFirst = 0;
    const cont = this.#reused > 0;
    const it = this.#session.generate(cont ? p.promptIds.slice(this.#reused) : p.req.prompt, {
      continue: cont,
      ...p.req.sampling,
      maxTokens: p.maxTokens,
      stop: p.req.stop,
      signal: this.#signal,
    });
    let finished = false;
    try {
      for (;;) {
        const r = await it.next();
        if (r.done) {
          finished = true;
          this.#summary = r.value;
          break;
        }
        if (r.value.token >= 0) {
          progress.completionTokens++;
          const now = performance.now();
          if (progress.completionTokens === 1) {
            tFirst = now;
            progress.prefillMs = now - t0;
          }
          progress.decodeMs = now - tFirst;
        }
        if (r.value.text === "") continue;
        yield { text: r.value.text, hc: hcStats(p.cache, p.keep, this.#session, progress, null) };
      }
      const hc = hcStats(p.cache, p.keep, this.#session, progress, this.#summary);
      const c = this.#ctx.served.model.config;
      hc.heads = sessionHeadMap(this.#session, p.cache, c.nLayers, c.nKvHeads);
      return { summary: this.#summary, hc };
    } catch (e) {
      this.#failed = !this.#signal.aborted && !isHcError(e, "E_ABORTED");
      throw e;
    } finally {
      // Returned early (client gone): let the engine's generator run its own cleanup first.
      if (!finished) await it.return(undefined as unknown as GenerationSummary).catch(() => {});
      this.close();
    }
  }

  /** Records the request, frees its session (device KV memory) and its slot. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    const s = this.#summary;
    const progress = this.#progress;
    try {
      this.#ctx.metrics.recordGeneration({
        promptTokens: s?.promptTokens ??
          (progress.completionTokens > 0 ? progress.promptTokens : 0),
        completionTokens: s?.completionTokens ?? progress.completionTokens,
        prefillMs: s?.prefillMs ?? progress.prefillMs,
        decodeMs: s?.decodeMs ?? progress.decodeMs,
        decodeTokensPerSecond: s?.decodeTokensPerSecond ?? 0,
        aborted: !this.#failed && (s === null || s.finishReason === "abort"),
        failed: this.#failed,
        counters: cacheCounters(this.#session, this.#session.stats()),
      });
    } finally {
      this.#ctx.liveSessions.delete(this.#session);
      if (s) this.#ctx.promptCache.noteCached(s.cachedTokens);
      if (this.#parkKey !== null && !this.#failed) {
        this.#ctx.promptCache.park(this.#parkKey, this.#session);
      } else this.#session[Symbol.dispose]();
      this.#release();
    }
  }
}

/**
 * The head map of a policy for this model before any request: `full` has every head full. A
 * compressing policy's roles depend on its profile and the prompt; a request's `hc.heads` shows them.
 */
export function headMap(served: ServedModel, cache: CachePolicyName): HeadMapJson {
  const c = served.model.config;
  const map = fullHeadMap(c.nLayers, c.nKvHeads);
  map.cache = cache;
  // Before a request runs, roles come from the policy alone (budgets depend on the prompt).
  if (cache === "snapkv" || cache === "streaming") {
    map.roles = map.roles.map((layer) => layer.map(() => "compressed"));
  } else if (NEEDS_PROFILE.has(cache) && served.profile) {
    map.roles = served.profile.layers.map((l) => [...l.roles]);
  }
  return map;
}
