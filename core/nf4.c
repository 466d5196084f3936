/* NF4/FP4 blockwise quantisation, bitsandbytes layout; see nf4.h for the exact rules. */
#include "core/nf4.h"
#include "backends/cpu/cpu.h" /* the host's thread pool (cpu_parallel) */
#include "core/error.h"
#include "finch/finch.h"

#include <float.h>
#include <stdio.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* bitsandbytes' NF4 table (get_4bit_type("nf4"), equal to its CUDA LUT), by code. */
static const float nf4_table[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f,
};

/* bitsandbytes' FP4 as its CUDA dequantiser decodes it: bit 3 is the sign, bits 0-2 index the
 * magnitudes below (these literals differ from the Python table k/12 by a few ulps; the CUDA
 * kernel, which ignores the stored quant_map, is what produced every FP4 model's numbers). */
static const float fp4_table[16] = {
    0.0f, 0.005208333f, 0.6666667f, 1.0f, 0.3333333f, 0.5f, 0.1666667f, 0.25f,
    -0.0f, -0.005208333f, -0.6666667f, -1.0f, -0.3333333f, -0.5f, -0.1666667f, -0.25f,
};

const float *nf4_code_table(nf4_type type) { return type == NF4_TYPE_FP4 ? fp4_table : nf4_table; }
const char *nf4_type_name(nf4_type type) { return type == NF4_TYPE_FP4 ? "fp4" : "nf4"; }

void nf4_stored_quant_map(nf4_type type, float map[16])
{
    static const float fp4_twelfths[16] = {0, 0.0625f, 8, 12, 4, 6, 2, 3, -0.0f, -0.0625f, -8, -12, -4, -6, -2, -3};
    for (int i = 0; i < 16; i++) map[i] = type == NF4_TYPE_FP4 ? fp4_twelfths[i] / 12.0f : nf4_table[i];
}

int nf4_blocksize_valid(int64_t blocksize)
{
    return blocksize >= 32 && blocksize <= 4096 && (blocksize & (blocksize - 1)) == 0;
}

/* ---- nearest code ------------------------------------------------------------------------------ */

/* A table of 2^k codes turned into 2^k - 1 ascending thresholds. rank(x) = #{t : x > t} picks the
 * nearest distinct value, ties (x == t) to the lower one; NaN compares false and gets rank 0.
 * Equal values (FP4's +0 and -0) collapse to the lowest code; unused thresholds are +inf. */
typedef struct code_search {
    int size;                       /* 16 or 256 */
    float t[255];
    uint8_t code_of_rank[256];
} code_search;

static int code_search_init(code_search *cs, const float *code, int size)
{
    uint8_t order[256]; /* codes by ascending value, then ascending code (insertion sort: stable) */
    for (int i = 0; i < size; i++) {
        if (!isfinite(code[i])) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "code table entry %d is not finite", i);
        int j = i;
        for (; j > 0 && code[order[j - 1]] > code[i]; j--) order[j] = order[j - 1];
        order[j] = (uint8_t)i;
    }
    int u = 0;
    for (int i = 0; i < size; i++)
        if (u == 0 || code[order[i]] != code[cs->code_of_rank[u - 1]]) cs->code_of_rank[u++] = order[i];
    for (int r = u; r < size; r++) cs->code_of_rank[r] = cs->code_of_rank[u - 1];
    for (int k = 0; k < size - 1; k++)
        cs->t[k] = k < u - 1 ? (code[cs->code_of_rank[k]] + code[cs->code_of_rank[k + 1]]) * 0.5f : INFINITY;
    cs->size = size;
    return FINCH_OK;
}

static inline int code_rank(const code_search *cs, float x)
{
    int r = 0;
    for (int step = cs->size / 2; step > 0; step /= 2)
        if (x > cs->t[r + step - 1]) r += step;
    return r;
}

static inline uint8_t code_nearest(const code_search *cs, float x) { return cs->code_of_rank[code_rank(cs, x)]; }

/* ---- 4-bit blocks -------------------------------------------------------------------------------- */

/* Quantises w[0, n) whose first element is element `base` of the whole tensor (base is a multiple
 * of blocksize, so packed and absmax start at base / 2 and base / blocksize). The loops are written
 * so the compiler vectorises them: ranks are counted against all 15 thresholds, not searched. */
