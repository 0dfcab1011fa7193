/**
 * What sets the supported architectures apart, in one table: the forward pass and the loader
 * read these traits from the config, never the architecture's name, so adding a Llama-family
 * architecture is a row here plus the steps its traits switch on.
 */
import type { RopePairing } from "./config.ts";

export const SUPPORTED_ARCHS = ["llama", "qwen2", "qwen3", "smollm3", "phi3", "mistral3"] as const;
export type ModelArch = typeof SUPPORTED_ARCHS[number];

export interface ArchTraits {
  /** How RoPE pairs a head's dimensions (llama.cpp's rope type NORM = adjacent, NEOX = halves). */
  ropePairing: RopePairing;
  /**
   * Per-head RMSNorm of the queries and keys (weights `attn_q_norm`, `attn_k_norm`, headDim
   * each) after the projections and before RoPE, as Qwen3 does.
   */
  qkNorm: boolean;
  /**
   * Every this-many-th layer (layers l with (l + 1) % step == 0) skips RoPE: SmolLM3's NoPE
   * layers, whose step llama.cpp fixes at 4 (no metadata key carries it). 0: every layer ropes.
   */
  noRopeLayerStep: number;
  /**
   * The FFN's gate and up projections are one `ffn_up` tensor of 2·ffnDim rows, gate first
   * (Phi-3's gate_up_proj, which llama.cpp runs as ggml_swiglu over the fused product).
   */
  fusedGateUp: boolean;
  /**
   * YaRN's beta_fast, beta_slow and log multiplier come from metadata
   * (`rope.scaling.yarn_*`), and `attention.temperature_scale` applies (Ministral 3); llama.cpp
   * reads none of them for the other architectures.
   */
  yarnMetadata: boolean;
}

export const ARCH_TRAITS: Record<ModelArch, ArchTraits> = {
  llama: {
    ropePairing: "adjacent",
    qkNorm: false,
    noRopeLayerStep: 0,
    fusedGateUp: false,
    yarnMetadata: false,
  },
  qwen2: {
    ropePairing: "halves",
    qkNorm: false,
    noRopeLayerStep: 0,
    fusedGateUp: false,
    yarnMetadata: false,
  },
  qwen3: {
    ropePairing: "halves",
    qkNorm: true,
    noRopeLayerStep: 0,
    fusedGateUp: false,
    yarnMetadata: false,
  },
  smollm3: {
    ropePairing: "adjacent",
    qkNorm: false,
    noRopeLayerStep: 4,
    fusedGateUp: false,
    yarnMetadata: false,
  },
  // Phi-3's sliding_window metadata is ignored, as llama.cpp does (its Phi SWA is disabled).
  phi3: {
    ropePairing: "halves",
    qkNorm: false,
    noRopeLayerStep: 0,
    fusedGateUp: true,
    yarnMetadata: false,
  },
  // Ministral 3 (text): llama's graph with YaRN read from metadata.
  mistral3: {
    ropePairing: "adjacent",
    qkNorm: false,
    noRopeLayerStep: 0,
    fusedGateUp: false,
    yarnMetadata: true,
  },
};

export function isArch(name: string): name is ModelArch {
  return (SUPPORTED_ARCHS as readonly string[]).includes(name);
}

/** Whether layer `layer` rotates q and k (see ArchTraits.noRopeLayerStep). */
export function layerUsesRope(c: { noRopeLayerStep: number }, layer: number): boolean {
  return c.noRopeLayerStep === 0 || (layer + 1) % c.noRopeLayerStep !== 0;
}
