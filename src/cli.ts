/** `hc`: the command-line face of the engine (node:util parseArgs; JSR's @std/cli is unreachable). */
import { parseArgs } from "node:util";
import { resolveModelPath } from "./download.ts";
import { terminalProgress } from "./progress.ts";
import {
  cacheOptions,
  isPolicyName,
  type LoadedModel,
  loadModel,
  readProfile,
  serializeProfile,
} from "./engine/model.ts";
import { calibrate } from "./engine/calibrate.ts";
import type { GenerationSummary } from "./engine/session.ts";
import { HcError, isHcError } from "./errors.ts";
import type { ChatMessage } from "./model/chat.ts";
import { CACHE_POLICIES, serve } from "./server/mod.ts";
import { NEEDS_PROFILE } from "./server/openai.ts";
import { effectiveKeep } from "./cache/budget.ts";
import { fullHeadCount, type HeadProfile } from "./cache/profile/profile.ts";
import { listDevices, variantChoice } from "./vk/mod.ts";

interface Command {
  summary: string;
  usage: string;
  run(args: string[]): Promise<void>;
}

/** A usage mistake: main() reports it like parseArgs' own errors (exit status 2). */
function usageError(message: string): Error {
  return Object.assign(new Error(message), { code: "ERR_PARSE_ARGS_INVALID_OPTION_VALUE" });
}

function numberOpt(
  name: string,
  v: string | undefined,
  min: number,
  max: number,
  integer: boolean,
): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (
    v.trim() === "" || !Number.isFinite(n) || (integer && !Number.isSafeInteger(n)) || n < min ||
    n > max
  ) {
    throw usageError(
      `--${name} must be ${
        integer ? "an integer" : "a number"
      } between ${min} and ${max}, got "${v}"`,
    );
  }
  return n;
}

/** `--keep`: a fraction in (0, 1], or a whole per-head token budget above 1. */
function keepOpt(v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (v.trim() === "" || !Number.isFinite(n) || n <= 0) {
    throw usageError(
      `--keep must be > 0: a fraction of the prompt KV in (0, 1], or a per-head token budget above 1; got "${v}"`,
    );
  }
  if (n > 1 && !Number.isSafeInteger(n)) {
    throw usageError(
      `--keep above 1 is a per-head token budget and must be an integer; got "${v}"`,
    );
  }
  return n;
}

const MODEL_OPTIONS = {
  model: { type: "string", short: "m" },
  hf: { type: "string" },
  tokenizer: { type: "string" },
  device: { type: "string" },
  variants: { type: "string" },
  help: { type: "boolean", short: "h" },
} as const;

const MODEL_USAGE = `model (first that is given):
  -m, --model PATH        a GGUF file (or a llama2.c .bin with --tokenizer)
      --hf OWNER/REPO:FILE  a GGUF from Hugging Face, downloaded once into the cache folder;
      --hf OWNER/REPO:QUANT picks the repo's GGUF by quant in its name (e.g. :Q4_K_M, :q8_0)
      --hf OWNER/REPO       picks as llama.cpp's -hf does: Q4_K_M, else Q8_0, else the first GGUF
  HC_MODEL=PATH           environment variable
  (default)               stories260K.gguf from ggml-org/models, downloaded once and checked
      --tokenizer PATH    a separate tokenizer (llama2.c tokenizer.bin, or a GGUF)
      --device SEL        Vulkan device index or name substring (default: HC_VK_DEVICE, else the best)
      --variants SET      kernel variants: auto, gpu or cpu (default: HC_VK_VARIANTS, else auto:
                          cpu on CPU devices such as lavapipe, gpu elsewhere)`;

