/**
 * Long synthetic retrieval (docs/algorithm.md §11, "long synthetic retrieval prompts"): a hand-built
 * one-layer model (bench/lib_retrieval.ts) reads 4K-16K tokens of filler with one fact per key
 * scattered through it; questions are then teacher-forced during decode, each repeated, and an
 * answer is right when the argmax after "ask i" is fact i's value token. A policy that evicted
 * a fact at prefill cannot answer it; a refreshing one can, once the pivot's drift check sees
 * the question and the fact is copied back into the satellites. Prints a Markdown table; with
 * `--write`, also writes bench/results/retrieval.json.
 *
 *   deno run -A bench/retrieval.ts [--quick] [--full] [--write]
 */
import { parseArgs } from "node:util";
import { isHcError, type LoadedModel, loadModel } from "../mod.ts";
import { minimumKeep } from "../src/cache/budget.ts";
import { argmax, POLICIES, policyCache, type PolicyConfig } from "./lib_fidelity.ts";
import { writeResult } from "./paths.ts";
import {
  makeRetrievalTask,
  type RetrievalLayout,
  retrievalLayout,
  retrievalProfile,
  type RetrievalScore,
  type RetrievalTask,
  scoreRetrieval,
  writeRetrievalModel,
} from "./lib_retrieval.ts";

/** Drift checks run every 5 decode steps (the official --steps); answers are scored from the
 * first check boundary after a question starts, for every policy alike. */
const CHECK_EVERY = 5;

/** The seven fidelity policies plus HeteroCache with refresh switched off (threshold 0), which
 * isolates its prefill selection. */
export const RETRIEVAL_POLICIES: readonly PolicyConfig[] = [
  ...POLICIES,
  {
    label: "heterocache no-refresh",
    cache: "heterocache",
    trigger: "drift",
    threshold: 0,
  },
];

export interface RetrievalOptions {
  quick?: boolean;
  /** Also run 16K-token prompts. */
  full?: boolean;
  /** Prompt lengths (default 4096, plus 16384 with `full`). */
  lengths?: readonly number[];
  keeps?: readonly number[];
  policies?: readonly PolicyConfig[];
  /** Questions per prompt (default 16 = every key; quick 8). */
  questions?: number;
  /** Write bench/results/<name>; null or absent: do not write. */
  resultName?: string | null;
  log?: (line: string) => void;
}

export interface RetrievalCell extends Partial<RetrievalScore> {
  promptTokens: number;
  policy: string;
  keep: number | null;
  status: "ok" | "n/a";
  note?: string;
  asks?: number;
  driftChecks?: number;
  triggers?: number;
  triggerRate?: number;
  stepRetrievalRate?: number;
  kvFraction?: number;
  seconds: number;
}

export interface RetrievalResult {
  date: string;
  device: string;
  quick: boolean;
  model: { layers: 1; kvHeads: number; headDim: number; dim: number; keys: number; note: string };
  /** Full-cache accuracy per length: the model must retrieve (≈100%) for the rest to mean
   * anything. */
  fullAccuracy: Record<string, number>;
  cells: RetrievalCell[];
  table: string;
  seconds: number;
}

async function runCell(
  model: LoadedModel,
  lay: RetrievalLayout,
  task: RetrievalTask,
  cfg: PolicyConfig,
  keep: number | null,
): Promise<RetrievalCell> {
  const t0 = performance.now();
  const L = task.prompt.length;
  const base: RetrievalCell = {
    promptTokens: L,
    policy: cfg.label,
    keep,
    status: "ok",
    seconds: 0,
  };
  const usesProfile = cfg.cache !== "full" && cfg.cache !== "snapkv" &&
    cfg.cache !== "streaming";
  const min = minimumKeep(lay.heads, 1);
  if (usesProfile && keep !== null && keep < min) {
    return { ...base, status: "n/a", note: `needs keep ≥ ${min.toFixed(4)}` };
  }
  using s = model.session({
    ...policyCache(cfg, keep, usesProfile ? retrievalProfile(lay) : undefined),
    contextTokens: L + task.forced.length + 1,
  });
  const am: number[] = [];
  try {
    await s.teacherForce(task.prompt, task.forced, (i, logits) => {
      am[i] = argmax(logits);
    });
  } catch (e) {
    if (isHcError(e, "E_PROFILE")) return { ...base, status: "n/a", note: e.message };
    throw e;
  }
  const st = s.cacheStats();
  return {
    ...base,
    ...scoreRetrieval(task, am, lay.unknown, CHECK_EVERY),
    asks: task.asks.length,
    driftChecks: st.driftChecks,
    triggers: st.triggers,
    triggerRate: st.triggerRate,
    stepRetrievalRate: st.stepRetrievalRate,
    kvFraction: st.fullKvBytes ? st.deviceKvBytes / st.fullKvBytes : 1,
    seconds: (performance.now() - t0) / 1000,
  };
}

