/* Command lists (record once, submit many times), timeline submission and waits. */
#ifdef __SSE2__
#include <emmintrin.h>
#endif
#include "internal.h"

#include <stdlib.h>
#include <string.h>

#define SETS_PER_POOL 256u

static int32_t add_desc_pool(struct hc_cmd *c) {
  /* Texel bindings are few per set (weights, x): four per set is plenty, and a pool that runs
   * out simply chains another. */
  VkDescriptorPoolSize sizes[2] = {
      {.type = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, .descriptorCount = SETS_PER_POOL * 16},
      {.type = VK_DESCRIPTOR_TYPE_UNIFORM_TEXEL_BUFFER, .descriptorCount = SETS_PER_POOL * 4},
  };
  uint32_t n_sizes = c->dev->texel ? 2 : 1;
  VkDescriptorPoolCreateInfo ci = {
      .sType = VK_STRUCTURE_TYPE_DESCRIPTOR_POOL_CREATE_INFO,
      .maxSets = SETS_PER_POOL,
      .poolSizeCount = n_sizes,
      .pPoolSizes = sizes,
  };
  VkDescriptorPool pool;
  VkResult r = vkCreateDescriptorPool(c->dev->device, &ci, NULL, &pool);
  if (r != VK_SUCCESS) return hc_vk_fail(r, "vkCreateDescriptorPool");
  VkDescriptorPool *p = realloc(c->desc_pools, (c->n_desc_pools + 1) * sizeof *p);
  if (!p) {
    vkDestroyDescriptorPool(c->dev->device, pool, NULL);
    return hc_fail(HC_E_OOM, "out of host memory");
  }
  p[c->n_desc_pools++] = pool;
  c->desc_pools = p;
  return HC_OK;
}

static void destroy_cmd(struct hc_cmd *c) {
  VkDevice dev = c->dev->device;
  for (uint32_t i = 0; i < c->n_desc_pools; i++) vkDestroyDescriptorPool(dev, c->desc_pools[i], NULL);
  free(c->desc_pools);
  if (c->query_pool) vkDestroyQueryPool(dev, c->query_pool, NULL);
  if (c->pool) vkDestroyCommandPool(dev, c->pool, NULL);
  free(c);
}

int32_t hc_cmd_create(hc_handle device, int32_t queue, hc_handle *out_cmd) {
  HC_GET(d, struct hc_device, HC_KIND_DEVICE, device, "hc_cmd_create");
  if (!out_cmd) return hc_fail(HC_E_ARG, "hc_cmd_create: null output");
  if (queue != HC_QUEUE_COMPUTE && queue != HC_QUEUE_TRANSFER)
    return hc_fail(HC_E_ARG, "hc_cmd_create: unknown queue %d", queue);
  struct hc_cmd *c = calloc(1, sizeof *c);
  if (!c) return hc_fail(HC_E_OOM, "out of host memory");
  c->dev = d;
  c->dev_handle = device;
  c->queue = queue;
  VkCommandPoolCreateInfo pci = {
      .sType = VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO,
      .flags = VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT,
      .queueFamilyIndex = hc_queue_of(d, queue)->family,
  };
  VkResult r = vkCreateCommandPool(d->device, &pci, NULL, &c->pool);
  if (r != VK_SUCCESS) {
    c->pool = VK_NULL_HANDLE;
    destroy_cmd(c);
    return hc_vk_fail(r, "vkCreateCommandPool");
  }
  VkCommandBufferAllocateInfo ai = {
      .sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO,
      .commandPool = c->pool,
      .level = VK_COMMAND_BUFFER_LEVEL_PRIMARY,
      .commandBufferCount = 1,
  };
  r = vkAllocateCommandBuffers(d->device, &ai, &c->cb);
  if (r != VK_SUCCESS) {
    destroy_cmd(c);
    return hc_vk_fail(r, "vkAllocateCommandBuffers");
  }
  /* Timestamps only where the queue family supports them (transfer families may not). */
  uint32_t nf = 0;
  VkQueueFamilyProperties fams[32];
  vkGetPhysicalDeviceQueueFamilyProperties(d->physical, &nf, NULL);
  if (nf > 32) nf = 32;
  vkGetPhysicalDeviceQueueFamilyProperties(d->physical, &nf, fams);
  uint32_t fam = hc_queue_of(d, queue)->family;
  if (fam < nf && fams[fam].timestampValidBits > 0) {
    VkQueryPoolCreateInfo qci = {
        .sType = VK_STRUCTURE_TYPE_QUERY_POOL_CREATE_INFO,
        .queryType = VK_QUERY_TYPE_TIMESTAMP,
        .queryCount = HC_TIMESTAMP_SLOTS,
    };
    if (vkCreateQueryPool(d->device, &qci, NULL, &c->query_pool) != VK_SUCCESS)
      c->query_pool = VK_NULL_HANDLE;
  }
  int32_t rc = add_desc_pool(c);
  if (rc) {
    destroy_cmd(c);
    return rc;
  }
  hc_handle h = hc_handle_new(HC_KIND_CMD, c);
  if (!h) {
    destroy_cmd(c);
    return hc_fail(HC_E_OOM, "out of host memory");
  }
  d->live_objects++;
  *out_cmd = h;
  return HC_OK;
}

