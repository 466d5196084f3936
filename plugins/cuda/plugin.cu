/* The plugin table and its lifetime, device, stream, memory and transfer entries. */
#include "gpu_plugin.h"

#include <mutex>
#include <stdlib.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* ---- errors --------------------------------------------------------------------------------- */
static thread_local char error_message[1024];

int gpu_fail(int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(error_message, sizeof error_message, fmt, ap);
    va_end(ap);
    return status;
}

const char *gpu_last_error(void) { return error_message; }

int gpu_check(gpuError_t err, const char *what)
{
    if (err == gpuSuccess) return FINCH_OK;
    if (err == gpuErrorMemoryAllocation) {
        gpuGetLastError(); /* not sticky: clear it so the caller can retry smaller */
        size_t free_b = 0, total_b = 0;
        gpuMemGetInfo(&free_b, &total_b);
        return gpu_fail(FINCH_ERR_OUT_OF_MEMORY, FINCH_GPU_PLUGIN_NAME ": %s: out of device memory (%zu MiB free of %zu MiB)",
                        what, free_b >> 20, total_b >> 20);
    }
    return gpu_fail(FINCH_ERR_DEVICE, FINCH_GPU_PLUGIN_NAME ": %s: %s (%s)", what, gpuGetErrorString(err), gpuGetErrorName(err));
}

/* ---- bookkeeping of live objects, so shutdown can free everything ---------------------------- */
static std::mutex live_lock;
static finch_plugin_device *live_devices;
static finch_plugin_buffer *live_buffers;
static finch_plugin_stream *live_streams;

template <typename T> static void list_add(T **head, T *x)
{
    std::lock_guard<std::mutex> g(live_lock);
    x->prev = NULL;
    x->next = *head;
    if (*head) (*head)->prev = x;
    *head = x;
}
template <typename T> static void list_remove(T **head, T *x)
{
    std::lock_guard<std::mutex> g(live_lock);
    if (x->prev) x->prev->next = x->next; else *head = x->next;
    if (x->next) x->next->prev = x->prev;
    x->prev = x->next = NULL;
}

int gpu_begin(finch_plugin_device *dev, finch_plugin_stream *s, gpuStream_t *out)
{
    if (!dev) return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": NULL device");
    GPU_TRY(gpu_check(gpuSetDevice(dev->index), "selecting the device"));
    *out = s ? s->stream : dev->stream;
    return FINCH_OK;
}

int gpu_scratch(gpuStream_t st, size_t bytes, void **out, const char *what)
{
    *out = NULL;
    if (bytes == 0) bytes = 16;
    return gpu_check(gpuMallocAsync(out, bytes, st), what);
}

void gpu_scratch_free(gpuStream_t st, void *p)
{
    if (p) gpuFreeAsync(p, st);
}

/* ---- scratch kept for recordings, and overlapping launches while recording ------------------------ */
struct gpu_held {
    void *ptr;
    size_t size;
    struct gpu_held *next; /* smaller ones allocated before: recordings may still name them */
};

static void held_free(struct gpu_held **list)
{
    while (*list) {
        struct gpu_held *h = *list;
        *list = h->next;
        gpuFree(h->ptr);
        free(h);
    }
}

static std::mutex held_lock; /* host threads may share a device's default stream */

int gpu_held_scratch(finch_plugin_device *dev, finch_plugin_stream *s, gpuStream_t st, size_t bytes, void **out)
{
    *out = NULL;
    std::lock_guard<std::mutex> g(held_lock);
    struct gpu_held **list = s ? &s->held : &dev->held;
    if (*list && (*list)->size >= bytes) {
        *out = (*list)->ptr;
        return FINCH_OK;
    }
#if FINCH_GPU_CUDA
    cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(st, &cs) != cudaSuccess || cs != cudaStreamCaptureStatusNone) {
        (void)gpuGetLastError();
        return FINCH_OK; /* no allocation while recording: the caller takes stream-ordered scratch */
    }
#else
    hipStreamCaptureStatus cs = hipStreamCaptureStatusNone;
    if (hipStreamIsCapturing(st, &cs) != hipSuccess || cs != hipStreamCaptureStatusNone) {
        (void)gpuGetLastError();
        return FINCH_OK;
    }
