/* Parity with Hugging Face transformers + PEFT (float64 references) for one architecture:
 *     test_golden <arch> [backend]     (reads $FINCH_SHARED_DIR/golden/<arch>; backend "cpu" by default;
 *                                       exit 77 = skipped when that backend has no device here)
 * In f32: base logits, loss and full fine-tuning gradients (with the logits kept,
 * and again through the fused head + gradient checkpointing, accumulated over two calls); the golden
 * adapter's logits, loss and LoRA gradients; two AdamW steps; adapter save/reload bit for bit. */
#include "core/model.h"
#include "core/safetensors.h"
#include "finch/finch.h"
#include "tests/testing.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOL 1e-4

static st_set *gold;
static char gold_path[1200];
static int32_t *ids, *labels;
static int64_t B, T;

static float *gold_f32(const char *name, int64_t *numel)
{
    const st_tensor *t = st_set_find(gold, name);
    if (!t) return NULL;
    float *v = malloc((size_t)t->numel * sizeof(float) + 1);
    if (v && st_to_f32(t, v)) {
        free(v);
        return NULL;
    }
    if (numel) *numel = t->numel;
    return v;
}

static int ok(int rc, const char *what)
{
    CHECK(rc == FINCH_OK, "%s: %s (%s)", what, finch_status_name(rc), finch_last_error());
    return rc == FINCH_OK;
}

static finch_model *load(finch_runtime *rt, const char *dir, int full, int ckpt)
{
    finch_load_options o = finch_load_options_default();
    o.full_finetune = full;
    o.gradient_checkpointing = ckpt;
    finch_model *m = NULL;
    ok(finch_model_load(rt, dir, &o, &m), "finch_model_load");
    return m;
}

static int step(finch_model *m, int want_logits, finch_step_result *r)
{
    finch_batch b = {.batch = B, .seq_len = T, .input_ids = ids, .labels = labels, .segment_ids = NULL};
    finch_step_options so = {want_logits, 0.0f};
    return ok(finch_forward_backward(m, &b, &so, r), "finch_forward_backward");
}

static void compare_logits(finch_model *m, const finch_step_result *r, const char *prefix)
{
    char name[128];
    snprintf(name, sizeof name, "%s.logits", prefix);
    int64_t n = 0;
    float *ref = gold_f32(name, &n), *got = malloc((size_t)n * sizeof(float) + 1);
    CHECK(ref != NULL, "%s: no %s", gold_path, name);
    if (ref && ok(finch_model_logits(m, got, (size_t)n), "finch_model_logits")) {
        double e = testing_rel_err(got, ref, (size_t)n);
        CHECK(e <= TOL, "%s: rel err %.3g", name, e);
        printf("  %-40s rel err %.2e\n", name, e);
    }
    free(ref);
    free(got);
    snprintf(name, sizeof name, "%s.loss", prefix);
    float *loss = gold_f32(name, NULL);
    if (loss) {
        double e = fabs(r->loss - loss[0]) / fabs(loss[0]);
        CHECK(e <= TOL, "%s: %.7f vs %.7f", name, r->loss, loss[0]);
        printf("  %-40s %.7f vs %.7f\n", name, r->loss, loss[0]);
    }
    free(loss);
}

/* Every golden gradient <prefix><name> matches the trainable of that name (times factor); every
 * trainable without one has a zero gradient. */
