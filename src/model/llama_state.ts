/** One session's side of the forward pass: per-token parameters, scratch, captures, and the
 * recorded decode steps that are replayed token after token. */
import { HcError } from "../errors.ts";
import type { KvLayerCache } from "../cache/kv_layer.ts";
import type { Buffer, CommandList } from "../vk/mod.ts";
import {
  attentionFlopsPerToken,
  type AttentionSplit,
  type Captures,
  type ForwardState,
  type LayerStep,
  MAX_BATCH_TOKENS,
  stepLayout,
  type StepOptions,
} from "./forward.ts";
import type { LlamaModel } from "./llama.ts";

/** Buffers one recorded forward pass binds. */
export interface ForwardIo {
  caches: readonly KvLayerCache[];
  ids: Buffer;
  pos: Buffer;
  attnScratch: Buffer;
  stepCapture: Buffer | null;
  prefillQ: Buffer | null;
  prefillWindow: number;
  captureFrom?: number;
}

/** One session's per-token parameters, scratch, captures and recorded steps. The KV caches
 * belong to the cache policy and come with each step. */
export class LlamaState implements ForwardState {
  readonly model: LlamaModel;
  #capacity: number;
  #position = 0;
  readonly #ids: Buffer;
  readonly #pos: Buffer;
  #attnScratch: Buffer | null = null;
  readonly #argmaxScratch: Buffer;
  readonly #token: Buffer;
  readonly #logits: Buffer;
  readonly #stepCapture: Buffer;
  #prefillQ: Buffer | null = null;
  #prefillWindow = 0;
  readonly captures: Captures;
  readonly #idsView: Uint32Array;
  readonly #posView: Uint32Array;
  /** Decode steps recorded once per cache set, keyed by what they end with and capture. */
  readonly #decodeLists = new Map<string, CommandList>();
  #decodeCaches: readonly KvLayerCache[] | null = null;
  readonly #batch: CommandList;
  /** The lists of a layer step whose attention goes in query blocks (made on first use). */
  readonly #splitLists: CommandList[] = [];
  readonly #owned: Disposable[] = [];
  #disposed = false;

