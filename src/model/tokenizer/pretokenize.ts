/**
 * Byte-level BPE pre-tokenizers, chosen by GGUF `tokenizer.ggml.pre` the way llama.cpp's
 * `llm_tokenizer_bpe` chooses its `regex_exprs`. Each preset is a list of regexes applied in turn:
 * every regex re-splits the pieces left by the previous one, and the text between matches stays a
 * piece of its own (llama.cpp `unicode_regex_split`).
 *
 * JS RegExp with the `u` flag has \p{L}, \p{N}, \p{P} and lookahead, so the patterns run natively.
 * Only `\s` needs emulating: llama.cpp's whitespace is Unicode White_Space (its tables come from
 * Python `regex`), while JS `\s` adds U+FEFF and lacks U+0085, so WS below spells the set out.
 */
import { HcError } from "../../errors.ts";

const WS = "\\t-\\r \\x85\\xA0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000";
const SPACE = `[${WS}]`;
const NOT_SPACE = `[^${WS}]`;

/** GPT-2: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
const GPT2 = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+" +
  `| ?[^${WS}\\p{L}\\p{N}]+|${SPACE}+(?!${NOT_SPACE})|${SPACE}+`;

/** Llama 3 / Qwen 2 family; they differ only in how many digits make one piece. */
function llama3Like(digits: string): string {
  return "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])" +
    `|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}${digits}| ?[^${WS}\\p{L}\\p{N}]+[\\r\\n]*` +
    `|${SPACE}*[\\r\\n]+|${SPACE}+(?!${NOT_SPACE})|${SPACE}+`;
}

export interface PreTokenizerSpec {
  readonly regexes: readonly string[];
  /** Emit a pre-token that is itself a vocabulary entry without running merges (llama.cpp). */
  readonly ignoreMerges: boolean;
  /** Default for add_bos when the GGUF does not say. */
  readonly addBos: boolean;
}

const spec = (regexes: string[], ignoreMerges = false, addBos = false): PreTokenizerSpec => ({
  regexes,
  ignoreMerges,
  addBos,
});

const DEFAULT = spec([
  "[\\p{P}$+<=>^~|]+",
  GPT2,
  "\\p{N}+",
  "[0-9][0-9][0-9]",
]);
const GPT2_SPEC = spec([GPT2]);
const LLAMA3 = spec([llama3Like("{1,3}")], true, true);
const LLAMA3_REGEX_ONLY = spec([llama3Like("{1,3}")]);
const QWEN2 = spec([llama3Like("")]);
const DEEPSEEK_CODER = spec([
  "[\\r\\n]",
  `${SPACE}?\\p{L}+`,
  `${SPACE}?\\p{P}+`,
  "[\\u4E00-\\u9FA5\\u0800-\\u4E00\\uAC00-\\uD7FF]+",
  "\\p{N}",
]);
const FALCON = spec(["[\\p{P}$+<=>^~|`]+", GPT2, "[0-9][0-9][0-9]"]);
const STARCODER = spec(["\\p{N}", GPT2]);
const BLOOM_LIKE = `[^(${WS}|.,!?\\u2026\\u3002\\uFF0C\\u3001\\u0964\\u06D4\\u060C)]+`;
const BLOOM = spec([` ?${BLOOM_LIKE}`]);
const VIKING = spec([` ?${BLOOM_LIKE}`, "\\p{N}"]);

const PRESETS: ReadonlyMap<string, PreTokenizerSpec> = new Map<string, PreTokenizerSpec>([
  ["default", DEFAULT],
  ...["llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2"]
    .map((n): [string, PreTokenizerSpec] => [n, LLAMA3]),
  ["dbrx", LLAMA3_REGEX_ONLY],
  ["smaug-bpe", LLAMA3_REGEX_ONLY],
  ...["qwen2", "deepseek-r1-qwen", "stablelm2", "megrez", "hunyuan", "kormo"]
    .map((n): [string, PreTokenizerSpec] => [n, QWEN2]),
  ["deepseek-coder", DEEPSEEK_CODER],
  ["falcon", FALCON],
  ...["gpt-2", "mpt", "olmo", "phi-2", "jais", "gigachat", "exaone4", "mellum", "a.x-4.0"]
    .map((n): [string, PreTokenizerSpec] => [n, GPT2_SPEC]),
  ...["jina-es", "jina-de", "jina-v2-es", "jina-v2-de", "trillion"]
    .map((n): [string, PreTokenizerSpec] => [n, GPT2_SPEC]),
  ...["starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b"]
    .map((n): [string, PreTokenizerSpec] => [n, STARCODER]),
  ...["bloom", "poro-chat", "gpt3-finnish"].map((n): [string, PreTokenizerSpec] => [n, BLOOM]),
  ["viking", VIKING],
]);

/** The names `tokenizerFromGguf` accepts for `tokenizer.ggml.pre` (BPE vocabularies). */
export const KNOWN_PRE_TOKENIZERS: readonly string[] = [...PRESETS.keys()];

export function preTokenizerSpec(name: string): PreTokenizerSpec {
  const found = PRESETS.get(name);
  if (!found) {
    throw new HcError(
      "E_TOKENIZER",
      `unknown pre-tokenizer '${name}' (tokenizer.ggml.pre); known: ${
        KNOWN_PRE_TOKENIZERS.join(", ")
      }`,
    );
  }
  return found;
}

export class PreTokenizer {
  readonly #regexes: RegExp[];

  constructor(s: PreTokenizerSpec) {
    this.#regexes = s.regexes.map((r) => new RegExp(r, "gu"));
  }

  /** Splits `text` into pre-tokens; their concatenation is always `text`. */
  split(text: string): string[] {
    let pieces = text.length > 0 ? [text] : [];
    for (const re of this.#regexes) pieces = splitPieces(pieces, re);
    return pieces;
  }
}

function splitPieces(pieces: readonly string[], re: RegExp): string[] {
  const out: string[] = [];
  for (const piece of pieces) {
    re.lastIndex = 0;
    let last = 0;
    for (let m = re.exec(piece); m !== null; m = re.exec(piece)) {
      const start = m.index;
      const end = start + m[0].length;
      if (end === start) {
        // An empty match yields an empty word in llama.cpp, which tokenizes to nothing.
        re.lastIndex = start + ((piece.codePointAt(start) ?? 0) > 0xffff ? 2 : 1);
        continue;
      }
      if (start > last) out.push(piece.slice(last, start));
      out.push(m[0]);
      last = end;
    }
    if (last < piece.length) out.push(last === 0 ? piece : piece.slice(last));
  }
  return out;
}
