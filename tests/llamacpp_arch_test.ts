/**
 * The engine against llama.cpp, per architecture: tests/fixtures/llamacpp_archs.json holds what
 * llama.cpp (node-llama-cpp's CPU build, bench/llamacpp_arch_fixtures.ts) answered on the
 * synthetic F32 models of testing/llamacpp_arch_oracle.ts; each GGUF is rebuilt here from the
 * fixture's seed, so llama.cpp is not needed at test time.
 *
 * Checked per case, on the device: teacher-forced top-1 agreement at >= 99% of the positions
 * where llama.cpp's top-2 margin is clear, top-1 probabilities within 0.02 at each of them, and
 * the 64-token greedy continuation equal to llama.cpp's (up to a step where llama.cpp's top
 * two probabilities are within 0.001, which only rounding decides).
 */
import assert from "node:assert/strict";
import { loadModel } from "../mod.ts";
import { openModelSource } from "../src/model/source.ts";
import { writeSyntheticModel } from "../testing/synthetic_model.ts";
import { ORACLE_GREEDY, oracleTokens } from "../testing/llamacpp_oracle.ts";
import { compareWithOracle } from "../testing/llamacpp_compare.ts";
import { ARCH_CASE_NAMES, type ArchFixture, archSpec } from "../testing/llamacpp_arch_oracle.ts";

const FIXTURE = new URL("./fixtures/llamacpp_archs.json", import.meta.url);
const TIE = 0.001;
const fixture: ArchFixture = JSON.parse(await Deno.readTextFile(FIXTURE));

Deno.test("the architecture fixture is the one its seed generates, with every case", () => {
  assert.deepEqual(fixture.tokens, oracleTokens(fixture.seed));
  assert.deepEqual(Object.keys(fixture.cases).sort(), [...ARCH_CASE_NAMES].sort());
});

for (const name of ARCH_CASE_NAMES) {
  Deno.test(`${name}: teacher-forced top-1 and greedy continuation agree with llama.cpp`, async () => {
    const answer = fixture.cases[name];
    assert.ok(answer, `fixture lacks ${name}`);
    const path = await Deno.makeTempFile({ suffix: ".gguf" });
    try {
      await writeSyntheticModel(path, archSpec(name, fixture.seed));
      await using model = await loadModel(path);
      const r = await compareWithOracle(model, fixture.tokens, answer);
      const what = `${name}: ${r.summary}`;
      assert.ok(r.clear >= 64, `${name}: only ${r.clear} clear positions in the fixture`);
      assert.ok(r.agree >= Math.ceil(0.99 * r.clear), what);
      assert.ok(r.worstP <= 0.02, what);
      // F32 weights leave little to round (our top-1 probabilities sit within ~1e-4 of
      // llama.cpp's), so the greedy continuations must match up to a step where llama.cpp's
      // top two are within TIE of each other, which summation order alone may flip.
      let tie = answer.greedyMargin.findIndex((m) => m < TIE);
      if (tie < 0) tie = ORACLE_GREEDY;
      assert.ok(r.greedySame >= tie, `${what}; llama.cpp's first exact tie (< ${TIE}) at ${tie}`);
      console.log(what);
    } finally {
      await Deno.remove(path);
    }
  });
}

Deno.test("mistral3's attention temperature stops the context at the original one", async () => {
  const path = await Deno.makeTempFile({ suffix: ".gguf" });
  try {
    const spec = archSpec("mistral3", fixture.seed);
    const contextOf = async (metadata: typeof spec.metadata) => {
      await writeSyntheticModel(path, { ...spec, contextLength: 4096, metadata });
      using s = await openModelSource(path);
      return s.config.contextLength;
    };
    // Below position 512 llama.cpp's temperature factor is exactly 1; past it, it would vary.
    assert.equal(await contextOf(spec.metadata), 512);
    const without = spec.metadata!.filter(([k]) => !k.endsWith("temperature_scale"));
    assert.equal(await contextOf(without), 4096);
  } finally {
    await Deno.remove(path);
  }
});
