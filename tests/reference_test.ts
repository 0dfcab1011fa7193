import assert from "node:assert/strict";
import { HcError, type HcErrorCode } from "../src/errors.ts";
import { GgufValueType, openGguf } from "../src/gguf/reader.ts";
import {
  type GgufTypedValue,
  type GgufWriteTensor,
  gv,
  writeGguf,
} from "../testing/gguf_writer.ts";
import { GgmlType } from "../src/gguf/types.ts";
import {
  configFromGguf,
  llama3RopeFactors,
  ropeInverseFrequencies,
  yarnRopeFactors,
} from "../src/model/config.ts";
import { parseLlama2cHeader } from "../src/model/llama2c_checkpoint.ts";
import { quantize } from "../src/model/quant/mod.ts";
import { applyRope, attention, ReferenceModel } from "../testing/reference_model.ts";
import { openModelSource, readTensorBytes } from "../src/model/source.ts";

const MODELS = new URL("../../shared/models/", import.meta.url);

function modelPath(name: string): string {
  const url = new URL(name, MODELS);
  try {
    Deno.statSync(url);
  } catch {
    throw new Error(`test model file missing: ${url.pathname} (see shared/models/README.md)`);
  }
  return url.pathname;
}

async function rejectsCode(fn: () => Promise<unknown>, code: HcErrorCode, mention?: string) {
  await assert.rejects(fn, (e) => {
    assert.ok(e instanceof HcError, `expected HcError ${code}, got ${e}`);
    assert.equal(e.code, code, e.message);
    if (mention) assert.ok(e.message.includes(mention), `"${e.message}" should name ${mention}`);
    return true;
  });
}

function argmax(x: Float32Array): number {
  let best = 0;
  for (let i = 1; i < x.length; i++) if (x[i] > x[best]) best = i;
  return best;
}

/** llama2.c tokenizer.bin pieces: int32 max_len, then per token f32 score, int32 len, bytes. */
function llama2cPieces(bytes: Uint8Array, vocabSize: number): Uint8Array[] {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const pieces: Uint8Array[] = [];
  let off = 4;
  for (let i = 0; i < vocabSize; i++) {
    const len = v.getInt32(off + 4, true);
    pieces.push(bytes.slice(off + 8, off + 8 + len));
    off += 8 + len;
  }
  assert.equal(off, bytes.length, "tokenizer file holds exactly vocabSize tokens");
  return pieces;
}

function ggufPieces(tokens: string[]): Uint8Array[] {
  const enc = new TextEncoder();
  return tokens.map((t) => enc.encode(t.replaceAll("\u2581", " ")));
}

/**
 * llama2.c run.c's generate loop with temperature 0 from the empty prompt (BOS only): positions
 * 0..steps-1, stop if BOS comes next, print each piece (leading space dropped after BOS, <0xHH>
 * as that byte, lone unprintable bytes skipped), then a final newline.
 */
function greedyRunC(model: ReferenceModel, pieces: Uint8Array[], steps: number): string {
  const out: number[] = [];
  let token = 1;
  for (let pos = 0; pos < steps; pos++) {
    const next = argmax(model.forward([token], pos));
    if (next === 1) break;
    let piece = pieces[next];
    if (token === 1 && piece[0] === 0x20) piece = piece.subarray(1);
    const m = /^<0x([0-9A-Fa-f]{1,2})/.exec(new TextDecoder().decode(piece));
    if (m) piece = new Uint8Array([parseInt(m[1], 16)]);
    const printable = (b: number) => (b >= 0x20 && b < 0x7f) || (b >= 9 && b <= 13);
    if (piece.length > 1 || (piece.length === 1 && printable(piece[0]))) out.push(...piece);
    token = next;
  }
  out.push(0x0a);
  return new TextDecoder().decode(new Uint8Array(out));
}

Deno.test("stories260K.gguf greedy n=200 reproduces llama2.c's output exactly", async () => {
  const expected = await Deno.readTextFile(modelPath("stories260K.greedy-n200.txt"));
  using source = await openModelSource(modelPath("stories260K.gguf"));
  assert.equal(source.format, "gguf");
  const tokens = source.tokenizerMetadata!.get("tokenizer.ggml.tokens") as string[];
  const model = await ReferenceModel.load(source);
  assert.equal(greedyRunC(model, ggufPieces(tokens), 200), expected);
});

