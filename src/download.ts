/**
 * Finding the model to run: `--model PATH`, else `HC_MODEL`, else the default model, fetched
 * once from Hugging Face into the user's cache folder and checked against its sha256.
 * `--hf owner/repo:file` fetches any GGUF the same way; `--hf owner/repo:Q4_K_M` lists the
 * repository and picks the GGUF whose name carries that quant (see hf_pick.ts). Downloads go to `<file>.part`, renamed
 * into place only after the hash matches, so the cache never serves a partial file; a download
 * that stalls or loses its connection keeps the part, and the next run resumes it with a Range
 * request (the hash at the end covers the whole file, resumed bytes included).
 */
import { createHash } from "node:crypto";
import { HcError } from "./errors.ts";
import { isQuantTag, pickDefaultFile, pickQuantFile, type RepoFile } from "./hf_pick.ts";

export interface HfRef {
  /** owner/name */
  repo: string;
  /** Path of the file inside the repository. */
  file: string;
  /** Branch, tag or commit. */
  revision: string;
}

/** ggml-org's copy of karpathy's stories260K: 1.2 MB, runs anywhere, used by llama.cpp's CI. */
export const DEFAULT_MODEL: Readonly<HfRef & { sha256: string; bytes: number }> = Object.freeze({
  repo: "ggml-org/models",
  file: "tinyllamas/stories260K.gguf",
  revision: "main",
  sha256: "270cba1bd5109f42d03350f60406024560464db173c0e387d91f0426d3bd256d",
  bytes: 1_185_376,
});

export const DEFAULT_HF_ENDPOINT = "https://huggingface.co";

/** Bytes done and total (null when the server does not say). */
export type DownloadProgress = (doneBytes: number, totalBytes: number | null) => void;

export interface DownloadOptions {
  /** Hugging Face endpoint. Default: $HF_ENDPOINT, else https://huggingface.co. */
  endpoint?: string;
  /** Cache folder. Default: cacheDir(). */
  cacheDir?: string;
  /** Expected sha256 (hex). Without it, the hash the server announces is checked when it sends one. */
  sha256?: string;
  onProgress?: DownloadProgress;
  signal?: AbortSignal;
  /** Most ms from sending a request to its response headers (connecting included). Default 30 s. */
  connectTimeoutMs?: number;
  /** Most ms without a byte of the body before the download gives up. Default 60 s. */
  idleTimeoutMs?: number;
}

export const DEFAULT_CONNECT_TIMEOUT_MS = 30_000;
export const DEFAULT_IDLE_TIMEOUT_MS = 60_000;

const SEGMENT = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

function checkSegments(what: string, value: string, spec: string): void {
  for (const seg of value.split("/")) {
    if (!SEGMENT.test(seg) || seg === "." || seg === "..") {
      throw new HcError(
        "E_BAD_REQUEST",
        `bad ${what} in "${spec}": expected owner/repo:path/file.gguf or owner/repo:QUANT, then [@revision]`,
      );
    }
  }
}

/**
 * Parses `owner/repo:path/to/file.gguf`, `owner/repo:QUANT` (`file` is then the tag, see
 * `isQuantTag`) or `owner/repo` (`file` is "": the repo's default GGUF, see pickDefaultFile),
 * optionally followed by `@revision`.
 */
export function parseHfRef(spec: string): HfRef {
  // Without ':', no file nor quant: `file` is "" and the repo's default GGUF is chosen.
  const colon = spec.indexOf(":") >= 0 ? spec.indexOf(":") : spec.lastIndexOf("@");
  const repo = colon < 0 ? spec : spec.slice(0, colon);
  let file = colon < 0 ? "" : spec[colon] === ":" ? spec.slice(colon + 1) : spec.slice(colon);
  let revision = "main";
  const at = file.lastIndexOf("@");
  if (at >= 0) {
    revision = file.slice(at + 1);
    file = file.slice(0, at);
  }
  if (repo.split("/").length !== 2) {
    throw new HcError("E_BAD_REQUEST", `--hf needs the repository as owner/name, got "${repo}"`);
  }
  checkSegments("repository", repo, spec);
  if (spec.includes(":")) checkSegments("file path", file, spec);
  checkSegments("revision", revision, spec);
  return { repo, file, revision };
}

