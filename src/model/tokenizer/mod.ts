/**
 * Tokenizers built from GGUF metadata (SentencePiece-style `llama`, byte-level BPE `gpt2`) or from
 * a llama2.c tokenizer.bin, following llama.cpp's llama-vocab.cpp. This file is the module's
 * public face.
 */
export type { DecodeOptions, EncodeOptions, StreamingDecoder, Tokenizer } from "./types.ts";
export { TokenAttr } from "./types.ts";
export { tokenizerFromGguf, type TokenizerMetadata } from "./gguf.ts";
export { tokenizerFromLlama2c } from "./llama2c.ts";
export { KNOWN_PRE_TOKENIZERS } from "./pretokenize.ts";
