/**
 * The Llama-family forward pass on a Vulkan device: weights uploaded once per model, the
 * kernels, the shared activations, and the recording of a forward step. A session's side (its
 * recorded decode step, replayed once per token with nothing allocated and only the sampled token
 * or the logits read back) lives in llama_state.ts; the KV caches belong to the cache policy.
 */
export * from "./forward.ts";
import { recordLengthsUploads } from "../cache/kv_layer.ts";
import { HcError } from "../errors.ts";
import { GgmlType } from "../gguf/types.ts";
import { Axpby, RmsNorm, RopeTable, Swiglu } from "../kernels/elementwise.ts";
import { DecodeAttention, PrefillAttention } from "../kernels/attention.ts";
import { GetRows } from "../kernels/get_rows.ts";
import { KvAppend, RopeAppend } from "../kernels/kv.ts";
import { MatMul, preferMatMul } from "../kernels/matmul.ts";
import { MatVec, type MatVecRecord } from "../kernels/matvec.ts";
import {
  lanesLayoutFits,
  lanesUploadFill,
  layoutRowBytes,
  splitLayoutFits,
  splitUploadFill,
  type WeightLayout,
} from "../kernels/matvec_layout.ts";
import { Argmax } from "../kernels/select.ts";
import type { Binding, Buffer, CommandList, Device } from "../vk/mod.ts";
import { layerUsesRope, layerWindow } from "./arch.ts";
import { type ModelConfig, ropeInverseFrequencies } from "./config.ts";
import {
  ATTENTION_FLOPS_PER_SUBMISSION,
  attentionFlopsPerToken,
  type AttentionSplit,
  type ForwardState,
  MAX_BATCH_TOKENS,
  stepLayout,
} from "./forward.ts";
import { type ForwardIo, LlamaState } from "./llama_state.ts";
import { dequantize } from "./quant/mod.ts";
import type { ModelSource, ModelTensor } from "./source.ts";

type FusedNorm = NonNullable<MatVecRecord["norm"]>;

/** The decode-step fusions a product may take (MatVecRecord's norm and glu; with glu, `rows`
 * is the output count). */
interface MatVecFusions {
  norm?: FusedNorm;
  glu?: MatVecRecord["glu"];
  rows?: number;
}

interface Weight {
  buffer: Buffer;
  type: number;
  /** Byte order on the device (src/kernels/matvec_layout.ts). */
  layout: WeightLayout;
  /** Input width (GGUF dims[0]). */
  cols: number;
  /** Output width (GGUF dims[1]). */
  rows: number;
}

/** Part of a buffer: what the kernels after the q, k and v projections read. */
type View = { buffer: Buffer; offset: number };

/** A weight whose rows land at output row `row0` of a wider per-token row. */
interface StackedRows {
  weight: Weight;
  row0: number;
}

interface LayerWeights {
  attnNorm: Buffer;
  ffnNorm: Buffer;
  /** The attention's input projections, writing each token's q (rows [0, qDim)), k (then
   * kvDim rows) and v (kvDim rows) into its Activations.qkv row: consecutive ones of one type
   * stacked into one weight (one dispatch; Phi-3's attn_qkv is all three already). */
  qkvIn: StackedRows[];
  o: Weight;
  /** The FFN's input projections, writing gate values to rows [0, ffnDim) and up values to
   * rows [ffnDim, 2·ffnDim) of each token's Activations.gu row: one weight of both stacked
   * where their types match (one dispatch), else one weight each at its row offset. */
  ffnIn: StackedRows[];
  down: Weight;
  qBias: Buffer | null;
  kBias: Buffer | null;
  vBias: Buffer | null;
  /** Per-head RMSNorm weights of q and k (headDim each), for config.qkNorm. */
  qNorm: Buffer | null;
  kNorm: Buffer | null;
  /** Gemma's norms of the attention and FFN outputs, before their residual adds. */
  attnPostNorm: Buffer | null;
  ffnPostNorm: Buffer | null;
}

async function hashTensors(tensors: ModelTensor[]): Promise<string> {
  const parts: Uint8Array[] = [];
  for (const t of tensors) {
    const b = new Uint8Array(t.bytes);
    await t.read(b);
    parts.push(b);
  }
  const all = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
  let at = 0;
  for (const p of parts) {
    all.set(p, at);
    at += p.byteLength;
  }
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", all));
  return Array.from(digest, (x) => x.toString(16).padStart(2, "0")).join("");
}

