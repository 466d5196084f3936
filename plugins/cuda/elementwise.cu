/* Element-wise entries: fill, copy_rows, cast, axpby, sum_squares, activation and gated-unit forward/backward. */
#include "activation.h"
#include "word16.cuh"

#include <string.h>

#define THREADS 256
#define GRID_STRIDE(i, n) for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)

static int check_ptr(const void *p, const char *entry, const char *name)
{
    if (!p) return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": %s: %s is absent", entry, name);
    return FINCH_OK;
}

__global__ void fill_kernel(void *dst, int dtype, int64_t n, float value)
{
    GRID_STRIDE(i, n) {
        if (dtype == FINCH_DTYPE_I32) ((int32_t *)dst)[i] = (int32_t)value;
        else store_from_f32(dst, dtype, i, value);
    }
}

extern "C" int plugin_fill(finch_plugin_device *dev, finch_plugin_stream *s, finch_dptr dst, finch_dtype dtype,
                           int64_t count, float value)
{
    gpuStream_t st = NULL;
    GPU_TRY(gpu_begin(dev, s, &st));
    if (!gpu_is_float_type(dtype) && dtype != FINCH_DTYPE_I32)
        return gpu_fail(FINCH_ERR_UNSUPPORTED, FINCH_GPU_PLUGIN_NAME ": fill: dtype %s", gpu_dtype_name(dtype));
    if (count <= 0) return FINCH_OK;
    GPU_TRY(check_ptr(gpu_ptr(dst), "fill", "dst"));
    /* +0 is all zero bytes in every type here: the driver's memset writes them at full bandwidth. */
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    if (bits == 0)
        return gpu_check(gpuMemsetAsync(gpu_ptr(dst), 0, (size_t)count * gpu_dtype_size(dtype), st), "fill");
    fill_kernel<<<gpu_blocks(count, THREADS), THREADS, 0, st>>>(gpu_ptr(dst), dtype, count, value);
    return GPU_LAUNCHED("fill");
}

/* One block per source row; 16-byte words where both rows and the row length allow, else elements. */
__global__ void copy_rows_kernel(const char *src, size_t src_pitch, const int32_t *rows, char *dst, size_t dst_pitch, size_t row_bytes,
                                 size_t es, size_t dst_bytes)
{
    gpu_grid_release();
    gpu_grid_wait();
    int32_t r = rows[blockIdx.x];
    if (r < 0 || (size_t)r * dst_pitch > dst_bytes || row_bytes > dst_bytes - (size_t)r * dst_pitch) return;
    const char *from = src + (size_t)blockIdx.x * src_pitch;
    char *to = dst + (size_t)r * dst_pitch;
    if ((((uintptr_t)from | (uintptr_t)to | row_bytes) & 15) == 0) {
        for (size_t i = threadIdx.x; i < row_bytes / 16; i += blockDim.x) ((uint4 *)to)[i] = ((const uint4 *)from)[i];
    } else if (es == 4) {
        for (size_t i = threadIdx.x; i < row_bytes / 4; i += blockDim.x) ((uint32_t *)to)[i] = ((const uint32_t *)from)[i];
    } else if (es == 2) {
        for (size_t i = threadIdx.x; i < row_bytes / 2; i += blockDim.x) ((uint16_t *)to)[i] = ((const uint16_t *)from)[i];
    } else {
        for (size_t i = threadIdx.x; i < row_bytes; i += blockDim.x) to[i] = from[i];
    }
}

