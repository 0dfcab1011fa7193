/** Command lists: record once, submit (replay) many times, ordered by timeline values. */
import { HcError } from "../errors.ts";
import { check, native } from "./ffi.ts";
import type { Buffer, Device } from "./device.ts";
import type { Kernel } from "./kernel.ts";

export type Queue = "compute" | "transfer";

/** A whole buffer, or a window of it (offset must respect minStorageBufferOffsetAlignment). */
export type Binding = Buffer | { buffer: Buffer; offset: number; bytes?: number };

/** A (source offset, destination offset, bytes) triple. */
export type CopyRegion = readonly [number, number, number];

/** What one recording holds: what a step costs the device beyond its memory traffic. */
export interface RecordCounts {
  dispatches: number;
  barriers: number;
  /** Copies and fills. */
  transfers: number;
  /** Dispatches by kernel (variant) name. */
  byKernel: Record<string, number>;
}

/** One dispatch's share of a profiled recording (`Device.profileDispatches`). */
export interface DispatchTime {
  kernel: string;
  /** Device time from the end of the work before it to its own end (barrier waits included). */
  ms: number;
}

/** Timestamp slots of a command list (vk-native's HC_TIMESTAMP_SLOTS). */
export const TIMESTAMP_SLOTS = 1024;

function noCounts(): RecordCounts {
  return { dispatches: 0, barriers: 0, transfers: 0, byKernel: {} };
}

const u64out = new BigUint64Array(1);
const QUEUE_ID: Record<Queue, number> = { compute: 0, transfer: 1 };

export class CommandList implements Disposable {
  readonly device: Device;
  readonly queue: Queue;
  readonly handle: bigint;
  #disposed = false;
  /** Buffers and kernels this recording uses, so a disposed one is caught before submit. */
  #uses: (Buffer | Kernel)[] = [];
  #counts: RecordCounts = noCounts();
  /** Kernel names of the dispatches timed in this recording (null: not profiled). */
  #profiled: string[] | null = null;

  private constructor(device: Device, queue: Queue, handle: bigint) {
    this.device = device;
    this.queue = queue;
    this.handle = handle;
  }

  static create(device: Device, queue: Queue): CommandList {
    check(
      native().hc_cmd_create(device.handle, QUEUE_ID[queue], u64out),
      "creating a command list",
    );
    return new CommandList(device, queue, u64out[0]);
  }

  /** Starts a new recording (waiting for this list's previous submission to finish). */
  begin(): this {
    check(native().hc_cmd_begin(this.handle), "beginning a command list");
    this.#uses = [];
    this.#counts = noCounts();
    this.#profiled = null;
    if (this.device.profileDispatches && this.queue === "compute") {
      this.timestamp(0);
      this.#profiled = [];
    }
    return this;
  }

