/* Attention over packed sequences (finch_attention_desc): causal, sliding window, GQA/MQA, logit
 * softcap. Work is split into (sequence, head, block of BLOCK queries) items; each item converts the
 * keys and values it can see to f32 once. The forward pass also serves attention over a key/value
 * cache (finch_attention_cache_desc), where a sequence's queries are the last of its keys' positions. The backward pass recomputes probabilities from lse and
 * runs in two race-free passes: one per query block writes dq, one per key block writes dk and dv
 * (summing over the query heads that share the kv head). */
#include "backends/cpu/cpu.h"

#include <inttypes.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

enum { BLOCK = 64 };

typedef struct attn {
    const finch_attention_desc *d;
    const int32_t *cu;
    int64_t max_len, group, blocks;     /* blocks: BLOCK-row blocks over all sequences */
    int64_t *block_seq;                 /* blocks entries: sequence of each block; its first row follows */
    int64_t *block_row;
    void *q, *k, *v, *o, *lse, *dout, *dq, *dk, *dv;
    const int32_t *kv_start, *kv_len;   /* attention over a cache: each sequence's key rows; else NULL */
    int64_t max_kv_len;
} attn;

static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }
static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* Keys j visible to query i (positions within the sequence): [*lo, *hi). */
static void keys_of(const finch_attention_desc *d, int64_t i, int64_t len, int64_t *lo, int64_t *hi)
{
    *lo = d->window > 0 ? max64(0, i - d->window + 1) : 0;
    *hi = d->causal ? i + 1 : len;
}

/* Queries i that see key j: [*lo, *hi). */
static void queries_of(const finch_attention_desc *d, int64_t j, int64_t len, int64_t *lo, int64_t *hi)
{
    *lo = d->causal ? j : 0;
    *hi = d->window > 0 ? min64(len, j + d->window) : len;
}

