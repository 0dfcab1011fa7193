/**
 * Attention over the per-head KV caches of src/cache/kv_layer.ts.
 *
 * GQA convention (llama.cpp and HF `repeat_kv`): query head `qh` reads KV head
 * `floor(qh / groupSize)`; the G query heads of KV head h are h*G .. h*G+G-1, so a token's query
 * vector is `[nKvHeads * G][headDim]` f32 and the output has the same shape. Softmax scale
 * 1/sqrt(headDim) unless `scale` is given.
 *
 * Both classes have a GPU shape and CPU shapes (lavapipe: every load is a loop over the lanes,
 * subgroups run one after another, loops stop after 65535 trips), picked by the device's
 * variant set (Device.variants); the
 * CPU prefill shapes assume a workgroup of `device.info.subgroupSize` invocations is one
 * subgroup (true on lavapipe).
 *
 * Synchronisation contract of every `record`: the caller puts a barrier between whatever wrote
 * the inputs (q, the cache rows, the lengths) and this call, and another between this call and
 * whatever reads the output; barriers *inside* a call (prefill pass -> pass) are recorded here.
 * The decode attention records one dispatch per cache chunk and no barrier: its split
 * workgroups merge their partials themselves (the last of a head's to finish, through arrival
 * counters at the start of the scratch; shaders/attn_merge.glsl).
 *
 * Scratch: one buffer may serve both classes and every layer (sequential use). Its first
 * `attentionCounterBytes` bytes hold the decode attention's arrival counters, which must be
 * zero before its first decode (`DecodeAttention.zeroCounters`, once per allocation: device
 * memory is not zeroed), are left zero by every decode, and are never written by the prefill
 * (its records start after them).
 */
import { HcError } from "../errors.ts";
import { SHADERS } from "../../shaders/variants.ts";
import {
  type Binding,
  type CommandList,
  type Device,
  type Kernel,
  pushLayout,
  TEXEL_BYTES,
} from "../vk/mod.ts";
import { checkHeadDim, type KvLayerCache } from "../cache/kv_layer.ts";
import {
  deviceParallelism,
  lengthsBinding,
  requireBytes,
  requireFloatOffset,
  subWindow,
  windowOf,
} from "./checks.ts";
import { type PrefillTileShape, prefillTileShape, swizzleMask } from "./attention_tiles.ts";

function limit(message: string): never {
  throw new HcError("E_VK_LIMIT", message);
}

function checkGroup(groupSize: number, headDim: number): void {
  if (!Number.isInteger(groupSize) || groupSize < 1 || groupSize > 16) {
    limit(`GQA group size ${groupSize} is not supported (1..16 query heads per KV head)`);
  }
  if (groupSize * headDim > 2048) {
    limit(`group size ${groupSize} x head dim ${headDim} exceeds 2048 (shared memory)`);
  }
}

function checkCache(cache: KvLayerCache, headDim: number): void {
  if (cache.disposed) throw new HcError("E_VK_BAD_HANDLE", "the KV cache was disposed");
  if (cache.headDim !== headDim) {
    limit(`cache head dim ${cache.headDim} != kernel head dim ${headDim}`);
  }
}

const LOG2E = Math.LOG2E;

/** The shaders' soft-capping constant: c in the log2 domain of their scores, 0 for none. */
function softcapPush(c: number | undefined, built: boolean): number {
  const on = c !== undefined && c !== 0;
  if (on && (!(c > 0) || !Number.isFinite(c))) limit(`logit soft-capping ${c} must be positive`);
  // The kernels soft-cap by specialisation (see the shaders' SOFTCAP), fixed when built.
  if (on !== built) {
    limit(
      built
        ? "this attention kernel was built to soft-cap logits: give it the cap"
        : `logit soft-capping ${c} needs an attention kernel built with softcap: true`,
    );
  }
  return on ? c * LOG2E : 0;
}

/** The push block of the decode pass (shaders/attn_decode.comp, attn_decode_cpu.comp). */
const DECODE_PUSH = pushLayout({
  headBase: "u32",
  minTok: "u32",
  qOff4: "u32",
  mlOff: "u32",
  scale: "f32",
  window: "u32",
  softcap: "f32",
  recOff: "u32",
  outOff: "u32",
});

/** The decode pass's push block with a watch (KvWatch). */
const DECODE_WATCH_PUSH = pushLayout({
  headBase: "u32",
  minTok: "u32",
  qOff4: "u32",
  mlOff: "u32",
  scale: "f32",
  window: "u32",
  softcap: "f32",
  recOff: "u32",
  outOff: "u32",
  covOff: "u32",
  promptRows: "u32",
  logitStride: "u32",
  covOut: "u32",
  statsOut: "u32",
});

