/* NF4/FP4 quantisation against bitsandbytes' rules: hand-computed codes, exact ties, nibble order,
 * odd sizes, zero blocks, double quantisation, and quantise-on-load from safetensors. */
#include "backends/backend.h"
#include "core/half.h"
#include "core/nf4.h"
#include "core/safetensors.h"
#include "finch/finch.h"
#include "tests/testing.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

static int nibble(const uint8_t *p, int64_t i) { return (i & 1) ? (p[i / 2] & 15) : (p[i / 2] >> 4); }

/* bitsandbytes' NF4 values as printed by Python (doubles that are exactly the f32 values). */
static const double nf4_printed[16] = {
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
};

/* The pivots of bitsandbytes' dQuantizeNF4 decision tree, ascending: pivot k separates codes k and k+1. */
static const double nf4_pivots[15] = {
    -0.8480964004993439, -0.6106329262256622, -0.4599952697753906, -0.33967943489551544, -0.23460740596055984,
    -0.13791173323988914, -0.045525018125772476, 0.03979014977812767, 0.1202552504837513, 0.2035212516784668,
    0.2920137718319893, 0.3893125355243683, 0.5016634166240692, 0.6427869200706482, 0.8614784181118011,
};

static void test_tables(void)
{
    const float *nf4 = nf4_code_table(NF4_TYPE_NF4), *fp4 = nf4_code_table(NF4_TYPE_FP4);
    for (int i = 0; i < 16; i++) CHECK((double)nf4[i] == nf4_printed[i], "nf4[%d] = %.17g", i, (double)nf4[i]);
    CHECK(fp4[0] == 0 && !signbit(fp4[0]) && fp4[8] == 0 && signbit(fp4[8]), "fp4 +0 at code 0, -0 at code 8");
    CHECK(fp4[3] == 1.0f && fp4[11] == -1.0f && fp4[5] == 0.5f && fp4[15] == -0.25f, "fp4 magnitudes");
    CHECK(fp4[2] == 0.6666667f && fp4[6] == 0.1666667f && fp4[1] == 0.005208333f, "fp4 CUDA LUT values");
    float stored[16];
    nf4_stored_quant_map(NF4_TYPE_FP4, stored);
    CHECK(stored[2] == 8.0f / 12.0f && stored[9] == -0.0625f / 12.0f && stored[3] == 1.0f, "fp4 stored map is k/12");
    nf4_stored_quant_map(NF4_TYPE_NF4, stored);
    CHECK(!memcmp(stored, nf4, sizeof stored), "nf4 stored map is the table");
    CHECK(nf4_blocksize_valid(32) && nf4_blocksize_valid(64) && nf4_blocksize_valid(4096), "valid blocksizes");
    CHECK(!nf4_blocksize_valid(16) && !nf4_blocksize_valid(48) && !nf4_blocksize_valid(8192) && !nf4_blocksize_valid(0), "invalid blocksizes");
}

/* x exactly at a pivot takes the lower code, the next float up the upper one (absmax 1: no scaling). */
static void test_ties(void)
{
    const float *code = nf4_code_table(NF4_TYPE_NF4);
    for (int k = 0; k < 15; k++) {
        float t = (float)nf4_pivots[k];
        float w[3] = {1.0f, t, nextafterf(t, 2.0f)};
        uint8_t p[2];
        float a;
        CHECK(nf4_quantize(w, 3, 64, code, p, &a) == FINCH_OK, "quantize");
        CHECK(a == 1.0f, "absmax");
        CHECK(nibble(p, 0) == 15, "1.0 -> 15");
        CHECK(nibble(p, 1) == k, "pivot %d (%.9g) -> code %d, expected %d", k, (double)t, nibble(p, 1), k);
        CHECK(nibble(p, 2) == k + 1, "just above pivot %d -> code %d, expected %d", k, nibble(p, 2), k + 1);
        float below = nextafterf(t, -2.0f);
        w[2] = below;
        CHECK(nf4_quantize(w, 3, 64, code, p, &a) == FINCH_OK && nibble(p, 2) == k, "just below pivot %d", k);
    }
}

