/* Two AdamW steps through the trainer on every golden model (its PEFT adapter, its batch read as
 * pre-tokenized data) reproduce torch's adamw.losses and adamw.after2.* (f32 CPU, <= 1e-5 relative):
 * lr 1e-2 constant, betas 0.9/0.999, eps 1e-8, weight decay 0.01, no clipping. */
#include "core/safetensors.h"
#include "tests/train_fixtures.h"

#include <math.h>

#define TOL 1e-5

static void golden_arch(finch_runtime *rt, const char *arch)
{
    char model_dir[1200], adapter_dir[1200], gold_path[1200];
    fx_golden_dir(model_dir, sizeof model_dir, arch, "model");
    fx_golden_dir(adapter_dir, sizeof adapter_dir, arch, "adapter");
    fx_golden_dir(gold_path, sizeof gold_path, arch, "golden.safetensors");
    st_set *gold = NULL;
    finch_model *m = NULL;
    finch_train_data *data = NULL;
    finch_trainer *t = NULL;
    if (!fx_ok(st_set_open_file(gold_path, &gold), gold_path)) return;
    const st_tensor *ids = st_set_find(gold, "input_ids"), *losses = st_set_find(gold, "adamw.losses");
    CHECK(ids && losses && losses->numel == 2, "%s: input_ids / adamw.losses", gold_path);
    if (!ids || !losses) goto done;
    if (!fx_ok(finch_model_load(rt, model_dir, NULL, &m), model_dir) || !fx_ok(finch_lora_load(m, adapter_dir), adapter_dir) ||
        !fx_ok(finch_train_data_from_safetensors(gold_path, &data), "pre-tokenized golden batch"))
        goto done;
    finch_trainer_config c = finch_trainer_config_default();
    c.max_steps = 2;
    c.per_device_train_batch_size = (int)ids->shape[0];
    c.gradient_accumulation_steps = 1;
    c.learning_rate = 1e-2;
    c.lr_scheduler_type = FINCH_LR_CONSTANT;
    c.weight_decay = 0.01;
    c.max_grad_norm = 0;
    c.shuffle = 0;
    c.max_seq_length = ids->shape[1];
    if (!fx_ok(finch_trainer_open(m, &c, data, &t), "finch_trainer_open")) goto done;
    float ref_losses[2];
    st_to_f32(losses, ref_losses);
    for (int s = 0; s < 2; s++) {
        finch_train_progress p;
        if (!fx_ok(finch_trainer_step(t, &p), "finch_trainer_step")) goto done;
        double e = fabs(p.loss - ref_losses[s]) / fabs(ref_losses[s]);
        CHECK(e <= TOL, "%s: loss before step %d: %.7f, torch %.7f", arch, s + 1, p.loss, ref_losses[s]);
        CHECK(p.step == s + 1 && p.learning_rate == 1e-2, "%s: progress step %lld lr %g", arch, (long long)p.step, p.learning_rate);
    }
    double worst = 0;
    int64_t n = finch_trainable_count(m), matched = 0;
    for (int64_t i = 0; i < n; i++) {
        finch_tensor_info ti;
        finch_trainable_info(m, i, &ti);
        char name[400];
        snprintf(name, sizeof name, "adamw.after2.%s", ti.name);
        const st_tensor *ref = st_set_find(gold, name);
        CHECK(ref && ref->numel == ti.numel, "%s: no %s of %lld elements", arch, name, (long long)ti.numel);
        if (!ref || ref->numel != ti.numel) continue;
        float *got = malloc((size_t)ti.numel * sizeof(float)), *want = malloc((size_t)ti.numel * sizeof(float));
        finch_trainable_read(m, i, got, ti.numel);
        st_to_f32(ref, want);
        double e = testing_rel_err(got, want, (size_t)ti.numel);
        CHECK(e <= TOL, "%s: %s rel err %.3g", arch, name, e);
        worst = e > worst ? e : worst;
        matched++;
        free(got);
        free(want);
    }
    CHECK(finch_trainer_step(t, NULL) == FINCH_ERR_STATE, "%s: a third step of max_steps 2 must fail with FINCH_ERR_STATE", arch);
    printf("  %-8s losses match, %lld tensors after 2 steps, worst rel err %.2e\n", arch, (long long)matched, worst);
done:
    finch_trainer_close(t);
    finch_train_data_free(data);
    finch_model_free(m);
    st_set_close(gold);
}

int main(void)
{
    static const char *archs[] = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "phi3", "falcon"};
    finch_runtime *rt = NULL;
    if (!(rt = fx_runtime())) return testing_finish();
    for (size_t i = 0; i < sizeof archs / sizeof archs[0]; i++) golden_arch(rt, archs[i]);
    finch_runtime_close(rt);
    return testing_finish();
}
