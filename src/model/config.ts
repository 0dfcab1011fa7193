/**
 * Model hyperparameters, read from GGUF metadata (or a llama2.c header, see llama2c_checkpoint.ts), in one
 * shape every part of the engine uses.
 */
import { HcError } from "../errors.ts";
import type { GgufFile } from "../gguf/reader.ts";
import { ropeScalingFromGguf } from "./rope_scaling.ts";

import { ARCH_TRAITS, isArch, type ModelArch, SUPPORTED_ARCHS } from "./arch.ts";

export type { ModelArch } from "./arch.ts";
export { llama3RopeFactors, yarnRopeFactors } from "./rope_scaling.ts";
/** "adjacent": GGUF Llama / llama2.c (pairs 2i, 2i+1). "halves": NeoX / Qwen2 (i, i + d/2). */
export type RopePairing = "adjacent" | "halves";

export interface ModelConfig {
  arch: ModelArch;
  vocabSize: number;
  /** Embedding width. */
  dim: number;
  nLayers: number;
  nHeads: number;
  nKvHeads: number;
  headDim: number;
  ffnDim: number;
  /** Positions the model was built for (the KV cache never grows past it). */
  contextLength: number;
  ropeBase: number;
  ropePairing: RopePairing;
  /**
   * Per-pair divisors of the RoPE frequency (length headDim / 2): theta_i = pos * base^(-2i/d)
   * / factor_i, as ggml_rope_ext applies `freq_factors`. null means all 1.
   */
  ropeFreqFactors: Float32Array | null;
  /** q and k are multiplied by this after RoPE (YaRN, rope.scaling.attn_factor); usually 1. */
  ropeMscale: number;
  rmsEps: number;
  /** The output projection reuses token_embd.weight. */
  tiedOutput: boolean;
  /** Q, K and V projections have bias vectors. */
  qkvBias: boolean;
  /** Per-head RMSNorm of q and k before RoPE (Qwen3; see arch.ts). */
  qkNorm: boolean;
  /** Layers l with (l + 1) % step == 0 skip RoPE (SmolLM3); 0 for none (see arch.ts). */
  noRopeLayerStep: number;
  /** Q, K and V are one `attn_qkv` tensor (rows: q, then k, then v), split at upload. */
  fusedQkv: boolean;
  /** Gate and up are one `ffn_up` tensor of 2·ffnDim rows, gate first, split at upload. */
  fusedGateUp: boolean;
  /** Per layer: its sliding window W (it sees positions pos - W + 1 .. pos), 0 for global
   * attention (see arch.ts). */
  layerWindows: number[];
  /** The windowed layers' RoPE base, unscaled (Gemma 3's local layers), or null when they rope
   * as the global ones. */
  localRopeBase: number | null;
  /** Gemma's block (arch.ts): embeddings x sqrt(dim), GeGLU, post-attention and post-FFN
   * norms. */
  gemma: boolean;
  /** Softmax scale of the attention scores (1/sqrt(headDim) but for Gemma's 27B sizes). */
  attnScale: number;
  /** Logit soft-capping c of the attention scores and of the output (0: none). */
  attnSoftcap: number;
  finalSoftcap: number;
}

const DEFAULT_ROPE_BASE = 10000;

function missing(key: string): never {
  throw new HcError("E_MODEL_FORMAT", `model metadata lacks ${key}`);
}

function positiveInt(value: number, what: string): number {
  if (!Number.isSafeInteger(value) || value <= 0) {
    throw new HcError("E_MODEL_FORMAT", `model ${what} is ${value}; it must be a positive integer`);
  }
  return value;
}

function numberKey(file: GgufFile, key: string): number | undefined {
  const v = file.metadata.get(key);
  if (Array.isArray(v)) {
    throw new HcError("E_MODEL_ARCH", `${key} varies per layer; such models are not supported`);
  }
  return file.getNumber(key);
}

/** Checks the relations between the sizes that every forward pass relies on. */
export function validateConfig(c: ModelConfig): ModelConfig {
  for (
    const k of [
      "vocabSize",
      "dim",
      "nLayers",
      "nHeads",
      "nKvHeads",
      "headDim",
      "ffnDim",
      "contextLength",
    ] as const
  ) {
    positiveInt(c[k], k);
  }
  if (c.nHeads % c.nKvHeads !== 0) {
    throw new HcError(
      "E_MODEL_FORMAT",
      `model has ${c.nHeads} query heads, not a multiple of its ${c.nKvHeads} KV heads`,
    );
  }
  if (c.headDim % 2 !== 0) {
    throw new HcError("E_MODEL_FORMAT", `model head size ${c.headDim} is odd; RoPE needs pairs`);
  }
  if (!(c.ropeBase > 0) || !(c.rmsEps > 0) || !(c.ropeMscale > 0)) {
    throw new HcError(
      "E_MODEL_FORMAT",
      `model rope base ${c.ropeBase} / rms eps ${c.rmsEps} / rope mscale ${c.ropeMscale}`,
    );
  }
  if (c.ropeFreqFactors) {
    if (c.ropeFreqFactors.length !== c.headDim / 2) {
      throw new HcError(
        "E_MODEL_FORMAT",
        `RoPE frequency factors have ${c.ropeFreqFactors.length} entries, expected ${
          c.headDim / 2
        }`,
      );
    }
    if (!c.ropeFreqFactors.every((f) => f > 0 && Number.isFinite(f))) {
      throw new HcError("E_MODEL_FORMAT", "RoPE frequency factors must be positive and finite");
    }
  }
  return c;
}