/**
 * Bytes at the start of an attention scratch that hold the decode attention's arrival counters
 * (a u32 per KV head, see shaders/attn_merge.glsl), rounded up to 256 bytes (the largest
 * minStorageBufferOffsetAlignment Vulkan allows) so that the prefill's records can be bound
 * right after them.
 */
export function attentionCounterBytes(nKvHeads: number): number {
  return Math.ceil((nKvHeads * 4) / 256) * 256;
}

/** The push block of every prefill variant (shaders/attn_prefill*.comp). */
const PREFILL_PUSH = pushLayout({
  headBase: "u32",
  tokens: "u32",
  p0: "u32",
  qOff4: "u32",
  qStride4: "u32",
  oOff4: "u32",
  oStride4: "u32",
  kv0: "u32",
  kv1: "u32",
  flags: "u32",
  nHeads: "u32",
  scale: "f32",
  window: "u32",
  softcap: "f32",
});

export interface DecodeAttentionOptions {
  headDim: number;
  /** Query heads per KV head (G). */
  groupSize: number;
  /** Split-pass workgroup size (power of two, >= headDim / 8); default 64. */
  workgroupSize?: number;
  /** A head of length len uses ceil(len / minTokensPerSplit) splits at most; default 256
   * (2048 for the "simd" variant). */
  minTokensPerSplit?: number;
  /** Splits are sized so none holds more rows than this (lavapipe loop cap); default 4096
   * (8192 for the "simd" variant). */
  maxTokensPerSplit?: number;
  /** "lanes": a workgroup of many invocations splits rows and dims, with workgroup reductions
   * (GPUs); "simd": a workgroup is one subgroup whose lanes each own a slice of every row's
   * dims and complete the scores with subgroup shuffles (SIMD CPU drivers such as lavapipe).
   * Default: "simd" on CPU devices with shaderInt64. */
  variant?: "lanes" | "simd";
  /** "simd": read K and V as texel buffers where the device has them (default), falling back
   * to storage buffers per cache chunk that does not fit a texel view. lavapipe gathers texels
   * with vector loads but loads storage buffers lane by lane. */
  texel?: boolean;
  /** Build for logit soft-capping (Gemma 2): every record then gives `softcap`. */
  softcap?: boolean;
}

export interface DecodeAttentionArgs {
  cache: KvLayerCache;
  /** f32 [nKvHeads * G][headDim] at float offset qOffset (a multiple of 4). */
  q: Binding;
  qOffset?: number;
  /** f32 [nKvHeads * G][headDim] at float offset outOffset; must not overlap q (a head's
   * output is written while other heads' workgroups still read their queries). */
  out: Binding;
  outOffset?: number;
  /** At least `scratchBytes(cache)` bytes, its counters zeroed once (`zeroCounters`); may be
   * shared by all layers and the prefill attention (sequential use). */
  scratch: Binding;
  /** Softmax scale; default 1/sqrt(headDim). */
  scale?: number;
  /** Logit soft-capping c (Gemma 2): each scaled score s becomes c * tanh(s / c); 0: none. */
  softcap?: number;
}

/**
 * Decode-step attention: one query token against each KV head's rows [0, len) (ragged per head),
 * or against the last `cache.window` positions of a sliding-window ring, split over the length;
 * the last workgroup of each KV head to finish merges the head's splits (one pass, no barrier).
 */
export class DecodeAttention implements Disposable {
  readonly headDim: number;
  readonly groupSize: number;
  readonly workgroupSize: number;
  readonly minTokensPerSplit: number;
  readonly maxTokensPerSplit: number;
  readonly variant: "lanes" | "simd";
  readonly #targetGroups: number;
  readonly #lanes: number;
  readonly #maxBinding: number;
  readonly #maxTexelBytes: number;
  /** The split pass over storage buffers; made on first use where texels are the default. */
  #split: Kernel | null = null;
  readonly #makeSplit: () => Kernel;
  /** The "simd" split pass reading K/V as texels, where the device has them. */
  readonly #splitTexel: Kernel | null = null;
  /** The WATCH variants (storage, texel), made on first use by a watched cache. */
  readonly #makeWatch: () => { split: Kernel; texel: Kernel | null };
  #watch: { split: Kernel; texel: Kernel | null } | null = null;
  /** Split-pass dispatches of the last record() call by K/V binding kind. */
  lastBindings = { texel: 0, storage: 0 };
  /** Built to soft-cap logits (DecodeAttentionOptions.softcap). */
  readonly #softcap: boolean;

