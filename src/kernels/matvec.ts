/**
 * Matrix-vector products y = W·x (or y += W·x) over weights in GGUF's byte layout, for the
 * ggml types F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL
 * and IQ4_XS (shaders/matvec.comp). The CPU-tuned run path (matvec_run.comp) reads F32, F16,
 * BF16, Q8_0, Q4_0, Q4_K and Q6_K; the other types always take the generic path.
 *
 * Shapes follow GGUF: a weight with dims [cols, rows] (dims[0] = cols = K, the reduced
 * dimension) is `rows` rows of `cols` elements. x holds `batch` input columns of `cols` floats
 * (`xStride` apart), y receives `batch` output columns of `rows` floats (`yStride` apart), so a
 * batch of B tokens computes Y[B x rows] = X[B x cols] · Wᵀ and each weight unit is dequantised
 * once for up to 8 tokens.
 *
 * Two shader paths: "generic" (lanes read neighbouring 32-bit words: GPUs, any alignment) and
 * "run" (each lane reads whole 32-byte chunks: built for lavapipe, where every load
 * instruction costs a per-lane scalar loop). The run path has a "rowloop" variant for batch 1
 * (x staged once per unit for up to 128 rows) and a "step" variant for batches; both need
 * 32-byte aligned rows except Q6_K's row loop. `path: "auto"` takes "run" under the "cpu"
 * variant set (Device.variants) when the layout allows, else "generic". Weights larger than maxStorageBufferRange are split into
 * row ranges, each bound at an aligned offset; big row counts use a 2-D grid.
 *
 * The run path binds weights and x as texel buffers where the device has them and the whole
 * weight fits one texel view (maxTexelBufferElements): lavapipe gathers texels with vector
 * loads but fetches storage buffers lane by lane, 1.4-2x slower. Otherwise it falls back to
 * storage buffers, per record() call. Q8_0, Q4_0 and Q4_K weights may also come in the "lanes"
 * layout (`layout: "lanes"`, src/kernels/matvec_layout.ts), which the run path reads through
 * texels with the lanes of each fetch on contiguous bytes; the model loader uploads matvec-only
 * weights that way under the CPU variant set. Q8_0 and Q6_K weights may come in the "split"
 * layout (16-byte aligned block bodies, the scales after them), which the generic path reads
 * with aligned 16-byte loads; the loader uploads them that way under the GPU variant set.
 *
 *   using mv = new MatVec(device, GgmlType.Q4_K);
 *   mv.record(cmd, { weight, weightOffset, rows: 4096, cols: 14336, x, y, accumulate: true });
 */
import { HcError } from "../errors.ts";
import { SHADERS, type WeightTypeName } from "../../shaders/variants.ts";
import { GgmlType, ggmlTypeInfo } from "../gguf/types.ts";
import {
  lanesLayoutType,
  layoutRowBytes,
  splitLayoutType,
  type WeightLayout,
} from "./matvec_layout.ts";
import {
  checkedRangeWindow,
  checkWeightOffset,
  deviceParallelism,
  floatIndex,
  MAX_BINDING_BYTES,
  maxBindingRange,
  positiveInt,
  shaderWeightType,
  type Window,
  windowOf,
} from "./checks.ts";
import {
  type Binding,
  type Buffer,
  type CommandList,
  type Device,
  type DeviceInfo,
  type Kernel,
  pushLayout,
  TEXEL_BYTES,
} from "../vk/mod.ts";

/** The shaders' GLU act codes (their spec constant GLU). */
const GLU_ACT = { none: 0, silu: 1, gelu: 2 } as const;

/** Columns of x handled by one dispatch at most (the shader's NUM_COLS). */
export const MATVEC_MAX_COLS = 8;

/** Elements per lane-unit of the run path's step variant; undefined where the type has none. */
const RUN_UNIT: Record<number, number | undefined> = {
  [GgmlType.F32]: 8,
  [GgmlType.F16]: 16,
  [GgmlType.BF16]: 16,
  [GgmlType.Q8_0]: 512,
  [GgmlType.Q4_0]: 512,
  [GgmlType.Q4_K]: 512,
};

/** Elements per lane-unit of the run path's row-loop variant (batch 1), which cols must be a
 * multiple of. Q6_K's is its super-block: its units hold four, a row's last one fewer. */
