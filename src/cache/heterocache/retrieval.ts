/**
 * Drift-triggered retrieval: rows of the host KV store are gathered into a staging buffer on a
 * native thread (the JS thread and the device keep working), then one copy on the transfer queue
 * moves them into the satellites' device rows (only the rows that change: a refresh names the
 * device row each gathered position replaces). The decode step that first reads them
 * waits for that copy's timeline value, and nothing else waits. Each refresh in flight owns its
 * own staging slot, so two refreshes never share one (docs/algorithm.md §9.4).
 *
 * Ordering: the engine runs one step at a time and awaits it, so when `landing()` submits a copy
 * no step is reading the rows it overwrites; the next step's submission waits for the copy.
 *
 * Each refresh names the step that first reads it (`due`). It lands exactly then: earlier it
 * waits even when its rows are gathered, later never (that step waits for the gather). So the
 * tokens a request generates do not depend on how fast the host gathered (run to run, machine
 * to machine), while the gather and the copy still overlap the steps before `due`.
 *
 * A CPU device (lavapipe; `direct`) has nothing to overlap with: the gather, the copy and the
 * steps share the same cores, and the copy is a second pass over every byte. There a refresh
 * lands by gathering straight into the device rows (mapped: device memory is host memory),
 * on two threads, right before its due step: no staging, no copy (at 128K tokens on the 8B
 * shape a refresh of every satellite moves 123 MB, which the copy took 17-20 ms of one core
 * for). A lavapipe-only path: a GPU keeps the staged copy, which its copy engine overlaps.
 */
import type { KvLayerCache } from "../kv_layer.ts";
import type { Buffer, CommandList, Device, GatherJob } from "../../vk/mod.ts";
import type { HostHead } from "./host_store.ts";

export interface RefreshJob {
  layer: number;
  head: number;
  /** Prompt positions to gather, ascending. */
  positions: Uint32Array;
  /** The device row each of them lands in (ascending with them); null: rows 0..n-1. */
  rows: Uint32Array | null;
  host: HostHead;
}

/** Host bytes that land together with a refresh's rows (e.g. the mask of rows they fill). */
export interface RefreshTail {
  bytes: Uint8Array;
  dst: Buffer;
  dstOffset: number;
}

interface Pending {
  caches: readonly KvLayerCache[];
  jobs: RefreshJob[];
  /** Tails staged after the rows: staging offset, destination, bytes. */
  tails: { at: number; dst: Buffer; dstOffset: number; bytes: number }[];
}

interface Slot {
  staging: Buffer;
  cmd: CommandList;
  /** The gather in flight, if any. */
  gather: Promise<void> | null;
  gathered: boolean;
  /** Copy regions waiting for submission once gathered. */
  pending: Pending | null;
  /** Transfer timeline value of the slot's last copy (0n: none). */
  value: bigint;
  abandoned: boolean;
  /** Start order: copies are submitted oldest first, so a later refresh of a head wins. */
  seq: number;
  /** The decode step that first reads this refresh. */
  due: number;
}

/** A refresh that lands by a direct gather (a CPU device), waiting for its due step. */
interface DirectRefresh {
  seq: number;
  due: number;
  caches: readonly KvLayerCache[];
  jobs: RefreshJob[];
  tails: readonly RefreshTail[];
}

/** Threads of a direct landing (the machines lavapipe runs on have at least two cores). */
const DIRECT_THREADS = 2;

/** Staging slots: refreshes decided on two consecutive steps are in flight at once when each
 * lands one step late; the third keeps a refresh that fires on the next step from forcing an
 * early landing. */
const RING = 3;

