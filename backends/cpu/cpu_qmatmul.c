/* Weights, dense or 4-bit blockwise (bitsandbytes NF4/FP4 layout), and products with them.
 * Blocks of `blocksize` consecutive elements of the flattened row-major [out, in] weight share one
 * f32 absmax; two codes per byte, the first element in the high nibble; value = code[q] * absmax.
 * A 4-bit weight is dequantised one tile at a time (at most TILE_FLOATS values), never whole. */
#include "backends/cpu/cpu.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

enum { TILE_FLOATS = 1 << 20 };

int cpu_weight_resolve(const finch_weight *w, int64_t out_features, int64_t in_features, const char *what,
                       cpu_weight *rw)
{
    memset(rw, 0, sizeof *rw);
    if (!w) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "cpu %s: weight is NULL", what);
    if (out_features < 0 || in_features < 0)
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "cpu %s: bad weight shape [%" PRId64 ", %" PRId64 "]", what,
                           out_features, in_features);
    rw->dtype = w->dtype;
    void *p;
    int rc;
    if (w->dtype != FINCH_DTYPE_NF4) {
        if ((rc = cpu_check_float(w->dtype, what))) return rc;
        rc = cpu_matrix(w->data, w->dtype, out_features, in_features, in_features, what, &p);
        rw->data = p;
        return rc;
    }
    if (w->blocksize <= 0)
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "cpu %s: 4-bit blocksize %" PRId64 " must be > 0", what,
                           w->blocksize);
    uint64_t n = (uint64_t)out_features * (uint64_t)in_features;
    uint64_t blocks = (n + (uint64_t)w->blocksize - 1) / (uint64_t)w->blocksize;
    char name[160];
    snprintf(name, sizeof name, "%s: 4-bit data", what);
    if ((rc = cpu_span(w->data, (size_t)((n + 1) / 2), name, &p))) return rc;
    rw->data = p;
    snprintf(name, sizeof name, "%s: absmax", what);
    if ((rc = cpu_span(w->absmax, (size_t)blocks * sizeof(float), name, &p))) return rc;
    rw->absmax = p;
    snprintf(name, sizeof name, "%s: code table", what);
    if ((rc = cpu_span(w->code, 16 * sizeof(float), name, &p))) return rc;
    rw->code = p;
    rw->blocksize = w->blocksize;
    return FINCH_OK;
}

typedef struct dequant_job {
    const cpu_weight *w;
    int64_t in_features, r0, c0, c1;
    float *dst;
} dequant_job;

static void dequant_rows(void *ctx, int64_t i0, int64_t i1, int chunk)
{
    const dequant_job *j = ctx;
    const cpu_weight *w = j->w;
    const uint8_t *q = w->data;
    int64_t cols = j->c1 - j->c0, bs = w->blocksize;
    float code[16];
    memcpy(code, w->code, sizeof code);
    for (int64_t r = j->r0 + i0; r < j->r0 + i1; r++) {
        float *out = j->dst + (r - j->r0) * cols;
        int64_t e = r * j->in_features + j->c0, e_end = e + cols;
        while (e < e_end) {   /* one absmax block at a time */
            int64_t blk = e / bs, stop = (blk + 1) * bs < e_end ? (blk + 1) * bs : e_end;
            float scale = w->absmax[blk];
            for (; e < stop; e++) {
                uint8_t byte = q[e >> 1];
                int nib = (e & 1) ? (byte & 0x0f) : (byte >> 4);
                *out++ = code[nib] * scale;
            }
        }
    }
}

/* dst [r1-r0, c1-c0] (row stride c1-c0) = dequantised W[r0:r1, c0:c1]. */
static void dequant_tile(const cpu_weight *w, int64_t in_features, int64_t r0, int64_t r1, int64_t c0, int64_t c1,
                         float *dst)
{
    dequant_job j = {w, in_features, r0, c0, c1, dst};
    cpu_parallel_for(r1 - r0, (r1 - r0) * (c1 - c0) > (1 << 15), &j, dequant_rows);
}

