/**
 * The SPIR-V variants the build compiles, as products of axes (as llama.cpp's
 * vulkan-shaders-gen): a family is one GLSL file compiled once per combination of its axes'
 * values that its filter keeps, each value adding a part to the variant's name and `-D` defines
 * to its compile. A family marked `subgroup` also gets a `<name>__sg` twin of every variant,
 * compiled with HC_SUBGROUP=1; Kernel.create picks the twin on devices that use subgroups, so
 * that axis is chosen at load time, not by the wrappers.
 *
 * vk-native/build.ts compiles `shaderVariants()`; the kernel wrappers name a variant by its axes
 * (`SHADERS.matvec.variant({ path: "rowloop", load: "texel", type: "q4_k" })`), so a name is
 * spelled in one place.
 */
import { HcError } from "../src/errors.ts";
import { GgmlType } from "../src/gguf/types.ts";

/** `-D` defines of one compile. */
export type Defines = Readonly<Record<string, number>>;

/** One SPIR-V variant: a GLSL file compiled with a set of defines into build/spv/<name>.spv. */
export interface ShaderVariant {
  name: string;
  file: string;
  defines: Defines;
}

/** A value of an axis: its part of the variant name and the defines it adds. */
export interface AxisValue {
  tag: string;
  defines?: Defines;
}

/** An axis with named values, or a flag (false: no tag, no defines; true: the given value). */
export type Axis = Readonly<Record<string, AxisValue>> | Flag;

export class Flag {
  constructor(readonly on: AxisValue) {}
}

/** A flag axis: off adds nothing, on adds `tag` and `defines`. */
export function flag(tag: string, defines: Defines): Flag {
  return new Flag({ tag, defines });
}

export type Axes = Readonly<Record<string, Axis>>;

/** One value per axis: a value's name, or a boolean for a flag. */
export type Choice<A extends Axes> = {
  readonly [K in keyof A]: A[K] extends Flag ? boolean : keyof A[K] & string;
};

export interface FamilySpec<A extends Axes> {
  /** The GLSL file in shaders/, or one per choice. */
  file: string | ((c: Choice<A>) => string);
  axes: A;
  /** The variant name; default: `base` (default the file's stem) then each axis's tag in axis
   * order. */
  base?: string;
  name?: (tags: { readonly [K in keyof A]: string }) => string;
  /** Which combinations exist; default all. */
  keep?: (c: Choice<A>) => boolean;
  /** Also a `__sg` twin of each variant, with HC_SUBGROUP=1 (or of those this returns true). */
  subgroup?: boolean | ((c: Choice<A>) => boolean);
}

/** The suffix of a variant's subgroup twin (see Kernel.create). */
export const SUBGROUP_SUFFIX = "__sg";

export class ShaderFamily<A extends Axes> {
  readonly spec: FamilySpec<A>;
  #choices: readonly Choice<A>[] | null = null;

  constructor(spec: FamilySpec<A>) {
    this.spec = spec;
  }

  /** Every combination the filter keeps, the first axis varying slowest. */
  choices(): readonly Choice<A>[] {
    return this.#choices ??= this.#product();
  }

