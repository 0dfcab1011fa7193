import assert from "node:assert/strict";
import { HcError, type HcErrorCode } from "../src/errors.ts";
import { GgufValueType, openGguf, openGgufSync, parseGgufHeader } from "../src/gguf/reader.ts";
import { GgmlType } from "../src/gguf/types.ts";
import { encodeGguf, type GgufTypedValue, gv, writeGguf } from "../testing/gguf_writer.ts";

const MODELS = new URL("../../shared/models/", import.meta.url);

function modelPath(name: string): URL {
  const url = new URL(name, MODELS);
  try {
    Deno.statSync(url);
  } catch {
    throw new Error(`test model file missing: ${url.pathname} (see shared/models/README.md)`);
  }
  return url;
}

function throwsCode(fn: () => unknown, code: HcErrorCode, mention?: string): void {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof HcError, `expected HcError ${code}, got ${e}`);
    assert.equal(e.code, code, `expected ${code}, got ${e.code}: ${e.message}`);
    if (mention) assert.ok(e.message.includes(mention), `"${e.message}" should name ${mention}`);
    return;
  }
  assert.fail(`expected HcError ${code}, but nothing was thrown`);
}

Deno.test("stories260K.gguf: header, metadata and tensors", async () => {
  using f = await openGguf(modelPath("stories260K.gguf"));
  assert.equal(f.version, 3);
  assert.equal(f.metadata.size, 19);
  assert.equal(f.tensors.length, 48);
  assert.equal(f.alignment, 32);
  assert.ok(f.tensors.every((t) => t.type === GgmlType.F32));
  assert.equal(f.getString("general.architecture"), "llama");
  assert.equal(f.getString("tokenizer.ggml.model"), "llama");
  assert.equal(f.requireNumber("llama.block_count"), 5);
  assert.equal(f.getNumber("llama.context_length"), 2048);
  assert.equal(f.getNumber("llama.embedding_length"), 64);
  assert.equal(f.getNumber("llama.attention.head_count"), 8);
  assert.equal(f.getNumber("llama.attention.head_count_kv"), 4);
  assert.equal(f.getNumber("llama.feed_forward_length"), 172);
  assert.equal(f.getNumber("tokenizer.ggml.bos_token_id"), 1);
  assert.equal(f.getNumber("tokenizer.ggml.eos_token_id"), 2);
  assert.equal(f.getNumber("tokenizer.ggml.padding_token_id"), 0xffffffff);
  assert.deepEqual(f.metadataTypes.get("tokenizer.ggml.scores"), {
    type: GgufValueType.ARRAY,
    elemType: GgufValueType.FLOAT32,
  });
  const tokens = f.getStringArray("tokenizer.ggml.tokens")!;
  assert.equal(tokens.length, 512);
  assert.deepEqual(tokens.slice(0, 4), ["<unk>", "<s>", "</s>", "<0x00>"]);
  assert.equal(tokens[403], "▁Once");
  assert.equal(f.getNumberArray("tokenizer.ggml.token_type")!.length, 512);
  assert.equal(f.getString("general.missing.key"), undefined);
  throwsCode(() => f.getNumber("general.architecture"), "E_GGUF_CORRUPT", "general.architecture");
  throwsCode(() => f.requireString("llama.nope"), "E_GGUF_CORRUPT", "llama.nope");

  const embd = f.tensor("token_embd.weight")!;
  assert.deepEqual(embd.dims, [64, 512]);
  assert.equal(embd.bytes, 64 * 512 * 4);
  assert.deepEqual(f.tensor("blk.0.ffn_down.weight")!.dims, [172, 64]);
  assert.equal(f.tensor("blk.5.attn_q.weight"), undefined);
  // Tied output: output.weight holds the embedding, and both equal the llama2.c file's table.
  const out = await f.readTensor(f.tensor("output.weight")!);
  const emb = await f.readTensor(embd);
  assert.deepEqual(out, emb);
  const bin = await Deno.readFile(modelPath("stories260K.bin"));
  assert.deepEqual(emb, bin.subarray(28, 28 + embd.bytes));
  // Partial reads, async (concurrent) and sync, land the right bytes.
  const parts = [0, 1000, 4096, 131068].map((o) => ({ o, dst: new Uint8Array(4) }));
  await Promise.all(parts.map((p) => f.readInto(embd, p.dst, p.o)));
  for (const p of parts) assert.deepEqual(p.dst, emb.subarray(p.o, p.o + 4));
  const syncDst = new Uint8Array(100);
  f.readIntoSync(embd, syncDst, 500);
  assert.deepEqual(syncDst, emb.subarray(500, 600));
  await assert.rejects(() => f.readInto(embd, new Uint8Array(8), embd.bytes - 4), RangeError);
  // Every tensor's bytes lie inside the file and in order.
  for (const t of f.tensors) assert.ok(t.offset + t.bytes <= f.fileSizeBytes);
});

