/* The tokenizer's public API: loading, encoding (added tokens -> normalizer -> pre-tokenizer -> BPE ->
 * post-processor) and decoding, as Hugging Face `tokenizers` runs them. */
#include "core/error.h"
#include "core/tokenizer.h"
#include "core/unicode.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define OOM finch_error(FINCH_ERR_OUT_OF_MEMORY, "tokenizer")

static int is_dir(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static int exists(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0;
}

static void work_free(tok_work *w)
{
    if (!w) return;
    free(w->segs);
    free(w->sub);
    tok_buf_free(&w->norm);
    tok_pieces_free(&w->pieces);
    tok_pieces_free(&w->tmp);
    tok_cache_free(w->cache);
    free(w->cache);
    memset(w, 0, sizeof *w);
}

/* Buffers beyond this size are not kept between calls. */
#define WORK_KEEP_BYTES (1u << 20)

static void work_trim(tok_work *w)
{
    if (w->cap_segs * sizeof *w->segs > WORK_KEEP_BYTES) { free(w->segs); w->segs = NULL; w->cap_segs = 0; }
    if (w->cap_sub * sizeof *w->sub > WORK_KEEP_BYTES) { free(w->sub); w->sub = NULL; w->cap_sub = 0; }
    if (w->norm.cap > WORK_KEEP_BYTES) tok_buf_free(&w->norm);
    if (w->pieces.text.cap > WORK_KEEP_BYTES || w->pieces.cap * sizeof(size_t) > WORK_KEEP_BYTES) tok_pieces_free(&w->pieces);
    if (w->tmp.text.cap > WORK_KEEP_BYTES || w->tmp.cap * sizeof(size_t) > WORK_KEEP_BYTES) tok_pieces_free(&w->tmp);
}

finch_status finch_tokenizer_load(const char *path, finch_tokenizer **out)
{
    if (!path || !out) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_tokenizer_load: NULL argument");
    *out = NULL;
    size_t n = strlen(path);
    char *json = malloc(n + 32), *config = malloc(n + 32);
    if (!json || !config) { free(json); free(config); return OOM; }
    if (is_dir(path)) {
        snprintf(json, n + 32, "%s/tokenizer.json", path);
        snprintf(config, n + 32, "%s/tokenizer_config.json", path);
    } else {
        snprintf(json, n + 32, "%s", path);
        const char *slash = strrchr(path, '/');
        int dlen = slash ? (int)(slash - path) : 1;
        snprintf(config, n + 32, "%.*s/tokenizer_config.json", dlen, slash ? path : ".");
    }
    finch_tokenizer *tok = calloc(1, sizeof *tok);
    int rc = tok ? FINCH_OK : OOM;
    if (rc == FINCH_OK) {
        tok->add_bos_token = tok->add_eos_token = -1;
        tok->path = strdup(json);
        pthread_mutex_init(&tok->work_lock, NULL);
        if (!exists(json)) rc = finch_error(FINCH_ERR_IO, "%s: no such file (a tokenizer needs tokenizer.json)", json);
    }
    if (rc == FINCH_OK) rc = tok_load_json(tok, json);
    if (rc == FINCH_OK && exists(config)) rc = tok_load_config(tok, config);
    free(json);
    free(config);
    if (rc) { finch_tokenizer_free(tok); return rc; }
    *out = tok;
    return FINCH_OK;
}

void finch_tokenizer_free(finch_tokenizer *tok)
{
    if (!tok) return;
    tok_normalizer_free(tok->normalizer);
    free(tok->normalizer);
    tok_pretokenizer_free(tok->pretokenizer);
    free(tok->pretokenizer);
    tok_post_free(tok->post);
    free(tok->post);
    tok_decoder_free(tok->decoder);
    free(tok->decoder);
    tok_bpe_free(&tok->bpe);
    work_free(tok->work);
    free(tok->work);
    pthread_mutex_destroy(&tok->work_lock);
    for (int i = 0; i < tok->n_added; i++) free(tok->added[i].content);
    free(tok->added);
    tok_trie_free(&tok->trie_raw);
    tok_trie_free(&tok->trie_norm);
    if (tok->id_to_token)
        for (int32_t i = 0; i < tok->n_ids; i++) free(tok->id_to_token[i]);
    free(tok->id_to_token);
    free(tok->id_special);
    str_map_free(&tok->added_map);
    free(tok->bos_token);
    free(tok->eos_token);
    free(tok->pad_token);
    free(tok->unk_token);
    free(tok->chat_template);
    free(tok->path);
    free(tok);
}

static int encode_text(const finch_tokenizer *tok, const char *s, size_t n, int at_start, tok_work *w,
                       finch_tokens *out)
{
    tok_pieces_clear(&w->pieces);
    if (tok_pieces_add(&w->pieces, s, n)) return OOM;
    if (tok->pretokenizer) {
        int rc = tok_pretokenize(tok->pretokenizer, &w->pieces, &w->tmp, at_start);
        if (rc) return rc;
    }
    for (size_t i = 0; i < w->pieces.n; i++) {
        size_t a = tok_piece_start(&w->pieces, i);
        int rc = tok_bpe_encode(&tok->bpe, w->cache, w->pieces.text.p + a, w->pieces.end[i] - a, out);
        if (rc) return rc;
    }
    return FINCH_OK;
}

static int post_process(const tok_post *p, finch_tokens *out, size_t base)
{
    if (p->type == POST_SEQUENCE) {
        for (int i = 0; i < p->n_children; i++) {
            int rc = post_process(&p->children[i], out, base);
            if (rc) return rc;
        }
        return FINCH_OK;
    }
    if (p->type != POST_TEMPLATE && p->type != POST_BERT) return FINCH_OK;
    size_t n = out->len - base;
    int32_t *seq = malloc((n + 1) * sizeof *seq);
    if (!seq) return OOM;
    if (n) memcpy(seq, out->ids + base, n * sizeof *seq);
    out->len = base;
    int rc = FINCH_OK;
    for (int i = 0; rc == FINCH_OK && i < p->n_items; i++) {
        const struct tok_post_item *it = &p->items[i];
        if (it->n_ids < 0) {
            for (size_t k = 0; k < n && rc == FINCH_OK; k++) if (tok_ids_push(out, seq[k])) rc = OOM;
        } else {
            for (int k = 0; k < it->n_ids && rc == FINCH_OK; k++) if (tok_ids_push(out, it->ids[k])) rc = OOM;
        }
    }
    free(seq);
    return rc;
}

finch_status finch_tokenizer_encode(const finch_tokenizer *tok, const char *text, size_t len, unsigned flags,
                                    finch_tokens *out)
{
    if (!tok || (!text && len) || !out) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_tokenizer_encode: NULL argument");
    size_t bad;
    if (!utf8_valid(text, len, &bad))
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "tokenizer: text is not valid UTF-8 (byte %zu of %zu)", bad, len);
    size_t base = out->len;
    int skip_special = (flags & FINCH_ENCODE_SPLIT_SPECIAL) != 0;
    /* Borrow the tokenizer's storage and cache, or work with storage of this call's own. */
    finch_tokenizer *shared = (finch_tokenizer *)tok;
    tok_work own = {0}, *w = &own;
    int borrowed = pthread_mutex_trylock(&shared->work_lock) == 0;
    if (borrowed) {
        if (!shared->work) shared->work = calloc(1, sizeof *shared->work);
        if (shared->work && !shared->work->cache) {
            tok_cache *c = calloc(1, sizeof *c);
            if (c) c->slots = calloc(TOK_CACHE_SLOTS, sizeof *c->slots);
            if (c && !c->slots) { free(c); c = NULL; }
            shared->work->cache = c; /* none when out of memory: encoding goes on without */
        }
        if (shared->work) w = shared->work;
    }
    w->nsegs = 0;
    int rc = tok_added_split(tok->added, &tok->trie_raw, text, len, 0, skip_special, &w->segs, &w->nsegs, &w->cap_segs);
    for (size_t i = 0; rc == FINCH_OK && i < w->nsegs; i++) {
        tok_segment sg = w->segs[i];
        if (sg.id >= 0) { if (tok_ids_push(out, sg.id)) rc = OOM; continue; }
        const char *s = text + sg.start;
        size_t n = sg.end - sg.start;
        if (tok->normalizer) {
            rc = tok_normalize(tok->normalizer, s, n, &w->norm);
            if (rc) break;
            s = w->norm.p ? w->norm.p : "";
            n = w->norm.len;
        }
        if (!tok->has_norm_added) { rc = encode_text(tok, s, n, sg.start == 0, w, out); continue; }
        w->nsub = 0;
        rc = tok_added_split(tok->added, &tok->trie_norm, s, n, 0, skip_special, &w->sub, &w->nsub, &w->cap_sub);
        for (size_t k = 0; rc == FINCH_OK && k < w->nsub; k++) {
            if (w->sub[k].id >= 0) { if (tok_ids_push(out, w->sub[k].id)) rc = OOM; continue; }
            rc = encode_text(tok, s + w->sub[k].start, w->sub[k].end - w->sub[k].start, sg.start == 0 && w->sub[k].start == 0, w, out);
        }
    }
    if (rc == FINCH_OK && (flags & FINCH_ENCODE_ADD_SPECIAL) && tok->post) rc = post_process(tok->post, out, base);
    if (w == &own) {
        work_free(&own);
    } else {
        work_trim(w);
        pthread_mutex_unlock(&shared->work_lock);
    }
    if (rc) out->len = base;
    return rc;
}