static void test_hand_block(void)
{
    const float *code = nf4_code_table(NF4_TYPE_NF4);
    /* absmax 2: normalised 1, .5, -.5, .1, 0, -0, -1, .7 -> 15, 12, 2, 8, 7, 7, 0, 14 */
    float w[8] = {2.0f, 1.0f, -1.0f, 0.2f, 0.0f, -0.0f, -2.0f, 1.4f};
    uint8_t p[4];
    float a;
    CHECK(nf4_quantize(w, 8, 64, code, p, &a) == FINCH_OK, "quantize");
    CHECK(a == 2.0f, "absmax %g", (double)a);
    CHECK(p[0] == 0xFC && p[1] == 0x28 && p[2] == 0x77 && p[3] == 0x0E, "packed %02x %02x %02x %02x", p[0], p[1], p[2], p[3]);
    float out[8];
    nf4_dequantize(p, &a, 8, 64, code, out);
    static const int q[8] = {15, 12, 2, 8, 7, 7, 0, 14};
    for (int i = 0; i < 8; i++) CHECK(out[i] == code[q[i]] * 2.0f, "dequant[%d] = %g", i, (double)out[i]);
    CHECK(out[4] == 0 && !signbit(out[5]), "-0.0 maps to code 7 (+0)");

    /* odd counts: the first element is the high nibble; the last low nibble is the code of 0.0 */
    float three[3] = {1.0f, -1.0f, 1.0f};
    CHECK(nf4_quantize(three, 3, 64, code, p, &a) == FINCH_OK && p[0] == 0xF0 && p[1] == 0xF7, "odd n: %02x %02x", p[0], p[1]);
    float one = -3.0f;
    CHECK(nf4_quantize(&one, 1, 32, code, p, &a) == FINCH_OK && p[0] == 0x07 && a == 3.0f, "n=1: %02x", p[0]);
    nf4_dequantize(p, &a, 1, 32, code, out);
    CHECK(out[0] == -3.0f, "n=1 dequant");
}

static void test_zero_and_partial_blocks(void)
{
    const float *code = nf4_code_table(NF4_TYPE_NF4);
    enum { N = 64 + 64 + 5 };
    float w[N], out[N], a[3];
    uint8_t p[(N + 1) / 2];
    testing_fill_random(w, N, 7);
    for (int i = 0; i < 64; i++) w[i] = (i & 1) ? -0.0f : 0.0f; /* block 0: zeros */
    w[128] = 0.25f; w[129] = -0.5f; w[130] = 0.125f; w[131] = 0; w[132] = 0.3f; /* block 2: 5 elements */
    CHECK(nf4_quantize(w, N, 64, code, p, a) == FINCH_OK, "quantize");
    CHECK(a[0] == 0.0f, "zero block absmax %g", (double)a[0]);
    int zero_bytes = 1;
    for (int i = 0; i < 32; i++) zero_bytes &= p[i] == 0x00;
    CHECK(zero_bytes, "zero block packs to 0x00 (0 * 1/0 is NaN -> lowest code, as bitsandbytes)");
    CHECK(a[2] == 0.5f, "partial block absmax over its 5 elements only: %g", (double)a[2]);
    /* block 2: .5, -1, .25, 0, .6 -> 12, 0, 10, 7, 13 (.6 > .50166); pad 7 */
    CHECK(p[64] == 0xC0 && p[65] == 0xA7 && p[66] == 0xD7, "partial block bytes %02x %02x %02x", p[64], p[65], p[66]);
    nf4_dequantize(p, a, N, 64, code, out);
    int ok = 1;
    for (int i = 0; i < 64; i++) ok &= out[i] == 0.0f && !isnan(out[i]);
    CHECK(ok, "zero block dequantises to zeros, no NaN");

    /* a last block of one zero, odd n: both nibbles from NaN -> 0x00 */
    float w2[65];
    testing_fill_random(w2, 64, 3);
    w2[64] = 0.0f;
    uint8_t p2[33];
    float a2[2];
    CHECK(nf4_quantize(w2, 65, 64, code, p2, a2) == FINCH_OK && a2[1] == 0.0f && p2[32] == 0x00, "last zero block: %02x", p2[32]);
}

/* Every blocksize, odd sizes, blocks straddling rows: absmax is the block max, each code is a
 * nearest one, and the error is at most half the widest gap of the table. */