const ROWLOOP_UNIT: Record<number, number | undefined> = {
  [GgmlType.F32]: 256,
  [GgmlType.F16]: 512,
  [GgmlType.BF16]: 512,
  [GgmlType.Q8_0]: 512,
  [GgmlType.Q4_0]: 512,
  [GgmlType.Q4_K]: 512,
  [GgmlType.Q6_K]: 256,
};

/** Types whose run path also has a half unit (256 elements, shaders/matvec_run.comp
 * HALF_UNIT) for rows that are a multiple of 256 but not of 512: the row loop of F16 and BF16
 * in any layout; the row loop and step variant of Q8_0, Q4_0 and Q4_K in the lanes layout only
 * (in GGUF order their 256-element units are not whole 32-byte chunks). */
const HALF_UNIT_ANY = new Set<number>([GgmlType.F16, GgmlType.BF16]);
const HALF_UNIT_LANES = new Set<number>([GgmlType.Q8_0, GgmlType.Q4_0, GgmlType.Q4_K]);

/** Elements per lane-unit of the generic path. */
const GENERIC_UNIT: Record<number, number> = {
  [GgmlType.F32]: 4,
  [GgmlType.F16]: 4,
  [GgmlType.BF16]: 4,
  [GgmlType.Q8_0]: 32,
  [GgmlType.Q4_0]: 32,
  [GgmlType.Q4_1]: 32,
  [GgmlType.Q5_0]: 32,
  [GgmlType.Q5_1]: 32,
  [GgmlType.IQ4_NL]: 32,
  [GgmlType.Q2_K]: 64,
  [GgmlType.Q3_K]: 64,
  [GgmlType.Q4_K]: 64,
  [GgmlType.Q5_K]: 64,
  [GgmlType.Q6_K]: 64,
  [GgmlType.IQ4_XS]: 64,
};

/** Types whose 2-byte aligned blocks make the generic path read up to 2 bytes past a row. */
const OVERREADS = new Set<number>([
  GgmlType.Q8_0,
  GgmlType.Q4_0,
  GgmlType.Q5_0,
  GgmlType.IQ4_NL,
  GgmlType.Q3_K,
  GgmlType.Q6_K,
]);

/** shaders/matvec.comp's and matvec_run.comp's push block. */
const MATVEC_PUSH = pushLayout({
  rows: "u32",
  cols: "u32",
  wByte0: "u32",
  rowBytes: "u32",
  xStride: "u32",
  yStride: "u32",
  yRow0: "u32",
  ncols: "u32",
  flags: "u32",
  eps: "f32",
  gluRows: "u32",
});
/** Bytes the Q6_K row loop may read past the weight: its 256-byte window minus a 210-byte
 * block, rounded up to whole 32-byte chunks. */
const Q6K_WINDOW_SPARE = 78;
/** common.glsl's hc_red array, present in every variant. */
const COMMON_SHARED_BYTES = 4096;

export type MatVecPath = "auto" | "generic" | "run";

export interface MatVecOptions {
  /** Which shader path; "auto" (default) = "run" under the "cpu" variant set where the layout
   * allows. */
  path?: MatVecPath;
  /** Read 32-byte chunks as u64vec4 on the run path (needs shaderInt64). Default: on for CPU
   * devices (lavapipe supports it), else the device's `int64` flag when it reports one. */
  load64?: boolean;
  /** Lanes per workgroup (power of two); default from the subgroup size and path. */
  workgroupSize?: number;
  /** Rows per workgroup; default up to 128 for the run path at batch 1 (fewer for small
   * matrices), 16/columns (at least 4) for its batches, 2 for the generic path. */
  rowsPerGroup?: number;
  /** Bind weights and x as texel buffers on the run path where the layout allows (see the
   * header). Default: on where the device has texel buffers. */
  texel?: boolean;
}

