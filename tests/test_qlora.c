/* QLoRA on the golden models, on the CPU backend or the one named:
 *
 *     test_qlora [backend]      ("cpu" by default; exit 77 = skipped when that backend has no device)
 *
 * For every text architecture,
 *  - a model loaded with load_in_4bit (decoder linears NF4 on the device) gives the same loss,
 *    logits and LoRA gradients as finch's dense path on a checkpoint holding the dequantised
 *    weights (computed here with core/nf4 independently of the loader): f32 within 1e-4, with
 *    gradient checkpointing too, and bf16 compute within 2e-2 — while both differ clearly from the
 *    original dense weights;
 *  - the device holds no dense copy: each linear weight is one buffer of n/2 bytes + f32 absmax +
 *    the code table, the dense model's linear bytes are exactly what the 4-bit model saves, and no
 *    transient dense copy appears while loading;
 *  - a bnb-4bit checkpoint written per the schema (bnb_write of the golden weights, double
 *    quantisation) loads as-is and gives the same logits, bit for bit, as quantise-on-load;
 *    finch_model_save_4bit writes the same tensors back.
 * Then falcon's reordered fused qkv (row-aligned blocks and the own-order fallback), and the errors:
 * GPTQ/AWQ configs, full fine-tuning on 4-bit weights, bad options. */
#include "backends/cpu/cpu.h"
#include "core/bnb_checkpoint.h"
#include "core/model.h"
#include "core/model_quant.h"
#include "core/model_weights.h"
#include "core/runtime.h"
#include "finch/export.h"
#include "finch/finch.h"
#include "tests/testing.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *const archs[] = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "phi3", "falcon"};

static int32_t *ids, *labels;
static int64_t B, T;
static int quant_type = FINCH_QUANT_NF4;   /* of the load_in_4bit loads below */
static int offload_next;                    /* the next load() offloads activations */
static int on_cpu;                          /* the backend under test is the CPU reference */
static float attach_dropout;                /* LoRA dropout of the next attach() */

static int ok(int rc, const char *what)
{
    CHECK(rc == FINCH_OK, "%s: %s (%s)", what, finch_status_name(rc), finch_last_error());
    return rc == FINCH_OK;
}

/* ---- device memory accounting: the CPU table with counting alloc/free ----------------------- */

static const finch_plugin_api *base_api;
static finch_plugin_api counting_api;
static int64_t live_bytes, peak_bytes;

static int counting_alloc(finch_plugin_device *dev, size_t bytes, finch_plugin_buffer **out)
{
    int rc = base_api->alloc(dev, bytes, out);
    if (!rc) {
        live_bytes += (int64_t)(*out)->size;
        if (live_bytes > peak_bytes) peak_bytes = live_bytes;
    }
    return rc;
}

static void counting_free(finch_plugin_device *dev, finch_plugin_buffer *buf)
{
    live_bytes -= (int64_t)buf->size;
    base_api->free(dev, buf);
}

static void count_device_memory(finch_runtime *rt)
{
    base_api = rt->backend.api;
    counting_api = *base_api;
    counting_api.alloc = counting_alloc;
    counting_api.free = counting_free;
    rt->backend.api = &counting_api;
}

/* ---- files ------------------------------------------------------------------------------------- */

/* Writes c (deleted here) as dir/config.json, making dir; 0 on success. */
static int save_config_json(const char *dir, cJSON *c)
{
    char *out = cJSON_Print(c), path[1200];
    cJSON_Delete(c);
    mkdir(dir, 0755);
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "wb");
    int rc = !out || !f || fputs(out, f) < 0;
    if (f) fclose(f);
    free(out);
    return rc;
}

/* dst/config.json = src/config.json with quantization_config set to qc (a JSON text, or NULL: removed)
 * and, for falcon, multi_query set to mq (-1: unchanged). */
static int write_config(const char *src_dir, const char *dst_dir, const char *qc, int mq)
{
    char path[1400];
    snprintf(path, sizeof path, "%s/config.json", src_dir);
    char *text = testing_read_file(path);
    cJSON *c = text ? cJSON_Parse(text) : NULL;
    free(text);
    if (!c) return 1;
    cJSON_DeleteItemFromObject(c, "quantization_config");
    if (qc) cJSON_AddItemToObject(c, "quantization_config", cJSON_Parse(qc));
    if (mq >= 0) cJSON_ReplaceItemInObject(c, "multi_query", cJSON_CreateBool(mq));
    return save_config_json(dst_dir, c);
}

static char *tmp_path(char *buf, size_t n, const char *arch, const char *what)
{
    snprintf(buf, n, "%s/qlora_%s_%s", testing_tmp_dir(), arch, what);
    return buf;
}

static st_entry entry_of(const st_tensor *t)
{
    st_entry e;
    memset(&e, 0, sizeof e);
    e.name = t->name;
    e.dtype = t->dtype;
    e.ndim = t->ndim;
    for (int d = 0; d < t->ndim; d++) e.shape[d] = t->shape[d];
    e.data = t->data;
    return e;
}

/* ---- models and steps ------------------------------------------------------------------------- */

static finch_model *load(finch_runtime *rt, const char *dir, int in4, int64_t bs, int dq, finch_dtype dt, int ckpt)
{
    finch_load_options o = finch_load_options_default();
    o.load_in_4bit = in4;
    o.quant_blocksize = bs;
    o.quant_type = quant_type;
    o.double_quant = dq;
    o.compute_dtype = dt;
    o.gradient_checkpointing = ckpt;
    o.offload_activations = offload_next;
    offload_next = 0;
    finch_model *m = NULL;
    ok(finch_model_load(rt, dir, &o, &m), dir);
    return m;
}

