/* Dense and NF4 matrix products: gemm, qmatmul_forward/backward, and gpu_gemm, which the fused
 * entries share. Storage types cuBLASLt takes go to cuBLASLt (f32 accumulation, no TF32);
 * everything else (mixed storage types, NF4 weights) runs the tiled kernel below, which reads
 * each operand in its own storage type and dequantizes NF4 tiles as it loads them. */
#include "gpu_plugin.h"

#include <mutex>
#include <new>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the tiled kernel --------------------------------------------------------------------- */
#define TILE_M 64
#define TILE_N 64
#define TILE_K 16
#define TILE_THREADS 256

__device__ __forceinline__ float operand_load(const gpu_operand &op, const char *base, int64_t e)
{
    switch (op.dtype) {
    case FINCH_DTYPE_BF16: return __bfloat162float(((const gpu_bf16 *)base)[e]);
    case FINCH_DTYPE_F16: return __half2float(((const gpu_f16 *)base)[e]);
    case FINCH_DTYPE_NF4: {
        unsigned char byte = ((const unsigned char *)base)[e >> 1];
        int code = (e & 1) ? (byte & 15) : (byte >> 4); /* first element in the high nibble */
        return op.code[code] * op.absmax[e / op.blocksize];
    }
    default: return ((const float *)base)[e];
    }
}

__device__ __forceinline__ const char *operand_base(const gpu_operand &op, int64_t batch)
{
    if (op.dtype == FINCH_DTYPE_NF4) return (const char *)op.ptr; /* NF4 weights are never batched */
    return (const char *)op.ptr + batch * op.stride * (op.dtype == FINCH_DTYPE_F32 ? 4 : 2);
}

/* Computes a TILE_M x TILE_N block of C; each of 256 threads owns a 4 x 4 lattice of it. */
__global__ void __launch_bounds__(TILE_THREADS)
gemm_tiled_kernel(int64_t m, int64_t n, int64_t k, gpu_operand a, gpu_operand b, int c_type, void *c, int64_t ldc,
                  int64_t stride_c, float alpha, float beta)
{
    __shared__ float as[TILE_K][TILE_M + 4];
    __shared__ float bs[TILE_K][TILE_N + 4];
    int64_t batch = blockIdx.z;
    int64_t row0 = (int64_t)blockIdx.y * TILE_M, col0 = (int64_t)blockIdx.x * TILE_N;
    const char *abase = operand_base(a, batch), *bbase = operand_base(b, batch);
    int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    float acc[4][4] = {};

    for (int64_t k0 = 0; k0 < k; k0 += TILE_K) {
        for (int l = 0; l < TILE_M * TILE_K / TILE_THREADS; l++) {
            int idx = tid + l * TILE_THREADS, r, kk;
            if (a.trans) { r = idx % TILE_M; kk = idx / TILE_M; } /* stored A[k][m]: vary r fastest */
            else { kk = idx % TILE_K; r = idx / TILE_K; }
            int64_t gr = row0 + r, gk = k0 + kk;
            float v = 0.0f;
            if (gr < m && gk < k) v = operand_load(a, abase, a.trans ? gk * a.ld + gr : gr * a.ld + gk);
            as[kk][r] = v;
        }
        for (int l = 0; l < TILE_N * TILE_K / TILE_THREADS; l++) {
            int idx = tid + l * TILE_THREADS, cc, kk;
            if (b.trans) { kk = idx % TILE_K; cc = idx / TILE_K; } /* stored B[n][k]: vary k fastest */
            else { cc = idx % TILE_N; kk = idx / TILE_N; }
            int64_t gc = col0 + cc, gk = k0 + kk;
            float v = 0.0f;
            if (gc < n && gk < k) v = operand_load(b, bbase, b.trans ? gc * b.ld + gk : gk * b.ld + gc);
            bs[kk][cc] = v;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < TILE_K; kk++) {
            float av[4], bv[4];
#pragma unroll
            for (int i = 0; i < 4; i++) av[i] = as[kk][ty + 16 * i];
#pragma unroll
            for (int j = 0; j < 4; j++) bv[j] = bs[kk][tx + 16 * j];
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
        }
        __syncthreads();
    }
    char *cbase = (char *)c + batch * stride_c * (c_type == FINCH_DTYPE_F32 ? 4 : 2);
#pragma unroll
    for (int i = 0; i < 4; i++) {
        int64_t gr = row0 + ty + 16 * i;
        if (gr >= m) continue;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            int64_t gc = col0 + tx + 16 * j;
            if (gc >= n) continue;
            float v = alpha * acc[i][j];
            if (beta != 0.0f) v += beta * load_as_f32(cbase, c_type, gr * ldc + gc);
            store_from_f32(cbase, c_type, gr * ldc + gc, v);
        }
    }
}

