/* attention_cache_forward when every sequence brings one new query row (decoding): the tile kernels
 * of attention.cu would give each (sequence, head) one block whose query tile holds a single row,
 * leaving most of the GPU idle and walking the whole cache serially. Here the keys are split along
 * the sequence into chunks, one block per (chunk, kv head, sequence); the block's warps take the
 * query heads that share the kv head, so the chunk of keys and values is read once, a tile of keys
 * and values at a time into shared memory by the whole block (the per-key steps then wait on shared
 * memory, not on a load from the cache in HBM). Each block
 * writes a partial result (running max, sum of exponentials, unnormalised output, f32), and a second
 * kernel combines the chunks of each (sequence, head) into o and lse. Visibility, scale and softcap
 * are those of finch_attention_cache_desc with the query at position kv_len - 1. Anything else
 * (several query rows in a sequence) goes to plugin_attention_cache_forward.
 *
 * attention_cache_append_forward runs the same kernel with the step's RoPE and cache append folded
 * in: each block turns its query heads as it loads them, every block whose chunk holds a new token's
 * cache row takes that row from the new keys and values (turning the key), not from the cache, in the
 * tile that holds it, and the block whose chunk holds its own sequence's new row (or, for a row in no
 * chunk of the sequence, the sequence's first block) also writes it to the cache. So no block waits
 * on another's write, and the rope, both copy_rows and their launches go. */
#include "rope.cuh"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define DEC_THREADS 128
#define DEC_MAX_PER_LANE 8       /* head_dim <= 8 * 32 */
#define DEC_MIN_CHUNK 16         /* keys per block, at least */
#define DEC_MAX_SPLITS 256
/* nvcc held the decode kernel to 64 registers and spilled (the RoPE and append paths); a floor of 4
 * blocks a multiprocessor lets it take the 88 it needs. */
#if FINCH_GPU_CUDA
#define DEC_BOUNDS __launch_bounds__(DEC_THREADS, 4)
#else
#define DEC_BOUNDS __launch_bounds__(DEC_THREADS)
#endif

struct decode_params {
    int64_t n_heads, n_kv_heads, head_dim, kv_rows, window;
    const int32_t *cu_q, *kv_start, *kv_len;
    const void *q, *k, *v;
    int64_t ldq, ldk, ldv;
    float scale, softcap;
    int chunk, splits;
    int tile;               /* keys of the chunk in shared memory at a time */
    float *part_o;          /* [seq][head][split][head_dim] */
    float *part_ml;         /* [seq][head][split][2]: running max, sum of exponentials */
    /* attention_cache_append_forward (rows not NULL): the new tokens' keys and values [n_tokens][kv
     * width], their cache rows, the turn of q and k_new (rope.half 0: none), and the bytes of k's and
     * v's buffers from k and v on (a row past them is not written, as copy_rows). */
    const int32_t *rows;
    const void *k_new, *v_new;
    int64_t ldk_new, ldv_new, n_tokens;
    size_t k_bytes, v_bytes;
    rope_angles rope;
    int subs_cap;           /* entries of the block's list of new rows in its chunk (shared memory) */
};

/* Head kvh of new token t, its turned key and its value: into the tiles' row (kt, vt; or NULL) and into
 * cache row r (r >= 0, where the row fits in the buffers, as copy_rows). */
template <typename T>
__device__ __forceinline__ void place_new_row(const decode_params &p, int64_t t, int kvh, T *kt, T *vt, int64_t r)
{
    int64_t D = p.head_dim;
    const T *kn = (const T *)p.k_new + t * p.ldk_new + kvh * D, *vn = (const T *)p.v_new + t * p.ldv_new + kvh * D;
    T *kc = NULL, *vc = NULL;
    if (r >= 0) {
        size_t es = sizeof(T), row = (size_t)(p.n_kv_heads * D) * es;
        if ((size_t)r * (size_t)p.ldk * es <= p.k_bytes && row <= p.k_bytes - (size_t)r * (size_t)p.ldk * es)
            kc = (T *)p.k + r * p.ldk + kvh * D;
        if ((size_t)r * (size_t)p.ldv * es <= p.v_bytes && row <= p.v_bytes - (size_t)r * (size_t)p.ldv * es)
            vc = (T *)p.v + r * p.ldv + kvh * D;
    }
    for (int e = threadIdx.x; e < D; e += blockDim.x) {
        T ke = rope_element(p.rope, kn, t, e), ve = vn[e];
        if (kt) {
            kt[e] = ke;
            vt[e] = ve;
        }
        if (kc) kc[e] = ke;
        if (vc) vc[e] = ve;
    }
}

