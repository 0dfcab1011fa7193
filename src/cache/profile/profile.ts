/**
 * HeteroCache head profiles: our versioned JSON, and the importer for the official JSON
 * (docs/algorithm.md §1g).
 *
 * Our file (`schema: "heterocache-profile"`, `version: 1`):
 *
 * ```jsonc
 * {
 *   "schema": "heterocache-profile", "version": 1,
 *   "model": {            // what the profile was made for; null = not recorded (not checked)
 *     "arch": "llama",    // GGUF general.architecture
 *     "nLayers": 32, "nKvHeads": 8, "headDim": 128,
 *     "attnHash": "…"     // hash of the attention weights, computed by the caller
 *   },
 *   "params": {           // how it was made; null = unknown (official imports without a file name)
 *     "source": "calibrated" | "official",
 *     "topk": 1024, "stableThreshold": 0.5, "simThreshold": 0.5,
 *     "calibrationTokens": 5000,     // prompt length L of the calibration run
 *     "decodeSteps": 99,             // decode steps whose sets entered the stability median
 *     "similarityKeyTokens": 5000,   // key length of the step used for the similarity graph
 *     "groupReduce": "mean",         // GQA reduction of the calibration rows (§1b: mean)
 *     "poolKernel": 5
 *   },
 *   "layers": [{          // one per layer; arrays are indexed by ORIGINAL checkpoint KV head
 *     "roles": ["satellite", "pivot", …],
 *     "multipliers": [0.78, -1, …],  // -1 exactly for full heads (volatile, pivot)
 *     "stability": [0.61, 0.83, …],  // S_stable per head; null where unknown (official imports)
 *     "clusters": [{ "pivot": 6, "satellites": [0, 1, 2, 3, 5] }, …]  // greedy pick order
 *   }, …]
 * }
 * ```
 *
 * Head indices are never permuted: the engine handles ragged per-head caches, so the official
 * code's weight reordering is unnecessary. Cluster order is kept because `compat` mode
 * reproduces the official pivot/reference-set mix-up that depends on it (§9.1).
 */
import { HcError } from "../../errors.ts";

export const PROFILE_SCHEMA = "heterocache-profile";
export const PROFILE_VERSION = 1;

export type HeadRole = "anchor" | "volatile" | "pivot" | "satellite";
export const HEAD_ROLES: readonly HeadRole[] = ["anchor", "volatile", "pivot", "satellite"];

/** Volatile and pivot heads keep their whole prompt KV on the device. */
export function isFullRole(role: HeadRole): boolean {
  return role === "volatile" || role === "pivot";
}

export interface ProfileModel {
  arch: string | null;
  nLayers: number;
  nKvHeads: number;
  headDim: number | null;
  attnHash: string | null;
}

export interface ProfileParams {
  source: "calibrated" | "official";
  topk: number | null;
  stableThreshold: number | null;
  simThreshold: number | null;
  calibrationTokens: number | null;
  decodeSteps: number | null;
  similarityKeyTokens: number | null;
  groupReduce: "mean" | "max";
  poolKernel: number;
}

export interface Cluster {
  pivot: number;
  /** Sorted ascending. */
  satellites: number[];
}

export interface LayerProfile {
  roles: HeadRole[];
  multipliers: number[];
  stability: (number | null)[];
  clusters: Cluster[];
  /** A sliding-window layer's window (absent: global attention). Such a layer is never
   * compressed or refreshed: its heads are all volatile, with no clusters. */
  window?: number;
}

export interface HeadProfile {
  schema: typeof PROFILE_SCHEMA;
  version: typeof PROFILE_VERSION;
  model: ProfileModel;
  params: ProfileParams;
  layers: LayerProfile[];
}

/** What the engine knows about the loaded model, for `checkProfileMatches`. */
export interface ModelIdentity {
  arch: string;
  nLayers: number;
  nKvHeads: number;
  headDim: number;
  attnHash: string;
}

export type RoleCounts = Record<HeadRole, number>;

/** Bounds that keep a hostile file from making us allocate or loop without limit. */
const MAX_LAYERS = 1024;
const MAX_KV_HEADS = 1024;
const MAX_TEXT_CHARS = 64 * 1024 * 1024;

