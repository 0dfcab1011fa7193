import assert from "node:assert/strict";
import { isHcError, loadModel } from "../mod.ts";
import { sharedPath } from "./helpers.ts";

const GREEDY_TEXT = () =>
  Deno.readTextFileSync(sharedPath("models/stories260K.greedy-n200.txt")).replace(/\n$/, "");

Deno.test("stories260K.gguf: greedy from BOS (llama2.c -n 200) reproduces llama2.c's text", async () => {
  await using model = await loadModel(sharedPath("models/stories260K.gguf"));
  using session = model.session();
  const summary = await session.complete("", { temperature: 0, maxTokens: 200 });
  assert.equal(summary.promptTokens, 1);
  assert.equal(summary.text.trimStart(), GREEDY_TEXT());
});

Deno.test("stories260K.bin + tok512.bin: the same greedy text", async () => {
  await using model = await loadModel(sharedPath("models/stories260K.bin"), {
    tokenizerPath: sharedPath("models/tok512.bin"),
  });
  using session = model.session();
  const summary = await session.complete("", { temperature: 0, maxTokens: 200 });
  assert.equal(summary.text.trimStart(), GREEDY_TEXT());
});

Deno.test("streaming pieces concatenate to the summary text; stop strings cut before the stop", async () => {
  await using model = await loadModel(sharedPath("models/stories260K.gguf"));
  using session = model.session();
  let streamed = "";
  const it = session.generate("Once upon a time", { temperature: 0, maxTokens: 40 });
  let r = await it.next();
  while (!r.done) {
    streamed += r.value.text;
    r = await it.next();
  }
  assert.equal(streamed, r.value.text);
  assert.equal(r.value.completionTokens, 40);
  assert.equal(r.value.finishReason, "length");
  const cut = streamed.indexOf("Lily");
  assert.ok(cut > 0, streamed);
  const stopped = await session.complete("Once upon a time", {
    temperature: 0,
    maxTokens: 40,
    stop: ["Lily"],
  });
  assert.equal(stopped.text, streamed.slice(0, cut));
  assert.equal(stopped.finishReason, "stop");
});

Deno.test("seeded sampling is reproducible; different seeds differ", async () => {
  await using model = await loadModel(sharedPath("models/stories260K.gguf"));
  using session = model.session();
  const a = await session.complete("Once upon a time", { temperature: 1, seed: 42, maxTokens: 30 });
  const b = await session.complete("Once upon a time", { temperature: 1, seed: 42, maxTokens: 30 });
  const c = await session.complete("Once upon a time", { temperature: 1, seed: 43, maxTokens: 30 });
  assert.equal(a.text, b.text);
  assert.notEqual(a.text, c.text);
});

Deno.test("abort ends a generation and the session stays usable; context overflow is E_CONTEXT_FULL", async () => {
  await using model = await loadModel(sharedPath("models/stories260K.gguf"));
  using session = model.session({ contextTokens: 64 });
  const ctl = new AbortController();
  let n = 0;
  const it = session.generate("Once upon a time", {
    temperature: 0,
    maxTokens: 50,
    signal: ctl.signal,
  });
  let r = await it.next();
  while (!r.done) {
    if (++n === 5) ctl.abort();
    r = await it.next();
  }
  assert.equal(r.value.finishReason, "abort");
  assert.equal(r.value.completionTokens, 5);
  const full = await session.complete("Once upon a time", { temperature: 0, maxTokens: 500 });
  assert.equal(full.finishReason, "length");
  // 64 positions hold the prompt and all generated tokens but the last, which is never fed back.
  assert.equal(full.promptTokens + full.completionTokens, 65);
  await assert.rejects(
    session.complete("Once upon a time ".repeat(40), { maxTokens: 1 }),
    (e) => isHcError(e, "E_CONTEXT_FULL"),
  );
});

Deno.test("two sessions interleave on one model without disturbing each other", async () => {
  await using model = await loadModel(sharedPath("models/stories260K.gguf"));
  using a = model.session();
  using b = model.session();
  const alone = await a.complete("Once upon a time", { temperature: 0, maxTokens: 30 });
  const [x, y] = await Promise.all([
    a.complete("Once upon a time", { temperature: 0, maxTokens: 30 }),
    b.complete("The cat", { temperature: 0, maxTokens: 30 }),
  ]);
  assert.equal(x.text, alone.text);
  const bAlone = await b.complete("The cat", { temperature: 0, maxTokens: 30 });
  assert.equal(y.text, bAlone.text);
});