static void compare_grads(finch_model *m, const char *prefix, double factor, const char *label)
{
    int64_t nt = finch_trainable_count(m), matched = 0;
    double worst = 0;
    const char *worst_name = "";
    char worst_buf[300] = "";
    for (int64_t i = 0; i < nt; i++) {
        finch_tensor_info ti;
        if (!ok(finch_trainable_info(m, i, &ti), "finch_trainable_info")) return;
        float *got = malloc((size_t)ti.numel * sizeof(float));
        ok(finch_trainable_grad_read(m, i, got, ti.numel), "finch_trainable_grad_read");
        char name[400];
        snprintf(name, sizeof name, "%s%s", prefix, ti.name);
        int64_t n = 0;
        float *ref = gold_f32(name, &n);
        if (!ref) {
            double s = 0;
            for (int64_t j = 0; j < ti.numel; j++) s += fabs(got[j]);
            CHECK(s == 0, "%s: no golden gradient for %s, and ours is not zero", label, ti.name);
        } else {
            CHECK(n == ti.numel, "%s: %s has %lld elements, golden %lld", label, ti.name, (long long)ti.numel, (long long)n);
            for (int64_t j = 0; j < n; j++) ref[j] = (float)(ref[j] * factor);
            double e = n == ti.numel ? testing_rel_err(got, ref, (size_t)n) : 1.0;
            CHECK(e <= TOL, "%s: %s rel err %.3g", label, name, e);
            if (e > worst) {
                worst = e;
                snprintf(worst_buf, sizeof worst_buf, "%s", ti.name);
                worst_name = worst_buf;
            }
            matched++;
        }
        free(ref);
        free(got);
    }
    int64_t golden = 0;
    size_t plen = strlen(prefix);
    for (int i = 0; i < st_set_count(gold); i++) golden += !strncmp(st_set_at(gold, i)->name, prefix, plen);
    CHECK(matched == golden, "%s: %lld of %lld golden gradients have a trainable of that name", label, (long long)matched,
          (long long)golden);
    printf("  %-40s %lld tensors, worst rel err %.2e (%s)\n", label, (long long)matched, worst, worst_name);
}

/* Two torch.optim.AdamW steps (lr 1e-2, wd 0.01) on the adapter through the plugin's adamw_step. */
static void adamw_two_steps(finch_runtime *rt, finch_model *m)
{
    const finch_backend *be = &rt->backend;
    int nt = m->n_trainables;
    finch_plugin_buffer **state = calloc((size_t)nt, sizeof *state);
    float *ref_losses = gold_f32("adamw.losses", NULL);
    if (!ref_losses) {
        free(state);
        return;
    }
    for (int i = 0; i < nt; i++) {
        size_t bytes = (size_t)m->trainables[i].param->numel * 4;
        be->api->alloc(be->dev, 2 * bytes, &state[i]);
        be->api->fill(be->dev, be->stream, (finch_dptr){state[i], 0}, FINCH_DTYPE_F32, 2 * m->trainables[i].param->numel, 0.0f);
    }
    for (int s = 1; s <= 2; s++) {
        finch_step_result r;
        ok(finch_zero_grads(m), "finch_zero_grads");
        if (!step(m, 0, &r)) break;
        CHECK(fabs(r.loss - ref_losses[s - 1]) <= TOL * fabs(ref_losses[s - 1]), "adamw loss %d: %.7f vs %.7f", s, r.loss,
              ref_losses[s - 1]);
        for (int i = 0; i < nt; i++) {
            finch_param *p = m->trainables[i].param;
            finch_adamw_desc d;
            memset(&d, 0, sizeof d);
            d.n = p->numel;
            d.param_type = p->dtype;
            d.param = p->data;
            d.grad = p->grad;
            d.m = (finch_dptr){state[i], 0};
            d.v = (finch_dptr){state[i], (size_t)p->numel * 4};
            d.lr = 1e-2f;
            d.beta1 = 0.9f;
            d.beta2 = 0.999f;
            d.eps = 1e-8f;
            d.weight_decay = 0.01f;
            d.grad_scale = 1.0f;
            d.bias_correction1 = 1.0f - powf(0.9f, (float)s);
            d.bias_correction2 = 1.0f - powf(0.999f, (float)s);
            ok(be->api->adamw_step(be->dev, be->stream, &d), "adamw_step");
        }
    }
    int64_t matched = 0;
    double worst = 0;
    for (int i = 0; i < nt; i++) {
        finch_tensor_info ti;
        finch_trainable_info(m, i, &ti);
        char name[400];
        snprintf(name, sizeof name, "adamw.after2.%s", ti.name);
        float *ref = gold_f32(name, NULL), *got = malloc((size_t)ti.numel * sizeof(float));
        CHECK(ref != NULL, "no %s", name);
        if (ref) {
            ok(finch_trainable_read(m, i, got, ti.numel), "finch_trainable_read");
            double e = testing_rel_err(got, ref, (size_t)ti.numel);
            CHECK(e <= TOL, "%s: rel err %.3g", name, e);
            worst = e > worst ? e : worst;
            matched++;
        }
        free(ref);
        free(got);
        be->api->free(be->dev, state[i]);
    }
    printf("  %-40s %lld tensors, worst rel err %.2e\n", "adamw.after2", (long long)matched, worst);
    free(state);
    free(ref_losses);
}

