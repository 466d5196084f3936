/* Small random models with a real tokenizer for the export tests: the tensors of a golden model
 * (shapes as in /work/shared/golden/<arch>, the vocabulary dimension replaced by the tokenizer's) or
 * an explicit llama of any size, with weights scaled so each layer keeps unit-size activations and
 * the logits are spread enough for greedy decoding to be decided by clear margins. */
#ifndef FINCH_TESTS_EXPORT_MODELS_H
#define FINCH_TESTS_EXPORT_MODELS_H

#include "core/files.h"
#include "core/safetensors.h"
#include "finch/data.h"
#include "tests/testing.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Values for a tensor by role: embeddings in [-1, 1), linear weights in +-sqrt(3 / in), norm weights
 * near 1 (near 0 where the model adds 1), biases small. */
static inline void export_models_fill(const char *name, int ndim, const int64_t *shape, int norm_offset, float *x, uint64_t seed)
{
    int64_t n = ndim > 1 ? shape[0] * shape[1] : shape[0];
    testing_fill_random(x, (size_t)n, seed);
    int is_bias = strstr(name, ".bias") != NULL, is_embed = strstr(name, "embed") || strstr(name, "lm_head");
    float scale = is_embed ? 1.0f : ndim > 1 ? sqrtf(3.0f / (float)shape[1]) : 0.1f;
    for (int64_t i = 0; i < n; i++) x[i] *= scale;
    if (ndim == 1 && !is_bias && !norm_offset)
        for (int64_t i = 0; i < n; i++) x[i] += 1.0f;
}

static inline int export_models_copy_tokenizer(const char *tokenizer_dir, const char *dir)
{
    const char *files[] = {"tokenizer.json", "tokenizer_config.json"};
    for (int i = 0; i < 2; i++) {
        char src[8400], dst[8400];
        int copied;
        snprintf(src, sizeof src, "%s/%s", tokenizer_dir, files[i]);
        snprintf(dst, sizeof dst, "%s/%s", dir, files[i]);
        if (finch_copy_file_atomic(src, dst, &copied)) return 1;
    }
    return 0;
}

static inline int export_models_write_config(const char *dir, cJSON *cfg)
{
    char path[8400], *text = cJSON_Print(cfg);
    snprintf(path, sizeof path, "%s/config.json", dir);
    int rc = text ? finch_write_text_atomic(path, text) : 1;
    cJSON_free(text);
    return rc;
}

static inline void export_models_set(cJSON *cfg, const char *key, cJSON *value)
{
    cJSON_DeleteItemFromObjectCaseSensitive(cfg, key);
    cJSON_AddItemToObject(cfg, key, value);
}

/* The golden arch's tensors with vocab rows from tokenizer_dir; overrides: a JSON object merged into
 * config.json, or NULL. Returns 0 on success. */
static inline int make_golden_shaped_model(const char *dir, const char *arch, const char *tokenizer_dir, const char *overrides,
                                    uint64_t seed)
{
    char path[8400];
    finch_tokenizer *tok = NULL;
    if (finch_mkdirs(dir) || finch_tokenizer_load(tokenizer_dir, &tok)) return 1;
    int64_t V = finch_tokenizer_vocab_size(tok);
    finch_tokenizer_free(tok);
    snprintf(path, sizeof path, "%s/golden/%s/model/config.json", testing_shared_dir(), arch);
    char *text = NULL;
    if (finch_read_file(path, &text, NULL)) return 1;
    cJSON *cfg = cJSON_Parse(text);
    free(text);
    if (!cfg) return 1;
    int64_t golden_vocab = (int64_t)cJSON_GetObjectItem(cfg, "vocab_size")->valuedouble;
    int norm_offset = !strncmp(arch, "gemma", 5);
    export_models_set(cfg, "vocab_size", cJSON_CreateNumber((double)V));
    cJSON *ov = overrides ? cJSON_Parse(overrides) : NULL;
    for (cJSON *o = ov ? ov->child : NULL; o; o = o->next) export_models_set(cfg, o->string, cJSON_Duplicate(o, 1));
    cJSON_Delete(ov);
    int rc = export_models_write_config(dir, cfg);
    cJSON_Delete(cfg);

    st_set *golden = NULL;
    snprintf(path, sizeof path, "%s/golden/%s/model", testing_shared_dir(), arch);
    if (rc || st_set_open_dir(path, &golden)) return 1;
    int n = st_set_count(golden);
    st_entry *e = calloc((size_t)n, sizeof *e);
    float **bufs = calloc((size_t)n, sizeof *bufs);
    for (int i = 0; e && bufs && i < n && !rc; i++) {
        const st_tensor *t = st_set_at(golden, i);
        e[i].name = t->name;
        e[i].dtype = ST_F32;
        e[i].ndim = t->ndim;
        int64_t numel = 1;
        for (int d = 0; d < t->ndim; d++) {
            e[i].shape[d] = t->shape[d] == golden_vocab ? V : t->shape[d];
            numel *= e[i].shape[d];
        }
        bufs[i] = malloc((size_t)numel * sizeof(float));
        if (!bufs[i]) rc = 1;
        else export_models_fill(t->name, t->ndim, e[i].shape, norm_offset, bufs[i], seed + (uint64_t)i * 7919u);
        e[i].data = bufs[i];
    }
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (!e || !bufs || rc || st_write(path, e, n, NULL)) rc = 1;
    for (int i = 0; bufs && i < n; i++) free(bufs[i]);
    free(bufs);
    free(e);
    st_set_close(golden);
    return rc || export_models_copy_tokenizer(tokenizer_dir, dir);
}

