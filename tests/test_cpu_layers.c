/* CPU backend: linear (dense, 4-bit, bias, LoRA, dropout), norms, rope, glu, activations, embedding.
 * Forward passes against double references; every backward pass against finite differences of
 * L = sum(out * R) evaluated through the forward entry. */
#include "tests/test_cpu_common.h"

static const float nf4[16] = {-1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
                              -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
                              0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f,
                              0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f,
                              0.7229568362236023f, 1.0f};

#define FD_TOL 1e-2

/* ---------------------------------------------------------------- linear */

typedef struct lin {
    int64_t m, in, out, rank;
    finch_dtype act, param;
    float *x, *w, *bias, *a, *b, *R;
    float scale, dropout;
    uint64_t seed;
    int quantized;
    finch_weight qw;     /* when quantized */
    double *wq;          /* its dequantised values */
} lin;

static finch_linear_desc lin_desc(const lin *L)
{
    finch_linear_desc d = {.m = L->m, .in_features = L->in, .out_features = L->out, .rank = L->rank,
                           .act_type = L->act, .ldx = L->in, .ldy = L->out, .param_type = L->param,
                           .scale = L->scale, .dropout = L->dropout, .dropout_seed = L->seed, .lddy = L->out,
                           .lddx = L->in};
    d.x = upload(L->x, (size_t)(L->m * L->in), L->act);
    d.y = zeros((size_t)(L->m * L->out), L->act);
    if (L->quantized) {
        d.w = L->qw;
    } else {
        d.w.dtype = L->param;
        d.w.data = upload(L->w, (size_t)(L->out * L->in), L->param);
    }
    if (L->bias) d.bias = upload(L->bias, (size_t)L->out, L->param);
    if (L->rank) {
        d.lora_a = upload(L->a, (size_t)(L->rank * L->in), L->param);
        d.lora_b = upload(L->b, (size_t)(L->out * L->rank), L->param);
        d.xa = zeros((size_t)(L->m * L->rank), FINCH_DTYPE_F32);
    }
    return d;
}

static double lin_loss(void *p)
{
    lin *L = p;
    finch_linear_desc d = lin_desc(L);
    CHECK(api->linear_forward(dev, NULL, &d) == FINCH_OK, "linear_forward: %s", api->last_error());
    float *y = fzeros((size_t)(L->m * L->out));
    download(d.y, (size_t)(L->m * L->out), L->act, y);
    double s = dsum_prod(y, L->R, (size_t)(L->m * L->out));
    free(y);
    return s;
}

static void lin_init(lin *L, int64_t m, int64_t in, int64_t out, int64_t rank, int bias, float dropout, int quant,
                     finch_dtype act, finch_dtype param)
{
    memset(L, 0, sizeof *L);
    L->m = m, L->in = in, L->out = out, L->rank = rank, L->act = act, L->param = param;
    L->scale = 0.75f, L->dropout = dropout, L->seed = 1234, L->quantized = quant;
    L->x = rnd((size_t)(m * in), 31);
    L->w = rnd((size_t)(out * in), 32);
    L->bias = bias ? rnd((size_t)out, 33) : NULL;
    L->a = rnd((size_t)(rank * in) + 1, 34);
    L->b = rnd((size_t)(out * rank) + 1, 35);
    L->R = rnd((size_t)(m * out), 36);
    round_to(act, L->x, (size_t)(m * in));
    round_to(param, L->w, (size_t)(out * in));
    if (bias) round_to(param, L->bias, (size_t)out);
    round_to(param, L->a, (size_t)(rank * in));
    round_to(param, L->b, (size_t)(out * rank));
    L->wq = malloc(sizeof(double) * (size_t)(out * in));
    for (int64_t e = 0; e < out * in; e++) L->wq[e] = L->w[e];
    if (quant) {   /* blocksize 4 over the flattened weight */
        size_t n = (size_t)(out * in), blocks = (n + 3) / 4;
        unsigned char *q = calloc(n / 2 + 2, 1);
        float *absmax = rnd(blocks, 37);
        for (size_t b = 0; b < blocks; b++) absmax[b] = 0.5f + fabsf(absmax[b]);
        for (size_t e = 0; e < n; e++) {
            int nib = (int)((e * 7 + 3) % 16);
            q[e / 2] |= (unsigned char)(e % 2 ? nib : nib << 4);
            L->wq[e] = (double)nf4[nib] * absmax[e / 4];
        }
        L->qw = (finch_weight){.dtype = FINCH_DTYPE_NF4, .data = upload_raw(q, (n + 1) / 2),
                               .absmax = upload(absmax, blocks, FINCH_DTYPE_F32),
                               .code = upload(nf4, 16, FINCH_DTYPE_F32), .blocksize = 4};
        free(q), free(absmax);
    }
}

static void lin_free(lin *L)
{
    free(L->x), free(L->w), free(L->bias), free(L->a), free(L->b), free(L->R), free(L->wq);
    free_buffers();
}

