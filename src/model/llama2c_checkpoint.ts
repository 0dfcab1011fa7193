/**
 * llama2.c checkpoints (karpathy/llama2.c `run.c` format, legacy "version 0" export): a header of
 * 7 int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len; a negative
 * vocab_size means the classifier is stored separately), then f32 weights. Each weight matrix is
 * stored (out, in) row-major, which is exactly GGUF's layout with dims [in, out], so tensors map
 * onto canonical GGUF names without any permutation.
 */
import { HcError } from "../errors.ts";
import { RandomAccessFile } from "../gguf/random_access_file.ts";
import { GgmlType } from "../gguf/types.ts";
import { type ModelConfig, validateConfig } from "./config.ts";
import type { ModelTensor } from "./source.ts";

export const LLAMA2C_HEADER_BYTES = 28;
/** Magic of the newer llama2.c exports (version 1 f32, version 2 int8), which run.c cannot read. */
export const LLAMA2C_AK42_MAGIC = 0x616b3432;

export interface Llama2cHeader {
  dim: number;
  hiddenDim: number;
  nLayers: number;
  nHeads: number;
  nKvHeads: number;
  vocabSize: number;
  seqLen: number;
  /** The classifier reuses the token embedding (vocab_size was positive). */
  sharedClassifier: boolean;
}

export interface Llama2cTensorSlot {
  name: string;
  dims: number[];
  elems: number;
  /** Absolute byte offset in the file. */
  offset: number;
  bytes: number;
}

function bad(message: string): never {
  throw new HcError("E_MODEL_FORMAT", `llama2.c checkpoint: ${message}`);
}

/** Decodes the 28-byte legacy header; `bytes` must hold at least its first 28 bytes. */
export function parseLlama2cHeader(bytes: Uint8Array): Llama2cHeader {
  if (bytes.length < LLAMA2C_HEADER_BYTES) {
    bad(`file has ${bytes.length} bytes, shorter than the ${LLAMA2C_HEADER_BYTES}-byte header`);
  }
  const v = new DataView(bytes.buffer, bytes.byteOffset, LLAMA2C_HEADER_BYTES);
  if (v.getUint32(0, true) === LLAMA2C_AK42_MAGIC) {
    bad(
      `export version ${v.getInt32(4, true)} ("ak42" header) is not supported; ` +
        `export with llama2.c's legacy format (version 0)`,
    );
  }
  const [dim, hiddenDim, nLayers, nHeads, nKvHeads, rawVocab, seqLen] = [0, 1, 2, 3, 4, 5, 6].map((
    i,
  ) => v.getInt32(4 * i, true));
  const h: Llama2cHeader = {
    dim,
    hiddenDim,
    nLayers,
    nHeads,
    nKvHeads,
    vocabSize: Math.abs(rawVocab),
    seqLen,
    sharedClassifier: rawVocab > 0,
  };
  for (const [k, val] of Object.entries(h)) {
    if (typeof val === "number" && val <= 0) {
      bad(`header field ${k} is ${val}; not a llama2.c checkpoint or a corrupt one`);
    }
  }
  if (dim % nHeads !== 0) bad(`dim ${dim} is not a multiple of n_heads ${nHeads}`);
  if (nHeads % nKvHeads !== 0) bad(`n_heads ${nHeads} is not a multiple of n_kv_heads ${nKvHeads}`);
  if ((dim / nHeads) % 2 !== 0) bad(`head size ${dim / nHeads} is odd`);
  return h;
}

/** Bytes of a legacy checkpoint with this header (computed without building the layout). */
export function llama2cFileBytes(h: Llama2cHeader): number {
  const headDim = h.dim / h.nHeads;
  const kvDim = h.nKvHeads * headDim;
  const perLayer = 2 * h.dim + 2 * h.dim * h.dim + 2 * h.dim * kvDim + 3 * h.dim * h.hiddenDim;
  const floats = h.vocabSize * h.dim * (h.sharedClassifier ? 1 : 2) + h.nLayers * perLayer +
    h.dim + h.seqLen * headDim;
  return LLAMA2C_HEADER_BYTES + 4 * floats;
}

/**
 * Where each weight lives in a legacy checkpoint, in file order, with GGUF names and dims.
 * Call it only once llama2cFileBytes(h) has been checked against the real file size: the layer
 * count comes from the file.
 */
