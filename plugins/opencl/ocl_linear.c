/* The fused LoRA linear as a sequence of GEMMs on the device, never forming W + scale B A:
 *   forward   y = x W^T (+ bias) + scale (drop(x) A^T) B^T, keeping xa = drop(x) A^T
 *   backward  t = dy B;  dx = dy W + scale drop'(t A);  dA += scale t^T drop(x);
 *             dB += scale dy^T xa;  dW += dy^T x;  dbias += column sums of dy
 * With dropout on, drop(x) is materialised once in f32 scratch (the mask of plugin.h). */
#include "ocl.h"

/* Carves f32 regions out of the stream's scratch, 256-byte aligned. */
typedef struct scratch_plan {
    size_t bytes;
} scratch_plan;

static size_t plan_take(scratch_plan *p, int64_t floats)
{
    size_t at = p->bytes;
    p->bytes += ((size_t)floats * sizeof(float) + 255) / 256 * 256;
    return at;
}

static int check_linear(const finch_linear_desc *d, const char *entry)
{
    if (!d) return ocl_fail(FINCH_ERR_INVALID_ARGUMENT, "opencl: %s: desc is NULL", entry);
    if (d->m < 0 || d->in_features < 0 || d->out_features < 0 || d->rank < 0)
        return ocl_fail(FINCH_ERR_INVALID_ARGUMENT, "opencl: %s: negative size", entry);
    if (!(d->dropout >= 0.0f && d->dropout < 1.0f))
        return ocl_fail(FINCH_ERR_INVALID_ARGUMENT, "opencl: %s: dropout %g is outside [0, 1)", entry, d->dropout);
    if (d->rank > 0 && (!d->lora_a.buf || !d->lora_b.buf))
        return ocl_fail(FINCH_ERR_INVALID_ARGUMENT, "opencl: %s: rank %lld but lora_a or lora_b is absent", entry,
                        (long long)d->rank);
    if (!d->x.buf) return ocl_fail(FINCH_ERR_INVALID_ARGUMENT, "opencl: %s: x is absent", entry);
    int rc = ocl_check_weight(&d->w, d->out_features, d->in_features, entry);
    if (!rc) rc = ocl_check_float_type(d->act_type, entry);
    if (!rc && (d->rank > 0 || d->bias.buf)) rc = ocl_check_float_type(d->param_type, entry);
    return rc;
}

/* out (f32 [m, in]) = drop(x) */
static int dropout_apply(finch_plugin_device *dev, finch_plugin_stream *s, const finch_linear_desc *d, ocl_ptr out)
{
    ocl_args a = {0};
    ocl_arg_l(&a, d->m);
    ocl_arg_l(&a, d->in_features);
    ocl_arg_i(&a, d->act_type);
    ocl_arg_ptr(&a, ocl_p(d->x));
    ocl_arg_l(&a, d->ldx);
    ocl_arg_f(&a, d->dropout);
    ocl_arg_u(&a, d->dropout_seed);
    ocl_arg_ptr(&a, out);
    return ocl_launch_2d(dev, s, OCL_K_dropout_apply, &a, d->in_features, d->m);
}

/* xa (f32 [m, rank]) = xsrc A^T, xsrc being x or its dropped-out copy */
static int lora_down(finch_plugin_device *dev, finch_plugin_stream *s, const finch_linear_desc *d, finch_dtype x_type,
                     ocl_ptr x, int64_t ldx, ocl_ptr xa)
{
    ocl_gemm_call g = {
        .trans_a = 0, .trans_b = 1, .m = d->m, .n = d->rank, .k = d->in_features,
        .a_type = x_type, .b_type = d->param_type, .c_type = FINCH_DTYPE_F32,
        .a = x, .b = ocl_p(d->lora_a), .c = xa, .lda = ldx, .ldb = d->in_features, .ldc = d->rank,
        .batch = 1, .alpha = 1.0f, .beta = 0.0f,
    };
    return ocl_gemm_run(dev, s, &g);
}

