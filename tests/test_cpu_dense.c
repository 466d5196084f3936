/* CPU backend: gemm (transposes, strides, batches, alpha/beta, storage types, panelled paths),
 * axpby, sum_squares, and 4-bit qmatmul against hand-computed and dequantised references. */
#include "tests/test_cpu_common.h"

static const float nf4[16] = {-1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
                              -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
                              0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f,
                              0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f,
                              0.7229568362236023f, 1.0f};
static const float fp4[16] = {0, 0.0625f / 12, 8.0f / 12, 1.0f, 4.0f / 12, 6.0f / 12, 2.0f / 12, 3.0f / 12,
                              -0.0f, -0.0625f / 12, -8.0f / 12, -1.0f, -4.0f / 12, -6.0f / 12, -2.0f / 12, -3.0f / 12};

static void gemm_case(int ta, int tb, int64_t m, int64_t n, int64_t k, int64_t batch, finch_dtype at,
                      finch_dtype bt, finch_dtype ct, float alpha, float beta, double tol)
{
    int64_t ar = ta ? k : m, ac = ta ? m : k, br = tb ? n : k, bc = tb ? k : n;
    int64_t lda = ac + 3, ldb = bc + 1, ldc = n + 2;
    int64_t sa = ar * lda + 5, sb = br * ldb, sc = m * ldc + 1;
    float *a = rnd((size_t)(sa * batch), 11), *b = rnd((size_t)(sb * batch), 12), *c = rnd((size_t)(sc * batch), 13);
    round_to(at, a, (size_t)(sa * batch));
    round_to(bt, b, (size_t)(sb * batch));
    round_to(ct, c, (size_t)(sc * batch));
    double *ref = malloc(sizeof(double) * (size_t)(sc * batch));
    float *got = malloc(sizeof(float) * (size_t)(sc * batch));
    for (int64_t i = 0; i < sc * batch; i++) ref[i] = c[i];
    for (int64_t q = 0; q < batch; q++)
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = 0; j < n; j++) {
                double s = 0;
                for (int64_t p = 0; p < k; p++) {
                    double av = ta ? a[q * sa + p * lda + i] : a[q * sa + i * lda + p];
                    double bv = tb ? b[q * sb + j * ldb + p] : b[q * sb + p * ldb + j];
                    s += av * bv;
                }
                double *r = &ref[q * sc + i * ldc + j];
                *r = alpha * s + beta * *r;
            }
    finch_gemm_desc d = {.trans_a = ta, .trans_b = tb, .m = m, .n = n, .k = k, .a_type = at, .b_type = bt,
                         .c_type = ct, .a = upload(a, (size_t)(sa * batch), at), .b = upload(b, (size_t)(sb * batch), bt),
                         .c = upload(c, (size_t)(sc * batch), ct), .lda = lda, .ldb = ldb, .ldc = ldc,
                         .stride_a = sa, .stride_b = sb, .stride_c = sc, .batch = batch, .alpha = alpha, .beta = beta};
    int rc = api->gemm(dev, NULL, &d);
    CHECK(rc == FINCH_OK, "gemm: %s", api->last_error());
    download(d.c, (size_t)(sc * batch), ct, got);
    double err = rel_err_d(got, ref, (size_t)(sc * batch));
    CHECK(err < tol, "gemm ta %d tb %d m %lld n %lld k %lld batch %lld types %d %d %d: rel err %.3g", ta, tb,
          (long long)m, (long long)n, (long long)k, (long long)batch, at, bt, ct, err);
    free(a), free(b), free(c), free(ref), free(got);
    free_buffers();
}

