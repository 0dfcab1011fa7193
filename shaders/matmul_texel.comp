#version 450
// Prompt matmul for F32/F16/BF16 weights on CPU devices (lavapipe): the same product, push block
// and bindings as matmul.comp, with weights and x bound as R32G32B32A32_UINT texel buffers.
//
// Measured on llvmpipe (docs/results-lavapipe.md): inside a loop, a texel fetch costs ~14 ns per
// 8 lanes, a shared-memory or storage-buffer load ~40-60 ns whether its address is uniform or
// not, a subgroup broadcast ~68 ns. So there is no shared memory here: every lane fetches the
// SAME weight texels (a uniform address), which leaves identical dequantized weights in every
// lane, a broadcast for free; each lane fetches the x texels of its own CN tokens. A workgroup
// owns TR rows x WG·CN tokens, and per 8 K values each weight fetch feeds 8·CN multiply-adds and
// each x fetch 4·TR, from TR x CN accumulators held across the K loop.
//
// Defines: TYPE (F32, F16 or BF16); TR, CN; TILE_SHIFT (tests only: rows fetched one off, the
// deliberately broken tile index). Spec constant 0 = workgroup size.
// Requires cols % 8 == 0, 16-byte aligned row starts, xStride % 4 == 0.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
#include "quant.glsl"
layout(local_size_x_id = 0) in;
layout(constant_id = 0) const uint WG = 8;

#ifndef TR
#define TR 32
#endif
#ifndef CN
#define CN 16
#endif
#ifndef TILE_SHIFT
#define TILE_SHIFT 0
#endif

layout(push_constant) uniform P {
  uint rows;
  uint cols;
  uint wByte0;
  uint rowBytes;
  uint xStride;
  uint yStride;
  uint yRow0;
  uint ncols;
  uint flags;
} p;

layout(binding = 0) uniform highp usamplerBuffer wt;
layout(binding = 1) uniform highp usamplerBuffer xt;
layout(std430, binding = 2) buffer Y { float y[]; };

// Weights k8*8 .. k8*8+7 of the row whose first texel is t.
void weights8(uint t, uint k8, out vec4 a, out vec4 b) {
#if TYPE == T_F32
  a = uintBitsToFloat(texelFetch(wt, int(t + 2u * k8)));
  b = uintBitsToFloat(texelFetch(wt, int(t + 2u * k8 + 1u)));
#elif TYPE == T_F16
  uvec4 q = texelFetch(wt, int(t + k8));
  a = vec4(unpackHalf2x16(q.x), unpackHalf2x16(q.y));
  b = vec4(unpackHalf2x16(q.z), unpackHalf2x16(q.w));
#elif TYPE == T_BF16
  uvec4 q = texelFetch(wt, int(t + k8));
  a = vec4(bf16x2(q.x), bf16x2(q.y));
  b = vec4(bf16x2(q.z), bf16x2(q.w));
#else
#error matmul_texel reads F32, F16 and BF16 only
#endif
}

void main() {
  uint lane = gl_LocalInvocationID.x;
  uint r0 = (gl_WorkGroupID.y * gl_NumWorkGroups.x + gl_WorkGroupID.x) * TR;
  if (r0 >= p.rows) return;
  uint t0 = gl_WorkGroupID.z * WG * CN;
  // Tokens and rows past the end repeat the last one; their results are never written.
  uint xrow[CN];
  [[unroll]] for (uint c = 0u; c < CN; c++) {
    xrow[c] = min(t0 + c * WG + lane, p.ncols - 1u) * (p.xStride >> 2);
  }
  uint wrow[TR];
  [[unroll]] for (uint r = 0u; r < TR; r++) {
    wrow[r] = (p.wByte0 + min(r0 + r + TILE_SHIFT, p.rows - 1u) * p.rowBytes) >> 4;
  }
  float acc[TR * CN];
  [[unroll]] for (uint i = 0u; i < TR * CN; i++) acc[i] = 0.0;
  for (uint k8 = 0u; k8 < p.cols / 8u; k8++) {
    vec4 xv[CN * 2];
    [[unroll]] for (uint c = 0u; c < CN; c++) {
      xv[2u * c] = uintBitsToFloat(texelFetch(xt, int(xrow[c] + 2u * k8)));
      xv[2u * c + 1u] = uintBitsToFloat(texelFetch(xt, int(xrow[c] + 2u * k8 + 1u)));
    }
    [[unroll]] for (uint r = 0u; r < TR; r++) {
      vec4 wa, wb;
      weights8(wrow[r], k8, wa, wb);
      [[unroll]] for (uint c = 0u; c < CN; c++) {
        vec4 xa = xv[2u * c], xb = xv[2u * c + 1u];
        float s = acc[r * CN + c];
        s = fma(wa.x, xa.x, s);
        s = fma(wa.y, xa.y, s);
        s = fma(wa.z, xa.z, s);
        s = fma(wa.w, xa.w, s);
        s = fma(wb.x, xb.x, s);
        s = fma(wb.y, xb.y, s);
        s = fma(wb.z, xb.z, s);
        acc[r * CN + c] = fma(wb.w, xb.w, s);
      }
    }
  }
  bool add = (p.flags & 1u) != 0u;
  [[unroll]] for (uint c = 0u; c < CN; c++) {
    uint t = t0 + c * WG + lane;
    if (t < p.ncols) {
      uint yb = t * p.yStride + p.yRow0 + r0;
      [[unroll]] for (uint r = 0u; r < TR; r++) {
        if (r0 + r < p.rows) {
          float v = acc[r * CN + c];
          if (add) v += y[yb + r];
          y[yb + r] = v;
        }
      }
    }
  }
}
