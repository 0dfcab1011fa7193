/**
 * The per-layer KV cache on the device: its layout, which the engine, the cache policies and
 * every attention kernel follow, and `KvLayerCache`, which owns one layer's buffers. The append
 * kernel that writes new tokens into it is kernels/kv.ts.
 *
 * ## Layout (the engine, the cache policies and every attention kernel follow it)
 *
 * Per layer (one `KvLayerCache`):
 * - **Rows.** A row is one token of one KV head: `headDim` f16 values (IEEE half, little
 *   endian), `rowBytes = headDim * 2` bytes. K and V live in separate pools with identical
 *   geometry, so a (head, row) pair has the same byte offset in both.
 * - **Pools and chunks.** The layer's pool is one or more *chunks*: device buffers of at most
 *   `maxChunkBytes` (default: min(maxStorageBufferRange, maxAllocationBytes), 128 MiB on lavapipe,
 *   about 4 GiB on discrete GPUs). Chunk c has buffers `k[c]` and `v[c]`.
 * - **Heads.** KV head h owns `capRows[h]` consecutive rows of one chunk, starting at row
 *   `baseRow[h]` of that chunk. Heads are packed in index order, so the heads of a chunk form a
 *   contiguous index range (`chunkHeads`); a head never straddles two chunks. Row r of head h
 *   (r < capRows[h]) is at byte `(baseRow[h] + r) * rowBytes` of `k[chunk]` / `v[chunk]`. Rows are
 *   in the order the cache policy wrote them (position order for HeteroCache/SnapKV: prompt rows
 *   first, then decoded tokens). Per-head budgets therefore cost exactly their capacity in bytes.
 * - **Head table** (`table`, device, u32 `[nKvHeads][2]` = baseRow, capRows): static after
 *   creation; every kernel reads it, so recorded command lists never depend on the allocation.
 * - **Lengths** (`lengthsWindow`, device, u32 `[nKvHeads]`): rows of head h that are valid,
 *   `0 <= len <= capRows[h]` (kernels clamp to the capacity). Attention reads rows
 *   `[0, len)` of each head; heads are ragged. Lengths are the only per-step scalars, so one
 *   recorded step replays with growing lengths. The host advances them: it writes
 *   `cache.lengths[h]` (a mapped staging array) to the length *including* the tokens being
 *   appended this step, and the step's command list starts with
 *   `recordLengthsUploads(cmd, caches)` + barrier. Append writes rows `len - B .. len - 1`. The
 *   host checks capacity before appending (`E_CONTEXT_FULL`): rows at or past the capacity are
 *   silently not written.
 * - **Lengths arena** (`KvLengths`, src/cache/kv_lengths.ts): the lengths of a set of layers
 *   (a policy's caches) live in one device buffer and one mapped staging buffer, layer l's at
 *   window l (`lengthsLayer`), windows a multiple of minStorageBufferOffsetAlignment apart, so
 *   the kernels bind a layer's window at its offset and a step uploads every layer in one copy.
 *   A cache made without an arena has one of its own (one window).
 * - **Refresh / retrieval** (HeteroCache satellites) overwrite rows `[0, cap_s)` of a head by
 *   copying f16 rows to `location(head, 0).byteOffset`; the length does not change.
 * - **Prefill** runs over a cache whose heads hold all prompt rows (row index = position); the
 *   policy then copies the selected rows into the compressed cache.
 * - **Sliding window** (`window` W > 0, a layer that attends only to the last W positions): every
 *   head is a *ring* of capRows rows (at least W, or every position the session can hold),
 *   position p at row p % capRows, and the length counts
 *   every position appended so far (it may exceed the capacity). Attention reads positions
 *   [len - W, len) (decode) or each query's last W (prefill, which needs capRows >= W + B - 1
 *   for a batch of B, so that the batch does not overwrite a row its first query still sees).
 *   No policy compresses or refreshes such a layer.
 *
 * Limits: headDim a multiple of 8, at most 256; one head's capacity at most
 * `floor(maxChunkBytes / rowBytes)` rows (524288 rows of 256 bytes on lavapipe); total rows of a
 * chunk below 2^32 / (headDim / 8) (u32 uvec4 indices in the kernels).
 */
