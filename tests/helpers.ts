/** Shared test helpers: paths of the real models beside the checkout, seeded random data. */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { mulberry32 } from "../testing/rng.ts";
import type { Device } from "../src/vk/mod.ts";
import type { PrefillAttention, PrefillAttentionArgs } from "../src/kernels/attention.ts";
import { loadModel } from "../mod.ts";
import { openModelSource } from "../src/model/source.ts";
import { ReferenceModel } from "../testing/reference_model.ts";

/** Absolute path of a file in ../shared (beside the checkout); fails loudly when missing. */
export function sharedPath(rel: string): string {
  const path = new URL(`../../shared/${rel}`, import.meta.url).pathname;
  if (!existsSync(path)) {
    throw new Error(
      `missing test file ${path}: the real models live in ../shared beside the checkout`,
    );
  }
  return path;
}

export const rng = mulberry32;

/** Random floats in [-scale, scale). */
export function randomF32(n: number, seed: number, scale = 1): Float32Array {
  const r = rng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = (r() * 2 - 1) * scale;
  return out;
}

/** Largest |a-b| divided by the largest |b| (a scale-aware relative error). */
export function relError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) return Infinity;
  let diff = 0, scale = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (!(d <= diff)) diff = Number.isNaN(d) ? Infinity : d;
    scale = Math.max(scale, Math.abs(b[i]));
  }
  return diff / (scale || 1);
}

/** One prefill-attention record of the queries `q` against `args.cache`, run to completion;
 * returns its output (f32, shaped as `q`). */
export function runPrefill(
  dev: Device,
  attn: PrefillAttention,
  q: Float32Array,
  args: Omit<PrefillAttentionArgs, "q" | "out" | "scratch">,
): Float32Array {
  using qBuf = dev.buffer(q.byteLength);
  using out = dev.buffer(q.byteLength);
  using scratch = dev.buffer(attn.scratchBytes(args.cache, args.tokens));
  dev.upload(qBuf, q);
  using cmd = dev.commands();
  cmd.begin();
  attn.record(cmd, { ...args, q: qBuf, out, scratch });
  cmd.end();
  dev.waitSync("compute", cmd.submit());
  const bytes = dev.download(out);
  return new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
}

type LoadedModel = Awaited<ReturnType<typeof loadModel>>;

/**
 * Loads the model at `path` under each kernel variant set, lets `inspect` check what it loaded
 * (e.g. its weights' layouts), and holds its teacher-forced logits (a 20-token prompt, then 3
 * forced tokens) to the TS reference model within 1e-2; `label` heads the failure messages.
 */
export async function checkVariantsAgainstReference(
  path: string,
  label: string,
  inspect: (model: LoadedModel, variants: "cpu" | "gpu") => void,
): Promise<void> {
  using source = await openModelSource(path);
  const prompt = Array.from({ length: 20 }, (_, i) => 3 + ((i * 7919) % 297));
  const forced = [5, 77, 140];
  const want = (await ReferenceModel.load(source, { kvF16: true })).teacherForced(prompt, forced);
  for (const variants of ["cpu", "gpu"] as const) {
    await using model = await loadModel(path, { variants });
    inspect(model, variants);
    using s = model.session({ contextTokens: 32 });
    const got: Float32Array[] = [];
    await s.teacherForce(prompt, forced, (_, l) => got.push(l.slice()));
    for (let i = 0; i < want.length; i++) {
      const e = relError(got[i], want[i]);
      assert.ok(e < 1e-2, `${label}${variants}: logits ${i} off the reference by ${e}`);
    }
  }
}
