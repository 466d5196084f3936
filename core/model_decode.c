/* The model's forward pass for generation: new tokens of several sequences go through the same
 * decoder layers as in training (model_forward.c's finch_layer_forward, no tape), with attention
 * reading and extending each sequence's key/value cache; only each sequence's last new token goes
 * on through the final norm and the head. Prefill (a whole prompt) and decode (one token) are the
 * same pass with different token counts. */
#include "core/error.h"
#include "core/model_layer.h"
#include "core/model_vl.h"
#include "core/mrope.h"
#include "core/vision_tower.h"
#include "core/session.h"

#include <stdlib.h>
#include <string.h>

#define API (s->m->be->api)
#define DEV s->m->be->dev, s->m->be->stream

static void replay_drop(finch_session *s)
{
    if (s->replay) s->m->be->api->graph_free(s->m->be->dev, s->replay);
    s->replay = NULL;
    s->last_key_set = 0;
}

/* A session as an owner of model state: when the model moves to another backend, the cache is
 * dropped on the old device (every sequence forgotten) and grows again on the new one. */
static void session_release(void *self)
{
    finch_session *s = self;
    replay_drop(s);
    finch_kv_cache_drop(&s->cache);
    finch_graph_clear(&s->graph);
    finch_arena_free(&s->arena);
    for (int i = 0; i < s->max_seqs; i++) {
        s->held[i].len = 0;
        s->rope_delta[i] = s->image_end[i] = 0;
    }
}

finch_status finch_session_create(finch_model *m, int max_seqs, finch_session **out)
{
    if (!m || !out) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_session_create: NULL argument");
    *out = NULL;
    if (max_seqs < 1 || max_seqs > 65536)
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_session_create: max_seqs %d must be in [1, 65536]", max_seqs);
    finch_session *s = calloc(1, sizeof *s);
    if (!s || !(s->held = calloc((size_t)max_seqs, sizeof *s->held)) || !(s->rope_delta = calloc((size_t)max_seqs, 3 * sizeof(int64_t))) ||
        !(s->replay_key.slots = calloc((size_t)max_seqs, 3 * sizeof(int)))) {
        if (s) {
            free(s->held);
            free(s->rope_delta);
        }
        free(s);
        return finch_error(FINCH_ERR_OUT_OF_MEMORY, "finch_session_create: out of host memory");
    }
    s->last_key.slots = s->replay_key.slots + max_seqs;
    s->image_end = s->rope_delta + max_seqs;
    s->pending_delta = s->image_end + max_seqs;
    s->m = m;
    s->max_seqs = max_seqs;
    s->weights_version = m->weights_version;
    const finch_model_config *c = &m->cfg;
    int rc = finch_kv_cache_init(&s->cache, m->be, c->n_layers, max_seqs, c->n_kv_heads * c->head_dim, m->dtype);
    if (rc) {
        free(s->held);
        free(s->rope_delta);
        free(s->replay_key.slots);
        free(s);
        return rc;
    }
    finch_arena_init(&s->arena, m->be);
    finch_graph_init(&s->graph, m->be, &s->arena);
    finch_model_owner owner = {s, NULL, NULL, session_release};
    if ((rc = finch_model_add_owner(m, &owner))) {
        finch_session_free(s);
        return rc;
    }
    s->registered = 1;
    *out = s;
    return FINCH_OK;
}

void finch_session_free(finch_session *s)
{
    if (!s) return;
    if (s->registered) finch_model_remove_owner(s->m, s);
    replay_drop(s);
    finch_kv_cache_free(&s->cache);
    finch_graph_free(&s->graph);
    finch_arena_free(&s->arena);
    for (int i = 0; i < s->max_seqs; i++) finch_tokens_free(&s->held[i]);
    free(s->held);
    free(s->host);
    free(s->rope_delta);
    free(s->replay_key.slots);
    free(s);
}

void finch_session_truncate(finch_session *s, int seq, int64_t tokens)
{
    if (tokens < s->image_end[seq]) tokens = 0;
    if (tokens == 0) s->rope_delta[seq] = s->image_end[seq] = 0;
    finch_kv_cache_truncate(&s->cache, seq, tokens);
    if ((size_t)tokens < s->held[seq].len) s->held[seq].len = (size_t)tokens;
}

