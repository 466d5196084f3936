/* One AdamW step, torch.optim.AdamW semantics (decoupled weight decay). */
#include "backends/cpu/cpu.h"

#include <inttypes.h>
#include <math.h>

enum { CHUNK = 1024 };

typedef struct adamw_job {
    const finch_adamw_desc *d;
    int64_t n;
    float *p, *m, *v;
    const float *g;
    void *mp, *pp;   /* the f32 master copy (NULL: p is the parameter itself) and the parameter */
    float decay, step, rbc2;
} adamw_job;

static void adamw_chunks(void *ctx, int64_t c0, int64_t c1, int chunk)
{
    const adamw_job *j = ctx;
    const finch_adamw_desc *d = j->d;
    float *p = j->p, *m = j->m, *v = j->v;
    const float *g = j->g;
    for (int64_t c = c0; c < c1; c++) {
        int64_t i0 = c * CHUNK, i1 = j->n - i0 < CHUNK ? j->n : i0 + CHUNK;
        for (int64_t i = i0; i < i1; i++) {
            float gi = g[i] * d->grad_scale;
            m[i] = d->beta1 * m[i] + (1.0f - d->beta1) * gi;
            v[i] = d->beta2 * v[i] + (1.0f - d->beta2) * gi * gi;
            p[i] = p[i] * j->decay - j->step * m[i] / (sqrtf(v[i]) * j->rbc2 + d->eps);
        }
        if (j->mp) cpu_store(d->param_type, p + i0, i1 - i0, cpu_at(d->param_type, j->pp, i0));
    }
}

int cpu_adamw_step(finch_plugin_device *dev, finch_plugin_stream *s, const finch_adamw_desc *d)
{
    if (!d) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "cpu adamw_step: descriptor is NULL");
    int64_t n = d->n;
    if (n < 0) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "cpu adamw_step: n %" PRId64 " < 0", n);
    if (!(d->bias_correction1 > 0) || !(d->bias_correction2 > 0))
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "cpu adamw_step: bias corrections %g, %g must be > 0",
                           d->bias_correction1, d->bias_correction2);
    int rc = cpu_check_float(d->param_type, "adamw_step: param");
    if (rc) return rc;
    if (!d->master.buf && d->param_type != FINCH_DTYPE_F32)
        return finch_error(FINCH_ERR_INVALID_ARGUMENT,
                           "cpu adamw_step: param is %s without an f32 master copy", cpu_dtype_name(d->param_type));
    void *pp, *mp, *gp, *m1p, *m2p;
    if ((rc = cpu_matrix(d->param, d->param_type, 1, n, n, "adamw_step: param", &pp))) return rc;
    if ((rc = cpu_matrix_opt(d->master, FINCH_DTYPE_F32, 1, n, n, "adamw_step: master", &mp))) return rc;
    if ((rc = cpu_matrix(d->grad, FINCH_DTYPE_F32, 1, n, n, "adamw_step: grad", &gp))) return rc;
    if ((rc = cpu_matrix(d->m, FINCH_DTYPE_F32, 1, n, n, "adamw_step: m", &m1p))) return rc;
    if ((rc = cpu_matrix(d->v, FINCH_DTYPE_F32, 1, n, n, "adamw_step: v", &m2p))) return rc;
    float *p = mp ? mp : pp, *m = m1p, *v = m2p;
    const float *g = gp;
    const float decay = 1.0f - d->lr * d->weight_decay, step = d->lr / d->bias_correction1;
    const float rbc2 = 1.0f / sqrtf(d->bias_correction2);
    adamw_job j = {d, n, p, m, v, g, mp, pp, decay, step, rbc2};
    cpu_parallel_for((n + CHUNK - 1) / CHUNK, n > (1 << 14), &j, adamw_chunks);
    return FINCH_OK;
}

/* adamw_step_multi: the tensors one after another. */
int cpu_adamw_step_multi(finch_plugin_device *dev, finch_plugin_stream *s, int count, const finch_adamw_desc *descs)
{
    if (count < 0 || (count && !descs))
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "cpu adamw_step_multi: %d descriptors at %p", count, (const void *)descs);
    for (int i = 0; i < count; i++) {
        int rc = cpu_adamw_step(dev, s, &descs[i]);
        if (rc) return rc;
    }
    return FINCH_OK;
}
