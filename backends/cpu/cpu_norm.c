/* RMSNorm and LayerNorm, forward and backward. One driver serves both: LayerNorm centres rows
 * (mean, and the mean of the gradient), RMSNorm does not. The residual add fused with an RMSNorm
 * (add_rmsnorm_forward) is the same forward with a first step per row: sum = x + d is stored, and
 * the row is then normalised as read back from sum, exactly as axpby then rmsnorm_forward do.
 * Weight gradients go through per-chunk partial sums reduced in a fixed order, so results do not
 * depend on scheduling. */
#include "backends/cpu/cpu.h"

#include <inttypes.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct norm_call {
    const char *op;
    int centered;               /* LayerNorm */
    int64_t n, dim;
    finch_dtype dtype, w_type;
    finch_dptr x, w, b;         /* w, b may be absent: 1 and 0 */
    finch_dptr d, sum;          /* add_rmsnorm_forward: sum = x + d, then the norm of sum */
    float weight_offset, eps;
    finch_dptr y, mean, rstd;
    finch_dptr dy, dx, dw, db;  /* backward */
    int dx_accumulate;
} norm_call;

/* f32 copy of an optional per-column vector plus offset (absent: fill). */
static int load_vector(const norm_call *c, finch_dptr v, const char *name, float offset, float fill, float *dst)
{
    char what[64];
    void *p;
    snprintf(what, sizeof what, "%s: %s", c->op, name);
    int rc = cpu_matrix_opt(v, c->w_type, 1, c->dim, c->dim, what, &p);
    if (rc) return rc;
    if (!p) {
        for (int64_t j = 0; j < c->dim; j++) dst[j] = fill;
        return FINCH_OK;
    }
    cpu_load(c->w_type, p, c->dim, dst);
    for (int64_t j = 0; j < c->dim; j++) dst[j] += offset;
    return FINCH_OK;
}

static int norm_shape(const norm_call *c)
{
    if (c->n < 0 || c->dim <= 0)
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "cpu %s: bad shape n %" PRId64 " dim %" PRId64, c->op, c->n,
                           c->dim);
    int rc = cpu_check_float(c->dtype, c->op);
    if (!rc && (c->w.buf || c->b.buf)) rc = cpu_check_float(c->w_type, c->op);
    return rc;
}

/* One norm call's resolved pointers, for the row bodies below. */
typedef struct norm_job {
    const norm_call *c;
    void *xp, *yp, *mp, *rp, *dyp, *dxp;
    void *dp, *sp;      /* the residual add's d and sum, or NULL */
    const float *w, *b;
    float *pw, *pb;     /* backward: per-chunk partial dw, db ([chunks, dim]), or NULL */
    float *dw, *db;     /* backward: where the partials are summed */
    int64_t chunks;
    atomic_int oom;
} norm_job;

static void norm_forward_rows(void *ctx, int64_t i0, int64_t i1, int chunk)
{
    norm_job *job = ctx;
    const norm_call *c = job->c;
    int64_t dim = c->dim;
    const float *w = job->w, *b = job->b;
    int scratch = c->dtype != FINCH_DTYPE_F32 || job->dp;
    float *buf = scratch ? malloc(2 * (size_t)dim * sizeof(float)) : NULL;
    if (scratch && !buf) {
        atomic_store(&job->oom, 1);
        return;
    }
    for (int64_t i = i0; i < i1; i++) {
        int64_t ld;
        void *src = cpu_at(c->dtype, job->xp, i * dim);
        if (job->dp) { /* as axpby(1, x, 1, d): both rows are read before sum (which may alias either) is written */
            void *sum = cpu_at(c->dtype, job->sp, i * dim);
            cpu_load(c->dtype, src, dim, buf);
            cpu_load(c->dtype, cpu_at(c->dtype, job->dp, i * dim), dim, buf + dim);
            for (int64_t j = 0; j < dim; j++) buf[j] += buf[dim + j];
            cpu_store(c->dtype, buf, dim, sum);
            src = sum;
        }
        const float *x = cpu_load_block(c->dtype, src, 1, dim, dim, buf, &ld);
        float *y = cpu_out_block(c->dtype, cpu_at(c->dtype, job->yp, i * dim), dim, buf ? buf + dim : NULL, &ld);
        float mu = 0, var = 0;
        if (c->centered) {
            #pragma omp simd reduction(+ : mu)
            for (int64_t j = 0; j < dim; j++) mu += x[j];
            mu /= (float)dim;
        }
        #pragma omp simd reduction(+ : var)
        for (int64_t j = 0; j < dim; j++) var += (x[j] - mu) * (x[j] - mu);
        float rs = 1.0f / sqrtf(var / (float)dim + c->eps);
        for (int64_t j = 0; j < dim; j++) y[j] = (x[j] - mu) * rs * w[j] + b[j];
        cpu_store(c->dtype, y, dim, cpu_at(c->dtype, job->yp, i * dim));
        if (job->rp) ((float *)job->rp)[i] = rs;
        if (job->mp) ((float *)job->mp)[i] = mu;
    }
    free(buf);
}

