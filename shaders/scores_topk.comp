#version 450
// Top-k of f32 rows: one workgroup per row finds the k-th largest value exactly over an
// order-preserving integer key, then writes the indices of every value above it plus the
// lowest-positioned ties, in ascending position order. Same set as src/cache/analysis.ts topkSet:
// NaN counts as -inf, -0 == +0, ties go to lower positions. Writes min(k, n) indices per row.
//
// Passes over the row (each pass a load of every value; they are the cost):
// 1. Sample select, when the plan fits: the keys of M evenly spaced values go to shared memory
//    and a radix select there brackets the k-th key between two sample ranks, 3 standard
//    deviations of the sample's rank either side. One pass copies the values inside the bracket
//    into shared memory (at most CAP) and counts, per invocation, the values above it. If the
//    k-th value lies inside and the candidates fit (a miss is about 3 rows in a thousand by the
//    normal approximation, more with many equal values), the select finishes in shared memory:
//    two passes over the row in all, with the output pass.
// 2. Else 8-bit histograms over the row from the top byte down, until the k-th value's bin holds
//    at most CAP values (float keys bunch in few top-byte bins: usually two), then the same
//    copy-and-count pass over that bin; where a bin never fits (many equal values) the four
//    histograms find the key and a count pass counts: six passes, as before the sample select.
// 3. The output pass writes, in position order, everything above the k-th key and its first ties.
// At n = 131072, k = 10000 on lavapipe, CPU time per row, before (six passes) and after side by
// side: uniform values 3.7 -> 2.0 ms (1 row), 21-22 -> 11.1-11.3 ms (6 rows); exp(-20 u) values
// 2.6-2.7 -> 1.95 ms, 15.1 -> 10.6-10.8 ms. Details: docs/algorithm.md §10, the coverage trigger's
// refresh selection.
#extension GL_EXT_control_flow_attributes : enable
layout(local_size_x_id = 0) in;
layout(constant_id = 0) const uint WGS = 256;
// Candidates that shared memory holds (TopK sizes it from the device's limit); the sample uses
// both candidate arrays, 2 * CAP keys.
layout(constant_id = 1) const uint CAP = 2048;

#ifdef TEXEL
// The rows as a uniform texel buffer of R32G32B32A32_UINT (4 values per texel): llvmpipe
// gathers a texel for all lanes at once where it loads storage buffers lane by lane, and the
// passes over a row are all loads.
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
shared uint hist2[256];
shared uint pick[6];
shared uint nCand;
shared uint nAbove;
shared uint candKey[CAP];
shared uint candPos[CAP]; // absolute element
// Per invocation: values above the k-th and equal to it, then their inclusive prefix sums.
shared uint above[WGS];
shared uint equal[WGS];

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

// Invocation `who` finds the bin of hist (h 0) or hist2 (h 1) that holds the need-th largest:
// pick[3 * slot ..] = (prefix with that bin's digit, need within the bin, the bin's count).
void pickBin(uint tid, uint who, uint h, uint slot, int shift, uint prefix, uint need) {
  if (tid == who) {
    uint cum = 0u;
    for (int bin = 255; bin >= 0; bin--) {
      const uint c = h == 0u ? hist[bin] : hist2[bin];
      if (cum + c >= need) {
        pick[3u * slot] = prefix | (uint(bin) << shift);
        pick[3u * slot + 1u] = need - cum;
        pick[3u * slot + 2u] = c;
        break;
      }
      cum += c;
    }
  }
}

// Key i of the shared keys: the candidates, or the sample, which goes on into candPos.
uint sharedKey(uint i) {
  return i < CAP ? candKey[i] : candPos[i - CAP];
}

