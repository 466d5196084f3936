/* Rotary embedding in place, "rotate half" layout, with sections (M-RoPE), partial rotation and
 * attn_factor. Backward turns by -theta. */
#include "gpu_plugin.h"

#define THREADS 256

struct rope_params {
    int64_t n_tokens, n_heads, head_dim, half, ldx;
    const int32_t *positions;
    const float *inv_freq;
    int n_sections;
    int section_end[4];   /* running sums of sections */
    float attn_factor, sign; /* sign -1: backward */
};

/* One block per token (grid-stride) and group of heads (blockIdx.y: with few tokens, a decode step's,
 * the heads spread over several blocks): the block's angles (cos, sin of each rotated pair index,
 * shared by every head) go to shared memory once, then the threads walk its heads x pairs. */
template <typename T>
__global__ void rope_kernel(rope_params p, T *x)
{
    gpu_grid_release();
    gpu_grid_wait();
    extern __shared__ float cs[]; /* cos [half], sin [half] */
    int half = (int)p.half, per = (int)((p.n_heads + gridDim.y - 1) / gridDim.y), h0 = (int)blockIdx.y * per;
    int h1 = h0 + per < p.n_heads ? h0 + per : (int)p.n_heads, pairs = (h1 > h0 ? h1 - h0 : 0) * half;
    for (int64_t t = blockIdx.x; t < p.n_tokens; t += gridDim.x) {
        __syncthreads(); /* the previous token's angles are used */
        for (int d = threadIdx.x; d < half; d += blockDim.x) {
            int s = 0;
            while (s < p.n_sections - 1 && d >= p.section_end[s]) s++;
            float theta = (float)p.positions[(int64_t)s * p.n_tokens + t] * p.inv_freq[d];
            cs[d] = cosf(theta) * p.attn_factor;
            cs[half + d] = sinf(theta) * p.attn_factor * p.sign;
        }
        __syncthreads();
        T *row = x + t * p.ldx;
        for (int j = threadIdx.x; j < pairs; j += blockDim.x) {
            int h = j / half, d = j - h * half;
            h += h0;
            T *hr = row + (int64_t)h * p.head_dim;
            float c = cs[d], sn = cs[half + d];
            float x1 = to_f32(hr[d]), x2 = to_f32(hr[d + half]);
            hr[d] = from_f32<T>(x1 * c - x2 * sn);
            hr[d + half] = from_f32<T>(x2 * c + x1 * sn);
        }
    }
}

static int rope(finch_plugin_device *dev, finch_plugin_stream *s, const finch_rope_desc *d, float sign, const char *entry)
{
    gpuStream_t st = NULL;
    GPU_TRY(gpu_begin(dev, s, &st));
    if (d->n_tokens <= 0 || d->n_heads <= 0) return FINCH_OK;
    if (d->rot_dim < 0 || d->rot_dim % 2 || d->rot_dim > d->head_dim || d->ldx < d->n_heads * d->head_dim)
        return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": %s: rot_dim %lld, head_dim %lld, ldx %lld", entry,
                        (long long)d->rot_dim, (long long)d->head_dim, (long long)d->ldx);
    if (d->n_sections < 1 || d->n_sections > 4)
        return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": %s: n_sections %d", entry, d->n_sections);
    rope_params p;
    p.n_tokens = d->n_tokens;
    p.n_heads = d->n_heads;
    p.head_dim = d->head_dim;
    p.half = d->rot_dim / 2;
    p.ldx = d->ldx;
    p.positions = (const int32_t *)gpu_ptr(d->positions);
    p.inv_freq = (const float *)gpu_ptr(d->inv_freq);
    p.n_sections = d->n_sections;
    int sum = 0;
    for (int i = 0; i < 4; i++) {
        sum += i < d->n_sections ? d->sections[i] : 0;
        p.section_end[i] = sum;
    }
    if (d->n_sections > 1 && sum != p.half)
        return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": %s: sections sum to %d, not rot_dim/2 = %lld", entry,
                        sum, (long long)p.half);
    p.attn_factor = d->attn_factor;
    p.sign = sign;
    if (!p.half) return FINCH_OK;
    if (!gpu_ptr(d->x) || !p.positions || !p.inv_freq)
        return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": %s: x, positions or inv_freq is absent", entry);
    if (d->n_heads * p.half > INT32_MAX)
        return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": %s: %lld heads of %lld pairs", entry,
                        (long long)d->n_heads, (long long)p.half);
    unsigned blocks = d->n_tokens < 65535 * 16 ? (unsigned)d->n_tokens : 65535u * 16;
    unsigned groups = d->n_tokens < 64 ? (unsigned)(d->n_heads < 8 ? d->n_heads : 8) : 1;
    size_t smem = (size_t)p.half * 2 * sizeof(float);
    gpuError_t err = gpuSuccess;
    FINCH_DISPATCH_FLOAT(d->dtype, T, entry,
        err = gpu_launch(rope_kernel<T>, dim3(blocks, groups), dim3(THREADS), smem, st, p, (T *)gpu_ptr(d->x)));
    return gpu_check(err, entry);
}

extern "C" int plugin_rope_forward(finch_plugin_device *dev, finch_plugin_stream *s, const finch_rope_desc *d)
{
    return rope(dev, s, d, 1.0f, "rope_forward");
}

extern "C" int plugin_rope_backward(finch_plugin_device *dev, finch_plugin_stream *s, const finch_rope_desc *d)
{
    return rope(dev, s, d, -1.0f, "rope_backward");
}