static void test_gemm(void)
{
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            gemm_case(ta, tb, 7, 13, 5, 1, FINCH_DTYPE_F32, FINCH_DTYPE_F32, FINCH_DTYPE_F32, 1.0f, 0.0f, 1e-6);
            gemm_case(ta, tb, 7, 13, 5, 3, FINCH_DTYPE_F32, FINCH_DTYPE_F32, FINCH_DTYPE_F32, 0.7f, -0.4f, 1e-6);
            for (int ti = 1; ti < 3; ti++) {
                finch_dtype t = float_types[ti];
                /* inputs are exact in storage; only the stored result is rounded */
                gemm_case(ta, tb, 7, 13, 5, 2, t, t, t, 1.3f, 0.5f, float_type_tol[ti]);
                gemm_case(ta, tb, 9, 4, 11, 1, t, FINCH_DTYPE_F32, FINCH_DTYPE_F32, 1.0f, 1.0f, 1e-6);
            }
        }
    /* larger than one panel in m and k (512), mixed storage, with both transposes */
    gemm_case(1, 1, 600, 37, 530, 1, FINCH_DTYPE_BF16, FINCH_DTYPE_BF16, FINCH_DTYPE_F32, 1.0f, 0.5f, 1e-5);
    gemm_case(0, 0, 530, 21, 600, 1, FINCH_DTYPE_F16, FINCH_DTYPE_F32, FINCH_DTYPE_BF16, 0.5f, 0.0f, 1.5e-2);
    /* k == 0 scales C */
    gemm_case(0, 0, 3, 4, 0, 1, FINCH_DTYPE_F32, FINCH_DTYPE_F32, FINCH_DTYPE_F32, 1.0f, 0.25f, 1e-7);
    gemm_case(0, 0, 3, 4, 0, 1, FINCH_DTYPE_BF16, FINCH_DTYPE_F32, FINCH_DTYPE_BF16, 1.0f, 0.5f, 1e-7);
}

static void test_axpby_sum_squares(void)
{
    for (int ti = 0; ti < 3; ti++) {
        finch_dtype t = float_types[ti];
        size_t n = 3000;
        float *x = rnd(n, 21), *y = rnd(n, 22), *got = fzeros(n);
        round_to(t, x, n);
        round_to(t, y, n);
        double *ref = malloc(n * sizeof(double));
        for (size_t i = 0; i < n; i++) ref[i] = 0.5 * x[i] - 2.0 * y[i];
        finch_dptr xp = upload(x, n, t), yp = upload(y, n, t), absent = {0};
        CHECK(api->axpby(dev, NULL, (int64_t)n, t, 0.5f, xp, -2.0f, yp, yp) == FINCH_OK, "axpby in place");
        download(yp, n, t, got);
        CHECK(rel_err_d(got, ref, n) < float_type_tol[ti], "axpby %s", float_type_names[ti]);
        CHECK(api->axpby(dev, NULL, (int64_t)n, t, 3.0f, xp, 1.0f, absent, xp) == FINCH_OK, "axpby without y");
        download(xp, n, t, got);
        for (size_t i = 0; i < n; i++) ref[i] = 3.0 * x[i];
        CHECK(rel_err_d(got, ref, n) < float_type_tol[ti], "axpby y absent %s", float_type_names[ti]);
        double ss = 0;
        for (size_t i = 0; i < n; i++) ss += (double)got[i] * got[i];
        float init = 1.5f, acc;
        finch_dptr sp = upload(&init, 1, FINCH_DTYPE_F32);
        CHECK(api->sum_squares(dev, NULL, (int64_t)n, t, xp, sp) == FINCH_OK, "sum_squares");
        download(sp, 1, FINCH_DTYPE_F32, &acc);
        CHECK(fabs(acc - (ss + 1.5)) < 1e-5 * ss, "sum_squares accumulates: %g vs %g", acc, ss + 1.5);
        free(x), free(y), free(got), free(ref);
        free_buffers();
    }
}

/* packs nibbles, first element in the high nibble */
static unsigned char *pack(const int *nib, size_t n)
{
    unsigned char *q = calloc((n + 1) / 2 + 1, 1);
    for (size_t e = 0; e < n; e++) q[e / 2] |= (unsigned char)(e % 2 == 0 ? nib[e] << 4 : nib[e]);
    return q;
}