export interface MatVecRecord {
  /** Buffer holding the weight (in `layout`). */
  weight: Buffer;
  /** Byte offset of row 0 in `weight` (multiple of 16; GGUF data is 32-byte aligned). */
  weightOffset?: number;
  /** Output rows (GGUF dims[1]). */
  rows: number;
  /** Elements per row, the reduced dimension K (GGUF dims[0]). */
  cols: number;
  /** f32 input: `batch` columns of `cols` floats, `xStride` floats apart. */
  x: Binding;
  /** f32 output: `batch` columns of `rows` floats, `yStride` floats apart. */
  y: Binding;
  /** y += W·x instead of y = W·x (fuses a residual add). */
  accumulate?: boolean;
  /** Fuses the RMSNorm before the product: y = W·(x ⊙ weight) / sqrt(mean(x²) + eps) per
   * column, so x is the un-normalised activation (`weight`: `cols` f32). Not on the run path's
   * step variant (batches of the CPU path take the generic one). */
  norm?: { weight: Buffer; eps: number };
  /** Fuses a gated linear unit: the weight is `rows` gate rows then `rows` up rows, and y
   * receives act(gate·x) * (up·x), `rows` floats per column (SwiGLU with "silu", GeGLU with
   * "gelu"). Not with `accumulate`; the weight must fit one binding. */
  glu?: "silu" | "gelu";
  /** The weight's byte order (src/kernels/matvec_layout.ts): "ggml" (default); "lanes", which
   * only the run path reads, through texel bindings; "split" (Q8_0 and Q6_K), which only the
   * generic path reads. */
  layout?: WeightLayout;
  /** Input columns (tokens), default 1. */
  batch?: number;
  /** Floats between x columns (multiple of 4; of 8 for the run path), default cols. */
  xStride?: number;
  /** Floats between y columns, default rows. */
  yStride?: number;
  /** Float index in y of column 0's row 0 (default 0): rows of a wider output, at any
   * alignment (a binding offset must be aligned). */
  yOffset?: number;
  /** Cap on one weight binding's bytes (default: the device's maxStorageBufferRange, or
   * maxTexelBufferElements for a texel binding); lets tests exercise the split into row ranges
   * and the fallback from texels to storage buffers with small weights. */
  maxBindingBytes?: number;
}

/** What one record() call dispatched, for tests and benchmarks. */
export interface MatVecPlan {
  path: "generic" | "run";
  /** Shader variant: "generic", "step" (run path, batches) or "rowloop" (run path, batch 1). */
  variant: KernelKind;
  kernel: string;
  dispatches: number;
  /** Whether weights and x were bound as texel buffers. */
  texel: boolean;
}

export type KernelKind = "generic" | "step" | "rowloop";

interface Variant {
  kind: KernelKind;
  cols: number;
  texel: boolean;
  lanes: boolean;
  split: boolean;
  /** The run path's half unit (see HALF_UNIT_ANY). */
  half: boolean;
  /** The decode fusions, specialised into the pipeline. */
  norm: boolean;
  glu: keyof typeof GLU_ACT;
}

/** A record() call's arguments, checked, with their defaults resolved. */
interface Shape {
  batch: number;
  xStride: number;
  yStride: number;
  weightOffset: number;
  rowBytes: number;
  weightBytes: number;
  /** Most bytes one weight binding may span. */
  maxWeightRange: number;
  x: Window;
  /** Bytes of x the call reads. */
  xBytes: number;
  y: Window;
  yOffset: number;
  /** Weight rows read: rows, or with GLU pairs 2 rows. */
  weightRows: number;
}

/** One dispatch's part of the weight. */
interface RowRange {
  row0: number;
  rows: number;
  /** Where the weight binding starts (aligned), and row0's byte within it. */
  bindOffset: number;
  wByte0: number;
  bytes: number;
  gx: number;
  gy: number;
}

/** What record() dispatches, decided before anything is recorded. */
interface Plan {
  kind: KernelKind;
  kernel: Kernel;
  kernelName: string;
  texel: boolean;
  /** x as bound: a texel view on the texel path, else the storage window. */
  x: Binding;
  /** The norm weight as bound (x again without a norm). */
  g: Binding;
  /** Row-loop slices per unit (1 elsewhere). */
  slices: number;
  zGroups: number;
  ranges: RowRange[];
}

function isPow2(n: number): boolean {
  return Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;
}

/** Whether the device can run the u64vec4 loads (see MatVecOptions.load64). */
export function deviceLoad64(info: DeviceInfo): boolean {
  return info.int64;
}

export class MatVec implements Disposable {
  readonly device: Device;
  readonly type: number;
  readonly typeName: WeightTypeName;
  readonly blockElems: number;
  readonly blockBytes: number;
  readonly options: Required<Pick<MatVecOptions, "path" | "load64" | "texel">> & MatVecOptions;
  #kernels = new Map<string, Kernel>();
  #disposed = false;
  /** What the last record() call did. */
  lastPlan: MatVecPlan | null = null;

