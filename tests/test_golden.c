/* Parity with Hugging Face transformers + PEFT (float64 references) for one architecture:
 *     test_golden <arch> [backend]     (reads $FINCH_SHARED_DIR/golden/<arch>; backend "cpu" by default;
 *                                       exit 77 = skipped when that backend has no device here)
 * In f32: base logits, loss and full fine-tuning gradients (with the logits kept,
 * and again through the fused head + gradient checkpointing, accumulated over two calls); the golden
 * adapter's logits, loss and LoRA gradients; two AdamW steps; adapter save/reload bit for bit. */
#include "core/model.h"
#include "tests/golden_common.h"

static int step(finch_model *m, int want_logits, finch_step_result *r)
{
    finch_batch b = {.batch = B, .seq_len = T, .input_ids = ids, .labels = labels, .segment_ids = NULL};
    finch_step_options so = {want_logits, 0.0f};
    return ok(finch_forward_backward(m, &b, &so, r), "finch_forward_backward");
}

/* Two torch.optim.AdamW steps (lr 1e-2, wd 0.01) on the adapter through the plugin's adamw_step. */
static void adamw_two_steps(finch_model *m)
{
    int nt = m->n_trainables;
    float *ref_losses = gold_f32("adamw.losses", NULL);
    if (!ref_losses) return;
    finch_plugin_buffer **state = adamw_state(m);
    for (int s = 1; state && s <= 2; s++) {
        finch_step_result r;
        ok(finch_zero_grads(m), "finch_zero_grads");
        if (!step(m, 0, &r)) break;
        CHECK(fabs(r.loss - ref_losses[s - 1]) <= TOL * fabs(ref_losses[s - 1]), "adamw loss %d: %.7f vs %.7f", s, r.loss,
              ref_losses[s - 1]);
        adamw_step_all(m, state, s, 0.01f);
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
    }
    adamw_state_free(m, state);
    printf("  %-40s %lld tensors, worst rel err %.2e\n", "adamw.after2", (long long)matched, worst);
    free(ref_losses);
}

/* Saves m's adapter, loads it into a fresh copy of the model and checks every value bit for bit. */
static void save_reload(finch_runtime *rt, const char *model_dir, finch_model *m, const char *tag)
{
    char dir[1200];
    snprintf(dir, sizeof dir, "%s/golden_%s_%s_adapter", testing_tmp_dir(), m->cfg.model_type, tag);
    if (!ok(finch_lora_save(m, dir), "finch_lora_save")) return;
    finch_model *m2 = load(rt, model_dir, 0, 0, FINCH_DTYPE_F32);
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
    printf("golden %s on %s\n", argv[1], backend);

    finch_runtime *rt = NULL;
    if (finch_runtime_open(backend, &rt) != FINCH_OK) {
        printf("skipped: backend %s unavailable: %s\n", backend, finch_last_error());
        return 77;
    }
    if (!open_gold(base)) return testing_finish();
    finch_step_result r;

    /* Base model, full fine-tuning, logits kept. */
    finch_model *m = load(rt, model_dir, 1, 0, FINCH_DTYPE_F32);
    if (m && step(m, 1, &r)) {
        compare_logits(m, &r, "base", TOL, "");
        compare_grads(m, "base.grad.", 1.0, "base.grad (logits path)", NULL);
    }
    finch_model_free(m);

    /* Fused head + gradient checkpointing; two calls accumulate twice the gradient. */
    m = load(rt, model_dir, 1, 1, FINCH_DTYPE_F32);
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
        compare_grads(m, "base.grad.", 2.0, "2 x base.grad (fused, checkpointed)", NULL);
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
    m = load(rt, model_dir, 0, 0, FINCH_DTYPE_F32);
    if (m && ok(finch_lora_load(m, adapter_dir), "finch_lora_load")) {
        if (step(m, 1, &r)) {
            compare_logits(m, &r, "lora", TOL, "");
            compare_grads(m, "lora.grad.", 1.0, "lora.grad", NULL);
        }
        save_reload(rt, model_dir, m, "golden-adapter");
        adamw_two_steps(m);
    }
    finch_model_free(m);

    /* A fresh seeded adapter: save and reload. */
    m = load(rt, model_dir, 0, 0, FINCH_DTYPE_F32);
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
