/* Choosing the next token from logits: penalties, greedy, temperature, top-k, top-p, min-p, and a
 * seeded draw (xoshiro256** seeded through splitmix64, so a seed gives the same tokens everywhere).
 *
 * Candidates are narrowed without sorting the whole vocabulary: top-k keeps a heap of k, and top-p
 * sorts only tokens at least (1 - top_p) / n times the candidates' mass, which always contain the
 * nucleus (the tokens below that bound hold less than 1 - top_p of the mass together). */
#include "core/error.h"
#include "finch/generate.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct finch_scored {
    float p;
    int32_t id;
} finch_scored;

struct finch_sampler {
    finch_sampling cfg;
    int64_t vocab;
    uint64_t rng[4];
    int32_t *count;         /* [vocab]: times generated */
    unsigned char *seen;    /* [vocab]: in the context or generated */
    float *p;               /* [vocab]: unnormalised probabilities of the last draw */
    int32_t *cand;          /* [vocab]: candidate ids */
    finch_scored *sorted;   /* [vocab]: scratch for top-p */
    int64_t n_cand;
    double mass;            /* sum of p over the candidates */
    int32_t last;           /* the last token (greedy: its probability is 1) */
    int last_greedy;
};

finch_sampling finch_sampling_default(void)
{
    finch_sampling s;
    memset(&s, 0, sizeof s);
    s.temperature = 1.0f;
    s.top_p = 1.0f;
    s.repetition_penalty = 1.0f;
    return s;
}

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t xoshiro(uint64_t *s)
{
    uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return r;
}

/* Uniform in [0, 1) with 53 random bits. */
static double uniform(finch_sampler *sp) { return (double)(xoshiro(sp->rng) >> 11) * (1.0 / 9007199254740992.0); }

static int check_config(const finch_sampling *s)
{
    if (!(s->temperature >= 0) || !isfinite(s->temperature))
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "sampling: temperature %g must be >= 0", s->temperature);
    if (s->top_k < 0) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "sampling: top_k %d must be >= 0", s->top_k);
    if (!(s->top_p > 0 && s->top_p <= 1))
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "sampling: top_p %g must be in (0, 1]", s->top_p);
    if (!(s->min_p >= 0 && s->min_p <= 1))
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "sampling: min_p %g must be in [0, 1]", s->min_p);
    if (!(s->repetition_penalty > 0) || !isfinite(s->repetition_penalty))
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "sampling: repetition_penalty %g must be > 0", s->repetition_penalty);
    if (!isfinite(s->frequency_penalty) || !isfinite(s->presence_penalty))
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "sampling: penalties must be finite");
    return FINCH_OK;
}

finch_status finch_sampler_create(const finch_sampling *s, int64_t vocab, uint64_t stream, finch_sampler **out)
{
    if (!s || !out) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_sampler_create: NULL argument");
    *out = NULL;
    if (vocab < 1 || vocab > INT32_MAX) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_sampler_create: vocab %lld", (long long)vocab);
    int rc = check_config(s);
    if (rc) return rc;
    finch_sampler *sp = calloc(1, sizeof *sp);
    if (sp) {
        sp->count = calloc((size_t)vocab, sizeof *sp->count);
        sp->seen = calloc((size_t)vocab, 1);
        sp->p = calloc((size_t)vocab, sizeof *sp->p);
        sp->cand = calloc((size_t)vocab, sizeof *sp->cand);
        sp->sorted = calloc((size_t)vocab, sizeof *sp->sorted);
    }
    if (!sp || !sp->count || !sp->seen || !sp->p || !sp->cand || !sp->sorted) {
        finch_sampler_free(sp);
        return finch_error(FINCH_ERR_OUT_OF_MEMORY, "sampler: out of host memory");
    }
    sp->cfg = *s;
    sp->vocab = vocab;
    uint64_t x = s->seed ^ splitmix64(&(uint64_t){stream * 0xD1B54A32D192ED03ull + 1});
    for (int i = 0; i < 4; i++) sp->rng[i] = splitmix64(&x);
    sp->last = -1;
    *out = sp;
    return FINCH_OK;
}

void finch_sampler_free(finch_sampler *sp)
{
    if (!sp) return;
    free(sp->count);
    free(sp->seen);
    free(sp->p);
    free(sp->cand);
    free(sp->sorted);
    free(sp);
}

finch_status finch_sampler_add_context(finch_sampler *sp, const int32_t *ids, size_t n)
{
    if (!sp || (n && !ids)) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_sampler_add_context: NULL argument");
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= sp->vocab)
            return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_sampler_add_context: id %d at %zu is outside [0, %lld)", ids[i], i,
                               (long long)sp->vocab);
        sp->seen[ids[i]] = 1;
    }
    return FINCH_OK;
}

static void apply_penalties(const finch_sampler *sp, float *z)
{
    const finch_sampling *c = &sp->cfg;
    int rep = c->repetition_penalty != 1.0f, freq = c->frequency_penalty != 0 || c->presence_penalty != 0;
    if (!rep && !freq) return;
    for (int64_t i = 0; i < sp->vocab; i++) {
        if (rep && sp->seen[i]) z[i] = z[i] > 0 ? z[i] / c->repetition_penalty : z[i] * c->repetition_penalty;
        if (freq && sp->count[i]) z[i] -= c->frequency_penalty * (float)sp->count[i] + c->presence_penalty;
    }
}

/* Candidate order: more likely first, then the lower id. */
static int before(const float *p, int32_t a, int32_t b) { return p[a] > p[b] || (p[a] == p[b] && a < b); }