finch_status finch_tokenizer_decode(const finch_tokenizer *tok, const int32_t *ids, size_t n, unsigned flags,
                                    char **out_text, size_t *out_len)
{
    if (!tok || (!ids && n) || !out_text) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_tokenizer_decode: NULL argument");
    *out_text = NULL;
    tok_pieces tokens = {0}, tmp = {0};
    int rc = FINCH_OK;
    for (size_t i = 0; rc == FINCH_OK && i < n; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= tok->n_ids || !tok->id_to_token[id]) {
            rc = finch_error(FINCH_ERR_INVALID_ARGUMENT, "tokenizer decode: id %d (position %zu) is not in the vocabulary", id, i);
            break;
        }
        if ((flags & FINCH_DECODE_SKIP_SPECIAL) && tok->id_special[id]) continue;
        /* empty token strings cannot exist (vocab keys and added contents are non-empty) */
        if (tok_pieces_add(&tokens, tok->id_to_token[id], strlen(tok->id_to_token[id]))) rc = OOM;
    }
    tok_buf text = {0};
    if (rc == FINCH_OK && tok->decoder) rc = tok_decode_chain(tok->decoder, &tokens, &tmp);
    for (size_t i = 0; rc == FINCH_OK && i < tokens.n; i++) {
        size_t a = tok_piece_start(&tokens, i);
        if ((!tok->decoder && i && tok_buf_append(&text, " ", 1)) || tok_buf_append(&text, tokens.text.p + a, tokens.end[i] - a))
            rc = OOM;
    }
    if (rc == FINCH_OK && tok_buf_reserve(&text, 0)) rc = OOM;
    tok_pieces_free(&tokens);
    tok_pieces_free(&tmp);
    if (rc) { tok_buf_free(&text); return rc; }
    text.p[text.len] = 0;
    *out_text = text.p;
    if (out_len) *out_len = text.len;
    return FINCH_OK;
}

