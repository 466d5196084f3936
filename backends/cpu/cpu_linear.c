/* Fused linear layer with optional bias and LoRA adapter (see finch_linear_desc in plugin.h):
 *     y = x W^T + bias + scale * (drop(x) A^T) B^T
 * Rows are processed in chunks so that every intermediate is [chunk, in|out|rank]; the adapter only
 * ever forms rank-wide products, never W + scale*B*A. */
#include "backends/cpu/cpu.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

enum { CHUNK_FLOATS = 1 << 21 };

typedef struct linear_args {
    cpu_weight w;
    void *x, *y, *bias, *lora_a, *lora_b, *xa;
    void *dy, *dx, *dw, *dbias, *da, *db;
} linear_args;

static int linear_check(const finch_linear_desc *d, int backward, linear_args *p)
{
    const char *op = backward ? "linear_backward" : "linear_forward";
    char what[64];
    memset(p, 0, sizeof *p);
    if (!d) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "cpu %s: descriptor is NULL", op);
    if (d->m < 0 || d->in_features < 0 || d->out_features < 0 || d->rank < 0)
        return finch_error(FINCH_ERR_INVALID_ARGUMENT,
                           "cpu %s: bad shape m %" PRId64 " in %" PRId64 " out %" PRId64 " rank %" PRId64, op, d->m,
                           d->in_features, d->out_features, d->rank);
    if (!(d->dropout >= 0 && d->dropout < 1))
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "cpu %s: dropout %g is outside [0, 1)", op, d->dropout);
    int64_t m = d->m, in = d->in_features, out = d->out_features, r = d->rank;
    int rc = cpu_check_float(d->act_type, op);
    if (rc) return rc;
    if ((d->bias.buf || r > 0 || d->dbias.buf) && (rc = cpu_check_float(d->param_type, op))) return rc;
    snprintf(what, sizeof what, "%s: w", op);
    if ((rc = cpu_weight_resolve(&d->w, out, in, what, &p->w))) return rc;
    if (backward && d->dw.buf && d->w.dtype == FINCH_DTYPE_NF4)
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "cpu %s: dw requested for a 4-bit weight", op);
#define MAT(field, type, rows, cols, ld, required)                                                          \
    do {                                                                                                     \
        snprintf(what, sizeof what, "%s: " #field, op);                                                      \
        rc = (required) ? cpu_matrix(d->field, type, rows, cols, ld, what, &p->field)                        \
                        : cpu_matrix_opt(d->field, type, rows, cols, ld, what, &p->field);                   \
        if (rc) return rc;                                                                                   \
    } while (0)
    int need_x = !backward || d->dw.buf || (r > 0 && (d->da.buf || (d->db.buf && !d->xa.buf)));
    MAT(x, d->act_type, m, in, d->ldx, need_x);
    MAT(bias, d->param_type, 1, out, out, 0);
    if (r > 0) {
        MAT(lora_a, d->param_type, r, in, in, 1);
        MAT(lora_b, d->param_type, out, r, r, 1);
        MAT(xa, FINCH_DTYPE_F32, m, r, r, 0);
    }
    if (!backward) {
        MAT(y, d->act_type, m, out, d->ldy, 1);
        return FINCH_OK;
    }
    MAT(dy, d->act_type, m, out, d->lddy, 1);
    MAT(dx, d->act_type, m, in, d->lddx, 0);
    MAT(dw, FINCH_DTYPE_F32, out, in, in, 0);
    MAT(dbias, FINCH_DTYPE_F32, 1, out, out, 0);
    if (r > 0) {
        MAT(da, FINCH_DTYPE_F32, r, in, in, 0);
        MAT(db, FINCH_DTYPE_F32, out, r, r, 0);
    }
#undef MAT
    return FINCH_OK;
}

static int64_t chunk_rows(const finch_linear_desc *d)
{
    int64_t wide = d->in_features > d->out_features ? d->in_features : d->out_features;
    int64_t rows = CHUNK_FLOATS / (wide > 0 ? wide : 1);
    if (rows < 64) rows = 64;
    return rows < d->m ? rows : (d->m > 0 ? d->m : 1);
}

/* Rows [r0, r0 + rows) of a linear call for the row bodies below. */
typedef struct rows_job {
    const finch_linear_desc *d;
    int64_t r0, cols, ld;
    const void *src;   /* dropped_x: x; dropout_add: t ([rows, in] f32) */
    float *dst;        /* dropped_x: [rows, in]; add_bias, dropout_add: the f32 chunk of y or dx */
    const float *bias;
} rows_job;

