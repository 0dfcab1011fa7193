#version 450
// Attention scores, pass 1 of 2: softmax statistics. For the W x G query rows of one KV head
// (row r = w * G + g: window query w, query head g of the group) and the head's rows
// [s * perSplit, (s+1) * perSplit) of [0, n), leaves (m, l): m = max of the scaled logits (log2
// domain), l = sum of 2^(logit - m). scores_pool.comp merges the splits and normalises.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint G = 4;
layout(constant_id = 2) const uint D = 128;
layout(constant_id = 3) const uint QC = 8; // query rows held at once
layout(constant_id = 4) const uint P = 4;  // positions per invocation per step

const uint D4 = D / 4;
const uint D8 = D / 8;

layout(std430, binding = 0) readonly buffer Qb { vec4 q4[]; };
layout(std430, binding = 1) readonly buffer Kb { uvec4 k8[]; };
layout(std430, binding = 2) readonly buffer Tb { uint tab[]; };
layout(std430, binding = 3) writeonly buffer Sb { vec2 stats[]; }; // [head][split][row]

layout(push_constant) uniform Push {
  uint headBase;
  uint n;         // rows [0, n) of each head are scored
  uint window;    // W
  uint qOff4;     // vec4 offset of window query 0, query head 0
  uint qStride4;  // vec4 stride between window queries
  uint perSplit;  // rows per split (grid x = ceil(n / perSplit))
  float scale;    // log2(e) / sqrt(D)
} p;

shared vec4 qs[QC * D4];

const float NEG_INF = -1.0 / 0.0;

void main() {
  const uint WG = gl_WorkGroupSize.x;
  const uint tid = gl_LocalInvocationID.x;
  const uint S = gl_NumWorkGroups.x;
  const uint s = gl_WorkGroupID.x;
  const uint hi = gl_WorkGroupID.y;
  const uint h = p.headBase + hi;
  const uint base = tab[2 * h];
  const uint NR = p.window * G;
  const uint j0 = min(p.n, s * p.perSplit);
  const uint j1 = min(p.n, j0 + p.perSplit);

  for (uint r0 = 0; r0 < NR; r0 += QC) {
    const uint nr = min(QC, NR - r0);
    barrier();
    for (uint i = tid; i < QC * D4; i += WG) {
      const uint r = r0 + i / D4;
      qs[i] = r < NR ? q4[p.qOff4 + (r / G) * p.qStride4 + (h * G + r % G) * D4 + i % D4] * p.scale
                     : vec4(0.0);
    }
    barrier();
    float m[QC];
    float l[QC];
    [[unroll]] for (uint r = 0; r < QC; r++) {
      m[r] = NEG_INF;
      l[r] = 0.0;
    }
    // P positions per invocation (jb + i * WG) share every shared-memory query read.
    for (uint jb = j0 + tid; jb < j1; jb += WG * P) {
      float sv[QC * P];
      [[unroll]] for (uint i = 0; i < QC * P; i++) sv[i] = 0.0;
      [[dont_unroll]] for (uint c = 0; c < D8; c++) {
        vec4 ka[P];
        vec4 kb[P];
        [[unroll]] for (uint i = 0; i < P; i++) {
          const uvec4 w = k8[(base + min(jb + i * WG, j1 - 1)) * D8 + c];
          ka[i] = vec4(unpackHalf2x16(w.x), unpackHalf2x16(w.y));
          kb[i] = vec4(unpackHalf2x16(w.z), unpackHalf2x16(w.w));
        }
        [[unroll]] for (uint r = 0; r < QC; r++) {
          const vec4 qa = qs[r * D4 + 2 * c];
          const vec4 qb = qs[r * D4 + 2 * c + 1];
          [[unroll]] for (uint i = 0; i < P; i++) sv[r * P + i] += dot(qa, ka[i]) + dot(qb, kb[i]);
        }
      }
      [[unroll]] for (uint i = 0; i < P; i++) {
        if (jb + i * WG < j1) {
          [[unroll]] for (uint r = 0; r < QC; r++) {
            const float x = sv[r * P + i];
            if (x > m[r]) {
              l[r] = l[r] * exp2(m[r] - x) + 1.0;
              m[r] = x;
            } else {
              l[r] += exp2(x - m[r]);
            }
          }
        }
      }
    }
    [[unroll]] for (uint r = 0; r < QC; r++) {
      const float mx = wg_max(m[r]);
      const float ls = wg_sum(m[r] == NEG_INF ? 0.0 : l[r] * exp2(m[r] - mx));
      if (tid == 0 && r < nr) stats[(hi * S + s) * NR + r0 + r] = vec2(mx, ls);
    }
  }
}