extern "C" int plugin_copy_rows(finch_plugin_device *dev, finch_plugin_stream *s, finch_dtype dtype, int64_t n, int64_t cols,
                                finch_dptr src, int64_t ld_src, finch_dptr rows, finch_dptr dst, int64_t ld_dst)
{
    gpuStream_t st = NULL;
    GPU_TRY(gpu_begin(dev, s, &st));
    size_t es = gpu_dtype_size(dtype);
    if (!es) return gpu_fail(FINCH_ERR_UNSUPPORTED, FINCH_GPU_PLUGIN_NAME ": copy_rows: dtype %s", gpu_dtype_name(dtype));
    if (n < 0 || cols < 0 || ld_src < cols || ld_dst < cols || n > INT32_MAX)
        return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": copy_rows: %lld x %lld with row strides %lld, %lld",
                        (long long)n, (long long)cols, (long long)ld_src, (long long)ld_dst);
    if (!n || !cols) return FINCH_OK;
    GPU_TRY(check_ptr(gpu_ptr(src), "copy_rows", "src"));
    GPU_TRY(check_ptr(gpu_ptr(rows), "copy_rows", "rows"));
    GPU_TRY(check_ptr(gpu_ptr(dst), "copy_rows", "dst"));
    if (src.offset + ((size_t)(n - 1) * ld_src + cols) * es > src.buf->size || rows.offset + (size_t)n * 4 > rows.buf->size)
        return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": copy_rows: src or rows overrun their buffers");
    size_t dst_bytes = dst.offset < dst.buf->size ? dst.buf->size - dst.offset : 0;
    return gpu_check(gpu_launch(copy_rows_kernel, dim3((unsigned)n), dim3(128), 0, st, (const char *)gpu_ptr(src), (size_t)ld_src * es,
                                (const int32_t *)gpu_ptr(rows), (char *)gpu_ptr(dst), (size_t)ld_dst * es, (size_t)cols * es, es,
                                dst_bytes),
                     "copy_rows");
}

__global__ void cast_kernel(int64_t n, const void *src, int src_type, void *dst, int dst_type)
{
    GRID_STRIDE(i, n) {
        if (src_type == FINCH_DTYPE_I32 && dst_type == FINCH_DTYPE_I32)
            ((int32_t *)dst)[i] = ((const int32_t *)src)[i];
        else
            store_from_f32(dst, dst_type, i, load_as_f32(src, src_type, i));
    }
}

int gpu_cast(gpuStream_t st, int64_t n, finch_dtype src_type, const void *src, finch_dtype dst_type, void *dst)
{
    if ((!gpu_is_float_type(src_type) && src_type != FINCH_DTYPE_I32) ||
        (!gpu_is_float_type(dst_type) && dst_type != FINCH_DTYPE_I32))
        return gpu_fail(FINCH_ERR_UNSUPPORTED, FINCH_GPU_PLUGIN_NAME ": cast from %s to %s", gpu_dtype_name(src_type),
                        gpu_dtype_name(dst_type));
    if (n <= 0) return FINCH_OK;
    GPU_TRY(check_ptr(src, "cast", "src"));
    GPU_TRY(check_ptr(dst, "cast", "dst"));
    cast_kernel<<<gpu_blocks(n, THREADS), THREADS, 0, st>>>(n, src, src_type, dst, dst_type);
    return GPU_LAUNCHED("cast");
}

extern "C" int plugin_cast(finch_plugin_device *dev, finch_plugin_stream *s, int64_t n, finch_dtype src_type,
                           finch_dptr src, finch_dtype dst_type, finch_dptr dst)
{
    gpuStream_t st = NULL;
    GPU_TRY(gpu_begin(dev, s, &st));
    return gpu_cast(st, n, src_type, gpu_ptr(src), dst_type, gpu_ptr(dst));
}

/* With `words` (x, y and out on 16-byte boundaries) the first n - n % W elements go a 16-byte word
 * at a time. */