export class Retrieval implements Disposable {
  readonly #device: Device;
  readonly #rowBytes: number;
  readonly #async: boolean;
  /** Direct landings (see the header); settled at the first refresh, for the instance's life
   * (mixing the two paths could land a head's older rows after its newer ones). */
  #direct: boolean;
  #directChecked = false;
  readonly #slots: Slot[] = [];
  /** Direct refreshes waiting for their due step, oldest first. */
  #waiting: DirectRefresh[] = [];
  #seq = 0;
  /** The largest refresh to come, in bytes (see `reserve`; 0: unknown). */
  #most = 0;
  /** Copies submitted (or direct landings made) so far. */
  submitted = 0;
  /** Direct landings made so far. */
  direct = 0;
  /** Sequence numbers of the refreshes submitted since the last `drainSubmitted()`. */
  #justSubmitted: number[] = [];
  #disposed = false;

  /** `async` false: the gather is awaited and the copy submitted at once (official order).
   * `direct`: land by gathering into the device rows (a CPU device; the caches' buffers must
   * be host-visible). */
  constructor(device: Device, headDim: number, async: boolean, direct: boolean) {
    this.#device = device;
    this.#rowBytes = headDim * 2;
    this.#async = async;
    this.#direct = direct;
  }

  /** Forgets refreshes not yet landed (a new generation starts). */
  reset(): void {
    this.#waiting = [];
    for (const s of this.#slots) {
      if (s.pending) s.abandoned = true;
      s.pending = null;
    }
  }