function fail(path: string, message: string): never {
  throw new HcError("E_PROFILE", `profile ${path}: ${message}`);
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function describe(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "an array";
  if (typeof v === "string") return JSON.stringify(v.length > 40 ? v.slice(0, 40) + "…" : v);
  return typeof v === "object" ? "an object" : String(v);
}

function parseText(text: string, what: string): unknown {
  if (text.length > MAX_TEXT_CHARS) {
    throw new HcError("E_PROFILE", `${what} is ${text.length} characters, over the 64 Mi limit`);
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new HcError("E_PROFILE", `${what} is not valid JSON: ${(e as Error).message}`, {
      cause: e,
    });
  }
}

function intIn(v: unknown, path: string, min: number, max: number): number {
  if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max) {
    fail(path, `expected an integer in [${min}, ${max}], got ${describe(v)}`);
  }
  return v;
}

function nullableInt(v: unknown, path: string, min: number, max: number): number | null {
  return v === null ? null : intIn(v, path, min, max);
}

function nullableThreshold(v: unknown, path: string): number | null {
  if (v === null) return null;
  if (typeof v !== "number" || !Number.isFinite(v) || v <= 0 || v > 1) {
    fail(path, `expected a number in (0, 1] or null, got ${describe(v)}`);
  }
  return v;
}

function nullableString(v: unknown, path: string): string | null {
  if (v === null) return null;
  if (typeof v !== "string" || v.length === 0 || v.length > 256) {
    fail(path, `expected a non-empty string (≤ 256 chars) or null, got ${describe(v)}`);
  }
  return v;
}

function arrayOf(v: unknown, path: string, length: number): unknown[] {
  if (!Array.isArray(v)) fail(path, `expected an array, got ${describe(v)}`);
  if (v.length !== length) fail(path, `expected ${length} entries, got ${v.length}`);
  return v;
}

function parseModel(v: unknown): ProfileModel {
  if (!isRecord(v)) fail("model", `expected an object, got ${describe(v)}`);
  return {
    arch: nullableString(v.arch, "model.arch"),
    nLayers: intIn(v.nLayers, "model.nLayers", 1, MAX_LAYERS),
    nKvHeads: intIn(v.nKvHeads, "model.nKvHeads", 1, MAX_KV_HEADS),
    headDim: nullableInt(v.headDim, "model.headDim", 1, 65536),
    attnHash: nullableString(v.attnHash, "model.attnHash"),
  };
}

function parseParams(v: unknown): ProfileParams {
  if (!isRecord(v)) fail("params", `expected an object, got ${describe(v)}`);
  if (v.source !== "calibrated" && v.source !== "official") {
    fail("params.source", `expected "calibrated" or "official", got ${describe(v.source)}`);
  }
  if (v.groupReduce !== "mean" && v.groupReduce !== "max") {
    fail("params.groupReduce", `expected "mean" or "max", got ${describe(v.groupReduce)}`);
  }
  const poolKernel = intIn(v.poolKernel, "params.poolKernel", 1, 1023);
  if (poolKernel % 2 === 0) fail("params.poolKernel", `must be odd, got ${poolKernel}`);
  return {
    source: v.source,
    topk: nullableInt(v.topk, "params.topk", 1, 2 ** 31 - 1),
    stableThreshold: nullableThreshold(v.stableThreshold, "params.stableThreshold"),
    simThreshold: nullableThreshold(v.simThreshold, "params.simThreshold"),
    calibrationTokens: nullableInt(v.calibrationTokens, "params.calibrationTokens", 1, 2 ** 31 - 1),
    decodeSteps: nullableInt(v.decodeSteps, "params.decodeSteps", 0, 2 ** 31 - 1),
    similarityKeyTokens: nullableInt(
      v.similarityKeyTokens,
      "params.similarityKeyTokens",
      1,
      2 ** 31 - 1,
    ),
    groupReduce: v.groupReduce,
    poolKernel,
  };
}

/**
 * Checks the invariants every layer must satisfy whatever its source: -1 multipliers exactly on
 * full heads, each pivot heads exactly one non-empty cluster, each satellite sits in exactly one.
 */
