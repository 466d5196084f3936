/* The kernel program: all kernels in one OpenCL C 1.2 program (one compile; PoCL compiles
 * slowly), built when a device opens. Built binaries are cached on disk under
 * $FINCH_OPENCL_CACHE_DIR, else $XDG_CACHE_HOME/finch, else ~/.cache/finch, keyed by a hash of
 * the platform, device, driver version, build options and source; an unusable cache only costs
 * a rebuild (FINCH_OPENCL_CACHE_DIR="" turns the cache off). FINCH_OPENCL_BUILD_OPTIONS adds
 * OpenCL C compiler options (e.g. -cl-mad-enable). A failed build returns FINCH_ERR_DEVICE with
 * the compiler's log. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ocl.h"
#include "ocl_source.h" /* generated: ocl_program_source[], the .cl files of kernels/ in order */

static const char *const ocl_kernel_names[OCL_K_COUNT] = {
#define OCL_KERNEL_NAME(name) #name,
    OCL_KERNELS(OCL_KERNEL_NAME)
#undef OCL_KERNEL_NAME
};

static const char cache_magic[8] = {'F', 'I', 'N', 'C', 'H', 'C', 'L', '1'};

static uint64_t fnv1a(uint64_t h, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static uint64_t hash_info(uint64_t h, cl_device_id dev, cl_platform_id plat, cl_uint param, int is_platform)
{
    char buf[1024] = {0};
    if (is_platform) clGetPlatformInfo(plat, param, sizeof buf - 1, buf, NULL);
    else clGetDeviceInfo(dev, param, sizeof buf - 1, buf, NULL);
    return fnv1a(h, buf, strlen(buf) + 1);
}

/* The cache directory, created if missing; "" when caching is off or impossible. */
static void cache_dir(char *out, size_t size)
{
    const char *env = getenv("FINCH_OPENCL_CACHE_DIR");
    const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    out[0] = 0;
    if (env) snprintf(out, size, "%s", env);
    else if (xdg && *xdg) snprintf(out, size, "%s/finch", xdg);
    else if (home && *home) snprintf(out, size, "%s/.cache/finch", home);
    if (!out[0]) return;
    /* mkdir -p */
    for (char *p = out + 1;; p++) {
        if (*p == '/' || *p == 0) {
            char c = *p;
            *p = 0;
            if (mkdir(out, 0755) != 0 && errno != EEXIST) {
                out[0] = 0;
                return;
            }
            *p = c;
            if (!c) break;
        }
    }
}

static unsigned char *cache_read(const char *path, uint64_t key, size_t *size)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char magic[8];
    uint64_t stored_key = 0, n = 0;
    unsigned char *bin = NULL;
    if (fread(magic, 1, 8, f) == 8 && memcmp(magic, cache_magic, 8) == 0 && fread(&stored_key, 8, 1, f) == 1 &&
        stored_key == key && fread(&n, 8, 1, f) == 1 && n > 0 && n < ((uint64_t)1 << 31)) {
        bin = malloc(n);
        if (bin && fread(bin, 1, n, f) != n) {
            free(bin);
            bin = NULL;
        }
    }
    fclose(f);
    *size = (size_t)n;
    return bin;
}

/* Written to a temporary name and renamed, so a reader never sees half a file. */
static void cache_write(const char *path, uint64_t key, cl_program program)
{
    size_t n = 0;
    if (clGetProgramInfo(program, CL_PROGRAM_BINARY_SIZES, sizeof n, &n, NULL) != CL_SUCCESS || n == 0) return;
    unsigned char *bin = malloc(n);
    if (!bin) return;
    if (clGetProgramInfo(program, CL_PROGRAM_BINARIES, sizeof bin, &bin, NULL) == CL_SUCCESS) {
        char tmp[4300];
        snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
        FILE *f = fopen(tmp, "wb");
        uint64_t n64 = n;
        int ok = f && fwrite(cache_magic, 1, 8, f) == 8 && fwrite(&key, 8, 1, f) == 1 && fwrite(&n64, 8, 1, f) == 1 &&
                 fwrite(bin, 1, n, f) == n;
        if (f && fclose(f) != 0) ok = 0;
        if (!ok || rename(tmp, path) != 0) remove(tmp);
    }
    free(bin);
}