static float dot(const float *a, const float *b, int64_t n)
{
    float s = 0;
    #pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

static float cap(const finch_attention_desc *d, float s)
{
    return d->softcap > 0 ? d->softcap * tanhf(s / d->softcap) : s;
}

/* Rows [r0, r1) of one head of a [n_tokens, heads * head_dim] tensor, as f32. */
static const float *head_rows(const attn *a, const void *base, int64_t ld, int64_t head, int64_t r0, int64_t r1,
                              float *scratch, int64_t *ld_out)
{
    finch_dtype t = a->d->dtype;
    return cpu_load_block(t, cpu_at(t, base, r0 * ld + head * a->d->head_dim), r1 - r0, a->d->head_dim, ld, scratch,
                          ld_out);
}

/* Sequence blocks of BLOCK query rows, from a->cu; a->max_len set. */
static int make_blocks(attn *a, const char *op)
{
    const finch_attention_desc *d = a->d;
    for (int64_t s = 0; s < d->n_seqs; s++) {
        int64_t len = (int64_t)a->cu[s + 1] - a->cu[s];
        if (len < 0)
            return finch_error(FINCH_ERR_INVALID_ARGUMENT, "cpu %s: cu_seqlens decreases at sequence %" PRId64, op, s);
        a->max_len = max64(a->max_len, len);
        a->blocks += (len + BLOCK - 1) / BLOCK;
    }
    a->block_seq = malloc(2 * (size_t)(a->blocks + 1) * sizeof(int64_t));
    if (!a->block_seq) return cpu_oom(2 * (size_t)(a->blocks + 1) * sizeof(int64_t), op);
    a->block_row = a->block_seq + a->blocks + 1;
    for (int64_t s = 0, b = 0; s < d->n_seqs; s++)
        for (int64_t r = 0; r < (int64_t)a->cu[s + 1] - a->cu[s]; r += BLOCK, b++) {
            a->block_seq[b] = s;
            a->block_row[b] = r;
        }
    return FINCH_OK;
}

static int attn_setup(const finch_attention_desc *d, int backward, attn *a)
{
    const char *op = backward ? "attention_backward" : "attention_forward";
    memset(a, 0, sizeof *a);
    a->d = d;
    if (!d) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "cpu %s: descriptor is NULL", op);
    if (d->n_tokens < 0 || d->n_seqs < 1 || d->n_heads < 1 || d->n_kv_heads < 1 || d->head_dim < 1 ||
        d->n_heads % d->n_kv_heads || d->window < 0)
        return finch_error(FINCH_ERR_INVALID_ARGUMENT,
                           "cpu %s: bad shape tokens %" PRId64 " seqs %" PRId64 " heads %" PRId64 " kv heads %" PRId64
                           " head_dim %" PRId64 " window %" PRId64,
                           op, d->n_tokens, d->n_seqs, d->n_heads, d->n_kv_heads, d->head_dim, d->window);
    int rc = cpu_check_float(d->dtype, op);
    if (rc) return rc;
    void *cu;
    char what[64];
    snprintf(what, sizeof what, "%s: cu_seqlens", op);
    if ((rc = cpu_matrix(d->cu_seqlens, FINCH_DTYPE_I32, 1, d->n_seqs + 1, d->n_seqs + 1, what, &cu))) return rc;
    a->cu = cu;
    if (a->cu[0] != 0 || a->cu[d->n_seqs] != d->n_tokens)
        return finch_error(FINCH_ERR_INVALID_ARGUMENT,
                           "cpu %s: cu_seqlens must run from 0 to n_tokens %" PRId64 " (got %d .. %d)", op,
                           d->n_tokens, a->cu[0], a->cu[d->n_seqs]);
    int64_t wq = d->n_heads * d->head_dim, wkv = d->n_kv_heads * d->head_dim, n = d->n_tokens;
#define MAT(field, width, ld, req)                                                                          \
    snprintf(what, sizeof what, "%s: " #field, op);                                                         \
    if ((rc = (req) ? cpu_matrix(d->field, d->dtype, n, width, ld, what, &a->field)                         \
                    : cpu_matrix_opt(d->field, d->dtype, n, width, ld, what, &a->field)))                   \
        return rc;
    MAT(q, wq, d->ldq, 1)
    MAT(k, wkv, d->ldk, 1)
    MAT(v, wkv, d->ldv, 1)
    MAT(o, wq, d->ldo, 1)
    if (backward) {
        MAT(dout, wq, d->lddout, 1)
        MAT(dq, wq, d->lddq, 0)
        MAT(dk, wkv, d->lddk, 0)
        MAT(dv, wkv, d->lddv, 0)
    }
#undef MAT
    snprintf(what, sizeof what, "%s: lse", op);
    rc = backward ? cpu_matrix(d->lse, FINCH_DTYPE_F32, d->n_heads, n, n, what, &a->lse)
                  : cpu_matrix_opt(d->lse, FINCH_DTYPE_F32, d->n_heads, n, n, what, &a->lse);
    if (rc) return rc;
    a->group = d->n_heads / d->n_kv_heads;
    return make_blocks(a, op);
}

/* The forward pass of a set-up attn; frees its blocks. Sequence s's queries are rows cu[s] .. of q;
 * its keys are rows kv_start[s] .. of k and v (or the same rows as its queries), and query i sits at
 * key position kv_len[s] - len + i. */
/* One attention pass over items (query or key blocks of one head), for the chunk bodies below. */
/* Items differ in cost (causal blocks see more keys the later they sit), so they are handed out in
 * small chunks: up to 16 a thread. */
static int64_t attn_chunks(int64_t items, int wide)
{
    int64_t chunks = cpu_chunks(items, wide) * 4;
    return chunks < items ? chunks : items;
}

typedef struct attn_job attn_job;
struct attn_job {
    const attn *a;
    int64_t L;       /* the most keys (forward) or rows (backward) of any sequence */
    float *D;        /* backward: D[h, i] = dout_i . o_i */
    size_t floats;   /* scratch an item needs */
    void (*item)(const attn_job *job, int64_t it, float *buf);
    atomic_int oom;
};

/* job->item for items it0..it1, with one scratch buffer. */
static void attn_items(void *ctx, int64_t it0, int64_t it1, int chunk)
{
    attn_job *job = ctx;
    float *buf = malloc(job->floats * sizeof(float));
    if (!buf) {
        atomic_store(&job->oom, 1);
        return;
    }
    for (int64_t it = it0; it < it1; it++) job->item(job, it, buf);
    free(buf);
}

static void forward_item(const attn_job *job, int64_t it, float *buf)
{
    const attn a = *job->a;
    const finch_attention_desc *d = a.d;
    int64_t hd = d->head_dim, n = d->n_tokens, L = job->L;
    finch_dtype t = d->dtype;
    float *kb = buf, *vb = kb + L * hd, *p = vb + L * hd, *qb = p + L, *ob = qb + hd;
    int64_t blk = it / d->n_heads, h = it % d->n_heads, kvh = h / a.group;
    int64_t seq = a.block_seq[blk], start = a.cu[seq], len = a.cu[seq + 1] - start;
    int64_t kstart = a.kv_start ? a.kv_start[seq] : start, klen = a.kv_len ? a.kv_len[seq] : len;
    int64_t off = klen - len; /* position of query row 0 among the keys */
    int64_t i0 = a.block_row[blk], i1 = min64(len, i0 + BLOCK), jlo, jhi, unused, ldk, ldv, ldq;
    keys_of(d, off + i0, klen, &jlo, &unused);
    keys_of(d, off + i1 - 1, klen, &unused, &jhi);
    const float *K = head_rows(&a, a.k, d->ldk, kvh, kstart + jlo, kstart + jhi, kb, &ldk);
    const float *V = head_rows(&a, a.v, d->ldv, kvh, kstart + jlo, kstart + jhi, vb, &ldv);
    for (int64_t i = i0; i < i1; i++) {
        const float *q = head_rows(&a, a.q, d->ldq, h, start + i, start + i + 1, qb, &ldq);
        int64_t lo, hi;
        keys_of(d, off + i, klen, &lo, &hi);
        float mx = -INFINITY;
        for (int64_t j = lo; j < hi; j++) {
            p[j - lo] = cap(d, d->scale * dot(q, K + (j - jlo) * ldk, hd));
            mx = fmaxf(mx, p[j - lo]);
        }
        float sum = 0;
        for (int64_t j = lo; j < hi; j++) sum += p[j - lo] = expf(p[j - lo] - mx);
        for (int64_t e = 0; e < hd; e++) ob[e] = 0;
        for (int64_t j = lo; j < hi; j++) {
            const float *vr = V + (j - jlo) * ldv;
            float w = p[j - lo] / sum;
            for (int64_t e = 0; e < hd; e++) ob[e] += w * vr[e];
        }
        cpu_store(t, ob, hd, cpu_at(t, a.o, (start + i) * d->ldo + h * hd));
        if (a.lse) ((float *)a.lse)[h * n + start + i] = mx + logf(sum);
    }
}

/* The forward pass of a set-up attn; frees its blocks. Sequence s's queries are rows cu[s] .. of q;
 * its keys are rows kv_start[s] .. of k and v (or the same rows as its queries), and query i sits at
 * key position kv_len[s] - len + i. */
static int forward_run(attn *ap)
{
    const finch_attention_desc *d = ap->d;
    int64_t hd = d->head_dim, n = d->n_tokens, L = ap->kv_len ? ap->max_kv_len : ap->max_len;
    attn_job job = {.a = ap, .L = L, .floats = 2 * (size_t)(L * hd) + (size_t)L + 2 * (size_t)hd, .item = forward_item};
    cpu_parallel(ap->blocks * d->n_heads, attn_chunks(ap->blocks * d->n_heads, n * hd * L > (1 << 15)), &job,
                 attn_items);
    free(ap->block_seq);
    return atomic_load(&job.oom) ? cpu_oom(job.floats * sizeof(float), "attention_forward") : FINCH_OK;
}

int cpu_attention_forward(finch_plugin_device *dev, finch_plugin_stream *s, const finch_attention_desc *d)
{
    attn a;
    int rc = attn_setup(d, 0, &a);
    if (rc) {
        free(a.block_seq);
        return rc;
    }
    return forward_run(&a);
}

int cpu_attention_cache_forward(finch_plugin_device *dev, finch_plugin_stream *s, const finch_attention_cache_desc *c)
{
    const char *op = "attention_cache_forward";
    if (!c) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "cpu %s: descriptor is NULL", op);
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
    attn a;
    memset(&a, 0, sizeof a);
    a.d = &d;
    if (c->n_tokens < 0 || c->n_seqs < 1 || c->n_heads < 1 || c->n_kv_heads < 1 || c->head_dim < 1 ||
        c->n_heads % c->n_kv_heads || c->window < 0 || c->kv_rows < 0)
        return finch_error(FINCH_ERR_INVALID_ARGUMENT,
                           "cpu %s: bad shape tokens %" PRId64 " seqs %" PRId64 " heads %" PRId64 " kv heads %" PRId64
                           " head_dim %" PRId64 " window %" PRId64 " kv rows %" PRId64,
                           op, c->n_tokens, c->n_seqs, c->n_heads, c->n_kv_heads, c->head_dim, c->window, c->kv_rows);
    int rc = cpu_check_float(c->dtype, op);
    if (rc) return rc;
    void *p;
    if ((rc = cpu_matrix(c->cu_seqlens_q, FINCH_DTYPE_I32, 1, c->n_seqs + 1, c->n_seqs + 1, "attention_cache_forward: cu_seqlens_q", &p)))
        return rc;
    a.cu = p;
    if ((rc = cpu_matrix(c->kv_start, FINCH_DTYPE_I32, 1, c->n_seqs, c->n_seqs, "attention_cache_forward: kv_start", &p)))
        return rc;
    a.kv_start = p;
    if ((rc = cpu_matrix(c->kv_len, FINCH_DTYPE_I32, 1, c->n_seqs, c->n_seqs, "attention_cache_forward: kv_len", &p)))
        return rc;
    a.kv_len = p;
    if (a.cu[0] != 0 || a.cu[c->n_seqs] != c->n_tokens)
        return finch_error(FINCH_ERR_INVALID_ARGUMENT,
                           "cpu %s: cu_seqlens_q must run from 0 to n_tokens %" PRId64 " (got %d .. %d)", op, c->n_tokens,
                           a.cu[0], a.cu[c->n_seqs]);
    for (int64_t q = 0; q < c->n_seqs; q++) {
        int64_t qlen = (int64_t)a.cu[q + 1] - a.cu[q];
        if (a.kv_start[q] < 0 || a.kv_len[q] < qlen || (int64_t)a.kv_start[q] + a.kv_len[q] > c->kv_rows)
            return finch_error(FINCH_ERR_INVALID_ARGUMENT,
                               "cpu %s: sequence %" PRId64 ": keys at rows %d + %d of %" PRId64 " for %" PRId64
                               " queries (need kv_len >= q_len, inside the kv rows)",
                               op, q, a.kv_start[q], a.kv_len[q], c->kv_rows, qlen);
        a.max_kv_len = max64(a.max_kv_len, a.kv_len[q]);
    }
    int64_t wq = c->n_heads * c->head_dim, wkv = c->n_kv_heads * c->head_dim;
    if ((rc = cpu_matrix(c->q, c->dtype, c->n_tokens, wq, c->ldq, "attention_cache_forward: q", &a.q)) ||
        (rc = cpu_matrix(c->k, c->dtype, c->kv_rows, wkv, c->ldk, "attention_cache_forward: k", &a.k)) ||
        (rc = cpu_matrix(c->v, c->dtype, c->kv_rows, wkv, c->ldv, "attention_cache_forward: v", &a.v)) ||
        (rc = cpu_matrix(c->o, c->dtype, c->n_tokens, wq, c->ldo, "attention_cache_forward: o", &a.o)) ||
        (rc = cpu_matrix_opt(c->lse, FINCH_DTYPE_F32, c->n_heads, c->n_tokens, c->n_tokens, "attention_cache_forward: lse", &a.lse)))
        return rc;
    a.group = c->n_heads / c->n_kv_heads;
    if ((rc = make_blocks(&a, op))) {
        free(a.block_seq);
        return rc;
    }
    return forward_run(&a);
}

