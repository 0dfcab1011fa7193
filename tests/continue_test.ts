import assert from "node:assert/strict";
import { isHcError, loadModel } from "../mod.ts";
import type { LoadedModel } from "../src/engine/model.ts";
import type { GenerateOptions, Session } from "../src/engine/session.ts";
import type { CacheOptions } from "../src/cache/mod.ts";
import type { HeteroCache } from "../src/cache/heterocache/heterocache.ts";
import { uniformProfile } from "../src/cache/profile/profile_io.ts";
import type { Prompt } from "../src/engine/model.ts";
import { sharedPath } from "./helpers.ts";

const TURN1 =
  "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. " +
  "One day, she saw a big red ball.";
const TURN2 = " Her mom said she could play with the ball if she was careful.";
const TURN3 = " Then a dog came to the park.";
const GREEDY = { temperature: 0, ignoreEos: true, maxTokens: 8 } as const;

const profileFor = (model: LoadedModel) =>
  uniformProfile(
    model.config.nLayers,
    ["satellite", "pivot", "satellite", "anchor"],
    [1.2, -1, 0.8, 1],
  );

/** Generated token ids of one call (the final flush piece has token -1). */
async function tokensOf(s: Session, prompt: Prompt, opts: GenerateOptions): Promise<number[]> {
  const out: number[] = [];
  for await (const p of s.generate(prompt, opts)) if (p.token >= 0) out.push(p.token);
  return out;
}

/** Turn 1, then turns 2 and 3 as continuations; the generated tokens of each. */
async function conversation(s: Session): Promise<number[][]> {
  const a = await tokensOf(s, TURN1, GREEDY);
  const b = await tokensOf(s, TURN2, { ...GREEDY, continue: true });
  const c = await tokensOf(s, TURN3, { ...GREEDY, continue: true });
  return [a, b, c];
}

Deno.test("full: a continued session generates what one prefill of the whole conversation does", async () => {
  await using model = await loadModel(sharedPath("models/stories260K.gguf"));
  using s = model.session({ contextTokens: 256 });
  const [a, b, c] = await conversation(s);
  const last = s.lastGeneration!;
  assert.equal(last.cachedTokens + last.promptTokens, s.context().length - c.length);
  assert.ok(last.cachedTokens > 40, `${last.cachedTokens} cached`);
  const enc = (t: string) => model.tokenizer.encode(t, { addSpecial: false });
  const t1 = model.tokenize(TURN1);
  assert.deepEqual(s.context(), [...t1, ...a, ...enc(TURN2), ...b, ...enc(TURN3), ...c]);
  // The same conversation as one prompt, fresh.
  using once = model.session({ contextTokens: 256 });
  assert.deepEqual(await tokensOf(once, [...t1, ...a, ...enc(TURN2)], GREEDY), b);
  assert.deepEqual(
    await tokensOf(once, [...t1, ...a, ...enc(TURN2), ...b, ...enc(TURN3)], GREEDY),
    c,
  );
});

Deno.test("keep = 1: every compressing policy continues as full does (appended as decode steps)", async () => {
  await using model = await loadModel(sharedPath("models/stories260K.gguf"));
  using full = model.session({ contextTokens: 256 });
  const reference = await conversation(full);
  const profile = profileFor(model);
  const variants: CacheOptions[] = [
    { cache: "snapkv", keep: 1 },
    { cache: "streaming", keep: 1 },
    { cache: "heterocache", keep: 1, profile },
    { cache: "per-step", keep: 1, profile },
  ];
  for (const v of variants) {
    using s = model.session({ ...v, contextTokens: 256 });
    assert.deepEqual(await conversation(s), reference, v.cache);
  }
});