static int gemm_tiled(gpuStream_t st, int64_t m, int64_t n, int64_t k, const gpu_operand *a, const gpu_operand *b,
                      finch_dtype c_type, void *c, int64_t ldc, int64_t stride_c, int64_t batch, float alpha, float beta)
{
    for (int64_t b0 = 0; b0 < batch; b0 += 65535) {
        int64_t nb = batch - b0 < 65535 ? batch - b0 : 65535;
        gpu_operand ab = *a, bb = *b;
        size_t ea = a->dtype == FINCH_DTYPE_F32 ? 4 : 2, eb = b->dtype == FINCH_DTYPE_F32 ? 4 : 2;
        size_t ec = c_type == FINCH_DTYPE_F32 ? 4 : 2;
        if (ab.dtype != FINCH_DTYPE_NF4) ab.ptr = (const char *)a->ptr + b0 * a->stride * ea;
        if (bb.dtype != FINCH_DTYPE_NF4) bb.ptr = (const char *)b->ptr + b0 * b->stride * eb;
        dim3 grid((unsigned)((n + TILE_N - 1) / TILE_N), (unsigned)((m + TILE_M - 1) / TILE_M), (unsigned)nb);
        if (grid.y > 65535) return gpu_fail(FINCH_ERR_UNSUPPORTED, FINCH_GPU_PLUGIN_NAME ": gemm: m = %lld is too large", (long long)m);
        gemm_tiled_kernel<<<grid, TILE_THREADS, 0, st>>>(m, n, k, ab, bb, c_type, (char *)c + b0 * stride_c * ec, ldc,
                                                         stride_c, alpha, beta);
        GPU_TRY(GPU_LAUNCHED("gemm (tiled kernel)"));
    }
    return FINCH_OK;
}

#if FINCH_GPU_BLASLT
/* ---- cuBLASLt ----------------------------------------------------------------------------- */
static gpuDataType lt_type(finch_dtype t)
{
    return t == FINCH_DTYPE_BF16 ? GPU_R_16BF : t == FINCH_DTYPE_F16 ? GPU_R_16F : GPU_R_32F;
}

static int lt_takes(const gpu_operand *a, const gpu_operand *b, finch_dtype c_type, int64_t m, int64_t n, int64_t k,
                    int64_t ldc, int64_t batch)
{
    if (a->dtype != b->dtype || !gpu_is_float_type(a->dtype)) return 0;
    if (c_type != a->dtype && c_type != FINCH_DTYPE_F32) return 0;
    if (m > INT32_MAX || n > INT32_MAX || k > INT32_MAX || batch > INT32_MAX) return 0;
    /* Leading dimensions of the column-major views (see gpu_gemm) must cover their rows. */
    if (a->ld < (a->trans ? m : k) || b->ld < (b->trans ? k : n) || ldc < n) return 0;
    return 1;
}

#if FINCH_GPU_CUDA
/* The alignment in bytes (up to 256) that every batch's pointer of an operand keeps. */
static uint32_t lt_alignment(const void *p, int64_t stride, size_t elem, int64_t batch)
{
    uint64_t bits = (uint64_t)(uintptr_t)p | 256u;
    if (batch > 1) bits |= (uint64_t)stride * elem;
    return (uint32_t)(bits & (~bits + 1)); /* lowest set bit */
}
#endif

