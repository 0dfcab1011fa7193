/**
 * The "lanes" weight layout (src/kernels/matvec_layout.ts): the permutation itself, matvec's
 * run path reading it (row loop and batch step, Q8_0, Q4_0 and Q4_K, rows whose last group of
 * units is partial, both reductions) against the reference over the GGUF-order weight, its
 * refusals, and a synthetic model loaded under each variant set (lanes on the CPU set only)
 * against the reference model.
 */
import assert from "node:assert/strict";
import { isHcError } from "../src/errors.ts";
import { GgmlType } from "../src/gguf/types.ts";
import { MatVec, type MatVecOptions, type MatVecPlan } from "../src/kernels/matvec.ts";
import {
  fromLanesLayout,
  lanesLayoutFits,
  lanesLayoutType,
  lanesUploadFill,
  toLanesLayout,
} from "../src/kernels/matvec_layout.ts";
import { quantize } from "../src/model/quant/mod.ts";
import { Device } from "../src/vk/mod.ts";
import { referenceMatvec } from "../testing/reference_matvec.ts";
import { writeSyntheticModel } from "../testing/synthetic_model.ts";
import { checkVariantsAgainstReference, randomF32, relError } from "./helpers.ts";

const SEED = Date.now() >>> 0;
let seedCounter = 0;
const nextSeed = () => (SEED + 7919 * ++seedCounter) >>> 0;

const TYPES = ["Q8_0", "Q4_0", "Q4_K"] as const;
/** The run path reads the lanes layout through texel bindings only (lavapipe has them). */
const TEXEL = (() => {
  using dev = Device.open();
  return dev.info.texelBuffer;
})();

Deno.test("lanes layout: bands of 8 units, texel k of unit j at k * g + j, and back", async () => {
  // Q4_0, 3 units of 512 (288 bytes = 18 texels each): one group of g = 3.
  const cols = 1536;
  const rowBytes = 3 * 288;
  const src = new Uint8Array(2 * rowBytes);
  // Each texel holds its own (row, unit, texel) tag.
  for (let r = 0; r < 2; r++) {
    for (let u = 0; u < 3; u++) {
      for (let k = 0; k < 18; k++) {
        src.fill(
          r * 100 + u * 20 + k,
          r * rowBytes + (u * 18 + k) * 16,
          r * rowBytes + (u * 18 + k + 1) * 16,
        );
      }
    }
  }
  const dst = new Uint8Array(src.length);
  toLanesLayout(GgmlType.Q4_0, cols, src, dst);
  for (let r = 0; r < 2; r++) {
    for (let u = 0; u < 3; u++) {
      for (let k = 0; k < 18; k++) {
        const at = r * rowBytes + (k * 3 + u) * 16;
        assert.deepEqual([...dst.subarray(at, at + 16)], new Array(16).fill(r * 100 + u * 20 + k));
      }
    }
  }
  const back = new Uint8Array(src.length);
  fromLanesLayout(GgmlType.Q4_0, cols, dst, back);
  assert.deepEqual(back, src);
  // 28 units (14336 columns): groups of 8, 8, 8 and 4; a random row survives the round trip.
  const w = quantize(GgmlType.Q8_0, randomF32(14336, nextSeed()));
  const p = new Uint8Array(w.length);
  toLanesLayout(GgmlType.Q8_0, 14336, w, p);
  assert.notDeepEqual(p, w);
  const q = new Uint8Array(w.length);
  fromLanesLayout(GgmlType.Q8_0, 14336, p, q);
  assert.deepEqual(q, w);
  // 10 units (5120 columns): band 0 holds units 0-7 of every row, then band 1 units 8-9.
  const rows = 3, units = 10, T = 18, rb = units * T * 16;
  const tagged = new Uint8Array(rows * rb);
  for (let r = 0; r < rows; r++) {
    for (let t = 0; t < units * T; t++) {
      tagged.fill((r * 61 + t) & 0xff, r * rb + t * 16, r * rb + t * 16 + 16);
    }
  }
  const banded = new Uint8Array(tagged.length);
  toLanesLayout(GgmlType.Q4_0, 5120, tagged, banded);
  for (let r = 0; r < rows; r++) {
    for (let u = 0; u < units; u++) {
      for (let k = 0; k < T; k++) {
        const band = u < 8 ? 0 : 1, g = u < 8 ? 8 : 2, j = u % 8;
        const at = band * rows * 8 * T + r * g * T + k * g + j;
        assert.equal(banded[at * 16], (r * 61 + u * T + k) & 0xff, `row ${r} unit ${u} texel ${k}`);
      }
    }
  }
  // The loader's streamed upload gives the same bytes, whatever the chunk boundaries.
  for (const chunkBytes of [1000, 7776, banded.length]) {
    const fill = lanesUploadFill(GgmlType.Q4_0, rows, 5120, (d, off) => {
      d.set(tagged.subarray(off, off + d.length));
      return Promise.resolve();
    });
    const up = new Uint8Array(banded.length);
    for (let off = 0; off < up.length; off += chunkBytes) {
      await fill(up.subarray(off, Math.min(up.length, off + chunkBytes)), off);
    }
    assert.deepEqual(up, banded, `chunks of ${chunkBytes} bytes`);
  }
  assert.equal(lanesLayoutType(GgmlType.Q6_K, 4096), false);
  assert.equal(lanesLayoutType(GgmlType.Q8_0, 4000), false);
  assert.equal(lanesLayoutType(GgmlType.Q8_0, 640), false);
  // 768 columns: three half units of 256 (Q8_0: 17 texels each), one group of g = 3.
  const h = quantize(GgmlType.Q8_0, randomF32(2 * 768, nextSeed()));
  const hl = new Uint8Array(h.length);
  toLanesLayout(GgmlType.Q8_0, 768, h, hl);
  for (let r = 0; r < 2; r++) {
    for (let u = 0; u < 3; u++) {
      for (let k = 0; k < 17; k++) {
        const from = r * 816 + (u * 17 + k) * 16, to = r * 816 + (k * 3 + u) * 16;
        assert.deepEqual(hl.subarray(to, to + 16), h.subarray(from, from + 16), `${r}/${u}/${k}`);
      }
    }
  }
  assert.throws(
    () => toLanesLayout(GgmlType.F16, 512, new Uint8Array(1024), new Uint8Array(1024)),
    isHcError,
  );
});

