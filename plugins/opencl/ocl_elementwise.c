/* Element-wise entries: fill, cast, copy_2d, copy_rows, axpby, activations, gated units, AdamW (f32 and 8-bit moments). */
#include "ocl.h"

#include <math.h>

int ocl_fill(finch_plugin_device *dev, finch_plugin_stream *s, finch_dptr dst, finch_dtype dtype, int64_t count,
             float value)
{
    OCL_NEED(dev && count >= 0 && (dst.buf || count == 0), "opencl: fill: bad arguments (count %lld)", (long long)count);
    if (dtype != FINCH_DTYPE_I32) {
        int rc = ocl_check_float_type(dtype, "fill");
        if (rc) return rc;
    }
    ocl_args a = {0};
    ocl_arg_ptr(&a, ocl_p(dst));
    ocl_arg_i(&a, dtype);
    ocl_arg_l(&a, count);
    ocl_arg_f(&a, value);
    return ocl_launch_1d(dev, s, OCL_K_fill, &a, count);
}

int ocl_copy_2d(finch_plugin_device *dev, finch_plugin_stream *s, finch_dtype dtype, int64_t rows, int64_t cols,
                finch_dptr src, int64_t ld_src, finch_dptr dst, int64_t ld_dst)
{
    size_t esize = ocl_dtype_size(dtype);
    OCL_NEED(dev && rows >= 0 && cols >= 0 && esize, "opencl: copy_2d: bad arguments (dtype %d, %lld x %lld)", (int)dtype,
         (long long)rows, (long long)cols);
    if (rows == 0 || cols == 0) return FINCH_OK;
    OCL_NEED(src.buf && dst.buf && ld_src >= cols && ld_dst >= cols,
         "opencl: copy_2d: NULL buffer or row stride below the %lld columns", (long long)cols);
    ocl_args a = {0};
    ocl_arg_i(&a, (int)esize);
    ocl_arg_l(&a, rows);
    ocl_arg_l(&a, cols);
    ocl_arg_ptr(&a, ocl_p(src));
    ocl_arg_l(&a, ld_src);
    ocl_arg_ptr(&a, ocl_p(dst));
    ocl_arg_l(&a, ld_dst);
    return ocl_launch_2d(dev, s, OCL_K_copy_2d, &a, cols, rows);
}

int ocl_copy_rows(finch_plugin_device *dev, finch_plugin_stream *s, finch_dtype dtype, int64_t n, int64_t cols, finch_dptr src,
                  int64_t ld_src, finch_dptr rows, finch_dptr dst, int64_t ld_dst)
{
    size_t esize = ocl_dtype_size(dtype);
    OCL_NEED(dev && n >= 0 && cols >= 0 && esize, "opencl: copy_rows: bad arguments (dtype %d, %lld x %lld)", (int)dtype,
             (long long)n, (long long)cols);
    if (n == 0 || cols == 0) return FINCH_OK;
    OCL_NEED(src.buf && rows.buf && dst.buf && ld_src >= cols && ld_dst >= cols,
             "opencl: copy_rows: NULL buffer or row stride below the %lld columns", (long long)cols);
    ocl_args a = {0};
    ocl_arg_i(&a, (int)esize);
    ocl_arg_l(&a, n);
    ocl_arg_l(&a, cols);
    ocl_arg_ptr(&a, ocl_p(src));
    ocl_arg_l(&a, ld_src);
    ocl_arg_ptr(&a, ocl_p(rows));
    ocl_arg_ptr(&a, ocl_p(dst));
    ocl_arg_l(&a, ld_dst);
    ocl_arg_u(&a, dst.offset < dst.buf->bytes ? dst.buf->bytes - dst.offset : 0);
    return ocl_launch_2d(dev, s, OCL_K_copy_rows, &a, cols, n);
}

