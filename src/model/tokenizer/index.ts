export type { DecodeOptions, EncodeOptions, StreamingDecoder, Tokenizer } from "./types.ts";
export { TokenAttr } from "./types.ts";
export { tokenizerFromGguf, type TokenizerMetadata } from "./gguf.ts";
export { tokenizerFromLlama2c } from "./llama2c.ts";
export { KNOWN_PRE_TOKENIZERS } from "./pretokenize.ts";
