/**
 * Sliding-window layers (Gemma 2/3) end to end on the synthetic models of
 * testing/llamacpp_arch_oracle.ts: the llama.cpp fixture notices a window that is ignored; a
 * prompt long enough to wrap the rings (16-token windows, rings of 16 + 255 rows) answers the
 * same whether it goes in chunks, layer by layer or one token at a time; a saved session with
 * wrapped rings continues as the original; HeteroCache and calibration mark the windowed layers.
 */
import assert from "node:assert/strict";
import { type CacheOptions, calibrate, loadModel } from "../mod.ts";
import { uniformProfile } from "../src/cache/profile/profile_io.ts";
import { writeSyntheticModel } from "../testing/synthetic_model.ts";
import { oracleTokens } from "../testing/llamacpp_oracle.ts";
import { compareWithOracle } from "../testing/llamacpp_compare.ts";
import { type ArchFixture, archSpec } from "../testing/llamacpp_arch_oracle.ts";
import { type GgufTypedValue, gv } from "../testing/gguf_writer.ts";

const fixture: ArchFixture = JSON.parse(
  await Deno.readTextFile(new URL("./fixtures/llamacpp_archs.json", import.meta.url)),
);
const SEED = fixture.seed;

async function withModel(
  spec: ReturnType<typeof archSpec>,
  fn: (path: string) => Promise<void>,
): Promise<void> {
  const path = await Deno.makeTempFile({ suffix: ".gguf" });
  try {
    await writeSyntheticModel(path, spec);
    await fn(path);
  } finally {
    await Deno.remove(path);
  }
}

Deno.test("gemma2: an engine that ignored the 16-token window would fail the fixture", async () => {
  const spec = archSpec("gemma2", SEED);
  // A window past every position attends as a global layer would.
  const metadata = spec.metadata!.map(([k, v]): [string, GgufTypedValue] =>
    k.endsWith("sliding_window") ? [k, gv.u32(1000)] : [k, v]
  );
  await withModel({ ...spec, metadata }, async (path) => {
    await using model = await loadModel(path);
    assert.deepEqual(model.config.layerWindows, [1000, 0, 1000, 0]);
    const r = await compareWithOracle(model, fixture.tokens, fixture.cases.gemma2!);
    console.log(`window ignored: ${r.summary}`);
    assert.ok(r.agree < Math.ceil(0.99 * r.clear), r.summary);
  });
});

const LONG = { ...archSpec("gemma3", SEED), contextLength: 1024 };
const PROMPT = 600;
const FORCED = 12;

Deno.test("gemma3, 600 positions over wrapped rings: chunked, layered and token-by-token agree", async () => {
  await withModel(LONG, async (path) => {
    await using model = await loadModel(path);
    assert.deepEqual(model.config.layerWindows, [16, 16, 16, 16, 16, 0]);
    const tokens = oracleTokens(SEED, PROMPT + FORCED);
    const run = async (prompt: number, prefill: "chunked" | "layered", opts: CacheOptions) => {
      using s = model.session({ ...opts, contextTokens: PROMPT + FORCED + 1 });
      const out: Float32Array[] = [];
      await s.teacherForce(tokens.slice(0, prompt), [...tokens.slice(prompt), 0], (_, l) => {
        out.push(l.slice());
      }, prefill);
      // The rings hold 16 + 255 rows whatever the context.
      const stats = s.cacheStats();
      assert.ok(stats.deviceKvBytes < 6 * 4 * 2 * 600 * 64 * 2 * 2, JSON.stringify(stats));
      return out.slice(-FORCED);
    };
    const chunked = await run(PROMPT, "chunked", { cache: "full" });
    const worst = (a: Float32Array[], b: Float32Array[]) =>
      a.reduce((w, l, i) => l.reduce((x, v, j) => Math.max(x, Math.abs(v - b[i][j])), w), 0);
    const layered = await run(PROMPT, "layered", { cache: "snapkv", tokens: PROMPT });
    const stepwise = await run(1, "chunked", { cache: "full" });
    const dl = worst(layered, chunked);
    const ds = worst(stepwise, chunked);
    console.log(`worst |dlogit|: layered snapkv keep-all ${dl.toExponential(2)}, one by one ${ds}`);
    assert.ok(dl < 1e-2 && ds < 1e-2, `layered ${dl}, one by one ${ds}`);
  });
});

Deno.test("gemma3: a session saved with wrapped rings continues as the original, every policy", async () => {
  await withModel(LONG, async (path) => {
    await using model = await loadModel(path);
    const profile = uniformProfile(model.config.nLayers, ["pivot", "satellite"], [-1, 1]);
    const text = "the cat and the dog went on a walk by the sea; ".repeat(12);
    const greedy = { temperature: 0, ignoreEos: true, maxTokens: 6 } as const;
    const dir = await Deno.makeTempDir();
    try {
      const variants: CacheOptions[] = [
        { cache: "full" },
        { cache: "snapkv", keep: 0.5 },
        { cache: "heterocache", keep: 0.5, profile },
      ];
      for (const v of variants) {
        using a = model.session({ ...v, contextTokens: 900 });
        const first = await a.complete(text, greedy);
        assert.ok(first.promptTokens > 300, `prompt of ${first.promptTokens} tokens`);
        await a.save(`${dir}/s.hcsession`);
        const next = await a.complete(" and back", { ...greedy, continue: true });
        using b = await model.restore(`${dir}/s.hcsession`, { profile });
        const again = await b.complete(" and back", { ...greedy, continue: true });
        assert.equal(again.text, next.text, v.cache);
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
});

Deno.test("gemma3: HeteroCache and calibration mark the windowed layers whole", async () => {
  await withModel(LONG, async (path) => {
    await using model = await loadModel(path);
    const profile = uniformProfile(model.config.nLayers, ["pivot", "satellite"], [-1, 1]);
    using s = model.session({ cache: "heterocache", keep: 0.5, profile, contextTokens: 600 });
    await s.complete("the cat and the dog went on a walk by the sea. ".repeat(8), {
      temperature: 0,
      maxTokens: 4,
      ignoreEos: true,
    });
    const heads = s.policy.heads();
    heads.forEach((layer, l) => {
      const want = l < 5 ? ["full", "full"] : ["pivot", "satellite"];
      assert.deepEqual(layer.map((h) => h.role), want, `layer ${l}`);
    });
    const calibrated = await calibrate(model, { promptTokens: 300, decodeSteps: 4 });
    calibrated.layers.forEach((l, i) => {
      if (i < 5) {
        assert.equal(l.window, 16);
        assert.deepEqual(l.roles, ["volatile", "volatile"]);
        assert.deepEqual(l.clusters, []);
      } else assert.equal(l.window, undefined);
    });
  });
});
