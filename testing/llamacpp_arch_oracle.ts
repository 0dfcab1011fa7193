/**
 * The architecture cases llama.cpp is run on as the oracle (bench/llamacpp_arch_fixtures.ts
 * stores its answers in tests/fixtures/llamacpp_archs.json; tests/llamacpp_arch_test.ts holds
 * the engine against them). Each case is the weight-type oracle's synthetic model
 * (testing/llamacpp_oracle.ts: peaked logits, same tokens) in F32, so that what is compared is
 * the architecture's graph, not llama.cpp's 8-bit activation rounding for quantized weights.
 */
import { GgmlType } from "../src/gguf/types.ts";
import { llama3RopeFactors } from "../src/model/rope_scaling.ts";
import { gv } from "./gguf_writer.ts";
import type { SyntheticSpec } from "./synthetic_model.ts";
import {
  type OracleAnswer,
  oracleBaseSpec,
  oracleOutputWeights,
  OUTPUT_GAIN,
} from "./llamacpp_oracle.ts";

/** One case per architecture or architecture feature. */
export const ARCH_CASES = {
  /** Qwen3: QK-norm before RoPE, NeoX pairing, no biases; head size 128 > dim / heads. */
  qwen3: (seed) => ({ ...base(seed), arch: "qwen3", headDim: 128 }),
  /** SmolLM3: layer 3 of 4 (every fourth) takes no RoPE. */
  smollm3: (seed) => ({ ...base(seed), arch: "smollm3", nLayers: 4 }),
  /**
   * Phi-3: fused attn_qkv and gate/up tensors, NeoX RoPE, its long-context factors and
   * attn_factor. An original context of 64 < 256 selects the long factors (llama.cpp: its
   * context of 256 exceeds it; ours: the model's).
   */
  "phi3-long": (seed) => phi3(seed, 64),
  /** The same with an original context of 4096: the short factors. */
  "phi3-short": (seed) => phi3(seed, 4096),
  /**
   * Ministral 3: YaRN with its metadata-given betas and log multiplier (whose ratio is the
   * magnitude factor), and an attention temperature that is exactly 1 below the original context.
   */
  mistral3: (seed) => ({
    ...base(seed),
    arch: "mistral3",
    metadata: [
      ["mistral3.rope.scaling.type", gv.str("yarn")],
      ["mistral3.rope.scaling.factor", gv.f32(16)],
      ["mistral3.rope.scaling.original_context_length", gv.u32(512)],
      ["mistral3.rope.scaling.yarn_beta_fast", gv.f32(16)],
      ["mistral3.rope.scaling.yarn_beta_slow", gv.f32(2)],
      ["mistral3.rope.scaling.yarn_log_multiplier", gv.f32(0.5)],
      ["mistral3.attention.temperature_scale", gv.f32(0.1)],
    ],
  }),
  /** Linear RoPE scaling from metadata (every frequency / 4). */
  "rope-linear": (seed) => ({
    ...base(seed),
    metadata: [
      ["llama.rope.scaling.type", gv.str("linear")],
      ["llama.rope.scaling.factor", gv.f32(4)],
    ],
  }),
  /**
   * YaRN from metadata: an original context of 512 puts the correction band at pairs 3..16 of
   * 32, and attn_factor adds to the magnitude correction.
   */
  "rope-yarn": (seed) => ({
    ...base(seed),
    metadata: [
      ["llama.rope.scaling.type", gv.str("yarn")],
      ["llama.rope.scaling.factor", gv.f32(4)],
      ["llama.rope.scaling.original_context_length", gv.u32(512)],
      ["llama.rope.scaling.attn_factor", gv.f32(1.1)],
    ],
  }),
  /**
   * Gemma 2: embeddings x sqrt(dim), GeGLU, post-norms, tied output, attention logits capped
   * at 5 (scores of a few units, so the cap bends them) and final logits at 25, and a
   * 16-token window on layers 0 and 2 of 4 (pattern 2): the 128 teacher-forced positions reach
   * far past it.
   */
  gemma2: (seed) => ({
    ...base(seed),
    arch: "gemma2",
    nLayers: 4,
    tiedOutput: true,
    // The tied embedding is also the output: at 1/sqrt(dim) (x sqrt(dim) on the way in), with a
    // 6x final norm that peaks the logits.
    tensors: (name, dims) => {
      if (name === "token_embd.weight") {
        return oracleOutputWeights(seed, dims[0] * dims[1]).map((v) => v / OUTPUT_GAIN);
      }
      if (name === "output_norm.weight") {
        return oracleOutputWeights(seed + 1, dims[0]).map((v) => 6 + v);
      }
      // Post-norms of 8: the layers' outputs outweigh the embedding (a tied model's logits
      // otherwise echo the input token, whose embedding is most like itself).
      const post = /^blk\.(\d+)\.post_(attention|ffw)_norm\.weight$/.exec(name);
      if (post) {
        const salt = 2 + Number(post[1]) * 2 + (post[2] === "ffw" ? 1 : 0);
        return oracleOutputWeights(seed + salt, dims[0]).map((v) => 8 + 2 * v);
      }
      return undefined;
    },
    metadata: [
      ["gemma2.attention.sliding_window", gv.u32(16)],
      ["gemma2.attn_logit_softcapping", gv.f32(5)],
      ["gemma2.final_logit_softcapping", gv.f32(25)],
    ],
  }),
  /**
   * Gemma 3: as Gemma 2 without soft-capping, plus QK-norm; five 16-token windowed layers to
   * one global (llama.cpp's default pattern 6), the windowed ones roped at base 10000 unscaled
   * while the global one has base 1e6 and linear scaling 8 (Gemma 3 4B's).
   */
  gemma3: (seed) => ({
    ...base(seed),
    arch: "gemma3",
    nLayers: 6,
    ropeBase: 1e6,
    metadata: [
      ["gemma3.attention.sliding_window", gv.u32(16)],
      ["gemma3.rope.scaling.type", gv.str("linear")],
      ["gemma3.rope.scaling.factor", gv.f32(8)],
    ],
  }),
  /** Llama 3.1's scaling as its converter writes it: rope_freqs.weight, blended band 16..64. */
  "rope-llama3": (seed) => ({
    ...base(seed),
    ropeFreqFactors: [...llama3RopeFactors(64, 10000, 8, 1, 4, 64)],
  }),
} satisfies Record<string, (seed: number) => SyntheticSpec>;
export type ArchCase = keyof typeof ARCH_CASES;
export const ARCH_CASE_NAMES = Object.keys(ARCH_CASES) as ArchCase[];

