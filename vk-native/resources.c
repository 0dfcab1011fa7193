/* Buffers (three memory kinds, host kinds mapped for life) and compute kernels. */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

static int find_memory_type(const struct hc_device *d, uint32_t bits, VkMemoryPropertyFlags want) {
  for (uint32_t i = 0; i < d->mem_props.memoryTypeCount; i++)
    if ((bits & (1u << i)) && (d->mem_props.memoryTypes[i].propertyFlags & want) == want) return (int)i;
  return -1;
}

/* Allocations from this size up read the heap budget (a driver call); smaller ones are
 * checked against the simulated cap only. */
#define HC_BUDGET_QUERY_BYTES (1ull << 20)

static bool heap_local(const struct hc_device *d, uint32_t heap) {
  return (d->mem_props.memoryHeaps[heap].flags & VK_MEMORY_HEAP_DEVICE_LOCAL_BIT) != 0;
}

static uint64_t local_held(const struct hc_device *d) {
  uint64_t held = 0;
  for (uint32_t h = 0; h < d->mem_props.memoryHeapCount; h++)
    if (heap_local(d, h)) held += d->heap_bytes[h];
  return held;
}

/* Heap h's budget and usage: VK_EXT_memory_budget's (usage by every process) where enabled,
 * else the heap's size and what this device holds. */
static void heap_budget(const struct hc_device *d, uint32_t heap, bool query, uint64_t *budget,
                        uint64_t *used) {
  *budget = d->mem_props.memoryHeaps[heap].size;
  *used = d->heap_bytes[heap];
  if (!d->memory_budget || !query) return;
  VkPhysicalDeviceMemoryBudgetPropertiesEXT mb = {
      .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MEMORY_BUDGET_PROPERTIES_EXT};
  VkPhysicalDeviceMemoryProperties2 mp = {
      .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MEMORY_PROPERTIES_2, .pNext = &mb};
  vkGetPhysicalDeviceMemoryProperties2(d->physical, &mp);
  if (mb.heapBudget[heap] == 0) return; /* a driver that fills nothing in */
  *budget = mb.heapBudget[heap];
  *used = mb.heapUsage[heap];
}

/* HC_E_OOM with the sizes when `need` bytes do not fit heap `heap` (budget, then the cap). */
static int32_t check_budget(const struct hc_device *d, uint32_t heap, uint64_t need) {
  uint64_t budget = 0, used = 0, avail = UINT64_MAX;
  const char *what = "heap budget";
  /* Without the extension the heap size is no promise either way (lavapipe and UMA drivers
   * report one and allocate past it): the driver's own failure speaks then. */
  if (d->memory_budget && need >= HC_BUDGET_QUERY_BYTES) {
    heap_budget(d, heap, true, &budget, &used);
    avail = budget > used ? budget - used : 0;
  }
  bool local = heap_local(d, heap);
  if (local && d->budget_cap) {
    uint64_t held = local_held(d);
    uint64_t cap_avail = d->budget_cap > held ? d->budget_cap - held : 0;
    if (cap_avail < avail) {
      avail = cap_avail;
      budget = d->budget_cap;
      used = held;
      what = "simulated budget";
    }
  }
  if (need <= avail) return HC_OK;
  return hc_fail(HC_E_OOM,
                 "out of %s memory: %llu bytes needed, %llu bytes free (%s %llu bytes, %llu in use)",
                 local ? "device" : "host-visible", (unsigned long long)need,
                 (unsigned long long)avail, what, (unsigned long long)budget,
                 (unsigned long long)used);
}

int32_t hc_device_memory(hc_handle device, uint64_t *out) {
  HC_GET(d, struct hc_device, HC_KIND_DEVICE, device, "hc_device_memory");
  if (!out) return hc_fail(HC_E_ARG, "hc_device_memory: null output");
  uint64_t budget = 0, used = 0;
  for (uint32_t h = 0; h < d->mem_props.memoryHeapCount; h++) {
    if (!heap_local(d, h)) continue;
    uint64_t b, u;
    heap_budget(d, h, true, &b, &u);
    budget += b;
    used += u;
  }
  uint64_t held = local_held(d);
  uint64_t avail = budget > used ? budget - used : 0;
  if (d->budget_cap) {
    uint64_t cap_avail = d->budget_cap > held ? d->budget_cap - held : 0;
    if (cap_avail < avail) avail = cap_avail;
  }
  out[0] = budget;
  out[1] = used;
  out[2] = held;
  out[3] = d->budget_cap;
  out[4] = avail;
  return HC_OK;
}

