/* Tensor-core attention for 16-bit storage on sm_80+ (a CUDA-only fast path; the portable kernels in
 * attention.cu cover everything else), FlashAttention-2 style on mma.sync m16n8k16 with f32
 * accumulation. Fragment layouts are those of the PTX ISA: g = lane / 4 is the row (and B column),
 * t = lane % 4 picks the element pair. All operands come from padded row-major shared-memory tiles
 * through ldmatrix (row stride D + 8 elements: the eight 16-byte rows of an 8x8 matrix fall in
 * distinct banks); those that run down a column of their tile with ldmatrix.trans.
 *
 * Forward: 4 warps, each owning 16 * WM query rows of a 64 * WM-row tile, loop over 64-key tiles
 * (K and V double-buffered with cp.async): S = Q K^T, the online softmax on the S accumulators in
 * registers (base 2: scores are scaled by scale * log2(e) once, then exp2), and P fed back as the A
 * operand of O += P V without leaving registers. With WM = 1 the query fragments stay in registers
 * and Q is staged in the second K buffer (free until the first prefetch), so three blocks fit an
 * SM; with WM = 2 (FlashAttention-2's 128-row tiles) each K/V fragment serves two m-tiles and Q
 * stays in shared memory. Tiles that need no mask (inside the sequence, wholly below the diagonal,
 * no window) and calls without softcap run code without those steps. */
#ifndef FINCH_GPU_ATTENTION_MMA_CUH
#define FINCH_GPU_ATTENTION_MMA_CUH

#if FINCH_GPU_CUDA
#include <type_traits>

#define MMA_BLOCK_K 64
#define MMA_THREADS 128
#define MMA_LOG2E 1.4426950408889634f
#define MMA_LN2 0.6931471805599453f

template <typename T> __device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <> __device__ __forceinline__ uint32_t pack2<gpu_bf16>(float lo, float hi)
{
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *(uint32_t *)&v;
}
template <> __device__ __forceinline__ uint32_t pack2<gpu_f16>(float lo, float hi)
{
    __half2 v = __floats2half2_rn(lo, hi);
    return *(uint32_t *)&v;
}

/* d += a b for one 16x8x16 tile. */
template <typename T>
__device__ __forceinline__ void mma16816(float d[4], const uint32_t a[4], uint32_t b0, uint32_t b1)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    if constexpr (std::is_same<T, gpu_bf16>::value)
        asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    else
        asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

/* d0 += a b[0..1], d1 += a b[2..3]: one A fragment against the two n-tiles of an x4 ldmatrix of B. */
template <typename T>
__device__ __forceinline__ void mma16816_pair(float d0[4], float d1[4], const uint32_t a[4], const uint32_t b[4])
{
    mma16816<T>(d0, a, b[0], b[1]);
    mma16816<T>(d1, a, b[2], b[3]);
}

/* 2^x (MUFU.EX2; -inf gives 0). */
__device__ __forceinline__ float exp2_fast(float x)
{
#if defined(__CUDA_ARCH__)
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
#else
    return exp2f(x);
#endif
}

/* Four 8x8 matrices of 16-bit elements from shared memory; lane l supplies the address of row
 * l % 8 of matrix l / 8. trans: each thread receives a column pair instead of a row pair. */
template <bool TRANS> __device__ __forceinline__ void ldsm_x4(uint32_t r[4], const void *p)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
    if (TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(a));
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(a));
#else
    (void)p;
    r[0] = r[1] = r[2] = r[3] = 0;
#endif
}

/* The A fragment of rows row0 .. row0 + 15, columns k0 .. k0 + 15 of a row-major tile (stride ld). */
template <typename T> __device__ __forceinline__ void ldsm_a(uint32_t a[4], const T *tile, int ld, int row0, int k0)
{
    int lane = threadIdx.x % 32;
    ldsm_x4<false>(a, tile + (row0 + (lane & 15)) * ld + k0 + (lane >> 4) * 8);
}

/* B fragments of two n-tiles (n0 .. n0 + 7: b[0], b[1]; n0 + 8 .. n0 + 15: b[2], b[3]) over
 * k0 .. k0 + 15, from a tile stored n-major ([n][k], e.g. K in S = Q K^T). */
template <typename T> __device__ __forceinline__ void ldsm_b(uint32_t b[4], const T *tile, int ld, int n0, int k0)
{
    int lane = threadIdx.x % 32;
    ldsm_x4<false>(b, tile + (n0 + (lane & 7) + ((lane >> 4) << 3)) * ld + k0 + ((lane >> 3) & 1) * 8);
}

/* The same from a tile stored k-major ([k][n], e.g. V in O += P V): ldmatrix.trans. */
template <typename T> __device__ __forceinline__ void ldsm_b_trans(uint32_t b[4], const T *tile, int ld, int k0, int n0)
{
    int lane = threadIdx.x % 32;
    ldsm_x4<true>(b, tile + (k0 + (lane & 15)) * ld + n0 + (lane >> 4) * 8);
}

/* rows x D of a head slice (rows row0.. of src, row stride src_ld; rows at or past len read as 0)
 * into shared memory, row-major with row stride ld. vec: src and src_ld allow 16-byte loads. */
template <int D, typename T, int NT = MMA_THREADS>
__device__ __forceinline__ void mma_load_rows(T *dst, int ld, const T *src, int64_t src_ld, int64_t row0, int rows, int64_t len,
                                              bool vec)
{
    if (vec) {
        const int C = D / 8;
        for (int e = threadIdx.x; e < rows * C; e += NT) {
            int r = e / C, c = (e % C) * 8;
            uint4 v = make_uint4(0u, 0u, 0u, 0u);
            if (row0 + r < len) v = *(const uint4 *)(src + (row0 + r) * src_ld + c);
            *(uint4 *)(dst + r * ld + c) = v;
        }
        return;
    }
    for (int e = threadIdx.x; e < rows * D; e += NT) {
        int r = e / D, c = e % D;
        dst[r * ld + c] = row0 + r < len ? src[(row0 + r) * src_ld + c] : from_f32<T>(0.0f);
    }
}

/* 16 bytes global -> shared without passing through registers (cp.async, sm_80+); valid = false
 * zero-fills the destination and reads nothing (src must still be a mapped address). */
__device__ __forceinline__ void cp_async16(void *dst, const void *src, bool valid)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    uint32_t d = (uint32_t)__cvta_generic_to_shared(dst);
    int n = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(n));
#else
    (void)dst; (void)src; (void)valid;
#endif
}

__device__ __forceinline__ void cp_async_commit(void)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}

/* Waits until at most n of this thread's committed groups are still in flight. */
template <int N> __device__ __forceinline__ void cp_async_wait(void)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

/* mma_load_rows for vector-loadable rows, queued with cp.async (the caller commits and waits), so
 * the next tile streams in while the current one is used. */
template <int D, typename T, int NT = MMA_THREADS>
__device__ __forceinline__ void mma_load_rows_async(T *dst, int ld, const T *src, int64_t src_ld, int64_t row0, int rows,
                                                    int64_t len)
{
    const int C = D / 8;
    for (int e = threadIdx.x; e < rows * C; e += NT) {
        int r = e / C, c = (e % C) * 8;
        bool ok = row0 + r < len;
        cp_async16(dst + r * ld + c, ok ? src + (row0 + r) * src_ld + c : src, ok);
    }
}

/* The (head, query tile) a backward block visits after (h, q0): the next tile of rows tile wide in
 * [q_lo, q_hi), else the next head's first. */
__device__ __forceinline__ void mma_bwd_next_tile(int64_t h, int q0, int tile, int q_lo, int q_hi, int64_t *nh, int *nq)
{
    *nh = h;
    *nq = q0 + tile;
    if (*nq >= q_hi) {
        ++*nh;
        *nq = q_lo;
    }
}

/* The queries of a sequence of len tokens that see keys [k0, k0 + bk) (causal, window): [*lo, *hi). */
__device__ __forceinline__ void mma_bwd_query_range(const attn_params &p, int k0, int bk, int len, int *lo, int *hi)
{
    int last_k = (k0 + bk < len ? k0 + bk : len) - 1;
    *lo = p.causal ? k0 : 0;
    int64_t hi64 = p.window > 0 ? last_k + p.window : len;
    *hi = hi64 > len ? len : (int)hi64;
}

