/* Parity of a plugin module with the built-in CPU backend, entry by entry.
 *
 * Loads the module named by $FINCH_PARITY_PLUGIN (a path to libfinch-<x>.so) with dlopen, runs every
 * entry of the plugin ABI on the same random inputs (odd sizes, padded row strides, accumulated
 * outputs starting from random values, overwritten outputs poisoned with NaN) on that plugin and on
 * finch_cpu_plugin_api(), and compares the results: f32 within 1e-4 relative, f16 5e-3, bf16 2e-2.
 * One line per check, then the summary line. Without $FINCH_PARITY_PLUGIN it exits 77 (skipped).
 * Works for any plugin: it uses nothing but the ABI. */
#include "backends/backend.h"
#include "core/half.h"
#include "tests/testing.h"

#include <dlfcn.h>
#include <unistd.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SKIP_STATUS 77

typedef struct side {
    const char *name;
    const finch_plugin_api *api;
    finch_plugin_device *dev;
} side;

/* sides[0] is the CPU reference, sides[1] the plugin under test. */
static side sides[2];

/* One tensor with the same contents on both sides. A zeroed tensor is "absent". */
typedef struct tensor {
    finch_dptr p[2];
    size_t n;
    finch_dtype t;
} tensor;

enum { MAX_BUFFERS = 512 };
static finch_plugin_buffer *live[2][MAX_BUFFERS];
static int n_live;

static void fatal(const char *what, int s)
{
    fprintf(stderr, "parity: %s on %s failed: %s\n", what, sides[s].name, sides[s].api->last_error());
    exit(1);
}

static size_t dtype_size(finch_dtype t)
{
    switch (t) {
    case FINCH_DTYPE_BF16: case FINCH_DTYPE_F16: return 2;
    case FINCH_DTYPE_U8: case FINCH_DTYPE_NF4: return 1;
    default: return 4;
    }
}

static const char *dtype_name(finch_dtype t)
{
    static const char *names[] = {"f32", "bf16", "f16", "i32", "u8", "nf4"};
    return (unsigned)t < 6 ? names[t] : "?";
}

static double tol_for(finch_dtype t)
{
    return t == FINCH_DTYPE_BF16 ? 2e-2 : t == FINCH_DTYPE_F16 ? 5e-3 : 1e-4;
}

/* Frees every tensor made since the last call. */
static void release_all(void)
{
    for (int i = 0; i < n_live; i++)
        for (int s = 0; s < 2; s++)
            if (live[s][i]) sides[s].api->free(sides[s].dev, live[s][i]);
    n_live = 0;
}

static tensor alloc_tensor(finch_dtype t, size_t n, size_t bytes)
{
    tensor x = {{{0}, {0}}, n, t};
    if (n_live == MAX_BUFFERS) {
        fprintf(stderr, "parity: too many live buffers\n");
        exit(1);
    }
    for (int s = 0; s < 2; s++) {
        finch_plugin_buffer *b = NULL;
        if (sides[s].api->alloc(sides[s].dev, bytes ? bytes : 1, &b)) fatal("alloc", s);
        live[s][n_live] = b;
        x.p[s] = (finch_dptr){b, 0};
    }
    n_live++;
    return x;
}

static void write_both(tensor x, const void *raw, size_t bytes)
{
    for (int s = 0; s < 2; s++)
        if (bytes && sides[s].api->write(sides[s].dev, NULL, x.p[s], raw, bytes)) fatal("write", s);
}

static void encode(finch_dtype t, const float *x, size_t n, void *raw)
{
    for (size_t i = 0; i < n; i++) {
        if (t == FINCH_DTYPE_F32) {
            memcpy((char *)raw + 4 * i, &x[i], 4);
        } else if (t == FINCH_DTYPE_I32) {
            int32_t v = (int32_t)x[i];
            memcpy((char *)raw + 4 * i, &v, 4);
        } else {
            uint16_t h = t == FINCH_DTYPE_BF16 ? finch_f32_to_bf16(x[i]) : finch_f32_to_f16(x[i]);
            memcpy((char *)raw + 2 * i, &h, 2);
        }
    }
}

static void decode(finch_dtype t, const void *raw, size_t n, float *x)
{
    for (size_t i = 0; i < n; i++) {
        if (t == FINCH_DTYPE_F32) {
            memcpy(&x[i], (const char *)raw + 4 * i, 4);
        } else if (t == FINCH_DTYPE_I32) {
            int32_t v;
            memcpy(&v, (const char *)raw + 4 * i, 4);
            x[i] = (float)v;
        } else if (t == FINCH_DTYPE_U8) {
            x[i] = (float)((const unsigned char *)raw)[i];
        } else {
            uint16_t h;
            memcpy(&h, (const char *)raw + 2 * i, 2);
            x[i] = t == FINCH_DTYPE_BF16 ? finch_bf16_to_f32(h) : finch_f16_to_f32(h);
        }
    }
}

/* n values of storage type t from host floats. */
static tensor from_floats(finch_dtype t, const float *x, size_t n)
{
    tensor r = alloc_tensor(t, n, n * dtype_size(t));
    void *raw = malloc(n * dtype_size(t) + 1);
    encode(t, x, n, raw);
    write_both(r, raw, n * dtype_size(t));
    free(raw);
    return r;
}

static unsigned long long seed_counter = 1;

/* New contents for x on both sides, uniform in [-scale, scale). */
static void refill(tensor x, float scale)
{
    float *v = malloc(x.n * sizeof(float) + 4);
    void *raw = malloc(x.n * dtype_size(x.t) + 1);
    testing_fill_random(v, x.n, seed_counter++);
    for (size_t i = 0; i < x.n; i++) v[i] *= scale;
    encode(x.t, v, x.n, raw);
    write_both(x, raw, x.n * dtype_size(x.t));
    free(raw);
    free(v);
}

/* Uniform in [-scale, scale). */
static tensor random_tensor(finch_dtype t, size_t n, float scale)
{
    tensor r = alloc_tensor(t, n, n * dtype_size(t));
    refill(r, scale);
    return r;
}

/* Uniform in [0, scale). */
static tensor positive_tensor(finch_dtype t, size_t n, float scale)
{
    float *x = malloc(n * sizeof(float) + 4);
    testing_fill_random(x, n, seed_counter++);
    for (size_t i = 0; i < n; i++) x[i] = 0.5f * (x[i] + 1.0f) * scale;
    tensor r = from_floats(t, x, n);
    free(x);
    return r;
}

static tensor from_ints(const int32_t *v, size_t n)
{
    tensor r = alloc_tensor(FINCH_DTYPE_I32, n, n * 4);
    write_both(r, v, n * 4);
    return r;
}

static tensor from_bytes(const void *v, size_t n)
{
    tensor r = alloc_tensor(FINCH_DTYPE_U8, n, n);
    write_both(r, v, n);
    return r;
}

/* An output the entry must overwrite: every byte 0xFF (NaN in every float type). */
static tensor poisoned(finch_dtype t, size_t n)
{
    tensor r = alloc_tensor(t, n, n * dtype_size(t));
    unsigned char *raw = malloc(n * dtype_size(t) + 1);
    memset(raw, 0xFF, n * dtype_size(t));
    write_both(r, raw, n * dtype_size(t));
    free(raw);
    return r;
}

/* A view of x starting `elems` elements in. */
static tensor offset_view(tensor x, size_t elems)
{
    tensor v = x;
    for (int s = 0; s < 2; s++) v.p[s].offset += elems * dtype_size(x.t);
    v.n = x.n - elems;
    return v;
}

static const tensor absent;

static finch_dptr D(tensor x, int s) { return x.p[s]; }

static void download(tensor x, int s, float *out)
{
    size_t bytes = x.n * dtype_size(x.t);
    void *raw = malloc(bytes + 1);
    if (sides[s].api->read(sides[s].dev, NULL, x.p[s], raw, bytes)) fatal("read", s);
    decode(x.t, raw, x.n, out);
    free(raw);
}

static void report(const char *entry, const char *what, const float *got, const float *ref, size_t n, double tol)
{
    double err = testing_rel_err(got, ref, n);
    int ok = err <= tol; /* NaN fails */
    printf("%-30s %-52s rel_err %.2e (tol %.0e) %s\n", entry, what, err, tol, ok ? "ok" : "FAIL");
    CHECK(ok, "%s %s: rel err %.3g > %.3g", entry, what, err, tol);
}

/* Compares all of x on both sides: one output line and one CHECK. */
static void compare(const char *entry, const char *what, tensor x, double tol)
{
    float *ref = malloc(x.n * sizeof(float) + 4), *got = malloc(x.n * sizeof(float) + 4);
    download(x, 0, ref);
    download(x, 1, got);
    report(entry, what, got, ref, x.n, tol);
    free(ref);
    free(got);
}

/* Compares only the rows x cols elements of each of `batch` matrices (row stride ld, batch stride
 * stride) of x: padding that the entry does not write keeps its poison on both sides. */
static void compare_rows(const char *entry, const char *what, tensor x, int64_t batch, int64_t rows, int64_t cols,
                         int64_t ld, int64_t stride, double tol)
{
    size_t n = (size_t)(batch * rows * cols);
    float *packed[2], *all = malloc(x.n * sizeof(float) + 4);
    for (int s = 0; s < 2; s++) {
        packed[s] = malloc(n * sizeof(float) + 4);
        download(x, s, all);
        for (int64_t b = 0; b < batch; b++)
            for (int64_t r = 0; r < rows; r++)
                memcpy(packed[s] + (b * rows + r) * cols, all + b * stride + r * ld, (size_t)cols * sizeof(float));
    }
    report(entry, what, packed[1], packed[0], n, tol);
    free(packed[0]);
    free(packed[1]);
    free(all);
}

/* Sets (value) or clears (NULL) one of the CUDA/HIP plugin's layout switches, which it reads on every
 * call; only for that plugin: setenv beside another runtime's threads that read the environment (PoCL's
 * do) is a data race. */
static void plugin_env(const char *name, const char *value)
{
    const char *p = sides[1].name;
    if (!p || (strcmp(p, "cuda") && strcmp(p, "hip"))) return;
    if (value) setenv(name, value, 1);
    else unsetenv(name);
}

/* Runs `call` (an expression using s, sd and D(x, s)) on both sides; both must return `expect`. */
#define BOTH_EXPECT(entry, expect, call)                                                                 \
    for (int s = 0; s < 2; s++) {                                                                        \
        const side *sd = &sides[s];                                                                      \
        int rc_ = (call);                                                                                \
        CHECK(rc_ == (expect), "%s on %s returned %d (expected %d): %s", entry, sd->name, rc_, (int)(expect), \
              rc_ ? sd->api->last_error() : "");                                                         \
        (void)sd;                                                                                        \
    }
#define BOTH(entry, call) BOTH_EXPECT(entry, FINCH_OK, call)

/* ---- memory, copies, element-wise --------------------------------------------------------------- */
static void test_devices(void)
{
    const side *p = &sides[1];
    int count = 0;
    finch_device_info info;
    uint64_t free_b = 0, total_b = 0;
    CHECK(p->api->device_count(&count) == FINCH_OK && count >= 1, "device_count: %d", count);
    CHECK(p->api->device_info(0, &info) == FINCH_OK && info.total_memory > 0 && info.name[0],
          "device_info: %s", p->api->last_error());
    CHECK(p->api->memory_info(p->dev, &free_b, &total_b) == FINCH_OK && total_b > 0 && free_b <= total_b,
          "memory_info: %s", p->api->last_error());
    printf("%-30s %s: %s, %llu MiB (%llu MiB free), %d compute units, bf16 %s\n", "device_info", p->name, info.name,
           (unsigned long long)(info.total_memory >> 20), (unsigned long long)(free_b >> 20), info.compute_units,
           info.supports_bf16 ? "yes" : "no");

    /* Out of memory is an error the caller can recover from. */
    finch_plugin_buffer *huge = NULL, *small = NULL;
    int rc = p->api->alloc(p->dev, (size_t)1 << 52, &huge);
    CHECK(rc == FINCH_ERR_OUT_OF_MEMORY && !huge, "alloc of 4 PiB returned %d", rc);
    printf("%-30s %-52s %s\n", "alloc", "4 PiB -> out of memory", rc == FINCH_ERR_OUT_OF_MEMORY ? "ok" : "FAIL");
    rc = p->api->alloc(p->dev, 4096, &small);
    CHECK(rc == FINCH_OK, "alloc after out of memory: %s", p->api->last_error());
    if (small) p->api->free(p->dev, small);
}

static void test_memory(void)
{
    static const finch_dtype types[4] = {FINCH_DTYPE_F32, FINCH_DTYPE_BF16, FINCH_DTYPE_F16, FINCH_DTYPE_I32};
    char what[64];
    for (int i = 0; i < 4; i++) {
        tensor x = poisoned(types[i], 1001);
        BOTH("fill", sd->api->fill(sd->dev, NULL, D(x, s), x.t, 1001, -2.75f));
        snprintf(what, sizeof what, "%s", dtype_name(types[i]));
        compare("fill", what, x, 0);
        for (int j = 0; j < 4; j++) {
            if ((i == 3 || j == 3) && i != j) continue; /* cast is between float types (or a same-type copy) */
            tensor src = random_tensor(types[i], 777, types[i] == FINCH_DTYPE_I32 ? 1000.0f : 3.0f);
            tensor dst = poisoned(types[j], 777);
            BOTH("cast", sd->api->cast(sd->dev, NULL, 777, src.t, D(src, s), dst.t, D(dst, s)));
            snprintf(what, sizeof what, "%s -> %s", dtype_name(types[i]), dtype_name(types[j]));
            compare("cast", what, dst, 0);
        }
    }
    tensor a = random_tensor(FINCH_DTYPE_F32, 999, 1.0f), b = poisoned(FINCH_DTYPE_F32, 999);
    BOTH("copy", sd->api->copy(sd->dev, NULL, D(b, s), D(a, s), 999 * 4));
    compare("copy", "f32 x 999", b, 0);

    /* 13 x 7 block out of a [13, 11] matrix into a [13, 9] one. */
    tensor m = random_tensor(FINCH_DTYPE_BF16, 13 * 11, 2.0f), out = random_tensor(FINCH_DTYPE_BF16, 13 * 9, 1.0f);
    BOTH("copy_2d", sd->api->copy_2d(sd->dev, NULL, FINCH_DTYPE_BF16, 13, 7, D(offset_view(m, 2), s), 11,
                                     D(offset_view(out, 1), s), 9));
    compare("copy_2d", "bf16 13x7, ld 11 -> 9", out, 0);

    for (int i = 0; i < 3; i++) {
        finch_dtype t = types[i];
        tensor x = random_tensor(t, 1234, 2.0f), y = random_tensor(t, 1234, 2.0f), o = poisoned(t, 1234);
        BOTH("axpby", sd->api->axpby(sd->dev, NULL, 1234, t, 0.75f, D(x, s), -1.5f, D(y, s), D(o, s)));
        snprintf(what, sizeof what, "%s", dtype_name(t));
        compare("axpby", what, o, tol_for(t));
        BOTH("axpby", sd->api->axpby(sd->dev, NULL, 1234, t, 3.0f, D(x, s), 0.0f, D(absent, s), D(x, s)));
        snprintf(what, sizeof what, "%s, y absent, out = x", dtype_name(t));
        compare("axpby", what, x, tol_for(t));
        tensor ss = from_floats(FINCH_DTYPE_F32, (float[]){0.5f}, 1);
        BOTH("sum_squares", sd->api->sum_squares(sd->dev, NULL, 1234, t, D(y, s), D(ss, s)));
        compare("sum_squares", dtype_name(t), ss, 1e-5);
    }

    /* Work queued on a created stream. */
    finch_plugin_stream *st[2] = {NULL, NULL};
    tensor x = random_tensor(FINCH_DTYPE_F32, 4097, 1.0f), o = poisoned(FINCH_DTYPE_F32, 4097);
    BOTH("stream_create", sd->api->stream_create(sd->dev, &st[s]));
    BOTH("axpby", sd->api->axpby(sd->dev, st[s], 4097, FINCH_DTYPE_F32, 2.0f, D(x, s), 0.0f, D(absent, s), D(o, s)));
    BOTH("synchronize", sd->api->synchronize(sd->dev, st[s]));
    for (int s = 0; s < 2; s++) sides[s].api->stream_destroy(sides[s].dev, st[s]);
    compare("stream", "axpby on a created stream", o, 1e-6);
    release_all();
}

/* ABI 1.2 page-locked host memory and copies queued on a stream: a round trip through device
 * memory that later work on the same stream (an axpby) sees done, then a read back after it. Odd
 * sizes and a byte offset. Skipped for a plugin without the four entries. */
static void test_async_copies(void)
{
    const size_t n = 100003;
    for (int s = 0; s < 2; s++)
        if (!sides[s].api->host_alloc || !sides[s].api->host_free || !sides[s].api->write_async || !sides[s].api->read_async) {
            printf("%-30s %s has no async copies (ABI < 1.2 or not provided): skipped\n", "host_alloc", sides[s].name);
            return;
        }
    float *src = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) src[i] = (float)i * 0.5f - 7.0f;
    tensor dev = poisoned(FINCH_DTYPE_F32, n + 3), out = poisoned(FINCH_DTYPE_F32, n);
    int ok_all = 1;
    for (int s = 0; s < 2; s++) {
        const side *sd = &sides[s];
        void *pin = NULL, *back = NULL;
        finch_plugin_stream *st = NULL;
        int rc = sd->api->host_alloc(sd->dev, n * sizeof(float), &pin);
        if (!rc) rc = sd->api->host_alloc(sd->dev, n * sizeof(float), &back);
        if (!rc) rc = sd->api->stream_create(sd->dev, &st);
        if (!rc) memcpy(pin, src, n * sizeof(float));
        finch_dptr at = D(offset_view(dev, 3), s);
        if (!rc) rc = sd->api->write_async(sd->dev, st, at, pin, n * sizeof(float));
        if (!rc) rc = sd->api->axpby(sd->dev, st, (int64_t)n, FINCH_DTYPE_F32, 2.0f, at, 0.0f, D(absent, s), D(out, s));
        if (!rc) rc = sd->api->read_async(sd->dev, st, D(out, s), back, n * sizeof(float));
        if (!rc) rc = sd->api->synchronize(sd->dev, st);
        int same = !rc;
        for (size_t i = 0; same && i < n; i++) same = ((float *)back)[i] == 2.0f * src[i];
        CHECK(same, "host_alloc/write_async/read_async on %s: %s", sd->name, rc ? sd->api->last_error() : "wrong values read back");
        ok_all &= same;
        if (st) sd->api->stream_destroy(sd->dev, st);
        if (pin) sd->api->host_free(sd->dev, pin);
        if (back) sd->api->host_free(sd->dev, back);
    }
    printf("%-30s %-52s %s\n", "write_async/read_async", "f32 x 100003, offset 12 bytes, axpby between", ok_all ? "ok" : "FAIL");
    compare("read_async", "the buffers behind the round trip", out, 0);
    free(src);
    release_all();
}

/* ABI 1.3 copy_rows: rows to places named in device memory, one of them negative and one past the
 * buffer (both skipped), from a strided source at an offset. Then a recording on the plugin: a
 * copy_rows and an axpby captured once and replayed three times with new contents in the same
 * buffers must give what the CPU computes directly each time. Skipped where the entries are absent. */
/* ABI 1.4: work on one stream waits for another's through an event. Stream 1 scales a 16 MiB buffer
 * eight times, stream 2 copies it after the event: without the wait the copy would race the
 * scaling. Both sides run it; the copies must agree. */
