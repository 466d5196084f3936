/* GEMM, and the quantised matmuls that are GEMMs with an NF4 B operand (dequantised inside the
 * kernel's tile load, see kernels/gemm.cl). */
#include "ocl.h"

#define GEMM_TILE 64 /* kernels/gemm.cl: GEMM_TILE, with 16 x 16 work-items */
#define GEMM_WG 16

int ocl_gemm_run(finch_plugin_device *dev, finch_plugin_stream *s, const ocl_gemm_call *g)
{
    if (g->m == 0 || g->n == 0 || g->batch == 0) return FINCH_OK;
    int nf4 = g->b_type == FINCH_DTYPE_NF4;
    ocl_ptr none = {NULL, 0};
    ocl_args a = {0};
    ocl_arg_i(&a, g->trans_a);
    ocl_arg_i(&a, g->trans_b);
    ocl_arg_l(&a, g->m);
    ocl_arg_l(&a, g->n);
    ocl_arg_l(&a, g->k);
    ocl_arg_i(&a, g->a_type);
    ocl_arg_ptr(&a, g->a);
    ocl_arg_l(&a, g->lda);
    ocl_arg_l(&a, g->stride_a);
    ocl_arg_i(&a, g->b_type);
    ocl_arg_ptr(&a, g->b);
    ocl_arg_l(&a, g->ldb);
    ocl_arg_l(&a, g->stride_b);
    ocl_arg_ptr(&a, nf4 ? ocl_p(g->w->absmax) : none);
    ocl_arg_ptr(&a, nf4 ? ocl_p(g->w->code) : none);
    ocl_arg_l(&a, nf4 ? g->w->blocksize : 1);
    ocl_arg_i(&a, g->c_type);
    ocl_arg_ptr(&a, g->c);
    ocl_arg_l(&a, g->ldc);
    ocl_arg_l(&a, g->stride_c);
    ocl_arg_f(&a, g->alpha);
    ocl_arg_f(&a, g->beta);
    size_t global[3] = {(size_t)((g->n + GEMM_TILE - 1) / GEMM_TILE) * GEMM_WG,
                        (size_t)((g->m + GEMM_TILE - 1) / GEMM_TILE) * GEMM_WG, (size_t)g->batch};
    size_t local[3] = {GEMM_WG, GEMM_WG, 1};
    return ocl_launch(dev, s, OCL_K_gemm, &a, 3, global, local);
}

int ocl_check_weight(const finch_weight *w, int64_t out_features, int64_t in_features, const char *entry)
{
    if (!w || !w->data.buf) return ocl_fail(FINCH_ERR_INVALID_ARGUMENT, "opencl: %s: the weight is absent", entry);
    if (w->dtype == FINCH_DTYPE_NF4) {
        if (!w->absmax.buf || !w->code.buf || w->blocksize <= 0)
            return ocl_fail(FINCH_ERR_INVALID_ARGUMENT, "opencl: %s: an NF4 weight needs absmax, code and a blocksize > 0",
                            entry);
        return FINCH_OK;
    }
    return ocl_check_float_type(w->dtype, entry);
}

int ocl_gemm_weight(finch_plugin_device *dev, finch_plugin_stream *s, const finch_weight *w, int trans_w, int64_t m,
                    int64_t n, int64_t k, finch_dtype a_type, ocl_ptr a, int64_t lda, finch_dtype c_type, ocl_ptr c,
                    int64_t ldc, float alpha, float beta)
{
    /* W is [out, in]: op(B) = W^T is [in, out] (k = in), op(B) = W is [out, in] (k = out). */
    ocl_gemm_call g = {
        .trans_a = 0, .trans_b = trans_w, .m = m, .n = n, .k = k,
        .a_type = a_type, .b_type = w->dtype, .c_type = c_type,
        .a = a, .b = ocl_p(w->data), .c = c,
        .lda = lda, .ldb = trans_w ? k : n, .ldc = ldc, .batch = 1,
        .w = w, .alpha = alpha, .beta = beta,
    };
    return ocl_gemm_run(dev, s, &g);
}

