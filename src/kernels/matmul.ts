/**
 * Tiled matrix-matrix products Y = X·Wᵀ (or Y += X·Wᵀ) for prompt chunks (shaders/matmul.comp),
 * over weights in GGUF's byte layout (or Q8_0 and Q6_K in the "split" layout,
 * src/kernels/matvec_layout.ts), for F32, F16, BF16, Q8_0, Q4_0, Q4_K and Q6_K. Same shapes
 * and arguments as MatVec (src/kernels/matvec.ts): a weight of dims [cols, rows] times `batch`
 * token columns of x. A workgroup dequantizes a tile of TM rows x 32 weights into shared memory
 * once per K step and reuses it for all WG·CN tokens it owns (matvec reuses a weight for 8).
 *
 * Tile and workgroup shapes come from the device class (MATMUL_SHAPES): GPUs take 64 lanes
 * (at least one subgroup) x 4 tokens per lane, so one tile serves 256 tokens; CPU devices take
 * the subgroup size (lavapipe: 8 lanes) x 8 tokens per lane. On CPU devices F32/F16/BF16 weights
 * take shaders/matmul_texel.comp instead (MATMUL_TEXEL_TILE: 32 rows x 16 tokens per lane, every
 * load a texel fetch, weights fetched at one address by all lanes): llvmpipe makes any other load
 * in a loop a per-lane scalar loop (docs/results-lavapipe.md). `preferMatMul()` says which prompt
 * path the engine takes: matmul on GPUs and for those three types on CPUs; the quantized types
 * stay on matvec on CPUs, where this shared-memory kernel measured slower.
 *
 *   using mm = new MatMul(device, GgmlType.Q4_K);
 *   if (mm.supports(cols)) mm.record(cmd, { weight, rows, cols, x, y, batch: 256 });
 */
import { HcError } from "../errors.ts";
import { SHADERS, type WeightTypeName } from "../../shaders/variants.ts";
import { GgmlType } from "../gguf/types.ts";
import {
  checkedRangeWindow,
  checkWeightOffset,
  floatIndex,
  maxBindingRange,
  positiveInt,
  shaderWeightType,
} from "./checks.ts";
import type { MatVecRecord } from "./matvec.ts";
import { layoutRowBytes, splitLayoutType, type WeightLayout } from "./matvec_layout.ts";
import {
  type Binding,
  type CommandList,
  type Device,
  type Kernel,
  pushLayout,
  TEXEL_BYTES,
} from "../vk/mod.ts";

/** Tile shapes per device class: rows per workgroup (the shader's TM), tokens per lane (CN). */
export const MATMUL_SHAPES = {
  cpu: { rows: 16, tokensPerLane: 8 },
  gpu: { rows: 16, tokensPerLane: 4 },
} as const;

export type MatMulShape = keyof typeof MATMUL_SHAPES;

/** The CPU path for F32/F16/BF16 (shaders/matmul_texel.comp): rows per workgroup, tokens per
 * lane. */
export const MATMUL_TEXEL_TILE = { rows: 32, tokensPerLane: 16 } as const;

const TEXEL_TYPES = new Set<number>([GgmlType.F32, GgmlType.F16, GgmlType.BF16]);

/** The types shaders/matmul.comp decodes (its dequant_unit has no case for the others, which
 * would read garbage); the others take the matvec path. */
const DECODED_TYPES = new Set<number>([
  ...TEXEL_TYPES,
  GgmlType.Q8_0,
  GgmlType.Q4_0,
  GgmlType.Q4_K,
  GgmlType.Q6_K,
]);

/** Elements of one K step (one unit of the tile; every weight type's blocks divide it). */
export const MATMUL_K_STEP = 32;

/** Types whose blocks are only 2-byte aligned: the shader reads whole words, up to 2 bytes past
 * the last block. */
const OVERREADS = new Set<number>([GgmlType.Q8_0, GgmlType.Q4_0, GgmlType.Q6_K]);

/** shaders/matmul.comp's push block (matvec's). */
const MATMUL_PUSH = pushLayout({
  rows: "u32",
  cols: "u32",
  wByte0: "u32",
  rowBytes: "u32",
  xStride: "u32",
  yStride: "u32",
  yRow0: "u32",
  ncols: "u32",
  flags: "u32",
});

/** common.glsl's hc_red array, present in every variant. */
const COMMON_SHARED_BYTES = 4096;

