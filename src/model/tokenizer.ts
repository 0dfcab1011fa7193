/**
 * Tokenizers built from GGUF metadata (SentencePiece-style `llama`, byte-level BPE `gpt2`) or from
 * a llama2.c tokenizer.bin, following llama.cpp's llama-vocab.cpp. The implementation lives in
 * ./tokenizer/; this file is the module's public face.
 */
export * from "./tokenizer/index.ts";
