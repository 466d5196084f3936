/* Activations (element-wise and gated units), forward and backward. Work runs over chunks of at
 * most CHUNK elements of a row, converted into stack buffers, so no storage type needs a heap copy. */
#include "backends/cpu/cpu.h"

#include <inttypes.h>
#include <math.h>

enum { CHUNK = 1024 };

int cpu_check_act(finch_activation act, float param, const char *what)
{
    switch (act) {
    case FINCH_ACT_SILU: case FINCH_ACT_GELU_ERF: case FINCH_ACT_GELU_TANH: case FINCH_ACT_RELU: return FINCH_OK;
    case FINCH_ACT_SOFTCAP:
        if (param > 0) return FINCH_OK;
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "cpu %s: softcap activation needs a cap > 0 (got %g)", what,
                           param);
    }
    return finch_error(FINCH_ERR_INVALID_ARGUMENT, "cpu %s: unknown activation %d", what, (int)act);
}

void cpu_act_row(finch_activation act, float param, const float *x, int64_t n, float *a, float *da)
{
    switch (act) {
    case FINCH_ACT_SILU:
        for (int64_t i = 0; i < n; i++) {
            float v = x[i], sg = 1.0f / (1.0f + expf(-v));
            if (da) da[i] = sg * (1.0f + v * (1.0f - sg));
            a[i] = v * sg;
        }
        break;
    case FINCH_ACT_GELU_ERF:
        for (int64_t i = 0; i < n; i++) {
            float v = x[i], cdf = 0.5f * (1.0f + erff(v * 0.70710678118654752f));
            if (da) da[i] = cdf + v * 0.39894228040143268f * expf(-0.5f * v * v);
            a[i] = v * cdf;
        }
        break;
    case FINCH_ACT_GELU_TANH:
        for (int64_t i = 0; i < n; i++) {
            const float k = 0.79788456080286536f, c = 0.044715f;
            float v = x[i], th = tanhf(k * (v + c * v * v * v));
            if (da) da[i] = 0.5f * (1.0f + th) + 0.5f * v * (1.0f - th * th) * k * (1.0f + 3.0f * c * v * v);
            a[i] = 0.5f * v * (1.0f + th);
        }
        break;
    case FINCH_ACT_RELU:
        for (int64_t i = 0; i < n; i++) {
            float v = x[i];
            if (da) da[i] = v > 0 ? 1.0f : 0.0f;
            a[i] = v > 0 ? v : 0.0f;
        }
        break;
    case FINCH_ACT_SOFTCAP:
        for (int64_t i = 0; i < n; i++) {
            float th = tanhf(x[i] / param);
            if (da) da[i] = 1.0f - th * th;
            a[i] = param * th;
        }
        break;
    }
}

static int elementwise_args(const char *op, finch_activation act, float param, int64_t n, finch_dtype dtype)
{
    if (n < 0) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "cpu %s: n %" PRId64 " < 0", op, n);
    int rc = cpu_check_float(dtype, op);
    return rc ? rc : cpu_check_act(act, param, op);
}

/* One elementwise activation call, for the chunk bodies below. */
typedef struct act_job {
    finch_activation act;
    float param;
    finch_dtype dtype;
    int64_t n;
    void *x, *dy, *out;   /* out: y (forward) or dx (backward) */
} act_job;

static void act_forward_chunks(void *ctx, int64_t c0, int64_t c1, int chunk)
{
    const act_job *j = ctx;
    for (int64_t c = c0; c < c1; c++) {
        float xb[CHUNK];
        int64_t i0 = c * CHUNK, len = j->n - i0 < CHUNK ? j->n - i0 : CHUNK;
        cpu_load(j->dtype, cpu_at(j->dtype, j->x, i0), len, xb);
        cpu_act_row(j->act, j->param, xb, len, xb, NULL);
        cpu_store(j->dtype, xb, len, cpu_at(j->dtype, j->out, i0));
    }
}