static void test_event_order(void)
{
    const side *p = &sides[1];
    if (!p->api->event_create || !p->api->event_destroy || !p->api->event_record || !p->api->stream_wait_event) {
        printf("%-30s %s has no events (ABI < 1.4 or not provided): skipped\n", "event_record", p->name);
        return;
    }
    const int64_t n = (int64_t)1 << 22;
    tensor a = random_tensor(FINCH_DTYPE_F32, (size_t)n, 1.0f), b = poisoned(FINCH_DTYPE_F32, (size_t)n);
    for (int s = 0; s < 2; s++) {
        const side *sd = &sides[s];
        finch_plugin_stream *s1 = NULL, *s2 = NULL;
        finch_plugin_event *ev = NULL;
        int rc = sd->api->stream_create(sd->dev, &s1);
        if (!rc) rc = sd->api->stream_create(sd->dev, &s2);
        if (!rc) rc = sd->api->event_create(sd->dev, &ev);
        if (!rc) rc = sd->api->fill(sd->dev, s1, D(a, s), FINCH_DTYPE_F32, n, 1.5f);
        for (int k = 0; !rc && k < 8; k++)
            rc = sd->api->axpby(sd->dev, s1, n, FINCH_DTYPE_F32, 1.0f, D(a, s), 0.5f, D(a, s), D(a, s));
        if (!rc) rc = sd->api->event_record(sd->dev, s1, ev);
        if (!rc) rc = sd->api->stream_wait_event(sd->dev, s2, ev);
        if (!rc) rc = sd->api->copy(sd->dev, s2, D(b, s), D(a, s), (size_t)n * 4);
        if (!rc) rc = sd->api->synchronize(sd->dev, s2);
        CHECK(!rc, "events on %s: %s", sd->name, rc ? sd->api->last_error() : "");
        if (!rc) rc = sd->api->synchronize(sd->dev, s1);
        if (ev) sd->api->event_destroy(sd->dev, ev);
        if (s2) sd->api->stream_destroy(sd->dev, s2);
        if (s1) sd->api->stream_destroy(sd->dev, s1);
    }
    compare("stream_wait_event", "a copy on stream 2 after 9 passes on stream 1", b, 0);
    release_all();
}

static void test_copy_rows_and_replay(void)
{
    const side *p = &sides[1];
    if (!p->api->copy_rows) {
        printf("%-30s %s has no copy_rows (ABI < 1.3 or not provided): skipped\n", "copy_rows", p->name);
        return;
    }
    static const finch_dtype types[3] = {FINCH_DTYPE_F32, FINCH_DTYPE_BF16, FINCH_DTYPE_F16};
    char what[80];
    for (int i = 0; i < 3; i++) {
        finch_dtype t = types[i];
        tensor src = random_tensor(t, 6 * 9, 2.0f), dst = random_tensor(t, 13 * 10 + 3, 1.0f);
        tensor rows = from_ints((const int32_t[]){11, 2, -1, 7, 12, 1000}, 6);
        BOTH("copy_rows", sd->api->copy_rows(sd->dev, NULL, t, 6, 7, D(offset_view(src, 1), s), 9, D(rows, s),
                                             D(offset_view(dst, 3), s), 10));
        snprintf(what, sizeof what, "%s 6x7 ld 9 -> ld 10, rows -1 and 1000 skipped", dtype_name(t));
        compare("copy_rows", what, dst, 0);
    }
    if (!p->api->capture_begin || !p->api->capture_end || !p->api->graph_launch || !p->api->graph_free) {
        printf("%-30s %s does not record: skipped\n", "capture_begin", p->name);
        release_all();
        return;
    }
    const int64_t n = 3, cols = 257, rows_out = 40;
    tensor x = random_tensor(FINCH_DTYPE_BF16, n * cols, 1.0f), cache = random_tensor(FINCH_DTYPE_BF16, rows_out * cols, 1.0f);
    tensor y = poisoned(FINCH_DTYPE_BF16, n * cols), where = from_ints((const int32_t[]){0, 1, 2}, 3);
    finch_plugin_stream *st = NULL;
    finch_plugin_graph *g = NULL;
    int rc = p->api->stream_create(p->dev, &st);
    if (!rc) rc = p->api->capture_begin(p->dev, st);
    if (!rc) {
        int r1 = p->api->copy_rows(p->dev, st, FINCH_DTYPE_BF16, n, cols, D(x, 1), cols, D(where, 1), D(cache, 1), cols);
        int r2 = p->api->axpby(p->dev, st, n * cols, FINCH_DTYPE_BF16, 2.0f, D(x, 1), 0.0f, D(absent, 1), D(y, 1));
        rc = p->api->capture_end(p->dev, st, &g);
        if (!rc) rc = r1 ? r1 : r2;
    }
    CHECK(!rc && g, "capture on %s: %s", p->name, rc ? p->api->last_error() : "no graph");
    for (int round = 0; !rc && round < 3; round++) {
        /* New contents at the same addresses: the tokens and the places they go. */
        int32_t places[3] = {5 + round * 11, 1 + round * 7, 39 - round};
        float v[3 * 257];
        unsigned char raw[3 * 257 * 2];
        for (int64_t k = 0; k < n * cols; k++) v[k] = (float)((k * 7 + round * 13) % 29) * 0.25f - 3.0f;
        encode(FINCH_DTYPE_BF16, v, (size_t)(n * cols), raw);
        write_both(x, raw, sizeof raw);
        write_both(where, places, sizeof places);
        rc = p->api->graph_launch(p->dev, st, g);
        if (!rc) rc = p->api->synchronize(p->dev, st);
        CHECK(!rc, "graph_launch on %s: %s", p->name, rc ? p->api->last_error() : "");
        const side *c = &sides[0];
        c->api->copy_rows(c->dev, NULL, FINCH_DTYPE_BF16, n, cols, D(x, 0), cols, D(where, 0), D(cache, 0), cols);
        c->api->axpby(c->dev, NULL, n * cols, FINCH_DTYPE_BF16, 2.0f, D(x, 0), 0.0f, D(absent, 0), D(y, 0));
        snprintf(what, sizeof what, "replay %d: copy_rows to new places", round + 1);
        compare("graph_launch", what, cache, 0);
        snprintf(what, sizeof what, "replay %d: axpby of new values", round + 1);
        compare("graph_launch", what, y, 0);
    }
    if (g) p->api->graph_free(p->dev, g);
    if (st) p->api->stream_destroy(p->dev, st);
    release_all();
}

static void test_activations(void)
{
    static const finch_activation acts[5] = {FINCH_ACT_SILU, FINCH_ACT_GELU_ERF, FINCH_ACT_GELU_TANH, FINCH_ACT_RELU,
                                             FINCH_ACT_SOFTCAP};
    static const char *names[5] = {"silu", "gelu_erf", "gelu_tanh", "relu", "softcap"};
    char what[64];
    for (int a = 0; a < 5; a++) {
        for (int ti = 0; ti < 2; ti++) {
            finch_dtype t = ti ? FINCH_DTYPE_BF16 : FINCH_DTYPE_F32;
            int n = 1001;
            tensor x = random_tensor(t, n, 4.0f), y = poisoned(t, n), dy = random_tensor(t, n, 1.0f), dx = poisoned(t, n);
            BOTH("activation_forward", sd->api->activation_forward(sd->dev, NULL, acts[a], 3.0f, n, t, D(x, s), D(y, s)));
            BOTH("activation_backward",
                 sd->api->activation_backward(sd->dev, NULL, acts[a], 3.0f, n, t, D(x, s), D(dy, s), D(dx, s)));
            snprintf(what, sizeof what, "%s %s", names[a], dtype_name(t));
            compare("activation_forward", what, y, tol_for(t));
            compare("activation_backward", what, dx, tol_for(t));
            if (a == FINCH_ACT_SOFTCAP) continue;
            /* Gated: gate and up are the two halves of one [n, 2 dim] gate_up row. */
            int rows = 9, dim = 37;
            tensor gu = random_tensor(t, (size_t)rows * 2 * dim, 3.0f), out = poisoned(t, (size_t)rows * dim);
            tensor dout = random_tensor(t, (size_t)rows * dim, 1.0f), dgu = poisoned(t, (size_t)rows * 2 * dim);
            tensor up = offset_view(gu, dim), dup = offset_view(dgu, dim);
            BOTH("glu_forward", sd->api->glu_forward(sd->dev, NULL, acts[a], rows, dim, t, D(gu, s), 2 * dim, D(up, s),
                                                     2 * dim, D(out, s)));
            BOTH("glu_backward", sd->api->glu_backward(sd->dev, NULL, acts[a], rows, dim, t, D(gu, s), 2 * dim, D(up, s),
                                                       2 * dim, D(dout, s), D(dgu, s), D(dup, s)));
            compare("glu_forward", what, out, tol_for(t));
            compare("glu_backward", what, dgu, tol_for(t));
            /* In place: dgate/dup overwrite gate/up. */
            BOTH("glu_backward", sd->api->glu_backward(sd->dev, NULL, acts[a], rows, dim, t, D(gu, s), 2 * dim, D(up, s),
                                                       2 * dim, D(dout, s), D(gu, s), D(up, s)));
            snprintf(what, sizeof what, "%s %s in place", names[a], dtype_name(t));
            compare("glu_backward", what, gu, tol_for(t));
        }
        release_all();
    }
}

/* ---- matrix products ---------------------------------------------------------------------------- */
/* d[0] on both sides over a, b and c (d[1] becomes d[0] with the plugin's addresses). */
static void gemm_both(finch_gemm_desc d[2], tensor a, tensor b, tensor c)
{
    d[1] = d[0];
    for (int s = 0; s < 2; s++) {
        d[s].a = D(a, s);
        d[s].b = D(b, s);
        d[s].c = D(c, s);
    }
    BOTH("gemm", sd->api->gemm(sd->dev, NULL, &d[s]));
}

static void test_gemm(void)
{
    static const finch_dtype types[3] = {FINCH_DTYPE_F32, FINCH_DTYPE_BF16, FINCH_DTYPE_F16};
    char what[96];
    for (int ti = 0; ti < 3; ti++) {
        for (int ta = 0; ta < 2; ta++) {
            for (int tb = 0; tb < 2; tb++) {
                for (int variant = 0; variant < 4; variant++) {
                    /* 0: C in the operands' type, beta 0 (C poisoned); 1: f32 C, batch 3; 2: B in f32 (mixed);
                     * 3: mixed and large enough for several tiles in every direction. */
                    finch_gemm_desc d[2];
                    memset(&d[0], 0, sizeof d[0]);
                    d[0].trans_a = ta;
                    d[0].trans_b = tb;
                    d[0].m = variant == 3 ? 151 : 37;
                    d[0].n = variant == 3 ? 133 : 29;
                    d[0].k = variant == 3 ? 97 : 53;
                    d[0].a_type = types[ti];
                    d[0].b_type = variant >= 2 ? FINCH_DTYPE_F32 : types[ti];
                    d[0].c_type = variant == 1 ? FINCH_DTYPE_F32 : types[ti];
                    d[0].batch = variant == 1 ? 3 : 1;
                    int64_t arows = ta ? d[0].k : d[0].m, acols = ta ? d[0].m : d[0].k;
                    int64_t brows = tb ? d[0].n : d[0].k, bcols = tb ? d[0].k : d[0].n;
                    d[0].lda = acols + 3;
                    d[0].ldb = bcols + 1;
                    d[0].ldc = d[0].n + 2;
                    d[0].stride_a = arows * d[0].lda + 5;
                    d[0].stride_b = brows * d[0].ldb;
                    d[0].stride_c = d[0].m * d[0].ldc + 7;
                    d[0].alpha = 0.75f;
                    d[0].beta = variant == 0 ? 0.0f : -0.5f;
                    size_t na = (size_t)(d[0].stride_a * d[0].batch), nb = (size_t)(d[0].stride_b * d[0].batch);
                    size_t nc = (size_t)(d[0].stride_c * d[0].batch);
                    tensor a = random_tensor(d[0].a_type, na, 1.0f), b = random_tensor(d[0].b_type, nb, 1.0f);
                    tensor c = variant == 0 ? poisoned(d[0].c_type, nc) : random_tensor(d[0].c_type, nc, 1.0f);
                    gemm_both(d, a, b, c);
                    snprintf(what, sizeof what, "%s%s A %s B %s C %s batch %lld beta %g", ta ? "At" : "A",
                             tb ? " Bt" : " B", dtype_name(d[0].a_type), dtype_name(d[0].b_type),
                             dtype_name(d[0].c_type), (long long)d[0].batch, d[0].beta);
                    compare_rows("gemm", what, c, d[0].batch, d[0].m, d[0].n, d[0].ldc, d[0].stride_c,
                                 tol_for(d[0].c_type == FINCH_DTYPE_F32 ? d[0].a_type : d[0].c_type));
                }
            }
        }
        release_all();
    }
}

static const float nf4_code[16] = {-1.0f, -0.6961928f, -0.5250731f, -0.3949175f, -0.2844414f, -0.1848489f,
                                   -0.0910500f, 0.0f, 0.0795803f, 0.1609302f, 0.2461123f, 0.3379152f,
                                   0.4407098f, 0.5626170f, 0.7229568f, 1.0f};

/* A random NF4 weight [out, in] (odd element counts included), blocksize 64: packed codes, absmax, code. */
typedef struct nf4_parts {
    tensor data, absmax, code;
} nf4_parts;

static nf4_parts make_nf4(int64_t out, int64_t in)
{
    int64_t n = out * in, nbytes = (n + 1) / 2, nblocks = (n + 63) / 64;
    unsigned char *bytes = malloc((size_t)nbytes);
    float *absmax = malloc((size_t)nblocks * sizeof(float));
    float *r = malloc((size_t)(nbytes + nblocks) * sizeof(float));
    testing_fill_random(r, (size_t)(nbytes + nblocks), seed_counter++);
    for (int64_t i = 0; i < nbytes; i++) bytes[i] = (unsigned char)((r[i] + 1.0f) * 127.99f);
    for (int64_t i = 0; i < nblocks; i++) absmax[i] = 0.5f + 0.5f * (r[nbytes + i] + 1.0f);
    nf4_parts p = {from_bytes(bytes, (size_t)nbytes), from_floats(FINCH_DTYPE_F32, absmax, (size_t)nblocks),
                   from_floats(FINCH_DTYPE_F32, nf4_code, 16)};
    free(bytes);
    free(absmax);
    free(r);
    return p;
}

static finch_weight nf4_weight(const nf4_parts *p, int s)
{
    finch_weight w;
    memset(&w, 0, sizeof w);
    w.dtype = FINCH_DTYPE_NF4;
    w.blocksize = 64;
    w.data = D(p->data, s);
    w.absmax = D(p->absmax, s);
    w.code = D(p->code, s);
    return w;
}

static finch_weight dense_weight(tensor w, int s)
{
    finch_weight r;
    memset(&r, 0, sizeof r);
    r.dtype = w.t;
    r.data = D(w, s);
    return r;
}

/* Sizes: small (the tiled kernel), odd with m >= 64 (a GPU's dequantize-and-GEMM path, element by
 * element), multiples of 8 (its vector path); each also with FINCH_CUDA_NF4_SLICE_ELEMS small, so
 * that the CUDA plugin cuts W into many slices (rows forward, 64-wide columns backward). */
static void test_qmatmul(void)
{
    char what[96];
    static const int64_t sizes[3][3] = {{33, 47, 19}, {161, 95, 77}, {200, 136, 80}};
    for (int sliced = 0; sliced < 2; sliced++) {
    if (sliced) plugin_env("FINCH_CUDA_NF4_SLICE_ELEMS", "4096");
    for (int ti = 0; ti < 2; ti++) {
        finch_dtype t = ti ? FINCH_DTYPE_BF16 : FINCH_DTYPE_F32;
        for (int big = 0; big < 3; big++) {
        int64_t out = sizes[big][0], in = sizes[big][1], m = sizes[big][2], ldx = in + 3 + 5 * (big == 2), ldy = out + 2 + 6 * (big == 2);
        nf4_parts parts = make_nf4(out, in);
        finch_weight w[2] = {nf4_weight(&parts, 0), nf4_weight(&parts, 1)};
        for (int with_beta = 0; with_beta < 2; with_beta++) {
            float beta = with_beta ? 0.5f : 0.0f;
            tensor x = random_tensor(t, (size_t)(m * ldx), 1.0f), dy = random_tensor(t, (size_t)(m * ldy), 1.0f);
            tensor y = with_beta ? random_tensor(t, (size_t)(m * ldy), 1.0f) : poisoned(t, (size_t)(m * ldy));
            tensor dx = with_beta ? random_tensor(t, (size_t)(m * ldx), 1.0f) : poisoned(t, (size_t)(m * ldx));
            BOTH("qmatmul_forward", sd->api->qmatmul_forward(sd->dev, NULL, &w[s], out, in, m, t, D(x, s), ldx, D(y, s),
                                                             ldy, beta));
            BOTH("qmatmul_backward", sd->api->qmatmul_backward(sd->dev, NULL, &w[s], out, in, m, t, D(dy, s), ldy, D(dx, s),
                                                               ldx, beta));
            snprintf(what, sizeof what, "nf4 [%lld, %lld] %s m %lld beta %g%s", (long long)out, (long long)in,
                     dtype_name(t), (long long)m, beta, sliced ? " (small slices)" : "");
            compare_rows("qmatmul_forward", what, y, 1, m, out, ldy, 0, tol_for(t));
            compare_rows("qmatmul_backward", what, dx, 1, m, in, ldx, 0, tol_for(t));
        }
        release_all();
        }
    }
    }
    plugin_env("FINCH_CUDA_NF4_SLICE_ELEMS", NULL);
}

/* One product C = 0.5 A W^T + beta C of m rows through gemm, compared with the CPU. lda_pad pads A's
 * rows to a multiple of 8 elements (16-byte aligned for 16-bit types); `layout` names the GEMV layout. */
static void gemv_case(finch_dtype wt, finch_dtype at, finch_dtype ct, int64_t m, int64_t n, int64_t k, int lda_pad, float beta,
                      const char *layout)
{
    char what[128];
    finch_gemm_desc d[2];
    memset(&d[0], 0, sizeof d[0]);
    d[0].trans_b = 1;
    d[0].m = m;
    d[0].n = n;
    d[0].k = k;
    d[0].a_type = at;
    d[0].b_type = wt;
    d[0].c_type = ct;
    d[0].batch = 1;
    d[0].lda = lda_pad ? (k + 7) / 8 * 8 : k;
    d[0].ldb = (k + 7) / 8 * 8;
    d[0].ldc = n + 1;
    d[0].alpha = 0.5f;
    d[0].beta = beta;
    tensor a = random_tensor(at, (size_t)(m * d[0].lda), 1.0f);
    tensor b = random_tensor(wt, (size_t)(n * d[0].ldb), 1.0f);
    size_t nc = (size_t)(m * d[0].ldc);
    tensor c = beta != 0.0f ? random_tensor(ct, nc, 1.0f) : poisoned(ct, nc);
    gemm_both(d, a, b, c);
    snprintf(what, sizeof what, "gemv m %lld n %lld k %lld: A %s (lda %lld) W %s C %s beta %g split %s", (long long)m,
             (long long)n, (long long)k, dtype_name(at), (long long)d[0].lda, dtype_name(wt), dtype_name(ct), beta, layout);
    finch_dtype coarse = at == FINCH_DTYPE_BF16 || wt == FINCH_DTYPE_BF16 ? FINCH_DTYPE_BF16
                       : at == FINCH_DTYPE_F16 || wt == FINCH_DTYPE_F16 ? FINCH_DTYPE_F16
                       : ct;
    compare_rows("gemm", what, c, 1, m, n, d[0].ldc, 0, tol_for(ct == FINCH_DTYPE_F32 ? coarse : ct));
}

