/* Dense math: matrix products through OpenBLAS cblas_sgemm, axpby, sum_squares.
 * bf16/f16 operands are converted to f32 a panel at a time (at most PANEL_M x PANEL_K of A,
 * PANEL_K x PANEL_N of B and PANEL_M x PANEL_N of C), never as whole copies. */
#include "backends/cpu/cpu.h"

#include <cblas.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>

enum { PANEL_M = 512, PANEL_N = 4096, PANEL_K = 512 };

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* The f32 view of op(X)[r0:r0+rows, c0:c0+cols], as (pointer, ld, transposed) for sgemm. */
static const float *operand_panel(cpu_mat x, int64_t r0, int64_t c0, int64_t rows, int64_t cols, float *scratch,
                                  int64_t *ld)
{
    if (x.trans) /* stored [cols of op, rows of op] */
        return cpu_load_block(x.type, cpu_at(x.type, x.p, c0 * x.ld + r0), cols, rows, x.ld, scratch, ld);
    return cpu_load_block(x.type, cpu_at(x.type, x.p, r0 * x.ld + c0), rows, cols, x.ld, scratch, ld);
}

/* One cblas_sgemm, row-major, cut into column or row blocks of C that the backend's threads compute
 * at once (OpenBLAS itself runs one thread per call: cpu_parallel.c says why). */
typedef struct sgemm_job {
    int ta, tb, split_rows;
    int64_t m, n, k, lda, ldb, ldc;
    float alpha, beta;
    const float *a, *b;
    float *c;
} sgemm_job;

enum { SGEMM_ALIGN = 16 };   /* block edges, in rows or columns, fall on multiples of this */

static void sgemm_blocks(void *ctx, int64_t u0, int64_t u1, int piece)
{
    const sgemm_job *g = ctx;
    int64_t e0 = u0 * SGEMM_ALIGN, e1 = min64(u1 * SGEMM_ALIGN, g->split_rows ? g->m : g->n);
    const float *a = g->a, *b = g->b;
    float *c = g->c;
    int64_t m = g->m, n = g->n;
    if (g->split_rows) {   /* rows e0..e1 of C and of op(A) */
        a += g->ta ? e0 : e0 * g->lda;
        c += e0 * g->ldc;
        m = e1 - e0;
    } else {               /* columns e0..e1 of C and of op(B) */
        b += g->tb ? e0 * g->ldb : e0;
        c += e0;
        n = e1 - e0;
    }
    cblas_sgemm(CblasRowMajor, g->ta ? CblasTrans : CblasNoTrans, g->tb ? CblasTrans : CblasNoTrans, (int)m, (int)n,
                (int)g->k, g->alpha, a, (int)g->lda, b, (int)g->ldb, g->beta, c, (int)g->ldc);
}

static void sgemm(int ta, int tb, int64_t m, int64_t n, int64_t k, float alpha, const float *a, int64_t lda,
                  const float *b, int64_t ldb, float beta, float *c, int64_t ldc)
{
    sgemm_job g = {ta, tb, m >= n, m, n, k, lda, ldb, ldc, alpha, beta, a, b, c};
    int64_t units = ((g.split_rows ? m : n) + SGEMM_ALIGN - 1) / SGEMM_ALIGN;
    cpu_parallel_for(units, m * n * k > (1 << 18), &g, sgemm_blocks);
}

static void scale_block(float *c, int64_t ldc, int64_t m, int64_t n, float beta)
{
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) c[i * ldc + j] = beta == 0 ? 0 : beta * c[i * ldc + j];
}

