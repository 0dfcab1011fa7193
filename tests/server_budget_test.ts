/**
 * Budgets as requests and server settings give them: every policy x keep, with and without a head
 * profile, answers 200 or a 4xx with a stable code (never a 5xx, never a 200 stream that ends in
 * an error event), reports the keep it ran with, and counts nothing as "client went away".
 * Settings no request could run with are refused when the server is made.
 */
import assert from "node:assert/strict";
import { calibrate, isHcError, loadModel, POLICY_NAMES } from "../mod.ts";
import { createServer, parsePrometheus, parseSse, serve } from "../src/server/mod.ts";
import { sharedPath } from "./helpers.ts";

const model = await loadModel(sharedPath("models/stories260K.gguf"));
const profile = await calibrate(model, { promptTokens: 200, decodeSteps: 20 });
const NEEDS_PROFILE = new Set(["heterocache", "per-step", "fixed-interval"]);
const KEEPS = [0.01, 0.1, 0.25, 0.5, 1, 8];
const PROMPT = "Once upon a time, there was a little girl named Lily. She loved to play outside.";

/** HeteroCache's floor for this profile: (full heads + 1) / all heads. */
function floorKeep(): number {
  const roles = profile.layers.flatMap((l) => l.roles);
  const full = roles.filter((r) => r === "volatile" || r === "pivot").length;
  return full >= roles.length ? 1 : (full + 1) / roles.length;
}

interface Outcome {
  status: number;
  code: string | null;
  hc: { keep: number; effective_keep: number | null } | null;
}

async function run(url: string, cache: string, keep: number, stream: boolean): Promise<Outcome> {
  const res = await fetch(`${url}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ prompt: PROMPT, max_tokens: 4, temperature: 0, cache, keep, stream }),
  });
  const where = `${cache} keep=${keep} stream=${stream}`;
  assert.ok(res.status < 500, `${where}: ${res.status} ${await res.clone().text()}`);
  if (res.status !== 200) {
    const body = await res.json();
    assert.equal(typeof body.error.code, "string", where);
    return { status: res.status, code: body.error.code, hc: null };
  }
  if (!stream) return { status: 200, code: null, hc: (await res.json()).hc };
  const events: string[] = [];
  for await (const d of parseSse(res.body!)) events.push(d);
  assert.equal(events.at(-1), "[DONE]", `${where}: ${events.join("\n")}`);
  assert.ok(!events.some((e) => e.includes('"error"')), `${where}: ${events.join("\n")}`);
  const last = events.findLast((e) => e.includes('"hc"'));
  return { status: 200, code: null, hc: last ? JSON.parse(last).hc : null };
}

for (const withProfile of [true, false]) {
  Deno.test(`every policy x keep ${withProfile ? "with" : "without"} a profile: no 5xx`, async () => {
    const running = await serve(model, { port: 0, ...(withProfile ? { profile } : {}) });
    try {
      await running.server.whenReady();
      for (const cache of POLICY_NAMES) {
        for (const keep of KEEPS) {
          for (const stream of [false, true]) {
            const where = `${cache} keep=${keep} stream=${stream}`;
            const o = await run(running.url, cache, keep, stream);
            if (cache === "full" && keep !== 1) {
              assert.deepEqual([o.status, o.code], [400, "invalid_value"], where);
            } else if (NEEDS_PROFILE.has(cache) && !withProfile) {
              assert.deepEqual([o.status, o.code], [400, "profile_required"], where);
            } else {
              assert.equal(o.status, 200, where);
              assert.ok(o.hc, where);
              assert.equal(o.hc.keep, keep, where);
              const expected = keep > 1
                ? null
                : NEEDS_PROFILE.has(cache)
                ? (keep >= 1 ? 1 : Math.max(keep, floorKeep()))
                : keep;
              if (expected === null) assert.equal(o.hc.effective_keep, null, where);
              else assert.ok(Math.abs(o.hc.effective_keep! - expected) < 1e-12, where);
            }
          }
        }
      }
      const m = parsePrometheus(await (await fetch(`${running.url}/metrics`)).text());
      assert.equal(m.get("hc_generations_aborted_total"), 0);
      assert.equal(m.get("hc_generations_failed_total"), 0);
      for (const [k, v] of m) {
        if (/status="5\d\d"/.test(k)) assert.equal(v, 0, k);
      }
    } finally {
      await running.shutdown();
    }
  });
}

Deno.test("a keep below the profile's floor runs at the floor and says so", async () => {
  assert.ok(floorKeep() > 0.1, `this profile's floor is ${floorKeep()}: the test needs one > 0.1`);
  using low = model.session({ cache: "heterocache", profile, keep: 0.1 });
  await low.complete(PROMPT, { maxTokens: 2, temperature: 0 });
  using floor = model.session({ cache: "heterocache", profile, keep: floorKeep() });
  await floor.complete(PROMPT, { maxTokens: 2, temperature: 0 });
  assert.ok(Math.abs(low.cacheStats().keep! - floorKeep()) < 1e-12);
  assert.equal(low.cacheStats().deviceKvBytes, floor.cacheStats().deviceKvBytes);
});

