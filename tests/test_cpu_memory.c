/* CPU backend: the plugin table, the device, memory entries, fill/copy/copy_2d/copy_rows/cast, bounds checks. */
#include "backends/cpu/cpu.h"
#include "tests/test_cpu_common.h"

/* Huge allocations must fail with an error, also under AddressSanitizer. */
const char *__asan_default_options(void);
const char *__asan_default_options(void) { return "allocator_may_return_null=1"; }

static void test_table(void)
{
    CHECK(api->abi_major == FINCH_PLUGIN_ABI_MAJOR && api->abi_minor == FINCH_PLUGIN_ABI_MINOR, "abi");
    CHECK(api->struct_size == sizeof(finch_plugin_api), "struct_size");
    CHECK(api->name && strcmp(api->name, "cpu") == 0, "name");
    CHECK(api->version != NULL, "version");
    /* Every entry after the identity fields is a function pointer, and none may be NULL but the
     * recording ones: the CPU runs each call as it comes, which is what a replay must equal. */
    size_t first = offsetof(finch_plugin_api, init), count = (sizeof(finch_plugin_api) - first) / sizeof(void (*)(void));
    size_t rec0 = (offsetof(finch_plugin_api, capture_begin) - first) / sizeof(void (*)(void));
    size_t rec1 = (offsetof(finch_plugin_api, graph_free) - first) / sizeof(void (*)(void));
    CHECK(!api->capture_begin && !api->capture_end && !api->graph_launch && !api->graph_free, "the CPU does not record");
    for (size_t i = 0; i < count; i++) {
        if (i >= rec0 && i <= rec1) continue;
        void (*fn)(void);
        memcpy(&fn, (const char *)api + first + i * sizeof fn, sizeof fn);
        CHECK(fn != NULL, "entry %zu of the table is NULL", i);
    }
    CHECK(finch_plugin_api_check == finch_plugin_api_check, "linked");
}

static void test_device(void)
{
    int count = 0;
    CHECK(api->device_count(&count) == FINCH_OK && count == 1, "one device");
    finch_device_info info;
    CHECK(api->device_info(0, &info) == FINCH_OK, "device_info");
    CHECK(info.kind == FINCH_DEVICE_CPU && info.name[0] && info.compute_units >= 1, "info: %s", info.name);
    CHECK(info.total_memory > 0 && info.free_memory <= info.total_memory, "memory");
    CHECK(api->device_info(1, &info) == FINCH_ERR_INVALID_ARGUMENT, "no device 1");
    uint64_t fr = 0, tot = 0;
    CHECK(api->memory_info(dev, &fr, &tot) == FINCH_OK && tot > 0, "memory_info");
    finch_plugin_stream *s = NULL;
    CHECK(api->stream_create(dev, &s) == FINCH_OK && s, "stream_create");
    CHECK(api->synchronize(dev, s) == FINCH_OK && api->synchronize(dev, NULL) == FINCH_OK, "synchronize");
    api->stream_destroy(dev, s);
    finch_cpu_set_threads(2);
    CHECK(api->device_info(0, &info) == FINCH_OK && info.compute_units == 2, "threads");
    finch_cpu_set_threads(0);
}