static int32_t wait_value(struct hc_device *d, struct hc_queue *q, uint64_t value, uint64_t timeout_ns) {
  if (value == 0) return HC_OK;
  VkSemaphoreWaitInfo wi = {
      .sType = VK_STRUCTURE_TYPE_SEMAPHORE_WAIT_INFO,
      .semaphoreCount = 1,
      .pSemaphores = &q->timeline,
      .pValues = &value,
  };
  VkResult r = vkWaitSemaphores(d->device, &wi, timeout_ns);
  if (r == VK_TIMEOUT) return hc_fail(HC_E_TIMEOUT, "timed out waiting for timeline value %llu", (unsigned long long)value);
  return r == VK_SUCCESS ? HC_OK : hc_vk_fail(r, "vkWaitSemaphores");
}

int32_t hc_cmd_destroy(hc_handle cmd) {
  HC_GET(c, struct hc_cmd, HC_KIND_CMD, cmd, "hc_cmd_destroy");
  hc_handle_free(cmd);
  struct hc_device *d = c->dev;
  wait_value(d, hc_queue_of(d, c->queue), c->last_value, UINT64_MAX);
  destroy_cmd(c);
  d->live_objects--;
  return HC_OK;
}

int32_t hc_cmd_begin(hc_handle cmd) {
  HC_GET(c, struct hc_cmd, HC_KIND_CMD, cmd, "hc_cmd_begin");
  if (c->recording) return hc_fail(HC_E_ARG, "hc_cmd_begin: already recording");
  int32_t rc = wait_value(c->dev, hc_queue_of(c->dev, c->queue), c->last_value, UINT64_MAX);
  if (rc) return rc;
  VkResult r = vkResetCommandBuffer(c->cb, 0);
  if (r != VK_SUCCESS) return hc_vk_fail(r, "vkResetCommandBuffer");
  for (uint32_t i = 0; i < c->n_desc_pools; i++) vkResetDescriptorPool(c->dev->device, c->desc_pools[i], 0);
  c->cur_desc_pool = 0;
  VkCommandBufferBeginInfo bi = {
      .sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO,
      .flags = VK_COMMAND_BUFFER_USAGE_SIMULTANEOUS_USE_BIT,
  };
  r = vkBeginCommandBuffer(c->cb, &bi);
  if (r != VK_SUCCESS) return hc_vk_fail(r, "vkBeginCommandBuffer");
  c->recording = true;
  c->ended = false;
  return HC_OK;
}

static int32_t check_recording(struct hc_cmd *c, const char *what) {
  if (!c->recording) return hc_fail(HC_E_ARG, "%s: command list is not recording (call begin)", what);
  return HC_OK;
}

