/* Matrix-vector products for a few rows of activations, the shape of decoding:
 *     C [m, n] = alpha * A [m, k] W^T + beta * C,   W stored [n, k] (row stride ld), 1 <= m <= 8,
 * W dense (F32/BF16/F16) or NF4 (bitsandbytes layout, dequantized in registers), A and C any float
 * type. At m this small a product reads every weight once and does little arithmetic with it, so
 * its speed is the memory bandwidth: warps stream rows of W in 16-byte loads that skip L1, several
 * in flight per thread, and keep the m dot products in registers; A (a few KiB) stays in L1.
 *
 * A block of 256 threads takes `groups` groups of R rows; the warps left over split each row's k
 * among themselves (`splits` = warps / groups) and add their partial sums in shared memory, so that
 * few rows (k/v projections) still fill the card; k is split only as far as that needs (see
 * choose_groups). Unsplit, the grid is one wave of resident blocks whose warps loop over row groups,
 * the loads of the next round (U 16-byte loads a row and lane) issued before the arithmetic of the
 * current one. NF4 rows are decoded by a lookup of the 16 code values (f32, as given) in shared
 * memory, each nibble turned into its byte offset in the table by a shift, a mask and a byte permute,
 * two rows per warp sharing each load of A; the absmax index is a shift when blocksize / 32 is a
 * power of two. gpu_gemm sends such shapes here first; anything these kernels do not take (a
 * transposed operand, W rows not 16-byte aligned, m > 8) goes on to cuBLASLt or the tiled kernel.
 * In a recorded pass on sm_90 (gpu_overlap) a product of a model weight starts before the kernel
 * ahead of it has finished: it loads the NF4 table and its first round of W, then waits for A, and
 * lets the next kernel start once its warps have streamed their rows (FINCH_CUDA_GEMV_RELEASE).
 * FINCH_CUDA_GEMV=0 turns the path off, for comparing; FINCH_CUDA_GEMV_SPLIT=1|2|4|8 (warps per
 * row) and FINCH_CUDA_GEMV_BLOCKS=N (grid of unsplit rows: N blocks, 0 = one group per warp) force
 * the layout, read on every call (tests and tuning). */
#include "gpu_plugin.h"

#include <stdlib.h>
#include <string.h>

#define GEMV_MAX_M 8
#define GEMV_THREADS 256
#define GEMV_MAX_WARPS (GEMV_THREADS / 32)

/* One of the products sharing A (gpu_gemv_group): rows [row0, next segment's row0) of the grid's
 * rows are rows of this W and columns of this C. */
struct gemv_segment {
    const void *w; int64_t ldw;
    const float *absmax;                     /* NF4 */
    void *c; int64_t ldc;
    int64_t row0;
};

struct gemv_params {
    int64_t m, n, k;                         /* n: the rows of every segment */
    const void *a; int64_t lda; int a_vec;   /* a_vec: A's rows are 16-byte aligned */
    int nseg;
    gemv_segment seg[GEMV_MAX_SEGMENTS];
    const float *code;                       /* NF4 */
    int64_t groups_per_block;                /* blocksize / 32 (NF4) */
    int block_shift;                         /* log2(groups_per_block), or -1 when not a power of two */
    int groups;                              /* groups of rows per thread block */
    int c_type;
    float alpha, beta;
    int early;                               /* W is a weight: its loads may start before the previous kernel ends */
    int release;                             /* when the next kernel may start (gpu_overlap): GEMV_RELEASE_* */
};

enum { GEMV_RELEASE_START, GEMV_RELEASE_END, GEMV_RELEASE_EXIT };

struct nf4_t {}; /* tag: W holds NF4 codes */
template <typename WT> struct is_nf4 { static constexpr bool value = false; };
template <> struct is_nf4<nf4_t> { static constexpr bool value = true; };

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

/* Elements of W per 16-byte load. */
template <typename WT> struct w_vec { static constexpr int n = 16 / (int)sizeof(WT); };
template <> struct w_vec<nf4_t> { static constexpr int n = 32; };

