/* Attention over packed variable-length sequences, FlashAttention-2 style: the forward pass keeps
 * a running max and sum per query row (online softmax) and saves lse; it also serves attention over
 * a key/value cache (attention_cache_forward: a sequence's keys sit anywhere in k and v, and its
 * queries are the last of its key positions); the backward pass recomputes
 * the probabilities from lse, one key tile per block, with dK/dV in registers and dQ accumulated
 * in f32 by atomics. Causal, sliding window, softcap, GQA/MQA, head_dim up to 256.
 * This is the portable f32-arithmetic path: tiles live in shared memory as f32. */
#include "gpu_plugin.h"

#include <stdlib.h>
#include <string.h>

#define THREADS 128
#define BLOCK_Q 16            /* query rows per tile; 8 threads per row */
#define TPR (THREADS / BLOCK_Q)

/* Key rows per tile: 32, or fewer past head_dim 128. AMD GPUs give a block 64 KiB of shared
 * memory, and the backward pass at head_dim 256 needs 68 KB with 16 rows (50 KB with 8). */
#if FINCH_GPU_HIP
#define BLOCK_K_WIDE 8
#else
#define BLOCK_K_WIDE 16
#endif
#define BLOCK_K_FOR(maxd) ((maxd) > 128 ? BLOCK_K_WIDE : 32)
template <int MAXD> struct tiles {
    static const int BLOCK_K = BLOCK_K_FOR(MAXD);
};

struct attn_params {
    const int32_t *cu;
    int64_t n_tokens, n_heads, n_kv_heads, head_dim;
    const void *q, *k, *v, *o, *dout;
    int64_t ldq, ldk, ldv, ldo, lddout, lddk, lddv;
    void *out, *dk, *dv;
    float *lse, *delta, *dq_acc;
    float scale, softcap;
    int causal;
    int64_t window;
    const int32_t *kv_start, *kv_len;   /* attention over a cache: each sequence's key rows; else NULL */
    int64_t kv_rows;
    bool vec_q, vec_k, vec_v, vec_do;   /* 16-bit rows that allow 16-byte loads (the tensor-core kernels) */
    bool vec_o;                         /* 16-bit rows of o that allow 4-byte stores */
    bool no_async;                      /* FINCH_CUDA_ATTENTION=sync: no cp.async prefetching */
    bool no_fold;                       /* FINCH_CUDA_ATTENTION=nofold: see mma_online_softmax */
    bool inorder;                       /* FINCH_CUDA_ATTENTION=inorder: see mma_block_order */
    int head_split;                     /* fused backward: blocks a kv head's query heads are split over */
    float *dk_acc, *dv_acc;             /* with head_split > 1: f32 dK, dV [n_tokens][n_kv_heads * head_dim] */
};

/* One sequence's query rows [q_start, q_start + q_len) and key rows [k_start, k_start + k_len); its
 * query i sits at key position off + i (off = 0 without a cache). Key ranges outside the kv rows are
 * clipped rather than read. */
struct seq_span {
    int64_t q_start, q_len, k_start, k_len, off;
};

__device__ __forceinline__ seq_span seq_span_of(const attn_params &p, int64_t seq)
{
    seq_span s;
    s.q_start = p.cu[seq];
    s.q_len = p.cu[seq + 1] - s.q_start;
    if (p.kv_start) {
        s.k_start = p.kv_start[seq] > 0 ? p.kv_start[seq] : 0;
        s.k_len = p.kv_len[seq];
        s.off = s.k_len - s.q_len;
        if (s.k_start + s.k_len > p.kv_rows) s.k_len = p.kv_rows - s.k_start;
        if (s.k_len < 0) s.k_len = 0;
    } else {
        s.k_start = s.q_start;
        s.k_len = s.q_len;
        s.off = 0;
    }
    return s;
}

/* Whether query row i (of the sequence) sees key row j. */
__device__ __forceinline__ bool visible_in(const attn_params &p, const seq_span &s, int64_t i, int64_t j)
{
    int64_t pos = i + s.off;
    return i < s.q_len && j < s.k_len && (!p.causal || j <= pos) && (p.window == 0 || pos - j < p.window);
}

/* The key rows [*lo, *hi) that query rows [q0, q1) of the sequence can see (before tiling). */
__device__ __forceinline__ void key_range(const attn_params &p, const seq_span &s, int64_t q0, int64_t q1, int64_t *lo,
                                          int64_t *hi)
{
    int64_t l = p.window > 0 ? q0 + s.off - p.window + 1 : 0, h = p.causal ? q1 + s.off : s.k_len;
    *lo = l < 0 ? 0 : l;
    *hi = h > s.k_len ? s.k_len : h;
}

__device__ __forceinline__ bool visible(const attn_params &p, int64_t i, int64_t j, int64_t len)
{
    return i < len && j < len && (!p.causal || j <= i) && (p.window == 0 || i - j < p.window);
}

__device__ __forceinline__ float cap_score(const attn_params &p, float s)
{
    return p.softcap > 0.0f ? p.softcap * tanhf(s / p.softcap) : s;
}

/* rows x D elements of a strided head slice into f32 shared memory (row stride D + 1). */
template <typename T>
__device__ __forceinline__ void load_tile(float *dst, const T *src, int64_t ld, int64_t row0, int rows, int64_t valid_rows,
                                          int D)
{
    int Dp = D + 1;
    for (int e = threadIdx.x; e < rows * D; e += THREADS) {
        int r = e / D, d = e % D;
        dst[r * Dp + d] = r < valid_rows ? to_f32(src[(row0 + r) * ld + d]) : 0.0f;
    }
}

