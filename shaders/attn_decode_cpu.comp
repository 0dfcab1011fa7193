#version 450
// Decode attention, split-K pass for SIMD CPU drivers (lavapipe). Same inputs and record
// layout as attn_decode.comp (one online-softmax record per split and query head).
//
// Why a different kernel: llvmpipe runs the subgroups of a workgroup one after another (a wide
// workgroup turns every sweep over memory into a strided one), executes every `if` with masks,
// turns every buffer load into a loop over the lanes, and spills what does not fit in 16 SIMD
// registers. So a workgroup is ONE subgroup of L lanes, and lane `lane` owns a slice of NP
// f16 pairs of every K/V row (loaded with the widest load the slice allows): each row is loaded
// once, with one or two load instructions, and the lane's q and output slices (G * NP pairs
// each) stay small. The partial q.k sums of a block of KB keys are completed by a shuffle-xor
// butterfly (a register permute on llvmpipe), so every lane sees every score and runs the
// online softmax itself: no shared memory, no workgroup barriers, no score scratch, K and V of
// a key read back to back. An invocation runs about rows / KB loop trips (lavapipe stops at
// 65535), plus 2 per split in the workgroup that merges its head (attn_merge.glsl: the last
// of the head's workgroups to finish; lane `lane` merges its own slice of every query head).
// Probabilities below 2^-100 of the running maximum are flushed to 0 (denormals are slow).
//
// WATCH (HeteroCache's pivot heads): a head's watch-table entry is a pair (mask word, logits
// offset), each ~0 when off; a head with either on is watched. Each record of a watched head
// carries two more sums under the same running maximum: the attention mass over rows
// [0, promptRows) and over the rows of that range marked in the head's bit mask (the rows its
// satellites hold on the device; 0 without a mask). The merge (attn_merge.glsl) turns them
// into fractions of the head's total mass and the prompt's softmax statistics. With a logits offset, the
// scaled logits of the prompt rows are stored too ([G][logitStride] floats from there), so a
// refresh selection pools them instead of a second pass over the keys. Row index = position
// for a watched head (it holds every row). Splits start at multiples of 32 rows, so the prompt
// part is one loop that loads a mask word where one begins (a buffer load is a loop over the
// lanes on llvmpipe; a loop of 32-row chunks around the block loop cost twice as much: 2.1 ->
// 1.0 ms per watched 128K-row head), and the prompt mass is the running sum where the prompt
// ends, not a second sum per key.
#extension GL_GOOGLE_include_directive : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_shuffle : require
#extension GL_EXT_shader_explicit_arithmetic_types_int64 : require
#include "common.glsl"
layout(local_size_x_id = 0) in;
layout(constant_id = 0) const uint L = 8;     // lanes = workgroup size = subgroup size (2^k)
layout(constant_id = 1) const uint G = 4;     // query heads per KV head
layout(constant_id = 2) const uint D = 128;   // head dim, multiple of 8
layout(constant_id = 3) const uint KB = 2;    // keys per block
layout(constant_id = 4) const uint LOG2L = 3; // log2(L)
layout(constant_id = 5) const bool WIDE = true; // u64vec4 loads where the slice allows
// Logit soft-capping (push constant softcap holds log2(e) * c): a specialisation, not a push
// constant test, because llvmpipe kept the scores in memory around the untaken branch (the
// CPU decode attention ran 25% slower with the test in it).
layout(constant_id = 6) const bool SOFTCAP = false;

const uint HD = D / 2;                // f16 pairs (words) per row
const uint NP = (HD + L - 1u) / L;    // words per lane
const bool EXACT = HD % L == 0u;      // every lane owns NP real words

