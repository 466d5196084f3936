/* Tensor-core forward attention for 16-bit storage on sm_80+ (a CUDA-only fast path; the portable
 * kernel in attention.cu covers everything else). FlashAttention-2 layout: 4 warps, each owning 16
 * query rows of a 64-row tile; per 64-key tile, S = Q K^T and O += P V run on mma.sync m16n8k16
 * with f32 accumulation, the online softmax on the S accumulators in registers, and P fed back as
 * the A operand without leaving registers. Fragment layouts are those of the PTX ISA for
 * m16n8k16: g = lane / 4 is the row (and B column), t = lane % 4 picks the element pair.
 * Tiles are loaded row-major in 16-byte vectors where the operand allows (attn_params.vec_*), and
 * B operands that run down a column of a row-major tile (V in O += P V, dO and Q in the dK/dV
 * kernel, K in the dQ kernel) are read with ldmatrix.trans instead of a transposed copy. */
#ifndef FINCH_GPU_ATTENTION_MMA_CUH
#define FINCH_GPU_ATTENTION_MMA_CUH

#if FINCH_GPU_CUDA
#include <type_traits>

#define MMA_BLOCK_Q 64
#define MMA_BLOCK_K 64
#define MMA_THREADS 128

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
    if constexpr (sizeof(T) == 2 && std::is_same<T, gpu_bf16>::value)
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                     "{%0,%1,%2,%3};\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    else
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                     "{%0,%1,%2,%3};\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

/* The B fragments of two adjacent n-tiles (columns c0 .. c0 + 15) over 16 k-rows of a row-major
 * [k][n] tile in shared memory: b[0], b[1] for columns c0 .. c0 + 7, b[2], b[3] for the next 8.
 * `row` points at element (k0, c0); ld is the tile's row stride in elements (16-byte rows). */
template <typename T>
__device__ __forceinline__ void ldmatrix_b_trans(uint32_t b[4], const T *row, int ld)
{
    int lane = threadIdx.x % 32;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    uint32_t a = (uint32_t)__cvta_generic_to_shared(row + (lane & 15) * ld + (lane >> 4) * 8);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(b[0]), "=r"(b[1]), "=r"(b[2]), "=r"(b[3])
                 : "r"(a));
#else
    (void)row; (void)ld; (void)lane;
    b[0] = b[1] = b[2] = b[3] = 0;
#endif
}

/* rows x D of a head slice (rows row0.. of src, row stride src_ld; rows at or past len read as 0)
 * into shared memory, row-major with row stride ld. vec: src and src_ld allow 16-byte loads. */
