/* The fused linear layer: y = x W^T + bias + scale (drop(x) A^T) B^T and its backward, with the
 * adapter products kept rank-wide (xa = drop(x) A^T and g = dy B are [m, rank]: f32, g in the
 * activations' type where only its rounding is read) so that the adapted weight W + scale B A is never
 * formed. Dense W goes through cuBLASLt, NF4 W through the
 * tiled kernel that dequantizes as it loads. */
#include "gpu_plugin.h"

#include <stdlib.h>
#include <string.h>

#define THREADS 256

/* out[i, j] = x[i, j] * keep(i * in + j) / (1 - p), f32 [m, in] contiguous. */
template <typename T>
__global__ void dropout_kernel(int64_t m, int64_t in, const T *x, int64_t ldx, uint64_t seed, float p, float *out)
{
    float keep_scale = 1.0f / (1.0f - p);
    for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < m * in; idx += (int64_t)gridDim.x * blockDim.x) {
        int64_t i = idx / in, j = idx % in;
        out[idx] = finch_dropout_keep(seed, (uint64_t)idx, p) ? to_f32(x[i * ldx + j]) * keep_scale : 0.0f;
    }
}

/* dx[i, j] += scale * keep(i * in + j) / (1 - p) * t[i, j]. */
template <typename T>
__global__ void dropout_backward_kernel(int64_t m, int64_t in, const float *t, uint64_t seed, float p, float scale, T *dx,
                                        int64_t lddx)
{
    float keep_scale = scale / (1.0f - p);
    for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < m * in; idx += (int64_t)gridDim.x * blockDim.x) {
        if (!finch_dropout_keep(seed, (uint64_t)idx, p)) continue;
        int64_t i = idx / in, j = idx % in;
        dx[i * lddx + j] = from_f32<T>(to_f32(dx[i * lddx + j]) + keep_scale * t[idx]);
    }
}

template <typename T>
__global__ void add_bias_kernel(int64_t m, int64_t n, T *y, int64_t ldy, const void *bias, int bias_type)
{
    for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < m * n; idx += (int64_t)gridDim.x * blockDim.x) {
        int64_t i = idx / n, j = idx % n;
        y[i * ldy + j] = from_f32<T>(to_f32(y[i * ldy + j]) + load_as_f32(bias, bias_type, j));
    }
}

/* A [na] then B [nb], f32, rounded to T into one buffer: one launch for both factors. */
template <typename T>
__global__ void factors_cast_kernel(int64_t na, const float *a, int64_t nb, const float *b, T *out)
{
    for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < na + nb; idx += (int64_t)gridDim.x * blockDim.x)
        out[idx] = from_f32<T>(idx < na ? a[idx] : b[idx - na]);
}

static gpu_operand operand(const void *p, finch_dtype t, int trans, int64_t ld)
{
    gpu_operand o;
    memset(&o, 0, sizeof o);
    o.ptr = p;
    o.dtype = t;
    o.trans = trans;
    o.ld = ld;
    return o;
}

/* The scratch one call holds; all freed together (stream-ordered) when the call ends. */
typedef struct scratch_set {
    gpuStream_t st = NULL;
    void *p[12];
    int n;
} scratch_set;

static int take(scratch_set *s, size_t bytes, void **out, const char *what)
{
    if (s->n == (int)(sizeof s->p / sizeof s->p[0]))
        return gpu_fail(FINCH_ERR_DEVICE, FINCH_GPU_PLUGIN_NAME ": linear: more scratch buffers than planned (%s)", what);
    GPU_TRY(gpu_scratch(s->st, bytes, out, what));
    s->p[s->n++] = *out;
    return FINCH_OK;
}

static int release(scratch_set *s, int rc)
{
    for (int i = 0; i < s->n; i++) gpu_scratch_free(s->st, s->p[i]);
    return rc;
}

