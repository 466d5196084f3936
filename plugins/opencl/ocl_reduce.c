/* sum_squares: work-groups write partial sums to scratch, one more work-group adds them up. */
#include "ocl.h"

#define OCL_REDUCE_GROUPS 256

int ocl_sum_squares(finch_plugin_device *dev, finch_plugin_stream *s, int64_t n, finch_dtype dtype, finch_dptr x,
                    finch_dptr sum_sq)
{
    OCL_NEED(dev && n >= 0 && sum_sq.buf && (x.buf || n == 0), "opencl: sum_squares: bad arguments");
    int rc = ocl_check_float_type(dtype, "sum_squares");
    if (rc || n == 0) return rc;
    s = ocl_stream(dev, s);
    int64_t groups = (n + OCL_ROW_WG - 1) / OCL_ROW_WG;
    if (groups > OCL_REDUCE_GROUPS) groups = OCL_REDUCE_GROUPS;
    ocl_ptr partial;
    rc = ocl_scratch(dev, s, (size_t)groups * sizeof(float), &partial);
    if (rc) return rc;

    ocl_args a = {0};
    ocl_arg_l(&a, n);
    ocl_arg_i(&a, dtype);
    ocl_arg_ptr(&a, ocl_p(x));
    ocl_arg_ptr(&a, partial);
    rc = ocl_launch_rows(dev, s, OCL_K_sum_squares_partial, &a, groups);
    if (rc) return rc;

    ocl_args b = {0};
    ocl_arg_l(&b, groups);
    ocl_arg_i(&b, 1);
    ocl_arg_i(&b, 1);
    ocl_arg_ptr(&b, partial);
    ocl_arg_ptr(&b, ocl_p(sum_sq));
    return ocl_launch_rows(dev, s, OCL_K_sum_strided, &b, 1);
}
