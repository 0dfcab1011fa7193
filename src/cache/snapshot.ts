/** The rows of a policy's device caches as session-file blobs, and back. */
import type { KvLayerCache } from "./kv_layer.ts";
import { badState } from "./policy.ts";

/**
 * Rows [0, length) of every head, layer by layer: K, then V (one blob each). A sliding-window
 * ring gives the positions it still holds, the last min(length, capacity), in position order, so
 * that a ring of another capacity can take them back.
 */
export function downloadRows(caches: readonly KvLayerCache[]): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (const cache of caches) {
    const rowBytes = cache.layout.rowBytes;
    for (let h = 0; h < cache.nKvHeads; h++) {
      const len = cache.lengths[h];
      const at = cache.location(h, 0);
      for (const side of ["k", "v"] as const) {
        if (cache.window === 0) {
          out.push(cache.device.download(at[side], at.byteOffset, len * rowBytes));
          continue;
        }
        const cap = cache.capRows(h);
        const n = Math.min(len, cap);
        const blob = new Uint8Array(n * rowBytes);
        ringRuns(len - n, n, cap).forEach(([row, count, into]) => {
          const part = cache.device.download(
            at[side],
            at.byteOffset + row * rowBytes,
            count * rowBytes,
          );
          blob.set(part, into * rowBytes);
        });
        out.push(blob);
      }
    }
  }
  return out;
}

/** Positions [first, first + n) of a ring of `cap` rows as runs of (row, count, index). */
function ringRuns(first: number, n: number, cap: number): [number, number, number][] {
  const runs: [number, number, number][] = [];
  for (let i = 0; i < n;) {
    const row = (first + i) % cap;
    const count = Math.min(n - i, cap - row);
    runs.push([row, count, i]);
    i += count;
  }
  return runs;
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
      if (cache.window === 0 && n > cache.capRows(h)) badRows(l, h);
      const at = cache.location(h, 0);
      for (const side of ["k", "v"] as const) {
        const b = blobs[i++];
        if (cache.window > 0) {
          // A ring's blob: its last positions, at least the window's (or all there are).
          const m = b ? b.byteLength / rowBytes : -1;
          if (!Number.isInteger(m) || m > n || m < Math.min(n, cache.window)) badRows(l, h);
          const keep = Math.min(m, cache.capRows(h));
          ringRuns(n - keep, keep, cache.capRows(h)).forEach(([row, count, into]) => {
            const from = (m - keep + into) * rowBytes;
            cache.device.upload(
              at[side],
              b.subarray(from, from + count * rowBytes),
              at.byteOffset + row * rowBytes,
            );
          });
          continue;
        }
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
