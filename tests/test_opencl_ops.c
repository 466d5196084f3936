/* Every numeric entry of the OpenCL plugin on random inputs of odd sizes, against references
 * computed here in double precision from the ABI's definitions in plugin.h: forward passes
 * directly, backward passes by central finite differences of those forward passes (so the
 * gradients are checked against the definition, not against another implementation of the
 * same formulas). f32 storage must agree to 1e-4 relative, bf16/f16 storage more loosely. */
#include <math.h>

#include "tests/test_opencl.h"

static ocl_test G;
#define API G.api
#define DEV G.dev

/* --- host memory, all released at the end (the suite also runs under LeakSanitizer) ---------- */
static void *held[4096];
static int n_held;

static void *hold(size_t bytes)
{
    void *p = calloc(1, bytes ? bytes : 1);
    if (n_held < 4096) held[n_held++] = p;
    return p;
}

static void release_all(void)
{
    for (int i = 0; i < n_held; i++) free(held[i]);
    n_held = 0;
}

/* A tensor on both sides: h the stored values (as floats), d the same in double, p on the device. */
typedef struct ht {
    float *h;
    double *d;
    finch_dptr p;
    size_t n;
    finch_dtype dt;
} ht;

static unsigned long long next_seed = 1;

static ht ht_make(size_t n, finch_dtype dt, float scale, int random)
{
    ht t = {hold(n * sizeof(float)), hold(n * sizeof(double)), {0}, n, dt};
    if (random) testing_fill_random(t.h, n, next_seed++);
    for (size_t i = 0; i < n; i++) t.h[i] *= scale;
    t.p = ocl_test_upload(&G, t.h, n, dt);
    for (size_t i = 0; i < n; i++) t.d[i] = t.h[i];
    return t;
}

static ht ht_random(size_t n, finch_dtype dt, float scale) { return ht_make(n, dt, scale, 1); }
static ht ht_zeros(size_t n, finch_dtype dt) { return ht_make(n, dt, 0.0f, 0); }

/* Downloads t into t.h. */
static float *ht_fetch(ht *t)
{
    ocl_test_download(&G, t->p, t->n, t->dt, t->h);
    return t->h;
}

static double tolerance(finch_dtype dt)
{
    return dt == FINCH_DTYPE_F32 ? 1e-4 : dt == FINCH_DTYPE_F16 ? 5e-3 : 2e-2;
}

static const char *dt_name(finch_dtype dt)
{
    return dt == FINCH_DTYPE_F32 ? "f32" : dt == FINCH_DTYPE_BF16 ? "bf16" : "f16";
}

/* ||got - ref|| / ||ref|| within tol. */
static void expect_close(const char *what, const float *got, const double *ref, size_t n, double tol)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)got[i] - ref[i];
        num += d * d;
        den += ref[i] * ref[i];
    }
    double err = den > 0 ? sqrt(num / den) : sqrt(num);
    CHECK(err <= tol && err == err, "%s: relative error %.3g > %.1g", what, err, tol);
}

static void expect_ok(int rc, const char *what)
{
    CHECK(rc == FINCH_OK, "%s: %s", what, API->last_error());
}

/* --- central differences of a scalar function of one double array ---------------------------- */
typedef double (*loss_fn)(void *ctx);

static void fd_grad(loss_fn f, void *ctx, double *p, size_t n, double *g)
{
    for (size_t i = 0; i < n; i++) {
        double keep = p[i], h = 1e-5;
        p[i] = keep + h;
        double up = f(ctx);
        p[i] = keep - h;
        double down = f(ctx);
        p[i] = keep;
        g[i] = (up - down) / (2 * h);
    }
}

/* ================================================================================================
 * gemm, axpby, sum_squares
 * ============================================================================================= */
static void gemm_ref(int ta, int tb, int64_t m, int64_t n, int64_t k, const double *a, int64_t lda, const double *b,
                     int64_t ldb, double *c, int64_t ldc, double alpha, double beta)
{
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            double s = 0;
            for (int64_t l = 0; l < k; l++)
                s += (ta ? a[l * lda + i] : a[i * lda + l]) * (tb ? b[j * ldb + l] : b[l * ldb + j]);
            c[i * ldc + j] = alpha * s + (beta != 0 ? beta * c[i * ldc + j] : 0);
        }
}

static void test_gemm(finch_dtype at, finch_dtype bt, finch_dtype ct, int ta, int tb)
{
    int64_t m = 37, n = 29, k = 70, batch = 3;
    int64_t lda = (ta ? m : k) + 3, ldb = (tb ? k : n) + 1, ldc = n + 2;
    int64_t sa = (ta ? k : m) * lda + 5, sb = (tb ? n : k) * ldb, sc = m * ldc + 1;
    ht a = ht_random((size_t)(sa * batch), at, 1), b = ht_random((size_t)(sb * batch), bt, 1);
    ht c = ht_random((size_t)(sc * batch), ct, 1);
    finch_gemm_desc d = {ta, tb, m, n, k, at, bt, ct, a.p, b.p, c.p, lda, ldb, ldc, sa, sb, sc, batch, 0.75f, -0.5f};
    expect_ok(API->gemm(DEV, NULL, &d), "gemm");
    double *ref = hold(c.n * sizeof(double));
    memcpy(ref, c.d, c.n * sizeof(double));
    for (int64_t q = 0; q < batch; q++)
        gemm_ref(ta, tb, m, n, k, a.d + q * sa, lda, b.d + q * sb, ldb, ref + q * sc, ldc, 0.75, -0.5);
    char what[96];
    snprintf(what, sizeof what, "gemm %s x %s -> %s, trans %d%d", dt_name(at), dt_name(bt), dt_name(ct), ta, tb);
    expect_close(what, ht_fetch(&c), ref, c.n, tolerance(at == FINCH_DTYPE_F32 && bt == FINCH_DTYPE_F32 && ct == FINCH_DTYPE_F32 ? FINCH_DTYPE_F32 : FINCH_DTYPE_BF16));
    /* beta = 0 ignores what C held, NaN included */
    API->fill(DEV, NULL, c.p, ct, (int64_t)c.n, NAN);
    d.beta = 0;
    expect_ok(API->gemm(DEV, NULL, &d), "gemm beta 0");
    for (int64_t q = 0; q < batch; q++)
        gemm_ref(ta, tb, m, n, k, a.d + q * sa, lda, b.d + q * sb, ldb, ref + q * sc, ldc, 0.75, 0.0);
    ht_fetch(&c);
    int nan = 0;
    for (int64_t q = 0; q < batch; q++)
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = 0; j < n; j++) nan += c.h[q * sc + i * ldc + j] != c.h[q * sc + i * ldc + j];
    CHECK(nan == 0, "%s, beta 0: %d NaNs leaked from C", what, nan);
}