int cpu_weight_matmul_t(const cpu_weight *w, int64_t out_features, int64_t in_features, int64_t m, cpu_mat x,
                        float beta, finch_dtype y_type, void *y, int64_t ldy)
{
    if (w->dtype != FINCH_DTYPE_NF4) {
        cpu_mat wm = {w->dtype, w->data, in_features, 1};
        return cpu_gemm(m, out_features, in_features, 1.0f, x, wm, beta, y_type, y, ldy);
    }
    if (m <= 0 || out_features <= 0) return FINCH_OK;
    int64_t rows = TILE_FLOATS / (in_features > 0 ? in_features : 1);
    if (rows < 1) rows = 1;
    if (rows > out_features) rows = out_features;
    float *tile = malloc((size_t)(rows * in_features + 1) * sizeof(float));
    if (!tile) return cpu_oom((size_t)(rows * in_features) * sizeof(float), "4-bit weight tile");
    int rc = FINCH_OK;
    for (int64_t r0 = 0; r0 < out_features && !rc; r0 += rows) {
        int64_t r1 = r0 + rows < out_features ? r0 + rows : out_features;
        dequant_tile(w, in_features, r0, r1, 0, in_features, tile);
        cpu_mat wm = {FINCH_DTYPE_F32, tile, in_features, 1};
        rc = cpu_gemm(m, r1 - r0, in_features, 1.0f, x, wm, beta, y_type, cpu_at(y_type, y, r0), ldy);
    }
    free(tile);
    return rc;
}

int cpu_weight_matmul(const cpu_weight *w, int64_t out_features, int64_t in_features, int64_t m, cpu_mat dy,
                      float beta, finch_dtype dx_type, void *dx, int64_t lddx)
{
    if (w->dtype != FINCH_DTYPE_NF4) {
        cpu_mat wm = {w->dtype, w->data, in_features, 0};
        return cpu_gemm(m, in_features, out_features, 1.0f, dy, wm, beta, dx_type, dx, lddx);
    }
    if (m <= 0 || in_features <= 0) return FINCH_OK;
    /* Column strips of W, so each strip of dx is written once (no accumulation in bf16/f16). */
    int64_t cols = TILE_FLOATS / (out_features > 0 ? out_features : 1);
    if (cols < 1) cols = 1;
    if (cols > in_features) cols = in_features;
    float *tile = malloc((size_t)(cols * out_features + 1) * sizeof(float));
    if (!tile) return cpu_oom((size_t)(cols * out_features) * sizeof(float), "4-bit weight tile");
    int rc = FINCH_OK;
    for (int64_t c0 = 0; c0 < in_features && !rc; c0 += cols) {
        int64_t c1 = c0 + cols < in_features ? c0 + cols : in_features;
        dequant_tile(w, in_features, 0, out_features, c0, c1, tile);
        cpu_mat wm = {FINCH_DTYPE_F32, tile, c1 - c0, 0};
        rc = cpu_gemm(m, c1 - c0, out_features, 1.0f, dy, wm, beta, dx_type, cpu_at(dx_type, dx, c0), lddx);
    }
    free(tile);
    return rc;
}

static int qmatmul_args(const finch_weight *w, int64_t out_features, int64_t in_features, int64_t m,
                        finch_dtype act_type, const char *what, cpu_weight *rw)
{
    if (m < 0) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "cpu %s: m %" PRId64 " < 0", what, m);
    int rc = cpu_check_float(act_type, what);
    if (!rc) rc = cpu_weight_resolve(w, out_features, in_features, what, rw);
    return rc;
}

int cpu_qmatmul_forward(finch_plugin_device *dev, finch_plugin_stream *s, const finch_weight *w,
                        int64_t out_features, int64_t in_features, int64_t m, finch_dtype act_type, finch_dptr x,
                        int64_t ldx, finch_dptr y, int64_t ldy, float beta)
{
    cpu_weight rw;
    void *xp, *yp;
    int rc = qmatmul_args(w, out_features, in_features, m, act_type, "qmatmul_forward", &rw);
    if (!rc) rc = cpu_matrix(x, act_type, m, in_features, ldx, "qmatmul_forward: x", &xp);
    if (!rc) rc = cpu_matrix(y, act_type, m, out_features, ldy, "qmatmul_forward: y", &yp);
    if (rc) return rc;
    cpu_mat xm = {act_type, xp, ldx, 0};
    return cpu_weight_matmul_t(&rw, out_features, in_features, m, xm, beta, act_type, yp, ldy);
}

int cpu_qmatmul_backward(finch_plugin_device *dev, finch_plugin_stream *s, const finch_weight *w,
                         int64_t out_features, int64_t in_features, int64_t m, finch_dtype act_type, finch_dptr dy,
                         int64_t lddy, finch_dptr dx, int64_t lddx, float beta)
{
    cpu_weight rw;
    void *dyp, *dxp;
    int rc = qmatmul_args(w, out_features, in_features, m, act_type, "qmatmul_backward", &rw);
    if (!rc) rc = cpu_matrix(dy, act_type, m, out_features, lddy, "qmatmul_backward: dy", &dyp);
    if (!rc) rc = cpu_matrix(dx, act_type, m, in_features, lddx, "qmatmul_backward: dx", &dxp);
    if (rc) return rc;
    cpu_mat dym = {act_type, dyp, lddy, 0};
    return cpu_weight_matmul(&rw, out_features, in_features, m, dym, beta, act_type, dxp, lddx);
}
