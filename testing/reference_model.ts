/**
 * A plain, readable TypeScript forward pass of the Llama / Qwen2 decoder, in f32 storage with
 * f64 accumulation. Tests use it as ground truth for the device kernels and the whole model; the
 * building blocks (rmsNorm, matVec, applyRope, attention, swiglu) are exported for kernel tests.
 */
import { HcError } from "../src/errors.ts";
import { GgmlType } from "../src/gguf/types.ts";
import { type ModelConfig, ropeInverseFrequencies, type RopePairing } from "../src/model/config.ts";
import { dequantize, f16ToF32, f32ToF16 } from "../src/model/quant/mod.ts";
import { layerUsesRope } from "../src/model/arch.ts";
import { type ModelSource, readTensorBytes } from "../src/model/source.ts";
import { mulberry32 } from "./rng.ts";
import {
  type ActivationRounding,
  activationRoundingOf,
  blockMins,
  q8_1Corrections,
  roundActivations,
} from "./activation_rounding.ts";

/** out = x / sqrt(mean(x^2) + eps) * weight. */
export function rmsNorm(
  x: Float32Array,
  weight: Float32Array,
  eps: number,
  out: Float32Array = new Float32Array(x.length),
): Float32Array {
  let ss = 0;
  for (let i = 0; i < x.length; i++) ss += x[i] * x[i];
  const scale = 1 / Math.sqrt(ss / x.length + eps);
  for (let i = 0; i < x.length; i++) out[i] = weight[i] * (x[i] * scale);
  return out;
}

/**
 * out[o] = sum_i w[o * inDim + i] * x[i]: `w` in GGUF layout (dims [inDim, outDim], one row of
 * inDim weights per output).
 */
export function matVec(
  w: Float32Array,
  x: Float32Array,
  inDim: number,
  outDim: number,
  out: Float32Array = new Float32Array(outDim),
): Float32Array {
  for (let o = 0; o < outDim; o++) {
    const row = o * inDim;
    let acc = 0;
    for (let i = 0; i < inDim; i++) acc += w[row + i] * x[i];
    out[o] = acc;
  }
  return out;
}

/**
 * Rotates `nHeads` consecutive heads of `vec` in place for position `pos`. Pair i of a head is
 * (2i, 2i+1) for "adjacent" and (i, i + headDim/2) for "halves".
 */
export function applyRope(
  vec: Float32Array,
  pos: number,
  nHeads: number,
  headDim: number,
  invFreq: Float64Array,
  pairing: RopePairing,
): void {
  const half = headDim / 2;
  for (let h = 0; h < nHeads; h++) {
    const base = h * headDim;
    for (let i = 0; i < half; i++) {
      const theta = pos * invFreq[i];
      const cos = Math.cos(theta);
      const sin = Math.sin(theta);
      const a = pairing === "adjacent" ? base + 2 * i : base + i;
      const b = pairing === "adjacent" ? a + 1 : a + half;
      const x0 = vec[a];
      const x1 = vec[b];
      vec[a] = x0 * cos - x1 * sin;
      vec[b] = x0 * sin + x1 * cos;
    }
  }
}

export function softmaxInPlace(x: Float32Array | Float64Array, n: number = x.length): void {
  let max = -Infinity;
  for (let i = 0; i < n; i++) if (x[i] > max) max = x[i];
  let sum = 0;
  for (let i = 0; i < n; i++) {
    x[i] = Math.exp(x[i] - max);
    sum += x[i];
  }
  for (let i = 0; i < n; i++) x[i] /= sum;
}

/**
 * Causal attention of one query position over `nPositions` cached positions, all heads, with
 * grouped-query sharing (query head h reads KV head floor(h / (nHeads / nKvHeads))). `keys` and
 * `values` are laid out [position][kvHead][headDim].
 */
