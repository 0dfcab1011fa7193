#version 450
// Matrix-vector product y = W·x (or y += W·x), CPU-tuned path (lavapipe); see matvec.comp for
// the generic path and the shared conventions (push constants, spec constants, bindings).
//
// Every SSBO load on lavapipe is a per-lane scalar loop of ~40 instructions, so the number of
// load instructions limits speed. Each lane reads whole 32-byte chunks of a run: 16 blocks =
// 17 chunks (Q8_0), 16 blocks = 9 chunks (Q4_0), 2 super-blocks = 9 chunks (Q4_K), 1 chunk
// (F32/F16/BF16, step variant) or 32 (row loop), one 210-byte super-block in an 8-chunk window
// (Q6_K, row loop only), so every weight byte is loaded (about) once. Since a fetch waits on
// memory unless the CPU's prefetchers saw it coming, each lane's unit is read as one run
// (and in the lanes layout the 8 lanes' runs are one), not as short scattered pieces. Two variants: ROWLOOP (decode, one column) and the
// step variant (batches of NUM_COLS columns). Except Q6_K's row loop, they need row starts and
// rowBytes that are multiples of 32 (the host checks).
//
// The row-loop variant also takes matvec.comp's two decode fusions (RMSNorm of x with the norm
// weight at binding 3, GLU pairs); the step variant takes neither (the host checks).
//
// Defines: TYPE; ROWLOOP; TEXEL binds weights and x as texel buffers (bindings 0 and 1), else
// they are storage buffers and LOAD64 reads chunks as u64vec4 (needs shaderInt64), else as two
// uvec4; LANES (with TEXEL; Q8_0, Q4_0, Q4_K) reads weights in the "lanes" layout (see LOADU);
// HALF_UNIT halves a lane's unit to 256 elements, for rows that are a multiple of 256 but not of
// 512 (768, 2304: common in small models): Q8_0, Q4_0 and Q4_K in the lanes layout (row loop and
// step variant; their 17- and 9-texel units end mid-chunk, so a unit's last chunk repeats its
// last texel), F16 and BF16 (row loop); HC_SUBGROUP selects the reduction.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
#include "quant.glsl"
layout(local_size_x_id = 0) in;
layout(constant_id = 0) const uint WG = 64;
layout(constant_id = 1) const uint NUM_ROWS = 2;
layout(constant_id = 2) const uint NUM_COLS = 1;
// The decode fusions (see matvec.comp's header), fixed per pipeline so that a plain product
// carries none of their code: 1 = RMSNorm of x; GLU act 1 SiLU, 2 GELU, 0 none.
layout(constant_id = 3) const uint NORM = 0;
layout(constant_id = 4) const uint GLU = 0;

layout(push_constant) uniform P {
  uint rows;      // rows in this dispatch
  uint cols;      // elements per row (K)
  uint wByte0;    // byte offset of this dispatch's row 0 inside the weight binding
  uint rowBytes;  // bytes per row
  uint xStride;   // floats between consecutive columns of x
  uint yStride;   // floats between consecutive columns of y
  uint yRow0;     // index in y of this dispatch's row 0
  uint ncols;     // columns of x / y in total
  uint flags;     // bit 0: accumulate into y; bits 8-15: row slices (row-loop variant)
  float eps;      // RMSNorm epsilon (NORM)
  uint gluRows;   // GLU outputs F (GLU): gate rows [0, F), up rows [F, 2F)
} p;

layout(std430, binding = 2) buffer Y { float y[]; };

#ifndef ROWLOOP
float acc[NUM_ROWS * NUM_COLS];
shared float red_sh[NUM_ROWS * NUM_COLS * WG];

void write_out(uint i, float v, uint r0, uint col0) {
  uint row = r0 + i / NUM_COLS;
  uint col = col0 + i % NUM_COLS;
  if (row < p.rows && col < p.ncols) {
    uint idx = col * p.yStride + p.yRow0 + row;
    if ((p.flags & 1u) != 0u) v += y[idx];
    y[idx] = v;
  }
}

// Sums acc[] over the workgroup's lanes and writes (or adds) the results.
void reduce_store(uint r0, uint col0) {
  const uint n = NUM_ROWS * NUM_COLS;
  uint lane = gl_LocalInvocationID.x;
#ifdef HC_SUBGROUP
  [[unroll]] for (uint i = 0; i < n; i++) acc[i] = subgroupAdd(acc[i]);
  if (gl_NumSubgroups == 1u) {
    if (lane == 0u) {
      [[unroll]] for (uint i = 0; i < n; i++) write_out(i, acc[i], r0, col0);
    }
    return;
  }
  if (subgroupElect()) {
    [[unroll]] for (uint i = 0; i < n; i++) red_sh[i * gl_NumSubgroups + gl_SubgroupID] = acc[i];
  }
  barrier();
  for (uint i = lane; i < n; i += WG) {
    float s = 0.0;
    for (uint k = 0; k < gl_NumSubgroups; k++) s += red_sh[i * gl_NumSubgroups + k];
    write_out(i, s, r0, col0);
  }
#else
  [[unroll]] for (uint i = 0; i < n; i++) red_sh[i * WG + lane] = acc[i];
  barrier();
  for (uint s = WG / 2u; s > 0u; s >>= 1) {
    if (lane < s) {
      [[unroll]] for (uint i = 0; i < n; i++) red_sh[i * WG + lane] += red_sh[i * WG + lane + s];
    }
    barrier();
  }
  for (uint i = lane; i < n; i += WG) write_out(i, red_sh[i * WG], r0, col0);
#endif
}
#endif

