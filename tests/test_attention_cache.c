/* attention_cache_forward (plugin ABI 1.1) against a double-precision reference, on the CPU backend
 * and, when it is built and a platform is present, the OpenCL plugin: sequences whose queries are the
 * last rows of a longer key range, keys placed at gaps inside a larger cache, causal and not, sliding
 * windows, softcaps, GQA, f32 and bf16 storage, padded row strides; and, with kv_len == q_len, the
 * same result as attention_forward. */
#include "backends/backend.h"
#include "core/half.h"
#include "tests/testing.h"

#include <dlfcn.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct dev_ctx {
    const char *name;
    const finch_plugin_api *api;
    finch_plugin_device *dev;
    finch_plugin_buffer *bufs[64];
    int n_bufs;
} dev_ctx;

static size_t esize(finch_dtype t) { return t == FINCH_DTYPE_BF16 ? 2 : 4; }

static float stored(finch_dtype t, float v) { return t == FINCH_DTYPE_BF16 ? finch_bf16_to_f32(finch_f32_to_bf16(v)) : v; }

static finch_dptr put(dev_ctx *c, const void *src, size_t bytes)
{
    finch_dptr p = {NULL, 0};
    if (c->n_bufs == 64 || c->api->alloc(c->dev, bytes ? bytes : 1, &p.buf) != FINCH_OK) {
        CHECK(0, "%s: alloc: %s", c->name, c->api->last_error());
        return p;
    }
    c->bufs[c->n_bufs++] = p.buf;
    if (bytes && src) CHECK(c->api->write(c->dev, NULL, p, src, bytes) == FINCH_OK, "%s: write", c->name);
    return p;
}

/* Floats stored as t (x is rounded in place to the stored values). */
static finch_dptr put_floats(dev_ctx *c, float *x, size_t n, finch_dtype t)
{
    void *raw = malloc(n * esize(t) + 1);
    for (size_t i = 0; i < n; i++) {
        x[i] = stored(t, x[i]);
        if (t == FINCH_DTYPE_BF16) ((uint16_t *)raw)[i] = finch_f32_to_bf16(x[i]);
        else ((float *)raw)[i] = x[i];
    }
    finch_dptr p = put(c, raw, n * esize(t));
    free(raw);
    return p;
}

static void get_floats(dev_ctx *c, finch_dptr p, size_t n, finch_dtype t, float *out)
{
    void *raw = malloc(n * esize(t) + 1);
    CHECK(c->api->read(c->dev, NULL, p, raw, n * esize(t)) == FINCH_OK, "%s: read", c->name);
    for (size_t i = 0; i < n; i++) out[i] = t == FINCH_DTYPE_BF16 ? finch_bf16_to_f32(((uint16_t *)raw)[i]) : ((float *)raw)[i];
    free(raw);
}

static void release(dev_ctx *c)
{
    while (c->n_bufs) c->api->free(c->dev, c->bufs[--c->n_bufs]);
}

typedef struct cache_case {
    int n_seqs;
    int q_len[3], kv_len[3], kv_start[3];
    int64_t kv_rows, nh, nkv, hd, window, pad;
    int causal;
    float softcap;
    finch_dtype t;
} cache_case;

static void reference(const cache_case *cc, const int *cu, const float *q, int64_t ldq, const float *k, const float *v,
                      int64_t ldkv, float scale, double *o, double *lse, int64_t n)
{
    int64_t group = cc->nh / cc->nkv, hd = cc->hd;
    for (int s = 0; s < cc->n_seqs; s++)
        for (int64_t i = 0; i < cc->q_len[s]; i++)
            for (int64_t h = 0; h < cc->nh; h++) {
                int64_t row = cu[s] + i, p = cc->kv_len[s] - cc->q_len[s] + i;
                double sc[64], mx = -INFINITY, sum = 0;
                for (int64_t j = 0; j < cc->kv_len[s]; j++) {
                    sc[j] = NAN;
                    if ((cc->causal && j > p) || (cc->window && p - j >= cc->window)) continue;
                    const float *kr = k + (cc->kv_start[s] + j) * ldkv + (h / group) * hd;
                    double d = 0;
                    for (int64_t e = 0; e < hd; e++) d += (double)q[row * ldq + h * hd + e] * kr[e];
                    d *= scale;
                    if (cc->softcap > 0) d = cc->softcap * tanh(d / cc->softcap);
                    sc[j] = d;
                    mx = fmax(mx, d);
                }
                for (int64_t j = 0; j < cc->kv_len[s]; j++)
                    if (!isnan(sc[j])) sum += exp(sc[j] - mx);
                for (int64_t e = 0; e < hd; e++) {
                    double acc = 0;
                    for (int64_t j = 0; j < cc->kv_len[s]; j++)
                        if (!isnan(sc[j])) acc += exp(sc[j] - mx) / sum * v[(cc->kv_start[s] + j) * ldkv + (h / group) * hd + e];
                    o[row * cc->nh * hd + h * hd + e] = acc;
                }
                lse[h * n + row] = mx + log(sum);
            }
}

