/** Builds a tokenizer from GGUF `tokenizer.ggml.*` metadata, with llama.cpp's defaults. */
import { HcError } from "../../errors.ts";
import { preTokenizerSpec } from "./pretokenize.ts";
import { attrFromTokenType, TokenAttr, type Tokenizer } from "./types.ts";
import { type VocabInit, VocabTokenizer } from "./vocab.ts";

/** Metadata as the GGUF reader returns it; values are checked here, not trusted. */
export type TokenizerMetadata = ReadonlyMap<string, unknown>;

const K = "tokenizer.ggml.";

function fail(message: string): never {
  throw new HcError("E_TOKENIZER", message);
}

function asNumber(v: unknown): number | undefined {
  if (typeof v === "number") return v;
  if (typeof v === "bigint") return Number(v);
  return undefined;
}

function getString(md: TokenizerMetadata, key: string): string | undefined {
  const v = md.get(key);
  if (v === undefined) return undefined;
  if (typeof v !== "string") fail(`${key} must be a string`);
  return v;
}

function getBool(md: TokenizerMetadata, key: string): boolean | undefined {
  const v = md.get(key);
  if (v === undefined) return undefined;
  if (typeof v === "boolean") return v;
  const n = asNumber(v);
  if (n === undefined) fail(`${key} must be a boolean`);
  return n !== 0;
}

/** A token id key; absent, negative or out of range (e.g. 0xFFFFFFFF = "none") gives null. */
function getId(md: TokenizerMetadata, key: string, vocabSize: number): number | null | undefined {
  const v = md.get(key);
  if (v === undefined) return undefined;
  const n = asNumber(v);
  if (n === undefined || !Number.isInteger(n)) fail(`${key} must be an integer`);
  return n >= 0 && n < vocabSize ? n : null;
}

function getStringArray(md: TokenizerMetadata, key: string): string[] | undefined {
  const v = md.get(key);
  if (v === undefined) return undefined;
  if (!Array.isArray(v)) fail(`${key} must be an array of strings`);
  for (const s of v) if (typeof s !== "string") fail(`${key} must be an array of strings`);
  return v as string[];
}

function getNumberArray(md: TokenizerMetadata, key: string): ArrayLike<number> | undefined {
  const v = md.get(key);
  if (v === undefined) return undefined;
  if (v instanceof Float32Array || v instanceof Float64Array || v instanceof Int32Array) return v;
  if (ArrayBuffer.isView(v) && !(v instanceof DataView)) {
    return Array.from(v as unknown as ArrayLike<number | bigint>, (x) => Number(x));
  }
  if (!Array.isArray(v)) fail(`${key} must be a numeric array`);
  return v.map((x) => asNumber(x) ?? fail(`${key} must be a numeric array`));
}

export function tokenizerFromGguf(md: TokenizerMetadata): Tokenizer {
  const model = getString(md, K + "model") ?? fail(`missing ${K}model`);
  if (model !== "llama" && model !== "gpt2" && model !== "gemma4") {
    fail(`unknown tokenizer model '${model}' (${K}model); supported: llama, gpt2, gemma4`);
  }
  const kind = model === "llama" ? "spm" : "bpe";
  const rawTexts = getStringArray(md, K + "tokens") ?? fail(`missing ${K}tokens`);
  const n = rawTexts.length;
  if (n === 0) fail(`${K}tokens is empty`);
  const texts = rawTexts.map((t, i) => (t.length > 0 ? t : `[EMPTY_${i}]`));

  const scores = getNumberArray(md, K + "scores") ?? new Float32Array(n);
  if (scores.length < n) fail(`${K}scores has ${scores.length} entries for ${n} tokens`);
  const types = getNumberArray(md, K + "token_type");
  if (types && types.length < n) fail(`${K}token_type has ${types.length} entries for ${n} tokens`);
  const attrs = new Uint16Array(n);
  for (let i = 0; i < n; i++) attrs[i] = types ? attrFromTokenType(types[i]) : TokenAttr.NORMAL;

  let bpe: VocabInit["bpe"];
  let preName = "";
  if (kind === "bpe") {
    // llama.cpp reads a gemma4 vocabulary with the gemma4 pre-tokenizer, whatever `pre` says.
    preName = model === "gemma4" ? "gemma4" : getString(md, K + "pre") ?? "";
    const pre = preTokenizerSpec(preName.length > 0 ? preName : "default");
    const merges = getStringArray(md, K + "merges") ?? fail(`missing ${K}merges`);
    const ranks = new Map<string, number>();
    merges.forEach((m, rank) => {
      if (!ranks.has(m)) ranks.set(m, rank);
    });
    bpe = { ranks, pre };
  }

  const id = (key: string, fallback: number | null) => {
    const v = getId(md, K + key, n);
    return v === undefined ? (fallback !== null && fallback < n ? fallback : null) : v;
  };
  // llama.cpp defaults: SPM BOS 1 / EOS 2 / UNK 0. For BPE it defaults both to 11, which names an
  // ordinary token in most vocabularies; this port uses "none" instead.
  const bos = id("bos_token_id", kind === "spm" ? 1 : null);
  const eos = id("eos_token_id", kind === "spm" ? 2 : null);
  const extraEog: number[] = [];
  for (const key of ["fim_pad_token_id", "fim_rep_token_id", "fim_sep_token_id"]) {
    const v = id(key, null);
    if (v !== null) extraEog.push(v);
  }

  const name = md.get("general.name");
  return new VocabTokenizer({
    kind,
    texts,
    scores,
    attrs,
    bos,
    eos,
    eot: id("eot_token_id", null),
    eom: id("eom_token_id", null),
    unk: id("unknown_token_id", kind === "spm" ? 0 : null),
    extraEog,
    // llama.cpp adds BOS for Gemma 4 even where the GGUF says not to.
    addBos: preName === "gemma4"
      ? true
      : getBool(md, K + "add_bos_token") ?? (bpe ? bpe.pre.addBos : true),
    addEos: getBool(md, K + "add_eos_token") ?? false,
    addSpacePrefix: getBool(md, K + "add_space_prefix") ?? kind === "spm",
    spaceSymbol: "\u2581",
    bpe,
    modelName: typeof name === "string" ? name : undefined,
  });
}