/* y = x W^T (+ beta y) of m rows with an NF4 W [out, in] of the given blocksize, through qmatmul_forward. */
static void gemv_nf4_case(finch_dtype t, int64_t m, int64_t out, int64_t in, int64_t ldx, int64_t blocksize, float beta,
                          const char *layout)
{
    char what[128];
    int64_t ldy = out + 2;
    nf4_parts parts = make_nf4(out, in); /* absmax for blocks of 64: enough for any larger blocksize */
    finch_weight w[2] = {nf4_weight(&parts, 0), nf4_weight(&parts, 1)};
    w[0].blocksize = w[1].blocksize = blocksize;
    tensor x = random_tensor(t, (size_t)(m * ldx), 1.0f);
    tensor y = beta != 0.0f ? random_tensor(t, (size_t)(m * ldy), 1.0f) : poisoned(t, (size_t)(m * ldy));
    BOTH("qmatmul_forward", sd->api->qmatmul_forward(sd->dev, NULL, &w[s], out, in, m, t, D(x, s), ldx, D(y, s), ldy, beta));
    snprintf(what, sizeof what, "gemv nf4 [%lld, %lld] blocks of %lld, %s m %lld ldx %lld beta %g split %s", (long long)out,
             (long long)in, (long long)blocksize, dtype_name(t), (long long)m, (long long)ldx, beta, layout);
    compare_rows("qmatmul_forward", what, y, 1, m, out, ldy, 0, tol_for(t));
}

/* Products of a few activation rows with a weight, the shape of decoding (1 <= m <= 8, A W^T): GPU
 * plugins run their GEMV kernels here. Dense W of every type with A of every type, rows of W padded
 * to 16 bytes, k not a multiple of the vector width (a scalar tail), A rows aligned and not, beta 0
 * and not; NF4 W (an odd number of rows, blocks of 64 straddling rows of 160, and blocks of 96)
 * through qmatmul_forward. Each also with the CUDA plugin's layout forced (it reads these per call):
 * k split over 1, 2 and 8 warps a row (FINCH_CUDA_GEMV_SPLIT), and whole rows on a grid of 1 or 3
 * blocks, so that every warp loops over several rows (FINCH_CUDA_GEMV_BLOCKS); then shapes with rows
 * enough for the plugin to split k by itself. */
static void test_gemv(void)
{
    static const finch_dtype types[3] = {FINCH_DTYPE_F32, FINCH_DTYPE_BF16, FINCH_DTYPE_F16};
    static const int64_t ms[4] = {1, 3, 5, 8};
    static const char *layouts[6][2] = {{NULL, NULL}, {"1", NULL}, {"2", NULL}, {"8", NULL}, {"1", "1"}, {"1", "3"}};
    char what[24];
    for (int li = 0; li < 6; li++) {
        const char *split = layouts[li][0], *blocks = layouts[li][1];
        plugin_env("FINCH_CUDA_GEMV_SPLIT", split);
        plugin_env("FINCH_CUDA_GEMV_BLOCKS", blocks);
        snprintf(what, sizeof what, "%s%s%s", split ? split : "auto", blocks ? " blocks " : "", blocks ? blocks : "");
        for (int wi = 0; wi < 3; wi++) {
            for (int ai = 0; ai < 3; ai++) {
                for (int mi = 0; mi < 4; mi++)
                    gemv_case(types[wi], types[ai], mi & 1 ? FINCH_DTYPE_F32 : types[ai], ms[mi], 37 + 64 * (mi & 1),
                              mi < 2 ? 203 : 1024 + 5, !(mi & 2), mi == 2 ? 0.25f : 0.0f, what);
                release_all();
            }
        }
        for (int ai = 0; ai < 3; ai++) {
            for (int mi = 0; mi < 4; mi++) {
                int64_t in = 160 + 96 * (mi & 1);
                gemv_nf4_case(types[ai], ms[mi], 41, in, mi & 2 ? in + 1 : in, mi < 2 ? 64 : 96, mi == 1 ? 0.5f : 0.0f,
                              what);
                release_all();
            }
        }
    }
    plugin_env("FINCH_CUDA_GEMV_SPLIT", NULL);
    plugin_env("FINCH_CUDA_GEMV_BLOCKS", NULL);
    for (int mi = 0; mi < 4; mi += 2) {
        gemv_case(FINCH_DTYPE_BF16, FINCH_DTYPE_BF16, FINCH_DTYPE_BF16, ms[mi], 1000, 2056, 1, 0.0f, "auto");
        gemv_case(FINCH_DTYPE_BF16, FINCH_DTYPE_F32, FINCH_DTYPE_F32, ms[mi], 997, 4100, 1, 0.5f, "auto");
        gemv_nf4_case(FINCH_DTYPE_BF16, ms[mi], 1001, 2048, 2048, 64, 0.0f, "auto");
        release_all();
    }
}

typedef struct linear_case {
    const char *name;
    finch_dtype act, param, wtype;   /* wtype NF4 or a dense type */
    int64_t m, in, out, rank;
    int bias, save_xa, want_dw, dx_accumulate;
    float dropout;
    int words;                       /* rows of y and dy padded to 16 bytes, not by 3 elements */
} linear_case;

static void test_linear(void)
{
    static const linear_case cases[] = {
        {"f32 dense, bias, r5, dropout, dw", FINCH_DTYPE_F32, FINCH_DTYPE_F32, FINCH_DTYPE_F32, 37, 67, 53, 5, 1, 1, 1, 1, 0.1f, 0},
        {"bf16 dense, bias, r4, xa recomputed", FINCH_DTYPE_BF16, FINCH_DTYPE_BF16, FINCH_DTYPE_BF16, 29, 64, 48, 4, 1, 0, 0, 0, 0.0f, 0},
        {"f32 nf4, r3, dropout", FINCH_DTYPE_F32, FINCH_DTYPE_F32, FINCH_DTYPE_NF4, 23, 47, 33, 3, 0, 1, 0, 1, 0.2f, 0},
        {"bf16 nf4, bias, no adapter", FINCH_DTYPE_BF16, FINCH_DTYPE_BF16, FINCH_DTYPE_NF4, 17, 40, 24, 0, 1, 0, 0, 0, 0.0f, 0},
        {"f16 dense, f32 params, r8", FINCH_DTYPE_F16, FINCH_DTYPE_F32, FINCH_DTYPE_F16, 31, 72, 40, 8, 0, 1, 0, 0, 0.0f, 0},
        {"bf16 nf4, r16, m 150", FINCH_DTYPE_BF16, FINCH_DTYPE_BF16, FINCH_DTYPE_NF4, 150, 136, 200, 16, 0, 1, 0, 1, 0.0f, 0},
        {"bf16 dense, r16, dropout, m 130", FINCH_DTYPE_BF16, FINCH_DTYPE_BF16, FINCH_DTYPE_BF16, 130, 96, 160, 16, 1, 1, 1, 0, 0.05f, 0},
        {"f32 nf4, r7, m 70", FINCH_DTYPE_F32, FINCH_DTYPE_F32, FINCH_DTYPE_NF4, 70, 81, 65, 7, 1, 0, 0, 0, 0.0f, 0},
        /* The trainer's configuration: bf16 activations and weights, f32 adapter (and bias). */
        {"bf16 dense, f32 params, r16, m 70", FINCH_DTYPE_BF16, FINCH_DTYPE_F32, FINCH_DTYPE_BF16, 70, 96, 136, 16, 0, 1, 0, 1, 0.0f, 0},
        {"bf16 dense, f32 params, bias, r8, dropout", FINCH_DTYPE_BF16, FINCH_DTYPE_F32, FINCH_DTYPE_BF16, 45, 64, 80, 8, 1, 0, 1, 0, 0.1f, 0},
        {"bf16 nf4 decode, bias, r4, m 1", FINCH_DTYPE_BF16, FINCH_DTYPE_F32, FINCH_DTYPE_NF4, 1, 192, 43, 4, 1, 1, 0, 0, 0.0f, 0},
        {"bf16 dense decode, r8, m 3", FINCH_DTYPE_BF16, FINCH_DTYPE_F32, FINCH_DTYPE_BF16, 3, 136, 57, 8, 0, 0, 0, 0, 0.0f, 0},
        /* y and dy in 16-byte rows, xa saved, ranks 16..64, sizes off any 64-multiple: the layout
         * the trainer gives (the cases above pad rows by 3 elements) */
        {"bf16 dense, f32 params, r16, m 600, words", FINCH_DTYPE_BF16, FINCH_DTYPE_F32, FINCH_DTYPE_BF16, 600, 72, 1000, 16, 0, 1, 0, 0, 0.0f, 1},
        {"f16 dense, f16 params, r32, m 130, words", FINCH_DTYPE_F16, FINCH_DTYPE_F16, FINCH_DTYPE_F16, 130, 40, 136, 32, 1, 1, 0, 1, 0.0f, 1},
        {"bf16 dense, f32 params, r48, m 257, words", FINCH_DTYPE_BF16, FINCH_DTYPE_F32, FINCH_DTYPE_BF16, 257, 24, 520, 48, 0, 1, 0, 1, 0.0f, 1},
        {"bf16 nf4, f32 params, r64, m 100, words", FINCH_DTYPE_BF16, FINCH_DTYPE_F32, FINCH_DTYPE_NF4, 100, 64, 64, 64, 0, 1, 0, 0, 0.0f, 1},
    };
    char what[96];
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        const linear_case *c = &cases[ci];
        int64_t ldx = c->in + 1, ldy = c->words ? c->out + 8 : c->out + 3;
        int nf4 = c->wtype == FINCH_DTYPE_NF4;
        tensor x = random_tensor(c->act, (size_t)(c->m * ldx), 1.0f), y = poisoned(c->act, (size_t)(c->m * ldy));
        nf4_parts parts = {absent, absent, absent};
        tensor wd = absent;
        if (nf4) parts = make_nf4(c->out, c->in);
        else wd = random_tensor(c->wtype, (size_t)(c->out * c->in), 0.2f);
        tensor bias = c->bias ? random_tensor(c->param, (size_t)c->out, 1.0f) : absent;
        tensor la = c->rank ? random_tensor(c->param, (size_t)(c->rank * c->in), 0.3f) : absent;
        tensor lb = c->rank ? random_tensor(c->param, (size_t)(c->out * c->rank), 0.3f) : absent;
        tensor xa = c->rank && c->save_xa ? poisoned(FINCH_DTYPE_F32, (size_t)(c->m * c->rank)) : absent;
        tensor dy = random_tensor(c->act, (size_t)(c->m * ldy), 1.0f);
        tensor dx = c->dx_accumulate ? random_tensor(c->act, (size_t)(c->m * ldx), 1.0f) : poisoned(c->act, (size_t)(c->m * ldx));
        tensor dw = c->want_dw ? random_tensor(FINCH_DTYPE_F32, (size_t)(c->out * c->in), 1.0f) : absent;
        tensor dbias = c->bias ? random_tensor(FINCH_DTYPE_F32, (size_t)c->out, 1.0f) : absent;
        tensor da = c->rank ? random_tensor(FINCH_DTYPE_F32, (size_t)(c->rank * c->in), 1.0f) : absent;
        tensor db = c->rank ? random_tensor(FINCH_DTYPE_F32, (size_t)(c->out * c->rank), 1.0f) : absent;
        finch_linear_desc d[2];
        for (int s = 0; s < 2; s++) {
            memset(&d[s], 0, sizeof d[s]);
            d[s].m = c->m;
            d[s].in_features = c->in;
            d[s].out_features = c->out;
            d[s].rank = c->rank;
            d[s].act_type = c->act;
            d[s].x = D(x, s);
            d[s].ldx = ldx;
            d[s].y = D(y, s);
            d[s].ldy = ldy;
            d[s].w = nf4 ? nf4_weight(&parts, s) : dense_weight(wd, s);
            d[s].param_type = c->param;
            d[s].bias = D(bias, s);
            d[s].lora_a = D(la, s);
            d[s].lora_b = D(lb, s);
            d[s].scale = 2.0f;
            d[s].dropout = c->dropout;
            d[s].dropout_seed = 0x1234567ull;
            d[s].xa = D(xa, s);
            d[s].dy = D(dy, s);
            d[s].lddy = ldy;
            d[s].dx = D(dx, s);
            d[s].lddx = ldx;
            d[s].dx_accumulate = c->dx_accumulate;
            d[s].dw = D(dw, s);
            d[s].dbias = D(dbias, s);
            d[s].da = D(da, s);
            d[s].db = D(db, s);
        }
        BOTH("linear_forward", sd->api->linear_forward(sd->dev, NULL, &d[s]));
        BOTH("linear_backward", sd->api->linear_backward(sd->dev, NULL, &d[s]));
        double tol = tol_for(c->act);
        snprintf(what, sizeof what, "%s: y", c->name);
        compare_rows("linear_forward", what, y, 1, c->m, c->out, ldy, 0, tol);
        if (xa.n) { snprintf(what, sizeof what, "%s: xa", c->name); compare("linear_forward", what, xa, tol); }
        snprintf(what, sizeof what, "%s: dx", c->name);
        compare_rows("linear_backward", what, dx, 1, c->m, c->in, ldx, 0, tol);
        if (dw.n) { snprintf(what, sizeof what, "%s: dw", c->name); compare("linear_backward", what, dw, tol); }
        if (dbias.n) { snprintf(what, sizeof what, "%s: dbias", c->name); compare("linear_backward", what, dbias, tol); }
        if (da.n) { snprintf(what, sizeof what, "%s: da", c->name); compare("linear_backward", what, da, tol); }
        if (db.n) { snprintf(what, sizeof what, "%s: db", c->name); compare("linear_backward", what, db, tol); }
        release_all();
    }
}

/* linear_forward_group (ABI 1.5): linears of one input in one call, against the CPU's, each linear's y
 * a column range of one output (rows padded) and its xa. Decode-sized m (GPU plugins stream every
 * weight as one product) with odd row counts per linear, NF4 with rows straddling blocks and row pairs
 * straddling linears, a bias and an adapter on some, the CUDA plugin's layouts forced (k split over 8
 * warps; a grid of one block looping over every row), more linears than one product takes, and a
 * training-sized m; descriptors that do not share their input are refused on both sides. */
typedef struct group_case {
    const char *name, *split, *blocks;
    finch_dtype act, wtype;
    int64_t m, in;
    int count;
    int64_t out[6];
    int rank_of, bias_of;                /* which linear has an adapter / a bias (-1: none) */
} group_case;

static void test_linear_group(void)
{
    if (!sides[1].api->linear_forward_group) {
        printf("%-30s %s has no linear_forward_group (ABI < 1.5): skipped\n", "linear_forward_group", sides[1].name);
        return;
    }
    static const group_case cases[] = {
        {"bf16 q/k/v m 1", NULL, NULL, FINCH_DTYPE_BF16, FINCH_DTYPE_BF16, 1, 136, 3, {45, 16, 21}, 1, 2},
        {"bf16 gate/up m 3, f32 act", NULL, NULL, FINCH_DTYPE_F32, FINCH_DTYPE_BF16, 3, 2056, 2, {1000, 1000}, -1, -1},
        {"f16 4 linears m 8, split 8", "8", NULL, FINCH_DTYPE_F16, FINCH_DTYPE_F16, 8, 264, 4, {7, 33, 1, 20}, 3, 0},
        {"bf16 3 linears m 2, one block", "1", "1", FINCH_DTYPE_BF16, FINCH_DTYPE_BF16, 2, 72, 3, {19, 40, 5}, 0, -1},
        {"bf16 nf4 q/k/v m 1", NULL, NULL, FINCH_DTYPE_BF16, FINCH_DTYPE_NF4, 1, 192, 3, {43, 17, 17}, 2, 1},
        {"f32 nf4 m 5, split 2", "2", NULL, FINCH_DTYPE_F32, FINCH_DTYPE_NF4, 5, 160, 2, {41, 1001}, -1, -1},
        {"bf16 6 linears m 1", NULL, NULL, FINCH_DTYPE_BF16, FINCH_DTYPE_BF16, 1, 64, 6, {9, 8, 7, 6, 5, 4}, 4, 5},
        {"bf16 m 37 (not a decode shape)", NULL, NULL, FINCH_DTYPE_BF16, FINCH_DTYPE_BF16, 37, 96, 3, {32, 16, 16}, 0, 2},
    };
    char what[128];
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        const group_case *c = &cases[ci];
        int nf4 = c->wtype == FINCH_DTYPE_NF4;
        if (c->split) plugin_env("FINCH_CUDA_GEMV_SPLIT", c->split);
        if (c->blocks) plugin_env("FINCH_CUDA_GEMV_BLOCKS", c->blocks);
        int64_t width = 0;
        for (int i = 0; i < c->count; i++) width += c->out[i];
        int64_t ldx = c->in + 8, ldy = width + 2, rank = 4;
        tensor x = random_tensor(c->act, (size_t)(c->m * ldx), 1.0f), y = poisoned(c->act, (size_t)(c->m * ldy));
        tensor wd[6], bias = absent, la = absent, lb = absent, xa = absent;
        nf4_parts parts[6];
        finch_linear_desc d[2][6];
        for (int i = 0, c0 = 0; i < c->count; c0 += (int)c->out[i], i++) {
            if (nf4) parts[i] = make_nf4(c->out[i], c->in);
            else wd[i] = random_tensor(c->wtype, (size_t)(c->out[i] * c->in), 0.2f);
            if (i == c->bias_of) bias = random_tensor(FINCH_DTYPE_F32, (size_t)c->out[i], 1.0f);
            if (i == c->rank_of) {
                la = random_tensor(FINCH_DTYPE_F32, (size_t)(rank * c->in), 0.3f);
                lb = random_tensor(FINCH_DTYPE_F32, (size_t)(c->out[i] * rank), 0.3f);
                xa = poisoned(FINCH_DTYPE_F32, (size_t)(c->m * rank));
            }
            for (int s = 0; s < 2; s++) {
                finch_linear_desc *e = &d[s][i];
                memset(e, 0, sizeof *e);
                e->m = c->m;
                e->in_features = c->in;
                e->out_features = c->out[i];
                e->act_type = c->act;
                e->x = D(x, s);
                e->ldx = ldx;
                e->y = D(offset_view(y, (size_t)c0), s);
                e->ldy = ldy;
                e->w = nf4 ? nf4_weight(&parts[i], s) : dense_weight(wd[i], s);
                e->param_type = FINCH_DTYPE_F32;
                if (i == c->bias_of) e->bias = D(bias, s);
                if (i == c->rank_of) {
                    e->rank = rank;
                    e->lora_a = D(la, s);
                    e->lora_b = D(lb, s);
                    e->scale = 2.0f;
                    e->xa = D(xa, s);
                }
            }
        }
        BOTH("linear_forward_group", sd->api->linear_forward_group(sd->dev, NULL, d[s], c->count));
        plugin_env("FINCH_CUDA_GEMV_SPLIT", NULL);
        plugin_env("FINCH_CUDA_GEMV_BLOCKS", NULL);
        snprintf(what, sizeof what, "%s: y", c->name);
        compare_rows("linear_forward_group", what, y, 1, c->m, width, ldy, 0, tol_for(c->act));
        if (xa.n) {
            snprintf(what, sizeof what, "%s: xa", c->name);
            compare("linear_forward_group", what, xa, tol_for(c->act));
        }
        if (ci == 0) { /* the last linear reading another x is refused */
            tensor x2 = random_tensor(c->act, (size_t)(c->m * ldx), 1.0f);
            for (int s = 0; s < 2; s++) d[s][c->count - 1].x = D(x2, s);
            BOTH_EXPECT("linear_forward_group", FINCH_ERR_INVALID_ARGUMENT,
                        sd->api->linear_forward_group(sd->dev, NULL, d[s], c->count));
        }
        release_all();
    }
}

/* ---- attention ---------------------------------------------------------------------------------- */
/* attention_forward/backward cases leave kv_lens zero: each sequence's keys are its queries' rows. */
typedef struct attention_case {
    finch_dtype t;
    int64_t heads, kv_heads, head_dim;
    int n_seqs;
    int32_t q_lens[3], kv_lens[3];
    int causal;
    int64_t window;
    float softcap;
    int dense_v;    /* v's rows packed (16-byte aligned: the tensor-core kernels' cp.async path), else padded by 4 */
} attention_case;

