/* Kernel launches. Arguments are collected first and set under the device's launch lock, since
 * a cl_kernel's arguments are shared by every thread that uses the device. */
#include <stdio.h>

#include "ocl.h"

static void *next_arg(ocl_args *a, size_t size)
{
    if (a->n >= OCL_MAX_ARGS) return NULL; /* caught by ocl_launch: the count is then wrong */
    a->a[a->n].size = size;
    a->a[a->n].null_mem = 0;
    return &a->a[a->n++].v;
}

void ocl_arg_ptr(ocl_args *a, ocl_ptr p)
{
    cl_mem *m = next_arg(a, sizeof(cl_mem));
    if (m) {
        *m = p.mem;
        a->a[a->n - 1].null_mem = p.mem == NULL;
    }
    ocl_arg_u(a, p.off);
}

void ocl_arg_i(ocl_args *a, int v)
{
    cl_int *p = next_arg(a, sizeof(cl_int));
    if (p) *p = v;
}

void ocl_arg_l(ocl_args *a, int64_t v)
{
    cl_long *p = next_arg(a, sizeof(cl_long));
    if (p) *p = v;
}

void ocl_arg_u(ocl_args *a, uint64_t v)
{
    cl_ulong *p = next_arg(a, sizeof(cl_ulong));
    if (p) *p = v;
}

void ocl_arg_f(ocl_args *a, float v)
{
    cl_float *p = next_arg(a, sizeof(cl_float));
    if (p) *p = v;
}

int ocl_launch(finch_plugin_device *dev, finch_plugin_stream *s, ocl_kernel_id k, const ocl_args *a, int dims,
               const size_t *global, const size_t *local)
{
    size_t g[3];
    for (int d = 0; d < dims; d++) {
        if (global[d] == 0) return FINCH_OK; /* nothing to do */
        g[d] = local ? (global[d] + local[d] - 1) / local[d] * local[d] : global[d];
    }
    cl_kernel kernel = dev->kernels[k];
    pthread_mutex_lock(&dev->launch_lock);
    cl_int err = CL_SUCCESS;
    cl_uint count = 0;
    clGetKernelInfo(kernel, CL_KERNEL_NUM_ARGS, sizeof count, &count, NULL);
    if (count != (cl_uint)a->n) err = CL_INVALID_KERNEL_ARGS;
    for (int i = 0; i < a->n && err == CL_SUCCESS; i++)
        err = clSetKernelArg(kernel, (cl_uint)i, a->a[i].size, a->a[i].null_mem ? NULL : (const void *)&a->a[i].v);
    const char *call = err == CL_SUCCESS ? "clEnqueueNDRangeKernel" : "clSetKernelArg";
    if (err == CL_SUCCESS)
        err = clEnqueueNDRangeKernel(ocl_stream(dev, s)->queue, kernel, (cl_uint)dims, NULL, g, local, 0, NULL, NULL);
    pthread_mutex_unlock(&dev->launch_lock);
    if (err == CL_SUCCESS) return FINCH_OK;
    char name[64] = {0}, what[160];
    clGetKernelInfo(kernel, CL_KERNEL_FUNCTION_NAME, sizeof name - 1, name, NULL);
    if (count != (cl_uint)a->n)
        snprintf(what, sizeof what, "kernel '%s' takes %u arguments, %d given", name, count, a->n);
    else
        snprintf(what, sizeof what, "kernel '%s'", name);
    return ocl_cl_fail(err, call, what);
}

static size_t wg_1d(finch_plugin_device *dev)
{
    return dev->max_work_group < 256 ? dev->max_work_group : 256;
}

int ocl_launch_1d(finch_plugin_device *dev, finch_plugin_stream *s, ocl_kernel_id k, const ocl_args *a, int64_t n)
{
    size_t global = (size_t)n, local = wg_1d(dev);
    return ocl_launch(dev, s, k, a, 1, &global, &local);
}

int ocl_launch_2d(finch_plugin_device *dev, finch_plugin_stream *s, ocl_kernel_id k, const ocl_args *a,
                  int64_t cols, int64_t rows)
{
    size_t global[2] = {(size_t)cols, (size_t)rows};
    size_t local[2] = {cols >= 64 ? 64 : (cols >= 16 ? 16 : 4), 1};
    local[1] = wg_1d(dev) / local[0] >= 4 ? 4 : 1;
    return ocl_launch(dev, s, k, a, 2, global, local);
}

int ocl_launch_rows(finch_plugin_device *dev, finch_plugin_stream *s, ocl_kernel_id k, const ocl_args *a,
                    int64_t rows)
{
    size_t local = OCL_ROW_WG, global = (size_t)rows * OCL_ROW_WG;
    return ocl_launch(dev, s, k, a, 1, &global, &local);
}

size_t ocl_dtype_size(finch_dtype t)
{
    switch (t) {
    case FINCH_DTYPE_F32: case FINCH_DTYPE_I32: return 4;
    case FINCH_DTYPE_BF16: case FINCH_DTYPE_F16: return 2;
    case FINCH_DTYPE_U8: return 1;
    default: return 0;
    }
}

int ocl_check_float_type(finch_dtype t, const char *what)
{
    if (t == FINCH_DTYPE_F32 || t == FINCH_DTYPE_BF16 || t == FINCH_DTYPE_F16) return FINCH_OK;
    return ocl_fail(FINCH_ERR_INVALID_ARGUMENT, "opencl: %s: storage type %d is not f32, bf16 or f16", what, (int)t);
}
