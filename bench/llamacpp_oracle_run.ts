/**
 * One llama.cpp oracle run (bench/llamacpp/oracle.mjs under Node, node-llama-cpp's prebuilt CPU
 * build) over synthetic models, shared by the fixture writers (bench/llamacpp_fixtures.ts,
 * bench/llamacpp_arch_fixtures.ts).
 */
import { runLlamaCppJob } from "./llamacpp_node.ts";
import {
  ORACLE_GREEDY,
  ORACLE_PROMPT,
  ORACLE_VOCAB,
  type OracleAnswer,
} from "../testing/llamacpp_oracle.ts";

/** llama.cpp's version and its answers (top tokens and probabilities per position, greedy
 * continuation) by model name, for `tokens` fed to every model in `models`. */
export async function runOracle(
  tmp: string,
  tokens: readonly number[],
  models: readonly { name: string; path: string }[],
): Promise<{ llamaCpp: string; answers: Record<string, OracleAnswer> }> {
  const job = { tokens, prompt: ORACLE_PROMPT, greedy: ORACLE_GREEDY, vocab: ORACLE_VOCAB, models };
  return await runLlamaCppJob("oracle.mjs", job, tmp) as {
    llamaCpp: string;
    answers: Record<string, OracleAnswer>;
  };
}
