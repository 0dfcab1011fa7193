/**
 * A hand-built synthetic model that really retrieves, for the long-context retrieval benchmark
 * (bench/retrieval.ts) and its test. One layer, no position encoding (RoPE frequency factors of
 * 1e12 rotate nothing), H KV heads with one query head each, FFN weights zero.
 *
 * Tokens: "fact (i, j)" stores value j under key i; "ask i" asks for key i's value; fillers carry
 * a random vector and nothing else; separators pad every fact ("sep sep fact sep sep"). Every
 * head has the same Q/K projection, so all heads attend identically: a perfectly redundant
 * cluster, head 0 its pivot (kept whole) and heads 1..H-1 its satellites (compressed). Only the
 * satellites' V→O paths write the fact's value into the residual; output.weight turns it into
 * the logit of value token j, and an ask with nothing found answers the "unknown" token.
 *
 * Attention scores (after the 1/sqrt(d) scale):
 * - an ask i query scores fact i at +FACT_SCORE, every other fact and separator 0, and fillers
 *   along a random direction u_i of their vectors (N(0, FILLER_STD²)): each question reorders
 *   the fillers its own way, as a new query in a real model does;
 * - a filler query scores fillers along u_0 and facts and separators at -PENALTY: at the end of
 *   the prompt (all filler) no fact looks important, so prefill-time selection evicts it.
 * A fact a static policy evicted is gone; a refreshing policy can get it back once the pivot's
 * drift check sees the question.
 */
import { HcError } from "../src/errors.ts";
import { writeSyntheticModel } from "../testing/synthetic_model.ts";
import { uniformProfile } from "../src/cache/profile/profile_io.ts";
import type { HeadProfile } from "../src/cache/profile/profile.ts";
import { mulberry32 } from "../testing/rng.ts";

export interface RetrievalModelSpec {
  /** Distinct keys (and values); default 16. */
  keys?: number;
  /** KV heads (= query heads); default 32: 1 pivot + 31 satellites, so keep ≥ 2/32 works. */
  heads?: number;
  contextLength: number;
  seed?: number;
}

const FACT_SCORE = 30;
const FILLER_STD = 2;
const PENALTY = 20;
const FILLER_TYPES = 128;
const HEAD_DIM = 32;
/** Logit of "unknown" relative to a found answer's: an answer must be at least half found. */
const UNKNOWN_LOGIT = 0.5;

/** Token ids and embedding dims of one retrieval model. */
export interface RetrievalLayout {
  keys: number;
  heads: number;
  headDim: number;
  dim: number;
  vocab: number;
  fillerBase: number;
  fillerTypes: number;
  sep: number;
  factBase: number;
  askBase: number;
  valueBase: number;
  unknown: number;
}

export function retrievalLayout(spec: RetrievalModelSpec): RetrievalLayout {
  const keys = spec.keys ?? 16;
  const heads = spec.heads ?? 32;
  if (!Number.isInteger(keys) || keys < 2 || keys > HEAD_DIM - 8) {
    throw new HcError("E_BAD_REQUEST", `keys must be 2..${HEAD_DIM - 8}, got ${keys}`);
  }
  if (!Number.isInteger(heads) || heads < 2 || heads > 64) {
    throw new HcError("E_BAD_REQUEST", `heads must be 2..64, got ${heads}`);
  }
  const fillerBase = 3;
  const sep = fillerBase + FILLER_TYPES;
  const factBase = sep + 1;
  const askBase = factBase + keys * keys;
  const valueBase = askBase + keys;
  const unknown = valueBase + keys;
  const vocab = Math.max(259, unknown + 1);
  // Embedding dims: fact key, ask key, fact value, filler vector, 3 flags, pad, answer.
  const used = 3 * keys + fillerDims(keys) + 4 + keys;
  return {
    keys,
    heads,
    headDim: HEAD_DIM,
    dim: Math.ceil(used / 16) * 16,
    vocab,
    fillerBase,
    fillerTypes: FILLER_TYPES,
    sep,
    factBase,
    askBase,
    valueBase,
    unknown,
  };
}

/** Head dims left for the filler subspace after the key dims and the penalty dim. */
function fillerDims(keys: number): number {
  return HEAD_DIM - keys - 1;
}

