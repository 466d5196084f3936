/* A backend for the switch tests that wraps another plugin table in-process: it counts the bytes
 * live on its device (to see that a move frees everything on the old device) and fails on command:
 *     fault_alloc_budget  allocations left before alloc fails as out of memory (-1: no limit)
 *     fault_byte_limit    alloc fails as out of memory past this many live bytes (-1: no limit)
 *     fault_lost          the device is lost: memory calls and compute fail with FINCH_ERR_DEVICE
 *     fault_no_kernels    compute fails as a plugin whose kernels did not build (memory calls work)
 * Buffers are the inner plugin's own (device pointers pass through unchanged); the optional fused
 * entries (add_rmsnorm_forward, linear_forward_group, attention_cache_append_forward, adamw_step_multi,
 * sum_squares_multi) are left out.
 * One wrapper per process: fault_backend_open() sets it up over `inner` and opens the inner device 0. */
#ifndef FINCH_TESTS_FAULT_BACKEND_H
#define FINCH_TESTS_FAULT_BACKEND_H

#include "backends/backend.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const finch_plugin_api *fault_inner;
static finch_plugin_api fault_table;
static long long fault_live_bytes, fault_live_buffers;
static int fault_alloc_budget = -1, fault_lost, fault_no_kernels;
static long long fault_byte_limit = -1;
static const char *fault_message = "";
static struct {
    finch_plugin_buffer *buf;
    size_t bytes;
} *fault_sizes;
static size_t fault_n_sizes, fault_cap_sizes;

static const char *fault_last_error(void) { return fault_message[0] ? fault_message : fault_inner->last_error(); }

static int fault_check(int compute)
{
    fault_message = "";
    if (fault_lost) {
        fault_message = "fault: the device was lost (CL_DEVICE_NOT_AVAILABLE)";
        return FINCH_ERR_DEVICE;
    }
    if (compute && fault_no_kernels) {
        fault_message = "fault: clBuildProgram failed (CL_BUILD_PROGRAM_FAILURE): <kernel>:1:1: error: unknown type name 'flaot'";
        return FINCH_ERR_DEVICE;
    }
    return FINCH_OK;
}

static int fault_alloc(finch_plugin_device *dev, size_t bytes, finch_plugin_buffer **out)
{
    int rc = fault_check(0);
    if (rc) return rc;
    if (fault_alloc_budget == 0 || (fault_byte_limit >= 0 && fault_live_bytes + (long long)bytes > fault_byte_limit)) {
        fault_message = "fault: out of device memory";
        return FINCH_ERR_OUT_OF_MEMORY;
    }
    if (fault_n_sizes == fault_cap_sizes) {
        fault_cap_sizes = fault_cap_sizes ? 2 * fault_cap_sizes : 1024;
        fault_sizes = realloc(fault_sizes, fault_cap_sizes * sizeof *fault_sizes);
        if (!fault_sizes) return FINCH_ERR_OUT_OF_MEMORY;
    }
    if ((rc = fault_inner->alloc(dev, bytes, out))) return rc;
    if (fault_alloc_budget > 0) fault_alloc_budget--;
    fault_sizes[fault_n_sizes].buf = *out;
    fault_sizes[fault_n_sizes++].bytes = bytes;
    fault_live_bytes += (long long)bytes;
    fault_live_buffers++;
    return FINCH_OK;
}

static void fault_free(finch_plugin_device *dev, finch_plugin_buffer *buf)
{
    if (!buf) return;
    for (size_t i = 0; i < fault_n_sizes; i++)
        if (fault_sizes[i].buf == buf) {
            fault_live_bytes -= (long long)fault_sizes[i].bytes;
            fault_live_buffers--;
            fault_sizes[i] = fault_sizes[--fault_n_sizes];
            break;
        }
    fault_inner->free(dev, buf);
}

static int fault_write(finch_plugin_device *dev, finch_plugin_stream *s, finch_dptr dst, const void *src, size_t bytes)
{
    int rc = fault_check(0);
    return rc ? rc : fault_inner->write(dev, s, dst, src, bytes);
}

static int fault_read(finch_plugin_device *dev, finch_plugin_stream *s, finch_dptr src, void *dst, size_t bytes)
{
    int rc = fault_check(0);
    return rc ? rc : fault_inner->read(dev, s, src, dst, bytes);
}

static int fault_synchronize(finch_plugin_device *dev, finch_plugin_stream *s)
{
    int rc = fault_check(0);
    return rc ? rc : fault_inner->synchronize(dev, s);
}

static int fault_fill(finch_plugin_device *dev, finch_plugin_stream *s, finch_dptr dst, finch_dtype t, int64_t n, float v)
{
    int rc = fault_check(0);
    return rc ? rc : fault_inner->fill(dev, s, dst, t, n, v);
}

static int fault_embedding_forward(finch_plugin_device *dev, finch_plugin_stream *s, int64_t n, int64_t dim, int64_t vocab,
                                   finch_dptr ids, finch_dtype tt, finch_dptr table, finch_dtype ot, finch_dptr out, float scale)
{
    int rc = fault_check(1);
    return rc ? rc : fault_inner->embedding_forward(dev, s, n, dim, vocab, ids, tt, table, ot, out, scale);
}

static int fault_linear_forward(finch_plugin_device *dev, finch_plugin_stream *s, const finch_linear_desc *d)
{
    int rc = fault_check(1);
    return rc ? rc : fault_inner->linear_forward(dev, s, d);
}

static int fault_linear_backward(finch_plugin_device *dev, finch_plugin_stream *s, const finch_linear_desc *d)
{
    int rc = fault_check(1);
    return rc ? rc : fault_inner->linear_backward(dev, s, d);
}

/* Sets the wrapper up over `inner` (name "fault") and opens inner device 0 as *out. */
static int fault_backend_open(const finch_plugin_api *inner, finch_backend *out)
{
    fault_inner = inner;
    fault_table = *inner;
    fault_table.name = "fault";
    fault_table.last_error = fault_last_error;
    fault_table.alloc = fault_alloc;
    fault_table.free = fault_free;
    fault_table.write = fault_write;
    fault_table.read = fault_read;
    fault_table.synchronize = fault_synchronize;
    fault_table.fill = fault_fill;
    fault_table.embedding_forward = fault_embedding_forward;
    fault_table.linear_forward = fault_linear_forward;
    fault_table.linear_backward = fault_linear_backward;
    /* Without these optional entries (a plugin older than ABI 1.5 lacks them) the model takes its
     * fallbacks, axpby then rmsnorm_forward and one linear_forward each, which must give the CPU's
     * numbers all the same (and go through the faults above). */
    fault_table.add_rmsnorm_forward = NULL;
    fault_table.linear_forward_group = NULL;
    fault_table.attention_cache_append_forward = NULL;
    fault_table.adamw_step_multi = NULL; /* ABI 1.7: then a call per tensor */
    fault_table.sum_squares_multi = NULL;
    fault_alloc_budget = -1;
    fault_byte_limit = -1;
    fault_lost = fault_no_kernels = 0;
    memset(out, 0, sizeof *out);
    out->api = &fault_table;
    snprintf(out->name, sizeof out->name, "fault");
    return inner->device_open(0, &out->dev);
}

#endif
