/**
 * Session: one conversation's KV state on the device, and the decode loop that streams pieces.
 * Device work of every session goes through the model's DeviceQueue, one step at a time, so
 * several sessions interleave fairly on one device queue.
 */
import { HcError } from "../errors.ts";
import { Sampler, type SamplingOptions } from "../model/sampler.ts";
import type { ForwardState } from "../model/forward.ts";
import type { CachePolicy, CacheStats } from "../cache/policy.ts";
import type { LoadedModel, Prompt } from "./model.ts";
import { StopMatcher } from "./stops.ts";
import { f32ToF16Array } from "../model/quant/f16.ts";
import type { Buffer, Device } from "../vk/mod.ts";

export interface GenerateOptions extends SamplingOptions {
  /** Most tokens to generate. Default 256. */
  maxTokens?: number;
  /** Generation ends before the first of these strings; it is not emitted. */
  stop?: readonly string[];
  signal?: AbortSignal;
  /** Keep generating past end-of-generation tokens. */
  ignoreEos?: boolean;
  /** Called with (done, total) prompt tokens while a long prompt is prefilled. */
  onPrefillProgress?: (done: number, total: number) => void;
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
  promptTokens: number;
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
  #tokens: number[] = [];
  #busy = false;
  #disposed = false;
  #totals = { generations: 0, promptTokens: 0, completionTokens: 0, decodeMs: 0 };
  #last: GenerationSummary | null = null;
  /** Device step time of the current generation's decode steps (transfer waits included). */
  #stepMs = 0;
  /** benchPrefill/benchStep: the next token and the steps left. */
  #benchNext = 0;
  #benchLeft = 0;

  constructor(model: LoadedModel, state: ForwardState, policy: CachePolicy) {
    this.model = model;
    this.#state = state;
    this.policy = policy;
  }

  /** The summary of the last finished generation. */
  get lastGeneration(): GenerationSummary | null {
    return this.#last;
  }

  /** Tokens of the prompt as the model will see it (chat messages rendered with its template). */
  tokenize(prompt: Prompt): number[] {
    return this.model.tokenize(prompt);
  }