/** Embedding offsets. */
function dims(lay: RetrievalLayout) {
  const K = lay.keys;
  const fk = 0;
  const ak = K;
  const val = 2 * K;
  const fr = 3 * K;
  const flagFill = fr + fillerDims(K);
  const flagAsk = flagFill + 1;
  const flagPen = flagFill + 2;
  const pad = flagFill + 3;
  const ans = pad + 1;
  return { fk, ak, val, fr, flagFill, flagAsk, flagPen, pad, ans };
}

/** Seeded Gaussian (Box-Muller over mulberry32). */
export function gaussian(seed: number): () => number {
  const u = uniform(seed);
  return () => {
    const a = Math.max(u(), 1e-12);
    return Math.sqrt(-2 * Math.log(a)) * Math.cos(2 * Math.PI * u());
  };
}

export const uniform = mulberry32;

function unitVector(n: number, g: () => number): number[] {
  const v = Array.from({ length: n }, g);
  const norm = Math.hypot(...v);
  return v.map((x) => x / norm);
}

/** The embedding, projections and output of the retrieval model, by tensor name. */
function weights(lay: RetrievalLayout, seed: number): Map<string, Float32Array> {
  const d = dims(lay);
  const K = lay.keys;
  const D = lay.headDim;
  const F = fillerDims(K);
  const H = lay.heads;
  const g = gaussian(seed * 7919 + 17);
  const emb = new Float32Array(lay.dim * lay.vocab);
  // Every row has squared norm `dim` (RMS 1), so RMSNorm with unit weights is the identity.
  const row = (tok: number, set: [number, number][]) => {
    const r = emb.subarray(tok * lay.dim, (tok + 1) * lay.dim);
    let sq = 0;
    for (const [i, v] of set) {
      r[i] = v;
      sq += v * v;
    }
    r[d.pad] = Math.sqrt(Math.max(0, lay.dim - sq));
  };
  for (let t = 0; t < lay.vocab; t++) row(t, []);
  for (let t = 0; t < lay.fillerTypes; t++) {
    const v = Array.from({ length: F }, g);
    row(lay.fillerBase + t, [[d.flagFill, 1], ...v.map((x, i): [number, number] => [d.fr + i, x])]);
  }
  row(lay.sep, [[d.flagPen, 1]]);
  for (let i = 0; i < K; i++) {
    for (let j = 0; j < K; j++) {
      row(lay.factBase + i * K + j, [[d.fk + i, 1], [d.val + j, 1], [d.flagPen, 1]]);
    }
    row(lay.askBase + i, [[d.ak + i, 1], [d.flagAsk, 1]]);
  }
  const sqrtD = Math.sqrt(D);
  const qDim = H * D;
  // One query/key map shared by every head. Head dims: [0, K) keys, [K, K+F) fillers, K+F penalty.
  const qHead = new Float32Array(D * lay.dim);
  const kHead = new Float32Array(D * lay.dim);
  const q = (out: number, inp: number, v: number) => (qHead[out * lay.dim + inp] += v);
  const k = (out: number, inp: number, v: number) => (kHead[out * lay.dim + inp] = v);
  // Filler vectors are N(0, I): a unit direction u scores them N(0, 1) before `FILLER_STD`.
  const u0 = unitVector(F, g);
  for (let f = 0; f < F; f++) q(K + f, d.flagFill, FILLER_STD * sqrtD * u0[f]);
  q(K + F, d.flagFill, -PENALTY * sqrtD);
  for (let i = 0; i < K; i++) {
    q(i, d.ak + i, FACT_SCORE * sqrtD);
    const ui = unitVector(F, g);
    for (let f = 0; f < F; f++) q(K + f, d.ak + i, FILLER_STD * sqrtD * ui[f]);
    k(i, d.fk + i, 1);
  }
  for (let f = 0; f < F; f++) k(K + f, d.fr + f, 1);
  k(K + F, d.flagPen, 1);
  const wq = new Float32Array(qDim * lay.dim);
  const wk = new Float32Array(qDim * lay.dim);
  const wv = new Float32Array(qDim * lay.dim);
  const wo = new Float32Array(lay.dim * qDim);
  for (let h = 0; h < H; h++) {
    wq.set(qHead, h * D * lay.dim);
    wk.set(kHead, h * D * lay.dim);
    if (h === 0) continue; // the pivot writes nothing: only satellites carry the answer
    for (let j = 0; j < K; j++) {
      wv[(h * D + j) * lay.dim + d.val + j] = 1;
      wo[(d.ans + j) * qDim + h * D + j] = 1 / (H - 1);
    }
  }
  const out = new Float32Array(lay.dim * lay.vocab);
  for (let j = 0; j < K; j++) out[(lay.valueBase + j) * lay.dim + d.ans + j] = 1;
  out[lay.unknown * lay.dim + d.flagAsk] = UNKNOWN_LOGIT;
  return new Map([
    ["token_embd.weight", emb],
    ["blk.0.attn_norm.weight", new Float32Array(lay.dim).fill(1)],
    ["blk.0.ffn_norm.weight", new Float32Array(lay.dim).fill(1)],
    ["output_norm.weight", new Float32Array(lay.dim).fill(1)],
    ["blk.0.attn_q.weight", wq],
    ["blk.0.attn_k.weight", wk],
    ["blk.0.attn_v.weight", wv],
    ["blk.0.attn_output.weight", wo],
    ["output.weight", out],
  ]);
}

