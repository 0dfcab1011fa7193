#version 450
// Causal prefill attention for SIMD CPU drivers (lavapipe), any head dim ("rows" variant; head
// dims that are a multiple of 2 x lanes go to attn_prefill_split.comp, which loads less): same
// inputs, outputs and pass protocol as attn_prefill.comp.
//
// Why a different kernel: llvmpipe turns every buffer or shared-memory load into a loop over the
// lanes (a uniform address is no cheaper), runs the subgroups of a workgroup one after another,
// and executes every `if` with masks. Arithmetic on registers is cheap SIMD; loads are what
// costs. So a workgroup is one subgroup, each lane owns R query rows (kept in registers, loaded
// once) and streams the head's keys: each K and V row a lane loads serves R rows. No shared
// memory, no barriers, no cross-lane reductions.
//
// Rows are flattened per KV head: row r = t * G + g (token t, query head g of the group), so any
// G works and a lane's rows may mix tokens. Lane `lane` of workgroup x owns rows
// x * L * R + i * L + lane, i < R. Keys go in blocks of KB: scores for the whole block, one
// rescale of the running state per block, then the V products. Every inner loop is unrolled, so
// an invocation runs about (kv1 - kv0) / KB loop iterations (lavapipe stops at 65535). The rows'
// state enters and leaves through rolled loops that shift the register arrays by one row per
// trip: unrolled, R rows of loads would make llvmpipe's compile time explode.
//
// Masked scores are -inf; probabilities 2^(s - m) below 2^-100 are flushed to 0 (no denormals:
// llvmpipe runs them ~30x slower; the dropped mass is < 2^-100 of the row's).
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
layout(local_size_x_id = 0) in;
layout(constant_id = 0) const uint L = 8;   // lanes = workgroup size
layout(constant_id = 1) const uint G = 4;   // query heads per KV head
layout(constant_id = 2) const uint D = 128; // head dim, multiple of 8
layout(constant_id = 3) const uint R = 4;   // query rows per lane
layout(constant_id = 4) const uint KB = 8;  // keys per block
// Logit soft-capping (push constant softcap holds log2(e) * c): a specialisation, not a push
// constant test, because llvmpipe kept the scores in memory around the untaken branch (the
// CPU decode attention ran 25% slower with the test in it).
layout(constant_id = 5) const bool SOFTCAP = false;

const uint D4 = D / 4;
const uint D8 = D / 8;

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

