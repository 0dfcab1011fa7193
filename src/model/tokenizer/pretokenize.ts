/**
 * Byte-level BPE pre-tokenizers, chosen by GGUF `tokenizer.ggml.pre` the way llama.cpp's
 * `llm_tokenizer_bpe` chooses its `regex_exprs`. Each preset is a list of regexes in llama.cpp's
 * spelling; `regex_split.ts` runs them with llama.cpp's matching rules (which differ by pattern).
 */
import { HcError } from "../../errors.ts";
import type { BpeSpelling } from "./bpe.ts";
import { compileSteps, nativeStep, regexSplit, regexStep, type SplitStep } from "./regex_split.ts";

const CONTRACTIONS = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])";

/** GPT-2, as llama.cpp's hand-written splitter does it (unmatched whitespace stays a piece). */
const GPT2 = nativeStep(
  "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+",
);
/** The GPT-2 pattern where llama.cpp gives it to std::regex as one step among others. */
const GPT2_REGEX = regexStep(
  "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)",
);

/** Llama 3 / Qwen 2 family; they differ in how many digits make one piece. */
function llama3Like(digits: string): SplitStep {
  return nativeStep(
    `${CONTRACTIONS}|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}${digits}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*` +
      "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
  );
}

/** Qwen 3.5: marks join letters (llama.cpp's hand-written qwen35 splitter). */
const QWEN35_STEP = nativeStep(
  `${CONTRACTIONS}|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|\\p{N}| ?[^\\s\\p{L}\\p{M}\\p{N}]+[\\r\\n]*` +
    "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
);

/**
 * Upper-then-lower letter runs (tekken, GPT-4o), as llama.cpp rewrites `\p{Lu}`/`\p{Ll}`: a
 * letter that is not a-z, then letters that are not A-Z. Non-ASCII letters count as both.
 */
const UPPER_LOWER = "[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))*((?=[\\p{L}])([^A-Z]))+";
const LOWER_RUN = "[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))+((?=[\\p{L}])([^A-Z]))*";

/** DeepSeek LLM's letters: Latin, Greek, Cyrillic, Armenian, Georgian, Cherokee and the like. */
const DEEPSEEK_LETTERS = "A-Za-z\\u00B5\\u00C0-\\u00D6\\u00D8-\\u00F6\\u00F8-\\u01BA" +
  "\\u01BC-\\u01BF\\u01C4-\\u0293\\u0295-\\u02AF\\u0370-\\u0373\\u0376\\u0377\\u037B-\\u037D" +
  "\\u037F\\u0386\\u0388-\\u038A\\u038C\\u038E-\\u03A1\\u03A3-\\u03F5\\u03F7-\\u0481" +
  "\\u048A-\\u052F\\u0531-\\u0556\\u10A0-\\u10C5\\u13A0-\\u13F5\\u13F8-\\u13FD\\u1C90-\\u1CBA" +
  "\\u1CBD-\\u1CBF\\u1D00-\\u1D2B\\u1D6B-\\u1D77\\u1D79-\\u1D9A\\u1E00-\\u1F15\\u1F18-\\u1F1D" +
  "\\u1F20-\\u1F45\\u1F48-\\u1F4D\\u1F50-\\u1F57\\u1F59\\u1F5B\\u1F5D\\u1F5F-\\u1F7D" +
  "\\u1F80-\\u1FB4\\u1FB6-\\u1FBC\\u1FBE\\u1FC2-\\u1FC4\\u1FC6-\\u1FCC\\u1FD0-\\u1FD3" +
  "\\u1FD6-\\u1FDB\\u1FE0-\\u1FEC\\u1FF2-\\u1FF4\\u1FF6-\\u1FFC\\u2102\\u2107\\u210A-\\u2113" +
  "\\u2115\\u2119-\\u211D\\u2124\\u2126\\u2128\\u212A-\\u212D\\u212F-\\u2134\\u2139" +
  "\\u213C-\\u213F\\u2145-\\u2149\\u214E\\u2183\\u2184\\u2C00-\\u2C7B\\u2C7E-\\u2CE4" +
  "\\u2CEB-\\u2CEE\\u2CF2\\u2CF3\\uA640-\\uA66D\\uA680-\\uA69B\\uA722-\\uA76F\\uA771-\\uA787" +
  "\\uA78B-\\uA78E\\uAB70-\\uABBF\\uFB00-\\uFB06\\uFB13-\\uFB17\\uFF21-\\uFF3A\\uFF41-\\uFF5A" +
  "\\u{10400}-\\u{1044F}\\u{104B0}-\\u{104D3}\\u{104D8}-\\u{104FB}\\u{10C80}-\\u{10CB2}" +
  "\\u{10CC0}-\\u{10CF2}\\u{118A0}-\\u{118DF}\\u{1E900}-\\u{1E943}";
