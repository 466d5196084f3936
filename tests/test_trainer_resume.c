/* Stop after step k, resume into fresh objects: the loss sequence and the final weights equal an
 * uninterrupted run's bit for bit (CPU f32). Two set-ups: LoRA with dropout (the model's step counter
 * seeds the masks) over several shuffled epochs with warmup, cosine decay, clipping and eval; and
 * full fine-tuning with 8-bit AdamW and a separate embedding LR (8-bit codes and scales restored).
 * Also: keep-last-K rotation, the latest-checkpoint lookup, and refusals to resume with a different
 * batch size or seed. */
#include "tests/train_fixtures.h"

#include <math.h>
#include <sys/stat.h>

#define STEPS 7
#define STOP 3

typedef struct setup {
    const char *name;
    int full;
    finch_optimizer optim;
} setup;

static finch_trainer_config config(const setup *s, const char *out)
{
    finch_trainer_config c = finch_trainer_config_default();
    c.output_dir = out;
    c.max_steps = STEPS;
    c.per_device_train_batch_size = 2;
    c.gradient_accumulation_steps = 2;
    c.learning_rate = 3e-3;
    c.lr_scheduler_type = FINCH_LR_COSINE;
    c.warmup_steps = 2;
    c.max_grad_norm = 0.5;
    c.optim = s->optim;
    c.embedding_learning_rate = s->full ? 1e-3 : 0;
    c.eval_split = 0.2;
    c.eval_steps = 2;
    c.save_total_limit = 2;
    c.seed = 99;
    c.lora.r = 4;
    c.lora.alpha = 8;
    c.lora.dropout = 0.1f;
    return c;
}

/* A fresh model, trainer and optionally a resume, then steps [first, last). */
static int run(finch_runtime *rt, const setup *s, const finch_train_data *data, const char *out, const char *resume_from,
               int64_t last, double *losses, float **params, size_t *n, int save_at_end)
{
    finch_model *m = fx_llama(rt, 0, s->full);
    finch_trainer *t = NULL;
    finch_trainer_config c = config(s, out);
    int good = m && fx_ok(finch_trainer_open(m, &c, data, &t), "open");
    if (good && resume_from) good = fx_ok(finch_trainer_resume(t, resume_from), "resume");
    while (good && finch_trainer_global_step(t) < last) {
        finch_train_progress p;
        int64_t k = finch_trainer_global_step(t);
        good = fx_ok(finch_trainer_step(t, &p), "step");
        if (good) losses[k] = p.loss;
        if (good && k + 1 == 4) {
            double el;
            good = fx_ok(finch_trainer_evaluate(t, &el), "evaluate");
        }
    }
    if (good && save_at_end) good = fx_ok(finch_trainer_save_checkpoint(t, NULL, 0), "save_checkpoint");
    if (good && params) *params = fx_read_all(m, 0, n);
    finch_trainer_close(t);
    finch_model_free(m);
    return good;
}

static void resume_case(finch_runtime *rt, const setup *s, const finch_train_data *data)
{
    char out_a[1200], out_b[1200], ck[1300];
    fx_tmp(out_a, sizeof out_a, "resume_a");
    fx_tmp(out_b, sizeof out_b, "resume_b");
    double la[STEPS], lb[STEPS];
    float *pa = NULL, *pb = NULL;
    size_t na = 0, nb = 0;
    memset(lb, 0, sizeof lb);
    if (!run(rt, s, data, out_a, NULL, STEPS, la, &pa, &na, 0)) return;
    /* Stopped after STOP steps (checkpoint), then a new trainer on a new model continues. */
    if (!run(rt, s, data, out_b, NULL, STOP, lb, NULL, NULL, 1)) return;
    CHECK(fx_ok(finch_trainer_latest_checkpoint(out_b, ck, sizeof ck), "latest checkpoint") && strstr(ck, "checkpoint-3"),
          "latest checkpoint is '%s'", ck);
    if (run(rt, s, data, out_b, ck, STEPS, lb, &pb, &nb, 0)) {
        CHECK(!memcmp(la, lb, sizeof la), "%s: losses after resume differ", s->name);
        for (int i = 0; i < STEPS; i++)
            if (la[i] != lb[i]) fprintf(stderr, "  step %d: %.17g vs %.17g\n", i + 1, la[i], lb[i]);
        CHECK(na == nb && !memcmp(pa, pb, na * sizeof(float)), "%s: weights after resume differ (rel err %.3g)", s->name,
              na == nb ? testing_rel_err(pb, pa, na) : 1.0);
        printf("  %-28s %d steps, stopped after %d and resumed: losses and weights bit-identical (last loss %.6f)\n", s->name, STEPS, STOP,
               la[STEPS - 1]);
        CHECK(la[STEPS - 1] < la[0], "%s: the loss did not fall (%.5f -> %.5f)", s->name, la[0], la[STEPS - 1]);
    }
    free(pa);
    free(pb);
}

