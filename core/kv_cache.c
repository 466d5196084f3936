#include "core/kv_cache.h"
#include "core/error.h"

#include <stdlib.h>
#include <string.h>

#define API (c->be->api)
#define DEV c->be->dev, c->be->stream

static size_t row_bytes(const finch_kv_cache *c) { return (size_t)c->width * finch_dtype_size(c->dtype); }

/* Row `row` of slot `slot` of layer l's keys (kind 0) or values (kind 1) in a buffer of capacity cap. */
static finch_dptr cache_at(const finch_kv_cache *c, finch_plugin_buffer *buf, int64_t cap, int64_t l, int kind,
                           int64_t slot, int64_t row)
{
    int64_t r = ((l * 2 + kind) * c->n_slots + slot) * cap + row;
    finch_dptr p = {buf, (size_t)r * row_bytes(c)};
    return p;
}

int finch_kv_cache_init(finch_kv_cache *c, const finch_backend *be, int64_t n_layers, int64_t n_slots, int64_t width,
                        finch_dtype dtype)
{
    memset(c, 0, sizeof *c);
    c->be = be;
    c->n_layers = n_layers;
    c->n_slots = n_slots;
    c->width = width;
    c->dtype = dtype;
    c->len = calloc((size_t)n_slots, sizeof *c->len);
    c->slots = calloc((size_t)n_slots, sizeof *c->slots);
    c->n_new = calloc((size_t)n_slots, sizeof *c->n_new);
    c->host_cap = (size_t)(4 * n_slots + 1);
    c->host = calloc(c->host_cap, sizeof *c->host);
    if (!c->len || !c->slots || !c->n_new || !c->host) {
        finch_kv_cache_free(c);
        return finch_error(FINCH_ERR_OUT_OF_MEMORY, "key/value cache: out of host memory");
    }
    return FINCH_OK;
}

void finch_kv_cache_free(finch_kv_cache *c)
{
    if (c->buf) API->free(c->be->dev, c->buf);
    free(c->len);
    free(c->slots);
    free(c->n_new);
    free(c->host);
    memset(c, 0, sizeof *c);
}

void finch_kv_cache_drop(finch_kv_cache *c)
{
    if (c->buf) API->free(c->be->dev, c->buf);
    c->buf = NULL;
    c->generation++;
    c->capacity = 0;
    for (int64_t i = 0; i < c->n_slots; i++) c->len[i] = 0;
    c->n_active = 0;
}

int finch_kv_cache_reserve(finch_kv_cache *c, int64_t tokens)
{
    if (tokens <= c->capacity) return FINCH_OK;
    int64_t cap = (tokens + FINCH_KV_CACHE_CHUNK - 1) / FINCH_KV_CACHE_CHUNK * FINCH_KV_CACHE_CHUNK;
    size_t bytes = (size_t)(c->n_layers * 2 * c->n_slots * cap) * row_bytes(c);
    finch_plugin_buffer *buf = NULL;
    if (API->alloc(c->be->dev, bytes, &buf))
        return finch_error(FINCH_ERR_OUT_OF_MEMORY, "key/value cache: cannot allocate %zu bytes for %lld tokens x %lld sequences: %s",
                           bytes, (long long)cap, (long long)c->n_slots, API->last_error());
    for (int64_t l = 0; l < c->n_layers; l++)
        for (int kind = 0; kind < 2; kind++)
            for (int64_t s = 0; s < c->n_slots; s++) {
                if (!c->len[s]) continue;
                if (API->copy(DEV, cache_at(c, buf, cap, l, kind, s, 0), cache_at(c, c->buf, c->capacity, l, kind, s, 0),
                              (size_t)c->len[s] * row_bytes(c))) {
                    int rc = finch_device_error(c->be, FINCH_ERR_DEVICE, "growing the key/value cache");
                    API->free(c->be->dev, buf);
                    return rc;
                }
            }
    if (c->buf) API->free(c->be->dev, c->buf);
    c->buf = buf;
    c->capacity = cap;
    c->generation++;
    return FINCH_OK;
}

