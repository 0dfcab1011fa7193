#version 450
// Causal prefill attention for SIMD CPU drivers (lavapipe), head dims >= 2 * L: same inputs,
// outputs and pass protocol as attn_prefill.comp.
//
// Why this shape: llvmpipe turns every buffer load into a loop over the lanes, so what a kernel
// pays is words loaded per lane. Here a workgroup is one subgroup of L lanes that works on R
// query rows together; lane `lane` owns the dims [lane * D/L, (lane+1) * D/L) of every row (its
// slice of q and of the output, in registers). Each key row is loaded once per workgroup - every
// lane loads only its slice - and serves R rows; a q.k dot product is the lanes' partial sums
// added with a shuffle-xor butterfly (a register permute on llvmpipe), so every lane ends with
// the same score and runs the same online softmax. No shared memory, no barriers.
//
// Rows are flattened per KV head: row r = t * G + g (token t, query head g of the group); a
// workgroup owns rows x * R .. x * R + R - 1. Keys go in blocks of KB (one rescale per block);
// every inner loop is unrolled, so an invocation runs about (kv1 - kv0) / KB loop iterations
// (lavapipe stops at 65535). Probabilities below 2^-100 of the row maximum are flushed to 0
// (llvmpipe runs denormals ~30x slower).
#extension GL_GOOGLE_include_directive : require
#extension GL_KHR_shader_subgroup_shuffle : require
#include "common.glsl"
layout(local_size_x_id = 0) in;
layout(constant_id = 0) const uint L = 8;      // lanes = workgroup size = subgroup size
layout(constant_id = 1) const uint G = 4;      // query heads per KV head
layout(constant_id = 2) const uint D = 128;    // head dim, a multiple of 2 * L
layout(constant_id = 3) const uint R = 16;     // query rows per workgroup
layout(constant_id = 4) const uint KB = 2;     // keys per block
layout(constant_id = 5) const uint LOG2L = 3;  // log2(L)

const uint NP = D / (2 * L); // f16 pairs (words) per lane
const uint HD = D / 2;       // words per K/V row

layout(std430, binding = 0) readonly buffer Qb { vec2 q2[]; };
layout(std430, binding = 1) readonly buffer Kb4 { uvec4 k4[]; };
layout(std430, binding = 1) readonly buffer Kb2 { uvec2 k2[]; };
layout(std430, binding = 1) readonly buffer Kb1 { uint k1[]; };
layout(std430, binding = 2) readonly buffer Vb4 { uvec4 v4[]; };
layout(std430, binding = 2) readonly buffer Vb2 { uvec2 v2[]; };
layout(std430, binding = 2) readonly buffer Vb1 { uint v1[]; };
layout(std430, binding = 3) readonly buffer Tb { uint tab[]; };
layout(std430, binding = 4) buffer Ob { vec2 o2[]; };
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
} p;

const float NEG_INF = -1.0 / 0.0;
const float FLUSH = -100.0;

// 2^x, or 0 when x < FLUSH (also for x = -inf or NaN: fully masked so far).
float pexp(float x) {
  return x >= FLUSH ? exp2(max(x, FLUSH)) : 0.0;
}

// Sum over the lanes; every lane gets the same bits (each butterfly step adds a + b and b + a).
float laneSum(float x) {
  [[unroll]] for (uint b = 0; b < LOG2L; b++) x += subgroupShuffleXor(x, 1u << b);
  return x;
}

// The lane's NP words of K (or V) row `row`, with the widest loads the slice allows.
void loadK(uint row, uint lane, out uint w[NP]) {
  const uint at = row * HD + lane * NP;
  if (NP % 4u == 0u) {
    [[unroll]] for (uint i = 0; i < NP / 4u; i++) {
      const uvec4 x = k4[at / 4u + i];
      w[4 * i] = x.x;
      w[4 * i + 1] = x.y;
      w[4 * i + 2] = x.z;
      w[4 * i + 3] = x.w;
    }
  } else if (NP % 2u == 0u) {
    [[unroll]] for (uint i = 0; i < NP / 2u; i++) {
      const uvec2 x = k2[at / 2u + i];
      w[2 * i] = x.x;
      w[2 * i + 1] = x.y;
    }
  } else {
    [[unroll]] for (uint i = 0; i < NP; i++) w[i] = k1[at + i];
  }
}

void loadV(uint row, uint lane, out uint w[NP]) {
  const uint at = row * HD + lane * NP;
  if (NP % 4u == 0u) {
    [[unroll]] for (uint i = 0; i < NP / 4u; i++) {
      const uvec4 x = v4[at / 4u + i];
      w[4 * i] = x.x;
      w[4 * i + 1] = x.y;
      w[4 * i + 2] = x.z;
      w[4 * i + 3] = x.w;
    }
  } else if (NP % 2u == 0u) {
    [[unroll]] for (uint i = 0; i < NP / 2u; i++) {
      const uvec2 x = v2[at / 2u + i];
      w[2 * i] = x.x;
      w[2 * i + 1] = x.y;
    }
  } else {
    [[unroll]] for (uint i = 0; i < NP; i++) w[i] = v1[at + i];
  }
}

