/* CPU backend: cross-entropy (softcap, ignored labels, aliasing), fused linear cross-entropy
 * (chunking, dense and 4-bit weights), and AdamW against the torch formula. */
#include "tests/test_cpu_common.h"

static double ce_ref_row(const float *z, int64_t vocab, int label, float softcap)
{
    double mx = -INFINITY, sum = 0, zl = 0;
    for (int64_t j = 0; j < vocab; j++) {
        double v = softcap > 0 ? softcap * tanh(z[j] / softcap) : z[j];
        if (v > mx) mx = v;
        if (j == label) zl = v;
    }
    for (int64_t j = 0; j < vocab; j++) sum += exp((softcap > 0 ? softcap * tanh(z[j] / softcap) : z[j]) - mx);
    return mx + log(sum) - zl;
}

typedef struct ce {
    int64_t n, vocab, ld;
    finch_dtype t;
    float softcap;
    float *z;
    int32_t *labels;
} ce;

/* loss_sum of one call (from zero) */
static double ce_loss(void *p)
{
    ce *C = p;
    finch_cross_entropy_desc d = {.n_tokens = C->n, .vocab = C->vocab, .dtype = C->t, .ld = C->ld,
                                  .softcap = C->softcap, .grad_scale = 0};
    d.logits = upload(C->z, (size_t)(C->n * C->ld), C->t);
    d.labels = upload_i32(C->labels, (size_t)C->n);
    d.loss_sum = zeros(1, FINCH_DTYPE_F32);
    d.count = zeros(1, FINCH_DTYPE_F32);
    CHECK(api->cross_entropy(dev, NULL, &d) == FINCH_OK, "cross_entropy: %s", api->last_error());
    float l;
    download(d.loss_sum, 1, FINCH_DTYPE_F32, &l);
    return l;
}

static void ce_case(int ti, float softcap, int alias)
{
    int32_t labels[11] = {3, -100, 36, 0, 17, 17, -100, 5, 30, 1, 22};
    ce C = {.n = 11, .vocab = 37, .ld = 40, .t = float_types[ti], .softcap = softcap, .labels = labels};
    size_t nz = (size_t)(C.n * C.ld);
    C.z = rnd(nz, 111);
    for (size_t i = 0; i < nz; i++) C.z[i] *= 4;
    round_to(C.t, C.z, nz);
    double ref = 0;
    for (int64_t t = 0; t < C.n; t++)
        if (labels[t] != -100) ref += ce_ref_row(C.z + t * C.ld, C.vocab, labels[t], softcap);
    float init[2] = {0.5f, 2.0f}, got[2];
    finch_cross_entropy_desc d = {.n_tokens = C.n, .vocab = C.vocab, .dtype = C.t, .ld = C.ld, .softcap = softcap,
                                  .grad_scale = 0.25f, .lddlogits = alias ? C.ld : C.vocab};
    d.logits = upload(C.z, nz, C.t);
    d.labels = upload_i32(labels, 11);
    d.loss_sum = upload(init, 1, FINCH_DTYPE_F32);
    d.count = upload(init + 1, 1, FINCH_DTYPE_F32);
    d.dlogits = alias ? d.logits : zeros((size_t)(C.n * C.vocab), C.t);
    CHECK(api->cross_entropy(dev, NULL, &d) == FINCH_OK, "cross_entropy: %s", api->last_error());
    download(d.loss_sum, 1, FINCH_DTYPE_F32, got);
    download(d.count, 1, FINCH_DTYPE_F32, got + 1);
    CHECK(fabs(got[0] - 0.5 - ref) < 2e-6 * fabs(ref) + 1e-6, "ce %s softcap %g: loss %.7g vs %.7g",
          float_type_names[ti], softcap, got[0] - 0.5, ref);
    CHECK(got[1] == 11.0f, "ce count accumulates: %g", got[1]);
    /* dlogits = grad_scale * d loss_sum / d logits, by finite differences in f32 */
    size_t nd = (size_t)(C.n * d.lddlogits);
    float *dl = fzeros(nd);
    download(d.dlogits, nd, C.t, dl);
    int zero_rows = 1;
    for (int64_t j = 0; j < C.vocab; j++) zero_rows &= dl[1 * d.lddlogits + j] == 0 && dl[6 * d.lddlogits + j] == 0;
    CHECK(zero_rows, "ignored rows have zero gradient");
    if (ti == 0) {
        float *an = fzeros(nz), *fd = fzeros(nz);
        for (int64_t t = 0; t < C.n; t++)
            for (int64_t j = 0; j < C.vocab; j++) an[t * C.ld + j] = dl[t * d.lddlogits + j] / 0.25f;
        fd_grad(ce_loss, &C, C.z, nz, 1e-2f, fd);
        char label[64];
        snprintf(label, sizeof label, "cross_entropy softcap %g%s dlogits", softcap, alias ? " aliased" : "");
        check_grad(label, an, fd, nz, 1e-2);
        free(an), free(fd);
    }
    free(dl), free(C.z);
    free_buffers();
}

