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
#elif TYPE == T_Q4_1 || TYPE == T_Q5_0 || TYPE == T_Q5_1 || TYPE == T_IQ4_NL || TYPE == T_Q2_K || TYPE == T_Q3_K || TYPE == T_Q5_K || TYPE == T_IQ4_XS
// One block, or one 32-element slice s of a super-block, element by element: a row fetch
// touches one row per token, so plain byte reads are fast enough.
#define UNIT 32u
#else
#error unsupported TYPE
#endif

// The 32-bit word starting at an even byte offset.
uint word_at(uint b) {
  uint i = b >> 2;
  return (b & 2u) != 0u ? funnel16(w[i], w[i + 1u]) : w[i];
}

float half_at(uint b) {
  return HALF_AT(w, b);
}

uint byte_at(uint b) {
  return (w[b >> 2] >> (8u * (b & 3u))) & 0xffu;
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
#elif TYPE == T_Q4_1 || TYPE == T_Q5_0 || TYPE == T_Q5_1 || TYPE == T_IQ4_NL
  // Element l: nibble of qs[l % 16] (low for l < 16), fifth bit l of qh.
  const uint BB = TYPE == T_Q4_1 ? 20u : TYPE == T_Q5_0 ? 22u : TYPE == T_Q5_1 ? 24u : 18u;
  const bool HAS_M = TYPE == T_Q4_1 || TYPE == T_Q5_1;
  const uint QS = TYPE == T_Q4_1 ? 4u : TYPE == T_Q5_0 ? 6u : TYPE == T_Q5_1 ? 8u : 2u;
  uint b = rs + BB * u;
  float d = half_at(b);
  float m = HAS_M ? half_at(b + 2u) : 0.0;
#if TYPE == T_Q5_0 || TYPE == T_Q5_1
  uint qh = word_at(b + QS - 4u);
#endif
  [[unroll]] for (uint l = 0; l < 32u; l++) {
    uint q = byte_at(b + QS + (l & 15u));
    q = l < 16u ? q & 15u : q >> 4;
#if TYPE == T_IQ4_NL
    v[l] = d * IQ4NL[q];
#elif TYPE == T_Q4_1
    v[l] = d * float(q) + m;
#else
    q |= ((qh >> l) & 1u) << 4;
    v[l] = TYPE == T_Q5_0 ? d * float(int(q) - 16) : d * float(q) + m;
#endif
  }
#elif TYPE == T_Q2_K || TYPE == T_Q3_K
  // Slice s = 4n + j: elements 128n + 32j + l are bits 2j of qs[32n + l], sub-block 8n + 2j + l/16.
  uint s = u & 7u, n = s >> 2, j = s & 3u;
#if TYPE == T_Q2_K
  uint sb = rs + 84u * (u >> 3);
  float d = half_at(sb + 80u), dmin = half_at(sb + 82u);
  [[unroll]] for (uint l = 0; l < 32u; l++) {
    uint sc = byte_at(sb + 8u * n + 2u * j + l / 16u);
    uint q = (byte_at(sb + 16u + 32u * n + l) >> (2u * j)) & 3u;
    v[l] = d * float(sc & 15u) * float(q) - dmin * float(sc >> 4);
  }
#else
  uint sb = rs + 110u * (u >> 3);
  float d = half_at(sb + 108u);
  [[unroll]] for (uint l = 0; l < 32u; l++) {
    uint k = 8u * n + 2u * j + l / 16u;
    uint lo = k < 8u ? byte_at(sb + 96u + k) & 15u : byte_at(sb + 88u + k) >> 4;
    uint sc = lo | (((byte_at(sb + 104u + (k & 3u)) >> (2u * (k >> 2))) & 3u) << 4);
    int q = int((byte_at(sb + 32u + 32u * n + l) >> (2u * j)) & 3u);
    if (((byte_at(sb + l) >> (4u * n + j)) & 1u) == 0u) q -= 4;
    v[l] = d * float(int(sc) - 32) * float(q);
  }
#endif
#elif TYPE == T_Q5_K
  // Slice s: sub-block s = 2g + hi, nibble hi of qs[32g + l], fifth bit s of qh[l].
  uint s = u & 7u, g = s >> 1, hi = s & 1u;
  uint sb = rs + 176u * (u >> 3);
  vec4 gs = q4k_group_scales(q4k_scale_words(word_at(sb + 4u), word_at(sb + 8u), word_at(sb + 12u)), g);
  vec2 dm = unpackHalf2x16(word_at(sb));
  float sc = hi == 0u ? gs.x : gs.y;
  float mn = hi == 0u ? gs.z : gs.w;
  [[unroll]] for (uint l = 0; l < 32u; l++) {
    uint q = (byte_at(sb + 48u + 32u * g + l) >> (4u * hi)) & 15u;
    q |= ((byte_at(sb + 16u + l) >> s) & 1u) << 4;
    v[l] = dm.x * sc * float(q) - dm.y * mn;
  }
#elif TYPE == T_IQ4_XS
  uint ib = u & 7u;
  uint sb = rs + 136u * (u >> 3);
  uint h = word_at(sb);
  uint ls = ((byte_at(sb + 4u + ib / 2u) >> (4u * (ib & 1u))) & 15u) | (((h >> (16u + 2u * ib)) & 3u) << 4);
  float dl = half_lo(h) * float(int(ls) - 32);
  [[unroll]] for (uint l = 0; l < 32u; l++) {
    uint q = byte_at(sb + 8u + 16u * ib + (l & 15u));
    v[l] = dl * IQ4NL[l < 16u ? q & 15u : q >> 4];
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