/* The inputs and outputs both attention tests share, with padded row strides. A cache case's
 * sequences sit apart in the key/value rows, with room between them. */
typedef struct attention_inputs {
    int64_t n, rows, max_q, max_kv, ldq, ldk, ldv, ldo;
    tensor cu, kv_start, kv_len, q, k, v, o, lse;
} attention_inputs;

static attention_inputs attention_setup(const attention_case *c, int cache)
{
    attention_inputs in = {0};
    int32_t cu[4] = {0}, kv_start[3], kv_len[3];
    in.rows = cache ? 3 : 0;
    for (int i = 0; i < c->n_seqs; i++) {
        cu[i + 1] = cu[i] + c->q_lens[i];
        kv_start[i] = (int32_t)in.rows;
        kv_len[i] = cache ? c->kv_lens[i] : c->q_lens[i];
        in.rows += kv_len[i] + (cache ? 7 : 0);
        if (c->q_lens[i] > in.max_q) in.max_q = c->q_lens[i];
        if (kv_len[i] > in.max_kv) in.max_kv = kv_len[i];
    }
    int64_t hd = c->head_dim;
    in.n = cu[c->n_seqs];
    in.ldq = c->heads * hd + 8, in.ldk = c->kv_heads * hd, in.ldv = c->kv_heads * hd + (c->dense_v ? 0 : 4), in.ldo = c->heads * hd;
    in.cu = from_ints(cu, (size_t)c->n_seqs + 1);
    if (cache) in.kv_start = from_ints(kv_start, (size_t)c->n_seqs), in.kv_len = from_ints(kv_len, (size_t)c->n_seqs);
    in.q = random_tensor(c->t, (size_t)(in.n * in.ldq), 1.0f), in.k = random_tensor(c->t, (size_t)(in.rows * in.ldk), 1.0f);
    in.v = random_tensor(c->t, (size_t)(in.rows * in.ldv), 1.0f), in.o = poisoned(c->t, (size_t)(in.n * in.ldo));
    in.lse = poisoned(FINCH_DTYPE_F32, (size_t)(c->heads * in.n));
    return in;
}

/* The fields finch_attention_desc and finch_attention_cache_desc share, for side s. */
#define SET_ATTENTION_FIELDS(d, c, in, s)                                                                \
    do {                                                                                                 \
        memset(&(d), 0, sizeof(d));                                                                      \
        (d).n_tokens = (in).n, (d).n_seqs = (c)->n_seqs;                                                 \
        (d).n_heads = (c)->heads, (d).n_kv_heads = (c)->kv_heads, (d).head_dim = (c)->head_dim;          \
        (d).dtype = (c)->t;                                                                              \
        (d).q = D((in).q, s), (d).ldq = (in).ldq, (d).k = D((in).k, s), (d).ldk = (in).ldk;              \
        (d).v = D((in).v, s), (d).ldv = (in).ldv, (d).o = D((in).o, s), (d).ldo = (in).ldo;              \
        (d).lse = D((in).lse, s);                                                                        \
        (d).scale = 1.0f / sqrtf((float)(c)->head_dim);                                                  \
        (d).softcap = (c)->softcap, (d).causal = (c)->causal, (d).window = (c)->window;                  \
    } while (0)

static void attention_name(const attention_case *c, int cache, char *what, size_t size)
{
    char lens[32] = "";
    if (cache) snprintf(lens, sizeof lens, " q %d kv %d", c->q_lens[0], c->kv_lens[0]);
    snprintf(what, size, "%s h%lld/%lld d%lld seqs %d%s%s w%lld cap %g", dtype_name(c->t), (long long)c->heads,
             (long long)c->kv_heads, (long long)c->head_dim, c->n_seqs, lens, c->causal ? " causal" : "",
             (long long)c->window, c->softcap);
}

static void test_attention(void)
{
    static const attention_case cases[] = {
        {FINCH_DTYPE_F32, 4, 2, 16, 3, {5, 17, 9}, {0}, 1, 0, 0.0f, 0},
        {FINCH_DTYPE_F32, 3, 1, 80, 2, {13, 4}, {0}, 1, 5, 20.0f, 0},
        {FINCH_DTYPE_F32, 2, 2, 24, 2, {11, 30}, {0}, 0, 0, 0.0f, 0},
        {FINCH_DTYPE_F32, 2, 1, 16, 1, {19}, {0}, 0, 6, 0.0f, 0},
        {FINCH_DTYPE_BF16, 2, 2, 64, 1, {33}, {0}, 0, 0, 0.0f, 0},
        {FINCH_DTYPE_BF16, 4, 2, 128, 2, {21, 11}, {0}, 1, 0, 0.0f, 0},
        {FINCH_DTYPE_F16, 2, 1, 256, 1, {19}, {0}, 1, 7, 30.0f, 0},
        {FINCH_DTYPE_BF16, 8, 2, 64, 3, {150, 77, 96}, {0}, 1, 0, 0.0f, 0},
        {FINCH_DTYPE_F32, 2, 1, 32, 2, {130, 70}, {0}, 1, 40, 0.0f, 0},
        {FINCH_DTYPE_F16, 4, 4, 128, 2, {70, 45}, {0}, 1, 20, 25.0f, 0},
        {FINCH_DTYPE_BF16, 2, 1, 64, 1, {100}, {0}, 0, 30, 0.0f, 0},
        {FINCH_DTYPE_BF16, 6, 3, 128, 3, {64, 1, 129}, {0}, 0, 0, 10.0f, 0},
        /* several 128-row query tiles and 64-key tiles, every operand 16-byte aligned (prefetching) */
        {FINCH_DTYPE_BF16, 8, 2, 128, 2, {300, 157}, {0}, 1, 0, 0.0f, 1},
        {FINCH_DTYPE_F16, 4, 1, 64, 2, {200, 129}, {0}, 1, 70, 0.0f, 1},
        {FINCH_DTYPE_BF16, 2, 2, 128, 1, {260}, {0}, 0, 0, 15.0f, 1},
        {FINCH_DTYPE_F16, 4, 2, 64, 3, {1, 128, 191}, {0}, 0, 90, 0.0f, 1},
        /* the wgmma forward (sm_90a): f16 at head_dim 128 without a mask, bf16 at 64 with one, several
         * 128-key tiles and a partial last one */
        {FINCH_DTYPE_F16, 4, 2, 128, 2, {190, 300}, {0}, 0, 0, 0.0f, 1},
        {FINCH_DTYPE_BF16, 4, 4, 64, 2, {257, 40}, {0}, 1, 0, 0.0f, 1},
        /* the wgmma backward (sm_90a): d128 causal with a window shorter than a key tile, several key
         * tiles and query tiles past the window */
        {FINCH_DTYPE_BF16, 8, 2, 128, 2, {330, 140}, {0}, 1, 100, 0.0f, 1},
    };
    char what[160];
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        const attention_case *c = &cases[ci];
        attention_inputs in = attention_setup(c, 0);
        int64_t n = in.n;
        tensor dout = random_tensor(c->t, (size_t)(n * in.ldo), 1.0f);
        tensor dq = poisoned(c->t, (size_t)(n * in.ldq)), dk = poisoned(c->t, (size_t)(n * in.ldk));
        tensor dv = poisoned(c->t, (size_t)(n * in.ldv));
        finch_attention_desc d[2];
        for (int s = 0; s < 2; s++) {
            SET_ATTENTION_FIELDS(d[s], c, in, s);
            d[s].max_seqlen = in.max_q;
            d[s].cu_seqlens = D(in.cu, s);
            d[s].dout = D(dout, s), d[s].lddout = in.ldo;
            d[s].dq = D(dq, s), d[s].lddq = in.ldq;
            d[s].dk = D(dk, s), d[s].lddk = in.ldk;
            d[s].dv = D(dv, s), d[s].lddv = in.ldv;
        }
        BOTH("attention_forward", sd->api->attention_forward(sd->dev, NULL, &d[s]));
        BOTH("attention_backward", sd->api->attention_backward(sd->dev, NULL, &d[s]));
        attention_name(c, 0, what, sizeof what);
        double tol = tol_for(c->t);
        compare("attention_forward o", what, in.o, tol);
        compare("attention_forward lse", what, in.lse, tol);
        compare_rows("attention_backward dq", what, dq, 1, n, c->heads * c->head_dim, in.ldq, 0, tol);
        compare_rows("attention_backward dk", what, dk, 1, n, c->kv_heads * c->head_dim, in.ldk, 0, tol);
        compare_rows("attention_backward dv", what, dv, 1, n, c->kv_heads * c->head_dim, in.ldv, 0, tol);
        release_all();
    }
}

/* An optional entry the plugin under test lacks (past its table's size, or NULL): says so, skipped. */
#define OPTIONAL_ABSENT(field, label, since)                                                                 \
    ((sides[1].api->struct_size < offsetof(finch_plugin_api, field) + sizeof sides[1].api->field ||         \
      !sides[1].api->field) &&                                                                              \
     printf("%-30s %-52s %s\n", label, "absent (optional since ABI " since ")", "skipped") > 0)

/* ABI 1.1, optional: attention of query rows over a key/value cache with room to grow. */
static void test_attention_cache(void)
{
    if (OPTIONAL_ABSENT(attention_cache_forward, "attention_cache_forward", "1.1")) return;
    static const attention_case cases[] = {
        {FINCH_DTYPE_F32, 4, 2, 16, 3, {1, 1, 1}, {5, 17, 1}, 1, 0, 0.0f, 0},          /* decode */
        {FINCH_DTYPE_F32, 3, 1, 80, 2, {7, 2}, {13, 40}, 1, 5, 20.0f, 0},              /* chunked prefill, window, cap */
        {FINCH_DTYPE_BF16, 4, 2, 64, 2, {1, 1}, {150, 77}, 1, 0, 0.0f, 0},
        {FINCH_DTYPE_BF16, 8, 2, 128, 3, {70, 1, 9}, {70, 200, 99}, 1, 0, 0.0f, 0},
        {FINCH_DTYPE_F16, 4, 4, 128, 2, {3, 65}, {90, 130}, 1, 20, 25.0f, 0},
        {FINCH_DTYPE_F16, 2, 1, 256, 1, {5}, {37}, 1, 0, 0.0f, 0},
        {FINCH_DTYPE_BF16, 2, 1, 64, 1, {33}, {33}, 0, 0, 0.0f, 0},                    /* = attention_forward */
        {FINCH_DTYPE_BF16, 8, 2, 128, 2, {150, 64}, {300, 64}, 1, 0, 0.0f, 1},      /* prefill, 16-byte rows */
        {FINCH_DTYPE_F16, 4, 2, 64, 2, {129, 20}, {200, 90}, 1, 50, 0.0f, 1},
        /* decode (one query row per sequence): odd groups, windows, caps, long caches, no causality */
        {FINCH_DTYPE_BF16, 6, 2, 80, 3, {1, 1, 1}, {301, 2, 45}, 1, 33, 30.0f, 0},
        {FINCH_DTYPE_F16, 8, 8, 256, 2, {1, 1}, {1000, 129}, 1, 0, 0.0f, 0},
        {FINCH_DTYPE_F32, 3, 1, 96, 2, {1, 1}, {70, 5000}, 0, 0, 0.0f, 0},
        /* caches long enough that a decode block's chunk spans several tiles of 32 keys */
        {FINCH_DTYPE_BF16, 4, 1, 128, 2, {1, 1}, {20000, 9001}, 1, 3000, 0.0f, 0},
        {FINCH_DTYPE_F16, 6, 3, 64, 1, {1}, {12345}, 1, 0, 15.0f, 0},
    };
    char what[160];
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        const attention_case *c = &cases[ci];
        attention_inputs in = attention_setup(c, 1);
        finch_attention_cache_desc d[2];
        for (int s = 0; s < 2; s++) {
            SET_ATTENTION_FIELDS(d[s], c, in, s);
            d[s].max_q_len = in.max_q;
            d[s].max_kv_len = in.max_kv;
            d[s].cu_seqlens_q = D(in.cu, s);
            d[s].kv_start = D(in.kv_start, s);
            d[s].kv_len = D(in.kv_len, s);
            d[s].kv_rows = in.rows;
        }
        BOTH("attention_cache_forward", sd->api->attention_cache_forward(sd->dev, NULL, &d[s]));
        attention_name(c, 1, what, sizeof what);
        double tol = tol_for(c->t);
        compare("attention_cache_forward o", what, in.o, tol);
        compare("attention_cache_forward lse", what, in.lse, tol);
        release_all();
    }
}

/* ABI 1.6, optional: RoPE on q and the new keys, the new rows into the cache and attention over it,
 * in one call. Cases as attention_cache's, each sequence's q_len new tokens being the last of its
 * kv_len; displaced moves token 0's cache row: 1 into the gap after its sequence (attended by none),
 * 2 into sequence 1's keys (at kv_len[1] - 5: sequence 1 attends to it), 3 to row -1 (not written). */
typedef struct append_case {
    attention_case a;
    int64_t rot_dim;    /* 0: rope absent */
    int n_sections, sections[4];
    float factor;
    int displaced;
} append_case;

/* The layout of one call: new tokens' keys and values (row strides padded), their rows and
 * positions ([n_sections][n]), written on both sides. */
typedef struct append_inputs {
    attention_inputs in;
    int64_t ldkn, ldvn;
    tensor k_new, v_new, rows, pos, inv;
} append_inputs;

static void append_layout(const append_case *c, const attention_inputs *in, int32_t *rows, int32_t *pos)
{
    int32_t t = 0, start = 3; /* attention_setup's: 3 rows, then each sequence and 7 rows of gap */
    int n_sections = c->n_sections > 0 ? c->n_sections : 1;
    for (int i = 0; i < c->a.n_seqs; i++) {
        for (int32_t j = 0; j < c->a.q_lens[i]; j++, t++) {
            int32_t p = c->a.kv_lens[i] - c->a.q_lens[i] + j;
            rows[t] = start + p;
            for (int sct = 0; sct < n_sections; sct++) pos[sct * in->n + t] = p + 3 * sct;
        }
        start += c->a.kv_lens[i] + 7;
    }
    if (c->displaced == 1) rows[0] = 3 + c->a.kv_lens[0] + 2;
    if (c->displaced == 2) rows[0] = 3 + c->a.kv_lens[0] + 7 + c->a.kv_lens[1] - 5;
    if (c->displaced == 3) rows[0] = -1;
}

static append_inputs append_setup(const append_case *c)
{
    append_inputs x;
    memset(&x, 0, sizeof x);
    x.in = attention_setup(&c->a, 1);
    int64_t n = x.in.n, kvw = c->a.kv_heads * c->a.head_dim, half = c->rot_dim / 2;
    x.ldkn = kvw + 3, x.ldvn = kvw + 8;
    x.k_new = random_tensor(c->a.t, (size_t)(n * x.ldkn), 1.0f), x.v_new = random_tensor(c->a.t, (size_t)(n * x.ldvn), 1.0f);
    int32_t rows[64], pos[4 * 64];
    append_layout(c, &x.in, rows, pos);
    x.rows = from_ints(rows, (size_t)n);
    x.pos = from_ints(pos, (size_t)(n * (c->n_sections > 0 ? c->n_sections : 1)));
    float inv[128];
    for (int64_t i = 0; i < half; i++) inv[i] = powf(10000.0f, -2.0f * (float)i / (float)c->rot_dim);
    if (half) x.inv = from_floats(FINCH_DTYPE_F32, inv, (size_t)half);
    return x;
}

static finch_rope_desc append_rope(const append_case *c, const append_inputs *x, int s)
{
    finch_rope_desc r;
    memset(&r, 0, sizeof r);
    r.head_dim = c->a.head_dim, r.rot_dim = c->rot_dim;
    r.positions = D(x->pos, s), r.inv_freq = D(x->inv, s);
    r.n_sections = c->n_sections > 0 ? c->n_sections : 1;
    if (c->n_sections > 0) memcpy(r.sections, c->sections, sizeof r.sections);
    else r.sections[0] = (int)(c->rot_dim / 2);
    r.attn_factor = c->factor;
    return r;
}

static void append_compare(const append_case *c, const append_inputs *x, const char *when)
{
    char what[240], name[160];
    attention_name(&c->a, 1, name, sizeof name);
    double tol = tol_for(c->a.t);
    snprintf(what, sizeof what, "%s rot %lld/%d%s%s", name, (long long)c->rot_dim, c->n_sections,
             c->displaced ? " displaced" : "", when);
    compare("attention_cache_append o", what, x->in.o, tol);
    compare("attention_cache_append lse", what, x->in.lse, tol);
    compare("attention_cache_append k", what, x->in.k, tol);
    compare("attention_cache_append v", what, x->in.v, tol);
}

static void test_attention_cache_append(void)
{
    if (OPTIONAL_ABSENT(attention_cache_append_forward, "attention_cache_append", "1.6")) return;
    static const append_case cases[] = {
        /* decode: GQA, head_dim 128 and 64, odd sizes, partial rotary, M-RoPE, no rope, window, cap */
        {{FINCH_DTYPE_BF16, 8, 2, 128, 3, {1, 1, 1}, {1, 37, 300}, 1, 0, 0.0f, 0}, 128, 0, {0}, 1.0f, 0},
        {{FINCH_DTYPE_F16, 6, 3, 64, 2, {1, 1}, {20000, 9001}, 1, 3000, 0.0f, 0}, 64, 0, {0}, 1.0f, 0},
        {{FINCH_DTYPE_F32, 3, 1, 80, 2, {1, 1}, {70, 5}, 1, 0, 20.0f, 0}, 40, 0, {0}, 1.25f, 0},
        {{FINCH_DTYPE_BF16, 4, 4, 64, 1, {1}, {12345}, 1, 0, 15.0f, 1}, 64, 3, {8, 12, 12, 0}, 1.0f, 0},
        {{FINCH_DTYPE_F32, 2, 1, 24, 3, {1, 1, 1}, {5, 17, 2}, 1, 0, 0.0f, 0}, 0, 0, {0}, 1.0f, 0},
        {{FINCH_DTYPE_F16, 8, 8, 256, 2, {1, 1}, {1000, 129}, 1, 33, 0.0f, 0}, 256, 0, {0}, 0.9f, 0},
        {{FINCH_DTYPE_BF16, 6, 2, 96, 3, {1, 1, 1}, {2, 45, 1}, 1, 0, 30.0f, 0}, 64, 0, {0}, 1.0f, 0},
        /* new rows elsewhere than at their sequence's end */
        {{FINCH_DTYPE_F16, 6, 2, 96, 2, {1, 1}, {40, 129}, 1, 0, 0.0f, 0}, 96, 0, {0}, 1.0f, 1},
        {{FINCH_DTYPE_BF16, 4, 2, 64, 3, {1, 1, 1}, {30, 200, 64}, 1, 0, 0.0f, 1}, 64, 0, {0}, 1.0f, 2},
        {{FINCH_DTYPE_BF16, 2, 1, 64, 2, {1, 1}, {33, 10}, 1, 0, 0.0f, 0}, 64, 0, {0}, 1.0f, 3},
        /* several new rows in a sequence (chunked prefill) */
        {{FINCH_DTYPE_BF16, 4, 2, 128, 2, {7, 1}, {50, 90}, 1, 0, 0.0f, 0}, 128, 0, {0}, 1.0f, 0},
        {{FINCH_DTYPE_F32, 3, 1, 32, 2, {5, 12}, {5, 40}, 1, 9, 0.0f, 0}, 16, 0, {0}, 1.0f, 0},
    };
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        const append_case *c = &cases[ci];
        append_inputs x = append_setup(c);
        finch_attention_cache_desc d[2];
        finch_rope_desc r[2];
        for (int s = 0; s < 2; s++) {
            SET_ATTENTION_FIELDS(d[s], &c->a, x.in, s);
            d[s].max_q_len = x.in.max_q;
            d[s].max_kv_len = x.in.max_kv;
            d[s].cu_seqlens_q = D(x.in.cu, s);
            d[s].kv_start = D(x.in.kv_start, s);
            d[s].kv_len = D(x.in.kv_len, s);
            d[s].kv_rows = x.in.rows;
            r[s] = append_rope(c, &x, s);
        }
        BOTH("attention_cache_append_forward",
             sd->api->attention_cache_append_forward(sd->dev, NULL, &d[s], c->rot_dim ? &r[s] : NULL, D(x.k_new, s), x.ldkn,
                                                     D(x.v_new, s), x.ldvn, D(x.rows, s)));
        append_compare(c, &x, "");
        release_all();
    }
}