/* Query row q0 + threadIdx.x of head h, when `want`, the thread is among the first `rows` and the row
 * is inside the sequence: its lse (base 2) and delta; else 0. */
__device__ __forceinline__ void mma_bwd_row_stats(const attn_params &p, bool want, int64_t h, int q0, int rows, int len,
                                                  int64_t start, float &lse, float &delta)
{
    int i = q0 + threadIdx.x;
    bool in = want && (int)threadIdx.x < rows && i < len;
    lse = in ? p.lse[h * p.n_tokens + start + i] * MMA_LOG2E : 0.0f;
    delta = in ? p.delta[h * p.n_tokens + start + i] : 0.0f;
}

/* A backward block's first (query head h, rows from q0) tiles: Q and dO start loading (cp.async, when
 * async) and the thread's row q0 + threadIdx.x (of the first `rows`) gets its lse (base 2) and delta. */
template <int D, typename T, int NT>
__device__ __forceinline__ void mma_bwd_first_tiles(const attn_params &p, bool async, T *q_bufs, T *do_bufs, int ld,
                                                    const T *qbase, const T *dobase, int64_t h, int q0, int rows, int len,
                                                    int64_t start, float &lse, float &delta)
{
    if (async) {
        mma_load_rows_async<D, T, NT>(q_bufs, ld, qbase + h * D, p.ldq, q0, rows, len);
        mma_load_rows_async<D, T, NT>(do_bufs, ld, dobase + h * D, p.lddout, q0, rows, len);
    }
    cp_async_commit();
    mma_bwd_row_stats(p, true, h, q0, rows, len, start, lse, delta);
}

/* Streamed tiles get two buffers each (the next tile loading with cp.async while the current one is
 * in use) unless p.no_async, which the launch sets when the device cannot give the block that much
 * shared memory (or FINCH_CUDA_ATTENTION=sync); a kernel whose operands do not allow 16-byte loads
 * uses the first buffer only, loaded synchronously. */
__device__ __forceinline__ int mma_nbuf(const attn_params &p) { return p.no_async ? 1 : 2; }

/* Which tile (x), head (y) and sequence (z) a block takes. Blocks start roughly in the order of their
 * linear index. Under a causal mask the tiles of a (head, sequence) pair differ in work (later query
 * tiles see more keys; earlier key tiles more queries), so the linear index walks the tiles heaviest
 * first across all pairs: the last waves are made of light tiles (FINCH_CUDA_ATTENTION=inorder: each
 * pair's tiles in turn, the earlier order). heavy_low: tile 0 is the heaviest (the backward's key
 * tiles), else the last one is. */
struct mma_block {
    unsigned x, y, z;
};

__device__ __forceinline__ mma_block mma_block_order(const attn_params &p, bool heavy_low)
{
    mma_block b = {blockIdx.x, blockIdx.y, blockIdx.z};
    if (!p.causal) return b;
    if (p.inorder) {
        if (!heavy_low) b.x = gridDim.x - 1 - blockIdx.x;
        return b;
    }
    unsigned pairs = gridDim.y * gridDim.z;
    unsigned linear = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    unsigned rank = linear / pairs, pair = linear % pairs;
    b.x = heavy_low ? rank : gridDim.x - 1 - rank;
    b.y = pair % gridDim.y;
    b.z = pair / gridDim.y;
    return b;
}

/* A forward block's query tile (blocks heaviest first, mma_block_order): its sequence's rows
 * (seq_span_of), head h and its kv head, the tile's first query row q0 (rows a tile). */
struct mma_fwd_tile {
    seq_span sp;
    int64_t h, kvh;
    int q0;
};

__device__ __forceinline__ mma_fwd_tile mma_forward_tile(const attn_params &p, int rows)
{
    const mma_block blk = mma_block_order(p, false);
    mma_fwd_tile f = {seq_span_of(p, blk.z), (int64_t)blk.y, (int64_t)blk.y / (p.n_heads / p.n_kv_heads), (int)blk.x * rows};
    return f;
}

/* Whether query row i of a sequence (at key position i + off) sees key j; len and klen are the
 * sequence's query and key counts. 32-bit: one sequence has fewer than 2^31 rows. */
__device__ __forceinline__ bool mma_visible(const attn_params &p, int i, int j, int len, int klen, int off)
{
    int pos = i + off;
    return i < len && j < klen && (!p.causal || j <= pos) && (p.window == 0 || pos - j < p.window);
}

/* A raw score q.k in base-2 units: scale * log2(e) * q.k, or with softcap
 * softcap * tanh(scale * q.k / softcap) * log2(e). */
template <bool CAP> __device__ __forceinline__ float mma_score2(const attn_params &p, float dot)
{
    if (CAP) return p.softcap * tanhf(dot * p.scale / p.softcap) * MMA_LOG2E;
    return dot * (p.scale * MMA_LOG2E);
}

/* The loop over key tiles shared by the forward and dQ kernels: at the top of each iteration the
 * tile k0 is in (kt, vt). */
template <int D, typename T> struct kv_pipeline {
    T *ks, *vs;                    /* [2][MMA_BLOCK_K][ld] each */
    int ld;
    const T *kp, *vp;
    int64_t ldk, ldv, len, hi;
    bool async, vk, vv;
    int buf;

    __device__ __forceinline__ void start(int64_t k0)
    {
        buf = 0;
        if (async && k0 < hi) {
            mma_load_rows_async<D, T>(ks, ld, kp, ldk, k0, MMA_BLOCK_K, len);
            mma_load_rows_async<D, T>(vs, ld, vp, ldv, k0, MMA_BLOCK_K, len);
        }
        cp_async_commit();
    }
    /* Makes tile k0 resident in (*kt, *vt) for every thread of the block. */
    __device__ __forceinline__ void acquire(int64_t k0, T **kt, T **vt)
    {
        __syncthreads(); /* the buffer the next tile goes to (used by the previous iteration) is free */
        if (async) {
            T *nk = ks + (buf ^ 1) * MMA_BLOCK_K * ld, *nv = vs + (buf ^ 1) * MMA_BLOCK_K * ld;
            if (k0 + MMA_BLOCK_K < hi) {
                mma_load_rows_async<D, T>(nk, ld, kp, ldk, k0 + MMA_BLOCK_K, MMA_BLOCK_K, len);
                mma_load_rows_async<D, T>(nv, ld, vp, ldv, k0 + MMA_BLOCK_K, MMA_BLOCK_K, len);
            }
            cp_async_commit();
            cp_async_wait<1>(); /* tile k0's group has landed */
        } else {
            mma_load_rows<D, T>(ks, ld, kp, ldk, k0, MMA_BLOCK_K, len, vk);
            mma_load_rows<D, T>(vs, ld, vp, ldv, k0, MMA_BLOCK_K, len, vv);
        }
        __syncthreads();
        *kt = ks + buf * MMA_BLOCK_K * ld;
        *vt = vs + buf * MMA_BLOCK_K * ld;
        if (async) buf ^= 1;
    }
};

template <int D, int WM> struct mma_fwd_tiles {
    static const int BQ = 64 * WM, LD = D + 8, TILE = MMA_BLOCK_K * LD;
    /* WM = 1: K [2][64][LD] (Q staged in the second), V [nbuf][64][LD]; WM = 2: Q [BQ][LD], K and V
     * [nbuf][64][LD] each. */
    static size_t bytes(bool async)
    {
        int nbuf = async ? 2 : 1;
        return (size_t)(WM == 1 ? (2 + nbuf) * TILE : BQ * LD + 2 * nbuf * TILE) * 2;
    }
};

/* The online softmax step for one key tile: s holds this thread's raw scores q.k of rows
 * (16 m + g, 16 m + g + 8) of its warp's query rows (first query row row0 of the sequence) and keys
 * k0 + 8 nt + 2 t + (0, 1); on return s holds the unnormalised probabilities, and the running max
 * mx (base-2 units), partial row sums l (this thread's columns) and o have been rescaled.
 * FOLD (no mask, no softcap, scale > 0): the max is taken over the raw scores and the scaling folds
 * into the exponent's fma. */
