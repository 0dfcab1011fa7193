/**
 * Row fetch (embedding lookup) for weights in GGUF layout (shaders/get_rows.comp):
 * out[i * outStride + e] = dequant(W[ids[i]])[e] as f32, for every weight type the engine runs
 * (SUPPORTED_WEIGHT_TYPES in src/gguf/types.ts). The ids live in a u32 device buffer, so a recorded decode step can be
 * replayed with the next token id written into a host-visible buffer. An id outside
 * [0, rows) yields a zero row. A weight larger than maxStorageBufferRange is split into row
 * ranges, one dispatch each; more than 65535 ids are split too.
 */
import { HcError } from "../errors.ts";
import { SHADERS } from "../../shaders/variants.ts";
import { GgmlType, ggmlTypeInfo } from "../gguf/types.ts";
import {
  checkedRangeWindow,
  checkWeightOffset,
  maxBindingRange,
  positiveInt,
  shaderWeightType,
  type Window,
} from "./checks.ts";
import {
  type Binding,
  type Buffer,
  type CommandList,
  type Device,
  type Kernel,
  pushLayout,
} from "../vk/mod.ts";

/** Elements one invocation produces (the shader's UNIT). */
const UNIT: Record<number, number> = {
  [GgmlType.F32]: 4,
  [GgmlType.F16]: 4,
  [GgmlType.BF16]: 4,
  [GgmlType.Q8_0]: 32,
  [GgmlType.Q4_0]: 32,
  [GgmlType.Q4_K]: 64,
  [GgmlType.Q6_K]: 64,
  [GgmlType.Q4_1]: 32,
  [GgmlType.Q5_0]: 32,
  [GgmlType.Q5_1]: 32,
  [GgmlType.IQ4_NL]: 32,
  [GgmlType.Q2_K]: 32,
  [GgmlType.Q3_K]: 32,
  [GgmlType.Q5_K]: 32,
  [GgmlType.IQ4_XS]: 32,
};

/** shaders/get_rows.comp's push block. */
const GET_ROWS_PUSH = pushLayout({
  cols: "u32",
  rowBytes: "u32",
  wByte0: "u32",
  rowBase: "u32",
  rows: "u32",
  totalRows: "u32",
  outStride: "u32",
  idBase: "u32",
  nids: "u32",
  flags: "u32",
});

export interface GetRowsRecord {
  /** Buffer holding the weight in GGUF layout. */
  weight: Buffer;
  /** Byte offset of row 0 in `weight` (multiple of 4). */
  weightOffset?: number;
  /** Rows of the weight (vocabulary size for an embedding). */
  rows: number;
  /** Elements per row (GGUF dims[0]). */
  cols: number;
  /** u32 row ids; the first `count` are used. */
  ids: Binding;
  count: number;
  /** f32 output: `count` rows of `cols` floats, `outStride` floats apart. */
  out: Binding;
  /** Floats between output rows, default cols. */
  outStride?: number;
}

export class GetRows implements Disposable {
  readonly device: Device;
  readonly type: number;
  readonly blockElems: number;
  readonly blockBytes: number;
  readonly workgroupSize: number;
  #kernel: Kernel;
  #maxBindingBytes: number | undefined;
  #disposed = false;