int32_t hc_device_set_budget(hc_handle device, uint64_t cap_bytes) {
  HC_GET(d, struct hc_device, HC_KIND_DEVICE, device, "hc_device_set_budget");
  d->budget_cap = cap_bytes;
  return HC_OK;
}

int32_t hc_buffer_create(hc_handle device, uint64_t bytes, int32_t kind, hc_handle *out_buffer) {
  HC_GET(d, struct hc_device, HC_KIND_DEVICE, device, "hc_buffer_create");
  if (!out_buffer) return hc_fail(HC_E_ARG, "hc_buffer_create: null output");
  if (kind < HC_BUFFER_DEVICE || kind > HC_BUFFER_READBACK)
    return hc_fail(HC_E_ARG, "hc_buffer_create: unknown kind %d", kind);
  if (bytes == 0) return hc_fail(HC_E_ARG, "hc_buffer_create: zero-sized buffer");
  if (bytes > d->max_allocation_bytes)
    return hc_fail(HC_E_LIMIT, "buffer of %llu bytes exceeds the device's maxMemoryAllocationSize (%llu)",
                   (unsigned long long)bytes, (unsigned long long)d->max_allocation_bytes);
  struct hc_buffer *b = calloc(1, sizeof *b);
  if (!b) return hc_fail(HC_E_OOM, "out of host memory");
  b->dev = d;
  b->dev_handle = device;
  b->bytes = bytes;
  b->kind = kind;
  VkBufferUsageFlags usage = VK_BUFFER_USAGE_STORAGE_BUFFER_BIT |
                             VK_BUFFER_USAGE_TRANSFER_SRC_BIT | VK_BUFFER_USAGE_TRANSFER_DST_BIT;
  /* Any buffer may be bound as texels later; the bit is only asked for where the format
   * supports it, so a device without texel support allocates as before. */
  if (d->texel) usage |= VK_BUFFER_USAGE_UNIFORM_TEXEL_BUFFER_BIT;
  b->texel_usage = d->texel;
  VkBufferCreateInfo bci = {
      .sType = VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO,
      .size = bytes,
      .usage = usage,
      /* Shared by the compute and transfer families without ownership transfers. */
      .sharingMode = d->n_families > 1 ? VK_SHARING_MODE_CONCURRENT : VK_SHARING_MODE_EXCLUSIVE,
      .queueFamilyIndexCount = d->n_families > 1 ? d->n_families : 0,
      .pQueueFamilyIndices = d->n_families > 1 ? d->families : NULL,
  };
  VkResult r = vkCreateBuffer(d->device, &bci, NULL, &b->buffer);
  if (r != VK_SUCCESS) {
    free(b);
    return hc_vk_fail(r, "vkCreateBuffer");
  }
  VkMemoryRequirements req;
  vkGetBufferMemoryRequirements(d->device, b->buffer, &req);
  const VkMemoryPropertyFlags HV = VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT;
  const VkMemoryPropertyFlags HC = VK_MEMORY_PROPERTY_HOST_COHERENT_BIT;
  const VkMemoryPropertyFlags CA = VK_MEMORY_PROPERTY_HOST_CACHED_BIT;
  const VkMemoryPropertyFlags DL = VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT;
  int type = -1;
  if (kind == HC_BUFFER_DEVICE) {
    type = find_memory_type(d, req.memoryTypeBits, DL);
    if (type < 0) type = find_memory_type(d, req.memoryTypeBits, 0);
  } else if (kind == HC_BUFFER_UPLOAD) {
    type = find_memory_type(d, req.memoryTypeBits, HV | HC);
  } else {
    type = find_memory_type(d, req.memoryTypeBits, HV | HC | CA);
    if (type < 0) type = find_memory_type(d, req.memoryTypeBits, HV | HC);
  }
  if (type < 0) {
    vkDestroyBuffer(d->device, b->buffer, NULL);
    free(b);
    return hc_fail(HC_E_VK, "no memory type fits a buffer of kind %d", kind);
  }
  uint32_t heap = d->mem_props.memoryTypes[type].heapIndex;
  int32_t budget_rc = check_budget(d, heap, req.size);
  if (budget_rc) {
    vkDestroyBuffer(d->device, b->buffer, NULL);
    free(b);
    return budget_rc;
  }
  VkMemoryAllocateInfo mai = {
      .sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO,
      .allocationSize = req.size,
      .memoryTypeIndex = (uint32_t)type,
  };
  r = vkAllocateMemory(d->device, &mai, NULL, &b->memory);
  if (r == VK_SUCCESS) r = vkBindBufferMemory(d->device, b->buffer, b->memory, 0);
  if (r == VK_SUCCESS && kind != HC_BUFFER_DEVICE)
    r = vkMapMemory(d->device, b->memory, 0, VK_WHOLE_SIZE, 0, &b->mapped);
  if (r != VK_SUCCESS) {
    if (b->memory) vkFreeMemory(d->device, b->memory, NULL);
    vkDestroyBuffer(d->device, b->buffer, NULL);
    free(b);
    int32_t code = hc_vk_fail(r, "allocating buffer memory");
    if (code == HC_E_OOM)
      return hc_fail(HC_E_OOM,
                     "out of %s memory: %llu bytes needed, the driver refused them (heap of %llu "
                     "bytes, %llu held by this device)",
                     kind == HC_BUFFER_DEVICE ? "device" : "host-visible",
                     (unsigned long long)bytes,
                     (unsigned long long)d->mem_props.memoryHeaps[heap].size,
                     (unsigned long long)d->heap_bytes[heap]);
    return code;
  }
  hc_handle h = hc_handle_new(HC_KIND_BUFFER, b);
  if (!h) {
    vkFreeMemory(d->device, b->memory, NULL);
    vkDestroyBuffer(d->device, b->buffer, NULL);
    free(b);
    return hc_fail(HC_E_OOM, "out of host memory");
  }
  b->heap = heap;
  b->alloc_bytes = req.size;
  b->host_visible = (d->mem_props.memoryTypes[type].propertyFlags & (HV | HC)) == (HV | HC);
  d->heap_bytes[heap] += req.size;
  d->live_objects++;
  *out_buffer = h;
  return HC_OK;
}

