/**
 * The device forward pass against the plain TS reference (testing/reference_model.ts, K/V rounded to
 * f16 as the device cache stores them): real models, and synthetic GGUF models for every weight
 * type, both architectures, rope scaling, GQA ratios 1/2/4, and sizes that cross lavapipe's
 * loop cap (long prompts) and its 128 MiB binding limit (a big output matrix).
 */
import assert from "node:assert/strict";
import { loadModel } from "../mod.ts";
import { GgmlType } from "../src/gguf/types.ts";
import { ReferenceModel } from "../testing/reference_model.ts";
import { openModelSource } from "../src/model/source.ts";
import { type SyntheticSpec, writeSyntheticModel } from "../testing/synthetic_model.ts";
import { relError, sharedPath } from "./helpers.ts";

/** Device logits for the prompt's last position and for `decode` forced steps after it. */
async function deviceLogits(
  path: string,
  prompt: number[],
  forced: number[],
  tokenizerPath?: string,
): Promise<Float32Array[]> {
  await using model = await loadModel(path, { tokenizerPath });
  using s = model.session({ contextTokens: prompt.length + forced.length + 1 });
  const out: Float32Array[] = [];
  await s.teacherForce(prompt, [...forced, 0], (_, l) => out.push(l.slice()));
  return out;
}

async function referenceLogits(
  path: string,
  prompt: number[],
  forced: number[],
  tokenizerPath?: string,
): Promise<Float32Array[]> {
  using source = await openModelSource(path, { tokenizerPath });
  const ref = await ReferenceModel.load(source, { kvF16: true });
  const out = [ref.forward(prompt, 0)];
  forced.forEach((t, i) => out.push(ref.forward([t], prompt.length + i)));
  return out;
}

async function compare(
  path: string,
  prompt: number[],
  forced: number[],
  tolerance: number,
  what: string,
  tokenizerPath?: string,
) {
  const dev = await deviceLogits(path, prompt, forced, tokenizerPath);
  const ref = await referenceLogits(path, prompt, forced, tokenizerPath);
  assert.equal(dev.length, ref.length);
  dev.forEach((d, i) => {
    const e = relError(d, ref[i]);
    assert.ok(
      e < tolerance,
      `${what}: step ${i} logits differ by ${e.toExponential(2)} (tolerance ${tolerance})`,
    );
  });
}

function tokens(n: number, vocab: number, seed: number): number[] {
  return Array.from({ length: n }, (_, i) => 3 + ((i * 7919 + seed * 104729) % (vocab - 3)));
}

Deno.test("real models: device logits match the reference (F32)", async () => {
  await compare(
    sharedPath("models/stories260K.gguf"),
    [1, ...tokens(40, 512, 1)],
    tokens(4, 512, 2),
    1e-3,
    "stories260K.gguf",
  );
  await compare(
    sharedPath("models/babyllama-tok105/model5000.bin"),
    [1, ...tokens(30, 105, 3)],
    tokens(4, 105, 4),
    1e-3,
    "babyllama",
    sharedPath("models/babyllama-tok105/tok105.bin"),
  );
});

