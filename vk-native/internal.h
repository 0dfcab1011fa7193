/* Shared internals of the shim: object structs, the handle table, error helpers. */
#ifndef HCVK_INTERNAL_H
#define HCVK_INTERNAL_H

#include "hcvk.h"

#include <pthread.h>
#include <stdbool.h>
#include <vulkan/vulkan.h>

enum hc_kind { HC_KIND_DEVICE = 1, HC_KIND_BUFFER, HC_KIND_KERNEL, HC_KIND_CMD };

/* Timestamp slots per command list: enough for one after every dispatch of a decode step (a
 * profile; bench/step_counts.ts), each reset right before its write. */
#define HC_TIMESTAMP_SLOTS 1024u

struct hc_queue {
  VkQueue queue;
  uint32_t family;
  VkSemaphore timeline;
  uint64_t next_value; /* last value handed out by a submit */
};

struct hc_device {
  VkInstance instance;
  VkPhysicalDevice physical;
  VkDevice device;
  VkPhysicalDeviceProperties props;
  VkPhysicalDeviceMemoryProperties mem_props;
  uint64_t max_allocation_bytes;
  uint32_t subgroup_size;
  bool subgroup_arith;
  bool float16;
  bool storage16;
  bool storage8;
  bool separate_transfer;
  /* R32G32B32A32_UINT usable as a uniform texel buffer (HC_BIND_TEXEL). */
  bool texel;
  /* VK_EXT_memory_budget enabled: heap budgets and usage are read before large allocations. */
  bool memory_budget;
  /* VK_EXT_subgroup_size_control: compute kernels get the subgroup size the shaders assume
   * (subgroup_size) and, where their workgroup is whole subgroups, full subgroups. */
  bool subgroup_control;
  bool full_subgroups;
  uint32_t max_workgroup_subgroups;
  /* A simulated budget: most bytes this device may hold in device-local heaps (0: none). */
  uint64_t budget_cap;
  /* Bytes this device holds per memory heap. */
  uint64_t heap_bytes[VK_MAX_MEMORY_HEAPS];
  struct hc_queue queues[2];
  uint32_t families[2];
  uint32_t n_families;
  /* Queues need external synchronisation: submits come from the JS thread, waits from pool
   * threads, so every vkQueueSubmit takes this lock. */
  pthread_mutex_t submit_lock;
  uint32_t live_objects;
};

/* A texel view of a buffer range, made on first use by a dispatch and kept until the buffer
 * is destroyed: a recorded list may be replayed long after the dispatch call. */
struct hc_view {
  VkBufferView view;
  uint64_t offset, range;
};

struct hc_buffer {
  struct hc_device *dev;
  hc_handle dev_handle;
  VkBuffer buffer;
  VkDeviceMemory memory;
  uint64_t bytes;
  uint64_t alloc_bytes; /* the allocation's size (>= bytes), counted in dev->heap_bytes */
  uint32_t heap;
  int32_t kind;
  void *mapped;
  bool host_visible; /* host-visible and coherent memory (a DEVICE buffer on a UMA or CPU device) */
  bool texel_usage; /* created with the texel usage bit (the device supports the format) */
  struct hc_view *views;
  uint32_t n_views, cap_views;
};

struct hc_kernel {
  struct hc_device *dev;
  hc_handle dev_handle;
  VkDescriptorSetLayout set_layout;
  VkPipelineLayout layout;
  VkPipeline pipeline;
  uint32_t n_bindings;
  uint32_t push_bytes;
  uint32_t kinds[16]; /* HC_BIND_* per binding */
};

struct hc_cmd {
  struct hc_device *dev;
  hc_handle dev_handle;
  int32_t queue;
  VkCommandPool pool;
  VkCommandBuffer cb;
  VkDescriptorPool *desc_pools;
  uint32_t n_desc_pools;
  uint32_t cur_desc_pool;
  VkQueryPool query_pool;
  bool recording;
  bool ended;
  uint64_t last_value; /* timeline value of the last submit, 0 if never submitted */
};

/* Without a separate transfer family, transfer work goes to the compute queue and timeline, so
 * values stay monotonic on the one queue. */
static inline struct hc_queue *hc_queue_of(struct hc_device *d, int32_t queue) {
  return (queue == HC_QUEUE_TRANSFER && d->separate_transfer) ? &d->queues[1] : &d->queues[0];
}

static inline VkDescriptorType hc_descriptor_type(uint32_t kind) {
  return kind == HC_BIND_TEXEL ? VK_DESCRIPTOR_TYPE_UNIFORM_TEXEL_BUFFER
                              : VK_DESCRIPTOR_TYPE_STORAGE_BUFFER;
}

/* Error reporting (errors.c). */
int32_t hc_fail(int32_t code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int32_t hc_vk_fail(VkResult r, const char *what);

/* A cached texel view of buffer b's [offset, offset + range) (resources.c). */
int32_t hc_buffer_view(struct hc_buffer *b, uint64_t offset, uint64_t range, VkBufferView *out);

/* Handle table (handles.c). */
hc_handle hc_handle_new(enum hc_kind kind, void *object);
void *hc_handle_get(hc_handle h, enum hc_kind kind);
void hc_handle_free(hc_handle h);

#define HC_GET(var, type, kind, handle, what)                                                  \
  type *var = (type *)hc_handle_get((handle), (kind));                                        \
  if (!var) return hc_fail(HC_E_HANDLE, "%s: invalid or destroyed handle 0x%llx", (what),     \
                           (unsigned long long)(handle))

#endif
