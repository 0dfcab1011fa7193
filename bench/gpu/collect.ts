/**
 * After a device run of bench/gpu/run.sh: `deno run -A bench/gpu/collect.ts DIR`, where DIR holds
 * what the run left in $OUT (kernels.json, prefill.json, speed.json, gpu.log). Copies them into
 * bench/results/gpu/ and writes docs/results-gpu.md (the device, the whole-model tests under
 * the "gpu" variants, the kernel table with the dispatch and barrier counts, the prefill table
 * and the decode-speed sweep), beside the lavapipe results in bench/results/ and
 * docs/results-lavapipe.md.
 */
import { type KernelsResult, kernelsTable } from "../kernels.ts";
import { speedReport, type SpeedResult } from "../decode.ts";
import type { PrefillResult } from "../prefill.ts";
import { type StepCountsRow, stepCountsTable } from "../step_counts.ts";
import { dirname, fromFileUrl, join } from "../paths.ts";

const ROOT = join(dirname(fromFileUrl(import.meta.url)), "..", "..");
const FILES = ["kernels.json", "prefill.json", "speed.json", "gpu.log"] as const;

/** The lines of gpu.log from the "gpu" variants' whole-model tests: their summary line, or
 * the section's last lines when it ended early (a timeout). */
export function wholeModelSummary(log: string): string {
  const at = log.indexOf("== whole-model tests, HC_VK_VARIANTS=gpu");
  if (at < 0) return "(not in this run's log)";
  // deno test prints `ok | N passed | M failed` or `FAILED | ...` at the end of a run.
  const lines = log.slice(at).split("\n").slice(1);
  const end = lines.findIndex((l) => /\b(ok|FAILED) \| \d+ passed/.test(l));
  const part = end >= 0 ? lines.slice(0, end + 1) : lines.slice(0, 40);
  const failed = part.filter((l) => /\.\.\. FAILED/.test(l));
  return [
    end >= 0 ? `\`${lines[end].trim()}\`` : "(no summary: the section did not finish)",
    ...failed.map((l) => `- ${l.trim()}`),
  ].join("\n");
}

interface DeviceInfo {
  name: string;
  type: string;
  apiVersion: string;
}

/** The Markdown page of one device run. */
export function gpuReport(
  kernels: KernelsResult & {
    date: string;
    device: DeviceInfo;
    copyGbps: number;
    steps?: StepCountsRow[] | null;
  },
  prefill: PrefillResult,
  speed: SpeedResult,
  log: string,
): string {
  const d = kernels.device;
  return [
    "# Measured on a GPU",
    "",
    `Device \`${d.name}\` (${d.type}, Vulkan ${d.apiVersion}), run by \`bench/gpu/run.sh\` on ` +
    `${kernels.date.slice(0, 10)}; collected by \`bench/gpu/collect.ts\` (raw files in ` +
    "bench/results/gpu/). The lavapipe figures are in docs/results-lavapipe.md and " +
    "docs/benchmarks.md. llama.cpp (node-llama-cpp's prebuilt Vulkan build, run under Deno) " +
    "is its Vulkan backend on the same GPU, in the prefill table and the sweep up to 16K.",
    "",
    '## Whole-model tests under the "gpu" kernel variants',
    "",
    wholeModelSummary(log),
    "",
    `## \`deno task bench:kernels\` (plain copy ${kernels.copyGbps.toFixed(1)} GB/s)`,
    "",
    kernelsTable(kernels),
    "",
    ...(kernels.steps
      ? [
        "### Per decode token: dispatches, barriers, submissions",
        "",
        stepCountsTable(kernels.steps),
        "",
      ]
      : []),
    "## `deno task bench:prefill`",
    "",
    prefill.table,
    "",
    "## Decode step time vs context",
    "",
    speedReport(speed),
    "",
  ].join("\n");
}

/** Copies a device run's files from `dir` under `root` and writes its report. */
export async function collect(dir: string, root = ROOT): Promise<string> {
  const read = async (f: string) => {
    try {
      return await Deno.readTextFile(join(dir, f));
    } catch (e) {
      throw new Error(`${join(dir, f)}: ${(e as Error).message} (is this a run.sh $OUT?)`);
    }
  };
  const texts: string[] = [];
  for (const f of FILES) texts.push(await read(f)); // in order: the first missing one is named
  const report = gpuReport(
    JSON.parse(texts[0]),
    JSON.parse(texts[1]),
    JSON.parse(texts[2]),
    texts[3],
  );
  const out = join(root, "bench", "results", "gpu");
  await Deno.mkdir(out, { recursive: true });
  await Promise.all(FILES.map((f, i) => Deno.writeTextFile(join(out, f), texts[i])));
  await Deno.mkdir(join(root, "docs"), { recursive: true });
  const page = join(root, "docs", "results-gpu.md");
  await Deno.writeTextFile(page, report);
  return page;
}

if (import.meta.main) {
  if (Deno.args.length !== 1) {
    console.error("usage: deno run -A bench/gpu/collect.ts DIR  (DIR: the files run.sh left)");
    Deno.exit(2);
  }
  console.log(`wrote ${await collect(Deno.args[0])}`);
}