/* r = 4 adapters on every linear, with the same non-zero B on every model. */
static int attach(finch_model *m)
{
    finch_lora_config lc = finch_lora_config_default();
    lc.r = 4;
    lc.alpha = 8;
    lc.seed = 11;
    lc.dropout = attach_dropout;
    if (!ok(finch_lora_attach(m, &lc), "finch_lora_attach")) return 0;
    return ok(testing_lora_b_random(m, 100, 0.2f), "finch_trainable_write");
}

typedef struct outputs {
    double loss;
    float *logits;
    int64_t n_logits;
    float *grads;             /* every trainable's gradient, concatenated */
    int64_t n_grads;
} outputs;

static void outputs_free(outputs *o)
{
    free(o->logits);
    free(o->grads);
    memset(o, 0, sizeof *o);
}

static int run(finch_model *m, int backward, outputs *o)
{
    memset(o, 0, sizeof *o);
    if (!m) return 0;
    finch_model_info info;
    finch_model_info_get(m, &info);
    finch_batch b = {.batch = B, .seq_len = T, .input_ids = ids, .labels = labels};
    finch_step_options so = {1, 0.0f};
    finch_step_result r;
    int rc = backward ? finch_forward_backward(m, &b, &so, &r) : finch_forward(m, &b, &so, &r);
    if (!ok(rc, "step")) return 0;
    o->loss = r.loss;
    o->n_logits = B * T * info.vocab_size;
    o->logits = malloc((size_t)o->n_logits * sizeof(float));
    if (!ok(finch_model_logits(m, o->logits, (size_t)o->n_logits), "finch_model_logits")) return 0;
    if (!backward) return 1;
    for (int64_t i = 0; i < finch_trainable_count(m); i++) {
        finch_tensor_info ti;
        finch_trainable_info(m, i, &ti);
        o->grads = realloc(o->grads, (size_t)(o->n_grads + ti.numel) * sizeof(float));
        if (!ok(finch_trainable_grad_read(m, i, o->grads + o->n_grads, ti.numel), "grad read")) return 0;
        o->n_grads += ti.numel;
    }
    return 1;
}

/* Worst relative error of logits, loss and gradients of a against ref. */
static double compare(const outputs *a, const outputs *ref)
{
    if (!a->logits || !ref->logits || a->n_logits != ref->n_logits || a->n_grads != ref->n_grads) return INFINITY;
    double e = testing_rel_err(a->logits, ref->logits, (size_t)a->n_logits);
    double el = fabs(a->loss - ref->loss) / fabs(ref->loss);
    e = el > e ? el : e;
    if (ref->n_grads) {
        double eg = testing_rel_err(a->grads, ref->grads, (size_t)a->n_grads);
        e = eg > e ? eg : e;
    }
    return e;
}

/* ---- the dequantised checkpoint ------------------------------------------------------------- */

/* deq(quant(W)) of checkpoint tensor t as finch's loader would quantise it (rows in finch's order
 * first when they do not own whole blocks), back in checkpoint order. */
static float *reference_dequant(const st_tensor *t, const int32_t *perm, int64_t bs, int dq)
{
    int64_t rows = t->shape[0], cols = t->shape[1], n = rows * cols;
    float *w = malloc((size_t)n * sizeof(float)), *deq = malloc((size_t)n * sizeof(float));
    st_to_f32(t, w);
    int own = perm && cols % bs != 0;
    if (own) {
        float *p = malloc((size_t)n * sizeof(float));
        for (int64_t r = 0; r < rows; r++) memcpy(p + r * cols, w + (int64_t)perm[r] * cols, (size_t)cols * sizeof(float));
        free(w);
        w = p;
    }
    st_tensor view = *t;
    view.dtype = ST_F32;
    view.data = w;
    view.nbytes = (size_t)n * sizeof(float);
    nf4_weight q;
    if (nf4_quantize_st_tensor(&view, quant_type == FINCH_QUANT_FP4 ? NF4_TYPE_FP4 : NF4_TYPE_NF4, bs, dq, &q)) {
        free(w);
        free(deq);
        return NULL;
    }
    nf4_weight_dequantize(&q, own ? w : deq);
    nf4_weight_free(&q);
    if (own)
        for (int64_t r = 0; r < rows; r++) memcpy(deq + (int64_t)perm[r] * cols, w + r * cols, (size_t)cols * sizeof(float));
    free(w);
    return deq;
}

/* Writes deq_dir: src's checkpoint with every linear weight of the 4-bit model q replaced by its
 * reference dequantisation; also checks the loader's own dequantisation (finch_quant_dequantize)
 * against it bit for bit. */
