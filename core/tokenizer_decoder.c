/* Decoders: token strings -> text (ByteLevel, Metaspace, ByteFallback, Fuse, Strip, Replace, Sequence).
 * Each maps a list of strings to a list of strings, as Hugging Face's decode_chain does; the final
 * text is their concatenation. */
#include "core/error.h"
#include "core/tokenizer.h"
#include "core/unicode.h"

#include <stdlib.h>
#include <string.h>

#define OOM finch_error(FINCH_ERR_OUT_OF_MEMORY, "decoder")

/* Length of the longest prefix of s[0..n) that starts a valid UTF-8 sequence (at least 1). */
static size_t maximal_subpart(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    size_t need;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) need = 2;
    else if (c >= 0xE0 && c <= 0xEF) { need = 3; if (c == 0xE0) lo = 0xA0; if (c == 0xED) hi = 0x9F; }
    else if (c >= 0xF0 && c <= 0xF4) { need = 4; if (c == 0xF0) lo = 0x90; if (c == 0xF4) hi = 0x8F; }
    else return 1;
    size_t k = 1;
    while (k < need && k < n) {
        unsigned char b = s[k];
        if (b < lo || b > hi) break;
        lo = 0x80; hi = 0xBF;
        k++;
    }
    return k == need ? 0 : k; /* 0: a complete valid sequence */
}

int tok_utf8_lossy(const char *s, size_t n, tok_buf *out)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, run = 0;
    while (i < n) {
        if (u[i] < 0x80) { i++; continue; }
        size_t bad = maximal_subpart(u + i, n - i);
        if (bad == 0) { i += utf8_len(u[i]); continue; }
        if (tok_buf_append(out, s + run, i - run) || tok_buf_append(out, "\xEF\xBF\xBD", 3)) return OOM;
        i += bad;
        run = i;
    }
    return tok_buf_append(out, s + run, n - run) ? OOM : FINCH_OK;
}

static int byte_level(tok_pieces *tokens, tok_pieces *out)
{
    tok_buf bytes = {0};
    int rc = FINCH_OK;
    for (size_t i = 0; rc == FINCH_OK && i < tokens->n; i++) {
        size_t a = tok_piece_start(tokens, i), b = tokens->end[i], pos = a, mark = bytes.len;
        const char *t = tokens->text.p;
        int mapped = 1;
        while (pos < b) {
            int byte = tok_byte_level_byte(utf8_next(t, &pos));
            if (byte < 0) { mapped = 0; break; }
            char c = (char)byte;
            if (tok_buf_append(&bytes, &c, 1)) { rc = OOM; break; }
        }
        if (!mapped) { bytes.len = mark; if (tok_buf_append(&bytes, t + a, b - a)) rc = OOM; }
    }
    tok_buf text = {0};
    if (rc == FINCH_OK) rc = tok_utf8_lossy(bytes.p ? bytes.p : "", bytes.len, &text);
    if (rc == FINCH_OK && tok_pieces_add(out, text.p ? text.p : "", text.len)) rc = OOM;
    tok_buf_free(&bytes);
    tok_buf_free(&text);
    return rc;
}

static int hexval(char c) { return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1; }

static int flush_bytes(tok_buf *bytes, tok_pieces *out)
{
    if (!bytes->len) return FINCH_OK;
    int rc = FINCH_OK;
    if (utf8_valid(bytes->p, bytes->len, NULL)) {
        if (tok_pieces_add(out, bytes->p, bytes->len)) rc = OOM;
    } else {
        for (size_t k = 0; k < bytes->len && rc == FINCH_OK; k++)
            if (tok_pieces_add(out, "\xEF\xBF\xBD", 3)) rc = OOM;
    }
    bytes->len = 0;
    return rc;
}

static int byte_fallback(tok_pieces *tokens, tok_pieces *out)
{
    tok_buf bytes = {0};
    int rc = FINCH_OK;
    for (size_t i = 0; rc == FINCH_OK && i < tokens->n; i++) {
        size_t a = tok_piece_start(tokens, i), n = tokens->end[i] - a;
        const char *t = tokens->text.p + a;
        if (n == 6 && memcmp(t, "<0x", 3) == 0 && t[5] == '>' && hexval(t[3]) >= 0 && hexval(t[4]) >= 0) {
            char c = (char)(hexval(t[3]) * 16 + hexval(t[4]));
            if (tok_buf_append(&bytes, &c, 1)) rc = OOM;
            continue;
        }
        rc = flush_bytes(&bytes, out);
        if (rc == FINCH_OK && tok_pieces_add(out, t, n)) rc = OOM;
    }
    if (rc == FINCH_OK) rc = flush_bytes(&bytes, out);
    tok_buf_free(&bytes);
    return rc;
}