// The rankA-th and rankB-th largest (1-based) of the first `count` shared keys, and for each how
// many keys equal to it that rank takes: (keyA, needA, keyB, needB). One radix select for both:
// the keys are read once per digit, into one histogram while the two prefixes agree. Every key
// has the top bits `known` (mask): the select starts at the byte below them.
uvec4 selectShared(uint tid, uint count, uint rankA, uint rankB, uint known, uint mask) {
  uvec2 prefix = uvec2(known);
  uvec2 need = uvec2(rankA, rankB);
  for (int shift = 24 - bitCount(mask); shift >= 0; shift -= 8) {
    const bool split = prefix.x != prefix.y;
    for (uint i = tid; i < 256u; i += WGS) {
      hist[i] = 0u;
      hist2[i] = 0u;
    }
    barrier();
    for (uint i = tid; i < count; i += WGS) {
      const uint key = sharedKey(i);
      const uint bin = (key >> shift) & 255u;
      if ((key & mask) == prefix.x) atomicAdd(hist[bin], 1u);
      if (split && (key & mask) == prefix.y) atomicAdd(hist2[bin], 1u);
    }
    barrier();
    pickBin(tid, 0u, 0u, 0u, shift, prefix.x, need.x);
    pickBin(tid, WGS > 1u ? 1u : 0u, split ? 1u : 0u, 1u, shift, prefix.y, need.y);
    barrier();
    prefix = uvec2(pick[0], pick[3]);
    need = uvec2(pick[1], pick[4]);
    mask |= 255u << shift;
  }
  return uvec4(prefix.x, need.x, prefix.y, need.y);
}

