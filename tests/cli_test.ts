/**
 * The `hc` command line as a user runs it: help on every command, usage errors, `generate`
 * streaming to stdout, and `deno task serve` with HC_MODEL answering the same greedy text.
 */
import assert from "node:assert/strict";
import { sharedPath } from "./helpers.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const MODEL = sharedPath("models/stories260K.gguf");
const DENO = Deno.execPath();

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** `hc ARGS` in a fresh process, with HC_MODEL unset unless `env` sets it. */
async function hc(args: string[], env: Record<string, string> = {}): Promise<Run> {
  const out = await new Deno.Command(DENO, {
    args: ["run", "-A", "src/cli.ts", ...args],
    cwd: ROOT,
    env: { NO_COLOR: "1", HC_MODEL: "", ...env },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

Deno.test("help lists the commands, and every command has --help", async () => {
  const top = await hc(["--help"]);
  assert.equal(top.code, 0);
  const commands = ["serve", "generate", "calibrate", "devices"];
  for (const c of commands) {
    assert.match(top.stdout, new RegExp(`^  ${c} `, "m"));
  }
  const helps = await Promise.all(commands.map((c) => hc([c, "--help"])));
  for (const [i, c] of commands.entries()) {
    assert.equal(helps[i].code, 0, helps[i].stderr);
    assert.match(helps[i].stdout, new RegExp(`^usage: hc ${c}`));
  }
  assert.match(helps[0].stdout, /--port/);
  assert.match(helps[0].stdout, /HC_MODEL/);
  assert.match(helps[1].stdout, /--max-tokens/);
});

Deno.test("usage mistakes exit 2, runtime failures exit 1, both with a message", async () => {
  const [unknown, badOption, badNumber, missing] = await Promise.all([
    hc(["frobnicate"]),
    hc(["generate", "--no-such-option"]),
    hc(["generate", "--max-tokens", "lots"]),
    hc(["generate", "--model", "/no/such/model.gguf", "hi"]),
  ]);
  assert.equal(unknown.code, 2);
  assert.match(unknown.stderr, /unknown command "frobnicate"/);
  assert.equal(badOption.code, 2);
  assert.match(badOption.stderr, /no-such-option/);
  assert.equal(badNumber.code, 2);
  assert.match(badNumber.stderr, /--max-tokens must be an integer/);
  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /\/no\/such\/model\.gguf does not exist/);
});

Deno.test("without network and without a local model, the error says how to point at a file", async () => {
  const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (probe.addr as Deno.NetAddr).port;
  probe.close();
  const dir = await Deno.makeTempDir({ prefix: "hc-cli-test-" });
  try {
    const r = await hc(["generate", "-n", "3", "hi"], {
      HF_ENDPOINT: `http://127.0.0.1:${port}`,
      HC_CACHE_DIR: dir,
    });
    assert.equal(r.code, 1);
    assert.match(r.stderr, /E_DOWNLOAD/);
    assert.match(r.stderr, /--model PATH/);
    assert.equal(r.stdout, "");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** Reads lines from a stream until one matches; returns the match and the lines seen. */
async function readUntil(
  reader: ReadableStreamDefaultReader<string>,
  re: RegExp,
  seen: string[],
): Promise<RegExpExecArray> {
  let buf = "";
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline) {
    const { done, value } = await reader.read();
    if (done) break;
    buf += value;
    let nl;
    while ((nl = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      seen.push(line);
      const m = re.exec(line);
      if (m) return m;
    }
  }
  throw new Error(`no line matched ${re}; output so far:\n${seen.join("\n")}${buf}`);
}

/** A server started as `deno ARGS`, once it says the model is ready. */
async function startServer(args: string[], env: Record<string, string>): Promise<{
  url: string;
  child: Deno.ChildProcess;
  lines: ReadableStreamDefaultReader<string>;
  seen: string[];
  stderrText: Promise<string>;
}> {
  const child = new Deno.Command(DENO, {
    args,
    cwd: ROOT,
    env: { NO_COLOR: "1", ...env },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const stderrText = new Response(child.stderr).text();
  const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  const seen: string[] = [];
  const url = (await readUntil(lines, /listening on (http:\/\/\S+) /, seen))[1];
  await readUntil(lines, /model "stories260K" ready/, seen);
  return { url, child, lines, seen, stderrText };
}

Deno.test("`deno task serve` with HC_MODEL answers a greedy request with the text `hc generate` prints", async () => {
  const generated = await hc(["generate", "--max-tokens", "60", "Once upon a time"], {
    HC_MODEL: MODEL,
  });
  assert.equal(generated.code, 0, generated.stderr);
  assert.ok(generated.stdout.endsWith("\n"));
  const expected = generated.stdout.slice(0, -1);
  assert.ok(expected.length > 100, `60 tokens of story expected, got ${JSON.stringify(expected)}`);

  const { url, child, lines, seen, stderrText } = await startServer(
    ["task", "serve", "--port", "0"],
    { HC_MODEL: MODEL },
  );
  try {
    assert.equal((await fetch(`${url}/health`)).status, 200);
    const res = await fetch(`${url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        model: "stories260K",
        prompt: "Once upon a time",
        max_tokens: 60,
        temperature: 0,
      }),
    });
    const body = await res.json();
    assert.equal(res.status, 200, JSON.stringify(body));
    assert.equal(body.choices[0].text, expected);
    assert.equal(body.usage.completion_tokens, 60);
  } finally {
    child.kill("SIGTERM");
    const status = await child.status;
    await lines.cancel().catch(() => {});
    const err = await stderrText;
    assert.equal(
      status.code,
      0,
      `serve should shut down cleanly on SIGTERM:\n${seen.join("\n")}\n${err}`,
    );
  }
});

Deno.test("the examples run: generate.ts streams text, server.ts serves until Ctrl-C", async () => {
  const gen = await new Deno.Command(DENO, {
    args: ["run", "-A", "examples/generate.ts", MODEL, "Once upon a time"],
    cwd: ROOT,
    env: { NO_COLOR: "1" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(gen.stdout);
  assert.equal(gen.code, 0, new TextDecoder().decode(gen.stderr));
  const cli = await hc(["generate", "-n", "64", "Once upon a time"], { HC_MODEL: MODEL });
  assert.ok(text.startsWith(cli.stdout.slice(0, -1)), `example:\n${text}\ncli:\n${cli.stdout}`);
  assert.match(text, /\[64 tokens, [\d.]+ tok\/s, finished: length; device KV \d+ bytes/);

  const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (probe.addr as Deno.NetAddr).port;
  probe.close();
  const child = new Deno.Command(DENO, {
    args: ["run", "-A", "examples/server.ts", MODEL],
    cwd: ROOT,
    env: { NO_COLOR: "1", PORT: String(port) },
    stdin: "null",
    stdout: "piped",
    stderr: "null",
  }).spawn();
  const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  const seen: string[] = [];
  try {
    await readUntil(lines, /model "stories260K" ready/, seen);
    const res = await fetch(`http://127.0.0.1:${port}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ messages: [{ role: "user", content: "Hi" }], max_tokens: 5 }),
    });
    assert.equal(res.status, 200);
    assert.equal((await res.json()).usage.completion_tokens, 5);
  } finally {
    child.kill("SIGINT");
    const status = await child.status;
    await lines.cancel().catch(() => {});
    assert.equal(status.code, 0, seen.join("\n"));
  }
});

/** A failure as `hc` should print it: one `hc CMD: ...` line on stderr, no stack, non-zero exit. */
function oneLineFailure(r: Run, command: string, why: RegExp): void {
  assert.notEqual(r.code, 0, r.stderr);
  const lines = r.stderr.split("\n").filter((l) => l.trim() !== "");
  assert.equal(lines.length, 1, `one line expected on stderr, got:\n${r.stderr}`);
  assert.match(lines[0], new RegExp(`^hc ${command}: `));
  assert.match(lines[0], why);
  assert.doesNotMatch(r.stderr, /Uncaught|^\s+at /m);
}

Deno.test("serve refuses bad startup settings with one line and a non-zero exit", async () => {
  const busy = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (busy.addr as Deno.NetAddr).port;
  const dir = await Deno.makeTempDir({ prefix: "hc-cli-serve-" });
  try {
    await Deno.writeTextFile(`${dir}/package.json`, JSON.stringify({ name: "not-a-profile" }));
    const other = sharedPath(
      "profiles/Head_Analysis_llama-3.1-8b-instruct_topk1024_th0.5_sim0.5_step5000.json",
    );
    const serve = (...args: string[]) => hc(["serve", "--model", MODEL, ...args]);
    const [inUse, noProfile, notProfile, otherModel, keepFull, keepZero] = await Promise.all([
      serve("--port", String(port)),
      serve("--port", "0", "--cache", "heterocache"),
      serve("--port", "0", "--cache", "heterocache", "--profile", `${dir}/package.json`),
      serve("--port", "0", "--cache", "heterocache", "--profile", other),
      serve("--port", "0", "--keep", "0.25"),
      serve("--port", "0", "--keep", "0"),
    ]);
    oneLineFailure(inUse, "serve", new RegExp(`port ${port} is already in use.*--port`));
    oneLineFailure(noProfile, "serve", /needs a head profile.*--profile.*hc calibrate/);
    oneLineFailure(notProfile, "serve", /package\.json is not a head profile/);
    oneLineFailure(otherModel, "serve", /E_PROFILE_MISMATCH: .*32 layers.*another model/);
    oneLineFailure(keepFull, "serve", /keeps every token/);
    oneLineFailure(keepZero, "serve", /--keep must be > 0/);
    assert.doesNotMatch(keepZero.stderr, /5e-324|between/);
  } finally {
    busy.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("model file mistakes name the problem and the CLI flag", async () => {
  const dir = await Deno.makeTempDir({ prefix: "hc-cli-model-" });
  try {
    const bytes = new Uint8Array(4096);
    crypto.getRandomValues(bytes);
    await Deno.writeFile(`${dir}/random.gguf`, bytes);
    const [random, folder, bin] = await Promise.all([
      hc(["generate", "--model", `${dir}/random.gguf`, "hi"]),
      hc(["generate", "--model", dir, "hi"]),
      hc(["generate", "--model", sharedPath("models/stories260K.bin"), "hi"]),
    ]);
    oneLineFailure(random, "generate", /E_GGUF_MAGIC: .*random\.gguf is not a GGUF file/);
    assert.doesNotMatch(random.stderr, /llama2\.c/);
    oneLineFailure(folder, "generate", /is a directory, not a model file/);
    oneLineFailure(bin, "generate", /carries no tokenizer; pass --tokenizer PATH/);
    assert.doesNotMatch(bin.stderr, /tokenizerPath/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("`deno run -A src/cli.ts serve`, the README's way, prints no legacy-abort warning", async () => {
  const { url, child, lines, stderrText } = await startServer(
    ["run", "-A", "src/cli.ts", "serve", "--port", "0", "--model", MODEL],
    {},
  );
  try {
    for (const stream of [false, true]) {
      const res = await fetch(`${url}/v1/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ prompt: "Once", max_tokens: 3, stream }),
      });
      assert.equal(res.status, 200);
      await res.text();
    }
  } finally {
    child.kill("SIGTERM");
    await child.status;
    await lines.cancel().catch(() => {});
  }
  assert.doesNotMatch(await stderrText, /legacy/i);
});
