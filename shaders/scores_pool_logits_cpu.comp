#version 450
// Attention scores, pass 3 of 3 for SIMD CPU drivers when the stats pass stored the logits
// (scores_stats_cpu.comp built with HC_STORE_LOGITS): the output of scores_pool_cpu.comp, but
// each probability comes from one stored logit instead of a D-wide dot product. That pass
// recomputes every dot product of the P + 2 * H positions a lane's pooling window reaches, for
// every window: for drift checks (G x 5 query rows) it was most of the work.
//
// Each lane owns P consecutive output positions; positions stream through a rolled loop of PK
// per trip that rotates the E-slot per-head sums, as in scores_pool_cpu.comp.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
layout(local_size_x_id = 0) in;
layout(constant_id = 0) const uint L = 8;    // lanes = workgroup size
layout(constant_id = 1) const uint G = 4;
layout(constant_id = 2) const uint WC = 1;   // windows per chunk (1 when windows are separate)
layout(constant_id = 3) const uint P = 16;   // output positions per lane
layout(constant_id = 4) const uint K = 5;    // pool width (odd)
layout(constant_id = 5) const uint SEP = 1;  // 1: one output row per window; 0: windows summed
layout(constant_id = 6) const uint PK = 4;   // positions per trip of the position loop

const uint QC = WC * G;      // query rows per chunk
const uint H = K / 2;
const uint E0 = P + 2 * H;   // positions whose probabilities a lane needs
const uint E = (E0 + PK - 1) / PK * PK; // rounded up to whole trips

layout(std430, binding = 0) readonly buffer Sb { vec2 stats[]; };
layout(std430, binding = 1) readonly buffer Lb { float logits[]; };
layout(std430, binding = 2) writeonly buffer Ob { float outv[]; };

layout(push_constant) uniform Push {
  uint n;
  uint window;
  uint records;     // records of the stats pass per row (splits x lanes)
  uint flags;       // 1 = mean over G (else max), 4 = pool first
  uint headStride;  // vec2 entries per head region of `stats`
  uint outOff;      // float offset of the first output row
  uint outStride;   // floats between output rows
  uint logitStride; // floats per head region of `logits`
} p;

const float FLUSH = -100.0;

// 2^x, or 0 when x < FLUSH; llvmpipe runs denormals ~30x slower.
float pexp(float x) {
  return x >= FLUSH ? exp2(max(x, FLUSH)) : 0.0;
}

void main() {
  const uint lane = gl_LocalInvocationID.x;
  const uint hi = gl_WorkGroupID.y;
  const uint NR = p.window * G;
  const uint merged = hi * p.headStride + p.records * NR;
  const uint lbase = hi * p.logitStride;
  const int x0 = int((gl_WorkGroupID.x * L + lane) * P);
  const bool mean = (p.flags & 1u) != 0u;
  const bool poolFirst = (p.flags & 4u) != 0u;
  const uint rowsPerHead = SEP != 0u ? p.window : 1u;

  float acc[G * E]; // per query head g and slot e (position x0 - H + e): summed probabilities
  [[unroll]] for (uint i = 0; i < G * E; i++) acc[i] = 0.0;

  for (uint w0 = 0; w0 < p.window; w0 += WC) {
    float mr[QC];
    float il[QC];
    [[unroll]] for (uint r = 0; r < QC; r++) {
      const uint rr = w0 * G + r;
      const vec2 st = stats[merged + min(rr, NR - 1u)];
      mr[r] = st.x;
      il[r] = rr < NR ? st.y : 0.0; // rows past the last window add nothing
    }

    [[dont_unroll]] for (uint e0 = 0; e0 < E; e0 += PK) {
      float pn[PK * G];
      [[unroll]] for (uint u = 0; u < PK; u++) {
        const int j = x0 - int(H) + int(e0 + u);
        const bool valid = j >= 0 && j < int(p.n);
        const uint jj = uint(clamp(j, 0, int(p.n) - 1));
        [[unroll]] for (uint g = 0; g < G; g++) pn[u * G + g] = 0.0;
        [[unroll]] for (uint r = 0; r < QC; r++) {
          const uint row = min(w0 * G + r, NR - 1u);
          pn[u * G + r % G] += pexp(logits[lbase + row * p.n + jj] - mr[r]) * il[r];
        }
        [[unroll]] for (uint g = 0; g < G; g++) pn[u * G + g] = valid ? pn[u * G + g] : 0.0;
      }
      // Rotate: slots 0 .. PK-1 (these positions) take their sums and move to the end.
      [[unroll]] for (uint g = 0; g < G; g++) {
        float head[PK];
        [[unroll]] for (uint u = 0; u < PK; u++) head[u] = acc[g * E + u] + pn[u * G + g];
        [[unroll]] for (uint i = 0; i < E - PK; i++) acc[g * E + i] = acc[g * E + i + PK];
        [[unroll]] for (uint u = 0; u < PK; u++) acc[g * E + E - PK + u] = head[u];
      }
    }

    if (SEP != 0u || w0 + WC >= p.window) {
      float red[E]; // reduce_g per slot (reduce-first order)
      [[unroll]] for (uint e = 0; e < E; e++) {
        float v = acc[e];
        [[unroll]] for (uint g = 1; g < G; g++) v = mean ? v + acc[g * E + e] : max(v, acc[g * E + e]);
        red[e] = mean ? v / float(G) : v;
      }
      float vo[P];
      [[unroll]] for (uint x = 0; x < P; x++) {
        float pooled = 0.0;
        [[unroll]] for (uint d = 0; d < K; d++) pooled += red[x + d];
        float pf = 0.0;
        [[unroll]] for (uint g = 0; g < G; g++) {
          float a = 0.0;
          [[unroll]] for (uint d = 0; d < K; d++) a += acc[g * E + x + d];
          pf = g == 0u ? a : (mean ? pf + a : max(pf, a));
        }
        if (mean) pf /= float(G);
        vo[x] = (poolFirst ? pf : pooled) / float(K);
      }
      const uint orow = SEP != 0u ? w0 : 0u;
      const uint ob = p.outOff + (hi * rowsPerHead + orow) * p.outStride;
      [[dont_unroll]] for (uint x = 0; x < P; x++) {
        const int j = x0 + int(x);
        if (j < int(p.n)) outv[ob + uint(j)] = vo[0];
        [[unroll]] for (uint i = 0; i < P - 1u; i++) vo[i] = vo[i + 1];
      }
      [[unroll]] for (uint i = 0; i < G * E; i++) acc[i] = 0.0;
    }
  }
}