layout(std430, binding = 0) readonly buffer Qb { vec2 q2[]; };
#ifdef TEXEL
// K and V as uniform texel buffers of R32G32B32A32_UINT (4 words per texel): llvmpipe gathers
// a texel for all lanes at once where it loads storage buffers lane by lane.
layout(binding = 1) uniform highp usamplerBuffer kt;
layout(binding = 2) uniform highp usamplerBuffer vt;
#else
layout(std430, binding = 1) readonly buffer Kb8 { u64vec4 k8[]; };
layout(std430, binding = 1) readonly buffer Kb4 { uvec4 k4[]; };
layout(std430, binding = 1) readonly buffer Kb2 { uvec2 k2[]; };
layout(std430, binding = 1) readonly buffer Kb1 { uint k1[]; };
layout(std430, binding = 2) readonly buffer Vb8 { u64vec4 v8[]; };
layout(std430, binding = 2) readonly buffer Vb4 { uvec4 v4[]; };
layout(std430, binding = 2) readonly buffer Vb2 { uvec2 v2[]; };
layout(std430, binding = 2) readonly buffer Vb1 { uint v1[]; };
#endif
layout(std430, binding = 3) readonly buffer Tb { uint tab[]; };
layout(std430, binding = 4) readonly buffer Lb { uint lens[]; };
// Scratch: arrival counters (attn_merge.glsl), records, (m, l) pairs, mass pairs.
layout(std430, binding = 5) coherent buffer Pb { float part[]; };
layout(std430, binding = 5) coherent buffer Pb2 { vec2 part2[]; };
// binding 6: the output (attn_merge.glsl)
#ifdef WATCH
layout(std430, binding = 7) readonly buffer Wt { uint watchTab[]; }; // per head: (mask, logits)
layout(std430, binding = 8) readonly buffer Wm { uint masks[]; };
layout(std430, binding = 9) writeonly buffer Wl { float wlogits[]; };
layout(std430, binding = 9) writeonly buffer Wl4 { vec4 wlogits4[]; };
// binding 10: the coverage output (attn_merge.glsl)
#endif

layout(push_constant) uniform Push {
  uint headBase;
  uint minTok;
  uint qOff4;
  uint mlOff;    // float offset of the (m, l) pairs
  float scale;
  uint window;   // sliding window W (0: none): the head is a ring of capRows rows, lens counts positions
  float softcap; // log2(e) * c: scores become c * tanh(score / c) (0: none)
  uint recOff;   // float offset of the records (after the counters; a multiple of 2)
  uint outOff;   // float offset of query head 0's output
#ifdef WATCH
  uint covOff;     // float offset of the (held, prompt) mass records
  uint promptRows; // rows [0, promptRows) are the prompt
  uint logitStride; // floats between a watched head's query heads' logits rows
  uint covOut;     // float offset of query head 0's (held, prompt) fractions in the coverage output
  uint statsOut;   // float offset of query head 0's prompt (max, 1 / sum) there
#endif
} p;

const float NEG_INF = -1.0 / 0.0;

// A sliding-window head keeps its last capRows positions in a ring (row = position % capRows);
// offsets t count from the window's first position, ringFirst.
uint ringFirst = 0u;
uint ringCap = 0u;
// The row of offset t: ringFirst's row is computed once (ringRow0), and t < capRows, so one
// compare and subtract replace a division per key (llvmpipe runs a division lane by lane; the
// modulo here cost the CPU kernel a third of its time). Without a window the row is t.
uint ringRow0 = 0u;
uint ringRow(uint t) {
  const uint r = ringRow0 + t;
  return r >= ringCap ? r - ringCap : r;
}
const float FLUSH = -100.0;

// 2^x, or 0 when x < FLUSH (also for x = -inf or NaN).
float pexp(float x) {
  return x >= FLUSH ? exp2(max(x, FLUSH)) : 0.0;
}

uvec2 split64(uint64_t x) {
  return unpackUint2x32(x);
}

// The lane's NP words of K (v = false) or V (v = true) row `row`. Inexact slices (HD not a
// multiple of L) load clamped words one at a time; their excess words meet a zero q / are
// never written.
void loadRow(bool v, uint row, uint lane, out uint w[NP]) {
  const uint at = row * HD + lane * NP;
#ifdef TEXEL
  if (EXACT && NP % 4u == 0u) {
    [[unroll]] for (uint i = 0; i < NP / 4u; i++) {
      const uvec4 x = v ? texelFetch(vt, int(at / 4u + i)) : texelFetch(kt, int(at / 4u + i));
      w[4 * i] = x.x;
      w[4 * i + 1] = x.y;
      w[4 * i + 2] = x.z;
      w[4 * i + 3] = x.w;
    }
  } else {
    const uint last = row * HD + HD - 1u;
    [[unroll]] for (uint i = 0; i < NP; i++) {
      const uint a = min(at + i, last);
      const uvec4 x = v ? texelFetch(vt, int(a / 4u)) : texelFetch(kt, int(a / 4u));
      w[i] = x[a % 4u];
    }
  }
#else
  if (EXACT && WIDE && NP % 8u == 0u) {
    [[unroll]] for (uint i = 0; i < NP / 8u; i++) {
      const u64vec4 x = v ? v8[at / 8u + i] : k8[at / 8u + i];
      const uvec2 a = split64(x.x);
      const uvec2 b = split64(x.y);
      const uvec2 c = split64(x.z);
      const uvec2 d = split64(x.w);
      w[8 * i] = a.x;
      w[8 * i + 1] = a.y;
      w[8 * i + 2] = b.x;
      w[8 * i + 3] = b.y;
      w[8 * i + 4] = c.x;
      w[8 * i + 5] = c.y;
      w[8 * i + 6] = d.x;
      w[8 * i + 7] = d.y;
    }
  } else if (EXACT && NP % 4u == 0u) {
    [[unroll]] for (uint i = 0; i < NP / 4u; i++) {
      const uvec4 x = v ? v4[at / 4u + i] : k4[at / 4u + i];
      w[4 * i] = x.x;
      w[4 * i + 1] = x.y;
      w[4 * i + 2] = x.z;
      w[4 * i + 3] = x.w;
    }
  } else if (EXACT && NP % 2u == 0u) {
    [[unroll]] for (uint i = 0; i < NP / 2u; i++) {
      const uvec2 x = v ? v2[at / 2u + i] : k2[at / 2u + i];
      w[2 * i] = x.x;
      w[2 * i + 1] = x.y;
    }
  } else {
    const uint last = row * HD + HD - 1u;
    [[unroll]] for (uint i = 0; i < NP; i++) {
      const uint a = min(at + i, last);
      w[i] = v ? v1[a] : k1[a];
    }
  }
#endif
}

