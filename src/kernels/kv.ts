/**
 * The append kernel that writes new tokens' K and V into a layer's KV cache (layout:
 * src/cache/kv_layer.ts), and the binding checks the kernel wrappers share.
 */
import { HcError } from "../errors.ts";
import { checkHeadDim, type KvLayerCache } from "../cache/kv_layer.ts";
import type { Binding, CommandList, Device, Kernel } from "../vk/mod.ts";

function limit(message: string): never {
  throw new HcError("E_VK_LIMIT", message);
}

/** Bytes of a binding (whole buffer or window). */
export function bindingBytes(b: Binding): number {
  if ("buffer" in b) return b.bytes ?? b.buffer.bytes - b.offset;
  return b.bytes;
}

export function requireBytes(b: Binding, bytes: number, what: string): void {
  const have = bindingBytes(b);
  if (have < bytes) limit(`${what}: binding holds ${have} bytes, needs ${bytes}`);
}

export function requireFloatOffset(value: number, what: string): void {
  if (!Number.isInteger(value) || value < 0 || value % 4 !== 0) {
    limit(`${what} must be a non-negative multiple of 4 floats (16 bytes), got ${value}`);
  }
}

/** Workgroup budget for split work: CPU drivers have few cores, GPUs many compute units. */
export function deviceParallelism(device: Device): { cpu: boolean; targetGroups: number } {
  const cpu = device.info.type === "cpu";
  return { cpu, targetGroups: cpu ? Math.max(4, 4 * navigator.hardwareConcurrency) : 1024 };
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

/** Writes new tokens' K and V into every head's next rows (f32 in, f16 out). */
export class KvAppend implements Disposable {
  readonly headDim: number;
  readonly #kernel: Kernel;
  static readonly WORKGROUP = 64;

  constructor(device: Device, opts: { headDim: number }) {
    checkHeadDim(opts.headDim);
    this.headDim = opts.headDim;
    this.#kernel = device.kernel("kv_append", {
      bindings: 6,
      pushBytes: 20,
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
    const items = 2 * B * (D / 8);
    const gx = Math.min(65535, Math.ceil(items / KvAppend.WORKGROUP));
    cache.layout.chunkHeads.forEach(([h0, h1], c) => {
      if (h1 <= h0) return;
      const push = new Uint32Array([h0, B, kOff / 4, vOff / 4, stride / 4]);
      cmd.dispatch(
        this.#kernel,
        [a.k, a.v, cache.k[c], cache.v[c], cache.table, cache.lengthsBuffer],
        push,
        [
          gx,
          h1 - h0,
        ],
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
