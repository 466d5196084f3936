#include "core/ops_rows.h"
#include "core/error.h"

#include <string.h>

#define API (g->be->api)
#define DEV g->be->dev, g->be->stream

static int check(finch_graph *g, int rc, const char *what)
{
    return rc ? finch_device_error(g->be, rc, what) : FINCH_OK;
}

static finch_dptr row_at(const finch_tensor *t, int64_t row)
{
    return finch_dptr_at(t->data, (size_t)(row * t->ld) * finch_dtype_size(t->dtype));
}

/* ---- gather ------------------------------------------------------------------------------- */

typedef struct gather_record {
    finch_tensor x, y;
    finch_dptr ids;
} gather_record;

static int gather_backward(finch_graph *g, const void *rec)
{
    const gather_record *r = rec;
    finch_dptr dy;
    int rc = finch_grad_of_output(g, &r->y, &dy);
    if (rc || !dy.buf) return rc;
    finch_grad_slot s;
    if ((rc = finch_grad_overwrite_slot(g, &r->x, &s)) || !s.dst.buf) return rc;
    int64_t n = finch_tensor_numel(&r->x);
    /* The plugin's scatter-add accumulates in f32. */
    finch_dptr acc = s.dst;
    if (r->x.dtype != FINCH_DTYPE_F32 && (rc = finch_arena_alloc(g->arena, (size_t)n * sizeof(float), &acc))) return rc;
    if ((rc = check(g, API->fill(DEV, acc, FINCH_DTYPE_F32, n, 0.0f), "row gather backward"))) return rc;
    rc = API->embedding_backward(DEV, r->y.rows, r->x.cols, r->x.rows, r->ids, r->y.dtype, dy, acc, 1.0f);
    if (rc) return check(g, rc, "row gather backward");
    if (r->x.dtype != FINCH_DTYPE_F32 && (rc = check(g, API->cast(DEV, n, FINCH_DTYPE_F32, acc, r->x.dtype, s.dst), "row gather backward")))
        return rc;
    return finch_grad_commit(g, &r->x, &s);
}

int finch_op_gather_rows(finch_graph *g, const finch_tensor *x, finch_dptr ids, int64_t n, finch_tensor *y)
{
    if (!finch_tensor_contiguous(x)) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "internal: row gather of a strided view");
    int rc = finch_graph_tensor(g, x->dtype, n, x->cols, x->node >= 0, y);
    if (rc) return rc;
    rc = API->embedding_forward(DEV, n, x->cols, x->rows, ids, x->dtype, x->data, y->dtype, y->data, 1.0f);
    if (rc) return check(g, rc, "row gather");
    if (!g->recording || y->node < 0) return FINCH_OK;
    gather_record r = {*x, *y, ids};
    return finch_graph_record(g, gather_backward, &r, sizeof r);
}

/* ---- overwrite rows in place ------------------------------------------------------------------ */

typedef struct overwrite_record {
    finch_tensor dst, src;
    const finch_row_run *runs;
    int64_t n_runs;
} overwrite_record;

static int overwrite_backward(finch_graph *g, const void *rec)
{
    const overwrite_record *r = rec;
    finch_dptr ddst;
    int rc = finch_grad_of_output(g, &r->dst, &ddst);
    if (rc || !ddst.buf) return rc;
    finch_tensor dgrad = r->dst;
    dgrad.data = ddst;
    finch_grad_slot s;
    if ((rc = finch_grad_overwrite_slot(g, &r->src, &s))) return rc;
    if (s.dst.buf) {
        finch_tensor sgrad = r->src;
        sgrad.data = s.dst;
        for (int64_t i = 0; i < r->n_runs; i++) {
            const finch_row_run *run = &r->runs[i];
            rc = API->copy_2d(DEV, r->dst.dtype, run->count, r->dst.cols, row_at(&dgrad, run->dst_row), dgrad.ld,
                              row_at(&sgrad, run->src_row), sgrad.ld);
            if (rc) return check(g, rc, "row overwrite backward");
        }
        if ((rc = finch_grad_commit(g, &r->src, &s))) return rc;
    }
    for (int64_t i = 0; i < r->n_runs; i++) {
        const finch_row_run *run = &r->runs[i];
        rc = API->fill(DEV, row_at(&dgrad, run->dst_row), r->dst.dtype, run->count * r->dst.cols, 0.0f);
        if (rc) return check(g, rc, "row overwrite backward");
    }
    return FINCH_OK;
}

int finch_op_overwrite_rows(finch_graph *g, const finch_tensor *dst, const finch_tensor *src, const finch_row_run *runs,
                            int64_t n_runs)
{
    if (!finch_tensor_contiguous(dst) || dst->cols != src->cols || dst->dtype != src->dtype)
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "internal: row overwrite of mismatched tensors");
    int64_t covered = 0;
    for (int64_t i = 0; i < n_runs; i++) {
        const finch_row_run *run = &runs[i];
        if (run->count < 0 || run->dst_row < 0 || run->src_row < 0 || run->dst_row + run->count > dst->rows ||
            run->src_row + run->count > src->rows)
            return finch_error(FINCH_ERR_INVALID_ARGUMENT, "internal: row overwrite run outside its tensors");
        covered += run->count;
        int rc = API->copy_2d(DEV, dst->dtype, run->count, dst->cols, row_at(src, run->src_row), src->ld,
                              row_at(dst, run->dst_row), dst->ld);
        if (rc) return check(g, rc, "row overwrite");
    }
    if (covered != src->rows) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "internal: row overwrite leaves source rows unused");
    if (!g->recording || dst->node < 0) {
        if (g->recording && src->node >= 0)
            return finch_error(FINCH_ERR_INVALID_ARGUMENT, "internal: row overwrite into a tensor without a gradient");
        return FINCH_OK;
    }
    overwrite_record r = {*dst, *src, runs, n_runs};
    return finch_graph_record(g, overwrite_backward, &r, sizeof r);
}