  #product(): Choice<A>[] {
    let out: Record<string, string | boolean>[] = [{}];
    for (const [axis, values] of Object.entries(this.spec.axes)) {
      const keys: (string | boolean)[] = values instanceof Flag
        ? [false, true]
        : Object.keys(values);
      out = out.flatMap((c) => keys.map((k) => ({ ...c, [axis]: k })));
    }
    const choices = out as Choice<A>[];
    return this.spec.keep ? choices.filter(this.spec.keep) : choices;
  }

  /** Whether the build compiles this combination. */
  has(c: Choice<A>): boolean {
    return this.choices().some((k) => this.#same(k, c));
  }

  /**
   * The variant name of a combination of axis values, for Kernel.create. Throws for a
   * combination the family leaves out: the build has no SPIR-V for it.
   */
  variant(...args: Record<string, never> extends Choice<A> ? [Choice<A>?] : [Choice<A>]): string {
    const c = (args[0] ?? {}) as Choice<A>;
    if (!this.has(c)) {
      throw new HcError(
        "E_SHADER_MISSING",
        `shaders: no variant of ${this.#label} for ${JSON.stringify(c)} is built`,
      );
    }
    return this.#name(c);
  }

  /** The compiles of this family, subgroup twins included. */
  expand(): ShaderVariant[] {
    const out: ShaderVariant[] = [];
    for (const c of this.choices()) {
      const file = typeof this.spec.file === "string" ? this.spec.file : this.spec.file(c);
      const defines: Record<string, number> = {};
      for (const v of this.#values(c)) Object.assign(defines, v.defines ?? {});
      const name = this.#name(c);
      out.push({ name, file, defines });
      const sg = this.spec.subgroup;
      if (sg === true || (typeof sg === "function" && sg(c))) {
        out.push({ name: name + SUBGROUP_SUFFIX, file, defines: { ...defines, HC_SUBGROUP: 1 } });
      }
    }
    return out;
  }

  /** The family in messages: its file, or its name base where the file varies. */
  get #label(): string {
    return typeof this.spec.file === "string" ? this.spec.file : this.#base;
  }

  get #base(): string {
    if (this.spec.base !== undefined) return this.spec.base;
    const file = typeof this.spec.file === "string" ? this.spec.file : "";
    return file.replace(/\.comp$/, "");
  }

  #values(c: Choice<A>): AxisValue[] {
    return Object.entries(this.spec.axes).map(([axis, values]) => {
      const v = (c as Record<string, string | boolean>)[axis];
      if (values instanceof Flag) return v === true ? values.on : { tag: "" };
      return values[v as string];
    });
  }

  #name(c: Choice<A>): string {
    const values = this.#values(c);
    if (!this.spec.name) return this.#base + values.map((v) => v.tag).join("");
    const tags = Object.fromEntries(Object.keys(this.spec.axes).map((a, i) => [a, values[i].tag]));
    return this.spec.name(tags as { [K in keyof A]: string });
  }

  #same(a: Choice<A>, b: Choice<A>): boolean {
    const x = a as Record<string, unknown>;
    const y = b as Record<string, unknown>;
    return Object.keys(this.spec.axes).every((k) => x[k] === y[k]);
  }
}

function family<const A extends Axes>(spec: FamilySpec<A>): ShaderFamily<A> {
  return new ShaderFamily(spec);
}

/** A family of one variant named after its file (plus its subgroup twin where asked). */
function single(file: string, subgroup = false): ShaderFamily<Record<never, never>> {
  return new ShaderFamily({ file, axes: {}, subgroup });
}

/** Weight types of the matvec and get_rows shaders: `TYPE` is the ggml type id. */
const WEIGHT_TYPE = {
  f32: { tag: "_f32", defines: { TYPE: GgmlType.F32 } },
  f16: { tag: "_f16", defines: { TYPE: GgmlType.F16 } },
  bf16: { tag: "_bf16", defines: { TYPE: GgmlType.BF16 } },
  q8_0: { tag: "_q8_0", defines: { TYPE: GgmlType.Q8_0 } },
  q4_0: { tag: "_q4_0", defines: { TYPE: GgmlType.Q4_0 } },
  q4_k: { tag: "_q4_k", defines: { TYPE: GgmlType.Q4_K } },
  q6_k: { tag: "_q6_k", defines: { TYPE: GgmlType.Q6_K } },
  q4_1: { tag: "_q4_1", defines: { TYPE: GgmlType.Q4_1 } },
  q5_0: { tag: "_q5_0", defines: { TYPE: GgmlType.Q5_0 } },
  q5_1: { tag: "_q5_1", defines: { TYPE: GgmlType.Q5_1 } },
  q2_k: { tag: "_q2_k", defines: { TYPE: GgmlType.Q2_K } },
  q3_k: { tag: "_q3_k", defines: { TYPE: GgmlType.Q3_K } },
  q5_k: { tag: "_q5_k", defines: { TYPE: GgmlType.Q5_K } },
  iq4_nl: { tag: "_iq4_nl", defines: { TYPE: GgmlType.IQ4_NL } },
  iq4_xs: { tag: "_iq4_xs", defines: { TYPE: GgmlType.IQ4_XS } },
} as const;