static int quantize_range(const code_search *cs, const float *w, int64_t n, int64_t blocksize, uint8_t *packed,
                          float *absmax, int64_t base)
{
    uint8_t q[4096 + 1];
    float t[15];
    memcpy(t, cs->t, sizeof t); /* a local copy: stores to q (uint8_t) could alias cs->t */
    for (int64_t start = 0; start < n; start += blocksize) {
        int64_t len = n - start < blocksize ? n - start : blocksize;
        const float *x = w + start;
        float m = 0.0f;
        int finite = 1;
        for (int64_t i = 0; i < len; i++) {
            finite &= fabsf(x[i]) <= FLT_MAX;
            m = fmaxf(m, fabsf(x[i]));
        }
        if (!finite)
            for (int64_t i = 0; i < len; i++)
                if (!isfinite(x[i]))
                    return finch_error(FINCH_ERR_INVALID_ARGUMENT, "element %lld is %s", (long long)(base + start + i),
                                       isnan(x[i]) ? "NaN" : "infinite");
        absmax[start / blocksize] = m;
        float r = 1.0f / m;
        for (int64_t i = 0; i < len; i++) {
            float v = x[i] * r;
            int k = 0;
            for (int j = 0; j < 15; j++) k += v > t[j];
            q[i] = (uint8_t)k;
        }
        int k = 0; /* odd tail: the missing partner is a 0.0 of this block */
        for (int j = 0; j < 15; j++) k += 0.0f * r > t[j];
        q[len] = (uint8_t)k;
        uint8_t *p = packed + start / 2;
        for (int64_t i = 0; i < len; i += 2) p[i / 2] = (uint8_t)(cs->code_of_rank[q[i]] << 4 | cs->code_of_rank[q[i + 1]]);
    }
    return FINCH_OK;
}

int nf4_quantize(const float *w, int64_t n, int64_t blocksize, const float code[16], uint8_t *packed, float *absmax)
{
    if (n < 0) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "nf4_quantize: negative element count %lld", (long long)n);
    if (!nf4_blocksize_valid(blocksize))
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "4-bit blocksize %lld is not a power of two in 32..4096", (long long)blocksize);
    code_search cs;
    int rc = code_search_init(&cs, code, 16);
    if (rc) return rc;
    return quantize_range(&cs, w, n, blocksize, packed, absmax, 0);
}

void nf4_dequantize(const uint8_t *packed, const float *absmax, int64_t n, int64_t blocksize, const float code[16],
                    float *out)
{
    for (int64_t start = 0; start < n; start += blocksize) {
        int64_t len = n - start < blocksize ? n - start : blocksize;
        float a = absmax[start / blocksize];
        const uint8_t *p = packed + start / 2;
        for (int64_t i = 0; i < len; i++) {
            uint8_t b = p[i / 2];
            out[start + i] = code[(i & 1) ? (b & 15) : (b >> 4)] * a;
        }
    }
}

/* ---- the 8-bit dynamic map and double quantisation ------------------------------------------------- */

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* bitsandbytes' create_dynamic_map(signed): for each decade i = 0..6 the midpoints of
 * torch.linspace(0.1, 1, k + 1) (f32; torch fills the first half from the start and the second half
 * from the end), k = 2^i with both signs when signed, k = 2^(i+1) unsigned, times 10^(i-6) in f32;
 * then 0 and 1; sorted. */
static void dynamic_map(int is_signed, float map[256])
{
    int n = 0;
    for (int i = 0; i < 7; i++) {
        int steps = (1 << (is_signed ? i : i + 1)) + 1;
        const float start = 0.1f, end = 1.0f, step = (end - start) / (float)(steps - 1);
        float scale = (float)pow(10.0, i - 6), b[129];
        for (int k = 0; k < steps; k++)
            b[k] = k < steps / 2 ? start + step * (float)k : end - step * (float)(steps - k - 1);
        for (int k = 0; k + 1 < steps; k++) {
            float v = scale * ((b[k] + b[k + 1]) / 2.0f);
            map[n++] = v;
            if (is_signed) map[n++] = -v;
        }
    }
    map[n++] = 0.0f;
    map[n++] = 1.0f;
    qsort(map, 256, sizeof(float), cmp_float);
}

void nf4_dynamic_map(float map[256]) { dynamic_map(1, map); }
void nf4_dynamic_map_unsigned(float map[256]) { dynamic_map(0, map); }

int nf4_map_matches(const float *stored, const float *ref, int n, int *bad_index)
{
    for (int i = 0; i < n; i++) {
        float a = stored[i], b = ref[i];
        int ok = b == 0.0f ? a == 0.0f : fabsf(a - b) <= 1e-6f * fabsf(b);
        if (!ok) { *bad_index = i; return 0; }
    }
    return 1;
}