/** The kernels one model needs, created once. */
class Kernels implements Disposable {
  readonly matvec: Map<number, MatVec> = new Map();
  readonly getRows: GetRows;
  readonly rmsNorm: RmsNorm;
  readonly ropeAppend: RopeAppend;
  readonly ropeTable: RopeTable;
  /** The windowed layers' own RoPE table (config.localRopeBase), or null. */
  readonly ropeTableLocal: RopeTable | null;
  readonly swiglu: Swiglu;
  readonly axpby: Axpby;
  readonly kvAppend: KvAppend;
  readonly decode: DecodeAttention;
  readonly prefill: PrefillAttention;
  readonly argmax: Argmax;
  readonly #owned: Disposable[] = [];
  readonly #device: Device;
  readonly #matmul = new Map<number, MatMul>();

  constructor(device: Device, c: ModelConfig, weightTypes: Set<number>, embdType: number) {
    this.#device = device;
    const own = <T extends Disposable>(x: T): T => {
      this.#owned.push(x);
      return x;
    };
    try {
      for (const t of weightTypes) this.matvec.set(t, own(new MatVec(device, t)));
      this.getRows = own(new GetRows(device, embdType));
      this.rmsNorm = own(new RmsNorm(device));
      this.ropeAppend = own(new RopeAppend(device, { headDim: c.headDim }));
      this.ropeTable = own(
        RopeTable.fromInverseFrequencies(
          device,
          ropeInverseFrequencies(c.headDim, c.ropeBase, c.ropeFreqFactors),
        ),
      );
      this.ropeTableLocal = c.localRopeBase === null ? null : own(
        RopeTable.fromInverseFrequencies(
          device,
          ropeInverseFrequencies(c.headDim, c.localRopeBase),
        ),
      );
      this.swiglu = own(new Swiglu(device));
      this.axpby = own(new Axpby(device));
      this.kvAppend = own(new KvAppend(device, { headDim: c.headDim }));
      const groupSize = c.nHeads / c.nKvHeads;
      const softcap = c.attnSoftcap > 0;
      this.decode = own(new DecodeAttention(device, { headDim: c.headDim, groupSize, softcap }));
      this.prefill = own(new PrefillAttention(device, { headDim: c.headDim, groupSize, softcap }));
      this.argmax = own(new Argmax(device));
    } catch (e) {
      this[Symbol.dispose]();
      throw e;
    }
  }

