/* Falcon's three fused-qkv layouts give the same model. From the multi-query golden (one k/v head)
 * this builds equivalent checkpoints in the old multi-head layout ([head][q, k, v]) and the
 * new_decoder_architecture layout ([group][q.., k, v], 2 kv groups, ln_attn + ln_mlp) by
 * replicating the k/v head, with the golden adapter's lora_B rows replicated alike. Logits must
 * match the golden; gradients of replicated rows must sum to the golden's. */
#include "core/safetensors.h"
#include "finch/finch.h"
#include "tests/testing.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define HD 16
#define NH 4

static st_set *gold;

static float *f32_of(const st_tensor *t)
{
    float *v = malloc((size_t)t->numel * 4 + 4);
    st_to_f32(t, v);
    return v;
}

/* Row source map of the layout: for each output row, the multi-query row it copies. */
static int layout_rows(int layout, int32_t *src)
{
    int n = 0;
    for (int h = 0; h < NH; h++) { /* layout 1: [head][q, k, v] */
        if (layout != 1) break;
        for (int d = 0; d < HD; d++) src[n++] = h * HD + d;
        for (int d = 0; d < HD; d++) src[n++] = NH * HD + d;
        for (int d = 0; d < HD; d++) src[n++] = (NH + 1) * HD + d;
    }
    for (int g = 0; g < 2 && layout == 2; g++) { /* layout 2: [group][q, q, k, v] */
        for (int j = 0; j < 2; j++)
            for (int d = 0; d < HD; d++) src[n++] = (2 * g + j) * HD + d;
        for (int d = 0; d < HD; d++) src[n++] = NH * HD + d;
        for (int d = 0; d < HD; d++) src[n++] = (NH + 1) * HD + d;
    }
    return n;
}

static void write_rows(st_entry *e, const st_tensor *t, const int32_t *src, int rows, float **keep)
{
    int64_t cols = t->ndim > 1 ? t->shape[1] : 1;
    float *in = f32_of(t), *out = malloc((size_t)(rows * cols) * 4);
    for (int r = 0; r < rows; r++) memcpy(out + r * cols, in + src[r] * cols, (size_t)cols * 4);
    free(in);
    *e = (st_entry){t->name, ST_F32, t->ndim, {rows, cols}, out};
    *keep = out;
}

