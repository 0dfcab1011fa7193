/**
 * Admission and size limits: the bounded queue in front of the model and the capped body reader.
 * Requests past the queue bound are refused at once (429) instead of piling up memory.
 */
import { ApiError } from "./errors.ts";

/** Releases an admission slot; calling it again does nothing. */
export type Release = () => void;

interface Waiter {
  resolve: (release: Release) => void;
  reject: (e: unknown) => void;
  cleanup: () => void;
}

/**
 * At most `maxActive` requests generate at once (each holds a session, i.e. device KV memory); at
 * most `maxWaiting` more wait their turn in FIFO order. The device work of the active ones is
 * interleaved step by step by the engine's DeviceQueue.
 */
export class AdmissionQueue {
  readonly maxActive: number;
  readonly maxWaiting: number;
  #active = 0;
  #waiting: Waiter[] = [];

  constructor(maxActive: number, maxWaiting: number) {
    if (!Number.isSafeInteger(maxActive) || maxActive < 1) {
      throw new RangeError(`maxActive must be >= 1, got ${maxActive}`);
    }
    if (!Number.isSafeInteger(maxWaiting) || maxWaiting < 0) {
      throw new RangeError(`maxWaiting must be >= 0, got ${maxWaiting}`);
    }
    this.maxActive = maxActive;
    this.maxWaiting = maxWaiting;
  }

  get active(): number {
    return this.#active;
  }

  /** Requests admitted but not yet generating. */
  get waiting(): number {
    return this.#waiting.length;
  }

  /** Waits for a slot; 429 when the queue is full, 499 when `signal` aborts while waiting. */
  acquire(signal?: AbortSignal): Promise<Release> {
    if (signal?.aborted) return Promise.reject(clientGone());
    if (this.#active < this.maxActive) {
      this.#active++;
      return Promise.resolve(this.#releaser());
    }
    if (this.#waiting.length >= this.maxWaiting) {
      return Promise.reject(
        new ApiError(
          429,
          `the server is busy: ${this.#active} requests running and ${this.#waiting.length} waiting (the limit); retry later`,
          // A generation slot frees within seconds on any model this serves.
          { type: "rate_limit_error", code: "queue_full", retryAfterSeconds: 1 },
        ),
      );
    }
    return new Promise<Release>((resolve, reject) => {
      const onAbort = () => {
        const i = this.#waiting.indexOf(waiter);
        if (i >= 0) this.#waiting.splice(i, 1);
        reject(clientGone());
      };
      const waiter: Waiter = {
        resolve,
        reject,
        cleanup: () => signal?.removeEventListener("abort", onAbort),
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.#waiting.push(waiter);
    });
  }

  #releaser(): Release {
    let done = false;
    return () => {
      if (done) return;
      done = true;
      const next = this.#waiting.shift();
      if (next) {
        // The slot passes straight to the next waiter; #active is unchanged.
        next.cleanup();
        next.resolve(this.#releaser());
      } else {
        this.#active--;
      }
    };
  }
}

function clientGone(): ApiError {
  return new ApiError(499, "the client closed the request", { code: "client_closed_request" });
}

/**
 * The request body as JSON, read with a hard cap: a declared length over the cap is refused before
 * reading, and a body that streams past it is cut off. Invalid UTF-8 and malformed JSON are 400.
 */
export async function readJsonBody(req: Request, maxBytes: number): Promise<unknown> {
  const tooLarge = () =>
    new ApiError(413, `the request body is larger than the limit of ${maxBytes} bytes`, {
      code: "request_too_large",
    });
  const declared = req.headers.get("content-length");
  if (declared !== null && Number(declared) > maxBytes) throw tooLarge();
  if (!req.body) {
    throw new ApiError(400, "the request has no body; send a JSON object", {
      code: "invalid_json",
    });
  }
  const reader = req.body.getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    total += value.byteLength;
    if (total > maxBytes) {
      await reader.cancel().catch(() => {});
      throw tooLarge();
    }
    chunks.push(value);
  }
  const bytes = new Uint8Array(total);
  let at = 0;
  for (const c of chunks) {
    bytes.set(c, at);
    at += c.byteLength;
  }
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new ApiError(400, "the request body is not valid UTF-8", { code: "invalid_json" });
  }
  if (text.trim() === "") {
    throw new ApiError(400, "the request body is empty; send a JSON object", {
      code: "invalid_json",
    });
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new ApiError(400, `the request body is not valid JSON: ${(e as Error).message}`, {
      code: "invalid_json",
    });
  }
}
