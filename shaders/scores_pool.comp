#version 450
// Attention scores, pass 2 of 2: merges scores_stats.comp's split statistics, recomputes the
// probabilities p[w][g][j] = softmax_j(q[w][g] . K_j * scale) over the head's rows [0, n), and
// writes per KV head (flags):
//   windows summed (bit 1 clear):  one row   v[j] = F(sum_w p[w][.][j])
//   windows separate (bit 1 set):  W rows    v_w[j] = F(p[w][.][j])
// with F = pool(reduce_g(x)) (bit 2 clear) or reduce_g(pool(x)) (bit 2 set), reduce_g = max over
// the G query heads (bit 0 clear) or mean (bit 0 set), pool = 1-D average, odd kernel K, stride 1,
// zero padding K/2, always divided by K (count_include_pad).
// One workgroup = one tile of positions (plus a K/2 halo on each side) of one head.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
layout(local_size_x_id = 0) in;
layout(constant_id = 0) const uint WGS = 64;
layout(constant_id = 1) const uint G = 4;
layout(constant_id = 2) const uint D = 128;
layout(constant_id = 3) const uint QC = 8; // query rows held at once (>= G, a multiple of G)
layout(constant_id = 4) const uint P = 4;  // positions per invocation

const uint D4 = D / 4;
const uint D8 = D / 8;
const uint NR_MAX = 256;
const uint SPAN = WGS * P; // positions computed per workgroup, halo included

layout(std430, binding = 0) readonly buffer Qb { vec4 q4[]; };
layout(std430, binding = 1) readonly buffer Kb { uvec4 k8[]; };
layout(std430, binding = 2) readonly buffer Tb { uint tab[]; };
layout(std430, binding = 3) readonly buffer Sb { vec2 stats[]; };
layout(std430, binding = 4) writeonly buffer Ob { float outv[]; };

layout(push_constant) uniform Push {
  uint headBase;
  uint n;
  uint window;
  uint qOff4;
  uint qStride4;
  uint splits;    // split count of the stats pass
  float scale;
  uint flags;     // 1 = mean over G (else max), 2 = windows separate (else summed), 4 = pool first
  uint kernel;    // odd pool width, <= SPAN / 4
  uint outOff;    // float offset of the first output row
  uint outStride; // floats between output rows
} p;

shared vec4 qs[QC * D4];
shared float stM[NR_MAX];
shared float stInv[NR_MAX];
shared float pg[G * SPAN]; // per query head, per position of the span: summed probabilities
shared float rv[SPAN];

const float NEG_INF = -1.0 / 0.0;

float reduceG(uint col, bool mean) {
  float v = pg[col];
  for (uint g = 1; g < G; g++) v = mean ? v + pg[g * SPAN + col] : max(v, pg[g * SPAN + col]);
  return mean ? v / float(G) : v;
}

void main() {
  const uint tid = gl_LocalInvocationID.x;
  const uint hi = gl_WorkGroupID.y;
  const uint h = p.headBase + hi;
  const uint base = tab[2 * h];
  const uint NR = p.window * G;
  const uint S = p.splits;
  const uint halo = p.kernel / 2;
  const uint tile = SPAN - 2 * halo;
  // Span index x (= tid + WGS * i) is position start + x; outputs are the tile inside the halo.
  const int start = int(gl_WorkGroupID.x * tile) - int(halo);
  const bool mean = (p.flags & 1u) != 0u;
  const bool separate = (p.flags & 2u) != 0u;
  const bool poolFirst = (p.flags & 4u) != 0u;
  const uint rowsPerHead = separate ? p.window : 1u;

  for (uint r = tid; r < NR; r += WGS) {
    float mx = NEG_INF;
    for (uint s = 0; s < S; s++) mx = max(mx, stats[(hi * S + s) * NR + r].x);
    float ls = 0.0;
    for (uint s = 0; s < S; s++) {
      const vec2 st = stats[(hi * S + s) * NR + r];
      if (st.x != NEG_INF) ls += st.y * exp2(st.x - mx);
    }
    stM[r] = mx;
    stInv[r] = ls > 0.0 ? 1.0 / ls : 0.0;
  }
  for (uint x = tid; x < G * SPAN; x += WGS) pg[x] = 0.0;

  const uint wstep = separate ? 1u : QC / G;
  for (uint w0 = 0; w0 < p.window; w0 += wstep) {
    const uint w1 = min(p.window, w0 + wstep);
    const uint r0 = w0 * G;
    const uint nr = (w1 - w0) * G;
    barrier();
    for (uint i = tid; i < QC * D4; i += WGS) {
      const uint r = r0 + i / D4;
      qs[i] = i / D4 < nr ? q4[p.qOff4 + (r / G) * p.qStride4 + (h * G + r % G) * D4 + i % D4] * p.scale
                          : vec4(0.0);
    }
    barrier();
    float sv[QC * P];
    [[unroll]] for (uint i = 0; i < QC * P; i++) sv[i] = 0.0;
    [[dont_unroll]] for (uint c = 0; c < D8; c++) {
      vec4 ka[P];
      vec4 kb[P];
      [[unroll]] for (uint i = 0; i < P; i++) {
        const int j = clamp(start + int(tid + WGS * i), 0, int(p.n) - 1);
        const uvec4 w = k8[(base + uint(j)) * D8 + c];
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
      const int j = start + int(tid + WGS * i);
      if (j >= 0 && j < int(p.n)) { // padding positions keep 0
        [[unroll]] for (uint r = 0; r < QC; r++) {
          if (r < nr) pg[(r % G) * SPAN + tid + WGS * i] += exp2(sv[r * P + i] - stM[r0 + r]) * stInv[r0 + r];
        }
      }
    }
    if (separate || w1 == p.window) {
      const uint orow = separate ? w0 : 0u;
      barrier();
      if (!poolFirst) {
        for (uint x = tid; x < SPAN; x += WGS) rv[x] = reduceG(x, mean);
      }
      barrier();
      for (uint x = halo + tid; x < halo + tile; x += WGS) {
        const int j = start + int(x);
        if (j < 0 || j >= int(p.n)) continue;
        float v;
        if (poolFirst) {
          v = 0.0;
          for (uint g = 0; g < G; g++) {
            float acc = 0.0;
            for (uint d = 0; d < p.kernel; d++) acc += pg[g * SPAN + x - halo + d];
            acc /= float(p.kernel);
            v = g == 0 ? acc : (mean ? v + acc : max(v, acc));
          }
          if (mean) v /= float(G);
        } else {
          v = 0.0;
          for (uint d = 0; d < p.kernel; d++) v += rv[x - halo + d];
          v /= float(p.kernel);
        }
        outv[p.outOff + (hi * rowsPerHead + orow) * p.outStride + uint(j)] = v;
      }
      barrier();
      for (uint x = tid; x < G * SPAN; x += WGS) pg[x] = 0.0;
    }
  }
}