template <int D, typename T>
__device__ __forceinline__ void mma_load_rows(T *dst, int ld, const T *src, int64_t src_ld, int64_t row0, int rows, int64_t len,
                                              bool vec)
{
    if (vec) {
        const int C = D / 8;
        for (int e = threadIdx.x; e < rows * C; e += MMA_THREADS) {
            int r = e / C, c = (e % C) * 8;
            uint4 v = make_uint4(0u, 0u, 0u, 0u);
            if (row0 + r < len) v = *(const uint4 *)(src + (row0 + r) * src_ld + c);
            *(uint4 *)(dst + r * ld + c) = v;
        }
        return;
    }
    for (int e = threadIdx.x; e < rows * D; e += MMA_THREADS) {
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
template <int D, typename T>
__device__ __forceinline__ void mma_load_rows_async(T *dst, int ld, const T *src, int64_t src_ld, int64_t row0, int rows,
                                                    int64_t len)
{
    const int C = D / 8;
    for (int e = threadIdx.x; e < rows * C; e += MMA_THREADS) {
        int r = e / C, c = (e % C) * 8;
        bool ok = row0 + r < len;
        cp_async16(dst + r * ld + c, ok ? src + (row0 + r) * src_ld + c : src, ok);
    }
}

/* Streamed tiles get two buffers each (the next tile loading with cp.async while the current one is
 * in use) unless p.no_async, which the launch sets when the device cannot give the block that much
 * shared memory (or FINCH_CUDA_ATTENTION=sync); a kernel whose operands do not allow 16-byte loads
 * uses the first buffer only, loaded synchronously. */
__device__ __forceinline__ int mma_nbuf(const attn_params &p) { return p.no_async ? 1 : 2; }

/* The query tile of a block of the forward and dQ kernels. Under a causal mask later tiles see more
 * keys: blocks are handed out in index order, so the heaviest tiles go first and the last wave is
 * made of light ones. */
__device__ __forceinline__ unsigned mma_heavy_first(const attn_params &p)
{
    return p.causal ? gridDim.x - 1 - blockIdx.x : blockIdx.x;
}

template <int D> struct mma_smem {
    static const int LDK = D + 8;                 /* row stride of the Q, K and V tiles (elements) */
    static size_t bytes(bool async) { return (size_t)(MMA_BLOCK_Q + (async ? 4 : 2) * MMA_BLOCK_K) * LDK * 2; }
};

/* The loop over key tiles shared by the forward and dQ kernels: at the top of each iteration the
 * tile k0 is in (kt, vt). Returns false when the loop is done. */
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

template <int D, typename T>
__global__ void __launch_bounds__(MMA_THREADS) attention_forward_mma_kernel(attn_params p)
{
    const int LDK = mma_smem<D>::LDK;
    extern __shared__ float smem_raw[];
    T *qs = (T *)smem_raw, *k_bufs = qs + MMA_BLOCK_Q * LDK, *v_bufs = k_bufs + mma_nbuf(p) * MMA_BLOCK_K * LDK;

    int64_t h = blockIdx.y, kvh = h / (p.n_heads / p.n_kv_heads);
    const seq_span sp = seq_span_of(p, blockIdx.z);
    int64_t start = sp.q_start, len = sp.q_len, klen = sp.k_len, q0 = (int64_t)mma_heavy_first(p) * MMA_BLOCK_Q;
    if (q0 >= len) return;
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    int r0 = warp * 16;

    mma_load_rows<D, T>(qs, LDK, (const T *)p.q + start * p.ldq + h * D, p.ldq, q0, MMA_BLOCK_Q, len, p.vec_q);
    __syncthreads();
    uint32_t qf[D / 16][4];
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
        qf[kk][0] = *(const uint32_t *)&qs[(r0 + g) * LDK + kk * 16 + t * 2];
        qf[kk][1] = *(const uint32_t *)&qs[(r0 + g + 8) * LDK + kk * 16 + t * 2];
        qf[kk][2] = *(const uint32_t *)&qs[(r0 + g) * LDK + kk * 16 + 8 + t * 2];
        qf[kk][3] = *(const uint32_t *)&qs[(r0 + g + 8) * LDK + kk * 16 + 8 + t * 2];
    }
    float o[D / 8][4];
#pragma unroll
    for (int nd = 0; nd < D / 8; nd++) o[nd][0] = o[nd][1] = o[nd][2] = o[nd][3] = 0.0f;
    float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f};
    int64_t rows_i[2] = {q0 + r0 + g, q0 + r0 + g + 8};

    int64_t last_q = q0 + MMA_BLOCK_Q < len ? q0 + MMA_BLOCK_Q : len, k_lo, k_hi;
    key_range(p, sp, q0, last_q, &k_lo, &k_hi);
    const T *kp = (const T *)p.k + sp.k_start * p.ldk + kvh * D, *vp = (const T *)p.v + sp.k_start * p.ldv + kvh * D;
    kv_pipeline<D, T> pipe = {k_bufs, v_bufs, LDK, kp, vp, p.ldk, p.ldv, klen, k_hi, p.vec_k && p.vec_v && !p.no_async, p.vec_k, p.vec_v, 0};
    /* Tiles wholly below the diagonal (and inside the sequence, no window) need no mask. */
    int64_t q_min = q0 + sp.off;
    bool rows_full = q0 + MMA_BLOCK_Q <= len && p.window == 0;
    pipe.start(k_lo - k_lo % MMA_BLOCK_K);
    for (int64_t k0 = k_lo - k_lo % MMA_BLOCK_K; k0 < k_hi; k0 += MMA_BLOCK_K) {
        T *ks, *vs;
        pipe.acquire(k0, &ks, &vs);
        bool full = rows_full && k0 + MMA_BLOCK_K <= klen && (!p.causal || k0 + MMA_BLOCK_K - 1 <= q_min);
        float s[MMA_BLOCK_K / 8][4];
#pragma unroll
        for (int nt = 0; nt < MMA_BLOCK_K / 8; nt++) {
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++) {
                uint32_t b0 = *(const uint32_t *)&ks[(nt * 8 + g) * LDK + kk * 16 + t * 2];
                uint32_t b1 = *(const uint32_t *)&ks[(nt * 8 + g) * LDK + kk * 16 + 8 + t * 2];
                mma16816<T>(s[nt], qf[kk], b0, b1);
            }
        }
        float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int nt = 0; nt < MMA_BLOCK_K / 8; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int64_t j = k0 + nt * 8 + t * 2 + (e & 1);
                float v = full || visible_in(p, sp, rows_i[e >> 1], j) ? cap_score(p, p.scale * s[nt][e]) : -INFINITY;
                s[nt][e] = v;
                tile_max[e >> 1] = fmaxf(tile_max[e >> 1], v);
            }
        float alpha[2], new_max[2], tile_sum[2] = {0.0f, 0.0f};