int ocl_cast(finch_plugin_device *dev, finch_plugin_stream *s, int64_t n, finch_dtype src_type, finch_dptr src,
             finch_dtype dst_type, finch_dptr dst)
{
    OCL_NEED(dev && n >= 0 && ((src.buf && dst.buf) || n == 0), "opencl: cast: bad arguments");
    int rc = src_type == FINCH_DTYPE_I32 ? FINCH_OK : ocl_check_float_type(src_type, "cast source");
    if (!rc && dst_type != FINCH_DTYPE_I32) rc = ocl_check_float_type(dst_type, "cast destination");
    if (rc) return rc;
    ocl_args a = {0};
    ocl_arg_l(&a, n);
    ocl_arg_i(&a, src_type);
    ocl_arg_ptr(&a, ocl_p(src));
    ocl_arg_i(&a, dst_type);
    ocl_arg_ptr(&a, ocl_p(dst));
    return ocl_launch_1d(dev, s, OCL_K_cast, &a, n);
}

int ocl_axpby(finch_plugin_device *dev, finch_plugin_stream *s, int64_t n, finch_dtype dtype, float alpha,
              finch_dptr x, float beta, finch_dptr y, finch_dptr out)
{
    OCL_NEED(dev && n >= 0 && ((x.buf && out.buf) || n == 0), "opencl: axpby: bad arguments");
    int rc = ocl_check_float_type(dtype, "axpby");
    if (rc) return rc;
    ocl_args a = {0};
    ocl_arg_l(&a, n);
    ocl_arg_i(&a, dtype);
    ocl_arg_f(&a, alpha);
    ocl_arg_ptr(&a, ocl_p(x));
    ocl_arg_f(&a, beta);
    ocl_arg_i(&a, y.buf != NULL);
    ocl_arg_ptr(&a, ocl_p(y));
    ocl_arg_ptr(&a, ocl_p(out));
    return ocl_launch_1d(dev, s, OCL_K_axpby, &a, n);
}

static int check_activation(finch_activation act, float param, const char *entry)
{
    if ((int)act < FINCH_ACT_SILU || act > FINCH_ACT_SOFTCAP)
        return ocl_fail(FINCH_ERR_INVALID_ARGUMENT, "opencl: %s: unknown activation %d", entry, (int)act);
    if (act == FINCH_ACT_SOFTCAP && !(param > 0))
        return ocl_fail(FINCH_ERR_INVALID_ARGUMENT, "opencl: %s: the softcap activation needs a cap > 0", entry);
    return FINCH_OK;
}

/* Checks an activation call and starts its arguments: act, param, n, dtype, x. */
static int activation_args(ocl_args *a, finch_activation act, float param, int64_t n, finch_dtype dtype, finch_dptr x,
                           const char *entry)
{
    int rc = check_activation(act, param, entry);
    if (!rc) rc = ocl_check_float_type(dtype, entry);
    if (rc) return rc;
    ocl_arg_i(a, act);
    ocl_arg_f(a, param);
    ocl_arg_l(a, n);
    ocl_arg_i(a, dtype);
    ocl_arg_ptr(a, ocl_p(x));
    return FINCH_OK;
}

int ocl_activation_forward(finch_plugin_device *dev, finch_plugin_stream *s, finch_activation act, float param,
                           int64_t n, finch_dtype dtype, finch_dptr x, finch_dptr y)
{
    OCL_NEED(dev && n >= 0 && ((x.buf && y.buf) || n == 0), "opencl: activation_forward: bad arguments");
    ocl_args a = {0};
    int rc = activation_args(&a, act, param, n, dtype, x, "activation_forward");
    if (rc) return rc;
    ocl_arg_ptr(&a, ocl_p(y));
    return ocl_launch_1d(dev, s, OCL_K_activation_forward, &a, n);
}

int ocl_activation_backward(finch_plugin_device *dev, finch_plugin_stream *s, finch_activation act, float param,
                            int64_t n, finch_dtype dtype, finch_dptr x, finch_dptr dy, finch_dptr dx)
{
    OCL_NEED(dev && n >= 0 && ((x.buf && dy.buf && dx.buf) || n == 0), "opencl: activation_backward: bad arguments");
    ocl_args a = {0};
    int rc = activation_args(&a, act, param, n, dtype, x, "activation_backward");
    if (rc) return rc;
    ocl_arg_ptr(&a, ocl_p(dy));
    ocl_arg_ptr(&a, ocl_p(dx));
    return ocl_launch_1d(dev, s, OCL_K_activation_backward, &a, n);
}

