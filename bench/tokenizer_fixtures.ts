/**
 * Runs llama.cpp (node-llama-cpp's prebuilt CPU build, bench/llamacpp/tokenize.mjs) over the
 * vocabularies and texts of testing/tokenizer_oracle.ts and prints how often ours agrees per
 * vocabulary; with `--write` it stores llama.cpp's answers as
 * tests/fixtures/llamacpp_tokenizer_presets.json, which tests/tokenizer_presets_test.ts holds
 * our tokenizer against without llama.cpp.
 *
 *   (cd bench/llamacpp && npm install)   # once
 *   deno run -A bench/tokenizer_fixtures.ts [--seed N] [--write]
 */
import { parseArgs } from "node:util";
import { dirname, fromFileUrl, join } from "./paths.ts";
import { writeGguf } from "../testing/gguf_writer.ts";
import {
  GEMMA4,
  gemma4Vocab,
  GEMMA_SPM,
  gemmaVocab,
  ORACLE_PRESETS,
  oracleTexts,
  presetVocab,
  REVEALER,
  revealerVocab,
  splitPiecesOf,
  type TokenizerFixture,
} from "../testing/tokenizer_oracle.ts";
import { tokenizerFromGguf } from "../src/model/tokenizer/mod.ts";

const HERE = dirname(fromFileUrl(import.meta.url));
export const FIXTURE = join(HERE, "..", "tests", "fixtures", "llamacpp_tokenizer_presets.json");

const { values } = parseArgs({
  args: Deno.args,
  options: { seed: { type: "string", default: "1616" }, write: { type: "boolean" } },
});
const seed = Number(values.seed);
const texts = await oracleTexts(seed);
const tmp = await Deno.makeTempDir({ prefix: "hc-tok-oracle-" });
try {
  const vocabs = new Map<string, Awaited<ReturnType<typeof presetVocab>>>();
  for (const pre of ORACLE_PRESETS) vocabs.set(pre, await presetVocab(pre));
  const pieces = splitPiecesOf(texts);
  for (const pre of ORACLE_PRESETS) vocabs.set(pre + REVEALER, await revealerVocab(pre, pieces));
  vocabs.set(GEMMA_SPM, await gemmaVocab());
  vocabs.set(GEMMA4, await gemma4Vocab());
  const models = [];
  for (const [name, metadata] of vocabs) {
    const path = join(tmp, `${name}.gguf`);
    await writeGguf(path, { metadata });
    models.push({ name, path });
  }
  const jobPath = join(tmp, "job.json");
  await Deno.writeTextFile(jobPath, JSON.stringify({ texts, models }));
  const out = await new Deno.Command("node", {
    args: ["tokenize.mjs", jobPath],
    cwd: join(HERE, "llamacpp"),
    stdout: "piped",
    stderr: "inherit",
  }).output();
  if (!out.success) throw new Error("llama.cpp tokenizer oracle failed (see above)");
  const { llamaCpp, answers } = JSON.parse(new TextDecoder().decode(out.stdout)) as {
    llamaCpp: string;
    answers: Record<string, number[][]>;
  };
  console.log(`${llamaCpp}; seed ${seed}; ${texts.length} texts per vocabulary`);
  console.log("| vocabulary | cases equal to llama.cpp |\n|---|---|");
  for (const [name, metadata] of vocabs) {
    const tok = tokenizerFromGguf(new Map(metadata.map(([k, v]) => [k, v.value])));
    let same = 0;
    const diffs: string[] = [];
    texts.forEach((t, i) => {
      const ours = tok.encode(t, { addSpecial: false });
      if (ours.join(" ") === answers[name][i].join(" ")) same++;
      else if (diffs.length < 3) {
        diffs.push(
          `  ${JSON.stringify(t)}: ours ${ours.join(" ")} / llama.cpp ${
            answers[name][i].join(" ")
          }`,
        );
      }
    });
    console.log(`| ${name} | ${same}/${texts.length} |`);
    for (const d of diffs) console.log(d);
  }
  if (values.write) {
    const fixture: TokenizerFixture = {
      llamaCpp,
      seed,
      pieces,
      answers: Object.fromEntries(
        Object.entries(answers).map(([k, v]) => [k, v.map((ids) => ids.join(" "))]),
      ),
    };
    await Deno.writeTextFile(FIXTURE, JSON.stringify(fixture, null, 1) + "\n");
    console.log(`wrote ${FIXTURE}`);
  }
} finally {
  await Deno.remove(tmp, { recursive: true });
}
