import assert from "node:assert/strict";
import { isHcError } from "../src/errors.ts";
import { ggmlBytes, GgmlType } from "../src/gguf/types.ts";
import {
  bf16ToF32,
  bf16ToF32Array,
  blockElems,
  dequantize,
  dequantizeInto,
  dequantizeRow,
  f16ToF32,
  f16ToF32Array,
  f32ToBf16,
  f32ToBf16Array,
  f32ToF16,
  f32ToF16Array,
  getScaleMinK4,
  nearestInt,
  packScaleMinK4,
  quantize,
  rowBytes,
} from "../src/model/quant/mod.ts";
import { mulberry32 } from "../testing/rng.ts";

const rng = mulberry32;

function gaussian(n: number, seed: number): Float32Array {
  const r = rng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const u = 1 - r();
    out[i] = Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * r());
  }
  return out;
}

/** Weight-like data: Gaussian rows with different scales and offsets, a few outliers. */
function weightLike(n: number, seed: number): Float32Array {
  const x = gaussian(n, seed);
  const r = rng(seed + 1);
  for (let row = 0; row < n / 512; row++) {
    const scale = 0.005 + r() * 0.1;
    const offset = (r() - 0.5) * scale;
    for (let i = row * 512; i < (row + 1) * 512; i++) x[i] = x[i] * scale + offset;
  }
  for (let k = 0; k < n / 1000; k++) x[Math.floor(r() * n)] *= 8;
  return x;
}

function relRms(x: Float32Array, y: Float32Array): number {
  let e = 0;
  let s = 0;
  for (let i = 0; i < x.length; i++) {
    e += (x[i] - y[i]) ** 2;
    s += x[i] ** 2;
  }
  return Math.sqrt(e / s);
}

function f16Bytes(h: number): [number, number] {
  return [h & 0xff, h >>> 8];
}

function assertCode(fn: () => unknown, code: "E_MODEL_TENSOR", re?: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(isHcError(e, code), `expected ${code}, got ${String(e)}`);
    if (re) assert.match((e as Error).message, re);
    return true;
  });
}

Deno.test("f16: edge values", () => {
  assert.equal(f32ToF16(65504), 0x7bff);
  assert.equal(f16ToF32(0x7bff), 65504);
  assert.equal(f32ToF16(65519), 0x7bff); // below the midpoint to 65536
  assert.equal(f32ToF16(65520), 0x7c00); // the tie rounds to even, i.e. up to inf
  assert.equal(f32ToF16(1e6), 0x7c00);
  assert.equal(f32ToF16(-1e6), 0xfc00);
  assert.equal(f32ToF16(6.103515625e-5), 0x0400); // smallest normal 2^-14
  assert.equal(f32ToF16(6.1e-5), 0x03ff); // just below: largest subnormal
  assert.equal(f16ToF32(0x03ff), 1023 * 2 ** -24);
  assert.equal(f32ToF16(5.96e-8), 0x0001); // rounds up to the smallest subnormal 2^-24
  assert.equal(f16ToF32(0x0001), 2 ** -24);
  assert.equal(f32ToF16(2 ** -25), 0x0000); // exact tie with 0 and 2^-24: even is 0
  assert.equal(f32ToF16(2 ** -25 * 1.0000001), 0x0001);
  assert.equal(f32ToF16(3 * 2 ** -25), 0x0002); // tie between 1 and 2 units: even is 2
  assert.equal(f32ToF16(1e-10), 0x0000);
  assert.equal(f32ToF16(Infinity), 0x7c00);
  assert.equal(f32ToF16(-Infinity), 0xfc00);
  assert.equal(f16ToF32(0x7c00), Infinity);
  assert.equal(f16ToF32(0xfc00), -Infinity);
  assert.equal(f32ToF16(NaN), 0x7e00);
  assert.ok(Number.isNaN(f16ToF32(0x7e00)));
  assert.ok(Number.isNaN(f16ToF32(0x7c01)));
  assert.equal(f32ToF16(-0), 0x8000);
  assert.ok(Object.is(f16ToF32(0x8000), -0));
  assert.equal(f32ToF16(0), 0);
  // Ties to even between neighbours 2^-10 apart.
  assert.equal(f32ToF16(1 + 2 ** -11), 0x3c00);
  assert.equal(f32ToF16(1 + 3 * 2 ** -11), 0x3c02);
  assert.equal(f32ToF16(2049), f32ToF16(2048));
  assert.equal(f16ToF32(f32ToF16(2051)), 2052);
  assert.equal(f32ToF16(-2.5), 0xc100);
  assert.equal(f32ToF16(0.1), 0x2e66);
});