static int write_dequantised(const char *src, const char *deq_dir, const finch_model *q, int64_t bs, int dq)
{
    char path[1400];
    snprintf(path, sizeof path, "%s/model.safetensors", src);
    st_set *s = NULL;
    if (!ok(st_set_open_file(path, &s), "open checkpoint")) return 1;
    int n = st_set_count(s), same = 1, n_quant = 0;
    st_entry *e = calloc((size_t)n, sizeof *e);
    float **owned = calloc((size_t)n, sizeof *owned);
    for (int i = 0; i < n; i++) {
        const st_tensor *t = st_set_at(s, i);
        e[i] = entry_of(t);
        for (int k = 0; k < q->n_linears; k++) {
            const finch_linear_module *lin = q->linears[k];
            if (strcmp(lin->weight.name, t->name)) continue;
            CHECK(lin->quant && lin->weight.dtype == FINCH_DTYPE_NF4, "%s is NF4 on the device", t->name);
            float *ref = reference_dequant(t, lin->row_perm, bs, dq), *got = malloc((size_t)t->numel * sizeof(float));
            if (!ref || !lin->quant || !ok(finch_quant_dequantize(q, lin, got), "finch_quant_dequantize") ||
                memcmp(ref, got, (size_t)t->numel * sizeof(float)))
                same = 0;
            free(got);
            owned[i] = ref;
            e[i].dtype = ST_F32;
            e[i].data = ref;
            n_quant++;
        }
    }
    CHECK(n_quant == q->n_linears && n_quant > 0, "%s: %d of %d linears found in the checkpoint", src, n_quant, q->n_linears);
    CHECK(same, "%s: finch_quant_dequantize equals deq(quant(W)) computed with core/nf4", src);
    int rc = write_config(src, deq_dir, NULL, -1);
    snprintf(path, sizeof path, "%s/model.safetensors", deq_dir);
    if (!rc) rc = st_write(path, e, n, NULL);
    for (int i = 0; i < n; i++) free(owned[i]);
    free(owned);
    free(e);
    st_set_close(s);
    return rc;
}

/* ---- activation offload on a deeper model --------------------------------------------------- */

/* src's model with its layers repeated (layer l + L a copy of layer l) at dst: the goldens have two
 * layers, where offloading never has to bring a layer input back. */
static int write_deeper(const char *src, const char *dst)
{
    char path[1400];
    snprintf(path, sizeof path, "%s/config.json", src);
    char *text = testing_read_file(path);
    cJSON *c = text ? cJSON_Parse(text) : NULL;
    free(text);
    const cJSON *nl = c ? cJSON_GetObjectItem(c, "num_hidden_layers") : NULL;
    if (!cJSON_IsNumber(nl)) {
        cJSON_Delete(c);
        return 1;
    }
    int L = nl->valueint;
    cJSON_ReplaceItemInObject(c, "num_hidden_layers", cJSON_CreateNumber(2 * L));
    int rc = save_config_json(dst, c);
    st_set *s = NULL;
    if (rc || st_set_open_dir(src, &s)) return 1;
    int n = st_set_count(s), k = 0;
    st_entry *e = calloc((size_t)(2 * n), sizeof *e);
    char(*names)[160] = calloc((size_t)n, sizeof *names);
    for (int i = 0; i < n; i++) {
        const st_tensor *t = st_set_at(s, i);
        e[k++] = entry_of(t);
        const char *at = strstr(t->name, "layers.");
        int l = 0, used = 0;
        if (at && sscanf(at, "layers.%d.%n", &l, &used) == 1 && used > 0) {
            snprintf(names[i], sizeof names[i], "%.*slayers.%d.%s", (int)(at - t->name), t->name, l + L, at + used);
            e[k] = entry_of(t);
            e[k++].name = names[i];
        }
    }
    snprintf(path, sizeof path, "%s/model.safetensors", dst);
    rc = st_write(path, e, k, NULL);
    free(e);
    free(names);
    st_set_close(s);
    return rc;
}

/* NF4 with gradient checkpointing, layer inputs offloaded to host memory or not: the same step on a
 * model deep enough that inputs and kept attention halves come back from the host; bit for bit on the
 * CPU backend, to round-off elsewhere (a GPU's kernels may take other algorithms for buffers at other
 * addresses). */
static void check_offload(finch_runtime *rt, const char *arch, const char *src)
{
    char dir[1200];
    tmp_path(dir, sizeof dir, arch, "deep");
    if (write_deeper(src, dir)) {
        CHECK(0, "%s: writing the deeper model", arch);
        return;
    }
    finch_dtype types[2] = {FINCH_DTYPE_F32, FINCH_DTYPE_BF16};
    for (int i = 0; i < 4; i++) {
        /* The third run: f32 with the MLP in chunks of 7 tokens (its recomputed output in chunks); the
         * fourth: f32 with only the layer inputs offloaded (attention recomputed). */
        finch_dtype t = types[i % 2];
        outputs a, b;
        memset(&a, 0, sizeof a);
        memset(&b, 0, sizeof b);
        finch_model *plain = load(rt, dir, 1, 64, 0, t, 1);
        offload_next = 1;
        finch_model *off = load(rt, dir, 1, 64, 0, t, 1);
        if (off && i == 2) off->mlp_chunk_tokens = 7;
        if (off && i == 3) off->save_attention = 0;
        const char *what = i == 2 ? ", MLP in chunks of 7" : i == 3 ? ", attention recomputed" : "";
        if (plain && off && attach(plain) && attach(off) && run(plain, 1, &a) && run(off, 1, &b)) {
            double e = compare(&b, &a), tol = on_cpu && i != 2 ? 0.0 : t == FINCH_DTYPE_F32 ? 1e-5 : 1e-2;
            CHECK(e <= tol && a.n_grads > 0, "%s (%s, layers doubled%s): NF4 + checkpointing with activation offload = without: rel err %.3g",
                  arch, finch_dtype_name(t), what, e);
            printf("  %-28s offloaded activations (%s, %d layers%s): rel err %.1e\n", arch, finch_dtype_name(t),
                   (int)off->cfg.n_layers, what, e);
        }
        outputs_free(&a);
        outputs_free(&b);
        finch_model_free(plain);
        finch_model_free(off);
    }
}