/* Checks a gated-unit call and starts its arguments: act, n, dim, dtype, gate, ldg, up, ldu. */
static int glu_args(ocl_args *a, finch_activation act, int64_t n, int64_t dim, finch_dtype dtype, finch_dptr gate,
                    int64_t ldg, finch_dptr up, int64_t ldu, const char *entry)
{
    if (act == FINCH_ACT_SOFTCAP)
        return ocl_fail(FINCH_ERR_INVALID_ARGUMENT, "opencl: %s: a gated unit takes no softcap activation", entry);
    int rc = check_activation(act, 0, entry);
    if (!rc) rc = ocl_check_float_type(dtype, entry);
    if (!rc && (n < 0 || dim < 0 || ldg < dim || ldu < dim))
        rc = ocl_fail(FINCH_ERR_INVALID_ARGUMENT, "opencl: %s: bad shape (n %lld, dim %lld, ldg %lld, ldu %lld)", entry,
                      (long long)n, (long long)dim, (long long)ldg, (long long)ldu);
    if (rc) return rc;
    ocl_arg_i(a, act);
    ocl_arg_l(a, n);
    ocl_arg_l(a, dim);
    ocl_arg_i(a, dtype);
    ocl_arg_ptr(a, ocl_p(gate));
    ocl_arg_l(a, ldg);
    ocl_arg_ptr(a, ocl_p(up));
    ocl_arg_l(a, ldu);
    return FINCH_OK;
}

int ocl_glu_forward(finch_plugin_device *dev, finch_plugin_stream *s, finch_activation act, int64_t n, int64_t dim,
                    finch_dtype dtype, finch_dptr gate, int64_t ldg, finch_dptr up, int64_t ldu, finch_dptr out)
{
    OCL_NEED(dev, "opencl: glu_forward: device is NULL");
    ocl_args a = {0};
    int rc = glu_args(&a, act, n, dim, dtype, gate, ldg, up, ldu, "glu_forward");
    if (rc) return rc;
    ocl_arg_ptr(&a, ocl_p(out));
    return ocl_launch_2d(dev, s, OCL_K_glu_forward, &a, dim, n);
}

int ocl_glu_backward(finch_plugin_device *dev, finch_plugin_stream *s, finch_activation act, int64_t n, int64_t dim,
                     finch_dtype dtype, finch_dptr gate, int64_t ldg, finch_dptr up, int64_t ldu, finch_dptr dout,
                     finch_dptr dgate, finch_dptr dup)
{
    OCL_NEED(dev, "opencl: glu_backward: device is NULL");
    ocl_args a = {0};
    int rc = glu_args(&a, act, n, dim, dtype, gate, ldg, up, ldu, "glu_backward");
    if (rc) return rc;
    ocl_arg_ptr(&a, ocl_p(dout));
    ocl_arg_ptr(&a, ocl_p(dgate));
    ocl_arg_ptr(&a, ocl_p(dup));
    return ocl_launch_2d(dev, s, OCL_K_glu_backward, &a, dim, n);
}

/* Checks what both AdamW entries need and adds the arguments they share: param_type, param, whether
 * there is a master copy, master, grad. With n == 0 only the bias corrections are checked. */
