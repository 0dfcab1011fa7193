#version 450
#extension GL_GOOGLE_include_directive : require
// The local size comes before the include: glslang folds gl_WorkGroupSize in common.glsl
// to the default (1, 1, 1) when the include precedes it, which breaks wg_sum's shared path.
layout(local_size_x_id = 0) in;
#include "common.glsl"
// SwiGLU: out = silu(gate) * up = gate / (1 + exp(-gate)) * up, over `rows` rows of n; with
// act 1 GeGLU (Gemma): gelu(gate) * up (common.glsl's gelu_ggml); with act 2 the
// soft-capping of Gemma 2's final logits: out = cap * tanh(gate / cap) (up unread).
// Grid: x walks a row in blocks of the workgroup size (times 4 with VEC4), y and z the rows.
// VEC4 is set by the host only when n, every stride and every binding offset are multiples of 4.
layout(std430, binding = 0) readonly buffer G { float g[]; };
layout(std430, binding = 0) readonly buffer G4 { vec4 g4[]; };
layout(std430, binding = 1) readonly buffer U { float u[]; };
layout(std430, binding = 1) readonly buffer U4 { vec4 u4[]; };
layout(std430, binding = 2) writeonly buffer O { float o[]; };
layout(std430, binding = 2) writeonly buffer O4 { vec4 o4[]; };
layout(push_constant) uniform P {
  uint n;
  uint rows;
  uint gateStride;  // elements between rows, for each operand
  uint upStride;
  uint outStride;
  uint vec4ok;
  uint act; // 0: SiLU, 1: GELU (tanh), 2: soft-cap
  float cap;
} p;

vec4 act4(vec4 a, vec4 b) {
  if (p.act == 1u) return gelu_ggml(a) * b;
  if (p.act == 2u) return p.cap * tanh(clamp(a / p.cap, -15.0, 15.0));
  return a / (1.0 + exp(-a)) * b;
}

void main() {
  uint row = gl_WorkGroupID.z * gl_NumWorkGroups.y + gl_WorkGroupID.y;
  if (row >= p.rows) return;
  uint i = gl_WorkGroupID.x * gl_WorkGroupSize.x + gl_LocalInvocationID.x;
  if (p.vec4ok != 0u) {
    if (i >= (p.n >> 2)) return;
    vec4 a = g4[((row * p.gateStride) >> 2) + i];
    vec4 b = u4[((row * p.upStride) >> 2) + i];
    o4[((row * p.outStride) >> 2) + i] = act4(a, b);
  } else {
    if (i >= p.n) return;
    float a = g[row * p.gateStride + i];
    o[row * p.outStride + i] = act4(vec4(a), vec4(u[row * p.upStride + i])).x;
  }
}