#endif
    size_t size = *list ? (*list)->size * 2 : 0;
    if (size < bytes) size = bytes;
    struct gpu_held *h = (struct gpu_held *)calloc(1, sizeof *h);
    if (!h) return gpu_fail(FINCH_ERR_OUT_OF_MEMORY, FINCH_GPU_PLUGIN_NAME ": out of host memory");
    char what[96];
    snprintf(what, sizeof what, "allocating %zu bytes of stream scratch", size);
    int rc = gpu_check(gpuMalloc(&h->ptr, size), what);
    if (rc) {
        free(h);
        return rc;
    }
    h->size = size;
    h->next = *list;
    *list = h;
    *out = h->ptr;
    return FINCH_OK;
}

/* The stream this thread is recording with overlapping launches on (plugin_capture_begin). */
static thread_local gpuStream_t overlap_stream;

int gpu_overlap(gpuStream_t st)
{
    return st && st == overlap_stream;
}

#if FINCH_GPU_CUDA
/* Whether this module's kernels were built with griddepcontrol for the current device (sm_90+ code;
 * a build for an older architecture run through its PTX has none, and must not overlap). */
static __global__ void overlap_probe_kernel(void) { gpu_grid_wait(); }

static int overlap_wanted(finch_plugin_device *dev)
{
    static int off = -1;
    if (gpu_env_is("FINCH_CUDA_PDL", "0", &off) || dev->props.major < 9) return 0;
    cudaFuncAttributes fa;
    if (cudaFuncGetAttributes(&fa, (const void *)overlap_probe_kernel) != cudaSuccess) {
        (void)gpuGetLastError();
        return 0;
    }
    return fa.ptxVersion >= 90;
}
#endif

size_t gpu_dtype_size(finch_dtype t)
{
    switch (t) {
    case FINCH_DTYPE_F32: case FINCH_DTYPE_I32: return 4;
    case FINCH_DTYPE_BF16: case FINCH_DTYPE_F16: return 2;
    case FINCH_DTYPE_U8: return 1;
    default: return 0;
    }
}

int gpu_is_float_type(finch_dtype t)
{
    return t == FINCH_DTYPE_F32 || t == FINCH_DTYPE_BF16 || t == FINCH_DTYPE_F16;
}

const char *gpu_dtype_name(finch_dtype t)
{
    switch (t) {
    case FINCH_DTYPE_F32: return "F32";
    case FINCH_DTYPE_BF16: return "BF16";
    case FINCH_DTYPE_F16: return "F16";
    case FINCH_DTYPE_I32: return "I32";
    case FINCH_DTYPE_U8: return "U8";
    case FINCH_DTYPE_NF4: return "NF4";
    }
    return "unknown";
}

/* ---- lifetime ------------------------------------------------------------------------------- */
static int plugin_init(void)
{
    int driver = 0, runtime = 0, count = 0;
    gpuError_t e = gpuDriverGetVersion(&driver);
    gpuRuntimeGetVersion(&runtime);
    if (e != gpuSuccess || driver == 0)
        return gpu_fail(FINCH_ERR_DEVICE, "no " FINCH_GPU_API " driver: %s",
                        e != gpuSuccess ? gpuGetErrorString(e) : FINCH_GPU_DRIVER_MISSING);
    e = gpuGetDeviceCount(&count);
    if (e == gpuErrorNoDevice || (e == gpuSuccess && count == 0)) {
        gpuGetLastError();
#if FINCH_GPU_HIP
        /* The HIP runtime gives its own version as the driver's, and "no device" without the driver. */
        if (access("/dev/kfd", F_OK) != 0)
            return gpu_fail(FINCH_ERR_DEVICE, "no HIP driver: /dev/kfd is absent (the amdgpu kernel driver is not "
                                              "loaded, or this container does not pass /dev/kfd through)");
#endif
        return gpu_fail(FINCH_ERR_DEVICE, "no " FINCH_GPU_API " device");
    }
    if (e == gpuErrorInsufficientDriver) {
        gpuGetLastError();
        return gpu_fail(FINCH_ERR_DEVICE, "no " FINCH_GPU_API " driver: driver %d.%d is older than the runtime %d.%d this plugin was built with",
                        driver / 1000, driver % 1000 / 10, runtime / 1000, runtime % 1000 / 10);
    }
    if (e != gpuSuccess) {
        gpuGetLastError();
        return gpu_fail(FINCH_ERR_DEVICE, "no " FINCH_GPU_API " driver: %s", gpuGetErrorString(e));
    }
    return FINCH_OK;
}