template <int MAXD, typename T>
__global__ void __launch_bounds__(THREADS) attention_forward_kernel(attn_params p)
{
    const int BK = tiles<MAXD>::BLOCK_K, D = (int)p.head_dim, Dp = D + 1, NC = MAXD / TPR;
    extern __shared__ float smem[];
    float *qs = smem, *ks = qs + BLOCK_Q * Dp, *vs = ks + BK * Dp, *ps = vs + BK * Dp; /* ps: [BLOCK_Q][BK + 1] */

    int64_t h = blockIdx.y, kvh = h / (p.n_heads / p.n_kv_heads);
    const seq_span sp = seq_span_of(p, blockIdx.z);
    int64_t start = sp.q_start, len = sp.q_len, q0 = (int64_t)blockIdx.x * BLOCK_Q;
    if (q0 >= len) return;
    int r = threadIdx.x / TPR, l = threadIdx.x % TPR;
    int64_t i = q0 + r;

    load_tile(qs, (const T *)p.q + start * p.ldq + h * D, p.ldq, q0, BLOCK_Q, len - q0, D);
    float acc[NC];
#pragma unroll
    for (int c = 0; c < NC; c++) acc[c] = 0.0f;
    float row_max = -INFINITY, row_sum = 0.0f;

    int64_t last_q = q0 + BLOCK_Q < len ? q0 + BLOCK_Q : len, k_lo, k_hi;
    key_range(p, sp, q0, last_q, &k_lo, &k_hi);
    for (int64_t k0 = k_lo - k_lo % BK; k0 < k_hi; k0 += BK) {
        __syncthreads(); /* previous tile fully used */
        load_tile(ks, (const T *)p.k + sp.k_start * p.ldk + kvh * D, p.ldk, k0, BK, sp.k_len - k0, D);
        load_tile(vs, (const T *)p.v + sp.k_start * p.ldv + kvh * D, p.ldv, k0, BK, sp.k_len - k0, D);
        __syncthreads();
        float s[BK / TPR], tile_max = -INFINITY;
#pragma unroll
        for (int u = 0; u < BK / TPR; u++) {
            int jj = l + TPR * u;
            float dot = 0.0f;
            for (int d = 0; d < D; d++) dot = fmaf(qs[r * Dp + d], ks[jj * Dp + d], dot);
            s[u] = visible_in(p, sp, i, k0 + jj) ? cap_score(p, p.scale * dot) : -INFINITY;
            tile_max = fmaxf(tile_max, s[u]);
        }
        for (int o = TPR / 2; o > 0; o >>= 1) tile_max = fmaxf(tile_max, gpu_shfl_xor(tile_max, o));
        float new_max = fmaxf(row_max, tile_max);
        float alpha = new_max == -INFINITY ? 1.0f : expf(row_max - new_max);
        float tile_sum = 0.0f;
#pragma unroll
        for (int u = 0; u < BK / TPR; u++) {
            float e = s[u] == -INFINITY ? 0.0f : expf(s[u] - new_max);
            ps[r * (BK + 1) + l + TPR * u] = e;
            tile_sum += e;
        }
        for (int o = TPR / 2; o > 0; o >>= 1) tile_sum += gpu_shfl_xor(tile_sum, o);
        row_sum = row_sum * alpha + tile_sum;
        row_max = new_max;
        __syncthreads();
#pragma unroll
        for (int c = 0; c < NC; c++) {
            int col = l + TPR * c;
            if (col >= D) break;
            float a = acc[c] * alpha;
            for (int jj = 0; jj < BK; jj++) a = fmaf(ps[r * (BK + 1) + jj], vs[jj * Dp + col], a);
            acc[c] = a;
        }
    }
    if (i >= len) return;
    T *out = (T *)p.out + (start + i) * p.ldo + h * D;
    float inv = row_sum > 0.0f ? 1.0f / row_sum : 0.0f;
#pragma unroll
    for (int c = 0; c < NC; c++) {
        int col = l + TPR * c;
        if (col < D) out[col] = from_f32<T>(acc[c] * inv);
    }
    if (l == 0 && p.lse) p.lse[h * p.n_tokens + start + i] = row_sum > 0.0f ? row_max + logf(row_sum) : -INFINITY;
}

/* delta[h, t] = dout[t, h] . o[t, h]. With shift >= 0 (16-bit rows that allow 16-byte loads, head_dim /
 * 8 = 2^shift lanes of a warp or fewer, fewer than 2^31 threads) 2^shift lanes per (token, head), eight
 * elements each, in 32-bit index arithmetic; else one warp per (token, head). */
template <typename T>
__global__ void attention_delta_kernel(attn_params p, int shift)
{
    if constexpr (sizeof(T) == 2) {
        if (shift >= 0) {
            unsigned gid = blockIdx.x * blockDim.x + threadIdx.x, w = gid >> shift, rows = (unsigned)(p.n_tokens * p.n_heads);
            unsigned lanes = 1u << shift, l = gid & (lanes - 1), heads = (unsigned)p.n_heads;
            unsigned t = w / heads, h = w - t * heads;
            float acc = 0.0f;
            if (w < rows) {
                uint4 ov = *(const uint4 *)((const T *)p.o + (int64_t)t * p.ldo + h * p.head_dim + l * 8);
                uint4 gv = *(const uint4 *)((const T *)p.dout + (int64_t)t * p.lddout + h * p.head_dim + l * 8);
                const T *oe = (const T *)&ov, *ge = (const T *)&gv;
#pragma unroll
                for (int i = 0; i < 8; i++) acc += to_f32(oe[i]) * to_f32(ge[i]);
            }
            for (unsigned off = lanes / 2; off > 0; off >>= 1) acc += gpu_shfl_xor(acc, (int)off);
            if (l == 0 && w < rows) p.delta[(int64_t)h * p.n_tokens + t] = acc;
            return;
        }
    }
    int64_t gid = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    int64_t w = gid / FINCH_WARP_SIZE;
    int lane = threadIdx.x % FINCH_WARP_SIZE;
    if (w >= p.n_tokens * p.n_heads) return;
    int64_t t = w / p.n_heads, h = w % p.n_heads;
    const T *o = (const T *)p.o + t * p.ldo + h * p.head_dim, *g = (const T *)p.dout + t * p.lddout + h * p.head_dim;
    float acc = 0.0f;
    for (int64_t d = lane; d < p.head_dim; d += FINCH_WARP_SIZE) acc += to_f32(o[d]) * to_f32(g[d]);
    for (int off = FINCH_WARP_SIZE / 2; off > 0; off >>= 1) acc += gpu_shfl_xor(acc, off);
    if (lane == 0) p.delta[h * p.n_tokens + t] = acc;
}

