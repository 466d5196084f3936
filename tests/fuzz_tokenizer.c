/* Fuzz check of the tokenizer (see fuzz_text.h): tokenizer.json loading, and encoding arbitrary bytes
 * with real tokenizers, fast paths against plain ones. libFuzzer's entry point with FINCH_FUZZ_ENTRY. */
#include "core/tokenizer.h"
#include "core/unicode.h"
#include "finch/finch.h"
#include "tests/fuzz_text.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *REAL[] = {"qwen3", "llama3", "llama2"};
#define N_REAL 3

static finch_tokenizer *real_tokenizer(int i)
{
    static finch_tokenizer *toks[N_REAL];
    static int tried[N_REAL];
    if (!tried[i]) {
        tried[i] = 1;
        const char *shared = getenv("FINCH_SHARED_DIR");
        char path[4096];
        snprintf(path, sizeof path, "%s/tokenizers/%s", shared && *shared ? shared : "../shared", REAL[i]);
        if (finch_tokenizer_load(path, &toks[i])) fprintf(stderr, "fuzz_tokenizer: %s\n", finch_last_error());
    }
    return toks[i];
}

/* Encodes with every fast path off (as test_tokenizer_fastpaths does): the reference. */
static int encode_plain(finch_tokenizer *tok, const char *text, size_t n, unsigned flags, finch_tokens *out)
{
    tok_pretokenizer *last = tok->pretokenizer;
    while (last && last->type == PRE_SEQUENCE) last = last->n_children ? &last->children[last->n_children - 1] : NULL;
    tok_bpe saved = tok->bpe;
    tok->bpe.char_ids = NULL;
    tok->bpe.pairs = NULL;
    tok->bpe.byte_level = 0;
    if (last && last->type == PRE_BYTE_LEVEL) last->raw_bytes = 0;
    pthread_mutex_lock(&tok->work_lock); /* and no cache */
    int rc = finch_tokenizer_encode(tok, text, n, flags, out);
    pthread_mutex_unlock(&tok->work_lock);
    if (last && last->type == PRE_BYTE_LEVEL) last->raw_bytes = saved.byte_level;
    tok->bpe.char_ids = saved.char_ids;
    tok->bpe.pairs = saved.pairs;
    tok->bpe.byte_level = saved.byte_level;
    return rc;
}

static int ids_ok(const finch_tokenizer *tok, const finch_tokens *t)
{
    for (size_t i = 0; i < t->len; i++)
        if (t->ids[i] < 0 || t->ids[i] >= finch_tokenizer_vocab_size(tok)) return 0;
    return 1;
}

static int check_text(const char *text, size_t n, char *why, size_t why_len)
{
    size_t bad_at;
    int valid = utf8_valid(text, n, &bad_at);
    for (int i = 0; i < N_REAL; i++) {
        finch_tokenizer *tok = real_tokenizer(i);
        if (!tok) { snprintf(why, why_len, "cannot load the %s tokenizer", REAL[i]); return -1; }
        for (unsigned flags = 0; flags < 4; flags++) {
            finch_tokens fast = {0}, plain = {0};
            tok_ids_push(&fast, 7); /* encode appends: what was there stays */
            tok_ids_push(&plain, 7);
            int rc = finch_tokenizer_encode(tok, text, n, flags, &fast);
            int rc_plain = encode_plain(tok, text, n, flags, &plain);
            int bad = 0;
            if (!valid) {
                bad = rc != FINCH_ERR_INVALID_ARGUMENT || fast.len != 1;
                if (bad) snprintf(why, why_len, "%s: invalid UTF-8 gave status %d, %zu ids", REAL[i], rc, fast.len);
            } else if (rc || rc_plain) {
                snprintf(why, why_len, "%s flags %u: status %d/%d: %s", REAL[i], flags, rc, rc_plain, finch_last_error());
                bad = 1;
            } else if (fast.len != plain.len || memcmp(fast.ids, plain.ids, fast.len * sizeof *fast.ids) || fast.ids[0] != 7) {
                snprintf(why, why_len, "%s flags %u: fast and plain encodings differ (%zu vs %zu ids)", REAL[i], flags,
                         fast.len, plain.len);
                bad = 1;
            } else if (!ids_ok(tok, &fast)) {
                snprintf(why, why_len, "%s: id out of range", REAL[i]);
                bad = 1;
            } else {
                char *dec = NULL;
                size_t dlen = 0;
                rc = finch_tokenizer_decode(tok, fast.ids + 1, fast.len - 1, flags & 1 ? FINCH_DECODE_SKIP_SPECIAL : 0, &dec, &dlen);
                if (rc) {
                    snprintf(why, why_len, "%s: decode failed: %s", REAL[i], finch_last_error());
                    bad = 1;
                } else if (i == 1 && flags == 0 && (dlen != n || memcmp(dec, text, n))) {
                    /* Llama 3: byte-level, no normalizer: decoding gives back exactly the text */
                    snprintf(why, why_len, "llama3: decode(encode(s)) != s for %zu bytes", n);
                    bad = 1;
                }
                finch_data_free(dec);
            }
            finch_tokens_free(&fast);
            finch_tokens_free(&plain);
            if (bad) return -1;
        }
    }
    return 0;
}

