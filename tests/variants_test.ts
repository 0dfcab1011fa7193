/**
 * The whole model under both kernel variant sets (Device.variants): on lavapipe "auto" takes the
 * "cpu" set, so without these tests no forward pass would ever run the kernels a GPU takes
 * (generic matvec at 32-lane workgroups, lanes decode attention, tiled prefill, lanes scores,
 * the 1024-lane top-k). Each set must reproduce the references, and the two sets must agree
 * with each other within f16 tolerance, with compressed caches too. A broken GPU-only kernel
 * must be noticed.
 */
import assert from "node:assert/strict";
import { isHcError, loadModel, type VariantSet } from "../mod.ts";
import type { LoadedModel } from "../src/engine/model.ts";
import type { CacheOptions } from "../src/cache/mod.ts";
import type { HeteroCache } from "../src/cache/heterocache/heterocache.ts";
import { uniformProfile } from "../src/cache/profile/profile_io.ts";
import { openModelSource } from "../src/model/source.ts";
import { serve } from "../src/server/mod.ts";
import { Device } from "../src/vk/mod.ts";
import { ReferenceModel } from "../testing/reference_model.ts";
import { satelliteRefresh } from "../testing/reference_cache.ts";
import { relError, sharedPath } from "./helpers.ts";
import { compileShader } from "../vk-native/build.ts";

const SETS: readonly VariantSet[] = ["gpu", "cpu"];
const STORIES = () => sharedPath("models/stories260K.gguf");
const BABY = () => sharedPath("models/babyllama-tok105/model5000.bin");
const BABY_TOK = () => sharedPath("models/babyllama-tok105/tok105.bin");

const PROMPT =
  "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. " +
  "One day, she saw a big red ball. She wanted to play with it, but it was too high. Her mom said";

const profileFor = (nLayers: number) =>
  uniformProfile(nLayers, ["satellite", "pivot", "satellite", "anchor"], [1.2, -1, 0.8, 1]);

async function forcedLogits(
  model: LoadedModel,
  opts: CacheOptions,
  prompt: number[],
  forced: number[],
): Promise<Float32Array[]> {
  using s = model.session({ ...opts, contextTokens: prompt.length + forced.length + 1 });
  const out: Float32Array[] = [];
  await s.teacherForce(prompt, [...forced, 0], (_, l) => out.push(l.slice()));
  return out;
}

function tokens(n: number, vocab: number, seed: number): number[] {
  return Array.from({ length: n }, (_, i) => 3 + ((i * 7919 + seed * 104729) % (vocab - 3)));
}

/** The reference's logits for the prompt's last position and each forced step. */
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

function assertClose(
  got: Float32Array[],
  want: Float32Array[],
  tolerance: number,
  what: string,
): void {
  assert.equal(got.length, want.length, what);
  got.forEach((g, i) => {
    const e = relError(g, want[i]);
    assert.ok(e < tolerance, `${what}: step ${i} differs by ${e.toExponential(2)}`);
  });
}

