/* RMSNorm and LayerNorm forward/backward: one block per row, statistics in f32; weight and bias
 * gradients by a column reduction shared with the linear bias gradient. */
#include "word16.cuh"

#define THREADS 256
#define ROW_CHUNK 128 /* rows per block of the column reduction */
#define NORM_CACHE 8  /* row elements a thread keeps in registers (rmsnorm_forward_kernel) */
#define NORM_WORDS 2  /* row words a thread keeps in registers (rmsnorm_words_kernel) */

/* NT threads a row: THREADS, or 1024 for a few long rows (a decode step's one token), where a single
 * block would otherwise walk its row in many dependent rounds. With d (add_rmsnorm_forward) the row
 * is first the residual sum: each thread stores sum = x + d for its elements, reading x and d once,
 * and the norm then reads those same elements back from sum (the thread's own stores, rounded to T as
 * axpby would store them; sum may alias x or d). */
template <typename T, typename W, int NT>
__global__ void __launch_bounds__(NT)
rmsnorm_forward_kernel(int64_t n, int64_t dim, const T *x, const T *d, T *sum, const W *w, float offset, float eps, T *y,
                       float *rstd_out)
{
    __shared__ float shared[32];
    /* Rows of at most NORM_CACHE elements a thread (every row a decode step normalises): the weight is
     * read into registers before the wait for x (nothing this kernel may overlap writes a weight, as
     * for the GEMV's), and x stays in registers across the reduction. Same arithmetic either way. */
    bool cached = dim <= (int64_t)NORM_CACHE * blockDim.x;
    float wc[NORM_CACHE], xc[NORM_CACHE];
    gpu_grid_release();
    if (cached) {
#pragma unroll
        for (int c = 0; c < NORM_CACHE; c++) {
            int64_t j = threadIdx.x + (int64_t)c * blockDim.x;
            wc[c] = j < dim && w ? to_f32(w[j]) + offset : 1.0f;
        }
    }
    gpu_grid_wait();
    for (int64_t r = blockIdx.x; r < n; r += gridDim.x) {
        const T *xr = x + r * dim, *dr = d ? d + r * dim : NULL;
        T *sr = d ? sum + r * dim : NULL;
        float ss = 0.0f;
        if (cached) {
#pragma unroll
            for (int c = 0; c < NORM_CACHE; c++) {
                int64_t j = threadIdx.x + (int64_t)c * blockDim.x;
                xc[c] = 0.0f;
                if (j >= dim) continue;
                if (d) {
                    T s = from_f32<T>(to_f32(xr[j]) + to_f32(dr[j]));
                    sr[j] = s;
                    xc[c] = to_f32(s);
                } else {
                    xc[c] = to_f32(xr[j]);
                }
                ss += xc[c] * xc[c];
            }
        } else if (d) {
            for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) {
                T s = from_f32<T>(to_f32(xr[j]) + to_f32(dr[j]));
                sr[j] = s;
                float v = to_f32(s);
                ss += v * v;
            }
        } else {
            for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) {
                float v = to_f32(xr[j]);
                ss += v * v;
            }
        }
        if (d) xr = sr;
        ss = block_sum(ss, shared);
        float rstd = 1.0f / sqrtf(ss / (float)dim + eps);
        if (rstd_out && threadIdx.x == 0) rstd_out[r] = rstd;
        if (cached) {
#pragma unroll
            for (int c = 0; c < NORM_CACHE; c++) {
                int64_t j = threadIdx.x + (int64_t)c * blockDim.x;
                if (j < dim) y[r * dim + j] = from_f32<T>(xc[c] * rstd * wc[c]);
            }
            continue;
        }
        for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) {
            float wv = w ? to_f32(w[j]) + offset : 1.0f;
            y[r * dim + j] = from_f32<T>(to_f32(xr[j]) * rstd * wv);
        }
    }
}

/* dx of RMSNorm, a row a block. With `words` (dim a multiple of a 16-byte word, rows on 16-byte
 * boundaries) x, dy and dx go a word at a time. */
template <int N, typename W>
__device__ __forceinline__ void rms_weights(const W *w, float offset, int64_t j, float *wv)
{
#pragma unroll
    for (int k = 0; k < N; k++) wv[k] = w ? to_f32(w[j + k]) + offset : 1.0f;
}

/* rmsnorm_forward_kernel for many rows (training) of at most NORM_WORDS 16-byte words a thread,
 * every row on 16-byte boundaries: the row stays in registers as words between the sum of squares
 * and the scaling, and every load and store moves a word. */
