/* Rotary embedding in place, "rotate half" layout, with sections (M-RoPE), partial rotation and
 * attn_factor. Backward turns by -theta. */
#include "rope.cuh"
#include "word16.cuh"

#define THREADS 256

struct rope_params {
    int64_t n_heads, head_dim, ldx;
    rope_angles a;
    float sign; /* -1: backward */
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
    int half = p.a.half, per = (int)((p.n_heads + gridDim.y - 1) / gridDim.y), h0 = (int)blockIdx.y * per;
    int h1 = h0 + per < p.n_heads ? h0 + per : (int)p.n_heads, pairs = (h1 > h0 ? h1 - h0 : 0) * half;
    for (int64_t t = blockIdx.x; t < p.a.n_tokens; t += gridDim.x) {
        __syncthreads(); /* the previous token's angles are used */
        for (int d = threadIdx.x; d < half; d += blockDim.x) rope_cos_sin(p.a, t, d, p.sign, &cs[d], &cs[half + d]);
        __syncthreads();
        T *row = x + t * p.ldx;
        for (int j = threadIdx.x; j < pairs; j += blockDim.x) {
            int h = j / half, d = j - h * half;
            h += h0;
            T *hr = row + (int64_t)h * p.head_dim;
            float c = cs[d], sn = cs[half + d];
            float x1 = to_f32(hr[d]), x2 = to_f32(hr[d + half]);
            hr[d] = from_f32<T>(rope_first(x1, x2, c, sn));
            hr[d + half] = from_f32<T>(rope_second(x1, x2, c, sn));
        }
    }
}

/* Many tokens (a training step's q or k): a block takes ROPE_TOKENS tokens, their angles go to shared
 * memory once, then each thread turns 16-byte words of pairs (a word of x[d..] with the word of
 * x[d + half..]), ROPE_UNROLL of them loaded before any is turned. The same arithmetic as
 * rope_kernel. Needs half and head_dim in whole words and rows on words (rope_words_fit). */
#define ROPE_TOKENS 4
#define ROPE_UNROLL 4

template <typename T>
__global__ void __launch_bounds__(THREADS) rope_words_kernel(rope_params p, T *x)
{
    gpu_grid_release();
    gpu_grid_wait();
    constexpr int W = word16<T>::n;
    extern __shared__ float cs[]; /* token i of the block: cos at [2 i half], sin at [(2 i + 1) half] */
    int half = p.a.half, words = half / W, heads = (int)p.n_heads;
    int64_t t0 = (int64_t)blockIdx.x * ROPE_TOKENS;
    int tokens = p.a.n_tokens - t0 < ROPE_TOKENS ? (int)(p.a.n_tokens - t0) : ROPE_TOKENS;
    for (int i = threadIdx.x; i < tokens * half; i += blockDim.x) {
        int tt = i / half, d = i - tt * half;
        rope_cos_sin(p.a, t0 + tt, d, p.sign, &cs[2 * tt * half + d], &cs[(2 * tt + 1) * half + d]);
    }
    __syncthreads();
    int items = tokens * heads * words;
    for (int i0 = threadIdx.x; i0 < items; i0 += ROPE_UNROLL * blockDim.x) {
        float x1[ROPE_UNROLL][W], x2[ROPE_UNROLL][W];
        T *at[ROPE_UNROLL];
        int angle[ROPE_UNROLL];
#pragma unroll
        for (int r = 0; r < ROPE_UNROLL; r++) {
            int i = i0 + r * blockDim.x;
            at[r] = NULL;
            if (i >= items) continue;
            int w = i % words, h = (i / words) % heads, tt = i / (words * heads);
            at[r] = x + (t0 + tt) * p.ldx + (int64_t)h * p.head_dim + w * W;
            angle[r] = 2 * tt * half + w * W;
            load_word(at[r], x1[r]);
            load_word(at[r] + half, x2[r]);
        }
#pragma unroll
        for (int r = 0; r < ROPE_UNROLL; r++) {
            if (!at[r]) continue;
            float y1[W], y2[W];
#pragma unroll
            for (int j = 0; j < W; j++) {
                float c = cs[angle[r] + j], sn = cs[angle[r] + half + j];
                y1[j] = rope_first(x1[r][j], x2[r][j], c, sn);
                y2[j] = rope_second(x1[r][j], x2[r][j], c, sn);
            }
            store_word(at[r], y1);
            store_word(at[r] + half, y2);
        }
    }
}

/* FINCH_CUDA_ROPE_WORDS=0 keeps rope_kernel for every call (for comparison). */
static bool rope_words_fit(const rope_params &p, const void *x, size_t es)
{
    static int off = -1;
    int w = 16 / (int)es;
    return p.a.n_tokens >= 64 && p.a.half % w == 0 && p.head_dim % w == 0 && rows_on_words(x, p.ldx, es) &&
           !gpu_env_is("FINCH_CUDA_ROPE_WORDS", "0", &off);
}

static int rope(finch_plugin_device *dev, finch_plugin_stream *s, const finch_rope_desc *d, float sign, const char *entry)
{
    gpuStream_t st = NULL;
    GPU_TRY(gpu_begin(dev, s, &st));
    if (d->n_tokens <= 0 || d->n_heads <= 0) return FINCH_OK;
    if (d->ldx < d->n_heads * d->head_dim)
        return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": %s: rot_dim %lld, head_dim %lld, ldx %lld", entry,
                        (long long)d->rot_dim, (long long)d->head_dim, (long long)d->ldx);
    rope_params p;
    GPU_TRY(rope_angles_setup(d, d->n_tokens, &p.a, entry));
    p.n_heads = d->n_heads;
    p.head_dim = d->head_dim;
    p.ldx = d->ldx;
    p.sign = sign;
    if (!p.a.half) return FINCH_OK;
    if (!gpu_ptr(d->x)) return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": %s: x is absent", entry);
    if (d->n_heads * p.a.half > INT32_MAX)
        return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": %s: %lld heads of %d pairs", entry,
                        (long long)d->n_heads, p.a.half);
    gpuError_t err = gpuSuccess;
    if (rope_words_fit(p, gpu_ptr(d->x), gpu_dtype_size(d->dtype))) {
        unsigned blocks = (unsigned)((d->n_tokens + ROPE_TOKENS - 1) / ROPE_TOKENS);
        size_t smem = (size_t)p.a.half * 2 * ROPE_TOKENS * sizeof(float);
        FINCH_DISPATCH_FLOAT(d->dtype, T, entry,
            err = gpu_launch(rope_words_kernel<T>, dim3(blocks), dim3(THREADS), smem, st, p, (T *)gpu_ptr(d->x)));
        return gpu_check(err, entry);
    }
    unsigned blocks = d->n_tokens < 65535 * 16 ? (unsigned)d->n_tokens : 65535u * 16;
    unsigned groups = d->n_tokens < 64 ? (unsigned)(d->n_heads < 8 ? d->n_heads : 8) : 1;
    size_t smem = (size_t)p.a.half * 2 * sizeof(float);
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