/* Probability and score gradient of one (query, key) pair, given q.k, dout.v and D = dout.o. */
static void pair_grad(const finch_attention_desc *d, float qk, float lse, float dov, float D, float *p, float *ds)
{
    float sc = cap(d, d->scale * qk);
    *p = expf(sc - lse);
    float g = *p * (dov - D);
    if (d->softcap > 0) g *= 1.0f - (sc / d->softcap) * (sc / d->softcap);
    *ds = g * d->scale;   /* d loss / d (q.k) */
}

static void backward_D(const attn_job *job, int64_t it, float *buf)
{
    const attn a = *job->a;
    const finch_attention_desc *d = a.d;
    int64_t hd = d->head_dim, n = d->n_tokens, nh = d->n_heads;
    float *D = job->D;
    /* D[h, i] = dout_i . o_i */
    int64_t i = it / nh, h = it % nh, ld;
    const float *dor = head_rows(&a, a.dout, d->lddout, h, i, i + 1, buf, &ld);
    const float *orow = head_rows(&a, a.o, d->ldo, h, i, i + 1, buf + hd, &ld);
    D[h * n + i] = dot(dor, orow, hd);
}

static void backward_dq(const attn_job *job, int64_t it, float *buf)
{
    const attn a = *job->a;
    const finch_attention_desc *d = a.d;
    int64_t hd = d->head_dim, n = d->n_tokens, L = job->L, nh = d->n_heads;
    const float *lse = a.lse;
    float *D = job->D;
    finch_dtype t = d->dtype;
    /* dq, one query block of one head per item */
    float *kb = buf, *vb = kb + L * hd, *qb = vb + L * hd, *db = qb + hd, *acc = db + hd;
    int64_t blk = it / nh, h = it % nh, kvh = h / a.group;
    int64_t seq = a.block_seq[blk], start = a.cu[seq], len = a.cu[seq + 1] - start;
    int64_t i0 = a.block_row[blk], i1 = min64(len, i0 + BLOCK), jlo, jhi, unused, ldk, ldv, ld;
    keys_of(d, i0, len, &jlo, &unused);
    keys_of(d, i1 - 1, len, &unused, &jhi);
    const float *K = head_rows(&a, a.k, d->ldk, kvh, start + jlo, start + jhi, kb, &ldk);
    const float *V = head_rows(&a, a.v, d->ldv, kvh, start + jlo, start + jhi, vb, &ldv);
    for (int64_t i = i0; i < i1; i++) {
        const float *q = head_rows(&a, a.q, d->ldq, h, start + i, start + i + 1, qb, &ld);
        const float *dor = head_rows(&a, a.dout, d->lddout, h, start + i, start + i + 1, db, &ld);
        float li = lse[h * n + start + i], Di = D[h * n + start + i];
        int64_t lo, hi;
        keys_of(d, i, len, &lo, &hi);
        for (int64_t e = 0; e < hd; e++) acc[e] = 0;
        for (int64_t j = lo; j < hi; j++) {
            const float *kr = K + (j - jlo) * ldk;
            float p, ds;
            pair_grad(d, dot(q, kr, hd), li, dot(dor, V + (j - jlo) * ldv, hd), Di, &p, &ds);
            for (int64_t e = 0; e < hd; e++) acc[e] += ds * kr[e];
        }
        cpu_store(t, acc, hd, cpu_at(t, a.dq, (start + i) * d->lddq + h * hd));
    }
}

