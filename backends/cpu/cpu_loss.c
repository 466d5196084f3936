/* Cross-entropy over logits, and the fused lm-head + cross-entropy that only ever holds
 * chunk_tokens rows of logits. Both use cpu_ce_row: max-subtracted log-sum-exp in f32, optional
 * softcap, gradient written in place. */
#include "backends/cpu/cpu.h"

#include <inttypes.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

double cpu_ce_row(const float *z, float *dz, int64_t vocab, int label, float softcap, float grad_scale)
{
    float target = softcap > 0 ? softcap * tanhf(z[label] / softcap) : z[label];
    /* With dz the capped logits are kept there (dz may be z: each element is read before written);
     * without, they are recomputed on each pass. */
    const float *zc = z;
    if (softcap > 0 && dz) {
        for (int64_t j = 0; j < vocab; j++) dz[j] = softcap * tanhf(z[j] / softcap);
        zc = dz;
    }
    int recap = softcap > 0 && !dz;
    float mx = -INFINITY;
    for (int64_t j = 0; j < vocab; j++) mx = fmaxf(mx, recap ? softcap * tanhf(z[j] / softcap) : zc[j]);
    double sum = 0;
    for (int64_t j = 0; j < vocab; j++) sum += expf((recap ? softcap * tanhf(z[j] / softcap) : zc[j]) - mx);
    float lse = mx + (float)log(sum);
    if (dz) {
        for (int64_t j = 0; j < vocab; j++) {
            float v = zc[j], g = expf(v - lse);
            if (softcap > 0) g *= 1.0f - (v / softcap) * (v / softcap);
            dz[j] = grad_scale * g;
        }
        dz[label] -= grad_scale * (softcap > 0 ? 1.0f - (target / softcap) * (target / softcap) : 1.0f);
    }
    return (double)lse - (double)target;
}

static int check_labels(const char *op, const int32_t *labels, int64_t n, int64_t vocab)
{
    for (int64_t t = 0; t < n; t++)
        if (labels[t] != FINCH_IGNORE_INDEX && (labels[t] < 0 || labels[t] >= vocab))
            return finch_error(FINCH_ERR_INVALID_ARGUMENT,
                               "cpu %s: label %" PRId32 " at position %" PRId64 " is outside [0, %" PRId64 ") and not %d",
                               op, labels[t], t, vocab, FINCH_IGNORE_INDEX);
    return FINCH_OK;
}

static int loss_outputs(const char *op, finch_dptr loss_sum, finch_dptr count, float **ls, float **cnt)
{
    char what[64];
    void *p;
    snprintf(what, sizeof what, "%s: loss_sum", op);
    int rc = cpu_span_opt(loss_sum, sizeof(float), what, &p);
    *ls = p;
    if (rc) return rc;
    snprintf(what, sizeof what, "%s: count", op);
    rc = cpu_span_opt(count, sizeof(float), what, &p);
    *cnt = p;
    return rc;
}

/* One cross_entropy call: rows of logits, each chunk's loss sum and count in sums[2 chunk], sums[2 chunk + 1]. */
typedef struct ce_job {
    const finch_cross_entropy_desc *d;
    const int32_t *labels;
    void *z, *dz;
    double *sums;
    atomic_int oom;
} ce_job;

static void ce_rows(void *ctx, int64_t t0, int64_t t1, int chunk)
{
    ce_job *job = ctx;
    const finch_cross_entropy_desc *d = job->d;
    int64_t vocab = d->vocab;
    int f32 = d->dtype == FINCH_DTYPE_F32;
    double loss_total = 0, counted = 0;
    float *buf = f32 ? NULL : malloc((size_t)vocab * sizeof(float));
    if (!f32 && !buf) {
        atomic_store(&job->oom, 1);
        return;
    }
    for (int64_t t = t0; t < t1; t++) {
        void *drow = job->dz ? cpu_at(d->dtype, job->dz, t * d->lddlogits) : NULL;
        if (job->labels[t] == FINCH_IGNORE_INDEX) {
            if (drow) memset(drow, 0, (size_t)vocab * cpu_dtype_size(d->dtype));
            continue;
        }
        void *zrow = cpu_at(d->dtype, job->z, t * d->ld);
        int64_t ld;
        const float *z = cpu_load_block(d->dtype, zrow, 1, vocab, vocab, buf, &ld);
        float *dz = drow ? (f32 ? drow : buf) : NULL;
        loss_total += cpu_ce_row(z, dz, vocab, job->labels[t], d->softcap, d->grad_scale);
        counted += 1;
        if (drow) cpu_store(d->dtype, dz, vocab, drow);
    }
    free(buf);
    job->sums[2 * chunk] = loss_total;
    job->sums[2 * chunk + 1] = counted;
}

