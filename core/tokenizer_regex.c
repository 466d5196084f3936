/* Regular expressions of tokenizer.json, run with PCRE2 in UTF mode with Unicode properties
 * (Hugging Face runs them with Oniguruma; the patterns real tokenizers use mean the same in both). */
#include "core/error.h"
#include "core/tokenizer.h"

#include <stdlib.h>

int tok_regex_compile(tok_regex *re, const char *pattern, int literal, const char *what)
{
    int err;
    PCRE2_SIZE off;
    uint32_t opts = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP);
    re->code = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, opts, &err, &off, NULL);
    if (!re->code) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        return finch_error(FINCH_ERR_UNSUPPORTED, "%s: regex /%s/ does not compile at offset %zu: %s", what, pattern,
                           (size_t)off, (const char *)msg);
    }
    pcre2_jit_compile(re->code, PCRE2_JIT_COMPLETE); /* optional: falls back to the interpreter */
    return FINCH_OK;
}

void tok_regex_free(tok_regex *re)
{
    if (re->code) pcre2_code_free(re->code);
    re->code = NULL;
}

int tok_regex_find_all(const tok_regex *re, const char *s, size_t n, size_t **spans, size_t *nspans, size_t *cap)
{
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re->code, NULL);
    if (!md) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "regex match data");
    size_t pos = 0;
    int status = FINCH_OK;
    while (pos <= n) {
        int rc = pcre2_match(re->code, (PCRE2_SPTR)s, n, pos, PCRE2_NO_UTF_CHECK, md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(rc, msg, sizeof msg);
            status = finch_error(FINCH_ERR_FORMAT, "regex match failed: %s", (const char *)msg);
            break;
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        size_t a = ov[0], b = ov[1];
        if (*nspans + 2 > *cap) {
            size_t c = *cap ? *cap * 2 : 128;
            size_t *p = realloc(*spans, c * sizeof *p);
            if (!p) { status = finch_error(FINCH_ERR_OUT_OF_MEMORY, "regex spans"); break; }
            *spans = p;
            *cap = c;
        }
        (*spans)[(*nspans)++] = a;
        (*spans)[(*nspans)++] = b;
        if (b > a) {
            pos = b;
        } else {
            /* An empty match (kept: it still splits the text): step over one character. */
            if (a >= n) break;
            pos = a + 1;
            while (pos < n && ((unsigned char)s[pos] & 0xC0) == 0x80) pos++;
        }
    }
    pcre2_match_data_free(md);
    return status;
}