/* The entry recorded once on a stream of the plugin and replayed with new queries, keys, values,
 * positions, cache lengths and rows (the cache's capacity fixed, as a recorded decode pass has it),
 * against the CPU running it directly each time. */
static void test_attention_cache_append_replay(void)
{
    const side *p = &sides[1];
    if (!p->api->attention_cache_append_forward || !p->api->capture_begin || !p->api->capture_end || !p->api->graph_launch ||
        !p->api->graph_free) {
        printf("%-30s %s does not record it: skipped\n", "attention_cache_append replay", p->name);
        return;
    }
    enum { CAP = 300 };
    /* kv_lens are the capacity: the recording's max_kv_len; rounds use less */
    append_case c = {{FINCH_DTYPE_BF16, 8, 2, 128, 2, {1, 1}, {CAP, CAP}, 1, 0, 0.0f, 0}, 128, 0, {0}, 1.0f, 0};
    append_inputs x = append_setup(&c);
    finch_attention_cache_desc d[2];
    finch_rope_desc r[2];
    for (int s = 0; s < 2; s++) {
        SET_ATTENTION_FIELDS(d[s], &c.a, x.in, s);
        d[s].max_q_len = 1, d[s].max_kv_len = CAP;
        d[s].cu_seqlens_q = D(x.in.cu, s), d[s].kv_start = D(x.in.kv_start, s), d[s].kv_len = D(x.in.kv_len, s);
        d[s].kv_rows = x.in.rows;
        r[s] = append_rope(&c, &x, s);
    }
    finch_plugin_stream *st = NULL;
    finch_plugin_graph *g = NULL;
    int rc = p->api->stream_create(p->dev, &st);
    CHECK(!rc, "stream_create on %s: %s", p->name, rc ? p->api->last_error() : "");
    /* once directly on both sides (the plugin's held scratch is made outside the recording), then recorded */
    for (int s = 0; !rc && s < 2; s++) {
        finch_plugin_stream *ss = s ? st : NULL;
        rc = sides[s].api->attention_cache_append_forward(sides[s].dev, ss, &d[s], &r[s], D(x.k_new, s), x.ldkn, D(x.v_new, s),
                                                          x.ldvn, D(x.rows, s));
        if (!rc) rc = sides[s].api->synchronize(sides[s].dev, ss);
        CHECK(!rc, "attention_cache_append_forward on %s: %s", sides[s].name, rc ? sides[s].api->last_error() : "");
    }
    if (!rc) rc = p->api->capture_begin(p->dev, st);
    if (!rc) {
        int r1 = p->api->attention_cache_append_forward(p->dev, st, &d[1], &r[1], D(x.k_new, 1), x.ldkn, D(x.v_new, 1), x.ldvn,
                                                        D(x.rows, 1));
        rc = p->api->capture_end(p->dev, st, &g);
        if (!rc) rc = r1;
    }
    CHECK(!rc && g, "recording attention_cache_append_forward on %s: %s", p->name, rc ? p->api->last_error() : "no graph");
    for (int round = 1; !rc && round <= 4; round++) {
        int32_t len[2] = {20 + 61 * round, CAP - 40 * round}, rows[2], pos[2];
        for (int i = 0; i < 2; i++) {
            rows[i] = 3 + i * (CAP + 7) + len[i] - 1;
            pos[i] = len[i] - 1 + 1000 * round;
        }
        write_both(x.in.kv_len, len, sizeof len);
        write_both(x.rows, rows, sizeof rows);
        write_both(x.pos, pos, sizeof pos);
        refill(x.in.q, 1.0f); /* new queries, keys and values: the last round's are scratch */
        refill(x.k_new, 1.0f);
        refill(x.v_new, 1.0f);
        rc = p->api->graph_launch(p->dev, st, g);
        if (!rc) rc = p->api->synchronize(p->dev, st);
        CHECK(!rc, "graph_launch on %s: %s", p->name, rc ? p->api->last_error() : "");
        rc = sides[0].api->attention_cache_append_forward(sides[0].dev, NULL, &d[0], &r[0], D(x.k_new, 0), x.ldkn, D(x.v_new, 0),
                                                          x.ldvn, D(x.rows, 0));
        CHECK(!rc, "attention_cache_append_forward on %s: %s", sides[0].name, rc ? sides[0].api->last_error() : "");
        char when[32];
        snprintf(when, sizeof when, " replay %d", round);
        if (!rc) append_compare(&c, &x, when);
    }
    if (g) p->api->graph_free(p->dev, g);
    if (st) p->api->stream_destroy(p->dev, st);
    release_all();
}

/* A decode layer's chain of entries recorded on the plugin (capture_begin .. capture_end) and
 * replayed with new tokens, positions and cache places, against the CPU running each entry directly:
 * rmsnorm, the fused q/k/v product, RoPE on q and k, both cache appends, decode attention (3
 * sequences, one query row each, GQA; the four in one attention_cache_append_forward where the plugin
 * has it), the o product (NF4), the residual add and rmsnorm (one
 * add_rmsnorm_forward where the plugin has it), the gate/up
 * product, GLU, down (NF4, blocks straddling rows), the residual, a softcap and the head (odd rows).
 * Each entry reads what the one before wrote, so on a plugin whose recorded kernels overlap (CUDA's
 * programmatic launches on sm_90) a kernel that reads its input before the previous one has
 * finished shows here. The chain runs once directly on the stream first, as a decode pass does. */
enum { CH_SEQS = 3, CH_H = 136, CH_HEADS = 2, CH_KV = 1, CH_D = 64, CH_CAP = 40, CH_FF = 96, CH_VOCAB = 37 };
typedef struct chain {
    tensor x, nw, rstd, h, qkv, cu, kv_start, kv_len, pos, inv, where_k, kc, vc, o, y2, x2, h2, gu, g, y4, x3, x4, logits;
    finch_weight w1[2], w2[2], w3[2], w4[2], w5[2];
} chain;

/* The chain on side s (stream st). Returns the first failing status. */
static int chain_run(const chain *c, int s, finch_plugin_stream *st)
{
    const side *sd = &sides[s];
    const finch_plugin_api *a = sd->api;
    const finch_dtype t = FINCH_DTYPE_BF16;
    int64_t nq = CH_HEADS * CH_D, nkv = CH_KV * CH_D, w = nq + 2 * nkv;
    int rc = a->rmsnorm_forward(sd->dev, st, CH_SEQS, CH_H, t, D(c->x, s), t, D(c->nw, s), 0.0f, 1e-5f, D(c->h, s), D(c->rstd, s));
    if (!rc) rc = a->qmatmul_forward(sd->dev, st, &c->w1[s], w, CH_H, CH_SEQS, t, D(c->h, s), CH_H, D(c->qkv, s), w, 0.0f);
    finch_rope_desc r;
    memset(&r, 0, sizeof r);
    r.n_tokens = CH_SEQS, r.n_heads = CH_HEADS, r.head_dim = CH_D, r.rot_dim = CH_D, r.dtype = t, r.x = D(c->qkv, s), r.ldx = w;
    r.positions = D(c->pos, s), r.inv_freq = D(c->inv, s), r.n_sections = 1, r.sections[0] = CH_D / 2, r.attn_factor = 1.0f;
    int fused = sides[1].api->attention_cache_append_forward != NULL; /* as a decode pass does where the plugin has it */
    if (!rc && !fused) rc = a->rope_forward(sd->dev, st, &r);
    r.n_heads = CH_KV, r.x = D(offset_view(c->qkv, (size_t)nq), s);
    if (!rc && !fused) rc = a->rope_forward(sd->dev, st, &r);
    if (!rc && !fused)
        rc = a->copy_rows(sd->dev, st, t, CH_SEQS, nkv, D(offset_view(c->qkv, (size_t)nq), s), w, D(c->where_k, s), D(c->kc, s), nkv);
    if (!rc && !fused)
        rc = a->copy_rows(sd->dev, st, t, CH_SEQS, nkv, D(offset_view(c->qkv, (size_t)(nq + nkv)), s), w, D(c->where_k, s), D(c->vc, s),
                          nkv);
    finch_attention_cache_desc d;
    memset(&d, 0, sizeof d);
    d.n_tokens = CH_SEQS, d.n_seqs = CH_SEQS, d.max_q_len = 1, d.max_kv_len = CH_CAP;
    d.cu_seqlens_q = D(c->cu, s), d.kv_start = D(c->kv_start, s), d.kv_len = D(c->kv_len, s), d.kv_rows = CH_SEQS * CH_CAP;
    d.n_heads = CH_HEADS, d.n_kv_heads = CH_KV, d.head_dim = CH_D, d.dtype = t;
    d.q = D(c->qkv, s), d.ldq = w, d.k = D(c->kc, s), d.ldk = nkv, d.v = D(c->vc, s), d.ldv = nkv, d.o = D(c->o, s), d.ldo = nq;
    d.scale = 1.0f / sqrtf((float)CH_D), d.causal = 1;
    if (!rc && fused)
        rc = a->attention_cache_append_forward(sd->dev, st, &d, &r, D(offset_view(c->qkv, (size_t)nq), s), w,
                                               D(offset_view(c->qkv, (size_t)(nq + nkv)), s), w, D(c->where_k, s));
    else if (!rc)
        rc = a->attention_cache_forward(sd->dev, st, &d);
    if (!rc) rc = a->qmatmul_forward(sd->dev, st, &c->w2[s], CH_H, nq, CH_SEQS, t, D(c->o, s), nq, D(c->y2, s), CH_H, 0.0f);
    if (sides[1].api->add_rmsnorm_forward) { /* as a decode pass does where the plugin has it */
        if (!rc) rc = a->add_rmsnorm_forward(sd->dev, st, CH_SEQS, CH_H, t, D(c->y2, s), D(c->x, s), D(c->x2, s), t, D(c->nw, s), 0.0f,
                                             1e-5f, D(c->h2, s), D(c->rstd, s));
    } else {
        if (!rc) rc = a->axpby(sd->dev, st, CH_SEQS * CH_H, t, 1.0f, D(c->y2, s), 1.0f, D(c->x, s), D(c->x2, s));
        if (!rc) rc = a->rmsnorm_forward(sd->dev, st, CH_SEQS, CH_H, t, D(c->x2, s), t, D(c->nw, s), 0.0f, 1e-5f, D(c->h2, s),
                                         D(c->rstd, s));
    }
    if (!rc) rc = a->qmatmul_forward(sd->dev, st, &c->w3[s], 2 * CH_FF, CH_H, CH_SEQS, t, D(c->h2, s), CH_H, D(c->gu, s), 2 * CH_FF, 0.0f);
    if (!rc) rc = a->glu_forward(sd->dev, st, FINCH_ACT_SILU, CH_SEQS, CH_FF, t, D(c->gu, s), 2 * CH_FF, D(offset_view(c->gu, CH_FF), s),
                                 2 * CH_FF, D(c->g, s));
    if (!rc) rc = a->qmatmul_forward(sd->dev, st, &c->w4[s], CH_H, CH_FF, CH_SEQS, t, D(c->g, s), CH_FF, D(c->y4, s), CH_H, 0.0f);
    if (!rc) rc = a->axpby(sd->dev, st, CH_SEQS * CH_H, t, 1.0f, D(c->y4, s), 1.0f, D(c->x2, s), D(c->x3, s));
    if (!rc) rc = a->activation_forward(sd->dev, st, FINCH_ACT_SOFTCAP, 3.0f, CH_SEQS * CH_H, t, D(c->x3, s), D(c->x4, s));
    if (!rc) rc = a->qmatmul_forward(sd->dev, st, &c->w5[s], CH_VOCAB, CH_H, CH_SEQS, t, D(c->x4, s), CH_H, D(c->logits, s), CH_VOCAB,
                                     0.0f);
    return rc;
}

/* New inputs of round `round` on both sides: tokens' rows x, positions, cache lengths and places. */
static void chain_inputs(const chain *c, int round)
{
    float xv[CH_SEQS * CH_H];
    unsigned char raw[sizeof xv];
    for (int i = 0; i < CH_SEQS * CH_H; i++) xv[i] = (float)((i * 7 + round * 13) % 31) * 0.125f - 1.9f;
    encode(FINCH_DTYPE_BF16, xv, CH_SEQS * CH_H, raw);
    write_both(c->x, raw, (size_t)CH_SEQS * CH_H * 2);
    int32_t len[CH_SEQS], where[CH_SEQS], pos[CH_SEQS];
    for (int i = 0; i < CH_SEQS; i++) {
        len[i] = 5 + 9 * i + round; /* 5..32: below CH_CAP */
        where[i] = i * CH_CAP + len[i] - 1;
        pos[i] = len[i] - 1;
    }
    write_both(c->kv_len, len, sizeof len);
    write_both(c->where_k, where, sizeof where);
    write_both(c->pos, pos, sizeof pos);
}

static void chain_compare(const chain *c, const char *when)
{
    char what[80];
    double tol = tol_for(FINCH_DTYPE_BF16);
    snprintf(what, sizeof what, "%s: key cache", when);
    compare("recorded decode chain", what, c->kc, tol);
    snprintf(what, sizeof what, "%s: attention output", when);
    compare("recorded decode chain", what, c->o, tol);
    snprintf(what, sizeof what, "%s: residual after the MLP", when);
    compare("recorded decode chain", what, c->x3, tol);
    snprintf(what, sizeof what, "%s: logits [3, 37]", when);
    compare("recorded decode chain", what, c->logits, tol);
}

static void test_recorded_decode_chain(void)
{
    const side *p = &sides[1];
    if (!p->api->capture_begin || !p->api->capture_end || !p->api->graph_launch || !p->api->graph_free || !p->api->copy_rows ||
        !p->api->attention_cache_forward) {
        printf("%-30s %s does not record: skipped\n", "recorded decode chain", p->name);
        return;
    }
    const finch_dtype t = FINCH_DTYPE_BF16;
    int64_t nq = CH_HEADS * CH_D, nkv = CH_KV * CH_D, w = nq + 2 * nkv;
    chain c;
    memset(&c, 0, sizeof c);
    c.x = random_tensor(t, CH_SEQS * CH_H, 1.0f), c.nw = positive_tensor(t, CH_H, 2.0f), c.rstd = poisoned(FINCH_DTYPE_F32, CH_SEQS);
    c.h = poisoned(t, CH_SEQS * CH_H), c.qkv = poisoned(t, (size_t)(CH_SEQS * w));
    c.cu = from_ints((const int32_t[]){0, 1, 2, 3}, 4), c.kv_start = from_ints((const int32_t[]){0, CH_CAP, 2 * CH_CAP}, 3);
    c.kv_len = from_ints((const int32_t[]){1, 1, 1}, 3), c.pos = from_ints((const int32_t[]){0, 0, 0}, 3);
    c.where_k = from_ints((const int32_t[]){0, 0, 0}, 3);
    float inv[CH_D / 2];
    for (int i = 0; i < CH_D / 2; i++) inv[i] = powf(10000.0f, -2.0f * (float)i / (float)CH_D);
    c.inv = from_floats(FINCH_DTYPE_F32, inv, CH_D / 2);
    c.kc = random_tensor(t, (size_t)(CH_SEQS * CH_CAP * nkv), 1.0f), c.vc = random_tensor(t, (size_t)(CH_SEQS * CH_CAP * nkv), 1.0f);
    c.o = poisoned(t, (size_t)(CH_SEQS * nq)), c.y2 = poisoned(t, CH_SEQS * CH_H), c.x2 = poisoned(t, CH_SEQS * CH_H);
    c.h2 = poisoned(t, CH_SEQS * CH_H), c.gu = poisoned(t, CH_SEQS * 2 * CH_FF), c.g = poisoned(t, CH_SEQS * CH_FF);
    c.y4 = poisoned(t, CH_SEQS * CH_H), c.x3 = poisoned(t, CH_SEQS * CH_H), c.x4 = poisoned(t, CH_SEQS * CH_H);
    c.logits = poisoned(t, CH_SEQS * CH_VOCAB);
    tensor w1 = random_tensor(t, (size_t)(w * CH_H), 0.1f), w3 = random_tensor(t, (size_t)(2 * CH_FF * CH_H), 0.1f);
    tensor w5 = random_tensor(t, (size_t)(CH_VOCAB * CH_H), 0.1f);
    nf4_parts n2 = make_nf4(CH_H, nq), n4 = make_nf4(CH_H, CH_FF);
    for (int s = 0; s < 2; s++) {
        c.w1[s] = dense_weight(w1, s), c.w3[s] = dense_weight(w3, s), c.w5[s] = dense_weight(w5, s);
        c.w2[s] = nf4_weight(&n2, s), c.w4[s] = nf4_weight(&n4, s);
        c.w2[s].blocksize = c.w4[s].blocksize = 64;
    }
    finch_plugin_stream *st = NULL;
    finch_plugin_graph *g = NULL;
    int rc = p->api->stream_create(p->dev, &st);
    CHECK(!rc, "stream_create on %s: %s", p->name, rc ? p->api->last_error() : "");
    chain_inputs(&c, 0);
    if (!rc) rc = chain_run(&c, 1, st);
    if (!rc) rc = p->api->synchronize(p->dev, st);
    CHECK(!rc, "the chain directly on %s: %s", p->name, rc ? p->api->last_error() : "");
    int rc0 = chain_run(&c, 0, NULL);
    CHECK(!rc0, "the chain on %s: %s", sides[0].name, rc0 ? sides[0].api->last_error() : "");
    if (!rc && !rc0) chain_compare(&c, "direct");
    if (!rc) rc = p->api->capture_begin(p->dev, st);
    if (!rc) {
        int r1 = chain_run(&c, 1, st);
        rc = p->api->capture_end(p->dev, st, &g);
        if (!rc) rc = r1;
    }
    CHECK(!rc && g, "recording the chain on %s: %s", p->name, rc ? p->api->last_error() : "no graph");
    char when[32];
    for (int round = 1; !rc && round <= 3; round++) {
        chain_inputs(&c, round);
        rc = p->api->graph_launch(p->dev, st, g);
        if (!rc) rc = p->api->synchronize(p->dev, st);
        CHECK(!rc, "graph_launch on %s: %s", p->name, rc ? p->api->last_error() : "");
        rc = chain_run(&c, 0, NULL);
        CHECK(!rc, "the chain on %s: %s", sides[0].name, rc ? sides[0].api->last_error() : "");
        snprintf(when, sizeof when, "replay %d", round);
        if (!rc) chain_compare(&c, when);
    }
    if (g) p->api->graph_free(p->dev, g);
    if (st) p->api->stream_destroy(p->dev, st);
    release_all();
}