static void run_case(dev_ctx *c, const cache_case *cc, const char *label)
{
    int cu[4] = {0};
    for (int s = 0; s < cc->n_seqs; s++) cu[s + 1] = cu[s] + cc->q_len[s];
    int64_t n = cu[cc->n_seqs], wq = cc->nh * cc->hd, wkv = cc->nkv * cc->hd;
    int64_t ldq = wq + cc->pad, ldkv = wkv + cc->pad, ldo = wq + cc->pad;
    float scale = 1.0f / sqrtf((float)cc->hd);
    float *q = malloc(sizeof(float) * (size_t)(n * ldq)), *k = malloc(sizeof(float) * (size_t)(cc->kv_rows * ldkv));
    float *v = malloc(sizeof(float) * (size_t)(cc->kv_rows * ldkv)), *o = malloc(sizeof(float) * (size_t)(n * ldo));
    float *lse = malloc(sizeof(float) * (size_t)(cc->nh * n));
    double *ro = malloc(sizeof(double) * (size_t)(n * wq)), *rl = malloc(sizeof(double) * (size_t)(cc->nh * n));
    testing_fill_random(q, (size_t)(n * ldq), 11);
    testing_fill_random(k, (size_t)(cc->kv_rows * ldkv), 12);
    testing_fill_random(v, (size_t)(cc->kv_rows * ldkv), 13);
    for (int64_t i = 0; i < n * ldq; i++) q[i] *= 3.0f; /* peaked softmaxes */

    finch_attention_cache_desc d;
    memset(&d, 0, sizeof d);
    d.n_tokens = n;
    d.n_seqs = cc->n_seqs;
    for (int s = 0; s < cc->n_seqs; s++) {
        if (cc->q_len[s] > d.max_q_len) d.max_q_len = cc->q_len[s];
        if (cc->kv_len[s] > d.max_kv_len) d.max_kv_len = cc->kv_len[s];
    }
    d.cu_seqlens_q = put(c, cu, sizeof(int) * (size_t)(cc->n_seqs + 1));
    d.kv_start = put(c, cc->kv_start, sizeof(int) * (size_t)cc->n_seqs);
    d.kv_len = put(c, cc->kv_len, sizeof(int) * (size_t)cc->n_seqs);
    d.kv_rows = cc->kv_rows;
    d.n_heads = cc->nh;
    d.n_kv_heads = cc->nkv;
    d.head_dim = cc->hd;
    d.dtype = cc->t;
    d.q = put_floats(c, q, (size_t)(n * ldq), cc->t);
    d.ldq = ldq;
    d.k = put_floats(c, k, (size_t)(cc->kv_rows * ldkv), cc->t);
    d.ldk = ldkv;
    d.v = put_floats(c, v, (size_t)(cc->kv_rows * ldkv), cc->t);
    d.ldv = ldkv;
    d.o = put(c, NULL, esize(cc->t) * (size_t)(n * ldo));
    d.ldo = ldo;
    d.lse = put(c, NULL, sizeof(float) * (size_t)(cc->nh * n));
    d.scale = scale;
    d.softcap = cc->softcap;
    d.causal = cc->causal;
    d.window = cc->window;
    int rc = c->api->attention_cache_forward(c->dev, NULL, &d);
    CHECK(rc == FINCH_OK, "%s %s: attention_cache_forward: %s", c->name, label, c->api->last_error());
    if (rc == FINCH_OK) {
        get_floats(c, d.o, (size_t)(n * ldo), cc->t, o);
        get_floats(c, d.lse, (size_t)(cc->nh * n), FINCH_DTYPE_F32, lse);
        reference(cc, cu, q, ldq, k, v, ldkv, scale, ro, rl, n);
        double err = 0, lerr = 0, tol = cc->t == FINCH_DTYPE_BF16 ? 1e-2 : 1e-5;
        for (int64_t i = 0; i < n; i++)
            for (int64_t e = 0; e < wq; e++) err = fmax(err, fabs(o[i * ldo + e] - ro[i * wq + e]));
        for (int64_t i = 0; i < cc->nh * n; i++) lerr = fmax(lerr, fabs(lse[i] - rl[i]));
        CHECK(err < tol && lerr < 1e-4, "%s %s: max error o %.3g lse %.3g", c->name, label, err, lerr);
    }

    /* Absent lse is allowed. */
    d.lse.buf = NULL;
    rc = c->api->attention_cache_forward(c->dev, NULL, &d);
    CHECK(rc == FINCH_OK, "%s %s: without lse: %s", c->name, label, c->api->last_error());
    free(q); free(k); free(v); free(o); free(lse); free(ro); free(rl);
    release(c);
}

