/* The tokenizer's fast paths give exactly what its plain paths give, on random text full of the cases
 * they must get right (combining marks, Hangul jamo, byte fallback, emoji, long unbroken runs):
 * - NFC/NFKC normalizing only around characters that are not stable starters == utf8proc on the whole;
 * - the word cache (a second encode, and an encode that cannot borrow the cache) == the first encode;
 * - the ByteLevel map fused into the model, the one-character id table and long pieces cut into words
 *   == the pre-tokenizer mapping bytes to strings and BPE over each piece whole. */
#include "core/tokenizer.h"
#include "finch/finch.h"
#include "tests/testing.h"

#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

static unsigned long long rng = 0x1234567ull;

static unsigned rnd(unsigned n)
{
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    return (unsigned)((rng >> 33) % n);
}

/* Fragments that exercise normalization, byte-level mapping, byte fallback and long pieces. */
static const char *FRAGMENTS[] = {
    " ", " ", "  ", "\n", "\t", "a", "e", "the", " of", "Hello", "don't", "x", "12", "345", ".", ",", "!?", "()",
    "\xCC\x81",          /* U+0301 combining acute */
    "\xCC\xA3",          /* U+0323 combining dot below */
    "\xCC\xB8",          /* U+0338 combining long solidus (composes with '=') */
    "=",
    "\xC3\xA9",          /* é precomposed */
    "\xEF\xAC\x81",      /* U+FB01 ligature fi (NFKC) */
    "\xE2\x84\xAB",      /* U+212B angstrom sign (singleton) */
    "\xE1\x84\x80",      /* U+1100 Hangul choseong kiyeok */
    "\xE1\x85\xA1",      /* U+1161 jungseong a */
    "\xE1\x86\xA7",      /* U+11A7 */
    "\xE1\x86\xA8",      /* U+11A8 jongseong kiyeok */
    "\xEA\xB0\x80",      /* U+AC00 가 */
    "\xED\x95\x9C",      /* U+D55C 한 */
    "\xE4\xB8\xAD", "\xE6\x96\x87", "\xE5\xAD\xA6", "\xE7\x9A\x84", /* 中 文 学 的 */
    "\xE3\x81\x8B", "\xE3\x82\x99", "\xE3\x81\x8C", /* か, combining dakuten, が */
    "\xD0\xB8", "\xCC\x86", "\xD0\xB9", "\xD0\xBC\xD0\xB8\xD1\x80", /* и, breve, й, мир */
    "\xD8\xA7", "\xD9\x93", "\xD8\xA2", /* alef, madda above, alef with madda */
    "\xF0\x9F\x98\x80", "\xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD", "\xE2\x80\x8D", "\xEF\xB8\x8F", /* emoji, ZWJ, VS16 */
    "\xF0\x90\x8D\x88",  /* U+10348 Gothic hwair (outside the BMP) */
    "\xE2\x96\x81",      /* ▁ */
    "\xEE\x80\x80",      /* U+E000 private use (byte fallback) */
};

static size_t random_text(char *buf, size_t cap, unsigned pieces)
{
    size_t n = 0;
    for (unsigned i = 0; i < pieces; i++) {
        const char *f = FRAGMENTS[rnd(sizeof FRAGMENTS / sizeof *FRAGMENTS)];
        size_t k = strlen(f);
        if (n + k >= cap) break;
        memcpy(buf + n, f, k);
        n += k;
    }
    buf[n] = 0;
    return n;
}

