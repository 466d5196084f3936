/* Opened devices: one context, one program and a default in-order queue each; streams are more
 * in-order queues; buffers are cl_mem with their size, so every transfer is bounds-checked. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ocl.h"

static int stream_init(finch_plugin_device *dev, finch_plugin_stream *s)
{
    cl_int err;
    memset(s, 0, sizeof *s);
    s->queue = clCreateCommandQueue(dev->context, dev->device, 0, &err);
    if (err != CL_SUCCESS) return ocl_cl_fail(err, "clCreateCommandQueue", "creating a stream");
    s->flag = clCreateBuffer(dev->context, CL_MEM_READ_WRITE, sizeof(cl_int), NULL, &err);
    if (err != CL_SUCCESS) {
        clReleaseCommandQueue(s->queue);
        s->queue = NULL;
        return ocl_cl_fail(err, "clCreateBuffer", "creating a stream's flag");
    }
    return FINCH_OK;
}

static void stream_release(finch_plugin_stream *s)
{
    if (s->queue) {
        clFinish(s->queue);
        clReleaseCommandQueue(s->queue);
    }
    if (s->scratch) clReleaseMemObject(s->scratch);
    if (s->flag) clReleaseMemObject(s->flag);
    memset(s, 0, sizeof *s);
}

void ocl_device_close(finch_plugin_device *dev)
{
    if (!dev) return;
    stream_release(&dev->default_stream);
    for (int k = 0; k < OCL_K_COUNT; k++)
        if (dev->kernels[k]) clReleaseKernel(dev->kernels[k]);
    if (dev->program) clReleaseProgram(dev->program);
    if (dev->context) clReleaseContext(dev->context);
    pthread_mutex_destroy(&dev->launch_lock);
    pthread_mutex_destroy(&dev->alloc_lock);
    free(dev);
}

int ocl_device_open(int index, finch_plugin_device **out)
{
    if (!out) return ocl_fail(FINCH_ERR_INVALID_ARGUMENT, "opencl: device_open: out is NULL");
    *out = NULL;
    cl_platform_id platform = NULL;
    cl_device_id device = NULL;
    int rc = ocl_device_lookup(index, &platform, &device);
    if (rc) return rc;
    finch_plugin_device *dev = calloc(1, sizeof *dev);
    if (!dev) return ocl_fail(FINCH_ERR_OUT_OF_MEMORY, "opencl: device_open: out of host memory");
    dev->index = index;
    dev->platform = platform;
    dev->device = device;
    pthread_mutex_init(&dev->launch_lock, NULL);
    pthread_mutex_init(&dev->alloc_lock, NULL);

    cl_ulong mem = 0;
    size_t max_wg = 0;
    cl_int err = clGetDeviceInfo(device, CL_DEVICE_GLOBAL_MEM_SIZE, sizeof mem, &mem, NULL);
    if (err == CL_SUCCESS) err = clGetDeviceInfo(device, CL_DEVICE_MAX_WORK_GROUP_SIZE, sizeof max_wg, &max_wg, NULL);
    if (err != CL_SUCCESS) {
        ocl_device_close(dev);
        return ocl_cl_fail(err, "clGetDeviceInfo", "device_open");
    }
    dev->total_memory = mem;
    dev->max_work_group = max_wg;
    if (max_wg < OCL_ROW_WG) {
        ocl_device_close(dev);
        return ocl_fail(FINCH_ERR_UNSUPPORTED, "opencl: device %d allows work-groups of %zu work-items; finch's kernels need %d",
                        index, max_wg, OCL_ROW_WG);
    }
    cl_context_properties props[] = {CL_CONTEXT_PLATFORM, (cl_context_properties)platform, 0};
    dev->context = clCreateContext(props, 1, &device, NULL, NULL, &err);
    if (err != CL_SUCCESS) {
        ocl_device_close(dev);
        return ocl_cl_fail(err, "clCreateContext", "device_open");
    }
    rc = stream_init(dev, &dev->default_stream);
    if (!rc) rc = ocl_program_load(dev);
    if (rc) {
        ocl_device_close(dev);
        return rc;
    }
    *out = dev;
    return FINCH_OK;
}

int ocl_memory_info(finch_plugin_device *dev, uint64_t *free_bytes, uint64_t *total_bytes)
{
    if (!dev) return ocl_fail(FINCH_ERR_INVALID_ARGUMENT, "opencl: memory_info: device is NULL");
    pthread_mutex_lock(&dev->alloc_lock);
    uint64_t used = dev->allocated;
    pthread_mutex_unlock(&dev->alloc_lock);
    /* OpenCL cannot say what other processes hold: free is the total less finch's own buffers. */
    if (free_bytes) *free_bytes = used < dev->total_memory ? dev->total_memory - used : 0;
    if (total_bytes) *total_bytes = dev->total_memory;
    return FINCH_OK;
}

