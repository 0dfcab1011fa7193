/**
 * GGUF reader (format versions 2 and 3, little-endian). The header is parsed from the file in
 * growing chunks; tensor data is read later by byte range, straight from the file.
 *
 * Every count and length in the header is checked against the bytes left in the file (and a hard
 * cap) before anything is allocated for it, so a hostile file ends in an HcError, never in a
 * crash, a hang or an allocation sized by its claims.
 */
import { HcError, type HcErrorCode } from "../errors.ts";
import { ggmlBytes, ggmlTypeInfo } from "./types.ts";
import { RandomAccessFile } from "./random_access_file.ts";

export { RandomAccessFile };

export const GGUF_MAGIC = 0x46554747; // "GGUF" read as a little-endian u32
export const GGUF_DEFAULT_ALIGNMENT = 32;

/** Metadata value type ids (gguf.h `enum gguf_type`). */
export const GgufValueType = {
  UINT8: 0,
  INT8: 1,
  UINT16: 2,
  INT16: 3,
  UINT32: 4,
  INT32: 5,
  FLOAT32: 6,
  BOOL: 7,
  STRING: 8,
  ARRAY: 9,
  UINT64: 10,
  INT64: 11,
  FLOAT64: 12,
} as const;
export type GgufValueType = (typeof GgufValueType)[keyof typeof GgufValueType];

/**
 * A metadata value. Integers of every width and floats are `number`, except u64/i64 values whose
 * magnitude exceeds Number.MAX_SAFE_INTEGER (2^53 - 1), which are `bigint`. Arrays (nested ones
 * too) are plain JS arrays, never typed arrays.
 */
export type GgufValue = number | bigint | boolean | string | GgufValue[];

/** The stored type of a metadata value; `elemType` is set for arrays (their element type). */
export interface GgufValueTypeInfo {
  type: GgufValueType;
  elemType?: GgufValueType;
}

export interface GgufTensorInfo {
  name: string;
  /** ggml type id (see GgmlType in types.ts). */
  type: number;
  /** ggml order: dims[0] is the row length (the fastest-varying dimension). */
  dims: number[];
  elems: number;
  /** Absolute byte offset of the tensor's data in the file. */
  offset: number;
  bytes: number;
}

export interface GgufHeader {
  version: number;
  metadata: Map<string, GgufValue>;
  metadataTypes: Map<string, GgufValueTypeInfo>;
  /** In file order. */
  tensors: GgufTensorInfo[];
  alignment: number;
  /** Absolute offset of the tensor data section. */
  dataOffset: number;
  fileSizeBytes: number;
}

/** Caps on claims no real model makes; past them a file is called corrupt. */
export const GGUF_LIMITS = {
  maxStringBytes: 64 << 20,
  maxArrayElems: 1 << 26,
  maxMetadataKeys: 1 << 20,
  maxTensors: 1 << 20,
  maxArrayNesting: 8,
  maxDims: 4,
  maxHeaderBytes: 1 << 30,
} as const;

/** Thrown inside the parser when the header continues past the bytes read so far. */
class NeedMoreBytes {
  constructor(readonly uptoBytes: number) {}
}

const decoder = new TextDecoder("utf-8");
const MIN_VALUE_BYTES: Record<number, number> = {
  0: 1,
  1: 1,
  2: 2,
  3: 2,
  4: 4,
  5: 4,
  6: 4,
  7: 1,
  8: 8,
  9: 12,
  10: 8,
  11: 8,
  12: 8,
};

class Cursor {
  readonly view: DataView;
  pos = 0;
  constructor(readonly bytes: Uint8Array, readonly fileSizeBytes: number) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  get remaining(): number {
    return this.fileSizeBytes - this.pos;
  }

  need(n: number, what: string): void {
    const end = this.pos + n;
    if (end > this.fileSizeBytes) {
      fail(
        "E_GGUF_TRUNCATED",
        `file ends inside ${what} (needs byte ${end}, has ${this.fileSizeBytes})`,
      );
    }
    if (end > this.bytes.length) throw new NeedMoreBytes(end);
  }

  u8(what: string): number {
    this.need(1, what);
    return this.view.getUint8(this.pos++);
  }
  u32(what: string): number {
    this.need(4, what);
    const v = this.view.getUint32(this.pos, true);
    this.pos += 4;
    return v;
  }
  u64(what: string): bigint {
    this.need(8, what);
    const v = this.view.getBigUint64(this.pos, true);
    this.pos += 8;
    return v;
  }