function checkLayer(layer: LayerProfile, path: string): void {
  const n = layer.roles.length;
  for (let h = 0; h < n; h++) {
    const m = layer.multipliers[h];
    if (isFullRole(layer.roles[h])) {
      if (m !== -1) {
        fail(`${path}.multipliers[${h}]`, `${layer.roles[h]} head must have -1, got ${m}`);
      }
    } else if (!(m > 0) || !Number.isFinite(m)) {
      fail(
        `${path}.multipliers[${h}]`,
        `${layer.roles[h]} head needs a finite multiplier > 0, got ${m}`,
      );
    }
  }
  const owner = new Array<number>(n).fill(-1);
  const pivotSeen = new Array<boolean>(n).fill(false);
  layer.clusters.forEach((c, ci) => {
    const cp = `${path}.clusters[${ci}]`;
    if (layer.roles[c.pivot] !== "pivot") {
      fail(`${cp}.pivot`, `head ${c.pivot} is ${layer.roles[c.pivot]}, not a pivot`);
    }
    if (pivotSeen[c.pivot]) fail(`${cp}.pivot`, `pivot ${c.pivot} heads two clusters`);
    pivotSeen[c.pivot] = true;
    if (c.satellites.length === 0) {
      fail(`${cp}.satellites`, "a cluster needs at least one satellite");
    }
    c.satellites.forEach((s, si) => {
      if (si > 0 && s <= c.satellites[si - 1]) {
        fail(`${cp}.satellites`, `must be strictly ascending, got [${c.satellites.join(", ")}]`);
      }
      if (layer.roles[s] !== "satellite") {
        fail(`${cp}.satellites`, `head ${s} is ${layer.roles[s]}, not a satellite`);
      }
      if (owner[s] !== -1) {
        fail(`${cp}.satellites`, `satellite ${s} already belongs to pivot ${owner[s]}`);
      }
      owner[s] = c.pivot;
    });
  });
  for (let h = 0; h < n; h++) {
    if (layer.roles[h] === "pivot" && !pivotSeen[h]) fail(path, `pivot ${h} has no cluster`);
    if (layer.roles[h] === "satellite" && owner[h] === -1) {
      fail(path, `satellite ${h} belongs to no cluster`);
    }
  }
}

function parseLayer(v: unknown, path: string, nKvHeads: number): LayerProfile {
  if (!isRecord(v)) fail(path, `expected an object, got ${describe(v)}`);
  const roles = arrayOf(v.roles, `${path}.roles`, nKvHeads).map((r, h) => {
    if (typeof r !== "string" || !(HEAD_ROLES as readonly string[]).includes(r)) {
      fail(`${path}.roles[${h}]`, `expected one of ${HEAD_ROLES.join("/")}, got ${describe(r)}`);
    }
    return r as HeadRole;
  });
  const multipliers = arrayOf(v.multipliers, `${path}.multipliers`, nKvHeads).map((m, h) => {
    if (typeof m !== "number") {
      fail(`${path}.multipliers[${h}]`, `expected a number, got ${describe(m)}`);
    }
    return m;
  });
  const stability = arrayOf(v.stability, `${path}.stability`, nKvHeads).map((s, h) => {
    if (s === null) return null;
    if (typeof s !== "number" || !(s >= 0 && s <= 1)) {
      fail(`${path}.stability[${h}]`, `expected a number in [0, 1] or null, got ${describe(s)}`);
    }
    return s;
  });
  if (!Array.isArray(v.clusters) || v.clusters.length > nKvHeads) {
    fail(`${path}.clusters`, `expected an array of at most ${nKvHeads} clusters`);
  }
  const clusters = v.clusters.map((c: unknown, ci: number): Cluster => {
    const cp = `${path}.clusters[${ci}]`;
    if (!isRecord(c)) fail(cp, `expected an object, got ${describe(c)}`);
    const pivot = intIn(c.pivot, `${cp}.pivot`, 0, nKvHeads - 1);
    if (!Array.isArray(c.satellites) || c.satellites.length >= nKvHeads) {
      fail(`${cp}.satellites`, `expected an array of fewer than ${nKvHeads} head indices`);
    }
    const satellites = c.satellites.map((s: unknown, si: number) =>
      intIn(s, `${cp}.satellites[${si}]`, 0, nKvHeads - 1)
    );
    return { pivot, satellites };
  });
  const layer: LayerProfile = { roles, multipliers, stability, clusters };
  if (v.window !== undefined) {
    layer.window = intIn(v.window, `${path}.window`, 1, 2 ** 31);
    if (!roles.every((r) => r === "volatile")) {
      fail(`${path}.roles`, "a sliding-window layer's heads must all be volatile");
    }
  }
  checkLayer(layer, path);
  return layer;
}

