/**
 * Layer-by-layer prefill (src/engine/layered_prefill.ts) against today's chunked path: same
 * logits, same kept rows, and a device KV peak of one layer's full KV plus the compressed caches.
 */
import assert from "node:assert/strict";
import { loadModel } from "../mod.ts";
import type { LoadedModel } from "../src/engine/model.ts";
import type { CacheOptions } from "../src/cache/mod.ts";
import type { PrefillOrder } from "../src/cache/policy.ts";
import { uniformProfile } from "../src/cache/profile/profile_io.ts";
import { choosePrefillOrder, hiddenPlace } from "../src/engine/layered_prefill.ts";
import { PromptHidden } from "../src/model/prompt_hidden.ts";
import { GgmlType } from "../src/gguf/types.ts";
import { f16ToF32 } from "../src/model/quant/mod.ts";
import { Device } from "../src/vk/mod.ts";
import { writeSyntheticModel } from "../testing/synthetic_model.ts";
import { relError, rng, sharedPath } from "./helpers.ts";

const TOKENS_2K = 2048;

/** Logits after the prompt, and the policy's whole state right after it (rows as blobs). */
async function afterPrompt(
  model: LoadedModel,
  opts: CacheOptions,
  prompt: number[],
  prefill: PrefillOrder,
) {
  using s = model.session({ ...opts, contextTokens: prompt.length + 2 });
  let logits: Float32Array | null = null;
  await s.teacherForce(prompt, [0], (_, l) => {
    logits = l.slice();
  }, prefill);
  const stats = s.cacheStats();
  const state = await s.policy.saveState();
  return { logits: logits!, stats, state };
}

function f16s(b: Uint8Array): Float32Array {
  const u = new Uint16Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
  return Float32Array.from(u, f16ToF32);
}

async function syntheticModel(dir: string): Promise<LoadedModel> {
  const path = `${dir}/m.gguf`;
  await writeSyntheticModel(path, {
    dim: 64,
    nLayers: 3,
    nHeads: 8,
    nKvHeads: 4,
    ffnDim: 128,
    contextLength: 4096,
    weightType: GgmlType.F16,
    seed: 14,
  });
  return await loadModel(path);
}

function randomPrompt(n: number, vocab: number, seed: number): number[] {
  const r = rng(seed);
  return [1, ...Array.from({ length: n - 1 }, () => 3 + Math.floor(r() * (vocab - 3)))];
}