static void check_normalizer(void)
{
    static const struct { tok_norm_type type; utf8proc_option_t opts; const char *name; } forms[] = {
        {NORM_NFC, UTF8PROC_COMPOSE, "NFC"}, {NORM_NFKC, UTF8PROC_COMPOSE | UTF8PROC_COMPAT, "NFKC"}};
    char text[512];
    for (size_t f = 0; f < 2; f++) {
        tok_normalizer nz = {0};
        nz.type = forms[f].type;
        int bad = 0;
        for (int iter = 0; iter < 3000 && !bad; iter++) {
            size_t n = random_text(text, sizeof text, 1 + rnd(24));
            tok_buf out = {0};
            utf8proc_uint8_t *ref = NULL;
            utf8proc_ssize_t len = utf8proc_map((const utf8proc_uint8_t *)text, (utf8proc_ssize_t)n, &ref,
                                                forms[f].opts | UTF8PROC_STABLE);
            int rc = tok_normalize(&nz, text, n, &out);
            if (rc || len < 0 || out.len != (size_t)len || (len && memcmp(out.p, ref, (size_t)len))) {
                bad = 1;
                fprintf(stderr, "%s differs from utf8proc on \"%s\"\n", forms[f].name, text);
            }
            free(ref);
            tok_buf_free(&out);
        }
        CHECK(!bad, "%s in runs == utf8proc over the whole text", forms[f].name);
    }
}

static int same_ids(const finch_tokens *a, const finch_tokens *b)
{
    return a->len == b->len && (a->len == 0 || memcmp(a->ids, b->ids, a->len * sizeof *a->ids) == 0);
}

/* Encodes text with every fast path of tok turned off: the reference. */
static int encode_plain(finch_tokenizer *tok, const char *text, size_t n, finch_tokens *out)
{
    tok_pretokenizer *last = tok->pretokenizer;
    while (last && last->type == PRE_SEQUENCE) last = last->n_children ? &last->children[last->n_children - 1] : NULL;
    int32_t *char_ids = tok->bpe.char_ids;
    uint64_t *pairs = tok->bpe.pairs;
    int byte_level = tok->bpe.byte_level;
    tok->bpe.char_ids = NULL;
    tok->bpe.pairs = NULL;
    tok->bpe.byte_level = 0;
    if (last && last->type == PRE_BYTE_LEVEL) last->raw_bytes = 0;
    pthread_mutex_lock(&tok->work_lock); /* no cache either */
    int rc = finch_tokenizer_encode(tok, text, n, 0, out);
    pthread_mutex_unlock(&tok->work_lock);
    if (last && last->type == PRE_BYTE_LEVEL) last->raw_bytes = byte_level;
    tok->bpe.char_ids = char_ids;
    tok->bpe.pairs = pairs;
    tok->bpe.byte_level = byte_level;
    return rc;
}

static void check_tokenizer(const char *name)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizers/%s", testing_shared_dir(), name);
    finch_tokenizer *tok = NULL;
    if (finch_tokenizer_load(path, &tok)) {
        CHECK(0, "load %s: %s", path, finch_last_error());
        return;
    }
    static char text[4096];
    int bad = 0;
    for (int iter = 0; iter < 400 && !bad; iter++) {
        /* mostly short texts (many cache hits), some long unbroken ones */
        size_t n = random_text(text, sizeof text, iter % 10 == 0 ? 200 + rnd(400) : 1 + rnd(40));
        finch_tokens first = {0}, again = {0}, plain = {0};
        int rc = finch_tokenizer_encode(tok, text, n, 0, &first);
        rc |= finch_tokenizer_encode(tok, text, n, 0, &again);
        rc |= encode_plain(tok, text, n, &plain);
        if (rc || !same_ids(&first, &again) || !same_ids(&first, &plain)) {
            bad = 1;
            fprintf(stderr, "%s: fast and plain encodings differ (rc %d: %s) on \"%s\"\n", name, rc,
                    rc ? finch_last_error() : "", text);
        }
        finch_tokens_free(&first);
        finch_tokens_free(&again);
        finch_tokens_free(&plain);
    }
    CHECK(!bad, "%s: fast paths == plain paths on random text", name);
    finch_tokenizer_free(tok);
}

int main(void)
{
    check_normalizer();
    check_tokenizer("qwen3");
    check_tokenizer("llama3");
    check_tokenizer("llama2");
    return testing_finish();
}