import { HcError } from "../errors.ts";
import type { Binding, Buffer, CommandList, Device } from "../vk/mod.ts";
import { KvLengths, type LengthsSlot, type LengthsWindow } from "./kv_lengths.ts";

export interface KvHeadSlot {
  chunk: number;
  baseRow: number;
  capRows: number;
}

export interface KvLayerLayout {
  headDim: number;
  rowBytes: number;
  heads: KvHeadSlot[];
  /** Rows allocated in each chunk. */
  chunkRows: number[];
  /** [first, end) KV head index range of each chunk. */
  chunkHeads: [number, number][];
}

function limit(message: string): never {
  throw new HcError("E_VK_LIMIT", message);
}

export function checkHeadDim(headDim: number): void {
  if (!Number.isInteger(headDim) || headDim < 8 || headDim > 256 || headDim % 8 !== 0) {
    limit(`head dim ${headDim} is not supported (a multiple of 8 in [8, 256])`);
  }
}

/** Places each head's rows in chunks of at most `maxChunkBytes` bytes, in head order. */
export function planKvLayer(
  opts: { headDim: number; capRows: readonly number[]; maxChunkBytes: number },
): KvLayerLayout {
  checkHeadDim(opts.headDim);
  const rowBytes = opts.headDim * 2;
  const maxRows = Math.min(
    Math.floor(opts.maxChunkBytes / rowBytes),
    Math.floor(2 ** 32 / (opts.headDim / 8)) - 1,
  );
  if (opts.capRows.length === 0 || opts.capRows.length > 4096) {
    limit(`a layer needs 1..4096 KV heads, got ${opts.capRows.length}`);
  }
  const heads: KvHeadSlot[] = [];
  const chunkRows: number[] = [0];
  const chunkHeads: [number, number][] = [[0, 0]];
  opts.capRows.forEach((cap, h) => {
    if (!Number.isInteger(cap) || cap < 0) limit(`head ${h} capacity ${cap} is not a row count`);
    if (cap > maxRows) {
      limit(
        `head ${h} capacity ${cap} rows exceeds one chunk (${maxRows} rows of ${rowBytes} bytes)`,
      );
    }
    let c = chunkRows.length - 1;
    if (chunkRows[c] + cap > maxRows) {
      chunkRows.push(0);
      chunkHeads.push([h, h]);
      c++;
    }
    heads.push({ chunk: c, baseRow: chunkRows[c], capRows: cap });
    chunkRows[c] += cap;
    chunkHeads[c][1] = h + 1;
  });
  return { headDim: opts.headDim, rowBytes, heads, chunkRows, chunkHeads };
}

/**
 * A watch over some heads of a layer (HeteroCache's pivots): for each query head of a watched KV
 * head, the decode attention adds the fraction of its attention on rows [0, promptRows) and on
 * the rows of that range marked in the head's bit mask (the coverage trigger), and can store the
 * scaled logits of those rows with their softmax statistics (a refresh selection pools them,
 * src/kernels/scores.ts recordPooledLogits). A watched head must hold every row at its position
 * (a full head). Set before the decode step is recorded; the buffers' contents (the table's
 * entries included) may change between steps.
 */
export interface KvWatch {
  /** u32 [nKvHeads][2]: per head, the word offset of its mask in `masks` and the float offset of
   * its logits in `logits`, each WATCH_NONE when off; a head with either on is watched. */
  table: Binding;
  /** u32 bit masks: bit r % 32 of word (offset + r / 32) marks row r. */
  masks: Binding;
  /** f32 [G][logitStride] per head with logits on, from its offset: the scaled logits (log2
   * domain) of its query heads over the prompt rows. */
  logits: Binding;
  promptRows: number;
  /** Floats between a head's query heads' logits rows (>= promptRows). */
  logitStride: number;
  /** f32 (held, prompt) fraction pairs, query head qh's at float outOffset + 2 * qh; with
   * logits, the prompt rows' (max, 1 / sum) of qh at float statsOffset + 2 * qh. */
  out: Binding;
  outOffset: number;
  statsOffset: number;
}