static void norm_backward_rows(void *ctx, int64_t i0, int64_t i1, int chunk)
{
    norm_job *job = ctx;
    const norm_call *c = job->c;
    int64_t dim = c->dim;
    const float *w = job->w;
    float *buf = malloc(4 * (size_t)dim * sizeof(float));
    if (!buf) {
        atomic_store(&job->oom, 1);
        return;
    }
    float *my_dw = job->pw ? job->pw + (size_t)chunk * dim : NULL;
    float *my_db = job->pb ? job->pb + (size_t)chunk * dim : NULL;
    for (int64_t i = i0; i < i1; i++) {
        int64_t ld;
        const float *x = cpu_load_block(c->dtype, cpu_at(c->dtype, job->xp, i * dim), 1, dim, dim, buf, &ld);
        const float *dy = cpu_load_block(c->dtype, cpu_at(c->dtype, job->dyp, i * dim), 1, dim, dim, buf + dim, &ld);
        float *xhat = buf + 2 * dim, *g = buf + 3 * dim;
        float rs = ((float *)job->rp)[i], mu = job->mp ? ((float *)job->mp)[i] : 0.0f, g_mean = 0, gx_mean = 0;
        #pragma omp simd reduction(+ : g_mean, gx_mean)
        for (int64_t j = 0; j < dim; j++) {
            xhat[j] = (x[j] - mu) * rs;
            g[j] = dy[j] * w[j];
            g_mean += g[j];
            gx_mean += g[j] * xhat[j];
        }
        g_mean = c->centered ? g_mean / (float)dim : 0.0f;
        gx_mean /= (float)dim;
        if (my_dw) for (int64_t j = 0; j < dim; j++) my_dw[j] += dy[j] * xhat[j];
        if (my_db) for (int64_t j = 0; j < dim; j++) my_db[j] += dy[j];
        if (!job->dxp) continue;
        void *dxrow = cpu_at(c->dtype, job->dxp, i * dim);
        for (int64_t j = 0; j < dim; j++) g[j] = rs * (g[j] - g_mean - xhat[j] * gx_mean);
        if (c->dx_accumulate) {
            float *old = buf;   /* x is no longer needed */
            cpu_load(c->dtype, dxrow, dim, old);
            for (int64_t j = 0; j < dim; j++) g[j] += old[j];
        }
        cpu_store(c->dtype, g, dim, dxrow);
    }
    free(buf);
}

/* dw, db += the chunks' partial sums, chunk by chunk in order. */
static void norm_reduce_columns(void *ctx, int64_t j0, int64_t j1, int chunk)
{
    const norm_job *job = ctx;
    int64_t dim = job->c->dim;
    for (int64_t j = j0; j < j1; j++) {
        for (int64_t t = 0; t < job->chunks; t++) {
            if (job->dw) job->dw[j] += job->pw[(size_t)t * dim + j];
            if (job->db) job->db[j] += job->pb[(size_t)t * dim + j];
        }
    }
}

