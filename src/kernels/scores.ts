/**
 * Attention scores for KV selection (HeteroCache prefill selection and drift monitoring, SnapKV)
 * and a device top-k over such rows.
 *
 * For KV head h, its G query heads and W window queries (query w, query head qh at float
 * `qOffset + w * qStride + qh * headDim`, qh = h*G + g), over the head's cache rows [0, n):
 *   p[w][g][j] = softmax_j(q[w][g] . K_j / sqrt(headDim))
 *   windowMode "sum":      one row per head      x[g][j]    = sum_w p[w][g][j]      (SnapKV)
 *   windowMode "separate": `window` rows per head x_w[g][j] = p[w][g][j]            (drift checks)
 *   poolFirst false: row = avgpool(reduce_g x)   poolFirst true: row = reduce_g(avgpool x)
 * reduce_g = max or mean over the G query heads; avgpool = odd kernel (default 5), stride 1,
 * zero padding kernel/2, always divided by kernel (count_include_pad). HeteroCache (docs/algorithm.md
 * §3-4) is poolFirst + max; the brief's SnapKV order is reduce first. For mean both orders agree.
 * Output row r of requested head i (i = h - headStart) at float
 * `outOffset + (i * rowsPerHead + r) * outStride`, n floats.
 *
 * Passes: statistics over splits of the rows (max and sum per query row), then the pooled rows
 * from the merged statistics. The "simd" variant (CPU drivers) has a small merge pass between
 * them and keeps per-lane records in the scratch; it assumes a workgroup of
 * `device.info.subgroupSize` invocations is one subgroup (true on lavapipe) and uses subgroup
 * shuffles.
 *
 * TopK: per row, the indices of the k largest values ascending by position (NaN = -inf, ties to
 * lower positions: the set of src/cache/analysis.ts topkSet), min(k, n) u32 per row.
 */
import { HcError } from "../errors.ts";
import { SHADERS } from "../../shaders/variants.ts";
import {
  type Binding,
  type BindingKind,
  type CommandList,
  type Device,
  type Kernel,
  pushLayout,
  TEXEL_BYTES,
} from "../vk/mod.ts";
import { checkHeadDim, type KvLayerCache } from "../cache/kv_layer.ts";
import { deviceParallelism, requireBytes, requireFloatOffset } from "./checks.ts";

function limit(message: string): never {
  throw new HcError("E_VK_LIMIT", message);
}

const STATS_WG = 128;
const POOL_WG = 64;
const MERGE_WG = 64;
/** Per-invocation loop budget of the stats pass, in loop iterations (lavapipe stops an
 * invocation after 65535): one position of one query chunk costs about D/8 * (QC + 1) + QC. */
const STATS_ITERATIONS = 40_000;
const MAX_ROWS = 256;
const ALIGN = 256;

/** The fields every stats and pool pass's push block starts with: the dispatch's first head
 * and the call's rows, window and query layout (in vec4s). */
const HEAD_AND_QUERY = {
  headBase: "u32",
  n: "u32",
  window: "u32",
  qOff4: "u32",
  qStride4: "u32",
} as const;
/** The push blocks of shaders/scores_stats.comp, scores_pool.comp, scores_stats_cpu.comp,
 * scores_merge.comp and scores_pool_cpu.comp. */
const STATS_PUSH = pushLayout({ ...HEAD_AND_QUERY, perSplit: "u32", scale: "f32" });
const POOL_PUSH = pushLayout({
  ...HEAD_AND_QUERY,
  splits: "u32",
  scale: "f32",
  flags: "u32",
  kernel: "u32",
  outOff: "u32",
  outStride: "u32",
});
const STATS_CPU_PUSH = pushLayout({
  ...HEAD_AND_QUERY,
  perSplit: "u32",
  scale: "f32",
  headStride: "u32",
  logitStride: "u32",
});
const MERGE_PUSH = pushLayout({ rows: "u32", records: "u32", headStride: "u32" });
const POOL_CPU_PUSH = pushLayout({
  ...HEAD_AND_QUERY,
  records: "u32",
  scale: "f32",
  flags: "u32",
  headStride: "u32",
  outOff: "u32",
  outStride: "u32",
  logitStride: "u32",
});

/** shaders/scores_pool_logits.comp's push block. */
const POOL_LOGITS_PUSH = pushLayout({
  n: "u32",
  stride: "u32",
  statsOff: "u32",
  outOff: "u32",
  flags: "u32",
});
/** Output positions per invocation of scores_pool_logits.comp. */
const POOL_LOGITS_P = 16;