int cpu_cross_entropy(finch_plugin_device *dev, finch_plugin_stream *s, const finch_cross_entropy_desc *d)
{
    const char *op = "cross_entropy";
    if (!d) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "cpu %s: descriptor is NULL", op);
    if (d->n_tokens < 0 || d->vocab <= 0)
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "cpu %s: bad shape tokens %" PRId64 " vocab %" PRId64, op,
                           d->n_tokens, d->vocab);
    int64_t n = d->n_tokens, vocab = d->vocab;
    void *zp, *lp, *dp;
    float *ls, *cnt;
    int rc = cpu_check_float(d->dtype, op);
    if (!rc) rc = cpu_matrix(d->logits, d->dtype, n, vocab, d->ld, "cross_entropy: logits", &zp);
    if (!rc) rc = cpu_matrix(d->labels, FINCH_DTYPE_I32, 1, n, n, "cross_entropy: labels", &lp);
    if (!rc) rc = cpu_matrix_opt(d->dlogits, d->dtype, n, vocab, d->lddlogits, "cross_entropy: dlogits", &dp);
    if (!rc) rc = loss_outputs(op, d->loss_sum, d->count, &ls, &cnt);
    if (!rc) rc = check_labels(op, lp, n, vocab);
    if (rc) return rc;
    int64_t chunks = cpu_chunks(n, n * vocab > (1 << 14));
    double *sums = calloc(2 * (size_t)(chunks > 0 ? chunks : 1), sizeof(double)), loss_total = 0, counted = 0;
    if (!sums) return cpu_oom(2 * (size_t)chunks * sizeof(double), op);
    ce_job job = {.d = d, .labels = lp, .z = zp, .dz = dp, .sums = sums};
    cpu_parallel(n, chunks, &job, ce_rows);
    for (int64_t c = 0; c < chunks; c++) loss_total += sums[2 * c], counted += sums[2 * c + 1];
    free(sums);
    int oom = atomic_load(&job.oom);
    if (oom) return cpu_oom((size_t)vocab * sizeof(float), op);
    if (ls) *ls += (float)loss_total;
    if (cnt) *cnt += (float)counted;
    return FINCH_OK;
}

/* One chunk of rows of linear_cross_entropy: the f32 logits, turned into their gradient in place. */
typedef struct lce_job {
    const finch_linear_cross_entropy_desc *d;
    const int32_t *labels;
    float *logits;
    int want_grad;
    double *sums;
} lce_job;

static void lce_rows(void *ctx, int64_t i0, int64_t i1, int chunk)
{
    const lce_job *job = ctx;
    const finch_linear_cross_entropy_desc *d = job->d;
    int64_t vocab = d->vocab;
    double loss_total = 0, counted = 0;
    for (int64_t i = i0; i < i1; i++) {
        float *z = job->logits + i * vocab;
        int label = job->labels[i];
        if (label == FINCH_IGNORE_INDEX) {
            if (job->want_grad) memset(z, 0, (size_t)vocab * sizeof(float));
            continue;
        }
        loss_total += cpu_ce_row(z, job->want_grad ? z : NULL, vocab, label, d->softcap, d->grad_scale);
        counted += 1;
    }
    job->sums[2 * chunk] = loss_total;
    job->sums[2 * chunk + 1] = counted;
}

