/**
 * A long prompt's attention never goes to the device as one long submission: past the model's
 * budget (LlamaModel.attentionFlopsPerSubmission) the chunked path cuts a chunk's layers and
 * query blocks into submissions of their own, as the layer-by-layer path cuts its query blocks,
 * with the same numbers. Run on the gpu variant set, whose prompt attention is the tiled GPU
 * kernel (the one a watchdog would reset).
 */
import assert from "node:assert/strict";
import { loadModel } from "../mod.ts";
import type { LoadedModel } from "../src/engine/model.ts";
import type { PrefillOrder } from "../src/cache/policy.ts";
import { ATTENTION_FLOPS_PER_SUBMISSION, attentionFlopsPerToken } from "../src/model/forward.ts";
import { GgmlType } from "../src/gguf/types.ts";
import { writeSyntheticModel } from "../testing/synthetic_model.ts";
import { rng } from "./helpers.ts";

const CHUNK = 256; // the session's prefill chunk

/** Logits after the prompt and the compute submissions the whole run took. */
async function run(
  model: LoadedModel,
  prompt: number[],
  prefill: PrefillOrder,
  cache: "full" | "snapkv",
) {
  const before = model.device.submissions.compute;
  using s = model.session({
    ...(cache === "full" ? {} : { cache, keep: 0.3 }),
    contextTokens: prompt.length + 2,
  });
  let logits: Float32Array | null = null;
  await s.teacherForce(prompt, [0], (_, l) => {
    logits = l.slice();
  }, prefill);
  return { logits: logits!, submissions: model.device.submissions.compute - before };
}

Deno.test("long prompts go in submissions within the attention budget, chunked and layered, same logits", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/m.gguf`;
    await writeSyntheticModel(path, {
      dim: 64,
      nLayers: 3,
      nHeads: 8,
      nKvHeads: 4,
      ffnDim: 128,
      contextLength: 1024,
      weightType: GgmlType.F16,
      seed: 21,
    });
    await using model = await loadModel(path, { variants: "gpu" });
    assert.equal(model.llama.kernels.prefill.variant, "tiled");
    const c = model.config;
    const r = rng(5);
    const n = 600;
    const prompt = [1, ...Array.from({ length: n - 1 }, () => 3 + Math.floor(r() * 200))];
    // The work a budget counts: each chunk's tokens at the chunk's end, in every layer.
    let chunkedWork = 0;
    for (let p = 0; p < n; p += CHUNK) {
      const b = Math.min(CHUNK, n - p);
      chunkedWork += c.nLayers * b * attentionFlopsPerToken(c, p + b);
    }
    for (const [prefill, cache] of [["chunked", "full"], ["layered", "snapkv"]] as const) {
      const whole = await run(model, prompt, prefill, cache);
      // Blocks of 37 query tokens at the prompt's end (ragged, longer at earlier chunks).
      const budget = 37 * attentionFlopsPerToken(c, n);
      model.llama.attentionFlopsPerSubmission = budget;
      try {
        const cut = await run(model, prompt, prefill, cache);
        assert.deepEqual(cut.logits, whole.logits, `${prefill}: logits`);
        // Each submission holds at most `budget` of the work, so there are at least this many
        // more than the uncut run's one per chunk (per layer and chunk, layered).
        const uncut = prefill === "chunked"
          ? Math.ceil(n / CHUNK)
          : c.nLayers * Math.ceil(n / CHUNK);
        const need = Math.ceil(chunkedWork / budget) - uncut;
        assert.ok(
          cut.submissions - whole.submissions >= need,
          `${prefill}: ${cut.submissions} submissions against ${whole.submissions} uncut; ` +
            `${need} more needed`,
        );
      } finally {
        model.llama.attentionFlopsPerSubmission = ATTENTION_FLOPS_PER_SUBMISSION;
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