Deno.test("stories260K.bin + tok512.bin greedy n=200 reproduces llama2.c's output exactly", async () => {
  const expected = await Deno.readTextFile(modelPath("stories260K.greedy-n200.txt"));
  using source = await openModelSource(modelPath("stories260K.bin"), {
    tokenizerPath: modelPath("tok512.bin"),
  });
  assert.equal(source.format, "llama2c");
  assert.equal(source.config.contextLength, 512);
  assert.ok(source.config.tiedOutput);
  const pieces = llama2cPieces(source.llama2cTokenizer!, source.config.vocabSize);
  const model = await ReferenceModel.load(source);
  assert.equal(greedyRunC(model, pieces, 200), expected);
});

Deno.test("babyllama tok105 greedy output starts 'Once upon a time'", async () => {
  using source = await openModelSource(modelPath("babyllama-tok105/model5000.bin"), {
    tokenizerPath: modelPath("babyllama-tok105/tok105.bin"),
  });
  assert.deepEqual(
    [source.config.dim, source.config.ffnDim, source.config.vocabSize, source.config.contextLength],
    [128, 352, 105, 256],
  );
  const model = await ReferenceModel.load(source);
  const text = greedyRunC(model, llama2cPieces(source.llama2cTokenizer!, 105), 40);
  assert.ok(text.startsWith("Once upon a time"), JSON.stringify(text));
});

Deno.test("GGUF and llama2.c sources hold the same tensors; batched forward = stepwise", async () => {
  using g = await openModelSource(modelPath("stories260K.gguf"));
  using b = await openModelSource(modelPath("stories260K.bin"));
  for (const [name, t] of b.tensors) {
    const other = g.tensors.get(name)!;
    assert.deepEqual(other.dims, t.dims, name);
    assert.deepEqual(await readTensorBytes(other), await readTensorBytes(t), name);
  }
  assert.deepEqual(
    await readTensorBytes(g.tensors.get("output.weight")!),
    await readTensorBytes(b.tensors.get("token_embd.weight")!),
  );

  const m = await ReferenceModel.load(g);
  const prompt = [1, 403, 407, 261, 378, 432, 383];
  const all = m.forward(prompt, 0, { allLogits: true });
  assert.equal(all.length, prompt.length * 512);
  assert.equal(m.length, prompt.length);
  const keysBatched = m.keys(2).slice();
  assert.equal(keysBatched.length, prompt.length * 4 * 8);
  m.reset();
  for (let i = 0; i < prompt.length; i++) {
    const one = m.forward([prompt[i]], i);
    const ref = all.subarray(i * 512, (i + 1) * 512);
    for (let j = 0; j < 512; j++) {
      assert.ok(Math.abs(one[j] - ref[j]) < 1e-5, `pos ${i} logit ${j}`);
    }
  }
  assert.deepEqual(m.keys(2), keysBatched);
  // Rewinding recomputes the same logits.
  const again = m.forward([prompt[3]], 3);
  for (let j = 0; j < 512; j++) assert.ok(Math.abs(again[j] - all[3 * 512 + j]) < 1e-5);
  assert.equal(m.length, 4);
  assert.throws(() => m.forward([1], 9), RangeError);
  assert.throws(() => m.forward([512], 0), RangeError);
  assert.throws(
    () => m.forward(new Array(2049).fill(1), 0),
    (e) => e instanceof HcError && e.code === "E_CONTEXT_FULL",
  );
});