  constructor(device: Device, opts: DecodeAttentionOptions) {
    checkHeadDim(opts.headDim);
    checkGroup(opts.groupSize, opts.headDim);
    this.#softcap = opts.softcap ?? false;
    this.headDim = opts.headDim;
    this.groupSize = opts.groupSize;
    this.workgroupSize = opts.workgroupSize ?? 64;
    const wg = this.workgroupSize;
    if (!(wg >= 8 && wg <= 256 && (wg & (wg - 1)) === 0) || wg < opts.headDim / 8) {
      limit(`decode workgroup size ${wg} must be a power of two in [max(8, headDim/8), 256]`);
    }
    this.#lanes = Math.max(1, Math.min(64, device.info.subgroupSize));
    this.#maxBinding = device.info.maxStorageBufferRange;
    this.#maxTexelBytes = device.info.maxTexelBufferElements * TEXEL_BYTES;
    // The simd shader declares 64-bit integers (its widest loads), so it needs shaderInt64.
    this.variant = opts.variant ??
      (deviceParallelism(device).cpu && device.info.int64 ? "simd" : "lanes");
    if (this.variant === "simd" && !device.info.int64) {
      limit(`the simd decode variant needs shaderInt64, which ${device.info.name} lacks`);
    }
    // A CPU thread pays a split's fixed cost (queries, record, merge input) for its rows: short
    // heads beside long ones (HeteroCache's compressed beside its full heads) took 20 splits
    // of 256 rows each where 3 of 2048 do. 8B shape at 64K, two runs, HeteroCache's mean step
    // against SnapKV's in one process: 0.927 / 0.915 with 256, 0.951 / 0.935 with 2048.
    this.minTokensPerSplit = opts.minTokensPerSplit ?? (this.variant === "simd" ? 2048 : 256);
    // The longest head sets every head's split count (the dispatch is heads x splits, fixed at
    // recording), and a CPU thread pays for each workgroup, empty or not: with 2048 rows a
    // 64K-token full head gave its compressed neighbours 30 empty workgroups each. Device time
    // of the decode attention (4 layers, 8B shape, median of 10 steps, 2048 -> 8192): 64K
    // SnapKV 25.8 -> 25.9 ms, HeteroCache 30.4 -> 27.1 ms (27.1 -> 25.8 without its watch);
    // 128K SnapKV 51.1 -> 48.9, HeteroCache 57.0 -> 52.8, full 206.6 -> 198.8; 4K level;
    // 16384 gained nothing more.
    this.maxTokensPerSplit = opts.maxTokensPerSplit ?? (this.variant === "simd" ? 8192 : 4096);
    if (
      !Number.isInteger(this.minTokensPerSplit) || !Number.isInteger(this.maxTokensPerSplit) ||
      this.minTokensPerSplit < 1 || this.minTokensPerSplit > this.maxTokensPerSplit
    ) {
      limit(
        `tokens per split: need integers 1 <= min (${this.minTokensPerSplit}) <= max (${this.maxTokensPerSplit})`,
      );
    }
    this.#targetGroups = deviceParallelism(device).targetGroups;
    if (this.variant === "simd" && this.maxTokensPerSplit > 65535) {
      // One invocation walks a whole split (a trip per 1-2 keys): lavapipe's loop cap.
      limit(`maxTokensPerSplit ${this.maxTokensPerSplit} exceeds 65535 for the simd variant`);
    }
    if (this.variant === "simd") {
      // Keys per block: the shuffle butterfly and the rescale run once per block; 2 keys keep
      // llvmpipe's compile time low for wide slices.
      const perLane = Math.ceil(opts.headDim / 2 / this.#lanes);
      const spec = [
        this.#lanes,
        opts.groupSize,
        opts.headDim,
        perLane <= 8 ? 2 : 1,
        Math.log2(this.#lanes),
        1,
        this.#softcap ? 1 : 0,
      ];
      this.#makeSplit = () =>
        device.kernel(SHADERS.attn_decode_cpu.variant({ texel: false, watch: false }), {
          bindings: 7,
          push: DECODE_PUSH,
          spec,
        });
      const texel = (opts.texel ?? true) && device.info.texelBuffer;
      const texelKinds = [
        "storage",
        "texel",
        "texel",
        "storage",
        "storage",
        "storage",
        "storage",
      ] as const;
      if (texel) {
        this.#splitTexel = device.kernel(
          SHADERS.attn_decode_cpu.variant({ texel: true, watch: false }),
          {
            bindings: 7,
            kinds: [...texelKinds],
            push: DECODE_PUSH,
            spec,
          },
        );
      } else {
        this.#split = this.#makeSplit();
      }
      this.#makeWatch = () =>
        this.#watchKernels(
          () =>
            device.kernel(SHADERS.attn_decode_cpu.variant({ texel: false, watch: true }), {
              bindings: 11,
              push: DECODE_WATCH_PUSH,
              spec,
            }),
          texel
            ? () =>
              device.kernel(SHADERS.attn_decode_cpu.variant({ texel: true, watch: true }), {
                bindings: 11,
                kinds: [...texelKinds, "storage", "storage", "storage", "storage"],
                push: DECODE_WATCH_PUSH,
                spec,
              })
            : null,
        );
    } else {
      this.#makeWatch = () =>
        this.#watchKernels(
          () =>
            device.kernel(SHADERS.attn_decode.variant({ watch: true }), {
              bindings: 11,
              push: DECODE_WATCH_PUSH,
              spec: [wg, opts.groupSize, opts.headDim, this.#softcap ? 1 : 0],
            }),
          null,
        );
      this.#makeSplit = () =>
        device.kernel(SHADERS.attn_decode.variant({ watch: false }), {
          bindings: 7,
          push: DECODE_PUSH,
          spec: [wg, opts.groupSize, opts.headDim, this.#softcap ? 1 : 0],
        });
      this.#split = this.#makeSplit();
    }
  }

  #watchKernels(
    split: () => Kernel,
    texel: (() => Kernel) | null,
  ): { split: Kernel; texel: Kernel | null } {
    const s = split();
    try {
      return { split: s, texel: texel ? texel() : null };
    } catch (e) {
      s.dispose();
      throw e;
    }
  }

