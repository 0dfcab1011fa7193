/* Error text and the handle table. */
#include "internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One process-wide message: calls from the JS thread are sequential, and a failing wait on a
 * pool thread also returns its code, so the text is a courtesy, not the error itself. */
static char g_error[1024];
static pthread_mutex_t g_error_lock = PTHREAD_MUTEX_INITIALIZER;

int32_t hc_fail(int32_t code, const char *fmt, ...) {
  pthread_mutex_lock(&g_error_lock);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(g_error, sizeof g_error, fmt, ap);
  va_end(ap);
  pthread_mutex_unlock(&g_error_lock);
  return code;
}

static const char *vk_result_name(VkResult r) {
  switch (r) {
  case VK_NOT_READY: return "VK_NOT_READY";
  case VK_TIMEOUT: return "VK_TIMEOUT";
  case VK_ERROR_OUT_OF_HOST_MEMORY: return "VK_ERROR_OUT_OF_HOST_MEMORY";
  case VK_ERROR_OUT_OF_DEVICE_MEMORY: return "VK_ERROR_OUT_OF_DEVICE_MEMORY";
  case VK_ERROR_INITIALIZATION_FAILED: return "VK_ERROR_INITIALIZATION_FAILED";
  case VK_ERROR_DEVICE_LOST: return "VK_ERROR_DEVICE_LOST";
  case VK_ERROR_MEMORY_MAP_FAILED: return "VK_ERROR_MEMORY_MAP_FAILED";
  case VK_ERROR_LAYER_NOT_PRESENT: return "VK_ERROR_LAYER_NOT_PRESENT";
  case VK_ERROR_EXTENSION_NOT_PRESENT: return "VK_ERROR_EXTENSION_NOT_PRESENT";
  case VK_ERROR_FEATURE_NOT_PRESENT: return "VK_ERROR_FEATURE_NOT_PRESENT";
  case VK_ERROR_INCOMPATIBLE_DRIVER: return "VK_ERROR_INCOMPATIBLE_DRIVER";
  case VK_ERROR_TOO_MANY_OBJECTS: return "VK_ERROR_TOO_MANY_OBJECTS";
  case VK_ERROR_FRAGMENTED_POOL: return "VK_ERROR_FRAGMENTED_POOL";
  case VK_ERROR_OUT_OF_POOL_MEMORY: return "VK_ERROR_OUT_OF_POOL_MEMORY";
  default: return "VkResult";
  }
}

int32_t hc_vk_fail(VkResult r, const char *what) {
  int32_t code = HC_E_VK;
  if (r == VK_ERROR_OUT_OF_DEVICE_MEMORY || r == VK_ERROR_OUT_OF_HOST_MEMORY) code = HC_E_OOM;
  if (r == VK_ERROR_DEVICE_LOST) code = HC_E_LOST;
  if (r == VK_ERROR_INCOMPATIBLE_DRIVER || r == VK_ERROR_INITIALIZATION_FAILED) code = HC_E_NODEVICE;
  return hc_fail(code, "%s failed: %s (%d)", what, vk_result_name(r), (int)r);
}

int32_t hc_last_error(char *out, uint64_t cap) {
  if (!out || cap == 0) return 0;
  pthread_mutex_lock(&g_error_lock);
  size_t n = strlen(g_error);
  if (n >= cap) n = (size_t)cap - 1;
  memcpy(out, g_error, n);
  out[n] = 0;
  pthread_mutex_unlock(&g_error_lock);
  return (int32_t)n;
}

/* Handles are (generation << 32 | slot + 1); a slot's generation grows on every free, so a
 * destroyed handle never aliases a new object. */
struct slot {
  void *object;
  uint32_t generation;
  enum hc_kind kind;
};

static struct slot *g_slots;
static uint32_t g_n_slots;
static pthread_mutex_t g_slots_lock = PTHREAD_MUTEX_INITIALIZER;

hc_handle hc_handle_new(enum hc_kind kind, void *object) {
  pthread_mutex_lock(&g_slots_lock);
  uint32_t i = 0;
  while (i < g_n_slots && g_slots[i].object) i++;
  if (i == g_n_slots) {
    uint32_t n = g_n_slots ? g_n_slots * 2 : 256;
    struct slot *s = realloc(g_slots, n * sizeof *s);
    if (!s) {
      pthread_mutex_unlock(&g_slots_lock);
      return 0;
    }
    memset(s + g_n_slots, 0, (n - g_n_slots) * sizeof *s);
    g_slots = s;
    g_n_slots = n;
  }
  g_slots[i].object = object;
  g_slots[i].kind = kind;
  g_slots[i].generation++;
  hc_handle h = ((uint64_t)g_slots[i].generation << 32) | (uint64_t)(i + 1);
  pthread_mutex_unlock(&g_slots_lock);
  return h;
}

void *hc_handle_get(hc_handle h, enum hc_kind kind) {
  uint32_t i = (uint32_t)(h & 0xffffffffu);
  uint32_t gen = (uint32_t)(h >> 32);
  void *obj = NULL;
  pthread_mutex_lock(&g_slots_lock);
  if (i >= 1 && i <= g_n_slots) {
    struct slot *s = &g_slots[i - 1];
    if (s->object && s->generation == gen && s->kind == kind) obj = s->object;
  }
  pthread_mutex_unlock(&g_slots_lock);
  return obj;
}

void hc_handle_free(hc_handle h) {
  uint32_t i = (uint32_t)(h & 0xffffffffu);
  pthread_mutex_lock(&g_slots_lock);
  if (i >= 1 && i <= g_n_slots) g_slots[i - 1].object = NULL;
  pthread_mutex_unlock(&g_slots_lock);
}