/* ---- cuBLASLt plans, cached per device and shape -------------------------------------------- *
 * A plan is the matmul descriptor, the three layouts and the heuristic's algorithm for one shape,
 * operand types and alignment. Building one (descriptors plus a heuristic query) costs tens of
 * microseconds of host time, so each is made once and reused; a training step repeats the same few
 * dozen shapes in every layer. FINCH_CUDA_LT_CACHE=0 builds a fresh plan on every call. */
#define LT_CACHE_SIZE 512

struct lt_key {
    int32_t opa, opb, ta, tb, tc;
    int64_t m, n, k, lda, ldb, ldc, sa, sb, sc, batch;
    uint32_t align[3];
};

struct lt_plan {
    lt_key key;
    gpublasLtMatmulDesc_t op;
    gpublasLtMatrixLayout_t la, lb, lc;
    gpublasLtMatmulHeuristicResult_t heur;
    int found;                      /* 0: cuBLASLt has no algorithm: the tiled kernel runs */
};

struct gpu_lt_cache {
    std::mutex lock;
    lt_plan plans[LT_CACHE_SIZE];
    int used, next;                 /* next: the slot replaced when full (round robin) */
};

static void plan_destroy(lt_plan *p)
{
    if (p->lc) gpublasLtMatrixLayoutDestroy(p->lc);
    if (p->lb) gpublasLtMatrixLayoutDestroy(p->lb);
    if (p->la) gpublasLtMatrixLayoutDestroy(p->la);
    if (p->op) gpublasLtMatmulDescDestroy(p->op);
    p->op = NULL;
    p->la = p->lb = p->lc = NULL;
}

int gpu_lt_cache_init(finch_plugin_device *dev)
{
    dev->lt_cache = new (std::nothrow) gpu_lt_cache();
    if (!dev->lt_cache) return gpu_fail(FINCH_ERR_OUT_OF_MEMORY, FINCH_GPU_PLUGIN_NAME ": out of host memory for the GEMM plan cache");
    dev->lt_cache->used = dev->lt_cache->next = 0;
    return FINCH_OK;
}

void gpu_lt_cache_free(finch_plugin_device *dev)
{
    if (!dev->lt_cache) return;
    for (int i = 0; i < dev->lt_cache->used; i++) plan_destroy(&dev->lt_cache->plans[i]);
    delete dev->lt_cache;
    dev->lt_cache = NULL;
}

static bool lt_cache_enabled(void)
{
    static int off = -1;
    return !gpu_env_is("FINCH_CUDA_LT_CACHE", "0", &off);
}

