/**
 * Plain-TS ground truth for the matvec and get_rows kernels: dequantize each weight row with
 * src/model/quant/mod.ts (ggml's own dequantize_row_* semantics) and take f64 dot products, so a
 * kernel is checked against the exact dequantized weights.
 */
import { HcError } from "../src/errors.ts";
import { dequantizeRow, rowBytes } from "../src/model/quant/mod.ts";

export interface ReferenceMatvecArgs {
  /** ggml type id of the weight. */
  type: number;
  /** Weight bytes in GGUF layout: `rows` rows of `cols` elements. */
  weight: Uint8Array;
  rows: number;
  cols: number;
  /** Input columns, `batch` of them, `xStride` floats apart (default cols). */
  x: Float32Array;
  batch?: number;
  xStride?: number;
  /** When given, the result is added to these values (the kernel's accumulate flag). */
  yInit?: Float32Array;
}

/**
 * y[c * rows + r] = Σ_k W[r][k] · x[c * xStride + k] (+ yInit), accumulated in f64.
 * Output layout matches the kernel with yStride = rows.
 */
export function referenceMatvec(a: ReferenceMatvecArgs): Float32Array {
  const batch = a.batch ?? 1;
  const xStride = a.xStride ?? a.cols;
  const stride = rowBytes(a.type, a.cols);
  if (a.weight.length < stride * a.rows) {
    throw new HcError(
      "E_MODEL_TENSOR",
      `weight has ${a.weight.length} bytes, needs ${stride * a.rows}`,
    );
  }
  if (a.x.length < (batch - 1) * xStride + a.cols) {
    throw new HcError("E_MODEL_TENSOR", `x has ${a.x.length} floats, too few for ${batch} columns`);
  }
  const y = new Float32Array(batch * a.rows);
  if (a.yInit) y.set(a.yInit.subarray(0, y.length));
  const row = new Float32Array(a.cols);
  for (let r = 0; r < a.rows; r++) {
    dequantizeRow(a.type, a.weight, r, a.cols, row);
    for (let c = 0; c < batch; c++) {
      const x0 = c * xStride;
      let s = 0;
      for (let k = 0; k < a.cols; k++) s += row[k] * a.x[x0 + k];
      y[c * a.rows + r] += s;
    }
  }
  return y;
}

/** out[i * cols + e] = dequant(W[ids[i]])[e]; ids outside [0, rows) give zero rows. */
export function referenceGetRows(
  type: number,
  weight: Uint8Array,
  rows: number,
  cols: number,
  ids: ArrayLike<number>,
): Float32Array {
  const out = new Float32Array(ids.length * cols);
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i];
    if (id >= 0 && id < rows) {
      dequantizeRow(type, weight, id, cols, out.subarray(i * cols, (i + 1) * cols));
    }
  }
  return out;
}