int32_t finch_tokenizer_vocab_size(const finch_tokenizer *tok) { return tok ? tok->n_ids : 0; }

const char *finch_tokenizer_id_to_token(const finch_tokenizer *tok, int32_t id)
{
    return tok && id >= 0 && id < tok->n_ids ? tok->id_to_token[id] : NULL;
}

int32_t finch_tokenizer_token_to_id(const finch_tokenizer *tok, const char *token)
{
    if (!tok || !token) return -1;
    size_t n = strlen(token);
    int32_t id = str_map_get(&tok->added_map, token, n);
    return id >= 0 ? id : str_map_get(&tok->bpe.vocab, token, n);
}

int finch_tokenizer_is_special(const finch_tokenizer *tok, int32_t id)
{
    return tok && id >= 0 && id < tok->n_ids && tok->id_special[id];
}

finch_status finch_tokenizer_config_get(const finch_tokenizer *tok, finch_tokenizer_config *out)
{
    if (!tok || !out) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_tokenizer_config_get: NULL argument");
    out->bos_token = tok->bos_token;
    out->eos_token = tok->eos_token;
    out->pad_token = tok->pad_token;
    out->unk_token = tok->unk_token;
    out->bos_id = tok->bos_token ? finch_tokenizer_token_to_id(tok, tok->bos_token) : -1;
    out->eos_id = tok->eos_token ? finch_tokenizer_token_to_id(tok, tok->eos_token) : -1;
    out->pad_id = tok->pad_token ? finch_tokenizer_token_to_id(tok, tok->pad_token) : -1;
    out->unk_id = tok->unk_token ? finch_tokenizer_token_to_id(tok, tok->unk_token) : -1;
    out->chat_template = tok->chat_template;
    out->add_bos_token = tok->add_bos_token;
    out->add_eos_token = tok->add_eos_token;
    return FINCH_OK;
}
