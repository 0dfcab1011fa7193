/* Instance, physical-device choice, logical device and queues. */
#include "internal.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int32_t make_instance(VkInstance *out) {
  VkApplicationInfo app = {
      .sType = VK_STRUCTURE_TYPE_APPLICATION_INFO,
      .pApplicationName = "heterocache-vk",
      .apiVersion = VK_API_VERSION_1_2,
  };
  VkInstanceCreateInfo ci = {
      .sType = VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO,
      .pApplicationInfo = &app,
  };
  VkResult r = vkCreateInstance(&ci, NULL, out);
  if (r != VK_SUCCESS) {
    int32_t code = hc_vk_fail(r, "vkCreateInstance");
    return hc_fail(code == HC_E_VK ? HC_E_NODEVICE : code,
                   "no Vulkan driver could be loaded (vkCreateInstance: %d); install one, e.g. "
                   "`apt-get install mesa-vulkan-drivers` for lavapipe",
                   (int)r);
  }
  return HC_OK;
}

static int32_t list_physical(VkInstance inst, VkPhysicalDevice **out, uint32_t *n) {
  VkResult r = vkEnumeratePhysicalDevices(inst, n, NULL);
  if (r != VK_SUCCESS) return hc_vk_fail(r, "vkEnumeratePhysicalDevices");
  if (*n == 0) return hc_fail(HC_E_NODEVICE, "the Vulkan loader found no device");
  *out = calloc(*n, sizeof **out);
  if (!*out) return hc_fail(HC_E_OOM, "out of host memory");
  r = vkEnumeratePhysicalDevices(inst, n, *out);
  if (r != VK_SUCCESS && r != VK_INCOMPLETE) {
    free(*out);
    return hc_vk_fail(r, "vkEnumeratePhysicalDevices");
  }
  return HC_OK;
}

static const char *type_name(VkPhysicalDeviceType t) {
  switch (t) {
  case VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU: return "discrete";
  case VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU: return "integrated";
  case VK_PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU: return "virtual";
  case VK_PHYSICAL_DEVICE_TYPE_CPU: return "cpu";
  default: return "other";
  }
}

static int type_rank(VkPhysicalDeviceType t) {
  switch (t) {
  case VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU: return 4;
  case VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU: return 3;
  case VK_PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU: return 2;
  case VK_PHYSICAL_DEVICE_TYPE_CPU: return 1;
  default: return 0;
  }
}

static bool contains_ci(const char *hay, const char *needle) {
  size_t n = strlen(needle);
  for (const char *p = hay; *p; p++) {
    size_t i = 0;
    while (i < n && p[i] && tolower((unsigned char)p[i]) == tolower((unsigned char)needle[i])) i++;
    if (i == n) return true;
  }
  return n == 0;
}

struct caps {
  VkPhysicalDeviceProperties props;
  uint32_t subgroup_size;
  bool subgroup_arith;
  uint64_t max_alloc;
  bool timeline, storage16, storage8, float16, int8, int64;
  bool texel;
};

static void query_caps(VkPhysicalDevice pd, struct caps *c) {
  VkPhysicalDeviceSubgroupProperties sg = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_PROPERTIES};
  VkPhysicalDeviceMaintenance3Properties m3 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MAINTENANCE_3_PROPERTIES, .pNext = &sg};
  VkPhysicalDeviceProperties2 p2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2, .pNext = &m3};
  vkGetPhysicalDeviceProperties2(pd, &p2);
  c->props = p2.properties;
  c->subgroup_size = sg.subgroupSize ? sg.subgroupSize : 1;
  c->subgroup_arith = (sg.supportedStages & VK_SHADER_STAGE_COMPUTE_BIT) &&
                      (sg.supportedOperations & VK_SUBGROUP_FEATURE_ARITHMETIC_BIT) &&
                      (sg.supportedOperations & VK_SUBGROUP_FEATURE_BASIC_BIT);
  c->max_alloc = m3.maxMemoryAllocationSize;
  VkPhysicalDeviceVulkan12Features f12 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES};
  VkPhysicalDeviceVulkan11Features f11 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_1_FEATURES, .pNext = &f12};
  VkPhysicalDeviceFeatures2 f2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2, .pNext = &f11};
  vkGetPhysicalDeviceFeatures2(pd, &f2);
  c->timeline = f12.timelineSemaphore;
  c->storage16 = f11.storageBuffer16BitAccess;
  c->storage8 = f12.storageBuffer8BitAccess;
  c->float16 = f12.shaderFloat16;
  c->int8 = f12.shaderInt8;
  c->int64 = f2.features.shaderInt64;
  VkFormatProperties fp;
  vkGetPhysicalDeviceFormatProperties(pd, VK_FORMAT_R32G32B32A32_UINT, &fp);
  c->texel = (fp.bufferFeatures & VK_FORMAT_FEATURE_UNIFORM_TEXEL_BUFFER_BIT) != 0;
}

