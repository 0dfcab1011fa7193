#version 450
// Matrix-vector product y = W·x (or y += W·x) for NUM_COLS input columns at once, W in GGUF's
// byte layout (row-major, row r = `cols` elements = cols/blockElems blocks).
//
// Defines: TYPE (a ggml type id, see quant.glsl); RUN selects the CPU-tuned path; LOAD64 makes
// that path read 32-byte chunks as u64vec4 (needs shaderInt64); HC_SUBGROUP the reduction.
// Spec constants: 0 = workgroup size (lanes), 1 = NUM_ROWS rows per workgroup, 2 = NUM_COLS.
//
// Work split (both paths): a workgroup owns NUM_ROWS consecutive rows and NUM_COLS columns of x;
// its lanes stride over the "units" of a row (lane l takes units l, l+WG, ...), keep one partial
// sum per (row, column) and reduce them across lanes at the end. The x values of a unit are
// loaded once and reused for all NUM_ROWS rows; a unit's weights are dequantised once and reused
// for all NUM_COLS columns.
//
// Generic path (GPUs, and any alignment): a unit is 4 elements (F32/F16/BF16), one block
// (Q8_0/Q4_0) or 64 elements (Q4_K/Q6_K); weights are read as 32-bit words (uvec2/uvec4 where
// the layout is aligned), so neighbouring lanes read neighbouring bytes.
//
// RUN path (lavapipe): every SSBO load there is a per-lane scalar loop of ~40 instructions, so
// the number of load instructions limits speed. Each lane reads whole 32-byte chunks of a run:
// 16 blocks = 17 chunks (Q8_0), 16 blocks = 9 chunks (Q4_0), 2 super-blocks = 9 chunks (Q4_K),
// 1 or 8 chunks (F32/F16/BF16), so every weight byte is loaded exactly once. Two variants:
// ROWLOOP (decode, one column) and the step variant (batches). Requires row starts and rowBytes
// that are multiples of 32 (the host checks).
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
#include "quant.glsl"
layout(local_size_x_id = 0) in;
layout(constant_id = 0) const uint WG = 64;
layout(constant_id = 1) const uint NUM_ROWS = 2;
layout(constant_id = 2) const uint NUM_COLS = 1;

layout(push_constant) uniform P {
  uint rows;      // rows in this dispatch
  uint cols;      // elements per row (K)
  uint wByte0;    // byte offset of this dispatch's row 0 inside the weight binding
  uint rowBytes;  // bytes per row
  uint xStride;   // floats between consecutive columns of x
  uint yStride;   // floats between consecutive columns of y
  uint yRow0;     // index in y of this dispatch's row 0
  uint ncols;     // columns of x / y in total
  uint flags;     // bit 0: accumulate into y
} p;

layout(std430, binding = 2) buffer Y { float y[]; };

#ifndef ROWLOOP
float acc[NUM_ROWS * NUM_COLS];
shared float red_sh[NUM_ROWS * NUM_COLS * WG];

void write_out(uint i, float v, uint r0, uint col0) {
  uint row = r0 + i / NUM_COLS;
  uint col = col0 + i % NUM_COLS;
  if (row < p.rows && col < p.ncols) {
    uint idx = col * p.yStride + p.yRow0 + row;
    if ((p.flags & 1u) != 0u) v += y[idx];
    y[idx] = v;
  }
}