Deno.test("f16: every half value survives f16 -> f32 -> f16; bulk equals scalar", () => {
  const all = new Uint16Array(65536);
  for (let h = 0; h < 65536; h++) all[h] = h;
  const asF32 = f16ToF32Array(all);
  const back = f32ToF16Array(asF32);
  for (let h = 0; h < 65536; h++) {
    assert.equal(asF32[h], Math.fround(f16ToF32(h)));
    const isNan = (h & 0x7c00) === 0x7c00 && (h & 0x3ff) !== 0;
    if (isNan) assert.equal(back[h], (h & 0x8000) | 0x7e00);
    else assert.equal(back[h], h, `half 0x${h.toString(16)}`);
  }
  const x = gaussian(4096, 7).map((v, i) => v * 2 ** ((i % 60) - 30));
  const bulk = f32ToF16Array(x);
  for (let i = 0; i < x.length; i++) assert.equal(bulk[i], f32ToF16(x[i]));
});

Deno.test("f16: conversion is the correctly rounded nearest half", () => {
  // Compare against a brute-force nearest search over the sorted positive halves.
  const r = rng(99);
  for (let k = 0; k < 3000; k++) {
    const x = Math.fround(r() * 2 ** (Math.floor(r() * 42) - 26));
    const h = f32ToF16(x);
    const v = f16ToF32(h);
    const below = h > 0 ? f16ToF32(h - 1) : -Infinity;
    const above = h < 0x7c00 ? f16ToF32(h + 1) : Infinity;
    assert.ok(Math.abs(v - x) <= Math.abs(below - x), `${x}: 0x${h.toString(16)}`);
    if (above !== Infinity) assert.ok(Math.abs(v - x) <= Math.abs(above - x), `${x}`);
  }
});

Deno.test("bf16: rounding, specials and bulk", () => {
  assert.equal(f32ToBf16(1), 0x3f80);
  assert.equal(bf16ToF32(0x3f80), 1);
  assert.equal(f32ToBf16(1 + 2 ** -8), 0x3f80); // tie -> even
  assert.equal(f32ToBf16(1 + 3 * 2 ** -8), 0x3f82); // tie -> even (up)
  assert.equal(f32ToBf16(1 + 2 ** -8 + 2 ** -20), 0x3f81);
  assert.equal(f32ToBf16(-2), 0xc000);
  assert.equal(f32ToBf16(Infinity), 0x7f80);
  assert.equal(f32ToBf16(-Infinity), 0xff80);
  assert.equal(f32ToBf16(3.4e38), 0x7f80); // rounds past the largest finite bf16
  assert.equal(f32ToBf16(NaN) & 0x7fc0, 0x7fc0);
  assert.ok(Number.isNaN(bf16ToF32(f32ToBf16(NaN))));
  assert.equal(f32ToBf16(-0), 0x8000);
  // A signalling NaN with payload only in the low bits must stay a NaN (forced quiet).
  const snan = new Float32Array(new Uint32Array([0x7f800001]).buffer)[0];
  assert.ok(Number.isNaN(bf16ToF32(f32ToBf16(snan))));
  const all = new Uint16Array(65536);
  for (let h = 0; h < 65536; h++) all[h] = h;
  const asF32 = bf16ToF32Array(all);
  const back = f32ToBf16Array(asF32);
  for (let h = 0; h < 65536; h++) {
    const isNan = (h & 0x7f80) === 0x7f80 && (h & 0x7f) !== 0;
    if (!isNan) assert.equal(back[h], h);
  }
  const x = gaussian(2048, 3);
  const bulk = f32ToBf16Array(x);
  for (let i = 0; i < x.length; i++) assert.equal(bulk[i], f32ToBf16(x[i]));
});

