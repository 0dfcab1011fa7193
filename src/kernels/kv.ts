/**
 * The append kernel that writes new tokens' K and V into a layer's KV cache (layout:
 * src/cache/kv_layer.ts).
 */
import { HcError } from "../errors.ts";
import { checkHeadDim, type KvLayerCache } from "../cache/kv_layer.ts";
import { type Binding, type CommandList, type Device, type Kernel, pushLayout } from "../vk/mod.ts";
import { requireBytes, requireFloatOffset } from "./checks.ts";
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
    if (cache.headDim !== D) limit(`cache head dim ${cache.headDim} != kernel head dim ${D}`);
    const B = a.tokens;
    if (!Number.isInteger(B) || B < 1 || B > 1 << 20) limit(`append of ${B} tokens (1..2^20)`);
    const stride = a.tokenStride ?? cache.nKvHeads * D;
    const kOff = a.kOffset ?? 0;
    const vOff = a.vOffset ?? 0;
    requireFloatOffset(stride, "tokenStride");
    requireFloatOffset(kOff, "kOffset");
    requireFloatOffset(vOff, "vOffset");
    const need = (off: number) => (off + (B - 1) * stride + cache.nKvHeads * D) * 4;
    requireBytes(a.k, need(kOff), "K input");
    requireBytes(a.v, need(vOff), "V input");
    if (cache.window > 0 && B > cache.minCapRows) {
      // Within one dispatch the batch's own rows would overwrite one another.
      limit(`append of ${B} tokens to a ring of ${cache.minCapRows} rows`);
    }
    const items = 2 * B * (D / 8);
    const gx = Math.min(65535, Math.ceil(items / KvAppend.WORKGROUP));
    cache.layout.chunkHeads.forEach(([h0, h1], c) => {
      if (h1 <= h0) return;
      cmd.dispatch(
        this.#kernel,
        [a.k, a.v, cache.k[c], cache.v[c], cache.table, cache.lengthsBuffer],
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
