/**
 * Every cache policy on the architectures of tests/llamacpp_arch_test.ts: the policies see a
 * model's q, k and v only after its architecture's steps (QK-norm, RoPE scaling and its
 * magnitude correction, layers without RoPE, fused projections, Ministral 3, Gemma's sliding-window
 * layers, which every policy keeps whole in their rings), so a policy that keeps every
 * prompt row must answer exactly as `full`, and one at keep 0.5 must run and stay close.
 */
import assert from "node:assert/strict";
import { type CacheOptions, type LoadedModel, loadModel } from "../mod.ts";
import { uniformProfile } from "../src/cache/profile/profile_io.ts";
import { writeSyntheticModel } from "../testing/synthetic_model.ts";
import { oracleTokens } from "../testing/llamacpp_oracle.ts";
import { type ArchCase, archSpec } from "../testing/llamacpp_arch_oracle.ts";

const CASES: ArchCase[] = [
  "qwen3",
  "smollm3",
  "phi3-long",
  "mistral3",
  "rope-yarn",
  "gemma2",
  "gemma3",
];
const PROMPT = 96;
const FORCED = 24;

async function forced(model: LoadedModel, opts: CacheOptions, tokens: number[]) {
  using s = model.session({ ...opts, contextTokens: PROMPT + FORCED + 1 });
  const out: Float32Array[] = [];
  await s.teacherForce(tokens.slice(0, PROMPT), [...tokens.slice(PROMPT), 0], (_, l) => {
    out.push(l.slice());
  });
  return out;
}

function argmax(x: Float32Array): number {
  let b = 0;
  for (let i = 1; i < x.length; i++) if (x[i] > x[b]) b = i;
  return b;
}

for (const name of CASES) {
  Deno.test(`${name}: every cache policy runs; keeping every row answers as full`, async () => {
    const path = await Deno.makeTempFile({ suffix: ".gguf" });
    try {
      await writeSyntheticModel(path, archSpec(name, 1616));
      await using model = await loadModel(path);
      const profile = uniformProfile(model.config.nLayers, ["pivot", "satellite"], [-1, 1]);
      const tokens = oracleTokens(1616).slice(0, PROMPT + FORCED);
      const full = await forced(model, { cache: "full" }, tokens);
      const policies = [
        { cache: "snapkv" },
        { cache: "streaming" },
        { cache: "heterocache", profile },
        { cache: "per-step", profile },
      ] as const;
      for (const p of policies) {
        const all = await forced(model, { ...p, tokens: PROMPT } as CacheOptions, tokens);
        let worst = 0;
        all.forEach((l, i) => {
          for (let j = 0; j < l.length; j++) worst = Math.max(worst, Math.abs(l[j] - full[i][j]));
        });
        assert.ok(worst < 1e-3, `${name} ${p.cache} keeping every row: logits differ by ${worst}`);
        const half = await forced(model, { ...p, keep: 0.5 } as CacheOptions, tokens);
        const same = half.filter((l, i) => argmax(l) === argmax(full[i])).length;
        console.log(
          `${name} ${p.cache}: keep-all worst |dlogit| ${worst.toExponential(2)}; ` +
            `keep 0.5 top-1 = full's at ${same}/${FORCED}`,
        );
        assert.ok(half.every((l) => l.every(Number.isFinite)), `${name} ${p.cache} keep 0.5`);
      }
    } finally {
      await Deno.remove(path);
    }
  });
}