/** shaders/scores_topk.comp's push block. */
const TOPK_PUSH = pushLayout({
  n: "u32",
  k: "u32",
  rowOff: "u32",
  rowStride: "u32",
  outOff: "u32",
  outStride: "u32",
});

export interface ScoresArgs {
  cache: KvLayerCache;
  /** KV heads headStart .. headStart + headCount - 1 are scored (one output block each). */
  headStart: number;
  headCount: number;
  /** Rows [0, n) of each head; n <= every scored head's capacity. */
  n: number;
  q: Binding;
  qOffset?: number;
  /** Floats between window queries (default nKvHeads * G * headDim). */
  qStride?: number;
  window: number;
  groupReduce: "max" | "mean";
  windowMode: "sum" | "separate";
  poolFirst: boolean;
  poolKernel?: number;
  out: Binding;
  outOffset?: number;
  /** Floats between output rows (default n). */
  outStride?: number;
  /** At least `scratchBytes(...)` bytes; a window's offset must respect the device's
   * minStorageBufferOffsetAlignment (per-head regions are bound separately, 256-byte aligned). */
  scratch: Binding;
  scale?: number;
}

export interface PooledLogitsArgs {
  /** f32 [G][logitStride]: one KV head's query heads' scaled logits (log2 domain) over rows
   * [0, n). */
  logits: Binding;
  /** Floats between two query heads' logits (default n); a multiple of 4 with a 16-byte-whole
   * binding lets a CPU driver read them as texels. */
  logitStride?: number;
  /** f32 (max, 1 / sum) per query head over rows [0, n), from float `statsOffset` (even). */
  stats: Binding;
  statsOffset: number;
  n: number;
  groupReduce: "max" | "mean";
  poolFirst: boolean;
  poolKernel?: number;
  out: Binding;
  outOffset?: number;
}

export interface AttentionScoresOptions {
  headDim: number;
  /** Query heads per KV head (G). */
  groupSize: number;
  /** "lanes": wide workgroups sharing query rows and probability tiles through shared memory
   * (GPUs); "simd": one subgroup per workgroup, each lane owning whole key rows with the query
   * rows in registers, no shared memory (SIMD CPU drivers such as lavapipe). Default: "simd"
   * under the device's "cpu" variant set. */
  variant?: "lanes" | "simd";
  /** "simd" variant: the stats pass stores the logits for the pool pass when they fit in
   * LOGITS_BUDGET bytes, instead of the pool pass recomputing them. Default true. */
  storeLogits?: boolean;
  /** "simd" variant: the stats pass reads K as texel buffers where the device has them
   * (default), storage buffers for a cache chunk too big for one texel view. lavapipe gathers
   * texels with vector loads but loads storage buffers lane by lane. */
  texel?: boolean;
}

/** Most scratch bytes of stored logits one record may use (drift checks need ~5 MB at 64K). */
const LOGITS_BUDGET = 64 << 20;

export class AttentionScores implements Disposable {
  readonly device: Device;
  readonly headDim: number;
  readonly groupSize: number;
  readonly variant: "lanes" | "simd";
  readonly #storeLogits: boolean;
  /** Largest cache chunk the stats pass reads as a texel buffer (0: never). */
  readonly #maxTexelBytes: number;
  /** Stats-pass dispatches of the last "simd" record by K binding kind. */
  lastStatsBindings = { texel: 0, storage: 0 };
  /** Positions per invocation (register blocking; the pool pass keeps G x 64 x P floats shared). */
  readonly #positions: number;
  /** Lanes of the "simd" variant (its workgroup size). */
  readonly #lanes: number;
  /** Kernels by variant-specific shape key. */
  readonly #kernels = new Map<string, Kernel>();

  constructor(device: Device, opts: AttentionScoresOptions) {
    checkHeadDim(opts.headDim);
    const G = opts.groupSize;
    if (!Number.isInteger(G) || G < 1 || G > 16) limit(`group size ${G} not in 1..16`);
    if (G * opts.headDim > 2048) limit(`group size ${G} x head dim ${opts.headDim} too large`);
    this.device = device;
    this.headDim = opts.headDim;
    this.groupSize = G;
    this.variant = opts.variant ?? (deviceParallelism(device).cpu ? "simd" : "lanes");
    this.#storeLogits = this.variant === "simd" && (opts.storeLogits ?? true);
    this.#maxTexelBytes = (opts.texel ?? true) && device.info.texelBuffer
      ? device.info.maxTexelBufferElements * TEXEL_BYTES
      : 0;
    this.#positions = G > 8 ? 2 : 4;
    this.#lanes = Math.max(1, Math.min(64, device.info.subgroupSize));
  }