int nf4_double_quantize(const float *absmax, int64_t n_blocks, int64_t nbs, const float map[256], uint8_t *qabsmax,
                        float *nested_absmax, float *offset)
{
    if (n_blocks <= 0) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "double quantisation of %lld scales", (long long)n_blocks);
    if (!nf4_blocksize_valid(nbs))
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "nested blocksize %lld is not a power of two in 32..4096", (long long)nbs);
    double sum = 0;
    for (int64_t i = 0; i < n_blocks; i++) {
        if (!isfinite(absmax[i])) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "absmax[%lld] is not finite", (long long)i);
        sum += absmax[i];
    }
    float off = (float)(sum / (double)n_blocks);
    code_search cs;
    int rc = code_search_init(&cs, map, 256);
    if (rc) return rc;
    for (int64_t start = 0; start < n_blocks; start += nbs) {
        int64_t len = n_blocks - start < nbs ? n_blocks - start : nbs;
        float m = 0.0f;
        for (int64_t i = 0; i < len; i++) m = fmaxf(m, fabsf(absmax[start + i] - off));
        nested_absmax[start / nbs] = m;
        float r = 1.0f / m;
        for (int64_t i = 0; i < len; i++) qabsmax[start + i] = code_nearest(&cs, (absmax[start + i] - off) * r);
    }
    *offset = off;
    return FINCH_OK;
}

void nf4_double_dequantize(const uint8_t *qabsmax, const float *nested_absmax, float offset, int64_t n_blocks,
                           int64_t nbs, const float map[256], float *absmax)
{
    for (int64_t i = 0; i < n_blocks; i++) {
        float a = map[qabsmax[i]] * nested_absmax[i / nbs];
        absmax[i] = a + offset; /* two f32 roundings, as bitsandbytes (never fused into an FMA) */
    }
}

/* ---- host weights --------------------------------------------------------------------------------- */

void nf4_weight_free(nf4_weight *w)
{
    if (!w) return;
    free(w->packed);
    free(w->absmax);
    free(w->qabsmax);
    free(w->nested_absmax);
    memset(w, 0, sizeof *w);
}

void nf4_weight_dequantize(const nf4_weight *w, float *out)
{
    nf4_dequantize(w->packed, w->absmax, nf4_weight_numel(w), w->blocksize, w->code, out);
}

#define NF4_CHUNK ((int64_t)1 << 16) /* elements converted at a time; a multiple of every blocksize */

/* Unmaps the whole pages of [*from, to) of a read-only private file mapping: they leave the
 * process's resident set and fault back in from the file if read again. Never used on heap memory,
 * where MADV_DONTNEED would zero the data. */
static void release_pages(const unsigned char **from, const unsigned char *to)
{
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t a = ((uintptr_t)*from + page - 1) & ~(page - 1), b = (uintptr_t)to & ~(page - 1);
    if (b > a) {
        madvise((void *)a, b - a, MADV_DONTNEED); /* a hint: failure only costs memory */
        *from = (const unsigned char *)b;
    }
}

/* One round of quantize_tensor: NF4_CHUNK-element pieces converted and quantised on the host's
 * threads, each with its own conversion buffer. A piece's failure keeps its status and message (the
 * error text is per thread); the caller reports the first failing piece's. */
typedef struct quantize_round {
    const st_tensor *t;
    const code_search *cs;
    int64_t blocksize, first;     /* first element of the round */
    nf4_weight *out;
    float **bufs;                 /* one per piece */
    int *rc;
    char (*msg)[256];
} quantize_round;

static void quantize_pieces(void *ctx, int64_t begin, int64_t end, int chunk)
{
    (void)chunk;
    quantize_round *q = ctx;
    size_t esize = st_dtype_size(q->t->dtype);
    for (int64_t i = begin; i < end; i++) {
        int64_t start = q->first + i * NF4_CHUNK;
        st_tensor view = *q->t;
        view.numel = q->t->numel - start < NF4_CHUNK ? q->t->numel - start : NF4_CHUNK;
        view.data = (const unsigned char *)q->t->data + (size_t)start * esize;
        view.nbytes = (size_t)view.numel * esize;
        int rc = st_to_f32(&view, q->bufs[i]);
        if (!rc)
            rc = quantize_range(q->cs, q->bufs[i], view.numel, q->blocksize, q->out->packed + start / 2,
                                q->out->absmax + start / q->blocksize, start);
        q->rc[i] = rc;
        if (rc) snprintf(q->msg[i], sizeof q->msg[i], "%s", finch_last_error());
    }
}

