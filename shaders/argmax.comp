#version 450
#extension GL_GOOGLE_include_directive : require
// The local size comes before the include: glslang folds gl_WorkGroupSize in common.glsl
// to the default (1, 1, 1) when the include precedes it, which breaks wg_sum's shared path.
layout(local_size_x_id = 0) in;
#include "common.glsl"
// Argmax over rows of n floats, in two dispatches (ARGMAX_STAGE):
//   1 (partial): grid (chunks, rows); each workgroup reduces one chunk of chunkElems elements to
//     (key, index) in partial[row * chunks + chunk];
//   2 (merge): grid (rows); one workgroup merges a row's partials and writes out[row] = index.
// Values compare as order-preserving uint keys; NaN counts as -inf and -0 as +0, and ties go to
// the lowest index (the same rules as topkSet and the TS reference). Key 0 is below every real
// key (-inf maps to 0x007fffff), so (0, ~0u) is the identity of the merge.
layout(std430, binding = 0) readonly buffer X { float x[]; };
layout(std430, binding = 1) buffer Part { uvec2 partial[]; };
layout(std430, binding = 2) writeonly buffer Out { uint outIdx[]; };
layout(push_constant) uniform P {
  uint n;
  uint rows;
  uint rowStride;   // elements between rows of x
  uint chunkElems;  // elements per partial workgroup
  uint chunks;      // partials per row
  uint outOffset;   // element index of row 0's result in out
} p;

// Integer tests, not isnan / == 0.0, so fast-math float folding cannot change the rules.
uint orderedKey(float v) {
  uint b = floatBitsToUint(v);
  if ((b & 0x7fffffffu) > 0x7f800000u) b = 0xff800000u;  // NaN -> -inf
  if (b == 0x80000000u) b = 0u;                          // -0 -> +0
  return (b & 0x80000000u) != 0u ? ~b : (b | 0x80000000u);
}

// (ka, ia) beats (kb, ib): larger key, then lower index.
bool better(uint ka, uint ia, uint kb, uint ib) {
  return ka > kb || (ka == kb && ia < ib);
}

shared uint redKey[WG_MAX];  // the subgroup path uses one slot per subgroup
shared uint redIdx[WG_MAX];

// Workgroup-wide best (key, index); every invocation gets the result.
uvec2 wgBest(uint k, uint idx) {
#ifdef HC_SUBGROUP
  uint mk = subgroupMax(k);
  uint mi = subgroupMin(k == mk ? idx : 0xffffffffu);
  if (gl_NumSubgroups == 1u) return uvec2(mk, mi);
  if (subgroupElect()) {
    redKey[gl_SubgroupID] = mk;
    redIdx[gl_SubgroupID] = mi;
  }
  barrier();
  uint bk = 0u, bi = 0xffffffffu;
  for (uint s = 0u; s < gl_NumSubgroups; s++) {
    if (better(redKey[s], redIdx[s], bk, bi)) {
      bk = redKey[s];
      bi = redIdx[s];
    }
  }
  barrier();
  return uvec2(bk, bi);
#else
  uint t = gl_LocalInvocationID.x;
  redKey[t] = k;
  redIdx[t] = idx;
  barrier();
  for (uint s = gl_WorkGroupSize.x / 2u; s > 0u; s >>= 1) {
    if (t < s && better(redKey[t + s], redIdx[t + s], redKey[t], redIdx[t])) {
      redKey[t] = redKey[t + s];
      redIdx[t] = redIdx[t + s];
    }
    barrier();
  }
  uvec2 r = uvec2(redKey[0], redIdx[0]);
  barrier();
  return r;
#endif
}

void main() {
  uint tid = gl_LocalInvocationID.x;
  uint wg = gl_WorkGroupSize.x;
  uint bk = 0u, bi = 0xffffffffu;
#if ARGMAX_STAGE == 1
  uint row = gl_WorkGroupID.z * gl_NumWorkGroups.y + gl_WorkGroupID.y;
  if (row >= p.rows) return;
  uint chunk = gl_WorkGroupID.x;
  uint start = chunk * p.chunkElems;
  uint end = min(p.n, start + p.chunkElems);
  uint base = row * p.rowStride;
  // Ascending indices per invocation, so a strict > keeps the first of equal keys.
  for (uint i = start + tid; i < end; i += wg) {
    uint k = orderedKey(x[base + i]);
    if (k > bk) {
      bk = k;
      bi = i;
    }
  }
  uvec2 r = wgBest(bk, bi);
  if (tid == 0u) partial[row * p.chunks + chunk] = r;
#else
  uint row = gl_WorkGroupID.y * gl_NumWorkGroups.x + gl_WorkGroupID.x;
  if (row >= p.rows) return;
  for (uint c = tid; c < p.chunks; c += wg) {
    uvec2 q = partial[row * p.chunks + c];
    if (better(q.x, q.y, bk, bi)) {
      bk = q.x;
      bi = q.y;
    }
  }
  uvec2 r = wgBest(bk, bi);
  if (tid == 0u) outIdx[p.outOffset + row] = r.y;
#endif
}