async function withModel(spec: SyntheticSpec, fn: (path: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/m.gguf`;
    await writeSyntheticModel(path, spec);
    await fn(path);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const BASE: SyntheticSpec = {
  dim: 256,
  nLayers: 2,
  nHeads: 4,
  nKvHeads: 2,
  ffnDim: 512,
  contextLength: 4096,
  seed: 7,
};

const TYPES: [string, number, number][] = [
  ["F32", GgmlType.F32, 1e-3],
  ["F16", GgmlType.F16, 2e-2],
  ["BF16", GgmlType.BF16, 2e-2],
  ["Q8_0", GgmlType.Q8_0, 2e-2],
  ["Q4_0", GgmlType.Q4_0, 2e-2],
  ["Q4_K", GgmlType.Q4_K, 2e-2],
  ["Q6_K", GgmlType.Q6_K, 2e-2],
  ["Q4_1", GgmlType.Q4_1, 2e-2],
  ["Q5_0", GgmlType.Q5_0, 2e-2],
  ["Q5_1", GgmlType.Q5_1, 2e-2],
  ["Q2_K", GgmlType.Q2_K, 2e-2],
  ["Q3_K", GgmlType.Q3_K, 2e-2],
  ["Q5_K", GgmlType.Q5_K, 2e-2],
  ["IQ4_NL", GgmlType.IQ4_NL, 2e-2],
  ["IQ4_XS", GgmlType.IQ4_XS, 2e-2],
];

for (const [name, type, tol] of TYPES) {
  Deno.test(`synthetic llama, ${name} weights and embeddings: device matches reference`, async () => {
    await withModel(
      { ...BASE, weightType: type, seed: 11 + type },
      (path) => compare(path, tokens(37, 320, type), tokens(3, 320, 9), tol, name),
    );
  });
}

// The loader stacks ffn_gate and ffn_up into one weight where their types match (one
// projection); a file that mixes them (here F16 gate, Q8_0 up) takes one projection each into
// the same rows.
Deno.test("synthetic llama, ffn_gate and ffn_up of different types: device matches reference", async () => {
  await withModel(
    {
      ...BASE,
      weightType: GgmlType.Q8_0,
      matrixType: (n) => n.endsWith("ffn_gate.weight") ? GgmlType.F16 : undefined,
      seed: 23,
    },
    (path) => compare(path, tokens(37, 320, 5), tokens(3, 320, 9), 2e-2, "mixed gate/up"),
  );
});

// At width 512 every projection takes the CPU matvec's "lanes" layout on CPU devices, the
// stacked gate and up included (their bands span both matrices' rows).
Deno.test("synthetic llama at width 512, Q4_K: device matches reference", async () => {
  await withModel(
    { ...BASE, dim: 512, nHeads: 8, nKvHeads: 2, weightType: GgmlType.Q4_K, seed: 29 },
    (path) => compare(path, tokens(21, 320, 6), tokens(3, 320, 9), 2e-2, "width 512"),
  );
});

for (const [name, type] of [["Q8_0", GgmlType.Q8_0], ["Q4_K", GgmlType.Q4_K]] as const) {
  Deno.test(`synthetic qwen2 (Q/K/V biases, NeoX RoPE), ${name} weights: device matches reference`, async () => {
    await withModel(
      { ...BASE, arch: "qwen2", weightType: type, seed: 17 },
      (path) => compare(path, tokens(33, 320, 2), tokens(3, 320, 7), 2e-2, `qwen2 ${name}`),
    );
  });
}

for (const [arch, nKvHeads] of [["llama", 4], ["llama", 1], ["qwen2", 2], ["qwen2", 1]] as const) {
  Deno.test(`synthetic ${arch}, GQA ratio ${4 / nKvHeads}: device matches reference`, async () => {
    await withModel(
      { ...BASE, arch, nKvHeads, seed: 3 },
      (path) =>
        compare(path, tokens(29, 320, 5), tokens(3, 320, 6), 1e-3, `${arch} G=${4 / nKvHeads}`),
    );
  });
}

Deno.test("synthetic llama with Llama 3 rope scaling: device matches reference", async () => {
  await withModel(
    {
      ...BASE,
      ropeBase: 500000,
      ropeScaling: { factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalContextLength: 64 },
      seed: 4,
    },
    (path) => compare(path, tokens(300, 320, 8), tokens(2, 320, 1), 1e-3, "llama3 rope"),
  );
});

Deno.test("a 4200-token prompt (past lavapipe's per-invocation loop cap in every kernel pass)", async () => {
  await withModel(
    {
      dim: 32,
      nLayers: 1,
      nHeads: 2,
      nKvHeads: 1,
      headDim: 16,
      ffnDim: 64,
      contextLength: 8192,
      seed: 9,
    },
    (path) => compare(path, tokens(4200, 320, 2), tokens(2, 320, 3), 1e-3, "long prompt"),
  );
});

Deno.test("an output matrix over the 128 MiB binding limit (split into row ranges)", async () => {
  await withModel(
    {
      dim: 1024,
      nLayers: 1,
      nHeads: 8,
      nKvHeads: 8,
      ffnDim: 256,
      vocabSize: 33000,
      contextLength: 256,
      seed: 13,
    },
    (path) => compare(path, tokens(12, 33000, 4), tokens(1, 33000, 5), 1e-3, "big output"),
  );
});
