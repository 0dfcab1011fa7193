#version 450
// Pooled attention scores from stored logits (src/kernels/scores.ts recordPooledLogits): the
// logits HeteroCache's decode attention stored for one pivot (its G query heads over rows
// [0, n), log2 domain) and their softmax statistics (max, 1 / sum) become the row that
// scores_pool*.comp computes from the keys for a window of one query: per position x,
// reduce_g(avgpool(p_g))[x] (pool first) or avgpool(reduce_g p_g)[x]; avgpool has an odd width K,
// zero padding and always divides by K; reduce_g is max or mean.
//
// Each invocation owns P consecutive positions and reads the P + 2H logits its pooling window
// reaches, one query head at a time, so its registers hold one head's probabilities and the
// running reduction (the key-reading pool kernels keep every head's sums at once, which spills
// on llvmpipe for G = 8). TEXEL: the logits as a uniform texel buffer of 4-float texels (rows
// start on a texel), which llvmpipe gathers for all lanes at once where it loads storage
// buffers lane by lane.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint G = 4;
layout(constant_id = 2) const uint P = 16; // positions per invocation
layout(constant_id = 3) const uint K = 5;  // pool width (odd)

const uint H = K / 2;
const uint E = P + 2 * H;

#ifdef TEXEL
layout(binding = 0) uniform highp usamplerBuffer lt; // [G][stride] as 4-float texels
#else
layout(std430, binding = 0) readonly buffer Lb { float logits[]; }; // [G][stride]
#endif
layout(std430, binding = 1) readonly buffer Sb { vec2 stats[]; };   // (max, 1 / sum) per head
layout(std430, binding = 2) writeonly buffer Ob { float outv[]; };

layout(push_constant) uniform Push {
  uint n;
  uint stride;   // floats between query heads' rows (TEXEL: a multiple of 4)
  uint statsOff; // vec2 index of query head 0's statistics
  uint outOff;   // float offset of the output row
  uint flags;    // 1 = mean over G (else max), 4 = pool first
} p;

const float FLUSH = -100.0;

// 2^x, or 0 when x < FLUSH; llvmpipe runs denormals ~30x slower.
float pexp(float x) {
  return x >= FLUSH ? exp2(max(x, FLUSH)) : 0.0;
}

void main() {
  const int x0 = int(gl_GlobalInvocationID.x * P);
  const int n = int(p.n);
  if (x0 >= n) return;
  const bool mean = (p.flags & 1u) != 0u;
  const bool poolFirst = (p.flags & 4u) != 0u;
  float red[E]; // reduce-first: reduce_g of the probabilities per slot (position x0 - H + e)
  float res[P]; // pool-first: reduce_g of the pooled probabilities per output position
  [[unroll]] for (uint e = 0; e < E; e++) red[e] = 0.0;
  [[unroll]] for (uint x = 0; x < P; x++) res[x] = 0.0;
  [[unroll]] for (uint g = 0; g < G; g++) {
    const vec2 st = stats[p.statsOff + g];
    float pr[E];
#ifdef TEXEL
    // Texels from the aligned one HA <= H + 3 positions before x0 (x0 is a multiple of 4).
    const uint HA = (H + 3u) / 4u * 4u;
    const uint NT = (P + 2u * HA + 3u) / 4u;
    const int row = int(g * p.stride / 4u);
    const int last = (n + 3) / 4 - 1;
    float w[NT * 4u];
    [[unroll]] for (uint t = 0; t < NT; t++) {
      const int ti = (x0 - int(HA)) / 4 + int(t);
      const vec4 v = uintBitsToFloat(texelFetch(lt, row + clamp(ti, 0, last)));
      w[4 * t] = v.x;
      w[4 * t + 1] = v.y;
      w[4 * t + 2] = v.z;
      w[4 * t + 3] = v.w;
    }
#endif
    [[unroll]] for (uint e = 0; e < E; e++) {
      const int j = x0 - int(H) + int(e);
#ifdef TEXEL
      const float v = w[e + HA - H];
#else
      const float v = logits[g * p.stride + uint(clamp(j, 0, n - 1))];
#endif
      pr[e] = j >= 0 && j < n ? pexp(v - st.x) * st.y : 0.0;
    }
    if (poolFirst) {
      [[unroll]] for (uint x = 0; x < P; x++) {
        float a = 0.0;
        [[unroll]] for (uint d = 0; d < K; d++) a += pr[x + d];
        res[x] = g == 0u ? a : (mean ? res[x] + a : max(res[x], a));
      }
    } else {
      [[unroll]] for (uint e = 0; e < E; e++) {
        red[e] = g == 0u ? pr[e] : (mean ? red[e] + pr[e] : max(red[e], pr[e]));
      }
    }
  }
  const float div = float(K) * (mean ? float(G) : 1.0);
  [[unroll]] for (uint x = 0; x < P; x++) {
    float v = res[x];
    if (!poolFirst) {
      v = 0.0;
      [[unroll]] for (uint d = 0; d < K; d++) v += red[x + d];
    }
    if (x0 + int(x) < n) outv[p.outOff + uint(x0) + x] = v / div;
  }
}
