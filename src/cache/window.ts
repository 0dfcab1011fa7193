/**
 * Sliding-window layers (config.layerWindows, see src/model/arch.ts): every policy gives such a
 * layer a ring of its own (src/cache/kv_layer.ts, "Sliding window") that holds the window and no
 * more, and never compresses or refreshes it: within its window it behaves as a full layer.
 */
import { KvLayerCache } from "./kv_layer.ts";
import type { LengthsSlot } from "./kv_lengths.ts";
import { layerWindow } from "../model/arch.ts";
import type { ModelConfig } from "../model/config.ts";
import { MAX_BATCH_TOKENS } from "../model/forward.ts";
import type { Device } from "../vk/mod.ts";

/**
 * Rows of a ring for window W: W plus one prompt chunk, so that a chunk never overwrites a row
 * its first token still sees (llama.cpp sizes its SWA cache the same way, n_swa + n_ubatch);
 * never more than `maxRows`, the positions the cache can ever hold.
 */
export function ringRows(window: number, maxRows: number): number {
  return Math.max(1, Math.min(window + MAX_BATCH_TOKENS - 1, maxRows));
}

/** Layer `layer`'s ring (its lengths in `lengths` when given), or null for a layer with global
 * attention. */
export function windowCache(
  device: Device,
  config: ModelConfig,
  layer: number,
  maxRows: number,
  lengths?: LengthsSlot,
): KvLayerCache | null {
  const window = layerWindow(config, layer);
  if (window === 0) return null;
  return KvLayerCache.create(device, {
    headDim: config.headDim,
    capRows: Array(config.nKvHeads).fill(ringRows(window, maxRows)),
    window,
    lengths,
  });
}

/**
 * Whether a ring can forget its last `drop` positions: the window before the new end must not
 * have been overwritten by the positions dropped (position p is overwritten by p + capacity).
 */
export function ringRewindable(cache: KvLayerCache, drop: number): boolean {
  if (cache.window === 0 || drop === 0) return true;
  const len = cache.lengths[0];
  if (len <= cache.minCapRows) return true;
  return drop <= cache.minCapRows - cache.window + 1;
}