export async function runRetrieval(opts: RetrievalOptions = {}): Promise<RetrievalResult> {
  const t0 = performance.now();
  const quick = opts.quick ?? false;
  const lengths = [...(opts.lengths ?? (opts.full ? [4096, 16384] : [4096]))];
  const keeps = [...(opts.keeps ?? [0.1, 0.25])];
  const policies = opts.policies ?? RETRIEVAL_POLICIES;
  const log = opts.log ?? ((l: string) => console.error(l));
  const dir = await Deno.makeTempDir({ prefix: "hc-retrieval-" });
  const cells: RetrievalCell[] = [];
  const fullAccuracy: Record<string, number> = {};
  let device = "";
  const spec = { contextLength: Math.max(...lengths) + 512, seed: 1 };
  const lay = retrievalLayout(spec);
  try {
    const path = `${dir}/retrieval.gguf`;
    await writeRetrievalModel(path, spec);
    await using model = await loadModel(path);
    device = model.device.info.name;
    for (const L of lengths) {
      const task = makeRetrievalTask(lay, {
        promptTokens: L,
        questions: opts.questions ?? (quick ? 8 : lay.keys),
        seed: L,
      });
      // The full cache first, whatever the policy list: it checks that the model retrieves.
      const full = await runCell(model, lay, task, { label: "full", cache: "full" }, null);
      fullAccuracy[L] = full.accuracyAll ?? 0;
      log(
        `L=${L}: full cache answers ${(100 * fullAccuracy[L]).toFixed(1)}% of ` +
          `${task.asks.length} asks (${full.seconds.toFixed(1)} s)`,
      );
      if (fullAccuracy[L] < 0.99) log(`  WARNING: the model does not retrieve reliably at ${L}`);
      for (const cfg of policies) {
        if (cfg.cache === "full") {
          cells.push(full);
          continue;
        }
        for (const keep of keeps) {
          const cell = await runCell(model, lay, task, cfg, keep);
          log(
            `  ${cfg.label} keep ${keep}: ${
              cell.status === "ok"
                ? `after-check ${(100 * cell.accuracyAfterCheck!).toFixed(1)}%, all ${
                  (100 * cell.accuracyAll!).toFixed(1)
                }%, triggers ${cell.triggers}/${cell.driftChecks}`
                : cell.note
            } (${cell.seconds.toFixed(1)} s)`,
          );
          cells.push(cell);
        }
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  const result: RetrievalResult = {
    date: new Date().toISOString(),
    device,
    quick,
    model: {
      layers: 1,
      kvHeads: lay.heads,
      headDim: lay.headDim,
      dim: lay.dim,
      keys: lay.keys,
      note: "NoPE (rope factors 1e12); head 0 pivot (full, writes nothing), heads 1.. satellites " +
        "(compressed, carry the answer); identical Q/K in every head",
    },
    fullAccuracy,
    cells,
    table: retrievalTable(cells),
    seconds: (performance.now() - t0) / 1000,
  };
  const name = opts.resultName ?? null;
  if (name !== null) log(`wrote ${await writeResult(name, result)}`);
  return result;
}

const pct = (x: number | undefined) => (x === undefined ? "—" : `${(100 * x).toFixed(1)}%`);

export function retrievalTable(cells: readonly RetrievalCell[]): string {
  const lines = [
    "| prompt tokens | policy | keep | accuracy after first check | accuracy, all asks | " +
    'answered "unknown" | questions answered | asks before first answer | trigger rate | ' +
    "step retrieval rate | device KV / full |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
  ];
  for (const c of cells) {
    const keep = c.keep === null ? "—" : String(c.keep);
    if (c.status === "n/a") {
      lines.push(
        `| ${c.promptTokens} | ${c.policy} | ${keep} | n/a (${c.note}) |${" |".repeat(7)}`,
      );
      continue;
    }
    const before = c.meanAsksBeforeAnswer == null ? "—" : c.meanAsksBeforeAnswer.toFixed(1);
    const cols = [
      String(c.promptTokens),
      c.policy,
      keep,
      `${pct(c.accuracyAfterCheck)} (${c.correct}/${c.scored})`,
      pct(c.accuracyAll),
      `${c.unknownAnswers}/${c.asks}`,
      `${c.questionsAnswered}/${c.questions}`,
      before,
      `${pct(c.triggerRate)} (${c.triggers}/${c.driftChecks})`,
      pct(c.stepRetrievalRate),
      pct(c.kvFraction),
    ];
    lines.push(`| ${cols.join(" | ")} |`);
  }
  return lines.join("\n");
}

export function retrievalReport(r: RetrievalResult): string {
  const acc = Object.entries(r.fullAccuracy).map(([L, a]) => `${L}: ${(100 * a).toFixed(1)}%`);
  return [
    `## Long synthetic retrieval (${r.quick ? "quick" : "full"} run, ${r.device})`,
    "",
    `Model: 1 layer, ${r.model.kvHeads} KV heads × ${r.model.headDim}, ${r.model.keys} keys; ` +
    `${r.model.note}. Full-cache accuracy (all asks): ${acc.join(", ")}.`,
    `Each question is asked several times in a row; "after first check" scores the asks ` +
    `consumed after the first ${CHECK_EVERY}-step drift-check boundary following the ` +
    `question's start, for every policy alike.`,
    "",
    r.table,
    "",
    `(${r.seconds.toFixed(0)} s)`,
  ].join("\n");
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      quick: { type: "boolean", default: false },
      full: { type: "boolean", default: false },
      write: { type: "boolean", default: false },
    },
  });
  const r = await runRetrieval({
    quick: values.quick,
    full: values.full,
    resultName: values.write ? "retrieval.json" : null,
  });
  console.log(retrievalReport(r));
}