/* Appends printf output to a bounded buffer; reports truncation through *ok. */
struct jbuf {
  char *p;
  uint64_t cap, len;
  bool ok;
};

__attribute__((format(printf, 2, 3))) static void jput(struct jbuf *b, const char *fmt, ...) {
  if (!b->ok) return;
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(b->p + b->len, (size_t)(b->cap - b->len), fmt, ap);
  va_end(ap);
  if (n < 0 || (uint64_t)n >= b->cap - b->len) {
    b->ok = false;
    return;
  }
  b->len += (uint64_t)n;
}

static void json_caps(struct jbuf *b, uint32_t index, const struct caps *c) {
  const VkPhysicalDeviceLimits *l = &c->props.limits;
  char name[VK_MAX_PHYSICAL_DEVICE_NAME_SIZE * 2];
  size_t j = 0;
  for (size_t i = 0; c->props.deviceName[i] && j + 2 < sizeof name; i++) {
    char ch = c->props.deviceName[i];
    if (ch == '"' || ch == '\\') name[j++] = '\\';
    name[j++] = (ch >= 32 && ch < 127) ? ch : '?';
  }
  name[j] = 0;
  jput(b,
       "{\"index\":%u,\"name\":\"%s\",\"type\":\"%s\",\"vendorId\":%u,\"deviceId\":%u,"
       "\"apiVersion\":\"%u.%u.%u\",\"driverVersion\":%u,\"subgroupSize\":%u,"
       "\"subgroupArithmetic\":%s,\"maxStorageBufferRange\":%u,\"maxAllocationBytes\":%llu,"
       "\"maxComputeSharedMemoryBytes\":%u,\"maxComputeWorkGroupInvocations\":%u,"
       "\"maxComputeWorkGroupCount\":[%u,%u,%u],\"maxPushConstantsBytes\":%u,"
       "\"minStorageBufferOffsetAlignment\":%llu,\"timestampPeriodNs\":%g,"
       "\"timelineSemaphore\":%s,\"storage16\":%s,\"storage8\":%s,\"float16\":%s,\"int8\":%s,"
       "\"int64\":%s,\"maxTexelBufferElements\":%u,\"minTexelBufferOffsetAlignment\":%llu,"
       "\"texelBuffer\":%s}",
       index, name, type_name(c->props.deviceType), c->props.vendorID, c->props.deviceID,
       VK_API_VERSION_MAJOR(c->props.apiVersion), VK_API_VERSION_MINOR(c->props.apiVersion),
       VK_API_VERSION_PATCH(c->props.apiVersion), c->props.driverVersion, c->subgroup_size,
       c->subgroup_arith ? "true" : "false", l->maxStorageBufferRange,
       (unsigned long long)c->max_alloc, l->maxComputeSharedMemorySize,
       l->maxComputeWorkGroupInvocations, l->maxComputeWorkGroupCount[0],
       l->maxComputeWorkGroupCount[1], l->maxComputeWorkGroupCount[2], l->maxPushConstantsSize,
       (unsigned long long)l->minStorageBufferOffsetAlignment, (double)l->timestampPeriod,
       c->timeline ? "true" : "false", c->storage16 ? "true" : "false",
       c->storage8 ? "true" : "false", c->float16 ? "true" : "false", c->int8 ? "true" : "false",
       c->int64 ? "true" : "false", l->maxTexelBufferElements,
       (unsigned long long)l->minTexelBufferOffsetAlignment, c->texel ? "true" : "false");
}

