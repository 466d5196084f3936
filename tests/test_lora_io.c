/* LoRA attach / save / load: PEFT names and config fields, bit-exact round trips, rsLoRA scaling,
 * regex target_modules, dropout determinism under gradient checkpointing, and state errors.
 * Uses the llama golden model as a base. */
#include "core/safetensors.h"
#include "finch/finch.h"
#include "tests/testing.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char model_dir[1024], tmp[1024];
static finch_runtime *rt;
static int32_t ids[2 * 12], labels[2 * 12];
static const finch_batch batch = {.batch = 2, .seq_len = 12, .input_ids = ids, .labels = labels, .segment_ids = NULL};

static finch_model *load(int full, int ckpt)
{
    finch_load_options o = finch_load_options_default();
    o.full_finetune = full;
    o.gradient_checkpointing = ckpt;
    finch_model *m = NULL;
    int rc = finch_model_load(rt, model_dir, &o, &m);
    CHECK(rc == FINCH_OK, "load: %s", finch_last_error());
    return m;
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    fputs(text, f);
    fclose(f);
}

static double loss_of(finch_model *m)
{
    finch_step_result r;
    int rc = finch_forward(m, &batch, NULL, &r);
    CHECK(rc == FINCH_OK, "forward: %s", finch_last_error());
    return r.loss;
}

/* Gives every lora_B small non-zero values so the adapter changes the output. */
static void perturb_b(finch_model *m)
{
    int rc = testing_lora_b_random(m, 1, 0.05f);
    CHECK(rc == FINCH_OK, "perturbing lora_B: %s", finch_last_error());
}