static void test_random_properties(void)
{
    const float *code = nf4_code_table(NF4_TYPE_NF4);
    float maxgap = 0;
    for (int k = 0; k < 15; k++) maxgap = fmaxf(maxgap, code[k + 1] - code[k]);
    for (int64_t bs = 32; bs <= 4096; bs *= 2) {
        int64_t n = 3 * bs + 7, nb = nf4_n_blocks(n, bs);
        float *w = malloc((size_t)n * 4), *out = malloc((size_t)n * 4), *a = malloc((size_t)nb * 4);
        uint8_t *p = malloc((size_t)nf4_packed_bytes(n));
        testing_fill_random(w, (size_t)n, (unsigned long long)bs);
        for (int64_t i = 0; i < n; i++) w[i] *= 0.05f * (float)(1 + i % 7); /* uneven magnitudes */
        CHECK(nf4_quantize(w, n, bs, code, p, a) == FINCH_OK, "quantize bs %lld", (long long)bs);
        nf4_dequantize(p, a, n, bs, code, out);
        int absmax_ok = 1, nearest_ok = 1, bound_ok = 1;
        for (int64_t b = 0; b < nb; b++) {
            float m = 0;
            for (int64_t i = b * bs; i < n && i < (b + 1) * bs; i++) m = fmaxf(m, fabsf(w[i]));
            absmax_ok &= m == a[b];
        }
        for (int64_t i = 0; i < n; i++) {
            float ab = a[i / bs], x = w[i] * (1.0f / ab);
            int q = nibble(p, i);
            for (int j = 0; j < 16; j++) nearest_ok &= fabsf(x - code[q]) <= fabsf(x - code[j]) + 1e-7f;
            bound_ok &= fabsf(out[i] - w[i]) <= ab * maxgap * 0.5f * 1.0001f;
        }
        CHECK(absmax_ok, "bs %lld: absmax is the block max", (long long)bs);
        CHECK(nearest_ok, "bs %lld: codes are nearest", (long long)bs);
        CHECK(bound_ok, "bs %lld: |deq - w| <= absmax * maxgap / 2", (long long)bs);
        CHECK(testing_rel_err(out, w, (size_t)n) < 0.12, "bs %lld: relative error %g", (long long)bs, testing_rel_err(out, w, (size_t)n));
        free(w); free(out); free(a); free(p);
    }
}

static void test_bad_input(void)
{
    const float *code = nf4_code_table(NF4_TYPE_NF4);
    float w[70] = {0};
    uint8_t p[35];
    float a[3];
    CHECK(nf4_quantize(w, 70, 48, code, p, a) == FINCH_ERR_INVALID_ARGUMENT, "blocksize 48");
    CHECK(nf4_quantize(w, 70, 16, code, p, a) == FINCH_ERR_INVALID_ARGUMENT, "blocksize 16");
    CHECK(nf4_quantize(w, 70, 8192, code, p, a) == FINCH_ERR_INVALID_ARGUMENT, "blocksize 8192");
    CHECK(nf4_quantize(w, -1, 64, code, p, a) == FINCH_ERR_INVALID_ARGUMENT, "negative n");
    w[66] = NAN;
    CHECK(nf4_quantize(w, 70, 64, code, p, a) == FINCH_ERR_INVALID_ARGUMENT && strstr(finch_last_error(), "66") &&
              strstr(finch_last_error(), "NaN"), "NaN input: %s", finch_last_error());
    w[66] = INFINITY;
    CHECK(nf4_quantize(w, 70, 64, code, p, a) == FINCH_ERR_INVALID_ARGUMENT, "inf input");
    CHECK(nf4_quantize(w, 0, 64, code, p, a) == FINCH_OK, "n = 0 is fine");
}

static void test_fp4(void)
{
    const float *code = nf4_code_table(NF4_TYPE_FP4);
    /* decode: byte 0x3B = codes 3 (1.0) and 11 (-1.0); 0x26 = 2 (2/3) and 6 (1/6) */
    uint8_t p[2] = {0x3B, 0x26};
    float a = 3.0f, out[4];
    nf4_dequantize(p, &a, 4, 64, code, out);
    CHECK(out[0] == 3.0f && out[1] == -3.0f && out[2] == 0.6666667f * 3.0f && out[3] == 0.1666667f * 3.0f, "fp4 decode");
    /* nearest-value encode; +0 and -0 collapse to code 0 */
    float w[8] = {1.0f, -1.0f, 0.5f, -0.25f, 0.0f, -0.0f, 1e-9f, -1e-9f};
    uint8_t q[4];
    CHECK(nf4_quantize(w, 8, 64, code, q, &a) == FINCH_OK, "fp4 quantize");
    CHECK(q[0] == 0x3B && q[1] == 0x5F && q[2] == 0x00 && q[3] == 0x00, "fp4 codes %02x %02x %02x %02x", q[0], q[1], q[2], q[3]);
}

