/* RMSNorm and LayerNorm entries: a row kernel for y / dx, a column kernel for the parameter
 * gradients. */
#include "ocl.h"

static int check_norm(int64_t n, int64_t dim, finch_dtype dtype, finch_dtype w_type, int has_w, const char *entry)
{
    if (n < 0 || dim <= 0)
        return ocl_fail(FINCH_ERR_INVALID_ARGUMENT, "opencl: %s: bad shape n %lld dim %lld", entry, (long long)n,
                        (long long)dim);
    int rc = ocl_check_float_type(dtype, entry);
    if (!rc && has_w) rc = ocl_check_float_type(w_type, entry);
    return rc;
}

/* The arguments every row kernel starts with: dim, dtype, x, then the weight (its type, whether present, it). */
static void row_args(ocl_args *a, int64_t dim, finch_dtype dtype, finch_dptr x, finch_dtype w_type, finch_dptr w)
{
    ocl_arg_l(a, dim);
    ocl_arg_i(a, dtype);
    ocl_arg_ptr(a, ocl_p(x));
    ocl_arg_i(a, w_type);
    ocl_arg_i(a, w.buf != NULL);
    ocl_arg_ptr(a, ocl_p(w));
}

/* The arguments every column (parameter gradient) kernel starts with; mean is absent for RMSNorm. */
static void column_args(ocl_args *a, int64_t n, int64_t dim, finch_dtype dtype, finch_dptr x, finch_dptr mean,
                        finch_dptr rstd, finch_dptr dy)
{
    ocl_arg_l(a, n);
    ocl_arg_l(a, dim);
    ocl_arg_i(a, dtype);
    ocl_arg_ptr(a, ocl_p(x));
    if (mean.buf) ocl_arg_ptr(a, ocl_p(mean));
    ocl_arg_ptr(a, ocl_p(rstd));
    ocl_arg_ptr(a, ocl_p(dy));
}

/* rmsnorm_forward, and with d and sum the residual add before it (add_rmsnorm_forward). */
static int rmsnorm_forward(finch_plugin_device *dev, finch_plugin_stream *s, const char *entry, int64_t n, int64_t dim,
                           finch_dtype dtype, finch_dptr x, finch_dptr d, finch_dptr sum, finch_dtype w_type, finch_dptr w,
                           float weight_offset, float eps, finch_dptr y, finch_dptr rstd)
{
    int add = d.buf != NULL;
    OCL_NEED(dev, "opencl: %s: device is NULL", entry);
    OCL_NEED(w.buf, "opencl: %s: the weight is absent", entry);
    int rc = check_norm(n, dim, dtype, w_type, 1, entry);
    if (rc || n == 0) return rc;
    OCL_NEED(x.buf && y.buf && rstd.buf, "opencl: %s: x, y or rstd is absent", entry);
    ocl_args a = {0};
    row_args(&a, dim, dtype, x, w_type, w);
    ocl_arg_f(&a, weight_offset);
    ocl_arg_f(&a, eps);
    ocl_arg_ptr(&a, ocl_p(y));
    ocl_arg_ptr(&a, ocl_p(rstd));
    if (add) {
        ocl_arg_ptr(&a, ocl_p(d));
        ocl_arg_ptr(&a, ocl_p(sum));
    }
    return ocl_launch_rows(dev, s, add ? OCL_K_add_rmsnorm_forward : OCL_K_rmsnorm_forward, &a, n);
}

int ocl_rmsnorm_forward(finch_plugin_device *dev, finch_plugin_stream *s, int64_t n, int64_t dim, finch_dtype dtype,
                        finch_dptr x, finch_dtype w_type, finch_dptr w, float weight_offset, float eps, finch_dptr y,
                        finch_dptr rstd)
{
    return rmsnorm_forward(dev, s, "rmsnorm_forward", n, dim, dtype, x, (finch_dptr){0}, (finch_dptr){0}, w_type, w,
                           weight_offset, eps, y, rstd);
}

int ocl_add_rmsnorm_forward(finch_plugin_device *dev, finch_plugin_stream *s, int64_t n, int64_t dim, finch_dtype dtype,
                            finch_dptr x, finch_dptr d, finch_dptr sum, finch_dtype w_type, finch_dptr w,
                            float weight_offset, float eps, finch_dptr y, finch_dptr rstd)
{
    OCL_NEED(d.buf && sum.buf, "opencl: add_rmsnorm_forward: d or sum is absent");
    return rmsnorm_forward(dev, s, "add_rmsnorm_forward", n, dim, dtype, x, d, sum, w_type, w, weight_offset, eps, y,
                           rstd);
}

