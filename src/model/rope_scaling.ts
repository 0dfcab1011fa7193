/**
 * RoPE scaling from GGUF metadata, as llama.cpp applies it (src/llama-context.cpp and ggml's
 * rope_yarn): every scaling type we support comes down to a per-pair divisor of the rotation
 * frequency (`freqFactors`, which also carries a `rope_freqs.weight` tensor) and one factor by
 * which q and k are multiplied after the rotation (`mscale`).
 */
import { HcError } from "../errors.ts";
import type { GgufFile } from "../gguf/reader.ts";
import { GgmlType } from "../gguf/types.ts";

export interface RopeScaling {
  /** Per-pair divisors of the frequency (headDim / 2), or null for none. */
  freqFactors: Float32Array | null;
  /** q and k are multiplied by this after RoPE (YaRN's magnitude correction; attn_factor). */
  mscale: number;
}

export const ROPE_SCALING_TYPES = ["none", "linear", "yarn", "llama3"] as const;

/**
 * The per-pair divisors llama.cpp's converter writes as `rope_freqs.weight` for rope_type
 * "llama3" (Llama 3.1+): long wavelengths are slowed by `factor`, short ones kept, and the band
 * between blended smoothly.
 */
export function llama3RopeFactors(
  headDim: number,
  ropeBase: number,
  factor: number,
  lowFreqFactor: number,
  highFreqFactor: number,
  originalContextLength: number,
): Float32Array {
  const out = new Float32Array(headDim / 2);
  const lowFreqWavelen = originalContextLength / lowFreqFactor;
  const highFreqWavelen = originalContextLength / highFreqFactor;
  for (let i = 0; i < out.length; i++) {
    const freq = Math.fround(1 / Math.fround(ropeBase ** Math.fround((2 * i) / headDim)));
    const wavelen = (2 * Math.PI) / freq;
    if (wavelen < highFreqWavelen) out[i] = 1;
    else if (wavelen > lowFreqWavelen) out[i] = factor;
    else {
      const smooth = (originalContextLength / wavelen - lowFreqFactor) /
        (highFreqFactor - lowFreqFactor);
      out[i] = 1 / ((1 - smooth) / factor + smooth);
    }
  }
  return out;
}

/**
 * YaRN (ggml's rope_yarn with ext_factor 1): pair i turns at freq_scale·θ (interpolated) below
 * the correction band [low, high], at θ (extrapolated) above it, and a linear ramp between;
 * since both are proportional to the position, that is a per-pair divisor. The band comes from
 * the wavelengths that fit beta_fast and beta_slow turns in the original context
 * (ggml_rope_yarn_corr_dims).
 */
export function yarnRopeFactors(
  headDim: number,
  ropeBase: number,
  factor: number,
  originalContextLength: number,
  betaFast = 32,
  betaSlow = 1,
): Float32Array {
  const corrDim = (turns: number) =>
    headDim * Math.log(originalContextLength / (turns * 2 * Math.PI)) / (2 * Math.log(ropeBase));
  const low = Math.max(0, Math.floor(corrDim(betaFast)));
  const high = Math.min(headDim - 1, Math.ceil(corrDim(betaSlow)));
  const freqScale = 1 / factor;
  const out = new Float32Array(headDim / 2);
  for (let i = 0; i < out.length; i++) {
    const y = (i - low) / Math.max(0.001, high - low);
    const mix = 1 - Math.min(1, Math.max(0, y));
    out[i] = 1 / (freqScale * (1 - mix) + mix);
  }
  return out;
}

function freqsTensor(file: GgufFile, headDim: number, name: string): Float32Array | null {
  const tensor = file.tensor(name);
  if (!tensor) return null;
  if (tensor.type !== GgmlType.F32 || tensor.elems !== headDim / 2) {
    throw new HcError(
      "E_MODEL_TENSOR",
      `${name} should be F32 with ${headDim / 2} elements (type ${tensor.type}, ` +
        `${tensor.elems} elements)`,
    );
  }
  const bytes = new Uint8Array(tensor.bytes);
  file.readIntoSync(tensor, bytes);
  return new Float32Array(bytes.buffer);
}