  /** Splits per head the recorded dispatch uses for this cache (fixed by the capacities). */
  splitsFor(cache: KvLayerCache): number {
    const cap = Math.max(1, cache.window > 0 ? cache.window : cache.maxCapRows);
    const forced = Math.ceil(cap / this.maxTokensPerSplit);
    const wanted = Math.min(
      Math.ceil(cap / this.minTokensPerSplit),
      Math.ceil(this.#targetGroups / cache.nKvHeads),
    );
    const s = Math.max(1, forced, wanted);
    if (s > 65535) limit(`${s} splits per head exceed the workgroup count limit`);
    return s;
  }

  /** Scratch floats: the arrival counters (attentionCounterBytes), the records' outputs,
   * their (m, l) pairs, then (watched caches) their (held, prompt) mass pairs. */
  #layout(
    cache: KvLayerCache,
  ): { records: number; recOff: number; mlOff: number; covOff: number; floats: number } {
    const records = cache.nKvHeads * this.splitsFor(cache) * this.groupSize;
    const recOff = attentionCounterBytes(cache.nKvHeads) / 4;
    const mlOff = recOff + records * this.headDim;
    const covOff = mlOff + records * 2;
    return { records, recOff, mlOff, covOff, floats: covOff + (cache.watch ? records * 2 : 0) };
  }

  /** Scratch bytes for this cache: the arrival counters, then the split partials. */
  scratchBytes(cache: KvLayerCache): number {
    return this.#layout(cache).floats * 4;
  }

  /**
   * Zeroes the arrival counters at the start of `scratch` for caches of `nKvHeads` heads (the
   * first `attentionCounterBytes(nKvHeads)` bytes), waiting until done. Once per scratch
   * allocation, before its first decode (device memory is not zeroed): each decode leaves them
   * zero. Not while a recorded decode on this scratch may be running.
   */
  zeroCounters(scratch: Binding, nKvHeads: number): void {
    const w = windowOf(scratch);
    const bytes = attentionCounterBytes(nKvHeads);
    requireBytes(scratch, bytes, "decode scratch counters");
    w.buffer.device.upload(w.buffer, new Uint8Array(bytes), w.offset);
  }

