#version 450
// Causal prefill attention for GPUs, flash style. One workgroup = a tile of BR query rows (whole
// tokens x the G query heads of one KV head, so the group shares every K/V read) against tiles of
// BC keys. Query token t sits at position p0 + t and sees the head's rows 0 .. p0 + t (row index
// = position; a sliding-window head sees its last W positions in a ring).
//
// Lanes: the BR rows are cut into row groups of RT rows, each owned by P consecutive invocations
// (P <= 8 divides every subgroup size this runs at, lavapipe's 8 included, so the lanes of a row
// group share a subgroup). For the scores each lane computes RT rows x BC/P keys (keys part,
// part + P, ...): per 8 dims it reads RT query words and BC/P key words for 8 * RT * BC/P
// multiply-adds. For the output each lane owns RT rows x every P-th 8-dim column of V.
//
// Shared memory holds f16: the tile's scaled queries (BR x D), and one K/V buffer (BC x D) that
// takes the K tile, then the V tile of the same keys. Its 16-byte columns are swizzled by key
// (column c of key j at c ^ (j & SWM)) so that the P lanes of a row group, which read P
// different keys at one column, hit different banks without padding.
//
// HC_SUBGROUP (the `__sg` twin): each row's max and sum of a tile are subgroup shuffles across
// its P lanes, and the probabilities go from the lane that holds them to the lanes that need
// them by subgroupShuffle, so no score tile lives in shared memory. Without it (devices without
// subgroup arithmetic) the scores go through a BR x BC shared tile that each lane scans.
//
// Only the key tiles some query of the tile sees are visited: the loop starts at the first
// key of the tile's first window and ends at its last query's position (causal tiles above the
// diagonal and sliding-window tiles below the window are skipped); inside a tile each key is
// masked per row.
//
// The key range may be cut into passes [kv0, kv1) (separate dispatches, barrier between): the
// running state (m, l in `ml`, unnormalised o in `out`) survives between passes; flag bit 0 =
// first pass (start fresh), bit 1 = last pass (normalise). One pass covers everything on GPUs;
// lavapipe needs several for long prompts (per-invocation loop cap).
//
// HC_TEST_BREAK (tests only, never built): the V tile's row index is off (pairs of keys swap
// their V rows), which the reference tests must catch.
#extension GL_EXT_control_flow_attributes : enable
#ifdef HC_SUBGROUP
#extension GL_KHR_shader_subgroup_basic : enable
#extension GL_KHR_shader_subgroup_shuffle : enable
#endif
layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint G = 4;     // query heads per KV head
layout(constant_id = 2) const uint D = 128;   // head dim, multiple of 8
layout(constant_id = 3) const uint BC = 64;   // keys per tile, a multiple of P
layout(constant_id = 4) const uint BR = 64;   // query rows per tile
// Logit soft-capping (push constant softcap holds log2(e) * c): a specialisation, not a push
// constant test, because llvmpipe kept the scores in memory around the untaken branch (the
// CPU decode attention ran 25% slower with the test in it).
layout(constant_id = 5) const bool SOFTCAP = false;
layout(constant_id = 6) const uint RT = 2;    // rows per row group
layout(constant_id = 7) const uint P = 8;     // lanes per row group (power of two, <= 8);
                                              // local size = BR / RT * P
// The swizzle mask: the largest power of two dividing D / 8, at most 8, less one.
layout(constant_id = 8) const uint SWM = 7;

const uint D4 = D / 4;
const uint D8 = D / 8;
const uint KT = BC / P;               // keys per lane per tile
const uint CPT = (D8 + P - 1) / P;    // 8-dim columns of V per lane

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

shared uvec4 qs[BR * D8];
shared uvec4 kv[BC * D8];
#ifndef HC_SUBGROUP
shared float sc[BR * BC];
#endif

const float NEG_INF = -1.0 / 0.0;

vec4 lo4(uvec4 w) { return vec4(unpackHalf2x16(w.x), unpackHalf2x16(w.y)); }
vec4 hi4(uvec4 w) { return vec4(unpackHalf2x16(w.z), unpackHalf2x16(w.w)); }
uvec4 pack8(vec4 a, vec4 b) {
  return uvec4(packHalf2x16(a.xy), packHalf2x16(a.zw), packHalf2x16(b.xy), packHalf2x16(b.zw));
}

// Index of column c of key j in kv.
uint kvAt(uint j, uint c) { return j * D8 + (c ^ (j & SWM)); }

// Reads the tile's rows kt .. kt + nk - 1 of K or V (src 0 or 1) into kv.
void loadTile(uint src, uint kt, uint nk, uint base, uint cap) {
  for (uint i = gl_LocalInvocationID.x; i < nk * D8; i += gl_WorkGroupSize.x) {
    const uint j = i / D8;
    const uint c = i % D8;
    uint r = j;
#ifdef HC_TEST_BREAK
    if (src == 1u && (j ^ 1u) < nk) r = j ^ 1u;
#endif
    const uint at = (base + ringRow(kt + r, cap)) * D8 + c;
    kv[kvAt(j, c)] = src == 0u ? k8[at] : v8[at];
  }
}