static int check_linear(const finch_linear_desc *d, int need_x, const char *entry)
{
    if (d->m < 0 || d->in_features <= 0 || d->out_features <= 0 || d->rank < 0)
        return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": %s: m=%lld in=%lld out=%lld rank=%lld", entry,
                        (long long)d->m, (long long)d->in_features, (long long)d->out_features, (long long)d->rank);
    if (!gpu_is_float_type(d->act_type) || (d->rank > 0 && !gpu_is_float_type(d->param_type)) ||
        (gpu_ptr(d->bias) && !gpu_is_float_type(d->param_type)))
        return gpu_fail(FINCH_ERR_UNSUPPORTED, FINCH_GPU_PLUGIN_NAME ": %s: dtypes %s/%s", entry, gpu_dtype_name(d->act_type),
                        gpu_dtype_name(d->param_type));
    if (d->rank > 0 && (!gpu_ptr(d->lora_a) || !gpu_ptr(d->lora_b)))
        return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": %s: rank %lld without lora_a/lora_b", entry,
                        (long long)d->rank);
    if (d->dropout < 0.0f || d->dropout >= 1.0f)
        return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": %s: dropout %g", entry, d->dropout);
    if (need_x && (!gpu_ptr(d->x) || d->ldx < d->in_features))
        return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": %s: x absent or ldx %lld < in %lld", entry,
                        (long long)d->ldx, (long long)d->in_features);
    return FINCH_OK;
}

/* A rank-wide f32 intermediate (xa or dy B, [rows, cols]) as a product operand. When it meets
 * 16-bit operands it is rounded to their type (like the activations themselves) so cuBLASLt takes
 * the product; otherwise it stays f32 for the tiled kernel. */
static int rank_operand(scratch_set *ss, const float *src, int64_t rows, int64_t cols, finch_dtype partner, int trans,
                        gpu_operand *out)
{
    if (partner == FINCH_DTYPE_F32) {
        *out = operand(src, FINCH_DTYPE_F32, trans, cols);
        return FINCH_OK;
    }
    void *dst;
    GPU_TRY(take(ss, (size_t)(rows * cols) * gpu_dtype_size(partner), &dst, "linear rank-wide operand"));
    GPU_TRY(gpu_cast(ss->st, rows * cols, FINCH_DTYPE_F32, src, partner, dst));
    *out = operand(dst, partner, trans, cols);
    return FINCH_OK;
}

/* The type a rank-wide intermediate is rounded to before meeting an operand of type t (and the
 * activations): t when both are the same 16-bit type, else F32 (no rounding). */
static finch_dtype rank_partner(const finch_linear_desc *d, finch_dtype t)
{
    return d->act_type != FINCH_DTYPE_F32 && t == d->act_type ? t : FINCH_DTYPE_F32;
}

/* LoRA factors stored in f32 (the trainer keeps adapters in f32) meeting 16-bit activations: with
 * cuBLASLt, each call rounds A and B to the activations' type in scratch (r x in and out x r, tiny)
 * so all four adapter products run on the tensor cores, as under autocast. Left in f32, every
 * product mixes storage types, which cuBLASLt does not take, and falls to the tiled SIMT kernel:
 * on an H200 that cost 0.76 s of a 1.33 s Llama-8B B2xT2048 LoRA step (FINCH_CUDA_PROFILE=1).
 * FINCH_CUDA_LORA_F32=1 keeps the factors in f32 (the tiled kernel, no rounding of A and B). */
static bool lora_f32_exact(void)
{
    static int on = -1;
    return gpu_env_is("FINCH_CUDA_LORA_F32", "1", &on);
}

/* Below this many rows (decoding) the adapter products are matrix-vector work bound by memory, not
 * by arithmetic: rounding the factors would only add two casts a call, so they stay in f32. */
#define ADAPTER_ROUND_MIN_ROWS 16

/* The adapter factors as the products read them: A [rank, in] and B [out, rank] of one type. */
typedef struct factors {
    const void *a, *b;
    finch_dtype t;
} factors;

/* d's factors, or 16-bit copies of them where that lets cuBLASLt take the adapter products. The
 * copies live in ss until the call ends. */
