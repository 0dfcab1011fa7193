/**
 * The prompt path with the tiled matmul (LlamaModel.promptKernel = "matmul") against the same
 * model's matvec prompt path and the plain-TS reference model: prompt logits of stories260K (F32;
 * its FFN width 172 is no multiple of 32, so the down projection stays on matvec) and of small
 * synthetic Q4_K and Q8_0 models, prompts longer than one matmul tile and than one chunk. The
 * quantized models load under the gpu variant set: under the cpu set their matrices go in the
 * lanes layout, which only matvec reads (src/kernels/matvec_layout.ts); under the gpu set Q8_0
 * goes in the split layout, which both read.
 */
import assert from "node:assert/strict";
import { loadModel } from "../mod.ts";
import { GgmlType } from "../src/gguf/types.ts";
import { openModelSource } from "../src/model/source.ts";
import { ReferenceModel } from "../testing/reference_model.ts";
import { writeSyntheticModel } from "../testing/synthetic_model.ts";
import { relError, sharedPath } from "./helpers.ts";

async function promptLogits(
  path: string,
  prompt: number[],
  kernel: "matmul" | "matvec",
  type: number,
  variants: "auto" | "gpu",
) {
  await using model = await loadModel(path, { variants });
  model.llama.promptKernel = kernel;
  using s = model.session({ contextTokens: prompt.length + 2 });
  const out: Float32Array[] = [];
  await s.teacherForce(prompt, [0], (_, l) => out.push(l.slice()));
  const plan = model.llama.kernels.matmul(type).lastPlan;
  assert.equal(plan !== null, kernel === "matmul", `${kernel} path: matmul plan ${plan}`);
  return out[0];
}

async function check(
  path: string,
  n: number,
  type: number,
  what: string,
  variants: "auto" | "gpu" = "auto",
): Promise<void> {
  using source = await openModelSource(path);
  const vocab = source.config.vocabSize;
  const prompt = Array.from({ length: n }, (_, i) => 3 + ((i * 7919) % (vocab - 3)));
  const ref = (await ReferenceModel.load(source, { kvF16: true })).forward(prompt, 0);
  const mm = await promptLogits(path, prompt, "matmul", type, variants);
  const mv = await promptLogits(path, prompt, "matvec", type, variants);
  const eMm = relError(mm, ref);
  const eMv = relError(mv, ref);
  assert.ok(eMm < 1e-2, `${what}: matmul prompt logits off the reference by ${eMm}`);
  assert.ok(relError(mm, mv) < 1e-3, `${what}: matmul vs matvec ${relError(mm, mv)} (${eMv})`);
}

Deno.test("prompt matmul: stories260K logits match matvec and the reference", async () => {
  await check(sharedPath("models/stories260K.gguf"), 75, GgmlType.F32, "stories260K");
});

Deno.test("prompt matmul: synthetic Q4_K and Q8_0 models", async () => {
  const dir = await Deno.makeTempDir();
  try {
    for (const [name, type] of [["Q4_K", GgmlType.Q4_K], ["Q8_0", GgmlType.Q8_0]] as const) {
      const path = `${dir}/${name}.gguf`;
      await writeSyntheticModel(path, {
        dim: 256,
        nLayers: 2,
        nHeads: 4,
        nKvHeads: 2,
        ffnDim: 512,
        vocabSize: 300,
        contextLength: 512,
        seed: 3,
        weightType: type,
      });
      await check(path, 300, type, `synthetic ${name}`, "gpu");
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("prompt path, gpu variants: types the matmul shader does not decode take matvec", async () => {
  // These once went to the tiled matmul under the gpu set, whose shader has no decoder for them,
  // and came out as NaN logits.
  const dir = await Deno.makeTempDir();
  try {
    for (const [name, type] of [["Q5_0", GgmlType.Q5_0], ["IQ4_XS", GgmlType.IQ4_XS]] as const) {
      const path = `${dir}/${name}.gguf`;
      await writeSyntheticModel(path, {
        dim: 256,
        nLayers: 1,
        nHeads: 4,
        nKvHeads: 2,
        ffnDim: 256,
        vocabSize: 300,
        contextLength: 128,
        seed: 5,
        weightType: type,
      });
      using source = await openModelSource(path);
      const prompt = Array.from({ length: 40 }, (_, i) => 3 + ((i * 7919) % 297));
      const ref = (await ReferenceModel.load(source, { kvF16: true })).forward(prompt, 0);
      await using model = await loadModel(path, { variants: "gpu" });
      using s = model.session({ contextTokens: prompt.length + 2 });
      const out: Float32Array[] = [];
      await s.teacherForce(prompt, [0], (_, l) => out.push(l.slice()));
      const e = relError(out[0], ref);
      assert.ok(e < 1e-2, `${name} under gpu variants: prompt logits off the reference by ${e}`);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