template <int MAXD, typename T>
__global__ void __launch_bounds__(THREADS) attention_backward_kernel(attn_params p)
{
    const int BK = tiles<MAXD>::BLOCK_K, D = (int)p.head_dim, Dp = D + 1;
    const int TPK = THREADS / BK, NCK = MAXD / TPK, NCQ = MAXD / TPR;
    extern __shared__ float smem[];
    float *ks = smem, *vs = ks + BK * Dp, *qs = vs + BK * Dp, *dos = qs + BLOCK_Q * Dp;
    float *ps = dos + BLOCK_Q * Dp, *dss = ps + BLOCK_Q * (BK + 1), *row_lse = dss + BLOCK_Q * (BK + 1);
    float *row_delta = row_lse + BLOCK_Q;

    int64_t seq = blockIdx.z, kvh = blockIdx.y, group = p.n_heads / p.n_kv_heads;
    int64_t start = p.cu[seq], len = p.cu[seq + 1] - start, k0 = (int64_t)blockIdx.x * BK;
    if (k0 >= len) return;
    load_tile(ks, (const T *)p.k + start * p.ldk + kvh * D, p.ldk, k0, BK, len - k0, D);
    load_tile(vs, (const T *)p.v + start * p.ldv + kvh * D, p.ldv, k0, BK, len - k0, D);

    int kr = threadIdx.x / TPK, kl = threadIdx.x % TPK;   /* this thread's dK/dV row and columns */
    int qr = threadIdx.x / TPR, ql = threadIdx.x % TPR;   /* its S/P entries and dQ columns */
    float dk[NCK], dv[NCK];
#pragma unroll
    for (int c = 0; c < NCK; c++) dk[c] = dv[c] = 0.0f;

    int64_t last_k = (k0 + BK < len ? k0 + BK : len) - 1;
    int64_t q_lo = p.causal ? k0 : 0, q_hi = p.window > 0 ? last_k + p.window : len;
    if (q_hi > len) q_hi = len;
    for (int64_t h = kvh * group; h < (kvh + 1) * group; h++) {
        for (int64_t q0 = q_lo; q0 < q_hi; q0 += BLOCK_Q) {
            __syncthreads(); /* previous tile fully used (and K/V loaded) */
            load_tile(qs, (const T *)p.q + start * p.ldq + h * D, p.ldq, q0, BLOCK_Q, len - q0, D);
            load_tile(dos, (const T *)p.dout + start * p.lddout + h * D, p.lddout, q0, BLOCK_Q, len - q0, D);
            if (threadIdx.x < BLOCK_Q) {
                int64_t i = q0 + threadIdx.x;
                row_lse[threadIdx.x] = i < len ? p.lse[h * p.n_tokens + start + i] : 0.0f;
                row_delta[threadIdx.x] = i < len ? p.delta[h * p.n_tokens + start + i] : 0.0f;
            }
            __syncthreads();
            int64_t i = q0 + qr;
#pragma unroll
            for (int u = 0; u < BK / TPR; u++) {
                int jj = ql + TPR * u;
                float prob = 0.0f, ds = 0.0f;
                if (visible(p, i, k0 + jj, len)) {
                    float dot = 0.0f, dp = 0.0f;
                    for (int d = 0; d < D; d++) {
                        dot = fmaf(qs[qr * Dp + d], ks[jj * Dp + d], dot);
                        dp = fmaf(dos[qr * Dp + d], vs[jj * Dp + d], dp);
                    }
                    float sc = cap_score(p, p.scale * dot);
                    prob = expf(sc - row_lse[qr]);
                    ds = prob * (dp - row_delta[qr]);
                    if (p.softcap > 0.0f) ds *= 1.0f - (sc / p.softcap) * (sc / p.softcap);
                    ds *= p.scale;
                }
                ps[qr * (BK + 1) + jj] = prob;
                dss[qr * (BK + 1) + jj] = ds;
            }
            __syncthreads();
            /* dV += P^T dO, dK += dS^T Q for this thread's key row. */
#pragma unroll
            for (int c = 0; c < NCK; c++) {
                int col = kl + TPK * c;
                if (col >= D) break;
                float a = dv[c], b = dk[c];
                for (int r = 0; r < BLOCK_Q; r++) {
                    a = fmaf(ps[r * (BK + 1) + kr], dos[r * Dp + col], a);
                    b = fmaf(dss[r * (BK + 1) + kr], qs[r * Dp + col], b);
                }
                dv[c] = a;
                dk[c] = b;
            }
            /* dQ += dS K for this thread's query row. */
            if (i < len) {
                float *dq = p.dq_acc + (start + i) * p.n_heads * D + h * D;
#pragma unroll
                for (int c = 0; c < NCQ; c++) {
                    int col = ql + TPR * c;
                    if (col >= D) break;
                    float a = 0.0f;
                    for (int jj = 0; jj < BK; jj++) a = fmaf(dss[qr * (BK + 1) + jj], ks[jj * Dp + col], a);
                    if (a != 0.0f) atomicAdd(dq + col, a);
                }
            }
        }
    }
    if (kr >= len - k0) return;
    T *dkr = (T *)p.dk + (start + k0 + kr) * p.lddk + kvh * D, *dvr = (T *)p.dv + (start + k0 + kr) * p.lddv + kvh * D;
#pragma unroll
    for (int c = 0; c < NCK; c++) {
        int col = kl + TPK * c;
        if (col >= D) break;
        dkr[col] = from_f32<T>(dk[c]);
        dvr[col] = from_f32<T>(dv[c]);
    }
}

/* dq[t, h*D + d] = dq_acc[t, h*D + d] in the storage type, honouring lddq; blocks take rows, four
 * elements a thread where the f32 rows allow 16-byte loads. */
template <typename T>
__global__ void attention_store_dq_kernel(int64_t n_tokens, int64_t width, const float *acc, T *dq, int64_t lddq)
{
    bool vec = width % 4 == 0 && (uintptr_t)acc % 16 == 0;
    for (int64_t t = blockIdx.x; t < n_tokens; t += gridDim.x) {
        if (vec) {
            for (int64_t c = 4 * threadIdx.x; c < width; c += 4 * blockDim.x) {
                float4 v = *(const float4 *)(acc + t * width + c);
                T *d = dq + t * lddq + c;
                d[0] = from_f32<T>(v.x);
                d[1] = from_f32<T>(v.y);
                d[2] = from_f32<T>(v.z);
                d[3] = from_f32<T>(v.w);
            }
        } else {
            for (int64_t c = threadIdx.x; c < width; c += blockDim.x) dq[t * lddq + c] = from_f32<T>(acc[t * width + c]);
        }
    }
}

/* Rows of a 16-bit tensor at p with row stride ld can be read 16 bytes at a time (head offsets are
 * multiples of 64 elements where the tensor-core kernels run). */
