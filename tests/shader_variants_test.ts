import assert from "node:assert/strict";
import { SHADERS, shaderVariants, SUBGROUP_SUFFIX } from "../shaders/variants.ts";
import { isHcError } from "../src/errors.ts";

const SHADER_DIR = new URL("../shaders/", import.meta.url);

Deno.test("the variant table names each variant once and compiles every shader file", () => {
  const variants = shaderVariants();
  const names = variants.map((v) => v.name);
  assert.equal(new Set(names).size, names.length);
  const files = [...Deno.readDirSync(SHADER_DIR)]
    .filter((e) => e.isFile && e.name.endsWith(".comp"))
    .map((e) => e.name)
    .sort();
  assert.deepEqual([...new Set(variants.map((v) => v.file))].sort(), files);
  for (const v of variants) {
    assert.match(v.name, /^[a-z0-9_]+$/);
    // A subgroup twin is its base variant plus HC_SUBGROUP.
    if (v.name.endsWith(SUBGROUP_SUFFIX)) {
      const base = variants.find((b) => b.name === v.name.slice(0, -SUBGROUP_SUFFIX.length));
      assert.ok(base, v.name);
      assert.deepEqual(v.defines, { ...base.defines, HC_SUBGROUP: 1 });
    }
  }
});

Deno.test("a family's variants are its product of axes less its filter", () => {
  // matvec: generic (words only, 15 types) + step (3 loads x 6 types, no Q6_K) + rowloop
  // (3 x 7): the run path only for the 7 types matvec_run.comp reads; plus the lanes layout's
  // step and rowloop for Q8_0, Q4_0 and Q4_K (2 x 3); plus the split layout's generic kernel
  // for Q8_0 and Q6_K (2); plus the half-unit twins of the lanes layout's step and rowloop
  // (2 x 3) and of F16's and BF16's rowloop (3 loads x 2).
  const mv = SHADERS.matvec.choices();
  assert.equal(mv.length, 15 + 18 + 21 + 6 + 2 + 6 + 6);
  assert.equal(
    SHADERS.matvec.variant({ path: "step", load: "lanes", half: true, type: "q4_k" }),
    "matvec_runlh_q4_k",
  );
  assert.equal(SHADERS.matvec.has({ path: "step", load: "texel", half: true, type: "f16" }), false);
  assert.equal(
    SHADERS.matvec.has({ path: "rowloop", load: "texel", half: true, type: "q8_0" }),
    false,
  );
  assert.equal(
    SHADERS.matvec.has({ path: "rowloop", load: "split", half: false, type: "q8_0" }),
    false,
  );
  assert.equal(
    SHADERS.matvec.has({ path: "generic", load: "split", half: false, type: "q4_k" }),
    false,
  );
  assert.equal(
    SHADERS.matvec.variant({ path: "generic", load: "split", half: false, type: "q6_k" }),
    "matvec_split_q6_k",
  );
  assert.equal(
    SHADERS.matvec.has({ path: "rowloop", load: "texel", half: false, type: "q5_k" }),
    false,
  );
  assert.equal(
    SHADERS.matvec.has({ path: "rowloop", load: "lanes", half: false, type: "q6_k" }),
    false,
  );
  assert.equal(
    SHADERS.matvec.variant({ path: "rowloop", load: "lanes", half: false, type: "q8_0" }),
    "matvec_rll_q8_0",
  );
  assert.equal(SHADERS.matvec.expand().length, 2 * mv.length);
  assert.equal(
    SHADERS.matvec.variant({ path: "rowloop", load: "texel", half: false, type: "q4_k" }),
    "matvec_rlt_q4_k",
  );
  assert.equal(
    SHADERS.matvec.variant({ path: "step", load: "u64", half: false, type: "f16" }),
    "matvec_run64_f16",
  );
  assert.equal(
    SHADERS.matvec.variant({ path: "generic", load: "word", half: false, type: "q6_k" }),
    "matvec_q6_k",
  );
  assert.equal(
    SHADERS.scores_stats_cpu.variant({ logits: true, texel: true }),
    "scores_stats_logits_cpu_texel",
  );
  assert.equal(SHADERS.add.variant({ op: "axpby" }), "axpby");
  assert.equal(SHADERS.attn_decode.variant({ watch: false }), "attn_decode");
  assert.equal(
    SHADERS.attn_decode_cpu.variant({ texel: true, watch: true }),
    "attn_decode_cpu_texel_watch",
  );
  const step = SHADERS.matvec.expand().find((v) => v.name === "matvec_rl64_q6_k");
  assert.deepEqual(step, {
    name: "matvec_rl64_q6_k",
    file: "matvec_run.comp",
    defines: { ROWLOOP: 1, LOAD64: 1, TYPE: 14 },
  });
  // Left out by the filter: the build has no SPIR-V for them.
  for (
    const c of [
      { path: "step", load: "word", half: false, type: "q6_k" },
      { path: "generic", load: "texel", half: false, type: "f32" },
    ] as const
  ) {
    assert.equal(SHADERS.matvec.has(c), false);
    assert.throws(() => SHADERS.matvec.variant(c), (e) => isHcError(e, "E_SHADER_MISSING"));
  }
  // Subgroup twins only where the family asks for them.
  const gpu = SHADERS.attn_decode.expand().map((v) => v.name);
  const cpu = SHADERS.attn_decode_cpu.expand().map((v) => v.name);
  assert.ok(gpu.includes("attn_decode_watch__sg") && !cpu.some((n) => n.endsWith("__sg")));
});