/* ---- norms, rope, embedding --------------------------------------------------------------------- */
static void test_norms(void)
{
    static const struct { finch_dtype t, wt; float offset; int with_w; } cases[] = {
        {FINCH_DTYPE_F32, FINCH_DTYPE_F32, 0.0f, 1},
        {FINCH_DTYPE_BF16, FINCH_DTYPE_F32, 1.0f, 1},
        {FINCH_DTYPE_F16, FINCH_DTYPE_BF16, 0.0f, 1},
        {FINCH_DTYPE_BF16, FINCH_DTYPE_BF16, 0.0f, 0},
    };
    char what[64];
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        finch_dtype t = cases[ci].t, wt = cases[ci].wt;
        int64_t n = 13, dim = 67 + 64 * (int64_t)ci * (int64_t)ci;
        tensor x = random_tensor(t, (size_t)(n * dim), 2.0f), w = random_tensor(wt, (size_t)dim, 1.0f);
        tensor b = random_tensor(wt, (size_t)dim, 1.0f), y = poisoned(t, (size_t)(n * dim));
        tensor mean = poisoned(FINCH_DTYPE_F32, (size_t)n), rstd = poisoned(FINCH_DTYPE_F32, (size_t)n);
        tensor dy = random_tensor(t, (size_t)(n * dim), 1.0f), dx = random_tensor(t, (size_t)(n * dim), 1.0f);
        tensor dw = random_tensor(FINCH_DTYPE_F32, (size_t)dim, 1.0f), db = random_tensor(FINCH_DTYPE_F32, (size_t)dim, 1.0f);
        double tol = tol_for(t);
        int acc = (int)(ci % 2);
        if (cases[ci].with_w) {
            snprintf(what, sizeof what, "%s, w %s, offset %g, dim %lld", dtype_name(t), dtype_name(wt), cases[ci].offset,
                     (long long)dim);
            BOTH("rmsnorm_forward", sd->api->rmsnorm_forward(sd->dev, NULL, n, dim, t, D(x, s), wt, D(w, s),
                                                             cases[ci].offset, 1e-5f, D(y, s), D(rstd, s)));
            BOTH("rmsnorm_backward", sd->api->rmsnorm_backward(sd->dev, NULL, n, dim, t, D(x, s), wt, D(w, s),
                                                               cases[ci].offset, D(rstd, s), D(dy, s), D(dx, s), acc,
                                                               D(dw, s)));
            compare("rmsnorm_forward y", what, y, tol);
            compare("rmsnorm_forward rstd", what, rstd, tol);
            compare("rmsnorm_backward dx", what, dx, tol);
            compare("rmsnorm_backward dw", what, dw, tol);
        }
        tensor lw = cases[ci].with_w ? w : absent, lb = cases[ci].with_w ? b : absent;
        snprintf(what, sizeof what, "%s, w/b %s, dim %lld", dtype_name(t), cases[ci].with_w ? dtype_name(wt) : "absent",
                 (long long)dim);
        BOTH("layernorm_forward", sd->api->layernorm_forward(sd->dev, NULL, n, dim, t, D(x, s), wt, D(lw, s), D(lb, s),
                                                             1e-5f, D(y, s), D(mean, s), D(rstd, s)));
        BOTH("layernorm_backward", sd->api->layernorm_backward(sd->dev, NULL, n, dim, t, D(x, s), wt, D(lw, s),
                                                               D(mean, s), D(rstd, s), D(dy, s), D(dx, s), acc,
                                                               D(dw, s), D(db, s)));
        compare("layernorm_forward y", what, y, tol);
        compare("layernorm_forward mean", what, mean, tol);
        compare("layernorm_forward rstd", what, rstd, tol);
        compare("layernorm_backward dx", what, dx, tol);
        compare("layernorm_backward dw", what, dw, tol);
        compare("layernorm_backward db", what, db, tol);
        release_all();
    }
}

/* The residual add fused with RMSNorm: sum = x + d, then y and rstd of sum as stored. On each side
 * the fused entry must also equal that side's own axpby + rmsnorm_forward bit for bit (the ABI's
 * promise), with sum in its own buffer or over x or d, one long row (a decode step) included. */
static void test_add_rmsnorm(void)
{
    static const struct { finch_dtype t, wt; float offset; int64_t n, dim; int alias; } cases[] = {
        {FINCH_DTYPE_F32, FINCH_DTYPE_F32, 0.0f, 13, 67, 0},
        {FINCH_DTYPE_BF16, FINCH_DTYPE_F32, 1.0f, 13, 67, 1},
        {FINCH_DTYPE_F16, FINCH_DTYPE_BF16, 0.0f, 7, 515, 2},
        {FINCH_DTYPE_BF16, FINCH_DTYPE_BF16, 1.0f, 1, 2053, 1},
        {FINCH_DTYPE_F32, FINCH_DTYPE_F32, 0.0f, 3, 4096, 0},
        {FINCH_DTYPE_F16, FINCH_DTYPE_F16, 1.0f, 1, 2048, 2},
        {FINCH_DTYPE_BF16, FINCH_DTYPE_BF16, 0.0f, 257, 2051, 0},
    };
    static const char *const alias_names[3] = {"own sum", "sum over x", "sum over d"};
    if (!sides[1].api->add_rmsnorm_forward) {
        printf("%-30s %s does not have it: skipped\n", "add_rmsnorm_forward", sides[1].name);
        return;
    }
    char what[96];
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        finch_dtype t = cases[ci].t, wt = cases[ci].wt;
        int64_t n = cases[ci].n, dim = cases[ci].dim;
        size_t nd = (size_t)(n * dim);
        int alias = cases[ci].alias;
        float offset = cases[ci].offset;
        tensor w = random_tensor(wt, (size_t)dim, 1.0f);
        tensor out[2][3]; /* [fused, separate][sum, y, rstd] */
        unsigned long long seed = seed_counter;
        for (int k = 0; k < 2; k++) {
            seed_counter = seed; /* the same x and d for both */
            tensor x = random_tensor(t, nd, 2.0f), d = random_tensor(t, nd, 2.0f);
            tensor sum = alias == 1 ? x : alias == 2 ? d : poisoned(t, nd);
            tensor y = poisoned(t, nd), rstd = poisoned(FINCH_DTYPE_F32, (size_t)n);
            if (k == 0) {
                BOTH("add_rmsnorm_forward", sd->api->add_rmsnorm_forward(sd->dev, NULL, n, dim, t, D(x, s), D(d, s), D(sum, s), wt,
                                                                         D(w, s), offset, 1e-5f, D(y, s), D(rstd, s)));
            } else {
                BOTH("axpby", sd->api->axpby(sd->dev, NULL, (int64_t)nd, t, 1.0f, D(x, s), 1.0f, D(d, s), D(sum, s)));
                BOTH("rmsnorm_forward", sd->api->rmsnorm_forward(sd->dev, NULL, n, dim, t, D(sum, s), wt, D(w, s), offset, 1e-5f,
                                                                 D(y, s), D(rstd, s)));
            }
            out[k][0] = sum, out[k][1] = y, out[k][2] = rstd;
        }
        snprintf(what, sizeof what, "%s, w %s, offset %g, %lld x %lld, %s", dtype_name(t), dtype_name(wt), offset, (long long)n,
                 (long long)dim, alias_names[alias]);
        double tol = tol_for(t);
        compare("add_rmsnorm_forward sum", what, out[0][0], tol);
        compare("add_rmsnorm_forward y", what, out[0][1], tol);
        compare("add_rmsnorm_forward rstd", what, out[0][2], tol);
        static const char *const names[3] = {"sum", "y", "rstd"};
        for (int s = 0; s < 2; s++)
            for (int i = 0; i < 3; i++) {
                size_t bytes = out[0][i].n * dtype_size(out[0][i].t);
                unsigned char *fused = malloc(bytes), *separate = malloc(bytes);
                if (sides[s].api->read(sides[s].dev, NULL, out[0][i].p[s], fused, bytes)) fatal("read", s);
                if (sides[s].api->read(sides[s].dev, NULL, out[1][i].p[s], separate, bytes)) fatal("read", s);
                int same = memcmp(fused, separate, bytes) == 0;
                printf("%-30s %-52s %s %s: %s\n", "add_rmsnorm_forward = separate", what, sides[s].name, names[i], same ? "ok" : "FAIL");
                CHECK(same, "add_rmsnorm_forward %s on %s: %s differs from axpby + rmsnorm_forward", what, sides[s].name, names[i]);
                free(fused);
                free(separate);
            }
        release_all();
    }
}

static void test_rope(void)
{
    /* n tokens, rows padded by pad elements; from 64 tokens with rows and heads in whole 16-byte words
     * the plugin may take another kernel (many tokens a block), hence the last cases */
    static const struct { finch_dtype t; int64_t heads, head_dim, rot_dim; int n_sections; int sections[4]; float factor; int64_t n, pad; } cases[] = {
        {FINCH_DTYPE_F32, 3, 16, 16, 1, {8, 0, 0, 0}, 1.0f, 11, 5},
        {FINCH_DTYPE_BF16, 2, 24, 12, 1, {6, 0, 0, 0}, 1.25f, 11, 5},
        {FINCH_DTYPE_F32, 2, 32, 32, 3, {4, 6, 6, 0}, 1.0f, 11, 5},
        {FINCH_DTYPE_F16, 4, 64, 64, 1, {32, 0, 0, 0}, 0.9f, 11, 5},
        {FINCH_DTYPE_BF16, 5, 128, 128, 1, {64, 0, 0, 0}, 1.0f, 67, 0},
        {FINCH_DTYPE_F32, 3, 32, 32, 3, {4, 6, 6, 0}, 1.0f, 70, 4},
        {FINCH_DTYPE_F16, 2, 64, 32, 1, {16, 0, 0, 0}, 0.9f, 64, 8},
    };
    char what[80];
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        int64_t n = cases[ci].n, half = cases[ci].rot_dim / 2, ldx = cases[ci].heads * cases[ci].head_dim + cases[ci].pad;
        int32_t pos[3 * 70];
        for (int i = 0; i < cases[ci].n_sections * n; i++) pos[i] = (i * 37) % 101 + (i % 3) * 1000;
        float inv[64];
        for (int64_t i = 0; i < half; i++) inv[i] = powf(10000.0f, -2.0f * (float)i / (float)cases[ci].rot_dim);
        tensor pt = from_ints(pos, (size_t)(cases[ci].n_sections * n)), it = from_floats(FINCH_DTYPE_F32, inv, (size_t)half);
        tensor x = random_tensor(cases[ci].t, (size_t)(n * ldx), 1.0f), g = random_tensor(cases[ci].t, (size_t)(n * ldx), 1.0f);
        finch_rope_desc d[2], b[2];
        for (int s = 0; s < 2; s++) {
            memset(&d[s], 0, sizeof d[s]);
            d[s].n_tokens = n;
            d[s].n_heads = cases[ci].heads;
            d[s].head_dim = cases[ci].head_dim;
            d[s].rot_dim = cases[ci].rot_dim;
            d[s].dtype = cases[ci].t;
            d[s].x = D(x, s);
            d[s].ldx = ldx;
            d[s].positions = D(pt, s);
            d[s].inv_freq = D(it, s);
            d[s].n_sections = cases[ci].n_sections;
            memcpy(d[s].sections, cases[ci].sections, sizeof d[s].sections);
            d[s].attn_factor = cases[ci].factor;
            b[s] = d[s];
            b[s].x = D(g, s);
        }
        BOTH("rope_forward", sd->api->rope_forward(sd->dev, NULL, &d[s]));
        BOTH("rope_backward", sd->api->rope_backward(sd->dev, NULL, &b[s]));
        snprintf(what, sizeof what, "%s %lld tokens h%lld d%lld rot %lld sections %d", dtype_name(cases[ci].t), (long long)n,
                 (long long)cases[ci].heads, (long long)cases[ci].head_dim, (long long)cases[ci].rot_dim, cases[ci].n_sections);
        compare("rope_forward", what, x, tol_for(cases[ci].t));
        compare("rope_backward", what, g, tol_for(cases[ci].t));
        release_all();
    }
}

static void test_embedding(void)
{
    int64_t vocab = 50, dim = 19, n = 23;
    int32_t ids[23];
    for (int i = 0; i < n; i++) ids[i] = (i * 7 + 3) % 11 + (i % 4 == 0 ? 39 : 0);
    for (int ci = 0; ci < 2; ci++) {
        finch_dtype tt = ci ? FINCH_DTYPE_BF16 : FINCH_DTYPE_F32, ot = ci ? FINCH_DTYPE_F32 : FINCH_DTYPE_BF16;
        tensor idt = from_ints(ids, (size_t)n), table = random_tensor(tt, (size_t)(vocab * dim), 1.0f);
        tensor out = poisoned(ot, (size_t)(n * dim)), dout = random_tensor(ot, (size_t)(n * dim), 1.0f);
        tensor dtable = random_tensor(FINCH_DTYPE_F32, (size_t)(vocab * dim), 1.0f);
        BOTH("embedding_forward", sd->api->embedding_forward(sd->dev, NULL, n, dim, vocab, D(idt, s), tt, D(table, s), ot,
                                                             D(out, s), 1.7f));
        BOTH("embedding_backward", sd->api->embedding_backward(sd->dev, NULL, n, dim, vocab, D(idt, s), ot, D(dout, s),
                                                               D(dtable, s), 1.7f));
        const char *what = ci ? "bf16 table -> f32, repeated ids" : "f32 table -> bf16, repeated ids";
        compare("embedding_forward", what, out, ci ? 1e-6 : 2e-2);
        compare("embedding_backward", what, dtable, ci ? 1e-5 : 2e-2);
        int32_t bad[3] = {1, 50, 2};
        tensor badt = from_ints(bad, 3);
        int failed = testing_failed;
        BOTH_EXPECT("embedding_forward (id 50 of 50)", FINCH_ERR_INVALID_ARGUMENT,
                    sd->api->embedding_forward(sd->dev, NULL, 3, dim, vocab, D(badt, s), tt, D(table, s), ot, D(out, s), 1.0f));
        printf("%-30s %-52s %s\n", "embedding_forward", "id out of range -> invalid argument",
               testing_failed == failed ? "ok" : "FAIL");
        release_all();
    }
}

/* ---- losses and optimizer ----------------------------------------------------------------------- */
static void labels_for(int32_t *labels, int64_t n, int64_t vocab)
{
    for (int64_t i = 0; i < n; i++) labels[i] = i % 5 == 3 ? FINCH_IGNORE_INDEX : (int32_t)((i * 31 + 7) % vocab);
}

static void test_cross_entropy(void)
{
    char what[96];
    for (int ci = 0; ci < 3; ci++) {
        finch_dtype t = ci == 0 ? FINCH_DTYPE_F32 : ci == 1 ? FINCH_DTYPE_BF16 : FINCH_DTYPE_F16;
        int64_t n = 17 + 4 * ci, vocab = 101 + 50 * ci, ld = vocab + 3;
        float softcap = ci == 1 ? 15.0f : 0.0f;
        int in_place = ci == 1;
        int32_t labels[64];
        labels_for(labels, n, vocab);
        tensor lt = from_ints(labels, (size_t)n), logits = random_tensor(t, (size_t)(n * ld), 8.0f);
        tensor loss = from_floats(FINCH_DTYPE_F32, (float[]){1.25f}, 1), count = from_floats(FINCH_DTYPE_F32, (float[]){2.0f}, 1);
        tensor dl = in_place ? logits : poisoned(t, (size_t)(n * ld));
        finch_cross_entropy_desc d[2];
        for (int s = 0; s < 2; s++) {
            memset(&d[s], 0, sizeof d[s]);
            d[s].n_tokens = n;
            d[s].vocab = vocab;
            d[s].dtype = t;
            d[s].logits = D(logits, s);
            d[s].ld = ld;
            d[s].labels = D(lt, s);
            d[s].softcap = softcap;
            d[s].grad_scale = 0.5f;
            d[s].loss_sum = D(loss, s);
            d[s].count = D(count, s);
            d[s].dlogits = D(dl, s);
            d[s].lddlogits = ld;
        }
        BOTH("cross_entropy", sd->api->cross_entropy(sd->dev, NULL, &d[s]));
        snprintf(what, sizeof what, "%s n%lld vocab %lld cap %g%s", dtype_name(t), (long long)n, (long long)vocab, softcap,
                 in_place ? " in place" : "");
        compare("cross_entropy loss_sum", what, loss, tol_for(t) / 10);
        compare("cross_entropy count", what, count, 0);
        compare_rows("cross_entropy dlogits", what, dl, 1, n, vocab, ld, 0, tol_for(t));
        labels[2] = (int32_t)vocab;
        tensor bad = from_ints(labels, (size_t)n);
        for (int s = 0; s < 2; s++) {
            d[s].labels = D(bad, s);
            d[s].dlogits = D(absent, s);
        }
        int failed = testing_failed;
        BOTH_EXPECT("cross_entropy (label == vocab)", FINCH_ERR_INVALID_ARGUMENT, sd->api->cross_entropy(sd->dev, NULL, &d[s]));
        printf("%-30s %-52s %s\n", "cross_entropy", "label out of range -> invalid argument",
               testing_failed == failed ? "ok" : "FAIL");
        release_all();
    }
}

static void test_linear_cross_entropy(void)
{
    static const struct { finch_dtype t, wt; int64_t n, dim, vocab, chunk; float softcap, grad_scale; int acc; } cases[] = {
        {FINCH_DTYPE_F32, FINCH_DTYPE_F32, 23, 40, 101, 7, 0.0f, 1.0f / 23, 1},
        {FINCH_DTYPE_BF16, FINCH_DTYPE_BF16, 19, 32, 77, 0, 10.0f, 0.25f, 0},
        {FINCH_DTYPE_F32, FINCH_DTYPE_NF4, 11, 48, 65, 4, 0.0f, 0.5f, 0},
        {FINCH_DTYPE_BF16, FINCH_DTYPE_BF16, 9, 24, 300, 5, 0.0f, 0.0f, 0},
    };
    char what[96];
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        finch_dtype t = cases[ci].t;
        int64_t n = cases[ci].n, dim = cases[ci].dim, vocab = cases[ci].vocab, ldh = dim + 2;
        int nf4 = cases[ci].wt == FINCH_DTYPE_NF4;
        int32_t labels[64];
        labels_for(labels, n, vocab);
        tensor lt = from_ints(labels, (size_t)n), h = random_tensor(t, (size_t)(n * ldh), 1.0f);
        nf4_parts parts = {absent, absent, absent};
        tensor wd = absent;
        if (nf4) parts = make_nf4(vocab, dim);
        else wd = random_tensor(cases[ci].wt, (size_t)(vocab * dim), 0.5f);
        tensor loss = from_floats(FINCH_DTYPE_F32, (float[]){0.5f}, 1), count = from_floats(FINCH_DTYPE_F32, (float[]){1.0f}, 1);
        int grad = cases[ci].grad_scale != 0.0f;
        tensor dh = grad ? (cases[ci].acc ? random_tensor(t, (size_t)(n * ldh), 1.0f) : poisoned(t, (size_t)(n * ldh))) : absent;
        tensor dw = grad && !nf4 ? random_tensor(FINCH_DTYPE_F32, (size_t)(vocab * dim), 1.0f) : absent;
        finch_linear_cross_entropy_desc d[2];
        for (int s = 0; s < 2; s++) {
            memset(&d[s], 0, sizeof d[s]);
            d[s].n_tokens = n;
            d[s].dim = dim;
            d[s].vocab = vocab;
            d[s].chunk_tokens = cases[ci].chunk;
            d[s].act_type = t;
            d[s].hidden = D(h, s);
            d[s].ldh = ldh;
            d[s].w = nf4 ? nf4_weight(&parts, s) : dense_weight(wd, s);
            d[s].labels = D(lt, s);
            d[s].softcap = cases[ci].softcap;
            d[s].grad_scale = cases[ci].grad_scale;
            d[s].loss_sum = D(loss, s);
            d[s].count = D(count, s);
            d[s].dhidden = D(dh, s);
            d[s].lddh = ldh;
            d[s].dhidden_accumulate = cases[ci].acc;
            d[s].dw = D(dw, s);
        }
        BOTH("linear_cross_entropy", sd->api->linear_cross_entropy(sd->dev, NULL, &d[s]));
        snprintf(what, sizeof what, "%s w %s n%lld dim %lld vocab %lld chunk %lld cap %g", dtype_name(t),
                 dtype_name(cases[ci].wt), (long long)n, (long long)dim, (long long)vocab, (long long)cases[ci].chunk,
                 cases[ci].softcap);
        compare("linear_cross_entropy loss_sum", what, loss, tol_for(t) / 10);
        compare("linear_cross_entropy count", what, count, 0);
        if (dh.n) compare_rows("linear_cross_entropy dhidden", what, dh, 1, n, dim, ldh, 0, tol_for(t));
        if (dw.n) compare("linear_cross_entropy dw", what, dw, tol_for(t));
        release_all();
    }
}

