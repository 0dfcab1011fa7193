#version 450
// Matrix-vector product y = W·x (or y += W·x) for NUM_COLS input columns at once, W in GGUF's
// byte layout (row-major, row r = `cols` elements = cols/blockElems blocks). This is the
// generic path (GPUs, and any alignment); matvec_run.comp is the CPU-tuned one.
//
// Two fusions for the decode step, chosen per pipeline (spec constants NORM and GLU):
// - RMSNorm of x (NORM): y = W·(x ⊙ g) / sqrt(mean(x²) + eps), g the norm weight at
//   binding 3. Every workgroup reads all of x anyway, so it sums x² as it loads it and scales
//   its results at the end: the norm's dispatch and barrier go away, no pass over x is added.
// - GLU pairs (GLU): the weight is gate rows then up rows (F each); a workgroup
//   takes NUM_ROWS/2 gate rows and the same up rows and writes act(gate·x) * (up·x) to F
//   outputs, so SwiGLU/GeGLU need no dispatch and barrier of their own.
//
// Defines: TYPE (a ggml type id, see quant.glsl); HC_SUBGROUP selects the reduction.
// Spec constants: 0 = workgroup size (lanes), 1 = NUM_ROWS rows per workgroup, 2 = NUM_COLS.
//
// Work split: a workgroup owns NUM_ROWS consecutive rows and NUM_COLS columns of x; its lanes
// stride over the "units" of a row (lane l takes units l, l+WG, ...), keep one partial sum per
// (row, column) and reduce them across lanes at the end. The x values of a unit are loaded once
// and reused for all NUM_ROWS rows; a unit's weights are loaded once and reused for all NUM_COLS
// columns. A unit is 4 elements (F32/F16/BF16), one block (the 32-element types) or 64
// elements (the 256-element types); weights are read as 32-bit words (uvec2/uvec4 where the layout is aligned), so
// neighbouring lanes read neighbouring bytes. With SPLIT (Q8_0 and Q6_K in the split layout,
// src/kernels/matvec_layout.ts) their blocks' bodies are read as aligned uvec4s.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
#include "quant.glsl"
layout(local_size_x_id = 0) in;
layout(constant_id = 0) const uint WG = 64;
layout(constant_id = 1) const uint NUM_ROWS = 2;
layout(constant_id = 2) const uint NUM_COLS = 1;
// The decode fusions (see matvec.comp's header), fixed per pipeline so that a plain product
// carries none of their code: 1 = RMSNorm of x; GLU act 1 SiLU, 2 GELU, 0 none.
layout(constant_id = 3) const uint NORM = 0;
layout(constant_id = 4) const uint GLU = 0;

layout(push_constant) uniform P {
  uint rows;      // rows in this dispatch
  uint cols;      // elements per row (K)
  uint wByte0;    // byte offset of this dispatch's row 0 inside the weight binding
  uint rowBytes;  // bytes per row
  uint xStride;   // floats between consecutive columns of x
  uint yStride;   // floats between consecutive columns of y
  uint yRow0;     // index in y of this dispatch's row 0
  uint ncols;     // columns of x / y in total
  uint flags;     // bit 0: accumulate into y; bits 8-15: row slices (row-loop variant)
  float eps;      // RMSNorm epsilon (NORM)
  uint gluRows;   // GLU outputs F (GLU): gate rows [0, F), up rows [F, 2F)
} p;

layout(std430, binding = 2) buffer Y { float y[]; };

float acc[NUM_ROWS * NUM_COLS];
shared float red_sh[NUM_ROWS * NUM_COLS * WG];
// Per column: sum of x² (RMSNorm), then the factor the results are scaled by.
float ssq[NUM_COLS];

// Output i of the workgroup (row i / NUM_COLS from r0, column i % NUM_COLS) from its sums
// over the lanes: v, and with GLU pairs the up row's sum.
void write_out(uint i, float v, float up, uint r0, uint col0) {
  uint row = r0 + i / NUM_COLS;
  uint col = col0 + i % NUM_COLS;
  uint outRows = GLU != 0u ? p.gluRows : p.rows;
  if (row < outRows && col < p.ncols) {
    float s = ssq[i % NUM_COLS];
    v *= s;
    if (GLU != 0u) v = glu_pair(GLU, v, up * s);
    uint idx = col * p.yStride + p.yRow0 + row;
    if ((p.flags & 1u) != 0u) v += y[idx];
    y[idx] = v;
  }
}