/** The types matvec_run.comp (the CPU-tuned path) reads; the others run the generic path. */
const RUN_PATH_TYPES: ReadonlySet<string> = new Set([
  "f32",
  "f16",
  "bf16",
  "q8_0",
  "q4_0",
  "q4_k",
  "q6_k",
]);

/** The types the run path also reads in the "lanes" layout (src/kernels/matvec_layout.ts). */
const LANES_TYPES: ReadonlySet<string> = new Set(["q8_0", "q4_0", "q4_k"]);
/** The types with a "split" layout (src/kernels/matvec_layout.ts). */
const SPLIT_TYPES: ReadonlySet<string> = new Set(["q8_0", "q6_k"]);

/** Where the run path has a half (256-element) unit: the lanes layout's types (row loop and
 * step), and F16/BF16's row loop (their step unit is 16 elements already). */
function halfUnit(c: { path: string; load: string; type: string }): boolean {
  if (c.path === "generic") return false;
  if (c.load === "lanes") return true;
  return c.path === "rowloop" && (c.type === "f16" || c.type === "bf16");
}

export type WeightTypeName = keyof typeof WEIGHT_TYPE;

/** The shader name of a ggml weight type, or undefined where no shader reads it. */
export function weightTypeName(ggmlType: number): WeightTypeName | undefined {
  for (const [name, v] of Object.entries(WEIGHT_TYPE)) {
    if (v.defines.TYPE === ggmlType) return name as WeightTypeName;
  }
  return undefined;
}

/** Binds K/V, rows or x as texel buffers (see BindingKind in src/vk/kernel.ts). */
const TEXEL = flag("_texel", { TEXEL: 1 });

/** The decode attention's attention-mass watch (KvWatch in src/kernels/kv.ts). */
const WATCH = flag("_watch", { WATCH: 1 });