template <bool MASK, bool CAP, bool FOLD, int WM, int D, int NT>
__device__ __forceinline__ void mma_online_softmax(const attn_params &p, float (&s)[WM][NT][4],
                                                   float (&o)[WM][D / 8][4], float (&mx)[2 * WM], float (&l)[2 * WM], int row0,
                                                   int k0, int len, int klen, int off)
{
    int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
    for (int m = 0; m < WM; m++)
#pragma unroll
        for (int r = 0; r < 2; r++) {
            int i = row0 + 16 * m + g + 8 * r;
            float tile_max = -INFINITY, c2 = p.scale * MMA_LOG2E;
#pragma unroll
            for (int nt = 0; nt < NT; nt++)
#pragma unroll
                for (int c = 0; c < 2; c++) {
                    if (FOLD) {
                        tile_max = fmaxf(tile_max, s[m][nt][2 * r + c]);
                        continue;
                    }
                    float x = mma_score2<CAP>(p, s[m][nt][2 * r + c]);
                    if (MASK && !mma_visible(p, i, k0 + nt * 8 + t * 2 + c, len, klen, off)) x = -INFINITY;
                    s[m][nt][2 * r + c] = x;
                    tile_max = fmaxf(tile_max, x);
                }
            if (FOLD) tile_max *= c2;
            tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
            tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
            float new_max = fmaxf(mx[2 * m + r], tile_max);
            float base = new_max == -INFINITY ? 0.0f : new_max; /* a row with nothing visible yet stays 0 */
            float alpha = exp2_fast(mx[2 * m + r] - base), sum = 0.0f;
            mx[2 * m + r] = new_max;
#pragma unroll
            for (int nt = 0; nt < NT; nt++)
#pragma unroll
                for (int c = 0; c < 2; c++) {
                    float e = FOLD ? exp2_fast(fmaf(s[m][nt][2 * r + c], c2, -base)) : exp2_fast(s[m][nt][2 * r + c] - base);
                    s[m][nt][2 * r + c] = e;
                    sum += e;
                }
            l[2 * m + r] = l[2 * m + r] * alpha + sum;
#pragma unroll
            for (int nd = 0; nd < D / 8; nd++) {
                o[m][nd][2 * r] *= alpha;
                o[m][nd][2 * r + 1] *= alpha;
            }
        }
}

/* KS: keys per online-softmax step, 64 (a whole key tile) or 32 (two steps a tile: half the score
 * registers, fewer spills, at the price of reading the query fragments twice). */
template <int D, int WM, typename T, int KS>
__global__ void __launch_bounds__(MMA_THREADS, WM == 1 ? 3 : 2) attention_forward_mma_kernel(attn_params p)
{
    typedef mma_fwd_tiles<D, WM> L;
    const int LD = L::LD, BQ = L::BQ;
    extern __shared__ float smem_raw[];
    T *qs, *k_bufs, *v_bufs;
    if (WM == 1) {
        k_bufs = (T *)smem_raw;
        qs = k_bufs + L::TILE;
        v_bufs = k_bufs + 2 * L::TILE;
    } else {
        qs = (T *)smem_raw;
        k_bufs = qs + BQ * LD;
        v_bufs = k_bufs + mma_nbuf(p) * L::TILE;
    }

    const mma_fwd_tile f = mma_forward_tile(p, BQ);
    const seq_span &sp = f.sp;
    int64_t h = f.h, kvh = f.kvh, start = sp.q_start;
    int len = (int)sp.q_len, klen = (int)sp.k_len, off = (int)sp.off, q0 = f.q0;
    if (q0 >= len) return;
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    int r0 = warp * 16 * WM; /* this warp's first row in the tile */

    int last_q = q0 + BQ < len ? q0 + BQ : len;
    int64_t k_lo64, k_hi64;
    key_range(p, sp, q0, last_q, &k_lo64, &k_hi64);
    int k_first = (int)k_lo64 - (int)k_lo64 % MMA_BLOCK_K, k_hi = (int)k_hi64;
    const T *kp = (const T *)p.k + sp.k_start * p.ldk + kvh * D, *vp = (const T *)p.v + sp.k_start * p.ldv + kvh * D;
    kv_pipeline<D, T> pipe = {k_bufs, v_bufs, LD, kp, vp, p.ldk, p.ldv, klen, k_hi, p.vec_k && p.vec_v && !p.no_async, p.vec_k, p.vec_v, 0};
    pipe.start(k_first);
    mma_load_rows<D, T>(qs, LD, (const T *)p.q + start * p.ldq + h * D, p.ldq, q0, BQ, len, p.vec_q);
    __syncthreads();
    uint32_t qf[WM == 1 ? D / 16 : 1][4];
    if (WM == 1) {
#pragma unroll
        for (int kk = 0; kk < (WM == 1 ? D / 16 : 0); kk++) ldsm_a<T>(qf[kk], qs, LD, r0, kk * 16);
    }

    float o[WM][D / 8][4], mx[2 * WM], l[2 * WM];
#pragma unroll
    for (int m = 0; m < WM; m++) {
#pragma unroll
        for (int nd = 0; nd < D / 8; nd++) o[m][nd][0] = o[m][nd][1] = o[m][nd][2] = o[m][nd][3] = 0.0f;
        mx[2 * m] = mx[2 * m + 1] = -INFINITY;
        l[2 * m] = l[2 * m + 1] = 0.0f;
    }
    /* Tiles wholly below the diagonal (and inside the sequence, no window) need no mask. */
    bool rows_full = q0 + BQ <= len && p.window == 0, cap = p.softcap > 0.0f, fold = p.scale > 0.0f && !p.no_fold;
    for (int k0 = k_first; k0 < k_hi; k0 += MMA_BLOCK_K) {
        T *ks, *vs;
        pipe.acquire(k0, &ks, &vs);
#pragma unroll
        for (int kh = 0; kh < MMA_BLOCK_K; kh += KS) {
            /* a step whose keys all come after the warp's last query row is wholly masked: nothing to add */
            if (p.causal && k0 + kh > q0 + off + r0 + 16 * WM - 1) continue;
            const int NT = KS / 8;
            float s[WM][NT][4];
#pragma unroll
            for (int m = 0; m < WM; m++)
#pragma unroll
                for (int nt = 0; nt < NT; nt++) s[m][nt][0] = s[m][nt][1] = s[m][nt][2] = s[m][nt][3] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++) {
                uint32_t qa[WM][4];
#pragma unroll
                for (int m = 0; m < WM; m++) {
                    if (WM == 1) {
#pragma unroll
                        for (int e = 0; e < 4; e++) qa[m][e] = qf[WM == 1 ? kk : 0][e];
                    } else {
                        ldsm_a<T>(qa[m], qs, LD, r0 + 16 * m, kk * 16);
                    }
                }
#pragma unroll
                for (int np = 0; np < NT / 2; np++) {
                    uint32_t b[4];
                    ldsm_b<T>(b, ks, LD, kh + np * 16, kk * 16);
#pragma unroll
                    for (int m = 0; m < WM; m++) {
                        mma16816_pair<T>(s[m][2 * np], s[m][2 * np + 1], qa[m], b);
                    }
                }
            }
            int kb = k0 + kh;
            bool full = rows_full && kb + KS <= klen && (!p.causal || kb + KS - 1 <= q0 + off);
            int row0 = q0 + r0;
            if (full) {
                if (cap) mma_online_softmax<false, true, false, WM, D, NT>(p, s, o, mx, l, row0, kb, len, klen, off);
                else if (fold) mma_online_softmax<false, false, true, WM, D, NT>(p, s, o, mx, l, row0, kb, len, klen, off);
                else mma_online_softmax<false, false, false, WM, D, NT>(p, s, o, mx, l, row0, kb, len, klen, off);
            } else {
                if (cap) mma_online_softmax<true, true, false, WM, D, NT>(p, s, o, mx, l, row0, kb, len, klen, off);
                else mma_online_softmax<true, false, false, WM, D, NT>(p, s, o, mx, l, row0, kb, len, klen, off);
            }
#pragma unroll
            for (int kk = 0; kk < NT / 2; kk++) {
                uint32_t pa[WM][4];
#pragma unroll
                for (int m = 0; m < WM; m++) {
                    pa[m][0] = pack2<T>(s[m][2 * kk][0], s[m][2 * kk][1]);
                    pa[m][1] = pack2<T>(s[m][2 * kk][2], s[m][2 * kk][3]);
                    pa[m][2] = pack2<T>(s[m][2 * kk + 1][0], s[m][2 * kk + 1][1]);
                    pa[m][3] = pack2<T>(s[m][2 * kk + 1][2], s[m][2 * kk + 1][3]);
                }
#pragma unroll
                for (int nd = 0; nd < D / 8; nd += 2) {
                    uint32_t b[4];
                    ldsm_b_trans<T>(b, vs, LD, kh + kk * 16, nd * 8);
#pragma unroll
                    for (int m = 0; m < WM; m++) {
                        mma16816_pair<T>(o[m][nd], o[m][nd + 1], pa[m], b);
                    }
                }
            }
        }
    }
