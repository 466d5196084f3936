/* Internals shared by the GPU plugin's sources: the handle structs behind the opaque ABI types,
 * error reporting, device-pointer resolution, stream-ordered scratch memory, element conversion
 * and type dispatch. Everything here compiles with nvcc and hipcc (through gpu_compat.h). */
#ifndef FINCH_GPU_PLUGIN_H
#define FINCH_GPU_PLUGIN_H

#include "gpu_compat.h"
#include "finch/plugin.h"

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct finch_plugin_device {
    int index;
    gpuStream_t stream;             /* the device's default stream (non-blocking) */
    gpuDeviceProp props;
#if FINCH_GPU_BLASLT
    gpublasLtHandle_t lt;
    void *lt_workspace;
    size_t lt_workspace_size;
    struct gpu_lt_cache *lt_cache;  /* cuBLASLt plans by shape (gemm.cu) */
#endif
    struct finch_plugin_device *prev, *next; /* every open device, for shutdown */
    struct gpu_held *held;          /* scratch of the default stream that recordings may name (gpu_held_scratch) */
};

struct finch_plugin_buffer {
    void *ptr;
    size_t size;
    int device;
    struct finch_plugin_buffer *prev, *next; /* every live buffer, for shutdown */
};

struct finch_plugin_stream {
    gpuStream_t stream;
    int device;
    struct finch_plugin_stream *prev, *next;
    struct gpu_held *held;          /* its scratch that recordings may name (gpu_held_scratch) */
};