static int32_t alloc_set(struct hc_cmd *c, struct hc_kernel *k, VkDescriptorSet *out) {
  for (;;) {
    VkDescriptorSetAllocateInfo ai = {
        .sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_ALLOCATE_INFO,
        .descriptorPool = c->desc_pools[c->cur_desc_pool],
        .descriptorSetCount = 1,
        .pSetLayouts = &k->set_layout,
    };
    VkResult r = vkAllocateDescriptorSets(c->dev->device, &ai, out);
    if (r == VK_SUCCESS) return HC_OK;
    if (r != VK_ERROR_OUT_OF_POOL_MEMORY && r != VK_ERROR_FRAGMENTED_POOL)
      return hc_vk_fail(r, "vkAllocateDescriptorSets");
    if (++c->cur_desc_pool == c->n_desc_pools) {
      int32_t rc = add_desc_pool(c);
      if (rc) return rc;
    }
  }
}

int32_t hc_cmd_dispatch(hc_handle cmd, hc_handle kernel, const uint64_t *bindings, uint32_t n,
                        const void *push, uint32_t push_bytes, uint32_t gx, uint32_t gy,
                        uint32_t gz) {
  HC_GET(c, struct hc_cmd, HC_KIND_CMD, cmd, "hc_cmd_dispatch");
  HC_GET(k, struct hc_kernel, HC_KIND_KERNEL, kernel, "hc_cmd_dispatch(kernel)");
  int32_t rc = check_recording(c, "hc_cmd_dispatch");
  if (rc) return rc;
  struct hc_device *d = c->dev;
  if (k->dev != d) return hc_fail(HC_E_ARG, "hc_cmd_dispatch: kernel belongs to another device");
  if (n != k->n_bindings)
    return hc_fail(HC_E_ARG, "hc_cmd_dispatch: kernel takes %u bindings, got %u", k->n_bindings, n);
  if (push_bytes != k->push_bytes)
    return hc_fail(HC_E_ARG, "hc_cmd_dispatch: kernel takes %u push bytes, got %u", k->push_bytes, push_bytes);
  const uint32_t *mx = d->props.limits.maxComputeWorkGroupCount;
  if (gx == 0 || gy == 0 || gz == 0 || gx > mx[0] || gy > mx[1] || gz > mx[2])
    return hc_fail(HC_E_LIMIT, "hc_cmd_dispatch: %u x %u x %u workgroups (device max %u x %u x %u)",
                   gx, gy, gz, mx[0], mx[1], mx[2]);
  VkDescriptorBufferInfo infos[16];
  VkBufferView views[16];
  VkWriteDescriptorSet writes[16];
  const VkPhysicalDeviceLimits *lim = &d->props.limits;
  for (uint32_t i = 0; i < n; i++) {
    bool texel = k->kinds[i] != HC_BIND_STORAGE;
    uint64_t align = texel ? lim->minTexelBufferOffsetAlignment : lim->minStorageBufferOffsetAlignment;
    hc_handle bh = bindings[i * 3];
    uint64_t off = bindings[i * 3 + 1], range = bindings[i * 3 + 2];
    struct hc_buffer *b = hc_handle_get(bh, HC_KIND_BUFFER);
    if (!b) return hc_fail(HC_E_HANDLE, "hc_cmd_dispatch: binding %u: invalid buffer handle", i);
    if (b->dev != d) return hc_fail(HC_E_ARG, "hc_cmd_dispatch: binding %u: buffer of another device", i);
    if (off >= b->bytes) return hc_fail(HC_E_ARG, "hc_cmd_dispatch: binding %u: offset %llu past the end (%llu)", i, (unsigned long long)off, (unsigned long long)b->bytes);
    if (align && off % align) return hc_fail(HC_E_ARG, "hc_cmd_dispatch: binding %u: offset %llu not aligned to %llu", i, (unsigned long long)off, (unsigned long long)align);
    if (range == 0) range = b->bytes - off;
    if (off + range > b->bytes) return hc_fail(HC_E_ARG, "hc_cmd_dispatch: binding %u: range past the end", i);
    if (texel) {
      if (range % HC_TEXEL_BYTES)
        return hc_fail(HC_E_ARG, "hc_cmd_dispatch: binding %u: texel range of %llu bytes is not a multiple of %u", i,
                       (unsigned long long)range, HC_TEXEL_BYTES);
      if (range / HC_TEXEL_BYTES > lim->maxTexelBufferElements)
        return hc_fail(HC_E_LIMIT, "hc_cmd_dispatch: binding %u: %llu texels exceed maxTexelBufferElements (%u); split the buffer or bind it as storage",
                       i, (unsigned long long)(range / HC_TEXEL_BYTES), lim->maxTexelBufferElements);
      rc = hc_buffer_view(b, off, range, &views[i]);
      if (rc) return rc;
      continue;
    }
    if (range > lim->maxStorageBufferRange)
      return hc_fail(HC_E_LIMIT, "hc_cmd_dispatch: binding %u: %llu bytes exceed maxStorageBufferRange (%u); split the buffer",
                     i, (unsigned long long)range, lim->maxStorageBufferRange);
    infos[i] = (VkDescriptorBufferInfo){.buffer = b->buffer, .offset = off, .range = range};
  }
  VkDescriptorSet set;
  rc = alloc_set(c, k, &set);
  if (rc) return rc;
  for (uint32_t i = 0; i < n; i++)
    writes[i] = (VkWriteDescriptorSet){
        .sType = VK_STRUCTURE_TYPE_WRITE_DESCRIPTOR_SET,
        .dstSet = set,
        .dstBinding = i,
        .descriptorCount = 1,
        .descriptorType = hc_descriptor_type(k->kinds[i]),
        .pBufferInfo = k->kinds[i] == HC_BIND_STORAGE ? &infos[i] : NULL,
        .pTexelBufferView = k->kinds[i] == HC_BIND_STORAGE ? NULL : &views[i],
    };
  vkUpdateDescriptorSets(d->device, n, writes, 0, NULL);
  vkCmdBindPipeline(c->cb, VK_PIPELINE_BIND_POINT_COMPUTE, k->pipeline);
  vkCmdBindDescriptorSets(c->cb, VK_PIPELINE_BIND_POINT_COMPUTE, k->layout, 0, 1, &set, 0, NULL);
  if (push_bytes) vkCmdPushConstants(c->cb, k->layout, VK_SHADER_STAGE_COMPUTE_BIT, 0, push_bytes, push);
  vkCmdDispatch(c->cb, gx, gy, gz);
  return HC_OK;
}

