/**
 * `--hf owner/repo:QUANT` against a local HTTP server that answers Hugging Face's tree API
 * (`/api/models/{repo}/tree/{revision}`, paginated with a Link header) and its file endpoint
 * (`/{repo}/resolve/{revision}/{path}`), never the internet.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { resolveModelPath } from "../src/download.ts";
import { HcError } from "../src/errors.ts";
import { isQuantTag, pickDefaultFile, pickQuantFile, type RepoFile } from "../src/hf_pick.ts";
import { parseHfRef } from "../src/download.ts";

const sha256 = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");
const bytesOf = (s: string) => new TextEncoder().encode(`GGUF stand-in: ${s}`);

const REPO = "someone/Model-GGUF";
const PATHS = [
  ".gitattributes",
  "README.md",
  "Model-Q4_K_M.gguf",
  "Model-Q4_K_S.gguf",
  "model.q8_0.gguf",
  "Model-IQ4_XS.gguf",
  "Model-F16.gguf",
  "mmproj-Model-F16.gguf",
  "Model-Q5_K_M.gguf",
  "Model-Q5_K_M-imat.gguf",
  "UD-Q2_K_XL/Model-UD-Q2_K_XL-00001-of-00002.gguf",
  "UD-Q2_K_XL/Model-UD-Q2_K_XL-00002-of-00002.gguf",
];
const FILES = new Map(PATHS.map((p) => [p, bytesOf(p)]));

interface Hub {
  url: string;
  hits: string[];
  close(): Promise<void>;
}

/** Serves REPO at revisions main and v2; `oid` can lie about a file's hash. */
function startHub(opts: { oid?: (path: string) => string; pageSize?: number } = {}): Hub {
  const hits: string[] = [];
  const pageSize = opts.pageSize ?? 5;
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req) => {
    const url = new URL(req.url);
    hits.push(url.pathname + url.search);
    const tree = /^\/api\/models\/(.+?\/.+?)\/tree\/([^/]+)$/.exec(url.pathname);
    if (tree) {
      if (tree[1] !== REPO || !["main", "v2"].includes(tree[2])) {
        return Response.json({ error: "Repository not found" }, { status: 404 });
      }
      assert.equal(url.searchParams.get("recursive"), "true");
      const cursor = Number(url.searchParams.get("cursor") ?? "0");
      // Folders appear as entries of their own, as in the real listing.
      const entries = [
        { type: "directory", path: "UD-Q2_K_XL", oid: "0".repeat(40), size: 0 },
        ...PATHS.map((p) => {
          const b = FILES.get(p)!;
          const lfs = p.endsWith(".gguf")
            ? { lfs: { oid: opts.oid?.(p) ?? sha256(b), size: b.byteLength, pointerSize: 130 } }
            : {};
          return { type: "file", oid: "1".repeat(40), size: b.byteLength, path: p, ...lfs };
        }),
      ];
      const page = entries.slice(cursor, cursor + pageSize);
      const headers = new Headers();
      if (cursor + pageSize < entries.length) {
        const next = new URL(url);
        next.searchParams.set("cursor", String(cursor + pageSize));
        headers.set("link", `<${next.href}>; rel="next"`);
      }
      return Response.json(page, { headers });
    }
    const file = /^\/(.+?\/.+?)\/resolve\/([^/]+)\/(.+)$/.exec(url.pathname);
    const body = file && file[1] === REPO ? FILES.get(decodeURIComponent(file[3])) : undefined;
    if (!body) return new Response("Entry not found", { status: 404 });
    return new Response(body, { headers: { "content-length": String(body.byteLength) } });
  });
  let closed: Promise<void> | undefined;
  return {
    url: `http://127.0.0.1:${server.addr.port}`,
    hits,
    close: () => closed ??= server.shutdown(),
  };
}

async function withHub(
  opts: Parameters<typeof startHub>[0],
  fn: (hub: Hub, env: (n: string) => string | undefined, dir: string) => Promise<void>,
): Promise<void> {
  const hub = startHub(opts);
  const dir = await Deno.makeTempDir({ prefix: "hc-hf-quant-" });
  try {
    const vars: Record<string, string> = { HF_ENDPOINT: hub.url, HC_CACHE_DIR: dir };
    await fn(hub, (n) => vars[n], dir);
  } finally {
    await hub.close();
    await Deno.remove(dir, { recursive: true });
  }
}

