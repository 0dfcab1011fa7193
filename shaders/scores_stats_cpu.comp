#version 450
// Attention scores, pass 1 of 3 for SIMD CPU drivers (lavapipe): softmax statistics, same
// output as scores_stats.comp. For the W x G query rows of one KV head (row r = w * G + g) and
// the head's rows [s * perSplit, (s+1) * perSplit) of [0, n), leaves one (m, l) per lane: m =
// max of the scaled logits (log2 domain) over the lane's rows, l = sum of 2^(logit - m)
// (m = -inf, l = 0 for a lane without rows). scores_merge.comp merges splits x lanes.
//
// Why a different kernel: llvmpipe turns every shared or buffer load into a loop over the lanes
// and runs the subgroups of a workgroup one after another. Here a workgroup is one subgroup, each
// lane owns whole key rows (blocks of PB consecutive positions, interleaved over the lanes) and
// keeps a chunk of QC query rows in registers, so a key row is loaded once and nothing goes
// through shared memory; the online softmax rescales once per block. Lanes never meet.
#extension GL_GOOGLE_include_directive : require
#extension GL_KHR_shader_subgroup_shuffle : require
#include "common.glsl"
layout(local_size_x_id = 0) in;
layout(constant_id = 0) const uint L = 8;   // lanes = workgroup size
layout(constant_id = 1) const uint G = 4;
layout(constant_id = 2) const uint D = 128;
layout(constant_id = 3) const uint QC = 8;  // query rows held at once
layout(constant_id = 4) const uint PB = 4;  // positions per lane per block

const uint D4 = D / 4;
const uint D8 = D / 8;
const uint QL = (D4 + L - 1) / L; // q loads per lane per row

layout(std430, binding = 0) readonly buffer Qb { vec4 q4[]; };
#ifdef TEXEL
// K as a uniform texel buffer of R32G32B32A32_UINT (8 halves per texel): llvmpipe gathers a
// texel for all lanes at once where it loads storage buffers lane by lane.
layout(binding = 1) uniform highp usamplerBuffer kt;
#define LOADK(i) texelFetch(kt, int(i))
#else
layout(std430, binding = 1) readonly buffer Kb { uvec4 k8[]; };
#define LOADK(i) k8[i]
#endif
layout(std430, binding = 2) readonly buffer Tb { uint tab[]; };
layout(std430, binding = 3) writeonly buffer Sb { vec2 stats[]; }; // per head: [split][lane][row]
#ifdef HC_STORE_LOGITS
// The scaled logits themselves, per head [row][n] at hi * logitStride: the pool pass reads them
// back instead of recomputing every dot product (scores_pool_logits_cpu.comp).
layout(std430, binding = 4) writeonly buffer Lb { float logits[]; };
#endif

layout(push_constant) uniform Push {
  uint headBase;
  uint n;         // rows [0, n) of each head are scored
  uint window;    // W
  uint qOff4;     // vec4 offset of window query 0, query head 0
  uint qStride4;  // vec4 stride between window queries
  uint perSplit;  // rows per split (grid x = ceil(n / perSplit))
  float scale;    // log2(e) / sqrt(D)
  uint headStride; // vec2 entries per head region of `stats`
  uint logitStride; // floats per head region of `logits` (HC_STORE_LOGITS)
} p;

const float NEG_INF = -1.0 / 0.0;
const float FLUSH = -100.0;

// 2^x, or 0 when x < FLUSH (also for x = -inf or NaN); llvmpipe runs denormals ~30x slower.
float pexp(float x) {
  return x >= FLUSH ? exp2(max(x, FLUSH)) : 0.0;
}