/** The rotation angle step of each pair: base^(-2i/headDim) / factor_i. */
export function ropeInverseFrequencies(
  headDim: number,
  base: number,
  freqFactors: Float32Array | null = null,
): Float64Array {
  const inv = new Float64Array(headDim / 2);
  for (let i = 0; i < inv.length; i++) {
    inv[i] = base ** (-(2 * i) / headDim) / (freqFactors ? freqFactors[i] : 1);
  }
  return inv;
}

/**
 * A Mixtral-style file says `llama` (or `qwen2`) but routes each token through a few of several
 * expert FFNs (`ffn_*_exps` tensors, a `ffn_gate_inp` router): without this check it would fail
 * later with "model lacks tensor blk.0.ffn_gate.weight", which does not say why.
 */
function refuseMixtureOfExperts(file: GgufFile, arch: ModelArch): void {
  const experts = file.getNumber(`${arch}.expert_count`) ?? 0;
  const expertTensor = file.tensors.find((t) =>
    /^blk\.\d+\.ffn_(gate|up|down|gate_up)_(exps|shexp)\.weight$/.test(t.name) ||
    /^blk\.\d+\.ffn_gate_inp\.weight$/.test(t.name)
  );
  if (experts > 0 || expertTensor) {
    const what = [
      experts > 0 ? `${arch}.expert_count = ${experts}` : "",
      expertTensor ? `tensor ${expertTensor.name}` : "",
    ].filter((s) => s).join(", ");
    throw new HcError(
      "E_MODEL_ARCH",
      `this is a mixture-of-experts model (${what}), which is not supported: this engine runs ` +
        `dense-FFN ${SUPPORTED_ARCHS.join(", ")} models only (e.g. Llama 3, Mistral 7B, ` +
        "Qwen2.5), not Mixtral-style expert layers",
    );
  }
}

