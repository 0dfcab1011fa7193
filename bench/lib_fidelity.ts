/**
 * Shared machinery of the fidelity and ablation benchmarks: seeded prompts the model writes
 * itself, full's greedy continuation and logits as the reference, and one "cell" (a policy at
 * a keep) teacher-forced on that continuation, scored by next-token agreement and
 * KL(full || policy), with the retrieval counters of the cache.
 */
import { dirname, fromFileUrl, join } from "./paths.ts";
import { HcError, type HeadProfile, isHcError, type LoadedModel, type PolicyName } from "../mod.ts";
import { minimumKeep } from "../src/cache/budget.ts";
import { cacheOptions } from "../src/cache/options.ts";
import { fullHeadCount, roleCounts } from "../src/cache/profile/profile.ts";

const HERE = dirname(fromFileUrl(import.meta.url));

/** A file in ../shared beside the checkout; fails naming it when missing. */
export function sharedPath(rel: string): string {
  const path = join(HERE, "..", "..", "shared", rel);
  try {
    Deno.statSync(path);
  } catch {
    throw new HcError(
      "E_IO",
      `missing ${path}: the real models live in ../shared beside the checkout`,
    );
  }
  return path;
}

/** Twenty openings of TinyStories-like text; each seeds one prompt. */
export const OPENINGS: readonly string[] = [
  "Once upon a time",
  "One day",
  "Tom and",
  "Lily wanted to",
  "There was a big dog",
  "The sun was shining",
  "Mom said",
  "Ben had a red ball",
  "In a small house",
  "The little bird",
  "Sara and her friend",
  "It was a rainy day",
  "Max liked to play",
  "The old man",
  "A cat named",
  "Every morning",
  "The children went to the park",
  "Sam found a box",
  "Anna was sad because",
  "Far away in the forest",
];

/** One real model of the benchmark and the sizes it is measured at. */
export interface ModelSpec {
  id: string;
  path: string;
  tokenizerPath?: string;
  /** Session size: prompt + forced tokens must fit, and stay inside the trained context. */
  contextTokens: number;
  promptTokens: number;
  forcedTokens: number;
  prompts: number;
  calibratePromptTokens: number;
  calibrateDecodeSteps: number;
  note: string;
}

/** stories260K (GGUF) and Baby Llama (llama2.c + tok105). */
export function realModels(quick: boolean): ModelSpec[] {
  return [
    {
      id: "stories260K",
      path: sharedPath("models/stories260K.gguf"),
      contextTokens: 512,
      promptTokens: 320,
      forcedTokens: quick ? 32 : 64,
      prompts: quick ? 6 : 20,
      calibratePromptTokens: 384,
      calibrateDecodeSteps: 100,
      note: "trained at 512 tokens (GGUF metadata says 2048): prompts + forced stay within 512",
    },
    {
      id: "babyllama-tok105",
      path: sharedPath("models/babyllama-tok105/model5000.bin"),
      tokenizerPath: sharedPath("models/babyllama-tok105/tok105.bin"),
      contextTokens: 256,
      promptTokens: 176,
      forcedTokens: quick ? 32 : 64,
      prompts: quick ? 6 : 20,
      calibratePromptTokens: 150,
      calibrateDecodeSteps: 100,
      note: "256-token context, character-level tokens: prompts are only 176 tokens",
    },
  ];
}

/**
 * `count` prompts of exactly `promptTokens` tokens: an opening and the model's own sampled
 * continuation of it (temperature 0.8, top-p 0.95, seed 1000 + i), so every run is the same.
 */
export async function buildPrompts(
  model: LoadedModel,
  count: number,
  promptTokens: number,
): Promise<number[][]> {
  if (count > OPENINGS.length) {
    throw new HcError("E_BAD_REQUEST", `at most ${OPENINGS.length} prompts`);
  }
  using s = model.session({ contextTokens: promptTokens + 1 });
  const out: number[][] = [];
  for (let i = 0; i < count; i++) {
    const ids = model.tokenize(OPENINGS[i]);
    const it = s.generate(ids, {
      temperature: 0.8,
      topP: 0.95,
      seed: 1000 + i,
      maxTokens: promptTokens - ids.length,
      ignoreEos: true,
    });
    for await (const piece of it) if (piece.token >= 0) ids.push(piece.token);
    if (ids.length !== promptTokens) {
      throw new HcError(
        "E_BAD_REQUEST",
        `prompt ${i}: expected ${promptTokens} tokens, got ${ids.length}`,
      );
    }
    out.push(ids);
  }
  return out;
}

/** Full cache's greedy continuation of a prompt and the logits that predict each token. */
export interface Reference {
  prompt: number[];
  greedy: number[];
  logits: Float32Array[];
}