Deno.test("RoPE: both pairings rotate pairs, keep norms and depend only on relative position", () => {
  const headDim = 16;
  const nHeads = 2;
  const rand = (n: number, seed: number) =>
    Float32Array.from({ length: n }, (_, i) => Math.sin(seed * 97 + i * 13.7));
  for (const pairing of ["adjacent", "halves"] as const) {
    const inv = ropeInverseFrequencies(headDim, 10000);
    // Direct formula: pair i of head h at angle pos * 10000^(-2i/d).
    const v = rand(nHeads * headDim, 1);
    const r = v.slice();
    applyRope(r, 7, nHeads, headDim, inv, pairing);
    const norm = (a: Float32Array) => Math.hypot(...a);
    assert.ok(Math.abs(norm(r) - norm(v)) < 1e-5);
    for (let h = 0; h < nHeads; h++) {
      for (let i = 0; i < headDim / 2; i++) {
        const a = h * headDim + (pairing === "adjacent" ? 2 * i : i);
        const b = pairing === "adjacent" ? a + 1 : a + headDim / 2;
        const th = 7 * Math.pow(10000, (-2 * i) / headDim);
        assert.ok(Math.abs(r[a] - (v[a] * Math.cos(th) - v[b] * Math.sin(th))) < 1e-5);
        assert.ok(Math.abs(r[b] - (v[a] * Math.sin(th) + v[b] * Math.cos(th))) < 1e-5);
      }
    }
    const dotAt = (m: number, n: number, factors: Float32Array | null) => {
      const q = rand(headDim, 2);
      const k = rand(headDim, 3);
      const f = ropeInverseFrequencies(headDim, 10000, factors);
      applyRope(q, m, 1, headDim, f, pairing);
      applyRope(k, n, 1, headDim, f, pairing);
      return q.reduce((s, x, i) => s + x * k[i], 0);
    };
    assert.ok(Math.abs(dotAt(10, 3, null) - dotAt(107, 100, null)) < 1e-4);
    // Frequency factors f stretch positions: factors all 4 at positions (4m, 4n) = none at (m, n).
    const four = new Float32Array(headDim / 2).fill(4);
    assert.ok(Math.abs(dotAt(40, 12, four) - dotAt(10, 3, null)) < 1e-4);
  }
});

Deno.test("attention: GQA heads share KV heads; one position returns its value", () => {
  const q = Float32Array.from({ length: 4 * 2 }, (_, i) => i * 0.1);
  const keys = Float32Array.from({ length: 3 * 2 * 2 }, (_, i) => Math.cos(i));
  const values = Float32Array.from({ length: 3 * 2 * 2 }, (_, i) => i);
  const one = attention(q, keys, values, 1, 4, 2, 2);
  assert.deepEqual([...one], [0, 1, 0, 1, 2, 3, 2, 3]);
  const three = attention(q, keys, values, 3, 4, 2, 2);
  // Query heads 0 and 1 read KV head 0: each output is a convex mix of that head's values.
  for (const h of [0, 1]) assert.ok(three[h * 2] >= 0 && three[h * 2] <= 8);
  for (const h of [2, 3]) assert.ok(three[h * 2] >= 2 && three[h * 2] <= 10);
});

// --- synthetic GGUF models built from stories260K ------------------------------------------

type Tensors = Map<string, { dims: number[]; data: Float32Array }>;

async function storiesTensors(): Promise<Tensors> {
  using f = await openGguf(modelPath("stories260K.gguf"));
  const out: Tensors = new Map();
  for (const t of f.tensors) {
    const b = await f.readTensor(t);
    out.set(t.name, { dims: t.dims, data: new Float32Array(b.buffer) });
  }
  return out;
}

function meta(arch: string, extra: Record<string, GgufTypedValue> = {}) {
  return {
    "general.architecture": gv.str(arch),
    [`${arch}.context_length`]: gv.u32(512),
    [`${arch}.embedding_length`]: gv.u32(64),
    [`${arch}.feed_forward_length`]: gv.u32(172),
    [`${arch}.block_count`]: gv.u32(5),
    [`${arch}.attention.head_count`]: gv.u32(8),
    [`${arch}.attention.head_count_kv`]: gv.u32(4),
    [`${arch}.attention.layer_norm_rms_epsilon`]: gv.f32(1e-5),
    "tokenizer.ggml.model": gv.str("llama"),
    ...extra,
  };
}

function asF32Tensors(
  t: Tensors,
  typeOf: (name: string, dims: number[]) => number = () => GgmlType.F32,
): GgufWriteTensor[] {
  return [...t].map(([name, { dims, data }]) => {
    const type = typeOf(name, dims);
    const bytes = type === GgmlType.F32
      ? new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
      : quantize(type, data);
    return { name, type, dims, data: bytes };
  });
}

/** Reorders the rows of each head from adjacent pairs (2i, 2i+1) to halves (i, i + d/2). */
function toHalves(data: Float32Array, rowLen: number, headDim: number): Float32Array {
  const out = new Float32Array(data.length);
  const rows = data.length / rowLen;
  for (let r = 0; r < rows; r++) {
    const h = Math.floor(r / headDim);
    const j = r % headDim;
    const dst = h * headDim + (j % 2 === 0 ? j / 2 : headDim / 2 + (j - 1) / 2);
    out.set(data.subarray(r * rowLen, (r + 1) * rowLen), dst * rowLen);
  }
  return out;
}