static void test_attach_names_and_config(void)
{
    finch_model *m = load(0, 0);
    if (!m) return;
    double base = loss_of(m);
    finch_lora_config lc = finch_lora_config_default();
    lc.r = 8;
    lc.alpha = 16;
    lc.use_rslora = 1;
    lc.target_modules = "q_proj, v_proj";
    lc.seed = 7;
    CHECK(finch_lora_attach(m, &lc) == FINCH_OK, "attach: %s", finch_last_error());
    CHECK(finch_lora_attach(m, &lc) == FINCH_ERR_STATE, "a second attach must fail with FINCH_ERR_STATE");
    CHECK(finch_trainable_count(m) == 8, "q_proj,v_proj on 2 layers: 8 tensors, got %lld", (long long)finch_trainable_count(m));
    finch_tensor_info ti;
    finch_trainable_info(m, 0, &ti);
    CHECK(!strcmp(ti.name, "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight") && ti.shape[0] == 8 &&
              ti.shape[1] == 64,
          "first trainable: %s [%lld, %lld]", ti.name, (long long)ti.shape[0], (long long)ti.shape[1]);
    float a[8 * 64], b[64 * 8];
    finch_trainable_read(m, 0, a, 8 * 64);
    finch_trainable_read(m, 1, b, 64 * 8);
    double amax = 0, bsum = 0, amean = 0;
    for (int i = 0; i < 8 * 64; i++) {
        amax = fmax(amax, fabs(a[i]));
        amean += a[i] / (8 * 64);
        bsum += fabs(b[i]);
    }
    CHECK(amax <= 1.0 / 8.0 && amax > 0.1, "A ~ U(-1/sqrt(64), 1/sqrt(64)): max |A| = %g", amax);
    CHECK(fabs(amean) < 0.02, "A mean %g", amean);
    CHECK(bsum == 0, "B starts at zero");
    CHECK(fabs(loss_of(m) - base) < 1e-6, "a fresh adapter leaves the output unchanged");

    perturb_b(m);
    double adapted = loss_of(m);
    CHECK(fabs(adapted - base) > 1e-5, "a non-zero B changes the loss (%g vs %g)", adapted, base);
    char dir[1100];
    snprintf(dir, sizeof dir, "%s/lora_io_qv", tmp);
    CHECK(finch_lora_save(m, dir) == FINCH_OK, "save: %s", finch_last_error());

    char path[1400];
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    char *text = testing_read_file(path);
    cJSON *c = text ? cJSON_Parse(text) : NULL;
    CHECK(c != NULL, "adapter_config.json parses");
    if (c) {
        cJSON *tm = cJSON_GetObjectItem(c, "target_modules");
        CHECK(!strcmp(cJSON_GetObjectItem(c, "peft_type")->valuestring, "LORA"), "peft_type");
        CHECK(cJSON_GetObjectItem(c, "r")->valuedouble == 8, "r");
        CHECK(cJSON_GetObjectItem(c, "lora_alpha")->valuedouble == 16, "lora_alpha");
        CHECK(cJSON_IsTrue(cJSON_GetObjectItem(c, "use_rslora")), "use_rslora");
        CHECK(cJSON_GetObjectItem(c, "lora_dropout")->valuedouble == 0, "lora_dropout");
        CHECK(!strcmp(cJSON_GetObjectItem(c, "bias")->valuestring, "none"), "bias");
        CHECK(cJSON_IsFalse(cJSON_GetObjectItem(c, "fan_in_fan_out")), "fan_in_fan_out");
        CHECK(!strcmp(cJSON_GetObjectItem(c, "task_type")->valuestring, "CAUSAL_LM"), "task_type");
        CHECK(cJSON_GetObjectItem(c, "base_model_name_or_path") != NULL, "base_model_name_or_path");
        CHECK(cJSON_IsArray(tm) && cJSON_GetArraySize(tm) == 2 && !strcmp(cJSON_GetArrayItem(tm, 0)->valuestring, "q_proj") &&
                  !strcmp(cJSON_GetArrayItem(tm, 1)->valuestring, "v_proj"),
              "target_modules [q_proj, v_proj]");
    }
    cJSON_Delete(c);
    free(text);
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    st_file *f = NULL;
    CHECK(st_open(path, &f) == FINCH_OK, "adapter_model.safetensors opens: %s", finch_last_error());
    if (f) {
        CHECK(st_count(f) == 8, "8 tensors saved");
        const st_tensor *t = st_find(f, "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight");
        CHECK(t && t->dtype == ST_F32 && t->shape[0] == 32 && t->shape[1] == 8, "v_proj lora_B saved as F32 [32, 8]");
        st_close(f);
    }

    /* Reload: bit-exact values and the same output. */
    finch_model *m2 = load(0, 0);
    if (m2) {
        CHECK(finch_lora_load(m2, dir) == FINCH_OK, "reload: %s", finch_last_error());
        CHECK(finch_trainable_count(m2) == 8, "reloaded count");
        int same = 1;
        for (int64_t i = 0; i < 8; i++) {
            finch_tensor_info t1;
            finch_trainable_info(m, i, &t1);
            float *x = malloc((size_t)t1.numel * 4), *y = malloc((size_t)t1.numel * 4);
            finch_trainable_read(m, i, x, t1.numel);
            finch_trainable_read(m2, i, y, t1.numel);
            same &= !memcmp(x, y, (size_t)t1.numel * 4);
            free(x);
            free(y);
        }
        CHECK(same, "reloaded adapter is bit-exact");
        CHECK(loss_of(m2) == adapted, "reloaded adapter gives the same loss");

        /* rsLoRA: alpha 16 / sqrt(8) equals plain LoRA with alpha 16 * sqrt(8) / ... = alpha' / 8. */
        snprintf(path, sizeof path, "%s/adapter_config.json", dir);
        text = testing_read_file(path);
        c = cJSON_Parse(text);
        cJSON_ReplaceItemInObject(c, "use_rslora", cJSON_CreateFalse());
        cJSON_ReplaceItemInObject(c, "lora_alpha", cJSON_CreateNumber(16.0 * 8.0 / sqrt(8.0)));
        char *out = cJSON_Print(c);
        char dir2[1200];
        snprintf(dir2, sizeof dir2, "%s/lora_io_plain", tmp);
        CHECK(finch_lora_save(m2, dir2) == FINCH_OK, "save copy: %s", finch_last_error());
        snprintf(path, sizeof path, "%s/adapter_config.json", dir2);
        write_text(path, out);
        free(out);
        free(text);
        cJSON_Delete(c);
        finch_model *m3 = load(0, 0);
        if (m3) {
            CHECK(finch_lora_load(m3, dir2) == FINCH_OK, "load plain: %s", finch_last_error());
            double l3 = loss_of(m3);
            CHECK(fabs(l3 - adapted) < 1e-5, "rsLoRA scale alpha/sqrt(r): %.7f vs %.7f", l3, adapted);
        }
        finch_model_free(m3);
    }
    finch_model_free(m2);
    finch_model_free(m);
}