static int adapter_factors(scratch_set *ss, const finch_linear_desc *d, factors *f)
{
    f->a = gpu_ptr(d->lora_a);
    f->b = gpu_ptr(d->lora_b);
    f->t = d->param_type;
#if FINCH_GPU_BLASLT
    if (d->rank == 0 || d->param_type != FINCH_DTYPE_F32 || d->act_type == FINCH_DTYPE_F32 || d->m < ADAPTER_ROUND_MIN_ROWS ||
        lora_f32_exact())
        return FINCH_OK;
    size_t es = gpu_dtype_size(d->act_type);
    int64_t na = d->rank * d->in_features, nb = d->out_features * d->rank;
    void *a16 = NULL;
    GPU_TRY(take(ss, (size_t)(na + nb) * es, &a16, "linear adapter factors in 16 bits"));
    void *b16 = (char *)a16 + (size_t)na * es;
    FINCH_DISPATCH_FLOAT(d->act_type, T, "linear adapter factors",
        factors_cast_kernel<T><<<gpu_blocks(na + nb, THREADS), THREADS, 0, ss->st>>>(na, (const float *)f->a, nb,
                                                                                  (const float *)f->b, (T *)a16));
    GPU_TRY(GPU_LAUNCHED("linear adapter factors"));
    f->a = a16;
    f->b = b16;
    f->t = d->act_type;
#else
    (void)ss;
#endif
    return FINCH_OK;
}

/* The adapter's input: x itself, or drop(x) as f32 scratch when dropout is on. */
static int adapter_input(scratch_set *ss, const finch_linear_desc *d, gpu_operand *out)
{
    if (d->dropout <= 0.0f) {
        *out = operand(gpu_ptr(d->x), d->act_type, 0, d->ldx);
        return FINCH_OK;
    }
    float *xd;
    GPU_TRY(take(ss, (size_t)d->m * d->in_features * sizeof(float), (void **)&xd, "linear dropout(x)"));
    int64_t n = d->m * d->in_features;
    FINCH_DISPATCH_FLOAT(d->act_type, T, "linear dropout",
        dropout_kernel<T><<<gpu_blocks(n, THREADS), THREADS, 0, ss->st>>>(d->m, d->in_features, (const T *)gpu_ptr(d->x), d->ldx,
                                                                          d->dropout_seed, d->dropout, xd));
    GPU_TRY(GPU_LAUNCHED("linear dropout"));
    *out = operand(xd, FINCH_DTYPE_F32, 0, d->in_features);
    return FINCH_OK;
}

/* xa = drop(x) A^T into dst (f32 [m, rank]). */
static int adapter_down(finch_plugin_device *dev, scratch_set *ss, const finch_linear_desc *d, const factors *f,
                        const gpu_operand *xin, float *dst)
{
    /* drop(x) is f32: it meets the stored f32 A, which cuBLASLt takes as is. */
    gpu_operand at = xin->dtype == d->param_type ? operand(gpu_ptr(d->lora_a), d->param_type, 1, d->in_features)
                                                 : operand(f->a, f->t, 1, d->in_features);
    return gpu_gemm(dev, ss->st, d->m, d->rank, d->in_features, xin, &at, FINCH_DTYPE_F32, dst, d->rank, 0, 1, 1.0f, 0.0f);
}

static int check_forward(const finch_linear_desc *d, const char *entry)
{
    GPU_TRY(check_linear(d, 1, entry));
    if (!gpu_ptr(d->y) || d->ldy < d->out_features)
        return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": %s: y absent or ldy %lld < out %lld", entry,
                        (long long)d->ldy, (long long)d->out_features);
    return FINCH_OK;
}

/* y = x W^T + beta y. */
static int forward_base(finch_plugin_device *dev, gpuStream_t st, const finch_linear_desc *d, float beta)
{
    gpu_operand x = operand(gpu_ptr(d->x), d->act_type, 0, d->ldx), wt;
    GPU_TRY(gpu_weight_operand(&d->w, d->out_features, d->in_features, 1, &wt));
    return gpu_gemm(dev, st, d->m, d->out_features, d->in_features, &x, &wt, d->act_type, gpu_ptr(d->y), d->ldy, 0, 1, 1.0f,
                    beta);
}

