/* Helpers shared by the tests of the CPU backend (tests/test_cpu_*.c): the plugin table and device,
 * host <-> device copies in any storage type, and finite-difference gradient checks. */
#ifndef FINCH_TESTS_TEST_CPU_COMMON_H
#define FINCH_TESTS_TEST_CPU_COMMON_H

#include "backends/backend.h"
#include "core/half.h"
#include "tests/testing.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const finch_plugin_api *api;
static finch_plugin_device *dev;

enum { MAX_BUFFERS = 4096 };
static finch_plugin_buffer *buffers[MAX_BUFFERS];
static int n_buffers;

static inline void cpu_test_begin(void)
{
    api = finch_cpu_plugin_api();
    if (api->init() != FINCH_OK || api->device_open(0, &dev) != FINCH_OK) {
        fprintf(stderr, "cannot open the cpu device: %s\n", api->last_error());
        exit(1);
    }
}

/* Frees the buffers made by the helpers below since n_buffers was `mark`. */
static inline void free_buffers_from(int mark)
{
    while (n_buffers > mark) api->free(dev, buffers[--n_buffers]);
}

static inline void free_buffers(void) { free_buffers_from(0); }

static inline int cpu_test_end(void)
{
    free_buffers();
    api->device_close(dev);
    api->shutdown();
    return testing_finish();
}

static inline size_t elem_size(finch_dtype t)
{
    return t == FINCH_DTYPE_BF16 || t == FINCH_DTYPE_F16 ? 2 : t == FINCH_DTYPE_U8 ? 1 : 4;
}

static inline float to_storage(finch_dtype t, float v)
{
    if (t == FINCH_DTYPE_BF16) return finch_bf16_to_f32(finch_f32_to_bf16(v));
    if (t == FINCH_DTYPE_F16) return finch_f16_to_f32(finch_f32_to_f16(v));
    return v;
}

/* Rounds host values to what storage type t can hold, so references see the same inputs. */
static inline void round_to(finch_dtype t, float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) x[i] = to_storage(t, x[i]);
}

static inline finch_dptr alloc_bytes(size_t bytes)
{
    finch_plugin_buffer *b = NULL;
    if (api->alloc(dev, bytes, &b) != FINCH_OK || n_buffers == MAX_BUFFERS) {
        fprintf(stderr, "alloc failed: %s\n", api->last_error());
        exit(1);
    }
    buffers[n_buffers++] = b;
    return (finch_dptr){b, 0};
}

static inline finch_dptr upload_raw(const void *src, size_t bytes)
{
    finch_dptr p = alloc_bytes(bytes);
    if (bytes && api->write(dev, NULL, p, src, bytes) != FINCH_OK) CHECK(0, "write: %s", api->last_error());
    return p;
}

/* n floats stored as t. */
static inline finch_dptr upload(const float *x, size_t n, finch_dtype t)
{
    size_t es = elem_size(t);
    unsigned char *raw = malloc(n * es + 1);
    for (size_t i = 0; i < n; i++) {
        if (t == FINCH_DTYPE_F32) {
            memcpy(raw + 4 * i, &x[i], 4);
        } else {
            uint16_t h = t == FINCH_DTYPE_BF16 ? finch_f32_to_bf16(x[i]) : finch_f32_to_f16(x[i]);
            memcpy(raw + 2 * i, &h, 2);
        }
    }
    finch_dptr p = upload_raw(raw, n * es);
    free(raw);
    return p;
}

static inline finch_dptr upload_i32(const int32_t *x, size_t n) { return upload_raw(x, n * 4); }

static inline finch_dptr zeros(size_t n, finch_dtype t)
{
    finch_dptr p = alloc_bytes(n * elem_size(t));
    if (n && api->fill(dev, NULL, p, t, (int64_t)n, 0.0f) != FINCH_OK) CHECK(0, "fill: %s", api->last_error());
    return p;
}

/* n elements of storage t to f32. */
static inline void download(finch_dptr p, size_t n, finch_dtype t, float *out)
{
    size_t es = elem_size(t);
    unsigned char *raw = malloc(n * es + 1);
    if (api->read(dev, NULL, p, raw, n * es) != FINCH_OK) CHECK(0, "read: %s", api->last_error());
    for (size_t i = 0; i < n; i++) {
        if (t == FINCH_DTYPE_F32) {
            memcpy(&out[i], raw + 4 * i, 4);
        } else {
            uint16_t h;
            memcpy(&h, raw + 2 * i, 2);
            out[i] = t == FINCH_DTYPE_BF16 ? finch_bf16_to_f32(h) : finch_f16_to_f32(h);
        }
    }
    free(raw);
}

static inline float *rnd(size_t n, unsigned long long seed)
{
    float *x = malloc(n * sizeof(float) + 4);
    testing_fill_random(x, n, seed);
    return x;
}

static inline float *fzeros(size_t n) { return calloc(n + 1, sizeof(float)); }

static inline double dsum_prod(const float *a, const float *b, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)a[i] * b[i];
    return s;
}

/* Relative error of an f32 result against a double reference. */
static inline double rel_err_d(const float *a, const double *ref, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        num += (a[i] - ref[i]) * (a[i] - ref[i]);
        den += ref[i] * ref[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* Central differences of a scalar loss f(ctx) over the n host values x (perturbed in place). */
typedef double (*loss_fn)(void *ctx);

/* Only every stride-th element is probed (others get NAN); stride 1 probes all. */
static inline void fd_grad_strided(loss_fn f, void *ctx, float *x, size_t n, float eps, float *g, size_t stride)
{
    int mark = n_buffers;
    for (size_t i = 0; i < n; i++) {
        if (i % stride) {
            g[i] = NAN;
            continue;
        }
        float keep = x[i];
        x[i] = keep + eps;
        double lp = f(ctx);
        x[i] = keep - eps;
        double lm = f(ctx);
        x[i] = keep;
        g[i] = (float)((lp - lm) / (2.0 * (double)eps));
        free_buffers_from(mark);
    }
}

static inline void fd_grad(loss_fn f, void *ctx, float *x, size_t n, float eps, float *g)
{
    fd_grad_strided(f, ctx, x, n, eps, g, 1);
}

/* The analytic gradient must match finite differences, and a 3% error in it must not. */
static inline void check_grad(const char *name, const float *analytic, const float *fd, size_t n, double tol)
{
    double err = testing_rel_err(analytic, fd, n);
    CHECK(err < tol, "%s: gradient rel err %.3g (tol %.3g)", name, err, tol);
    float *bad = malloc(n * sizeof(float) + 4);
    for (size_t i = 0; i < n; i++) bad[i] = analytic[i] * 1.03f;
    double bad_err = testing_rel_err(bad, fd, n);
    CHECK(bad_err > tol, "%s: a 3%% wrong gradient passes (rel err %.3g, tol %.3g)", name, bad_err, tol);
    free(bad);
}

static const finch_dtype float_types[3] = {FINCH_DTYPE_F32, FINCH_DTYPE_BF16, FINCH_DTYPE_F16};
static const char *const float_type_names[3] = {"f32", "bf16", "f16"};
/* Tolerances of a forward result against a double reference, per storage type. */
static const double float_type_tol[3] = {2e-6, 1.5e-2, 2e-3};

#endif