/** Writes the retrieval model (F32 GGUF) and returns its layout. */
export async function writeRetrievalModel(
  path: string,
  spec: RetrievalModelSpec,
): Promise<RetrievalLayout> {
  const lay = retrievalLayout(spec);
  const w = weights(lay, spec.seed ?? 1);
  await writeSyntheticModel(path, {
    dim: lay.dim,
    nLayers: 1,
    nHeads: lay.heads,
    nKvHeads: lay.heads,
    headDim: lay.headDim,
    ffnDim: 16,
    vocabSize: lay.vocab,
    contextLength: spec.contextLength,
    seed: spec.seed ?? 1,
    ropeFreqFactors: Array(lay.headDim / 2).fill(1e12),
    // Everything not listed (the FFN) is zero: the answer comes from attention alone.
    tensors: (name, shape) => w.get(name) ?? new Float32Array(shape.reduce((a, b) => a * b, 1)),
  });
  return lay;
}

/** Head 0 the pivot, every other head its satellite, equal budgets. */
export function retrievalProfile(lay: RetrievalLayout): HeadProfile {
  const roles = Array.from({ length: lay.heads }, (_, h) => (h === 0 ? "pivot" : "satellite"));
  return uniformProfile(1, roles as ("pivot" | "satellite")[], roles.map((_, h) => (h ? 1 : -1)));
}

export interface RetrievalTask {
  prompt: number[];
  /** Teacher-forced decode tokens: the question blocks (and filler gaps), one filler at the end. */
  forced: number[];
  /** Fact positions in the prompt, by key. */
  factPosition: number[];
  factValue: number[];
  /** One entry per ask in `forced`: its index there, the key, the expected answer token, and the
   * index of its question block. */
  asks: { at: number; key: number; answer: number; block: number; blockStart: number }[];
}

export interface TaskOptions {
  promptTokens: number;
  /** Questions asked (distinct keys, at most `keys`); default all keys. */
  questions?: number;
  /** Times each question is repeated in a row; default 10. */
  repeats?: number;
  /** Most filler tokens between question blocks (uniform 0..gap); default 4. */
  gapTokens?: number;
  seed?: number;
}

