/**
 * The kernels that write new tokens' K and V into a layer's KV cache (layout:
 * src/cache/kv_layer.ts): KvAppend (K already rotated) and RopeAppend (RoPE on q and k and the
 * append in one dispatch, what a layer's forward pass records).
 */
import { HcError } from "../errors.ts";
import { checkHeadDim, type KvLayerCache } from "../cache/kv_layer.ts";
import { type Binding, type CommandList, type Device, type Kernel, pushLayout } from "../vk/mod.ts";
import {
  badKernelArgs,
  checkInt,
  grid2d,
  lengthsBinding,
  requireBytes,
  requireFloatOffset,
} from "./checks.ts";
import type { RopeTable } from "./elementwise.ts";
import type { RopePairing } from "../model/config.ts";
import { SHADERS } from "../../shaders/variants.ts";

function limit(message: string): never {
  throw new HcError("E_VK_LIMIT", message);
}

export interface KvAppendArgs {
  cache: KvLayerCache;
  /** f32 K rows after RoPE: token t, KV head h at float `kOffset + t * tokenStride + h * headDim`. */
  k: Binding;
  v: Binding;
  kOffset?: number;
  vOffset?: number;
  /** Floats between consecutive tokens (default nKvHeads * headDim). */
  tokenStride?: number;
  /** Tokens appended to every head (1 for a decode step); the lengths already count them. */
  tokens: number;
}

/** Checks an append of `tokens` rows to every head of `cache` by a kernel of head dim `D`;
 * returns the token count. */
function checkAppend(cache: KvLayerCache, D: number, tokens: number): number {
  if (cache.headDim !== D) limit(`cache head dim ${cache.headDim} != kernel head dim ${D}`);
  if (!Number.isInteger(tokens) || tokens < 1 || tokens > 1 << 20) {
    limit(`append of ${tokens} tokens (1..2^20)`);
  }
  if (cache.window > 0 && tokens > cache.minCapRows) {
    // Within one dispatch the batch's own rows would overwrite one another.
    limit(`append of ${tokens} tokens to a ring of ${cache.minCapRows} rows`);
  }
  return tokens;
}

/** shaders/kv_append.comp's push block. */
const KV_APPEND_PUSH = pushLayout({
  headBase: "u32",
  tokens: "u32",
  kOff4: "u32",
  vOff4: "u32",
  tokStride4: "u32",
  ring: "u32",
});

/** Writes new tokens' K and V into every head's next rows (f32 in, f16 out). */
export class KvAppend implements Disposable {
  readonly headDim: number;
  readonly #kernel: Kernel;
  static readonly WORKGROUP = 64;

