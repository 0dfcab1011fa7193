/**
 * HTTP errors in OpenAI's shape, and the one table that maps engine error codes to HTTP statuses.
 * Every route answers failures through `errorResponse`, so a client always gets
 * `{ "error": { message, type, param, code } }` with a 4xx/5xx status.
 */
import { HcError, type HcErrorCode } from "../errors.ts";

export type ApiErrorType =
  | "invalid_request_error"
  | "not_found_error"
  | "rate_limit_error"
  | "server_error"
  | "service_unavailable_error";

export class ApiError extends Error {
  readonly status: number;
  readonly type: ApiErrorType;
  readonly code: string | null;
  readonly param: string | null;
  /** Seconds a client should wait before it retries (sent as Retry-After). */
  readonly retryAfterSeconds: number | null;
  constructor(
    status: number,
    message: string,
    opts: {
      type?: ApiErrorType;
      code?: string | null;
      param?: string | null;
      retryAfterSeconds?: number;
    } = {},
  ) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.type = opts.type ?? (status >= 500 ? "server_error" : "invalid_request_error");
    this.code = opts.code ?? null;
    this.param = opts.param ?? null;
    this.retryAfterSeconds = opts.retryAfterSeconds ?? null;
  }

  body(): { error: { message: string; type: string; param: string | null; code: string | null } } {
    return {
      error: { message: this.message, type: this.type, param: this.param, code: this.code },
    };
  }
}

/** A 400 about one request field. */
export function badParam(param: string, message: string, code = "invalid_value"): ApiError {
  return new ApiError(400, message, { param, code });
}

interface Mapping {
  status: number;
  type: ApiErrorType;
  code: string;
}

/**
 * Engine failure → HTTP. Client mistakes that slipped past validation are 400; a full device or a
 * busy engine is 503 (retry later); everything else is the server's fault (500). E_ABORTED means
 * the client went away: 499 is what the log records, nobody reads the body.
 */
const ENGINE_ERRORS: Partial<Record<HcErrorCode, Mapping>> = {
  E_BAD_REQUEST: { status: 400, type: "invalid_request_error", code: "invalid_request" },
  E_CONTEXT_FULL: { status: 400, type: "invalid_request_error", code: "context_length_exceeded" },
  E_TEMPLATE: { status: 400, type: "invalid_request_error", code: "invalid_messages" },
  E_ABORTED: { status: 499, type: "invalid_request_error", code: "client_closed_request" },
  E_BUSY: { status: 503, type: "service_unavailable_error", code: "engine_busy" },
  E_VK_OOM: { status: 503, type: "service_unavailable_error", code: "device_out_of_memory" },
};

/** Any thrown value as an ApiError; unknown failures keep their message but never a stack. */
export function toApiError(e: unknown): ApiError {
  if (e instanceof ApiError) return e;
  if (e instanceof HcError) {
    const m = ENGINE_ERRORS[e.code] ?? { status: 500, type: "server_error" as const, code: e.code };
    return new ApiError(m.status, e.message, { type: m.type, code: m.code });
  }
  const message = e instanceof Error ? e.message : String(e);
  return new ApiError(500, `internal error: ${message}`, {
    type: "server_error",
    code: "internal_error",
  });
}

export function errorResponse(e: unknown, headers?: HeadersInit): Response {
  const err = toApiError(e);
  const h = new Headers(headers);
  h.set("content-type", "application/json; charset=utf-8");
  if (err.retryAfterSeconds !== null) h.set("retry-after", String(err.retryAfterSeconds));
  return new Response(JSON.stringify(err.body()), { status: err.status, headers: h });
}