static void test_cross_entropy(void)
{
    for (int ti = 0; ti < 3; ti++) {
        ce_case(ti, 0.0f, 0);
        ce_case(ti, 3.0f, 0);
        ce_case(ti, 0.0f, 1);
    }
    /* every label ignored: nothing counted, no NaN */
    int32_t ignored[4] = {-100, -100, -100, -100}, bad[4] = {1, 2, 37, 0};
    float *z = rnd(4 * 37, 112), out[2];
    finch_cross_entropy_desc d = {.n_tokens = 4, .vocab = 37, .dtype = FINCH_DTYPE_F32, .ld = 37, .grad_scale = 1,
                                  .lddlogits = 37};
    d.logits = upload(z, 4 * 37, FINCH_DTYPE_F32);
    d.labels = upload_i32(ignored, 4);
    d.loss_sum = zeros(1, FINCH_DTYPE_F32);
    d.count = zeros(1, FINCH_DTYPE_F32);
    d.dlogits = d.logits;
    CHECK(api->cross_entropy(dev, NULL, &d) == FINCH_OK, "all ignored");
    download(d.loss_sum, 1, FINCH_DTYPE_F32, out);
    download(d.count, 1, FINCH_DTYPE_F32, out + 1);
    CHECK(out[0] == 0 && out[1] == 0, "all ignored: loss %g count %g", out[0], out[1]);
    d.labels = upload_i32(bad, 4);
    CHECK(api->cross_entropy(dev, NULL, &d) == FINCH_ERR_INVALID_ARGUMENT, "label out of range");
    CHECK(strstr(api->last_error(), "37") && strstr(api->last_error(), "position 2"), "message: %s", api->last_error());
    free(z);
    free_buffers();
}

/* ---------------------------------------------------------------- linear cross-entropy */

static const float nf4[16] = {-1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
                              -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
                              0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f,
                              0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f,
                              0.7229568362236023f, 1.0f};

typedef struct lce {
    int64_t n, dim, vocab, chunk;
    finch_dtype t;
    float softcap;
    float *h, *w;
    int32_t *labels;
    finch_weight qw;     /* used when qw.data.buf */
} lce;

static finch_linear_cross_entropy_desc lce_desc(lce *L, float grad_scale)
{
    finch_linear_cross_entropy_desc d = {.n_tokens = L->n, .dim = L->dim, .vocab = L->vocab,
                                         .chunk_tokens = L->chunk, .act_type = L->t, .ldh = L->dim,
                                         .softcap = L->softcap, .grad_scale = grad_scale, .lddh = L->dim};
    d.hidden = upload(L->h, (size_t)(L->n * L->dim), L->t);
    if (L->qw.data.buf) {
        d.w = L->qw;
    } else {
        d.w.dtype = L->t;
        d.w.data = upload(L->w, (size_t)(L->vocab * L->dim), L->t);
    }
    d.labels = upload_i32(L->labels, (size_t)L->n);
    d.loss_sum = zeros(1, FINCH_DTYPE_F32);
    d.count = zeros(1, FINCH_DTYPE_F32);
    return d;
}

static double lce_loss(void *p)
{
    lce *L = p;
    finch_linear_cross_entropy_desc d = lce_desc(L, 0);
    CHECK(api->linear_cross_entropy(dev, NULL, &d) == FINCH_OK, "linear_cross_entropy: %s", api->last_error());
    float l;
    download(d.loss_sum, 1, FINCH_DTYPE_F32, &l);
    return l;
}