export function attention(
  q: Float32Array,
  keys: Float32Array,
  values: Float32Array,
  nPositions: number,
  nHeads: number,
  nKvHeads: number,
  headDim: number,
  out: Float32Array = new Float32Array(nHeads * headDim),
): Float32Array {
  const group = nHeads / nKvHeads;
  const kvStride = nKvHeads * headDim;
  const scale = 1 / Math.sqrt(headDim);
  const scores = new Float64Array(nPositions);
  for (let h = 0; h < nHeads; h++) {
    const qOff = h * headDim;
    const kvOff = Math.floor(h / group) * headDim;
    for (let t = 0; t < nPositions; t++) {
      const kOff = t * kvStride + kvOff;
      let dot = 0;
      for (let i = 0; i < headDim; i++) dot += q[qOff + i] * keys[kOff + i];
      scores[t] = dot * scale;
    }
    softmaxInPlace(scores, nPositions);
    for (let i = 0; i < headDim; i++) {
      let acc = 0;
      for (let t = 0; t < nPositions; t++) acc += scores[t] * values[t * kvStride + kvOff + i];
      out[qOff + i] = acc;
    }
  }
  return out;
}

/** out = silu(gate) * up. */
export function swiglu(
  gate: Float32Array,
  up: Float32Array,
  out: Float32Array = new Float32Array(gate.length),
): Float32Array {
  for (let i = 0; i < gate.length; i++) {
    const g = gate[i];
    out[i] = (g / (1 + Math.exp(-g))) * up[i];
  }
  return out;
}

/** A tensor's values as f32, whatever its stored type. */
export async function loadTensorF32(source: ModelSource, name: string): Promise<Float32Array> {
  const t = source.tensors.get(name);
  if (!t) throw new HcError("E_MODEL_TENSOR", `model lacks tensor ${name}`);
  const bytes = await readTensorBytes(t);
  if (t.type === GgmlType.F32) return new Float32Array(bytes.buffer, bytes.byteOffset, t.elems);
  return dequantize(t.type, bytes, t.elems);
}

interface LayerWeights {
  attnNorm: Float32Array;
  wq: Float32Array;
  wk: Float32Array;
  wv: Float32Array;
  bq: Float32Array | null;
  bk: Float32Array | null;
  bv: Float32Array | null;
  qNorm: Float32Array | null;
  kNorm: Float32Array | null;
  wo: Float32Array;
  ffnNorm: Float32Array;
  gate: Float32Array;
  up: Float32Array;
  down: Float32Array;
}

function addInPlace(dst: Float32Array, src: Float32Array | null): void {
  if (!src) return;
  for (let i = 0; i < dst.length; i++) dst[i] += src[i];
}

/** RMSNorm of each head's row on its own (Qwen3's QK-norm), in place. */
function headNorm(x: Float32Array, w: Float32Array, heads: number, D: number, eps: number) {
  for (let h = 0; h < heads; h++) {
    const row = x.subarray(h * D, (h + 1) * D);
    rmsNorm(row, w, eps, row);
  }
}

export interface ForwardOptions {
  /** Return the logits of every token (tokens.length * vocabSize), not just the last. */
  allLogits?: boolean;
}

export interface ReferenceOptions {
  /** Round stored K/V to f16, as the device cache (and llama.cpp's) stores them. */
  kvF16?: boolean;
  /**
   * Round each product's input as llama.cpp's CPU backend does for the weight's type. The
   * object form sets the 8-bit levels (ggml: 127) and whether Q8_1's stored block sum is used
   * (ggml: yes): tests hold deliberately wrong roundings against llama.cpp with it.
   */
  roundActivations?: boolean | { levels: number; q8_1Sum: boolean };
  /**
   * Multiply every element of each product's input by 1 + relative * u, u uniform in
   * [-0.5, 0.5) from `seed`: stands for another engine's f32 summation order (a few ulps), to
   * measure how far such differences carry through the activation rounding.
   */
  inputNoise?: { relative: number; seed: number };
}

