/**
 * The "split" weight layout (src/kernels/matvec_layout.ts: Q8_0 and Q6_K block bodies 16-byte
 * aligned, the scales after them, rows padded to 16 bytes): the permutation and its streamed
 * upload, the generic matvec and the prompt matmul reading it, on fresh random data. Each product
 * over the split layout must equal the same kernel over GGUF order bit for bit (same values, same
 * arithmetic order) and the TS reference within tolerance: rows padded or not, batches,
 * accumulate, a weight at an offset and split into row ranges, the norm and GLU fusions, both
 * reductions, ragged matmul tiles. A split weight read as GGUF order must fail the same check;
 * the refusals and a model loaded under each variant set (split on the GPU set only) are here too.
 */
import assert from "node:assert/strict";
import { isHcError } from "../src/errors.ts";
import { GgmlType } from "../src/gguf/types.ts";
import { MatMul, type MatMulOptions } from "../src/kernels/matmul.ts";
import { MatVec, type MatVecRecord } from "../src/kernels/matvec.ts";
import {
  layoutRowBytes,
  splitLayoutFits,
  splitUploadFill,
  toSplitLayout,
  type WeightLayout,
} from "../src/kernels/matvec_layout.ts";
import { quantize } from "../src/model/quant/mod.ts";
import { type Buffer, Device } from "../src/vk/mod.ts";
import { referenceMatvec } from "../testing/reference_matvec.ts";
import { writeSyntheticModel } from "../testing/synthetic_model.ts";
import { checkVariantsAgainstReference, randomF32, relError } from "./helpers.ts";

const SEED = Date.now() >>> 0;
let seedCounter = 0;
const nextSeed = () => (SEED + 7919 * ++seedCounter) >>> 0;

const TYPES = ["Q8_0", "Q6_K"] as const;
type TypeName = typeof TYPES[number];

Deno.test("split layout: bodies 16-byte aligned, then the scales, rows padded; streamed upload", async () => {
  // Q8_0, 18 blocks (576 columns): 612 bytes a row, 624 in the split layout.
  assert.equal(layoutRowBytes(GgmlType.Q8_0, 576, "split"), 624);
  assert.equal(layoutRowBytes(GgmlType.Q8_0, 4096, "split"), 4352);
  assert.equal(layoutRowBytes(GgmlType.Q6_K, 768, "split"), 640);
  assert.equal(layoutRowBytes(GgmlType.Q6_K, 768, "ggml"), 630);
  const rows = 3, cols = 576, nb = 18;
  const src = new Uint8Array(rows * nb * 34);
  for (let r = 0; r < rows; r++) {
    for (let b = 0; b < nb; b++) {
      const at = (r * nb + b) * 34;
      src[at] = 200 + b; // d, low byte
      src[at + 1] = r; // d, high byte
      for (let k = 0; k < 32; k++) src[at + 2 + k] = (r * 31 + b * 5 + k) & 0xff;
    }
  }
  const dst = toSplitLayout(GgmlType.Q8_0, cols, src);
  assert.equal(dst.length, rows * 624);
  for (let r = 0; r < rows; r++) {
    for (let b = 0; b < nb; b++) {
      for (let k = 0; k < 32; k++) {
        assert.equal(dst[r * 624 + 32 * b + k], (r * 31 + b * 5 + k) & 0xff, `q ${r}/${b}/${k}`);
      }
      assert.equal(dst[r * 624 + 576 + 2 * b], 200 + b);
      assert.equal(dst[r * 624 + 576 + 2 * b + 1], r);
    }
    assert.deepEqual([...dst.subarray(r * 624 + 612, r * 624 + 624)], new Array(12).fill(0));
  }
  // Q6_K: the 208 bytes before d are the body, d goes to the scale run.
  const q6 = quantize(GgmlType.Q6_K, randomF32(2 * 768, nextSeed()));
  const s6 = toSplitLayout(GgmlType.Q6_K, 768, q6);
  for (let r = 0; r < 2; r++) {
    for (let b = 0; b < 3; b++) {
      const blk = (r * 3 + b) * 210;
      assert.deepEqual(
        s6.subarray(r * 640 + 208 * b, r * 640 + 208 * (b + 1)),
        q6.subarray(blk, blk + 208),
      );
      assert.deepEqual(
        s6.subarray(r * 640 + 624 + 2 * b, r * 640 + 626 + 2 * b),
        q6.subarray(blk + 208, blk + 210),
      );
    }
  }
  // The loader's streamed upload gives the same bytes, whatever the chunk boundaries.
  const big = quantize(GgmlType.Q8_0, randomF32(300 * 576, nextSeed()));
  const want = toSplitLayout(GgmlType.Q8_0, 576, big);
  for (const chunkBytes of [1000, 624 * 7 + 3, want.length]) {
    const fill = splitUploadFill(GgmlType.Q8_0, 576, (d, off) => {
      d.set(big.subarray(off, off + d.length));
      return Promise.resolve();
    });
    const up = new Uint8Array(want.length);
    for (let off = 0; off < up.length; off += chunkBytes) {
      await fill(up.subarray(off, Math.min(up.length, off + chunkBytes)), off);
    }
    assert.deepEqual(up, want, `chunks of ${chunkBytes} bytes`);
  }
  assert.throws(() => toSplitLayout(GgmlType.Q4_K, 256, new Uint8Array(144)), isHcError);
});