static void test_dynamic_map(void)
{
    float m[256];
    nf4_dynamic_map(m);
    int ascending = 1, symmetric = 1;
    for (int i = 0; i < 255; i++) ascending &= m[i] < m[i + 1];
    for (int i = 0; i < 127; i++) symmetric &= m[i] == -m[254 - i];
    CHECK(ascending, "strictly ascending");
    CHECK(symmetric, "negatives mirror positives");
    CHECK(m[127] == 0.0f && m[255] == 1.0f, "0 at 127, 1 at 255");
    /* decade i holds the 2^i midpoints of linspace(0.1, 1, 2^i + 1) times 10^(i-6) */
    static const struct { int index; double value; } hand[] = {
        {128, 0.55e-6}, {129, 0.325e-5}, {130, 0.775e-5}, {131, 0.2125e-4}, {134, 0.8875e-4},
        {254, 0.99296875}, {0, -0.99296875}, {191, 0.1 + 0.0140625 * 0.5}, {126, -0.55e-6},
    };
    for (size_t i = 0; i < sizeof hand / sizeof hand[0]; i++)
        CHECK(fabs(m[hand[i].index] - hand[i].value) <= 1e-6 * fabs(hand[i].value), "map[%d] = %.9g, expected %.9g",
              hand[i].index, (double)m[hand[i].index], hand[i].value);
    float s[256];
    memcpy(s, m, sizeof s);
    s[200] = nextafterf(s[200], 2.0f);
    int bad = -1;
    CHECK(nf4_map_matches(s, m, 256, &bad), "one ulp off is accepted");
    s[200] *= 1.0001f;
    CHECK(!nf4_map_matches(s, m, 256, &bad) && bad == 200, "1e-4 off is rejected at 200 (%d)", bad);
    memcpy(s, m, sizeof s);
    s[127] = 1e-30f;
    CHECK(!nf4_map_matches(s, m, 256, &bad) && bad == 127, "zero must be zero");
}

static void test_double_quant(void)
{
    float map[256];
    nf4_dynamic_map(map);
    /* two scales 1 and 3: offset 2, normalised -1 and 1 -> codes 0 (-0.99296875) and 255 (1.0) */
    float a2[2] = {1.0f, 3.0f}, nabs, off, dec[2];
    uint8_t q2[2];
    CHECK(nf4_double_quantize(a2, 2, 256, map, q2, &nabs, &off) == FINCH_OK, "dq");
    CHECK(off == 2.0f && nabs == 1.0f && q2[0] == 0 && q2[1] == 255, "dq hand case: off %g nabs %g q %d %d", (double)off, (double)nabs, q2[0], q2[1]);
    nf4_double_dequantize(q2, &nabs, off, 2, 256, map, dec);
    CHECK(dec[1] == 3.0f && dec[0] == map[0] + 2.0f, "dq decode %.9g %.9g", (double)dec[0], (double)dec[1]);

    /* one scale: everything equals the offset, nested absmax 0, decodes exactly, no NaN */
    float a1 = 0.7f;
    uint8_t q1;
    CHECK(nf4_double_quantize(&a1, 1, 256, map, &q1, &nabs, &off) == FINCH_OK && nabs == 0.0f && off == 0.7f, "single scale");
    nf4_double_dequantize(&q1, &nabs, off, 1, 256, map, dec);
    CHECK(dec[0] == 0.7f, "single scale decodes exactly: %.9g", (double)dec[0]);

    /* 1000 scales = 4 nested blocks, the last partial */
    enum { NB = 1000 };
    float a[NB], d[NB], na[4];
    uint8_t q[NB];
    testing_fill_random(a, NB, 11);
    for (int i = 0; i < NB; i++) a[i] = 0.02f + 0.01f * fabsf(a[i]) * (float)(1 + i / 256);
    CHECK(nf4_double_quantize(a, NB, 256, map, q, na, &off) == FINCH_OK, "dq 1000");
    double mean = 0;
    for (int i = 0; i < NB; i++) mean += a[i];
    CHECK(off == (float)(mean / NB), "offset is the mean");
    float m3 = 0;
    for (int i = 768; i < NB; i++) m3 = fmaxf(m3, fabsf(a[i] - off));
    CHECK(na[3] == m3, "partial nested block absmax");
    float maxgap = 0;
    for (int i = 0; i < 255; i++) maxgap = fmaxf(maxgap, map[i + 1] - map[i]);
    nf4_double_dequantize(q, na, off, NB, 256, map, d);
    int bound_ok = 1, nearest_ok = 1;
    for (int i = 0; i < NB; i++) {
        float nb = na[i / 256], x = (a[i] - off) * (1.0f / nb);
        bound_ok &= fabsf(d[i] - a[i]) <= nb * maxgap * 0.5f * 1.0001f + 2e-7f * fabsf(off);
        nearest_ok &= fabsf(x - map[q[i]]) <= fabsf(x - map[q[i] > 0 ? q[i] - 1 : 0]) + 1e-7f &&
                      fabsf(x - map[q[i]]) <= fabsf(x - map[q[i] < 255 ? q[i] + 1 : 255]) + 1e-7f;
    }
    CHECK(bound_ok, "dq error bound");
    CHECK(nearest_ok, "dq codes are nearest");
    CHECK(nf4_double_quantize(a, 0, 256, map, q, na, &off) == FINCH_ERR_INVALID_ARGUMENT, "no scales");
    CHECK(nf4_double_quantize(a, NB, 100, map, q, na, &off) == FINCH_ERR_INVALID_ARGUMENT, "nested blocksize 100");
}

