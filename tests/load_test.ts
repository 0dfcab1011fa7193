/**
 * Load: 200 requests from 16 concurrent clients against a server in its own process (some
 * streaming, some disconnecting early, some malformed). Every request must get the right answer
 * or the right error, the server must stay up and free every session, and its memory after the
 * run must be within 10% of what it was after a warm-up of the same mix.
 *
 * How memory is measured: the server runs with V8's gc exposed, and /metrics?gc=1 collects garbage
 * before reading, so the numbers are live memory, not garbage that has not been collected yet.
 * V8's young generation is pinned to one size (16 MiB semi-spaces): otherwise V8 grows it with the
 * allocation rate during the run, and the resident size jumps by tens of MiB without a byte leaked.
 * Both the resident set size and the live bytes (V8 heap in use + external buffers) are checked.
 */
import assert from "node:assert/strict";
import { loadModel } from "../mod.ts";
import { parsePrometheus, parseSse } from "../src/server/mod.ts";
import { sharedPath } from "./helpers.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const MODEL = sharedPath("models/stories260K.gguf");
const CLIENTS = 16;
const REQUESTS = 200;
const WARMUP = 64;
const CONTEXT = 256;

const PROMPTS = ["Once upon a time", "The little dog", "Lily and Ben went to the park"];
const CHAT = [{ role: "user" as const, content: "Tell me a story about a cat." }];
const MAX_TOKENS = 32;

/** The engine's greedy answers, computed in this process: what the server must reproduce. */
async function references(): Promise<{ completions: string[]; chat: string }> {
  await using model = await loadModel(MODEL);
  using s = model.session();
  const completions = [];
  for (const p of PROMPTS) {
    completions.push((await s.complete(p, { maxTokens: MAX_TOKENS, temperature: 0 })).text);
  }
  const chat = (await s.complete(CHAT, { maxTokens: MAX_TOKENS, temperature: 0 })).text;
  return { completions, chat };
}

type Outcome = "text" | "stream" | "disconnect" | "400" | "404" | "413";

function post(url: string, body: unknown, signal?: AbortSignal): Promise<Response> {
  return fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: typeof body === "string" ? body : JSON.stringify(body),
    signal,
  });
}

async function expectStatus(res: Response, status: number, code: string): Promise<void> {
  const text = await res.text();
  assert.equal(res.status, status, text);
  assert.equal(JSON.parse(text).error.code, code, text);
}

/** Request number `i` of the mix; asserts its answer and says what kind it was. */
async function one(
  url: string,
  i: number,
  ref: { completions: string[]; chat: string },
): Promise<Outcome> {
  const k = i % PROMPTS.length;
  switch (i % 10) {
    case 0:
    case 1:
    case 2: {
      const res = await post(`${url}/v1/completions`, {
        prompt: PROMPTS[k],
        max_tokens: MAX_TOKENS,
        temperature: 0,
      });
      const body = await res.json();
      assert.equal(res.status, 200, JSON.stringify(body));
      assert.equal(body.choices[0].text, ref.completions[k]);
      assert.equal(body.usage.completion_tokens, MAX_TOKENS);
      return "text";
    }
    case 3: {
      const res = await post(`${url}/v1/chat/completions`, {
        messages: CHAT,
        max_tokens: MAX_TOKENS,
        temperature: 0,
        stream: true,
        stream_options: { include_usage: true },
      });
      assert.equal(res.status, 200);
      const events: string[] = [];
      for await (const d of parseSse(res.body!)) events.push(d);
      assert.equal(events.at(-1), "[DONE]");
      const chunks = events.slice(0, -1).map((e) => JSON.parse(e));
      assert.equal(chunks.map((c) => c.choices[0]?.delta.content ?? "").join(""), ref.chat);
      assert.equal(chunks.at(-1).usage.completion_tokens, MAX_TOKENS);
      return "stream";
    }
    case 4: {
      // Streams, then hangs up after two chunks.
      const abort = new AbortController();
      const res = await post(`${url}/v1/completions`, {
        prompt: PROMPTS[k],
        max_tokens: 200,
        stream: true,
      }, abort.signal);
      assert.equal(res.status, 200);
      const reader = res.body!.getReader();
      await reader.read();
      await reader.read();
      abort.abort();
      await reader.cancel().catch(() => {});
      return "disconnect";
    }
    case 5: {
      // Hangs up on a plain request before the answer comes.
      const abort = new AbortController();
      const pending = post(
        `${url}/v1/completions`,
        { prompt: PROMPTS[k], max_tokens: 200 },
        abort.signal,
      );
      setTimeout(() => abort.abort(), 5);
      try {
        const res = await pending;
        // Answered before the hang-up: then it must be the right answer.
        assert.equal(res.status, 200);
        await res.body?.cancel();
      } catch (e) {
        assert.equal((e as Error).name, "AbortError");
      }
      return "disconnect";
    }
    case 6:
      await expectStatus(
        await post(`${url}/v1/completions`, `{"prompt": "Once", "max_tokens": 5`),
        400,
        "invalid_json",
      );
      return "400";
    case 7:
      await expectStatus(
        await post(`${url}/v1/chat/completions`, { messages: [{ role: "user", content: 42 }] }),
        400,
        "invalid_type",
      );
      return "400";
    case 8:
      if (i % 20 === 8) {
        await expectStatus(
          await post(`${url}/v1/completions`, { model: "llama-9000", prompt: "x" }),
          404,
          "model_not_found",
        );
        return "404";
      }
      await expectStatus(
        await post(`${url}/v1/completions`, { prompt: "x".repeat(70_000) }),
        413,
        "request_too_large",
      );
      return "413";
    default:
      await expectStatus(
        await post(`${url}/v1/completions`, {
          prompt: "Once upon a time there was a cat. ".repeat(40),
        }),
        400,
        "context_length_exceeded",
      );
      return "400";
  }
}

