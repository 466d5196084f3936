/* Matrix-vector products for a few rows of activations, the shape of decoding:
 *     C [m, n] = alpha * A [m, k] W^T + beta * C,   W stored [n, k] (row stride ld), 1 <= m <= 8,
 * W dense (F32/BF16/F16) or NF4 (bitsandbytes layout, dequantized in registers), A and C any float
 * type. At m this small a product reads every weight once and does little arithmetic with it, so
 * its speed is the memory bandwidth: each warp streams whole rows of W in 16-byte loads, several
 * in flight per thread, and keeps the m dot products in registers; A (a few KiB) stays in L1.
 * gpu_gemm sends such shapes here first; anything these kernels do not take (a transposed
 * operand, W rows not 16-byte aligned, m > 8) goes on to cuBLASLt or the tiled kernel.
 * FINCH_CUDA_GEMV=0 turns the path off, for comparing. */
#include "gpu_plugin.h"

#include <stdlib.h>
#include <string.h>

#define GEMV_MAX_M 8
#define GEMV_THREADS 256
#define GEMV_ROWS_PER_BLOCK 8   /* one row per warp of 32 lanes; a wave64 warp takes two in turn */
#define GEMV_UNROLL 4           /* 16-byte loads of W in flight per thread */

struct gemv_params {
    int64_t m, n, k;
    const void *a; int64_t lda; int a_vec;   /* a_vec: A's rows are 16-byte aligned */
    const void *w; int64_t ldw;
    const float *absmax, *code; int64_t blocksize; /* NF4 */
    int c_type; void *c; int64_t ldc;
    float alpha, beta;
};

/* ---- unpacking 32-bit words of storage into f32 ------------------------------------------- */
template <typename T> struct words;
template <> struct words<float> {
    static constexpr int per_word = 1;
    __device__ __forceinline__ static void unpack(uint32_t u, float *out) { out[0] = __uint_as_float(u); }
};
template <> struct words<gpu_bf16> {
    static constexpr int per_word = 2;
    __device__ __forceinline__ static void unpack(uint32_t u, float *out)
    {
        out[0] = __uint_as_float(u << 16); /* element 0 is the low half (little endian) */
        out[1] = __uint_as_float(u & 0xffff0000u);
    }
};
template <> struct words<gpu_f16> {
    static constexpr int per_word = 2;
    __device__ __forceinline__ static void unpack(uint32_t u, float *out)
    {
        out[0] = __half2float(__ushort_as_half((unsigned short)(u & 0xffffu)));
        out[1] = __half2float(__ushort_as_half((unsigned short)(u >> 16)));
    }
};

/* A 16-byte load of W that does not stay in L1 (W is read once; A should stay there). */
__device__ __forceinline__ uint4 load_stream(const uint4 *p)
{
#if FINCH_GPU_CUDA
    uint4 v;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
#else
    return *p;
#endif
}

/* N consecutive elements of A starting at element e of row r, as f32. vec: 16-byte aligned rows
 * (then e * sizeof(XT) is a multiple of min(16, N * sizeof(XT)) and vector loads are legal). */