async function withTempGguf<T>(
  spec: Parameters<typeof writeGguf>[1],
  fn: (path: string) => Promise<T>,
) {
  const path = await Deno.makeTempFile({ suffix: ".gguf" });
  try {
    await writeGguf(path, spec);
    return await fn(path);
  } finally {
    await Deno.remove(path);
  }
}

async function logitsOf(path: string, prompt: number[]): Promise<Float32Array> {
  using s = await openModelSource(path);
  const m = await ReferenceModel.load(s);
  return m.forward(prompt, 0, { allLogits: true });
}

const PROMPT = [1, 403, 407, 261, 378, 432, 383, 286, 261];

Deno.test("qwen2 (halves RoPE, QKV bias) equals llama with permuted Q/K rows", async () => {
  const base = await storiesTensors();
  let seed = 1;
  const rnd = () => (seed = (seed * 16807) % 2147483647) / 2147483647 - 0.5;
  const llama: Tensors = new Map(base);
  for (let l = 0; l < 5; l++) {
    llama.set(`blk.${l}.attn_q.bias`, { dims: [64], data: Float32Array.from({ length: 64 }, rnd) });
    llama.set(`blk.${l}.attn_k.bias`, { dims: [32], data: Float32Array.from({ length: 32 }, rnd) });
    llama.set(`blk.${l}.attn_v.bias`, { dims: [32], data: Float32Array.from({ length: 32 }, rnd) });
  }
  const qwen: Tensors = new Map(llama);
  for (let l = 0; l < 5; l++) {
    for (
      const [w, rowLen] of [["attn_q.weight", 64], ["attn_k.weight", 64], ["attn_q.bias", 1], [
        "attn_k.bias",
        1,
      ]] as const
    ) {
      const t = llama.get(`blk.${l}.${w}`)!;
      qwen.set(`blk.${l}.${w}`, { dims: t.dims, data: toHalves(t.data, rowLen, 8) });
    }
  }
  const a = await withTempGguf(
    { metadata: meta("llama"), tensors: asF32Tensors(llama) },
    (p) => logitsOf(p, PROMPT),
  );
  const b = await withTempGguf(
    { metadata: meta("qwen2"), tensors: asF32Tensors(qwen) },
    async (p) => {
      using s = await openModelSource(p);
      assert.equal(s.config.ropePairing, "halves");
      assert.ok(s.config.qkvBias);
      // At position 0 RoPE is the identity: layer 0's cached K and V are W * rmsnorm(x) + b.
      const m = await ReferenceModel.load(s);
      m.forward([PROMPT[1]], 0);
      const x = qwen.get("token_embd.weight")!.data.subarray(PROMPT[1] * 64, PROMPT[1] * 64 + 64);
      const norm = qwen.get("blk.0.attn_norm.weight")!.data;
      const ms = x.reduce((acc, v) => acc + v * v, 0) / 64;
      const xb = x.map((v, i) => v / Math.sqrt(ms + 1e-5) * norm[i]);
      for (const [kind, got] of [["k", m.keys(0)], ["v", m.values(0)]] as const) {
        const w = qwen.get(`blk.0.attn_${kind}.weight`)!.data;
        const bias = qwen.get(`blk.0.attn_${kind}.bias`)!.data;
        for (let o = 0; o < 32; o++) {
          let want = bias[o];
          for (let i = 0; i < 64; i++) want += w[o * 64 + i] * xb[i];
          assert.ok(Math.abs(got[o] - want) < 1e-4, `${kind}[${o}] ${got[o]} vs ${want}`);
        }
      }
      return logitsOf(p, PROMPT);
    },
  );
  const plain = await withTempGguf(
    { metadata: meta("llama"), tensors: asF32Tensors(base) },
    (p) => logitsOf(p, PROMPT),
  );
  // Only a Q bias (K and V biases zero): the Q bias alone must move the logits.
  const qOnly: Tensors = new Map(llama);
  for (let l = 0; l < 5; l++) {
    qOnly.set(`blk.${l}.attn_k.bias`, { dims: [32], data: new Float32Array(32) });
    qOnly.set(`blk.${l}.attn_v.bias`, { dims: [32], data: new Float32Array(32) });
  }
  const c = await withTempGguf(
    { metadata: meta("llama"), tensors: asF32Tensors(qOnly) },
    (p) => logitsOf(p, PROMPT),
  );
  const maxAbsDiff = (x: Float32Array, y: Float32Array) =>
    x.reduce((m, v, i) => Math.max(m, Math.abs(v - y[i])), 0);
  assert.ok(maxAbsDiff(a, b) < 1e-4, `qwen2 vs permuted llama differ by ${maxAbsDiff(a, b)}`);
  assert.ok(maxAbsDiff(a, plain) > 1e-2, "biases should change the logits");
  assert.ok(maxAbsDiff(c, plain) > 1e-2, "a Q bias alone should change the logits");
});

