/* The training attention backward on Hopper's warpgroup MMA (wgmma.mma_async, sm_90a only),
 * attention_bwd_fused_kernel's partition on attention_wgmma.cuh's operands: a block of two warpgroups
 * takes 128 keys of one kv head (64 a warpgroup: M = 64 per wgmma) and loops over the group's query
 * heads and 64-query tiles. Per tile, each warpgroup for its keys:
 *   S^T = K Q^T and dP^T = V dO^T (both operands from shared memory, K-major);
 *   P^T = 2^(S^T scale log2(e) - lse2), dS^T = P^T (dP^T - delta) scale in registers (the accumulator
 *     layout is the A fragment's, as for P in the forward);
 *   dV += P^T dO and dK += dS^T Q with P^T, dS^T as register A operands and dO, Q read down their
 *     columns (N-major, the transpose bit); dK and dV stay in registers for the whole block;
 *   dS^T also goes to shared memory, and after a block barrier each warpgroup takes half of dQ's
 *     columns: dQ = dS K over all 128 keys (dS^T read as an M-major A, K as an N-major B), added to
 *     p.dq_acc (f32) with 8-byte atomics, as the fused kernel does.
 * Q and dO tiles are double-buffered with cp.async (the next tile queued once S^T and dP^T are issued).
 * Under a causal mask the first query tile of a key tile sees none of the second warpgroup's keys:
 * that warpgroup skips S^T and dP^T (its dV, dK products then add zeros), and dQ takes the first 64 keys
 * only.
 *
 * Shared memory, all in the 128-byte-swizzled layout of attention_wgmma.cuh (slabs of 64 columns):
 * K, V [128][D]; Q, dO [2][64][D]; dS^T [128 keys][64 queries]; lse (base 2), delta [2][64] f32.
 * 145 KiB at D = 128, 81 KiB at 64: one block of 8 warps an SM.
 *
 * Same contract as attention_bwd_fused_kernel without its head split: packed sequences, GQA, causal or
 * not, windows; softcap goes to the mma.sync kernel. Compiled only where the sm_90a features are. */
#ifndef FINCH_GPU_ATTENTION_WGMMA_BWD_CUH
#define FINCH_GPU_ATTENTION_WGMMA_BWD_CUH

#if FINCH_GPU_CUDA

#define WGB_KEYS 128 /* keys a block (64 a warpgroup) */
#define WGB_Q 64     /* queries a tile */

template <int D> struct wgb_tiles {
    static const int KV_BYTES = WGB_KEYS * D * 2, KV_SLAB = WGB_KEYS * 128; /* a K or V tile, its 64 columns */
    static const int QT_BYTES = WGB_Q * D * 2, QT_SLAB = WGB_Q * 128;       /* a Q or dO tile */
    static const int DS_BYTES = WGB_KEYS * WGB_Q * 2;                       /* dS^T: one slab of 128 rows */
    static size_t bytes() { return (size_t)2 * KV_BYTES + 4 * QT_BYTES + DS_BYTES + 4 * WGB_Q * sizeof(float) + 1024; }
};

#if FINCH_WGMMA
/* P^T of one tile for a thread's keys key, key + 8 (rows g, g + 8 of its warp) and queries
 * q0 + 8 n + 2 t (+ 1), lse_s (base 2) indexed by the query in the tile: pr in the accumulator layout
 * of s (which is only read: wgmma alone writes it), and pf the A fragments of dV's 4 k steps. */
template <bool MASK, typename T>
__device__ __forceinline__ void wgb_probs(const attn_params &p, const float (&s)[32], const float *lse_s, int q0, int key, int len,
                                          int t, float (&pr)[32], uint32_t (&pf)[4][4])
{
#pragma unroll
    for (int n = 0; n < 8; n++) {
        float2 l2 = *(const float2 *)(lse_s + 8 * n + 2 * t);
#pragma unroll
        for (int r = 0; r < 2; r++) {
#pragma unroll
            for (int c = 0; c < 2; c++) {
                bool vis = !MASK || mma_visible(p, q0 + 8 * n + 2 * t + c, key + 8 * r, len, len, 0);
                pr[4 * n + 2 * r + c] = mma_prob<MASK>(mma_score2<false>(p, s[4 * n + 2 * r + c]), c ? l2.y : l2.x, vis);
            }
            pf[n / 2][2 * (n % 2) + r] = pack2<T>(pr[4 * n + 2 * r], pr[4 * n + 2 * r + 1]);
        }
    }
}

