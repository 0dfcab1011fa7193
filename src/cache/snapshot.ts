/** The rows of a policy's device caches as session-file blobs, and back. */
import type { KvLayerCache } from "./kv_layer.ts";
import { badState } from "./policy.ts";

/** Rows [0, length) of every head, layer by layer: K, then V (one blob each). */
export function downloadRows(caches: readonly KvLayerCache[]): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (const cache of caches) {
    const rowBytes = cache.layout.rowBytes;
    for (let h = 0; h < cache.nKvHeads; h++) {
      const n = cache.lengths[h];
      const at = cache.location(h, 0);
      out.push(cache.device.download(at.k, at.byteOffset, n * rowBytes));
      out.push(cache.device.download(at.v, at.byteOffset, n * rowBytes));
    }
  }
  return out;
}

/** Writes blobs from `first` on (downloadRows' order) into `caches`, whose lengths become
 * `lengths`; returns the index of the next blob. */
export function uploadRows(
  caches: readonly KvLayerCache[],
  lengths: readonly (readonly number[])[],
  blobs: readonly Uint8Array[],
  first: number,
): number {
  let i = first;
  caches.forEach((cache, l) => {
    const rowBytes = cache.layout.rowBytes;
    for (let h = 0; h < cache.nKvHeads; h++) {
      const n = lengths[l][h];
      if (n > cache.capRows(h)) badRows(l, h);
      const at = cache.location(h, 0);
      for (const side of ["k", "v"] as const) {
        const b = blobs[i++];
        if (!b || b.byteLength !== n * rowBytes) badRows(l, h);
        if (n > 0) cache.device.upload(at[side], b, at.byteOffset);
      }
    }
    cache.setLengths(lengths[l]);
  });
  return i;
}

function badRows(layer: number, head: number): never {
  throw badState(`the rows of layer ${layer} head ${head} do not fit its cache`);
}