/* kv_len == q_len with the keys in the query rows: the same numbers as attention_forward. */
static void same_as_packed(dev_ctx *c, finch_dtype t)
{
    int cu[3] = {0, 5, 12};
    int64_t n = 12, nh = 4, nkv = 2, hd = 8, wq = nh * hd, wkv = nkv * hd;
    float *q = malloc(sizeof(float) * (size_t)(n * wq)), *k = malloc(sizeof(float) * (size_t)(n * wkv));
    float *v = malloc(sizeof(float) * (size_t)(n * wkv)), *o1 = malloc(sizeof(float) * (size_t)(n * wq)),
          *o2 = malloc(sizeof(float) * (size_t)(n * wq));
    testing_fill_random(q, (size_t)(n * wq), 21);
    testing_fill_random(k, (size_t)(n * wkv), 22);
    testing_fill_random(v, (size_t)(n * wkv), 23);
    finch_attention_desc a;
    memset(&a, 0, sizeof a);
    a.n_tokens = n; a.n_seqs = 2; a.max_seqlen = 7;
    a.cu_seqlens = put(c, cu, sizeof cu);
    a.n_heads = nh; a.n_kv_heads = nkv; a.head_dim = hd; a.dtype = t;
    a.q = put_floats(c, q, (size_t)(n * wq), t); a.ldq = wq;
    a.k = put_floats(c, k, (size_t)(n * wkv), t); a.ldk = wkv;
    a.v = put_floats(c, v, (size_t)(n * wkv), t); a.ldv = wkv;
    a.o = put(c, NULL, esize(t) * (size_t)(n * wq)); a.ldo = wq;
    a.lse = put(c, NULL, sizeof(float) * (size_t)(nh * n));
    a.scale = 0.3f; a.softcap = 4.0f; a.causal = 1; a.window = 3;
    CHECK(c->api->attention_forward(c->dev, NULL, &a) == FINCH_OK, "%s: attention_forward: %s", c->name, c->api->last_error());
    int starts[2] = {0, 5}, lens[2] = {5, 7};
    finch_attention_cache_desc d;
    memset(&d, 0, sizeof d);
    d.n_tokens = n; d.n_seqs = 2; d.max_q_len = 7; d.max_kv_len = 7;
    d.cu_seqlens_q = a.cu_seqlens;
    d.kv_start = put(c, starts, sizeof starts);
    d.kv_len = put(c, lens, sizeof lens);
    d.kv_rows = n;
    d.n_heads = nh; d.n_kv_heads = nkv; d.head_dim = hd; d.dtype = t;
    d.q = a.q; d.ldq = wq; d.k = a.k; d.ldk = wkv; d.v = a.v; d.ldv = wkv;
    d.o = put(c, NULL, esize(t) * (size_t)(n * wq)); d.ldo = wq;
    d.scale = a.scale; d.softcap = a.softcap; d.causal = 1; d.window = 3;
    CHECK(c->api->attention_cache_forward(c->dev, NULL, &d) == FINCH_OK, "%s: attention_cache_forward: %s", c->name,
          c->api->last_error());
    get_floats(c, a.o, (size_t)(n * wq), t, o1);
    get_floats(c, d.o, (size_t)(n * wq), t, o2);
    double err = 0;
    for (int64_t i = 0; i < n * wq; i++) err = fmax(err, fabs(o1[i] - o2[i]));
    CHECK(err < (t == FINCH_DTYPE_BF16 ? 1e-2 : 1e-6), "%s: cache attention differs from attention_forward by %.3g", c->name, err);
    free(q); free(k); free(v); free(o1); free(o2);
    release(c);
}

