/* Generation with the key/value cache against full forward passes without one, on every golden model
 * (CPU, f32): greedy continuations of 32 tokens equal the argmax of finch_forward's logits at each
 * step, for the base model and with the golden adapter; batches of prompts of different lengths give
 * what each prompt gives alone; the cache's logits equal the forward pass's; the cache grows in chunks
 * and prefills in pieces without changing anything; adapters switch on a model whose session holds a
 * cache; a session continues a conversation from its cached prefix; and the errors for a prompt
 * longer than the context, an empty prompt and an invalid id.
 *     test_generate_golden [ARCH|all] [BACKEND]     (default: all, cpu; BACKEND cpu-abi1.0: the CPU
 *     backend without attention_cache_forward, exercising the fallback for older plugins) */
#include "core/runtime.h"
#include "finch/finch.h"
#include "finch/generate.h"
#include "tests/testing.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NEW_TOKENS 32
#define N_PROMPTS 3

static const char *archs[] = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "phi3", "falcon"};

static int ok(int rc, const char *what)
{
    CHECK(rc == FINCH_OK, "%s: %s (%s)", what, finch_status_name(rc), finch_last_error());
    return rc == FINCH_OK;
}

static int64_t vocab_of(finch_model *m)
{
    finch_model_info info;
    finch_model_info_get(m, &info);
    return info.vocab_size;
}

/* Logits of every position of one row through finch_forward; NULL on failure. */
static float *forward_logits(finch_model *m, const int32_t *ids, int64_t len)
{
    int64_t V = vocab_of(m);
    finch_batch b = {.batch = 1, .seq_len = len, .input_ids = ids, .labels = NULL};
    finch_step_options so = {1, 0.0f};
    finch_step_result r;
    float *lg = malloc((size_t)(len * V) * sizeof(float));
    if (!ok(finch_forward(m, &b, &so, &r), "finch_forward") || !ok(finch_model_logits(m, lg, (size_t)(len * V)), "logits")) {
        free(lg);
        return NULL;
    }
    return lg;
}

