/* Shared by the tests/test_opencl_*.c programs: loading the OpenCL plugin from $FINCH_BIN_DIR,
 * opening device 0, and moving float data to and from device buffers in any storage type. */
#ifndef FINCH_TESTS_TEST_OPENCL_H
#define FINCH_TESTS_TEST_OPENCL_H

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/half.h"
#include "finch/plugin.h"
#include "tests/testing.h"

#define OCL_TEST_SKIP 77
#define OCL_TEST_MAX_BUFFERS 1024

typedef struct ocl_test {
    void *module;
    const finch_plugin_api *api;
    finch_plugin_device *dev;
    finch_plugin_buffer *buffers[OCL_TEST_MAX_BUFFERS];
    int n_buffers;
} ocl_test;

/* Loads and initialises the module; OCL_TEST_SKIP (after saying why) when it or a platform is absent. */
static inline int ocl_test_load(ocl_test *t)
{
    memset(t, 0, sizeof *t);
    const char *bin = getenv("FINCH_BIN_DIR");
    char path[4096];
    snprintf(path, sizeof path, "%s/libfinch-opencl.so", bin && *bin ? bin : "bin");
    t->module = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!t->module) {
        printf("SKIP: %s: %s (the OpenCL plugin is not built)\n", path, dlerror());
        return OCL_TEST_SKIP;
    }
    finch_plugin_entry_fn entry = (finch_plugin_entry_fn)(uintptr_t)dlsym(t->module, FINCH_PLUGIN_ENTRY_SYMBOL);
    if (!entry) {
        printf("FAIL: %s has no %s\n", path, FINCH_PLUGIN_ENTRY_SYMBOL);
        return 1;
    }
    t->api = entry();
    if (t->api->init() != FINCH_OK) {
        printf("SKIP: no OpenCL device: %s\n", t->api->last_error());
        dlclose(t->module);
        t->module = NULL;
        return OCL_TEST_SKIP;
    }
    return 0;
}

/* ocl_test_load + device_open(0). */
static inline int ocl_test_open(ocl_test *t)
{
    int rc = ocl_test_load(t);
    if (rc) return rc;
    if (t->api->device_open(0, &t->dev) != FINCH_OK) {
        printf("FAIL: device_open(0): %s\n", t->api->last_error());
        return 1;
    }
    return 0;
}

static inline void ocl_test_close(ocl_test *t)
{
    if (t->dev) {
        for (int i = 0; i < t->n_buffers; i++) t->api->free(t->dev, t->buffers[i]);
        t->api->device_close(t->dev);
    }
    if (t->module) {
        t->api->shutdown();
        dlclose(t->module);
    }
    memset(t, 0, sizeof *t);
}

static inline size_t ocl_test_esize(finch_dtype dt)
{
    return dt == FINCH_DTYPE_BF16 || dt == FINCH_DTYPE_F16 ? 2 : dt == FINCH_DTYPE_U8 ? 1 : 4;
}

/* A device buffer of bytes (at least 1), freed by ocl_test_close. */
static inline finch_dptr ocl_test_alloc(ocl_test *t, size_t bytes)
{
    finch_dptr p = {NULL, 0};
    if (t->n_buffers == OCL_TEST_MAX_BUFFERS || t->api->alloc(t->dev, bytes ? bytes : 1, &p.buf) != FINCH_OK) {
        CHECK(0, "alloc of %zu bytes: %s", bytes, t->api->last_error());
        return p;
    }
    t->buffers[t->n_buffers++] = p.buf;
    return p;
}

/* The value x takes once stored as dt (what the device will read). */
static inline float ocl_test_round(float x, finch_dtype dt)
{
    if (dt == FINCH_DTYPE_BF16) return finch_bf16_to_f32(finch_f32_to_bf16(x));
    if (dt == FINCH_DTYPE_F16) return finch_f16_to_f32(finch_f32_to_f16(x));
    return x;
}

/* Stores n floats as dt in a new buffer; x is rounded in place to what was stored. */
static inline finch_dptr ocl_test_upload(ocl_test *t, float *x, size_t n, finch_dtype dt)
{
    finch_dptr p = ocl_test_alloc(t, n * ocl_test_esize(dt));
    if (!p.buf || n == 0) return p;
    void *raw = malloc(n * ocl_test_esize(dt));
    for (size_t i = 0; i < n; i++) {
        if (dt == FINCH_DTYPE_BF16) ((uint16_t *)raw)[i] = finch_f32_to_bf16(x[i]);
        else if (dt == FINCH_DTYPE_F16) ((uint16_t *)raw)[i] = finch_f32_to_f16(x[i]);
        else ((float *)raw)[i] = x[i];
        x[i] = ocl_test_round(x[i], dt);
    }
    int rc = t->api->write(t->dev, NULL, p, raw, n * ocl_test_esize(dt));
    CHECK(rc == FINCH_OK, "write: %s", t->api->last_error());
    free(raw);
    return p;
}

/* n random floats in [-1, 1) stored as dt; x receives the stored values. */
static inline finch_dptr ocl_test_random(ocl_test *t, float *x, size_t n, finch_dtype dt, unsigned long long seed)
{
    testing_fill_random(x, n, seed);
    return ocl_test_upload(t, x, n, dt);
}

static inline void ocl_test_download(ocl_test *t, finch_dptr p, size_t n, finch_dtype dt, float *out)
{
    void *raw = malloc(n * ocl_test_esize(dt) + 1);
    int rc = t->api->read(t->dev, NULL, p, raw, n * ocl_test_esize(dt));
    CHECK(rc == FINCH_OK, "read: %s", t->api->last_error());
    for (size_t i = 0; i < n; i++) {
        if (dt == FINCH_DTYPE_BF16) out[i] = finch_bf16_to_f32(((uint16_t *)raw)[i]);
        else if (dt == FINCH_DTYPE_F16) out[i] = finch_f16_to_f32(((uint16_t *)raw)[i]);
        else if (dt == FINCH_DTYPE_I32) out[i] = (float)((int32_t *)raw)[i];
        else out[i] = ((float *)raw)[i];
    }
    free(raw);
}

#endif
