/**
 * SentencePiece-style BPE as llama.cpp's `llm_tokenizer_spm` does it: start from single code
 * points, repeatedly merge the adjacent pair whose concatenation is the highest-scoring vocabulary
 * entry (ties: leftmost), and spell any piece that is not a token as byte tokens.
 */
import { Heap } from "./heap.ts";

export interface SpmVocab {
  readonly textToId: ReadonlyMap<string, number>;
  readonly scores: ArrayLike<number>;
  /** The token for one raw byte (`<0xXX>`, else the one-char token), or undefined. */
  byteToken(byte: number): number | undefined;
  readonly unk: number | null;
}

interface Bigram {
  readonly left: number;
  readonly right: number;
  readonly score: number;
  /** Length of the merged text; a stale entry no longer matches the symbols' lengths. */
  readonly size: number;
}

const spmBefore = (a: Bigram, b: Bigram): boolean =>
  a.score > b.score || (a.score === b.score && a.left < b.left);

const utf8 = new TextEncoder();

/** Appends the ids of `text` (spaces already escaped as the vocabulary spells them) to `out`. */
export function spmEncode(text: string, vocab: SpmVocab, out: number[]): void {
  if (text.length === 0) return;
  // Symbols are code points; each symbol covers text[start, start + len) and merged symbols stay
  // contiguous, so a pair's text is one slice of the input.
  const starts: number[] = [];
  for (let i = 0; i < text.length;) {
    starts.push(i);
    i += (text.codePointAt(i) as number) > 0xffff ? 2 : 1;
  }
  const n = starts.length;
  const lens = new Int32Array(n);
  const prev = new Int32Array(n);
  const next = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    lens[i] = (i + 1 < n ? starts[i + 1] : text.length) - starts[i];
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
  }

  const queue = new Heap<Bigram>(spmBefore);
  const tryAdd = (left: number, right: number): void => {
    if (left < 0 || right < 0) return;
    const size = lens[left] + lens[right];
    const id = vocab.textToId.get(text.slice(starts[left], starts[left] + size));
    if (id === undefined) return;
    queue.push({ left, right, score: vocab.scores[id] ?? 0, size });
  };
  for (let i = 1; i < n; i++) tryAdd(i - 1, i);

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

  // llama.cpp's rev_merge resegmentation can never fire: a merged symbol is always a token, and a
  // single code point never equals a (longer) pair text. So a non-token symbol goes to bytes.
  for (let i = 0; i !== -1; i = next[i]) {
    const piece = text.slice(starts[i], starts[i] + lens[i]);
    const id = vocab.textToId.get(piece);
    if (id !== undefined) {
      out.push(id);
      continue;
    }
    for (const byte of utf8.encode(piece)) {
      const bt = vocab.byteToken(byte);
      if (bt !== undefined) out.push(bt);
      else if (vocab.unk !== null) out.push(vocab.unk);
    }
  }
}