finch_status finch_session_reset(finch_session *s)
{
    if (!s) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_session_reset: NULL session");
    for (int i = 0; i < s->max_seqs; i++) finch_session_truncate(s, i, 0);
    s->weights_version = s->m->weights_version;
    return FINCH_OK;
}

int64_t finch_session_length(const finch_session *s, int seq)
{
    return s && seq >= 0 && seq < s->max_seqs ? s->cache.len[seq] : 0;
}

void finch_session_stats_get(const finch_session *s, finch_session_stats *out)
{
    if (!out) return;
    memset(out, 0, sizeof *out);
    if (s) *out = s->stats;
}

static int append_held(finch_tokens *t, const int32_t *ids, int64_t n)
{
    if (t->len + (size_t)n > t->cap) {
        size_t cap = t->cap ? t->cap : 64;
        while (cap < t->len + (size_t)n) cap *= 2;
        int32_t *p = realloc(t->ids, cap * sizeof *p);
        if (!p) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
        t->ids = p;
        t->cap = cap;
    }
    memcpy(t->ids + t->len, ids, (size_t)n * sizeof *ids);
    t->len += (size_t)n;
    return FINCH_OK;
}

static int check_tokens(const finch_session *s, int n, const int *seqs, const int32_t *const *tokens, const int64_t *n_tokens,
                        int64_t *total)
{
    const finch_model_config *c = &s->m->cfg;
    *total = 0;
    for (int i = 0; i < n; i++) {
        int q = seqs[i];
        if (q < 0 || q >= s->max_seqs)
            return finch_error(FINCH_ERR_INVALID_ARGUMENT, "sequence %d is outside the session's [0, %d)", q, s->max_seqs);
        if (n_tokens[i] < 1 || !tokens[i])
            return finch_error(FINCH_ERR_INVALID_ARGUMENT, "sequence %d: no tokens to append (an empty prompt needs at least a BOS token)", q);
        for (int64_t t = 0; t < n_tokens[i]; t++)
            if (tokens[i][t] < 0 || tokens[i][t] >= c->vocab)
                return finch_error(FINCH_ERR_INVALID_ARGUMENT, "sequence %d: token %lld is id %d, outside the vocabulary [0, %lld)", q,
                                   (long long)t, tokens[i][t], (long long)c->vocab);
        if (s->cache.len[q] + n_tokens[i] > c->max_positions)
            return finch_error(FINCH_ERR_INVALID_ARGUMENT,
                               "sequence %d: %lld tokens exceed the model's context of %lld (max_position_embeddings in %s/config.json)",
                               q, (long long)(s->cache.len[q] + n_tokens[i]), (long long)c->max_positions, s->m->dir);
        *total += n_tokens[i];
    }
    if (*total > INT32_MAX / 4) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "%lld tokens in one pass is too many", (long long)*total);
    return FINCH_OK;
}

/* The positions of sequence i's new tokens, rows of `stride` apart (rows: 1, or 3 for multimodal
 * RoPE), and its rope delta after them; *image consumes the pass's images from grid row *image. */
static int pass_positions(finch_session *s, int i, int seq, const int32_t *tok, int64_t count, const finch_batch *images,
                          int64_t *image, int rows, int32_t *pos, int64_t stride)
{
    const finch_vision *v = s->m->vision;
    int64_t start = s->cache.len[seq] + s->rope_delta[seq], blocks = 0, tokens = 0;
    s->pending_delta[seq] = s->rope_delta[seq];
    for (int64_t t = 0; v && t < count; t++) {
        tokens += tok[t] == v->cfg.image_token_id;
        blocks += tok[t] == v->cfg.image_token_id && (t == 0 || tok[t - 1] != v->cfg.image_token_id);
    }
    /* Without images, image tokens are ordinary tokens (a generated one, say), as in transformers. */
    if (!tokens || !images) {
        for (int r = 0; r < rows; r++)
            for (int64_t t = 0; t < count; t++) pos[r * stride + t] = (int32_t)(start + t);
        return FINCH_OK;
    }
    /* This sequence's images: as many of the pass's next ones as its image tokens take. */
    int64_t first = *image, merge2 = v->cfg.merge_size * v->cfg.merge_size, covered = 0;
    while (covered < tokens && *image < images->n_images) {
        const int32_t *g = images->image_grid_thw + 3 * *image;
        covered += (int64_t)g[0] * g[1] * g[2] / merge2;
        ++*image;
    }
    int32_t *p = malloc((size_t)(3 * count) * sizeof *p);
    if (!p) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    int rc = finch_mrope_positions(tok, NULL, 1, count, v->cfg.image_token_id, images->image_grid_thw + 3 * first,
                                   *image - first, v->cfg.merge_size, p);
    if (rc) {
        free(p);
        return finch_error_prefix(rc, "prompt %d: ", i);
    }
    int32_t top = 0;
    for (int r = 0; r < 3; r++)
        for (int64_t t = 0; t < count; t++) {
            pos[r * stride + t] = (int32_t)(start + p[r * count + t]);
            if (p[r * count + t] > top) top = p[r * count + t];
        }
    free(p);
    /* Hugging Face continues after the largest position: rope_deltas = max + 1 - length. */
    s->pending_delta[seq] = start + top + 1 - (s->cache.len[seq] + count);
    return FINCH_OK;
}