int32_t hc_devices_json(char *out, uint64_t cap) {
  if (!out || cap < 3) return hc_fail(HC_E_ARG, "hc_devices_json: output buffer too small");
  VkInstance inst;
  int32_t rc = make_instance(&inst);
  if (rc) return rc;
  VkPhysicalDevice *pds = NULL;
  uint32_t n = 0;
  rc = list_physical(inst, &pds, &n);
  if (rc) {
    vkDestroyInstance(inst, NULL);
    return rc;
  }
  struct jbuf b = {out, cap, 0, true};
  jput(&b, "[");
  for (uint32_t i = 0; i < n; i++) {
    struct caps c;
    query_caps(pds[i], &c);
    if (i) jput(&b, ",");
    json_caps(&b, i, &c);
  }
  jput(&b, "]");
  free(pds);
  vkDestroyInstance(inst, NULL);
  if (!b.ok) return hc_fail(HC_E_ARG, "hc_devices_json: output buffer too small");
  return HC_OK;
}

static int32_t choose(VkPhysicalDevice *pds, uint32_t n, const char *sel, uint32_t *out) {
  if (sel && *sel) {
    char *end = NULL;
    unsigned long idx = strtoul(sel, &end, 10);
    if (end && *end == 0) {
      if (idx >= n) return hc_fail(HC_E_NODEVICE, "HC_VK_DEVICE=%s: only %u device(s)", sel, n);
      *out = (uint32_t)idx;
      return HC_OK;
    }
    for (uint32_t i = 0; i < n; i++) {
      VkPhysicalDeviceProperties p;
      vkGetPhysicalDeviceProperties(pds[i], &p);
      if (contains_ci(p.deviceName, sel)) {
        *out = i;
        return HC_OK;
      }
    }
    return hc_fail(HC_E_NODEVICE, "no Vulkan device name contains \"%s\"", sel);
  }
  int best = -1;
  for (uint32_t i = 0; i < n; i++) {
    VkPhysicalDeviceProperties p;
    vkGetPhysicalDeviceProperties(pds[i], &p);
    if (best < 0) {
      best = (int)i;
      continue;
    }
    VkPhysicalDeviceProperties bp;
    vkGetPhysicalDeviceProperties(pds[best], &bp);
    if (type_rank(p.deviceType) > type_rank(bp.deviceType)) best = (int)i;
  }
  *out = (uint32_t)best;
  return HC_OK;
}

/* Compute family: prefer one without graphics. Transfer family: one with transfer but neither
 * compute nor graphics, else none (the transfer queue then aliases the compute queue). */
static void pick_families(VkPhysicalDevice pd, uint32_t *compute, int64_t *transfer) {
  uint32_t n = 0;
  vkGetPhysicalDeviceQueueFamilyProperties(pd, &n, NULL);
  VkQueueFamilyProperties fams[32];
  if (n > 32) n = 32;
  vkGetPhysicalDeviceQueueFamilyProperties(pd, &n, fams);
  int64_t c_any = -1, c_pure = -1, t = -1;
  for (uint32_t i = 0; i < n; i++) {
    VkQueueFlags f = fams[i].queueFlags;
    if (fams[i].queueCount == 0) continue;
    if ((f & VK_QUEUE_COMPUTE_BIT) && c_any < 0) c_any = i;
    if ((f & VK_QUEUE_COMPUTE_BIT) && !(f & VK_QUEUE_GRAPHICS_BIT) && c_pure < 0) c_pure = i;
    if ((f & VK_QUEUE_TRANSFER_BIT) && !(f & (VK_QUEUE_COMPUTE_BIT | VK_QUEUE_GRAPHICS_BIT)) &&
        t < 0)
      t = i;
  }
  *compute = (uint32_t)(c_pure >= 0 ? c_pure : c_any);
  *transfer = t;
}

static int32_t make_timeline(struct hc_device *d, VkSemaphore *out) {
  VkSemaphoreTypeCreateInfo tci = {
      .sType = VK_STRUCTURE_TYPE_SEMAPHORE_TYPE_CREATE_INFO,
      .semaphoreType = VK_SEMAPHORE_TYPE_TIMELINE,
      .initialValue = 0,
  };
  VkSemaphoreCreateInfo ci = {.sType = VK_STRUCTURE_TYPE_SEMAPHORE_CREATE_INFO, .pNext = &tci};
  VkResult r = vkCreateSemaphore(d->device, &ci, NULL, out);
  return r == VK_SUCCESS ? HC_OK : hc_vk_fail(r, "vkCreateSemaphore(timeline)");
}

static void destroy_device(struct hc_device *d) {
  if (d->device) {
    vkDeviceWaitIdle(d->device);
    for (int q = 0; q < 2; q++)
      if (d->queues[q].timeline) vkDestroySemaphore(d->device, d->queues[q].timeline, NULL);
    vkDestroyDevice(d->device, NULL);
  }
  if (d->instance) vkDestroyInstance(d->instance, NULL);
  pthread_mutex_destroy(&d->submit_lock);
  free(d);
}

