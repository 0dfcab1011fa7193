/**
 * The checks and binding arithmetic every kernel wrapper shares: argument ranges, binding
 * windows (offset alignment, size, the storage range), workgroup grids folded into the device's
 * limits, and row splits that keep each binding inside maxStorageBufferRange. A wrapper's
 * `record` validates with these before it plans its dispatches, so bad input is an HcError
 * before anything is recorded.
 */
import { HcError } from "../errors.ts";
import { type GgmlTypeInfo, ggmlTypeInfo, SUPPORTED_WEIGHT_TYPES } from "../gguf/types.ts";
import type { Binding, Buffer, Device } from "../vk/mod.ts";
import { type WeightTypeName, weightTypeName } from "../../shaders/variants.ts";

/** Throws the error every kernel wrapper uses for arguments outside the kernel's contract. */
export function badKernelArgs(message: string): never {
  throw new HcError("E_VK_LIMIT", message);
}

/** A resolved binding: `bytes` from `offset` (the whole rest of the buffer when not given). */
export interface Window {
  buffer: Buffer;
  offset: number;
  bytes: number;
}

export function windowOf(b: Binding): Window {
  if ("buffer" in b) {
    return { buffer: b.buffer, offset: b.offset, bytes: b.bytes ?? b.buffer.bytes - b.offset };
  }
  return { buffer: b, offset: 0, bytes: b.bytes };
}

/** Resolves `b` and checks it holds `neededBytes` within its buffer at an aligned offset. */
export function checkedWindow(
  device: Device,
  b: Binding,
  neededBytes: number,
  what: string,
): Window {
  const w = windowOf(b);
  const align = device.info.minStorageBufferOffsetAlignment;
  if (!Number.isSafeInteger(w.offset) || w.offset < 0 || w.offset % align !== 0) {
    badKernelArgs(`${what}: offset ${w.offset} is not a multiple of ${align} bytes`);
  }
  if (!Number.isSafeInteger(w.bytes) || w.bytes < 0 || w.offset + w.bytes > w.buffer.bytes) {
    badKernelArgs(
      `${what}: window ${w.offset}+${w.bytes} is outside a ${w.buffer.bytes}-byte buffer`,
    );
  }
  if (neededBytes > w.bytes) {
    badKernelArgs(`${what}: needs ${neededBytes} bytes, the binding has ${w.bytes}`);
  }
  return w;
}

/** checkedWindow for operands bound whole in one dispatch: `neededBytes` must also fit one
 * storage binding (`maxRange`), and the window is clamped to it. */
export function checkedRangeWindow(
  device: Device,
  b: Binding,
  neededBytes: number,
  maxRange: number,
  what: string,
): Window {
  const w = checkedWindow(device, b, neededBytes, what);
  if (neededBytes > maxRange) {
    badKernelArgs(`${what}: needs ${neededBytes} bytes, above the ${maxRange}-byte storage range`);
  }
  return { buffer: w.buffer, offset: w.offset, bytes: Math.min(w.bytes, maxRange) };
}

/** A sub-window `[from, from + bytes)` of `w` (clamped to its end), as a dispatch binding. */
export function subWindow(w: Window, from: number, bytes: number): Binding {
  return { buffer: w.buffer, offset: w.offset + from, bytes: Math.min(bytes, w.bytes - from) };
}

/** Checks `value` is an integer in [min, max]; returns it. */
export function checkInt(value: number, what: string, min = 0, max = 0xffff_ffff): number {
  if (!Number.isInteger(value) || value < min || value > max) {
    badKernelArgs(`${what} must be an integer in [${min}, ${max}], got ${value}`);
  }
  return value;
}

/** Workgroup size checked against the shaders' WG_MAX (1024) and the device. */
export function checkWorkgroupSize(device: Device, size: number): number {
  const max = Math.min(1024, device.info.maxComputeWorkGroupInvocations);
  if (!Number.isInteger(size) || size < 1 || size > max || (size & (size - 1)) !== 0) {
    badKernelArgs(`workgroup size must be a power of two in [1, ${max}], got ${size}`);
  }
  return size;
}

/** A grid of `groups` workgroups folded into x and y (kernels rebuild the flat index). */
export function grid2d(device: Device, groups: number): [number, number] {
  const maxX = device.info.maxComputeWorkGroupCount[0];
  const maxY = device.info.maxComputeWorkGroupCount[1];
  if (groups <= maxX) return [Math.max(1, groups), 1];
  const gy = Math.ceil(groups / maxX);
  if (gy > maxY) badKernelArgs(`${groups} workgroups exceed the device's grid`);
  return [Math.ceil(groups / gy), gy];
}

/** `rows` folded into y and z, for kernels whose x walks within a row. */
export function gridRows(device: Device, gx: number, rows: number): [number, number, number] {
  const maxY = device.info.maxComputeWorkGroupCount[1];
  if (gx > device.info.maxComputeWorkGroupCount[0]) {
    badKernelArgs(`${gx} workgroups per row exceed the grid`);
  }
  if (rows <= maxY) return [gx, Math.max(1, rows), 1];
  const gz = Math.ceil(rows / maxY);
  if (gz > device.info.maxComputeWorkGroupCount[2]) badKernelArgs(`${rows} rows exceed the grid`);
  return [gx, Math.ceil(rows / gz), gz];
}

function gcd(a: number, b: number): number {
  while (b) [a, b] = [b, a % b];
  return a;
}