Deno.test("quantized weights (Q8_0 / F16) run through dequantize and stay close to F32", async () => {
  const base = await storiesTensors();
  const q = (_: string, dims: number[]) =>
    dims.length === 1 ? GgmlType.F32 : dims[0] % 32 === 0 ? GgmlType.Q8_0 : GgmlType.F16;
  const f32 = await withTempGguf(
    { metadata: meta("llama"), tensors: asF32Tensors(base) },
    (p) => logitsOf(p, PROMPT),
  );
  const q8 = await withTempGguf(
    { metadata: meta("llama"), tensors: asF32Tensors(base, q) },
    async (p) => {
      using s = await openModelSource(p);
      assert.equal(s.tensors.get("blk.0.attn_q.weight")!.type, GgmlType.Q8_0);
      assert.equal(s.tensors.get("blk.0.ffn_down.weight")!.type, GgmlType.F16);
      return logitsOf(p, PROMPT);
    },
  );
  let maxDiff = 0;
  let same = 0;
  for (let i = 0; i < PROMPT.length; i++) {
    const a = f32.subarray(i * 512, (i + 1) * 512);
    const b = q8.subarray(i * 512, (i + 1) * 512);
    for (let j = 0; j < 512; j++) maxDiff = Math.max(maxDiff, Math.abs(a[j] - b[j]));
    if (argmax(a) === argmax(b)) same++;
  }
  assert.ok(maxDiff > 0 && maxDiff < 0.5, `Q8_0 logits differ from F32 by ${maxDiff}`);
  assert.ok(same >= PROMPT.length - 1, `top-1 agrees at ${same}/${PROMPT.length} positions`);
});

Deno.test("config: RoPE scaling from metadata and rope_freqs.weight", async () => {
  const f = llama3RopeFactors(128, 500000, 8, 1, 4, 8192);
  assert.equal(f.length, 64);
  assert.equal(f[0], 1);
  assert.equal(f[63], 8);
  for (let i = 1; i < 64; i++) assert.ok(f[i] >= f[i - 1]);
  assert.ok(f.some((x) => x > 1 && x < 8), "a smooth band between the two regimes");

  const base = await storiesTensors();
  const cfg = (extra: Record<string, GgufTypedValue>, tensors = asF32Tensors(base)) =>
    withTempGguf({ metadata: meta("llama", extra), tensors }, async (p) => {
      using g = await openGguf(p);
      return configFromGguf(g);
    });
  assert.equal((await cfg({})).ropeFreqFactors, null);
  assert.deepEqual([
    ...(await cfg({
      "llama.rope.scaling.type": gv.str("linear"),
      "llama.rope.scaling.factor": gv.f32(4),
    })).ropeFreqFactors!,
  ], [4, 4, 4, 4]);
  const l3 = await cfg({
    "llama.rope.scaling.type": gv.str("llama3"),
    "llama.rope.scaling.factor": gv.f32(8),
    "llama.rope.scaling.original_context_length": gv.u32(64),
  });
  assert.deepEqual(l3.ropeFreqFactors, llama3RopeFactors(8, 10000, 8, 1, 4, 64));
  const withTensor = [...asF32Tensors(base), {
    name: "rope_freqs.weight",
    type: GgmlType.F32,
    dims: [4],
    data: new Uint8Array(new Float32Array([1, 1.5, 2, 8]).buffer),
  }];
  assert.deepEqual([...(await cfg({}, withTensor)).ropeFreqFactors!], [1, 1.5, 2, 8]);
  const yarn = await cfg({
    "llama.rope.scaling.type": gv.str("yarn"),
    "llama.rope.scaling.factor": gv.f32(4),
    "llama.rope.scaling.original_context_length": gv.u32(64),
  });
  assert.deepEqual(yarn.ropeFreqFactors, yarnRopeFactors(8, 10000, 4, 64));
  assert.ok(Math.abs(yarn.ropeMscale - (1 + 0.1 * Math.log(4))) < 1e-12);
  await rejectsCode(
    () => cfg({ "llama.rope.scaling.type": gv.str("longrope") }),
    "E_MODEL_ARCH",
    "longrope",
  );
});