template <typename T>
__global__ void axpby_kernel(int64_t n, float alpha, const T *x, float beta, const T *y, T *out, int words)
{
    constexpr int W = word16<T>::n;
    gpu_grid_release();
    gpu_grid_wait();
    int64_t head = words ? n - n % W : 0;
    for (int64_t i = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * W; i < head; i += (int64_t)gridDim.x * blockDim.x * W) {
        float xv[W], yv[W];
        load_word(x + i, xv);
        if (y) load_word(y + i, yv);
#pragma unroll
        for (int k = 0; k < W; k++) xv[k] = y ? alpha * xv[k] + beta * yv[k] : alpha * xv[k];
        store_word(out + i, xv);
    }
    for (int64_t i = head + (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float v = alpha * to_f32(x[i]);
        if (y) v += beta * to_f32(y[i]);
        out[i] = from_f32<T>(v);
    }
}

extern "C" int plugin_axpby(finch_plugin_device *dev, finch_plugin_stream *s, int64_t n, finch_dtype dtype, float alpha,
                            finch_dptr x, float beta, finch_dptr y, finch_dptr out)
{
    gpuStream_t st = NULL;
    GPU_TRY(gpu_begin(dev, s, &st));
    if (n <= 0) return FINCH_OK;
    GPU_TRY(check_ptr(gpu_ptr(x), "axpby", "x"));
    GPU_TRY(check_ptr(gpu_ptr(out), "axpby", "out"));
    gpuError_t err = gpuSuccess;
    size_t es = gpu_dtype_size(dtype);
    /* Words for training's large sums; a decode step's one row (a few thousand elements) keeps an
     * element a thread, its latency spread over more blocks. */
    int words = n >= (1 << 16) && rows_on_words(gpu_ptr(x), 0, es) && rows_on_words(gpu_ptr(y), 0, es) &&
                rows_on_words(gpu_ptr(out), 0, es);
    FINCH_DISPATCH_FLOAT(dtype, T, "axpby",
        err = gpu_launch(axpby_kernel<T>, dim3(gpu_blocks(words ? n / word16<T>::n + 1 : n, THREADS)), dim3(THREADS), 0, st, n, alpha,
                         (const T *)gpu_ptr(x), beta, (const T *)gpu_ptr(y), (T *)gpu_ptr(out), words));
    return gpu_check(err, "axpby");
}

template <typename T>
__global__ void sum_squares_kernel(int64_t n, const T *x, float *sum_sq)
{
    __shared__ float shared[32];
    float acc = 0.0f;
    GRID_STRIDE(i, n) {
        float v = to_f32(x[i]);
        acc += v * v;
    }
    acc = block_sum(acc, shared);
    if (threadIdx.x == 0) atomicAdd(sum_sq, acc);
}

extern "C" int plugin_sum_squares(finch_plugin_device *dev, finch_plugin_stream *s, int64_t n, finch_dtype dtype,
                                  finch_dptr x, finch_dptr sum_sq)
{
    gpuStream_t st = NULL;
    GPU_TRY(gpu_begin(dev, s, &st));
    if (n <= 0) return FINCH_OK;
    GPU_TRY(check_ptr(gpu_ptr(x), "sum_squares", "x"));
    GPU_TRY(check_ptr(gpu_ptr(sum_sq), "sum_squares", "sum_sq"));
    unsigned blocks = gpu_blocks(n, THREADS);
    if (blocks > 1024) blocks = 1024;
    FINCH_DISPATCH_FLOAT(dtype, T, "sum_squares",
        sum_squares_kernel<T><<<blocks, THREADS, 0, st>>>(n, (const T *)gpu_ptr(x), (float *)gpu_ptr(sum_sq)));
    return GPU_LAUNCHED("sum_squares");
}

/* sum_squares_multi: the tensors of one launch; block b sums SQUARES_BLOCK_ELEMS elements of tensor t
 * where block0[t] <= b < block0[t + 1]. */
#define SQUARES_TENSORS 48
#define SQUARES_BLOCK_ELEMS (8 * THREADS)
typedef struct squares_list {
    const void *x[SQUARES_TENSORS];
    int64_t n[SQUARES_TENSORS];
    int dtype[SQUARES_TENSORS];
    int block0[SQUARES_TENSORS + 1];
    int count;
} squares_list;

__global__ void sum_squares_multi_kernel(squares_list list, float *sum_sq)
{
    __shared__ float shared[32];
    int t = 0;
    while (t + 1 < list.count && (int)blockIdx.x >= list.block0[t + 1]) t++;
    int64_t i0 = (int64_t)(blockIdx.x - list.block0[t]) * SQUARES_BLOCK_ELEMS,
            i1 = i0 + SQUARES_BLOCK_ELEMS < list.n[t] ? i0 + SQUARES_BLOCK_ELEMS : list.n[t];
    float acc = 0.0f;
    for (int64_t i = i0 + threadIdx.x; i < i1; i += blockDim.x) {
        float v = load_as_f32(list.x[t], list.dtype[t], i);
        acc += v * v;
    }
    acc = block_sum(acc, shared);
    if (threadIdx.x == 0) atomicAdd(sum_sq, acc);
}

extern "C" int plugin_sum_squares_multi(finch_plugin_device *dev, finch_plugin_stream *s, int count, const int64_t *n,
                                        const finch_dtype *dtype, const finch_dptr *x, finch_dptr sum_sq)
{
    gpuStream_t st = NULL;
    GPU_TRY(gpu_begin(dev, s, &st));
    if (count < 0 || (count && (!n || !dtype || !x)))
        return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": sum_squares_multi: %d tensors without their arrays", count);
    GPU_TRY(check_ptr(gpu_ptr(sum_sq), "sum_squares_multi", "sum_sq"));
    const int64_t max_blocks = (int64_t)1 << 30;
    squares_list list;
    list.count = 0;
    int64_t blocks = 0;
    for (int i = 0; i <= count; i++) {
        int64_t need = 0;
        if (i < count) {
            if (n[i] < 0 || !gpu_is_float_type(dtype[i]))
                return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": sum_squares_multi: tensor %d: n %lld, dtype %s", i,
                                (long long)n[i], gpu_dtype_name(dtype[i]));
            if (n[i] == 0) continue;
            GPU_TRY(check_ptr(gpu_ptr(x[i]), "sum_squares_multi", "x"));
            need = (n[i] + SQUARES_BLOCK_ELEMS - 1) / SQUARES_BLOCK_ELEMS;
            if (need > max_blocks)
                return gpu_fail(FINCH_ERR_UNSUPPORTED, FINCH_GPU_PLUGIN_NAME ": sum_squares_multi: a tensor of %lld elements",
                                (long long)n[i]);
        }
        if (list.count && (i == count || list.count == SQUARES_TENSORS || blocks + need > max_blocks)) {
            list.block0[list.count] = (int)blocks;
            sum_squares_multi_kernel<<<(unsigned)blocks, THREADS, 0, st>>>(list, (float *)gpu_ptr(sum_sq));
            GPU_TRY(GPU_LAUNCHED("sum_squares_multi"));
            list.count = 0;
            blocks = 0;
        }
        if (i == count) break;
        list.x[list.count] = gpu_ptr(x[i]);
        list.n[list.count] = n[i];
        list.dtype[list.count] = (int)dtype[i];
        list.block0[list.count++] = (int)blocks;
        blocks += need;
    }
    return FINCH_OK;
}

