/* CPU backend: attention over packed sequences (causal, sliding window, GQA, softcap) against a
 * double reference, and its backward pass against finite differences. */
#include "tests/test_cpu_common.h"

typedef struct att {
    int64_t n, nh, nkv, hd, ldq, ldk, ldv, ldo, window;
    int causal;
    float scale, softcap;
    finch_dtype t;
    int32_t cu[3];
    float *q, *k, *v, *R;
} att;

static finch_attention_desc att_desc(att *A)
{
    finch_attention_desc d = {.n_tokens = A->n, .n_seqs = 2, .max_seqlen = 6, .n_heads = A->nh,
                              .n_kv_heads = A->nkv, .head_dim = A->hd, .dtype = A->t, .ldq = A->ldq,
                              .ldk = A->ldk, .ldv = A->ldv, .ldo = A->ldo, .scale = A->scale,
                              .softcap = A->softcap, .causal = A->causal, .window = A->window};
    d.cu_seqlens = upload_i32(A->cu, 3);
    d.q = upload(A->q, (size_t)(A->n * A->ldq), A->t);
    d.k = upload(A->k, (size_t)(A->n * A->ldk), A->t);
    d.v = upload(A->v, (size_t)(A->n * A->ldv), A->t);
    d.o = zeros((size_t)(A->n * A->ldo), A->t);
    d.lse = zeros((size_t)(A->nh * A->n), FINCH_DTYPE_F32);
    return d;
}

static double att_loss(void *p)
{
    att *A = p;
    finch_attention_desc d = att_desc(A);
    CHECK(api->attention_forward(dev, NULL, &d) == FINCH_OK, "attention_forward: %s", api->last_error());
    size_t no = (size_t)(A->n * A->ldo);
    float *o = fzeros(no);
    download(d.o, no, A->t, o);
    double s = dsum_prod(o, A->R, no);
    free(o);
    return s;
}

static void reference(const att *A, double *o, double *lse)
{
    int64_t group = A->nh / A->nkv;
    double *p = malloc(sizeof(double) * (size_t)A->n);
    for (int s = 0; s < 2; s++) {
        int64_t start = A->cu[s], len = A->cu[s + 1] - start;
        for (int64_t h = 0; h < A->nh; h++)
            for (int64_t i = 0; i < len; i++) {
                const float *q = A->q + (start + i) * A->ldq + h * A->hd;
                double mx = -INFINITY, sum = 0;
                for (int64_t j = 0; j < len; j++) {
                    p[j] = NAN;
                    if ((A->causal && j > i) || (A->window && i - j >= A->window)) continue;
                    const float *k = A->k + (start + j) * A->ldk + (h / group) * A->hd;
                    double sc = 0;
                    for (int64_t e = 0; e < A->hd; e++) sc += (double)q[e] * k[e];
                    sc *= A->scale;
                    if (A->softcap > 0) sc = A->softcap * tanh(sc / A->softcap);
                    p[j] = sc;
                    if (sc > mx) mx = sc;
                }
                for (int64_t j = 0; j < len; j++)
                    if (!isnan(p[j])) sum += exp(p[j] - mx);
                double *orow = o + (start + i) * A->ldo + h * A->hd;
                for (int64_t e = 0; e < A->hd; e++) orow[e] = 0;
                for (int64_t j = 0; j < len; j++) {
                    if (isnan(p[j])) continue;
                    const float *v = A->v + (start + j) * A->ldv + (h / group) * A->hd;
                    for (int64_t e = 0; e < A->hd; e++) orow[e] += exp(p[j] - mx) / sum * v[e];
                }
                lse[h * A->n + start + i] = mx + log(sum);
            }
    }
    free(p);
}