export function llama2cLayout(h: Llama2cHeader): { slots: Llama2cTensorSlot[]; fileBytes: number } {
  const headDim = h.dim / h.nHeads;
  const qDim = h.nHeads * headDim;
  const kvDim = h.nKvHeads * headDim;
  const slots: Llama2cTensorSlot[] = [];
  let offset = LLAMA2C_HEADER_BYTES;
  const add = (name: string, dims: number[]) => {
    const elems = dims.reduce((a, b) => a * b, 1);
    slots.push({ name, dims, elems, offset, bytes: elems * 4 });
    offset += elems * 4;
  };
  const perLayer = (suffix: string, dims: number[]) => {
    for (let l = 0; l < h.nLayers; l++) add(`blk.${l}.${suffix}`, dims);
  };
  add("token_embd.weight", [h.dim, h.vocabSize]);
  perLayer("attn_norm.weight", [h.dim]);
  perLayer("attn_q.weight", [h.dim, qDim]);
  perLayer("attn_k.weight", [h.dim, kvDim]);
  perLayer("attn_v.weight", [h.dim, kvDim]);
  perLayer("attn_output.weight", [qDim, h.dim]);
  perLayer("ffn_norm.weight", [h.dim]);
  perLayer("ffn_gate.weight", [h.dim, h.hiddenDim]); // w1
  perLayer("ffn_down.weight", [h.hiddenDim, h.dim]); // w2
  perLayer("ffn_up.weight", [h.dim, h.hiddenDim]); // w3
  add("output_norm.weight", [h.dim]);
  // freq_cis_real and freq_cis_imag: RoPE tables the legacy export still writes; recomputed here.
  offset += 2 * h.seqLen * (headDim / 2) * 4;
  if (!h.sharedClassifier) add("output.weight", [h.dim, h.vocabSize]);
  return { slots, fileBytes: offset };
}

export function llama2cConfig(h: Llama2cHeader): ModelConfig {
  return validateConfig({
    arch: "llama",
    vocabSize: h.vocabSize,
    dim: h.dim,
    nLayers: h.nLayers,
    nHeads: h.nHeads,
    nKvHeads: h.nKvHeads,
    headDim: h.dim / h.nHeads,
    ffnDim: h.hiddenDim,
    contextLength: h.seqLen,
    ropeBase: 10000,
    ropePairing: "adjacent",
    ropeFreqFactors: null,
    ropeMscale: 1,
    rmsEps: 1e-5,
    tiedOutput: h.sharedClassifier,
    qkvBias: false,
    qkNorm: false,
    noRopeLayerStep: 0,
    layerWindows: Array(h.nLayers).fill(0),
    localRopeBase: null,
    gemma: false,
    attnScale: 1 / Math.sqrt(h.dim / h.nHeads),
    attnSoftcap: 0,
    finalSoftcap: 0,
    fusedQkv: false,
    fusedGateUp: false,
  });
}

export interface Llama2cCheckpoint extends Disposable {
  header: Llama2cHeader;
  config: ModelConfig;
  tensors: Map<string, ModelTensor>;
  close(): void;
}

/** Opens a legacy llama2.c checkpoint; tensors are read from the file by range on demand. */
export async function openLlama2c(path: string | URL): Promise<Llama2cCheckpoint> {
  const file = await RandomAccessFile.open(path);
  try {
    const head = new Uint8Array(Math.min(file.sizeBytes, LLAMA2C_HEADER_BYTES));
    await file.read(head, 0);
    const header = parseLlama2cHeader(head);
    const fileBytes = llama2cFileBytes(header);
    if (file.sizeBytes < fileBytes) {
      bad(
        `${file.path} is truncated: its header needs ${fileBytes} bytes, it has ${file.sizeBytes}`,
      );
    }
    if (file.sizeBytes > fileBytes) {
      bad(
        `${file.path} has ${file.sizeBytes} bytes but its header describes ${fileBytes}; ` +
          `not a legacy llama2.c checkpoint`,
      );
    }
    const config = llama2cConfig(header);
    const { slots } = llama2cLayout(header);
    const tensors = new Map<string, ModelTensor>();
    for (const s of slots) {
      tensors.set(s.name, {
        name: s.name,
        type: GgmlType.F32,
        dims: s.dims,
        elems: s.elems,
        bytes: s.bytes,
        read: async (dst: Uint8Array, srcOffsetBytes = 0) => {
          if (srcOffsetBytes < 0 || srcOffsetBytes + dst.length > s.bytes) {
            throw new RangeError(
              `read of ${dst.length} bytes at ${srcOffsetBytes} is outside tensor ${s.name} ` +
                `(${s.bytes} bytes)`,
            );
          }
          await file.read(dst, s.offset + srcOffsetBytes);
        },
      });
    }
    const close = () => file.close();
    return { header, config, tensors, close, [Symbol.dispose]: close };
  } catch (e) {
    file.close();
    throw e;
  }
}
