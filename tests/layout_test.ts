/**
 * The repository's rooms: src/ holds production code only. Every file in src/ is reached by
 * imports from the production entry points (mod.ts, src/cli.ts), and nothing in src/ imports
 * the test oracles (testing/), tests or benchmarks.
 */
import assert from "node:assert/strict";
import { dirname, join, normalize, relative } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = normalize(join(dirname(fileURLToPath(import.meta.url)), ".."));
const IMPORT = /(?:from|import)\s*\(?\s*["'](\.{1,2}\/[^"']+\.ts)["']/g;

function sourceFiles(dir: string): string[] {
  const out: string[] = [];
  for (const e of Deno.readDirSync(join(ROOT, dir))) {
    const path = join(dir, e.name);
    if (e.isDirectory) out.push(...sourceFiles(path));
    else if (e.name.endsWith(".ts")) out.push(path);
  }
  return out;
}

/** Repository-relative paths this file imports (relative imports only). */
function importsOf(file: string): string[] {
  const text = Deno.readTextFileSync(join(ROOT, file));
  return [...text.matchAll(IMPORT)].map((m) => relative(ROOT, join(ROOT, dirname(file), m[1])));
}

Deno.test("every file in src/ is reached from mod.ts or src/cli.ts", () => {
  const seen = new Set<string>();
  const stack = ["mod.ts", join("src", "cli.ts")];
  while (stack.length) {
    const f = stack.pop()!;
    if (seen.has(f)) continue;
    seen.add(f);
    stack.push(...importsOf(f));
  }
  const unreached = sourceFiles("src").filter((f) => !seen.has(f)).sort();
  assert.deepEqual(unreached, [], "files only tests or benchmarks import belong in testing/");
});

Deno.test("src/ imports nothing from testing/, tests/ or bench/", () => {
  const wrong = sourceFiles("src").flatMap((f) =>
    importsOf(f).filter((t) => /^(testing|tests|bench)\//.test(t)).map((t) => `${f} -> ${t}`)
  );
  assert.deepEqual(wrong, []);
});