int32_t hc_cmd_barrier(hc_handle cmd) {
  HC_GET(c, struct hc_cmd, HC_KIND_CMD, cmd, "hc_cmd_barrier");
  int32_t rc = check_recording(c, "hc_cmd_barrier");
  if (rc) return rc;
  VkMemoryBarrier mb = {
      .sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER,
      .srcAccessMask = VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_TRANSFER_WRITE_BIT,
      .dstAccessMask = VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT |
                       VK_ACCESS_TRANSFER_READ_BIT | VK_ACCESS_TRANSFER_WRITE_BIT,
  };
  VkPipelineStageFlags stages = c->queue == HC_QUEUE_TRANSFER && c->dev->separate_transfer
                                    ? VK_PIPELINE_STAGE_TRANSFER_BIT
                                    : VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT;
  vkCmdPipelineBarrier(c->cb, stages, stages, 0, 1, &mb, 0, NULL, 0, NULL);
  return HC_OK;
}

int32_t hc_cmd_copy(hc_handle cmd, hc_handle src, hc_handle dst, const uint64_t *regions, uint32_t n) {
  HC_GET(c, struct hc_cmd, HC_KIND_CMD, cmd, "hc_cmd_copy");
  HC_GET(s, struct hc_buffer, HC_KIND_BUFFER, src, "hc_cmd_copy(src)");
  HC_GET(t, struct hc_buffer, HC_KIND_BUFFER, dst, "hc_cmd_copy(dst)");
  int32_t rc = check_recording(c, "hc_cmd_copy");
  if (rc) return rc;
  if (n == 0) return HC_OK;
  if (!regions) return hc_fail(HC_E_ARG, "hc_cmd_copy: null regions");
  VkBufferCopy stack[64];
  VkBufferCopy *bc = n <= 64 ? stack : malloc(n * sizeof *bc);
  if (!bc) return hc_fail(HC_E_OOM, "out of host memory");
  for (uint32_t i = 0; i < n; i++) {
    uint64_t so = regions[i * 3], dof = regions[i * 3 + 1], sz = regions[i * 3 + 2];
    if (sz == 0 || so + sz > s->bytes || dof + sz > t->bytes || so + sz < so || dof + sz < dof) {
      if (bc != stack) free(bc);
      return hc_fail(HC_E_ARG, "hc_cmd_copy: region %u (src %llu, dst %llu, %llu bytes) out of bounds", i,
                     (unsigned long long)so, (unsigned long long)dof, (unsigned long long)sz);
    }
    bc[i] = (VkBufferCopy){.srcOffset = so, .dstOffset = dof, .size = sz};
  }
  vkCmdCopyBuffer(c->cb, s->buffer, t->buffer, n, bc);
  if (bc != stack) free(bc);
  return HC_OK;
}