static void test_regex_targets(void)
{
    /* An all-linear adapter saved by finch, reloaded with a regular expression for target_modules. */
    finch_model *m = load(0, 0);
    if (!m) return;
    finch_lora_config lc = finch_lora_config_default();
    lc.r = 2;
    lc.target_modules = "all-linear";
    CHECK(finch_lora_attach(m, &lc) == FINCH_OK, "attach all-linear: %s", finch_last_error());
    CHECK(finch_trainable_count(m) == 2 * 7 * 2, "all-linear: 28 tensors, got %lld", (long long)finch_trainable_count(m));
    perturb_b(m);
    double l = loss_of(m);
    char dir[1100], path[1400];
    snprintf(dir, sizeof dir, "%s/lora_io_all", tmp);
    CHECK(finch_lora_save(m, dir) == FINCH_OK, "save: %s", finch_last_error());
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    char *text = testing_read_file(path);
    cJSON *c = cJSON_Parse(text);
    CHECK(cJSON_GetArraySize(cJSON_GetObjectItem(c, "target_modules")) == 7, "all-linear saves 7 module names");

    cJSON_ReplaceItemInObject(c, "target_modules", cJSON_CreateString("model\\.layers\\.\\d+\\.(self_attn|mlp)\\.\\w+_proj"));
    char *out = cJSON_Print(c);
    write_text(path, out);
    free(out);
    finch_model *m2 = load(0, 0);
    CHECK(m2 && finch_lora_load(m2, dir) == FINCH_OK, "regex target_modules: %s", finch_last_error());
    if (m2) CHECK(finch_trainable_count(m2) == 28 && loss_of(m2) == l, "regex selects the same 14 modules");
    finch_model_free(m2);

    /* A regex that leaves out layer 1: its tensors in the file are then an error, not ignored. */
    cJSON_ReplaceItemInObject(c, "target_modules", cJSON_CreateString("^(?!.*layers\\.1\\.).*\\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"));
    out = cJSON_Print(c);
    write_text(path, out);
    free(out);
    m2 = load(0, 0);
    int rc = m2 ? (int)finch_lora_load(m2, dir) : -1;
    CHECK(rc == FINCH_ERR_UNSUPPORTED && strstr(finch_last_error(), "layers.1"),
          "tensors outside target_modules are refused: %d %s", rc, finch_last_error());
    if (m2) CHECK(finch_trainable_count(m2) == 0, "a failed load attaches nothing");
    finch_model_free(m2);

    /* A pattern PCRE2 cannot compile is an error. */
    cJSON_ReplaceItemInObject(c, "target_modules", cJSON_CreateString("(q_proj"));
    out = cJSON_Print(c);
    write_text(path, out);
    free(out);
    m2 = load(0, 0);
    rc = m2 ? (int)finch_lora_load(m2, dir) : -1;
    CHECK(rc == FINCH_ERR_UNSUPPORTED && strstr(finch_last_error(), "target_modules"), "bad regex: %d %s", rc, finch_last_error());
    finch_model_free(m2);

    /* DoRA is refused, not ignored. */
    cJSON_ReplaceItemInObject(c, "target_modules", cJSON_CreateString("q_proj"));
    cJSON_ReplaceItemInObject(c, "use_dora", cJSON_CreateTrue());
    out = cJSON_Print(c);
    write_text(path, out);
    free(out);
    m2 = load(0, 0);
    rc = m2 ? (int)finch_lora_load(m2, dir) : -1;
    CHECK(rc == FINCH_ERR_UNSUPPORTED && strstr(finch_last_error(), "use_dora"), "use_dora: %d %s", rc, finch_last_error());
    finch_model_free(m2);
    cJSON_Delete(c);
    free(text);
    finch_model_free(m);
}