finch_plugin_stream *ocl_stream(finch_plugin_device *dev, finch_plugin_stream *s)
{
    return s ? s : &dev->default_stream;
}

int ocl_stream_create(finch_plugin_device *dev, finch_plugin_stream **out)
{
    if (!dev || !out) return ocl_fail(FINCH_ERR_INVALID_ARGUMENT, "opencl: stream_create: NULL argument");
    finch_plugin_stream *s = malloc(sizeof *s);
    if (!s) return ocl_fail(FINCH_ERR_OUT_OF_MEMORY, "opencl: stream_create: out of host memory");
    int rc = stream_init(dev, s);
    if (rc) {
        free(s);
        return rc;
    }
    *out = s;
    return FINCH_OK;
}

void ocl_stream_destroy(finch_plugin_device *dev, finch_plugin_stream *s)
{
    if (!dev || !s || s == &dev->default_stream) return;
    stream_release(s);
    free(s);
}

int ocl_synchronize(finch_plugin_device *dev, finch_plugin_stream *s)
{
    if (!dev) return ocl_fail(FINCH_ERR_INVALID_ARGUMENT, "opencl: synchronize: device is NULL");
    cl_int err = clFinish(ocl_stream(dev, s)->queue);
    return err == CL_SUCCESS ? FINCH_OK : ocl_cl_fail(err, "clFinish", "synchronize");
}

/* An event is the marker last enqueued on a queue; a wait is a barrier on that marker. */
struct finch_plugin_event {
    cl_event mark;              /* NULL until recorded */
};

int ocl_event_create(finch_plugin_device *dev, finch_plugin_event **out)
{
    if (!dev || !out) return ocl_fail(FINCH_ERR_INVALID_ARGUMENT, "opencl: event_create: NULL argument");
    *out = calloc(1, sizeof **out);
    return *out ? FINCH_OK : ocl_fail(FINCH_ERR_OUT_OF_MEMORY, "opencl: event_create: out of host memory");
}

void ocl_event_destroy(finch_plugin_device *dev, finch_plugin_event *ev)
{
    if (!ev) return;
    if (ev->mark) clReleaseEvent(ev->mark);
    free(ev);
}

int ocl_event_record(finch_plugin_device *dev, finch_plugin_stream *s, finch_plugin_event *ev)
{
    if (!dev || !ev) return ocl_fail(FINCH_ERR_INVALID_ARGUMENT, "opencl: event_record: NULL argument");
    cl_event mark = NULL;
    cl_int err = clEnqueueMarkerWithWaitList(ocl_stream(dev, s)->queue, 0, NULL, &mark);
    if (err != CL_SUCCESS) return ocl_cl_fail(err, "clEnqueueMarkerWithWaitList", "event_record");
    /* Queued work is submitted, so a queue waiting on the marker never waits on unsubmitted work. */
    clFlush(ocl_stream(dev, s)->queue);
    if (ev->mark) clReleaseEvent(ev->mark);
    ev->mark = mark;
    return FINCH_OK;
}