int32_t hc_buffer_destroy(hc_handle buffer) {
  HC_GET(b, struct hc_buffer, HC_KIND_BUFFER, buffer, "hc_buffer_destroy");
  hc_handle_free(buffer);
  struct hc_device *d = b->dev;
  /* A buffer may still be read by a submitted list; let the queues drain first. */
  pthread_mutex_lock(&d->submit_lock);
  vkDeviceWaitIdle(d->device);
  pthread_mutex_unlock(&d->submit_lock);
  if (b->mapped) vkUnmapMemory(d->device, b->memory);
  for (uint32_t i = 0; i < b->n_views; i++) vkDestroyBufferView(d->device, b->views[i].view, NULL);
  free(b->views);
  vkDestroyBuffer(d->device, b->buffer, NULL);
  vkFreeMemory(d->device, b->memory, NULL);
  d->heap_bytes[b->heap] -= b->alloc_bytes;
  d->live_objects--;
  free(b);
  return HC_OK;
}

int32_t hc_buffer_map(hc_handle buffer, uint64_t *out_address) {
  HC_GET(b, struct hc_buffer, HC_KIND_BUFFER, buffer, "hc_buffer_map");
  if (!out_address) return hc_fail(HC_E_ARG, "hc_buffer_map: null output");
  if (!b->mapped && b->host_visible) {
    /* A DEVICE buffer in host-visible memory (CPU and UMA devices): mapped when first asked. */
    VkResult r = vkMapMemory(b->dev->device, b->memory, 0, VK_WHOLE_SIZE, 0, &b->mapped);
    if (r != VK_SUCCESS) return hc_vk_fail(r, "mapping a device buffer");
  }
  if (!b->mapped) return hc_fail(HC_E_ARG, "hc_buffer_map: a DEVICE buffer is not host-visible");
  *out_address = (uint64_t)(uintptr_t)b->mapped;
  return HC_OK;
}