#pragma unroll
        for (int r = 0; r < 2; r++) {
            tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 1));
            tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 2));
            new_max[r] = fmaxf(row_max[r], tile_max[r]);
            alpha[r] = new_max[r] == -INFINITY ? 1.0f : expf(row_max[r] - new_max[r]);
            row_max[r] = new_max[r];
        }
#pragma unroll
        for (int nt = 0; nt < MMA_BLOCK_K / 8; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                float v = s[nt][e] == -INFINITY ? 0.0f : expf(s[nt][e] - new_max[e >> 1]);
                s[nt][e] = v;
                tile_sum[e >> 1] += v;
            }
#pragma unroll
        for (int r = 0; r < 2; r++) {
            tile_sum[r] += __shfl_xor_sync(0xffffffffu, tile_sum[r], 1);
            tile_sum[r] += __shfl_xor_sync(0xffffffffu, tile_sum[r], 2);
            row_sum[r] = row_sum[r] * alpha[r] + tile_sum[r];
        }
#pragma unroll
        for (int nd = 0; nd < D / 8; nd++) {
            o[nd][0] *= alpha[0];
            o[nd][1] *= alpha[0];
            o[nd][2] *= alpha[1];
            o[nd][3] *= alpha[1];
        }
#pragma unroll
        for (int kk = 0; kk < MMA_BLOCK_K / 16; kk++) {
            uint32_t pa[4] = {pack2<T>(s[2 * kk][0], s[2 * kk][1]), pack2<T>(s[2 * kk][2], s[2 * kk][3]),
                              pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]), pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
            for (int nd = 0; nd < D / 8; nd += 2) {
                uint32_t b[4];
                ldmatrix_b_trans<T>(b, &vs[(kk * 16) * LDK + nd * 8], LDK);
                mma16816<T>(o[nd], pa, b[0], b[1]);
                mma16816<T>(o[nd + 1], pa, b[2], b[3]);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        int64_t i = rows_i[r];
        if (i >= len) continue;
        float inv = row_sum[r] > 0.0f ? 1.0f / row_sum[r] : 0.0f;
        T *out = (T *)p.out + (start + i) * p.ldo + h * D;
#pragma unroll
        for (int nd = 0; nd < D / 8; nd++) {
            out[nd * 8 + t * 2] = from_f32<T>(o[nd][2 * r] * inv);
            out[nd * 8 + t * 2 + 1] = from_f32<T>(o[nd][2 * r + 1] * inv);
        }
        if (t == 0 && p.lse) p.lse[h * p.n_tokens + start + i] = row_sum[r] > 0.0f ? row_max[r] + logf(row_sum[r]) : -INFINITY;
    }
}

/* ---- backward: two kernels, no atomics ---------------------------------------------------------
 * attention_dkdv_mma_kernel: one 64-key tile per block (16 keys per warp) of one kv head, looping
 * over the query heads of its group and over 32-query tiles: S^T = K Q^T, P^T from lse,
 * dP^T = V dO^T, dS^T = P^T (dP^T - delta), dV += P^T dO, dK += dS^T Q.
 * attention_dq_mma_kernel: one 64-query tile per block (16 per warp), looping over key tiles:
 * S = Q K^T, P, dP = dO V^T, dS, dQ += dS K. Operands are read from row-major shared memory tiles:
 * one 32-bit load per fragment register where the ISA's pair runs along the row, ldmatrix.trans
 * where it runs down a column. */