static int32_t argmax(const float *x, int64_t n)
{
    int64_t best = 0;
    for (int64_t i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return (int32_t)best;
}

/* The greedy continuation computed with full forward passes, one per token, no cache. */
static void reference_greedy(finch_model *m, const int32_t *prompt, int64_t len, int32_t *out, int64_t n_new)
{
    int64_t V = vocab_of(m);
    int32_t *seq = malloc((size_t)(len + n_new) * sizeof *seq);
    memcpy(seq, prompt, (size_t)len * sizeof *seq);
    for (int64_t t = 0; t < n_new; t++) {
        float *lg = forward_logits(m, seq, len + t);
        if (!lg) {
            out[t] = -1;
            continue;
        }
        out[t] = seq[len + t] = argmax(lg + (len + t - 1) * V, V);
        free(lg);
    }
    free(seq);
}

static finch_generate_options greedy_options(int64_t n_new)
{
    finch_generate_options o = finch_generate_options_default();
    o.sampling.greedy = 1;
    o.max_new_tokens = n_new;
    o.use_model_eos = 0;
    return o;
}

static int same_tokens(const finch_generation *g, const int32_t *ref, int64_t n)
{
    if ((int64_t)g->tokens.len != n) return 0;
    return memcmp(g->tokens.ids, ref, (size_t)n * sizeof *ref) == 0;
}

static void fill_prompt(int32_t *p, int64_t len, int64_t vocab, unsigned seed)
{
    uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
    for (int64_t i = 0; i < len; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p[i] = (int32_t)(3 + x % (uint64_t)(vocab - 3));
    }
}

/* Greedy generation (batched and alone) against the reference, for the model as it is now. */
static void check_greedy(finch_model *m, const char *label, int32_t *const *prompts, const int64_t *lens)
{
    int32_t ref[N_PROMPTS][NEW_TOKENS];
    for (int i = 0; i < N_PROMPTS; i++) reference_greedy(m, prompts[i], lens[i], ref[i], NEW_TOKENS);
    finch_generate_options o = greedy_options(NEW_TOKENS);
    finch_generation batch[N_PROMPTS];
    if (ok(finch_generate(m, N_PROMPTS, (const int32_t *const *)prompts, lens, &o, batch), "finch_generate (batch)")) {
        for (int i = 0; i < N_PROMPTS; i++) {
            CHECK(same_tokens(&batch[i], ref[i], NEW_TOKENS), "%s: batched prompt %d (length %lld) differs from the no-cache argmax", label, i,
                  (long long)lens[i]);
            CHECK(batch[i].finish == FINCH_FINISH_LENGTH && batch[i].text == NULL, "%s: finish %d", label, batch[i].finish);
            finch_generation_free(&batch[i]);
        }
    }
    for (int i = 0; i < N_PROMPTS; i++) {
        finch_generation one;
        if (ok(finch_generate(m, 1, (const int32_t *const *)&prompts[i], &lens[i], &o, &one), "finch_generate (one)")) {
            CHECK(same_tokens(&one, ref[i], NEW_TOKENS), "%s: prompt %d alone differs from the no-cache argmax", label, i);
            finch_generation_free(&one);
        }
    }
}

/* The session's logits for a prompt fed in pieces (growing the cache past a chunk) equal the forward pass's. */
static void check_logits_in_pieces(finch_model *m, const char *arch, int64_t total)
{
    int64_t V = vocab_of(m);
    int32_t *ids = malloc((size_t)total * sizeof *ids);
    fill_prompt(ids, total, V, 99);
    float *ref = forward_logits(m, ids, total), *got = malloc((size_t)V * sizeof(float));
    finch_session *s = NULL;
    if (ref && ok(finch_session_create(m, 2, &s), "finch_session_create")) {
        int64_t pieces[] = {total / 3, 1, total - total / 3 - 2, 1}, at = 0;
        double worst = 0;
        for (int p = 0; p < 4; p++) {
            int seq = 1;
            const int32_t *t = ids + at;
            if (!ok(finch_session_append(s, 1, &seq, &t, &pieces[p], got), "finch_session_append")) break;
            at += pieces[p];
            worst = fmax(worst, testing_rel_err(got, ref + (at - 1) * V, (size_t)V));
        }
        CHECK(at == total && finch_session_length(s, 1) == total && finch_session_length(s, 0) == 0, "%s: session length", arch);
        CHECK(worst < 1e-5, "%s: logits through the cache in pieces (%lld tokens): rel err %.3g", arch, (long long)total, worst);
        printf("  %-8s cache logits over %lld tokens in 4 pieces: rel err %.2e\n", arch, (long long)total, worst);
    }
    finch_session_free(s);
    free(ids);
    free(ref);
    free(got);
}

/* Decode passes one token at a time equal the forward pass's logits; on a backend that records
 * (capture_begin), every one but the first (run directly, to settle the arena) is launched from one
 * recording, the recorded one included. */
static void check_decode_replays(finch_model *m, const char *arch, int records)
{
    const int64_t prompt = 5, steps = 7, total = prompt + steps;
    int64_t V = vocab_of(m);
    int32_t ids[12];
    fill_prompt(ids, total, V, 17);
    float *ref = forward_logits(m, ids, total), *got = malloc((size_t)V * sizeof(float));
    finch_session *s = NULL;
    if (ref && ok(finch_session_create(m, 1, &s), "finch_session_create")) {
        double worst = 0;
        int seq = 0;
        for (int64_t at = 0, n = prompt; at < total; at += n, n = 1) {
            const int32_t *t = ids + at;
            if (!ok(finch_session_append(s, 1, &seq, &t, &n, got), "finch_session_append")) break;
            worst = fmax(worst, testing_rel_err(got, ref + (at + n - 1) * V, (size_t)V));
        }
        finch_session_stats st;
        finch_session_stats_get(s, &st);
        CHECK(worst < 1e-5, "%s: decode logits token by token: rel err %.3g", arch, worst);
        CHECK(st.passes == 1 + steps && st.replayed == (records ? steps - 1 : 0), "%s: %lld passes, %lld replayed (recording: %d)", arch,
              (long long)st.passes, (long long)st.replayed, records);
        printf("  %-8s decode token by token: rel err %.2e, %lld of %lld passes replayed\n", arch, worst, (long long)st.replayed,
               (long long)st.passes);
    }
    finch_session_free(s);
    free(ref);
    free(got);
}

/* A session continues: generate, then prompt with prompt + output + more; equals a fresh generation. */
static void check_session_continues(finch_model *m, const char *arch, int32_t *prompt, int64_t len)
{
    finch_session *s = NULL;
    if (!ok(finch_session_create(m, 1, &s), "finch_session_create")) return;
    finch_generate_options o = greedy_options(8);
    finch_generation g1, g2, fresh;
    if (ok(finch_session_generate(s, 1, (const int32_t *const *)&prompt, &len, &o, &g1), "session turn 1")) {
        int64_t len2 = len + (int64_t)g1.tokens.len + 3;
        int32_t *p2 = malloc((size_t)len2 * sizeof *p2);
        memcpy(p2, prompt, (size_t)len * sizeof *p2);
        memcpy(p2 + len, g1.tokens.ids, g1.tokens.len * sizeof *p2);
        fill_prompt(p2 + len + g1.tokens.len, 3, vocab_of(m), 5);
        CHECK(finch_session_length(s, 0) == len + 7, "%s: after turn 1 the cache holds %lld tokens", arch, (long long)finch_session_length(s, 0));
        if (ok(finch_session_generate(s, 1, (const int32_t *const *)&p2, &len2, &o, &g2), "session turn 2") &&
            ok(finch_generate(m, 1, (const int32_t *const *)&p2, &len2, &o, &fresh), "fresh turn 2")) {
            CHECK(g2.tokens.len == fresh.tokens.len && !memcmp(g2.tokens.ids, fresh.tokens.ids, fresh.tokens.len * sizeof(int32_t)),
                  "%s: a continued session differs from a fresh generation", arch);
            finch_generation_free(&fresh);
            finch_generation_free(&g2);
        }
        free(p2);
        finch_generation_free(&g1);
    }
    finch_session_free(s);
}

/* max_position_embeddings from dir/config.json. */
static int64_t context_of(const char *dir)
{
    char path[1300], buf[8192];
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "rb");
    size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
    if (f) fclose(f);
    buf[n] = 0;
    const char *at = strstr(buf, "\"max_position_embeddings\"");
    return at ? atoll(strchr(at, ':') + 1) : 0;
}

