#version 450
#extension GL_GOOGLE_include_directive : require
// The local size comes before the include: glslang folds gl_WorkGroupSize in common.glsl
// to the default (1, 1, 1) when the include precedes it, which breaks wg_sum's shared path.
layout(local_size_x_id = 0) in;
#include "common.glsl"
#include "rope.glsl"
// RoPE over nTokens tokens x nHeads heads x headDim, one invocation per rotated pair.
// Pairing: "adjacent" rotates (x[2i], x[2i+1]) (GGUF Llama), "halves" rotates (x[i], x[i+d/2])
// (NeoX / Qwen2). theta_i = pos * invFreq_i.
//
// Precision: see rope.glsl.
//
// `out` may be the same memory as `x` (in place): each pair is read, then written, by one
// invocation.
layout(std430, binding = 0) readonly buffer X { float x[]; };
layout(std430, binding = 1) writeonly buffer O { float o[]; };
layout(std430, binding = 2) readonly buffer T { uvec2 turns[]; };  // per pair: (low, high) word
layout(std430, binding = 3) readonly buffer Q { uint positions[]; };
layout(push_constant) uniform P {
  uint nTokens;
  uint nHeads;
  uint halfDim;        // headDim / 2 = pairs per head
  uint xTokenStride;   // elements between tokens of x (heads are packed, headDim apart)
  uint outTokenStride;
  uint posSlot;        // index into positions[] of token 0's position
  uint posOffset;      // added to every position
  uint flags;          // bit 0: halves pairing, bit 1: one position per token (else pos0 + t)
} p;

void main() {
  uint gid = (gl_WorkGroupID.y * gl_NumWorkGroups.x + gl_WorkGroupID.x) * gl_WorkGroupSize.x + gl_LocalInvocationID.x;
  uint perToken = p.nHeads * p.halfDim;
  if (gid >= p.nTokens * perToken) return;
  uint t = gid / perToken;
  uint r = gid - t * perToken;
  uint h = r / p.halfDim;
  uint i = r - h * p.halfDim;

  uint pos = ((p.flags & 2u) != 0u ? positions[p.posSlot + t] : positions[p.posSlot] + t) + p.posOffset;
  vec2 cs = rope_cos_sin(pos, turns[i]);
  float c = cs.x;
  float s = cs.y;

  uint headDim = 2u * p.halfDim;
  uint ia, ib;
  if ((p.flags & 1u) != 0u) {
    ia = h * headDim + i;
    ib = ia + p.halfDim;
  } else {
    ia = h * headDim + 2u * i;
    ib = ia + 1u;
  }
  uint xb = t * p.xTokenStride;
  uint ob = t * p.outTokenStride;
  float x0 = x[xb + ia];
  float x1 = x[xb + ib];
  o[ob + ia] = x0 * c - x1 * s;
  o[ob + ib] = x0 * s + x1 * c;
}