export async function fullReferences(
  model: LoadedModel,
  prompts: readonly number[][],
  forcedTokens: number,
  contextTokens: number,
): Promise<{ refs: Reference[]; selfAgreement: number }> {
  using s = model.session({ cache: "full", contextTokens });
  const refs: Reference[] = [];
  let same = 0, n = 0;
  for (const prompt of prompts) {
    const greedy: number[] = [];
    const it = s.generate(prompt, { temperature: 0, maxTokens: forcedTokens, ignoreEos: true });
    for await (const piece of it) if (piece.token >= 0) greedy.push(piece.token);
    const logits: Float32Array[] = [];
    await s.teacherForce(prompt, greedy, (i, l) => {
      logits[i] = l.slice();
      n++;
      if (argmax(l) === greedy[i]) same++;
    });
    refs.push({ prompt, greedy, logits });
  }
  return { refs, selfAgreement: n ? same / n : 0 };
}

/** Index of the largest value; the lowest index on ties (as the greedy sampler). */
export function argmax(v: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < v.length; i++) if (v[i] > v[best]) best = i;
  return best;
}

/** log softmax in float64. */
export function logSoftmax(logits: ArrayLike<number>): Float64Array {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) max = Math.max(max, logits[i]);
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i] - max);
  const lse = max + Math.log(sum);
  const out = new Float64Array(logits.length);
  for (let i = 0; i < logits.length; i++) out[i] = logits[i] - lse;
  return out;
}

/** KL(softmax(p) || softmax(q)) in nats, from logits. */
export function klDivergence(pLogits: ArrayLike<number>, qLogits: ArrayLike<number>): number {
  if (pLogits.length !== qLogits.length) {
    throw new HcError("E_BAD_REQUEST", `KL of ${pLogits.length} vs ${qLogits.length} logits`);
  }
  const lp = logSoftmax(pLogits);
  const lq = logSoftmax(qLogits);
  let kl = 0;
  for (let i = 0; i < lp.length; i++) {
    const p = Math.exp(lp[i]);
    if (p > 0) kl += p * (lp[i] - lq[i]);
  }
  return Math.max(0, kl);
}

/** Running agreement / KL over teacher-forced positions. */
export class FidelityMeter {
  positions = 0;
  agreed = 0;
  klSum = 0;
  klMax = 0;

  /** One position: the reference logits and token, and the policy's logits. */
  add(refLogits: ArrayLike<number>, refToken: number, logits: ArrayLike<number>): void {
    this.positions++;
    if (argmax(logits) === refToken) this.agreed++;
    const kl = klDivergence(refLogits, logits);
    this.klSum += kl;
    this.klMax = Math.max(this.klMax, kl);
  }

  get agreement(): number {
    return this.positions ? this.agreed / this.positions : 0;
  }

  get klMean(): number {
    return this.positions ? this.klSum / this.positions : 0;
  }
}

/** A policy as the tables name it. */
export interface PolicyConfig {
  label: string;
  cache: PolicyName;
  compat?: boolean;
  /** HeteroCache drift threshold (0: the median overlap is never below it, so no refresh). */
  threshold?: number;
  /** HeteroCache's trigger (default: the policy's, coverage; compat: drift). */
  trigger?: "coverage" | "drift";
  /** The coverage trigger's drop. */
  coverageDrop?: number;
  /** Prefill observation window (SnapKV; HeteroCache's compressed heads). */
  window?: number;
}

export const POLICIES: readonly PolicyConfig[] = [
  { label: "full", cache: "full" },
  { label: "snapkv", cache: "snapkv" },
  { label: "streaming", cache: "streaming" },
  { label: "heterocache", cache: "heterocache" },
  { label: "heterocache drift", cache: "heterocache", trigger: "drift" },
  { label: "heterocache compat", cache: "heterocache", compat: true },
  { label: "per-step", cache: "per-step" },
  { label: "fixed-interval", cache: "fixed-interval" },
];

/** A benchmark policy's session cache options at one keep. */
export function policyCache(cfg: PolicyConfig, keep: number | null, profile?: HeadProfile) {
  return cacheOptions({
    cache: cfg.cache,
    compat: cfg.compat,
    threshold: cfg.threshold,
    trigger: cfg.trigger,
    coverageDrop: cfg.coverageDrop,
    window: cfg.window,
    keep,
    profile,
  });
}

export function needsProfile(p: PolicyConfig): boolean {
  return p.cache === "heterocache" || p.cache === "per-step" || p.cache === "fixed-interval";
}

export interface ProfileSummary {
  roles: Record<string, number>;
  fullHeads: number;
  totalHeads: number;
  /** Smallest keep the budget rule int(keep·N) > F allows. */
  minKeep: number;
}

