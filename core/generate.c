/* Generation: prompts are prefilled into the session's cache (in chunks, keeping whatever prefix the
 * cache already holds), then every unfinished sequence gains one sampled token per pass until it meets
 * an end-of-sequence id, a stop string, max_new_tokens or the end of the model's context.
 *
 * Text: each sequence's output ids are decoded whole after every token; the text settled so far is
 * streamed, holding back an ending that could still grow into a stop string and an incomplete UTF-8
 * character (the decoder shows it as U+FFFD until its last byte arrives). */
#include "core/error.h"
#include "core/session.h"
#include "core/vision_tower.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PREFILL_CHUNK 2048   /* prompt tokens per sequence in one pass */
#define MAX_EOS 64

finch_generate_options finch_generate_options_default(void)
{
    finch_generate_options o;
    memset(&o, 0, sizeof o);
    o.sampling = finch_sampling_default();
    o.max_new_tokens = 256;
    o.use_model_eos = 1;
    o.skip_special = 1;
    return o;
}

void finch_generation_free(finch_generation *g)
{
    if (!g) return;
    finch_tokens_free(&g->tokens);
    free(g->text);
    memset(g, 0, sizeof *g);
}

/* ---- end-of-sequence ids -------------------------------------------------------------------- */

typedef struct eos_set {
    int32_t ids[MAX_EOS];
    int n;
} eos_set;

static void eos_add(eos_set *e, int64_t id)
{
    if (id < 0 || id > INT32_MAX || e->n == MAX_EOS) return;
    for (int i = 0; i < e->n; i++)
        if (e->ids[i] == id) return;
    e->ids[e->n++] = (int32_t)id;
}

static int eos_has(const eos_set *e, int32_t id)
{
    for (int i = 0; i < e->n; i++)
        if (e->ids[i] == id) return 1;
    return 0;
}