static void backward_dkdv(const attn_job *job, int64_t it, float *buf)
{
    const attn a = *job->a;
    const finch_attention_desc *d = a.d;
    int64_t hd = d->head_dim, n = d->n_tokens, L = job->L;
    const float *lse = a.lse;
    float *D = job->D;
    finch_dtype t = d->dtype;
    /* dk, dv, one key block of one kv head per item, over every query head of its group */
    float *qb = buf, *db = qb + L * hd, *kb = db + L * hd, *vb = kb + BLOCK * hd;
    float *dk = vb + BLOCK * hd, *dv = dk + BLOCK * hd;
    int64_t blk = it / d->n_kv_heads, kvh = it % d->n_kv_heads;
    int64_t seq = a.block_seq[blk], start = a.cu[seq], len = a.cu[seq + 1] - start;
    int64_t j0 = a.block_row[blk], j1 = min64(len, j0 + BLOCK), ilo, ihi, unused, ldk, ldv, ldq, ldd;
    queries_of(d, j0, len, &ilo, &unused);
    queries_of(d, j1 - 1, len, &unused, &ihi);
    const float *K = head_rows(&a, a.k, d->ldk, kvh, start + j0, start + j1, kb, &ldk);
    const float *V = head_rows(&a, a.v, d->ldv, kvh, start + j0, start + j1, vb, &ldv);
    for (int64_t e = 0; e < (j1 - j0) * hd; e++) dk[e] = dv[e] = 0;
    for (int64_t h = kvh * a.group; h < (kvh + 1) * a.group; h++) {
        const float *Q = head_rows(&a, a.q, d->ldq, h, start + ilo, start + ihi, qb, &ldq);
        const float *DO = head_rows(&a, a.dout, d->lddout, h, start + ilo, start + ihi, db, &ldd);
        for (int64_t i = ilo; i < ihi; i++) {
            const float *q = Q + (i - ilo) * ldq, *dor = DO + (i - ilo) * ldd;
            float li = lse[h * n + start + i], Di = D[h * n + start + i];
            int64_t lo, hi;
            keys_of(d, i, len, &lo, &hi);
            for (int64_t j = max64(lo, j0); j < min64(hi, j1); j++) {
                float p, ds;
                pair_grad(d, dot(q, K + (j - j0) * ldk, hd), li, dot(dor, V + (j - j0) * ldv, hd), Di, &p,
                          &ds);
                float *dkr = dk + (j - j0) * hd, *dvr = dv + (j - j0) * hd;
                for (int64_t e = 0; e < hd; e++) {
                    dkr[e] += ds * q[e];
                    dvr[e] += p * dor[e];
                }
            }
        }
    }
    for (int64_t j = j0; j < j1; j++) {
        if (a.dk) cpu_store(t, dk + (j - j0) * hd, hd, cpu_at(t, a.dk, (start + j) * d->lddk + kvh * hd));
        if (a.dv) cpu_store(t, dv + (j - j0) * hd, hd, cpu_at(t, a.dv, (start + j) * d->lddv + kvh * hd));
    }
}