// One pass over the row in position order: the values with keys in [lo, hi] go to the candidates
// (nCand counts them all; at most CAP are kept), those above hi are counted per invocation
// (above[tid]) and in all (nAbove). Ends with a barrier.
void copyBracket(uint tid, uint lo, uint hi, uint a, uint b, uint src, uint end) {
  if (tid == 0u) {
    nCand = 0u;
    nAbove = 0u;
  }
  barrier();
  uint own = 0u;
  for (uint u = a; u < b; u++) {
    const uvec4 v = unitAt(u, src, end);
    [[unroll]] for (uint c = 0u; c < 4u; c++) {
      const uint e = 4u * u + c;
      const uint key = keyOf(v[c]);
      if (e < src || e >= end) continue;
      if (key > hi) {
        own++;
      } else if (key >= lo) {
        const uint s = atomicAdd(nCand, 1u);
        if (s < CAP) {
          candKey[s] = key;
          candPos[s] = e;
        }
      }
    }
  }
  above[tid] = own;
  equal[tid] = 0u;
  atomicAdd(nAbove, own);
  barrier();
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

  // Every branch below depends on push constants and shared values read after a barrier only,
  // so the whole workgroup takes it (barriers stay in uniform control flow).
  // The sample's plan: M keys, the k-th value near sample rank r, the bracket r -+ delta, and
  // the values expected inside it (spacing n / M each) well under CAP.
  const uint M = min(2u * CAP, n);
  const float frac = float(kk) / float(n);
  const float r = frac * float(M);
#ifdef HC_TEST_MISS
  const int delta = -2; // tests: lo above hi, an empty bracket unless its ends are equal
#else
  const int delta = int(ceil(3.0 * sqrt(float(M) * frac * (1.0 - frac)))) + 1;
#endif
  const int rankHi = int(floor(r)) - delta; // 1-based ranks from the top of the sample
  const int rankLo = int(ceil(r)) + delta;
  const bool planned = n > CAP &&
    float(rankLo - rankHi + 1) * float(n) / float(M) <= 0.75 * float(CAP);

  // The candidates' keys: [lo, hi].
  uint lo = 0u;
  uint hi = 0xffffffffu;
  bool copied = false;
  if (n <= CAP) {
    copyBracket(tid, lo, hi, a, b, src, end);
    copied = true;
  } else if (planned) {
    for (uint j = tid; j < M; j += WGS) {
      const uint e = src + min(n - 1u, uint(float(j) * (float(n) / float(M))));
      const uint key = keyOf(unitAt(e >> 2, src, end)[e & 3u]);
      if (j < CAP) {
        candKey[j] = key;
      } else {
        candPos[j - CAP] = key;
      }
    }
    barrier();
    const uint rankA = uint(clamp(rankHi, 1, int(M)));
    const uint rankB = uint(clamp(rankLo, 1, int(M)));
    const uvec4 sel = selectShared(tid, M, rankA, rankB, 0u, 0u);
    // A rank past an end of the sample leaves that side open.
    if (rankHi >= 1) hi = sel.x;
    if (rankLo <= int(M)) lo = sel.z;
    copyBracket(tid, lo, hi, a, b, src, end);
    // Exact whatever lo and hi are: the k-th value is a candidate and every candidate is kept.
    copied = nCand <= CAP && nAbove < kk && nAbove + nCand >= kk;
  }

  uint prefix = 0u;
  uint need = kk;
  if (!copied) {
    // Histograms over the row until the k-th value's bin fits in shared memory (or is one key).
    // prefix: the k-th key's known top bits (mask); need: its rank among the keys with them.
    uint mask = 0u;
    uint binCount = n;
    int shift = 24;
    while (shift >= 0 && binCount > CAP) {
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
      pickBin(tid, 0u, 0u, 0u, shift, prefix, need);
      barrier();
      prefix = pick[0];
      need = pick[1];
      binCount = pick[2];
      mask |= 255u << shift;
      shift -= 8;
    }
    if (shift >= 0) {
      // The bin's keys run from prefix to prefix with all lower bits set.
      lo = prefix;
      hi = prefix | ~mask;
      copyBracket(tid, lo, hi, a, b, src, end);
      copied = true;
    } else {
      // prefix is the k-th largest key: count what lies above it and at it per invocation.
      uint ownA = 0u, ownE = 0u;
      for (uint u = a; u < b; u++) {
        const uvec4 v = unitAt(u, src, end);
        [[unroll]] for (uint c = 0u; c < 4u; c++) {
          const uint e = 4u * u + c;
          const uint key = keyOf(v[c]);
          if (e >= src && e < end) {
            ownA += key > prefix ? 1u : 0u;
            ownE += key == prefix ? 1u : 0u;
          }
        }
      }
      above[tid] = ownA;
      equal[tid] = ownE;
      barrier();
    }
  }

  if (copied) {
    // The k-th key is among the candidates: finish the select there, then count each candidate
    // above or at it for the invocation whose units hold it.
    // The candidates share the whole bytes that lo and hi share.
    const int diff = findMSB(lo ^ hi); // -1: lo == hi
    const uint mask = diff < 0 ? 0xffffffffu : diff >= 24 ? 0u : ~0u << (8 * (diff / 8 + 1));
    const uvec4 sel = selectShared(tid, nCand, kk - nAbove, kk - nAbove, lo & mask, mask);
    prefix = sel.x;
    need = sel.y;
    for (uint i = tid; i < nCand; i += WGS) {
      const uint key = candKey[i];
#ifdef HC_TEST_BREAK
      const uint owner = min(((candPos[i] >> 2) - u0) / chunk + 1u, WGS - 1u); // tests: off by one
#else
      const uint owner = ((candPos[i] >> 2) - u0) / chunk;
#endif
      if (key > prefix) {
        atomicAdd(above[owner], 1u);
      } else if (key == prefix) {
        atomicAdd(equal[owner], 1u);
      }
    }
    barrier();
  }

  const uvec2 mine = uvec2(above[tid], equal[tid]);
  for (uint off = 1u; off < WGS; off <<= 1) {
    const uvec2 t = tid >= off ? uvec2(above[tid - off], equal[tid - off]) : uvec2(0u);
    barrier();
    above[tid] += t.x;
    equal[tid] += t.y;
    barrier();
  }
  // Take everything above the k-th key and the first `need` equal ones, in position order.
  const uvec2 before = uvec2(above[tid], equal[tid]) - mine;
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