static void plugin_device_close(finch_plugin_device *dev);
static void plugin_free(finch_plugin_device *dev, finch_plugin_buffer *buf);
static void plugin_stream_destroy(finch_plugin_device *dev, finch_plugin_stream *s);

static void plugin_shutdown(void)
{
    while (live_buffers) plugin_free(NULL, live_buffers);
    while (live_streams) plugin_stream_destroy(NULL, live_streams);
    while (live_devices) plugin_device_close(live_devices);
}

/* ---- devices -------------------------------------------------------------------------------- */
static int plugin_device_count(int *count)
{
    *count = 0;
    gpuError_t e = gpuGetDeviceCount(count);
    if (e == gpuErrorNoDevice) { gpuGetLastError(); *count = 0; return FINCH_OK; }
    return gpu_check(e, "counting devices");
}

static int plugin_device_info(int index, finch_device_info *info)
{
    gpuDeviceProp p;
    memset(info, 0, sizeof *info);
    GPU_TRY(gpu_check(gpuGetDeviceProperties(&p, index), "reading device properties"));
    int previous = 0;
    gpuGetDevice(&previous);
    GPU_TRY(gpu_check(gpuSetDevice(index), "selecting the device"));
    size_t free_b = 0, total_b = 0;
    int rc = gpu_check(gpuMemGetInfo(&free_b, &total_b), "reading device memory");
    gpuSetDevice(previous);
    if (rc) return rc;
    snprintf(info->name, sizeof info->name, "%.127s", p.name);
    info->kind = p.integrated ? FINCH_DEVICE_IGPU : FINCH_DEVICE_GPU;
    info->total_memory = total_b;
    info->free_memory = free_b;
    info->compute_units = p.multiProcessorCount;
#if FINCH_GPU_CUDA
    info->supports_bf16 = p.major >= 8;
#else
    info->supports_bf16 = 1;
#endif
    return FINCH_OK;
}

static int plugin_device_details(int index, char *buf, size_t size)
{
    gpuDeviceProp p;
    GPU_TRY(gpu_check(gpuGetDeviceProperties(&p, index), "reading device properties"));
    int driver = 0, runtime = 0;
    gpuDriverGetVersion(&driver);
    gpuRuntimeGetVersion(&runtime);
#if FINCH_GPU_CUDA
    char arch[32];
    snprintf(arch, sizeof arch, "sm_%d%d", p.major, p.minor);
    const char *api = "CUDA";
#else
    const char *arch = p.gcnArchName;
    const char *api = "HIP";
#endif
#if FINCH_GPU_CUDA
    size_t optin = (size_t)p.sharedMemPerBlockOptin;
#else
    size_t optin = (size_t)p.sharedMemPerBlock; /* ROCm 5's hipDeviceProp_t has no opt-in size */
#endif
    snprintf(buf, size,
             "architecture: %s (compute capability %d.%d)\n"
             "%s driver: %d.%d, runtime: %d.%d\n"
             "multiprocessors: %d, L2 cache: %d KiB, shared memory per block: %zu KiB (opt-in %zu KiB)\n"
             "memory bus: %d bits\n"
             "GEMM: %s\n",
             arch, p.major, p.minor, api, driver / 1000, driver % 1000 / 10, runtime / 1000, runtime % 1000 / 10,
             p.multiProcessorCount, p.l2CacheSize >> 10, p.sharedMemPerBlock >> 10, optin >> 10,
             p.memoryBusWidth, !FINCH_GPU_BLASLT ? "the plugin's own tiled kernel" : FINCH_GPU_CUDA ? "cuBLASLt" : "hipBLASLt");
    return FINCH_OK;
}