static void test_nf4_hand(void)
{
    /* W [2, 3], blocksize 4: block 0 = elements 0..3 (straddles the row), block 1 = elements 4, 5 */
    int nib[6] = {15, 0, 7, 8, 1, 14};
    unsigned char bytes[3] = {0xF0, 0x78, 0x1E};
    unsigned char *q = pack(nib, 6);
    CHECK(memcmp(q, bytes, 3) == 0, "packing: first element in the high nibble");
    float absmax[2] = {2.0f, 0.5f};
    float expect[2][3] = {{2.0f, -2.0f, 0.0f}, {0.07958029955625534f * 2, -0.6961928009986877f * 0.5f,
                                                 0.7229568362236023f * 0.5f}};
    finch_weight w = {.dtype = FINCH_DTYPE_NF4, .data = upload_raw(bytes, 3), .absmax = upload(absmax, 2, FINCH_DTYPE_F32),
                      .code = upload(nf4, 16, FINCH_DTYPE_F32), .blocksize = 4};
    float eye[9] = {1, 0, 0, 0, 1, 0, 0, 0, 1}, y[6];
    finch_dptr xp = upload(eye, 9, FINCH_DTYPE_F32), yp = zeros(6, FINCH_DTYPE_F32);
    CHECK(api->qmatmul_forward(dev, NULL, &w, 2, 3, 3, FINCH_DTYPE_F32, xp, 3, yp, 2, 0.0f) == FINCH_OK,
          "qmatmul_forward: %s", api->last_error());
    download(yp, 6, FINCH_DTYPE_F32, y);   /* y = I W^T: y[i][o] = W[o][i] */
    int ok = 1;
    for (int o = 0; o < 2; o++)
        for (int i = 0; i < 3; i++) ok &= y[i * 2 + o] == expect[o][i];
    CHECK(ok, "hand dequant: %g %g %g / %g %g %g", y[0], y[2], y[4], y[1], y[3], y[5]);
    /* backward: dx = dy W with dy = I2 gives the rows of W */
    float eye2[4] = {1, 0, 0, 1}, dx[6];
    finch_dptr dyp = upload(eye2, 4, FINCH_DTYPE_F32), dxp = zeros(6, FINCH_DTYPE_F32);
    CHECK(api->qmatmul_backward(dev, NULL, &w, 2, 3, 2, FINCH_DTYPE_F32, dyp, 2, dxp, 3, 0.0f) == FINCH_OK,
          "qmatmul_backward");
    download(dxp, 6, FINCH_DTYPE_F32, dx);
    ok = 1;
    for (int o = 0; o < 2; o++)
        for (int i = 0; i < 3; i++) ok &= dx[o * 3 + i] == expect[o][i];
    CHECK(ok, "hand dequant backward");
    /* a short absmax is caught */
    w.absmax.offset = 4;
    CHECK(api->qmatmul_forward(dev, NULL, &w, 2, 3, 3, FINCH_DTYPE_F32, xp, 3, yp, 2, 0.0f) ==
              FINCH_ERR_INVALID_ARGUMENT, "absmax too short");
    free(q);
    free_buffers();
}

