// Dequantisation helpers for GGUF weight blocks, shared by matvec*.comp and get_rows.comp.
//
// Weights are read as 32-bit words (no 16/8-bit storage feature needed). GGUF blocks of 18, 34
// and 210 bytes are only 2-byte aligned, so a value can straddle two words: `funnel16` joins the
// high half of one word with the low half of the next. Byte layouts (ggml-common.h):
//   Q8_0 (34 B / 32): f16 d; int8 qs[32]                      x = d*q
//   Q4_0 (18 B / 32): f16 d; u8 qs[16]                        x[j] = d*(lo(qs[j])-8), x[j+16] = d*(hi(qs[j])-8)
//   Q4_K (144 B / 256): f16 d, dmin; u8 scales[12]; u8 qs[128]   x = d*sc*q - dmin*m per 32-sub-block
//   Q6_K (210 B / 256): u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d
//   Q4_1 (20 B / 32): f16 d, m; u8 qs[16]                    x = d*q + m (Q4_0's nibble order)
//   Q5_0 (22 B / 32): f16 d; u32 qh; u8 qs[16]                x = d*((nibble | bit << 4) - 16)
//   Q5_1 (24 B / 32): f16 d, m; u32 qh; u8 qs[16]             x = d*(nibble | bit << 4) + m
//   Q2_K (84 B / 256): u8 scales[16]; u8 qs[64]; f16 d, dmin  x = d*sc*q2 - dmin*m per 16
//   Q3_K (110 B / 256): u8 hmask[32]; u8 qs[64]; u8 scales[12]; f16 d   x = d*(sc-32)*q3
//   Q5_K (176 B / 256): f16 d, dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]   Q4_K plus a bit
//   IQ4_NL (18 B / 32): f16 d; u8 qs[16]                      x = d*IQ4NL[nibble]
//   IQ4_XS (136 B / 256): f16 d; u16 scales_h; u8 scales_l[4]; u8 qs[128]   x = d*(ls-32)*IQ4NL[q]
// (src/model/quant/ documents each layout in full.)
#ifndef HC_QUANT_GLSL
#define HC_QUANT_GLSL

#define T_F32 0
#define T_F16 1
#define T_Q4_0 2
#define T_Q4_1 3
#define T_Q5_0 6
#define T_Q5_1 7
#define T_Q8_0 8
#define T_Q2_K 10
#define T_Q3_K 11
#define T_Q4_K 12
#define T_Q5_K 13
#define T_Q6_K 14
#define T_IQ4_NL 20
#define T_IQ4_XS 23
#define T_BF16 30

// The word made of the high half of `lo` and the low half of `hi` (bytes 2..5 of the pair).
uint funnel16(uint lo, uint hi) {
  return (lo >> 16) | (hi << 16);
}

float half_lo(uint w) {
  return unpackHalf2x16(w).x;
}

float half_hi(uint w) {
  return unpackHalf2x16(w).y;
}

// The f16 at even byte offset B of the 32-bit word array W (a weight binding).
#define HALF_AT(W, B) ((((B) & 2u) != 0u) ? half_hi(W[(B) >> 2]) : half_lo(W[(B) >> 2]))

vec2 bf16x2(uint w) {
  return vec2(uintBitsToFloat(w << 16), uintBitsToFloat(w & 0xffff0000u));
}

// The four signed bytes of a word, low byte first.
vec4 i8x4(uint w) {
  ivec4 v = ivec4(w << 24, w << 16, w << 8, w);
  return vec4(v >> 24);
}

// The four unsigned bytes of a word, low byte first. Converted through int: CPUs convert
// signed integers in one instruction, unsigned ones in several.
vec4 u8x4(uint w) {
  return vec4(ivec4(uvec4(w & 0xffu, (w >> 8) & 0xffu, (w >> 16) & 0xffu, w >> 24)));
}

// Low and high nibbles of each byte of a word.
vec4 lo4x4(uint w) {
  return u8x4(w & 0x0f0f0f0fu);
}

