/*
 * hcvk: a small C11 shim over Vulkan compute for HeteroCache-VK.
 *
 * It knows buffers, kernels and command lists, nothing about models. Every object is an
 * opaque 64-bit handle checked against a table, so a stale or forged handle is an error
 * (HC_E_HANDLE), never a crash. Every call returns a status; hc_last_error() gives the text.
 * Only hc_wait, hc_gather_batch and hc_select_rows are meant to be called off the JS thread
 * (Deno `nonblocking`).
 */
#ifndef HCVK_H
#define HCVK_H

#include <stddef.h>
#include <stdint.h>

#define HC_OK 0
#define HC_E_VK (-1)       /* a Vulkan call failed; text names it */
#define HC_E_OOM (-2)      /* device or host memory exhausted */
#define HC_E_HANDLE (-3)   /* unknown, destroyed or wrongly typed handle */
#define HC_E_LIMIT (-4)    /* a size or count over the device's limits */
#define HC_E_ARG (-5)      /* a malformed argument */
#define HC_E_NODEVICE (-6) /* no Vulkan device or no loader/driver */
#define HC_E_TIMEOUT (-7)  /* hc_wait timed out */
#define HC_E_LOST (-8)     /* device lost */

#define HC_BUFFER_DEVICE 0   /* device-local */
#define HC_BUFFER_UPLOAD 1   /* host-visible coherent, mapped for life: staging towards the device */
#define HC_BUFFER_READBACK 2 /* host-visible cached coherent, mapped for life: results back */

#define HC_QUEUE_COMPUTE 0
#define HC_QUEUE_TRANSFER 1 /* aliases the compute queue where the device has no separate one */

typedef uint64_t hc_handle;

/* Copies the text of the last error (NUL-terminated, truncated to cap). Returns its length. */
int32_t hc_last_error(char *out, uint64_t cap);

/* JSON array describing every physical device (index, name, type, limits). */
int32_t hc_devices_json(char *out, uint64_t cap);

/* Opens a device. selector: NULL/"" = best (discrete > integrated > virtual > cpu), a decimal
 * index, or a case-insensitive substring of the device name. */
int32_t hc_device_open(const char *selector, hc_handle *out_device);
int32_t hc_device_close(hc_handle device);
/* JSON object with the chosen device's name, type, limits, subgroup size, queues, features. */
int32_t hc_device_info(hc_handle device, char *out, uint64_t cap);

/* Fails with HC_E_OOM, naming the bytes needed and free, when the allocation does not fit the
 * heap's budget (VK_EXT_memory_budget where present, read for allocations of 1 MiB and more;
 * else the heap size less what this device holds) or the simulated cap. */
int32_t hc_buffer_create(hc_handle device, uint64_t bytes, int32_t kind, hc_handle *out_buffer);
/* Device-local memory as four u64: budget bytes (the heaps' budgets, or their sizes without
 * VK_EXT_memory_budget, lowered to the cap), bytes in use (by every process where the
 * extension reports it, else by this device), bytes this device holds, and the cap (0: none). */
int32_t hc_device_memory(hc_handle device, uint64_t *out4);
/* Caps the device-local bytes this device may hold (0: no cap): a simulated smaller budget. */
int32_t hc_device_set_budget(hc_handle device, uint64_t cap_bytes);
int32_t hc_buffer_destroy(hc_handle buffer);
/* Host address of a mapped buffer, valid until destroy: UPLOAD/READBACK ones, and DEVICE ones
 * whose memory is host-visible (CPU and UMA devices; mapped at the first call). */
int32_t hc_buffer_map(hc_handle buffer, uint64_t *out_address);

/* Descriptor kinds of kernel bindings. A texel binding is a read-only uniform texel buffer that
 * sees its buffer range as R32G32B32A32_UINT texels, 16 bytes each (GLSL usamplerBuffer +
 * texelFetch): lavapipe gathers those with vector loads where it fetches storage buffers lane
 * by lane. The buffer views they need are made by hc_cmd_dispatch and owned by the buffer. */
#define HC_BIND_STORAGE 0
#define HC_BIND_TEXEL 1
#define HC_TEXEL_BYTES 16

/* A compute kernel from SPIR-V: n_bindings descriptors at set 0, bindings 0..n-1, of the kinds
 * in binding_kinds (NULL = all storage buffers), a push constant block of push_bytes, and
 * uint32 specialization constants with ids 0..n_spec-1. */
