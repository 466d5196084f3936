/* The plugin table, and device enumeration: every available device of every platform, numbered
 * in the order the ICD loader lists platforms and each platform lists its devices, so an index
 * names the same device from one run to the next on an unchanged machine. FINCH_OPENCL_DEVICE,
 * when set, keeps only the devices whose "platform name: device name" contains it (any case). */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "ocl.h"

#define OCL_MAX_DEVICES 64

static struct {
    int count;
    cl_platform_id platform[OCL_MAX_DEVICES];
    cl_device_id device[OCL_MAX_DEVICES];
} ocl_devices;

/* The ICD loader keeps its list of drivers in globals and the drivers start threads: were it
 * unloaded along with this module, that list would leak and those threads could lose their code.
 * So it stays loaded for the life of the process, whatever happens to this module. */
static void pin_icd_loader(void)
{
    (void)dlopen("libOpenCL.so.1", RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
}

/* Does "platform: device" contain the filter, ignoring case? Appends the pair to seen. */
static int device_matches(cl_platform_id platform, cl_device_id device, const char *filter, char *seen, size_t size)
{
    char pname[256] = {0}, dname[256] = {0}, both[520];
    clGetPlatformInfo(platform, CL_PLATFORM_NAME, sizeof pname - 1, pname, NULL);
    clGetDeviceInfo(device, CL_DEVICE_NAME, sizeof dname - 1, dname, NULL);
    snprintf(both, sizeof both, "%s: %s", pname, dname);
    size_t used = strlen(seen);
    snprintf(seen + used, size - used, "%s'%s'", used ? ", " : "", both);
    if (!filter || !*filter) return 1;
    size_t n = strlen(filter);
    for (const char *p = both; *p; p++)
        if (strncasecmp(p, filter, n) == 0) return 1;
    return 0;
}

static int ocl_init(void)
{
    pin_icd_loader();
    ocl_devices.count = 0;
    cl_uint n_platforms = 0;
    cl_int err = clGetPlatformIDs(0, NULL, &n_platforms);
    if (err == -1001 /* CL_PLATFORM_NOT_FOUND_KHR */ || (err == CL_SUCCESS && n_platforms == 0))
        return ocl_fail(FINCH_ERR_DEVICE, "opencl: the OpenCL ICD loader found no platform "
                                          "(no driver is registered in /etc/OpenCL/vendors; install one, e.g. pocl-opencl-icd)");
    if (err != CL_SUCCESS) return ocl_cl_fail(err, "clGetPlatformIDs", "listing platforms");
    const char *filter = getenv("FINCH_OPENCL_DEVICE");
    char seen[2048] = {0};
    cl_platform_id platforms[16];
    if (n_platforms > 16) n_platforms = 16;
    err = clGetPlatformIDs(n_platforms, platforms, NULL);
    if (err != CL_SUCCESS) return ocl_cl_fail(err, "clGetPlatformIDs", "listing platforms");
    for (cl_uint p = 0; p < n_platforms; p++) {
        cl_uint n = 0;
        cl_device_id devices[OCL_MAX_DEVICES];
        err = clGetDeviceIDs(platforms[p], CL_DEVICE_TYPE_ALL, OCL_MAX_DEVICES, devices, &n);
        if (err == CL_DEVICE_NOT_FOUND) continue;
        if (err != CL_SUCCESS) return ocl_cl_fail(err, "clGetDeviceIDs", "listing a platform's devices");
        if (n > OCL_MAX_DEVICES) n = OCL_MAX_DEVICES;
        for (cl_uint d = 0; d < n && ocl_devices.count < OCL_MAX_DEVICES; d++) {
            cl_bool available = CL_FALSE;
            clGetDeviceInfo(devices[d], CL_DEVICE_AVAILABLE, sizeof available, &available, NULL);
            if (!available || !device_matches(platforms[p], devices[d], filter, seen, sizeof seen)) continue;
            ocl_devices.platform[ocl_devices.count] = platforms[p];
            ocl_devices.device[ocl_devices.count] = devices[d];
            ocl_devices.count++;
        }
    }
    if (ocl_devices.count == 0 && filter && *filter)
        return ocl_fail(FINCH_ERR_DEVICE, "opencl: no device matches FINCH_OPENCL_DEVICE='%s' (devices: %s)", filter, seen);
    if (ocl_devices.count == 0)
        return ocl_fail(FINCH_ERR_DEVICE, "opencl: %u platform(s) found but no available device", n_platforms);
    return FINCH_OK;
}

static void ocl_shutdown(void)
{
    ocl_devices.count = 0;
}

int ocl_device_lookup(int index, cl_platform_id *platform, cl_device_id *device)
{
    if (index < 0 || index >= ocl_devices.count)
        return ocl_fail(FINCH_ERR_INVALID_ARGUMENT, "opencl: device index %d out of range (%d device(s))", index,
                        ocl_devices.count);
    *platform = ocl_devices.platform[index];
    *device = ocl_devices.device[index];
    return FINCH_OK;
}

static int ocl_device_count(int *count)
{
    if (!count) return ocl_fail(FINCH_ERR_INVALID_ARGUMENT, "opencl: device_count: count is NULL");
    *count = ocl_devices.count;
    return FINCH_OK;
}

static int ocl_device_info(int index, finch_device_info *info)
{
    cl_platform_id platform = NULL;
    cl_device_id device = NULL;
    if (!info) return ocl_fail(FINCH_ERR_INVALID_ARGUMENT, "opencl: device_info: info is NULL");
    int rc = ocl_device_lookup(index, &platform, &device);
    if (rc) return rc;
    memset(info, 0, sizeof *info);
    cl_device_type type = 0;
    cl_bool unified = CL_FALSE;
    cl_ulong mem = 0;
    cl_uint units = 0;
    cl_int err = clGetDeviceInfo(device, CL_DEVICE_NAME, sizeof info->name - 1, info->name, NULL);
    if (err == CL_INVALID_VALUE) { /* longer than the field: take what fits */
        char name[1024] = {0};
        err = clGetDeviceInfo(device, CL_DEVICE_NAME, sizeof name - 1, name, NULL);
        snprintf(info->name, sizeof info->name, "%.*s", (int)sizeof info->name - 1, name);
    }
    if (err == CL_SUCCESS) err = clGetDeviceInfo(device, CL_DEVICE_TYPE, sizeof type, &type, NULL);
    if (err == CL_SUCCESS) err = clGetDeviceInfo(device, CL_DEVICE_HOST_UNIFIED_MEMORY, sizeof unified, &unified, NULL);
    if (err == CL_SUCCESS) err = clGetDeviceInfo(device, CL_DEVICE_GLOBAL_MEM_SIZE, sizeof mem, &mem, NULL);
    if (err == CL_SUCCESS) err = clGetDeviceInfo(device, CL_DEVICE_MAX_COMPUTE_UNITS, sizeof units, &units, NULL);
    if (err != CL_SUCCESS) return ocl_cl_fail(err, "clGetDeviceInfo", "device_info");
    if (type & CL_DEVICE_TYPE_GPU) info->kind = unified ? FINCH_DEVICE_IGPU : FINCH_DEVICE_GPU;
    else if (type & CL_DEVICE_TYPE_CPU) info->kind = FINCH_DEVICE_CPU;
    else info->kind = FINCH_DEVICE_OTHER;
    info->total_memory = mem;
    info->free_memory = mem; /* OpenCL has no portable free-memory query; nothing is allocated yet */
    info->compute_units = (int)units;
    info->supports_bf16 = 0; /* bf16 is stored as ushort and computed in f32 */
    return FINCH_OK;
}

/* One string property of a platform or device, appended to buf as "key: value\n" (cut to fit). */
static void append_info(char *buf, size_t size, const char *key, cl_int err, const char *value)
{
    size_t len = strlen(buf);
    if (len + 1 >= size) return;
    snprintf(buf + len, size - len, "%s: %s\n", key, err == CL_SUCCESS ? value : "(not reported)");
}

static int ocl_device_details(int index, char *buf, size_t size)
{
    cl_platform_id platform = NULL;
    cl_device_id device = NULL;
    if (!buf || size == 0) return ocl_fail(FINCH_ERR_INVALID_ARGUMENT, "opencl: device_details: no buffer");
    int rc = ocl_device_lookup(index, &platform, &device);
    if (rc) return rc;
    buf[0] = 0;
    static const struct { int platform; cl_uint param; const char *key; } props[] = {
        {1, CL_PLATFORM_NAME, "platform"},
        {1, CL_PLATFORM_VERSION, "platform version"},
        {0, CL_DEVICE_VENDOR, "vendor"},
        {0, CL_DEVICE_VERSION, "device version"},
        {0, CL_DRIVER_VERSION, "driver version"},
        {0, CL_DEVICE_OPENCL_C_VERSION, "OpenCL C"},
        {0, CL_DEVICE_EXTENSIONS, "extensions"},
    };
    for (size_t i = 0; i < sizeof props / sizeof props[0]; i++) {
        char value[4096] = {0};
        cl_int err = props[i].platform ? clGetPlatformInfo(platform, props[i].param, sizeof value - 1, value, NULL)
                                       : clGetDeviceInfo(device, props[i].param, sizeof value - 1, value, NULL);
        append_info(buf, size, props[i].key, err, value);
    }
    cl_ulong max_alloc = 0, local_mem = 0;
    cl_int err = clGetDeviceInfo(device, CL_DEVICE_MAX_MEM_ALLOC_SIZE, sizeof max_alloc, &max_alloc, NULL);
    if (err == CL_SUCCESS) err = clGetDeviceInfo(device, CL_DEVICE_LOCAL_MEM_SIZE, sizeof local_mem, &local_mem, NULL);
    char value[128];
    snprintf(value, sizeof value, "%.2f GiB largest buffer, %llu KiB local memory", (double)max_alloc / (1 << 30),
             (unsigned long long)(local_mem >> 10));
    append_info(buf, size, "limits", err, value);
    return FINCH_OK;
}

static const finch_plugin_api ocl_api = {
    .abi_major = FINCH_PLUGIN_ABI_MAJOR,
    .abi_minor = FINCH_PLUGIN_ABI_MINOR,
    .struct_size = sizeof(finch_plugin_api),
    .name = "opencl",
    .version = "0.1.0 (OpenCL C 1.2)",
    .init = ocl_init,
    .shutdown = ocl_shutdown,
    .last_error = ocl_last_error,
    .device_count = ocl_device_count,
    .device_info = ocl_device_info,
    .device_open = ocl_device_open,
    .device_close = ocl_device_close,
    .memory_info = ocl_memory_info,
    .stream_create = ocl_stream_create,
    .stream_destroy = ocl_stream_destroy,
    .synchronize = ocl_synchronize,
    .alloc = ocl_alloc,
    .free = ocl_free,
    .write = ocl_write,
    .read = ocl_read,
    .copy = ocl_copy,
    .fill = ocl_fill,
    .copy_2d = ocl_copy_2d,
    .copy_rows = ocl_copy_rows,
    .event_create = ocl_event_create,
    .event_destroy = ocl_event_destroy,
    .event_record = ocl_event_record,
    .stream_wait_event = ocl_stream_wait_event,
    .linear_forward_group = ocl_linear_forward_group,
    .cast = ocl_cast,
    .gemm = ocl_gemm,
    .axpby = ocl_axpby,
    .sum_squares = ocl_sum_squares,
    .qmatmul_forward = ocl_qmatmul_forward,
    .qmatmul_backward = ocl_qmatmul_backward,
    .linear_forward = ocl_linear_forward,
    .linear_backward = ocl_linear_backward,
    .attention_forward = ocl_attention_forward,
    .attention_backward = ocl_attention_backward,
    .rmsnorm_forward = ocl_rmsnorm_forward,
    .rmsnorm_backward = ocl_rmsnorm_backward,
    .layernorm_forward = ocl_layernorm_forward,
    .layernorm_backward = ocl_layernorm_backward,
    .rope_forward = ocl_rope_forward,
    .rope_backward = ocl_rope_backward,
    .glu_forward = ocl_glu_forward,
    .glu_backward = ocl_glu_backward,
    .activation_forward = ocl_activation_forward,
    .activation_backward = ocl_activation_backward,
    .embedding_forward = ocl_embedding_forward,
    .embedding_backward = ocl_embedding_backward,
    .cross_entropy = ocl_cross_entropy,
    .linear_cross_entropy = ocl_linear_cross_entropy,
    .adamw_step = ocl_adamw_step,
    .adamw8bit_step = ocl_adamw8bit_step,
    .attention_cache_forward = ocl_attention_cache_forward,
    .device_details = ocl_device_details,
    .add_rmsnorm_forward = ocl_add_rmsnorm_forward,
};

__attribute__((visibility("default"))) const finch_plugin_api *finch_plugin_entry(void)
{
    return &ocl_api;
}