/* dS^T = P^T (dP^T - delta) scale of the same tile: df receives the A fragments of dK's 4 k steps, and
 * dS^T also goes to the swizzled [key][query] tile at ds_row (row g of the warp; chunk n of the row at
 * n ^ g). */
template <typename T>
__device__ __forceinline__ void wgb_dscores(const attn_params &p, const float (&pr)[32], const float (&dp)[32], const float *delta_s,
                                            int g, int t, uint32_t (&df)[4][4], char *ds_row)
{
#pragma unroll
    for (int n = 0; n < 8; n++) {
        float2 d2 = *(const float2 *)(delta_s + 8 * n + 2 * t);
#pragma unroll
        for (int r = 0; r < 2; r++) {
            float a = mma_ds(pr[4 * n + 2 * r], dp[4 * n + 2 * r], d2.x) * p.scale;
            float b = mma_ds(pr[4 * n + 2 * r + 1], dp[4 * n + 2 * r + 1], d2.y) * p.scale;
            df[n / 2][2 * (n % 2) + r] = pack2<T>(a, b);
            *(uint32_t *)(ds_row + r * 8 * 128 + ((n ^ g) << 4) + 4 * t) = df[n / 2][2 * (n % 2) + r];
        }
    }
}
#endif /* FINCH_WGMMA */