/* A 16-byte load of W that does not stay in L1 (W is read once; A should stay there). (An L2
 * evict_first hint on these loads was measured on an H200: decode 1-2% slower.) */
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

/* The dot product of one 16-byte load of W with the matching elements x of a row of A. */
template <typename WT>
__device__ __forceinline__ float dot_vec(uint4 wv, const float *x)
{
    constexpr int pw = words<WT>::per_word;
    uint32_t w4[4] = {wv.x, wv.y, wv.z, wv.w};
    float dot = 0.0f;
#pragma unroll
    for (int j = 0; j < 4; j++) {
        float wf[pw];
        words<WT>::unpack(w4[j], wf);
#pragma unroll
        for (int e = 0; e < pw; e++) dot = fmaf(wf[e], x[j * pw + e], dot);
    }
    return dot;
}
/* The dot product of one 32-bit word of NF4 codes (8 elements) with x. Byte b holds elements 2b
 * (high nibble) and 2b + 1 (low nibble); the masks turn each nibble into the byte offset of its
 * value in the table (16 floats in 16 banks: a warp's lookups never conflict). */
__device__ __forceinline__ float dot_nf4_word(uint32_t w, const float *x, const float *table)
{
    const char *tb = (const char *)table;
    uint32_t hi = (w >> 2) & 0x3c3c3c3cu, lo = (w << 2) & 0x3c3c3c3cu;
    float d0 = 0.0f, d1 = 0.0f;
#pragma unroll
    for (int b = 0; b < 4; b++) {
        d0 = fmaf(*(const float *)(tb + __byte_perm(hi, 0, 0x4440 + b)), x[2 * b], d0);
        d1 = fmaf(*(const float *)(tb + __byte_perm(lo, 0, 0x4440 + b)), x[2 * b + 1], d1);
    }
    return d0 + d1;
}

__device__ __forceinline__ float warp_total(float v)
{
    for (int o = FINCH_WARP_SIZE / 2; o > 0; o >>= 1) v += gpu_shfl_xor(v, o);
    return v;
}

/* The segment holding grid row `row`, and the row's index inside it (unrolled: the parameters are
 * read at constant offsets, never copied to local memory). */
struct segment_row {
    const gemv_segment *seg;
    int64_t row;
};
__device__ __forceinline__ segment_row find_segment(const gemv_params &p, int64_t row)
{
    segment_row r = {&p.seg[0], row};
#pragma unroll
    for (int i = 1; i < GEMV_MAX_SEGMENTS; i++)
        if (i < p.nseg && row >= p.seg[i].row0) r = {&p.seg[i], row - p.seg[i].row0};
    return r;
}

__device__ __forceinline__ void gemv_store(const gemv_params &p, int64_t i, int64_t row, float acc)
{
    segment_row sr = find_segment(p, row);
    int64_t at = i * sr.seg->ldc + sr.row;
    float v = p.alpha * acc;
    if (p.beta != 0.0f) v += p.beta * load_as_f32(sr.seg->c, p.c_type, at);
    store_from_f32(sr.seg->c, p.c_type, at, v);
}

/* The 16-byte loads of W of one round: U per row for R rows (vector v = base + u * stride + lane
 * of each row), and for NF4 the absmax of each. Vectors past the row's end are not loaded. */
template <typename WT, int R, int U> struct w_round {
    uint4 w[U][R];
    float scale[U][R];
};