  /** The prompt matmul of a weight type, created on first use (its pipeline compiles then). */
  matmul(type: number): MatMul {
    let mm = this.#matmul.get(type);
    if (!mm) {
      mm = new MatMul(this.#device, type);
      this.#matmul.set(type, mm);
      this.#owned.push(mm);
    }
    return mm;
  }

  [Symbol.dispose](): void {
    for (const x of this.#owned.splice(0).reverse()) x[Symbol.dispose]();
    this.#matmul.clear();
  }
}

/**
 * Which kernel runs a prompt chunk's projections: "matmul" (the tiled kernel, src/kernels/
 * matmul.ts) or "matvec" (8-column matrix-vector kernels); "auto", the default, asks
 * preferMatMul(device, weight type). Weights uploaded in matvec's "lanes" layout (quantized
 * weights under the CPU variant set, src/kernels/matvec_layout.ts) always take matvec.
 */
export type PromptKernel = "auto" | "matmul" | "matvec";

/** Activations shared by every session of a model (device steps are serialised). */
class Activations implements Disposable {
  readonly x: Buffer;
  readonly xb: Buffer;
  readonly xLast: Buffer;
  /** Per token nHeads·headDim + 2·nKvHeads·headDim floats: the q, k and v projections (see
   * LayerWeights.qkvIn); at one token the kernels after them read q, k and v in place, for a
   * prompt chunk they are copied apart into q, k and v. */
  readonly qkv: Buffer;
  readonly q: Buffer;
  readonly k: Buffer;
  readonly v: Buffer;
  readonly att: Buffer;
  /** Per token 2·ffnDim floats: the gate and up projections, then SwiGLU's output in place of
   * the gate half (the down projection reads it with a stride of 2·ffnDim). */
  readonly gu: Buffer;
  readonly logits: Buffer;
  readonly #all: Buffer[] = [];

  constructor(device: Device, c: ModelConfig, batch: number) {
    const f32 = (n: number) => {
      const b = device.buffer(Math.max(16, n * 4));
      this.#all.push(b);
      return b;
    };
    try {
      this.x = f32(batch * c.dim);
      this.xb = f32(batch * c.dim);
      this.xLast = f32(c.dim);
      this.qkv = f32(batch * (c.nHeads + 2 * c.nKvHeads) * c.headDim);
      this.q = f32(batch * c.nHeads * c.headDim);
      this.k = f32(batch * c.nKvHeads * c.headDim);
      this.v = f32(batch * c.nKvHeads * c.headDim);
      this.att = f32(batch * c.nHeads * c.headDim);
      this.gu = f32(batch * 2 * c.ffnDim);
      this.logits = f32(c.vocabSize);
    } catch (e) {
      this[Symbol.dispose]();
      throw e;
    }
  }

  [Symbol.dispose](): void {
    for (const b of this.#all.splice(0)) b.dispose();
  }
}

export class LlamaModel implements Disposable {
  readonly device: Device;
  readonly config: ModelConfig;
  readonly parameters: number;
  readonly weightBytes: number;
  /** SHA-256 (hex) of layer 0's Q and K projection bytes: ties head profiles to weights. */
  readonly attnHash: string;
  readonly kernels: Kernels;
  readonly act: Activations;
  readonly #embd: Weight;
  readonly #output: Weight;
  readonly #outputNorm: Buffer;
  readonly layers: LayerWeights[];
  readonly #buffers: Buffer[];
  #disposed = false;
  /** The prompt path's projection kernel (see PromptKernel); benchmarks switch it to compare. */
  promptKernel: PromptKernel;
  /** The most prefill-attention work (q.k and p.v multiply-adds x 2) one submission of a
   * layer-by-layer prefill carries: above it a layer's attention goes in query blocks, each
   * ending a submission (see AttentionSplit). Tests lower it. */
  attentionFlopsPerSubmission = ATTENTION_FLOPS_PER_SUBMISSION;

  private constructor(init: {
    device: Device;
    config: ModelConfig;
    parameters: number;
    weightBytes: number;
    attnHash: string;
    kernels: Kernels;
    act: Activations;
    embd: Weight;
    output: Weight;
    outputNorm: Buffer;
    layers: LayerWeights[];
    buffers: Buffer[];
  }) {
    this.device = init.device;
    this.config = init.config;
    this.parameters = init.parameters;
    this.weightBytes = init.weightBytes;
    this.attnHash = init.attnHash;
    this.kernels = init.kernels;
    this.act = init.act;
    this.#embd = init.embd;
    this.#output = init.output;
    this.#outputNorm = init.outputNorm;
    this.layers = init.layers;
    this.#buffers = init.buffers;
    this.promptKernel = "auto";
  }

  /** Uploads every weight of `source` to `device` (streamed from the file by range). */
  static async load(
    device: Device,
    source: ModelSource,
    opts: { onProgress?: (doneBytes: number, totalBytes: number) => void } = {},
  ): Promise<LlamaModel> {
    const c = source.config;
    const buffers: Buffer[] = [];
    const totalBytes = [...source.tensors.values()].reduce((s, t) => s + t.bytes, 0);
    let doneBytes = 0;
    let parameters = 0;
    const tensor = (name: string): ModelTensor => {
      const t = source.tensors.get(name);
      if (!t) throw new HcError("E_MODEL_TENSOR", `model lacks tensor ${name}`);
      return t;
    };
    const upload = async (t: ModelTensor): Promise<Buffer> => {
      const b = device.buffer(t.bytes);
      buffers.push(b);
      await device.uploadFrom(b, t.bytes, (chunk: Uint8Array, off: number) => t.read(chunk, off));
      doneBytes += t.bytes;
      parameters += t.elems;
      opts.onProgress?.(doneBytes, totalBytes);
      return b;
    };
    // Weights that only the products read go in the layout their kernels read fastest on this
    // device: the CPU matvec path's lanes, the GPU kernels' split Q8_0/Q6_K (never the
    // embedding table: get_rows reads it in GGUF order).
    const layoutOf = (type: number, rows: number, cols: number): WeightLayout =>
      lanesLayoutFits(device, type, rows, cols)
        ? "lanes"
        : splitLayoutFits(device, type)
        ? "split"
        : "ggml";
    // One weight from row ranges of matrices of one type and width, in order: a whole tensor or
    // several stacked (q, k and v; gate and up). Rows are whole blocks in every type, so a row
    // range is a byte range.
    type Rows = { t: ModelTensor; row0: number; n: number };
    const weightOf = async (parts: Rows[], matvecOnly = true): Promise<Weight> => {
      const { type, dims } = parts[0].t;
      const cols = dims[0];
      const rows = parts.reduce((sum, p) => sum + p.n, 0);
      const rowBytes = parts[0].t.bytes / (dims[1] ?? 1);
      const layout = matvecOnly ? layoutOf(type, rows, cols) : "ggml";
      const bytes = rows * layoutRowBytes(type, cols, layout);
      const buffer = device.buffer(bytes);
      buffers.push(buffer);
      // Bytes [off, off + chunk) of the weight; a chunk may span parts.
      const read = async (chunk: Uint8Array, off: number) => {
        let base = 0;
        for (const p of parts) {
          const end = base + p.n * rowBytes;
          const from = Math.max(off, base), to = Math.min(off + chunk.byteLength, end);
          if (from < to) {
            await p.t.read(chunk.subarray(from - off, to - off), p.row0 * rowBytes + from - base);
          }
          base = end;
        }
      };
      await device.uploadFrom(
        buffer,
        bytes,
        layout === "lanes"
          ? lanesUploadFill(type, rows, cols, read)
          : layout === "split"
          ? splitUploadFill(type, cols, read)
          : read,
      );
      doneBytes += rows * rowBytes; // the file's bytes (the split layout pads rows)
      parameters += rows * cols;
      opts.onProgress?.(doneBytes, totalBytes);
      return { buffer, type, layout, cols, rows };
    };
    const whole = (name: string): Rows => {
      const t = tensor(name);
      return { t, row0: 0, n: t.dims[1] ?? 1 };
    };
    const matrix = (name: string, matvecOnly = true) => weightOf([whole(name)], matvecOnly);
    // Matrices whose outputs are consecutive rows (q, k, v; gate, up): runs of one type and
    // width stacked into one weight each (one product per run), each writing from its row.
    const stacked = async (names: string[]): Promise<StackedRows[]> => {
      const out: StackedRows[] = [];
      let run: Rows[] = [];
      let row0 = 0, next = 0;
      const flush = async () => {
        if (run.length) out.push({ weight: await weightOf(run), row0 });
        row0 = next;
        run = [];
      };
      for (const name of names) {
        const part = whole(name);
        const head = run[0]?.t;
        if (head && (head.type !== part.t.type || head.dims[0] !== part.t.dims[0])) await flush();
        run.push(part);
        next += part.n;
      }
      await flush();
      return out;
    };
    // Norms and biases are tiny: always f32 on the device whatever the file stores.
    const vector = async (name: string): Promise<Buffer> => {
      const t = tensor(name);
      if (t.type === GgmlType.F32) return await upload(t);
      const raw = new Uint8Array(t.bytes);
      await t.read(raw);
      const f = dequantize(t.type, raw, t.elems);
      const b = device.buffer(f.byteLength);
      buffers.push(b);
      device.upload(b, f);
      doneBytes += t.bytes;
      parameters += t.elems;
      return b;
    };
    try {
      const embd = await matrix("token_embd.weight", false);
      const layers: LayerWeights[] = [];
      for (let l = 0; l < c.nLayers; l++) {
        const p = `blk.${l}.`;
        layers.push({
          attnNorm: await vector(p + "attn_norm.weight"),
          ffnNorm: await vector(p + "ffn_norm.weight"),
          qkvIn: c.fusedQkv
            ? [{ weight: await matrix(p + "attn_qkv.weight"), row0: 0 }]
            : await stacked(["attn_q", "attn_k", "attn_v"].map((n) => `${p}${n}.weight`)),
          o: await matrix(p + "attn_output.weight"),
          // Phi-3's ffn_up already holds gate and up stacked.
          ffnIn: c.fusedGateUp
            ? [{ weight: await matrix(p + "ffn_up.weight"), row0: 0 }]
            : await stacked([p + "ffn_gate.weight", p + "ffn_up.weight"]),
          down: await matrix(p + "ffn_down.weight"),
          qBias: c.qkvBias ? await vector(p + "attn_q.bias") : null,
          kBias: c.qkvBias ? await vector(p + "attn_k.bias") : null,
          vBias: c.qkvBias ? await vector(p + "attn_v.bias") : null,
          qNorm: c.qkNorm ? await vector(p + "attn_q_norm.weight") : null,
          kNorm: c.qkNorm ? await vector(p + "attn_k_norm.weight") : null,
          attnPostNorm: c.gemma ? await vector(p + "post_attention_norm.weight") : null,
          ffnPostNorm: c.gemma ? await vector(p + "post_ffw_norm.weight") : null,
        });
      }
      const outputNorm = await vector("output_norm.weight");
      const attnHash = await hashTensors(
        c.fusedQkv
          ? [tensor("blk.0.attn_qkv.weight")]
          : [tensor("blk.0.attn_q.weight"), tensor("blk.0.attn_k.weight")],
      );
      const output = c.tiedOutput ? embd : await matrix("output.weight");
      const types = new Set<number>([output.type]);
      for (const L of layers) {
        for (const w of [...L.qkvIn, ...L.ffnIn].map((p) => p.weight).concat(L.o, L.down)) {
          types.add(w.type);
        }
      }
      const kernels = new Kernels(device, c, types, embd.type);
      let act: Activations;
      try {
        act = new Activations(device, c, MAX_BATCH_TOKENS);
      } catch (e) {
        kernels[Symbol.dispose]();
        throw e;
      }
      return new LlamaModel({
        device,
        config: c,
        parameters,
        weightBytes: buffers.reduce((s, b) => s + b.bytes, 0),
        attnHash,
        kernels,
        act,
        embd,
        output,
        outputNorm,
        layers,
        buffers,
      });
    } catch (e) {
      for (const b of buffers) b.dispose();
      throw e;
    }
  }

  /** A fresh forward state (its own full KV cache of `contextTokens` rows per head). */
  createState(opts: { contextTokens: number }): ForwardState {
    if (this.#disposed) throw new HcError("E_BAD_REQUEST", "the model was disposed");
    return new LlamaState(this, opts.contextTokens);
  }

  /**
   * Records the forward pass of `tokens` tokens at `position`: token ids come from `ids` (u32),
   * positions from `pos[0]`; the caches' lengths must already count these tokens. Leaves the
   * last token's logits in act.logits.
   */
  /**
   * Records the whole forward pass of `tokens` tokens. With `split` (a chunk whose attention over
   * all layers passes attentionFlopsPerSubmission), each layer's attention goes in query blocks
   * (see recordLayer) and a layer starts a new list where its first block would take the current
   * one past the budget; returns the list the recording ends in.
   */
  recordForward(
    cmd: CommandList,
    io: ForwardIo,
    tokens: number,
    position: number,
    split?: AttentionSplit,
  ): CommandList {
    recordLengthsUploads(cmd, io.caches);
    this.recordEmbed(cmd, io, tokens);
    const perToken = attentionFlopsPerToken(this.config, position + tokens);
    const block = Math.max(1, Math.min(tokens, split?.tokens ?? tokens));
    // Attention work in the current list: a layer ends with its last block's.
    let held = 0;
    for (let l = 0; l < this.layers.length; l++) {
      if (split && held > 0 && held + block * perToken > this.attentionFlopsPerSubmission) {
        cmd = split.next(cmd);
        cmd.barrier();
        held = 0;
      }
      cmd = this.recordLayer(cmd, io, l, tokens, position, split);
      held += (tokens - (Math.ceil(tokens / block) - 1) * block) * perToken;
    }
    this.recordOutput(cmd, tokens);
    return cmd;
  }

  /** Records the token embeddings of `tokens` ids (io.ids) into act.x. */
  recordEmbed(cmd: CommandList, io: ForwardIo, tokens: number): void {
    const c = this.config;
    const K = this.kernels;
    const a = this.act;
    const B = tokens;
    K.getRows.record(cmd, {
      weight: this.#embd.buffer,
      rows: this.#embd.rows,
      cols: c.dim,
      ids: io.ids,
      count: B,
      out: a.x,
    });
    cmd.barrier();
    if (c.gemma) {
      // Gemma scales the embeddings by sqrt(dim) (llama.cpp: ggml_scale of inp_embd).
      K.axpby.recordScale(cmd, { x: a.x, out: a.x, n: B * c.dim, scale: Math.sqrt(c.dim) });
      cmd.barrier();
    }
  }

  /**
   * Records layer `l` over the `tokens` hidden states in act.x (updated in place), appending
   * their K and V to io.caches[l]. The layer-by-layer prefill (llama_layered.ts) runs it alone.
   * With `split`, the prompt attention goes in query blocks, `split.next` ending the list
   * before each block after the first; returns the list the layer's recording ends in.
   */
  recordLayer(
    cmd: CommandList,
    io: ForwardIo,
    l: number,
    tokens: number,
    position: number,
    split?: AttentionSplit,
  ): CommandList {
    const c = this.config;
    const K = this.kernels;
    const a = this.act;
    const B = tokens;
    const qDim = c.nHeads * c.headDim;
    const kvDim = c.nKvHeads * c.headDim;
    const L = this.layers[l];
    const cache = io.caches[l];
    // Decode folds the norm into the Q, K and V products (they read x); prompts normalise
    // into xb first (the prompt matmul has no norm).
    const qkvDim = qDim + 2 * kvDim;
    const attnIn = this.#normedInput(cmd, L.qkvIn.map((p) => [p.weight, a.qkv]), L.attnNorm, B);
    if (L.qBias) {
      // Biases: seed the outputs with the bias, then accumulate the projection onto them.
      for (
        const [bias, at, n] of [[L.qBias, 0, qDim], [L.kBias!, qDim, kvDim], [
          L.vBias!,
          qDim + kvDim,
          kvDim,
        ]] as const
      ) {
        const rows = Array.from(
          { length: B },
          (_, t) => [0, (t * qkvDim + at) * 4, n * 4] as const,
        );
        cmd.copy(bias, a.qkv, rows);
      }
    }
    // Whatever wrote x (the last layer, the embedding) ended with a barrier.
    if (L.qBias || !attnIn.norm) cmd.barrier();
    for (const { weight, row0 } of L.qkvIn) {
      const out = { norm: attnIn.norm, yStride: qkvDim, yOffset: row0 };
      this.#matvec(cmd, weight, attnIn.x, a.qkv, B, L.qBias !== null, out);
    }
    cmd.barrier();
    const { q, k, v } = this.#splitQkv(cmd, B);
    if (L.qNorm) this.#recordQkNorm(cmd, L, B, q, k);
    const window = layerWindow(c, l);
    if (layerUsesRope(c, l)) {
      // RoPE on q and k and the append in one kernel; the captures copy the rotated q and k.
      K.ropeAppend.record(cmd, {
        cache,
        q,
        k,
        v,
        nHeads: c.nHeads,
        tokens: B,
        table: window > 0 && K.ropeTableLocal ? K.ropeTableLocal : K.ropeTable,
        positions: io.pos,
        pairing: c.ropePairing,
        mscale: c.ropeMscale,
      });
      cmd.barrier();
      this.#recordCaptures(cmd, io, l, B, position, { q, k, v });
    } else {
      this.#recordCaptures(cmd, io, l, B, position, { q, k, v });
      K.kvAppend.record(cmd, { cache, k, v, tokens: B });
      cmd.barrier();
    }
    if (cache.window !== window) {
      throw new HcError(
        "E_BAD_REQUEST",
        `layer ${l}'s cache has window ${cache.window}, the layer ${window}`,
      );
    }
    const scores = { scale: c.attnScale, softcap: c.attnSoftcap };
    if (B === 1) {
      K.decode.record(cmd, { cache, q, out: a.att, scratch: io.attnScratch, ...scores });
    } else {
      // Query blocks are independent (each row sees keys 0 .. its position), so a block's
      // numbers do not depend on where the blocks are cut.
      const block = Math.max(1, Math.min(B, split?.tokens ?? B));
      for (let q0 = 0; q0 < B; q0 += block) {
        if (q0 > 0) {
          cmd = split!.next(cmd);
          cmd.barrier();
        }
        K.prefill.record(cmd, {
          cache,
          q,
          qOffset: q0 * qDim,
          tokens: Math.min(block, B - q0),
          position: position + q0,
          out: a.att,
          outOffset: q0 * qDim,
          scratch: io.attnScratch,
          ...scores,
        });
      }
    }
    cmd.barrier();
    this.#residual(cmd, L.o, a.att, L.attnPostNorm, B);
    const F = c.ffnDim;
    const { x: ffnX, norm } = this.#normedInput(
      cmd,
      L.ffnIn.map((p) => [p.weight, a.gu]),
      L.ffnNorm,
      B,
    );
    if (!norm) cmd.barrier();
    const act = c.gemma ? "gelu" : "silu";
    const stacked = L.ffnIn.length === 1 ? L.ffnIn[0].weight : null;
    const glu = { norm, glu: act, rows: F } as const;
    if (B === 1 && stacked && this.#accepts(stacked, ffnX, a.gu, glu)) {
      // Decode: gate and up in one product that writes act(gate) * up over the gate half.
      this.#matvec(cmd, stacked, ffnX, a.gu, B, false, glu);
      cmd.barrier();
      this.#residual(cmd, L.down, a.gu, L.ffnPostNorm, B, 2 * F);
      return cmd;
    }
    for (const { weight, row0 } of L.ffnIn) {
      this.#matvec(cmd, weight, ffnX, a.gu, B, false, { norm, yStride: 2 * F, yOffset: row0 });
    }
    cmd.barrier();
    K.swiglu.record(cmd, {
      gate: a.gu,
      up: { buffer: a.gu, offset: F * 4 },
      out: a.gu,
      n: F,
      rows: B,
      gateStride: 2 * F,
      upStride: 2 * F,
      outStride: 2 * F,
      act,
    });
    cmd.barrier();
    this.#residual(cmd, L.down, a.gu, L.ffnPostNorm, B, 2 * F);
    return cmd;
  }

  /** x += w · input, or with Gemma's post-norm x += norm(w · input); `inputStride` floats
   * between tokens of `input` (default w.cols). */
  #residual(
    cmd: CommandList,
    w: Weight,
    input: Buffer,
    postNorm: Buffer | null,
    B: number,
    inputStride?: number,
  ): void {
    const c = this.config;
    const a = this.act;
    const strides = { xStride: inputStride };
    if (!postNorm) {
      this.#matvec(cmd, w, input, a.x, B, true, strides);
      cmd.barrier();
      return;
    }
    this.#matvec(cmd, w, input, a.xb, B, false, strides);
    cmd.barrier();
    this.kernels.rmsNorm.record(cmd, {
      x: a.xb,
      weight: postNorm,
      out: a.xb,
      n: c.dim,
      rows: B,
      eps: c.rmsEps,
    });
    cmd.barrier();
    this.kernels.axpby.recordAdd(cmd, { a: a.x, b: a.xb, out: a.x, n: B * c.dim });
    cmd.barrier();
  }

  /** Records the last token's logits (act.logits) from the `tokens` hidden states in act.x. */
  recordOutput(cmd: CommandList, tokens: number): void {
    const c = this.config;
    const K = this.kernels;
    const a = this.act;
    const B = tokens;
    // Only the last token's logits matter; a copy avoids binding at an unaligned offset.
    if (B > 1) {
      cmd.copy(a.x, a.xLast, [[(B - 1) * c.dim * 4, 0, c.dim * 4]]);
      cmd.barrier();
    }
    const last = B > 1 ? a.xLast : a.x;
    const products = [[this.#output, a.logits]] as const;
    const { x, norm } = this.#normedInput(cmd, products, this.#outputNorm, 1, last, a.xLast);
    if (!norm) cmd.barrier();
    this.#matvec(cmd, this.#output, x, a.logits, 1, false, { norm });
    cmd.barrier();
    if (c.finalSoftcap > 0) {
      const logits = a.logits;
      const n = c.vocabSize;
      K.swiglu.record(cmd, {
        gate: logits,
        up: logits,
        out: logits,
        n,
        act: "softcap",
        cap: c.finalSoftcap,
      });
      cmd.barrier();
    }
  }

  /** Qwen3's QK-norm: every head's q and k row RMS-normalised on its own, before RoPE. */
  #recordQkNorm(cmd: CommandList, L: LayerWeights, B: number, q: View, k: View): void {
    const c = this.config;
    const norm = { n: c.headDim, eps: c.rmsEps };
    this.kernels.rmsNorm.record(cmd, {
      ...norm,
      x: q,
      out: q,
      weight: L.qNorm!,
      rows: B * c.nHeads,
    });
    this.kernels.rmsNorm.record(cmd, {
      ...norm,
      x: k,
      out: k,
      weight: L.kNorm!,
      rows: B * c.nKvHeads,
    });
    cmd.barrier();
  }

  /** Copies of post-RoPE activations for the cache policy (plain copies, no kernels). */
  #recordCaptures(
    cmd: CommandList,
    io: ForwardIo,
    layer: number,
    B: number,
    position: number,
    { q, k, v }: { q: View; k: View; v: View },
  ): void {
    const c = this.config;
    const qBytes = c.nHeads * c.headDim * 4;
    if (io.stepCapture) {
      const at = stepLayout(c);
      cmd.copy(q.buffer, io.stepCapture, [[q.offset, at.q(layer) * 4, at.qFloats * 4]]);
      cmd.copy(k.buffer, io.stepCapture, [[k.offset, at.k(layer) * 4, at.kvFloats * 4]]);
      cmd.copy(v.buffer, io.stepCapture, [[v.offset, at.v(layer) * 4, at.kvFloats * 4]]);
    }
    if (io.prefillQ && io.captureFrom !== undefined) {
      // Tokens t of this batch with position + t in [from, from + window).
      const W = io.prefillWindow;
      const t0 = Math.max(0, io.captureFrom - position);
      const t1 = Math.min(B, io.captureFrom + W - position);
      if (t1 > t0) {
        const slot = position + t0 - io.captureFrom;
        cmd.copy(q.buffer, io.prefillQ, [[
          q.offset + t0 * qBytes,
          (layer * W + slot) * qBytes,
          (t1 - t0) * qBytes,
        ]]);
      }
    }
  }

  /**
   * q, k and v of the `B` tokens in Activations.qkv (each token's row: q, k, v): at one token
   * read in place where the offsets can be bound, else copied apart into Activations.q, k
   * and v (the kernels after them take one token's q right after another's), then a barrier.
   */
  #splitQkv(cmd: CommandList, B: number): { q: View; k: View; v: View } {
    const c = this.config;
    const a = this.act;
    const qDim = c.nHeads * c.headDim;
    const kvDim = c.nKvHeads * c.headDim;
    const align = this.device.info.minStorageBufferOffsetAlignment;
    const kAt = qDim * 4, vAt = (qDim + kvDim) * 4;
    if (B === 1 && kAt % align === 0 && vAt % align === 0) {
      return {
        q: { buffer: a.qkv, offset: 0 },
        k: { buffer: a.qkv, offset: kAt },
        v: { buffer: a.qkv, offset: vAt },
      };
    }
    const row = (qDim + 2 * kvDim) * 4;
    const apart = (to: Buffer, at: number, n: number): View => {
      cmd.copy(a.qkv, to, Array.from({ length: B }, (_, t) => [t * row + at, t * n, n] as const));
      return { buffer: to, offset: 0 };
    };
    const out = {
      q: apart(a.q, 0, kAt),
      k: apart(a.k, kAt, kvDim * 4),
      v: apart(a.v, vAt, kvDim * 4),
    };
    cmd.barrier();
    return out;
  }

  /**
   * Where the products (weight, output) after an RMSNorm of `x` (default the residual stream)
   * read: at one token, x itself with the norm folded into each product where all of them take
   * it; else `out` (default xb), normalised here (the caller puts the barrier after).
   */
  #normedInput(
    cmd: CommandList,
    products: readonly (readonly [Weight, Binding])[],
    normWeight: Buffer,
    B: number,
    x: Buffer = this.act.x,
    out: Buffer = this.act.xb,
  ): { x: Buffer; norm?: FusedNorm } {
    const norm = { weight: normWeight, eps: this.config.rmsEps };
    if (B === 1 && products.every(([w, y]) => this.#accepts(w, x, y, { norm }))) {
      return { x, norm };
    }
    this.kernels.rmsNorm.record(cmd, {
      x,
      weight: normWeight,
      out,
      n: this.config.dim,
      rows: B,
      eps: this.config.rmsEps,
    });
    return { x: out };
  }

  /**
   * Whether `w`'s one-token product takes these fusions (see #matvec). Under the "cpu" variant
   * set (lavapipe-only policy) a norm is folded only into the row loop: the generic kernel's
   * workgroups hold 2 rows each, and each one repeating the norm's loads and reduction cost
   * more than the norm's own dispatch (8B structure at width 256: decode 1.4x slower).
   */
  #accepts(w: Weight, x: Binding, y: Binding, f: MatVecFusions): boolean {
    const mv = this.kernels.matvec.get(w.type)!;
    const kind = mv.planKind({
      weight: w.buffer,
      rows: f.rows ?? w.rows,
      cols: w.cols,
      x,
      y,
      layout: w.layout,
      norm: f.norm,
      glu: f.glu,
    });
    if (kind === null) return false;
    return !f.norm || kind === "rowloop" || this.device.variants !== "cpu";
  }

