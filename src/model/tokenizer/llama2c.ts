/**
 * llama2.c `tokenizer.bin`: int32 max_token_length, then per token f32 score, int32 byte length,
 * bytes. Pieces spell spaces as real spaces; BOS = 1 ("\n<s>\n"), EOS = 2 ("\n</s>\n").
 * Encoding follows llama2.c's `encode`, which is the SPM merge loop with a dummy space prefix and
 * byte fallback to id byte + 3 (its fixed <0x00>..<0xFF> layout).
 */
import { HcError } from "../../errors.ts";
import { TokenAttr, type Tokenizer } from "./types.ts";
import { VocabTokenizer } from "./vocab.ts";

/** No llama2.c vocabulary comes near this; it bounds allocation from an untrusted header. */
const MAX_VOCAB = 1 << 22;
const BYTE_PIECE = /^<0x[0-9A-Fa-f]{2}>$/;

export function tokenizerFromLlama2c(bytes: Uint8Array, vocabSize: number): Tokenizer {
  if (!Number.isInteger(vocabSize) || vocabSize < 3 || vocabSize > MAX_VOCAB) {
    throw new HcError("E_TOKENIZER", `llama2.c vocab size ${vocabSize} is out of range`);
  }
  // Every entry needs at least 8 bytes, so a short file cannot make us allocate much.
  if (bytes.length < 4 + 8 * vocabSize) {
    throw new HcError(
      "E_TOKENIZER",
      `llama2.c tokenizer is ${bytes.length} bytes, too short for ${vocabSize} tokens`,
    );
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const decoder = new TextDecoder("utf-8", { fatal: false, ignoreBOM: true });
  const texts: string[] = new Array<string>(vocabSize);
  const scores = new Float32Array(vocabSize);
  const attrs = new Uint16Array(vocabSize);
  let off = 4;
  for (let i = 0; i < vocabSize; i++) {
    if (off + 8 > bytes.length) {
      throw new HcError("E_TOKENIZER", `llama2.c tokenizer truncated at token ${i}`);
    }
    scores[i] = view.getFloat32(off, true);
    const len = view.getInt32(off + 4, true);
    off += 8;
    if (len < 0 || off + len > bytes.length) {
      throw new HcError("E_TOKENIZER", `llama2.c tokenizer: token ${i} has bad length ${len}`);
    }
    const text = decoder.decode(bytes.subarray(off, off + len));
    off += len;
    texts[i] = text.length > 0 ? text : `[EMPTY_${i}]`;
    attrs[i] = i === 0
      ? TokenAttr.UNKNOWN
      : i <= 2
      ? TokenAttr.CONTROL
      : BYTE_PIECE.test(text)
      ? TokenAttr.BYTE
      : TokenAttr.NORMAL;
  }
  return new VocabTokenizer({
    kind: "spm",
    texts,
    scores,
    attrs,
    bos: 1,
    eos: 2,
    eot: null,
    eom: null,
    unk: 0,
    extraEog: [],
    addBos: true,
    addEos: false,
    addSpacePrefix: true,
    spaceSymbol: " ",
    byteFallbackOffset: 3,
  });
}
