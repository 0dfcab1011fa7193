/**
 * The side-by-side runs of llama.cpp: one of bench/llamacpp's scripts (run.mjs, step.mjs,
 * prefill.mjs) under Node with node-llama-cpp's prebuilt build.
 */
import { dirname, fromFileUrl, join } from "./paths.ts";

const LLAMACPP = join(dirname(fromFileUrl(import.meta.url)), "llamacpp");

/** Runs `script` with `args`; its last stdout line is a JSON object, returned parsed, or a line
 * saying why it failed (the end of its stderr). */
export async function runLlamaCppScript(
  script: string,
  args: readonly string[],
): Promise<Record<string, unknown> | string> {
  const r = await new Deno.Command("node", {
    args: [join(LLAMACPP, script), ...args],
    // llama.cpp skips CPU Vulkan devices (lavapipe) unless they are named explicitly.
    env: {
      GGML_VK_VISIBLE_DEVICES: Deno.env.get("GGML_VK_VISIBLE_DEVICES") ??
        Deno.env.get("HC_VK_DEVICE") ?? "0",
    },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const out = new TextDecoder().decode(r.stdout).trim().split("\n").pop() ?? "";
  if (!r.success || !out.startsWith("{")) {
    const err = new TextDecoder().decode(r.stderr).trim().split("\n").slice(-3).join(" | ");
    return `llama.cpp failed: ${err.slice(0, 300)}`;
  }
  return JSON.parse(out);
}