static int forward_bias(gpuStream_t st, const finch_linear_desc *d)
{
    if (!gpu_ptr(d->bias)) return FINCH_OK;
    int64_t n = d->m * d->out_features;
    FINCH_DISPATCH_FLOAT(d->act_type, T, "linear bias",
        add_bias_kernel<T><<<gpu_blocks(n, THREADS), THREADS, 0, st>>>(d->m, d->out_features, (T *)gpu_ptr(d->y), d->ldy,
                                                                       gpu_ptr(d->bias), d->param_type));
    return GPU_LAUNCHED("linear bias");
}

/* y = scale (drop(x) A^T) B^T + beta y, writing xa. */
static int forward_adapter(finch_plugin_device *dev, gpuStream_t st, const finch_linear_desc *d, float beta)
{
    scratch_set ss = {st, {0}, 0};
    gpu_operand xin;
    factors f;
    float *xa = (float *)gpu_ptr(d->xa);
    int rc = adapter_factors(&ss, d, &f);
    if (!rc) rc = adapter_input(&ss, d, &xin);
    if (!rc && !xa) rc = take(&ss, (size_t)d->m * d->rank * sizeof(float), (void **)&xa, "linear xa");
    if (!rc) rc = adapter_down(dev, &ss, d, &f, &xin, xa);
    gpu_operand a;
    if (!rc) rc = rank_operand(&ss, xa, d->m, d->rank, rank_partner(d, f.t), 0, &a);
    if (!rc) {
        gpu_operand bt = operand(f.b, f.t, 1, d->rank);
        rc = gpu_gemm(dev, st, d->m, d->out_features, d->rank, &a, &bt, d->act_type, gpu_ptr(d->y), d->ldy, 0, 1, d->scale, beta);
    }
    return release(&ss, rc);
}

/* y = x W^T + bias + scale (drop(x) A^T) B^T. The adapter's product goes first, into y, and the base
 * product adds itself to it as it stores (C = y, beta 1): a pass of its own reading and writing y
 * after the base product would cost as much as the adapter's products together. */
static int forward_one(finch_plugin_device *dev, gpuStream_t st, const finch_linear_desc *d)
{
    if (d->rank > 0) GPU_TRY(forward_adapter(dev, st, d, 0.0f));
    GPU_TRY(forward_base(dev, st, d, d->rank > 0 ? 1.0f : 0.0f));
    return forward_bias(st, d);
}

extern "C" int plugin_linear_forward(finch_plugin_device *dev, finch_plugin_stream *s, const finch_linear_desc *d)
{
    gpuStream_t st = NULL;
    GPU_TRY(gpu_begin(dev, s, &st));
    GPU_TRY(check_forward(d, "linear_forward"));
    if (d->m == 0) return FINCH_OK;
    return forward_one(dev, st, d);
}

/* FINCH_CUDA_GEMV_GROUP=0: a group's products one by one (for comparing). */
static bool group_gemv_enabled(void)
{
    static int off = -1;
    return !gpu_env_is("FINCH_CUDA_GEMV_GROUP", "0", &off);
}

/* The base products of the group as one GEMV over all their weights' rows when it takes them (a
 * few rows of x), else one product each; then each linear's bias and adapter. */