// Sums acc[] over the workgroup's lanes and writes (or adds) the results. With GLU pairs the
// entries of the second half of the rows are the up rows of the first half's.
void reduce_store(uint r0, uint col0) {
  const uint n = NUM_ROWS * NUM_COLS;
  const uint upAt = (NUM_ROWS / 2u) * NUM_COLS;
  uint outs = GLU != 0u ? upAt : n;
  uint lane = gl_LocalInvocationID.x;
#ifdef HC_SUBGROUP
  [[unroll]] for (uint i = 0; i < n; i++) acc[i] = subgroupAdd(acc[i]);
  if (gl_NumSubgroups == 1u) {
    if (lane == 0u) {
      [[unroll]] for (uint i = 0; i < n; i++) {
        if (i < outs) write_out(i, acc[i], acc[min(i + upAt, n - 1u)], r0, col0);
      }
    }
    return;
  }
  if (subgroupElect()) {
    [[unroll]] for (uint i = 0; i < n; i++) red_sh[i * gl_NumSubgroups + gl_SubgroupID] = acc[i];
  }
  barrier();
  for (uint i = lane; i < outs; i += WG) {
    float s = 0.0, u = 0.0;
    for (uint k = 0; k < gl_NumSubgroups; k++) s += red_sh[i * gl_NumSubgroups + k];
    if (GLU != 0u) {
      for (uint k = 0; k < gl_NumSubgroups; k++) u += red_sh[(i + upAt) * gl_NumSubgroups + k];
    }
    write_out(i, s, u, r0, col0);
  }
#else
  [[unroll]] for (uint i = 0; i < n; i++) red_sh[i * WG + lane] = acc[i];
  barrier();
  for (uint s = WG / 2u; s > 0u; s >>= 1) {
    if (lane < s) {
      [[unroll]] for (uint i = 0; i < n; i++) red_sh[i * WG + lane] += red_sh[i * WG + lane + s];
    }
    barrier();
  }
  for (uint i = lane; i < outs; i += WG) {
    write_out(i, red_sh[i * WG], GLU != 0u ? red_sh[(i + upAt) * WG] : 0.0, r0, col0);
  }
#endif
}

layout(std430, binding = 0) readonly buffer W1 { uint w[]; };
layout(std430, binding = 0) readonly buffer W2 { uvec2 w2[]; };
layout(std430, binding = 0) readonly buffer W4 { uvec4 w4[]; };
layout(std430, binding = 1) readonly buffer X4 { vec4 x4[]; };
// The RMSNorm weight g (flags bit 1; else any binding, unread).
layout(std430, binding = 3) readonly buffer G4 { vec4 g4[]; };

#if TYPE == T_F32
#define UNIT 4u
#define NW 4
#elif TYPE == T_F16 || TYPE == T_BF16
#define UNIT 4u
#define NW 2
#elif TYPE == T_Q8_0
#define UNIT 32u
#define NW 9
#elif TYPE == T_Q4_0
#define UNIT 32u
#define NW 5
#elif TYPE == T_Q4_K
#define UNIT 64u
#define NW 12
#elif TYPE == T_Q6_K
#define UNIT 64u
#define NW 15
#elif TYPE == T_Q4_1 || TYPE == T_Q5_0
#define UNIT 32u
#define NW 6
#elif TYPE == T_Q5_1
#define UNIT 32u
#define NW 7
#elif TYPE == T_IQ4_NL
#define UNIT 32u
#define NW 5
#elif TYPE == T_Q2_K
#define UNIT 64u
#define NW 10
#elif TYPE == T_Q3_K
#define UNIT 64u
#define NW 18
#elif TYPE == T_Q5_K
#define UNIT 64u
#define NW 20
#elif TYPE == T_IQ4_XS
#define UNIT 64u
#define NW 10
#else
#error unsupported TYPE
#endif
#define XV (UNIT / 4u)