/* Builds the descriptors of key and asks the heuristic for an algorithm. */
static gpublasStatus_t plan_make(finch_plugin_device *dev, const lt_key &key, lt_plan *p)
{
    memset(p, 0, sizeof *p);
    p->key = key;
    gpublasLtMatmulPreference_t pref = NULL;
    gpublasStatus_t e = gpublasLtMatmulDescCreate(&p->op, GPUBLAS_COMPUTE_32F, GPU_R_32F);
    if (!e) e = gpublasLtMatmulDescSetAttribute(p->op, GPUBLASLT_MATMUL_DESC_TRANSA, &key.opa, sizeof key.opa);
    if (!e) e = gpublasLtMatmulDescSetAttribute(p->op, GPUBLASLT_MATMUL_DESC_TRANSB, &key.opb, sizeof key.opb);
    bool ta = key.opa == GPUBLAS_OP_T, tb = key.opb == GPUBLAS_OP_T;
    if (!e) e = gpublasLtMatrixLayoutCreate(&p->la, lt_type((finch_dtype)key.ta), ta ? key.k : key.n, ta ? key.n : key.k, key.lda);
    if (!e) e = gpublasLtMatrixLayoutCreate(&p->lb, lt_type((finch_dtype)key.tb), tb ? key.m : key.k, tb ? key.k : key.m, key.ldb);
    if (!e) e = gpublasLtMatrixLayoutCreate(&p->lc, lt_type((finch_dtype)key.tc), key.n, key.m, key.ldc);
    if (!e && key.batch > 1) {
        int32_t count = (int32_t)key.batch;
        gpublasLtMatrixLayout_t layouts[3] = {p->la, p->lb, p->lc};
        int64_t strides[3] = {key.sa, key.sb, key.sc};
        for (int i = 0; i < 3 && !e; i++) {
            e = gpublasLtMatrixLayoutSetAttribute(layouts[i], GPUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof count);
            if (!e) e = gpublasLtMatrixLayoutSetAttribute(layouts[i], GPUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                                                          &strides[i], sizeof strides[i]);
        }
    }
    if (!e) e = gpublasLtMatmulPreferenceCreate(&pref);
    if (!e) e = gpublasLtMatmulPreferenceSetAttribute(pref, GPUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                      &dev->lt_workspace_size, sizeof dev->lt_workspace_size);
#if FINCH_GPU_CUDA
    /* cuBLASLt assumes 256-byte aligned operands unless told otherwise. */
    const uint32_t align[4] = {key.align[0], key.align[1], key.align[2], key.align[2]};
    const cublasLtMatmulPreferenceAttributes_t align_attr[4] = {
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
    for (int i = 0; i < 4 && !e; i++) e = gpublasLtMatmulPreferenceSetAttribute(pref, align_attr[i], &align[i], sizeof align[i]);
#endif
    if (!e) e = gpublasLtMatmulAlgoGetHeuristic(dev->lt, p->op, p->la, p->lb, p->lc, p->lc, pref, 1, &p->heur, &p->found);
    if (pref) gpublasLtMatmulPreferenceDestroy(pref);
    if (e) {
        plan_destroy(p);
        p->found = 0;
    }
    return e;
}

/* Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: cuBLASLt gets B as its first
 * operand and A as its second, each stored matrix read as its column-major transpose. */
static int gemm_lt(finch_plugin_device *dev, gpuStream_t st, int64_t m, int64_t n, int64_t k, const gpu_operand *a,
                   const gpu_operand *b, finch_dtype c_type, void *c, int64_t ldc, int64_t stride_c, int64_t batch,
                   float alpha, float beta, int *done)
{
    *done = 0;
    lt_key key;
    memset(&key, 0, sizeof key);
    key.opa = b->trans ? GPUBLAS_OP_T : GPUBLAS_OP_N;
    key.opb = a->trans ? GPUBLAS_OP_T : GPUBLAS_OP_N;
    key.ta = b->dtype;
    key.tb = a->dtype;
    key.tc = c_type;
    key.m = m;
    key.n = n;
    key.k = k;
    key.lda = b->ld;
    key.ldb = a->ld;
    key.ldc = ldc;
    key.batch = batch > 1 ? batch : 1;
    if (batch > 1) {
        key.sa = b->stride;
        key.sb = a->stride;
        key.sc = stride_c;
    }
#if FINCH_GPU_CUDA
    key.align[0] = lt_alignment(b->ptr, b->stride, gpu_dtype_size(b->dtype), batch);
    key.align[1] = lt_alignment(a->ptr, a->stride, gpu_dtype_size(a->dtype), batch);
    key.align[2] = lt_alignment(c, stride_c, gpu_dtype_size(c_type), batch);
#endif
    lt_plan fresh, *plan = NULL;
    gpublasStatus_t e = GPUBLAS_STATUS_SUCCESS;
    std::unique_lock<std::mutex> held;
    gpu_lt_cache *cache = lt_cache_enabled() ? dev->lt_cache : NULL;
    if (cache) {
        held = std::unique_lock<std::mutex>(cache->lock);
        for (int i = 0; i < cache->used && !plan; i++)
            if (!memcmp(&cache->plans[i].key, &key, sizeof key)) plan = &cache->plans[i];
        if (!plan) {
            int slot = cache->used < LT_CACHE_SIZE ? cache->used++ : cache->next++ % LT_CACHE_SIZE;
            plan_destroy(&cache->plans[slot]);
            e = plan_make(dev, key, &cache->plans[slot]);
            plan = &cache->plans[slot];
        }
    } else {
        e = plan_make(dev, key, &fresh);
        plan = &fresh;
    }
    int rc = FINCH_OK;
    if (!e && plan->found > 0) {
        e = gpublasLtMatmul(dev->lt, plan->op, &alpha, b->ptr, plan->la, a->ptr, plan->lb, &beta, c, plan->lc, c, plan->lc,
                            &plan->heur.algo, dev->lt_workspace, dev->lt_workspace_size, st);
        if (e) rc = gpu_fail(FINCH_ERR_DEVICE, FINCH_GPU_PLUGIN_NAME ": gemm: cuBLASLt matmul failed (status %d)", (int)e);
        else *done = 1;
    }
    if (!cache) plan_destroy(&fresh);
    return rc;
}

/* ---- NF4 through cuBLASLt ------------------------------------------------------------------- */
/* Below this many rows of activations the tiled kernel, which reads the 4-bit codes directly, moves
 * fewer bytes than dequantizing a slice first. */
#define NF4_LT_MIN_ROWS 64
/* Elements of W dequantized at a time (32 MiB of bf16): a bounded scratch, never a full copy of a
 * large weight (an 8B model's MLP weights take four slices). FINCH_CUDA_NF4_SLICE_ELEMS overrides it
 * (the parity test cuts small weights into many slices with it). */
#define NF4_SLICE_ELEMS (16ll << 20)

static int64_t nf4_slice_elems(void)
{
    const char *e = getenv("FINCH_CUDA_NF4_SLICE_ELEMS");
    long long v = e && *e ? atoll(e) : 0;
    return v > 0 ? (int64_t)v : NF4_SLICE_ELEMS;
}

/* deq(W)[r0 + i][c0 + j] for i < rows, j < width, into out (row stride width) in A's storage type;
 * W is [., cols_w], flattened for the blocks. One element per thread. */
template <typename T>
__global__ void nf4_dequant_kernel(const unsigned char *data, const float *absmax, const float *code, int64_t blocksize,
                                   int64_t cols_w, int64_t r0, int64_t c0, int64_t rows, int64_t width, T *out)
{
    __shared__ float table[16];
    if (threadIdx.x < 16) table[threadIdx.x] = code[threadIdx.x];
    __syncthreads();
    int64_t count = rows * width;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < count; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t r = i / width, e = (r0 + r) * cols_w + c0 + (i - r * width);
        unsigned char byte = data[e >> 1];
        out[i] = from_f32<T>(table[(e & 1) ? (byte & 15) : (byte >> 4)] * absmax[e / blocksize]);
    }
}