function times(a: Float32Array | null, b: Float32Array | null): Float32Array | null {
  if (!a || !b) return a ?? b;
  return a.map((x, i) => x * b[i]);
}

/** Reads `{arch}.rope.scaling.*` and `rope_freqs.weight`. */
export function ropeScalingFromGguf(
  file: GgufFile,
  arch: string,
  headDim: number,
  base: number,
  contextLength: number,
  opts: { yarnMetadata?: boolean } = {},
): RopeScaling {
  const key = (k: string) => file.getNumber(`${arch}.rope.scaling.${k}`);
  const origCtx = key("original_context_length") ?? contextLength;
  // Phi-3's long-context factors: llama.cpp takes the long set when the context exceeds the
  // original one. Its context is a session's; ours is the model's (llama.cpp's default n_ctx).
  const longShort = freqsTensor(
    file,
    headDim,
    contextLength > origCtx ? "rope_factors_long.weight" : "rope_factors_short.weight",
  );
  const tensor = freqsTensor(file, headDim, "rope_freqs.weight") ?? longShort;
  const type = file.getString(`${arch}.rope.scaling.type`) ??
    (file.metadata.has(`${arch}.rope.scale_linear`) ? "linear" : "none");
  const factor = key("factor") ?? file.getNumber(`${arch}.rope.scale_linear`) ?? 1;
  // llama.cpp multiplies q and k by attn_factor under every scaling type.
  const attnFactor = key("attn_factor") ?? 1;
  if (!(factor > 0) || !Number.isFinite(factor) || !(attnFactor > 0)) {
    throw new HcError(
      "E_MODEL_FORMAT",
      `RoPE scaling factor ${factor} / attn_factor ${attnFactor} must be positive`,
    );
  }
  switch (type) {
    case "none":
      return { freqFactors: tensor, mscale: attnFactor };
    case "linear":
      // Linear scaling divides every position by `factor`, i.e. every frequency.
      return {
        freqFactors: factor === 1
          ? tensor
          : times(tensor, new Float32Array(headDim / 2).fill(factor)),
        mscale: attnFactor,
      };
    case "yarn": {
      const meta = opts.yarnMetadata ?? false;
      const betaFast = (meta ? key("yarn_beta_fast") : undefined) ?? 32;
      const betaSlow = (meta ? key("yarn_beta_slow") : undefined) ?? 1;
      const logMul = (meta ? key("yarn_log_multiplier") : undefined) ?? 0;
      const m = (mscale: number) => 0.1 * mscale * Math.log(factor) + 1;
      return {
        freqFactors: times(
          tensor,
          yarnRopeFactors(headDim, base, factor, origCtx, betaFast, betaSlow),
        ),
        // What is left of llama.cpp's YaRN magnitude factors (llama-context.cpp cancels its
        // own get_mscale against ggml_rope's 1 + 0.1 ln factor): that factor for plain YaRN,
        // the ratio get_mscale(1) / get_mscale(log_mul) with a log multiplier.
        mscale: attnFactor * (factor <= 1 ? 1 : logMul !== 0 ? m(1) / m(logMul) : m(1)),
      };
    }
    case "llama3":
      // The converter writes llama3's divisors as rope_freqs.weight; the metadata is ours.
      return {
        freqFactors: tensor ?? llama3RopeFactors(
          headDim,
          base,
          factor,
          key("low_freq_factor") ?? 1,
          key("high_freq_factor") ?? 4,
          key("original_context_length") ?? 8192,
        ),
        mscale: attnFactor,
      };
    default:
      throw new HcError(
        "E_MODEL_ARCH",
        `RoPE scaling type "${type}" (${arch}.rope.scaling.type) is not supported; ` +
          `supported: ${ROPE_SCALING_TYPES.join(", ")}`,
      );
  }
}