// The 32-bit word starting at an even byte offset (blocks of 18, 22 or 110 bytes are only
// 2-byte aligned).
uint word_at(uint b) {
  uint i = b >> 2;
  return (b & 2u) != 0u ? funnel16(w[i], w[i + 1u]) : w[i];
}

float half_at(uint b) {
  return HALF_AT(w, b);
}

// Weight words of one unit for each row, decoded just enough to be reused for every column.
uint wq[NUM_ROWS * NW];

void load_unit(uint r, uint rowStart, uint u) {
  uint o = r * NW;
#if TYPE == T_F32
  uvec4 v = w4[rowStart / 16u + u];
  wq[o] = v.x; wq[o + 1] = v.y; wq[o + 2] = v.z; wq[o + 3] = v.w;
#elif TYPE == T_F16 || TYPE == T_BF16
  uvec2 v = w2[rowStart / 8u + u];
  wq[o] = v.x; wq[o + 1] = v.y;
#elif TYPE == T_Q8_0 && defined(SPLIT)
  // Split layout (src/kernels/matvec_layout.ts): the quants as two aligned uvec4s, d from the
  // row's scale run after its bodies.
  uint q = rowStart / 16u + 2u * u;
  uvec4 a = w4[q], c = w4[q + 1u];
  wq[o] = floatBitsToUint(half_at(rowStart + p.cols + 2u * u));
  wq[o + 1] = a.x; wq[o + 2] = a.y; wq[o + 3] = a.z; wq[o + 4] = a.w;
  wq[o + 5] = c.x; wq[o + 6] = c.y; wq[o + 7] = c.z; wq[o + 8] = c.w;
#elif TYPE == T_Q8_0
  uint b = rowStart + 34u * u;
  uint i = b >> 2;
  bool odd = (b & 2u) != 0u;
  uint prev = w[i];
  wq[o] = floatBitsToUint(odd ? half_hi(prev) : half_lo(prev));
  [[unroll]] for (uint k = 0; k < 8u; k++) {
    uint nxt = w[i + 1u + k];
    wq[o + 1u + k] = odd ? nxt : funnel16(prev, nxt);
    prev = nxt;
  }
#elif TYPE == T_Q4_0
  uint b = rowStart + 18u * u;
  uint i = b >> 2;
  bool odd = (b & 2u) != 0u;
  uint prev = w[i];
  wq[o] = floatBitsToUint(odd ? half_hi(prev) : half_lo(prev));
  [[unroll]] for (uint k = 0; k < 4u; k++) {
    uint nxt = w[i + 1u + k];
    wq[o + 1u + k] = odd ? nxt : funnel16(prev, nxt);
    prev = nxt;
  }
#elif TYPE == T_Q4_K
  uint sb = (rowStart + 144u * (u >> 2)) / 16u;  // super-blocks are 16-byte aligned
  uint g = u & 3u;
  uvec4 h = w4[sb];
  uvec4 qa = w4[sb + 1u + 2u * g];
  uvec4 qb = w4[sb + 2u + 2u * g];
  vec4 s = q4k_group_scales(q4k_scale_words(h.y, h.z, h.w), g);
  vec2 dm = unpackHalf2x16(h.x);
  wq[o] = floatBitsToUint(dm.x * s.x);
  wq[o + 1] = floatBitsToUint(dm.x * s.y);
  wq[o + 2] = floatBitsToUint(dm.y * s.z);
  wq[o + 3] = floatBitsToUint(dm.y * s.w);
  wq[o + 4] = qa.x; wq[o + 5] = qa.y; wq[o + 6] = qa.z; wq[o + 7] = qa.w;
  wq[o + 8] = qb.x; wq[o + 9] = qb.y; wq[o + 10] = qb.z; wq[o + 11] = qb.w;
#elif TYPE == T_Q6_K && defined(SPLIT)
  // Split layout: super-block u/4's 208-byte body (ql, qh, scales) is 13 aligned uvec4s; its d
  // sits in the row's scale run. Unit u: half h, l range [16*is, 16*is+16), as below.
  uint sb = u >> 2;
  uint h = (u >> 1) & 1u;
  uint is = u & 1u;
  uint q = rowStart / 16u + 13u * sb;
  uvec4 qa = w4[q + 4u * h + is];
  uvec4 qb = w4[q + 4u * h + 2u + is];
  uvec4 qh = w4[q + 8u + 2u * h + is];
  uvec4 sc = w4[q + 12u];
  wq[o] = qa.x; wq[o + 1] = qa.y; wq[o + 2] = qa.z; wq[o + 3] = qa.w;
  wq[o + 4] = qb.x; wq[o + 5] = qb.y; wq[o + 6] = qb.z; wq[o + 7] = qb.w;
  wq[o + 8] = qh.x; wq[o + 9] = qh.y; wq[o + 10] = qh.z; wq[o + 11] = qh.w;
  wq[o + 12] = h != 0u ? sc.z : sc.x;
  wq[o + 13] = h != 0u ? sc.w : sc.y;
  wq[o + 14] = floatBitsToUint(half_at(rowStart + 208u * (p.cols / 256u) + 2u * sb));
#elif TYPE == T_Q6_K
  // Unit u: super-block u/4, half h, l range [16*is, 16*is+16).
  uint sbb = rowStart + 210u * (u >> 2);
  uint h = (u >> 1) & 1u;
  uint is = u & 1u;
  bool odd = (sbb & 2u) != 0u;
  uint qa0 = (sbb + 64u * h + 16u * is) >> 2;
  uint qb0 = (sbb + 64u * h + 32u + 16u * is) >> 2;
  uint qh0 = (sbb + 128u + 32u * h + 16u * is) >> 2;
  uint sc0 = (sbb + 192u + 8u * h) >> 2;
  uint pa = w[qa0], pb = w[qb0], ph = w[qh0];
  [[unroll]] for (uint k = 0; k < 4u; k++) {
    uint na = w[qa0 + 1u + k], nb = w[qb0 + 1u + k], nh = w[qh0 + 1u + k];
    wq[o + k] = odd ? funnel16(pa, na) : pa;
    wq[o + 4u + k] = odd ? funnel16(pb, nb) : pb;
    wq[o + 8u + k] = odd ? funnel16(ph, nh) : ph;
    pa = na; pb = nb; ph = nh;
  }
  uint s0 = w[sc0], s1 = w[sc0 + 1u], s2 = w[sc0 + 2u];
  wq[o + 12] = odd ? funnel16(s0, s1) : s0;
  wq[o + 13] = odd ? funnel16(s1, s2) : s1;
  uint dw = w[(sbb + 208u) >> 2];
  wq[o + 14] = floatBitsToUint(odd ? half_hi(dw) : half_lo(dw));
#elif TYPE == T_Q4_1 || TYPE == T_Q5_1
  // 20- and 24-byte blocks stay 4-byte aligned: d and m share word 0, Q5_1's qh is word 1.
  uint i = (rowStart + (TYPE == T_Q4_1 ? 20u : 24u) * u) >> 2;
  vec2 dm = unpackHalf2x16(w[i]);
  wq[o] = floatBitsToUint(dm.x);
  wq[o + 1] = floatBitsToUint(dm.y);
  [[unroll]] for (uint k = 0; k < NW - 2; k++) wq[o + 2u + k] = w[i + 1u + k];
#elif TYPE == T_Q5_0
  uint b = rowStart + 22u * u;
  wq[o] = floatBitsToUint(half_at(b));
  [[unroll]] for (uint k = 0; k < 5u; k++) wq[o + 1u + k] = word_at(b + 2u + 4u * k);
#elif TYPE == T_IQ4_NL
  uint b = rowStart + 18u * u;
  wq[o] = floatBitsToUint(half_at(b));
  [[unroll]] for (uint k = 0; k < 4u; k++) wq[o + 1u + k] = word_at(b + 2u + 4u * k);
#elif TYPE == T_Q2_K || TYPE == T_Q3_K
  // Unit u: super-block u/4, half n (elements 128n..), quarter pair p: elements
  // 128n + 64p + 32jj + l (jj < 2, l < 32) are bits 2(2p + jj) of qs[32n + l], in sub-block
  // 8n + 4p + 2jj + l/16. The words are pre-shifted by 4p so dot_unit sees only jj.
  uint n = (u >> 1) & 1u;
  uint pp = u & 1u;
#if TYPE == T_Q2_K
  uint sbb = rowStart + 84u * (u >> 2);
  [[unroll]] for (uint k = 0; k < 8u; k++) wq[o + k] = w[(sbb + 16u + 32u * n) / 4u + k] >> (4u * pp);
  wq[o + 8] = w[(sbb + 8u * n + 4u * pp) / 4u];
  wq[o + 9] = w[(sbb + 80u) / 4u];
#else
  uint sbb = rowStart + 110u * (u >> 2);
  [[unroll]] for (uint k = 0; k < 8u; k++) {
    wq[o + k] = word_at(sbb + 32u + 32u * n + 4u * k) >> (4u * pp);
    // hmask bit 4n + j for j = 2p + jj, shifted down to bit jj.
    wq[o + 8u + k] = word_at(sbb + 4u * k) >> (4u * n + 2u * pp);
  }
  // Sub-blocks 4q..4q+3 (q = 2n + p): low nibbles from bytes (4q) mod 8 (high nibbles for
  // q >= 2), bits 4-5 from bits 2q..2q+1 of bytes 8..11; stored +32.
  uint q = 2u * n + pp;
  uint lo = (word_at(sbb + 96u + 4u * (q & 1u)) >> (q >= 2u ? 4u : 0u)) & 0x0f0f0f0fu;
  uint hi = (word_at(sbb + 104u) >> (2u * q)) & 0x03030303u;
  wq[o + 16] = lo | (hi << 4);
  wq[o + 17] = floatBitsToUint(half_at(sbb + 108u));
#endif
#elif TYPE == T_Q5_K
  uint sb = (rowStart + 176u * (u >> 2)) / 16u;  // super-blocks are 16-byte aligned
  uint g = u & 3u;
  uvec4 h = w4[sb];
  uvec4 ha = w4[sb + 1u], hb = w4[sb + 2u];
  uvec4 qa = w4[sb + 3u + 2u * g], qb = w4[sb + 4u + 2u * g];
  vec4 s = q4k_group_scales(q4k_scale_words(h.y, h.z, h.w), g);
  vec2 dm = unpackHalf2x16(h.x);
  wq[o] = floatBitsToUint(dm.x * s.x);
  wq[o + 1] = floatBitsToUint(dm.x * s.y);
  wq[o + 2] = floatBitsToUint(dm.y * s.z);
  wq[o + 3] = floatBitsToUint(dm.y * s.w);
  wq[o + 4] = qa.x; wq[o + 5] = qa.y; wq[o + 6] = qa.z; wq[o + 7] = qa.w;
  wq[o + 8] = qb.x; wq[o + 9] = qb.y; wq[o + 10] = qb.z; wq[o + 11] = qb.w;
  // Group g's fifth bits are bits 2g (first half) and 2g + 1 of qh: shifted down to 0 and 1.
  uint sh = 2u * g;
  wq[o + 12] = ha.x >> sh; wq[o + 13] = ha.y >> sh; wq[o + 14] = ha.z >> sh; wq[o + 15] = ha.w >> sh;
  wq[o + 16] = hb.x >> sh; wq[o + 17] = hb.y >> sh; wq[o + 18] = hb.z >> sh; wq[o + 19] = hb.w >> sh;
#elif TYPE == T_IQ4_XS
  // Unit u: super-block u/4 (136 bytes, 8-byte aligned), sub-blocks 2g and 2g + 1.
  uint b2 = (rowStart + 136u * (u >> 2)) / 8u;
  uint g = u & 3u;
  uvec2 h = w2[b2];
  float d = half_lo(h.x);
  uint shi = h.x >> 16;
  uint sl = (h.y >> (8u * g)) & 0xffu;
  uint lsA = (sl & 15u) | (((shi >> (4u * g)) & 3u) << 4);
  uint lsB = (sl >> 4) | (((shi >> (4u * g + 2u)) & 3u) << 4);
  wq[o] = floatBitsToUint(d * float(int(lsA) - 32));
  wq[o + 1] = floatBitsToUint(d * float(int(lsB) - 32));
  [[unroll]] for (uint k = 0; k < 4u; k++) {
    uvec2 v = w2[b2 + 1u + 4u * g + k];
    wq[o + 2u + 2u * k] = v.x;
    wq[o + 3u + 2u * k] = v.y;
  }
#endif
}