int32_t hc_cmd_fill(hc_handle cmd, hc_handle buffer, uint64_t offset, uint64_t bytes, uint32_t value) {
  HC_GET(c, struct hc_cmd, HC_KIND_CMD, cmd, "hc_cmd_fill");
  HC_GET(b, struct hc_buffer, HC_KIND_BUFFER, buffer, "hc_cmd_fill(buffer)");
  int32_t rc = check_recording(c, "hc_cmd_fill");
  if (rc) return rc;
  if (offset % 4 || bytes % 4 || bytes == 0 || offset + bytes > b->bytes)
    return hc_fail(HC_E_ARG, "hc_cmd_fill: range %llu+%llu invalid (multiples of 4 within %llu)",
                   (unsigned long long)offset, (unsigned long long)bytes, (unsigned long long)b->bytes);
  vkCmdFillBuffer(c->cb, b->buffer, offset, bytes, value);
  return HC_OK;
}

int32_t hc_cmd_timestamp(hc_handle cmd, uint32_t slot) {
  HC_GET(c, struct hc_cmd, HC_KIND_CMD, cmd, "hc_cmd_timestamp");
  int32_t rc = check_recording(c, "hc_cmd_timestamp");
  if (rc) return rc;
  if (slot >= HC_TIMESTAMP_SLOTS)
    return hc_fail(HC_E_ARG, "hc_cmd_timestamp: slot %u (0..%u)", slot, HC_TIMESTAMP_SLOTS - 1);
  if (!c->query_pool) return hc_fail(HC_E_VK, "hc_cmd_timestamp: this queue has no timestamps");
  /* Reset where written, not all slots at begin: a list that writes none pays nothing. */
  vkCmdResetQueryPool(c->cb, c->query_pool, slot, 1);
  vkCmdWriteTimestamp(c->cb, VK_PIPELINE_STAGE_BOTTOM_OF_PIPE_BIT, c->query_pool, slot);
  return HC_OK;
}

int32_t hc_cmd_end(hc_handle cmd) {
  HC_GET(c, struct hc_cmd, HC_KIND_CMD, cmd, "hc_cmd_end");
  int32_t rc = check_recording(c, "hc_cmd_end");
  if (rc) return rc;
  /* The host reads results (sampled tokens, logits, readback copies) after waiting on the
   * timeline: a semaphore wait alone does not make device writes visible to host reads. */
  VkMemoryBarrier host = {
      .sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER,
      .srcAccessMask = VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_TRANSFER_WRITE_BIT,
      .dstAccessMask = VK_ACCESS_HOST_READ_BIT,
  };
  VkPipelineStageFlags src = c->queue == HC_QUEUE_TRANSFER && c->dev->separate_transfer
                                 ? VK_PIPELINE_STAGE_TRANSFER_BIT
                                 : VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT;
  vkCmdPipelineBarrier(c->cb, src, VK_PIPELINE_STAGE_HOST_BIT, 0, 1, &host, 0, NULL, 0, NULL);
  VkResult r = vkEndCommandBuffer(c->cb);
  c->recording = false;
  if (r != VK_SUCCESS) return hc_vk_fail(r, "vkEndCommandBuffer");
  c->ended = true;
  return HC_OK;
}