/* NF4 with gradient checkpointing, the MLP run in chunks of 7 tokens (forward and backward) or whole:
 * the same loss, logits and LoRA gradients to round-off, with LoRA dropout too (a chunk's rows keep
 * their masks). */
static void check_mlp_chunks(finch_runtime *rt, const char *arch, const char *src)
{
    for (int d = 0; d < 2; d++) {
        outputs a, b;
        memset(&a, 0, sizeof a);
        memset(&b, 0, sizeof b);
        attach_dropout = d ? 0.25f : 0.0f;
        finch_model *whole = load(rt, src, 1, 64, 0, FINCH_DTYPE_F32, 1), *chunked = load(rt, src, 1, 64, 0, FINCH_DTYPE_F32, 1);
        if (chunked) chunked->mlp_chunk_tokens = 7;
        if (whole && chunked && attach(whole) && attach(chunked) && run(whole, 1, &a) && run(chunked, 1, &b)) {
            double e = compare(&b, &a);
            CHECK(e <= 1e-5 && a.n_grads > 0, "%s: NF4 + checkpointing, MLP in chunks of 7 tokens = whole (dropout %g): rel err %.3g", arch,
                  attach_dropout, e);
            printf("  %-28s MLP in chunks of 7 tokens (dropout %g): rel err %.1e\n", arch, attach_dropout, e);
        }
        attach_dropout = 0;
        outputs_free(&a);
        outputs_free(&b);
        finch_model_free(whole);
        finch_model_free(chunked);
    }
}

/* ---- merging from NF4 ----------------------------------------------------------------------------- */

/* The base weight of a 4-bit model reads back as deq(W) (the dense-dequantised model's weight, bit for
 * bit); merged = deq(W) + s B A (A, B read back, the product summed here in double); and the merged
 * export of the 4-bit model reloads as a dense model with the 4-bit model's logits. */
static void check_merge(finch_runtime *rt, const finch_model *q, const finch_model *d, const outputs *oq, const char *label,
                        const char *tag)
{
    int same_base = 1;
    double worst = 0;
    for (int k = 0; k < q->n_linears; k++) {
        const finch_linear_module *lq = q->linears[k], *ld = d->linears[k];
        int64_t out = lq->out_features, in = lq->in_features, r = lq->rank;
        float *bq = malloc((size_t)(out * in) * sizeof(float)), *bd = malloc((size_t)(out * in) * sizeof(float));
        float *merged = malloc((size_t)(out * in) * sizeof(float));
        float *a = malloc((size_t)(r * in) * sizeof(float)), *b = malloc((size_t)(out * r) * sizeof(float));
        if (ok(finch_linear_weight_f32(q, lq, bq), "finch_linear_weight_f32 (4-bit)") && ok(finch_linear_weight_f32(d, ld, bd), "finch_linear_weight_f32") &&
            ok(finch_linear_merged_f32(q, lq, merged), "finch_linear_merged_f32") && ok(finch_lora_factors_f32(q, lq, a, b), "finch_lora_factors_f32")) {
            same_base &= !memcmp(bq, bd, (size_t)(out * in) * sizeof(float));
            double num = 0, den = 0;
            for (int64_t o = 0; o < out; o++)
                for (int64_t i = 0; i < in; i++) {
                    double ba = 0;
                    for (int64_t j = 0; j < r; j++) ba += (double)b[o * r + j] * (double)a[j * in + i];
                    double ref = (double)bq[o * in + i] + (double)lq->scale * ba, dd = merged[o * in + i] - ref;
                    num += dd * dd;
                    den += ref * ref;
                }
            double e = sqrt(num / den);
            worst = e > worst ? e : worst;
        }
        free(bq);
        free(bd);
        free(merged);
        free(a);
        free(b);
    }
    CHECK(same_base, "%s: the 4-bit base reads back as the dequantised weights, bit for bit", label);
    CHECK(worst <= 1e-6, "%s: merged-from-NF4 = deq(W) + s B A: rel err %.3g", label, worst);
    char dir[1200];
    tmp_path(dir, sizeof dir, tag, "merged");
    if (!ok(finch_export_merged(q, dir, NULL), "finch_export_merged (4-bit)")) return;
    finch_model *mm = load(rt, dir, 0, 0, 0, FINCH_DTYPE_F32, 0);
    outputs om;
    if (mm && run(mm, 0, &om)) {
        double e = testing_rel_err(om.logits, oq->logits, (size_t)om.n_logits);
        CHECK(e <= 1e-5, "%s: the merged export of the 4-bit model has its logits: rel err %.3g", label, e);
        printf("  %-28s merged from NF4: weights rel err %.2e, logits rel err %.2e\n", label, worst, e);
        outputs_free(&om);
    }
    finch_model_free(mm);
}

/* ---- the equivalence check ------------------------------------------------------------------- */

/* Device bytes of lin's weight buffer. */
static int64_t weight_bytes(const finch_linear_module *lin) { return (int64_t)lin->weight.data.buf->size; }