/**
 * The profile as the model's sliding-window layers (`windows`, one per layer, 0 for global)
 * need it: each such layer marked with its window and every head volatile (kept whole, never
 * refreshed: its ring is all it has), whatever the profile said of it (an official profile
 * knows nothing of windows; calibration skips those layers).
 */
export function markWindowLayers(p: HeadProfile, windows: readonly number[]): HeadProfile {
  if (!windows.some((w) => w > 0)) return p;
  return {
    ...p,
    layers: p.layers.map((l, i) => {
      const w = windows[i] ?? 0;
      if (w === 0) return l;
      const n = l.roles.length;
      return {
        roles: Array(n).fill("volatile"),
        multipliers: Array(n).fill(-1),
        stability: Array(n).fill(null),
        clusters: [],
        window: w,
      };
    }),
  };
}

/** Validates a profile in our schema (a JSON string or an already parsed value). */
export function parseProfile(json: unknown): HeadProfile {
  const v = typeof json === "string" ? parseText(json, "profile") : json;
  if (!isRecord(v)) fail("root", `expected an object, got ${describe(v)}`);
  if (v.schema !== PROFILE_SCHEMA) {
    fail(
      "schema",
      `expected "${PROFILE_SCHEMA}", got ${describe(v.schema)}` +
        (isRecord(v.meta) && "classification_matrix" in v
          ? " (this looks like an official HeteroCache JSON: use importOfficialProfile)"
          : ""),
    );
  }
  if (v.version !== PROFILE_VERSION) {
    fail("version", `this build reads version ${PROFILE_VERSION}, got ${describe(v.version)}`);
  }
  const model = parseModel(v.model);
  const params = parseParams(v.params);
  const layers = arrayOf(v.layers, "layers", model.nLayers).map((l, i) =>
    parseLayer(l, `layers[${i}]`, model.nKvHeads)
  );
  return { schema: PROFILE_SCHEMA, version: PROFILE_VERSION, model, params, layers };
}

const MODEL_KEYS = ["arch", "nLayers", "nKvHeads", "headDim", "attnHash"] as const;
const PARAM_KEYS = [
  "source",
  "topk",
  "stableThreshold",
  "simThreshold",
  "calibrationTokens",
  "decodeSteps",
  "similarityKeyTokens",
  "groupReduce",
  "poolKernel",
] as const;

/** Copies `keys` in the listed order, so the output never depends on the input's key order. */
function pick<T, K extends keyof T>(o: T, keys: readonly K[]): Pick<T, K> {
  return Object.fromEntries(keys.map((k) => [k, o[k]])) as Pick<T, K>;
}

/** Our JSON: one line per layer, so diffs between profiles stay readable. */
export function serializeProfile(p: HeadProfile): string {
  const layers = p.layers.map((l) =>
    "    " + JSON.stringify({
      roles: l.roles,
      multipliers: l.multipliers,
      stability: l.stability,
      clusters: l.clusters.map((c) => ({ pivot: c.pivot, satellites: c.satellites })),
      ...(l.window ? { window: l.window } : {}),
    })
  );
  return [
    "{",
    `  "schema": ${JSON.stringify(PROFILE_SCHEMA)},`,
    `  "version": ${PROFILE_VERSION},`,
    `  "model": ${JSON.stringify(pick(p.model, MODEL_KEYS))},`,
    `  "params": ${JSON.stringify(pick(p.params, PARAM_KEYS))},`,
    `  "layers": [`,
    layers.join(",\n"),
    "  ]",
    "}",
    "",
  ].join("\n");
}

