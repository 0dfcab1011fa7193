import assert from "node:assert/strict";
import { openGguf } from "../src/gguf/reader.ts";
import { isHcError } from "../src/errors.ts";
import { PreTokenizer, preTokenizerSpec } from "../src/model/tokenizer/pretokenize.ts";
import {
  type Tokenizer,
  tokenizerFromGguf,
  tokenizerFromLlama2c,
} from "../src/model/tokenizer/mod.ts";

const MODELS = new URL("../../shared/models/", import.meta.url);
const VOCABS = new URL("ggml-vocab/", MODELS);

async function readBytes(url: URL): Promise<Uint8Array> {
  try {
    return await Deno.readFile(url);
  } catch (e) {
    throw new Error(`test data file missing or unreadable: ${url.pathname}`, { cause: e });
  }
}

async function metadataOf(url: URL): Promise<Map<string, unknown>> {
  await readBytes(url); // names the missing file if it is absent
  const f = await openGguf(url);
  try {
    return new Map(f.metadata);
  } finally {
    f.close();
  }
}

async function ggufTokenizer(url: URL): Promise<Tokenizer> {
  return tokenizerFromGguf(await metadataOf(url));
}

/** Splits .inp/.out the way llama.cpp's tests/test-tokenizer-0.cpp reads them. */
function readCases(inp: string, out: string): { text: string; ids: number[] }[] {
  const sep = "\n__ggml_vocab_test__\n";
  const inputs: string[] = [];
  for (let pos = 0; pos < inp.length;) {
    const next = inp.indexOf(sep, pos);
    if (next < 0) {
      inputs.push(inp.slice(pos));
      break;
    }
    inputs.push(inp.slice(pos, next));
    pos = next + sep.length;
  }
  const lines = out.split("\n");
  if (lines.at(-1) === "") lines.pop();
  assert.equal(inputs.length, lines.length, "input and output files have different case counts");
  return inputs.map((text, i) => {
    const line = lines[i].trim();
    return { text, ids: line.length === 0 ? [] : line.split(" ").map(Number) };
  });
}

const VOCAB_NAMES = ["llama-spm", "phi-3", "gpt-2", "mpt", "deepseek-coder"];

for (const name of VOCAB_NAMES) {
  Deno.test(`ggml-vocab ${name}: every .inp case encodes to its .out ids and decodes back`, async () => {
    const file = new URL(`ggml-vocab-${name}.gguf`, VOCABS);
    const tok = await ggufTokenizer(file);
    const dec = new TextDecoder("utf-8", { fatal: true });
    const inp = dec.decode(await readBytes(new URL(`ggml-vocab-${name}.gguf.inp`, VOCABS)));
    const out = dec.decode(await readBytes(new URL(`ggml-vocab-${name}.gguf.out`, VOCABS)));
    const cases = readCases(inp, out);
    assert.ok(cases.length >= 40, `expected the 46 llama.cpp cases, got ${cases.length}`);
    for (const { text, ids } of cases) {
      assert.deepEqual(
        tok.encode(text, { addSpecial: false }),
        ids,
        `encode ${JSON.stringify(text)}`,
      );
      // SPM adds a space prefix when encoding and llama.cpp's detokenize strips it from the first
      // token again, so the round trip is exact for both tokenizer kinds.
      assert.equal(tok.decode(ids), text, `decode of ${JSON.stringify(text)}`);
    }
  });
}

Deno.test("ggml-vocab: BOS/EOS rules and special-token parsing", async () => {
  const spm = await ggufTokenizer(new URL("ggml-vocab-llama-spm.gguf", VOCABS));
  assert.equal(spm.bos, 1);
  assert.equal(spm.eos, 2);
  assert.equal(spm.addBos, true);
  const plain = spm.encode("Hello world", { addSpecial: false });
  assert.deepEqual(spm.encode("Hello world"), [1, ...plain]);
  assert.deepEqual(spm.encode(""), [1]);
  assert.deepEqual(spm.encode("", { addSpecial: false }), []);
  // "</s>" is a control token: literal text unless parseSpecial.
  const literal = spm.encode("a</s>b", { addSpecial: false });
  assert.ok(!literal.includes(2), "control token text must not become the token by default");
  const parsed = spm.encode("a</s>b", { addSpecial: false, parseSpecial: true });
  assert.deepEqual(parsed, [
    ...spm.encode("a", { addSpecial: false }),
    2,
    ...spm.encode("b", { addSpecial: false }),
  ]);
  assert.ok(spm.isEog(2));
  assert.ok(!spm.isEog(1));
  assert.equal(spm.decode([1, ...plain, 2]), " Hello world", "BOS keeps the space after it");
  assert.equal(spm.decode([1, 2], { special: true }), "<s></s>");

  const gpt2 = await ggufTokenizer(new URL("ggml-vocab-gpt-2.gguf", VOCABS));
  assert.equal(gpt2.addBos, false);
  assert.deepEqual(gpt2.encode("Hello world"), gpt2.encode("Hello world", { addSpecial: false }));
  assert.deepEqual(gpt2.encode("<|endoftext|>", { parseSpecial: true }), [50256]);
  assert.ok(gpt2.encode("<|endoftext|>").length > 1);
  assert.ok(gpt2.isEog(50256));
  assert.equal(gpt2.eot, 50256, "EOT found by its text, as llama.cpp does");
  assert.equal(gpt2.decode([50256]), "");
  assert.equal(gpt2.decode([50256], { special: true }), "<|endoftext|>");

  const ds = await ggufTokenizer(new URL("ggml-vocab-deepseek-coder.gguf", VOCABS));
  assert.equal(ds.addBos, true);
  assert.equal(ds.encode("x")[0], 32013);
});