static void check_model(finch_runtime *rt, const char *label, const char *src, const char *tag, int64_t bs,
                        const outputs *original)
{
    char deq_dir[1200];
    tmp_path(deq_dir, sizeof deq_dir, tag, "deq");

    /* the 4-bit model, with its device memory counted */
    live_bytes = peak_bytes = 0;
    finch_model *q = load(rt, src, 1, bs, 0, FINCH_DTYPE_F32, 0);
    int64_t q_live = live_bytes, q_peak = peak_bytes;
    if (!q) return;
    if (write_dequantised(src, deq_dir, q, bs, 0)) {
        CHECK(0, "%s: writing the dequantised checkpoint", label);
        finch_model_free(q);
        return;
    }
    live_bytes = peak_bytes = 0;
    finch_model *d = load(rt, deq_dir, 0, 0, 0, FINCH_DTYPE_F32, 0);
    int64_t d_live = live_bytes;

    /* memory: n/2 + absmax + code per weight, nothing dense, nothing transient */
    int64_t saved = 0, smallest_dense = INT64_MAX, packed_only = 0;
    int shapes_ok = 1;
    for (int k = 0; k < q->n_linears; k++) {
        const finch_linear_module *lin = q->linears[k];
        int64_t n = lin->in_features * lin->out_features, nb = (n + bs - 1) / bs, got = weight_bytes(lin);
        int64_t least = (n + 1) / 2 + 4 * nb + 64;
        if (got < least || got > least + 512) shapes_ok = 0;
        saved += 4 * n - got;
        packed_only += (n + 1) / 2;
        smallest_dense = 4 * n < smallest_dense ? 4 * n : smallest_dense;
    }
    CHECK(shapes_ok, "%s: every 4-bit weight buffer is n/2 + 4*ceil(n/%lld) + 64 bytes (+ alignment)", label, (long long)bs);
    /* an untied embedding table of a 4-bit model stays in host memory */
    CHECK(q->tied ? q->embed_host == NULL && q->embed.data.buf : q->embed_host && !q->embed.data.buf,
          "%s: the %s embedding table is %s", label, q->tied ? "tied" : "untied", q->tied ? "on the device" : "in host memory only");
    if (q->embed_host) saved += q->embed.numel * (int64_t)finch_dtype_size(q->embed.dtype);
    CHECK(d && d_live - q_live == saved, "%s: the dense model holds %lld more device bytes, the 4-bit weights (and a host-resident embedding table) save %lld", label,
          (long long)(d_live - q_live), (long long)saved);
    CHECK(q_peak - q_live < smallest_dense, "%s: loading peaked %lld bytes above the loaded model (a dense weight is %lld)", label,
          (long long)(q_peak - q_live), (long long)smallest_dense);
    printf("  %-28s device bytes: 4-bit %lld, dense %lld (linears: %lld packed bytes)\n", label, (long long)q_live,
           (long long)d_live, (long long)packed_only);

    /* f32: NF4 base vs the dense dequantised weights */
    outputs oq, od, oc, ob;
    memset(&oc, 0, sizeof oc);
    memset(&ob, 0, sizeof ob);
    if (attach(q) && d && attach(d) && run(q, 1, &oq) && run(d, 1, &od)) {
        double e = compare(&oq, &od);
        CHECK(e <= 1e-4, "%s: NF4 vs dequantised dense: rel err %.3g", label, e);
        printf("  %-28s NF4 vs dense deq: loss %.6f vs %.6f, worst rel err %.2e\n", label, oq.loss, od.loss, e);
        check_merge(rt, q, d, &oq, label, tag);
        if (original && original->logits) {
            double eo = testing_rel_err(oq.logits, original->logits, (size_t)oq.n_logits);
            CHECK(eo > 100 * e && eo > 1e-4, "%s: 4-bit logits differ from the original weights' (rel %.3g)", label, eo);
        }
        /* gradient checkpointing */
        finch_model *c = load(rt, src, 1, bs, 0, FINCH_DTYPE_F32, 1);
        if (c && attach(c) && run(c, 1, &oc)) {
            double ec = compare(&oc, &od);
            CHECK(ec <= 1e-4, "%s: NF4 + gradient checkpointing vs dense: rel err %.3g", label, ec);
        }
        finch_model_free(c);
        /* bf16 compute on the NF4 base, against the same dense weights in bf16 (loss, logits and LoRA
         * gradients) within the bf16 tolerance: 2e-2 (the goldens'), or, where bf16 rounding alone moves
         * the dense path further from its f32 result (gemma3's LoRA gradients: ~3e-2), that distance.
         * (The NF4 path may multiply by deq(W) in f32 where the dense one has it rounded to bf16: the
         * CPU backend and the GPU's small-m kernel do.) Loss and logits also against f32. */
        finch_model *b = load(rt, src, 1, bs, 0, FINCH_DTYPE_BF16, 0);
        finch_model *db = load(rt, deq_dir, 0, 0, 0, FINCH_DTYPE_BF16, 0);
        outputs odb;
        if (b && db && attach(b) && attach(db) && run(b, 1, &ob) && run(db, 1, &odb)) {
            double eb = compare(&ob, &odb), edf = compare(&odb, &od), tol = edf > 2e-2 ? edf : 2e-2;
            double el = testing_rel_err(ob.logits, od.logits, (size_t)ob.n_logits), ell = fabs(ob.loss - od.loss) / od.loss;
            CHECK(eb <= tol, "%s: NF4 bf16 vs dense bf16: rel err %.3g (tolerance %.3g)", label, eb, tol);
            CHECK(el <= 2e-2 && ell <= 2e-2, "%s: NF4 bf16 vs dense f32: logits rel err %.3g, loss %.3g", label, el, ell);
            printf("  %-28s NF4 bf16 vs dense bf16: worst rel err %.2e (dense bf16 vs f32 %.2e); vs f32 logits %.2e\n", label, eb,
                   edf, el);
            outputs_free(&odb);
        }
        finch_model_free(b);
        finch_model_free(db);
        outputs_free(&oq);
        outputs_free(&od);
    }
    outputs_free(&oc);
    outputs_free(&ob);
    finch_model_free(q);
    finch_model_free(d);
}

