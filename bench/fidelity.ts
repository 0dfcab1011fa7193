/**
 * Fidelity of every cache policy against the full cache (docs/algorithm.md §11, first row): on the
 * real models in ../shared/models, each policy at keep 0.1 / 0.25 / 0.5 is teacher-forced on the
 * full cache's greedy continuation of prompts the model wrote itself, and scored by next-token
 * agreement and KL(full || policy), with its drift-check trigger rate and step retrieval rate.
 * Profiles come from `calibrate()` on the same model, once per run. Prints a Markdown table; with
 * `--write`, also writes bench/results/fidelity.json.
 *
 *   deno run -A bench/fidelity.ts [--quick] [--write]
 */
import { parseArgs } from "node:util";
import { calibrate, type HeadProfile, loadModel } from "../mod.ts";
import {
  buildPrompts,
  type Cell,
  cellsTable,
  evaluateCell,
  fullReferences,
  type ModelSpec,
  POLICIES,
  type PolicyConfig,
  type ProfileSummary,
  realModels,
  summarizeProfile,
} from "./lib_fidelity.ts";
import { writeResult } from "./paths.ts";

export interface FidelityOptions {
  /** Fewer prompts and forced tokens: the whole run in a couple of minutes on 2 cores. */
  quick?: boolean;
  /** Keeps to measure (default 0.1, 0.25, 0.5). */
  keeps?: readonly number[];
  /** Policies (default all seven). */
  policies?: readonly PolicyConfig[];
  /** Models (default both real models). */
  models?: readonly ModelSpec[];
  /** Write bench/results/<name>; null or absent: do not write. */
  resultName?: string | null;
  log?: (line: string) => void;
}

export interface ModelReport {
  id: string;
  path: string;
  note: string;
  prompts: number;
  promptTokens: number;
  forcedTokens: number;
  calibration: { promptTokens: number; decodeSteps: number; seconds: number };
  profile: ProfileSummary;
  /** Full cache teacher-forced on its own greedy tokens (should be 100%). */
  fullSelfAgreement: number;
}

export interface FidelityResult {
  date: string;
  device: string;
  quick: boolean;
  keeps: number[];
  models: ModelReport[];
  cells: Cell[];
  table: string;
  seconds: number;
}

export async function runFidelity(opts: FidelityOptions = {}): Promise<FidelityResult> {
  const t0 = performance.now();
  const quick = opts.quick ?? false;
  const keeps = [...(opts.keeps ?? [0.1, 0.25, 0.5])];
  const policies = opts.policies ?? POLICIES;
  const log = opts.log ?? ((l: string) => console.error(l));
  const models: ModelReport[] = [];
  const cells: Cell[] = [];
  let device = "";
  for (const spec of opts.models ?? realModels(quick)) {
    await using model = await loadModel(spec.path, { tokenizerPath: spec.tokenizerPath });
    device = model.device.info.name;
    const tc = performance.now();
    const profile: HeadProfile = await calibrate(model, {
      promptTokens: spec.calibratePromptTokens,
      decodeSteps: spec.calibrateDecodeSteps,
    });
    const calSeconds = (performance.now() - tc) / 1000;
    const summary = summarizeProfile(profile);
    log(
      `${spec.id}: calibrated in ${calSeconds.toFixed(1)} s: ${JSON.stringify(summary.roles)}, ` +
        `${summary.fullHeads}/${summary.totalHeads} heads full → HeteroCache needs keep ≥ ${
          summary.minKeep.toFixed(3)
        }`,
    );
    const prompts = await buildPrompts(model, spec.prompts, spec.promptTokens);
    const { refs, selfAgreement } = await fullReferences(
      model,
      prompts,
      spec.forcedTokens,
      spec.contextTokens,
    );
    log(
      `${spec.id}: ${prompts.length} prompts × ${spec.promptTokens} tokens, ` +
        `${spec.forcedTokens} forced; full self-agreement ${(100 * selfAgreement).toFixed(1)}%`,
    );
    models.push({
      id: spec.id,
      path: spec.path,
      note: spec.note,
      prompts: prompts.length,
      promptTokens: spec.promptTokens,
      forcedTokens: spec.forcedTokens,
      calibration: {
        promptTokens: profile.params.calibrationTokens ?? spec.calibratePromptTokens,
        decodeSteps: profile.params.decodeSteps ?? spec.calibrateDecodeSteps,
        seconds: calSeconds,
      },
      profile: summary,
      fullSelfAgreement: selfAgreement,
    });
    for (const cfg of policies) {
      for (const keep of cfg.cache === "full" ? [null] : keeps) {
        const cell = await evaluateCell(
          model,
          spec.id,
          profile,
          refs,
          cfg,
          keep,
          spec.contextTokens,
        );
        log(
          `  ${cfg.label} keep ${keep ?? "—"}: ${
            cell.status === "ok"
              ? `agreement ${(100 * cell.agreement!).toFixed(1)}%, KL ${cell.klMean!.toFixed(4)}`
              : cell.note
          } (${cell.seconds.toFixed(1)} s)`,
        );
        cells.push(cell);
      }
    }
  }
  const result: FidelityResult = {
    date: new Date().toISOString(),
    device,
    quick,
    keeps,
    models,
    cells,
    table: cellsTable(cells),
    seconds: (performance.now() - t0) / 1000,
  };
  const name = opts.resultName ?? null;
  if (name !== null) log(`wrote ${await writeResult(name, result)}`);
  return result;
}

/** The report: settings per model, then the table. */
export function fidelityReport(r: FidelityResult): string {
  const lines = [
    `## Fidelity vs full cache (${r.quick ? "quick" : "full"} run, ${r.device})`,
    "",
    "Teacher-forced on the full cache's greedy continuation. agreement = argmax of the " +
    "policy's logits equals full's greedy token; KL = KL(full || policy) per position. " +
    "Trigger rate = triggers / drift checks (per-step and fixed-interval count every " +
    "refresh as a trigger); step retrieval rate = decode steps that carried a host→device " +
    "refresh / decode steps. Device KV / full = the policy's device KV pools over every head " +
    "holding prompt + forced tokens (`full` preallocates the whole session context).",
    "",
  ];
  for (const m of r.models) {
    lines.push(
      `- ${m.id}: ${m.prompts} prompts × ${m.promptTokens} tokens, ${m.forcedTokens} forced ` +
        `(${m.note}); profile ${
          JSON.stringify(m.profile.roles)
        }, ${m.profile.fullHeads}/${m.profile.totalHeads} ` +
        `heads full, HeteroCache needs keep ≥ ${m.profile.minKeep.toFixed(3)}; ` +
        `full self-agreement ${(100 * m.fullSelfAgreement).toFixed(1)}%`,
    );
  }
  lines.push("", r.table, "", `(${r.seconds.toFixed(0)} s)`);
  return lines.join("\n");
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      quick: { type: "boolean", default: false },
      write: { type: "boolean", default: false },
    },
  });
  const r = await runFidelity({
    quick: values.quick,
    resultName: values.write ? "fidelity.json" : null,
  });
  console.log(fidelityReport(r));
}