Deno.test("tokenizerFromGguf rejects unknown models and pre-tokenizers by name", () => {
  const base = (model: string, pre?: string) =>
    new Map<string, unknown>([
      ["tokenizer.ggml.model", model],
      ["tokenizer.ggml.tokens", ["a", "b", "ab"]],
      ["tokenizer.ggml.merges", ["a b"]],
      ...(pre === undefined ? [] : [["tokenizer.ggml.pre", pre] as [string, unknown]]),
    ]);
  assert.throws(
    () => tokenizerFromGguf(base("wordpiece-x")),
    (e) => isHcError(e, "E_TOKENIZER") && e.message.includes("wordpiece-x"),
  );
  assert.throws(
    () => tokenizerFromGguf(base("gpt2", "no-such-pre")),
    (e) => isHcError(e, "E_TOKENIZER") && e.message.includes("no-such-pre"),
  );
  assert.throws(
    () => tokenizerFromGguf(new Map([["tokenizer.ggml.model", "llama"]])),
    (e) => isHcError(e, "E_TOKENIZER"),
  );
  const tok = tokenizerFromGguf(base("gpt2", "gpt-2"));
  assert.deepEqual(tok.encode("ab"), [2]);
  assert.throws(() => tok.decode([7]), (e) => isHcError(e, "E_TOKENIZER"));
});

Deno.test("pre-tokenizer presets split like llama.cpp's regex sets", () => {
  const cases: [string, string, string[]][] = [
    ["gpt-2", "Hello world's  123!!", ["Hello", " world", "'s", " ", " 123", "!!"]],
    // U+0085 is whitespace for llama.cpp (Unicode White_Space) though not for JS \s.
    ["gpt-2", "a \u0085b", ["a", " ", "\u0085", "b"]],
    ["mpt", "x\n\n  y", ["x", "\n\n ", " y"]],
    ["llama-bpe", "Hello 12345 it'S\n\n x", ["Hello", " ", "123", "45", " it", "'S", "\n\n", " x"]],
    ["llama-bpe", "(a)...\n", ["(a", ")...\n"]],
    ["qwen2", "ab 123", ["ab", " ", "1", "2", "3"]],
    ["smollm", "x 42ab", ["x", " ", "4", "2", "ab"]],
    ["deepseek-coder", "ab, 12\n\u65e5\u672c", ["ab", ",", " ", "1", "2", "\n", "\u65e5\u672c"]],
    ["default", "a+b=1234", ["a", "+", "b", "=", "123", "4"]],
    // llama.cpp swaps non-ASCII whitespace out before the CJK rule, so U+3000 splits the run.
    ["deepseek-coder", "\u65e5\u3000\u672c", ["\u65e5", "\u3000", "\u672c"]],
    // tekken / GPT-4o: upper-then-lower runs; a non-ASCII letter counts as either case.
    ["tekken", "camelCase HTTPServer \u00c9t\u00c9", [
      "camel",
      "Case",
      " HTTPServer",
      " \u00c9t\u00c9",
    ]],
    ["gpt-4o", "WE'LL 12345", ["WE'LL", " ", "123", "45"]],
    ["deepseek-v3", "x.y 12345\u65e5\u672c", ["x", ".y", " ", "123", "45", "\u65e5\u672c"]],
  ];
  for (const [pre, text, expected] of cases) {
    const split = new PreTokenizer(preTokenizerSpec(pre)).split(text);
    assert.deepEqual(split, expected, `${pre}: ${JSON.stringify(text)}`);
  }
});

