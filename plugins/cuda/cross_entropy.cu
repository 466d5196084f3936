/* Cross-entropy with optional logit softcap, and the fused lm-head + cross-entropy that produces
 * logits a chunk of tokens at a time (cuBLASLt), turns them into gradients in place, and feeds
 * them straight into dhidden and dW, so [tokens x vocab] never exists in full. */
#include "word16.cuh"

#include <string.h>

#define THREADS 512

__device__ __forceinline__ float capped(float z, float softcap)
{
    return softcap > 0.0f ? softcap * tanhf(z / softcap) : z;
}

/* Adds n capped logits to a running (max, sum of exp(z - max)), rescaling the sum once. */
template <int N>
__device__ __forceinline__ void online_add(float *z, float softcap, float &mx, float &sum)
{
    float m = mx;
#pragma unroll
    for (int i = 0; i < N; i++) {
        z[i] = capped(z[i], softcap);
        m = fmaxf(m, z[i]);
    }
    if (m > mx) {
        sum = mx == -INFINITY ? 0.0f : sum * expf(mx - m);
        mx = m;
    }
#pragma unroll
    for (int i = 0; i < N; i++) sum += expf(z[i] - mx);
}

/* The gradient of the loss by n logits of a row, in place: grad_scale (softmax - onehot), times the
 * softcap's derivative. */
template <int N>
__device__ __forceinline__ void row_gradient(float *v, int64_t j0, int32_t label, float softcap, float lse, float grad_scale)
{
#pragma unroll
    for (int i = 0; i < N; i++) {
        float z = capped(v[i], softcap);
        float g = expf(z - lse) - (j0 + i == label ? 1.0f : 0.0f);
        if (softcap > 0.0f) g *= 1.0f - (z / softcap) * (z / softcap);
        v[i] = grad_scale * g;
    }
}

/* One block per row: log-sum-exp, the row's loss, and with dlogits the gradient (it may be logits
 * itself: every element is read before it is written, by the same thread). `words`: rows of logits
 * and dlogits start on 16-byte boundaries, so the first vocab - vocab % W elements go 16 bytes at
 * a time. */
template <typename T>
__global__ void __launch_bounds__(THREADS)
cross_entropy_kernel(int64_t n_tokens, int64_t vocab, const T *logits, int64_t ld, const int32_t *labels, float softcap,
                     float grad_scale, float *loss_sum, float *count, T *dlogits, int64_t lddl, int words, int32_t *bad)
{
    constexpr int W = word16<T>::n;
    __shared__ float shared[32];
    int64_t head = words ? vocab - vocab % W : 0;
    for (int64_t r = blockIdx.x; r < n_tokens; r += gridDim.x) {
        const T *z = logits + r * ld;
        T *dz = dlogits ? dlogits + r * lddl : NULL;
        int32_t label = labels[r];
        if (label == FINCH_IGNORE_INDEX || label < 0 || label >= vocab) {
            if (label != FINCH_IGNORE_INDEX && threadIdx.x == 0) atomicExch(bad, 1);
            if (dz) {
                float zero[W] = {0.0f};
                for (int64_t j = (int64_t)threadIdx.x * W; j < head; j += (int64_t)blockDim.x * W) store_word(dz + j, zero);
                for (int64_t j = head + threadIdx.x; j < vocab; j += blockDim.x) dz[j] = from_f32<T>(0.0f);
            }
            continue;
        }
        float mx = -INFINITY, sum = 0.0f;
        for (int64_t j = (int64_t)threadIdx.x * W; j < head; j += (int64_t)blockDim.x * W) {
            float v[W];
            load_word(z + j, v);
            online_add<W>(v, softcap, mx, sum);
        }
        for (int64_t j = head + threadIdx.x; j < vocab; j += blockDim.x) {
            float v = to_f32(z[j]);
            online_add<1>(&v, softcap, mx, sum);
        }
        float row_max = block_max(mx, shared);
        sum = mx == -INFINITY ? 0.0f : sum * expf(mx - row_max);
        float lse = row_max + logf(block_sum(sum, shared));
        if (threadIdx.x == 0) {
            float zl = capped(to_f32(z[label]), softcap);
            if (loss_sum) atomicAdd(loss_sum, lse - zl);
            if (count) atomicAdd(count, 1.0f);
        }
        if (!dz) continue;
        __syncthreads(); /* thread 0 read z[label] above; dz may alias z */
        for (int64_t j = (int64_t)threadIdx.x * W; j < head; j += (int64_t)blockDim.x * W) {
            float v[W];
            load_word(z + j, v);
            row_gradient<W>(v, j, label, softcap, lse, grad_scale);
            store_word(dz + j, v);
        }
        for (int64_t j = head + threadIdx.x; j < vocab; j += blockDim.x) {
            float v = to_f32(z[j]);
            row_gradient<1>(&v, j, label, softcap, lse, grad_scale);
            dz[j] = from_f32<T>(v);
        }
    }
}

