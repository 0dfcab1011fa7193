/**
 * Runs llama.cpp (node-llama-cpp's prebuilt CPU build, bench/llamacpp/oracle.mjs) on the
 * synthetic models of testing/llamacpp_oracle.ts, one per weight type, and prints what it
 * answered; with `--write` it stores that as tests/fixtures/llamacpp_weight_types.json, which
 * tests/llamacpp_fixture_test.ts holds the engine against (rebuilding each GGUF from the seed,
 * so the tests need no llama.cpp).
 *
 *   (cd bench/llamacpp && npm install)   # once
 *   deno run -A bench/llamacpp_fixtures.ts [--seed N] [--write]
 */
import { parseArgs } from "node:util";
import { dirname, fromFileUrl, join } from "./paths.ts";
import { writeSyntheticModel } from "../testing/synthetic_model.ts";
import { runOracle } from "./llamacpp_oracle_run.ts";
import {
  ORACLE_TYPES,
  type OracleFixture,
  oracleSpec,
  oracleTokens,
} from "../testing/llamacpp_oracle.ts";

const HERE = dirname(fromFileUrl(import.meta.url));
export const FIXTURE = join(HERE, "..", "tests", "fixtures", "llamacpp_weight_types.json");

const { values } = parseArgs({
  args: Deno.args,
  options: { seed: { type: "string", default: "1616" }, write: { type: "boolean" } },
});
const seed = Number(values.seed);
const tokens = oracleTokens(seed);
const tmp = await Deno.makeTempDir({ prefix: "hc-oracle-" });
try {
  const models = [];
  for (const type of ORACLE_TYPES) {
    const path = join(tmp, `${type}.gguf`);
    await writeSyntheticModel(path, oracleSpec(type, seed));
    models.push({ name: type, path });
  }
  const { llamaCpp, answers } = await runOracle(tmp, tokens, models);
  const fixture: OracleFixture = {
    generator: "testing/llamacpp_oracle.ts via bench/llamacpp_fixtures.ts",
    seed,
    llamaCpp,
    positions: tokens.length,
    tokens,
    types: answers,
  };
  for (const type of ORACLE_TYPES) {
    const a = answers[type];
    const clear = a.top.filter((t: number[]) => t[1] - t[3] >= 0.1).length;
    const p1 = a.top.reduce((s: number, t: number[]) => s + t[1], 0) / a.top.length;
    console.log(
      `${type.padEnd(7)} clear margin at ${clear}/${a.top.length}, mean top-1 p ${
        p1.toFixed(3)
      }, greedy ${a.greedy.slice(0, 8).join(" ")} ...`,
    );
  }
  if (values.write) {
    await Deno.mkdir(dirname(FIXTURE), { recursive: true });
    await Deno.writeTextFile(FIXTURE, JSON.stringify(fixture) + "\n");
    console.log(`wrote ${FIXTURE}`);
  }
} finally {
  await Deno.remove(tmp, { recursive: true });
}
