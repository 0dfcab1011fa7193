#version 450
// The device's multiply-add ceiling, for bench/prefill.ts: each invocation runs `iters` rounds
// of 8 x 12 independent fused multiply-adds on registers (12 chains hide the FMA latency) and
// stores one sum so nothing is optimised away. FLOPs = 2 * 96 * iters * invocations.
// Spec constant 0 = workgroup size.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
layout(local_size_x_id = 0) in;

layout(push_constant) uniform P {
  uint iters;  // rounds per invocation (well below lavapipe's 65535-iteration cap)
} p;

layout(std430, binding = 0) writeonly buffer O { float o[]; };

void main() {
  uint gid = gl_GlobalInvocationID.x + gl_GlobalInvocationID.y * gl_NumWorkGroups.x * gl_WorkGroupSize.x;
  float x = float(gl_LocalInvocationID.x) * 1e-3;
  float m = 0.999 + x * 1e-6;
  float a[12];
  [[unroll]] for (uint i = 0u; i < 12u; i++) a[i] = x + float(i);
  for (uint it = 0u; it < p.iters; it++) {
    [[unroll]] for (uint r = 0u; r < 8u; r++) {
      [[unroll]] for (uint i = 0u; i < 12u; i++) a[i] = fma(a[i], m, 1e-4);
    }
  }
  float s = 0.0;
  [[unroll]] for (uint i = 0u; i < 12u; i++) s += a[i];
  o[gid] = s;
}