int32_t hc_buffer_view(struct hc_buffer *b, uint64_t offset, uint64_t range, VkBufferView *out) {
  for (uint32_t i = 0; i < b->n_views; i++)
    if (b->views[i].offset == offset && b->views[i].range == range) {
      *out = b->views[i].view;
      return HC_OK;
    }
  if (!b->texel_usage)
    return hc_fail(HC_E_LIMIT, "the device has no R32G32B32A32_UINT texel buffers; bind a storage buffer");
  if (b->n_views == b->cap_views) {
    uint32_t cap = b->cap_views ? b->cap_views * 2 : 4;
    struct hc_view *v = realloc(b->views, cap * sizeof *v);
    if (!v) return hc_fail(HC_E_OOM, "out of host memory");
    b->views = v;
    b->cap_views = cap;
  }
  VkBufferViewCreateInfo ci = {
      .sType = VK_STRUCTURE_TYPE_BUFFER_VIEW_CREATE_INFO,
      .buffer = b->buffer,
      .format = VK_FORMAT_R32G32B32A32_UINT,
      .offset = offset,
      .range = range,
  };
  VkBufferView view;
  VkResult r = vkCreateBufferView(b->dev->device, &ci, NULL, &view);
  if (r != VK_SUCCESS) return hc_vk_fail(r, "vkCreateBufferView");
  b->views[b->n_views++] = (struct hc_view){.view = view, .offset = offset, .range = range};
  *out = view;
  return HC_OK;
}

static void destroy_kernel(struct hc_kernel *k, VkShaderModule module) {
  VkDevice dev = k->dev->device;
  if (module) vkDestroyShaderModule(dev, module, NULL);
  if (k->pipeline) vkDestroyPipeline(dev, k->pipeline, NULL);
  if (k->layout) vkDestroyPipelineLayout(dev, k->layout, NULL);
  if (k->set_layout) vkDestroyDescriptorSetLayout(dev, k->set_layout, NULL);
  free(k);
}

