#version 450
// Causal prefill attention, flash style: one workgroup = (tile of TB query tokens x the G query
// heads of one KV head). Query token t sits at position p0 + t and sees the head's rows
// 0 .. p0 + t (row index = position). K/V tiles of BC rows go through shared memory; each query
// row is owned by P = 4 invocations that split its dimensions for the V product and its keys for
// the scores.
//
// The key range may be cut into passes [kv0, kv1) (separate dispatches, barrier between): the
// running state (m, l in `ml`, unnormalised o in `out`) survives between passes; flag bit 0 =
// first pass (start fresh), bit 1 = last pass (normalise). One pass covers everything on GPUs;
// lavapipe needs several for long prompts (per-invocation loop cap).
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint G = 4;     // query heads per KV head
layout(constant_id = 2) const uint D = 128;   // head dim, multiple of 8
layout(constant_id = 3) const uint BC = 32;   // keys per tile
layout(constant_id = 4) const uint ROWS = 16; // query rows per workgroup; local size = 4 * ROWS
// Logit soft-capping (push constant softcap holds log2(e) * c): a specialisation, not a push
// constant test, because llvmpipe kept the scores in memory around the untaken branch (the
// CPU decode attention ran 25% slower with the test in it).
layout(constant_id = 5) const bool SOFTCAP = false;

const uint P = 4;
const uint D4 = D / 4;
const uint D8 = D / 8;
const uint CPT = (D8 + P - 1) / P; // uvec4 columns of V per invocation

layout(std430, binding = 0) readonly buffer Qb { vec4 q4[]; };
layout(std430, binding = 1) readonly buffer Kb { uvec4 k8[]; };
layout(std430, binding = 2) readonly buffer Vb { uvec4 v8[]; };
layout(std430, binding = 3) readonly buffer Tb { uint tab[]; };
layout(std430, binding = 4) buffer Ob { vec4 o4[]; };
layout(std430, binding = 5) buffer Mb { vec2 ml[]; }; // per (token, query head): m, l

layout(push_constant) uniform Push {
  uint headBase;
  uint tokens;     // B
  uint p0;         // position of query token 0
  uint qOff4;      // vec4 offset of token 0, query head 0
  uint qStride4;   // vec4 stride between tokens
  uint oOff4;
  uint oStride4;
  uint kv0;        // key rows of this pass: [kv0, kv1)
  uint kv1;
  uint flags;      // 1 = first pass, 2 = last pass
  uint nHeads;     // query heads in the model (ml row stride)
  float scale;     // log2(e) / sqrt(D)
  uint window;     // sliding window W (0: none): key k is visible to position pos if pos - k < W,
                   // and the head is a ring of capRows rows (row = position % capRows)
  float softcap;   // log2(e) * c: scores become c * tanh(score / c) (0: none)
} p;
uint ringRow(uint k, uint cap) {
  return p.window != 0u ? k % cap : k;
}

// The first key a query at `pos` sees.
uint windowStart(uint pos) {
  return p.window != 0u && pos + 1u > p.window ? pos + 1u - p.window : 0u;
}

float softcapped(float s) {
  return SOFTCAP ? p.softcap * tanh(clamp(s / p.softcap, -15.0, 15.0)) : s;
}


shared vec4 qs[ROWS * D4];
shared uvec4 ks[BC * D8];
shared uvec4 vs[BC * D8];
shared float sc[ROWS * BC];

const float NEG_INF = -1.0 / 0.0;

vec4 lo4(uvec4 w) { return vec4(unpackHalf2x16(w.x), unpackHalf2x16(w.y)); }
vec4 hi4(uvec4 w) { return vec4(unpackHalf2x16(w.z), unpackHalf2x16(w.w)); }

