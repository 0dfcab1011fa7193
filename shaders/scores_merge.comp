#version 450
// Attention scores, pass 2 of 3 for CPU drivers: merges the per-lane split statistics of
// scores_stats_cpu.comp into one (m, 1 / l) per query row, after the records in each head region
// of `stats` ([record][row] then [row]). One workgroup per head, invocations over the rows.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
layout(local_size_x_id = 0) in;

layout(std430, binding = 0) buffer Sb { vec2 stats[]; };

layout(push_constant) uniform Push {
  uint rows;       // W * G query rows
  uint records;    // splits x lanes
  uint headStride; // vec2 entries per head region
} p;

const float NEG_INF = -1.0 / 0.0;

void main() {
  const uint at = gl_WorkGroupID.y * p.headStride;
  for (uint r = gl_LocalInvocationID.x; r < p.rows; r += gl_WorkGroupSize.x) {
    float mx = NEG_INF;
    for (uint s = 0; s < p.records; s++) mx = max(mx, stats[at + s * p.rows + r].x);
    float ls = 0.0;
    for (uint s = 0; s < p.records; s++) {
      const vec2 st = stats[at + s * p.rows + r];
      // A split's share below 2^-100 of the total is dropped (no denormals on CPU drivers).
      const float d = st.x - mx;
      if (d >= -100.0) ls += st.y * exp2(d);
    }
    stats[at + p.records * p.rows + r] = vec2(mx, ls > 0.0 ? 1.0 / ls : 0.0);
  }
}
