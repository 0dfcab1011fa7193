/**
 * What the engine and the cache policies see of a forward pass: the per-step options, the
 * captured activations, and a session's forward state (implemented in llama_state.ts).
 */
import type { KvLayerCache } from "../kernels/kv.ts";
import type { Buffer } from "../vk/mod.ts";

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
  /** Readback f32 [nLayers][qDim + 2 * kvDim] (q, k, v) of the last decode step. */
  step: Float32Array;
}

/** What a session's forward state offers the engine. */
export interface ForwardState extends Disposable {
  /** Tokens processed since reset (the next token's position). */
  readonly position: number;
  /** Most tokens a session may hold. */
  readonly capacity: number;
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
}