void main() {
  const uint lane = gl_LocalInvocationID.x;
  const uint h = p.headBase + gl_WorkGroupID.y;
  const uint base = tab[2 * h];
  const uint cap = tab[2 * h + 1];
  const uint nRows = p.tokens * G;
  const uint row0 = gl_WorkGroupID.x * R;
  const uint lastRow = min(nRows, row0 + R) - 1u;
  const bool first = (p.flags & 1u) != 0u;

  // The rows' state enters through a rolled loop that shifts the register arrays by one row per
  // trip (row `it` ends in slot it): unrolled, R rows of loads would make llvmpipe's compile
  // time explode (every load is a loop over the lanes with branches).
  vec2 q[R * NP];
  vec2 o[R * NP];
  float m[R];
  float l[R];
  uint lim[R]; // last visible key of each row
  [[dont_unroll]] for (uint it = 0; it < R; it++) {
    [[unroll]] for (uint i = 0; i + 1 < R; i++) {
      [[unroll]] for (uint c = 0; c < NP; c++) {
        q[i * NP + c] = q[(i + 1) * NP + c];
        o[i * NP + c] = o[(i + 1) * NP + c];
      }
      m[i] = m[i + 1];
      l[i] = l[i + 1];
      lim[i] = lim[i + 1];
    }
    const uint r = min(row0 + it, lastRow);
    const uint t = r / G;
    const uint qh = h * G + r % G;
    const uint top = R - 1u;
    lim[top] = p.p0 + t;
    const uint qa = (p.qOff4 + t * p.qStride4) * 2u + qh * HD + lane * NP;
    const uint oa = (p.oOff4 + t * p.oStride4) * 2u + qh * HD + lane * NP;
    [[unroll]] for (uint c = 0; c < NP; c++) {
      q[top * NP + c] = q2[qa + c] * p.scale;
      const vec2 prev = o2[oa + c]; // unconditional: a select, not a branch around a load
      o[top * NP + c] = first ? vec2(0.0) : prev;
    }
    const vec2 st = ml[t * p.nHeads + qh];
    m[top] = first ? NEG_INF : st.x;
    l[top] = first ? 0.0 : st.y;
  }

  // Keys past the workgroup's last query token (or past the capacity) are never visible.
  const uint kEnd = min(min(p.kv1, cap), p.p0 + lastRow / G + 1u);
  [[unroll]] for (uint i = 0; i < R; i++) lim[i] = min(lim[i], kEnd - 1u);
  for (uint kb = p.kv0; kb < kEnd; kb += KB) {
    float s[R * KB];
    [[unroll]] for (uint j = 0; j < KB; j++) {
      uint w[NP];
      loadK(base + min(kb + j, kEnd - 1u), lane, w);
      vec2 kv[NP];
      [[unroll]] for (uint c = 0; c < NP; c++) kv[c] = unpackHalf2x16(w[c]);
      [[unroll]] for (uint i = 0; i < R; i++) {
        float x = 0.0;
        [[unroll]] for (uint c = 0; c < NP; c++) x += dot(q[i * NP + c], kv[c]);
        x = laneSum(x);
        s[i * KB + j] = kb + j <= lim[i] ? x : NEG_INF;
      }
    }
    [[unroll]] for (uint i = 0; i < R; i++) {
      float mb = s[i * KB];
      [[unroll]] for (uint j = 1; j < KB; j++) mb = max(mb, s[i * KB + j]);
      const float mn = max(m[i], mb);
      const float alpha = pexp(m[i] - mn);
      m[i] = mn;
      l[i] *= alpha;
      [[unroll]] for (uint c = 0; c < NP; c++) o[i * NP + c] *= alpha;
      [[unroll]] for (uint j = 0; j < KB; j++) {
        s[i * KB + j] = pexp(s[i * KB + j] - mn);
        l[i] += s[i * KB + j];
      }
    }
    [[unroll]] for (uint j = 0; j < KB; j++) {
      uint w[NP];
      loadV(base + min(kb + j, kEnd - 1u), lane, w);
      [[unroll]] for (uint c = 0; c < NP; c++) {
        const vec2 v = unpackHalf2x16(w[c]);
        [[unroll]] for (uint i = 0; i < R; i++) o[i * NP + c] += s[i * KB + j] * v;
      }
    }
  }

  const bool last = (p.flags & 2u) != 0u;
  [[dont_unroll]] for (uint it = 0; it < R; it++) {
    const uint r = row0 + it;
    if (r < nRows) {
      const uint t = r / G;
      const uint qh = h * G + r % G;
      const float inv = last ? (l[0] > 0.0 ? 1.0 / l[0] : 0.0) : 1.0;
      const uint oa = (p.oOff4 + t * p.oStride4) * 2u + qh * HD + lane * NP;
      [[unroll]] for (uint c = 0; c < NP; c++) o2[oa + c] = o[c] * inv;
      if (!last && lane == 0u) ml[t * p.nHeads + qh] = vec2(m[0], l[0]);
    }
    [[unroll]] for (uint i = 0; i + 1 < R; i++) {
      [[unroll]] for (uint c = 0; c < NP; c++) o[i * NP + c] = o[(i + 1) * NP + c];
      m[i] = m[i + 1];
      l[i] = l[i + 1];
    }
  }
}