// Sums acc[] over the workgroup's lanes and writes (or adds) the results.
void reduce_store(uint r0, uint col0) {
  const uint n = NUM_ROWS * NUM_COLS;
  uint lane = gl_LocalInvocationID.x;
#ifdef HC_SUBGROUP
  [[unroll]] for (uint i = 0; i < n; i++) acc[i] = subgroupAdd(acc[i]);
  if (gl_NumSubgroups == 1u) {
    if (lane == 0u) {
      [[unroll]] for (uint i = 0; i < n; i++) write_out(i, acc[i], r0, col0);
    }
    return;
  }
  if (subgroupElect()) {
    [[unroll]] for (uint i = 0; i < n; i++) red_sh[i * gl_NumSubgroups + gl_SubgroupID] = acc[i];
  }
  barrier();
  for (uint i = lane; i < n; i += WG) {
    float s = 0.0;
    for (uint k = 0; k < gl_NumSubgroups; k++) s += red_sh[i * gl_NumSubgroups + k];
    write_out(i, s, r0, col0);
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
  for (uint i = lane; i < n; i += WG) write_out(i, red_sh[i * WG], r0, col0);
#endif
}
#endif

#ifndef RUN
// ---------------------------------------------------------------------------------------------
// Generic path
layout(std430, binding = 0) readonly buffer W1 { uint w[]; };
layout(std430, binding = 0) readonly buffer W2 { uvec2 w2[]; };
layout(std430, binding = 0) readonly buffer W4 { uvec4 w4[]; };
layout(std430, binding = 1) readonly buffer X4 { vec4 x4[]; };

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
#else
#error unsupported TYPE
#endif
#define XV (UNIT / 4u)

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
#endif
}

void main() {
  uint g = gl_WorkGroupID.y * gl_NumWorkGroups.x + gl_WorkGroupID.x;
  uint r0 = g * NUM_ROWS;
  if (r0 >= p.rows) return;
  uint col0 = gl_WorkGroupID.z * NUM_COLS;
  uint lane = gl_LocalInvocationID.x;
  uint units = p.cols / UNIT;
  [[unroll]] for (uint i = 0; i < NUM_ROWS * NUM_COLS; i++) acc[i] = 0.0;
  uint rowStart[NUM_ROWS];
  [[unroll]] for (uint r = 0; r < NUM_ROWS; r++) rowStart[r] = p.wByte0 + min(r0 + r, p.rows - 1u) * p.rowBytes;

  for (uint u = lane; u < units; u += WG) {
    [[unroll]] for (uint r = 0; r < NUM_ROWS; r++) load_unit(r, rowStart[r], u);
#if TYPE == T_Q6_K
    // The scale bytes of this unit are is, is+2, is+4, is+6: shift them to bytes 0 and 2.
    [[unroll]] for (uint r = 0; r < NUM_ROWS; r++) {
      wq[r * NW + 12u] >>= 8u * (u & 1u);
      wq[r * NW + 13u] >>= 8u * (u & 1u);
    }
#endif
    [[unroll]] for (uint c = 0; c < NUM_COLS; c++) {
      uint xcol = min(col0 + c, p.ncols - 1u) * p.xStride;
      vec4 xs[XV];
#if TYPE == T_Q6_K
      // The 64 elements of a Q6_K unit are four runs of 16, 32 apart.
      uint xb = (xcol + 256u * (u >> 2) + 128u * ((u >> 1) & 1u) + 16u * (u & 1u)) / 4u;
      [[unroll]] for (uint m = 0; m < 4u; m++) {
        [[unroll]] for (uint k = 0; k < 4u; k++) xs[4u * m + k] = x4[xb + 8u * m + k];
      }
      vec4 xsum = vec4(0.0);
      [[unroll]] for (uint m = 0; m < 4u; m++) {
        xsum[m] = dot(xs[4u * m] + xs[4u * m + 1u] + xs[4u * m + 2u] + xs[4u * m + 3u], vec4(1.0));
      }
#else
      uint xb = (xcol + u * UNIT) / 4u;
      [[unroll]] for (uint k = 0; k < XV; k++) xs[k] = x4[xb + k];
      vec4 xsum = vec4(0.0);
#if TYPE == T_Q4_0
      vec4 t = vec4(0.0);
      [[unroll]] for (uint k = 0; k < XV; k++) t += xs[k];
      xsum.x = dot(t, vec4(1.0));
#elif TYPE == T_Q4_K
      vec4 ta = vec4(0.0), tb = vec4(0.0);
      [[unroll]] for (uint k = 0; k < 8u; k++) { ta += xs[k]; tb += xs[8u + k]; }
      xsum.x = dot(ta, vec4(1.0));
      xsum.y = dot(tb, vec4(1.0));
#endif
#endif
      [[unroll]] for (uint r = 0; r < NUM_ROWS; r++) acc[r * NUM_COLS + c] += dot_unit(r, xs, xsum);
    }
  }
  reduce_store(r0, col0);
}

