/**
 * The HTTP server against the real stories260K model: OpenAI shapes (plain and streamed),
 * validation, limits, the queue, client disconnects, /health, /metrics and /v1/hc/heads.
 */
import assert from "node:assert/strict";
import { loadModel, POLICY_NAMES } from "../mod.ts";
import { AdmissionQueue } from "../src/server/limits.ts";
import { parsePrometheus, parseSse, serve, type ServeOptions } from "../src/server/mod.ts";
import { sharedPath } from "./helpers.ts";

const MODEL = sharedPath("models/stories260K.gguf");
const model = await loadModel(MODEL);

/** The engine's own greedy text for a prompt: what every greedy answer must equal. */
async function engineText(
  prompt: string | { role: "user"; content: string }[],
  maxTokens: number,
): Promise<string> {
  using s = model.session();
  return (await s.complete(prompt, { maxTokens, temperature: 0 })).text;
}

async function withServer(opts: ServeOptions, fn: (url: string) => Promise<void>): Promise<void> {
  const running = await serve(model, { port: 0, ...opts });
  try {
    await running.server.whenReady();
    await fn(running.url);
  } finally {
    await running.shutdown();
  }
}

/** POSTs `body`: strings, bytes and streams as they are, anything else as JSON. */
function post(url: string, body: unknown, init: RequestInit = {}): Promise<Response> {
  const raw = typeof body === "string" || body instanceof Uint8Array ||
    body instanceof ReadableStream;
  return fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: raw ? body as BodyInit : JSON.stringify(body),
    ...init,
  });
}

async function metrics(url: string): Promise<Map<string, number>> {
  return parsePrometheus(await (await fetch(`${url}/metrics`)).text());
}

