/* The training attention forward on Hopper's warpgroup MMA (wgmma.mma_async, sm_90a only): a block of
 * two warpgroups takes 128 query rows (64 each: M = 64 per wgmma) of one head and loops over 128-key
 * tiles. S = Q K^T reads both operands from shared memory; the online softmax runs on the S
 * accumulators in registers (base 2, as in attention_mma.cuh); O += P V takes P from registers (the
 * 16-bit probabilities packed in place: the accumulator's layout per warp is the A fragment's) and V
 * from shared memory read down its columns (the transpose bit). Everything else is
 * attention_forward_mma_kernel's contract: packed sequences, GQA, causal or not, windows, key/value
 * caches (seq_span_of), O and the f32 lse (natural log) that the backward reads.
 *
 * Shared memory holds Q, two K tiles and two V tiles in the canonical 128-byte-swizzled layout: a tile
 * of R rows x D columns is D / 64 slabs of R rows x 128 bytes (64 elements), each row's 16-byte chunk c
 * stored at chunk c ^ (row % 8); every slab starts on a 1024-byte boundary (the swizzle repeats every
 * 8 rows of 128 bytes). K-major operands (Q as A, K as B) take descriptors with the 8-row-group stride
 * (SBO) 1024; a 16-wide k step advances the start address 32 bytes inside the swizzle atom, and every
 * 64 columns moves to the next slab. V as an N-major B: SBO 1024 (the next 8 keys), LBO the slab size
 * (the next 64 columns of head_dim).
 *
 * Tiles arrive by cp.async (all 256 threads, the swizzle applied to the destination), double-buffered.
 * P V of tile j is issued after S of tile j + 1, so the tensor cores run it while the softmax of
 * tile j + 1 waits for S only (FINCH_CUDA_ATTENTION=wgserial waits for both first). V therefore loads
 * one tile behind K: iteration j reads K_j and V_{j-1} and queues K_{j+1} and V_j once its products are
 * issued; one barrier a tile.
 *
 * Compiled only where the sm_90a features are (__CUDA_ARCH_FEAT_SM90_ALL); elsewhere the kernel is
 * empty and the host never launches it (wgmma_forward_built). */
#ifndef FINCH_GPU_ATTENTION_WGMMA_CUH
#define FINCH_GPU_ATTENTION_WGMMA_CUH

#if FINCH_GPU_CUDA

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define FINCH_WGMMA 1
#else
#define FINCH_WGMMA 0
#endif

#define WG_ROWS 128   /* query rows a block (two warpgroups of 64) */
#define WG_KEYS 128   /* keys a tile */
#define WG_THREADS 256

template <int D> struct wg_tiles {
    static const int TILE_BYTES = WG_KEYS * D * 2;   /* a K or V tile; Q is as large (WG_ROWS = WG_KEYS) */
    static const int SLAB_BYTES = WG_KEYS * 128;     /* 64 columns of a tile */
    /* Q, K x 2, V x 2, and room to align the start to 1024 bytes */
    static size_t bytes() { return (size_t)5 * TILE_BYTES + 1024; }
};

#if FINCH_WGMMA
/* A shared-memory matrix descriptor, 128-byte swizzle: start address, leading and stride byte
 * offsets, each stored >> 4 in 14 bits; bits 62-63 = 1 selects the 128-byte swizzle. */
__device__ __forceinline__ uint64_t wg_desc(uint32_t addr, uint32_t lbo, uint32_t sbo)
{
    return (uint64_t)((addr & 0x3FFFF) >> 4) | (uint64_t)((lbo & 0x3FFFF) >> 4) << 16 | (uint64_t)((sbo & 0x3FFFF) >> 4) << 32 |
           1ull << 62;
}