export const SHADERS = {
  /** src/kernels/matvec.ts: "generic" (matvec.comp) and the run path's "step" and "rowloop"
   * (matvec_run.comp), each reading 32-bit words, 64-bit words or texels. */
  matvec: family({
    file: (c) => c.path === "generic" ? "matvec.comp" : "matvec_run.comp",
    base: "matvec",
    axes: {
      path: {
        generic: { tag: "" },
        step: { tag: "_run" },
        rowloop: { tag: "_rl", defines: { ROWLOOP: 1 } },
      },
      load: {
        word: { tag: "" },
        u64: { tag: "64", defines: { LOAD64: 1 } },
        texel: { tag: "t", defines: { TEXEL: 1 } },
        // Texels of a weight in the "lanes" layout (src/kernels/matvec_layout.ts).
        lanes: { tag: "l", defines: { TEXEL: 1, LANES: 1 } },
        // Aligned words of a weight in the "split" layout (src/kernels/matvec_layout.ts).
        split: { tag: "_split", defines: { SPLIT: 1 } },
      },
      // The run path's 256-element unit, for rows of a multiple of 256 but not of 512.
      half: flag("h", { HALF_UNIT: 1 }),
      type: WEIGHT_TYPE,
    },
    // The generic path reads words (or the split layout, SPLIT_TYPES); Q6_K has no step
    // variant; the run path exists only for RUN_PATH_TYPES, its "lanes" layout only for
    // LANES_TYPES.
    keep: (c) =>
      (!c.half || halfUnit(c)) &&
      (c.path === "generic"
        ? c.load === "word" || (c.load === "split" && SPLIT_TYPES.has(c.type))
        : c.load !== "split" && RUN_PATH_TYPES.has(c.type) &&
          (c.path === "rowloop" || c.type !== "q6_k") &&
          (c.load !== "lanes" || LANES_TYPES.has(c.type))),
    subgroup: true,
  }),
  get_rows: family({ file: "get_rows.comp", axes: { type: WEIGHT_TYPE } }),
  /** src/kernels/matmul.ts: the tiled prompt matmul, one tile shape per device class (see
   * MATMUL_SHAPES there), plus "shift": the CPU shape with a deliberately broken tile index that
   * the tests must catch. */
  matmul: family({
    file: "matmul.comp",
    axes: {
      shape: {
        cpu: { tag: "_cpu", defines: { TM: 16, CN: 8, KS: 8 } },
        gpu: { tag: "_gpu", defines: { TM: 16, CN: 4, KS: 4 } },
        shift: { tag: "_shift", defines: { TM: 16, CN: 8, KS: 8, TILE_SHIFT: 1 } },
      },
      type: WEIGHT_TYPE,
      split: flag("_split", { SPLIT: 1 }),
    },
    keep: (c) =>
      (c.shape !== "shift" || c.type === "f16" || c.type === "q4_k") &&
      (!c.split || (c.shape !== "shift" && SPLIT_TYPES.has(c.type))),
  }),
  /** src/kernels/matmul.ts: the CPU path for F32/F16/BF16 weights, all loads as texels. */
  matmul_texel: family({
    file: "matmul_texel.comp",
    axes: {
      type: { f32: WEIGHT_TYPE.f32, f16: WEIGHT_TYPE.f16, bf16: WEIGHT_TYPE.bf16 },
      shift: flag("_shift", { TILE_SHIFT: 1 }),
    },
    keep: (c) => !c.shift || c.type === "f16",
  }),
  /** bench/prefill.ts: the multiply-add ceiling. */
  fma_peak: single("fma_peak.comp"),

  // src/kernels/elementwise.ts
  add: family({
    file: "add.comp",
    base: "",
    axes: { op: { add: { tag: "add" }, axpby: { tag: "axpby", defines: { HC_AXPBY: 1 } } } },
  }),
  rmsnorm: single("rmsnorm.comp", true),
  rope: single("rope.comp"),
  swiglu: single("swiglu.comp"),

  // src/kernels/select.ts and gather.ts
  argmax: family({
    file: "argmax.comp",
    axes: {
      stage: {
        partial: { tag: "_partial", defines: { ARGMAX_STAGE: 1 } },
        merge: { tag: "_merge", defines: { ARGMAX_STAGE: 2 } },
      },
    },
    subgroup: true,
  }),
  gather: single("gather.comp"),

  // src/kernels/kv.ts and attention.ts
  kv_append: single("kv_append.comp"),
  rope_append: single("rope_append.comp"),
  attn_decode: family({ file: "attn_decode.comp", axes: { watch: WATCH }, subgroup: true }),
  attn_decode_cpu: family({ file: "attn_decode_cpu.comp", axes: { texel: TEXEL, watch: WATCH } }),
  attn_prefill: single("attn_prefill.comp", true),
  attn_prefill_rows: single("attn_prefill_rows.comp"),
  attn_prefill_split: family({ file: "attn_prefill_split.comp", axes: { texel: TEXEL } }),

  // src/kernels/scores.ts
  scores_stats: single("scores_stats.comp", true),
  scores_pool: single("scores_pool.comp"),
  scores_stats_cpu: family({
    file: "scores_stats_cpu.comp",
    axes: { logits: flag("_logits", { HC_STORE_LOGITS: 1 }), texel: TEXEL },
    name: (t) => `scores_stats${t.logits}_cpu${t.texel}`,
  }),
  scores_pool_cpu: family({
    file: "scores_pool_cpu.comp",
    axes: { logits: flag("_logits", { HC_STORE_LOGITS: 1 }) },
    name: (t) => `scores_pool${t.logits}_cpu`,
  }),
  scores_merge: single("scores_merge.comp"),
  scores_pool_logits: family({ file: "scores_pool_logits.comp", axes: { texel: TEXEL } }),
  scores_topk: family({ file: "scores_topk.comp", axes: { texel: TEXEL } }),
} as const;

/** Every variant the build compiles, subgroup twins included. */
export function shaderVariants(): ShaderVariant[] {
  const families: { expand(): ShaderVariant[] }[] = Object.values(SHADERS);
  return families.flatMap((f) => f.expand());
}