int ocl_stream_wait_event(finch_plugin_device *dev, finch_plugin_stream *s, finch_plugin_event *ev)
{
    if (!dev || !ev) return ocl_fail(FINCH_ERR_INVALID_ARGUMENT, "opencl: stream_wait_event: NULL argument");
    if (!ev->mark) return FINCH_OK; /* never recorded: nothing to wait for */
    cl_int err = clEnqueueBarrierWithWaitList(ocl_stream(dev, s)->queue, 1, &ev->mark, NULL);
    return err == CL_SUCCESS ? FINCH_OK : ocl_cl_fail(err, "clEnqueueBarrierWithWaitList", "stream_wait_event");
}

int ocl_scratch(finch_plugin_device *dev, finch_plugin_stream *s, size_t bytes, ocl_ptr *out)
{
    if (bytes == 0) bytes = 1;
    if (s->scratch_bytes < bytes) {
        /* Released buffers live on until the queued work that uses them has finished. */
        if (s->scratch) clReleaseMemObject(s->scratch);
        s->scratch = NULL;
        s->scratch_bytes = 0;
        cl_int err;
        size_t grow = bytes + bytes / 4;
        s->scratch = clCreateBuffer(dev->context, CL_MEM_READ_WRITE, grow, NULL, &err);
        if (err != CL_SUCCESS) return ocl_cl_fail(err, "clCreateBuffer", "allocating scratch memory");
        s->scratch_bytes = grow;
    }
    out->mem = s->scratch;
    out->off = 0;
    return FINCH_OK;
}

int ocl_flag_clear(finch_plugin_stream *s)
{
    cl_int zero = 0; /* the pattern is copied when the command is enqueued */
    cl_int err = clEnqueueFillBuffer(s->queue, s->flag, &zero, sizeof zero, 0, sizeof zero, 0, NULL, NULL);
    return err == CL_SUCCESS ? FINCH_OK : ocl_cl_fail(err, "clEnqueueFillBuffer", "clearing the input-check flag");
}

int ocl_flag_read(finch_plugin_stream *s, int *value)
{
    cl_int v = 0;
    cl_int err = clEnqueueReadBuffer(s->queue, s->flag, CL_TRUE, 0, sizeof v, &v, 0, NULL, NULL);
    if (err != CL_SUCCESS) return ocl_cl_fail(err, "clEnqueueReadBuffer", "reading the input-check flag");
    *value = v;
    return FINCH_OK;
}

int ocl_alloc(finch_plugin_device *dev, size_t bytes, finch_plugin_buffer **out)
{
    if (!dev || !out) return ocl_fail(FINCH_ERR_INVALID_ARGUMENT, "opencl: alloc: NULL argument");
    *out = NULL;
    finch_plugin_buffer *b = malloc(sizeof *b);
    if (!b) return ocl_fail(FINCH_ERR_OUT_OF_MEMORY, "opencl: alloc: out of host memory");
    /* Some drivers (NVIDIA's) accept any size here and fail later; refuse what the device cannot hold. */
    cl_ulong max_alloc = 0;
    if (clGetDeviceInfo(dev->device, CL_DEVICE_MAX_MEM_ALLOC_SIZE, sizeof max_alloc, &max_alloc, NULL) == CL_SUCCESS &&
        max_alloc > 0 && (cl_ulong)bytes > max_alloc) {
        free(b);
        return ocl_fail(FINCH_ERR_OUT_OF_MEMORY, "opencl: alloc of %zu bytes: over the device's largest allocation (%llu bytes)",
                        bytes, (unsigned long long)max_alloc);
    }
    cl_int err;
    b->mem = clCreateBuffer(dev->context, CL_MEM_READ_WRITE, bytes ? bytes : 1, NULL, &err);
    if (err != CL_SUCCESS) {
        free(b);
        char what[64];
        snprintf(what, sizeof what, "alloc of %zu bytes", bytes);
        return ocl_cl_fail(err, "clCreateBuffer", what);
    }
    b->bytes = bytes;
    pthread_mutex_lock(&dev->alloc_lock);
    dev->allocated += bytes;
    pthread_mutex_unlock(&dev->alloc_lock);
    *out = b;
    return FINCH_OK;
}

