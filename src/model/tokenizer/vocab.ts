/**
 * The vocabulary-level half of a tokenizer, shared by SPM and BPE: special-token partitioning,
 * BOS/EOS rules, end-of-generation set, and token → bytes (llama.cpp `token_to_piece`).
 */
import { HcError } from "../../errors.ts";
import { BpeEncoder, byteDecode } from "./bpe.ts";
import { PreTokenizer, type PreTokenizerSpec } from "./pretokenize.ts";
import { spmEncode, type SpmVocab } from "./spm.ts";
import { Utf8Stream, utf8ToString } from "./stream.ts";
import {
  type DecodeOptions,
  type EncodeOptions,
  type StreamingDecoder,
  TokenAttr,
  type Tokenizer,
} from "./types.ts";

export interface VocabInit {
  readonly kind: "spm" | "bpe";
  /** Token texts; an empty text should already be replaced (llama.cpp uses "[EMPTY_<id>]"). */
  readonly texts: readonly string[];
  readonly scores: ArrayLike<number>;
  /** TokenAttr bits per token; adjusted in place (EOG tokens become control, as in llama.cpp). */
  readonly attrs: Uint16Array;
  readonly bos: number | null;
  readonly eos: number | null;
  readonly eot: number | null;
  readonly eom: number | null;
  readonly unk: number | null;
  readonly extraEog: readonly number[];
  readonly addBos: boolean;
  readonly addEos: boolean;
  /** SPM: prefix " " to text that starts the input or follows a special token. */
  readonly addSpacePrefix: boolean;
  /** SPM: how the vocabulary spells a space ("▁" in GGUF, " " in llama2.c tokenizer.bin). */
  readonly spaceSymbol: string;
  /**
   * SPM byte fallback: when set, byte b is token b + offset (llama2.c's fixed layout, used even
   * where that id is no byte token); otherwise the `<0xXX>` token, else the one-char token.
   */
  readonly byteFallbackOffset?: number;
  readonly bpe?: { readonly ranks: ReadonlyMap<string, number>; readonly pre: PreTokenizerSpec };
  /** `general.name`; llama.cpp gives Phi-3's special tokens RSTRIP by this name. */
  readonly modelName?: string;
}

const EMPTY = new Uint8Array(0);
const utf8 = new TextEncoder();
const ASCII_SPACE = (c: number) => c === 0x20 || (c >= 0x09 && c <= 0x0d);

/** Texts llama.cpp treats as EOT when the GGUF names none (first present wins here). */
const EOT_TEXTS = [
  "<|eot_id|>",
  "<|im_end|>",
  "<|end|>",
  "<end_of_turn>",
  "<|endoftext|>",
  "<|end_of_text|>",
  "<EOT>",
  "_<EOT>",
  "<｜end▁of▁sentence｜>",
  "<end_of_utterance>",
];
/** Texts llama.cpp always counts as end of generation. */
const EOG_TEXTS = [
  "<|eot_id|>",
  "<|im_end|>",
  "<|end|>",
  "<end_of_turn>",
  "<|endoftext|>",
  "<|eom_id|>",
  "<EOT>",
  "_<EOT>",
  "<|end_of_text|>",
  "<end_of_utterance>",
  "<eos>", // Gemma 4
  "<turn|>",
  "<|tool_response>",
];

interface TrieNode {
  readonly next: Map<number, TrieNode>;
  id: number;
}

export class VocabTokenizer implements Tokenizer {
  readonly vocabSize: number;
  readonly bos: number | null;
  readonly eos: number | null;
  readonly eot: number | null;
  readonly addBos: boolean;
  readonly addEos: boolean;