template <typename WT, int R, int U>
__device__ __forceinline__ void load_round(const gemv_params &p, int64_t grp, int64_t base, int64_t stride, int64_t nvec,
                                           int lane, w_round<WT, R, U> &out)
{
#pragma unroll
    for (int r = 0; r < R; r++) {
        int64_t row = grp * R + r < p.n ? grp * R + r : p.n - 1; /* rows past n: read row n - 1, never stored */
        segment_row sr = find_segment(p, row);
        int64_t first = is_nf4<WT>::value ? sr.row * (sr.seg->ldw / 32) : 0; /* NF4: the row's first group of 32 codes */
        const uint4 *wrow = is_nf4<WT>::value ? (const uint4 *)sr.seg->w + first
                                              : (const uint4 *)((const WT *)sr.seg->w + sr.row * sr.seg->ldw);
#pragma unroll
        for (int u = 0; u < U; u++) {
            int64_t v = base + u * stride + lane;
            if (v < nvec) {
                out.w[u][r] = load_stream(wrow + v);
                if constexpr (is_nf4<WT>::value) {
                    int64_t gi = first + v;
                    out.scale[u][r] = sr.seg->absmax[p.block_shift >= 0 ? gi >> p.block_shift : gi / p.groups_per_block];
                }
            }
        }
    }
}

/* One kernel for dense and NF4 W: M rows of A (p.m <= M), R rows of W per warp sharing the loads of
 * A, U loads per row and lane a round. Warp `warp` of a block takes k-slice s = warp / groups of row
 * group g = warp % groups (groups of R rows); its rounds run over the slice's vectors, then over the
 * next group of the grid-stride loop, and the loads of the next round are issued before the current
 * one's arithmetic, so a warp keeps loads in flight while it computes. With splits > 1 the grid
 * covers every group once and the slices' sums meet in shared memory. */