/** A watch-table entry for a head that is not watched. */
export const WATCH_NONE = 0xffffffff;

export class KvLayerCache implements Disposable {
  readonly device: Device;
  readonly layout: KvLayerLayout;
  readonly k: Buffer[] = [];
  readonly v: Buffer[] = [];
  /** Device u32 [nKvHeads][2]: baseRow, capRows. */
  readonly table: Buffer;
  /** The arena holding this layer's lengths (shared by a set of layers, or the layer's own). */
  readonly lengthsArena: KvLengths;
  /** This layer's window in the arena. */
  readonly lengthsLayer: number;
  /** Device u32 [nKvHeads], a window of the arena's buffer: what the kernels bind. */
  readonly lengthsWindow: LengthsWindow;
  /** The mapped staging lengths (the arena's staging window): write here, then upload. */
  readonly lengths: Uint32Array;
  /** The attention-mass watch the decode attention fills, if the policy set one. */
  watch: KvWatch | null = null;
  /** Sliding window W (0: none): every head is a ring (see the layout above). */
  readonly window: number;
  #disposed = false;

  private constructor(
    device: Device,
    layout: KvLayerLayout,
    window: number,
    lengths: LengthsSlot,
  ) {
    this.device = device;
    this.layout = layout;
    this.window = window;
    const n = layout.heads.length;
    const { arena, layer } = lengths;
    if (arena.device !== device) limit("a lengths arena of another device");
    this.lengthsWindow = arena.window(layer, n);
    this.lengths = arena.view(layer, n);
    arena.hold();
    this.lengthsArena = arena;
    this.lengthsLayer = layer;
    const made: Buffer[] = [];
    try {
      for (const rows of layout.chunkRows) {
        const bytes = Math.max(1, rows) * layout.rowBytes;
        const kb = device.buffer(bytes);
        made.push(kb);
        const vb = device.buffer(bytes);
        made.push(vb);
        this.k.push(kb);
        this.v.push(vb);
      }
      this.table = device.buffer(n * 8);
      made.push(this.table);
      const tab = new Uint32Array(n * 2);
      layout.heads.forEach((s, h) => {
        tab[2 * h] = s.baseRow;
        tab[2 * h + 1] = s.capRows;
      });
      device.upload(this.table, tab);
    } catch (e) {
      for (const b of made) b.dispose();
      arena.release();
      throw e;
    }
  }

  /** Allocates a layer's pools for per-head capacities (rows); lengths 0 in an arena of its own,
   * as the arena holds them in a shared window. */
  static create(
    device: Device,
    opts: {
      headDim: number;
      capRows: readonly number[];
      maxChunkBytes?: number;
      /** A sliding-window layer's W: every head a ring (see the layout above). */
      window?: number;
      /**
       * Window `layer` of a shared arena for the lengths (default: an arena of the cache's own).
       * The window keeps its values: the arena starts at 0 and its owner sets them, so a cache
       * that replaces another of the same layer (a move to larger pools) takes its lengths over.
       */
      lengths?: LengthsSlot;
    },
  ): KvLayerCache {
    const window = opts.window ?? 0;
    if (!Number.isInteger(window) || window < 0) limit(`sliding window ${window} is not a count`);
    const dev = device.info;
    const maxChunkBytes = Math.min(
      opts.maxChunkBytes ?? Infinity,
      dev.maxStorageBufferRange,
      dev.maxAllocationBytes,
    );
    const layout = planKvLayer({ ...opts, maxChunkBytes });
    if (opts.lengths) return new KvLayerCache(device, layout, window, opts.lengths);
    // A layer of its own: an arena of one window, freed with the cache.
    using arena = KvLengths.create(device, { layers: 1, heads: layout.heads.length });
    return new KvLayerCache(device, layout, window, { arena, layer: 0 });
  }