/* Rows [t0, t0 + n) of the chunk's keys and values into shared memory [n][D] each, by every thread of
 * the block at once: one memory latency a tile, not one a key. */
template <typename T>
__device__ __forceinline__ void load_tile(const decode_params &p, int64_t row0, int kvh, int n, T *kt, T *vt, bool vec)
{
    int64_t D = p.head_dim;
    const T *k = (const T *)p.k + row0 * p.ldk + kvh * D, *v = (const T *)p.v + row0 * p.ldv + kvh * D;
    if (vec) {
        constexpr int per = 16 / (int)sizeof(T);
        int64_t row_vecs = D / per;
        for (int64_t e = threadIdx.x; e < n * row_vecs; e += blockDim.x) {
            int64_t r = e / row_vecs, c = e % row_vecs;
            ((uint4 *)kt)[e] = *(const uint4 *)(k + r * p.ldk + c * per);
            ((uint4 *)vt)[e] = *(const uint4 *)(v + r * p.ldv + c * per);
        }
    } else {
        for (int64_t e = threadIdx.x; e < n * D; e += blockDim.x) {
            int64_t r = e / D, c = e % D;
            kt[e] = k[r * p.ldk + c];
            vt[e] = v[r * p.ldv + c];
        }
    }
}

template <typename T>
__global__ void DEC_BOUNDS attention_decode_kernel(decode_params p)
{
    extern __shared__ __align__(16) unsigned char dec_tiles[];
    __shared__ int n_subs;
    gpu_grid_release();
    gpu_grid_wait();
    int split = blockIdx.x, kvh = blockIdx.y, seq = blockIdx.z;
    int warps = blockDim.x / FINCH_WARP_SIZE, warp = threadIdx.x / FINCH_WARP_SIZE, lane = threadIdx.x % FINCH_WARP_SIZE;
    int64_t D = p.head_dim, group = p.n_heads / p.n_kv_heads;
    int64_t start = p.kv_start[seq], len = p.kv_len[seq], pos = len - 1;
    int64_t end = len < p.kv_rows - start ? len : p.kv_rows - start; /* rows past kv_rows are not read */
    int64_t lo = p.window > 0 && pos - p.window + 1 > 0 ? pos - p.window + 1 : 0;
    int64_t j0 = (int64_t)split * p.chunk, j1 = j0 + p.chunk < end ? j0 + p.chunk : end;
    if (j0 < lo) j0 = lo;
    int64_t qrow = p.cu_q[seq];
    T *kt = (T *)dec_tiles, *vt = kt + (int64_t)p.tile * D;
    int *subs = (int *)(dec_tiles + ((2 * (size_t)p.tile * D * sizeof(T) + 15) & ~(size_t)15));
    int ns = 0;              /* new tokens whose rows fall in the chunk, listed in subs */
    int64_t own_row = -1;    /* this block's to write, the sequence's token's cache row, with its tile row */
    if (p.rows) {
        int64_t c0 = (int64_t)split * p.chunk, r = p.rows[qrow], rel = r - start;
        if (threadIdx.x == 0) n_subs = 0;
        __syncthreads();
        for (int64_t t = threadIdx.x; t < p.n_tokens; t += blockDim.x) {
            int64_t r = (int64_t)p.rows[t] - start;
            if (r >= c0 && r < j1) {
                int i = atomicAdd(&n_subs, 1);
                if (i < p.subs_cap) subs[i] = (int)t;
            }
        }
        __syncthreads();
        ns = n_subs < p.subs_cap ? n_subs : p.subs_cap;
        int owner = rel >= 0 && rel < end ? (int)(rel / p.chunk) : 0;
        if (split == owner && r >= 0) {
            if (rel >= j0 && rel < j1) own_row = r;
            else place_new_row(p, qrow, kvh, (T *)NULL, (T *)NULL, r); /* in no tile of the block */
        }
    }
    constexpr int per = 16 / (int)sizeof(T);
    bool vec = D % per == 0 && p.ldk % per == 0 && p.ldv % per == 0 && !((uintptr_t)p.k & 15) && !((uintptr_t)p.v & 15);
    /* Every warp runs the same loops (a warp past the group's heads idles through them): the tiles'
     * barriers are the block's. */
    for (int64_t hg0 = 0; hg0 < group; hg0 += warps) {
        int64_t hg = hg0 + warp, h = kvh * group + hg;
        bool active = hg < group;
        float qf[DEC_MAX_PER_LANE], acc[DEC_MAX_PER_LANE];
#pragma unroll
        for (int i = 0; i < DEC_MAX_PER_LANE; i++) {
            int64_t d = lane + (int64_t)i * FINCH_WARP_SIZE;
            qf[i] = active && d < D ? to_f32(rope_element(p.rope, (const T *)p.q + qrow * p.ldq + h * D, qrow, (int)d)) * p.scale : 0.0f;
            acc[i] = 0.0f;
        }
        float m = -INFINITY, l = 0.0f;
        for (int64_t t0 = j0; t0 < j1; t0 += p.tile) {
            int n = j1 - t0 < p.tile ? (int)(j1 - t0) : p.tile;
            __syncthreads(); /* the last tile is read */
            load_tile(p, start + t0, kvh, n, kt, vt, vec);
            for (int i = 0; i < ns; i++) { /* the same on every thread: the barrier is the block's */
                int64_t jj = (int64_t)p.rows[subs[i]] - start - t0;
                if (jj >= 0 && jj < n) {
                    __syncthreads(); /* the tile's loads are done */
                    place_new_row(p, subs[i], kvh, kt + jj * D, vt + jj * D, subs[i] == qrow ? own_row : -1);
                }
            }
            __syncthreads();
            if (!active) continue;
            for (int jj = 0; jj < n; jj++) {
                const T *kr = kt + (int64_t)jj * D, *vr = vt + (int64_t)jj * D;
                float s = 0.0f, vf[DEC_MAX_PER_LANE];
#pragma unroll
                for (int i = 0; i < DEC_MAX_PER_LANE; i++) {
                    int64_t d = lane + (int64_t)i * FINCH_WARP_SIZE;
                    if (d < D) {
                        s = fmaf(qf[i], to_f32(kr[d]), s);
                        vf[i] = to_f32(vr[d]);
                    } else {
                        vf[i] = 0.0f;
                    }
                }
                for (int o = FINCH_WARP_SIZE / 2; o > 0; o >>= 1) s += gpu_shfl_xor(s, o);
                if (p.softcap > 0.0f) s = p.softcap * tanhf(s / p.softcap);
                float m_new = fmaxf(m, s), keep = expf(m - m_new), e = expf(s - m_new);
                l = l * keep + e;
#pragma unroll
                for (int i = 0; i < DEC_MAX_PER_LANE; i++) acc[i] = fmaf(acc[i], keep, e * vf[i]);
                m = m_new;
            }
        }
        if (!active) continue;
        int64_t slot = (seq * p.n_heads + h) * p.splits + split;
#pragma unroll
        for (int i = 0; i < DEC_MAX_PER_LANE; i++) {
            int64_t d = lane + (int64_t)i * FINCH_WARP_SIZE;
            if (d < D) p.part_o[slot * D + d] = acc[i];
        }
        if (lane == 0) {
            p.part_ml[slot * 2] = m;
            p.part_ml[slot * 2 + 1] = l;
        }
    }
}