/* eos_token_id of dir/name (an int or a list of ints); *found = 0 when the file or the field is absent. */
static int read_eos_field(const char *dir, const char *name, eos_set *e, int *found)
{
    char path[1200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    *found = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return FINCH_OK;
    char *text = NULL;
    long size = -1;
    if (fseek(f, 0, SEEK_END) == 0 && (size = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0 && (text = malloc((size_t)size + 1)))
        text[fread(text, 1, (size_t)size, f)] = 0;
    fclose(f);
    if (!text) return finch_error(FINCH_ERR_IO, "%s: cannot read", path);
    cJSON *j = cJSON_Parse(text);
    free(text);
    if (!j) return finch_error(FINCH_ERR_FORMAT, "%s: not valid JSON", path);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, "eos_token_id");
    int rc = FINCH_OK;
    if (cJSON_IsNumber(v)) {
        eos_add(e, (int64_t)v->valuedouble);
        *found = 1;
    } else if (cJSON_IsArray(v)) {
        const cJSON *it;
        cJSON_ArrayForEach(it, v) {
            if (!cJSON_IsNumber(it)) {
                rc = finch_error(FINCH_ERR_FORMAT, "%s: eos_token_id must be an integer or a list of integers", path);
                break;
            }
            eos_add(e, (int64_t)it->valuedouble);
        }
        *found = 1;
    } else if (v && !cJSON_IsNull(v)) {
        rc = finch_error(FINCH_ERR_FORMAT, "%s: eos_token_id must be an integer or a list of integers", path);
    }
    cJSON_Delete(j);
    return rc;
}

static int collect_eos(const finch_model *m, const finch_generate_options *o, eos_set *e)
{
    memset(e, 0, sizeof *e);
    for (int i = 0; i < o->n_eos_ids; i++) eos_add(e, o->eos_ids[i]);
    if (!o->use_model_eos) return FINCH_OK;
    int found = 0, rc = read_eos_field(m->dir, "generation_config.json", e, &found);
    if (!rc && !found) rc = read_eos_field(m->dir, "config.json", e, &found);
    if (rc) return rc;
    if (o->tokenizer) {
        finch_tokenizer_config tc;
        if (finch_tokenizer_config_get(o->tokenizer, &tc) == FINCH_OK && tc.eos_id >= 0) eos_add(e, tc.eos_id);
    }
    return FINCH_OK;
}

/* ---- per-sequence state ----------------------------------------------------------------------- */

typedef struct seq_state {
    finch_sampler *sampler;
    int done;
    size_t emitted;          /* bytes of text already streamed */
    char *text;              /* the latest decoding of the output ids */
    size_t text_len;
} seq_state;

static const char REPLACEMENT[] = "\xEF\xBF\xBD";

/* Bytes at the end of text[0..len) that could still start a stop string. */
static size_t stop_holdback(const finch_generate_options *o, const char *text, size_t len)
{
    size_t hold = 0;
    for (int i = 0; i < o->n_stop_strings; i++) {
        size_t sl = strlen(o->stop_strings[i]);
        for (size_t k = sl - 1; k > hold && k > 0; k--)
            if (k <= len && memcmp(text + len - k, o->stop_strings[i], k) == 0) {
                hold = k;
                break;
            }
    }
    return hold;
}

/* The first stop string occurrence at or after `from`: its offset, or -1. */
static long long find_stop(const finch_generate_options *o, const char *text, size_t len, size_t from)
{
    long long best = -1;
    for (int i = 0; i < o->n_stop_strings; i++) {
        size_t sl = strlen(o->stop_strings[i]);
        for (size_t p = from; p + sl <= len; p++)
            if (memcmp(text + p, o->stop_strings[i], sl) == 0) {
                if (best < 0 || (long long)p < best) best = (long long)p;
                break;
            }
    }
    return best;
}

/* Decodes the output, settles what can be shown, and marks a stop-string finish. On return [*piece,
 * *piece + *piece_len) is the newly settled text. */
static int update_text(const finch_generate_options *o, finch_generation *g, seq_state *st, size_t n_ids, const char **piece,
                       size_t *piece_len)
{
    *piece = NULL;
    *piece_len = 0;
    if (!o->tokenizer) return FINCH_OK;
    char *text = NULL;
    size_t len = 0;
    int rc = finch_tokenizer_decode(o->tokenizer, g->tokens.ids, n_ids, o->skip_special ? FINCH_DECODE_SKIP_SPECIAL : 0, &text, &len);
    if (rc) return rc;
    finch_data_free(st->text);
    st->text = text;
    st->text_len = len;
    size_t longest = 0;
    for (int i = 0; i < o->n_stop_strings; i++) {
        size_t sl = strlen(o->stop_strings[i]);
        if (sl > longest) longest = sl;
    }
    size_t from = st->emitted > longest ? st->emitted - longest : 0, end = len;
    long long at = o->n_stop_strings ? find_stop(o, text, len, from) : -1;
    if (at >= 0) {
        st->done = 1;
        g->finish = FINCH_FINISH_STOP;
        end = (size_t)at;
    } else if (!st->done) {
        /* A trailing U+FFFD may still become a character; an ending may still become a stop string. */
        if (end >= 3 && memcmp(text + end - 3, REPLACEMENT, 3) == 0) end -= 3;
        size_t hold = stop_holdback(o, text, len);
        if (len - hold < end) end = len - hold;
    }
    st->text_len = end;
    if (end > st->emitted) {
        *piece = text + st->emitted;
        *piece_len = end - st->emitted;
        st->emitted = end;
    }
    return FINCH_OK;
}

static int set_final_text(finch_generation *g, const seq_state *st, int has_tokenizer)
{
    if (!has_tokenizer) return FINCH_OK;
    g->text = malloc(st->text_len + 1);
    if (!g->text) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    if (st->text_len) memcpy(g->text, st->text, st->text_len);
    g->text[st->text_len] = 0;
    g->text_len = st->text_len;
    return FINCH_OK;
}

static int push_token(finch_tokens *t, int32_t id)
{
    if (t->len == t->cap) {
        size_t cap = t->cap ? 2 * t->cap : 64;
        int32_t *p = realloc(t->ids, cap * sizeof *p);
        if (!p) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
        t->ids = p;
        t->cap = cap;
    }
    t->ids[t->len++] = id;
    return FINCH_OK;
}

/* ---- the loop ---------------------------------------------------------------------------------- */

static int check_request(const finch_session *s, int n, const int32_t *const *prompts, const int64_t *lens,
                         const finch_generate_options *o)
{
    const finch_model_config *c = &s->m->cfg;
    if (n < 1 || n > s->max_seqs)
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "generate: %d prompts (the session holds 1 to %d)", n, s->max_seqs);
    if (o->max_new_tokens < 0) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "generate: max_new_tokens %lld < 0", (long long)o->max_new_tokens);
    if (o->n_images < 0 || (o->n_images && (!o->pixel_values || !o->image_grid_thw || o->n_patches < 1)))
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "generate: %lld images need pixel_values, image_grid_thw and n_patches",
                           (long long)o->n_images);
    if ((o->n_eos_ids && !o->eos_ids) || o->n_eos_ids < 0 || (o->n_stop_strings && !o->stop_strings) || o->n_stop_strings < 0)
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "generate: eos_ids or stop_strings missing for their count");
    if (o->n_stop_strings && !o->tokenizer)
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "generate: stop strings need a tokenizer (options.tokenizer)");
    for (int i = 0; i < o->n_stop_strings; i++)
        if (!o->stop_strings[i] || !o->stop_strings[i][0])
            return finch_error(FINCH_ERR_INVALID_ARGUMENT, "generate: stop string %d is empty", i);
    for (int i = 0; i < n; i++) {
        if (lens[i] < 1 || !prompts[i])
            return finch_error(FINCH_ERR_INVALID_ARGUMENT, "generate: prompt %d is empty (it needs at least one token, e.g. BOS)", i);
        if (lens[i] > c->max_positions)
            return finch_error(FINCH_ERR_INVALID_ARGUMENT,
                               "generate: prompt %d has %lld tokens, longer than the model's context of %lld (max_position_embeddings)",
                               i, (long long)lens[i], (long long)c->max_positions);
        for (int64_t t = 0; t < lens[i]; t++)
            if (prompts[i][t] < 0 || prompts[i][t] >= c->vocab)
                return finch_error(FINCH_ERR_INVALID_ARGUMENT, "generate: prompt %d, token %lld: id %d is outside the vocabulary [0, %lld)", i,
                                   (long long)t, prompts[i][t], (long long)c->vocab);
    }
    return FINCH_OK;
}

