/** Typed face of the shim: Device and Buffer, each owned and disposable. */
import { HcError } from "../errors.ts";
import { check, cstr, native } from "./ffi.ts";
import { CommandList, type Queue, type RecordCounts } from "./commands.ts";
import { Kernel, type KernelOptions } from "./kernel.ts";

export type BufferKind = "device" | "upload" | "readback";
const KIND_ID: Record<BufferKind, number> = { device: 0, upload: 1, readback: 2 };
export const QUEUE_ID: Record<Queue, number> = { compute: 0, transfer: 1 };

export interface DeviceInfo {
  index: number;
  name: string;
  type: "discrete" | "integrated" | "virtual" | "cpu" | "other";
  vendorId: number;
  deviceId: number;
  apiVersion: string;
  subgroupSize: number;
  subgroupArithmetic: boolean;
  maxStorageBufferRange: number;
  maxAllocationBytes: number;
  maxComputeSharedMemoryBytes: number;
  maxComputeWorkGroupInvocations: number;
  maxComputeWorkGroupCount: [number, number, number];
  maxPushConstantsBytes: number;
  minStorageBufferOffsetAlignment: number;
  timestampPeriodNs: number;
  timelineSemaphore: boolean;
  storage16: boolean;
  storage8: boolean;
  float16: boolean;
  int8: boolean;
  /** shaderInt64, enabled when present. */
  int64: boolean;
  /** Texels (of any format) one texel-buffer view may span. */
  maxTexelBufferElements: number;
  minTexelBufferOffsetAlignment: number;
  /** R32G32B32A32_UINT works as a uniform texel buffer (BindingKind "texel"). */
  texelBuffer: boolean;
  separateTransferQueue?: boolean;
  /** VK_EXT_memory_budget is enabled (Device.memory reads the driver's budgets). Only on an
   * opened device's info. */
  memoryBudget?: boolean;
  /** VK_EXT_subgroup_size_control is enabled: kernels run at `subgroupSize` lanes. */
  subgroupSizeControl?: boolean;
  /** ... and a kernel whose workgroup is whole subgroups runs them full. */
  fullSubgroups?: boolean;
}

/** Device-local memory as Device.memory reports it. */
export interface DeviceMemory {
  /** The device-local heaps' budget (VK_EXT_memory_budget), else their size. */
  budgetBytes: number;
  /** In use by every process where the driver reports it, else by this device. */
  usedBytes: number;
  /** Held by this device's buffers. */
  heldBytes: number;
  /** The simulated budget (see DeviceOpenOptions.memoryBudgetBytes), or null. */
  capBytes: number | null;
  /** What a new allocation may take: the budget less what is used, and within the cap. */
  freeBytes: number;
}

/** Lists every Vulkan device the loader sees, without opening one. */
export function listDevices(): DeviceInfo[] {
  const out = new Uint8Array(1 << 16);
  check(native().hc_devices_json(out, BigInt(out.length)), "listing Vulkan devices");
  const end = out.indexOf(0);
  return JSON.parse(new TextDecoder().decode(out.subarray(0, end < 0 ? out.length : end)));
}

const u64out = new BigUint64Array(1);

/** Staging space for Device.upload/download; big enough to amortise a submit per chunk. */
const STAGING_BYTES = 32 << 20;

/** Which kernel shapes a device's kernels take: "gpu" (wide workgroups sharing data through
 * shared memory, what a discrete or integrated GPU runs), "cpu" (one-subgroup workgroups shaped
 * for SIMD CPU drivers such as lavapipe), or "auto": "cpu" on CPU devices, else "gpu". */
export type VariantChoice = "auto" | "gpu" | "cpu";
export type VariantSet = "gpu" | "cpu";
export const VARIANT_CHOICES: readonly VariantChoice[] = ["auto", "gpu", "cpu"];

/** Reads a variant choice (an option or HC_VK_VARIANTS); anything else is E_BAD_REQUEST. */
export function variantChoice(value: string, what: string): VariantChoice {
  if ((VARIANT_CHOICES as readonly string[]).includes(value)) return value as VariantChoice;
  throw new HcError(
    "E_BAD_REQUEST",
    `${what} must be one of ${VARIANT_CHOICES.join(", ")}, got ${JSON.stringify(value)}`,
  );
}

/** The narrowest subgroup the "gpu" variants size their workgroups for: GPUs run 32 or 64
 * lanes. On a device with narrower subgroups (lavapipe's 8) such a workgroup runs as several
 * subgroups and its reductions take the shared-memory step, so the 32-lane shapes still run. */
