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
import { type OracleAnswer, oracleSpec } from "./llamacpp_oracle.ts";

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
  return oracleSpec("F32", seed);
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