static int plugin_device_open(int index, finch_plugin_device **out)
{
    *out = NULL;
    int count = 0;
    GPU_TRY(plugin_device_count(&count));
    if (index < 0 || index >= count)
        return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": device %d does not exist (%d devices)", index, count);
    finch_plugin_device *dev = (finch_plugin_device *)calloc(1, sizeof *dev);
    if (!dev) return gpu_fail(FINCH_ERR_OUT_OF_MEMORY, FINCH_GPU_PLUGIN_NAME ": out of host memory");
    dev->index = index;
    int rc = gpu_check(gpuSetDevice(index), "selecting the device");
    if (!rc) rc = gpu_check(gpuGetDeviceProperties(&dev->props, index), "reading device properties");
    if (!rc) rc = gpu_check(gpuStreamCreateWithFlags(&dev->stream, gpuStreamNonBlocking), "creating the default stream");
    if (!rc) {
        /* Keep freed scratch in the pool: entries allocate and free it on every call. */
        gpuMemPool_t pool;
        uint64_t keep = UINT64_MAX;
        rc = gpu_check(gpuDeviceGetDefaultMemPool(&pool, index), "reading the memory pool");
        if (!rc) rc = gpu_check(gpuMemPoolSetAttribute(pool, gpuMemPoolAttrReleaseThreshold, &keep), "configuring the memory pool");
    }
#if FINCH_GPU_BLASLT
    if (!rc && gpublasLtCreate(&dev->lt) != GPUBLAS_STATUS_SUCCESS)
        rc = gpu_fail(FINCH_ERR_DEVICE, FINCH_GPU_PLUGIN_NAME ": creating the BLASLt handle failed");
    if (!rc) {
        dev->lt_workspace_size = 32u << 20;
        rc = gpu_check(gpuMalloc(&dev->lt_workspace, dev->lt_workspace_size), "allocating the GEMM workspace");
    }
    if (!rc) rc = gpu_lt_cache_init(dev);
#endif
    if (rc) {
#if FINCH_GPU_BLASLT
        gpu_lt_cache_free(dev);
        if (dev->lt_workspace) gpuFree(dev->lt_workspace);
        if (dev->lt) gpublasLtDestroy(dev->lt);
#endif
        if (dev->stream) gpuStreamDestroy(dev->stream);
        free(dev);
        return rc;
    }
    list_add(&live_devices, dev);
    *out = dev;
    return FINCH_OK;
}

static void plugin_device_close(finch_plugin_device *dev)
{
    if (!dev) return;
    list_remove(&live_devices, dev);
    gpuSetDevice(dev->index);
    gpuStreamSynchronize(dev->stream);
#if FINCH_GPU_BLASLT
    gpu_lt_cache_free(dev);
    gpuFree(dev->lt_workspace);
    gpublasLtDestroy(dev->lt);
#endif
    gpuStreamDestroy(dev->stream);
    held_free(&dev->held);
    gpuMemPool_t pool;
    if (gpuDeviceGetDefaultMemPool(&pool, dev->index) == gpuSuccess) gpuMemPoolTrimTo(pool, 0);
    free(dev);
}

static int plugin_memory_info(finch_plugin_device *dev, uint64_t *free_bytes, uint64_t *total_bytes)
{
    gpuStream_t st = NULL;
    GPU_TRY(gpu_begin(dev, NULL, &st));
    size_t f = 0, t = 0;
    GPU_TRY(gpu_check(gpuMemGetInfo(&f, &t), "reading device memory"));
    *free_bytes = f;
    *total_bytes = t;
    return FINCH_OK;
}

/* ---- streams -------------------------------------------------------------------------------- */
static int plugin_stream_create(finch_plugin_device *dev, finch_plugin_stream **out)
{
    gpuStream_t st = NULL;
    *out = NULL;
    GPU_TRY(gpu_begin(dev, NULL, &st));
    finch_plugin_stream *s = (finch_plugin_stream *)calloc(1, sizeof *s);
    if (!s) return gpu_fail(FINCH_ERR_OUT_OF_MEMORY, FINCH_GPU_PLUGIN_NAME ": out of host memory");
    int rc = gpu_check(gpuStreamCreateWithFlags(&s->stream, gpuStreamNonBlocking), "creating a stream");
    if (rc) { free(s); return rc; }
    s->device = dev->index;
    list_add(&live_streams, s);
    *out = s;
    return FINCH_OK;
}

