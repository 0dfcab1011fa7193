#version 450
// Matrix-matrix product Y = X·Wᵀ (or Y += X·Wᵀ) for a chunk of prompt tokens, W in GGUF's byte
// layout (row-major, row r = `cols` elements), X and Y f32 with one column per token (the same
// push block and bindings as matvec.comp; see src/kernels/matmul.ts).
//
// Tiling: a workgroup owns TM consecutive rows and WG·CN tokens. Per K-tile of 32 elements its
// lanes dequantize the TM x 32 weight tile into shared memory (one 32-element unit per lane at a
// time), then every lane multiplies the whole tile with the 32 x values of each of its CN tokens:
// the weights in shared memory are read at the same address by all lanes (one load and a
// broadcast per value, reused for CN tokens) and each x value loaded is reused for TM rows. The
// TM x CN accumulators of a lane live across the K loop.
//
// On lavapipe this kernel is measured, not assumed (bench/prefill.ts): llvmpipe turns every load
// inside a loop whose address differs per lane, from shared memory as from a storage buffer,
// into a per-lane scalar loop, so the x loads and the tile reads cost several times the
// multiply-adds they feed (the same kernel with constant operands ran ~5x faster). The engine
// therefore picks it by measurement per device class (src/kernels/matmul.ts).
//
// Defines: TYPE (a ggml type id, see quant.glsl); TM, CN, KS (K values per unrolled step: the
// shader body holds TM·CN·KS fused multiply-adds); TILE_SHIFT (tests only: stage each unit one
// row off, the deliberately broken tile index the tests must catch).
// Spec constant 0 = workgroup size (lanes).
// SPLIT: Q8_0 or Q6_K in the split layout (src/kernels/matvec_layout.ts), read as uvec4s.
// Requires cols % 32 == 0; F32/F16/BF16 rows 16-byte aligned, Q4_K rows 16-byte aligned.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
#include "quant.glsl"
layout(local_size_x_id = 0) in;
layout(constant_id = 0) const uint WG = 8;

#ifndef TM
#define TM 64
#endif
#ifndef CN
#define CN 8
#endif
#ifndef KS
#define KS 8
#endif
#ifndef TILE_SHIFT
#define TILE_SHIFT 0
#endif
#define KT 32u

layout(push_constant) uniform P {
  uint rows;      // rows in this dispatch
  uint cols;      // elements per row (K), a multiple of 32
  uint wByte0;    // byte offset of this dispatch's row 0 inside the weight binding
  uint rowBytes;  // bytes per row
  uint xStride;   // floats between consecutive tokens of x (multiple of 4)
  uint yStride;   // floats between consecutive tokens of y
  uint yRow0;     // index in y of this dispatch's row 0
  uint ncols;     // tokens in total
  uint flags;     // bit 0: accumulate into y
} p;

layout(std430, binding = 0) readonly buffer W1 { uint w[]; };
layout(std430, binding = 0) readonly buffer W4 { uvec4 w4[]; };
layout(std430, binding = 1) readonly buffer X4 { vec4 x4[]; };
layout(std430, binding = 2) buffer Y { float y[]; };

// The weight tile: TM rows x 32 values, 8 vec4 per row.
shared vec4 wt[TM * 8];

// `n` words from a 2-byte aligned byte offset `b` (GGUF blocks of 18, 34 and 210 bytes); never
// reads a word past the one holding byte b + 4n - 1.
#define LOAD_WORDS(b, N, D) { \
  uint i_ = (b) >> 2; bool odd_ = ((b) & 2u) != 0u; uint p_ = w[i_]; \
  [[unroll]] for (uint k_ = 0u; k_ < (N); k_++) { \
    uint n_ = (k_ + 1u < (N) || odd_) ? w[i_ + 1u + k_] : 0u; \
    D[k_] = odd_ ? funnel16(p_, n_) : p_; p_ = n_; } }