for (const variants of SETS) {
  Deno.test(`${variants} variants: greedy from BOS reproduces llama2.c's text`, async () => {
    await using model = await loadModel(STORIES(), { variants });
    assert.equal(model.device.variants, variants);
    assert.equal(model.info().variants, variants);
    const greedy = Deno.readTextFileSync(sharedPath("models/stories260K.greedy-n200.txt"));
    using session = model.session();
    const summary = await session.complete("", { temperature: 0, maxTokens: 200 });
    assert.equal(summary.text.trimStart(), greedy.replace(/\n$/, ""));
  });

  Deno.test(`${variants} variants: both real models match the reference (long prompt, full cache)`, async () => {
    for (
      const [path, vocab, tok] of [[STORIES(), 512, undefined], [BABY(), 105, BABY_TOK()]] as const
    ) {
      // 150 prompt tokens: several tiles of the tiled prefill, several blocks of the decode.
      const prompt = [1, ...tokens(150, vocab, 5)];
      const forced = tokens(4, vocab, 6);
      await using model = await loadModel(path, { variants, tokenizerPath: tok });
      // The gpu set's prompt attention is the GPU kernel (shaders/attn_prefill.comp).
      assert.equal(model.llama.kernels.prefill.variant === "tiled", variants === "gpu");
      const got = await forcedLogits(model, {}, prompt, forced);
      const want = await referenceLogits(path, prompt, forced, tok);
      assertClose(got.slice(0, want.length), want, 1e-3, `${variants} ${path}`);
    }
  });

  Deno.test(`${variants} variants: refreshed satellites hold the host rows the scores select`, async () => {
    await using model = await loadModel(STORIES(), { variants });
    using s = model.session({
      cache: "per-step",
      keep: 0.4,
      profile: profileFor(model.config.nLayers),
      compat: true,
      record: true,
      contextTokens: 200,
    });
    await s.complete(PROMPT, { temperature: 0, maxTokens: 4 });
    const policy = s.policy as HeteroCache;
    await policy.landRefreshes();
    assert.ok(policy.refreshLog.length >= 2 * model.config.nLayers);
    // The cpu set on a CPU device lands refreshes by a gather into the device rows; the gpu set
    // by the staged copy a GPU takes: both paths are checked here.
    const direct = variants === "cpu" && model.device.info.type === "cpu";
    const landed = s.cacheStats().directLandings;
    assert.ok(direct ? landed > 0 : landed === 0, `${variants}: ${landed} direct landings`);
    using full = model.session({ contextTokens: 200 });
    const prompt = model.tokenizer.encode(PROMPT);
    await full.teacherForce(prompt, [], () => {});
    const rowBytes = model.config.headDim * 2;
    const latest = new Map<string, (typeof policy.refreshLog)[number]>();
    for (const r of policy.refreshLog) latest.set(`${r.layer}/${r.head}`, r);
    for (const r of latest.values()) {
      assert.deepEqual(
        Array.from(r.positions),
        Array.from(satelliteRefresh(r.scores, r.caps, "compat")[r.index]),
      );
      const dev = policy.caches[r.layer].location(r.head, 0);
      const ref = full.policy.caches[r.layer].location(r.head, 0);
      const got = model.device.download(dev.k, dev.byteOffset, r.positions.length * rowBytes);
      const all = model.device.download(ref.k, ref.byteOffset, prompt.length * rowBytes);
      // A refresh moves only the rows that change: device row i holds position held[i].
      assert.deepEqual(Array.from(r.held).sort((a, b) => a - b), Array.from(r.positions));
      r.held.forEach((p, i) =>
        assert.deepEqual(
          got.subarray(i * rowBytes, (i + 1) * rowBytes),
          all.subarray(p * rowBytes, (p + 1) * rowBytes),
          `layer ${r.layer} head ${r.head} row ${i}`,
        )
      );
    }
  });
}

/**
 * Teacher-forced logits at keep 0.5 under both sets, HeteroCache in its default mode and in
 * compat: a refresh lands at a fixed step in both, so the two sets read the same rows at the
 * same steps and any difference is the kernels'. per-step runs in compat: refreshing every
 * step, its by-score ranking (default mode) meets near-ties at the budget's edge that the two
 * sets' last-bit score differences (~1e-4) break differently, a selection change rather than a
 * kernel error; compat's first-by-position pick within the kernel's top-M does not.
 */
for (
  const [name, path, tok] of [["stories260K", STORIES, null], [
    "babyllama",
    BABY,
    BABY_TOK,
  ]] as const
) {
  Deno.test(`gpu and cpu variants agree at keep 0.5 (${name}: snapkv, heterocache, per-step)`, async () => {
    const runs = new Map<VariantSet, Float32Array[][]>();
    for (const variants of SETS) {
      await using model = await loadModel(path(), { variants, tokenizerPath: tok?.() });
      const profile = profileFor(model.config.nLayers);
      // babyllama's tokens are characters: a third of the prompt keeps it about as long.
      const prompt = model.tokenizer.encode(name === "babyllama" ? PROMPT.slice(0, 70) : PROMPT);
      const forced = tokens(12, model.config.vocabSize, 8);
      const out: Float32Array[][] = [];
      for (
        const opts of [
          { cache: "snapkv", keep: 0.5 },
          { cache: "heterocache", keep: 0.5, profile },
          { cache: "heterocache", keep: 0.5, profile, compat: true },
          { cache: "per-step", keep: 0.5, profile, compat: true },
        ] as CacheOptions[]
      ) {
        out.push(await forcedLogits(model, opts, prompt, forced));
      }
      runs.set(variants, out);
    }
    const [gpu, cpu] = [runs.get("gpu")!, runs.get("cpu")!];
    gpu.forEach((g, i) => assertClose(g, cpu[i], 2e-3, `${name} policy ${i}`));
  });
}

