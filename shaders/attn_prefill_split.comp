#version 450
// Causal prefill attention for SIMD CPU drivers (lavapipe), head dims >= 2 * L: same inputs,
// outputs and pass protocol as attn_prefill.comp.
//
// Why this shape: llvmpipe turns every buffer load into a loop over the lanes (with a branch per
// lane and per component), so what a kernel pays is words loaded per lane, and its compile time
// grows with the number of load instructions. Arithmetic on registers is cheap SIMD, and a
// shuffle by a constant lane pattern is a register permute.
//
// A workgroup is one subgroup of L lanes working on R = NG * L query rows together. Lane `lane`
// owns dims [lane * D/L, (lane+1) * D/L) of every row (its slice of q and of the output, in
// registers), so each K/V row is loaded once per workgroup, every lane loading only its slice,
// and serves R rows. The lanes' partial q.k sums of L rows are combined by a shuffle-xor
// reduce-scatter that leaves row k's score in lane k: the online softmax then runs once per L
// rows, vectorised across the lanes, and a constant-index shuffle hands each row's probability
// to every lane for the V product. No shared memory, no barriers.
//
// Rows are flattened per KV head: row r = t * G + g (token t, query head g of the group); a
// workgroup owns rows x * R .. x * R + R - 1, group n of them rows x * R + n * L + lane. Keys go
// in blocks of KB (one rescale per block); every inner loop is unrolled, so an invocation runs
// about (kv1 - kv0) / KB loop iterations (lavapipe stops at 65535). Probabilities below 2^-100 of
// the row maximum are flushed to 0 (llvmpipe runs denormals ~30x slower).
//
// Defines: TEXEL (K and V bound as texel buffers; else storage buffers).
#extension GL_GOOGLE_include_directive : require
#extension GL_KHR_shader_subgroup_shuffle : require
#include "common.glsl"
layout(local_size_x_id = 0) in;
layout(constant_id = 0) const uint L = 8;      // lanes = workgroup size = subgroup size (2^k)
layout(constant_id = 1) const uint G = 4;      // query heads per KV head
layout(constant_id = 2) const uint D = 128;    // head dim, a multiple of 2 * L
layout(constant_id = 3) const uint NG = 2;     // row groups of L rows per workgroup
layout(constant_id = 4) const uint KB = 2;     // keys per block
layout(constant_id = 5) const uint LOG2L = 3;  // log2(L)
// Logit soft-capping (push constant softcap holds log2(e) * c): a specialisation, not a push
// constant test, because llvmpipe kept the scores in memory around the untaken branch (the
// CPU decode attention ran 25% slower with the test in it).
layout(constant_id = 6) const bool SOFTCAP = false;

const uint R = NG * L;       // query rows per workgroup
const uint NP = D / (2 * L); // f16 pairs (words) per lane
const uint HD = D / 2;       // words per K/V row

layout(std430, binding = 0) readonly buffer Qb { vec2 q2[]; };
layout(std430, binding = 0) readonly buffer Qb4 { vec4 q4[]; };
#ifdef TEXEL
// K and V as uniform texel buffers of R32G32B32A32_UINT (4 words per texel): llvmpipe gathers
// a texel for all lanes at once where it loads storage buffers lane by lane.
layout(binding = 1) uniform highp usamplerBuffer kt;
layout(binding = 2) uniform highp usamplerBuffer vt;
#else
layout(std430, binding = 1) readonly buffer Kb4 { uvec4 k4[]; };
layout(std430, binding = 1) readonly buffer Kb2 { uvec2 k2[]; };
layout(std430, binding = 1) readonly buffer Kb1 { uint k1[]; };
layout(std430, binding = 2) readonly buffer Vb4 { uvec4 v4[]; };
layout(std430, binding = 2) readonly buffer Vb2 { uvec2 v2[]; };
layout(std430, binding = 2) readonly buffer Vb1 { uint v1[]; };
#endif
layout(std430, binding = 3) readonly buffer Tb { uint tab[]; };
layout(std430, binding = 4) buffer Ob { vec2 o2[]; };
layout(std430, binding = 4) buffer Ob4 { vec4 o4[]; };
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
// Keys kStart .. kEnd - 1 of a workgroup span at most one turn of the ring (the host sizes it),
// so the row of the first is taken once (ringK0, ringR0) and a key's row costs a compare and a
// subtract, not a division per key (llvmpipe divides lane by lane). Without a window the row
// is the key.
uint ringK0 = 0u;
uint ringR0 = 0u;
uint ringRow(uint k, uint cap) {
  const uint r = ringR0 + (k - ringK0);
  return r >= cap ? r - cap : r;
}

// The first key a query at `pos` sees.
uint windowStart(uint pos) {
  return p.window != 0u && pos + 1u > p.window ? pos + 1u - p.window : 0u;
}

