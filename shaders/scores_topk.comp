#version 450
// Top-k of f32 rows by radix select: one workgroup per row finds the k-th largest value exactly
// (four 8-bit histogram passes over an order-preserving integer key), then writes the indices of
// every value above it plus the lowest-positioned ties, in ascending position order. Same set as
// src/cache/analysis.ts topkSet: NaN counts as -inf, ties go to lower positions.
// Writes min(k, n) indices per row.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
layout(local_size_x_id = 0) in;
layout(constant_id = 0) const uint WGS = 256;

layout(std430, binding = 0) readonly buffer Rb { uint bits[]; }; // f32 rows, read as bits
layout(std430, binding = 1) writeonly buffer Ob { uint idx[]; };

layout(push_constant) uniform Push {
  uint n;
  uint k;
  uint rowOff;    // element offset of row 0
  uint rowStride; // elements between rows
  uint outOff;
  uint outStride;
} p;

shared uint hist[256];
shared uint pick[2];
shared uvec2 scan[WGS];

uint keyOf(uint b) {
  if ((b & 0x7fffffffu) > 0x7f800000u) return 0u; // NaN: below everything (-inf maps above 0)
  if ((b & 0x7fffffffu) == 0u) b = 0u;             // -0 == +0
  return (b & 0x80000000u) != 0u ? ~b : (b | 0x80000000u);
}

void main() {
  const uint tid = gl_LocalInvocationID.x;
  const uint row = gl_WorkGroupID.y * gl_NumWorkGroups.x + gl_WorkGroupID.x;
  const uint n = p.n;
  const uint kk = min(p.k, n);
  if (kk == 0u) return;
  const uint src = p.rowOff + row * p.rowStride;
  const uint dst = p.outOff + row * p.outStride;
  const uint chunk = (n + WGS - 1) / WGS;
  const uint a = min(n, tid * chunk);
  const uint b = min(n, a + chunk);
  if (kk == n) {
    for (uint i = tid; i < n; i += WGS) idx[dst + i] = i;
    return;
  }

  uint prefix = 0u;
  uint mask = 0u;
  uint need = kk;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (uint i = tid; i < 256u; i += WGS) hist[i] = 0u;
    barrier();
    for (uint i = tid; i < n; i += WGS) {
      const uint key = keyOf(bits[src + i]);
      if ((key & mask) == prefix) atomicAdd(hist[(key >> shift) & 255u], 1u);
    }
    barrier();
    if (tid == 0u) {
      uint cum = 0u;
      for (int bin = 255; bin >= 0; bin--) {
        const uint c = hist[bin];
        if (cum + c >= need) {
          pick[0] = prefix | (uint(bin) << shift);
          pick[1] = need - cum;
          break;
        }
        cum += c;
      }
    }
    barrier();
    prefix = pick[0];
    need = pick[1];
    mask |= 255u << shift;
  }
  // prefix is now the k-th largest key; take everything above it and the first `need` equal ones.
  uvec2 own = uvec2(0u);
  for (uint i = a; i < b; i++) {
    const uint key = keyOf(bits[src + i]);
    own += uvec2(key > prefix ? 1u : 0u, key == prefix ? 1u : 0u);
  }
  scan[tid] = own;
  barrier();
  for (uint off = 1u; off < WGS; off <<= 1) {
    const uvec2 t = tid >= off ? scan[tid - off] : uvec2(0u);
    barrier();
    scan[tid] += t;
    barrier();
  }
  const uvec2 before = scan[tid] - own;
  uint eqSeen = before.y;
  uint w = dst + before.x + min(before.y, need);
  for (uint i = a; i < b; i++) {
    const uint key = keyOf(bits[src + i]);
    if (key > prefix) {
      idx[w++] = i;
    } else if (key == prefix) {
      if (eqSeen < need) idx[w++] = i;
      eqSeen++;
    }
  }
}