Deno.test("nearestInt rounds half to even like ggml", () => {
  assert.deepEqual([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 2.4999, 2.5001].map(nearestInt), [
    0,
    2,
    2,
    -0,
    -2,
    -2,
    2,
    3,
  ]);
});

const ROUND_TRIP_BOUNDS: [string, number, number][] = [
  ["Q8_0", GgmlType.Q8_0, 0.01],
  ["Q4_0", GgmlType.Q4_0, 0.12],
  ["Q4_K", GgmlType.Q4_K, 0.08],
  ["Q6_K", GgmlType.Q6_K, 0.03],
];

for (const [name, type, bound] of ROUND_TRIP_BOUNDS) {
  Deno.test(`${name}: round trip on random data within ${bound * 100}% relative RMS`, () => {
    for (
      const [label, x] of [
        ["gaussian", gaussian(256 * 24, 11)],
        ["weight-like", weightLike(256 * 32, 12)],
      ] as const
    ) {
      const q = quantize(type, x);
      assert.equal(q.length, ggmlBytes(type, x.length));
      const y = dequantize(type, q, x.length);
      const err = relRms(x, y);
      assert.ok(err < bound, `${name} ${label}: relative RMS ${err}`);
      // A format this coarse cannot be lossless; zero error would mean nothing was quantized.
      assert.ok(err > 1e-4, `${name} ${label}: suspiciously exact (${err})`);
    }
  });
}

Deno.test("K-quants beat plain per-block scaling of the same bit width", () => {
  // Q4_K (4 bits + per-32 scale and min) must do better than Q4_0 (4 bits, per-32 scale)
  // on data with offsets; this catches a search that silently falls back to its first guess.
  const x = weightLike(256 * 32, 21);
  const e4k = relRms(x, dequantize(GgmlType.Q4_K, quantize(GgmlType.Q4_K, x), x.length));
  const e40 = relRms(x, dequantize(GgmlType.Q4_0, quantize(GgmlType.Q4_0, x), x.length));
  const e6k = relRms(x, dequantize(GgmlType.Q6_K, quantize(GgmlType.Q6_K, x), x.length));
  assert.ok(e4k < e40, `Q4_K ${e4k} vs Q4_0 ${e40}`);
  assert.ok(e6k < e4k / 2, `Q6_K ${e6k} vs Q4_K ${e4k}`);
});

Deno.test("F32, F16, BF16 round trips", () => {
  const x = gaussian(1000, 5).map((v, i) => v * 2 ** ((i % 20) - 10));
  assert.deepEqual(dequantize(GgmlType.F32, quantize(GgmlType.F32, x), x.length), x);
  const h = dequantize(GgmlType.F16, quantize(GgmlType.F16, x), x.length);
  const b = dequantize(GgmlType.BF16, quantize(GgmlType.BF16, x), x.length);
  for (let i = 0; i < x.length; i++) {
    // Half precision: 11 significant bits (half a unit of 2^-24 below the normal range).
    const tol = Math.max(Math.abs(x[i]) * 2 ** -11, 2 ** -25);
    assert.ok(Math.abs(h[i] - x[i]) <= tol, `f16 ${x[i]} -> ${h[i]}`);
    assert.ok(Math.abs(b[i] - x[i]) <= Math.abs(x[i]) * 2 ** -8, `bf16 ${x[i]} -> ${b[i]}`);
    assert.equal(h[i], f16ToF32(f32ToF16(x[i])));
    assert.equal(b[i], bf16ToF32(f32ToBf16(x[i])));
  }
  const bytes = quantize(GgmlType.F16, Float32Array.of(1, -2));
  assert.deepEqual([...bytes], [0x00, 0x3c, 0x00, 0xc0]); // little-endian halves
});

