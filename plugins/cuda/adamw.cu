/* One AdamW step (decoupled weight decay), element-wise over f32 state. */
#include "gpu_plugin.h"

#define THREADS 256

__global__ void adamw_kernel(finch_adamw_desc d, float *p, void *param, const float *grad, float *m, float *v)
{
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < d.n; i += (int64_t)gridDim.x * blockDim.x) {
        float g = grad[i] * d.grad_scale;
        float w = p[i];
        w -= d.lr * d.weight_decay * w;
        float mi = d.beta1 * m[i] + (1.0f - d.beta1) * g;
        float vi = d.beta2 * v[i] + (1.0f - d.beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        w -= d.lr * (mi / d.bias_correction1) / (sqrtf(vi / d.bias_correction2) + d.eps);
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
    adamw_kernel<<<gpu_blocks(d->n, THREADS), THREADS, 0, st>>>(*d, master ? master : (float *)param, master ? param : NULL,
                                                               (const float *)gpu_ptr(d->grad), (float *)gpu_ptr(d->m),
                                                               (float *)gpu_ptr(d->v));
    return GPU_LAUNCHED("adamw_step");
}