  readonly #kind: "spm" | "bpe";
  readonly #texts: readonly string[];
  readonly #attrs: Uint16Array;
  readonly #textToId: Map<string, number>;
  readonly #eog: ReadonlySet<number>;
  readonly #addSpacePrefix: boolean;
  readonly #spaceSymbol: string;
  /** Control, user-defined and unknown tokens, longest text first (llama.cpp order). */
  readonly #specials: readonly number[];
  readonly #specialTrie: TrieNode;
  readonly #spm: SpmVocab | null;
  readonly #bpe: BpeEncoder | null;
  /** A Gemma 4-style BPE vocabulary spells spaces "▁" and bytes as they are. */
  readonly #bpeSpaces: boolean;
  readonly #pieces: (Uint8Array | undefined)[];

  constructor(init: VocabInit) {
    const n = init.texts.length;
    if (n === 0) throw new HcError("E_TOKENIZER", "vocabulary has no tokens");
    if (init.attrs.length < n) {
      throw new HcError("E_TOKENIZER", "token attributes shorter than vocab");
    }
    this.vocabSize = n;
    this.#kind = init.kind;
    this.#texts = init.texts;
    this.#attrs = init.attrs;
    this.#addSpacePrefix = init.addSpacePrefix;
    this.#spaceSymbol = init.spaceSymbol;
    this.#pieces = new Array<Uint8Array | undefined>(n);
    this.#bpeSpaces = init.bpe?.pre.spelling?.escapeSpaces ?? false;

    const textToId = new Map<string, number>();
    for (let id = 0; id < n; id++) {
      if (!textToId.has(init.texts[id])) textToId.set(init.texts[id], id);
    }
    this.#textToId = textToId;

    const inRange = (id: number | null) => (id !== null && id >= 0 && id < n ? id : null);
    this.bos = inRange(init.bos);
    this.eos = inRange(init.eos);
    this.addBos = init.addBos;
    this.addEos = init.addEos;
    if (this.addBos && this.bos === null) {
      throw new HcError("E_TOKENIZER", "add_bos_token is true but the vocabulary has no BOS token");
    }
    if (this.addEos && this.eos === null) {
      throw new HcError("E_TOKENIZER", "add_eos_token is true but the vocabulary has no EOS token");
    }

    const attrs = this.#attrs;
    const markControl = (id: number) => attrs[id] |= TokenAttr.CONTROL;
    let eot = inRange(init.eot);
    if (eot === null) {
      for (const t of EOT_TEXTS) {
        const id = textToId.get(t);
        if (id !== undefined) {
          eot = id;
          markControl(id);
          break;
        }
      }
    }
    this.eot = eot;
    const eog = new Set<number>();
    for (const t of EOG_TEXTS) {
      const id = textToId.get(t);
      if (id !== undefined) {
        eog.add(id);
        markControl(id);
      }
    }
    for (const id of [this.eos, eot, inRange(init.eom), ...init.extraEog.map(inRange)]) {
      if (id !== null) eog.add(id);
    }
    this.#eog = eog;

    const name = (init.modelName ?? "").toLowerCase();
    const specials: number[] = [];
    const specialMask = TokenAttr.CONTROL | TokenAttr.USER_DEFINED | TokenAttr.UNKNOWN;
    for (let id = 0; id < n; id++) if (attrs[id] & specialMask) specials.push(id);
    specials.sort((a, b) => init.texts[b].length - init.texts[a].length || a - b);
    this.#specials = specials;
    if (name.includes("phi-3") || name.includes("phi3")) {
      for (const id of specials) attrs[id] |= TokenAttr.RSTRIP;
      const set = (t: string, on: boolean) => {
        const id = textToId.get(t);
        if (id === undefined) return;
        if (on) attrs[id] |= TokenAttr.RSTRIP;
        else attrs[id] &= ~TokenAttr.RSTRIP;
      };
      set("</s>", true);
      for (const t of ["<unk>", "<s>", "<|endoftext|>"]) set(t, false);
    }
    this.#specialTrie = { next: new Map(), id: -1 };
    for (const id of specials) this.#trieInsert(init.texts[id], id);

    const unk = inRange(init.unk);
    if (init.kind === "spm") {
      const byteIds = new Int32Array(256).fill(-1);
      for (let b = 0; b < 256; b++) {
        const hex = b.toString(16).toUpperCase().padStart(2, "0");
        const offset = init.byteFallbackOffset;
        byteIds[b] = offset !== undefined
          ? (b + offset < n ? b + offset : -1)
          : textToId.get(`<0x${hex}>`) ?? textToId.get(String.fromCharCode(b)) ?? -1;
      }
      this.#spm = {
        textToId,
        scores: init.scores,
        unk,
        byteToken: (b) => (byteIds[b] >= 0 ? byteIds[b] : undefined),
      };
      this.#bpe = null;
    } else {
      if (!init.bpe) throw new HcError("E_TOKENIZER", "BPE vocabulary without merges");
      this.#spm = null;
      this.#bpe = new BpeEncoder(
        { textToId, ranks: init.bpe.ranks },
        new PreTokenizer(init.bpe.pre),
        init.bpe.pre.ignoreMerges,
        init.bpe.pre.spelling,
      );
    }
  }

  encode(text: string, opts: EncodeOptions = {}): number[] {
    const addSpecial = opts.addSpecial ?? true;
    const out: number[] = [];
    if (addSpecial && this.addBos && this.bos !== null) out.push(this.bos);
    const fragments = text.length > 0 ? this.#partition(text, opts.parseSpecial ?? false) : [];
    let prevSpecial = true;
    for (const f of fragments) {
      if (typeof f === "number") {
        out.push(f);
        prevSpecial = true;
      } else if (this.#spm) {
        const raw = this.#addSpacePrefix && prevSpecial ? " " + f : f;
        const escaped = this.#spaceSymbol === " " ? raw : raw.replaceAll(" ", this.#spaceSymbol);
        spmEncode(escaped, this.#spm, out);
        prevSpecial = false;
      } else {
        (this.#bpe as BpeEncoder).encode(f, out);
      }
    }
    if (addSpecial && this.addEos && this.eos !== null) out.push(this.eos);
    return out;
  }

  isEog(id: number): boolean {
    return this.#eog.has(id);
  }

  tokenText(id: number): string {
    this.#check(id);
    return this.#texts[id];
  }

  /**
   * llama.cpp `llama_detokenize(remove_special=false)`: the concatenated pieces, where the first
   * token loses one leading space when the vocabulary adds a space prefix. A BOS in front renders
   * as "" but still counts as that first token, so "<s> Hello" decodes to " Hello" (llama.cpp
   * keeps that space too). No clean_up_tokenization_spaces pass, so decode agrees with streaming.
   */
  decode(ids: readonly number[], opts: DecodeOptions = {}): string {
    const special = opts.special ?? false;
    const parts: Uint8Array[] = [];
    let total = 0;
    ids.forEach((id, i) => {
      let p = this.pieceBytes(id, special);
      if (i === 0 && this.#addSpacePrefix && p.length > 0 && p[0] === 0x20) p = p.subarray(1);
      parts.push(p);
      total += p.length;
    });
    const all = new Uint8Array(total);
    let at = 0;
    for (const p of parts) {
      all.set(p, at);
      at += p.length;
    }
    return utf8ToString(all);
  }

  /** Streams generated tokens: pieces are concatenated as-is (no leading-space strip). */
  createDecoder(opts: DecodeOptions = {}): StreamingDecoder {
    const special = opts.special ?? false;
    const stream = new Utf8Stream();
    return {
      push: (id: number) => stream.push(this.pieceBytes(id, special)),
      flush: () => stream.flush(),
    };
  }

  /** The bytes one token contributes to decoded text (llama.cpp `token_to_piece`). */
  pieceBytes(id: number, special = false): Uint8Array {
    this.#check(id);
    if (!special) {
      const cached = this.#pieces[id];
      if (cached) return cached;
    }
    const p = this.#computePiece(id, special);
    if (!special) this.#pieces[id] = p;
    return p;
  }

  #computePiece(id: number, special: boolean): Uint8Array {
    const attr = this.#attrs[id];
    const text = this.#texts[id];
    if (attr & (TokenAttr.UNKNOWN | TokenAttr.CONTROL)) return special ? utf8.encode(text) : EMPTY;
    if (attr & TokenAttr.USER_DEFINED) return utf8.encode(text);
    if (attr & TokenAttr.NORMAL) {
      if (this.#kind === "bpe") {
        return this.#bpeSpaces ? utf8.encode(text.replaceAll("\u2581", " ")) : byteDecode(text);
      }
      const sp = this.#spaceSymbol;
      return utf8.encode(sp === " " ? text : text.replaceAll(sp, " "));
    }
    if (attr & TokenAttr.BYTE) {
      const byte = parseInt(text.slice(3, 5), 16);
      return Number.isNaN(byte) ? EMPTY : Uint8Array.of(byte);
    }
    return EMPTY; // unused / undefined types render as nothing in llama.cpp
  }

  #check(id: number): void {
    if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) {
      throw new HcError(
        "E_TOKENIZER",
        `token id ${id} is outside the vocabulary (0..${this.vocabSize - 1})`,
      );
    }
  }

  #trieInsert(text: string, id: number): void {
    let node = this.#specialTrie;
    for (let i = 0; i < text.length; i++) {
      const c = text.charCodeAt(i);
      let child = node.next.get(c);
      if (!child) {
        child = { next: new Map(), id: -1 };
        node.next.set(c, child);
      }
      node = child;
    }
    if (node.id < 0) node.id = id;
  }

  /** Ids of the special tokens whose text occurs somewhere in `text` (one trie walk per index). */
  #occurring(text: string): Set<number> {
    const found = new Set<number>();
    const root = this.#specialTrie;
    if (root.next.size === 0) return found;
    for (let i = 0; i < text.length; i++) {
      let node = root.next.get(text.charCodeAt(i));
      for (let j = i + 1; node; j++) {
        if (node.id >= 0) found.add(node.id);
        if (j >= text.length) break;
        node = node.next.get(text.charCodeAt(j));
      }
    }
    return found;
  }

  /**
   * llama.cpp `tokenizer_st_partition`: for each special token, longest first, split every raw
   * fragment at each exact occurrence. Control and unknown tokens take part only when
   * `parseSpecial`; user-defined ones always do. LSTRIP/RSTRIP eat ASCII whitespace beside them.
   */
  #partition(text: string, parseSpecial: boolean): (string | number)[] {
    let frags: (string | number)[] = [text];
    const present = this.#occurring(text);
    if (present.size === 0) return frags;
    for (const id of this.#specials) {
      if (!present.has(id)) continue;
      const attr = this.#attrs[id];
      if (!parseSpecial && attr & (TokenAttr.CONTROL | TokenAttr.UNKNOWN)) continue;
      const tok = this.#texts[id];
      const next: (string | number)[] = [];
      for (const f of frags) {
        if (typeof f === "number") {
          next.push(f);
          continue;
        }
        let pos = 0;
        for (let at = f.indexOf(tok, pos); at >= 0; at = f.indexOf(tok, pos)) {
          let leftEnd = at;
          if (attr & TokenAttr.LSTRIP) {
            while (leftEnd > pos && ASCII_SPACE(f.charCodeAt(leftEnd - 1))) leftEnd--;
          }
          if (leftEnd > pos) next.push(f.slice(pos, leftEnd));
          next.push(id);
          pos = at + tok.length;
          if (attr & TokenAttr.RSTRIP) {
            while (pos < f.length && ASCII_SPACE(f.charCodeAt(pos))) pos++;
          }
        }
        if (pos < f.length) next.push(pos === 0 ? f : f.slice(pos));
      }
      frags = next;
    }
    return frags;
  }
}