static void linear_forward_case(const char *name, lin *L, double tol)
{
    int64_t m = L->m, in = L->in, out = L->out, r = L->rank;
    double *ref = malloc(sizeof(double) * (size_t)(m * out)), *xa = malloc(sizeof(double) * (size_t)(m * r + 1));
    for (int64_t i = 0; i < m; i++) {
        for (int64_t k = 0; k < r; k++) {
            double s = 0;
            for (int64_t j = 0; j < in; j++) {
                int keep = finch_dropout_keep(L->seed, (uint64_t)(i * in + j), L->dropout);
                s += keep ? (double)L->x[i * in + j] / (1.0 - L->dropout) * L->a[k * in + j] : 0.0;
            }
            xa[i * r + k] = s;
        }
        for (int64_t o = 0; o < out; o++) {
            double s = L->bias ? L->bias[o] : 0;
            for (int64_t j = 0; j < in; j++) s += (double)L->x[i * in + j] * L->wq[o * in + j];
            for (int64_t k = 0; k < r; k++) s += L->scale * xa[i * r + k] * L->b[o * r + k];
            ref[i * out + o] = s;
        }
    }
    finch_linear_desc d = lin_desc(L);
    CHECK(api->linear_forward(dev, NULL, &d) == FINCH_OK, "%s: %s", name, api->last_error());
    float *y = fzeros((size_t)(m * out)), *xag = fzeros((size_t)(m * r));
    download(d.y, (size_t)(m * out), L->act, y);
    double err = rel_err_d(y, ref, (size_t)(m * out));
    CHECK(err < tol, "%s: y rel err %.3g", name, err);
    if (r) {
        download(d.xa, (size_t)(m * r), FINCH_DTYPE_F32, xag);
        err = rel_err_d(xag, xa, (size_t)(m * r));
        CHECK(err < (L->param == FINCH_DTYPE_F32 && L->act == FINCH_DTYPE_F32 ? 1e-6 : 1e-5), "%s: xa rel err %.3g",
              name, err);
    }
    free(ref), free(xa), free(y), free(xag);
    free_buffers_from(L->quantized ? 3 : 0);
}

/* Analytic gradients of every input of the linear layer against finite differences. */
static void linear_backward_case(const char *name, lin *L)
{
    int64_t m = L->m, in = L->in, out = L->out, r = L->rank;
    int mark = n_buffers;
    finch_linear_desc d = lin_desc(L);
    CHECK(api->linear_forward(dev, NULL, &d) == FINCH_OK, "%s forward", name);
    float *dx0 = rnd((size_t)(m * in), 41), *da0 = rnd((size_t)(r * in) + 1, 42), *db0 = rnd((size_t)(out * r) + 1, 43);
    float *dw0 = rnd((size_t)(out * in), 44), *dbias0 = rnd((size_t)out, 45);
    d.dy = upload(L->R, (size_t)(m * out), L->act);
    d.dx = upload(dx0, (size_t)(m * in), L->act);
    d.dx_accumulate = 1;
    if (!L->quantized) d.dw = upload(dw0, (size_t)(out * in), FINCH_DTYPE_F32);
    if (L->bias) d.dbias = upload(dbias0, (size_t)out, FINCH_DTYPE_F32);
    if (r) {
        d.da = upload(da0, (size_t)(r * in), FINCH_DTYPE_F32);
        d.db = upload(db0, (size_t)(out * r), FINCH_DTYPE_F32);
    }
    CHECK(api->linear_backward(dev, NULL, &d) == FINCH_OK, "%s backward: %s", name, api->last_error());
    struct { const char *what; float *host; size_t n; finch_dptr got; float *init; } g[5] = {
        {"dx", L->x, (size_t)(m * in), d.dx, dx0},
        {"dw", L->w, (size_t)(out * in), d.dw, dw0},
        {"dbias", L->bias, (size_t)out, d.dbias, dbias0},
        {"da", L->a, (size_t)(r * in), d.da, da0},
        {"db", L->b, (size_t)(out * r), d.db, db0},
    };
    for (int i = 0; i < 5; i++) {
        if (!g[i].got.buf || !g[i].n) continue;
        float *an = fzeros(g[i].n), *fd = fzeros(g[i].n);
        download(g[i].got, g[i].n, i == 0 ? L->act : FINCH_DTYPE_F32, an);
        for (size_t e = 0; e < g[i].n; e++) an[e] -= g[i].init[e];   /* gradients accumulate */
        fd_grad(lin_loss, L, g[i].host, g[i].n, 1e-2f, fd);
        char label[96];
        snprintf(label, sizeof label, "%s %s", name, g[i].what);
        check_grad(label, an, fd, g[i].n, FD_TOL);
        free(an), free(fd);
    }
    /* the adapter's xa may be absent in backward: it is recomputed */
    if (r) {
        finch_dptr db_with = d.db;
        float *b1 = fzeros((size_t)(out * r)), *b2 = fzeros((size_t)(out * r));
        download(db_with, (size_t)(out * r), FINCH_DTYPE_F32, b1);
        d.xa = (finch_dptr){0};
        d.dx_accumulate = 0;
        CHECK(api->linear_backward(dev, NULL, &d) == FINCH_OK, "%s backward without xa", name);
        download(db_with, (size_t)(out * r), FINCH_DTYPE_F32, b2);
        for (int64_t e = 0; e < out * r; e++) {
            b2[e] -= b1[e];    /* the second call's gradient */
            b1[e] -= db0[e];   /* the first call's */
        }
        CHECK(testing_rel_err(b2, b1, (size_t)(out * r)) < 1e-5, "%s: db the same without xa", name);
        free(b1), free(b2);
    }
    free(dx0), free(da0), free(db0), free(dw0), free(dbias0);
    free_buffers_from(mark);
}