static void rotation_and_refusals(finch_runtime *rt, const finch_train_data *data)
{
    setup s = {"lora", 0, FINCH_OPTIM_ADAMW};
    char out[1200], path[1400];
    fx_tmp(out, sizeof out, "resume_rotation");
    finch_model *m = fx_llama(rt, 0, 0);
    finch_trainer *t = NULL;
    finch_trainer_config c = config(&s, out);
    c.save_steps = 1;
    c.save_total_limit = 2;
    int n_ckpt = 0;
    if (m && fx_ok(finch_trainer_open(m, &c, data, &t), "open") && fx_ok(finch_trainer_run(t, NULL, NULL), "run")) {
        for (int k = 1; k <= STEPS; k++) {
            struct stat st;
            snprintf(path, sizeof path, "%s/checkpoint-%d", out, k);
            n_ckpt += stat(path, &st) == 0;
        }
        snprintf(path, sizeof path, "%s/checkpoint-%d/adapter_model.safetensors", out, STEPS);
        struct stat st;
        CHECK(n_ckpt == 2 && stat(path, &st) == 0, "save_total_limit 2: %d checkpoints left, last one with a PEFT adapter: %s", n_ckpt,
              stat(path, &st) == 0 ? "yes" : "no");
    }
    finch_trainer_close(t);
    finch_model_free(m);
    /* A resume with another batch size or seed is refused, naming the setting. */
    snprintf(path, sizeof path, "%s/checkpoint-%d", out, STEPS);
    m = fx_llama(rt, 0, 0);
    c.per_device_train_batch_size = 4;
    if (m && fx_ok(finch_trainer_open(m, &c, data, &t), "open")) {
        CHECK(finch_trainer_resume(t, path) == FINCH_ERR_INVALID_ARGUMENT && strstr(finch_last_error(), "per_device_train_batch_size"),
              "resume with another batch size: '%s'", finch_last_error());
        finch_trainer_close(t);
    }
    finch_model_free(m);
    m = fx_llama(rt, 0, 0);
    c.per_device_train_batch_size = 2;
    c.seed = 100;
    if (m && fx_ok(finch_trainer_open(m, &c, data, &t), "open")) {
        CHECK(finch_trainer_resume(t, path) == FINCH_ERR_INVALID_ARGUMENT && strstr(finch_last_error(), "seed"),
              "resume with another seed: '%s'", finch_last_error());
        finch_trainer_close(t);
    }
    finch_model_free(m);
}

int main(void)
{
    finch_runtime *rt = NULL;
    if (!(rt = fx_runtime())) return testing_finish();
    finch_train_data *data = fx_conversations(10, 3, 320);
    static const setup setups[] = {{"lora + dropout, adamw", 0, FINCH_OPTIM_ADAMW}, {"full fine-tuning, adamw8bit", 1, FINCH_OPTIM_ADAMW_8BIT}};
    for (size_t i = 0; i < sizeof setups / sizeof setups[0]; i++) resume_case(rt, &setups[i], data);
    rotation_and_refusals(rt, data);
    finch_train_data_free(data);
    finch_runtime_close(rt);
    return testing_finish();
}