  /** `maxBindingBytes` caps one weight binding (default: the device's maxStorageBufferRange),
   * so tests can exercise the split into row ranges with small weights. */
  constructor(device: Device, type: number, options: { maxBindingBytes?: number } = {}) {
    const { name, info } = shaderWeightType("get_rows", type);
    this.device = device;
    this.type = type;
    this.blockElems = info.blockElems;
    this.blockBytes = info.blockBytes;
    this.workgroupSize = Math.min(64, device.info.maxComputeWorkGroupInvocations);
    const cap = options.maxBindingBytes;
    if (cap !== undefined && (!Number.isSafeInteger(cap) || cap <= 0)) {
      throw new HcError(
        "E_BAD_REQUEST",
        `get_rows: maxBindingBytes ${cap} is not a positive integer`,
      );
    }
    this.#maxBindingBytes = cap;
    this.#kernel = device.kernel(SHADERS.get_rows.variant({ type: name }), {
      bindings: 3,
      push: GET_ROWS_PUSH,
      spec: [this.workgroupSize],
    });
  }

  /** Records the fetch; returns how many dispatches it took. Nothing is recorded when a check
   * fails. */
  record(cmd: CommandList, a: GetRowsRecord): { dispatches: number } {
    const shape = this.#validate(a);
    const ranges = this.#rowRanges(a, shape);
    const maxIds = this.device.info.maxComputeWorkGroupCount[1];
    let dispatches = 0;
    for (const r of ranges) {
      for (let id0 = 0; id0 < a.count; id0 += maxIds) {
        const nids = Math.min(maxIds, a.count - id0);
        cmd.dispatch(
          this.#kernel,
          [{ buffer: a.weight, offset: r.bindOffset, bytes: r.bytes }, shape.ids, shape.out],
          GET_ROWS_PUSH.pack({
            cols: a.cols,
            rowBytes: shape.rowBytes,
            wByte0: r.wByte0,
            rowBase: r.row0,
            rows: r.rows,
            totalRows: a.rows,
            outStride: shape.outStride,
            idBase: id0,
            nids,
            // The first range writes zero rows for ids outside the weight.
            flags: r.row0 === 0 ? 1 : 0,
          }),
          [shape.gx, nids, 1],
        );
        dispatches++;
      }
    }
    return { dispatches };
  }

  /** Checks the call's shapes and bindings; resolves the defaults. */
  #validate(a: GetRowsRecord): {
    rowBytes: number;
    weightOffset: number;
    outStride: number;
    ids: Window;
    out: Window;
    /** Workgroups along a row. */
    gx: number;
  } {
    if (this.#disposed) throw new HcError("E_VK_BAD_HANDLE", "get_rows: used after dispose");
    const info = this.device.info;
    positiveInt("get_rows", "rows", a.rows);
    positiveInt("get_rows", "cols", a.cols);
    positiveInt("get_rows", "count", a.count);
    if (a.cols % this.blockElems !== 0) {
      throw new HcError(
        "E_MODEL_TENSOR",
        `get_rows: ${this.#typeLabel} needs cols to be a multiple of ${this.blockElems}, got ${a.cols}`,
      );
    }
    const outStride = a.outStride ?? a.cols;
    if (!Number.isSafeInteger(outStride) || outStride < a.cols) {
      throw new HcError(
        "E_BAD_REQUEST",
        `get_rows: outStride ${outStride} must be >= cols (${a.cols})`,
      );
    }
    const weightOffset = checkWeightOffset("get_rows", a.weightOffset ?? 0, 4);
    const rowBytes = (a.cols / this.blockElems) * this.blockBytes;
    if (weightOffset + rowBytes * a.rows > a.weight.bytes) {
      throw new HcError(
        "E_VK_LIMIT",
        `get_rows: a ${a.rows}x${a.cols} ${this.#typeLabel} weight at offset ${weightOffset} overruns its ${a.weight.bytes}-byte buffer`,
      );
    }
    const maxRange = maxBindingRange(this.device);
    const ids = checkedRangeWindow(this.device, a.ids, a.count * 4, maxRange, "get_rows ids");
    const out = checkedRangeWindow(
      this.device,
      a.out,
      ((a.count - 1) * outStride + a.cols) * 4,
      maxRange,
      "get_rows out",
    );
    const gx = Math.ceil(Math.ceil(a.cols / UNIT[this.type]) / this.workgroupSize);
    if (gx > info.maxComputeWorkGroupCount[0]) {
      throw new HcError("E_VK_LIMIT", `get_rows: rows of ${a.cols} elements are too long`);
    }
    return { rowBytes, weightOffset, outStride, ids, out, gx };
  }

  /** The weight's row ranges, each bound at an aligned offset within one binding's range. */
  #rowRanges(
    a: GetRowsRecord,
    s: { rowBytes: number; weightOffset: number },
  ): { row0: number; rows: number; bindOffset: number; wByte0: number; bytes: number }[] {
    const maxRange = maxBindingRange(this.device);
    const maxWeightRange = Math.min(maxRange, this.#maxBindingBytes ?? maxRange);
    const align = this.device.info.minStorageBufferOffsetAlignment;
    const ranges = [];
    for (let row0 = 0; row0 < a.rows;) {
      const start = s.weightOffset + row0 * s.rowBytes;
      const bindOffset = Math.floor(start / align) * align;
      const wByte0 = start - bindOffset;
      const n = Math.min(a.rows - row0, Math.floor((maxWeightRange - wByte0 - 4) / s.rowBytes));
      if (n < 1) {
        throw new HcError(
          "E_VK_LIMIT",
          `get_rows: one ${s.rowBytes}-byte row exceeds the ${maxWeightRange}-byte storage range`,
        );
      }
      // Word reads of 2-byte aligned data reach up to the next multiple of 4 bytes.
      const bytes = Math.ceil((wByte0 + n * s.rowBytes) / 4) * 4;
      if (bindOffset + bytes > a.weight.bytes) {
        throw new HcError(
          "E_VK_LIMIT",
          `get_rows: the ${this.#typeLabel} weight ends 2 bytes before a multiple of 4 at its buffer's end; allocate the buffer 2 bytes larger`,
        );
      }
      ranges.push({ row0, rows: n, bindOffset, wByte0, bytes });
      row0 += n;
    }
    return ranges;
  }

  get #typeLabel(): string {
    return ggmlTypeInfo(this.type)?.name ?? String(this.type);
  }

  get disposed(): boolean {
    return this.#disposed;
  }

  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    this.#kernel.dispose();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}