interface Case {
  type: typeof TYPES[number];
  rows: number;
  cols: number;
  batch?: number;
  accumulate?: boolean;
  weightOffset?: number;
  options?: MatVecOptions;
  /** Upload the lanes layout but record it as GGUF order (the check must then fail). */
  mislabel?: boolean;
}

function run(dev: Device, c: Case): { err: number; plan: MatVecPlan } {
  const batch = c.batch ?? 1;
  const weight = quantize(GgmlType[c.type], randomF32(c.rows * c.cols, nextSeed()));
  const x = randomF32(batch * c.cols, nextSeed());
  const yInit = c.accumulate ? randomF32(batch * c.rows, nextSeed(), 4) : undefined;
  const want = referenceMatvec({
    type: GgmlType[c.type],
    weight,
    rows: c.rows,
    cols: c.cols,
    x,
    batch,
    yInit,
  });
  const lanes = new Uint8Array(weight.length);
  toLanesLayout(GgmlType[c.type], c.cols, weight, lanes);
  const offset = c.weightOffset ?? 0;
  // Garbage around the weight: a kernel reading outside its rows would pick it up.
  const filler = new Uint8Array(offset + weight.length + 128).map((_, i) => (i * 131 + 7) & 0xff);
  filler.set(lanes, offset);
  using w = dev.buffer(filler.length);
  dev.upload(w, filler);
  using xb = dev.buffer(x.byteLength);
  dev.upload(xb, x);
  using y = dev.buffer(batch * c.rows * 4);
  dev.upload(y, yInit ?? new Float32Array(batch * c.rows).fill(Number.NaN));
  using mv = new MatVec(dev, GgmlType[c.type], c.options ?? { path: "run" });
  using cmd = dev.commands();
  cmd.begin();
  const plan = mv.record(cmd, {
    weight: w,
    weightOffset: offset,
    layout: c.mislabel ? "ggml" : "lanes",
    rows: c.rows,
    cols: c.cols,
    x: xb,
    y,
    batch,
    accumulate: c.accumulate,
  });
  cmd.end();
  dev.waitSync("compute", cmd.submit());
  const got = new Float32Array(dev.download(y).buffer);
  const err = relError(got, want);
  return { err: Number.isNaN(err) ? Infinity : err, plan };
}

function check(dev: Device, c: Case, variant: MatVecPlan["variant"]): void {
  const { err, plan } = run(dev, c);
  const what = `${c.type} ${c.rows}x${c.cols} batch ${
    c.batch ?? 1
  } via ${plan.kernel} (seed ${SEED})`;
  assert.ok(err < 1e-3, `${what}: relative error ${err}`);
  assert.equal(plan.variant, variant, what);
  // The half-unit variant exactly where 512 does not divide the row.
  const half = c.cols % 512 === 0 ? "" : "h";
  assert.ok(
    plan.kernel.startsWith(`${variant === "rowloop" ? "matvec_rll" : "matvec_runl"}${half}_`),
    what,
  );
}