Deno.test("Q4_0 known answer: d = 0.5, nibbles 0..15", () => {
  const block = new Uint8Array(18);
  block.set(f16Bytes(0x3800), 0); // 0.5
  for (let j = 0; j < 16; j++) block[2 + j] = j | ((15 - j) << 4);
  const y = dequantize(GgmlType.Q4_0, block, 32);
  for (let j = 0; j < 16; j++) {
    assert.equal(y[j], (j - 8) * 0.5);
    assert.equal(y[j + 16], (15 - j - 8) * 0.5);
  }
});

Deno.test("Q4_0 quantizer: largest magnitude maps to -8 and grid values come back exactly", () => {
  const x = new Float32Array(32);
  for (let j = 0; j < 32; j++) x[j] = (((j * 5) % 16) - 8) * 0.25;
  const q = quantize(GgmlType.Q4_0, x);
  assert.equal(f16ToF32(q[0] | (q[1] << 8)), 0.25); // max = -2 -> d = -2 / -8
  assert.deepEqual(dequantize(GgmlType.Q4_0, q, 32), x);
  // Low nibbles hold elements 0..15, high nibbles 16..31.
  assert.equal(q[2] & 0x0f, 0);
  assert.equal(q[2] >> 4, (16 * 5) % 16);
});

Deno.test("Q8_0 known answer and exact grid", () => {
  const block = new Uint8Array(34);
  block.set(f16Bytes(0x3400), 0); // 0.25
  for (let j = 0; j < 32; j++) block[2 + j] = (j * 9 - 140) & 0xff;
  const y = dequantize(GgmlType.Q8_0, block, 32);
  for (let j = 0; j < 32; j++) {
    const q = ((j * 9 - 140) << 24) >> 24;
    assert.equal(y[j], q * 0.25);
  }
  const x = new Float32Array(32);
  for (let j = 0; j < 32; j++) x[j] = (j === 3 ? -127 : (j * 37) % 255 - 127) * 0.5;
  const q = quantize(GgmlType.Q8_0, x);
  assert.equal(f16ToF32(q[0] | (q[1] << 8)), 0.5);
  assert.equal(q[2 + 3], 0x81); // -127 as int8
  assert.deepEqual(dequantize(GgmlType.Q8_0, q, 32), x);
});

const Q4K_SC = [1, 2, 3, 63, 17, 33, 48, 60];
const Q4K_M = [0, 5, 10, 62, 20, 40, 63, 1];
// The 12 packed bytes for the scales/mins above, worked out by hand from the bit layout.
const Q4K_PACKED = [0x41, 0x82, 0xc3, 0xff, 0x40, 0x85, 0xca, 0x3e, 0x41, 0x81, 0xf0, 0x1c];

Deno.test("Q4_K packed 6-bit scales and mins", () => {
  const packed = new Uint8Array(12);
  packScaleMinK4(Q4K_SC, Q4K_M, packed);
  assert.deepEqual([...packed], Q4K_PACKED);
  const lit = Uint8Array.from(Q4K_PACKED);
  for (let j = 0; j < 8; j++) {
    assert.deepEqual(getScaleMinK4(j, lit), { scale: Q4K_SC[j], min: Q4K_M[j] });
  }
});