static int norm_forward(const norm_call *c)
{
    int64_t n = c->n, dim = c->dim;
    void *xp, *yp, *mp, *rp;
    char what[64];
    int rc = norm_shape(c);
    if (rc) return rc;
    snprintf(what, sizeof what, "%s: x", c->op);
    if ((rc = cpu_matrix(c->x, c->dtype, n, dim, dim, what, &xp))) return rc;
    snprintf(what, sizeof what, "%s: y", c->op);
    if ((rc = cpu_matrix(c->y, c->dtype, n, dim, dim, what, &yp))) return rc;
    void *dp = NULL, *sp = NULL;
    if (c->d.buf || c->sum.buf) {
        snprintf(what, sizeof what, "%s: d", c->op);
        if ((rc = cpu_matrix(c->d, c->dtype, n, dim, dim, what, &dp))) return rc;
        snprintf(what, sizeof what, "%s: sum", c->op);
        if ((rc = cpu_matrix(c->sum, c->dtype, n, dim, dim, what, &sp))) return rc;
    }
    snprintf(what, sizeof what, "%s: rstd", c->op);
    if ((rc = cpu_matrix_opt(c->rstd, FINCH_DTYPE_F32, 1, n, n, what, &rp))) return rc;
    snprintf(what, sizeof what, "%s: mean", c->op);
    if ((rc = cpu_matrix_opt(c->mean, FINCH_DTYPE_F32, 1, n, n, what, &mp))) return rc;
    float *wb = malloc(2 * (size_t)dim * sizeof(float));
    if (!wb) return cpu_oom(2 * (size_t)dim * sizeof(float), c->op);
    float *w = wb, *b = wb + dim;
    rc = load_vector(c, c->w, "w", c->weight_offset, 1.0f, w);
    if (!rc) rc = load_vector(c, c->b, "b", 0.0f, 0.0f, b);
    if (!rc && c->centered == 0 && !c->w.buf)
        rc = finch_error(FINCH_ERR_INVALID_ARGUMENT, "cpu %s: weight is absent", c->op);
    norm_job job = {.c = c, .xp = xp, .yp = yp, .mp = mp, .rp = rp, .dp = dp, .sp = sp, .w = w, .b = b};
    if (!rc) cpu_parallel_for(n, n * dim > (1 << 14), &job, norm_forward_rows);
    free(wb);
    if (!rc && atomic_load(&job.oom)) rc = cpu_oom(2 * (size_t)dim * sizeof(float), c->op);
    return rc;
}

static int norm_backward(const norm_call *c)
{
    int64_t n = c->n, dim = c->dim;
    void *xp, *mp = NULL, *rp, *dyp, *dxp, *dwp, *dbp;
    char what[64];
    int rc = norm_shape(c);
    if (rc) return rc;
#define MAT(var, ptr, type, rows, cols, req)                                                            \
    snprintf(what, sizeof what, "%s: %s", c->op, #ptr);                                                 \
    if ((rc = (req) ? cpu_matrix(c->ptr, type, rows, cols, cols, what, &var)                            \
                    : cpu_matrix_opt(c->ptr, type, rows, cols, cols, what, &var)))                      \
        return rc;
    MAT(xp, x, c->dtype, n, dim, 1)
    MAT(rp, rstd, FINCH_DTYPE_F32, 1, n, 1)
    if (c->centered) { MAT(mp, mean, FINCH_DTYPE_F32, 1, n, 1) }
    MAT(dyp, dy, c->dtype, n, dim, 1)
    MAT(dxp, dx, c->dtype, n, dim, 0)
    MAT(dwp, dw, FINCH_DTYPE_F32, 1, dim, 0)
    MAT(dbp, db, FINCH_DTYPE_F32, 1, dim, 0)
#undef MAT
    if (!c->centered && !c->w.buf) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "cpu %s: weight is absent", c->op);
    int64_t chunks = cpu_chunks(n, n * dim > (1 << 14));
    int partials = (dwp != NULL) + (dbp != NULL);
    size_t wfloats = (size_t)dim + (size_t)chunks * (size_t)partials * (size_t)dim;
    float *w = calloc(wfloats, sizeof(float));
    if (!w) return cpu_oom(wfloats * sizeof(float), c->op);
    float *pw = w + dim, *pb = pw + (dwp ? (size_t)chunks * dim : 0);
    if ((rc = load_vector(c, c->w, "w", c->weight_offset, 1.0f, w))) {
        free(w);
        return rc;
    }
    norm_job job = {.c = c, .xp = xp, .mp = mp, .rp = rp, .dyp = dyp, .dxp = dxp, .w = w, .pw = dwp ? pw : NULL,
                    .pb = dbp ? pb : NULL, .dw = dwp, .db = dbp, .chunks = chunks};
    cpu_parallel(n, chunks, &job, norm_backward_rows);
    int oom = atomic_load(&job.oom);
    if (!oom && partials) cpu_parallel_for(dim, dim * chunks > (1 << 14), &job, norm_reduce_columns);
    free(w);
    return oom ? cpu_oom(4 * (size_t)dim * sizeof(float), c->op) : FINCH_OK;
}

