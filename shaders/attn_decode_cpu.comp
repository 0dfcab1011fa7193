#version 450
// Decode attention, split-K pass for SIMD CPU drivers (lavapipe). Same inputs as
// attn_decode.comp, but each LANE leaves its own online-softmax record, so the merge pass sees
// S * L records per (KV head, query head) instead of S.
//
// Why a different kernel: llvmpipe runs the subgroups of a workgroup one after another (a wide
// workgroup turns every sweep over memory into a strided one), executes every `if` with masks
// (skipping nothing), and implements subgroup reductions as loops over the lanes. So here a
// workgroup is ONE subgroup, a lane owns whole rows (row t0 + lane + L*i), and nothing is
// reduced across lanes: pass 1 computes the lane's scores for all query heads (kept in `sc`,
// the lane's own scratch) and its maximum; pass 2 turns them into probabilities against that
// maximum - no rescaling ever - and accumulates V.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
layout(local_size_x_id = 0) in;
layout(constant_id = 0) const uint L = 8;   // lanes = workgroup size (the subgroup size)
layout(constant_id = 1) const uint G = 4;   // query heads per KV head
layout(constant_id = 2) const uint D = 128; // head dim, multiple of 8

const uint D4 = D / 4;
const uint D8 = D / 8;

layout(std430, binding = 0) readonly buffer Qb { vec4 q4[]; };
layout(std430, binding = 1) readonly buffer Kb { uvec4 k8[]; };
layout(std430, binding = 2) readonly buffer Vb { uvec4 v8[]; };
layout(std430, binding = 3) readonly buffer Tb { uint tab[]; };
layout(std430, binding = 4) readonly buffer Lb { uint lens[]; };
layout(std430, binding = 5) buffer Pb { float part[]; }; // records, then (m, l), then scores

layout(push_constant) uniform Push {
  uint headBase;
  uint minTok;
  uint qOff4;
  uint mlOff;    // float offset of the (m, l) pairs
  float scale;
  uint scOff;    // float offset of the score scratch
  uint maxPer;   // rows of one split's score region
} p;

const float NEG_INF = -1.0 / 0.0;

void main() {
  const uint lane = gl_LocalInvocationID.x;
  const uint S = gl_NumWorkGroups.x;
  const uint s = gl_WorkGroupID.x;
  const uint h = p.headBase + gl_WorkGroupID.y;

  const uint base = tab[2 * h];
  const uint len = min(lens[h], tab[2 * h + 1]);
  const uint ns = clamp((len + p.minTok - 1) / p.minTok, 1u, S);
  if (s >= ns) return;
  const uint per = (len + ns - 1) / ns;
  const uint t0 = min(len, s * per);
  const uint t1 = min(len, t0 + per);
  const uint scBase = p.scOff + (h * S + s) * p.maxPer * G;

  vec4 qa[G * D8];
  vec4 qb[G * D8];
  [[unroll]] for (uint g = 0; g < G; g++) {
    [[unroll]] for (uint c = 0; c < D8; c++) {
      const uint qi = p.qOff4 + (h * G + g) * D4 + 2 * c;
      qa[g * D8 + c] = q4[qi] * p.scale;
      qb[g * D8 + c] = q4[qi + 1] * p.scale;
    }
  }

  // Pass 1: scores of the lane's rows, and their maximum per query head.
  float m[G];
  [[unroll]] for (uint g = 0; g < G; g++) m[g] = NEG_INF;
  for (uint t = t0 + lane; t < t1; t += L) {
    const uint row = (base + t) * D8;
    float acc[G];
    [[unroll]] for (uint g = 0; g < G; g++) acc[g] = 0.0;
    [[unroll]] for (uint c = 0; c < D8; c++) {
      const uvec4 w = k8[row + c];
      const vec4 a = vec4(unpackHalf2x16(w.x), unpackHalf2x16(w.y));
      const vec4 b = vec4(unpackHalf2x16(w.z), unpackHalf2x16(w.w));
      [[unroll]] for (uint g = 0; g < G; g++) acc[g] += dot(qa[g * D8 + c], a) + dot(qb[g * D8 + c], b);
    }
    [[unroll]] for (uint g = 0; g < G; g++) {
      part[scBase + (t - t0) * G + g] = acc[g];
      m[g] = max(m[g], acc[g]);
    }
  }

  // Pass 2: probabilities against the lane's maximum, V accumulation.
  float l[G];
  vec4 oa[G * D8];
  vec4 ob[G * D8];
  [[unroll]] for (uint g = 0; g < G; g++) {
    l[g] = 0.0;
    [[unroll]] for (uint c = 0; c < D8; c++) {
      oa[g * D8 + c] = vec4(0.0);
      ob[g * D8 + c] = vec4(0.0);
    }
  }
  for (uint t = t0 + lane; t < t1; t += L) {
    const uint row = (base + t) * D8;
    float pr[G];
    [[unroll]] for (uint g = 0; g < G; g++) {
      pr[g] = exp2(part[scBase + (t - t0) * G + g] - m[g]);
      l[g] += pr[g];
    }
    [[unroll]] for (uint c = 0; c < D8; c++) {
      const uvec4 w = v8[row + c];
      const vec4 a = vec4(unpackHalf2x16(w.x), unpackHalf2x16(w.y));
      const vec4 b = vec4(unpackHalf2x16(w.z), unpackHalf2x16(w.w));
      [[unroll]] for (uint g = 0; g < G; g++) {
        oa[g * D8 + c] += pr[g] * a;
        ob[g * D8 + c] += pr[g] * b;
      }
    }
  }

  // One record per (split, lane, query head); lanes without rows leave m = -inf, l = 0.
  [[unroll]] for (uint g = 0; g < G; g++) {
    const uint rec = ((h * S + s) * L + lane) * G + g;
    [[unroll]] for (uint c = 0; c < D8; c++) {
      const uint o = rec * D + 8 * c;
      part[o] = oa[g * D8 + c].x;
      part[o + 1] = oa[g * D8 + c].y;
      part[o + 2] = oa[g * D8 + c].z;
      part[o + 3] = oa[g * D8 + c].w;
      part[o + 4] = ob[g * D8 + c].x;
      part[o + 5] = ob[g * D8 + c].y;
      part[o + 6] = ob[g * D8 + c].z;
      part[o + 7] = ob[g * D8 + c].w;
    }
    part[p.mlOff + rec * 2] = m[g];
    part[p.mlOff + rec * 2 + 1] = l[g];
  }
}