// 32-byte chunk loads
#if defined(TEXEL)
// Weights and x through uniform texel buffers of R32G32B32A32_UINT (16-byte texels; wByte0
// still counts bytes from the weight view's start). llvmpipe fetches a texel for all lanes with
// one gather, where a storage-buffer load at a per-lane offset is a scalar loop with a bounds
// check per lane: measured 1.4-2x faster for every type on lavapipe (docs/results-lavapipe.md).
layout(binding = 0) uniform highp usamplerBuffer wt;
layout(binding = 1) uniform highp usamplerBuffer xt;
#define LOADW(i, D, o) { uvec4 a_ = texelFetch(wt, int(2u * (i))), b_ = texelFetch(wt, int(2u * (i) + 1u)); \
  D[o] = a_.x; D[o + 1] = a_.y; D[o + 2] = a_.z; D[o + 3] = a_.w; \
  D[o + 4] = b_.x; D[o + 5] = b_.y; D[o + 6] = b_.z; D[o + 7] = b_.w; }
#define NCHUNKS (uint(textureSize(wt)) / 2u)
#define LOADX(i, D, o) { D[o] = uintBitsToFloat(texelFetch(xt, int(2u * (i)))); \
  D[o + 1] = uintBitsToFloat(texelFetch(xt, int(2u * (i) + 1u))); }
layout(binding = 3) uniform highp usamplerBuffer gt;
#define LOADG(i, D, o) { D[o] = uintBitsToFloat(texelFetch(gt, int(2u * (i)))); \
  D[o + 1] = uintBitsToFloat(texelFetch(gt, int(2u * (i) + 1u))); }
#elif defined(LOAD64)
#extension GL_EXT_shader_explicit_arithmetic_types_int64 : require
layout(std430, binding = 0) readonly buffer WC { u64vec4 wc[]; };
layout(std430, binding = 1) readonly buffer XC { u64vec4 xc[]; };
#define LOADW(i, D, o) { u64vec4 q_ = wc[i]; \
  uvec2 a_ = unpackUint2x32(q_.x), b_ = unpackUint2x32(q_.y), c_ = unpackUint2x32(q_.z), d_ = unpackUint2x32(q_.w); \
  D[o] = a_.x; D[o + 1] = a_.y; D[o + 2] = b_.x; D[o + 3] = b_.y; \
  D[o + 4] = c_.x; D[o + 5] = c_.y; D[o + 6] = d_.x; D[o + 7] = d_.y; }
#define NCHUNKS uint(wc.length())
#define LOADX(i, D, o) { u64vec4 q_ = xc[i]; \
  D[o] = vec4(uintBitsToFloat(unpackUint2x32(q_.x)), uintBitsToFloat(unpackUint2x32(q_.y))); \
  D[o + 1] = vec4(uintBitsToFloat(unpackUint2x32(q_.z)), uintBitsToFloat(unpackUint2x32(q_.w))); }
layout(std430, binding = 3) readonly buffer GC { u64vec4 gc[]; };
#define LOADG(i, D, o) { u64vec4 q_ = gc[i]; \
  D[o] = vec4(uintBitsToFloat(unpackUint2x32(q_.x)), uintBitsToFloat(unpackUint2x32(q_.y))); \
  D[o + 1] = vec4(uintBitsToFloat(unpackUint2x32(q_.z)), uintBitsToFloat(unpackUint2x32(q_.w))); }
#else
layout(std430, binding = 0) readonly buffer WC { uvec4 wc[]; };
layout(std430, binding = 1) readonly buffer XC { vec4 xc[]; };
#define LOADW(i, D, o) { uvec4 a_ = wc[2u * (i)], b_ = wc[2u * (i) + 1u]; \
  D[o] = a_.x; D[o + 1] = a_.y; D[o + 2] = a_.z; D[o + 3] = a_.w; \
  D[o + 4] = b_.x; D[o + 5] = b_.y; D[o + 6] = b_.z; D[o + 7] = b_.w; }
#define LOADX(i, D, o) { D[o] = xc[2u * (i)]; D[o + 1] = xc[2u * (i) + 1u]; }
layout(std430, binding = 3) readonly buffer GC { vec4 gc[]; };
#define LOADG(i, D, o) { D[o] = gc[2u * (i)]; D[o + 1] = gc[2u * (i) + 1u]; }
#define NCHUNKS (uint(wc.length()) / 2u)
#endif

