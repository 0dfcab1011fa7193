/**
 * Shared context over many turns: the retrieval task's long synthetic document (bench/
 * lib_retrieval.ts) is read once, then N questions are asked as separate turns of one continued
 * session (`generate(turn, { continue: true })`). Turn 1 is the document and the first question;
 * every later turn is just its question, repeated a few times as in bench/retrieval.ts, and the
 * answer is the first generated token. Per policy: accuracy per turn (over several documents),
 * time to first token per turn, device KV bytes; and, side by side in the same run, the time to
 * first token of re-prefilling the whole conversation for the last turn in a fresh session (what
 * a server without prompt reuse pays on every turn).
 *
 *   deno run -A bench/multiturn.ts [--lengths 4096,16384] [--turns 8] [--docs 3] [--write]
 *
 * `--write` saves bench/results/multiturn.json, docs/charts/multiturn-<L>.svg and the
 * "Multi-turn" section of docs/benchmarks.md.
 */
import { parseArgs } from "node:util";
import { type LoadedModel, loadModel } from "../mod.ts";
import { cacheOptions } from "../src/cache/options.ts";
import { lineChart, type Series } from "./charts.ts";
import { needsProfile, type PolicyConfig } from "./lib_fidelity.ts";
import { dirname, fromFileUrl, join, writeResult } from "./paths.ts";
import {
  makeRetrievalTask,
  type RetrievalLayout,
  retrievalLayout,
  retrievalProfile,
  writeRetrievalModel,
} from "./lib_retrieval.ts";

const ROOT = join(dirname(fromFileUrl(import.meta.url)), "..");

export const MULTITURN_POLICIES: readonly PolicyConfig[] = [
  { label: "full", cache: "full" },
  { label: "snapkv", cache: "snapkv" },
  { label: "streaming", cache: "streaming" },
  { label: "heterocache", cache: "heterocache" },
];

export interface MultiturnOptions {
  /** Document lengths in tokens (default 4096). */
  lengths?: readonly number[];
  /** Turns (questions) per conversation (default 8, at most the task's 16 keys). */
  turns?: number;
  /** Documents (conversations) per length and policy (default 3). */
  docs?: number;
  /** Times each turn repeats its question (default 4). */
  repeats?: number;
  keep?: number;
  policies?: readonly PolicyConfig[];
  /** Write bench/results/<name>; null or absent: do not write. */
  resultName?: string | null;
  log?: (line: string) => void;
}

export interface MultiturnCell {
  promptTokens: number;
  policy: string;
  keep: number | null;
  /** Per turn: answers right / conversations. */
  accuracy: number[];
  /** Per turn: mean time to first token, ms. */
  ttftMs: number[];
  /** Per turn: mean device KV bytes after the turn. */
  deviceKvBytes: number[];
  /** Per turn: mean tokens the turn prefilled. */
  turnTokens: number[];
  /** Time to first token of the last turn's whole conversation prefilled in a fresh session
   * (first document), and whether that fresh run answered right. */
  reprefillMs: number;
  reprefillTokens: number;
  reprefillRight: boolean;
  /** Mean TTFT of turns 2..N over reprefillMs. */
  followUpRatio: number;
  seconds: number;
}

export interface MultiturnResult {
  date: string;
  device: string;
  turns: number;
  docs: number;
  repeats: number;
  keep: number;
  cells: MultiturnCell[];
  table: string;
  seconds: number;
}

function sessionFor(
  model: LoadedModel,
  lay: RetrievalLayout,
  cfg: PolicyConfig,
  keep: number | null,
  contextTokens: number,
) {
  return model.session({
    ...cacheOptions({
      cache: cfg.cache,
      trigger: cfg.trigger,
      keep,
      profile: needsProfile(cfg) ? retrievalProfile(lay) : undefined,
    }),
    contextTokens,
  });
}

const GREEDY = { temperature: 0, ignoreEos: true, maxTokens: 1 } as const;

