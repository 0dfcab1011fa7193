/**
 * A model's weights and hyperparameters behind one interface, whatever the file format: GGUF or a
 * llama2.c checkpoint. Tensors carry canonical GGUF names and GGUF dims (dims[0] = row length)
 * and are read from the file by byte range when asked.
 */
import { HcError } from "../errors.ts";
import { RandomAccessFile } from "../gguf/random_access_file.ts";
import { GGUF_MAGIC, type GgufValue, openGguf } from "../gguf/reader.ts";
import { GgmlType, ggmlTypeInfo, SUPPORTED_WEIGHT_TYPES } from "../gguf/types.ts";
import { configFromGguf, type ModelConfig } from "./config.ts";
import { openLlama2c } from "./llama2c_checkpoint.ts";

export interface ModelTensor {
  readonly name: string;
  /** ggml type id. */
  readonly type: number;
  /** GGUF order: dims[0] is the row length (the input width of a weight matrix). */
  readonly dims: readonly number[];
  readonly elems: number;
  readonly bytes: number;
  /** Fills dst with the tensor's bytes starting `srcOffsetBytes` into its data. */
  read(dst: Uint8Array, srcOffsetBytes?: number): Promise<void>;
}

export interface ModelSource extends Disposable {
  readonly format: "gguf" | "llama2c";
  readonly path: string;
  readonly config: ModelConfig;
  /** Exactly the tensors expectedTensorShapes(config) names, validated. */
  readonly tensors: ReadonlyMap<string, ModelTensor>;
  /** The `tokenizer.*` GGUF metadata (of the model, or of a GGUF given as tokenizerPath). */
  readonly tokenizerMetadata: Map<string, GgufValue> | null;
  /** A llama2.c `tokenizer.bin` given as tokenizerPath, as raw bytes. */
  readonly llama2cTokenizer: Uint8Array | null;
  close(): void;
}

export interface OpenModelOptions {
  /** A separate tokenizer: a GGUF file (its tokenizer.* keys are used) or a llama2.c .bin. */
  tokenizerPath?: string | URL;
}

/** Every tensor a model with this config needs, with its GGUF dims. */
export function expectedTensorShapes(c: ModelConfig): Map<string, number[]> {
  const qDim = c.nHeads * c.headDim;
  const kvDim = c.nKvHeads * c.headDim;
  const m = new Map<string, number[]>();
  m.set("token_embd.weight", [c.dim, c.vocabSize]);
  for (let l = 0; l < c.nLayers; l++) {
    const p = `blk.${l}.`;
    m.set(p + "attn_norm.weight", [c.dim]);
    if (c.fusedQkv) m.set(p + "attn_qkv.weight", [c.dim, qDim + 2 * kvDim]);
    else {
      m.set(p + "attn_q.weight", [c.dim, qDim]);
      m.set(p + "attn_k.weight", [c.dim, kvDim]);
      m.set(p + "attn_v.weight", [c.dim, kvDim]);
    }
    if (c.qkvBias) {
      m.set(p + "attn_q.bias", [qDim]);
      m.set(p + "attn_k.bias", [kvDim]);
      m.set(p + "attn_v.bias", [kvDim]);
    }
    if (c.qkNorm) {
      m.set(p + "attn_q_norm.weight", [c.headDim]);
      m.set(p + "attn_k_norm.weight", [c.headDim]);
    }
    m.set(p + "attn_output.weight", [qDim, c.dim]);
    m.set(p + "ffn_norm.weight", [c.dim]);
    if (c.fusedGateUp) m.set(p + "ffn_up.weight", [c.dim, 2 * c.ffnDim]);
    else {
      m.set(p + "ffn_gate.weight", [c.dim, c.ffnDim]);
      m.set(p + "ffn_up.weight", [c.dim, c.ffnDim]);
    }
    m.set(p + "ffn_down.weight", [c.ffnDim, c.dim]);
    if (c.gemma) {
      m.set(p + "post_attention_norm.weight", [c.dim]);
      m.set(p + "post_ffw_norm.weight", [c.dim]);
    }
  }
  m.set("output_norm.weight", [c.dim]);
  if (!c.tiedOutput) m.set("output.weight", [c.dim, c.vocabSize]);
  return m;
}

function trimDims(dims: readonly number[]): number[] {
  const out = [...dims];
  while (out.length > 1 && out[out.length - 1] === 1) out.pop();
  return out;
}

/**
 * Checks that every expected tensor is present with its shape and a supported type. Vectors
 * (norms, biases) must be F32, as every GGUF converter writes them.
 */