const GPU_MIN_LANES = 32;

export interface DeviceOpenOptions {
  /** A simulated memory budget: the most device-local bytes this device may hold, so that an
   * allocation past it fails with E_VK_OOM as on a device that is full (see setMemoryBudget). */
  memoryBudgetBytes?: number;
  /** A folder of SPIR-V files searched before the build's (`<variant>.spv` there replaces the
   * built variant on this device only): for trying a kernel without rebuilding, and for the
   * tests that check a broken kernel is noticed. */
  shaderDir?: string;
  /** Kernel variant set (see VariantChoice). Default: HC_VK_VARIANTS, else "auto". Read once
   * here, for the same reason as `subgroups`. */
  variants?: VariantChoice;
  /** Use the `__sg` kernel variants (subgroup reductions) where the device has subgroup
   * arithmetic. Default: yes, unless HC_NO_SUBGROUP=1. Fixed per device rather than read from
   * the environment at each kernel creation: the environment is process-wide, and test modules
   * run as threads of one process. */
  subgroups?: boolean;
}

/** One row gather of `Device.gatherRows`. */
export interface GatherJob {
  dst: Buffer;
  dstOffsetBytes: number;
  dstStrideBytes: number;
  src: Uint8Array;
  srcStrideBytes: number;
  rows: Uint32Array;
  rowBytes: number;
  /** The destination row of each gathered row (from dstOffsetBytes, stride dstStrideBytes);
   * absent: consecutive rows. */
  dstRows?: Uint32Array | null;
}

export class Device implements Disposable {
  readonly handle: bigint;
  readonly info: DeviceInfo;
  /** Whether kernels of this device use their subgroup-reduction variants. */
  readonly subgroups: boolean;
  /** The kernel variant set every kernel wrapper on this device builds (see VariantChoice). */
  readonly variants: VariantSet;
  /** Lanes per subgroup the "gpu" variants size workgroups for: the subgroup size, at least 32
   * (see GPU_MIN_LANES), at most 64. */
  readonly gpuLanes: number;
  /** See DeviceOpenOptions.shaderDir. */
  readonly shaderDir: string | undefined;
  /** Submissions so far per queue (for benchmarks: submissions per decode token). */
  readonly submissions: Record<Queue, number> = { compute: 0, transfer: 0 };
  /** What the last list submitted to the compute queue recorded. */
  lastComputeSubmit: RecordCounts | null = null;
  /** The last list submitted to the compute queue (its `profile()`). */
  lastComputeList: CommandList | null = null;
  /**
   * For benchmarks: compute lists begun while set write a timestamp after every dispatch, and
   * `CommandList.profile()` gives each dispatch's device time (bench/step_counts.ts: each kernel's
   * share of a decode step). Costs a timestamp per dispatch; off by default.
   */
  profileDispatches = false;
  #closed = false;
  #staging: { up: Buffer; down: Buffer; cmd: CommandList } | null = null;
  readonly #background = new Set<Promise<unknown>>();

  private constructor(handle: bigint, opts: DeviceOpenOptions) {
    this.handle = handle;
    const out = new Uint8Array(8192);
    check(native().hc_device_info(handle, out, BigInt(out.length)), "reading device info");
    const end = out.indexOf(0);
    this.info = JSON.parse(new TextDecoder().decode(out.subarray(0, end)));
    this.subgroups = this.info.subgroupArithmetic &&
      (opts.subgroups ?? Deno.env.get("HC_NO_SUBGROUP") !== "1");
    const choice = opts.variants ?? "auto";
    this.variants = choice === "auto" ? (this.info.type === "cpu" ? "cpu" : "gpu") : choice;
    this.shaderDir = opts.shaderDir;
    this.gpuLanes = Math.min(64, Math.max(GPU_MIN_LANES, this.info.subgroupSize));
  }

