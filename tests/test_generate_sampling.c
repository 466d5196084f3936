/* Sampling: on crafted distributions, top-k / top-p / min-p never emit an excluded token over many
 * draws and draw the rest in proportion; penalties change the logits as defined; greedy breaks ties
 * to the lowest id; a seed gives the same tokens (also through finch_generate on a golden model);
 * bad settings and bad logits are errors. */
#include "finch/finch.h"
#include "finch/generate.h"
#include "tests/testing.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DRAWS 6000

static int ok(int rc, const char *what)
{
    CHECK(rc == FINCH_OK, "%s: %s (%s)", what, finch_status_name(rc), finch_last_error());
    return rc == FINCH_OK;
}

/* Logits whose softmax is p (p need not sum to 1; zeros become -inf). */
static void logits_of(const double *p, int n, float *z)
{
    for (int i = 0; i < n; i++) z[i] = p[i] > 0 ? (float)log(p[i]) : -INFINITY;
}

/* Draws DRAWS tokens from the distribution p with s; checks each is allowed and the frequencies
 * follow p renormalised over the allowed set. */
static void check_draws(const char *label, const finch_sampling *s, const double *p, int n, const int *allowed)
{
    finch_sampler *sp = NULL;
    if (!ok(finch_sampler_create(s, n, 0, &sp), label)) return;
    float *z = malloc(sizeof(float) * (size_t)n), *probs = malloc(sizeof(float) * (size_t)n);
    int *count = calloc((size_t)n, sizeof *count), bad = 0;
    double mass = 0;
    for (int i = 0; i < n; i++) mass += allowed[i] ? p[i] : 0;
    for (int d = 0; d < DRAWS; d++) {
        logits_of(p, n, z);
        int32_t t = -1;
        if (!ok(finch_sampler_next(sp, z, &t), label)) break;
        if (t < 0 || t >= n || !allowed[t]) bad++;
        else count[t]++;
        if (d == 0 && ok(finch_sampler_last_probs(sp, probs, n), "last_probs")) {
            double worst = 0;
            for (int i = 0; i < n; i++) worst = fmax(worst, fabs(probs[i] - (allowed[i] ? p[i] / mass : 0)));
            CHECK(worst < 1e-5, "%s: the drawn-from distribution is off by %.3g", label, worst);
        }
    }
    CHECK(bad == 0, "%s: %d of %d draws were excluded tokens", label, bad, DRAWS);
    double worst = 0;
    for (int i = 0; i < n; i++)
        if (allowed[i]) worst = fmax(worst, fabs(count[i] / (double)DRAWS - p[i] / mass));
    CHECK(worst < 0.03, "%s: frequencies off by %.3f", label, worst);
    free(z);
    free(probs);
    free(count);
    finch_sampler_free(sp);
}

