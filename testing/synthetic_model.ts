/**
 * Synthetic Llama/Qwen2 GGUF models with seeded random weights, for tests and benchmarks that
 * need shapes the real test models lack (GQA ratios, weight types, 8 KV heads x 128, rope
 * scaling, long contexts). The tokenizer is a small SentencePiece vocabulary with byte fallback,
 * so any text encodes.
 */
import { type GgufTypedValue, type GgufWriteTensor, gv, writeGguf } from "./gguf_writer.ts";
import { GgufValueType } from "../src/gguf/reader.ts";
import { GgmlType } from "../src/gguf/types.ts";
import { quantizeAny } from "./quantizers.ts";
import { HcError } from "../src/errors.ts";

export interface SyntheticSpec {
  arch?: "llama" | "qwen2" | "qwen3" | "smollm3" | "phi3" | "mistral3" | "gemma2" | "gemma3";
  dim: number;
  nLayers: number;
  nHeads: number;
  nKvHeads: number;
  /** Default dim / nHeads. */
  headDim?: number;
  ffnDim: number;
  /** At least 259 (3 control tokens + 256 byte tokens); default 320. */
  vocabSize?: number;
  contextLength: number;
  /** Type of every matrix (norms and biases stay F32). */
  weightType?: number;
  /** Type of token_embd (default: weightType). */
  embeddingType?: number;
  /** Per-matrix types (default: weightType), e.g. a mixed quant file's. */
  matrixType?: (name: string) => number | undefined;
  tiedOutput?: boolean;
  ropeBase?: number;
  /** Llama 3 rope scaling written as metadata. */
  ropeScaling?: {
    factor: number;
    lowFreqFactor: number;
    highFreqFactor: number;
    originalContextLength: number;
  };
  seed?: number;
  /** Phi-3's long-context RoPE divisors (headDim / 2 each), as F32 rope_factors_{long,short}. */
  ropeFactorsLong?: readonly number[];
  ropeFactorsShort?: readonly number[];
  /** general.name (default `synthetic-{arch}`). */
  name?: string;
  /** More metadata, written after the rest (e.g. `{arch}.rope.scaling.*`). */
  metadata?: [string, GgufTypedValue][];
  /** Multiplies the Q projection: 0 makes every query zero, i.e. attention exactly uniform. */
  queryScale?: number;
  /** Standard deviation of the matrices (default 1/sqrt(input width)). */
  weightScale?: number;
  /** Per-pair RoPE divisors (headDim / 2 of them), written as the F32 `rope_freqs.weight`
   * tensor; huge factors (e.g. 1e12) make RoPE rotate nothing, i.e. a NoPE model. */
  ropeFreqFactors?: readonly number[];
  /**
   * Hand-made weights: the values of tensor `name` (row-major over GGUF dims [cols, rows], i.e.
   * one row of `cols` inputs per output), or undefined to keep its seeded random fill. Tensors
   * left to the random fill get the same values as without this hook.
   */
  tensors?: (name: string, dims: readonly number[]) => Float32Array | undefined;
}

/** Gaussian-ish values from a seeded xorshift (sum of uniforms): cheap and reproducible. */
function randomFill(n: number, seed: number, std: number): Float32Array {
  let s = (seed * 2654435761) >>> 0 || 1;
  const next = () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 4294967296;
  };
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = (next() + next() + next() - 1.5) * 2 * std;
  return out;
}

function tensor(name: string, type: number, dims: number[], values: Float32Array): GgufWriteTensor {
  return { name, type, dims, data: quantizeAny(type, values) };
}

/** The hook's values for `name`, checked against its shape, or null to use the random fill. */
function override(spec: SyntheticSpec, name: string, dims: number[]): Float32Array | null {
  const v = spec.tensors?.(name, dims);
  if (v === undefined) return null;
  const elems = dims.reduce((a, b) => a * b, 1);
  if (v.length !== elems) {
    throw new HcError(
      "E_BAD_REQUEST",
      `synthetic tensor ${name} [${dims.join(", ")}] needs ${elems} values, got ${v.length}`,
    );
  }
  return v;
}

