/* The OpenCL plugin's own concerns: device enumeration, the on-disk kernel cache, build-log
 * errors, buffers and transfers, storage conversions bit for bit, and bad input reported as
 * errors. The numeric entries are checked in test_opencl_ops.c. */
#include <dirent.h>
#include <math.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tests/test_opencl.h"

static int count_cache_files(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return 0;
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        if (strncmp(e->d_name, "opencl-", 7) == 0 && strstr(e->d_name, ".bin")) n++;
    closedir(d);
    return n;
}

static void clear_cache(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return;
    char path[4400];
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.') continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        remove(path);
    }
    closedir(d);
}

/* Overwrites every cached binary with garbage of the same header-less kind. */
static void corrupt_cache(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return;
    char path[4400];
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.') continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        FILE *f = fopen(path, "r+b");
        if (!f) continue;
        fseek(f, 24, SEEK_SET); /* past magic, key and size: the binary itself */
        for (int i = 0; i < 4096; i++) fputc(0x5a, f);
        fclose(f);
    }
    closedir(d);
}

/* Opens device 0 and checks that a kernel runs on it. */
static int open_and_run(ocl_test *t, const char *what)
{
    if (t->api->device_open(0, &t->dev) != FINCH_OK) {
        CHECK(0, "%s: device_open: %s", what, t->api->last_error());
        return 0;
    }
    finch_dptr p = ocl_test_alloc(t, 64);
    float v[16];
    CHECK(t->api->fill(t->dev, NULL, p, FINCH_DTYPE_F32, 16, 2.5f) == FINCH_OK, "%s: fill: %s", what, t->api->last_error());
    ocl_test_download(t, p, 16, FINCH_DTYPE_F32, v);
    CHECK(v[0] == 2.5f && v[15] == 2.5f, "%s: fill gave %g", what, v[0]);
    for (int i = 0; i < t->n_buffers; i++) t->api->free(t->dev, t->buffers[i]);
    t->n_buffers = 0;
    t->api->device_close(t->dev);
    t->dev = NULL;
    return 1;
}

static void test_devices(ocl_test *t)
{
    int n = 0;
    CHECK(t->api->device_count(&n) == FINCH_OK && n >= 1, "device_count: %d", n);
    CHECK(strcmp(t->api->name, "opencl") == 0, "name '%s'", t->api->name);
    CHECK(t->api->abi_major == FINCH_PLUGIN_ABI_MAJOR && t->api->struct_size == sizeof(finch_plugin_api), "ABI");
    for (int i = 0; i < n; i++) {
        finch_device_info info;
        CHECK(t->api->device_info(i, &info) == FINCH_OK, "device_info(%d): %s", i, t->api->last_error());
        CHECK(info.name[0] != 0 && info.total_memory > 0 && info.compute_units > 0, "device %d: '%s' %llu bytes %d units",
              i, info.name, (unsigned long long)info.total_memory, info.compute_units);
        CHECK(info.kind >= FINCH_DEVICE_CPU && info.kind <= FINCH_DEVICE_OTHER, "device %d kind %d", i, (int)info.kind);
        CHECK(info.supports_bf16 == 0, "bf16 arithmetic claimed");
        printf("device %d: %s (kind %d, %d units, %llu MiB)\n", i, info.name, (int)info.kind, info.compute_units,
               (unsigned long long)(info.total_memory >> 20));
        finch_device_info again;
        t->api->device_info(i, &again);
        CHECK(strcmp(again.name, info.name) == 0, "device %d changed name", i);
    }
    finch_device_info info;
    CHECK(t->api->device_info(n, &info) == FINCH_ERR_INVALID_ARGUMENT, "device_info past the end");

    /* FINCH_OPENCL_DEVICE keeps the devices whose name contains it, in any case. */
    finch_device_info first;
    t->api->device_info(0, &first);
    char part[8] = {0};
    for (int i = 0; i < 6 && first.name[i + 1]; i++) part[i] = (char)(first.name[i + 1] ^ ((first.name[i + 1] >= 'a' && first.name[i + 1] <= 'z') ? 0x20 : 0));
    setenv("FINCH_OPENCL_DEVICE", part, 1);
    int m = 0;
    CHECK(t->api->init() == FINCH_OK && t->api->device_count(&m) == FINCH_OK && m >= 1 && m <= n,
          "FINCH_OPENCL_DEVICE='%s': %d of %d devices: %s", part, m, n, t->api->last_error());
    setenv("FINCH_OPENCL_DEVICE", "no-such-device-anywhere", 1);
    CHECK(t->api->init() == FINCH_ERR_DEVICE && strstr(t->api->last_error(), "no-such-device-anywhere") &&
              strstr(t->api->last_error(), first.name),
          "an unmatched filter: %s", t->api->last_error());
    unsetenv("FINCH_OPENCL_DEVICE");
    CHECK(t->api->init() == FINCH_OK && t->api->device_count(&m) == FINCH_OK && m == n, "init again: %d devices", m);
    finch_plugin_device *dev = NULL;
    CHECK(t->api->device_open(-1, &dev) == FINCH_ERR_INVALID_ARGUMENT && dev == NULL, "device_open(-1)");
}