float softcapped(float s) {
  return SOFTCAP ? p.softcap * tanh(clamp(s / p.softcap, -15.0, 15.0)) : s;
}


const float NEG_INF = -1.0 / 0.0;
const float FLUSH = -100.0;

// 2^x, or 0 when x < FLUSH (also for x = -inf or NaN: fully masked so far).
float pexp(float x) {
  return x >= FLUSH ? exp2(max(x, FLUSH)) : 0.0;
}

#ifdef TEXEL
// The lane's NP words of K (v = false) or V (v = true) row `row`: whole texels where the slice
// is (NP % 4 == 0, 4-word aligned), else one texel per word.
void loadRow(bool v, uint row, uint lane, out uint w[NP]) {
  const uint at = row * HD + lane * NP;
  if (NP % 4u == 0u) {
    [[unroll]] for (uint i = 0; i < NP / 4u; i++) {
      const uvec4 x = v ? texelFetch(vt, int(at / 4u + i)) : texelFetch(kt, int(at / 4u + i));
      w[4 * i] = x.x;
      w[4 * i + 1] = x.y;
      w[4 * i + 2] = x.z;
      w[4 * i + 3] = x.w;
    }
  } else {
    [[unroll]] for (uint i = 0; i < NP; i++) {
      const uint a = at + i;
      const uvec4 x = v ? texelFetch(vt, int(a / 4u)) : texelFetch(kt, int(a / 4u));
      w[i] = x[a % 4u];
    }
  }
}

void loadK(uint row, uint lane, out uint w[NP]) {
  loadRow(false, row, lane, w);
}

void loadV(uint row, uint lane, out uint w[NP]) {
  loadRow(true, row, lane, w);
}
#else
// The lane's NP words of K row `row`, with the widest loads the slice allows.
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

#endif