int cpu_gemm(int64_t m, int64_t n, int64_t k, float alpha, cpu_mat a, cpu_mat b, float beta, finch_dtype c_type,
             void *c, int64_t ldc)
{
    if (m <= 0 || n <= 0) return FINCH_OK;
    /* BLAS wants ld >= stored columns even for a single stored row, where ld is otherwise unused. */
    int64_t a_cols = a.trans ? m : k, b_cols = b.trans ? k : n;
    if (a.ld < a_cols) a.ld = a_cols;
    if (b.ld < b_cols) b.ld = b_cols;
    if (ldc < n) ldc = n;
    if (a.type == FINCH_DTYPE_F32 && b.type == FINCH_DTYPE_F32 && c_type == FINCH_DTYPE_F32) {
        if (k <= 0) {
            scale_block(c, ldc, m, n, beta);
            return FINCH_OK;
        }
        sgemm(a.trans, b.trans, m, n, k, alpha, a.p, a.ld, b.p, b.ld, beta, c, ldc);
        return FINCH_OK;
    }
    int64_t pm = min64(m, PANEL_M), pn = min64(n, PANEL_N), pk = min64(k > 0 ? k : 1, PANEL_K);
    size_t floats = (size_t)(pm * pk + pk * pn + pm * pn);
    float *scratch = malloc(floats * sizeof(float));
    if (!scratch) return cpu_oom(floats * sizeof(float), "gemm panels");
    float *sa = scratch, *sb = sa + pm * pk, *sc = sb + pk * pn;
    for (int64_t n0 = 0; n0 < n; n0 += pn) {
        int64_t nn = min64(pn, n - n0);
        for (int64_t m0 = 0; m0 < m; m0 += pm) {
            int64_t mm = min64(pm, m - m0), ldcp;
            void *cblock = cpu_at(c_type, c, m0 * ldc + n0);
            float *cp = cpu_out_block(c_type, cblock, ldc, sc, &ldcp);
            if (cp == sc) {
                if (beta != 0) cpu_load_block(c_type, cblock, mm, nn, ldc, sc, &ldcp);
                else ldcp = nn;
            }
            if (k <= 0) scale_block(cp, ldcp, mm, nn, beta);
            for (int64_t k0 = 0; k0 < k; k0 += pk) {
                int64_t kk = min64(pk, k - k0), lda, ldb;
                const float *ap = operand_panel(a, m0, k0, mm, kk, sa, &lda);
                const float *bp = operand_panel(b, k0, n0, kk, nn, sb, &ldb);
                sgemm(a.trans, b.trans, mm, nn, kk, alpha, ap, lda, bp, ldb, k0 == 0 ? beta : 1.0f, cp, ldcp);
            }
            cpu_store_block(c_type, cp, ldcp, mm, nn, cblock, ldc);
        }
    }
    free(scratch);
    return FINCH_OK;
}

int cpu_gemm_entry(finch_plugin_device *dev, finch_plugin_stream *s, const finch_gemm_desc *d)
{
    if (!d) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "cpu gemm: descriptor is NULL");
    if (d->m < 0 || d->n < 0 || d->k < 0 || d->batch < 1)
        return finch_error(FINCH_ERR_INVALID_ARGUMENT,
                           "cpu gemm: bad shape m %" PRId64 " n %" PRId64 " k %" PRId64 " batch %" PRId64, d->m,
                           d->n, d->k, d->batch);
    if (d->m > INT32_MAX || d->n > INT32_MAX || d->k > INT32_MAX || d->lda > INT32_MAX || d->ldb > INT32_MAX ||
        d->ldc > INT32_MAX)
        return finch_error(FINCH_ERR_UNSUPPORTED, "cpu gemm: dimensions beyond 2^31 are not supported");
    int rc = cpu_check_float(d->a_type, "gemm: a");
    if (!rc) rc = cpu_check_float(d->b_type, "gemm: b");
    if (!rc) rc = cpu_check_float(d->c_type, "gemm: c");
    if (rc) return rc;
    void *a = NULL, *b = NULL, *c;
    int64_t ar = d->trans_a ? d->k : d->m, ac = d->trans_a ? d->m : d->k;
    int64_t br = d->trans_b ? d->n : d->k, bc = d->trans_b ? d->k : d->n;
    int need_ab = d->m && d->n && d->k;
    if (need_ab) {
        rc = cpu_matrix_batch(d->a, d->a_type, d->batch, d->stride_a, ar, ac, d->lda, "gemm: a", &a);
        if (!rc) rc = cpu_matrix_batch(d->b, d->b_type, d->batch, d->stride_b, br, bc, d->ldb, "gemm: b", &b);
        if (!rc && (!a || !b)) rc = finch_error(FINCH_ERR_INVALID_ARGUMENT, "cpu gemm: a or b is absent");
    }
    if (!rc) rc = cpu_matrix_batch(d->c, d->c_type, d->batch, d->stride_c, d->m, d->n, d->ldc, "gemm: c", &c);
    if (!rc && !c && d->m && d->n) rc = finch_error(FINCH_ERR_INVALID_ARGUMENT, "cpu gemm: c is absent");
    if (rc) return rc;
    for (int64_t i = 0; i < d->batch && !rc; i++) {
        cpu_mat am = {d->a_type, need_ab ? cpu_at(d->a_type, a, i * d->stride_a) : NULL, d->lda, d->trans_a};
        cpu_mat bm = {d->b_type, need_ab ? cpu_at(d->b_type, b, i * d->stride_b) : NULL, d->ldb, d->trans_b};
        rc = cpu_gemm(d->m, d->n, need_ab ? d->k : 0, d->alpha, am, bm, d->beta, d->c_type,
                      cpu_at(d->c_type, c, i * d->stride_c), d->ldc);
    }
    return rc;
}

enum { CHUNK = 1024 };