static int check_activation(finch_activation act, float param, const char *entry)
{
    if ((int)act < FINCH_ACT_SILU || (int)act > FINCH_ACT_SOFTCAP)
        return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": %s: unknown activation %d", entry, (int)act);
    if (act == FINCH_ACT_SOFTCAP && !(param > 0.0f))
        return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": %s: softcap needs a cap > 0 (got %g)", entry, param);
    return FINCH_OK;
}

template <typename T>
__global__ void activation_forward_kernel(int act, float param, int64_t n, const T *x, T *y)
{
    gpu_grid_release();
    gpu_grid_wait();
    GRID_STRIDE(i, n) y[i] = from_f32<T>(act_forward(act, param, to_f32(x[i])));
}

template <typename T>
__global__ void activation_backward_kernel(int act, float param, int64_t n, const T *x, const T *dy, T *dx)
{
    GRID_STRIDE(i, n) dx[i] = from_f32<T>(to_f32(dy[i]) * act_derivative(act, param, to_f32(x[i])));
}

extern "C" int plugin_activation_forward(finch_plugin_device *dev, finch_plugin_stream *s, finch_activation act, float param,
                                         int64_t n, finch_dtype dtype, finch_dptr x, finch_dptr y)
{
    gpuStream_t st = NULL;
    GPU_TRY(gpu_begin(dev, s, &st));
    GPU_TRY(check_activation(act, param, "activation_forward"));
    if (n <= 0) return FINCH_OK;
    GPU_TRY(check_ptr(gpu_ptr(x), "activation_forward", "x"));
    GPU_TRY(check_ptr(gpu_ptr(y), "activation_forward", "y"));
    gpuError_t err = gpuSuccess;
    FINCH_DISPATCH_FLOAT(dtype, T, "activation_forward",
        err = gpu_launch(activation_forward_kernel<T>, dim3(gpu_blocks(n, THREADS)), dim3(THREADS), 0, st, (int)act, param, n,
                         (const T *)gpu_ptr(x), (T *)gpu_ptr(y)));
    return gpu_check(err, "activation_forward");
}

extern "C" int plugin_activation_backward(finch_plugin_device *dev, finch_plugin_stream *s, finch_activation act, float param,
                                          int64_t n, finch_dtype dtype, finch_dptr x, finch_dptr dy, finch_dptr dx)
{
    gpuStream_t st = NULL;
    GPU_TRY(gpu_begin(dev, s, &st));
    GPU_TRY(check_activation(act, param, "activation_backward"));
    if (n <= 0) return FINCH_OK;
    GPU_TRY(check_ptr(gpu_ptr(x), "activation_backward", "x"));
    GPU_TRY(check_ptr(gpu_ptr(dy), "activation_backward", "dy"));
    GPU_TRY(check_ptr(gpu_ptr(dx), "activation_backward", "dx"));
    FINCH_DISPATCH_FLOAT(dtype, T, "activation_backward",
        activation_backward_kernel<T><<<gpu_blocks(n, THREADS), THREADS, 0, st>>>(
            act, param, n, (const T *)gpu_ptr(x), (const T *)gpu_ptr(dy), (T *)gpu_ptr(dx)));
    return GPU_LAUNCHED("activation_backward");
}

