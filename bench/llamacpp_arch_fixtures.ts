/**
 * Runs llama.cpp (node-llama-cpp's prebuilt CPU build, bench/llamacpp/oracle.mjs) on the
 * architecture cases of testing/llamacpp_arch_oracle.ts and prints what it answered; with
 * `--write` it stores that as tests/fixtures/llamacpp_archs.json, which
 * tests/llamacpp_arch_test.ts holds the engine against (rebuilding each GGUF from the seed).
 *
 *   (cd bench/llamacpp && npm install)   # once
 *   deno run -A bench/llamacpp_arch_fixtures.ts [--seed N] [--only a,b] [--write]
 */
import { parseArgs } from "node:util";
import { dirname, fromFileUrl, join } from "./paths.ts";
import { writeSyntheticModel } from "../testing/synthetic_model.ts";
import { runOracle } from "./llamacpp_oracle_run.ts";
import { oracleTokens } from "../testing/llamacpp_oracle.ts";
import {
  ARCH_CASE_NAMES,
  type ArchCase,
  type ArchFixture,
  archSpec,
} from "../testing/llamacpp_arch_oracle.ts";

const HERE = dirname(fromFileUrl(import.meta.url));
export const FIXTURE = join(HERE, "..", "tests", "fixtures", "llamacpp_archs.json");

const { values } = parseArgs({
  args: Deno.args,
  options: {
    seed: { type: "string", default: "1616" },
    only: { type: "string" },
    write: { type: "boolean" },
  },
});
const seed = Number(values.seed);
const names = values.only
  ? values.only.split(",").map((n) => {
    if (!(ARCH_CASE_NAMES as string[]).includes(n)) throw new Error(`no case ${n}`);
    return n as ArchCase;
  })
  : ARCH_CASE_NAMES;
const tokens = oracleTokens(seed);
const tmp = await Deno.makeTempDir({ prefix: "hc-arch-oracle-" });
try {
  const models = [];
  for (const name of names) {
    const path = join(tmp, `${name}.gguf`);
    await writeSyntheticModel(path, archSpec(name, seed));
    models.push({ name, path });
  }
  const { llamaCpp, answers } = await runOracle(tmp, tokens, models);
  for (const name of names) {
    const a = answers[name];
    const clear = a.top.filter((t: number[]) => t[1] - t[3] >= 0.1).length;
    const p1 = a.top.reduce((s: number, t: number[]) => s + t[1], 0) / a.top.length;
    console.log(
      `${name.padEnd(16)} clear margin at ${clear}/${a.top.length}, mean top-1 p ${
        p1.toFixed(3)
      }, greedy ${a.greedy.slice(0, 8).join(" ")} ...`,
    );
  }
  if (values.write) {
    // --only refreshes some cases and keeps the others of the same seed.
    let cases: ArchFixture["cases"] = {};
    try {
      const old: ArchFixture = JSON.parse(await Deno.readTextFile(FIXTURE));
      if (old.seed === seed) cases = old.cases;
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
    for (const name of names) cases[name] = answers[name];
    const fixture: ArchFixture = {
      generator: "testing/llamacpp_arch_oracle.ts via bench/llamacpp_arch_fixtures.ts",
      seed,
      llamaCpp,
      positions: tokens.length,
      tokens,
      cases,
    };
    await Deno.mkdir(dirname(FIXTURE), { recursive: true });
    await Deno.writeTextFile(FIXTURE, JSON.stringify(fixture) + "\n");
    console.log(`wrote ${FIXTURE}`);
  }
} finally {
  await Deno.remove(tmp, { recursive: true });
}
