/** Every failure the engine reports is an HcError with a stable machine-readable code. */
export type HcErrorCode =
  | "E_VK_NO_LIBRARY"
  | "E_VK_NO_DEVICE"
  | "E_VK_OOM"
  | "E_VK_LIMIT"
  | "E_VK_BAD_HANDLE"
  | "E_VK"
  | "E_SHADER_MISSING"
  | "E_GGUF_TRUNCATED"
  | "E_GGUF_MAGIC"
  | "E_GGUF_VERSION"
  | "E_GGUF_CORRUPT"
  | "E_GGUF_TYPE"
  | "E_MODEL_FORMAT"
  | "E_MODEL_ARCH"
  | "E_MODEL_TENSOR"
  | "E_TOKENIZER"
  | "E_TEMPLATE"
  | "E_PROFILE"
  | "E_PROFILE_MISMATCH"
  | "E_CONTEXT_FULL"
  | "E_BAD_REQUEST"
  | "E_ABORTED"
  | "E_BUSY"
  | "E_DOWNLOAD"
  | "E_SESSION_FILE"
  | "E_SESSION_VERSION"
  | "E_SESSION_MISMATCH"
  | "E_IO";

export class HcError extends Error {
  readonly code: HcErrorCode;
  constructor(code: HcErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "HcError";
    this.code = code;
  }
}

export function isHcError(e: unknown, code?: HcErrorCode): e is HcError {
  return e instanceof HcError && (code === undefined || e.code === code);
}
