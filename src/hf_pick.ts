/**
 * Choosing a GGUF from a Hugging Face repository by quant tag (`--hf owner/repo:Q4_K_M`), by
 * file name as people name them there: `Model-Q4_K_M.gguf`, `model.q8_0.gguf`,
 * `UD-Q4_K_XL/Model-UD-Q4_K_XL-00001-of-00002.gguf`. The tag matches case-insensitively as a
 * whole name part, so `Q4_K` does not pick `Q4_K_M` and `Q4_XS` does not pick `IQ4_XS`.
 * Without a tag (`--hf owner/repo`), `pickDefaultFile` chooses as llama.cpp's `-hf` does.
 */
import { HcError } from "./errors.ts";

export interface RepoFile {
  /** Path inside the repository. */
  readonly path: string;
  readonly size: number;
  /** sha256 of an LFS file (its oid), else null. */
  readonly sha256: string | null;
}

/** `-00001-of-00003.gguf`: one part of a file llama.cpp's gguf-split cut up. */
const SPLIT = /-(\d{5})-of-(\d{5})\.gguf$/i;
const GGUF = /\.gguf$/i;
/** Vision projectors ride along in many repos; they are never the model. */
const PROJECTOR = /mmproj/i;
/** What llama.cpp's `-hf` never takes for the model (common/download.cpp,
 * gguf_filename_is_model: projectors, importance matrices, draft and speculative heads). */
const NOT_MODEL = /mmproj|imatrix|mtp-|eagle3-|dflash-|dspark-/;

/** llama.cpp's `-hf` without a quant tries these, in order, before the first model GGUF. */
export const DEFAULT_QUANTS = ["Q4_K_M", "Q8_0"] as const;

/** A quant tag is a name part: no folder and no dot (a file name has `.gguf`). */
export function isQuantTag(s: string): boolean {
  return s.length > 0 && !s.includes("/") && !s.includes(".");
}

function hasTag(path: string, tag: string): boolean {
  const p = path.toLowerCase();
  const t = tag.toLowerCase();
  for (let at = p.indexOf(t); at >= 0; at = p.indexOf(t, at + 1)) {
    const before = at === 0 ? "" : p[at - 1];
    const after = p[at + t.length] ?? "";
    if ((before === "" || "-._/".includes(before)) && (after === "" || "-./".includes(after))) {
      return true;
    }
  }
  return false;
}

const mib = (n: number) => `${(n / 2 ** 20).toFixed(n < 10 * 2 ** 20 ? 1 : 0)} MiB`;

function listing(files: readonly RepoFile[]): string {
  const shown = files.slice(0, 40).map((f) => `${f.path} (${mib(f.size)})`);
  if (files.length > shown.length) shown.push(`and ${files.length - shown.length} more`);
  return shown.join(", ");
}

/** The one GGUF of `files` whose name carries `tag`; otherwise an error that lists the repo's. */
export function pickQuantFile(files: readonly RepoFile[], tag: string, repo: string): RepoFile {
  const models = files.filter((f) => GGUF.test(f.path) && !PROJECTOR.test(f.path));
  if (models.length === 0) {
    throw new HcError("E_BAD_REQUEST", `${repo} holds no GGUF model file`);
  }
  const matching = models.filter((f) => hasTag(f.path, tag));
  if (matching.length === 0) {
    throw new HcError(
      "E_BAD_REQUEST",
      `${repo} has no GGUF for quant '${tag}'; its GGUF files: ${listing(models)}. ` +
        `Give a quant from those names, or the file itself as ${repo}:FILE.gguf`,
    );
  }
  // Parts of one split file count as one choice.
  const groups = new Map<string, RepoFile[]>();
  for (const f of matching) {
    const key = f.path.replace(SPLIT, "");
    groups.set(key, [...groups.get(key) ?? [], f]);
  }
  if (groups.size > 1) {
    throw new HcError(
      "E_BAD_REQUEST",
      `quant '${tag}' matches ${groups.size} GGUFs in ${repo}: ${listing(matching)}. ` +
        `Give the one you want as ${repo}:FILE.gguf`,
    );
  }
  const [parts] = groups.values();
  const m = SPLIT.exec(parts[0].path);
  if (m) {
    const first = parts.find((f) => SPLIT.exec(f.path)?.[1] === "00001") ?? parts[0];
    throw new HcError(
      "E_MODEL_FORMAT",
      `${repo}'s '${tag}' is split into ${Number(m[2])} files (${listing(parts)}); ` +
        `this engine loads single-file GGUFs. Download the parts, merge them with llama.cpp's ` +
        `\`llama-gguf-split --merge ${first.path.split("/").pop()} merged.gguf\` and run that ` +
        `with --model, or choose a quant that comes in one file`,
    );
  }
  return parts[0];
}

/**
 * The GGUF llama.cpp's `-hf owner/repo` (no quant) downloads (common/download.cpp,
 * find_best_model): the first model file, in the repository's listing order, whose name has
 * Q4_K_M, else Q8_0, followed by '.' or '-' (any case), else the first model file. Only the
 * first part of a split file counts. Returns the file and why it was chosen; a split choice is
 * refused as pickQuantFile refuses it.
 */
export function pickDefaultFile(
  files: readonly RepoFile[],
  repo: string,
): { file: RepoFile; why: string } {
  const models = files.filter((f) => {
    const name = f.path.split("/").pop()!;
    if (!GGUF.test(f.path) || NOT_MODEL.test(name)) return false;
    const split = SPLIT.exec(f.path);
    return !split || split[1] === "00001";
  });
  if (models.length === 0) {
    throw new HcError("E_BAD_REQUEST", `${repo} holds no GGUF model file`);
  }
  const chosen = (file: RepoFile, why: string) => {
    // A split choice: the same refusal, with the merge command, as for a quant tag.
    if (SPLIT.test(file.path)) pickQuantFile(files, file.path.replace(SPLIT, ""), repo);
    return { file, why };
  };
  for (const tag of DEFAULT_QUANTS) {
    const re = new RegExp(`${tag}[.-]`, "i");
    const hit = models.find((f) => re.test(f.path));
    if (hit) return chosen(hit, `no quant given: ${tag}, llama.cpp's default`);
  }
  return chosen(
    models[0],
    `no quant given and no ${DEFAULT_QUANTS.join(" or ")} file: the first GGUF, as llama.cpp`,
  );
}