static void plugin_stream_destroy(finch_plugin_device *dev, finch_plugin_stream *s)
{
    (void)dev;
    if (!s) return;
    list_remove(&live_streams, s);
    gpuSetDevice(s->device);
    gpuStreamSynchronize(s->stream);
    gpuStreamDestroy(s->stream);
    held_free(&s->held);
    free(s);
}

static int plugin_synchronize(finch_plugin_device *dev, finch_plugin_stream *s)
{
    gpuStream_t st = NULL;
    GPU_TRY(gpu_begin(dev, s, &st));
    return gpu_check(gpuStreamSynchronize(st), "synchronizing the stream");
}

/* ---- memory --------------------------------------------------------------------------------- */
static int plugin_alloc(finch_plugin_device *dev, size_t bytes, finch_plugin_buffer **out)
{
    gpuStream_t st = NULL;
    *out = NULL;
    GPU_TRY(gpu_begin(dev, NULL, &st));
    finch_plugin_buffer *b = (finch_plugin_buffer *)calloc(1, sizeof *b);
    if (!b) return gpu_fail(FINCH_ERR_OUT_OF_MEMORY, FINCH_GPU_PLUGIN_NAME ": out of host memory");
    if (bytes) {
        char what[96];
        snprintf(what, sizeof what, "allocating a buffer of %zu bytes", bytes);
        int rc = gpu_check(gpuMalloc(&b->ptr, bytes), what);
        if (rc) { free(b); return rc; }
    }
    b->size = bytes;
    b->device = dev->index;
    list_add(&live_buffers, b);
    *out = b;
    return FINCH_OK;
}

static void plugin_free(finch_plugin_device *dev, finch_plugin_buffer *buf)
{
    (void)dev;
    if (!buf) return;
    list_remove(&live_buffers, buf);
    if (buf->ptr) {
        gpuSetDevice(buf->device);
        gpuFree(buf->ptr); /* waits for work still using it */
    }
    free(buf);
}

static int check_range(finch_dptr p, size_t bytes, const char *what)
{
    if (!p.buf) return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": %s: NULL buffer", what);
    if (p.offset > p.buf->size || bytes > p.buf->size - p.offset)
        return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": %s: %zu bytes at offset %zu overrun a buffer of %zu bytes",
                        what, bytes, p.offset, p.buf->size);
    return FINCH_OK;
}

/* ---- page-locked host memory and copies that return once queued (ABI 1.2) ---------------------- */
static int plugin_host_alloc(finch_plugin_device *dev, size_t bytes, void **out)
{
    *out = NULL;
    GPU_TRY(gpu_check(gpuSetDevice(dev->index), "selecting the device"));
    gpuError_t e = gpuMallocHost(out, bytes ? bytes : 1);
    if (e != gpuSuccess) {
        gpuGetLastError();
        *out = NULL;
        return gpu_fail(FINCH_ERR_OUT_OF_MEMORY, FINCH_GPU_PLUGIN_NAME ": cannot page-lock %zu bytes of host memory: %s", bytes,
                        gpuGetErrorString(e));
    }
    return FINCH_OK;
}

static void plugin_host_free(finch_plugin_device *dev, void *ptr)
{
    if (ptr) gpuFreeHost(ptr);
}

static int plugin_write_async(finch_plugin_device *dev, finch_plugin_stream *s, finch_dptr dst, const void *src, size_t bytes)
{
    gpuStream_t st = NULL;
    GPU_TRY(gpu_begin(dev, s, &st));
    GPU_TRY(check_range(dst, bytes, "write_async"));
    if (!bytes) return FINCH_OK;
    return gpu_check(gpuMemcpyAsync(gpu_ptr(dst), src, bytes, gpuMemcpyHostToDevice, st), "writing to the device");
}