static void act_backward_chunks(void *ctx, int64_t c0, int64_t c1, int chunk)
{
    const act_job *j = ctx;
    for (int64_t c = c0; c < c1; c++) {
        float xb[CHUNK], ab[CHUNK], db[CHUNK], gb[CHUNK];
        int64_t i0 = c * CHUNK, len = j->n - i0 < CHUNK ? j->n - i0 : CHUNK;
        cpu_load(j->dtype, cpu_at(j->dtype, j->x, i0), len, xb);
        cpu_load(j->dtype, cpu_at(j->dtype, j->dy, i0), len, gb);
        cpu_act_row(j->act, j->param, xb, len, ab, db);
        for (int64_t i = 0; i < len; i++) gb[i] *= db[i];
        cpu_store(j->dtype, gb, len, cpu_at(j->dtype, j->out, i0));
    }
}

int cpu_activation_forward(finch_plugin_device *dev, finch_plugin_stream *s, finch_activation act, float param,
                           int64_t n, finch_dtype dtype, finch_dptr x, finch_dptr y)
{
    act_job j = {act, param, dtype, n, NULL, NULL, NULL};
    int rc = elementwise_args("activation_forward", act, param, n, dtype);
    if (!rc) rc = cpu_matrix(x, dtype, 1, n, n, "activation_forward: x", &j.x);
    if (!rc) rc = cpu_matrix(y, dtype, 1, n, n, "activation_forward: y", &j.out);
    if (rc) return rc;
    cpu_parallel_for((n + CHUNK - 1) / CHUNK, n > (1 << 14), &j, act_forward_chunks);
    return FINCH_OK;
}

int cpu_activation_backward(finch_plugin_device *dev, finch_plugin_stream *s, finch_activation act, float param,
                            int64_t n, finch_dtype dtype, finch_dptr x, finch_dptr dy, finch_dptr dx)
{
    act_job j = {act, param, dtype, n, NULL, NULL, NULL};
    int rc = elementwise_args("activation_backward", act, param, n, dtype);
    if (!rc) rc = cpu_matrix(x, dtype, 1, n, n, "activation_backward: x", &j.x);
    if (!rc) rc = cpu_matrix(dy, dtype, 1, n, n, "activation_backward: dy", &j.dy);
    if (!rc) rc = cpu_matrix(dx, dtype, 1, n, n, "activation_backward: dx", &j.out);
    if (rc) return rc;
    cpu_parallel_for((n + CHUNK - 1) / CHUNK, n > (1 << 14), &j, act_backward_chunks);
    return FINCH_OK;
}

static int glu_args(const char *op, finch_activation act, int64_t n, int64_t dim, finch_dtype dtype)
{
    if (n < 0 || dim < 0)
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "cpu %s: bad shape n %" PRId64 " dim %" PRId64, op, n, dim);
    if (act == FINCH_ACT_SOFTCAP)
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "cpu %s: softcap is not a gate activation", op);
    int rc = cpu_check_float(dtype, op);
    return rc ? rc : cpu_check_act(act, 0, op);
}

/* One gated activation call: out = act(gate) * up, or its gradients. */
typedef struct glu_job {
    finch_activation act;
    finch_dtype dtype;
    int64_t dim, per_row, ldg, ldu;
    void *gp, *up, *dout, *out, *dgp, *dup;
} glu_job;

static void glu_forward_chunks(void *ctx, int64_t it0, int64_t it1, int chunk)
{
    const glu_job *g = ctx;
    finch_dtype dtype = g->dtype;
    int64_t dim = g->dim;
    for (int64_t it = it0; it < it1; it++) {
        float gb[CHUNK], ub[CHUNK];
        int64_t i = it / g->per_row, j0 = (it % g->per_row) * CHUNK, len = dim - j0 < CHUNK ? dim - j0 : CHUNK;
        cpu_load(dtype, cpu_at(dtype, g->gp, i * g->ldg + j0), len, gb);
        cpu_load(dtype, cpu_at(dtype, g->up, i * g->ldu + j0), len, ub);
        cpu_act_row(g->act, 0, gb, len, gb, NULL);
        for (int64_t j = 0; j < len; j++) gb[j] *= ub[j];
        cpu_store(dtype, gb, len, cpu_at(dtype, g->out, i * dim + j0));
    }
}