/* A bnb-4bit checkpoint of the golden weights (bnb_write, double quantisation) loads as-is, with the
 * logits of quantise-on-load; finch_model_save_4bit writes back the same tensors. */
static void check_bnb(finch_runtime *rt, const char *arch, const char *src)
{
    char dir[1200], saved[1200], path[1400];
    tmp_path(dir, sizeof dir, arch, "bnb");
    tmp_path(saved, sizeof saved, arch, "saved");
    finch_model *q = load(rt, src, 1, 64, 1, FINCH_DTYPE_F32, 0);
    if (!q) return;
    snprintf(path, sizeof path, "%s/model.safetensors", src);
    st_set *s = NULL;
    ok(st_set_open_file(path, &s), "open golden");
    int n = st_set_count(s), nw = 0, nx = 0;
    nf4_weight *w = calloc((size_t)n, sizeof *w);
    bnb_named_weight *named = calloc((size_t)n, sizeof *named);
    st_entry *extra = calloc((size_t)n, sizeof *extra);
    for (int i = 0; i < n; i++) {
        const st_tensor *t = st_set_at(s, i);
        int is_linear = 0;
        for (int k = 0; k < q->n_linears; k++) is_linear |= !strcmp(q->linears[k]->weight.name, t->name);
        if (!is_linear) {
            extra[nx++] = entry_of(t);
        } else if (ok(nf4_quantize_st_tensor(t, NF4_TYPE_NF4, 64, 1, &w[nw]), "quantise")) {
            named[nw].name = t->name;
            named[nw].w = &w[nw];
            nw++;
        }
    }
    int rc = write_config(src, dir, "{\"quant_method\": \"bitsandbytes\", \"load_in_4bit\": true, \"bnb_4bit_quant_type\": \"nf4\", "
                                    "\"bnb_4bit_use_double_quant\": true, \"bnb_4bit_compute_dtype\": \"bfloat16\"}", -1);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    CHECK(!rc && ok(bnb_write(path, named, nw, extra, nx), "bnb_write"), "%s: writing the bnb-4bit checkpoint", arch);

    outputs oq, ob, os;
    finch_model *b = load(rt, dir, 0, 0, 0, FINCH_DTYPE_F32, 0); /* no load_in_4bit: the checkpoint says it */
    if (b) {
        int all4 = b->n_linears > 0;
        for (int k = 0; k < b->n_linears; k++) all4 &= b->linears[k]->quant != NULL;
        CHECK(all4, "%s: every linear of the bnb-4bit checkpoint is 4-bit on the device", arch);
    }
    if (b && run(q, 0, &oq) && run(b, 0, &ob)) {
        CHECK(oq.n_logits == ob.n_logits && !memcmp(oq.logits, ob.logits, (size_t)oq.n_logits * sizeof(float)),
              "%s: bnb-4bit checkpoint logits equal quantise-on-load's bit for bit (rel %.3g)", arch,
              testing_rel_err(ob.logits, oq.logits, (size_t)oq.n_logits));
        /* save the 4-bit base and read it again */
        if (ok(finch_model_save_4bit(b, saved), "finch_model_save_4bit")) {
            finch_model *r = load(rt, saved, 0, 0, 0, FINCH_DTYPE_F32, 0);
            if (r && run(r, 0, &os)) {
                CHECK(!memcmp(os.logits, ob.logits, (size_t)ob.n_logits * sizeof(float)), "%s: saved 4-bit base reloads with the same logits", arch);
                outputs_free(&os);
            }
            finch_model_free(r);
            st_set *a = NULL, *c = NULL;
            char p2[1400];
            snprintf(p2, sizeof p2, "%s/model.safetensors", saved);
            if (ok(st_set_open_file(path, &a), "open written") && ok(st_set_open_file(p2, &c), "open saved")) {
                int same = st_set_count(a) == st_set_count(c);
                for (int i = 0; same && i < st_set_count(a); i++) {
                    const st_tensor *x = st_set_at(a, i), *y = st_set_find(c, x->name);
                    same = y && x->dtype == y->dtype && x->nbytes == y->nbytes && !memcmp(x->data, y->data, x->nbytes);
                    if (!same) fprintf(stderr, "  %s differs\n", x->name);
                }
                CHECK(same, "%s: finch_model_save_4bit writes every tensor of the bnb-4bit checkpoint it loaded, byte for byte", arch);
            }
            st_set_close(a);
            st_set_close(c);
            bnb_config bc;
            snprintf(p2, sizeof p2, "%s/config.json", saved);
            CHECK(bnb_config_load(p2, &bc) == FINCH_OK && bc.quantized && bc.double_quant && bc.quant_type == NF4_TYPE_NF4,
                  "%s: saved config.json has the bitsandbytes quantization_config", arch);
        }
        outputs_free(&oq);
        outputs_free(&ob);
    }
    finch_model_free(b);
    finch_model_free(q);
    for (int i = 0; i < nw; i++) nf4_weight_free(&w[i]);
    free(w);
    free(named);
    free(extra);
    st_set_close(s);
}

/* ---- falcon's reordered qkv -------------------------------------------------------------------- */