Deno.test("keep = 0.5: each policy appends every turn's rows to its device caches (and HeteroCache to its host store)", async () => {
  await using model = await loadModel(sharedPath("models/stories260K.gguf"));
  const profile = profileFor(model);
  const variants: CacheOptions[] = [
    { cache: "full" },
    { cache: "snapkv", keep: 0.5 },
    { cache: "streaming", keep: 0.5 },
    { cache: "heterocache", keep: 0.5, profile },
    { cache: "heterocache", keep: 0.5, profile, trigger: "drift" },
    { cache: "fixed-interval", keep: 0.5, profile },
  ];
  const c = model.config;
  for (const v of variants) {
    // Small maxTokens first, so the continuation must grow the compressed caches.
    using s = model.session({ ...v, contextTokens: 256 });
    await s.complete(TURN1, { ...GREEDY, maxTokens: 2 });
    const lengths = () => s.policy.caches.map((cache) => Array.from(cache.readLengths()));
    const hetero = v.cache !== "full" && v.cache !== "snapkv" && v.cache !== "streaming"
      ? s.policy as HeteroCache
      : null;
    const host = () =>
      Array.from({ length: c.nLayers }, (_, l) => hetero!.hostRows(l, 0) ?? hetero!.hostRows(l, 2));
    const before = lengths();
    const hostBefore = hetero ? host() : [];
    const at = s.stats().positions;
    for (const turn of [TURN2, TURN3]) {
      const r = await s.complete(turn, { ...GREEDY, maxTokens: 12, continue: true });
      assert.equal(r.completionTokens, 12, v.cache);
    }
    const added = s.stats().positions - at;
    assert.ok(added > 24, `${v.cache}: ${added} positions added`);
    const after = lengths();
    after.forEach((layer, l) =>
      layer.forEach((n, h) =>
        assert.equal(n, before[l][h] + added, `${v.cache} layer ${l} head ${h} length`)
      )
    );
    if (hetero) {
      await hetero.landRefreshes();
      host().forEach((n, l) => assert.equal(n, hostBefore[l]! + added, `host rows layer ${l}`));
    }
  }
});

Deno.test("a turn that does not fit is E_CONTEXT_FULL naming tokens used and left; the session goes on", async () => {
  await using model = await loadModel(sharedPath("models/stories260K.gguf"));
  for (const v of [{ cache: "full" }, { cache: "snapkv", keep: 0.5 }] as CacheOptions[]) {
    using s = model.session({ ...v, contextTokens: 80 });
    const first = await s.complete(TURN1, GREEDY);
    const used = s.stats().positions;
    const context = s.context();
    await assert.rejects(
      s.complete(" and then".repeat(40), { ...GREEDY, continue: true }),
      (e) =>
        isHcError(e, "E_CONTEXT_FULL") && e.message.includes(`${used} used`) &&
        e.message.includes(`${80 - used} left`),
    );
    assert.deepEqual(s.context(), context, "the context is unchanged");
    const r = await s.complete(" The end.", { ...GREEDY, continue: true });
    assert.equal(r.cachedTokens, used);
    assert.ok(r.completionTokens > 0);
    assert.ok(first.completionTokens > 0);
    await assert.rejects(
      s.complete([{ role: "user", content: "hi" }], { ...GREEDY, continue: true }),
      (e) => isHcError(e, "E_BAD_REQUEST"),
    );
  }
});

Deno.test("rewind: a conversation goes on from a shared prefix as one prefill of it would", async () => {
  await using model = await loadModel(sharedPath("models/stories260K.gguf"));
  const profile = profileFor(model);
  for (
    const v of [
      { cache: "full" },
      { cache: "snapkv", keep: 1 },
      { cache: "heterocache", keep: 1, profile },
    ] as CacheOptions[]
  ) {
    using s = model.session({ ...v, contextTokens: 256 });
    await s.complete(TURN1, GREEDY);
    const prefix = s.context();
    await s.complete(TURN2, { ...GREEDY, continue: true });
    // Back to turn 1's context (its pending last token included), then another turn 2.
    assert.ok(s.rewind(prefix.length), v.cache);
    assert.deepEqual(s.context(), prefix);
    const again = await tokensOf(s, TURN3, { ...GREEDY, continue: true });
    using ref = model.session({ contextTokens: 256 });
    await ref.complete(TURN1, GREEDY);
    assert.deepEqual(await tokensOf(ref, TURN3, { ...GREEDY, continue: true }), again, v.cache);
    // Into the first prompt: only full can.
    assert.equal(s.rewind(5), v.cache === "full", v.cache);
  }
});

Deno.test("reserve: a session grows past its first size; its caches move and the text is unchanged", async () => {
  await using model = await loadModel(sharedPath("models/stories260K.gguf"));
  using big = model.session({ contextTokens: 256 });
  const [a, b] = await conversation(big);
  for (const v of [{ cache: "full" }, { cache: "snapkv", keep: 1 }] as CacheOptions[]) {
    using s = model.session({ ...v, contextTokens: model.tokenize(TURN1).length + 8 });
    assert.deepEqual(await tokensOf(s, TURN1, GREEDY), a);
    await assert.rejects(
      s.complete(TURN2, { ...GREEDY, continue: true }),
      (e) => isHcError(e, "E_CONTEXT_FULL"),
    );
    s.reserve(256);
    assert.deepEqual(await tokensOf(s, TURN2, { ...GREEDY, continue: true }), b, v.cache);
    // A fresh prompt longer than the first size fits too.
    const long = TURN1 + TURN2 + TURN3;
    using ref = model.session({ contextTokens: 256 });
    assert.deepEqual(await tokensOf(s, long, GREEDY), await tokensOf(ref, long, GREEDY), v.cache);
  }
});
