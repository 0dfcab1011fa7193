/**
 * llama.cpp's activation rounding (testing/activation_rounding.ts) against llama.cpp itself: with
 * each product's input rounded to the weight type's vec_dot_type, the TS reference model gives
 * llama.cpp's teacher-forced top-1 probabilities (tests/fixtures/llamacpp_weight_types.json) to
 * 1e-5 over the first positions for every quantized type, and a rounding one step off, or none,
 * misses by more than 0.001 (0.002-0.016 on the fixture's models). Later positions drift apart
 * however exact the rounding: see bench/llamacpp_rounding.ts and docs/design.md ("Numerics
 * against llama.cpp").
 */
import assert from "node:assert/strict";
import { openModelSource } from "../src/model/source.ts";
import { GgmlType } from "../src/gguf/types.ts";
import { ReferenceModel, type ReferenceOptions } from "../testing/reference_model.ts";
import { writeSyntheticModel } from "../testing/synthetic_model.ts";
import {
  ORACLE_TYPES,
  type OracleFixture,
  oracleSpec,
  type OracleType,
} from "../testing/llamacpp_oracle.ts";
import {
  activationRoundingOf,
  q8_1Corrections,
  roundActivations,
} from "../testing/activation_rounding.ts";

const FIXTURE = new URL("./fixtures/llamacpp_weight_types.json", import.meta.url);
const fixture: OracleFixture = JSON.parse(await Deno.readTextFile(FIXTURE));
/** Positions compared: before the first f32 summation-order difference can flip a rounding. */
const POSITIONS = 6;
const TOLERANCE = 0.001;

/** Every fixture type but the plain ones. */
const QUANTIZED: OracleType[] = ORACLE_TYPES.filter((t) => !["F32", "F16", "BF16"].includes(t));

Deno.test("Q8_0 blocks: scale amax/127 stored as f16, ties to even", () => {
  const x = new Float32Array(32);
  x[0] = 127; // d = 1, so q = x exactly
  x[1] = -2.5; // a tie: rounds to the even -2
  x[2] = 3.5; // rounds to 4
  x[3] = 0.4;
  const y = roundActivations("q8_0", x);
  assert.deepEqual([...y.subarray(0, 4)], [127, -2, 4, 0]);
  // amax 1: d = 1/127 is stored as f16 (0.007873535...), which every value is a multiple of.
  x.fill(0);
  x[0] = 1;
  x[1] = 0.5;
  const z = roundActivations("q8_0", x);
  const dh = 0.00787353515625;
  assert.equal(z[0], Math.fround(127 * dh));
  assert.equal(z[1], Math.fround(64 * dh)); // 63.5 ties to the even 64
});

Deno.test("Q8_K blocks: the signed largest value maps to -127, the other sign clamps at 127", () => {
  const x = new Float32Array(256);
  x[0] = -2; // the largest magnitude: iscale = -127 / -2, d = 2 / 127 (kept in f32)
  x[1] = 1;
  x[2] = 2; // equal magnitude, other sign: 127 as well
  const y = roundActivations("q8_K", x);
  const d = Math.fround(1 / Math.fround(127 / 2));
  assert.equal(y[0], Math.fround(-127 * d));
  assert.equal(y[1], Math.fround(64 * d)); // 63.5 ties to even
  assert.equal(y[2], Math.fround(127 * d));
  assert.deepEqual([...roundActivations("q8_K", new Float32Array(256))], new Array(256).fill(0));
});

Deno.test("Q8_1's stored sum differs from the sum of the rounded values by f16 rounding only", () => {
  const x = new Float32Array(64).map((_, i) => Math.sin(i * 1.7) * 3);
  const c = q8_1Corrections(x);
  const y = roundActivations("q8_1", x);
  for (let b = 0; b < 2; b++) {
    let s = 0;
    for (let j = 0; j < 32; j++) s += y[b * 32 + j];
    assert.ok(Math.abs(c[b]) <= Math.abs(s) * 2 ** -10, `block ${b}: ${c[b]} vs ${s}`);
  }
});

Deno.test("every weight type maps to llama.cpp's vec_dot_type", () => {
  const want: Record<string, string> = {
    F32: "none",
    F16: "f16",
    BF16: "bf16",
    Q8_0: "q8_0",
    Q4_0: "q8_0",
    Q5_0: "q8_0",
    IQ4_NL: "q8_0",
    Q4_1: "q8_1",
    Q5_1: "q8_1",
    Q2_K: "q8_K",
    Q3_K: "q8_K",
    Q4_K: "q8_K",
    Q5_K: "q8_K",
    Q6_K: "q8_K",
    IQ4_XS: "q8_K",
  };
  for (const [t, r] of Object.entries(want)) {
    assert.equal(activationRoundingOf(GgmlType[t as keyof typeof GgmlType]), r, t);
  }
});

type Rounding = ReferenceOptions["roundActivations"];

/** Per rounding, the worst |top-1 probability - llama.cpp's| over the first POSITIONS
 * teacher-forced positions. */
async function worstGaps(type: OracleType, roundings: Rounding[]): Promise<number[]> {
  const path = await Deno.makeTempFile({ suffix: ".gguf" });
  try {
    await writeSyntheticModel(path, oracleSpec(type, fixture.seed));
    using src = await openModelSource(path);
    const results: number[] = [];
    for (const r of roundings) {
      const m = await ReferenceModel.load(src, { kvF16: true, roundActivations: r });
      const V = m.config.vocabSize;
      const logits = m.forward(fixture.tokens.slice(0, POSITIONS), 0, { allLogits: true });
      let worst = 0;
      for (let i = 0; i < POSITIONS; i++) {
        const l = logits.subarray(i * V, (i + 1) * V);
        let b = 0;
        for (let j = 1; j < V; j++) if (l[j] > l[b]) b = j;
        let z = 0;
        for (const v of l) z += Math.exp(v - l[b]);
        worst = Math.max(worst, Math.abs(1 / z - fixture.types[type]!.top[i][1]));
      }
      results.push(worst);
    }
    return results;
  } finally {
    await Deno.remove(path);
  }
}

for (const type of QUANTIZED) {
  Deno.test(`${type}: the reference with llama.cpp's rounding gives llama.cpp's first answers`, async () => {
    const cases: [string, Rounding][] = [
      ["llama.cpp's rounding", true],
      ["no rounding", false],
      ["126 levels", { levels: 126, q8_1Sum: true }],
      ["128 levels", { levels: 128, q8_1Sum: true }],
    ];
    if (type === "Q4_1" || type === "Q5_1") {
      cases.push(["Q8_1 without its stored sum", { levels: 127, q8_1Sum: false }]);
    }
    const gaps = await worstGaps(type, cases.map(([, r]) => r));
    const what = cases.map(([n], i) => `${n} ${gaps[i].toFixed(5)}`).join(", ");
    assert.ok(gaps[0] <= TOLERANCE, `${type}: ${what}`);
    for (let i = 1; i < cases.length; i++) {
      assert.ok(gaps[i] > TOLERANCE, `${type}: ${cases[i][0]} should miss llama.cpp: ${what}`);
    }
    console.log(`${type}: ${what}`);
  });
}