/** CJK ideographs, U+0800..U+4E00 and Hangul; llama.cpp's whitespace never matches it. */
const DEEPSEEK_CJK = regexStep("[\\u4E00-\\u9FA5\\u0800-\\u4E00\\uAC00-\\uD7FF]+");

export interface PreTokenizerSpec {
  readonly steps: readonly SplitStep[];
  /** Emit a pre-token that is itself a vocabulary entry without running merges (llama.cpp). */
  readonly ignoreMerges: boolean;
  /** Default for add_bos when the GGUF does not say. */
  readonly addBos: boolean;
  readonly spelling?: BpeSpelling;
}

const spec = (steps: SplitStep[], ignoreMerges = false, addBos = false): PreTokenizerSpec => ({
  steps,
  ignoreMerges,
  addBos,
});

/**
 * Gemma 4: SentencePiece-style BPE. Spaces become "▁", merges run over whole lines of raw text
 * (only newline runs are split off), and bytes without a token are `<0xXX>` tokens. llama.cpp
 * always adds BOS for it.
 */
const GEMMA4: PreTokenizerSpec = {
  steps: [nativeStep("[^\\n]+|[\\n]+")],
  ignoreMerges: false,
  addBos: true,
  spelling: { byteEncode: false, escapeSpaces: true, newlineRunsWhole: true },
};

const DEFAULT = spec([
  regexStep("[\\p{P}\\$\\+<=>\\^~\\|]+"),
  GPT2_REGEX,
  regexStep("\\p{N}+"),
  regexStep("[0-9][0-9][0-9]"),
]);
const GPT2_SPEC = spec([GPT2]);
const LLAMA3 = spec([llama3Like("{1,3}")], true, true);
const LLAMA3_REGEX_ONLY = spec([llama3Like("{1,3}")]);
const QWEN2 = spec([llama3Like("")]);
const QWEN35 = spec([QWEN35_STEP]);
const DEEPSEEK_CODER = spec([
  regexStep("[\\r\\n]"),
  regexStep("\\s?\\p{L}+"),
  regexStep("\\s?\\p{P}+"),
  DEEPSEEK_CJK,
  regexStep("\\p{N}"),
]);
const DEEPSEEK_LLM = spec([
  regexStep("[\\r\\n]"),
  regexStep(`\\s?[${DEEPSEEK_LETTERS}]+`),
  regexStep("\\s?[!-/:-~\\uFF01-\\uFF0F\\uFF1A-\\uFF5E\\u2018-\\u201F\\u3000-\\u3002]+"),
  regexStep("\\s+$"),
  DEEPSEEK_CJK,
  regexStep("\\p{N}+"),
]);
const DEEPSEEK_V3 = spec([
  regexStep("\\p{N}{1,3}"),
  regexStep("[\\u4E00-\\u9FA5\\u3040-\\u309F\\u30A0-\\u30FF]+"),
  regexStep(
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\\r\\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+" +
      "| ?[\\p{P}\\p{S}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
  ),
]);
const TEKKEN = spec(
  [regexStep(
    `${UPPER_LOWER}|${LOWER_RUN}|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+`,
  )],
  true,
  true,
);
const GPT4O = spec([regexStep(
  `${UPPER_LOWER}${CONTRACTIONS}?|${LOWER_RUN}${CONTRACTIONS}?|\\p{N}{1,3}` +
    "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
)]);
/** Qwen 2's rules without the English contractions (Turkish suffixes stay on their word). */
const UFAKZEKA = spec([regexStep(
  "[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
)]);
const SEED_CODER = spec([regexStep(
  `${CONTRACTIONS}|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1}| ?[^\\s\\p{L}\\p{N}\\r\\n]+` +
    "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
)]);
const BAILINGMOE = spec([regexStep(
  "'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}" +
    "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]|\\s+(?!\\S)|\\s+",
)]);
/** Lines first, then Qwen 2's rules within each. */
const LAGUNA = spec([nativeStep("[^\\n]+|[\\n]+"), llama3Like("")]);
const FALCON = spec([
  regexStep("[\\p{P}\\$\\+<=>\\^~\\|`]+"),
  GPT2,
  regexStep("[0-9][0-9][0-9]"),
]);
const STARCODER = spec([regexStep("\\p{N}"), GPT2]);
const BLOOM_LIKE = regexStep(" ?[^(\\s|.,!?\\u2026\\u3002\\uFF0C\\u3001\\u0964\\u06D4\\u060C)]+");
const BLOOM = spec([BLOOM_LIKE]);
const VIKING = spec([BLOOM_LIKE, regexStep("\\p{N}")]);