// The invocation's state, shared by the block steps below (module scope, so that the steps
// take no array arguments; everything inlines into main).
vec2 q[G * NP];        // the lane's q slices, pre-scaled
float m[G];            // running maximum per query head
float l[G];            // running sum
vec2 o[G * NP];        // running output slices
float sc[KB * G];      // the block's scores (key j, head g at j * G + g), then probabilities
float alpha[G];        // the block's rescale of the running state

// Scores of keys t .. t + KB - 1 (keys from tEnd on: -inf), complete in every lane.
void scoreBlock(uint base, uint lane, uint t, uint tEnd) {
  vec2 kv[KB * NP];
  [[unroll]] for (uint j = 0; j < KB; j++) {
    uint w[NP];
    loadRow(false, base + ringRow(min(t + j, tEnd - 1u)), lane, w);
    [[unroll]] for (uint i = 0; i < NP; i++) kv[j * NP + i] = unpackHalf2x16(w[i]);
  }
  [[unroll]] for (uint k = 0; k < KB * G; k++) sc[k] = 0.0;
  [[unroll]] for (uint g = 0; g < G; g++) {
    [[unroll]] for (uint i = 0; i < NP; i++) {
      const vec2 qq = q[g * NP + i];
      [[unroll]] for (uint j = 0; j < KB; j++) sc[j * G + g] += dot(qq, kv[j * NP + i]);
    }
  }
  [[unroll]] for (uint e = 0; e < LOG2L; e++) {
    [[unroll]] for (uint k = 0; k < KB * G; k++) sc[k] += subgroupShuffleXor(sc[k], 1u << e);
  }
  if (SOFTCAP) {
    [[unroll]] for (uint k = 0; k < KB * G; k++) sc[k] = p.softcap * tanh(clamp(sc[k] / p.softcap, -15.0, 15.0));
  }
  [[unroll]] for (uint j = 1; j < KB; j++) {
    [[unroll]] for (uint g = 0; g < G; g++) sc[j * G + g] = t + j < tEnd ? sc[j * G + g] : NEG_INF;
  }
}

// Online softmax: the running state moves to the block's maximum; sc becomes probabilities.
void softmaxBlock() {
  [[unroll]] for (uint g = 0; g < G; g++) {
    float mb = sc[g];
    [[unroll]] for (uint j = 1; j < KB; j++) mb = max(mb, sc[j * G + g]);
    const float mn = max(m[g], mb);
    alpha[g] = pexp(m[g] - mn);
    m[g] = mn;
    l[g] *= alpha[g];
    [[unroll]] for (uint j = 0; j < KB; j++) {
      sc[j * G + g] = pexp(sc[j * G + g] - mn);
      l[g] += sc[j * G + g];
    }
  }
}

