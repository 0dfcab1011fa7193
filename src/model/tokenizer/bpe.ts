/**
 * BPE as llama.cpp's `llm_tokenizer_bpe` does it: pre-tokenize, map each pre-token's UTF-8 bytes
 * to GPT-2's printable code points (or, for Gemma 4-style vocabularies, keep the text with "▁" for
 * spaces), then merge adjacent symbols by merge rank (lowest first, ties leftmost) with a
 * priority queue.
 */
import { Heap } from "./heap.ts";
import type { PreTokenizer } from "./pretokenize.ts";

/** GPT-2 `bytes_to_unicode`: printable Latin-1 bytes map to themselves, the rest to U+0100.. */
export const BYTE_TO_CHAR: readonly string[] = (() => {
  const table: string[] = new Array<string>(256);
  const keep = (b: number) => (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || b >= 0xae;
  let n = 0;
  for (let b = 0; b < 256; b++) {
    table[b] = String.fromCharCode(keep(b) ? b : 256 + n++);
  }
  return table;
})();

/** Inverse of BYTE_TO_CHAR by UTF-16 code unit; -1 for a code point that is no byte. */
const CHAR_TO_BYTE: Int16Array = (() => {
  const inv = new Int16Array(512).fill(-1);
  BYTE_TO_CHAR.forEach((c, b) => inv[c.charCodeAt(0)] = b);
  return inv;
})();

const utf8 = new TextEncoder();

export function byteEncode(text: string): string {
  let s = "";
  for (const b of utf8.encode(text)) s += BYTE_TO_CHAR[b];
  return s;
}

/**
 * Bytes of a byte-level token text. A code point outside the byte alphabet (only in malformed
 * vocabularies; llama.cpp prints "[UNK_BYTE_…]" there) is passed through as its own UTF-8.
 */
export function byteDecode(text: string): Uint8Array {
  const out: number[] = [];
  for (const ch of text) {
    const code = ch.charCodeAt(0);
    const b = ch.length === 1 && code < 512 ? CHAR_TO_BYTE[code] : -1;
    if (b >= 0) out.push(b);
    else out.push(...utf8.encode(ch));
  }
  return Uint8Array.from(out);
}

export interface BpeVocab {
  readonly textToId: ReadonlyMap<string, number>;
  /** Merge rank by the GGUF merge text "left right". */
  readonly ranks: ReadonlyMap<string, number>;
}

interface Bigram {
  readonly left: number;
  readonly right: number;
  readonly rank: number;
  readonly size: number;
}

const bpeBefore = (a: Bigram, b: Bigram): boolean =>
  a.rank < b.rank || (a.rank === b.rank && a.left < b.left);

/** Repeated words (spaces, common words) are looked up instead of re-merged; bounded. */
const WORD_CACHE_LIMIT = 65536;

/** How a BPE vocabulary spells text: GPT-2's byte alphabet, or raw UTF-8 with "▁" for spaces. */
export interface BpeSpelling {
  /** false: Gemma 4-style BPE over code points, unknown pieces as `<0xXX>` byte tokens. */
  readonly byteEncode: boolean;
  /** Spaces become "▁" before splitting (llama.cpp `escape_whitespaces`). */
  readonly escapeSpaces: boolean;
  /** A pre-token of newlines only that is a token is taken whole (llama.cpp's Gemma 4 fix). */
  readonly newlineRunsWhole: boolean;
}

const BYTE_LEVEL: BpeSpelling = { byteEncode: true, escapeSpaces: false, newlineRunsWhole: false };
const NEWLINES = /^\n+$/;

export class BpeEncoder {
  readonly #vocab: BpeVocab;
  readonly #pre: PreTokenizer;
  readonly #ignoreMerges: boolean;
  readonly #spelling: BpeSpelling;
  readonly #cache = new Map<string, readonly number[]>();

  constructor(
    vocab: BpeVocab,
    pre: PreTokenizer,
    ignoreMerges: boolean,
    spelling: BpeSpelling = BYTE_LEVEL,
  ) {
    this.#vocab = vocab;
    this.#pre = pre;
    this.#ignoreMerges = ignoreMerges;
    this.#spelling = spelling;
  }

  /** Appends the ids of a raw text fragment (no special tokens inside) to `out`. */
  encode(text: string, out: number[]): void {
    const { byteEncode: bytes, escapeSpaces } = this.#spelling;
    for (const word of this.#pre.split(escapeSpaces ? text.replaceAll(" ", "\u2581") : text)) {
      const encoded = bytes ? byteEncode(word) : word;
      let ids = this.#cache.get(encoded);
      if (ids === undefined) {
        ids = this.#encodeWord(encoded);
        if (this.#cache.size >= WORD_CACHE_LIMIT) this.#cache.clear();
        this.#cache.set(encoded, ids);
      }
      for (const id of ids) out.push(id);
    }
  }

  #encodeWord(word: string): number[] {
    const { textToId, ranks } = this.#vocab;
    if (this.#ignoreMerges || (this.#spelling.newlineRunsWhole && NEWLINES.test(word))) {
      const whole = textToId.get(word);
      if (whole !== undefined) return [whole];
    }
    // Symbols start as code points: single UTF-16 units for byte-encoded text, and pairs for
    // astral characters in raw text. Symbol i covers word[i, i + lens[i]).
    const n = word.length;
    const lens = new Int32Array(n);
    const prev = new Int32Array(n);
    const next = new Int32Array(n);
    let last = -1;
    for (let i = 0; i < n;) {
      const len = (word.codePointAt(i) as number) > 0xffff ? 2 : 1;
      lens[i] = len;
      prev[i] = last;
      if (last >= 0) next[last] = i;
      last = i;
      i += len;
    }
    if (last >= 0) next[last] = -1;
    const queue = new Heap<Bigram>(bpeBefore);
    const tryAdd = (left: number, right: number): void => {
      if (left < 0 || right < 0) return;
      const key = word.slice(left, left + lens[left]) + " " +
        word.slice(right, right + lens[right]);
      const rank = ranks.get(key);
      if (rank !== undefined) queue.push({ left, right, rank, size: lens[left] + lens[right] });
    };
    if (n > 0) { for (let i = 0; next[i] >= 0; i = next[i]) tryAdd(i, next[i]); }

    for (let b = queue.pop(); b !== undefined; b = queue.pop()) {
      const { left, right } = b;
      if (lens[left] === 0 || lens[right] === 0 || lens[left] + lens[right] !== b.size) continue;
      lens[left] += lens[right];
      lens[right] = 0;
      next[left] = next[right];
      if (next[right] >= 0) prev[next[right]] = left;
      tryAdd(prev[left], left);
      tryAdd(left, next[left]);
    }

    const ids: number[] = [];
    for (let i = n > 0 ? 0 : -1; i !== -1; i = next[i]) {
      const piece = word.slice(i, i + lens[i]);
      const id = textToId.get(piece);
      if (id !== undefined) {
        ids.push(id);
        continue;
      }
      if (!this.#spelling.byteEncode) {
        // Raw UTF-8 vocabularies spell bytes as <0xXX> tokens; llama.cpp drops bytes without one.
        for (const byte of utf8.encode(piece)) {
          const hex = byte.toString(16).toUpperCase().padStart(2, "0");
          const bt = textToId.get(`<0x${hex}>`);
          if (bt !== undefined) ids.push(bt);
        }
        continue;
      }
      // Not reachable with a complete byte alphabet; llama.cpp then emits the pieces it can find
      // one by one and drops the rest.
      for (const ch of piece) {
        const single = textToId.get(ch);
        if (single !== undefined) ids.push(single);
      }
    }
    return ids;
  }
}