template <typename XT, int N>
__device__ __forceinline__ void load_a(const gemv_params &p, int64_t r, int64_t e, float *out)
{
    const XT *row = (const XT *)p.a + r * p.lda + e;
    constexpr int bytes = N * (int)sizeof(XT);
    if (p.a_vec && bytes >= 8) {
        constexpr int pw = words<XT>::per_word;
        if (bytes >= 16) {
#pragma unroll
            for (int c = 0; c < bytes / 16; c++) {
                uint4 u = ((const uint4 *)row)[c];
                uint32_t w4[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
                for (int j = 0; j < 4; j++) words<XT>::unpack(w4[j], out + (c * 4 + j) * pw);
            }
        } else {
            uint2 u = *(const uint2 *)row;
            words<XT>::unpack(u.x, out);
            words<XT>::unpack(u.y, out + pw);
        }
    } else {
#pragma unroll
        for (int j = 0; j < N; j++) out[j] = to_f32(row[j]);
    }
}

__device__ __forceinline__ float warp_total(float v)
{
    for (int o = FINCH_WARP_SIZE / 2; o > 0; o >>= 1) v += gpu_shfl_xor(v, o);
    return v;
}

__device__ __forceinline__ void gemv_store(const gemv_params &p, int64_t i, int64_t row, float acc)
{
    float v = p.alpha * acc;
    if (p.beta != 0.0f) v += p.beta * load_as_f32(p.c, p.c_type, i * p.ldc + row);
    store_from_f32(p.c, p.c_type, i * p.ldc + row, v);
}

/* ---- dense W ------------------------------------------------------------------------------ */
template <typename WT, typename XT, int M>
__global__ void __launch_bounds__(GEMV_THREADS) gemv_dense_kernel(gemv_params p)
{
    constexpr int VEC = 16 / (int)sizeof(WT); /* elements of W per 16-byte load */
    int warps = blockDim.x / FINCH_WARP_SIZE, warp = threadIdx.x / FINCH_WARP_SIZE, lane = threadIdx.x % FINCH_WARP_SIZE;
    int64_t first = (int64_t)blockIdx.x * GEMV_ROWS_PER_BLOCK;
    int64_t last = first + GEMV_ROWS_PER_BLOCK < p.n ? first + GEMV_ROWS_PER_BLOCK : p.n;
    int64_t nvec = p.k / VEC;
    for (int64_t row = first + warp; row < last; row += warps) {
        const WT *wrow = (const WT *)p.w + row * p.ldw;
        float acc[M];
#pragma unroll
        for (int i = 0; i < M; i++) acc[i] = 0.0f;
        for (int64_t v0 = lane; v0 < nvec; v0 += (int64_t)FINCH_WARP_SIZE * GEMV_UNROLL) {
            uint4 wv[GEMV_UNROLL];
#pragma unroll
            for (int u = 0; u < GEMV_UNROLL; u++) {
                int64_t v = v0 + (int64_t)u * FINCH_WARP_SIZE;
                if (v < nvec) wv[u] = load_stream((const uint4 *)wrow + v);
            }
#pragma unroll
            for (int u = 0; u < GEMV_UNROLL; u++) {
                int64_t v = v0 + (int64_t)u * FINCH_WARP_SIZE;
                if (v >= nvec) break;
                float wf[VEC];
                uint32_t w4[4] = {wv[u].x, wv[u].y, wv[u].z, wv[u].w};
#pragma unroll
                for (int j = 0; j < 4; j++) words<WT>::unpack(w4[j], wf + j * words<WT>::per_word);
#pragma unroll
                for (int i = 0; i < M; i++) {
                    if (i >= p.m) break;
                    float xf[VEC];
                    load_a<XT, VEC>(p, i, v * VEC, xf);
#pragma unroll
                    for (int j = 0; j < VEC; j++) acc[i] = fmaf(wf[j], xf[j], acc[i]);
                }
            }
        }
        for (int64_t e = nvec * VEC + lane; e < p.k; e += FINCH_WARP_SIZE) { /* k % VEC columns */
            float w = to_f32(wrow[e]);
#pragma unroll
            for (int i = 0; i < M; i++)
                if (i < p.m) acc[i] = fmaf(w, to_f32(((const XT *)p.a)[i * p.lda + e]), acc[i]);
        }
#pragma unroll
        for (int i = 0; i < M; i++) {
            if (i >= p.m) break;
            float t = warp_total(acc[i]);
            if (lane == 0) gemv_store(p, i, row, t);
        }
    }
}

/* ---- NF4 W: 32 codes per 16-byte load, one absmax per load (blocksize % 32 == 0) ------------ */
template <typename XT, int M>
__global__ void __launch_bounds__(GEMV_THREADS) gemv_nf4_kernel(gemv_params p)
{
    /* The 16 code values sit in 16 different banks, so a warp's lookups never conflict (a table of
     * value pairs per byte, 256 x 8 bytes, conflicted and ran at a fifth of the bandwidth). */
    __shared__ float table[16];
    if (threadIdx.x < 16) table[threadIdx.x] = p.code[threadIdx.x];
    __syncthreads();
    int warps = blockDim.x / FINCH_WARP_SIZE, warp = threadIdx.x / FINCH_WARP_SIZE, lane = threadIdx.x % FINCH_WARP_SIZE;
    int64_t first = (int64_t)blockIdx.x * GEMV_ROWS_PER_BLOCK;
    int64_t last = first + GEMV_ROWS_PER_BLOCK < p.n ? first + GEMV_ROWS_PER_BLOCK : p.n;
    int64_t nvec = p.k / 32; /* k == ld, a multiple of 32 (gpu_gemv) */
    const unsigned char *bytes = (const unsigned char *)p.w;
    for (int64_t row = first + warp; row < last; row += warps) {
        int64_t base = row * p.ldw; /* flattened index of the row's first element; a multiple of 32 */
        const uint4 *wrow = (const uint4 *)(bytes + base / 2);
        float acc[M];
#pragma unroll
        for (int i = 0; i < M; i++) acc[i] = 0.0f;
        for (int64_t v0 = lane; v0 < nvec; v0 += (int64_t)FINCH_WARP_SIZE * GEMV_UNROLL) {
            uint4 wv[GEMV_UNROLL];
            float scale[GEMV_UNROLL];
#pragma unroll
            for (int u = 0; u < GEMV_UNROLL; u++) {
                int64_t v = v0 + (int64_t)u * FINCH_WARP_SIZE;
                if (v < nvec) {
                    wv[u] = load_stream(wrow + v);
                    scale[u] = p.absmax[(base + v * 32) / p.blocksize];
                }
            }
#pragma unroll
            for (int u = 0; u < GEMV_UNROLL; u++) {
                int64_t v = v0 + (int64_t)u * FINCH_WARP_SIZE;
                if (v >= nvec) break;
                float wf[32];
                uint32_t w4[4] = {wv[u].x, wv[u].y, wv[u].z, wv[u].w};
#pragma unroll
                for (int j = 0; j < 4; j++)
#pragma unroll
                    for (int b = 0; b < 4; b++) { /* the first element of a byte in its high nibble */
                        wf[(j * 4 + b) * 2] = table[(w4[j] >> (8 * b + 4)) & 15u];
                        wf[(j * 4 + b) * 2 + 1] = table[(w4[j] >> (8 * b)) & 15u];
                    }
#pragma unroll
                for (int i = 0; i < M; i++) {
                    if (i >= p.m) break;
                    float xf[32], dot = 0.0f;
                    load_a<XT, 32>(p, i, v * 32, xf);
#pragma unroll
                    for (int j = 0; j < 32; j++) dot = fmaf(wf[j], xf[j], dot);
                    acc[i] = fmaf(scale[u], dot, acc[i]);
                }
            }
        }
#pragma unroll
        for (int i = 0; i < M; i++) {
            if (i >= p.m) break;
            float t = warp_total(acc[i]);
            if (lane == 0) gemv_store(p, i, row, t);
        }
    }
}

/* ---- dispatch ----------------------------------------------------------------------------- */
static bool gemv_enabled(void)
{
    static int on = -1;
    if (on < 0) {
        const char *e = getenv("FINCH_CUDA_GEMV");
        on = !(e && !strcmp(e, "0"));
    }
    return on == 1;
}

template <int M>
static void launch_for_m(gpuStream_t st, finch_dtype wt, finch_dtype xt, const gemv_params &p, unsigned blocks)
{
#define GEMV_DENSE_X(WT)                                                                                               \
    switch (xt) {                                                                                                      \
    case FINCH_DTYPE_BF16: gemv_dense_kernel<WT, gpu_bf16, M><<<blocks, GEMV_THREADS, 0, st>>>(p); break;             \
    case FINCH_DTYPE_F16: gemv_dense_kernel<WT, gpu_f16, M><<<blocks, GEMV_THREADS, 0, st>>>(p); break;               \
    default: gemv_dense_kernel<WT, float, M><<<blocks, GEMV_THREADS, 0, st>>>(p); break;                              \
    }
    switch (wt) {
    case FINCH_DTYPE_BF16: GEMV_DENSE_X(gpu_bf16) break;
    case FINCH_DTYPE_F16: GEMV_DENSE_X(gpu_f16) break;
    case FINCH_DTYPE_F32: GEMV_DENSE_X(float) break;
    default: /* NF4 */
        switch (xt) {
        case FINCH_DTYPE_BF16: gemv_nf4_kernel<gpu_bf16, M><<<blocks, GEMV_THREADS, 0, st>>>(p); break;
        case FINCH_DTYPE_F16: gemv_nf4_kernel<gpu_f16, M><<<blocks, GEMV_THREADS, 0, st>>>(p); break;
        default: gemv_nf4_kernel<float, M><<<blocks, GEMV_THREADS, 0, st>>>(p); break;
        }
    }
#undef GEMV_DENSE_X
}

int gpu_gemv(gpuStream_t st, int64_t m, int64_t n, int64_t k, const gpu_operand *a, const gpu_operand *b, finch_dtype c_type,
             void *c, int64_t ldc, float alpha, float beta, int *done)
{
    *done = 0;
    if (m < 1 || m > GEMV_MAX_M || n < 1 || k < 1 || a->trans || !b->trans || !gemv_enabled()) return FINCH_OK;
    if (!gpu_is_float_type(a->dtype) || !gpu_is_float_type(c_type) || a->ld < k || ldc < n) return FINCH_OK;
    uintptr_t wp = (uintptr_t)b->ptr;
    if (b->dtype == FINCH_DTYPE_NF4) {
        /* Every row starts on a 16-byte boundary of the packed codes, and one absmax covers each 32 codes. */
        if ((wp & 15) || b->ld != k || k % 32 || b->blocksize <= 0 || b->blocksize % 32 || !b->absmax || !b->code) return FINCH_OK;
    } else if (!gpu_is_float_type(b->dtype) || (wp & 15) || (b->ld * (int64_t)gpu_dtype_size(b->dtype)) % 16 || b->ld < k) {
        return FINCH_OK;
    }
    gemv_params p;
    memset(&p, 0, sizeof p);
    p.m = m;
    p.n = n;
    p.k = k;
    p.a = a->ptr;
    p.lda = a->ld;
    p.a_vec = !((uintptr_t)a->ptr & 15) && (a->ld * (int64_t)gpu_dtype_size(a->dtype)) % 16 == 0;
    p.w = b->ptr;
    p.ldw = b->ld;
    p.absmax = b->absmax;
    p.code = b->code;
    p.blocksize = b->blocksize;
    p.c_type = c_type;
    p.c = c;
    p.ldc = ldc;
    p.alpha = alpha;
    p.beta = beta;
    int64_t blocks = (n + GEMV_ROWS_PER_BLOCK - 1) / GEMV_ROWS_PER_BLOCK;
    if (blocks > INT32_MAX) return FINCH_OK;
    if (m == 1) launch_for_m<1>(st, b->dtype, a->dtype, p, (unsigned)blocks);
    else if (m == 2) launch_for_m<2>(st, b->dtype, a->dtype, p, (unsigned)blocks);
    else if (m <= 4) launch_for_m<4>(st, b->dtype, a->dtype, p, (unsigned)blocks);
    else launch_for_m<8>(st, b->dtype, a->dtype, p, (unsigned)blocks);
    GPU_TRY(GPU_LAUNCHED("gemv"));
    *done = 1;
    return FINCH_OK;
}