  /** y = w · x (or y += w · x) for `batch` tokens, `xStride` / `yStride` floats apart
   * (default w.cols / w.rows); at batch 1 with a folded norm or as GLU pairs (`rows` then
   * counts the outputs, half of w's rows; see MatVecRecord). */
  #matvec(
    cmd: CommandList,
    w: Weight,
    x: Binding,
    y: Binding,
    batch: number,
    accumulate: boolean,
    strides: { xStride?: number; yStride?: number; yOffset?: number } & MatVecFusions = {},
  ): void {
    const want = this.promptKernel === "auto"
      ? preferMatMul(this.device, w.type)
      : this.promptKernel === "matmul";
    const xStride = strides.xStride ?? w.cols;
    const rows = strides.rows ?? w.rows;
    const yStride = strides.yStride ?? rows;
    const yOffset = strides.yOffset;
    const args = { weight: w.buffer, rows, cols: w.cols, x, y, batch, accumulate, yOffset };
    // The prompt matmul reads GGUF order and the split layout.
    if (batch > 1 && want && w.layout !== "lanes") {
      const mm = this.kernels.matmul(w.type);
      const fit = { rows: w.rows, bufferBytes: w.buffer.bytes };
      if (mm.supports(w.cols, 0, xStride, fit, w.layout)) {
        mm.record(cmd, { ...args, xStride, yStride, layout: w.layout });
        return;
      }
    }
    this.kernels.matvec.get(w.type)!.record(cmd, {
      ...args,
      layout: w.layout,
      xStride,
      yStride,
      norm: strides.norm,
      glu: strides.glu,
    });
  }

  [Symbol.dispose](): void {
    if (this.#disposed) return;
    this.#disposed = true;
    this.kernels[Symbol.dispose]();
    this.act[Symbol.dispose]();
    for (const b of this.#buffers) b.dispose();
  }
}