/* One block per (head, sequence), one thread per element of head_dim (blockDim.x >= head_dim). The
 * chunks' (max, sum) pairs are read once into registers, and the first DEC_EARLY_SPLITS partial
 * outputs of the thread's element are loaded before the block's reductions need them, so the
 * kernel waits on memory about once instead of once per step. */
#define DEC_EARLY_SPLITS 16
template <typename T>
__global__ void attention_decode_combine_kernel(decode_params p, T *o, int64_t ldo, float *lse, int64_t n_tokens)
{
    __shared__ float weight[DEC_MAX_SPLITS], red[32];
    constexpr int pairs = DEC_MAX_SPLITS / 32; /* per thread, for any block of >= 32 threads */
    gpu_grid_release();
    gpu_grid_wait();
    int64_t h = blockIdx.x, seq = blockIdx.y, D = p.head_dim, d = threadIdx.x;
    int64_t base = (seq * p.n_heads + h) * p.splits, qrow = p.cu_q[seq];
    float ms[pairs], ls[pairs], early[DEC_EARLY_SPLITS], m = -INFINITY;
#pragma unroll
    for (int i = 0; i < pairs; i++) {
        int s = threadIdx.x + i * blockDim.x;
        ms[i] = s < p.splits ? p.part_ml[(base + s) * 2] : -INFINITY;
        ls[i] = s < p.splits ? p.part_ml[(base + s) * 2 + 1] : 0.0f;
        m = fmaxf(m, ms[i]);
    }
#pragma unroll
    for (int s = 0; s < DEC_EARLY_SPLITS; s++) early[s] = d < D && s < p.splits ? p.part_o[(base + s) * D + d] : 0.0f;
    m = block_max(m, red);
    float l = 0.0f;
#pragma unroll
    for (int i = 0; i < pairs; i++) {
        int s = threadIdx.x + i * blockDim.x;
        if (s < p.splits) {
            float e = ms[i] != -INFINITY ? expf(ms[i] - m) : 0.0f;
            weight[s] = e;
            l += ls[i] * e;
        }
    }
    l = block_sum(l, red); /* its barriers also publish weight[] */
    if (d < D) {
        float acc = 0.0f;
#pragma unroll
        for (int s = 0; s < DEC_EARLY_SPLITS; s++)
            if (s < p.splits) acc += early[s] * weight[s];
#pragma unroll 8
        for (int s = DEC_EARLY_SPLITS; s < p.splits; s++) acc += p.part_o[(base + s) * D + d] * weight[s];
        o[qrow * ldo + h * D + d] = from_f32<T>(acc / l);
    }
    if (lse && threadIdx.x == 0) lse[h * n_tokens + qrow] = m + logf(l);
}