Deno.test("ggml-vocab files parse with the expected vocabularies", async () => {
  const expected: Record<string, [string, number]> = {
    "llama-spm": ["llama", 32000],
    "phi-3": ["llama", 32064],
    "gpt-2": ["gpt2", 50257],
    "deepseek-coder": ["gpt2", 32256],
    "mpt": ["gpt2", 50432],
  };
  for (const [name, [model, nVocab]] of Object.entries(expected)) {
    using f = await openGguf(modelPath(`ggml-vocab/ggml-vocab-${name}.gguf`));
    assert.equal(f.version, 3, name);
    assert.equal(f.tensors.length, 0, name);
    assert.equal(f.getString("tokenizer.ggml.model"), model, name);
    assert.equal(f.getStringArray("tokenizer.ggml.tokens")!.length, nVocab, name);
    assert.equal(f.getNumberArray("tokenizer.ggml.token_type")!.length, nVocab, name);
    if (model === "gpt2") assert.ok(f.getStringArray("tokenizer.ggml.merges")!.length > 1000, name);
    else assert.equal(f.getNumberArray("tokenizer.ggml.scores")!.length, nVocab, name);
  }
  // The sync opener reads the same header.
  using s = openGgufSync(modelPath("ggml-vocab/ggml-vocab-gpt-2.gguf"));
  assert.equal(s.getStringArray("tokenizer.ggml.tokens")![198], "Ċ");
});

const ALL_TYPES: Record<string, GgufTypedValue> = {
  "t.u8": gv.u8(255),
  "t.i8": gv.i8(-128),
  "t.u16": gv.u16(65535),
  "t.i16": gv.i16(-32768),
  "t.u32": gv.u32(4294967295),
  "t.i32": gv.i32(-2147483648),
  "t.f32": gv.f32(1.5),
  "t.bool.true": gv.bool(true),
  "t.bool.false": gv.bool(false),
  "t.str": gv.str("héllo ▁wörld 🦙"),
  "t.str.empty": gv.str(""),
  "t.u64.small": gv.u64(12345678901234),
  "t.u64.big": gv.u64(18446744073709551615n),
  "t.i64.small": gv.i64(-9007199254740991),
  "t.i64.big": gv.i64(-9223372036854775808n),
  "t.f64": gv.f64(Math.PI),
  "t.arr.u8": gv.arr(GgufValueType.UINT8, [0, 1, 255]),
  "t.arr.i32": gv.arr(GgufValueType.INT32, [-1, 0, 7]),
  "t.arr.f32": gv.arr(GgufValueType.FLOAT32, [0.25, -2]),
  "t.arr.str": gv.arr(GgufValueType.STRING, ["a", "", "ü"]),
  "t.arr.bool": gv.arr(GgufValueType.BOOL, [true, false]),
  "t.arr.u64": gv.arr(GgufValueType.UINT64, [1, 2n ** 60n]),
  "t.arr.f64": gv.arr(GgufValueType.FLOAT64, [1e300]),
  "t.arr.empty": gv.arr(GgufValueType.INT16, []),
  "t.arr.nested": gv.nested([
    { type: GgufValueType.ARRAY, elemType: GgufValueType.STRING, value: ["x", "y"] },
    { type: GgufValueType.ARRAY, elemType: GgufValueType.INT8, value: [-3] },
    {
      type: GgufValueType.ARRAY,
      elemType: GgufValueType.ARRAY,
      value: [{ type: GgufValueType.ARRAY, elemType: GgufValueType.UINT16, value: [9] }],
    },
  ]),
};
const ALL_VALUES: Record<string, unknown> = {
  "t.u8": 255,
  "t.i8": -128,
  "t.u16": 65535,
  "t.i16": -32768,
  "t.u32": 4294967295,
  "t.i32": -2147483648,
  "t.f32": 1.5,
  "t.bool.true": true,
  "t.bool.false": false,
  "t.str": "héllo ▁wörld 🦙",
  "t.str.empty": "",
  "t.u64.small": 12345678901234,
  "t.u64.big": 18446744073709551615n,
  "t.i64.small": -9007199254740991,
  "t.i64.big": -9223372036854775808n,
  "t.f64": Math.PI,
  "t.arr.u8": [0, 1, 255],
  "t.arr.i32": [-1, 0, 7],
  "t.arr.f32": [0.25, -2],
  "t.arr.str": ["a", "", "ü"],
  "t.arr.bool": [true, false],
  "t.arr.u64": [1, 2n ** 60n],
  "t.arr.f64": [1e300],
  "t.arr.empty": [],
  "t.arr.nested": [["x", "y"], [-3], [[9]]],
};

