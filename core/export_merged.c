/* finch_export_merged: a Hugging Face model folder with the adapters folded into the base weights. */
#include "core/error.h"
#include "core/files.h"
#include "core/half.h"
#include "core/model_weights.h"
#include "core/safetensors.h"
#include "finch/export.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DEFAULT_SHARD_BYTES 5000000000ull

finch_merged_options finch_merged_options_default(void)
{
    finch_merged_options o = {-1, 0};
    return o;
}

static const char *const copied_files[] = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                                           "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json",
                                           "chat_template.jinja", "chat_template.json", "generation_config.json"};

/* The dtype config.json states ("dtype" in transformers 5, "torch_dtype" before); F32 if none. */
static finch_dtype config_dtype(const cJSON *cfg)
{
    const char *keys[] = {"dtype", "torch_dtype"};
    for (int i = 0; i < 2; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, keys[i]);
        if (!cJSON_IsString(v)) continue;
        if (!strcmp(v->valuestring, "bfloat16")) return FINCH_DTYPE_BF16;
        if (!strcmp(v->valuestring, "float16")) return FINCH_DTYPE_F16;
        return FINCH_DTYPE_F32;
    }
    return FINCH_DTYPE_F32;
}

static const char *torch_dtype_name(finch_dtype t)
{
    return t == FINCH_DTYPE_BF16 ? "bfloat16" : t == FINCH_DTYPE_F16 ? "float16" : "float32";
}

static void set_string(cJSON *o, const char *key, const char *value)
{
    if (cJSON_GetObjectItemCaseSensitive(o, key)) cJSON_ReplaceItemInObjectCaseSensitive(o, key, cJSON_CreateString(value));
    else cJSON_AddStringToObject(o, key, value);
}

/* config.json as loaded, minus quantization_config, with the dtype we write. */
static int write_config(const cJSON *src, finch_dtype dtype, const char *path)
{
    cJSON *c = cJSON_Duplicate(src, 1);
    if (!c) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    cJSON_DeleteItemFromObjectCaseSensitive(c, "quantization_config");
    cJSON *text_config = cJSON_GetObjectItemCaseSensitive(c, "text_config");
    if (cJSON_IsObject(text_config)) cJSON_DeleteItemFromObjectCaseSensitive(text_config, "quantization_config");
    set_string(c, cJSON_GetObjectItemCaseSensitive(c, "torch_dtype") ? "torch_dtype" : "dtype", torch_dtype_name(dtype));
    char *text = cJSON_Print(c);
    cJSON_Delete(c);
    if (!text) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    int rc = finch_write_text_atomic(path, text);
    cJSON_free(text);
    return rc;
}

static st_dtype st_of(finch_dtype t)
{
    return t == FINCH_DTYPE_BF16 ? ST_BF16 : t == FINCH_DTYPE_F16 ? ST_F16 : ST_F32;
}

/* Converts n f32 values in place to dtype (the buffer then holds n elements of dtype). */
static void narrow(float *x, int64_t n, finch_dtype dtype)
{
    if (dtype == FINCH_DTYPE_F32) return;
    uint16_t *h = (uint16_t *)x;
    for (int64_t i = 0; i < n; i++) h[i] = dtype == FINCH_DTYPE_BF16 ? finch_f32_to_bf16(x[i]) : finch_f32_to_f16(x[i]);
}

/* Writes tensors [first, last) into one safetensors file. */
static int write_shard(const finch_model *m, const finch_model_tensor *t, int first, int last, finch_dtype dtype,
                       const char *path)
{
    size_t floats = 0;
    for (int i = first; i < last; i++) floats += (size_t)t[i].numel;
    float *host = malloc(floats * sizeof(float) + 1);
    st_entry *e = calloc((size_t)(last - first) + 1, sizeof *e);
    int rc = host && e ? FINCH_OK : finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory (%zu bytes for a shard)", floats * 4);
    size_t at = 0, bytes = 0;
    for (int i = first; !rc && i < last; i++) {
        float *dst = host + at;
        rc = finch_model_tensor_f32(m, &t[i], 1, dst);
        if (rc) break;
        narrow(dst, t[i].numel, dtype);
        st_entry *x = &e[i - first];
        x->name = t[i].name;
        x->dtype = st_of(dtype);
        x->ndim = t[i].ndim;
        x->shape[0] = t[i].shape[0];
        x->shape[1] = t[i].shape[1];
        x->data = (const unsigned char *)host + bytes;
        bytes += (size_t)t[i].numel * finch_dtype_size(dtype);
        at += (size_t)t[i].numel;
    }
    /* narrowed tensors were written at float offsets; pack them to their byte offsets */
    if (!rc && dtype != FINCH_DTYPE_F32) {
        size_t src = 0, dst = 0;
        for (int i = first; i < last; i++) {
            size_t nb = (size_t)t[i].numel * finch_dtype_size(dtype);
            memmove((unsigned char *)host + dst, (unsigned char *)(host + src), nb);
            src += (size_t)t[i].numel;
            dst += nb;
        }
    }
    if (!rc) {
        static const char *const meta[] = {"format", "pt", NULL};
        rc = st_write(path, e, last - first, meta);
    }
    free(host);
    free(e);
    return rc;
}

/* Removes weight files of an earlier export that the new one (n_shards files) does not replace, so
 * the folder never mixes two models. */