/** Resolves and loads the model, with progress bars for the download and the upload on a terminal. */
async function openModel(
  values: {
    model?: string;
    hf?: string;
    tokenizer?: string;
    device?: string;
    variants?: string;
  },
): Promise<{
  path: string;
  load: (onUpload?: (done: number, total: number) => void) => Promise<LoadedModel>;
}> {
  const variants = values.variants === undefined
    ? undefined
    : variantChoice(values.variants, "--variants");
  const dl = terminalProgress("downloading model");
  let path: string;
  try {
    path = await resolveModelPath({
      model: values.model,
      hf: values.hf,
      onProgress: dl.update,
      onPick: (file, why) => console.log(`hc: --hf ${values.hf} chose ${file} (${why})`),
    });
  } finally {
    dl.done();
  }
  return {
    path,
    load: async (onUpload) => {
      const bar = terminalProgress("uploading weights");
      try {
        return await loadModel(path, {
          device: values.device,
          variants,
          tokenizerPath: values.tokenizer,
          onProgress: (done, total) => {
            bar.update(done, total);
            onUpload?.(done, total);
          },
        });
      } catch (e) {
        // Without --tokenizer, a tokenizer failure of a file that is not GGUF can only mean a
        // llama2.c checkpoint, which carries none: name the flag, not the library option.
        if (
          isHcError(e, "E_TOKENIZER") && values.tokenizer === undefined && !(await isGguf(path))
        ) {
          throw new HcError(
            "E_TOKENIZER",
            `${path} is a llama2.c checkpoint, which carries no tokenizer; pass --tokenizer PATH (its tokenizer.bin, or a GGUF with the same vocabulary)`,
            { cause: e },
          );
        }
        throw e;
      } finally {
        bar.done();
      }
    },
  };
}

/** What a default keep below the profile's floor becomes (README, "Cache policies"). */
function keepFloorNote(
  profile: HeadProfile | null,
  cache: string | undefined,
  keep: number | null,
): string | null {
  if (!profile || keep === null || keep > 1 || !NEEDS_PROFILE.has(cache ?? "full")) return null;
  const heads = profile.model.nLayers * profile.model.nKvHeads;
  const full = fullHeadCount(profile);
  const ran = effectiveKeep(keep, heads, full);
  if (ran === keep) return null;
  return `keep ${keep} is below what this profile allows (${full} of ${heads} heads are kept ` +
    `in full); ${cache} requests without their own keep run at keep ${ran.toFixed(4)}`;
}

async function isGguf(path: string): Promise<boolean> {
  try {
    using f = await Deno.open(path);
    const magic = new Uint8Array(4);
    return (await f.read(magic)) === 4 && new TextDecoder().decode(magic) === "GGUF";
  } catch {
    return false;
  }
}

/** Resolves on SIGINT or SIGTERM (SIGINT only on Windows). */
function untilSignal(): { promise: Promise<string>; dispose: () => void } {
  const { promise, resolve } = Promise.withResolvers<string>();
  const signals: Deno.Signal[] = Deno.build.os === "windows" ? ["SIGINT"] : ["SIGINT", "SIGTERM"];
  const handlers = signals.map((sig) => [sig, () => resolve(sig)] as const);
  for (const [sig, h] of handlers) Deno.addSignalListener(sig, h);
  return {
    promise,
    dispose: () => handlers.forEach(([sig, h]) => Deno.removeSignalListener(sig, h)),
  };
}