#else
// ---------------------------------------------------------------------------------------------
// RUN path (CPU drivers)
#ifdef LOAD64
#extension GL_EXT_shader_explicit_arithmetic_types_int64 : require
layout(std430, binding = 0) readonly buffer WC { u64vec4 wc[]; };
layout(std430, binding = 1) readonly buffer XC { u64vec4 xc[]; };
#define LOADW(i, D, o) { u64vec4 q_ = wc[i]; \
  uvec2 a_ = unpackUint2x32(q_.x), b_ = unpackUint2x32(q_.y), c_ = unpackUint2x32(q_.z), d_ = unpackUint2x32(q_.w); \
  D[o] = a_.x; D[o + 1] = a_.y; D[o + 2] = b_.x; D[o + 3] = b_.y; \
  D[o + 4] = c_.x; D[o + 5] = c_.y; D[o + 6] = d_.x; D[o + 7] = d_.y; }
#define NCHUNKS uint(wc.length())
#define LOADX(i, D, o) { u64vec4 q_ = xc[i]; \
  D[o] = vec4(uintBitsToFloat(unpackUint2x32(q_.x)), uintBitsToFloat(unpackUint2x32(q_.y))); \
  D[o + 1] = vec4(uintBitsToFloat(unpackUint2x32(q_.z)), uintBitsToFloat(unpackUint2x32(q_.w))); }
#else
layout(std430, binding = 0) readonly buffer WC { uvec4 wc[]; };
layout(std430, binding = 1) readonly buffer XC { vec4 xc[]; };
#define LOADW(i, D, o) { uvec4 a_ = wc[2u * (i)], b_ = wc[2u * (i) + 1u]; \
  D[o] = a_.x; D[o + 1] = a_.y; D[o + 2] = a_.z; D[o + 3] = a_.w; \
  D[o + 4] = b_.x; D[o + 5] = b_.y; D[o + 6] = b_.z; D[o + 7] = b_.w; }
#define LOADX(i, D, o) { D[o] = xc[2u * (i)]; D[o + 1] = xc[2u * (i) + 1u]; }
#define NCHUNKS (uint(wc.length()) / 2u)
#endif

#ifdef ROWLOOP
// Row-loop variant (NUM_COLS == 1, decode): a lane stages the x of one unit in registers, then
// walks all NUM_ROWS rows of the workgroup in a runtime loop; per row it loads the unit's chunks
// back to back (so their cache misses overlap) and decodes them at compile-time offsets. Partial
// sums live in shared memory, one per (row, lane), so NUM_ROWS can be large and x is loaded
// once per unit for all those rows.
#if TYPE == T_F32
#define UNIT 64u
#define CHUNKS 8u
#elif TYPE == T_F16 || TYPE == T_BF16
#define UNIT 128u
#define CHUNKS 8u
#elif TYPE == T_Q8_0
#define UNIT 512u
#define CHUNKS 17u
#elif TYPE == T_Q4_0 || TYPE == T_Q4_K
#define UNIT 512u
#define CHUNKS 9u
#elif TYPE == T_Q6_K
// One 210-byte super-block per unit: it sits at a per-lane byte phase inside an 8-chunk window
// that is shifted into place at run time (any even row alignment works).
#define UNIT 256u
#define CHUNKS 8u
#else
#error TYPE has no row-loop path
#endif
#define XV (UNIT / 4u)

shared float part[NUM_ROWS * WG];