static bool vec16(const void *p, int64_t ld, finch_dtype t)
{
    return gpu_dtype_size(t) == 2 && (uintptr_t)p % 16 == 0 && ld % 8 == 0;
}

/* FINCH_CUDA_ATTENTION=simt: the portable kernels everywhere (the reference path for the
 * tensor-core kernels); =sync: the tensor-core kernels without cp.async prefetching (to measure it);
 * =q64: the tensor-core forward with 64-row query tiles; =nofold: the forward's softmax without the
 * folded scale on interior tiles; =inorder: blocks in index order (see mma_block_order); =fwdk64 /
 * fwdk32: see forward_k64; =dqkernel, bwd64, dqatomic, k128, hsplit2, hsplit4: backward variants (see
 * launch_backward_mma); =nowgmma: the mma.sync forward on sm_90a too, =wgserial: see
 * launch_forward_wgmma; =nowgbwd: the mma.sync backward on sm_90a too (see launch_backward_wgmma).
 * Words may be combined ("bwd64,fwdk64,inorder": the kernels of before s7-attn) except simt, sync, q64 and nofold, which must stand alone. The forward variants of the mma.sync
 * kernel (sync, q64, nofold, fwdk64, fwdk32) also turn the wgmma forward off. */
static const char *attention_mode(void)
{
    static const char *mode = NULL;
    if (!mode) {
        const char *e = getenv("FINCH_CUDA_ATTENTION");
        mode = e ? e : "";
    }
    return mode;
}

static bool simt_forced(void) { return !strcmp(attention_mode(), "simt"); }

#include "attention_mma.cuh"
#include "attention_wgmma.cuh"
#include "attention_wgmma_bwd.cuh"

#if FINCH_GPU_CUDA /* the tensor-core kernels (attention_mma.cuh) are CUDA's */
/* Query rows per block of the tensor-core forward: 64 (FINCH_CUDA_ATTENTION=q64: one m-tile per warp,
 * three blocks an SM) or 128 (two m-tiles per warp, FlashAttention-2's tile). 128 measured faster on
 * an H200 (B2 x T2048, h32/8, d128, causal: 0.388 against 0.429 ms; T8192: 2.35 against 2.73 ms). */
static int forward_mma_rows(void) { return !strcmp(attention_mode(), "q64") ? 64 : 128; }

/* Keys per online-softmax step of the 128-row forward: at head_dim 128, 32 (two steps a 64-key tile:
 * half the score registers, spills 216 -> 56 bytes; B4 x T2048: 223 against 216 TFLOP/s on an H200);
 * at 64, a whole tile (184 against 162-166: the 32-key steps' second read of the query fragments costs
 * more there than the registers they save). FINCH_CUDA_ATTENTION=fwdk64 / fwdk32 force one. */
static bool forward_k64(int64_t head_dim)
{
    if (strstr(attention_mode(), "fwdk64")) return true;
    if (strstr(attention_mode(), "fwdk32")) return false;
    return head_dim != 128;
}