int finch_kv_cache_begin(finch_kv_cache *c, finch_arena *arena, int n, const int *slots, const int64_t *n_new)
{
    if (n < 1 || n > c->n_slots) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "key/value cache: %d sequences in a pass (1 to %lld)", n, (long long)c->n_slots);
    int64_t total = 0;
    for (int i = 0; i < n; i++) {
        if (n_new[i] < 1 || n_new[i] > INT32_MAX - total)
            return finch_error(FINCH_ERR_INVALID_ARGUMENT, "sequence %d: %lld new tokens (1 to %d in all)", slots[i], (long long)n_new[i], INT32_MAX);
        total += n_new[i];
    }
    /* Staging: cu_q [n + 1], kv_start [n], kv_len [n], rows [total]. */
    size_t entries = (size_t)(3 * n + 1) + (size_t)total;
    if (entries > c->host_cap) {
        int32_t *p = realloc(c->host, entries * sizeof *p);
        if (!p) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "key/value cache: out of host memory");
        c->host = p;
        c->host_cap = entries;
    }
    int32_t *cu = c->host, *start = cu + n + 1, *kvlen = start + n, *rows = kvlen + n;
    int64_t need = 0;
    c->max_q = c->max_kv = 0;
    cu[0] = 0;
    for (int i = 0; i < n; i++) {
        int s = slots[i];
        if (s < 0 || s >= c->n_slots) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "sequence %d is outside [0, %lld)", s, (long long)c->n_slots);
        for (int j = 0; j < i; j++)
            if (slots[j] == s) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "sequence %d appears twice in one pass", s);
        c->slots[i] = s;
        c->n_new[i] = n_new[i];
        int64_t held_after = c->len[s] + n_new[i];
        if (held_after > INT32_MAX) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "key/value cache: too many tokens");
        cu[i + 1] = (int32_t)(cu[i] + n_new[i]);
        kvlen[i] = (int32_t)held_after;
        if (held_after > need) need = held_after;
        if (n_new[i] > c->max_q) c->max_q = n_new[i];
    }
    c->n_active = n;
    int rc = finch_kv_cache_reserve(c, need);
    if (rc) return rc;
    if (c->n_slots * c->capacity > INT32_MAX) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "key/value cache: too many tokens");
    c->max_kv = c->max_q == 1 ? c->capacity : need;
    for (int i = 0; i < n; i++) {
        start[i] = (int32_t)((int64_t)slots[i] * c->capacity);
        for (int64_t t = 0; t < n_new[i]; t++) rows[cu[i] + t] = (int32_t)(start[i] + c->len[slots[i]] + t);
    }
    finch_dptr d;
    size_t bytes = entries * sizeof(int32_t);
    if ((rc = finch_arena_alloc(arena, bytes, &d))) return rc;
    if (API->write(DEV, d, c->host, bytes)) return finch_device_error(c->be, FINCH_ERR_DEVICE, "uploading the cache layout");
    c->cu_q = d;
    c->kv_start = finch_dptr_at(d, (size_t)(n + 1) * sizeof(int32_t));
    c->kv_len = finch_dptr_at(d, (size_t)(2 * n + 1) * sizeof(int32_t));
    c->rows = finch_dptr_at(d, (size_t)(3 * n + 1) * sizeof(int32_t));
    return FINCH_OK;
}

/* For a plugin without attention_cache_forward (ABI 1.0): each sequence's queries are placed at the end
 * of a zero block as long as its keys, and attention_forward runs over all of them; the rows before
 * are discarded. Correct, but quadratic in the sequence length per token. */
static int attention_fallback(finch_kv_cache *c, finch_graph *g, int64_t layer, const finch_tensor *q,
                              const finch_attention_params *p, finch_tensor *o)
{
    const int32_t *cu = c->host;
    int64_t wq = p->n_heads * p->head_dim;
    size_t es = finch_dtype_size(c->dtype);
    for (int i = 0; i < c->n_active; i++) {
        int s = c->slots[i];
        int64_t nq = c->n_new[i], kvl = c->len[s] + nq;
        finch_dptr qf, of, lse, cu2;
        int32_t cu_host[2] = {0, (int32_t)kvl};
        int rc;
        if ((rc = finch_arena_alloc(g->arena, (size_t)(kvl * wq) * es, &qf)) ||
            (rc = finch_arena_alloc(g->arena, (size_t)(kvl * wq) * es, &of)) ||
            (rc = finch_arena_alloc(g->arena, (size_t)(p->n_heads * kvl) * sizeof(float), &lse)) ||
            (rc = finch_arena_alloc(g->arena, sizeof cu_host, &cu2)))
            return rc;
        if (API->write(DEV, cu2, cu_host, sizeof cu_host) || API->fill(DEV, qf, c->dtype, (kvl - nq) * wq, 0.0f) ||
            API->copy_2d(DEV, c->dtype, nq, wq, finch_dptr_at(q->data, (size_t)(cu[i] * q->ld) * es), q->ld,
                         finch_dptr_at(qf, (size_t)((kvl - nq) * wq) * es), wq))
            return finch_device_error(c->be, FINCH_ERR_DEVICE, "cache attention (fallback)");
        finch_attention_desc d;
        memset(&d, 0, sizeof d);
        d.n_tokens = kvl;
        d.n_seqs = 1;
        d.max_seqlen = kvl;
        d.cu_seqlens = cu2;
        d.n_heads = p->n_heads;
        d.n_kv_heads = p->n_kv_heads;
        d.head_dim = p->head_dim;
        d.dtype = c->dtype;
        d.q = qf;
        d.ldq = wq;
        d.k = cache_at(c, c->buf, c->capacity, layer, 0, s, 0);
        d.ldk = c->width;
        d.v = cache_at(c, c->buf, c->capacity, layer, 1, s, 0);
        d.ldv = c->width;
        d.o = of;
        d.ldo = wq;
        d.lse = lse;
        d.scale = p->scale;
        d.softcap = p->softcap;
        d.causal = 1;
        d.window = p->window;
        if ((rc = API->attention_forward(DEV, &d))) return finch_device_error(c->be, rc, "cache attention (fallback)");
        if (API->copy_2d(DEV, c->dtype, nq, wq, finch_dptr_at(of, (size_t)((kvl - nq) * wq) * es), wq,
                         finch_dptr_at(o->data, (size_t)(cu[i] * o->ld) * es), o->ld))
            return finch_device_error(c->be, FINCH_ERR_DEVICE, "cache attention (fallback)");
    }
    return FINCH_OK;
}