int ocl_linear_forward(finch_plugin_device *dev, finch_plugin_stream *s, const finch_linear_desc *d)
{
    OCL_NEED(dev, "opencl: linear_forward: device is NULL");
    int rc = check_linear(d, "linear_forward");
    if (rc) return rc;
    OCL_NEED(d->y.buf, "opencl: linear_forward: y is absent");
    s = ocl_stream(dev, s);
    int64_t m = d->m, in = d->in_features, out = d->out_features, r = d->rank;

    rc = ocl_gemm_weight(dev, s, &d->w, 1, m, out, in, d->act_type, ocl_p(d->x), d->ldx, d->act_type, ocl_p(d->y),
                         d->ldy, 1.0f, 0.0f);
    if (!rc && d->bias.buf) {
        ocl_args a = {0};
        ocl_arg_l(&a, m);
        ocl_arg_l(&a, out);
        ocl_arg_i(&a, d->act_type);
        ocl_arg_ptr(&a, ocl_p(d->y));
        ocl_arg_l(&a, d->ldy);
        ocl_arg_i(&a, d->param_type);
        ocl_arg_ptr(&a, ocl_p(d->bias));
        rc = ocl_launch_2d(dev, s, OCL_K_add_bias, &a, out, m);
    }
    if (rc || r == 0 || m == 0) return rc;

    scratch_plan plan = {0};
    size_t at_xa = d->xa.buf ? 0 : plan_take(&plan, m * r);
    size_t at_xd = d->dropout > 0 ? plan_take(&plan, m * in) : 0;
    ocl_ptr base;
    rc = ocl_scratch(dev, s, plan.bytes, &base);
    if (rc) return rc;
    ocl_ptr xa = d->xa.buf ? ocl_p(d->xa) : ocl_at(base, at_xa);
    if (d->dropout > 0) {
        ocl_ptr xd = ocl_at(base, at_xd);
        rc = dropout_apply(dev, s, d, xd);
        if (!rc) rc = lora_down(dev, s, d, FINCH_DTYPE_F32, xd, in, xa);
    } else {
        rc = lora_down(dev, s, d, d->act_type, ocl_p(d->x), d->ldx, xa);
    }
    if (rc) return rc;
    ocl_gemm_call up = {
        .trans_a = 0, .trans_b = 1, .m = m, .n = out, .k = r,
        .a_type = FINCH_DTYPE_F32, .b_type = d->param_type, .c_type = d->act_type,
        .a = xa, .b = ocl_p(d->lora_b), .c = ocl_p(d->y), .lda = r, .ldb = r, .ldc = d->ldy,
        .batch = 1, .alpha = d->scale, .beta = 1.0f,
    };
    return ocl_gemm_run(dev, s, &up);
}