void main() {
  const uint lane = gl_LocalInvocationID.x;
  const uint h = p.headBase + gl_WorkGroupID.y;
  const uint base = tab[2 * h];
  const uint cap = tab[2 * h + 1];
  const uint nRows = p.tokens * G;
  const uint row0 = gl_WorkGroupID.x * R;
  const uint lastRow = min(nRows, row0 + R) - 1u;
  const bool first = (p.flags & 1u) != 0u;
  // Keys past the workgroup's last query token (or past the capacity) are never visible.
  const uint kEnd = min(p.window != 0u ? p.kv1 : min(p.kv1, cap), p.p0 + lastRow / G + 1u);
  // Keys before the window of the workgroup's first query token are never visible.
  const uint kStart = max(p.kv0, windowStart(p.p0 + row0 / G));
  ringK0 = kStart;
  ringR0 = cap > 0u ? kStart % cap : 0u;

  // Row slices enter through a rolled loop that shifts the register arrays by one row per trip
  // (row `it` ends in slot it): unrolled, R rows of loads would make llvmpipe's compile time
  // explode.
  vec2 q[R * NP];
  vec2 o[R * NP];
  [[dont_unroll]] for (uint it = 0; it < R; it++) {
    [[unroll]] for (uint i = 0; i < R - 1u; i++) {
      [[unroll]] for (uint c = 0; c < NP; c++) {
        q[i * NP + c] = q[(i + 1) * NP + c];
        o[i * NP + c] = o[(i + 1) * NP + c];
      }
    }
    const uint r = min(row0 + it, lastRow);
    const uint t = r / G;
    const uint qh = h * G + r % G;
    const uint qa = (p.qOff4 + t * p.qStride4) * 2u + qh * HD + lane * NP;
    const uint oa = (p.oOff4 + t * p.oStride4) * 2u + qh * HD + lane * NP;
    // vec4 loads where the slice allows (half the load instructions: compile time).
    const uint top = (R - 1u) * NP;
    if (NP % 2u == 0u) {
      [[unroll]] for (uint c = 0; c < NP; c += 2u) {
        const vec4 qv = q4[(qa + c) / 2u] * p.scale;
        const vec4 prev = o4[(oa + c) / 2u]; // unconditional: a select, not a branch
        q[top + c] = qv.xy;
        q[top + c + 1u] = qv.zw;
        o[top + c] = first ? vec2(0.0) : prev.xy;
        o[top + c + 1u] = first ? vec2(0.0) : prev.zw;
      }
    } else {
      [[unroll]] for (uint c = 0; c < NP; c++) {
        q[top + c] = q2[qa + c] * p.scale;
        const vec2 prev = o2[oa + c];
        o[top + c] = first ? vec2(0.0) : prev;
      }
    }
  }
  // Per row group, lane k holds row n * L + k's running max, sum and last visible key.
  float m[NG];
  float l[NG];
  uint lim[NG];
  uint lo[NG];
  [[unroll]] for (uint n = 0; n < NG; n++) {
    const uint r = min(row0 + n * L + lane, lastRow);
    const uint t = r / G;
    const vec2 st = ml[t * p.nHeads + h * G + r % G];
    m[n] = first ? NEG_INF : st.x;
    l[n] = first ? 0.0 : st.y;
    lim[n] = min(p.p0 + t, kEnd - 1u);
    lo[n] = windowStart(p.p0 + t);
  }

  for (uint kb = kStart; kb < kEnd; kb += KB) {
    float s[NG * KB]; // lane k: row n * L + k, key kb + j
    [[unroll]] for (uint j = 0; j < KB; j++) {
      uint w[NP];
      loadK(base + ringRow(min(kb + j, kEnd - 1u), cap), lane, w);
      vec2 kv[NP];
      [[unroll]] for (uint c = 0; c < NP; c++) kv[c] = unpackHalf2x16(w[c]);
      [[unroll]] for (uint n = 0; n < NG; n++) {
        float x[L];
        [[unroll]] for (uint k = 0; k < L; k++) {
          x[k] = 0.0;
          [[unroll]] for (uint c = 0; c < NP; c++) x[k] += dot(q[(n * L + k) * NP + c], kv[c]);
        }
        // Reduce-scatter: at step b the lanes with bit b set keep the upper half of the rows.
        [[unroll]] for (uint e = 0; e < LOG2L; e++) {
          const uint b = (L / 2u) >> e;
          const bool upper = (lane & b) != 0u;
          [[unroll]] for (uint k = 0; k < L / 2u; k++) {
            if (k < b) {
              const float keep = upper ? x[k + b] : x[k];
              const float send = upper ? x[k] : x[k + b];
              x[k] = keep + subgroupShuffleXor(send, b);
            }
          }
        }
        s[n * KB + j] = kb + j <= lim[n] && kb + j >= lo[n] ? softcapped(x[0]) : NEG_INF;
      }
    }
    [[unroll]] for (uint n = 0; n < NG; n++) {
      float mb = s[n * KB];
      [[unroll]] for (uint j = 1; j < KB; j++) mb = max(mb, s[n * KB + j]);
      const float mn = max(m[n], mb);
      const float alpha = pexp(m[n] - mn);
      m[n] = mn;
      l[n] *= alpha;
      [[unroll]] for (uint j = 0; j < KB; j++) {
        s[n * KB + j] = pexp(s[n * KB + j] - mn);
        l[n] += s[n * KB + j];
      }
      [[unroll]] for (uint k = 0; k < L; k++) {
        const float a = subgroupShuffle(alpha, k);
        [[unroll]] for (uint c = 0; c < NP; c++) o[(n * L + k) * NP + c] *= a;
      }
    }
    [[unroll]] for (uint j = 0; j < KB; j++) {
      uint w[NP];
      loadV(base + ringRow(min(kb + j, kEnd - 1u), cap), lane, w);
      vec2 vv[NP];
      [[unroll]] for (uint c = 0; c < NP; c++) vv[c] = unpackHalf2x16(w[c]);
      [[unroll]] for (uint n = 0; n < NG; n++) {
        [[unroll]] for (uint k = 0; k < L; k++) {
          const float pk = subgroupShuffle(s[n * KB + j], k);
          [[unroll]] for (uint c = 0; c < NP; c++) o[(n * L + k) * NP + c] += pk * vv[c];
        }
      }
    }
  }

  const bool last = (p.flags & 2u) != 0u;
  float inv[R];
  [[unroll]] for (uint n = 0; n < NG; n++) {
    const uint r = row0 + n * L + lane;
    const float il = last ? (l[n] > 0.0 ? 1.0 / l[n] : 0.0) : 1.0;
    [[unroll]] for (uint k = 0; k < L; k++) inv[n * L + k] = subgroupShuffle(il, k);
    if (!last && r < nRows) ml[(r / G) * p.nHeads + h * G + r % G] = vec2(m[n], l[n]);
  }
  [[dont_unroll]] for (uint it = 0; it < R; it++) {
    const uint r = row0 + it;
    if (r < nRows) {
      const uint t = r / G;
      const uint qh = h * G + r % G;
      const uint oa = (p.oOff4 + t * p.oStride4) * 2u + qh * HD + lane * NP;
      if (NP % 2u == 0u) {
        [[unroll]] for (uint c = 0; c < NP; c += 2u) {
          o4[(oa + c) / 2u] = vec4(o[c], o[c + 1u]) * inv[0];
        }
      } else {
        [[unroll]] for (uint c = 0; c < NP; c++) o2[oa + c] = o[c] * inv[0];
      }
    }
    [[unroll]] for (uint i = 0; i < R - 1u; i++) {
      [[unroll]] for (uint c = 0; c < NP; c++) o[i * NP + c] = o[(i + 1) * NP + c];
      inv[i] = inv[i + 1];
    }
  }
}