  /** A u64 count of items of at least `minItemBytes` each, bounded before use. */
  count(what: string, minItemBytes: number, cap: number): number {
    const raw = this.u64(what);
    if (raw > BigInt(cap)) fail("E_GGUF_CORRUPT", `${what} is ${raw}, more than the limit ${cap}`);
    const n = Number(raw);
    if (n * minItemBytes > this.remaining) {
      fail(
        "E_GGUF_TRUNCATED",
        `${what} is ${n}, which needs at least ${n * minItemBytes} bytes but only ` +
          `${this.remaining} remain in the file`,
      );
    }
    return n;
  }

  string(what: string): string {
    const len = this.count(`${what} length`, 1, GGUF_LIMITS.maxStringBytes);
    this.need(len, what);
    const start = this.pos;
    this.pos += len;
    return decodeUtf8(this.bytes, start, len);
  }
}

function decodeUtf8(bytes: Uint8Array, start: number, len: number): string {
  // Most keys and tokens are short ASCII; String.fromCharCode avoids a TextDecoder call per token.
  if (len <= 32) {
    let ascii = true;
    for (let i = 0; i < len; i++) {
      if (bytes[start + i] >= 0x80) {
        ascii = false;
        break;
      }
    }
    if (ascii) return String.fromCharCode(...bytes.subarray(start, start + len));
  }
  return decoder.decode(bytes.subarray(start, start + len));
}

function fail(code: HcErrorCode, message: string): never {
  throw new HcError(code, `GGUF: ${message}`);
}

function isValueType(t: number): t is GgufValueType {
  return Number.isInteger(t) && t >= 0 && t <= 12;
}

function u64ToValue(v: bigint): number | bigint {
  return v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
}

function i64ToValue(v: bigint): number | bigint {
  return v <= BigInt(Number.MAX_SAFE_INTEGER) && v >= -BigInt(Number.MAX_SAFE_INTEGER)
    ? Number(v)
    : v;
}

function readScalar(c: Cursor, type: GgufValueType, what: string): GgufValue {
  const v = c.view;
  switch (type) {
    case GgufValueType.UINT8:
      return c.u8(what);
    case GgufValueType.INT8:
      c.need(1, what);
      return v.getInt8(c.pos++);
    case GgufValueType.UINT16:
      c.need(2, what);
      c.pos += 2;
      return v.getUint16(c.pos - 2, true);
    case GgufValueType.INT16:
      c.need(2, what);
      c.pos += 2;
      return v.getInt16(c.pos - 2, true);
    case GgufValueType.UINT32:
      return c.u32(what);
    case GgufValueType.INT32:
      c.need(4, what);
      c.pos += 4;
      return v.getInt32(c.pos - 4, true);
    case GgufValueType.FLOAT32:
      c.need(4, what);
      c.pos += 4;
      return v.getFloat32(c.pos - 4, true);
    case GgufValueType.BOOL:
      return c.u8(what) !== 0;
    case GgufValueType.STRING:
      return c.string(what);
    case GgufValueType.UINT64:
      return u64ToValue(c.u64(what));
    case GgufValueType.INT64:
      c.need(8, what);
      c.pos += 8;
      return i64ToValue(v.getBigInt64(c.pos - 8, true));
    case GgufValueType.FLOAT64:
      c.need(8, what);
      c.pos += 8;
      return v.getFloat64(c.pos - 8, true);
    case GgufValueType.ARRAY:
      return readArray(c, what, 1).value;
  }
}

function readArray(
  c: Cursor,
  what: string,
  depth: number,
): { value: GgufValue[]; elemType: GgufValueType } {
  if (depth > GGUF_LIMITS.maxArrayNesting) {
    fail("E_GGUF_CORRUPT", `${what}: arrays nested deeper than ${GGUF_LIMITS.maxArrayNesting}`);
  }
  const elemType = c.u32(`${what} array element type`);
  if (!isValueType(elemType)) {
    fail("E_GGUF_CORRUPT", `${what}: unknown array element type ${elemType}`);
  }
  const n = c.count(`${what} array length`, MIN_VALUE_BYTES[elemType], GGUF_LIMITS.maxArrayElems);
  const out: GgufValue[] = new Array(n);
  for (let i = 0; i < n; i++) {
    out[i] = elemType === GgufValueType.ARRAY
      ? readArray(c, what, depth + 1).value
      : readScalar(c, elemType, what);
  }
  return { value: out, elemType };
}

function alignUp(n: number, alignment: number): number {
  return Math.ceil(n / alignment) * alignment;
}

