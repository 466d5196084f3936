/* The BPE model: a piece becomes one symbol per character (or <0xNN> byte tokens, or unk), then the
 * adjacent pair with the lowest merge rank is merged repeatedly. A binary heap of candidate merges,
 * ordered by (rank, position) as Hugging Face orders them, keeps this O(n log n) per piece. */
#include "core/error.h"
#include "core/tokenizer.h"
#include "core/unicode.h"

#include <stdlib.h>
#include <string.h>

#define CACHE_MAX_PIECE 256
#define CACHE_MAX_ENTRIES 200000

static size_t pair_slot(uint64_t pair, size_t mask) { return (size_t)((pair * 0x9E3779B97F4A7C15ull) >> 17) & mask; }

static const tok_merge_slot *merge_find(const tok_bpe *m, int32_t a, int32_t b)
{
    if (!m->merges) return NULL;
    uint64_t pair = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t j = pair_slot(pair, m->merges_mask);
    while (m->merges[j].rank >= 0) {
        if (m->merges[j].pair == pair) return &m->merges[j];
        j = (j + 1) & m->merges_mask;
    }
    return NULL;
}

int tok_bpe_reserve_merges(tok_bpe *m, size_t n)
{
    size_t cap = 64;
    while (cap < n * 2) cap *= 2;
    free(m->merges);
    m->merges = malloc(cap * sizeof *m->merges);
    if (!m->merges) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "BPE merges");
    for (size_t i = 0; i < cap; i++) m->merges[i].rank = -1;
    m->merges_mask = cap - 1;
    return FINCH_OK;
}

/* A later duplicate of a pair replaces the earlier one (Hugging Face collects merges into a map). */
void tok_bpe_add_merge(tok_bpe *m, int32_t a, int32_t b, int32_t rank, int32_t new_id)
{
    uint64_t pair = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t j = pair_slot(pair, m->merges_mask);
    while (m->merges[j].rank >= 0 && m->merges[j].pair != pair) j = (j + 1) & m->merges_mask;
    m->merges[j] = (tok_merge_slot){pair, rank, new_id};
}

typedef struct symbol { int32_t id, prev, next, len; } symbol;
typedef struct cand { int32_t rank, pos, new_id; } cand;

static int cand_less(cand x, cand y) { return x.rank != y.rank ? x.rank < y.rank : x.pos < y.pos; }

static void heap_push(cand *h, size_t *n, cand c)
{
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!cand_less(c, h[p])) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = c;
}

static cand heap_pop(cand *h, size_t *n)
{
    cand top = h[0], last = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, s = i;
        cand best = last;
        if (l < *n && cand_less(h[l], best)) { s = l; best = h[l]; }
        if (r < *n && cand_less(h[r], best)) s = r;
        if (s == i) break;
        h[i] = h[s];
        i = s;
    }
    if (*n) h[i] = last;
    return top;
}

static int symbols_add(symbol *sym, size_t *ns, int32_t id, int32_t len)
{
    size_t i = (*ns)++;
    sym[i] = (symbol){id, (int32_t)i - 1, (int32_t)i + 1, len};
    return 0;
}

/* One symbol per character, as Hugging Face's BPE::merge_word builds them. */
static int initial_symbols(const tok_bpe *m, const char *s, size_t n, symbol *sym, size_t *ns)
{
    char stack[64], *key = stack;
    size_t pre = m->continuing_prefix ? strlen(m->continuing_prefix) : 0;
    size_t suf = m->end_suffix ? strlen(m->end_suffix) : 0;
    int32_t unk_len = 0, have_unk = 0;
    size_t pos = 0;
    *ns = 0;
    while (pos < n) {
        size_t start = pos, clen = utf8_len((unsigned char)s[pos]);
        pos += clen;
        int first = start == 0, last = pos >= n;
        size_t klen = 0;
        if (!first && pre) { memcpy(key, m->continuing_prefix, pre); klen = pre; }
        memcpy(key + klen, s + start, clen);
        klen += clen;
        if (last && suf) {
            if (klen + suf > sizeof stack) return finch_error(FINCH_ERR_UNSUPPORTED, "BPE: end_of_word_suffix too long");
            memcpy(key + klen, m->end_suffix, suf);
            klen += suf;
        }
        int32_t id = str_map_get(&m->vocab, key, klen);
        if (id >= 0) {
            if (have_unk) { symbols_add(sym, ns, m->unk_id, unk_len); have_unk = 0; }
            symbols_add(sym, ns, id, (int32_t)clen);
            continue;
        }
        if (m->byte_fallback) {
            int all = 1;
            for (size_t k = 0; k < klen; k++) all &= m->byte_ids[(unsigned char)key[k]] >= 0;
            if (all) {
                if (have_unk) { symbols_add(sym, ns, m->unk_id, unk_len); have_unk = 0; }
                for (size_t k = 0; k < klen; k++) symbols_add(sym, ns, m->byte_ids[(unsigned char)key[k]], 1);
                continue;
            }
        }
        if (m->unk_id >= 0) {
            if (have_unk && m->fuse_unk) { unk_len += (int32_t)clen; continue; }
            if (have_unk) symbols_add(sym, ns, m->unk_id, unk_len);
            have_unk = 1;
            unk_len = (int32_t)clen;
        }
        /* no unk token: the character is dropped, as Hugging Face drops it */
    }
    if (have_unk) symbols_add(sym, ns, m->unk_id, unk_len);
    if (*ns) sym[*ns - 1].next = -1;
    return FINCH_OK;
}