// Dot product of one row's unit (weight words wr) with the staged x.
float row_unit(uint wr[CHUNKS * 8u], vec4 xs[XV], float xsum[16]) {
#if TYPE == T_F32
  vec4 a = vec4(0.0), b = vec4(0.0);
  [[unroll]] for (uint k = 0; k < XV; k += 2u) {
    a = fma(uintBitsToFloat(uvec4(wr[4u * k], wr[4u * k + 1u], wr[4u * k + 2u], wr[4u * k + 3u])), xs[k], a);
    b = fma(uintBitsToFloat(uvec4(wr[4u * k + 4u], wr[4u * k + 5u], wr[4u * k + 6u], wr[4u * k + 7u])), xs[k + 1u], b);
  }
  return dot(a + b, vec4(1.0));
#elif TYPE == T_F16 || TYPE == T_BF16
  vec4 a = vec4(0.0), b = vec4(0.0);
  [[unroll]] for (uint k = 0; k < XV; k += 2u) {
#if TYPE == T_F16
    a = fma(vec4(unpackHalf2x16(wr[2u * k]), unpackHalf2x16(wr[2u * k + 1u])), xs[k], a);
    b = fma(vec4(unpackHalf2x16(wr[2u * k + 2u]), unpackHalf2x16(wr[2u * k + 3u])), xs[k + 1u], b);
#else
    a = fma(vec4(bf16x2(wr[2u * k]), bf16x2(wr[2u * k + 1u])), xs[k], a);
    b = fma(vec4(bf16x2(wr[2u * k + 2u]), bf16x2(wr[2u * k + 3u])), xs[k + 1u], b);
#endif
  }
  return dot(a + b, vec4(1.0));
#elif TYPE == T_Q8_0
  // Block pair s = 68 bytes = words 17s..17s+16: block A at +0 (d in the low half, qs from
  // byte 2), block B at byte 34 (d in the high half of word 8, qs word-aligned from word 9).
  float sum = 0.0;
  [[unroll]] for (uint s = 0; s < 8u; s++) {
    uint o = 17u * s;
    vec4 a = vec4(0.0), b = vec4(0.0);
    [[unroll]] for (uint k = 0; k < 8u; k++) {
      a = fma(i8x4(funnel16(wr[o + k], wr[o + k + 1u])), xs[16u * s + k], a);
      b = fma(i8x4(wr[o + 9u + k]), xs[16u * s + 8u + k], b);
    }
    sum += half_lo(wr[o]) * dot(a, vec4(1.0)) + half_hi(wr[o + 8u]) * dot(b, vec4(1.0));
  }
  return sum;
#elif TYPE == T_Q4_0
  // Block pair s = 36 bytes = words 9s..9s+8, laid out like Q8_0's pair.
  float sum = 0.0;
  [[unroll]] for (uint s = 0; s < 8u; s++) {
    uint o = 9u * s;
    vec4 a = vec4(0.0), b = vec4(0.0);
    [[unroll]] for (uint k = 0; k < 4u; k++) {
      uint qa = funnel16(wr[o + k], wr[o + k + 1u]);
      a = fma(lo4x4_placed(qa), xs[16u * s + k], a);
      a = fma(hi4x4_placed(qa), xs[16u * s + 4u + k], a);
      b = fma(lo4x4_placed(wr[o + 5u + k]), xs[16u * s + 8u + k], b);
      b = fma(hi4x4_placed(wr[o + 5u + k]), xs[16u * s + 12u + k], b);
    }
    float dA = half_lo(wr[o]), dB = half_hi(wr[o + 4u]);
    sum += dA * (dot(a, vec4(1.0)) - 8.0 * xsum[2u * s]) + dB * (dot(b, vec4(1.0)) - 8.0 * xsum[2u * s + 1u]);
  }
  return sum;
#elif TYPE == T_Q4_K
  // Super-block j = 144 bytes = words 36j..36j+35: header in the first 4, group g's 32 qs
  // bytes at words 36j+4+8g.
  float sum = 0.0;
  [[unroll]] for (uint j = 0; j < 2u; j++) {
    uint h = 36u * j;
    uvec4 sw = q4k_scale_words(wr[h + 1u], wr[h + 2u], wr[h + 3u]);
    vec2 dm = unpackHalf2x16(wr[h]);
    [[unroll]] for (uint g = 0; g < 4u; g++) {
      vec4 sc = q4k_group_scales(sw, g);
      uint o = h + 4u + 8u * g;
      uint xo = 64u * j + 16u * g;
      vec4 a = vec4(0.0), b = vec4(0.0);
      [[unroll]] for (uint k = 0; k < 8u; k++) {
        a = fma(lo4x4_placed(wr[o + k]), xs[xo + k], a);
        b = fma(hi4x4_placed(wr[o + k]), xs[xo + 8u + k], b);
      }
      uint sb = 8u * j + 2u * g;
      sum += dm.x * (sc.x * dot(a, vec4(1.0)) + sc.y * dot(b, vec4(1.0)))
           - dm.y * (sc.z * xsum[sb] + sc.w * xsum[sb + 1u]);
    }
  }
  return sum;
#elif TYPE == T_Q6_K
  // wr holds the super-block at word 0 (ql words 0-31, qh 32-47, scales 48-51, d in word 52).
  // Half h, quad i (l = 4i..4i+3), quarter m: elements 128h + 32m + l, scale 8h + i/4 + 2m.
  float sum = 0.0;
  [[unroll]] for (uint h = 0; h < 2u; h++) {
    [[unroll]] for (uint m = 0; m < 4u; m++) {
      [[unroll]] for (uint is = 0; is < 2u; is++) {
        vec4 a = vec4(0.0);
        [[unroll]] for (uint k = 0; k < 4u; k++) {
          uint i = 4u * is + k;
          uint q = q6k_word(wr[16u * h + i], wr[16u * h + 8u + i], wr[32u + 8u * h + i], m);
          a = fma(u8x4(q), xs[32u * h + 8u * m + i], a);
        }
        uint si = 8u * h + is + 2u * m;
        sum += i8_at(wr[48u + si / 4u], si % 4u) * (dot(a, vec4(1.0)) - 32.0 * xsum[8u * h + 2u * m + is]);
      }
    }
  }
  return sum * half_lo(wr[52]);
#endif
}

