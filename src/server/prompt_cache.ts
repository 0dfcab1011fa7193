/**
 * Prompt reuse (llama-server's `cache_prompt`): a finished request's session is parked with its
 * context, and a later request whose tokens start with that context (the longest common prefix
 * over the parked sessions) continues it instead of prefilling everything again. Parked
 * sessions are bounded by count and by device KV bytes, the least recently used evicted first;
 * a taken session leaves the cache, so two requests never share one. Sessions only match under
 * the same key (cache policy, budget, profile): their caches were built under those.
 */
import type { Session } from "../engine/session.ts";

interface Parked {
  key: string;
  session: Session;
  /** The session's context when parked (its KV). */
  tokens: number[];
  bytes: number;
  /** Park order (higher: more recently used). */
  used: number;
}

export interface PromptCacheStats {
  sessions: number;
  deviceKvBytes: number;
  /** Requests that continued a parked session. */
  hits: number;
  /** Requests that looked and found nothing to continue. */
  misses: number;
  /** Prompt tokens not prefilled thanks to reuse. */
  cachedTokens: number;
  /** Sessions freed to stay within the bounds (or too large to park). */
  evictions: number;
}

export interface PromptCacheOptions {
  /** Most parked sessions (0: no reuse). */
  maxSessions: number;
  /** Most device KV bytes all parked sessions hold together. */
  maxBytes: number;
}

/** Default bounds: a few conversations, at most 1 GiB of device KV. */
export const DEFAULT_PROMPT_CACHE: PromptCacheOptions = { maxSessions: 4, maxBytes: 2 ** 30 };

export class PromptCache implements Disposable {
  readonly maxSessions: number;
  readonly maxBytes: number;
  readonly #parked: Parked[] = [];
  #clock = 0;
  #closed = false;
  #stats = { hits: 0, misses: 0, cachedTokens: 0, evictions: 0 };

  constructor(opts: PromptCacheOptions = DEFAULT_PROMPT_CACHE) {
    if (!Number.isSafeInteger(opts.maxSessions) || opts.maxSessions < 0) {
      throw new RangeError(`maxSessions must be an integer >= 0, got ${opts.maxSessions}`);
    }
    if (!(opts.maxBytes >= 0)) throw new RangeError(`maxBytes must be >= 0, got ${opts.maxBytes}`);
    this.maxSessions = opts.maxSessions;
    this.maxBytes = opts.maxBytes;
  }

  get enabled(): boolean {
    return this.maxSessions > 0 && this.maxBytes > 0 && !this.#closed;
  }

  /**
   * The parked session under `key` whose context shares the longest prefix with `prompt`,
   * rewound to that prefix (at most prompt.length - 1 tokens, so at least one is prefilled);
   * it leaves the cache. null: none (start fresh).
   */
  take(key: string, prompt: readonly number[]): {
    session: Session;
    reused: number;
  } | null {
    let best: Parked | null = null;
    let bestLen = 0;
    for (const p of this.#parked) {
      if (p.key !== key) continue;
      const n = commonPrefix(p.tokens, prompt);
      // Most of the parked conversation must go on (as llama-server's slot similarity):
      // sharing a BOS or a system line is not worth another conversation's context.
      if (n > bestLen && n >= p.tokens.length / 2) {
        best = p;
        bestLen = n;
      }
    }
    const reused = Math.min(bestLen, prompt.length - 1);
    if (!best || reused < 1) {
      this.#stats.misses++;
      return null;
    }
    this.#parked.splice(this.#parked.indexOf(best), 1);
    if (!best.session.rewind(reused)) {
      // The policy cannot go back that far (into a compressed prompt): start fresh.
      best.session[Symbol.dispose]();
      this.#stats.evictions++;
      this.#stats.misses++;
      return null;
    }
    this.#stats.hits++;
    return { session: best.session, reused };
  }

  /** Counts prompt tokens a continued session did not prefill again (what usage reports). */
  noteCached(tokens: number): void {
    this.#stats.cachedTokens += tokens;
  }

  /** Parks `session` (it must not be generating) or, when it has no context or cannot stay
   * within the bounds, disposes it; evicts the least recently used over the bounds. */
  park(key: string, session: Session): void {
    const tokens = session.context();
    const bytes = session.stats().deviceKvBytes;
    if (
      !this.enabled || session.generating || tokens.length === 0 || bytes > this.maxBytes
    ) {
      session[Symbol.dispose]();
      if (this.enabled && tokens.length > 0) this.#stats.evictions++;
      return;
    }
    this.#parked.push({ key, session, tokens, bytes, used: ++this.#clock });
    this.#parked.sort((a, b) => a.used - b.used);
    let total = this.#parked.reduce((s, p) => s + p.bytes, 0);
    while (this.#parked.length > this.maxSessions || total > this.maxBytes) {
      const old = this.#parked.shift()!;
      total -= old.bytes;
      old.session[Symbol.dispose]();
      this.#stats.evictions++;
    }
  }

  stats(): PromptCacheStats {
    return {
      sessions: this.#parked.length,
      deviceKvBytes: this.#parked.reduce((s, p) => s + p.bytes, 0),
      ...this.#stats,
    };
  }

  /** Frees every parked session. */
  clear(): void {
    for (const p of this.#parked.splice(0)) p.session[Symbol.dispose]();
  }

  /** Frees every parked session; later parks free theirs at once. */
  [Symbol.dispose](): void {
    this.#closed = true;
    this.clear();
  }
}

function commonPrefix(a: readonly number[], b: readonly number[]): number {
  const n = Math.min(a.length, b.length);
  let i = 0;
  while (i < n && a[i] === b[i]) i++;
  return i;
}