void main() {
  const uint WG = gl_WorkGroupSize.x;
  const uint tid = gl_LocalInvocationID.x;
  const uint h = p.headBase + gl_WorkGroupID.y;
  const uint TB = ROWS / G;
  const uint tok0 = gl_WorkGroupID.x * TB;
  const uint tokEnd = min(p.tokens, tok0 + TB);
  const uint base = tab[2 * h];
  const uint cap = tab[2 * h + 1];

  const uint row = tid / P;
  const uint part = tid % P;
  const uint t = tok0 + row / G;
  const uint g = row % G;
  const bool valid = row < TB * G && t < tokEnd;
  const uint qh = h * G + g;
  const uint pos = p.p0 + t;

  for (uint i = tid; i < ROWS * D4; i += WG) {
    const uint r = i / D4;
    const uint tr = tok0 + r / G;
    const bool vr = r < TB * G && tr < tokEnd;
    qs[i] = vr ? q4[p.qOff4 + tr * p.qStride4 + (h * G + r % G) * D4 + i % D4] * p.scale : vec4(0.0);
  }

  float m = NEG_INF;
  float l = 0.0;
  vec4 oa[CPT];
  vec4 ob[CPT];
  const uint ml_i = t * p.nHeads + qh;
  [[unroll]] for (uint c = 0; c < CPT; c++) {
    const uint col = part + c * P;
    oa[c] = vec4(0.0);
    ob[c] = vec4(0.0);
    if ((p.flags & 1u) == 0u && valid && col < D8) {
      oa[c] = o4[p.oOff4 + t * p.oStride4 + qh * D4 + 2 * col];
      ob[c] = o4[p.oOff4 + t * p.oStride4 + qh * D4 + 2 * col + 1];
    }
  }
  if ((p.flags & 1u) == 0u && valid) {
    m = ml[ml_i].x;
    l = ml[ml_i].y;
  }

  // Keys past the last query token of this tile (or past the capacity) are never visible.
  // A ring (sliding window) holds more positions than its capacity; keys before the tile's
  // first window are never visible.
  const uint kEnd = min(p.window != 0u ? p.kv1 : min(p.kv1, cap), tokEnd > tok0 ? p.p0 + tokEnd : 0u);
  const uint kStart = max(p.kv0, windowStart(p.p0 + tok0));
  const uint lo = windowStart(pos);
  for (uint kt = kStart; kt < kEnd; kt += BC) {
    const uint nk = min(BC, kEnd - kt);
    barrier(); // previous tile's readers are done (and qs is written on the first trip)
    for (uint i = tid; i < BC * D8; i += WG) {
      const uint j = i / D8;
      if (j < nk) {
        ks[i] = k8[(base + ringRow(kt + j, cap)) * D8 + i % D8];
        vs[i] = v8[(base + ringRow(kt + j, cap)) * D8 + i % D8];
      }
    }
    barrier();
    for (uint j = part; j < BC; j += P) {
      float s = NEG_INF;
      if (valid && j < nk && kt + j <= pos && kt + j >= lo) {
        s = 0.0;
        [[unroll]] for (uint c = 0; c < D8; c++) {
          const uvec4 w = ks[j * D8 + c];
          s += dot(qs[row * D4 + 2 * c], lo4(w)) + dot(qs[row * D4 + 2 * c + 1], hi4(w));
        }
        s = softcapped(s);
      }
      sc[row * BC + j] = s;
    }
    barrier();
    float mt = NEG_INF;
    for (uint j = 0; j < nk; j++) mt = max(mt, sc[row * BC + j]);
    if (mt != NEG_INF) { // else nothing in this tile is visible to this row
      const float mn = max(m, mt);
      const float alpha = m == NEG_INF ? 0.0 : exp2(m - mn);
      m = mn;
      l *= alpha;
      [[unroll]] for (uint c = 0; c < CPT; c++) {
        oa[c] *= alpha;
        ob[c] *= alpha;
      }
      for (uint j = 0; j < nk; j++) {
        const float pj = exp2(sc[row * BC + j] - mn);
        l += pj;
        [[unroll]] for (uint c = 0; c < CPT; c++) {
          const uint col = part + c * P;
          if (col < D8) {
            const uvec4 w = vs[j * D8 + col];
            oa[c] += pj * lo4(w);
            ob[c] += pj * hi4(w);
          }
        }
      }
    }
  }

  if (!valid) return;
  const bool last = (p.flags & 2u) != 0u;
  const float inv = last ? (l > 0.0 ? 1.0 / l : 0.0) : 1.0;
  [[unroll]] for (uint c = 0; c < CPT; c++) {
    const uint col = part + c * P;
    if (col < D8) {
      o4[p.oOff4 + t * p.oStride4 + qh * D4 + 2 * col] = oa[c] * inv;
      o4[p.oOff4 + t * p.oStride4 + qh * D4 + 2 * col + 1] = ob[c] * inv;
    }
  }
  if (!last && part == 0) ml[ml_i] = vec2(m, l);
}