const rejectsWith = (code: string, re: RegExp) => (e: unknown) => {
  assert.ok(e instanceof HcError, String(e));
  assert.equal(e.code, code, e.message);
  assert.match(e.message, re);
  return true;
};

Deno.test("--hf owner/repo:QUANT picks the GGUF by name, case-insensitively, and checks its hash", async () => {
  await withHub({}, async (hub, env, dir) => {
    const path = await resolveModelPath({ env, hf: `${REPO}:q4_k_m` });
    assert.equal(path, `${dir}/models/${REPO}/main/Model-Q4_K_M.gguf`);
    assert.deepEqual(await Deno.readFile(path), FILES.get("Model-Q4_K_M.gguf"));
    const pages = hub.hits.filter((h) => h.startsWith("/api/"));
    assert.equal(pages.length, 3, "13 entries at 5 a page: every page read");
    assert.ok(hub.hits.includes(`/${REPO}/resolve/main/Model-Q4_K_M.gguf`));
    // Other spellings people use: dotted lower-case names, and the projector is never the model.
    assert.match(await resolveModelPath({ env, hf: `${REPO}:Q8_0` }), /model\.q8_0\.gguf$/);
    assert.match(await resolveModelPath({ env, hf: `${REPO}:F16` }), /\/Model-F16\.gguf$/);
    assert.match(
      await resolveModelPath({ env, hf: `${REPO}:IQ4_XS@v2` }),
      /\/v2\/Model-IQ4_XS\.gguf$/,
    );
    assert.ok(hub.hits.some((h) => h.startsWith(`/api/models/${REPO}/tree/v2?`)));
    // Without the hub, a quant downloaded before comes from the cache; one never fetched fails.
    await hub.close();
    const offline = (n: string) => n === "HF_ENDPOINT" ? "http://127.0.0.1:9" : env(n);
    assert.equal(await resolveModelPath({ env: offline, hf: `${REPO}:Q4_K_M` }), path);
    await assert.rejects(
      resolveModelPath({ env: offline, hf: `${REPO}:Q4_K_S` }),
      rejectsWith("E_DOWNLOAD", /could not reach/),
    );
  });
});

Deno.test("an absent, partial or ambiguous quant is an error that lists what the repo has", async () => {
  await withHub({}, async (_hub, env) => {
    for (const tag of ["Q4_K", "Q4_XS", "Q6_K"]) {
      await assert.rejects(
        resolveModelPath({ env, hf: `${REPO}:${tag}` }),
        rejectsWith("E_BAD_REQUEST", new RegExp(`no GGUF for quant '${tag}'.*Model-Q4_K_M\\.gguf`)),
      );
    }
    const e = await resolveModelPath({ env, hf: `${REPO}:Q6_K` }).catch((e) => e);
    assert.ok(!/README|mmproj/.test(e.message), "only model GGUFs are listed");
    await assert.rejects(
      resolveModelPath({ env, hf: `${REPO}:Q5_K_M` }),
      rejectsWith("E_BAD_REQUEST", /matches 2 GGUFs.*Model-Q5_K_M\.gguf.*Model-Q5_K_M-imat\.gguf/),
    );
    // The exact file still works where the tag is ambiguous.
    assert.match(
      await resolveModelPath({ env, hf: `${REPO}:Model-Q5_K_M-imat.gguf` }),
      /Model-Q5_K_M-imat\.gguf$/,
    );
  });
});

Deno.test("a quant split into -0000N-of-0000M parts is refused with how to merge it", async () => {
  await withHub({}, async (hub, env) => {
    for (const tag of ["UD-Q2_K_XL", "q2_k_xl"]) {
      await assert.rejects(
        resolveModelPath({ env, hf: `${REPO}:${tag}` }),
        rejectsWith(
          "E_MODEL_FORMAT",
          /split into 2 files.*single-file GGUFs.*llama-gguf-split --merge Model-UD-Q2_K_XL-00001-of-00002\.gguf/,
        ),
      );
    }
    assert.ok(!hub.hits.some((h) => h.includes("/resolve/")), "nothing downloaded");
  });
});