static void test_cache_and_build_errors(ocl_test *t)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/opencl-cache-%ld", testing_tmp_dir(), (long)getpid());
    clear_cache(dir);
    const char *user_dir = getenv("FINCH_OPENCL_CACHE_DIR");
    char saved[4096] = {0};
    if (user_dir) snprintf(saved, sizeof saved, "%s", user_dir);
    setenv("FINCH_OPENCL_CACHE_DIR", dir, 1);

    CHECK(open_and_run(t, "cold cache"), "cold cache");
    CHECK(count_cache_files(dir) == 1, "the build left %d cached binaries in %s", count_cache_files(dir), dir);
    CHECK(open_and_run(t, "warm cache"), "warm cache");
    corrupt_cache(dir);
    CHECK(open_and_run(t, "corrupt cache"), "a corrupt cached binary is rebuilt");

    /* A compile error: the message carries the call, the CL error name and the build log. */
    setenv("FINCH_OPENCL_BUILD_OPTIONS", "-DFINCH_ROW_WG=(", 1);
    finch_plugin_device *dev = NULL;
    int rc = t->api->device_open(0, &dev);
    const char *msg = t->api->last_error();
    CHECK(rc == FINCH_ERR_DEVICE && dev == NULL, "a broken build returned %d", rc);
    CHECK(strstr(msg, "clBuildProgram") && strstr(msg, "CL_BUILD_PROGRAM_FAILURE") && strstr(msg, "build log"),
          "build failure message: %.300s", msg);
    CHECK(strstr(msg, "error") != NULL, "the build log is missing from: %.300s", msg);
    CHECK(count_cache_files(dir) == 1, "a failed build was cached");
    unsetenv("FINCH_OPENCL_BUILD_OPTIONS");

    /* An unusable cache directory only costs the cache. */
    setenv("FINCH_OPENCL_CACHE_DIR", "/proc/finch-no-such-dir/cache", 1);
    CHECK(open_and_run(t, "unwritable cache"), "unwritable cache directory");
    if (user_dir) setenv("FINCH_OPENCL_CACHE_DIR", saved, 1);
    else unsetenv("FINCH_OPENCL_CACHE_DIR");
    clear_cache(dir);
    rmdir(dir);
}

static void test_memory(ocl_test *t)
{
    const finch_plugin_api *api = t->api;
    uint64_t free0 = 0, total = 0, free1 = 0;
    CHECK(api->memory_info(t->dev, &free0, &total) == FINCH_OK && total > 0 && free0 <= total, "memory_info");
    finch_dptr a = ocl_test_alloc(t, 1 << 20), b = ocl_test_alloc(t, 4096);
    api->memory_info(t->dev, &free1, NULL);
    CHECK(free1 + (1 << 20) + 4096 <= free0, "free memory did not drop after alloc");

    /* Transfers at odd byte offsets. */
    unsigned char src[1000], back[1000];
    for (int i = 0; i < 1000; i++) src[i] = (unsigned char)(i * 7 + 3);
    finch_dptr a13 = {a.buf, 13}, b7 = {b.buf, 7};
    CHECK(api->write(t->dev, NULL, a13, src, 1000) == FINCH_OK, "write: %s", api->last_error());
    CHECK(api->copy(t->dev, NULL, b7, a13, 1000) == FINCH_OK, "copy: %s", api->last_error());
    memset(back, 0, sizeof back);
    CHECK(api->read(t->dev, NULL, b7, back, 1000) == FINCH_OK && memcmp(src, back, 1000) == 0, "round trip");
    finch_dptr past = {b.buf, 4000};
    CHECK(api->read(t->dev, NULL, past, back, 200) == FINCH_ERR_INVALID_ARGUMENT, "a read past the end was allowed");
    CHECK(strstr(api->last_error(), "overrun") != NULL, "message: %s", api->last_error());

    /* A second stream orders its own work. */
    finch_plugin_stream *s = NULL;
    CHECK(api->stream_create(t->dev, &s) == FINCH_OK, "stream_create: %s", api->last_error());
    finch_dptr a64 = {a.buf, 64};
    CHECK(api->fill(t->dev, s, a64, FINCH_DTYPE_I32, 100, -7.9f) == FINCH_OK, "fill i32");
    int32_t iv[100];
    CHECK(api->read(t->dev, s, a64, iv, sizeof iv) == FINCH_OK && iv[0] == -7 && iv[99] == -7, "fill i32 gave %d", iv[0]);
    CHECK(api->synchronize(t->dev, s) == FINCH_OK, "synchronize");
    api->stream_destroy(t->dev, s);

    /* A failed allocation names its size and why (the device's allocation limit, or the CL error). */
    finch_plugin_buffer *huge = NULL;
    int rc = api->alloc(t->dev, (size_t)1 << 60, &huge);
    CHECK(rc == FINCH_ERR_OUT_OF_MEMORY && huge == NULL, "alloc of 2^60 bytes returned %d", rc);
    CHECK(strstr(api->last_error(), "alloc of 1152921504606846976 bytes") &&
              (strstr(api->last_error(), "largest allocation") || strstr(api->last_error(), "clCreateBuffer failed with CL_")),
          "message: %s", api->last_error());
}