void main() {
  uint g = gl_WorkGroupID.y * gl_NumWorkGroups.x + gl_WorkGroupID.x;
  uint r0 = g * NUM_ROWS;
  if (r0 >= p.rows) return;
  uint nr = min(NUM_ROWS, p.rows - r0);
  uint lane = gl_LocalInvocationID.x;
  uint units = p.cols / UNIT;
  for (uint r = 0; r < nr; r++) part[r * WG + lane] = 0.0;
  uint col = gl_WorkGroupID.z;
  for (uint u = lane; u < units; u += WG) {
    vec4 xs[XV];
    uint xb = (col * p.xStride + u * UNIT) / 8u;
    [[unroll]] for (uint k = 0; k < XV / 2u; k++) LOADX(xb + k, xs, 2u * k)
    // Sums of x over each 32-element block, for the offset/min terms of Q4_0 and Q4_K.
    float xsum[16];
    [[unroll]] for (uint b = 0; b < 16u; b++) {
      vec4 t = vec4(0.0);
#if TYPE == T_Q4_0 || TYPE == T_Q4_K
      [[unroll]] for (uint k = 0; k < 8u; k++) t += xs[8u * b + k];
#elif TYPE == T_Q6_K
      // Q6_K scale groups of 16: b = 8h + 2m + is.
      [[unroll]] for (uint k = 0; k < 4u; k++) t += xs[32u * (b / 8u) + 8u * ((b / 2u) % 4u) + 4u * (b % 2u) + k];
#endif
      xsum[b] = dot(t, vec4(1.0));
    }
#if TYPE == T_Q4_0
    // Block b's low nibbles are elements 0-15 (vec4s 8b..8b+3), high nibbles 16-31.
    [[unroll]] for (uint b = 0; b < 16u; b++) {
      [[unroll]] for (uint k = 0; k < 4u; k++) {
        xs[8u * b + k] *= NIB_LO_SCALE;
        xs[8u * b + 4u + k] *= NIB_HI_SCALE;
      }
    }
#elif TYPE == T_Q4_K
    // Group g's low nibbles are elements 0-31 (vec4s 16g..16g+7), high nibbles 32-63.
    [[unroll]] for (uint g = 0; g < 8u; g++) {
      [[unroll]] for (uint k = 0; k < 8u; k++) {
        xs[16u * g + k] *= NIB_LO_SCALE;
        xs[16u * g + 8u + k] *= NIB_HI_SCALE;
      }
    }
#endif
    uint c0 = p.wByte0 / 32u + u * CHUNKS;
    uint rowChunks = p.rowBytes / 32u;
    for (uint r = 0; r < nr; r++) {
      uint wr[CHUNKS * 8u];
#if TYPE == T_Q6_K
      uint b = p.wByte0 + (r0 + r) * p.rowBytes + 210u * u;
      uint c = b / 32u;
      uint last = NCHUNKS - 1u;
      [[unroll]] for (uint k = 0; k < CHUNKS; k++) LOADW(min(c + k, last), wr, 8u * k)
      // Shift the window left by the block's phase: whole words, then a half word.
      uint ph = b % 32u;
      bool s4 = (ph & 16u) != 0u, s2 = (ph & 8u) != 0u, s1 = (ph & 4u) != 0u, sh = (ph & 2u) != 0u;
      [[unroll]] for (uint k = 0; k < 58u; k++) wr[k] = s4 ? wr[k + 4u] : wr[k];
      [[unroll]] for (uint k = 0; k < 56u; k++) wr[k] = s2 ? wr[k + 2u] : wr[k];
      [[unroll]] for (uint k = 0; k < 54u; k++) wr[k] = s1 ? wr[k + 1u] : wr[k];
      [[unroll]] for (uint k = 0; k < 53u; k++) wr[k] = sh ? funnel16(wr[k], wr[k + 1u]) : wr[k];
#else
      uint c = c0 + (r0 + r) * rowChunks;
      [[unroll]] for (uint k = 0; k < CHUNKS; k++) LOADW(c + k, wr, 8u * k)
#endif
      part[r * WG + lane] += row_unit(wr, xs, xsum);
    }
  }
#ifdef HC_SUBGROUP
  // One subgroup: each lane reads back only its own partial sums, so no barrier is needed.
  if (gl_NumSubgroups == 1u) {
    for (uint r = 0; r < nr; r++) {
      float v = subgroupAdd(part[r * WG + lane]);
      if (lane == 0u) {
        uint idx = col * p.yStride + p.yRow0 + r0 + r;
        if ((p.flags & 1u) != 0u) v += y[idx];
        y[idx] = v;
      }
    }
    return;
  }
#endif
  barrier();
  for (uint s = WG / 2u; s > 0u; s >>= 1) {
    if (lane < s) {
      for (uint r = 0; r < nr; r++) part[r * WG + lane] += part[r * WG + lane + s];
    }
    barrier();
  }
  for (uint r = lane; r < nr; r += WG) {
    uint idx = col * p.yStride + p.yRow0 + r0 + r;
    float v = part[r * WG];
    if ((p.flags & 1u) != 0u) v += y[idx];
    y[idx] = v;
  }
}

