/**
 * The TS references of Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q5_K, IQ4_NL and IQ4_XS
 * (src/model/quant/): known answers on hand-built blocks, worked out by hand from ggml's
 * dequantize_row_* (each places a value through the field that is easiest to get wrong: the
 * fifth-bit word, packed 6-bit scales, the high-bit mask), and round trips through the test
 * encoders (testing/quantizers.ts) on random data.
 */
import assert from "node:assert/strict";
import { isHcError } from "../src/errors.ts";
import { ggmlBytes, GgmlType, SUPPORTED_WEIGHT_TYPES } from "../src/gguf/types.ts";
import { canQuantize, dequantize, quantize, rowBytes } from "../src/model/quant/mod.ts";
import { quantizeAny } from "../testing/quantizers.ts";
import { randomF32 } from "./helpers.ts";

const ONE = 0x3c00;
const HALF = 0x3800;
const TWO = 0x4000;
const MINUS_ONE = 0xbc00;

function block(bytes: number, fields: Record<number, number>, halves: Record<number, number>) {
  const b = new Uint8Array(bytes);
  for (const [o, v] of Object.entries(fields)) b[Number(o)] = v;
  for (const [o, h] of Object.entries(halves)) {
    b[Number(o)] = h & 0xff;
    b[Number(o) + 1] = h >>> 8;
  }
  return b;
}

function expectAt(type: number, b: Uint8Array, n: number, want: Record<number, number>) {
  const y = dequantize(type, b, n);
  for (const [i, v] of Object.entries(want)) assert.equal(y[Number(i)], v, `element ${i}`);
}

Deno.test("Q4_1, Q5_0, Q5_1, IQ4_NL known answers", () => {
  // Q4_1: d = 2, m = -1; qs[3] = 0x5a: element 3 = 10*2 - 1, element 19 = 5*2 - 1.
  expectAt(GgmlType.Q4_1, block(20, { 7: 0x5a }, { 0: TWO, 2: MINUS_ONE }), 32, {
    3: 19,
    19: 9,
    0: -1,
  });
  // Q5_0: d = 1; qh = 0x00010001 gives elements 0 and 16 their fifth bit; qs[0] = 0x21.
  expectAt(GgmlType.Q5_0, block(22, { 2: 1, 4: 1, 6: 0x21 }, { 0: ONE }), 32, {
    0: 1,
    16: 2,
    1: -16,
    17: -16,
  });
  // Q5_1: d = 1, m = 0.5; qh bit 31 (element 31), qs[15] = 0x10: element 31 = 17 + 0.5.
  expectAt(GgmlType.Q5_1, block(24, { 7: 0x80, 23: 0x10 }, { 0: ONE, 2: HALF }), 32, {
    31: 17.5,
    15: 0.5,
  });
  // IQ4_NL: d = 0.5, qs[0] = 0x0f: element 0 = 0.5*113, element 16 = 0.5*-127.
  expectAt(GgmlType.IQ4_NL, block(18, { 2: 0x0f }, { 0: HALF }), 32, { 0: 56.5, 16: -63.5 });
});

Deno.test("Q2_K, Q3_K, Q5_K, IQ4_XS known answers", () => {
  // Q2_K: d = 1, dmin = 0.5; scales[5] = 0x31 (scale 1, min 3). Sub-block 5 = n 0, j 2,
  // second half: element 80 is bits 4-5 of qs[16] (byte 32).
  expectAt(GgmlType.Q2_K, block(84, { 5: 0x31, 32: 0b110000 }, { 80: ONE, 82: HALF }), 256, {
    80: 1.5,
    81: -1.5,
  });
  // Q3_K: d = 1. Scale 0 = 40 (+8): low nibble 8 in scales[0], bits 4-5 (2) in scales[8].
  // Scale 9 = 29 (-3): low nibble 13 in the high nibble of scales[1], bits 4-5 (1) in bits
  // 4-5 of scales[9]. Element 0: qs[0] = 3 with hmask[0] bit 0 set -> 3*8. Element 144
  // (n 1, j 0, l 16): qs[48] = 2, hmask[16] bit 4 clear -> (2 - 4) * -3.
  const q3 = block(110, { 0: 1, 32: 3, 80: 2, 96: 8, 97: 0xd0, 104: 2, 105: 0x10 }, {
    108: ONE,
  });
  expectAt(GgmlType.Q3_K, q3, 256, { 0: 24, 144: 6 });
  // Q5_K: d = dmin = 1; sub-block 3 has scale 2 (byte 7) and min 1 (byte 11). Element 101 =
  // group 1, high nibble of qs[32 + 5] (byte 85) = 7, plus qh[5] (byte 21) bit 3 -> 23.
  expectAt(
    GgmlType.Q5_K,
    block(176, { 7: 2, 11: 1, 85: 0x70, 21: 0x08 }, { 0: ONE, 2: ONE }),
    256,
    {
      101: 45,
      100: -1,
    },
  );
  // IQ4_XS: d = 1; sub-block 3 scale = high nibble of scales_l[1] (5) | scales_h bits 6-7
  // (2) << 4 = 37 -> 5. qs byte 8 + 48 = 0xf0: element 96 = 5*-127, element 112 = 5*113.
  expectAt(GgmlType.IQ4_XS, block(136, { 3: 0x00, 2: 0x80, 5: 0x50, 56: 0xf0 }, { 0: ONE }), 256, {
    96: -635,
    112: 565,
  });
});

const BOUNDS: [string, number, number][] = [
  ["Q4_1", GgmlType.Q4_1, 0.09],
  ["Q5_0", GgmlType.Q5_0, 0.045],
  ["Q5_1", GgmlType.Q5_1, 0.045],
  ["Q2_K", GgmlType.Q2_K, 0.35],
  ["Q3_K", GgmlType.Q3_K, 0.2],
  ["Q5_K", GgmlType.Q5_K, 0.045],
  ["IQ4_NL", GgmlType.IQ4_NL, 0.1],
  ["IQ4_XS", GgmlType.IQ4_XS, 0.1],
];

for (const [name, type, bound] of BOUNDS) {
  Deno.test(`${name}: test encoder round trip within ${bound * 100}% relative RMS`, () => {
    const x = randomF32(256 * 16, 1000 + type);
    const q = quantizeAny(type, x);
    assert.equal(q.length, ggmlBytes(type, x.length));
    const y = dequantize(type, q, x.length);
    let e = 0, s = 0;
    for (let i = 0; i < x.length; i++) {
      e += (x[i] - y[i]) ** 2;
      s += x[i] ** 2;
    }
    const err = Math.sqrt(e / s);
    assert.ok(err < bound && err > 1e-4, `${name}: relative RMS ${err}`);
  });
}

Deno.test("every supported type has a size, a decoder and a test encoder", () => {
  for (const type of SUPPORTED_WEIGHT_TYPES) {
    const n = 512;
    const bytes = rowBytes(type, n);
    assert.equal(bytes, ggmlBytes(type, n));
    assert.equal(dequantize(type, new Uint8Array(bytes), n).length, n);
    assert.equal(quantizeAny(type, randomF32(n, type)).length, bytes);
  }
  // The engine itself encodes only the types ggml's reference quantizers are ported for.
  assert.equal(canQuantize(GgmlType.Q5_K), false);
  assert.throws(
    () => quantize(GgmlType.IQ4_XS, new Float32Array(256)),
    (e) => isHcError(e, "E_MODEL_TENSOR") && /IQ4_XS/.test(e.message),
  );
});