/* What attention_cache_append_forward adds to the descriptor. */
struct decode_append {
    const finch_rope_desc *rope;
    finch_dptr k_new, v_new, rows;
    int64_t ldk_new, ldv_new;
};

/* The decode path when it applies (*done = 1), else nothing queued; with a (not NULL) the new keys
 * and values go in as well. The partial results live in the
 * stream's held scratch (no allocation in a recorded pass), else in stream-ordered scratch. */
static int attention_decode(finch_plugin_device *dev, finch_plugin_stream *s, gpuStream_t st, const finch_attention_cache_desc *c,
                            const decode_append *a, int *done)
{
    *done = 0;
    if (c->max_q_len != 1 || c->n_tokens != c->n_seqs || c->n_seqs < 1 || c->n_seqs > 65535) return FINCH_OK;
    if (c->head_dim < 1 || c->head_dim > DEC_MAX_PER_LANE * 32 || c->n_kv_heads < 1 || c->n_heads % c->n_kv_heads ||
        c->n_kv_heads > 65535 || c->max_kv_len < 1 || c->window < 0 || !gpu_is_float_type(c->dtype))
        return FINCH_OK;
    if (!gpu_ptr(c->q) || !gpu_ptr(c->k) || !gpu_ptr(c->v) || !gpu_ptr(c->o) || !gpu_ptr(c->cu_seqlens_q) ||
        !gpu_ptr(c->kv_start) || !gpu_ptr(c->kv_len))
        return FINCH_OK; /* the general entry reports what is missing */
    int64_t D = c->head_dim, width = c->n_heads * D, kv_width = c->n_kv_heads * D;
    if (c->ldq < width || c->ldo < width || c->ldk < kv_width || c->ldv < kv_width) return FINCH_OK;
    decode_params p;
    memset(&p, 0, sizeof p);
    p.n_heads = c->n_heads;
    p.n_kv_heads = c->n_kv_heads;
    p.head_dim = D;
    p.kv_rows = c->kv_rows;
    p.window = c->window;
    p.cu_q = (const int32_t *)gpu_ptr(c->cu_seqlens_q);
    p.kv_start = (const int32_t *)gpu_ptr(c->kv_start);
    p.kv_len = (const int32_t *)gpu_ptr(c->kv_len);
    p.q = gpu_ptr(c->q);
    p.k = gpu_ptr(c->k);
    p.v = gpu_ptr(c->v);
    p.ldq = c->ldq;
    p.ldk = c->ldk;
    p.ldv = c->ldv;
    p.scale = c->scale;
    p.softcap = c->softcap;
    int64_t chunk = (c->max_kv_len + DEC_MAX_SPLITS - 1) / DEC_MAX_SPLITS;
    if (chunk < DEC_MIN_CHUNK) chunk = DEC_MIN_CHUNK;
    p.chunk = (int)chunk;
    p.splits = (int)((c->max_kv_len + chunk - 1) / chunk);
    size_t subs_bytes = 0;
    if (a) {
        if (!gpu_ptr(a->k_new) || !gpu_ptr(a->v_new) || !gpu_ptr(a->rows) || a->ldk_new < kv_width || a->ldv_new < kv_width ||
            c->k.offset > c->k.buf->size || c->v.offset > c->v.buf->size)
            return FINCH_OK; /* the composition reports what is wrong */
        if (a->rope) {
            if (a->rope->head_dim != D) return FINCH_OK;
            GPU_TRY(rope_angles_setup(a->rope, c->n_tokens, &p.rope, "attention_cache_append_forward"));
        }
        p.rows = (const int32_t *)gpu_ptr(a->rows);
        p.k_new = gpu_ptr(a->k_new);
        p.v_new = gpu_ptr(a->v_new);
        p.ldk_new = a->ldk_new;
        p.ldv_new = a->ldv_new;
        p.n_tokens = c->n_tokens;
        p.k_bytes = c->k.buf->size - c->k.offset;
        p.v_bytes = c->v.buf->size - c->v.offset;
        p.subs_cap = (int)(c->n_tokens < chunk ? c->n_tokens : chunk);
        subs_bytes = (size_t)p.subs_cap * sizeof(int);
        if (subs_bytes > 16 * 1024) return FINCH_OK;
    }
    size_t parts = (size_t)(c->n_seqs * c->n_heads * p.splits);
    size_t bytes = parts * (size_t)(D + 2) * sizeof(float);
    void *held = NULL, *scratch = NULL;
    GPU_TRY(gpu_held_scratch(dev, s, st, bytes, &held));
    if (!held) GPU_TRY(gpu_scratch(st, bytes, &scratch, "decode attention partial results"));
    p.part_o = (float *)(held ? held : scratch);
    p.part_ml = p.part_o + parts * (size_t)D;
    /* Tiles of up to 32 keys, K and V (and the list of new rows) within 48 KiB of shared memory. */
    size_t row_bytes = (size_t)D * gpu_dtype_size(c->dtype);
    p.tile = 32;
    while (p.tile > 1 && 2 * (size_t)p.tile * row_bytes + 16 + subs_bytes > 48 * 1024) p.tile /= 2;
    if (p.tile > p.chunk) p.tile = p.chunk;
    size_t tile_bytes = ((2 * (size_t)p.tile * row_bytes + 15) & ~(size_t)15) + subs_bytes;
    dim3 grid((unsigned)p.splits, (unsigned)c->n_kv_heads, (unsigned)c->n_seqs);
    dim3 grid2((unsigned)c->n_heads, (unsigned)c->n_seqs);
    int threads2 = D < 32 ? 32 : (int)((D + 31) / 32 * 32);
    float *lse = (float *)gpu_ptr(c->lse);
    gpuError_t err;
#define DECODE_LAUNCH(T)                                                                                        \
    err = gpu_launch(attention_decode_kernel<T>, grid, dim3(DEC_THREADS), tile_bytes, st, p);                              \
    if (err == gpuSuccess)                                                                                      \
        err = gpu_launch(attention_decode_combine_kernel<T>, grid2, dim3(threads2), 0, st, p, (T *)gpu_ptr(c->o), \
                         c->ldo, lse, c->n_tokens);
    switch (c->dtype) {
    case FINCH_DTYPE_BF16: DECODE_LAUNCH(gpu_bf16); break;
    case FINCH_DTYPE_F16: DECODE_LAUNCH(gpu_f16); break;
    default: DECODE_LAUNCH(float); break;
    }
#undef DECODE_LAUNCH
    int rc = gpu_check(err, "decode attention");
    gpu_scratch_free(st, scratch);
    if (!rc) *done = 1;
    return rc;
}