template <typename T> struct __align__(16) nf4_pack8 { T v[8]; };

/* The same, eight elements (four packed bytes, one absmax) per thread, when every run of eight
 * starts a 4-byte word and sits inside one block: cols_w, c0 and width multiples of 8, blocksize
 * a multiple of 8, data 4-byte aligned. */
template <typename T>
__global__ void nf4_dequant8_kernel(const unsigned char *data, const float *absmax, const float *code, int64_t blocksize,
                                    int64_t cols_w, int64_t r0, int64_t c0, int64_t rows, int64_t width, T *out)
{
    __shared__ float table[16];
    if (threadIdx.x < 16) table[threadIdx.x] = code[threadIdx.x];
    __syncthreads();
    int64_t count8 = rows * width / 8;
    for (int64_t v = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; v < count8; v += (int64_t)gridDim.x * blockDim.x) {
        int64_t i = v * 8, r = i / width, e = (r0 + r) * cols_w + c0 + (i - r * width);
        unsigned word = *(const unsigned *)(data + (e >> 1));
        float scale = absmax[e / blocksize];
        nf4_pack8<T> p;
#pragma unroll
        for (int b = 0; b < 4; b++) {
            unsigned byte = (word >> (8 * b)) & 255u; /* little-endian: byte b holds elements 2b (high nibble), 2b+1 */
            p.v[2 * b] = from_f32<T>(table[byte >> 4] * scale);
            p.v[2 * b + 1] = from_f32<T>(table[byte & 15] * scale);
        }
        *(nf4_pack8<T> *)(out + i) = p;
    }
}

