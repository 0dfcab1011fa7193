#version 450
#extension GL_GOOGLE_include_directive : require
// The local size comes before the include: glslang folds gl_WorkGroupSize in common.glsl
// to the default (1, 1, 1) when the include precedes it, which breaks wg_sum's shared path.
layout(local_size_x_id = 0) in;
#include "common.glsl"
// Default build ("add"): residual add out[i] = a[i] + b[i], one element per invocation, push {n}.
// HC_AXPBY build ("axpby"): out = alpha * a + beta * b (b skipped when HAS_B is clear, so a scale
// or copy needs no second operand and NaNs in an unrelated binding cannot leak in), four
// elements per invocation when the host sets VEC4 (n and every binding offset multiples of 4).
// `out` may be the same memory as `a` or `b`: each element is read before it is written, by the
// same invocation.
layout(std430, binding = 0) readonly buffer A { float a[]; };
layout(std430, binding = 1) readonly buffer B { float b[]; };
layout(std430, binding = 2) writeonly buffer O { float o[]; };

#ifndef HC_AXPBY
layout(push_constant) uniform P { uint n; } p;

void main() {
  // 2-D grid so element counts beyond 65535 workgroups still fit.
  uint i = (gl_WorkGroupID.y * gl_NumWorkGroups.x + gl_WorkGroupID.x) * gl_WorkGroupSize.x + gl_LocalInvocationID.x;
  if (i < p.n) o[i] = a[i] + b[i];
}
#else
layout(std430, binding = 0) readonly buffer A4 { vec4 a4[]; };
layout(std430, binding = 1) readonly buffer B4 { vec4 b4[]; };
layout(std430, binding = 2) writeonly buffer O4 { vec4 o4[]; };
layout(push_constant) uniform P {
  uint n;
  float alpha;
  float beta;
  uint flags;  // bit 0: VEC4, bit 1: HAS_B
} p;

void main() {
  uint i = (gl_WorkGroupID.y * gl_NumWorkGroups.x + gl_WorkGroupID.x) * gl_WorkGroupSize.x + gl_LocalInvocationID.x;
  bool hasB = (p.flags & 2u) != 0u;
  if ((p.flags & 1u) != 0u) {
    if (i >= (p.n >> 2)) return;
    vec4 r = p.alpha * a4[i];
    if (hasB) r += p.beta * b4[i];
    o4[i] = r;
  } else {
    if (i >= p.n) return;
    float r = p.alpha * a[i];
    if (hasB) r += p.beta * b[i];
    o[i] = r;
  }
}
#endif
