/**
 * GGUF writer (version 3 by default, little-endian), for tests and tools that need synthetic
 * models. Every value carries its stored type, so a round trip through the reader keeps it.
 */
import { HcError } from "../src/errors.ts";
import {
  GGUF_DEFAULT_ALIGNMENT,
  GGUF_MAGIC,
  type GgufValue,
  GgufValueType,
} from "../src/gguf/reader.ts";
import { ggmlBytes, ggmlTypeInfo } from "../src/gguf/types.ts";

type ScalarType = Exclude<GgufValueType, typeof GgufValueType.ARRAY>;

/** A metadata value with its stored type. Nested arrays give each inner array its own type. */
export type GgufTypedValue =
  | { type: ScalarType; value: GgufValue }
  | { type: typeof GgufValueType.ARRAY; elemType: ScalarType; value: readonly GgufValue[] }
  | {
    type: typeof GgufValueType.ARRAY;
    elemType: typeof GgufValueType.ARRAY;
    value: readonly GgufTypedArray[];
  };
export type GgufTypedArray = Extract<GgufTypedValue, { type: typeof GgufValueType.ARRAY }>;

export interface GgufWriteTensor {
  name: string;
  /** ggml type id. */
  type: number;
  /** ggml order: dims[0] is the row length. */
  dims: readonly number[];
  data: Uint8Array;
}

export interface GgufWriteSpec {
  /** Keys in insertion order. `general.alignment` is added when `alignment` is not 32. */
  metadata: Record<string, GgufTypedValue> | ReadonlyArray<readonly [string, GgufTypedValue]>;
  tensors?: readonly GgufWriteTensor[];
  alignment?: number;
  /** 3 (default) or 2; both have the same little-endian layout. */
  version?: 2 | 3;
}

/** Shorthand constructors for typed metadata values. */
export const gv = {
  u8: (value: number): GgufTypedValue => ({ type: GgufValueType.UINT8, value }),
  i8: (value: number): GgufTypedValue => ({ type: GgufValueType.INT8, value }),
  u16: (value: number): GgufTypedValue => ({ type: GgufValueType.UINT16, value }),
  i16: (value: number): GgufTypedValue => ({ type: GgufValueType.INT16, value }),
  u32: (value: number): GgufTypedValue => ({ type: GgufValueType.UINT32, value }),
  i32: (value: number): GgufTypedValue => ({ type: GgufValueType.INT32, value }),
  f32: (value: number): GgufTypedValue => ({ type: GgufValueType.FLOAT32, value }),
  bool: (value: boolean): GgufTypedValue => ({ type: GgufValueType.BOOL, value }),
  str: (value: string): GgufTypedValue => ({ type: GgufValueType.STRING, value }),
  u64: (value: number | bigint): GgufTypedValue => ({ type: GgufValueType.UINT64, value }),
  i64: (value: number | bigint): GgufTypedValue => ({ type: GgufValueType.INT64, value }),
  f64: (value: number): GgufTypedValue => ({ type: GgufValueType.FLOAT64, value }),
  arr: (elemType: ScalarType, value: readonly GgufValue[]): GgufTypedValue => ({
    type: GgufValueType.ARRAY,
    elemType,
    value,
  }),
  nested: (value: readonly GgufTypedArray[]): GgufTypedValue => ({
    type: GgufValueType.ARRAY,
    elemType: GgufValueType.ARRAY,
    value,
  }),
};

const encoder = new TextEncoder();

class ByteSink {
  #buf = new Uint8Array(4096);
  #view = new DataView(this.#buf.buffer);
  length = 0;

  #reserve(n: number): DataView {
    if (this.length + n > this.#buf.length) {
      let cap = this.#buf.length * 2;
      while (cap < this.length + n) cap *= 2;
      const next = new Uint8Array(cap);
      next.set(this.#buf.subarray(0, this.length));
      this.#buf = next;
      this.#view = new DataView(next.buffer);
    }
    return this.#view;
  }
  u8(v: number) {
    this.#reserve(1).setUint8(this.length, v);
    this.length += 1;
  }
  i8(v: number) {
    this.#reserve(1).setInt8(this.length, v);
    this.length += 1;
  }
  u16(v: number) {
    this.#reserve(2).setUint16(this.length, v, true);
    this.length += 2;
  }
  i16(v: number) {
    this.#reserve(2).setInt16(this.length, v, true);
    this.length += 2;
  }
  u32(v: number) {
    this.#reserve(4).setUint32(this.length, v, true);
    this.length += 4;
  }
  i32(v: number) {
    this.#reserve(4).setInt32(this.length, v, true);
    this.length += 4;
  }
  f32(v: number) {
    this.#reserve(4).setFloat32(this.length, v, true);
    this.length += 4;
  }
  f64(v: number) {
    this.#reserve(8).setFloat64(this.length, v, true);
    this.length += 8;
  }
  u64(v: number | bigint) {
    this.#reserve(8).setBigUint64(this.length, BigInt(v), true);
    this.length += 8;
  }
  i64(v: number | bigint) {
    this.#reserve(8).setBigInt64(this.length, BigInt(v), true);
    this.length += 8;
  }
  bytes(b: Uint8Array) {
    this.#reserve(b.length);
    this.#buf.set(b, this.length);
    this.length += b.length;
  }
  string(s: string) {
    const b = encoder.encode(s);
    this.u64(b.length);
    this.bytes(b);
  }
  padTo(alignment: number) {
    const target = Math.ceil(this.length / alignment) * alignment;
    this.#reserve(target - this.length);
    this.#buf.fill(0, this.length, target);
    this.length = target;
  }
  result(): Uint8Array {
    return this.#buf.slice(0, this.length);
  }
}

