/**
 * The engine against llama.cpp, for every weight type: tests/fixtures/llamacpp_weight_types.json
 * holds what llama.cpp (node-llama-cpp's CPU build, bench/llamacpp_fixtures.ts) answered on the
 * synthetic models of testing/llamacpp_oracle.ts; each GGUF is rebuilt here from the fixture's
 * seed, so llama.cpp is not needed at test time.
 *
 * Checked per type, on the device: teacher-forced top-1 agreement at >= 99% of the positions
 * where llama.cpp's top-2 margin is clear (p1 - p2 >= 0.1), top-1 probabilities within 0.02 at
 * each of them, and the 64-token greedy continuation equal to llama.cpp's, or parting only at a
 * step where llama.cpp's top two are within 0.02 of each other (a tie: llama.cpp rounds
 * activations to 8 bits before each quantized product, we do not, so such a step may go either
 * way; docs/design.md, "Numerics against llama.cpp", and testing/llamacpp_oracle.ts for how the
 * models are conditioned for the comparison).
 */
import assert from "node:assert/strict";
import { loadModel } from "../mod.ts";
import { writeSyntheticModel } from "../testing/synthetic_model.ts";
import { compareWithOracle } from "../testing/llamacpp_compare.ts";
import {
  ORACLE_TYPES,
  type OracleFixture,
  oracleSpec,
  oracleTokens,
} from "../testing/llamacpp_oracle.ts";

/** The bound on each clear position's top-1 probability. */
const PROB_TOLERANCE = 0.02;
const FIXTURE = new URL("./fixtures/llamacpp_weight_types.json", import.meta.url);
const fixture: OracleFixture = JSON.parse(await Deno.readTextFile(FIXTURE));

Deno.test("the fixture is the one its seed generates", () => {
  assert.deepEqual(fixture.tokens, oracleTokens(fixture.seed));
  assert.deepEqual(Object.keys(fixture.types).sort(), [...ORACLE_TYPES].sort());
});

for (const type of ORACLE_TYPES) {
  Deno.test(`${type}: teacher-forced top-1 and greedy continuation agree with llama.cpp`, async () => {
    const answer = fixture.types[type];
    assert.ok(answer, `fixture lacks ${type}`);
    const path = await Deno.makeTempFile({ suffix: ".gguf" });
    try {
      await writeSyntheticModel(path, oracleSpec(type, fixture.seed));
      await using model = await loadModel(path);
      const r = await compareWithOracle(model, fixture.tokens, answer);
      const what = `${type}: ${r.summary}`;
      assert.ok(r.clear >= 64, `${type}: only ${r.clear} clear positions in the fixture`);
      assert.ok(r.agree >= Math.ceil(0.99 * r.clear), what);
      assert.ok(r.worstP <= PROB_TOLERANCE, what);
      // The greedy continuations may part only where llama.cpp's own top two are within the
      // probability tolerance: a tie that neither engine's rounding decides.
      assert.ok(
        r.partMargin === null || r.partMargin < PROB_TOLERANCE,
        `${what} (ours ${r.ours.slice(0, r.greedySame + 2)}, llama.cpp ${
          answer.greedy.slice(0, r.greedySame + 2)
        })`,
      );
      console.log(what);
    } finally {
      await Deno.remove(path);
    }
  });
}
