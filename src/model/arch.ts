/**
 * What sets the supported architectures apart, in one table: the forward pass and the loader
 * read these traits from the config, never the architecture's name, so adding a Llama-family
 * architecture is a row here plus the steps its traits switch on.
 */
import type { RopePairing } from "./config.ts";

export const SUPPORTED_ARCHS = [
  "llama",
  "qwen2",
  "qwen3",
  "smollm3",
  "phi3",
  "mistral3",
  "gemma2",
  "gemma3",
] as const;
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
  /** Gemma 2/3's block: embeddings times sqrt(dim), GeGLU, RMSNorms after attention and after
   * the FFN (attn_post_norm, ffn_post_norm), q scaled before attention (see config.ts). */
  gemma: boolean;
  /**
   * Sliding-window layers as llama.cpp reads them for this architecture, or null where it
   * ignores `attention.sliding_window` (llama, Mistral, Qwen2, Phi-3: llama.cpp runs those with
   * full attention everywhere, so do we). `pattern` n: layer l is windowed when
   * l % n < n - 1 (unless `attention.sliding_window_pattern` says otherwise); `window`: the
   * default when the metadata lacks one (null: no key, no windows); `localRopeBase`: the
   * windowed layers' RoPE base when `rope.freq_base_swa` is absent ("global": the model's, with
   * its scaling; a number: that base, unscaled).
   */
  swa: { pattern: number; window: number | null; localRopeBase: number | "global" } | null;
  /** Soft-capping defaults when the metadata lacks `attn_logit_softcapping` /
   * `final_logit_softcapping` (0: none). */
  attnSoftcap: number;
  finalSoftcap: number;
  /** Layer count of the model size whose query scale is 1/sqrt(dim / heads) instead of
   * 1/sqrt(headDim) (Gemma's 27B, which llama.cpp recognises by its layers). */
  bigQueryScaleLayers: number;
}

const PLAIN = {
  gemma: false,
  swa: null,
  attnSoftcap: 0,
  finalSoftcap: 0,
  bigQueryScaleLayers: 0,
} as const;

export const ARCH_TRAITS: Record<ModelArch, ArchTraits> = {
  llama: {
    ropePairing: "adjacent",
    qkNorm: false,
    noRopeLayerStep: 0,
    fusedGateUp: false,
    yarnMetadata: false,
    ...PLAIN,
  },
  qwen2: {
    ropePairing: "halves",
    qkNorm: false,
    noRopeLayerStep: 0,
    fusedGateUp: false,
    yarnMetadata: false,
    ...PLAIN,
  },
  qwen3: {
    ropePairing: "halves",
    qkNorm: true,
    noRopeLayerStep: 0,
    fusedGateUp: false,
    yarnMetadata: false,
    ...PLAIN,
  },
  smollm3: {
    ropePairing: "adjacent",
    qkNorm: false,
    noRopeLayerStep: 4,
    fusedGateUp: false,
    yarnMetadata: false,
    ...PLAIN,
  },
  // Phi-3's sliding_window metadata is ignored, as llama.cpp does (its Phi SWA is disabled).
  phi3: {
    ropePairing: "halves",
    qkNorm: false,
    noRopeLayerStep: 0,
    fusedGateUp: true,
    yarnMetadata: false,
    ...PLAIN,
  },
  // Ministral 3 (text): llama's graph with YaRN read from metadata.
  mistral3: {
    ropePairing: "adjacent",
    qkNorm: false,
    noRopeLayerStep: 0,
    fusedGateUp: false,
    yarnMetadata: true,
    ...PLAIN,
  },
  // Gemma 2: every other layer (0, 2, ...) a 4096-token window unless the metadata says
  // otherwise; attention logits capped at 50 and final logits at 30 by default.
  gemma2: {
    ropePairing: "halves",
    qkNorm: false,
    noRopeLayerStep: 0,
    fusedGateUp: false,
    yarnMetadata: false,
    gemma: true,
    swa: { pattern: 2, window: 4096, localRopeBase: "global" },
    attnSoftcap: 50,
    finalSoftcap: 30,
    bigQueryScaleLayers: 46,
  },
  // Gemma 3 (text): five windowed layers to one global, only when the metadata gives a window;
  // the windowed layers rope at base 10000 unscaled; QK-norm; no soft-capping by default.
  gemma3: {
    ropePairing: "halves",
    qkNorm: true,
    noRopeLayerStep: 0,
    fusedGateUp: false,
    yarnMetadata: false,
    gemma: true,
    swa: { pattern: 6, window: null, localRopeBase: 10000 },
    attnSoftcap: 0,
    finalSoftcap: 0,
    bigQueryScaleLayers: 62,
  },
};

export function isArch(name: string): name is ModelArch {
  return (SUPPORTED_ARCHS as readonly string[]).includes(name);
}

/** The sliding window of layer `layer` (0: it attends to every earlier position). */
export function layerWindow(c: { layerWindows: readonly number[] }, layer: number): number {
  return c.layerWindows[layer] ?? 0;
}

/** Whether layer `layer` rotates q and k (see ArchTraits.noRopeLayerStep). */
export function layerUsesRope(c: { noRopeLayerStep: number }, layer: number): boolean {
  return c.noRopeLayerStep === 0 || (layer + 1) % c.noRopeLayerStep !== 0;
}