#pragma unroll
    for (int m = 0; m < WM; m++)
#pragma unroll
        for (int r = 0; r < 2; r++) {
            float sum = l[2 * m + r];
            sum += __shfl_xor_sync(0xffffffffu, sum, 1);
            sum += __shfl_xor_sync(0xffffffffu, sum, 2);
            int i = q0 + r0 + 16 * m + g + 8 * r;
            if (i >= len) continue;
            float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
            T *out = (T *)p.out + (start + i) * p.ldo + h * D;
#pragma unroll
            for (int nd = 0; nd < D / 8; nd++) {
                float a = o[m][nd][2 * r] * inv, b = o[m][nd][2 * r + 1] * inv;
                if (p.vec_o) {
                    *(uint32_t *)(out + nd * 8 + t * 2) = pack2<T>(a, b);
                } else {
                    out[nd * 8 + t * 2] = from_f32<T>(a);
                    out[nd * 8 + t * 2 + 1] = from_f32<T>(b);
                }
            }
            if (t == 0 && p.lse)
                p.lse[h * p.n_tokens + start + i] = sum > 0.0f ? mx[2 * m + r] * MMA_LN2 + logf(sum) : -INFINITY;
        }
}

/* ---- backward -------------------------------------------------------------------------------------
 * attention_dkdv_mma_kernel: one tile of 16 KW keys per block (KW warps of 16 keys; 4 or 8) of one kv head, looping
 * over the query heads of its group and over 32-query tiles: S^T = K Q^T, P^T from lse,
 * dP^T = V dO^T, dS^T = P^T (dP^T - delta), dV += P^T dO, dK += dS^T Q. With ATOMIC_DQ
 * (FINCH_CUDA_ATTENTION=dqatomic) it also adds dQ = dS K for its keys to an f32 accumulator with
 * atomics (dS goes through shared memory; each warp then owns 16 query rows x D/2 columns),
 * FlashAttention-2's scheme: five products per score. By default a second kernel recomputes S and dP
 * per query tile (seven products, yet faster than the atomics on an H200):
 * attention_dq_mma_kernel: one 64-query tile per block (16 per warp), looping over key tiles:
 * S = Q K^T, P, dP = dO V^T, dS, dQ += dS K. lse is kept in base-2 units (lse * log2(e)) in shared
 * memory, so P = exp2(score2 - lse2). */
#define MMA_BWD_Q 32

template <int D> struct mma_bwd_smem {
    static const int LD = D + 8;
    /* dK/dV kernel: K, V [keys][LD]; Q, dO [nbuf][32][LD] (the next query tile loading while one is
     * used); dS^T [keys][LDS] (atomic dQ); lse, delta [32] f32 */
    static const int LDS = MMA_BWD_Q + 8; /* row stride of dS^T [64][LDS] (atomic dQ) */
    static size_t dkdv_bytes(bool async, bool atomic_dq, int keys)
    {
        return ((size_t)2 * keys * LD + (async ? 4 : 2) * MMA_BWD_Q * LD + (atomic_dq ? keys * LDS : 0)) * 2 +
               2 * MMA_BWD_Q * sizeof(float);
    }
    /* dQ kernel: Q, dO [64][LD]; K, V [nbuf][64][LD] (kv_pipeline); lse, delta [64] f32 */
    static size_t dq_bytes(bool async)
    {
        return (size_t)(async ? 6 : 4) * MMA_BLOCK_K * LD * 2 + 2 * MMA_BLOCK_K * sizeof(float);
    }
};

/* P of one score from its score x (mma_score2) and lse2 of its query row; 0 where not visible. */
template <bool MASK> __device__ __forceinline__ float mma_prob(float x, float lse2, bool vis)
{
    float prob = exp2_fast(x - lse2);
    return MASK && !vis ? 0.0f : prob;
}

/* dS of one score before the softcap's derivative and the factor scale: its P, dp = dO.v and delta of
 * its query row. */
__device__ __forceinline__ float mma_ds(float prob, float dp, float delta) { return prob * (dp - delta); }

/* P and dS (times scale) of one score: dot = q.k, dp = dO.v, lse2 and delta of its query row. */
template <bool MASK, bool CAP>
__device__ __forceinline__ void mma_prob_ds(const attn_params &p, float &dot, float &dp, float lse2, float delta, bool vis)
{
    float x = mma_score2<CAP>(p, dot);
    float prob = mma_prob<MASK>(x, lse2, vis);
    float ds = mma_ds(prob, dp, delta);
    if (CAP) {
        float c = x * (MMA_LN2 / p.softcap); /* tanh of the capped score */
        ds *= 1.0f - c * c;
    }
    dot = prob;
    dp = ds * p.scale;
}

/* S^T -> P^T, dP^T -> dS^T for the dK/dV kernel: rows are keys key0 + g (+ 8), columns queries
 * q0 + 8 nt + 2 t (+ 1). */
template <bool MASK, bool CAP>
__device__ __forceinline__ void mma_dkdv_probs(const attn_params &p, float (&st)[MMA_BWD_Q / 8][4], float (&dpt)[MMA_BWD_Q / 8][4],
                                               const float *lse_s, const float *delta_s, int q0, int key0, int len)
{
    int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
    for (int nt = 0; nt < MMA_BWD_Q / 8; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            int col = nt * 8 + t * 2 + (e & 1);
            bool vis = !MASK || mma_visible(p, q0 + col, key0 + g + 8 * (e >> 1), len, len, 0);
            mma_prob_ds<MASK, CAP>(p, st[nt][e], dpt[nt][e], lse_s[col], delta_s[col], vis);
        }
}

/* S -> dS for the dQ kernel: rows are queries row0 + g (+ 8), columns keys k0 + 8 nt + 2 t (+ 1);
 * lse_s and delta_s are indexed by the row within the block's tile (row0 - q0 + ...). */
template <bool MASK, bool CAP>
__device__ __forceinline__ void mma_dq_probs(const attn_params &p, float (&s)[MMA_BLOCK_K / 8][4], float (&dp)[MMA_BLOCK_K / 8][4],
                                             const float *lse_s, const float *delta_s, int q0, int r0, int k0, int len)
{
    int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
    for (int nt = 0; nt < MMA_BLOCK_K / 8; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            int row = r0 + g + 8 * (e >> 1);
            bool vis = !MASK || mma_visible(p, q0 + row, k0 + nt * 8 + t * 2 + (e & 1), len, len, 0);
            mma_prob_ds<MASK, CAP>(p, s[nt][e], dp[nt][e], lse_s[row], delta_s[row], vis);
            s[nt][e] = dp[nt][e];
        }
}

/* The A fragment of rows row0 .. row0 + 15, columns k0 .. k0 + 15 of a tile stored k-major
 * ([k][row], stride ld): ldmatrix.trans. */
/* The backward's two score-shaped products of a warp's 16 rows (row r0 of the A tiles) against N rows
 * of the B tiles, over head_dim D: x = A1 B1^T and y = A2 B2^T (S and dP in the dQ kernel with A = Q, dO
 * and B = K, V; their transposes in the dK/dV kernel with A = K, V and B = Q, dO). */