extern "C" int plugin_linear_forward_group(finch_plugin_device *dev, finch_plugin_stream *s, const finch_linear_desc *descs,
                                           int count)
{
    gpuStream_t st = NULL;
    GPU_TRY(gpu_begin(dev, s, &st));
    if (!descs || count < 1)
        return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": linear_forward_group: %d descriptors", count);
    int bad = finch_linear_group_mismatch(descs, count);
    if (bad >= 0)
        return gpu_fail(FINCH_ERR_INVALID_ARGUMENT,
                        FINCH_GPU_PLUGIN_NAME ": linear_forward_group: descriptor %d does not share descriptor 0's input", bad);
    for (int i = 0; i < count; i++) GPU_TRY(check_forward(&descs[i], "linear_forward_group"));
    const finch_linear_desc *d0 = &descs[0];
    if (d0->m == 0) return FINCH_OK;
    int done = 0;
    if (count <= GEMV_MAX_SEGMENTS && group_gemv_enabled()) {
        gpu_operand x = operand(gpu_ptr(d0->x), d0->act_type, 0, d0->ldx), w[GEMV_MAX_SEGMENTS];
        int64_t n[GEMV_MAX_SEGMENTS], ldc[GEMV_MAX_SEGMENTS];
        void *c[GEMV_MAX_SEGMENTS];
        for (int i = 0; i < count; i++) {
            GPU_TRY(gpu_weight_operand(&descs[i].w, descs[i].out_features, descs[i].in_features, 1, &w[i]));
            n[i] = descs[i].out_features;
            c[i] = gpu_ptr(descs[i].y);
            ldc[i] = descs[i].ldy;
        }
        GPU_TRY(gpu_gemv_group(dev, st, d0->m, d0->in_features, &x, count, w, n, d0->act_type, c, ldc, 1.0f, 0.0f, &done));
    }
    for (int i = 0; i < count; i++) {
        if (!done) {
            GPU_TRY(forward_one(dev, st, &descs[i]));
            continue;
        }
        GPU_TRY(forward_bias(st, &descs[i]));
        if (descs[i].rank > 0) GPU_TRY(forward_adapter(dev, st, &descs[i], 1.0f));
    }
    return FINCH_OK;
}

