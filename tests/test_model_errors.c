/* Bad input to model loading, adapters and steps: each gives a clear error naming the file, field
 * or tensor, and never a crash. Broken fixtures are derived from the llama golden model and written
 * to the test scratch directory. */
#include "core/safetensors.h"
#include "finch/finch.h"
#include "tests/testing.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char golden[1024];
static finch_runtime *rt;

typedef enum { KEEP, DROP, AS_I32 } tensor_edit;

static void copy_file(const char *from, const char *to)
{
    FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
    char buf[4096];
    size_t n;
    while (in && out && (n = fread(buf, 1, sizeof buf, in)) > 0) fwrite(buf, 1, n, out);
    if (in) fclose(in);
    if (out) fclose(out);
}

/* Writes <tmp>/errors_<name>/ with config.json = config_text (or the golden config edited by
 * set_key = set_value JSON) and model.safetensors with tensor `which` edited. */
static const char *fixture(const char *name, const char *config_text, const char *set_key, const char *set_value,
                           const char *which, tensor_edit edit)
{
    static char dir[1200];
    char path[1400];
    snprintf(dir, sizeof dir, "%s/errors_%s", testing_tmp_dir(), name);
    mkdir(dir, 0755);
    snprintf(path, sizeof path, "%s/config.json", golden);
    FILE *f = fopen(path, "rb");
    char buf[1 << 14];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *text = NULL;
    if (config_text) {
        text = strdup(config_text);
    } else {
        cJSON *c = cJSON_Parse(buf);
        if (set_key) {
            cJSON_DeleteItemFromObject(c, set_key);
            if (set_value) cJSON_AddItemToObject(c, set_key, cJSON_Parse(set_value));
        }
        text = cJSON_Print(c);
        cJSON_Delete(c);
    }
    snprintf(path, sizeof path, "%s/config.json", dir);
    f = fopen(path, "wb");
    fputs(text, f);
    fclose(f);
    free(text);

    st_set *set = NULL;
    snprintf(path, sizeof path, "%s/model.safetensors", golden);
    if (st_set_open_file(path, &set)) return dir;
    int count = st_set_count(set), k = 0;
    st_entry *e = calloc((size_t)count, sizeof *e);
    for (int i = 0; i < count; i++) {
        const st_tensor *t = st_set_at(set, i);
        int hit = which && !strcmp(t->name, which);
        if (hit && edit == DROP) continue;
        e[k].name = t->name;
        e[k].dtype = hit && edit == AS_I32 ? ST_I32 : t->dtype;
        e[k].ndim = t->ndim;
        memcpy(e[k].shape, t->shape, sizeof t->shape);
        e[k].data = t->data;
        k++;
    }
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    st_write(path, e, k, NULL);
    free(e);
    st_set_close(set);
    return dir;
}

static void expect_load_error(const char *what, const char *dir, int status, const char *must1, const char *must2)
{
    finch_model *m = (finch_model *)1;
    int rc = finch_model_load(rt, dir, NULL, &m);
    const char *msg = finch_last_error();
    CHECK(rc == status, "%s: status %s, expected %s (%s)", what, finch_status_name(rc), finch_status_name(status), msg);
    CHECK(m == NULL, "%s: *out is NULL on failure", what);
    CHECK(!must1 || strstr(msg, must1), "%s: message '%s' should name '%s'", what, msg, must1);
    CHECK(!must2 || strstr(msg, must2), "%s: message '%s' should name '%s'", what, msg, must2);
    if (rc == FINCH_OK) finch_model_free(m);
}

static void test_configs(void)
{
    expect_load_error("unknown model_type", fixture("type", NULL, "model_type", "\"gpt_neox\"", NULL, KEEP),
                      FINCH_ERR_UNSUPPORTED, "gpt_neox", "config.json");
    expect_load_error("malformed config", fixture("json", "{\"model_type\": \"llama\", \"hidden_size\": ", NULL, NULL, NULL, KEEP),
                      FINCH_ERR_FORMAT, "config.json", "malformed");
    expect_load_error("config not an object", fixture("array", "[1, 2]", NULL, NULL, NULL, KEEP), FINCH_ERR_FORMAT,
                      "config.json", NULL);
    expect_load_error("missing field", fixture("missing", NULL, "hidden_size", NULL, NULL, KEEP), FINCH_ERR_FORMAT,
                      "hidden_size", "config.json");
    expect_load_error("mistyped field", fixture("mistyped", NULL, "num_hidden_layers", "\"two\"", NULL, KEEP),
                      FINCH_ERR_FORMAT, "num_hidden_layers", NULL);
    expect_load_error("fractional field", fixture("fraction", NULL, "num_attention_heads", "2.5", NULL, KEEP),
                      FINCH_ERR_FORMAT, "num_attention_heads", NULL);
    expect_load_error("heads not dividing", fixture("kvheads", NULL, "num_key_value_heads", "3", NULL, KEEP), FINCH_ERR_FORMAT,
                      "num_attention_heads", NULL);
    expect_load_error("dynamic rope", fixture("dynamic", NULL, "rope_parameters", "{\"rope_type\": \"dynamic\", \"factor\": 2.0}", NULL, KEEP),
                      FINCH_ERR_UNSUPPORTED, "dynamic", NULL);
    expect_load_error("llama3 rope without factors", fixture("llama3", NULL, "rope_parameters", "{\"rope_type\": \"llama3\", \"rope_theta\": 10000}", NULL, KEEP),
                      FINCH_ERR_FORMAT, "factor", NULL);
    expect_load_error("bad activation", fixture("act", NULL, "hidden_act", "\"swiglu_magic\"", NULL, KEEP), FINCH_ERR_UNSUPPORTED,
                      "swiglu_magic", NULL);
    expect_load_error("no such directory", "/nonexistent/finch/model", FINCH_ERR_IO, "/nonexistent/finch/model", NULL);
}