int ocl_linear_backward(finch_plugin_device *dev, finch_plugin_stream *s, const finch_linear_desc *d)
{
    OCL_NEED(dev, "opencl: linear_backward: device is NULL");
    int rc = check_linear(d, "linear_backward");
    if (rc) return rc;
    OCL_NEED(d->dy.buf, "opencl: linear_backward: dy is absent");
    if (d->dw.buf && d->w.dtype == FINCH_DTYPE_NF4)
        return ocl_fail(FINCH_ERR_INVALID_ARGUMENT, "opencl: linear_backward: dw asked of an NF4 weight (dense weights only)");
    s = ocl_stream(dev, s);
    int64_t m = d->m, in = d->in_features, out = d->out_features, r = d->rank;
    int lora = r > 0 && m > 0;
    int want_t = lora && (d->dx.buf || d->da.buf);
    int want_xd = lora && d->dropout > 0 && (d->da.buf || (d->db.buf && !d->xa.buf));
    int want_u = lora && d->dx.buf && d->dropout > 0;
    int want_xa = lora && d->db.buf && !d->xa.buf;

    scratch_plan plan = {0};
    size_t at_t = want_t ? plan_take(&plan, m * r) : 0;
    size_t at_xd = want_xd ? plan_take(&plan, m * in) : 0;
    size_t at_u = want_u ? plan_take(&plan, m * in) : 0;
    size_t at_xa = want_xa ? plan_take(&plan, m * r) : 0;
    ocl_ptr base = {NULL, 0};
    if (plan.bytes && (rc = ocl_scratch(dev, s, plan.bytes, &base))) return rc;
    ocl_ptr t = ocl_at(base, at_t), xd = ocl_at(base, at_xd), u = ocl_at(base, at_u);

    /* drop(x): the dropped-out copy, or x itself */
    finch_dtype xs_type = want_xd ? FINCH_DTYPE_F32 : d->act_type;
    ocl_ptr xs = want_xd ? xd : ocl_p(d->x);
    int64_t ldxs = want_xd ? in : d->ldx;
    if (want_xd && (rc = dropout_apply(dev, s, d, xd))) return rc;

    if (d->dx.buf) {
        rc = ocl_gemm_weight(dev, s, &d->w, 0, m, in, out, d->act_type, ocl_p(d->dy), d->lddy, d->act_type,
                             ocl_p(d->dx), d->lddx, 1.0f, d->dx_accumulate ? 1.0f : 0.0f);
        if (rc) return rc;
    }
    if (want_t) {
        ocl_gemm_call g = {
            .trans_a = 0, .trans_b = 0, .m = m, .n = r, .k = out,
            .a_type = d->act_type, .b_type = d->param_type, .c_type = FINCH_DTYPE_F32,
            .a = ocl_p(d->dy), .b = ocl_p(d->lora_b), .c = t, .lda = d->lddy, .ldb = r, .ldc = r,
            .batch = 1, .alpha = 1.0f, .beta = 0.0f,
        };
        if ((rc = ocl_gemm_run(dev, s, &g))) return rc;
    }
    if (lora && d->dx.buf) {
        int drop = d->dropout > 0;
        ocl_gemm_call g = {
            .trans_a = 0, .trans_b = 0, .m = m, .n = in, .k = r,
            .a_type = FINCH_DTYPE_F32, .b_type = d->param_type, .c_type = drop ? FINCH_DTYPE_F32 : d->act_type,
            .a = t, .b = ocl_p(d->lora_a), .c = drop ? u : ocl_p(d->dx), .lda = r, .ldb = in,
            .ldc = drop ? in : d->lddx, .batch = 1, .alpha = drop ? 1.0f : d->scale, .beta = drop ? 0.0f : 1.0f,
        };
        if ((rc = ocl_gemm_run(dev, s, &g))) return rc;
        if (drop) {
            ocl_args a = {0};
            ocl_arg_l(&a, m);
            ocl_arg_l(&a, in);
            ocl_arg_f(&a, d->dropout);
            ocl_arg_u(&a, d->dropout_seed);
            ocl_arg_f(&a, d->scale);
            ocl_arg_ptr(&a, u);
            ocl_arg_i(&a, d->act_type);
            ocl_arg_ptr(&a, ocl_p(d->dx));
            ocl_arg_l(&a, d->lddx);
            if ((rc = ocl_launch_2d(dev, s, OCL_K_dropout_accumulate, &a, in, m))) return rc;
        }
    }
    if (lora && d->da.buf) {
        ocl_gemm_call g = {
            .trans_a = 1, .trans_b = 0, .m = r, .n = in, .k = m,
            .a_type = FINCH_DTYPE_F32, .b_type = xs_type, .c_type = FINCH_DTYPE_F32,
            .a = t, .b = xs, .c = ocl_p(d->da), .lda = r, .ldb = ldxs, .ldc = in,
            .batch = 1, .alpha = d->scale, .beta = 1.0f,
        };
        if ((rc = ocl_gemm_run(dev, s, &g))) return rc;
    }
    if (lora && d->db.buf) {
        ocl_ptr xa = d->xa.buf ? ocl_p(d->xa) : ocl_at(base, at_xa);
        if (want_xa && (rc = lora_down(dev, s, d, xs_type, xs, ldxs, xa))) return rc;
        ocl_gemm_call g = {
            .trans_a = 1, .trans_b = 0, .m = out, .n = r, .k = m,
            .a_type = d->act_type, .b_type = FINCH_DTYPE_F32, .c_type = FINCH_DTYPE_F32,
            .a = ocl_p(d->dy), .b = xa, .c = ocl_p(d->db), .lda = d->lddy, .ldb = r, .ldc = r,
            .batch = 1, .alpha = d->scale, .beta = 1.0f,
        };
        if ((rc = ocl_gemm_run(dev, s, &g))) return rc;
    }
    if (d->dw.buf && m > 0) {
        ocl_gemm_call g = {
            .trans_a = 1, .trans_b = 0, .m = out, .n = in, .k = m,
            .a_type = d->act_type, .b_type = d->act_type, .c_type = FINCH_DTYPE_F32,
            .a = ocl_p(d->dy), .b = ocl_p(d->x), .c = ocl_p(d->dw), .lda = d->lddy, .ldb = d->ldx, .ldc = in,
            .batch = 1, .alpha = 1.0f, .beta = 1.0f,
        };
        if ((rc = ocl_gemm_run(dev, s, &g))) return rc;
    }
    if (d->dbias.buf && m > 0) {
        ocl_args a = {0};
        ocl_arg_l(&a, m);
        ocl_arg_l(&a, out);
        ocl_arg_i(&a, d->act_type);
        ocl_arg_ptr(&a, ocl_p(d->dy));
        ocl_arg_l(&a, d->lddy);
        ocl_arg_ptr(&a, ocl_p(d->dbias));
        if ((rc = ocl_launch_1d(dev, s, OCL_K_column_sum, &a, out))) return rc;
    }
    return FINCH_OK;
}

int ocl_linear_forward_group(finch_plugin_device *dev, finch_plugin_stream *s, const finch_linear_desc *descs, int count)
{
    OCL_NEED(descs && count >= 1, "opencl: linear_forward_group: %d descriptors", count);
    int bad = finch_linear_group_mismatch(descs, count);
    OCL_NEED(bad < 0, "opencl: linear_forward_group: descriptor %d does not share descriptor 0's input", bad);
    for (int i = 0; i < count; i++) {
        int rc = ocl_linear_forward(dev, s, &descs[i]);
        if (rc) return rc;
    }
    return FINCH_OK;
}