  /** Dispatches, barriers and transfers of the current (or last) recording. */
  get counts(): RecordCounts {
    return { ...this.#counts, byKernel: { ...this.#counts.byKernel } };
  }

  dispatch(
    kernel: Kernel,
    bindings: readonly Binding[],
    push: ArrayBufferView | null,
    groups: readonly [number, number?, number?],
  ): this {
    const table = new BigUint64Array(bindings.length * 3);
    bindings.forEach((b, i) => {
      const buf = "buffer" in b ? b.buffer : b;
      const offset = "buffer" in b ? b.offset : 0;
      const bytes = "buffer" in b ? b.bytes ?? 0 : 0;
      table[i * 3] = buf.handle;
      table[i * 3 + 1] = BigInt(offset);
      table[i * 3 + 2] = BigInt(bytes);
      this.#uses.push(buf);
    });
    this.#uses.push(kernel);
    const pushBytes = push
      ? new Uint8Array(push.buffer, push.byteOffset, push.byteLength)
      : new Uint8Array(4);
    check(
      native().hc_cmd_dispatch(
        this.handle,
        kernel.handle,
        table,
        bindings.length,
        pushBytes,
        push ? push.byteLength : 0,
        groups[0],
        groups[1] ?? 1,
        groups[2] ?? 1,
      ),
      `recording ${kernel.name}`,
    );
    this.#counts.dispatches++;
    this.#counts.byKernel[kernel.name] = (this.#counts.byKernel[kernel.name] ?? 0) + 1;
    if (this.#profiled && this.#profiled.length + 1 < TIMESTAMP_SLOTS) {
      this.#profiled.push(kernel.name);
      this.timestamp(this.#profiled.length);
    }
    return this;
  }

  barrier(): this {
    check(native().hc_cmd_barrier(this.handle), "recording a barrier");
    this.#counts.barriers++;
    return this;
  }

  copy(src: Buffer, dst: Buffer, regions: readonly CopyRegion[]): this {
    const table = new BigUint64Array(regions.length * 3);
    regions.forEach((r, i) => {
      table[i * 3] = BigInt(r[0]);
      table[i * 3 + 1] = BigInt(r[1]);
      table[i * 3 + 2] = BigInt(r[2]);
    });
    this.#uses.push(src, dst);
    check(
      native().hc_cmd_copy(this.handle, src.handle, dst.handle, table, regions.length),
      "recording a copy",
    );
    this.#counts.transfers++;
    return this;
  }

  fill(buffer: Buffer, offset: number, bytes: number, value = 0): this {
    this.#uses.push(buffer);
    check(
      native().hc_cmd_fill(this.handle, buffer.handle, BigInt(offset), BigInt(bytes), value >>> 0),
      "recording a fill",
    );
    this.#counts.transfers++;
    return this;
  }

  /** Writes a device timestamp into `slot` (0..TIMESTAMP_SLOTS - 1) once all earlier work is
   * done. */
  timestamp(slot: number): this {
    check(native().hc_cmd_timestamp(this.handle, slot), "recording a timestamp");
    return this;
  }

  end(): this {
    check(native().hc_cmd_end(this.handle), "ending a command list");
    return this;
  }

  /** Submits the recording; returns the value this list's queue timeline reaches when done. */
  submit(after: { compute?: bigint; transfer?: bigint } = {}): bigint {
    for (const u of this.#uses) {
      if (u.disposed) {
        throw new HcError("E_VK_BAD_HANDLE", "a command list uses a disposed buffer or kernel");
      }
    }
    check(
      native().hc_submit(this.handle, after.compute ?? 0n, after.transfer ?? 0n, u64out),
      "submitting",
    );
    this.device.noteSubmit(this);
    return u64out[0];
  }

  /** Device ms between timestamp slots `from` and `to` of the last completed submission. */
  elapsedMs(from = 0, to = 1): number {
    const t = this.timestamps(Math.max(from, to) + 1);
    return (t[to] - t[from]) / 1e6;
  }

  /** Each timed dispatch of the last completed submission of a profiled recording, in order;
   * null when the recording was not profiled or its timestamps are not all available yet. Past
   * TIMESTAMP_SLOTS - 1 dispatches the rest go untimed. */
  profile(): DispatchTime[] | null {
    const names = this.#profiled;
    if (!names) return null;
    const t = this.timestamps(names.length + 1);
    if (t.some((x) => x === 0)) return null;
    return names.map((kernel, i) => ({ kernel, ms: (t[i + 1] - t[i]) / 1e6 }));
  }

  /** Timestamps (ns, device clock) of the last completed submission, slots 0..n-1. */
  timestamps(n: number): number[] {
    const out = new BigUint64Array(n);
    check(native().hc_cmd_timestamps(this.handle, out, n), "reading timestamps");
    return Array.from(out, Number);
  }

  get disposed(): boolean {
    return this.#disposed;
  }

  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    check(native().hc_cmd_destroy(this.handle), "destroying a command list");
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}