template <typename T, typename W>
__global__ void __launch_bounds__(THREADS)
rmsnorm_words_kernel(int64_t n, int64_t dim, const T *x, const T *d, T *sum, const W *w, float offset, float eps, T *y,
                     float *rstd_out)
{
    constexpr int V = word16<T>::n;
    __shared__ float shared[32];
    gpu_grid_release();
    gpu_grid_wait();
    for (int64_t r = blockIdx.x; r < n; r += gridDim.x) {
        float xc[NORM_WORDS][V], ss = 0.0f;
#pragma unroll
        for (int c = 0; c < NORM_WORDS; c++) {
            int64_t j = ((int64_t)threadIdx.x + (int64_t)c * blockDim.x) * V;
            if (j >= dim) continue;
            load_word(x + r * dim + j, xc[c]);
            if (d) {
                float dv[V];
                load_word(d + r * dim + j, dv);
#pragma unroll
                for (int k = 0; k < V; k++) xc[c][k] = to_f32(from_f32<T>(xc[c][k] + dv[k]));
                store_word(sum + r * dim + j, xc[c]);
            }
#pragma unroll
            for (int k = 0; k < V; k++) ss += xc[c][k] * xc[c][k];
        }
        ss = block_sum(ss, shared);
        float rstd = 1.0f / sqrtf(ss / (float)dim + eps);
        if (rstd_out && threadIdx.x == 0) rstd_out[r] = rstd;
#pragma unroll
        for (int c = 0; c < NORM_WORDS; c++) {
            int64_t j = ((int64_t)threadIdx.x + (int64_t)c * blockDim.x) * V;
            if (j >= dim) continue;
            float wv[V];
            rms_weights<V>(w, offset, j, wv);
#pragma unroll
            for (int k = 0; k < V; k++) xc[c][k] = xc[c][k] * rstd * wv[k];
            store_word(y + r * dim + j, xc[c]);
        }
    }
}

template <typename T, typename W, bool WORDS>
__global__ void __launch_bounds__(THREADS)
rmsnorm_backward_kernel(int64_t n, int64_t dim, const T *x, const W *w, float offset, const float *rstd_in, const T *dy,
                        T *dx, int accumulate)
{
    constexpr int N = WORDS ? word16<T>::n : 1;
    __shared__ float shared[32];
    for (int64_t r = blockIdx.x; r < n; r += gridDim.x) {
        const T *xr = x + r * dim, *dyr = dy + r * dim;
        T *dxr = dx + r * dim;
        float rstd = rstd_in[r], dot = 0.0f;
        for (int64_t j = (int64_t)threadIdx.x * N; j < dim; j += (int64_t)blockDim.x * N) {
            float xv[N], gv[N], wv[N];
            load_elements<N>(xr + j, xv);
            load_elements<N>(dyr + j, gv);
            rms_weights<N>(w, offset, j, wv);
#pragma unroll
            for (int k = 0; k < N; k++) dot += gv[k] * wv[k] * xv[k] * rstd;
        }
        float mean_gx = block_sum(dot, shared) / (float)dim;
        for (int64_t j = (int64_t)threadIdx.x * N; j < dim; j += (int64_t)blockDim.x * N) {
            float xv[N], gv[N], wv[N], out[N];
            load_elements<N>(xr + j, xv);
            load_elements<N>(dyr + j, gv);
            rms_weights<N>(w, offset, j, wv);
            if (accumulate) load_elements<N>(dxr + j, out);
#pragma unroll
            for (int k = 0; k < N; k++) {
                float v = rstd * (gv[k] * wv[k] - xv[k] * rstd * mean_gx);
                out[k] = accumulate ? out[k] + v : v;
            }
            store_elements<N>(dxr + j, out);
        }
    }
}

template <typename T, typename W>
__global__ void __launch_bounds__(THREADS)
layernorm_forward_kernel(int64_t n, int64_t dim, const T *x, const W *w, const W *b, float eps, T *y, float *mean_out,
                         float *rstd_out)
{
    __shared__ float shared[32];
    for (int64_t r = blockIdx.x; r < n; r += gridDim.x) {
        const T *xr = x + r * dim;
        float s = 0.0f;
        for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) s += to_f32(xr[j]);
        float mean = block_sum(s, shared) / (float)dim;
        float var = 0.0f;
        for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) {
            float d = to_f32(xr[j]) - mean;
            var += d * d;
        }
        var = block_sum(var, shared) / (float)dim;
        float rstd = 1.0f / sqrtf(var + eps);
        if (threadIdx.x == 0) {
            if (mean_out) mean_out[r] = mean;
            if (rstd_out) rstd_out[r] = rstd;
        }
        for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) {
            float v = (to_f32(xr[j]) - mean) * rstd;
            if (w) v *= to_f32(w[j]);
            if (b) v += to_f32(b[j]);
            y[r * dim + j] = from_f32<T>(v);
        }
    }
}

