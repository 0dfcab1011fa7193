#version 450
// KV append: writes B tokens' K and V (f32, after RoPE) as f16 into rows of each KV head's slot
// region (layout: src/cache/kv_layer.ts). Grid y = heads of this dispatch, grid x covers B*D/8*2
// uvec4 outputs (K then V). lens[h] already counts the new tokens: rows lens[h]-B .. lens[h]-1.
// Rows at or past a head's capacity are never written (the host reports E_CONTEXT_FULL first),
// except in a ring (a sliding-window layer), where position r lands on row r % capacity.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint D = 128;
const uint D4 = D / 4;
const uint D8 = D / 8;

layout(std430, binding = 0) readonly buffer Kin { vec4 kin[]; };
layout(std430, binding = 1) readonly buffer Vin { vec4 vin[]; };
layout(std430, binding = 2) writeonly buffer Kp { uvec4 kpool[]; };
layout(std430, binding = 3) writeonly buffer Vp { uvec4 vpool[]; };
layout(std430, binding = 4) readonly buffer Tb { uint tab[]; };
layout(std430, binding = 5) readonly buffer Lb { uint lens[]; };

layout(push_constant) uniform Push {
  uint headBase;
  uint tokens;    // B
  uint kOff4;     // vec4 offset of token 0, head 0 in kin
  uint vOff4;
  uint tokStride4; // vec4 stride between tokens in kin / vin
  uint ring;       // 1: the head is a ring (sliding window): position r goes to row r % capRows
} p;

uvec4 pack8(vec4 a, vec4 b) {
  return uvec4(packHalf2x16(a.xy), packHalf2x16(a.zw), packHalf2x16(b.xy), packHalf2x16(b.zw));
}

void main() {
  const uint WG = gl_WorkGroupSize.x;
  const uint h = p.headBase + gl_WorkGroupID.y;
  const uint base = tab[2 * h];
  const uint cap = tab[2 * h + 1];
  const uint B = p.tokens;
  const uint len = lens[h];
  // A length smaller than the batch is a host bug: write nothing rather than wrap.
  const bool ok = len >= B;
  const uint start = len - B;
  const uint items = B * D8;
  const uint stride = WG * gl_NumWorkGroups.x;
  for (uint i = gl_WorkGroupID.x * WG + gl_LocalInvocationID.x; ok && i < 2 * items; i += stride) {
    const bool isV = i >= items;
    const uint j = isV ? i - items : i;
    const uint t = j / D8;
    const uint c = j % D8;
    if (p.ring == 0u && start + t >= cap) continue;
    const uint row = p.ring != 0u ? (start + t) % cap : start + t;
    const uint src = (isV ? p.vOff4 : p.kOff4) + t * p.tokStride4 + h * D4 + 2 * c;
    if (isV) {
      vpool[(base + row) * D8 + c] = pack8(vin[src], vin[src + 1]);
    } else {
      kpool[(base + row) * D8 + c] = pack8(kin[src], kin[src + 1]);
    }
  }
}
