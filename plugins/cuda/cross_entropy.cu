/* Cross-entropy with optional logit softcap, and the fused lm-head + cross-entropy that produces
 * logits a chunk of tokens at a time (cuBLASLt), turns them into gradients in place, and feeds
 * them straight into dhidden and dW, so [tokens x vocab] never exists in full. */
#include "gpu_plugin.h"

#include <string.h>

#define THREADS 256

__device__ __forceinline__ float capped(float z, float softcap)
{
    return softcap > 0.0f ? softcap * tanhf(z / softcap) : z;
}

__global__ void __launch_bounds__(THREADS)
cross_entropy_kernel(int64_t n_tokens, int64_t vocab, int dtype, const void *logits, int64_t ld, const int32_t *labels,
                     float softcap, float grad_scale, float *loss_sum, float *count, int dl_type, void *dlogits, int64_t lddl,
                     int32_t *bad)
{
    __shared__ float shared[32];
    for (int64_t r = blockIdx.x; r < n_tokens; r += gridDim.x) {
        int32_t label = labels[r];
        int skip = label == FINCH_IGNORE_INDEX || label < 0 || label >= vocab;
        if (skip) {
            if (label != FINCH_IGNORE_INDEX && threadIdx.x == 0) atomicExch(bad, 1);
            if (dlogits)
                for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) store_from_f32(dlogits, dl_type, r * lddl + j, 0.0f);
            continue;
        }
        /* Online max and sum of exponentials, per thread, then across the block. */
        float mx = -INFINITY, sum = 0.0f;
        for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) {
            float z = capped(load_as_f32(logits, dtype, r * ld + j), softcap);
            if (z > mx) { sum = sum * expf(mx - z) + 1.0f; mx = z; }
            else sum += expf(z - mx);
        }
        float row_max = block_max(mx, shared);
        sum = mx == -INFINITY ? 0.0f : sum * expf(mx - row_max);
        float lse = row_max + logf(block_sum(sum, shared));
        if (threadIdx.x == 0) {
            float zl = capped(load_as_f32(logits, dtype, r * ld + label), softcap);
            if (loss_sum) atomicAdd(loss_sum, lse - zl);
            if (count) atomicAdd(count, 1.0f);
        }
        if (!dlogits) continue;
        __syncthreads(); /* thread 0 read logits[label] above; dlogits may alias logits */
        for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) {
            float raw = load_as_f32(logits, dtype, r * ld + j), z = capped(raw, softcap);
            float g = expf(z - lse) - (j == label ? 1.0f : 0.0f);
            if (softcap > 0.0f) g *= 1.0f - (z / softcap) * (z / softcap);
            store_from_f32(dlogits, dl_type, r * lddl + j, grad_scale * g);
        }
    }
}

int gpu_cross_entropy_rows(gpuStream_t st, int64_t n_tokens, int64_t vocab, finch_dtype dtype, const void *logits,
                           int64_t ld, const int32_t *labels, float softcap, float grad_scale, float *loss_sum,
                           float *count, finch_dtype dl_type, void *dlogits, int64_t lddl, int32_t *bad)
{
    if (n_tokens <= 0) return FINCH_OK;
    unsigned blocks = (unsigned)(n_tokens < 65535 * 8 ? n_tokens : 65535 * 8);
    cross_entropy_kernel<<<blocks, THREADS, 0, st>>>(n_tokens, vocab, dtype, logits, ld, labels, softcap, grad_scale, loss_sum,
                                                     count, dl_type, dlogits, lddl, bad);
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
    /* Gradients go back to the storage type of the weight when cuBLASLt can then take them. */
    int narrow = backward && d->act_type != FINCH_DTYPE_F32 && d->w.dtype == d->act_type;

    int64_t chunk = d->chunk_tokens;
    if (chunk <= 0) chunk = (int64_t)((256u << 20) / ((size_t)d->vocab * 4)); /* ~256 MiB of f32 logits */
    if (chunk < 1) chunk = 1;
    if (chunk > d->n_tokens) chunk = d->n_tokens;

    float *logits = NULL;
    void *narrow_grad = NULL;
    int32_t *bad = NULL;
    int rc = gpu_scratch(st, (size_t)chunk * d->vocab * sizeof(float), (void **)&logits, "linear_cross_entropy logits chunk");
    if (!rc && narrow)
        rc = gpu_scratch(st, (size_t)chunk * d->vocab * gpu_dtype_size(d->act_type), &narrow_grad,
                         "linear_cross_entropy gradient chunk");
    if (!rc) rc = new_flag(st, &bad, "linear_cross_entropy");
    if (rc) {
        gpu_scratch_free(st, narrow_grad);
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
        rc = gpu_gemm(dev, st, rows, d->vocab, d->dim, &h, &w_t, FINCH_DTYPE_F32, logits, d->vocab, 0, 1, 1.0f, 0.0f);
        if (!rc)
            rc = gpu_cross_entropy_rows(st, rows, d->vocab, FINCH_DTYPE_F32, logits, d->vocab,
                                        (const int32_t *)gpu_ptr(d->labels) + c0, d->softcap, d->grad_scale,
                                        (float *)gpu_ptr(d->loss_sum), (float *)gpu_ptr(d->count), FINCH_DTYPE_F32,
                                        backward ? logits : NULL, d->vocab, bad);
        if (rc || !backward) continue;
        gpu_operand g;
        memset(&g, 0, sizeof g);
        g.ptr = logits;
        g.dtype = FINCH_DTYPE_F32;
        g.ld = d->vocab;
        if (narrow) {
            rc = gpu_cast(st, rows * d->vocab, FINCH_DTYPE_F32, logits, d->act_type, narrow_grad);
            g.ptr = narrow_grad;
            g.dtype = d->act_type;
        }
        if (!rc && gpu_ptr(d->dhidden))
            rc = gpu_gemm(dev, st, rows, d->dim, d->vocab, &g, &w, d->act_type,
                          (char *)gpu_ptr(d->dhidden) + c0 * d->lddh * hsize, d->lddh, 0, 1, 1.0f,
                          d->dhidden_accumulate ? 1.0f : 0.0f);
        if (!rc && gpu_ptr(d->dw)) {
            g.trans = 1;
            rc = gpu_gemm(dev, st, d->vocab, d->dim, rows, &g, &h, FINCH_DTYPE_F32, gpu_ptr(d->dw), d->dim, 0, 1, 1.0f, 1.0f);
        }
    }
    gpu_scratch_free(st, narrow_grad);
    gpu_scratch_free(st, logits);
    return finish_flag(st, bad, rc, "linear_cross_entropy", d->vocab);
}
