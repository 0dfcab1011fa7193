/**
 * `deno task bench:decode`: prefill and greedy decode tokens/s of our engine next to llama.cpp
 * (node-llama-cpp's prebuilt Vulkan build, run under Node) on the same Vulkan device, for
 * stories260K and a synthetic ~100M-parameter Llama in F16 and Q8_0. Both sides get the same
 * token ids, a warm-up run, and the full KV cache. Prints a table and writes
 * bench/results/decode.json.
 */
import { parseArgs } from "node:util";
import { dirname, fromFileUrl, join } from "./paths.ts";
import { loadModel } from "../mod.ts";
import { GgmlType } from "../src/gguf/types.ts";
import { writeSyntheticModel } from "../src/model/synthetic.ts";

const HERE = dirname(fromFileUrl(import.meta.url));
const LLAMACPP = join(HERE, "llamacpp");

interface Row {
  model: string;
  engine: "heterocache-vk" | "llama.cpp";
  prefillTokensPerSecond: number;
  decodeTokensPerSecond: number;
}

function promptIds(n: number): number[] {
  // The same ids bench/llamacpp/run.mjs feeds llama.cpp.
  return Array.from({ length: n }, (_, i) => 3 + ((i * 7919) % 250));
}

async function ours(
  path: string,
  promptTokens: number,
  decodeTokens: number,
): Promise<Omit<Row, "model" | "engine">> {
  await using model = await loadModel(path);
  using s = model.session({ contextTokens: promptTokens + decodeTokens + 16 });
  const prompt = promptIds(promptTokens);
  const run = () =>
    s.complete(prompt, { temperature: 0, maxTokens: decodeTokens, ignoreEos: true });
  await run(); // warm-up: the first use of each pipeline compiles it
  const r = await run();
  return {
    prefillTokensPerSecond: (promptTokens * 1000) / r.prefillMs,
    decodeTokensPerSecond: r.decodeTokensPerSecond,
  };
}

async function ensureLlamaCpp(): Promise<void> {
  try {
    await Deno.stat(join(LLAMACPP, "node_modules", "node-llama-cpp"));
    return;
  } catch { /* install below */ }
  console.error("bench: installing node-llama-cpp (benchmark-only dependency) with npm");
  const r = await new Deno.Command("npm", {
    args: ["install", "--no-audit", "--no-fund"],
    cwd: LLAMACPP,
    stdout: "inherit",
    stderr: "inherit",
  }).output();
  if (!r.success) throw new Error("npm install of node-llama-cpp failed");
}

async function llamaCpp(
  path: string,
  promptTokens: number,
  decodeTokens: number,
): Promise<Omit<Row, "model" | "engine"> | string> {
  // llama.cpp skips CPU Vulkan devices (lavapipe) unless they are named explicitly.
  const env = {
    GGML_VK_VISIBLE_DEVICES: Deno.env.get("GGML_VK_VISIBLE_DEVICES") ??
      Deno.env.get("HC_VK_DEVICE") ?? "0",
  };
  const r = await new Deno.Command("node", {
    args: [join(LLAMACPP, "run.mjs"), path, String(promptTokens), String(decodeTokens)],
    env,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const out = new TextDecoder().decode(r.stdout).trim().split("\n").pop() ?? "";
  if (!r.success || !out.startsWith("{")) {
    return `llama.cpp failed: ${
      new TextDecoder().decode(r.stderr).trim().split("\n").slice(-3).join(" | ")
    }`;
  }
  const j = JSON.parse(out);
  return {
    prefillTokensPerSecond: j.prefillTokensPerSecond,
    decodeTokensPerSecond: j.decodeTokensPerSecond,
  };
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      prompt: { type: "string", default: "128" },
      decode: { type: "string", default: "64" },
      quick: { type: "boolean" },
    },
  });
  const promptTokens = Number(values.prompt);
  const decodeTokens = Number(values.decode);
  await ensureLlamaCpp();
  const tmp = await Deno.makeTempDir();
  const models: [string, string][] = [[
    "stories260K (F32)",
    new URL("../../shared/models/stories260K.gguf", import.meta.url).pathname,
  ]];
  // ~100M parameters: 12 layers of 768 (Llama shape, 12 heads x 64, 4 KV heads), 16K vocab.
  const spec = {
    dim: 768,
    nLayers: 12,
    nHeads: 12,
    nKvHeads: 4,
    ffnDim: 2048,
    vocabSize: 16000,
    contextLength: 2048,
    seed: 1,
  };
  if (!values.quick) {
    for (const [name, type] of [["F16", GgmlType.F16], ["Q8_0", GgmlType.Q8_0]] as const) {
      const path = join(tmp, `synthetic-100m-${name}.gguf`);
      await writeSyntheticModel(path, { ...spec, weightType: type });
      models.push([`synthetic 100M (${name})`, path]);
    }
  }
  const rows: (Row | { model: string; engine: string; error: string })[] = [];
  try {
    for (const [name, path] of models) {
      rows.push({
        model: name,
        engine: "heterocache-vk",
        ...(await ours(path, promptTokens, decodeTokens)),
      });
      const l = await llamaCpp(path, promptTokens, decodeTokens);
      rows.push(
        typeof l === "string"
          ? { model: name, engine: "llama.cpp", error: l }
          : { model: name, engine: "llama.cpp", ...l },
      );
    }
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
  const { listDevices } = await import("../src/vk/mod.ts");
  const device = listDevices()[0]?.name ?? "unknown";
  console.log(
    `\ndecode benchmark on ${device}: prompt ${promptTokens} tokens, ${decodeTokens} greedy tokens, full KV cache\n`,
  );
  console.log("| model | engine | prefill tok/s | decode tok/s | decode vs llama.cpp |");
  console.log("|---|---|---:|---:|---:|");
  for (const r of rows) {
    if ("error" in r) {
      console.log(`| ${r.model} | ${r.engine} | - | - | ${r.error} |`);
      continue;
    }
    const other = rows.find((o) =>
      o.model === r.model && o.engine === "llama.cpp" && !("error" in o)
    ) as Row | undefined;
    const ratio = r.engine === "heterocache-vk" && other
      ? `${(r.decodeTokensPerSecond / other.decodeTokensPerSecond).toFixed(2)}x`
      : "";
    console.log(
      `| ${r.model} | ${r.engine} | ${r.prefillTokensPerSecond.toFixed(1)} | ${
        r.decodeTokensPerSecond.toFixed(1)
      } | ${ratio} |`,
    );
  }
  await Deno.mkdir(join(HERE, "results"), { recursive: true });
  await Deno.writeTextFile(
    join(HERE, "results", "decode.json"),
    JSON.stringify(
      { date: new Date().toISOString(), device, promptTokens, decodeTokens, rows },
      null,
      2,
    ),
  );
}