/* A vector operation, cut into CHUNK-element pieces for the chunk bodies below. */
typedef struct vector_job {
    int64_t n;
    finch_dtype dtype;
    float alpha, beta;
    void *x, *y, *out;
    double *partial;   /* sum_squares: one sum per piece */
} vector_job;

static void axpby_chunks(void *ctx, int64_t c0, int64_t c1, int piece)
{
    const vector_job *v = ctx;
    finch_dtype dtype = v->dtype;
    for (int64_t ci = c0; ci < c1; ci++) {
        float xb[CHUNK], yb[CHUNK];
        int64_t i0 = ci * CHUNK, len = min64(CHUNK, v->n - i0);
        cpu_load(dtype, cpu_at(dtype, v->x, i0), len, xb);
        if (v->y) {
            cpu_load(dtype, cpu_at(dtype, v->y, i0), len, yb);
            for (int64_t i = 0; i < len; i++) xb[i] = v->alpha * xb[i] + v->beta * yb[i];
        } else {
            for (int64_t i = 0; i < len; i++) xb[i] = v->alpha * xb[i];
        }
        cpu_store(dtype, xb, len, cpu_at(dtype, v->out, i0));
    }
}

static void sum_squares_chunks(void *ctx, int64_t c0, int64_t c1, int piece)
{
    const vector_job *v = ctx;
    double total = 0;
    for (int64_t ci = c0; ci < c1; ci++) {
        float xb[CHUNK];
        int64_t i0 = ci * CHUNK, len = min64(CHUNK, v->n - i0);
        cpu_load(v->dtype, cpu_at(v->dtype, v->x, i0), len, xb);
        float acc = 0;
        #pragma omp simd reduction(+ : acc)
        for (int64_t i = 0; i < len; i++) acc += xb[i] * xb[i];
        total += acc;
    }
    v->partial[piece] = total;
}

int cpu_axpby(finch_plugin_device *dev, finch_plugin_stream *s, int64_t n, finch_dtype dtype, float alpha,
              finch_dptr x, float beta, finch_dptr y, finch_dptr out)
{
    if (n < 0) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "cpu axpby: n %" PRId64 " < 0", n);
    void *xp, *yp, *op;
    int rc = cpu_check_float(dtype, "axpby");
    if (!rc) rc = cpu_matrix(x, dtype, 1, n, n, "axpby: x", &xp);
    if (!rc) rc = cpu_matrix_opt(y, dtype, 1, n, n, "axpby: y", &yp);
    if (!rc) rc = cpu_matrix(out, dtype, 1, n, n, "axpby: out", &op);
    if (rc) return rc;
    vector_job v = {n, dtype, alpha, beta, xp, yp, op, NULL};
    cpu_parallel_for((n + CHUNK - 1) / CHUNK, n > (1 << 15), &v, axpby_chunks);
    return FINCH_OK;
}

int cpu_sum_squares(finch_plugin_device *dev, finch_plugin_stream *s, int64_t n, finch_dtype dtype, finch_dptr x,
                    finch_dptr sum_sq)
{
    if (n < 0) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "cpu sum_squares: n %" PRId64 " < 0", n);
    void *xp, *sp;
    int rc = cpu_check_float(dtype, "sum_squares");
    if (!rc) rc = cpu_matrix(x, dtype, 1, n, n, "sum_squares: x", &xp);
    if (!rc) rc = cpu_span(sum_sq, sizeof(float), "sum_squares: sum_sq", &sp);
    if (rc) return rc;
    int64_t chunks = (n + CHUNK - 1) / CHUNK, pieces = cpu_chunks(chunks, n > (1 << 15));
    double *partial = calloc(pieces > 0 ? (size_t)pieces : 1, sizeof(double)), total = 0;
    if (!partial) return cpu_oom((size_t)pieces * sizeof(double), "sum_squares partial sums");
    vector_job v = {n, dtype, 0, 0, xp, NULL, NULL, partial};
    cpu_parallel(chunks, pieces, &v, sum_squares_chunks);
    for (int64_t i = 0; i < pieces; i++) total += partial[i];   /* in piece order: the same sum on every run */
    free(partial);
    *(float *)sp += (float)total;
    return FINCH_OK;
}

/* sum_squares_multi: the tensors one after another into the one sum. */
int cpu_sum_squares_multi(finch_plugin_device *dev, finch_plugin_stream *s, int count, const int64_t *n, const finch_dtype *dtype,
                          const finch_dptr *x, finch_dptr sum_sq)
{
    if (count < 0 || (count && (!n || !dtype || !x)))
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "cpu sum_squares_multi: %d tensors without their arrays", count);
    for (int i = 0; i < count; i++) {
        int rc = cpu_sum_squares(dev, s, n[i], dtype[i], x[i], sum_sq);
        if (rc) return rc;
    }
    return FINCH_OK;
}