static void run_all(dev_ctx *c)
{
    finch_dtype types[2] = {FINCH_DTYPE_F32, FINCH_DTYPE_BF16};
    for (int ti = 0; ti < 2; ti++) {
        finch_dtype t = types[ti];
        /* decode: one query each, keys at gaps in a 64-row cache */
        cache_case dec = {3, {1, 1, 1}, {1, 9, 20}, {0, 24, 40}, 64, 4, 2, 8, 0, 0, 1, 0.0f, t};
        run_case(c, &dec, ti ? "decode bf16" : "decode f32");
        cache_case win = dec;
        win.window = 4;
        win.softcap = 5.0f;
        run_case(c, &win, ti ? "decode window softcap bf16" : "decode window softcap f32");
        /* chunked prefill: several queries at the end of a longer range */
        cache_case pre = {3, {3, 5, 2}, {7, 5, 19}, {2, 16, 40}, 60, 6, 2, 8, 0, 3, 1, 0.0f, t};
        run_case(c, &pre, ti ? "prefill bf16" : "prefill f32");
        pre.window = 3;
        pre.nkv = 1;
        run_case(c, &pre, ti ? "prefill window mqa bf16" : "prefill window mqa f32");
        pre.causal = 0;
        pre.window = 0;
        run_case(c, &pre, ti ? "non-causal bf16" : "non-causal f32");
        same_as_packed(c, t);
    }
}

static void cpu_errors(dev_ctx *c)
{
    int cu[2] = {0, 3}, start[1] = {0}, len[1] = {2};
    float x[3 * 8] = {0};
    finch_attention_cache_desc d;
    memset(&d, 0, sizeof d);
    d.n_tokens = 3; d.n_seqs = 1; d.max_q_len = 3; d.max_kv_len = 2;
    d.cu_seqlens_q = put(c, cu, sizeof cu);
    d.kv_start = put(c, start, sizeof start);
    d.kv_len = put(c, len, sizeof len);
    d.kv_rows = 3; d.n_heads = 1; d.n_kv_heads = 1; d.head_dim = 8; d.dtype = FINCH_DTYPE_F32;
    d.q = d.k = d.v = d.o = put(c, x, sizeof x);
    d.ldq = d.ldk = d.ldv = d.ldo = 8;
    d.scale = 1; d.causal = 1;
    CHECK(c->api->attention_cache_forward(c->dev, NULL, &d) == FINCH_ERR_INVALID_ARGUMENT, "kv_len < q_len accepted");
    len[0] = 3;
    start[0] = 1;
    d.kv_start = put(c, start, sizeof start);
    d.kv_len = put(c, len, sizeof len);
    CHECK(c->api->attention_cache_forward(c->dev, NULL, &d) == FINCH_ERR_INVALID_ARGUMENT, "keys past kv_rows accepted");
    release(c);
}

int main(void)
{
    dev_ctx cpu = {"cpu", finch_cpu_plugin_api(), NULL, {0}, 0};
    CHECK(cpu.api->attention_cache_forward != NULL, "the cpu table lacks attention_cache_forward");
    if (cpu.api->init() != FINCH_OK || cpu.api->device_open(0, &cpu.dev) != FINCH_OK) {
        fprintf(stderr, "cannot open the cpu device: %s\n", cpu.api->last_error());
        return 1;
    }
    run_all(&cpu);
    cpu_errors(&cpu);
    cpu.api->device_close(cpu.dev);

    char path[4096];
    snprintf(path, sizeof path, "%s/libfinch-opencl.so", testing_bin_dir());
    void *mod = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!mod) {
        printf("opencl: not built (%s), skipped\n", path);
    } else {
        finch_plugin_entry_fn entry = (finch_plugin_entry_fn)(uintptr_t)dlsym(mod, FINCH_PLUGIN_ENTRY_SYMBOL);
        dev_ctx ocl = {"opencl", entry ? entry() : NULL, NULL, {0}, 0};
        CHECK(ocl.api != NULL, "%s: no entry symbol", path);
        if (ocl.api && ocl.api->init() == FINCH_OK) {
            CHECK(ocl.api->struct_size >= sizeof(finch_plugin_api) && ocl.api->attention_cache_forward,
                  "the opencl table lacks attention_cache_forward");
            if (ocl.api->device_open(0, &ocl.dev) == FINCH_OK) {
                run_all(&ocl);
                ocl.api->device_close(ocl.dev);
            } else {
                CHECK(0, "opencl device_open: %s", ocl.api->last_error());
            }
            ocl.api->shutdown();
        } else if (ocl.api) {
            printf("opencl: no device (%s), skipped\n", ocl.api->last_error());
        }
        dlclose(mod);
    }
    return testing_finish();
}