static void test_linear(void)
{
    lin L;
    lin_init(&L, 7, 5, 6, 3, 1, 0.3f, 0, FINCH_DTYPE_F32, FINCH_DTYPE_F32);
    linear_forward_case("linear f32 bias lora dropout", &L, 1e-6);
    linear_backward_case("linear f32 bias lora dropout", &L);
    lin_free(&L);
    lin_init(&L, 7, 5, 6, 0, 0, 0.0f, 0, FINCH_DTYPE_F32, FINCH_DTYPE_F32);
    linear_forward_case("linear f32 plain", &L, 1e-6);
    linear_backward_case("linear f32 plain", &L);
    lin_free(&L);
    lin_init(&L, 7, 5, 6, 2, 1, 0.0f, 1, FINCH_DTYPE_F32, FINCH_DTYPE_F32);
    linear_forward_case("linear nf4 lora", &L, 1e-6);
    linear_backward_case("linear nf4 lora", &L);
    lin_free(&L);
    for (int ti = 1; ti < 3; ti++) {
        char name[64];
        snprintf(name, sizeof name, "linear %s lora dropout", float_type_names[ti]);
        lin_init(&L, 9, 13, 11, 4, 1, 0.25f, 0, float_types[ti], float_types[ti]);
        linear_forward_case(name, &L, float_type_tol[ti]);
        lin_free(&L);
        lin_init(&L, 9, 13, 11, 4, 1, 0.0f, 1, float_types[ti], float_types[ti]);
        snprintf(name, sizeof name, "linear %s nf4", float_type_names[ti]);
        linear_forward_case(name, &L, float_type_tol[ti]);
        lin_free(&L);
    }
    /* 4-bit weights have no dw */
    lin_init(&L, 3, 4, 5, 0, 0, 0.0f, 1, FINCH_DTYPE_F32, FINCH_DTYPE_F32);
    finch_linear_desc d = lin_desc(&L);
    d.dy = d.y;
    d.dw = zeros(20, FINCH_DTYPE_F32);
    CHECK(api->linear_backward(dev, NULL, &d) == FINCH_ERR_INVALID_ARGUMENT, "dw of a 4-bit weight is refused");
    lin_free(&L);
}

/* ---------------------------------------------------------------- norms */

typedef struct norm {
    int layer;               /* 0 rmsnorm, 1 layernorm */
    int64_t n, dim;
    finch_dtype t;
    float *x, *w, *b, *R;    /* w, b may be NULL for layernorm */
    float offset, eps;
} norm;

static finch_dptr norm_forward(norm *N, finch_dptr *xp, finch_dptr *wp, finch_dptr *mean, finch_dptr *rstd)
{
    size_t nd = (size_t)(N->n * N->dim);
    *xp = upload(N->x, nd, N->t);
    *wp = N->w ? upload(N->w, (size_t)N->dim, N->t) : (finch_dptr){0};
    finch_dptr bp = N->b ? upload(N->b, (size_t)N->dim, N->t) : (finch_dptr){0};
    finch_dptr y = zeros(nd, N->t);
    *mean = zeros((size_t)N->n, FINCH_DTYPE_F32);
    *rstd = zeros((size_t)N->n, FINCH_DTYPE_F32);
    int rc = N->layer ? api->layernorm_forward(dev, NULL, N->n, N->dim, N->t, *xp, N->t, *wp, bp, N->eps, y, *mean, *rstd)
                      : api->rmsnorm_forward(dev, NULL, N->n, N->dim, N->t, *xp, N->t, *wp, N->offset, N->eps, y, *rstd);
    CHECK(rc == FINCH_OK, "norm forward: %s", api->last_error());
    return y;
}

static double norm_loss(void *p)
{
    norm *N = p;
    finch_dptr xp, wp, mean, rstd;
    size_t nd = (size_t)(N->n * N->dim);
    finch_dptr y = norm_forward(N, &xp, &wp, &mean, &rstd);
    float *yh = fzeros(nd);
    download(y, nd, N->t, yh);
    double s = dsum_prod(yh, N->R, nd);
    free(yh);
    return s;
}

