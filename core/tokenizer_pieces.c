/* Byte buffers, id arrays and piece lists: the working storage of the tokenizer pipeline. */
#include "core/tokenizer.h"

#include <stdlib.h>
#include <string.h>

int tok_buf_reserve(tok_buf *b, size_t extra)
{
    if (b->len + extra + 1 <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra + 1) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

int tok_buf_append(tok_buf *b, const char *s, size_t n)
{
    if (tok_buf_reserve(b, n)) return -1;
    if (n) memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
    return 0;
}

void tok_buf_free(tok_buf *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

int tok_ids_reserve(finch_tokens *t, size_t extra)
{
    if (t->len + extra <= t->cap) return 0;
    size_t cap = t->cap ? t->cap * 2 : 64;
    while (cap < t->len + extra) cap *= 2;
    int32_t *p = realloc(t->ids, cap * sizeof *p);
    if (!p) return -1;
    t->ids = p;
    t->cap = cap;
    return 0;
}

int tok_ids_push(finch_tokens *t, int32_t id)
{
    if (t->len == t->cap && tok_ids_reserve(t, 1)) return -1;
    t->ids[t->len++] = id;
    return 0;
}

void finch_tokens_free(finch_tokens *t)
{
    if (!t) return;
    free(t->ids);
    memset(t, 0, sizeof *t);
}

void finch_data_free(void *p) { free(p); }

int tok_pieces_add(tok_pieces *p, const char *s, size_t n)
{
    if (n == 0) return 0;
    if (p->n == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 64;
        size_t *e = realloc(p->end, cap * sizeof *e);
        if (!e) return -1;
        p->end = e;
        p->cap = cap;
    }
    if (tok_buf_append(&p->text, s, n)) return -1;
    p->end[p->n++] = p->text.len;
    return 0;
}

void tok_pieces_clear(tok_pieces *p)
{
    p->n = 0;
    p->text.len = 0;
}

void tok_pieces_free(tok_pieces *p)
{
    tok_buf_free(&p->text);
    free(p->end);
    memset(p, 0, sizeof *p);
}
