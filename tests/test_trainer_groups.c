/* Parameter groups of the optimizer in full fine-tuning (llama golden model, f32 and bf16 CPU):
 * embedding_learning_rate alone moves only embed_tokens / lm_head; weight decay never touches
 * biases and norm weights (1-D tensors) but does shrink matrices; under bf16 compute the stored
 * weights are the rounded f32 master copies and keep training. */
#include "tests/train_fixtures.h"

#include <math.h>

static finch_model *load_full(finch_runtime *rt, finch_dtype dtype)
{
    char dir[1200];
    fx_golden_dir(dir, sizeof dir, "llama", "model");
    finch_load_options o = finch_load_options_default();
    o.full_finetune = 1;
    o.compute_dtype = dtype;
    finch_model *m = NULL;
    fx_ok(finch_model_load(rt, dir, &o, &m), "load");
    return m;
}

/* Trains `steps` steps; before/after values of every trainable. */
static int train(finch_runtime *rt, finch_dtype dtype, const finch_train_data *data, double lr, double elr, double wd, int steps,
                 float **before, float **after, size_t *n, finch_model **keep)
{
    finch_model *m = load_full(rt, dtype);
    finch_trainer *t = NULL;
    finch_trainer_config c = finch_trainer_config_default();
    c.max_steps = steps;
    c.learning_rate = lr;
    c.embedding_learning_rate = elr;
    c.weight_decay = wd;
    c.lr_scheduler_type = FINCH_LR_CONSTANT;
    int good = m && fx_ok(finch_trainer_open(m, &c, data, &t), "open");
    if (good) *before = fx_read_all(m, 0, n);
    for (int s = 0; good && s < steps; s++) {
        finch_train_progress p;
        good = fx_ok(finch_trainer_step(t, &p), "step") && isfinite(p.loss);
    }
    if (good) *after = fx_read_all(m, 0, n);
    finch_trainer_close(t);
    if (keep) *keep = m;
    else finch_model_free(m);
    return good;
}

/* Counts, between two value snapshots, the moved matrices, vectors and embedding tensors. */
static void per_tensor(finch_model *m, const float *a, const float *b, int *moved, int *moved_1d, int *moved_embed, int *n_embed)
{
    int64_t n = finch_trainable_count(m);
    const float *pa = a, *pb = b;
    *moved = *moved_1d = *moved_embed = *n_embed = 0;
    for (int64_t i = 0; i < n; i++) {
        finch_tensor_info ti;
        finch_trainable_info(m, i, &ti);
        int changed = memcmp(pa, pb, (size_t)ti.numel * sizeof(float)) != 0;
        int embed = strstr(ti.name, "embed_tokens") || strstr(ti.name, "lm_head");
        *n_embed += embed;
        *moved_embed += embed && changed;
        *moved += !embed && changed && ti.ndim == 2;
        *moved_1d += changed && ti.ndim == 1;
        pa += ti.numel;
        pb += ti.numel;
    }
}

int main(void)
{
    finch_runtime *rt = NULL;
    if (!(rt = fx_runtime())) return testing_finish();
    finch_train_data *data = fx_conversations(8, 21, 320);
    float *a = NULL, *b = NULL, *c = NULL, *d = NULL;
    size_t n = 0;
    finch_model *m = NULL;

    /* LR 0 for everything but the embeddings. */
    if (train(rt, FINCH_DTYPE_F32, data, 0.0, 1e-3, 0.0, 1, &a, &b, &n, &m)) {
        int moved, moved_1d, moved_embed, n_embed;
        per_tensor(m, a, b, &moved, &moved_1d, &moved_embed, &n_embed);
        CHECK(n_embed >= 1 && moved_embed == n_embed && moved == 0 && moved_1d == 0,
              "embedding LR only: %d of %d embedding tensors moved, %d other matrices, %d vectors", moved_embed, n_embed, moved, moved_1d);
    }
    finch_model_free(m);
    free(a);
    free(b);
    a = b = NULL;

    /* Weight decay 0 vs 5 for one step (a second would see gradients of decayed matrices): vectors end
     * identical, matrices differ. */
    if (train(rt, FINCH_DTYPE_F32, data, 1e-3, 0, 0.0, 1, &a, &b, &n, NULL) && train(rt, FINCH_DTYPE_F32, data, 1e-3, 0, 5.0, 1, &c, &d, &n, &m)) {
        int64_t nt = finch_trainable_count(m);
        const float *p0 = b, *p1 = d;
        int vec_same = 1, mat_differ = 1;
        for (int64_t i = 0; i < nt; i++) {
            finch_tensor_info ti;
            finch_trainable_info(m, i, &ti);
            int same = !memcmp(p0, p1, (size_t)ti.numel * sizeof(float));
            if (ti.ndim == 1) vec_same &= same;
            else mat_differ &= !same;
            if (ti.ndim == 1 && !same) fprintf(stderr, "  decayed: %s\n", ti.name);
            p0 += ti.numel;
            p1 += ti.numel;
        }
        CHECK(vec_same, "weight decay touched a norm weight or bias");
        CHECK(mat_differ, "weight decay left a matrix unchanged");
    }
    finch_model_free(m);
    m = NULL;
    free(a);
    free(b);
    free(c);
    free(d);
    a = b = NULL;

    /* bf16 compute: f32 master copies; the stored weights are bf16 values and they move. */
    if (train(rt, FINCH_DTYPE_BF16, data, 1e-3, 0, 0.01, 2, &a, &b, &n, NULL)) {
        int representable = 1;
        size_t changed = 0;
        for (size_t i = 0; i < n; i++) {
            uint32_t u;
            memcpy(&u, &b[i], 4);
            representable &= (u & 0xffffu) == 0;
            changed += a[i] != b[i];
        }
        CHECK(representable && changed > n / 2, "bf16: stored weights bf16-representable %d, %zu of %zu changed", representable, changed, n);
    }
    free(a);
    free(b);
    finch_train_data_free(data);
    finch_runtime_close(rt);
    return testing_finish();
}
