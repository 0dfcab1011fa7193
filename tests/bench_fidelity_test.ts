/**
 * The fidelity benchmark's metrics on hand-made logits, the synthetic model hooks (rope_freqs,
 * tensor overrides), and the hand-built retrieval model: with the full cache it answers every
 * question on a short prompt, and a static policy that evicted the facts cannot.
 */
import assert from "node:assert/strict";
import { withContextLength } from "../bench/decode.ts";
import { parseGgufHeader } from "../src/gguf/reader.ts";
import { loadModel } from "../mod.ts";
import { openGguf } from "../src/gguf/reader.ts";
import { writeSyntheticModel } from "../testing/synthetic_model.ts";
import { argmax, FidelityMeter, klDivergence, logSoftmax } from "../bench/lib_fidelity.ts";
import {
  makeRetrievalTask,
  retrievalLayout,
  retrievalProfile,
  scoreRetrieval,
  writeRetrievalModel,
} from "../bench/lib_retrieval.ts";

Deno.test("metrics: argmax, log-softmax and KL on hand-made logits", () => {
  assert.equal(argmax([0.1, 3, -2, 3]), 1, "lowest index on ties");
  const ls = logSoftmax([0, Math.log(3)]);
  assert.ok(Math.abs(Math.exp(ls[0]) - 0.25) < 1e-12 && Math.abs(Math.exp(ls[1]) - 0.75) < 1e-12);
  // KL((0.25, 0.75) || (0.5, 0.5)) = 0.25 ln 0.5 + 0.75 ln 1.5.
  const want = 0.25 * Math.log(0.5) + 0.75 * Math.log(1.5);
  assert.ok(Math.abs(klDivergence([0, Math.log(3)], [7, 7]) - want) < 1e-12);
  // Reverse direction differs: KL((0.5, 0.5) || (0.25, 0.75)).
  const rev = 0.5 * Math.log(2) + 0.5 * Math.log(0.5 / 0.75);
  assert.ok(Math.abs(klDivergence([1, 1], [0, Math.log(3)]) - rev) < 1e-12);
  assert.equal(klDivergence([1, 2, 3], [11, 12, 13]), 0, "logits shifted by a constant");
  assert.ok(klDivergence([0, 0, 20], [20, 0, 0]) > 19);
  assert.throws(() => klDivergence([1, 2], [1, 2, 3]));
});

Deno.test("metrics: FidelityMeter counts agreement against the reference token", () => {
  const m = new FidelityMeter();
  m.add([0, 5, 0], 1, [0, 4, 1]); // agrees, small KL
  m.add([0, 5, 0], 1, [3, 0, 0]); // disagrees
  m.add([2, 0, 0], 0, [2, 0, 0]); // identical
  assert.equal(m.positions, 3);
  assert.equal(m.agreed, 2);
  assert.ok(Math.abs(m.agreement - 2 / 3) < 1e-12);
  const k1 = klDivergence([0, 5, 0], [0, 4, 1]);
  const k2 = klDivergence([0, 5, 0], [3, 0, 0]);
  assert.ok(Math.abs(m.klMean - (k1 + k2) / 3) < 1e-12);
  assert.equal(m.klMax, k2);
});