Deno.test("Q4_K known answer on a hand-built block", () => {
  const d = 0.5;
  const dmin = 0.25;
  const block = new Uint8Array(144);
  block.set(f16Bytes(0x3800), 0); // d = 0.5
  block.set(f16Bytes(0x3400), 2); // dmin = 0.25
  block.set(Q4K_PACKED, 4);
  const lo = (g: number, l: number) => (l + g) % 16;
  const hi = (g: number, l: number) => (l * 3 + g) % 16;
  for (let g = 0; g < 4; g++) {
    for (let l = 0; l < 32; l++) block[16 + 32 * g + l] = lo(g, l) | (hi(g, l) << 4);
  }
  const y = dequantize(GgmlType.Q4_K, block, 256);
  for (let g = 0; g < 4; g++) {
    for (let l = 0; l < 32; l++) {
      assert.equal(y[64 * g + l], d * Q4K_SC[2 * g] * lo(g, l) - dmin * Q4K_M[2 * g]);
      assert.equal(
        y[64 * g + 32 + l],
        d * Q4K_SC[2 * g + 1] * hi(g, l) - dmin * Q4K_M[2 * g + 1],
      );
    }
  }
  assert.equal(y[0], 0); // 0.5*1*0 - 0.25*0
  assert.equal(y[255], 0.5 * 60 * hi(3, 31) - 0.25 * 1);
});

Deno.test("Q6_K known answer on a hand-built block", () => {
  const sc = [1, -2, 3, -4, 5, 127, -128, 8, 9, -10, 11, 12, 13, -14, 15, 16];
  const d = 0.125;
  const block = new Uint8Array(210);
  for (let i = 0; i < 16; i++) block[192 + i] = sc[i] & 0xff;
  block.set(f16Bytes(0x3000), 208); // 0.125
  // Everything zero: q = 0 -> (0 - 32) * scale.
  let y = dequantize(GgmlType.Q6_K, block, 256);
  for (let e = 0; e < 256; e++) assert.equal(y[e], d * sc[e >> 4] * -32);
  // Element 200 = half 1, third quarter, l = 8: ql byte 64+8 high nibble, qh byte 160+8 bits 4-5.
  block[64 + 8] = 0xa0;
  block[128 + 32 + 8] = 0x20;
  // Element 33 = half 0, second quarter, l = 1: ql byte 32+1 low nibble, qh byte 128+1 bits 2-3.
  block[32 + 1] = 0x07;
  block[128 + 1] = 0x0c;
  y = dequantize(GgmlType.Q6_K, block, 256);
  assert.equal(y[200], d * sc[12] * (42 - 32));
  assert.equal(y[33], d * sc[2] * (0x37 - 32));
  // The other elements sharing those bytes are untouched.
  assert.equal(y[136], d * sc[8] * -32);
  assert.equal(y[1], d * sc[0] * -32);

  // A full pattern, placed by the layout rule for every element.
  const q = (e: number) => (e * 7 + 3) % 64;
  for (let h = 0; h < 2; h++) {
    for (let l = 0; l < 32; l++) {
      const [q1, q2, q3, q4] = [0, 32, 64, 96].map((k) => q(128 * h + l + k));
      block[64 * h + l] = (q1 & 15) | ((q3 & 15) << 4);
      block[64 * h + l + 32] = (q2 & 15) | ((q4 & 15) << 4);
      block[128 + 32 * h + l] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
    }
  }
  y = dequantize(GgmlType.Q6_K, block, 256);
  for (let e = 0; e < 256; e++) assert.equal(y[e], Math.fround(d * sc[e >> 4] * (q(e) - 32)));
});

