/**
 * `deno task build`: makes sure the toolchain is there (installing it with apt-get when run as
 * root on Debian/Ubuntu), then compiles the shim into build/libhcvk.so and every shader variant
 * that shaders/variants.ts generates (each family's product of axes) into build/spv/<name>.spv,
 * validated with spirv-val. Work whose
 * outputs are newer than all their inputs is skipped. `--test-tools` also makes sure of what the
 * test suite needs beyond the build (a headless Chromium for the playground test).
 */
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { type ShaderVariant, shaderVariants } from "../shaders/variants.ts";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");
const BUILD = join(ROOT, "build");
const SPV = join(BUILD, "spv");
const NATIVE = join(ROOT, "vk-native");
const SHADERS = join(ROOT, "shaders");

/** What each tool is, how to probe it, and the Debian package that brings it. */
const REQUIREMENTS = [
  { what: "C compiler", probe: ["cc", "--version"], pkg: "gcc" },
  { what: "glslangValidator", probe: ["glslangValidator", "--version"], pkg: "glslang-tools" },
  { what: "spirv-val", probe: ["spirv-val", "--version"], pkg: "spirv-tools" },
  { what: "Vulkan headers", file: "/usr/include/vulkan/vulkan.h", pkg: "libvulkan-dev" },
  { what: "Vulkan loader", ldconfig: "libvulkan.so.1", pkg: "libvulkan1" },
  { what: "Vulkan driver", icd: true, pkg: "mesa-vulkan-drivers" },
];

