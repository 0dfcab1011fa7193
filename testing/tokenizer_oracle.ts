/**
 * What llama.cpp tokenizes as the oracle for the pre-tokenizer presets and the SentencePiece
 * handling (bench/tokenizer_fixtures.ts records its answers in tests/fixtures/; the test
 * tests/tokenizer_presets_test.ts compares ours without llama.cpp). Everything is a pure function
 * of the seed and the vocabularies in ../shared/models/ggml-vocab.
 *
 * A preset's own vocabulary is mostly not at hand, so each BPE preset runs on gpt-2's byte-level
 * vocabulary with `tokenizer.ggml.pre` set to it: llama.cpp then applies that preset's split
 * rules, and the ids differ only where the splits do.
 */
import { openGguf } from "../src/gguf/reader.ts";
import { type GgufValue, GgufValueType } from "../src/gguf/reader.ts";
import type { GgufTypedValue } from "./gguf_writer.ts";
import { byteEncode } from "../src/model/tokenizer/bpe.ts";
import { PreTokenizer, preTokenizerSpec } from "../src/model/tokenizer/pretokenize.ts";
import { mulberry32 } from "./rng.ts";

export const VOCAB_DIR = new URL("../../shared/models/ggml-vocab/", import.meta.url);

/** The presets the fixture covers: every distinct rule set, new names first. */
export const ORACLE_PRESETS = [
  "deepseek-llm",
  "deepseek-v3",
  "tekken",
  "gpt-4o",
  "llama4",
  "qwen35",
  "deepseek-coder",
  "default",
  "llama-bpe",
  "dbrx",
  "qwen2",
  "falcon",
  "gpt-2",
  "starcoder",
  "bloom",
  "viking",
  "ufakzeka",
  "seed-coder",
  "bailingmoe",
  "laguna",
] as const;

/**
 * A Gemma 4-style vocabulary (`tokenizer.ggml.model` gemma4: BPE over raw text with "▁" for
 * spaces), made from llama-spm's pieces: each piece of two or more characters becomes the merge
 * of two shorter pieces, ranked by the piece's score as SentencePiece's BPE trainer made them.
 */
export const GEMMA4 = "gemma4";

export async function gemma4Vocab(): Promise<[string, GgufTypedValue][]> {
  const md = await vocabMetadata("ggml-vocab-llama-spm.gguf");
  const get = (key: string) => md.find(([k]) => k === key)![1].value as GgufValue[];
  const tokens = get("tokenizer.ggml.tokens") as string[];
  const scores = get("tokenizer.ggml.scores") as number[];
  const types = get("tokenizer.ggml.token_type") as number[];
  const ids = new Map(tokens.map((t, i) => [t, i]));
  const merges: { merge: string; score: number; id: number }[] = [];
  tokens.forEach((t, id) => {
    const cps = [...t];
    if (types[id] !== 1 || cps.length < 2) return;
    // The split whose weaker half scores best: the merge the trainer most plausibly made.
    let best: [string, number] | null = null;
    for (let k = 1; k < cps.length; k++) {
      const a = ids.get(cps.slice(0, k).join(""));
      const b = ids.get(cps.slice(k).join(""));
      if (a === undefined || b === undefined) continue;
      const weaker = Math.min(scores[a], scores[b]);
      if (best === null || weaker > best[1]) best = [`${tokens[a]} ${tokens[b]}`, weaker];
    }
    if (best) merges.push({ merge: best[0], score: scores[id], id });
  });
  merges.sort((x, y) => y.score - x.score || x.id - y.id);
  // Gemma 4 has newline-run tokens no merge builds; llama.cpp takes such a run whole.
  const runs = ["\n\n", "\n\n\n"];
  const out = md.map(([k, v]): [string, GgufTypedValue] =>
    k === "tokenizer.ggml.tokens"
      ? [k, { ...v, value: [...tokens, ...runs] } as GgufTypedValue]
      : k === "tokenizer.ggml.scores"
      ? [k, { ...v, value: [...scores, ...runs.map(() => 0)] } as GgufTypedValue]
      : k === "tokenizer.ggml.token_type"
      ? [k, { ...v, value: [...types, ...runs.map(() => 1)] } as GgufTypedValue]
      : k === "llama.vocab_size"
      ? [k, { type: GgufValueType.UINT32, value: tokens.length + runs.length }]
      : k === "tokenizer.ggml.model"
      ? [k, { type: GgufValueType.STRING, value: "gemma4" }]
      : k === "tokenizer.ggml.pre"
      ? [k, { type: GgufValueType.STRING, value: "gemma4" }]
      : k === "tokenizer.ggml.add_bos_token"
      ? [k, { type: GgufValueType.BOOL, value: false }] // llama.cpp overrides it for Gemma 4
      : [k, v]
  );
  out.push(["tokenizer.ggml.merges", {
    type: GgufValueType.ARRAY,
    elemType: GgufValueType.STRING,
    value: merges.map((m) => m.merge),
  }]);
  return out;
}