static void test_tensors(void)
{
    expect_load_error("missing tensor", fixture("drop", NULL, NULL, NULL, "model.layers.1.mlp.up_proj.weight", DROP),
                      FINCH_ERR_FORMAT, "model.layers.1.mlp.up_proj.weight", NULL);
    expect_load_error("shape mismatch", fixture("shape", NULL, "intermediate_size", "96", NULL, KEEP), FINCH_ERR_FORMAT,
                      "[128, 64]", "[96, 64]");
    expect_load_error("integer weight", fixture("i32", NULL, NULL, NULL, "model.layers.0.self_attn.q_proj.weight", AS_I32),
                      FINCH_ERR_UNSUPPORTED, "I32", "model.layers.0.self_attn.q_proj.weight");
    expect_load_error("untied model without lm_head", fixture("untied", NULL, "tie_word_embeddings", "false", NULL, KEEP),
                      FINCH_ERR_FORMAT, "lm_head.weight", NULL);
    /* A truncated weights file. */
    const char *dir = fixture("trunc", NULL, NULL, NULL, NULL, KEEP);
    char path[1400];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    CHECK(truncate(path, 5000) == 0, "truncate %s", path);
    finch_model *m = NULL;
    int rc = finch_model_load(rt, dir, NULL, &m);
    CHECK(rc == FINCH_ERR_FORMAT || rc == FINCH_ERR_IO, "truncated weights: %s (%s)", finch_status_name(rc), finch_last_error());
    CHECK(strstr(finch_last_error(), "model.safetensors") != NULL, "truncated weights: names the file: %s", finch_last_error());
    finch_model_free(m);
    finch_load_options o = finch_load_options_default();
    o.compute_dtype = FINCH_DTYPE_F16;
    rc = finch_model_load(rt, golden, &o, &m);
    CHECK(rc == FINCH_ERR_UNSUPPORTED, "f16 compute refused: %s", finch_last_error());
}