export class ReferenceModel {
  readonly config: ModelConfig;
  readonly #embd: Float32Array;
  readonly #layers: LayerWeights[];
  readonly #outNorm: Float32Array;
  readonly #output: Float32Array;
  readonly #invFreq: Float64Array;
  #keys: Float32Array[];
  #values: Float32Array[];
  #length = 0;
  /** Round stored K/V to f16, as the device cache stores them. */
  #kvF16 = false;
  /** Each matrix's input rounding (activationRoundingOf its type), when the model rounds. */
  #rounding: WeakMap<Float32Array, ActivationRounding> | null = null;
  #levels = 127;
  #q8_1Sum = true;
  /** Q4_1 / Q5_1 matrices' block mins (for Q8_1's stored sum, see q8_1Corrections). */
  #mins = new WeakMap<Float32Array, Float32Array>();
  /** Relative noise on every product's input (see ReferenceOptions.inputNoise). */
  #noise: ((x: Float32Array) => Float32Array) | null = null;

  private constructor(
    config: ModelConfig,
    embd: Float32Array,
    layers: LayerWeights[],
    outNorm: Float32Array,
    output: Float32Array,
  ) {
    this.config = config;
    this.#embd = embd;
    this.#layers = layers;
    this.#outNorm = outNorm;
    this.#output = output;
    this.#invFreq = ropeInverseFrequencies(config.headDim, config.ropeBase, config.ropeFreqFactors);
    this.#keys = layers.map(() => new Float32Array(0));
    this.#values = layers.map(() => new Float32Array(0));
  }

  /** Reads every weight of the source into f32 arrays. */
  static async load(
    source: ModelSource,
    opts: ReferenceOptions = {},
  ): Promise<ReferenceModel> {
    const c = source.config;
    const rounding = new WeakMap<Float32Array, ActivationRounding>();
    const mins = new WeakMap<Float32Array, Float32Array>();
    const get = async (name: string) => {
      const w = await loadTensorF32(source, name);
      const t = source.tensors.get(name)!;
      rounding.set(w, activationRoundingOf(t.type));
      // Only a rounding model reads the mins (a second read of the tensor's bytes).
      if (opts.roundActivations && (t.type === GgmlType.Q4_1 || t.type === GgmlType.Q5_1)) {
        mins.set(w, blockMins(t.type === GgmlType.Q4_1 ? 20 : 24, await readTensorBytes(t)));
      }
      return w;
    };
    const layers: LayerWeights[] = [];
    const qDim = c.nHeads * c.headDim;
    const kvDim = c.nKvHeads * c.headDim;
    for (let l = 0; l < c.nLayers; l++) {
      const p = `blk.${l}.`;
      // Fused tensors (Phi-3) hold their parts as consecutive rows of `cols` values.
      const qkv = c.fusedQkv ? await get(p + "attn_qkv.weight") : null;
      const gateUp = c.fusedGateUp ? await get(p + "ffn_up.weight") : null;
      const rows = (w: Float32Array, cols: number, r0: number, n: number) => {
        const part = w.slice(r0 * cols, (r0 + n) * cols);
        rounding.set(part, rounding.get(w)!);
        const m = mins.get(w);
        if (m) mins.set(part, m.slice(r0 * cols / 32, (r0 + n) * cols / 32));
        return part;
      };
      layers.push({
        attnNorm: await get(p + "attn_norm.weight"),
        wq: qkv ? rows(qkv, c.dim, 0, qDim) : await get(p + "attn_q.weight"),
        wk: qkv ? rows(qkv, c.dim, qDim, kvDim) : await get(p + "attn_k.weight"),
        wv: qkv ? rows(qkv, c.dim, qDim + kvDim, kvDim) : await get(p + "attn_v.weight"),
        bq: c.qkvBias ? await get(p + "attn_q.bias") : null,
        bk: c.qkvBias ? await get(p + "attn_k.bias") : null,
        bv: c.qkvBias ? await get(p + "attn_v.bias") : null,
        qNorm: c.qkNorm ? await get(p + "attn_q_norm.weight") : null,
        kNorm: c.qkNorm ? await get(p + "attn_k_norm.weight") : null,
        wo: await get(p + "attn_output.weight"),
        ffnNorm: await get(p + "ffn_norm.weight"),
        gate: gateUp ? rows(gateUp, c.dim, 0, c.ffnDim) : await get(p + "ffn_gate.weight"),
        up: gateUp ? rows(gateUp, c.dim, c.ffnDim, c.ffnDim) : await get(p + "ffn_up.weight"),
        down: await get(p + "ffn_down.weight"),
      });
    }
    const embd = await get("token_embd.weight");
    const output = c.tiedOutput ? embd : await get("output.weight");
    const m = new ReferenceModel(c, embd, layers, await get("output_norm.weight"), output);
    m.#kvF16 = opts.kvF16 ?? false;
    if (opts.roundActivations) m.#rounding = rounding;
    if (typeof opts.roundActivations === "object") {
      m.#levels = opts.roundActivations.levels;
      m.#q8_1Sum = opts.roundActivations.q8_1Sum;
    }
    m.#mins = mins;
    if (opts.inputNoise) {
      const r = mulberry32(opts.inputNoise.seed);
      const e = opts.inputNoise.relative;
      m.#noise = (x) => x.map((v) => v * (1 + e * (r() - 0.5)));
    }
    return m;
  }