function parseOrNeedMore(bytes: Uint8Array, fileSizeBytes: number): GgufHeader {
  const c = new Cursor(bytes, fileSizeBytes);
  if (fileSizeBytes < 4) {
    fail("E_GGUF_TRUNCATED", `file has ${fileSizeBytes} bytes, too short for GGUF`);
  }
  const magic = c.u32("magic");
  if (magic !== GGUF_MAGIC) {
    fail("E_GGUF_MAGIC", `not a GGUF file (magic 0x${magic.toString(16).padStart(8, "0")})`);
  }
  const version = c.u32("version");
  if (version !== 2 && version !== 3) {
    const hint = (version === 0x02000000 || version === 0x03000000) ? " (big-endian file)" : "";
    fail("E_GGUF_VERSION", `unsupported GGUF version ${version}${hint}; versions 2 and 3 are read`);
  }
  // A tensor info takes at least 24 bytes (empty name, one dim, type, offset); a key-value 13.
  const nTensors = c.count("tensor count", 24, GGUF_LIMITS.maxTensors);
  const nKv = c.count("metadata key count", 13, GGUF_LIMITS.maxMetadataKeys);

  const metadata = new Map<string, GgufValue>();
  const metadataTypes = new Map<string, GgufValueTypeInfo>();
  for (let i = 0; i < nKv; i++) {
    const key = c.string(`metadata key #${i}`);
    if (metadata.has(key)) fail("E_GGUF_CORRUPT", `metadata key ${key} appears twice`);
    const type = c.u32(`type of metadata ${key}`);
    if (!isValueType(type)) {
      fail("E_GGUF_CORRUPT", `metadata ${key} has unknown value type ${type}`);
    }
    if (type === GgufValueType.ARRAY) {
      const { value, elemType } = readArray(c, `metadata ${key}`, 1);
      metadata.set(key, value);
      metadataTypes.set(key, { type, elemType });
    } else {
      metadata.set(key, readScalar(c, type, `metadata ${key}`));
      metadataTypes.set(key, { type });
    }
  }

  let alignment = GGUF_DEFAULT_ALIGNMENT;
  const alignValue = metadata.get("general.alignment");
  if (alignValue !== undefined) {
    if (
      typeof alignValue !== "number" || !Number.isInteger(alignValue) || alignValue <= 0 ||
      alignValue > 1 << 30 || (alignValue & (alignValue - 1)) !== 0
    ) {
      fail("E_GGUF_CORRUPT", `general.alignment ${String(alignValue)} is not a power of two`);
    }
    alignment = alignValue;
  }

  const tensors: GgufTensorInfo[] = [];
  const relOffsets: number[] = [];
  const names = new Set<string>();
  for (let i = 0; i < nTensors; i++) {
    const name = c.string(`name of tensor #${i}`);
    if (names.has(name)) fail("E_GGUF_CORRUPT", `tensor ${name} appears twice`);
    names.add(name);
    const nDims = c.u32(`dimension count of tensor ${name}`);
    if (nDims < 1 || nDims > GGUF_LIMITS.maxDims) {
      fail("E_GGUF_CORRUPT", `tensor ${name} has ${nDims} dimensions (1..${GGUF_LIMITS.maxDims})`);
    }
    const dims: number[] = [];
    let elems = 1;
    for (let d = 0; d < nDims; d++) {
      const raw = c.u64(`dimension ${d} of tensor ${name}`);
      if (raw > BigInt(Number.MAX_SAFE_INTEGER)) {
        fail("E_GGUF_CORRUPT", `tensor ${name} dimension ${d} is ${raw}, too large`);
      }
      const dim = Number(raw);
      dims.push(dim);
      elems *= dim;
      if (elems > Number.MAX_SAFE_INTEGER) {
        fail("E_GGUF_CORRUPT", `tensor ${name} dims [${dims}] overflow the element count`);
      }
    }
    const type = c.u32(`type of tensor ${name}`);
    const info = ggmlTypeInfo(type);
    if (!info) fail("E_GGUF_TYPE", `tensor ${name} has unknown ggml type ${type}`);
    if (dims[0] % info.blockElems !== 0) {
      fail(
        "E_GGUF_CORRUPT",
        `tensor ${name}: row length ${dims[0]} is not a multiple of the ${info.name} block ` +
          `(${info.blockElems})`,
      );
    }
    const bytes = ggmlBytes(type, elems);
    if (bytes === undefined) {
      fail("E_GGUF_CORRUPT", `tensor ${name}: ${elems} elements do not fill ${info.name} blocks`);
    }
    const rawOffset = c.u64(`offset of tensor ${name}`);
    if (rawOffset > BigInt(Number.MAX_SAFE_INTEGER)) {
      fail("E_GGUF_CORRUPT", `tensor ${name} offset ${rawOffset} is too large`);
    }
    const rel = Number(rawOffset);
    if (rel % alignment !== 0) {
      fail(
        "E_GGUF_CORRUPT",
        `tensor ${name} offset ${rel} is not a multiple of the alignment ${alignment}`,
      );
    }
    relOffsets.push(rel);
    tensors.push({ name, type, dims, elems, offset: 0, bytes });
  }

  const dataOffset = alignUp(c.pos, alignment);
  for (let i = 0; i < tensors.length; i++) {
    const t = tensors[i];
    t.offset = dataOffset + relOffsets[i];
    if (t.offset + t.bytes > fileSizeBytes) {
      fail(
        "E_GGUF_TRUNCATED",
        `tensor ${t.name} occupies bytes ${t.offset}..${t.offset + t.bytes} but the file has ` +
          `${fileSizeBytes} bytes (truncated, or a corrupt offset or shape)`,
      );
    }
  }
  const byOffset = [...tensors].sort((a, b) => a.offset - b.offset);
  for (let i = 1; i < byOffset.length; i++) {
    const prev = byOffset[i - 1];
    const cur = byOffset[i];
    if (cur.offset < prev.offset + prev.bytes) {
      fail(
        "E_GGUF_CORRUPT",
        `tensor ${cur.name} (offset ${cur.offset}) overlaps tensor ${prev.name} ` +
          `(bytes ${prev.offset}..${prev.offset + prev.bytes}); a shape or offset is wrong`,
      );
    }
  }
  return { version, metadata, metadataTypes, tensors, alignment, dataOffset, fileSizeBytes };
}