float dot_unit(uint r, vec4 xs[XV], vec4 xsum) {
  uint o = r * NW;
#if TYPE == T_F32
  return dot(uintBitsToFloat(uvec4(wq[o], wq[o + 1], wq[o + 2], wq[o + 3])), xs[0]);
#elif TYPE == T_F16
  return dot(vec4(unpackHalf2x16(wq[o]), unpackHalf2x16(wq[o + 1])), xs[0]);
#elif TYPE == T_BF16
  return dot(vec4(bf16x2(wq[o]), bf16x2(wq[o + 1])), xs[0]);
#elif TYPE == T_Q8_0
  float s = 0.0;
  [[unroll]] for (uint k = 0; k < 8u; k++) s += dot(i8x4(wq[o + 1u + k]), xs[k]);
  return uintBitsToFloat(wq[o]) * s;
#elif TYPE == T_Q4_0
  float s = 0.0;
  [[unroll]] for (uint k = 0; k < 4u; k++) {
    s += dot(lo4x4(wq[o + 1u + k]), xs[k]) + dot(hi4x4(wq[o + 1u + k]), xs[4u + k]);
  }
  return uintBitsToFloat(wq[o]) * (s - 8.0 * xsum.x);
#elif TYPE == T_Q4_K
  float sa = 0.0, sb = 0.0;
  [[unroll]] for (uint k = 0; k < 8u; k++) {
    sa += dot(lo4x4(wq[o + 4u + k]), xs[k]);
    sb += dot(hi4x4(wq[o + 4u + k]), xs[8u + k]);
  }
  return uintBitsToFloat(wq[o]) * sa + uintBitsToFloat(wq[o + 1]) * sb
       - uintBitsToFloat(wq[o + 2]) * xsum.x - uintBitsToFloat(wq[o + 3]) * xsum.y;
#elif TYPE == T_Q6_K
  float s = 0.0;
  [[unroll]] for (uint m = 0; m < 4u; m++) {
    float t = 0.0;
    [[unroll]] for (uint k = 0; k < 4u; k++) {
      t += dot(u8x4(q6k_word(wq[o + k], wq[o + 4u + k], wq[o + 8u + k], m)), xs[4u * m + k]);
    }
    // Scale m of this unit is byte (is + 2m) of the 8 scale bytes; `is` was folded in at load.
    s += i8_at(wq[o + 12u + (m >> 1)], (m & 1u) * 2u) * (t - 32.0 * xsum[m]);
  }
  return uintBitsToFloat(wq[o + 14]) * s;
#elif TYPE == T_Q4_1 || TYPE == T_Q5_0 || TYPE == T_Q5_1
#if TYPE == T_Q4_1
  const uint Q = 2u;
#else
  const uint Q = NW == 6 ? 2u : 3u;  // qs words start after d (and m) and qh
  uint qh = wq[o + Q - 1u];
#endif
  float s = 0.0;
  [[unroll]] for (uint k = 0; k < 4u; k++) {
    vec4 lo = lo4x4(wq[o + Q + k]), hi = hi4x4(wq[o + Q + k]);
#if TYPE != T_Q4_1
    lo += 16.0 * bits4(qh, 4u * k);
    hi += 16.0 * bits4(qh, 16u + 4u * k);
#endif
    s += dot(lo, xs[k]) + dot(hi, xs[4u + k]);
  }
#if TYPE == T_Q5_0
  return uintBitsToFloat(wq[o]) * (s - 16.0 * xsum.x);
#else
  return uintBitsToFloat(wq[o]) * s + uintBitsToFloat(wq[o + 1]) * xsum.x;
#endif
#elif TYPE == T_IQ4_NL
  float s = 0.0;
  [[unroll]] for (uint k = 0; k < 4u; k++) {
    uint q = wq[o + 1u + k];
    s += dot(iq4x4(q & 0x0f0f0f0fu), xs[k]) + dot(iq4x4((q >> 4) & 0x0f0f0f0fu), xs[4u + k]);
  }
  return uintBitsToFloat(wq[o]) * s;
#elif TYPE == T_Q2_K || TYPE == T_Q3_K
  // Quarter jj (shift 2jj of the pre-shifted words), sixteen-element half hf: sub-block 2jj + hf.
  float s = 0.0, mn = 0.0;
  [[unroll]] for (uint jj = 0; jj < 2u; jj++) {
    [[unroll]] for (uint hf = 0; hf < 2u; hf++) {
      float t = 0.0;
      [[unroll]] for (uint k = 4u * hf; k < 4u * hf + 4u; k++) {
        uint q = (wq[o + k] >> (2u * jj)) & 0x03030303u;
#if TYPE == T_Q3_K
        q += ((wq[o + 8u + k] >> jj) & 0x01010101u) << 2;
#endif
        t += dot(u8x4(q), xs[8u * jj + k]);
      }
#if TYPE == T_Q2_K
      uint sc = (wq[o + 8] >> (8u * (2u * jj + hf))) & 0xffu;
      s += float(sc & 15u) * t;
      mn += float(sc >> 4) * xsum[2u * jj + hf];
#else
      // Stored q is q3 + 4 (hmask set means no -4), stored scale is scale + 32.
      float sc = float(int((wq[o + 16] >> (8u * (2u * jj + hf))) & 0xffu) - 32);
      s += sc * (t - 4.0 * xsum[2u * jj + hf]);
#endif
    }
  }
#if TYPE == T_Q2_K
  vec2 dm = unpackHalf2x16(wq[o + 9]);
  return dm.x * s - dm.y * mn;
#else
  return uintBitsToFloat(wq[o + 17]) * s;
#endif
#elif TYPE == T_Q5_K
  float sa = 0.0, sb = 0.0;
  [[unroll]] for (uint k = 0; k < 8u; k++) {
    uint hb = wq[o + 12u + k];
    sa += dot(lo4x4(wq[o + 4u + k]) + 16.0 * u8x4(hb & 0x01010101u), xs[k]);
    sb += dot(hi4x4(wq[o + 4u + k]) + 16.0 * u8x4((hb >> 1) & 0x01010101u), xs[8u + k]);
  }
  return uintBitsToFloat(wq[o]) * sa + uintBitsToFloat(wq[o + 1]) * sb
       - uintBitsToFloat(wq[o + 2]) * xsum.x - uintBitsToFloat(wq[o + 3]) * xsum.y;
#elif TYPE == T_IQ4_XS
  float sa = 0.0, sb = 0.0;
  [[unroll]] for (uint k = 0; k < 4u; k++) {
    uint qa = wq[o + 2u + k], qb = wq[o + 6u + k];
    sa += dot(iq4x4(qa & 0x0f0f0f0fu), xs[k]) + dot(iq4x4((qa >> 4) & 0x0f0f0f0fu), xs[4u + k]);
    sb += dot(iq4x4(qb & 0x0f0f0f0fu), xs[8u + k]) + dot(iq4x4((qb >> 4) & 0x0f0f0f0fu), xs[12u + k]);
  }
  return uintBitsToFloat(wq[o]) * sa + uintBitsToFloat(wq[o + 1]) * sb;
#endif
}