/* Conversions must match core/half.h bit for bit, ties and specials included. */
static void test_conversions(ocl_test *t)
{
    const finch_plugin_api *api = t->api;
    enum { N = 4096 };
    static float x[N], y[N];
    uint32_t specials[] = {0x00000000u, 0x80000000u, 0x3f808000u, 0x3f818000u, 0x3f80c000u, 0x7f7fffffu, 0x7f800000u,
                           0xff800000u, 0x33000000u, 0x33000001u, 0x387fc000u, 0x38800000u, 0x477fefffu, 0x477ff000u,
                           0x477fe000u, 0x3f800fffu, 0x3f801000u, 0x3f803000u, 0x00000001u, 0x37800000u};
    int ns = (int)(sizeof specials / sizeof specials[0]);
    testing_fill_random(x, N, 11);
    for (int i = 0; i < N; i++) x[i] *= (i % 3 == 0) ? 70000.0f : (i % 3 == 1) ? 1e-5f : 1.0f;
    for (int i = 0; i < ns; i++) memcpy(&x[i], &specials[i], 4);
    finch_dptr src = ocl_test_upload(t, x, N, FINCH_DTYPE_F32);
    finch_dtype types[] = {FINCH_DTYPE_BF16, FINCH_DTYPE_F16};
    for (int k = 0; k < 2; k++) {
        finch_dptr half = ocl_test_alloc(t, N * 2), back = ocl_test_alloc(t, N * 4);
        CHECK(api->cast(t->dev, NULL, N, FINCH_DTYPE_F32, src, types[k], half) == FINCH_OK, "cast: %s", api->last_error());
        CHECK(api->cast(t->dev, NULL, N, types[k], half, FINCH_DTYPE_F32, back) == FINCH_OK, "cast back");
        uint16_t h[N];
        api->read(t->dev, NULL, half, h, sizeof h);
        ocl_test_download(t, back, N, FINCH_DTYPE_F32, y);
        int bad = 0;
        for (int i = 0; i < N; i++) {
            uint16_t want = types[k] == FINCH_DTYPE_BF16 ? finch_f32_to_bf16(x[i]) : finch_f32_to_f16(x[i]);
            float want_back = types[k] == FINCH_DTYPE_BF16 ? finch_bf16_to_f32(want) : finch_f16_to_f32(want);
            if (h[i] != want || memcmp(&y[i], &want_back, 4) != 0) {
                if (bad++ < 5) printf("  %s: %a -> 0x%04x, want 0x%04x\n", k ? "f16" : "bf16", x[i], h[i], want);
            }
        }
        CHECK(bad == 0, "%s conversion: %d of %d differ", k ? "f16" : "bf16", bad, N);
        /* fill in the same type agrees with the conversion */
        CHECK(api->fill(t->dev, NULL, half, types[k], 3, 0.1f) == FINCH_OK, "fill");
        api->read(t->dev, NULL, half, h, 6);
        uint16_t want = types[k] == FINCH_DTYPE_BF16 ? finch_f32_to_bf16(0.1f) : finch_f32_to_f16(0.1f);
        CHECK(h[0] == want && h[2] == want, "fill 0.1 as %s gave 0x%04x", k ? "f16" : "bf16", h[0]);
    }

    /* copy_2d moves a strided block and leaves the gaps alone. */
    enum { R = 7, C = 5, LS = 9, LD = 6 };
    uint16_t block[R * LS], out[R * LD];
    for (int i = 0; i < R * LS; i++) block[i] = (uint16_t)(1000 + i);
    for (int i = 0; i < R * LD; i++) out[i] = 0xffff;
    finch_dptr bs = ocl_test_alloc(t, sizeof block), bd = ocl_test_alloc(t, sizeof out);
    api->write(t->dev, NULL, bs, block, sizeof block);
    api->write(t->dev, NULL, bd, out, sizeof out);
    CHECK(api->copy_2d(t->dev, NULL, FINCH_DTYPE_BF16, R, C, bs, LS, bd, LD) == FINCH_OK, "copy_2d: %s", api->last_error());
    api->read(t->dev, NULL, bd, out, sizeof out);
    int bad = 0;
    for (int r = 0; r < R; r++)
        for (int c = 0; c < LD; c++) bad += out[r * LD + c] != (c < C ? block[r * LS + c] : 0xffff);
    CHECK(bad == 0, "copy_2d: %d elements wrong", bad);
}