template <int D, typename T>
__global__ void __launch_bounds__(WG_THREADS, 1) attention_backward_wgmma_kernel(attn_params p)
{
#if FINCH_WGMMA
    typedef wgb_tiles<D> L;
    const int DQ = D / 2; /* dQ columns a warpgroup */
    extern __shared__ float smem_raw[];
    uint32_t raw = (uint32_t)__cvta_generic_to_shared(smem_raw), pad = (1024u - (raw & 1023u)) & 1023u;
    char *ks = (char *)smem_raw + pad, *vs = ks + L::KV_BYTES, *q_bufs = vs + L::KV_BYTES, *do_bufs = q_bufs + 2 * L::QT_BYTES;
    char *dss = do_bufs + 2 * L::QT_BYTES;
    float *lse_s = (float *)(dss + L::DS_BYTES), *delta_s = lse_s + 2 * WGB_Q;
    const uint32_t k_addr = raw + pad, v_addr = k_addr + L::KV_BYTES, q_addr = v_addr + L::KV_BYTES;
    const uint32_t do_addr = q_addr + 2 * L::QT_BYTES, ds_addr = do_addr + 2 * L::QT_BYTES;

    const mma_block blk = mma_block_order(p, true);
    int64_t seq = blk.z, kvh = blk.y, group = p.n_heads / p.n_kv_heads;
    int64_t start = p.cu[seq];
    int len = (int)(p.cu[seq + 1] - start), k0 = (int)blk.x * WGB_KEYS;
    if (k0 >= len) return;
    int wg = threadIdx.x / 128, warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const int kw = 64 * wg;                  /* this warpgroup's first key in the tile */
    const int krow = kw + 16 * warp + g;     /* this thread's keys in the tile: krow, krow + 8 */

    wg_load_tile<D, T>(ks, (const T *)p.k + start * p.ldk + kvh * D, p.ldk, k0, len);
    wg_load_tile<D, T>(vs, (const T *)p.v + start * p.ldv + kvh * D, p.ldv, k0, len);
    int q_lo, q_hi;
    mma_bwd_query_range(p, k0, WGB_KEYS, len, &q_lo, &q_hi);
    const T *qbase = (const T *)p.q + start * p.ldq, *dobase = (const T *)p.dout + start * p.lddout;
    int64_t h = kvh * group, h_end = h + group;
    int q0 = q_lo, buf = 0;
    if (q_lo < q_hi) {
        wg_load_tile<D, T, WGB_Q>(q_bufs, qbase + h * D, p.ldq, q0, len);
        wg_load_tile<D, T, WGB_Q>(do_bufs, dobase + h * D, p.lddout, q0, len);
        if (threadIdx.x < WGB_Q) {
            int i = q0 + threadIdx.x;
            lse_s[threadIdx.x] = i < len ? p.lse[h * p.n_tokens + start + i] * MMA_LOG2E : 0.0f;
            delta_s[threadIdx.x] = i < len ? p.delta[h * p.n_tokens + start + i] : 0.0f;
        }
    }
    cp_async_commit();

    /* K and V rows of this warpgroup as K-major A operands (k step 0); K read down its columns as dQ's
     * N-major B: this warpgroup's DQ columns start in slab (wg DQ) / 64, at byte 2 ((wg DQ) % 64). */
    const uint64_t k_desc = wg_desc(k_addr + kw * 128, 16, 1024), v_desc = wg_desc(v_addr + kw * 128, 16, 1024);
    const uint32_t kq_addr = k_addr + (wg * DQ / 64) * L::KV_SLAB + (wg * DQ % 64) * 2;
    float dk[D / 2], dv[D / 2];
#pragma unroll
    for (int i = 0; i < D / 2; i++) dk[i] = dv[i] = 0.0f;

    while (q_lo < q_hi && h < h_end) {
        /* Q and dO of this tile (and lse, delta) resident; the previous tile's products all done, so the
         * other buffers and dS^T are free. */
        cp_async_wait<0>();
        wg_fence_async_smem();
        __syncthreads();
        int64_t nh;
        int nq;
        mma_bwd_next_tile(h, q0, WGB_Q, q_lo, q_hi, &nh, &nq);
        const bool more = nh < h_end;
        const uint32_t qt = q_addr + buf * L::QT_BYTES, dot = do_addr + buf * L::QT_BYTES;
        /* whether any of the tile's queries sees this warpgroup's keys (causal: the first tile may not); if
         * not, S^T and dP^T are not computed */
        const bool active = !p.causal || k0 + kw <= q0 + WGB_Q - 1;
        float s[32], dp[32];
        wg_zero(s);
        wg_zero(dp);
        if (active) {
            wg_fence();
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++) {
                uint32_t kv_step = (kk / 4) * L::KV_SLAB + (kk % 4) * 32, q_step = (kk / 4) * L::QT_SLAB + (kk % 4) * 32;
                wg_ss<64, 0, 0, T>(s, k_desc + (kv_step >> 4), wg_desc(qt + q_step, 16, 1024), kk > 0);
            }
            wg_commit();
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++) {
                uint32_t kv_step = (kk / 4) * L::KV_SLAB + (kk % 4) * 32, q_step = (kk / 4) * L::QT_SLAB + (kk % 4) * 32;
                wg_ss<64, 0, 0, T>(dp, v_desc + (kv_step >> 4), wg_desc(dot + q_step, 16, 1024), kk > 0);
            }
            wg_commit();
        }
        if (more) {
            wg_load_tile<D, T, WGB_Q>(q_bufs + (buf ^ 1) * L::QT_BYTES, qbase + nh * D, p.ldq, nq, len);
            wg_load_tile<D, T, WGB_Q>(do_bufs + (buf ^ 1) * L::QT_BYTES, dobase + nh * D, p.lddout, nq, len);
        }
        cp_async_commit();
        float lse_next, delta_next;
        mma_bwd_row_stats(p, more, nh, nq, WGB_Q, len, start, lse_next, delta_next);

        /* P^T, dS^T (zeros where the warpgroup issued nothing: every score is masked), dV += P^T dO,
         * dK += dS^T Q. The waits and products stay outside any branch on `active`: ptxas serialises
         * wgmma waited for or issued in a divergent path (C7514, C7520). */
        uint32_t pf[4][4], df[4][4];
        const float *ls = lse_s + buf * WGB_Q, *ds = delta_s + buf * WGB_Q;
        bool full = q0 + WGB_Q <= len && k0 + kw + 64 <= len && p.window == 0 && (!p.causal || k0 + kw + 63 <= q0);
        float pr[32];
        wg_wait<0>();
        wg_hold(s);
        if (full) wgb_probs<false, T>(p, s, ls, q0, k0 + krow, len, t, pr, pf);
        else wgb_probs<true, T>(p, s, ls, q0, k0 + krow, len, t, pr, pf);
        wg_hold(dp);
        wgb_dscores<T>(p, pr, dp, ds, g, t, df, dss + krow * 128);
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < WGB_Q / 16; kk++) wg_rs<D, T>(dv, pf[kk], wg_desc(dot + kk * 16 * 128, L::QT_SLAB, 1024));
#pragma unroll
        for (int kk = 0; kk < WGB_Q / 16; kk++) wg_rs<D, T>(dk, df[kk], wg_desc(qt + kk * 16 * 128, L::QT_SLAB, 1024));
        wg_commit();
        if (more && threadIdx.x < WGB_Q) {
            lse_s[(buf ^ 1) * WGB_Q + threadIdx.x] = lse_next;
            delta_s[(buf ^ 1) * WGB_Q + threadIdx.x] = delta_next;
        }
        wg_fence_async_smem();
        __syncthreads(); /* dS^T of both warpgroups written */
        wg_wait<0>(); /* dV and dK done: pf and df are free before dq is live (else ptxas serialises) */
        wg_hold(dk);
        wg_hold(dv);
        wg_hold(pf);
        wg_hold(df);

        /* dQ (the tile's queries x this warpgroup's DQ columns) = dS K, over the keys the queries see:
         * all 128, or under a causal mask on the first tile only the first 64. */
        const bool half = p.causal && q0 + WGB_Q - 1 < k0 + 64;
        float dq[DQ / 2];
        wg_zero(dq);
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < 4; kk++)
            wg_ss<DQ, 1, 1, T>(dq, wg_desc(ds_addr + kk * 16 * 128, L::DS_BYTES, 1024), wg_desc(kq_addr + kk * 16 * 128, L::KV_SLAB, 1024),
                               kk > 0);
        if (!half) {
#pragma unroll
            for (int kk = 4; kk < WGB_KEYS / 16; kk++)
                wg_ss<DQ, 1, 1, T>(dq, wg_desc(ds_addr + kk * 16 * 128, L::DS_BYTES, 1024),
                                   wg_desc(kq_addr + kk * 16 * 128, L::KV_SLAB, 1024), 1);
        }
        wg_commit();
        wg_wait<0>();
        wg_hold(dq);
        float *dq_acc = p.dq_acc + (start + q0 + 16 * warp + g) * (p.n_heads * D) + h * D + wg * DQ + 2 * t;