template <typename WT, typename XT, int M, int R, int U>
__global__ void __launch_bounds__(GEMV_THREADS, M > 1 ? 1 : is_nf4<WT>::value ? 3 : 4) gemv_kernel(gemv_params p)
{
    constexpr bool nf4 = is_nf4<WT>::value;
    constexpr int VEC = w_vec<WT>::n;
    __shared__ float table[16];
    __shared__ float partial[GEMV_MAX_WARPS][M * R];
    /* Overlapping the previous kernel (gpu_overlap): the loads of a weight (the code table and the
     * first round) go out before the wait for A and C. */
    if (p.release == GEMV_RELEASE_START) gpu_grid_release();
    if (!p.early) gpu_grid_wait();
    if constexpr (nf4) {
        if (threadIdx.x < 16) table[threadIdx.x] = p.code[threadIdx.x];
        __syncthreads();
    }
    int warps = blockDim.x / FINCH_WARP_SIZE, warp = threadIdx.x / FINCH_WARP_SIZE, lane = threadIdx.x % FINCH_WARP_SIZE;
    int groups = p.groups, splits = warps / groups; /* gpu_gemv: groups divides warps */
    int g = warp % groups, s = warp / groups;
    int64_t nvec = p.k / VEC; /* NF4: k == ld, a multiple of 32 (gpu_gemv) */
    int64_t ngroups = (p.n + R - 1) / R, group_step = (int64_t)gridDim.x * groups;
    int64_t stride = (int64_t)splits * FINCH_WARP_SIZE, first_base = (int64_t)s * FINCH_WARP_SIZE;
    int64_t grp = (int64_t)blockIdx.x * groups + g, base = first_base;
    float acc[M][R];
#pragma unroll
    for (int i = 0; i < M; i++)
#pragma unroll
        for (int r = 0; r < R; r++) acc[i][r] = 0.0f;
    w_round<WT, R, U> cur, next;
    if (grp < ngroups) load_round<WT, R, U>(p, grp, base, stride, nvec, lane, cur);
    if (p.early) gpu_grid_wait();
    while (grp < ngroups) {
        int64_t next_grp = grp, next_base = base + stride * U;
        if (next_base >= nvec) {
            next_base = first_base;
            next_grp += group_step;
        }
        if (next_grp < ngroups) load_round<WT, R, U>(p, next_grp, next_base, stride, nvec, lane, next);
#pragma unroll
        for (int u = 0; u < U; u++) {
            int64_t v = base + u * stride + lane;
            if (v >= nvec) break;
#pragma unroll
            for (int i = 0; i < M; i++) {
                if (i >= p.m) break;
                if constexpr (nf4) { /* A 8 elements at a time: fewer registers live */
                    float d[R];
#pragma unroll
                    for (int r = 0; r < R; r++) d[r] = 0.0f;
#pragma unroll
                    for (int j = 0; j < 4; j++) {
                        float xf[8];
                        load_a<XT, 8>(p, i, v * VEC + j * 8, xf);
#pragma unroll
                        for (int r = 0; r < R; r++) {
                            const uint4 &wv = cur.w[u][r];
                            d[r] += dot_nf4_word(j == 0 ? wv.x : j == 1 ? wv.y : j == 2 ? wv.z : wv.w, xf, table);
                        }
                    }
#pragma unroll
                    for (int r = 0; r < R; r++) acc[i][r] = fmaf(cur.scale[u][r], d[r], acc[i][r]);
                } else {
                    float xf[VEC];
                    load_a<XT, VEC>(p, i, v * VEC, xf);
#pragma unroll
                    for (int r = 0; r < R; r++) acc[i][r] += dot_vec<WT>(cur.w[u][r], xf);
                }
            }
        }
        if (next_grp != grp) { /* the group's last round: its k % VEC tail, then the sums */
            if constexpr (!nf4) {
                for (int64_t e = nvec * VEC + first_base + lane; e < p.k; e += stride) {
#pragma unroll
                    for (int r = 0; r < R; r++) {
                        segment_row sr = find_segment(p, grp * R + r < p.n ? grp * R + r : p.n - 1);
                        float w = to_f32(((const WT *)sr.seg->w)[sr.row * sr.seg->ldw + e]);
#pragma unroll
                        for (int i = 0; i < M; i++)
                            if (i < p.m) acc[i][r] = fmaf(w, to_f32(((const XT *)p.a)[i * p.lda + e]), acc[i][r]);
                    }
                }
            }
#pragma unroll
            for (int i = 0; i < M; i++) {
                if (i >= p.m) break;
#pragma unroll
                for (int r = 0; r < R; r++) {
                    float t = warp_total(acc[i][r]);
                    acc[i][r] = 0.0f;
                    if (splits > 1) {
                        if (lane == 0) partial[warp][i * R + r] = t;
                    } else if (lane == 0 && grp * R + r < p.n) {
                        gemv_store(p, i, grp * R + r, t);
                    }
                }
            }
        }
        cur = next;
        grp = next_grp;
        base = next_base;
    }
    if (p.release == GEMV_RELEASE_END) gpu_grid_release(); /* this warp's rounds are done */
    if (splits > 1) { /* the grid covers every group once (gpu_gemv): each warp summed one group */
        __syncthreads();
        for (int t = threadIdx.x; t < groups * R * (int)p.m; t += blockDim.x) {
            int gg = t % groups, r = t / groups % R, i = t / (groups * R);
            int64_t row = ((int64_t)blockIdx.x * groups + gg) * R + r;
            float sum = 0.0f;
            for (int ss = 0; ss < splits; ss++) sum += partial[ss * groups + gg][i * R + r];
            if (row < p.n) gemv_store(p, i, row, sum);
        }
    }
}

/* ---- dispatch ----------------------------------------------------------------------------- */
static bool gemv_enabled(void)
{
    static int off = -1;
    return !gpu_env_is("FINCH_CUDA_GEMV", "0", &off);
}

/* Thread blocks of this kernel resident per multiprocessor (asked once per kernel). */
template <typename WT, typename XT, int M, int R, int U>
static int resident_blocks(void)
{
    static int n = 0;
    if (n <= 0) {
        int b = 0;
#if FINCH_GPU_CUDA
        gpuError_t err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&b, gemv_kernel<WT, XT, M, R, U>, GEMV_THREADS, 0);
#else
        gpuError_t err = hipOccupancyMaxActiveBlocksPerMultiprocessor(&b, gemv_kernel<WT, XT, M, R, U>, GEMV_THREADS, 0);
#endif
        if (err != gpuSuccess || b < 1) {
            (void)gpuGetLastError();
            b = 1;
        }
        n = b;
    }
    return n;
}