/* The fields finch_adamw_desc and finch_adamw8bit_desc share: hyperparameters of optimizer step `step`. */
#define SET_ADAMW_FIELDS(d, n_, pt, param_, master_, grad_, step, s)                                     \
    do {                                                                                                 \
        memset(&(d), 0, sizeof(d));                                                                      \
        (d).n = (n_), (d).param_type = (pt);                                                             \
        (d).param = D(param_, s), (d).master = D(master_, s), (d).grad = D(grad_, s);                    \
        (d).lr = 1e-2f, (d).beta1 = 0.9f, (d).beta2 = 0.999f, (d).eps = 1e-8f;                           \
        (d).weight_decay = 0.01f, (d).grad_scale = 0.5f;                                                 \
        (d).bias_correction1 = 1.0f - powf(0.9f, (float)(step));                                        \
        (d).bias_correction2 = 1.0f - powf(0.999f, (float)(step));                                       \
    } while (0)

static void test_adamw(void)
{
    for (int ci = 0; ci < 2; ci++) {
        int64_t n = 1003;
        finch_dtype pt = ci ? FINCH_DTYPE_BF16 : FINCH_DTYPE_F32;
        tensor master = ci ? random_tensor(FINCH_DTYPE_F32, (size_t)n, 1.0f) : absent;
        tensor param = random_tensor(pt, (size_t)n, 1.0f), grad = random_tensor(FINCH_DTYPE_F32, (size_t)n, 1.0f);
        tensor m = random_tensor(FINCH_DTYPE_F32, (size_t)n, 0.1f), v = positive_tensor(FINCH_DTYPE_F32, (size_t)n, 0.01f);
        finch_adamw_desc d[2];
        for (int step = 1; step <= 3; step++) {
            for (int s = 0; s < 2; s++) {
                SET_ADAMW_FIELDS(d[s], n, pt, param, master, grad, step, s);
                d[s].m = D(m, s);
                d[s].v = D(v, s);
            }
            BOTH("adamw_step", sd->api->adamw_step(sd->dev, NULL, &d[s]));
        }
        const char *what = ci ? "bf16 param, f32 master, 3 steps" : "f32 param, 3 steps";
        compare("adamw_step param", what, param, ci ? 1e-2 : 1e-5);
        if (ci) compare("adamw_step master", what, master, 1e-5);
        compare("adamw_step m", what, m, 1e-5);
        compare("adamw_step v", what, v, 1e-5);
        release_all();
    }
}

/* ABI 1.7, optional: many tensors' steps in one call (more than a CUDA launch takes: 24), of odd
 * sizes, f32 parameters and bf16 ones with masters, each with its own learning rate and decay; and
 * the sum of squares over many tensors (more than a launch's 48) of mixed types. */
#define MULTI_TENSORS 53
static void test_optimizer_multi(void)
{
    if (OPTIONAL_ABSENT(adamw_step_multi, "adamw_step_multi", "1.7")) return;
    static const int64_t sizes[] = {1, 1003, 7, 4096, 1025, 33, 65536 + 17, 300};
    tensor prm[MULTI_TENSORS], mst[MULTI_TENSORS], grd[MULTI_TENSORS], m[MULTI_TENSORS], v[MULTI_TENSORS];
    finch_adamw_desc d[2][MULTI_TENSORS];
    int64_t n[MULTI_TENSORS];
    finch_dtype pt[MULTI_TENSORS];
    for (int i = 0; i < MULTI_TENSORS; i++) {
        n[i] = sizes[i % 8];
        pt[i] = i % 3 == 1 ? FINCH_DTYPE_BF16 : FINCH_DTYPE_F32;
        mst[i] = pt[i] == FINCH_DTYPE_BF16 ? random_tensor(FINCH_DTYPE_F32, (size_t)n[i], 1.0f) : absent;
        prm[i] = random_tensor(pt[i], (size_t)n[i], 1.0f);
        grd[i] = random_tensor(FINCH_DTYPE_F32, (size_t)n[i], 1.0f);
        m[i] = random_tensor(FINCH_DTYPE_F32, (size_t)n[i], 0.1f);
        v[i] = positive_tensor(FINCH_DTYPE_F32, (size_t)n[i], 0.01f);
    }
    for (int step = 1; step <= 2; step++) {
        for (int s = 0; s < 2; s++)
            for (int i = 0; i < MULTI_TENSORS; i++) {
                SET_ADAMW_FIELDS(d[s][i], n[i], pt[i], prm[i], mst[i], grd[i], step, s);
                d[s][i].m = D(m[i], s);
                d[s][i].v = D(v[i], s);
                d[s][i].lr = 1e-3f * (float)(1 + i % 5);
                d[s][i].weight_decay = i % 4 ? 0.01f : 0.0f;
            }
        BOTH("adamw_step_multi", sd->api->adamw_step_multi(sd->dev, NULL, MULTI_TENSORS, d[s]));
    }
    char what[64];
    for (int i = 0; i < MULTI_TENSORS; i++) {
        snprintf(what, sizeof what, "tensor %d of %d, %lld %s, 2 steps", i, MULTI_TENSORS, (long long)n[i], dtype_name(pt[i]));
        compare("adamw_step_multi param", what, prm[i], pt[i] == FINCH_DTYPE_BF16 ? 1e-2 : 1e-5);
        if (pt[i] == FINCH_DTYPE_BF16) compare("adamw_step_multi master", what, mst[i], 1e-5);
        compare("adamw_step_multi m", what, m[i], 1e-5);
        compare("adamw_step_multi v", what, v[i], 1e-5);
    }
    BOTH_EXPECT("adamw_step_multi", FINCH_ERR_INVALID_ARGUMENT, sd->api->adamw_step_multi(sd->dev, NULL, -1, d[s]));
    release_all();

    if (OPTIONAL_ABSENT(sum_squares_multi, "sum_squares_multi", "1.7")) return;
    static const finch_dtype types[] = {FINCH_DTYPE_F32, FINCH_DTYPE_BF16, FINCH_DTYPE_F16};
    tensor x[MULTI_TENSORS];
    finch_dptr xd[2][MULTI_TENSORS];
    for (int i = 0; i < MULTI_TENSORS; i++) {
        pt[i] = types[i % 3];
        x[i] = random_tensor(pt[i], (size_t)n[i], 1.0f);
        for (int s = 0; s < 2; s++) xd[s][i] = D(x[i], s);
    }
    tensor ss = from_floats(FINCH_DTYPE_F32, (float[]){0.5f}, 1);
    BOTH("sum_squares_multi", sd->api->sum_squares_multi(sd->dev, NULL, MULTI_TENSORS, n, pt, xd[s], D(ss, s)));
    compare("sum_squares_multi", "53 tensors of f32/bf16/f16, added to 0.5", ss, 1e-5);
    release_all();
}

/* ABI 1.1, optional: compared when the plugin has it. */
static void test_adamw8bit(void)
{
    if (OPTIONAL_ABSENT(adamw8bit_step, "adamw8bit_step", "1.1")) return;
    float m_map[256], v_map[256];
    for (int k = 0; k < 256; k++) {
        float u = ((float)k - 127.5f) / 127.5f;
        m_map[k] = u * u * u;
        v_map[k] = ((float)k / 255.0f) * ((float)k / 255.0f);
    }
    for (int ci = 0; ci < 2; ci++) {
        int64_t n = 1000, bs = 256, nb = (n + bs - 1) / bs;
        finch_dtype pt = ci ? FINCH_DTYPE_BF16 : FINCH_DTYPE_F32;
        unsigned char *codes = malloc((size_t)(2 * n));
        float *r = malloc((size_t)(2 * n) * sizeof(float));
        testing_fill_random(r, (size_t)(2 * n), seed_counter++);
        for (int64_t i = 0; i < 2 * n; i++) codes[i] = (unsigned char)((r[i] + 1.0f) * 127.99f);
        tensor mc = from_bytes(codes, (size_t)n), vc = from_bytes(codes + n, (size_t)n);
        tensor ma = positive_tensor(FINCH_DTYPE_F32, (size_t)nb, 0.1f), va = positive_tensor(FINCH_DTYPE_F32, (size_t)nb, 0.01f);
        tensor mm = from_floats(FINCH_DTYPE_F32, m_map, 256), vm = from_floats(FINCH_DTYPE_F32, v_map, 256);
        tensor master = ci ? random_tensor(FINCH_DTYPE_F32, (size_t)n, 1.0f) : absent;
        tensor param = random_tensor(pt, (size_t)n, 1.0f), grad = random_tensor(FINCH_DTYPE_F32, (size_t)n, 1.0f);
        finch_adamw8bit_desc d[2];
        for (int step = 1; step <= 2; step++) {
            for (int s = 0; s < 2; s++) {
                SET_ADAMW_FIELDS(d[s], n, pt, param, master, grad, step, s);
                d[s].blocksize = bs;
                d[s].m_codes = D(mc, s);
                d[s].v_codes = D(vc, s);
                d[s].m_absmax = D(ma, s);
                d[s].v_absmax = D(va, s);
                d[s].m_map = D(mm, s);
                d[s].v_map = D(vm, s);
            }
            BOTH("adamw8bit_step", sd->api->adamw8bit_step(sd->dev, NULL, &d[s]));
        }
        const char *what = ci ? "bf16 param, f32 master, 2 steps" : "f32 param, 2 steps";
        compare("adamw8bit_step param", what, ci ? master : param, 1e-5);
        compare("adamw8bit_step m codes", what, mc, 1e-2);
        compare("adamw8bit_step v codes", what, vc, 1e-2);
        compare("adamw8bit_step m absmax", what, ma, 1e-5);
        compare("adamw8bit_step v absmax", what, va, 1e-5);
        free(codes);
        free(r);
        release_all();
    }
}

/* ---- optional timings (FINCH_PARITY_BENCH=1): training-sized calls on the plugin alone ------------ */
static finch_dptr bench_buffer(finch_dtype t, size_t n, float scale)
{
    const side *p = &sides[1];
    finch_plugin_buffer *b = NULL;
    size_t bytes = n * dtype_size(t), chunk = (size_t)1 << 22;
    if (p->api->alloc(p->dev, bytes, &b)) fatal("alloc", 1);
    if (n_live == MAX_BUFFERS) exit(1);
    live[1][n_live] = b;
    live[0][n_live++] = NULL;
    float *x = malloc(chunk * sizeof(float));
    void *raw = malloc(chunk * 4);
    for (size_t i0 = 0; i0 < n; i0 += chunk) {
        size_t len = n - i0 < chunk ? n - i0 : chunk;
        testing_fill_random(x, len, seed_counter++);
        for (size_t i = 0; i < len; i++) x[i] *= scale;
        if (t == FINCH_DTYPE_U8)
            for (size_t i = 0; i < len; i++) ((unsigned char *)raw)[i] = (unsigned char)((x[i] / scale + 1.0f) * 127.99f);
        else
            encode(t, x, len, raw);
        if (p->api->write(p->dev, NULL, (finch_dptr){b, i0 * dtype_size(t)}, raw, len * dtype_size(t))) fatal("write", 1);
    }
    free(x);
    free(raw);
    return (finch_dptr){b, 0};
}

typedef int (*bench_fn)(void *ctx);

/* Median wall time of `fn` over 9 runs after 2 warm-ups, each synchronized; prints one line. */
static double bench(const char *name, bench_fn fn, void *ctx, double flops)
{
    const side *p = &sides[1];
    double t[9];
    for (int i = 0; i < 11; i++) {
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        if (fn(ctx)) fatal(name, 1);
        if (p->api->synchronize(p->dev, NULL)) fatal(name, 1);
        clock_gettime(CLOCK_MONOTONIC, &b);
        if (i >= 2) t[i - 2] = (double)(b.tv_sec - a.tv_sec) + 1e-9 * (double)(b.tv_nsec - a.tv_nsec);
    }
    for (int i = 0; i < 9; i++)
        for (int j = i + 1; j < 9; j++)
            if (t[j] < t[i]) { double x = t[i]; t[i] = t[j]; t[j] = x; }
    double med = t[4];
    if (flops > 0) printf("bench %-52s %9.3f ms  %7.1f TFLOP/s\n", name, med * 1e3, flops / med * 1e-12);
    else printf("bench %-52s %9.3f ms\n", name, med * 1e3);
    return med;
}

static int bench_gemm(void *ctx) { return sides[1].api->gemm(sides[1].dev, NULL, ctx); }
static int bench_linear_fwd(void *ctx) { return sides[1].api->linear_forward(sides[1].dev, NULL, ctx); }
static int bench_linear_bwd(void *ctx) { return sides[1].api->linear_backward(sides[1].dev, NULL, ctx); }
static int bench_attn_fwd(void *ctx) { return sides[1].api->attention_forward(sides[1].dev, NULL, ctx); }
static int bench_attn_bwd(void *ctx) { return sides[1].api->attention_backward(sides[1].dev, NULL, ctx); }
static int bench_lce(void *ctx) { return sides[1].api->linear_cross_entropy(sides[1].dev, NULL, ctx); }
typedef struct qmatmul_ctx { const finch_weight *w; int64_t out, in; finch_dptr x, y; } qmatmul_ctx;
static int bench_qmatmul(void *ctx)
{
    qmatmul_ctx *c = ctx;
    return sides[1].api->qmatmul_forward(sides[1].dev, NULL, c->w, c->out, c->in, 1, FINCH_DTYPE_BF16, c->x, c->in, c->y,
                                         c->out, 0.0f);
}
/* A call repeated (queued back to back, one synchronization): for calls of a few microseconds. */
#define BENCH_REPS 20
typedef struct repeat_ctx { bench_fn fn; void *ctx; } repeat_ctx;
static int bench_repeat(void *ctx)
{
    repeat_ctx *r = ctx;
    for (int i = 0; i < BENCH_REPS; i++)
        if (r->fn(r->ctx)) return 1;
    return 0;
}

typedef struct norm_ctx { int64_t n, dim; finch_dptr x, w, y, rstd, dy, dx, dw; } norm_ctx;
static int bench_rms_fwd(void *ctx)
{
    norm_ctx *c = ctx;
    return sides[1].api->rmsnorm_forward(sides[1].dev, NULL, c->n, c->dim, FINCH_DTYPE_BF16, c->x, FINCH_DTYPE_BF16, c->w,
                                         0.0f, 1e-5f, c->y, c->rstd);
}
static int bench_rms_bwd(void *ctx)
{
    norm_ctx *c = ctx;
    return sides[1].api->rmsnorm_backward(sides[1].dev, NULL, c->n, c->dim, FINCH_DTYPE_BF16, c->x, FINCH_DTYPE_BF16, c->w,
                                          0.0f, c->rstd, c->dy, c->dx, 0, c->dw);
}
static int bench_glu_fwd(void *ctx)
{
    norm_ctx *c = ctx;
    return sides[1].api->glu_forward(sides[1].dev, NULL, FINCH_ACT_SILU, c->n, c->dim, FINCH_DTYPE_BF16, c->x, c->dim,
                                     c->dy, c->dim, c->y);
}
static int bench_glu_bwd(void *ctx)
{
    norm_ctx *c = ctx;
    return sides[1].api->glu_backward(sides[1].dev, NULL, FINCH_ACT_SILU, c->n, c->dim, FINCH_DTYPE_BF16, c->x, c->dim,
                                      c->dy, c->dim, c->y, c->dx, c->dw);
}

/* Batch-1 products of Llama-8B shapes (decode): time and the weight bytes read per second. */
static void decode_benchmarks(void)
{
    static const struct { const char *name; int64_t n, k; int nf4; finch_dtype c; } shapes[] = {
        {"q/o_proj 4096 -> 4096 bf16", 4096, 4096, 0, FINCH_DTYPE_BF16},
        {"k/v_proj 4096 -> 1024 bf16", 1024, 4096, 0, FINCH_DTYPE_BF16},
        {"gate/up 4096 -> 14336 bf16", 14336, 4096, 0, FINCH_DTYPE_BF16},
        {"down 14336 -> 4096 bf16", 4096, 14336, 0, FINCH_DTYPE_BF16},
        {"lm head 4096 -> 128256 bf16, f32 out", 128256, 4096, 0, FINCH_DTYPE_F32},
        {"gate/up 4096 -> 14336 nf4", 14336, 4096, 1, FINCH_DTYPE_BF16},
        {"down 14336 -> 4096 nf4", 4096, 14336, 1, FINCH_DTYPE_BF16},
    };
    char name[96];
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        int64_t n = shapes[i].n, k = shapes[i].k;
        finch_gemm_desc d;
        memset(&d, 0, sizeof d);
        d.m = 1;
        d.n = n;
        d.k = k;
        d.a_type = d.b_type = FINCH_DTYPE_BF16;
        d.c_type = shapes[i].c;
        d.a = bench_buffer(FINCH_DTYPE_BF16, (size_t)k, 1.0f);
        d.c = bench_buffer(shapes[i].c, (size_t)n, 1.0f);
        d.lda = k;
        d.ldc = n;
        d.trans_b = 1;
        d.batch = 1;
        d.alpha = 1.0f;
        double bytes;
        double t;
        snprintf(name, sizeof name, "decode m=1 %s (x%d)", shapes[i].name, BENCH_REPS);
        if (shapes[i].nf4) {
            finch_weight w;
            memset(&w, 0, sizeof w);
            w.dtype = FINCH_DTYPE_NF4;
            w.blocksize = 64;
            w.data = bench_buffer(FINCH_DTYPE_U8, (size_t)(n * k / 2), 1.0f);
            w.absmax = bench_buffer(FINCH_DTYPE_F32, (size_t)(n * k / 64), 0.1f);
            w.code = bench_buffer(FINCH_DTYPE_F32, 16, 1.0f);
            qmatmul_ctx q = {&w, n, k, d.a, d.c};
            repeat_ctx r = {bench_qmatmul, &q};
            t = bench(name, bench_repeat, &r, 0) / BENCH_REPS;
            bytes = (double)(n * k) * (0.5 + 4.0 / 64);
        } else {
            d.b = bench_buffer(FINCH_DTYPE_BF16, (size_t)(n * k), 0.02f);
            d.ldb = k;
            repeat_ctx r = {bench_gemm, &d};
            t = bench(name, bench_repeat, &r, 0) / BENCH_REPS;
            bytes = (double)(n * k) * 2;
        }
        printf("bench %-52s %9.4f ms per call, %.1f GB/s of weights\n", "", t * 1e3, bytes / t * 1e-9);
        release_all();
    }
}

static finch_dptr dptr_at(finch_dptr p, size_t bytes)
{
    p.offset += bytes;
    return p;
}

/* Products one after another, as one bench call. */
typedef struct gemm_list { int n; finch_gemm_desc d[3]; } gemm_list;
static int bench_gemm_list(void *ctx)
{
    gemm_list *l = ctx;
    for (int i = 0; i < l->n; i++)
        if (bench_gemm(&l->d[i])) return 1;
    return 0;
}

static finch_rope_desc rope_bench_desc(int64_t n, int64_t heads, finch_dptr x, finch_dptr pos, finch_dptr inv)
{
    finch_rope_desc d;
    memset(&d, 0, sizeof d);
    d.n_tokens = n; d.n_heads = heads; d.head_dim = 128; d.rot_dim = 128; d.dtype = FINCH_DTYPE_BF16;
    d.x = x; d.ldx = heads * 128; d.positions = pos; d.inv_freq = inv; d.n_sections = 1; d.sections[0] = 64;
    d.attn_factor = 1.0f;
    return d;
}
static int bench_rope_qk(void *ctx)
{
    finch_rope_desc *d = ctx;
    return sides[1].api->rope_forward(sides[1].dev, NULL, &d[0]) || sides[1].api->rope_forward(sides[1].dev, NULL, &d[1]);
}