void main() {
  const uint lane = gl_LocalInvocationID.x;
  const uint S = gl_NumWorkGroups.x;
  const uint s = gl_WorkGroupID.x;
  const uint hi = gl_WorkGroupID.y;
  const uint h = p.headBase + hi;
  const uint base = tab[2 * h];
  const uint NR = p.window * G;
  const uint j0 = min(p.n, s * p.perSplit);
  const uint j1 = min(p.n, j0 + p.perSplit);

  for (uint r0 = 0; r0 < NR; r0 += QC) {
    // The chunk's query rows enter through a rolled loop that shifts the register array by one
    // row per trip (unrolled, QC rows of loads would blow up llvmpipe's compile time).
    vec4 q[QC * D4];
    [[dont_unroll]] for (uint it = 0; it < QC; it++) {
      [[unroll]] for (uint i = 0; i < QC - 1u; i++) {
        [[unroll]] for (uint c = 0; c < D4; c++) q[i * D4 + c] = q[(i + 1) * D4 + c];
      }
      const uint r = min(r0 + it, NR - 1u);
      const uint qa = p.qOff4 + (r / G) * p.qStride4 + (h * G + r % G) * D4;
      // The lanes load the row together; each vec4 reaches every lane by a constant-index
      // shuffle (a register permute), so the row costs D4 / L load instructions, not D4.
      vec4 ld[QL];
      [[unroll]] for (uint i = 0; i < QL; i++) ld[i] = q4[qa + min(i * L + lane, D4 - 1u)];
      [[unroll]] for (uint c = 0; c < D4; c++) {
        q[(QC - 1u) * D4 + c] = subgroupShuffle(ld[c / L], c % L) * p.scale;
      }
    }
    float m[QC];
    float l[QC];
    [[unroll]] for (uint r = 0; r < QC; r++) {
      m[r] = NEG_INF;
      l[r] = 0.0;
    }
    for (uint jb = j0 + lane * PB; jb < j1; jb += L * PB) {
      float sv[QC * PB];
      [[unroll]] for (uint u = 0; u < PB; u++) {
        const uint at = (base + min(jb + u, j1 - 1u)) * D8;
        [[unroll]] for (uint r = 0; r < QC; r++) sv[r * PB + u] = 0.0;
        [[unroll]] for (uint c = 0; c < D8; c++) {
          const uvec4 w = LOADK(at + c);
          const vec4 a = vec4(unpackHalf2x16(w.x), unpackHalf2x16(w.y));
          const vec4 b = vec4(unpackHalf2x16(w.z), unpackHalf2x16(w.w));
          [[unroll]] for (uint r = 0; r < QC; r++) {
            sv[r * PB + u] += dot(q[r * D4 + 2 * c], a) + dot(q[r * D4 + 2 * c + 1], b);
          }
        }
#ifdef HC_STORE_LOGITS
        if (jb + u < j1) {
          [[unroll]] for (uint r = 0; r < QC; r++) {
            if (r0 + r < NR) logits[hi * p.logitStride + (r0 + r) * p.n + jb + u] = sv[r * PB + u];
          }
        }
#endif
        [[unroll]] for (uint r = 0; r < QC; r++) {
          sv[r * PB + u] = jb + u < j1 ? sv[r * PB + u] : NEG_INF;
        }
      }
      [[unroll]] for (uint r = 0; r < QC; r++) {
        float mb = sv[r * PB];
        [[unroll]] for (uint u = 1; u < PB; u++) mb = max(mb, sv[r * PB + u]);
        const float mn = max(m[r], mb);
        float acc = l[r] * pexp(m[r] - mn);
        [[unroll]] for (uint u = 0; u < PB; u++) acc += pexp(sv[r * PB + u] - mn);
        m[r] = mn;
        l[r] = acc;
      }
    }
    // Every lane leaves its own record per row (no cross-lane reduction: on llvmpipe those are
    // loops over the lanes behind barriers); scores_merge.comp combines splits x lanes. A rolled
    // loop shifts the rows out one per trip.
    [[dont_unroll]] for (uint it = 0; it < QC; it++) {
      if (r0 + it < NR) stats[hi * p.headStride + (s * L + lane) * NR + r0 + it] = vec2(m[0], l[0]);
      [[unroll]] for (uint r = 0; r < QC - 1u; r++) {
        m[r] = m[r + 1];
        l[r] = l[r + 1];
      }
    }
  }
}