int ocl_rmsnorm_backward(finch_plugin_device *dev, finch_plugin_stream *s, int64_t n, int64_t dim, finch_dtype dtype,
                         finch_dptr x, finch_dtype w_type, finch_dptr w, float weight_offset, finch_dptr rstd,
                         finch_dptr dy, finch_dptr dx, int dx_accumulate, finch_dptr dw)
{
    OCL_NEED(dev, "opencl: rmsnorm_backward: device is NULL");
    OCL_NEED(w.buf, "opencl: rmsnorm_backward: the weight is absent");
    int rc = check_norm(n, dim, dtype, w_type, 1, "rmsnorm_backward");
    if (rc || n == 0) return rc;
    OCL_NEED(x.buf && rstd.buf && dy.buf, "opencl: rmsnorm_backward: x, rstd or dy is absent");
    if (dx.buf) {
        ocl_args a = {0};
        row_args(&a, dim, dtype, x, w_type, w);
        ocl_arg_f(&a, weight_offset);
        ocl_arg_ptr(&a, ocl_p(rstd));
        ocl_arg_ptr(&a, ocl_p(dy));
        ocl_arg_ptr(&a, ocl_p(dx));
        ocl_arg_i(&a, dx_accumulate);
        if ((rc = ocl_launch_rows(dev, s, OCL_K_rmsnorm_backward, &a, n))) return rc;
    }
    if (dw.buf) {
        ocl_args a = {0};
        column_args(&a, n, dim, dtype, x, (finch_dptr){0}, rstd, dy);
        ocl_arg_ptr(&a, ocl_p(dw));
        if ((rc = ocl_launch_1d(dev, s, OCL_K_rmsnorm_dw, &a, dim))) return rc;
    }
    return FINCH_OK;
}

int ocl_layernorm_forward(finch_plugin_device *dev, finch_plugin_stream *s, int64_t n, int64_t dim, finch_dtype dtype,
                          finch_dptr x, finch_dtype w_type, finch_dptr w, finch_dptr b, float eps, finch_dptr y,
                          finch_dptr mean, finch_dptr rstd)
{
    OCL_NEED(dev, "opencl: layernorm_forward: device is NULL");
    int rc = check_norm(n, dim, dtype, w_type, w.buf || b.buf, "layernorm_forward");
    if (rc || n == 0) return rc;
    OCL_NEED(x.buf && y.buf && mean.buf && rstd.buf, "opencl: layernorm_forward: x, y, mean or rstd is absent");
    ocl_args a = {0};
    row_args(&a, dim, dtype, x, w_type, w);
    ocl_arg_i(&a, b.buf != NULL);
    ocl_arg_ptr(&a, ocl_p(b));
    ocl_arg_f(&a, eps);
    ocl_arg_ptr(&a, ocl_p(y));
    ocl_arg_ptr(&a, ocl_p(mean));
    ocl_arg_ptr(&a, ocl_p(rstd));
    return ocl_launch_rows(dev, s, OCL_K_layernorm_forward, &a, n);
}

int ocl_layernorm_backward(finch_plugin_device *dev, finch_plugin_stream *s, int64_t n, int64_t dim,
                           finch_dtype dtype, finch_dptr x, finch_dtype w_type, finch_dptr w, finch_dptr mean,
                           finch_dptr rstd, finch_dptr dy, finch_dptr dx, int dx_accumulate, finch_dptr dw,
                           finch_dptr db)
{
    OCL_NEED(dev, "opencl: layernorm_backward: device is NULL");
    int rc = check_norm(n, dim, dtype, w_type, w.buf != NULL, "layernorm_backward");
    if (rc || n == 0) return rc;
    OCL_NEED(x.buf && mean.buf && rstd.buf && dy.buf, "opencl: layernorm_backward: x, mean, rstd or dy is absent");
    if (dx.buf) {
        ocl_args a = {0};
        row_args(&a, dim, dtype, x, w_type, w);
        ocl_arg_ptr(&a, ocl_p(mean));
        ocl_arg_ptr(&a, ocl_p(rstd));
        ocl_arg_ptr(&a, ocl_p(dy));
        ocl_arg_ptr(&a, ocl_p(dx));
        ocl_arg_i(&a, dx_accumulate);
        if ((rc = ocl_launch_rows(dev, s, OCL_K_layernorm_backward, &a, n))) return rc;
    }
    if (dw.buf || db.buf) {
        ocl_args a = {0};
        column_args(&a, n, dim, dtype, x, mean, rstd, dy);
        ocl_arg_i(&a, dw.buf != NULL);
        ocl_arg_ptr(&a, ocl_p(dw));
        ocl_arg_i(&a, db.buf != NULL);
        ocl_arg_ptr(&a, ocl_p(db));
        if ((rc = ocl_launch_1d(dev, s, OCL_K_layernorm_dwdb, &a, dim))) return rc;
    }
    return FINCH_OK;
}