static int plugin_read_async(finch_plugin_device *dev, finch_plugin_stream *s, finch_dptr src, void *dst, size_t bytes)
{
    gpuStream_t st = NULL;
    GPU_TRY(gpu_begin(dev, s, &st));
    GPU_TRY(check_range(src, bytes, "read_async"));
    if (!bytes) return FINCH_OK;
    return gpu_check(gpuMemcpyAsync(dst, gpu_ptr(src), bytes, gpuMemcpyDeviceToHost, st), "reading from the device");
}

/* The caller may reuse host memory on return: a queued copy, then waiting for it. */
static int plugin_write(finch_plugin_device *dev, finch_plugin_stream *s, finch_dptr dst, const void *src, size_t bytes)
{
    GPU_TRY(plugin_write_async(dev, s, dst, src, bytes));
    return plugin_synchronize(dev, s);
}

static int plugin_read(finch_plugin_device *dev, finch_plugin_stream *s, finch_dptr src, void *dst, size_t bytes)
{
    GPU_TRY(plugin_read_async(dev, s, src, dst, bytes));
    return plugin_synchronize(dev, s);
}

static int plugin_copy(finch_plugin_device *dev, finch_plugin_stream *s, finch_dptr dst, finch_dptr src, size_t bytes)
{
    gpuStream_t st = NULL;
    GPU_TRY(gpu_begin(dev, s, &st));
    GPU_TRY(check_range(dst, bytes, "copy destination"));
    GPU_TRY(check_range(src, bytes, "copy source"));
    if (!bytes) return FINCH_OK;
    return gpu_check(gpuMemcpyAsync(gpu_ptr(dst), gpu_ptr(src), bytes, gpuMemcpyDeviceToDevice, st), "copying on the device");
}

static int plugin_copy_2d(finch_plugin_device *dev, finch_plugin_stream *s, finch_dtype dtype, int64_t rows, int64_t cols,
                          finch_dptr src, int64_t ld_src, finch_dptr dst, int64_t ld_dst)
{
    gpuStream_t st = NULL;
    GPU_TRY(gpu_begin(dev, s, &st));
    size_t es = gpu_dtype_size(dtype);
    if (!es) return gpu_fail(FINCH_ERR_UNSUPPORTED, FINCH_GPU_PLUGIN_NAME ": copy_2d: dtype %s", gpu_dtype_name(dtype));
    if (rows < 0 || cols < 0 || ld_src < cols || ld_dst < cols)
        return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": copy_2d: %lld x %lld with row strides %lld, %lld",
                        (long long)rows, (long long)cols, (long long)ld_src, (long long)ld_dst);
    if (!rows || !cols) return FINCH_OK;
    GPU_TRY(check_range(src, ((rows - 1) * ld_src + cols) * es, "copy_2d source"));
    GPU_TRY(check_range(dst, ((rows - 1) * ld_dst + cols) * es, "copy_2d destination"));
    return gpu_check(gpuMemcpy2DAsync(gpu_ptr(dst), ld_dst * es, gpu_ptr(src), ld_src * es, cols * es, rows,
                                      gpuMemcpyDeviceToDevice, st), "copy_2d");
}

/* ---- recording a stream's work and replaying it (ABI 1.3) -------------------------------------- */
struct finch_plugin_graph {
    gpuGraphExec_t exec;
    int device;
};

static int plugin_capture_begin(finch_plugin_device *dev, finch_plugin_stream *s)
{
    gpuStream_t st = NULL;
    GPU_TRY(gpu_begin(dev, s, &st));
    /* Thread-local: other threads' unrelated calls (a host app's own CUDA work) are not disturbed. */
    GPU_TRY(gpu_check(gpuStreamBeginCapture(st, gpuStreamCaptureModeThreadLocal), "starting to record the stream"));
#if FINCH_GPU_CUDA
    overlap_stream = overlap_wanted(dev) ? st : NULL;
#endif
    return FINCH_OK;
}