// Chunk kc of unit u of row `row` (`units` units per row). ROWREF(row) is what LOADU takes
// for a row: its index in the lanes layout, its first chunk otherwise.
#ifdef LANES
// The "lanes" layout (src/kernels/matvec_layout.ts; the host permutes the weight's 16-byte
// texels at upload): the units of each row go in groups of 8 (a row's last group may hold
// fewer, g); group G of every row, row after row, forms one contiguous band (bands of earlier
// groups hold 8 units per row), and inside a row's part of a band texel k of the j-th unit sits
// at k * g + j. So the 8 lanes of one fetch, which work on neighbouring units of one row, read
// one contiguous run of g texels, successive fetches walk on, and the row loop walks down the
// band. In GGUF order each lane reads its own 544-byte unit: 8 short streams the CPU's
// prefetchers do not follow, and on lavapipe the fetches stalled on memory for most of the
// kernel's time (measured ~2x the CPU time per matvec).
#define ROWREF(row) (row)
#define LOADU(row, u, kc, D, o) { uint g_ = min(8u, units - ((u) & ~7u)); \
  uint t_ = p.wByte0 / 16u + ((u) >> 3) * (p.rows * 8u * TEXELS) + (row) * TEXELS * g_ \
    + ((u) & 7u); \
  uvec4 a_ = texelFetch(wt, int(t_ + 2u * (kc) * g_)), \
    b_ = texelFetch(wt, int(t_ + min(2u * (kc) + 1u, TEXELS - 1u) * g_)); \
  D[o] = a_.x; D[o + 1] = a_.y; D[o + 2] = a_.z; D[o + 3] = a_.w; \
  D[o + 4] = b_.x; D[o + 5] = b_.y; D[o + 6] = b_.z; D[o + 7] = b_.w; }
#else
#define ROWREF(row) ((p.wByte0 + (row) * p.rowBytes) / 32u)
#define LOADU(rc, u, kc, D, o) LOADW((rc) + (u) * CHUNKS + (kc), D, o)
#endif

#ifdef ROWLOOP
// Row-loop variant (NUM_COLS == 1, decode): a lane stages the x of one unit in registers, then
// walks all NUM_ROWS rows of the workgroup in a runtime loop; per row it loads the unit's chunks
// back to back (so their cache misses overlap) and decodes them at compile-time offsets. Partial
// sums live in shared memory, one per (row, lane), so NUM_ROWS can be large and x is loaded
// once per unit for all those rows.
#if TYPE == T_F32
// 1 KiB units for the float types: a lane reads its unit as one run, and runs of 256 bytes
// (the earlier 64 / 128 elements) were too short for the CPU's prefetchers: 1 KiB took
// 1.5-1.9x less CPU time per matvec on lavapipe (F16, BF16, F32; 8B shapes, paired runs).
#define UNIT 256u
#define CHUNKS 32u
#elif (TYPE == T_F16 || TYPE == T_BF16) && defined(HALF_UNIT)
#define UNIT 256u
#define CHUNKS 16u
#elif TYPE == T_F16 || TYPE == T_BF16
#define UNIT 512u
#define CHUNKS 32u
#elif TYPE == T_Q8_0 && defined(HALF_UNIT)
#define UNIT 256u
#define CHUNKS 9u
#define TEXELS 17u
#elif TYPE == T_Q8_0
#define UNIT 512u
#define CHUNKS 17u
#elif (TYPE == T_Q4_0 || TYPE == T_Q4_K) && defined(HALF_UNIT)
#define UNIT 256u
#define CHUNKS 5u
#define TEXELS 9u
#elif TYPE == T_Q4_0 || TYPE == T_Q4_K
#define UNIT 512u
#define CHUNKS 9u
#elif TYPE == T_Q6_K
// Four 210-byte super-blocks per unit, one 840-byte run per lane (a row's last unit may hold
// fewer): 1.2-1.3x less CPU time than one block per unit on the 8B shapes (paired runs), as the
// prefetchers follow longer runs. Each block sits at a per-lane byte phase inside an 8-chunk
// window that is shifted into place at run time (any even row alignment works).
#define UNIT 1024u
#define CHUNKS 8u
#define Q6K_BLOCKS 4u
#else
#error TYPE has no row-loop path
#endif
#define XV (UNIT / 4u)
#ifndef TEXELS
#define TEXELS (2u * CHUNKS)
#endif
#if TYPE == T_Q6_K
#define XSUMS 64u
#else
#define XSUMS (UNIT / 32u)
#endif
// 2^(-8i) for byte i of a word (see the Q4_K case of row_unit). A macro, not a global const:
// literals keep it out of memory.
#define Q4K_UNSCALE vec4(1.0, 1.0 / 256.0, 1.0 / 65536.0, 1.0 / 16777216.0)

shared float part[NUM_ROWS * WG];

