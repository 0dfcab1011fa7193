/**
 * `hc calibrate` end to end, profiles tied to their model, and HeteroCache through the server.
 */
import assert from "node:assert/strict";
import { isHcError, loadModel, readProfile } from "../mod.ts";
import { parseSse, serve } from "../src/server/mod.ts";
import { sharedPath } from "./helpers.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const MODEL = sharedPath("models/stories260K.gguf");

Deno.test("hc calibrate on stories260K writes a profile in under 2 minutes, and it loads and runs", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const out = `${dir}/stories.profile.json`;
    const t0 = performance.now();
    const run = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "src/cli.ts", "calibrate", "-m", MODEL, "-o", out],
      cwd: ROOT,
      env: { NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const seconds = (performance.now() - t0) / 1000;
    const stderr = new TextDecoder().decode(run.stderr);
    assert.equal(run.code, 0, stderr);
    assert.ok(seconds < 120, `calibration took ${seconds.toFixed(1)} s`);
    assert.match(stderr, /wrote .* anchor, .* volatile, .* pivot, .* satellite heads/);

    await using model = await loadModel(MODEL);
    const profile = await readProfile(out, model.identity());
    assert.equal(profile.layers.length, model.config.nLayers);
    assert.equal(profile.model.attnHash, model.identity().attnHash);
    const roles = profile.layers.flatMap((l) => l.roles);
    assert.equal(roles.length, model.config.nLayers * model.config.nKvHeads);
    using s = model.session({ cache: "heterocache", keep: 0.6, profile, contextTokens: 256 });
    const r = await s.complete(
      "Once upon a time, there was a little girl named Lily. She loved to play outside.",
      {
        temperature: 0,
        maxTokens: 21,
      },
    );
    assert.equal(r.completionTokens, 21);
    const st = s.cacheStats();
    assert.ok(st.deviceKvBytes < st.fullKvBytes, JSON.stringify(st));
    // The coverage trigger evaluates every step (the first sets each pivot's reference).
    assert.equal(st.stepsWithCheck, 20, "a check after each of the 20 decode steps");
    const pivots = roles.filter((x) => x === "pivot").length;
    assert.ok(st.driftChecks > 0 && st.driftChecks <= pivots * 19, JSON.stringify(st));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a profile made for another model is rejected with a message", async () => {
  await using model = await loadModel(MODEL);
  await assert.rejects(
    readProfile(
      sharedPath(
        "profiles/Head_Analysis_llama-3.1-8b-instruct_topk1024_th0.5_sim0.5_step5000.json",
      ),
      model.identity(),
    ),
    (e) => isHcError(e, "E_PROFILE_MISMATCH") && /32 layers|layers/.test(e.message),
  );
});

Deno.test("the server runs heterocache requests with its profile and reports their cache statistics", async () => {
  await using model = await loadModel(MODEL);
  const { calibrate } = await import("../mod.ts");
  const profile = await calibrate(model, { promptTokens: 200, decodeSteps: 20 });
  const running = await serve(model, { port: 0, profile });
  try {
    await running.server.whenReady();
    const res = await fetch(`${running.url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        prompt:
          "Once upon a time, there was a little girl named Lily. She loved to play outside in the park.",
        max_tokens: 26,
        temperature: 0,
        cache: "heterocache",
        keep: 0.6,
        stream: true,
        stream_options: { include_usage: true },
      }),
    });
    assert.equal(res.status, 200);
    const events: string[] = [];
    for await (const d of parseSse(res.body!)) events.push(d);
    assert.equal(events.at(-1), "[DONE]");
    const last = JSON.parse(events.at(-2)!);
    assert.equal(last.usage.completion_tokens, 26);
    const hc = last.hc ?? JSON.parse(events.findLast((e) => e.includes('"hc"'))!).hc;
    assert.equal(hc.cache, "heterocache");
    assert.ok(hc.drift_checks > 0, JSON.stringify(hc));
    const heads = await (await fetch(`${running.url}/v1/hc/heads?cache=heterocache`)).json();
    assert.deepEqual(heads.roles, profile.layers.map((l) => l.roles));
  } finally {
    await running.shutdown();
  }
});