static bool decode_enabled(void)
{
    static int off = -1;
    return !gpu_env_is("FINCH_CUDA_DECODE_ATTENTION", "0", &off);
}

/* The table's attention_cache_forward: the decode kernels for one query row per sequence
 * (FINCH_CUDA_DECODE_ATTENTION=0 turns them off), else the tile kernels. */
extern "C" int plugin_attention_cache_dispatch(finch_plugin_device *dev, finch_plugin_stream *s,
                                               const finch_attention_cache_desc *c)
{
    gpuStream_t st = NULL;
    GPU_TRY(gpu_begin(dev, s, &st));
    if (c && decode_enabled()) {
        int done = 0;
        GPU_TRY(attention_decode(dev, s, st, c, NULL, &done));
        if (done) return FINCH_OK;
    }
    return plugin_attention_cache_forward(dev, s, c);
}

/* elementwise.cu */
extern "C" int plugin_copy_rows(finch_plugin_device *dev, finch_plugin_stream *s, finch_dtype dtype, int64_t n, int64_t cols,
                                finch_dptr src, int64_t ld_src, finch_dptr rows, finch_dptr dst, int64_t ld_dst);

/* attention_cache_append_forward as the entries it stands for: rope_forward on q and k_new,
 * copy_rows of k_new and v_new, attention_cache_forward. */