Deno.test("a wrong announced hash or a missing repo fails cleanly", async () => {
  await withHub({ oid: () => "ab".repeat(32) }, async (_hub, env, dir) => {
    await assert.rejects(
      resolveModelPath({ env, hf: `${REPO}:Q4_K_M` }),
      rejectsWith("E_DOWNLOAD", /expected abab/),
    );
    await assert.rejects(
      resolveModelPath({ env, hf: "nobody/none:Q4_K_M" }),
      rejectsWith("E_DOWNLOAD", /not found/),
    );
    const left: string[] = [];
    for await (const e of Deno.readDir(dir)) left.push(e.name);
    assert.ok(!left.includes("Model-Q4_K_M.gguf"));
  });
});

Deno.test("quant tags match whole name parts", () => {
  assert.ok(isQuantTag("Q4_K_M") && isQuantTag("UD-Q4_K_XL"));
  assert.ok(!isQuantTag("model.gguf") && !isQuantTag("dir/x") && !isQuantTag(""));
  const f = (path: string): RepoFile => ({ path, size: 1, sha256: null });
  const repo = [f("a/Llama-3.2-1B-Instruct-Q4_0.gguf"), f("Llama-3.2-1B-Instruct-Q4_0_4_4.gguf")];
  assert.equal(pickQuantFile(repo, "q4_0", "o/r").path, "a/Llama-3.2-1B-Instruct-Q4_0.gguf");
  assert.equal(pickQuantFile(repo, "Q4_0_4_4", "o/r").path, "Llama-3.2-1B-Instruct-Q4_0_4_4.gguf");
  assert.throws(() => pickQuantFile([f("README.md")], "Q4_0", "o/r"), /holds no GGUF/);
});

Deno.test("--hf owner/repo without a quant picks what llama.cpp's -hf picks, and says so", async () => {
  await withHub({}, async (hub, env, dir) => {
    const told: string[] = [];
    const path = await resolveModelPath({
      env,
      hf: REPO,
      onPick: (file, why) => told.push(`${file}: ${why}`),
    });
    assert.equal(path, `${dir}/models/${REPO}/main/Model-Q4_K_M.gguf`);
    assert.deepEqual(told, ["Model-Q4_K_M.gguf: no quant given: Q4_K_M, llama.cpp's default"]);
    assert.match(
      await resolveModelPath({ env, hf: `${REPO}@v2` }),
      /\/v2\/Model-Q4_K_M\.gguf$/,
    );
    // Offline, the default choice among the verified downloads in the cache.
    await hub.close();
    const offline = (n: string) => n === "HF_ENDPOINT" ? "http://127.0.0.1:9" : env(n);
    assert.equal(await resolveModelPath({ env: offline, hf: REPO }), path);
  });
});

Deno.test("the default choice: Q4_K_M, then Q8_0, then the first model GGUF, as llama.cpp", () => {
  const f = (path: string): RepoFile => ({ path, size: 1, sha256: null });
  const pick = (paths: string[]) => pickDefaultFile(paths.map(f), "o/r");
  // Listing order decides between two Q4_K_M files, as in llama.cpp's find_best_model.
  assert.equal(
    pick(["m-Q8_0.gguf", "m-Q4_K_M-imat.gguf", "m-Q4_K_M.gguf"]).file.path,
    "m-Q4_K_M-imat.gguf",
  );
  const q8 = pick(["mmproj-m-Q4_K_M.gguf", "m-F16.gguf", "m.q8_0.gguf"]);
  assert.equal(q8.file.path, "m.q8_0.gguf");
  assert.match(q8.why, /Q8_0/);
  const first = pick(["README.md", "imatrix-m.gguf", "m-IQ4_XS.gguf", "m-F16.gguf"]);
  assert.equal(first.file.path, "m-IQ4_XS.gguf");
  assert.match(first.why, /first GGUF/);
  // A Q4_K_M split into parts is what llama.cpp takes; this engine refuses it, saying how to merge.
  assert.throws(
    () => pick(["m-Q4_K_M-00002-of-00002.gguf", "m-Q4_K_M-00001-of-00002.gguf", "m-Q8_0.gguf"]),
    /split into 2 files.*merge m-Q4_K_M-00001-of-00002\.gguf/,
  );
  assert.throws(() => pick(["README.md", "mmproj-F16.gguf"]), /holds no GGUF model/);
  assert.deepEqual(parseHfRef("o/r"), { repo: "o/r", file: "", revision: "main" });
  assert.deepEqual(parseHfRef("o/r@v2"), { repo: "o/r", file: "", revision: "v2" });
  assert.deepEqual(parseHfRef("o/r:Q8_0@v2"), { repo: "o/r", file: "Q8_0", revision: "v2" });
});