Deno.test("the server on the gpu variants answers as the engine on the cpu variants", async () => {
  await using cpuModel = await loadModel(STORIES(), { variants: "cpu" });
  const expected: string[] = [];
  for (const cache of ["full", "snapkv"] as const) {
    using s = cpuModel.session(cache === "full" ? {} : { cache, keep: 0.5 });
    expected.push((await s.complete(PROMPT, { temperature: 0, maxTokens: 24 })).text);
  }
  const gpuModel = await loadModel(STORIES(), { variants: "gpu" });
  const running = await serve(gpuModel, { port: 0, ownsModel: true });
  try {
    await running.server.whenReady();
    for (const [i, cache] of (["full", "snapkv"] as const).entries()) {
      const res = await fetch(`${running.url}/v1/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({
          prompt: PROMPT,
          max_tokens: 24,
          temperature: 0,
          cache,
          keep: cache === "full" ? undefined : 0.5,
        }),
      });
      const body = await res.json();
      assert.equal(res.status, 200, JSON.stringify(body));
      assert.equal(body.choices[0].text, expected[i], cache);
    }
  } finally {
    await running.shutdown();
  }
});

/** Device.open's variant set in a child process whose environment sets HC_VK_VARIANTS (the
 * environment is process-wide, and test modules share one process). */
async function variantsUnderEnv(value: string): Promise<string> {
  const device = new URL("../src/vk/mod.ts", import.meta.url).href;
  const code = `import { Device } from "${device}";
    try { using d = Device.open(); console.log(d.variants); }
    catch (e) { console.log(e.code + ": " + e.message); }`;
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["eval", "--no-check", code],
    env: { HC_VK_VARIANTS: value },
    stdout: "piped",
    stderr: "inherit",
  }).output();
  return new TextDecoder().decode(r.stdout).trim();
}

Deno.test("variant choice: HC_VK_VARIANTS is read when a device opens; bad values are errors", async () => {
  assert.equal(await variantsUnderEnv("gpu"), "gpu");
  assert.equal(await variantsUnderEnv("cpu"), "cpu");
  assert.match(await variantsUnderEnv("fast"), /^E_BAD_REQUEST: HC_VK_VARIANTS must be one of/);
  assert.throws(
    () => Device.open(undefined, { variants: "fast" as "gpu" }),
    (e) => isHcError(e, "E_BAD_REQUEST") && /auto, gpu, cpu/.test(e.message),
  );
  await assert.rejects(
    loadModel(STORIES(), { variants: "gpu " as "gpu" }),
    (e) => isHcError(e, "E_BAD_REQUEST"),
  );
  using dev = Device.open(undefined, { variants: "gpu" });
  assert.equal(dev.variants, "gpu");
  assert.ok(dev.gpuLanes >= 32 && dev.gpuLanes <= 64);
  await assert.rejects(
    loadModel(STORIES(), { device: dev, variants: "cpu" }),
    (e) => isHcError(e, "E_BAD_REQUEST") && /"gpu" set/.test(e.message),
  );
});

/** Compiles attn_decode.comp with HC_TEST_BREAK (a reduction that loses rows) into `dir`. */
async function buildBrokenDecode(dir: string): Promise<void> {
  for (const [name, sg] of [["attn_decode", false], ["attn_decode__sg", true]] as const) {
    const defines = { HC_TEST_BREAK: 1, ...(sg ? { HC_SUBGROUP: 1 } : {}) };
    const r = await compileShader("attn_decode.comp", `${dir}/${name}.spv`, defines);
    assert.ok(r.ok, r.out);
  }
}

Deno.test("a broken GPU-only kernel (lanes decode attention) fails the gpu whole-model check", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await buildBrokenDecode(dir);
    const prompt = [1, ...tokens(40, 512, 1)];
    const forced = tokens(3, 512, 2);
    const want = await referenceLogits(STORIES(), prompt, forced);
    const errors = new Map<VariantSet, number>();
    for (const variants of SETS) {
      using device = Device.open(undefined, { variants, shaderDir: dir });
      await using model = await loadModel(STORIES(), { device });
      const got = await forcedLogits(model, {}, prompt, forced);
      // Decode steps only: the prompt's logits come from prefill attention.
      errors.set(variants, Math.max(...want.slice(1).map((w, i) => relError(got[i + 1], w))));
    }
    assert.ok(errors.get("cpu")! < 1e-3, `cpu set: ${errors.get("cpu")}`);
    assert.ok(errors.get("gpu")! > 1e-2, `gpu set did not notice: ${errors.get("gpu")}`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
