/* Host-side ranking of a refresh selection's scores rows (HeteroCache on a CPU device, where the
 * top-k kernel would run on the same cores, slower): the same takes as the kernel's top-k and
 * takeByScore in src/cache/heterocache/heterocache.ts, which the tests hold it to. */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

/* The top-k kernel's order as an unsigned key: NaN lowest (0), -0 as +0, then IEEE order. */
static inline uint32_t order_key(uint32_t b) {
  if ((b & 0x7fffffffu) > 0x7f800000u) return 0;
  if (b == 0x80000000u) return 0x80000000u;
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

static int cmp_u32(const void *a, const void *b) {
  const uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return x < y ? -1 : x > y;
}

int32_t hc_select_rows(const float *row, uint32_t n, const uint32_t *caps, uint32_t n_caps,
                       uint32_t *out) {
  if ((!row && n) || (!caps && n_caps) || !out) return hc_fail(HC_E_ARG, "hc_select_rows: null argument");
  if (n_caps > 4096) return hc_fail(HC_E_ARG, "hc_select_rows: %u caps", n_caps);
  uint32_t *keys = malloc((size_t)n * 4 + 1);
  uint32_t *hist = calloc(65536, 4);
  int16_t *slot = malloc(65536 * sizeof(int16_t));
  /* Per cap: its bucket (-1: takes nothing), keys it needs from the bucket, threshold, ties,
   * output offset; and the caps in ascending size. */
  int32_t *bucket = malloc((size_t)n_caps * 4 + 4);
  uint32_t *need = malloc((size_t)n_caps * 4 + 4), *thr = malloc((size_t)n_caps * 4 + 4);
  uint32_t *ties = malloc((size_t)n_caps * 4 + 4), *order = malloc((size_t)n_caps * 4 + 4);
  uint64_t *at = malloc((size_t)n_caps * 8 + 8);
  uint32_t **members = calloc((size_t)n_caps + 1, sizeof(uint32_t *));
  uint32_t *filled = calloc((size_t)n_caps + 1, 4);
  int32_t rc = HC_OK;
  if (!keys || !hist || !slot || !bucket || !need || !thr || !ties || !order || !at || !members ||
      !filled) {
    rc = hc_fail(HC_E_OOM, "hc_select_rows: host memory for %u rows", n);
    goto done;
  }
  const uint32_t *bits = (const uint32_t *)row;
  for (uint32_t i = 0; i < n; i++) {
    const uint32_t k = order_key(bits[i]);
    keys[i] = k;
    hist[k >> 16]++;
  }
  uint64_t offset = 0;
  for (uint32_t c = 0; c < n_caps; c++) {
    order[c] = c;
    at[c] = offset;
    offset += caps[c] < n ? caps[c] : n;
  }
  for (uint32_t i = 1; i < n_caps; i++) { /* insertion sort: a handful of caps */
    const uint32_t o = order[i];
    uint32_t j = i;
    for (; j > 0 && caps[order[j - 1]] > caps[o]; j--) order[j] = order[j - 1];
    order[j] = o;
  }
  /* Each cap's bucket, walking the histogram down from the top. */
  int32_t d = 65535;
  uint32_t above = 0;
  for (uint32_t i = 0; i < n_caps; i++) {
    const uint32_t c = order[i];
    const uint32_t want = caps[c] < n ? caps[c] : n;
    bucket[c] = -1;
    if (want == 0) continue;
    while (above + hist[d] < want) above += hist[d--];
    bucket[c] = d;
    need[c] = want - above;
  }
  /* The keys of those buckets, sorted: each cap's threshold and how many of its equals it takes
   * (the lowest positions, as the kernel breaks ties). */
  memset(slot, 0xff, 65536 * sizeof(int16_t));
  uint32_t n_slots = 0, lowest = 65536;
  for (uint32_t c = 0; c < n_caps; c++) {
    const int32_t b = bucket[c];
    if (b < 0 || slot[b] >= 0) continue;
    members[n_slots] = malloc((size_t)hist[b] * 4 + 4);
    if (!members[n_slots]) {
      rc = hc_fail(HC_E_OOM, "hc_select_rows: host memory for %u keys", hist[b]);
      goto done;
    }
    slot[b] = (int16_t)n_slots++;
    if ((uint32_t)b < lowest) lowest = (uint32_t)b;
  }
  for (uint32_t i = 0; i < n; i++) {
    const uint32_t b = keys[i] >> 16;
    if (b < lowest || slot[b] < 0) continue;
    members[slot[b]][filled[slot[b]]++] = keys[i];
  }
  for (uint32_t s = 0; s < n_slots; s++) qsort(members[s], filled[s], 4, cmp_u32);
  uint64_t floor = 1ull << 32;
  for (uint32_t c = 0; c < n_caps; c++) {
    if (bucket[c] < 0) continue;
    const int16_t s = slot[bucket[c]];
    const uint32_t len = filled[s];
    const uint32_t t = members[s][len - need[c]];
    uint32_t greater = 0;
    for (uint32_t j = len; j > 0 && members[s][j - 1] > t; j--) greater++;
    thr[c] = t;
    ties[c] = need[c] - greater;
    if (t < floor) floor = t;
  }
  for (uint32_t i = 0; i < n; i++) {
    const uint32_t k = keys[i];
    if (k < floor) continue;
    for (uint32_t c = 0; c < n_caps; c++) {
      if (bucket[c] < 0) continue;
      if (k > thr[c]) out[at[c]++] = i;
      else if (k == thr[c] && ties[c] > 0) {
        ties[c]--;
        out[at[c]++] = i;
      }
    }
  }
done:
  for (uint32_t s = 0; members && s < n_caps; s++) free(members[s]);
  free(keys), free(hist), free(slot), free(bucket), free(need), free(thr), free(ties), free(order);
  free(at), free(members), free(filled);
  return rc;
}