/* Quantise-on-load equals quantising the converted tensor in one piece (across 64Ki chunks). */
static void test_quantize_on_load(void)
{
    enum { R = 300, C = 257, N = R * C, R2 = 33, C2 = 31 };
    float *f = malloc(N * 4), *conv = malloc(N * 4);
    uint16_t *bf = malloc(N * 2), *h = malloc(R2 * C2 * 2);
    testing_fill_random(f, N, 5);
    for (int i = 0; i < N; i++) bf[i] = finch_f32_to_bf16(f[i]);
    for (int i = 0; i < R2 * C2; i++) h[i] = finch_f32_to_f16(f[i] * 3.0f);
    int32_t ints[16] = {0};
    float *fnan = malloc(N * 4);
    memcpy(fnan, f, N * 4);
    fnan[70000] = NAN;
    st_entry e[] = {
        {.name = "w_bf16", .dtype = ST_BF16, .ndim = 2, .shape = {R, C}, .data = bf},
        {.name = "w_f32", .dtype = ST_F32, .ndim = 2, .shape = {R, C}, .data = f},
        {.name = "w_f16", .dtype = ST_F16, .ndim = 2, .shape = {R2, C2}, .data = h},
        {.name = "bad_i32", .dtype = ST_I32, .ndim = 2, .shape = {4, 4}, .data = ints},
        {.name = "vec", .dtype = ST_F32, .ndim = 1, .shape = {10}, .data = f},
        {.name = "w_nan", .dtype = ST_F32, .ndim = 2, .shape = {R, C}, .data = fnan},
    };
    char path[600];
    snprintf(path, sizeof path, "%s/nf4_load.safetensors", testing_tmp_dir());
    CHECK(st_write(path, e, 6, NULL) == FINCH_OK, "write: %s", finch_last_error());
    st_set *s = NULL;
    CHECK(st_set_open_file(path, &s) == FINCH_OK, "open: %s", finch_last_error());
    if (!s) goto out;
    const char *names[3] = {"w_bf16", "w_f32", "w_f16"};
    const finch_dtype dts[3] = {FINCH_DTYPE_BF16, FINCH_DTYPE_F32, FINCH_DTYPE_F16};
    for (int k = 0; k < 3; k++) {
        const st_tensor *t = st_set_find(s, names[k]);
        int64_t n = t->numel, bs = k == 2 ? 32 : 64, nb = nf4_n_blocks(n, bs);
        st_to_f32(t, conv);
        uint8_t *p = malloc((size_t)nf4_packed_bytes(n));
        float *a = malloc((size_t)nb * 4);
        nf4_quantize(conv, n, bs, nf4_code_table(NF4_TYPE_NF4), p, a);
        for (int dq = 0; dq < 2; dq++) {
            nf4_weight w;
            CHECK(nf4_quantize_from_set(s, names[k], NF4_TYPE_NF4, bs, dq, &w) == FINCH_OK, "%s: %s", names[k], finch_last_error());
            CHECK(w.rows == t->shape[0] && w.cols == t->shape[1] && w.blocksize == bs && w.dtype == dts[k] && w.nested == dq, "%s fields", names[k]);
            CHECK(w.packed && !memcmp(w.packed, p, (size_t)nf4_packed_bytes(n)), "%s dq=%d: packed equals one-piece quantisation", names[k], dq);
            if (!dq) CHECK(w.absmax && !memcmp(w.absmax, a, (size_t)nb * 4), "%s: absmax", names[k]);
            if (dq && w.nested) {
                float map[256], off, *na = malloc((size_t)nf4_n_blocks(nb, 256) * 4), *dec = malloc((size_t)nb * 4);
                uint8_t *q = malloc((size_t)nb);
                nf4_dynamic_map(map);
                nf4_double_quantize(a, nb, 256, map, q, na, &off);
                nf4_double_dequantize(q, na, off, nb, 256, map, dec);
                CHECK(w.nested_blocksize == 256 && w.nested_offset == off && !memcmp(w.qabsmax, q, (size_t)nb) &&
                          !memcmp(w.nested_code, map, sizeof map), "%s: nested state", names[k]);
                CHECK(!memcmp(w.absmax, dec, (size_t)nb * 4), "%s: absmax is the decoded double quantisation", names[k]);
                free(na); free(dec); free(q);
            }
            nf4_weight_free(&w);
        }
        free(p); free(a);
    }
    nf4_weight w;
    CHECK(nf4_quantize_from_set(s, "bad_i32", NF4_TYPE_NF4, 64, 0, &w) == FINCH_ERR_UNSUPPORTED &&
              strstr(finch_last_error(), "bad_i32") && strstr(finch_last_error(), "I32"), "i32: %s", finch_last_error());
    CHECK(nf4_quantize_from_set(s, "vec", NF4_TYPE_NF4, 64, 0, &w) == FINCH_ERR_INVALID_ARGUMENT && strstr(finch_last_error(), "vec"),
          "1-D: %s", finch_last_error());
    CHECK(nf4_quantize_from_set(s, "nope", NF4_TYPE_NF4, 64, 0, &w) == FINCH_ERR_FORMAT && strstr(finch_last_error(), "nope"),
          "missing: %s", finch_last_error());
    CHECK(nf4_quantize_from_set(s, "w_f32", NF4_TYPE_NF4, 100, 0, &w) == FINCH_ERR_INVALID_ARGUMENT, "bad blocksize");
    CHECK(nf4_quantize_from_set(s, "w_nan", NF4_TYPE_NF4, 64, 0, &w) == FINCH_ERR_INVALID_ARGUMENT &&
              strstr(finch_last_error(), "w_nan") && strstr(finch_last_error(), "element 70000"), "NaN: %s", finch_last_error());
    CHECK(w.packed == NULL && w.absmax == NULL, "failed load leaves nothing allocated");
    st_set_close(s);
out:
    remove(path);
    free(f); free(conv); free(bf); free(h); free(fnan);
}

