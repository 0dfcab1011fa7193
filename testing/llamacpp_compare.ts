/**
 * The engine against one stored llama.cpp answer (testing/llamacpp_oracle.ts's OracleAnswer):
 * teacher-forced top-1 and its probability at the positions where llama.cpp's top-2 margin is
 * clear, and the greedy continuation. Returns what it measured; the tests decide what passes.
 */
import type { LoadedModel, SessionOptions } from "../src/engine/model.ts";
import { ORACLE_GREEDY, ORACLE_PROMPT, type OracleAnswer } from "./llamacpp_oracle.ts";

/** llama.cpp's top-1 minus top-2 probability from which a position counts as clear. */
export const CLEAR_MARGIN = 0.1;

export interface OracleComparison {
  clear: number;
  agree: number;
  meanP: number;
  worstP: number;
  /** Leading greedy tokens equal to llama.cpp's. */
  greedySame: number;
  /** llama.cpp's top-1 minus top-2 probability at the greedy step where the continuations part
   * (null when they do not). */
  partMargin: number | null;
  ours: number[];
  summary: string;
}

function softmaxTop(logits: Float32Array): { token: number; p: number } {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
  let z = 0;
  for (const v of logits) z += Math.exp(v - logits[best]);
  return { token: best, p: 1 / z };
}

export async function compareWithOracle(
  model: LoadedModel,
  tokens: readonly number[],
  answer: OracleAnswer,
  session: SessionOptions = {},
): Promise<OracleComparison> {
  using s = model.session({ contextTokens: 256, ...session } as SessionOptions);
  const ours: { token: number; p: number }[] = [];
  await s.teacherForce(tokens.slice(0, 1), [...tokens.slice(1), 0], (_, l) => {
    ours.push(softmaxTop(l));
  });
  let clear = 0, agree = 0, worstP = 0, sumP = 0;
  answer.top.forEach(([t1, p1, , p2], i) => {
    if (p1 - p2 < CLEAR_MARGIN) return;
    clear++;
    if (ours[i].token === t1) agree++;
    worstP = Math.max(worstP, Math.abs(ours[i].p - p1));
    sumP += Math.abs(ours[i].p - p1);
  });
  const greedy: number[] = [];
  for await (
    const piece of s.generate(tokens.slice(0, ORACLE_PROMPT), {
      maxTokens: ORACLE_GREEDY,
      temperature: 0,
      ignoreEos: true,
    })
  ) greedy.push(piece.token);
  let greedySame = 0;
  while (greedySame < greedy.length && greedy[greedySame] === answer.greedy[greedySame]) {
    greedySame++;
  }
  const partMargin = greedySame < ORACLE_GREEDY ? answer.greedyMargin[greedySame] : null;
  const meanP = clear ? sumP / clear : 0;
  return {
    clear,
    agree,
    meanP,
    worstP,
    greedySame,
    partMargin,
    ours: greedy,
    summary: `top-1 agrees at ${agree}/${clear} clear positions, top-1 probability gap mean ` +
      `${meanP.toFixed(4)}, worst ${worstP.toFixed(4)}; greedy equal for ${greedySame}/` +
      `${ORACLE_GREEDY}${
        partMargin === null ? "" : ` (parting where llama.cpp's top-2 margin is ${partMargin})`
      }`,
  };
}
