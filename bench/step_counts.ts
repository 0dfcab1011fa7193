/**
 * What one decode step costs the device beyond memory traffic: dispatches, barriers, transfers
 * and submissions per decode token, for a model of the Llama-3-8B structure (32 layers, 32 query
 * heads over 8 KV heads, Q4_K matrices and embedding) with its widths shrunk so that it loads
 * anywhere: the counts depend on the structure, not on the widths, except that a weight larger
 * than one binding (maxStorageBufferRange) takes one dispatch per binding (the 8B output matrix,
 * 431 MB, is 4 on a device with 128 MiB bindings, 1 on most GPUs).
 *
 * Each kernel's share of the step comes from a timestamp after every dispatch
 * (`Device.profileDispatches`), summed by kernel over several decode steps. At these shrunk widths
 * fixed costs weigh more than at the 8B's own; on a GPU, dispatches that overlap (no barrier
 * between them) share their time unevenly, so read the shares by kernel family.
 */
import { type LoadedModel, loadModel, type VariantSet } from "../mod.ts";
import { GgmlType } from "../src/gguf/types.ts";
import type { RecordCounts } from "../src/vk/mod.ts";
import { writeSyntheticModel } from "../testing/synthetic_model.ts";

export interface StepCountsRow {
  variants: VariantSet;
  layers: number;
  dispatches: number;
  barriers: number;
  transfers: number;
  /** Compute and transfer submissions per decode token (greedy, full cache). */
  submissions: number;
  byKernel: Record<string, number>;
  /** Device ms per decode token by kernel (timestamps after every dispatch), and their sum
   * (absent from results stored before they were measured). */
  msByKernel?: Record<string, number>;
  stepMs?: number;
  /** Decode steps the times are the mean of. */
  profiledSteps?: number;
}

/** Decode steps profiled per variant set. */
const PROFILED_STEPS = 5;

/** The 8B structure with widths shrunk (head dim 16, FFN 1024, vocabulary 320): the smallest
 * widths at which the CPU variant set picks the kernels it picks at the 8B's own widths (its
 * row-loop matvec needs rows of a multiple of 512 elements). */
export const SHAPE_8B = {
  dim: 512,
  nLayers: 32,
  nHeads: 32,
  nKvHeads: 8,
  ffnDim: 1024,
  contextLength: 1024,
  weightType: GgmlType.Q4_K,
  embeddingType: GgmlType.Q4_K,
  seed: 3,
};

async function decodeCounts(
  path: string,
  variants: VariantSet,
): Promise<
  & { step: RecordCounts }
  & Pick<
    StepCountsRow,
    "submissions" | "msByKernel" | "stepMs" | "profiledSteps"
  >
> {
  await using model = await loadModel(path, { variants });
  using s = model.session({ contextTokens: 256 });
  const d = model.device;
  const run = async (steps: number) => {
    const before = d.submissions.compute + d.submissions.transfer;
    await s.complete("the cat sat", { temperature: 0, maxTokens: steps, ignoreEos: true });
    return d.submissions.compute + d.submissions.transfer - before;
  };
  // Same prompt, more steps: the difference is what the extra decode steps submitted. A first
  // run takes the session's one-time work (allocations, the attention scratch's zeroing).
  await run(1);
  const short = await run(4);
  const long = await run(20);
  const step = d.lastComputeSubmit!;
  const times = await profileSteps(model, step.dispatches);
  return { step, submissions: (long - short) / 16, ...times };
}

/**
 * Device ms by kernel, mean over PROFILED_STEPS decode steps. A session records its decode step
 * once and replays it, so this one is opened while profiling is on; each step's timestamps are
 * read as its token arrives. Empty (the table says n/a) where the device gives no timestamps.
 */
