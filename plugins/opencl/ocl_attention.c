/* Attention entries over packed sequences and over a key/value cache (kernels/attention.cl). */
#include "ocl.h"

static int check_attention(const finch_attention_desc *d, const char *entry)
{
    OCL_NEED(d, "opencl: %s: desc is NULL", entry);
    OCL_NEED(d->n_tokens >= 0 && d->n_seqs >= 1 && d->n_heads >= 1 && d->n_kv_heads >= 1 &&
                 d->n_heads % d->n_kv_heads == 0 && d->head_dim >= 1 && d->window >= 0,
             "opencl: %s: bad shape (tokens %lld, seqs %lld, heads %lld, kv heads %lld, head_dim %lld)", entry,
             (long long)d->n_tokens, (long long)d->n_seqs, (long long)d->n_heads, (long long)d->n_kv_heads,
             (long long)d->head_dim);
    if (d->head_dim > OCL_MAX_HEAD_DIM)
        return ocl_fail(FINCH_ERR_UNSUPPORTED, "opencl: %s: head_dim %lld is above the kernels' limit of %d", entry,
                        (long long)d->head_dim, OCL_MAX_HEAD_DIM);
    OCL_NEED(d->cu_seqlens.buf && d->q.buf && d->k.buf && d->v.buf && d->o.buf && d->lse.buf,
             "opencl: %s: cu_seqlens, q, k, v, o or lse is absent", entry);
    return ocl_check_float_type(d->dtype, entry);
}

/* Arguments shared by the forward, dq and dk/dv kernels, up to and including v. */
static void common_args(ocl_args *a, const finch_attention_desc *d)
{
    ocl_arg_l(a, d->n_tokens);
    ocl_arg_i(a, (int)d->n_seqs);
    ocl_arg_ptr(a, ocl_p(d->cu_seqlens));
    ocl_arg_i(a, (int)d->n_heads);
    ocl_arg_i(a, (int)d->n_kv_heads);
    ocl_arg_i(a, (int)d->head_dim);
    ocl_arg_i(a, d->dtype);
    ocl_arg_ptr(a, ocl_p(d->q));
    ocl_arg_l(a, d->ldq);
    ocl_arg_ptr(a, ocl_p(d->k));
    ocl_arg_l(a, d->ldk);
    ocl_arg_ptr(a, ocl_p(d->v));
    ocl_arg_l(a, d->ldv);
}

static void mask_args(ocl_args *a, const finch_attention_desc *d)
{
    ocl_arg_f(a, d->scale);
    ocl_arg_f(a, d->softcap);
    ocl_arg_i(a, d->causal);
    ocl_arg_l(a, d->window);
}

static int launch_rows_heads(finch_plugin_device *dev, finch_plugin_stream *s, ocl_kernel_id k, const ocl_args *a,
                             int64_t rows, int64_t heads)
{
    size_t global[2] = {(size_t)rows, (size_t)heads}, local[2] = {32, 1};
    return ocl_launch(dev, s, k, a, 2, global, local);
}

int ocl_attention_forward(finch_plugin_device *dev, finch_plugin_stream *s, const finch_attention_desc *d)
{
    OCL_NEED(dev, "opencl: attention_forward: device is NULL");
    int rc = check_attention(d, "attention_forward");
    if (rc || d->n_tokens == 0) return rc;
    ocl_args a = {0};
    common_args(&a, d);
    ocl_arg_ptr(&a, ocl_p(d->o));
    ocl_arg_l(&a, d->ldo);
    ocl_arg_ptr(&a, ocl_p(d->lse));
    mask_args(&a, d);
    return launch_rows_heads(dev, s, OCL_K_attention_forward, &a, d->n_tokens, d->n_heads);
}