Deno.test("synthetic: rope_freqs is written and read, overrides leave other tensors alone", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const spec = {
      dim: 32,
      nLayers: 1,
      nHeads: 2,
      nKvHeads: 2,
      ffnDim: 16,
      contextLength: 64,
      seed: 9,
    };
    await writeSyntheticModel(`${dir}/a.gguf`, spec);
    const custom = new Float32Array(32 * 320).fill(0.5);
    await writeSyntheticModel(`${dir}/b.gguf`, {
      ...spec,
      ropeFreqFactors: Array(8).fill(1e12),
      tensors: (name) => (name === "output.weight" ? custom : undefined),
    });
    using a = await openGguf(`${dir}/a.gguf`);
    using b = await openGguf(`${dir}/b.gguf`);
    const read = async (f: typeof a, name: string) => {
      const t = f.tensor(name);
      assert.ok(t, name);
      const bytes = new Uint8Array(t.bytes);
      await f.readInto(t, bytes);
      return new Float32Array(bytes.buffer);
    };
    assert.equal(a.tensor("rope_freqs.weight"), undefined);
    assert.deepEqual(
      Array.from(await read(b, "rope_freqs.weight")),
      Array(8).fill(Math.fround(1e12)),
    );
    assert.deepEqual(await read(b, "output.weight"), custom);
    for (const name of ["token_embd.weight", "blk.0.attn_q.weight", "blk.0.ffn_down.weight"]) {
      assert.deepEqual(await read(a, name), await read(b, name), name);
    }
    await assert.rejects(
      writeSyntheticModel(`${dir}/c.gguf`, { ...spec, tensors: () => new Float32Array(3) }),
      /needs .* values/,
    );
    await assert.rejects(
      writeSyntheticModel(`${dir}/c.gguf`, { ...spec, ropeFreqFactors: [1, 2] }),
      /ropeFreqFactors/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("retrieval task: one fact per key, padded by separators; answers are the facts' values", () => {
  const lay = retrievalLayout({ contextLength: 1024 });
  const t = makeRetrievalTask(lay, { promptTokens: 400, questions: 5, repeats: 3, seed: 4 });
  assert.equal(t.prompt.length, 400);
  const facts = t.prompt.filter((x) => x >= lay.factBase && x < lay.askBase);
  assert.equal(facts.length, lay.keys);
  for (let key = 0; key < lay.keys; key++) {
    const p = t.factPosition[key];
    assert.equal(t.prompt[p], lay.factBase + key * lay.keys + t.factValue[key]);
    for (const d of [-2, -1, 1, 2]) assert.equal(t.prompt[p + d], lay.sep);
  }
  assert.equal(t.asks.length, 15);
  for (const a of t.asks) {
    assert.equal(t.forced[a.at], lay.askBase + a.key);
    assert.equal(a.answer, lay.valueBase + t.factValue[a.key]);
  }
  // The scorer reads the logits after each ask, and only past the first check boundary.
  const perfect = t.forced.map((_, i) => (i > 0 ? t.asks.find((a) => a.at === i - 1) : undefined))
    .map((a) => a?.answer ?? -1);
  const s = scoreRetrieval(t, perfect, lay.unknown, 5);
  assert.equal(s.accuracyAll, 1);
  assert.equal(s.accuracyAfterCheck, 1);
  assert.equal(s.questions, 5);
  assert.equal(s.questionsAnswered, 5);
  assert.equal(s.meanAsksBeforeAnswer, 0);
  assert.ok(s.scored > 0 && s.scored < t.asks.length);
  const none = scoreRetrieval(t, t.forced.map(() => lay.unknown), lay.unknown, 5);
  assert.equal(none.accuracyAll, 0);
  assert.equal(none.unknownAnswers, t.asks.length);
  assert.equal(none.questionsAnswered, 0);
});

Deno.test("retrieval model: the full cache answers every question on a 300-token prompt; snapkv cannot", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/r.gguf`;
    const lay = await writeRetrievalModel(path, { contextLength: 512 });
    await using model = await loadModel(path);
    assert.ok(
      model.config.ropeFreqFactors?.every((f) => f === Math.fround(1e12)),
      "NoPE via rope_freqs",
    );
    const task = makeRetrievalTask(lay, { promptTokens: 300, questions: 6, repeats: 5, seed: 2 });
    const run = async (opts: Parameters<typeof model.session>[0]) => {
      using s = model.session({ ...opts, contextTokens: 300 + task.forced.length + 1 });
      const am: number[] = [];
      await s.teacherForce(task.prompt, task.forced, (i, l) => (am[i] = argmax(l)));
      return scoreRetrieval(task, am, lay.unknown);
    };
    const full = await run({ cache: "full" });
    assert.equal(full.accuracyAll, 1, JSON.stringify(full));
    // SnapKV's window (the filler at the end of the prompt) scores the facts lowest: evicted.
    const snap = await run({ cache: "snapkv", keep: 0.25 });
    assert.equal(snap.accuracyAll, 0, JSON.stringify(snap));
    assert.equal(snap.unknownAnswers, task.asks.length);
    // Refreshing every step brings each fact back once its question is asked: with the
    // synchronous (compat) retrieval the refresh after an ask's step serves the next ask, so
    // every ask after the first of its question is answered.
    const perStep = await run({
      cache: "per-step",
      keep: 0.25,
      compat: true,
      profile: retrievalProfile(lay),
    });
    assert.equal(perStep.accuracyAfterCheck, 1, JSON.stringify(perStep));
    assert.equal(perStep.questionsAnswered, perStep.questions);
    assert.equal(perStep.meanAsksBeforeAnswer, 1, "the first ask of each question is missed");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("bench: a model copy claims another trained context; nothing else changes", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const spec = { dim: 32, nLayers: 1, nHeads: 2, nKvHeads: 2, ffnDim: 16, contextLength: 70000 };
    await writeSyntheticModel(`${dir}/a.gguf`, spec);
    await withContextLength(`${dir}/a.gguf`, `${dir}/b.gguf`, 4160);
    const a = await Deno.readFile(`${dir}/a.gguf`);
    const b = await Deno.readFile(`${dir}/b.gguf`);
    const ha = parseGgufHeader(a);
    const hb = parseGgufHeader(b);
    assert.equal(ha.metadata.get("llama.context_length"), 70000);
    assert.equal(hb.metadata.get("llama.context_length"), 4160);
    assert.equal(a.length, b.length);
    const differing = a.reduce((n, x, i) => n + (x !== b[i] ? 1 : 0), 0);
    assert.ok(differing >= 1 && differing <= 4, `${differing} bytes differ`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