/** Reads the model hyperparameters of a GGUF file (and its rope_freqs tensor, if any). */
export function configFromGguf(file: GgufFile): ModelConfig {
  const archName = file.getString("general.architecture") ?? missing("general.architecture");
  if (!isArch(archName)) {
    throw new HcError(
      "E_MODEL_ARCH",
      `model architecture "${archName}" (general.architecture) is not supported; supported: ` +
        `${SUPPORTED_ARCHS.join(", ")} (dense Llama-family models: Llama, Mistral, Qwen2/2.5, ` +
        "Qwen3, SmolLM2/3, Phi-3, Ministral 3, Gemma 2/3, TinyLlama)",
    );
  }
  const arch = archName;
  refuseMixtureOfExperts(file, arch);
  const need = (key: string) => numberKey(file, `${arch}.${key}`) ?? missing(`${arch}.${key}`);
  const opt = (key: string) => numberKey(file, `${arch}.${key}`);

  const dim = positiveInt(need("embedding_length"), "embedding_length");
  const nHeads = positiveInt(need("attention.head_count"), "attention.head_count");
  const nKvHeads = opt("attention.head_count_kv") ?? nHeads;
  const headDim = opt("attention.key_length") ?? dim / nHeads;
  const valueDim = opt("attention.value_length") ?? headDim;
  if (valueDim !== headDim) {
    throw new HcError("E_MODEL_ARCH", `key length ${headDim} != value length ${valueDim}`);
  }
  positiveInt(headDim, "head size");
  if (headDim % 2 !== 0) {
    throw new HcError("E_MODEL_FORMAT", `model head size ${headDim} is odd; RoPE needs pairs`);
  }
  const ropeDims = opt("rope.dimension_count") ?? headDim;
  if (ropeDims !== headDim) {
    throw new HcError(
      "E_MODEL_ARCH",
      `partial RoPE (${ropeDims} of ${headDim} head dims) is not supported`,
    );
  }
  const ropeBase = opt("rope.freq_base") ?? DEFAULT_ROPE_BASE;

  if (file.tensor("blk.0.attn_qkv.bias")) {
    throw new HcError(
      "E_MODEL_ARCH",
      "fused QKV projections with a bias (blk.0.attn_qkv.bias) are not supported",
    );
  }
  const traits = ARCH_TRAITS[arch];
  let contextLength = need("context_length");
  const scaling = ropeScalingFromGguf(file, arch, headDim, ropeBase, contextLength, traits);
  const tempScale = traits.yarnMetadata ? opt("attention.temperature_scale") ?? 0 : 0;
  if (tempScale !== 0) {
    // Llama 4 / Ministral 3 attention temperature: llama.cpp multiplies q by
    // 1 + beta·ln(floor(pos / original context) + 1), exactly 1 below the original context.
    // Past it the scale would vary per position, which we do not run: the context stops there.
    const orig = opt("rope.scaling.original_context_length") ?? contextLength;
    contextLength = Math.min(
      contextLength,
      positiveInt(orig, "rope.scaling.original_context_length"),
    );
  }
  const nLayers = need("block_count");
  const swa = slidingWindows(file, arch, nLayers);
  const nonNegative = (v: number, what: string) => {
    if (!(v >= 0) || !Number.isFinite(v)) {
      throw new HcError("E_MODEL_FORMAT", `model ${what} is ${v}; it must be >= 0`);
    }
    return v;
  };
  const embd = file.tensor("token_embd.weight");
  const vocabSize = embd?.dims[1] ?? opt("vocab_size") ??
    file.getStringArray("tokenizer.ggml.tokens")?.length ?? missing(`${arch}.vocab_size`);

  return validateConfig({
    arch,
    vocabSize,
    dim,
    nLayers,
    nHeads,
    nKvHeads,
    headDim,
    ffnDim: need("feed_forward_length"),
    contextLength,
    ropeBase,
    ropePairing: ARCH_TRAITS[arch].ropePairing,
    ropeFreqFactors: scaling.freqFactors,
    ropeMscale: scaling.mscale,
    rmsEps: need("attention.layer_norm_rms_epsilon"),
    tiedOutput: file.tensor("output.weight") === undefined,
    qkvBias: file.tensor("blk.0.attn_q.bias") !== undefined,
    qkNorm: ARCH_TRAITS[arch].qkNorm,
    noRopeLayerStep: ARCH_TRAITS[arch].noRopeLayerStep,
    fusedQkv: file.tensor("blk.0.attn_qkv.weight") !== undefined,
    fusedGateUp: ARCH_TRAITS[arch].fusedGateUp,
    layerWindows: swa.windows,
    localRopeBase: swa.localRopeBase,
    gemma: traits.gemma,
    // llama.cpp's f_attention_scale for Gemma (applied to q, with a kq scale of 1).
    attnScale: traits.bigQueryScaleLayers === nLayers
      ? 1 / Math.sqrt(dim / nHeads)
      : 1 / Math.sqrt(headDim),
    attnSoftcap: nonNegative(
      opt("attn_logit_softcapping") ?? traits.attnSoftcap,
      "attn_logit_softcapping",
    ),
    finalSoftcap: nonNegative(
      opt("final_logit_softcapping") ?? traits.finalSoftcap,
      "final_logit_softcapping",
    ),
  });
}

/**
 * Which layers attend through a sliding window, as llama.cpp reads it for the architecture
 * (ArchTraits.swa): `attention.sliding_window` (or the default), and the pattern from
 * `attention.sliding_window_pattern` (a period n, or one boolean per layer) or the default.
 */
function slidingWindows(
  file: GgufFile,
  arch: ModelArch,
  nLayers: number,
): { windows: number[]; localRopeBase: number | null } {
  const none = { windows: Array(nLayers).fill(0), localRopeBase: null };
  const swa = ARCH_TRAITS[arch].swa;
  if (!swa) return none;
  const window = file.getNumber(`${arch}.attention.sliding_window`) ?? swa.window ?? 0;
  if (!Number.isSafeInteger(window) || window < 0) {
    throw new HcError("E_MODEL_FORMAT", `model sliding window ${window} is not a token count`);
  }
  if (window === 0) return none;
  const pattern = file.metadata.get(`${arch}.attention.sliding_window_pattern`);
  let windowed: boolean[];
  if (Array.isArray(pattern)) {
    if (pattern.length !== nLayers) {
      throw new HcError(
        "E_MODEL_FORMAT",
        `sliding_window_pattern has ${pattern.length} entries for ${nLayers} layers`,
      );
    }
    windowed = pattern.map((v) => Boolean(v));
  } else {
    const n = typeof pattern === "number" || typeof pattern === "bigint"
      ? Number(pattern)
      : swa.pattern;
    if (!Number.isSafeInteger(n) || n < 0) {
      throw new HcError("E_MODEL_FORMAT", `sliding_window_pattern ${n} is not a layer period`);
    }
    // llama.cpp's set_swa_pattern: 0 windows every layer.
    windowed = Array.from({ length: nLayers }, (_, l) => n === 0 || l % n < n - 1);
  }
  const baseKey = file.getNumber(`${arch}.rope.freq_base_swa`);
  const localRopeBase = baseKey ?? (swa.localRopeBase === "global" ? null : swa.localRopeBase);
  if (localRopeBase !== null && !(localRopeBase > 0)) {
    throw new HcError("E_MODEL_FORMAT", `rope.freq_base_swa ${localRopeBase} must be positive`);
  }
  return { windows: windowed.map((w) => (w ? window : 0)), localRopeBase };
}