int32_t hc_cmd_timestamps(hc_handle cmd, uint64_t *out_ns, uint32_t n) {
  HC_GET(c, struct hc_cmd, HC_KIND_CMD, cmd, "hc_cmd_timestamps");
  if (!out_ns || n > HC_TIMESTAMP_SLOTS) return hc_fail(HC_E_ARG, "hc_cmd_timestamps: bad output");
  if (!c->query_pool) return hc_fail(HC_E_VK, "hc_cmd_timestamps: this queue has no timestamps");
  if (n == 0) return HC_OK;
  uint64_t *raw = malloc(sizeof(uint64_t) * 2 * n);
  if (!raw) return hc_fail(HC_E_OOM, "hc_cmd_timestamps: out of host memory");
  VkResult r = vkGetQueryPoolResults(c->dev->device, c->query_pool, 0, n, sizeof(uint64_t) * 2 * n,
                                     raw, 2 * sizeof(uint64_t),
                                     VK_QUERY_RESULT_64_BIT | VK_QUERY_RESULT_WITH_AVAILABILITY_BIT);
  if (r != VK_SUCCESS && r != VK_NOT_READY) {
    free(raw);
    return hc_vk_fail(r, "vkGetQueryPoolResults");
  }
  /* Ticks to ns here, once: callers get nanoseconds on every device. */
  double period = c->dev->props.limits.timestampPeriod;
  for (uint32_t i = 0; i < n; i++) out_ns[i] = raw[2 * i + 1] ? (uint64_t)((double)raw[2 * i] * period) : 0;
  free(raw);
  return HC_OK;
}

int32_t hc_submit(hc_handle cmd, uint64_t wait_compute, uint64_t wait_transfer, uint64_t *out_value) {
  HC_GET(c, struct hc_cmd, HC_KIND_CMD, cmd, "hc_submit");
  if (!c->ended) return hc_fail(HC_E_ARG, "hc_submit: command list was not ended");
  struct hc_device *d = c->dev;
  struct hc_queue *q = hc_queue_of(d, c->queue);
  VkSemaphore wait_sems[2];
  uint64_t wait_vals[2];
  VkPipelineStageFlags wait_stages[2];
  uint32_t nw = 0;
  uint64_t waits[2] = {wait_compute, wait_transfer};
  for (int i = 0; i < 2; i++) {
    struct hc_queue *wq = hc_queue_of(d, i);
    if (!waits[i] || wq == q) continue; /* same queue: submission order plus barriers suffice */
    wait_sems[nw] = wq->timeline;
    wait_vals[nw] = waits[i];
    wait_stages[nw] = VK_PIPELINE_STAGE_ALL_COMMANDS_BIT;
    nw++;
  }
  pthread_mutex_lock(&d->submit_lock);
  uint64_t signal = q->next_value + 1;
  VkTimelineSemaphoreSubmitInfo ts = {
      .sType = VK_STRUCTURE_TYPE_TIMELINE_SEMAPHORE_SUBMIT_INFO,
      .waitSemaphoreValueCount = nw,
      .pWaitSemaphoreValues = wait_vals,
      .signalSemaphoreValueCount = 1,
      .pSignalSemaphoreValues = &signal,
  };
  VkSubmitInfo si = {
      .sType = VK_STRUCTURE_TYPE_SUBMIT_INFO,
      .pNext = &ts,
      .waitSemaphoreCount = nw,
      .pWaitSemaphores = wait_sems,
      .pWaitDstStageMask = wait_stages,
      .commandBufferCount = 1,
      .pCommandBuffers = &c->cb,
      .signalSemaphoreCount = 1,
      .pSignalSemaphores = &q->timeline,
  };
  VkResult r = vkQueueSubmit(q->queue, 1, &si, VK_NULL_HANDLE);
  if (r == VK_SUCCESS) q->next_value = signal;
  pthread_mutex_unlock(&d->submit_lock);
  if (r != VK_SUCCESS) return hc_vk_fail(r, "vkQueueSubmit");
  c->last_value = signal;
  if (out_value) *out_value = signal;
  return HC_OK;
}

