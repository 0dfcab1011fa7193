/** Path helpers for the benchmark scripts (JSR's @std/path is unreachable; node:path works). */
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
export { dirname, join };

export function fromFileUrl(url: string | URL): string {
  return fileURLToPath(url);
}

/** Where the benchmarks write their JSON (only when asked: `--write`). */
const RESULTS_DIR = join(dirname(fileURLToPath(import.meta.url)), "results");

/** Reads bench/results/<name> (a result an earlier run wrote). */
export async function readResult<T>(name: string): Promise<T> {
  return JSON.parse(await Deno.readTextFile(join(RESULTS_DIR, name))) as T;
}

/** Writes `value` as bench/results/<name>; returns the path. */
export async function writeResult(name: string, value: unknown): Promise<string> {
  await Deno.mkdir(RESULTS_DIR, { recursive: true });
  const path = join(RESULTS_DIR, name);
  await Deno.writeTextFile(path, JSON.stringify(value, null, 2) + "\n");
  return path;
}