// Where vec4 j of a unit's staged x sits, in vec4s from the unit's first element: the 64
// elements of a Q6_K unit are four runs of 16, 32 apart.
#if TYPE == T_Q6_K
#define XAT(j) (8u * ((j) / 4u) + (j) % 4u)
#else
#define XAT(j) (j)
#endif

void main() {
  uint g = gl_WorkGroupID.y * gl_NumWorkGroups.x + gl_WorkGroupID.x;
  const bool pairs = GLU != 0u;
  // With GLU pairs, the workgroup's outputs r0.. are gate rows r0.. and up rows F + r0...
  const uint halfRows = NUM_ROWS / 2u;
  uint r0 = g * (pairs ? halfRows : NUM_ROWS);
  if (r0 >= (pairs ? p.gluRows : p.rows)) return;
  uint col0 = gl_WorkGroupID.z * NUM_COLS;
  uint lane = gl_LocalInvocationID.x;
  uint units = p.cols / UNIT;
  const bool norm = NORM != 0u;
  [[unroll]] for (uint i = 0; i < NUM_ROWS * NUM_COLS; i++) acc[i] = 0.0;
  [[unroll]] for (uint c = 0; c < NUM_COLS; c++) ssq[c] = 0.0;
  uint rowStart[NUM_ROWS];
  [[unroll]] for (uint r = 0; r < NUM_ROWS; r++) {
    uint row = !pairs ? min(r0 + r, p.rows - 1u)
      : r < halfRows ? min(r0 + r, p.gluRows - 1u) : p.gluRows + min(r0 + r - halfRows, p.gluRows - 1u);
    rowStart[r] = p.wByte0 + row * p.rowBytes;
  }

  for (uint u = lane; u < units; u += WG) {
    [[unroll]] for (uint r = 0; r < NUM_ROWS; r++) load_unit(r, rowStart[r], u);
#if TYPE == T_Q6_K
    // The scale bytes of this unit are is, is+2, is+4, is+6: shift them to bytes 0 and 2.
    [[unroll]] for (uint r = 0; r < NUM_ROWS; r++) {
      wq[r * NW + 12u] >>= 8u * (u & 1u);
      wq[r * NW + 13u] >>= 8u * (u & 1u);
    }
    uint xo = (256u * (u >> 2) + 128u * ((u >> 1) & 1u) + 16u * (u & 1u)) / 4u;
#else
    uint xo = u * UNIT / 4u;
#endif
    [[unroll]] for (uint c = 0; c < NUM_COLS; c++) {
      uint xb = min(col0 + c, p.ncols - 1u) * p.xStride / 4u + xo;
      vec4 xs[XV];
      [[unroll]] for (uint k = 0; k < XV; k++) xs[k] = x4[xb + XAT(k)];
      if (norm) {
        [[unroll]] for (uint k = 0; k < XV; k++) {
          ssq[c] += dot(xs[k], xs[k]);
          xs[k] *= g4[xo + XAT(k)];
        }
      }
      vec4 xsum = vec4(0.0);
#if TYPE == T_Q4_0 || TYPE == T_Q4_1 || TYPE == T_Q5_0 || TYPE == T_Q5_1
      vec4 t = vec4(0.0);
      [[unroll]] for (uint k = 0; k < XV; k++) t += xs[k];
      xsum.x = dot(t, vec4(1.0));
#elif TYPE == T_Q4_K || TYPE == T_Q5_K
      vec4 ta = vec4(0.0), tb = vec4(0.0);
      [[unroll]] for (uint k = 0; k < 8u; k++) { ta += xs[k]; tb += xs[8u + k]; }
      xsum.x = dot(ta, vec4(1.0));
      xsum.y = dot(tb, vec4(1.0));
#elif TYPE == T_Q2_K || TYPE == T_Q3_K || TYPE == T_Q6_K
      // Sums over the four sub-blocks (runs) of 16.
      [[unroll]] for (uint m = 0; m < 4u; m++) {
        xsum[m] = dot(xs[4u * m] + xs[4u * m + 1u] + xs[4u * m + 2u] + xs[4u * m + 3u], vec4(1.0));
      }
#endif
      [[unroll]] for (uint r = 0; r < NUM_ROWS; r++) acc[r * NUM_COLS + c] += dot_unit(r, xs, xsum);
    }
  }
  // The scale of each column's results: 1, or RMSNorm's 1 / sqrt(mean(x²) + eps).
  [[unroll]] for (uint c = 0; c < NUM_COLS; c++) {
    ssq[c] = norm ? inversesqrt(wg_sum(ssq[c]) / float(p.cols) + p.eps) : 1.0;
  }
  reduce_store(r0, col0);
}