/* Gated units: element (i, j) of strided gate/up views, contiguous out/dout. The cap of SOFTCAP is
 * not a parameter of the glu entries, so the gated entries accept the four plain activations.
 * Blocks take rows (grid-stride, blockIdx.y), threads the columns of a row (and with few rows, several
 * blocks a row along blockIdx.x, so that one token's row is not left to one SM): no 64-bit division
 * per element. With `words` (every row on a 16-byte boundary) a thread takes a 16-byte word of each
 * row at a time, the last dim % W columns one by one. The backward may write over gate and up: each
 * element is read before it is written, by the same thread. */
template <int N>
__device__ __forceinline__ void glu_forward_elements(int act, const float *g, const float *u, float *o)
{
#pragma unroll
    for (int k = 0; k < N; k++) o[k] = act_forward(act, 0.0f, g[k]) * u[k];
}

template <int N>
__device__ __forceinline__ void glu_backward_elements(int act, const float *g, const float *u, const float *d, float *dg,
                                                      float *du)
{
#pragma unroll
    for (int k = 0; k < N; k++) {
        float a = act_forward(act, 0.0f, g[k]), da = act_derivative(act, 0.0f, g[k]);
        dg[k] = d[k] * u[k] * da;
        du[k] = d[k] * a;
    }
}

template <typename T>
__global__ void glu_forward_kernel(int act, int64_t n, int64_t dim, const T *gate, int64_t ldg, const T *up,
                                   int64_t ldu, T *out, int words)
{
    constexpr int W = word16<T>::n;
    gpu_grid_release();
    gpu_grid_wait();
    int64_t head = words ? dim - dim % W : 0, t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x,
            stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = blockIdx.y; i < n; i += gridDim.y) {
        const T *gr = gate + i * ldg, *ur = up + i * ldu;
        T *orow = out + i * dim;
        for (int64_t j = t * W; j < head; j += stride * W) {
            float g[W], u[W], o[W];
            load_word(gr + j, g);
            load_word(ur + j, u);
            glu_forward_elements<W>(act, g, u, o);
            store_word(orow + j, o);
        }
        for (int64_t j = head + t; j < dim; j += stride) {
            float g = to_f32(gr[j]), u = to_f32(ur[j]), o;
            glu_forward_elements<1>(act, &g, &u, &o);
            orow[j] = from_f32<T>(o);
        }
    }
}

template <typename T>
__global__ void glu_backward_kernel(int act, int64_t n, int64_t dim, const T *gate, int64_t ldg, const T *up,
                                    int64_t ldu, const T *dout, T *dgate, T *dup, int words)
{
    constexpr int W = word16<T>::n;
    int64_t head = words ? dim - dim % W : 0, t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x,
            stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = blockIdx.y; i < n; i += gridDim.y) {
        const T *gr = gate + i * ldg, *ur = up + i * ldu, *dr = dout + i * dim;
        T *dgr = dgate + i * ldg, *dur = dup + i * ldu;
        for (int64_t j = t * W; j < head; j += stride * W) {
            float g[W], u[W], d[W], dg[W], du[W];
            load_word(gr + j, g);
            load_word(ur + j, u);
            load_word(dr + j, d);
            glu_backward_elements<W>(act, g, u, d, dg, du);
            store_word(dgr + j, dg);
            store_word(dur + j, du);
        }
        for (int64_t j = head + t; j < dim; j += stride) {
            float g = to_f32(gr[j]), u = to_f32(ur[j]), d = to_f32(dr[j]), dg, du;
            glu_backward_elements<1>(act, &g, &u, &d, &dg, &du);
            dgr[j] = from_f32<T>(dg);
            dur[j] = from_f32<T>(du);
        }
    }
}

/* Blocks for the row-wise gated kernels: one per row up to the grid's y limit (then grid-stride);
 * under 256 rows, a row's columns (per_thread a thread at a time) spread over up to 64 blocks. */
