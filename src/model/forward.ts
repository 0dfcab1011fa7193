/**
 * What the engine and the cache policies see of a forward pass: the per-step options, the
 * captured activations, and a session's forward state (implemented in llama_state.ts).
 */
import type { KvLayerCache } from "../cache/kv_layer.ts";
import type { Buffer, CommandList } from "../vk/mod.ts";
import type { ModelConfig } from "./config.ts";
import type { PromptHidden } from "./prompt_hidden.ts";

/** Most tokens one forward submission takes; longer prompts are fed in chunks. */
export const MAX_BATCH_TOKENS = 256;

/** Per-step extras a cache policy asks of the forward pass. */
export interface StepOptions {
  /** KV caches (one per layer) this step reads and appends to; their lengths must already
   * count the step's tokens (the cache policy sets them). */
  caches: readonly KvLayerCache[];
  /** Copy the post-RoPE queries of prompt positions >= from into `capture.prefillQ`. */
  captureQueriesFrom?: number;
  /** Copy this decode step's post-RoPE q, k and v of every layer into `capture.step`. */
  captureStep?: boolean;
  /** Transfer-queue value (a cache refresh landing) the step must wait for; 0n for none. */
  waitTransfer?: bigint;
}

/** Host-visible copies of activations that cache policies read (see StepOptions). */
export interface Captures {
  /** Device f32 [nLayers][window][nHeads * headDim]: queries of the last prompt positions. */
  prefillQ: Buffer | null;
  prefillWindow: number;
  /** Readback f32 q, k and v of the last decode step, laid out as stepLayout says. */
  step: Float32Array;
}

type StepShape = Pick<ModelConfig, "nLayers" | "nHeads" | "nKvHeads" | "headDim">;

/**
 * Where the step capture keeps what, in floats: per layer the post-RoPE queries of every head
 * (nHeads·headDim), then the keys and the values of every KV head (nKvHeads·headDim each). The
 * forward pass writes it (llama.ts) and the cache policies read it (stepView).
 */
export interface StepLayout {
  readonly qFloats: number;
  readonly kvFloats: number;
  readonly layerFloats: number;
  readonly totalFloats: number;
  /** Offset of layer `layer`'s queries, keys or values (of every head). */
  q(layer: number): number;
  k(layer: number): number;
  v(layer: number): number;
}

export function stepLayout(c: StepShape): StepLayout {
  const qFloats = c.nHeads * c.headDim;
  const kvFloats = c.nKvHeads * c.headDim;
  const layerFloats = qFloats + 2 * kvFloats;
  return {
    qFloats,
    kvFloats,
    layerFloats,
    totalFloats: c.nLayers * layerFloats,
    q: (layer) => layer * layerFloats,
    k: (layer) => layer * layerFloats + qFloats,
    v: (layer) => layer * layerFloats + qFloats + kvFloats,
  };
}

/** The last decode step's captured rows, by layer and head (views, not copies). */
export interface StepView {
  /** Queries of every head of `layer`. */
  q(layer: number): Float32Array;
  /** Key / value row of KV head `head` of `layer`. */
  k(layer: number, head: number): Float32Array;
  v(layer: number, head: number): Float32Array;
}

export function stepView(c: StepShape, captures: Captures): StepView {
  const at = stepLayout(c);
  const D = c.headDim;
  const step = captures.step;
  return {
    q: (layer) => step.subarray(at.q(layer), at.q(layer) + at.qFloats),
    k: (layer, head) => step.subarray(at.k(layer) + head * D, at.k(layer) + (head + 1) * D),
    v: (layer, head) => step.subarray(at.v(layer) + head * D, at.v(layer) + (head + 1) * D),
  };
}

/**
 * Most prefill-attention FLOPs (4 x head dim x query heads per query-key pair) one submission of
 * a prefill carries before its attention goes in query blocks (and, for a chunk through every
 * layer, before the chunk's layers go in submissions of their own): about one layer of
 * Llama-3.1-8B's attention for a 256-token chunk at 4K positions, 0.6 s on lavapipe (2 cores).
 * Longer submissions hold the device queue for seconds, and GPU drivers reset those.
 */
export const ATTENTION_FLOPS_PER_SUBMISSION = 2 ** 34;

/** One query token's prompt attention FLOPs in one layer when it sees `keys` keys (the bound a
 * submission's budget counts: the chunk's last token sees the most). */
export function attentionFlopsPerToken(
  c: Pick<ModelConfig, "headDim" | "nHeads">,
  keys: number,
): number {
  return 4 * c.headDim * c.nHeads * keys;
}

/** A layer's prompt attention cut into query blocks (LlamaModel.recordLayer). */
export interface AttentionSplit {
  /** Query tokens per block. */
  tokens: number;
  /** Ends `cmd` (and submits it); returns the begun list recording goes on in. */
  next(cmd: CommandList): CommandList;
}

/** One chunk of one layer of a layer-by-layer prefill (see ForwardState.evalLayer). */
export interface LayerStep {
  /** The chunk's token ids, prompt positions [start, start + tokens.length). */
  tokens: readonly number[];
  start: number;
  layer: number;
  /** The prompt's hidden states between layers. */
  hidden: PromptHidden;
  /** The layer's cache, every head holding row = position; its lengths count the chunk. */
  cache: KvLayerCache;
  /** Copy the post-RoPE queries of prompt positions >= this into captures.prefillQ. */
  captureQueriesFrom?: number;
}

/** What a session's forward state offers the engine. */
export interface ForwardState extends Disposable {
  /** Tokens processed since reset (the next token's position). */
  readonly position: number;
  /** Most tokens a session may hold. */
  readonly capacity: number;
  /** Raises the capacity to `tokens` (never lowers it; the caches are the policy's). */
  reserve(tokens: number): void;
  readonly captures: Captures;
  /** Makes room to capture the queries of the last `window` prompt positions. */
  reservePrefillCapture(window: number): void;
  /** Forgets every token (keeps the device memory). */
  reset(): void;
  /** Moves to `position` without running the model: the KV rows before it were written
   * directly into the caches (Session.prefillWritten). */
  seek(position: number): void;
  /** Runs `tokens` at the next positions; returns nothing, the argmax of the last token's
   * logits, or those logits. */
  eval(tokens: readonly number[], want: "none", opts: StepOptions): Promise<void>;
  eval(tokens: readonly number[], want: "argmax", opts: StepOptions): Promise<number>;
  eval(tokens: readonly number[], want: "logits", opts: StepOptions): Promise<Float32Array>;
  /**
   * Layer-by-layer prefill (src/engine/layered_prefill.ts): runs one chunk of the prompt
   * through one layer alone. Layer 0 reads the tokens' embeddings and the other layers the
   * chunk's rows of `step.hidden`; every layer but the last writes them back; on the last
   * layer, `want` of the chunk's last token. The position does not move (seek after the prompt).
   */
  evalLayer(step: LayerStep, want: "none"): Promise<void>;
  evalLayer(step: LayerStep, want: "argmax"): Promise<number>;
  evalLayer(step: LayerStep, want: "logits"): Promise<Float32Array>;
}
