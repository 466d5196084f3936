/* Merged Hugging Face folders: base + golden adapter folded in (W + s B A in f32) and reloaded through
 * finch_model_load gives the same logits as the model with its adapter (<= 1e-5), for every golden
 * architecture (falcon's fused qkv rows and phi3's fused projections included); sharding with a tiny
 * shard size; a non-finite merge fails naming the tensor and leaves no file behind. */
#include "core/safetensors.h"
#include "finch/export.h"
#include "finch/finch.h"
#include "tests/testing.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int golden_ids(const char *arch, int32_t **ids, int64_t *B, int64_t *T)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/golden/%s/golden.safetensors", testing_shared_dir(), arch);
    st_set *s = NULL;
    if (st_set_open_file(path, &s)) return 1;
    const st_tensor *t = st_set_find(s, "input_ids");
    int rc = !t || t->ndim != 2;
    if (!rc) {
        *B = t->shape[0];
        *T = t->shape[1];
        *ids = malloc((size_t)t->numel * sizeof **ids);
        rc = !*ids || st_to_i32(t, *ids);
    }
    st_set_close(s);
    return rc;
}

static float *logits_of(finch_model *m, const int32_t *ids, int64_t B, int64_t T, size_t *n)
{
    finch_model_info info;
    finch_model_info_get(m, &info);
    *n = (size_t)(B * T * info.vocab_size);
    float *x = malloc(*n * sizeof(float));
    finch_batch b = {.batch = B, .seq_len = T, .input_ids = ids};
    finch_step_options so = {1, 0};
    finch_step_result r;
    if (!x || finch_forward(m, &b, &so, &r) || finch_model_logits(m, x, *n)) {
        free(x);
        return NULL;
    }
    return x;
}

static int count_files(const char *dir, const char *prefix)
{
    int n = 0;
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "ls '%s' 2>/dev/null | grep -c '^%s' > '%s/count.txt'", dir, prefix, testing_tmp_dir());
    if (system(cmd) < 0) return -1;
    snprintf(cmd, sizeof cmd, "%s/count.txt", testing_tmp_dir());
    FILE *f = fopen(cmd, "r");
    if (!f) return -1;
    if (fscanf(f, "%d", &n) != 1) n = -1;
    fclose(f);
    remove(cmd);
    return n;
}

static void check_arch(finch_runtime *rt, const char *arch, uint64_t shard_bytes)
{
    char model[4096], adapter[4096], out[4096];
    snprintf(model, sizeof model, "%s/golden/%s/model", testing_shared_dir(), arch);
    snprintf(adapter, sizeof adapter, "%s/golden/%s/adapter", testing_shared_dir(), arch);
    /* the sharded export goes over the unsharded one: its model.safetensors must go */
    snprintf(out, sizeof out, "%s/merged-%s", testing_tmp_dir(), arch);
    int32_t *ids = NULL;
    int64_t B = 0, T = 0;
    finch_model *m = NULL, *merged = NULL;
    int rc = golden_ids(arch, &ids, &B, &T) || finch_model_load(rt, model, NULL, &m) || finch_lora_load(m, adapter);
    CHECK(rc == 0, "%s: load: %s", arch, finch_last_error());
    if (rc) goto done;
    finch_merged_options o = finch_merged_options_default();
    o.shard_bytes = shard_bytes;
    rc = finch_export_merged(m, out, &o);
    CHECK(rc == 0, "%s: export: %s", arch, finch_last_error());
    if (!rc) rc = finch_model_load(rt, out, NULL, &merged);
    CHECK(rc == 0, "%s: reload: %s", arch, finch_last_error());
    if (rc) goto done;
    size_t n1, n2;
    float *a = logits_of(m, ids, B, T, &n1), *b = logits_of(merged, ids, B, T, &n2);
    CHECK(a && b && n1 == n2, "%s: forward failed: %s", arch, finch_last_error());
    if (a && b && n1 == n2) {
        double err = testing_rel_err(b, a, n1);
        CHECK(err <= 1e-5, "%s: merged logits differ from base + adapter by %.3g", arch, err);
        printf("%-8s merged%s: logits rel. error %.2e vs base + adapter\n", arch, shard_bytes ? " (sharded)" : "", err);
    }
    free(a);
    free(b);
    char p[4200];
    snprintf(p, sizeof p, "%s/config.json", out);
    CHECK(access(p, R_OK) == 0, "%s: no config.json", out);
    snprintf(p, sizeof p, "%s/generation_config.json", out);
    CHECK(access(p, R_OK) == 0, "%s: generation_config.json not copied", out);
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", out);
    if (shard_bytes) {
        CHECK(access(p, R_OK) == 0, "%s: no index for a sharded export", out);
        CHECK(count_files(out, "model-0000") > 1, "%s: expected several shards", out);
        snprintf(p, sizeof p, "%s/model.safetensors", out);
        CHECK(access(p, F_OK) != 0, "%s: a stale model.safetensors was left beside the shards", out);
    } else {
        CHECK(access(p, F_OK) != 0, "%s: an index for an unsharded export", out);
    }
    CHECK(count_files(out, ".*partial") == 0, "%s: temporary files left behind", out);
done:
    finch_model_free(merged);
    finch_model_free(m);
    free(ids);
}

