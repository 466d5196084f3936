/* One AdamW step with 8-bit blockwise moments (finch_adamw8bit_desc): one thread block per
 * quantisation block decodes the moments, takes adamw_step's f32 update element by element in the
 * CPU backend's order (every operation rounded on its own, no fused multiply-adds, so both backends
 * give the same bits), and re-quantises the block from its new absmax. */
#include "gpu_plugin.h"

#include <math.h>

#define THREADS 256
#define MAX_BLOCK 4096

/* The number of midpoints between neighbouring map values that x exceeds (ties go low). */
__device__ __forceinline__ uint8_t nearest_code(const float *map, float x)
{
    int lo = 0, hi = 255;
    while (lo < hi) {
        int k = (lo + hi) / 2;
        if (x > __fmul_rn(__fadd_rn(map[k], map[k + 1]), 0.5f)) lo = k + 1;
        else hi = k;
    }
    return (uint8_t)lo;
}

__global__ void __launch_bounds__(THREADS) adamw8bit_kernel(finch_adamw8bit_desc d, float decay, float step, float rbc2,
                                                            float *p, void *param, const float *grad, uint8_t *m_codes,
                                                            uint8_t *v_codes, float *m_absmax, float *v_absmax,
                                                            const float *m_map_g, const float *v_map_g)
{
    __shared__ float m_new[MAX_BLOCK], v_new[MAX_BLOCK], m_map[256], v_map[256], red[32];
    int64_t b = blockIdx.x, i0 = b * d.blocksize, len = d.n - i0 < d.blocksize ? d.n - i0 : d.blocksize;
    for (int k = threadIdx.x; k < 256; k += THREADS) {
        m_map[k] = m_map_g[k];
        v_map[k] = v_map_g[k];
    }
    __syncthreads();
    float m_scale = m_absmax[b], v_scale = v_absmax[b], m_max = 0.0f, v_max = 0.0f;
    for (int64_t k = threadIdx.x; k < len; k += THREADS) {
        int64_t i = i0 + k;
        float g = __fmul_rn(grad[i], d.grad_scale);
        float mi = __fadd_rn(__fmul_rn(d.beta1, __fmul_rn(m_map[m_codes[i]], m_scale)), __fmul_rn(1.0f - d.beta1, g));
        float vi = __fadd_rn(__fmul_rn(d.beta2, __fmul_rn(v_map[v_codes[i]], v_scale)),
                             __fmul_rn(__fmul_rn(1.0f - d.beta2, g), g));
        p[i] = __fsub_rn(__fmul_rn(p[i], decay), __fdiv_rn(__fmul_rn(step, mi), __fadd_rn(__fmul_rn(sqrtf(vi), rbc2), d.eps)));
        if (param) store_from_f32(param, d.param_type, i, p[i]);
        m_new[k] = mi;
        v_new[k] = vi;
        m_max = fmaxf(m_max, fabsf(mi));
        v_max = fmaxf(v_max, fabsf(vi));
    }
    m_max = block_max(m_max, red);
    v_max = block_max(v_max, red);
    for (int64_t k = threadIdx.x; k < len; k += THREADS) {
        m_codes[i0 + k] = nearest_code(m_map, m_max > 0.0f ? __fdiv_rn(m_new[k], m_max) : 0.0f);
        v_codes[i0 + k] = nearest_code(v_map, v_max > 0.0f ? __fdiv_rn(v_new[k], v_max) : 0.0f);
    }
    if (threadIdx.x == 0) {
        m_absmax[b] = m_max;
        v_absmax[b] = v_max;
    }
}

extern "C" int plugin_adamw8bit_step(finch_plugin_device *dev, finch_plugin_stream *s, const finch_adamw8bit_desc *d)
{
    gpuStream_t st = NULL;
    GPU_TRY(gpu_begin(dev, s, &st));
    if (!d) return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": adamw8bit_step: descriptor is NULL");
    if (d->n < 0 || d->blocksize < 1 || d->blocksize > MAX_BLOCK)
        return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": adamw8bit_step: n %lld < 0 or blocksize %lld outside [1, %d]",
                        (long long)d->n, (long long)d->blocksize, MAX_BLOCK);
    if (!(d->bias_correction1 > 0.0f) || !(d->bias_correction2 > 0.0f))
        return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": adamw8bit_step: bias corrections %g, %g must be > 0",
                        d->bias_correction1, d->bias_correction2);
    if (!gpu_is_float_type(d->param_type))
        return gpu_fail(FINCH_ERR_UNSUPPORTED, FINCH_GPU_PLUGIN_NAME ": adamw8bit_step: param dtype %s", gpu_dtype_name(d->param_type));
    float *master = (float *)gpu_ptr(d->master);
    void *param = gpu_ptr(d->param);
    if (!master && d->param_type != FINCH_DTYPE_F32)
        return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": adamw8bit_step: a %s parameter needs an f32 master copy",
                        gpu_dtype_name(d->param_type));
    if (!param || !gpu_ptr(d->grad) || !gpu_ptr(d->m_codes) || !gpu_ptr(d->v_codes) || !gpu_ptr(d->m_absmax) ||
        !gpu_ptr(d->v_absmax) || !gpu_ptr(d->m_map) || !gpu_ptr(d->v_map))
        return gpu_fail(FINCH_ERR_INVALID_ARGUMENT,
                        FINCH_GPU_PLUGIN_NAME ": adamw8bit_step: param, grad, codes, absmax or maps are absent");
    if (d->n == 0) return FINCH_OK;
    int64_t blocks = (d->n + d->blocksize - 1) / d->blocksize;
    if (blocks > INT32_MAX)
        return gpu_fail(FINCH_ERR_UNSUPPORTED, FINCH_GPU_PLUGIN_NAME ": adamw8bit_step: %lld blocks", (long long)blocks);
    float decay = 1.0f - d->lr * d->weight_decay, step = d->lr / d->bias_correction1;
    float rbc2 = 1.0f / sqrtf(d->bias_correction2);
    adamw8bit_kernel<<<(unsigned)blocks, THREADS, 0, st>>>(
        *d, decay, step, rbc2, master ? master : (float *)param, master ? param : NULL, (const float *)gpu_ptr(d->grad),
        (uint8_t *)gpu_ptr(d->m_codes), (uint8_t *)gpu_ptr(d->v_codes), (float *)gpu_ptr(d->m_absmax),
        (float *)gpu_ptr(d->v_absmax), (const float *)gpu_ptr(d->m_map), (const float *)gpu_ptr(d->v_map));
    return GPU_LAUNCHED("adamw8bit_step");
}