const COMMANDS: Record<string, Command> = {
  serve: {
    summary: "serve a model over the OpenAI HTTP API, with a playground at /",
    usage: `hc serve [options]

${MODEL_USAGE}

server:
      --host HOST         address to listen on (default 127.0.0.1)
      --port N            port (default 8000; 0 picks a free one)
      --model-id NAME     the name clients use in "model" (default: the file name)
      --context N         most tokens (prompt + completion) per request (default: the model's, at most 8192)
      --max-active N      requests generating at once (default 4)
      --max-queue N       requests waiting for a slot before 429 (default 64)
      --max-body-bytes N  largest request body (default 2097152)
      --prompt-cache N    finished conversations kept for prompt reuse (default 4; 0: none)
      --prompt-cache-bytes N  device KV bytes those may hold together (default 1073741824)
      --cache POLICY      default cache policy: ${CACHE_POLICIES.join(", ")} (default full)
      --keep X            default budget: a fraction in (0, 1] or a per-head token count
      --profile PATH      head profile for heterocache / per-step / fixed-interval (ours, from
                          \`hc calibrate\`, or the official HeteroCache JSON)`,
    async run(args) {
      const { values } = parseArgs({
        args,
        options: {
          ...MODEL_OPTIONS,
          host: { type: "string", default: "127.0.0.1" },
          port: { type: "string", default: "8000" },
          "model-id": { type: "string" },
          context: { type: "string" },
          "max-active": { type: "string" },
          "max-queue": { type: "string" },
          "max-body-bytes": { type: "string" },
          "prompt-cache": { type: "string" },
          "prompt-cache-bytes": { type: "string" },
          cache: { type: "string" },
          keep: { type: "string" },
          profile: { type: "string" },
        },
      });
      if (values.help) return help("serve");
      if (values.cache !== undefined && !isPolicyName(values.cache)) {
        throw usageError(
          `--cache must be one of ${CACHE_POLICIES.join(", ")}, got "${values.cache}"`,
        );
      }
      const port = numberOpt("port", values.port, 0, 65535, true)!;
      const opts = {
        modelId: values["model-id"],
        contextTokens: numberOpt("context", values.context, 2, 1 << 24, true),
        maxActive: numberOpt("max-active", values["max-active"], 1, 1024, true),
        maxQueue: numberOpt("max-queue", values["max-queue"], 0, 1 << 20, true),
        maxBodyBytes: numberOpt("max-body-bytes", values["max-body-bytes"], 1024, 1 << 30, true),
        promptCacheSessions: numberOpt("prompt-cache", values["prompt-cache"], 0, 1024, true),
        promptCacheBytes: numberOpt(
          "prompt-cache-bytes",
          values["prompt-cache-bytes"],
          0,
          Number.MAX_SAFE_INTEGER,
          true,
        ),
        cache: values.cache,
        keep: keepOpt(values.keep) ?? null,
        profile: values.profile,
      };
      // The socket and the settings are checked before the model is fetched and loaded, so a
      // port in use or an impossible setting fails at once.
      const model = Promise.withResolvers<LoadedModel>();
      const running = await serve(model.promise, {
        ...opts,
        hostname: values.host,
        port,
        ownsModel: true,
      });
      const stop = untilSignal();
      const loading = (async () => {
        const { path, load } = await openModel(values);
        console.log(`hc serve: loading ${path}`);
        return await load((done, total) => running.server.setLoadProgress(done, total));
      })();
      loading.then(model.resolve, model.reject);
      console.log(`hc serve: listening on ${running.url} (playground at ${running.url}/)`);
      try {
        const served = await Promise.race([
          running.server.whenReady(),
          stop.promise.then(() => null),
        ]);
        if (served) {
          console.log(`hc serve: model "${served.id}" ready on ${served.model.info().device}`);
          const floor = keepFloorNote(served.profile, opts.cache, opts.keep);
          if (floor) console.log(`hc serve: ${floor}`);
        }
        const sig = await stop.promise;
        console.log(`hc serve: ${sig}, shutting down`);
      } finally {
        stop.dispose();
        await running.shutdown();
        // A model that failed to load has no server to tell it to; the error ends the command.
        await loading;
      }
    },
  },
  generate: {
    summary: "generate text from a prompt, streamed to stdout",
    usage: `hc generate [options] [PROMPT...]

The prompt is the positional words (or --prompt TEXT; "--prompt -" reads stdin; none: BOS only).
Only the generated text goes to stdout; progress and --stats go to stderr.

${MODEL_USAGE}

generation:
      --prompt TEXT       the prompt
      --chat              send the prompt as a user message through the model's chat template
      --system TEXT       a system message (with --chat)
  -n, --max-tokens N      most tokens to generate (default 256)
  -t, --temperature X     0 = greedy, the default (deterministic); e.g. 0.8 to sample
      --top-p X           nucleus sampling (default 1 = off)
      --top-k N           keep the k most likely tokens (default 0 = off)
      --min-p X           drop tokens below X times the most likely (default 0 = off)
      --seed N            seed of the sampler (default: random)
      --stop TEXT         stop before this text (repeatable)
      --context N         session size in tokens (default: prompt + max tokens)
      --stats             print the generation summary and session stats (JSON) to stderr
      --save PATH         write the session (context, caches) to PATH after generating
      --load PATH         continue a session saved with --save: the prompt is the next turn
                          (plain text, no BOS; its cache options are the saved ones)

KV cache:
      --cache POLICY      ${CACHE_POLICIES.join(", ")} (default full)
      --keep X            fraction of the prompt KV kept on the device (default 0.5), or a
                          per-head token budget when above 1
      --profile PATH      head profile (heterocache, per-step, fixed-interval)
      --compat            heterocache: the official code's behaviour, quirks included`,
    async run(args) {
      const { values, positionals } = parseArgs({
        args,
        allowPositionals: true,
        options: {
          ...MODEL_OPTIONS,
          prompt: { type: "string" },
          chat: { type: "boolean" },
          system: { type: "string" },
          "max-tokens": { type: "string", short: "n" },
          temperature: { type: "string", short: "t" },
          "top-p": { type: "string" },
          "top-k": { type: "string" },
          "min-p": { type: "string" },
          seed: { type: "string" },
          stop: { type: "string", multiple: true },
          context: { type: "string" },
          stats: { type: "boolean" },
          save: { type: "string" },
          load: { type: "string" },
          cache: { type: "string" },
          keep: { type: "string" },
          profile: { type: "string" },
          compat: { type: "boolean" },
        },
      });
      if (values.help) return help("generate");
      if (values.cache !== undefined && !isPolicyName(values.cache)) {
        throw usageError(
          `--cache must be one of ${CACHE_POLICIES.join(", ")}, got "${values.cache}"`,
        );
      }
      const keep = keepOpt(values.keep);
      if (values.prompt !== undefined && positionals.length > 0) {
        throw usageError("give the prompt either as words or with --prompt, not both");
      }
      if (values.system !== undefined && !values.chat) throw usageError("--system needs --chat");
      if (values.load !== undefined && values.chat) {
        throw usageError("--load continues with plain text; render the chat turn yourself");
      }
      let text = values.prompt ?? positionals.join(" ");
      if (text === "-") text = await new Response(Deno.stdin.readable).text();
      const maxTokens = numberOpt("max-tokens", values["max-tokens"], 0, 1 << 24, true) ?? 256;
      const sampling = {
        temperature: numberOpt("temperature", values.temperature, 0, 100, false) ?? 0,
        topP: numberOpt("top-p", values["top-p"], Number.MIN_VALUE, 1, false),
        topK: numberOpt("top-k", values["top-k"], 0, Number.MAX_SAFE_INTEGER, true),
        minP: numberOpt("min-p", values["min-p"], 0, 1, false),
        seed: numberOpt(
          "seed",
          values.seed,
          Number.MIN_SAFE_INTEGER,
          Number.MAX_SAFE_INTEGER,
          true,
        ),
      };
      const context = numberOpt("context", values.context, 1, 1 << 24, true);
      const prompt: string | ChatMessage[] = values.chat
        ? [
          ...(values.system !== undefined
            ? [{ role: "system" as const, content: values.system }]
            : []),
          {
            role: "user" as const,
            content: text,
          },
        ]
        : text;
      const { load } = await openModel(values);
      await using model = await load();
      // Size the session to what this run needs, within the model's context.
      const loaded = values.load !== undefined;
      const promptTokens = loaded
        ? model.tokenizer.encode(text, { addSpecial: false }).length
        : model.tokenize(prompt).length;
      const limit = model.config.contextLength;
      const contextTokens = context ?? Math.min(limit, promptTokens + Math.max(1, maxTokens));
      if (!loaded && promptTokens >= contextTokens) {
        throw new HcError(
          "E_CONTEXT_FULL",
          `the prompt has ${promptTokens} tokens; the session holds ${contextTokens} (the model's context is ${limit})`,
        );
      }
      const profile = values.profile
        ? await readProfile(values.profile, model.identity())
        : undefined;
      const restored = async () => {
        const s = await model.restore(values.load!, { profile });
        try {
          s.reserve(Math.min(limit, s.context().length + (context ?? contextTokens)));
        } catch (e) {
          s[Symbol.dispose]();
          throw e;
        }
        return s;
      };
      using session = loaded ? await restored() : model.session({
        contextTokens,
        ...cacheOptions({ cache: values.cache, keep, profile, compat: values.compat }),
      });
      const abort = new AbortController();
      const stop = untilSignal();
      void stop.promise.then(() => abort.abort());
      const prefill = promptTokens > 256 ? terminalProgress("prefill", { unit: "count" }) : null;
      const enc = new TextEncoder();
      let stdoutOpen = true;
      // A reader that goes away (`hc generate ... | head`) ends the generation, quietly.
      const emit = async (text: string) => {
        if (!stdoutOpen) return;
        try {
          await writeAll(Deno.stdout, enc.encode(text));
        } catch (e) {
          if (!(e instanceof Deno.errors.BrokenPipe)) throw e;
          stdoutOpen = false;
          abort.abort();
        }
      };
      let summary: GenerationSummary;
      try {
        const it = session.generate(prompt, {
          ...sampling,
          maxTokens,
          stop: values.stop,
          signal: abort.signal,
          continue: loaded,
          // A layer-by-layer prompt goes through every layer: one bar over all the passes.
          onPrefillProgress: prefill
            ? (done, total, pass) =>
              pass
                ? prefill.update(pass.layer * total + done, pass.layers * total)
                : prefill.update(done, total)
            : undefined,
        });
        for (;;) {
          const r = await it.next();
          if (r.done) {
            summary = r.value;
            break;
          }
          prefill?.done();
          if (r.value.text) await emit(r.value.text);
        }
        await emit("\n");
      } finally {
        prefill?.done();
        stop.dispose();
      }
      if (values.save !== undefined) await session.save(values.save);
      if (values.stats) {
        console.error(
          JSON.stringify({ summary, stats: session.stats(), cache: session.cacheStats() }, null, 2),
        );
      }
    },
  },
  calibrate: {
    summary: "profile a model's attention heads for HeteroCache and write the head profile",
    usage: `hc calibrate [options] --out PROFILE.json

Runs the model with the full cache over calibration text, records each KV head's top-k attention
sets at the last prompt token and at every greedy decode step, and derives head roles (anchor,
volatile, pivot, satellite), clusters and budget multipliers (docs/algorithm.md §1, §10.5).

${MODEL_USAGE}

calibration:
  -o, --out PATH          where to write the profile (JSON)
      --text PATH         calibration text file (default: a bundled English passage)
      --prompt-tokens N   prompt tokens used (default: up to 5000, within the context)
      --steps N           greedy decode steps observed (default 100, fewer for short contexts)
      --topk N            top-k set size (default min(1024, prompt/4))
      --stable-threshold X  anchor vs volatile (default 0.5)
      --sim-threshold X     similarity edge threshold (default 0.5)`,
    async run(args) {
      const { values } = parseArgs({
        args,
        options: {
          ...MODEL_OPTIONS,
          out: { type: "string", short: "o" },
          text: { type: "string" },
          "prompt-tokens": { type: "string" },
          steps: { type: "string" },
          topk: { type: "string" },
          "stable-threshold": { type: "string" },
          "sim-threshold": { type: "string" },
        },
      });
      if (values.help) return help("calibrate");
      if (!values.out) throw usageError("--out PATH is required");
      const text = values.text !== undefined ? await Deno.readTextFile(values.text) : undefined;
      const { load } = await openModel(values);
      await using model = await load();
      const bar = terminalProgress("calibrating", { unit: "count" });
      const t0 = performance.now();
      let profile;
      try {
        profile = await calibrate(model, {
          text,
          promptTokens: numberOpt("prompt-tokens", values["prompt-tokens"], 16, 1 << 24, true),
          decodeSteps: numberOpt("steps", values.steps, 1, 100_000, true),
          topk: numberOpt("topk", values.topk, 1, 1 << 24, true),
          stableThreshold: numberOpt(
            "stable-threshold",
            values["stable-threshold"],
            Number.MIN_VALUE,
            1,
            false,
          ),
          simThreshold: numberOpt(
            "sim-threshold",
            values["sim-threshold"],
            Number.MIN_VALUE,
            1,
            false,
          ),
          onProgress: (done, total) => bar.update(done, total),
        });
      } finally {
        bar.done();
      }
      await Deno.writeTextFile(values.out, serializeProfile(profile));
      const counts = { anchor: 0, volatile: 0, pivot: 0, satellite: 0 };
      for (const l of profile.layers) for (const r of l.roles) counts[r]++;
      console.error(
        `hc calibrate: wrote ${values.out} in ${((performance.now() - t0) / 1000).toFixed(1)} s: ` +
          `${counts.anchor} anchor, ${counts.volatile} volatile, ${counts.pivot} pivot, ${counts.satellite} satellite heads`,
      );
    },
  },
  devices: {
    summary: "list Vulkan devices and their limits",
    usage: "hc devices [--json]",
    run(args) {
      const { values } = parseArgs({
        args,
        options: { json: { type: "boolean" }, help: { type: "boolean", short: "h" } },
      });
      if (values.help) return help("devices");
      const devices = listDevices();
      if (values.json) {
        console.log(JSON.stringify(devices, null, 2));
        return Promise.resolve();
      }
      for (const d of devices) {
        console.log(`[${d.index}] ${d.name} (${d.type}, Vulkan ${d.apiVersion})`);
        console.log(
          `    subgroup ${d.subgroupSize}${d.subgroupArithmetic ? " (arithmetic)" : ""}, ` +
            `shared memory ${d.maxComputeSharedMemoryBytes} B, push constants ${d.maxPushConstantsBytes} B`,
        );
        console.log(
          `    max storage binding ${mib(d.maxStorageBufferRange)}, max allocation ${
            mib(d.maxAllocationBytes)
          }, ` +
            `f16 ${d.float16 ? "yes" : "no"}, int8 ${d.int8 ? "yes" : "no"}`,
        );
      }
      return Promise.resolve();
    },
  },
};