static void lce_case(const char *name, int ti, int64_t chunk, float softcap, int quant)
{
    int32_t labels[11] = {3, -100, 36, 0, 17, 17, 5, -100, 30, 1, 22};
    lce L = {.n = 11, .dim = 13, .vocab = 37, .chunk = chunk, .t = float_types[ti], .softcap = softcap,
             .labels = labels};
    size_t nh = (size_t)(L.n * L.dim), nw = (size_t)(L.vocab * L.dim);
    L.h = rnd(nh, 121), L.w = rnd(nw, 122);
    for (size_t i = 0; i < nh; i++) L.h[i] *= 2;
    round_to(L.t, L.h, nh), round_to(L.t, L.w, nw);
    int mark = n_buffers;
    if (quant) {   /* blocksize 8; the reference uses the dequantised values */
        unsigned char *q = calloc(nw / 2 + 2, 1);
        size_t blocks = (nw + 7) / 8;
        float *absmax = rnd(blocks, 123);
        for (size_t b = 0; b < blocks; b++) absmax[b] = 0.5f + fabsf(absmax[b]);
        for (size_t e = 0; e < nw; e++) {
            int nib = (int)((e * 5 + 1) % 16);
            q[e / 2] |= (unsigned char)(e % 2 ? nib : nib << 4);
            L.w[e] = nf4[nib] * absmax[e / 8];
        }
        L.qw = (finch_weight){.dtype = FINCH_DTYPE_NF4, .data = upload_raw(q, (nw + 1) / 2),
                              .absmax = upload(absmax, blocks, FINCH_DTYPE_F32),
                              .code = upload(nf4, 16, FINCH_DTYPE_F32), .blocksize = 8};
        free(q), free(absmax);
        mark = n_buffers;
    }
    /* reference loss from explicit logits */
    float *logits = fzeros((size_t)L.vocab);
    double ref = 0;
    for (int64_t t = 0; t < L.n; t++) {
        if (labels[t] == -100) continue;
        for (int64_t v = 0; v < L.vocab; v++) {
            double s = 0;
            for (int64_t j = 0; j < L.dim; j++) s += (double)L.h[t * L.dim + j] * L.w[v * L.dim + j];
            logits[v] = (float)s;
        }
        ref += ce_ref_row(logits, L.vocab, labels[t], softcap);
    }
    float gs = 0.5f;
    float *dh0 = rnd(nh, 124), *dw0 = rnd(nw, 125);
    finch_linear_cross_entropy_desc d = lce_desc(&L, gs);
    d.dhidden = upload(dh0, nh, L.t);
    d.dhidden_accumulate = 1;
    if (!quant) d.dw = upload(dw0, nw, FINCH_DTYPE_F32);
    CHECK(api->linear_cross_entropy(dev, NULL, &d) == FINCH_OK, "%s: %s", name, api->last_error());
    float got[2];
    download(d.loss_sum, 1, FINCH_DTYPE_F32, got);
    download(d.count, 1, FINCH_DTYPE_F32, got + 1);
    double tol = ti == 0 ? 2e-6 : 1e-5;
    CHECK(fabs(got[0] - ref) < tol * fabs(ref), "%s: loss %.7g vs %.7g", name, got[0], ref);
    CHECK(got[1] == 9.0f, "%s: count %g", name, got[1]);
    if (ti == 0) {
        struct { const char *what; float *host; size_t n; finch_dptr dev; float *init; finch_dtype t; } g[2] = {
            {"dhidden", L.h, nh, d.dhidden, dh0, L.t}, {"dw", L.w, nw, d.dw, dw0, FINCH_DTYPE_F32}};
        for (int i = 0; i < 2; i++) {
            if (!g[i].dev.buf) continue;
            float *an = fzeros(g[i].n), *fd = fzeros(g[i].n);
            download(g[i].dev, g[i].n, g[i].t, an);
            for (size_t e = 0; e < g[i].n; e++) an[e] = (an[e] - g[i].init[e]) / gs;
            fd_grad(lce_loss, &L, g[i].host, g[i].n, 1e-2f, fd);
            char label[96];
            snprintf(label, sizeof label, "%s %s", name, g[i].what);
            check_grad(label, an, fd, g[i].n, 1e-2);
            free(an), free(fd);
        }
    }
    free_buffers_from(mark);
    free(L.h), free(L.w), free(logits), free(dh0), free(dw0);
    free_buffers();
}

