#version 450
// Row fetch (embedding lookup): out[i][e] = dequant(W[ids[i]])[e] for every id, f32 output.
// Define TYPE (a ggml type id, see quant.glsl). Spec constant 0 = workgroup size.
// Grid: x covers the units of a row (UNIT elements per invocation), y one id each (ids
// idBase..idBase+nids-1). A weight too big for one binding is fetched in parts of rows
// [rowBase, rowBase + rows); each dispatch writes only the ids that fall in its part, and the
// dispatch with flag bit 0 also writes zero rows for ids >= totalRows, so a bad token id can
// never read outside the weight.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
#include "quant.glsl"
layout(local_size_x_id = 0) in;

layout(std430, binding = 0) readonly buffer W1 { uint w[]; };
layout(std430, binding = 1) readonly buffer Ids { uint ids[]; };
layout(std430, binding = 2) writeonly buffer O { float o[]; };

layout(push_constant) uniform P {
  uint cols;       // elements per row
  uint rowBytes;   // bytes per row
  uint wByte0;     // byte offset of row rowBase inside the weight binding
  uint rowBase;    // first row of this part
  uint rows;       // rows in this part
  uint totalRows;  // rows in the whole weight (valid ids are 0..totalRows-1)
  uint outStride;  // floats between output rows
  uint idBase;     // first entry of ids this dispatch handles
  uint nids;       // entries of ids this dispatch handles
  uint flags;      // bit 0: write zero rows for invalid ids
} p;

#if TYPE == T_F32 || TYPE == T_F16 || TYPE == T_BF16
#define UNIT 4u
#elif TYPE == T_Q8_0 || TYPE == T_Q4_0
#define UNIT 32u
#elif TYPE == T_Q4_K || TYPE == T_Q6_K
#define UNIT 64u
#else
#error unsupported TYPE
#endif

// The 32-bit word starting at an even byte offset.
uint word_at(uint b) {
  uint i = b >> 2;
  return (b & 2u) != 0u ? funnel16(w[i], w[i + 1u]) : w[i];
}

float half_at(uint b) {
  uint v = w[b >> 2];
  return (b & 2u) != 0u ? half_hi(v) : half_lo(v);
}

void main() {
  uint u = gl_WorkGroupID.x * gl_WorkGroupSize.x + gl_LocalInvocationID.x;
  uint k = gl_WorkGroupID.y;
  if (k >= p.nids || u * UNIT >= p.cols) return;
  uint id = ids[p.idBase + k];
  uint ob = (p.idBase + k) * p.outStride;
  bool valid = id >= p.rowBase && id - p.rowBase < p.rows;
  if (!valid && !(id >= p.totalRows && (p.flags & 1u) != 0u)) return;
  uint rs = p.wByte0 + (valid ? id - p.rowBase : 0u) * p.rowBytes;
  float v[UNIT];
#if TYPE == T_F32
  [[unroll]] for (uint j = 0; j < 4u; j++) {
    uint e = min(u * 4u + j, p.cols - 1u);
    v[j] = uintBitsToFloat(w[(rs >> 2) + e]);
  }
#elif TYPE == T_F16 || TYPE == T_BF16
  [[unroll]] for (uint j = 0; j < 4u; j++) {
    uint b = rs + 2u * min(u * 4u + j, p.cols - 1u);
    uint x = w[b >> 2];
#if TYPE == T_F16
    v[j] = (b & 2u) != 0u ? half_hi(x) : half_lo(x);
#else
    v[j] = uintBitsToFloat((b & 2u) != 0u ? (x & 0xffff0000u) : (x << 16));
#endif
  }
#elif TYPE == T_Q8_0
  uint b = rs + 34u * u;
  float d = half_at(b);
  [[unroll]] for (uint j = 0; j < 8u; j++) {
    uint q = word_at(b + 2u + 4u * j);
    [[unroll]] for (uint t = 0; t < 4u; t++) v[4u * j + t] = d * i8_at(q, t);
  }
#elif TYPE == T_Q4_0
  uint b = rs + 18u * u;
  float d = half_at(b);
  [[unroll]] for (uint j = 0; j < 4u; j++) {
    uint q = word_at(b + 2u + 4u * j);
    vec4 lo = lo4x4(q) - 8.0, hi = hi4x4(q) - 8.0;
    [[unroll]] for (uint t = 0; t < 4u; t++) {
      v[4u * j + t] = d * lo[t];
      v[16u + 4u * j + t] = d * hi[t];
    }
  }
#elif TYPE == T_Q4_K
  uint sb = rs + 144u * (u >> 2);
  uint g = u & 3u;
  vec4 s = q4k_group_scales(q4k_scale_words(word_at(sb + 4u), word_at(sb + 8u), word_at(sb + 12u)), g);
  vec2 dm = unpackHalf2x16(word_at(sb));
  [[unroll]] for (uint j = 0; j < 8u; j++) {
    uint q = word_at(sb + 16u + 32u * g + 4u * j);
    vec4 lo = lo4x4(q), hi = hi4x4(q);
    [[unroll]] for (uint t = 0; t < 4u; t++) {
      v[4u * j + t] = dm.x * s.x * lo[t] - dm.y * s.z;
      v[32u + 4u * j + t] = dm.x * s.y * hi[t] - dm.y * s.w;
    }
  }
#elif TYPE == T_Q6_K
  // Unit u: super-block u/4, half h, l in [16*is, 16*is+16); element l + 32*m for m = 0..3.
  uint sb = rs + 210u * (u >> 2);
  uint h = (u >> 1) & 1u;
  uint is = u & 1u;
  float d = half_at(sb + 208u);
  uint scw0 = word_at(sb + 192u + 8u * h) >> (8u * is);
  uint scw1 = word_at(sb + 196u + 8u * h) >> (8u * is);
  [[unroll]] for (uint j = 0; j < 4u; j++) {
    uint l = 16u * is + 4u * j;
    uint qa = word_at(sb + 64u * h + l);
    uint qb = word_at(sb + 64u * h + 32u + l);
    uint qh = word_at(sb + 128u + 32u * h + l);
    [[unroll]] for (uint m = 0; m < 4u; m++) {
      float sc = d * i8_at(m < 2u ? scw0 : scw1, (m & 1u) * 2u);
      vec4 q = u8x4(q6k_word(qa, qb, qh, m)) - 32.0;
      [[unroll]] for (uint t = 0; t < 4u; t++) v[16u * m + 4u * j + t] = sc * q[t];
    }
  }
#endif
#if TYPE == T_Q6_K
  // Output order follows the element index: 128h + 32m + 16is + (4j + t).
  uint e0 = 256u * (u >> 2) + 128u * ((u >> 1) & 1u) + 16u * (u & 1u);
  [[unroll]] for (uint m = 0; m < 4u; m++) {
    [[unroll]] for (uint j = 0; j < 16u; j++) o[ob + e0 + 32u * m + j] = valid ? v[16u * m + j] : 0.0;
  }
#else
  [[unroll]] for (uint j = 0; j < UNIT; j++) {
    uint e = u * UNIT + j;
    if (e < p.cols) o[ob + e] = valid ? v[j] : 0.0;
  }
#endif
}