static int nf4_dequant(gpuStream_t st, const gpu_operand *w, int64_t r0, int64_t c0, int64_t rows, int64_t width, finch_dtype t,
                       void *out)
{
    const unsigned char *data = (const unsigned char *)w->ptr;
    int64_t cols_w = w->ld;
    int vec = cols_w % 8 == 0 && c0 % 8 == 0 && width % 8 == 0 && w->blocksize % 8 == 0 && ((uintptr_t)data & 3) == 0 &&
              ((uintptr_t)out & 15) == 0;
    if (vec) {
        unsigned blocks = gpu_blocks(rows * width / 8, 256);
        FINCH_DISPATCH_FLOAT(t, T, "nf4 dequantize",
            nf4_dequant8_kernel<T><<<blocks, 256, 0, st>>>(data, w->absmax, w->code, w->blocksize, cols_w, r0, c0, rows, width, (T *)out));
    } else {
        unsigned blocks = gpu_blocks(rows * width, 256);
        FINCH_DISPATCH_FLOAT(t, T, "nf4 dequantize",
            nf4_dequant_kernel<T><<<blocks, 256, 0, st>>>(data, w->absmax, w->code, w->blocksize, cols_w, r0, c0, rows, width, (T *)out));
    }
    return GPU_LAUNCHED("nf4 dequantize");
}

/* C = alpha op(A) op(W) + beta C with W NF4 [rows_w, cols_w]: slices of W are dequantized into
 * scratch of A's storage type and multiplied by cuBLASLt, each slice giving its own columns of C
 * (so no slice accumulates into another's result): op(W) = W^T (x W^T) takes slices of W's rows,
 * op(W) = W (dy W) slices of its columns; slices are a multiple of 64 rows or columns. */
static int gemm_nf4_chunked(finch_plugin_device *dev, gpuStream_t st, int64_t m, int64_t n, int64_t k, const gpu_operand *a,
                            const gpu_operand *w, finch_dtype c_type, void *c, int64_t ldc, float alpha, float beta)
{
    int64_t rows_w = w->trans ? n : k, cols_w = w->ld;
    int64_t span = w->trans ? rows_w : cols_w;          /* what is sliced: W's rows, or its columns */
    int64_t other = w->trans ? cols_w : rows_w;
    int64_t slice = nf4_slice_elems() / other;
    if (slice < span) slice = slice >= 64 ? slice / 64 * 64 : 64; /* C's column slices stay aligned for cuBLASLt */
    if (slice < 1) slice = 1;
    if (slice > span) slice = span;
    size_t es = gpu_dtype_size(a->dtype), ec = gpu_dtype_size(c_type);
    void *scratch = NULL;
    GPU_TRY(gpu_scratch(st, (size_t)(slice * other) * es, &scratch, "nf4 dequantized slice"));
    int rc = FINCH_OK;
    for (int64_t s0 = 0; s0 < span && !rc; s0 += slice) {
        int64_t len = span - s0 < slice ? span - s0 : slice;
        gpu_operand wd;
        memset(&wd, 0, sizeof wd);
        wd.ptr = scratch;
        wd.dtype = a->dtype;
        wd.trans = w->trans;
        if (w->trans) {
            rc = nf4_dequant(st, w, s0, 0, len, cols_w, a->dtype, scratch);
            wd.ld = cols_w;
        } else {
            rc = nf4_dequant(st, w, 0, s0, rows_w, len, a->dtype, scratch);
            wd.ld = len;
        }
        if (!rc) rc = gpu_gemm(dev, st, m, len, k, a, &wd, c_type, (char *)c + s0 * ec, ldc, 0, 1, alpha, beta);
    }
    gpu_scratch_free(st, scratch);
    return rc;
}