int ocl_gemm(finch_plugin_device *dev, finch_plugin_stream *s, const finch_gemm_desc *d)
{
    OCL_NEED(dev && d, "opencl: gemm: NULL argument");
    OCL_NEED(d->m >= 0 && d->n >= 0 && d->k >= 0 && d->batch >= 1, "opencl: gemm: bad shape m %lld n %lld k %lld batch %lld",
             (long long)d->m, (long long)d->n, (long long)d->k, (long long)d->batch);
    if (d->m == 0 || d->n == 0) return FINCH_OK;
    OCL_NEED(d->c.buf && ((d->a.buf && d->b.buf) || d->k == 0), "opencl: gemm: a, b or c is absent");
    int rc = ocl_check_float_type(d->a_type, "gemm A");
    if (!rc) rc = ocl_check_float_type(d->b_type, "gemm B");
    if (!rc) rc = ocl_check_float_type(d->c_type, "gemm C");
    if (rc) return rc;
    ocl_gemm_call g = {
        .trans_a = d->trans_a, .trans_b = d->trans_b, .m = d->m, .n = d->n, .k = d->k,
        .a_type = d->a_type, .b_type = d->b_type, .c_type = d->c_type,
        .a = ocl_p(d->a), .b = ocl_p(d->b), .c = ocl_p(d->c),
        .lda = d->lda, .ldb = d->ldb, .ldc = d->ldc,
        .stride_a = d->stride_a, .stride_b = d->stride_b, .stride_c = d->stride_c, .batch = d->batch,
        .alpha = d->alpha, .beta = d->beta,
    };
    return ocl_gemm_run(dev, ocl_stream(dev, s), &g);
}

int ocl_qmatmul_forward(finch_plugin_device *dev, finch_plugin_stream *s, const finch_weight *w, int64_t out_features,
                        int64_t in_features, int64_t m, finch_dtype act_type, finch_dptr x, int64_t ldx, finch_dptr y,
                        int64_t ldy, float beta)
{
    OCL_NEED(dev && m >= 0 && out_features >= 0 && in_features >= 0, "opencl: qmatmul_forward: bad arguments");
    int rc = ocl_check_weight(w, out_features, in_features, "qmatmul_forward");
    if (!rc) rc = ocl_check_float_type(act_type, "qmatmul_forward activations");
    if (rc) return rc;
    OCL_NEED(x.buf && y.buf, "opencl: qmatmul_forward: x or y is absent");
    return ocl_gemm_weight(dev, ocl_stream(dev, s), w, 1, m, out_features, in_features, act_type, ocl_p(x), ldx,
                           act_type, ocl_p(y), ldy, 1.0f, beta);
}

int ocl_qmatmul_backward(finch_plugin_device *dev, finch_plugin_stream *s, const finch_weight *w,
                         int64_t out_features, int64_t in_features, int64_t m, finch_dtype act_type, finch_dptr dy,
                         int64_t lddy, finch_dptr dx, int64_t lddx, float beta)
{
    OCL_NEED(dev && m >= 0 && out_features >= 0 && in_features >= 0, "opencl: qmatmul_backward: bad arguments");
    int rc = ocl_check_weight(w, out_features, in_features, "qmatmul_backward");
    if (!rc) rc = ocl_check_float_type(act_type, "qmatmul_backward activations");
    if (rc) return rc;
    OCL_NEED(dy.buf && dx.buf, "opencl: qmatmul_backward: dy or dx is absent");
    return ocl_gemm_weight(dev, ocl_stream(dev, s), w, 0, m, in_features, out_features, act_type, ocl_p(dy), lddy,
                           act_type, ocl_p(dx), lddx, 1.0f, beta);
}