// Dot product of one row's unit (weight words wr) with the staged x.
// sb: Q6_K's block within the unit.
float row_unit(uint wr[CHUNKS * 8u], vec4 xs[XV], float xsum[XSUMS], uint sb) {
#if TYPE == T_F32
  vec4 a = vec4(0.0), b = vec4(0.0);
  [[unroll]] for (uint k = 0; k < XV; k += 2u) {
    a = fma(uintBitsToFloat(uvec4(wr[4u * k], wr[4u * k + 1u], wr[4u * k + 2u], wr[4u * k + 3u])), xs[k], a);
    b = fma(uintBitsToFloat(uvec4(wr[4u * k + 4u], wr[4u * k + 5u], wr[4u * k + 6u], wr[4u * k + 7u])), xs[k + 1u], b);
  }
  return dot(a + b, vec4(1.0));
#elif TYPE == T_F16 || TYPE == T_BF16
  vec4 a = vec4(0.0), b = vec4(0.0);
  [[unroll]] for (uint k = 0; k < XV; k += 2u) {
#if TYPE == T_F16
    a = fma(vec4(unpackHalf2x16(wr[2u * k]), unpackHalf2x16(wr[2u * k + 1u])), xs[k], a);
    b = fma(vec4(unpackHalf2x16(wr[2u * k + 2u]), unpackHalf2x16(wr[2u * k + 3u])), xs[k + 1u], b);
#else
    a = fma(vec4(bf16x2(wr[2u * k]), bf16x2(wr[2u * k + 1u])), xs[k], a);
    b = fma(vec4(bf16x2(wr[2u * k + 2u]), bf16x2(wr[2u * k + 3u])), xs[k + 1u], b);
#endif
  }
  return dot(a + b, vec4(1.0));
#elif TYPE == T_Q8_0
  // Block pair s = 68 bytes = words 17s..17s+16: block A at +0 (d in the low half, qs from
  // byte 2), block B at byte 34 (d in the high half of word 8, qs word-aligned from word 9).
  float sum = 0.0;
  [[unroll]] for (uint s = 0; s < UNIT / 64u; s++) {
    uint o = 17u * s;
    vec4 a = vec4(0.0), b = vec4(0.0);
    [[unroll]] for (uint k = 0; k < 8u; k++) {
      a = fma(i8x4(funnel16(wr[o + k], wr[o + k + 1u])), xs[16u * s + k], a);
      b = fma(i8x4(wr[o + 9u + k]), xs[16u * s + 8u + k], b);
    }
    sum += half_lo(wr[o]) * dot(a, vec4(1.0)) + half_hi(wr[o + 8u]) * dot(b, vec4(1.0));
  }
  return sum;
#elif TYPE == T_Q4_0
  // Block pair s = 36 bytes = words 9s..9s+8, laid out like Q8_0's pair.
  float sum = 0.0;
  [[unroll]] for (uint s = 0; s < UNIT / 64u; s++) {
    uint o = 9u * s;
    vec4 a = vec4(0.0), b = vec4(0.0);
    [[unroll]] for (uint k = 0; k < 4u; k++) {
      uint qa = funnel16(wr[o + k], wr[o + k + 1u]);
      a = fma(lo4x4(qa), xs[16u * s + k], a);
      a = fma(hi4x4(qa), xs[16u * s + 4u + k], a);
      b = fma(lo4x4(wr[o + 5u + k]), xs[16u * s + 8u + k], b);
      b = fma(hi4x4(wr[o + 5u + k]), xs[16u * s + 12u + k], b);
    }
    float dA = half_lo(wr[o]), dB = half_hi(wr[o + 4u]);
    sum += dA * (dot(a, vec4(1.0)) - 8.0 * xsum[2u * s]) + dB * (dot(b, vec4(1.0)) - 8.0 * xsum[2u * s + 1u]);
  }
  return sum;
#elif TYPE == T_Q4_K
  // Super-block j = 144 bytes = words 36j..36j+35: header in the first 4, group g's 32 qs
  // bytes at words 36j+4+8g.
  float sum = 0.0;
  [[unroll]] for (uint j = 0; j < UNIT / 256u; j++) {
    uint h = 36u * j;
    uvec4 sw = q4k_scale_words(wr[h + 1u], wr[h + 2u], wr[h + 3u]);
    vec2 dm = unpackHalf2x16(wr[h]);
    [[unroll]] for (uint g = 0; g < 4u; g++) {
      vec4 sc = q4k_group_scales(sw, g);
      uint o = h + 4u + 8u * g;
      uint xo = 64u * j + 16u * g;
      // Each nibble is converted where it sits in its word (masked, not shifted down: one
      // shift per word instead of per nibble), so component i of a and b sums 2^(8i) * q * x
      // and the dot with Q4K_UNSCALE takes the powers of two back out exactly. The nibble
      // decode is about half of this kernel's time on lavapipe; measured a few percent faster.
      vec4 a = vec4(0.0), b = vec4(0.0);
      [[unroll]] for (uint k = 0; k < 8u; k++) {
        uint wl = wr[o + k], wh = wl >> 4;
        a = fma(vec4(ivec4(wl & 0xfu, wl & 0xf00u, wl & 0xf0000u, wl & 0xf000000u)), xs[xo + k], a);
        b = fma(vec4(ivec4(wh & 0xfu, wh & 0xf00u, wh & 0xf0000u, wh & 0xf000000u)), xs[xo + 8u + k], b);
      }
      uint sb = 8u * j + 2u * g;
      sum += dm.x * (sc.x * dot(a, Q4K_UNSCALE) + sc.y * dot(b, Q4K_UNSCALE))
           - dm.y * (sc.z * xsum[sb] + sc.w * xsum[sb + 1u]);
    }
  }
  return sum;
#elif TYPE == T_Q6_K
  // wr holds the super-block at word 0 (ql words 0-31, qh 32-47, scales 48-51, d in word 52).
  // Half h, quad i (l = 4i..4i+3), quarter m: elements 128h + 32m + l, scale 8h + i/4 + 2m.
  float sum = 0.0;
  [[unroll]] for (uint h = 0; h < 2u; h++) {
    [[unroll]] for (uint m = 0; m < 4u; m++) {
      [[unroll]] for (uint is = 0; is < 2u; is++) {
        vec4 a = vec4(0.0);
        [[unroll]] for (uint k = 0; k < 4u; k++) {
          uint i = 4u * is + k;
          uint q = q6k_word(wr[16u * h + i], wr[16u * h + 8u + i], wr[32u + 8u * h + i], m);
          a = fma(u8x4(q), xs[64u * sb + 32u * h + 8u * m + i], a);
        }
        uint si = 8u * h + is + 2u * m;
        sum += i8_at(wr[48u + si / 4u], si % 4u) *
               (dot(a, vec4(1.0)) - 32.0 * xsum[16u * sb + 8u * h + 2u * m + is]);
      }
    }
  }
  return sum * half_lo(wr[52]);
#endif
}

