#version 450
#extension GL_GOOGLE_include_directive : require
// The local size comes before the include (see rope.comp).
layout(local_size_x_id = 0) in;
#include "common.glsl"
#include "rope.glsl"
// RoPE on q and k and the KV append in one dispatch (src/kernels/kv.ts RopeAppend): per token,
// q rotated in place, k rotated in place and written as f16 into its head's next row, v written
// as f16 into its row. The same arithmetic as rope.comp followed by kv_append.comp (and YaRN's
// magnitude scale), so the results are the same; one dispatch and one barrier instead of three
// dispatches and two barriers per layer.
//
// One invocation per 4 elements of a head row: two consecutive pairs (2j, 2j + 1), which in
// either pairing fill whole 32-bit words of f16 ("adjacent": elements 4j .. 4j + 3; "halves":
// 2j, 2j + 1 and their partners 2j + D/2, 2j + 1 + D/2), so no two invocations share a word.
// Items of a token: q heads (nHeads x D/4, 0 on a cache chunk's dispatch after the first), then
// this chunk's k heads, then its v heads (kvHeads x D/4 each).
//
// Rows as in kv_append.comp: lens[h] already counts the new tokens; rows at or past a head's
// capacity are never written, except in a ring (position r lands on row r % capacity).
layout(constant_id = 1) const uint D = 128;

layout(std430, binding = 0) buffer Qb { float q[]; };
layout(std430, binding = 1) buffer Kb { float k[]; };
layout(std430, binding = 2) readonly buffer Vb { float v[]; };
layout(std430, binding = 3) writeonly buffer Kp { uint kpool[]; };
layout(std430, binding = 4) writeonly buffer Vp { uint vpool[]; };
layout(std430, binding = 5) readonly buffer T { uvec2 turns[]; };
layout(std430, binding = 6) readonly buffer Pb { uint positions[]; };
layout(std430, binding = 7) readonly buffer Tb { uint tab[]; };
layout(std430, binding = 8) readonly buffer Lb { uint lens[]; };

layout(push_constant) uniform P {
  uint tokens;    // B
  uint nHeads;    // q heads rotated by this dispatch (0: none)
  uint headBase;  // this dispatch's first KV head
  uint kvHeads;   // KV heads of this dispatch
  uint qStride;   // floats between tokens of q
  uint kvStride;  // floats between tokens of k and v
  uint flags;     // bit 0: halves pairing, bit 1: ring (sliding window), bit 2: scale by mscale
  float mscale;   // YaRN's magnitude scale of q and k (flag bit 2)
} p;

void main() {
  uint gid = (gl_WorkGroupID.y * gl_NumWorkGroups.x + gl_WorkGroupID.x) * gl_WorkGroupSize.x +
    gl_LocalInvocationID.x;
  const uint D4 = D / 4u;
  uint qItems = p.nHeads * D4;
  uint kvItems = p.kvHeads * D4;
  uint per = qItems + 2u * kvItems;
  if (gid >= p.tokens * per) return;
  uint t = gid / per;
  uint r = gid - t * per;
  bool isQ = r < qItems;
  bool isK = !isQ && r < qItems + kvItems;
  uint rr = isQ ? r : isK ? r - qItems : r - qItems - kvItems;
  uint h = rr / D4;  // q head, or KV head relative to headBase
  uint j = rr - h * D4;
  uint H = p.headBase + h;

  // The cache row of this token (k and v items).
  bool write = false;
  uint rowWord = 0u;
  if (!isQ) {
    uint len = lens[H];
    uint cap = tab[2u * H + 1u];
    uint start = len - p.tokens;
    bool ring = (p.flags & 2u) != 0u;
    // A length smaller than the batch is a host bug: write nothing rather than wrap.
    write = len >= p.tokens && (ring || start + t < cap);
    uint row = ring ? (start + t) % cap : start + t;
    rowWord = (tab[2u * H] + row) * (D / 2u);
  }

  if (!isQ && !isK) {
    uint vb = t * p.kvStride + H * D + 4u * j;
    if (write) {
      vpool[rowWord + 2u * j] = packHalf2x16(vec2(v[vb], v[vb + 1u]));
      vpool[rowWord + 2u * j + 1u] = packHalf2x16(vec2(v[vb + 2u], v[vb + 3u]));
    }
    return;
  }

  // Elements of pair 2j: (e0, e1); of pair 2j + 1: (e2, e3).
  bool halves = (p.flags & 1u) != 0u;
  uint e0 = halves ? 2u * j : 4u * j;
  uint e1 = halves ? e0 + D / 2u : e0 + 1u;
  uint e2 = halves ? e0 + 1u : e0 + 2u;
  uint e3 = halves ? e1 + 1u : e0 + 3u;
  uint pos = positions[0] + t;
  vec2 cs0 = rope_cos_sin(pos, turns[2u * j]);
  vec2 cs1 = rope_cos_sin(pos, turns[2u * j + 1u]);
  uint b = isQ ? t * p.qStride + h * D : t * p.kvStride + H * D;
  float x0, x1, x2, x3;
  if (isQ) {
    x0 = q[b + e0]; x1 = q[b + e1]; x2 = q[b + e2]; x3 = q[b + e3];
  } else {
    x0 = k[b + e0]; x1 = k[b + e1]; x2 = k[b + e2]; x3 = k[b + e3];
  }
  float y0 = x0 * cs0.x - x1 * cs0.y;
  float y1 = x0 * cs0.y + x1 * cs0.x;
  float y2 = x2 * cs1.x - x3 * cs1.y;
  float y3 = x2 * cs1.y + x3 * cs1.x;
  if ((p.flags & 4u) != 0u) {
    y0 *= p.mscale; y1 *= p.mscale; y2 *= p.mscale; y3 *= p.mscale;
  }
  if (isQ) {
    q[b + e0] = y0; q[b + e1] = y1; q[b + e2] = y2; q[b + e3] = y3;
    return;
  }
  k[b + e0] = y0; k[b + e1] = y1; k[b + e2] = y2; k[b + e3] = y3;
  if (write) {
    // Words hold consecutive elements: adjacent pairs fill words 2j and 2j + 1; in halves
    // pairing the two pairs' first elements fill word j, their partners word j + D/4.
    if (halves) {
      kpool[rowWord + j] = packHalf2x16(vec2(y0, y2));
      kpool[rowWord + j + D4] = packHalf2x16(vec2(y1, y3));
    } else {
      kpool[rowWord + 2u * j] = packHalf2x16(vec2(y0, y1));
      kpool[rowWord + 2u * j + 1u] = packHalf2x16(vec2(y2, y3));
    }
  }
}