function bad(message: string): never {
  throw new HcError("E_GGUF_CORRUPT", `GGUF writer: ${message}`);
}

function writeScalar(out: ByteSink, type: ScalarType, v: GgufValue, key: string): void {
  const num = (): number => {
    if (typeof v !== "number") bad(`${key}: expected a number, got ${typeof v}`);
    return v;
  };
  const int = (): number | bigint => {
    if (typeof v !== "number" && typeof v !== "bigint") bad(`${key}: expected an integer`);
    return v;
  };
  switch (type) {
    case GgufValueType.UINT8:
      return out.u8(num());
    case GgufValueType.INT8:
      return out.i8(num());
    case GgufValueType.UINT16:
      return out.u16(num());
    case GgufValueType.INT16:
      return out.i16(num());
    case GgufValueType.UINT32:
      return out.u32(num());
    case GgufValueType.INT32:
      return out.i32(num());
    case GgufValueType.FLOAT32:
      return out.f32(num());
    case GgufValueType.FLOAT64:
      return out.f64(num());
    case GgufValueType.UINT64:
      return out.u64(int());
    case GgufValueType.INT64:
      return out.i64(int());
    case GgufValueType.BOOL:
      if (typeof v !== "boolean") bad(`${key}: expected a bool`);
      return out.u8(v ? 1 : 0);
    case GgufValueType.STRING:
      if (typeof v !== "string") bad(`${key}: expected a string`);
      return out.string(v);
  }
}

function writeArray(out: ByteSink, a: GgufTypedArray, key: string): void {
  out.u32(a.elemType);
  out.u64(a.value.length);
  if (a.elemType === GgufValueType.ARRAY) {
    for (const inner of a.value as readonly GgufTypedArray[]) writeArray(out, inner, key);
  } else {
    const t = a.elemType;
    for (const v of a.value as readonly GgufValue[]) writeScalar(out, t, v, key);
  }
}

/** Encodes a whole GGUF file in memory. */
export function encodeGguf(spec: GgufWriteSpec): Uint8Array {
  const alignment = spec.alignment ?? GGUF_DEFAULT_ALIGNMENT;
  if (!Number.isInteger(alignment) || alignment <= 0 || (alignment & (alignment - 1)) !== 0) {
    bad(`alignment ${alignment} is not a power of two`);
  }
  const entries: [string, GgufTypedValue][] = Array.isArray(spec.metadata)
    ? [...(spec.metadata as ReadonlyArray<readonly [string, GgufTypedValue]>)].map((
      [k, v],
    ) => [k, v])
    : Object.entries(spec.metadata as Record<string, GgufTypedValue>);
  if (alignment !== GGUF_DEFAULT_ALIGNMENT && !entries.some(([k]) => k === "general.alignment")) {
    entries.push(["general.alignment", { type: GgufValueType.UINT32, value: alignment }]);
  }
  const tensors = spec.tensors ?? [];
  const out = new ByteSink();
  out.u32(GGUF_MAGIC);
  out.u32(spec.version ?? 3);
  out.u64(tensors.length);
  out.u64(entries.length);
  for (const [key, tv] of entries) {
    out.string(key);
    out.u32(tv.type);
    if (tv.type === GgufValueType.ARRAY) writeArray(out, tv, key);
    else writeScalar(out, tv.type, tv.value, key);
  }
  let relOffset = 0;
  for (const t of tensors) {
    const elems = t.dims.reduce((a, b) => a * b, 1);
    const bytes = ggmlBytes(t.type, elems);
    if (!ggmlTypeInfo(t.type) || bytes === undefined) {
      bad(`tensor ${t.name}: type ${t.type} with dims [${t.dims}] is not a whole number of blocks`);
    }
    if (bytes !== t.data.length) {
      bad(`tensor ${t.name}: dims [${t.dims}] need ${bytes} bytes, data has ${t.data.length}`);
    }
    out.string(t.name);
    out.u32(t.dims.length);
    for (const d of t.dims) out.u64(d);
    out.u32(t.type);
    out.u64(relOffset);
    relOffset += Math.ceil(bytes / alignment) * alignment;
  }
  out.padTo(alignment);
  for (const t of tensors) {
    out.bytes(t.data);
    out.padTo(alignment);
  }
  return out.result();
}

/** Writes a GGUF file (see encodeGguf). */
export async function writeGguf(path: string | URL, spec: GgufWriteSpec): Promise<void> {
  await Deno.writeFile(path, encodeGguf(spec));
}