void main() {
  uint g = gl_WorkGroupID.y * gl_NumWorkGroups.x + gl_WorkGroupID.x;
  const bool pairs = GLU != 0u;
  // The workgroup's outputs r0 .. r0 + nOut; with GLU pairs its rows are the gate rows r0..
  // then the up rows F + r0.. (nr = 2 nOut), else the output rows themselves.
  uint r0 = g * (pairs ? NUM_ROWS / 2u : NUM_ROWS);
  uint outRows = pairs ? p.gluRows : p.rows;
  if (r0 >= outRows) return;
  uint nOut = min(pairs ? NUM_ROWS / 2u : NUM_ROWS, outRows - r0);
  uint nr = pairs ? 2u * nOut : nOut;
  uint upRow0 = p.gluRows + r0 - nOut;
  uint lane = gl_LocalInvocationID.x;
  const bool norm = NORM != 0u;
  float ssq = 0.0;
#if TYPE == T_Q6_K
  uint blocks = p.cols / 256u;
  uint units = (blocks + Q6K_BLOCKS - 1u) / Q6K_BLOCKS;
#else
  uint units = p.cols / UNIT;
#endif
  for (uint r = 0; r < nr; r++) part[r * WG + lane] = 0.0;
  uint col = gl_WorkGroupID.z;
#if TYPE == T_Q6_K
  // x of a one-block last unit: its second half is read clamped and never used.
  uint lastX = (col * p.xStride + p.cols) / 8u - 1u;
  uint lastG = p.cols / 8u - 1u;
#endif
  // When the lanes cannot share a row's units evenly, each unit is split into `slices` sets of
  // rows (flags bits 8-15, chosen by the host) so every lane gets the same amount of work.
  uint slices = max((p.flags >> 8) & 0xffu, 1u);
  float keep = 0.0;
  for (uint item = lane; item < units * slices; item += WG) {
    // Items go in blocks of WG units x all slices, slice-major, so the lanes of one fetch work
    // on neighbouring units of the same row (what the lanes layout lays out contiguously).
    uint blk = item / (WG * slices);
    uint rem = item % (WG * slices);
    uint nb = min(WG, units - blk * WG);
    uint u = blk * WG + rem % nb;
    uint slice = rem / nb;
    vec4 xs[XV];
    uint xb = (col * p.xStride + u * UNIT) / 8u;
#if TYPE == T_Q6_K
    [[unroll]] for (uint k = 0; k < XV / 2u; k++) LOADX(min(xb + k, lastX), xs, 2u * k)
#else
    [[unroll]] for (uint k = 0; k < XV / 2u; k++) LOADX(xb + k, xs, 2u * k)
#endif
    if (norm) {
      // x² summed once per unit (by its slice 0), then x ⊙ g for the rows.
      uint gb = u * UNIT / 8u;
      [[unroll]] for (uint k = 0; k < XV / 2u; k++) {
        vec4 gs[2];
#if TYPE == T_Q6_K
        LOADG(min(gb + k, lastG), gs, 0)
        bool inRow = u * UNIT + 8u * k < p.cols;
#else
        LOADG(gb + k, gs, 0)
        bool inRow = true;
#endif
        if (slice == 0u && inRow) ssq += dot(xs[2u * k], xs[2u * k]) + dot(xs[2u * k + 1u], xs[2u * k + 1u]);
        xs[2u * k] *= gs[0];
        xs[2u * k + 1u] *= gs[1];
      }
    }
    // Sums of x over each 32-element block, for the offset/min terms of Q4_0 and Q4_K.
    float xsum[XSUMS];
    [[unroll]] for (uint b = 0; b < XSUMS; b++) {
      vec4 t = vec4(0.0);
#if TYPE == T_Q4_0 || TYPE == T_Q4_K
      [[unroll]] for (uint k = 0; k < 8u; k++) t += xs[8u * b + k];
#elif TYPE == T_Q6_K
      // Q6_K scale groups of 16, 16 per block: b = 16 sb + 8h + 2m + is.
      [[unroll]] for (uint k = 0; k < 4u; k++) {
        uint bb = b % 16u;
        t += xs[64u * (b / 16u) + 32u * (bb / 8u) + 8u * ((bb / 2u) % 4u) + 4u * (bb % 2u) + k];
      }
#endif
      xsum[b] = dot(t, vec4(1.0));
    }
    // A slice is a contiguous run of rows, so the lanes layout's band is read in order.
    uint rEnd = (nr * (slice + 1u)) / slices;
    for (uint r = (nr * slice) / slices; r < rEnd; r++) {
      uint row = r < nOut ? r0 + r : upRow0 + r;
      uint wr[CHUNKS * 8u];
#if TYPE == T_Q6_K
      float v = 0.0;
      // The unit's blocks one after the other: one run of memory. Unrolled: sb indexes xs,
      // and a run-time index into a private array is a per-lane gather on lavapipe.
      [[unroll]] for (uint sb = 0u; sb < Q6K_BLOCKS; sb++) {
      if (Q6K_BLOCKS * u + sb < blocks) {
      uint b = p.wByte0 + row * p.rowBytes + 210u * (Q6K_BLOCKS * u + sb);
      uint c = b / 32u;
      uint last = NCHUNKS - 1u;
      [[unroll]] for (uint k = 0; k < CHUNKS; k++) LOADW(min(c + k, last), wr, 8u * k)
      // Shift the window left by the block's phase: whole words, then a half word.
      uint ph = b % 32u;
      bool s4 = (ph & 16u) != 0u, s2 = (ph & 8u) != 0u, s1 = (ph & 4u) != 0u, sh = (ph & 2u) != 0u;
      [[unroll]] for (uint k = 0; k < 58u; k++) wr[k] = s4 ? wr[k + 4u] : wr[k];
      [[unroll]] for (uint k = 0; k < 56u; k++) wr[k] = s2 ? wr[k + 2u] : wr[k];
      [[unroll]] for (uint k = 0; k < 54u; k++) wr[k] = s1 ? wr[k + 1u] : wr[k];
      [[unroll]] for (uint k = 0; k < 53u; k++) wr[k] = sh ? funnel16(wr[k], wr[k + 1u]) : wr[k];
      v += row_unit(wr, xs, xsum, sb);
      }
      }
#else
      uint rc = ROWREF(row);
      [[unroll]] for (uint k = 0; k < CHUNKS; k++) LOADU(rc, u, k, wr, 8u * k)
      // v also feeds `keep`, so LLVM cannot sink its whole computation into the per-lane
      // scalar loop that stores to shared memory: with one use, InstCombine scalarised the
      // Q4_K row (8x slower) once its dot had constant weights.
      float v = row_unit(wr, xs, xsum, 0u);
#endif
      part[r * WG + lane] += v;
      keep += v;
    }
  }
  // Never true (the host leaves bit 31 clear), but the compiler cannot know: keeps `keep`.
  if ((p.flags & 0x80000000u) != 0u) part[lane] += keep;
  // The results' scale: 1, or RMSNorm's 1 / sqrt(mean(x²) + eps).
  float scale = norm ? inversesqrt(wg_sum(ssq) / float(p.cols) + p.eps) : 1.0;
#ifdef HC_SUBGROUP
  // One subgroup: each lane reads back only its own partial sums, so no barrier is needed.
  if (gl_NumSubgroups == 1u) {
    for (uint r = 0; r < nOut; r++) {
      float v = subgroupAdd(part[r * WG + lane]) * scale;
      if (pairs) v = glu_pair(GLU, v, subgroupAdd(part[(r + nOut) * WG + lane]) * scale);
      if (lane == 0u) {
        uint idx = col * p.yStride + p.yRow0 + r0 + r;
        if ((p.flags & 1u) != 0u) v += y[idx];
        y[idx] = v;
      }
    }
    return;
  }
#endif
  barrier();
  for (uint s = WG / 2u; s > 0u; s >>= 1) {
    if (lane < s) {
      for (uint r = 0; r < nr; r++) part[r * WG + lane] += part[r * WG + lane + s];
    }
    barrier();
  }
  for (uint r = lane; r < nOut; r += WG) {
    uint idx = col * p.yStride + p.yRow0 + r0 + r;
    float v = part[r * WG] * scale;
    if (pairs) v = glu_pair(GLU, v, part[(r + nOut) * WG] * scale);
    if ((p.flags & 1u) != 0u) v += y[idx];
    y[idx] = v;
  }
}