  get nKvHeads(): number {
    return this.layout.heads.length;
  }

  get headDim(): number {
    return this.layout.headDim;
  }

  get disposed(): boolean {
    return this.#disposed;
  }

  /** Largest capacity of any head (rows). */
  get maxCapRows(): number {
    return this.layout.heads.reduce((m, s) => Math.max(m, s.capRows), 0);
  }

  /** Smallest capacity of any head (rows). */
  get minCapRows(): number {
    return this.layout.heads.reduce((m, s) => Math.min(m, s.capRows), Infinity);
  }

  capRows(head: number): number {
    return this.#slot(head).capRows;
  }

  #slot(head: number): KvHeadSlot {
    const s = this.layout.heads[head];
    if (!s) limit(`KV head ${head} out of range [0, ${this.nKvHeads})`);
    return s;
  }

  /** Where row `row` of `head` lives: chunk buffers and byte offset (same in K and V). */
  location(head: number, row: number): { chunk: number; k: Buffer; v: Buffer; byteOffset: number } {
    const s = this.#slot(head);
    if (!Number.isInteger(row) || row < 0 || row > s.capRows) {
      limit(`row ${row} outside head ${head}'s capacity ${s.capRows}`);
    }
    return {
      chunk: s.chunk,
      k: this.k[s.chunk],
      v: this.v[s.chunk],
      byteOffset: (s.baseRow + row) * this.layout.rowBytes,
    };
  }

  /** Sets every length (host staging) and makes it visible to the device now (sync). */
  setLengths(values: ArrayLike<number>): void {
    if (values.length !== this.nKvHeads) {
      limit(`setLengths: ${values.length} values for ${this.nKvHeads} heads`);
    }
    for (let h = 0; h < values.length; h++) {
      const v = values[h];
      const cap = this.window > 0 ? 2 ** 32 - 1 : this.layout.heads[h].capRows;
      if (!Number.isInteger(v) || v < 0 || v > cap) {
        limit(`length ${v} of head ${h} outside [0, ${cap}]`);
      }
      this.lengths[h] = v;
    }
    const w = this.lengthsWindow;
    this.device.upload(w.buffer, this.lengths, w.offset);
  }

  /** Records the staging -> device copy of this layer's lengths alone (a step that runs one
   * layer); follow it with a barrier. A whole step uses recordLengthsUploads. */
  recordLengthsUpload(cmd: CommandList): void {
    this.lengthsArena.recordUpload(cmd, this.lengthsLayer, this.lengthsLayer + 1);
  }

  /** Reads the device lengths back (sync; for tests). */
  readLengths(): Uint32Array {
    const w = this.lengthsWindow;
    const bytes = this.device.download(w.buffer, w.offset, w.bytes);
    return new Uint32Array(bytes.buffer, bytes.byteOffset, this.nKvHeads);
  }

  /** Device pool bytes of this layer (K and V). */
  get poolBytes(): number {
    return this.k.reduce((s, b) => s + b.bytes, 0) * 2;
  }

  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    for (const b of [...this.k, ...this.v, this.table]) b.dispose();
    this.lengthsArena.release();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

/**
 * Records the staging -> device copy of the lengths of every cache in `caches` (a whole step's
 * layers): one transfer per arena, spanning the windows they use (one for a policy's set of
 * layers). Follow it with a barrier.
 */
export function recordLengthsUploads(cmd: CommandList, caches: readonly KvLayerCache[]): void {
  const spans = new Map<KvLengths, [number, number]>();
  for (const c of caches) {
    const s = spans.get(c.lengthsArena);
    const l = c.lengthsLayer;
    if (!s) spans.set(c.lengthsArena, [l, l + 1]);
    else {
      s[0] = Math.min(s[0], l);
      s[1] = Math.max(s[1], l + 1);
    }
  }
  for (const [arena, [first, end]] of spans) arena.recordUpload(cmd, first, end);
}
