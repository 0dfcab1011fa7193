/**
 * `deno task bench` (quick) / `deno task bench --full`: fidelity, the synthetic retrieval task,
 * the ablation, the multi-turn conversation, the decode-speed sweep and the prefill paths (with
 * llama.cpp, and a long HeteroCache prompt layer by layer) in one go. With `--write` (which the
 * task passes) each writes its JSON into bench/results/, the tables go into docs/benchmarks.md
 * with the machine, the device and the date, and the charts
 * (fidelity vs keep, accuracy per turn, step time vs context) into docs/charts/*.svg; without it
 * the page is printed and nothing is written.
 *
 * `--only speed,prefill` (any of SECTIONS) reruns those sections and builds the page with the
 * others' stored results (bench/results/*.json), each of those headed with the date of the run
 * that measured it: for a change that touches one part, on a machine where the whole run takes
 * half an hour.
 */
import { parseArgs } from "node:util";
import { type AblationResult, runAblation } from "./ablation.ts";
import { fidelityCharts, speedCharts } from "./charts.ts";
import { runSpeed, type SpeedResult } from "./decode.ts";
import { fidelityReport, runFidelity } from "./fidelity.ts";
import { dirname, fromFileUrl, join, readResult } from "./paths.ts";
import { retrievalReport, type RetrievalResult, runRetrieval } from "./retrieval.ts";
import type { FidelityResult } from "./fidelity.ts";
import {
  multiturnCharts,
  multiturnReport,
  type MultiturnResult,
  runMultiturn,
} from "./multiturn.ts";
import {
  LONG_PREFILL_TOKENS,
  type LongPrefillResult,
  type PrefillResult,
  runLongPrefill,
  runPrefill,
} from "./prefill.ts";

/** The sections, in the order they run (the decode sweep first, see below), and the result
 * file each writes. */
const SECTIONS = {
  speed: "speed.json",
  fidelity: "fidelity.json",
  retrieval: "retrieval.json",
  ablation: "ablation.json",
  multiturn: "multiturn.json",
  prefill: "prefill.json",
  "prefill-long": "prefill_long.json",
} as const;
type Section = keyof typeof SECTIONS;

const ROOT = join(dirname(fromFileUrl(import.meta.url)), "..");

const pct = (x: number | null | undefined) => x == null ? "n/a" : `${(100 * x).toFixed(1)}%`;

/** The coverage trigger (label "heterocache", the default) against the official overlap test
 * ("heterocache drift") and a refresh every step, read off this run's cells: the figures that
 * decide which trigger is the default. */