template <int D, int N, typename T>
__device__ __forceinline__ void mma_two_products(float x[N / 8][4], float y[N / 8][4], const T *a1, const T *a2, int r0, const T *b1,
                                                 const T *b2, int ld)
{
#pragma unroll
    for (int nt = 0; nt < N / 8; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) x[nt][e] = y[nt][e] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
        uint32_t fa[4], fb[4];
        ldsm_a<T>(fa, a1, ld, r0, kk * 16);
        ldsm_a<T>(fb, a2, ld, r0, kk * 16);
#pragma unroll
        for (int np = 0; np < N / 16; np++) {
            uint32_t b[4];
            ldsm_b<T>(b, b1, ld, np * 16, kk * 16);
            mma16816_pair<T>(x[2 * np], x[2 * np + 1], fa, b);
            ldsm_b<T>(b, b2, ld, np * 16, kk * 16);
            mma16816_pair<T>(y[2 * np], y[2 * np + 1], fb, b);
        }
    }
}

template <typename T> __device__ __forceinline__ void ldsm_a_trans(uint32_t a[4], const T *tile, int ld, int k0, int row0)
{
    int lane = threadIdx.x % 32;
    ldsm_x4<true>(a, tile + (k0 + (lane & 7) + ((lane >> 4) << 3)) * ld + row0 + ((lane >> 3) & 1) * 8);
}

/* Atomic dQ for the dK/dV kernel: dQ[q0 .. q0 + 31] += dS K over the block's 16 KW keys, with dS^T
 * [key][query] in ds_s (row stride LDS) and K [key][d] in ks. Warp w owns query rows 16 (w % 2) ..
 * and columns DN (w / 2) .. (DN = D / (KW / 2)); pairs of adjacent columns go to p.dq_acc (f32
 * [n_tokens][n_heads * D]) with one 8-byte atomic each on sm_90. */
template <int D, int KW, typename T>
__device__ __forceinline__ void mma_dq_atomic(const attn_params &p, const T *ds_s, const T *ks, int q0, int64_t h,
                                              int64_t start, int len)
{
    const int LD = mma_bwd_smem<D>::LD, LDS = mma_bwd_smem<D>::LDS, DN = D / (KW / 2);
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    int qm = 16 * (warp & 1), dn = DN * (warp >> 1);
    float acc[DN / 8][4];
#pragma unroll
    for (int nd = 0; nd < DN / 8; nd++) acc[nd][0] = acc[nd][1] = acc[nd][2] = acc[nd][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < KW; kk++) {
        uint32_t a[4];
        ldsm_a_trans<T>(a, ds_s, LDS, kk * 16, qm);
#pragma unroll
        for (int nd = 0; nd < DN / 8; nd += 2) {
            uint32_t b[4];
            ldsm_b_trans<T>(b, ks, LD, kk * 16, dn + nd * 8);
            mma16816_pair<T>(acc[nd], acc[nd + 1], a, b);
        }
    }
    int64_t width = p.n_heads * D;
#pragma unroll
    for (int r = 0; r < 2; r++) {
        int i = q0 + qm + g + 8 * r;
        if (i >= len) continue;
        float *row = p.dq_acc + (start + i) * width + h * D + dn + t * 2;
#pragma unroll
        for (int nd = 0; nd < DN / 8; nd++) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
            atomicAdd((float2 *)(row + nd * 8), make_float2(acc[nd][2 * r], acc[nd][2 * r + 1]));
#else
            atomicAdd(row + nd * 8, acc[nd][2 * r]);
            atomicAdd(row + nd * 8 + 1, acc[nd][2 * r + 1]);
#endif
        }
    }
}