  constructor(device: Device, opts: { headDim: number }) {
    checkHeadDim(opts.headDim);
    this.headDim = opts.headDim;
    this.#kernel = device.kernel(SHADERS.kv_append.variant(), {
      bindings: 6,
      push: KV_APPEND_PUSH,
      spec: [KvAppend.WORKGROUP, opts.headDim],
    });
  }

  record(cmd: CommandList, a: KvAppendArgs): this {
    const { cache } = a;
    const D = this.headDim;
    const B = checkAppend(cache, D, a.tokens);
    const stride = a.tokenStride ?? cache.nKvHeads * D;
    const kOff = a.kOffset ?? 0;
    const vOff = a.vOffset ?? 0;
    requireFloatOffset(stride, "tokenStride");
    requireFloatOffset(kOff, "kOffset");
    requireFloatOffset(vOff, "vOffset");
    const need = (off: number) => (off + (B - 1) * stride + cache.nKvHeads * D) * 4;
    requireBytes(a.k, need(kOff), "K input");
    requireBytes(a.v, need(vOff), "V input");
    const lens = lengthsBinding(cmd, cache);
    const items = 2 * B * (D / 8);
    const gx = Math.min(65535, Math.ceil(items / KvAppend.WORKGROUP));
    cache.layout.chunkHeads.forEach(([h0, h1], c) => {
      if (h1 <= h0) return;
      cmd.dispatch(
        this.#kernel,
        [a.k, a.v, cache.k[c], cache.v[c], cache.table, lens],
        KV_APPEND_PUSH.pack({
          headBase: h0,
          tokens: B,
          kOff4: kOff / 4,
          vOff4: vOff / 4,
          tokStride4: stride / 4,
          ring: cache.window > 0 ? 1 : 0,
        }),
        [gx, h1 - h0],
      );
    });
    return this;
  }

  dispose(): void {
    this.#kernel.dispose();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

export interface RopeAppendArgs {
  cache: KvLayerCache;
  /** f32 q rows, `nHeads` heads per token, rotated in place. */
  q: Binding;
  /** f32 k rows (every KV head of the cache per token), rotated in place and appended. */
  k: Binding;
  /** f32 v rows, appended. */
  v: Binding;
  nHeads: number;
  tokens: number;
  table: RopeTable;
  /** u32 buffer: token t is at position positions[0] + t. */
  positions: Binding;
  pairing: RopePairing;
  /** YaRN's magnitude scale of the rotated q and k (default 1: none). */
  mscale?: number;
}

/** shaders/rope_append.comp's push block. */
const ROPE_APPEND_PUSH = pushLayout({
  tokens: "u32",
  nHeads: "u32",
  headBase: "u32",
  kvHeads: "u32",
  qStride: "u32",
  kvStride: "u32",
  flags: "u32",
  mscale: "f32",
});

/**
 * RoPE on q and k, then k and v appended to the cache (f16), in one dispatch per cache chunk:
 * what rope.comp twice and kv_append.comp compute, with one barrier after it instead of two.
 */
export class RopeAppend implements Disposable {
  readonly headDim: number;
  readonly #device: Device;
  readonly #kernel: Kernel;
  static readonly WORKGROUP = 64;

  constructor(device: Device, opts: { headDim: number }) {
    checkHeadDim(opts.headDim);
    this.headDim = opts.headDim;
    this.#device = device;
    this.#kernel = device.kernel(SHADERS.rope_append.variant(), {
      bindings: 9,
      push: ROPE_APPEND_PUSH,
      spec: [RopeAppend.WORKGROUP, opts.headDim],
    });
  }

  record(cmd: CommandList, a: RopeAppendArgs): this {
    const { cache } = a;
    const D = this.headDim;
    const B = checkAppend(cache, D, a.tokens);
    const heads = checkInt(a.nHeads, "nHeads", 1);
    if (a.table.pairs !== D / 2) {
      badKernelArgs(`RoPE table has ${a.table.pairs} pairs, headDim ${D} needs ${D / 2}`);
    }
    if (a.pairing !== "adjacent" && a.pairing !== "halves") badKernelArgs(`pairing ${a.pairing}`);
    const mscale = a.mscale ?? 1;
    if (!Number.isFinite(mscale)) badKernelArgs(`mscale ${mscale}`);
    const kvStride = cache.nKvHeads * D;
    requireBytes(a.q, B * heads * D * 4, "q");
    requireBytes(a.k, B * kvStride * 4, "K input");
    requireBytes(a.v, B * kvStride * 4, "V input");
    requireBytes(a.positions, 4, "positions");
    const lens = lengthsBinding(cmd, cache);
    const flags = (a.pairing === "halves" ? 1 : 0) | (cache.window > 0 ? 2 : 0) |
      (mscale !== 1 ? 4 : 0);
    let first = true;
    cache.layout.chunkHeads.forEach(([h0, h1], c) => {
      if (h1 <= h0) return;
      const qHeads = first ? heads : 0;
      first = false;
      const items = B * (qHeads + 2 * (h1 - h0)) * (D / 4);
      if (items > 0xffff_ffff) limit(`a RoPE and append of ${items} items`);
      cmd.dispatch(
        this.#kernel,
        [
          a.q,
          a.k,
          a.v,
          cache.k[c],
          cache.v[c],
          a.table.buffer,
          a.positions,
          cache.table,
          lens,
        ],
        ROPE_APPEND_PUSH.pack({
          tokens: B,
          nHeads: qHeads,
          headBase: h0,
          kvHeads: h1 - h0,
          qStride: heads * D,
          kvStride,
          flags,
          mscale,
        }),
        grid2d(this.#device, Math.ceil(items / RopeAppend.WORKGROUP)),
      );
    });
    return this;
  }

  [Symbol.dispose](): void {
    this.#kernel.dispose();
  }
}