export function validateTensors(
  c: ModelConfig,
  tensors: ReadonlyMap<string, { type: number; dims: readonly number[] }>,
): void {
  const supported = SUPPORTED_WEIGHT_TYPES as readonly number[];
  for (const [name, dims] of expectedTensorShapes(c)) {
    const t = tensors.get(name);
    if (!t) throw new HcError("E_MODEL_TENSOR", `model lacks tensor ${name}`);
    const got = trimDims(t.dims);
    if (got.length !== dims.length || got.some((d, i) => d !== dims[i])) {
      throw new HcError(
        "E_MODEL_TENSOR",
        `tensor ${name} has dims [${t.dims}], expected [${dims}] for this model's config`,
      );
    }
    const typeName = ggmlTypeInfo(t.type)?.name ?? `type ${t.type}`;
    if (dims.length === 1 && t.type !== GgmlType.F32) {
      throw new HcError("E_MODEL_TENSOR", `tensor ${name} is ${typeName}; vectors must be F32`);
    }
    if (!supported.includes(t.type)) {
      const names = SUPPORTED_WEIGHT_TYPES.map((x) => ggmlTypeInfo(x)?.name).join(", ");
      throw new HcError(
        "E_MODEL_TENSOR",
        `tensor ${name} is ${typeName}, which this engine cannot run (supported: ${names})`,
      );
    }
  }
}

/** Reads a whole tensor into a fresh buffer. */
export async function readTensorBytes(t: ModelTensor): Promise<Uint8Array> {
  const dst = new Uint8Array(t.bytes);
  await t.read(dst);
  return dst;
}

async function sniffMagic(path: string | URL): Promise<number | null> {
  using f = await RandomAccessFile.open(path);
  if (f.sizeBytes < 4) return null;
  const b = new Uint8Array(4);
  await f.read(b, 0);
  return new DataView(b.buffer).getUint32(0, true);
}

function tokenizerKeys(metadata: Map<string, GgufValue>): Map<string, GgufValue> | null {
  const out = new Map<string, GgufValue>();
  for (const [k, v] of metadata) if (k.startsWith("tokenizer.")) out.set(k, v);
  return out.size > 0 ? out : null;
}

/** A llama2.c tokenizer.bin is a few hundred KiB at most; this bounds the whole-file read. */
const MAX_LLAMA2C_TOKENIZER_BYTES = 64 << 20;

async function loadTokenizer(
  path: string | URL,
): Promise<{ metadata: Map<string, GgufValue> | null; llama2c: Uint8Array | null }> {
  if (await sniffMagic(path) === GGUF_MAGIC) {
    using g = await openGguf(path);
    const metadata = tokenizerKeys(g.metadata);
    if (!metadata) throw new HcError("E_TOKENIZER", `${g.path} has no tokenizer.* metadata`);
    return { metadata, llama2c: null };
  }
  using f = await RandomAccessFile.open(path);
  if (f.sizeBytes > MAX_LLAMA2C_TOKENIZER_BYTES) {
    throw new HcError("E_TOKENIZER", `${f.path} is too large for a llama2.c tokenizer`);
  }
  const bytes = new Uint8Array(f.sizeBytes);
  await f.read(bytes, 0);
  return { metadata: null, llama2c: bytes };
}

/** Opens a GGUF model or a legacy llama2.c checkpoint (told apart by the GGUF magic). */
export async function openModelSource(
  path: string | URL,
  opts: OpenModelOptions = {},
): Promise<ModelSource> {
  const tokenizer = opts.tokenizerPath ? await loadTokenizer(opts.tokenizerPath) : null;
  if (await sniffMagic(path) === GGUF_MAGIC) {
    const file = await openGguf(path);
    try {
      const config = configFromGguf(file);
      const tensors = new Map<string, ModelTensor>();
      for (const name of expectedTensorShapes(config).keys()) {
        const info = file.tensor(name);
        if (!info) continue; // validateTensors names it
        tensors.set(name, {
          name,
          type: info.type,
          dims: info.dims,
          elems: info.elems,
          bytes: info.bytes,
          read: (dst, srcOffsetBytes = 0) => file.readInto(info, dst, srcOffsetBytes),
        });
      }
      validateTensors(config, tensors);
      const close = () => file.close();
      return {
        format: "gguf",
        path: file.path,
        config,
        tensors,
        tokenizerMetadata: tokenizer ? tokenizer.metadata : tokenizerKeys(file.metadata),
        llama2cTokenizer: tokenizer?.llama2c ?? null,
        close,
        [Symbol.dispose]: close,
      };
    } catch (e) {
      file.close();
      throw e;
    }
  }
  const name = path instanceof URL ? path.pathname : path;
  if (/\.gguf$/i.test(name)) {
    // Named GGUF but without its magic: say so rather than reading it as a llama2.c header.
    throw new HcError(
      "E_GGUF_MAGIC",
      `${name} is not a GGUF file: it does not start with the "GGUF" magic bytes (a truncated ` +
        "download, an HTML error page, or another format); download it again",
    );
  }
  const ckpt = await openLlama2c(path);
  try {
    validateTensors(ckpt.config, ckpt.tensors);
  } catch (e) {
    ckpt.close();
    throw e;
  }
  const close = () => ckpt.close();
  return {
    format: "llama2c",
    path: path instanceof URL ? decodeURIComponent(path.pathname) : path,
    config: ckpt.config,
    tensors: ckpt.tensors,
    tokenizerMetadata: tokenizer?.metadata ?? null,
    llama2cTokenizer: tokenizer?.llama2c ?? null,
    close,
    [Symbol.dispose]: close,
  };
}
