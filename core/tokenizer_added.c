/* Added tokens (special tokens and the like) are cut out of the text before the model sees it:
 * a byte trie finds the leftmost-longest match, then lstrip / rstrip / single_word adjust it as
 * Hugging Face's AddedVocabulary does. */
#include "core/error.h"
#include "core/tokenizer.h"
#include "core/unicode.h"

#include <stdlib.h>
#include <string.h>

static int32_t new_node(tok_trie *t)
{
    if (t->n_nodes == t->cap_nodes) {
        size_t cap = t->cap_nodes ? t->cap_nodes * 2 : 64;
        tok_trie_node *p = realloc(t->nodes, cap * sizeof *p);
        if (!p) return -1;
        t->nodes = p;
        t->cap_nodes = cap;
    }
    t->nodes[t->n_nodes] = (tok_trie_node){-1, -1};
    return (int32_t)t->n_nodes++;
}

static int32_t child(const tok_trie *t, int32_t node, unsigned char c)
{
    for (int32_t e = t->nodes[node].child_first; e >= 0; e = t->edges[e].next_sibling)
        if (t->edges[e].byte == c) return t->edges[e].node;
    return -1;
}

int tok_trie_add(tok_trie *t, const char *s, size_t n, int32_t token)
{
    if (!t->n_nodes && new_node(t) < 0) return -1;
    if (n == 0) return 0;
    t->first_byte[(unsigned char)s[0]] = 1;
    int32_t node = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t next = child(t, node, (unsigned char)s[i]);
        if (next < 0) {
            next = new_node(t);
            if (next < 0) return -1;
            if (t->n_edges == t->cap_edges) {
                size_t cap = t->cap_edges ? t->cap_edges * 2 : 64;
                struct tok_trie_edge *p = realloc(t->edges, cap * sizeof *p);
                if (!p) return -1;
                t->edges = p;
                t->cap_edges = cap;
            }
            t->edges[t->n_edges] = (struct tok_trie_edge){t->nodes[node].child_first, next, (unsigned char)s[i]};
            t->nodes[node].child_first = (int32_t)t->n_edges++;
        }
        node = next;
    }
    if (t->nodes[node].token < 0) t->nodes[node].token = token; /* the first token with this content wins */
    return 0;
}

int32_t tok_trie_match(const tok_trie *t, const char *s, size_t n, size_t *len)
{
    int32_t best = -1, node = 0;
    if (!t->n_nodes || !n || !t->first_byte[(unsigned char)s[0]]) return -1;
    for (size_t i = 0; i < n; i++) {
        node = child(t, node, (unsigned char)s[i]);
        if (node < 0) break;
        if (t->nodes[node].token >= 0) { best = t->nodes[node].token; *len = i + 1; }
    }
    return best;
}

void tok_trie_free(tok_trie *t)
{
    free(t->nodes);
    free(t->edges);
    memset(t, 0, sizeof *t);
}

static int is_word_char(uint32_t cp) { return cp == '_' || uni_is_alnum(cp); }

static uint32_t last_char(const char *s, size_t end)
{
    size_t p = end - 1;
    while (p > 0 && ((unsigned char)s[p] & 0xC0) == 0x80) p--;
    return utf8_next(s, &p);
}

static int push_seg(tok_segment **segs, size_t *nsegs, size_t *cap, size_t a, size_t b, int32_t id)
{
    if (*nsegs == *cap) {
        size_t c = *cap ? *cap * 2 : 16;
        tok_segment *p = realloc(*segs, c * sizeof *p);
        if (!p) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "added tokens");
        *segs = p;
        *cap = c;
    }
    (*segs)[(*nsegs)++] = (tok_segment){a, b, id};
    return FINCH_OK;
}

int tok_added_split(const tok_added *added, const tok_trie *trie, const char *s, size_t n, size_t base,
                    int skip_special, tok_segment **segs, size_t *nsegs, size_t *cap)
{
    size_t done = 0, pos = 0;
    while (pos < n) {
        size_t len = 0;
        int32_t k = trie->first_byte[(unsigned char)s[pos]] ? tok_trie_match(trie, s + pos, n - pos, &len) : -1;
        if (k < 0) { pos++; continue; }
        const tok_added *a = &added[k];
        size_t start = pos, stop = pos + len;
        pos = stop; /* matching resumes after the raw match, as an Aho-Corasick scan does */
        if (skip_special && a->special) continue;
        if (a->single_word) {
            size_t q = stop;
            int start_ok = start == 0 || !is_word_char(last_char(s, start));
            int stop_ok = stop == n || !is_word_char(utf8_next(s, &q));
            if (!start_ok || !stop_ok) continue;
        }
        if (a->lstrip) {
            size_t ns = start;
            while (ns > done) {
                size_t p = ns - 1;
                while (p > 0 && ((unsigned char)s[p] & 0xC0) == 0x80) p--;
                size_t q = p;
                if (!uni_is_whitespace(utf8_next(s, &q))) break;
                ns = p;
            }
            start = ns;
        }
        if (a->rstrip) {
            while (stop < n) {
                size_t q = stop;
                if (!uni_is_whitespace(utf8_next(s, &q))) break;
                stop = q;
            }
            if (pos < stop) pos = stop;
        }
        if (done < start && push_seg(segs, nsegs, cap, base + done, base + start, -1)) return FINCH_ERR_OUT_OF_MEMORY;
        if (push_seg(segs, nsegs, cap, base + start, base + stop, a->id)) return FINCH_ERR_OUT_OF_MEMORY;
        done = stop;
    }
    if (done < n && push_seg(segs, nsegs, cap, base + done, base + n, -1)) return FINCH_ERR_OUT_OF_MEMORY;
    return FINCH_OK;
}