  record(cmd: CommandList, a: DecodeAttentionArgs): this {
    const { cache } = a;
    checkCache(cache, this.headDim);
    const D = this.headDim;
    const G = this.groupSize;
    const nHeads = cache.nKvHeads * G;
    const S = this.splitsFor(cache);
    const qOff = a.qOffset ?? 0;
    const outOff = a.outOffset ?? 0;
    requireFloatOffset(qOff, "qOffset");
    if (!Number.isInteger(outOff) || outOff < 0) limit(`outOffset ${outOff} is not a float index`);
    requireBytes(a.q, (qOff + nHeads * D) * 4, "decode q");
    requireBytes(a.out, (outOff + nHeads * D) * 4, "decode output");
    {
      const q = windowOf(a.q);
      const o = windowOf(a.out);
      const q0 = q.offset + qOff * 4;
      const o0 = o.offset + outOff * 4;
      const bytes = nHeads * D * 4;
      if (q.buffer === o.buffer && q0 < o0 + bytes && o0 < q0 + bytes) {
        limit("decode output overlaps q: the merge writes it while other heads still read q");
      }
    }
    const scratchBytes = this.scratchBytes(cache);
    if (scratchBytes > this.#maxBinding) {
      limit(
        `decode scratch of ${scratchBytes} bytes exceeds one binding (${this.#maxBinding}); use fewer rows per layer`,
      );
    }
    requireBytes(a.scratch, scratchBytes, "decode scratch");
    const { recOff, mlOff, covOff } = this.#layout(cache);
    // A window of the lengths arena, bound at its (aligned) offset.
    const lens = lengthsBinding(cmd, cache);
    const w = cache.watch;
    if (w) {
      requireBytes(w.table, cache.nKvHeads * 8, "watch table");
      requireBytes(w.out, (w.outOffset + nHeads * 2) * 4, "watch output");
      requireBytes(w.out, (w.statsOffset + nHeads * 2) * 4, "watch statistics");
      if (!Number.isInteger(w.promptRows) || w.promptRows < 0) {
        limit(`watch prompt rows ${w.promptRows} is not a row count`);
      }
      if (!Number.isInteger(w.logitStride) || w.logitStride < w.promptRows) {
        limit(`watch logit stride ${w.logitStride} is below its ${w.promptRows} prompt rows`);
      }
      for (const [name, at] of [["outOffset", w.outOffset], ["statsOffset", w.statsOffset]]) {
        if (!Number.isInteger(at) || (at as number) < 0) {
          limit(`watch ${name} ${at} is not a float index`);
        }
      }
    }
    const watch = w ? (this.#watch ??= this.#makeWatch()) : null;
    const scale = (a.scale ?? 1 / Math.sqrt(D)) * LOG2E;
    const softcap = softcapPush(a.softcap, this.#softcap);
    const window = cache.window;
    this.lastBindings = { texel: 0, storage: 0 };
    cache.layout.chunkHeads.forEach(([h0, h1], c) => {
      if (h1 <= h0) return;
      const push = {
        headBase: h0,
        minTok: this.minTokensPerSplit,
        qOff4: qOff / 4,
        mlOff,
        scale,
        window,
        softcap,
        recOff,
        outOff,
      };
      // A chunk (whole rows of 2 * headDim bytes, so whole 16-byte texels) too big for one
      // texel view takes the storage-buffer pass.
      const texel = this.#splitTexel !== null &&
        Math.max(cache.k[c].bytes, cache.v[c].bytes) <= this.#maxTexelBytes;
      this.lastBindings[texel ? "texel" : "storage"]++;
      const kernel = watch
        ? (texel ? watch.texel! : watch.split)
        : texel
        ? this.#splitTexel!
        : (this.#split ??= this.#makeSplit());
      const bindings = [
        a.q,
        cache.k[c],
        cache.v[c],
        cache.table,
        lens,
        a.scratch,
        a.out,
      ];
      if (w) bindings.push(w.table, w.masks, w.logits, w.out);
      cmd.dispatch(
        kernel,
        bindings,
        w
          ? DECODE_WATCH_PUSH.pack({
            ...push,
            covOff,
            promptRows: w.promptRows,
            logitStride: w.logitStride,
            covOut: w.outOffset,
            statsOut: w.statsOffset,
          })
          : DECODE_PUSH.pack(push),
        // The CPU pass is split-major (see attn_decode_cpu.comp), the GPU pass head-major. Every
        // workgroup counts in its head's arrivals: the grid's split count is each head's S.
        this.variant === "simd" ? [h1 - h0, S] : [S, h1 - h0],
      );
    });
    return this;
  }

  dispose(): void {
    this.#split?.dispose();
    this.#splitTexel?.dispose();
    if (this.#watch) {
      this.#watch.split.dispose();
      this.#watch.texel?.dispose();
    }
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

export interface PrefillAttentionArgs {
  /** Heads hold every row 0 .. position + tokens - 1 (row index = position), or, for a
   * sliding-window cache, the window's rows in a ring of at least window + tokens - 1 rows. */
  cache: KvLayerCache;
  /** f32: token t, query head qh at float `qOffset + t * qStride + qh * headDim`. */
  q: Binding;
  qOffset?: number;
  /** Floats between tokens (default nKvHeads * G * headDim). */
  qStride?: number;
  /** Query tokens B, at positions position .. position + B - 1. */
  tokens: number;
  position: number;
  /** f32, same indexing as q with outOffset / outStride. Also holds the running state between
   * key passes, so it must not alias q. */
  out: Binding;
  outOffset?: number;
  outStride?: number;
  /** At least `scratchBytes(cache, tokens)` bytes. */
  scratch: Binding;
  scale?: number;
  /** Key rows per dispatch; default: all of them, except for the "tiled" variant on CPU
   * drivers (2048: lavapipe's per-invocation loop cap). */
  keysPerPass?: number;
  /** Logit soft-capping c (Gemma 2); 0: none. */
  softcap?: number;
}

/** Prefill variants: "tiled" (GPUs), "rows" and "split" (SIMD CPU drivers; see the options). */
export type PrefillVariant = "tiled" | "rows" | "split";

export interface PrefillAttentionOptions {
  headDim: number;
  /** Query heads per KV head (G). */
  groupSize: number;
  /**
   * "tiled": flash-style workgroups of up to 64 query rows x 64-key tiles, f16 queries and K/V
   * in shared memory, subgroup reductions (GPUs; shape: src/kernels/attention_tiles.ts).
   * "split": one subgroup per workgroup working on `rowsPerGroup` query rows together, each
   * lane owning a slice of the head dims; needs a head dim that is a multiple of 2 x the
   * subgroup size and subgroup shuffles (SIMD CPU drivers such as lavapipe).
   * "rows": one subgroup per workgroup, each lane owning `rowsPerLane` whole query rows (CPU
   * drivers, any head dim).
   * Default: "tiled" on GPUs; on CPU devices "split" where the head dim allows, else "rows".
   */
  variant?: PrefillVariant;
  /** "split": query rows per workgroup, a multiple of the subgroup size (each loaded K/V row
   * serves this many rows). Default: 32 up to head dim 64, 16 up to 128, 8 above. */
  rowsPerGroup?: number;
  /** "rows": query rows per lane (about 256 floats of q per lane). Default: 16 up to head dim
   * 16, floor(256 / headDim) above. */
  rowsPerLane?: number;
  /** "split": read K and V as texel buffers where the device has them (default), falling back
   * to storage buffers per cache chunk that does not fit a texel view. lavapipe gathers a
   * texel for all lanes at once where it loads storage buffers lane by lane. */
  texel?: boolean;
  /** Build for logit soft-capping (Gemma 2): every record then gives `softcap`. */
  softcap?: boolean;
}

/** Key blocks per pass of the CPU variants (a block is 2..4 keys, unrolled): an invocation runs
 * about one loop trip per block, well under lavapipe's 65535. */
const CPU_BLOCKS_PER_PASS = 32768;

/** Causal prefill attention for a batch of query tokens over full (uncompressed) heads. */
export class PrefillAttention implements Disposable {
  readonly headDim: number;
  readonly groupSize: number;
  readonly variant: PrefillVariant;
  /** Query rows (token x query head) per workgroup ("tiled": at most, whole tokens). */
  readonly #rows: number;
  /** Keys per unrolled block of the CPU variants. */
  readonly #keysPerBlock: number;
  readonly #cpu: boolean;
  /** A CPU driver: its loop cap bounds the keys per pass of any variant. */
  readonly #cpuDriver: boolean;
  /** The variant's kernel ("split": reading K/V as texels where the device has them). */
  readonly #kernel: Kernel;
  /** Whether #kernel reads K/V as texels. */
  readonly #texel: boolean = false;
  /** "split" with texels: the storage-buffer kernel for chunks over the texel view limit, made
   * on first use (each pipeline costs llvmpipe seconds of compile time). */
  #storageKernel: Kernel | null = null;
  readonly #makeStorage: (() => Kernel) | null = null;
  readonly #maxTexelBytes: number;
  /** Dispatches of the last record() call by K/V binding kind. */
  lastBindings = { texel: 0, storage: 0 };
  /** Built to soft-cap logits (PrefillAttentionOptions.softcap). */
  readonly #softcap: boolean;
  /** "tiled": the tile shape chosen for the device; null for the CPU variants. */
  readonly tileShape: PrefillTileShape | null = null;

  constructor(device: Device, opts: PrefillAttentionOptions) {
    checkHeadDim(opts.headDim);
    checkGroup(opts.groupSize, opts.headDim);
    this.#softcap = opts.softcap ?? false;
    const D = opts.headDim;
    const G = opts.groupSize;
    this.headDim = D;
    this.groupSize = G;
    this.#cpu = deviceParallelism(device).cpu;
    this.#cpuDriver = deviceParallelism(device).cpuDriver;
    this.#maxTexelBytes = device.info.maxTexelBufferElements * TEXEL_BYTES;
    const lanes = Math.max(1, Math.min(64, device.info.subgroupSize));
    const splitOk = (lanes & (lanes - 1)) === 0 && D % (2 * lanes) === 0;
    this.variant = opts.variant ?? (!this.#cpu ? "tiled" : splitOk ? "split" : "rows");
    // Blocks of keys amortise the online-softmax rescale; wider blocks cost llvmpipe compile
    // time (every load instruction is a loop over the lanes, and "rows" lanes load whole rows).
    this.#keysPerBlock = (this.variant === "rows" ? D <= 32 : D <= 128) ? 4 : 2;
    if (this.variant === "split") {
      if (!splitOk) {
        limit(`split prefill needs a head dim that is a multiple of 2 x ${lanes} lanes`);
      }
      const rows = opts.rowsPerGroup ?? (D <= 64 ? 32 : D <= 128 ? 16 : 8);
      if (!Number.isInteger(rows) || rows < lanes || rows > 64 || rows % lanes !== 0) {
        limit(`rowsPerGroup ${rows} must be a multiple of ${lanes} lanes, at most 64`);
      }
      this.#rows = rows;
      const spec = [
        lanes,
        G,
        D,
        rows / lanes,
        this.#keysPerBlock,
        Math.log2(lanes),
        this.#softcap ? 1 : 0,
      ];
      const storage = () =>
        device.kernel(SHADERS.attn_prefill_split.variant({ texel: false }), {
          bindings: 6,
          push: PREFILL_PUSH,
          spec,
        });
      this.#texel = (opts.texel ?? true) && device.info.texelBuffer;
      if (!this.#texel) {
        this.#kernel = storage();
        return;
      }
      this.#makeStorage = storage;
      this.#kernel = device.kernel(SHADERS.attn_prefill_split.variant({ texel: true }), {
        bindings: 6,
        kinds: ["storage", "texel", "texel", "storage", "storage", "storage"],
        push: PREFILL_PUSH,
        spec,
      });
      return;
    }
    if (this.variant === "rows") {
      const perLane = opts.rowsPerLane ?? Math.max(1, Math.min(16, Math.floor(256 / D)));
      if (!Number.isInteger(perLane) || perLane < 1 || perLane > 32) {
        limit(`rowsPerLane ${perLane} must be an integer in 1..32`);
      }
      this.#rows = lanes * perLane;
      this.#kernel = device.kernel(SHADERS.attn_prefill_rows.variant(), {
        bindings: 6,
        push: PREFILL_PUSH,
        spec: [lanes, G, D, perLane, this.#keysPerBlock, this.#softcap ? 1 : 0],
      });
      return;
    }
    const shape = prefillTileShape(device, D, G);
    this.tileShape = shape;
    this.#rows = shape.rows;
    this.#kernel = device.kernel(SHADERS.attn_prefill.variant(), {
      bindings: 6,
      push: PREFILL_PUSH,
      spec: [
        shape.workgroupSize,
        G,
        D,
        shape.keys,
        shape.rows,
        this.#softcap ? 1 : 0,
        shape.rowsPerGroup,
        shape.lanesPerGroup,
        swizzleMask(D),
      ],
    });
  }