void main() {
  const uint lane = gl_LocalInvocationID.x;
  const uint h = p.headBase + gl_WorkGroupID.y;
  const uint base = tab[2 * h];
  const uint cap = tab[2 * h + 1];
  const uint nRows = p.tokens * G;
  const uint row0 = gl_WorkGroupID.x * L * R;
  const uint lastRow = min(nRows, row0 + L * R) - 1;
  const bool first = (p.flags & 1u) != 0u;

  // Keys past the workgroup's last query token (or past the capacity) are never visible.
  const uint kEnd = min(p.window != 0u ? p.kv1 : min(p.kv1, cap), p.p0 + lastRow / G + 1u);
  // Keys before the window of the workgroup's first query token are never visible.
  const uint kStart = max(p.kv0, windowStart(p.p0 + row0 / G));
  ringK0 = kStart;
  ringR0 = cap > 0u ? kStart % cap : 0u;

  // Rolled loop, one row per trip (row i ends in slot i).
  vec4 q[R * D4];
  vec4 o[R * D4];
  float m[R];
  float l[R];
  uint lim[R]; // last visible key of each row
  uint lo[R];  // first visible key of each row
  [[dont_unroll]] for (uint it = 0; it < R; it++) {
    [[unroll]] for (uint i = 0; i < R - 1u; i++) {
      [[unroll]] for (uint c = 0; c < D4; c++) {
        q[i * D4 + c] = q[(i + 1) * D4 + c];
        o[i * D4 + c] = o[(i + 1) * D4 + c];
      }
      m[i] = m[i + 1];
      l[i] = l[i + 1];
      lim[i] = lim[i + 1];
      lo[i] = lo[i + 1];
    }
    const uint r = min(row0 + it * L + lane, lastRow);
    const uint t = r / G;
    const uint qh = h * G + r % G;
    const uint top = R - 1u;
    lim[top] = min(p.p0 + t, kEnd - 1u);
    lo[top] = windowStart(p.p0 + t);
    [[unroll]] for (uint c = 0; c < D4; c++) {
      q[top * D4 + c] = q4[p.qOff4 + t * p.qStride4 + qh * D4 + c] * p.scale;
      const vec4 prev = o4[p.oOff4 + t * p.oStride4 + qh * D4 + c]; // a select, not a branch
      o[top * D4 + c] = first ? vec4(0.0) : prev;
    }
    const vec2 st = ml[t * p.nHeads + qh];
    m[top] = first ? NEG_INF : st.x;
    l[top] = first ? 0.0 : st.y;
  }

  for (uint kb = kStart; kb < kEnd; kb += KB) {
    float s[R * KB];
    [[unroll]] for (uint j = 0; j < KB; j++) {
      const uint at = (base + ringRow(min(kb + j, kEnd - 1u), cap)) * D8;
      [[unroll]] for (uint i = 0; i < R; i++) s[i * KB + j] = 0.0;
      [[unroll]] for (uint c = 0; c < D8; c++) {
        const uvec4 w = k8[at + c];
        const vec4 a = vec4(unpackHalf2x16(w.x), unpackHalf2x16(w.y));
        const vec4 b = vec4(unpackHalf2x16(w.z), unpackHalf2x16(w.w));
        [[unroll]] for (uint i = 0; i < R; i++) {
          s[i * KB + j] += dot(q[i * D4 + 2 * c], a) + dot(q[i * D4 + 2 * c + 1], b);
        }
      }
      [[unroll]] for (uint i = 0; i < R; i++) {
        s[i * KB + j] = kb + j <= lim[i] && kb + j >= lo[i] ? softcapped(s[i * KB + j]) : NEG_INF;
      }
    }
    [[unroll]] for (uint i = 0; i < R; i++) {
      float mb = s[i * KB];
      [[unroll]] for (uint j = 1; j < KB; j++) mb = max(mb, s[i * KB + j]);
      const float mn = max(m[i], mb);
      const float alpha = pexp(m[i] - mn);
      m[i] = mn;
      l[i] *= alpha;
      [[unroll]] for (uint c = 0; c < D4; c++) o[i * D4 + c] *= alpha;
      [[unroll]] for (uint j = 0; j < KB; j++) {
        s[i * KB + j] = pexp(s[i * KB + j] - mn);
        l[i] += s[i * KB + j];
      }
    }
    [[unroll]] for (uint j = 0; j < KB; j++) {
      const uint at = (base + ringRow(min(kb + j, kEnd - 1u), cap)) * D8;
      [[unroll]] for (uint c = 0; c < D8; c++) {
        const uvec4 w = v8[at + c];
        const vec4 a = vec4(unpackHalf2x16(w.x), unpackHalf2x16(w.y));
        const vec4 b = vec4(unpackHalf2x16(w.z), unpackHalf2x16(w.w));
        [[unroll]] for (uint i = 0; i < R; i++) {
          o[i * D4 + 2 * c] += s[i * KB + j] * a;
          o[i * D4 + 2 * c + 1] += s[i * KB + j] * b;
        }
      }
    }
  }

  const bool last = (p.flags & 2u) != 0u;
  [[dont_unroll]] for (uint it = 0; it < R; it++) {
    const uint r = row0 + it * L + lane;
    if (r < nRows) {
      const uint t = r / G;
      const uint qh = h * G + r % G;
      const float inv = last ? (l[0] > 0.0 ? 1.0 / l[0] : 0.0) : 1.0;
      [[unroll]] for (uint c = 0; c < D4; c++) {
        o4[p.oOff4 + t * p.oStride4 + qh * D4 + c] = o[c] * inv;
      }
      if (!last) ml[t * p.nHeads + qh] = vec2(m[0], l[0]);
    }
    [[unroll]] for (uint i = 0; i < R - 1u; i++) {
      [[unroll]] for (uint c = 0; c < D4; c++) o[i * D4 + c] = o[(i + 1) * D4 + c];
      m[i] = m[i + 1];
      l[i] = l[i + 1];
    }
  }
}
