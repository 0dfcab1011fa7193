/**
 * Layer-by-layer prefill for long prompts: the whole prompt goes through layer 0, then layer 1,
 * and so on, its hidden states kept between layers (PromptHidden). Right after a layer has
 * taken the whole prompt, the cache policy keeps that layer's rows (a compressing policy
 * selects them, its host store takes the rows it refreshes from, and the layer's full KV is
 * reused by the next layer), so the device holds one layer's full KV plus the compressed
 * caches instead of every layer's full KV. The chunked path (Session) stays for short prompts.
 */
import { HcError } from "../errors.ts";
import type { ModelConfig } from "../model/config.ts";
import { type ForwardState, MAX_BATCH_TOKENS } from "../model/forward.ts";
import { PromptHidden } from "../model/prompt_hidden.ts";
import type { CachePolicy, PolicyName, PrefillOrder } from "../cache/policy.ts";
import type { Device } from "../vk/mod.ts";
import type { DeviceQueue } from "./model.ts";

/** Prompts from this long go layer by layer under a compressing policy, whatever the memory. */
export const LAYERED_MIN_TOKENS = 4096;

/** What a prefill's progress reports: prompt tokens through the current pass, and for a
 * layer-by-layer prefill the layer (0-based) among `layers`. */
export interface PrefillLayerProgress {
  layer: number;
  layers: number;
}

/**
 * The order a prompt goes in when the caller leaves it to the engine: layer by layer under a
 * compressing policy when the prompt is long, or when every layer's full prompt KV would take
 * more than half the device memory still free; else in chunks (the same kernels run either way;
 * chunks keep fewer, larger submissions and need no hidden-state buffer). `full` keeps every
 * layer's KV anyway, so it always goes in chunks.
 */
export function choosePrefillOrder(
  policy: PolicyName,
  promptTokens: number,
  config: Pick<ModelConfig, "nLayers" | "nKvHeads" | "headDim">,
  freeBytes: number | null,
): PrefillOrder {
  if (policy === "full") return "chunked";
  if (promptTokens >= LAYERED_MIN_TOKENS) return "layered";
  const allLayersKv = config.nLayers * config.nKvHeads * promptTokens * config.headDim * 2 * 2;
  return freeBytes !== null && allLayersKv > freeBytes / 2 ? "layered" : "chunked";
}

/**
 * Where the prompt's hidden states wait between layers: on the device, unless they would take
 * more than a quarter of its free memory (they would then crowd out the KV this order saves);
 * then in host-visible memory, at the price of moving them over the bus once per layer.
 */
export function hiddenPlace(hiddenBytes: number, freeBytes: number | null): "device" | "host" {
  return freeBytes !== null && hiddenBytes > freeBytes / 4 ? "host" : "device";
}

export interface LayeredPrefillDeps {
  device: Device;
  config: ModelConfig;
  queue: DeviceQueue;
  state: ForwardState;
  policy: CachePolicy;
}

/**
 * Runs `tokens` (the policy has begun with the "layered" order) layer by layer, each layer in
 * chunks of `chunkTokens`; returns what `want` asks of the last position, after the policy's
 * endPrefill. Every device step goes through the queue, so other sessions interleave.
 */
export async function prefillByLayer(
  deps: LayeredPrefillDeps,
  tokens: readonly number[],
  want: "argmax" | "logits",
  opts: {
    signal?: AbortSignal;
    onProgress?: (done: number, total: number, layer?: PrefillLayerProgress) => void;
    chunkTokens?: number;
  } = {},
): Promise<number | Float32Array> {
  const { config: c, queue, state, policy } = deps;
  const n = tokens.length;
  const chunk = Math.min(opts.chunkTokens ?? MAX_BATCH_TOKENS, MAX_BATCH_TOKENS);
  const window = Math.min(policy.captureWindow, n);
  if (window > 0) state.reservePrefillCapture(window);
  const captureFrom = window > 0 ? n - window : undefined;
  const where = hiddenPlace(n * c.dim * 4, deps.device.memory().freeBytes);
  using hidden = new PromptHidden(deps.device, c.dim, n, { where });
  let out: number | Float32Array = -1;
  for (let l = 0; l < c.nLayers; l++) {
    const cache = policy.prefillLayer(l);
    for (let i = 0; i < n; i += chunk) {
      if (opts.signal?.aborted) {
        throw new HcError("E_ABORTED", "generation aborted during prefill");
      }
      const step = {
        tokens: tokens.slice(i, i + chunk),
        start: i,
        layer: l,
        hidden,
        cache,
        captureQueriesFrom: captureFrom,
      };
      const end = Math.min(i + chunk, n);
      const last = l === c.nLayers - 1 && end === n;
      await queue.run(async () => {
        cache.lengths.fill(end);
        if (!last) return await state.evalLayer(step, "none");
        out = want === "argmax"
          ? await state.evalLayer(step, "argmax")
          : await state.evalLayer(step, "logits");
      });
      opts.onProgress?.(end, n, { layer: l, layers: c.nLayers });
    }
    await queue.run(() => policy.endPrefillLayer(l, state.captures));
  }
  await queue.run(() => {
    policy.advance(n);
    state.seek(n);
    return policy.endPrefill(state.captures);
  });
  return out;
}