static int by_probability(const void *x, const void *y)
{
    const finch_scored *a = x, *b = y;
    if (a->p != b->p) return a->p > b->p ? -1 : 1;
    return (a->id > b->id) - (a->id < b->id);
}

/* Keeps the k most likely candidates: a min-heap (least likely at the root) over the candidates. */
static void keep_top_k(finch_sampler *sp, int64_t k)
{
    int32_t *h = sp->cand;
    const float *p = sp->p;
    int64_t n = sp->n_cand, size = 0;
    for (int64_t i = 0; i < n; i++) {
        int32_t t = h[i];
        if (size == k && !before(p, t, h[0])) continue;
        int64_t at;
        if (size < k) {
            at = size++;
            while (at > 0 && before(p, h[(at - 1) / 2], t)) { /* sift up: parents are less likely */
                h[at] = h[(at - 1) / 2];
                at = (at - 1) / 2;
            }
        } else {
            at = 0;
            for (;;) { /* replace the root, sift down */
                int64_t c = 2 * at + 1;
                if (c >= size) break;
                if (c + 1 < size && before(p, h[c], h[c + 1])) c++;
                if (!before(p, t, h[c])) break;
                h[at] = h[c];
                at = c;
            }
        }
        h[at] = t;
    }
    sp->n_cand = size;
}

static double candidates_mass(const finch_sampler *sp)
{
    double s = 0;
    for (int64_t i = 0; i < sp->n_cand; i++) s += sp->p[sp->cand[i]];
    return s;
}

static void keep_nucleus(finch_sampler *sp, double top_p)
{
    double mass = candidates_mass(sp), bound = (1.0 - top_p) * mass / (double)sp->n_cand;
    int64_t m = 0;
    for (int64_t i = 0; i < sp->n_cand; i++) {
        int32_t t = sp->cand[i];
        if (sp->p[t] >= bound) sp->sorted[m++] = (finch_scored){sp->p[t], t};
    }
    qsort(sp->sorted, (size_t)m, sizeof *sp->sorted, by_probability);
    /* Keep a token while the mass of the more likely ones is below top_p (Hugging Face's rule). */
    double before_mass = 0;
    int64_t keep = 0;
    while (keep < m && (keep == 0 || before_mass < top_p * mass)) {
        sp->cand[keep] = sp->sorted[keep].id;
        before_mass += sp->sorted[keep++].p;
    }
    sp->n_cand = keep;
}

static void keep_min_p(finch_sampler *sp, double min_p)
{
    float mx = 0;
    for (int64_t i = 0; i < sp->n_cand; i++) mx = fmaxf(mx, sp->p[sp->cand[i]]);
    int64_t m = 0;
    for (int64_t i = 0; i < sp->n_cand; i++)
        if (sp->p[sp->cand[i]] >= min_p * mx) sp->cand[m++] = sp->cand[i];
    sp->n_cand = m;
}

finch_status finch_sampler_next(finch_sampler *sp, float *z, int32_t *token)
{
    if (!sp || !z || !token) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_sampler_next: NULL argument");
    const finch_sampling *c = &sp->cfg;
    int64_t V = sp->vocab, best = -1;
    apply_penalties(sp, z);
    for (int64_t i = 0; i < V; i++) {
        if (isnan(z[i])) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "sampling: logit %lld is NaN", (long long)i);
        if (z[i] != -INFINITY && (best < 0 || z[i] > z[best])) best = i;
    }
    if (best < 0) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "sampling: every logit is -inf");
    int32_t t = (int32_t)best;
    sp->last_greedy = c->greedy || c->temperature == 0;
    if (!sp->last_greedy) {
        double inv_t = 1.0 / c->temperature, zmax = z[best];
        sp->n_cand = 0;
        for (int64_t i = 0; i < V; i++) {
            sp->p[i] = (float)exp(((double)z[i] - zmax) * inv_t);
            if (sp->p[i] > 0) sp->cand[sp->n_cand++] = (int32_t)i;
        }
        if (c->top_k > 0 && c->top_k < sp->n_cand) keep_top_k(sp, c->top_k);
        if (c->top_p < 1) keep_nucleus(sp, c->top_p);
        if (c->min_p > 0) keep_min_p(sp, c->min_p);
        sp->mass = candidates_mass(sp);
        double u = uniform(sp) * sp->mass, acc = 0;
        t = sp->cand[sp->n_cand - 1];
        for (int64_t i = 0; i < sp->n_cand; i++) {
            acc += sp->p[sp->cand[i]];
            if (u < acc) {
                t = sp->cand[i];
                break;
            }
        }
    }
    sp->last = t;
    sp->count[t]++;
    sp->seen[t] = 1;
    *token = t;
    return FINCH_OK;
}

finch_status finch_sampler_last_probs(const finch_sampler *sp, float *probs, int64_t vocab)
{
    if (!sp || !probs) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_sampler_last_probs: NULL argument");
    if (vocab != sp->vocab) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_sampler_last_probs: vocab %lld, not %lld", (long long)vocab, (long long)sp->vocab);
    if (sp->last < 0) return finch_error(FINCH_ERR_STATE, "finch_sampler_last_probs: nothing was drawn yet");
    memset(probs, 0, (size_t)vocab * sizeof *probs);
    if (sp->last_greedy) {
        probs[sp->last] = 1.0f;
        return FINCH_OK;
    }
    for (int64_t i = 0; i < sp->n_cand; i++) probs[sp->cand[i]] = (float)(sp->p[sp->cand[i]] / sp->mass);
    return FINCH_OK;
}