/** Polls /metrics until `ok` holds (the server frees things after the response ends). */
async function metricsUntil(
  url: string,
  ok: (m: Map<string, number>) => boolean,
  what: string,
): Promise<Map<string, number>> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const m = await metrics(url);
    if (ok(m)) return m;
    if (Date.now() > deadline) {
      throw new Error(`timed out waiting for ${what}: ${JSON.stringify([...m])}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A long streamed completion held open after its first piece (it keeps a slot and a session
 * until `release`). */
async function holdStream(url: string): Promise<{ release: () => Promise<void> }> {
  const holder = new AbortController();
  const res = await post(`${url}/v1/completions`, {
    prompt: "Once",
    max_tokens: 1800,
    temperature: 0,
    stream: true,
  }, { signal: holder.signal });
  const reader = res.body!.getReader();
  await reader.read();
  return {
    release: async () => {
      holder.abort();
      await reader.cancel().catch(() => {});
    },
  };
}

type ErrorBody = {
  error: { message: string; type: string; param: string | null; code: string | null };
};

async function expectError(
  res: Response,
  status: number,
  code?: string,
  param?: string,
): Promise<ErrorBody> {
  const text = await res.text();
  assert.equal(res.status, status, `expected ${status}, got ${res.status}: ${text}`);
  const body = JSON.parse(text) as ErrorBody;
  assert.equal(typeof body.error.message, "string");
  assert.ok(body.error.message.length > 0);
  assert.equal(typeof body.error.type, "string");
  if (code !== undefined) assert.equal(body.error.code, code, text);
  if (param !== undefined) assert.equal(body.error.param, param, text);
  return body;
}

Deno.test("health is 503 while the model loads and 200 once it is ready", async () => {
  const { promise, resolve } = Promise.withResolvers<typeof model>();
  const running = await serve(promise, { port: 0 });
  try {
    const h = await fetch(`${running.url}/health`);
    assert.equal(h.status, 503);
    assert.equal((await h.json()).status, "loading");
    await expectError(
      await post(`${running.url}/v1/completions`, { prompt: "x" }),
      503,
      "model_not_ready",
    );
    await expectError(await fetch(`${running.url}/v1/models`), 503, "model_not_ready");
    resolve(model);
    await running.server.whenReady();
    const ok = await fetch(`${running.url}/health`);
    assert.equal(ok.status, 200);
    assert.deepEqual(await ok.json(), { status: "ok", model: "stories260K" });
    const list = await (await fetch(`${running.url}/v1/models`)).json();
    assert.equal(list.object, "list");
    assert.equal(list.data.length, 1);
    assert.equal(list.data[0].id, "stories260K");
    assert.equal(list.data[0].object, "model");
    assert.deepEqual(list.data[0].hc.cache_policies, [...POLICY_NAMES]);
    assert.equal(
      (await (await fetch(`${running.url}/v1/models/stories260K`)).json()).id,
      "stories260K",
    );
    await expectError(await fetch(`${running.url}/v1/models/gpt-4`), 404, "model_not_found");
  } finally {
    await running.shutdown();
  }
});

Deno.test("a model that fails to load keeps /health at 503 with the reason", async () => {
  const running = await serve(Promise.reject(new Error("no such file: nowhere.gguf")), { port: 0 });
  try {
    await new Promise((r) => setTimeout(r, 10));
    const h = await fetch(`${running.url}/health`);
    assert.equal(h.status, 503);
    const body = await h.json();
    assert.equal(body.status, "error");
    assert.match(body.error, /nowhere\.gguf/);
  } finally {
    await running.shutdown();
  }
});

Deno.test("completions and chat answer greedily with the engine's text, usage and hc", async () => {
  const reference = await engineText("Once upon a time", 24);
  const chatMessages = [{ role: "user" as const, content: "Tell me a story." }];
  const chatReference = await engineText(chatMessages, 20);
  await withServer({}, async (url) => {
    const res = await post(`${url}/v1/completions`, {
      model: "stories260K",
      prompt: "Once upon a time",
      max_tokens: 24,
      temperature: 0,
    });
    assert.equal(res.status, 200);
    const body = await res.json();
    assert.equal(body.object, "text_completion");
    assert.match(body.id, /^cmpl-/);
    assert.equal(body.model, "stories260K");
    assert.equal(body.choices.length, 1);
    assert.equal(body.choices[0].text, reference);
    assert.equal(body.choices[0].finish_reason, "length");
    using probe = model.session({ contextTokens: 1 });
    const promptTokens = probe.tokenize("Once upon a time").length;
    assert.deepEqual(body.usage, {
      prompt_tokens: promptTokens,
      completion_tokens: 24,
      total_tokens: promptTokens + 24,
      prompt_tokens_details: { cached_tokens: 0 },
    });
    assert.equal(body.hc.cache, "full");
    assert.equal(body.hc.prompt_tokens, promptTokens);
    assert.equal(body.hc.completion_tokens, 24);
    assert.equal(body.hc.context_tokens, promptTokens + 24);
    assert.ok(body.hc.device_kv_bytes > 0);
    assert.ok(body.hc.decode_tokens_per_second > 0);
    for (const k of ["drift_checks", "triggers", "bytes_moved"]) assert.equal(body.hc[k], 0, k);
    assert.equal(body.hc.heads.layers, 5);
    assert.equal(body.hc.heads.kv_heads, 4);

    const chat = await (await post(`${url}/v1/chat/completions`, {
      model: "stories260K",
      messages: chatMessages,
      max_tokens: 20,
      temperature: 0,
    })).json();
    assert.equal(chat.object, "chat.completion");
    assert.match(chat.id, /^chatcmpl-/);
    assert.equal(chat.choices[0].message.role, "assistant");
    assert.equal(chat.choices[0].message.content, chatReference);
    assert.equal(chat.usage.total_tokens, chat.usage.prompt_tokens + chat.usage.completion_tokens);
    // Content given as text parts is the same message.
    const parts = await (await post(`${url}/v1/chat/completions`, {
      messages: [{
        role: "user",
        content: [{ type: "text", text: "Tell me " }, { type: "text", text: "a story." }],
      }],
      max_completion_tokens: 20,
      temperature: 0,
    })).json();
    assert.equal(parts.choices[0].message.content, chatReference);
  });
});

Deno.test("defaults: 16 tokens for completions; seeds make sampling repeatable; stop ends early", async () => {
  await withServer({}, async (url) => {
    const d =
      await (await post(`${url}/v1/completions`, { prompt: "Once upon a time", temperature: 0 }))
        .json();
    assert.equal(d.usage.completion_tokens, 16);
    const sample = async (seed: number) =>
      (await (await post(`${url}/v1/completions`, {
        prompt: "Once",
        max_tokens: 30,
        seed,
        temperature: 1,
      })).json())
        .choices[0].text as string;
    const a = await sample(7);
    assert.equal(await sample(7), a);
    const others = [await sample(8), await sample(9), await sample(10)];
    assert.ok(others.some((t) => t !== a), "different seeds should not all give the same text");
    const reference = await engineText("Once upon a time", 40);
    const cut = reference.indexOf("Lily");
    assert.ok(cut > 0, `the reference text should mention Lily: ${reference}`);
    const s = await (await post(`${url}/v1/completions`, {
      prompt: "Once upon a time",
      max_tokens: 40,
      temperature: 0,
      stop: ["Lily"],
    }))
      .json();
    assert.equal(s.choices[0].text, reference.slice(0, cut));
    assert.equal(s.choices[0].finish_reason, "stop");
  });
});

Deno.test("streaming: OpenAI chunks, [DONE] last, usage on request, same text as without streaming", async () => {
  const reference = await engineText("Once upon a time", 30);
  await withServer({}, async (url) => {
    const res = await post(`${url}/v1/completions`, {
      prompt: "Once upon a time",
      max_tokens: 30,
      temperature: 0,
      stream: true,
    });
    assert.equal(res.status, 200);
    assert.match(res.headers.get("content-type") ?? "", /^text\/event-stream/);
    const events = [];
    for await (const d of parseSse(res.body!)) events.push(d);
    assert.equal(events.at(-1), "[DONE]");
    const chunks = events.slice(0, -1).map((e) => JSON.parse(e));
    assert.ok(chunks.length > 5, "tokens should arrive in many chunks");
    assert.equal(chunks.map((c) => c.choices[0].text).join(""), reference);
    for (const c of chunks) assert.equal(c.object, "text_completion");
    assert.equal(new Set(chunks.map((c) => c.id)).size, 1);
    const last = chunks.at(-1);
    assert.equal(last.choices[0].finish_reason, "length");
    assert.equal(last.usage.completion_tokens, 30);
    assert.equal(last.hc.heads.layers, 5);
    assert.ok(chunks.slice(0, -1).every((c) => c.choices[0].finish_reason === null));
    // Live stats travel with the pieces.
    assert.ok(chunks[1].hc.device_kv_bytes > 0);

    const chat = await post(`${url}/v1/chat/completions`, {
      messages: [{ role: "user", content: "Hello" }],
      max_tokens: 12,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    });
    const ev = [];
    for await (const d of parseSse(chat.body!)) ev.push(d);
    assert.equal(ev.at(-1), "[DONE]");
    const cc = ev.slice(0, -1).map((e) => JSON.parse(e));
    assert.equal(cc[0].choices[0].delta.role, "assistant");
    for (const c of cc) assert.equal(c.object, "chat.completion.chunk");
    const usageChunk = cc.at(-1);
    assert.deepEqual(usageChunk.choices, []);
    assert.equal(usageChunk.usage.completion_tokens, 12);
    assert.ok(usageChunk.hc.heads);
    assert.ok(
      cc.slice(0, -1).every((c) => c.usage === null),
      "chunks before the usage chunk carry usage: null",
    );
    assert.equal(cc.at(-2).choices[0].finish_reason, "length");
    const text = cc.slice(0, -1).map((c) => c.choices[0].delta.content ?? "").join("");
    const plain = await (await post(`${url}/v1/chat/completions`, {
      messages: [{ role: "user", content: "Hello" }],
      max_tokens: 12,
      temperature: 0,
    })).json();
    assert.equal(text, plain.choices[0].message.content);
  });
});

Deno.test("validation: every bad request gets a 4xx OpenAI error and never reaches the engine", async () => {
  await withServer({ maxBodyBytes: 4096, contextTokens: 64 }, async (url) => {
    const sessionsBefore = model.sessionCount;
    const c = `${url}/v1/completions`;
    const chat = `${url}/v1/chat/completions`;
    await expectError(await post(c, "{not json"), 400, "invalid_json");
    await expectError(await post(c, ""), 400, "invalid_json");
    await expectError(await post(c, new Uint8Array([0x7b, 0xff, 0xfe, 0x7d])), 400, "invalid_json");
    await expectError(await post(c, "[1,2]"), 400, "invalid_body");
    await expectError(await post(c, "null"), 400, "invalid_body");
    await expectError(await post(c, {}), 400, "missing_required_parameter", "prompt");
    await expectError(await post(c, { prompt: 12 }), 400, "invalid_type", "prompt");
    await expectError(await post(c, { prompt: [1, 2, 3] }), 400, "unsupported_parameter", "prompt");
    await expectError(
      await post(c, { prompt: ["a", "b"] }),
      400,
      "unsupported_parameter",
      "prompt",
    );
    await expectError(await post(c, { prompt: "x", model: 5 }), 400, "invalid_type", "model");
    await expectError(
      await post(c, { prompt: "x", max_tokens: "10" }),
      400,
      "invalid_type",
      "max_tokens",
    );
    await expectError(
      await post(c, { prompt: "x", max_tokens: 1.5 }),
      400,
      undefined,
      "max_tokens",
    );
    await expectError(await post(c, { prompt: "x", max_tokens: 0 }), 400, undefined, "max_tokens");
    await expectError(
      await post(c, { prompt: "x", temperature: 3 }),
      400,
      undefined,
      "temperature",
    );
    await expectError(
      await post(c, { prompt: "x", temperature: "hot" }),
      400,
      "invalid_type",
      "temperature",
    );
    await expectError(await post(c, { prompt: "x", top_p: 0 }), 400, undefined, "top_p");
    await expectError(await post(c, { prompt: "x", top_p: 1.5 }), 400, undefined, "top_p");
    await expectError(await post(c, { prompt: "x", seed: 1.5 }), 400, undefined, "seed");
    await expectError(await post(c, { prompt: "x", n: 2 }), 400, "unsupported_parameter", "n");
    await expectError(
      await post(c, { prompt: "x", logprobs: 3 }),
      400,
      "unsupported_parameter",
      "logprobs",
    );
    await expectError(await post(c, { prompt: "x", stream: "yes" }), 400, "invalid_type", "stream");
    await expectError(
      await post(c, { prompt: "x", stream_options: { include_usage: true } }),
      400,
      undefined,
      "stream_options",
    );
    await expectError(
      await post(c, { prompt: "x", stop: ["a", "b", "c", "d", "e"] }),
      400,
      undefined,
      "stop",
    );
    await expectError(await post(c, { prompt: "x", stop: [1] }), 400, "invalid_type", "stop");
    await expectError(await post(chat, {}), 400, "missing_required_parameter", "messages");
    await expectError(await post(chat, { messages: "hi" }), 400, "invalid_type", "messages");
    await expectError(await post(chat, { messages: [] }), 400, undefined, "messages");
    await expectError(
      await post(chat, { messages: [{ role: "tool", content: "x" }] }),
      400,
      undefined,
      "messages[0].role",
    );
    await expectError(
      await post(chat, { messages: [{ role: "user", content: 3 }] }),
      400,
      "invalid_type",
      "messages[0].content",
    );
    await expectError(await post(chat, { messages: [null] }), 400, "invalid_type", "messages[0]");
    await expectError(
      await post(chat, {
        messages: [{ role: "user", content: [{ type: "image_url", image_url: "x" }] }],
      }),
      400,
      "invalid_type",
    );
    await expectError(
      await post(c, { prompt: "x", model: "gpt-4" }),
      404,
      "model_not_found",
      "model",
    );
    // Cache policy and budget.
    const bad = await expectError(
      await post(c, { prompt: "x", cache: "lru" }),
      400,
      "invalid_value",
      "cache",
    );
    assert.match(bad.error.message, /full/);
    // HeteroCache needs a head profile, which this server was not given.
    const noProfile = await expectError(
      await post(c, { prompt: "x", cache: "heterocache" }),
      400,
      "profile_required",
      "cache",
    );
    assert.match(noProfile.error.message, /--profile/);
    await expectError(await post(c, { prompt: "x", cache: 3 }), 400, "invalid_value", "cache");
    await expectError(await post(c, { prompt: "x", keep: 0.25 }), 400, undefined, "keep");
    await expectError(await post(c, { prompt: "x", keep: -1 }), 400, undefined, "keep");
    await expectError(await post(c, { prompt: "x", keep: 1.5 }), 400, undefined, "keep");
    await expectError(await post(c, { prompt: "x", keep: "all" }), 400, "invalid_type", "keep");
    // Context: the server was given 64 tokens per request.
    const long = "Once upon a time there was a dog. ".repeat(20);
    const ctx = await expectError(
      await post(c, { prompt: long }),
      400,
      "context_length_exceeded",
      "prompt",
    );
    assert.match(ctx.error.message, /64/);
    await expectError(
      await post(c, { prompt: "Once", max_tokens: 64 }),
      400,
      "context_length_exceeded",
      "max_tokens",
    );
    await expectError(
      await post(chat, { messages: [{ role: "user", content: long }] }),
      400,
      "context_length_exceeded",
      "messages",
    );
    // Size limit: declared and streamed without a length.
    await expectError(await post(c, { prompt: "x".repeat(5000) }), 413, "request_too_large");
    const chunked = new ReadableStream<Uint8Array>({
      start(ctl) {
        for (let i = 0; i < 10; i++) ctl.enqueue(new TextEncoder().encode(" ".repeat(1000)));
        ctl.close();
      },
    });
    await expectError(await post(c, chunked), 413, "request_too_large");
    // Routes.
    await expectError(await fetch(c), 405, "method_not_allowed");
    await expectError(await fetch(`${url}/v2/nothing`), 404, "not_found");
    await expectError(await fetch(`${url}/v1/hc/heads?cache=lru`), 400, "invalid_value");
    // Accepted: explicit full cache, keep 1, unknown extra fields ignored.
    const ok = await post(c, {
      prompt: "Once",
      max_tokens: 3,
      cache: "full",
      keep: 1,
      user: "me",
      frobnicate: true,
    });
    assert.equal(ok.status, 200);
    assert.equal((await ok.json()).hc.cache, "full");
    // The one that ran is parked for prompt reuse (freed with the server), no other.
    const m = await metrics(url);
    assert.equal(m.get("hc_prompt_cache_sessions"), 1);
    assert.equal(model.sessionCount, sessionsBefore + 1, "no session may outlive its request");
    assert.ok((m.get('hc_requests_total{route="/v1/completions",status="400"}') ?? 0) >= 20);
    assert.equal(m.get("hc_generations_total"), 1, "only the accepted request reached the engine");
  });
});

Deno.test("the queue is bounded: waiting requests queue, the rest get 429, slots come back", async () => {
  await withServer({ maxActive: 1, maxQueue: 1 }, async (url) => {
    // Holds the only slot: a long stream whose reader stops after the first piece.
    const held = await holdStream(url);
    const waiting = post(`${url}/v1/completions`, {
      prompt: "Once upon a time",
      max_tokens: 5,
      temperature: 0,
    });
    await metricsUntil(
      url,
      (m) => m.get("hc_queue_depth") === 1 && m.get("hc_active_requests") === 1,
      "one queued",
    );
    const busy = await post(`${url}/v1/completions`, { prompt: "Once", max_tokens: 5 });
    assert.equal(busy.headers.get("retry-after"), "1");
    const refused = await expectError(busy, 429, "queue_full");
    assert.equal(refused.error.type, "rate_limit_error");
    await held.release();
    const w = await waiting;
    assert.equal(w.status, 200);
    assert.equal((await w.json()).choices[0].text, await engineText("Once upon a time", 5));
    await metricsUntil(
      url,
      (m) => m.get("hc_active_requests") === 0 && m.get("hc_sessions") === 0,
      "all free",
    );
  });
});

Deno.test("a client that disconnects mid-stream stops its generation and frees its session", async () => {
  await withServer({}, async (url) => {
    const before = await metrics(url);
    const abort = new AbortController();
    const res = await post(`${url}/v1/chat/completions`, {
      messages: [{ role: "user", content: "Tell me a long story." }],
      max_tokens: 1500,
      temperature: 0,
      stream: true,
    }, { signal: abort.signal });
    const reader = res.body!.getReader();
    for (let i = 0; i < 3; i++) await reader.read();
    abort.abort();
    await reader.cancel().catch(() => {});
    const m = await metricsUntil(
      url,
      (m) =>
        m.get("hc_sessions") === 0 && m.get("hc_active_requests") === 0 &&
        m.get("hc_device_kv_bytes") === 0,
      "the session to be freed",
    );
    assert.equal(
      m.get("hc_generations_aborted_total"),
      (before.get("hc_generations_aborted_total") ?? 0) + 1,
    );
    const generated = m.get("hc_completion_tokens_total")! -
      (before.get("hc_completion_tokens_total") ?? 0);
    assert.ok(generated < 1500, `the generation should stop early, it made ${generated} tokens`);
    // A non-streaming request whose client leaves while it waits for a slot never starts.
    assert.equal((await fetch(`${url}/health`)).status, 200);
  });
});

Deno.test("a client that leaves while queued never gets a session", async () => {
  await withServer({ maxActive: 1, maxQueue: 4 }, async (url) => {
    const held = await holdStream(url);
    const leaver = new AbortController();
    const queued = post(`${url}/v1/completions`, { prompt: "Once", max_tokens: 5 }, {
      signal: leaver.signal,
    });
    await metricsUntil(url, (m) => m.get("hc_queue_depth") === 1, "one queued");
    leaver.abort();
    await assert.rejects(queued);
    await metricsUntil(url, (m) => m.get("hc_queue_depth") === 0, "the queue to empty");
    const m = await metrics(url);
    assert.equal(m.get("hc_generations_total") ?? 0, 0, "the queued request never started");
    await held.release();
    await metricsUntil(
      url,
      (m) => m.get("hc_sessions") === 0 && m.get("hc_active_requests") === 0,
      "all free",
    );
  });
});

Deno.test("failing and aborted requests do not disturb the ones running beside them", async () => {
  const reference = await engineText("Once upon a time", 40);
  await withServer({ maxActive: 4, contextTokens: 128 }, async (url) => {
    const good = () =>
      post(`${url}/v1/completions`, { prompt: "Once upon a time", max_tokens: 40, temperature: 0 })
        .then((r) => r.json());
    const leaving = async () => {
      const a = new AbortController();
      const r = await post(`${url}/v1/completions`, {
        prompt: "Once",
        max_tokens: 100,
        stream: true,
      }, { signal: a.signal });
      const rd = r.body!.getReader();
      await rd.read();
      a.abort();
      await rd.cancel().catch(() => {});
    };
    const results = await Promise.all([
      good(),
      post(`${url}/v1/completions`, "{oops").then((r) => r.status),
      good(),
      leaving(),
      post(`${url}/v1/completions`, { prompt: "x".repeat(2000) }).then((r) => r.status),
      good(),
      post(`${url}/v1/completions`, { prompt: "Once", max_tokens: 100, top_p: -1 }).then((r) =>
        r.status
      ),
      good(),
    ]);
    for (const i of [0, 2, 5, 7]) {
      assert.equal((results[i] as { choices: { text: string }[] }).choices[0].text, reference);
    }
    assert.deepEqual([results[1], results[4], results[6]], [400, 400, 400]);
    await metricsUntil(url, (m) => m.get("hc_sessions") === 0, "all sessions freed");
  });
});

Deno.test("hc_sessions counts live sessions: 1 while a streamed request is open, 0 after", async () => {
  await withServer({}, async (url) => {
    assert.equal((await metrics(url)).get("hc_sessions"), 0, "no request, no session");
    const held = await holdStream(url);
    const live = await metrics(url);
    assert.equal(live.get("hc_active_requests"), 1, "the request is still running");
    assert.equal(live.get("hc_sessions"), 1);
    assert.ok(live.get("hc_device_kv_bytes")! > 0);
    await held.release();
    await metricsUntil(url, (m) => m.get("hc_sessions") === 0, "the session to be freed");
  });
});

Deno.test("metrics are Prometheus text with the documented families", async () => {
  await withServer({}, async (url) => {
    await post(`${url}/v1/completions`, { prompt: "Once", max_tokens: 4 }).then((r) =>
      r.body?.cancel()
    );
    const res = await fetch(`${url}/metrics`);
    assert.match(res.headers.get("content-type") ?? "", /^text\/plain; version=0\.0\.4/);
    const text = await res.text();
    const sample =
      /^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*"(,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*")*\})? -?[0-9.e+-]+$/;
    for (const line of text.trimEnd().split("\n")) {
      if (line.startsWith("# HELP ") || line.startsWith("# TYPE ")) continue;
      assert.match(line, sample);
    }
    const m = parsePrometheus(text);
    for (
      const name of [
        "hc_prompt_tokens_total",
        "hc_completion_tokens_total",
        "hc_decode_tokens_per_second",
        "hc_queue_depth",
        "hc_device_kv_bytes",
        "hc_drift_checks_total",
        "hc_triggers_total",
        "hc_bytes_moved_total",
        "process_resident_memory_bytes",
      ]
    ) assert.ok(m.has(name), `missing ${name}`);
    assert.equal(m.get('hc_requests_total{route="/v1/completions",status="200"}'), 1);
    assert.equal(m.get("hc_completion_tokens_total"), 4);
    assert.ok(m.get("hc_decode_tokens_per_second")! > 0);
  });
});

Deno.test("head map and playground assets", async () => {
  await withServer({}, async (url) => {
    const heads = await (await fetch(`${url}/v1/hc/heads`)).json();
    assert.equal(heads.object, "hc.head_map");
    assert.equal(heads.cache, "full");
    assert.equal(heads.layers, model.config.nLayers);
    assert.equal(heads.kv_heads, model.config.nKvHeads);
    assert.equal(heads.roles.length, 5);
    assert.ok(
      heads.roles.every((row: string[]) => row.length === 4 && row.every((r) => r === "full")),
    );
    assert.ok(heads.budget_tokens.flat().every((b: unknown) => b === null));
    assert.ok(heads.refreshed.flat().every((r: unknown) => r === false));
    const page = await fetch(`${url}/`);
    assert.match(page.headers.get("content-type") ?? "", /^text\/html/);
    assert.match(await page.text(), /id="heads"/);
    const js = await fetch(`${url}/playground.js`);
    assert.match(js.headers.get("content-type") ?? "", /javascript/);
    assert.match(await js.text(), /\/v1\/chat\/completions/);
  });
});

Deno.test("shutdown ends running streams with an error event and frees their sessions", async () => {
  const running = await serve(model, { port: 0 });
  await running.server.whenReady();
  const sessionsBefore = model.sessionCount;
  const res = await post(`${running.url}/v1/completions`, {
    prompt: "Once",
    max_tokens: 1800,
    temperature: 0,
    stream: true,
  });
  const events = parseSse(res.body!);
  assert.ok(!(await events.next()).done);
  const closed = running.shutdown();
  const rest: string[] = [];
  for await (const d of events) rest.push(d);
  await closed;
  assert.notEqual(rest.at(-1), "[DONE]");
  assert.equal(JSON.parse(rest.at(-1)!).error.code, "server_shutting_down");
  assert.equal(model.sessionCount, sessionsBefore, "the request's session is freed");
});

Deno.test("AdmissionQueue: FIFO hand-over, bound, abort while waiting, idempotent release", async () => {
  const q = new AdmissionQueue(1, 2);
  const r1 = await q.acquire();
  const order: number[] = [];
  const p2 = q.acquire().then((r) => (order.push(2), r));
  const p3 = q.acquire().then((r) => (order.push(3), r));
  await assert.rejects(q.acquire(), (e: { status: number }) => e.status === 429);
  assert.equal(q.waiting, 2);
  r1();
  r1();
  const r2 = await p2;
  assert.equal(q.active, 1);
  assert.equal(q.waiting, 1);
  r2();
  (await p3)();
  assert.deepEqual(order, [2, 3]);
  assert.equal(q.active, 0);
  const r4 = await q.acquire();
  const a = new AbortController();
  const p5 = q.acquire(a.signal);
  a.abort();
  await assert.rejects(p5, (e: { status: number }) => e.status === 499);
  assert.equal(q.waiting, 0);
  r4();
  assert.equal(q.active, 0);
});