export function roleCounts(p: HeadProfile): RoleCounts {
  const counts: RoleCounts = { anchor: 0, volatile: 0, pivot: 0, satellite: 0 };
  for (const l of p.layers) for (const r of l.roles) counts[r]++;
  return counts;
}

/** F in docs/algorithm.md §3: volatile + pivot heads over the whole model. */
export function fullHeadCount(p: HeadProfile): number {
  const c = roleCounts(p);
  return c.volatile + c.pivot;
}

/** Throws E_PROFILE_MISMATCH naming every field that differs; null profile fields are not checked. */
export function checkProfileMatches(p: HeadProfile, model: ModelIdentity): void {
  const diffs: string[] = [];
  const pm = p.model;
  if (pm.arch !== null && pm.arch !== model.arch) {
    diffs.push(`arch: profile ${pm.arch}, model ${model.arch}`);
  }
  if (pm.nLayers !== model.nLayers) {
    diffs.push(`layers: profile ${pm.nLayers}, model ${model.nLayers}`);
  }
  if (pm.nKvHeads !== model.nKvHeads) {
    diffs.push(`KV heads per layer: profile ${pm.nKvHeads}, model ${model.nKvHeads}`);
  }
  if (pm.headDim !== null && pm.headDim !== model.headDim) {
    diffs.push(`head dim: profile ${pm.headDim}, model ${model.headDim}`);
  }
  if (pm.attnHash !== null && pm.attnHash !== model.attnHash) {
    diffs.push(`attention weight hash: profile ${pm.attnHash}, model ${model.attnHash}`);
  }
  if (diffs.length > 0) {
    throw new HcError(
      "E_PROFILE_MISMATCH",
      `head profile was made for another model (${diffs.join("; ")}); ` +
        "calibrate this model with `hc calibrate` or load the profile made for it",
    );
  }
}

// ---------------------------------------------------------------------------------------------
// Official JSON import (docs/algorithm.md §1g)

const NEW_NAMES: Record<string, HeadRole> = {
  anchor: "anchor",
  volatile: "volatile",
  pivot: "pivot",
  satellite: "satellite",
};
/** The Qwen2.5-14B file's names (§1g, §9.5). */
const LEGACY_NAMES: Record<string, HeadRole> = {
  Stable_Unique: "anchor",
  Decaying_Unique: "volatile",
  Similar_Leader: "pivot",
  Similar_Member: "satellite",
};

export interface OfficialImportExpect {
  nLayers: number;
  nKvHeads: number;
  arch?: string;
  headDim?: number;
  attnHash?: string;
}

export interface OfficialImportOptions {
  /**
   * The official file name (`Head_Analysis_{model}_topk{k}_th{t}_sim{s}_step{n}.json`): the only
   * place the official code records its parameters. Explicit `params` fields win over it.
   */
  fileName?: string;
  params?: Partial<Pick<ProfileParams, "topk" | "stableThreshold" | "simThreshold">>;
}

/**
 * Makes every object key non-integer-like, so JSON.parse keeps the keys in text order: JS objects
 * list integer-like keys ("6", "4") in numeric order, which would lose the greedy pick order.
 * Only string tokens followed by ':' are touched; in valid JSON those are exactly the keys.
 */
function prefixObjectKeys(text: string): string {
  const parts: string[] = [];
  let last = 0;
  let i = 0;
  const n = text.length;
  while (i < n) {
    if (text.charCodeAt(i) !== 0x22) {
      i++;
      continue;
    }
    const start = i++;
    while (i < n && text.charCodeAt(i) !== 0x22) i += text.charCodeAt(i) === 0x5c ? 2 : 1;
    i++;
    let j = i;
    while (j < n && /\s/.test(text[j])) j++;
    if (text.charCodeAt(j) === 0x3a) {
      parts.push(text.slice(last, start + 1), "#");
      last = start + 1;
    }
  }
  parts.push(text.slice(last));
  return parts.join("");
}