// Dequantizes elements [32u, 32u + 32) of the row starting at byte rs into v.
void dequant_unit(uint rs, uint u, out vec4 v[8]) {
#if TYPE == T_F32
  uint i = (rs >> 4) + 8u * u;
  [[unroll]] for (uint j = 0u; j < 8u; j++) v[j] = uintBitsToFloat(w4[i + j]);
#elif TYPE == T_F16 || TYPE == T_BF16
  uint i = (rs >> 4) + 4u * u;
  [[unroll]] for (uint j = 0u; j < 4u; j++) {
    uvec4 q = w4[i + j];
#if TYPE == T_F16
    v[2u * j] = vec4(unpackHalf2x16(q.x), unpackHalf2x16(q.y));
    v[2u * j + 1u] = vec4(unpackHalf2x16(q.z), unpackHalf2x16(q.w));
#else
    v[2u * j] = vec4(bf16x2(q.x), bf16x2(q.y));
    v[2u * j + 1u] = vec4(bf16x2(q.z), bf16x2(q.w));
#endif
  }
#elif TYPE == T_Q8_0 && defined(SPLIT)
  // Split layout (src/kernels/matvec_layout.ts): the quants as two aligned uvec4s, d from the
  // row's scale run after its bodies.
  uint i = (rs >> 4) + 2u * u;
  uvec4 qa = w4[i], qb = w4[i + 1u];
  float d = HALF_AT(w, rs + p.cols + 2u * u);
  uint qw[8] = uint[8](qa.x, qa.y, qa.z, qa.w, qb.x, qb.y, qb.z, qb.w);
  [[unroll]] for (uint j = 0u; j < 8u; j++) v[j] = d * i8x4(qw[j]);
#elif TYPE == T_Q8_0
  uint b = rs + 34u * u;
  uint q[9];
  LOAD_WORDS(b, 9u, q);
  // q[k] is the word at byte b + 4k: d is q[0]'s low half, quant word j straddles q[j], q[j+1].
  float d = half_lo(q[0]);
  [[unroll]] for (uint j = 0u; j < 8u; j++) v[j] = d * i8x4(funnel16(q[j], q[j + 1u]));
#elif TYPE == T_Q4_0
  uint b = rs + 18u * u;
  uint q[5];
  LOAD_WORDS(b, 5u, q);
  float d = half_lo(q[0]);
  [[unroll]] for (uint j = 0u; j < 4u; j++) {
    uint qw = funnel16(q[j], q[j + 1u]);
    v[j] = d * (lo4x4(qw) - 8.0);
    v[4u + j] = d * (hi4x4(qw) - 8.0);
  }
#elif TYPE == T_Q4_K
  // Unit u: super-block u/8, sub-block j = u%8 (low nibbles of group j/2 for even j, high for
  // odd j), scale and min j.
  uint sb = (rs >> 4) + 9u * (u >> 3);
  uint j = u & 7u;
  uint g = j >> 1;
  uvec4 h = w4[sb];
  uvec4 qa = w4[sb + 1u + 2u * g];
  uvec4 qb = w4[sb + 2u + 2u * g];
  vec4 s = q4k_group_scales(q4k_scale_words(h.y, h.z, h.w), g);
  vec2 dm = unpackHalf2x16(h.x);
  bool hi = (j & 1u) != 0u;
  float sc = dm.x * (hi ? s.y : s.x);
  float mn = dm.y * (hi ? s.w : s.z);
  uint qw[8] = uint[8](qa.x, qa.y, qa.z, qa.w, qb.x, qb.y, qb.z, qb.w);
  [[unroll]] for (uint k = 0u; k < 8u; k++) v[k] = sc * (hi ? hi4x4(qw[k]) : lo4x4(qw[k])) - mn;
#elif TYPE == T_Q6_K && defined(SPLIT)
  // Split layout: super-block u/8's 208-byte body is 13 aligned uvec4s, its d in the row's
  // scale run. Sub j as below.
  uint sb = u >> 3;
  uint j = u & 7u;
  uint h = j >> 2;
  uint m = j & 3u;
  uint q = (rs >> 4) + 13u * sb;
  uvec4 la = w4[q + 4u * h + 2u * (m & 1u)], lb = w4[q + 4u * h + 2u * (m & 1u) + 1u];
  uvec4 ha = w4[q + 8u + 2u * h], hb = w4[q + 9u + 2u * h];
  uvec4 scw = w4[q + 12u];
  // Scale bytes 8h + 2m, 8h + 2m + 1: word 2h + m/2 of the scales, half m % 2.
  uint sw = scw[2u * h + (m >> 1)] >> (16u * (m & 1u));
  float d = HALF_AT(w, rs + 208u * (p.cols / 256u) + 2u * sb);
  float s0 = d * i8_at(sw, 0u);
  float s1 = d * i8_at(sw, 1u);
  uint ql[8] = uint[8](la.x, la.y, la.z, la.w, lb.x, lb.y, lb.z, lb.w);
  uint qh[8] = uint[8](ha.x, ha.y, ha.z, ha.w, hb.x, hb.y, hb.z, hb.w);
  [[unroll]] for (uint k = 0u; k < 8u; k++) {
    uint q6 = q6k_word(ql[k], ql[k], qh[k], m);
    v[k] = (k < 4u ? s0 : s1) * (u8x4(q6) - 32.0);
  }
#elif TYPE == T_Q6_K
  // Unit u: super-block u/8, sub j = u%8: half h = j/4, m = j%4; element l (0..31) is
  // 128h + 32m + l, with quant bits from ql[64h + l (+32 for odd m)] and qh[32h + l], scale
  // scales[8h + 2m + l/16].
  uint sbb = rs + 210u * (u >> 3);
  uint j = u & 7u;
  uint h = j >> 2;
  uint m = j & 3u;
  uint ql[8], qh[8], sc[1], dw[1];
  uint bql = sbb + 64u * h + 32u * (m & 1u);
  uint bqh = sbb + 128u + 32u * h;
  uint bsc = sbb + 192u + 8u * h + 2u * m;
  uint bd = sbb + 208u;
  LOAD_WORDS(bql, 8u, ql);
  LOAD_WORDS(bqh, 8u, qh);
  LOAD_WORDS(bsc, 1u, sc);
  LOAD_WORDS(bd, 1u, dw);
  float d = half_lo(dw[0]);
  float s0 = d * i8_at(sc[0], 0u);
  float s1 = d * i8_at(sc[0], 1u);
  // q6k_word picks nibble and high bits by m (ql is already offset by 32 for odd m).
  [[unroll]] for (uint k = 0u; k < 8u; k++) {
    uint q6 = q6k_word(ql[k], ql[k], qh[k], m);
    v[k] = (k < 4u ? s0 : s1) * (u8x4(q6) - 32.0);
  }
#endif
}