static void dropped_rows(void *ctx, int64_t i0, int64_t i1, int chunk)
{
    const rows_job *j = ctx;
    const finch_linear_desc *d = j->d;
    int64_t in = d->in_features;
    float keep_scale = 1.0f / (1.0f - d->dropout);
    for (int64_t i = i0; i < i1; i++) {
        float *row = j->dst + i * in;
        cpu_load(d->act_type, cpu_at(d->act_type, j->src, (j->r0 + i) * d->ldx), in, row);
        uint64_t base = (uint64_t)(j->r0 + i) * (uint64_t)in;
        for (int64_t c = 0; c < in; c++)
            row[c] *= finch_dropout_keep(d->dropout_seed, base + (uint64_t)c, d->dropout) ? keep_scale : 0.0f;
    }
}

/* drop(x) for rows [r0, r0+rows) as f32 [rows, in]. */
static void dropped_x(const finch_linear_desc *d, const void *x, int64_t r0, int64_t rows, float *dst)
{
    rows_job j = {.d = d, .r0 = r0, .src = x, .dst = dst};
    cpu_parallel_for(rows, rows * d->in_features > (1 << 15), &j, dropped_rows);
}

static void add_bias_rows(void *ctx, int64_t i0, int64_t i1, int chunk)
{
    const rows_job *j = ctx;
    for (int64_t i = i0; i < i1; i++)
        for (int64_t c = 0; c < j->cols; c++) j->dst[i * j->ld + c] += j->bias[c];
}

/* dx += keep_scale * t where dropout kept x (the gradient through drop()). */
static void dropout_add_rows(void *ctx, int64_t i0, int64_t i1, int chunk)
{
    const rows_job *j = ctx;
    const finch_linear_desc *d = j->d;
    int64_t in = d->in_features;
    const float *t = j->src;
    float keep_scale = 1.0f / (1.0f - d->dropout);
    for (int64_t i = i0; i < i1; i++) {
        uint64_t base = (uint64_t)(j->r0 + i) * (uint64_t)in;
        for (int64_t c = 0; c < in; c++)
            if (finch_dropout_keep(d->dropout_seed, base + (uint64_t)c, d->dropout))
                j->dst[i * j->ld + c] += keep_scale * t[i * in + c];
    }
}

/* Rows [r0, r0+rows) of an activation as a product operand: in place when f32, else converted once
 * into scratch (so the several products that read a chunk do not each convert it). */
static cpu_mat chunk_operand(finch_dtype t, const void *base, int64_t ld, int64_t r0, int64_t rows, int64_t cols,
                             float *scratch)
{
    int64_t ld_out;
    const float *p = cpu_load_block(t, cpu_at(t, base, r0 * ld), rows, cols, ld, scratch, &ld_out);
    return (cpu_mat){FINCH_DTYPE_F32, p, ld_out, 0};
}

/* The adapter's input for a chunk: drop(x) converted into xd, or the chunk's x operand. */
static cpu_mat adapter_input(const finch_linear_desc *d, const void *x, int64_t r0, int64_t rows, float *xd,
                             cpu_mat xm)
{
    if (d->dropout > 0) {
        dropped_x(d, x, r0, rows, xd);
        return (cpu_mat){FINCH_DTYPE_F32, xd, d->in_features, 0};
    }
    return xm;
}

