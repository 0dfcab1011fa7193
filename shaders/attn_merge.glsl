// Decode attention, merge step, run by the split pass itself (attn_decode.comp and
// attn_decode_cpu.comp include this file): "the last workgroup merges", the threadfence-reduction
// pattern, instead of a merge pass behind a barrier (one dispatch and one barrier less per layer
// and decode token).
//
// Every workgroup of the split grid belongs to one KV head h, and h has exactly S of them (the
// grid's split dimension), whether its split holds rows or not: an empty one writes nothing
// but still arrives. A workgroup writes its partials, makes them visible (the scratch is
// `coherent`, memoryBarrierBuffer, then a workgroup barrier) and one invocation counts it in
// h's arrival counter with an atomicAdd. The workgroup that sees S - 1 earlier arrivals is the
// last of h's, so every partial of h is visible to it: after another memoryBarrierBuffer it
// combines them into the outputs of h's G query heads (and, for a watched head, its coverage
// fractions and prompt softmax statistics), with the same sums in the same order as the former
// merge pass (attn_merge.comp), and resets the counter to 0 so that the recorded command list
// replays. The counters are uints [0, nKvHeads) of the scratch binding: zero before the first
// dispatch (DecodeAttention.zeroCounters at allocation), left zero by every dispatch, written by
// nothing else (the prefill attention's scratch starts after them). Heads of several cache
// chunks (one dispatch each) count apart: a head lives in one chunk.
//
// The including shader declares, before the #include: G, D, NEG_INF; the scratch at binding 5
// as `coherent buffer { float part[]; }` (records at float p.recOff, record r's D floats at
// p.recOff + r * D; (m, l) pairs at p.mlOff; WATCH: (held, prompt) mass pairs at p.covOff); push
// fields outOff (and WATCH covOut, statsOut); how its invocations share the outputs of one
// query head: MERGE_VEC (a vector type), MERGE_N (the vectors an invocation owns per query
// head), MERGE_FIRST (the invocation that writes a head's statistics); MERGE_ONE_SUBGROUP when
// a workgroup is one subgroup (no shared memory then). After it: mergeOwns(k) (whether the
// invocation owns its k-th vector), mergeLoad(rec, k) (that vector of record rec),
// mergeStore(qh, k, v) (writes it for query head qh); then it calls arriveAndMerge. Bindings
// declared here: 6 the output, WATCH 10 the coverage output.
#ifndef HC_ATTN_MERGE_GLSL
#define HC_ATTN_MERGE_GLSL

// Aliases the scratch's first words: one arrival counter per KV head.
layout(std430, binding = 5) coherent buffer Arrivals { uint arrivals[]; };
layout(std430, binding = 6) writeonly buffer Ob { float outv[]; }; // [nHeads][D] f32
#ifdef WATCH
// Watched heads (see attn_decode_cpu.comp): per query head, the fractions of its attention
// mass on held prompt rows and on all prompt rows; with a logits offset also the softmax
// statistics of its prompt rows, (max, 1 / sum) in the log2 domain of the stored logits, the
// form scores_pool_cpu.comp reads.
layout(std430, binding = 10) writeonly buffer Cv { float cov[]; };
#endif

#ifndef MERGE_ONE_SUBGROUP
shared uint mergeOld;
#endif

// Counts this workgroup in head h's arrivals; true in the last of the head's S workgroups. Every
// invocation calls it (uniform control flow), after its last write of partials.
bool mergeArrive(uint h, uint S) {
  memoryBarrierBuffer();
#ifdef MERGE_ONE_SUBGROUP
  subgroupBarrier();
  uint old = 0u;
  if (gl_SubgroupInvocationID == 0u) {
    old = atomicAdd(arrivals[h], 1u);
    if (old == S - 1u) atomicExchange(arrivals[h], 0u); // all S arrived: ready for a replay
  }
  old = subgroupShuffle(old, 0u);
#else
  barrier();
  if (gl_LocalInvocationIndex == 0u) {
    const uint o = atomicAdd(arrivals[h], 1u);
    if (o == S - 1u) atomicExchange(arrivals[h], 0u); // all S arrived: ready for a replay
    mergeOld = o;
  }
  barrier();
  const uint old = mergeOld;
#endif
  const bool last = old == S - 1u;
  if (last) memoryBarrierBuffer();
  return last;
}