static void test_axpby_sum_squares(finch_dtype dt)
{
    int64_t n = 100003;
    ht x = ht_random((size_t)n, dt, 1), y = ht_random((size_t)n, dt, 1), out = ht_zeros((size_t)n, dt);
    double *ref = hold((size_t)n * sizeof(double));
    expect_ok(API->axpby(DEV, NULL, n, dt, 1.5f, x.p, -0.25f, y.p, out.p), "axpby");
    for (int64_t i = 0; i < n; i++) ref[i] = 1.5 * x.d[i] - 0.25 * y.d[i];
    expect_close("axpby", ht_fetch(&out), ref, (size_t)n, tolerance(dt));
    finch_dptr none = {0};
    expect_ok(API->axpby(DEV, NULL, n, dt, 2.0f, x.p, 9.0f, none, x.p), "axpby in place, no y");
    for (int64_t i = 0; i < n; i++) ref[i] = 2.0 * x.d[i];
    expect_close("axpby in place", ht_fetch(&x), ref, (size_t)n, tolerance(dt));

    ht acc = ht_make(1, FINCH_DTYPE_F32, 0, 0);
    acc.h[0] = 3.0f;
    API->write(DEV, NULL, acc.p, acc.h, 4);
    expect_ok(API->sum_squares(DEV, NULL, n, dt, y.p, acc.p), "sum_squares");
    double ss = 3.0;
    for (int64_t i = 0; i < n; i++) ss += y.d[i] * y.d[i];
    expect_close("sum_squares", ht_fetch(&acc), &ss, 1, 1e-5);
}

/* ================================================================================================
 * NF4 quantised matmul
 * ============================================================================================= */
static const float nf4_code[16] = {-1.0f, -0.6961928f, -0.5250731f, -0.3949175f, -0.2844414f, -0.1847734f,
                                   -0.0910500f, 0.0f, 0.0795803f, 0.1609302f, 0.2461123f, 0.3379152f,
                                   0.4407098f, 0.5626170f, 0.7229568f, 1.0f};

typedef struct nf4_weight {
    finch_weight w;
    double *dense; /* the dequantised [out, in] */
} nf4_weight;

static nf4_weight make_nf4(int64_t out, int64_t in, int64_t blocksize)
{
    nf4_weight q;
    int64_t n = out * in, blocks = (n + blocksize - 1) / blocksize;
    int64_t bytes = (n + 1) / 2; /* an odd count leaves the last low nibble unused */
    unsigned char *packed = hold((size_t)bytes);
    for (int64_t i = 0; i < bytes; i++) packed[i] = (unsigned char)((i * 131 + 7) * 2654435761u >> 24);
    float *absmax = hold((size_t)blocks * sizeof(float)), code[16];
    testing_fill_random(absmax, (size_t)blocks, next_seed++);
    for (int64_t b = 0; b < blocks; b++) absmax[b] = 0.05f + fabsf(absmax[b]);
    memcpy(code, nf4_code, sizeof code);
    q.w.dtype = FINCH_DTYPE_NF4;
    q.w.data = ocl_test_alloc(&G, (size_t)bytes);
    API->write(DEV, NULL, q.w.data, packed, (size_t)bytes);
    q.w.absmax = ocl_test_upload(&G, absmax, (size_t)blocks, FINCH_DTYPE_F32);
    q.w.code = ocl_test_upload(&G, code, 16, FINCH_DTYPE_F32);
    q.w.blocksize = blocksize;
    q.dense = hold((size_t)n * sizeof(double));
    for (int64_t i = 0; i < n; i++) {
        int nib = (i & 1) ? packed[i / 2] & 15 : packed[i / 2] >> 4; /* first element in the high nibble */
        q.dense[i] = (double)code[nib] * absmax[i / blocksize];
    }
    return q;
}

static void test_qmatmul(finch_dtype dt)
{
    int64_t out = 45, in = 71, m = 11, blocksize = 64; /* 3195 elements: odd, and a partial last block */
    nf4_weight q = make_nf4(out, in, blocksize);
    int64_t ldx = in + 3, ldy = out + 1;
    ht x = ht_random((size_t)(m * ldx), dt, 1), y = ht_random((size_t)(m * ldy), dt, 1);
    double *ref = hold(y.n * sizeof(double));
    memcpy(ref, y.d, y.n * sizeof(double));
    expect_ok(API->qmatmul_forward(DEV, NULL, &q.w, out, in, m, dt, x.p, ldx, y.p, ldy, 0.5f), "qmatmul_forward");
    gemm_ref(0, 1, m, out, in, x.d, ldx, q.dense, in, ref, ldy, 1.0, 0.5);
    expect_close("qmatmul_forward", ht_fetch(&y), ref, y.n, tolerance(dt));

    ht dy = ht_random((size_t)(m * out), dt, 1), dx = ht_random((size_t)(m * in), dt, 1);
    double *rdx = hold(dx.n * sizeof(double));
    expect_ok(API->qmatmul_backward(DEV, NULL, &q.w, out, in, m, dt, dy.p, out, dx.p, in, 0.0f), "qmatmul_backward");
    gemm_ref(0, 0, m, in, out, dy.d, out, q.dense, in, rdx, in, 1.0, 0.0);
    expect_close("qmatmul_backward", ht_fetch(&dx), rdx, dx.n, tolerance(dt));
}