/* Writes dir/model and dir/adapter for the layout; returns 0 on success. */
static int build(const char *shared, const char *dir, int layout)
{
    char path[1400], from[1400];
    int32_t src[256];
    int rows = layout_rows(layout, src);
    snprintf(path, sizeof path, "%s/model", dir);
    mkdir(dir, 0755);
    mkdir(path, 0755);
    snprintf(path, sizeof path, "%s/adapter", dir);
    mkdir(path, 0755);

    /* config.json */
    snprintf(from, sizeof from, "%s/golden/falcon/model/config.json", shared);
    FILE *f = fopen(from, "rb");
    if (!f) return 1;
    char buf[8192];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    cJSON *c = cJSON_Parse(buf);
    cJSON_ReplaceItemInObject(c, "multi_query", cJSON_CreateBool(0));
    if (layout == 2) {
        cJSON_ReplaceItemInObject(c, "new_decoder_architecture", cJSON_CreateTrue());
        cJSON_ReplaceItemInObject(c, "num_kv_heads", cJSON_CreateNumber(2));
    }
    char *text = cJSON_Print(c);
    cJSON_Delete(c);
    snprintf(path, sizeof path, "%s/model/config.json", dir);
    f = fopen(path, "wb");
    fputs(text, f);
    fclose(f);
    free(text);

    /* model.safetensors: qkv rows re-laid; new layout: ln_attn and ln_mlp copy input_layernorm. */
    st_set *m = NULL;
    snprintf(from, sizeof from, "%s/golden/falcon/model/model.safetensors", shared);
    if (st_set_open_file(from, &m)) return 1;
    st_entry e[64];
    float *keep[64] = {0};
    char names[64][128];
    int k = 0;
    for (int i = 0; i < st_set_count(m) && k < 60; i++) {
        const st_tensor *t = st_set_at(m, i);
        if (strstr(t->name, "query_key_value.weight")) {
            write_rows(&e[k], t, src, rows, &keep[k]);
            k++;
        } else if (layout == 2 && strstr(t->name, "input_layernorm")) {
            const char *leaf = strstr(t->name, "input_layernorm") + strlen("input_layernorm");
            int prefix = (int)(strstr(t->name, "input_layernorm") - t->name);
            for (int j = 0; j < 2; j++) {
                snprintf(names[k], sizeof names[k], "%.*s%s%s", prefix, t->name, j ? "ln_mlp" : "ln_attn", leaf);
                e[k] = (st_entry){names[k], t->dtype, t->ndim, {t->shape[0]}, t->data};
                k++;
            }
        } else {
            e[k] = (st_entry){t->name, t->dtype, t->ndim, {t->shape[0], t->shape[1]}, t->data};
            k++;
        }
    }
    snprintf(path, sizeof path, "%s/model/model.safetensors", dir);
    int rc = st_write(path, e, k, NULL);
    for (int i = 0; i < k; i++) free(keep[i]);
    st_set_close(m);
    if (rc) return rc;

    /* adapter */
    snprintf(from, sizeof from, "%s/golden/falcon/adapter/adapter_model.safetensors", shared);
    if (st_set_open_file(from, &m)) return 1;
    k = 0;
    memset(keep, 0, sizeof keep);
    for (int i = 0; i < st_set_count(m) && k < 60; i++) {
        const st_tensor *t = st_set_at(m, i);
        if (strstr(t->name, "query_key_value.lora_B")) {
            write_rows(&e[k], t, src, rows, &keep[k]);
        } else {
            e[k] = (st_entry){t->name, t->dtype, t->ndim, {t->shape[0], t->shape[1]}, t->data};
        }
        k++;
    }
    snprintf(path, sizeof path, "%s/adapter/adapter_model.safetensors", dir);
    rc = st_write(path, e, k, NULL);
    for (int i = 0; i < k; i++) free(keep[i]);
    st_set_close(m);
    snprintf(from, sizeof from, "%s/golden/falcon/adapter/adapter_config.json", shared);
    snprintf(path, sizeof path, "%s/adapter/adapter_config.json", dir);
    FILE *in = fopen(from, "rb"), *out = fopen(path, "wb");
    while (in && out && (n = fread(buf, 1, sizeof buf, in)) > 0) fwrite(buf, 1, n, out);
    if (in) fclose(in);
    if (out) fclose(out);
    return rc;
}

/* Our gradient of a re-laid qkv tensor, summed back onto the multi-query rows. */
static void fold(const float *g, int rows, int64_t cols, const int32_t *src, float *out, int64_t out_rows)
{
    memset(out, 0, (size_t)(out_rows * cols) * 4);
    for (int r = 0; r < rows; r++)
        for (int64_t j = 0; j < cols; j++) out[src[r] * cols + j] += g[r * cols + j];
}