function phi3(seed: number, originalContextLength: number): SyntheticSpec {
  const pairs = 32;
  return {
    ...base(seed),
    arch: "phi3",
    // llama.cpp gives special tokens of a model named like "phi3" their Phi-3 attributes, and
    // fails on a vocabulary without Phi-3's "<|endoftext|>".
    name: "synthetic-fused-qkv",
    ropeFactorsLong: Array.from({ length: pairs }, (_, i) => 1 + (i * 7) / pairs),
    ropeFactorsShort: Array.from({ length: pairs }, (_, i) => 1 + (i % 4) * 0.25),
    metadata: [
      ["phi3.rope.scaling.original_context_length", gv.u32(originalContextLength)],
      ["phi3.rope.scaling.attn_factor", gv.f32(1.19)],
      ["phi3.attention.sliding_window", gv.u32(2047)],
    ],
  };
}

function base(seed: number): SyntheticSpec {
  return oracleBaseSpec(seed);
}

export function archSpec(name: ArchCase, seed: number): SyntheticSpec {
  return { ...ARCH_CASES[name](seed), weightType: GgmlType.F32 };
}

export interface ArchFixture {
  generator: string;
  seed: number;
  llamaCpp: string;
  positions: number;
  tokens: number[];
  cases: Partial<Record<ArchCase, OracleAnswer>>;
}