async function runCell(
  model: LoadedModel,
  lay: RetrievalLayout,
  L: number,
  cfg: PolicyConfig,
  o: Required<Pick<MultiturnOptions, "turns" | "docs" | "repeats" | "keep">>,
): Promise<MultiturnCell> {
  const t0 = performance.now();
  const keep = cfg.cache === "full" ? null : o.keep;
  const T = o.turns;
  const sum = (n: number) => Array<number>(n).fill(0);
  const cell: MultiturnCell = {
    promptTokens: L,
    policy: cfg.label,
    keep,
    accuracy: sum(T),
    ttftMs: sum(T),
    deviceKvBytes: sum(T),
    turnTokens: sum(T),
    reprefillMs: 0,
    reprefillTokens: 0,
    reprefillRight: false,
    followUpRatio: 0,
    seconds: 0,
  };
  const contextTokens = L + T * (o.repeats + 1) + 8;
  for (let doc = 0; doc < o.docs; doc++) {
    const task = makeRetrievalTask(lay, {
      promptTokens: L,
      questions: T,
      repeats: o.repeats,
      seed: L * 100 + doc,
    });
    const blocks = [...new Set(task.asks.map((a) => a.block))].map((b) =>
      task.asks.find((a) => a.block === b)!
    );
    using s = sessionFor(model, lay, cfg, keep, contextTokens);
    let before: number[] = [];
    for (let t = 0; t < T; t++) {
      const ask = blocks[t];
      const question = Array<number>(o.repeats).fill(lay.askBase + ask.key);
      if (t === T - 1) before = s.context();
      const turn = t === 0 ? [...task.prompt, ...question] : question;
      let answer = -1;
      for await (const p of s.generate(turn, { ...GREEDY, continue: t > 0 })) {
        if (p.token >= 0 && answer < 0) answer = p.token;
      }
      const g = s.lastGeneration!;
      cell.accuracy[t] += answer === ask.answer ? 1 / o.docs : 0;
      cell.ttftMs[t] += g.prefillMs / o.docs;
      cell.turnTokens[t] += g.promptTokens / o.docs;
      cell.deviceKvBytes[t] += s.cacheStats().deviceKvBytes / o.docs;
    }
    if (doc === 0) {
      // The whole conversation up to the last turn, prefilled again in a fresh session.
      const ask = blocks[T - 1];
      const whole = [...before, ...Array<number>(o.repeats).fill(lay.askBase + ask.key)];
      using fresh = sessionFor(model, lay, cfg, keep, contextTokens);
      let answer = -1;
      for await (const p of fresh.generate(whole, GREEDY)) if (answer < 0) answer = p.token;
      cell.reprefillMs = fresh.lastGeneration!.prefillMs;
      cell.reprefillTokens = whole.length;
      cell.reprefillRight = answer === ask.answer;
    }
  }
  const follow = cell.ttftMs.slice(1);
  cell.followUpRatio = follow.length
    ? follow.reduce((a, b) => a + b, 0) / follow.length / cell.reprefillMs
    : 0;
  cell.seconds = (performance.now() - t0) / 1000;
  return cell;
}