static int append_composed(finch_plugin_device *dev, finch_plugin_stream *s, const finch_attention_cache_desc *c,
                           const decode_append *a)
{
    int64_t width = c->n_kv_heads * c->head_dim;
    if (a->rope) {
        finch_rope_desc r = *a->rope;
        r.n_tokens = c->n_tokens;
        r.dtype = c->dtype;
        r.x = c->q;
        r.ldx = c->ldq;
        r.n_heads = c->n_heads;
        GPU_TRY(plugin_rope_forward(dev, s, &r));
        r.x = a->k_new;
        r.ldx = a->ldk_new;
        r.n_heads = c->n_kv_heads;
        GPU_TRY(plugin_rope_forward(dev, s, &r));
    }
    GPU_TRY(plugin_copy_rows(dev, s, c->dtype, c->n_tokens, width, a->k_new, a->ldk_new, a->rows, c->k, c->ldk));
    GPU_TRY(plugin_copy_rows(dev, s, c->dtype, c->n_tokens, width, a->v_new, a->ldv_new, a->rows, c->v, c->ldv));
    return plugin_attention_cache_dispatch(dev, s, c);
}

/* The table's attention_cache_append_forward: one decode kernel (and the combine) where every
 * sequence brings one query row, else the composition. */
extern "C" int plugin_attention_cache_append_forward(finch_plugin_device *dev, finch_plugin_stream *s,
                                                     const finch_attention_cache_desc *c, const finch_rope_desc *rope,
                                                     finch_dptr k_new, int64_t ldk_new, finch_dptr v_new, int64_t ldv_new,
                                                     finch_dptr rows)
{
    gpuStream_t st = NULL;
    GPU_TRY(gpu_begin(dev, s, &st));
    if (!c) return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": attention_cache_append_forward: descriptor is NULL");
    decode_append a = {rope, k_new, v_new, rows, ldk_new, ldv_new};
    if (decode_enabled()) {
        int done = 0;
        GPU_TRY(attention_decode(dev, s, st, c, &a, &done));
        if (done) return FINCH_OK;
    }
    return append_composed(dev, s, c, &a);
}