/** The user's cache folder for HeteroCache: $HC_CACHE_DIR, else the platform's cache folder. */
export function cacheDir(
  env: (name: string) => string | undefined = (n) => Deno.env.get(n),
): string {
  const own = env("HC_CACHE_DIR");
  if (own) return own;
  const home = env("HOME") ?? env("USERPROFILE");
  if (Deno.build.os === "windows") {
    const base = env("LOCALAPPDATA") ?? (home ? `${home}\\AppData\\Local` : null);
    if (base) return `${base}\\heterocache`;
  } else if (Deno.build.os === "darwin") {
    if (home) return `${home}/Library/Caches/heterocache`;
  } else {
    const xdg = env("XDG_CACHE_HOME");
    if (xdg) return `${xdg}/heterocache`;
    if (home) return `${home}/.cache/heterocache`;
  }
  throw new HcError("E_IO", "no cache folder: set HC_CACHE_DIR (or HOME) to a writable folder");
}

/** Where a Hugging Face file lives in the cache. */
export function cachedPath(ref: HfRef, dir: string): string {
  return `${dir}/models/${ref.repo}/${ref.revision}/${ref.file}`;
}

function fileUrl(ref: HfRef, endpoint: string): string {
  const file = ref.file.split("/").map(encodeURIComponent).join("/");
  return `${endpoint.replace(/\/+$/, "")}/${ref.repo}/resolve/${
    encodeURIComponent(ref.revision)
  }/${file}`;
}

function offlineHint(): string {
  return "To run without network, point at a local GGUF file: `--model PATH` or `HC_MODEL=PATH`.";
}