// Defined by the including shader (after the #include, so they may use the bindings above).
bool mergeOwns(uint k);
MERGE_VEC mergeLoad(uint rec, uint k);
void mergeStore(uint qh, uint k, MERGE_VEC v);

// The merge's per-invocation accumulators (module scope: no array arguments).
MERGE_VEC mergeAcc[G * MERGE_N];

// Combines the ns records of each of head h's G query heads (records r0 + j * G + g, split j
// < ns; the grid's other splits wrote none) and writes the normalised outputs. `watch`: h is
// watched (its records carry mass pairs); `stats`: it stores logits (write its statistics).
void mergeHead(uint h, uint S, uint ns, bool watch, bool stats) {
  const uint r0 = h * S * G;
  float mx[G];
  [[unroll]] for (uint g = 0; g < G; g++) mx[g] = NEG_INF;
  for (uint j = 0; j < ns; j++) {
    [[unroll]] for (uint g = 0; g < G; g++) {
      mx[g] = max(mx[g], part[p.mlOff + (r0 + j * G + g) * 2]);
    }
  }
  float lsum[G];
  float hsum[G];
  float psum[G];
  [[unroll]] for (uint g = 0; g < G; g++) {
    lsum[g] = 0.0;
    hsum[g] = 0.0;
    psum[g] = 0.0;
    [[unroll]] for (uint k = 0; k < MERGE_N; k++) mergeAcc[g * MERGE_N + k] = MERGE_VEC(0.0);
  }
  // Splits outermost, so each output's sum runs in split order as the merge pass's did, and an
  // invocation runs 2 * ns loop trips (lavapipe's cap).
  for (uint j = 0; j < ns; j++) {
    [[unroll]] for (uint g = 0; g < G; g++) {
      const uint r = r0 + j * G + g;
      const float mj = part[p.mlOff + r * 2];
      if (mj != NEG_INF) {
        const float w = exp2(mj - mx[g]);
        lsum[g] += w * part[p.mlOff + r * 2 + 1];
#ifdef WATCH
        if (watch) {
          hsum[g] += w * part[p.covOff + r * 2];
          psum[g] += w * part[p.covOff + r * 2 + 1];
        }
#endif
        [[unroll]] for (uint k = 0; k < MERGE_N; k++) {
          if (mergeOwns(k)) mergeAcc[g * MERGE_N + k] += w * mergeLoad(r, k);
        }
      }
    }
  }
  [[unroll]] for (uint g = 0; g < G; g++) {
    const float inv = lsum[g] > 0.0 ? 1.0 / lsum[g] : 0.0;
    const uint qh = h * G + g;
    [[unroll]] for (uint k = 0; k < MERGE_N; k++) {
      if (mergeOwns(k)) mergeStore(qh, k, mergeAcc[g * MERGE_N + k] * inv);
    }
#ifdef WATCH
    if (watch && MERGE_FIRST) {
      cov[p.covOut + qh * 2] = hsum[g] * inv;
      cov[p.covOut + qh * 2 + 1] = psum[g] * inv;
      if (stats) {
        cov[p.statsOut + qh * 2] = mx[g];
        cov[p.statsOut + qh * 2 + 1] = psum[g] > 0.0 ? 1.0 / psum[g] : 0.0;
      }
    }
#endif
  }
}

// Counts this workgroup in head h's arrivals and, in the last of them, merges the head's ns
// splits (a WATCH includer declares watchTab, the heads' (mask, logits) pairs, before the
// #include). Every invocation calls it, after its split's last write.
void arriveAndMerge(uint h, uint S, uint ns) {
  if (!mergeArrive(h, S)) return;
#ifdef WATCH
  const uint NONE = 0xFFFFFFFFu;
  const bool logits = watchTab[2 * h + 1] != NONE;
  mergeHead(h, S, ns, watchTab[2 * h] != NONE || logits, logits);
#else
  mergeHead(h, S, ns, false, false);
#endif
}

#endif