template <int D, int WM, typename T>
static int launch_forward_mma_tiles(finch_plugin_device *dev, gpuStream_t st, attn_params pa, const finch_attention_desc *d)
{
    typedef mma_fwd_tiles<D, WM> L;
    void (*kernel)(attn_params) = attention_forward_mma_kernel<D, WM, T, 64>;
    if constexpr (WM == 2)
        if (!forward_k64(D)) kernel = attention_forward_mma_kernel<D, WM, T, 32>;
    if (L::bytes(true) > dev->props.sharedMemPerBlockOptin) pa.no_async = true;
    size_t smem = L::bytes(!pa.no_async);
    GPU_TRY(gpu_check(gpuFuncSetAttribute(kernel, gpuFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
                      "attention_forward shared memory"));
    dim3 grid((unsigned)((d->max_seqlen + L::BQ - 1) / L::BQ), (unsigned)d->n_heads, (unsigned)d->n_seqs);
    kernel<<<grid, MMA_THREADS, smem, st>>>(pa);
    return GPU_LAUNCHED("attention_forward (tensor cores)");
}

#endif

#if FINCH_GPU_CUDA
/* The wgmma forward (attention_wgmma.cuh) on sm_90a: 128 query rows a block in two warpgroups, 128-key
 * tiles, P V of a tile overlapped with the softmax of the next (FINCH_CUDA_ATTENTION=wgserial: not
 * overlapped). It takes calls without softcap whose q, k, v rows allow 16-byte loads; the rest, and
 * FINCH_CUDA_ATTENTION=nowgmma, go to attention_forward_mma_kernel. */
static bool wgmma_forward_wanted(void)
{
    const char *m = attention_mode();
    return !strstr(m, "nowgmma") && !strstr(m, "fwdk") && strcmp(m, "sync") && strcmp(m, "q64") && strcmp(m, "nofold");
}

/* Whether the kernel the device would run has its wgmma body: the plugin may have been built without
 * sm_90a machine code (the kernel then comes from PTX of another target, with an empty body, a few
 * registers). Read once per kernel. */
template <void (*KERNEL)(attn_params)> static bool wgmma_built(void)
{
    static int built = -1;
    if (built < 0) {
        cudaFuncAttributes a;
        bool ok = cudaFuncGetAttributes(&a, KERNEL) == cudaSuccess;
        if (!ok) (void)cudaGetLastError(); /* the mma.sync kernel runs instead */
        built = ok && a.numRegs >= 64;
    }
    return built > 0;
}

template <int D, typename T>
static int launch_forward_wgmma(finch_plugin_device *dev, gpuStream_t st, const attn_params &p, const finch_attention_desc *d,
                                int *done)
{
    bool overlap = !strstr(attention_mode(), "wgserial");
    void (*kernel)(attn_params) =
        overlap ? attention_forward_wgmma_kernel<D, T, true> : attention_forward_wgmma_kernel<D, T, false>;
    size_t smem = wg_tiles<D>::bytes();
    if (smem > dev->props.sharedMemPerBlockOptin ||
        !(overlap ? wgmma_built<attention_forward_wgmma_kernel<D, T, true>>() : wgmma_built<attention_forward_wgmma_kernel<D, T, false>>()))
        return FINCH_OK;
    *done = 1;
    GPU_TRY(gpu_check(gpuFuncSetAttribute(kernel, gpuFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
                      "attention_forward shared memory"));
    dim3 grid((unsigned)((d->max_seqlen + WG_ROWS - 1) / WG_ROWS), (unsigned)d->n_heads, (unsigned)d->n_seqs);
    kernel<<<grid, WG_THREADS, smem, st>>>(p);
    return GPU_LAUNCHED("attention_forward (wgmma)");
}
#endif

/* The tensor-core forward where it applies (16-bit storage, head_dim 64 or 128, sm_80+): *done = 1. */
template <typename T>
static int launch_forward_mma(finch_plugin_device *dev, gpuStream_t st, const attn_params &p, const finch_attention_desc *d,
                              int *done)
{
    *done = 0;
#if FINCH_GPU_CUDA
    if constexpr (!std::is_same<T, float>::value) {
        if (dev->props.major < 8 || (d->head_dim != 64 && d->head_dim != 128) || simt_forced()) return FINCH_OK;
        if (dev->props.major == 9 && dev->props.minor == 0 && p.softcap == 0.0f && p.vec_q && p.vec_k && p.vec_v &&
            wgmma_forward_wanted()) {
            int rc = d->head_dim == 64 ? launch_forward_wgmma<64, T>(dev, st, p, d, done) : launch_forward_wgmma<128, T>(dev, st, p, d, done);
            GPU_TRY(rc);
            if (*done) return FINCH_OK;
        }
        *done = 1;
        bool wide = forward_mma_rows() == 128;
        if (d->head_dim == 64)
            return wide ? launch_forward_mma_tiles<64, 2, T>(dev, st, p, d) : launch_forward_mma_tiles<64, 1, T>(dev, st, p, d);
        return wide ? launch_forward_mma_tiles<128, 2, T>(dev, st, p, d) : launch_forward_mma_tiles<128, 1, T>(dev, st, p, d);
    }
#endif
    return FINCH_OK;
}

static size_t forward_smem(int maxd, int64_t D)
{
    int bk = BLOCK_K_FOR(maxd);
    return ((size_t)(BLOCK_Q + 2 * bk) * (D + 1) + BLOCK_Q * (bk + 1)) * sizeof(float);
}

static size_t backward_smem(int maxd, int64_t D)
{
    int bk = BLOCK_K_FOR(maxd);
    return ((size_t)(2 * bk + 2 * BLOCK_Q) * (D + 1) + 2 * BLOCK_Q * (bk + 1) + 2 * BLOCK_Q) * sizeof(float);
}

static int check_attention(const finch_attention_desc *d, int backward, const char *entry)
{
    if (d->n_heads <= 0 || d->n_kv_heads <= 0 || d->n_heads % d->n_kv_heads || d->head_dim <= 0 || d->n_seqs < 0 ||
        d->window < 0)
        return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": %s: %lld heads, %lld kv heads, head_dim %lld, window %lld",
                        entry, (long long)d->n_heads, (long long)d->n_kv_heads, (long long)d->head_dim, (long long)d->window);
    if (d->head_dim > 256)
        return gpu_fail(FINCH_ERR_UNSUPPORTED, FINCH_GPU_PLUGIN_NAME ": %s: head_dim %lld > 256", entry, (long long)d->head_dim);
    if (!gpu_is_float_type(d->dtype))
        return gpu_fail(FINCH_ERR_UNSUPPORTED, FINCH_GPU_PLUGIN_NAME ": %s: dtype %s", entry, gpu_dtype_name(d->dtype));
    if (!gpu_ptr(d->cu_seqlens) || !gpu_ptr(d->q) || !gpu_ptr(d->k) || !gpu_ptr(d->v) || !gpu_ptr(d->o) || (backward && !gpu_ptr(d->lse)))
        return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": %s: cu_seqlens, q, k, v, o or lse is absent", entry);
    if (backward && (!gpu_ptr(d->dout) || !gpu_ptr(d->dq) || !gpu_ptr(d->dk) || !gpu_ptr(d->dv)))
        return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": %s: dout, dq, dk or dv is absent", entry);
    if (d->n_seqs > 65535 || (d->max_seqlen + BLOCK_Q - 1) / BLOCK_Q > INT32_MAX || d->n_heads > 65535)
        return gpu_fail(FINCH_ERR_UNSUPPORTED, FINCH_GPU_PLUGIN_NAME ": %s: %lld sequences / %lld heads", entry,
                        (long long)d->n_seqs, (long long)d->n_heads);
    return FINCH_OK;
}

static attn_params make_params(const finch_attention_desc *d)
{
    attn_params p;
    memset(&p, 0, sizeof p);
    p.cu = (const int32_t *)gpu_ptr(d->cu_seqlens);
    p.n_tokens = d->n_tokens;
    p.n_heads = d->n_heads;
    p.n_kv_heads = d->n_kv_heads;
    p.head_dim = d->head_dim;
    p.q = gpu_ptr(d->q); p.ldq = d->ldq;
    p.k = gpu_ptr(d->k); p.ldk = d->ldk;
    p.v = gpu_ptr(d->v); p.ldv = d->ldv;
    p.o = gpu_ptr(d->o); p.ldo = d->ldo;
    p.out = gpu_ptr(d->o);
    p.lse = (float *)gpu_ptr(d->lse);
    p.dout = gpu_ptr(d->dout); p.lddout = d->lddout;
    p.dk = gpu_ptr(d->dk); p.lddk = d->lddk;
    p.dv = gpu_ptr(d->dv); p.lddv = d->lddv;
    p.scale = d->scale;
    p.softcap = d->softcap;
    p.causal = d->causal;
    p.window = d->window;
    p.vec_q = vec16(p.q, d->ldq, d->dtype);
    p.vec_k = vec16(p.k, d->ldk, d->dtype);
    p.vec_v = vec16(p.v, d->ldv, d->dtype);
    p.vec_do = vec16(p.dout, d->lddout, d->dtype);
    p.vec_o = gpu_dtype_size(d->dtype) == 2 && (uintptr_t)p.out % 4 == 0 && d->ldo % 2 == 0;
    p.no_async = !strcmp(attention_mode(), "sync");
    p.no_fold = !strcmp(attention_mode(), "nofold");
    p.inorder = strstr(attention_mode(), "inorder") != NULL;
    p.head_split = 1;
    return p;
}