static int build_failed(finch_plugin_device *dev, cl_program program, cl_int err)
{
    char name[256] = {0};
    clGetDeviceInfo(dev->device, CL_DEVICE_NAME, sizeof name - 1, name, NULL);
    size_t n = 0;
    char *log = NULL;
    if (clGetProgramBuildInfo(program, dev->device, CL_PROGRAM_BUILD_LOG, 0, NULL, &n) == CL_SUCCESS && n > 0 &&
        (log = calloc(1, n + 1)) != NULL)
        clGetProgramBuildInfo(program, dev->device, CL_PROGRAM_BUILD_LOG, n, log, NULL);
    int rc = ocl_fail(FINCH_ERR_DEVICE, "opencl: building the kernels for %s: clBuildProgram failed with %s (%d); build log:\n%s",
                      name, ocl_cl_error_name(err), (int)err, log && log[0] ? log : "(empty)");
    free(log);
    return rc;
}

static int create_kernels(finch_plugin_device *dev)
{
    for (int k = 0; k < OCL_K_COUNT; k++) {
        cl_int err;
        dev->kernels[k] = clCreateKernel(dev->program, ocl_kernel_names[k], &err);
        if (err != CL_SUCCESS) {
            char what[96];
            snprintf(what, sizeof what, "creating kernel '%s'", ocl_kernel_names[k]);
            return ocl_cl_fail(err, "clCreateKernel", what);
        }
    }
    return FINCH_OK;
}

int ocl_program_load(finch_plugin_device *dev)
{
    char options[1024];
    const char *extra = getenv("FINCH_OPENCL_BUILD_OPTIONS");
    snprintf(options, sizeof options, "-cl-std=CL1.2 -DFINCH_ROW_WG=%d -DFINCH_MAX_HEAD_DIM=%d %s", OCL_ROW_WG,
             OCL_MAX_HEAD_DIM, extra ? extra : "");

    uint64_t key = 0xcbf29ce484222325ull;
    key = hash_info(key, dev->device, dev->platform, CL_PLATFORM_NAME, 1);
    key = hash_info(key, dev->device, dev->platform, CL_PLATFORM_VERSION, 1);
    key = hash_info(key, dev->device, dev->platform, CL_DEVICE_NAME, 0);
    key = hash_info(key, dev->device, dev->platform, CL_DEVICE_VERSION, 0);
    key = hash_info(key, dev->device, dev->platform, CL_DRIVER_VERSION, 0);
    key = fnv1a(key, options, strlen(options) + 1);
    key = fnv1a(key, ocl_program_source, sizeof ocl_program_source);

    char dir[4096], path[4200];
    cache_dir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/opencl-%016llx.bin", dir, (unsigned long long)key);

    cl_int err;
    if (dir[0]) {
        size_t n = 0;
        unsigned char *bin = cache_read(path, key, &n);
        if (bin) {
            const unsigned char *bins[1] = {bin};
            cl_int status;
            dev->program = clCreateProgramWithBinary(dev->context, 1, &dev->device, &n, bins, &status, &err);
            free(bin);
            if (err == CL_SUCCESS && status == CL_SUCCESS &&
                clBuildProgram(dev->program, 1, &dev->device, options, NULL, NULL) == CL_SUCCESS &&
                create_kernels(dev) == FINCH_OK)
                return FINCH_OK;
            /* A stale or foreign binary: forget it and compile from source. */
            for (int k = 0; k < OCL_K_COUNT; k++)
                if (dev->kernels[k]) clReleaseKernel(dev->kernels[k]);
            memset(dev->kernels, 0, sizeof dev->kernels);
            if (dev->program) clReleaseProgram(dev->program);
            dev->program = NULL;
        }
    }

    const char *src = ocl_program_source;
    size_t len = sizeof ocl_program_source - 1;
    dev->program = clCreateProgramWithSource(dev->context, 1, &src, &len, &err);
    if (err != CL_SUCCESS) return ocl_cl_fail(err, "clCreateProgramWithSource", "building the kernels");
    err = clBuildProgram(dev->program, 1, &dev->device, options, NULL, NULL);
    if (err != CL_SUCCESS) return build_failed(dev, dev->program, err);
    int rc = create_kernels(dev);
    if (rc) return rc;
    if (dir[0]) cache_write(path, key, dev->program);
    return FINCH_OK;
}
