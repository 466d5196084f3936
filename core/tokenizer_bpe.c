/* The BPE model: a piece becomes one symbol per character (or <0xNN> byte tokens, or unk), then the
 * adjacent pair with the lowest merge rank is merged repeatedly. A binary heap of candidate merges,
 * ordered by (rank, position) as Hugging Face orders them, keeps this O(n log n) per piece. */
#include "core/error.h"
#include "core/tokenizer.h"
#include "core/unicode.h"

#include <stdlib.h>
#include <string.h>

/* Both ids must reach the low bits that index the table: mix the high half down before and after multiplying. */
static size_t pair_slot(uint64_t pair, size_t mask)
{
    pair ^= pair >> 32;
    pair *= 0x9E3779B97F4A7C15ull;
    return (size_t)(pair ^ (pair >> 29)) & mask;
}

/* The bit of a pair in the merge filter: the high bits of the same mix, independent of the slot. */
static size_t pair_bit(uint64_t pair, size_t mask)
{
    pair ^= pair >> 32;
    pair *= 0x9E3779B97F4A7C15ull;
    return (size_t)(pair >> 40) & mask;
}

static const tok_merge_slot *merge_find(const tok_bpe *m, int32_t a, int32_t b)
{
    if (!m->merges) return NULL;
    uint64_t pair = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t bit = pair_bit(pair, m->merge_bits_mask);
    if (!(m->merge_bits[bit / 64] >> (bit % 64) & 1)) return NULL; /* most pairs are no merge: no table miss */
    size_t j = pair_slot(pair, m->merges_mask);
    while (m->merges[j].rank >= 0) {
        if (m->merges[j].pair == pair) return &m->merges[j];
        j = (j + 1) & m->merges_mask;
    }
    return NULL;
}

int tok_bpe_reserve_merges(tok_bpe *m, size_t n)
{
    size_t cap = 64, bits = 4096;
    while (cap < n * 2) cap *= 2;
    while (bits < n * 16 && bits < ((size_t)1 << 24)) bits *= 2;
    free(m->merges);
    free(m->merge_bits);
    m->merges = malloc(cap * sizeof *m->merges);
    m->merge_bits = calloc(bits / 64, sizeof *m->merge_bits);
    if (!m->merges || !m->merge_bits) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "BPE merges");
    for (size_t i = 0; i < cap; i++) m->merges[i].rank = -1;
    m->merges_mask = cap - 1;
    m->merge_bits_mask = bits - 1;
    return FINCH_OK;
}

/* A later duplicate of a pair replaces the earlier one (Hugging Face collects merges into a map). */
void tok_bpe_add_merge(tok_bpe *m, int32_t a, int32_t b, int32_t rank, int32_t new_id)
{
    uint64_t pair = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t j = pair_slot(pair, m->merges_mask), bit = pair_bit(pair, m->merge_bits_mask);
    while (m->merges[j].rank >= 0 && m->merges[j].pair != pair) j = (j + 1) & m->merges_mask;
    m->merges[j] = (tok_merge_slot){pair, rank, new_id};
    m->merge_bits[bit / 64] |= (uint64_t)1 << (bit % 64);
}

typedef struct symbol { int32_t id, prev, next, len; } symbol;
/* A candidate merge of the symbols at pos and its right neighbour, valid while they are still left, right. */
typedef struct cand { int32_t rank, pos, left, right, new_id; } cand;

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

static void symbols_add(symbol *sym, size_t *ns, int32_t id, int32_t len)
{
    size_t i = (*ns)++;
    sym[i] = (symbol){id, (int32_t)i - 1, (int32_t)i + 1, len};
}

/* The id of the one-character token s[0..clen) (code point cp), -1 if none. */
static int32_t char_id(const tok_bpe *m, const char *s, size_t clen, uint32_t cp)
{
    return cp < 0x10000 ? m->char_ids[cp] : str_map_get(&m->vocab, s, clen);
}

/* The character at s[*pos] (a byte in byte-level mode), advancing *pos: its code point and its id as a
 * one-character token (-1: none). Needs char_ids (no subword prefix or suffix). */
static int32_t next_char(const tok_bpe *m, const char *s, size_t *pos, uint32_t *cp)
{
    if (m->byte_level) {
        unsigned char b = (unsigned char)s[(*pos)++];
        *cp = tok_byte_level_char[b];
        return m->byte_char_ids[b];
    }
    size_t start = *pos;
    *cp = utf8_next(s, pos);
    return char_id(m, s + start, *pos - start, *cp);
}