function tensorBytes(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed * 7) & 0xff;
  return b;
}

Deno.test("writer -> reader round trip keeps every metadata type and tensor", async () => {
  for (const version of [2, 3] as const) {
    for (const alignment of [32, 64, 1]) {
      const tensors = [
        { name: "a", type: GgmlType.F32, dims: [3, 5], data: tensorBytes(60, 1) },
        { name: "q", type: GgmlType.Q8_0, dims: [64, 2], data: tensorBytes(4 * 34, 2) },
        { name: "k", type: GgmlType.Q4_K, dims: [256], data: tensorBytes(144, 3) },
        { name: "h", type: GgmlType.F16, dims: [1, 1, 1, 7], data: tensorBytes(14, 4) },
      ];
      const path = await Deno.makeTempFile({ suffix: ".gguf" });
      try {
        await writeGguf(path, { metadata: ALL_TYPES, tensors, alignment, version });
        using f = await openGguf(path);
        assert.equal(f.version, version);
        assert.equal(f.alignment, alignment);
        const expectKeys = Object.keys(ALL_TYPES).length + (alignment === 32 ? 0 : 1);
        assert.equal(f.metadata.size, expectKeys);
        for (const [key, tv] of Object.entries(ALL_TYPES)) {
          const v = f.get(key);
          if (key === "t.f32") assert.equal(v, Math.fround(1.5));
          else assert.deepEqual(v, ALL_VALUES[key], key);
          assert.equal(f.metadataTypes.get(key)!.type, tv.type, key);
          if ("elemType" in tv) assert.equal(f.metadataTypes.get(key)!.elemType, tv.elemType);
        }
        assert.equal(f.tensors.length, tensors.length);
        for (const t of tensors) {
          const info = f.tensor(t.name)!;
          assert.equal(info.type, t.type);
          assert.deepEqual(info.dims, t.dims);
          assert.equal(info.offset % alignment, 0);
          assert.deepEqual(await f.readTensor(info), t.data, t.name);
        }
      } finally {
        await Deno.remove(path);
      }
    }
  }
});

// --- hostile files -------------------------------------------------------------------------

function base(): Uint8Array {
  return encodeGguf({
    metadata: { "general.architecture": gv.str("llama"), "x.count": gv.u32(7) },
    tensors: [
      { name: "first.weight", type: GgmlType.F32, dims: [4, 2], data: tensorBytes(32, 5) },
      { name: "second.weight", type: GgmlType.F32, dims: [8], data: tensorBytes(32, 6) },
    ],
  });
}

function indexOf(hay: Uint8Array, needle: string, from = 0): number {
  const n = new TextEncoder().encode(needle);
  outer: for (let i = from; i + n.length <= hay.length; i++) {
    for (let j = 0; j < n.length; j++) if (hay[i + j] !== n[j]) continue outer;
    return i;
  }
  throw new Error(`${needle} not found`);
}

/** Byte offsets of the fields after a tensor's name (the name is stored once in the header). */
function tensorFields(b: Uint8Array, name: string, nDims: number) {
  const nameAt = indexOf(b, name);
  const dimsAt = nameAt + name.length + 4;
  return {
    nDimsAt: nameAt + name.length,
    dimsAt,
    typeAt: dimsAt + 8 * nDims,
    offsetAt: dimsAt + 8 * nDims + 4,
  };
}