int cpu_attention_backward(finch_plugin_device *dev, finch_plugin_stream *s, const finch_attention_desc *d)
{
    attn a;
    int rc = attn_setup(d, 1, &a);
    float *D = NULL;
    if (!rc) {
        D = malloc((size_t)(d->n_heads * d->n_tokens + 1) * sizeof(float));
        if (!D) rc = cpu_oom((size_t)(d->n_heads * d->n_tokens) * sizeof(float), "attention_backward");
    }
    if (rc) {
        free(a.block_seq);
        return rc;
    }
    int64_t hd = d->head_dim, n = d->n_tokens, L = a.max_len, nh = d->n_heads;
    int wide = n * hd * L > (1 << 15);
    attn_job job = {.a = &a, .L = L, .D = D,
                    .floats = 4 * (size_t)(L * hd) + 6 * (size_t)hd + 4 * (size_t)(BLOCK * hd)};
    job.item = backward_D;
    cpu_parallel(n * nh, cpu_chunks(n * nh, wide), &job, attn_items);
    job.item = backward_dq;
    if (!atomic_load(&job.oom) && a.dq) cpu_parallel(a.blocks * nh, attn_chunks(a.blocks * nh, wide), &job, attn_items);
    int64_t kv_items = a.blocks * d->n_kv_heads;
    job.item = backward_dkdv;
    if (!atomic_load(&job.oom) && (a.dk || a.dv)) cpu_parallel(kv_items, attn_chunks(kv_items, wide), &job, attn_items);
    int oom = atomic_load(&job.oom);
    size_t floats = job.floats;
    free(D);
    free(a.block_seq);
    return oom ? cpu_oom(floats * sizeof(float), "attention_backward") : FINCH_OK;
}

