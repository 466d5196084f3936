/* Token embedding lookup and its gradient. The backward pass splits the columns among threads, so
 * each dtable element has one writer whatever ids repeat. */
#include "backends/cpu/cpu.h"

#include <inttypes.h>
#include <stdio.h>

enum { CHUNK = 256 };

static int embedding_ids(const char *op, int64_t n_tokens, int64_t dim, int64_t vocab, finch_dptr ids,
                         const int32_t **out)
{
    if (n_tokens < 0 || dim < 0 || vocab < 0)
        return finch_error(FINCH_ERR_INVALID_ARGUMENT,
                           "cpu %s: bad shape tokens %" PRId64 " dim %" PRId64 " vocab %" PRId64, op, n_tokens, dim,
                           vocab);
    char what[64];
    void *p;
    snprintf(what, sizeof what, "%s: ids", op);
    int rc = cpu_matrix(ids, FINCH_DTYPE_I32, 1, n_tokens, n_tokens, what, &p);
    if (rc) return rc;
    const int32_t *id = p;
    for (int64_t t = 0; t < n_tokens; t++)
        if (id[t] < 0 || id[t] >= vocab)
            return finch_error(FINCH_ERR_INVALID_ARGUMENT,
                               "cpu %s: token id %" PRId32 " at position %" PRId64 " is outside the vocabulary [0, %" PRId64 ")",
                               op, id[t], t, vocab);
    *out = id;
    return FINCH_OK;
}

typedef struct embedding_job {
    int64_t n_tokens, dim, per_row;
    const int32_t *id;
    finch_dtype in_type, out_type;   /* table and out (forward), dout and f32 (backward) */
    const void *in;
    void *out;
    float scale;
} embedding_job;

static void gather_rows(void *ctx, int64_t it0, int64_t it1, int chunk)
{
    const embedding_job *e = ctx;
    int64_t dim = e->dim;
    for (int64_t it = it0; it < it1; it++) {
        float buf[CHUNK];
        int64_t t = it / e->per_row, j0 = (it % e->per_row) * CHUNK, len = dim - j0 < CHUNK ? dim - j0 : CHUNK;
        cpu_load(e->in_type, cpu_at(e->in_type, e->in, (int64_t)e->id[t] * dim + j0), len, buf);
        for (int64_t j = 0; j < len; j++) buf[j] *= e->scale;
        cpu_store(e->out_type, buf, len, cpu_at(e->out_type, e->out, t * dim + j0));
    }
}

/* Column blocks bi0..bi1 of the table gradient, every token's row added in token order. */
static void scatter_columns(void *ctx, int64_t bi0, int64_t bi1, int chunk)
{
    const embedding_job *e = ctx;
    int64_t dim = e->dim;
    float *dt = e->out;
    for (int64_t bi = bi0; bi < bi1; bi++) {
        float buf[CHUNK];
        int64_t j0 = bi * CHUNK, len = dim - j0 < CHUNK ? dim - j0 : CHUNK;
        for (int64_t t = 0; t < e->n_tokens; t++) {
            cpu_load(e->in_type, cpu_at(e->in_type, e->in, t * dim + j0), len, buf);
            float *row = dt + (int64_t)e->id[t] * dim + j0;
            for (int64_t j = 0; j < len; j++) row[j] += e->scale * buf[j];
        }
    }
}

int cpu_embedding_forward(finch_plugin_device *dev, finch_plugin_stream *s, int64_t n_tokens, int64_t dim,
                          int64_t vocab, finch_dptr ids, finch_dtype table_type, finch_dptr table,
                          finch_dtype out_type, finch_dptr out, float scale)
{
    const int32_t *id;
    void *tp, *op;
    int rc = cpu_check_float(table_type, "embedding_forward: table");
    if (!rc) rc = cpu_check_float(out_type, "embedding_forward: out");
    if (!rc) rc = embedding_ids("embedding_forward", n_tokens, dim, vocab, ids, &id);
    if (!rc) rc = cpu_matrix(table, table_type, vocab, dim, dim, "embedding_forward: table", &tp);
    if (!rc) rc = cpu_matrix(out, out_type, n_tokens, dim, dim, "embedding_forward: out", &op);
    if (rc) return rc;
    embedding_job e = {n_tokens, dim, (dim + CHUNK - 1) / CHUNK, id, table_type, out_type, tp, op, scale};
    cpu_parallel_for(n_tokens * e.per_row, n_tokens * dim > (1 << 14), &e, gather_rows);
    return FINCH_OK;
}

int cpu_embedding_backward(finch_plugin_device *dev, finch_plugin_stream *s, int64_t n_tokens, int64_t dim,
                           int64_t vocab, finch_dptr ids, finch_dtype dout_type, finch_dptr dout,
                           finch_dptr dtable, float scale)
{
    const int32_t *id;
    void *dop, *dtp;
    int rc = cpu_check_float(dout_type, "embedding_backward: dout");
    if (!rc) rc = embedding_ids("embedding_backward", n_tokens, dim, vocab, ids, &id);
    if (!rc) rc = cpu_matrix(dout, dout_type, n_tokens, dim, dim, "embedding_backward: dout", &dop);
    if (!rc) rc = cpu_matrix(dtable, FINCH_DTYPE_F32, vocab, dim, dim, "embedding_backward: dtable", &dtp);
    if (rc) return rc;
    embedding_job e = {n_tokens, dim, 0, id, dout_type, FINCH_DTYPE_F32, dop, dtp, scale};
    cpu_parallel_for((dim + CHUNK - 1) / CHUNK, n_tokens * dim > (1 << 14), &e, scatter_columns);
    return FINCH_OK;
}