static void norm_case(const char *name, int layer, int ti, int with_w, int with_b, float offset)
{
    norm N = {.layer = layer, .n = 5, .dim = 24, .t = float_types[ti], .offset = offset, .eps = 1e-5f};
    size_t nd = (size_t)(N.n * N.dim);
    N.x = rnd(nd, 51);
    for (size_t i = 0; i < nd; i++) N.x[i] = N.x[i] * 2 + 0.3f;
    N.w = with_w ? rnd((size_t)N.dim, 52) : NULL;
    N.b = with_b ? rnd((size_t)N.dim, 53) : NULL;
    N.R = rnd(nd, 54);
    round_to(N.t, N.x, nd);
    if (N.w) round_to(N.t, N.w, (size_t)N.dim);
    if (N.b) round_to(N.t, N.b, (size_t)N.dim);
    double *ref = malloc(nd * sizeof(double));
    for (int64_t i = 0; i < N.n; i++) {
        double mu = 0, var = 0;
        if (layer) {
            for (int64_t j = 0; j < N.dim; j++) mu += N.x[i * N.dim + j];
            mu /= (double)N.dim;
        }
        for (int64_t j = 0; j < N.dim; j++) var += (N.x[i * N.dim + j] - mu) * (N.x[i * N.dim + j] - mu);
        double rs = 1.0 / sqrt(var / (double)N.dim + N.eps);
        for (int64_t j = 0; j < N.dim; j++)
            ref[i * N.dim + j] = (N.x[i * N.dim + j] - mu) * rs * (N.w ? N.w[j] + (double)offset : 1.0) + (N.b ? N.b[j] : 0.0);
    }
    finch_dptr xp, wp, mean, rstd;
    finch_dptr y = norm_forward(&N, &xp, &wp, &mean, &rstd);
    float *yh = fzeros(nd);
    download(y, nd, N.t, yh);
    double err = rel_err_d(yh, ref, nd);
    CHECK(err < float_type_tol[ti], "%s forward: rel err %.3g", name, err);
    if (ti == 0) {   /* backward in f32 against finite differences */
        float *dx0 = rnd(nd, 55), *dw0 = rnd((size_t)N.dim, 56), *db0 = rnd((size_t)N.dim, 57);
        finch_dptr dy = upload(N.R, nd, N.t), dx = upload(dx0, nd, N.t);
        finch_dptr dw = upload(dw0, (size_t)N.dim, FINCH_DTYPE_F32), db = upload(db0, (size_t)N.dim, FINCH_DTYPE_F32);
        int rc = layer ? api->layernorm_backward(dev, NULL, N.n, N.dim, N.t, xp, N.t, wp, mean, rstd, dy, dx, 1,
                                                 N.w ? dw : (finch_dptr){0}, N.b ? db : (finch_dptr){0})
                       : api->rmsnorm_backward(dev, NULL, N.n, N.dim, N.t, xp, N.t, wp, offset, rstd, dy, dx, 1, dw);
        CHECK(rc == FINCH_OK, "%s backward: %s", name, api->last_error());
        struct { const char *what; float *host; size_t n; finch_dptr got; float *init; } g[3] = {
            {"dx", N.x, nd, dx, dx0}, {"dw", N.w, (size_t)N.dim, dw, dw0}, {"db", N.b, (size_t)N.dim, db, db0}};
        for (int i = 0; i < 3; i++) {
            if (!g[i].host) continue;
            float *an = fzeros(g[i].n), *fd = fzeros(g[i].n);
            download(g[i].got, g[i].n, FINCH_DTYPE_F32, an);
            for (size_t e = 0; e < g[i].n; e++) an[e] -= g[i].init[e];
            fd_grad(norm_loss, &N, g[i].host, g[i].n, 1e-2f, fd);
            char label[96];
            snprintf(label, sizeof label, "%s %s", name, g[i].what);
            check_grad(label, an, fd, g[i].n, FD_TOL);
            free(an), free(fd);
        }
        free(dx0), free(dw0), free(db0);
    }
    free(N.x), free(N.w), free(N.b), free(N.R), free(ref), free(yh);
    free_buffers();
}

static void test_norms(void)
{
    for (int ti = 0; ti < 3; ti++) {
        norm_case("rmsnorm", 0, ti, 1, 0, 0.0f);
        norm_case("rmsnorm offset 1", 0, ti, 1, 0, 1.0f);
        norm_case("layernorm", 1, ti, 1, 1, 0.0f);
        norm_case("layernorm without w and b", 1, ti, 0, 0, 0.0f);
    }
}

/* The residual add fused with RMSNorm equals axpby(1, x, 1, d) then rmsnorm_forward, bit for bit:
 * sum, y and rstd, with sum in its own buffer or over x or d, on one thread and on several. */
static int same_bytes(finch_dptr a, finch_dptr b, size_t bytes)
{
    unsigned char *ha = malloc(bytes + 1), *hb = malloc(bytes + 1);
    int ok = api->read(dev, NULL, a, ha, bytes) == FINCH_OK && api->read(dev, NULL, b, hb, bytes) == FINCH_OK &&
             memcmp(ha, hb, bytes) == 0;
    free(ha), free(hb);
    return ok;
}