#endif /* FINCH_GPU_BLASLT */

/* gemv.cu: the product for 1 <= m <= 8 rows of A (not transposed) and B = W^T, W dense or NF4
 * [n, k] with 16-byte aligned rows. *done = 0 when it does not take the shape (nothing queued). */
int gpu_gemv(finch_plugin_device *dev, gpuStream_t st, int64_t m, int64_t n, int64_t k, const gpu_operand *a, const gpu_operand *b,
             finch_dtype c_type, void *c, int64_t ldc, float alpha, float beta, int *done);

int gpu_gemm(finch_plugin_device *dev, gpuStream_t st, int64_t m, int64_t n, int64_t k, const gpu_operand *a,
             const gpu_operand *b, finch_dtype c_type, void *c, int64_t ldc, int64_t stride_c, int64_t batch,
             float alpha, float beta)
{
    if (m <= 0 || n <= 0 || batch <= 0) return FINCH_OK;
    if (k <= 0) { /* C = beta C */
        gpu_operand zero;
        memset(&zero, 0, sizeof zero);
        zero.dtype = FINCH_DTYPE_F32;
        zero.ptr = c; /* never read: k == 0 leaves the accumulators at zero */
        return gemm_tiled(st, m, n, 0, &zero, &zero, c_type, c, ldc, stride_c, batch, 0.0f, beta);
    }
    if (batch == 1) { /* a few rows (decoding): the bandwidth-bound kernels of gemv.cu */
        int done = 0;
        GPU_TRY(gpu_gemv(dev, st, m, n, k, a, b, c_type, c, ldc, alpha, beta, &done));
        if (done) return FINCH_OK;
    }
#if FINCH_GPU_BLASLT
    if (b->dtype == FINCH_DTYPE_NF4 && a->dtype != FINCH_DTYPE_NF4 && batch == 1 && m >= NF4_LT_MIN_ROWS)
        return gemm_nf4_chunked(dev, st, m, n, k, a, b, c_type, c, ldc, alpha, beta);
    if (lt_takes(a, b, c_type, m, n, k, ldc, batch)) {
        int done = 0;
        GPU_TRY(gemm_lt(dev, st, m, n, k, a, b, c_type, c, ldc, stride_c, batch, alpha, beta, &done));
        if (done) return FINCH_OK;
    }
#endif
    return gemm_tiled(st, m, n, k, a, b, c_type, c, ldc, stride_c, batch, alpha, beta);
}

int gpu_weight_operand(const finch_weight *w, int64_t out_features, int64_t in_features, int transposed, gpu_operand *out)
{
    memset(out, 0, sizeof *out);
    out->ptr = gpu_ptr(w->data);
    out->dtype = w->dtype;
    out->trans = transposed;
    out->ld = in_features;
    out->weight = 1;
    if (!out->ptr) return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": weight data is absent");
    if (w->dtype == FINCH_DTYPE_NF4) {
        out->absmax = (const float *)gpu_ptr(w->absmax);
        out->code = (const float *)gpu_ptr(w->code);
        out->blocksize = w->blocksize;
        if (!out->absmax || !out->code)
            return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": NF4 weight without absmax or code");
        if (w->blocksize <= 0)
            return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": NF4 weight [%lld, %lld] with blocksize %lld",
                            (long long)out_features, (long long)in_features, (long long)w->blocksize);
    } else if (!gpu_is_float_type(w->dtype)) {
        return gpu_fail(FINCH_ERR_UNSUPPORTED, FINCH_GPU_PLUGIN_NAME ": weight dtype %s", gpu_dtype_name(w->dtype));
    }
    return FINCH_OK;
}