/* From the embeddings x[0] to the logits of each sequence's last new token: the layers, the final
 * norm, the head. */
static int layers_to_logits(finch_session *s, finch_step_ctx *ctx, finch_tensor *x, int n, int64_t total, finch_tensor *out)
{
    finch_model *m = s->m;
    const finch_model_config *c = &m->cfg;
    finch_graph *g = &s->graph;
    int64_t H = c->hidden;
    int rc;
    for (int64_t l = 0; l < c->n_layers; l++) {
        finch_arena_mark mark = finch_arena_get_mark(&s->arena);
        finch_graph_mark gm = finch_graph_get_mark(g);
        if ((rc = finch_layer_forward(ctx, l, &x[l % 2], &x[(l + 1) % 2]))) return rc;
        finch_arena_reset(&s->arena, mark);
        finch_graph_reset(g, gm);
    }
    finch_tensor h = x[c->n_layers % 2], last, hn, lg;
    if (total == n) {
        last = h;
    } else {
        /* Only each sequence's last new token goes on to the head. */
        if ((rc = finch_graph_tensor(g, m->dtype, n, H, 0, &last))) return rc;
        size_t es = finch_dtype_size(m->dtype);
        const int32_t *cu = s->cache.host;
        for (int i = 0; i < n; i++)
            if (API->copy(DEV, finch_dptr_at(last.data, (size_t)(i * H) * es), finch_dptr_at(h.data, (size_t)((cu[i + 1] - 1) * H) * es),
                          (size_t)H * es))
                return finch_device_error(m->be, FINCH_ERR_DEVICE, "gathering the last tokens");
    }
    if ((rc = finch_model_final_norm(ctx, &last, &hn)) || (rc = finch_op_logits(g, &hn, m->lm_head, &lg))) return rc;
    if (c->final_softcap > 0) {
        finch_tensor capped;
        if ((rc = finch_op_activation(g, FINCH_ACT_SOFTCAP, c->final_softcap, &lg, &capped))) return rc;
        lg = capped;
    }
    *out = lg;
    return FINCH_OK;
}

/* What makes a one-token-per-sequence pass the same work as another: the sequences, the weights, and
 * the addresses of the arena and the cache (their generations); positions, lengths and token ids are
 * data in device memory (copy_rows appends, kv_len bounds the attention). */
static void pass_key(const finch_session *s, int n, const int *seqs, int64_t longest, struct finch_pass_key *k)
{
    const finch_model_config *c = &s->m->cfg;
    k->n = n;
    memcpy(k->slots, seqs, (size_t)n * sizeof *seqs);
    k->weights_version = s->m->weights_version;
    k->arena_generation = s->arena.generation;
    k->cache_generation = s->cache.generation;
    k->rope_long = (c->rope_global.inv_freq_long && longest > c->rope_global.long_after) |
                   (c->rope_local.inv_freq_long && longest > c->rope_local.long_after) << 1;
}

static int pass_key_equal(const struct finch_pass_key *a, const struct finch_pass_key *b)
{
    return a->n == b->n && !memcmp(a->slots, b->slots, (size_t)a->n * sizeof *a->slots) && a->weights_version == b->weights_version &&
           a->arena_generation == b->arena_generation && a->cache_generation == b->cache_generation && a->rope_long == b->rope_long;
}