static void check_errors(finch_model *m, const char *arch, const char *dir)
{
    finch_model_info info;
    finch_model_info_get(m, &info);
    finch_generate_options o = greedy_options(4);
    finch_generation g;
    int64_t ctx = context_of(dir);
    CHECK(ctx > 8, "%s: max_position_embeddings not found", dir);
    if (ctx <= 8) return;
    int32_t *p = calloc((size_t)(ctx + 1), sizeof *p);
    int64_t len = ctx + 1;
    int rc = finch_generate(m, 1, (const int32_t *const *)&p, &len, &o, &g);
    CHECK(rc == FINCH_ERR_INVALID_ARGUMENT && strstr(finch_last_error(), "context"), "%s: a prompt longer than the context: %s (%s)", arch,
          finch_status_name(rc), finch_last_error());
    /* Exactly filling the context: tokens until the last position is used, then FINCH_FINISH_CONTEXT. */
    len = ctx - 2;
    if (ok(finch_generate(m, 1, (const int32_t *const *)&p, &len, &o, &g), "generate at the context's end")) {
        CHECK(g.finish == FINCH_FINISH_CONTEXT && g.tokens.len == 3, "%s: at the context's end: finish %d after %zu tokens", arch, g.finish,
              g.tokens.len);
        finch_generation_free(&g);
    }
    len = 0;
    rc = finch_generate(m, 1, (const int32_t *const *)&p, &len, &o, &g);
    CHECK(rc == FINCH_ERR_INVALID_ARGUMENT && strstr(finch_last_error(), "empty"), "%s: an empty prompt: %s (%s)", arch, finch_status_name(rc),
          finch_last_error());
    len = 4;
    p[2] = (int32_t)info.vocab_size;
    rc = finch_generate(m, 1, (const int32_t *const *)&p, &len, &o, &g);
    CHECK(rc == FINCH_ERR_INVALID_ARGUMENT && strstr(finch_last_error(), "vocabulary"), "%s: an invalid id: %s (%s)", arch,
          finch_status_name(rc), finch_last_error());
    p[2] = -1;
    rc = finch_generate(m, 1, (const int32_t *const *)&p, &len, &o, &g);
    CHECK(rc == FINCH_ERR_INVALID_ARGUMENT, "%s: a negative id accepted", arch);
    free(p);
}