#else
// Step variant (prefill batches of NUM_COLS columns): lanes walk their runs in UNIT/64 steps of 64
// elements; per step the x of all columns is loaded once and the NUM_ROWS rows are unrolled,
// each keeping the chunk it shares with the next step in registers.

#if TYPE == T_F32
#define UNIT 8u
#define CHUNKS 1u
#define STEPS 1
#define XV 2u
#elif TYPE == T_F16 || TYPE == T_BF16
#define UNIT 16u
#define CHUNKS 1u
#define STEPS 1
#define XV 4u
#elif TYPE == T_Q8_0 && defined(HALF_UNIT)
#define UNIT 256u
#define CHUNKS 9u
#define TEXELS 17u
#define STEPS 4
#define XV 16u
#elif TYPE == T_Q8_0
#define UNIT 512u
#define CHUNKS 17u
#define STEPS 8
#define XV 16u
#elif (TYPE == T_Q4_0 || TYPE == T_Q4_K) && defined(HALF_UNIT)
#define UNIT 256u
#define CHUNKS 5u
#define TEXELS 9u
#define STEPS 4
#define XV 16u
#elif TYPE == T_Q4_0 || TYPE == T_Q4_K
#define UNIT 512u
#define CHUNKS 9u
#define STEPS 8
#define XV 16u
#else
#error TYPE has no RUN path
#endif
#ifndef TEXELS
#define TEXELS (2u * CHUNKS)
#endif
#define STEP_ELEMS (UNIT / uint(STEPS))