int cpu_linear_cross_entropy(finch_plugin_device *dev, finch_plugin_stream *s,
                             const finch_linear_cross_entropy_desc *d)
{
    const char *op = "linear_cross_entropy";
    if (!d) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "cpu %s: descriptor is NULL", op);
    if (d->n_tokens < 0 || d->dim < 0 || d->vocab <= 0)
        return finch_error(FINCH_ERR_INVALID_ARGUMENT,
                           "cpu %s: bad shape tokens %" PRId64 " dim %" PRId64 " vocab %" PRId64, op, d->n_tokens,
                           d->dim, d->vocab);
    int64_t n = d->n_tokens, dim = d->dim, vocab = d->vocab;
    cpu_weight w;
    void *hp, *lp, *dhp = NULL, *dwp = NULL;
    float *ls, *cnt;
    int grad = d->grad_scale != 0;
    int rc = cpu_check_float(d->act_type, op);
    if (!rc) rc = cpu_matrix(d->hidden, d->act_type, n, dim, d->ldh, "linear_cross_entropy: hidden", &hp);
    if (!rc) rc = cpu_weight_resolve(&d->w, vocab, dim, "linear_cross_entropy: w", &w);
    if (!rc) rc = cpu_matrix(d->labels, FINCH_DTYPE_I32, 1, n, n, "linear_cross_entropy: labels", &lp);
    if (!rc) rc = loss_outputs(op, d->loss_sum, d->count, &ls, &cnt);
    if (!rc && grad)
        rc = cpu_matrix_opt(d->dhidden, d->act_type, n, dim, d->lddh, "linear_cross_entropy: dhidden", &dhp);
    if (!rc && grad) rc = cpu_matrix_opt(d->dw, FINCH_DTYPE_F32, vocab, dim, dim, "linear_cross_entropy: dw", &dwp);
    if (!rc && dwp && w.dtype == FINCH_DTYPE_NF4)
        rc = finch_error(FINCH_ERR_INVALID_ARGUMENT, "cpu %s: dw requested for a 4-bit weight", op);
    if (!rc) rc = check_labels(op, lp, n, vocab);
    if (rc) return rc;
    const int32_t *labels = lp;
    int64_t chunk = d->chunk_tokens > 0 ? d->chunk_tokens : (1 << 22) / vocab;
    if (chunk < 1) chunk = 1;
    if (chunk > n) chunk = n > 0 ? n : 1;
    float *logits = malloc((size_t)(chunk * vocab) * sizeof(float));
    double *sums = calloc(2 * (size_t)cpu_chunks(chunk, 1), sizeof(double));
    if (!logits || !sums) {
        free(logits);
        free(sums);
        return cpu_oom((size_t)(chunk * vocab) * sizeof(float), "linear_cross_entropy logits chunk");
    }
    int want_grad = grad && (dhp || dwp);
    double loss_total = 0, counted = 0;
    for (int64_t r0 = 0; r0 < n && !rc; r0 += chunk) {
        int64_t rows = n - r0 < chunk ? n - r0 : chunk;
        cpu_mat hm = {d->act_type, cpu_at(d->act_type, hp, r0 * d->ldh), d->ldh, 0};
        rc = cpu_weight_matmul_t(&w, vocab, dim, rows, hm, 0.0f, FINCH_DTYPE_F32, logits, vocab);
        if (rc) break;
        int64_t chunks = cpu_chunks(rows, rows * vocab > (1 << 14));
        lce_job job = {.d = d, .labels = labels + r0, .logits = logits, .want_grad = want_grad, .sums = sums};
        cpu_parallel(rows, chunks, &job, lce_rows);
        for (int64_t c = 0; c < chunks; c++) loss_total += sums[2 * c], counted += sums[2 * c + 1];
        if (!want_grad) continue;
        cpu_mat dz = {FINCH_DTYPE_F32, logits, vocab, 0}, dzt = {FINCH_DTYPE_F32, logits, vocab, 1};
        if (dhp)
            rc = cpu_weight_matmul(&w, vocab, dim, rows, dz, d->dhidden_accumulate ? 1.0f : 0.0f, d->act_type,
                                   cpu_at(d->act_type, dhp, r0 * d->lddh), d->lddh);
        if (!rc && dwp) rc = cpu_gemm(vocab, dim, rows, 1.0f, dzt, hm, 1.0f, FINCH_DTYPE_F32, dwp, dim);
    }
    free(logits);
    free(sums);
    if (rc) return rc;
    if (ls) *ls += (float)loss_total;
    if (cnt) *cnt += (float)counted;
    return FINCH_OK;
}