static void add_rmsnorm_case(int ti, int64_t n, int64_t dim, float offset, int alias)
{
    static const char *const alias_names[3] = {"own sum", "sum over x", "sum over d"};
    finch_dtype t = float_types[ti];
    size_t nd = (size_t)(n * dim);
    float *x = rnd(nd, 61), *d = rnd(nd, 62), *w = rnd((size_t)dim, 63);
    for (size_t i = 0; i < nd; i++) x[i] = x[i] * 3 + 0.5f;
    finch_dptr out[2][3]; /* [fused, separate][sum, y, rstd] */
    for (int k = 0; k < 2; k++) {
        finch_dptr xp = upload(x, nd, t), dp = upload(d, nd, t), wp = upload(w, (size_t)dim, t);
        finch_dptr sum = alias == 1 ? xp : alias == 2 ? dp : zeros(nd, t);
        finch_dptr y = zeros(nd, t), rstd = zeros((size_t)n, FINCH_DTYPE_F32);
        int rc = k == 0 ? api->add_rmsnorm_forward(dev, NULL, n, dim, t, xp, dp, sum, t, wp, offset, 1e-6f, y, rstd)
                        : api->axpby(dev, NULL, (int64_t)nd, t, 1.0f, xp, 1.0f, dp, sum);
        if (!rc && k == 1) rc = api->rmsnorm_forward(dev, NULL, n, dim, t, sum, t, wp, offset, 1e-6f, y, rstd);
        CHECK(rc == FINCH_OK, "add_rmsnorm %s: %s", k ? "axpby + rmsnorm" : "fused", api->last_error());
        out[k][0] = sum, out[k][1] = y, out[k][2] = rstd;
    }
    static const char *const names[3] = {"sum", "y", "rstd"};
    size_t bytes[3] = {nd * elem_size(t), nd * elem_size(t), (size_t)n * 4};
    for (int i = 0; i < 3; i++)
        CHECK(same_bytes(out[0][i], out[1][i], bytes[i]), "add_rmsnorm %s n %lld dim %lld offset %g, %s: %s differs from axpby + rmsnorm",
              float_type_names[ti], (long long)n, (long long)dim, offset, alias_names[alias], names[i]);
    /* and the sum is the sum: x + d rounded to t */
    float *got = fzeros(nd);
    download(out[0][0], nd, t, got);
    round_to(t, x, nd), round_to(t, d, nd);
    int bad = 0;
    for (size_t i = 0; i < nd; i++) bad += got[i] != to_storage(t, x[i] + d[i]);
    CHECK(!bad, "add_rmsnorm %s: %d elements of sum are not x + d", float_type_names[ti], bad);
    free(x), free(d), free(w), free(got);
    free_buffers();
}

static void test_add_rmsnorm(void)
{
    for (int ti = 0; ti < 3; ti++)
        for (int alias = 0; alias < 3; alias++) {
            add_rmsnorm_case(ti, 5, 24, 0.0f, alias);
            add_rmsnorm_case(ti, 1, 2051, 1.0f, alias);
            add_rmsnorm_case(ti, 37, 1001, alias == 1 ? 1.0f : 0.0f, alias); /* more than one thread's work */
        }
    finch_dptr p = zeros(8, FINCH_DTYPE_F32);
    CHECK(api->add_rmsnorm_forward(dev, NULL, 2, 4, FINCH_DTYPE_F32, p, (finch_dptr){0}, p, FINCH_DTYPE_F32, p, 0.0f, 1e-6f, p,
                                   p) == FINCH_ERR_INVALID_ARGUMENT,
          "add_rmsnorm without d is refused");
    free_buffers();
}

/* ---------------------------------------------------------------- rope */

typedef struct rope {
    finch_rope_desc d;
    float *x, *R;
    int32_t *pos;
    float *inv_freq;
} rope;

static finch_rope_desc rope_upload(rope *P, const float *x)
{
    finch_rope_desc d = P->d;
    d.x = upload(x, (size_t)(d.n_tokens * d.ldx), d.dtype);
    d.positions = upload_i32(P->pos, (size_t)(d.n_sections * d.n_tokens));
    d.inv_freq = upload(P->inv_freq, (size_t)(d.rot_dim / 2), FINCH_DTYPE_F32);
    return d;
}

static double rope_loss(void *p)
{
    rope *P = p;
    finch_rope_desc d = rope_upload(P, P->x);
    CHECK(api->rope_forward(dev, NULL, &d) == FINCH_OK, "rope_forward: %s", api->last_error());
    size_t n = (size_t)(d.n_tokens * d.ldx);
    float *y = fzeros(n);
    download(d.x, n, d.dtype, y);
    double s = dsum_prod(y, P->R, n);
    free(y);
    return s;
}

static void rope_case(const char *name, int ti, int n_sections, const int *sections, int64_t rot_dim)
{
    rope P;
    memset(&P, 0, sizeof P);
    finch_rope_desc *d = &P.d;
    d->n_tokens = 11, d->n_heads = 3, d->head_dim = 24, d->rot_dim = rot_dim, d->dtype = float_types[ti];
    d->ldx = d->n_heads * d->head_dim + 4, d->n_sections = n_sections, d->attn_factor = 0.9f;
    for (int s = 0; s < n_sections; s++) d->sections[s] = sections[s];
    size_t n = (size_t)(d->n_tokens * d->ldx);
    int64_t half = rot_dim / 2;
    P.x = rnd(n, 61);
    P.R = rnd(n, 62);
    round_to(d->dtype, P.x, n);
    P.pos = malloc(sizeof(int32_t) * (size_t)(n_sections * d->n_tokens));
    for (int s = 0; s < n_sections; s++)
        for (int64_t t = 0; t < d->n_tokens; t++) P.pos[s * d->n_tokens + t] = (int32_t)((t * (s + 2) + 3 * s) % 17);
    P.inv_freq = malloc(sizeof(float) * (size_t)(half + 1));
    for (int64_t j = 0; j < half; j++) P.inv_freq[j] = (float)pow(10000.0, -2.0 * (double)j / (double)rot_dim);
    double *ref = malloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++) ref[i] = P.x[i];
    for (int64_t t = 0; t < d->n_tokens; t++)
        for (int64_t h = 0; h < d->n_heads; h++)
            for (int64_t j = 0; j < half; j++) {
                int s = 0, end = sections[0];
                while (j >= end) end += sections[++s];
                double th = (double)P.pos[s * d->n_tokens + t] * P.inv_freq[j];
                size_t i1 = (size_t)(t * d->ldx + h * d->head_dim + j), i2 = i1 + (size_t)half;
                ref[i1] = d->attn_factor * (P.x[i1] * cos(th) - P.x[i2] * sin(th));
                ref[i2] = d->attn_factor * (P.x[i2] * cos(th) + P.x[i1] * sin(th));
            }
    finch_rope_desc du = rope_upload(&P, P.x);
    CHECK(api->rope_forward(dev, NULL, &du) == FINCH_OK, "%s: %s", name, api->last_error());
    float *y = fzeros(n);
    download(du.x, n, d->dtype, y);
    double err = rel_err_d(y, ref, n);
    CHECK(err < (ti == 0 ? 5e-6 : float_type_tol[ti]), "%s forward: rel err %.3g", name, err);
    if (ti == 0) {
        finch_rope_desc db = rope_upload(&P, P.R);
        CHECK(api->rope_backward(dev, NULL, &db) == FINCH_OK, "%s backward", name);
        float *an = fzeros(n), *fd = fzeros(n);
        download(db.x, n, d->dtype, an);
        fd_grad(rope_loss, &P, P.x, n, 1e-2f, fd);
        char label[96];
        snprintf(label, sizeof label, "%s dx", name);
        check_grad(label, an, fd, n, FD_TOL);
        free(an), free(fd);
    }
    free(P.x), free(P.R), free(P.pos), free(P.inv_freq), free(ref), free(y);
    free_buffers();
}