/* ================================================================================================
 * fused LoRA linear
 * ============================================================================================= */
typedef struct linear_case {
    int64_t m, in, out, rank, ldx;
    double scale, dropout;
    uint64_t seed;
    double *x, *w, *bias, *a, *b, *dy; /* bias may be NULL */
    double *y;                         /* [m, out] */
} linear_case;

static void linear_ref(linear_case *c)
{
    for (int64_t i = 0; i < c->m; i++) {
        double xa[64] = {0};
        for (int64_t r = 0; r < c->rank; r++)
            for (int64_t j = 0; j < c->in; j++) {
                double keep = finch_dropout_keep(c->seed, (uint64_t)(i * c->in + j), (float)c->dropout) ? 1.0 / (1.0 - c->dropout) : 0.0;
                if (c->dropout == 0) keep = 1;
                xa[r] += keep * c->x[i * c->ldx + j] * c->a[r * c->in + j];
            }
        for (int64_t o = 0; o < c->out; o++) {
            double s = c->bias ? c->bias[o] : 0;
            for (int64_t j = 0; j < c->in; j++) s += c->x[i * c->ldx + j] * c->w[o * c->in + j];
            for (int64_t r = 0; r < c->rank; r++) s += c->scale * xa[r] * c->b[o * c->rank + r];
            c->y[i * c->out + o] = s;
        }
    }
}

static double linear_loss(void *ctx)
{
    linear_case *c = ctx;
    linear_ref(c);
    double l = 0;
    for (int64_t i = 0; i < c->m * c->out; i++) l += c->y[i] * c->dy[i];
    return l;
}

static void test_linear(finch_dtype dt, float dropout, int quantised)
{
    int64_t m = 13, in = 64, out = 27, rank = 5, ldx = in + 2;
    if (quantised) out = 30; /* out * in a multiple of the blocksize */
    char what[128];
    snprintf(what, sizeof what, "linear %s dropout %.2f%s", dt_name(dt), dropout, quantised ? " nf4" : "");
    ht x = ht_random((size_t)(m * ldx), dt, 1), bias = ht_random((size_t)out, dt, 1);
    ht a = ht_random((size_t)(rank * in), dt, 0.5f), b = ht_random((size_t)(out * rank), dt, 0.5f);
    ht w = ht_random((size_t)(out * in), dt, 0.3f);
    nf4_weight q;
    finch_weight wd = {dt, w.p, {0}, {0}, 0};
    if (quantised) {
        q = make_nf4(out, in, 64);
        wd = q.w;
        memcpy(w.d, q.dense, (size_t)(out * in) * sizeof(double));
    }
    ht y = ht_random((size_t)(m * out), dt, 1), xa = ht_zeros((size_t)(m * rank), FINCH_DTYPE_F32);
    ht dy = ht_random((size_t)(m * out), dt, 1), dx = ht_random((size_t)(m * in), dt, 1);
    ht da = ht_random(a.n, FINCH_DTYPE_F32, 1), db = ht_random(b.n, FINCH_DTYPE_F32, 1);
    ht dw = ht_random(w.n, FINCH_DTYPE_F32, 1), dbias = ht_random(bias.n, FINCH_DTYPE_F32, 1);
    finch_linear_desc d = {
        .m = m, .in_features = in, .out_features = out, .rank = rank, .act_type = dt,
        .x = x.p, .ldx = ldx, .y = y.p, .ldy = out, .w = wd, .param_type = dt, .bias = bias.p,
        .lora_a = a.p, .lora_b = b.p, .scale = 1.75f, .dropout = dropout, .dropout_seed = 0x1234567890abcdefull,
        .xa = xa.p, .dy = dy.p, .lddy = out, .dx = dx.p, .lddx = in, .dx_accumulate = 1,
        .dw = quantised ? (finch_dptr){0} : dw.p, .dbias = dbias.p, .da = da.p, .db = db.p,
    };
    linear_case c = {m, in, out, rank, ldx, 1.75, dropout, d.dropout_seed, x.d, w.d, bias.d, a.d, b.d, dy.d,
                     hold((size_t)(m * out) * sizeof(double))};
    expect_ok(API->linear_forward(DEV, NULL, &d), what);
    linear_ref(&c);
    expect_close(what, ht_fetch(&y), c.y, y.n, tolerance(dt));
    double *rxa = hold(xa.n * sizeof(double));
    for (int64_t i = 0; i < m; i++)
        for (int64_t r = 0; r < rank; r++)
            for (int64_t j = 0; j < in; j++) {
                double keep = dropout == 0 ? 1 : finch_dropout_keep(c.seed, (uint64_t)(i * in + j), dropout) ? 1.0 / (1.0 - c.dropout) : 0.0;
                rxa[i * rank + r] += keep * x.d[i * ldx + j] * a.d[r * in + j];
            }
    expect_close("linear xa", ht_fetch(&xa), rxa, xa.n, tolerance(dt));

    expect_ok(API->linear_backward(DEV, NULL, &d), what);
    /* gradients of sum(y * dy), accumulated onto what the buffers held */
    struct { ht *t; double *param; size_t n; int64_t ld, cols; const char *name; } g[] = {
        {&dx, x.d, x.n, ldx, in, "dx"}, {&da, a.d, a.n, 0, 0, "dA"}, {&db, b.d, b.n, 0, 0, "dB"},
        {&dw, w.d, w.n, 0, 0, "dW"}, {&dbias, bias.d, bias.n, 0, 0, "dbias"},
    };
    for (int k = 0; k < 5; k++) {
        if (quantised && k == 3) continue;
        double *fd = hold(g[k].n * sizeof(double));
        fd_grad(linear_loss, &c, g[k].param, g[k].n, fd);
        size_t n = g[k].t->n;
        double *ref = hold(n * sizeof(double));
        for (size_t i = 0; i < n; i++) {
            size_t src = g[k].ld ? (i / (size_t)g[k].cols) * (size_t)g[k].ld + i % (size_t)g[k].cols : i;
            ref[i] = g[k].t->d[i] + fd[src];
        }
        char gw[160];
        snprintf(gw, sizeof gw, "%s %s", what, g[k].name);
        expect_close(gw, ht_fetch(g[k].t), ref, n, k == 0 ? tolerance(dt) : fmax(tolerance(dt), 1e-4));
    }
}

