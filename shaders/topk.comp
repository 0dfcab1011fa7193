#version 450
#extension GL_GOOGLE_include_directive : require
// The local size comes before the include: glslang folds gl_WorkGroupSize in common.glsl
// to the default (1, 1, 1) when the include precedes it, which breaks wg_sum's shared path.
layout(local_size_x_id = 0) in;
#include "common.glsl"
// Top-k of rows of n floats by radix select over order-preserving uint keys, then a stable
// compaction, so the k indices come out in ascending position order. TOPK_STAGE selects:
//   1 hist    grid (chunks, rows): 2^bits-bin histogram of key digit (key >> shift) over the
//             elements whose higher bits equal the prefix found so far (global atomics);
//   2 select  grid (rows): finds the bin holding the k-th largest, extends the prefix, lowers
//             the remaining count, clears the histogram for the next pass;
//   3 count   grid (chunks, rows): per chunk, elements above the threshold key T and equal to T;
//   4 compact grid (chunks, rows): writes the indices (and values) of the elements above T plus
//             the first kRem equal to T, in index order.
// Three digit passes (11 + 11 + 10 bits) pin T exactly. NaN counts as -inf and -0 as +0, and ties
// at T go to the lowest indices, as in topkSet and the TS reference. Scratch (uint words, offsets
// in push constants): hist[rows][2048], state[rows] = (prefix, kRem), counts[rows][chunks][2].
// Every invocation loops at most ITEMS + 2048 / workgroup size times per pass (lavapipe's cap).
layout(std430, binding = 0) readonly buffer X { float x[]; };
layout(std430, binding = 1) buffer S { uint scratch[]; };
layout(std430, binding = 2) writeonly buffer OI { uint outIdx[]; };
layout(std430, binding = 3) writeonly buffer OV { float outVal[]; };
layout(push_constant) uniform P {
  uint n;
  uint k;
  uint rows;
  uint rowStride;  // elements between rows of x
  uint chunks;     // chunks per row; a chunk is workgroup size * ITEMS elements
  uint shift;      // lowest bit of this pass's digit
  uint bits;       // digit width
  uint pass;       // 0 for the first digit pass (state not yet written)
  uint histOff;    // word offsets into scratch
  uint stateOff;
  uint countOff;
  uint outStride;  // elements between rows of the outputs
  uint outOffset;  // element index of row 0 in the outputs
  uint flags;      // bit 0: write values
} p;

#define ITEMS 16u
#define HIST_BINS 2048u

// Integer tests, not isnan / == 0.0, so fast-math float folding cannot change the rules.
uint orderedKey(float v) {
  uint b = floatBitsToUint(v);
  if ((b & 0x7fffffffu) > 0x7f800000u) b = 0xff800000u;  // NaN -> -inf
  if (b == 0x80000000u) b = 0u;                          // -0 -> +0
  return (b & 0x80000000u) != 0u ? ~b : (b | 0x80000000u);
}

shared uint scanBuf[WG_MAX];

// Position of this invocation in scan order. Subgroup scans order lanes by subgroup, then
// lane, which need not follow gl_LocalInvocationID, so data is assigned by this rank instead.
uint scanRank() {
#ifdef HC_SUBGROUP
  return gl_SubgroupID * gl_SubgroupSize + gl_SubgroupInvocationID;
#else
  return gl_LocalInvocationID.x;
#endif
}

// Exclusive prefix sum over ranks; `total` gets the workgroup sum. Reached by all invocations.
uint wgExclusiveScan(uint v, out uint total) {
#ifdef HC_SUBGROUP
  uint inc = subgroupInclusiveAdd(v);
  uint sgTotal = subgroupAdd(v);
  if (subgroupElect()) scanBuf[gl_SubgroupID] = sgTotal;
  barrier();
  uint before = 0u;
  total = 0u;
  for (uint s = 0u; s < gl_NumSubgroups; s++) {
    uint c = scanBuf[s];
    if (s < gl_SubgroupID) before += c;
    total += c;
  }
  barrier();
  return before + inc - v;
#else
  uint r = gl_LocalInvocationID.x;
  uint wg = gl_WorkGroupSize.x;
  scanBuf[r] = v;
  barrier();
  for (uint off = 1u; off < wg; off <<= 1) {
    uint add = r >= off ? scanBuf[r - off] : 0u;
    barrier();
    scanBuf[r] += add;
    barrier();
  }
  total = scanBuf[wg - 1u];
  uint ex = scanBuf[r] - v;
  barrier();
  return ex;
#endif
}

uint wgSum(uint v) {
#ifdef HC_SUBGROUP
  uint s = subgroupAdd(v);
  if (gl_NumSubgroups == 1u) return s;
  if (subgroupElect()) scanBuf[gl_SubgroupID] = s;
  barrier();
  uint t = 0u;
  for (uint i = 0u; i < gl_NumSubgroups; i++) t += scanBuf[i];
  barrier();
  return t;
#else
  uint r = gl_LocalInvocationID.x;
  scanBuf[r] = v;
  barrier();
  for (uint s = gl_WorkGroupSize.x / 2u; s > 0u; s >>= 1) {
    if (r < s) scanBuf[r] += scanBuf[r + s];
    barrier();
  }
  uint t = scanBuf[0];
  barrier();
  return t;
#endif
}