static void test_linear_cross_entropy(void)
{
    lce_case("lce chunk 4", 0, 4, 0.0f, 0);
    lce_case("lce chunk 1 softcap", 0, 1, 5.0f, 0);
    lce_case("lce auto chunk", 0, 0, 0.0f, 0);
    lce_case("lce nf4 chunk 3", 0, 3, 0.0f, 1);
    lce_case("lce bf16", 1, 4, 0.0f, 0);
    lce_case("lce f16", 2, 5, 3.0f, 0);
}

/* ---------------------------------------------------------------- adamw */

static void adamw_case(finch_dtype param_type)
{
    enum { N = 7 };
    float p0[N], g[2][N];
    testing_fill_random(p0, N, 131);
    testing_fill_random(g[0], N, 132);
    testing_fill_random(g[1], N, 133);
    round_to(param_type, p0, N);
    const float lr = 1e-2f, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f, wd = 0.1f, gscale = 0.5f;
    double p[N], m[N] = {0}, v[N] = {0};
    for (int i = 0; i < N; i++) p[i] = p0[i];
    int master = param_type != FINCH_DTYPE_F32;
    finch_adamw_desc d = {.n = N, .param_type = param_type, .lr = lr, .beta1 = b1, .beta2 = b2, .eps = eps,
                          .weight_decay = wd, .grad_scale = gscale};
    d.param = upload(p0, N, param_type);
    if (master) d.master = upload(p0, N, FINCH_DTYPE_F32);
    d.m = zeros(N, FINCH_DTYPE_F32);
    d.v = zeros(N, FINCH_DTYPE_F32);
    for (int step = 1; step <= 2; step++) {
        double bc1 = 1 - pow(b1, step), bc2 = 1 - pow(b2, step);
        for (int i = 0; i < N; i++) {   /* torch.optim.AdamW */
            double gi = (double)g[step - 1][i] * gscale;
            p[i] *= 1 - (double)lr * wd;
            m[i] = b1 * m[i] + (1 - b1) * gi;
            v[i] = b2 * v[i] + (1 - b2) * gi * gi;
            p[i] -= lr * (m[i] / bc1) / (sqrt(v[i] / bc2) + eps);
        }
        d.grad = upload(g[step - 1], N, FINCH_DTYPE_F32);
        d.bias_correction1 = (float)bc1, d.bias_correction2 = (float)bc2;
        CHECK(api->adamw_step(dev, NULL, &d) == FINCH_OK, "adamw_step: %s", api->last_error());
    }
    float got[N], gm[N], gv[N];
    download(master ? d.master : d.param, N, FINCH_DTYPE_F32, got);
    download(d.m, N, FINCH_DTYPE_F32, gm);
    download(d.v, N, FINCH_DTYPE_F32, gv);
    CHECK(rel_err_d(got, p, N) < 1e-6, "adamw param %s", float_type_names[param_type]);
    CHECK(rel_err_d(gm, m, N) < 1e-6 && rel_err_d(gv, v, N) < 1e-6, "adamw moments");
    double moved = 0;
    for (int i = 0; i < N; i++) moved += fabs(p[i] - p0[i]);
    CHECK(moved > 1e-3, "the step moves the parameters");
    if (master) {   /* param holds the master rounded to its type */
        float stored[N];
        download(d.param, N, param_type, stored);
        int ok = 1;
        for (int i = 0; i < N; i++) ok &= stored[i] == to_storage(param_type, got[i]);
        CHECK(ok, "param is the rounded master");
    }
    finch_adamw_desc bad = d;
    bad.master = (finch_dptr){0};
    if (master) CHECK(api->adamw_step(dev, NULL, &bad) == FINCH_ERR_INVALID_ARGUMENT, "16-bit param needs a master");
    free_buffers();
}

int main(void)
{
    cpu_test_begin();
    test_cross_entropy();
    test_linear_cross_entropy();
    adamw_case(FINCH_DTYPE_F32);
    adamw_case(FINCH_DTYPE_BF16);
    adamw_case(FINCH_DTYPE_F16);
    return cpu_test_end();
}