/** A prompt with one fact per key scattered through filler, and the questions to force. */
export function makeRetrievalTask(lay: RetrievalLayout, opts: TaskOptions): RetrievalTask {
  const L = opts.promptTokens;
  const K = lay.keys;
  const tail = 64;
  const block = 5;
  if (!Number.isInteger(L) || L < K * block * 2 + tail + 16) {
    throw new HcError(
      "E_BAD_REQUEST",
      `a retrieval prompt needs at least ${K * block * 2 + tail + 16} tokens`,
    );
  }
  const rnd = uniform((opts.seed ?? 1) * 104729 + 3);
  const pick = (n: number) => Math.floor(rnd() * n);
  const filler = () => lay.fillerBase + pick(lay.fillerTypes);
  const prompt = Array.from({ length: L }, filler);
  // Facts go into K distinct slots of `block` tokens in [8, L - tail), in random order.
  const slots = Math.floor((L - tail - 8) / block);
  const chosen = new Set<number>();
  while (chosen.size < K) chosen.add(pick(slots));
  const order = [...chosen].sort((a, b) => a - b);
  const keysInOrder = shuffle(Array.from({ length: K }, (_, i) => i), rnd);
  const factPosition = Array<number>(K);
  const factValue = Array<number>(K);
  order.forEach((slot, n) => {
    const key = keysInOrder[n];
    const value = pick(K);
    const at = 8 + slot * block;
    prompt[at] =
      prompt[at + 1] =
      prompt[at + 3] =
      prompt[at + 4] =
        lay.sep;
    prompt[at + 2] = lay.factBase + key * K + value;
    factPosition[key] = at + 2;
    factValue[key] = value;
  });
  const questions = Math.min(opts.questions ?? K, K);
  const repeats = opts.repeats ?? 10;
  const gap = opts.gapTokens ?? 4;
  const forced: number[] = [];
  const asks: RetrievalTask["asks"] = [];
  shuffle(Array.from({ length: K }, (_, i) => i), rnd).slice(0, questions).forEach((key, b) => {
    for (let g = pick(gap + 1); g > 0; g--) forced.push(filler());
    const start = forced.length;
    for (let r = 0; r < repeats; r++) {
      asks.push({
        at: forced.length,
        key,
        answer: lay.valueBase + factValue[key],
        block: b,
        blockStart: start,
      });
      forced.push(lay.askBase + key);
    }
  });
  forced.push(filler()); // so the last ask's answer is predicted too
  return { prompt, forced, factPosition, factValue, asks };
}

function shuffle<T>(a: T[], rnd: () => number): T[] {
  for (let i = a.length - 1; i > 0; i--) {
    const j = Math.floor(rnd() * (i + 1));
    [a[i], a[j]] = [a[j], a[i]];
  }
  return a;
}

export interface RetrievalScore {
  /** Asks answered correctly / asks, over every ask. */
  accuracyAll: number;
  /** The same over asks consumed after the first drift-check boundary following their
   * question's start (check every `checkEvery` decode steps). */
  accuracyAfterCheck: number;
  scored: number;
  correct: number;
  /** Asks answered "unknown" (the fact was not on the device). */
  unknownAnswers: number;
  questions: number;
  /** Questions answered right at least once. */
  questionsAnswered: number;
  /** Over answered questions: asks of the question that came before its first right answer. */
  meanAsksBeforeAnswer: number | null;
}

/**
 * Scores argmax answers: `argmaxAt[i]` is the argmax of the logits that predict forced[i], so the
 * answer to the ask at forced index k is argmaxAt[k + 1]. The ask at index k is consumed by
 * decode step k + 1; a check after decode step d (d a multiple of `checkEvery`) can change what
 * steps d + 1 onward read, i.e. the answers to asks at index ≥ d.
 */
export function scoreRetrieval(
  task: RetrievalTask,
  argmaxAt: readonly number[],
  unknown: number,
  checkEvery = 5,
): RetrievalScore {
  let all = 0, allOk = 0, scored = 0, ok = 0, unk = 0;
  /** Per question block: asks seen so far, and how many came before the first right one. */
  const seen = new Map<number, number>();
  const firstRight = new Map<number, number>();
  for (const a of task.asks) {
    const got = argmaxAt[a.at + 1];
    const right = got === a.answer;
    const n = seen.get(a.block) ?? 0;
    seen.set(a.block, n + 1);
    if (right && !firstRight.has(a.block)) firstRight.set(a.block, n);
    all++;
    if (right) allOk++;
    if (got === unknown) unk++;
    const firstCheck = Math.ceil((a.blockStart + 1) / checkEvery) * checkEvery;
    if (a.at >= firstCheck) {
      scored++;
      if (right) ok++;
    }
  }
  return {
    accuracyAll: all ? allOk / all : 0,
    accuracyAfterCheck: scored ? ok / scored : 0,
    scored,
    correct: ok,
    unknownAnswers: unk,
    questions: seen.size,
    questionsAnswered: firstRight.size,
    meanAsksBeforeAnswer: firstRight.size
      ? [...firstRight.values()].reduce((x, y) => x + y, 0) / firstRight.size
      : null,
  };
}