/* Feeds each prompt's tokens past what the cache already holds; the logits after each prompt's
 * last token land in logits[i]. */
static int prefill(finch_session *s, int n, const int32_t *const *prompts, const int64_t *lens, const finch_generate_options *o,
                   float *logits, int *seqs, const int32_t **toks, int64_t *counts, float *pass_logits)
{
    int64_t V = s->m->cfg.vocab;
    if (o->n_images) {
        /* Image tokens do not say which image they hold: the prompts are computed whole, in one pass. */
        finch_batch images = {0};
        images.pixel_values = o->pixel_values;
        images.image_grid_thw = o->image_grid_thw;
        images.n_images = o->n_images;
        images.n_patches = o->n_patches;
        for (int i = 0; i < n; i++) {
            finch_session_truncate(s, i, 0);
            seqs[i] = i;
        }
        int rc = finch_session_append_images(s, n, seqs, prompts, lens, &images, pass_logits);
        if (!rc) memcpy(logits, pass_logits, (size_t)(n * V) * sizeof(float));
        return rc;
    }
    for (int i = 0; i < n; i++) {
        /* Keep the cached prefix this prompt shares (at least its last token is computed again). */
        const finch_tokens *h = &s->held[i];
        int64_t keep = 0;
        while (keep < lens[i] - 1 && (size_t)keep < h->len && h->ids[keep] == prompts[i][keep]) keep++;
        finch_session_truncate(s, i, keep);
        /* Image tokens past what the cache holds need their images. */
        const finch_vision *v = s->m->vision;
        for (int64_t t = s->cache.len[i]; v && t < lens[i]; t++)
            if (prompts[i][t] == v->cfg.image_token_id)
                return finch_error(FINCH_ERR_INVALID_ARGUMENT, "generate: prompt %d has image tokens (at %lld) but no images were given "
                                   "(finch_generate_options.pixel_values)", i, (long long)t);
    }
    for (;;) {
        int k = 0;
        for (int i = 0; i < n; i++) {
            int64_t at = s->cache.len[i];
            if (at >= lens[i]) continue;
            seqs[k] = i;
            toks[k] = prompts[i] + at;
            counts[k] = lens[i] - at < PREFILL_CHUNK ? lens[i] - at : PREFILL_CHUNK;
            k++;
        }
        if (!k) return FINCH_OK;
        int rc = finch_session_append(s, k, seqs, toks, counts, pass_logits);
        if (rc) return rc;
        for (int j = 0; j < k; j++)
            if (s->cache.len[seqs[j]] == lens[seqs[j]]) memcpy(logits + seqs[j] * V, pass_logits + j * V, (size_t)V * sizeof(float));
    }
}

