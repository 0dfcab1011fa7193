/**
 * The side-by-side runs of llama.cpp: one of bench/llamacpp's scripts (run.mjs, step.mjs,
 * prefill.mjs) with node-llama-cpp's prebuilt build, under Node where it is installed, else
 * under this Deno (its Node-API support loads the same addon from bench/llamacpp/node_modules:
 * the GPU box has no Node, see bench/gpu/prepare.sh).
 */
import { dirname, fromFileUrl, join } from "./paths.ts";

const LLAMACPP = join(dirname(fromFileUrl(import.meta.url)), "llamacpp");

let runtime: Promise<string[]> | null = null;

/** The command line that runs a bench/llamacpp script: `node`, or Deno where Node is absent. */
function llamaCppRuntime(): Promise<string[]> {
  return runtime ??= (async () => {
    try {
      const r = await new Deno.Command("node", {
        args: ["--version"],
        stdout: "null",
        stderr: "null",
      })
        .output();
      if (r.success) return ["node"];
    } catch { /* no Node: Deno below */ }
    return [
      Deno.execPath(),
      "run",
      "-A",
      "--no-config",
      "--node-modules-dir=manual",
      "--cached-only",
    ];
  })();
}

/** Deno.Command for `script args...` under llamaCppRuntime(). */
async function llamaCppCommand(
  args: string[],
  options: Deno.CommandOptions,
): Promise<Deno.Command> {
  const [cmd, ...pre] = await llamaCppRuntime();
  return new Deno.Command(cmd, { ...options, args: [...pre, ...args] });
}

/** Runs `script` with `args` (and `threads` CPU threads; 0: node-llama-cpp's default); its last
 * stdout line is a JSON object, returned parsed, or a line saying why it failed (the end of its
 * stderr). */
export async function runLlamaCppScript(
  script: string,
  args: readonly string[],
  threads = 0,
): Promise<Record<string, unknown> | string> {
  const r = await (await llamaCppCommand([join(LLAMACPP, script), ...args], {
    cwd: LLAMACPP,
    // llama.cpp skips CPU Vulkan devices (lavapipe) unless they are named explicitly.
    env: {
      GGML_VK_VISIBLE_DEVICES: Deno.env.get("GGML_VK_VISIBLE_DEVICES") ??
        Deno.env.get("HC_VK_DEVICE") ?? "0",
      HC_LLAMACPP_THREADS: String(threads),
    },
    stdout: "piped",
    stderr: "piped",
  })).output();
  const out = new TextDecoder().decode(r.stdout).trim().split("\n").pop() ?? "";
  if (!r.success || !out.startsWith("{")) {
    const err = new TextDecoder().decode(r.stderr).trim().split("\n").slice(-3).join(" | ");
    return `llama.cpp failed: ${err.slice(0, 300)}`;
  }
  return JSON.parse(out);
}

/** Runs a bench/llamacpp script that reads a JSON job file (written into `dir`) and prints one
 * JSON object, which is returned; its stderr goes to ours. */
export async function runLlamaCppJob(script: string, job: unknown, dir: string): Promise<unknown> {
  const jobPath = join(dir, "job.json");
  await Deno.writeTextFile(jobPath, JSON.stringify(job));
  const out = await (await llamaCppCommand([script, jobPath], {
    cwd: LLAMACPP,
    stdout: "piped",
    stderr: "inherit",
  })).output();
  if (!out.success) throw new Error(`llama.cpp (${script}) failed (see above)`);
  return JSON.parse(new TextDecoder().decode(out.stdout));
}

/**
 * The thread count llama.cpp's CPU backend runs fastest with on this machine, of 1 .. cores,
 * by `measure` (ms, lower is better; a string: that count failed). Its default (all cores) is not
 * always it: on the 2-core machine here a decode step of stories260K took 1.5 ms with one thread
 * and over 300 ms with two (its worker threads wait on each other at every operation when the
 * cores are shared), so a comparison at the default would flatter us.
 */
export async function fastestThreads(
  measure: (threads: number) => Promise<number | string>,
): Promise<{ threads: number; ms: number; tried: string }> {
  let best = { threads: 0, ms: Infinity };
  const tried: string[] = [];
  for (let t = 1; t <= Math.max(1, navigator.hardwareConcurrency); t++) {
    const ms = await measure(t);
    tried.push(typeof ms === "string" ? `${t}: failed` : `${t}: ${ms.toFixed(1)} ms`);
    if (typeof ms === "number" && ms < best.ms) best = { threads: t, ms };
  }
  return { ...best, tried: tried.join(", ") };
}