static void remove_stale(const char *dir, int n_shards)
{
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *ent;
    char path[4096], ours[64];
    snprintf(ours, sizeof ours, "-of-%05d.safetensors", n_shards);
    while ((ent = readdir(d))) {
        const char *s = ent->d_name;
        size_t len = strlen(s);
        int shard = !strncmp(s, "model-", 6) && len > 12 && !strcmp(s + len - 12, ".safetensors") && strstr(s, "-of-");
        int kept = n_shards == 1 ? !strcmp(s, "model.safetensors")
                                 : !strcmp(s, "model.safetensors.index.json") || (shard && strstr(s, ours));
        if (kept || !(shard || !strcmp(s, "model.safetensors") || !strcmp(s, "model.safetensors.index.json"))) continue;
        snprintf(path, sizeof path, "%s/%s", dir, s);
        remove(path);
    }
    closedir(d);
}

finch_status finch_export_merged(const finch_model *m, const char *out_dir, const finch_merged_options *opts)
{
    if (!m || !out_dir) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_export_merged: NULL argument");
    finch_merged_options o = opts ? *opts : finch_merged_options_default();
    uint64_t shard_bytes = o.shard_bytes ? o.shard_bytes : DEFAULT_SHARD_BYTES;
    char src_config[4096], path[4096];
    snprintf(src_config, sizeof src_config, "%s/config.json", m->dir);
    char *text = NULL;
    int rc = finch_read_file(src_config, &text, NULL);
    if (rc) return rc;
    cJSON *cfg = cJSON_Parse(text);
    free(text);
    if (!cfg) return finch_error(FINCH_ERR_FORMAT, "%s: malformed JSON", src_config);
    finch_dtype dtype = o.dtype < 0 ? config_dtype(cfg) : (finch_dtype)o.dtype;
    if (dtype != FINCH_DTYPE_F32 && dtype != FINCH_DTYPE_BF16 && dtype != FINCH_DTYPE_F16) {
        cJSON_Delete(cfg);
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_export_merged: dtype must be f32, bf16 or f16");
    }

    finch_model_tensor *t = NULL;
    int n = 0;
    finch_staged staged = {0};
    cJSON *index = NULL;
    if ((rc = finch_mkdirs(out_dir)) || (rc = finch_model_tensors(m, &t, &n))) goto fail;

    /* shards: consecutive tensors up to shard_bytes each (a larger tensor gets a shard of its own) */
    int *shard_of = calloc((size_t)n + 1, sizeof *shard_of);
    if (!shard_of) {
        rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
        goto fail;
    }
    int n_shards = 0;
    uint64_t in_shard = 0, total = 0;
    for (int i = 0; i < n; i++) {
        uint64_t b = (uint64_t)t[i].numel * finch_dtype_size(dtype);
        if (i == 0 || (in_shard > 0 && in_shard + b > shard_bytes)) {
            n_shards++;
            in_shard = 0;
        }
        shard_of[i] = n_shards - 1;
        in_shard += b;
        total += b;
    }
    if (n_shards > 1) {
        index = cJSON_CreateObject();
        cJSON *meta = cJSON_AddObjectToObject(index, "metadata");
        cJSON_AddNumberToObject(meta, "total_size", (double)total);
        cJSON *map = cJSON_AddObjectToObject(index, "weight_map");
        if (!map) rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
        for (int i = 0; !rc && i < n; i++) {
            char file[64];
            snprintf(file, sizeof file, "model-%05d-of-%05d.safetensors", shard_of[i] + 1, n_shards);
            if (!cJSON_AddStringToObject(map, t[i].name, file)) rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
        }
    }
    for (int s = 0, first = 0; !rc && s < n_shards; s++) {
        int last = first;
        while (last < n && shard_of[last] == s) last++;
        if (n_shards == 1) snprintf(path, sizeof path, "%s/model.safetensors", out_dir);
        else snprintf(path, sizeof path, "%s/model-%05d-of-%05d.safetensors", out_dir, s + 1, n_shards);
        const char *tmp;
        if (!(rc = finch_stage(&staged, path, &tmp))) rc = write_shard(m, t, first, last, dtype, tmp);
        if (rc) rc = finch_error_prefix(rc, "writing %s: ", path);
        first = last;
    }
    free(shard_of);
    if (!rc && index) {
        char *itext = cJSON_Print(index);
        const char *tmp;
        snprintf(path, sizeof path, "%s/model.safetensors.index.json", out_dir);
        if (!itext) rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
        else if (!(rc = finch_stage(&staged, path, &tmp))) rc = finch_write_text_atomic(tmp, itext);
        cJSON_free(itext);
    }
    if (!rc) {
        const char *tmp;
        snprintf(path, sizeof path, "%s/config.json", out_dir);
        if (!(rc = finch_stage(&staged, path, &tmp))) rc = write_config(cfg, dtype, tmp);
    }
    for (size_t i = 0; !rc && i < sizeof copied_files / sizeof copied_files[0]; i++) {
        char src[4096];
        const char *tmp;
        int copied;
        snprintf(src, sizeof src, "%s/%s", m->dir, copied_files[i]);
        snprintf(path, sizeof path, "%s/%s", out_dir, copied_files[i]);
        if (!strcmp(src, path) || access(src, F_OK)) continue;
        if (!(rc = finch_stage(&staged, path, &tmp))) rc = finch_copy_file_atomic(src, tmp, &copied);
    }
    if (rc) goto fail;
    /* every file is complete: move them into place, then drop weight files of an earlier export */
    rc = finch_stage_commit(&staged);
    if (!rc) remove_stale(out_dir, n_shards);
    free(t);
    cJSON_Delete(index);
    cJSON_Delete(cfg);
    return rc;
fail:
    finch_stage_abort(&staged);
    free(t);
    cJSON_Delete(index);
    cJSON_Delete(cfg);
    return rc;
}