static void test_rope(void)
{
    int one[1] = {8}, mrope[3] = {3, 3, 2}, two_d[2] = {6, 6};
    for (int ti = 0; ti < 3; ti++) {
        rope_case("rope partial", ti, 1, one, 16);
        rope_case("rope m-rope sections", ti, 3, mrope, 16);
        rope_case("rope 2-d full", ti, 2, two_d, 24);
    }
    rope P;
    memset(&P, 0, sizeof P);
    P.d = (finch_rope_desc){.n_tokens = 1, .n_heads = 1, .head_dim = 8, .rot_dim = 8, .dtype = FINCH_DTYPE_F32,
                            .ldx = 8, .n_sections = 1, .sections = {3}, .attn_factor = 1};
    float x[8] = {0}, f[4] = {1, 1, 1, 1};
    int32_t pos[1] = {0};
    P.pos = pos, P.inv_freq = f;
    finch_rope_desc d = rope_upload(&P, x);
    CHECK(api->rope_forward(dev, NULL, &d) == FINCH_ERR_INVALID_ARGUMENT, "sections must sum to rot_dim / 2");
    free_buffers();
}

/* ---------------------------------------------------------------- activations */

static double act_ref(finch_activation act, double p, double x)
{
    switch (act) {
    case FINCH_ACT_SILU: return x / (1 + exp(-x));
    case FINCH_ACT_GELU_ERF: return 0.5 * x * (1 + erf(x / sqrt(2.0)));
    case FINCH_ACT_GELU_TANH: return 0.5 * x * (1 + tanh(sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
    case FINCH_ACT_RELU: return x > 0 ? x : 0;
    case FINCH_ACT_SOFTCAP: return p * tanh(x / p);
    }
    return 0;
}

static const char *const act_names[5] = {"silu", "gelu_erf", "gelu_tanh", "relu", "softcap"};

typedef struct glu {
    finch_activation act;
    int64_t n, dim, ld;     /* gate and up share one [n, 2*dim] buffer (ld = 2 dim) */
    finch_dtype t;
    float *gu, *R;
} glu;

static double glu_loss(void *p)
{
    glu *G = p;
    size_t nd = (size_t)(G->n * G->dim);
    finch_dptr gu = upload(G->gu, (size_t)(G->n * G->ld), G->t), out = zeros(nd, G->t);
    finch_dptr up = {gu.buf, (size_t)G->dim * elem_size(G->t)};
    CHECK(api->glu_forward(dev, NULL, G->act, G->n, G->dim, G->t, gu, G->ld, up, G->ld, out) == FINCH_OK,
          "glu_forward: %s", api->last_error());
    float *o = fzeros(nd);
    download(out, nd, G->t, o);
    double s = dsum_prod(o, G->R, nd);
    free(o);
    return s;
}

static void test_glu(void)
{
    for (int a = 0; a < 4; a++)
        for (int ti = 0; ti < 3; ti++) {
            glu G = {.act = (finch_activation)a, .n = 5, .dim = 13, .ld = 26, .t = float_types[ti]};
            size_t ng = (size_t)(G.n * G.ld), nd = (size_t)(G.n * G.dim);
            G.gu = rnd(ng, 71);
            for (size_t i = 0; i < ng; i++) G.gu[i] = G.gu[i] * 2 + (G.gu[i] > 0 ? 0.1f : -0.1f);  /* away from relu's kink */
            G.R = rnd(nd, 72);
            round_to(G.t, G.gu, ng);
            double *ref = malloc(nd * sizeof(double));
            for (int64_t i = 0; i < G.n; i++)
                for (int64_t j = 0; j < G.dim; j++)
                    ref[i * G.dim + j] = act_ref(G.act, 0, G.gu[i * G.ld + j]) * G.gu[i * G.ld + G.dim + j];
            finch_dptr gu = upload(G.gu, ng, G.t), out = zeros(nd, G.t);
            finch_dptr up = {gu.buf, (size_t)G.dim * elem_size(G.t)};
            CHECK(api->glu_forward(dev, NULL, G.act, G.n, G.dim, G.t, gu, G.ld, up, G.ld, out) == FINCH_OK, "glu");
            float *o = fzeros(nd);
            download(out, nd, G.t, o);
            double err = rel_err_d(o, ref, nd);
            CHECK(err < float_type_tol[ti] * 2, "glu %s %s: rel err %.3g", act_names[a], float_type_names[ti], err);
            if (ti == 0) {   /* backward in place: dgate over gate, dup over up */
                finch_dptr dout = upload(G.R, nd, G.t);
                CHECK(api->glu_backward(dev, NULL, G.act, G.n, G.dim, G.t, gu, G.ld, up, G.ld, dout, gu, up) == FINCH_OK,
                      "glu_backward");
                float *an = fzeros(ng), *fd = fzeros(ng);
                download(gu, ng, G.t, an);
                fd_grad(glu_loss, &G, G.gu, ng, 1e-2f, fd);
                char label[64];
                snprintf(label, sizeof label, "glu %s dgate/dup", act_names[a]);
                check_grad(label, an, fd, ng, FD_TOL);
                free(an), free(fd);
            }
            free(G.gu), free(G.R), free(ref), free(o);
            free_buffers();
        }
}

typedef struct actc {
    finch_activation act;
    float param;
    int64_t n;
    float *x, *R;
} actc;

static double act_loss(void *p)
{
    actc *A = p;
    finch_dptr x = upload(A->x, (size_t)A->n, FINCH_DTYPE_F32), y = zeros((size_t)A->n, FINCH_DTYPE_F32);
    CHECK(api->activation_forward(dev, NULL, A->act, A->param, A->n, FINCH_DTYPE_F32, x, y) == FINCH_OK, "act");
    float *yh = fzeros((size_t)A->n);
    download(y, (size_t)A->n, FINCH_DTYPE_F32, yh);
    double s = dsum_prod(yh, A->R, (size_t)A->n);
    free(yh);
    return s;
}

static void test_activation(void)
{
    for (int a = 0; a < 5; a++)
        for (int ti = 0; ti < 3; ti++) {
            actc A = {.act = (finch_activation)a, .param = 2.0f, .n = 2051};
            finch_dtype t = float_types[ti];
            A.x = rnd((size_t)A.n, 81);
            for (int64_t i = 0; i < A.n; i++) A.x[i] = A.x[i] * 4 + (A.x[i] > 0 ? 0.1f : -0.1f);
            A.R = rnd((size_t)A.n, 82);
            round_to(t, A.x, (size_t)A.n);
            double *ref = malloc(sizeof(double) * (size_t)A.n);
            for (int64_t i = 0; i < A.n; i++) ref[i] = act_ref(A.act, A.param, A.x[i]);
            finch_dptr x = upload(A.x, (size_t)A.n, t), y = zeros((size_t)A.n, t);
            CHECK(api->activation_forward(dev, NULL, A.act, A.param, A.n, t, x, y) == FINCH_OK, "activation_forward");
            float *yh = fzeros((size_t)A.n);
            download(y, (size_t)A.n, t, yh);
            double err = rel_err_d(yh, ref, (size_t)A.n);
            CHECK(err < float_type_tol[ti] * 2, "activation %s %s: rel err %.3g", act_names[a], float_type_names[ti], err);
            if (ti == 0) {   /* dx over dy */
                A.n = 37;
                finch_dptr x37 = upload(A.x, 37, t), dy = upload(A.R, 37, t);
                CHECK(api->activation_backward(dev, NULL, A.act, A.param, 37, t, x37, dy, dy) == FINCH_OK, "act bwd");
                float an[37], fd[37];
                download(dy, 37, t, an);
                fd_grad(act_loss, &A, A.x, 37, 1e-2f, fd);
                char label[64];
                snprintf(label, sizeof label, "activation %s dx", act_names[a]);
                check_grad(label, an, fd, 37, FD_TOL);
            }
            free(A.x), free(A.R), free(ref), free(yh);
            free_buffers();
        }
    finch_dptr x = zeros(4, FINCH_DTYPE_F32);
    CHECK(api->activation_forward(dev, NULL, FINCH_ACT_SOFTCAP, 0.0f, 4, FINCH_DTYPE_F32, x, x) ==
              FINCH_ERR_INVALID_ARGUMENT, "softcap without a cap");
    free_buffers();
}

/* ---------------------------------------------------------------- embedding */

typedef struct emb {
    int64_t n, dim, vocab;
    int32_t *ids;
    float *table, *R, scale;
} emb;

static double emb_loss(void *p)
{
    emb *E = p;
    finch_dptr ids = upload_i32(E->ids, (size_t)E->n), tab = upload(E->table, (size_t)(E->vocab * E->dim), FINCH_DTYPE_F32);
    finch_dptr out = zeros((size_t)(E->n * E->dim), FINCH_DTYPE_F32);
    CHECK(api->embedding_forward(dev, NULL, E->n, E->dim, E->vocab, ids, FINCH_DTYPE_F32, tab, FINCH_DTYPE_F32, out,
                                 E->scale) == FINCH_OK, "embedding_forward");
    float *o = fzeros((size_t)(E->n * E->dim));
    download(out, (size_t)(E->n * E->dim), FINCH_DTYPE_F32, o);
    double s = dsum_prod(o, E->R, (size_t)(E->n * E->dim));
    free(o);
    return s;
}

static void test_embedding(void)
{
    int32_t ids[11] = {3, 0, 8, 3, 5, 5, 1, 3, 7, 2, 8};
    emb E = {.n = 11, .dim = 300, .vocab = 9, .ids = ids, .scale = 1.5f};
    size_t nt = (size_t)(E.vocab * E.dim), no = (size_t)(E.n * E.dim);
    E.table = rnd(nt, 91);
    E.R = rnd(no, 92);
    for (int ti = 0; ti < 3; ti++) {
        finch_dtype t = float_types[ti];
        float *tab = malloc(nt * sizeof(float)), *o = fzeros(no);
        memcpy(tab, E.table, nt * sizeof(float));
        round_to(t, tab, nt);
        double *ref = malloc(no * sizeof(double));
        for (int64_t i = 0; i < E.n; i++)
            for (int64_t j = 0; j < E.dim; j++) ref[i * E.dim + j] = E.scale * (double)tab[ids[i] * E.dim + j];
        finch_dptr idp = upload_i32(ids, 11), tp = upload(tab, nt, t), out = zeros(no, FINCH_DTYPE_F32);
        CHECK(api->embedding_forward(dev, NULL, E.n, E.dim, E.vocab, idp, t, tp, FINCH_DTYPE_F32, out, E.scale) ==
                  FINCH_OK, "embedding_forward %s", float_type_names[ti]);
        download(out, no, FINCH_DTYPE_F32, o);
        CHECK(rel_err_d(o, ref, no) < 1e-7, "embedding %s values", float_type_names[ti]);
        /* backward: dtable += scale * dout[t] at ids[t], with dout stored as t */
        float *dout = malloc(no * sizeof(float)), *init = rnd(nt, 93), *got = fzeros(nt);
        memcpy(dout, E.R, no * sizeof(float));
        round_to(t, dout, no);
        double *dref = malloc(nt * sizeof(double));
        for (size_t i = 0; i < nt; i++) dref[i] = init[i];
        for (int64_t i = 0; i < E.n; i++)
            for (int64_t j = 0; j < E.dim; j++) dref[ids[i] * E.dim + j] += E.scale * (double)dout[i * E.dim + j];
        finch_dptr dp = upload(dout, no, t), dt = upload(init, nt, FINCH_DTYPE_F32);
        CHECK(api->embedding_backward(dev, NULL, E.n, E.dim, E.vocab, idp, t, dp, dt, E.scale) == FINCH_OK,
              "embedding_backward");
        download(dt, nt, FINCH_DTYPE_F32, got);
        CHECK(rel_err_d(got, dref, nt) < 1e-6, "embedding_backward %s", float_type_names[ti]);
        if (ti == 0) {   /* the same gradient by finite differences, on a narrower table */
            emb S = E;
            S.dim = 7;
            float *tab7 = rnd((size_t)(S.vocab * S.dim), 94), *an = fzeros((size_t)(S.vocab * S.dim));
            float *fd = fzeros((size_t)(S.vocab * S.dim));
            S.table = tab7;
            finch_dptr d7 = upload(E.R, (size_t)(S.n * S.dim), FINCH_DTYPE_F32), t7 = zeros((size_t)(S.vocab * S.dim), FINCH_DTYPE_F32);
            CHECK(api->embedding_backward(dev, NULL, S.n, S.dim, S.vocab, idp, FINCH_DTYPE_F32, d7, t7, S.scale) == FINCH_OK,
                  "embedding_backward dim 7");
            download(t7, (size_t)(S.vocab * S.dim), FINCH_DTYPE_F32, an);
            S.R = E.R;
            fd_grad(emb_loss, &S, tab7, (size_t)(S.vocab * S.dim), 1e-2f, fd);
            check_grad("embedding dtable", an, fd, (size_t)(S.vocab * S.dim), FD_TOL);
            free(tab7), free(an), free(fd);
        }
        free(tab), free(o), free(ref), free(dout), free(init), free(got), free(dref);
        free_buffers();
    }
    /* a bad id is an error naming the id and its position, and nothing crashes */
    int32_t bad[4] = {1, 2, 9, 0};
    finch_dptr idp = upload_i32(bad, 4), tp = upload(E.table, nt, FINCH_DTYPE_F32), out = zeros(4 * 300, FINCH_DTYPE_F32);
    CHECK(api->embedding_forward(dev, NULL, 4, E.dim, E.vocab, idp, FINCH_DTYPE_F32, tp, FINCH_DTYPE_F32, out, 1.0f) ==
              FINCH_ERR_INVALID_ARGUMENT, "bad id");
    CHECK(strstr(api->last_error(), "id 9") && strstr(api->last_error(), "position 2"), "message: %s", api->last_error());
    bad[2] = -1;
    idp = upload_i32(bad, 4);
    CHECK(api->embedding_backward(dev, NULL, 4, E.dim, E.vocab, idp, FINCH_DTYPE_F32, out, tp, 1.0f) ==
              FINCH_ERR_INVALID_ARGUMENT, "negative id in backward");
    free(E.table), free(E.R);
    free_buffers();
}

int main(void)
{
    cpu_test_begin();
    test_linear();
    test_norms();
    test_add_rmsnorm();
    test_rope();
    test_glu();
    test_activation();
    test_embedding();
    return cpu_test_end();
}