static int check_json(const uint8_t *data, size_t size, char *why, size_t why_len)
{
    const char *path = fuzz_scratch_path("tokenizer.json");
    if (fuzz_write_file(path, data, size)) {
        snprintf(why, why_len, "cannot write %s", path);
        return -1;
    }
    finch_tokenizer *tok = NULL;
    int bad = 0, rc = finch_tokenizer_load(path, &tok);
    if (rc) {
        const char *msg = finch_last_error();
        if ((rc != FINCH_ERR_FORMAT && rc != FINCH_ERR_UNSUPPORTED && rc != FINCH_ERR_OUT_OF_MEMORY) || !strstr(msg, path) || tok) {
            snprintf(why, why_len, "load: status %d, message '%.300s'", rc, msg);
            bad = 1;
        }
    } else {
        static const char *TEXTS[] = {"", "Hello world", " hello  world\n\n", "a<s>b</s>c<|im_end|>", "caf\xC3\xA9 \xE4\xB8\xAD\xE6\x96\x87 \xF0\x9F\x98\x80",
                                      "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa 12345"};
        for (size_t k = 0; k < sizeof TEXTS / sizeof *TEXTS && !bad; k++) {
            for (unsigned flags = 0; flags < 4 && !bad; flags++) {
                finch_tokens t = {0};
                rc = finch_tokenizer_encode(tok, TEXTS[k], strlen(TEXTS[k]), flags, &t);
                if (rc && (rc != FINCH_ERR_FORMAT && rc != FINCH_ERR_UNSUPPORTED && rc != FINCH_ERR_OUT_OF_MEMORY)) {
                    snprintf(why, why_len, "encode: status %d: %s", rc, finch_last_error());
                    bad = 1;
                } else if (rc == FINCH_OK && !ids_ok(tok, &t)) {
                    snprintf(why, why_len, "encode: id out of range");
                    bad = 1;
                } else if (rc == FINCH_OK) {
                    char *dec = NULL;
                    if (finch_tokenizer_decode(tok, t.ids, t.len, flags & 1, &dec, NULL)) {
                        snprintf(why, why_len, "decode of encoded ids failed: %s", finch_last_error());
                        bad = 1;
                    }
                    finch_data_free(dec);
                }
                finch_tokens_free(&t);
            }
        }
        finch_tokenizer_free(tok);
    }
    remove(path);
    return bad ? -1 : 0;
}

int fuzz_tokenizer_check(const uint8_t *data, size_t size, char *why, size_t why_len)
{
    if (size == 0) return 0;
    if (data[0] & 1) return check_json(data + 1, size - 1, why, why_len);
    return check_text((const char *)data + 1, size - 1, why, why_len);
}

#ifdef FINCH_FUZZ_ENTRY
int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Loading the real tokenizers takes seconds under the sanitizers: before the clock of the first input. */
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    for (int i = 0; i < N_REAL; i++) real_tokenizer(i);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char why[512];
    if (fuzz_tokenizer_check(data, size, why, sizeof why) < 0) {
        fprintf(stderr, "fuzz_tokenizer: %s\n", why);
        abort();
    }
    return 0;
}
#endif