static void test_memory(void)
{
    float src[37], back[37];
    testing_fill_random(src, 37, 1);
    finch_dptr a = upload(src, 37, FINCH_DTYPE_F32);
    CHECK(((uintptr_t)a.buf->data & 63) == 0, "64-byte aligned");
    finch_dptr b = alloc_bytes(37 * 4);
    CHECK(api->copy(dev, NULL, b, a, 37 * 4) == FINCH_OK, "copy");
    download(b, 37, FINCH_DTYPE_F32, back);
    CHECK(memcmp(src, back, sizeof src) == 0, "copy round trip");
    /* offsets */
    finch_dptr a5 = {a.buf, 5 * 4};
    CHECK(api->read(dev, NULL, a5, back, 32 * 4) == FINCH_OK && back[0] == src[5] && back[31] == src[36], "offset read");
    /* out of range */
    CHECK(api->read(dev, NULL, a5, back, 33 * 4) == FINCH_ERR_INVALID_ARGUMENT, "read past the end");
    CHECK(strstr(api->last_error(), "outside") != NULL, "message: %s", api->last_error());
    finch_dptr far = {a.buf, 1000};
    CHECK(api->write(dev, NULL, far, src, 4) == FINCH_ERR_INVALID_ARGUMENT, "offset past the end");
    finch_dptr absent = {NULL, 0};
    CHECK(api->read(dev, NULL, absent, back, 4) == FINCH_ERR_INVALID_ARGUMENT, "absent pointer");
    CHECK(api->fill(dev, NULL, a5, FINCH_DTYPE_F32, 33, 1.0f) == FINCH_ERR_INVALID_ARGUMENT, "fill past the end");
    CHECK(api->copy_2d(dev, NULL, FINCH_DTYPE_F32, 5, 5, a, 9, b, 5) == FINCH_ERR_INVALID_ARGUMENT,
          "copy_2d past the end");
    finch_gemm_desc g = {.m = 7, .n = 7, .k = 7, .a_type = FINCH_DTYPE_F32, .b_type = FINCH_DTYPE_F32,
                         .c_type = FINCH_DTYPE_F32, .a = a, .b = a, .c = b, .lda = 7, .ldb = 7, .ldc = 7,
                         .batch = 1, .alpha = 1};
    CHECK(api->gemm(dev, NULL, &g) == FINCH_ERR_INVALID_ARGUMENT, "gemm operand past the end");
    /* allocation failure */
    finch_plugin_buffer *huge = NULL;
    CHECK(api->alloc(dev, (size_t)1 << 62, &huge) == FINCH_ERR_OUT_OF_MEMORY && !huge, "huge alloc fails");
    CHECK(strstr(api->last_error(), "4611686018427387904") != NULL, "oom message names the size: %s",
          api->last_error());
    finch_plugin_buffer *empty = NULL;
    CHECK(api->alloc(dev, 0, &empty) == FINCH_OK, "zero-byte alloc");
    api->free(dev, empty);
}

