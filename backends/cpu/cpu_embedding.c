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
    int64_t per_row = (dim + CHUNK - 1) / CHUNK, items = n_tokens * per_row;
    #pragma omp parallel for schedule(static) num_threads(cpu_threads()) if (n_tokens * dim > (1 << 14))
    for (int64_t it = 0; it < items; it++) {
        float buf[CHUNK];
        int64_t t = it / per_row, j0 = (it % per_row) * CHUNK, len = dim - j0 < CHUNK ? dim - j0 : CHUNK;
        cpu_load(table_type, cpu_at(table_type, tp, (int64_t)id[t] * dim + j0), len, buf);
        for (int64_t j = 0; j < len; j++) buf[j] *= scale;
        cpu_store(out_type, buf, len, cpu_at(out_type, op, t * dim + j0));
    }
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
    float *dt = dtp;
    int64_t blocks = (dim + CHUNK - 1) / CHUNK;
    #pragma omp parallel for schedule(static) num_threads(cpu_threads()) if (n_tokens * dim > (1 << 14))
    for (int64_t bi = 0; bi < blocks; bi++) {
        float buf[CHUNK];
        int64_t j0 = bi * CHUNK, len = dim - j0 < CHUNK ? dim - j0 : CHUNK;
        for (int64_t t = 0; t < n_tokens; t++) {
            cpu_load(dout_type, cpu_at(dout_type, dop, t * dim + j0), len, buf);
            float *row = dt + (int64_t)id[t] * dim + j0;
            for (int64_t j = 0; j < len; j++) row[j] += scale * buf[j];
        }
    }
    return FINCH_OK;
}