#define MMA_BWD_Q 32

template <int D> struct mma_bwd_smem {
    static const int LD = D + 8;
    /* dK/dV kernel: K, V [64][LD]; Q, dO [nbuf][32][LD] (the next query tile loading while one is
     * used); lse, delta [32] f32 */
    static size_t dkdv_bytes(bool async)
    {
        return ((size_t)2 * MMA_BLOCK_K * LD + (async ? 4 : 2) * MMA_BWD_Q * LD) * 2 + 2 * MMA_BWD_Q * sizeof(float);
    }
    /* dQ kernel: Q, dO [64][LD]; K, V [nbuf][64][LD] (kv_pipeline); lse, delta [64] f32 */
    static size_t dq_bytes(bool async)
    {
        return (size_t)(async ? 6 : 4) * MMA_BLOCK_K * LD * 2 + 2 * MMA_BLOCK_Q * sizeof(float);
    }
};

template <int D, typename T>
__global__ void __launch_bounds__(MMA_THREADS) attention_dkdv_mma_kernel(attn_params p)
{
    typedef mma_bwd_smem<D> L;
    const int LD = L::LD;
    extern __shared__ float smem_raw[];
    T *ks = (T *)smem_raw, *vs = ks + MMA_BLOCK_K * LD, *q_bufs = vs + MMA_BLOCK_K * LD;
    T *do_bufs = q_bufs + mma_nbuf(p) * MMA_BWD_Q * LD;
    float *lse_s = (float *)(do_bufs + mma_nbuf(p) * MMA_BWD_Q * LD), *delta_s = lse_s + MMA_BWD_Q;

    int64_t seq = blockIdx.z, kvh = blockIdx.y, group = p.n_heads / p.n_kv_heads;
    int64_t start = p.cu[seq], len = p.cu[seq + 1] - start, k0 = (int64_t)blockIdx.x * MMA_BLOCK_K;
    if (k0 >= len) return;
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4, kr0 = warp * 16;
    mma_load_rows<D, T>(ks, LD, (const T *)p.k + start * p.ldk + kvh * D, p.ldk, k0, MMA_BLOCK_K, len, p.vec_k);
    mma_load_rows<D, T>(vs, LD, (const T *)p.v + start * p.ldv + kvh * D, p.ldv, k0, MMA_BLOCK_K, len, p.vec_v);

    float dk[D / 8][4], dv[D / 8][4];
#pragma unroll
    for (int nd = 0; nd < D / 8; nd++)
#pragma unroll
        for (int e = 0; e < 4; e++) dk[nd][e] = dv[nd][e] = 0.0f;
    int64_t keys_j[2] = {k0 + kr0 + g, k0 + kr0 + g + 8};

    int64_t last_k = (k0 + MMA_BLOCK_K < len ? k0 + MMA_BLOCK_K : len) - 1;
    int64_t q_lo = p.causal ? k0 : 0, q_hi = p.window > 0 ? last_k + p.window : len;
    if (q_hi > len) q_hi = len;
    /* One pass over (query head of the group, query tile) pairs; with 16-byte rows the next pair's Q
     * and dO tiles (cp.async) and lse/delta (registers) load while the current pair is used. */
    const int64_t h_end = (kvh + 1) * group;
    const bool async = p.vec_q && p.vec_do && !p.no_async;
    const T *qbase = (const T *)p.q + start * p.ldq, *dobase = (const T *)p.dout + start * p.lddout;
    float lse_next = 0.0f, delta_next = 0.0f;
    int buf = 0;
    if (q_lo < q_hi) {
        int64_t h = kvh * group;
        if (async) {
            mma_load_rows_async<D, T>(q_bufs, LD, qbase + h * D, p.ldq, q_lo, MMA_BWD_Q, len);
            mma_load_rows_async<D, T>(do_bufs, LD, dobase + h * D, p.lddout, q_lo, MMA_BWD_Q, len);
        }
        cp_async_commit();
        if (threadIdx.x < MMA_BWD_Q) {
            int64_t i = q_lo + threadIdx.x;
            lse_next = i < len ? p.lse[h * p.n_tokens + start + i] : 0.0f;
            delta_next = i < len ? p.delta[h * p.n_tokens + start + i] : 0.0f;
        }
    }
    for (int64_t h = kvh * group; h < h_end; h++) {
        for (int64_t q0 = q_lo; q0 < q_hi; q0 += MMA_BWD_Q) {
            int64_t nh = h, nq = q0 + MMA_BWD_Q;
            if (nq >= q_hi) {
                nh++;
                nq = q_lo;
            }
            bool more = nh < h_end;
            __syncthreads(); /* previous tiles fully used; K and V loaded */
            if (threadIdx.x < MMA_BWD_Q) {
                lse_s[threadIdx.x] = lse_next;
                delta_s[threadIdx.x] = delta_next;
                int64_t i = nq + threadIdx.x;
                if (more) {
                    lse_next = i < len ? p.lse[nh * p.n_tokens + start + i] : 0.0f;
                    delta_next = i < len ? p.delta[nh * p.n_tokens + start + i] : 0.0f;
                }
            }
            T *qs = q_bufs + buf * MMA_BWD_Q * LD, *dos = do_bufs + buf * MMA_BWD_Q * LD;
            if (async) {
                if (more) {
                    mma_load_rows_async<D, T>(q_bufs + (buf ^ 1) * MMA_BWD_Q * LD, LD, qbase + nh * D, p.ldq, nq, MMA_BWD_Q, len);
                    mma_load_rows_async<D, T>(do_bufs + (buf ^ 1) * MMA_BWD_Q * LD, LD, dobase + nh * D, p.lddout, nq, MMA_BWD_Q,
                                              len);
                }
                cp_async_commit();
                cp_async_wait<1>();
                buf ^= 1;
            } else {
                mma_load_rows<D, T>(qs, LD, qbase + h * D, p.ldq, q0, MMA_BWD_Q, len, p.vec_q);
                mma_load_rows<D, T>(dos, LD, dobase + h * D, p.lddout, q0, MMA_BWD_Q, len, p.vec_do);
            }
            __syncthreads();
            bool full = q0 + MMA_BWD_Q <= len && k0 + MMA_BLOCK_K <= len && p.window == 0 &&
                        (!p.causal || k0 + MMA_BLOCK_K - 1 <= q0);
            float st[MMA_BWD_Q / 8][4], dpt[MMA_BWD_Q / 8][4];
#pragma unroll
            for (int nt = 0; nt < MMA_BWD_Q / 8; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) st[nt][e] = dpt[nt][e] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++) {
                uint32_t ka[4] = {*(const uint32_t *)&ks[(kr0 + g) * LD + kk * 16 + t * 2],
                                  *(const uint32_t *)&ks[(kr0 + g + 8) * LD + kk * 16 + t * 2],
                                  *(const uint32_t *)&ks[(kr0 + g) * LD + kk * 16 + 8 + t * 2],
                                  *(const uint32_t *)&ks[(kr0 + g + 8) * LD + kk * 16 + 8 + t * 2]};
                uint32_t va[4] = {*(const uint32_t *)&vs[(kr0 + g) * LD + kk * 16 + t * 2],
                                  *(const uint32_t *)&vs[(kr0 + g + 8) * LD + kk * 16 + t * 2],
                                  *(const uint32_t *)&vs[(kr0 + g) * LD + kk * 16 + 8 + t * 2],
                                  *(const uint32_t *)&vs[(kr0 + g + 8) * LD + kk * 16 + 8 + t * 2]};
#pragma unroll
                for (int nt = 0; nt < MMA_BWD_Q / 8; nt++) {
                    mma16816<T>(st[nt], ka, *(const uint32_t *)&qs[(nt * 8 + g) * LD + kk * 16 + t * 2],
                                *(const uint32_t *)&qs[(nt * 8 + g) * LD + kk * 16 + 8 + t * 2]);
                    mma16816<T>(dpt[nt], va, *(const uint32_t *)&dos[(nt * 8 + g) * LD + kk * 16 + t * 2],
                                *(const uint32_t *)&dos[(nt * 8 + g) * LD + kk * 16 + 8 + t * 2]);
                }
            }
            /* st becomes P^T, dpt becomes dS^T (scaled), element by element. */
#pragma unroll
            for (int nt = 0; nt < MMA_BWD_Q / 8; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    int col = nt * 8 + t * 2 + (e & 1);
                    float prob = 0.0f, ds = 0.0f;
                    if (full || visible(p, q0 + col, keys_j[e >> 1], len)) {
                        float sc = cap_score(p, p.scale * st[nt][e]);
                        prob = expf(sc - lse_s[col]);
                        ds = prob * (dpt[nt][e] - delta_s[col]);
                        if (p.softcap > 0.0f) ds *= 1.0f - (sc / p.softcap) * (sc / p.softcap);
                        ds *= p.scale;
                    }
                    st[nt][e] = prob;
                    dpt[nt][e] = ds;
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
                    ldmatrix_b_trans<T>(b, &dos[(kq * 16) * LD + nd * 8], LD);
                    mma16816<T>(dv[nd], pa, b[0], b[1]);
                    mma16816<T>(dv[nd + 1], pa, b[2], b[3]);
                    ldmatrix_b_trans<T>(b, &qs[(kq * 16) * LD + nd * 8], LD);
                    mma16816<T>(dk[nd], sa, b[0], b[1]);
                    mma16816<T>(dk[nd + 1], sa, b[2], b[3]);
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        int64_t j = keys_j[r];
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
__global__ void __launch_bounds__(MMA_THREADS) attention_dq_mma_kernel(attn_params p, T *dq_out, int64_t lddq)
{
    typedef mma_bwd_smem<D> L;
    const int LD = L::LD;
    extern __shared__ float smem_raw[];
    T *qs = (T *)smem_raw, *dos = qs + MMA_BLOCK_Q * LD, *k_bufs = dos + MMA_BLOCK_Q * LD;
    T *v_bufs = k_bufs + mma_nbuf(p) * MMA_BLOCK_K * LD;
    float *lse_s = (float *)(v_bufs + mma_nbuf(p) * MMA_BLOCK_K * LD), *delta_s = lse_s + MMA_BLOCK_Q;

    int64_t seq = blockIdx.z, h = blockIdx.y, kvh = h / (p.n_heads / p.n_kv_heads);
    int64_t start = p.cu[seq], len = p.cu[seq + 1] - start, q0 = (int64_t)mma_heavy_first(p) * MMA_BLOCK_Q;
    if (q0 >= len) return;
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4, r0 = warp * 16;
    mma_load_rows<D, T>(qs, LD, (const T *)p.q + start * p.ldq + h * D, p.ldq, q0, MMA_BLOCK_Q, len, p.vec_q);
    mma_load_rows<D, T>(dos, LD, (const T *)p.dout + start * p.lddout + h * D, p.lddout, q0, MMA_BLOCK_Q, len, p.vec_do);
    if (threadIdx.x < MMA_BLOCK_Q) {
        int64_t i = q0 + threadIdx.x;
        lse_s[threadIdx.x] = i < len ? p.lse[h * p.n_tokens + start + i] : 0.0f;
        delta_s[threadIdx.x] = i < len ? p.delta[h * p.n_tokens + start + i] : 0.0f;
    }
    float dq[D / 8][4];
#pragma unroll
    for (int nd = 0; nd < D / 8; nd++) dq[nd][0] = dq[nd][1] = dq[nd][2] = dq[nd][3] = 0.0f;
    int rows[2] = {r0 + g, r0 + g + 8};

    int64_t last_q = q0 + MMA_BLOCK_Q < len ? q0 + MMA_BLOCK_Q : len;
    int64_t k_lo = p.window > 0 ? q0 - p.window + 1 : 0, k_hi = p.causal ? last_q : len;
    if (k_lo < 0) k_lo = 0;
    const T *kp = (const T *)p.k + start * p.ldk + kvh * D, *vp = (const T *)p.v + start * p.ldv + kvh * D;
    kv_pipeline<D, T> pipe = {k_bufs, v_bufs, LD, kp, vp, p.ldk, p.ldv, len, k_hi, p.vec_k && p.vec_v && !p.no_async, p.vec_k, p.vec_v, 0};
    bool rows_full = q0 + MMA_BLOCK_Q <= len && p.window == 0;
    pipe.start(k_lo - k_lo % MMA_BLOCK_K);
    for (int64_t k0 = k_lo - k_lo % MMA_BLOCK_K; k0 < k_hi; k0 += MMA_BLOCK_K) {
        T *ks, *vs;
        pipe.acquire(k0, &ks, &vs);
        bool full = rows_full && k0 + MMA_BLOCK_K <= len && (!p.causal || k0 + MMA_BLOCK_K - 1 <= q0);
        float s[MMA_BLOCK_K / 8][4], dp[MMA_BLOCK_K / 8][4];
#pragma unroll
        for (int nt = 0; nt < MMA_BLOCK_K / 8; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) s[nt][e] = dp[nt][e] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) {
            uint32_t qa[4] = {*(const uint32_t *)&qs[(r0 + g) * LD + kk * 16 + t * 2],
                              *(const uint32_t *)&qs[(r0 + g + 8) * LD + kk * 16 + t * 2],
                              *(const uint32_t *)&qs[(r0 + g) * LD + kk * 16 + 8 + t * 2],
                              *(const uint32_t *)&qs[(r0 + g + 8) * LD + kk * 16 + 8 + t * 2]};
            uint32_t da[4] = {*(const uint32_t *)&dos[(r0 + g) * LD + kk * 16 + t * 2],
                              *(const uint32_t *)&dos[(r0 + g + 8) * LD + kk * 16 + t * 2],
                              *(const uint32_t *)&dos[(r0 + g) * LD + kk * 16 + 8 + t * 2],
                              *(const uint32_t *)&dos[(r0 + g + 8) * LD + kk * 16 + 8 + t * 2]};
#pragma unroll
            for (int nt = 0; nt < MMA_BLOCK_K / 8; nt++) {
                mma16816<T>(s[nt], qa, *(const uint32_t *)&ks[(nt * 8 + g) * LD + kk * 16 + t * 2],
                            *(const uint32_t *)&ks[(nt * 8 + g) * LD + kk * 16 + 8 + t * 2]);
                mma16816<T>(dp[nt], da, *(const uint32_t *)&vs[(nt * 8 + g) * LD + kk * 16 + t * 2],
                            *(const uint32_t *)&vs[(nt * 8 + g) * LD + kk * 16 + 8 + t * 2]);
            }
        }
#pragma unroll
        for (int nt = 0; nt < MMA_BLOCK_K / 8; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int row = rows[e >> 1];
                float ds = 0.0f;
                if (full || visible(p, q0 + row, k0 + nt * 8 + t * 2 + (e & 1), len)) {
                    float sc = cap_score(p, p.scale * s[nt][e]);
                    float prob = expf(sc - lse_s[row]);
                    ds = prob * (dp[nt][e] - delta_s[row]);
                    if (p.softcap > 0.0f) ds *= 1.0f - (sc / p.softcap) * (sc / p.softcap);
                    ds *= p.scale;
                }
                s[nt][e] = ds;
            }
#pragma unroll
        for (int kk = 0; kk < MMA_BLOCK_K / 16; kk++) {
            uint32_t sa[4] = {pack2<T>(s[2 * kk][0], s[2 * kk][1]), pack2<T>(s[2 * kk][2], s[2 * kk][3]),
                              pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]), pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
            for (int nd = 0; nd < D / 8; nd += 2) {
                uint32_t b[4];
                ldmatrix_b_trans<T>(b, &ks[(kk * 16) * LD + nd * 8], LD);
                mma16816<T>(dq[nd], sa, b[0], b[1]);
                mma16816<T>(dq[nd + 1], sa, b[2], b[3]);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        int64_t i = q0 + rows[r];
        if (i >= len) continue;
        T *dst = dq_out + (start + i) * lddq + h * D;
#pragma unroll
        for (int nd = 0; nd < D / 8; nd++) {
            dst[nd * 8 + t * 2] = from_f32<T>(dq[nd][2 * r]);
            dst[nd * 8 + t * 2 + 1] = from_f32<T>(dq[nd][2 * r + 1]);
        }
    }
}
#endif

#endif