/** A Gemma-style SentencePiece vocabulary (llama-spm's pieces, Gemma's settings), by name. */
export const GEMMA_SPM = "gemma-spm";
/** Tokens appended to llama-spm's to make it Gemma-like: [text, GGUF token_type]. */
export const GEMMA_EXTRA_TOKENS: readonly [string, number][] = [
  ["<start_of_turn>", 3],
  ["<end_of_turn>", 3],
  ["<table>", 4],
  ["\n\n", 4],
  ["\t\t", 4],
];

export const RANDOM_CASES = 64;

export const rng = mulberry32;

/** Runs of one kind each; a case strings several together, so the kinds meet at the joins. */
const POOLS: readonly (readonly string[])[] = [
  ["Hello", "WORLD", "camelCase", "iPhone", "HTTPServer", "it's", "WE'LL", "don't", "x", "A"],
  ["0", "7", "42", "123", "2024", "1234567", "3.14", "1,000", "\u0663\u0664", "\uFF11\uFF12"],
  [" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n ", "\u00A0", "\u3000", "\u2009", "\u0085"],
  ["\u1680", "\u202F", "\u205F", "\u2028", "\u200A", " \u3000 ", "\v", "\f"],
  [".", ",", "!?", "...", "(", ")", "[x]", "{}", '"', "'", "-", "--", "/", "\\", "_", "@#"],
  ["$", "+", "<=>", "^", "`", "|", "~", "%", "&", "*", "=", "\u00A9", "\u20AC", "\u00B1"],
  ["caf\u00E9", "na\u00EFve", "\u00C9COLE", "\u00DFtra\u00DFe", "\u0141\u00F3d\u017A"],
  [
    "\u03B1\u03B2\u03B3",
    "\u0394\u03AD\u03BB\u03C4\u03B1",
    "\u041F\u0440\u0438\u0432\u0435\u0442",
    "\u043C\u0438\u0440",
  ],
  ["\u65E5\u672C\u8A9E", "\u4E2D\u6587", "\u6F22\u5B57", "\u4E00", "\u9FA5", "\u9FA6"],
  ["\u3072\u3089\u304C\u306A", "\u30AB\u30BF\u30AB\u30CA", "\u30FC", "\uFF01", "\u3002", "\u3001"],
  [
    "\uD55C\uAD6D\uC5B4",
    "\uC548\uB155",
    "\u0645\u0631\u062D\u0628\u0627",
    "\u05E9\u05DC\u05D5\u05DD",
  ],
  [
    "\u0928\u092E\u0938\u094D\u0924\u0947",
    "\u0E2A\u0E27\u0E31\u0E2A\u0E14\u0E35",
    "e\u0301",
    "a\u0308\u0304",
  ],
  [
    "\u{1F999}",
    "\u{1F600}",
    "\u{1F44D}\u{1F3FD}",
    "\u{1F468}\u200D\u{1F469}\u200D\u{1F467}",
    "\u2764\uFE0F",
  ],
  ["\u{10400}\u{10428}", "\u{1D400}", "\u{20000}", "\u0800", "\u0E01", "\u2160", "\u00BD"],
  ["\u201Cquote\u201D", "\u2018s", "\u2014", "\u2026", "\uFF08\uFF09", "\u300C\u300D"],
];