vec4 hi4x4(uint w) {
  return u8x4((w >> 4) & 0x0f0f0f0fu);
}

// Q4_K: the 12 scale bytes (words s0..s2 = bytes 0-3, 4-7, 8-11) unpacked into four words of
// 6-bit values, one per byte: scales 0-3, scales 4-7, mins 0-3, mins 4-7 (ggml's
// get_scale_min_k4 for all eight sub-blocks at once).
uvec4 q4k_scale_words(uint s0, uint s1, uint s2) {
  return uvec4(s0 & 0x3f3f3f3fu,
               (s2 & 0x0f0f0f0fu) | ((s0 >> 2) & 0x30303030u),
               s1 & 0x3f3f3f3fu,
               ((s2 >> 4) & 0x0f0f0f0fu) | ((s1 >> 2) & 0x30303030u));
}

// Scales and mins of the two sub-blocks of 64-element group g (0..3): (scA, scB, mA, mB).
vec4 q4k_group_scales(uvec4 sw, uint g) {
  uint sc = g < 2u ? sw.x : sw.y;
  uint mn = g < 2u ? sw.z : sw.w;
  uint sh = (g & 1u) * 16u;
  return vec4((sc >> sh) & 0xffu, (sc >> (sh + 8u)) & 0xffu, (mn >> sh) & 0xffu, (mn >> (sh + 8u)) & 0xffu);
}

// Q6_K: the 6-bit quants (0..63, before the -32 offset) of four consecutive l positions, from a
// word of ql[l..l+3] (qa), of ql[l+32..l+35] (qb) and of qh[l..l+3] (qh). Element order in the
// half-block: m=0 -> l, m=1 -> l+32, m=2 -> l+64, m=3 -> l+96.
uint q6k_word(uint qa, uint qb, uint qh, uint m) {
  switch (m) {
    case 0u: return (qa & 0x0f0f0f0fu) | ((qh & 0x03030303u) << 4);
    case 1u: return (qb & 0x0f0f0f0fu) | ((qh & 0x0c0c0c0cu) << 2);
    case 2u: return ((qa >> 4) & 0x0f0f0f0fu) | (qh & 0x30303030u);
    default: return ((qb >> 4) & 0x0f0f0f0fu) | ((qh & 0xc0c0c0c0u) >> 2);
  }
}

// Bits start..start+3 of w, as 0.0 or 1.0 (the fifth bits of Q5_0/Q5_1).
vec4 bits4(uint w, uint start) {
  return vec4(ivec4(uvec4(w >> start, w >> (start + 1u), w >> (start + 2u), w >> (start + 3u)) & 1u));
}

// ggml's kvalues_iq4nl: the 16 levels an IQ4_NL / IQ4_XS nibble indexes.
const float IQ4NL[16] = float[16](-127.0, -104.0, -83.0, -65.0, -49.0, -35.0, -22.0, -10.0,
                                  1.0, 13.0, 25.0, 38.0, 53.0, 69.0, 89.0, 113.0);

// The levels of the four nibbles in bits 0-3 of each byte of w (pass w & 0x0f0f0f0f or
// (w >> 4) & 0x0f0f0f0f).
vec4 iq4x4(uint w) {
  return vec4(IQ4NL[w & 15u], IQ4NL[(w >> 8) & 15u], IQ4NL[(w >> 16) & 15u], IQ4NL[w >> 24]);
}

// acc + dot(a, b) as a chain of fused multiply-adds (one instruction per element on CPUs,
// where dot() becomes separate multiplies and adds).
float fma4(vec4 a, vec4 b, float acc) {
  return fma(a.w, b.w, fma(a.z, b.z, fma(a.y, b.y, fma(a.x, b.x, acc))));
}

// Signed byte k (0..3) of a word.
float i8_at(uint w, uint k) {
  return float(bitfieldExtract(int(w), int(k * 8u), 8));
}

#endif
