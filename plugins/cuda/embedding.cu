/* Embedding lookup and its scatter-add gradient. Ids outside [0, vocab) are reported as
 * FINCH_ERR_INVALID_ARGUMENT: kernels skip them and raise a flag that the entry reads back. */
#include "gpu_plugin.h"

#define THREADS 256

template <typename TT, typename TO>
__global__ void embedding_forward_kernel(int64_t n_tokens, int64_t dim, int64_t vocab, const int32_t *ids, const TT *table,
                                         TO *out, float scale, int32_t *bad)
{
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n_tokens * dim; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t t = i / dim, j = i % dim;
        int32_t id = ids[t];
        if (id < 0 || id >= vocab) {
            if (j == 0) atomicExch(bad, 1);
            out[i] = from_f32<TO>(0.0f);
            continue;
        }
        out[i] = from_f32<TO>(scale * to_f32(table[(int64_t)id * dim + j]));
    }
}

template <typename T>
__global__ void embedding_backward_kernel(int64_t n_tokens, int64_t dim, int64_t vocab, const int32_t *ids, const T *dout,
                                          float *dtable, float scale, int32_t *bad)
{
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n_tokens * dim; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t t = i / dim, j = i % dim;
        int32_t id = ids[t];
        if (id < 0 || id >= vocab) {
            if (j == 0) atomicExch(bad, 1);
            continue;
        }
        atomicAdd(dtable + (int64_t)id * dim + j, scale * to_f32(dout[i]));
    }
}

/* Reads the flag back (a synchronisation: ids are checked once per step, not per element). */
static int check_flag(gpuStream_t st, int32_t *bad, const char *entry, int64_t vocab)
{
    int32_t host = 0;
    int rc = gpu_check(gpuMemcpyAsync(&host, bad, sizeof host, gpuMemcpyDeviceToHost, st), entry);
    if (!rc) rc = gpu_check(gpuStreamSynchronize(st), entry);
    gpu_scratch_free(st, bad);
    if (rc) return rc;
    if (host) return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": %s: a token id is outside [0, %lld)", entry,
                              (long long)vocab);
    return FINCH_OK;
}

extern "C" int plugin_embedding_forward(finch_plugin_device *dev, finch_plugin_stream *s, int64_t n_tokens, int64_t dim,
                                        int64_t vocab, finch_dptr ids, finch_dtype table_type, finch_dptr table,
                                        finch_dtype out_type, finch_dptr out, float scale)
{
    gpuStream_t st = NULL;
    GPU_TRY(gpu_begin(dev, s, &st));
    if (n_tokens <= 0 || dim <= 0) return FINCH_OK;
    if (!gpu_ptr(ids) || !gpu_ptr(table) || !gpu_ptr(out))
        return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": embedding_forward: ids, table or out is absent");
    if (!gpu_is_float_type(table_type) || !gpu_is_float_type(out_type))
        return gpu_fail(FINCH_ERR_UNSUPPORTED, FINCH_GPU_PLUGIN_NAME ": embedding_forward: dtypes %s -> %s",
                        gpu_dtype_name(table_type), gpu_dtype_name(out_type));
    int32_t *bad;
    GPU_TRY(gpu_scratch(st, sizeof *bad, (void **)&bad, "embedding_forward flag"));
    int rc = gpu_check(gpuMemsetAsync(bad, 0, sizeof *bad, st), "embedding_forward");
    if (rc) { gpu_scratch_free(st, bad); return rc; }
    unsigned blocks = gpu_blocks(n_tokens * dim, THREADS);
    FINCH_DISPATCH_FLOAT(table_type, TT, "embedding_forward table", FINCH_DISPATCH_FLOAT(out_type, TO, "embedding_forward out",
        embedding_forward_kernel<TT, TO><<<blocks, THREADS, 0, st>>>(n_tokens, dim, vocab, (const int32_t *)gpu_ptr(ids),
                                                                     (const TT *)gpu_ptr(table), (TO *)gpu_ptr(out), scale, bad)));
    rc = GPU_LAUNCHED("embedding_forward");
    if (rc) { gpu_scratch_free(st, bad); return rc; }
    return check_flag(st, bad, "embedding_forward", vocab);
}

extern "C" int plugin_embedding_backward(finch_plugin_device *dev, finch_plugin_stream *s, int64_t n_tokens, int64_t dim,
                                         int64_t vocab, finch_dptr ids, finch_dtype dout_type, finch_dptr dout, finch_dptr dtable,
                                         float scale)
{
    gpuStream_t st = NULL;
    GPU_TRY(gpu_begin(dev, s, &st));
    if (n_tokens <= 0 || dim <= 0) return FINCH_OK;
    if (!gpu_ptr(ids) || !gpu_ptr(dout) || !gpu_ptr(dtable))
        return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": embedding_backward: ids, dout or dtable is absent");
    if (!gpu_is_float_type(dout_type))
        return gpu_fail(FINCH_ERR_UNSUPPORTED, FINCH_GPU_PLUGIN_NAME ": embedding_backward: dtype %s", gpu_dtype_name(dout_type));
    int32_t *bad;
    GPU_TRY(gpu_scratch(st, sizeof *bad, (void **)&bad, "embedding_backward flag"));
    int rc = gpu_check(gpuMemsetAsync(bad, 0, sizeof *bad, st), "embedding_backward");
    if (rc) { gpu_scratch_free(st, bad); return rc; }
    unsigned blocks = gpu_blocks(n_tokens * dim, THREADS);
    FINCH_DISPATCH_FLOAT(dout_type, T, "embedding_backward",
        embedding_backward_kernel<T><<<blocks, THREADS, 0, st>>>(n_tokens, dim, vocab, (const int32_t *)gpu_ptr(ids),
                                                                 (const T *)gpu_ptr(dout), (float *)gpu_ptr(dtable), scale, bad));
    rc = GPU_LAUNCHED("embedding_backward");
    if (rc) { gpu_scratch_free(st, bad); return rc; }
    return check_flag(st, bad, "embedding_backward", vocab);
}