void main() {
  uint lane = gl_LocalInvocationID.x;
  uint r0 = (gl_WorkGroupID.y * gl_NumWorkGroups.x + gl_WorkGroupID.x) * TM;
  if (r0 >= p.rows) return;
  uint t0 = gl_WorkGroupID.z * WG * CN;
  uint units = p.cols / KT;
  // Token c of this lane is t0 + c·WG + lane; x rows of tokens past the end repeat the last one.
  uint xrow[CN];
  [[unroll]] for (uint c = 0u; c < CN; c++) {
    xrow[c] = min(t0 + c * WG + lane, p.ncols - 1u) * (p.xStride >> 2);
  }
  float acc[TM * CN];
  [[unroll]] for (uint i = 0u; i < TM * CN; i++) acc[i] = 0.0;

  for (uint u = 0u; u < units; u++) {
    barrier();
    for (uint i = lane; i < TM; i += WG) {
      // Rows past the end repeat the last row; their results are never written.
      uint row = min(r0 + i + TILE_SHIFT, p.rows - 1u);
      vec4 v[8];
      dequant_unit(p.wByte0 + row * p.rowBytes, u, v);
      [[unroll]] for (uint j = 0u; j < 8u; j++) wt[i * 8u + j] = v[j];
    }
    barrier();
    for (uint ks = 0u; ks < KT / 4u; ks += KS / 4u) {
      vec4 xv[CN * (KS / 4)];
      [[unroll]] for (uint c = 0u; c < CN; c++) {
        [[unroll]] for (uint k = 0u; k < KS / 4u; k++) {
          xv[c * (KS / 4u) + k] = x4[xrow[c] + u * 8u + ks + k];
        }
      }
      [[unroll]] for (uint r = 0u; r < TM; r++) {
        [[unroll]] for (uint k = 0u; k < KS / 4u; k++) {
          vec4 wv = wt[r * 8u + ks + k];
          [[unroll]] for (uint c = 0u; c < CN; c++) {
            vec4 xc = xv[c * (KS / 4u) + k];
            float a = acc[r * CN + c];
            a = fma(wv.x, xc.x, a);
            a = fma(wv.y, xc.y, a);
            a = fma(wv.z, xc.z, a);
            acc[r * CN + c] = fma(wv.w, xc.w, a);
          }
        }
      }
    }
  }

  bool add = (p.flags & 1u) != 0u;
  [[unroll]] for (uint c = 0u; c < CN; c++) {
    uint t = t0 + c * WG + lane;
    if (t < p.ncols) {
      uint yb = t * p.yStride + p.yRow0 + r0;
      [[unroll]] for (uint r = 0u; r < TM; r++) {
        if (r0 + r < p.rows) {
          float v = acc[r * CN + c];
          if (add) v += y[yb + r];
          y[yb + r] = v;
        }
      }
    }
  }
}
