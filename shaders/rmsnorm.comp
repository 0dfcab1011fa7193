#version 450
#extension GL_GOOGLE_include_directive : require
// The local size comes before the include: glslang folds gl_WorkGroupSize in common.glsl
// to the default (1, 1, 1) when the include precedes it, which breaks wg_sum's shared path.
layout(local_size_x_id = 0) in;
#include "common.glsl"
// RMSNorm, one workgroup per row: out = x / sqrt(mean(x^2) + eps) * w.
// The vec4 views alias the scalar ones; the host sets VEC4 only when n, both row strides and
// every binding offset are multiples of 4 elements, so the wide loads stay 16-byte aligned.
// `out` may be the same memory as `x` (in place): each element is read before it is written,
// by the same invocation.
layout(std430, binding = 0) readonly buffer X { float x[]; };
layout(std430, binding = 0) readonly buffer X4 { vec4 x4[]; };
layout(std430, binding = 1) readonly buffer W { float w[]; };
layout(std430, binding = 1) readonly buffer W4 { vec4 w4[]; };
layout(std430, binding = 2) writeonly buffer O { float o[]; };
layout(std430, binding = 2) writeonly buffer O4 { vec4 o4[]; };
layout(push_constant) uniform P {
  uint n;          // elements per row
  uint rows;
  uint xStride;    // elements between rows of x
  uint outStride;  // elements between rows of out
  float eps;
  uint vec4ok;
} p;

void main() {
  // Rows beyond 65535 use a 2-D grid; the test is uniform over the workgroup.
  uint row = gl_WorkGroupID.y * gl_NumWorkGroups.x + gl_WorkGroupID.x;
  if (row >= p.rows) return;
  uint tid = gl_LocalInvocationID.x;
  uint wg = gl_WorkGroupSize.x;
  float ss = 0.0;
  if (p.vec4ok != 0u) {
    uint xb = (row * p.xStride) >> 2;
    uint n4 = p.n >> 2;
    for (uint i = tid; i < n4; i += wg) {
      vec4 v = x4[xb + i];
      ss += dot(v, v);
    }
  } else {
    uint xb = row * p.xStride;
    for (uint i = tid; i < p.n; i += wg) {
      float v = x[xb + i];
      ss += v * v;
    }
  }
  float scale = inversesqrt(wg_sum(ss) / float(p.n) + p.eps);
  if (p.vec4ok != 0u) {
    uint xb = (row * p.xStride) >> 2;
    uint ob = (row * p.outStride) >> 2;
    uint n4 = p.n >> 2;
    for (uint i = tid; i < n4; i += wg) o4[ob + i] = w4[i] * (x4[xb + i] * scale);
  } else {
    uint xb = row * p.xStride;
    uint ob = row * p.outStride;
    for (uint i = tid; i < p.n; i += wg) o[ob + i] = w[i] * (x[xb + i] * scale);
  }
}