static dim3 glu_blocks(int64_t n, int64_t dim, int per_thread)
{
    unsigned across = 1;
    if (n < 256) {
        int64_t want = (dim + (int64_t)THREADS * per_thread - 1) / ((int64_t)THREADS * per_thread);
        across = (unsigned)(want < 64 ? want : 64);
    }
    return dim3(across, (unsigned)(n < 65535 ? n : 65535));
}

static int check_glu(finch_activation act, int64_t dim, int64_t ldg, int64_t ldu, const char *entry)
{
    if ((int)act < FINCH_ACT_SILU || (int)act > FINCH_ACT_RELU)
        return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": %s: activation %d is not a gate activation", entry,
                        (int)act);
    if (ldg < dim || ldu < dim)
        return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": %s: row strides %lld/%lld below dim %lld", entry,
                        (long long)ldg, (long long)ldu, (long long)dim);
    return FINCH_OK;
}

extern "C" int plugin_glu_forward(finch_plugin_device *dev, finch_plugin_stream *s, finch_activation act, int64_t n,
                                  int64_t dim, finch_dtype dtype, finch_dptr gate, int64_t ldg, finch_dptr up, int64_t ldu,
                                  finch_dptr out)
{
    gpuStream_t st = NULL;
    GPU_TRY(gpu_begin(dev, s, &st));
    GPU_TRY(check_glu(act, dim, ldg, ldu, "glu_forward"));
    if (n <= 0 || dim <= 0) return FINCH_OK;
    GPU_TRY(check_ptr(gpu_ptr(gate), "glu_forward", "gate"));
    GPU_TRY(check_ptr(gpu_ptr(up), "glu_forward", "up"));
    GPU_TRY(check_ptr(gpu_ptr(out), "glu_forward", "out"));
    gpuError_t err = gpuSuccess;
    size_t es = gpu_dtype_size(dtype);
    int words = rows_on_words(gpu_ptr(gate), ldg, es) && rows_on_words(gpu_ptr(up), ldu, es) && rows_on_words(gpu_ptr(out), dim, es);
    FINCH_DISPATCH_FLOAT(dtype, T, "glu_forward",
        err = gpu_launch(glu_forward_kernel<T>, glu_blocks(n, dim, words ? word16<T>::n : 1), dim3(THREADS), 0, st, (int)act, n, dim,
                         (const T *)gpu_ptr(gate), ldg, (const T *)gpu_ptr(up), ldu, (T *)gpu_ptr(out), words));
    return gpu_check(err, "glu_forward");
}

extern "C" int plugin_glu_backward(finch_plugin_device *dev, finch_plugin_stream *s, finch_activation act, int64_t n,
                                   int64_t dim, finch_dtype dtype, finch_dptr gate, int64_t ldg, finch_dptr up, int64_t ldu,
                                   finch_dptr dout, finch_dptr dgate, finch_dptr dup)
{
    gpuStream_t st = NULL;
    GPU_TRY(gpu_begin(dev, s, &st));
    GPU_TRY(check_glu(act, dim, ldg, ldu, "glu_backward"));
    if (n <= 0 || dim <= 0) return FINCH_OK;
    GPU_TRY(check_ptr(gpu_ptr(gate), "glu_backward", "gate"));
    GPU_TRY(check_ptr(gpu_ptr(up), "glu_backward", "up"));
    GPU_TRY(check_ptr(gpu_ptr(dout), "glu_backward", "dout"));
    GPU_TRY(check_ptr(gpu_ptr(dgate), "glu_backward", "dgate"));
    GPU_TRY(check_ptr(gpu_ptr(dup), "glu_backward", "dup"));
    size_t es = gpu_dtype_size(dtype);
    int words = rows_on_words(gpu_ptr(gate), ldg, es) && rows_on_words(gpu_ptr(up), ldu, es) &&
                rows_on_words(gpu_ptr(dout), dim, es) && rows_on_words(gpu_ptr(dgate), ldg, es) &&
                rows_on_words(gpu_ptr(dup), ldu, es);
    FINCH_DISPATCH_FLOAT(dtype, T, "glu_backward",
        glu_backward_kernel<T><<<glu_blocks(n, dim, words ? word16<T>::n : 1), THREADS, 0, st>>>(
            act, n, dim, (const T *)gpu_ptr(gate), ldg, (const T *)gpu_ptr(up), ldu, (const T *)gpu_ptr(dout),
            (T *)gpu_ptr(dgate), (T *)gpu_ptr(dup), words));
    return GPU_LAUNCHED("glu_backward");
}