int gpu_cross_entropy_rows(gpuStream_t st, int64_t n_tokens, int64_t vocab, finch_dtype dtype, const void *logits,
                           int64_t ld, const int32_t *labels, float softcap, float grad_scale, float *loss_sum,
                           float *count, finch_dtype dl_type, void *dlogits, int64_t lddl, int32_t *bad)
{
    if (n_tokens <= 0) return FINCH_OK;
    if (dlogits && dl_type != dtype)
        return gpu_fail(FINCH_ERR_UNSUPPORTED, FINCH_GPU_PLUGIN_NAME ": cross_entropy: gradient type %s for logits of %s",
                        gpu_dtype_name(dl_type), gpu_dtype_name(dtype));
    unsigned blocks = (unsigned)(n_tokens < 65535 * 8 ? n_tokens : 65535 * 8);
    size_t es = gpu_dtype_size(dtype);
    int words = rows_on_words(logits, ld, es) && rows_on_words(dlogits, lddl, es);
    FINCH_DISPATCH_FLOAT(dtype, T, "cross_entropy",
        cross_entropy_kernel<T><<<blocks, THREADS, 0, st>>>(n_tokens, vocab, (const T *)logits, ld, labels, softcap, grad_scale,
                                                            loss_sum, count, (T *)dlogits, lddl, words, bad));
    return GPU_LAUNCHED("cross_entropy");
}

static int new_flag(gpuStream_t st, int32_t **bad, const char *entry)
{
    GPU_TRY(gpu_scratch(st, sizeof **bad, (void **)bad, entry));
    int rc = gpu_check(gpuMemsetAsync(*bad, 0, sizeof **bad, st), entry);
    if (rc) gpu_scratch_free(st, *bad);
    return rc;
}

/* Reads the label flag back and frees it; rc is the status so far. */
static int finish_flag(gpuStream_t st, int32_t *bad, int rc, const char *entry, int64_t vocab)
{
    int32_t host = 0;
    if (!rc) rc = gpu_check(gpuMemcpyAsync(&host, bad, sizeof host, gpuMemcpyDeviceToHost, st), entry);
    if (!rc) rc = gpu_check(gpuStreamSynchronize(st), entry);
    gpu_scratch_free(st, bad);
    if (!rc && host)
        rc = gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": %s: a label is outside [0, %lld) and is not the ignore index",
                      entry, (long long)vocab);
    return rc;
}

extern "C" int plugin_cross_entropy(finch_plugin_device *dev, finch_plugin_stream *s, const finch_cross_entropy_desc *d)
{
    gpuStream_t st = NULL;
    GPU_TRY(gpu_begin(dev, s, &st));
    if (d->n_tokens <= 0) return FINCH_OK;
    if (d->vocab <= 0 || d->ld < d->vocab || (gpu_ptr(d->dlogits) && d->lddlogits < d->vocab))
        return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": cross_entropy: vocab %lld, ld %lld", (long long)d->vocab,
                        (long long)d->ld);
    if (!gpu_is_float_type(d->dtype))
        return gpu_fail(FINCH_ERR_UNSUPPORTED, FINCH_GPU_PLUGIN_NAME ": cross_entropy: dtype %s", gpu_dtype_name(d->dtype));
    if (!gpu_ptr(d->logits) || !gpu_ptr(d->labels))
        return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": cross_entropy: logits or labels is absent");
    int32_t *bad;
    GPU_TRY(new_flag(st, &bad, "cross_entropy"));
    int rc = gpu_cross_entropy_rows(st, d->n_tokens, d->vocab, d->dtype, gpu_ptr(d->logits), d->ld,
                                    (const int32_t *)gpu_ptr(d->labels), d->softcap, d->grad_scale, (float *)gpu_ptr(d->loss_sum),
                                    (float *)gpu_ptr(d->count), d->dtype, gpu_ptr(d->dlogits), d->lddlogits, bad);
    return finish_flag(st, bad, rc, "cross_entropy", d->vocab);
}

