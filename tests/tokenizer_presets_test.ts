/**
 * The pre-tokenizer presets and the Gemma-style SentencePiece settings against llama.cpp's own
 * answers (tests/fixtures/llamacpp_tokenizer_presets.json, written by
 * bench/tokenizer_fixtures.ts): the vocabularies and texts are rebuilt here from the seed and
 * ../shared, so no llama.cpp is needed.
 */
import assert from "node:assert/strict";
import { tokenizerFromGguf } from "../src/model/tokenizer/mod.ts";
import { KNOWN_PRE_TOKENIZERS } from "../src/model/tokenizer/mod.ts";
import {
  GEMMA4,
  gemma4Vocab,
  GEMMA_SPM,
  gemmaVocab,
  ORACLE_PRESETS,
  oracleTexts,
  presetVocab,
  RANDOM_CASES,
  REVEALER,
  revealerVocab,
  type TokenizerFixture,
} from "../testing/tokenizer_oracle.ts";
import type { GgufTypedValue } from "../testing/gguf_writer.ts";

const FIXTURE = new URL("./fixtures/llamacpp_tokenizer_presets.json", import.meta.url);
const fixture: TokenizerFixture = JSON.parse(await Deno.readTextFile(FIXTURE));
const texts = await oracleTexts(fixture.seed);

function agreement(name: string, md: [string, GgufTypedValue][]): string[] {
  const tok = tokenizerFromGguf(new Map(md.map(([k, v]) => [k, v.value])));
  const expected = fixture.answers[name];
  assert.ok(expected, `fixture has no answers for ${name}`);
  assert.equal(expected.length, texts.length, `${name}: fixture and texts differ in count`);
  const wrong: string[] = [];
  texts.forEach((t, i) => {
    const ours = tok.encode(t, { addSpecial: false }).join(" ");
    if (ours !== expected[i]) {
      wrong.push(`${JSON.stringify(t)}: ours [${ours}], llama.cpp [${expected[i]}]`);
    }
  });
  return wrong;
}

Deno.test("tokenizer fixture covers llama.cpp's 46 strings and the seeded random ones", () => {
  assert.equal(texts.length, 46 + RANDOM_CASES + 1);
  const names = Object.keys(fixture.answers).sort();
  const want = [
    ...ORACLE_PRESETS,
    ...ORACLE_PRESETS.map((p) => p + REVEALER),
    GEMMA_SPM,
    GEMMA4,
  ].sort();
  assert.deepEqual(names, want);
  for (const p of ORACLE_PRESETS) assert.ok(KNOWN_PRE_TOKENIZERS.includes(p), p);
});

for (const pre of ORACLE_PRESETS) {
  Deno.test(`pre-tokenizer ${pre}: every text tokenizes as llama.cpp does`, async () => {
    const wrong = agreement(pre, await presetVocab(pre));
    wrong.push(...agreement(pre + REVEALER, await revealerVocab(pre, fixture.pieces)));
    assert.deepEqual(wrong, [], `${wrong.length} of ${2 * texts.length} differ`);
  });
}

Deno.test("Gemma-style SentencePiece (no space prefix, turn and user tokens) as llama.cpp", async () => {
  const md = await gemmaVocab();
  assert.deepEqual(agreement(GEMMA_SPM, md), []);
  const tok = tokenizerFromGguf(new Map(md.map(([k, v]) => [k, v.value])));
  const ids = tok.encode("Hello world");
  assert.equal(ids[0], tok.bos, "Gemma adds BOS");
  assert.equal(tok.decode(ids.slice(1)), "Hello world", "no space prefix to strip or add");
  const turn = tok.encode("<start_of_turn>user\n", { addSpecial: false, parseSpecial: true });
  assert.equal(tok.tokenText(turn[0]), "<start_of_turn>");
  assert.ok(tok.isEog(tok.encode("<end_of_turn>", { addSpecial: false, parseSpecial: true })[0]));
});

Deno.test("Gemma 4 tokenizer (BPE over raw text, \u2581 spaces, <0xXX> bytes) as llama.cpp", async () => {
  const md = await gemma4Vocab();
  assert.deepEqual(agreement(GEMMA4, md), []);
  const tok = tokenizerFromGguf(new Map(md.map(([k, v]) => [k, v.value])));
  assert.equal(tok.addBos, true, "llama.cpp adds BOS for Gemma 4 although the GGUF says no");
  texts.forEach((t, i) => {
    const ids = fixture.answers[GEMMA4][i];
    const decoded = tok.decode(ids === "" ? [] : ids.split(" ").map(Number));
    assert.equal(decoded, t, `decode of ${JSON.stringify(t)}`);
  });
});