Deno.test("layer-by-layer HeteroCache (keep 0.25) at 2K tokens: chunked path's logits and rows, one layer's full KV at a time", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await using model = await syntheticModel(dir);
    const c = model.config;
    const prompt = randomPrompt(TOKENS_2K, c.vocabSize, 7);
    const profile = uniformProfile(
      c.nLayers,
      ["satellite", "pivot", "satellite", "anchor"],
      [1.2, -1, 0.8, 1],
    );
    const opts: CacheOptions = { cache: "heterocache", keep: 0.25, profile };
    const chunked = await afterPrompt(model, opts, prompt, "chunked");
    const layered = await afterPrompt(model, opts, prompt, "layered");
    const e = relError(layered.logits, chunked.logits);
    console.log(`heterocache keep 0.25, ${TOKENS_2K} tokens: logits differ by ${e}`);
    assert.ok(e < 1e-2, `logits differ by ${e}`);
    // Same budgets, pivots (references and the satellites' kept-row masks), host rows.
    assert.deepEqual(layered.state.state, chunked.state.state);
    assert.equal(layered.state.blobs.length, chunked.state.blobs.length);
    layered.state.blobs.forEach((b, i) => {
      const want = chunked.state.blobs[i];
      assert.equal(
        b.byteLength,
        want.byteLength,
        `blob ${i}: ${b.byteLength} vs ${want.byteLength}`,
      );
      // The queries buffer (last) is f32 and was never written; the satellites' held positions
      // (u32) must be equal; device rows and the host store are f16, within f16 rounding.
      if (i === layered.state.blobs.length - 1 || b.every((x, k) => x === want[k])) return;
      const d = relError(f16s(b), f16s(want));
      assert.ok(d < 1e-2, `blob ${i}: rows differ by ${d}`);
    });
    // Peak device KV: one layer's full prompt KV plus the compressed caches.
    const rowBytes = c.headDim * 2 * 2;
    const oneLayer = c.nKvHeads * TOKENS_2K * rowBytes;
    const compressed = layered.stats.deviceKvBytes;
    const peak = layered.stats.prefillPeakKvBytes;
    assert.ok(peak <= 1.1 * (oneLayer + compressed), `peak ${peak} vs ${oneLayer} + ${compressed}`);
    assert.ok(
      chunked.stats.prefillPeakKvBytes >= c.nLayers * oneLayer,
      `chunked peak ${chunked.stats.prefillPeakKvBytes}`,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("layer-by-layer SnapKV and StreamingLLM keep the chunked path's rows", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await using model = await syntheticModel(dir);
    const prompt = randomPrompt(600, model.config.vocabSize, 8);
    for (
      const opts of [{ cache: "snapkv", keep: 0.3 }, { cache: "streaming", keep: 0.3 }] as const
    ) {
      const chunked = await afterPrompt(model, opts, prompt, "chunked");
      const layered = await afterPrompt(model, opts, prompt, "layered");
      const e = relError(layered.logits, chunked.logits);
      assert.ok(e < 1e-2, `${opts.cache}: logits differ by ${e}`);
      assert.deepEqual(layered.state.state, chunked.state.state);
      layered.state.blobs.forEach((b, i) => {
        const d = relError(f16s(b), f16s(chunked.state.blobs[i]));
        assert.ok(d < 1e-2, `${opts.cache} blob ${i}: rows differ by ${d}`);
      });
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("layer-by-layer prefill with its attention in query blocks: the same logits and rows", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await using model = await syntheticModel(dir);
    const c = model.config;
    const prompt = randomPrompt(600, c.vocabSize, 9);
    const opts = { cache: "snapkv", keep: 0.3 } as const;
    const whole = await afterPrompt(model, opts, prompt, "layered");
    // FLOPs of one query token at the last chunk's end: blocks of 37 tokens there (ragged, more
    // at earlier chunks), then of one token (a submission per query token).
    const perToken = 4 * c.headDim * c.nHeads * prompt.length;
    for (const budget of [37 * perToken, 1]) {
      model.llama.attentionFlopsPerSubmission = budget;
      const blocks = await afterPrompt(model, opts, prompt, "layered");
      assert.deepEqual(blocks.logits, whole.logits, `budget ${budget}: logits`);
      assert.deepEqual(blocks.state.state, whole.state.state);
      blocks.state.blobs.forEach((b, i) => assert.deepEqual(b, whole.state.blobs[i], `blob ${i}`));
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

async function fullCacheAgrees(model: LoadedModel): Promise<void> {
  // Past one chunk (256) where the model's context allows (stories260K: 512; babyllama: 256).
  const text = "Lily went to the park with her mom. She saw a big dog and a red ball. ".repeat(12);
  const n = Math.min(300, model.config.contextLength - 2);
  const prompt = model.tokenizer.encode(text).slice(0, n);
  assert.equal(prompt.length, n);
  const chunked = await afterPrompt(model, {}, prompt, "chunked");
  const layered = await afterPrompt(model, {}, prompt, "layered");
  const e = relError(layered.logits, chunked.logits);
  console.log(`full cache, ${n} tokens: logits differ by ${e}`);
  assert.ok(e < 1e-2, `logits differ by ${e}`);
  layered.state.blobs.forEach((b, i) => {
    const d = relError(f16s(b), f16s(chunked.state.blobs[i]));
    assert.ok(d < 1e-2, `blob ${i}: rows differ by ${d}`);
  });
}

Deno.test("layer-by-layer prefill, full cache: the chunked path's logits (stories260K)", async () => {
  await using model = await loadModel(sharedPath("models/stories260K.gguf"));
  await fullCacheAgrees(model);
});

Deno.test("layer-by-layer prefill, full cache: the chunked path's logits (babyllama tok105)", async () => {
  await using model = await loadModel(sharedPath("models/babyllama-tok105/model5000.bin"), {
    tokenizerPath: sharedPath("models/babyllama-tok105/tok105.bin"),
  });
  await fullCacheAgrees(model);
});

Deno.test("prompt hidden states: rows come back where they went, across segment edges, on the device and in host memory", () => {
  using device = Device.open();
  for (const where of ["device", "host"] as const) hiddenRoundTrip(device, where);
});

function hiddenRoundTrip(device: Device, where: "device" | "host"): void {
  const dim = 8;
  const tokens = 11;
  // Segments of 3 rows, so chunks of 4 straddle them.
  using hidden = new PromptHidden(device, dim, tokens, { where, segmentBytes: 3 * dim * 4 });
  using x = device.buffer(4 * dim * 4);
  const want = Float32Array.from({ length: tokens * dim }, (_, i) => i + 0.5);
  using cmd = device.commands();
  for (let t = 0; t < tokens; t += 4) {
    const n = Math.min(4, tokens - t);
    device.upload(x, want.subarray(t * dim, (t + n) * dim));
    cmd.begin();
    hidden.recordStore(cmd, x, t, n);
    cmd.end();
    device.waitSync("compute", cmd.submit());
  }
  const got = new Float32Array(tokens * dim);
  for (const [t, n] of [[1, 4], [5, 4], [9, 2], [0, 1]]) {
    cmd.begin();
    hidden.recordLoad(cmd, x, t, n);
    cmd.end();
    device.waitSync("compute", cmd.submit());
    const b = device.download(x, 0, n * dim * 4);
    got.set(new Float32Array(b.buffer, b.byteOffset, n * dim), t * dim);
  }
  assert.deepEqual(got, want, where);
  assert.throws(() => hidden.recordLoad(cmd, x, 9, 3), /outside the prompt/);
}

Deno.test("the engine picks layer by layer for long prompts under compressing policies", () => {
  const c = { nLayers: 32, nKvHeads: 8, headDim: 128 };
  assert.equal(choosePrefillOrder("full", 100_000, c, 1e9), "chunked");
  assert.equal(choosePrefillOrder("heterocache", 8192, c, null), "layered");
  assert.equal(choosePrefillOrder("snapkv", 512, c, null), "chunked");
  // 2,000 tokens of every layer's KV: 262 MB, more than half of 400 MB free.
  assert.equal(choosePrefillOrder("heterocache", 2000, c, 400e6), "layered");
  assert.equal(choosePrefillOrder("heterocache", 2000, c, 8e9), "chunked");
  // Hidden states: on the device unless they take more than a quarter of what is free.
  assert.equal(hiddenPlace(512 * 2 ** 20, 8 * 2 ** 30), "device");
  assert.equal(hiddenPlace(512 * 2 ** 20, 1 * 2 ** 30), "host");
  assert.equal(hiddenPlace(512 * 2 ** 20, null), "device");
});

Deno.test("a layer-by-layer generation reports layers and tokens, and refuses an unknown order", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await using model = await syntheticModel(dir);
    const prompt = randomPrompt(300, model.config.vocabSize, 9);
    using s = model.session({ cache: "streaming", keep: 0.5, contextTokens: 320 });
    const seen: string[] = [];
    const greedy = { temperature: 0, maxTokens: 4, ignoreEos: true };
    const layered = await s.complete(prompt, {
      ...greedy,
      prefill: "layered",
      onPrefillProgress: (done, total, pass) =>
        seen.push(`${pass?.layer}/${pass?.layers}:${done}/${total}`),
    });
    assert.deepEqual(seen, [
      "0/3:256/300",
      "0/3:300/300",
      "1/3:256/300",
      "1/3:300/300",
      "2/3:256/300",
      "2/3:300/300",
    ]);
    const chunked = await s.complete(prompt, { ...greedy, prefill: "chunked" });
    assert.equal(layered.text, chunked.text);
    await assert.rejects(
      () => s.complete(prompt, { prefill: "sideways" as "layered" }),
      /prefill must be/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
