/* Cross-entropy and the chunked lm-head + cross-entropy. Per-row (loss, counted) pairs go to
 * scratch and are summed into loss_sum/count by one work-group; an invalid label is reported
 * through the stream's flag, read at the end of the entry. */
#include "ocl.h"

int ocl_cross_entropy_run(finch_plugin_device *dev, finch_plugin_stream *s, const ocl_ce_call *c)
{
    ocl_ptr flag = {s->flag, 0};
    ocl_args a = {0};
    ocl_arg_l(&a, c->vocab);
    ocl_arg_i(&a, c->dtype);
    ocl_arg_ptr(&a, c->logits);
    ocl_arg_l(&a, c->ld);
    ocl_arg_ptr(&a, c->labels);
    ocl_arg_f(&a, c->softcap);
    ocl_arg_f(&a, c->grad_scale);
    ocl_arg_i(&a, c->write_grad);
    ocl_arg_i(&a, c->grad_type);
    ocl_arg_ptr(&a, c->dlogits);
    ocl_arg_l(&a, c->lddlogits);
    ocl_arg_ptr(&a, c->rows);
    ocl_arg_ptr(&a, flag);
    int rc = ocl_launch_rows(dev, s, OCL_K_cross_entropy_rows, &a, c->n_tokens);
    for (int k = 0; k < 2 && !rc; k++) {
        ocl_args b = {0};
        ocl_arg_l(&b, c->n_tokens);
        ocl_arg_i(&b, 2);
        ocl_arg_i(&b, 1);
        ocl_arg_ptr(&b, ocl_at(c->rows, (size_t)k * sizeof(float)));
        ocl_arg_ptr(&b, k == 0 ? c->loss_sum : c->count);
        rc = ocl_launch_rows(dev, s, OCL_K_sum_strided, &b, 1);
    }
    return rc;
}

static int check_labels(finch_plugin_stream *s, const char *entry, int64_t vocab)
{
    int bad = 0;
    int rc = ocl_flag_read(s, &bad);
    if (!rc && bad)
        rc = ocl_fail(FINCH_ERR_INVALID_ARGUMENT, "opencl: %s: a label is outside [0, %lld) and not the ignore index",
                      entry, (long long)vocab);
    return rc;
}

int ocl_cross_entropy(finch_plugin_device *dev, finch_plugin_stream *s, const finch_cross_entropy_desc *d)
{
    OCL_NEED(dev && d && d->n_tokens >= 0 && d->vocab >= 1, "opencl: cross_entropy: bad arguments");
    int rc = ocl_check_float_type(d->dtype, "cross_entropy");
    if (rc || d->n_tokens == 0) return rc;
    OCL_NEED(d->logits.buf && d->labels.buf && d->loss_sum.buf && d->count.buf,
             "opencl: cross_entropy: logits, labels, loss_sum or count is absent");
    s = ocl_stream(dev, s);
    ocl_ptr rows;
    if ((rc = ocl_scratch(dev, s, (size_t)d->n_tokens * 2 * sizeof(float), &rows))) return rc;
    if ((rc = ocl_flag_clear(s))) return rc;
    ocl_ce_call c = {
        .n_tokens = d->n_tokens, .vocab = d->vocab, .dtype = d->dtype,
        .logits = ocl_p(d->logits), .ld = d->ld, .labels = ocl_p(d->labels),
        .softcap = d->softcap, .grad_scale = d->grad_scale,
        .write_grad = d->dlogits.buf != NULL, .grad_type = d->dtype,
        .dlogits = ocl_p(d->dlogits), .lddlogits = d->lddlogits,
        .rows = rows, .loss_sum = ocl_p(d->loss_sum), .count = ocl_p(d->count),
    };
    if ((rc = ocl_cross_entropy_run(dev, s, &c))) return rc;
    return check_labels(s, "cross_entropy", d->vocab);
}

