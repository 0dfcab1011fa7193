/**
 * The Hono app: OpenAI routes, /health, /metrics, /v1/hc/heads and the playground. The app owns
 * no socket; `serve` in ./mod.ts puts it behind Deno.serve, tests may call `fetch` directly.
 */
import { Hono } from "../deps.ts";
import {
  type HeadProfile,
  isPolicyName,
  type LoadedModel,
  profileFromText,
} from "../engine/model.ts";
import type { Session } from "../engine/session.ts";
import { HcError } from "../errors.ts";
import { ApiError, errorResponse, toApiError } from "./errors.ts";
import {
  type Outcome,
  type PreparedRequest,
  prepareRequest,
  type RunContext,
  type ServedModel,
  startGeneration,
  type StepUpdate,
} from "./generation.ts";
import { headMap } from "./generation.ts";
import { AdmissionQueue, readJsonBody } from "./limits.ts";
import { Metrics } from "./metrics.ts";
import { DEFAULT_PROMPT_CACHE, PromptCache } from "./prompt_cache.ts";
import {
  CACHE_POLICIES,
  type CachePolicyName,
  completionChunk,
  completionResponse,
  newResponseHead,
  type OpenAiFinishReason,
  parseGenerationRequest,
  type RequestKind,
  usage,
  usageChunk,
} from "./openai.ts";
import { playgroundAsset } from "./playground.ts";
import { checkServerOptions, readProfileText } from "./settings.ts";
import { SSE_HEADERS, sseStream } from "./sse.ts";

export interface ServerOptions {
  /** The name clients use in `model`. Default: the model file's name without its extension. */
  modelId?: string;
  /** Most tokens (prompt + generated) one request may use. Default: the model's, at most 8192. */
  contextTokens?: number;
  /** Requests generating at once (each holds its own KV cache). Default 4. */
  maxActive?: number;
  /** Requests that may wait for a slot; more get 429. Default 64. */
  maxQueue?: number;
  /** Largest request body. Default 2 MiB. */
  maxBodyBytes?: number;
  /** Cache policy of requests that name none. Default "full". */
  cache?: CachePolicyName;
  /** Budget of requests that name none (see `keep` in docs/design.md). Default: none. */
  keep?: number | null;
  /** Head profile (or a profile file, ours or the official JSON) for heterocache, per-step
   * and fixed-interval requests; checked against the model when it has loaded. */
  profile?: HeadProfile | string;
  /** Finished conversations kept for prompt reuse (0: none). Default 4. */
  promptCacheSessions?: number;
  /** Device KV bytes those may hold together. Default 1 GiB. */
  promptCacheBytes?: number;
  /** Dispose the model when the server is disposed. Default false. */
  ownsModel?: boolean;
}

export const DEFAULT_CONTEXT_CAP_TOKENS = 8192;
export const DEFAULT_MAX_ACTIVE = 4;
export const DEFAULT_MAX_QUEUE = 64;
export const DEFAULT_MAX_BODY_BYTES = 2 * 1024 * 1024;

type ModelState =
  | { kind: "loading"; doneBytes: number; totalBytes: number }
  | { kind: "ready"; served: ServedModel }
  | { kind: "failed"; message: string; error: unknown };

function shuttingDown(): ApiError {
  return new ApiError(503, "the server is shutting down; retry on another instance or later", {
    type: "service_unavailable_error",
    code: "server_shutting_down",
  });
}

/** The model's id as clients name it: the file name without directories and extension. */
export function modelIdFromPath(path: string): string {
  const base = path.split(/[\\/]/).pop() ?? path;
  return base.replace(/\.(gguf|bin)$/i, "") || "model";
}

const ROUTES = new Set([
  "/",
  "/playground.js",
  "/favicon.svg",
  "/favicon.ico",
  "/health",
  "/metrics",
  "/v1/models",
  "/v1/hc/heads",
  "/v1/completions",
  "/v1/chat/completions",
]);

/** The metrics label of a path: a known route, or "other" (so labels stay few whatever is asked). */
function routeLabel(path: string): string {
  if (ROUTES.has(path)) return path;
  if (/^\/v1\/models\/[^/]+$/.test(path)) return "/v1/models/:id";
  return "other";
}

export class HcServer implements AsyncDisposable {
  readonly app: Hono = new Hono();
  readonly metrics: Metrics = new Metrics();
  readonly queue: AdmissionQueue;
  readonly promptCache: PromptCache;
  readonly #opts: ServerOptions;
  readonly #live = new Set<Session>();
  readonly #inFlight = new Set<AbortController>();
  readonly #created = Math.floor(Date.now() / 1000);
  #state: ModelState = { kind: "loading", doneBytes: 0, totalBytes: 0 };
  #model: LoadedModel | null = null;
  /** A profile given as a file: its text, read once when the server is made. */
  readonly #profileText: string | null;
  #disposed = false;
  /** Set once shutdown began: aborted requests then learn why. */
  #closing = false;

