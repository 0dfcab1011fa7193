/** Compute kernels: a named SPIR-V variant from build/spv plus its binding/push contract. */
import { HcError } from "../errors.ts";
import { check, native } from "./ffi.ts";
import type { Device } from "./device.ts";
import type { PushLayout } from "./push.ts";

/**
 * What a binding is in the shader: a storage buffer (default), or "texel": a read-only uniform
 * texel buffer seeing the range as R32G32B32A32_UINT texels, 16 bytes each (`usamplerBuffer` +
 * texelFetch). lavapipe fetches texels for all lanes with one vector gather but storage-buffer
 * data lane by lane. Texel bindings need the device's `texelBuffer` flag, an offset aligned to
 * minTexelBufferOffsetAlignment, a whole number of texels and at most maxTexelBufferElements.
 */
export type BindingKind = "storage" | "texel";
const BINDING_KIND_ID: Record<BindingKind, number> = { storage: 0, texel: 1 };
/** Bytes per texel of a texel binding. */
export const TEXEL_BYTES = 16;

export interface KernelOptions {
  /** Descriptors at set 0, bindings 0..n-1. */
  bindings: number;
  /** Kind of each binding (length `bindings`); default all "storage". */
  kinds?: readonly BindingKind[];
  /** The push-constant block by field name (push.ts); its size is what the kernel declares. */
  push?: PushLayout;
  /** Size of an untyped push-constant block (multiple of 4, at most 128), for a kernel without
   * a `push` layout (raw runtime use and its tests). */
  pushBytes?: number;
  /** uint32 specialization constants with ids 0..n-1 (workgroup size first, by convention). */
  spec?: number[];
}

const SPV_DIR = new URL("../../build/spv/", import.meta.url);
const spirvCache = new Map<string, Uint8Array>();

function dirUrl(dir: string): URL {
  return new URL(`file://${dir.replace(/\/?$/, "/")}`);
}

/** The SPIR-V of variant `name`: from `shaderDir` where it holds one (Device's option), else
 * from HC_SPV_DIR or build/spv. */
function loadSpirv(name: string, shaderDir?: string): Uint8Array {
  if (shaderDir) {
    const url = new URL(`${name}.spv`, dirUrl(shaderDir));
    const key = url.href;
    let code = spirvCache.get(key);
    if (!code) {
      try {
        code = Deno.readFileSync(url);
        spirvCache.set(key, code);
      } catch { /* not overridden: the built variant below */ }
    }
    if (code) return code;
  }
  let code = spirvCache.get(name);
  if (!code) {
    const dir = Deno.env.get("HC_SPV_DIR");
    const url = dir ? new URL(`${name}.spv`, dirUrl(dir)) : new URL(`${name}.spv`, SPV_DIR);
    try {
      code = Deno.readFileSync(url);
    } catch {
      throw new HcError(
        "E_SHADER_MISSING",
        `shader ${name} not found at ${url.pathname}; run \`deno task build\``,
      );
    }
    spirvCache.set(name, code);
  }
  return code;
}

const u64out = new BigUint64Array(1);

export class Kernel implements Disposable {
  readonly device: Device;
  readonly name: string;
  readonly handle: bigint;
  readonly bindings: number;
  readonly kinds: readonly BindingKind[];
  readonly pushBytes: number;
  #disposed = false;

  private constructor(
    device: Device,
    name: string,
    handle: bigint,
    kinds: readonly BindingKind[],
    pushBytes: number,
  ) {
    this.device = device;
    this.name = name;
    this.handle = handle;
    this.bindings = kinds.length;
    this.kinds = kinds;
    this.pushBytes = pushBytes;
  }

  get disposed(): boolean {
    return this.#disposed;
  }

  /** Uses the `<name>__sg` variant (subgroup reductions) when it was built and the device uses
   * subgroups (`Device.subgroups`); else the shared-memory fallback. */
  static create(device: Device, name: string, options: KernelOptions): Kernel {
    let code: Uint8Array;
    try {
      code = device.subgroups
        ? loadSpirv(`${name}__sg`, device.shaderDir)
        : loadSpirv(name, device.shaderDir);
    } catch {
      code = loadSpirv(name, device.shaderDir);
    }
    const spec = new Uint32Array(options.spec ?? []);
    if (options.push && options.pushBytes !== undefined) {
      throw new HcError("E_VK", `kernel ${name}: give push or pushBytes, not both`);
    }
    const push = options.push?.bytes ?? options.pushBytes ?? 0;
    const kinds = options.kinds ? [...options.kinds] : Array(options.bindings).fill("storage");
    if (
      kinds.length !== options.bindings || kinds.some((k) => !Object.hasOwn(BINDING_KIND_ID, k))
    ) {
      throw new HcError(
        "E_VK",
        `kernel ${name}: kinds must name one of ${
          Object.keys(BINDING_KIND_ID).join(", ")
        } for each of its ${options.bindings} bindings`,
      );
    }
    check(
      native().hc_kernel_create(
        device.handle,
        code,
        BigInt(code.byteLength),
        new Uint32Array(kinds.map((k) => BINDING_KIND_ID[k as BindingKind])),
        options.bindings,
        push,
        spec,
        spec.length,
        u64out,
      ),
      `creating kernel ${name}`,
    );
    return new Kernel(device, name, u64out[0], kinds, push);
  }

  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    check(native().hc_kernel_destroy(this.handle), `destroying kernel ${this.name}`);
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}