/** Seeded strings mixing scripts, digits, whitespace and emoji; `RANDOM_CASES` of them. */
export function randomStrings(seed: number, n = RANDOM_CASES): string[] {
  const r = rng(seed);
  const out: string[] = [];
  for (let i = 0; i < n; i++) {
    const parts = 2 + Math.floor(r() * 10);
    let s = "";
    for (let j = 0; j < parts; j++) {
      const pool = POOLS[Math.floor(r() * POOLS.length)];
      s += pool[Math.floor(r() * pool.length)];
    }
    out.push(s);
  }
  return out;
}

/** llama.cpp's 46 test strings, split as tests/test-tokenizer-0.cpp reads the .inp file. */
export function splitInp(inp: string): string[] {
  const sep = "\n__ggml_vocab_test__\n";
  const parts = inp.split(sep);
  // The file ends with a separator, which starts no further case.
  if (parts.at(-1) === "") parts.pop();
  return parts;
}

export async function llamaCppTestStrings(): Promise<string[]> {
  const inp = await Deno.readTextFile(new URL("ggml-vocab-gpt-2.gguf.inp", VOCAB_DIR));
  return splitInp(inp);
}

/** The texts a fixture of this seed covers: llama.cpp's strings, the random ones, a few more. */
export async function oracleTexts(seed: number): Promise<string[]> {
  return [
    ...await llamaCppTestStrings(),
    ...randomStrings(seed),
    "<start_of_turn>user\nHi<end_of_turn>\n<table>\n\n\t\tx",
  ];
}

/** The metadata of a shared vocabulary with its stored types, in file order. */
export async function vocabMetadata(file: string): Promise<[string, GgufTypedValue][]> {
  const f = await openGguf(new URL(file, VOCAB_DIR));
  try {
    const out: [string, GgufTypedValue][] = [];
    for (const [key, value] of f.metadata) {
      const t = f.metadataTypes.get(key)!;
      if (t.type === GgufValueType.ARRAY) {
        const items = ArrayBuffer.isView(value)
          ? Array.from(value as unknown as ArrayLike<number>)
          : value as GgufValue[];
        out.push([key, { type: t.type, elemType: t.elemType as never, value: items }]);
      } else out.push([key, { type: t.type as never, value }]);
    }
    return out;
  } finally {
    f.close();
  }
}

/** gpt-2's vocabulary with `tokenizer.ggml.pre` set to `pre`. */
export async function presetVocab(pre: string): Promise<[string, GgufTypedValue][]> {
  return (await vocabMetadata("ggml-vocab-gpt-2.gguf")).map(([k, v]) =>
    k === "tokenizer.ggml.pre" ? [k, { type: GgufValueType.STRING, value: pre }] : [k, v]
  );
}