static void att_case(const char *name, int ti, int causal, int64_t window, float softcap, int grads)
{
    att A = {.n = 11, .nh = 6, .nkv = 2, .hd = 24, .window = window, .causal = causal, .scale = 0.45f,
             .softcap = softcap, .t = float_types[ti], .cu = {0, 5, 11}};
    A.ldq = A.nh * A.hd + 3, A.ldk = A.nkv * A.hd + 1, A.ldv = A.nkv * A.hd + 5, A.ldo = A.nh * A.hd + 2;
    size_t nq = (size_t)(A.n * A.ldq), nk = (size_t)(A.n * A.ldk), nv = (size_t)(A.n * A.ldv), no = (size_t)(A.n * A.ldo);
    A.q = rnd(nq, 101), A.k = rnd(nk, 102), A.v = rnd(nv, 103), A.R = rnd(no, 104);
    round_to(A.t, A.q, nq), round_to(A.t, A.k, nk), round_to(A.t, A.v, nv);
    double *oref = calloc(no, sizeof(double)), *lref = calloc((size_t)(A.nh * A.n), sizeof(double));
    reference(&A, oref, lref);
    for (size_t i = 0; i < no; i++) /* the padding columns of o are never written: compare them as 0 */
        if (i % (size_t)A.ldo >= (size_t)(A.nh * A.hd)) oref[i] = 0;
    finch_attention_desc d = att_desc(&A);
    CHECK(api->attention_forward(dev, NULL, &d) == FINCH_OK, "%s: %s", name, api->last_error());
    float *o = fzeros(no), *lse = fzeros((size_t)(A.nh * A.n));
    download(d.o, no, A.t, o);
    download(d.lse, (size_t)(A.nh * A.n), FINCH_DTYPE_F32, lse);
    double err = rel_err_d(o, oref, no), lerr = rel_err_d(lse, lref, (size_t)(A.nh * A.n));
    CHECK(err < float_type_tol[ti], "%s %s: o rel err %.3g", name, float_type_names[ti], err);
    CHECK(lerr < (ti == 0 ? 1e-6 : 1e-5), "%s %s: lse rel err %.3g", name, float_type_names[ti], lerr);
    if (grads) {
        float *dq0 = rnd(nq, 105), *dk0 = rnd(nk, 106), *dv0 = rnd(nv, 107);
        d.dout = upload(A.R, no, A.t), d.lddout = A.ldo;
        d.dq = upload(dq0, nq, A.t), d.lddq = A.ldq;   /* overwritten, not accumulated */
        d.dk = upload(dk0, nk, A.t), d.lddk = A.ldk;
        d.dv = upload(dv0, nv, A.t), d.lddv = A.ldv;
        CHECK(api->attention_backward(dev, NULL, &d) == FINCH_OK, "%s backward: %s", name, api->last_error());
        struct { const char *what; float *host; size_t n; int64_t ld, width; finch_dptr got; } g[3] = {
            {"dq", A.q, nq, A.ldq, A.nh * A.hd, d.dq}, {"dk", A.k, nk, A.ldk, A.nkv * A.hd, d.dk},
            {"dv", A.v, nv, A.ldv, A.nkv * A.hd, d.dv}};
        for (int i = 0; i < 3; i++) {
            float *an = fzeros(g[i].n), *fd = fzeros(g[i].n);
            download(g[i].got, g[i].n, A.t, an);
            fd_grad_strided(att_loss, &A, g[i].host, g[i].n, 1e-2f, fd, 3);
            /* compare the probed elements; padding columns keep what was there */
            size_t m = 0;
            for (size_t e = 0; e < g[i].n; e++)
                if ((int64_t)(e % (size_t)g[i].ld) < g[i].width && !isnan(fd[e])) an[m] = an[e], fd[m] = fd[e], m++;
            char label[96];
            snprintf(label, sizeof label, "%s %s", name, g[i].what);
            check_grad(label, an, fd, m, 1e-2);
            free(an), free(fd);
        }
        free(dq0), free(dk0), free(dv0);
    }
    free(A.q), free(A.k), free(A.v), free(A.R), free(oref), free(lref), free(o), free(lse);
    free_buffers();
}

static void test_bad_input(void)
{
    att A = {.n = 11, .nh = 6, .nkv = 4, .hd = 8, .ldq = 48, .ldk = 32, .ldv = 32, .ldo = 48, .causal = 1,
             .scale = 1, .t = FINCH_DTYPE_F32, .cu = {0, 5, 11}};
    A.q = fzeros(11 * 48), A.k = fzeros(11 * 32), A.v = fzeros(11 * 32);
    finch_attention_desc d = att_desc(&A);
    CHECK(api->attention_forward(dev, NULL, &d) == FINCH_ERR_INVALID_ARGUMENT, "6 heads over 4 kv heads");
    A.nkv = 2, A.cu[2] = 12;
    d = att_desc(&A);
    CHECK(api->attention_forward(dev, NULL, &d) == FINCH_ERR_INVALID_ARGUMENT, "cu_seqlens past n_tokens");
    free(A.q), free(A.k), free(A.v);
    free_buffers();
}

int main(void)
{
    cpu_test_begin();
    for (int ti = 0; ti < 3; ti++) {
        att_case("causal", ti, 1, 0, 0.0f, ti == 0);
        att_case("causal window 3 softcap 2", ti, 1, 3, 2.0f, ti == 0);
        att_case("bidirectional", ti, 0, 0, 0.0f, ti == 0);
        att_case("bidirectional window 3", ti, 0, 3, 0.0f, 0);
    }
    test_bad_input();
    return cpu_test_end();
}