/** Vocabulary: <unk>, <s>, </s>, the 256 byte tokens, then "▁" + letters and short words. */
function vocabulary(size: number): { tokens: string[]; scores: number[]; types: number[] } {
  const tokens = ["<unk>", "<s>", "</s>"];
  const types = [2, 3, 3];
  for (let b = 0; b < 256; b++) {
    tokens.push(`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`);
    types.push(6);
  }
  const words = "the a and to of in is was he she it on for with as at by be this that".split(" ");
  // Unique texts: llama.cpp refuses a vocabulary with duplicates ("▁a" is a letter and a word).
  const extra = [
    ...new Set([
      "▁",
      ..."abcdefghijklmnopqrstuvwxyz".split("").map((c) => "▁" + c),
      ...words.map((w) => "▁" + w),
    ]),
  ];
  for (let i = 0; tokens.length < size; i++) {
    tokens.push(i < extra.length ? extra[i] : `▁w${i}`);
    types.push(1);
  }
  const scores = tokens.map((_, i) => (i < 259 ? 0 : -i));
  return {
    tokens: tokens.slice(0, size),
    scores: scores.slice(0, size),
    types: types.slice(0, size),
  };
}

/** Writes a synthetic model to `path`. */
export async function writeSyntheticModel(path: string, spec: SyntheticSpec): Promise<void> {
  const arch = spec.arch ?? "llama";
  const type = spec.weightType ?? GgmlType.F32;
  const headDim = spec.headDim ?? spec.dim / spec.nHeads;
  const vocab = spec.vocabSize ?? 320;
  const seed = spec.seed ?? 1;
  const qDim = spec.nHeads * headDim;
  const kvDim = spec.nKvHeads * headDim;
  const gemma = arch === "gemma2" || arch === "gemma3";
  if (arch === "gemma2" && !spec.tiedOutput) {
    // llama.cpp's gemma2 always reads token_embd as the output and refuses an extra tensor.
    throw new HcError("E_BAD_REQUEST", "a gemma2 model has tied output embeddings");
  }
  // Every random tensor consumes one seed slot, overridden or not, so that overriding one
  // tensor leaves the values of all the others unchanged.
  let n = 0;
  const mat = (name: string, cols: number, rows: number, scale = 1) => {
    const slot = seed * 1000 + n++;
    return tensor(
      name,
      spec.matrixType?.(name) ?? type,
      [cols, rows],
      override(spec, name, [cols, rows]) ??
        randomFill(cols * rows, slot, scale * (spec.weightScale ?? 1 / Math.sqrt(cols))),
    );
  };
  const vec = (name: string, len: number, mean: number, std: number) => {
    const slot = seed * 1000 + n++;
    const own = override(spec, name, [len]);
    if (own) return tensor(name, GgmlType.F32, [len], own);
    const v = randomFill(len, slot, std);
    for (let i = 0; i < len; i++) v[i] += mean;
    return tensor(name, GgmlType.F32, [len], v);
  };
  const embSlot = seed * 1000 + n++;
  const tensors: GgufWriteTensor[] = [
    tensor(
      "token_embd.weight",
      spec.embeddingType ?? type,
      [spec.dim, vocab],
      override(spec, "token_embd.weight", [spec.dim, vocab]) ??
        randomFill(spec.dim * vocab, embSlot, 1),
    ),
  ];
  if (spec.ropeFreqFactors) {
    const f = spec.ropeFreqFactors;
    if (f.length !== headDim / 2 || !f.every((x) => x > 0 && Number.isFinite(x))) {
      throw new HcError(
        "E_BAD_REQUEST",
        `ropeFreqFactors needs ${headDim / 2} positive finite values, got ${f.length}`,
      );
    }
    tensors.push(tensor("rope_freqs.weight", GgmlType.F32, [headDim / 2], Float32Array.from(f)));
  }
  for (
    const [name, f] of [
      ["rope_factors_long.weight", spec.ropeFactorsLong],
      ["rope_factors_short.weight", spec.ropeFactorsShort],
    ] as const
  ) {
    if (f) tensors.push(tensor(name, GgmlType.F32, [headDim / 2], Float32Array.from(f)));
  }
  for (let l = 0; l < spec.nLayers; l++) {
    const p = `blk.${l}.`;
    tensors.push(vec(p + "attn_norm.weight", spec.dim, 1, 0.1));
    if (arch === "phi3") {
      // Phi-3's fused projections: q, k, v rows in one tensor; gate then up rows in ffn_up.
      tensors.push(mat(p + "attn_qkv.weight", spec.dim, qDim + 2 * kvDim));
    } else {
      tensors.push(mat(p + "attn_q.weight", spec.dim, qDim, spec.queryScale ?? 1));
      tensors.push(mat(p + "attn_k.weight", spec.dim, kvDim));
      tensors.push(mat(p + "attn_v.weight", spec.dim, kvDim));
    }
    if (arch === "qwen2") {
      tensors.push(vec(p + "attn_q.bias", qDim, 0, (spec.queryScale ?? 1) * 0.1));
      tensors.push(vec(p + "attn_k.bias", kvDim, 0, 0.1));
      tensors.push(vec(p + "attn_v.bias", kvDim, 0, 0.1));
    }
    if (arch === "qwen3" || arch === "gemma3") {
      tensors.push(vec(p + "attn_q_norm.weight", headDim, 1, 0.1));
      tensors.push(vec(p + "attn_k_norm.weight", headDim, 1, 0.1));
    }
    tensors.push(mat(p + "attn_output.weight", qDim, spec.dim));
    // Gemma's norms after attention and after the FFN (GGUF stores them with Gemma's +1).
    if (gemma) tensors.push(vec(p + "post_attention_norm.weight", spec.dim, 1, 0.1));
    tensors.push(vec(p + "ffn_norm.weight", spec.dim, 1, 0.1));
    if (arch === "phi3") tensors.push(mat(p + "ffn_up.weight", spec.dim, 2 * spec.ffnDim));
    else {
      tensors.push(mat(p + "ffn_gate.weight", spec.dim, spec.ffnDim));
      tensors.push(mat(p + "ffn_up.weight", spec.dim, spec.ffnDim));
    }
    tensors.push(mat(p + "ffn_down.weight", spec.ffnDim, spec.dim));
    if (gemma) tensors.push(vec(p + "post_ffw_norm.weight", spec.dim, 1, 0.1));
  }
  tensors.push(vec("output_norm.weight", spec.dim, 1, 0.1));
  if (!spec.tiedOutput) tensors.push(mat("output.weight", spec.dim, vocab));
  const v = vocabulary(vocab);
  const md: [string, ReturnType<typeof gv.u32>][] = [
    ["general.architecture", gv.str(arch)],
    ["general.name", gv.str(spec.name ?? `synthetic-${arch}`)],
    [`${arch}.context_length`, gv.u32(spec.contextLength)],
    [`${arch}.embedding_length`, gv.u32(spec.dim)],
    [`${arch}.block_count`, gv.u32(spec.nLayers)],
    [`${arch}.feed_forward_length`, gv.u32(spec.ffnDim)],
    [`${arch}.attention.head_count`, gv.u32(spec.nHeads)],
    [`${arch}.attention.head_count_kv`, gv.u32(spec.nKvHeads)],
    [`${arch}.attention.key_length`, gv.u32(headDim)],
    [`${arch}.attention.value_length`, gv.u32(headDim)],
    [`${arch}.rope.freq_base`, gv.f32(spec.ropeBase ?? 10000)],
    [`${arch}.attention.layer_norm_rms_epsilon`, gv.f32(1e-5)],
    ["tokenizer.ggml.model", gv.str("llama")],
    ["tokenizer.ggml.tokens", gv.arr(GgufValueType.STRING, v.tokens)],
    ["tokenizer.ggml.scores", gv.arr(GgufValueType.FLOAT32, v.scores)],
    ["tokenizer.ggml.token_type", gv.arr(GgufValueType.INT32, v.types)],
    ["tokenizer.ggml.bos_token_id", gv.u32(1)],
    ["tokenizer.ggml.eos_token_id", gv.u32(2)],
    ["tokenizer.ggml.unknown_token_id", gv.u32(0)],
  ];
  if (spec.ropeScaling) {
    const r = spec.ropeScaling;
    md.push(
      [`${arch}.rope.scaling.type`, gv.str("llama3")],
      [`${arch}.rope.scaling.factor`, gv.f32(r.factor)],
      [`${arch}.rope.scaling.low_freq_factor`, gv.f32(r.lowFreqFactor)],
      [`${arch}.rope.scaling.high_freq_factor`, gv.f32(r.highFreqFactor)],
      [`${arch}.rope.scaling.original_context_length`, gv.u32(r.originalContextLength)],
    );
  }
  md.push(...(spec.metadata ?? []));
  await writeGguf(path, { metadata: md, tensors });
}