static void filters(void)
{
    /* p sums to 1 over 5 likely tokens plus 3 unlikely ones and one impossible (-inf). */
    double p[9] = {0.40, 0.05, 0.20, 0.15, 0.10, 0.004, 0.003, 0.0, 0.093};
    int n = 9;
    finch_sampling s = finch_sampling_default();
    s.seed = 1;
    int all[9] = {1, 1, 1, 1, 1, 1, 1, 0, 1};
    check_draws("plain", &s, p, n, all);

    s.top_k = 3; /* 0.40, 0.20, 0.15 */
    int k3[9] = {1, 0, 1, 1, 0, 0, 0, 0, 0};
    check_draws("top_k 3", &s, p, n, k3);
    s.top_k = 0;

    /* Descending: 0.40, 0.20, 0.15, 0.10, 0.093, ... A token stays while the mass before it is below top_p. */
    s.top_p = 0.59f; /* before: 0, 0.40 -> {0, 2} */
    int p59[9] = {1, 0, 1, 0, 0, 0, 0, 0, 0};
    check_draws("top_p 0.59", &s, p, n, p59);
    s.top_p = 0.7f; /* before: 0, .4, .6 -> {0, 2, 3} */
    int p70[9] = {1, 0, 1, 1, 0, 0, 0, 0, 0};
    check_draws("top_p 0.7", &s, p, n, p70);
    s.top_p = 0.05f; /* only the most likely */
    int p05[9] = {1, 0, 0, 0, 0, 0, 0, 0, 0};
    check_draws("top_p 0.05", &s, p, n, p05);
    s.top_p = 1.0f;

    s.min_p = 0.24f; /* >= 0.096: 0.40, 0.20, 0.15, 0.10 */
    int m24[9] = {1, 0, 1, 1, 1, 0, 0, 0, 0};
    check_draws("min_p 0.24", &s, p, n, m24);

    s.top_k = 3; /* top_k first, then top_p over the renormalised three, then min_p */
    s.top_p = 0.6f; /* renormalised: .533, .267, .2 -> before 0, .533 -> {0, 2} */
    s.min_p = 0.1f;
    int mix[9] = {1, 0, 1, 0, 0, 0, 0, 0, 0};
    check_draws("top_k 3 + top_p 0.6 + min_p 0.1", &s, p, n, mix);

    /* Temperature reshapes: with T = 0.5 the weights are p^2. */
    finch_sampling t = finch_sampling_default();
    t.temperature = 0.5f;
    double p2[9];
    for (int i = 0; i < n; i++) p2[i] = p[i] * p[i];
    finch_sampler *sp = NULL;
    float z[9], probs[9];
    int32_t tok;
    if (ok(finch_sampler_create(&t, n, 0, &sp), "create")) {
        logits_of(p, n, z);
        ok(finch_sampler_next(sp, z, &tok), "next");
        ok(finch_sampler_last_probs(sp, probs, n), "probs");
        double sum = 0, worst = 0;
        for (int i = 0; i < n; i++) sum += p2[i];
        for (int i = 0; i < n; i++) worst = fmax(worst, fabs(probs[i] - p2[i] / sum));
        CHECK(worst < 1e-5, "temperature 0.5: off by %.3g", worst);
        finch_sampler_free(sp);
    }

    /* A large vocabulary with a long flat tail: top_p's pre-filter must not drop nucleus tokens. */
    int V = 50000;
    double *big = malloc(sizeof(double) * (size_t)V);
    int *allow = calloc((size_t)V, sizeof *allow);
    for (int i = 0; i < V; i++) big[i] = 0.5 / (V - 10);
    for (int i = 0; i < 10; i++) big[i * 4999] = 0.05;
    finch_sampling b = finch_sampling_default();
    b.top_p = 0.9f;
    b.seed = 3;
    /* Ten tokens of 0.05 (0.5 together), then the tail in id order until the mass before reaches 0.9. */
    double before = 0;
    for (int i = 0; i < 10; i++) {
        allow[i * 4999] = 1;
        before += 0.05;
    }
    for (int i = 0; i < V && before < 0.9; i++)
        if (!allow[i]) {
            allow[i] = 1;
            before += big[i];
        }
    finch_sampler *bs = NULL;
    float *bz = malloc(sizeof(float) * (size_t)V), *bp = malloc(sizeof(float) * (size_t)V);
    if (ok(finch_sampler_create(&b, V, 0, &bs), "create big")) {
        int bad = 0, diff = 0;
        for (int d = 0; d < 100; d++) {
            logits_of(big, V, bz);
            ok(finch_sampler_next(bs, bz, &tok), "next big");
            bad += !allow[tok];
        }
        ok(finch_sampler_last_probs(bs, bp, V), "probs big");
        for (int i = 0; i < V; i++) diff += (bp[i] > 0) != allow[i];
        CHECK(bad == 0 && abs(diff) <= 2, "large vocabulary top_p: %d excluded draws, %d tokens differ from the nucleus", bad, diff);
        finch_sampler_free(bs);
    }
    free(big);
    free(allow);
    free(bz);
    free(bp);
}