#pragma unroll
        for (int r = 0; r < 2; r++) {
            if (q0 + 16 * warp + g + 8 * r >= len) continue;
            float *row = dq_acc + (int64_t)8 * r * (p.n_heads * D);
#pragma unroll
            for (int n = 0; n < DQ / 8; n++) atomicAdd((float2 *)(row + 8 * n), make_float2(dq[4 * n + 2 * r], dq[4 * n + 2 * r + 1]));
        }
        h = nh;
        q0 = nq;
        buf ^= 1;
    }
    cp_async_wait<0>(); /* nothing left in flight when no query tile was visited */

#pragma unroll
    for (int r = 0; r < 2; r++) {
        int j = k0 + krow + 8 * r;
        if (j >= len) continue;
        T *dkr = (T *)p.dk + (start + j) * p.lddk + kvh * D + 2 * t, *dvr = (T *)p.dv + (start + j) * p.lddv + kvh * D + 2 * t;
#pragma unroll
        for (int n = 0; n < D / 8; n++) {
            dkr[8 * n] = from_f32<T>(dk[4 * n + 2 * r]);
            dkr[8 * n + 1] = from_f32<T>(dk[4 * n + 2 * r + 1]);
            dvr[8 * n] = from_f32<T>(dv[4 * n + 2 * r]);
            dvr[8 * n + 1] = from_f32<T>(dv[4 * n + 2 * r + 1]);
        }
    }
#else
    (void)p;
#endif
}

#endif /* FINCH_GPU_CUDA */
#endif