export interface MatMulOptions {
  /** Tile shape; default from the device's variant set (Device.variants). */
  shape?: MatMulShape;
  /** Lanes per workgroup; default 64 (at least the subgroup size) on GPUs, the subgroup size
   * on CPUs. */
  workgroupSize?: number;
  /** Tests only: the variant whose tile index is off by one row, to prove the tests catch it. */
  brokenTileIndex?: boolean;
  /** The all-texel CPU path for F32/F16/BF16 (matmul_texel.comp); default on for the cpu shape
   * where the device has texel buffers. Where a call cannot bind texels, the shared-memory
   * kernel runs instead. */
  texel?: boolean;
}

/** What one record() call dispatched. */
export interface MatMulPlan {
  kernel: string;
  dispatches: number;
  /** Rows and tokens one workgroup covers. */
  tileRows: number;
  tileTokens: number;
}

/**
 * Whether prompt chunks with weights of `type` should use MatMul on this device (else the
 * matvec path): always under the "gpu" variant set; under "cpu" only where the all-texel path runs (F32/F16/BF16 with texel
 * buffers), which bench/prefill.ts measured faster than matvec on lavapipe; the shared-memory
 * kernel measured slower there.
 */
export function preferMatMul(device: Device, type: number): boolean {
  if (device.variants === "gpu") return true;
  return device.info.texelBuffer && TEXEL_TYPES.has(type);
}

export class MatMul implements Disposable {
  readonly device: Device;
  readonly type: number;
  readonly typeName: WeightTypeName;
  readonly shape: MatMulShape;
  readonly workgroupSize: number;
  readonly blockElems: number;
  readonly blockBytes: number;
  /** Whether this type runs the all-texel CPU path. */
  readonly texel: boolean;
  #kernel: Kernel | null = null;
  readonly #kernelName: string;
  #disposed = false;
  lastPlan: MatMulPlan | null = null;

  constructor(device: Device, type: number, options: MatMulOptions = {}) {
    const { name, info } = shaderWeightType("matmul", type);
    this.device = device;
    this.type = type;
    this.typeName = name;
    this.blockElems = info.blockElems;
    this.blockBytes = info.blockBytes;
    const d = device.info;
    this.shape = options.shape ?? (device.variants === "cpu" ? "cpu" : "gpu");
    const sg = Math.max(1, d.subgroupSize);
    const wg = options.workgroupSize ??
      (this.shape === "cpu" ? sg : Math.min(d.maxComputeWorkGroupInvocations, Math.max(64, sg)));
    if (!Number.isInteger(wg) || wg < 1 || wg > d.maxComputeWorkGroupInvocations) {
      throw new HcError(
        "E_BAD_REQUEST",
        `matmul: workgroupSize ${wg} must be an integer in 1..${d.maxComputeWorkGroupInvocations}`,
      );
    }
    const tileBytes = MATMUL_SHAPES[this.shape].rows * MATMUL_K_STEP * 4;
    if (tileBytes + COMMON_SHARED_BYTES > d.maxComputeSharedMemoryBytes) {
      throw new HcError("E_VK_LIMIT", "matmul: the weight tile does not fit shared memory");
    }
    this.workgroupSize = wg;
    this.#broken = options.brokenTileIndex === true;
    if (this.#broken && this.shape !== "cpu") {
      throw new HcError(
        "E_BAD_REQUEST",
        "matmul: the broken-tile variant exists for the cpu shape",
      );
    }
    this.texel = this.shape === "cpu" && (options.texel ?? true) && d.texelBuffer &&
      TEXEL_TYPES.has(type);
    this.#kernelName = this.#variant(this.texel);
  }

  readonly #broken: boolean;
  #sharedKernel: Kernel | null = null;
  /** The shared-memory kernel over the split layout (Q8_0, Q6_K). */
  #splitKernel: Kernel | null = null;