static int plugin_capture_end(finch_plugin_device *dev, finch_plugin_stream *s, finch_plugin_graph **out)
{
    gpuStream_t st = NULL;
    *out = NULL;
    GPU_TRY(gpu_begin(dev, s, &st));
    overlap_stream = NULL;
    gpuGraph_t graph = NULL;
    /* Ending also ends a capture that a failed call broke off; its error is the one to report. */
    int rc = gpu_check(gpuStreamEndCapture(st, &graph), "recording the stream");
    finch_plugin_graph *g = NULL;
    if (!rc && !(g = (finch_plugin_graph *)calloc(1, sizeof *g)))
        rc = gpu_fail(FINCH_ERR_OUT_OF_MEMORY, FINCH_GPU_PLUGIN_NAME ": out of host memory");
    if (!rc) rc = gpu_check(gpuGraphInstantiate(&g->exec, graph, 0), "instantiating the recorded work");
    if (graph) gpuGraphDestroy(graph);
    if (rc) {
        free(g);
        return rc;
    }
    g->device = dev->index;
    *out = g;
    return FINCH_OK;
}

static int plugin_graph_launch(finch_plugin_device *dev, finch_plugin_stream *s, finch_plugin_graph *g)
{
    gpuStream_t st = NULL;
    GPU_TRY(gpu_begin(dev, s, &st));
    if (!g) return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": graph_launch: NULL graph");
    return gpu_check(gpuGraphLaunch(g->exec, st), "replaying the recorded work");
}

static void plugin_graph_free(finch_plugin_device *dev, finch_plugin_graph *g)
{
    (void)dev;
    if (!g) return;
    gpuSetDevice(g->device);
    gpuGraphExecDestroy(g->exec);
    free(g);
}

/* ---- order between streams (ABI 1.4) ------------------------------------------------------- */
struct finch_plugin_event {
    gpuEvent_t event;
    int device;
};

static int plugin_event_create(finch_plugin_device *dev, finch_plugin_event **out)
{
    gpuStream_t st = NULL;
    *out = NULL;
    GPU_TRY(gpu_begin(dev, NULL, &st));
    finch_plugin_event *ev = (finch_plugin_event *)calloc(1, sizeof *ev);
    if (!ev) return gpu_fail(FINCH_ERR_OUT_OF_MEMORY, FINCH_GPU_PLUGIN_NAME ": out of host memory");
    int rc = gpu_check(gpuEventCreateWithFlags(&ev->event, gpuEventDisableTiming), "creating an event");
    if (rc) { free(ev); return rc; }
    ev->device = dev->index;
    *out = ev;
    return FINCH_OK;
}

static void plugin_event_destroy(finch_plugin_device *dev, finch_plugin_event *ev)
{
    (void)dev;
    if (!ev) return;
    gpuSetDevice(ev->device);
    gpuEventDestroy(ev->event);
    free(ev);
}

static int plugin_event_record(finch_plugin_device *dev, finch_plugin_stream *s, finch_plugin_event *ev)
{
    gpuStream_t st = NULL;
    GPU_TRY(gpu_begin(dev, s, &st));
    if (!ev) return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": event_record: NULL event");
    return gpu_check(gpuEventRecord(ev->event, st), "recording an event");
}

static int plugin_stream_wait_event(finch_plugin_device *dev, finch_plugin_stream *s, finch_plugin_event *ev)
{
    gpuStream_t st = NULL;
    GPU_TRY(gpu_begin(dev, s, &st));
    if (!ev) return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": stream_wait_event: NULL event");
    return gpu_check(gpuStreamWaitEvent(st, ev->event, 0), "waiting on an event");
}

/* ---- the table ------------------------------------------------------------------------------ */
/* attention_decode.cu: attention_cache_forward with a decode path in front of attention.cu's. */
extern "C" int plugin_attention_cache_dispatch(finch_plugin_device *dev, finch_plugin_stream *s,
                                               const finch_attention_cache_desc *c);
/* norm.cu: the residual add fused with rmsnorm_forward. */
extern "C" int plugin_add_rmsnorm_forward(finch_plugin_device *dev, finch_plugin_stream *s, int64_t n, int64_t dim,
                                          finch_dtype dtype, finch_dptr x, finch_dptr d, finch_dptr sum, finch_dtype w_type,
                                          finch_dptr w, float weight_offset, float eps, finch_dptr y, finch_dptr rstd);