/* A NaN in B: the export fails naming the tensor and writes nothing. */
static void check_nan(finch_runtime *rt)
{
    char model[4096], adapter[4096], out[4096];
    snprintf(model, sizeof model, "%s/golden/llama/model", testing_shared_dir());
    snprintf(adapter, sizeof adapter, "%s/golden/llama/adapter", testing_shared_dir());
    snprintf(out, sizeof out, "%s/merged-nan", testing_tmp_dir());
    finch_model *m = NULL;
    int rc = finch_model_load(rt, model, NULL, &m) || finch_lora_load(m, adapter);
    CHECK(rc == 0, "nan: load: %s", finch_last_error());
    if (rc) return;
    finch_tensor_info ti;
    int64_t k = 0;
    for (; k < finch_trainable_count(m); k++) {
        finch_trainable_info(m, k, &ti);
        if (strstr(ti.name, "layers.1.self_attn.v_proj.lora_B")) break;
    }
    float *v = malloc((size_t)ti.numel * sizeof(float));
    finch_trainable_read(m, k, v, ti.numel);
    v[3] = NAN;
    finch_trainable_write(m, k, v, ti.numel);
    free(v);
    rc = finch_export_merged(m, out, NULL);
    CHECK(rc != 0, "a NaN adapter merged without error");
    CHECK(strstr(finch_last_error(), "model.layers.1.self_attn.v_proj.weight") != NULL, "the error does not name the tensor: %s",
          finch_last_error());
    char p[4200];
    snprintf(p, sizeof p, "%s/model.safetensors", out);
    CHECK(access(p, F_OK) != 0, "a failed merge left %s", p);
    CHECK(count_files(out, ".*partial") == 0, "a failed merge left temporary files in %s", out);
    /* an output folder that cannot be created */
    snprintf(p, sizeof p, "%s/count-me.txt", testing_tmp_dir());
    FILE *f = fopen(p, "w");
    if (f) fclose(f);
    char bad[4300];
    snprintf(bad, sizeof bad, "%s/inside", p);
    rc = finch_export_merged(m, bad, NULL);
    CHECK(rc == FINCH_ERR_IO, "an unwritable folder gave %d", rc);
    remove(p);
    finch_model_free(m);
}

int main(void)
{
    finch_runtime *rt = NULL;
    if (finch_runtime_open("cpu", &rt)) {
        fprintf(stderr, "%s\n", finch_last_error());
        return 1;
    }
    const char *archs[] = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "phi3", "falcon"};
    for (size_t i = 0; i < sizeof archs / sizeof archs[0]; i++) check_arch(rt, archs[i], 0);
    check_arch(rt, "falcon", 40000);
    check_arch(rt, "phi3", 40000);
    check_nan(rt);
    finch_runtime_close(rt);
    return testing_finish();
}