static void greedy_and_penalties(void)
{
    finch_sampling g = finch_sampling_default();
    g.greedy = 1;
    finch_sampler *sp = NULL;
    int32_t tok;
    float z[4] = {1.0f, 3.0f, 3.0f, -INFINITY};
    if (ok(finch_sampler_create(&g, 4, 0, &sp), "create")) {
        ok(finch_sampler_next(sp, z, &tok), "next");
        CHECK(tok == 1, "greedy tie: %d, not the lowest id 1", tok);
        finch_sampler_free(sp);
    }
    finch_sampling t0 = finch_sampling_default();
    t0.temperature = 0;
    if (ok(finch_sampler_create(&t0, 4, 0, &sp), "create")) {
        float z2[4] = {0.5f, -1.0f, 2.0f, 1.9f};
        ok(finch_sampler_next(sp, z2, &tok), "next");
        CHECK(tok == 2, "temperature 0 is greedy: %d", tok);
        finch_sampler_free(sp);
    }

    /* Repetition penalty (Hugging Face): z > 0 -> z / p, z <= 0 -> z * p, on context and output tokens. */
    finch_sampling r = finch_sampling_default();
    r.repetition_penalty = 2.0f;
    float probs[4];
    if (ok(finch_sampler_create(&r, 4, 0, &sp), "create")) {
        int32_t ctx[2] = {0, 1};
        ok(finch_sampler_add_context(sp, ctx, 2), "context");
        float z3[4] = {2.0f, -2.0f, 1.0f, 0.5f};
        ok(finch_sampler_next(sp, z3, &tok), "next");
        CHECK(z3[0] == 1.0f && z3[1] == -4.0f && z3[2] == 1.0f && z3[3] == 0.5f, "repetition penalty: %g %g %g %g", z3[0], z3[1], z3[2],
              z3[3]);
        ok(finch_sampler_last_probs(sp, probs, 4), "probs");
        double e[4] = {exp(1.0), exp(-4.0), exp(1.0), exp(0.5)}, s = e[0] + e[1] + e[2] + e[3], worst = 0;
        for (int i = 0; i < 4; i++) worst = fmax(worst, fabs(probs[i] - e[i] / s));
        CHECK(worst < 1e-6, "repetition penalty distribution off by %.3g", worst);
        CHECK(finch_sampler_add_context(sp, (int32_t[]){4}, 1) == FINCH_ERR_INVALID_ARGUMENT, "context id outside the vocabulary accepted");
        finch_sampler_free(sp);
    }

    /* Frequency and presence penalties: z -= f * count + presence for generated tokens only. */
    finch_sampling f = finch_sampling_default();
    f.greedy = 1;
    f.frequency_penalty = 0.3f;
    f.presence_penalty = 0.1f;
    if (ok(finch_sampler_create(&f, 3, 0, &sp), "create")) {
        ok(finch_sampler_add_context(sp, (int32_t[]){1}, 1), "context"); /* context does not count */
        int32_t seq[3];
        for (int i = 0; i < 3; i++) {
            float zz[3] = {1.0f, 0.95f, 0.2f};
            ok(finch_sampler_next(sp, zz, &seq[i]), "next");
            if (i == 2) CHECK(fabsf(zz[0] - (1.0f - 0.3f - 0.1f)) < 1e-6 && fabsf(zz[1] - (0.95f - 0.3f - 0.1f)) < 1e-6 && zz[2] == 0.2f,
                              "penalised logits %g %g %g", zz[0], zz[1], zz[2]);
        }
        /* 1.0 vs 0.95: token 0; then 0.6 vs 0.95: token 1; then 0.6 vs 0.55: token 0. */
        CHECK(seq[0] == 0 && seq[1] == 1 && seq[2] == 0, "frequency penalty sequence %d %d %d", seq[0], seq[1], seq[2]);
        finch_sampler_free(sp);
    }
}