export async function runMultiturn(opts: MultiturnOptions = {}): Promise<MultiturnResult> {
  const t0 = performance.now();
  const lengths = [...(opts.lengths ?? [4096])];
  const o = {
    turns: opts.turns ?? 8,
    docs: opts.docs ?? 3,
    repeats: opts.repeats ?? 4,
    keep: opts.keep ?? 0.25,
  };
  const log = opts.log ?? ((l: string) => console.error(l));
  const spec = { contextLength: Math.max(...lengths) + 512, seed: 1 };
  const lay = retrievalLayout(spec);
  if (!(o.turns >= 2 && o.turns <= lay.keys)) {
    throw new Error(`turns must be 2..${lay.keys}, got ${o.turns}`);
  }
  const dir = await Deno.makeTempDir({ prefix: "hc-multiturn-" });
  const cells: MultiturnCell[] = [];
  let device = "";
  try {
    const path = `${dir}/retrieval.gguf`;
    await writeRetrievalModel(path, spec);
    await using model = await loadModel(path);
    device = model.device.info.name;
    // Pipelines compile on first use (CPU drivers: hundreds of ms); a short conversation per
    // policy first keeps that out of whichever cell would run first.
    for (const cfg of opts.policies ?? MULTITURN_POLICIES) {
      await runCell(model, lay, Math.min(1024, ...lengths), cfg, { ...o, docs: 1, turns: 2 });
    }
    for (const L of lengths) {
      for (const cfg of opts.policies ?? MULTITURN_POLICIES) {
        const cell = await runCell(model, lay, L, cfg, o);
        log(
          `L=${L} ${cfg.label}: accuracy ${cell.accuracy.map(pct).join(" ")}; ttft ${
            cell.ttftMs.map((x) => x.toFixed(0)).join(" ")
          } ms; re-prefill ${cell.reprefillMs.toFixed(0)} ms (follow-up ${
            pct(cell.followUpRatio)
          }) (${cell.seconds.toFixed(0)} s)`,
        );
        cells.push(cell);
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  const result: MultiturnResult = {
    date: new Date().toISOString(),
    device,
    ...o,
    cells,
    table: multiturnTable(cells),
    seconds: (performance.now() - t0) / 1000,
  };
  const name = opts.resultName ?? null;
  if (name !== null) log(`wrote ${await writeResult(name, result)}`);
  return result;
}

const pct = (x: number) => `${(100 * x).toFixed(0)}%`;
const mean = (xs: readonly number[]) => xs.reduce((a, b) => a + b, 0) / (xs.length || 1);

export function multiturnTable(cells: readonly MultiturnCell[]): string {
  const T = cells[0]?.accuracy.length ?? 0;
  const lines = [
    "| context | policy | keep | accuracy turn 1 | accuracy turns 2-" + T + " | per turn | " +
    "TTFT turn 1 (ms) | TTFT turns 2-" + T + " (ms, mean) | re-prefill TTFT (ms) | " +
    "follow-up / re-prefill | device KV after last turn |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
  ];
  for (const c of cells) {
    lines.push(
      `| ${c.promptTokens} | ${c.policy} | ${c.keep ?? "—"} | ${pct(c.accuracy[0])} | ${
        pct(mean(c.accuracy.slice(1)))
      } | ${c.accuracy.map(pct).join(" ")} | ${c.ttftMs[0].toFixed(0)} | ${
        mean(c.ttftMs.slice(1)).toFixed(1)
      } | ${c.reprefillMs.toFixed(0)} (${c.reprefillTokens} tokens) | ${pct(c.followUpRatio)} | ${
        (c.deviceKvBytes[T - 1] / 2 ** 20).toFixed(2)
      } MiB |`,
    );
  }
  return lines.join("\n");
}

/** One chart per context length: accuracy per turn, one line per policy. */
export function multiturnCharts(r: MultiturnResult): { length: number; svg: string }[] {
  const lengths = [...new Set(r.cells.map((c) => c.promptTokens))];
  return lengths.map((L) => {
    const series: Series[] = r.cells.filter((c) => c.promptTokens === L).map((c) => ({
      name: c.keep === null ? c.policy : `${c.policy} keep ${c.keep}`,
      points: c.accuracy.map((a, t): [number, number] => [t + 1, 100 * a]),
    }));
    const svg = lineChart({
      title: `Multi-turn retrieval, ${L}-token document: accuracy per turn`,
      xLabel: "turn",
      yLabel: "answers right (%)",
      yMin: 0,
      yMax: 100,
      series,
    });
    return { length: L, svg };
  });
}

export function multiturnReport(r: MultiturnResult, images: readonly string[] = []): string {
  return [
    `Run on ${r.device}, ${r.date.slice(0, 10)}: ${r.turns} turns per conversation, ` +
    `${r.docs} documents per cell, each question repeated ${r.repeats} times per turn, ` +
    `keep ${r.keep}. Turn 1 prefills the document and the first question; each later turn is ` +
    "a continuation (`generate(turn, { continue: true })`) that feeds only its question. " +
    "Re-prefill: the last turn's whole conversation prefilled in a fresh session of the same " +
    "policy, in the same run; follow-up / re-prefill is the mean TTFT of turns 2.. over it.",
    "",
    r.table,
    "",
    ...images,
    "",
    `(${r.seconds.toFixed(0)} s)`,
  ].join("\n");
}

/** Replaces (or appends) the "## Multi-turn" section of docs/benchmarks.md. */
async function writeDocsSection(body: string): Promise<void> {
  const path = join(ROOT, "docs", "benchmarks.md");
  const heading = "## Multi-turn: one document, many questions (continued sessions)";
  const page = await Deno.readTextFile(path);
  const start = page.indexOf(heading);
  const section = `${heading}\n\n${body}\n`;
  let out: string;
  if (start < 0) {
    // Where bench/all.ts puts it: before the decode-speed section, else at the end.
    const speed = page.indexOf("\n## Decode step time");
    out = speed < 0
      ? `${page.trimEnd()}\n\n${section}`
      : `${page.slice(0, speed + 1)}${section}\n${page.slice(speed + 1)}`;
  } else {
    const next = page.indexOf("\n## ", start + heading.length);
    out = page.slice(0, start) + section + (next < 0 ? "" : page.slice(next + 1));
  }
  await Deno.writeTextFile(path, out);
}

/** Runs, prints, and with `write` saves the JSON, the charts and the docs section. */
export async function multiturnMain(opts: MultiturnOptions & { write: boolean }) {
  const r = await runMultiturn({ ...opts, resultName: opts.write ? "multiturn.json" : null });
  const images: string[] = [];
  const charts = join(ROOT, "docs", "charts");
  for (const c of multiturnCharts(r)) {
    if (opts.write) {
      await Deno.mkdir(charts, { recursive: true });
      await Deno.writeTextFile(join(charts, `multiturn-${c.length}.svg`), c.svg);
    }
    images.push(`![accuracy per turn, ${c.length} tokens](charts/multiturn-${c.length}.svg)`);
  }
  const body = multiturnReport(r, images);
  if (opts.write) await writeDocsSection(body);
  return { result: r, body };
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      lengths: { type: "string", default: "4096" },
      turns: { type: "string", default: "8" },
      docs: { type: "string", default: "3" },
      write: { type: "boolean", default: false },
    },
  });
  const { body } = await multiturnMain({
    lengths: values.lengths.split(",").map(Number),
    turns: Number(values.turns),
    docs: Number(values.docs),
    write: values.write,
  });
  console.log(body);
}