  /** The decode attention's arrival counters (left alone), then the records of `tokens`
   * query tokens. */
  scratchBytes(cache: KvLayerCache, tokens: number): number {
    return attentionCounterBytes(cache.nKvHeads) +
      Math.max(1, tokens) * cache.nKvHeads * this.groupSize * 8;
  }

  record(cmd: CommandList, a: PrefillAttentionArgs): this {
    const { cache } = a;
    checkCache(cache, this.headDim);
    const D = this.headDim;
    const G = this.groupSize;
    const nHeads = cache.nKvHeads * G;
    const B = a.tokens;
    const p0 = a.position;
    if (!Number.isInteger(B) || B < 1 || B > 1 << 20) limit(`prefill of ${B} tokens (1..2^20)`);
    if (!Number.isInteger(p0) || p0 < 0) limit(`prefill position ${p0} is not a token index`);
    const kvRows = p0 + B;
    const window = cache.window;
    // A ring must keep every row the batch's first query sees while the batch is appended.
    const needRows = window > 0 ? Math.min(kvRows, window + B - 1) : kvRows;
    cache.layout.heads.forEach((s, h) => {
      if (s.capRows < needRows) {
        throw new HcError(
          "E_CONTEXT_FULL",
          `prefill needs ${needRows} rows but KV head ${h} holds ${s.capRows}; allocate a full prefill cache`,
        );
      }
    });
    // Keys before the first query's window are never visible.
    const kv0 = window > 0 ? Math.max(0, p0 + 1 - window) : 0;
    const qStride = a.qStride ?? nHeads * D;
    const oStride = a.outStride ?? nHeads * D;
    const qOff = a.qOffset ?? 0;
    const oOff = a.outOffset ?? 0;
    for (
      const [v, what] of [[qStride, "qStride"], [oStride, "outStride"], [qOff, "qOffset"], [
        oOff,
        "outOffset",
      ]] as const
    ) {
      requireFloatOffset(v, what);
    }
    requireBytes(a.q, (qOff + (B - 1) * qStride + nHeads * D) * 4, "prefill q");
    requireBytes(a.out, (oOff + (B - 1) * oStride + nHeads * D) * 4, "prefill output");
    requireBytes(a.scratch, this.scratchBytes(cache, B), "prefill scratch");
    // The records start after the decode attention's counters, which must survive a prefill.
    const counters = attentionCounterBytes(cache.nKvHeads);
    const records = subWindow(
      windowOf(a.scratch),
      counters,
      this.scratchBytes(cache, B) - counters,
    );
    const tiled = this.variant === "tiled";
    const perPass = a.keysPerPass ??
      (!tiled ? this.#keysPerBlock * CPU_BLOCKS_PER_PASS : this.#cpuDriver ? 2048 : kvRows);
    if (!Number.isInteger(perPass) || perPass < 1) {
      limit(`keysPerPass ${perPass} must be a positive integer`);
    }
    if (!tiled && perPass > this.#keysPerBlock * CPU_BLOCKS_PER_PASS) {
      limit(
        `keysPerPass ${perPass} exceeds ${this.#keysPerBlock * CPU_BLOCKS_PER_PASS} (loop cap)`,
      );
    }
    const passes = Math.ceil((kvRows - kv0) / perPass);
    // "tiled" workgroups hold whole tokens (all G heads); the CPU variants flattened rows.
    const gx = tiled ? Math.ceil(B / Math.floor(this.#rows / G)) : Math.ceil((B * G) / this.#rows);
    if (gx > 65535) {
      limit(`prefill of ${B} tokens needs ${gx} workgroups (max 65535); split the batch`);
    }
    const scale = (a.scale ?? 1 / Math.sqrt(D)) * LOG2E;
    this.lastBindings = { texel: 0, storage: 0 };
    const softcap = softcapPush(a.softcap, this.#softcap);
    for (let pass = 0; pass < passes; pass++) {
      if (pass > 0) cmd.barrier();
      const flags = (pass === 0 ? 1 : 0) | (pass === passes - 1 ? 2 : 0);
      cache.layout.chunkHeads.forEach(([h0, h1], c) => {
        if (h1 <= h0) return;
        const push = PREFILL_PUSH.pack({
          headBase: h0,
          tokens: B,
          p0,
          qOff4: qOff / 4,
          qStride4: qStride / 4,
          oOff4: oOff / 4,
          oStride4: oStride / 4,
          kv0: kv0 + pass * perPass,
          kv1: Math.min(kvRows, kv0 + (pass + 1) * perPass),
          flags,
          nHeads,
          scale,
          window,
          softcap,
        });
        // A chunk (whole rows of 2 * headDim bytes, so whole 16-byte texels) too big for one
        // texel view takes the storage-buffer kernel.
        const texel = this.#texel &&
          Math.max(cache.k[c].bytes, cache.v[c].bytes) <= this.#maxTexelBytes;
        this.lastBindings[texel ? "texel" : "storage"]++;
        cmd.dispatch(
          texel || !this.#texel ? this.#kernel : this.#storageKernel ??= this.#makeStorage!(),
          [a.q, cache.k[c], cache.v[c], cache.table, a.out, records],
          push,
          [gx, h1 - h0],
        );
      });
    }
    return this;
  }

  dispose(): void {
    this.#kernel.dispose();
    this.#storageKernel?.dispose();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}
