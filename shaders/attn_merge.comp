#version 450
// Decode attention, merge pass: one workgroup per query head combines the online-softmax
// partials that attn_decode.comp left for its KV head (the split count is recomputed from the
// head's length exactly as the split pass did) and writes the normalised output.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint G = 4;
layout(constant_id = 2) const uint D = 128;

layout(std430, binding = 0) readonly buffer Pb { float part[]; };
layout(std430, binding = 1) readonly buffer Tb { uint tab[]; };
layout(std430, binding = 2) readonly buffer Lb { uint lens[]; };
layout(std430, binding = 3) writeonly buffer Ob { float outv[]; }; // [nHeads][D] f32
#ifdef WATCH
// Watched heads (see attn_decode_cpu.comp): per query head, the fractions of its attention
// mass on held prompt rows and on all prompt rows; with a logits offset also the softmax
// statistics of its prompt rows, (max, 1 / sum) in the log2 domain of the stored logits, the
// form scores_pool_cpu.comp reads.
layout(std430, binding = 4) readonly buffer Wt { uint watchTab[]; };
layout(std430, binding = 5) writeonly buffer Cb { float cov[]; };
#endif

layout(push_constant) uniform Push {
  uint splits;   // S of the split pass
  uint minTok;
  uint mlOff;
  uint outOff;   // float offset of query head 0's output
  uint perSplit; // records per split and query head (1, or the lanes of attn_decode_cpu)
  uint window;   // sliding window (0: none), as the split pass had it
#ifdef WATCH
  uint covOff;   // float offset of the (held, prompt) mass records
  uint covOut;   // float offset of query head 0's (held, prompt) fractions in cov
  uint statsOut; // float offset of query head 0's prompt (max, 1 / sum) in cov
#endif
} p;

void main() {
  const uint WG = gl_WorkGroupSize.x;
  const uint qh = gl_WorkGroupID.x;
  const uint h = qh / G;
  const uint g = qh % G;
  const uint S = p.splits;
  const uint len = p.window != 0u ? min(lens[h], p.window) : min(lens[h], tab[2 * h + 1]);
  const uint ns = clamp((len + p.minTok - 1) / p.minTok, 1u, S);

  const uint nr = ns * p.perSplit;
  const uint r0 = h * S * p.perSplit; // record (split j, sub-record i) of this KV head: r0 + j * perSplit + i

  float mx = -1.0 / 0.0;
  for (uint j = 0; j < nr; j++) mx = max(mx, part[p.mlOff + ((r0 + j) * G + g) * 2]);
  float lsum = 0.0;
  for (uint j = 0; j < nr; j++) {
    const uint r = (r0 + j) * G + g;
    const float mj = part[p.mlOff + r * 2];
    if (mj != -1.0 / 0.0) lsum += exp2(mj - mx) * part[p.mlOff + r * 2 + 1];
  }
  const float inv = lsum > 0.0 ? 1.0 / lsum : 0.0;
#ifdef WATCH
  const uint NONE = 0xFFFFFFFFu;
  if (gl_LocalInvocationID.x == 0u && (watchTab[2 * h] != NONE || watchTab[2 * h + 1] != NONE)) {
    float hsum = 0.0;
    float psum = 0.0;
    for (uint j = 0; j < nr; j++) {
      const uint r = (r0 + j) * G + g;
      const float mj = part[p.mlOff + r * 2];
      if (mj != -1.0 / 0.0) {
        const float w = exp2(mj - mx);
        hsum += w * part[p.covOff + r * 2];
        psum += w * part[p.covOff + r * 2 + 1];
      }
    }
    cov[p.covOut + qh * 2] = hsum * inv;
    cov[p.covOut + qh * 2 + 1] = psum * inv;
    if (watchTab[2 * h + 1] != NONE) {
      cov[p.statsOut + qh * 2] = mx;
      cov[p.statsOut + qh * 2 + 1] = psum > 0.0 ? 1.0 / psum : 0.0;
    }
  }
#endif
  for (uint d = gl_LocalInvocationID.x; d < D; d += WG) {
    float acc = 0.0;
    for (uint j = 0; j < nr; j++) {
      const uint r = (r0 + j) * G + g;
      const float mj = part[p.mlOff + r * 2];
      if (mj != -1.0 / 0.0) acc += exp2(mj - mx) * part[r * D + d];
    }
    outv[p.outOff + qh * D + d] = acc * inv;
  }
}