/* ---- entries ------------------------------------------------------------------------------ */
static int float_operand(const char *what, finch_dtype t, finch_dptr p, int trans, int64_t ld, int64_t stride,
                         gpu_operand *out)
{
    memset(out, 0, sizeof *out);
    out->ptr = gpu_ptr(p);
    out->dtype = t;
    out->trans = trans;
    out->ld = ld;
    out->stride = stride;
    if (!gpu_is_float_type(t)) return gpu_fail(FINCH_ERR_UNSUPPORTED, FINCH_GPU_PLUGIN_NAME ": %s: dtype %s", what, gpu_dtype_name(t));
    if (!out->ptr) return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": %s is absent", what);
    return FINCH_OK;
}

extern "C" int plugin_gemm(finch_plugin_device *dev, finch_plugin_stream *s, const finch_gemm_desc *d)
{
    gpuStream_t st = NULL;
    gpu_operand a, b;
    GPU_TRY(gpu_begin(dev, s, &st));
    if (d->m < 0 || d->n < 0 || d->k < 0 || d->batch < 1)
        return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": gemm: m=%lld n=%lld k=%lld batch=%lld",
                        (long long)d->m, (long long)d->n, (long long)d->k, (long long)d->batch);
    if (!d->m || !d->n) return FINCH_OK;
    GPU_TRY(float_operand("gemm A", d->a_type, d->a, d->trans_a, d->lda, d->stride_a, &a));
    GPU_TRY(float_operand("gemm B", d->b_type, d->b, d->trans_b, d->ldb, d->stride_b, &b));
    if (!gpu_is_float_type(d->c_type) || !gpu_ptr(d->c))
        return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": gemm C: dtype %s or absent", gpu_dtype_name(d->c_type));
    return gpu_gemm(dev, st, d->m, d->n, d->k, &a, &b, d->c_type, gpu_ptr(d->c), d->ldc, d->stride_c, d->batch, d->alpha,
                    d->beta);
}

extern "C" int plugin_qmatmul_forward(finch_plugin_device *dev, finch_plugin_stream *s, const finch_weight *w,
                                      int64_t out_features, int64_t in_features, int64_t m, finch_dtype act_type, finch_dptr x,
                                      int64_t ldx, finch_dptr y, int64_t ldy, float beta)
{
    gpuStream_t st = NULL;
    gpu_operand a, b;
    GPU_TRY(gpu_begin(dev, s, &st));
    if (m <= 0 || out_features <= 0) return FINCH_OK;
    GPU_TRY(float_operand("qmatmul_forward x", act_type, x, 0, ldx, 0, &a));
    GPU_TRY(gpu_weight_operand(w, out_features, in_features, 1, &b));
    if (!gpu_ptr(y)) return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": qmatmul_forward: y is absent");
    return gpu_gemm(dev, st, m, out_features, in_features, &a, &b, act_type, gpu_ptr(y), ldy, 0, 1, 1.0f, beta);
}

extern "C" int plugin_qmatmul_backward(finch_plugin_device *dev, finch_plugin_stream *s, const finch_weight *w,
                                       int64_t out_features, int64_t in_features, int64_t m, finch_dtype act_type, finch_dptr dy,
                                       int64_t lddy, finch_dptr dx, int64_t lddx, float beta)
{
    gpuStream_t st = NULL;
    gpu_operand a, b;
    GPU_TRY(gpu_begin(dev, s, &st));
    if (m <= 0 || in_features <= 0) return FINCH_OK;
    GPU_TRY(float_operand("qmatmul_backward dy", act_type, dy, 0, lddy, 0, &a));
    GPU_TRY(gpu_weight_operand(w, out_features, in_features, 0, &b));
    if (!gpu_ptr(dx)) return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": qmatmul_backward: dx is absent");
    return gpu_gemm(dev, st, m, in_features, out_features, &a, &b, act_type, gpu_ptr(dx), lddx, 0, 1, 1.0f, beta);
}