int cpu_linear_forward(finch_plugin_device *dev, finch_plugin_stream *s, const finch_linear_desc *d)
{
    linear_args p;
    int rc = linear_check(d, 0, &p);
    if (rc) return rc;
    int64_t m = d->m, in = d->in_features, out = d->out_features, r = d->rank, mc = chunk_rows(d);
    size_t ny = d->act_type != FINCH_DTYPE_F32 ? (size_t)(mc * out) : 0;
    size_t nxd = r > 0 && d->dropout > 0 ? (size_t)(mc * in) : 0;
    size_t nxa = r > 0 && !p.xa ? (size_t)(mc * r) : 0;
    size_t nbias = p.bias ? (size_t)out : 0;
    size_t nxs = d->act_type != FINCH_DTYPE_F32 ? (size_t)(mc * in) : 0;
    size_t total = ny + nxd + nxa + nbias + nxs + 1;
    float *scratch = malloc(total * sizeof(float));
    if (!scratch) return cpu_oom(total * sizeof(float), "linear_forward scratch");
    float *ys = scratch, *xd = ys + ny, *xas = xd + nxd, *bias = xas + nxa, *xs = bias + nbias;
    if (p.bias) cpu_load(d->param_type, p.bias, out, bias);

    for (int64_t r0 = 0; r0 < m && !rc; r0 += mc) {
        int64_t rows = m - r0 < mc ? m - r0 : mc, ldyc;
        void *ydst = cpu_at(d->act_type, p.y, r0 * d->ldy);
        float *yc = cpu_out_block(d->act_type, ydst, d->ldy, ys, &ldyc);
        if (yc == ys) ldyc = out;
        cpu_mat xm = chunk_operand(d->act_type, p.x, d->ldx, r0, rows, in, xs);
        rc = cpu_weight_matmul_t(&p.w, out, in, rows, xm, 0.0f, FINCH_DTYPE_F32, yc, ldyc);
        if (!rc && p.bias) {
            rows_job j = {.d = d, .cols = out, .ld = ldyc, .dst = yc, .bias = bias};
            cpu_parallel_for(rows, rows * out > (1 << 15), &j, add_bias_rows);
        }
        if (!rc && r > 0) {
            float *xac = p.xa ? (float *)p.xa + r0 * r : xas;
            cpu_mat xl = adapter_input(d, p.x, r0, rows, xd, xm);
            cpu_mat at = {d->param_type, p.lora_a, in, 1}, bt = {d->param_type, p.lora_b, r, 1};
            rc = cpu_gemm(rows, r, in, 1.0f, xl, at, 0.0f, FINCH_DTYPE_F32, xac, r);
            cpu_mat xam = {FINCH_DTYPE_F32, xac, r, 0};
            if (!rc) rc = cpu_gemm(rows, out, r, d->scale, xam, bt, 1.0f, FINCH_DTYPE_F32, yc, ldyc);
        }
        if (!rc) cpu_store_block(d->act_type, yc, ldyc, rows, out, ydst, d->ldy);
    }
    free(scratch);
    return rc;
}