template <int MAXD, typename T>
static int launch_forward(gpuStream_t st, const attn_params &p, const finch_attention_desc *d)
{
    size_t smem = forward_smem(MAXD, d->head_dim);
    void (*kernel)(attn_params) = attention_forward_kernel<MAXD, T>;
    GPU_TRY(gpu_check(gpuFuncSetAttribute(kernel, gpuFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
                      "attention_forward shared memory"));
    dim3 grid((unsigned)((d->max_seqlen + BLOCK_Q - 1) / BLOCK_Q), (unsigned)d->n_heads, (unsigned)d->n_seqs);
    kernel<<<grid, THREADS, smem, st>>>(p);
    return GPU_LAUNCHED("attention_forward");
}

template <int MAXD, typename T>
static int launch_backward(gpuStream_t st, const attn_params &p, const finch_attention_desc *d)
{
    size_t smem = backward_smem(MAXD, d->head_dim);
    void (*kernel)(attn_params) = attention_backward_kernel<MAXD, T>;
    GPU_TRY(gpu_check(gpuFuncSetAttribute(kernel, gpuFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
                      "attention_backward shared memory"));
    int bk = tiles<MAXD>::BLOCK_K;
    dim3 grid((unsigned)((d->max_seqlen + bk - 1) / bk), (unsigned)d->n_kv_heads, (unsigned)d->n_seqs);
    kernel<<<grid, THREADS, smem, st>>>(p);
    return GPU_LAUNCHED("attention_backward");
}

#define DISPATCH_HEAD_DIM(D, fn, T, ...) \
    ((D) <= 64 ? fn<64, T>(__VA_ARGS__) : (D) <= 128 ? fn<128, T>(__VA_ARGS__) : fn<256, T>(__VA_ARGS__))

extern "C" int plugin_attention_forward(finch_plugin_device *dev, finch_plugin_stream *s, const finch_attention_desc *d)
{
    gpuStream_t st = NULL;
    GPU_TRY(gpu_begin(dev, s, &st));
    GPU_TRY(check_attention(d, 0, "attention_forward"));
    if (d->n_tokens <= 0 || d->n_seqs == 0 || d->max_seqlen <= 0) return FINCH_OK;
    attn_params p = make_params(d);
    int done = 0;
    FINCH_DISPATCH_FLOAT(d->dtype, T, "attention_forward",
        GPU_TRY(launch_forward_mma<T>(dev, st, p, d, &done));
        if (done) return FINCH_OK;
        return DISPATCH_HEAD_DIM(d->head_dim, launch_forward, T, st, p, d));
    return FINCH_OK;
}

/* Whether the tensor-core kernels take this call: 16-bit storage, head_dim 64 or 128, sm_80+. */
static int mma_applies(const finch_plugin_device *dev, const finch_attention_desc *d)
{
#if FINCH_GPU_CUDA
    return d->dtype != FINCH_DTYPE_F32 && (d->head_dim == 64 || d->head_dim == 128) && dev->props.major >= 8 && !simt_forced();
#else
    return 0;
#endif
}

/* An f32 accumulator [n_tokens][width] into dst (row stride ld) in the storage type. */
template <typename T>
static int store_acc(gpuStream_t st, int64_t n_tokens, int64_t width, const float *acc, finch_dptr dst, int64_t ld)
{
    unsigned blocks = (unsigned)(n_tokens < 65535 ? n_tokens : 65535);
    attention_store_dq_kernel<T><<<blocks, 256, 0, st>>>(n_tokens, width, acc, (T *)gpu_ptr(dst), ld);
    return GPU_LAUNCHED("attention_backward gradient store");
}

template <typename T>
static int store_dq(gpuStream_t st, const attn_params &p, const finch_attention_desc *d)
{
    return store_acc<T>(st, d->n_tokens, d->n_heads * d->head_dim, p.dq_acc, d->dq, d->lddq);
}

/* The tensor-core backward: by default attention_bwd_fused_kernel (dK, dV and dQ by atomics in one
 * kernel, FlashAttention-2's partition: see attention_mma.cuh). FINCH_CUDA_ATTENTION=dqkernel: the
 * fused kernel for dK/dV only, dQ from attention_dq_mma_kernel (slower on an H200: B2 x T2048 d128
 * 157.6 against 190-193 TFLOP/s, T8192 194.8 against 235); =bwd64 (or dqatomic / k128): the earlier
 * dK/dV kernel of 16 keys a warp (and the dQ kernel):
 *   dqatomic: that kernel also adds dQ with f32 atomics (five products per score instead of seven).
 *     Measured slower than its second dQ kernel on an H200 (B2 x T2048, h32/8, d128, causal: 1.64
 *     against 1.44 ms; T8192: 9.37 against 8.73 ms).
 *   k128 (may be combined: "dqatomic,k128"): 128-key blocks of 8 warps instead of 64 keys of 4 warps.
 *     Alone slower (1.60 against 1.40 ms); with dqatomic slower at T2048 (1.55 ms), faster at T8192
 *     (8.30 against 8.73). */
static bool mode_has(const char *word) { return strstr(attention_mode(), word) != NULL; }
static bool bwd_earlier(void) { return mode_has("bwd64") || mode_has("dqatomic") || mode_has("k128"); }

/* Whether attention_bwd_fused_kernel takes a tensor-core backward of this head_dim (it needs 109 KiB
 * of shared memory at 64, 173 at 128: sm_80 and sm_90 have them, sm_86/89 not). */
static bool use_fused(const finch_plugin_device *dev, int64_t head_dim)
{
#if FINCH_GPU_CUDA
    if (bwd_earlier()) return false;
    size_t need = head_dim == 64 ? mma_fused_smem<64>::bytes() : mma_fused_smem<128>::bytes();
    return need <= dev->props.sharedMemPerBlockOptin;
#else
    (void)dev; (void)head_dim;
    return false;
#endif
}

/* FINCH_CUDA_ATTENTION=hsplit2 / hsplit4: the fused backward splits each kv head's query heads over 2 / 4
 * blocks, each adding its dK, dV to f32 accumulators with atomics (more, shorter blocks where few
 * (key tile, kv head, sequence) blocks meet many SMs). Measured on an H200 (bf16, h32/8, causal, with
 * the heaviest-first block order): no gain at any benchmark shape (B2 x T2048 d128: 190.6 / 183.0
 * TFLOP/s against 193.1 unsplit; B4 x T2048: 194.4 / 178.5 against 199.0), so off by default. */
static int fused_head_split(const finch_plugin_device *dev, const finch_attention_desc *d)
{
    if (!use_fused(dev, d->head_dim)) return 1;
    int64_t group = d->n_heads / d->n_kv_heads, split = mode_has("hsplit4") ? 4 : mode_has("hsplit2") ? 2 : 1;
    return group % split == 0 ? (int)split : 1;
}

/* Whether the tensor-core backward adds dQ with atomics into an f32 accumulator. */
static bool dq_atomic(const finch_plugin_device *dev, int64_t head_dim)
{
    return use_fused(dev, head_dim) ? !mode_has("dqkernel") : mode_has("dqatomic");
}

#if FINCH_GPU_CUDA
static int dkdv_warps(void) { return mode_has("k128") ? 8 : 4; }

template <int D, typename T>
static int launch_dq_mma(finch_plugin_device *dev, gpuStream_t st, attn_params &p, const finch_attention_desc *d)
{
    typedef mma_bwd_smem<D> L;
    void (*dq)(attn_params, T *, int64_t) = attention_dq_mma_kernel<D, T>;
    size_t s2 = L::dq_bytes(!p.no_async);
    unsigned tiles = (unsigned)((d->max_seqlen + MMA_BLOCK_K - 1) / MMA_BLOCK_K);
    GPU_TRY(gpu_check(gpuFuncSetAttribute(dq, gpuFuncAttributeMaxDynamicSharedMemorySize, (int)s2),
                      "attention_backward shared memory"));
    dq<<<dim3(tiles, (unsigned)d->n_heads, (unsigned)d->n_seqs), MMA_THREADS, s2, st>>>(p, (T *)gpu_ptr(d->dq), d->lddq);
    return GPU_LAUNCHED("attention_backward dq (tensor cores)");
}

/* The wgmma backward (attention_wgmma_bwd.cuh) on sm_90a: calls without softcap whose q, k, v and dout
 * rows allow 16-byte loads, where the fused kernel's dQ accumulator and unsplit heads are in use (the
 * mma.sync variants dqkernel, hsplit2/4, bwd64, dqatomic, k128 and sync keep the mma.sync kernels, as does
 * FINCH_CUDA_ATTENTION=nowgbwd). *done = 1 when it was launched. */
template <int D, typename T>
static int launch_backward_wgmma(finch_plugin_device *dev, gpuStream_t st, attn_params &p, const finch_attention_desc *d, int *done)
{
    *done = 0;
    if (dev->props.major != 9 || dev->props.minor != 0 || p.softcap != 0.0f || !(p.vec_q && p.vec_k && p.vec_v && p.vec_do) ||
        p.head_split != 1 || p.no_async || !use_fused(dev, D) || !dq_atomic(dev, D) || mode_has("nowgbwd"))
        return FINCH_OK;
    size_t smem = wgb_tiles<D>::bytes();
    void (*kernel)(attn_params) = attention_backward_wgmma_kernel<D, T>;
    if (smem > dev->props.sharedMemPerBlockOptin || !wgmma_built<attention_backward_wgmma_kernel<D, T>>()) return FINCH_OK;
    GPU_TRY(gpu_check(gpuFuncSetAttribute(kernel, gpuFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
                      "attention_backward shared memory"));
    unsigned key_tiles = (unsigned)((d->max_seqlen + WGB_KEYS - 1) / WGB_KEYS);
    kernel<<<dim3(key_tiles, (unsigned)d->n_kv_heads, (unsigned)d->n_seqs), WG_THREADS, smem, st>>>(p);
    GPU_TRY(GPU_LAUNCHED("attention_backward (wgmma)"));
    *done = 1;
    return store_dq<T>(st, p, d);
}

template <int D, typename T>
static int launch_backward_mma(finch_plugin_device *dev, gpuStream_t st, attn_params &p, const finch_attention_desc *d)
{
    typedef mma_bwd_smem<D> L;
    int done = 0;
    int rc = launch_backward_wgmma<D, T>(dev, st, p, d, &done);
    if (rc || done) return rc;
    bool atomic = dq_atomic(dev, D);
    if (L::dq_bytes(true) > dev->props.sharedMemPerBlockOptin) p.no_async = true;
    if (use_fused(dev, D)) {
        void (*fused)(attn_params) = atomic ? attention_bwd_fused_kernel<D, true, T> : attention_bwd_fused_kernel<D, false, T>;
        size_t s1 = mma_fused_smem<D>::bytes();
        GPU_TRY(gpu_check(gpuFuncSetAttribute(fused, gpuFuncAttributeMaxDynamicSharedMemorySize, (int)s1),
                          "attention_backward shared memory"));
        unsigned key_tiles = (unsigned)((d->max_seqlen + FUSED_KEYS - 1) / FUSED_KEYS);
        fused<<<dim3(key_tiles, (unsigned)(d->n_kv_heads * p.head_split), (unsigned)d->n_seqs), FUSED_THREADS, s1, st>>>(p);
        GPU_TRY(GPU_LAUNCHED("attention_backward (tensor cores, fused)"));
        if (p.head_split > 1) {
            int64_t width = d->n_kv_heads * D;
            GPU_TRY(store_acc<T>(st, d->n_tokens, width, p.dk_acc, d->dk, d->lddk));
            GPU_TRY(store_acc<T>(st, d->n_tokens, width, p.dv_acc, d->dv, d->lddv));
        }
        return atomic ? store_dq<T>(st, p, d) : launch_dq_mma<D, T>(dev, st, p, d);
    }
    int kw = dkdv_warps(), keys = 16 * kw;
    void (*dkdv)(attn_params) = kw == 8 ? (atomic ? attention_dkdv_mma_kernel<D, 8, true, T> : attention_dkdv_mma_kernel<D, 8, false, T>)
                                        : (atomic ? attention_dkdv_mma_kernel<D, 4, true, T> : attention_dkdv_mma_kernel<D, 4, false, T>);
    if (L::dkdv_bytes(true, atomic, keys) > dev->props.sharedMemPerBlockOptin) p.no_async = true;
    size_t s1 = L::dkdv_bytes(!p.no_async, atomic, keys);
    GPU_TRY(gpu_check(gpuFuncSetAttribute(dkdv, gpuFuncAttributeMaxDynamicSharedMemorySize, (int)s1),
                      "attention_backward shared memory"));
    unsigned key_tiles = (unsigned)((d->max_seqlen + keys - 1) / keys);
    dkdv<<<dim3(key_tiles, (unsigned)d->n_kv_heads, (unsigned)d->n_seqs), 32 * kw, s1, st>>>(p);
    GPU_TRY(GPU_LAUNCHED("attention_backward dk/dv (tensor cores)"));
    return atomic ? store_dq<T>(st, p, d) : launch_dq_mma<D, T>(dev, st, p, d);
}

#endif

template <typename T>
static int backward_typed(finch_plugin_device *dev, gpuStream_t st, attn_params &p, const finch_attention_desc *d, int mma)
{
    int64_t rows = d->n_tokens * d->n_heads, lanes = d->head_dim / 8;
    int shift = 0;
    while ((1 << shift) < lanes) shift++;
    if (!(gpu_dtype_size(d->dtype) == 2 && vec16(p.o, d->ldo, d->dtype) && p.vec_do && d->head_dim % 8 == 0 &&
          lanes <= dev->props.warpSize && lanes == (1 << shift) && rows * lanes < INT32_MAX))
        shift = -1;
    int64_t threads = rows * (shift >= 0 ? lanes : dev->props.warpSize);
    attention_delta_kernel<T><<<(unsigned)((threads + 255) / 256), 256, 0, st>>>(p, shift);
    GPU_TRY(GPU_LAUNCHED("attention_backward delta"));
#if FINCH_GPU_CUDA
    if constexpr (!std::is_same<T, float>::value) {
        if (mma) return d->head_dim == 64 ? launch_backward_mma<64, T>(dev, st, p, d) : launch_backward_mma<128, T>(dev, st, p, d);
    }
#endif
    (void)mma;
    GPU_TRY(DISPATCH_HEAD_DIM(d->head_dim, launch_backward, T, st, p, d));
    return store_dq<T>(st, p, d);
}

extern "C" int plugin_attention_backward(finch_plugin_device *dev, finch_plugin_stream *s, const finch_attention_desc *d)
{
    gpuStream_t st = NULL;
    GPU_TRY(gpu_begin(dev, s, &st));
    GPU_TRY(check_attention(d, 1, "attention_backward"));
    if (d->n_tokens <= 0 || d->n_seqs == 0 || d->max_seqlen <= 0) return FINCH_OK;
    attn_params p = make_params(d);
    int mma = mma_applies(dev, d);
    float *scratch = NULL;
    /* scratch: delta, then the f32 accumulators that need zeros: dQ (atomic dQ), dK and dV (head split);
     * every part a multiple of 4 floats, so each starts 16-byte aligned */
    p.head_split = mma ? fused_head_split(dev, d) : 1;
    size_t delta_n = ((size_t)d->n_heads * d->n_tokens + 3) / 4 * 4;
    size_t acc_n = mma && !dq_atomic(dev, d->head_dim) ? 0 : (size_t)d->n_tokens * d->n_heads * d->head_dim;
    size_t kv_n = p.head_split > 1 ? (size_t)d->n_tokens * d->n_kv_heads * d->head_dim : 0;
    GPU_TRY(gpu_scratch(st, (delta_n + acc_n + 2 * kv_n) * sizeof(float), (void **)&scratch, "attention_backward scratch"));
    p.delta = scratch;
    p.dq_acc = scratch + delta_n;
    p.dk_acc = kv_n ? p.dq_acc + acc_n : NULL;
    p.dv_acc = kv_n ? p.dk_acc + kv_n : NULL;
    int rc = acc_n + kv_n ? gpu_check(gpuMemsetAsync(p.dq_acc, 0, (acc_n + 2 * kv_n) * sizeof(float), st), "attention_backward")
                          : FINCH_OK;
    if (!rc) {
        switch (d->dtype) {
        case FINCH_DTYPE_F32: rc = backward_typed<float>(dev, st, p, d, mma); break;
        case FINCH_DTYPE_BF16: rc = backward_typed<gpu_bf16>(dev, st, p, d, mma); break;
        default: rc = backward_typed<gpu_f16>(dev, st, p, d, mma); break;
        }
    }
    gpu_scratch_free(st, scratch);
    return rc;
}

/* Attention of new query rows over a key/value cache: the forward kernels with each sequence's key
 * rows taken from kv_start/kv_len (see seq_span_of). */
extern "C" int plugin_attention_cache_forward(finch_plugin_device *dev, finch_plugin_stream *s,
                                              const finch_attention_cache_desc *c)
{
    gpuStream_t st = NULL;
    GPU_TRY(gpu_begin(dev, s, &st));
    if (!c) return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": attention_cache_forward: descriptor is NULL");
    finch_attention_desc d;
    memset(&d, 0, sizeof d);
    d.n_tokens = c->n_tokens;
    d.n_seqs = c->n_seqs;
    d.max_seqlen = c->max_q_len;
    d.cu_seqlens = c->cu_seqlens_q;
    d.n_heads = c->n_heads;
    d.n_kv_heads = c->n_kv_heads;
    d.head_dim = c->head_dim;
    d.dtype = c->dtype;
    d.q = c->q; d.ldq = c->ldq;
    d.k = c->k; d.ldk = c->ldk;
    d.v = c->v; d.ldv = c->ldv;
    d.o = c->o; d.ldo = c->ldo;
    d.lse = c->lse;
    d.scale = c->scale;
    d.softcap = c->softcap;
    d.causal = c->causal;
    d.window = c->window;
    GPU_TRY(check_attention(&d, 0, "attention_cache_forward"));
    if (!gpu_ptr(c->kv_start) || !gpu_ptr(c->kv_len) || c->kv_rows < 0 || c->max_kv_len < 0)
        return gpu_fail(FINCH_ERR_INVALID_ARGUMENT,
                        FINCH_GPU_PLUGIN_NAME ": attention_cache_forward: kv_start or kv_len absent, or kv_rows %lld / max_kv_len %lld < 0",
                        (long long)c->kv_rows, (long long)c->max_kv_len);
    if (d.n_tokens <= 0 || d.n_seqs == 0 || d.max_seqlen <= 0) return FINCH_OK;
    attn_params p = make_params(&d);
    p.kv_start = (const int32_t *)gpu_ptr(c->kv_start);
    p.kv_len = (const int32_t *)gpu_ptr(c->kv_len);
    p.kv_rows = c->kv_rows;
    int done = 0;
    FINCH_DISPATCH_FLOAT(d.dtype, T, "attention_cache_forward",
        GPU_TRY(launch_forward_mma<T>(dev, st, p, &d, &done));
        if (done) return FINCH_OK;
        return DISPATCH_HEAD_DIM(d.head_dim, launch_forward, T, st, p, &d));
    return FINCH_OK;
}
