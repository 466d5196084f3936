/* Normalizers: text -> text before pre-tokenization (Unicode forms via utf8proc, Replace, Prepend,
 * Strip, Lowercase, Sequence), as Hugging Face `tokenizers` applies them. */
#include "core/error.h"
#include "core/tokenizer.h"
#include "core/unicode.h"

#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

static int unicode_map(utf8proc_option_t opts, const char *in, size_t n, tok_buf *out)
{
    utf8proc_uint8_t *dst = NULL;
    utf8proc_ssize_t len = utf8proc_map((const utf8proc_uint8_t *)in, (utf8proc_ssize_t)n, &dst, opts | UTF8PROC_STABLE);
    if (len < 0) return finch_error(FINCH_ERR_FORMAT, "normalizer: %s", utf8proc_errmsg(len));
    int rc = tok_buf_append(out, (const char *)dst, (size_t)len);
    free(dst);
    return rc ? finch_error(FINCH_ERR_OUT_OF_MEMORY, "normalizer") : FINCH_OK;
}

/* A character that composition (NFC, NFKC) leaves as it is and that never combines with what precedes
 * it: a starter without a decomposition that is not the second half of a composition (utf8proc marks
 * those with comb_index >= 0x8000) nor a Hangul vowel or trailing consonant jamo (composed by rule;
 * utf8proc's trailing range starts at U+11A7). Text splits before such a character into runs that
 * normalize independently. */
static int stable_starter(uint32_t cp)
{
    if (cp < 0x80) return 1;
    if ((cp >= 0x1161 && cp <= 0x1175) || (cp >= 0x11A7 && cp <= 0x11C2)) return 0;
    const utf8proc_property_t *p = utf8proc_get_property((utf8proc_int32_t)cp);
    return p->combining_class == 0 && p->decomp_seqindex == UINT16_MAX &&
           (p->comb_index == UINT16_MAX || p->comb_index < 0x8000);
}

/* Composed forms: runs of stable starters are copied, and utf8proc maps only the stretches around other
 * characters, each from the stable starter before it to the next one. */
static int compose(utf8proc_option_t opts, const char *in, size_t n, tok_buf *out)
{
    size_t copied = 0, last_stable = 0, pos = 0;
    while (pos < n) {
        size_t start = pos;
        if ((unsigned char)in[pos] < 0x80) { pos++; last_stable = start; continue; }
        if (stable_starter(utf8_next(in, &pos))) { last_stable = start; continue; }
        size_t from = last_stable > copied ? last_stable : copied;
        while (pos < n) {
            size_t p = pos;
            if (stable_starter(utf8_next(in, &p))) break;
            pos = p;
        }
        if (tok_buf_append(out, in + copied, from - copied)) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "normalizer");
        int rc = unicode_map(opts, in + from, pos - from, out);
        if (rc) return rc;
        copied = pos;
    }
    return tok_buf_append(out, in + copied, n - copied) ? finch_error(FINCH_ERR_OUT_OF_MEMORY, "normalizer") : FINCH_OK;
}

int tok_replace_all(const tok_regex *re, const char *content, const char *in, size_t n, tok_buf *out)
{
    size_t *spans = NULL, nspans = 0, cap = 0, prev = 0;
    int rc = tok_regex_find_all(re, in, n, &spans, &nspans, &cap);
    size_t clen = strlen(content);
    for (size_t i = 0; rc == FINCH_OK && i < nspans; i += 2) {
        if (spans[i + 1] == spans[i]) continue;
        if (tok_buf_append(out, in + prev, spans[i] - prev) || tok_buf_append(out, content, clen))
            rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "normalizer");
        prev = spans[i + 1];
    }
    if (rc == FINCH_OK && tok_buf_append(out, in + prev, n - prev)) rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "normalizer");
    free(spans);
    return rc;
}

static int lowercase(const char *in, size_t n, tok_buf *out)
{
    size_t pos = 0;
    while (pos < n) {
        char enc[4];
        uint32_t cp = utf8_next(in, &pos);
        size_t k = utf8_encode((uint32_t)utf8proc_tolower((utf8proc_int32_t)cp), enc);
        if (tok_buf_append(out, enc, k)) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "normalizer");
    }
    return FINCH_OK;
}

static int strip(const tok_normalizer *nz, const char *in, size_t n, tok_buf *out)
{
    size_t a = 0, b = n;
    if (nz->strip_left) {
        while (a < n) {
            size_t p = a;
            if (!uni_is_whitespace(utf8_next(in, &p))) break;
            a = p;
        }
    }
    if (nz->strip_right) {
        while (b > a) {
            size_t p = b - 1;
            while (p > a && ((unsigned char)in[p] & 0xC0) == 0x80) p--;
            size_t q = p;
            if (!uni_is_whitespace(utf8_next(in, &q))) break;
            b = p;
        }
    }
    return tok_buf_append(out, in + a, b - a) ? finch_error(FINCH_ERR_OUT_OF_MEMORY, "normalizer") : FINCH_OK;
}

int tok_normalize(const tok_normalizer *nz, const char *in, size_t n, tok_buf *out)
{
    out->len = 0;
    switch (nz->type) {
    case NORM_NFC: return compose(UTF8PROC_COMPOSE, in, n, out);
    case NORM_NFD: return unicode_map(UTF8PROC_DECOMPOSE, in, n, out);
    case NORM_NFKC: return compose(UTF8PROC_COMPOSE | UTF8PROC_COMPAT, in, n, out);
    case NORM_NFKD: return unicode_map(UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT, in, n, out);
    case NORM_LOWERCASE: return lowercase(in, n, out);
    case NORM_REPLACE: return tok_replace_all(&nz->pattern, nz->content, in, n, out);
    case NORM_STRIP: return strip(nz, in, n, out);
    case NORM_PREPEND:
        if (n && tok_buf_append(out, nz->content, strlen(nz->content))) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "normalizer");
        return tok_buf_append(out, in, n) ? finch_error(FINCH_ERR_OUT_OF_MEMORY, "normalizer") : FINCH_OK;
    case NORM_SEQUENCE: {
        tok_buf a = {0}, b = {0};
        int rc = tok_buf_append(&a, in, n) ? finch_error(FINCH_ERR_OUT_OF_MEMORY, "normalizer") : FINCH_OK;
        for (int i = 0; rc == FINCH_OK && i < nz->n_children; i++) {
            rc = tok_normalize(&nz->children[i], a.p, a.len, &b);
            tok_buf t = a; a = b; b = t;
        }
        if (rc == FINCH_OK && tok_buf_append(out, a.p, a.len)) rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "normalizer");
        tok_buf_free(&a);
        tok_buf_free(&b);
        return rc;
    }
    }
    return finch_error(FINCH_ERR_UNSUPPORTED, "normalizer type %d", (int)nz->type);
}

void tok_normalizer_free(tok_normalizer *nz)
{
    if (!nz) return;
    tok_regex_free(&nz->pattern);
    free(nz->content);
    for (int i = 0; i < nz->n_children; i++) tok_normalizer_free(&nz->children[i]);
    free(nz->children);
}