interface Case {
  type: TypeName;
  rows: number;
  cols: number;
  batch?: number;
  accumulate?: boolean;
  weightOffset?: number;
  maxBindingBytes?: number;
  norm?: boolean;
  /** GLU pairs: `rows` outputs from 2·rows weight rows. */
  glu?: "silu" | "gelu";
  /** Upload the split layout but record it as GGUF order (the check must then fail). */
  mislabel?: boolean;
}

interface Inputs {
  weight: Uint8Array;
  wRows: number;
  x: Float32Array;
  yInit?: Float32Array;
  g: Float32Array;
}

function inputs(c: Case): Inputs {
  const batch = c.batch ?? 1;
  const wRows = c.glu ? 2 * c.rows : c.rows;
  return {
    weight: quantize(GgmlType[c.type], randomF32(wRows * c.cols, nextSeed())),
    wRows,
    x: randomF32(batch * c.cols, nextSeed()),
    yInit: c.accumulate ? randomF32(batch * c.rows, nextSeed(), 4) : undefined,
    g: randomF32(c.cols, nextSeed(), 2),
  };
}

/** One product of `c` over `layout` on the device: matvec's generic path, or the matmul. */
function product(
  dev: Device,
  kernel: MatVec | MatMul,
  c: Case,
  inp: Inputs,
  layout: WeightLayout,
): { y: Float32Array; kernel: string } {
  const batch = c.batch ?? 1;
  const bytes = layout === "split"
    ? toSplitLayout(GgmlType[c.type], c.cols, inp.weight)
    : inp.weight;
  const offset = c.weightOffset ?? 0;
  // Garbage around the weight: a kernel reading outside its rows would pick it up.
  const filler = new Uint8Array(offset + bytes.length + 64).map((_, i) => (i * 131 + 7) & 0xff);
  filler.set(bytes, offset);
  using w = dev.buffer(filler.length);
  dev.upload(w, filler);
  using xb = dev.buffer(inp.x.byteLength);
  dev.upload(xb, inp.x);
  using gb = dev.buffer(inp.g.byteLength);
  dev.upload(gb, inp.g);
  using y = dev.buffer(batch * c.rows * 4);
  dev.upload(y, inp.yInit ?? new Float32Array(batch * c.rows).fill(Number.NaN));
  using cmd = dev.commands();
  cmd.begin();
  const args: MatVecRecord = {
    weight: w,
    weightOffset: offset,
    layout: c.mislabel ? "ggml" : layout,
    rows: c.rows,
    cols: c.cols,
    x: xb,
    y,
    batch,
    accumulate: c.accumulate,
    maxBindingBytes: c.maxBindingBytes,
    norm: c.norm ? { weight: gb as Buffer, eps: 1e-5 } : undefined,
    glu: c.glu,
  };
  let name: string;
  if (kernel instanceof MatMul) {
    const { maxBindingBytes: _, ...rest } = args;
    name = kernel.record(cmd, rest).kernel;
  } else {
    name = kernel.record(cmd, args).kernel;
  }
  cmd.end();
  dev.waitSync("compute", cmd.submit());
  return { y: new Float32Array(dev.download(y).buffer), kernel: name };
}