/** Runs requests [from, to) from `CLIENTS` concurrent clients. */
async function runMix(
  url: string,
  from: number,
  to: number,
  ref: { completions: string[]; chat: string },
) {
  let next = from;
  const counts = new Map<Outcome, number>();
  const failures: string[] = [];
  await Promise.all(Array.from({ length: CLIENTS }, async () => {
    for (let i = next++; i < to; i = next++) {
      try {
        const kind = await one(url, i, ref);
        counts.set(kind, (counts.get(kind) ?? 0) + 1);
      } catch (e) {
        failures.push(`request ${i}: ${(e as Error).message}`);
      }
    }
  }));
  return { counts, failures };
}

async function metrics(url: string): Promise<Map<string, number>> {
  return parsePrometheus(await (await fetch(`${url}/metrics`)).text());
}

async function idle(url: string): Promise<Map<string, number>> {
  const deadline = Date.now() + 20_000;
  for (;;) {
    const m = await metrics(url);
    if (
      m.get("hc_sessions") === 0 && m.get("hc_active_requests") === 0 &&
      m.get("hc_queue_depth") === 0
    ) return m;
    if (Date.now() > deadline) {
      throw new Error(`the server did not become idle: ${JSON.stringify([...m])}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

interface Memory {
  rss: number;
  /** V8 heap in use plus memory held by JS objects outside it (array buffers). */
  live: number;
}

/** Memory once the server has settled: the smallest of a few readings 100 ms apart, each after a gc. */
async function settledMemory(url: string): Promise<Memory> {
  const least = { rss: Infinity, live: Infinity };
  for (let i = 0; i < 5; i++) {
    await new Promise((r) => setTimeout(r, 100));
    const m = parsePrometheus(await (await fetch(`${url}/metrics?gc=1`)).text());
    least.rss = Math.min(least.rss, m.get("process_resident_memory_bytes")!);
    least.live = Math.min(
      least.live,
      m.get("hc_heap_used_bytes")! + m.get("hc_external_memory_bytes")!,
    );
  }
  return least;
}

const mib = (bytes: number) => `${(bytes / 2 ** 20).toFixed(1)} MiB`;

Deno.test({
  name: "load: 200 mixed requests from 16 clients; right answers, server up, memory flat",
  sanitizeResources: false,
  async fn() {
    const ref = await references();
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        "--unstable-no-legacy-abort",
        "--v8-flags=--expose-gc,--min-semi-space-size=16,--max-semi-space-size=16",
        "src/cli.ts",
        "serve",
        "--model",
        MODEL,
        "--port",
        "0",
        "--context",
        String(CONTEXT),
        "--max-active",
        "4",
        "--max-queue",
        "64",
        "--max-body-bytes",
        "65536",
      ],
      cwd: ROOT,
      env: { NO_COLOR: "1" },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const stderr = new Response(child.stderr).text();
    const out = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    let url = "";
    let buf = "";
    try {
      while (!/model "stories260K" ready/.test(buf)) {
        const { done, value } = await out.read();
        if (done) throw new Error(`the server exited early:\n${buf}\n${await stderr}`);
        buf += value;
        url = /listening on (http:\/\/\S+) /.exec(buf)?.[1] ?? url;
      }
      // Keep draining stdout so the child never blocks on a full pipe.
      const drained = (async () => {
        while (!(await out.read()).done) { /* discard */ }
      })();

      const warm = await runMix(url, 0, WARMUP, ref);
      assert.deepEqual(warm.failures, []);
      await idle(url);
      const before = await settledMemory(url);

      const t0 = performance.now();
      const { counts, failures } = await runMix(url, WARMUP, WARMUP + REQUESTS, ref);
      const seconds = (performance.now() - t0) / 1000;
      assert.deepEqual(failures, [], failures.join("\n"));
      const total = [...counts.values()].reduce((a, b) => a + b, 0);
      assert.equal(total, REQUESTS);
      for (const kind of ["text", "stream", "disconnect", "400", "404", "413"] as const) {
        assert.ok((counts.get(kind) ?? 0) > 0, `the mix should include ${kind}`);
      }

      const m = await idle(url);
      assert.equal((await fetch(`${url}/health`)).status, 200, "the server stays up");
      assert.equal(m.get("hc_device_kv_bytes"), 0);
      assert.equal(m.get('hc_requests_total{route="/v1/completions",status="429"}') ?? 0, 0);
      assert.equal(m.get('hc_requests_total{route="/v1/completions",status="500"}') ?? 0, 0);
      assert.equal(m.get('hc_requests_total{route="/v1/chat/completions",status="500"}') ?? 0, 0);
      const after = await settledMemory(url);
      console.log(
        `load: ${REQUESTS} requests in ${seconds.toFixed(1)} s (${
          JSON.stringify(Object.fromEntries(counts))
        }); ` +
          `after warm-up: rss ${mib(before.rss)}, live ${mib(before.live)}; ` +
          `after the run: rss ${mib(after.rss)}, live ${mib(after.live)}`,
      );
      assert.ok(
        after.rss <= before.rss * 1.1,
        `resident memory grew from ${mib(before.rss)} to ${mib(after.rss)}`,
      );
      assert.ok(
        after.live <= before.live * 1.1,
        `live memory grew from ${mib(before.live)} to ${mib(after.live)}`,
      );
      child.kill("SIGTERM");
      assert.equal((await child.status).code, 0, await stderr);
      await drained;
    } finally {
      try {
        child.kill("SIGKILL");
      } catch { /* already gone */ }
      await child.status;
      await out.cancel().catch(() => {});
    }
  },
});