/** llama-spm's vocabulary made Gemma-like: no space prefix, Gemma's turn and user tokens. */
export async function gemmaVocab(): Promise<[string, GgufTypedValue][]> {
  const md = await vocabMetadata("ggml-vocab-llama-spm.gguf");
  const extend = (key: string, more: GgufValue[]): void => {
    const entry = md.find(([k]) => k === key)!;
    entry[1] = {
      ...entry[1],
      value: [...entry[1].value as GgufValue[], ...more],
    } as GgufTypedValue;
  };
  extend("tokenizer.ggml.tokens", GEMMA_EXTRA_TOKENS.map(([t]) => t));
  extend("tokenizer.ggml.scores", GEMMA_EXTRA_TOKENS.map(() => 0));
  extend("tokenizer.ggml.token_type", GEMMA_EXTRA_TOKENS.map(([, t]) => t));
  const out = md.map(([k, v]): [string, GgufTypedValue] =>
    k === "general.name"
      ? [k, { type: GgufValueType.STRING, value: "gemma-3-like" }]
      : k === "llama.vocab_size"
      ? [k, { type: GgufValueType.UINT32, value: 32000 + GEMMA_EXTRA_TOKENS.length }]
      : [k, v]
  );
  out.push(["tokenizer.ggml.add_space_prefix", { type: GgufValueType.BOOL, value: false }]);
  return out;
}

/**
 * gpt-2's merges rarely cross the places where two presets split differently, so its ids alone
 * barely tell splits apart. Appending `pieces` as tokens, each built by a chain of merges ranked
 * before gpt-2's, makes a pre-token come out whole where it can: a different split then gives
 * different ids. The result still holds gpt-2's whole vocabulary, ids unchanged.
 */
export async function revealerVocab(
  pre: string,
  pieces: readonly string[],
): Promise<[string, GgufTypedValue][]> {
  const md = await presetVocab(pre);
  const get = (key: string) => md.find(([k]) => k === key)![1].value as GgufValue[];
  const tokens = get("tokenizer.ggml.tokens") as string[];
  const known = new Set(tokens);
  const newTokens: string[] = [];
  const chains: string[] = [];
  const seenMerge = new Set<string>();
  // Longest pieces first, each chain whole: a piece's own merges then outrank the prefixes of
  // shorter pieces that would otherwise cut it.
  const encoded = pieces.map((p) => [...byteEncode(p)]).sort((a, b) => b.length - a.length);
  for (const s of encoded) {
    for (let k = 1; k < s.length; k++) {
      const left = s.slice(0, k).join("");
      const merged = left + s[k];
      const merge = `${left} ${s[k]}`;
      if (!known.has(merged)) {
        known.add(merged);
        newTokens.push(merged);
      }
      if (seenMerge.has(merge)) continue;
      seenMerge.add(merge);
      chains.push(merge);
    }
  }
  const merges = [...chains, ...get("tokenizer.ggml.merges") as string[]];
  const types = get("tokenizer.ggml.token_type") as number[];
  return md.map(([k, v]): [string, GgufTypedValue] => {
    if (k === "tokenizer.ggml.tokens") {
      return [k, { ...v, value: [...tokens, ...newTokens] } as GgufTypedValue];
    }
    if (k === "tokenizer.ggml.token_type") {
      return [k, { ...v, value: [...types, ...newTokens.map(() => 1)] } as GgufTypedValue];
    }
    if (k === "tokenizer.ggml.merges") return [k, { ...v, value: merges } as GgufTypedValue];
    return [k, v];
  });
}

/** Every piece any covered preset splits the texts into (ours), for `revealerVocab`. */
export function splitPiecesOf(texts: readonly string[]): string[] {
  const all = new Set<string>();
  for (const pre of ORACLE_PRESETS) {
    const splitter = new PreTokenizer(preTokenizerSpec(pre));
    for (const t of texts) for (const p of splitter.split(t)) all.add(p);
  }
  return [...all].sort();
}

/** The suffix naming a preset's revealer vocabulary in the fixture. */
export const REVEALER = "+pieces";

export interface TokenizerFixture {
  llamaCpp: string;
  seed: number;
  /** The pieces `revealerVocab` appended (the generator's own splits when it ran). */
  pieces: string[];
  /**
   * Per vocabulary: a preset (gpt-2's vocabulary with that pre-tokenizer), the same plus
   * REVEALER, GEMMA_SPM or GEMMA4; llama.cpp's ids per text, space-separated.
   */
  answers: Record<string, string[]>;
}