const named = (names: string[], s: PreTokenizerSpec) =>
  names.map((n): [string, PreTokenizerSpec] => [n, s]);

const PRESETS: ReadonlyMap<string, PreTokenizerSpec> = new Map<string, PreTokenizerSpec>([
  ["default", DEFAULT],
  ...named(
    [
      "llama3",
      "llama-v3",
      "llama-bpe",
      "falcon3",
      "falcon-h1",
      "pixtral",
      "midm-2.0",
      "lfm2",
      "jina-v5-nano",
    ],
    LLAMA3,
  ),
  ["dbrx", LLAMA3_REGEX_ONLY],
  ["smaug-bpe", LLAMA3_REGEX_ONLY],
  ...named(
    [
      "qwen2",
      "deepseek-r1-qwen",
      "stablelm2",
      "megrez",
      "hunyuan",
      "kormo",
      "f2llmv2",
      "solar-open",
      "grok-2",
    ],
    QWEN2,
  ),
  ["ufakzeka", UFAKZEKA],
  ["seed-coder", SEED_CODER],
  ...named(["bailingmoe", "bailingmoe2", "llada-moe"], BAILINGMOE),
  ["laguna", LAGUNA],
  ["qwen35", QWEN35],
  ["deepseek-coder", DEEPSEEK_CODER],
  ["deepseek-llm", DEEPSEEK_LLM],
  ...named(["deepseek-v3", "hunyuan-dense", "hy_v4", "joyai-llm"], DEEPSEEK_V3),
  ["tekken", TEKKEN],
  ...named(["gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"], GPT4O),
  ["falcon", FALCON],
  ...named(
    ["gpt-2", "mpt", "olmo", "phi-2", "jais", "gigachat", "exaone4", "mellum", "a.x-4.0"],
    GPT2_SPEC,
  ),
  ...named(
    ["jina-es", "jina-de", "jina-v2-es", "jina-v2-de", "trillion", "granite-docling"],
    GPT2_SPEC,
  ),
  ...named(
    ["starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b", "mellum2"],
    STARCODER,
  ),
  ...named(["bloom", "poro-chat", "gpt3-finnish"], BLOOM),
  ["viking", VIKING],
  ["gemma4", GEMMA4],
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
  readonly #steps: ReturnType<typeof compileSteps>;

  constructor(s: PreTokenizerSpec) {
    this.#steps = compileSteps(s.steps);
  }

  /** Splits `text` into pre-tokens; their concatenation is always `text`. */
  split(text: string): string[] {
    return regexSplit(text, this.#steps);
  }
}