  constructor(model: LoadedModel | Promise<LoadedModel>, opts: ServerOptions = {}) {
    this.#opts = opts;
    this.queue = new AdmissionQueue(
      opts.maxActive ?? DEFAULT_MAX_ACTIVE,
      opts.maxQueue ?? DEFAULT_MAX_QUEUE,
    );
    checkServerOptions(opts);
    this.promptCache = new PromptCache({
      maxSessions: opts.promptCacheSessions ?? DEFAULT_PROMPT_CACHE.maxSessions,
      maxBytes: opts.promptCacheBytes ?? DEFAULT_PROMPT_CACHE.maxBytes,
    });
    this.#profileText = typeof opts.profile === "string" ? readProfileText(opts.profile) : null;
    this.#routes();
    Promise.resolve(model).then(
      (m) => this.#ready(m),
      (e) => {
        this.#state = {
          kind: "failed",
          message: e instanceof Error ? e.message : String(e),
          error: e,
        };
      },
    );
  }

  /** Weight upload progress, shown by /health while the model loads. */
  setLoadProgress(doneBytes: number, totalBytes: number): void {
    if (this.#state.kind === "loading") this.#state = { kind: "loading", doneBytes, totalBytes };
  }

  get ready(): boolean {
    return this.#state.kind === "ready";
  }

  /** Resolves when the model is ready; rejects if it failed to load. */
  async whenReady(): Promise<ServedModel> {
    for (;;) {
      const s = this.#state;
      if (s.kind === "ready") return s.served;
      // An HcError (a bad file, a profile for another model) travels as it is, code included.
      if (s.kind === "failed") {
        if (s.error instanceof HcError) throw s.error;
        throw new Error(`the model failed to load: ${s.message}`);
      }
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  fetch = (req: Request): Promise<Response> => Promise.resolve(this.app.fetch(req));

  #ready(model: LoadedModel): void {
    this.#model = model;
    if (this.#disposed) {
      if (this.#opts.ownsModel) void model[Symbol.asyncDispose]();
      return;
    }
    const limit = model.config.contextLength;
    const contextTokens = Math.min(this.#opts.contextTokens ?? DEFAULT_CONTEXT_CAP_TOKENS, limit);
    if (!Number.isSafeInteger(contextTokens) || contextTokens < 2) {
      const message = `contextTokens must be an integer >= 2, got ${contextTokens}`;
      this.#state = { kind: "failed", message, error: new HcError("E_BAD_REQUEST", message) };
      return;
    }
    let profile: HeadProfile | null = null;
    try {
      const given = this.#opts.profile;
      profile = typeof given === "string"
        ? profileFromText(this.#profileText!, model.identity(), given.split("/").pop())
        : given ?? null;
    } catch (e) {
      this.#state = {
        kind: "failed",
        message: `the head profile: ${e instanceof Error ? e.message : String(e)}`,
        error: e,
      };
      return;
    }
    this.#state = {
      kind: "ready",
      served: {
        model,
        id: this.#opts.modelId ?? modelIdFromPath(model.path),
        contextTokens,
        defaultCache: this.#opts.cache ?? "full",
        defaultKeep: this.#opts.keep ?? null,
        profile,
      },
    };
  }

  #served(): ServedModel {
    const s = this.#state;
    if (s.kind === "ready") return s.served;
    const message = s.kind === "loading"
      ? "the model is still loading; retry when GET /health answers 200"
      : `the model failed to load: ${s.message}`;
    throw new ApiError(503, message, {
      type: "service_unavailable_error",
      code: "model_not_ready",
      ...(s.kind === "loading" ? { retryAfterSeconds: 2 } : {}),
    });
  }

  #context(served: ServedModel): RunContext {
    return {
      served,
      queue: this.queue,
      metrics: this.metrics,
      liveSessions: this.#live,
      promptCache: this.promptCache,
    };
  }

  #routes(): void {
    const app = this.app;
    app.use("*", async (c, next) => {
      await next();
      this.metrics.recordRequest(routeLabel(c.req.path), c.res.status);
    });
    app.onError((e) => errorResponse(e));
    app.notFound((c) =>
      errorResponse(
        new ApiError(404, `no route ${c.req.method} ${c.req.path}`, { code: "not_found" }),
      )
    );

    app.get("/", async () => await playgroundAsset("playground.html"));
    app.get("/playground.js", async () => await playgroundAsset("playground.js"));
    // Browsers ask for /favicon.ico on their own when a page names no icon.
    app.get("/favicon.svg", async () => await playgroundAsset("favicon.svg"));
    app.get("/favicon.ico", async () => await playgroundAsset("favicon.svg"));

    app.get("/health", (c) => {
      const s = this.#state;
      if (s.kind === "ready") return c.json({ status: "ok", model: s.served.id });
      if (s.kind === "loading") {
        const progress = s.totalBytes > 0 ? s.doneBytes / s.totalBytes : 0;
        return c.json({ status: "loading", progress }, 503);
      }
      return c.json({ status: "error", error: s.message }, 503);
    });

    app.get("/metrics", (c) => {
      // Memory measurements want live bytes, not garbage: where V8 exposes gc (the process was
      // started with --v8-flags=--expose-gc), `?gc=1` collects first. Elsewhere it does nothing.
      if (c.req.query("gc") === "1") (globalThis as { gc?: () => void }).gc?.();
      const model = this.#model;
      let kv = 0;
      // Read at scrape time: a compressing policy shrinks a session's KV after prefill.
      for (const s of this.#live) kv += s.stats().deviceKvBytes;
      const text = this.metrics.render({
        modelReady: this.ready,
        queueDepth: this.queue.waiting,
        activeRequests: this.queue.active,
        deviceQueueDepth: model?.queue.depth ?? 0,
        sessions: this.#live.size,
        deviceKvBytes: kv,
        promptCache: this.promptCache.stats(),
      });
      return c.body(text, 200, { "content-type": "text/plain; version=0.0.4; charset=utf-8" });
    });

    app.get("/v1/models", (c) => {
      const served = this.#served();
      return c.json({ object: "list", data: [this.#modelCard(served)] });
    });
    app.get("/v1/models/:id", (c) => {
      const served = this.#served();
      if (c.req.param("id") !== served.id) {
        throw new ApiError(404, `the model '${c.req.param("id")}' does not exist`, {
          code: "model_not_found",
        });
      }
      return c.json(this.#modelCard(served));
    });

    app.get("/v1/hc/heads", (c) => {
      const served = this.#served();
      const asked = c.req.query("cache");
      if (asked !== undefined && !isPolicyName(asked)) {
        throw new ApiError(
          400,
          `unknown cache policy '${asked}'; this server offers: ${CACHE_POLICIES.join(", ")}`,
          {
            param: "cache",
            code: "invalid_value",
          },
        );
      }
      return c.json(headMap(served, asked ?? served.defaultCache));
    });

    for (
      const [path, kind] of [["/v1/completions", "completion"], [
        "/v1/chat/completions",
        "chat",
      ]] as const
    ) {
      app.post(path, (c) => this.#generate(kind, c.req.raw));
      app.all(path, (c) =>
        errorResponse(
          new ApiError(405, `${c.req.method} is not allowed on ${path}; use POST`, {
            code: "method_not_allowed",
          }),
          { allow: "POST" },
        ));
    }
  }

  #modelCard(served: ServedModel): Record<string, unknown> {
    const info = served.model.info();
    return {
      id: served.id,
      object: "model",
      created: this.#created,
      owned_by: "heterocache",
      hc: {
        arch: info.arch,
        parameters: info.parameters,
        context_tokens: served.contextTokens,
        layers: info.config.nLayers,
        kv_heads: info.config.nKvHeads,
        device: info.device,
        cache_policies: [...CACHE_POLICIES],
        default_cache: served.defaultCache,
      },
    };
  }

  async #generate(kind: RequestKind, raw: Request): Promise<Response> {
    if (this.#closing) throw shuttingDown();
    const body = await readJsonBody(raw, this.#opts.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES);
    const req = parseGenerationRequest(kind, body);
    const served = this.#served();
    const prepared = prepareRequest(served, req);
    const abort = new AbortController();
    const onClientGone = () => abort.abort();
    raw.signal.addEventListener("abort", onClientGone, { once: true });
    this.#inFlight.add(abort);
    const done = () => {
      raw.signal.removeEventListener("abort", onClientGone);
      this.#inFlight.delete(abort);
    };
    try {
      const gen = await startGeneration(this.#context(served), prepared, abort.signal);
      if (req.stream) {
        // The first piece comes before the 200: a request the engine refuses (its prompt,
        // budget or policy) gets a real HTTP status, not a 200 and then an error event.
        const it = gen.updates();
        let first: IteratorResult<StepUpdate, Outcome>;
        try {
          first = await it.next();
        } catch (e) {
          gen.close();
          throw e;
        }
        if (first.done && (first.value.summary.finishReason === "abort" || abort.signal.aborted)) {
          gen.close();
          if (this.#closing) throw shuttingDown();
          throw new ApiError(499, "the client closed the request", {
            code: "client_closed_request",
          });
        }
        return this.#stream(kind, served, prepared, gen, it, first, abort, done);
      }
      try {
        return await this.#collect(kind, served, gen, abort.signal);
      } finally {
        gen.close();
        done();
      }
    } catch (e) {
      done();
      throw e;
    }
  }

  async #collect(
    kind: RequestKind,
    served: ServedModel,
    gen: Awaited<ReturnType<typeof startGeneration>>,
    signal: AbortSignal,
  ): Promise<Response> {
    const it = gen.updates();
    let text = "";
    for (;;) {
      const r = await it.next();
      if (r.done) {
        const { summary, hc } = r.value;
        if (summary.finishReason === "abort" || signal.aborted) {
          if (this.#closing) throw shuttingDown();
          throw new ApiError(499, "the client closed the request", {
            code: "client_closed_request",
          });
        }
        const head = newResponseHead(kind, served.id);
        const body = completionResponse(
          kind,
          head,
          text,
          summary.finishReason,
          usage(
            summary.cachedTokens + summary.promptTokens,
            summary.completionTokens,
            summary.cachedTokens,
          ),
          hc,
        );
        return Response.json(body);
      }
      text += r.value.text;
    }
  }

  #stream(
    kind: RequestKind,
    served: ServedModel,
    p: PreparedRequest,
    gen: Awaited<ReturnType<typeof startGeneration>>,
    it: AsyncGenerator<StepUpdate, Outcome, undefined>,
    first: IteratorResult<StepUpdate, Outcome>,
    abort: AbortController,
    done: () => void,
  ): Response {
    const head = newResponseHead(kind, served.id);
    const includeUsage = p.req.includeUsage;
    const usageNull = includeUsage ? { usage: null } : {};
    const closing = () => this.#closing;
    async function* events(): AsyncGenerator<string, void, undefined> {
      let next: IteratorResult<StepUpdate, Outcome> | null = first;
      try {
        if (kind === "chat") {
          yield JSON.stringify(
            completionChunk(kind, head, { role: "assistant", text: "" }, null, usageNull),
          );
        }
        for (;;) {
          const r = next ?? await it.next();
          next = null;
          if (r.done) {
            const { summary, hc } = r.value;
            if (summary.finishReason === "abort") {
              if (closing()) yield JSON.stringify(shuttingDown().body());
              return;
            }
            const finish: OpenAiFinishReason = summary.finishReason;
            const u = usage(
              summary.cachedTokens + summary.promptTokens,
              summary.completionTokens,
              summary.cachedTokens,
            );
            if (includeUsage) {
              yield JSON.stringify(completionChunk(kind, head, {}, finish, { usage: null }));
              yield JSON.stringify(usageChunk(kind, head, u, hc));
            } else {
              yield JSON.stringify(completionChunk(kind, head, {}, finish, { usage: u, hc }));
            }
            yield "[DONE]";
            return;
          }
          yield JSON.stringify(
            completionChunk(kind, head, { text: r.value.text }, null, {
              ...usageNull,
              hc: r.value.hc,
            }),
          );
        }
      } catch (e) {
        if (abort.signal.aborted) {
          if (closing()) yield JSON.stringify(shuttingDown().body());
          return;
        }
        // Headers are sent: the failure travels as an error event, as OpenAI's streams do.
        yield JSON.stringify(toApiError(e).body());
      } finally {
        await it.return(undefined as never).catch(() => {});
      }
    }
    const stream = sseStream(events(), {
      onCancel: () => abort.abort(),
      onEnd: () => {
        gen.close();
        done();
      },
    });
    return new Response(stream, { headers: SSE_HEADERS });
  }

  /** Ends every running generation (streams close without [DONE]; waiting requests get 499). */
  abortAll(): void {
    this.#closing = true;
    for (const a of this.#inFlight) a.abort();
  }

  /**
   * Ends running generations, and frees the model when owned. Close the
   * socket between abortAll() and this (as `serve` does), so no step runs on a freed model.
   */
  async [Symbol.asyncDispose](): Promise<void> {
    if (this.#disposed) return;
    this.#disposed = true;
    this.abortAll();
    // Parked sessions hold device memory of a model that may outlive this server.
    await this.#model?.queue.run(() => Promise.resolve());
    this.promptCache[Symbol.dispose]();
    if (this.#opts.ownsModel && this.#model) await this.#model[Symbol.asyncDispose]();
  }
}

/** A server for `model` (loaded, or still loading: /health says 503 until it is ready). */
export function createServer(
  model: LoadedModel | Promise<LoadedModel>,
  opts: ServerOptions = {},
): HcServer {
  return new HcServer(model, opts);
}
