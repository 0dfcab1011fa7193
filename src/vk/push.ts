/**
 * Typed push-constant layouts: a kernel's push block described once by field name and scalar
 * type, in the order of the shader's `layout(push_constant)` block, with the byte offsets and
 * size derived. Every field is a 4-byte scalar (the shaders use no vectors or 64-bit values in
 * their push blocks), so field i sits at byte 4·i and std430 adds no padding.
 *
 *   const PUSH = pushLayout({ n: "u32", eps: "f32" });
 *   device.kernel("rmsnorm", { bindings: 3, push: PUSH, spec: [256] });
 *   cmd.dispatch(kernel, bindings, PUSH.pack({ n: 4096, eps: 1e-5 }), groups);
 */
import { HcError } from "../errors.ts";

/** Scalar types of push-constant fields: GLSL uint, int and float. */
export type PushScalar = "u32" | "i32" | "f32";

/** Field name -> scalar type, in the order of the shader's block. */
export type PushFields = Readonly<Record<string, PushScalar>>;

/** Values for every field of a layout, by name. */
export type PushValues<F extends PushFields> = { readonly [K in keyof F]: number };

/** Most push-constant bytes the runtime accepts (Vulkan guarantees at least 128). */
export const MAX_PUSH_BYTES = 128;

const SCALAR_BYTES = 4;

export class PushLayout<F extends PushFields = PushFields> {
  readonly fields: F;
  /** Byte offset of each field. */
  readonly offsets: { readonly [K in keyof F]: number };
  /** Size of the block, what Kernel.create declares. */
  readonly bytes: number;
  readonly #names: readonly (keyof F & string)[];

  constructor(fields: F) {
    const names = Object.keys(fields) as (keyof F & string)[];
    if (names.length === 0) throw new HcError("E_VK", "push layout: no fields");
    const offsets = {} as Record<keyof F, number>;
    names.forEach((name, i) => {
      if (!["u32", "i32", "f32"].includes(fields[name])) {
        throw new HcError("E_VK", `push layout: field ${name} has type ${fields[name]}`);
      }
      offsets[name] = i * SCALAR_BYTES;
    });
    const bytes = names.length * SCALAR_BYTES;
    if (bytes > MAX_PUSH_BYTES) {
      throw new HcError("E_VK", `push layout: ${bytes} bytes exceed ${MAX_PUSH_BYTES}`);
    }
    this.fields = fields;
    this.offsets = offsets;
    this.bytes = bytes;
    this.#names = names;
  }

  /** The block for `values`, packed by field name. u32 and i32 fields take a number modulo
   * 2^32 as a typed-array store does (so -1 is 0xffffffff); f32 fields round to float. */
  pack(values: PushValues<F>): Uint8Array {
    const out = new Uint8Array(this.bytes);
    const view = new DataView(out.buffer);
    for (const name of this.#names) {
      const v = values[name];
      if (typeof v !== "number") {
        throw new HcError("E_VK", `push layout: no value for field ${name}`);
      }
      const at = this.offsets[name];
      switch (this.fields[name]) {
        case "u32":
          view.setUint32(at, v, true);
          break;
        case "i32":
          view.setInt32(at, v, true);
          break;
        case "f32":
          view.setFloat32(at, v, true);
          break;
      }
    }
    return out;
  }
}

/** A push layout from field name -> type, in block order (see the file header). */
export function pushLayout<const F extends PushFields>(fields: F): PushLayout<F> {
  return new PushLayout(fields);
}