int ocl_attention_backward(finch_plugin_device *dev, finch_plugin_stream *s, const finch_attention_desc *d)
{
    OCL_NEED(dev, "opencl: attention_backward: device is NULL");
    int rc = check_attention(d, "attention_backward");
    if (rc || d->n_tokens == 0) return rc;
    OCL_NEED(d->dout.buf && d->dq.buf && d->dk.buf && d->dv.buf, "opencl: attention_backward: dout, dq, dk or dv is absent");
    s = ocl_stream(dev, s);
    ocl_ptr delta;
    if ((rc = ocl_scratch(dev, s, (size_t)(d->n_heads * d->n_tokens) * sizeof(float), &delta))) return rc;

    ocl_args a = {0};
    ocl_arg_l(&a, d->n_tokens);
    ocl_arg_i(&a, (int)d->n_heads);
    ocl_arg_i(&a, (int)d->head_dim);
    ocl_arg_i(&a, d->dtype);
    ocl_arg_ptr(&a, ocl_p(d->o));
    ocl_arg_l(&a, d->ldo);
    ocl_arg_ptr(&a, ocl_p(d->dout));
    ocl_arg_l(&a, d->lddout);
    ocl_arg_ptr(&a, delta);
    if ((rc = launch_rows_heads(dev, s, OCL_K_attention_delta, &a, d->n_tokens, d->n_heads))) return rc;

    ocl_args b = {0};
    common_args(&b, d);
    ocl_arg_ptr(&b, ocl_p(d->lse));
    ocl_arg_ptr(&b, delta);
    ocl_arg_ptr(&b, ocl_p(d->dout));
    ocl_arg_l(&b, d->lddout);
    ocl_arg_ptr(&b, ocl_p(d->dq));
    ocl_arg_l(&b, d->lddq);
    mask_args(&b, d);
    if ((rc = launch_rows_heads(dev, s, OCL_K_attention_dq, &b, d->n_tokens, d->n_heads))) return rc;

    ocl_args c = {0};
    common_args(&c, d);
    ocl_arg_ptr(&c, ocl_p(d->lse));
    ocl_arg_ptr(&c, delta);
    ocl_arg_ptr(&c, ocl_p(d->dout));
    ocl_arg_l(&c, d->lddout);
    ocl_arg_ptr(&c, ocl_p(d->dk));
    ocl_arg_l(&c, d->lddk);
    ocl_arg_ptr(&c, ocl_p(d->dv));
    ocl_arg_l(&c, d->lddv);
    mask_args(&c, d);
    return launch_rows_heads(dev, s, OCL_K_attention_dkdv, &c, d->n_tokens, d->n_kv_heads);
}

int ocl_attention_cache_forward(finch_plugin_device *dev, finch_plugin_stream *s, const finch_attention_cache_desc *d)
{
    OCL_NEED(dev, "opencl: attention_cache_forward: device is NULL");
    OCL_NEED(d, "opencl: attention_cache_forward: desc is NULL");
    OCL_NEED(d->n_tokens >= 0 && d->n_seqs >= 1 && d->n_heads >= 1 && d->n_kv_heads >= 1 &&
                 d->n_heads % d->n_kv_heads == 0 && d->head_dim >= 1 && d->window >= 0 && d->kv_rows >= 0,
             "opencl: attention_cache_forward: bad shape (tokens %lld, seqs %lld, heads %lld, kv heads %lld, head_dim %lld)",
             (long long)d->n_tokens, (long long)d->n_seqs, (long long)d->n_heads, (long long)d->n_kv_heads,
             (long long)d->head_dim);
    if (d->head_dim > OCL_MAX_HEAD_DIM)
        return ocl_fail(FINCH_ERR_UNSUPPORTED, "opencl: attention_cache_forward: head_dim %lld is above the kernels' limit of %d",
                        (long long)d->head_dim, OCL_MAX_HEAD_DIM);
    OCL_NEED(d->cu_seqlens_q.buf && d->kv_start.buf && d->kv_len.buf && d->q.buf && d->k.buf && d->v.buf && d->o.buf,
             "opencl: attention_cache_forward: cu_seqlens_q, kv_start, kv_len, q, k, v or o is absent");
    int rc = ocl_check_float_type(d->dtype, "attention_cache_forward");
    if (rc || d->n_tokens == 0) return rc;
    ocl_args a = {0};
    ocl_arg_l(&a, d->n_tokens);
    ocl_arg_i(&a, (int)d->n_seqs);
    ocl_arg_ptr(&a, ocl_p(d->cu_seqlens_q));
    ocl_arg_ptr(&a, ocl_p(d->kv_start));
    ocl_arg_ptr(&a, ocl_p(d->kv_len));
    ocl_arg_i(&a, (int)d->n_heads);
    ocl_arg_i(&a, (int)d->n_kv_heads);
    ocl_arg_i(&a, (int)d->head_dim);
    ocl_arg_i(&a, d->dtype);
    ocl_arg_ptr(&a, ocl_p(d->q));
    ocl_arg_l(&a, d->ldq);
    ocl_arg_ptr(&a, ocl_p(d->k));
    ocl_arg_l(&a, d->ldk);
    ocl_arg_ptr(&a, ocl_p(d->v));
    ocl_arg_l(&a, d->ldv);
    ocl_arg_ptr(&a, ocl_p(d->o));
    ocl_arg_l(&a, d->ldo);
    ocl_arg_ptr(&a, ocl_p(d->lse));
    ocl_arg_i(&a, d->lse.buf != NULL);
    ocl_arg_f(&a, d->scale);
    ocl_arg_f(&a, d->softcap);
    ocl_arg_i(&a, d->causal);
    ocl_arg_l(&a, d->window);
    return launch_rows_heads(dev, s, OCL_K_attention_cache_forward, &a, d->n_tokens, d->n_heads);
}