void main() {
  const uint WG = gl_WorkGroupSize.x;
  const uint tid = gl_LocalInvocationID.x;
  const uint h = p.headBase + gl_WorkGroupID.y;
  const uint TB = BR / G;
  const uint tok0 = gl_WorkGroupID.x * TB;
  const uint tokEnd = min(p.tokens, tok0 + TB);
  const uint base = tab[2 * h];
  const uint cap = tab[2 * h + 1];
  const uint rg = tid / P;
  const uint part = tid % P;
#ifdef HC_SUBGROUP
  // The first lane of this row group in its subgroup (groups of P are aligned).
  const uint lane0 = gl_SubgroupInvocationID & ~(P - 1u);
#endif

  uint pos[RT];
  uint lo[RT];
  bool valid[RT];
  uint outAt[RT]; // vec4 index of the row's output
  uint mlAt[RT];
  [[unroll]] for (uint r = 0; r < RT; r++) {
    const uint row = rg * RT + r;
    const uint t = tok0 + row / G;
    valid[r] = row < TB * G && t < tokEnd;
    pos[r] = p.p0 + t;
    lo[r] = windowStart(pos[r]);
    outAt[r] = p.oOff4 + t * p.oStride4 + (h * G + row % G) * D4;
    mlAt[r] = t * p.nHeads + h * G + row % G;
  }

  for (uint i = tid; i < BR * D8; i += WG) {
    const uint r = i / D8;
    const uint tr = tok0 + r / G;
    const bool vr = r < TB * G && tr < tokEnd;
    const uint at = p.qOff4 + tr * p.qStride4 + (h * G + r % G) * D4 + 2 * (i % D8);
    qs[i] = vr ? pack8(q4[at] * p.scale, q4[at + 1] * p.scale) : uvec4(0);
  }

  float m[RT];
  float l[RT];
  vec4 oa[RT * CPT];
  vec4 ob[RT * CPT];
  const bool first = (p.flags & 1u) != 0u;
  [[unroll]] for (uint r = 0; r < RT; r++) {
    m[r] = NEG_INF;
    l[r] = 0.0;
    if (!first && valid[r]) {
      m[r] = ml[mlAt[r]].x;
      l[r] = ml[mlAt[r]].y;
    }
    [[unroll]] for (uint c = 0; c < CPT; c++) {
      const uint col = part + c * P;
      oa[r * CPT + c] = vec4(0.0);
      ob[r * CPT + c] = vec4(0.0);
      if (!first && valid[r] && col < D8) {
        oa[r * CPT + c] = o4[outAt[r] + 2 * col];
        ob[r * CPT + c] = o4[outAt[r] + 2 * col + 1];
      }
    }
  }

  // Keys past the last query token of this tile (or past the capacity) are never visible.
  // A ring (sliding window) holds more positions than its capacity; keys before the tile's
  // first window are never visible.
  const uint kEnd = min(p.window != 0u ? p.kv1 : min(p.kv1, cap), tokEnd > tok0 ? p.p0 + tokEnd : 0u);
  const uint kStart = max(p.kv0, windowStart(p.p0 + tok0));
  for (uint kt = kStart; kt < kEnd; kt += BC) {
    const uint nk = min(BC, kEnd - kt);
    barrier(); // the previous tile's readers are done (and qs is written on the first trip)
    loadTile(0u, kt, nk, base, cap);
    barrier();

    float s[RT * KT];
    [[unroll]] for (uint i = 0; i < RT * KT; i++) s[i] = 0.0;
    for (uint c = 0; c < D8; c++) {
      vec4 qa[RT];
      vec4 qb[RT];
      [[unroll]] for (uint r = 0; r < RT; r++) {
        const uvec4 w = qs[(rg * RT + r) * D8 + c];
        qa[r] = lo4(w);
        qb[r] = hi4(w);
      }
      [[unroll]] for (uint i = 0; i < KT; i++) {
        const uvec4 w = kv[kvAt(part + i * P, c)];
        const vec4 kl = lo4(w);
        const vec4 kh = hi4(w);
        [[unroll]] for (uint r = 0; r < RT; r++) s[r * KT + i] += dot(qa[r], kl) + dot(qb[r], kh);
      }
    }
    [[unroll]] for (uint r = 0; r < RT; r++) {
      [[unroll]] for (uint i = 0; i < KT; i++) {
        const uint j = part + i * P;
        const uint key = kt + j;
        const bool vis = valid[r] && j < nk && key <= pos[r] && key >= lo[r];
        s[r * KT + i] = vis ? softcapped(s[r * KT + i]) : NEG_INF;
      }
    }

#ifdef HC_SUBGROUP
    // Online softmax: the tile's max and sum of each row across its P lanes; s becomes p.
    [[unroll]] for (uint r = 0; r < RT; r++) {
      float mt = NEG_INF;
      [[unroll]] for (uint i = 0; i < KT; i++) mt = max(mt, s[r * KT + i]);
      [[unroll]] for (uint x = 1; x < P; x <<= 1) mt = max(mt, subgroupShuffleXor(mt, x));
      const float mn = max(m[r], mt);
      // mn is -inf only while the row has seen no key: then every p is 0 and nothing scales.
      const float alpha = m[r] == NEG_INF ? 0.0 : exp2(m[r] - mn);
      float ls = 0.0;
      [[unroll]] for (uint i = 0; i < KT; i++) {
        const float pj = s[r * KT + i] == NEG_INF ? 0.0 : exp2(s[r * KT + i] - mn);
        s[r * KT + i] = pj;
        ls += pj;
      }
      [[unroll]] for (uint x = 1; x < P; x <<= 1) ls += subgroupShuffleXor(ls, x);
      if (mn != NEG_INF) {
        m[r] = mn;
        l[r] = l[r] * alpha + ls;
        [[unroll]] for (uint c = 0; c < CPT; c++) {
          oa[r * CPT + c] *= alpha;
          ob[r * CPT + c] *= alpha;
        }
      }
    }
    barrier(); // every lane is done with the K tile
    loadTile(1u, kt, nk, base, cap);
    barrier();
    // Key i * P + src's probabilities live in lane src of the row group, at s[r * KT + i]. The
    // loop over i is not unrolled (an unrolled BC-key body took llvmpipe tens of seconds to
    // compile), so s shifts down each trip and the shuffles read s[r * KT], never a register
    // index that varies.
    for (uint i = 0; i < KT && i * P < nk; i++) {
      [[unroll]] for (uint src = 0; src < P; src++) {
        const uint j = i * P + src;
        if (j < nk) { // uniform: the shuffles below see every lane
          float pj[RT];
          [[unroll]] for (uint r = 0; r < RT; r++) pj[r] = subgroupShuffle(s[r * KT], lane0 + src);
          [[unroll]] for (uint c = 0; c < CPT; c++) {
            const uint col = part + c * P;
            if (col < D8) {
              const uvec4 w = kv[kvAt(j, col)];
              const vec4 vl = lo4(w);
              const vec4 vh = hi4(w);
              [[unroll]] for (uint r = 0; r < RT; r++) {
                oa[r * CPT + c] += pj[r] * vl;
                ob[r * CPT + c] += pj[r] * vh;
              }
            }
          }
        }
      }
      [[unroll]] for (uint r = 0; r < RT; r++) {
        [[unroll]] for (uint x = 0; x + 1 < KT; x++) s[r * KT + x] = s[r * KT + x + 1];
      }
    }
#else
    [[unroll]] for (uint r = 0; r < RT; r++) {
      [[unroll]] for (uint i = 0; i < KT; i++) sc[(rg * RT + r) * BC + part + i * P] = s[r * KT + i];
    }
    barrier(); // every lane is done with the K tile, and the score tile is whole
    loadTile(1u, kt, nk, base, cap);
    barrier();
    float mn[RT];
    bool any = false;
    [[unroll]] for (uint r = 0; r < RT; r++) {
      float mt = NEG_INF;
      for (uint j = 0; j < nk; j++) mt = max(mt, sc[(rg * RT + r) * BC + j]);
      mn[r] = max(m[r], mt);
      const float alpha = m[r] == NEG_INF ? 0.0 : exp2(m[r] - mn[r]);
      if (mn[r] != NEG_INF) {
        any = true;
        m[r] = mn[r];
        l[r] *= alpha;
        [[unroll]] for (uint c = 0; c < CPT; c++) {
          oa[r * CPT + c] *= alpha;
          ob[r * CPT + c] *= alpha;
        }
      }
    }
    if (any) {
      for (uint j = 0; j < nk; j++) {
        float pj[RT];
        [[unroll]] for (uint r = 0; r < RT; r++) {
          const float sj = sc[(rg * RT + r) * BC + j];
          pj[r] = sj == NEG_INF ? 0.0 : exp2(sj - mn[r]);
          l[r] += pj[r];
        }
        [[unroll]] for (uint c = 0; c < CPT; c++) {
          const uint col = part + c * P;
          if (col < D8) {
            const uvec4 w = kv[kvAt(j, col)];
            const vec4 vl = lo4(w);
            const vec4 vh = hi4(w);
            [[unroll]] for (uint r = 0; r < RT; r++) {
              oa[r * CPT + c] += pj[r] * vl;
              ob[r * CPT + c] += pj[r] * vh;
            }
          }
        }
      }
    }
#endif
  }

  const bool last = (p.flags & 2u) != 0u;
  [[unroll]] for (uint r = 0; r < RT; r++) {
    if (!valid[r]) continue;
    const float inv = last ? (l[r] > 0.0 ? 1.0 / l[r] : 0.0) : 1.0;
    [[unroll]] for (uint c = 0; c < CPT; c++) {
      const uint col = part + c * P;
      if (col < D8) {
        o4[outAt[r] + 2 * col] = oa[r * CPT + c] * inv;
        o4[outAt[r] + 2 * col + 1] = ob[r * CPT + c] * inv;
      }
    }
    if (!last && part == 0) ml[mlAt[r]] = vec2(m[r], l[r]);
  }
}
