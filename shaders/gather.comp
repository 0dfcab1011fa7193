#version 450
#extension GL_GOOGLE_include_directive : require
// The local size comes before the include: glslang folds gl_WorkGroupSize in common.glsl
// to the default (1, 1, 1) when the include precedes it, which breaks wg_sum's shared path.
layout(local_size_x_id = 0) in;
#include "common.glsl"
// Row gather/scatter of raw 32-bit words (f32, or f16/bf16 pairs): for i < count,
//   dst[dstBase + dstRow(i) * dstStride + w] = src[srcBase + srcRow(i) * srcStride + w], w < rowWords,
// with srcRow(i) = srcIdx[srcIdxStart + i] when SRC_INDEXED, else srcIdxStart + i (same for dst).
// Buffers larger than one binding are handled by windows: this dispatch sees src words
// [srcWin, srcWin + bound length) and copies only rows whose first source word lies in
// [srcOwnLo, srcOwnHi) (same for dst); the host covers the buffer with overlapping windows so each
// row is copied by exactly one dispatch. A row that does not fit its binding (a bad index) is
// skipped, never read or written out of bounds. Word positions are absolute uint word indices,
// so buffers up to 16 GiB are addressable.
layout(std430, binding = 0) readonly buffer S { uint src[]; };
layout(std430, binding = 0) readonly buffer S4 { uvec4 src4[]; };
layout(std430, binding = 1) writeonly buffer D { uint dst[]; };
layout(std430, binding = 1) writeonly buffer D4 { uvec4 dst4[]; };
layout(std430, binding = 2) readonly buffer SI { uint srcIdx[]; };
layout(std430, binding = 3) readonly buffer DI { uint dstIdx[]; };
layout(push_constant) uniform P {
  uint count;
  uint rowWords;
  uint srcStride;    // words between rows
  uint dstStride;
  uint srcBase;      // word of row 0 in the whole buffer
  uint dstBase;
  uint srcIdxStart;
  uint dstIdxStart;
  uint srcWin;       // word offset of the bound window in the whole buffer
  uint dstWin;
  uint srcOwnLo;     // rows starting in [lo, hi) (absolute words) belong to this dispatch
  uint srcOwnHi;
  uint dstOwnLo;
  uint dstOwnHi;
  uint srcLen;       // words in the bound windows (counted from srcWin / dstWin)
  uint dstLen;
  uint flags;        // bit 0: SRC_INDEXED, bit 1: DST_INDEXED, bit 2: VEC4
} p;

void main() {
  uint gid = (gl_WorkGroupID.y * gl_NumWorkGroups.x + gl_WorkGroupID.x) * gl_WorkGroupSize.x + gl_LocalInvocationID.x;
  bool wide = (p.flags & 4u) != 0u;
  uint units = wide ? p.rowWords >> 2 : p.rowWords;
  if (gid >= p.count * units) return;
  uint i = gid / units;
  uint u = gid - i * units;
  uint sr = (p.flags & 1u) != 0u ? srcIdx[p.srcIdxStart + i] : p.srcIdxStart + i;
  uint dr = (p.flags & 2u) != 0u ? dstIdx[p.dstIdxStart + i] : p.dstIdxStart + i;
  // 64-bit products: a wild index must not wrap into a valid row.
  uvec2 s64, d64;
  umulExtended(sr, p.srcStride, s64.y, s64.x);
  umulExtended(dr, p.dstStride, d64.y, d64.x);
  uint s = s64.x + p.srcBase;
  uint d = d64.x + p.dstBase;
  if (s64.y != 0u || s < s64.x || d64.y != 0u || d < d64.x) return;
  if (s < p.srcOwnLo || s >= p.srcOwnHi || d < p.dstOwnLo || d >= p.dstOwnHi) return;
  uint sl = s - p.srcWin;
  uint dl = d - p.dstWin;
  if (sl > p.srcLen || p.srcLen - sl < p.rowWords || dl > p.dstLen || p.dstLen - dl < p.rowWords) return;
  if (wide) {
    dst4[(dl >> 2) + u] = src4[(sl >> 2) + u];
  } else {
    dst[dl + u] = src[sl + u];
  }
}
