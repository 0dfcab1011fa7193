// Shared helpers for every kernel. Conventions:
// - workgroup size is specialization constant 0 (`layout(local_size_x_id = 0) in;`), set from
//   the host; WG_MAX bounds the shared arrays;
// - f16 data is read as packed uint words and unpacked with unpackHalf2x16, so no 16-bit
//   storage feature is needed;
// - reductions use subgroup arithmetic when HC_SUBGROUP is defined (the `<name>__sg` variant),
//   else a shared-memory tree; results are identical up to float rounding order.
// - every per-invocation loop must stay far below lavapipe's 65535-iteration cap: spread work
//   over workgroups/invocations instead of looping long.
#ifndef HC_COMMON_GLSL
#define HC_COMMON_GLSL

#extension GL_EXT_control_flow_attributes : enable
#ifdef HC_SUBGROUP
#extension GL_KHR_shader_subgroup_basic : enable
#extension GL_KHR_shader_subgroup_arithmetic : enable
#endif

#define WG_MAX 1024

// Declared here too so that gl_WorkGroupSize inside the reductions below is the specialised
// size even when a shader includes this file before its own layout line.
layout(local_size_x_id = 0) in;

shared float hc_red[WG_MAX];

// GELU, tanh approximation, as ggml's CPU backend has it: 0.5 a (1 + tanh(sqrt(2 / pi) a
// (1 + 0.044715 a^2))) looked up at a rounded to f16, the result rounded to f16, 0 below -10
// and a above 10. tanh's argument is clamped (it saturates long before 15) so no exp overflows.
vec4 gelu_ggml(vec4 a) {
  const vec4 h = vec4(unpackHalf2x16(packHalf2x16(a.xy)), unpackHalf2x16(packHalf2x16(a.zw)));
  const vec4 t = tanh(clamp(0.7978845608 * h * (1.0 + 0.044715 * h * h), -15.0, 15.0));
  const vec4 y = 0.5 * h * (1.0 + t);
  const vec4 g = vec4(unpackHalf2x16(packHalf2x16(y.xy)), unpackHalf2x16(packHalf2x16(y.zw)));
  return mix(mix(g, a, greaterThanEqual(a, vec4(10.0))), vec4(0.0), lessThanEqual(a, vec4(-10.0)));
}

// A gated linear unit's output act(gate) * up: act 1 SiLU (SwiGLU), 2 GELU (GeGLU).
float glu_pair(uint act, float gate, float up) {
  if (act == 2u) return gelu_ggml(vec4(gate)).x * up;
  return gate / (1.0 + exp(-gate)) * up;
}

// Sum over the workgroup; every invocation gets the result. Must be reached by all invocations.
float wg_sum(float v) {
#ifdef HC_SUBGROUP
  float s = subgroupAdd(v);
  if (gl_NumSubgroups == 1) return s;
  if (subgroupElect()) hc_red[gl_SubgroupID] = s;
  barrier();
  float t = 0.0;
  for (uint i = 0; i < gl_NumSubgroups; i++) t += hc_red[i];
  barrier();
  return t;
#else
  uint n = gl_WorkGroupSize.x;
  uint i = gl_LocalInvocationID.x;
  hc_red[i] = v;
  barrier();
  for (uint s = n / 2; s > 0; s >>= 1) {
    if (i < s) hc_red[i] += hc_red[i + s];
    barrier();
  }
  float r = hc_red[0];
  barrier();
  return r;
#endif
}

float wg_max(float v) {
#ifdef HC_SUBGROUP
  float s = subgroupMax(v);
  if (gl_NumSubgroups == 1) return s;
  if (subgroupElect()) hc_red[gl_SubgroupID] = s;
  barrier();
  float t = hc_red[0];
  for (uint i = 1; i < gl_NumSubgroups; i++) t = max(t, hc_red[i]);
  barrier();
  return t;
#else
  uint n = gl_WorkGroupSize.x;
  uint i = gl_LocalInvocationID.x;
  hc_red[i] = v;
  barrier();
  for (uint s = n / 2; s > 0; s >>= 1) {
    if (i < s) hc_red[i] = max(hc_red[i], hc_red[i + s]);
    barrier();
  }
  float r = hc_red[0];
  barrier();
  return r;
#endif
}

#endif