  /**
   * The largest refresh to come moves `most` bytes. A slot first written by a gather costs
   * that gather the page faults of its whole range (about 130 ms for the 123 MB of a refresh of
   * every satellite at 128K tokens on the 8B shape, llvmpipe), and one regrown for a refresh a
   * few rows larger than its last pays them again; so slots grow with a quarter's headroom, up
   * to `most`. With `now` (a trigger that refreshes every cluster at once: every refresh is
   * that large), the first slot is made that large here, after the prefill, and its pages
   * written once.
   */
  reserve(most: number, now: boolean): void {
    this.#most = most;
    if (!now || most <= 0 || this.#direct) return;
    const first = this.#slots[0];
    if (first && (first.staging.bytes >= most || !this.#idle(first))) return;
    if (first) {
      first.staging.dispose();
      first.staging = this.#device.buffer(most, "upload");
      first.staging.mapped().fill(0);
    } else {
      this.#newSlot(most).staging.mapped().fill(0);
    }
  }

  /** Staging bytes for a slot that must hold `bytes` (see `reserve`). */
  #slotBytes(bytes: number): number {
    return Math.max(bytes, Math.min(this.#most, Math.ceil(bytes * 1.25)), 1 << 16);
  }

  /** Starts the refresh of `jobs` into `caches` (and `tails` into their buffers, in the same
   * copy), to be first read by decode step `due`; resolves to its sequence number once it is
   * queued (async) or submitted (sync). One native gather call serves the whole refresh. */
  async start(
    jobs: RefreshJob[],
    caches: readonly KvLayerCache[],
    tails: readonly RefreshTail[],
    due: number,
  ): Promise<number> {
    if (this.#direct && !this.#directChecked) {
      // A CPU device whose device memory the host cannot map keeps the staged path.
      this.#directChecked = true;
      this.#direct = jobs.every((j) => {
        const at = caches[j.layer].location(j.head, 0);
        return at.k.hostVisible && at.v.hostVisible;
      }) && tails.every((t) => t.dst.hostVisible);
    }
    if (this.#direct) {
      const refresh = { seq: ++this.#seq, due, caches, jobs, tails };
      if (this.#async) this.#waiting.push(refresh);
      else await this.#land(refresh);
      return refresh.seq;
    }
    const rowsBytes = jobs.reduce((n, j) => n + 2 * j.positions.length * this.#rowBytes, 0);
    const tailBytes = tails.reduce((n, t) => n + align4(t.bytes.byteLength), 0);
    const slot = await this.#freeSlot(rowsBytes + tailBytes);
    let at = 0;
    const gathers: GatherJob[] = [];
    for (const j of jobs) {
      const n = j.positions.length;
      for (const side of ["k", "v"] as const) {
        gathers.push({
          dst: slot.staging,
          dstOffsetBytes: at,
          dstStrideBytes: this.#rowBytes,
          src: j.host[side],
          srcStrideBytes: this.#rowBytes,
          rows: j.positions,
          rowBytes: this.#rowBytes,
        });
        at += n * this.#rowBytes;
      }
    }
    // Tails are small: staged here, on the JS thread, while the slot is idle.
    const staged: Pending["tails"] = [];
    const mapped = tails.length ? slot.staging.mapped() : null;
    for (const t of tails) {
      mapped!.set(t.bytes, at);
      staged.push({ at, dst: t.dst, dstOffset: t.dstOffset, bytes: t.bytes.byteLength });
      at += align4(t.bytes.byteLength);
    }
    slot.pending = { caches, jobs, tails: staged };
    slot.seq = ++this.#seq;
    slot.due = due;
    slot.gathered = false;
    slot.abandoned = false;
    slot.gather = this.#device.gatherRows(gathers).then(() => {
      slot.gathered = true;
    });
    if (!this.#async) {
      await slot.gather;
      this.#submit(slot);
    }
    return slot.seq;
  }

  /** The refreshes submitted since the last call (their copies precede any later step). */
  drainSubmitted(): number[] {
    return this.#justSubmitted.splice(0);
  }

  /** Whether the refresh `start` numbered `seq` was read by decode step `step` (or dropped):
   * by its due step, whatever the machine's speed. */
  landed(seq: number, step: number): boolean {
    if (this.#waiting.some((r) => r.seq === seq && r.due > step)) return false;
    return !this.#slots.some((s) => s.seq === seq && !s.abandoned && s.due > step);
  }

  /** Whether a refresh is gathering, waiting to land, or copying. */
  get busy(): boolean {
    if (this.#waiting.length) return true;
    const done = this.#device.poll("transfer");
    return this.#slots.some((s) => s.pending !== null || s.value > done);
  }

  /** Lands everything in flight now, before its due step, and waits for it on the device
   * (a saved, moved or continued session); such refreshes count as landed from here on. */
  async settle(): Promise<void> {
    for (const r of this.#waiting.splice(0)) await this.#land(r);
    for (const s of this.#byAge()) {
      if (s.gather) await s.gather;
      if (s.pending) this.#submit(s);
      if (s.value > 0n) await this.#device.wait("transfer", s.value);
      s.due = 0;
    }
  }

  /** Submits the copies due by decode step `step` (waiting for their gathers); returns the
   * transfer value that step must wait for. */
  async landing(step: number): Promise<bigint> {
    while (this.#waiting.length && this.#waiting[0].due <= step) {
      await this.#land(this.#waiting.shift()!);
    }
    let wait = 0n;
    for (const s of this.#byAge()) {
      // In age order (due steps rise with it), so a head's newer rows land after its older ones.
      if (s.pending && s.due > step) break;
      if (s.pending) {
        if (!s.gathered) await s.gather;
        this.#submit(s);
      }
      if (s.value > wait && this.#device.poll("transfer") < s.value) wait = s.value;
    }
    return wait;
  }

  /** A direct landing: each job's rows gathered from the host store into its device rows,
   * then its tails written; the device reads none of them now (the engine awaits each step). */
  async #land(r: DirectRefresh): Promise<void> {
    const gathers: GatherJob[] = [];
    for (const j of r.jobs) {
      const at = r.caches[j.layer].location(j.head, 0);
      for (const [dst, src] of [[at.k, j.host.k], [at.v, j.host.v]] as const) {
        gathers.push({
          dst,
          dstOffsetBytes: at.byteOffset,
          dstStrideBytes: this.#rowBytes,
          src,
          srcStrideBytes: this.#rowBytes,
          rows: j.positions,
          rowBytes: this.#rowBytes,
          dstRows: j.rows,
        });
      }
    }
    await this.#device.gatherRows(gathers, DIRECT_THREADS);
    for (const t of r.tails) t.dst.mapped().set(t.bytes, t.dstOffset);
    this.submitted++;
    this.direct++;
    this.#justSubmitted.push(r.seq);
  }

  #byAge(): Slot[] {
    return [...this.#slots].sort((a, b) => a.seq - b.seq);
  }

  #submit(slot: Slot): void {
    const { caches, jobs, tails } = slot.pending!;
    slot.pending = null;
    if (slot.abandoned || this.#disposed) return;
    const cmd = slot.cmd;
    cmd.begin();
    let at = 0;
    for (const j of jobs) {
      const n = j.positions.length;
      const dst = caches[j.layer].location(j.head, 0);
      for (const side of [dst.k, dst.v]) {
        const runs = copyRuns(j.rows, n, this.#rowBytes, at, dst.byteOffset);
        if (runs.length) cmd.copy(slot.staging, side, runs);
        at += n * this.#rowBytes;
      }
    }
    for (const t of tails) cmd.copy(slot.staging, t.dst, [[t.at, t.dstOffset, t.bytes]]);
    cmd.end();
    slot.value = cmd.submit();
    this.submitted++;
    this.#justSubmitted.push(slot.seq);
  }

  /** A slot with no gather or copy in flight and room for `bytes`. */
  async #freeSlot(bytes: number): Promise<Slot> {
    let slot = this.#slots.find((s) => this.#idle(s));
    if (!slot && this.#slots.length < RING) slot = this.#newSlot(bytes);
    if (!slot) {
      // Every slot is busy: land the oldest refresh first.
      slot = this.#byAge()[0];
      if (slot.gather) await slot.gather;
      if (slot.pending) this.#submit(slot);
      await this.#device.wait("transfer", slot.value);
    }
    if (slot.staging.bytes < bytes) {
      slot.staging.dispose();
      slot.staging = this.#device.buffer(this.#slotBytes(bytes), "upload");
    }
    return slot;
  }

  /** No gather writing into the slot (an abandoned one may still run), nothing waiting to be
   * copied from it, no copy reading it. */
  #idle(s: Slot): boolean {
    return (!s.gather || s.gathered) && !s.pending && this.#device.poll("transfer") >= s.value;
  }

  #newSlot(bytes: number): Slot {
    const staging = this.#device.buffer(this.#slotBytes(bytes), "upload");
    let cmd: CommandList;
    try {
      cmd = this.#device.commands("transfer");
    } catch (e) {
      staging.dispose();
      throw e;
    }
    const slot: Slot = {
      staging,
      cmd,
      gather: null,
      gathered: false,
      pending: null,
      value: 0n,
      abandoned: false,
      seq: 0,
      due: 0,
    };
    this.#slots.push(slot);
    return slot;
  }

  [Symbol.dispose](): void {
    this.#disposed = true;
    this.#waiting = [];
    for (const s of this.#slots.splice(0)) {
      // A gather still writing into the staging memory holds it (Buffer.hold).
      s.cmd.dispose();
      s.staging.dispose();
    }
  }
}

function align4(n: number): number {
  return Math.ceil(n / 4) * 4;
}

/** Copy regions [src, dst, bytes] moving n staged rows (from byte `src`) into device rows `rows`
 * (ascending; null: 0..n-1) from byte `dst`, one region per run of consecutive rows. */
export function copyRuns(
  rows: Uint32Array | null,
  n: number,
  rowBytes: number,
  src: number,
  dst: number,
): [number, number, number][] {
  if (n === 0) return [];
  if (rows === null) return [[src, dst, n * rowBytes]];
  const out: [number, number, number][] = [];
  for (let i = 0; i < n;) {
    let k = i + 1;
    while (k < n && rows[k] === rows[k - 1] + 1) k++;
    out.push([src + i * rowBytes, dst + rows[i] * rowBytes, (k - i) * rowBytes]);
    i = k;
  }
  return out;
}