/* ================================================================================================
 * attention
 * ============================================================================================= */
typedef struct attn_case {
    int64_t T, H, KV, D, n_seqs;
    const int32_t *cu;
    int causal;
    int64_t window;
    double scale, softcap;
    double *q, *k, *v, *dout;
    double *o, *lse;
} attn_case;

static void attn_ref(attn_case *c)
{
    int64_t group = c->H / c->KV;
    double *s = hold((size_t)c->T * sizeof(double));
    for (int64_t seq = 0; seq < c->n_seqs; seq++)
        for (int64_t i = c->cu[seq]; i < c->cu[seq + 1]; i++)
            for (int64_t h = 0; h < c->H; h++) {
                int64_t g = h / group;
                double mx = -INFINITY;
                for (int64_t j = c->cu[seq]; j < c->cu[seq + 1]; j++) {
                    int visible = (!c->causal || j <= i) && (c->window == 0 || i - j < c->window);
                    double dot = 0;
                    for (int64_t d = 0; d < c->D; d++) dot += c->q[(i * c->H + h) * c->D + d] * c->k[(j * c->KV + g) * c->D + d];
                    dot *= c->scale;
                    if (c->softcap > 0) dot = c->softcap * tanh(dot / c->softcap);
                    s[j] = visible ? dot : -INFINITY;
                    if (s[j] > mx) mx = s[j];
                }
                double sum = 0;
                for (int64_t j = c->cu[seq]; j < c->cu[seq + 1]; j++) sum += exp(s[j] - mx);
                for (int64_t d = 0; d < c->D; d++) {
                    double acc = 0;
                    for (int64_t j = c->cu[seq]; j < c->cu[seq + 1]; j++)
                        acc += exp(s[j] - mx) / sum * c->v[(j * c->KV + g) * c->D + d];
                    c->o[(i * c->H + h) * c->D + d] = acc;
                }
                c->lse[h * c->T + i] = mx + log(sum);
            }
    n_held--; /* s was the last block held */
    free(s);
}

static double attn_loss(void *ctx)
{
    attn_case *c = ctx;
    attn_ref(c);
    double l = 0;
    for (int64_t i = 0; i < c->T * c->H * c->D; i++) l += c->o[i] * c->dout[i];
    return l;
}

static void test_attention(finch_dtype dt, int causal, int64_t window, float softcap)
{
    static const int32_t cu[] = {0, 5, 6, 17};
    int64_t T = 17, H = 4, KV = 2, D = 20, n_seqs = 3;
    char what[128];
    snprintf(what, sizeof what, "attention %s causal %d window %lld softcap %g", dt_name(dt), causal, (long long)window,
             softcap);
    ht q = ht_random((size_t)(T * H * D), dt, 1), k = ht_random((size_t)(T * KV * D), dt, 1);
    ht v = ht_random((size_t)(T * KV * D), dt, 1), o = ht_zeros((size_t)(T * H * D), dt);
    ht lse = ht_zeros((size_t)(H * T), FINCH_DTYPE_F32), dout = ht_random(o.n, dt, 1);
    ht dq = ht_random(q.n, dt, 1), dk = ht_random(k.n, dt, 1), dv = ht_random(v.n, dt, 1);
    finch_dptr pcu = ocl_test_alloc(&G, sizeof cu);
    API->write(DEV, NULL, pcu, cu, sizeof cu);
    float scale = softcap > 0 ? 0.9f : 1.0f / sqrtf((float)D);
    finch_attention_desc d = {
        .n_tokens = T, .n_seqs = n_seqs, .max_seqlen = 11, .cu_seqlens = pcu, .n_heads = H, .n_kv_heads = KV,
        .head_dim = D, .dtype = dt, .q = q.p, .ldq = H * D, .k = k.p, .ldk = KV * D, .v = v.p, .ldv = KV * D,
        .o = o.p, .ldo = H * D, .lse = lse.p, .scale = scale, .softcap = softcap, .causal = causal, .window = window,
        .dout = dout.p, .lddout = H * D, .dq = dq.p, .lddq = H * D, .dk = dk.p, .lddk = KV * D, .dv = dv.p, .lddv = KV * D,
    };
    attn_case c = {T, H, KV, D, n_seqs, cu, causal, window, scale, softcap, q.d, k.d, v.d, dout.d,
                   hold(o.n * sizeof(double)), hold(lse.n * sizeof(double))};
    expect_ok(API->attention_forward(DEV, NULL, &d), what);
    attn_ref(&c);
    expect_close(what, ht_fetch(&o), c.o, o.n, tolerance(dt));
    char sub[160];
    snprintf(sub, sizeof sub, "%s lse", what);
    expect_close(sub, ht_fetch(&lse), c.lse, lse.n, tolerance(dt));

    expect_ok(API->attention_backward(DEV, NULL, &d), what);
    ht *grads[3] = {&dq, &dk, &dv};
    double *params[3] = {q.d, k.d, v.d};
    const char *names[3] = {"dq", "dk", "dv"};
    for (int g = 0; g < 3; g++) {
        double *fd = hold(grads[g]->n * sizeof(double));
        fd_grad(attn_loss, &c, params[g], grads[g]->n, fd);
        snprintf(sub, sizeof sub, "%s %s", what, names[g]);
        expect_close(sub, ht_fetch(grads[g]), fd, grads[g]->n, dt == FINCH_DTYPE_F32 ? 1e-4 : 4e-2);
    }
}