int32_t hc_device_open(const char *selector, hc_handle *out_device) {
  if (!out_device) return hc_fail(HC_E_ARG, "hc_device_open: null output");
  struct hc_device *d = calloc(1, sizeof *d);
  if (!d) return hc_fail(HC_E_OOM, "out of host memory");
  pthread_mutex_init(&d->submit_lock, NULL);
  int32_t rc = make_instance(&d->instance);
  VkPhysicalDevice *pds = NULL;
  uint32_t n = 0, idx = 0;
  if (!rc) rc = list_physical(d->instance, &pds, &n);
  if (!rc) rc = choose(pds, n, selector, &idx);
  if (rc) {
    free(pds);
    destroy_device(d);
    return rc;
  }
  d->physical = pds[idx];
  free(pds);

  struct caps c;
  query_caps(d->physical, &c);
  if (!c.timeline) {
    destroy_device(d);
    return hc_fail(HC_E_NODEVICE, "device %s lacks timeline semaphores (Vulkan 1.2)",
                   c.props.deviceName);
  }
  d->props = c.props;
  d->subgroup_size = c.subgroup_size;
  d->subgroup_arith = c.subgroup_arith;
  d->max_allocation_bytes = c.max_alloc ? c.max_alloc : (1ull << 31);
  d->float16 = c.float16;
  d->storage16 = c.storage16;
  d->storage8 = c.storage8;
  d->texel = c.texel;
  vkGetPhysicalDeviceMemoryProperties(d->physical, &d->mem_props);

  /* Optional extensions: heap budgets, and the subgroup size the shaders assume. */
  bool has_budget = false, has_sgc = false;
  uint32_t n_ext = 0;
  vkEnumerateDeviceExtensionProperties(d->physical, NULL, &n_ext, NULL);
  VkExtensionProperties *exts = calloc(n_ext ? n_ext : 1, sizeof *exts);
  if (exts && vkEnumerateDeviceExtensionProperties(d->physical, NULL, &n_ext, exts) == VK_SUCCESS) {
    for (uint32_t i = 0; i < n_ext; i++) {
      if (!strcmp(exts[i].extensionName, VK_EXT_MEMORY_BUDGET_EXTENSION_NAME)) has_budget = true;
      if (!strcmp(exts[i].extensionName, VK_EXT_SUBGROUP_SIZE_CONTROL_EXTENSION_NAME)) has_sgc = true;
    }
  }
  free(exts);
  VkPhysicalDeviceSubgroupSizeControlFeaturesEXT sgc_have = {
      .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_SIZE_CONTROL_FEATURES_EXT};
  VkPhysicalDeviceSubgroupSizeControlPropertiesEXT sgc_props = {
      .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_SIZE_CONTROL_PROPERTIES_EXT};
  if (has_sgc) {
    VkPhysicalDeviceFeatures2 qf = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2, .pNext = &sgc_have};
    vkGetPhysicalDeviceFeatures2(d->physical, &qf);
    VkPhysicalDeviceProperties2 qp = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2, .pNext = &sgc_props};
    vkGetPhysicalDeviceProperties2(d->physical, &qp);
  }
  d->memory_budget = has_budget;
  d->subgroup_control = has_sgc && sgc_have.subgroupSizeControl &&
                        (sgc_props.requiredSubgroupSizeStages & VK_SHADER_STAGE_COMPUTE_BIT) &&
                        sgc_props.minSubgroupSize <= c.subgroup_size &&
                        c.subgroup_size <= sgc_props.maxSubgroupSize;
  d->full_subgroups = d->subgroup_control && sgc_have.computeFullSubgroups;
  d->max_workgroup_subgroups = sgc_props.maxComputeWorkgroupSubgroups;
  const char *ext_names[2];
  uint32_t n_enable = 0;
  if (has_budget) ext_names[n_enable++] = VK_EXT_MEMORY_BUDGET_EXTENSION_NAME;
  if (d->subgroup_control) ext_names[n_enable++] = VK_EXT_SUBGROUP_SIZE_CONTROL_EXTENSION_NAME;
  VkPhysicalDeviceSubgroupSizeControlFeaturesEXT sgc_on = {
      .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_SIZE_CONTROL_FEATURES_EXT,
      .subgroupSizeControl = d->subgroup_control,
      .computeFullSubgroups = d->full_subgroups,
  };

  uint32_t cf;
  int64_t tf;
  pick_families(d->physical, &cf, &tf);
  float prio = 1.0f;
  VkDeviceQueueCreateInfo qci[2] = {
      {.sType = VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO, .queueFamilyIndex = cf, .queueCount = 1, .pQueuePriorities = &prio},
      {.sType = VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO, .queueFamilyIndex = (uint32_t)tf, .queueCount = 1, .pQueuePriorities = &prio},
  };
  d->separate_transfer = tf >= 0;
  VkPhysicalDeviceVulkan12Features f12 = {
      .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES,
      .timelineSemaphore = VK_TRUE,
      .storageBuffer8BitAccess = c.storage8,
      .shaderFloat16 = c.float16,
      .shaderInt8 = c.int8,
      .pNext = d->subgroup_control ? &sgc_on : NULL,
  };
  VkPhysicalDeviceVulkan11Features f11 = {
      .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_1_FEATURES,
      .pNext = &f12,
      .storageBuffer16BitAccess = c.storage16,
  };
  /* 64-bit integers let the CPU-shaped matvec load 32-byte chunks (optional everywhere). */
  VkPhysicalDeviceFeatures2 f2 = {
      .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2,
      .pNext = &f11,
      .features = {.shaderInt64 = c.int64},
  };
  VkDeviceCreateInfo dci = {
      .sType = VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO,
      .pNext = &f2,
      .queueCreateInfoCount = d->separate_transfer ? 2 : 1,
      .pQueueCreateInfos = qci,
      .enabledExtensionCount = n_enable,
      .ppEnabledExtensionNames = n_enable ? ext_names : NULL,
  };
  VkResult r = vkCreateDevice(d->physical, &dci, NULL, &d->device);
  if (r != VK_SUCCESS) {
    d->device = VK_NULL_HANDLE;
    destroy_device(d);
    return hc_vk_fail(r, "vkCreateDevice");
  }
  d->families[0] = cf;
  d->n_families = 1;
  vkGetDeviceQueue(d->device, cf, 0, &d->queues[0].queue);
  d->queues[0].family = cf;
  rc = make_timeline(d, &d->queues[0].timeline);
  if (!rc && d->separate_transfer) {
    d->families[1] = (uint32_t)tf;
    d->n_families = 2;
    vkGetDeviceQueue(d->device, (uint32_t)tf, 0, &d->queues[1].queue);
    d->queues[1].family = (uint32_t)tf;
    rc = make_timeline(d, &d->queues[1].timeline);
  }
  if (rc) {
    destroy_device(d);
    return rc;
  }
  hc_handle h = hc_handle_new(HC_KIND_DEVICE, d);
  if (!h) {
    destroy_device(d);
    return hc_fail(HC_E_OOM, "out of host memory");
  }
  *out_device = h;
  return HC_OK;
}