/* attention_cache_append_forward: the four calls it stands for, one after another. */
int cpu_attention_cache_append_forward(finch_plugin_device *dev, finch_plugin_stream *s, const finch_attention_cache_desc *c,
                                       const finch_rope_desc *rope, finch_dptr k_new, int64_t ldk_new, finch_dptr v_new,
                                       int64_t ldv_new, finch_dptr rows)
{
    if (!c) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "cpu attention_cache_append_forward: descriptor is NULL");
    int64_t width = c->n_kv_heads * c->head_dim;
    int rc = FINCH_OK;
    if (rope) {
        finch_rope_desc r = *rope;
        r.n_tokens = c->n_tokens;
        r.dtype = c->dtype;
        r.x = c->q;
        r.ldx = c->ldq;
        r.n_heads = c->n_heads;
        if (!(rc = cpu_rope_forward(dev, s, &r))) {
            r.x = k_new;
            r.ldx = ldk_new;
            r.n_heads = c->n_kv_heads;
            rc = cpu_rope_forward(dev, s, &r);
        }
    }
    if (!rc) rc = cpu_copy_rows(dev, s, c->dtype, c->n_tokens, width, k_new, ldk_new, rows, c->k, c->ldk);
    if (!rc) rc = cpu_copy_rows(dev, s, c->dtype, c->n_tokens, width, v_new, ldv_new, rows, c->v, c->ldv);
    return rc ? rc : cpu_attention_cache_forward(dev, s, c);
}
