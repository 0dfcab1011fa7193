/**
 * One llama.cpp oracle run (bench/llamacpp/oracle.mjs under Node, node-llama-cpp's prebuilt CPU
 * build) over synthetic models, shared by the fixture writers (bench/llamacpp_fixtures.ts,
 * bench/llamacpp_arch_fixtures.ts).
 */
import { dirname, fromFileUrl, join } from "./paths.ts";
import {
  ORACLE_GREEDY,
  ORACLE_PROMPT,
  ORACLE_VOCAB,
  type OracleAnswer,
} from "../testing/llamacpp_oracle.ts";

const HERE = dirname(fromFileUrl(import.meta.url));

/** llama.cpp's version and its answers (top tokens and probabilities per position, greedy
 * continuation) by model name, for `tokens` fed to every model in `models`. */
export async function runOracle(
  tmp: string,
  tokens: readonly number[],
  models: readonly { name: string; path: string }[],
): Promise<{ llamaCpp: string; answers: Record<string, OracleAnswer> }> {
  const jobPath = join(tmp, "job.json");
  await Deno.writeTextFile(
    jobPath,
    JSON.stringify({
      tokens,
      prompt: ORACLE_PROMPT,
      greedy: ORACLE_GREEDY,
      vocab: ORACLE_VOCAB,
      models,
    }),
  );
  const out = await new Deno.Command("node", {
    args: ["oracle.mjs", jobPath],
    cwd: join(HERE, "llamacpp"),
    stdout: "piped",
    stderr: "inherit",
  }).output();
  if (!out.success) throw new Error("llama.cpp oracle failed (see above)");
  return JSON.parse(new TextDecoder().decode(out.stdout));
}