#else
// Step variant (prefill batches of NUM_COLS columns): lanes walk their runs in 8 steps of 64
// elements; per step the x of all columns is loaded once and the NUM_ROWS rows are unrolled,
// each keeping the chunk it shares with the next step in registers.

#if TYPE == T_F32
#define UNIT 8u
#define CHUNKS 1u
#define STEPS 1
#define XV 2u
#elif TYPE == T_F16 || TYPE == T_BF16
#define UNIT 16u
#define CHUNKS 1u
#define STEPS 1
#define XV 4u
#elif TYPE == T_Q8_0
#define UNIT 512u
#define CHUNKS 17u
#define STEPS 8
#define XV 16u
#elif TYPE == T_Q4_0 || TYPE == T_Q4_K
#define UNIT 512u
#define CHUNKS 9u
#define STEPS 8
#define XV 16u
#else
#error TYPE has no RUN path
#endif
#define STEP_ELEMS (UNIT / uint(STEPS))

#if STEPS > 1
// The last chunk loaded for each row, shared with the next step.
uint carry[NUM_ROWS][8];
#endif
#if TYPE == T_Q4_K
// The 16-byte header (d, dmin, scales) of the super-block the current step is in.
uint hdr[NUM_ROWS][4];
#endif

void main() {
  uint g = gl_WorkGroupID.y * gl_NumWorkGroups.x + gl_WorkGroupID.x;
  uint r0 = g * NUM_ROWS;
  if (r0 >= p.rows) return;
  uint col0 = gl_WorkGroupID.z * NUM_COLS;
  uint lane = gl_LocalInvocationID.x;
  uint units = p.cols / UNIT;
  [[unroll]] for (uint i = 0; i < NUM_ROWS * NUM_COLS; i++) acc[i] = 0.0;
  uint rowChunk[NUM_ROWS];
  [[unroll]] for (uint r = 0; r < NUM_ROWS; r++) {
    rowChunk[r] = (p.wByte0 + min(r0 + r, p.rows - 1u) * p.rowBytes) / 32u;
  }
  uint xcol[NUM_COLS];
  [[unroll]] for (uint c = 0; c < NUM_COLS; c++) xcol[c] = min(col0 + c, p.ncols - 1u) * p.xStride;

  for (uint u = lane; u < units; u += WG) {
#if STEPS > 1
    [[unroll]] for (uint r = 0; r < NUM_ROWS; r++) {
      LOADW(rowChunk[r] + u * CHUNKS, carry[r], 0)
#if TYPE == T_Q4_K
      [[unroll]] for (uint k = 0; k < 4u; k++) hdr[r][k] = carry[r][k];
#endif
    }
#endif
    for (uint s = 0; s < STEPS; s++) {
      // x of this step for every column, and the per-block sums the offset terms need.
      vec4 xs[NUM_COLS][XV];
      vec2 xsum[NUM_COLS];
      [[unroll]] for (uint c = 0; c < NUM_COLS; c++) {
        uint xb = (xcol[c] + u * UNIT + s * STEP_ELEMS) / 8u;
        [[unroll]] for (uint k = 0; k < XV / 2u; k++) LOADX(xb + k, xs[c], 2u * k)
        vec4 ta = vec4(0.0), tb = vec4(0.0);
#if TYPE == T_Q4_0 || TYPE == T_Q4_K
        [[unroll]] for (uint k = 0; k < 8u; k++) { ta += xs[c][k]; tb += xs[c][8u + k]; }
#endif
        xsum[c] = vec2(dot(ta, vec4(1.0)), dot(tb, vec4(1.0)));
      }
      [[unroll]] for (uint r = 0; r < NUM_ROWS; r++) {
        // Dequantised (unscaled) weights of this step and the scales of its two halves.
        vec4 wv[XV];
        float dA = 1.0, dB = 1.0, mA = 0.0, mB = 0.0;
#if TYPE == T_F32 || TYPE == T_F16 || TYPE == T_BF16
        uint t[8];
        LOADW(rowChunk[r] + u, t, 0)
#if TYPE == T_F32
        wv[0] = uintBitsToFloat(uvec4(t[0], t[1], t[2], t[3]));
        wv[1] = uintBitsToFloat(uvec4(t[4], t[5], t[6], t[7]));
#elif TYPE == T_F16
        [[unroll]] for (uint k = 0; k < 4u; k++) wv[k] = vec4(unpackHalf2x16(t[2u * k]), unpackHalf2x16(t[2u * k + 1u]));
#else
        [[unroll]] for (uint k = 0; k < 4u; k++) wv[k] = vec4(bf16x2(t[2u * k]), bf16x2(t[2u * k + 1u]));
#endif
#elif TYPE == T_Q8_0
        // Block pair s sits at byte 68s of the run: chunks 2s..2s+2, 4s bytes in.
        uint t[24];
        [[unroll]] for (uint k = 0; k < 8u; k++) t[k] = carry[r][k];
        LOADW(rowChunk[r] + u * CHUNKS + 2u * s + 1u, t, 8)
        LOADW(rowChunk[r] + u * CHUNKS + 2u * s + 2u, t, 16)
        [[unroll]] for (uint k = 0; k < 8u; k++) carry[r][k] = t[16u + k];
        bool b4 = (s & 4u) != 0u, b2 = (s & 2u) != 0u, b1 = (s & 1u) != 0u;
        [[unroll]] for (uint k = 0; k < 20u; k++) t[k] = b4 ? t[k + 4u] : t[k];
        [[unroll]] for (uint k = 0; k < 18u; k++) t[k] = b2 ? t[k + 2u] : t[k];
        [[unroll]] for (uint k = 0; k < 17u; k++) t[k] = b1 ? t[k + 1u] : t[k];
        dA = half_lo(t[0]);
        dB = half_hi(t[8]);
        [[unroll]] for (uint k = 0; k < 8u; k++) {
          wv[k] = i8x4(funnel16(t[k], t[k + 1u]));
          wv[8u + k] = i8x4(t[9u + k]);
        }
#elif TYPE == T_Q4_0
        // Block pair s sits at byte 36s of the run: chunks s..s+1, 4s bytes in.
        uint t[16];
        [[unroll]] for (uint k = 0; k < 8u; k++) t[k] = carry[r][k];
        LOADW(rowChunk[r] + u * CHUNKS + s + 1u, t, 8)
        [[unroll]] for (uint k = 0; k < 8u; k++) carry[r][k] = t[8u + k];
        bool b4 = (s & 4u) != 0u, b2 = (s & 2u) != 0u, b1 = (s & 1u) != 0u;
        [[unroll]] for (uint k = 0; k < 12u; k++) t[k] = b4 ? t[k + 4u] : t[k];
        [[unroll]] for (uint k = 0; k < 10u; k++) t[k] = b2 ? t[k + 2u] : t[k];
        [[unroll]] for (uint k = 0; k < 9u; k++) t[k] = b1 ? t[k + 1u] : t[k];
        dA = half_lo(t[0]);
        dB = half_hi(t[4]);
        mA = 8.0 * dA;
        mB = 8.0 * dB;
        [[unroll]] for (uint k = 0; k < 4u; k++) {
          uint qa = funnel16(t[k], t[k + 1u]);
          wv[k] = lo4x4(qa);
          wv[4u + k] = hi4x4(qa);
          wv[8u + k] = lo4x4(t[5u + k]);
          wv[12u + k] = hi4x4(t[5u + k]);
        }
#elif TYPE == T_Q4_K
        // Group s (64 elements): super-block s/4, qs bytes 32*(s%4).. of it. The first
        // super-block's qs start 16 bytes into chunk 0, the second's are chunk-aligned.
        uint t[8];
        LOADW(rowChunk[r] + u * CHUNKS + s + 1u, t, 0)
        bool first = s < 4u;
        uint q[8];
        [[unroll]] for (uint k = 0; k < 4u; k++) {
          q[k] = first ? carry[r][4u + k] : t[k];
          q[4u + k] = first ? t[k] : t[4u + k];
        }
        if (s == 4u) {
          [[unroll]] for (uint k = 0; k < 4u; k++) hdr[r][k] = carry[r][4u + k];
        }
        [[unroll]] for (uint k = 0; k < 8u; k++) carry[r][k] = t[k];
        vec4 sc = q4k_group_scales(q4k_scale_words(hdr[r][1], hdr[r][2], hdr[r][3]), s & 3u);
        vec2 dm = unpackHalf2x16(hdr[r][0]);
        dA = dm.x * sc.x;
        dB = dm.x * sc.y;
        mA = dm.y * sc.z;
        mB = dm.y * sc.w;
        [[unroll]] for (uint k = 0; k < 8u; k++) {
          wv[k] = lo4x4(q[k]);
          wv[8u + k] = hi4x4(q[k]);
        }
#endif
        [[unroll]] for (uint c = 0; c < NUM_COLS; c++) {
#if STEPS == 1
          float sum = 0.0;
          [[unroll]] for (uint k = 0; k < XV; k++) sum = fma4(wv[k], xs[c][k], sum);
          acc[r * NUM_COLS + c] += sum;
#else
          float sa = 0.0, sb = 0.0;
          [[unroll]] for (uint k = 0; k < 8u; k++) {
            sa = fma4(wv[k], xs[c][k], sa);
            sb = fma4(wv[8u + k], xs[c][8u + k], sb);
          }
          acc[r * NUM_COLS + c] += dA * sa + dB * sb - mA * xsum[c].x - mB * xsum[c].y;
#endif
        }
      }
    }
  }
  reduce_store(r0, col0);
}
#endif
#endif
