/* Rotary embedding entries: one kernel, turning by +theta (forward) or -theta (backward). */
#include "ocl.h"

static int rope(finch_plugin_device *dev, finch_plugin_stream *s, const finch_rope_desc *d, float direction,
                const char *entry)
{
    OCL_NEED(dev && d, "opencl: %s: NULL argument", entry);
    OCL_NEED(d->n_tokens >= 0 && d->n_heads >= 0 && d->rot_dim >= 0 && d->rot_dim % 2 == 0 &&
                 d->rot_dim <= d->head_dim && d->ldx >= d->n_heads * d->head_dim,
             "opencl: %s: bad shape (head_dim %lld, rot_dim %lld, ldx %lld)", entry, (long long)d->head_dim,
             (long long)d->rot_dim, (long long)d->ldx);
    OCL_NEED(d->n_sections >= 1 && d->n_sections <= 4, "opencl: %s: n_sections %d is not 1..4", entry, d->n_sections);
    int64_t total = 0;
    for (int i = 0; i < d->n_sections; i++) total += d->sections[i];
    OCL_NEED(total == d->rot_dim / 2, "opencl: %s: sections sum to %lld, not rot_dim / 2 = %lld", entry,
             (long long)total, (long long)(d->rot_dim / 2));
    int rc = ocl_check_float_type(d->dtype, entry);
    if (rc || d->n_tokens == 0 || d->n_heads == 0 || d->rot_dim == 0) return rc;
    OCL_NEED(d->x.buf && d->positions.buf && d->inv_freq.buf, "opencl: %s: x, positions or inv_freq is absent", entry);
    ocl_args a = {0};
    ocl_arg_l(&a, d->n_tokens);
    ocl_arg_l(&a, d->n_heads);
    ocl_arg_l(&a, d->head_dim);
    ocl_arg_l(&a, d->rot_dim);
    ocl_arg_i(&a, d->dtype);
    ocl_arg_ptr(&a, ocl_p(d->x));
    ocl_arg_l(&a, d->ldx);
    ocl_arg_ptr(&a, ocl_p(d->positions));
    ocl_arg_ptr(&a, ocl_p(d->inv_freq));
    ocl_arg_i(&a, d->n_sections);
    for (int i = 0; i < 4; i++) ocl_arg_i(&a, i < d->n_sections ? d->sections[i] : 0);
    ocl_arg_f(&a, d->attn_factor);
    ocl_arg_f(&a, direction);
    size_t half = (size_t)(d->rot_dim / 2);
    size_t local[3] = {half < 32 ? half : 32, 1, 1};
    size_t global[3] = {half, (size_t)d->n_heads, (size_t)d->n_tokens};
    return ocl_launch(dev, s, OCL_K_rope, &a, 3, global, local);
}

int ocl_rope_forward(finch_plugin_device *dev, finch_plugin_stream *s, const finch_rope_desc *d)
{
    return rope(dev, s, d, 1.0f, "rope_forward");
}

int ocl_rope_backward(finch_plugin_device *dev, finch_plugin_stream *s, const finch_rope_desc *d)
{
    return rope(dev, s, d, -1.0f, "rope_backward");
}