Deno.test("the default keep is reported, not null", async () => {
  const running = await serve(model, { port: 0, profile });
  try {
    await running.server.whenReady();
    for (const [cache, keep] of [["full", 1], ["snapkv", 0.5], ["heterocache", 0.5]] as const) {
      const res = await fetch(`${running.url}/v1/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ prompt: PROMPT, max_tokens: 2, cache }),
      });
      assert.equal(res.status, 200);
      assert.equal((await res.json()).hc.keep, keep, cache);
    }
  } finally {
    await running.shutdown();
  }
});

Deno.test("settings no request could run with are refused when the server is made", () => {
  const refused = (opts: Parameters<typeof createServer>[1], code: string, why: RegExp) =>
    assert.throws(
      () => createServer(model, opts),
      (e) => isHcError(e) && e.code === code && why.test(e.message),
    );
  refused({ cache: "heterocache" }, "E_PROFILE", /needs a head profile.*hc calibrate/);
  refused({ cache: "per-step", keep: 0.25 }, "E_PROFILE", /--profile/);
  refused({ keep: 0.25 }, "E_BAD_REQUEST", /keeps every token/);
  refused({ cache: "snapkv", keep: 1.5 }, "E_BAD_REQUEST", /integer/);
  refused({ cache: "snapkv", keep: 0 }, "E_BAD_REQUEST", /> 0/);
});

Deno.test("a generation that fails counts as failed in /metrics, not as the client going away", async () => {
  const { startGeneration } = await import("../src/server/generation.ts");
  const { Metrics } = await import("../src/server/metrics.ts");
  const { AdmissionQueue } = await import("../src/server/limits.ts");
  const { PromptCache } = await import("../src/server/prompt_cache.ts");
  const noReuse = new PromptCache({ maxSessions: 0, maxBytes: 0 });
  const { HcError } = await import("../mod.ts");
  const metrics = new Metrics();
  /** A session whose generation fails, or ends as aborted, after its first step. */
  const fakeSession = (end: "fail" | "abort") => ({
    stats: () => ({ capacity: 64, deviceKvBytes: 0 }),
    generate: async function* () {
      yield { token: 1, text: "x" };
      if (end === "fail") throw new HcError("E_VK", "the device was lost");
      return { finishReason: "abort", promptTokens: 3, completionTokens: 1 };
    },
    [Symbol.dispose]: () => {},
  });
  for (const end of ["fail", "abort"] as const) {
    const served = {
      model: { session: () => fakeSession(end), config: { nLayers: 1, nKvHeads: 1 } },
      id: "fake",
      contextTokens: 64,
      defaultCache: "full",
      defaultKeep: null,
      profile: null,
    } as unknown as Parameters<typeof startGeneration>[0]["served"];
    const ctx: Parameters<typeof startGeneration>[0] = {
      served,
      queue: new AdmissionQueue(1, 1),
      metrics,
      liveSessions: new Set(),
      promptCache: noReuse,
    };
    const prepared = {
      req: { prompt: "x", sampling: {}, stop: [] },
      cache: "full",
      keep: 1,
      promptTokens: 3,
      maxTokens: 4,
      sessionTokens: 7,
    } as unknown as Parameters<typeof startGeneration>[1];
    const gen = await startGeneration(ctx, prepared, new AbortController().signal);
    const drain = async () => {
      for await (const _ of gen.updates()) { /* pieces */ }
    };
    if (end === "fail") await assert.rejects(drain(), /device was lost/);
    else await drain();
  }
  const m = parsePrometheus(metrics.render({
    modelReady: true,
    queueDepth: 0,
    activeRequests: 0,
    deviceQueueDepth: 0,
    sessions: 0,
    deviceKvBytes: 0,
    promptCache: noReuse.stats(),
  }));
  assert.equal(m.get("hc_generations_total"), 2);
  assert.equal(m.get("hc_generations_failed_total"), 1);
  assert.equal(m.get("hc_generations_aborted_total"), 1);
});