static void glu_backward_chunks(void *ctx, int64_t it0, int64_t it1, int chunk)
{
    const glu_job *g = ctx;
    finch_dtype dtype = g->dtype;
    int64_t dim = g->dim;
    for (int64_t it = it0; it < it1; it++) {
        float gb[CHUNK], ub[CHUNK], ab[CHUNK], db[CHUNK], ob[CHUNK];
        int64_t i = it / g->per_row, j0 = (it % g->per_row) * CHUNK, len = dim - j0 < CHUNK ? dim - j0 : CHUNK;
        /* Everything is read before anything is written, so dgate/dup may alias gate/up. */
        cpu_load(dtype, cpu_at(dtype, g->gp, i * g->ldg + j0), len, gb);
        cpu_load(dtype, cpu_at(dtype, g->up, i * g->ldu + j0), len, ub);
        cpu_load(dtype, cpu_at(dtype, g->dout, i * dim + j0), len, ob);
        cpu_act_row(g->act, 0, gb, len, ab, db);
        for (int64_t j = 0; j < len; j++) {
            gb[j] = ob[j] * ub[j] * db[j];
            ub[j] = ob[j] * ab[j];
        }
        cpu_store(dtype, gb, len, cpu_at(dtype, g->dgp, i * g->ldg + j0));
        cpu_store(dtype, ub, len, cpu_at(dtype, g->dup, i * g->ldu + j0));
    }
}

int cpu_glu_forward(finch_plugin_device *dev, finch_plugin_stream *s, finch_activation act, int64_t n,
                    int64_t dim, finch_dtype dtype, finch_dptr gate, int64_t ldg, finch_dptr up, int64_t ldu,
                    finch_dptr out)
{
    glu_job g = {.act = act, .dtype = dtype, .dim = dim, .per_row = (dim + CHUNK - 1) / CHUNK, .ldg = ldg, .ldu = ldu};
    int rc = glu_args("glu_forward", act, n, dim, dtype);
    if (!rc) rc = cpu_matrix(gate, dtype, n, dim, ldg, "glu_forward: gate", &g.gp);
    if (!rc) rc = cpu_matrix(up, dtype, n, dim, ldu, "glu_forward: up", &g.up);
    if (!rc) rc = cpu_matrix(out, dtype, n, dim, dim, "glu_forward: out", &g.out);
    if (rc) return rc;
    cpu_parallel_for(n * g.per_row, n * dim > (1 << 14), &g, glu_forward_chunks);
    return FINCH_OK;
}

int cpu_glu_backward(finch_plugin_device *dev, finch_plugin_stream *s, finch_activation act, int64_t n,
                     int64_t dim, finch_dtype dtype, finch_dptr gate, int64_t ldg, finch_dptr up, int64_t ldu,
                     finch_dptr dout, finch_dptr dgate, finch_dptr dup)
{
    glu_job g = {.act = act, .dtype = dtype, .dim = dim, .per_row = (dim + CHUNK - 1) / CHUNK, .ldg = ldg, .ldu = ldu};
    int rc = glu_args("glu_backward", act, n, dim, dtype);
    if (!rc) rc = cpu_matrix(gate, dtype, n, dim, ldg, "glu_backward: gate", &g.gp);
    if (!rc) rc = cpu_matrix(up, dtype, n, dim, ldu, "glu_backward: up", &g.up);
    if (!rc) rc = cpu_matrix(dout, dtype, n, dim, dim, "glu_backward: dout", &g.dout);
    if (!rc) rc = cpu_matrix(dgate, dtype, n, dim, ldg, "glu_backward: dgate", &g.dgp);
    if (!rc) rc = cpu_matrix(dup, dtype, n, dim, ldu, "glu_backward: dup", &g.dup);
    if (rc) return rc;
    cpu_parallel_for(n * g.per_row, n * dim > (1 << 14), &g, glu_backward_chunks);
    return FINCH_OK;
}