/** Pivot keys of each layer's leader_member_relations, in the order they appear in the text. */
function relationKeyOrderFromText(text: string): string[][] | null {
  let v: unknown;
  try {
    v = JSON.parse(prefixObjectKeys(text));
  } catch {
    return null;
  }
  if (!isRecord(v) || !Array.isArray(v["#leader_member_relations"])) return null;
  return v["#leader_member_relations"].map((d: unknown) =>
    isRecord(d) ? Object.keys(d).map((k) => k.slice(1)) : []
  );
}

/**
 * Greedy star clustering picks pivots with non-increasing satellite counts, and among equal
 * counts the lower index first (a lower-index head with the same final count had at least that
 * count earlier, so it would have won the tie). Sorting by (count desc, index asc) therefore
 * recovers the pick order of any greedy-made profile when the text order is not available.
 */
function greedyOrder(clusters: Cluster[]): Cluster[] {
  return [...clusters].sort((a, b) =>
    b.satellites.length - a.satellites.length || a.pivot - b.pivot
  );
}

function parseFileNameParams(fileName: string): Partial<ProfileParams> {
  const m = /_topk(\d+)_th([0-9.]+)_sim([0-9.]+)_step(\d+)(?:\.json)?$/.exec(fileName);
  if (!m) return {};
  return {
    topk: Number(m[1]),
    stableThreshold: Number(m[2]),
    simThreshold: Number(m[3]),
    similarityKeyTokens: Number(m[4]),
  };
}

/**
 * Imports the official HeteroCache JSON. Pass the file's text to keep the cluster (dict) order
 * exactly as written; a pre-parsed object has lost it (integer-like keys), so the greedy order is
 * reconstructed instead (identical for every file the official code writes).
 */
