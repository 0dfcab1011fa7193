/**
 * What one decode step costs the device beyond memory traffic: dispatches, barriers, transfers
 * and submissions per decode token, for a model of the Llama-3-8B structure (32 layers, 32 query
 * heads over 8 KV heads, Q4_K matrices, Q6_K output) with its widths shrunk so that it loads
 * anywhere: the counts depend on the structure, not on the widths, except that a weight larger
 * than one binding (maxStorageBufferRange) takes one dispatch per binding (the 8B output matrix,
 * 431 MB, is 4 on a device with 128 MiB bindings, 1 on most GPUs).
 */
import { loadModel, type VariantSet } from "../mod.ts";
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
}

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
): Promise<{ step: RecordCounts; submissions: number }> {
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
  return { step: d.lastComputeSubmit!, submissions: (long - short) / 16 };
}

/** Per-decode-token counts of the 8B structure under each variant set. */
export async function stepCounts(sets: readonly VariantSet[]): Promise<StepCountsRow[]> {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/shape8b.gguf`;
    await writeSyntheticModel(path, SHAPE_8B);
    const rows: StepCountsRow[] = [];
    for (const variants of sets) {
      const { step, submissions } = await decodeCounts(path, variants);
      rows.push({ variants, layers: SHAPE_8B.nLayers, ...step, submissions });
    }
    return rows;
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Markdown: the counts per decode token and per layer, and the dispatches by kernel. */
export function stepCountsTable(rows: readonly StepCountsRow[]): string {
  const kernels = [...new Set(rows.flatMap((r) => Object.keys(r.byKernel)))].sort();
  return [
    "| variants | dispatches | barriers | transfers | submissions | dispatches / layer | barriers / layer |",
    "|---|---:|---:|---:|---:|---:|---:|",
    ...rows.map((r) =>
      `| ${r.variants} | ${r.dispatches} | ${r.barriers} | ${r.transfers} | ${
        r.submissions.toFixed(2)
      } | ${(r.dispatches / r.layers).toFixed(1)} | ${(r.barriers / r.layers).toFixed(1)} |`
    ),
    "",
    `| kernel | ${rows.map((r) => r.variants).join(" | ")} |`,
    `|---|${rows.map(() => "---:").join("|")}|`,
    ...kernels.map((k) => `| ${k} | ${rows.map((r) => r.byKernel[k] ?? 0).join(" | ")} |`),
  ].join("\n");
}

if (import.meta.main) {
  const rows = await stepCounts(["gpu", "cpu"]);
  console.log("\nper decode token, Llama-3-8B structure (widths shrunk):\n");
  console.log(stepCountsTable(rows));
}