function triggerComparison(fidelity: FidelityResult, retrieval: RetrievalResult): string {
  const labels = ["heterocache", "heterocache drift", "per-step"];
  const rows = [
    "| task | cell | trigger | accuracy | step retrieval rate |",
    "|---|---|---|---|---|",
  ];
  for (const c of retrieval.cells) {
    if (c.keep !== 0.25 || c.status !== "ok" || !labels.includes(c.policy)) continue;
    rows.push(
      `| retrieval (after first check) | ${c.promptTokens} tokens, keep 0.25 | ${c.policy} | ` +
        `${pct(c.accuracyAfterCheck)} | ${pct(c.stepRetrievalRate)} |`,
    );
  }
  for (const c of fidelity.cells) {
    if (c.keep !== 0.5 || c.status !== "ok" || !labels.includes(c.policy)) continue;
    rows.push(
      `| fidelity (agreement) | ${c.model}, keep 0.5 | ${c.policy} | ${pct(c.agreement)} | ` +
        `${pct(c.stepRetrievalRate)} |`,
    );
  }
  return [
    "`heterocache` runs the coverage trigger (the default); `heterocache drift` the official " +
    "overlap test (the default under `compat: true`); `per-step` refreshes every step. Coverage " +
    "is the default because it reads a statistic the decode attention computes anyway (no extra " +
    "pass, no round trip in the step) every step, so it sees a question change at once, where the " +
    "overlap test looks every 5 steps and compares top-K sets that barely move when the attention " +
    "shifts to a few new rows; the rows below are this run's evidence.",
    "",
    ...rows,
  ].join("\n");
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: { full: { type: "boolean" }, write: { type: "boolean" }, only: { type: "string" } },
  });
  const quick = !values.full;
  const write = values.write ?? false;
  const names = Object.keys(SECTIONS) as Section[];
  const only = values.only === undefined ? names : values.only.split(",").map((x) => x.trim());
  for (const x of only) {
    if (!(names as string[]).includes(x)) {
      throw new Error(`--only: unknown section '${x}' (sections: ${names.join(", ")})`);
    }
  }
  const rerun = (x: Section) => only.includes(x);
  /** A section's stored result, where this run does not measure it. */
  const stored = <T>(x: Section) => readResult<T>(SECTIONS[x]);
  const t0 = performance.now();
  // The decode sweep first, in a young process: after the other sections' sessions its refresh
  // steps met single slow steps (hc every 5 at 1K-4K: 24 ms mean steps beside 16 ms, where a
  // fresh process measured 17 ms beside 16 ms; likely garbage collection of their heap).
  const speed = rerun("speed")
    ? await runSpeed({ quick, write })
    : await stored<SpeedResult>("speed");
  const fidelity = rerun("fidelity")
    ? await runFidelity({ quick, resultName: write ? SECTIONS.fidelity : null })
    : await stored<FidelityResult>("fidelity");
  const retrieval = rerun("retrieval")
    ? await runRetrieval({ quick, full: !quick, resultName: write ? SECTIONS.retrieval : null })
    : await stored<RetrievalResult>("retrieval");
  const ablation = rerun("ablation")
    ? await runAblation({ quick, resultName: write ? SECTIONS.ablation : null })
    : await stored<AblationResult>("ablation");
  const multiturn = rerun("multiturn")
    ? await runMultiturn({
      lengths: quick ? [4096] : [4096, 16384],
      docs: quick ? 1 : 3,
      resultName: write ? SECTIONS.multiturn : null,
    })
    : await stored<MultiturnResult>("multiturn");
  const prefill = rerun("prefill")
    ? await runPrefill({
      tokens: quick ? [512, 1024] : [512, 1024, 2048],
      longTokens: quick ? 2048 : 4096,
      // llama.cpp's CPU backend (the peer here) everywhere, its Vulkan backend on the same
      // device where it finishes in minutes.
      llamacpp: ["cpu", "vulkan"],
      vulkanMaxTokens: quick ? 512 : 1024,
      write,
    })
    : await stored<PrefillResult>("prefill");
  // The 32K-token prompt takes most of an hour on a 2-core CPU device: a quick run shows the
  // stored result unless `--only` names the section.
  const longRerun = rerun("prefill-long") && (!quick || values.only !== undefined);
  const prefillLong = longRerun
    ? await runLongPrefill({ tokens: LONG_PREFILL_TOKENS, write })
    : await stored<LongPrefillResult>("prefill-long");
  const measured = (x: Section) => x === "prefill-long" ? longRerun : rerun(x);
  /** A heading, with the date of the run that measured it where that is not this one. */
  const head = (x: Section, title: string, r: { date: string }) =>
    measured(x)
      ? title
      : `${title} (stored: measured ${r.date.slice(0, 16).replace("T", " ")} UTC)`;
  const charts = join(ROOT, "docs", "charts");
  if (write) await Deno.mkdir(charts, { recursive: true });
  const images: string[] = [];
  for (const c of fidelityCharts(fidelity)) {
    if (write) await Deno.writeTextFile(join(charts, `fidelity-${c.model}.svg`), c.svg);
    images.push(`![fidelity vs keep, ${c.model}](charts/fidelity-${c.model}.svg)`);
  }
  const multiturnImages: string[] = [];
  for (const c of multiturnCharts(multiturn)) {
    if (write) await Deno.writeTextFile(join(charts, `multiturn-${c.length}.svg`), c.svg);
    multiturnImages.push(
      `![accuracy per turn, ${c.length} tokens](charts/multiturn-${c.length}.svg)`,
    );
  }
  const speedImages: string[] = [];
  for (const c of speedCharts(speed)) {
    if (write) await Deno.writeTextFile(join(charts, `speed-${c.shape}.svg`), c.svg);
    speedImages.push(`![decode step vs context, ${c.shape}](charts/speed-${c.shape}.svg)`);
  }
  const minutes = ((performance.now() - t0) / 60000).toFixed(1);
  const what = only.length === names.length
    ? longRerun
      ? "Numbers are from this one run"
      : "Numbers are from this one run but the 32K prompt's, a stored result dated in its heading"
    : `This run measured ${only.join(", ")}; the other sections are stored results of ` +
      "earlier runs, dated in their headings";
  const md = [
    "# Benchmarks",
    "",
    `Generated by \`deno task bench${quick ? "" : " --full"}${
      only.length === names.length ? "" : ` --only ${only.join(",")}`
    }\` on ${new Date().toISOString().slice(0, 10)}: ` +
    `${navigator.hardwareConcurrency} cores, device \`${fidelity.device}\`, ${minutes} min. ` +
    `${what}; see bench/results/*.json for every cell.`,
    "",
    head("fidelity", "## Fidelity (teacher-forced against full's greedy continuation)", fidelity),
    "",
    fidelityReport(fidelity),
    "",
    ...images,
    "",
    head("retrieval", "## Synthetic long-context retrieval", retrieval),
    "",
    retrievalReport(retrieval),
    "",
    rerun("fidelity") === rerun("retrieval")
      ? head("retrieval", "## Which trigger is the default", retrieval)
      : "## Which trigger is the default (fidelity and retrieval from the runs named above)",
    "",
    triggerComparison(fidelity, retrieval),
    "",
    head(
      "ablation",
      "## Ablation: refresh every step / every 2nd step / when the trigger fires",
      ablation,
    ),
    "",
    ablation.table,
    "",
    head(
      "multiturn",
      "## Multi-turn: one document, many questions (continued sessions)",
      multiturn,
    ),
    "",
    multiturnReport(multiturn, multiturnImages),
    "",
    head(
      "speed",
      "## Decode step time vs context (mean step first; HeteroCache vs SnapKV, full and llama.cpp)",
      speed,
    ),
    "",
    speed.table,
    "",
    ...speedImages,
    "",
    head(
      "prefill",
      "## Prefill: the matvec prompt path vs the tiled matmul (same run, FMA ceiling and llama.cpp beside); a long HeteroCache prompt layer by layer vs in chunks",
      prefill,
    ),
    "",
    prefill.table,
    "",
    head(
      "prefill-long",
      "## Long prompt: 32K tokens into HeteroCache, layer by layer",
      prefillLong,
    ),
    "",
    prefillLong.table,
    "",
  ].join("\n");
  if (write) {
    await Deno.mkdir(join(ROOT, "docs"), { recursive: true });
    await Deno.writeTextFile(join(ROOT, "docs", "benchmarks.md"), md);
    console.log(`wrote docs/benchmarks.md (${minutes} min)`);
  } else console.log(md);
}