  /** Positions currently in the KV cache. */
  get length(): number {
    return this.#length;
  }

  reset(): void {
    this.#length = 0;
  }

  /** Post-RoPE keys of a layer, [position][kvHead][headDim] for positions 0..length-1. */
  keys(layer: number): Float32Array {
    return this.#keys[layer].subarray(0, this.#length * this.#kvDim);
  }

  /** Values of a layer, laid out like keys(). */
  values(layer: number): Float32Array {
    return this.#values[layer].subarray(0, this.#length * this.#kvDim);
  }

  get #kvDim(): number {
    return this.config.nKvHeads * this.config.headDim;
  }

  /** The logits Session.teacherForce reports from position 0: after the prompt, then after
   * each forced token but the last. */
  teacherForced(prompt: number[], forced: number[]): Float32Array[] {
    const out = [this.forward(prompt, 0)];
    for (let i = 0; i < forced.length - 1; i++) {
      out.push(this.forward([forced[i]], prompt.length + i));
    }
    return out;
  }

  /**
   * Runs `tokens` at positions startPos.. and returns the logits of the last one (or of all).
   * startPos may rewind into the cache (later positions are dropped) but not skip past it.
   */
  forward(tokens: number[], startPos: number, opts: ForwardOptions = {}): Float32Array {
    const c = this.config;
    if (!Number.isInteger(startPos) || startPos < 0 || startPos > this.#length) {
      throw new RangeError(`startPos ${startPos} must be within 0..${this.#length}`);
    }
    if (startPos + tokens.length > c.contextLength) {
      throw new HcError(
        "E_CONTEXT_FULL",
        `positions up to ${startPos + tokens.length} exceed the context of ${c.contextLength}`,
      );
    }
    for (const t of tokens) {
      if (!Number.isInteger(t) || t < 0 || t >= c.vocabSize) {
        throw new RangeError(`token id ${t} is outside the vocabulary (0..${c.vocabSize - 1})`);
      }
    }
    this.#length = startPos;
    this.#reserve(startPos + tokens.length);
    const all = opts.allLogits ? new Float32Array(tokens.length * c.vocabSize) : null;
    let last: Float32Array = new Float32Array(0);
    tokens.forEach((token, i) => {
      last = this.#step(token, startPos + i);
      all?.set(last, i * c.vocabSize);
    });
    return all ?? last;
  }

  #reserve(positions: number): void {
    const need = positions * this.#kvDim;
    if (this.#keys[0].length >= need) return;
    const cap = Math.min(
      Math.max(need, 2 * this.#keys[0].length),
      this.config.contextLength * this.#kvDim,
    );
    const grow = (a: Float32Array) => {
      const b = new Float32Array(cap);
      b.set(a.subarray(0, this.#length * this.#kvDim));
      return b;
    };
    this.#keys = this.#keys.map(grow);
    this.#values = this.#values.map(grow);
  }

  /**
   * matVec with x rounded as llama.cpp's CPU backend rounds the input of a product with `w`'s
   * type (when the model rounds; testing/activation_rounding.ts), after the optional noise.
   */
  #mv(w: Float32Array, x: Float32Array, inDim: number, outDim: number): Float32Array {
    const r = this.#rounding?.get(w) ?? "none";
    if (this.#noise) x = this.#noise(x);
    const y = matVec(
      w,
      r === "none" ? x : roundActivations(r, x, undefined, this.#levels),
      inDim,
      outDim,
    );
    const mins = this.#mins.get(w);
    if (r === "q8_1" && mins && this.#q8_1Sum) {
      const corr = q8_1Corrections(x, this.#levels);
      const blocks = inDim / 32;
      for (let o = 0; o < outDim; o++) {
        let acc = 0;
        for (let b = 0; b < blocks; b++) acc += mins[o * blocks + b] * corr[b];
        y[o] += acc;
      }
    }
    return y;
  }

  #step(token: number, pos: number): Float32Array {
    const c = this.config;
    const qDim = c.nHeads * c.headDim;
    const kvDim = this.#kvDim;
    const x = this.#embd.slice(token * c.dim, (token + 1) * c.dim);
    const xb = new Float32Array(c.dim);
    for (let l = 0; l < c.nLayers; l++) {
      const w = this.#layers[l];
      rmsNorm(x, w.attnNorm, c.rmsEps, xb);
      const q = this.#mv(w.wq, xb, c.dim, qDim);
      const k = this.#mv(w.wk, xb, c.dim, kvDim);
      const v = this.#mv(w.wv, xb, c.dim, kvDim);
      addInPlace(q, w.bq);
      addInPlace(k, w.bk);
      addInPlace(v, w.bv);
      if (w.qNorm && w.kNorm) {
        headNorm(q, w.qNorm, c.nHeads, c.headDim, c.rmsEps);
        headNorm(k, w.kNorm, c.nKvHeads, c.headDim, c.rmsEps);
      }
      if (layerUsesRope(c, l)) {
        applyRope(q, pos, c.nHeads, c.headDim, this.#invFreq, c.ropePairing);
        applyRope(k, pos, c.nKvHeads, c.headDim, this.#invFreq, c.ropePairing);
      }
      if (c.ropeMscale !== 1 && layerUsesRope(c, l)) {
        for (let i = 0; i < q.length; i++) q[i] *= c.ropeMscale;
        for (let i = 0; i < k.length; i++) k[i] *= c.ropeMscale;
      }
      if (this.#kvF16) {
        for (let i = 0; i < kvDim; i++) {
          k[i] = f16ToF32(f32ToF16(k[i]));
          v[i] = f16ToF32(f32ToF16(v[i]));
        }
      }
      this.#keys[l].set(k, pos * kvDim);
      this.#values[l].set(v, pos * kvDim);
      const att = attention(
        q,
        this.#keys[l],
        this.#values[l],
        pos + 1,
        c.nHeads,
        c.nKvHeads,
        c.headDim,
      );
      addInPlace(x, this.#mv(w.wo, att, qDim, c.dim));
      rmsNorm(x, w.ffnNorm, c.rmsEps, xb);
      const h = swiglu(this.#mv(w.gate, xb, c.dim, c.ffnDim), this.#mv(w.up, xb, c.dim, c.ffnDim));
      addInPlace(x, this.#mv(w.down, h, c.ffnDim, c.dim));
    }
    this.#length = pos + 1;
    rmsNorm(x, this.#outNorm, c.rmsEps, xb);
    return this.#mv(this.#output, xb, c.dim, c.vocabSize);
  }
}