static void pass_key_copy(struct finch_pass_key *dst, const struct finch_pass_key *src)
{
    int *slots = dst->slots;
    *dst = *src;
    dst->slots = slots;
    memcpy(dst->slots, src->slots, (size_t)src->n * sizeof *slots);
}

/* layers_to_logits, replayed where it can be: a decode pass (one token per sequence, no images) on
 * a plugin that records is run directly until one such pass with the same key has run without
 * allocating (so the arena and the plugin's GEMM plans are settled), then recorded once, and from
 * then on replayed as one launch while the key holds. If recording fails, this session stops trying
 * and runs its passes directly. */
static int pass_to_logits(finch_session *s, finch_step_ctx *ctx, finch_tensor *x, int n, int64_t total, int64_t longest, int images,
                          finch_tensor *lg)
{
    const finch_plugin_api *api = API;
    int can = !s->replay_off && total == n && !images && api->capture_begin && api->capture_end && api->graph_launch &&
              api->graph_free && api->copy_rows && api->attention_cache_forward;
    if (!can) return layers_to_logits(s, ctx, x, n, total, lg);
    struct finch_pass_key key;
    key.slots = s->replay_key.slots + 2 * s->max_seqs; /* the third array: this pass's */
    pass_key(s, n, ctx->cache->slots, longest, &key);
    if (s->replay && pass_key_equal(&key, &s->replay_key)) {
        *lg = s->replay_logits;
        if (api->graph_launch(DEV, s->replay)) return finch_device_error(s->m->be, FINCH_ERR_DEVICE, "replaying a decode pass");
        s->stats.replayed++;
        return FINCH_OK;
    }
    if (s->replay) {
        api->graph_free(s->m->be->dev, s->replay);
        s->replay = NULL;
    }
    if (!s->last_key_set || !pass_key_equal(&key, &s->last_key)) {
        int rc = layers_to_logits(s, ctx, x, n, total, lg);
        pass_key_copy(&s->last_key, &key);
        s->last_key_set = !rc && s->arena.generation == key.arena_generation;
        return rc;
    }
    finch_arena_mark mark = finch_arena_get_mark(&s->arena);
    finch_graph_mark gm = finch_graph_get_mark(&s->graph);
    finch_plugin_graph *rec = NULL;
    int rc = api->capture_begin(DEV);
    if (!rc) {
        rc = layers_to_logits(s, ctx, x, n, total, lg);
        int end = api->capture_end(DEV, &rec);
        if (!rc) rc = end;
        if (!rc && s->arena.generation != key.arena_generation) rc = FINCH_ERR_STATE; /* allocated while recording */
    }
    if (!rc && !api->graph_launch(DEV, rec)) {
        s->stats.replayed++;
        s->replay = rec;
        s->replay_logits = *lg;
        pass_key_copy(&s->replay_key, &key);
        return FINCH_OK;
    }
    /* Not recordable here (or the launch failed): forget it and run the pass directly, from now on. */
    if (rec) api->graph_free(s->m->be->dev, rec);
    finch_error_clear();
    s->replay_off = 1;
    finch_arena_reset(&s->arena, mark);
    finch_graph_reset(&s->graph, gm);
    return layers_to_logits(s, ctx, x, n, total, lg);
}

/* The pass: embeddings (image features over the image tokens), layers, and the logits of each
 * sequence's last new token. */
