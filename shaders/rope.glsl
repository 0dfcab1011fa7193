// RoPE's rotation angle, shared by rope.comp and rope_append.comp.
//
// Precision: the angle is never formed as a float. The host stores, per pair, invFreq_i / 2pi
// (turns per position, computed in f64, fractional part only) as a 64-bit fixed-point fraction.
// pos * turns mod 1 is then exact integer arithmetic (u32 x u64 -> low 64 bits), and only the
// final phase in [-1/2, 1/2) turns is converted to float, so sin/cos always see |angle| <= pi
// (the only range where Vulkan bounds their error) and the angle error is ~2e-7 rad at any
// position up to 2^32, instead of the ~1e-2 rad an f32 product pos * invFreq has at 128K.

#ifndef HC_ROPE_GLSL
#define HC_ROPE_GLSL

const float TWO_PI_OVER_2_32 = 1.4629180792671596e-9;  // 2pi / 2^32

// (cos, sin) of position `pos` times the pair's turns per position `f` (low, high word).
vec2 rope_cos_sin(uint pos, uvec2 f) {
  uint lsb, msb;
  umulExtended(pos, f.x, msb, lsb);
  uint phase = pos * f.y + msb;  // top 32 bits of frac(pos * turns) in 2^-32 units (mod 2^32)
  // Signed reading puts the phase in [-2^31, 2^31), i.e. the angle in [-pi, pi).
  float angle = (float(int(phase)) + float(lsb) * 2.3283064365386963e-10) * TWO_PI_OVER_2_32;
  return vec2(cos(angle), sin(angle));
}

#endif