int32_t hc_kernel_create(hc_handle device, const uint32_t *spirv, uint64_t spirv_bytes,
                         const uint32_t *binding_kinds, uint32_t n_bindings, uint32_t push_bytes,
                         const uint32_t *spec, uint32_t n_spec, hc_handle *out_kernel) {
  HC_GET(d, struct hc_device, HC_KIND_DEVICE, device, "hc_kernel_create");
  if (!out_kernel || !spirv) return hc_fail(HC_E_ARG, "hc_kernel_create: null argument");
  if (spirv_bytes < 20 || spirv_bytes % 4 || spirv[0] != 0x07230203u)
    return hc_fail(HC_E_ARG, "hc_kernel_create: not a SPIR-V module (%llu bytes)",
                   (unsigned long long)spirv_bytes);
  if (n_bindings == 0 || n_bindings > 16)
    return hc_fail(HC_E_ARG, "hc_kernel_create: %u bindings (1..16 allowed)", n_bindings);
  if (push_bytes > d->props.limits.maxPushConstantsSize || push_bytes % 4)
    return hc_fail(HC_E_LIMIT, "hc_kernel_create: push block of %u bytes (device max %u, multiple of 4)",
                   push_bytes, d->props.limits.maxPushConstantsSize);
  if (n_spec > 32) return hc_fail(HC_E_ARG, "hc_kernel_create: %u specialization constants", n_spec);
  for (uint32_t i = 0; binding_kinds && i < n_bindings; i++) {
    uint32_t kd = binding_kinds[i];
    if (kd > HC_BIND_TEXEL)
      return hc_fail(HC_E_ARG, "hc_kernel_create: binding %u has unknown kind %u", i, kd);
    if (kd == HC_BIND_TEXEL && !d->texel)
      return hc_fail(HC_E_LIMIT, "hc_kernel_create: binding %u: the device has no R32G32B32A32_UINT texel buffers", i);
  }
  struct hc_kernel *k = calloc(1, sizeof *k);
  if (!k) return hc_fail(HC_E_OOM, "out of host memory");
  k->dev = d;
  k->dev_handle = device;
  k->n_bindings = n_bindings;
  k->push_bytes = push_bytes;

  VkDescriptorSetLayoutBinding binds[16];
  for (uint32_t i = 0; i < n_bindings; i++) {
    k->kinds[i] = binding_kinds ? binding_kinds[i] : HC_BIND_STORAGE;
    binds[i] = (VkDescriptorSetLayoutBinding){
        .binding = i,
        .descriptorType = hc_descriptor_type(k->kinds[i]),
        .descriptorCount = 1,
        .stageFlags = VK_SHADER_STAGE_COMPUTE_BIT,
    };
  }
  VkDescriptorSetLayoutCreateInfo dci = {
      .sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_LAYOUT_CREATE_INFO,
      .bindingCount = n_bindings,
      .pBindings = binds,
  };
  VkShaderModule module = VK_NULL_HANDLE;
  VkResult r = vkCreateDescriptorSetLayout(d->device, &dci, NULL, &k->set_layout);
  if (r != VK_SUCCESS) goto fail;
  VkPushConstantRange pcr = {.stageFlags = VK_SHADER_STAGE_COMPUTE_BIT, .size = push_bytes};
  VkPipelineLayoutCreateInfo lci = {
      .sType = VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO,
      .setLayoutCount = 1,
      .pSetLayouts = &k->set_layout,
      .pushConstantRangeCount = push_bytes ? 1 : 0,
      .pPushConstantRanges = push_bytes ? &pcr : NULL,
  };
  r = vkCreatePipelineLayout(d->device, &lci, NULL, &k->layout);
  if (r != VK_SUCCESS) goto fail;
  VkShaderModuleCreateInfo sci = {
      .sType = VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO,
      .codeSize = (size_t)spirv_bytes,
      .pCode = spirv,
  };
  r = vkCreateShaderModule(d->device, &sci, NULL, &module);
  if (r != VK_SUCCESS) goto fail;
  VkSpecializationMapEntry entries[32];
  for (uint32_t i = 0; i < n_spec; i++)
    entries[i] = (VkSpecializationMapEntry){.constantID = i, .offset = i * 4, .size = 4};
  VkSpecializationInfo si = {
      .mapEntryCount = n_spec,
      .pMapEntries = entries,
      .dataSize = n_spec * 4,
      .pData = spec,
  };
  /* Every shader takes its workgroup width from constant 0. Where it is known and fits, pin
   * the subgroup size the shaders were sized for (drivers such as Intel's may otherwise pick
   * another per kernel), and where it is whole subgroups, require them full. */
  uint32_t wg = n_spec ? spec[0] : 0;
  bool pin = d->subgroup_control && wg > 0 &&
             (uint64_t)wg <= (uint64_t)d->max_workgroup_subgroups * d->subgroup_size;
  VkPipelineShaderStageRequiredSubgroupSizeCreateInfoEXT rss = {
      .sType = VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_REQUIRED_SUBGROUP_SIZE_CREATE_INFO_EXT,
      .requiredSubgroupSize = d->subgroup_size,
  };
  bool full = pin && d->full_subgroups && wg % d->subgroup_size == 0;
  VkComputePipelineCreateInfo pci = {
      .sType = VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO,
      .stage =
          {
              .sType = VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO,
              .pNext = pin ? &rss : NULL,
              .flags = full ? VK_PIPELINE_SHADER_STAGE_CREATE_REQUIRE_FULL_SUBGROUPS_BIT_EXT : 0,
              .stage = VK_SHADER_STAGE_COMPUTE_BIT,
              .module = module,
              .pName = "main",
              .pSpecializationInfo = n_spec ? &si : NULL,
          },
      .layout = k->layout,
  };
  r = vkCreateComputePipelines(d->device, VK_NULL_HANDLE, 1, &pci, NULL, &k->pipeline);
  if (r != VK_SUCCESS) goto fail;
  vkDestroyShaderModule(d->device, module, NULL);
  hc_handle h = hc_handle_new(HC_KIND_KERNEL, k);
  if (!h) {
    destroy_kernel(k, VK_NULL_HANDLE);
    return hc_fail(HC_E_OOM, "out of host memory");
  }
  d->live_objects++;
  *out_kernel = h;
  return HC_OK;
fail:;
  int32_t code = hc_vk_fail(r, "creating compute kernel");
  destroy_kernel(k, module);
  return code;
}

int32_t hc_kernel_destroy(hc_handle kernel) {
  HC_GET(k, struct hc_kernel, HC_KIND_KERNEL, kernel, "hc_kernel_destroy");
  hc_handle_free(kernel);
  struct hc_device *d = k->dev;
  pthread_mutex_lock(&d->submit_lock);
  vkDeviceWaitIdle(d->device);
  pthread_mutex_unlock(&d->submit_lock);
  destroy_kernel(k, VK_NULL_HANDLE);
  d->live_objects--;
  return HC_OK;
}