__device__ __forceinline__ void wg_fence(void) { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_commit(void) { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void wg_wait(void)
{
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
/* Keeps the compiler from moving reads or writes of registers an in-flight wgmma owns across the
 * fence or wait before it. */
template <int N> __device__ __forceinline__ void wg_hold(float (&r)[N])
{
#pragma unroll
    for (int i = 0; i < N; i++) asm volatile("" : "+f"(r[i])::"memory");
}
template <int N> __device__ __forceinline__ void wg_hold(uint32_t (&r)[N][4])
{
#pragma unroll
    for (int i = 0; i < N; i++) asm volatile("" : "+r"(r[i][0]), "+r"(r[i][1]), "+r"(r[i][2]), "+r"(r[i][3])::"memory");
}

/* Zeroes an accumulator at the top of the loop it is used in: its first product overwrites it (acc = 0),
 * but without a definition here ptxas keeps it live around the loop (and serialises the wgmma). */
template <int N> __device__ __forceinline__ void wg_zero(float (&r)[N])
{
#pragma unroll
    for (int i = 0; i < N; i++) r[i] = 0.0f;
}

#define WG_F4(d, i) "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3])
#define WG_F16(d, i) WG_F4(d, i), WG_F4(d, i + 4), WG_F4(d, i + 8), WG_F4(d, i + 12)
#define WG_F32(d) WG_F16(d, 0), WG_F16(d, 16)
#define WG_F64(d) WG_F32(d), WG_F16(d, 32), WG_F16(d, 48)
#define WG_D16 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}"
#define WG_D32 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, " \
               "%23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define WG_D64 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, " \
               "%23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, "   \
               "%44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"

/* d (64 x N, f32) = a b (+ d when acc): a and b from descriptors. TA: a is M-major (read down its
 * columns: the transpose bit), else K-major; TB likewise for b (N-major). The operand numbers of the
 * descriptors, acc and the two transpose immediates follow N / 2 accumulator registers. */
#define WG_F128_OUT(d) WG_F64(d)
#define WG_F64_OUT(d) WG_F32(d)
#define WG_F32_OUT(d) WG_F16(d, 0)
#define WG_SS_OPS_128 "%64, %65, p, 1, 1, %67, %68"
#define WG_SS_P_128 "66"
#define WG_SS_OPS_64 "%32, %33, p, 1, 1, %35, %36"
#define WG_SS_P_64 "34"
#define WG_SS_OPS_32 "%16, %17, p, 1, 1, %19, %20"
#define WG_SS_P_32 "18"
#define WG_SS(N, DN, TY)                                                                                        \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" WG_SS_P_##N ", 0;\n"                                     \
                 "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." TY "." TY " " DN ", " WG_SS_OPS_##N ";\n}\n"   \
                 : WG_F##N##_OUT(d)                                                                             \
                 : "l"(da), "l"(db), "r"(acc), "n"(TA), "n"(TB))
template <int N, int TA, int TB, typename T>
__device__ __forceinline__ void wg_ss(float (&d)[N / 2], uint64_t da, uint64_t db, int acc)
{
    static_assert(N == 128 || N == 64 || N == 32, "wg_ss: N is 32, 64 or 128");
    if constexpr (std::is_same<T, gpu_bf16>::value) {
        if constexpr (N == 128) WG_SS(128, WG_D64, "bf16");
        else if constexpr (N == 64) WG_SS(64, WG_D32, "bf16");
        else WG_SS(32, WG_D16, "bf16");
    } else {
        if constexpr (N == 128) WG_SS(128, WG_D64, "f16");
        else if constexpr (N == 64) WG_SS(64, WG_D32, "f16");
        else WG_SS(32, WG_D16, "f16");
    }
}

/* d (64 x N, f32) += a b: a (64 x 16) from registers, b (16 x N) from an N-major descriptor. */
#define WG_RS(N, DN, F, TY)                                                                                     \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" #F ", 0;\n"                                              \
                 "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." TY "." TY " " DN ", {%" WG_A0(N) "}, %" WG_B(N)  \
                 ", p, 1, 1, 1;\n}\n"                                                                           \
                 : WG_F##N##_OUT(d)                                                                             \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1))
#define WG_A0(N) WG_A0_##N
#define WG_A0_128 "64, %65, %66, %67"
#define WG_A0_64 "32, %33, %34, %35"
#define WG_B(N) WG_B_##N
#define WG_B_128 "68"
#define WG_B_64 "36"
template <typename T> __device__ __forceinline__ void wg_rs_n128(float (&d)[64], const uint32_t (&a)[4], uint64_t db)
{
    if constexpr (std::is_same<T, gpu_bf16>::value) WG_RS(128, WG_D64, 69, "bf16");
    else WG_RS(128, WG_D64, 69, "f16");
}
template <typename T> __device__ __forceinline__ void wg_rs_n64(float (&d)[32], const uint32_t (&a)[4], uint64_t db)
{
    if constexpr (std::is_same<T, gpu_bf16>::value) WG_RS(64, WG_D32, 37, "bf16");
    else WG_RS(64, WG_D32, 37, "f16");
}
template <int D, typename T> __device__ __forceinline__ void wg_rs(float (&d)[D / 2], const uint32_t (&a)[4], uint64_t db)
{
    if constexpr (D == 128) wg_rs_n128<T>(d, a, db);
    else wg_rs_n64<T>(d, a, db);
}

/* Writes by the generic proxy (cp.async included) visible to the async proxy (wgmma's operand reads). */
__device__ __forceinline__ void wg_fence_async_smem(void) { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

/* ROWS rows (row0.. of src, row stride ld; rows at or past len zero-filled) x D columns into a
 * swizzled tile at dst, queued with cp.async by all threads (the caller commits). A thread keeps one
 * 16-byte column chunk c and takes rows r, r + RS, ...: RS is a multiple of 8, so the chunk's swizzled
 * place in each row is the same and the addresses step by constants. */
template <int D, typename T, int ROWS = WG_KEYS>
__device__ __forceinline__ void wg_load_tile(char *dst, const T *src, int64_t ld, int row0, int len)
{
    const int C = D / 8, RS = WG_THREADS / C, N = ROWS / RS; /* chunks a row, rows a pass, passes */
    int r = threadIdx.x / C, c = threadIdx.x % C;
    char *d = dst + (c / 8) * (ROWS * 128) + r * 128 + (((c % 8) ^ (r % 8)) << 4);
    const T *g = src + (int64_t)(row0 + r) * ld + c * 8;
    int64_t step = (int64_t)RS * ld;
    if (row0 + ROWS <= len) {
#pragma unroll
        for (int it = 0; it < N; it++) cp_async16(d + it * RS * 128, g + it * step, true);
    } else {
#pragma unroll
        for (int it = 0; it < N; it++) {
            bool ok = row0 + r + it * RS < len;
            cp_async16(d + it * RS * 128, ok ? g + it * step : src, ok);
        }
    }
}
#endif /* FINCH_WGMMA */

/* The online softmax step for one tile: s holds this thread's raw scores q.k of rows row and row + 8
 * (16 n-chunks of 8 keys from k0, columns 2t, 2t + 1 of each); mx (base-2 units) and the partial row
 * sums l are updated, alpha is the factor o must be scaled by, and p_frag receives the probabilities
 * as the A fragments of P V's 8 k steps. s is only read: wgmma alone defines it, so the P V still in
 * flight is not serialised against it. MASK: the tile needs the mask (else every score is visible and
 * the scale folds into the exponent's fma; the caller guarantees scale > 0). Separate instances keep
 * each path free of branches. Maxima and sums run as two chains a row (even and odd n). */
template <bool MASK, typename T>
__device__ __forceinline__ void wg_softmax(const attn_params &p, const float (&s)[64], float (&mx)[2], float (&l)[2],
                                           float (&alpha)[2], uint32_t (&p_frag)[WG_KEYS / 16][4], int row, int k0, int t,
                                           int len, int klen, int off)
{
    const float c2 = p.scale * MMA_LOG2E;
    float base[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        float m2[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int n = 0; n < 16; n++)
#pragma unroll
            for (int c = 0; c < 2; c++) {
                float x = s[4 * n + 2 * r + c];
                if (MASK) x = mma_visible(p, row + 8 * r, k0 + 8 * n + 2 * t + c, len, klen, off) ? x * c2 : -INFINITY;
                m2[n % 2] = fmaxf(m2[n % 2], x);
            }
        float tile_max = fmaxf(m2[0], m2[1]);
        if (!MASK) tile_max *= c2;
        tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
        tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
        float new_max = fmaxf(mx[r], tile_max);
        base[r] = new_max == -INFINITY ? 0.0f : new_max; /* a row with nothing visible yet stays 0 */
        alpha[r] = exp2_fast(mx[r] - base[r]);
        mx[r] = new_max;
    }
    float sum[2][2] = {{0.0f, 0.0f}, {0.0f, 0.0f}};
#pragma unroll
    for (int n = 0; n < 16; n++)
#pragma unroll
        for (int r = 0; r < 2; r++) {
            float e[2];
#pragma unroll
            for (int c = 0; c < 2; c++) {
                float x = s[4 * n + 2 * r + c];
                if (MASK) /* 2^-inf = 0 */
                    e[c] = exp2_fast(mma_visible(p, row + 8 * r, k0 + 8 * n + 2 * t + c, len, klen, off) ? x * c2 - base[r] : -INFINITY);
                else e[c] = exp2_fast(fmaf(x, c2, -base[r]));
                sum[r][n % 2] += e[c];
            }
            /* A fragment of k step n / 2: rows g, g + 8 (r) and keys 2t (even n) or 8 + 2t (odd n) */
            p_frag[n / 2][2 * (n % 2) + r] = pack2<T>(e[0], e[1]);
        }
    l[0] = l[0] * alpha[0] + (sum[0][0] + sum[0][1]);
    l[1] = l[1] * alpha[1] + (sum[1][0] + sum[1][1]);
}

template <int D, typename T, bool OVERLAP>
__global__ void __launch_bounds__(WG_THREADS, 1) attention_forward_wgmma_kernel(attn_params p)
{
#if FINCH_WGMMA
    typedef wg_tiles<D> L;
    const uint32_t v_lbo = L::SLAB_BYTES, v_sbo = 1024; /* V N-major: LBO the 64-column slab, SBO eight rows */
    extern __shared__ float smem_raw[];
    uint32_t raw = (uint32_t)__cvta_generic_to_shared(smem_raw), pad = (1024u - (raw & 1023u)) & 1023u;
    char *qs = (char *)smem_raw + pad, *kbuf = qs + L::TILE_BYTES, *vbuf = kbuf + 2 * L::TILE_BYTES;
    const uint32_t q_addr = raw + pad, k_addr = q_addr + L::TILE_BYTES, v_addr = k_addr + 2 * L::TILE_BYTES;

    const mma_fwd_tile f = mma_forward_tile(p, WG_ROWS);
    const seq_span &sp = f.sp;
    int64_t h = f.h, kvh = f.kvh, start = sp.q_start;
    int len = (int)sp.q_len, klen = (int)sp.k_len, off = (int)sp.off, q0 = f.q0;
    if (q0 >= len) return;
    int wg = threadIdx.x / 128, warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    int r0 = 64 * wg;                    /* this warpgroup's first row in the tile */
    int row = q0 + r0 + 16 * warp + g;   /* this thread's rows: row, row + 8 */

    int last_q = q0 + WG_ROWS < len ? q0 + WG_ROWS : len;
    int64_t k_lo64, k_hi64;
    key_range(p, sp, q0, last_q, &k_lo64, &k_hi64);
    int k_first = (int)k_lo64 - (int)k_lo64 % WG_KEYS, k_hi = (int)k_hi64;
    int n_tiles = k_hi > k_first ? (k_hi - k_first + WG_KEYS - 1) / WG_KEYS : 0;
    const T *kp = (const T *)p.k + sp.k_start * p.ldk + kvh * D, *vp = (const T *)p.v + sp.k_start * p.ldv + kvh * D;

    wg_load_tile<D, T>(qs, (const T *)p.q + start * p.ldq + h * D, p.ldq, q0, len);
    if (n_tiles > 0) wg_load_tile<D, T>(kbuf, kp, p.ldk, k_first, klen);
    cp_async_commit();

    /* Q's K-major descriptor at k step 0 (this warpgroup's 64 rows). */
    const uint64_t q_desc = wg_desc(q_addr + r0 * 128, 16, 1024);
    float o[D / 2], s[64], mx[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
    uint32_t pf[WG_KEYS / 16][4]; /* P of the previous tile: A fragments of its 8 k steps */
#pragma unroll
    for (int i = 0; i < D / 2; i++) o[i] = 0.0f;
#pragma unroll
    for (int i = 0; i < 64; i++) s[i] = 0.0f;
#pragma unroll
    for (int i = 0; i < WG_KEYS / 16; i++) pf[i][0] = pf[i][1] = pf[i][2] = pf[i][3] = 0u;
    const bool rows_full = q0 + r0 + 64 <= len && p.window == 0 && p.scale > 0.0f;

    for (int j = 0; j < n_tiles; j++) {
        int k0 = k_first + j * WG_KEYS;
        /* The one group in flight holds K_j (with Q or V_{j-1}); the proxy fence comes before the next
         * loads are queued, so it waits for nothing else. After the barrier both warpgroups are also
         * done with K_{j-1} and V_{j-2}, whose buffers take K_{j+1} and V_j below. */
        cp_async_wait<0>();
        wg_fence_async_smem();
        __syncthreads();

        wg_fence();
        const uint32_t kt = k_addr + (j & 1) * L::TILE_BYTES;
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) {
            uint32_t step = (kk / 4) * L::SLAB_BYTES + (kk % 4) * 32;
            wg_ss<128, 0, 0, T>(s, q_desc + (step >> 4), wg_desc(kt + step, 16, 1024), kk > 0);
        }
        wg_commit();
        if (j > 0) {
            const uint32_t vt = v_addr + ((j - 1) & 1) * L::TILE_BYTES;
#pragma unroll
            for (int kk = 0; kk < WG_KEYS / 16; kk++) wg_rs<D, T>(o, pf[kk], wg_desc(vt + kk * 16 * 128, v_lbo, v_sbo));
        }
        wg_commit(); /* empty at j = 0: the waits below stay the same on every iteration */
        if (j + 1 < n_tiles) wg_load_tile<D, T>(kbuf + ((j + 1) & 1) * L::TILE_BYTES, kp, p.ldk, k0 + WG_KEYS, klen);
        wg_load_tile<D, T>(vbuf + (j & 1) * L::TILE_BYTES, vp, p.ldv, k0, klen);
        cp_async_commit();
        if (OVERLAP) wg_wait<1>(); /* S_j is in s */
        else wg_wait<0>();
        wg_hold(s);

        bool full = rows_full && k0 + WG_KEYS <= klen && (!p.causal || k0 + WG_KEYS - 1 <= q0 + r0 + off);
        float alpha[2];
        uint32_t pn[WG_KEYS / 16][4];
        if (full) wg_softmax<false, T>(p, s, mx, l, alpha, pn, row, k0, t, len, klen, off);
        else wg_softmax<true, T>(p, s, mx, l, alpha, pn, row, k0, t, len, klen, off);
        if (OVERLAP) wg_wait<0>(); /* P_{j-1} V_{j-1} is in o */
        wg_hold(o);
        wg_hold(pf);
#pragma unroll
        for (int n = 0; n < D / 8; n++) {
            o[4 * n + 0] *= alpha[0];
            o[4 * n + 1] *= alpha[0];
            o[4 * n + 2] *= alpha[1];
            o[4 * n + 3] *= alpha[1];
        }
#pragma unroll
        for (int kk = 0; kk < WG_KEYS / 16; kk++)
#pragma unroll
            for (int e = 0; e < 4; e++) pf[kk][e] = pn[kk][e];
    }
    if (n_tiles > 0) { /* the last tile's P V */
        cp_async_wait<0>();
        wg_fence_async_smem();
        __syncthreads();
        wg_fence();
        const uint32_t vt = v_addr + ((n_tiles - 1) & 1) * L::TILE_BYTES;
#pragma unroll
        for (int kk = 0; kk < WG_KEYS / 16; kk++) wg_rs<D, T>(o, pf[kk], wg_desc(vt + kk * 16 * 128, v_lbo, v_sbo));
        wg_commit();
        wg_wait<0>();
        wg_hold(o);
    }

#pragma unroll
    for (int r = 0; r < 2; r++) {
        float sum = l[r];
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        int i = row + 8 * r;
        if (i >= len) continue;
        float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
        T *out = (T *)p.out + (start + i) * p.ldo + h * D;
#pragma unroll
        for (int n = 0; n < D / 8; n++) {
            float a = o[4 * n + 2 * r] * inv, b = o[4 * n + 2 * r + 1] * inv;
            if (p.vec_o) {
                *(uint32_t *)(out + n * 8 + t * 2) = pack2<T>(a, b);
            } else {
                out[n * 8 + t * 2] = from_f32<T>(a);
                out[n * 8 + t * 2 + 1] = from_f32<T>(b);
            }
        }
        if (t == 0 && p.lse) p.lse[h * p.n_tokens + start + i] = sum > 0.0f ? mx[r] * MMA_LN2 + logf(sum) : -INFINITY;
    }
#else
    (void)p;
#endif
}

#endif /* FINCH_GPU_CUDA */
#endif
