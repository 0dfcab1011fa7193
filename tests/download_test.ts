/**
 * The default-model downloader against a local HTTP server that serves ../shared/models the way
 * Hugging Face does (never the internet): hash check, cache reuse, redirects with an announced
 * hash, corruption, and the message when there is no network.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import {
  cacheDir,
  cachedPath,
  DEFAULT_MODEL,
  downloadHf,
  parseHfRef,
  resolveModelPath,
} from "../src/download.ts";
import { HcError } from "../src/errors.ts";
import { sharedPath } from "./helpers.ts";

const MODEL_BYTES: Uint8Array<ArrayBuffer> = await Deno.readFile(
  sharedPath("models/stories260K.gguf"),
);
const TOKENIZER_BYTES: Uint8Array<ArrayBuffer> = await Deno.readFile(
  sharedPath("models/tok512.bin"),
);
const sha256 = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

interface Hub {
  url: string;
  hits: string[];
  close(): Promise<void>;
}

/**
 * Serves `files` (repo path → bytes) at /{repo}/resolve/{rev}/{file}; with `redirect`, answers
 * with a 302 carrying X-Linked-Etag (as Hugging Face does for LFS files) to /cdn/...
 */
function startHub(
  files: Record<string, Uint8Array<ArrayBuffer>>,
  opts: { redirect?: boolean; etag?: (path: string) => string } = {},
): Hub {
  const hits: string[] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req) => {
    const path = new URL(req.url).pathname;
    hits.push(path);
    const m = /^\/(.+?\/.+?)\/resolve\/([^/]+)\/(.+)$/.exec(path);
    if (m && opts.redirect) {
      const key = `${m[1]}:${decodeURIComponent(m[3])}`;
      if (!(key in files)) return new Response("Entry not found", { status: 404 });
      return new Response(null, {
        status: 302,
        headers: {
          location: `/cdn/${encodeURIComponent(key)}`,
          "x-linked-etag": `"${opts.etag?.(key) ?? sha256(files[key])}"`,
        },
      });
    }
    const key = m
      ? `${m[1]}:${decodeURIComponent(m[3])}`
      : path.startsWith("/cdn/")
      ? decodeURIComponent(path.slice(5))
      : "";
    const body = files[key];
    if (!body) return new Response("Entry not found", { status: 404 });
    return new Response(body, { headers: { "content-length": String(body.byteLength) } });
  });
  return { url: `http://127.0.0.1:${server.addr.port}`, hits, close: () => server.shutdown() };
}

const DEFAULT_KEY = `${DEFAULT_MODEL.repo}:${DEFAULT_MODEL.file}`;

async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "hc-download-test-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Every file under `dir`, relative. */
async function listFiles(dir: string, prefix = ""): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(`${dir}/${prefix}`)) {
    const rel = prefix ? `${prefix}/${e.name}` : e.name;
    if (e.isDirectory) out.push(...await listFiles(dir, rel));
    else out.push(rel);
  }
  return out.sort();
}

Deno.test("the default model downloads once, checked against its sha256, then comes from the cache", async () => {
  assert.equal(
    sha256(MODEL_BYTES),
    DEFAULT_MODEL.sha256,
    "the shared stories260K.gguf is the default model",
  );
  const hub = startHub({ [DEFAULT_KEY]: MODEL_BYTES });
  try {
    await withTempDir(async (dir) => {
      const env = (n: string) =>
        ({ HF_ENDPOINT: hub.url, HC_CACHE_DIR: dir } as Record<string, string>)[n];
      const progress: [number, number | null][] = [];
      const path = await resolveModelPath({ env, onProgress: (d, t) => progress.push([d, t]) });
      assert.equal(path, cachedPath(DEFAULT_MODEL, dir));
      assert.deepEqual(await Deno.readFile(path), MODEL_BYTES);
      assert.deepEqual(hub.hits, ["/ggml-org/models/resolve/main/tinyllamas/stories260K.gguf"]);
      assert.deepEqual(progress.at(-1), [MODEL_BYTES.byteLength, MODEL_BYTES.byteLength]);
      assert.deepEqual(progress[0], [0, MODEL_BYTES.byteLength]);
      assert.equal((await Deno.readTextFile(`${path}.sha256`)).trim(), DEFAULT_MODEL.sha256);
      assert.equal(await resolveModelPath({ env }), path);
      assert.equal(hub.hits.length, 1, "the second call must not touch the network");
      assert.deepEqual(await listFiles(dir), [
        "models/ggml-org/models/main/tinyllamas/stories260K.gguf",
        "models/ggml-org/models/main/tinyllamas/stories260K.gguf.sha256",
      ]);
    });
  } finally {
    await hub.close();
  }
});