/* A llama of the given size with a tied embedding. */
static inline int make_llama_model(const char *dir, const char *tokenizer_dir, int64_t hidden, int64_t inter, int64_t heads,
                            int64_t kv_heads, int64_t layers, uint64_t seed)
{
    finch_tokenizer *tok = NULL;
    if (finch_mkdirs(dir) || finch_tokenizer_load(tokenizer_dir, &tok)) return 1;
    int64_t V = finch_tokenizer_vocab_size(tok), hd = hidden / heads;
    finch_tokenizer_free(tok);
    cJSON *cfg = cJSON_CreateObject();
    cJSON_AddStringToObject(cfg, "model_type", "llama");
    cJSON_AddNumberToObject(cfg, "hidden_size", (double)hidden);
    cJSON_AddNumberToObject(cfg, "intermediate_size", (double)inter);
    cJSON_AddNumberToObject(cfg, "num_attention_heads", (double)heads);
    cJSON_AddNumberToObject(cfg, "num_key_value_heads", (double)kv_heads);
    cJSON_AddNumberToObject(cfg, "num_hidden_layers", (double)layers);
    cJSON_AddNumberToObject(cfg, "vocab_size", (double)V);
    cJSON_AddNumberToObject(cfg, "max_position_embeddings", 256);
    cJSON_AddNumberToObject(cfg, "rms_norm_eps", 1e-5);
    cJSON_AddNumberToObject(cfg, "rope_theta", 10000);
    cJSON_AddStringToObject(cfg, "hidden_act", "silu");
    cJSON_AddTrueToObject(cfg, "tie_word_embeddings");
    cJSON_AddStringToObject(cfg, "torch_dtype", "float32");
    int rc = export_models_write_config(dir, cfg);
    cJSON_Delete(cfg);
    int n = 2 + 9 * (int)layers, k = 0;
    st_entry *e = calloc((size_t)n, sizeof *e);
    float **bufs = calloc((size_t)n, sizeof *bufs);
    char (*names)[128] = calloc((size_t)n, sizeof *names);
    if (!e || !bufs || !names) rc = 1;
#define ADD(fmt, l, d0, d1, nd)                                                                  \
    do {                                                                                         \
        snprintf(names[k], sizeof names[k], fmt, (long long)(l));                                \
        e[k] = (st_entry){names[k], ST_F32, nd, {d0, d1}, NULL};                                 \
        bufs[k] = malloc((size_t)((d0) * ((nd) > 1 ? (d1) : 1)) * sizeof(float));                \
        if (!bufs[k]) rc = 1;                                                                    \
        else export_models_fill(names[k], nd, e[k].shape, 0, bufs[k], seed + (uint64_t)k * 7919u); \
        e[k].data = bufs[k];                                                                     \
        k++;                                                                                     \
    } while (0)
    if (!rc) ADD("model.embed_tokens.weight%.0lld", 0LL, V, hidden, 2);
    for (int64_t l = 0; l < layers && !rc; l++) {
        ADD("model.layers.%lld.input_layernorm.weight", l, hidden, 1, 1);
        ADD("model.layers.%lld.self_attn.q_proj.weight", l, heads * hd, hidden, 2);
        ADD("model.layers.%lld.self_attn.k_proj.weight", l, kv_heads * hd, hidden, 2);
        ADD("model.layers.%lld.self_attn.v_proj.weight", l, kv_heads * hd, hidden, 2);
        ADD("model.layers.%lld.self_attn.o_proj.weight", l, hidden, heads * hd, 2);
        ADD("model.layers.%lld.post_attention_layernorm.weight", l, hidden, 1, 1);
        ADD("model.layers.%lld.mlp.gate_proj.weight", l, inter, hidden, 2);
        ADD("model.layers.%lld.mlp.up_proj.weight", l, inter, hidden, 2);
        ADD("model.layers.%lld.mlp.down_proj.weight", l, hidden, inter, 2);
    }
    if (!rc) ADD("model.norm.weight%.0lld", 0LL, hidden, 1, 1);
#undef ADD
    char path[8400];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (!rc && st_write(path, e, k, NULL)) rc = 1;
    for (int i = 0; bufs && i < k; i++) free(bufs[i]);
    free(bufs);
    free(e);
    free(names);
    return rc || export_models_copy_tokenizer(tokenizer_dir, dir);
}

#endif