/* ================================================================================================
 * norms, rope, activations
 * ============================================================================================= */
typedef struct norm_case {
    int64_t n, dim;
    int layer;      /* 0 RMSNorm, 1 LayerNorm */
    double offset, eps;
    double *x, *w, *b, *dy, *y, *mean, *rstd;
} norm_case;

static void norm_ref(norm_case *c)
{
    for (int64_t i = 0; i < c->n; i++) {
        const double *x = c->x + i * c->dim;
        double mu = 0, var = 0;
        if (c->layer) {
            for (int64_t j = 0; j < c->dim; j++) mu += x[j];
            mu /= (double)c->dim;
        }
        for (int64_t j = 0; j < c->dim; j++) var += (x[j] - mu) * (x[j] - mu);
        double r = 1.0 / sqrt(var / (double)c->dim + c->eps);
        c->mean[i] = mu;
        c->rstd[i] = r;
        for (int64_t j = 0; j < c->dim; j++)
            c->y[i * c->dim + j] = (x[j] - mu) * r * (c->w[j] + c->offset) + (c->b ? c->b[j] : 0);
    }
}

static double norm_loss(void *ctx)
{
    norm_case *c = ctx;
    norm_ref(c);
    double l = 0;
    for (int64_t i = 0; i < c->n * c->dim; i++) l += c->y[i] * c->dy[i];
    return l;
}

static void test_norm(finch_dtype dt, int layer)
{
    int64_t n = 7, dim = 301;
    char what[96], sub[128];
    snprintf(what, sizeof what, "%s %s", layer ? "layernorm" : "rmsnorm", dt_name(dt));
    ht x = ht_random((size_t)(n * dim), dt, 2), w = ht_random((size_t)dim, dt, 1), b = ht_random((size_t)dim, dt, 1);
    ht y = ht_zeros(x.n, dt), mean = ht_zeros((size_t)n, FINCH_DTYPE_F32), rstd = ht_zeros((size_t)n, FINCH_DTYPE_F32);
    ht dy = ht_random(x.n, dt, 1), dx = ht_random(x.n, dt, 1), dw = ht_random(w.n, FINCH_DTYPE_F32, 1);
    ht db = ht_random(b.n, FINCH_DTYPE_F32, 1);
    norm_case c = {n, dim, layer, layer ? 0 : 1, 1e-5, x.d, w.d, layer ? b.d : NULL, dy.d, hold(x.n * sizeof(double)),
                   hold((size_t)n * sizeof(double)), hold((size_t)n * sizeof(double))};
    if (layer) {
        expect_ok(API->layernorm_forward(DEV, NULL, n, dim, dt, x.p, dt, w.p, b.p, 1e-5f, y.p, mean.p, rstd.p), what);
        expect_ok(API->layernorm_backward(DEV, NULL, n, dim, dt, x.p, dt, w.p, mean.p, rstd.p, dy.p, dx.p, 1, dw.p,
                                          db.p), what);
    } else {
        expect_ok(API->rmsnorm_forward(DEV, NULL, n, dim, dt, x.p, dt, w.p, 1.0f, 1e-5f, y.p, rstd.p), what);
        expect_ok(API->rmsnorm_backward(DEV, NULL, n, dim, dt, x.p, dt, w.p, 1.0f, rstd.p, dy.p, dx.p, 1, dw.p), what);
    }
    norm_ref(&c);
    expect_close(what, ht_fetch(&y), c.y, y.n, tolerance(dt));
    snprintf(sub, sizeof sub, "%s rstd", what);
    expect_close(sub, ht_fetch(&rstd), c.rstd, rstd.n, 1e-5);
    if (layer) {
        snprintf(sub, sizeof sub, "%s mean", what);
        expect_close(sub, ht_fetch(&mean), c.mean, mean.n, 1e-5);
    }
    struct { ht *t; double *param; const char *name; } g[] = {{&dx, x.d, "dx"}, {&dw, w.d, "dw"}, {&db, b.d, "db"}};
    for (int k = 0; k < 2 + layer; k++) {
        double *fd = hold(g[k].t->n * sizeof(double));
        fd_grad(norm_loss, &c, g[k].param, g[k].t->n, fd);
        for (size_t i = 0; i < g[k].t->n; i++) fd[i] += g[k].t->d[i]; /* accumulated */
        snprintf(sub, sizeof sub, "%s %s", what, g[k].name);
        expect_close(sub, ht_fetch(g[k].t), fd, g[k].t->n, tolerance(dt));
    }
}

static void test_rope(finch_dtype dt, int n_sections)
{
    int64_t T = 9, H = 3, D = 22, rot = n_sections == 1 ? 16 : 20, ldx = H * D + 5;
    int sections[4] = {8, 0, 0, 0};
    if (n_sections == 3) { sections[0] = 4; sections[1] = 3; sections[2] = 3; }
    char what[96];
    snprintf(what, sizeof what, "rope %s sections %d", dt_name(dt), n_sections);
    ht x = ht_random((size_t)(T * ldx), dt, 1);
    int32_t pos[3 * 9];
    for (int i = 0; i < 3 * 9; i++) pos[i] = (i * 37) % 101 + (i % 9);
    float inv_freq[10];
    for (int i = 0; i < rot / 2; i++) inv_freq[i] = powf(10000.0f, -2.0f * (float)i / (float)rot);
    finch_dptr ppos = ocl_test_alloc(&G, sizeof pos), pinv = ocl_test_upload(&G, inv_freq, (size_t)rot / 2, FINCH_DTYPE_F32);
    API->write(DEV, NULL, ppos, pos, sizeof pos);
    finch_rope_desc d = {T, H, D, rot, dt, x.p, ldx, ppos, pinv, n_sections, {sections[0], sections[1], sections[2], 0}, 0.8f};
    expect_ok(API->rope_forward(DEV, NULL, &d), what);
    double *ref = hold(x.n * sizeof(double));
    memcpy(ref, x.d, x.n * sizeof(double));
    for (int64_t t = 0; t < T; t++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t k = 0; k < rot / 2; k++) {
                int s = 0, end = sections[0];
                while (s + 1 < n_sections && k >= end) end += sections[++s];
                double theta = (double)((float)pos[s * T + t] * inv_freq[k]);
                double cs = cos(theta) * 0.8, sn = sin(theta) * 0.8;
                double *p = ref + t * ldx + h * D;
                double a = p[k], b = p[k + rot / 2];
                p[k] = a * cs - b * sn;
                p[k + rot / 2] = b * cs + a * sn;
            }
    expect_close(what, ht_fetch(&x), ref, x.n, tolerance(dt));
    /* backward turns back: forward then backward is the identity times attn_factor^2 */
    expect_ok(API->rope_backward(DEV, NULL, &d), what);
    for (size_t i = 0; i < x.n; i++) ref[i] = x.d[i];
    for (int64_t t = 0; t < T; t++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t k = 0; k < rot; k++) ref[t * ldx + h * D + k] *= 0.64;
    char sub[128];
    snprintf(sub, sizeof sub, "%s backward", what);
    expect_close(sub, ht_fetch(&x), ref, x.n, 2 * tolerance(dt));
}

