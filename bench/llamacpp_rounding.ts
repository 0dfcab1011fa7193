/**
 * How much of the gap to llama.cpp's weight-type fixture (tests/fixtures/llamacpp_weight_types.json)
 * llama.cpp's activation rounding explains, measured on the TS reference model (no device):
 *
 * - plain: the reference in f32 with f64 sums, activations as they are;
 * - rounded: each product's input rounded as llama.cpp's CPU backend rounds it for the weight's
 *   type (testing/activation_rounding.ts), with the first teacher-forced position where the
 *   top-1 probability differs from llama.cpp's by more than 0.0005 (before it: equal to 4
 *   decimals);
 * - floor: the rounded reference against itself with every product input perturbed by a
 *   relative 1e-6 (a few f32 ulps, what another summation order gives), worst over 4 seeds.
 *
 * Gaps are over llama.cpp's clear positions (top-2 margin >= 0.1), as the fixture test counts.
 * Usage: deno run -A bench/llamacpp_rounding.ts [TYPE...]
 */
import { openModelSource } from "../src/model/source.ts";
import { ReferenceModel, type ReferenceOptions } from "../testing/reference_model.ts";
import { writeSyntheticModel } from "../testing/synthetic_model.ts";
import {
  ORACLE_TYPES,
  type OracleAnswer,
  type OracleFixture,
  oracleSpec,
  type OracleType,
} from "../testing/llamacpp_oracle.ts";
import { CLEAR_MARGIN } from "../testing/llamacpp_compare.ts";

const FIXTURE = new URL("../tests/fixtures/llamacpp_weight_types.json", import.meta.url);
const fixture: OracleFixture = JSON.parse(await Deno.readTextFile(FIXTURE));
const SEEDS = 4;

function top1(logits: Float32Array, V: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < logits.length / V; i++) {
    const x = logits.subarray(i * V, (i + 1) * V);
    let b = 0;
    for (let j = 1; j < V; j++) if (x[j] > x[b]) b = j;
    let z = 0;
    for (const v of x) z += Math.exp(v - x[b]);
    out.push(1 / z);
  }
  return out;
}

/** Mean and worst |a - b| over llama.cpp's clear positions. */
function gap(a: number[], b: number[], answer: OracleAnswer): { mean: number; worst: number } {
  let sum = 0, worst = 0, n = 0;
  answer.top.forEach(([, p1, , p2], i) => {
    if (p1 - p2 < CLEAR_MARGIN) return;
    const d = Math.abs(a[i] - b[i]);
    sum += d;
    worst = Math.max(worst, d);
    n++;
  });
  return { mean: sum / n, worst };
}

const types = (Deno.args.length ? Deno.args : ORACLE_TYPES) as OracleType[];
const rows: string[][] = [];
for (const type of types) {
  const answer = fixture.types[type];
  if (!answer) throw new Error(`the fixture has no ${type}`);
  const llama = answer.top.map(([, p1]) => p1);
  const path = await Deno.makeTempFile({ suffix: ".gguf" });
  try {
    await writeSyntheticModel(path, oracleSpec(type, fixture.seed));
    using src = await openModelSource(path);
    const run = async (opts: ReferenceOptions) => {
      const m = await ReferenceModel.load(src, { kvF16: true, ...opts });
      return top1(m.forward(fixture.tokens, 0, { allLogits: true }), m.config.vocabSize);
    };
    const plain = gap(await run({}), llama, answer);
    const roundedP = await run({ roundActivations: true });
    const rounded = gap(roundedP, llama, answer);
    let exact = roundedP.findIndex((p, i) => Math.abs(p - llama[i]) > 0.0005);
    if (exact < 0) exact = roundedP.length;
    let floor = 0;
    for (let seed = 1; seed <= SEEDS; seed++) {
      const noisy = await run({ roundActivations: true, inputNoise: { relative: 1e-6, seed } });
      floor = Math.max(floor, gap(noisy, roundedP, answer).worst);
    }
    const f = (x: number) => x.toFixed(4);
    rows.push([
      type,
      f(plain.mean),
      f(plain.worst),
      f(rounded.mean),
      f(rounded.worst),
      String(exact),
      f(floor),
    ]);
    console.log(rows.at(-1)!.join("\t"));
  } finally {
    await Deno.remove(path);
  }
}
const head = [
  "type",
  "plain mean",
  "plain worst",
  "rounded mean",
  "rounded worst",
  "equal to",
  "floor",
];
console.log(
  "\n| " + head.join(" | ") + " |\n|" + head.map(() => "---").join("|") + "|\n" +
    rows.map((r) => "| " + r.join(" | ") + " |").join("\n"),
);