Deno.test("quantizers on zeros, constants and non-finite input", () => {
  for (const type of [GgmlType.Q8_0, GgmlType.Q4_0, GgmlType.Q4_K, GgmlType.Q6_K]) {
    const zeros = new Float32Array(512);
    const y = dequantize(type, quantize(type, zeros), 512);
    assert.ok(y.every((v) => v === 0), `type ${type} zeros`);
    const c = new Float32Array(512).fill(-0.75);
    const yc = dequantize(type, quantize(type, c), 512);
    assert.ok(relRms(c, yc) < 0.02, `type ${type} constant: ${relRms(c, yc)}`);
    const bad = gaussian(512, 4);
    bad[3] = NaN;
    bad[300] = Infinity;
    const q = quantize(type, bad);
    assert.equal(q.length, ggmlBytes(type, 512));
    assert.equal(dequantize(type, q, 512).length, 512);
  }
  const q6 = quantize(GgmlType.Q6_K, new Float32Array(256));
  assert.ok(q6.every((b) => b === 0));
});

Deno.test("sizes, rows, offsets and errors", () => {
  assert.equal(rowBytes(GgmlType.Q4_K, 4096), 16 * 144);
  assert.equal(rowBytes(GgmlType.Q6_K, 4096), 16 * 210);
  assert.equal(rowBytes(GgmlType.Q8_0, 4096), 128 * 34);
  assert.equal(rowBytes(GgmlType.Q4_0, 64), 36);
  assert.equal(rowBytes(GgmlType.F16, 10), 20);
  assert.equal(rowBytes(GgmlType.BF16, 10), 20);
  assert.equal(rowBytes(GgmlType.F32, 10), 40);
  assert.equal(blockElems(GgmlType.Q6_K), 256);
  assertCode(() => rowBytes(GgmlType.Q4_0, 33), "E_MODEL_TENSOR", /multiple/);
  assertCode(() => quantize(GgmlType.Q4_K, new Float32Array(100)), "E_MODEL_TENSOR", /256/);
  assertCode(() => quantize(GgmlType.Q5_K, new Float32Array(256)), "E_MODEL_TENSOR", /Q5_K/);
  assertCode(() => quantize(999, new Float32Array(256)), "E_MODEL_TENSOR", /999/);
  assertCode(() => dequantize(GgmlType.Q8_0, new Uint8Array(33), 32), "E_MODEL_TENSOR", /34/);
  // A huge count with few bytes fails before anything is allocated.
  assertCode(() => dequantize(GgmlType.F32, new Uint8Array(8), 2 ** 40), "E_MODEL_TENSOR");
  assertCode(() => dequantize(GgmlType.F32, new Uint8Array(8), -4), "E_MODEL_TENSOR");
  assertCode(() => dequantize(GgmlType.F32, new Uint8Array(8), 1.5), "E_MODEL_TENSOR");
  assertCode(
    () => dequantizeInto(GgmlType.F32, new Uint8Array(8), 2, new Float32Array(2), 1),
    "E_MODEL_TENSOR",
  );

  // Rows of a 3 x 512 Q4_K matrix.
  const x = gaussian(3 * 512, 8);
  const q = quantize(GgmlType.Q4_K, x);
  const all = dequantize(GgmlType.Q4_K, q, x.length);
  const row2 = dequantizeRow(GgmlType.Q4_K, q, 2, 512);
  assert.deepEqual(row2, all.subarray(1024, 1536));
  assertCode(() => dequantizeRow(GgmlType.Q4_K, q, 3, 512), "E_MODEL_TENSOR", /row 3/);
  const into = new Float32Array(600);
  dequantizeInto(GgmlType.Q4_K, q.subarray(rowBytes(GgmlType.Q4_K, 512)), 512, into, 88);
  assert.deepEqual(into.subarray(88, 600), all.subarray(512, 1024));
  assert.equal(into[87], 0);

  // Unaligned byte offsets (as when a tensor sits at an odd offset in a file buffer).
  for (const type of [GgmlType.F32, GgmlType.F16, GgmlType.BF16]) {
    const v = gaussian(64, 9);
    const enc = quantize(type, v);
    const shifted = new Uint8Array(enc.length + 1);
    shifted.set(enc, 1);
    assert.deepEqual(
      dequantize(type, shifted.subarray(1), 64),
      dequantize(type, enc, 64),
    );
  }
});