extern "C" int plugin_copy_rows(finch_plugin_device *dev, finch_plugin_stream *s, finch_dtype dtype, int64_t n, int64_t cols,
                                finch_dptr src, int64_t ld_src, finch_dptr rows, finch_dptr dst, int64_t ld_dst);

static const finch_plugin_api plugin_api = {
    FINCH_PLUGIN_ABI_MAJOR, FINCH_PLUGIN_ABI_MINOR, sizeof(finch_plugin_api),
    FINCH_GPU_PLUGIN_NAME, "0.1.0",
    plugin_init, plugin_shutdown, gpu_last_error,
    plugin_device_count, plugin_device_info, plugin_device_open, plugin_device_close, plugin_memory_info,
    plugin_stream_create, plugin_stream_destroy, plugin_synchronize,
    plugin_alloc, plugin_free, plugin_write, plugin_read, plugin_copy,
    plugin_fill, plugin_copy_2d, plugin_cast,
    plugin_gemm, plugin_axpby, plugin_sum_squares,
    plugin_qmatmul_forward, plugin_qmatmul_backward,
    plugin_linear_forward, plugin_linear_backward,
    plugin_attention_forward, plugin_attention_backward,
    plugin_rmsnorm_forward, plugin_rmsnorm_backward,
    plugin_layernorm_forward, plugin_layernorm_backward,
    plugin_rope_forward, plugin_rope_backward,
    plugin_glu_forward, plugin_glu_backward,
    plugin_activation_forward, plugin_activation_backward,
    plugin_embedding_forward, plugin_embedding_backward,
    plugin_cross_entropy, plugin_linear_cross_entropy,
    plugin_adamw_step,
    plugin_adamw8bit_step, plugin_attention_cache_dispatch,
    plugin_device_details,
    plugin_host_alloc, plugin_host_free, plugin_write_async, plugin_read_async,
    plugin_copy_rows,
    plugin_capture_begin, plugin_capture_end, plugin_graph_launch, plugin_graph_free,
    plugin_event_create, plugin_event_destroy, plugin_event_record, plugin_stream_wait_event,
    plugin_linear_forward_group, plugin_add_rmsnorm_forward,
    plugin_attention_cache_append_forward,
    plugin_adamw_step_multi, plugin_sum_squares_multi,
};

/* Switches that hand out the table without some entries, for comparison (the core then takes the
 * calls those entries stand for): FINCH_CUDA_GRAPHS=0, no recording, every call launched on its own;
 * FINCH_CUDA_ADD_RMSNORM=0, no add_rmsnorm_forward (axpby and rmsnorm); FINCH_CUDA_ATTN_APPEND=0, no
 * attention_cache_append_forward (rope, copy_rows and attention_cache_forward); FINCH_CUDA_MULTI=0, no
 * adamw_step_multi and sum_squares_multi (a launch a tensor). */
static bool switched_off(const char *name)
{
    const char *v = getenv(name);
    return v && !strcmp(v, "0");
}

extern "C" __attribute__((visibility("default"))) const finch_plugin_api *finch_plugin_entry(void)
{
    const char *profile = getenv("FINCH_CUDA_PROFILE");
    if (profile && !strcmp(profile, "1")) return gpu_profiled_api(&plugin_api);
    static finch_plugin_api plain;
    plain = plugin_api;
    if (switched_off("FINCH_CUDA_GRAPHS")) {
        plain.capture_begin = NULL;
        plain.capture_end = NULL;
        plain.graph_launch = NULL;
        plain.graph_free = NULL;
    }
    if (switched_off("FINCH_CUDA_ADD_RMSNORM")) plain.add_rmsnorm_forward = NULL;
    if (switched_off("FINCH_CUDA_ATTN_APPEND")) plain.attention_cache_append_forward = NULL;
    if (switched_off("FINCH_CUDA_MULTI")) {
        plain.adamw_step_multi = NULL;
        plain.sum_squares_multi = NULL;
    }
    return &plain;
}