int cpu_linear_backward(finch_plugin_device *dev, finch_plugin_stream *s, const finch_linear_desc *d)
{
    linear_args p;
    int rc = linear_check(d, 1, &p);
    if (rc) return rc;
    int64_t m = d->m, in = d->in_features, out = d->out_features, r = d->rank, mc = chunk_rows(d);
    int lora_dx = r > 0 && p.dx, need_dyb = r > 0 && (p.dx || p.da);
    size_t ndx = p.dx && d->act_type != FINCH_DTYPE_F32 ? (size_t)(mc * in) : 0;
    size_t nxd = r > 0 && d->dropout > 0 && (p.da || (p.db && !p.xa)) ? (size_t)(mc * in) : 0;
    size_t nt = lora_dx && d->dropout > 0 ? (size_t)(mc * in) : 0;
    size_t ndyb = need_dyb ? (size_t)(mc * r) : 0;
    size_t nxa = r > 0 && p.db && !p.xa ? (size_t)(mc * r) : 0;
    size_t nones = p.dbias ? (size_t)mc : 0;
    int convert = d->act_type != FINCH_DTYPE_F32, need_xm = p.x && (p.dw || (r > 0 && (p.da || (p.db && !p.xa))));
    size_t ndys = convert ? (size_t)(mc * out) : 0, nxs = convert && need_xm ? (size_t)(mc * in) : 0;
    size_t total = ndx + nxd + nt + ndyb + nxa + nones + ndys + nxs + 1;
    float *scratch = malloc(total * sizeof(float));
    if (!scratch) return cpu_oom(total * sizeof(float), "linear_backward scratch");
    float *dxs = scratch, *xd = dxs + ndx, *t = xd + nxd, *dyb = t + nt, *xas = dyb + ndyb, *ones = xas + nxa;
    float *dys = ones + nones, *xs = dys + ndys;
    for (size_t i = 0; i < nones; i++) ones[i] = 1.0f;

    for (int64_t r0 = 0; r0 < m && !rc; r0 += mc) {
        int64_t rows = m - r0 < mc ? m - r0 : mc;
        cpu_mat dym = chunk_operand(d->act_type, p.dy, d->lddy, r0, rows, out, dys);
        cpu_mat dymt = {dym.type, dym.p, dym.ld, 1};
        cpu_mat xm = need_xm ? chunk_operand(d->act_type, p.x, d->ldx, r0, rows, in, xs) : (cpu_mat){0};
        if (need_dyb) {   /* dy B: [rows, rank] */
            cpu_mat bm = {d->param_type, p.lora_b, r, 0};
            rc = cpu_gemm(rows, r, out, 1.0f, dym, bm, 0.0f, FINCH_DTYPE_F32, dyb, r);
        }
        if (!rc && p.dx) {
            int64_t lddxc;
            void *dxdst = cpu_at(d->act_type, p.dx, r0 * d->lddx);
            float *dxc = cpu_out_block(d->act_type, dxdst, d->lddx, dxs, &lddxc);
            if (dxc == dxs) {
                lddxc = in;
                if (d->dx_accumulate) cpu_load_block(d->act_type, dxdst, rows, in, d->lddx, dxs, &lddxc);
            }
            rc = cpu_weight_matmul(&p.w, out, in, rows, dym, d->dx_accumulate ? 1.0f : 0.0f, FINCH_DTYPE_F32, dxc,
                                   lddxc);
            if (!rc && lora_dx) {   /* + scale * drop'((dy B) A) */
                cpu_mat dybm = {FINCH_DTYPE_F32, dyb, r, 0}, am = {d->param_type, p.lora_a, in, 0};
                if (d->dropout > 0) {
                    rc = cpu_gemm(rows, in, r, d->scale, dybm, am, 0.0f, FINCH_DTYPE_F32, t, in);
                    rows_job j = {.d = d, .r0 = r0, .ld = lddxc, .src = t, .dst = dxc};
                    if (!rc) cpu_parallel_for(rows, rows * in > (1 << 15), &j, dropout_add_rows);
                } else {
                    rc = cpu_gemm(rows, in, r, d->scale, dybm, am, 1.0f, FINCH_DTYPE_F32, dxc, lddxc);
                }
            }
            if (!rc) cpu_store_block(d->act_type, dxc, lddxc, rows, in, dxdst, d->lddx);
        }
        if (!rc && r > 0 && (p.da || (p.db && !p.xa))) {
            cpu_mat xl = adapter_input(d, p.x, r0, rows, xd, xm);
            if (p.da) {   /* dA += scale * (dy B)^T drop(x) */
                cpu_mat dybt = {FINCH_DTYPE_F32, dyb, r, 1};
                rc = cpu_gemm(r, in, rows, d->scale, dybt, xl, 1.0f, FINCH_DTYPE_F32, p.da, in);
            }
            if (!rc && p.db && !p.xa) {   /* recompute xa = drop(x) A^T */
                cpu_mat at = {d->param_type, p.lora_a, in, 1};
                rc = cpu_gemm(rows, r, in, 1.0f, xl, at, 0.0f, FINCH_DTYPE_F32, xas, r);
            }
        }
        if (!rc && r > 0 && p.db) {   /* dB += scale * dy^T xa */
            cpu_mat xam = {FINCH_DTYPE_F32, p.xa ? (float *)p.xa + r0 * r : xas, r, 0};
            rc = cpu_gemm(out, r, rows, d->scale, dymt, xam, 1.0f, FINCH_DTYPE_F32, p.db, r);
        }
        if (!rc && p.dw) {   /* dW += dy^T x */
            rc = cpu_gemm(out, in, rows, 1.0f, dymt, xm, 1.0f, FINCH_DTYPE_F32, p.dw, in);
        }
        if (!rc && p.dbias) {   /* dbias += dy^T 1 */
            cpu_mat onem = {FINCH_DTYPE_F32, ones, 1, 0};
            rc = cpu_gemm(out, 1, rows, 1.0f, dymt, onem, 1.0f, FINCH_DTYPE_F32, p.dbias, 1);
        }
    }
    free(scratch);
    return rc;
}

int cpu_linear_forward_group(finch_plugin_device *dev, finch_plugin_stream *s, const finch_linear_desc *descs, int count)
{
    if (!descs || count < 1) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "cpu linear_forward_group: %d descriptors", count);
    int bad = finch_linear_group_mismatch(descs, count);
    if (bad >= 0)
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "cpu linear_forward_group: descriptor %d does not share descriptor 0's input", bad);
    for (int i = 0; i < count; i++) {
        int rc = cpu_linear_forward(dev, s, &descs[i]);
        if (rc) return rc;
    }
    return FINCH_OK;
}