/**
 * Splits `rows` into runs whose bindings each stay within maxStorageBufferRange, for operands
 * advancing `rowBytes[j]` per row. Every run starts at a row whose byte offset is a multiple of
 * the offset alignment (and of `rowMultiple` rows), so sub-windows can be bound there. One run
 * when everything fits, which is the usual case.
 */
export function splitRows(
  device: Device,
  rows: number,
  rowBytes: readonly number[],
  rowMultiple = 1,
): [row0: number, count: number][] {
  const range = device.info.maxStorageBufferRange;
  if (rowBytes.every((b) => rows * b <= range)) return [[0, rows]];
  const align = device.info.minStorageBufferOffsetAlignment;
  let step = rowMultiple;
  for (const b of rowBytes) {
    const need = align / gcd(b % align || align, align);
    step = (step * need) / gcd(step, need);
  }
  const fit = Math.min(...rowBytes.map((b) => Math.floor(range / b)));
  const per = Math.floor(fit / step) * step;
  if (per < 1) {
    badKernelArgs(`a row of ${Math.max(...rowBytes)} bytes cannot be bound within ${range} bytes`);
  }
  const out: [number, number][] = [];
  for (let r = 0; r < rows; r += per) out.push([r, Math.min(per, rows - r)]);
  return out;
}

/** Shader byte arithmetic is 32-bit: keep every bound range well inside it. */
export const MAX_BINDING_BYTES = 2 ** 31;

/** The most bytes one storage binding may span on `device` (see MAX_BINDING_BYTES). */
export function maxBindingRange(device: Device): number {
  return Math.min(device.info.maxStorageBufferRange, MAX_BINDING_BYTES);
}

/** Checks a caller-given size or count is a positive integer (E_BAD_REQUEST, prefixed by the
 * kernel's name). */
export function positiveInt(kernel: string, name: string, v: number): number {
  if (!Number.isSafeInteger(v) || v <= 0) {
    throw new HcError("E_BAD_REQUEST", `${kernel}: ${name} = ${v} is not a positive integer`);
  }
  return v;
}

/** A KV cache's lengths window (KvLayerCache.lengthsWindow), checked for binding on `cmd`'s
 * device: what every kernel that reads the lengths binds. */
export function lengthsBinding(
  cmd: { device: Device },
  cache: { lengthsWindow: Binding; nKvHeads: number },
): Window {
  return checkedWindow(cmd.device, cache.lengthsWindow, cache.nKvHeads * 4, "KV lengths");
}

/** A float index (e.g. a y offset): a non-negative integer the shaders' u32 push fields hold
 * (E_BAD_REQUEST). */
export function floatIndex(kernel: string, name: string, v: number): number {
  if (!Number.isSafeInteger(v) || v < 0 || v > 0xffff_ffff) {
    throw new HcError("E_BAD_REQUEST", `${kernel}: ${name} ${v} is not a float index`);
  }
  return v;
}

/** Checks a weight's byte offset is a non-negative multiple of `multiple` (E_BAD_REQUEST). */
export function checkWeightOffset(kernel: string, offset: number, multiple: number): number {
  if (!Number.isSafeInteger(offset) || offset < 0 || offset % multiple !== 0) {
    throw new HcError(
      "E_BAD_REQUEST",
      `${kernel}: weightOffset ${offset} must be a non-negative multiple of ${multiple}`,
    );
  }
  return offset;
}

/** The shader name and block geometry of a weight type the matvec and get_rows shaders read
 * (E_MODEL_TENSOR for any other). */
export function shaderWeightType(
  kernel: string,
  type: number,
): { name: WeightTypeName; info: GgmlTypeInfo } {
  const name = weightTypeName(type);
  const info = ggmlTypeInfo(type);
  if (!name || !info) {
    const names = SUPPORTED_WEIGHT_TYPES.map((t) => ggmlTypeInfo(t)?.name).join(", ");
    throw new HcError(
      "E_MODEL_TENSOR",
      `${kernel}: weight type ${info?.name ?? type} is not supported (${names})`,
    );
  }
  return { name, info };
}

/** Bytes of a binding (whole buffer or window). */
export function bindingBytes(b: Binding): number {
  if ("buffer" in b) return b.bytes ?? b.buffer.bytes - b.offset;
  return b.bytes;
}

/** Checks binding `b` holds at least `bytes` bytes. */
export function requireBytes(b: Binding, bytes: number, what: string): void {
  const have = bindingBytes(b);
  if (have < bytes) badKernelArgs(`${what}: binding holds ${have} bytes, needs ${bytes}`);
}

/** Checks a float offset or stride is a whole number of vec4s (the shaders index in vec4s). */
export function requireFloatOffset(value: number, what: string): void {
  if (!Number.isInteger(value) || value < 0 || value % 4 !== 0) {
    badKernelArgs(`${what} must be a non-negative multiple of 4 floats (16 bytes), got ${value}`);
  }
}

/**
 * `cpu`: whether the kernels take their CPU shapes (the device's variant set, see
 * Device.variants); `targetGroups`: the workgroup budget for split work, as the variant set
 * assumes (CPU drivers have few cores, GPUs many compute units); `cpuDriver`: whether the
 * driver is a CPU one, whose loop cap (65535 trips per invocation) bounds any shape.
 */
export function deviceParallelism(
  device: Device,
): { cpu: boolean; targetGroups: number; cpuDriver: boolean } {
  const cpu = device.variants === "cpu";
  return {
    cpu,
    targetGroups: cpu ? Math.max(4, 4 * navigator.hardwareConcurrency) : 1024,
    cpuDriver: device.info.type === "cpu",
  };
}