export function summarizeProfile(p: HeadProfile): ProfileSummary {
  const totalHeads = p.model.nLayers * p.model.nKvHeads;
  const fullHeads = fullHeadCount(p);
  return {
    roles: { ...roleCounts(p) },
    fullHeads,
    totalHeads,
    minKeep: minimumKeep(totalHeads, fullHeads),
  };
}

/** One policy at one keep over all prompts. */
export interface Cell {
  model: string;
  policy: string;
  keep: number | null;
  status: "ok" | "n/a";
  /** Why a cell is n/a. */
  note?: string;
  positions: number;
  agreement: number | null;
  klMean: number | null;
  klMax: number | null;
  driftChecks: number;
  triggers: number;
  triggerRate: number | null;
  stepRetrievalRate: number | null;
  /** Device KV bytes / the same with every head full (at the end of each prompt, mean). */
  kvFraction: number | null;
  seconds: number;
}

/** Teacher-forces every reference under one policy and keep. */
export async function evaluateCell(
  model: LoadedModel,
  modelId: string,
  profile: HeadProfile,
  refs: readonly Reference[],
  cfg: PolicyConfig,
  keep: number | null,
  contextTokens: number,
): Promise<Cell> {
  const t0 = performance.now();
  const cell: Cell = {
    model: modelId,
    policy: cfg.label,
    keep,
    status: "ok",
    positions: 0,
    agreement: null,
    klMean: null,
    klMax: null,
    driftChecks: 0,
    triggers: 0,
    triggerRate: null,
    stepRetrievalRate: null,
    kvFraction: null,
    seconds: 0,
  };
  const summary = summarizeProfile(profile);
  if (needsProfile(cfg) && keep !== null && keep < 1 && keep < summary.minKeep) {
    cell.status = "n/a";
    cell.note = `needs keep ≥ ${summary.minKeep.toFixed(2)} (${summary.fullHeads} of ` +
      `${summary.totalHeads} heads full)`;
    return cell;
  }
  const meter = new FidelityMeter();
  let steps = 0, stepsWithTransfer = 0, kvSum = 0;
  for (const ref of refs) {
    // A fresh session per prompt, so nothing of one prompt's cache state can reach the next.
    using s = model.session({
      ...policyCache(cfg, keep, needsProfile(cfg) ? profile : undefined),
      contextTokens,
    });
    try {
      await s.teacherForce(ref.prompt, ref.greedy, (i, logits) => {
        meter.add(ref.logits[i], ref.greedy[i], logits);
      });
    } catch (e) {
      // The budget rule, as the policy itself enforces it (a second line of defence).
      if (isHcError(e, "E_PROFILE")) {
        cell.status = "n/a";
        cell.note = e.message;
        return cell;
      }
      throw e;
    }
    const st = s.cacheStats();
    cell.driftChecks += st.driftChecks;
    cell.triggers += st.triggers;
    steps += st.decodeSteps;
    stepsWithTransfer += st.stepsWithTransfer;
    kvSum += st.fullKvBytes > 0 ? st.deviceKvBytes / st.fullKvBytes : 1;
  }
  cell.positions = meter.positions;
  cell.agreement = meter.agreement;
  cell.klMean = meter.klMean;
  cell.klMax = meter.klMax;
  cell.triggerRate = cell.driftChecks ? cell.triggers / cell.driftChecks : 0;
  cell.stepRetrievalRate = steps ? stepsWithTransfer / steps : 0;
  cell.kvFraction = refs.length ? kvSum / refs.length : null;
  cell.seconds = (performance.now() - t0) / 1000;
  return cell;
}

const pct = (x: number | null) => (x === null ? "—" : `${(100 * x).toFixed(1)}%`);

/** The long-format Markdown table of cells. */
export function cellsTable(cells: readonly Cell[]): string {
  const lines = [
    "| model | policy | keep | agreement | mean KL (nats) | max KL | trigger rate | step retrieval rate | device KV / full |",
    "|---|---|---|---|---|---|---|---|---|",
  ];
  for (const c of cells) {
    const keep = c.keep === null ? "—" : String(c.keep);
    if (c.status === "n/a") {
      lines.push(`| ${c.model} | ${c.policy} | ${keep} | n/a (${c.note}) | | | | | |`);
      continue;
    }
    lines.push(
      `| ${c.model} | ${c.policy} | ${keep} | ${pct(c.agreement)} | ${c.klMean!.toFixed(4)} | ${
        c.klMax!.toFixed(3)
      } | ${pct(c.triggerRate)} (${c.triggers}/${c.driftChecks}) | ${pct(c.stepRetrievalRate)} | ${
        pct(c.kvFraction)
      } |`,
    );
  }
  return lines.join("\n");
}