static int quantize_tensor(const st_tensor *t, nf4_type type, int64_t blocksize, int double_quant, int from_mapping,
                           nf4_weight *out)
{
    memset(out, 0, sizeof *out);
    if (t->ndim != 2 || t->numel == 0)
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "tensor '%s': only non-empty 2-D [out, in] weights are quantised (it has %d dimensions, %lld elements)",
                           t->name, t->ndim, (long long)t->numel);
    if (t->dtype != ST_F32 && t->dtype != ST_BF16 && t->dtype != ST_F16 && t->dtype != ST_F64)
        return finch_error(FINCH_ERR_UNSUPPORTED, "tensor '%s': cannot quantise dtype %s to %s (F32, BF16, F16 or F64 expected)",
                           t->name, st_dtype_name(t->dtype), nf4_type_name(type));
    if (!nf4_blocksize_valid(blocksize))
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "tensor '%s': 4-bit blocksize %lld is not a power of two in 32..4096",
                           t->name, (long long)blocksize);
    int64_t n = t->numel, nb = nf4_n_blocks(n, blocksize);
    out->type = type;
    out->rows = t->shape[0];
    out->cols = t->shape[1];
    out->blocksize = blocksize;
    out->dtype = t->dtype == ST_BF16 ? FINCH_DTYPE_BF16 : t->dtype == ST_F16 ? FINCH_DTYPE_F16 : FINCH_DTYPE_F32;
    memcpy(out->code, nf4_code_table(type), sizeof out->code);
    out->packed = malloc((size_t)nf4_packed_bytes(n));
    out->absmax = malloc((size_t)nb * sizeof(float));
    /* Rounds of a few pieces per thread: the input pages a round has read are released before the
     * next, so host memory stays near the packed output plus a round's buffers. */
    int64_t pieces = (n + NF4_CHUNK - 1) / NF4_CHUNK, per_round = 4 * (int64_t)cpu_threads();
    if (per_round > pieces) per_round = pieces;
    quantize_round q = {t, NULL, blocksize, 0, out, calloc((size_t)per_round, sizeof(float *)),
                        calloc((size_t)per_round, sizeof(int)), calloc((size_t)per_round, sizeof *q.msg)};
    int rc = FINCH_OK;
    if (!out->packed || !out->absmax || !q.bufs || !q.rc || !q.msg)
        rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "tensor '%s': out of memory quantising %lld elements", t->name, (long long)n);
    for (int64_t i = 0; i < per_round && !rc; i++)
        if (!(q.bufs[i] = malloc((size_t)(n < NF4_CHUNK ? n : NF4_CHUNK) * sizeof(float))))
            rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "tensor '%s': out of memory quantising %lld elements", t->name, (long long)n);
    code_search cs;
    if (!rc) rc = code_search_init(&cs, out->code, 16);
    q.cs = &cs;
    const unsigned char *unreleased = t->data;
    for (int64_t done = 0; done < pieces && !rc; done += per_round) {
        int64_t count = pieces - done < per_round ? pieces - done : per_round;
        q.first = done * NF4_CHUNK;
        cpu_parallel(count, count, &q, quantize_pieces);
        for (int64_t i = 0; i < count && !rc; i++)
            if (q.rc[i]) rc = finch_error(q.rc[i], "%s", q.msg[i]);
        int64_t end = q.first + count * NF4_CHUNK < n ? q.first + count * NF4_CHUNK : n;
        if (from_mapping) release_pages(&unreleased, (const unsigned char *)t->data + (size_t)end * st_dtype_size(t->dtype));
    }
    for (int64_t i = 0; q.bufs && i < per_round; i++) free(q.bufs[i]);
    free(q.bufs);
    free(q.rc);
    free(q.msg);
    if (!rc && double_quant) {
        out->nested = 1;
        out->nested_blocksize = NF4_NESTED_BLOCKSIZE;
        nf4_dynamic_map(out->nested_code);
        out->qabsmax = malloc((size_t)nb);
        out->nested_absmax = malloc((size_t)nf4_n_blocks(nb, NF4_NESTED_BLOCKSIZE) * sizeof(float));
        if (!out->qabsmax || !out->nested_absmax)
            rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "tensor '%s': out of memory", t->name);
        if (!rc) rc = nf4_double_quantize(out->absmax, nb, NF4_NESTED_BLOCKSIZE, out->nested_code, out->qabsmax,
                                          out->nested_absmax, &out->nested_offset);
        if (!rc) nf4_double_dequantize(out->qabsmax, out->nested_absmax, out->nested_offset, nb, NF4_NESTED_BLOCKSIZE,
                                       out->nested_code, out->absmax);
    }
    if (rc) {
        if (rc != FINCH_ERR_OUT_OF_MEMORY) finch_error_prefix(rc, "tensor '%s': ", t->name);
        nf4_weight_free(out);
    }
    return rc;
}

int nf4_quantize_st_tensor(const st_tensor *t, nf4_type type, int64_t blocksize, int double_quant, nf4_weight *out)
{
    return quantize_tensor(t, type, blocksize, double_quant, 0, out);
}

int nf4_quantize_from_set(const st_set *s, const char *name, nf4_type type, int64_t blocksize, int double_quant,
                          nf4_weight *out)
{
    memset(out, 0, sizeof *out);
    const st_tensor *t = st_set_find(s, name);
    if (!t) return finch_error(FINCH_ERR_FORMAT, "tensor '%s' is not in the checkpoint", name);
    int rc = quantize_tensor(t, type, blocksize, double_quant, 1, out); /* st_set tensors live in file mappings */
    if (rc) finch_error_prefix(rc, "%s: ", st_set_file_of(s, name));
    return rc;
}
