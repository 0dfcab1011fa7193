/**
 * Session: one conversation's KV state on the device, and the decode loop that streams pieces.
 * Device work of every session goes through the model's DeviceQueue, one step at a time, so
 * several sessions interleave fairly on one device queue.
 */
import { HcError } from "../errors.ts";
import { Sampler, type SamplingOptions } from "../model/sampler.ts";
import type { Captures, ForwardState } from "../model/forward.ts";
import type { CachePolicy, CacheStats, PrefillOrder } from "../cache/policy.ts";
import type { LoadedModel, Prompt, SessionOptions } from "./model.ts";
import { encodeSessionFile, profileHash } from "./session_file.ts";
import { StopMatcher } from "./stops.ts";
import type { KvLayerCache } from "../cache/kv_layer.ts";
import {
  choosePrefillOrder,
  prefillByLayer,
  type PrefillLayerProgress,
} from "./layered_prefill.ts";

export interface GenerateOptions extends SamplingOptions {
  /** Most tokens to generate. Default 256. */
  maxTokens?: number;
  /** Generation ends before the first of these strings; it is not emitted. */
  stop?: readonly string[];
  signal?: AbortSignal;
  /** Keep generating past end-of-generation tokens. */
  ignoreEos?: boolean;
  /** Called with (done, total) prompt tokens while a long prompt is prefilled; a prompt that
   * goes layer by layer counts its tokens once per layer and says which layer. */
  onPrefillProgress?: (done: number, total: number, layer?: PrefillLayerProgress) => void;
  /**
   * How the prompt goes in: "chunked" (chunks through every layer), "layered" (the whole prompt
   * one layer at a time, so a compressing policy holds one layer's full KV at a time: see
   * engine/layered_prefill.ts), or "auto" (default: by prompt length, policy and free device
   * memory). A continuation always goes in as today.
   */
  prefill?: "auto" | PrefillOrder;
  /**
   * Continue the conversation: the prompt is appended after the session's context (every
   * earlier prompt and the tokens generated for it) and only it is prefilled. Text is encoded
   * without a BOS token; chat messages are refused (pass the new turn as text or token ids).
   * A session without a context starts fresh, as without this flag.
   */
  continue?: boolean;
}

export interface Piece {
  /** Text completed by this step (may be "" while a UTF-8 sequence or a stop string is pending). */
  text: string;
  /** The token generated at this step. */
  token: number;
}

export type FinishReason = "stop" | "length" | "abort";

export interface GenerationSummary {
  finishReason: FinishReason;
  /** Tokens this call prefilled (a continuation: the new turn, plus the last generated token
   * when it was not fed back yet). */
  promptTokens: number;
  /** Context tokens reused from earlier turns (0 for a fresh start). */
  cachedTokens: number;
  completionTokens: number;
  text: string;
  prefillMs: number;
  decodeMs: number;
  /** Generated tokens per second of decode time. */
  decodeTokensPerSecond: number;
}

export interface SessionStats {
  positions: number;
  capacity: number;
  deviceKvBytes: number;
  generations: number;
  promptTokens: number;
  completionTokens: number;
  decodeTokensPerSecond: number;
}

/** How many prompt tokens one prefill submission takes (bounds activation memory). */
const PREFILL_CHUNK_TOKENS = 256;

export class Session implements Disposable {
  readonly model: LoadedModel;
  readonly policy: CachePolicy;
  #state: ForwardState;
  /** Tokens whose KV is in the caches, in order. */
  #tokens: number[] = [];
  /** Context tokens generated but not fed back yet (at most the last one). */
  #pending: number[] = [];
  /** Whether #tokens and the caches agree (false after a failure or abort mid-step). */
  #contextOk = false;
  #busy = false;
  #disposed = false;
  #totals = { generations: 0, promptTokens: 0, completionTokens: 0, decodeMs: 0 };
  #last: GenerationSummary | null = null;
  /** Device step time of the current generation's decode steps (transfer waits included). */
  #stepMs = 0;

  /** What the session was made with (a session file records it). */
  readonly options: SessionOptions;

  constructor(
    model: LoadedModel,
    state: ForwardState,
    policy: CachePolicy,
    options: SessionOptions = {},
  ) {
    this.model = model;
    this.#state = state;
    this.policy = policy;
    this.options = options;
  }