/* How products overlap the kernels around them in a recorded pass (gpu_overlap), read once:
 * FINCH_CUDA_GEMV_RELEASE=start|end|exit (default end): the next kernel may start when the product
 * starts, when its warps have streamed their rows, or only when it has finished. */
static int release_point(void)
{
    static int r = -1;
    if (r < 0) {
        const char *e = getenv("FINCH_CUDA_GEMV_RELEASE");
        r = e && !strcmp(e, "start") ? GEMV_RELEASE_START : e && !strcmp(e, "exit") ? GEMV_RELEASE_EXIT : GEMV_RELEASE_END;
    }
    return r;
}

/* Groups of rows per block (a divisor of warps; the other warps split k). Whole rows per warp
 * stream best (on an H200 every split was slower once the blocks fill the card: 4096 x 4096 bf16
 * 11.2 us unsplit, 12.2 / 14.5 / 19.8 us with 2 / 4 / 8 warps a row), so k is split only as far as
 * needed for the blocks to fill one wave of resident slots (4096 -> 1024: 7.3 us unsplit, 5.3 us
 * with 4 warps a row). FINCH_CUDA_GEMV_SPLIT=1|2|4|8 forces the warps per row. */
static int choose_groups(int64_t ngroups, int64_t nvec, int warps, int64_t slots)
{
    const char *e = getenv("FINCH_CUDA_GEMV_SPLIT");
    if (e && *e) {
        int s = atoi(e);
        if (s == 1 || s == 2 || s == 4 || s == 8) return warps / s > 0 ? warps / s : 1;
    }
    int groups = warps;
    while (groups > 1 && (ngroups + groups - 1) / groups < slots * 9 / 10 && nvec >= (int64_t)(warps / groups) * 2 * 32)
        groups /= 2;
    /* (Splitting k further to even out the warps' row counts on a full card was measured on an
     * H200: decode 1-2% slower.) */
    return groups;
}

template <typename WT, typename XT, int M, int R, int U>
static int launch(gpuStream_t st, int sms, int warps, gemv_params p)
{
    int64_t ngroups = (p.n + R - 1) / R, nvec = p.k / w_vec<WT>::n;
    int64_t slots = (int64_t)sms * resident_blocks<WT, XT, M, R, U>();
    p.groups = choose_groups(ngroups, nvec, warps, slots);
    int64_t blocks = (ngroups + p.groups - 1) / p.groups;
    if (p.groups == warps) {
        /* Unsplit rows: at most one wave of blocks, each warp looping over groups with the next
         * group's loads in flight. FINCH_CUDA_GEMV_BLOCKS=N caps the grid at N blocks instead, 0
         * gives every warp one group (tests and comparisons). */
        const char *e = getenv("FINCH_CUDA_GEMV_BLOCKS");
        int64_t cap = e && *e ? atoll(e) : slots;
        if (cap > 0 && blocks > cap) blocks = cap;
    }
    if (blocks > INT32_MAX) return 0;
    p.release = release_point();
    gpuError_t e = gpu_launch(gemv_kernel<WT, XT, M, R, U>, dim3((unsigned)blocks), dim3(GEMV_THREADS), 0, st, p);
    return e == gpuSuccess ? 1 : -gpu_check(e, "gemv"); /* launched, or minus the status */
}

template <typename WT, int R, int U>
static int launch_for_x(gpuStream_t st, int sms, int warps, finch_dtype xt, const gemv_params &p)
{
#define GEMV_M(XT)                                                                   \
    (p.m == 1   ? launch<WT, XT, 1, R, U>(st, sms, warps, p)                        \
     : p.m == 2 ? launch<WT, XT, 2, R, U>(st, sms, warps, p)                        \
     : p.m <= 4 ? launch<WT, XT, 4, R, U>(st, sms, warps, p)                        \
                : launch<WT, XT, 8, R, U>(st, sms, warps, p))
    switch (xt) {
    case FINCH_DTYPE_BF16: return GEMV_M(gpu_bf16);
    case FINCH_DTYPE_F16: return GEMV_M(gpu_f16);
    default: return GEMV_M(float);
    }
#undef GEMV_M
}