static void test_steps_and_adapters(void)
{
    finch_model *m = NULL;
    int rc = finch_model_load(rt, golden, NULL, &m);
    CHECK(rc == FINCH_OK, "golden loads: %s", finch_last_error());
    if (!m) return;
    int32_t ids[8] = {5, 6, 7, 8, 9, 10, 11, 12}, labels[8] = {5, 6, 7, 8, 9, 10, 11, 12};
    finch_step_result r;
    finch_batch b = {.batch = 2, .seq_len = 4, .input_ids = ids, .labels = labels, .segment_ids = NULL};
    ids[3] = 320;
    rc = finch_forward(m, &b, NULL, &r);
    CHECK(rc == FINCH_ERR_INVALID_ARGUMENT && strstr(finch_last_error(), "input_ids[0][3]"), "token out of range: %s",
          finch_last_error());
    ids[3] = 8;
    labels[5] = -7;
    rc = finch_forward(m, &b, NULL, &r);
    CHECK(rc == FINCH_ERR_INVALID_ARGUMENT && strstr(finch_last_error(), "labels[1][1]"), "bad label: %s", finch_last_error());
    labels[5] = -100;
    finch_batch empty = {.batch = 0, .seq_len = 4, .input_ids = ids, .labels = labels, .segment_ids = NULL};
    CHECK(finch_forward(m, &empty, NULL, &r) == FINCH_ERR_INVALID_ARGUMENT, "empty batch refused");
    CHECK(finch_forward(NULL, &b, NULL, &r) == FINCH_ERR_INVALID_ARGUMENT, "NULL model refused");
    CHECK(finch_forward(m, &b, NULL, &r) == FINCH_OK, "good batch after errors: %s", finch_last_error());
    float lg[8 * 320];
    CHECK(finch_model_logits(m, lg, 8 * 320) == FINCH_ERR_STATE, "logits not kept: FINCH_ERR_STATE");
    finch_step_options so = {1, 0};
    CHECK(finch_forward(m, &b, &so, &r) == FINCH_OK && finch_model_logits(m, lg, 100) == FINCH_ERR_INVALID_ARGUMENT,
          "wrong logits count refused");
    CHECK(finch_trainable_read(m, 0, lg, 1) == FINCH_ERR_INVALID_ARGUMENT, "no trainables: index 0 refused");

    /* Adapters: a missing folder, a missing tensor, a wrong rank. */
    CHECK(finch_lora_load(m, "/nonexistent/adapter") == FINCH_ERR_IO, "missing adapter folder: %s", finch_last_error());
    finch_lora_config lc = finch_lora_config_default();
    lc.r = 4;
    lc.target_modules = "q_proj";
    finch_model *src = NULL;
    finch_model_load(rt, golden, NULL, &src);
    char dir[1200], path[1400];
    snprintf(dir, sizeof dir, "%s/errors_adapter", testing_tmp_dir());
    CHECK(src && finch_lora_attach(src, &lc) == FINCH_OK && finch_lora_save(src, dir) == FINCH_OK, "adapter fixture: %s",
          finch_last_error());
    finch_model_free(src);
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    st_set *set = NULL;
    if (st_set_open_file(path, &set) == FINCH_OK) {
        int n = st_set_count(set);
        st_entry e[8];
        int64_t bad_shape[2] = {0, 0};
        for (int i = 0; i < n && i < 8; i++) {
            const st_tensor *t = st_set_at(set, i);
            e[i] = (st_entry){t->name, t->dtype, t->ndim, {t->shape[0], t->shape[1]}, t->data};
            if (strstr(t->name, "layers.1.self_attn.q_proj.lora_A")) {
                bad_shape[0] = t->shape[0];
                bad_shape[1] = t->shape[1];
            }
        }
        char dir2[1300], path2[1500];
        /* lora_A of layer 1 claims rank 2 (same bytes, shape [2, 128]). */
        snprintf(dir2, sizeof dir2, "%s_rank", dir);
        mkdir(dir2, 0755);
        for (int i = 0; i < n; i++)
            if (strstr(e[i].name, "layers.1.self_attn.q_proj.lora_A")) e[i].shape[0] = bad_shape[0] / 2, e[i].shape[1] = bad_shape[1] * 2;
        snprintf(path2, sizeof path2, "%s/adapter_model.safetensors", dir2);
        st_write(path2, e, n, NULL);
        char cfg[1400], cfg2[1600];
        snprintf(cfg, sizeof cfg, "%s/adapter_config.json", dir);
        snprintf(cfg2, sizeof cfg2, "%s/adapter_config.json", dir2);
        copy_file(cfg, cfg2);
        rc = finch_lora_load(m, dir2);
        CHECK(rc == FINCH_ERR_FORMAT && strstr(finch_last_error(), "layers.1.self_attn.q_proj.lora_A"), "wrong rank: %s",
              finch_last_error());
        /* Without layer 1's lora_B. */
        snprintf(dir2, sizeof dir2, "%s_missing", dir);
        mkdir(dir2, 0755);
        int k = 0;
        st_entry e2[8];
        for (int i = 0; i < n; i++)
            if (!strstr(st_set_at(set, i)->name, "layers.1.self_attn.q_proj.lora_B")) {
                const st_tensor *t = st_set_at(set, i);
                e2[k++] = (st_entry){t->name, t->dtype, t->ndim, {t->shape[0], t->shape[1]}, t->data};
            }
        snprintf(path2, sizeof path2, "%s/adapter_model.safetensors", dir2);
        st_write(path2, e2, k, NULL);
        snprintf(cfg2, sizeof cfg2, "%s/adapter_config.json", dir2);
        copy_file(cfg, cfg2);
        rc = finch_lora_load(m, dir2);
        CHECK(rc == FINCH_ERR_FORMAT && strstr(finch_last_error(), "layers.1.self_attn.q_proj.lora_B"), "missing lora_B: %s",
              finch_last_error());
        CHECK(finch_trainable_count(m) == 0, "failed adapter loads attach nothing");
        CHECK(finch_lora_load(m, dir) == FINCH_OK, "the intact adapter still loads: %s", finch_last_error());
        st_set_close(set);
    }
    finch_model_free(m);
}

int main(void)
{
    snprintf(golden, sizeof golden, "%s/golden/llama/model", testing_shared_dir());
    if (finch_runtime_open("cpu", &rt) != FINCH_OK) {
        CHECK(0, "runtime: %s", finch_last_error());
        return testing_finish();
    }
    test_configs();
    test_tensors();
    test_steps_and_adapters();
    finch_runtime_close(rt);
    return testing_finish();
}
