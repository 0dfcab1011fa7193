/**
 * Host KV store: the full K and V (f16, RoPE already applied) of every head that may be
 * refreshed, written once from the prefill caches and appended at every decode step. Each head
 * owns two preallocated arrays (prompt + generation), so a native gather thread can read prompt
 * rows while the JS thread appends decoded ones: no reallocation, disjoint rows.
 */
import { HcError } from "../../errors.ts";
import type { KvLayerCache } from "../kv_layer.ts";
import { f32ToF16Array } from "../../model/quant/mod.ts";
import type { Device } from "../../vk/mod.ts";

/** Largest host store this process will hold (bounds a hostile prompt or budget). */
const MAX_HOST_BYTES = 64 * 2 ** 30;

export interface HostHead {
  k: Uint8Array;
  v: Uint8Array;
  rows: number;
}

export class HostKvStore {
  readonly rowBytes: number;
  readonly #heads = new Map<string, HostHead>();
  #bytes = 0;

  constructor(headDim: number) {
    this.rowBytes = headDim * 2;
  }

  get bytes(): number {
    return this.#bytes;
  }

  /** Copies rows [0, promptTokens) of (layer, head) from a prefill cache; capacity for more. */
  capture(
    device: Device,
    cache: KvLayerCache,
    layer: number,
    head: number,
    promptTokens: number,
    capacityRows: number,
  ): void {
    const at = cache.location(head, 0);
    const n = promptTokens * this.rowBytes;
    this.restore(
      layer,
      head,
      device.download(at.k, at.byteOffset, n),
      device.download(at.v, at.byteOffset, n),
      promptTokens,
      capacityRows,
    );
  }

  /** Takes the first `rows` rows of k and v for (layer, head) (saved rows, or the prompt's
   * captured above), in arrays with capacity for `capacityRows` in all. */
  restore(
    layer: number,
    head: number,
    k: Uint8Array,
    v: Uint8Array,
    rows: number,
    capacityRows: number,
  ): void {
    const bytes = capacityRows * this.rowBytes;
    if (this.#bytes + 2 * bytes > MAX_HOST_BYTES) {
      throw new HcError(
        "E_VK_OOM",
        `the host KV store would exceed ${MAX_HOST_BYTES / 2 ** 30} GiB`,
      );
    }
    const hk = new Uint8Array(bytes);
    const hv = new Uint8Array(bytes);
    hk.set(k.subarray(0, rows * this.rowBytes));
    hv.set(v.subarray(0, rows * this.rowBytes));
    this.#heads.set(`${layer}/${head}`, { k: hk, v: hv, rows });
    this.#bytes += 2 * bytes;
  }

  head(layer: number, head: number): HostHead {
    const h = this.#heads.get(`${layer}/${head}`);
    if (!h) throw new HcError("E_BAD_REQUEST", `no host KV for layer ${layer} head ${head}`);
    return h;
  }

  /** Grows every head's arrays to hold `moreRows` rows past those it holds (a continued
   * conversation). No gather may be reading the store (the caller settles refreshes first). */
  reserve(moreRows: number): void {
    for (const h of this.#heads.values()) {
      const bytes = (h.rows + moreRows) * this.rowBytes;
      if (bytes <= h.k.byteLength) continue;
      const grow = 2 * (bytes - h.k.byteLength);
      if (this.#bytes + grow > MAX_HOST_BYTES) {
        throw new HcError(
          "E_VK_OOM",
          `the host KV store would exceed ${MAX_HOST_BYTES / 2 ** 30} GiB`,
        );
      }
      const k = new Uint8Array(bytes);
      const v = new Uint8Array(bytes);
      k.set(h.k.subarray(0, h.rows * this.rowBytes));
      v.set(h.v.subarray(0, h.rows * this.rowBytes));
      h.k = k;
      h.v = v;
      this.#bytes += grow;
    }
  }

  /** Forgets the last `rows` rows of (layer, head). */
  drop(layer: number, head: number, rows: number): void {
    const h = this.head(layer, head);
    h.rows = Math.max(0, h.rows - rows);
  }

  /** Rows (layer, head) holds (prompt + appended). */
  rows(layer: number, head: number): number {
    return this.head(layer, head).rows;
  }

  /** Appends one decoded token's row (f32 values, converted to f16). */
  append(layer: number, head: number, k: Float32Array, v: Float32Array): void {
    const h = this.head(layer, head);
    const at = h.rows * this.rowBytes;
    if (at + this.rowBytes > h.k.byteLength) return; // past the generation budget: nothing to keep
    // Converted straight into the store: no per-step copies on the decode path.
    f32ToF16Array(k, new Uint16Array(h.k.buffer, at, this.rowBytes / 2));
    f32ToF16Array(v, new Uint16Array(h.v.buffer, at, this.rowBytes / 2));
    h.rows++;
  }

  clear(): void {
    this.#heads.clear();
    this.#bytes = 0;
  }
}