  constructor(device: Device, type: number, options: MatVecOptions = {}) {
    const { name, info } = shaderWeightType("matvec", type);
    this.device = device;
    this.type = type;
    this.typeName = name;
    this.blockElems = info.blockElems;
    this.blockBytes = info.blockBytes;
    this.options = {
      path: options.path ?? "auto",
      load64: options.load64 ?? deviceLoad64(device.info),
      workgroupSize: options.workgroupSize,
      rowsPerGroup: options.rowsPerGroup,
      texel: options.texel ?? device.info.texelBuffer === true,
    };
    if (
      options.workgroupSize !== undefined &&
      (!isPow2(options.workgroupSize) ||
        options.workgroupSize > device.info.maxComputeWorkGroupInvocations)
    ) {
      throw new HcError(
        "E_BAD_REQUEST",
        `matvec: workgroupSize ${options.workgroupSize} must be a power of two <= ${device.info.maxComputeWorkGroupInvocations}`,
      );
    }
    if (options.rowsPerGroup !== undefined) {
      positiveInt("matvec", "rowsPerGroup", options.rowsPerGroup);
    }
  }

  /** Bytes of a [rows x cols] weight of this type. */
  weightBytes(rows: number, cols: number): number {
    return (rows * cols / this.blockElems) * this.blockBytes;
  }