template <typename T, typename W>
__global__ void __launch_bounds__(THREADS)
layernorm_backward_kernel(int64_t n, int64_t dim, const T *x, const W *w, const float *mean_in, const float *rstd_in,
                          const T *dy, T *dx, int accumulate)
{
    __shared__ float shared[32];
    for (int64_t r = blockIdx.x; r < n; r += gridDim.x) {
        const T *xr = x + r * dim, *dyr = dy + r * dim;
        float mean = mean_in[r], rstd = rstd_in[r], sg = 0.0f, sgx = 0.0f;
        for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) {
            float g = to_f32(dyr[j]) * (w ? to_f32(w[j]) : 1.0f);
            sg += g;
            sgx += g * (to_f32(xr[j]) - mean) * rstd;
        }
        float mean_g = block_sum(sg, shared) / (float)dim;
        float mean_gx = block_sum(sgx, shared) / (float)dim;
        for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) {
            float g = to_f32(dyr[j]) * (w ? to_f32(w[j]) : 1.0f);
            float xhat = (to_f32(xr[j]) - mean) * rstd;
            float v = rstd * (g - mean_g - xhat * mean_gx);
            if (accumulate) v += to_f32(dx[r * dim + j]);
            dx[r * dim + j] = from_f32<T>(v);
        }
    }
}

template <typename T>
__global__ void column_sums_kernel(int64_t n, int64_t dim, const T *dy, int64_t lddy, const T *x, int64_t ldx,
                                   const float *mean, const float *rstd, float *out)
{
    int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= dim) return;
    int64_t r0 = (int64_t)blockIdx.y * ROW_CHUNK, r1 = r0 + ROW_CHUNK < n ? r0 + ROW_CHUNK : n;
    float acc = 0.0f;
    for (int64_t r = r0; r < r1; r++) {
        float v = to_f32(dy[r * lddy + j]);
        if (x) v *= (to_f32(x[r * ldx + j]) - (mean ? mean[r] : 0.0f)) * rstd[r];
        acc += v;
    }
    atomicAdd(out + j, acc);
}

int gpu_column_sums(gpuStream_t st, int64_t n, int64_t dim, finch_dtype dtype, const void *dy, int64_t lddy,
                    const void *x, int64_t ldx, const float *mean, const float *rstd, float *out)
{
    if (n <= 0 || dim <= 0) return FINCH_OK;
    int64_t chunks = (n + ROW_CHUNK - 1) / ROW_CHUNK;
    if (chunks > 65535) return gpu_fail(FINCH_ERR_UNSUPPORTED, FINCH_GPU_PLUGIN_NAME ": column sums over %lld rows", (long long)n);
    dim3 grid((unsigned)((dim + THREADS - 1) / THREADS), (unsigned)chunks);
    FINCH_DISPATCH_FLOAT(dtype, T, "column sums",
        column_sums_kernel<T><<<grid, THREADS, 0, st>>>(n, dim, (const T *)dy, lddy, (const T *)x, ldx, mean, rstd, out));
    return GPU_LAUNCHED("column sums");
}

static unsigned row_blocks(int64_t n)
{
    return (unsigned)(n < 65535 * 4 ? n : 65535 * 4);
}

static int check_norm(const char *entry, int64_t dim, finch_dtype dtype, finch_dtype w_type, const void *x, const void *y,
                      const char *yname)
{
    if (dim <= 0) return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": %s: dim %lld", entry, (long long)dim);
    if (!gpu_is_float_type(dtype) || !gpu_is_float_type(w_type))
        return gpu_fail(FINCH_ERR_UNSUPPORTED, FINCH_GPU_PLUGIN_NAME ": %s: dtypes %s/%s", entry, gpu_dtype_name(dtype),
                        gpu_dtype_name(w_type));
    if (!x || !y) return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": %s: x or %s is absent", entry, yname);
    return FINCH_OK;
}

/* Runs body with T the activation and W the weight storage type. */
#define DISPATCH_NORM(dtype, w_type, what, ...) \
    FINCH_DISPATCH_FLOAT(dtype, T, what, FINCH_DISPATCH_FLOAT(w_type, W, what, __VA_ARGS__))