static int run_pass(finch_session *s, int n, const int *seqs, const int32_t *const *tokens, const int64_t *n_tokens,
                    int64_t total, const finch_batch *images, float *logits)
{
    finch_model *m = s->m;
    const finch_model_config *c = &m->cfg;
    finch_graph *g = &s->graph;
    int64_t H = c->hidden;
    int rows = c->rope_n_sections ? c->rope_n_sections : 1;
    size_t need = (size_t)(1 + rows) * (size_t)total;
    if (need > s->host_cap) {
        int32_t *p = realloc(s->host, need * sizeof *p);
        if (!p) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
        s->host = p;
        s->host_cap = need;
    }
    int32_t *ids = s->host, *pos = ids + total;
    int64_t at = 0, longest = 0, image = 0;
    int rc = FINCH_OK;
    for (int i = 0; i < n && !rc; i++) {
        int64_t held = s->cache.len[seqs[i]];
        memcpy(ids + at, tokens[i], (size_t)n_tokens[i] * sizeof *ids);
        rc = pass_positions(s, i, seqs[i], tokens[i], n_tokens[i], images, &image, rows, pos + at, total);
        at += n_tokens[i];
        if (held + n_tokens[i] > longest) longest = held + n_tokens[i];
    }
    if (!rc && images && image != images->n_images)
        rc = finch_error(FINCH_ERR_INVALID_ARGUMENT, "%lld image(s) given, the prompts' image tokens take %lld", (long long)images->n_images,
                         (long long)image);
    if (rc) return rc;
    if ((rc = finch_arena_begin(&s->arena))) return rc;
    finch_graph_clear(g);
    g->recording = 0;
    g->want_grad = 0;
    finch_dptr d;
    if ((rc = finch_arena_alloc(&s->arena, need * sizeof(int32_t), &d))) return rc;
    if (API->write(DEV, d, s->host, need * sizeof(int32_t))) return finch_device_error(m->be, FINCH_ERR_DEVICE, "uploading tokens");
    if ((rc = finch_kv_cache_begin(&s->cache, &s->arena, n, seqs, n_tokens))) return rc;

    finch_step_ctx ctx = {m, g, n, longest, total, d, finch_dptr_none(), finch_dptr_at(d, (size_t)total * sizeof(int32_t)),
                          s->cache.cu_q, 0, &s->cache, n, ids, 0, 0, NULL};
    finch_tensor x[2];
    if ((rc = finch_model_embed(&ctx, &x[0])) || (rc = finch_graph_tensor(g, m->dtype, total, H, 0, &x[1]))) return rc;
    if (images && images->n_images) {
        finch_batch b = *images;
        b.batch = 1;
        b.seq_len = total;
        b.input_ids = ids;
        if ((rc = finch_vl_embed_images(m, g, &b, 0, &x[0]))) return rc;
    }
    finch_tensor lg;
    if ((rc = pass_to_logits(s, &ctx, x, n, total, longest, images && images->n_images, &lg))) return rc;
    if (API->read(DEV, lg.data, logits, (size_t)(n * c->vocab) * sizeof(float)))
        return finch_device_error(m->be, FINCH_ERR_DEVICE, "reading the logits");
    return FINCH_OK;
}

finch_status finch_session_append(finch_session *s, int n, const int *seqs, const int32_t *const *tokens,
                                  const int64_t *n_tokens, float *logits)
{
    return finch_session_append_images(s, n, seqs, tokens, n_tokens, NULL, logits);
}

int finch_session_append_images(finch_session *s, int n, const int *seqs, const int32_t *const *tokens, const int64_t *n_tokens,
                                const finch_batch *images, float *logits)
{
    if (!s || !seqs || !tokens || !n_tokens || !logits) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_session_append: NULL argument");
    if (n < 1 || n > s->max_seqs)
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_session_append: %d sequences (1 to %d)", n, s->max_seqs);
    int64_t total;
    int rc = check_tokens(s, n, seqs, tokens, n_tokens, &total);
    if (rc) return rc;
    if (s->weights_version != s->m->weights_version) {
        for (int q = 0; q < s->max_seqs; q++)
            if (s->cache.len[q])
                return finch_error(FINCH_ERR_STATE, "finch_session_append: the model's weights or adapter changed since the cache was filled "
                                                    "(finch_session_reset first)");
        s->weights_version = s->m->weights_version;
    }
    s->stats.passes++;
    if ((rc = run_pass(s, n, seqs, tokens, n_tokens, total, images, logits))) {
        s->cache.n_active = 0;
        return rc;
    }
    finch_kv_cache_commit(&s->cache);
    for (int i = 0; i < n; i++) {
        int q = seqs[i];
        if (s->pending_delta[q] != s->rope_delta[q] || (images && images->n_images)) {
            const finch_vision *v = s->m->vision;
            for (int64_t t = n_tokens[i] - 1; v && t >= 0; t--)
                if (tokens[i][t] == v->cfg.image_token_id) {
                    s->image_end[q] = s->cache.len[q] - n_tokens[i] + t + 1;
                    break;
                }
        }
        s->rope_delta[q] = s->pending_delta[q];
    }
    for (int i = 0; i < n; i++)
        if ((rc = append_held(&s->held[seqs[i]], tokens[i], n_tokens[i]))) {
            finch_kv_cache_truncate(&s->cache, seqs[i], (int64_t)s->held[seqs[i]].len);
            return rc;
        }
    return FINCH_OK;
}
