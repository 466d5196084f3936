/* AdamW steps (decoupled weight decay), element-wise over f32 state: one tensor (adamw_step) or many
 * in a few launches (adamw_step_multi: a LoRA model steps hundreds of small tensors, each of which
 * would otherwise be a launch of its own). */
#include "gpu_plugin.h"

#include <math.h>

#define THREADS 256
#define BLOCK_ELEMS (4 * THREADS) /* elements a block updates */
#define LIST_TENSORS 24           /* tensors a launch takes: the list stays well inside 4 KiB of parameters */

/* One tensor's step as the kernel takes it. */
typedef struct adamw_tensor {
    float *p;          /* the f32 values updated: the master copy, or the parameter itself */
    void *param;       /* the parameter to store the result into when p is a master copy, else NULL */
    const float *grad;
    float *m, *v;
    int64_t n;
    int param_type;
    float beta1, beta2, eps, grad_scale, decay, step, rbc2;
} adamw_tensor;

/* The tensors of one launch; block b works on tensor t where block0[t] <= b < block0[t + 1]. */
typedef struct adamw_list {
    adamw_tensor t[LIST_TENSORS];
    int block0[LIST_TENSORS + 1];
    int count;
} adamw_list;

/* The CPU backend's operations in its order, each rounded on its own (no contraction into fused
 * multiply-adds), so both backends give the same bits. */
__global__ void __launch_bounds__(THREADS) adamw_kernel(adamw_list list)
{
    int t = 0;
    while (t + 1 < list.count && (int)blockIdx.x >= list.block0[t + 1]) t++;
    const adamw_tensor &d = list.t[t];
    int64_t i0 = (int64_t)(blockIdx.x - list.block0[t]) * BLOCK_ELEMS, i1 = i0 + BLOCK_ELEMS < d.n ? i0 + BLOCK_ELEMS : d.n;
    for (int64_t i = i0 + threadIdx.x; i < i1; i += THREADS) {
        float g = __fmul_rn(d.grad[i], d.grad_scale);
        float mi = __fadd_rn(__fmul_rn(d.beta1, d.m[i]), __fmul_rn(1.0f - d.beta1, g));
        float vi = __fadd_rn(__fmul_rn(d.beta2, d.v[i]), __fmul_rn(__fmul_rn(1.0f - d.beta2, g), g));
        d.m[i] = mi;
        d.v[i] = vi;
        float w = __fsub_rn(__fmul_rn(d.p[i], d.decay),
                            __fdiv_rn(__fmul_rn(d.step, mi), __fadd_rn(__fmul_rn(sqrtf(vi), d.rbc2), d.eps)));
        d.p[i] = w;
        if (d.param) store_from_f32(d.param, d.param_type, i, w);
    }
}

/* d checked and turned into the kernel's form. */
static int adamw_tensor_of(const finch_adamw_desc *d, const char *entry, adamw_tensor *t)
{
    float *master = (float *)gpu_ptr(d->master);
    void *param = gpu_ptr(d->param);
    if (d->n < 0) return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": %s: n %lld < 0", entry, (long long)d->n);
    if (!param || !gpu_ptr(d->grad) || !gpu_ptr(d->m) || !gpu_ptr(d->v))
        return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": %s: param, grad, m or v is absent", entry);
    if (!master && d->param_type != FINCH_DTYPE_F32)
        return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": %s: a %s parameter needs an f32 master copy", entry,
                        gpu_dtype_name(d->param_type));
    if (!gpu_is_float_type(d->param_type))
        return gpu_fail(FINCH_ERR_UNSUPPORTED, FINCH_GPU_PLUGIN_NAME ": %s: param dtype %s", entry, gpu_dtype_name(d->param_type));
    if (!(d->bias_correction1 > 0.0f) || !(d->bias_correction2 > 0.0f))
        return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": %s: bias corrections %g, %g must be > 0", entry,
                        d->bias_correction1, d->bias_correction2);
    t->p = master ? master : (float *)param;
    t->param = master ? param : NULL;
    t->grad = (const float *)gpu_ptr(d->grad);
    t->m = (float *)gpu_ptr(d->m);
    t->v = (float *)gpu_ptr(d->v);
    t->n = d->n;
    t->param_type = (int)d->param_type;
    t->beta1 = d->beta1;
    t->beta2 = d->beta2;
    t->eps = d->eps;
    t->grad_scale = d->grad_scale;
    t->decay = 1.0f - d->lr * d->weight_decay;
    t->step = d->lr / d->bias_correction1;
    t->rbc2 = 1.0f / sqrtf(d->bias_correction2);
    return FINCH_OK;
}

/* The descriptors' steps, LIST_TENSORS tensors a launch. */
static int adamw_steps(gpuStream_t st, int count, const finch_adamw_desc *descs, const char *entry)
{
    const int64_t max_blocks = (int64_t)1 << 30; /* a launch's blocks (4 Ti elements) */
    adamw_list list;
    list.count = 0;
    int64_t blocks = 0;
    for (int i = 0; i <= count; i++) {
        adamw_tensor t;
        int64_t need = 0;
        if (i < count && descs[i].n == 0) continue;
        if (i < count) {
            GPU_TRY(adamw_tensor_of(&descs[i], entry, &t));
            need = (t.n + BLOCK_ELEMS - 1) / BLOCK_ELEMS;
            if (need > max_blocks)
                return gpu_fail(FINCH_ERR_UNSUPPORTED, FINCH_GPU_PLUGIN_NAME ": %s: a tensor of %lld elements", entry,
                                (long long)t.n);
        }
        if (list.count && (i == count || list.count == LIST_TENSORS || blocks + need > max_blocks)) {
            list.block0[list.count] = (int)blocks;
            adamw_kernel<<<(unsigned)blocks, THREADS, 0, st>>>(list);
            GPU_TRY(GPU_LAUNCHED(entry));
            list.count = 0;
            blocks = 0;
        }
        if (need == 0) continue;
        list.t[list.count] = t;
        list.block0[list.count++] = (int)blocks;
        blocks += need;
    }
    return FINCH_OK;
}

extern "C" int plugin_adamw_step(finch_plugin_device *dev, finch_plugin_stream *s, const finch_adamw_desc *d)
{
    gpuStream_t st = NULL;
    GPU_TRY(gpu_begin(dev, s, &st));
    return adamw_steps(st, 1, d, "adamw_step");
}

extern "C" int plugin_adamw_step_multi(finch_plugin_device *dev, finch_plugin_stream *s, int count, const finch_adamw_desc *descs)
{
    gpuStream_t st = NULL;
    GPU_TRY(gpu_begin(dev, s, &st));
    if (count < 0 || (count && !descs))
        return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": adamw_step_multi: %d descriptors", count);
    return adamw_steps(st, count, descs, "adamw_step_multi");
}