extern "C" int plugin_linear_backward(finch_plugin_device *dev, finch_plugin_stream *s, const finch_linear_desc *d)
{
    gpuStream_t st = NULL;
    GPU_TRY(gpu_begin(dev, s, &st));
    int need_x = gpu_ptr(d->dw) || (d->rank > 0 && (gpu_ptr(d->da) || (gpu_ptr(d->db) && !gpu_ptr(d->xa))));
    GPU_TRY(check_linear(d, need_x, "linear_backward"));
    if (!gpu_ptr(d->dy) || d->lddy < d->out_features)
        return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": linear_backward: dy absent or lddy %lld < out %lld",
                        (long long)d->lddy, (long long)d->out_features);
    if (gpu_ptr(d->dx) && d->lddx < d->in_features)
        return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": linear_backward: lddx %lld < in %lld",
                        (long long)d->lddx, (long long)d->in_features);
    if (gpu_ptr(d->dw) && d->w.dtype == FINCH_DTYPE_NF4)
        return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": linear_backward: dw requested for an NF4 weight");
    if (d->m == 0) return FINCH_OK;

    gpu_operand dy = operand(gpu_ptr(d->dy), d->act_type, 0, d->lddy);
    gpu_operand dyt = operand(gpu_ptr(d->dy), d->act_type, 1, d->lddy);
    gpu_operand x = operand(gpu_ptr(d->x), d->act_type, 0, d->ldx);
    int lora = d->rank > 0;
    int64_t m = d->m, in = d->in_features, out = d->out_features, r = d->rank;
    scratch_set ss = {st, {0}, 0};
    factors f = {NULL, NULL, d->param_type};
    int rc = lora ? adapter_factors(&ss, d, &f) : FINCH_OK;

    /* g = dy B (f32 [m, rank]) and its rounding for the products with A and x. */
    float *g = NULL;
    gpu_operand gop;
    int lora_dx = lora && gpu_ptr(d->dx), lora_da = lora && gpu_ptr(d->da);
    if (!rc && (lora_dx || lora_da)) {
        gpu_operand b = operand(f.b, f.t, 0, r);
        finch_dtype partner = rank_partner(d, f.t);
        if (partner != FINCH_DTYPE_F32 && d->dropout <= 0.0f) {
            /* Only its rounding is read: the product writes it in that type. */
            void *g16 = NULL;
            rc = take(&ss, (size_t)(m * r) * gpu_dtype_size(partner), &g16, "linear dy B");
            if (!rc) rc = gpu_gemm(dev, st, m, r, out, &dy, &b, partner, g16, r, 0, 1, 1.0f, 0.0f);
            gop = operand(g16, partner, 0, r);
        } else {
            rc = take(&ss, (size_t)m * r * sizeof(float), (void **)&g, "linear dy B");
            if (!rc) rc = gpu_gemm(dev, st, m, r, out, &dy, &b, FINCH_DTYPE_F32, g, r, 0, 1, 1.0f, 0.0f);
            if (!rc) rc = rank_operand(&ss, g, m, r, partner, 0, &gop);
        }
    }
    /* dx: without dropout the adapter's term first, so that the base product adds itself to it as
     * it stores (see forward_one); with dropout the base product first and the masked term after. */
    int adapter_first = lora_dx && d->dropout <= 0.0f;
    float dx_beta = d->dx_accumulate ? 1.0f : 0.0f;
    if (!rc && adapter_first) {
        gpu_operand a = operand(f.a, f.t, 0, in);
        rc = gpu_gemm(dev, st, m, in, r, &gop, &a, d->act_type, gpu_ptr(d->dx), d->lddx, 0, 1, d->scale, dx_beta);
        dx_beta = 1.0f;
    }
    if (!rc && gpu_ptr(d->dx)) {
        gpu_operand w;
        rc = gpu_weight_operand(&d->w, out, in, 0, &w);
        if (!rc) rc = gpu_gemm(dev, st, m, in, out, &dy, &w, d->act_type, gpu_ptr(d->dx), d->lddx, 0, 1, 1.0f, dx_beta);
    }
    if (!rc && lora_dx && !adapter_first) {
        float *t = NULL;
        gpu_operand a = operand(f.a, f.t, 0, in);
        rc = take(&ss, (size_t)m * in * sizeof(float), (void **)&t, "linear (dy B) A");
        if (!rc) rc = gpu_gemm(dev, st, m, in, r, &gop, &a, FINCH_DTYPE_F32, t, in, 0, 1, 1.0f, 0.0f);
        if (!rc) {
            FINCH_DISPATCH_FLOAT(d->act_type, T, "linear dropout backward",
                dropout_backward_kernel<T><<<gpu_blocks(m * in, THREADS), THREADS, 0, st>>>(
                    m, in, t, d->dropout_seed, d->dropout, d->scale, (T *)gpu_ptr(d->dx), d->lddx));
            rc = GPU_LAUNCHED("linear dropout backward");
        }
    }
    if (!rc && gpu_ptr(d->dw))
        rc = gpu_gemm(dev, st, out, in, m, &dyt, &x, FINCH_DTYPE_F32, gpu_ptr(d->dw), in, 0, 1, 1.0f, 1.0f);
    if (!rc && gpu_ptr(d->dbias))
        rc = gpu_column_sums(st, m, out, d->act_type, gpu_ptr(d->dy), d->lddy, NULL, 0, NULL, NULL, (float *)gpu_ptr(d->dbias));
    if (!rc && lora_da) {
        gpu_operand xin, gt;
        rc = adapter_input(&ss, d, &xin);
        if (!rc && rank_partner(d, xin.dtype) == gop.dtype) {
            gt = gop;
            gt.trans = 1;
        } else if (!rc) {
            rc = rank_operand(&ss, g, m, r, rank_partner(d, xin.dtype), 1, &gt);
        }
        if (!rc) rc = gpu_gemm(dev, st, r, in, m, &gt, &xin, FINCH_DTYPE_F32, gpu_ptr(d->da), in, 0, 1, d->scale, 1.0f);
    }
    if (!rc && lora && gpu_ptr(d->db)) {
        float *xa = (float *)gpu_ptr(d->xa);
        if (!xa) { /* not saved by the forward pass: recompute it */
            gpu_operand xin;
            rc = adapter_input(&ss, d, &xin);
            if (!rc) rc = take(&ss, (size_t)m * r * sizeof(float), (void **)&xa, "linear xa");
            if (!rc) rc = adapter_down(dev, &ss, d, &f, &xin, xa);
        }
        gpu_operand xaop;
        if (!rc) rc = rank_operand(&ss, xa, m, r, rank_partner(d, d->act_type), 0, &xaop);
        if (!rc) rc = gpu_gemm(dev, st, out, r, m, &dyt, &xaop, FINCH_DTYPE_F32, gpu_ptr(d->db), r, 0, 1, d->scale, 1.0f);
    }
    return release(&ss, rc);
}
