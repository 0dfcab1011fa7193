#version 450
// Decode attention, split-K pass: one workgroup = one (split, KV head). The G query heads of the
// KV head share one read of its K and V rows [t0, t1) and leave one online-softmax partial each
// (m in the log2 domain, l = sum of 2^(s-m), o = unnormalised sum of 2^(s-m) * v); the last
// workgroup of the head to finish merges them into the head's outputs (attn_merge.glsl).
// Layout of the cache: see src/kernels/kv.ts.
//
// Per block of WG rows: the K phase gives each invocation one whole row (a full dot product for
// every query head, so no cross-lane sums); the block max per head is the only workgroup
// reduction; the V phase gives each team of D/8 invocations one row at a time, each invocation
// owning 8 dimensions of every query head's accumulator. In the merge, invocation tid owns the
// vec4 columns tid, tid + WG, ... of every query head.
//
// WATCH: see attn_decode_cpu.comp (per watched head, the mass over the prompt rows and over the
// rows marked in its mask, under the record's running maximum, and with a logits offset the
// prompt rows' scaled logits). Each row owner keeps its own sums and stores its row's logits; a
// workgroup reduction adds the sums at the end.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
layout(local_size_x_id = 0) in;
layout(constant_id = 0) const uint WGS = 64; // = local size x, for sizing shared arrays
layout(constant_id = 1) const uint G = 4;   // query heads per KV head (1..16)
layout(constant_id = 2) const uint D = 128; // head dim, multiple of 8, <= 256
// Logit soft-capping (push constant softcap holds log2(e) * c): a specialisation, not a push
// constant test, because llvmpipe kept the scores in memory around the untaken branch (the
// CPU decode attention ran 25% slower with the test in it).
layout(constant_id = 3) const bool SOFTCAP = false;

const uint D4 = D / 4;
const uint D8 = D / 8;

layout(std430, binding = 0) readonly buffer Qb { vec4 q4[]; };     // [nHeads][D] f32
layout(std430, binding = 1) readonly buffer Kb { uvec4 k8[]; };    // pool rows, f16
layout(std430, binding = 2) readonly buffer Vb { uvec4 v8[]; };
layout(std430, binding = 3) readonly buffer Tb { uint tab[]; };    // per head: baseRow, capRows
layout(std430, binding = 4) readonly buffer Lb { uint lens[]; };   // per head: rows valid
// Scratch: arrival counters (attn_merge.glsl), partial records, (m, l) pairs, mass pairs.
layout(std430, binding = 5) coherent buffer Pb { float part[]; };
layout(std430, binding = 5) coherent buffer Pb4 { vec4 part4[]; };
// binding 6: the output (attn_merge.glsl)
#ifdef WATCH
layout(std430, binding = 7) readonly buffer Wt { uint watchTab[]; }; // per head: (mask, logits)
layout(std430, binding = 8) readonly buffer Wm { uint masks[]; };
layout(std430, binding = 9) writeonly buffer Wl { float wlogits[]; };
// binding 10: the coverage output (attn_merge.glsl)
#endif

layout(push_constant) uniform Push {
  uint headBase; // first KV head of this dispatch (grid y indexes heads from here)
  uint minTok;   // a head uses at most ceil(len / minTok) splits
  uint qOff4;    // q offset in vec4 units
  uint mlOff;    // float offset of the (m, l) records inside `part`
  float scale;   // log2(e) / sqrt(D)
  uint window;   // sliding window W (0: none): the head is a ring of capRows rows, lens counts positions
  float softcap; // log2(e) * c: scores become c * tanh(score / c) (0: none)
  uint recOff;   // float offset of the partial records inside `part` (after the counters)
  uint outOff;   // float offset of query head 0's output
#ifdef WATCH
  uint covOff;     // float offset of the (held, prompt) mass records
  uint promptRows; // rows [0, promptRows) are the prompt
  uint logitStride; // floats between a watched head's query heads' logits rows
  uint covOut;     // float offset of query head 0's (held, prompt) fractions in the coverage output
  uint statsOut;   // float offset of query head 0's prompt (max, 1 / sum) there
#endif
} p;

// One buffer each suffices: a block's writes to sc come after its first barrier, which every
// invocation reaches only after reading the previous block's sc and bmax.
shared vec4 qs[G * D4];     // scaled queries; reused for the final team reduction
shared float sc[G * WGS];   // per-row probabilities of the current block
shared float bmax[G * WGS]; // block-max reduction scratch
shared float lred[G];

const float NEG_INF = -1.0 / 0.0;

// A sliding-window head keeps its last capRows positions in a ring (row = position % capRows);
// split offsets t count from the window's first position, ringFirst.
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

void unpack8(uvec4 w, out vec4 a, out vec4 b) {
  a = vec4(unpackHalf2x16(w.x), unpackHalf2x16(w.y));
  b = vec4(unpackHalf2x16(w.z), unpackHalf2x16(w.w));
}