async function run(
  cmd: string[],
  opts: { quiet?: boolean } = {},
): Promise<{ ok: boolean; out: string }> {
  try {
    const r = await new Deno.Command(cmd[0], {
      args: cmd.slice(1),
      stdout: "piped",
      stderr: "piped",
    }).output();
    const out = new TextDecoder().decode(r.stdout) + new TextDecoder().decode(r.stderr);
    if (!r.success && !opts.quiet) console.error(out);
    return { ok: r.success, out };
  } catch {
    return { ok: false, out: `${cmd[0]}: not found` };
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

async function hasIcd(): Promise<boolean> {
  const env = Deno.env.get("VK_DRIVER_FILES") ?? Deno.env.get("VK_ICD_FILENAMES");
  if (env) return true;
  for (
    const dir of ["/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d", "/usr/local/share/vulkan/icd.d"]
  ) {
    try {
      for await (const e of Deno.readDir(dir)) if (e.name.endsWith(".json")) return true;
    } catch { /* folder absent */ }
  }
  return false;
}

/** Needed by the tests only. */
const TEST_REQUIREMENTS = [
  { what: "Chromium (playground test)", probe: ["chromium", "--version"], pkg: "chromium" },
];

async function missingPackages(): Promise<{ what: string; pkg: string }[]> {
  const missing = [];
  const wanted = Deno.args.includes("--test-tools")
    ? [...REQUIREMENTS, ...TEST_REQUIREMENTS]
    : REQUIREMENTS;
  for (
    const r of wanted as {
      what: string;
      pkg: string;
      probe?: string[];
      file?: string;
      ldconfig?: string;
    }[]
  ) {
    let ok: boolean;
    if (r.probe) ok = (await run(r.probe, { quiet: true })).ok;
    else if (r.file) ok = await exists(r.file);
    else if (r.ldconfig) {
      ok = (await run(["ldconfig", "-p"], { quiet: true })).out.includes(r.ldconfig);
    } else ok = await hasIcd();
    if (!ok) missing.push({ what: r.what, pkg: r.pkg });
  }
  return missing;
}

async function ensureToolchain(): Promise<void> {
  let missing = await missingPackages();
  if (missing.length === 0) return;
  const pkgs = [...new Set(missing.map((m) => m.pkg))];
  const cmd = `apt-get install -y ${pkgs.join(" ")}`;
  const isRoot = Deno.uid?.() === 0;
  const hasApt = (await run(["apt-get", "--version"], { quiet: true })).ok;
  if (!isRoot || !hasApt) {
    throw new Error(
      `missing: ${missing.map((m) => m.what).join(", ")}. Install them with:\n  sudo ${cmd}`,
    );
  }
  console.log(
    `build: installing ${pkgs.join(", ")} (for ${missing.map((m) => m.what).join(", ")})`,
  );
  const env = { DEBIAN_FRONTEND: "noninteractive" };
  for (const args of [["update", "-qq"], ["install", "-y", "-qq", ...pkgs]]) {
    const r = await new Deno.Command("apt-get", { args, env, stdout: "inherit", stderr: "inherit" })
      .output();
    if (!r.success) throw new Error(`apt-get ${args[0]} failed; run: ${cmd}`);
  }
  missing = await missingPackages();
  if (missing.length) {
    throw new Error(`still missing after install: ${missing.map((m) => m.what).join(", ")}`);
  }
}

async function mtime(path: string): Promise<number> {
  try {
    return (await Deno.stat(path)).mtime?.getTime() ?? 0;
  } catch {
    return 0;
  }
}

async function newestOf(paths: string[]): Promise<number> {
  let t = 0;
  for (const p of paths) t = Math.max(t, await mtime(p));
  return t;
}

async function listFiles(dir: string, ext: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) {
    if (e.isFile && e.name.endsWith(ext)) out.push(join(dir, e.name));
  }
  return out.sort();
}

async function buildNative(): Promise<void> {
  const sources = await listFiles(NATIVE, ".c");
  const inputs = [...sources, ...(await listFiles(NATIVE, ".h"))];
  const lib = join(BUILD, "libhcvk.so");
  if ((await mtime(lib)) > (await newestOf(inputs))) return;
  console.log("build: compiling vk-native -> build/libhcvk.so");
  const r = await run([
    "cc",
    "-std=c11",
    "-D_GNU_SOURCE",
    "-O2",
    "-fPIC",
    "-shared",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-Wno-unused-parameter",
    "-o",
    lib,
    ...sources,
    "-lvulkan",
    "-lpthread",
  ]);
  if (!r.ok) throw new Error("compiling vk-native failed (see above)");
}

/** The generated variants, each name once. */
function listVariants(): ShaderVariant[] {
  const variants = shaderVariants();
  const seen = new Set<string>();
  for (const v of variants) {
    if (seen.has(v.name)) throw new Error(`shader variant ${v.name} generated twice`);
    seen.add(v.name);
  }
  return variants;
}

/** Compiles shaders/`file` with `defines` into `out` (SPIR-V for Vulkan 1.2). Also what the
 * tests use to build deliberately broken or instrumented variants (Device.open's shaderDir). */
export function compileShader(
  file: string,
  out: string,
  defines: Readonly<Record<string, string | number>>,
): Promise<{ ok: boolean; out: string }> {
  return run([
    "glslangValidator",
    "--quiet",
    "-V",
    "--target-env",
    "vulkan1.2",
    "-S",
    "comp",
    ...Object.entries(defines).map(([k, val]) => `-D${k}=${val}`),
    "-o",
    out,
    join(SHADERS, file),
  ], { quiet: true });
}

async function buildShaders(): Promise<void> {
  await Deno.mkdir(SPV, { recursive: true });
  const variants = listVariants();
  // A variant dropped from the table must not linger: the loader would still find it.
  const listed = new Set(variants.map((v) => `${v.name}.spv`));
  for (const stale of await listFiles(SPV, ".spv")) {
    if (!listed.has(stale.split("/").pop()!)) await Deno.remove(stale);
  }
  const includes = await listFiles(SHADERS, ".glsl");
  const includeTime = await newestOf(includes);
  // The table's defines change what a variant compiles to (TYPE comes from the ggml type ids).
  const tableTime = await newestOf([
    join(SHADERS, "variants.ts"),
    join(ROOT, "src", "gguf", "types.ts"),
  ]);
  const todo: ShaderVariant[] = [];
  for (const v of variants) {
    const src = join(SHADERS, v.file);
    const out = join(SPV, `${v.name}.spv`);
    if ((await mtime(out)) <= Math.max(await mtime(src), includeTime, tableTime)) todo.push(v);
  }
  if (todo.length === 0) return;
  console.log(`build: compiling ${todo.length} shader variant(s)`);
  const failures: string[] = [];
  const compileOne = async (v: ShaderVariant) => {
    const out = join(SPV, `${v.name}.spv`);
    const c = await compileShader(v.file, out, v.defines);
    if (!c.ok) {
      failures.push(`${v.name} (${v.file}): ${c.out.trim()}`);
      await Deno.remove(out).catch(() => {});
      return;
    }
    const val = await run(["spirv-val", "--target-env", "vulkan1.2", out], { quiet: true });
    if (!val.ok) {
      failures.push(`${v.name}: spirv-val: ${val.out.trim()}`);
      await Deno.remove(out).catch(() => {});
    }
  };
  const queue = [...todo];
  const workers = Array.from({ length: Math.max(1, navigator.hardwareConcurrency) }, async () => {
    for (let v = queue.shift(); v; v = queue.shift()) await compileOne(v);
  });
  await Promise.all(workers);
  if (failures.length) throw new Error(`shader build failed:\n${failures.join("\n")}`);
}

if (import.meta.main) {
  try {
    await Deno.mkdir(BUILD, { recursive: true });
    await ensureToolchain();
    await buildNative();
    await buildShaders();
  } catch (e) {
    console.error(`build: ${e instanceof Error ? e.message : e}`);
    Deno.exit(1);
  }
}