/* LoRA dropout: training steps differ from eval, and a checkpointed model recomputes the same masks. */
static void test_dropout(void)
{
    finch_model *a = load(0, 0), *b = load(0, 1);
    if (!a || !b) {
        finch_model_free(a);
        finch_model_free(b);
        return;
    }
    finch_lora_config lc = finch_lora_config_default();
    lc.r = 4;
    lc.dropout = 0.3f;
    CHECK(finch_lora_attach(a, &lc) == FINCH_OK && finch_lora_attach(b, &lc) == FINCH_OK, "attach: %s", finch_last_error());
    perturb_b(a);
    perturb_b(b);
    double eval = loss_of(a);
    CHECK(loss_of(b) == eval, "checkpointing does not change the forward pass"); /* also keeps the step counters equal */
    finch_step_result ra, rb;
    CHECK(finch_forward_backward(a, &batch, NULL, &ra) == FINCH_OK, "fb: %s", finch_last_error());
    CHECK(finch_forward_backward(b, &batch, NULL, &rb) == FINCH_OK, "fb ckpt: %s", finch_last_error());
    CHECK(fabs(ra.loss - eval) > 1e-6, "dropout changes the training loss (%g vs eval %g)", ra.loss, eval);
    CHECK(ra.loss == rb.loss, "same masks with checkpointing: %.9g vs %.9g", ra.loss, rb.loss);
    double worst = 0;
    for (int64_t i = 0; i < finch_trainable_count(a); i++) {
        finch_tensor_info ti;
        finch_trainable_info(a, i, &ti);
        float *x = malloc((size_t)ti.numel * 4), *y = malloc((size_t)ti.numel * 4);
        finch_trainable_grad_read(a, i, x, ti.numel);
        finch_trainable_grad_read(b, i, y, ti.numel);
        double e = testing_rel_err(y, x, (size_t)ti.numel);
        worst = e > worst ? e : worst;
        free(x);
        free(y);
    }
    CHECK(worst < 1e-5, "checkpointed gradients with dropout match: worst rel err %g", worst);
    finch_model_free(a);
    finch_model_free(b);
}

static void test_states(void)
{
    finch_model *m = load(1, 0);
    if (!m) return;
    finch_lora_config lc = finch_lora_config_default();
    CHECK(finch_lora_attach(m, &lc) == FINCH_ERR_STATE, "attach in full fine-tuning: FINCH_ERR_STATE");
    CHECK(finch_lora_save(m, tmp) == FINCH_ERR_STATE, "save without adapter: FINCH_ERR_STATE");
    finch_model_info info;
    finch_model_info_get(m, &info);
    CHECK(info.n_trainable == info.n_params && info.n_params > 0, "full fine-tuning trains all %lld parameters", (long long)info.n_params);
    finch_model_free(m);
    m = load(0, 0);
    if (!m) return;
    lc.target_modules = "q_proj,nonexistent_proj";
    int rc = finch_lora_attach(m, &lc);
    CHECK(rc == FINCH_ERR_INVALID_ARGUMENT && strstr(finch_last_error(), "nonexistent_proj"), "unknown target: %s", finch_last_error());
    lc.target_modules = "q_proj";
    lc.r = 0;
    CHECK(finch_lora_attach(m, &lc) == FINCH_ERR_INVALID_ARGUMENT, "rank 0 refused");
    CHECK(finch_trainable_count(m) == 0, "failed attaches leave nothing");
    finch_model_free(m);
}

int main(void)
{
    snprintf(model_dir, sizeof model_dir, "%s/golden/llama/model", testing_shared_dir());
    snprintf(tmp, sizeof tmp, "%s", testing_tmp_dir());
    for (int i = 0; i < 24; i++) {
        ids[i] = 3 + (i * 37) % 300;
        labels[i] = i % 12 < 3 ? -100 : ids[i];
    }
    if (finch_runtime_open("cpu", &rt) != FINCH_OK) {
        CHECK(0, "runtime: %s", finch_last_error());
        return testing_finish();
    }
    test_attach_names_and_config();
    test_regex_targets();
    test_dropout();
    test_states();
    finch_runtime_close(rt);
    return testing_finish();
}