Deno.test({
  name: "lanes layout: matvec's run path matches the reference (row loop, batches, partial groups)",
  ignore: !TEXEL,
  fn: () => {
    using dev = Device.open();
    for (const type of TYPES) {
      // 2 units (one group of 2); 28 units (groups of 8, 8, 8, 4: row slices); 5 units.
      check(dev, { type, rows: 131, cols: 1024 }, "rowloop");
      check(dev, { type, rows: 37, cols: 14336 }, "rowloop");
      check(dev, { type, rows: 70, cols: 2560, accumulate: true, weightOffset: 4096 }, "rowloop");
      check(dev, { type, rows: 29, cols: 2560, batch: 3, accumulate: true }, "step");
      check(dev, { type, rows: 21, cols: 4096, batch: 9 }, "step");
      // Half units: 768 = 3 x 256 (row slices), 2304 = 9 x 256 (groups of 8 and 1).
      check(dev, { type, rows: 75, cols: 768 }, "rowloop");
      check(dev, { type, rows: 33, cols: 2304, accumulate: true, weightOffset: 4096 }, "rowloop");
      check(dev, { type, rows: 29, cols: 768, batch: 3 }, "step");
      check(dev, { type, rows: 21, cols: 2304, batch: 9, accumulate: true }, "step");
    }
    // A lanes weight read as GGUF order is wrong: the checks above can fail.
    const { err } = run(dev, { type: "Q8_0", rows: 40, cols: 2560, mislabel: true });
    assert.ok(err > 0.1, `mislabelled layout matched the reference (error ${err})`);
  },
});

Deno.test({
  name: "lanes layout: shared-memory reductions",
  ignore: !TEXEL,
  fn: () => {
    using dev = Device.open(undefined, { subgroups: false });
    check(dev, { type: "Q4_K", rows: 45, cols: 2560 }, "rowloop");
    check(dev, { type: "Q8_0", rows: 45, cols: 1536, batch: 2 }, "step");
    check(dev, { type: "Q4_0", rows: 45, cols: 768 }, "rowloop");
    check(dev, { type: "Q4_K", rows: 45, cols: 768, batch: 2 }, "step");
  },
});

Deno.test("lanes layout: paths that cannot read it refuse with E_BAD_REQUEST", () => {
  using dev = Device.open();
  const bad = (c: Case) =>
    assert.throws(() => run(dev, c), (e) => isHcError(e) && e.code === "E_BAD_REQUEST");
  bad({ type: "Q8_0", rows: 8, cols: 1024, options: { path: "generic" } });
  bad({ type: "Q4_K", rows: 8, cols: 1024, options: { path: "run", texel: false } });
  using mv = new MatVec(dev, GgmlType.Q6_K, { path: "run" });
  using w = dev.buffer(210 * 8 * 2 + 256);
  using x = dev.buffer(512 * 4);
  using y = dev.buffer(8 * 4);
  using cmd = dev.commands();
  cmd.begin();
  assert.throws(
    () => mv.record(cmd, { weight: w, layout: "lanes", rows: 8, cols: 512, x, y }),
    (e) => isHcError(e) && e.code === "E_BAD_REQUEST",
  );
  cmd.end();
});

Deno.test("lanes layout: a model's matrices take it on the cpu set only, logits match", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/q8.gguf`;
    await writeSyntheticModel(path, {
      dim: 512,
      nLayers: 1,
      nHeads: 4,
      nKvHeads: 2,
      ffnDim: 4608, // 9 units: the down projection has two bands, the second of one unit
      vocabSize: 300,
      contextLength: 64,
      seed: 11,
      weightType: GgmlType.Q8_0,
    });
    await checkVariantsAgainstReference(path, "", (model, variants) => {
      const L = model.llama.layers[0];
      // The gpu set takes the split layout for Q8_0 (tests/kernels_split_layout_test.ts).
      const expect = variants === "gpu"
        ? "split"
        : model.device.info.texelBuffer
        ? "lanes"
        : "ggml";
      // Q, K and V share a type, and gate and up: one stacked weight each, bands spanning all.
      assert.equal(L.ffnIn.length, 1);
      assert.equal(L.qkvIn.length, 1);
      for (const w of [L.qkvIn[0].weight, L.o, L.ffnIn[0].weight, L.down]) {
        assert.equal(w.layout, expect, `${variants}: ${w.rows}x${w.cols}`);
      }
      assert.equal(
        lanesLayoutFits(model.device, GgmlType.Q8_0, 8, 512),
        expect === "lanes",
        variants,
      );
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
