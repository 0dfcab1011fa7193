/**
 * Does llama.cpp agree with its own fixture? Runs bench/llamacpp/batching.mjs (node-llama-cpp's
 * CPU build) on the weight-type oracle's synthetic models and compares the teacher-forced top-1
 * probabilities of one 128-token batch and of one token at a time with
 * tests/fixtures/llamacpp_weight_types.json (which llama.cpp wrote from one batch), over the
 * fixture's clear positions. With quantized weights the two evaluation orders round the
 * activations of slightly different f32 sums, and their answers part as far as ours do from
 * the fixture (docs/design.md, "Numerics against llama.cpp").
 *
 *   (cd bench/llamacpp && npm install)   # once
 *   deno run -A bench/llamacpp_batching.ts [TYPE...]   # about 1.5 min per type on 2 cores
 */
import { dirname, fromFileUrl, join } from "./paths.ts";
import { writeSyntheticModel } from "../testing/synthetic_model.ts";
import {
  ORACLE_TYPES,
  ORACLE_VOCAB,
  type OracleFixture,
  oracleSpec,
  type OracleType,
} from "../testing/llamacpp_oracle.ts";
import { CLEAR_MARGIN } from "../testing/llamacpp_compare.ts";
import { runLlamaCppJob } from "./llamacpp_node.ts";

const HERE = dirname(fromFileUrl(import.meta.url));
const fixture: OracleFixture = JSON.parse(
  await Deno.readTextFile(join(HERE, "..", "tests", "fixtures", "llamacpp_weight_types.json")),
);
const types = (Deno.args.length ? Deno.args : ORACLE_TYPES) as OracleType[];
const tmp = await Deno.makeTempDir({ prefix: "hc-batching-" });
try {
  const models = [];
  for (const type of types) {
    const path = join(tmp, `${type}.gguf`);
    await writeSyntheticModel(path, oracleSpec(type, fixture.seed));
    models.push({ name: type, path });
  }
  const job = { tokens: fixture.tokens, vocab: ORACLE_VOCAB, models };
  const out = await runLlamaCppJob("batching.mjs", job, tmp) as Record<
    string,
    Record<string, [number, number][]>
  >;
  console.log("| type | run | top-1 agrees | mean gap | worst gap | equal (< 0.0005) to |");
  console.log("|---|---|---|---|---|---|");
  for (const type of types) {
    const top = fixture.types[type]!.top;
    for (const mode of ["batch", "single"]) {
      const r: [number, number][] = out[type][mode];
      let n = 0, agree = 0, sum = 0, worst = 0;
      top.forEach(([t1, p1, , p2], i) => {
        if (p1 - p2 < CLEAR_MARGIN) return;
        n++;
        if (r[i][0] === t1) agree++;
        const d = Math.abs(r[i][1] - p1);
        sum += d;
        worst = Math.max(worst, d);
      });
      let equal = r.findIndex(([, p], i) => Math.abs(p - top[i][1]) > 0.0005);
      if (equal < 0) equal = r.length;
      console.log(
        `| ${type} | ${mode === "batch" ? "one batch" : "a token at a time"} | ${agree}/${n} | ` +
          `${(sum / n).toFixed(4)} | ${worst.toFixed(4)} | ${equal} |`,
      );
    }
  }
} finally {
  await Deno.remove(tmp, { recursive: true });
}