async function profileSteps(
  model: LoadedModel,
  dispatches: number,
): Promise<Pick<StepCountsRow, "msByKernel" | "stepMs" | "profiledSteps">> {
  const d = model.device;
  const msByKernel: Record<string, number> = {};
  let profiled = 0;
  d.profileDispatches = true;
  try {
    using p = model.session({ contextTokens: 256 });
    const opts = { maxTokens: PROFILED_STEPS + 1, temperature: 0, ignoreEos: true };
    let first = true;
    for await (const _ of p.generate("the cat sat", opts)) {
      // The first token comes from the prompt's last chunk, not from a decode step.
      if (first) {
        first = false;
        continue;
      }
      const steps = d.lastComputeList?.profile();
      if (!steps || steps.length !== dispatches) continue;
      for (const { kernel, ms } of steps) msByKernel[kernel] = (msByKernel[kernel] ?? 0) + ms;
      profiled++;
    }
  } catch (e) {
    console.error(`step profile: not taken (${(e as Error).message})`);
    return {};
  } finally {
    d.profileDispatches = false;
  }
  if (profiled === 0) return {};
  for (const k in msByKernel) msByKernel[k] /= profiled;
  const stepMs = Object.values(msByKernel).reduce((a, b) => a + b, 0);
  return { msByKernel, stepMs, profiledSteps: profiled };
}

/** Per-decode-token counts of the 8B structure under each variant set. */
export async function stepCounts(sets: readonly VariantSet[]): Promise<StepCountsRow[]> {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/shape8b.gguf`;
    await writeSyntheticModel(path, SHAPE_8B);
    const rows: StepCountsRow[] = [];
    for (const variants of sets) {
      const { step, ...measured } = await decodeCounts(path, variants);
      rows.push({ variants, layers: SHAPE_8B.nLayers, ...step, ...measured });
    }
    return rows;
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Markdown: the counts per decode token and per layer, and the dispatches and share of the
 * step's device time by kernel (largest share first). */
export function stepCountsTable(rows: readonly StepCountsRow[]): string {
  const share = (r: StepCountsRow, k: string) =>
    r.msByKernel && r.stepMs ? (r.msByKernel[k] ?? 0) / r.stepMs : 0;
  const shown = (r: StepCountsRow, k: string) =>
    r.msByKernel ? `${(100 * share(r, k)).toFixed(1)}%` : "n/a";
  const kernels = [...new Set(rows.flatMap((r) => Object.keys(r.byKernel)))].sort((a, b) =>
    rows.reduce((s, r) => s + share(r, b), 0) - rows.reduce((s, r) => s + share(r, a), 0)
  );
  return [
    "| variants | dispatches | barriers | transfers | submissions | dispatches / layer | barriers / layer |",
    "|---|---:|---:|---:|---:|---:|---:|",
    ...rows.map((r) =>
      `| ${r.variants} | ${r.dispatches} | ${r.barriers} | ${r.transfers} | ${
        r.submissions.toFixed(2)
      } | ${(r.dispatches / r.layers).toFixed(1)} | ${(r.barriers / r.layers).toFixed(1)} |`
    ),
    "",
    `Dispatches per token and share of the step's device time by kernel (timestamps after every ` +
    `dispatch; per token: ${
      rows.map((r) =>
        `${r.variants} ${r.stepMs?.toFixed(2) ?? "n/a"} ms, mean of ${r.profiledSteps ?? 0} steps`
      ).join("; ")
    }):`,
    "",
    `| kernel | ${rows.map((r) => `${r.variants} dispatches | ${r.variants} share`).join(" | ")} |`,
    `|---|${rows.map(() => "---:|---:").join("|")}|`,
    ...kernels.map((k) =>
      `| ${k} | ${rows.map((r) => `${r.byKernel[k] ?? 0} | ${shown(r, k)}`).join(" | ")} |`
    ),
  ].join("\n");
}

if (import.meta.main) {
  const rows = await stepCounts(["gpu", "cpu"]);
  console.log("\nper decode token, Llama-3-8B structure (widths shrunk):\n");
  console.log(stepCountsTable(rows));
}
