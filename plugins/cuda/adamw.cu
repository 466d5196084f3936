/* One AdamW step (decoupled weight decay), element-wise over f32 state. */
#include "gpu_plugin.h"

#include <math.h>

#define THREADS 256

/* The CPU backend's operations in its order, each rounded on its own (no contraction into fused
 * multiply-adds), so both backends give the same bits. */
__global__ void adamw_kernel(finch_adamw_desc d, float decay, float step, float rbc2, float *p, void *param,
                             const float *grad, float *m, float *v)
{
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < d.n; i += (int64_t)gridDim.x * blockDim.x) {
        float g = __fmul_rn(grad[i], d.grad_scale);
        float mi = __fadd_rn(__fmul_rn(d.beta1, m[i]), __fmul_rn(1.0f - d.beta1, g));
        float vi = __fadd_rn(__fmul_rn(d.beta2, v[i]), __fmul_rn(__fmul_rn(1.0f - d.beta2, g), g));
        m[i] = mi;
        v[i] = vi;
        float w = __fsub_rn(__fmul_rn(p[i], decay),
                            __fdiv_rn(__fmul_rn(step, mi), __fadd_rn(__fmul_rn(sqrtf(vi), rbc2), d.eps)));
        p[i] = w;
        if (param) store_from_f32(param, d.param_type, i, w);
    }
}

extern "C" int plugin_adamw_step(finch_plugin_device *dev, finch_plugin_stream *s, const finch_adamw_desc *d)
{
    gpuStream_t st = NULL;
    GPU_TRY(gpu_begin(dev, s, &st));
    if (d->n <= 0) return FINCH_OK;
    float *master = (float *)gpu_ptr(d->master);
    void *param = gpu_ptr(d->param);
    if (!param || !gpu_ptr(d->grad) || !gpu_ptr(d->m) || !gpu_ptr(d->v))
        return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": adamw_step: param, grad, m or v is absent");
    if (!master && d->param_type != FINCH_DTYPE_F32)
        return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": adamw_step: a %s parameter needs an f32 master copy",
                        gpu_dtype_name(d->param_type));
    if (!gpu_is_float_type(d->param_type))
        return gpu_fail(FINCH_ERR_UNSUPPORTED, FINCH_GPU_PLUGIN_NAME ": adamw_step: param dtype %s", gpu_dtype_name(d->param_type));
    if (!(d->bias_correction1 > 0.0f) || !(d->bias_correction2 > 0.0f))
        return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": adamw_step: bias corrections %g, %g must be > 0",
                        d->bias_correction1, d->bias_correction2);
    float decay = 1.0f - d->lr * d->weight_decay, step = d->lr / d->bias_correction1;
    float rbc2 = 1.0f / sqrtf(d->bias_correction2);
    adamw_kernel<<<gpu_blocks(d->n, THREADS), THREADS, 0, st>>>(*d, decay, step, rbc2, master ? master : (float *)param,
                                                               master ? param : NULL,
                                                               (const float *)gpu_ptr(d->grad), (float *)gpu_ptr(d->m),
                                                               (float *)gpu_ptr(d->v));
    return GPU_LAUNCHED("adamw_step");
}