int gpu_gemv_group(finch_plugin_device *dev, gpuStream_t st, int64_t m, int64_t k, const gpu_operand *a, int count,
                   const gpu_operand *b, const int64_t *n, finch_dtype c_type, void *const *c, const int64_t *ldc, float alpha,
                   float beta, int *done)
{
    *done = 0;
    if (m < 1 || m > GEMV_MAX_M || k < 1 || count < 1 || count > GEMV_MAX_SEGMENTS || a->trans || !gemv_enabled()) return FINCH_OK;
    if (!gpu_is_float_type(a->dtype) || !gpu_is_float_type(c_type) || a->ld < k) return FINCH_OK;
    gemv_params p;
    memset(&p, 0, sizeof p);
    finch_dtype wt = b[0].dtype;
    for (int i = 0; i < count; i++) {
        const gpu_operand *w = &b[i];
        uintptr_t wp = (uintptr_t)w->ptr;
        if (!w->trans || w->dtype != wt || n[i] < 1 || ldc[i] < n[i] || (wp & 15)) return FINCH_OK;
        if (wt == FINCH_DTYPE_NF4) {
            /* Every row starts on a 16-byte boundary of the packed codes, and one absmax covers each 32 codes. */
            if (w->ld != k || k % 32 || w->blocksize != b[0].blocksize || w->blocksize <= 0 || w->blocksize % 32 || !w->absmax ||
                !w->code || w->code != b[0].code)
                return FINCH_OK;
        } else if (!gpu_is_float_type(wt) || (w->ld * (int64_t)gpu_dtype_size(wt)) % 16 || w->ld < k) {
            return FINCH_OK;
        }
        p.seg[i].w = w->ptr;
        p.seg[i].ldw = w->ld;
        p.seg[i].absmax = w->absmax;
        p.seg[i].c = c[i];
        p.seg[i].ldc = ldc[i];
        p.seg[i].row0 = p.n;
        p.n += n[i];
    }
    p.nseg = count;
    p.m = m;
    p.k = k;
    p.a = a->ptr;
    p.lda = a->ld;
    p.a_vec = !((uintptr_t)a->ptr & 15) && (a->ld * (int64_t)gpu_dtype_size(a->dtype)) % 16 == 0;
    p.code = b[0].code;
    p.groups_per_block = b[0].blocksize / 32;
    p.block_shift = -1;
    for (int sh = 0; sh < 63; sh++)
        if ((int64_t)1 << sh == p.groups_per_block) p.block_shift = sh;
    p.c_type = c_type;
    p.alpha = alpha;
    p.beta = beta;
    p.early = 1;
    for (int i = 0; i < count; i++) p.early &= b[i].weight;
    int warps = GEMV_THREADS / (dev->props.warpSize > 0 ? dev->props.warpSize : 32);
    int sms = dev->props.multiProcessorCount > 0 ? dev->props.multiProcessorCount : 1;
    int launched;
    switch (wt) {
    case FINCH_DTYPE_BF16: launched = launch_for_x<gpu_bf16, 1, 4>(st, sms, warps, a->dtype, p); break;
    case FINCH_DTYPE_F16: launched = launch_for_x<gpu_f16, 1, 4>(st, sms, warps, a->dtype, p); break;
    case FINCH_DTYPE_F32: launched = launch_for_x<float, 1, 4>(st, sms, warps, a->dtype, p); break;
    default: launched = launch_for_x<nf4_t, 2, 2>(st, sms, warps, a->dtype, p); break;
    }
    if (launched < 0) return -launched;
    if (!launched) return FINCH_OK;
    *done = 1;
    return FINCH_OK;
}

int gpu_gemv(finch_plugin_device *dev, gpuStream_t st, int64_t m, int64_t n, int64_t k, const gpu_operand *a,
             const gpu_operand *b, finch_dtype c_type, void *c, int64_t ldc, float alpha, float beta, int *done)
{
    return gpu_gemv_group(dev, st, m, k, a, 1, b, &n, c_type, &c, &ldc, alpha, beta, done);
}