static int adamw_args(ocl_args *a, int64_t n, float bias_correction1, float bias_correction2, finch_dtype param_type,
                      finch_dptr param, finch_dptr master, finch_dptr grad, const char *entry)
{
    OCL_NEED(bias_correction1 > 0 && bias_correction2 > 0, "opencl: %s: bias corrections %g, %g must be > 0", entry,
             bias_correction1, bias_correction2);
    if (n == 0) return FINCH_OK;
    if (!master.buf && param_type != FINCH_DTYPE_F32)
        return ocl_fail(FINCH_ERR_INVALID_ARGUMENT, "opencl: %s: a non-f32 parameter needs an f32 master copy", entry);
    int rc = ocl_check_float_type(param_type, entry);
    if (rc) return rc;
    ocl_arg_i(a, param_type);
    ocl_arg_ptr(a, ocl_p(param));
    ocl_arg_i(a, master.buf != NULL);
    ocl_arg_ptr(a, ocl_p(master));
    ocl_arg_ptr(a, ocl_p(grad));
    return FINCH_OK;
}

int ocl_adamw_step(finch_plugin_device *dev, finch_plugin_stream *s, const finch_adamw_desc *d)
{
    OCL_NEED(dev && d && d->n >= 0, "opencl: adamw_step: bad arguments");
    OCL_NEED(d->n == 0 || (d->param.buf && d->grad.buf && d->m.buf && d->v.buf),
             "opencl: adamw_step: param, grad, m and v are required");
    ocl_args a = {0};
    ocl_arg_l(&a, d->n);
    int rc = adamw_args(&a, d->n, d->bias_correction1, d->bias_correction2, d->param_type, d->param, d->master, d->grad,
                        "adamw_step");
    if (rc || d->n == 0) return rc;
    ocl_arg_ptr(&a, ocl_p(d->m));
    ocl_arg_ptr(&a, ocl_p(d->v));
    ocl_arg_f(&a, d->lr);
    ocl_arg_f(&a, d->beta1);
    ocl_arg_f(&a, d->beta2);
    ocl_arg_f(&a, d->eps);
    ocl_arg_f(&a, d->weight_decay);
    ocl_arg_f(&a, d->grad_scale);
    ocl_arg_f(&a, d->bias_correction1);
    ocl_arg_f(&a, d->bias_correction2);
    return ocl_launch_1d(dev, s, OCL_K_adamw_step, &a, d->n);
}

int ocl_adamw8bit_step(finch_plugin_device *dev, finch_plugin_stream *s, const finch_adamw8bit_desc *d)
{
    OCL_NEED(dev && d && d->n >= 0 && d->blocksize >= 1 && d->blocksize <= 4096, "opencl: adamw8bit_step: bad arguments (blocksize %lld)",
             d ? (long long)d->blocksize : 0LL);
    OCL_NEED(d->n == 0 || (d->param.buf && d->grad.buf && d->m_codes.buf && d->v_codes.buf && d->m_absmax.buf &&
                           d->v_absmax.buf && d->m_map.buf && d->v_map.buf),
             "opencl: adamw8bit_step: param, grad, codes, scales and maps are required");
    ocl_args a = {0};
    ocl_arg_l(&a, d->n);
    ocl_arg_l(&a, d->blocksize);
    int rc = adamw_args(&a, d->n, d->bias_correction1, d->bias_correction2, d->param_type, d->param, d->master, d->grad,
                        "adamw8bit_step");
    if (rc || d->n == 0) return rc;
    ocl_arg_ptr(&a, ocl_p(d->m_codes));
    ocl_arg_ptr(&a, ocl_p(d->v_codes));
    ocl_arg_ptr(&a, ocl_p(d->m_absmax));
    ocl_arg_ptr(&a, ocl_p(d->v_absmax));
    ocl_arg_ptr(&a, ocl_p(d->m_map));
    ocl_arg_ptr(&a, ocl_p(d->v_map));
    ocl_arg_f(&a, d->beta1);
    ocl_arg_f(&a, d->beta2);
    ocl_arg_f(&a, d->eps);
    ocl_arg_f(&a, d->grad_scale);
    ocl_arg_f(&a, 1.0f - d->lr * d->weight_decay);
    ocl_arg_f(&a, d->lr / d->bias_correction1);
    ocl_arg_f(&a, 1.0f / sqrtf(d->bias_correction2));
    return ocl_launch_rows(dev, s, OCL_K_adamw8bit_step, &a, (d->n + d->blocksize - 1) / d->blocksize);
}