/* y = x deq(W)^T + beta y and dx = dy deq(W) + beta dx against a double reference. */
static void qmatmul_case(int64_t out, int64_t in, int64_t m, int64_t bs, const float *code, finch_dtype t,
                         double tol, unsigned long long seed)
{
    size_t n = (size_t)(out * in), blocks = (n + (size_t)bs - 1) / (size_t)bs;
    int *nib = malloc(n * sizeof(int));
    uint64_t s = seed;
    for (size_t e = 0; e < n; e++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        nib[e] = (int)(s >> 60);
    }
    unsigned char *q = pack(nib, n);
    float *absmax = rnd(blocks, seed + 1);
    for (size_t b = 0; b < blocks; b++) absmax[b] = 0.5f + fabsf(absmax[b]);
    double *wd = malloc(n * sizeof(double));
    for (size_t e = 0; e < n; e++) wd[e] = (double)code[nib[e]] * absmax[e / (size_t)bs];
    int64_t ldx = in + 1, ldy = out + 2;
    float *x = rnd((size_t)(m * ldx), seed + 2), *y = rnd((size_t)(m * ldy), seed + 3);
    round_to(t, x, (size_t)(m * ldx));
    round_to(t, y, (size_t)(m * ldy));
    double *ref = malloc(sizeof(double) * (size_t)(m * (ldy > ldx ? ldy : ldx)));
    float *got = malloc(sizeof(float) * (size_t)(m * (ldy > ldx ? ldy : ldx)));
    for (int64_t i = 0; i < m * ldy; i++) ref[i] = y[i];
    for (int64_t i = 0; i < m; i++)
        for (int64_t o = 0; o < out; o++) {
            double acc = 0;
            for (int64_t j = 0; j < in; j++) acc += x[i * ldx + j] * wd[o * in + j];
            ref[i * ldy + o] = acc + 0.5 * y[i * ldy + o];
        }
    finch_weight w = {.dtype = FINCH_DTYPE_NF4, .data = upload_raw(q, (n + 1) / 2),
                      .absmax = upload(absmax, blocks, FINCH_DTYPE_F32), .code = upload(code, 16, FINCH_DTYPE_F32),
                      .blocksize = bs};
    finch_dptr xp = upload(x, (size_t)(m * ldx), t), yp = upload(y, (size_t)(m * ldy), t);
    CHECK(api->qmatmul_forward(dev, NULL, &w, out, in, m, t, xp, ldx, yp, ldy, 0.5f) == FINCH_OK, "qmatmul_forward: %s",
          api->last_error());
    download(yp, (size_t)(m * ldy), t, got);
    double err = rel_err_d(got, ref, (size_t)(m * ldy));
    CHECK(err < tol, "qmatmul_forward out %lld in %lld bs %lld: rel err %.3g", (long long)out, (long long)in,
          (long long)bs, err);
    /* backward: dx = dy W + 0.5 dx, dy := y (rounded), dx := x */
    download(yp, (size_t)(m * ldy), t, y);
    for (int64_t i = 0; i < m * ldx; i++) ref[i] = x[i];
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < in; j++) {
            double acc = 0;
            for (int64_t o = 0; o < out; o++) acc += y[i * ldy + o] * wd[o * in + j];
            ref[i * ldx + j] = acc + 0.5 * x[i * ldx + j];
        }
    CHECK(api->qmatmul_backward(dev, NULL, &w, out, in, m, t, yp, ldy, xp, ldx, 0.5f) == FINCH_OK,
          "qmatmul_backward: %s", api->last_error());
    download(xp, (size_t)(m * ldx), t, got);
    err = rel_err_d(got, ref, (size_t)(m * ldx));
    CHECK(err < tol, "qmatmul_backward out %lld in %lld bs %lld: rel err %.3g", (long long)out, (long long)in,
          (long long)bs, err);
    free(nib), free(q), free(absmax), free(wd), free(x), free(y), free(ref), free(got);
    free_buffers();
}

static void test_qmatmul(void)
{
    qmatmul_case(3, 5, 4, 4, nf4, FINCH_DTYPE_F32, 1e-6, 1);      /* 15 elements: odd count, 4 blocks */
    qmatmul_case(13, 7, 5, 64, nf4, FINCH_DTYPE_F32, 1e-6, 2);    /* blocks straddle rows, last one short */
    qmatmul_case(13, 7, 5, 8, fp4, FINCH_DTYPE_F32, 1e-6, 3);     /* the code table is honoured */
    qmatmul_case(13, 7, 5, 64, nf4, FINCH_DTYPE_BF16, 1.5e-2, 4);
    qmatmul_case(13, 7, 5, 64, nf4, FINCH_DTYPE_F16, 2e-3, 5);
    qmatmul_case(1100, 1024, 2, 64, nf4, FINCH_DTYPE_F32, 1e-5, 6); /* several dequantised tiles */
}

int main(void)
{
    cpu_test_begin();
    test_gemm();
    test_axpby_sum_squares();
    test_nf4_hand();
    test_qmatmul();
    return cpu_test_end();
}