/* The golden falcon as a multi-head checkpoint ([head][q, k, v] rows, which finch reorders) with a
 * random qkv weight of that shape. */
static int write_falcon_mha(const char *shared, const char *dir)
{
    char src[1200], path[1400];
    snprintf(src, sizeof src, "%s/golden/falcon/model", shared);
    if (write_config(src, dir, NULL, 0)) return 1;
    snprintf(path, sizeof path, "%s/model.safetensors", src);
    st_set *s = NULL;
    if (st_set_open_file(path, &s)) return 1;
    int n = st_set_count(s);
    st_entry *e = calloc((size_t)n, sizeof *e);
    float **owned = calloc((size_t)n, sizeof *owned);
    for (int i = 0; i < n; i++) {
        const st_tensor *t = st_set_at(s, i);
        e[i] = entry_of(t);
        if (strstr(t->name, "query_key_value.weight")) {
            int64_t rows = 3 * t->shape[1], cols = t->shape[1];
            owned[i] = malloc((size_t)(rows * cols) * sizeof(float));
            testing_fill_random(owned[i], (size_t)(rows * cols), 7 + (unsigned long long)i);
            for (int64_t j = 0; j < rows * cols; j++) owned[i][j] *= 0.1f;
            e[i].dtype = ST_F32;
            e[i].shape[0] = rows;
            e[i].data = owned[i];
        }
    }
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    int rc = st_write(path, e, n, NULL);
    for (int i = 0; i < n; i++) free(owned[i]);
    free(owned);
    free(e);
    st_set_close(s);
    return rc;
}

static void check_falcon_reordered(finch_runtime *rt, const char *shared)
{
    char dir[1200], saved[1200];
    tmp_path(dir, sizeof dir, "falcon", "mha");
    if (write_falcon_mha(shared, dir)) {
        CHECK(0, "writing the multi-head falcon checkpoint");
        return;
    }
    finch_model *probe = load(rt, dir, 0, 0, 0, FINCH_DTYPE_F32, 0);
    CHECK(probe && probe->layers[0].qkv.row_perm, "the multi-head falcon checkpoint's qkv is reordered");
    finch_model_free(probe);
    /* blocks inside rows: moved as they are */
    check_model(rt, "falcon multi-head (bs 64)", dir, "falcon_mha64", 64, NULL);
    /* rows of 64 cannot own blocks of 128: quantised in finch's order */
    check_model(rt, "falcon multi-head (bs 128)", dir, "falcon_mha128", 128, NULL);

    /* saving: exact for row-owned blocks (the saved file reloads to the same logits); refused otherwise */
    tmp_path(saved, sizeof saved, "falcon", "mha_saved");
    finch_model *q = load(rt, dir, 1, 64, 0, FINCH_DTYPE_F32, 0);
    outputs a, b;
    if (q && ok(finch_model_save_4bit(q, saved), "save falcon 4-bit")) {
        finch_model *r = load(rt, saved, 0, 0, 0, FINCH_DTYPE_F32, 0);
        if (r && run(q, 0, &a) && run(r, 0, &b)) {
            CHECK(!memcmp(a.logits, b.logits, (size_t)a.n_logits * sizeof(float)), "reordered falcon: saved 4-bit checkpoint reloads bit for bit");
            outputs_free(&a);
            outputs_free(&b);
        }
        finch_model_free(r);
    }
    finch_model_free(q);
    q = load(rt, dir, 1, 128, 0, FINCH_DTYPE_F32, 0);
    if (q) {
        int rc = finch_model_save_4bit(q, saved);
        CHECK(rc == FINCH_ERR_UNSUPPORTED && strstr(finch_last_error(), "row order"),
              "own-order weights cannot be saved as bnb-4bit: %s (%s)", finch_status_name(rc), finch_last_error());
    }
    finch_model_free(q);
}

/* ---- errors ----------------------------------------------------------------------------------- */

static void expect_load_error(finch_runtime *rt, const char *dir, int in4, int full, int qtype, int64_t bs, int status,
                              const char *needle, const char *label)
{
    finch_load_options o = finch_load_options_default();
    o.load_in_4bit = in4;
    o.full_finetune = full;
    o.quant_type = qtype;
    o.quant_blocksize = bs;
    finch_model *m = NULL;
    int rc = finch_model_load(rt, dir, &o, &m);
    CHECK(rc == status && !m && strstr(finch_last_error(), needle), "%s: got %s (%s)", label, finch_status_name(rc),
          finch_last_error());
    finch_model_free(m);
}