static void test_bad_input(ocl_test *t)
{
    const finch_plugin_api *api = t->api;
    int32_t ids[] = {0, 3, 9, 2};
    float table[8 * 4];
    testing_fill_random(table, 32, 3);
    finch_dptr pid = ocl_test_alloc(t, sizeof ids), ptab = ocl_test_upload(t, table, 32, FINCH_DTYPE_F32);
    finch_dptr pout = ocl_test_alloc(t, 4 * 4 * 4);
    api->write(t->dev, NULL, pid, ids, sizeof ids);
    int rc = api->embedding_forward(t->dev, NULL, 4, 4, 8, pid, FINCH_DTYPE_F32, ptab, FINCH_DTYPE_F32, pout, 1.0f);
    CHECK(rc == FINCH_ERR_INVALID_ARGUMENT, "embedding with id 9 of 8 returned %d", rc);
    CHECK(strstr(api->last_error(), "outside"), "message: %s", api->last_error());

    int32_t labels[] = {1, -100, 7};
    float logits[3 * 5];
    testing_fill_random(logits, 15, 4);
    finch_dptr plab = ocl_test_alloc(t, sizeof labels), plog = ocl_test_upload(t, logits, 15, FINCH_DTYPE_F32);
    finch_dptr acc = ocl_test_alloc(t, 8);
    api->write(t->dev, NULL, plab, labels, sizeof labels);
    api->fill(t->dev, NULL, acc, FINCH_DTYPE_F32, 2, 0.0f);
    finch_cross_entropy_desc ce = {.n_tokens = 3, .vocab = 5, .dtype = FINCH_DTYPE_F32, .logits = plog, .ld = 5,
                                   .labels = plab, .loss_sum = acc, .count = {acc.buf, 4}};
    rc = api->cross_entropy(t->dev, NULL, &ce);
    CHECK(rc == FINCH_ERR_INVALID_ARGUMENT, "cross_entropy with label 7 of 5 returned %d", rc);

    finch_attention_desc ad = {.n_tokens = 1, .n_seqs = 1, .n_heads = 1, .n_kv_heads = 1, .head_dim = 1000,
                               .dtype = FINCH_DTYPE_F32, .cu_seqlens = pid, .q = plog, .k = plog, .v = plog, .o = plog,
                               .lse = plog};
    rc = api->attention_forward(t->dev, NULL, &ad);
    CHECK(rc == FINCH_ERR_UNSUPPORTED && strstr(api->last_error(), "head_dim"), "head_dim 1000: %d %s", rc,
          api->last_error());
}

int main(void)
{
    ocl_test t;
    int rc = ocl_test_load(&t);
    if (rc) return rc;
    test_devices(&t);
    test_cache_and_build_errors(&t);
    if (t.api->device_open(0, &t.dev) != FINCH_OK) {
        CHECK(0, "device_open: %s", t.api->last_error());
    } else {
        test_memory(&t);
        test_conversions(&t);
        test_bad_input(&t);
    }
    ocl_test_close(&t);
    return testing_finish();
}