/** A sha256 from Hugging Face's headers: LFS files carry it as X-Linked-Etag (or ETag). */
function announcedSha256(headers: Headers): string | null {
  for (const name of ["x-linked-etag", "etag"]) {
    const v = headers.get(name)?.replace(/^W\//, "").replaceAll('"', "").toLowerCase();
    if (v && /^[0-9a-f]{64}$/.test(v)) return v;
  }
  return null;
}

async function exists(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isFile;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

/** The recorded hash of a cached file (written only after a verified download). */
async function recordedSha256(path: string): Promise<string | null> {
  try {
    return (await Deno.readTextFile(`${path}.sha256`)).trim();
  } catch {
    return null;
  }
}

const MAX_REDIRECTS = 5;

function timeoutOpt(name: string, v: number | undefined, fallback: number): number {
  const ms = v ?? fallback;
  if (!(ms > 0) || !Number.isFinite(ms)) {
    throw new HcError("E_BAD_REQUEST", `${name} must be a positive number of ms, got ${v}`);
  }
  return ms;
}

const seconds = (ms: number) => `${ms >= 10_000 ? (ms / 1000).toFixed(0) : ms / 1000} s`;

/**
 * One download's abort: the caller's signal, or a timeout this module armed (the reason it
 * records tells the two apart, so the error can say which).
 */
class Deadline {
  readonly controller = new AbortController();
  timedOut: "connect" | "idle" | null = null;
  #timer: ReturnType<typeof setTimeout> | undefined;
  readonly #onAbort = () => this.controller.abort();
  readonly #outer?: AbortSignal;

  constructor(outer?: AbortSignal) {
    this.#outer = outer;
    if (outer?.aborted) this.controller.abort();
    outer?.addEventListener("abort", this.#onAbort, { once: true });
  }

  get signal(): AbortSignal {
    return this.controller.signal;
  }

  arm(kind: "connect" | "idle", ms: number): void {
    this.disarm();
    this.#timer = setTimeout(() => {
      this.timedOut = kind;
      this.controller.abort();
    }, ms);
  }

  disarm(): void {
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  dispose(): void {
    this.disarm();
    this.#outer?.removeEventListener("abort", this.#onAbort);
  }
}

/** Follows redirects by hand so the headers of the first answer (the announced hash) are seen. */
async function fetchFollowing(
  url: string,
  deadline: Deadline,
  connectMs: number,
  headers: HeadersInit,
): Promise<{ res: Response; sha256: string | null }> {
  let sha256: string | null = null;
  let at = url;
  for (let hop = 0; hop <= MAX_REDIRECTS; hop++) {
    let res: Response;
    deadline.arm("connect", connectMs);
    try {
      res = await fetch(at, { redirect: "manual", signal: deadline.signal, headers });
    } catch (e) {
      if (deadline.timedOut === "connect") {
        throw new HcError(
          "E_DOWNLOAD",
          `no answer from ${new URL(at).origin} within ${
            seconds(connectMs)
          } (connecting and waiting for the response) while downloading ${url}. ${offlineHint()}`,
          { cause: e },
        );
      }
      if (deadline.signal.aborted) throw new HcError("E_ABORTED", "download aborted");
      throw new HcError(
        "E_DOWNLOAD",
        `could not reach ${new URL(at).origin} to download ${url}: ${
          (e as Error).message
        }. ${offlineHint()}`,
        { cause: e },
      );
    } finally {
      deadline.disarm();
    }
    sha256 ??= announcedSha256(res.headers);
    if (res.status >= 300 && res.status < 400 && res.headers.get("location")) {
      await res.body?.cancel();
      at = new URL(res.headers.get("location")!, at).href;
      continue;
    }
    if (!res.ok && res.status !== 416) {
      await res.body?.cancel();
      const why = res.status === 404
        ? "not found (check the repository, file name and revision)"
        : res.status === 401 || res.status === 403
        ? "access denied (gated or private repositories are not supported)"
        : `HTTP ${res.status}`;
      throw new HcError("E_DOWNLOAD", `could not download ${url}: ${why}. ${offlineHint()}`);
    }
    return { res, sha256 };
  }
  throw new HcError(
    "E_DOWNLOAD",
    `could not download ${url}: more than ${MAX_REDIRECTS} redirects`,
  );
}

/** Size of the partial file left by an earlier run (0: none). */
async function partialBytes(path: string): Promise<number> {
  try {
    const info = await Deno.stat(path);
    return info.isFile ? info.size : 0;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return 0;
    throw e;
  }
}

/** Total file size from a 206's `Content-Range: bytes a-b/total` (null when it does not say). */
function rangeTotal(res: Response, from: number): number | null {
  const m = /^bytes (\d+)-\d+\/(\d+|\*)$/.exec(res.headers.get("content-range") ?? "");
  if (!m || Number(m[1]) !== from) return null;
  return m[2] === "*" ? null : Number(m[2]);
}

/**
 * The cached copy of a Hugging Face file, downloading it first if needed. A cached file is used
 * only if its verified hash was recorded (and equals `sha256` when one is expected).
 */
export async function downloadHf(ref: HfRef, opts: DownloadOptions = {}): Promise<string> {
  const dir = opts.cacheDir ?? cacheDir();
  const dest = cachedPath(ref, dir);
  const expected = opts.sha256?.toLowerCase() ?? null;
  if (await exists(dest)) {
    const recorded = await recordedSha256(dest);
    if (recorded !== null && (expected === null || recorded === expected)) return dest;
  }
  const connectMs = timeoutOpt(
    "connectTimeoutMs",
    opts.connectTimeoutMs,
    DEFAULT_CONNECT_TIMEOUT_MS,
  );
  const idleMs = timeoutOpt("idleTimeoutMs", opts.idleTimeoutMs, DEFAULT_IDLE_TIMEOUT_MS);
  const endpoint = opts.endpoint ?? Deno.env.get("HF_ENDPOINT") ?? DEFAULT_HF_ENDPOINT;
  const url = fileUrl(ref, endpoint);
  const part = `${dest}.part`;
  const deadline = new Deadline(opts.signal);
  try {
    let have = await partialBytes(part);
    let { res, sha256: announced } = await fetchFollowing(
      url,
      deadline,
      connectMs,
      have > 0 ? { range: `bytes=${have}-` } : {},
    );
    if (have > 0 && (res.status !== 206 || rangeTotal(res, have) === null)) {
      // The server does not continue from the part's end (no ranges, or the file changed size):
      // start again from the first byte. A part that is not a prefix of the file fails the hash.
      await res.body?.cancel();
      await Deno.remove(part).catch(() => {});
      have = 0;
      ({ res, sha256: announced } = await fetchFollowing(url, deadline, connectMs, {}));
    }
    if (res.status === 416) {
      await res.body?.cancel();
      throw new HcError("E_DOWNLOAD", `could not download ${url}: HTTP 416. ${offlineHint()}`);
    }
    const want = expected ?? announced;
    const lengthHeader = res.headers.get("content-length");
    const length = lengthHeader !== null && /^\d+$/.test(lengthHeader)
      ? Number(lengthHeader)
      : null;
    const total = have > 0 ? rangeTotal(res, have) : length;
    await Deno.mkdir(dest.slice(0, dest.lastIndexOf("/")), { recursive: true });
    const hash = createHash("sha256");
    let done = 0;
    // Bytes of an earlier run count in the hash: read them back from the part.
    if (have > 0) {
      using old = await Deno.open(part, { read: true });
      for await (const chunk of old.readable) {
        hash.update(chunk);
        done += chunk.byteLength;
      }
      if (done !== have) have = done;
    }
    const file = await Deno.open(part, { write: true, create: true, append: have > 0 });
    if (have === 0) await file.truncate(0);
    try {
      opts.onProgress?.(done, total);
      const reader = res.body!.getReader();
      for (;;) {
        deadline.arm("idle", idleMs);
        let r: ReadableStreamReadResult<Uint8Array>;
        try {
          r = await reader.read();
        } finally {
          deadline.disarm();
        }
        if (r.done) break;
        const chunk = r.value;
        hash.update(chunk);
        let off = 0;
        while (off < chunk.byteLength) off += await file.write(chunk.subarray(off));
        done += chunk.byteLength;
        opts.onProgress?.(done, total);
      }
    } catch (e) {
      const of = total !== null ? ` of ${total}` : "";
      if (deadline.timedOut === "idle") {
        throw new HcError(
          "E_DOWNLOAD",
          `download of ${url} stalled: no data for ${
            seconds(idleMs)
          } after ${done}${of} bytes; run again to resume from there`,
          { cause: e },
        );
      }
      if (deadline.signal.aborted) throw new HcError("E_ABORTED", "download aborted");
      throw new HcError(
        "E_DOWNLOAD",
        `download of ${url} broke off after ${done}${of} bytes (${
          (e as Error).message
        }); run again to resume from there`,
        { cause: e },
      );
    } finally {
      file.close();
    }
    if (total !== null && done !== total) {
      throw new HcError(
        "E_DOWNLOAD",
        `download of ${url} ended after ${done} of ${total} bytes; run again to resume from there`,
      );
    }
    const got = hash.digest("hex");
    if (want !== null && got !== want) {
      await Deno.remove(part).catch(() => {});
      throw new HcError(
        "E_DOWNLOAD",
        `the file downloaded from ${url} has sha256 ${got}, expected ${want}; it was discarded. Run again to retry`,
      );
    }
    await Deno.rename(part, dest);
    await Deno.writeTextFile(`${dest}.sha256`, got + "\n");
    return dest;
  } catch (e) {
    if (e instanceof HcError) throw e;
    if (opts.signal?.aborted) throw new HcError("E_ABORTED", "download aborted");
    throw new HcError(
      "E_DOWNLOAD",
      `download of ${url} failed: ${(e as Error).message}. ${offlineHint()}`,
      { cause: e },
    );
  } finally {
    deadline.dispose();
  }
}

/** One entry of Hugging Face's tree API (`GET /api/models/{repo}/tree/{revision}`). */
interface TreeEntry {
  type?: string;
  path?: string;
  size?: number;
  lfs?: { oid?: string; size?: number };
}

/** The next page of a paginated listing, from `Link: <url>; rel="next"`. */
function nextPage(res: Response, at: string): string | null {
  const m = /<([^>]+)>;\s*rel="next"/.exec(res.headers.get("link") ?? "");
  return m ? new URL(m[1], at).href : null;
}

/** Every file of a repository at a revision, through Hugging Face's tree API (all pages). */
export async function listHfRepo(
  repo: string,
  revision: string,
  opts: DownloadOptions = {},
): Promise<RepoFile[]> {
  const connectMs = timeoutOpt(
    "connectTimeoutMs",
    opts.connectTimeoutMs,
    DEFAULT_CONNECT_TIMEOUT_MS,
  );
  const idleMs = timeoutOpt("idleTimeoutMs", opts.idleTimeoutMs, DEFAULT_IDLE_TIMEOUT_MS);
  const endpoint = (opts.endpoint ?? Deno.env.get("HF_ENDPOINT") ?? DEFAULT_HF_ENDPOINT)
    .replace(/\/+$/, "");
  const first = `${endpoint}/api/models/${repo}/tree/${
    encodeURIComponent(revision)
  }?recursive=true`;
  const files: RepoFile[] = [];
  const deadline = new Deadline(opts.signal);
  try {
    for (let at: string | null = first, pages = 0; at !== null; pages++) {
      if (pages >= 100) {
        throw new HcError("E_DOWNLOAD", `the file list of ${repo} runs past 100 pages`);
      }
      const { res } = await fetchFollowing(at, deadline, connectMs, { accept: "application/json" });
      let entries: unknown;
      deadline.arm("idle", idleMs);
      try {
        entries = await res.json();
      } catch (e) {
        if (deadline.timedOut === "idle") {
          throw new HcError("E_DOWNLOAD", `the file list of ${repo} stalled`, { cause: e });
        }
        if (deadline.signal.aborted) throw new HcError("E_ABORTED", "download aborted");
        throw new HcError("E_DOWNLOAD", `the file list of ${repo} is not JSON (${at})`, {
          cause: e,
        });
      } finally {
        deadline.disarm();
      }
      if (!Array.isArray(entries)) {
        throw new HcError("E_DOWNLOAD", `the file list of ${repo} is not a JSON array (${at})`);
      }
      for (const e of entries as TreeEntry[]) {
        if (e?.type !== "file" || typeof e.path !== "string") continue;
        const oid = e.lfs?.oid?.toLowerCase();
        files.push({
          path: e.path,
          size: e.lfs?.size ?? e.size ?? 0,
          sha256: oid && /^[0-9a-f]{64}$/.test(oid) ? oid : null,
        });
      }
      at = nextPage(res, at);
    }
    return files;
  } finally {
    deadline.dispose();
  }
}

/** Verified files of one repository revision in the cache (those with a recorded hash). */
async function cachedRepoFiles(dir: string, under = ""): Promise<RepoFile[]> {
  const out: RepoFile[] = [];
  let entries: Deno.DirEntry[];
  try {
    entries = await Array.fromAsync(Deno.readDir(`${dir}/${under}`));
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return out;
    throw e;
  }
  for (const e of entries) {
    const path = under + e.name;
    if (e.isDirectory) out.push(...await cachedRepoFiles(dir, `${path}/`));
    else if (e.isFile && !path.endsWith(".sha256") && !path.endsWith(".part")) {
      const sha256 = await recordedSha256(`${dir}/${path}`);
      if (sha256 !== null) {
        out.push({ path, size: (await Deno.stat(`${dir}/${path}`)).size, sha256 });
      }
    }
  }
  return out;
}

/** The file `pickQuantFile` chooses among the verified downloads in the cache, else null. */
async function cachedQuant(ref: HfRef, dir: string, sha256?: string): Promise<string | null> {
  const root = cachedPath({ ...ref, file: "" }, dir).replace(/\/$/, "");
  const files = await cachedRepoFiles(root);
  try {
    const picked = ref.file === ""
      ? pickDefaultFile(files, ref.repo).file
      : pickQuantFile(files, ref.file, ref.repo);
    if (sha256 !== undefined && picked.sha256 !== sha256.toLowerCase()) return null;
    return `${root}/${picked.path}`;
  } catch {
    return null; // not cached, or not one clear choice there
  }
}

export interface ResolveModelOptions extends DownloadOptions {
  /** --model PATH */
  model?: string;
  /** --hf owner/repo:file, or owner/repo:QUANT (e.g. Q4_K_M) to pick the file by its name, or
   * owner/repo for the file llama.cpp's -hf picks by default */
  hf?: string;
  /** Told which file a quant tag or the default choice picked, and why. */
  onPick?: (path: string, why: string) => void;
  /** Environment lookup (tests pass their own). Default: Deno.env. */
  env?: (name: string) => string | undefined;
}

/** The model file to load: --model, else --hf, else $HC_MODEL, else the default model. */
export async function resolveModelPath(opts: ResolveModelOptions = {}): Promise<string> {
  if (opts.model !== undefined && opts.hf !== undefined) {
    throw new HcError("E_BAD_REQUEST", "give either --model or --hf, not both");
  }
  const env = opts.env ?? ((n: string) => Deno.env.get(n));
  const local = opts.model ?? (opts.hf === undefined ? env("HC_MODEL") : undefined);
  if (local !== undefined && local !== "") {
    const from = opts.model === undefined ? " (from HC_MODEL)" : "";
    let info: Deno.FileInfo;
    try {
      info = await Deno.stat(local);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) {
        throw new HcError("E_IO", `model file ${local} does not exist${from}`);
      }
      throw new HcError(
        "E_IO",
        `cannot read the model file ${local}${from}: ${(e as Error).message}`,
      );
    }
    if (info.isDirectory) {
      throw new HcError(
        "E_IO",
        `${local}${from} is a directory, not a model file; give the .gguf file inside it`,
      );
    }
    return local;
  }
  const dl: DownloadOptions = {
    endpoint: opts.endpoint ?? env("HF_ENDPOINT"),
    cacheDir: opts.cacheDir ?? cacheDir(env),
    onProgress: opts.onProgress,
    signal: opts.signal,
    connectTimeoutMs: opts.connectTimeoutMs,
    idleTimeoutMs: opts.idleTimeoutMs,
  };
  if (opts.hf !== undefined) {
    const ref = parseHfRef(opts.hf);
    if (ref.file !== "" && !isQuantTag(ref.file)) {
      return await downloadHf(ref, { ...dl, sha256: opts.sha256 });
    }
    let files: RepoFile[];
    try {
      files = await listHfRepo(ref.repo, ref.revision, dl);
    } catch (e) {
      // Offline (or the hub failing), a verified download of this quant in the cache still runs.
      const cached = e instanceof HcError && e.code === "E_DOWNLOAD"
        ? await cachedQuant(ref, dl.cacheDir!, opts.sha256)
        : null;
      if (cached === null) throw e;
      return cached;
    }
    const { file: picked, why } = ref.file === ""
      ? pickDefaultFile(files, ref.repo)
      : { file: pickQuantFile(files, ref.file, ref.repo), why: `quant ${ref.file}` };
    opts.onPick?.(picked.path, why);
    return await downloadHf(
      { ...ref, file: picked.path },
      { ...dl, sha256: opts.sha256 ?? picked.sha256 ?? undefined },
    );
  }
  return await downloadHf(DEFAULT_MODEL, { ...dl, sha256: DEFAULT_MODEL.sha256 });
}