/* rmsnorm_forward, and with d and sum the residual add before it (add_rmsnorm_forward). */
static int rmsnorm_forward(const char *entry, finch_plugin_device *dev, finch_plugin_stream *s, int64_t n, int64_t dim,
                           finch_dtype dtype, finch_dptr x, finch_dptr d, finch_dptr sum, finch_dtype w_type, finch_dptr w,
                           float weight_offset, float eps, finch_dptr y, finch_dptr rstd)
{
    gpuStream_t st = NULL;
    GPU_TRY(gpu_begin(dev, s, &st));
    if (n <= 0) return FINCH_OK;
    GPU_TRY(check_norm(entry, dim, dtype, w_type, gpu_ptr(x), gpu_ptr(y), "y"));
    bool wide = n < 256 && dim >= 2048;
    size_t es = gpu_dtype_size(dtype);
    bool words = n >= 256 && (dim * (int64_t)es) % 16 == 0 && dim * (int64_t)es <= (int64_t)NORM_WORDS * 16 * THREADS &&
                 rows_on_words(gpu_ptr(x), dim, es) && rows_on_words(gpu_ptr(d), dim, es) &&
                 rows_on_words(gpu_ptr(sum), dim, es) && rows_on_words(gpu_ptr(y), dim, es);
    gpuError_t err = gpuSuccess;
    DISPATCH_NORM(dtype, w_type, entry,
        if (words)
            err = gpu_launch(rmsnorm_words_kernel<T, W>, dim3(row_blocks(n)), dim3(THREADS), 0, st, n, dim, (const T *)gpu_ptr(x),
                             (const T *)gpu_ptr(d), (T *)gpu_ptr(sum), (const W *)gpu_ptr(w), weight_offset, eps, (T *)gpu_ptr(y),
                             (float *)gpu_ptr(rstd));
        else if (wide)
            err = gpu_launch(rmsnorm_forward_kernel<T, W, 1024>, dim3(row_blocks(n)), dim3(1024), 0, st, n, dim,
                             (const T *)gpu_ptr(x), (const T *)gpu_ptr(d), (T *)gpu_ptr(sum), (const W *)gpu_ptr(w),
                             weight_offset, eps, (T *)gpu_ptr(y), (float *)gpu_ptr(rstd));
        else
            err = gpu_launch(rmsnorm_forward_kernel<T, W, THREADS>, dim3(row_blocks(n)), dim3(THREADS), 0, st, n, dim,
                             (const T *)gpu_ptr(x), (const T *)gpu_ptr(d), (T *)gpu_ptr(sum), (const W *)gpu_ptr(w),
                             weight_offset, eps, (T *)gpu_ptr(y), (float *)gpu_ptr(rstd)));
    return gpu_check(err, entry);
}

extern "C" int plugin_rmsnorm_forward(finch_plugin_device *dev, finch_plugin_stream *s, int64_t n, int64_t dim,
                                      finch_dtype dtype, finch_dptr x, finch_dtype w_type, finch_dptr w, float weight_offset,
                                      float eps, finch_dptr y, finch_dptr rstd)
{
    return rmsnorm_forward("rmsnorm_forward", dev, s, n, dim, dtype, x, finch_dptr{}, finch_dptr{}, w_type, w, weight_offset,
                           eps, y, rstd);
}

extern "C" int plugin_add_rmsnorm_forward(finch_plugin_device *dev, finch_plugin_stream *s, int64_t n, int64_t dim,
                                          finch_dtype dtype, finch_dptr x, finch_dptr d, finch_dptr sum, finch_dtype w_type,
                                          finch_dptr w, float weight_offset, float eps, finch_dptr y, finch_dptr rstd)
{
    if (!gpu_ptr(d) || !gpu_ptr(sum))
        return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": add_rmsnorm_forward: d or sum is absent");
    return rmsnorm_forward("add_rmsnorm_forward", dev, s, n, dim, dtype, x, d, sum, w_type, w, weight_offset, eps, y, rstd);
}