static void check_errors(finch_runtime *rt, const char *shared)
{
    char src[1200], dir[1200], path[1400], link[1400];
    snprintf(src, sizeof src, "%s/golden/llama/model", shared);
    static const struct { const char *qc, *tag, *needle; } schemes[] = {
        {"{\"quant_method\": \"gptq\", \"bits\": 4, \"group_size\": 128}", "gptq", "GPTQ"},
        {"{\"quant_method\": \"awq\", \"bits\": 4, \"version\": \"gemm\"}", "awq", "AWQ"},
        {"{\"quant_method\": \"bitsandbytes\", \"load_in_8bit\": true}", "int8", "8-bit"},
    };
    for (size_t i = 0; i < sizeof schemes / sizeof schemes[0]; i++) {
        tmp_path(dir, sizeof dir, "llama", schemes[i].tag);
        write_config(src, dir, schemes[i].qc, -1);
        snprintf(path, sizeof path, "%s/model.safetensors", src);
        snprintf(link, sizeof link, "%s/model.safetensors", dir);
        remove(link);
        CHECK(symlink(path, link) == 0, "symlink %s", link);
        expect_load_error(rt, dir, 0, 0, 0, 0, FINCH_ERR_UNSUPPORTED, schemes[i].needle, schemes[i].tag);
        expect_load_error(rt, dir, 1, 0, 0, 0, FINCH_ERR_UNSUPPORTED, schemes[i].needle, schemes[i].tag);
    }
    expect_load_error(rt, src, 1, 1, 0, 0, FINCH_ERR_UNSUPPORTED, "full fine-tuning", "full fine-tuning + load_in_4bit");
    tmp_path(dir, sizeof dir, "llama", "bnb");
    expect_load_error(rt, dir, 0, 1, 0, 0, FINCH_ERR_UNSUPPORTED, "full fine-tuning", "full fine-tuning of a bnb-4bit checkpoint");
    expect_load_error(rt, src, 1, 0, 7, 0, FINCH_ERR_INVALID_ARGUMENT, "quant_type", "bad quant_type");
    expect_load_error(rt, src, 1, 0, 0, 48, FINCH_ERR_INVALID_ARGUMENT, "quant_blocksize", "bad blocksize");
    finch_model *d = load(rt, src, 0, 0, 0, FINCH_DTYPE_F32, 0);
    if (d) {
        int rc = finch_model_save_4bit(d, dir);
        CHECK(rc == FINCH_ERR_STATE, "save_4bit of a dense model: %s", finch_status_name(rc));
    }
    finch_model_free(d);
}

int main(int argc, char **argv)
{
    const char *shared = testing_shared_dir(), *backend = argc > 1 ? argv[1] : "cpu";
    finch_runtime *rt = NULL;
    printf("qlora on %s\n", backend);
    on_cpu = !strcmp(backend, "cpu");
    if (finch_runtime_open(backend, &rt) != FINCH_OK) {
        if (strcmp(backend, "cpu")) {
            printf("skipped: backend %s unavailable: %s\n", backend, finch_last_error());
            return 77;
        }
        ok(FINCH_ERR_DEVICE, "finch_runtime_open");
        return testing_finish();
    }
    count_device_memory(rt);
    for (size_t a = 0; a < sizeof archs / sizeof archs[0]; a++) {
        char dir[1200], path[1400];
        snprintf(dir, sizeof dir, "%s/golden/%s/model", shared, archs[a]);
        snprintf(path, sizeof path, "%s/golden/%s/golden.safetensors", shared, archs[a]);
        st_set *g = NULL;
        if (!ok(st_set_open_file(path, &g), path)) continue;
        const st_tensor *ti = st_set_find(g, "input_ids"), *tl = st_set_find(g, "labels");
        B = ti->shape[0];
        T = ti->shape[1];
        ids = malloc((size_t)(B * T) * sizeof *ids);
        labels = malloc((size_t)(B * T) * sizeof *labels);
        st_to_i32(ti, ids);
        st_to_i32(tl, labels);
        printf("%s\n", archs[a]);
        outputs orig;
        finch_model *m = load(rt, dir, 0, 0, 0, FINCH_DTYPE_F32, 0);
        if (m && attach(m) && run(m, 1, &orig)) {
            check_model(rt, archs[a], dir, archs[a], 64, &orig);
            outputs_free(&orig);
        }
        finch_model_free(m);
        check_bnb(rt, archs[a], dir);
        if (!strcmp(archs[a], "mistral") || !strcmp(archs[a], "phi3")) check_offload(rt, archs[a], dir);
        if (strcmp(archs[a], "falcon")) check_mlp_chunks(rt, archs[a], dir);
        free(ids);
        free(labels);
        st_set_close(g);
    }
    /* the falcon and error checks reuse the llama/falcon batch shapes */
    char path[1400];
    snprintf(path, sizeof path, "%s/golden/falcon/golden.safetensors", shared);
    st_set *g = NULL;
    if (ok(st_set_open_file(path, &g), path)) {
        const st_tensor *ti = st_set_find(g, "input_ids"), *tl = st_set_find(g, "labels");
        B = ti->shape[0];
        T = ti->shape[1];
        ids = malloc((size_t)(B * T) * sizeof *ids);
        labels = malloc((size_t)(B * T) * sizeof *labels);
        st_to_i32(ti, ids);
        st_to_i32(tl, labels);
        check_falcon_reordered(rt, shared);
        free(ids);
        free(labels);
        st_set_close(g);
    }
    check_errors(rt, shared);
    /* FP4 codes through the same path (code table on the device) */
    char llama[1200];
    snprintf(llama, sizeof llama, "%s/golden/llama/model", shared);
    snprintf(path, sizeof path, "%s/golden/llama/golden.safetensors", shared);
    if (ok(st_set_open_file(path, &g), path)) {
        const st_tensor *ti = st_set_find(g, "input_ids"), *tl = st_set_find(g, "labels");
        B = ti->shape[0];
        T = ti->shape[1];
        ids = malloc((size_t)(B * T) * sizeof *ids);
        labels = malloc((size_t)(B * T) * sizeof *labels);
        st_to_i32(ti, ids);
        st_to_i32(tl, labels);
        quant_type = FINCH_QUANT_FP4;
        check_model(rt, "llama fp4 (bs 128)", llama, "llama_fp4", 128, NULL);
        free(ids);
        free(labels);
        st_set_close(g);
    }
    finch_runtime_close(rt);
    return testing_finish();
}