int ocl_linear_cross_entropy(finch_plugin_device *dev, finch_plugin_stream *s,
                             const finch_linear_cross_entropy_desc *d)
{
    OCL_NEED(dev && d && d->n_tokens >= 0 && d->dim >= 1 && d->vocab >= 1, "opencl: linear_cross_entropy: bad arguments");
    int rc = ocl_check_weight(&d->w, d->vocab, d->dim, "linear_cross_entropy");
    if (!rc) rc = ocl_check_float_type(d->act_type, "linear_cross_entropy");
    if (rc || d->n_tokens == 0) return rc;
    OCL_NEED(d->hidden.buf && d->labels.buf && d->loss_sum.buf && d->count.buf,
             "opencl: linear_cross_entropy: hidden, labels, loss_sum or count is absent");
    if (d->dw.buf && d->w.dtype == FINCH_DTYPE_NF4)
        return ocl_fail(FINCH_ERR_INVALID_ARGUMENT, "opencl: linear_cross_entropy: dw asked of an NF4 weight (dense weights only)");
    int grad = d->grad_scale != 0.0f;
    OCL_NEED(!grad || d->dhidden.buf, "opencl: linear_cross_entropy: grad_scale != 0 needs dhidden");
    s = ocl_stream(dev, s);

    int64_t chunk = d->chunk_tokens;
    if (chunk <= 0) { /* about 64 MiB of f32 logits at a time */
        chunk = ((int64_t)16 << 20) / d->vocab;
        if (chunk < 1) chunk = 1;
    }
    if (chunk > d->n_tokens) chunk = d->n_tokens;
    size_t logits_bytes = ((size_t)(chunk * d->vocab) * sizeof(float) + 255) / 256 * 256;
    ocl_ptr base;
    if ((rc = ocl_scratch(dev, s, logits_bytes + (size_t)chunk * 2 * sizeof(float), &base))) return rc;
    if ((rc = ocl_flag_clear(s))) return rc;
    ocl_ptr logits = base, rows = ocl_at(base, logits_bytes);
    size_t esize = ocl_dtype_size(d->act_type);

    for (int64_t t0 = 0; t0 < d->n_tokens; t0 += chunk) {
        int64_t ct = d->n_tokens - t0 < chunk ? d->n_tokens - t0 : chunk;
        ocl_ptr hidden = ocl_at(ocl_p(d->hidden), (size_t)(t0 * d->ldh) * esize);
        rc = ocl_gemm_weight(dev, s, &d->w, 1, ct, d->vocab, d->dim, d->act_type, hidden, d->ldh, FINCH_DTYPE_F32,
                             logits, d->vocab, 1.0f, 0.0f);
        if (rc) return rc;
        ocl_ce_call c = {
            .n_tokens = ct, .vocab = d->vocab, .dtype = FINCH_DTYPE_F32,
            .logits = logits, .ld = d->vocab, .labels = ocl_at(ocl_p(d->labels), (size_t)t0 * sizeof(int32_t)),
            .softcap = d->softcap, .grad_scale = d->grad_scale,
            .write_grad = grad, .grad_type = FINCH_DTYPE_F32, .dlogits = logits, .lddlogits = d->vocab,
            .rows = rows, .loss_sum = ocl_p(d->loss_sum), .count = ocl_p(d->count),
        };
        if ((rc = ocl_cross_entropy_run(dev, s, &c))) return rc;
        if (!grad) continue;
        ocl_ptr dhidden = ocl_at(ocl_p(d->dhidden), (size_t)(t0 * d->lddh) * esize);
        rc = ocl_gemm_weight(dev, s, &d->w, 0, ct, d->dim, d->vocab, FINCH_DTYPE_F32, logits, d->vocab, d->act_type,
                             dhidden, d->lddh, 1.0f, d->dhidden_accumulate ? 1.0f : 0.0f);
        if (rc) return rc;
        if (d->dw.buf) {
            ocl_gemm_call g = {
                .trans_a = 1, .trans_b = 0, .m = d->vocab, .n = d->dim, .k = ct,
                .a_type = FINCH_DTYPE_F32, .b_type = d->act_type, .c_type = FINCH_DTYPE_F32,
                .a = logits, .b = hidden, .c = ocl_p(d->dw), .lda = d->vocab, .ldb = d->ldh, .ldc = d->dim,
                .batch = 1, .alpha = 1.0f, .beta = 1.0f,
            };
            if ((rc = ocl_gemm_run(dev, s, &g))) return rc;
        }
    }
    return check_labels(s, "linear_cross_entropy", d->vocab);
}
