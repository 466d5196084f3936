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

int cpu_activation_forward(finch_plugin_device *dev, finch_plugin_stream *s, finch_activation act, float param,
                           int64_t n, finch_dtype dtype, finch_dptr x, finch_dptr y)
{
    void *xp, *yp;
    int rc = elementwise_args("activation_forward", act, param, n, dtype);
    if (!rc) rc = cpu_matrix(x, dtype, 1, n, n, "activation_forward: x", &xp);
    if (!rc) rc = cpu_matrix(y, dtype, 1, n, n, "activation_forward: y", &yp);
    if (rc) return rc;
    int64_t chunks = (n + CHUNK - 1) / CHUNK;
    #pragma omp parallel for schedule(static) num_threads(cpu_threads()) if (n > (1 << 14))
    for (int64_t c = 0; c < chunks; c++) {
        float xb[CHUNK];
        int64_t i0 = c * CHUNK, len = n - i0 < CHUNK ? n - i0 : CHUNK;
        cpu_load(dtype, cpu_at(dtype, xp, i0), len, xb);
        cpu_act_row(act, param, xb, len, xb, NULL);
        cpu_store(dtype, xb, len, cpu_at(dtype, yp, i0));
    }
    return FINCH_OK;
}

int cpu_activation_backward(finch_plugin_device *dev, finch_plugin_stream *s, finch_activation act, float param,
                            int64_t n, finch_dtype dtype, finch_dptr x, finch_dptr dy, finch_dptr dx)
{
    void *xp, *dyp, *dxp;
    int rc = elementwise_args("activation_backward", act, param, n, dtype);
    if (!rc) rc = cpu_matrix(x, dtype, 1, n, n, "activation_backward: x", &xp);
    if (!rc) rc = cpu_matrix(dy, dtype, 1, n, n, "activation_backward: dy", &dyp);
    if (!rc) rc = cpu_matrix(dx, dtype, 1, n, n, "activation_backward: dx", &dxp);
    if (rc) return rc;
    int64_t chunks = (n + CHUNK - 1) / CHUNK;
    #pragma omp parallel for schedule(static) num_threads(cpu_threads()) if (n > (1 << 14))
    for (int64_t c = 0; c < chunks; c++) {
        float xb[CHUNK], ab[CHUNK], db[CHUNK], gb[CHUNK];
        int64_t i0 = c * CHUNK, len = n - i0 < CHUNK ? n - i0 : CHUNK;
        cpu_load(dtype, cpu_at(dtype, xp, i0), len, xb);
        cpu_load(dtype, cpu_at(dtype, dyp, i0), len, gb);
        cpu_act_row(act, param, xb, len, ab, db);
        for (int64_t i = 0; i < len; i++) gb[i] *= db[i];
        cpu_store(dtype, gb, len, cpu_at(dtype, dxp, i0));
    }
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

int cpu_glu_forward(finch_plugin_device *dev, finch_plugin_stream *s, finch_activation act, int64_t n,
                    int64_t dim, finch_dtype dtype, finch_dptr gate, int64_t ldg, finch_dptr up, int64_t ldu,
                    finch_dptr out)
{
    void *gp, *up_, *op;
    int rc = glu_args("glu_forward", act, n, dim, dtype);
    if (!rc) rc = cpu_matrix(gate, dtype, n, dim, ldg, "glu_forward: gate", &gp);
    if (!rc) rc = cpu_matrix(up, dtype, n, dim, ldu, "glu_forward: up", &up_);
    if (!rc) rc = cpu_matrix(out, dtype, n, dim, dim, "glu_forward: out", &op);
    if (rc) return rc;
    int64_t per_row = (dim + CHUNK - 1) / CHUNK, items = n * per_row;
    #pragma omp parallel for schedule(static) num_threads(cpu_threads()) if (n * dim > (1 << 14))
    for (int64_t it = 0; it < items; it++) {
        float gb[CHUNK], ub[CHUNK];
        int64_t i = it / per_row, j0 = (it % per_row) * CHUNK, len = dim - j0 < CHUNK ? dim - j0 : CHUNK;
        cpu_load(dtype, cpu_at(dtype, gp, i * ldg + j0), len, gb);
        cpu_load(dtype, cpu_at(dtype, up_, i * ldu + j0), len, ub);
        cpu_act_row(act, 0, gb, len, gb, NULL);
        for (int64_t j = 0; j < len; j++) gb[j] *= ub[j];
        cpu_store(dtype, gb, len, cpu_at(dtype, op, i * dim + j0));
    }
    return FINCH_OK;
}

int cpu_glu_backward(finch_plugin_device *dev, finch_plugin_stream *s, finch_activation act, int64_t n,
                     int64_t dim, finch_dtype dtype, finch_dptr gate, int64_t ldg, finch_dptr up, int64_t ldu,
                     finch_dptr dout, finch_dptr dgate, finch_dptr dup)
{
    void *gp, *up_, *dop, *dgp, *dup_;
    int rc = glu_args("glu_backward", act, n, dim, dtype);
    if (!rc) rc = cpu_matrix(gate, dtype, n, dim, ldg, "glu_backward: gate", &gp);
    if (!rc) rc = cpu_matrix(up, dtype, n, dim, ldu, "glu_backward: up", &up_);
    if (!rc) rc = cpu_matrix(dout, dtype, n, dim, dim, "glu_backward: dout", &dop);
    if (!rc) rc = cpu_matrix(dgate, dtype, n, dim, ldg, "glu_backward: dgate", &dgp);
    if (!rc) rc = cpu_matrix(dup, dtype, n, dim, ldu, "glu_backward: dup", &dup_);
    if (rc) return rc;
    int64_t per_row = (dim + CHUNK - 1) / CHUNK, items = n * per_row;
    #pragma omp parallel for schedule(static) num_threads(cpu_threads()) if (n * dim > (1 << 14))
    for (int64_t it = 0; it < items; it++) {
        float gb[CHUNK], ub[CHUNK], ab[CHUNK], db[CHUNK], ob[CHUNK];
        int64_t i = it / per_row, j0 = (it % per_row) * CHUNK, len = dim - j0 < CHUNK ? dim - j0 : CHUNK;
        /* Everything is read before anything is written, so dgate/dup may alias gate/up. */
        cpu_load(dtype, cpu_at(dtype, gp, i * ldg + j0), len, gb);
        cpu_load(dtype, cpu_at(dtype, up_, i * ldu + j0), len, ub);
        cpu_load(dtype, cpu_at(dtype, dop, i * dim + j0), len, ob);
        cpu_act_row(act, 0, gb, len, ab, db);
        for (int64_t j = 0; j < len; j++) {
            gb[j] = ob[j] * ub[j] * db[j];
            ub[j] = ob[j] * ab[j];
        }
        cpu_store(dtype, gb, len, cpu_at(dtype, dgp, i * ldg + j0));
        cpu_store(dtype, ub, len, cpu_at(dtype, dup_, i * ldu + j0));
    }
    return FINCH_OK;
}