Deno.test("a corrupted download is refused and leaves nothing in the cache", async () => {
  const bad = MODEL_BYTES.slice();
  bad[bad.length >> 1] ^= 0x40;
  const hub = startHub({ [DEFAULT_KEY]: bad });
  try {
    await withTempDir(async (dir) => {
      const env = (n: string) =>
        ({ HF_ENDPOINT: hub.url, HC_CACHE_DIR: dir } as Record<string, string>)[n];
      await assert.rejects(
        resolveModelPath({ env }),
        (e: unknown) =>
          e instanceof HcError && e.code === "E_DOWNLOAD" &&
          e.message.includes(DEFAULT_MODEL.sha256),
      );
      const left = await listFiles(dir).catch(() => []);
      assert.deepEqual(left, [], `nothing may stay in the cache: ${left}`);
    });
  } finally {
    await hub.close();
  }
});

Deno.test("a cached file without a recorded hash is downloaded again", async () => {
  const hub = startHub({ [DEFAULT_KEY]: MODEL_BYTES });
  try {
    await withTempDir(async (dir) => {
      const path = cachedPath(DEFAULT_MODEL, dir);
      await Deno.mkdir(path.slice(0, path.lastIndexOf("/")), { recursive: true });
      await Deno.writeFile(path, MODEL_BYTES.slice(0, 1000));
      const got = await downloadHf(DEFAULT_MODEL, {
        endpoint: hub.url,
        cacheDir: dir,
        sha256: DEFAULT_MODEL.sha256,
      });
      assert.deepEqual(await Deno.readFile(got), MODEL_BYTES);
      assert.equal(hub.hits.length, 1);
    });
  } finally {
    await hub.close();
  }
});

Deno.test("without network the error says how to use a local file", async () => {
  // A port that was just free: nothing listens there.
  const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (probe.addr as Deno.NetAddr).port;
  probe.close();
  await withTempDir(async (dir) => {
    const env = (n: string) =>
      ({ HF_ENDPOINT: `http://127.0.0.1:${port}`, HC_CACHE_DIR: dir } as Record<string, string>)[n];
    await assert.rejects(resolveModelPath({ env }), (e: unknown) => {
      assert.ok(e instanceof HcError);
      assert.equal(e.code, "E_DOWNLOAD");
      assert.match(e.message, /--model PATH/);
      assert.match(e.message, /HC_MODEL/);
      return true;
    });
  });
});

