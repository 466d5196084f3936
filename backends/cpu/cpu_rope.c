/* Rotary position embedding in the rotate-half layout, in place; the backward pass turns by -theta.
 * Partial rotary (rot_dim < head_dim) and sectioned positions (M-RoPE, 2-D) as in plugin.h. */
#include "backends/cpu/cpu.h"

#include <inttypes.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct rope_job {
    const finch_rope_desc *d;
    float direction;
    void *x;
    const int32_t *pos;
    const float *inv_freq;
    const int *sec;   /* the position section of each rotated pair */
    atomic_int oom;
} rope_job;

static void rope_tokens(void *ctx, int64_t t0, int64_t t1, int chunk)
{
    rope_job *job = ctx;
    const finch_rope_desc *d = job->d;
    int64_t half = d->rot_dim / 2;
    /* cos, sin for the token, then one head's rotated part in f32 */
    float *buf = malloc((size_t)(2 * half + d->rot_dim) * sizeof(float));
    if (!buf) {
        atomic_store(&job->oom, 1);
        return;
    }
    for (int64_t t = t0; t < t1; t++) {
        float *cs = buf, *sn = buf + half, *v = buf + 2 * half;
        for (int64_t j = 0; j < half; j++) {
            float theta = (float)job->pos[(int64_t)job->sec[j] * d->n_tokens + t] * job->inv_freq[j];
            cs[j] = cosf(theta) * d->attn_factor;
            sn[j] = job->direction * sinf(theta) * d->attn_factor;
        }
        for (int64_t h = 0; h < d->n_heads; h++) {
            void *head = cpu_at(d->dtype, job->x, t * d->ldx + h * d->head_dim);
            cpu_load(d->dtype, head, d->rot_dim, v);
            for (int64_t j = 0; j < half; j++) {
                float x1 = v[j], x2 = v[j + half];
                v[j] = x1 * cs[j] - x2 * sn[j];
                v[j + half] = x2 * cs[j] + x1 * sn[j];
            }
            cpu_store(d->dtype, v, d->rot_dim, head);
        }
    }
    free(buf);
}

static int rope(const finch_rope_desc *d, float direction, const char *op)
{
    if (!d) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "cpu %s: descriptor is NULL", op);
    if (d->n_tokens < 0 || d->n_heads < 0 || d->head_dim < 0 || d->rot_dim < 0 || d->rot_dim > d->head_dim ||
        d->rot_dim % 2)
        return finch_error(FINCH_ERR_INVALID_ARGUMENT,
                           "cpu %s: bad shape tokens %" PRId64 " heads %" PRId64 " head_dim %" PRId64
                           " rot_dim %" PRId64 " (rot_dim must be even and <= head_dim)",
                           op, d->n_tokens, d->n_heads, d->head_dim, d->rot_dim);
    int64_t half = d->rot_dim / 2, sum = 0;
    if (d->n_sections < 1 || d->n_sections > 4)
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "cpu %s: n_sections %d is outside 1..4", op, d->n_sections);
    for (int i = 0; i < d->n_sections; i++) {
        if (d->sections[i] < 0)
            return finch_error(FINCH_ERR_INVALID_ARGUMENT, "cpu %s: section %d is negative", op, i);
        sum += d->sections[i];
    }
    if (sum != half)
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "cpu %s: sections sum to %" PRId64 ", rot_dim / 2 is %" PRId64,
                           op, sum, half);
    int rc = cpu_check_float(d->dtype, op);
    if (rc) return rc;
    void *xp, *pp, *fp;
    int64_t width = d->n_heads * d->head_dim;
    char what[64];
    snprintf(what, sizeof what, "%s: x", op);
    if ((rc = cpu_matrix(d->x, d->dtype, d->n_tokens, width, d->ldx, what, &xp))) return rc;
    if (half == 0 || d->n_tokens == 0) return FINCH_OK;
    snprintf(what, sizeof what, "%s: positions", op);
    if ((rc = cpu_matrix(d->positions, FINCH_DTYPE_I32, d->n_sections, d->n_tokens, d->n_tokens, what, &pp))) return rc;
    snprintf(what, sizeof what, "%s: inv_freq", op);
    if ((rc = cpu_matrix(d->inv_freq, FINCH_DTYPE_F32, 1, half, half, what, &fp))) return rc;
    int section_of[4096 / 2 + 1], *sec = half <= 2048 ? section_of : malloc((size_t)half * sizeof(int));
    if (!sec) return cpu_oom((size_t)half * sizeof(int), op);
    for (int64_t j = 0, s = 0, end = d->sections[0]; j < half; j++) {
        while (j >= end) end += d->sections[++s];
        sec[j] = (int)s;
    }
    rope_job job = {.d = d, .direction = direction, .x = xp, .pos = pp, .inv_freq = fp, .sec = sec};
    cpu_parallel_for(d->n_tokens, d->n_tokens * width > (1 << 14), &job, rope_tokens);
    int oom = atomic_load(&job.oom);
    if (sec != section_of) free(sec);
    return oom ? cpu_oom((size_t)(2 * half + d->rot_dim) * sizeof(float), op) : FINCH_OK;
}

int cpu_rope_forward(finch_plugin_device *dev, finch_plugin_stream *s, const finch_rope_desc *d)
{
    return rope(d, 1.0f, "rope_forward");
}

int cpu_rope_backward(finch_plugin_device *dev, finch_plugin_stream *s, const finch_rope_desc *d)
{
    return rope(d, -1.0f, "rope_backward");
}