  #workgroupSize(kind: KernelKind): number {
    if (this.options.workgroupSize) return this.options.workgroupSize;
    const sg = Math.max(1, this.device.info.subgroupSize);
    if (kind !== "generic") return sg;
    // The generic path is the GPU shape: under the "gpu" set it is sized for GPU subgroups.
    const lanes = this.device.variants === "gpu" ? this.device.gpuLanes : sg;
    // Enough lanes to cover a typical 4096-wide row with few iterations, one unit each.
    const unit = GENERIC_UNIT[this.type];
    const mult = unit <= 4 ? 4 : unit === 32 ? 2 : 1;
    return Math.min(this.device.info.maxComputeWorkGroupInvocations, 128, lanes * mult);
  }

  #rowsPerGroup(kind: KernelKind, wg: number, ncols: number, rows: number): number {
    let r = this.options.rowsPerGroup;
    if (r === undefined) {
      if (kind === "rowloop") {
        // Many rows per workgroup amortise the staged x (a lane stages it once per unit and
        // row slice); keep about 4 workgroups per core for the driver's threads.
        const groups = deviceParallelism(this.device).targetGroups;
        r = 128;
        while (r > 8 && rows / r < groups) r >>= 1;
      } else {
        // The step variant unrolls rows x columns: keep that product (and compile time) bounded.
        r = kind === "step" ? Math.max(4, 16 / ncols | 0) : 2;
      }
    }
    const limit = this.device.info.maxComputeSharedMemoryBytes - COMMON_SHARED_BYTES;
    while (r > 1 && r * ncols * wg * 4 > limit) r >>= 1;
    if (r * ncols * wg * 4 > limit) {
      throw new HcError(
        "E_VK_LIMIT",
        `matvec: ${wg} lanes x ${ncols} columns need more shared memory than the device has`,
      );
    }
    return r;
  }

  #kernel(
    v: Variant,
    rows: number,
  ): { kernel: Kernel; wg: number; rowsPerGroup: number; name: string } {
    const wg = this.#workgroupSize(v.kind);
    const rowsPerGroup = this.#rowsPerGroup(v.kind, wg, v.cols, rows);
    // The generic path reads words; texel variants read x as texels too (no LOAD64 twin).
    let load: "word" | "u64" | "texel" | "lanes" | "split" = v.split ? "split" : "word";
    if (v.kind !== "generic") {
      load = v.lanes ? "lanes" : v.texel ? "texel" : this.options.load64 ? "u64" : "word";
    }
    const name = SHADERS.matvec.variant({
      path: v.kind,
      load,
      half: v.half,
      type: this.typeName,
    });
    const spec = [wg, rowsPerGroup, v.cols, v.norm ? 1 : 0, GLU_ACT[v.glu]];
    const key = `${name}/${spec.join("/")}`;
    let k = this.#kernels.get(key);
    if (!k) {
      k = this.device.kernel(name, {
        bindings: 4,
        kinds: v.texel ? ["texel", "texel", "storage", "texel"] : undefined,
        push: MATVEC_PUSH,
        spec,
      });
      this.#kernels.set(key, k);
    }
    return { kernel: k, wg, rowsPerGroup, name };
  }

  /** Elements per lane of the run path's `kind` for rows of `cols` ("lanes": in the lanes
   * layout): the type's unit, or its half where only that divides the row and a half-unit
   * variant exists; undefined where the type has no such variant. */
  runUnit(kind: "rowloop" | "step", cols: number, lanes: boolean): number | undefined {
    const full = this.#fullUnit(kind);
    if (full === undefined || cols % full === 0) return full;
    const half = HALF_UNIT_ANY.has(this.type) && kind === "rowloop" ||
      HALF_UNIT_LANES.has(this.type) && lanes;
    return half && cols % (full / 2) === 0 ? full / 2 : full;
  }

  /** The type's own (full) unit on the run path's `kind`. */
  #fullUnit(kind: "rowloop" | "step"): number | undefined {
    return (kind === "rowloop" ? ROWLOOP_UNIT : RUN_UNIT)[this.type];
  }

  /** The shader variant record() would use for this layout (`fused`: with a norm or GLU, which
   * the step variant lacks; a split-layout weight always takes the generic path). */
  chooseKernel(
    weightOffset: number,
    rows: number,
    cols: number,
    batch = 1,
    xStride = cols,
    spareBytes = Q6K_WINDOW_SPARE,
    fused = false,
    layout: WeightLayout = "ggml",
  ): KernelKind {
    if (layout === "split") return "generic";
    const rowBytes = this.weightBytes(1, cols);
    const lanes = layout === "lanes";
    const rl = this.runUnit("rowloop", cols, lanes);
    const step = this.runUnit("step", cols, lanes);
    // Q6_K's row loop finds each block's phase at run time, reading a 256-byte window that can
    // reach past the last block; the lanes layout is read by texel index (16-byte aligned by
    // construction); the others need 32-byte aligned rows.
    const aligned = this.type === GgmlType.Q6_K
      ? spareBytes >= Q6K_WINDOW_SPARE
      : lanes || (rowBytes % 32 === 0 && weightOffset % 32 === 0);
    const want = this.options.path === "auto"
      ? (this.device.variants === "cpu" ? "run" : "generic")
      : this.options.path;
    if (want === "run" && aligned && xStride % 8 === 0 && rows > 0) {
      if ((batch === 1 || step === undefined) && rl !== undefined && cols % rl === 0) {
        return "rowloop";
      }
      if (step !== undefined && cols % step === 0 && !fused) return "step";
    }
    if (want === "run" && this.options.path === "run" && !fused) {
      throw new HcError(
        "E_BAD_REQUEST",
        `matvec: the run path needs cols % ${
          step ?? rl
        } == 0, 32-byte aligned rows and xStride % 8 == 0`,
      );
    }
    return "generic";
  }

  /**
   * Records y = W·x (or y += W·x) into `cmd`. Validates shapes and bindings (HcError), splits
   * the weight into row ranges that fit the device's storage-buffer range and the workgroup
   * grid, and uses one dispatch per range and per group of 8 columns' worth of z. Nothing is
   * recorded when a check fails.
   */
  record(cmd: CommandList, a: MatVecRecord): MatVecPlan {
    const shape = this.#validate(a);
    const plan = this.#plan(a, shape);
    for (const r of plan.ranges) {
      cmd.dispatch(
        plan.kernel,
        [{ buffer: a.weight, offset: r.bindOffset, bytes: r.bytes }, plan.x, shape.y, plan.g],
        MATVEC_PUSH.pack({
          rows: r.rows,
          cols: a.cols,
          wByte0: r.wByte0,
          rowBytes: shape.rowBytes,
          xStride: shape.xStride,
          yStride: shape.yStride,
          yRow0: shape.yOffset + r.row0,
          ncols: shape.batch,
          // Bit 31 stays clear: matvec_run.comp tests it only to keep a value alive.
          flags: (a.accumulate ? 1 : 0) | (plan.slices << 8),
          eps: a.norm?.eps ?? 0,
          gluRows: a.glu ? a.rows : 0,
        }),
        [r.gx, r.gy, plan.zGroups],
      );
    }
    this.lastPlan = {
      path: plan.kind === "generic" ? "generic" : "run",
      variant: plan.kind,
      kernel: plan.kernelName,
      dispatches: plan.ranges.length,
      texel: plan.texel,
    };
    return this.lastPlan;
  }

  /** The variant record() would run these arguments on, or null where it would refuse them
   * (checks and plans, records nothing). */
  planKind(a: MatVecRecord): KernelKind | null {
    try {
      return this.#plan(a, this.#validate(a)).kind;
    } catch (e) {
      if (e instanceof HcError) return null;
      throw e;
    }
  }

  /** Checks the call's shapes, strides and bindings; resolves the defaults. */
  #validate(a: MatVecRecord): Shape {
    if (this.#disposed) throw new HcError("E_VK_BAD_HANDLE", "matvec: used after dispose");
    const layout = a.layout ?? "ggml";
    if (layout !== "ggml" && layout !== "lanes" && layout !== "split") {
      throw new HcError("E_BAD_REQUEST", `matvec: unknown weight layout ${String(a.layout)}`);
    }
    if (layout === "split" && (!splitLayoutType(this.type) || this.options.path === "run")) {
      throw new HcError(
        "E_BAD_REQUEST",
        `matvec: the split layout is for Q8_0 and Q6_K on the generic path (got ${this.#typeLabel}, path ${this.options.path})`,
      );
    }
    positiveInt("matvec", "rows", a.rows);
    positiveInt("matvec", "cols", a.cols);
    const batch = positiveInt("matvec", "batch", a.batch ?? 1);
    const xStride = a.xStride ?? a.cols;
    const yStride = a.yStride ?? a.rows;
    const weightOffset = checkWeightOffset("matvec", a.weightOffset ?? 0, 16);
    const colMultiple = this.blockElems === 1 ? 4 : this.blockElems;
    if (a.cols % colMultiple !== 0) {
      throw new HcError(
        "E_MODEL_TENSOR",
        `matvec: ${this.#typeLabel} needs cols to be a multiple of ${colMultiple}, got ${a.cols}`,
      );
    }
    if (!Number.isSafeInteger(xStride) || xStride < a.cols || xStride % 4 !== 0) {
      throw new HcError(
        "E_BAD_REQUEST",
        `matvec: xStride ${xStride} must be a multiple of 4 and >= cols (${a.cols})`,
      );
    }
    if (!Number.isSafeInteger(yStride) || yStride < a.rows) {
      throw new HcError("E_BAD_REQUEST", `matvec: yStride ${yStride} must be >= rows (${a.rows})`);
    }
    if (a.glu !== undefined && a.glu !== "silu" && a.glu !== "gelu") {
      throw new HcError("E_BAD_REQUEST", `matvec: unknown GLU ${String(a.glu)}`);
    }
    if (a.glu && a.accumulate) {
      throw new HcError("E_BAD_REQUEST", "matvec: a GLU product cannot accumulate into y");
    }
    if (a.norm) {
      if (!(a.norm.eps >= 0) || !Number.isFinite(a.norm.eps)) {
        throw new HcError("E_BAD_REQUEST", `matvec: RMSNorm eps ${a.norm.eps} must be >= 0`);
      }
      if (a.norm.weight.bytes < a.cols * 4) {
        throw new HcError(
          "E_VK_LIMIT",
          `matvec: the RMSNorm weight (${a.norm.weight.bytes} bytes) is shorter than ${a.cols} floats`,
        );
      }
    }
    const weightRows = a.glu ? 2 * a.rows : a.rows;
    const rowBytes = layoutRowBytes(this.type, a.cols, layout);
    const weightBytes = rowBytes * weightRows;
    if (weightOffset + weightBytes > a.weight.bytes) {
      throw new HcError(
        "E_VK_LIMIT",
        `matvec: a ${weightRows}x${a.cols} ${this.#typeLabel} weight (${weightBytes} bytes) at offset ${weightOffset} overruns its ${a.weight.bytes}-byte buffer`,
      );
    }
    const maxRange = maxBindingRange(this.device);
    if (a.maxBindingBytes !== undefined) {
      positiveInt("matvec", "maxBindingBytes", a.maxBindingBytes);
    }
    const xBytes = ((batch - 1) * xStride + a.cols) * 4;
    const x = checkedRangeWindow(this.device, a.x, xBytes, maxRange, "matvec x");
    const yOffset = floatIndex("matvec", "yOffset", a.yOffset ?? 0);
    const yBytes = (yOffset + (batch - 1) * yStride + a.rows) * 4;
    const y = checkedRangeWindow(this.device, a.y, yBytes, maxRange, "matvec y");
    return {
      batch,
      xStride,
      yStride,
      weightOffset,
      rowBytes,
      weightBytes,
      maxWeightRange: Math.min(maxRange, a.maxBindingBytes ?? maxRange),
      x,
      xBytes,
      y,
      yOffset,
      weightRows,
    };
  }

  /** Picks the variant, its binding kinds and launch shape, and splits the weight into the row
   * ranges one dispatch each binds. */
  #plan(a: MatVecRecord, s: Shape): Plan {
    const info = this.device.info;
    const split = a.layout === "split";
    const kind = this.chooseKernel(
      s.weightOffset,
      a.rows,
      a.cols,
      s.batch,
      s.xStride,
      a.weight.bytes - s.weightOffset - s.weightBytes,
      a.norm !== undefined || a.glu !== undefined,
      a.layout,
    );
    const ncols = kind === "rowloop" ? 1 : Math.min(s.batch, MATVEC_MAX_COLS);
    // Binding offsets aligned to the device rules and to the run path's 32-byte chunks.
    const storageAlign = Math.max(info.minStorageBufferOffsetAlignment, 32);
    const texelAlign = Math.max(storageAlign, info.minTexelBufferOffsetAlignment);
    const spare = kind === "rowloop" && this.type === GgmlType.Q6_K ? Q6K_WINDOW_SPARE : 0;
    const texelX = this.#texelWindow(kind, s.x, s.xBytes);
    // One texel view must hold the whole weight (its slack included); else storage buffers,
    // split into row ranges as needed.
    const texelLimit = Math.min(
      info.maxTexelBufferElements * TEXEL_BYTES,
      MAX_BINDING_BYTES,
      a.maxBindingBytes ?? Infinity,
    );
    // The norm weight rides the x path: a texel view where x is one.
    const texelG = a.norm ? this.#texelWindow(kind, windowOf(a.norm.weight), a.cols * 4) : null;
    const texel = texelX !== null && (!a.norm || texelG !== null) &&
      s.weightOffset % texelAlign + s.weightBytes + spare <= texelLimit;
    const lanes = a.layout === "lanes";
    const unit = kind === "generic" ? undefined : this.runUnit(kind, a.cols, lanes);
    if (lanes && (kind === "generic" || !texel || !lanesLayoutType(this.type, a.cols))) {
      throw new HcError(
        "E_BAD_REQUEST",
        `matvec: a ${this.#typeLabel} weight in the lanes layout needs the run path with texel bindings (got the ${kind} path, texels ${
          texel ? "on" : "off"
        }, ${a.cols} columns)`,
      );
    }
    const { kernel, rowsPerGroup, wg, name } = this.#kernel(
      {
        kind,
        cols: ncols,
        texel,
        lanes,
        split,
        half: kind !== "generic" && unit !== this.#fullUnit(kind),
        norm: a.norm !== undefined,
        glu: a.glu ?? "none",
      },
      s.weightRows,
    );
    if (a.glu && rowsPerGroup < 2) {
      throw new HcError("E_VK_LIMIT", "matvec: a GLU product needs 2 rows per workgroup");
    }
    // Row loop: split each unit's rows into slices when the units do not divide evenly among
    // the lanes (e.g. 28 units of a 14336-wide row on 8 lanes), so no lane idles.
    let slices = 1;
    if (kind === "rowloop") {
      // Q6_K's row-loop units are four super-blocks (the last of a row may hold fewer).
      const units = this.type === GgmlType.Q6_K ? Math.ceil(a.cols / 1024) : a.cols / (unit ?? 1);
      // GLU pairs: a workgroup's rows come in gate/up halves.
      const sliceRows = a.glu ? rowsPerGroup / 2 : rowsPerGroup;
      while (slices < 8 && slices * 2 <= sliceRows && (units * slices) % wg !== 0) slices *= 2;
      if ((units * slices) % wg !== 0) slices = 1;
    }
    const zGroups = Math.ceil(s.batch / ncols);
    if (zGroups > info.maxComputeWorkGroupCount[2]) {
      throw new HcError(
        "E_VK_LIMIT",
        `matvec: batch ${s.batch} needs ${zGroups} workgroups in z, over the device's ${
          info.maxComputeWorkGroupCount[2]
        }`,
      );
    }
    const ranges = this.#rowRanges(a, s, {
      kind,
      split,
      texel,
      align: texel ? texelAlign : storageAlign,
      rowsPerGroup,
    });
    // The lanes layout spans the whole weight (its bands run over all rows), and a GLU
    // workgroup reads both halves: one dispatch. Its grid, 2F weight rows over rowsPerGroup,
    // is also F outputs over the rowsPerGroup / 2 a GLU workgroup writes.
    if ((lanes || a.glu) && ranges.length !== 1) {
      throw new HcError(
        "E_VK_LIMIT",
        `matvec: a ${s.weightRows}-row weight ${
          lanes ? "in the lanes layout" : "of GLU pairs"
        } needs ${ranges.length} dispatches`,
      );
    }
    return {
      kind,
      kernel,
      kernelName: name,
      texel,
      x: texel && texelX ? texelX : s.x,
      // Any binding of the right kind where there is no norm: the shader does not read it.
      g: a.norm ? (texel ? texelG! : windowOf(a.norm.weight)) : texel && texelX ? texelX : s.x,
      slices,
      zGroups,
      ranges,
    };
  }

  /** The weight's row ranges: each bound at an aligned offset within one binding's range (a
   * texel view holds the whole weight) and within the x-y workgroup grid. */
  #rowRanges(
    a: MatVecRecord,
    s: Shape,
    p: { kind: KernelKind; split: boolean; texel: boolean; align: number; rowsPerGroup: number },
  ): RowRange[] {
    const [maxX, maxY] = this.device.info.maxComputeWorkGroupCount;
    const maxRowsByGrid = maxX * maxY * p.rowsPerGroup;
    // Split-layout rows are whole 16-byte words.
    const overreads = OVERREADS.has(this.type) && p.kind === "generic" && !p.split;
    const q6kRowLoop = p.kind === "rowloop" && this.type === GgmlType.Q6_K;
    const ranges: RowRange[] = [];
    for (let row0 = 0; row0 < s.weightRows;) {
      const start = s.weightOffset + row0 * s.rowBytes;
      const bindOffset = Math.floor(start / p.align) * p.align;
      const wByte0 = start - bindOffset;
      const fitRows = p.texel
        ? s.weightRows - row0
        : Math.floor((s.maxWeightRange - wByte0 - 128) / s.rowBytes);
      if (fitRows < 1) {
        throw new HcError(
          "E_VK_LIMIT",
          `matvec: one ${s.rowBytes}-byte row exceeds the ${s.maxWeightRange}-byte storage range`,
        );
      }
      const n = Math.min(s.weightRows - row0, fitRows, maxRowsByGrid);
      const used = wByte0 + n * s.rowBytes;
      // Word reads of 2-byte aligned blocks reach up to the next multiple of 4 bytes; the Q6_K
      // row loop reads whole 32-byte chunks up to 46 bytes past the last block.
      const reach = q6kRowLoop ? Math.ceil((used + 46) / 32) * 32 : used;
      // A texel view spans whole 16-byte texels; the run path's reach is whole 32-byte chunks.
      const unit = p.texel ? TEXEL_BYTES : 4;
      let bytes = Math.ceil(reach / unit) * unit;
      if (p.texel && bindOffset + bytes > a.weight.bytes) {
        bytes = Math.floor((a.weight.bytes - bindOffset) / TEXEL_BYTES) * TEXEL_BYTES;
      } else if (bindOffset + bytes > a.weight.bytes) {
        if (overreads) {
          throw new HcError(
            "E_VK_LIMIT",
            `matvec: the ${this.#typeLabel} weight ends 2 bytes before a multiple of 4 at its buffer's end; allocate the buffer 2 bytes larger`,
          );
        }
        bytes = a.weight.bytes - bindOffset;
      }
      const groups = Math.ceil(n / p.rowsPerGroup);
      const gx = Math.min(groups, maxX);
      ranges.push({ row0, rows: n, bindOffset, wByte0, bytes, gx, gy: Math.ceil(groups / gx) });
      row0 += n;
    }
    return ranges;
  }

  get #typeLabel(): string {
    return ggmlTypeInfo(this.type)?.name ?? String(this.type);
  }

  /** x as a texel binding for the run path, or null where texels are off or x's window does
   * not fit a texel view (offset alignment, maxTexelBufferElements). */
  #texelWindow(kind: KernelKind, x: Window, neededBytes: number): Binding | null {
    const info = this.device.info;
    if (kind === "generic" || !this.options.texel || !info.texelBuffer) return null;
    if (x.offset % Math.max(info.minTexelBufferOffsetAlignment, 1) !== 0) return null;
    const maxBytes = info.maxTexelBufferElements * TEXEL_BYTES;
    const bytes = Math.min(Math.floor(x.bytes / TEXEL_BYTES), maxBytes / TEXEL_BYTES) *
      TEXEL_BYTES;
    return bytes >= neededBytes ? { buffer: x.buffer, offset: x.offset, bytes } : null;
  }

  get disposed(): boolean {
    return this.#disposed;
  }

  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    for (const k of this.#kernels.values()) k.dispose();
    this.#kernels.clear();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}
