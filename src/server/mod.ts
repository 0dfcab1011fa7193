/**
 * The OpenAI-compatible HTTP server: `createServer` builds the app, `serve` puts it on a socket
 * with Deno.serve.
 *
 * ```ts
 * import { loadModel } from "../../mod.ts";
 * import { serve } from "./mod.ts";
 * await using running = await serve(loadModel("model.gguf"), { port: 8000, ownsModel: true });
 * await running.finished;
 * ```
 */
import type { LoadedModel } from "../engine/model.ts";
import { HcError } from "../errors.ts";
import { createServer, type HcServer, type ServerOptions } from "./app.ts";

export {
  createServer,
  DEFAULT_CONTEXT_CAP_TOKENS,
  DEFAULT_MAX_ACTIVE,
  DEFAULT_MAX_BODY_BYTES,
  DEFAULT_MAX_QUEUE,
  HcServer,
  modelIdFromPath,
  type ServerOptions,
} from "./app.ts";
export { ApiError, toApiError } from "./errors.ts";
export { CACHE_POLICIES, type CachePolicyName } from "./openai.ts";
export { parsePrometheus } from "./metrics.ts";
export { parseSse } from "./sse.ts";
export type { HcStatsJson, HeadMapJson } from "./stats.ts";

export interface ServeOptions extends ServerOptions {
  /** Default 127.0.0.1. */
  hostname?: string;
  /** Default 8000; 0 picks a free port. */
  port?: number;
  /** Aborting it shuts the server down. */
  signal?: AbortSignal;
  /** Called once the socket listens. */
  onListen?: (addr: { hostname: string; port: number; url: string }) => void;
}

export interface RunningServer extends AsyncDisposable {
  readonly server: HcServer;
  readonly url: string;
  readonly port: number;
  /** Resolves when the socket has closed. */
  readonly finished: Promise<void>;
  /** Stops accepting, ends running generations, closes the socket and frees the model if owned. */
  shutdown(): Promise<void>;
}

/** Why the socket could not open, as the user can act on it. */
function listenError(e: unknown, hostname: string, port: number): unknown {
  const where = `${hostname}:${port}`;
  if (e instanceof Deno.errors.AddrInUse) {
    return new HcError(
      "E_IO",
      `port ${port} is already in use on ${hostname}; stop what listens there or choose another with --port (0 picks a free one)`,
      { cause: e },
    );
  }
  if (e instanceof Deno.errors.PermissionDenied) {
    return new HcError(
      "E_IO",
      `not allowed to listen on ${where} (ports below 1024 need privileges); choose another with --port`,
      { cause: e },
    );
  }
  if (e instanceof Deno.errors.AddrNotAvailable || e instanceof TypeError) {
    return new HcError(
      "E_IO",
      `cannot listen on ${where}: ${(e as Error).message}; check --host`,
      { cause: e },
    );
  }
  return e;
}

/**
 * Listens at once and serves /health (503) while `model` loads; the routes that need the model
 * answer 503 until it is ready.
 */
export function serve(
  model: LoadedModel | Promise<LoadedModel>,
  opts: ServeOptions = {},
): Promise<RunningServer> {
  const server = createServer(model, opts);
  const hostname = opts.hostname ?? "127.0.0.1";
  const { promise: listening, resolve } = Promise.withResolvers<{ port: number }>();
  const port = opts.port ?? 8000;
  let http: Deno.HttpServer;
  try {
    http = Deno.serve({
      hostname,
      port,
      signal: opts.signal,
      onListen: (addr) => resolve({ port: addr.port }),
    }, server.fetch);
  } catch (e) {
    // Nothing listens: free what the server holds (the model too, when it owns it).
    void server[Symbol.asyncDispose]();
    return Promise.reject(listenError(e, hostname, port));
  }
  let closing: Promise<void> | null = null;
  const shutdown = () => {
    closing ??= (async () => {
      // Ending the generations first lets their streams finish, so the socket can close; the
      // model is freed only after the last response, so no step runs on freed memory.
      server.abortAll();
      await http.shutdown();
      await server[Symbol.asyncDispose]();
    })();
    return closing;
  };
  opts.signal?.addEventListener("abort", () => void shutdown(), { once: true });
  return listening.then(({ port }) => {
    const host = hostname.includes(":") ? `[${hostname}]` : hostname;
    const url = `http://${host === "0.0.0.0" ? "127.0.0.1" : host}:${port}`;
    opts.onListen?.({ hostname, port, url });
    return {
      server,
      url,
      port,
      finished: http.finished,
      shutdown,
      [Symbol.asyncDispose]: shutdown,
    };
  });
}