/* ---- errors: a thread-local message behind last_error() -------------------------------- */
int gpu_fail(int status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
const char *gpu_last_error(void);
/* FINCH_OK, or FINCH_ERR_DEVICE / FINCH_ERR_OUT_OF_MEMORY naming `what` and the runtime's reason. */
int gpu_check(gpuError_t err, const char *what);
/* After a kernel launch: picks up launch errors (bad configuration, sticky faults). */
#define GPU_LAUNCHED(what) gpu_check(gpuGetLastError(), what)
#define GPU_TRY(expr)                  \
    do {                               \
        int gpu_try_rc_ = (expr);      \
        if (gpu_try_rc_) return gpu_try_rc_; \
    } while (0)

/* Makes dev current on this thread and resolves s (NULL: the device's default stream). */
int gpu_begin(finch_plugin_device *dev, finch_plugin_stream *s, gpuStream_t *out);

/* Stream-ordered scratch memory from the device's pool; `what` names it in an out-of-memory error.
 * Freed with gpu_scratch_free on the same stream once the work using it is queued. */
int gpu_scratch(gpuStream_t st, size_t bytes, void **out, const char *what);
void gpu_scratch_free(gpuStream_t st, void *p);

/* Scratch of at least `bytes` owned by the stream s (NULL: the device's default stream) and kept until
 * the stream or device goes away, so that work recorded into a graph may name it: no allocation
 * node in the recording. The same memory comes back on every call with a size it covers (work on
 * one stream is ordered, so uses do not overlap); a larger size allocates anew (never while st is
 * recording: then *out is NULL and the caller takes gpu_scratch). */
int gpu_held_scratch(finch_plugin_device *dev, finch_plugin_stream *s, gpuStream_t st, size_t bytes, void **out);

/* Programmatic dependent launch (sm_90+, CUDA): while this thread records st into a graph and
 * FINCH_CUDA_PDL is not 0, gpu_launch lets a kernel start before the previous kernel in the
 * stream has finished. Such kernels call gpu_grid_wait() before touching any memory that earlier
 * work writes or reads (only data that nothing in the recording writes, the weights, may be read
 * before it), and gpu_grid_release() to let the next kernel start early in turn. Elsewhere (not
 * recording, HIP, older devices) launches are plain and both calls do nothing. */
int gpu_overlap(gpuStream_t st);

/* The address a finch_dptr names, or NULL when it is absent. */
static inline void *gpu_ptr(finch_dptr p)
{
    return p.buf ? (void *)((char *)p.buf->ptr + p.offset) : NULL;
}

size_t gpu_dtype_size(finch_dtype t);
int gpu_is_float_type(finch_dtype t); /* F32, BF16 or F16 */
const char *gpu_dtype_name(finch_dtype t);

/* Grid size for a grid-stride loop over n items with `threads` per block. */
/* A switch from the environment, read once into *cached (-1 before the first call): whether variable
 * `name` is `value` ("0" turns off a path that is on by default, for comparing; "1" turns one on). */
static inline bool gpu_env_is(const char *name, const char *value, int *cached)
{
    if (*cached < 0) {
        const char *e = getenv(name);
        *cached = e && !strcmp(e, value);
    }
    return *cached == 1;
}

static inline unsigned gpu_blocks(int64_t n, int threads)
{
    int64_t b = (n + threads - 1) / threads;
    if (b < 1) b = 1;
    if (b > 65535LL * 32) b = 65535LL * 32;
    return (unsigned)b;
}

/* ---- element conversion (arithmetic is always f32) ------------------------------------- */
#ifdef __CUDACC__
#define GPU_HD __host__ __device__ __forceinline__
#else
#define GPU_HD static inline
#endif

#if defined(__CUDACC__) || defined(__HIPCC__)
template <typename T> __device__ __forceinline__ float to_f32(T v);
template <> __device__ __forceinline__ float to_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_f32<gpu_bf16>(gpu_bf16 v) { return __bfloat162float(v); }
template <> __device__ __forceinline__ float to_f32<gpu_f16>(gpu_f16 v) { return __half2float(v); }
template <typename T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ gpu_bf16 from_f32<gpu_bf16>(float v) { return __float2bfloat16(v); }
template <> __device__ __forceinline__ gpu_f16 from_f32<gpu_f16>(float v) { return __float2half(v); }

/* Run-time typed access, for kernels where one launch mixes storage types. */
__device__ __forceinline__ float load_as_f32(const void *p, int dtype, int64_t i)
{
    switch (dtype) {
    case FINCH_DTYPE_BF16: return __bfloat162float(((const gpu_bf16 *)p)[i]);
    case FINCH_DTYPE_F16: return __half2float(((const gpu_f16 *)p)[i]);
    case FINCH_DTYPE_I32: return (float)((const int32_t *)p)[i];
    default: return ((const float *)p)[i];
    }
}
__device__ __forceinline__ void store_from_f32(void *p, int dtype, int64_t i, float v)
{
    switch (dtype) {
    case FINCH_DTYPE_BF16: ((gpu_bf16 *)p)[i] = __float2bfloat16(v); break;
    case FINCH_DTYPE_F16: ((gpu_f16 *)p)[i] = __float2half(v); break;
    case FINCH_DTYPE_I32: ((int32_t *)p)[i] = (int32_t)v; break;
    default: ((float *)p)[i] = v; break;
    }
}

/* Sum over a whole block (blockDim.x a multiple of the warp size, at most 1024 threads). Every
 * thread gets the result. `shared` holds at least 32 floats. */
__device__ __forceinline__ float block_sum(float v, float *shared)
{
    for (int o = FINCH_WARP_SIZE / 2; o > 0; o >>= 1) v += gpu_shfl_xor(v, o);
    int warp = threadIdx.x / FINCH_WARP_SIZE, lane = threadIdx.x % FINCH_WARP_SIZE;
    int n_warps = blockDim.x / FINCH_WARP_SIZE;
    __syncthreads();
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    float t = 0.0f;
    for (int w = 0; w < n_warps; w++) t += shared[w];
    return t;
}
__device__ __forceinline__ float block_max(float v, float *shared)
{
    for (int o = FINCH_WARP_SIZE / 2; o > 0; o >>= 1) v = fmaxf(v, gpu_shfl_xor(v, o));
    int warp = threadIdx.x / FINCH_WARP_SIZE, lane = threadIdx.x % FINCH_WARP_SIZE;
    int n_warps = blockDim.x / FINCH_WARP_SIZE;
    __syncthreads();
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    float t = shared[0];
    for (int w = 1; w < n_warps; w++) t = fmaxf(t, shared[w]);
    return t;
}

/* See gpu_overlap. */
__device__ __forceinline__ void gpu_grid_wait(void)
{
#if FINCH_GPU_CUDA && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void gpu_grid_release(void)
{
#if FINCH_GPU_CUDA && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}

/* kernel<<<grid, block, smem, st>>>(args...), the launch error returned; may overlap the previous
 * kernel (gpu_overlap): only for kernels that call gpu_grid_wait() before their first access of
 * memory that earlier work touches. */
template <typename... P, typename... A>
static inline gpuError_t gpu_launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, gpuStream_t st, A... args)
{
#if FINCH_GPU_CUDA
    if (gpu_overlap(st)) {
        cudaLaunchConfig_t cfg = {};
        cfg.gridDim = grid;
        cfg.blockDim = block;
        cfg.dynamicSmemBytes = smem;
        cfg.stream = st;
        cudaLaunchAttribute attr[1] = {};
        attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        attr[0].val.programmaticStreamSerializationAllowed = 1;
        cfg.attrs = attr;
        cfg.numAttrs = 1;
        return cudaLaunchKernelEx(&cfg, kernel, args...);
    }
#endif
    kernel<<<grid, block, smem, st>>>(args...);
    return gpuGetLastError();
}

/* FINCH_DISPATCH_FLOAT(dtype, T, body): runs body with T the storage type of dtype (F32/BF16/F16);
 * any other dtype makes the enclosing function return FINCH_ERR_UNSUPPORTED. */
#define FINCH_DISPATCH_FLOAT(dtype, T, what, ...)                                             \
    switch (dtype) {                                                                          \
    case FINCH_DTYPE_F32: { typedef float T; __VA_ARGS__; } break;                            \
    case FINCH_DTYPE_BF16: { typedef gpu_bf16 T; __VA_ARGS__; } break;                        \
    case FINCH_DTYPE_F16: { typedef gpu_f16 T; __VA_ARGS__; } break;                          \
    default: return gpu_fail(FINCH_ERR_UNSUPPORTED, "%s: dtype %s is not supported", what,  \
                             gpu_dtype_name((finch_dtype)(dtype)));                           \
    }
#endif

/* ---- the dense GEMM shared by the entries ----------------------------------------------- */
/* One operand of a GEMM: element (r, c) of op(X) is stored at X[c*ld + r] when trans, else
 * X[r*ld + c], plus batch*stride. NF4 operands (dtype NF4) index the flattened weight. */
typedef struct gpu_operand {
    const void *ptr;
    finch_dtype dtype;
    int trans;
    int64_t ld, stride;
    const float *absmax, *code;     /* NF4 only */
    int64_t blocksize;
    int weight;                     /* a model weight: nothing queued in a recorded pass writes it */
} gpu_operand;

/* C[b] (m x n, row stride ldc, type c_type) = alpha op(A[b]) op(B[b]) + beta C[b]. Uses cuBLASLt
 * (hipBLASLt) where it takes the types, else the plugin's own tiled kernel (any mix of F32/BF16/F16,
 * NF4 B), which is all there is in a HIP build without hipBLASLt. */
int gpu_gemm(finch_plugin_device *dev, gpuStream_t st, int64_t m, int64_t n, int64_t k,
             const gpu_operand *a, const gpu_operand *b, finch_dtype c_type, void *c, int64_t ldc,
             int64_t stride_c, int64_t batch, float alpha, float beta);
/* The device's cache of cuBLASLt plans: made at device_open, freed at device_close. */
int gpu_lt_cache_init(finch_plugin_device *dev);
void gpu_lt_cache_free(finch_plugin_device *dev);
/* The weight as the B operand of x W^T (transposed = 1) or of dy W (transposed = 0). */
int gpu_weight_operand(const finch_weight *w, int64_t out_features, int64_t in_features, int transposed,
                       gpu_operand *out);

/* gemv.cu: count (<= GEMV_MAX_SEGMENTS) products C_i [m, n_i] = alpha A W_i^T + beta C_i of one A with
 * 1 <= m <= 8 rows, W_i dense or NF4 (all one type, block size and code table) with 16-byte aligned
 * rows, streamed as one product over their rows. *done = 0 when it does not take the shapes
 * (nothing queued). */
#define GEMV_MAX_SEGMENTS 4
int gpu_gemv_group(finch_plugin_device *dev, gpuStream_t st, int64_t m, int64_t k, const gpu_operand *a, int count,
                   const gpu_operand *b, const int64_t *n, finch_dtype c_type, void *const *c, const int64_t *ldc, float alpha,
                   float beta, int *done);

/* out[j] += sum over rows r < n of dy[r, j] * f(r, j), f = 1 when x is NULL, else
 * (x[r, j] - (mean ? mean[r] : 0)) * rstd[r]: bias, LayerNorm and RMSNorm weight gradients. */
int gpu_column_sums(gpuStream_t st, int64_t n, int64_t dim, finch_dtype dtype, const void *dy, int64_t lddy,
                    const void *x, int64_t ldx, const float *mean, const float *rstd, float *out);

/* dst = (dst_type) src over n elements (F32/BF16/F16/I32), queued on st. */
int gpu_cast(gpuStream_t st, int64_t n, finch_dtype src_type, const void *src, finch_dtype dst_type, void *dst);

/* The table with every entry timed (FINCH_CUDA_PROFILE=1; profile.cu). */
const finch_plugin_api *gpu_profiled_api(const finch_plugin_api *base);

/* ---- entries (one file each, see the .cu files) ----------------------------------------- */
#ifdef __cplusplus
extern "C" {
#endif
#define FINCH_GPU_ENTRY(ret, name, params) ret plugin_##name params;
FINCH_GPU_ENTRY(int, fill, (finch_plugin_device *dev, finch_plugin_stream *s, finch_dptr dst, finch_dtype dtype, int64_t count, float value))
FINCH_GPU_ENTRY(int, cast, (finch_plugin_device *dev, finch_plugin_stream *s, int64_t n, finch_dtype src_type, finch_dptr src, finch_dtype dst_type, finch_dptr dst))
FINCH_GPU_ENTRY(int, axpby, (finch_plugin_device *dev, finch_plugin_stream *s, int64_t n, finch_dtype dtype, float alpha, finch_dptr x, float beta, finch_dptr y, finch_dptr out))
FINCH_GPU_ENTRY(int, sum_squares, (finch_plugin_device *dev, finch_plugin_stream *s, int64_t n, finch_dtype dtype, finch_dptr x, finch_dptr sum_sq))
FINCH_GPU_ENTRY(int, gemm, (finch_plugin_device *dev, finch_plugin_stream *s, const finch_gemm_desc *d))
FINCH_GPU_ENTRY(int, qmatmul_forward, (finch_plugin_device *dev, finch_plugin_stream *s, const finch_weight *w, int64_t out_features, int64_t in_features, int64_t m, finch_dtype act_type, finch_dptr x, int64_t ldx, finch_dptr y, int64_t ldy, float beta))
FINCH_GPU_ENTRY(int, qmatmul_backward, (finch_plugin_device *dev, finch_plugin_stream *s, const finch_weight *w, int64_t out_features, int64_t in_features, int64_t m, finch_dtype act_type, finch_dptr dy, int64_t lddy, finch_dptr dx, int64_t lddx, float beta))
FINCH_GPU_ENTRY(int, linear_forward, (finch_plugin_device *dev, finch_plugin_stream *s, const finch_linear_desc *d))
FINCH_GPU_ENTRY(int, linear_forward_group, (finch_plugin_device *dev, finch_plugin_stream *s, const finch_linear_desc *descs, int count))
FINCH_GPU_ENTRY(int, linear_backward, (finch_plugin_device *dev, finch_plugin_stream *s, const finch_linear_desc *d))
FINCH_GPU_ENTRY(int, attention_forward, (finch_plugin_device *dev, finch_plugin_stream *s, const finch_attention_desc *d))
FINCH_GPU_ENTRY(int, attention_backward, (finch_plugin_device *dev, finch_plugin_stream *s, const finch_attention_desc *d))
FINCH_GPU_ENTRY(int, rmsnorm_forward, (finch_plugin_device *dev, finch_plugin_stream *s, int64_t n, int64_t dim, finch_dtype dtype, finch_dptr x, finch_dtype w_type, finch_dptr w, float weight_offset, float eps, finch_dptr y, finch_dptr rstd))
FINCH_GPU_ENTRY(int, rmsnorm_backward, (finch_plugin_device *dev, finch_plugin_stream *s, int64_t n, int64_t dim, finch_dtype dtype, finch_dptr x, finch_dtype w_type, finch_dptr w, float weight_offset, finch_dptr rstd, finch_dptr dy, finch_dptr dx, int dx_accumulate, finch_dptr dw))
FINCH_GPU_ENTRY(int, layernorm_forward, (finch_plugin_device *dev, finch_plugin_stream *s, int64_t n, int64_t dim, finch_dtype dtype, finch_dptr x, finch_dtype w_type, finch_dptr w, finch_dptr b, float eps, finch_dptr y, finch_dptr mean, finch_dptr rstd))
FINCH_GPU_ENTRY(int, layernorm_backward, (finch_plugin_device *dev, finch_plugin_stream *s, int64_t n, int64_t dim, finch_dtype dtype, finch_dptr x, finch_dtype w_type, finch_dptr w, finch_dptr mean, finch_dptr rstd, finch_dptr dy, finch_dptr dx, int dx_accumulate, finch_dptr dw, finch_dptr db))
FINCH_GPU_ENTRY(int, rope_forward, (finch_plugin_device *dev, finch_plugin_stream *s, const finch_rope_desc *d))
FINCH_GPU_ENTRY(int, rope_backward, (finch_plugin_device *dev, finch_plugin_stream *s, const finch_rope_desc *d))
FINCH_GPU_ENTRY(int, glu_forward, (finch_plugin_device *dev, finch_plugin_stream *s, finch_activation act, int64_t n, int64_t dim, finch_dtype dtype, finch_dptr gate, int64_t ldg, finch_dptr up, int64_t ldu, finch_dptr out))
FINCH_GPU_ENTRY(int, glu_backward, (finch_plugin_device *dev, finch_plugin_stream *s, finch_activation act, int64_t n, int64_t dim, finch_dtype dtype, finch_dptr gate, int64_t ldg, finch_dptr up, int64_t ldu, finch_dptr dout, finch_dptr dgate, finch_dptr dup))
FINCH_GPU_ENTRY(int, activation_forward, (finch_plugin_device *dev, finch_plugin_stream *s, finch_activation act, float param, int64_t n, finch_dtype dtype, finch_dptr x, finch_dptr y))
FINCH_GPU_ENTRY(int, activation_backward, (finch_plugin_device *dev, finch_plugin_stream *s, finch_activation act, float param, int64_t n, finch_dtype dtype, finch_dptr x, finch_dptr dy, finch_dptr dx))
FINCH_GPU_ENTRY(int, embedding_forward, (finch_plugin_device *dev, finch_plugin_stream *s, int64_t n_tokens, int64_t dim, int64_t vocab, finch_dptr ids, finch_dtype table_type, finch_dptr table, finch_dtype out_type, finch_dptr out, float scale))
FINCH_GPU_ENTRY(int, embedding_backward, (finch_plugin_device *dev, finch_plugin_stream *s, int64_t n_tokens, int64_t dim, int64_t vocab, finch_dptr ids, finch_dtype dout_type, finch_dptr dout, finch_dptr dtable, float scale))
FINCH_GPU_ENTRY(int, cross_entropy, (finch_plugin_device *dev, finch_plugin_stream *s, const finch_cross_entropy_desc *d))
FINCH_GPU_ENTRY(int, linear_cross_entropy, (finch_plugin_device *dev, finch_plugin_stream *s, const finch_linear_cross_entropy_desc *d))
FINCH_GPU_ENTRY(int, adamw_step, (finch_plugin_device *dev, finch_plugin_stream *s, const finch_adamw_desc *d))
FINCH_GPU_ENTRY(int, adamw_step_multi, (finch_plugin_device *dev, finch_plugin_stream *s, int count, const finch_adamw_desc *descs))
FINCH_GPU_ENTRY(int, sum_squares_multi, (finch_plugin_device *dev, finch_plugin_stream *s, int count, const int64_t *n, const finch_dtype *dtype, const finch_dptr *x, finch_dptr sum_sq))
FINCH_GPU_ENTRY(int, adamw8bit_step, (finch_plugin_device *dev, finch_plugin_stream *s, const finch_adamw8bit_desc *d))
FINCH_GPU_ENTRY(int, attention_cache_forward, (finch_plugin_device *dev, finch_plugin_stream *s, const finch_attention_cache_desc *d))
FINCH_GPU_ENTRY(int, attention_cache_append_forward, (finch_plugin_device *dev, finch_plugin_stream *s, const finch_attention_cache_desc *d, const finch_rope_desc *rope, finch_dptr k_new, int64_t ldk_new, finch_dptr v_new, int64_t ldv_new, finch_dptr rows))
#undef FINCH_GPU_ENTRY
#ifdef __cplusplus
}
#endif

/* Cross-entropy over rows of logits (dtype), shared by cross_entropy and linear_cross_entropy:
 * adds the row losses and counted rows to loss_sum and count and, when dlogits is not NULL, writes
 * the gradient (dl_type; it may alias logits). A label outside [0, vocab) that is not
 * FINCH_IGNORE_INDEX sets *bad and its row is skipped. */
int gpu_cross_entropy_rows(gpuStream_t st, int64_t n_tokens, int64_t vocab, finch_dtype dtype, const void *logits,
                           int64_t ld, const int32_t *labels, float softcap, float grad_scale, float *loss_sum,
                           float *count, finch_dtype dl_type, void *dlogits, int64_t lddl, int32_t *bad);

#endif