#if TOPK_STAGE == 1
shared uint hist[HIST_BINS];
#endif

void main() {
  uint tid = gl_LocalInvocationID.x;
  uint wg = gl_WorkGroupSize.x;
#if TOPK_STAGE == 2
  uint row = gl_WorkGroupID.y * gl_NumWorkGroups.x + gl_WorkGroupID.x;
  if (row >= p.rows) return;
  uint chunk = 0u;
#else
  uint row = gl_WorkGroupID.z * gl_NumWorkGroups.y + gl_WorkGroupID.y;
  if (row >= p.rows) return;
  uint chunk = gl_WorkGroupID.x;
#endif
  uint base = row * p.rowStride;
  uint start = chunk * wg * ITEMS;
  uint end = min(p.n, start + wg * ITEMS);
  uint st = p.stateOff + 2u * row;

#if TOPK_STAGE == 1
  for (uint b = tid; b < HIST_BINS; b += wg) hist[b] = 0u;
  barrier();
  uint prefix = 0u, mask = 0u;
  if (p.pass != 0u) {
    prefix = scratch[st];
    mask = ~((1u << (p.shift + p.bits)) - 1u);
  }
  uint digitMask = (1u << p.bits) - 1u;
  for (uint i = start + tid; i < end; i += wg) {
    uint key = orderedKey(x[base + i]);
    if ((key & mask) == prefix) atomicAdd(hist[(key >> p.shift) & digitMask], 1u);
  }
  barrier();
  uint hb = p.histOff + row * HIST_BINS;
  for (uint b = tid; b < HIST_BINS; b += wg) {
    uint c = hist[b];
    if (c != 0u) atomicAdd(scratch[hb + b], c);
  }

#elif TOPK_STAGE == 2
  uint prefix = p.pass == 0u ? 0u : scratch[st];
  uint kRem = p.pass == 0u ? p.k : scratch[st + 1u];
  uint nb = 1u << p.bits;
  uint per = max(1u, nb / wg);
  uint rank = scanRank();
  // Lower ranks own higher bins, so the exclusive scan counts the elements in bins above mine.
  uint hb = p.histOff + row * HIST_BINS;
  uint hi = nb > rank * per ? nb - rank * per : 0u;
  uint lo = nb > (rank + 1u) * per ? nb - (rank + 1u) * per : 0u;
  uint mine = 0u;
  for (uint b = lo; b < hi; b++) mine += scratch[hb + b];
  uint total;
  uint above = wgExclusiveScan(mine, total);
  for (uint b = hi; b > lo; b--) {
    uint c = scratch[hb + b - 1u];
    scratch[hb + b - 1u] = 0u;
    if (above < kRem && above + c >= kRem) {
      // Exactly one bin crosses kRem; its owner alone writes the new state.
      scratch[st] = prefix | ((b - 1u) << p.shift);
      scratch[st + 1u] = kRem - above;
    }
    above += c;
  }

#else
  uint T = scratch[st];
  uint keys[ITEMS];
  uint g = 0u, e = 0u;
  uint first = start + scanRank() * ITEMS;
  [[unroll]] for (uint j = 0u; j < ITEMS; j++) {
    uint i = first + j;
    keys[j] = i < end ? orderedKey(x[base + i]) : 0u;  // 0 is below every key, so never chosen
    g += keys[j] > T ? 1u : 0u;
    e += keys[j] == T ? 1u : 0u;
  }
#if TOPK_STAGE == 3
  uint packed = wgSum(g | (e << 16));  // a chunk holds at most 16384 elements: no carry
  if (tid == 0u) {
    uint c = p.countOff + 2u * (row * p.chunks + chunk);
    scratch[c] = packed & 0xffffu;
    scratch[c + 1u] = packed >> 16;
  }
#else
  uint kRem = scratch[st + 1u];
  uint gBefore = 0u, eBefore = 0u;
  uint cb = p.countOff + 2u * row * p.chunks;
  for (uint c = tid; c < chunk; c += wg) {
    gBefore += scratch[cb + 2u * c];
    eBefore += scratch[cb + 2u * c + 1u];
  }
  gBefore = wgSum(gBefore);
  eBefore = wgSum(eBefore);
  uint total;
  uint ex = wgExclusiveScan(g | (e << 16), total);
  uint gRun = gBefore + (ex & 0xffffu);
  uint eRun = eBefore + (ex >> 16);
  uint ob = p.outOffset + row * p.outStride;
  bool values = (p.flags & 1u) != 0u;
  [[unroll]] for (uint j = 0u; j < ITEMS; j++) {
    uint i = first + j;
    bool take = false;
    uint pos = 0u;
    if (keys[j] > T) {
      take = true;
      pos = gRun + min(eRun, kRem);
      gRun++;
    } else if (keys[j] == T) {
      take = eRun < kRem;
      pos = gRun + eRun;
      eRun++;
    }
    if (take) {
      outIdx[ob + pos] = i;
      if (values) outVal[ob + pos] = x[base + i];
    }
  }
#endif
#endif
}