static void merge_all(const tok_bpe *m, symbol *sym, size_t ns, cand *heap)
{
    size_t nh = 0;
    for (size_t i = 0; i + 1 < ns; i++) {
        const tok_merge_slot *mg = merge_find(m, sym[i].id, sym[i + 1].id);
        if (mg) heap_push(heap, &nh, (cand){mg->rank, (int32_t)i, mg->new_id});
    }
    while (nh) {
        cand top = heap_pop(heap, &nh);
        symbol *cur = &sym[top.pos];
        if (cur->len == 0 || cur->next < 0) continue;
        symbol *right = &sym[cur->next];
        const tok_merge_slot *mg = merge_find(m, cur->id, right->id);
        if (!mg || mg->new_id != top.new_id) continue; /* stale candidate */
        cur->id = top.new_id;
        cur->len += right->len;
        right->len = 0;
        cur->next = right->next;
        if (cur->next >= 0) sym[cur->next].prev = top.pos;
        if (cur->prev >= 0) {
            mg = merge_find(m, sym[cur->prev].id, cur->id);
            if (mg) heap_push(heap, &nh, (cand){mg->rank, cur->prev, mg->new_id});
        }
        if (cur->next >= 0) {
            mg = merge_find(m, cur->id, sym[cur->next].id);
            if (mg) heap_push(heap, &nh, (cand){mg->rank, top.pos, mg->new_id});
        }
    }
}

static int cache_lookup(tok_bpe *m, const char *s, size_t n, finch_tokens *out, int *found)
{
    *found = 0;
    if (n > CACHE_MAX_PIECE || pthread_mutex_trylock(&m->cache_lock) != 0) return FINCH_OK;
    int32_t off = str_map_get(&m->cache, s, n);
    int rc = FINCH_OK;
    if (off >= 0) {
        int32_t cnt = m->cache_ids.ids[off];
        for (int32_t k = 0; k < cnt && rc == FINCH_OK; k++)
            if (tok_ids_push(out, m->cache_ids.ids[off + 1 + k])) rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "BPE");
        *found = 1;
    }
    pthread_mutex_unlock(&m->cache_lock);
    return rc;
}

static void cache_store(tok_bpe *m, const char *s, size_t n, const int32_t *ids, size_t cnt)
{
    if (n > CACHE_MAX_PIECE || pthread_mutex_trylock(&m->cache_lock) != 0) return;
    if (m->cache.count >= CACHE_MAX_ENTRIES || m->cache_ids.len > (size_t)INT32_MAX / 2) {
        str_map_free(&m->cache);
        m->cache_ids.len = 0;
    }
    int32_t off = (int32_t)m->cache_ids.len;
    int ok = tok_ids_push(&m->cache_ids, (int32_t)cnt) == 0;
    for (size_t k = 0; ok && k < cnt; k++) ok = tok_ids_push(&m->cache_ids, ids[k]) == 0;
    if (ok) ok = str_map_put(&m->cache, s, n, off) == 0;
    if (!ok) { str_map_free(&m->cache); m->cache_ids.len = 0; } /* out of memory: just forget */
    pthread_mutex_unlock(&m->cache_lock);
}

int tok_bpe_encode(tok_bpe *m, const char *s, size_t n, finch_tokens *out)
{
    if (n == 0) return FINCH_OK;
    if (m->ignore_merges) {
        int32_t id = str_map_get(&m->vocab, s, n);
        if (id >= 0) return tok_ids_push(out, id) ? finch_error(FINCH_ERR_OUT_OF_MEMORY, "BPE") : FINCH_OK;
    }
    int found, rc = cache_lookup(m, s, n, out, &found);
    if (rc || found) return rc;

    symbol stack_sym[64];
    cand stack_heap[128];
    /* each byte yields at most one symbol; the heap holds at most 2 candidates per merge plus the initial ones */
    symbol *sym = n <= 64 ? stack_sym : malloc(n * sizeof *sym);
    cand *heap = n <= 42 ? stack_heap : malloc(3 * n * sizeof *heap);
    if (!sym || !heap) { rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "BPE"); goto done; }
    size_t ns;
    rc = initial_symbols(m, s, n, sym, &ns);
    if (rc) goto done;
    merge_all(m, sym, ns, heap);
    size_t first = out->len;
    for (size_t i = 0; i < ns; i++)
        if (sym[i].len && tok_ids_push(out, sym[i].id)) { rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "BPE"); goto done; }
    cache_store(m, s, n, out->ids + first, out->len - first);
done:
    if (sym != stack_sym) free(sym);
    if (heap != stack_heap) free(heap);
    return rc;
}

void tok_bpe_free(tok_bpe *m)
{
    str_map_free(&m->vocab);
    free(m->merges);
    free(m->continuing_prefix);
    free(m->end_suffix);
    str_map_free(&m->cache);
    finch_tokens_free(&m->cache_ids);
    pthread_mutex_destroy(&m->cache_lock);
    memset(m, 0, sizeof *m);
}