  #variant(texel: boolean, split = false): string {
    if (texel) {
      return SHADERS.matmul_texel.variant({
        type: this.typeName as "f32" | "f16" | "bf16",
        shift: this.#broken,
      });
    }
    return SHADERS.matmul.variant({
      shape: this.#broken ? "shift" : this.shape,
      type: this.typeName,
      split,
    });
  }

  /** The kernel of a path, created on first use (its pipeline compiles then). */
  #kernelFor(texel: boolean, split: boolean): Kernel {
    if (split) {
      return this.#splitKernel ??= this.device.kernel(this.#variant(false, true), {
        bindings: 3,
        push: MATMUL_PUSH,
        spec: [this.workgroupSize],
      });
    }
    if (texel) {
      return this.#kernel ??= this.device.kernel(this.#kernelName, {
        bindings: 3,
        kinds: ["texel", "texel", "storage"],
        push: MATMUL_PUSH,
        spec: [this.workgroupSize],
      });
    }
    const create = () =>
      this.device.kernel(this.#variant(false), {
        bindings: 3,
        push: MATMUL_PUSH,
        spec: [this.workgroupSize],
      });
    if (!this.texel) return this.#kernel ??= create();
    return this.#sharedKernel ??= create();
  }

  get tileRows(): number {
    return this.texel ? MATMUL_TEXEL_TILE.rows : MATMUL_SHAPES[this.shape].rows;
  }

  /** Tokens one workgroup covers. */
  get tileTokens(): number {
    const perLane = this.texel
      ? MATMUL_TEXEL_TILE.tokensPerLane
      : MATMUL_SHAPES[this.shape].tokensPerLane;
    return this.workgroupSize * perLane;
  }

  /** Bytes of a [rows x cols] weight of this type. */
  weightBytes(rows: number, cols: number): number {
    return (rows * cols / this.blockElems) * this.blockBytes;
  }

  /** Whether record() takes this layout: cols a multiple of 32, 16-byte aligned rows where the
   * shader reads 16-byte words, x columns a multiple of 4 floats apart; with `fit`, also that
   * the buffer holds the word after a weight of 2-byte aligned blocks. A weight in the "split"
   * layout (Q8_0, Q6_K: src/kernels/matvec_layout.ts) needs a 16-byte aligned offset; "lanes"
   * is matvec's alone. */
  supports(
    cols: number,
    weightOffset = 0,
    xStride = cols,
    fit?: { rows: number; bufferBytes: number },
    layout: WeightLayout = "ggml",
  ): boolean {
    if (!DECODED_TYPES.has(this.type)) return false;
    if (!Number.isSafeInteger(cols) || cols <= 0 || cols % MATMUL_K_STEP !== 0) return false;
    if (cols % this.blockElems !== 0) return false;
    if (xStride % 4 !== 0 || xStride < cols) return false;
    if (layout === "lanes") return false;
    if (layout === "split") {
      return splitLayoutType(this.type) && !this.#broken && weightOffset % 16 === 0;
    }
    if (OVERREADS.has(this.type)) {
      // The last block's word read needs the buffer to reach the next multiple of 4 bytes.
      const end = weightOffset + (fit?.rows ?? 0) * this.weightBytes(1, cols);
      return weightOffset % 4 === 0 && (!fit || Math.ceil(end / 4) * 4 <= fit.bufferBytes);
    }
    return this.weightBytes(1, cols) % 16 === 0 && weightOffset % 16 === 0;
  }

  /**
   * Records Y = X·Wᵀ (or Y += X·Wᵀ) into `cmd`. The arguments are MatVec's; the weight is split
   * into row ranges that fit the device's storage-buffer range. Nothing is recorded when a check
   * fails (HcError).
   */
  record(cmd: CommandList, a: Omit<MatVecRecord, "maxBindingBytes">): MatMulPlan {
    if (this.#disposed) throw new HcError("E_VK_BAD_HANDLE", "matmul: used after dispose");
    positiveInt("matmul", "rows", a.rows);
    positiveInt("matmul", "cols", a.cols);
    const batch = positiveInt("matmul", "batch", a.batch ?? 1);
    const xStride = a.xStride ?? a.cols;
    const yStride = a.yStride ?? a.rows;
    const yOffset = floatIndex("matmul", "yOffset", a.yOffset ?? 0);
    if (a.norm || a.glu) {
      throw new HcError("E_BAD_REQUEST", "matmul: the norm and GLU fusions are matvec's (decode)");
    }
    const weightOffset = checkWeightOffset("matmul", a.weightOffset ?? 0, 4);
    const layout = a.layout ?? "ggml";
    const split = layout === "split";
    if (!this.supports(a.cols, weightOffset, xStride, undefined, layout)) {
      throw new HcError(
        "E_BAD_REQUEST",
        `matmul: a ${a.rows}x${a.cols} ${this.typeName} weight at offset ${weightOffset} with xStride ${xStride} in the ${layout} layout is not supported (cols % 32, aligned rows, xStride % 4); use MatVec`,
      );
    }
    if (!Number.isSafeInteger(yStride) || yStride < a.rows) {
      throw new HcError("E_BAD_REQUEST", `matmul: yStride ${yStride} must be >= rows (${a.rows})`);
    }
    const rowBytes = layoutRowBytes(this.type, a.cols, layout);
    const weightBytes = rowBytes * a.rows;
    if (weightOffset + weightBytes > a.weight.bytes) {
      throw new HcError(
        "E_VK_LIMIT",
        `matmul: a ${a.rows}x${a.cols} weight (${weightBytes} bytes) at offset ${weightOffset} overruns its ${a.weight.bytes}-byte buffer`,
      );
    }
    const info = this.device.info;
    const maxRange = maxBindingRange(this.device);
    const x = checkedRangeWindow(
      this.device,
      a.x,
      ((batch - 1) * xStride + a.cols) * 4,
      maxRange,
      "matmul x",
    );
    const y = checkedRangeWindow(
      this.device,
      a.y,
      (yOffset + (batch - 1) * yStride + a.rows) * 4,
      maxRange,
      "matmul y",
    );
    // The texel path binds x as a texel view (aligned offset, whole texels) and the weight as
    // one per row range; else the shared-memory kernel runs, with its own tile.
    const texelAlign = Math.max(info.minTexelBufferOffsetAlignment, 16);
    const texelMax = info.maxTexelBufferElements * TEXEL_BYTES;
    const xBytes = Math.min(Math.floor(x.bytes / TEXEL_BYTES) * TEXEL_BYTES, texelMax);
    const texel = this.texel && !split && x.offset % texelAlign === 0 &&
      xBytes >= ((batch - 1) * xStride + a.cols) * 4;
    const xBinding: Binding = texel ? { buffer: x.buffer, offset: x.offset, bytes: xBytes } : x;
    const tileRows = texel ? MATMUL_TEXEL_TILE.rows : MATMUL_SHAPES[this.shape].rows;
    const tileTokens = this.workgroupSize *
      (texel ? MATMUL_TEXEL_TILE.tokensPerLane : MATMUL_SHAPES[this.shape].tokensPerLane);
    const kernel = this.#kernelFor(texel, split);
    const kernelName = texel ? this.#kernelName : this.#variant(false, split);
    const zGroups = Math.ceil(batch / tileTokens);
    const [maxX, maxY, maxZ] = info.maxComputeWorkGroupCount;
    if (zGroups > maxZ) {
      throw new HcError("E_VK_LIMIT", `matmul: batch ${batch} needs ${zGroups} workgroups in z`);
    }
    const align = Math.max(info.minStorageBufferOffsetAlignment, 16, texel ? texelAlign : 0);
    const rangeLimit = texel ? Math.min(maxRange, texelMax) : maxRange;
    const slack = OVERREADS.has(this.type) && !split ? 4 : 0;
    const ranges: { row0: number; rows: number; offset: number; bytes: number; wByte0: number }[] =
      [];
    for (let row0 = 0; row0 < a.rows;) {
      const start = weightOffset + row0 * rowBytes;
      const offset = Math.floor(start / align) * align;
      const wByte0 = start - offset;
      const fit = Math.floor((rangeLimit - wByte0 - slack - 16) / rowBytes);
      if (fit < 1) {
        throw new HcError(
          "E_VK_LIMIT",
          `matmul: one ${rowBytes}-byte row exceeds the ${rangeLimit}-byte binding range`,
        );
      }
      const n = Math.min(a.rows - row0, fit, maxX * maxY * tileRows);
      // Word reads of 2-byte aligned blocks reach into the word holding the last byte.
      let bytes = Math.ceil((wByte0 + n * rowBytes) / 4) * 4;
      if (offset + bytes > a.weight.bytes) {
        if (slack > 0 && (wByte0 + n * rowBytes) % 4 !== 0) {
          throw new HcError(
            "E_VK_LIMIT",
            `matmul: the ${this.typeName} weight ends 2 bytes before a multiple of 4 at its buffer's end; allocate the buffer 2 bytes larger`,
          );
        }
        bytes = a.weight.bytes - offset;
      }
      ranges.push({ row0, rows: n, offset, bytes, wByte0 });
      row0 += n;
    }
    for (const r of ranges) {
      const groups = Math.ceil(r.rows / tileRows);
      const gx = Math.min(groups, maxX);
      cmd.dispatch(
        kernel,
        [{ buffer: a.weight, offset: r.offset, bytes: r.bytes }, xBinding, y],
        MATMUL_PUSH.pack({
          rows: r.rows,
          cols: a.cols,
          wByte0: r.wByte0,
          rowBytes,
          xStride,
          yStride,
          yRow0: yOffset + r.row0,
          ncols: batch,
          flags: a.accumulate ? 1 : 0,
        }),
        [gx, Math.ceil(groups / gx), zGroups],
      );
    }
    this.lastPlan = { kernel: kernelName, dispatches: ranges.length, tileRows, tileTokens };
    return this.lastPlan;
  }

  get disposed(): boolean {
    return this.#disposed;
  }

  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    this.#kernel?.dispose();
    this.#sharedKernel?.dispose();
    this.#splitKernel?.dispose();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}
