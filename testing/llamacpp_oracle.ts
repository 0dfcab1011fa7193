/**
 * The synthetic models llama.cpp is run on as the oracle (bench/llamacpp_fixtures.ts writes its
 * answers to tests/fixtures/; tests/llamacpp_fixture_test.ts compares the engine with them).
 * Everything here is a pure function of the seed, so a test rebuilds the exact GGUF llama.cpp
 * saw without llama.cpp at hand.
 *
 * The output projection is scaled up so that the next-token distribution is peaked: the argmax
 * is then clear at most positions, and a layout error shows as a different argmax, not as noise
 * between near-ties.
 *
 * The weight-type models are conditioned for a comparison with llama.cpp, which rounds every
 * quantized product's input to 8 bits where the engine keeps f32 (docs/design.md, "Numerics
 * against llama.cpp"): their matrices are drawn at std TYPE_WEIGHT_STD (about 0.56 of 1/sqrt(dim)),
 * so a rounding step in one layer is not amplified by the next, and their output projection is
 * F32 at gain TYPE_OUTPUT_GAIN, so the last product, whose rounding error goes straight into the
 * logits, is not rounded at all. Everything else (the embedding and every layer matrix) is in the
 * type under test. On the fixture's models the TS reference without llama.cpp's rounding misses
 * llama.cpp's top-1 probabilities at clear positions by at most 0.012 (bench/llamacpp_rounding.ts),
 * and llama.cpp fed one token at a time misses its own batched answers by at most 0.010
 * (bench/llamacpp_batching.ts); on the earlier models (gain 6, matrices at 1/sqrt(width), output
 * in the type) they missed by up to 0.09 and 0.097, above the 0.02 the comparison asks for.
 */
import { GgmlType } from "../src/gguf/types.ts";
import type { SyntheticSpec } from "./synthetic_model.ts";
import { mulberry32 } from "./rng.ts";

/** The weight types the fixtures cover, by ggml name. */
export const ORACLE_TYPES = [
  "F32",
  "F16",
  "BF16",
  "Q8_0",
  "Q4_0",
  "Q4_1",
  "Q5_0",
  "Q5_1",
  "Q2_K",
  "Q3_K",
  "Q4_K",
  "Q5_K",
  "Q6_K",
  "IQ4_NL",
  "IQ4_XS",
] as const;
export type OracleType = typeof ORACLE_TYPES[number];

export const ORACLE_VOCAB = 320;
/** Teacher-forced positions per model. */
export const ORACLE_POSITIONS = 128;
/** Greedy continuation length, after a prompt of ORACLE_PROMPT tokens. */
export const ORACLE_GREEDY = 64;
export const ORACLE_PROMPT = 8;
/** How much larger than 1/sqrt(dim) the output projection's values are (the architecture
 * cases' models). */
export const OUTPUT_GAIN = 6;
/** The weight-type models' output gain, and the std of their matrices (see above). */
export const TYPE_OUTPUT_GAIN = 4;
export const TYPE_WEIGHT_STD = 0.035;

const rng = mulberry32;

/** The model spec of one weight type: the embedding and every layer matrix in that type, the
 * output projection in F32 (see above). */
export function oracleSpec(type: OracleType, seed: number): SyntheticSpec {
  const base = oracleBaseSpec(seed);
  return {
    ...base,
    weightType: GgmlType[type],
    weightScale: TYPE_WEIGHT_STD,
    matrixType: (name) => name === "output.weight" ? GgmlType.F32 : undefined,
    tensors: (name, dims) =>
      name === "output.weight"
        ? oracleOutputWeights(seed, dims[0] * dims[1], base.dim, TYPE_OUTPUT_GAIN)
        : undefined,
  };
}

/** The architecture cases' F32 model (testing/llamacpp_arch_oracle.ts builds on it). */
export function oracleBaseSpec(seed: number): SyntheticSpec {
  const dim = 256;
  return {
    dim,
    nLayers: 2,
    nHeads: 4,
    nKvHeads: 2,
    ffnDim: 512,
    vocabSize: ORACLE_VOCAB,
    contextLength: 256,
    weightType: GgmlType.F32,
    seed,
    tensors: (name, dims) =>
      name === "output.weight" ? oracleOutputWeights(seed, dims[0] * dims[1], dim) : undefined,
  };
}

/** The output projection's `n` values: roughly normal (a sum of three uniforms), with std
 * gain / sqrt(dim). */
export function oracleOutputWeights(
  seed: number,
  n: number,
  dim = 256,
  gain = OUTPUT_GAIN,
): Float32Array {
  const r = rng(seed ^ 0x5eed);
  const out = new Float32Array(n);
  const std = gain / Math.sqrt(dim);
  for (let i = 0; i < n; i++) out[i] = (r() + r() + r() - 1.5) * 2 * std;
  return out;
}

/** The teacher-forced token sequence (ordinary tokens only: ids 3 and up). */
export function oracleTokens(seed: number, n = ORACLE_POSITIONS): number[] {
  const r = rng(seed * 7 + 1);
  return Array.from({ length: n }, () => 3 + Math.floor(r() * (ORACLE_VOCAB - 3)));
}

/** What llama.cpp answered for one model (the fixture's per-type entry). */
export interface OracleAnswer {
  /** Per teacher-forced position: the two most likely next tokens and their probabilities. */
  top: [number, number, number, number][];
  /** Greedy continuation of the first ORACLE_PROMPT tokens. */
  greedy: number[];
  /** llama.cpp's top-1 minus top-2 probability at each greedy step. */
  greedyMargin: number[];
}

export interface OracleFixture {
  /** How it was made: generator, seed, llama.cpp build. */
  generator: string;
  seed: number;
  llamaCpp: string;
  positions: number;
  tokens: number[];
  types: Partial<Record<OracleType, OracleAnswer>>;
}