finch_status finch_session_generate(finch_session *s, int n, const int32_t *const *prompts, const int64_t *prompt_lens,
                                    const finch_generate_options *opts, finch_generation *out)
{
    if (!s || !prompts || !prompt_lens || !out) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "generate: NULL argument");
    finch_generate_options o = opts ? *opts : finch_generate_options_default();
    int rc = check_request(s, n, prompts, prompt_lens, &o);
    if (rc) return rc;
    eos_set eos;
    if ((rc = collect_eos(s->m, &o, &eos))) return rc;
    memset(out, 0, (size_t)n * sizeof *out);
    if (s->weights_version != s->m->weights_version) finch_session_reset(s);

    const finch_model_config *c = &s->m->cfg;
    int64_t V = c->vocab, reserve = 0;
    for (int i = 0; i < n; i++) {
        int64_t want = prompt_lens[i] + o.max_new_tokens;
        if (want > c->max_positions) want = c->max_positions;
        if (want > reserve) reserve = want;
    }
    seq_state *st = calloc((size_t)n, sizeof *st);
    float *logits = malloc((size_t)(2 * n * V) * sizeof(float));
    int *seqs = malloc((size_t)n * sizeof *seqs);
    const int32_t **toks = malloc((size_t)n * sizeof *toks);
    int64_t *counts = malloc((size_t)n * sizeof *counts);
    int32_t *next = malloc((size_t)n * sizeof *next);
    if (!st || !logits || !seqs || !toks || !counts || !next) {
        rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "generate: out of host memory");
        goto done;
    }
    float *pass_logits = logits + n * V;
    for (int i = 0; !rc && i < n; i++) {
        rc = finch_sampler_create(&o.sampling, V, (uint64_t)i, &st[i].sampler);
        if (!rc) rc = finch_sampler_add_context(st[i].sampler, prompts[i], (size_t)prompt_lens[i]);
    }
    if (!rc) rc = finch_kv_cache_reserve(&s->cache, reserve);
    if (!rc && o.max_new_tokens > 0) rc = prefill(s, n, prompts, prompt_lens, &o, logits, seqs, toks, counts, pass_logits);
    for (int i = 0; i < n; i++) st[i].done = o.max_new_tokens == 0;

    int cancelled = 0;
    while (!rc && !cancelled) {
        /* Choose a token for every unfinished sequence from its row of logits. */
        int k = 0;
        for (int i = 0; i < n && !rc && !cancelled; i++) {
            if (st[i].done) continue;
            finch_generation *g = &out[i];
            int32_t t;
            if ((rc = finch_sampler_next(st[i].sampler, logits + i * V, &t)) || (rc = push_token(&g->tokens, t))) break;
            size_t n_text = g->tokens.len;
            if (eos_has(&eos, t)) {
                st[i].done = 1;
                g->finish = FINCH_FINISH_EOS;
                n_text--;
            } else if ((int64_t)g->tokens.len == o.max_new_tokens) {
                st[i].done = 1;
                g->finish = FINCH_FINISH_LENGTH;
            } else if (s->cache.len[i] + 1 > c->max_positions) {
                st[i].done = 1;
                g->finish = FINCH_FINISH_CONTEXT;
            }
            const char *piece;
            size_t piece_len;
            if ((rc = update_text(&o, g, &st[i], n_text, &piece, &piece_len))) break;
            if (o.on_token && o.on_token(o.user, i, t, piece ? piece : (o.tokenizer ? "" : NULL), piece_len)) cancelled = 1;
            if (!st[i].done) {
                seqs[k] = i;
                next[k] = t;
                k++;
            }
        }
        if (rc || cancelled || !k) break;
        for (int j = 0; j < k; j++) {
            toks[j] = &next[j];
            counts[j] = 1;
        }
        if ((rc = finch_session_append(s, k, seqs, toks, counts, pass_logits))) break;
        for (int j = 0; j < k; j++) memcpy(logits + seqs[j] * V, pass_logits + j * V, (size_t)V * sizeof(float));
    }
    if (!rc && cancelled) {
        for (int i = 0; i < n; i++)
            if (!st[i].done) {
                out[i].finish = FINCH_FINISH_CANCELLED;
                st[i].text_len = st[i].emitted; /* what was shown, nothing held back */
            }
    }
    for (int i = 0; !rc && i < n; i++) rc = set_final_text(&out[i], &st[i], o.tokenizer != NULL);
    if (!rc && cancelled) rc = finch_error(FINCH_ERR_CANCELLED, "generate: cancelled by the token callback");

done:
    if (rc && rc != FINCH_ERR_CANCELLED)
        for (int i = 0; i < n; i++) finch_generation_free(&out[i]);
    if (st)
        for (int i = 0; i < n; i++) {
            finch_sampler_free(st[i].sampler);
            finch_data_free(st[i].text);
        }
    free(st);
    free(logits);
    free(seqs);
    free(toks);
    free(counts);
    free(next);
    return rc;
}

finch_status finch_generate(finch_model *m, int n, const int32_t *const *prompts, const int64_t *prompt_lens,
                            const finch_generate_options *opts, finch_generation *out)
{
    if (!m) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_generate: NULL model");
    if (n < 1) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_generate: %d prompts", n);
    finch_session *s = NULL;
    int rc = finch_session_create(m, n, &s);
    if (rc) return rc;
    rc = finch_session_generate(s, n, prompts, prompt_lens, opts, out);
    finch_session_free(s);
    return rc;
}