int32_t hc_wait(hc_handle device, int32_t queue, uint64_t value, uint64_t timeout_ns) {
  HC_GET(d, struct hc_device, HC_KIND_DEVICE, device, "hc_wait");
  struct hc_queue *q = hc_queue_of(d, queue);
  if (value > q->next_value)
    return hc_fail(HC_E_ARG, "hc_wait: value %llu was never submitted (last %llu)",
                   (unsigned long long)value, (unsigned long long)q->next_value);
  return wait_value(d, q, value, timeout_ns);
}

int32_t hc_poll(hc_handle device, int32_t queue, uint64_t *out_value) {
  HC_GET(d, struct hc_device, HC_KIND_DEVICE, device, "hc_poll");
  if (!out_value) return hc_fail(HC_E_ARG, "hc_poll: null output");
  VkResult r = vkGetSemaphoreCounterValue(d->device, hc_queue_of(d, queue)->timeline, out_value);
  return r == VK_SUCCESS ? HC_OK : hc_vk_fail(r, "vkGetSemaphoreCounterValue");
}

int32_t hc_gather(uint64_t dst_address, uint64_t dst_stride, uint64_t src_address, uint64_t src_stride,
                  const uint32_t *rows, uint32_t n_rows, uint64_t row_bytes, const uint32_t *dst_rows) {
  if (!dst_address || !src_address || (!rows && n_rows))
    return hc_fail(HC_E_ARG, "hc_gather: null address");
  if (row_bytes > dst_stride || row_bytes > src_stride)
    return hc_fail(HC_E_ARG, "hc_gather: row wider than its stride");
  unsigned char *dst = (unsigned char *)(uintptr_t)dst_address;
  const unsigned char *src = (const unsigned char *)(uintptr_t)src_address;
  /* Rows are scattered over a large store: fetch a few rows ahead so that their cache misses
   * overlap the copy of this one (a refresh's 123 MB in 256-byte rows from 52 arrays of 32 MiB,
   * C micro-benchmark, best of 12: 35 instead of 42 ms). */
  const uint32_t ahead = 8;
#ifdef __SSE2__
  /* Non-temporal stores: nothing reads the destination rows before the next decode step, which
   * reads far more than the caches hold, so writing them around the caches saves the read for
   * ownership of every line (61 MB of 256-byte rows into scattered rows, one thread, C
   * micro-benchmark: 17.5 -> 13 ms). Both strides and the base must keep 16-byte alignment. */
  const int stream = row_bytes % 16 == 0 && dst_stride % 16 == 0 && dst_address % 16 == 0;
#else
  const int stream = 0;
#endif
  for (uint32_t i = 0; i < n_rows; i++) {
    if (i + ahead < n_rows) {
      const unsigned char *next = src + (uint64_t)rows[i + ahead] * src_stride;
      for (uint64_t b = 0; b < row_bytes; b += 64) __builtin_prefetch(next + b);
    }
    const uint64_t to = dst_rows ? dst_rows[i] : i;
    unsigned char *d = dst + to * dst_stride;
    const unsigned char *s = src + (uint64_t)rows[i] * src_stride;
#ifdef __SSE2__
    if (stream) {
      for (uint64_t b = 0; b < row_bytes; b += 16)
        _mm_stream_si128((__m128i *)(d + b), _mm_loadu_si128((const __m128i *)(s + b)));
      continue;
    }
#endif
    memcpy(d, s, row_bytes);
  }
#ifdef __SSE2__
  if (stream) _mm_sfence(); /* the streamed rows are visible before the caller signals */
#endif
  return HC_OK;
}

int32_t hc_gather_batch(const uint64_t *jobs, uint32_t n_jobs) {
  if (!jobs && n_jobs) return hc_fail(HC_E_ARG, "hc_gather_batch: null job list");
  for (uint32_t j = 0; j < n_jobs; j++) {
    const uint64_t *g = jobs + (uint64_t)j * HC_GATHER_JOB_WORDS;
    int32_t rc = hc_gather(g[0], g[1], g[2], g[3], (const uint32_t *)(uintptr_t)g[4], (uint32_t)g[5], g[6],
                           (const uint32_t *)(uintptr_t)g[7]);
    if (rc) return rc;
  }
  return HC_OK;
}