/** The reference over GGUF order (plain products only; the fusions compare with GGUF order on
 * the device, which kernels_matvec_fused_test.ts holds to the reference). */
function reference(c: Case, inp: Inputs): Float64Array | Float32Array {
  return referenceMatvec({
    type: GgmlType[c.type],
    weight: inp.weight,
    rows: c.rows,
    cols: c.cols,
    x: inp.x,
    batch: c.batch ?? 1,
    yInit: inp.yInit,
  });
}

/** Split vs GGUF order on the same kernel: equal bits; plain products also near the reference.
 * Returns the split product's shader variant. */
function check(dev: Device, kernel: MatVec | MatMul, c: Case): string {
  const inp = inputs(c);
  const { y: split, kernel: name } = product(dev, kernel, c, inp, "split");
  const { y: ggml } = product(dev, kernel, c, inp, "ggml");
  const what = `${kernel instanceof MatMul ? "matmul" : "matvec"} ${c.type} ${c.rows}x${c.cols} ${
    JSON.stringify({ ...c, type: undefined, rows: undefined, cols: undefined })
  } (seed ${SEED})`;
  const differ = split.findIndex((v, i) => !Object.is(v, ggml[i]));
  assert.equal(
    differ,
    -1,
    `${what}: output ${differ} ${split[differ]} vs GGUF order ${ggml[differ]}`,
  );
  if (!c.norm && !c.glu) {
    const e = relError(split, reference(c, inp));
    assert.ok(e < 1e-3, `${what}: relative error ${e}`);
  }
  return name;
}

Deno.test("split layout: the generic matvec reads it (padded rows, batches, offsets, ranges, fusions)", () => {
  using dev = Device.open();
  for (const type of TYPES) {
    using mv = new MatVec(dev, GgmlType[type], { path: "generic" });
    const wide = type === "Q8_0" ? 576 : 768; // padded rows: 612 -> 624, 630 -> 640 bytes
    check(dev, mv, { type, rows: 77, cols: wide });
    check(dev, mv, { type, rows: 33, cols: 4096 });
    check(dev, mv, { type, rows: 45, cols: wide, batch: 3, accumulate: true, weightOffset: 4096 });
    check(dev, mv, { type, rows: 50, cols: 2048, batch: 9 });
    check(dev, mv, { type, rows: 61, cols: wide, maxBindingBytes: 8192, weightOffset: 16 });
    check(dev, mv, { type, rows: 40, cols: wide, norm: true });
    check(dev, mv, { type, rows: 19, cols: 1024, norm: true, glu: "silu" });
    const name = check(dev, mv, { type, rows: 20, cols: wide, glu: "gelu" });
    assert.match(name, /^matvec_split_q(8_0|6_k)(__sg)?$/);
  }
  // A split weight read as GGUF order is wrong: the checks above can fail.
  using mv = new MatVec(dev, GgmlType.Q8_0, { path: "generic" });
  const c: Case = { type: "Q8_0", rows: 40, cols: 1024, mislabel: true };
  const inp = inputs(c);
  const e = relError(product(dev, mv, c, inp, "split").y, reference(c, inp));
  assert.ok(e > 0.1, `mislabelled layout matched the reference (error ${e})`);
});