  /** Opens the device named by `selector` (index or name substring), else HC_VK_DEVICE, else
   * the best one (discrete > integrated > virtual > CPU). */
  static open(selector?: string, opts: DeviceOpenOptions = {}): Device {
    // Checked before the device opens, so that a bad value leaks nothing.
    const env = Deno.env.get("HC_VK_VARIANTS");
    const variants = opts.variants !== undefined
      ? variantChoice(opts.variants, "variants")
      : env
      ? variantChoice(env, "HC_VK_VARIANTS")
      : "auto";
    const sel = selector ?? Deno.env.get("HC_VK_DEVICE") ?? "";
    check(native().hc_device_open(cstr(sel), u64out), "opening a Vulkan device");
    const device = new Device(u64out[0], { ...opts, variants });
    if (opts.memoryBudgetBytes !== undefined) {
      try {
        device.setMemoryBudget(opts.memoryBudgetBytes);
      } catch (e) {
        device.close();
        throw e;
      }
    }
    return device;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Device-local memory: budget, use, what this device holds, and what is free. */
  memory(): DeviceMemory {
    const out = new BigUint64Array(5);
    check(native().hc_device_memory(this.handle, out), "reading the memory budget");
    const [budget, used, held, cap, free] = Array.from(out, Number);
    return {
      budgetBytes: budget,
      usedBytes: used,
      heldBytes: held,
      capBytes: cap === 0 ? null : cap,
      freeBytes: free,
    };
  }

  /** Caps the device-local bytes this device may hold (null: no cap): later allocations past
   * it fail with E_VK_OOM naming the bytes needed and free. What is held stays. */
  setMemoryBudget(bytes: number | null): void {
    if (bytes !== null && (!Number.isSafeInteger(bytes) || bytes <= 0)) {
      throw new HcError("E_BAD_REQUEST", `memory budget ${bytes} is not a positive byte count`);
    }
    check(native().hc_device_set_budget(this.handle, BigInt(bytes ?? 0)), "setting the budget");
  }

  buffer(bytes: number, kind: BufferKind = "device"): Buffer {
    if (!Number.isSafeInteger(bytes) || bytes <= 0) {
      throw new HcError("E_VK_LIMIT", `buffer size ${bytes} is not a positive integer`);
    }
    check(
      native().hc_buffer_create(this.handle, BigInt(bytes), KIND_ID[kind], u64out),
      `creating a ${kind} buffer of ${bytes} bytes`,
    );
    return new Buffer(this, u64out[0], bytes, kind);
  }

  kernel(name: string, options: KernelOptions): Kernel {
    return Kernel.create(this, name, options);
  }

  commands(queue: Queue = "compute"): CommandList {
    return CommandList.create(this, queue);
  }

  /** @internal CommandList.submit reports each submission here. */
  noteSubmit(list: CommandList): void {
    this.submissions[list.queue]++;
    if (list.queue === "compute") {
      this.lastComputeSubmit = list.counts;
      this.lastComputeList = list;
    }
  }

  /** Resolves when `queue`'s timeline reaches `value`; the JS thread stays free meanwhile. */
  async wait(queue: Queue, value: bigint, timeoutMs = 600_000): Promise<void> {
    const status = await native().hc_wait(
      this.handle,
      QUEUE_ID[queue],
      value,
      BigInt(timeoutMs) * 1_000_000n,
    );
    check(status, `waiting for the ${queue} queue`);
  }

  /** Blocking wait: for short waits where a 30 µs thread hop would dominate. */
  waitSync(queue: Queue, value: bigint, timeoutMs = 600_000): void {
    check(
      native().hc_wait_sync(this.handle, QUEUE_ID[queue], value, BigInt(timeoutMs) * 1_000_000n),
      `waiting for the ${queue} queue`,
    );
  }

  /** The value `queue`'s timeline has completed. */
  poll(queue: Queue): bigint {
    check(native().hc_poll(this.handle, QUEUE_ID[queue], u64out), "polling a timeline");
    return u64out[0];
  }

  #stagingPair() {
    if (!this.#staging) {
      this.#staging = {
        up: this.buffer(STAGING_BYTES, "upload"),
        down: this.buffer(STAGING_BYTES, "readback"),
        cmd: this.commands("compute"),
      };
    }
    return this.#staging;
  }

  /** Copies host bytes into a buffer (any kind) through staging; returns when done. */
  upload(dst: Buffer, data: ArrayBufferView, dstOffset = 0): void {
    const src = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    dst.checkRange(dstOffset, src.byteLength, "upload");
    if (dst.kind !== "device") {
      dst.mapped().set(src, dstOffset);
      return;
    }
    const s = this.#stagingPair();
    const staging = s.up.mapped();
    for (let done = 0; done < src.byteLength;) {
      const n = Math.min(STAGING_BYTES, src.byteLength - done);
      staging.set(src.subarray(done, done + n));
      s.cmd.begin();
      s.cmd.copy(s.up, dst, [[0, dstOffset + done, n]]);
      s.cmd.end();
      this.waitSync("compute", s.cmd.submit());
      done += n;
    }
  }

  /**
   * Streams `bytes` into `dst` chunk by chunk: `fill` writes each chunk straight into mapped
   * staging memory (e.g. a file read), so a large tensor never sits in the JS heap whole.
   */
  async uploadFrom(
    dst: Buffer,
    bytes: number,
    fill: (chunk: Uint8Array, srcOffset: number) => Promise<void>,
    dstOffset = 0,
  ): Promise<void> {
    dst.checkRange(dstOffset, bytes, "upload");
    const s = this.#stagingPair();
    const staging = s.up.mapped();
    for (let done = 0; done < bytes;) {
      const n = Math.min(STAGING_BYTES, bytes - done);
      if (dst.kind !== "device") {
        await fill(dst.mapped().subarray(dstOffset + done, dstOffset + done + n), done);
      } else {
        await fill(staging.subarray(0, n), done);
        s.cmd.begin();
        s.cmd.copy(s.up, dst, [[0, dstOffset + done, n]]);
        s.cmd.end();
        await this.wait("compute", s.cmd.submit());
      }
      done += n;
    }
  }

  /** Reads bytes of a buffer (any kind) back to the host; returns a fresh array. */
  download(src: Buffer, srcOffset = 0, length?: number): Uint8Array {
    // Not a default parameter: deno publish's type emit cannot check a default that reads another.
    const bytes = length ?? src.bytes - srcOffset;
    src.checkRange(srcOffset, bytes, "download");
    const out = new Uint8Array(bytes);
    if (src.kind !== "device") {
      out.set(src.mapped().subarray(srcOffset, srcOffset + bytes));
      return out;
    }
    const s = this.#stagingPair();
    const staging = s.down.mapped();
    for (let done = 0; done < bytes;) {
      const n = Math.min(STAGING_BYTES, bytes - done);
      s.cmd.begin();
      s.cmd.copy(src, s.down, [[srcOffset + done, 0, n]]);
      s.cmd.end();
      this.waitSync("compute", s.cmd.submit());
      out.set(staging.subarray(0, n), done);
      done += n;
    }
    return out;
  }

  /**
   * Row gathers from host memory into mapped buffers, in one native call on a worker thread
   * (one round trip; the JS thread stays free), or `threads` calls on as many threads: job i
   * copies rows `rows[r]` of `src` (row stride `srcStrideBytes`) into rows of `dst` from
   * `dstOffsetBytes` (stride `dstStrideBytes`), consecutive or `dstRows[r]`. Every job is
   * checked before any runs. `src` and the row lists must not change until it settles.
   */
  async gatherRows(jobs: readonly GatherJob[], threads = 1): Promise<void> {
    const work = jobs.filter((j) => j.rows.length > 0);
    if (work.length === 0) return;
    const W = 8; // HC_GATHER_JOB_WORDS
    const words = new BigUint64Array(work.length * W);
    const addr = (a: Uint8Array | Uint32Array) =>
      BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(a as Uint8Array<ArrayBuffer>)));
    work.forEach((j, i) => {
      const maxRow = maxOf(j.rows);
      if (
        j.rowBytes > j.srcStrideBytes || j.rowBytes > j.dstStrideBytes ||
        maxRow * j.srcStrideBytes + j.rowBytes > j.src.byteLength
      ) {
        throw new HcError(
          "E_VK_LIMIT",
          `gatherRows: row ${maxRow} of ${j.rowBytes} bytes lies outside the ${j.src.byteLength}-byte source`,
        );
      }
      const dstRows = j.dstRows ?? null;
      if (dstRows && dstRows.length !== j.rows.length) {
        throw new HcError("E_VK_LIMIT", "gatherRows: one destination row per gathered row");
      }
      const lastDst = dstRows ? maxOf(dstRows) : j.rows.length - 1;
      j.dst.checkRange(j.dstOffsetBytes, lastDst * j.dstStrideBytes + j.rowBytes, "gatherRows");
      words.set([
        j.dst.address() + BigInt(j.dstOffsetBytes),
        BigInt(j.dstStrideBytes),
        addr(j.src),
        BigInt(j.srcStrideBytes),
        addr(j.rows),
        BigInt(j.rows.length),
        BigInt(j.rowBytes),
        dstRows ? addr(dstRows) : 0n,
      ], i * W);
    });
    // Consecutive jobs in up to `threads` parts of about equal rows, each one native call on
    // its own worker thread. `work` keeps every source and row list reachable until they end.
    const total = work.reduce((n, j) => n + j.rows.length, 0);
    const parts: [number, number][] = [];
    for (let i = 0, done = 0; i < work.length;) {
      const target = (total * (parts.length + 1)) / Math.max(1, threads);
      let k = i;
      while (k < work.length && (k === i || done < target)) done += work[k++].rows.length;
      parts.push([i, k]);
      i = k;
    }
    const running = Promise.all(
      parts.map(([i, k]) => native().hc_gather_batch(words.subarray(i * W, k * W), k - i)),
    );
    for (const dst of new Set(work.map((j) => j.dst))) dst.hold(running);
    for (const st of await running) check(st, `gathering rows (${work.length} jobs)`);
  }

  /** Registers work that still uses this device's memory off the JS thread (a native gather
   * into a staging buffer that is freed when it ends); `settled()` waits for all of it. */
  track(work: Promise<unknown>): void {
    const p = work.catch(() => {}).finally(() => this.#background.delete(p));
    this.#background.add(p);
  }

  /** Resolves once every tracked background work has ended: call before close(). */
  async settled(): Promise<void> {
    while (this.#background.size) await Promise.all([...this.#background]);
  }

  close(): void {
    if (this.#closed) return;
    if (this.#staging) {
      this.#staging.cmd.dispose();
      this.#staging.up.dispose();
      this.#staging.down.dispose();
      this.#staging = null;
    }
    check(
      native().hc_device_close(this.handle),
      "closing the device (dispose its buffers, kernels and command lists first)",
    );
    this.#closed = true;
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

export class Buffer implements Disposable {
  readonly device: Device;
  readonly handle: bigint;
  readonly bytes: number;
  readonly kind: BufferKind;
  #view: Uint8Array | null = null;
  #disposed = false;
  /** Native work still writing into the memory (see `hold`). */
  #held: Promise<unknown> | null = null;

  constructor(device: Device, handle: bigint, bytes: number, kind: BufferKind) {
    this.device = device;
    this.handle = handle;
    this.bytes = bytes;
    this.kind = kind;
  }

  get disposed(): boolean {
    return this.#disposed;
  }

  checkRange(offset: number, bytes: number, what: string): void {
    if (!(offset >= 0 && bytes >= 0 && offset + bytes <= this.bytes)) {
      throw new HcError(
        "E_VK_LIMIT",
        `${what}: range ${offset}+${bytes} outside a ${this.bytes}-byte buffer`,
      );
    }
  }

  /** The persistently mapped bytes of an upload/readback buffer, or of a device buffer whose
   * memory the host sees (`hostVisible`: CPU and UMA devices); valid until dispose. */
  mapped(): Uint8Array {
    if (!this.#view) {
      const ptr = Deno.UnsafePointer.create(this.address());
      if (!ptr) throw new HcError("E_VK", "mapping returned a null address");
      this.#view = new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(ptr, this.bytes));
    }
    return this.#view;
  }

  /** Whether the host can map this buffer: always for upload/readback; for a device buffer,
   * where the device's memory is host memory. */
  get hostVisible(): boolean {
    return !this.#disposed && this.#map() !== null;
  }

  /** Host address of the mapping, for native row gathers. */
  address(): bigint {
    const at = this.#map();
    if (at === null) throw new HcError("E_VK", "a device buffer is not host-visible");
    return at;
  }

  /** The mapping's address, or null for a device buffer the host cannot see. */
  #map(): bigint | null {
    if (this.#disposed) throw new HcError("E_VK_BAD_HANDLE", "buffer was disposed");
    const status = native().hc_buffer_map(this.handle, u64out);
    if (status !== 0 && this.kind === "device") return null;
    check(status, "mapping a buffer");
    return u64out[0];
  }

  /** Keeps the memory until `work` (a native gather writing into it) ends, even if the buffer
   * is disposed meanwhile: it is then freed when the work ends (`Device.settled` waits). */
  hold(work: Promise<unknown>): void {
    const p: Promise<unknown> = Promise.allSettled(this.#held ? [this.#held, work] : [work])
      .then(() => {
        if (this.#held === p) this.#held = null;
      });
    this.#held = p;
  }

  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    this.#view = null;
    const destroy = () => check(native().hc_buffer_destroy(this.handle), "destroying a buffer");
    if (this.#held) this.device.track(this.#held.then(destroy));
    else destroy();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

function maxOf(a: Uint32Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) if (a[i] > m) m = a[i];
  return m;
}
