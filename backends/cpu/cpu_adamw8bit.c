/* One AdamW step with 8-bit blockwise moments (plugin.h, finch_adamw8bit_desc): decode a block's
 * moments, take adamw_step's f32 update element by element, re-quantise the block. */
#include "backends/cpu/cpu.h"

#include <inttypes.h>
#include <math.h>

enum { MAX_BLOCK = 4096 };

/* The number of midpoints between neighbouring map values that x exceeds. */
static uint8_t nearest_code(const float *map, float x)
{
    int lo = 0, hi = 255;
    while (lo < hi) {
        int k = (lo + hi) / 2;
        if (x > (map[k] + map[k + 1]) * 0.5f) lo = k + 1;
        else hi = k;
    }
    return (uint8_t)lo;
}

typedef struct adamw8bit_job {
    const finch_adamw8bit_desc *d;
    int64_t n, bs;
    float *p, *m_absmax, *v_absmax;
    const float *g, *m_map, *v_map;
    uint8_t *m_codes, *v_codes;
    void *mp, *pp;   /* the f32 master copy (NULL: p is the parameter itself) and the parameter */
    float decay, step, rbc2;
} adamw8bit_job;

static void adamw8bit_blocks(void *ctx, int64_t b0, int64_t b1, int chunk)
{
    const adamw8bit_job *j = ctx;
    const finch_adamw8bit_desc *d = j->d;
    int64_t n = j->n, bs = j->bs;
    float *p = j->p, *m_absmax = j->m_absmax, *v_absmax = j->v_absmax;
    const float *g = j->g, *m_map = j->m_map, *v_map = j->v_map;
    uint8_t *m_codes = j->m_codes, *v_codes = j->v_codes;
    void *mp = j->mp, *pp = j->pp;
    const float decay = j->decay, step = j->step, rbc2 = j->rbc2;
    for (int64_t b = b0; b < b1; b++) {
        float m[MAX_BLOCK], v[MAX_BLOCK];
        int64_t i0 = b * bs, len = n - i0 < bs ? n - i0 : bs;
        float m_scale = m_absmax[b], v_scale = v_absmax[b], m_max = 0.0f, v_max = 0.0f;
        for (int64_t k = 0; k < len; k++) {
            int64_t i = i0 + k;
            float gi = g[i] * d->grad_scale;
            m[k] = d->beta1 * (m_map[m_codes[i]] * m_scale) + (1.0f - d->beta1) * gi;
            v[k] = d->beta2 * (v_map[v_codes[i]] * v_scale) + (1.0f - d->beta2) * gi * gi;
            p[i] = p[i] * decay - step * m[k] / (sqrtf(v[k]) * rbc2 + d->eps);
            m_max = fmaxf(m_max, fabsf(m[k]));
            v_max = fmaxf(v_max, fabsf(v[k]));
        }
        for (int64_t k = 0; k < len; k++) {
            m_codes[i0 + k] = nearest_code(m_map, m_max > 0 ? m[k] / m_max : 0.0f);
            v_codes[i0 + k] = nearest_code(v_map, v_max > 0 ? v[k] / v_max : 0.0f);
        }
        m_absmax[b] = m_max;
        v_absmax[b] = v_max;
        if (mp) cpu_store(d->param_type, p + i0, len, cpu_at(d->param_type, pp, i0));
    }
}

int cpu_adamw8bit_step(finch_plugin_device *dev, finch_plugin_stream *s, const finch_adamw8bit_desc *d)
{
    if (!d) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "cpu adamw8bit_step: descriptor is NULL");
    int64_t n = d->n, bs = d->blocksize;
    if (n < 0 || bs < 1 || bs > MAX_BLOCK)
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "cpu adamw8bit_step: n %" PRId64 " < 0 or blocksize %" PRId64 " outside [1, %d]",
                           n, bs, MAX_BLOCK);
    if (!(d->bias_correction1 > 0) || !(d->bias_correction2 > 0))
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "cpu adamw8bit_step: bias corrections %g, %g must be > 0",
                           d->bias_correction1, d->bias_correction2);
    int rc = cpu_check_float(d->param_type, "adamw8bit_step: param");
    if (rc) return rc;
    if (!d->master.buf && d->param_type != FINCH_DTYPE_F32)
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "cpu adamw8bit_step: param is %s without an f32 master copy",
                           cpu_dtype_name(d->param_type));
    int64_t nb = (n + bs - 1) / bs;
    void *pp, *mp, *gp, *mc, *vc, *ma, *va, *mm, *vm;
    if ((rc = cpu_matrix(d->param, d->param_type, 1, n, n, "adamw8bit_step: param", &pp))) return rc;
    if ((rc = cpu_matrix_opt(d->master, FINCH_DTYPE_F32, 1, n, n, "adamw8bit_step: master", &mp))) return rc;
    if ((rc = cpu_matrix(d->grad, FINCH_DTYPE_F32, 1, n, n, "adamw8bit_step: grad", &gp))) return rc;
    if ((rc = cpu_span(d->m_codes, (size_t)n, "adamw8bit_step: m_codes", &mc))) return rc;
    if ((rc = cpu_span(d->v_codes, (size_t)n, "adamw8bit_step: v_codes", &vc))) return rc;
    if ((rc = cpu_matrix(d->m_absmax, FINCH_DTYPE_F32, 1, nb, nb, "adamw8bit_step: m_absmax", &ma))) return rc;
    if ((rc = cpu_matrix(d->v_absmax, FINCH_DTYPE_F32, 1, nb, nb, "adamw8bit_step: v_absmax", &va))) return rc;
    if ((rc = cpu_matrix(d->m_map, FINCH_DTYPE_F32, 1, 256, 256, "adamw8bit_step: m_map", &mm))) return rc;
    if ((rc = cpu_matrix(d->v_map, FINCH_DTYPE_F32, 1, 256, 256, "adamw8bit_step: v_map", &vm))) return rc;
    float *p = mp ? mp : pp, *m_absmax = ma, *v_absmax = va;
    const float *g = gp, *m_map = mm, *v_map = vm;
    uint8_t *m_codes = mc, *v_codes = vc;
    const float decay = 1.0f - d->lr * d->weight_decay, step = d->lr / d->bias_correction1;
    const float rbc2 = 1.0f / sqrtf(d->bias_correction2);
    adamw8bit_job j = {d, n, bs, p, m_absmax, v_absmax, g, m_map, v_map, m_codes, v_codes, mp, pp, decay, step, rbc2};
    cpu_parallel_for(nb, n > (1 << 14), &j, adamw8bit_blocks);
    return FINCH_OK;
}