#if STEPS > 1
// The last chunk loaded for each row, shared with the next step.
uint carry[NUM_ROWS][8];
#endif
#if TYPE == T_Q4_K
// The 16-byte header (d, dmin, scales) of the super-block the current step is in.
uint hdr[NUM_ROWS][4];
#endif

void main() {
  uint g = gl_WorkGroupID.y * gl_NumWorkGroups.x + gl_WorkGroupID.x;
  uint r0 = g * NUM_ROWS;
  if (r0 >= p.rows) return;
  uint col0 = gl_WorkGroupID.z * NUM_COLS;
  uint lane = gl_LocalInvocationID.x;
  uint units = p.cols / UNIT;
  [[unroll]] for (uint i = 0; i < NUM_ROWS * NUM_COLS; i++) acc[i] = 0.0;
  uint rowChunk[NUM_ROWS];
  [[unroll]] for (uint r = 0; r < NUM_ROWS; r++) {
    rowChunk[r] = ROWREF(min(r0 + r, p.rows - 1u));
  }
  uint xcol[NUM_COLS];
  [[unroll]] for (uint c = 0; c < NUM_COLS; c++) xcol[c] = min(col0 + c, p.ncols - 1u) * p.xStride;

  for (uint u = lane; u < units; u += WG) {
#if STEPS > 1
    [[unroll]] for (uint r = 0; r < NUM_ROWS; r++) {
      LOADU(rowChunk[r], u, 0u, carry[r], 0)
#if TYPE == T_Q4_K
      [[unroll]] for (uint k = 0; k < 4u; k++) hdr[r][k] = carry[r][k];
#endif
    }
#endif
    for (uint s = 0; s < STEPS; s++) {
      // x of this step for every column, and the per-block sums the offset terms need.
      vec4 xs[NUM_COLS][XV];
      vec2 xsum[NUM_COLS];
      [[unroll]] for (uint c = 0; c < NUM_COLS; c++) {
        uint xb = (xcol[c] + u * UNIT + s * STEP_ELEMS) / 8u;
        [[unroll]] for (uint k = 0; k < XV / 2u; k++) LOADX(xb + k, xs[c], 2u * k)
        vec4 ta = vec4(0.0), tb = vec4(0.0);
#if TYPE == T_Q4_0 || TYPE == T_Q4_K
        [[unroll]] for (uint k = 0; k < 8u; k++) { ta += xs[c][k]; tb += xs[c][8u + k]; }
#endif
        xsum[c] = vec2(dot(ta, vec4(1.0)), dot(tb, vec4(1.0)));
      }
      [[unroll]] for (uint r = 0; r < NUM_ROWS; r++) {
        // Dequantised (unscaled) weights of this step and the scales of its two halves.
        vec4 wv[XV];
        float dA = 1.0, dB = 1.0, mA = 0.0, mB = 0.0;
#if TYPE == T_F32 || TYPE == T_F16 || TYPE == T_BF16
        uint t[8];
        LOADU(rowChunk[r], u, 0u, t, 0)
#if TYPE == T_F32
        wv[0] = uintBitsToFloat(uvec4(t[0], t[1], t[2], t[3]));
        wv[1] = uintBitsToFloat(uvec4(t[4], t[5], t[6], t[7]));
#elif TYPE == T_F16
        [[unroll]] for (uint k = 0; k < 4u; k++) wv[k] = vec4(unpackHalf2x16(t[2u * k]), unpackHalf2x16(t[2u * k + 1u]));
#else
        [[unroll]] for (uint k = 0; k < 4u; k++) wv[k] = vec4(bf16x2(t[2u * k]), bf16x2(t[2u * k + 1u]));
#endif
#elif TYPE == T_Q8_0
        // Block pair s sits at byte 68s of the run: chunks 2s..2s+2, 4s bytes in.
        uint t[24];
        [[unroll]] for (uint k = 0; k < 8u; k++) t[k] = carry[r][k];
        LOADU(rowChunk[r], u, 2u * s + 1u, t, 8)
        LOADU(rowChunk[r], u, 2u * s + 2u, t, 16)
        [[unroll]] for (uint k = 0; k < 8u; k++) carry[r][k] = t[16u + k];
        bool b4 = (s & 4u) != 0u, b2 = (s & 2u) != 0u, b1 = (s & 1u) != 0u;
        [[unroll]] for (uint k = 0; k < 20u; k++) t[k] = b4 ? t[k + 4u] : t[k];
        [[unroll]] for (uint k = 0; k < 18u; k++) t[k] = b2 ? t[k + 2u] : t[k];
        [[unroll]] for (uint k = 0; k < 17u; k++) t[k] = b1 ? t[k + 1u] : t[k];
        dA = half_lo(t[0]);
        dB = half_hi(t[8]);
        [[unroll]] for (uint k = 0; k < 8u; k++) {
          wv[k] = i8x4(funnel16(t[k], t[k + 1u]));
          wv[8u + k] = i8x4(t[9u + k]);
        }
#elif TYPE == T_Q4_0
        // Block pair s sits at byte 36s of the run: chunks s..s+1, 4s bytes in.
        uint t[16];
        [[unroll]] for (uint k = 0; k < 8u; k++) t[k] = carry[r][k];
        LOADU(rowChunk[r], u, s + 1u, t, 8)
        [[unroll]] for (uint k = 0; k < 8u; k++) carry[r][k] = t[8u + k];
        bool b4 = (s & 4u) != 0u, b2 = (s & 2u) != 0u, b1 = (s & 1u) != 0u;
        [[unroll]] for (uint k = 0; k < 12u; k++) t[k] = b4 ? t[k + 4u] : t[k];
        [[unroll]] for (uint k = 0; k < 10u; k++) t[k] = b2 ? t[k + 2u] : t[k];
        [[unroll]] for (uint k = 0; k < 9u; k++) t[k] = b1 ? t[k + 1u] : t[k];
        dA = half_lo(t[0]);
        dB = half_hi(t[4]);
        mA = 8.0 * dA;
        mB = 8.0 * dB;
        [[unroll]] for (uint k = 0; k < 4u; k++) {
          uint qa = funnel16(t[k], t[k + 1u]);
          wv[k] = lo4x4(qa);
          wv[4u + k] = hi4x4(qa);
          wv[8u + k] = lo4x4(t[5u + k]);
          wv[12u + k] = hi4x4(t[5u + k]);
        }
#elif TYPE == T_Q4_K
        // Group s (64 elements): super-block s/4, qs bytes 32*(s%4).. of it. The first
        // super-block's qs start 16 bytes into chunk 0, the second's are chunk-aligned.
        uint t[8];
        LOADU(rowChunk[r], u, s + 1u, t, 0)
        bool first = s < 4u;
        uint q[8];
        [[unroll]] for (uint k = 0; k < 4u; k++) {
          q[k] = first ? carry[r][4u + k] : t[k];
          q[4u + k] = first ? t[k] : t[4u + k];
        }
        if (s == 4u) {
          [[unroll]] for (uint k = 0; k < 4u; k++) hdr[r][k] = carry[r][4u + k];
        }
        [[unroll]] for (uint k = 0; k < 8u; k++) carry[r][k] = t[k];
        vec4 sc = q4k_group_scales(q4k_scale_words(hdr[r][1], hdr[r][2], hdr[r][3]), s & 3u);
        vec2 dm = unpackHalf2x16(hdr[r][0]);
        dA = dm.x * sc.x;
        dB = dm.x * sc.y;
        mA = dm.y * sc.z;
        mB = dm.y * sc.w;
        [[unroll]] for (uint k = 0; k < 8u; k++) {
          wv[k] = lo4x4(q[k]);
          wv[8u + k] = hi4x4(q[k]);
        }
#endif
        [[unroll]] for (uint c = 0; c < NUM_COLS; c++) {
#if STEPS == 1
          float sum = 0.0;
          [[unroll]] for (uint k = 0; k < XV; k++) sum = fma4(wv[k], xs[c][k], sum);
          acc[r * NUM_COLS + c] += sum;
#else
          float sa = 0.0, sb = 0.0;
          [[unroll]] for (uint k = 0; k < 8u; k++) {
            sa = fma4(wv[k], xs[c][k], sa);
            sb = fma4(wv[8u + k], xs[c][8u + k], sb);
          }
          acc[r * NUM_COLS + c] += dA * sa + dB * sb - mA * xsum[c].x - mB * xsum[c].y;
#endif
        }
      }
    }
  }
  reduce_store(r0, col0);
}
#endif