/**
 * Parses a GGUF header from `bytes`, the first bytes of a file of `fileSizeBytes` bytes. Throws
 * E_GGUF_TRUNCATED if the header goes past the end of `bytes`.
 */
export function parseGgufHeader(bytes: Uint8Array, fileSizeBytes = bytes.length): GgufHeader {
  try {
    return parseOrNeedMore(bytes, Math.max(fileSizeBytes, 0));
  } catch (e) {
    if (e instanceof NeedMoreBytes) {
      fail(
        "E_GGUF_TRUNCATED",
        `header continues past the ${bytes.length} bytes given (to ${e.uptoBytes})`,
      );
    }
    throw e;
  }
}
/** An open GGUF file: its parsed header plus range reads of tensor data. */
export class GgufFile implements Disposable {
  readonly path: string;
  readonly version: number;
  readonly metadata: Map<string, GgufValue>;
  readonly metadataTypes: Map<string, GgufValueTypeInfo>;
  readonly tensors: GgufTensorInfo[];
  readonly alignment: number;
  readonly dataOffset: number;
  readonly fileSizeBytes: number;
  readonly #file: RandomAccessFile;
  readonly #byName: Map<string, GgufTensorInfo>;

  constructor(header: GgufHeader, file: RandomAccessFile) {
    this.path = file.path;
    this.version = header.version;
    this.metadata = header.metadata;
    this.metadataTypes = header.metadataTypes;
    this.tensors = header.tensors;
    this.alignment = header.alignment;
    this.dataOffset = header.dataOffset;
    this.fileSizeBytes = header.fileSizeBytes;
    this.#file = file;
    this.#byName = new Map(header.tensors.map((t) => [t.name, t]));
  }

  tensor(name: string): GgufTensorInfo | undefined {
    return this.#byName.get(name);
  }

  get(key: string): GgufValue | undefined {
    return this.metadata.get(key);
  }

  /** undefined when absent; E_GGUF_CORRUPT when present with another type. */
  getString(key: string): string | undefined {
    const v = this.metadata.get(key);
    if (v === undefined || typeof v === "string") return v;
    return wrongType(key, "a string", v);
  }

  /** Any integer or float type; a u64/i64 beyond 2^53 is E_GGUF_CORRUPT here. */
  getNumber(key: string): number | undefined {
    const v = this.metadata.get(key);
    if (v === undefined || typeof v === "number") return v;
    return wrongType(key, "a number", v);
  }

  getBool(key: string): boolean | undefined {
    const v = this.metadata.get(key);
    if (v === undefined || typeof v === "boolean") return v;
    return wrongType(key, "a bool", v);
  }

  getArray(key: string): GgufValue[] | undefined {
    const v = this.metadata.get(key);
    if (v === undefined || Array.isArray(v)) return v;
    return wrongType(key, "an array", v);
  }

  getStringArray(key: string): string[] | undefined {
    const v = this.getArray(key);
    if (v === undefined || v.every((x) => typeof x === "string")) return v as string[] | undefined;
    return wrongType(key, "an array of strings", v);
  }