static double act_ref(int act, double x, double param)
{
    switch (act) {
    case FINCH_ACT_SILU: return x / (1 + exp(-x));
    case FINCH_ACT_GELU_ERF: return 0.5 * x * (1 + erf(x / sqrt(2.0)));
    case FINCH_ACT_GELU_TANH: return 0.5 * x * (1 + tanh(sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
    case FINCH_ACT_RELU: return x > 0 ? x : 0;
    default: return param * tanh(x / param);
    }
}

static double act_grad_fd(int act, double x, double param)
{
    double h = 1e-6;
    return (act_ref(act, x + h, param) - act_ref(act, x - h, param)) / (2 * h);
}

static void test_activations(finch_dtype dt)
{
    int64_t n = 1001, rows = 7, dim = 45, ldg = 2 * dim + 1;
    for (int act = FINCH_ACT_SILU; act <= FINCH_ACT_SOFTCAP; act++) {
        char what[96];
        snprintf(what, sizeof what, "activation %d %s", act, dt_name(dt));
        ht x = ht_random((size_t)n, dt, 4), y = ht_zeros((size_t)n, dt), dy = ht_random((size_t)n, dt, 1);
        double *ref = hold((size_t)n * sizeof(double));
        expect_ok(API->activation_forward(DEV, NULL, act, 2.5f, n, dt, x.p, y.p), what);
        for (int64_t i = 0; i < n; i++) ref[i] = act_ref(act, x.d[i], 2.5);
        expect_close(what, ht_fetch(&y), ref, (size_t)n, tolerance(dt));
        expect_ok(API->activation_backward(DEV, NULL, act, 2.5f, n, dt, x.p, dy.p, dy.p), what);
        for (int64_t i = 0; i < n; i++) ref[i] = dy.d[i] * act_grad_fd(act, x.d[i], 2.5);
        strcat(what, " backward");
        expect_close(what, ht_fetch(&dy), ref, (size_t)n, tolerance(dt));
        if (act == FINCH_ACT_SOFTCAP) continue;

        /* gated: gate and up interleaved in one [rows, 2 dim + 1] buffer; backward in place */
        snprintf(what, sizeof what, "glu %d %s", act, dt_name(dt));
        ht gu = ht_random((size_t)(rows * ldg), dt, 3), out = ht_zeros((size_t)(rows * dim), dt);
        ht dout = ht_random(out.n, dt, 1);
        finch_dptr gate = gu.p, up = {gu.p.buf, gu.p.offset + (size_t)dim * ocl_test_esize(dt)};
        expect_ok(API->glu_forward(DEV, NULL, act, rows, dim, dt, gate, ldg, up, ldg, out.p), what);
        double *r = hold(out.n * sizeof(double)), *rg = hold(gu.n * sizeof(double));
        memcpy(rg, gu.d, gu.n * sizeof(double));
        for (int64_t i = 0; i < rows; i++)
            for (int64_t j = 0; j < dim; j++) {
                double g = gu.d[i * ldg + j], u = gu.d[i * ldg + dim + j], d = dout.d[i * dim + j];
                r[i * dim + j] = act_ref(act, g, 0) * u;
                rg[i * ldg + j] = d * u * act_grad_fd(act, g, 0);
                rg[i * ldg + dim + j] = d * act_ref(act, g, 0);
            }
        expect_close(what, ht_fetch(&out), r, out.n, tolerance(dt));
        expect_ok(API->glu_backward(DEV, NULL, act, rows, dim, dt, gate, ldg, up, ldg, dout.p, gate, up), what);
        strcat(what, " backward in place");
        expect_close(what, ht_fetch(&gu), rg, gu.n, tolerance(dt));
    }
}

/* ================================================================================================
 * embedding, cross-entropy, AdamW
 * ============================================================================================= */
static void test_embedding(finch_dtype dt)
{
    int64_t n = 23, dim = 37, vocab = 11;
    int32_t ids[23];
    for (int i = 0; i < n; i++) ids[i] = (i * 7 + 3) % (int)vocab; /* repeats: the backward must add them all */
    finch_dptr pid = ocl_test_alloc(&G, sizeof ids);
    API->write(DEV, NULL, pid, ids, sizeof ids);
    ht table = ht_random((size_t)(vocab * dim), dt, 1), out = ht_zeros((size_t)(n * dim), dt);
    expect_ok(API->embedding_forward(DEV, NULL, n, dim, vocab, pid, dt, table.p, dt, out.p, 1.5f), "embedding_forward");
    double *ref = hold(out.n * sizeof(double));
    for (int64_t t = 0; t < n; t++)
        for (int64_t j = 0; j < dim; j++) ref[t * dim + j] = 1.5 * table.d[ids[t] * dim + j];
    expect_close("embedding_forward", ht_fetch(&out), ref, out.n, tolerance(dt));
    ht dout = ht_random(out.n, dt, 1), dtable = ht_random(table.n, FINCH_DTYPE_F32, 1);
    expect_ok(API->embedding_backward(DEV, NULL, n, dim, vocab, pid, dt, dout.p, dtable.p, 0.5f), "embedding_backward");
    double *rt = hold(table.n * sizeof(double));
    memcpy(rt, dtable.d, table.n * sizeof(double));
    for (int64_t t = 0; t < n; t++)
        for (int64_t j = 0; j < dim; j++) rt[ids[t] * dim + j] += 0.5 * dout.d[t * dim + j];
    expect_close("embedding_backward", ht_fetch(&dtable), rt, table.n, 1e-5);
}

typedef struct ce_case {
    int64_t n, vocab;
    const int32_t *labels;
    double softcap, grad_scale;
    double *logits; /* [n, vocab] */
} ce_case;

static double ce_loss(void *ctx)
{
    ce_case *c = ctx;
    double total = 0;
    double *z = hold((size_t)c->vocab * sizeof(double));
    for (int64_t t = 0; t < c->n; t++) {
        if (c->labels[t] == FINCH_IGNORE_INDEX) continue;
        double mx = -INFINITY;
        for (int64_t j = 0; j < c->vocab; j++) {
            double v = c->logits[t * c->vocab + j];
            if (c->softcap > 0) v = c->softcap * tanh(v / c->softcap);
            z[j] = v;
            if (v > mx) mx = v;
        }
        double s = 0;
        for (int64_t j = 0; j < c->vocab; j++) s += exp(z[j] - mx);
        total += mx + log(s) - z[c->labels[t]];
    }
    n_held--;
    free(z);
    return total * c->grad_scale;
}

/* d(loss)/d(logits), row by row (a row's loss depends on that row only). */
static void ce_grad(const ce_case *c, double *g)
{
    for (int64_t t = 0; t < c->n; t++) {
        ce_case row = {1, c->vocab, c->labels + t, c->softcap, c->grad_scale, c->logits + t * c->vocab};
        fd_grad(ce_loss, &row, row.logits, (size_t)c->vocab, g + t * c->vocab);
    }
}

static void test_cross_entropy(finch_dtype dt, float softcap)
{
    int64_t n = 9, vocab = 1003, ld = vocab + 4;
    int32_t labels[9] = {5, -100, 1002, 0, 77, -100, 500, 3, 999};
    char what[96];
    snprintf(what, sizeof what, "cross_entropy %s softcap %g", dt_name(dt), softcap);
    ht logits = ht_random((size_t)(n * ld), dt, 4);
    finch_dptr plab = ocl_test_alloc(&G, sizeof labels);
    API->write(DEV, NULL, plab, labels, sizeof labels);
    ht acc = ht_random(2, FINCH_DTYPE_F32, 1);
    finch_cross_entropy_desc d = {n, vocab, dt, logits.p, ld, plab, softcap, 0.125f, acc.p, {acc.p.buf, 4}, logits.p, ld};
    expect_ok(API->cross_entropy(DEV, NULL, &d), what); /* dlogits aliases logits */
    double *z = hold((size_t)(n * vocab) * sizeof(double));
    for (int64_t t = 0; t < n; t++)
        for (int64_t j = 0; j < vocab; j++) z[t * vocab + j] = logits.d[t * ld + j];
    ce_case c = {n, vocab, labels, softcap, 1.0, z};
    double ref[2] = {acc.d[0] + ce_loss(&c), acc.d[1] + 7};
    expect_close(what, ht_fetch(&acc), ref, 2, tolerance(dt));
    c.grad_scale = 0.125;
    double *fd = hold((size_t)(n * vocab) * sizeof(double));
    ce_grad(&c, fd);
    ht_fetch(&logits);
    float *got = hold((size_t)(n * vocab) * sizeof(float));
    for (int64_t t = 0; t < n; t++)
        for (int64_t j = 0; j < vocab; j++) got[t * vocab + j] = logits.h[t * ld + j];
    strcat(what, " dlogits");
    expect_close(what, got, fd, (size_t)(n * vocab), tolerance(dt));
}

/* The loss through logits = hidden W^T: its gradients follow from d(loss)/d(logits) by the chain
 * rule, dhidden = G W and dW = G^T hidden. */
static void test_linear_cross_entropy(finch_dtype dt, int quantised)
{
    int64_t n = 11, dim = 32, vocab = 257, ldh = dim + 3;
    int32_t labels[11] = {5, -100, 256, 0, 77, 100, 200, 3, -100, 9, 128};
    char what[96];
    snprintf(what, sizeof what, "linear_cross_entropy %s%s", dt_name(dt), quantised ? " nf4" : "");
    ht hidden = ht_random((size_t)(n * ldh), dt, 1), w = ht_random((size_t)(vocab * dim), dt, 0.5f);
    finch_weight wd = {dt, w.p, {0}, {0}, 0};
    if (quantised) {
        nf4_weight q = make_nf4(vocab, dim, 64);
        wd = q.w;
        memcpy(w.d, q.dense, w.n * sizeof(double));
    }
    finch_dptr plab = ocl_test_alloc(&G, sizeof labels);
    API->write(DEV, NULL, plab, labels, sizeof labels);
    ht acc = ht_zeros(2, FINCH_DTYPE_F32), dh = ht_random(hidden.n, dt, 1), dw = ht_random(w.n, FINCH_DTYPE_F32, 1);
    finch_linear_cross_entropy_desc d = {
        .n_tokens = n, .dim = dim, .vocab = vocab, .chunk_tokens = 4, .act_type = dt, .hidden = hidden.p, .ldh = ldh,
        .w = wd, .labels = plab, .softcap = 3.0f, .grad_scale = 0.5f, .loss_sum = acc.p, .count = {acc.p.buf, 4},
        .dhidden = dh.p, .lddh = ldh, .dhidden_accumulate = 1, .dw = dw.p,
    };
    if (quantised) { /* a frozen 4-bit weight has no gradient */
        CHECK(API->linear_cross_entropy(DEV, NULL, &d) == FINCH_ERR_INVALID_ARGUMENT, "%s: dw of an NF4 weight", what);
        d.dw.buf = NULL;
    }
    expect_ok(API->linear_cross_entropy(DEV, NULL, &d), what);
    double *z = hold((size_t)(n * vocab) * sizeof(double));
    gemm_ref(0, 1, n, vocab, dim, hidden.d, ldh, w.d, dim, z, vocab, 1.0, 0.0);
    ce_case c = {n, vocab, labels, 3.0, 1.0, z};
    double ref[2] = {ce_loss(&c), 9};
    expect_close(what, ht_fetch(&acc), ref, 2, tolerance(dt));
    c.grad_scale = 0.5;
    double *g = hold((size_t)(n * vocab) * sizeof(double));
    ce_grad(&c, g);
    double *rdh = hold(dh.n * sizeof(double)), *rdw = hold(dw.n * sizeof(double));
    memcpy(rdh, dh.d, dh.n * sizeof(double));
    memcpy(rdw, dw.d, dw.n * sizeof(double));
    gemm_ref(0, 0, n, dim, vocab, g, vocab, w.d, dim, rdh, ldh, 1.0, 1.0);
    gemm_ref(1, 0, vocab, dim, n, g, vocab, hidden.d, ldh, rdw, dim, 1.0, 1.0);
    char sub[128];
    snprintf(sub, sizeof sub, "%s dhidden", what);
    expect_close(sub, ht_fetch(&dh), rdh, dh.n, tolerance(dt));
    snprintf(sub, sizeof sub, "%s dw", what);
    if (!quantised) expect_close(sub, ht_fetch(&dw), rdw, dw.n, tolerance(dt));
}

static void test_adamw(finch_dtype pt)
{
    int64_t n = 1027;
    int master = pt != FINCH_DTYPE_F32;
    ht p = ht_random((size_t)n, pt, 1), mp = ht_random((size_t)n, FINCH_DTYPE_F32, 1), g = ht_random((size_t)n, FINCH_DTYPE_F32, 1);
    ht m = ht_random((size_t)n, FINCH_DTYPE_F32, 0.1f), v = ht_random((size_t)n, FINCH_DTYPE_F32, 0.1f);
    for (int64_t i = 0; i < n; i++) v.h[i] = v.h[i] * v.h[i], v.d[i] = v.h[i];
    API->write(DEV, NULL, v.p, v.h, (size_t)n * 4);
    finch_adamw_desc d = {n, pt, p.p, master ? mp.p : (finch_dptr){0}, g.p, m.p, v.p, 1e-2f, 0.9f, 0.999f, 1e-8f, 0.01f,
                          0.5f, 1 - 0.9f * 0.9f, 1 - 0.999f * 0.999f};
    expect_ok(API->adamw_step(DEV, NULL, &d), "adamw_step");
    double *rp = hold((size_t)n * sizeof(double)), *rm = hold((size_t)n * sizeof(double)), *rv = hold((size_t)n * sizeof(double));
    for (int64_t i = 0; i < n; i++) {
        double gi = g.d[i] * 0.5, pi = master ? mp.d[i] : p.d[i];
        pi -= 1e-2 * 0.01 * pi;
        rm[i] = 0.9 * m.d[i] + 0.1 * gi;
        rv[i] = 0.999 * v.d[i] + (1 - 0.999) * gi * gi;
        pi -= 1e-2 * (rm[i] / d.bias_correction1) / (sqrt(rv[i] / d.bias_correction2) + 1e-8);
        rp[i] = pi;
    }
    expect_close("adamw m", ht_fetch(&m), rm, (size_t)n, 1e-6);
    expect_close("adamw v", ht_fetch(&v), rv, (size_t)n, 1e-5);
    expect_close("adamw param", master ? ht_fetch(&mp) : ht_fetch(&p), rp, (size_t)n, 1e-6);
    if (master) expect_close("adamw param copy", ht_fetch(&p), rp, (size_t)n, tolerance(pt));
}

int main(void)
{
    int rc = ocl_test_open(&G);
    if (rc) return rc;
    const finch_dtype F32 = FINCH_DTYPE_F32, BF16 = FINCH_DTYPE_BF16, F16 = FINCH_DTYPE_F16;
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) test_gemm(F32, F32, F32, ta, tb);
    test_gemm(BF16, F16, F32, 0, 1);
    test_gemm(F32, BF16, BF16, 1, 0);
    test_axpby_sum_squares(F32);
    test_axpby_sum_squares(BF16);
    test_qmatmul(F32);
    test_qmatmul(BF16);
    test_linear(F32, 0.0f, 0);
    test_linear(F32, 0.25f, 0);
    test_linear(F32, 0.1f, 1);
    test_linear(BF16, 0.0f, 0);
    test_attention(F32, 1, 0, 0);
    test_attention(F32, 1, 3, 0);
    test_attention(F32, 0, 0, 5);
    test_attention(F32, 0, 2, 0);
    test_attention(F16, 1, 0, 0);
    test_norm(F32, 0);
    test_norm(F32, 1);
    test_norm(BF16, 0);
    test_rope(F32, 1);
    test_rope(F32, 3);
    test_rope(BF16, 1);
    test_activations(F32);
    test_activations(F16);
    test_embedding(F32);
    test_embedding(BF16);
    test_cross_entropy(F32, 0);
    test_cross_entropy(F32, 30);
    test_cross_entropy(BF16, 0);
    test_linear_cross_entropy(F32, 0);
    test_linear_cross_entropy(F32, 1);
    test_adamw(F32);
    test_adamw(BF16);
    ocl_test_close(&G);
    release_all();
    return testing_finish();
}
