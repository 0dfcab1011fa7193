/** Public shapes of the tokenizer module; the algorithms live in the sibling files. */

export interface EncodeOptions {
  /** Add BOS / EOS as the vocabulary's add rules say (llama.cpp `add_special`). Default true. */
  readonly addSpecial?: boolean;
  /**
   * Split out exact matches of control / unknown token texts (e.g. "<|im_start|>") and emit their
   * ids (llama.cpp `parse_special`). Default false, so user text cannot inject control tokens.
   * User-defined tokens (token_type 4) are always split out, as llama.cpp does.
   */
  readonly parseSpecial?: boolean;
}

export interface DecodeOptions {
  /** Render control / unknown tokens as their text instead of "" (llama.cpp `special`). */
  readonly special?: boolean;
}

export interface StreamingDecoder {
  /** Text completed by this token; bytes of an unfinished UTF-8 sequence are held back. */
  push(id: number): string;
  /** Whatever is held back, with U+FFFD for an unfinished sequence. */
  flush(): string;
}

export interface Tokenizer {
  readonly vocabSize: number;
  readonly bos: number | null;
  readonly eos: number | null;
  readonly eot: number | null;
  readonly addBos: boolean;
  encode(text: string, opts?: EncodeOptions): number[];
  /** True for every end-of-generation token (EOS, EOT, EOM and the llama.cpp EOG texts). */
  isEog(id: number): boolean;
  /** The raw vocabulary text of a token (SPM texts keep their '▁'). */
  tokenText(id: number): string;
  decode(ids: readonly number[], opts?: DecodeOptions): string;
  createDecoder(opts?: DecodeOptions): StreamingDecoder;
}

/** llama.cpp `llama_token_attr` bits. */
export const TokenAttr = {
  UNDEFINED: 0,
  UNKNOWN: 1 << 0,
  UNUSED: 1 << 1,
  NORMAL: 1 << 2,
  CONTROL: 1 << 3,
  USER_DEFINED: 1 << 4,
  BYTE: 1 << 5,
  LSTRIP: 1 << 7,
  RSTRIP: 1 << 8,
} as const;

/** GGUF `tokenizer.ggml.token_type` values (llama.cpp `llama_token_type`) to attribute bits. */
export function attrFromTokenType(type: number): number {
  switch (type) {
    case 1:
      return TokenAttr.NORMAL;
    case 2:
      return TokenAttr.UNKNOWN;
    case 3:
      return TokenAttr.CONTROL;
    case 4:
      return TokenAttr.USER_DEFINED;
    case 5:
      return TokenAttr.UNUSED;
    case 6:
      return TokenAttr.BYTE;
    default:
      return TokenAttr.UNDEFINED;
  }
}