template <int D, int KW, bool ATOMIC_DQ, typename T>
__global__ void __launch_bounds__(32 * KW, 8 / KW) attention_dkdv_mma_kernel(attn_params p)
{
    typedef mma_bwd_smem<D> L;
    const int LD = L::LD, LDS = L::LDS, BK = 16 * KW, NT = 32 * KW;
    extern __shared__ float smem_raw[];
    T *ks = (T *)smem_raw, *vs = ks + BK * LD, *q_bufs = vs + BK * LD;
    T *do_bufs = q_bufs + mma_nbuf(p) * MMA_BWD_Q * LD, *ds_s = do_bufs + mma_nbuf(p) * MMA_BWD_Q * LD;
    float *lse_s = (float *)(ds_s + (ATOMIC_DQ ? BK * LDS : 0)), *delta_s = lse_s + MMA_BWD_Q;

    int64_t seq = blockIdx.z, kvh = blockIdx.y, group = p.n_heads / p.n_kv_heads;
    int64_t start = p.cu[seq];
    int len = (int)(p.cu[seq + 1] - start), k0 = (int)blockIdx.x * BK;
    if (k0 >= len) return;
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4, kr0 = warp * 16;
    mma_load_rows<D, T, NT>(ks, LD, (const T *)p.k + start * p.ldk + kvh * D, p.ldk, k0, BK, len, p.vec_k);
    mma_load_rows<D, T, NT>(vs, LD, (const T *)p.v + start * p.ldv + kvh * D, p.ldv, k0, BK, len, p.vec_v);

    float dk[D / 8][4], dv[D / 8][4];
#pragma unroll
    for (int nd = 0; nd < D / 8; nd++)
#pragma unroll
        for (int e = 0; e < 4; e++) dk[nd][e] = dv[nd][e] = 0.0f;

    int q_lo, q_hi;
    mma_bwd_query_range(p, k0, BK, len, &q_lo, &q_hi);
    /* One pass over (query head of the group, query tile) pairs; with 16-byte rows the next pair's Q
     * and dO tiles (cp.async) and lse/delta (registers) load while the current pair is used. */
    const int64_t h_end = (kvh + 1) * group;
    const bool async = p.vec_q && p.vec_do && !p.no_async, cap = p.softcap > 0.0f;
    const T *qbase = (const T *)p.q + start * p.ldq, *dobase = (const T *)p.dout + start * p.lddout;
    float lse_next = 0.0f, delta_next = 0.0f;
    int buf = 0;
    if (q_lo < q_hi) {
        mma_bwd_first_tiles<D, T, NT>(p, async, q_bufs, do_bufs, LD, qbase, dobase, kvh * group, q_lo, MMA_BWD_Q, len, start,
                                      lse_next, delta_next);
    }
    for (int64_t h = kvh * group; h < h_end; h++) {
        for (int q0 = q_lo; q0 < q_hi; q0 += MMA_BWD_Q) {
            int64_t nh;
            int nq;
            mma_bwd_next_tile(h, q0, MMA_BWD_Q, q_lo, q_hi, &nh, &nq);
            bool more = nh < h_end;
            __syncthreads(); /* previous tiles fully used; K and V loaded */
            if (threadIdx.x < MMA_BWD_Q) {
                lse_s[threadIdx.x] = lse_next;
                delta_s[threadIdx.x] = delta_next;
            }
            mma_bwd_row_stats(p, more, nh, nq, MMA_BWD_Q, len, start, lse_next, delta_next);
            T *qs = q_bufs + buf * MMA_BWD_Q * LD, *dos = do_bufs + buf * MMA_BWD_Q * LD;
            if (async) {
                if (more) {
                    mma_load_rows_async<D, T, NT>(q_bufs + (buf ^ 1) * MMA_BWD_Q * LD, LD, qbase + nh * D, p.ldq, nq, MMA_BWD_Q,
                                                  len);
                    mma_load_rows_async<D, T, NT>(do_bufs + (buf ^ 1) * MMA_BWD_Q * LD, LD, dobase + nh * D, p.lddout, nq,
                                                  MMA_BWD_Q, len);
                }
                cp_async_commit();
                cp_async_wait<1>();
                buf ^= 1;
            } else {
                mma_load_rows<D, T, NT>(qs, LD, qbase + h * D, p.ldq, q0, MMA_BWD_Q, len, p.vec_q);
                mma_load_rows<D, T, NT>(dos, LD, dobase + h * D, p.lddout, q0, MMA_BWD_Q, len, p.vec_do);
            }
            __syncthreads();
            bool full = q0 + MMA_BWD_Q <= len && k0 + BK <= len && p.window == 0 && (!p.causal || k0 + BK - 1 <= q0);
            float st[MMA_BWD_Q / 8][4], dpt[MMA_BWD_Q / 8][4];
            mma_two_products<D, MMA_BWD_Q, T>(st, dpt, ks, vs, kr0, qs, dos, LD);
            /* st becomes P^T, dpt becomes dS^T (scaled), element by element. */
            if (full) {
                if (cap) mma_dkdv_probs<false, true>(p, st, dpt, lse_s, delta_s, q0, k0 + kr0, len);
                else mma_dkdv_probs<false, false>(p, st, dpt, lse_s, delta_s, q0, k0 + kr0, len);
            } else {
                if (cap) mma_dkdv_probs<true, true>(p, st, dpt, lse_s, delta_s, q0, k0 + kr0, len);
                else mma_dkdv_probs<true, false>(p, st, dpt, lse_s, delta_s, q0, k0 + kr0, len);
            }
#pragma unroll
            for (int kq = 0; kq < MMA_BWD_Q / 16; kq++) {
                uint32_t pa[4] = {pack2<T>(st[2 * kq][0], st[2 * kq][1]), pack2<T>(st[2 * kq][2], st[2 * kq][3]),
                                  pack2<T>(st[2 * kq + 1][0], st[2 * kq + 1][1]), pack2<T>(st[2 * kq + 1][2], st[2 * kq + 1][3])};
                uint32_t sa[4] = {pack2<T>(dpt[2 * kq][0], dpt[2 * kq][1]), pack2<T>(dpt[2 * kq][2], dpt[2 * kq][3]),
                                  pack2<T>(dpt[2 * kq + 1][0], dpt[2 * kq + 1][1]),
                                  pack2<T>(dpt[2 * kq + 1][2], dpt[2 * kq + 1][3])};
#pragma unroll
                for (int nd = 0; nd < D / 8; nd += 2) {
                    uint32_t b[4];
                    ldsm_b_trans<T>(b, dos, LD, kq * 16, nd * 8);
                    mma16816_pair<T>(dv[nd], dv[nd + 1], pa, b);
                    ldsm_b_trans<T>(b, qs, LD, kq * 16, nd * 8);
                    mma16816_pair<T>(dk[nd], dk[nd + 1], sa, b);
                }
                if (ATOMIC_DQ) {
                    /* dS^T as it is in the fragments: [key][query] */
                    T *row = ds_s + (kr0 + g) * LDS + kq * 16 + t * 2;
                    *(uint32_t *)row = sa[0];
                    *(uint32_t *)(row + 8 * LDS) = sa[1];
                    *(uint32_t *)(row + 8) = sa[2];
                    *(uint32_t *)(row + 8 * LDS + 8) = sa[3];
                }
            }
            if (ATOMIC_DQ) {
                __syncthreads(); /* all of dS^T written */
                mma_dq_atomic<D, KW, T>(p, ds_s, ks, q0, h, start, len);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        int j = k0 + kr0 + g + 8 * r;
        if (j >= len) continue;
        T *dkr = (T *)p.dk + (start + j) * p.lddk + kvh * D, *dvr = (T *)p.dv + (start + j) * p.lddv + kvh * D;
#pragma unroll
        for (int nd = 0; nd < D / 8; nd++) {
            dkr[nd * 8 + t * 2] = from_f32<T>(dk[nd][2 * r]);
            dkr[nd * 8 + t * 2 + 1] = from_f32<T>(dk[nd][2 * r + 1]);
            dvr[nd * 8 + t * 2] = from_f32<T>(dv[nd][2 * r]);
            dvr[nd * 8 + t * 2 + 1] = from_f32<T>(dv[nd][2 * r + 1]);
        }
    }
}

template <int D, typename T>
__global__ void __launch_bounds__(MMA_THREADS, 2) attention_dq_mma_kernel(attn_params p, T *dq_out, int64_t lddq)
{
    typedef mma_bwd_smem<D> L;
    const int LD = L::LD, BQ = MMA_BLOCK_K; /* query rows per block */
    extern __shared__ float smem_raw[];
    T *qs = (T *)smem_raw, *dos = qs + BQ * LD, *k_bufs = dos + BQ * LD;
    T *v_bufs = k_bufs + mma_nbuf(p) * MMA_BLOCK_K * LD;
    float *lse_s = (float *)(v_bufs + mma_nbuf(p) * MMA_BLOCK_K * LD), *delta_s = lse_s + BQ;

    const mma_block blk = mma_block_order(p, false);
    int64_t seq = blk.z, h = blk.y, kvh = h / (p.n_heads / p.n_kv_heads);
    int64_t start = p.cu[seq];
    int len = (int)(p.cu[seq + 1] - start), q0 = (int)blk.x * BQ;
    if (q0 >= len) return;
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4, r0 = warp * 16;
    mma_load_rows<D, T>(qs, LD, (const T *)p.q + start * p.ldq + h * D, p.ldq, q0, BQ, len, p.vec_q);
    mma_load_rows<D, T>(dos, LD, (const T *)p.dout + start * p.lddout + h * D, p.lddout, q0, BQ, len, p.vec_do);
    if (threadIdx.x < BQ) {
        int i = q0 + threadIdx.x;
        lse_s[threadIdx.x] = i < len ? p.lse[h * p.n_tokens + start + i] * MMA_LOG2E : 0.0f;
        delta_s[threadIdx.x] = i < len ? p.delta[h * p.n_tokens + start + i] : 0.0f;
    }
    float dq[D / 8][4];
#pragma unroll
    for (int nd = 0; nd < D / 8; nd++) dq[nd][0] = dq[nd][1] = dq[nd][2] = dq[nd][3] = 0.0f;

    int last_q = q0 + BQ < len ? q0 + BQ : len;
    int64_t k_lo64 = p.window > 0 ? q0 - p.window + 1 : 0;
    int k_lo = k_lo64 < 0 ? 0 : (int)k_lo64, k_hi = p.causal ? last_q : len;
    const T *kp = (const T *)p.k + start * p.ldk + kvh * D, *vp = (const T *)p.v + start * p.ldv + kvh * D;
    kv_pipeline<D, T> pipe = {k_bufs, v_bufs, LD, kp, vp, p.ldk, p.ldv, len, k_hi, p.vec_k && p.vec_v && !p.no_async, p.vec_k, p.vec_v, 0};
    bool rows_full = q0 + BQ <= len && p.window == 0, cap = p.softcap > 0.0f;
    pipe.start(k_lo - k_lo % MMA_BLOCK_K);
    for (int k0 = k_lo - k_lo % MMA_BLOCK_K; k0 < k_hi; k0 += MMA_BLOCK_K) {
        T *ks, *vs;
        pipe.acquire(k0, &ks, &vs);
        bool full = rows_full && k0 + MMA_BLOCK_K <= len && (!p.causal || k0 + MMA_BLOCK_K - 1 <= q0);
        float s[MMA_BLOCK_K / 8][4], dp[MMA_BLOCK_K / 8][4];
        mma_two_products<D, MMA_BLOCK_K, T>(s, dp, qs, dos, r0, ks, vs, LD);
        if (full) {
            if (cap) mma_dq_probs<false, true>(p, s, dp, lse_s, delta_s, q0, r0, k0, len);
            else mma_dq_probs<false, false>(p, s, dp, lse_s, delta_s, q0, r0, k0, len);
        } else {
            if (cap) mma_dq_probs<true, true>(p, s, dp, lse_s, delta_s, q0, r0, k0, len);
            else mma_dq_probs<true, false>(p, s, dp, lse_s, delta_s, q0, r0, k0, len);
        }
#pragma unroll
        for (int kk = 0; kk < MMA_BLOCK_K / 16; kk++) {
            uint32_t sa[4] = {pack2<T>(s[2 * kk][0], s[2 * kk][1]), pack2<T>(s[2 * kk][2], s[2 * kk][3]),
                              pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]), pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
            for (int nd = 0; nd < D / 8; nd += 2) {
                uint32_t b[4];
                ldsm_b_trans<T>(b, ks, LD, kk * 16, nd * 8);
                mma16816_pair<T>(dq[nd], dq[nd + 1], sa, b);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        int i = q0 + r0 + g + 8 * r;
        if (i >= len) continue;
        T *dst = dq_out + (start + i) * lddq + h * D;
#pragma unroll
        for (int nd = 0; nd < D / 8; nd++) {
            dst[nd * 8 + t * 2] = from_f32<T>(dq[nd][2 * r]);
            dst[nd * 8 + t * 2 + 1] = from_f32<T>(dq[nd][2 * r + 1]);
        }
    }
}

/* ---- backward in one kernel: FlashAttention-2's partition ------------------------------------------
 * attention_bwd_fused_kernel: one tile of 128 keys per block of 8 warps (one kv head), looping over
 * the query heads of its group and over 64-query tiles (Q, dO double-buffered with cp.async). Each
 * iteration has three phases, each warp with its own part of the tile:
 *   1. S^T = K Q^T and dP^T = V dO^T, a warp 32 keys x 32 queries (4 x 2 warps); P^T and dS^T go to
 *      shared memory (16-bit), so every K/V fragment serves two query n-tiles and every Q/dO fragment
 *      two key m-tiles.
 *   2. dV += P^T dO and dK += dS^T Q, a warp 32 keys x D/2 columns (4 x 2), accumulated in registers.
 *   3. (ATOMIC_DQ) dQ += dS K, a warp 32 queries x D/4 columns (2 x 4), added to p.dq_acc (f32) with
 *      atomics; otherwise attention_dq_mma_kernel computes dQ afterwards.
 * Against attention_dkdv_mma_kernel (a warp 16 keys x all of D in every product) each ldmatrix feeds
 * about twice the mma. Sub-tiles wholly above the causal diagonal skip their products. 255 registers
 * (no spills) and 173 KiB of shared memory at D = 128: one block of 8 warps an SM, so the order the
 * blocks start in matters (mma_block_order). With p.head_split > 1 a block takes group / head_split
 * of the kv head's query heads and adds its dK, dV to f32 sums (p.dk_acc, p.dv_acc) with atomics. */
#define FUSED_KEYS 128
#define FUSED_Q 64
#define FUSED_THREADS 256

template <int D> struct mma_fused_smem {
    static const int LD = D + 8, LDP = FUSED_Q + 8;
    /* K, V [128][LD]; Q, dO [2][64][LD]; P^T, dS^T [128][LDP]; lse, delta [2][64] f32 */
    static size_t bytes(void)
    {
        return ((size_t)2 * FUSED_KEYS * LD + 4 * FUSED_Q * LD + 2 * FUSED_KEYS * LDP) * 2 + 4 * FUSED_Q * sizeof(float);
    }
};

/* Adds a warp's 32 x (8 NDQ) f32 fragment (rows row0 + 16 m + g (+ 8) of dst, row stride ld; columns
 * 8 nd + 2 t (+ 1)) to global memory: 8-byte atomics on sm_90, else 4-byte. (16-byte atomics after
 * lanes t and t ^ 1 swap half their pairs measured 1-2% slower on an H200.) */
template <int NDQ>
__device__ __forceinline__ void mma_atomic_add_rows(float *dst, int64_t ld, const float (&acc)[2][NDQ][4], int row0, int len)
{
    int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
    for (int m = 0; m < 2; m++)
#pragma unroll
        for (int r = 0; r < 2; r++) {
            int i = row0 + 16 * m + g + 8 * r;
            if (i >= len) continue;
            float *row = dst + (int64_t)i * ld + t * 2;
#pragma unroll
            for (int nd = 0; nd < NDQ; nd++) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
                atomicAdd((float2 *)(row + nd * 8), make_float2(acc[m][nd][2 * r], acc[m][nd][2 * r + 1]));
#else
                atomicAdd(row + nd * 8, acc[m][nd][2 * r]);
                atomicAdd(row + nd * 8 + 1, acc[m][nd][2 * r + 1]);
#endif
            }
        }
}

template <int D, bool ATOMIC_DQ, typename T>
__global__ void __launch_bounds__(FUSED_THREADS, 1) attention_bwd_fused_kernel(attn_params p)
{
    typedef mma_fused_smem<D> L;
    const int LD = L::LD, LDP = L::LDP, BN = FUSED_KEYS, BM = FUSED_Q;
    const int NDV = D / 16;  /* n-tiles of a warp's D/2 columns of dK and dV */
    const int NDQ = D / 32;  /* n-tiles of a warp's D/4 columns of dQ */
    extern __shared__ float smem_raw[];
    T *ks = (T *)smem_raw, *vs = ks + BN * LD, *q_bufs = vs + BN * LD, *do_bufs = q_bufs + 2 * BM * LD;
    T *pt = do_bufs + 2 * BM * LD, *dst = pt + BN * LDP;
    float *lse_s = (float *)(dst + BN * LDP), *delta_s = lse_s + 2 * BM;

    const mma_block blk = mma_block_order(p, true);
    int64_t seq = blk.z, kvh = blk.y / p.head_split, group = p.n_heads / p.n_kv_heads, part = blk.y % p.head_split;
    int64_t start = p.cu[seq];
    int len = (int)(p.cu[seq + 1] - start), k0 = (int)blk.x * BN;
    if (k0 >= len) return;
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const int kw = 32 * (warp & 3), qw = 32 * (warp >> 2);          /* phase 1 */
    const int kr = 32 * (warp & 3), dc = (D / 2) * (warp >> 2);     /* phase 2 */
    const int qm = 32 * (warp >> 2), dn = (D / 4) * (warp & 3);     /* phase 3 */
    mma_load_rows<D, T, FUSED_THREADS>(ks, LD, (const T *)p.k + start * p.ldk + kvh * D, p.ldk, k0, BN, len, p.vec_k);
    mma_load_rows<D, T, FUSED_THREADS>(vs, LD, (const T *)p.v + start * p.ldv + kvh * D, p.ldv, k0, BN, len, p.vec_v);

    float dk[2][NDV][4], dv[2][NDV][4];
#pragma unroll
    for (int m = 0; m < 2; m++)
#pragma unroll
        for (int nd = 0; nd < NDV; nd++)
#pragma unroll
            for (int e = 0; e < 4; e++) dk[m][nd][e] = dv[m][nd][e] = 0.0f;

    int q_lo, q_hi;
    mma_bwd_query_range(p, k0, BN, len, &q_lo, &q_hi);
    const int64_t per = group / p.head_split, h_end = kvh * group + (part + 1) * per;
    const bool async = p.vec_q && p.vec_do && !p.no_async, cap = p.softcap > 0.0f;
    const T *qbase = (const T *)p.q + start * p.ldq, *dobase = (const T *)p.dout + start * p.lddout;
    int64_t h = kvh * group + part * per;
    int q0 = q_lo, buf = 0;
    if (q_lo < q_hi) {
        float lse0, delta0;
        mma_bwd_first_tiles<D, T, FUSED_THREADS>(p, async, q_bufs, do_bufs, LD, qbase, dobase, h, q0, BM, len, start, lse0,
                                                 delta0);
        if (threadIdx.x < BM) {
            lse_s[threadIdx.x] = lse0;
            delta_s[threadIdx.x] = delta0;
        }
    }
    while (q_lo < q_hi && h < h_end) {
        T *qs = q_bufs + buf * BM * LD, *dos = do_bufs + buf * BM * LD;
        if (!async) {
            /* this buffer was last read two iterations ago: every warp has passed the barrier since */
            mma_load_rows<D, T, FUSED_THREADS>(qs, LD, qbase + h * D, p.ldq, q0, BM, len, p.vec_q);
            mma_load_rows<D, T, FUSED_THREADS>(dos, LD, dobase + h * D, p.lddout, q0, BM, len, p.vec_do);
        }
        cp_async_wait<0>();
        __syncthreads(); /* this tile resident; the previous iteration wholly done (P^T, dS^T, other buffers free) */
        int64_t nh;
        int nq;
        mma_bwd_next_tile(h, q0, BM, q_lo, q_hi, &nh, &nq);
        bool more = nh < h_end;
        if (async && more) {
            mma_load_rows_async<D, T, FUSED_THREADS>(q_bufs + (buf ^ 1) * BM * LD, LD, qbase + nh * D, p.ldq, nq, BM, len);
            mma_load_rows_async<D, T, FUSED_THREADS>(do_bufs + (buf ^ 1) * BM * LD, LD, dobase + nh * D, p.lddout, nq, BM, len);
        }
        cp_async_commit();
        float lse_next, delta_next;
        mma_bwd_row_stats(p, more, nh, nq, BM, len, start, lse_next, delta_next);

        /* phase 1: S^T, dP^T -> P^T, dS^T */
        {
            float st[2][4][4], dpt[2][4][4];
#pragma unroll
            for (int m = 0; m < 2; m++)
#pragma unroll
                for (int nt = 0; nt < 4; nt++)
#pragma unroll
                    for (int e = 0; e < 4; e++) st[m][nt][e] = dpt[m][nt][e] = 0.0f;
            /* wholly above the diagonal: P = dS = 0 (the masked step below writes the zeros) */
            bool above = p.causal && k0 + kw > q0 + qw + 31;
            if (!above) {
#pragma unroll
                for (int kk = 0; kk < D / 16; kk++) {
                    uint32_t ka[2][4], va[2][4];
#pragma unroll
                    for (int m = 0; m < 2; m++) {
                        ldsm_a<T>(ka[m], ks, LD, kw + 16 * m, kk * 16);
                        ldsm_a<T>(va[m], vs, LD, kw + 16 * m, kk * 16);
                    }
#pragma unroll
                    for (int np = 0; np < 2; np++) {
                        uint32_t b[4];
                        ldsm_b<T>(b, qs, LD, qw + 16 * np, kk * 16);
#pragma unroll
                        for (int m = 0; m < 2; m++) {
                            mma16816_pair<T>(st[m][2 * np], st[m][2 * np + 1], ka[m], b);
                        }
                        ldsm_b<T>(b, dos, LD, qw + 16 * np, kk * 16);
#pragma unroll
                        for (int m = 0; m < 2; m++) {
                            mma16816_pair<T>(dpt[m][2 * np], dpt[m][2 * np + 1], va[m], b);
                        }
                    }
                }
            }
            bool full = q0 + BM <= len && k0 + kw + 32 <= len && p.window == 0 && (!p.causal || k0 + kw + 31 <= q0 + qw);
            const float *ls = lse_s + buf * BM, *ds = delta_s + buf * BM;
#pragma unroll
            for (int m = 0; m < 2; m++) {
                if (full) {
                    if (cap) mma_dkdv_probs<false, true>(p, st[m], dpt[m], ls + qw, ds + qw, q0 + qw, k0 + kw + 16 * m, len);
                    else mma_dkdv_probs<false, false>(p, st[m], dpt[m], ls + qw, ds + qw, q0 + qw, k0 + kw + 16 * m, len);
                } else {
                    if (cap) mma_dkdv_probs<true, true>(p, st[m], dpt[m], ls + qw, ds + qw, q0 + qw, k0 + kw + 16 * m, len);
                    else mma_dkdv_probs<true, false>(p, st[m], dpt[m], ls + qw, ds + qw, q0 + qw, k0 + kw + 16 * m, len);
                }
#pragma unroll
                for (int r = 0; r < 2; r++) {
                    T *prow = pt + (kw + 16 * m + g + 8 * r) * LDP + qw + t * 2;
                    T *srow = dst + (kw + 16 * m + g + 8 * r) * LDP + qw + t * 2;
#pragma unroll
                    for (int nt = 0; nt < 4; nt++) {
                        *(uint32_t *)(prow + nt * 8) = pack2<T>(st[m][nt][2 * r], st[m][nt][2 * r + 1]);
                        *(uint32_t *)(srow + nt * 8) = pack2<T>(dpt[m][nt][2 * r], dpt[m][nt][2 * r + 1]);
                    }
                }
            }
        }
        if (more && threadIdx.x < BM) {
            lse_s[(buf ^ 1) * BM + threadIdx.x] = lse_next;
            delta_s[(buf ^ 1) * BM + threadIdx.x] = delta_next;
        }
        __syncthreads(); /* P^T and dS^T complete */

        /* phase 2: dV += P^T dO, dK += dS^T Q */
#pragma unroll
        for (int kq = 0; kq < BM / 16; kq++) {
            if (p.causal && q0 + 16 * kq + 15 < k0 + kr) continue; /* these queries see none of the warp's keys */
            uint32_t pa[2][4], sa[2][4];
#pragma unroll
            for (int m = 0; m < 2; m++) {
                ldsm_a<T>(pa[m], pt, LDP, kr + 16 * m, kq * 16);
                ldsm_a<T>(sa[m], dst, LDP, kr + 16 * m, kq * 16);
            }
#pragma unroll
            for (int nd = 0; nd < NDV; nd += 2) {
                uint32_t b[4];
                ldsm_b_trans<T>(b, dos, LD, kq * 16, dc + nd * 8);
#pragma unroll
                for (int m = 0; m < 2; m++) {
                    mma16816_pair<T>(dv[m][nd], dv[m][nd + 1], pa[m], b);
                }
                ldsm_b_trans<T>(b, qs, LD, kq * 16, dc + nd * 8);
#pragma unroll
                for (int m = 0; m < 2; m++) {
                    mma16816_pair<T>(dk[m][nd], dk[m][nd + 1], sa[m], b);
                }
            }
        }

        /* phase 3: dQ += dS K */
        if (ATOMIC_DQ) {
            float acc[2][NDQ][4];
#pragma unroll
            for (int m = 0; m < 2; m++)
#pragma unroll
                for (int nd = 0; nd < NDQ; nd++) acc[m][nd][0] = acc[m][nd][1] = acc[m][nd][2] = acc[m][nd][3] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < BN / 16; kk++) {
                if (p.causal && k0 + 16 * kk > q0 + qm + 31) continue; /* keys after all the warp's queries */
                uint32_t a[2][4];
#pragma unroll
                for (int m = 0; m < 2; m++) ldsm_a_trans<T>(a[m], dst, LDP, kk * 16, qm + 16 * m);
#pragma unroll
                for (int nd = 0; nd < NDQ; nd += 2) {
                    uint32_t b[4];
                    ldsm_b_trans<T>(b, ks, LD, kk * 16, dn + nd * 8);
#pragma unroll
                    for (int m = 0; m < 2; m++) {
                        mma16816_pair<T>(acc[m][nd], acc[m][nd + 1], a[m], b);
                    }
                }
            }
            float *dq = p.dq_acc + start * (p.n_heads * D) + h * D + dn;
            mma_atomic_add_rows<NDQ>(dq, p.n_heads * D, acc, q0 + qm, len);
        }
        h = nh;
        q0 = nq;
        buf ^= 1;
    }
#pragma unroll
    for (int m = 0; m < 2; m++)
#pragma unroll
        for (int r = 0; r < 2; r++) {
            int j = k0 + kr + 16 * m + g + 8 * r;
            if (j >= len) continue;
            if (p.dk_acc) { /* a part of the group's query heads: add to the f32 sums */
                float *dka = p.dk_acc + (start + j) * (p.n_kv_heads * D) + kvh * D + dc + t * 2;
                float *dva = p.dv_acc + (start + j) * (p.n_kv_heads * D) + kvh * D + dc + t * 2;
#pragma unroll
                for (int nd = 0; nd < NDV; nd++) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
                    atomicAdd((float2 *)(dka + nd * 8), make_float2(dk[m][nd][2 * r], dk[m][nd][2 * r + 1]));
                    atomicAdd((float2 *)(dva + nd * 8), make_float2(dv[m][nd][2 * r], dv[m][nd][2 * r + 1]));
#else
                    atomicAdd(dka + nd * 8, dk[m][nd][2 * r]);
                    atomicAdd(dka + nd * 8 + 1, dk[m][nd][2 * r + 1]);
                    atomicAdd(dva + nd * 8, dv[m][nd][2 * r]);
                    atomicAdd(dva + nd * 8 + 1, dv[m][nd][2 * r + 1]);
#endif
                }
                continue;
            }
            T *dkr = (T *)p.dk + (start + j) * p.lddk + kvh * D + dc + t * 2, *dvr = (T *)p.dv + (start + j) * p.lddv + kvh * D + dc + t * 2;
#pragma unroll
            for (int nd = 0; nd < NDV; nd++) {
                dkr[nd * 8] = from_f32<T>(dk[m][nd][2 * r]);
                dkr[nd * 8 + 1] = from_f32<T>(dk[m][nd][2 * r + 1]);
                dvr[nd * 8] = from_f32<T>(dv[m][nd][2 * r]);
                dvr[nd * 8 + 1] = from_f32<T>(dv[m][nd][2 * r + 1]);
            }
        }
}
#endif

#endif