extern "C" int plugin_rmsnorm_backward(finch_plugin_device *dev, finch_plugin_stream *s, int64_t n, int64_t dim,
                                       finch_dtype dtype, finch_dptr x, finch_dtype w_type, finch_dptr w, float weight_offset,
                                       finch_dptr rstd, finch_dptr dy, finch_dptr dx, int dx_accumulate, finch_dptr dw)
{
    gpuStream_t st = NULL;
    GPU_TRY(gpu_begin(dev, s, &st));
    if (n <= 0) return FINCH_OK;
    GPU_TRY(check_norm("rmsnorm_backward", dim, dtype, w_type, gpu_ptr(x), gpu_ptr(dy), "dy"));
    if (!gpu_ptr(rstd)) return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": rmsnorm_backward: rstd is absent");
    if (gpu_ptr(dw))
        GPU_TRY(gpu_column_sums(st, n, dim, dtype, gpu_ptr(dy), dim, gpu_ptr(x), dim, NULL, (const float *)gpu_ptr(rstd),
                                (float *)gpu_ptr(dw)));
    if (gpu_ptr(dx)) {
        size_t es = gpu_dtype_size(dtype);
        bool words = (dim * (int64_t)es) % 16 == 0 && rows_on_words(gpu_ptr(x), dim, es) && rows_on_words(gpu_ptr(dy), dim, es) &&
                     rows_on_words(gpu_ptr(dx), dim, es);
        DISPATCH_NORM(dtype, w_type, "rmsnorm_backward",
            (words ? rmsnorm_backward_kernel<T, W, true> : rmsnorm_backward_kernel<T, W, false>)<<<row_blocks(n), THREADS, 0, st>>>(
                n, dim, (const T *)gpu_ptr(x), (const W *)gpu_ptr(w), weight_offset, (const float *)gpu_ptr(rstd),
                (const T *)gpu_ptr(dy), (T *)gpu_ptr(dx), dx_accumulate));
        GPU_TRY(GPU_LAUNCHED("rmsnorm_backward"));
    }
    return FINCH_OK;
}

extern "C" int plugin_layernorm_forward(finch_plugin_device *dev, finch_plugin_stream *s, int64_t n, int64_t dim,
                                        finch_dtype dtype, finch_dptr x, finch_dtype w_type, finch_dptr w, finch_dptr b,
                                        float eps, finch_dptr y, finch_dptr mean, finch_dptr rstd)
{
    gpuStream_t st = NULL;
    GPU_TRY(gpu_begin(dev, s, &st));
    if (n <= 0) return FINCH_OK;
    GPU_TRY(check_norm("layernorm_forward", dim, dtype, w_type, gpu_ptr(x), gpu_ptr(y), "y"));
    DISPATCH_NORM(dtype, w_type, "layernorm_forward",
        layernorm_forward_kernel<T, W><<<row_blocks(n), THREADS, 0, st>>>(
            n, dim, (const T *)gpu_ptr(x), (const W *)gpu_ptr(w), (const W *)gpu_ptr(b), eps, (T *)gpu_ptr(y),
            (float *)gpu_ptr(mean), (float *)gpu_ptr(rstd)));
    return GPU_LAUNCHED("layernorm_forward");
}

extern "C" int plugin_layernorm_backward(finch_plugin_device *dev, finch_plugin_stream *s, int64_t n, int64_t dim,
                                         finch_dtype dtype, finch_dptr x, finch_dtype w_type, finch_dptr w, finch_dptr mean,
                                         finch_dptr rstd, finch_dptr dy, finch_dptr dx, int dx_accumulate, finch_dptr dw,
                                         finch_dptr db)
{
    gpuStream_t st = NULL;
    GPU_TRY(gpu_begin(dev, s, &st));
    if (n <= 0) return FINCH_OK;
    GPU_TRY(check_norm("layernorm_backward", dim, dtype, w_type, gpu_ptr(x), gpu_ptr(dy), "dy"));
    if (!gpu_ptr(mean) || !gpu_ptr(rstd))
        return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": layernorm_backward: mean or rstd is absent");
    if (gpu_ptr(dw))
        GPU_TRY(gpu_column_sums(st, n, dim, dtype, gpu_ptr(dy), dim, gpu_ptr(x), dim, (const float *)gpu_ptr(mean),
                                (const float *)gpu_ptr(rstd), (float *)gpu_ptr(dw)));
    if (gpu_ptr(db))
        GPU_TRY(gpu_column_sums(st, n, dim, dtype, gpu_ptr(dy), dim, NULL, 0, NULL, NULL, (float *)gpu_ptr(db)));
    if (gpu_ptr(dx)) {
        DISPATCH_NORM(dtype, w_type, "layernorm_backward",
            layernorm_backward_kernel<T, W><<<row_blocks(n), THREADS, 0, st>>>(
                n, dim, (const T *)gpu_ptr(x), (const W *)gpu_ptr(w), (const float *)gpu_ptr(mean),
                (const float *)gpu_ptr(rstd), (const T *)gpu_ptr(dy), (T *)gpu_ptr(dx), dx_accumulate));
        GPU_TRY(GPU_LAUNCHED("layernorm_backward"));
    }
    return FINCH_OK;
}