int finch_kv_cache_rotates(const finch_kv_cache *c)
{
    return API->attention_cache_append_forward && API->attention_cache_forward && API->copy_rows;
}

int finch_kv_cache_attention(finch_kv_cache *c, finch_graph *g, int64_t layer, const finch_tensor *q,
                             const finch_tensor *k, const finch_tensor *v, const finch_attention_params *p,
                             const finch_rope_params *rope, finch_tensor *o)
{
    if (k->cols != c->width || v->cols != c->width || q->dtype != c->dtype || k->dtype != c->dtype || layer >= c->n_layers ||
        (rope && !finch_kv_cache_rotates(c)))
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "internal: key/value cache shape");
    const int32_t *cu = c->host;
    size_t es = finch_dtype_size(c->dtype);
    for (int kind = 0; !rope && API->copy_rows && kind < 2; kind++) {
        const finch_tensor *t = kind ? v : k;
        if (API->copy_rows(DEV, c->dtype, t->rows, c->width, t->data, t->ld, c->rows, cache_at(c, c->buf, c->capacity, layer, kind, 0, 0),
                           c->width))
            return finch_device_error(c->be, FINCH_ERR_DEVICE, "appending to the key/value cache");
    }
    for (int i = 0; !API->copy_rows && i < c->n_active; i++) {
        int s = c->slots[i];
        for (int kind = 0; kind < 2; kind++) {
            const finch_tensor *t = kind ? v : k;
            if (API->copy_2d(DEV, c->dtype, c->n_new[i], c->width, finch_dptr_at(t->data, (size_t)(cu[i] * t->ld) * es), t->ld,
                             cache_at(c, c->buf, c->capacity, layer, kind, s, c->len[s]), c->width))
                return finch_device_error(c->be, FINCH_ERR_DEVICE, "appending to the key/value cache");
        }
    }
    int rc = finch_graph_tensor(g, q->dtype, q->rows, p->n_heads * p->head_dim, 0, o);
    if (rc) return rc;
    if (!API->attention_cache_forward) return attention_fallback(c, g, layer, q, p, o);
    finch_attention_cache_desc d;
    memset(&d, 0, sizeof d);
    d.n_tokens = q->rows;
    d.n_seqs = c->n_active;
    d.max_q_len = c->max_q;
    d.max_kv_len = c->max_kv;
    d.cu_seqlens_q = c->cu_q;
    d.kv_start = c->kv_start;
    d.kv_len = c->kv_len;
    d.kv_rows = c->n_slots * c->capacity;
    d.n_heads = p->n_heads;
    d.n_kv_heads = p->n_kv_heads;
    d.head_dim = p->head_dim;
    d.dtype = c->dtype;
    d.q = q->data;
    d.ldq = q->ld;
    d.k = cache_at(c, c->buf, c->capacity, layer, 0, 0, 0);
    d.ldk = c->width;
    d.v = cache_at(c, c->buf, c->capacity, layer, 1, 0, 0);
    d.ldv = c->width;
    d.o = o->data;
    d.ldo = o->ld;
    d.scale = p->scale;
    d.softcap = p->softcap;
    d.causal = 1;
    d.window = p->window;
    if (rope) {
        finch_rope_desc r = finch_rope_desc_of(q, rope);
        rc = API->attention_cache_append_forward(DEV, &d, &r, k->data, k->ld, v->data, v->ld, c->rows);
    } else {
        rc = API->attention_cache_forward(DEV, &d);
    }
    if (rc) return finch_device_error(c->be, rc, "attention over the key/value cache");
    return FINCH_OK;
}

void finch_kv_cache_commit(finch_kv_cache *c)
{
    for (int i = 0; i < c->n_active; i++) c->len[c->slots[i]] += c->n_new[i];
    c->n_active = 0;
}

void finch_kv_cache_truncate(finch_kv_cache *c, int slot, int64_t tokens)
{
    if (slot >= 0 && slot < c->n_slots && tokens >= 0 && tokens < c->len[slot]) c->len[slot] = tokens;
}