  constructor(model: LlamaModel, contextTokens: number) {
    this.model = model;
    this.#capacity = contextTokens;
    const c = model.config;
    const d = model.device;
    const own = <T extends Disposable>(x: T): T => {
      this.#owned.push(x);
      return x;
    };
    try {
      this.#argmaxScratch = own(
        d.buffer(Math.max(16, model.kernels.argmax.scratchBytes(c.vocabSize, 1))),
      );
      this.#ids = own(d.buffer(MAX_BATCH_TOKENS * 4, "upload"));
      this.#pos = own(d.buffer(16, "upload"));
      this.#token = own(d.buffer(16, "readback"));
      this.#logits = own(d.buffer(c.vocabSize * 4, "readback"));
      this.#stepCapture = own(
        d.buffer(stepLayout(c).totalFloats * 4, "readback"),
      );
      this.#batch = own(d.commands());
    } catch (e) {
      this[Symbol.dispose]();
      throw e;
    }
    const ids = this.#ids.mapped();
    this.#idsView = new Uint32Array(ids.buffer, ids.byteOffset, MAX_BATCH_TOKENS);
    const pos = this.#pos.mapped();
    this.#posView = new Uint32Array(pos.buffer, pos.byteOffset, 4);
    const cap = this.#stepCapture.mapped();
    this.captures = {
      prefillQ: null,
      prefillWindow: 0,
      step: new Float32Array(cap.buffer, cap.byteOffset, cap.byteLength / 4),
    };
  }

  get position(): number {
    return this.#position;
  }

  get capacity(): number {
    return this.#capacity;
  }

  reserve(tokens: number): void {
    if (!Number.isSafeInteger(tokens) || tokens > this.model.config.contextLength) {
      throw new HcError(
        "E_CONTEXT_FULL",
        `${tokens} tokens exceed the model's context length ${this.model.config.contextLength}`,
      );
    }
    this.#capacity = Math.max(this.#capacity, tokens);
  }

  reset(): void {
    this.#position = 0;
  }

  seek(position: number): void {
    if (!Number.isSafeInteger(position) || position < 0 || position > this.capacity) {
      throw new HcError("E_CONTEXT_FULL", `position ${position} is outside 0..${this.capacity}`);
    }
    this.#position = position;
  }

  reservePrefillCapture(window: number): void {
    if (window <= this.#prefillWindow) return;
    const c = this.model.config;
    this.#prefillQ?.dispose();
    this.#prefillQ = null;
    this.#prefillQ = this.model.device.buffer(c.nLayers * window * c.nHeads * c.headDim * 4);
    this.#prefillWindow = window;
    this.captures.prefillQ = this.#prefillQ;
    this.captures.prefillWindow = window;
  }

  /** Attention scratch large enough for these caches (grown, never shrunk), its decode
   * arrival counters zeroed when allocated (every decode leaves them zero). */
  #scratchFor(caches: readonly KvLayerCache[]): Buffer {
    const K = this.model.kernels;
    let need = 16;
    let kvHeads = 0;
    for (const cache of caches) {
      need = Math.max(
        need,
        K.decode.scratchBytes(cache),
        K.prefill.scratchBytes(cache, MAX_BATCH_TOKENS),
      );
      kvHeads = Math.max(kvHeads, cache.nKvHeads);
    }
    if (!this.#attnScratch || this.#attnScratch.bytes < need) {
      this.#dropDecodeLists();
      this.#attnScratch?.dispose();
      this.#attnScratch = null;
      const scratch = this.model.device.buffer(need);
      try {
        K.decode.zeroCounters(scratch, kvHeads);
      } catch (e) {
        scratch.dispose();
        throw e;
      }
      this.#attnScratch = scratch;
    }
    return this.#attnScratch;
  }

  #dropDecodeLists(): void {
    for (const l of this.#decodeLists.values()) l.dispose();
    this.#decodeLists.clear();
  }

  #io(opts: StepOptions): ForwardIo {
    return {
      caches: opts.caches,
      ids: this.#ids,
      pos: this.#pos,
      attnScratch: this.#scratchFor(opts.caches),
      stepCapture: opts.captureStep ? this.#stepCapture : null,
      prefillQ: this.#prefillQ,
      prefillWindow: this.#prefillWindow,
      captureFrom: opts.captureQueriesFrom,
    };
  }

  #recordTail(cmd: CommandList, want: "argmax" | "logits" | "none"): void {
    const a = this.model.act;
    const n = this.model.config.vocabSize;
    if (want === "argmax") {
      this.model.kernels.argmax.record(cmd, {
        x: a.logits,
        n,
        out: this.#token,
        scratch: this.#argmaxScratch,
      });
    } else if (want === "logits") {
      cmd.copy(a.logits, this.#logits, [[0, 0, n * 4]]);
    }
  }

  /** The recorded single-token step for these caches (recorded on first use, then replayed). */
  #decodeList(want: "argmax" | "logits", opts: StepOptions): CommandList {
    if (this.#decodeCaches !== opts.caches) {
      this.#dropDecodeLists();
      this.#decodeCaches = opts.caches;
    }
    const io = this.#io(opts);
    const key = `${want}/${opts.captureStep ? 1 : 0}`;
    let cmd = this.#decodeLists.get(key);
    if (!cmd) {
      cmd = this.model.device.commands();
      try {
        cmd.begin();
        this.model.recordForward(cmd, { ...io, captureFrom: undefined }, 1, 0);
        this.#recordTail(cmd, want);
        cmd.end();
      } catch (e) {
        cmd.dispose();
        throw e;
      }
      this.#decodeLists.set(key, cmd);
    }
    return cmd;
  }

  eval(tokens: readonly number[], want: "none", opts: StepOptions): Promise<void>;
  eval(tokens: readonly number[], want: "argmax", opts: StepOptions): Promise<number>;
  eval(tokens: readonly number[], want: "logits", opts: StepOptions): Promise<Float32Array>;
  async eval(
    tokens: readonly number[],
    want: "none" | "argmax" | "logits",
    opts: StepOptions,
  ): Promise<void | number | Float32Array> {
    if (this.#disposed) throw new HcError("E_BAD_REQUEST", "the session was disposed");
    const B = tokens.length;
    if (B < 1 || B > MAX_BATCH_TOKENS) {
      throw new HcError(
        "E_BAD_REQUEST",
        `a forward step takes 1..${MAX_BATCH_TOKENS} tokens, got ${B}`,
      );
    }
    if (this.#position + B > this.capacity) {
      throw new HcError(
        "E_CONTEXT_FULL",
        `the session holds ${this.capacity} tokens; ${this.#position} are used and ${B} more were asked for`,
      );
    }
    if (opts.caches.length !== this.model.config.nLayers) {
      throw new HcError(
        "E_BAD_REQUEST",
        `${opts.caches.length} KV caches given for ${this.model.config.nLayers} layers`,
      );
    }
    const vocab = this.model.config.vocabSize;
    tokens.forEach((t, i) => {
      if (!Number.isInteger(t) || t < 0 || t >= vocab) {
        throw new HcError(
          "E_BAD_REQUEST",
          `token id ${t} outside the vocabulary (0..${vocab - 1})`,
        );
      }
      this.#idsView[i] = t;
    });
    this.#posView[0] = this.#position;
    let cmd: CommandList;
    const transfer = opts.waitTransfer ?? 0n;
    if (B === 1 && want !== "none" && opts.captureQueriesFrom === undefined) {
      cmd = this.#decodeList(want, opts);
    } else {
      // A chunk whose attention over every layer passes the model's budget per submission goes
      // in several (see LlamaModel.recordForward), so that long prompts through the chunked
      // path never hold the device for seconds either.
      const m = this.model;
      const perToken = attentionFlopsPerToken(m.config, this.#position + B);
      const lists = this.#splitter(
        Math.max(1, Math.floor(m.attentionFlopsPerSubmission / perToken)),
        transfer,
      );
      const split = perToken * B * m.config.nLayers > m.attentionFlopsPerSubmission
        ? lists.split
        : undefined;
      try {
        cmd = this.#batch;
        cmd.begin();
        cmd = m.recordForward(cmd, this.#io(opts), B, this.#position, split);
        this.#recordTail(cmd, want);
        cmd.end();
      } catch (e) {
        lists.settle();
        throw e;
      }
    }
    await this.model.device.wait("compute", cmd.submit({ transfer }));
    this.#position += B;
    if (want === "argmax") {
      const m = this.#token.mapped();
      return new Uint32Array(m.buffer, m.byteOffset, 1)[0];
    }
    if (want === "logits") {
      return new Float32Array(this.#logits.mapped().slice(0, vocab * 4).buffer);
    }
  }

  /**
   * The lists a step cut into submissions goes on in (see AttentionSplit): `split.next` submits
   * the list it is given (after the transfer queue reaches `transfer`) and begins the next one;
   * `settle` waits for what was submitted, for a recording that failed half-way (its lists are
   * recorded again by the next step). The last list is the caller's to submit; they run in
   * order on the queue, so only that one is waited for.
   */
  #splitter(tokens: number, transfer: bigint): { split: AttentionSplit; settle(): void } {
    let submitted: bigint | null = null;
    let lists = 0;
    const device = this.model.device;
    return {
      split: {
        tokens,
        next: (done: CommandList): CommandList => {
          done.end();
          submitted = done.submit({ transfer });
          let list = this.#splitLists[lists];
          if (!list) {
            list = device.commands();
            this.#owned.push(list);
            this.#splitLists.push(list);
          }
          lists++;
          return list.begin();
        },
      },
      settle: () => {
        if (submitted !== null) device.waitSync("compute", submitted);
      },
    };
  }

  evalLayer(step: LayerStep, want: "none"): Promise<void>;
  evalLayer(step: LayerStep, want: "argmax"): Promise<number>;
  evalLayer(step: LayerStep, want: "logits"): Promise<Float32Array>;
  async evalLayer(
    step: LayerStep,
    want: "none" | "argmax" | "logits",
  ): Promise<void | number | Float32Array> {
    if (this.#disposed) throw new HcError("E_BAD_REQUEST", "the session was disposed");
    const { tokens, start, layer, hidden, cache } = step;
    const B = tokens.length;
    const c = this.model.config;
    if (B < 1 || B > MAX_BATCH_TOKENS || start < 0 || start + B > hidden.tokens) {
      throw new HcError(
        "E_BAD_REQUEST",
        `a layer step takes 1..${MAX_BATCH_TOKENS} tokens inside the prompt, got ${B} at ${start}`,
      );
    }
    if (!Number.isInteger(layer) || layer < 0 || layer >= c.nLayers) {
      throw new HcError("E_BAD_REQUEST", `layer ${layer} outside 0..${c.nLayers - 1}`);
    }
    if (start + B > this.capacity) {
      throw new HcError("E_CONTEXT_FULL", `the session holds ${this.capacity} tokens`);
    }
    tokens.forEach((t, i) => {
      if (!Number.isInteger(t) || t < 0 || t >= c.vocabSize) {
        throw new HcError(
          "E_BAD_REQUEST",
          `token id ${t} outside the vocabulary (0..${c.vocabSize - 1})`,
        );
      }
      this.#idsView[i] = t;
    });
    this.#posView[0] = start;
    // The layer's cache stands at every index: recordLayer reads io.caches[layer].
    const io = this.#io({
      caches: Array(c.nLayers).fill(cache),
      captureQueriesFrom: step.captureQueriesFrom,
    });
    const m = this.model;
    let cmd = this.#batch;
    // Past the model's attention budget per submission, the layer's attention goes in query
    // blocks, each closing a submission; they run in order on the queue, so only the last one
    // is waited for.
    const perToken = attentionFlopsPerToken(c, start + B);
    const blockTokens = Math.max(1, Math.floor(m.attentionFlopsPerSubmission / perToken));
    const lists = this.#splitter(blockTokens, 0n);
    const split = blockTokens >= B ? undefined : lists.split;
    try {
      cmd.begin();
      cache.recordLengthsUpload(cmd);
      if (layer === 0) m.recordEmbed(cmd, io, B);
      else {
        hidden.recordLoad(cmd, m.act.x, start, B);
        cmd.barrier();
      }
      cmd = m.recordLayer(cmd, io, layer, B, start, split);
      if (layer < c.nLayers - 1) hidden.recordStore(cmd, m.act.x, start, B);
      else if (want !== "none") {
        m.recordOutput(cmd, B);
        this.#recordTail(cmd, want);
      }
      cmd.end();
    } catch (e) {
      lists.settle();
      throw e;
    }
    await m.device.wait("compute", cmd.submit());
    if (want === "argmax") {
      const t = this.#token.mapped();
      return new Uint32Array(t.buffer, t.byteOffset, 1)[0];
    }
    if (want === "logits") {
      return new Float32Array(this.#logits.mapped().slice(0, c.vocabSize * 4).buffer);
    }
  }

  [Symbol.dispose](): void {
    if (this.#disposed) return;
    this.#disposed = true;
    this.#dropDecodeLists();
    this.#attnScratch?.dispose();
    this.#prefillQ?.dispose();
    for (const x of this.#owned.splice(0).reverse()) x[Symbol.dispose]();
  }
}