static long max_rss_kib(void)
{
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return u.ru_maxrss;
}

static uint16_t bf16_pattern(int64_t i) { return finch_f32_to_bf16((float)((i * 2654435761u) % 2001) / 1000.0f - 1.0f); }

static int child_status(pid_t pid)
{
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) != pid) return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* Quantise-on-load of a 32 MiB bf16 tensor grows the peak resident set by about its 9.3 MiB output
 * (plus a few MiB of allocator and page-accounting slack), not by the f32 copy (64 MiB) nor by the
 * file's pages (32 MiB), and the pages it dropped read back intact. Runs in child processes (first
 * thing in main) so that nothing else has raised the peak. */
static void test_bounded_memory(void)
{
    enum { R = 2048, C = 8192 };
    char path[600];
    snprintf(path, sizeof path, "%s/nf4_memory.safetensors", testing_tmp_dir());
    pid_t pid = fork();
    if (pid == 0) {
        uint16_t *bf = malloc((size_t)R * C * 2);
        if (!bf) _exit(1);
        for (int64_t i = 0; i < (int64_t)R * C; i++) bf[i] = bf16_pattern(i);
        st_entry e = {.name = "w", .dtype = ST_BF16, .ndim = 2, .shape = {R, C}, .data = bf};
        _exit(st_write(path, &e, 1, NULL) == FINCH_OK ? 0 : 1);
    }
    CHECK(child_status(pid) == 0, "writing the test tensor");
    pid = fork();
    if (pid == 0) {
        st_set *s = NULL;
        if (st_set_open_file(path, &s)) _exit(2);
        long before = max_rss_kib();
        nf4_weight w;
        if (nf4_quantize_from_set(s, "w", NF4_TYPE_NF4, 64, 1, &w)) _exit(3);
        long grew = max_rss_kib() - before;
        long output = (long)((int64_t)R * C / 2 + (int64_t)R * C / 64 * 5) / 1024;
        if (grew > output + 8 * 1024) {
            fprintf(stderr, "peak resident set grew by %ld KiB for %ld KiB of output\n", grew, output);
            _exit(4);
        }
        const uint16_t *data = st_set_find(s, "w")->data; /* the dropped pages read back from the file */
        for (int64_t i = 0; i < (int64_t)R * C; i += 997)
            if (data[i] != bf16_pattern(i)) _exit(5);
        _exit(w.packed[R * C / 2 - 1] == 0 && w.packed[0] == 0 ? 6 : 0);
    }
    int st = child_status(pid);
    CHECK(st == 0, "bounded-memory child failed with %d (2 open, 3 quantise, 4 peak memory, 5 dropped pages read back wrong, 6 no output)", st);
    remove(path);
}

