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

#ifdef TEXEL
// The rows as a uniform texel buffer of R32G32B32A32_UINT (4 values per texel): llvmpipe
// gathers a texel for all lanes at once where it loads storage buffers lane by lane, and the
// six passes over a row are all loads.
layout(binding = 0) uniform highp usamplerBuffer rowsT;
#else
layout(std430, binding = 0) readonly buffer Rb { uint bits[]; }; // f32 rows, read as bits
#endif
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

// Values are visited four at a time: unit u holds the values at (absolute) elements 4u..4u+3;
// those outside the row [lo, hi) are not read (storage) or ignored (texel).
uvec4 unitAt(uint u, uint lo, uint hi) {
#ifdef TEXEL
  return texelFetch(rowsT, int(u));
#else
  uvec4 v = uvec4(0u);
  [[unroll]] for (uint c = 0u; c < 4u; c++) {
    const uint e = 4u * u + c;
    if (e >= lo && e < hi) v[c] = bits[e];
  }
  return v;
#endif
}

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
  const uint end = src + n;
  const uint dst = p.outOff + row * p.outStride;
  const uint u0 = src >> 2;
  const uint u1 = (end + 3u) >> 2;
  // Invocation tid's contiguous units, for the position-ordered passes.
  const uint chunk = (u1 - u0 + WGS - 1) / WGS;
  const uint a = min(u1, u0 + tid * chunk);
  const uint b = min(u1, a + chunk);
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
    for (uint u = u0 + tid; u < u1; u += WGS) {
      const uvec4 v = unitAt(u, src, end);
      [[unroll]] for (uint c = 0u; c < 4u; c++) {
        const uint e = 4u * u + c;
        const uint key = keyOf(v[c]);
        if (e >= src && e < end && (key & mask) == prefix) {
          atomicAdd(hist[(key >> shift) & 255u], 1u);
        }
      }
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
  for (uint u = a; u < b; u++) {
    const uvec4 v = unitAt(u, src, end);
    [[unroll]] for (uint c = 0u; c < 4u; c++) {
      const uint e = 4u * u + c;
      const uint key = keyOf(v[c]);
      if (e >= src && e < end) own += uvec2(key > prefix ? 1u : 0u, key == prefix ? 1u : 0u);
    }
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
  for (uint u = a; u < b; u++) {
    const uvec4 v = unitAt(u, src, end);
    [[unroll]] for (uint c = 0u; c < 4u; c++) {
      const uint e = 4u * u + c;
      const uint key = keyOf(v[c]);
      if (e < src || e >= end) continue;
      if (key > prefix) {
        idx[w++] = e - src;
      } else if (key == prefix) {
        if (eqSeen < need) idx[w++] = e - src;
        eqSeen++;
      }
    }
  }
}