static void check_layout(finch_runtime *rt, const char *shared, int layout, const char *name, const int32_t *ids,
                         const int32_t *labels, int64_t B, int64_t T)
{
    char dir[1200], model[1300], adapter[1300];
    snprintf(dir, sizeof dir, "%s/falcon_%s", testing_tmp_dir(), name);
    CHECK(build(shared, dir, layout) == 0, "%s: building the fixture: %s", name, finch_last_error());
    snprintf(model, sizeof model, "%s/model", dir);
    snprintf(adapter, sizeof adapter, "%s/adapter", dir);
    int32_t src[256];
    int rows = layout_rows(layout, src);
    for (int full = 1; full >= 0; full--) {
        finch_load_options o = finch_load_options_default();
        o.full_finetune = full;
        finch_model *m = NULL;
        int rc = finch_model_load(rt, model, &o, &m);
        CHECK(rc == FINCH_OK, "%s: load: %s", name, finch_last_error());
        if (rc) return;
        if (!full) CHECK(finch_lora_load(m, adapter) == FINCH_OK, "%s: adapter: %s", name, finch_last_error());
        finch_batch b = {.batch = B, .seq_len = T, .input_ids = ids, .labels = labels, .segment_ids = NULL};
        finch_step_options so = {1, 0};
        finch_step_result r;
        CHECK(finch_forward_backward(m, &b, &so, &r) == FINCH_OK, "%s: step: %s", name, finch_last_error());
        const char *prefix = full ? "base." : "lora.";
        char key[400];
        snprintf(key, sizeof key, "%slogits", prefix);
        const st_tensor *lt = st_set_find(gold, key);
        float *ref = f32_of(lt), *got = malloc((size_t)lt->numel * 4);
        finch_model_logits(m, got, (size_t)lt->numel);
        double e = testing_rel_err(got, ref, (size_t)lt->numel);
        CHECK(e <= 1e-4, "%s %s: rel err %g", name, key, e);
        printf("  %-10s %-12s rel err %.2e", name, key, e);
        free(ref);
        free(got);
        double worst = 0;
        int64_t matched = 0;
        for (int64_t i = 0; i < finch_trainable_count(m); i++) {
            finch_tensor_info ti;
            finch_trainable_info(m, i, &ti);
            snprintf(key, sizeof key, "%sgrad.%s", prefix, ti.name);
            int refolded = strstr(ti.name, "query_key_value.weight") || strstr(ti.name, "query_key_value.lora_B");
            if (strstr(ti.name, "ln_mlp")) continue; /* ln_attn + ln_mlp together are the golden's one norm */
            if (strstr(ti.name, "ln_attn")) {
                char alt[400];
                snprintf(alt, sizeof alt, "%s", key);
                char *p = strstr(alt, "ln_attn");
                memmove(p + strlen("input_layernorm"), p + strlen("ln_attn"), strlen(p + strlen("ln_attn")) + 1);
                memcpy(p, "input_layernorm", strlen("input_layernorm"));
                snprintf(key, sizeof key, "%s", alt);
            }
            const st_tensor *gt = st_set_find(gold, key);
            CHECK(gt != NULL, "%s: no golden %s", name, key);
            if (!gt) continue;
            float *g = malloc((size_t)ti.numel * 4), *want = f32_of(gt), *have = malloc((size_t)gt->numel * 4);
            finch_trainable_grad_read(m, i, g, ti.numel);
            if (refolded) {
                fold(g, rows, ti.shape[1], src, have, gt->shape[0]);
            } else if (strstr(ti.name, "ln_attn")) {
                float *g2 = malloc((size_t)ti.numel * 4);
                finch_trainable_grad_read(m, i + 2, g2, ti.numel); /* the matching ln_mlp tensor */
                for (int64_t j = 0; j < ti.numel; j++) have[j] = g[j] + g2[j];
                free(g2);
            } else {
                memcpy(have, g, (size_t)ti.numel * 4);
            }
            double ge = testing_rel_err(have, want, (size_t)gt->numel);
            CHECK(ge <= 1e-4, "%s: %s rel err %g", name, key, ge);
            worst = ge > worst ? ge : worst;
            matched++;
            free(g);
            free(want);
            free(have);
        }
        printf(", %lld gradients, worst rel err %.2e\n", (long long)matched, worst);
        finch_model_free(m);
    }
}

int main(void)
{
    const char *shared = testing_shared_dir();
    char path[1100];
    snprintf(path, sizeof path, "%s/golden/falcon/golden.safetensors", shared);
    finch_runtime *rt = NULL;
    if (finch_runtime_open("cpu", &rt) != FINCH_OK || st_set_open_file(path, &gold) != FINCH_OK) {
        CHECK(0, "setup: %s", finch_last_error());
        return testing_finish();
    }
    const st_tensor *t = st_set_find(gold, "input_ids");
    int64_t B = t->shape[0], T = t->shape[1];
    int32_t *ids = malloc((size_t)(B * T) * 4), *labels = malloc((size_t)(B * T) * 4);
    st_to_i32(t, ids);
    st_to_i32(st_set_find(gold, "labels"), labels);
    check_layout(rt, shared, 1, "mha", ids, labels, B, T);
    check_layout(rt, shared, 2, "new-arch", ids, labels, B, T);
    free(ids);
    free(labels);
    st_set_close(gold);
    finch_runtime_close(rt);
    return testing_finish();
}