Deno.test("--hf fetches any file through a redirect and checks the announced hash", async () => {
  const files = { "someone/tiny:tok/tok512.bin": TOKENIZER_BYTES, [DEFAULT_KEY]: MODEL_BYTES };
  const hub = startHub(files, { redirect: true });
  try {
    await withTempDir(async (dir) => {
      const env = (n: string) =>
        ({ HF_ENDPOINT: hub.url, HC_CACHE_DIR: dir } as Record<string, string>)[n];
      const path = await resolveModelPath({ env, hf: "someone/tiny:tok/tok512.bin" });
      assert.equal(path, `${dir}/models/someone/tiny/main/tok/tok512.bin`);
      assert.deepEqual(await Deno.readFile(path), TOKENIZER_BYTES);
      assert.deepEqual(hub.hits, [
        "/someone/tiny/resolve/main/tok/tok512.bin",
        "/cdn/someone%2Ftiny%3Atok%2Ftok512.bin",
      ]);
      await assert.rejects(
        resolveModelPath({ env, hf: "someone/tiny:missing.gguf" }),
        (e: unknown) =>
          e instanceof HcError && e.code === "E_DOWNLOAD" && /not found/.test(e.message),
      );
    });
  } finally {
    await hub.close();
  }
  const lying = startHub(files, { redirect: true, etag: () => "0".repeat(64) });
  try {
    await withTempDir(async (dir) => {
      await assert.rejects(
        downloadHf(parseHfRef("someone/tiny:tok/tok512.bin"), {
          endpoint: lying.url,
          cacheDir: dir,
        }),
        (e: unknown) =>
          e instanceof HcError && e.code === "E_DOWNLOAD" && e.message.includes("0".repeat(64)),
      );
      assert.deepEqual(await listFiles(dir).catch(() => []), []);
    });
  } finally {
    await lying.close();
  }
});

Deno.test("model resolution order: --model, then HC_MODEL; bad specs and missing files are errors", async () => {
  const local = sharedPath("models/stories260K.gguf");
  const none = () => undefined;
  assert.equal(await resolveModelPath({ model: local, env: none }), local);
  assert.equal(
    await resolveModelPath({ env: (n) => (n === "HC_MODEL" ? local : undefined) }),
    local,
  );
  assert.equal(
    await resolveModelPath({
      model: local,
      env: (n) => (n === "HC_MODEL" ? "/nope.gguf" : undefined),
    }),
    local,
  );
  await assert.rejects(
    resolveModelPath({ env: (n) => (n === "HC_MODEL" ? "/no/such/model.gguf" : undefined) }),
    (e: unknown) => e instanceof HcError && e.code === "E_IO" && /HC_MODEL/.test(e.message),
  );
  await assert.rejects(resolveModelPath({ model: local, hf: "a/b:c.gguf", env: none }), HcError);
  await assert.rejects(
    resolveModelPath({ model: local.slice(0, local.lastIndexOf("/")), env: none }),
    (e: unknown) => e instanceof HcError && /is a directory, not a model file/.test(e.message),
  );
  assert.deepEqual(parseHfRef("ggml-org/models:tinyllamas/stories260K.gguf"), {
    repo: "ggml-org/models",
    file: "tinyllamas/stories260K.gguf",
    revision: "main",
  });
  assert.deepEqual(parseHfRef("a/b:c.gguf@v1.0"), {
    repo: "a/b",
    file: "c.gguf",
    revision: "v1.0",
  });
  for (
    const bad of [
      "a",
      "a:c.gguf",
      "a/b/c:d.gguf",
      "a/b:../x.gguf",
      "a/b:",
      "a/b:x/../../y",
      "a/b:c.gguf@",
    ]
  ) {
    assert.throws(
      () => parseHfRef(bad),
      (e: unknown) => e instanceof HcError && e.code === "E_BAD_REQUEST",
      bad,
    );
  }
  const env = (vars: Record<string, string>) => (n: string) => vars[n];
  assert.equal(cacheDir(env({ HC_CACHE_DIR: "/x/y" })), "/x/y");
  if (Deno.build.os === "linux") {
    assert.equal(cacheDir(env({ XDG_CACHE_HOME: "/c", HOME: "/h" })), "/c/heterocache");
    assert.equal(cacheDir(env({ HOME: "/h" })), "/h/.cache/heterocache");
    assert.throws(() => cacheDir(env({})), HcError);
  }
});

/**
 * A raw TCP server on 127.0.0.1: `onConn` gets each connection and the request head it sent.
 * Connections stay open until close(), like a server that hangs.
 */