// Every register array is swept once per block, the KB keys innermost, so each q and o slice
// element (they outgrow the registers for G > 1) is touched once per block.
void valueBlock(uint base, uint lane, uint t, uint tEnd) {
  vec2 vv[KB * NP];
  [[unroll]] for (uint j = 0; j < KB; j++) {
    uint w[NP];
    loadRow(true, base + ringRow(min(t + j, tEnd - 1u)), lane, w);
    [[unroll]] for (uint i = 0; i < NP; i++) vv[j * NP + i] = unpackHalf2x16(w[i]);
  }
  [[unroll]] for (uint g = 0; g < G; g++) {
    [[unroll]] for (uint i = 0; i < NP; i++) {
      vec2 acc = o[g * NP + i] * alpha[g];
      [[unroll]] for (uint j = 0; j < KB; j++) acc += sc[j * G + g] * vv[j * NP + i];
      o[g * NP + i] = acc;
    }
  }
}

#ifdef WATCH
// The block's scores (before softmaxBlock) into the watched head's logits. llvmpipe runs a
// store as a loop over the lanes, so stores are few and wide: lane g < G collects query head
// g's logits of 4 consecutive keys and stores them as one vec4 when the 4th arrives (or the
// range ends: the row's padding to 4 floats takes the rest). Rows and split starts are
// multiples of 4 floats (see the logits layout and `per`). Storing one float per lane per key
// and head cost the decode attention 5 ms per step for 4 pivots of 64K rows (8B shape).
const bool WIDE_LOGITS = G <= L && 4u % KB == 0u;
vec4 lg4 = vec4(0.0);
void storeLogits(uint lo, uint lane, uint t, uint tEnd) {
  if (WIDE_LOGITS) {
    [[unroll]] for (uint j = 0; j < KB; j++) {
      float v = sc[j * G];
      [[unroll]] for (uint g = 1; g < G; g++) v = lane == g ? sc[j * G + g] : v;
      const uint c = (t + j) & 3u;
      lg4 = vec4(c == 0u ? v : lg4.x, c == 1u ? v : lg4.y, c == 2u ? v : lg4.z, c == 3u ? v : lg4.w);
    }
    const uint tn = t + KB;
    if ((tn & 3u) == 0u || tn >= tEnd) {
      if (lane < G) wlogits4[(lo + lane * p.logitStride + (t & ~3u)) / 4u] = lg4;
    }
    return;
  }
  // Otherwise score k (key k / G, query head k % G) by lane k, one store per lane.
  [[unroll]] for (uint k0 = 0; k0 < KB * G; k0 += L) {
    float v = sc[k0];
    [[unroll]] for (uint i = 1; i < L; i++) {
      if (k0 + i < KB * G) v = lane == i ? sc[k0 + i] : v;
    }
    const uint k = k0 + lane;
    const uint j = k / G;
    if (k < KB * G && t + j < tEnd) wlogits[lo + (k % G) * p.logitStride + t + j] = v;
  }
}
#endif

// The merge's share of the outputs (attn_merge.glsl): lane `lane` owns words lane * NP ..
// lane * NP + NP - 1 (f16 pairs' positions, as f32 pairs) of every query head, as in the split.
#define MERGE_VEC vec2
#define MERGE_N NP
#define MERGE_FIRST (gl_LocalInvocationID.x == 0u)
#define MERGE_ONE_SUBGROUP
#include "attn_merge.glsl"
bool mergeOwns(uint k) {
  return EXACT || gl_LocalInvocationID.x * NP + k < HD;
}
vec2 mergeLoad(uint rec, uint k) {
  return part2[p.recOff / 2u + rec * HD + gl_LocalInvocationID.x * NP + k];
}
void mergeStore(uint qh, uint k, vec2 v) {
  const uint o = p.outOff + qh * D + (gl_LocalInvocationID.x * NP + k) * 2u;
  outv[o] = v.x;
  outv[o + 1] = v.y;
}