/* Saves m's adapter, loads it into a fresh copy of the model and checks every value bit for bit. */
static void save_reload(finch_runtime *rt, const char *model_dir, finch_model *m, const char *tag)
{
    char dir[1200];
    snprintf(dir, sizeof dir, "%s/golden_%s_%s_adapter", testing_tmp_dir(), m->cfg.model_type, tag);
    if (!ok(finch_lora_save(m, dir), "finch_lora_save")) return;
    finch_model *m2 = load(rt, model_dir, 0, 0);
    if (!m2) return;
    if (ok(finch_lora_load(m2, dir), "finch_lora_load of a saved adapter")) {
        int64_t n = finch_trainable_count(m);
        CHECK(n == finch_trainable_count(m2), "%s: %lld trainables after reload, %lld before", tag,
              (long long)finch_trainable_count(m2), (long long)n);
        int same = 1;
        for (int64_t i = 0; i < n && i < finch_trainable_count(m2); i++) {
            finch_tensor_info a, b;
            finch_trainable_info(m, i, &a);
            finch_trainable_info(m2, i, &b);
            CHECK(!strcmp(a.name, b.name) && a.numel == b.numel, "%s: trainable %lld is %s, was %s", tag, (long long)i, b.name, a.name);
            if (a.numel != b.numel) continue;
            float *x = malloc((size_t)a.numel * 4), *y = malloc((size_t)a.numel * 4);
            finch_trainable_read(m, i, x, a.numel);
            finch_trainable_read(m2, i, y, b.numel);
            same &= !memcmp(x, y, (size_t)a.numel * 4);
            free(x);
            free(y);
        }
        CHECK(same, "%s: the reloaded adapter differs", tag);
        printf("  %-40s %s\n", tag, same ? "bit-exact" : "DIFFERS");
    }
    finch_model_free(m2);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: test_golden ARCH [BACKEND]\n");
        return 2;
    }
    const char *backend = argc > 2 ? argv[2] : "cpu";
    char base[1024], model_dir[1100], adapter_dir[1100];
    snprintf(base, sizeof base, "%s/golden/%s", testing_shared_dir(), argv[1]);
    snprintf(model_dir, sizeof model_dir, "%s/model", base);
    snprintf(adapter_dir, sizeof adapter_dir, "%s/adapter", base);
    snprintf(gold_path, sizeof gold_path, "%s/golden.safetensors", base);
    printf("golden %s on %s\n", argv[1], backend);

    finch_runtime *rt = NULL;
    if (finch_runtime_open(backend, &rt) != FINCH_OK) {
        printf("skipped: backend %s unavailable: %s\n", backend, finch_last_error());
        return 77;
    }
    if (!ok(st_set_open_file(gold_path, &gold), gold_path))
        return testing_finish();
    const st_tensor *t = st_set_find(gold, "input_ids");
    CHECK(t && t->ndim == 2, "%s: input_ids", gold_path);
    if (!t) return testing_finish();
    B = t->shape[0];
    T = t->shape[1];
    ids = malloc((size_t)(B * T) * 4);
    labels = malloc((size_t)(B * T) * 4);
    st_to_i32(t, ids);
    st_to_i32(st_set_find(gold, "labels"), labels);
    finch_step_result r;

    /* Base model, full fine-tuning, logits kept. */
    finch_model *m = load(rt, model_dir, 1, 0);
    if (m && step(m, 1, &r)) {
        compare_logits(m, &r, "base");
        compare_grads(m, "base.grad.", 1.0, "base.grad (logits path)");
    }
    finch_model_free(m);

    /* Fused head + gradient checkpointing; two calls accumulate twice the gradient. */
    m = load(rt, model_dir, 1, 1);
    if (m && step(m, 0, &r) && step(m, 0, &r)) {
        /* The second step reused the first one's arena: one chunk, no growth. */
        size_t peak = m->arena.peak;
        CHECK(step(m, 0, &r) && m->arena.n_chunks == 1 && m->arena.peak == peak, "arena: %d chunks, peak %zu -> %zu",
              m->arena.n_chunks, peak, m->arena.peak);
        finch_zero_grads(m);
        step(m, 0, &r);
        step(m, 0, &r);
        float *loss = gold_f32("base.loss", NULL);
        CHECK(loss && fabs(r.loss - loss[0]) <= TOL * fabs(loss[0]), "fused loss %.7f", r.loss);
        free(loss);
        compare_grads(m, "base.grad.", 2.0, "2 x base.grad (fused, checkpointed)");
    }
    finch_model_free(m);

    /* bf16 compute: within the tolerance the references give for bf16 (2e-2). */
    {
        finch_load_options o = finch_load_options_default();
        o.compute_dtype = FINCH_DTYPE_BF16;
        finch_model *mb = NULL;
        if (ok(finch_model_load(rt, model_dir, &o, &mb), "bf16 load") && ok(finch_lora_load(mb, adapter_dir), "bf16 adapter") &&
            step(mb, 1, &r)) {
            int64_t n = 0;
            float *ref = gold_f32("lora.logits", &n), *got = malloc((size_t)n * sizeof(float) + 1), *loss = gold_f32("lora.loss", NULL);
            if (ref && loss && ok(finch_model_logits(mb, got, (size_t)n), "bf16 logits")) {
                double e = testing_rel_err(got, ref, (size_t)n), el = fabs(r.loss - loss[0]) / loss[0];
                CHECK(e <= 2e-2 && el <= 2e-2, "bf16 lora.logits rel err %.3g, loss rel err %.3g", e, el);
                printf("  %-40s rel err %.2e, loss %.2e\n", "bf16 lora.logits", e, el);
            }
            free(ref);
            free(got);
            free(loss);
        }
        finch_model_free(mb);
    }

    /* The golden PEFT adapter. */
    m = load(rt, model_dir, 0, 0);
    if (m && ok(finch_lora_load(m, adapter_dir), "finch_lora_load")) {
        if (step(m, 1, &r)) {
            compare_logits(m, &r, "lora");
            compare_grads(m, "lora.grad.", 1.0, "lora.grad");
        }
        save_reload(rt, model_dir, m, "golden-adapter");
        adamw_two_steps(rt, m);
    }
    finch_model_free(m);

    /* A fresh seeded adapter: save and reload. */
    m = load(rt, model_dir, 0, 0);
    if (m) {
        finch_lora_config lc = finch_lora_config_default();
        lc.r = 4;
        lc.alpha = 8;
        lc.seed = 42;
        if (ok(finch_lora_attach(m, &lc), "finch_lora_attach")) save_reload(rt, model_dir, m, "attached-adapter");
    }
    finch_model_free(m);

    st_set_close(gold);
    free(ids);
    free(labels);
    finch_runtime_close(rt);
    return testing_finish();
}