// The merge's share of the outputs (attn_merge.glsl): invocation tid owns vec4 columns
// tid + k * WGS (k < MERGE_N; WGS >= D / 8, so at most 2) of every query head.
#define MERGE_VEC vec4
const uint MERGE_N = (D4 + WGS - 1u) / WGS;
#define MERGE_FIRST (gl_LocalInvocationID.x == 0u)
#include "attn_merge.glsl"
bool mergeOwns(uint k) {
  return gl_LocalInvocationID.x + k * WGS < D4;
}
vec4 mergeLoad(uint rec, uint k) {
  return part4[p.recOff / 4u + rec * D4 + gl_LocalInvocationID.x + k * WGS];
}
void mergeStore(uint qh, uint k, vec4 v) {
  const uint o = p.outOff + qh * D + (gl_LocalInvocationID.x + k * WGS) * 4u;
  outv[o] = v.x;
  outv[o + 1] = v.y;
  outv[o + 2] = v.z;
  outv[o + 3] = v.w;
}

// Split s (< ns) of head h, whose window is `len` rows from ringFirst: its G partial records.
void splitPass(uint h, uint S, uint s, uint ns, uint len) {
  const uint WG = gl_WorkGroupSize.x;
  const uint tid = gl_LocalInvocationID.x;
  const uint base = tab[2 * h];
  const uint per = (len + ns - 1) / ns;
  const uint t0 = min(len, s * per);
  const uint t1 = min(len, t0 + per);

  for (uint i = tid; i < G * D4; i += WG) qs[i] = q4[p.qOff4 + h * G * D4 + i] * p.scale;

  // V-phase mapping: team of D8 invocations per row; invocations past NT*D8 only do K rows.
  const uint NT = WG / D8;
  const uint team = tid / D8;
  const uint lane = tid % D8;

  float m[G];
  float l[G];
  vec4 oa[G];
  vec4 ob[G];
  [[unroll]] for (uint g = 0; g < G; g++) {
    m[g] = NEG_INF;
    l[g] = 0.0;
    oa[g] = vec4(0.0);
    ob[g] = vec4(0.0);
  }
#ifdef WATCH
  const uint NONE = 0xFFFFFFFFu;
  const uint mo = watchTab[2 * h];
  const uint lo = watchTab[2 * h + 1];
  const bool watch = mo != NONE || lo != NONE;
  float hs[G];
  float ps[G];
  [[unroll]] for (uint g = 0; g < G; g++) {
    hs[g] = 0.0;
    ps[g] = 0.0;
  }
#endif
  barrier();

  for (uint tb = t0; tb < t1; tb += WG) {
    const uint nrows = min(WG, t1 - tb);
    float sv[G];
    [[unroll]] for (uint g = 0; g < G; g++) sv[g] = 0.0;
    if (tid < nrows) {
      const uint row = (base + ringRow(tb + tid)) * D8;
      [[unroll]] for (uint c = 0; c < D8; c++) {
        vec4 a, b;
        unpack8(k8[row + c], a, b);
        [[unroll]] for (uint g = 0; g < G; g++) {
          sv[g] += dot(qs[g * D4 + 2 * c], a) + dot(qs[g * D4 + 2 * c + 1], b);
        }
      }
      if (SOFTCAP) {
        [[unroll]] for (uint g = 0; g < G; g++) sv[g] = p.softcap * tanh(clamp(sv[g] / p.softcap, -15.0, 15.0));
      }
    } else {
      [[unroll]] for (uint g = 0; g < G; g++) sv[g] = NEG_INF;
    }
#ifdef WATCH
    if (lo != NONE && tid < nrows && tb + tid < p.promptRows) {
      [[unroll]] for (uint g = 0; g < G; g++) wlogits[lo + g * p.logitStride + tb + tid] = sv[g];
    }
#endif

    // Block max per query head.
    float mn[G];
#ifdef HC_SUBGROUP
    [[unroll]] for (uint g = 0; g < G; g++) {
      const float r = subgroupMax(sv[g]);
      if (subgroupElect()) bmax[g * WGS + gl_SubgroupID] = r;
    }
    barrier();
    [[unroll]] for (uint g = 0; g < G; g++) {
      float r = bmax[g * WGS];
      for (uint i = 1; i < gl_NumSubgroups; i++) r = max(r, bmax[g * WGS + i]);
      mn[g] = max(m[g], r);
    }
#else
    [[unroll]] for (uint g = 0; g < G; g++) bmax[g * WGS + tid] = sv[g];
    barrier();
    for (uint st = WG / 2; st > 0; st >>= 1) {
      if (tid < st) {
        [[unroll]] for (uint g = 0; g < G; g++) {
          bmax[g * WGS + tid] = max(bmax[g * WGS + tid], bmax[g * WGS + tid + st]);
        }
      }
      barrier();
    }
    [[unroll]] for (uint g = 0; g < G; g++) mn[g] = max(m[g], bmax[g * WGS]);
#endif

    // Row owners turn scores into probabilities against the new running max.
    if (tid < nrows) {
      [[unroll]] for (uint g = 0; g < G; g++) sc[g * WGS + tid] = exp2(sv[g] - mn[g]);
    }
    [[unroll]] for (uint g = 0; g < G; g++) {
      const float alpha = m[g] == NEG_INF ? 0.0 : exp2(m[g] - mn[g]);
      m[g] = mn[g];
      l[g] *= alpha;
      oa[g] *= alpha;
      ob[g] *= alpha;
#ifdef WATCH
      hs[g] *= alpha;
      ps[g] *= alpha;
#endif
    }
#ifdef WATCH
    if (watch && tid < nrows && tb + tid < p.promptRows) {
      const uint pos = tb + tid;
      const bool held = mo != NONE && ((masks[mo + pos / 32u] >> (pos % 32u)) & 1u) != 0u;
      [[unroll]] for (uint g = 0; g < G; g++) {
        const float pr = sc[g * WGS + tid];
        ps[g] += pr;
        hs[g] += held ? pr : 0.0;
      }
    }
#endif
    barrier();

    if (team < NT) {
      for (uint r = team; r < nrows; r += NT) {
        vec4 a, b;
        unpack8(v8[(base + ringRow(tb + r)) * D8 + lane], a, b);
        [[unroll]] for (uint g = 0; g < G; g++) {
          const float pr = sc[g * WGS + r];
          l[g] += pr;
          oa[g] += pr * a;
          ob[g] += pr * b;
        }
      }
    }
  }

  // Teams hold disjoint rows with one shared max: add their accumulators in turns.
  barrier();
  if (team == 0) {
    [[unroll]] for (uint g = 0; g < G; g++) {
      qs[g * D4 + 2 * lane] = oa[g];
      qs[g * D4 + 2 * lane + 1] = ob[g];
      if (lane == 0) lred[g] = l[g];
    }
  }
  barrier();
#ifdef HC_TEST_BREAK
  // Never built: tests/variants_test.ts compiles this broken twin (team 1's rows are lost) to
  // check that the whole-model tests of the "gpu" set notice a broken GPU-only kernel.
  const uint firstTeam = 2u;
#else
  const uint firstTeam = 1u;
#endif
  for (uint t = firstTeam; t < NT; t++) {
    if (team == t) {
      [[unroll]] for (uint g = 0; g < G; g++) {
        qs[g * D4 + 2 * lane] += oa[g];
        qs[g * D4 + 2 * lane + 1] += ob[g];
        if (lane == 0) lred[g] += l[g];
      }
    }
    barrier();
  }

  const uint rec0 = (h * S + s) * G;
  for (uint i = tid; i < G * D4; i += WG) {
    const vec4 v = qs[i];
    const uint o = p.recOff + (rec0 + i / D4) * D + (i % D4) * 4;
    part[o] = v.x;
    part[o + 1] = v.y;
    part[o + 2] = v.z;
    part[o + 3] = v.w;
  }
  if (tid < G) {
    part[p.mlOff + (rec0 + tid) * 2] = m[tid];
    part[p.mlOff + (rec0 + tid) * 2 + 1] = lred[tid];
  }
#ifdef WATCH
  // watch is uniform over the workgroup, so every invocation reaches the same barriers.
  if (watch) {
    barrier();
    [[unroll]] for (uint k = 0; k < 2u; k++) {
      [[unroll]] for (uint g = 0; g < G; g++) bmax[g * WGS + tid] = k == 0u ? hs[g] : ps[g];
      barrier();
      for (uint st = WG / 2; st > 0; st >>= 1) {
        if (tid < st) {
          [[unroll]] for (uint g = 0; g < G; g++) bmax[g * WGS + tid] += bmax[g * WGS + tid + st];
        }
        barrier();
      }
      if (tid < G) part[p.covOff + (rec0 + tid) * 2 + k] = bmax[tid * WGS];
      barrier();
    }
  }
#endif
}

void main() {
  const uint S = gl_NumWorkGroups.x;
  const uint s = gl_WorkGroupID.x;
  const uint h = p.headBase + gl_WorkGroupID.y;

  ringCap = tab[2 * h + 1];
  const uint lenAll = lens[h];
  ringFirst = p.window != 0u && lenAll > p.window ? lenAll - p.window : 0u;
  ringRow0 = ringCap > 0u ? ringFirst % ringCap : 0u;
  const uint len = p.window != 0u ? lenAll - ringFirst : min(lenAll, ringCap);
  const uint ns = clamp((len + p.minTok - 1) / p.minTok, 1u, S);
  // A split past the head's ns holds no rows but still arrives (uniform over the workgroup).
  if (s < ns) splitPass(h, S, s, ns, len);
  arriveAndMerge(h, S, ns);
}