int32_t hc_kernel_create(hc_handle device, const uint32_t *spirv, uint64_t spirv_bytes,
                         const uint32_t *binding_kinds, uint32_t n_bindings, uint32_t push_bytes,
                         const uint32_t *spec, uint32_t n_spec, hc_handle *out_kernel);
int32_t hc_kernel_destroy(hc_handle kernel);

/* A command list records for one queue; it can be submitted many times once ended. */
int32_t hc_cmd_create(hc_handle device, int32_t queue, hc_handle *out_cmd);
int32_t hc_cmd_destroy(hc_handle cmd);
/* Waits for the list's previous submission (if any), then starts recording afresh. */
int32_t hc_cmd_begin(hc_handle cmd);
/* bindings: n triples (buffer handle, offset bytes, range bytes; range 0 = to the end). A texel
 * binding needs an offset aligned to minTexelBufferOffsetAlignment, a range that is a whole
 * number of texels and at most maxTexelBufferElements of them (HC_E_LIMIT otherwise). */
int32_t hc_cmd_dispatch(hc_handle cmd, hc_handle kernel, const uint64_t *bindings, uint32_t n,
                        const void *push, uint32_t push_bytes, uint32_t gx, uint32_t gy,
                        uint32_t gz);
/* A global memory barrier: every earlier shader/transfer write is visible to later work. */
int32_t hc_cmd_barrier(hc_handle cmd);
/* regions: n triples (src offset, dst offset, bytes). */
int32_t hc_cmd_copy(hc_handle cmd, hc_handle src, hc_handle dst, const uint64_t *regions,
                    uint32_t n);
int32_t hc_cmd_fill(hc_handle cmd, hc_handle buffer, uint64_t offset, uint64_t bytes,
                    uint32_t value);
/* Writes a GPU timestamp into slot (0..1023) after all earlier work. */
int32_t hc_cmd_timestamp(hc_handle cmd, uint32_t slot);
int32_t hc_cmd_end(hc_handle cmd);
/* Timestamps of the last completed submission, in nanoseconds, of slots 0..n-1 (each written by
 * the recording; 0 while not yet available). */
int32_t hc_cmd_timestamps(hc_handle cmd, uint64_t *out_ns, uint32_t n);

/* Submits a recorded list to its queue after the compute timeline reaches wait_compute and the
 * transfer timeline reaches wait_transfer (0 = no wait). Returns the value that the list's
 * queue timeline reaches when it completes. */
int32_t hc_submit(hc_handle cmd, uint64_t wait_compute, uint64_t wait_transfer,
                  uint64_t *out_value);
/* Blocks until the queue's timeline reaches value (call it `nonblocking` from Deno). */
int32_t hc_wait(hc_handle device, int32_t queue, uint64_t value, uint64_t timeout_ns);
/* Current completed value of a queue's timeline, without blocking. */
int32_t hc_poll(hc_handle device, int32_t queue, uint64_t *out_value);

/* Host-side row gather: dst[dst_rows ? dst_rows[i] : i] = src[rows[i]], each row row_bytes
 * long, with byte strides. Plain memcpy, meant to run off the JS thread (nonblocking) into a
 * mapped staging buffer, or (a CPU device) straight into mapped device rows. */
int32_t hc_gather(uint64_t dst_address, uint64_t dst_stride, uint64_t src_address,
                  uint64_t src_stride, const uint32_t *rows, uint32_t n_rows,
                  uint64_t row_bytes, const uint32_t *dst_rows);
/* Several row gathers in one call (one worker thread, one round trip): `jobs` holds n_jobs
 * records of HC_GATHER_JOB_WORDS u64 each, the arguments of hc_gather in order (dst_address,
 * dst_stride, src_address, src_stride, rows address, n_rows, row_bytes, dst_rows address or 0).
 * Stops at the first failing job. */
#define HC_GATHER_JOB_WORDS 8
int32_t hc_gather_batch(const uint64_t *jobs, uint32_t n_jobs);
/* A refresh selection's ranking of one scores row of n floats (select.c): for each of n_caps
 * caps, the min(cap, n) positions ranked first (score descending, NaN lowest, -0 as +0, then
 * position ascending), ascending, written back to back into `out`. Meant for a worker thread. */
int32_t hc_select_rows(const float *row, uint32_t n, const uint32_t *caps, uint32_t n_caps,
                       uint32_t *out);

#endif