  /** Query rows per chunk for a window: whole windows, about 8 rows, never more than needed. */
  #rowsPerChunk(window: number): number {
    const G = this.groupSize;
    return G * Math.max(1, Math.min(window, Math.floor(8 / G)));
  }

  #kernel(key: string, make: () => Kernel): Kernel {
    let k = this.#kernels.get(key);
    if (!k) {
      k = make();
      this.#kernels.set(key, k);
    }
    return k;
  }

  #kernelsFor(qc: number): { stats: Kernel; pool: Kernel } {
    const spec = [this.groupSize, this.headDim, qc, this.#positions];
    return {
      stats: this.#kernel(`stats:${qc}`, () =>
        this.device.kernel(SHADERS.scores_stats.variant(), {
          bindings: 4,
          push: STATS_PUSH,
          spec: [STATS_WG, ...spec],
        })),
      pool: this.#kernel(`pool:${qc}`, () =>
        this.device.kernel(SHADERS.scores_pool.variant(), {
          bindings: 5,
          push: POOL_PUSH,
          spec: [POOL_WG, ...spec],
        })),
    };
  }

  /** "simd" variant: query rows the registers hold at once (about 512 floats of q per lane;
   * more rows mean longer llvmpipe compiles for little gain). */
  get #simdRows(): number {
    return Math.max(1, Math.min(32, Math.floor(512 / this.headDim)));
  }

  /** "simd" variant: query rows per chunk and positions per lane per block of the stats pass. */
  #simdStatsShape(window: number): { qc: number; pb: number; chunks: number } {
    const rows = window * this.groupSize;
    const qc = Math.min(this.#simdRows, rows);
    const work = qc * this.headDim;
    const pb = work <= 256 ? 4 : work <= 1024 ? 2 : 1;
    return { qc, pb, chunks: Math.ceil(rows / qc) };
  }

  /** "simd" variant: windows per chunk, output positions per lane and positions per trip of
   * the pool pass. */
  #simdPoolShape(
    window: number,
    separate: boolean,
    kernel: number,
  ): { wc: number; p: number; pk: number } {
    const G = this.groupSize;
    const wc = separate ? 1 : Math.max(1, Math.min(window, Math.floor(this.#simdRows / G)));
    const p = G * (16 + kernel) <= 256 ? 16 : 8;
    // Unrolled key rows per trip: few load instructions (llvmpipe compile time), little padding.
    const e = p + 2 * (kernel >> 1);
    const loads = Math.max(1, Math.floor(16 / (this.headDim / 8)));
    let pk = 1;
    for (let c = Math.min(loads, e); c >= 1; c--) {
      if (Math.ceil(e / c) * c - e <= e / 8) {
        pk = c;
        break;
      }
    }
    return { wc, p, pk };
  }

  /** Splits of the stats pass for n rows and `window` queries. */
  splitsFor(n: number, window: number): { splits: number; perSplit: number } {
    if (this.variant === "simd") {
      const { qc, pb, chunks } = this.#simdStatsShape(window);
      // Loop trips per lane: chunks x (perSplit / (lanes x pb) + 2 qc) stay under the budget.
      const perSplitMax = Math.max(
        1,
        (Math.floor(STATS_ITERATIONS / chunks) - 2 * qc) * this.#lanes * pb,
      );
      const splits = Math.max(1, Math.ceil(n / perSplitMax), Math.min(64, Math.ceil(n / 2048)));
      return { splits, perSplit: Math.ceil(n / splits) };
    }
    const qc = this.#rowsPerChunk(window);
    const chunks = Math.ceil((window * this.groupSize) / qc);
    const perPosition = (this.headDim / 8) * (qc + 1) + qc;
    const posPerThread = Math.max(1, Math.floor(STATS_ITERATIONS / (perPosition * chunks)));
    const minSplits = Math.ceil(n / (posPerThread * STATS_WG));
    const splits = Math.max(1, minSplits, Math.min(64, Math.ceil(n / (4 * STATS_WG))));
    return { splits, perSplit: Math.ceil(n / splits) };
  }

  #statsBytesPerHead(n: number, window: number): number {
    const { splits } = this.splitsFor(n, window);
    // The "simd" variant keeps a record per lane and the merged (m, 1/l) rows after them.
    const records = this.variant === "simd" ? splits * this.#lanes + 1 : splits;
    const bytes = records * window * this.groupSize * 8;
    return Math.ceil(bytes / ALIGN) * ALIGN;
  }

  #logitsBytesPerHead(n: number, window: number): number {
    return Math.ceil((window * this.groupSize * n * 4) / ALIGN) * ALIGN;
  }

  /** Whether a record of these sizes keeps the logits (see storeLogits). */
  #keepsLogits(headCount: number, n: number, window: number): boolean {
    return this.#storeLogits && headCount * this.#logitsBytesPerHead(n, window) <= LOGITS_BUDGET;
  }

  /** Scratch one record of exactly `headCount` heads uses. */
  #recordBytes(headCount: number, n: number, window: number): number {
    const logits = this.#keepsLogits(headCount, n, window)
      ? headCount * this.#logitsBytesPerHead(n, window)
      : 0;
    return headCount * this.#statsBytesPerHead(n, window) + logits;
  }

  /** Scratch for records of up to `headCount` heads: fewer heads may keep their logits where
   * more would not, so a smaller record can need more bytes than a larger one. */
  scratchBytes(args: { headCount: number; n: number; window: number }): number {
    const { headCount, n, window } = args;
    const keeping = this.#storeLogits
      ? Math.min(headCount, Math.floor(LOGITS_BUDGET / this.#logitsBytesPerHead(n, window)))
      : 0;
    return Math.max(
      this.#recordBytes(headCount, n, window),
      keeping > 0 ? this.#recordBytes(keeping, n, window) : 0,
    );
  }

  record(cmd: CommandList, a: ScoresArgs): this {
    const { cache } = a;
    const D = this.headDim;
    const G = this.groupSize;
    if (cache.disposed) throw new HcError("E_VK_BAD_HANDLE", "the KV cache was disposed");
    if (cache.headDim !== D) limit(`cache head dim ${cache.headDim} != kernel head dim ${D}`);
    const { headStart, headCount, n, window } = a;
    if (
      !Number.isInteger(headStart) || !Number.isInteger(headCount) || headStart < 0 ||
      headCount < 1 || headStart + headCount > cache.nKvHeads
    ) {
      limit(`heads [${headStart}, ${headStart + headCount}) outside [0, ${cache.nKvHeads})`);
    }
    if (!Number.isInteger(n) || n < 1 || n > 1 << 24) limit(`score length ${n} not in 1..2^24`);
    if (!Number.isInteger(window) || window < 1 || window * G > MAX_ROWS) {
      limit(`window ${window} x group ${G} must be in 1..${MAX_ROWS} query rows`);
    }
    for (let h = headStart; h < headStart + headCount; h++) {
      if (cache.capRows(h) < n) {
        limit(`KV head ${h} holds ${cache.capRows(h)} rows, scores need ${n}`);
      }
    }
    const kernel = a.poolKernel ?? 5;
    const span = POOL_WG * this.#positions;
    if (!Number.isInteger(kernel) || kernel < 1 || kernel % 2 === 0 || kernel > span / 4) {
      limit(`pool kernel ${kernel} must be odd and at most ${span / 4}`);
    }
    const nHeads = cache.nKvHeads * G;
    const qStride = a.qStride ?? nHeads * D;
    const qOff = a.qOffset ?? 0;
    requireFloatOffset(qStride, "qStride");
    requireFloatOffset(qOff, "qOffset");
    const rowsPerHead = a.windowMode === "separate" ? window : 1;
    const outStride = a.outStride ?? n;
    const outOff = a.outOffset ?? 0;
    if (!Number.isInteger(outStride) || outStride < n) limit(`outStride ${outStride} < n ${n}`);
    if (!Number.isInteger(outOff) || outOff < 0) limit(`outOffset ${outOff} is not a float index`);
    requireBytes(a.q, (qOff + (window - 1) * qStride + nHeads * D) * 4, "scores q");
    requireBytes(
      a.out,
      (outOff + (headCount * rowsPerHead - 1) * outStride + n) * 4,
      "scores output",
    );
    const perHead = this.#statsBytesPerHead(n, window);
    requireBytes(a.scratch, this.#recordBytes(headCount, n, window), "scores scratch");
    const scratchBuf = "buffer" in a.scratch ? a.scratch.buffer : a.scratch;
    const scratchOff = "buffer" in a.scratch ? a.scratch.offset : 0;
    const { splits, perSplit } = this.splitsFor(n, window);
    const scale = (a.scale ?? 1 / Math.sqrt(D)) * Math.LOG2E;
    const flags = (a.groupReduce === "mean" ? 1 : 0) | (a.windowMode === "separate" ? 2 : 0) |
      (a.poolFirst ? 4 : 0);

    // Groups of requested heads that sit in one chunk.
    const groups: { c: number; h0: number; h1: number }[] = [];
    cache.layout.chunkHeads.forEach(([c0, c1], c) => {
      const h0 = Math.max(c0, headStart);
      const h1 = Math.min(c1, headStart + headCount);
      if (h1 > h0) groups.push({ c, h0, h1 });
    });
    const statsBinding = (h0: number) => ({
      buffer: scratchBuf,
      offset: scratchOff + (h0 - headStart) * perHead,
      bytes: (groups.find((g) => g.h0 === h0)!.h1 - h0) * perHead,
    });
    const outBase = (h0: number) => outOff + (h0 - headStart) * rowsPerHead * outStride;
    if (this.variant === "simd") {
      const logitsPerHead = this.#logitsBytesPerHead(n, window);
      const logitsBinding = this.#keepsLogits(headCount, n, window)
        ? (h0: number, h1: number) => ({
          buffer: scratchBuf,
          offset: scratchOff + headCount * perHead + (h0 - headStart) * logitsPerHead,
          bytes: (h1 - h0) * logitsPerHead,
        })
        : null;
      this.#recordSimd(cmd, a, {
        groups,
        statsBinding,
        logitsBinding,
        logitStride: logitsPerHead / 4,
        outBase,
        push: [n, window, qOff / 4, qStride / 4],
        splits,
        perSplit,
        scale,
        flags,
        kernel,
        headStride: perHead / 8,
      });
      return this;
    }
    const tile = span - 2 * (kernel >> 1);
    const kernels = this.#kernelsFor(this.#rowsPerChunk(window));
    const tiles = Math.ceil(n / tile);
    if (tiles > 65535) limit(`score length ${n} needs ${tiles} tiles (max 65535)`);
    for (const { c, h0, h1 } of groups) {
      const push = STATS_PUSH.pack({
        headBase: h0,
        n,
        window,
        qOff4: qOff / 4,
        qStride4: qStride / 4,
        perSplit,
        scale,
      });
      cmd.dispatch(
        kernels.stats,
        [a.q, cache.k[c], cache.table, statsBinding(h0)],
        push,
        [
          splits,
          h1 - h0,
        ],
      );
    }
    cmd.barrier();
    for (const { c, h0, h1 } of groups) {
      const push = POOL_PUSH.pack({
        headBase: h0,
        n,
        window,
        qOff4: qOff / 4,
        qStride4: qStride / 4,
        splits,
        scale,
        flags,
        kernel,
        outOff: outBase(h0),
        outStride,
      });
      cmd.dispatch(kernels.pool, [a.q, cache.k[c], cache.table, statsBinding(h0), a.out], push, [
        tiles,
        h1 - h0,
      ]);
    }
    return this;
  }

  /** The "simd" passes: split statistics, merge, pool (barriers between). */
  #recordSimd(cmd: CommandList, a: ScoresArgs, r: {
    groups: { c: number; h0: number; h1: number }[];
    statsBinding: (h0: number) => Binding;
    /** Where the stats pass stores the logits, or null: the pool pass recomputes them. */
    logitsBinding: ((h0: number, h1: number) => Binding) | null;
    logitStride: number;
    outBase: (h0: number) => number;
    /** n, window, qOff4, qStride4 */
    push: number[];
    splits: number;
    perSplit: number;
    scale: number;
    flags: number;
    kernel: number;
    headStride: number;
  }): void {
    const { cache } = a;
    const [n, window, qOff4, qStride4] = r.push;
    const G = this.groupSize;
    const L = this.#lanes;
    const st = this.#simdStatsShape(window);
    const separate = a.windowMode === "separate";
    const pool = this.#simdPoolShape(window, separate, r.kernel);
    this.lastStatsBindings = { texel: 0, storage: 0 };
    const tiles = Math.ceil(n / (L * pool.p));
    if (tiles > 65535) limit(`score length ${n} needs ${tiles} tiles (max 65535)`);
    const spec = [L, G, this.headDim];
    const keep = r.logitsBinding !== null;
    const stats = (texel: boolean) =>
      this.#kernel(
        `simd-stats:${st.qc}:${st.pb}:${keep ? 1 : 0}:${texel ? 1 : 0}`,
        () =>
          this.device.kernel(
            SHADERS.scores_stats_cpu.variant({ logits: keep, texel }),
            {
              bindings: keep ? 5 : 4,
              // Binding 1 is K.
              kinds: Array.from(
                { length: keep ? 5 : 4 },
                (_, i): BindingKind => i === 1 && texel ? "texel" : "storage",
              ),
              push: STATS_CPU_PUSH,
              spec: [...spec, st.qc, st.pb],
            },
          ),
      );
    const merge = this.#kernel(
      "simd-merge",
      () =>
        this.device.kernel(SHADERS.scores_merge.variant(), {
          bindings: 1,
          push: MERGE_PUSH,
          spec: [MERGE_WG],
        }),
    );
    const poolKernel = this.#simdPool(pool, r.kernel, separate, keep);
    for (const { c, h0, h1 } of r.groups) {
      const push = STATS_CPU_PUSH.pack({
        headBase: h0,
        n,
        window,
        qOff4,
        qStride4,
        perSplit: r.perSplit,
        scale: r.scale,
        headStride: r.headStride,
        logitStride: r.logitStride,
      });
      const bindings = [a.q, cache.k[c], cache.table, r.statsBinding(h0)];
      if (keep) bindings.push(r.logitsBinding!(h0, h1));
      // A chunk holds whole rows of 2 * headDim bytes, so whole 16-byte texels.
      const texel = cache.k[c].bytes <= this.#maxTexelBytes;
      this.lastStatsBindings[texel ? "texel" : "storage"]++;
      cmd.dispatch(stats(texel), bindings, push, [r.splits, h1 - h0]);
    }
    cmd.barrier();
    for (const { h0, h1 } of r.groups) {
      cmd.dispatch(
        merge,
        [r.statsBinding(h0)],
        MERGE_PUSH.pack({ rows: window * G, records: r.splits * L, headStride: r.headStride }),
        [1, h1 - h0],
      );
    }
    cmd.barrier();
    for (const { c, h0, h1 } of r.groups) {
      const push = POOL_CPU_PUSH.pack({
        headBase: h0,
        n,
        window,
        qOff4,
        qStride4,
        records: r.splits * L,
        scale: r.scale,
        flags: r.flags,
        headStride: r.headStride,
        outOff: r.outBase(h0),
        outStride: a.outStride ?? n,
        logitStride: r.logitStride,
      });
      const bindings = [a.q, cache.k[c], cache.table, r.statsBinding(h0), a.out];
      if (keep) bindings.push(r.logitsBinding!(h0, h1));
      cmd.dispatch(poolKernel, bindings, push, [tiles, h1 - h0]);
    }
  }

  #simdPool(
    pool: { wc: number; p: number; pk: number },
    kernel: number,
    separate: boolean,
    logits: boolean,
  ): Kernel {
    const L = this.#lanes;
    return this.#kernel(
      `simd-pool:${pool.wc}:${pool.p}:${kernel}:${separate ? 1 : 0}:${pool.pk}:${logits ? 1 : 0}`,
      () =>
        this.device.kernel(SHADERS.scores_pool_cpu.variant({ logits }), {
          bindings: logits ? 6 : 5,
          push: POOL_CPU_PUSH,
          spec: [
            L,
            this.groupSize,
            this.headDim,
            pool.wc,
            pool.p,
            kernel,
            separate ? 1 : 0,
            pool.pk,
          ],
        }),
    );
  }

  /**
   * One KV head's pooled, group-reduced scores row from logits and prompt softmax statistics
   * the decode attention stored (its watch, src/cache/kv_layer.ts KvWatch): a pooling pass
   * alone (shaders/scores_pool_logits.comp), so a HeteroCache refresh selection reads G floats
   * per prompt row instead of the row's keys. Window 1; the row is record()'s for that query,
   * up to the logits' summation order.
   */
  recordPooledLogits(cmd: CommandList, a: PooledLogitsArgs): this {
    const G = this.groupSize;
    const { n } = a;
    if (!Number.isInteger(n) || n < 1 || n > 1 << 24) limit(`score length ${n} not in 1..2^24`);
    const kernel = a.poolKernel ?? 5;
    if (!Number.isInteger(kernel) || kernel < 1 || kernel % 2 === 0 || kernel > 63) {
      limit(`pool kernel ${kernel} must be odd and at most 63`);
    }
    const statsOff = a.statsOffset;
    if (!Number.isInteger(statsOff) || statsOff < 0 || statsOff % 2 !== 0) {
      limit(`statsOffset ${statsOff} is not an even float index`);
    }
    const outOff = a.outOffset ?? 0;
    if (!Number.isInteger(outOff) || outOff < 0) limit(`outOffset ${outOff} is not a float index`);
    const stride = a.logitStride ?? n;
    if (!Number.isInteger(stride) || stride < n) limit(`logitStride ${stride} < n ${n}`);
    requireBytes(a.logits, ((G - 1) * stride + n) * 4, "pooled logits");
    requireBytes(a.stats, (statsOff + 2 * G) * 4, "pooled logits statistics");
    requireBytes(a.out, (outOff + n) * 4, "pooled scores output");
    const wg = this.variant === "simd" ? this.#lanes : POOL_WG;
    const groups = Math.ceil(n / (wg * POOL_LOGITS_P));
    if (groups > 65535) limit(`score length ${n} needs ${groups} workgroups (max 65535)`);
    const texel = this.variant === "simd" && stride % 4 === 0 &&
      texelWhole(this.device, a.logits, this.#maxTexelBytes);
    const k = this.#kernel(
      `pool-logits:${wg}:${kernel}:${texel ? 1 : 0}`,
      () =>
        this.device.kernel(SHADERS.scores_pool_logits.variant({ texel }), {
          bindings: 3,
          kinds: [texel ? "texel" : "storage", "storage", "storage"],
          push: POOL_LOGITS_PUSH,
          spec: [wg, G, POOL_LOGITS_P, kernel],
        }),
    );
    const push = POOL_LOGITS_PUSH.pack({
      n,
      stride,
      statsOff: statsOff / 2,
      outOff,
      flags: (a.groupReduce === "mean" ? 1 : 0) | (a.poolFirst ? 4 : 0),
    });
    cmd.dispatch(k, [a.logits, a.stats, a.out], push, [groups, 1]);
    return this;
  }

  dispose(): void {
    for (const k of this.#kernels.values()) k.dispose();
    this.#kernels.clear();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

export interface TopKArgs {
  /** f32 rows: row r at float rowOffset + r * rowStride, n values. */
  rows: Binding;
  rowOffset?: number;
  rowStride: number;
  rowCount: number;
  n: number;
  k: number;
  /** u32 [rowCount][outStride] (outStride >= min(k, n)). */
  out: Binding;
  outOffset?: number;
  outStride?: number;
}

/** Whether `b` can be bound as a texel buffer: an aligned offset, whole 16-byte texels, at most
 * `maxBytes` (0: no texel buffers). */
function texelWhole(device: Device, b: Binding, maxBytes: number): boolean {
  const buf = "buffer" in b ? b.buffer : b;
  const off = "buffer" in b ? b.offset : 0;
  const bytes = "buffer" in b ? b.bytes ?? buf.bytes - off : buf.bytes;
  return maxBytes > 0 && off % device.info.minTexelBufferOffsetAlignment === 0 &&
    bytes % TEXEL_BYTES === 0 && bytes <= maxBytes;
}

/** The candidates (a key and a position, 8 bytes each) that fit beside scores_topk.comp's other
 * shared arrays: two 256-bin histograms, a few words, and two counts per invocation. */
function topkCandidateCap(sharedBytes: number, workgroupSize: number): number {
  const fixed = 2 * 256 * 4 + 32 + 8 * workgroupSize + 64; // 64: spare for the compiler's own
  return Math.max(1, Math.floor((sharedBytes - fixed) / 8));
}

/** Exact top-k, indices ascending by position, one workgroup per row: a sample brackets the k-th
 * value, one pass copies the values inside the bracket into shared memory and the select
 * finishes there, one pass writes the indices; radix histograms over the row where the bracket
 * misses or overflows (see shaders/scores_topk.comp). */
export class TopK implements Disposable {
  readonly #device: Device;
  readonly #kernel: Kernel;
  /** The pass reading the rows as a texel buffer (CPU devices with texel buffers): lavapipe
   * gathers texels with vector loads but loads storage buffers lane by lane. */
  readonly #texel: Kernel | null = null;
  readonly #wg: number;
  /** How many candidates for the k-th value the kernel selects among in shared memory (more
   * than that: more radix passes over the row); its sample holds twice as many keys. */
  readonly candidateCap: number;
  readonly #cpu: boolean;
  /** A CPU driver: its loop cap bounds the row length. */
  readonly #cpuDriver: boolean;
  /** Row bindings of the last record() by kind. */
  lastBinding: "texel" | "storage" | null = null;

  constructor(device: Device, opts: { texel?: boolean } = {}) {
    this.#device = device;
    this.#cpu = deviceParallelism(device).cpu;
    this.#cpuDriver = deviceParallelism(device).cpuDriver;
    this.#wg = this.#cpu ? 256 : 1024;
    this.candidateCap = topkCandidateCap(device.info.maxComputeSharedMemoryBytes, this.#wg);
    const spec = [this.#wg, this.candidateCap];
    this.#kernel = device.kernel(SHADERS.scores_topk.variant({ texel: false }), {
      bindings: 2,
      push: TOPK_PUSH,
      spec,
    });
    if (this.#cpu && (opts.texel ?? true) && device.info.texelBuffer) {
      try {
        this.#texel = device.kernel(SHADERS.scores_topk.variant({ texel: true }), {
          bindings: 2,
          kinds: ["texel", "storage"],
          push: TOPK_PUSH,
          spec,
        });
      } catch (e) {
        this.#kernel.dispose();
        throw e;
      }
    }
  }

  /** Bytes to allocate for `floats` f32 row values so that the rows take the texel path. */
  static rowsBytes(floats: number): number {
    return Math.ceil((floats * 4) / TEXEL_BYTES) * TEXEL_BYTES;
  }

  /** Whether `rows` can be bound as a texel buffer: an aligned offset, whole texels (see
   * `rowsBytes`), not too many of them. */
  #texelRows(rows: Binding): boolean {
    if (this.#texel === null) return false;
    const info = this.#device.info;
    const buf = "buffer" in rows ? rows.buffer : rows;
    const off = "buffer" in rows ? rows.offset : 0;
    const bytes = "buffer" in rows ? rows.bytes ?? buf.bytes - off : buf.bytes;
    return off % info.minTexelBufferOffsetAlignment === 0 && bytes % TEXEL_BYTES === 0 &&
      bytes / TEXEL_BYTES <= info.maxTexelBufferElements;
  }

  record(cmd: CommandList, a: TopKArgs): this {
    const { n, k, rowCount } = a;
    // At most seven passes of n / workgroup loads per invocation (a sample's copy that missed,
    // four histograms, a count, the output) stay under lavapipe's loop cap.
    const maxN = this.#cpuDriver ? 1 << 21 : 1 << 28;
    if (!Number.isInteger(n) || n < 1 || n > maxN) limit(`top-k row length ${n} not in 1..${maxN}`);
    if (!Number.isInteger(k) || k < 0) limit(`top-k k ${k} is not a count`);
    if (!Number.isInteger(rowCount) || rowCount < 1 || rowCount > 65535) {
      limit(`top-k rows ${rowCount} not in 1..65535`);
    }
    const rowOff = a.rowOffset ?? 0;
    const outOff = a.outOffset ?? 0;
    const kk = Math.min(k, n);
    const outStride = a.outStride ?? kk;
    if (!Number.isInteger(a.rowStride) || a.rowStride < n) {
      limit(`rowStride ${a.rowStride} < n ${n}`);
    }
    if (!Number.isInteger(outStride) || outStride < kk) limit(`outStride ${outStride} < k ${kk}`);
    if (!Number.isInteger(rowOff) || rowOff < 0 || !Number.isInteger(outOff) || outOff < 0) {
      limit("top-k offsets must be non-negative integers");
    }
    requireBytes(a.rows, (rowOff + (rowCount - 1) * a.rowStride + n) * 4, "top-k rows");
    requireBytes(a.out, (outOff + (rowCount - 1) * outStride + kk) * 4, "top-k output");
    if (kk === 0) return this;
    const texel = this.#texelRows(a.rows);
    this.lastBinding = texel ? "texel" : "storage";
    cmd.dispatch(
      texel ? this.#texel! : this.#kernel,
      [a.rows, a.out],
      TOPK_PUSH.pack({ n, k, rowOff, rowStride: a.rowStride, outOff, outStride }),
      [rowCount],
    );
    return this;
  }

  dispose(): void {
    this.#kernel.dispose();
    this.#texel?.dispose();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}