  /**
   * Writes the context to `path` (session file: tokens, device caches, host store, policy state,
   * the model's identity and the profile's hash; statistics are not kept). `model.restore(path)`
   * gives a session that continues exactly as this one would.
   */
  async save(path: string): Promise<void> {
    if (this.#busy) {
      throw new HcError("E_BUSY", "this session is already generating; use another session");
    }
    if (!this.#contextOk || this.#tokens.length === 0) {
      throw new HcError("E_BAD_REQUEST", "the session has no context to save; generate first");
    }
    this.#busy = true;
    try {
      const saved = await this.model.queue.run(() => this.policy.saveState());
      const { profile, ...options } = this.options as SessionOptions & { profile?: unknown };
      const header = {
        model: { ...this.model.identity(), vocabSize: this.model.config.vocabSize },
        options: { ...options, contextTokens: this.#state.capacity },
        profileHash: profile ? await profileHash(profile as never) : null,
        tokens: this.#tokens,
        pending: this.#pending,
        policy: saved.state,
      };
      const bytes = await encodeSessionFile(header, saved.blobs);
      // Whole or not at all: a crash mid-write leaves the old file.
      const tmp = `${path}.${crypto.randomUUID().slice(0, 8)}.tmp`;
      try {
        await Deno.writeFile(tmp, bytes);
        await Deno.rename(tmp, path);
      } catch (e) {
        await Deno.remove(tmp).catch(() => {});
        throw new HcError("E_IO", `cannot write ${path}: ${(e as Error).message}`);
      }
    } finally {
      this.#busy = false;
    }
  }

  /** @internal model.restore: takes a checked session file's tokens and cache state. */
  async loadSaved(
    header: Record<string, unknown>,
    blobs: Uint8Array[],
  ): Promise<void> {
    const vocab = this.model.config.vocabSize;
    const ids = (v: unknown, what: string, max: number) => {
      if (
        !Array.isArray(v) || v.length > max ||
        !v.every((t) => Number.isInteger(t) && t >= 0 && t < vocab)
      ) {
        throw new HcError("E_SESSION_FILE", `the session file's ${what} are malformed`);
      }
      return v as number[];
    };
    const tokens = ids(header.tokens, "tokens", this.#state.capacity);
    const pending = ids(header.pending, "pending tokens", 1);
    if (tokens.length === 0 || tokens.length + pending.length > this.#state.capacity) {
      throw new HcError("E_SESSION_FILE", "the session file's context does not fit its size");
    }
    const state = (header.policy ?? {}) as Record<string, unknown>;
    this.#busy = true;
    try {
      await this.model.queue.run(() => {
        this.policy.loadState({ state, blobs });
        return Promise.resolve();
      });
      this.#state.reset();
      this.#state.seek(tokens.length);
      this.#tokens = [...tokens];
      this.#pending = [...pending];
      this.#contextOk = true;
    } finally {
      this.#busy = false;
    }
  }

  /** Whether a generation is running (or suspended between its pieces). */
  get generating(): boolean {
    return this.#busy;
  }

  /** The summary of the last finished generation. */
  get lastGeneration(): GenerationSummary | null {
    return this.#last;
  }

  /** Tokens of the prompt as the model will see it (chat messages rendered with its template). */
  tokenize(prompt: Prompt): number[] {
    return this.model.tokenize(prompt);
  }

  /** The conversation so far (every prompt and generated token a continuation builds on);
   * empty when there is none to continue. */
  context(): number[] {
    return this.#contextOk ? [...this.#tokens, ...this.#pending] : [];
  }

  /**
   * Keeps only the first `tokens` tokens of the context (a conversation that goes on from a
   * shared prefix). Returns false, with nothing changed, when the cache policy cannot forget
   * those positions (a compressing policy keeps its first prompt) or there is no context.
   */
  rewind(tokens: number): boolean {
    if (this.#busy) {
      throw new HcError("E_BUSY", "this session is already generating; use another session");
    }
    const forwarded = this.#tokens.length;
    if (!this.#contextOk || !Number.isInteger(tokens) || tokens < 1) return false;
    if (tokens > forwarded + this.#pending.length) return false;
    if (tokens >= forwarded) {
      this.#pending = this.#pending.slice(0, tokens - forwarded);
      return true;
    }
    if (!this.policy.rewind(tokens)) return false;
    this.#state.seek(tokens);
    this.#tokens.length = tokens;
    this.#pending = [];
    return true;
  }

  /** Lets the session hold `tokens` tokens (prompt + generated) from now on, up to the model's
   * context length; the caches grow when a continuation needs the room. Never shrinks. */
  reserve(tokens: number): void {
    if (this.#busy) {
      throw new HcError("E_BUSY", "this session is already generating; use another session");
    }
    this.#state.reserve(tokens);
  }

  /** Tokens of a continuation prompt: no BOS; chat messages are not a turn on their own. */
  #continuation(prompt: Prompt): number[] {
    if (typeof prompt === "string") {
      return this.model.tokenizer.encode(prompt, { addSpecial: false });
    }
    if (prompt.length > 0 && typeof prompt[0] !== "number") {
      throw new HcError(
        "E_BAD_REQUEST",
        "a continuation takes text or token ids; render the new chat turn with its template",
      );
    }
    return this.model.tokenize(prompt);
  }

  /**
   * Streams the continuation of `prompt`. Each call starts from an empty cache (the session's
   * device memory is reused), unless `continue` appends to the context. Aborting through
   * `signal` ends the stream with finishReason "abort"; the session stays usable. A prompt
   * that does not fit is E_CONTEXT_FULL, thrown before anything changes.
   */
  async *generate(
    prompt: Prompt,
    opts: GenerateOptions = {},
  ): AsyncGenerator<Piece, GenerationSummary> {
    if (this.#disposed) throw new HcError("E_BAD_REQUEST", "session was disposed");
    if (this.#busy) {
      throw new HcError("E_BUSY", "this session is already generating; use another session");
    }
    const maxTokens = opts.maxTokens ?? 256;
    if (!Number.isSafeInteger(maxTokens) || maxTokens < 0) {
      throw new HcError(
        "E_BAD_REQUEST",
        `maxTokens must be a non-negative integer, got ${maxTokens}`,
      );
    }
    const sampler = new Sampler(opts);
    const greedy = sampler.options.temperature <= 0 && sampler.options.repeatPenalty === 1 &&
      sampler.options.presencePenalty === 0 && sampler.options.frequencyPenalty === 0;
    const cont = opts.continue === true && this.#tokens.length > 0;
    if (cont && !this.#contextOk) {
      throw new HcError(
        "E_BAD_REQUEST",
        "the session's context was lost (a turn failed or was aborted during its prompt); " +
          "start over without continue",
      );
    }
    const used = cont ? this.#tokens.length : 0;
    const fresh = cont ? this.#continuation(prompt) : this.tokenize(prompt);
    const promptTokens = cont ? [...this.#pending, ...fresh] : fresh;
    if (promptTokens.length === 0) {
      throw new HcError(
        "E_BAD_REQUEST",
        cont ? "the continuation is empty" : "the prompt is empty and the model adds no BOS token",
      );
    }
    const capacity = this.#state.capacity;
    if (used + promptTokens.length >= capacity) {
      // Thrown before anything changes: the context stays as it was.
      throw new HcError(
        "E_CONTEXT_FULL",
        `the prompt needs ${promptTokens.length} tokens and one to generate; the session holds ` +
          `${capacity} (prompt + generated): ${used} used, ${capacity - used} left`,
      );
    }
    // Checked before anything changes, as the context's size is.
    const order = cont ? "chunked" : this.#prefillOrder(promptTokens.length, opts.prefill);
    this.#busy = true;
    const decoder = this.model.tokenizer.createDecoder();
    const stops = new StopMatcher(opts.stop ?? []);
    let text = "";
    let generated = 0;
    let finish: FinishReason = "length";
    let prefillMs = 0;
    let decodeMs = 0;
    try {
      const maxNew = Math.min(maxTokens, capacity - used - promptTokens.length);
      const want = greedy ? "argmax" : "logits";
      const t0 = performance.now();
      let out: number | Float32Array;
      if (cont) {
        await this.model.queue.run(() => this.policy.extend(promptTokens.length, maxNew));
        this.#contextOk = false;
        this.#pending = [];
        out = await this.#append(promptTokens, want, opts.signal, opts.onPrefillProgress);
      } else {
        this.#contextOk = false;
        this.#state.reset();
        this.#tokens = [];
        this.#pending = [];
        this.policy.begin(promptTokens.length, maxNew, order);
        this.#stepMs = 0;
        out = order === "layered"
          ? await this.#prefillByLayer(promptTokens, want, opts.signal, opts.onPrefillProgress)
          : await this.#prefill(promptTokens, want, opts.signal, opts.onPrefillProgress);
      }
      this.#contextOk = true;
      let next = this.#choose(out, sampler);
      prefillMs = performance.now() - t0;
      const t1 = performance.now();
      while (generated < maxTokens) {
        if (opts.signal?.aborted) {
          finish = "abort";
          break;
        }
        if (!opts.ignoreEos && this.model.tokenizer.isEog(next)) {
          finish = "stop";
          break;
        }
        generated++;
        this.#pending = [next];
        const piece = stops.push(decoder.push(next));
        text += piece;
        yield { text: piece, token: next };
        if (stops.stopped) {
          finish = "stop";
          break;
        }
        if (generated >= maxTokens) break;
        if (this.#state.position >= capacity) {
          finish = "length";
          break;
        }
        this.#contextOk = false;
        next = this.#choose(await this.#forward(this.#pending, want, "decode"), sampler);
        this.#pending = [];
        this.#contextOk = true;
      }
      decodeMs = performance.now() - t1;
      const tail = finish === "abort" ? "" : stops.push(decoder.flush()) + stops.flush();
      if (tail) {
        text += tail;
        yield { text: tail, token: -1 };
      }
    } finally {
      this.#busy = false;
    }
    const summary: GenerationSummary = {
      finishReason: finish,
      promptTokens: promptTokens.length,
      cachedTokens: used,
      completionTokens: generated,
      text,
      prefillMs,
      decodeMs,
      decodeTokensPerSecond: generated > 1 && decodeMs > 0
        ? ((generated - 1) * 1000) / decodeMs
        : 0,
    };
    this.#totals.generations++;
    this.#totals.promptTokens += summary.promptTokens;
    this.#totals.completionTokens += generated;
    this.#totals.decodeMs += decodeMs;
    this.#last = summary;
    return summary;
  }

  /** Collects a whole generation: the text and its summary. */
  async complete(prompt: Prompt, opts: GenerateOptions = {}): Promise<GenerationSummary> {
    const it = this.generate(prompt, opts);
    for (;;) {
      const r = await it.next();
      if (r.done) return r.value;
    }
  }

  /** Feeds the prompt in chunks; returns what `want` asks of its last position. */
  async #prefill(
    tokens: readonly number[],
    want: "argmax" | "logits",
    signal?: AbortSignal,
    onProgress?: (done: number, total: number) => void,
  ): Promise<number | Float32Array> {
    const window = Math.min(this.policy.captureWindow, tokens.length);
    if (window > 0) this.#state.reservePrefillCapture(window);
    const captureFrom = window > 0 ? tokens.length - window : undefined;
    let out: number | Float32Array = -1;
    for (let i = 0; i < tokens.length; i += PREFILL_CHUNK_TOKENS) {
      if (signal?.aborted) throw new HcError("E_ABORTED", "generation aborted during prefill");
      const chunk = tokens.slice(i, i + PREFILL_CHUNK_TOKENS);
      const last = i + PREFILL_CHUNK_TOKENS >= tokens.length;
      if (last) {
        out = await this.#forward(chunk, want, "prefill", captureFrom);
      } else {
        await this.model.queue.run(() => {
          this.policy.advance(chunk.length);
          return this.#state.eval(chunk, "none", {
            caches: this.policy.caches,
            captureQueriesFrom: captureFrom,
          });
        });
        this.#tokens.push(...chunk);
      }
      onProgress?.(Math.min(i + PREFILL_CHUNK_TOKENS, tokens.length), tokens.length);
    }
    await this.model.queue.run(() => this.policy.endPrefill(this.#state.captures));
    return out;
  }

  #prefillOrder(tokens: number, asked: GenerateOptions["prefill"]): PrefillOrder {
    if (asked !== undefined && asked !== "auto" && asked !== "chunked" && asked !== "layered") {
      throw new HcError(
        "E_BAD_REQUEST",
        `prefill must be "auto", "chunked" or "layered", got ${JSON.stringify(asked)}`,
      );
    }
    if (asked === "chunked" || asked === "layered") return asked;
    const m = this.model;
    return choosePrefillOrder(this.policy.name, tokens, m.config, m.device.memory().freeBytes);
  }

  /** The prompt layer by layer (engine/layered_prefill.ts); the policy began "layered". */
  async #prefillByLayer(
    tokens: readonly number[],
    want: "argmax" | "logits",
    signal?: AbortSignal,
    onProgress?: GenerateOptions["onPrefillProgress"],
  ): Promise<number | Float32Array> {
    const m = this.model;
    const deps = {
      device: m.device,
      config: m.config,
      queue: m.queue,
      state: this.#state,
      policy: this.policy,
    };
    const out = await prefillByLayer(deps, tokens, want, { signal, onProgress });
    this.#tokens.push(...tokens);
    return out;
  }

  /** A continuation's tokens: prefill chunks where every head holds row = position, else one
   * decode step each (the policy appends, monitors and refreshes as for generated tokens). */
  async #append(
    tokens: readonly number[],
    want: "argmax" | "logits",
    signal?: AbortSignal,
    onProgress?: (done: number, total: number) => void,
  ): Promise<number | Float32Array> {
    const step = this.policy.appendByPrefill ? PREFILL_CHUNK_TOKENS : 1;
    let out: number | Float32Array = -1;
    for (let i = 0; i < tokens.length; i += step) {
      if (signal?.aborted) throw new HcError("E_ABORTED", "generation aborted during prefill");
      const chunk = tokens.slice(i, i + step);
      if (step === 1 && i === tokens.length - 1 && i > 0) {
        // The turn's last token gives the answer's first: it reads what the question fetched.
        await this.model.queue.run(() => this.policy.landRefreshes());
      }
      out = await this.#forward(chunk, want, step === 1 ? "decode" : "prefill");
      onProgress?.(Math.min(i + step, tokens.length), tokens.length);
    }
    return out;
  }

  /** One forward step through the device queue; the policy sets lengths and, when decoding,
   * monitors after the step. */
  async #forward(
    tokens: readonly number[],
    want: "argmax" | "logits",
    phase: "prefill" | "decode",
    captureFrom?: number,
  ): Promise<number | Float32Array> {
    this.#tokens.push(...tokens);
    const decoding = phase === "decode";
    return await this.model.queue.run(async () => {
      this.policy.advance(tokens.length);
      const opts = {
        caches: this.policy.caches,
        captureQueriesFrom: captureFrom,
        captureStep: decoding && this.policy.captureSteps,
        waitTransfer: decoding ? await this.policy.transferWait() : 0n,
      };
      const t0 = performance.now();
      const out = want === "argmax"
        ? await this.#state.eval(tokens, "argmax", opts)
        : await this.#state.eval(tokens, "logits", opts);
      if (decoding) {
        this.#stepMs += performance.now() - t0;
        await this.policy.afterStep(this.#state.captures);
      }
      return out;
    });
  }

  #choose(out: number | Float32Array, sampler: Sampler): number {
    return typeof out === "number" ? out : sampler.sample(out, this.#tokens);
  }

  /**
   * Teacher forcing (for fidelity measurements): runs `prompt`, then feeds `forced` one token
   * at a time; `onLogits(i, logits)` receives the logits that predict forced[i]. The prompt
   * goes in chunks unless `prefill` says "layered".
   */
  async teacherForce(
    prompt: readonly number[],
    forced: readonly number[],
    onLogits: (i: number, logits: Float32Array) => void,
    prefill: PrefillOrder = "chunked",
  ): Promise<void> {
    if (this.#busy) {
      throw new HcError("E_BUSY", "this session is already generating; use another session");
    }
    if (prompt.length === 0 || prompt.length + forced.length > this.#state.capacity) {
      throw new HcError(
        "E_CONTEXT_FULL",
        `prompt ${prompt.length} + forced ${forced.length} tokens do not fit ${this.#state.capacity}`,
      );
    }
    this.#busy = true;
    try {
      this.#contextOk = false;
      this.#state.reset();
      this.#tokens = [];
      this.policy.begin(prompt.length, forced.length, prefill);
      this.#stepMs = 0;
      let logits = await (prefill === "layered"
        ? this.#prefillByLayer(prompt, "logits")
        : this.#prefill(prompt, "logits")) as Float32Array;
      for (let i = 0; i < forced.length; i++) {
        onLogits(i, logits);
        if (i + 1 < forced.length) {
          logits = await this.#forward([forced[i]], "logits", "decode") as Float32Array;
        }
      }
    } finally {
      this.#busy = false;
    }
  }

  /**
   * Starts a generation whose prompt KV rows are written by `write` straight into the caches
   * (and, for a compressing policy, the prompt queries into `captures.prefillQ`) instead of
   * computed by a prefill, then lets the policy compress as after a real prefill. The decode
   * benchmark uses it for long synthetic prompts, whose real prefill takes hours on a CPU
   * driver; `decodeStep` then runs the steps after it.
   */
  async prefillWritten(
    promptTokens: number,
    maxNewTokens: number,
    write: (caches: readonly KvLayerCache[], captures: Captures) => void,
  ): Promise<void> {
    if (this.#busy) {
      throw new HcError("E_BUSY", "this session is already generating; use another session");
    }
    if (
      !Number.isSafeInteger(promptTokens) || !Number.isSafeInteger(maxNewTokens) ||
      promptTokens < 1 || maxNewTokens < 1 || promptTokens + maxNewTokens > this.#state.capacity
    ) {
      throw new HcError(
        "E_CONTEXT_FULL",
        `prompt ${promptTokens} + ${maxNewTokens} steps do not fit ${this.#state.capacity}`,
      );
    }
    this.#busy = true;
    try {
      this.#contextOk = false;
      this.#state.reset();
      this.#tokens = [];
      this.#stepMs = 0;
      this.policy.begin(promptTokens, maxNewTokens);
      this.policy.advance(promptTokens);
      const window = Math.min(this.policy.captureWindow, promptTokens);
      if (window > 0) this.#state.reservePrefillCapture(window);
      write(this.policy.caches, this.#state.captures);
      this.#state.seek(promptTokens);
      await this.model.queue.run(() => this.policy.endPrefill(this.#state.captures));
    } finally {
      this.#busy = false;
    }
  }

  /** One greedy decode step after a prompt (see prefillWritten): feeds `token`, returns the
   * argmax of the next one. */
  async decodeStep(token: number): Promise<number> {
    if (this.#busy) {
      throw new HcError("E_BUSY", "this session is already generating; use another session");
    }
    if (this.#state.position < 1) {
      throw new HcError("E_BAD_REQUEST", "decodeStep needs a prompt first (prefillWritten)");
    }
    if (this.#state.position >= this.#state.capacity) {
      throw new HcError("E_CONTEXT_FULL", `the session holds at most ${this.#state.capacity}`);
    }
    this.#busy = true;
    try {
      return await this.#forward([token], "argmax", "decode") as number;
    } finally {
      this.#busy = false;
    }
  }

  /** Cache statistics of the current (or last) generation. */
  cacheStats(): CacheStats {
    return { ...this.policy.stats(), stepMs: this.#stepMs };
  }

  stats(): SessionStats {
    const t = this.#totals;
    return {
      positions: this.#state.position,
      capacity: this.#state.capacity,
      deviceKvBytes: this.policy.stats().deviceKvBytes,
      generations: t.generations,
      promptTokens: t.promptTokens,
      completionTokens: t.completionTokens,
      decodeTokensPerSecond: t.decodeMs > 0 ? (t.completionTokens * 1000) / t.decodeMs : 0,
    };
  }

  [Symbol.dispose](): void {
    if (this.#disposed) return;
    this.#disposed = true;
    this.#state[Symbol.dispose]();
    this.policy[Symbol.dispose]();
    this.model.forgetSession(this);
  }
}
