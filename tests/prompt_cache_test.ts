/** Prompt reuse in the server: parked sessions continued by longest common prefix, bounded. */
import assert from "node:assert/strict";
import OpenAI from "openai";
import { loadModel } from "../mod.ts";
import { parsePrometheus, serve, type ServeOptions } from "../src/server/mod.ts";
import { PromptCache } from "../src/server/prompt_cache.ts";
import { sharedPath } from "./helpers.ts";

const model = await loadModel(sharedPath("models/stories260K.gguf"));

async function withServer(
  opts: Omit<ServeOptions, "port">,
  fn: (client: OpenAI, url: string) => Promise<void>,
): Promise<void> {
  const running = await serve(model, { port: 0, ...opts });
  try {
    await running.server.whenReady();
    await fn(
      new OpenAI({ baseURL: `${running.url}/v1`, apiKey: "unused", maxRetries: 0 }),
      running.url,
    );
  } finally {
    await running.shutdown();
  }
}

const metrics = async (url: string) =>
  parsePrometheus(await (await fetch(`${url}/metrics`)).text());

type Message = { role: "user" | "assistant"; content: string };
const USER_TURNS = ["Once upon a time", "Then what?", "Who was there?", "And then?", "The end?"];

/** Five chat turns; each turn's messages carry the earlier answers. */
async function chat(client: OpenAI, cachePrompt: boolean) {
  const messages: Message[] = [];
  const turns: { text: string; cached: number; prompt: number }[] = [];
  for (const content of USER_TURNS) {
    messages.push({ role: "user", content });
    const r = await client.chat.completions.create({
      model: "stories260K",
      messages,
      max_tokens: 12,
      temperature: 0,
      ...(cachePrompt ? {} : { cache_prompt: false }),
    } as OpenAI.ChatCompletionCreateParamsNonStreaming);
    const text = r.choices[0].message.content ?? "";
    messages.push({ role: "assistant", content: text });
    turns.push({
      text,
      cached: r.usage?.prompt_tokens_details?.cached_tokens ?? -1,
      prompt: r.usage!.prompt_tokens,
    });
  }
  return turns;
}

Deno.test("openai client: a 5-turn chat reuses its prompt from turn 2 and answers as without reuse", async () => {
  await withServer({}, async (client, url) => {
    const off = await chat(client, false);
    assert.ok(off.every((t) => t.cached === 0), JSON.stringify(off));
    const on = await chat(client, true);
    assert.equal(on[0].cached, 0);
    on.slice(1).forEach((t, i) => {
      assert.ok(t.cached > 0, `turn ${i + 2}: ${t.cached} cached tokens`);
      assert.ok(t.cached < t.prompt);
    });
    assert.deepEqual(on.map((t) => t.text), off.map((t) => t.text));
    assert.deepEqual(on.map((t) => t.prompt), off.map((t) => t.prompt));
    const m = await metrics(url);
    assert.equal(m.get("hc_prompt_cache_hits_total"), 4);
    assert.equal(
      m.get("hc_prompt_cache_cached_tokens_total"),
      on.reduce((s, t) => s + t.cached, 0),
    );
    assert.ok(m.get("hc_prompt_cache_sessions")! >= 1);
    assert.ok(m.get("hc_prompt_cache_device_kv_bytes")! > 0);
  });
});

Deno.test("completions: the longest common prefix is reused; another cache or keep never is", async () => {
  await withServer({}, async (client) => {
    const ask = async (prompt: string, extra: Record<string, unknown> = {}) => {
      const r = await client.completions.create({
        model: "stories260K",
        prompt,
        max_tokens: 4,
        temperature: 0,
        ...extra,
      } as OpenAI.CompletionCreateParamsNonStreaming);
      return r.usage!.prompt_tokens_details?.cached_tokens ?? -1;
    };
    const base = "Once upon a time, there was a little girl named Lily.";
    assert.equal(await ask(base), 0);
    // Shares the first sentence only: the parked context is rewound to it.
    assert.ok(await ask(`${base} The dog barked.`) > 10);
    assert.equal(await ask(base, { cache: "snapkv", keep: 0.5 }), 0);
    assert.equal(await ask(base, { cache: "snapkv", keep: 0.25 }), 0);
    assert.ok(await ask(`${base} She`, { cache: "snapkv", keep: 0.5 }) > 5);
  });
});

Deno.test("16 concurrent conversations, some cut off, leave parked sessions within their bounds", async () => {
  await withServer({ promptCacheSessions: 3, maxActive: 4 }, async (_client, url) => {
    const post = (prompt: string, signal?: AbortSignal) =>
      fetch(`${url}/v1/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ prompt, max_tokens: 8, temperature: 0, stream: true }),
        signal,
      });
    await Promise.all(Array.from({ length: 16 }, async (_, i) => {
      const first = `Conversation ${i}: once upon a time`;
      const r = await post(first);
      await r.text();
      const ctl = new AbortController();
      const r2 = await post(`${first} there was a cat`, ctl.signal);
      if (i % 3 === 0) {
        // Cut off after the first chunk.
        const reader = r2.body!.getReader();
        await reader.read();
        ctl.abort();
        await reader.cancel().catch(() => {});
      } else await r2.text();
    }));
    // Aborted streams close their sessions as their generators unwind.
    let m = await metrics(url);
    for (let i = 0; i < 100 && m.get("hc_sessions")! > 0; i++) {
      await new Promise((r) => setTimeout(r, 20));
      m = await metrics(url);
    }
    assert.equal(m.get("hc_sessions"), 0);
    assert.ok(m.get("hc_prompt_cache_sessions")! <= 3, `${m.get("hc_prompt_cache_sessions")}`);
    assert.ok(m.get("hc_prompt_cache_sessions")! >= 1);
    assert.ok(m.get("hc_prompt_cache_evictions_total")! >= 1);
    // Every request looked once (most found their conversation evicted by the others).
    assert.equal(m.get("hc_prompt_cache_hits_total")! + m.get("hc_prompt_cache_misses_total")!, 32);
  });
});

Deno.test("prompt cache: bounded by device bytes, least recently used out first, a taken session leaves", async () => {
  const bytes = (() => {
    using s = model.session({ contextTokens: 128 });
    return s.stats().deviceKvBytes;
  })();
  using cache = new PromptCache({ maxSessions: 8, maxBytes: 2 * bytes + 1 });
  const parked: number[][] = [];
  for (const text of ["Once upon a time", "The little dog", "A big red ball"]) {
    const s = model.session({ contextTokens: 128 });
    await s.complete(text, { temperature: 0, maxTokens: 3 });
    parked.push(s.context());
    cache.park("full/1/0", s);
  }
  assert.equal(cache.stats().sessions, 2);
  assert.equal(cache.stats().evictions, 1);
  assert.ok(cache.stats().deviceKvBytes <= 2 * bytes + 1);
  // The first one was evicted; the second is found by its prefix, and only once.
  assert.equal(cache.take("full/1/0", [...parked[0], 5]), null);
  const hit = cache.take("full/1/0", [...parked[1], 5]);
  assert.equal(hit?.reused, parked[1].length);
  assert.equal(cache.take("full/1/0", [...parked[1], 5]), null);
  assert.equal(cache.take("snapkv/0.5/0", [...parked[2], 5]), null, "another key");
  hit!.session[Symbol.dispose]();
});

globalThis.addEventListener("unload", () => void model[Symbol.asyncDispose]());