  /**
   * Streams the continuation of `prompt`. Each call starts from an empty cache (the session's
   * device memory is reused). Aborting through `signal` ends the stream with finishReason
   * "abort"; the session stays usable.
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
    const promptTokens = this.tokenize(prompt);
    if (promptTokens.length === 0) {
      throw new HcError("E_BAD_REQUEST", "the prompt is empty and the model adds no BOS token");
    }
    const capacity = this.#state.capacity;
    if (promptTokens.length >= capacity) {
      throw new HcError(
        "E_CONTEXT_FULL",
        `the prompt has ${promptTokens.length} tokens; this session holds at most ${capacity} (prompt + generated)`,
      );
    }
    this.#busy = true;
    const decoder = this.model.tokenizer.createDecoder();
    const stops = new StopMatcher(opts.stop ?? []);
    let text = "";
    let generated = 0;
    let finish: FinishReason = "length";
    let prefillMs = 0;
    let decodeMs = 0;
    try {
      this.#state.reset();
      this.#tokens = [];
      this.#benchLeft = 0;
      this.policy.begin(promptTokens.length, Math.min(maxTokens, capacity - promptTokens.length));
      this.#stepMs = 0;
      const want = greedy ? "argmax" : "logits";
      const t0 = performance.now();
      let next = this.#choose(
        await this.#prefill(promptTokens, want, opts.signal, opts.onPrefillProgress),
        sampler,
      );
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
        next = this.#choose(await this.#forward([next], want, "decode"), sampler);
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
        waitTransfer: decoding ? this.policy.transferWait() : 0n,
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
   * at a time; `onLogits(i, logits)` receives the logits that predict forced[i].
   */
  async teacherForce(
    prompt: readonly number[],
    forced: readonly number[],
    onLogits: (i: number, logits: Float32Array) => void,
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
      this.#state.reset();
      this.#tokens = [];
      this.#benchLeft = 0;
      this.policy.begin(prompt.length, forced.length);
      this.#stepMs = 0;
      let logits = await this.#prefill(prompt, "logits") as Float32Array;
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
   * Decode benchmark, part 1: a synthetic prompt of `promptTokens` positions, room for `steps`
   * decode steps (each `benchStep()`). The prompt's K/V rows, and the prompt queries a
   * compressing policy scores them with, are random values written straight into the caches
   * instead of computed by a prefill: a 64K-token prefill is quadratic and takes hours on a CPU
   * Vulkan driver, while the decode steps after it read exactly the bytes real ones would. The
   * policy then compresses as after a real prefill (selection, host store, drift checks).
   */
  async benchPrefill(promptTokens: number, steps: number, seed = 1): Promise<void> {
    if (this.#busy) {
      throw new HcError("E_BUSY", "this session is already generating; use another session");
    }
    if (promptTokens < 1 || steps < 1 || promptTokens + steps > this.#state.capacity) {
      throw new HcError(
        "E_CONTEXT_FULL",
        `prompt ${promptTokens} + ${steps} steps do not fit ${this.#state.capacity}`,
      );
    }
    this.#busy = true;
    try {
      const c = this.model.config;
      const device = this.model.device;
      this.#state.reset();
      this.#tokens = [];
      this.#stepMs = 0;
      this.#benchLeft = 0;
      this.policy.begin(promptTokens, steps);
      this.policy.advance(promptTokens);
      const pool = randomHalfs(1 << 20, seed);
      const rowBytes = c.headDim * 2;
      let turn = 0;
      for (const cache of this.policy.caches) {
        for (let h = 0; h < cache.nKvHeads; h++) {
          const at = cache.location(h, 0);
          for (const side of [at.k, at.v]) {
            // Rows cycle through the pool from a different start for every head and side.
            const start = ((turn++ * 7919) % (pool.length / c.headDim)) * rowBytes;
            writeCycled(device, side, at.byteOffset, promptTokens * rowBytes, pool, start);
          }
        }
      }
      const window = Math.min(this.policy.captureWindow, promptTokens);
      if (window > 0) {
        this.#state.reservePrefillCapture(window);
        const q = new Float32Array(this.#state.captures.prefillQ!.bytes / 4);
        const r = lcg(seed + 1);
        for (let i = 0; i < q.length; i++) q[i] = r() * 2 - 1;
        device.upload(this.#state.captures.prefillQ!, q);
      }
      this.#state.seek(promptTokens);
      await this.model.queue.run(() => this.policy.endPrefill(this.#state.captures));
      this.#benchNext = this.model.tokenizer.bos ?? 1;
      this.#benchLeft = steps;
    } finally {
      this.#busy = false;
    }
  }

  /** Decode benchmark, part 2: one greedy decode step after `benchPrefill`; its wall time, ms.
   * Steps of several sessions can be interleaved, so that a noisy machine slows them alike. */
  async benchStep(): Promise<number> {
    if (this.#busy) {
      throw new HcError("E_BUSY", "this session is already generating; use another session");
    }
    if (this.#benchLeft < 1) {
      throw new HcError("E_CONTEXT_FULL", "no benchmark step left: call benchPrefill first");
    }
    this.#busy = true;
    try {
      const t0 = performance.now();
      this.#benchNext = await this.#forward([this.#benchNext], "argmax", "decode") as number;
      this.#benchLeft--;
      return performance.now() - t0;
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

/** A small deterministic generator in [0, 1): benchmark data, not statistics. */
function lcg(seed: number): () => number {
  let x = (seed >>> 0) || 1;
  return () => {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    return x / 2 ** 32;
  };
}

/** `n` roughly normal f16 values (sum of three uniforms), as raw bytes. */
function randomHalfs(n: number, seed: number): Uint8Array {
  const r = lcg(seed);
  const f = new Float32Array(n);
  for (let i = 0; i < n; i++) f[i] = r() + r() + r() - 1.5;
  const h = f32ToF16Array(f);
  return new Uint8Array(h.buffer, h.byteOffset, h.byteLength);
}

/** Fills `bytes` of `dst` from `offset` with `pool` repeated, starting at pool byte `start`. */
function writeCycled(
  device: Device,
  dst: Buffer,
  offset: number,
  bytes: number,
  pool: Uint8Array,
  start: number,
): void {
  const block = new Uint8Array(Math.min(bytes, 8 * pool.length));
  for (let i = 0; i < block.length;) {
    const from = (start + i) % pool.length;
    const n = Math.min(block.length - i, pool.length - from);
    block.set(pool.subarray(from, from + n), i);
    i += n;
  }
  for (let done = 0; done < bytes; done += block.length) {
    device.upload(dst, block.subarray(0, Math.min(block.length, bytes - done)), offset + done);
  }
}
