#version 450
// Attention scores, pass 3 of 3 for SIMD CPU drivers (lavapipe): same output as
// scores_pool.comp (see there and src/kernels/scores.ts for the flags), from the merged (m, 1/l)
// of scores_merge.comp.
//
// Built with HC_STORE_LOGITS, it reads the scaled logits scores_stats_cpu.comp stored (binding 5)
// instead of recomputing them: for drift checks (G x 5 query rows) the dot products were most of
// the work of the two passes.
//
// Each lane owns P consecutive output positions x0 .. x0 + P - 1 and recomputes the
// probabilities of the P + 2 * H positions its pooling window reaches (H = K / 2 halo on each
// side; E slots rounded up to whole trips), for a chunk of WC windows (all G query heads of
// each) held in registers. Positions stream through a rolled loop: each trip loads PK key rows,
// adds their probabilities to the per-head sums and rotates the E-slot sum arrays by PK, so
// after E / PK trips every slot is back in place with its position's sum. Pooling and the group reduction then run in registers. No
// shared memory, no barriers, and the unrolled code stays one position wide (llvmpipe's compile
// time grows with it).
#extension GL_GOOGLE_include_directive : require
#extension GL_KHR_shader_subgroup_shuffle : require
#include "common.glsl"
layout(local_size_x_id = 0) in;
layout(constant_id = 0) const uint L = 8;    // lanes = workgroup size
layout(constant_id = 1) const uint G = 4;
layout(constant_id = 2) const uint D = 128;
layout(constant_id = 3) const uint WC = 1;   // windows per chunk (1 when windows are separate)
layout(constant_id = 4) const uint P = 16;   // output positions per lane
layout(constant_id = 5) const uint K = 5;    // pool width (odd)
layout(constant_id = 6) const uint SEP = 1;  // 1: one output row per window; 0: windows summed
layout(constant_id = 7) const uint PK = 4;   // positions per trip of the position loop

const uint D4 = D / 4;
const uint D8 = D / 8;
const uint QL = (D4 + L - 1) / L; // q loads per lane per row
const uint QC = WC * G;      // query rows per chunk
const uint H = K / 2;
const uint E0 = P + 2 * H;   // positions whose probabilities a lane needs
const uint E = (E0 + PK - 1) / PK * PK; // rounded up to whole trips

layout(std430, binding = 0) readonly buffer Qb { vec4 q4[]; };
layout(std430, binding = 1) readonly buffer Kb { uvec4 k8[]; };
layout(std430, binding = 2) readonly buffer Tb { uint tab[]; };
layout(std430, binding = 3) readonly buffer Sb { vec2 stats[]; };
layout(std430, binding = 4) writeonly buffer Ob { float outv[]; };
#ifdef HC_STORE_LOGITS
layout(std430, binding = 5) readonly buffer Lb { float logits[]; }; // per head [row][n]
#endif

layout(push_constant) uniform Push {
  uint headBase;
  uint n;
  uint window;
  uint qOff4;
  uint qStride4;
  uint records;    // records of the stats pass per row (splits x lanes)
  float scale;
  uint flags;      // 1 = mean over G (else max), 4 = pool first
  uint headStride; // vec2 entries per head region of `stats`
  uint outOff;     // float offset of the first output row
  uint outStride;  // floats between output rows
  uint logitStride; // floats per head region of `logits` (HC_STORE_LOGITS)
} p;

const float FLUSH = -100.0;

// 2^x, or 0 when x < FLUSH; llvmpipe runs denormals ~30x slower.
float pexp(float x) {
  return x >= FLUSH ? exp2(max(x, FLUSH)) : 0.0;
}

void main() {
  const uint lane = gl_LocalInvocationID.x;
  const uint hi = gl_WorkGroupID.y;
  const uint h = p.headBase + hi;
  const uint base = tab[2 * h];
  const uint NR = p.window * G;
  const uint merged = hi * p.headStride + p.records * NR;
  const int x0 = int((gl_WorkGroupID.x * L + lane) * P);
  const bool mean = (p.flags & 1u) != 0u;
  const bool poolFirst = (p.flags & 4u) != 0u;
  const uint rowsPerHead = SEP != 0u ? p.window : 1u;

  float acc[G * E]; // per query head g and slot e (position x0 - H + e): summed probabilities
  [[unroll]] for (uint i = 0; i < G * E; i++) acc[i] = 0.0;

  for (uint w0 = 0; w0 < p.window; w0 += WC) {
    // The chunk's rows (and their statistics) enter through a rolled loop that shifts the
    // register arrays by one row per trip.
#ifndef HC_STORE_LOGITS
    vec4 q[QC * D4];
#endif
    float mr[QC];
    float il[QC];
    [[dont_unroll]] for (uint it = 0; it < QC; it++) {
      [[unroll]] for (uint i = 0; i < QC - 1u; i++) {
#ifndef HC_STORE_LOGITS
        [[unroll]] for (uint c = 0; c < D4; c++) q[i * D4 + c] = q[(i + 1) * D4 + c];
#endif
        mr[i] = mr[i + 1];
        il[i] = il[i + 1];
      }
      const uint rr = w0 * G + it;
      const uint r = min(rr, NR - 1u);
#ifndef HC_STORE_LOGITS
      const uint qa = p.qOff4 + (r / G) * p.qStride4 + (h * G + r % G) * D4;
      // The lanes load the row together; each vec4 reaches every lane by a constant-index
      // shuffle (a register permute), so the row costs D4 / L load instructions, not D4.
      vec4 ld[QL];
      [[unroll]] for (uint i = 0; i < QL; i++) ld[i] = q4[qa + min(i * L + lane, D4 - 1u)];
      [[unroll]] for (uint c = 0; c < D4; c++) {
        q[(QC - 1u) * D4 + c] = subgroupShuffle(ld[c / L], c % L) * p.scale;
      }
#endif
      const vec2 st = stats[merged + r];
      mr[QC - 1u] = st.x;
      il[QC - 1u] = rr < NR ? st.y : 0.0; // rows past the last window add nothing
    }

    [[dont_unroll]] for (uint e0 = 0; e0 < E; e0 += PK) {
      float pn[PK * G];
      [[unroll]] for (uint u = 0; u < PK; u++) {
        const int j = x0 - int(H) + int(e0 + u);
        const bool valid = j >= 0 && j < int(p.n);
        const uint jj = uint(clamp(j, 0, int(p.n) - 1));
        float sv[QC];
#ifdef HC_STORE_LOGITS
        [[unroll]] for (uint r = 0; r < QC; r++) {
          sv[r] = logits[hi * p.logitStride + min(w0 * G + r, NR - 1u) * p.n + jj];
        }
#else
        const uint at = (base + jj) * D8;
        [[unroll]] for (uint r = 0; r < QC; r++) sv[r] = 0.0;
        [[unroll]] for (uint c = 0; c < D8; c++) {
          const uvec4 w = k8[at + c];
          const vec4 a = vec4(unpackHalf2x16(w.x), unpackHalf2x16(w.y));
          const vec4 b = vec4(unpackHalf2x16(w.z), unpackHalf2x16(w.w));
          [[unroll]] for (uint r = 0; r < QC; r++) {
            sv[r] += dot(q[r * D4 + 2 * c], a) + dot(q[r * D4 + 2 * c + 1], b);
          }
        }
#endif
        [[unroll]] for (uint g = 0; g < G; g++) pn[u * G + g] = 0.0;
        [[unroll]] for (uint r = 0; r < QC; r++) pn[u * G + r % G] += pexp(sv[r] - mr[r]) * il[r];
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