static void run_arch(finch_runtime *rt, const char *arch)
{
    char dir[1200], adapter[1200];
    snprintf(dir, sizeof dir, "%s/golden/%s/model", testing_shared_dir(), arch);
    snprintf(adapter, sizeof adapter, "%s/golden/%s/adapter", testing_shared_dir(), arch);
    finch_model *m = NULL;
    if (!ok(finch_model_load(rt, dir, NULL, &m), dir)) return;
    int64_t V = vocab_of(m);
    int64_t lens[N_PROMPTS] = {6, 1, 13};
    int32_t *prompts[N_PROMPTS];
    for (int i = 0; i < N_PROMPTS; i++) {
        prompts[i] = malloc((size_t)lens[i] * sizeof(int32_t));
        fill_prompt(prompts[i], lens[i], V, (unsigned)(i + 1));
    }
    char label[128];
    snprintf(label, sizeof label, "%s base", arch);
    check_greedy(m, label, prompts, lens);
    int64_t ctx = context_of(dir);
    check_logits_in_pieces(m, arch, ctx > 300 ? 300 : ctx - 1);
    check_decode_replays(m, arch, rt->backend.api->capture_begin != NULL);
    check_session_continues(m, arch, prompts[0], lens[0]);
    check_errors(m, arch, dir);

    /* A session made (and filled) with the base model; the adapter is loaded under it. */
    finch_session *s = NULL;
    finch_generate_options o = greedy_options(NEW_TOKENS);
    finch_generation g;
    int32_t base_ref[NEW_TOKENS], lora_ref[NEW_TOKENS];
    reference_greedy(m, prompts[0], lens[0], base_ref, NEW_TOKENS);
    float *base_logits = forward_logits(m, prompts[0], lens[0]);
    if (ok(finch_session_create(m, 1, &s), "finch_session_create") &&
        ok(finch_session_generate(s, 1, (const int32_t *const *)&prompts[0], &lens[0], &o, &g), "session, base")) {
        CHECK(same_tokens(&g, base_ref, NEW_TOKENS), "%s: session with the base model", arch);
        finch_generation_free(&g);
    }
    if (ok(finch_lora_load(m, adapter), "finch_lora_load")) {
        snprintf(label, sizeof label, "%s adapter", arch);
        check_greedy(m, label, prompts, lens);
        reference_greedy(m, prompts[0], lens[0], lora_ref, NEW_TOKENS);
        float *lora_logits = forward_logits(m, prompts[0], lens[0]);
        CHECK(lora_logits && base_logits && testing_rel_err(lora_logits, base_logits, (size_t)(lens[0] * V)) > 1e-3,
              "%s: the adapter changes nothing (the test would not notice stale keys)", arch);
        free(lora_logits);
        if (s && ok(finch_session_generate(s, 1, (const int32_t *const *)&prompts[0], &lens[0], &o, &g), "session, adapter")) {
            CHECK(same_tokens(&g, lora_ref, NEW_TOKENS), "%s: a session filled before finch_lora_load uses stale keys", arch);
            finch_generation_free(&g);
        }
        int seq = 0;
        float *lg = malloc((size_t)V * sizeof(float));
        const int32_t *t = prompts[1];
        CHECK(s && finch_session_append(s, 1, &seq, &t, &lens[1], lg) == FINCH_OK, "%s: append after a generation", arch);
        if (ok(finch_lora_unload(m), "finch_lora_unload") && s) {
            CHECK(finch_session_append(s, 1, &seq, &t, &lens[1], lg) == FINCH_ERR_STATE, "%s: appending to a stale cache must fail", arch);
            if (ok(finch_session_generate(s, 1, (const int32_t *const *)&prompts[0], &lens[0], &o, &g), "session, unloaded")) {
                CHECK(same_tokens(&g, base_ref, NEW_TOKENS), "%s: after finch_lora_unload the session is not the base model", arch);
                finch_generation_free(&g);
            }
        }
        free(lg);
    }
    finch_session_free(s);
    free(base_logits);
    for (int i = 0; i < N_PROMPTS; i++) free(prompts[i]);
    finch_model_free(m);
}

/* test_generate_golden [ARCH|all] [BACKEND] */
int main(int argc, char **argv)
{
    const char *only = argc > 1 && strcmp(argv[1], "all") ? argv[1] : NULL, *backend = argc > 2 ? argv[2] : "cpu";
    /* "cpu-abi1.0": the CPU backend without attention_cache_forward, as a plugin built for ABI 1.0
     * looks: generation falls back to attention_forward over each sequence's whole key range. */
    int legacy = !strcmp(backend, "cpu-abi1.0");
    finch_runtime *rt = NULL;
    if (finch_runtime_open(legacy ? "cpu" : backend, &rt) != FINCH_OK) {
        printf("skipped: backend %s unavailable: %s\n", backend, finch_last_error());
        return 77;
    }
    static finch_plugin_api without_cache;
    if (legacy) {
        without_cache = *rt->backend.api;
        without_cache.attention_cache_forward = NULL;
        without_cache.copy_rows = NULL; /* appends by copy_2d, no recorded passes */
        rt->backend.api = &without_cache;
    }
    for (size_t i = 0; i < sizeof archs / sizeof archs[0]; i++) {
        if (only && strcmp(only, archs[i])) continue;
        int before = testing_failed;
        run_arch(rt, archs[i]);
        printf("%-8s %s on %s\n", archs[i], testing_failed == before ? "ok" : "FAILED", backend);
    }
    finch_runtime_close(rt);
    return testing_finish();
}