/* A tensor of many NF4_CHUNK pieces (several rounds on the host's threads) quantises to what one
 * nf4_quantize call over it gives, bit for bit, on 1, 2 and 3 threads; a NaN far into it is reported
 * with its element index. */
static void test_threaded_quantize(void)
{
    enum { ROWS = 37, COLS = 65536 };   /* 37 pieces of 2^16: 5 rounds on 2 threads */
    int64_t n = (int64_t)ROWS * COLS;
    float *f = malloc((size_t)n * 4), *a_ref = malloc((size_t)(n / 64) * 4);
    uint16_t *bf = malloc((size_t)n * 2);
    uint8_t *p_ref = malloc((size_t)n / 2);
    testing_fill_random(f, (size_t)n, 77);
    for (int64_t i = 0; i < n; i++) {
        bf[i] = finch_f32_to_bf16(f[i] * (float)(1 + i % 5000));
        f[i] = finch_bf16_to_f32(bf[i]);
    }
    CHECK(nf4_quantize(f, n, 64, nf4_code_table(NF4_TYPE_NF4), p_ref, a_ref) == FINCH_OK, "reference: %s", finch_last_error());
    st_tensor t = {.name = "big", .dtype = ST_BF16, .ndim = 2, .shape = {ROWS, COLS}, .numel = n, .data = bf, .nbytes = (size_t)n * 2};
    for (int threads = 1; threads <= 3; threads++) {
        finch_cpu_set_threads(threads);
        nf4_weight w;
        int rc = nf4_quantize_st_tensor(&t, NF4_TYPE_NF4, 64, 0, &w);
        CHECK(rc == FINCH_OK && !memcmp(w.packed, p_ref, (size_t)n / 2) && !memcmp(w.absmax, a_ref, (size_t)(n / 64) * 4),
              "%d threads: the pieces differ from one nf4_quantize over the tensor (%s)", threads, rc ? finch_last_error() : "");
        if (!rc) nf4_weight_free(&w);
    }
    bf[(int64_t)33 * COLS + 12345] = 0x7fc0; /* NaN in piece 33, the last round */
    nf4_weight w;
    CHECK(nf4_quantize_st_tensor(&t, NF4_TYPE_NF4, 64, 1, &w) == FINCH_ERR_INVALID_ARGUMENT && strstr(finch_last_error(), "big") &&
              strstr(finch_last_error(), "element 2175033") && strstr(finch_last_error(), "NaN") && !w.packed && !w.absmax,
          "NaN in a late piece: %s", finch_last_error());
    finch_cpu_set_threads(0);
    free(f);
    free(a_ref);
    free(bf);
    free(p_ref);
}

int main(void)
{
    test_bounded_memory();
    test_tables();
    test_ties();
    test_hand_block();
    test_zero_and_partial_blocks();
    test_random_properties();
    test_bad_input();
    test_fp4();
    test_dynamic_map();
    test_double_quant();
    test_quantize_on_load();
    test_threaded_quantize();
    return testing_finish();
}