static void seeds_and_errors(void)
{
    finch_sampling s = finch_sampling_default();
    s.seed = 42;
    s.temperature = 1.5f;
    int n = 64;
    double p[64];
    for (int i = 0; i < n; i++) p[i] = 1.0 + (i % 7);
    int32_t a[200], b[200], c[200], d[200];
    finch_sampler *s1 = NULL, *s2 = NULL, *s3 = NULL, *s4 = NULL;
    finch_sampling other = s;
    other.seed = 43;
    ok(finch_sampler_create(&s, n, 0, &s1), "create");
    ok(finch_sampler_create(&s, n, 0, &s2), "create");
    ok(finch_sampler_create(&other, n, 0, &s3), "create");
    ok(finch_sampler_create(&s, n, 1, &s4), "create");
    float z[64];
    for (int i = 0; i < 200 && s1 && s2 && s3 && s4; i++) {
        logits_of(p, n, z); finch_sampler_next(s1, z, &a[i]);
        logits_of(p, n, z); finch_sampler_next(s2, z, &b[i]);
        logits_of(p, n, z); finch_sampler_next(s3, z, &c[i]);
        logits_of(p, n, z); finch_sampler_next(s4, z, &d[i]);
    }
    CHECK(!memcmp(a, b, sizeof a), "the same seed gave different tokens");
    CHECK(memcmp(a, c, sizeof a), "different seeds gave the same 200 tokens");
    CHECK(memcmp(a, d, sizeof a), "different streams gave the same 200 tokens");
    finch_sampler_free(s1);
    finch_sampler_free(s2);
    finch_sampler_free(s3);
    finch_sampler_free(s4);

    finch_sampler *sp = NULL;
    finch_sampling bad = finch_sampling_default();
    bad.top_p = 0;
    CHECK(finch_sampler_create(&bad, 4, 0, &sp) == FINCH_ERR_INVALID_ARGUMENT && !sp, "top_p 0 accepted");
    bad = finch_sampling_default();
    bad.temperature = -1;
    CHECK(finch_sampler_create(&bad, 4, 0, &sp) == FINCH_ERR_INVALID_ARGUMENT, "temperature -1 accepted");
    bad = finch_sampling_default();
    bad.top_k = -2;
    CHECK(finch_sampler_create(&bad, 4, 0, &sp) == FINCH_ERR_INVALID_ARGUMENT, "top_k -2 accepted");
    bad = finch_sampling_default();
    bad.repetition_penalty = 0;
    CHECK(finch_sampler_create(&bad, 4, 0, &sp) == FINCH_ERR_INVALID_ARGUMENT, "repetition_penalty 0 accepted");
    bad = finch_sampling_default();
    bad.min_p = 1.5f;
    CHECK(finch_sampler_create(&bad, 4, 0, &sp) == FINCH_ERR_INVALID_ARGUMENT, "min_p 1.5 accepted");
    if (ok(finch_sampler_create(&s, 4, 0, &sp), "create")) {
        float probs[4];
        CHECK(finch_sampler_last_probs(sp, probs, 4) == FINCH_ERR_STATE, "last_probs before any draw");
        float zn[4] = {0, NAN, 1, 2}, zi[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
        int32_t t;
        CHECK(finch_sampler_next(sp, zn, &t) == FINCH_ERR_INVALID_ARGUMENT, "NaN logits accepted");
        CHECK(finch_sampler_next(sp, zi, &t) == FINCH_ERR_INVALID_ARGUMENT, "all -inf logits accepted");
        finch_sampler_free(sp);
    }
}

/* Through the model: the same seed gives the same continuation; another seed (almost surely) not. */
static void seeded_generation(void)
{
    char dir[1200];
    snprintf(dir, sizeof dir, "%s/golden/qwen2/model", testing_shared_dir());
    finch_runtime *rt = NULL;
    finch_model *m = NULL;
    if (!ok(finch_runtime_open("cpu", &rt), "runtime") || !ok(finch_model_load(rt, dir, NULL, &m), dir)) {
        finch_runtime_close(rt);
        return;
    }
    int32_t p0[5] = {5, 17, 99, 3, 250}, p1[2] = {7, 8};
    const int32_t *prompts[2] = {p0, p1};
    int64_t lens[2] = {5, 2};
    finch_generate_options o = finch_generate_options_default();
    o.max_new_tokens = 24;
    o.use_model_eos = 0;
    o.sampling.temperature = 1.3f;
    o.sampling.top_k = 50;
    o.sampling.top_p = 0.95f;
    o.sampling.seed = 1234;
    finch_generation a[2], b[2], c[2];
    if (ok(finch_generate(m, 2, prompts, lens, &o, a), "generate a") && ok(finch_generate(m, 2, prompts, lens, &o, b), "generate b")) {
        for (int i = 0; i < 2; i++)
            CHECK(a[i].tokens.len == 24 && b[i].tokens.len == 24 && !memcmp(a[i].tokens.ids, b[i].tokens.ids, 24 * sizeof(int32_t)),
                  "seeded generation %d differs between runs", i);
        o.sampling.seed = 1235;
        if (ok(finch_generate(m, 2, prompts, lens, &o, c), "generate c")) {
            CHECK(memcmp(a[0].tokens.ids, c[0].tokens.ids, 24 * sizeof(int32_t)), "another seed gave the same 24 tokens");
            for (int i = 0; i < 2; i++) finch_generation_free(&c[i]);
        }
        for (int i = 0; i < 2; i++) {
            finch_generation_free(&a[i]);
            finch_generation_free(&b[i]);
        }
    }
    finch_model_free(m);
    finch_runtime_close(rt);
}

int main(void)
{
    filters();
    greedy_and_penalties();
    seeds_and_errors();
    seeded_generation();
    return testing_finish();
}