async function writeAll(
  w: { write(p: Uint8Array): Promise<number> },
  bytes: Uint8Array,
): Promise<void> {
  for (let off = 0; off < bytes.byteLength;) off += await w.write(bytes.subarray(off));
}

function mib(bytes: number): string {
  return `${(bytes / (1 << 20)).toFixed(0)} MiB`;
}

function help(command?: string): Promise<void> {
  if (command && COMMANDS[command]) {
    console.log(`usage: ${COMMANDS[command].usage}\n\n${COMMANDS[command].summary}`);
  } else {
    console.log("usage: hc <command> [options]\n\ncommands:");
    for (const [name, c] of Object.entries(COMMANDS)) {
      console.log(`  ${name.padEnd(10)} ${c.summary}`);
    }
    console.log("\nRun `hc <command> --help` for a command's options.");
  }
  return Promise.resolve();
}

export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === "--help" || name === "-h" || name === "help") {
    await help(rest[0]);
    return 0;
  }
  const command = COMMANDS[name];
  if (!command) {
    console.error(`hc: unknown command "${name}"`);
    await help();
    return 2;
  }
  try {
    await command.run(rest);
    return 0;
  } catch (e) {
    if (e instanceof HcError) {
      console.error(`hc ${name}: ${e.code}: ${e.message}`);
      return 1;
    }
    if (String((e as { code?: unknown }).code ?? "").startsWith("ERR_PARSE_ARGS")) {
      console.error(`hc ${name}: ${(e as Error).message}`);
      return 2;
    }
    throw e;
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
