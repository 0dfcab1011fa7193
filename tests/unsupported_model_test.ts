/**
 * Files the engine cannot run are refused at load with a message that names the feature and what
 * is supported (E_MODEL_ARCH), not with a missing-tensor error further on. Each refusal is paired
 * with a dense twin of the same file that loads, so the test fails if the check refuses too much.
 */
import assert from "node:assert/strict";
import { HcError } from "../src/errors.ts";
import { GgmlType } from "../src/gguf/types.ts";
import { openModelSource } from "../src/model/source.ts";
import {
  type GgufTypedValue,
  type GgufWriteTensor,
  gv,
  writeGguf,
} from "../testing/gguf_writer.ts";

const DIM = 32;
const FFN = 64;
const EXPERTS = 4;

function meta(arch: string, extra: Record<string, GgufTypedValue> = {}) {
  return {
    "general.architecture": gv.str(arch),
    [`${arch}.context_length`]: gv.u32(64),
    [`${arch}.embedding_length`]: gv.u32(DIM),
    [`${arch}.feed_forward_length`]: gv.u32(FFN),
    [`${arch}.block_count`]: gv.u32(1),
    [`${arch}.attention.head_count`]: gv.u32(4),
    [`${arch}.attention.head_count_kv`]: gv.u32(2),
    [`${arch}.attention.layer_norm_rms_epsilon`]: gv.f32(1e-5),
    ...extra,
  };
}

function f32(name: string, dims: number[]): GgufWriteTensor {
  const n = dims.reduce((a, b) => a * b, 1);
  return { name, type: GgmlType.F32, dims, data: new Uint8Array(n * 4) };
}

/** One layer of attention plus either a dense FFN or Mixtral's routed experts. */
function tensors(ffn: "dense" | "experts"): GgufWriteTensor[] {
  const kv = 2 * (DIM / 4);
  const out = [
    f32("token_embd.weight", [DIM, 260]),
    f32("output_norm.weight", [DIM]),
    f32("blk.0.attn_norm.weight", [DIM]),
    f32("blk.0.attn_q.weight", [DIM, DIM]),
    f32("blk.0.attn_k.weight", [DIM, kv]),
    f32("blk.0.attn_v.weight", [DIM, kv]),
    f32("blk.0.attn_output.weight", [DIM, DIM]),
    f32("blk.0.ffn_norm.weight", [DIM]),
  ];
  if (ffn === "dense") {
    out.push(
      f32("blk.0.ffn_gate.weight", [DIM, FFN]),
      f32("blk.0.ffn_up.weight", [DIM, FFN]),
      f32("blk.0.ffn_down.weight", [FFN, DIM]),
    );
  } else {
    // llama.cpp's layout for Mixtral: a router and the experts stacked in a third dim.
    out.push(
      f32("blk.0.ffn_gate_inp.weight", [DIM, EXPERTS]),
      f32("blk.0.ffn_gate_exps.weight", [DIM, FFN, EXPERTS]),
      f32("blk.0.ffn_up_exps.weight", [DIM, FFN, EXPERTS]),
      f32("blk.0.ffn_down_exps.weight", [FFN, DIM, EXPERTS]),
    );
  }
  return out;
}

async function openWith(
  metadata: Record<string, GgufTypedValue>,
  t: GgufWriteTensor[],
): Promise<string> {
  const path = await Deno.makeTempFile({ suffix: ".gguf" });
  try {
    await writeGguf(path, { metadata, tensors: t });
    using s = await openModelSource(path);
    return s.config.arch;
  } finally {
    await Deno.remove(path);
  }
}

async function refused(
  metadata: Record<string, GgufTypedValue>,
  t: GgufWriteTensor[],
  mentions: string[],
): Promise<void> {
  await assert.rejects(() => openWith(metadata, t), (e) => {
    assert.ok(e instanceof HcError, `expected an HcError, got ${e}`);
    assert.equal(e.code, "E_MODEL_ARCH", e.message);
    for (const m of mentions) assert.ok(e.message.includes(m), `"${e.message}" should say ${m}`);
    return true;
  });
}

Deno.test("a Mixtral-style mixture-of-experts GGUF is refused as such, its dense twin loads", async () => {
  assert.equal(await openWith(meta("llama"), tensors("dense")), "llama");
  const moe = meta("llama", {
    "llama.expert_count": gv.u32(EXPERTS),
    "llama.expert_used_count": gv.u32(2),
  });
  const says = ["mixture-of-experts", "not supported", "llama"];
  await refused(moe, tensors("experts"), [...says, "llama.expert_count = 4"]);
  // Either sign alone is enough: expert tensors without the count, or the count alone.
  await refused(meta("llama"), tensors("experts"), [...says, "blk.0.ffn_gate_"]);
  await refused(moe, tensors("dense"), says);
  // A qwen2 MoE file the same.
  await refused(
    meta("qwen2", { "qwen2.expert_count": gv.u32(EXPERTS) }),
    tensors("experts"),
    [...says, "qwen2.expert_count"],
  );
});

Deno.test("an unknown architecture is refused naming it and the supported ones", async () => {
  for (const arch of ["gemma3n", "falcon", "mamba"]) {
    await refused(meta(arch), tensors("dense"), [`"${arch}"`, "supported: llama, qwen2"]);
  }
});

Deno.test("a Phi-3 file with fused QKV loads; one whose fused QKV has a bias is refused", async () => {
  const kv = 2 * (DIM / 4);
  const fused = tensors("dense").filter((t) => !/attn_[qkv]\.weight|ffn_(gate|up)\./.test(t.name));
  fused.push(
    f32("blk.0.attn_qkv.weight", [DIM, DIM + 2 * kv]),
    f32("blk.0.ffn_up.weight", [DIM, 2 * FFN]),
  );
  assert.equal(await openWith(meta("phi3"), fused), "phi3");
  await refused(meta("phi3"), [...fused, f32("blk.0.attn_qkv.bias", [DIM + 2 * kv])], [
    "attn_qkv.bias",
    "not supported",
  ]);
});
