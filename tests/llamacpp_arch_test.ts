/**
 * The engine against llama.cpp, per architecture: tests/fixtures/llamacpp_archs.json holds what
 * llama.cpp (node-llama-cpp's CPU build, bench/llamacpp_arch_fixtures.ts) answered on the
 * synthetic F32 models of testing/llamacpp_arch_oracle.ts; each GGUF is rebuilt here from the
 * fixture's seed, so llama.cpp is not needed at test time.
 *
 * Checked per case, on the device: teacher-forced top-1 agreement at >= 99% of the positions
 * where llama.cpp's top-2 margin is clear, top-1 probabilities within 0.02 at each of them, and
 * the whole 64-token greedy continuation equal to llama.cpp's.
 */
import assert from "node:assert/strict";
import { loadModel } from "../mod.ts";
import { writeSyntheticModel } from "../testing/synthetic_model.ts";
import { ORACLE_GREEDY, oracleTokens } from "../testing/llamacpp_oracle.ts";
import { compareWithOracle } from "../testing/llamacpp_compare.ts";
import { ARCH_CASE_NAMES, type ArchFixture, archSpec } from "../testing/llamacpp_arch_oracle.ts";

const FIXTURE = new URL("./fixtures/llamacpp_archs.json", import.meta.url);
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
      // F32 weights leave nothing to round: the whole greedy continuation must match, near-ties
      // included (our top-1 probabilities sit within 1e-4 of llama.cpp's).
      assert.equal(r.greedySame, ORACLE_GREEDY, what);
      console.log(what);
    } finally {
      await Deno.remove(path);
    }
  });
}