function startRaw(onConn: (conn: Deno.Conn, head: string) => Promise<void>): {
  url: string;
  heads: string[];
  close(): Promise<void>;
} {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns: Deno.Conn[] = [];
  const heads: string[] = [];
  const tasks: Promise<void>[] = [];
  const accepting = (async () => {
    for await (const conn of listener) {
      conns.push(conn);
      tasks.push((async () => {
        const buf = new Uint8Array(8192);
        let head = "";
        while (!head.includes("\r\n\r\n")) {
          const n = await conn.read(buf).catch(() => null);
          if (n === null) return;
          head += new TextDecoder().decode(buf.subarray(0, n));
        }
        heads.push(head);
        await onConn(conn, head).catch(() => {});
      })());
    }
  })().catch(() => {});
  return {
    url: `http://127.0.0.1:${(listener.addr as Deno.NetAddr).port}`,
    heads,
    close: async () => {
      listener.close();
      for (const c of conns) {
        try {
          c.close();
        } catch { /* closed by the client already */ }
      }
      await accepting;
      await Promise.all(tasks);
    },
  };
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  for (let off = 0; off < bytes.byteLength;) off += await conn.write(bytes.subarray(off));
}

/** Answers with the model's first `cut` bytes (of a body announced in full), then stalls. */
const stallAfter = (cut: number) => async (conn: Deno.Conn) => {
  await writeAll(
    conn,
    new TextEncoder().encode(
      `HTTP/1.1 200 OK\r\ncontent-length: ${MODEL_BYTES.byteLength}\r\n\r\n`,
    ),
  );
  await writeAll(conn, MODEL_BYTES.subarray(0, cut));
};

Deno.test("a server that accepts and never answers fails within the connect timeout", async () => {
  // Reads nothing more and answers nothing, until the client gives up (or the test ends).
  const silent = startRaw(async (conn) => {
    await conn.read(new Uint8Array(1)).catch(() => null);
  });
  try {
    await withTempDir(async (dir) => {
      const t0 = performance.now();
      await assert.rejects(
        downloadHf(DEFAULT_MODEL, {
          endpoint: silent.url,
          cacheDir: dir,
          connectTimeoutMs: 300,
          idleTimeoutMs: 300,
        }),
        (e: unknown) =>
          e instanceof HcError && e.code === "E_DOWNLOAD" &&
          /no answer from http:\/\/127\.0\.0\.1:\d+ within 0\.3 s/.test(e.message) &&
          /--model PATH/.test(e.message),
      );
      const ms = performance.now() - t0;
      assert.ok(ms >= 250 && ms < 3000, `failed after ${ms.toFixed(0)} ms`);
      assert.equal(silent.heads.length, 1);
      assert.deepEqual(await listFiles(dir).catch(() => []), []);
    });
  } finally {
    await silent.close();
  }
});