Deno.test("model sources reject unsupported or broken models with named errors", async () => {
  const base = await storiesTensors();
  const open = (metadata: Record<string, GgufTypedValue>, tensors: GgufWriteTensor[]) =>
    withTempGguf({ metadata, tensors }, async (p) => {
      using s = await openModelSource(p);
      return s.config;
    });
  const all = asF32Tensors(base);
  await rejectsCode(() => open(meta("gpt2"), all), "E_MODEL_ARCH", "gpt2");
  await rejectsCode(
    () => open({ ...meta("llama"), "llama.block_count": gv.u32(6) }, all),
    "E_MODEL_TENSOR",
    "blk.5.",
  );
  await rejectsCode(
    () => open(meta("llama"), all.filter((t) => t.name !== "blk.3.ffn_up.weight")),
    "E_MODEL_TENSOR",
    "blk.3.ffn_up.weight",
  );
  const noNorm = { ...meta("llama") } as Record<string, GgufTypedValue>;
  delete noNorm["llama.attention.layer_norm_rms_epsilon"];
  await rejectsCode(() => open(noNorm, all), "E_MODEL_FORMAT", "layer_norm_rms_epsilon");
  await rejectsCode(
    () => open({ ...meta("llama"), "llama.feed_forward_length": gv.u32(160) }, all),
    "E_MODEL_TENSOR",
    "ffn_gate",
  );
  // Q8_1 is a type ggml uses only for activations: no weight file should hold it.
  const q81 = all.map((t) =>
    t.name === "blk.1.attn_v.weight"
      ? { ...t, type: GgmlType.Q8_1, data: new Uint8Array((2048 / 32) * 36) }
      : t
  );
  await rejectsCode(() => open(meta("llama"), q81), "E_MODEL_TENSOR", "blk.1.attn_v.weight");
  const f16Norm = all.map((t) =>
    t.name === "output_norm.weight" ? { ...t, type: GgmlType.F16, data: new Uint8Array(128) } : t
  );
  await rejectsCode(() => open(meta("llama"), f16Norm), "E_MODEL_TENSOR", "output_norm.weight");
  // A tied model has no output.weight and runs from token_embd.
  const tied = await open(meta("llama"), all.filter((t) => t.name !== "output.weight"));
  assert.ok(tied.tiedOutput);

  // llama2.c checkpoints: truncated, padded, nonsense headers.
  const bin = await Deno.readFile(modelPath("stories260K.bin"));
  const dir = await Deno.makeTempDir();
  try {
    const cases: [string, Uint8Array, string][] = [
      ["cut.bin", bin.subarray(0, bin.length - 4), "truncated"],
      ["long.bin", new Uint8Array([...bin, 0, 0, 0, 0]), "not a legacy"],
      ["tiny.bin", bin.subarray(0, 10), "header"],
      [
        "heads.bin",
        (() => {
          const b = bin.slice(0, 28);
          new DataView(b.buffer).setInt32(12, 7, true);
          return b;
        })(),
        "n_heads",
      ],
      [
        "layers.bin",
        (() => {
          const b = bin.slice();
          new DataView(b.buffer).setInt32(8, 0x7fffffff, true);
          return b;
        })(),
        "truncated",
      ],
      [
        "ak42.bin",
        new Uint8Array([0x32, 0x34, 0x6b, 0x61, 1, 0, 0, 0, ...new Uint8Array(248)]),
        "ak42",
      ],
    ];
    for (const [name, bytes, mention] of cases) {
      await Deno.writeFile(`${dir}/${name}`, bytes);
      await rejectsCode(() => openModelSource(`${dir}/${name}`), "E_MODEL_FORMAT", mention);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  assert.equal(parseLlama2cHeader(bin).vocabSize, 512);
  await rejectsCode(() => openModelSource("/nonexistent/model.gguf"), "E_IO");
  // A GGUF tokenizer file given separately supplies tokenizer metadata.
  using s = await openModelSource(modelPath("stories260K.bin"), {
    tokenizerPath: modelPath("stories260K.gguf"),
  });
  assert.equal((s.tokenizerMetadata!.get("tokenizer.ggml.tokens") as string[]).length, 512);
  assert.equal(s.llama2cTokenizer, null);
  assert.equal(GgufValueType.STRING, 8);
});