  getNumberArray(key: string): number[] | undefined {
    const v = this.getArray(key);
    if (v === undefined || v.every((x) => typeof x === "number")) return v as number[] | undefined;
    return wrongType(key, "an array of numbers", v);
  }

  /** Like getString, but a missing key is E_GGUF_CORRUPT naming it. */
  requireString(key: string): string {
    return this.getString(key) ?? missing(key);
  }

  requireNumber(key: string): number {
    return this.getNumber(key) ?? missing(key);
  }

  /** Reads dst.length bytes of the tensor, starting `srcOffsetBytes` into its data. */
  async readInto(info: GgufTensorInfo, dst: Uint8Array, srcOffsetBytes = 0): Promise<void> {
    checkTensorRange(info, dst.length, srcOffsetBytes);
    await this.#file.read(dst, info.offset + srcOffsetBytes);
  }

  readIntoSync(info: GgufTensorInfo, dst: Uint8Array, srcOffsetBytes = 0): void {
    checkTensorRange(info, dst.length, srcOffsetBytes);
    this.#file.readSync(dst, info.offset + srcOffsetBytes);
  }

  /** The whole tensor's bytes in a fresh buffer. */
  async readTensor(info: GgufTensorInfo): Promise<Uint8Array> {
    const dst = new Uint8Array(info.bytes);
    await this.readInto(info, dst);
    return dst;
  }

  close(): void {
    this.#file.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

function wrongType(key: string, want: string, v: GgufValue): never {
  const got = Array.isArray(v) ? "an array" : typeof v;
  fail("E_GGUF_CORRUPT", `metadata ${key} should be ${want}, but is ${got}`);
}

function missing(key: string): never {
  fail("E_GGUF_CORRUPT", `metadata key ${key} is missing`);
}

function checkTensorRange(info: GgufTensorInfo, lengthBytes: number, srcOffsetBytes: number): void {
  if (
    !Number.isSafeInteger(srcOffsetBytes) || srcOffsetBytes < 0 ||
    srcOffsetBytes + lengthBytes > info.bytes
  ) {
    throw new RangeError(
      `read of ${lengthBytes} bytes at ${srcOffsetBytes} is outside tensor ${info.name} ` +
        `(${info.bytes} bytes)`,
    );
  }
}

const FIRST_HEADER_READ_BYTES = 1 << 20;

function nextHeaderLength(have: number, need: number, fileSizeBytes: number): number {
  if (need > GGUF_LIMITS.maxHeaderBytes) {
    fail("E_GGUF_CORRUPT", `header is larger than ${GGUF_LIMITS.maxHeaderBytes} bytes`);
  }
  return Math.min(fileSizeBytes, Math.max(need, have * 2));
}

/** Opens a GGUF file and parses its header; tensor data stays in the file until read. */
export async function openGguf(path: string | URL): Promise<GgufFile> {
  const file = await RandomAccessFile.open(path);
  try {
    let bytes = new Uint8Array(Math.min(file.sizeBytes, FIRST_HEADER_READ_BYTES));
    await file.read(bytes, 0);
    for (;;) {
      try {
        return new GgufFile(parseOrNeedMore(bytes, file.sizeBytes), file);
      } catch (e) {
        if (!(e instanceof NeedMoreBytes)) throw e;
        const grown = new Uint8Array(nextHeaderLength(bytes.length, e.uptoBytes, file.sizeBytes));
        grown.set(bytes);
        await file.read(grown.subarray(bytes.length), bytes.length);
        bytes = grown;
      }
    }
  } catch (e) {
    file.close();
    throw withPath(e, file.path);
  }
}

export function openGgufSync(path: string | URL): GgufFile {
  const file = RandomAccessFile.openSync(path);
  try {
    let bytes = new Uint8Array(Math.min(file.sizeBytes, FIRST_HEADER_READ_BYTES));
    file.readSync(bytes, 0);
    for (;;) {
      try {
        return new GgufFile(parseOrNeedMore(bytes, file.sizeBytes), file);
      } catch (e) {
        if (!(e instanceof NeedMoreBytes)) throw e;
        const grown = new Uint8Array(nextHeaderLength(bytes.length, e.uptoBytes, file.sizeBytes));
        grown.set(bytes);
        file.readSync(grown.subarray(bytes.length), bytes.length);
        bytes = grown;
      }
    }
  } catch (e) {
    file.close();
    throw withPath(e, file.path);
  }
}

function withPath(e: unknown, path: string): unknown {
  if (e instanceof HcError && e.message.startsWith("GGUF: ")) {
    return new HcError(e.code, `${path}: ${e.message}`, { cause: e.cause });
  }
  return e;
}