Deno.test("split layout: shared-memory reductions", () => {
  using dev = Device.open(undefined, { subgroups: false });
  for (const type of TYPES) {
    using mv = new MatVec(dev, GgmlType[type], { path: "generic" });
    check(dev, mv, { type, rows: 45, cols: 1536, batch: 2 });
    check(dev, mv, { type, rows: 12, cols: 512, glu: "silu", norm: true });
  }
});

Deno.test("split layout: the prompt matmul reads it (both tile shapes, ragged tiles)", () => {
  using dev = Device.open();
  for (const type of TYPES) {
    for (const shape of ["cpu", "gpu"] as const) {
      const opts: MatMulOptions = { shape };
      using mm = new MatMul(dev, GgmlType[type], opts);
      const wide = type === "Q8_0" ? 576 : 768;
      check(dev, mm, { type, rows: 37, cols: wide, batch: 70 });
      const c = { type, rows: 16, cols: 1024, batch: 9, accumulate: true, weightOffset: 32 };
      assert.match(check(dev, mm, c), /^matmul_(cpu|gpu)_q(8_0|6_k)_split$/);
    }
  }
});

Deno.test("split layout: types and paths that cannot read it refuse with E_BAD_REQUEST", () => {
  using dev = Device.open();
  using w = dev.buffer(8192);
  using x = dev.buffer(4096);
  using y = dev.buffer(4096);
  const refuse = (k: MatVec | MatMul, a: Partial<MatVecRecord>) => {
    using cmd = dev.commands();
    cmd.begin();
    const args = { weight: w, layout: "split" as const, rows: 4, cols: 256, x, y, ...a };
    assert.throws(
      () => k instanceof MatMul ? k.record(cmd, args) : k.record(cmd, args),
      (e) => isHcError(e) && e.code === "E_BAD_REQUEST",
    );
    cmd.end();
  };
  using q4k = new MatVec(dev, GgmlType.Q4_K, { path: "generic" });
  refuse(q4k, {});
  using run = new MatVec(dev, GgmlType.Q8_0, { path: "run" });
  refuse(run, {});
  using mmQ4k = new MatMul(dev, GgmlType.Q4_K);
  assert.equal(mmQ4k.supports(256, 0, 256, undefined, "split"), false);
  refuse(mmQ4k, { batch: 4 });
  using mm = new MatMul(dev, GgmlType.Q6_K);
  assert.equal(mm.supports(256, 0, 256, undefined, "split"), true);
  assert.equal(mm.supports(256, 8, 256, undefined, "split"), false);
  assert.equal(mm.supports(256, 0, 256, undefined, "lanes"), false);
});

Deno.test("split layout: a model's matrices take it on the gpu set only, logits match", async () => {
  const dir = await Deno.makeTempDir();
  try {
    for (const type of [GgmlType.Q8_0, GgmlType.Q6_K]) {
      const path = `${dir}/m${type}.gguf`;
      await writeSyntheticModel(path, {
        dim: 768,
        nLayers: 1,
        nHeads: 4,
        nKvHeads: 2,
        ffnDim: 1280,
        vocabSize: 300,
        contextLength: 64,
        seed: 12,
        weightType: type,
      });
      // 20 prompt tokens: the prefill's products go through the matmul where the device takes it.
      await checkVariantsAgainstReference(path, `type ${type}, `, (model, variants) => {
        const L = model.llama.layers[0];
        assert.equal(splitLayoutFits(model.device, type), variants === "gpu");
        for (const w of [L.qkvIn[0].weight, L.o, L.ffnIn[0].weight, L.down]) {
          if (variants === "gpu") assert.equal(w.layout, "split", `gpu: ${w.rows}x${w.cols}`);
          else assert.notEqual(w.layout, "split", `cpu: ${w.rows}x${w.cols}`);
        }
      });
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