void ocl_free(finch_plugin_device *dev, finch_plugin_buffer *buf)
{
    if (!dev || !buf) return;
    clReleaseMemObject(buf->mem);
    pthread_mutex_lock(&dev->alloc_lock);
    dev->allocated -= buf->bytes;
    pthread_mutex_unlock(&dev->alloc_lock);
    free(buf);
}

static int check_range(finch_dptr p, size_t bytes, const char *entry, const char *what)
{
    if (!p.buf) return ocl_fail(FINCH_ERR_INVALID_ARGUMENT, "opencl: %s: %s buffer is NULL", entry, what);
    if (p.offset > p.buf->bytes || bytes > p.buf->bytes - p.offset)
        return ocl_fail(FINCH_ERR_INVALID_ARGUMENT, "opencl: %s: %zu bytes at offset %zu overrun the %s buffer of %zu bytes",
                        entry, bytes, p.offset, what, p.buf->bytes);
    return FINCH_OK;
}

int ocl_write(finch_plugin_device *dev, finch_plugin_stream *s, finch_dptr dst, const void *src, size_t bytes)
{
    if (!dev || (!src && bytes)) return ocl_fail(FINCH_ERR_INVALID_ARGUMENT, "opencl: write: NULL argument");
    int rc = check_range(dst, bytes, "write", "destination");
    if (rc || bytes == 0) return rc;
    cl_int err = clEnqueueWriteBuffer(ocl_stream(dev, s)->queue, dst.buf->mem, CL_TRUE, dst.offset, bytes, src, 0,
                                      NULL, NULL);
    return err == CL_SUCCESS ? FINCH_OK : ocl_cl_fail(err, "clEnqueueWriteBuffer", "write");
}

int ocl_read(finch_plugin_device *dev, finch_plugin_stream *s, finch_dptr src, void *dst, size_t bytes)
{
    if (!dev || (!dst && bytes)) return ocl_fail(FINCH_ERR_INVALID_ARGUMENT, "opencl: read: NULL argument");
    int rc = check_range(src, bytes, "read", "source");
    if (rc || bytes == 0) return rc;
    cl_int err = clEnqueueReadBuffer(ocl_stream(dev, s)->queue, src.buf->mem, CL_TRUE, src.offset, bytes, dst, 0,
                                     NULL, NULL);
    return err == CL_SUCCESS ? FINCH_OK : ocl_cl_fail(err, "clEnqueueReadBuffer", "read");
}

int ocl_copy(finch_plugin_device *dev, finch_plugin_stream *s, finch_dptr dst, finch_dptr src, size_t bytes)
{
    if (!dev) return ocl_fail(FINCH_ERR_INVALID_ARGUMENT, "opencl: copy: device is NULL");
    int rc = check_range(dst, bytes, "copy", "destination");
    if (!rc) rc = check_range(src, bytes, "copy", "source");
    if (rc || bytes == 0) return rc;
    if (dst.buf == src.buf && dst.offset == src.offset) return FINCH_OK;
    if (dst.buf == src.buf && dst.offset < src.offset + bytes && src.offset < dst.offset + bytes)
        return ocl_fail(FINCH_ERR_INVALID_ARGUMENT, "opencl: copy: source and destination overlap");
    cl_int err = clEnqueueCopyBuffer(ocl_stream(dev, s)->queue, src.buf->mem, dst.buf->mem, src.offset, dst.offset,
                                     bytes, 0, NULL, NULL);
    return err == CL_SUCCESS ? FINCH_OK : ocl_cl_fail(err, "clEnqueueCopyBuffer", "copy");
}