int32_t hc_device_close(hc_handle device) {
  HC_GET(d, struct hc_device, HC_KIND_DEVICE, device, "hc_device_close");
  if (d->live_objects)
    return hc_fail(HC_E_ARG, "hc_device_close: %u buffers/kernels/command lists still alive",
                   d->live_objects);
  hc_handle_free(device);
  destroy_device(d);
  return HC_OK;
}

int32_t hc_device_info(hc_handle device, char *out, uint64_t cap) {
  HC_GET(d, struct hc_device, HC_KIND_DEVICE, device, "hc_device_info");
  if (!out || cap < 3) return hc_fail(HC_E_ARG, "hc_device_info: output buffer too small");
  struct caps c;
  query_caps(d->physical, &c);
  struct jbuf b = {out, cap, 0, true};
  json_caps(&b, 0, &c);
  if (b.ok && b.len > 0) b.len--; /* reopen the object to add queue facts */
  jput(&b,
       ",\"separateTransferQueue\":%s,\"computeFamily\":%u,\"memoryBudget\":%s,"
       "\"subgroupSizeControl\":%s,\"fullSubgroups\":%s}",
       d->separate_transfer ? "true" : "false", d->queues[0].family,
       d->memory_budget ? "true" : "false", d->subgroup_control ? "true" : "false",
       d->full_subgroups ? "true" : "false");
  if (!b.ok) return hc_fail(HC_E_ARG, "hc_device_info: output buffer too small");
  return HC_OK;
}