int cpu_rmsnorm_forward(finch_plugin_device *dev, finch_plugin_stream *s, int64_t n, int64_t dim,
                        finch_dtype dtype, finch_dptr x, finch_dtype w_type, finch_dptr w, float weight_offset,
                        float eps, finch_dptr y, finch_dptr rstd)
{
    norm_call c = {.op = "rmsnorm_forward", .n = n, .dim = dim, .dtype = dtype, .w_type = w_type, .x = x, .w = w,
                   .weight_offset = weight_offset, .eps = eps, .y = y, .rstd = rstd};
    return norm_forward(&c);
}

int cpu_add_rmsnorm_forward(finch_plugin_device *dev, finch_plugin_stream *s, int64_t n, int64_t dim,
                            finch_dtype dtype, finch_dptr x, finch_dptr d, finch_dptr sum, finch_dtype w_type,
                            finch_dptr w, float weight_offset, float eps, finch_dptr y, finch_dptr rstd)
{
    norm_call c = {.op = "add_rmsnorm_forward", .n = n, .dim = dim, .dtype = dtype, .w_type = w_type, .x = x, .d = d,
                   .sum = sum, .w = w, .weight_offset = weight_offset, .eps = eps, .y = y, .rstd = rstd};
    if (!d.buf || !sum.buf)
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "cpu add_rmsnorm_forward: d or sum is absent");
    return norm_forward(&c);
}

int cpu_rmsnorm_backward(finch_plugin_device *dev, finch_plugin_stream *s, int64_t n, int64_t dim,
                         finch_dtype dtype, finch_dptr x, finch_dtype w_type, finch_dptr w, float weight_offset,
                         finch_dptr rstd, finch_dptr dy, finch_dptr dx, int dx_accumulate, finch_dptr dw)
{
    norm_call c = {.op = "rmsnorm_backward", .n = n, .dim = dim, .dtype = dtype, .w_type = w_type, .x = x, .w = w,
                   .weight_offset = weight_offset, .rstd = rstd, .dy = dy, .dx = dx, .dx_accumulate = dx_accumulate,
                   .dw = dw};
    return norm_backward(&c);
}

int cpu_layernorm_forward(finch_plugin_device *dev, finch_plugin_stream *s, int64_t n, int64_t dim,
                          finch_dtype dtype, finch_dptr x, finch_dtype w_type, finch_dptr w, finch_dptr b,
                          float eps, finch_dptr y, finch_dptr mean, finch_dptr rstd)
{
    norm_call c = {.op = "layernorm_forward", .centered = 1, .n = n, .dim = dim, .dtype = dtype, .w_type = w_type,
                   .x = x, .w = w, .b = b, .eps = eps, .y = y, .mean = mean, .rstd = rstd};
    return norm_forward(&c);
}

int cpu_layernorm_backward(finch_plugin_device *dev, finch_plugin_stream *s, int64_t n, int64_t dim,
                           finch_dtype dtype, finch_dptr x, finch_dtype w_type, finch_dptr w, finch_dptr mean,
                           finch_dptr rstd, finch_dptr dy, finch_dptr dx, int dx_accumulate, finch_dptr dw,
                           finch_dptr db)
{
    norm_call c = {.op = "layernorm_backward", .centered = 1, .n = n, .dim = dim, .dtype = dtype, .w_type = w_type,
                   .x = x, .w = w, .mean = mean, .rstd = rstd, .dy = dy, .dx = dx, .dx_accumulate = dx_accumulate,
                   .dw = dw, .db = db};
    return norm_backward(&c);
}