export function importOfficialProfile(
  json: unknown,
  expected?: OfficialImportExpect,
  options: OfficialImportOptions = {},
): HeadProfile {
  const keyOrder = typeof json === "string" ? relationKeyOrderFromText(json) : null;
  const v = typeof json === "string" ? parseText(json, "official profile") : json;
  const f = (path: string, msg: string): never => {
    throw new HcError("E_PROFILE", `official profile ${path}: ${msg}`);
  };
  if (!isRecord(v)) return f("root", `expected an object, got ${describe(v)}`);
  if (!isRecord(v.meta) || !isRecord(v.meta.type_map)) f("meta.type_map", "missing");
  const meta = v.meta as Record<string, unknown>;
  const typeMap = meta.type_map as Record<string, unknown>;
  const names = Object.keys(typeMap);
  const table = names.every((k) => k in NEW_NAMES)
    ? NEW_NAMES
    : names.every((k) => k in LEGACY_NAMES)
    ? LEGACY_NAMES
    : f(
      "meta.type_map",
      `names [${names.join(", ")}] are neither anchor/volatile/pivot/satellite nor the legacy ` +
        "Stable_Unique/Decaying_Unique/Similar_Leader/Similar_Member",
    );
  if (names.length !== 4) f("meta.type_map", `expected 4 names, got ${names.length}`);
  const roleOfCode = new Map<number, HeadRole>();
  const nameOfRole = {} as Record<HeadRole, string>;
  for (const name of names) {
    const code = intIn(typeMap[name], `meta.type_map.${name}`, 0, 255);
    if (roleOfCode.has(code)) f("meta.type_map", `code ${code} is used twice`);
    roleOfCode.set(code, table[name]);
    nameOfRole[table[name]] = name;
  }

  const cls = v.classification_matrix;
  if (!Array.isArray(cls) || cls.length === 0 || cls.length > MAX_LAYERS) {
    f("classification_matrix", `expected an array of 1..${MAX_LAYERS} layers`);
  }
  const nLayers = (cls as unknown[]).length;
  const row0 = (cls as unknown[])[0];
  const nKvHeads = Array.isArray(row0) ? row0.length : 0;
  if (nKvHeads < 1 || nKvHeads > MAX_KV_HEADS) {
    f("classification_matrix[0]", `expected 1..${MAX_KV_HEADS} KV heads`);
  }
  if (expected && (expected.nLayers !== nLayers || expected.nKvHeads !== nKvHeads)) {
    throw new HcError(
      "E_PROFILE_MISMATCH",
      `official profile has ${nLayers} layers × ${nKvHeads} KV heads, the model has ` +
        `${expected.nLayers} × ${expected.nKvHeads}; it was made for another model`,
    );
  }
  const roles = (cls as unknown[]).map((row, l) =>
    arrayOfF(row, `classification_matrix[${l}]`, nKvHeads, f).map((c, h) => {
      const role = typeof c === "number" ? roleOfCode.get(c) : undefined;
      return role ?? f(`classification_matrix[${l}][${h}]`, `unknown type code ${describe(c)}`);
    })
  );
  const alloc = arrayOfF(v.allocation_matrix, "allocation_matrix", nLayers, f).map((row, l) =>
    arrayOfF(row, `allocation_matrix[${l}]`, nKvHeads, f).map((a, h) =>
      typeof a === "number" ? a : f(`allocation_matrix[${l}][${h}]`, `not a number: ${describe(a)}`)
    )
  );
  const rel = arrayOfF(v.leader_member_relations, "leader_member_relations", nLayers, f);

  const layers: LayerProfile[] = roles.map((layerRoles, l) => {
    const d = rel[l];
    const path = `leader_member_relations[${l}]`;
    if (!isRecord(d)) return f(path, `expected an object, got ${describe(d)}`);
    const clusters = Object.keys(d).map((key): Cluster => {
      if (!/^(0|[1-9][0-9]*)$/.test(key) || Number(key) >= nKvHeads) {
        f(path, `key ${JSON.stringify(key)} is not a KV head index below ${nKvHeads}`);
      }
      const sats = arrayOfF(d[key], `${path}["${key}"]`, -1, f, nKvHeads - 1);
      return {
        pivot: Number(key),
        satellites: sats.map((s, i) => intIn(s, `${path}["${key}"][${i}]`, 0, nKvHeads - 1)),
      };
    });
    let ordered = greedyOrder(clusters);
    const textKeys = keyOrder?.[l];
    if (textKeys && textKeys.length === clusters.length) {
      ordered = textKeys.map((k) => clusters.find((c) => String(c.pivot) === k)!);
    }
    const layer: LayerProfile = {
      roles: layerRoles,
      multipliers: alloc[l],
      stability: layerRoles.map(() => null),
      clusters: ordered,
    };
    try {
      checkLayer(layer, `layers[${l}]`);
    } catch (e) {
      f(`layer ${l}`, (e as Error).message.replace(/^profile /, ""));
    }
    return layer;
  });

  const profile: HeadProfile = {
    schema: PROFILE_SCHEMA,
    version: PROFILE_VERSION,
    model: {
      arch: expected?.arch ?? null,
      nLayers,
      nKvHeads,
      headDim: expected?.headDim ?? null,
      attnHash: expected?.attnHash ?? null,
    },
    params: {
      source: "official",
      topk: null,
      stableThreshold: null,
      simThreshold: null,
      calibrationTokens: null,
      decodeSteps: null,
      similarityKeyTokens: null,
      groupReduce: "mean",
      poolKernel: 5,
      ...(options.fileName ? parseFileNameParams(options.fileName) : {}),
      ...options.params,
    },
    layers,
  };
  if (isRecord(meta.counts)) {
    const counts = roleCounts(profile);
    for (const role of HEAD_ROLES) {
      const said = meta.counts[nameOfRole[role]];
      if (said !== counts[role]) {
        f(
          `meta.counts.${nameOfRole[role]}`,
          `says ${describe(said)}, the matrix has ${counts[role]}`,
        );
      }
    }
  }
  // Re-validate through our own parser so an import can never produce a profile we would reject.
  return parseProfile(JSON.parse(serializeProfile(profile)));
}

/** `length` -1 means any length up to `maxLength`. */
function arrayOfF(
  v: unknown,
  path: string,
  length: number,
  f: (path: string, msg: string) => never,
  maxLength = Infinity,
): unknown[] {
  if (!Array.isArray(v)) return f(path, `expected an array, got ${describe(v)}`);
  if (length >= 0 && v.length !== length) f(path, `expected ${length} entries, got ${v.length}`);
  if (v.length > maxLength) f(path, `expected at most ${maxLength} entries, got ${v.length}`);
  return v;
}