Deno.test("a download that stalls mid-body fails within the idle timeout, then resumes", async () => {
  const cut = 400_000;
  const stalling = startRaw(stallAfter(cut));
  // Serves byte ranges, as Hugging Face's CDN does.
  const ranged = startRaw(async (conn, head) => {
    const m = /\r\nrange: bytes=(\d+)-\r\n/i.exec(head);
    const from = m ? Number(m[1]) : 0;
    const body = MODEL_BYTES.subarray(from);
    const total = MODEL_BYTES.byteLength;
    const status = m
      ? `206 Partial Content\r\ncontent-range: bytes ${from}-${total - 1}/${total}`
      : "200 OK";
    await writeAll(
      conn,
      new TextEncoder().encode(
        `HTTP/1.1 ${status}\r\ncontent-length: ${body.byteLength}\r\nconnection: close\r\n\r\n`,
      ),
    );
    await writeAll(conn, body);
    conn.close();
  });
  try {
    await withTempDir(async (dir) => {
      const opts = { cacheDir: dir, sha256: DEFAULT_MODEL.sha256, idleTimeoutMs: 300 };
      const t0 = performance.now();
      await assert.rejects(
        downloadHf(DEFAULT_MODEL, { ...opts, endpoint: stalling.url }),
        (e: unknown) =>
          e instanceof HcError && e.code === "E_DOWNLOAD" &&
          new RegExp(
            `stalled: no data for 0\\.3 s after ${cut} of ${MODEL_BYTES.byteLength} bytes; run again to resume`,
          ).test(e.message),
      );
      const ms = performance.now() - t0;
      assert.ok(ms >= 250 && ms < 3000, `failed after ${ms.toFixed(0)} ms`);
      const part = `${cachedPath(DEFAULT_MODEL, dir)}.part`;
      assert.equal((await Deno.stat(part)).size, cut);

      const progress: [number, number | null][] = [];
      const path = await downloadHf(DEFAULT_MODEL, {
        ...opts,
        endpoint: ranged.url,
        onProgress: (d, t) => progress.push([d, t]),
      });
      assert.match(ranged.heads[0], new RegExp(`\r\nrange: bytes=${cut}-\r\n`, "i"));
      assert.deepEqual(await Deno.readFile(path), MODEL_BYTES);
      assert.deepEqual(progress[0], [cut, MODEL_BYTES.byteLength]);
      assert.deepEqual(progress.at(-1), [MODEL_BYTES.byteLength, MODEL_BYTES.byteLength]);
      assert.deepEqual(await listFiles(dir), [
        "models/ggml-org/models/main/tinyllamas/stories260K.gguf",
        "models/ggml-org/models/main/tinyllamas/stories260K.gguf.sha256",
      ]);
    });
  } finally {
    await stalling.close();
    await ranged.close();
  }
});

Deno.test("a part the server will not continue (no ranges, or wrong bytes) is started over", async () => {
  const hub = startHub({ [DEFAULT_KEY]: MODEL_BYTES }); // ignores Range: answers 200
  try {
    await withTempDir(async (dir) => {
      const part = `${cachedPath(DEFAULT_MODEL, dir)}.part`;
      await Deno.mkdir(part.slice(0, part.lastIndexOf("/")), { recursive: true });
      await Deno.writeFile(part, new Uint8Array(1000).fill(7)); // not the model's bytes
      const path = await downloadHf(DEFAULT_MODEL, {
        endpoint: hub.url,
        cacheDir: dir,
        sha256: DEFAULT_MODEL.sha256,
      });
      assert.deepEqual(await Deno.readFile(path), MODEL_BYTES);
      assert.equal(hub.hits.length, 2, "one ranged try, then the whole file");
    });
  } finally {
    await hub.close();
  }
});

Deno.test("the download bar shows bytes, rate and time left, and only on a terminal", async () => {
  const { terminalProgress } = await import("../src/progress.ts");
  let t = 0;
  const out: string[] = [];
  const bar = terminalProgress("downloading model", {
    isTerminal: true,
    write: (s) => out.push(s),
    now: () => t,
  });
  const MiB = 1 << 20;
  bar.update(2 * MiB, 10 * MiB); // resumed at 2 MiB: not counted as speed
  t = 2000;
  bar.update(6 * MiB, 10 * MiB); // 4 MiB in 2 s: 2 MiB/s, 4 MiB left: 2 s
  bar.done();
  const ESC = "\x1b[K";
  assert.equal(
    out[0],
    `\rdownloading model [${"#".repeat(6)}${" ".repeat(24)}]  20% 2.0 MiB / 10.0 MiB${ESC}`,
  );
  assert.ok(out[1].endsWith(`]  60% 6.0 MiB / 10.0 MiB  2.0 MiB/s  ETA 0:02${ESC}`), out[1]);
  assert.equal(out[2], "\n");
  const quiet: string[] = [];
  const none = terminalProgress("x", { isTerminal: false, write: (s) => quiet.push(s) });
  none.update(1, 2);
  none.done();
  assert.deepEqual(quiet, []);
});