static int strip(const tok_decoder *d, tok_pieces *tokens, tok_pieces *out)
{
    for (size_t i = 0; i < tokens->n; i++) {
        size_t a = tok_piece_start(tokens, i), b = tokens->end[i];
        const char *t = tokens->text.p;
        for (int k = 0; k < d->strip_start && a < b; k++) {
            size_t q = a;
            if (utf8_next(t, &q) != d->strip_char) break;
            a = q;
        }
        for (int k = 0; k < d->strip_stop && b > a; k++) {
            size_t p = b - 1;
            while (p > a && ((unsigned char)t[p] & 0xC0) == 0x80) p--;
            size_t q = p;
            if (utf8_next(t, &q) != d->strip_char) break;
            b = p;
        }
        if (tok_pieces_add(out, t + a, b - a)) return OOM;
    }
    return FINCH_OK;
}

static int metaspace(const tok_decoder *d, tok_pieces *tokens, tok_pieces *out)
{
    size_t rl = strlen(d->replacement);
    tok_buf b = {0};
    int rc = FINCH_OK;
    for (size_t i = 0; rc == FINCH_OK && i < tokens->n; i++) {
        size_t a = tok_piece_start(tokens, i), e = tokens->end[i];
        const char *t = tokens->text.p;
        b.len = 0;
        while (a < e && rc == FINCH_OK) {
            if (e - a >= rl && memcmp(t + a, d->replacement, rl) == 0) {
                if (!(i == 0 && d->prepend_first) && tok_buf_append(&b, " ", 1)) rc = OOM;
                a += rl;
            } else {
                if (tok_buf_append(&b, t + a, 1)) rc = OOM;
                a++;
            }
        }
        if (rc == FINCH_OK && tok_pieces_add(out, b.p ? b.p : "", b.len)) rc = OOM;
    }
    tok_buf_free(&b);
    return rc;
}

int tok_decode_chain(const tok_decoder *d, tok_pieces *tokens, tok_pieces *tmp)
{
    if (d->type == DEC_SEQUENCE) {
        for (int i = 0; i < d->n_children; i++) {
            int rc = tok_decode_chain(&d->children[i], tokens, tmp);
            if (rc) return rc;
        }
        return FINCH_OK;
    }
    tok_pieces_clear(tmp);
    int rc = FINCH_OK;
    switch (d->type) {
    case DEC_BYTE_LEVEL: rc = byte_level(tokens, tmp); break;
    case DEC_BYTE_FALLBACK: rc = byte_fallback(tokens, tmp); break;
    case DEC_FUSE: rc = tok_pieces_add(tmp, tokens->text.p ? tokens->text.p : "", tokens->text.len) ? OOM : FINCH_OK; break;
    case DEC_STRIP: rc = strip(d, tokens, tmp); break;
    case DEC_METASPACE: rc = metaspace(d, tokens, tmp); break;
    case DEC_REPLACE: {
        tok_buf b = {0};
        for (size_t i = 0; rc == FINCH_OK && i < tokens->n; i++) {
            size_t a = tok_piece_start(tokens, i);
            b.len = 0;
            rc = tok_replace_all(&d->pattern, d->content, tokens->text.p + a, tokens->end[i] - a, &b);
            if (rc == FINCH_OK && tok_pieces_add(tmp, b.p ? b.p : "", b.len)) rc = OOM;
        }
        tok_buf_free(&b);
        break;
    }
    case DEC_SEQUENCE: break;
    }
    if (rc) return rc;
    tok_pieces t = *tokens;
    *tokens = *tmp;
    *tmp = t;
    return FINCH_OK;
}

void tok_decoder_free(tok_decoder *d)
{
    if (!d) return;
    tok_regex_free(&d->pattern);
    free(d->content);
    for (int i = 0; i < d->n_children; i++) tok_decoder_free(&d->children[i]);
    free(d->children);
}

void tok_post_free(tok_post *p)
{
    if (!p) return;
    for (int i = 0; i < p->n_items; i++) free(p->items[i].ids);
    free(p->items);
    for (int i = 0; i < p->n_children; i++) tok_post_free(&p->children[i]);
    free(p->children);
}