/* A Llama-8B layer's products at B2xT2048 (4096 tokens) as the trainer issues them (q, k, v and gate,
 * up one by one, the backward's dx accumulating) against one product over stacked weights, and RoPE
 * on q and k (FINCH_PARITY_BENCH=step). */
static void step_benchmarks(void)
{
    const int64_t m = 4096, h = 4096, kv = 1024, ff = 14336;
    static const char *names[4] = {"q,k,v forward", "q,k,v backward dx", "gate,up forward", "gate,up backward dx"};
    for (int which = 0; which < 4; which++) {
        int mlp = which >= 2, bwd = which & 1;
        int64_t outs[3] = {h, kv, kv};
        if (mlp) outs[0] = outs[1] = ff;
        int parts = mlp ? 2 : 3;
        int64_t total = 0;
        for (int i = 0; i < parts; i++) total += outs[i];
        finch_dptr x = bench_buffer(FINCH_DTYPE_BF16, (size_t)(m * h), 1.0f);
        finch_dptr y = bench_buffer(FINCH_DTYPE_BF16, (size_t)(m * total), 1.0f);
        finch_dptr w = bench_buffer(FINCH_DTYPE_BF16, (size_t)(total * h), 0.02f);
        gemm_list sep, one;
        memset(&sep, 0, sizeof sep);
        memset(&one, 0, sizeof one);
        int64_t at = 0;
        for (int i = 0; i <= parts; i++) {
            finch_gemm_desc *d = i < parts ? &sep.d[i] : &one.d[0];
            int64_t n_out = i < parts ? outs[i] : total, c0 = i < parts ? at : 0;
            d->a_type = d->b_type = d->c_type = FINCH_DTYPE_BF16;
            d->batch = 1;
            d->alpha = 1.0f;
            d->b = dptr_at(w, (size_t)(c0 * h) * 2);
            d->ldb = h;
            if (!bwd) {     /* y[:, c0..] = x W_i^T */
                d->m = m; d->n = n_out; d->k = h;
                d->a = x; d->lda = h;
                d->trans_b = 1;
                d->c = dptr_at(y, (size_t)c0 * 2); d->ldc = total;
            } else {        /* dx += dy[:, c0..] W_i */
                d->m = m; d->n = h; d->k = n_out;
                d->a = dptr_at(y, (size_t)c0 * 2); d->lda = total;
                d->c = x; d->ldc = h;
                d->beta = i > 0 && i < parts ? 1.0f : 0.0f;
            }
            if (i < parts) at += outs[i];
        }
        sep.n = parts;
        one.n = 1;
        char name[96];
        double flops = 2.0 * m * h * total;
        snprintf(name, sizeof name, "%s one by one", names[which]);
        bench(name, bench_gemm_list, &sep, flops);
        snprintf(name, sizeof name, "%s stacked", names[which]);
        bench(name, bench_gemm_list, &one, flops);
        release_all();
    }
    {
        int32_t *pos = malloc((size_t)m * sizeof *pos);
        float inv[64];
        for (int64_t i = 0; i < m; i++) pos[i] = (int32_t)(i % 2048);
        for (int i = 0; i < 64; i++) inv[i] = powf(500000.0f, -2.0f * (float)i / 128.0f);
        finch_dptr pt = bench_buffer(FINCH_DTYPE_F32, (size_t)m, 1.0f), it = bench_buffer(FINCH_DTYPE_F32, 64, 1.0f);
        if (sides[1].api->write(sides[1].dev, NULL, pt, pos, (size_t)m * 4) || sides[1].api->write(sides[1].dev, NULL, it, inv, sizeof inv))
            fatal("write", 1);
        free(pos);
        finch_rope_desc d[2] = {rope_bench_desc(m, 32, bench_buffer(FINCH_DTYPE_BF16, (size_t)(m * h), 1.0f), pt, it),
                                rope_bench_desc(m, 8, bench_buffer(FINCH_DTYPE_BF16, (size_t)(m * kv), 1.0f), pt, it)};
        bench("rope_forward q (32 heads) + k (8 heads), 4096 tokens d128", bench_rope_qk, d, 0);
        release_all();
    }
}

/* Attention, Llama-8B-like (32 heads, 8 kv heads, head_dim 128, causal) and Llama-1B-like (head_dim
 * 64): sequences x length. Also run alone with FINCH_PARITY_BENCH=attention. */
static void attention_benchmarks(void)
{
    static const struct { int64_t seqs, T, hd; } shapes[] = {{4, 2048, 128}, {2, 2048, 128}, {1, 8192, 128}, {4, 2048, 64}};
    char name[96];
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        int64_t seqs = shapes[si].seqs, T = shapes[si].T, H = 32, KV = 8, hd = shapes[si].hd, n = seqs * T;
        int32_t cu[5];
        for (int i = 0; i <= seqs; i++) cu[i] = (int32_t)(i * T);
        finch_attention_desc d;
        memset(&d, 0, sizeof d);
        d.n_tokens = n; d.n_seqs = seqs; d.max_seqlen = T;
        d.cu_seqlens = bench_buffer(FINCH_DTYPE_F32, (size_t)seqs + 1, 1.0f);
        if (sides[1].api->write(sides[1].dev, NULL, d.cu_seqlens, cu, (size_t)(seqs + 1) * sizeof cu[0])) fatal("write", 1);
        d.n_heads = H; d.n_kv_heads = KV; d.head_dim = hd; d.dtype = FINCH_DTYPE_BF16;
        d.q = bench_buffer(FINCH_DTYPE_BF16, (size_t)(n * H * hd), 1.0f); d.ldq = H * hd;
        d.k = bench_buffer(FINCH_DTYPE_BF16, (size_t)(n * KV * hd), 1.0f); d.ldk = KV * hd;
        d.v = bench_buffer(FINCH_DTYPE_BF16, (size_t)(n * KV * hd), 1.0f); d.ldv = KV * hd;
        d.o = bench_buffer(FINCH_DTYPE_BF16, (size_t)(n * H * hd), 1.0f); d.ldo = H * hd;
        d.lse = bench_buffer(FINCH_DTYPE_F32, (size_t)(H * n), 1.0f);
        d.scale = 1.0f / sqrtf((float)hd); d.causal = 1;
        d.dout = bench_buffer(FINCH_DTYPE_BF16, (size_t)(n * H * hd), 1.0f); d.lddout = H * hd;
        d.dq = bench_buffer(FINCH_DTYPE_BF16, (size_t)(n * H * hd), 1.0f); d.lddq = H * hd;
        d.dk = bench_buffer(FINCH_DTYPE_BF16, (size_t)(n * KV * hd), 1.0f); d.lddk = KV * hd;
        d.dv = bench_buffer(FINCH_DTYPE_BF16, (size_t)(n * KV * hd), 1.0f); d.lddv = KV * hd;
        double fwd = 4.0 * seqs * H * hd * (double)T * T / 2;
        snprintf(name, sizeof name, "attention_forward bf16 %lldx%lld h32/8 d%lld causal", (long long)seqs, (long long)T,
                 (long long)hd);
        bench(name, bench_attn_fwd, &d, fwd);
        snprintf(name, sizeof name, "attention_backward bf16 %lldx%lld h32/8 d%lld causal", (long long)seqs, (long long)T,
                 (long long)hd);
        bench(name, bench_attn_bwd, &d, 2.5 * fwd);
        release_all();
    }
}

static void benchmarks(void)
{
    char name[96];
    /* Dense GEMM: the card's bf16 rate through the plugin. */
    {
        int64_t n = 8192;
        finch_gemm_desc d;
        memset(&d, 0, sizeof d);
        d.m = d.n = d.k = n;
        d.a_type = d.b_type = d.c_type = FINCH_DTYPE_BF16;
        d.a = bench_buffer(FINCH_DTYPE_BF16, (size_t)(n * n), 1.0f);
        d.b = bench_buffer(FINCH_DTYPE_BF16, (size_t)(n * n), 1.0f);
        d.c = bench_buffer(FINCH_DTYPE_BF16, (size_t)(n * n), 1.0f);
        d.lda = d.ldb = d.ldc = n;
        d.trans_b = 1;
        d.batch = 1;
        d.alpha = 1.0f;
        bench("gemm bf16 8192^3 (A B^T)", bench_gemm, &d, 2.0 * n * n * n);
        release_all();
    }
    /* LoRA linear, Llama-8B q_proj-like: m = 4 x 2048 tokens, 4096 -> 4096, r 16; bf16 factors, NF4 W, and
     * f32 factors (as the trainer keeps them). */
    const char *which = getenv("FINCH_PARITY_BENCH");
    int linear_only = which && !strcmp(which, "linear");
    for (int kind = 0; kind < 3; kind++) {
        int nf4 = kind == 1, f32_factors = kind == 2;
        if (linear_only && nf4) continue;
        int64_t m = 8192, in = 4096, out = 4096, r = 16;
        finch_linear_desc d;
        memset(&d, 0, sizeof d);
        d.m = m; d.in_features = in; d.out_features = out; d.rank = r;
        d.act_type = d.param_type = FINCH_DTYPE_BF16;
        d.x = bench_buffer(FINCH_DTYPE_BF16, (size_t)(m * in), 1.0f); d.ldx = in;
        d.y = bench_buffer(FINCH_DTYPE_BF16, (size_t)(m * out), 1.0f); d.ldy = out;
        if (nf4) {
            d.w.dtype = FINCH_DTYPE_NF4;
            d.w.data = bench_buffer(FINCH_DTYPE_U8, (size_t)(out * in / 2), 1.0f);
            d.w.absmax = bench_buffer(FINCH_DTYPE_F32, (size_t)(out * in / 64), 0.1f);
            d.w.code = bench_buffer(FINCH_DTYPE_F32, 16, 1.0f);
            d.w.blocksize = 64;
        } else {
            d.w.dtype = FINCH_DTYPE_BF16;
            d.w.data = bench_buffer(FINCH_DTYPE_BF16, (size_t)(out * in), 0.02f);
        }
        if (f32_factors) d.param_type = FINCH_DTYPE_F32;
        d.lora_a = bench_buffer(d.param_type, (size_t)(r * in), 0.02f);
        d.lora_b = bench_buffer(d.param_type, (size_t)(out * r), 0.02f);
        d.scale = 2.0f;
        d.xa = bench_buffer(FINCH_DTYPE_F32, (size_t)(m * r), 1.0f);
        d.dy = bench_buffer(FINCH_DTYPE_BF16, (size_t)(m * out), 1.0f); d.lddy = out;
        d.dx = bench_buffer(FINCH_DTYPE_BF16, (size_t)(m * in), 1.0f); d.lddx = in;
        d.da = bench_buffer(FINCH_DTYPE_F32, (size_t)(r * in), 1.0f);
        d.db = bench_buffer(FINCH_DTYPE_F32, (size_t)(out * r), 1.0f);
        double base = 2.0 * m * in * out, lora = 2.0 * m * r * (in + out);
        const char *kind = f32_factors ? "bf16, f32 A/B" : nf4 ? "nf4" : "bf16";
        snprintf(name, sizeof name, "linear_forward %s 8192x4096->4096 r16", kind);
        bench(name, bench_linear_fwd, &d, base + lora);
        snprintf(name, sizeof name, "linear_backward %s 8192x4096->4096 r16", kind);
        bench(name, bench_linear_bwd, &d, base + 2 * lora);
        release_all();
    }
    if (linear_only) return;
    attention_benchmarks();
    /* Norm and gated unit over 8192 tokens. */
    {
        norm_ctx c = {8192, 4096, {0}, {0}, {0}, {0}, {0}, {0}, {0}};
        c.x = bench_buffer(FINCH_DTYPE_BF16, (size_t)(c.n * c.dim), 1.0f);
        c.w = bench_buffer(FINCH_DTYPE_BF16, (size_t)c.dim, 1.0f);
        c.y = bench_buffer(FINCH_DTYPE_BF16, (size_t)(c.n * c.dim), 1.0f);
        c.rstd = bench_buffer(FINCH_DTYPE_F32, (size_t)c.n, 1.0f);
        c.dy = bench_buffer(FINCH_DTYPE_BF16, (size_t)(c.n * c.dim), 1.0f);
        c.dx = bench_buffer(FINCH_DTYPE_BF16, (size_t)(c.n * c.dim), 1.0f);
        c.dw = bench_buffer(FINCH_DTYPE_F32, (size_t)c.dim, 1.0f);
        bench("rmsnorm_forward bf16 8192x4096", bench_rms_fwd, &c, 0);
        bench("rmsnorm_backward bf16 8192x4096", bench_rms_bwd, &c, 0);
        release_all();
        norm_ctx g = {8192, 14336, {0}, {0}, {0}, {0}, {0}, {0}, {0}};
        g.x = bench_buffer(FINCH_DTYPE_BF16, (size_t)(g.n * g.dim), 1.0f);
        g.dy = bench_buffer(FINCH_DTYPE_BF16, (size_t)(g.n * g.dim), 1.0f);
        g.y = bench_buffer(FINCH_DTYPE_BF16, (size_t)(g.n * g.dim), 1.0f);
        g.dx = bench_buffer(FINCH_DTYPE_BF16, (size_t)(g.n * g.dim), 1.0f);
        g.dw = bench_buffer(FINCH_DTYPE_BF16, (size_t)(g.n * g.dim), 1.0f);
        bench("glu_forward silu bf16 8192x14336", bench_glu_fwd, &g, 0);
        bench("glu_backward silu bf16 8192x14336", bench_glu_bwd, &g, 0);
        release_all();
    }
    /* Fused lm-head + cross-entropy, Llama-3 vocabulary. */
    {
        int64_t n = 8192, dim = 4096, vocab = 128256;
        int32_t *labels = malloc((size_t)n * sizeof(int32_t));
        for (int64_t i = 0; i < n; i++) labels[i] = (int32_t)((i * 7919) % vocab);
        finch_linear_cross_entropy_desc d;
        memset(&d, 0, sizeof d);
        d.n_tokens = n; d.dim = dim; d.vocab = vocab; d.act_type = FINCH_DTYPE_BF16;
        d.hidden = bench_buffer(FINCH_DTYPE_BF16, (size_t)(n * dim), 1.0f); d.ldh = dim;
        d.w.dtype = FINCH_DTYPE_BF16;
        d.w.data = bench_buffer(FINCH_DTYPE_BF16, (size_t)(vocab * dim), 0.02f);
        d.labels = bench_buffer(FINCH_DTYPE_F32, (size_t)n, 1.0f);
        if (sides[1].api->write(sides[1].dev, NULL, d.labels, labels, (size_t)n * 4)) fatal("write", 1);
        d.grad_scale = 1.0f / (float)n;
        d.loss_sum = bench_buffer(FINCH_DTYPE_F32, 1, 1.0f);
        d.count = bench_buffer(FINCH_DTYPE_F32, 1, 1.0f);
        d.dhidden = bench_buffer(FINCH_DTYPE_BF16, (size_t)(n * dim), 1.0f); d.lddh = dim;
        bench("linear_cross_entropy bf16 8192x4096 vocab 128256", bench_lce, &d, 4.0 * n * dim * vocab);
        free(labels);
        release_all();
    }
}

/* ---- setup -------------------------------------------------------------------------------------- */
static const finch_plugin_api *load_plugin(const char *path, void **handle)
{
    *handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!*handle) {
        fprintf(stderr, "parity: dlopen %s: %s\n", path, dlerror());
        return NULL;
    }
    finch_plugin_entry_fn entry = (finch_plugin_entry_fn)dlsym(*handle, FINCH_PLUGIN_ENTRY_SYMBOL);
    if (!entry) {
        fprintf(stderr, "parity: %s has no %s\n", path, FINCH_PLUGIN_ENTRY_SYMBOL);
        return NULL;
    }
    const finch_plugin_api *api = entry();
    if (finch_plugin_api_check(api, path) != FINCH_OK) {
        fprintf(stderr, "parity: %s\n", finch_last_error());
        return NULL;
    }
    return api;
}

/* FINCH_PARITY_ONLY="qmatmul,linear": only the groups named (a short run on a borrowed GPU). */
static void run(const char *name, void (*fn)(void))
{
    const char *only = getenv("FINCH_PARITY_ONLY");
    if (only && *only) {
        size_t len = strlen(name);
        const char *at = only;
        while ((at = strstr(at, name)) && !((at == only || at[-1] == ',') && (at[len] == ',' || at[len] == 0))) at++;
        if (!at) return;
    }
    struct timespec t0, t1;
    int failed = testing_failed;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    fn();
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("-- %s: %s (%.2f s)\n", name, testing_failed == failed ? "ok" : "FAILED",
           (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec));
    fflush(stdout);
}

int main(void)
{
    const char *path = getenv("FINCH_PARITY_PLUGIN");
    if (!path || !*path) {
        printf("skipped: set FINCH_PARITY_PLUGIN to the path of a plugin module (libfinch-<name>.so)\n");
        return SKIP_STATUS;
    }
    if (access(path, F_OK) != 0) {
        /* A GPU plugin configured with AUTO on a machine without its driver is not in the default
         * build (plugins/CMakeLists.txt): `--target finch_plugins` builds it. */
        printf("skipped: %s was not built\n", path);
        return SKIP_STATUS;
    }
    void *handle = NULL;
    const finch_plugin_api *api = load_plugin(path, &handle);
    if (!api) return 1;
    if (api->init() != FINCH_OK) {
        /* No driver or no device where this runs: nothing to compare. */
        printf("skipped: %s: init: %s\n", path, api->last_error());
        dlclose(handle);
        return SKIP_STATUS;
    }
    sides[0] = (side){"cpu", finch_cpu_plugin_api(), NULL};
    sides[1] = (side){api->name, api, NULL};
    if (sides[0].api->init() != FINCH_OK) fatal("init", 0);
    for (int s = 0; s < 2; s++)
        if (sides[s].api->device_open(0, &sides[s].dev) != FINCH_OK) fatal("device_open", s);

    run("devices", test_devices);
    run("memory and element-wise", test_memory);
    run("async copies", test_async_copies);
    run("copy_rows and recording", test_copy_rows_and_replay);
    run("events", test_event_order);
    run("recorded decode chain", test_recorded_decode_chain);
    run("activations and gated units", test_activations);
    run("gemm", test_gemm);
    run("qmatmul", test_qmatmul);
    run("gemv (a few rows)", test_gemv);
    run("linear", test_linear);
    run("linear_forward_group", test_linear_group);
    run("attention", test_attention);
    run("attention_cache", test_attention_cache);
    run("attention_cache_append", test_attention_cache_append);
    run("attention_cache_append replay", test_attention_cache_append_replay);
    run("norms", test_norms);
    run("add_rmsnorm", test_add_rmsnorm);
    run("rope", test_rope);
    run("embedding", test_embedding);
    run("cross_entropy", test_cross_entropy);
    run("linear_cross_entropy", test_linear_cross_entropy);
    run("adamw", test_adamw);
    run("adamw8bit", test_adamw8bit);
    run("optimizer multi", test_optimizer_multi);
    const char *b = getenv("FINCH_PARITY_BENCH");
    if (b && !strcmp(b, "attention")) run("attention benchmarks", attention_benchmarks);
    else if (b && !strcmp(b, "step")) run("step benchmarks", step_benchmarks);
    else if (b && *b && *b != '0' && strcmp(b, "decode")) run("benchmarks", benchmarks);
    if (b && *b && *b != '0' && strcmp(b, "attention") && strcmp(b, "step")) run("decode benchmarks", decode_benchmarks);

    for (int s = 0; s < 2; s++) {
        sides[s].api->device_close(sides[s].dev);
        sides[s].api->shutdown();
    }
    dlclose(handle);
    return testing_finish();
}