// Split s of head h, whose window is `len` rows from ringFirst: its G records.
void splitPass(uint h, uint S, uint s, uint ns, uint len) {
  const uint lane = gl_LocalInvocationID.x;
  const uint base = tab[2 * h];
  // Whole 32-row mask words per split (the watch's chunking); free for unwatched heads.
  const uint per = ((len + ns - 1) / ns + 31u) & ~31u;
  const uint t0 = min(len, s * per);
  const uint t1 = min(len, t0 + per);

  // Words past the row (inexact slices) are zero.
  [[unroll]] for (uint g = 0; g < G; g++) {
    const uint qa = p.qOff4 * 2u + (h * G + g) * HD;
    [[unroll]] for (uint i = 0; i < NP; i++) {
      const uint wi = lane * NP + i;
      const vec2 x = q2[qa + min(wi, HD - 1u)] * p.scale;
      q[g * NP + i] = (EXACT || wi < HD) ? x : vec2(0.0);
    }
  }
  [[unroll]] for (uint g = 0; g < G; g++) {
    m[g] = NEG_INF;
    l[g] = 0.0;
    [[unroll]] for (uint i = 0; i < NP; i++) o[g * NP + i] = vec2(0.0);
  }

#ifdef WATCH
  const uint NONE = 0xFFFFFFFFu;
  const uint mo = watchTab[2 * h];
  const uint lo = watchTab[2 * h + 1];
  const bool watch = mo != NONE || lo != NONE;
  float hs[G]; // mass on held prompt rows, then under the final maximum
  float ps[G]; // mass on the prompt rows, likewise
  if (watch) {
    const uint pr = p.promptRows;
    const uint tp = clamp(pr, t0, t1);
    [[unroll]] for (uint g = 0; g < G; g++) hs[g] = 0.0;
    // Split starts are multiples of 32 (see `per`), so a block never straddles a mask word
    // and the word is reloaded where the next one begins.
    uint word = 0u;
    for (uint t = t0; t < tp; t += KB) {
      if (mo != NONE && (t == t0 || t % 32u == 0u)) word = masks[mo + t / 32u];
      scoreBlock(base, lane, t, tp);
      if (lo != NONE) storeLogits(lo, lane, t, tp);
      softmaxBlock();
      // Keys past the prompt have probability 0, whatever bit they meet.
      [[unroll]] for (uint g = 0; g < G; g++) hs[g] *= alpha[g];
      [[unroll]] for (uint j = 0; j < KB; j++) {
        const float held = float((word >> ((t + j) % 32u)) & 1u);
        [[unroll]] for (uint g = 0; g < G; g++) hs[g] += held * sc[j * G + g];
      }
      valueBlock(base, lane, t, tp);
    }
    float mp[G];
    [[unroll]] for (uint g = 0; g < G; g++) {
      mp[g] = m[g];
      ps[g] = l[g];
    }
    for (uint t = tp; t < t1; t += KB) {
      scoreBlock(base, lane, t, t1);
      softmaxBlock();
      valueBlock(base, lane, t, t1);
    }
    [[unroll]] for (uint g = 0; g < G; g++) {
      const float r = pexp(mp[g] - m[g]); // 0 when the split holds no prompt row (-inf - x)
      hs[g] *= r;
      ps[g] *= r;
    }
  } else
#endif
  for (uint t = t0; t < t1; t += KB) {
    scoreBlock(base, lane, t, t1);
    softmaxBlock();
    valueBlock(base, lane, t, t1);
  }

  // One record per (split, query head); an empty split leaves m = -inf, l = 0.
  [[unroll]] for (uint g = 0; g < G; g++) {
    const uint rec = (h * S + s) * G + g;
    [[unroll]] for (uint i = 0; i < NP; i++) {
      const uint wi = lane * NP + i;
      if (EXACT || wi < HD) part2[p.recOff / 2u + rec * HD + wi] = o[g * NP + i];
    }
    if (lane == 0u) {
      part[p.mlOff + rec * 2] = m[g];
      part[p.mlOff + rec * 2 + 1] = l[g];
#ifdef WATCH
      if (watch) {
        part[p.covOff + rec * 2] = hs[g];
        part[p.covOff + rec * 2 + 1] = ps[g];
      }
#endif
    }
  }
}

void main() {
  // Heads along x, splits along y: llvmpipe hands each thread a contiguous block of the grid,
  // so with heads of very different lengths (HeteroCache's full heads beside its compressed
  // ones) a head-major order gave one thread the long heads; split-major spreads every head.
  const uint S = gl_NumWorkGroups.y;
  const uint y = gl_WorkGroupID.y;
  const uint h = p.headBase + gl_WorkGroupID.x;

  ringCap = tab[2 * h + 1];
  const uint lenAll = lens[h];
  ringFirst = p.window != 0u && lenAll > p.window ? lenAll - p.window : 0u;
  ringRow0 = ringCap > 0u ? ringFirst % ringCap : 0u;
  const uint len = p.window != 0u ? lenAll - ringFirst : min(lenAll, ringCap);
  const uint ns = clamp((len + p.minTok - 1) / p.minTok, 1u, S);
  // A head with ns < S splits spreads them over the grid's rows (split s sits at the first y
  // with y * ns / S == s) rather than taking rows 0..ns-1, for the same reason. The other rows
  // hold no split but still arrive.
  const uint s = (y * ns) / S;
  if (y == 0u || ((y - 1u) * ns) / S != s) splitPass(h, S, s, ns, len);
  arriveAndMerge(h, S, ns);
}