function patch(fn: (b: Uint8Array, v: DataView) => void): Uint8Array {
  const b = base();
  fn(b, new DataView(b.buffer));
  return b;
}

Deno.test("hostile headers give the right HcError codes", () => {
  const ok = parseGgufHeader(base());
  assert.equal(ok.tensors.length, 2);

  throwsCode(() => parseGgufHeader(new Uint8Array(0)), "E_GGUF_TRUNCATED");
  throwsCode(() => parseGgufHeader(patch((b) => b.set([0x47, 0x47, 0x55, 0x45]))), "E_GGUF_MAGIC");
  throwsCode(() => parseGgufHeader(new TextEncoder().encode('{"json": true}')), "E_GGUF_MAGIC");
  for (const version of [0, 1, 4, 0x03000000]) {
    throwsCode(
      () => parseGgufHeader(patch((_, v) => v.setUint32(4, version, true))),
      "E_GGUF_VERSION",
    );
  }
  // Every truncation point inside the header or the data is E_GGUF_TRUNCATED.
  const whole = base();
  for (let n = 0; n < whole.length; n += 3) {
    throwsCode(() => parseGgufHeader(whole.subarray(0, n)), "E_GGUF_TRUNCATED");
  }
  throwsCode(
    () => parseGgufHeader(whole.subarray(0, whole.length - 1)),
    "E_GGUF_TRUNCATED",
    "second.weight",
  );
  // Absurd counts and lengths: corrupt if past the hard caps, truncated if only past the file.
  throwsCode(
    () => parseGgufHeader(patch((_, v) => v.setBigUint64(8, 1n << 62n, true))),
    "E_GGUF_CORRUPT",
    "tensor count",
  );
  throwsCode(
    () => parseGgufHeader(patch((_, v) => v.setBigUint64(8, 1000n, true))),
    "E_GGUF_TRUNCATED",
    "tensor count",
  );
  throwsCode(
    () => parseGgufHeader(patch((_, v) => v.setBigUint64(16, 2n ** 64n - 1n, true))),
    "E_GGUF_CORRUPT",
    "metadata key count",
  );
  throwsCode(
    () => parseGgufHeader(patch((_, v) => v.setBigUint64(24, 2n ** 40n, true))),
    "E_GGUF_CORRUPT",
    "metadata key #0 length",
  );
  const strValueLen = indexOf(whole, "llama") - 8;
  throwsCode(
    () => parseGgufHeader(patch((_, v) => v.setBigUint64(strValueLen, 100000n, true))),
    "E_GGUF_TRUNCATED",
    "general.architecture",
  );
  const typeAt = indexOf(whole, "x.count") + 7;
  throwsCode(
    () => parseGgufHeader(patch((_, v) => v.setUint32(typeAt, 13, true))),
    "E_GGUF_CORRUPT",
    "x.count",
  );
  // Key-level problems name the key.
  throwsCode(
    () => parseGgufHeader(encodeGguf({ metadata: [["k", gv.u8(1)], ["k", gv.u8(2)]] })),
    "E_GGUF_CORRUPT",
    "k appears twice",
  );
  let deep: GgufTypedValue = gv.arr(GgufValueType.UINT8, [1]);
  for (let i = 0; i < 12; i++) deep = gv.nested([deep as never]);
  throwsCode(() => parseGgufHeader(encodeGguf({ metadata: { deep } })), "E_GGUF_CORRUPT", "deep");
  const arrBytes = encodeGguf({ metadata: { "big.arr": gv.arr(GgufValueType.UINT32, [1, 2]) } });
  const arrLenAt = indexOf(arrBytes, "big.arr") + 7 + 4 + 4;
  new DataView(arrBytes.buffer).setBigUint64(arrLenAt, 1n << 50n, true);
  throwsCode(() => parseGgufHeader(arrBytes), "E_GGUF_CORRUPT", "big.arr");
  new DataView(arrBytes.buffer).setBigUint64(arrLenAt, 1000n, true);
  throwsCode(() => parseGgufHeader(arrBytes), "E_GGUF_TRUNCATED", "big.arr");
  throwsCode(
    () => parseGgufHeader(encodeGguf({ metadata: { "general.alignment": gv.u32(48) } })),
    "E_GGUF_CORRUPT",
    "general.alignment",
  );

  // Tensor-level problems name the tensor.
  const first = tensorFields(whole, "first.weight", 2);
  throwsCode(
    () => parseGgufHeader(patch((_, v) => v.setUint32(first.typeAt, 99, true))),
    "E_GGUF_TYPE",
    "first.weight",
  );
  throwsCode(
    () => parseGgufHeader(patch((_, v) => v.setUint32(first.typeAt, GgmlType.Q8_0, true))),
    "E_GGUF_CORRUPT",
    "first.weight",
  );
  throwsCode(
    () => parseGgufHeader(patch((_, v) => v.setUint32(first.nDimsAt, 5, true))),
    "E_GGUF_CORRUPT",
    "first.weight",
  );
  throwsCode(
    () => parseGgufHeader(patch((_, v) => v.setUint32(first.nDimsAt, 0, true))),
    "E_GGUF_CORRUPT",
    "first.weight",
  );
  throwsCode(
    () =>
      parseGgufHeader(patch((_, v) => {
        v.setBigUint64(first.dimsAt, 1n << 40n, true);
        v.setBigUint64(first.dimsAt + 8, 1n << 40n, true);
      })),
    "E_GGUF_CORRUPT",
    "first.weight",
  );
  throwsCode(
    () => parseGgufHeader(patch((_, v) => v.setBigUint64(first.dimsAt, 1n << 60n, true))),
    "E_GGUF_CORRUPT",
    "first.weight",
  );
  // A shape bigger than its slot overlaps the next tensor.
  throwsCode(
    () => parseGgufHeader(patch((_, v) => v.setBigUint64(first.dimsAt, 5n, true))),
    "E_GGUF_CORRUPT",
    "overlaps",
  );
  throwsCode(
    () => parseGgufHeader(patch((_, v) => v.setBigUint64(first.offsetAt, 32n, true))),
    "E_GGUF_CORRUPT",
    "overlaps",
  );
  throwsCode(
    () => parseGgufHeader(patch((_, v) => v.setBigUint64(first.offsetAt, 4n, true))),
    "E_GGUF_CORRUPT",
    "first.weight",
  );
  throwsCode(
    () => parseGgufHeader(patch((_, v) => v.setBigUint64(first.offsetAt, 1n << 20n, true))),
    "E_GGUF_TRUNCATED",
    "first.weight",
  );
  throwsCode(
    () => parseGgufHeader(patch((_, v) => v.setBigUint64(first.offsetAt, 1n << 62n, true))),
    "E_GGUF_CORRUPT",
    "first.weight",
  );
  throwsCode(
    () =>
      parseGgufHeader(encodeGguf({
        metadata: {},
        tensors: [
          { name: "dup", type: GgmlType.F32, dims: [1], data: new Uint8Array(4) },
          { name: "dup", type: GgmlType.F32, dims: [1], data: new Uint8Array(4) },
        ],
      })),
    "E_GGUF_CORRUPT",
    "dup",
  );
});

Deno.test("openGguf reports hostile files with the path and closes them", async () => {
  await assert.rejects(
    () => openGguf("/nonexistent/x.gguf"),
    (e) => e instanceof HcError && e.code === "E_IO",
  );
  const dir = await Deno.makeTempDir();
  try {
    const real = await Deno.readFile(modelPath("stories260K.gguf"));
    const cases: [string, Uint8Array, HcErrorCode][] = [
      ["header-cut.gguf", real.subarray(0, 5000), "E_GGUF_TRUNCATED"],
      ["data-cut.gguf", real.subarray(0, real.length - 100), "E_GGUF_TRUNCATED"],
      ["magic.gguf", new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8]), "E_GGUF_MAGIC"],
    ];
    for (const [name, bytes, code] of cases) {
      const path = `${dir}/${name}`;
      await Deno.writeFile(path, bytes);
      await assert.rejects(() => openGguf(path), (e) => {
        assert.ok(e instanceof HcError && e.code === code, `${name}: ${e}`);
        assert.ok(e.message.includes(name), e.message);
        return true;
      });
      assert.throws(() => openGgufSync(path), (e) => e instanceof HcError && e.code === code);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