/* One symbol per character, as Hugging Face's BPE::merge_word builds them. */
static int initial_symbols(const tok_bpe *m, const char *s, size_t n, symbol *sym, size_t *ns)
{
    char stack[64];
    size_t pre = m->continuing_prefix ? strlen(m->continuing_prefix) : 0;
    size_t suf = m->end_suffix ? strlen(m->end_suffix) : 0;
    int32_t unk_len = 0, have_unk = 0;
    size_t pos = 0;
    *ns = 0;
    while (pos < n) {
        size_t start = pos, clen, klen;
        const char *key = stack;
        int32_t id;
        if (m->char_ids) { /* no prefix or suffix: the key is the character itself */
            uint32_t cp;
            id = next_char(m, s, &pos, &cp);
            clen = pos - start;
            if (id >= 0) {
                if (have_unk) { symbols_add(sym, ns, m->unk_id, unk_len); have_unk = 0; }
                symbols_add(sym, ns, id, (int32_t)clen);
                continue;
            }
            if (m->byte_level) klen = utf8_encode(cp, stack);
            else { key = s + start; klen = clen; }
        } else {
            clen = utf8_len((unsigned char)s[pos]);
            pos += clen;
            klen = 0;
            if (start && pre) { memcpy(stack, m->continuing_prefix, pre); klen = pre; }
            memcpy(stack + klen, s + start, clen);
            klen += clen;
            if (pos >= n && suf) {
                if (klen + suf > sizeof stack) return finch_error(FINCH_ERR_UNSUPPORTED, "BPE: end_of_word_suffix too long");
                memcpy(stack + klen, m->end_suffix, suf);
                klen += suf;
            }
            id = str_map_get(&m->vocab, key, klen);
            if (id >= 0) {
                if (have_unk) { symbols_add(sym, ns, m->unk_id, unk_len); have_unk = 0; }
                symbols_add(sym, ns, id, (int32_t)clen);
                continue;
            }
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

static void push_cand(const tok_bpe *m, cand *heap, size_t *nh, const symbol *sym, int32_t pos)
{
    int32_t left = sym[pos].id, right = sym[sym[pos].next].id;
    const tok_merge_slot *mg = merge_find(m, left, right);
    if (mg) heap_push(heap, nh, (cand){mg->rank, pos, left, right, mg->new_id});
}

static void merge_all(const tok_bpe *m, symbol *sym, size_t ns, cand *heap)
{
    size_t nh = 0;
    for (size_t i = 0; i + 1 < ns; i++) push_cand(m, heap, &nh, sym, (int32_t)i);
    while (nh) {
        cand top = heap_pop(heap, &nh);
        symbol *cur = &sym[top.pos];
        if (cur->len == 0 || cur->next < 0 || cur->id != top.left || sym[cur->next].id != top.right) continue; /* stale */
        symbol *right = &sym[cur->next];
        cur->id = top.new_id;
        cur->len += right->len;
        right->len = 0;
        cur->next = right->next;
        if (cur->next >= 0) sym[cur->next].prev = top.pos;
        if (cur->prev >= 0) push_cand(m, heap, &nh, sym, cur->prev);
        if (cur->next >= 0) push_cand(m, heap, &nh, sym, top.pos);
    }
}

/* ---- the word cache ---- */

static uint64_t word_hash(const char *s, size_t n)
{
    uint64_t h = 0x9E3779B97F4A7C15ull ^ n, w;
    for (; n >= 8; s += 8, n -= 8) {
        memcpy(&w, s, 8);
        h = (h ^ w) * 0xFF51AFD7ED558CCDull;
        h ^= h >> 32;
    }
    w = 0;
    memcpy(&w, s, n);
    h = (h ^ w) * 0xFF51AFD7ED558CCDull;
    h ^= h >> 29;
    h *= 0xC4CEB9FE1A85EC53ull;
    return h ^ (h >> 32);
}

/* Appends the cached ids of s[0..n) to out: 1 if found, 0 if not, -1 when out of memory. */
static int cache_get(const tok_cache *c, const char *s, size_t n, finch_tokens *out)
{
    const int32_t *ids;
    size_t cnt;
    if (n <= TOK_CACHE_KEY) {
        uint64_t h = word_hash(s, n);
        const tok_cache_slot *e = &c->slots[h & (TOK_CACHE_SLOTS - 1)];
        if (e->key_len != n || e->tag != (uint32_t)(h >> 32) || memcmp(e->key, s, n) != 0) return 0;
        ids = e->ids;
        cnt = e->n_ids;
    } else {
        int32_t off = str_map_get(&c->long_words, s, n);
        if (off < 0) return 0;
        ids = c->long_ids.ids + off + 1;
        cnt = (size_t)c->long_ids.ids[off];
    }
    if (tok_ids_reserve(out, cnt)) return -1;
    if (cnt) memcpy(out->ids + out->len, ids, cnt * sizeof *ids);
    out->len += cnt;
    return 1;
}

static void cache_put(tok_cache *c, const char *s, size_t n, const int32_t *ids, size_t cnt)
{
    if (n <= TOK_CACHE_KEY) {
        if (cnt > TOK_CACHE_IDS) return;
        uint64_t h = word_hash(s, n);
        tok_cache_slot *e = &c->slots[h & (TOK_CACHE_SLOTS - 1)];
        e->tag = (uint32_t)(h >> 32);
        e->key_len = (uint8_t)n;
        e->n_ids = (uint8_t)cnt;
        memcpy(e->key, s, n);
        if (cnt) memcpy(e->ids, ids, cnt * sizeof *ids);
        return;
    }
    if (c->long_words.count >= TOK_CACHE_LONG_ENTRIES || c->long_ids.len + cnt + 1 > (size_t)INT32_MAX) {
        str_map_free(&c->long_words);
        c->long_ids.len = 0;
    }
    int32_t off = (int32_t)c->long_ids.len;
    if (tok_ids_reserve(&c->long_ids, cnt + 1)) return; /* out of memory: just not cached */
    c->long_ids.ids[c->long_ids.len++] = (int32_t)cnt;
    if (cnt) memcpy(c->long_ids.ids + c->long_ids.len, ids, cnt * sizeof *ids);
    c->long_ids.len += cnt;
    if (str_map_put(&c->long_words, s, n, off)) c->long_ids.len = (size_t)off;
}

void tok_cache_free(tok_cache *c)
{
    if (!c) return;
    free(c->slots);
    str_map_free(&c->long_words);
    finch_tokens_free(&c->long_ids);
    memset(c, 0, sizeof *c);
}

/* ---- encoding ---- */

/* Appends the ids of the word s[0..n): BPE over its characters. */
static int encode_word(const tok_bpe *m, const char *s, size_t n, finch_tokens *out)
{
    /* A byte yields at most two symbols (byte fallback on a byte-level character's two UTF-8 bytes); the
     * heap holds at most two candidates per merge besides the initial ones. */
    symbol stack_sym[128];
    cand stack_heap[384];
    symbol *sym = n <= 64 ? stack_sym : malloc(2 * n * sizeof *sym);
    cand *heap = n <= 64 ? stack_heap : malloc(6 * n * sizeof *heap);
    size_t ns = 0;
    int rc = !sym || !heap ? finch_error(FINCH_ERR_OUT_OF_MEMORY, "BPE") : initial_symbols(m, s, n, sym, &ns);
    if (rc == FINCH_OK) {
        merge_all(m, sym, ns, heap);
        if (tok_ids_reserve(out, ns)) {
            rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "BPE");
        } else {
            for (size_t i = 0; i < ns; i++)
                if (sym[i].len) out->ids[out->len++] = sym[i].id;
        }
    }
    if (sym != stack_sym) free(sym);
    if (heap != stack_heap) free(heap);
    return rc;
}

static int pair_known(const tok_bpe *m, uint32_t a, uint32_t b)
{
    uint64_t key = (((uint64_t)a << 32) | b) + 1;
    for (size_t j = pair_slot(key, m->pairs_mask); m->pairs[j]; j = (j + 1) & m->pairs_mask)
        if (m->pairs[j] == key) return 1;
    return 0;
}

/* ignore_merges: the id of the piece as one token, -1 if it is none. */
static int32_t whole_piece_id(const tok_bpe *m, const char *s, size_t n)
{
    if (!m->byte_level) return str_map_get(&m->vocab, s, n);
    char small[256];
    if (2 * n > sizeof small) { /* longer than any real token */
        char *mapped = malloc(2 * n);
        if (!mapped) return -1; /* then encoded by merges: the same ids, only slower */
        size_t len = 0;
        for (size_t i = 0; i < n; i++) len += utf8_encode(tok_byte_level_char[(unsigned char)s[i]], mapped + len);
        int32_t id = str_map_get(&m->vocab, mapped, len);
        free(mapped);
        return id;
    }
    size_t len = 0;
    for (size_t i = 0; i < n; i++) len += utf8_encode(tok_byte_level_char[(unsigned char)s[i]], small + len);
    return str_map_get(&m->vocab, small, len);
}

/* Pieces longer than this are cut into words where they can be (tok_bpe.pairs). */
#define LONG_PIECE 32

static int encode_piece(const tok_bpe *m, tok_cache *cache, const char *s, size_t n, int whole, finch_tokens *out);

/* Cuts a long piece between characters where no merge can join the symbols on both sides: characters
 * that are one-character tokens and that no token holds side by side. BPE then runs on each side
 * independently and applies the same merges in the same order. */
static int encode_long(const tok_bpe *m, tok_cache *cache, const char *s, size_t n, finch_tokens *out)
{
    size_t word = 0, pos = 0;
    uint32_t prev_cp = 0;
    int32_t prev_id = -1;
    while (pos < n) {
        size_t start = pos;
        uint32_t cp;
        int32_t id = next_char(m, s, &pos, &cp);
        if (start > word && prev_id >= 0 && id >= 0 && !pair_known(m, prev_cp, cp)) {
            int rc = encode_piece(m, cache, s + word, start - word, 0, out);
            if (rc) return rc;
            word = start;
        }
        prev_cp = cp;
        prev_id = id;
    }
    return word ? encode_piece(m, cache, s + word, n - word, 0, out) : encode_word(m, s, n, out);
}

/* whole: s is a whole pre-tokenized piece (so ignore_merges applies), not a part of one. */
static int encode_piece(const tok_bpe *m, tok_cache *cache, const char *s, size_t n, int whole, finch_tokens *out)
{
    int cacheable = cache && n <= TOK_CACHE_LONG;
    if (cacheable) {
        int found = cache_get(cache, s, n, out);
        if (found < 0) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "BPE");
        if (found) return FINCH_OK;
    }
    size_t first = out->len;
    int32_t id = whole && m->ignore_merges ? whole_piece_id(m, s, n) : -1;
    int rc;
    if (id >= 0) rc = tok_ids_push(out, id) ? finch_error(FINCH_ERR_OUT_OF_MEMORY, "BPE") : FINCH_OK;
    else if (m->pairs && n > LONG_PIECE) rc = encode_long(m, cache, s, n, out);
    else rc = encode_word(m, s, n, out);
    if (rc == FINCH_OK && cacheable) cache_put(cache, s, n, out->len > first ? out->ids + first : NULL, out->len - first);
    return rc;
}

int tok_bpe_encode(const tok_bpe *m, tok_cache *cache, const char *s, size_t n, finch_tokens *out)
{
    return n ? encode_piece(m, cache, s, n, 1, out) : FINCH_OK;
}

static void pair_add(tok_bpe *m, uint32_t a, uint32_t b)
{
    uint64_t key = (((uint64_t)a << 32) | b) + 1;
    size_t j = pair_slot(key, m->pairs_mask);
    while (m->pairs[j] && m->pairs[j] != key) j = (j + 1) & m->pairs_mask;
    m->pairs[j] = key;
}

int tok_bpe_prepare(tok_bpe *m, int long_pieces)
{
    char enc[4];
    for (int b = 0; b < 256; b++) m->byte_char_ids[b] = str_map_get(&m->vocab, enc, utf8_encode(tok_byte_level_char[b], enc));
    if (m->continuing_prefix || m->end_suffix) return FINCH_OK; /* a character's key depends on its place */
    m->char_ids = malloc(0x10000 * sizeof *m->char_ids);
    if (!m->char_ids) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "BPE");
    for (size_t i = 0; i < 0x10000; i++) m->char_ids[i] = -1;
    const str_map *v = &m->vocab;
    size_t chars = 0, bad;
    for (size_t i = 0; v->slots && i <= v->mask; i++) {
        const struct str_map_slot *e = &v->slots[i];
        if (e->key_len == UINT32_MAX || e->key_len == 0) continue;
        const char *k = v->keys + e->key_off;
        if (!utf8_valid(k, e->key_len, &bad)) continue; /* cannot match valid UTF-8 text character by character */
        size_t pos = 0;
        uint32_t cp = utf8_next(k, &pos);
        if (pos == e->key_len && cp < 0x10000) m->char_ids[cp] = e->value;
        chars += e->key_len;
    }
    if (!long_pieces || !v->slots) return FINCH_OK;
    size_t cap = 64;
    while (cap < 2 * chars) cap *= 2;
    m->pairs = calloc(cap, sizeof *m->pairs);
    if (!m->pairs) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "BPE");
    m->pairs_mask = cap - 1;
    for (size_t i = 0; i <= v->mask; i++) {
        const struct str_map_slot *e = &v->slots[i];
        if (e->key_len == UINT32_MAX || e->key_len == 0) continue;
        const char *k = v->keys + e->key_off;
        if (!utf8_valid(k, e->key_len, &bad)) continue;
        size_t pos = 0;
        uint32_t prev = utf8_next(k, &pos);
        while (pos < e->key_len) {
            uint32_t cp = utf8_next(k, &pos);
            pair_add(m, prev, cp);
            prev = cp;
        }
    }
    return FINCH_OK;
}

void tok_bpe_free(tok_bpe *m)
{
    str_map_free(&m->vocab);
    free(m->merges);
    free(m->merge_bits);
    free(m->continuing_prefix);
    free(m->end_suffix);
    free(m->char_ids);
    free(m->pairs);
    memset(m, 0, sizeof *m);
}