Deno.test("stories260K.gguf tokenizer matches the README facts", async () => {
  const tok = await ggufTokenizer(new URL("stories260K.gguf", MODELS));
  assert.equal(tok.vocabSize, 512);
  assert.equal(tok.bos, 1);
  assert.equal(tok.eos, 2);
  assert.deepEqual(tok.encode("Once upon a time", { addSpecial: false }), [403, 407, 261, 378]);
  assert.equal(tok.tokenText(403), "\u2581Once");
  const facts: [string, number][] = [["Once", 403], ["upon", 407], ["time", 378], ["Lily", 317], [
    "Tim",
    326,
  ]];
  for (const [word, id] of facts) {
    // The SPM space prefix turns "Once" into "▁Once".
    assert.deepEqual(tok.encode(word, { addSpecial: false }), [id]);
  }
  const ids = tok.encode("Lily and Tim");
  assert.equal(ids[0], 1);
  assert.equal(tok.decode(ids), " Lily and Tim");
  assert.equal(tok.decode(ids.slice(1)), "Lily and Tim");
});

Deno.test("streaming decode emits only whole UTF-8 characters", async () => {
  const tok = await ggufTokenizer(new URL("stories260K.gguf", MODELS));
  const text = "héllo 日本 🦙!";
  const ids = tok.encode(text, { addSpecial: false });
  // stories260K has no token for these characters, so they come out as <0xXX> byte tokens.
  assert.ok(ids.some((id) => tok.tokenText(id).startsWith("<0x")), "expected byte fallback");
  const d = tok.createDecoder();
  const chunks = ids.map((id) => d.push(id));
  chunks.push(d.flush());
  for (const c of chunks) assert.ok(!c.includes("\uFFFD"), `chunk ${JSON.stringify(c)} is broken`);
  assert.equal(chunks.join(""), " " + text, "streaming keeps the SPM prefix space");
  const llama = chunks.findIndex((c) => c.includes("🦙"));
  assert.ok(llama >= 0 && chunks.slice(llama - 3, llama).every((c) => c === ""));

  // An unfinished sequence is held back, then flushed as U+FFFD.
  const d2 = tok.createDecoder();
  const lead = tok.encode("日", { addSpecial: false }).filter((id) =>
    tok.tokenText(id).startsWith("<0x")
  );
  assert.equal(d2.push(lead[0]), "");
  assert.equal(d2.flush(), "\uFFFD");
});

Deno.test("llama2.c tok512.bin encodes like stories260K.gguf", async () => {
  const bin = await readBytes(new URL("tok512.bin", MODELS));
  const tok = tokenizerFromLlama2c(bin, 512);
  const ref = await ggufTokenizer(new URL("stories260K.gguf", MODELS));
  assert.equal(tok.tokenText(403), " Once");
  assert.equal(tok.tokenText(1), "\n<s>\n");
  const texts = [
    "Once upon a time, there was a little girl named Lily.",
    "  two spaces\nnew line\ttab ~ é 日本 🦙",
    "",
  ];
  for (const t of texts) {
    assert.deepEqual(tok.encode(t), ref.encode(t), JSON.stringify(t));
    assert.equal(tok.decode(tok.encode(t, { addSpecial: false })), t);
  }
  assert.ok(tok.isEog(2));
  assert.throws(
    () => tokenizerFromLlama2c(bin.subarray(0, 100), 512),
    (e) => isHcError(e, "E_TOKENIZER"),
  );
  assert.throws(() => tokenizerFromLlama2c(bin, 1e9), (e) => isHcError(e, "E_TOKENIZER"));
  const bad = bin.slice();
  new DataView(bad.buffer).setInt32(8, 1 << 30, true);
  assert.throws(() => tokenizerFromLlama2c(bad, 512), (e) => isHcError(e, "E_TOKENIZER"));
});

Deno.test("encoding 10k+ tokens is fast for SPM and BPE", async () => {
  const spm = await ggufTokenizer(new URL("ggml-vocab-llama-spm.gguf", VOCABS));
  const bpe = await ggufTokenizer(new URL("ggml-vocab-gpt-2.gguf", VOCABS));
  const words = ["alpha", "beta", "gamma", "tokenizer", "Ünïcödé", "数据", "12345", "x+y=z;"];
  const parts: string[] = [];
  for (let i = 0; i < 6000; i++) {
    parts.push(words[(i * 7) % words.length] + (i % 13 === 0 ? "\n" : " "));
  }
  const text = parts.join("");
  for (const tok of [spm, bpe]) {
    const t0 = performance.now();
    const ids = tok.encode(text, { addSpecial: false });
    const ms = performance.now() - t0;
    assert.ok(ids.length >= 10000, `only ${ids.length} tokens`);
    assert.ok(ms < 1000, `encoding ${ids.length} tokens took ${ms.toFixed(0)} ms`);
    assert.equal(tok.decode(ids), text);
  }
});