static void test_fill_cast(void)
{
    for (int ti = 0; ti < 3; ti++) {
        finch_dtype t = float_types[ti];
        finch_dptr p = alloc_bytes(11 * elem_size(t));
        float out[11];
        CHECK(api->fill(dev, NULL, p, t, 11, -2.5f) == FINCH_OK, "fill %s", float_type_names[ti]);
        download(p, 11, t, out);
        int ok = 1;
        for (int i = 0; i < 11; i++) ok &= out[i] == -2.5f;
        CHECK(ok, "fill value %s", float_type_names[ti]);
    }
    finch_dptr ip = alloc_bytes(5 * 4);
    int32_t iv[5];
    CHECK(api->fill(dev, NULL, ip, FINCH_DTYPE_I32, 5, -7.0f) == FINCH_OK, "fill i32");
    api->read(dev, NULL, ip, iv, sizeof iv);
    CHECK(iv[0] == -7 && iv[4] == -7, "fill i32 value");

    /* f32 -> bf16 rounds to nearest even: 1 + 2^-8 is a tie (-> 1), 1 + 3*2^-8 a tie up (-> 1 + 2^-6) */
    float vals[6] = {1.0f + 1.0f / 256, 1.0f + 3.0f / 256, 1.0f + 1.5f / 256, -3.0f, 65519.0f, 1e-6f};
    finch_dptr src = upload(vals, 6, FINCH_DTYPE_F32);
    finch_dptr bf = alloc_bytes(12), hf = alloc_bytes(12), back = alloc_bytes(24);
    CHECK(api->cast(dev, NULL, 6, FINCH_DTYPE_F32, src, FINCH_DTYPE_BF16, bf) == FINCH_OK, "cast to bf16");
    uint16_t h[6];
    api->read(dev, NULL, bf, h, sizeof h);
    CHECK(h[0] == 0x3f80 && h[1] == 0x3f82 && h[2] == 0x3f81 && h[3] == 0xc040, "bf16 rne: %04x %04x %04x %04x",
          h[0], h[1], h[2], h[3]);
    CHECK(api->cast(dev, NULL, 6, FINCH_DTYPE_F32, src, FINCH_DTYPE_F16, hf) == FINCH_OK, "cast to f16");
    api->read(dev, NULL, hf, h, sizeof h);
    CHECK(h[0] == 0x3c00 + 4 && h[3] == 0xc200 && h[4] == 0x7bff, "f16: %04x %04x %04x", h[0], h[3], h[4]);
    float out[6];
    CHECK(api->cast(dev, NULL, 6, FINCH_DTYPE_F16, hf, FINCH_DTYPE_F32, back) == FINCH_OK, "cast f16 to f32");
    download(back, 6, FINCH_DTYPE_F32, out);
    CHECK(out[3] == -3.0f && fabsf(out[5] - 1e-6f) < 6e-8f, "f16 back: %g %g", out[3], out[5]);
    CHECK(api->cast(dev, NULL, 6, FINCH_DTYPE_BF16, bf, FINCH_DTYPE_F16, hf) == FINCH_OK, "bf16 to f16");
    CHECK(api->cast(dev, NULL, 5, FINCH_DTYPE_F32, src, FINCH_DTYPE_I32, ip) == FINCH_ERR_UNSUPPORTED,
          "float to i32 unsupported");

    /* copy_2d: a 3x4 window of a 5x6 matrix into a 3x4 block with ld 7 */
    float m[30], o[21] = {0};
    for (int i = 0; i < 30; i++) m[i] = (float)i;
    finch_dptr ms = upload(m, 30, FINCH_DTYPE_F32), md = upload(o, 21, FINCH_DTYPE_F32);
    finch_dptr win = {ms.buf, (6 + 1) * 4};
    CHECK(api->copy_2d(dev, NULL, FINCH_DTYPE_F32, 3, 4, win, 6, md, 7) == FINCH_OK, "copy_2d");
    download(md, 21, FINCH_DTYPE_F32, o);
    CHECK(o[0] == 7 && o[3] == 10 && o[4] == 0 && o[7] == 13 && o[17] == 22 && o[18] == 0, "copy_2d values");

    /* copy_rows: rows 0, 1, 2, 3 of the 5x6 matrix (2 columns) to rows 4, 0, -1 (skipped), 9 (past the
     * 21 floats at ld 3: skipped) of a block with ld 3 */
    float r[21] = {0};
    int32_t places[4] = {4, 0, -1, 9};
    finch_dptr rd = upload(r, 21, FINCH_DTYPE_F32), pd = {NULL, 0};
    CHECK(api->alloc(dev, sizeof places, &pd.buf) == FINCH_OK && api->write(dev, NULL, pd, places, sizeof places) == FINCH_OK, "rows");
    CHECK(api->copy_rows(dev, NULL, FINCH_DTYPE_F32, 4, 2, ms, 6, pd, rd, 3) == FINCH_OK, "copy_rows");
    download(rd, 21, FINCH_DTYPE_F32, r);
    int others_zero = 1;
    for (int i = 0; i < 21; i++)
        if (i != 0 && i != 1 && i != 12 && i != 13) others_zero &= r[i] == 0;
    CHECK(r[12] == 0 && r[13] == 1 && r[0] == 6 && r[1] == 7 && others_zero, "copy_rows values: %g %g %g %g", r[12], r[13], r[0], r[1]);
    CHECK(api->copy_rows(dev, NULL, FINCH_DTYPE_F32, 6, 2, ms, 6, pd, rd, 3) == FINCH_ERR_INVALID_ARGUMENT, "copy_rows: rows overrun");
    api->free(dev, pd.buf);
}

int main(void)
{
    cpu_test_begin();
    test_table();
    test_device();
    test_memory();
    test_fill_cast();
    return cpu_test_end();
}