extern "C" int plugin_linear_cross_entropy(finch_plugin_device *dev, finch_plugin_stream *s,
                                           const finch_linear_cross_entropy_desc *d)
{
    gpuStream_t st = NULL;
    gpu_operand h, w_t, w;
    GPU_TRY(gpu_begin(dev, s, &st));
    if (d->n_tokens <= 0) return FINCH_OK;
    if (d->vocab <= 0 || d->dim <= 0 || d->ldh < d->dim)
        return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": linear_cross_entropy: vocab %lld, dim %lld, ldh %lld",
                        (long long)d->vocab, (long long)d->dim, (long long)d->ldh);
    if (!gpu_is_float_type(d->act_type))
        return gpu_fail(FINCH_ERR_UNSUPPORTED, FINCH_GPU_PLUGIN_NAME ": linear_cross_entropy: dtype %s", gpu_dtype_name(d->act_type));
    if (!gpu_ptr(d->hidden) || !gpu_ptr(d->labels))
        return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": linear_cross_entropy: hidden or labels is absent");
    if (d->grad_scale != 0.0f && gpu_ptr(d->dw) && d->w.dtype == FINCH_DTYPE_NF4)
        return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": linear_cross_entropy: dw requested for an NF4 weight");
    GPU_TRY(gpu_weight_operand(&d->w, d->vocab, d->dim, 1, &w_t));
    GPU_TRY(gpu_weight_operand(&d->w, d->vocab, d->dim, 0, &w));
    int backward = d->grad_scale != 0.0f && (gpu_ptr(d->dhidden) || gpu_ptr(d->dw));
    /* Logits in the activations' 16-bit type when the weight has it too (as the model's own lm head
     * writes them; the loss is taken in f32 from there), and their gradient written over them: half
     * the bytes of f32 logits and no cast before the gradient products. Else f32. */
    finch_dtype lt = d->act_type != FINCH_DTYPE_F32 && d->w.dtype == d->act_type ? d->act_type : FINCH_DTYPE_F32;

    int64_t chunk = d->chunk_tokens;
    if (chunk <= 0) chunk = (int64_t)((256u << 20) / ((size_t)d->vocab * gpu_dtype_size(lt))); /* ~256 MiB of logits */
    if (chunk < 1) chunk = 1;
    if (chunk > d->n_tokens) chunk = d->n_tokens;

    void *logits = NULL;
    int32_t *bad = NULL;
    int rc = gpu_scratch(st, (size_t)chunk * d->vocab * gpu_dtype_size(lt), &logits, "linear_cross_entropy logits chunk");
    if (!rc) rc = new_flag(st, &bad, "linear_cross_entropy");
    if (rc) {
        gpu_scratch_free(st, logits);
        return rc;
    }
    size_t hsize = gpu_dtype_size(d->act_type);
    for (int64_t c0 = 0; c0 < d->n_tokens && !rc; c0 += chunk) {
        int64_t rows = d->n_tokens - c0 < chunk ? d->n_tokens - c0 : chunk;
        memset(&h, 0, sizeof h);
        h.ptr = (const char *)gpu_ptr(d->hidden) + c0 * d->ldh * hsize;
        h.dtype = d->act_type;
        h.ld = d->ldh;
        rc = gpu_gemm(dev, st, rows, d->vocab, d->dim, &h, &w_t, lt, logits, d->vocab, 0, 1, 1.0f, 0.0f);
        if (!rc)
            rc = gpu_cross_entropy_rows(st, rows, d->vocab, lt, logits, d->vocab, (const int32_t *)gpu_ptr(d->labels) + c0,
                                        d->softcap, d->grad_scale, (float *)gpu_ptr(d->loss_sum), (float *)gpu_ptr(d->count), lt,
                                        backward ? logits : NULL, d->vocab, bad);
        if (rc || !backward) continue;
        gpu_operand g;
        memset(&g, 0, sizeof g);
        g.ptr = logits;
        g.dtype = lt;
        g.ld = d->vocab;
        if (!rc && gpu_ptr(d->dhidden))
            rc = gpu_gemm(dev, st, rows, d->dim, d->vocab, &g, &w, d->act_type,
                          (char *)gpu_ptr(d->dhidden) + c0 * d->lddh * hsize, d->lddh, 0, 1, 1.0f,
                          d->dhidden_accumulate ? 1.0f : 0.0f);
        if (!rc && gpu_ptr(d->dw)) {
            g.trans = 1;
            rc = gpu_gemm(dev, st, d->vocab, d->dim, rows, &g, &h, FINCH_DTYPE_F32, gpu_ptr(d->dw), d->dim, 0, 1, 1.0f, 1.0f);
        }
    }
    gpu_scratch_free(st, logits);
    return finish_flag(st, bad, rc, "linear_cross_entropy", d->vocab);
}
