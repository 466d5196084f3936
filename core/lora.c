/* LoRA adapters on the decoder's linear layers, and the list of trainable tensors (the adapter
 * factors, or every weight in full fine-tuning). */
#include "core/error.h"
#include "core/model.h"
#include "core/model_vl.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

finch_lora_config finch_lora_config_default(void)
{
    finch_lora_config c = {16, 16.0f, 0, 0.0f, "all-linear", 3407};
    return c;
}

/* PEFT's rule for a name list: the module path equals the name or ends with "." + name. */
static int name_matches(const char *path, const char *name, size_t len)
{
    size_t pl = strlen(path);
    if (pl == len && !strncmp(path, name, len)) return 1;
    return pl > len && path[pl - len - 1] == '.' && !strncmp(path + pl - len, name, len);
}

/* The groups a target list may name besides module names: "all-linear" (the language model's
 * linears), and on a vision-language model "vision-blocks" (the tower's blocks) and "vision-merger"
 * (its patch merger). Returns 1 when p[0..len) is one of them, setting *hit for lin. */
static int group_matches(const char *p, size_t len, const finch_linear_module *lin, int *hit)
{
    static const struct {
        const char *name;
        int vision;
        const char *part;
    } groups[] = {{"all-linear", 0, NULL}, {"vision-blocks", 1, ".blocks."}, {"vision-merger", 1, ".merger."}};
    for (size_t g = 0; g < sizeof groups / sizeof groups[0]; g++) {
        if (strlen(groups[g].name) != len || strncmp(p, groups[g].name, len)) continue;
        if (lin->vision == groups[g].vision && (!groups[g].part || strstr(lin->path, groups[g].part))) *hit = 1;
        return 1;
    }
    return 0;
}

/* targets: comma-separated module names and groups ("all-linear": the language model only). */
int finch_lora_module_targeted(const char *targets, const finch_linear_module *lin, int *hit)
{
    *hit = 0;
    for (const char *p = targets; *p;) {
        while (*p == ',' || *p == ' ') p++;
        const char *e = p;
        while (*e && *e != ',') e++;
        size_t len = (size_t)(e - p);
        while (len && p[len - 1] == ' ') len--;
        if (len && !group_matches(p, len, lin, hit) && name_matches(lin->path, p, len)) *hit = 1;
        p = e;
    }
    return FINCH_OK;
}

static void add_trainable(finch_model *m, finch_param *p, const finch_linear_module *lin, int perm_rows)
{
    if (!p->data.buf) return;
    finch_trainable *t = &m->trainables[m->n_trainables++];
    t->param = p;
    t->module = lin;
    t->perm_rows = perm_rows && lin && lin->row_perm;
}

/* Rebuilds the trainable list from the model's mode and gives every entry a gradient buffer. */
int finch_model_rebuild_trainables(finch_model *m)
{
    int cap = 8 + (int)m->cfg.n_layers * 32 + finch_vl_each_param(m, NULL);
    finch_trainable *t = realloc(m->trainables, (size_t)cap * sizeof *t);
    if (!t) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    m->trainables = t;
    m->n_trainables = 0;
    if (m->full_finetune) {
        add_trainable(m, &m->embed, NULL, 0);
        for (int64_t l = 0; l < m->cfg.n_layers; l++) {
            finch_layer *ly = &m->layers[l];
            finch_param *norms[] = {&ly->attn_norm, &ly->attn_norm_b, &ly->mlp_norm, &ly->mlp_norm_b,
                                    &ly->post_attn_norm, &ly->post_ffn_norm, &ly->q_norm, &ly->k_norm};
            for (size_t i = 0; i < sizeof norms / sizeof norms[0]; i++) add_trainable(m, norms[i], NULL, 0);
            for (int i = 0; i < ly->n_linears; i++) {
                add_trainable(m, &ly->linears[i]->weight, ly->linears[i], 1);
                add_trainable(m, &ly->linears[i]->bias, ly->linears[i], 1);
            }
        }
        add_trainable(m, &m->final_norm, NULL, 0);
        add_trainable(m, &m->final_norm_b, NULL, 0);
        if (!m->tied) add_trainable(m, &m->lm_head_own, NULL, 0);
        finch_vl_each_param(m, add_trainable);
    } else {
        for (int i = 0; i < m->n_linears; i++) {
            finch_linear_module *lin = m->linears[i];
            if (!lin->rank) continue;
            add_trainable(m, &lin->lora_a, lin, 0);
            add_trainable(m, &lin->lora_b, lin, 1);
        }
    }
    return finch_model_alloc_grads(m);
}

void finch_lora_detach(finch_model *m)
{
    for (int i = 0; i < m->n_linears; i++) {
        finch_linear_module *lin = m->linears[i];
        finch_param_release(m, &lin->lora_a);
        finch_param_release(m, &lin->lora_b);
        lin->rank = 0;
    }
    finch_model_release_grads(m);
    m->lora_attached = 0;
    m->weights_version++;
    free(m->lora_targets_json);
    m->lora_targets_json = NULL;
    m->n_trainables = 0;
}

finch_status finch_lora_unload(finch_model *m)
{
    if (!m) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_lora_unload: NULL model");
    if (!m->lora_attached) return finch_error(FINCH_ERR_STATE, "finch_lora_unload: no adapter is attached");
    finch_lora_detach(m);
    return FINCH_OK;
}

/* Gives each chosen linear an adapter of rank r (values uninitialised) and makes them trainable. */
int finch_lora_attach_modules(finch_model *m, int r, float alpha, int use_rslora, float dropout, const unsigned char *chosen)
{
    float scale = use_rslora ? alpha / sqrtf((float)r) : alpha / (float)r;
    for (int i = 0; i < m->n_linears; i++) {
        if (!chosen[i]) continue;
        finch_linear_module *lin = m->linears[i];
        snprintf(lin->lora_a.name, sizeof lin->lora_a.name, "base_model.model.%s.lora_A.weight", lin->path);
        snprintf(lin->lora_b.name, sizeof lin->lora_b.name, "base_model.model.%s.lora_B.weight", lin->path);
        int rc = finch_param_alloc(m, &lin->lora_a, FINCH_DTYPE_F32, 2, r, lin->in_features);
        if (!rc) rc = finch_param_alloc(m, &lin->lora_b, FINCH_DTYPE_F32, 2, lin->out_features, r);
        if (rc) {
            finch_lora_detach(m);
            return rc;
        }
        lin->rank = r;
        lin->scale = scale;
        lin->dropout = dropout;
    }
    m->lora_attached = 1;
    m->weights_version++;
    m->lora_r = r;
    m->lora_alpha = alpha;
    m->lora_use_rslora = use_rslora;
    m->lora_dropout = dropout;
    int rc = finch_model_rebuild_trainables(m);
    if (rc) finch_lora_detach(m);
    return rc;
}

/* A deterministic stream of uniform doubles in [0, 1) (splitmix64). */
static double next_uniform(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (double)(z >> 11) * (1.0 / 9007199254740992.0);
}

static int append_json_name(char **json, size_t *len, size_t *cap, const char *name)
{
    size_t need = *len + strlen(name) + 8;
    if (need > *cap) {
        size_t c = *cap ? *cap * 2 : 256;
        while (c < need) c *= 2;
        char *p = realloc(*json, c);
        if (!p) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
        *json = p;
        *cap = c;
    }
    *len += (size_t)sprintf(*json + *len, "%s\"%s\"", *len > 1 ? ", " : "", name);
    return FINCH_OK;
}

finch_status finch_lora_attach(finch_model *m, const finch_lora_config *cfg)
{
    if (!m || !cfg) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_lora_attach: NULL argument");
    if (m->full_finetune) return finch_error(FINCH_ERR_STATE, "finch_lora_attach: the model was loaded for full fine-tuning");
    if (m->lora_attached) return finch_error(FINCH_ERR_STATE, "finch_lora_attach: an adapter is already attached");
    if (cfg->r <= 0 || cfg->r > 65536) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_lora_attach: rank %d must be in [1, 65536]", cfg->r);
    if (!(cfg->alpha > 0)) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_lora_attach: alpha must be positive");
    if (!(cfg->dropout >= 0 && cfg->dropout < 1))
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_lora_attach: dropout %g must be in [0, 1)", cfg->dropout);
    const char *targets = cfg->target_modules && *cfg->target_modules ? cfg->target_modules : "all-linear";
    unsigned char *chosen = calloc((size_t)m->n_linears + 1, 1);
    if (!chosen) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    int n_chosen = 0;
    for (int i = 0; i < m->n_linears; i++) {
        int hit;
        finch_lora_module_targeted(targets, m->linears[i], &hit);
        chosen[i] = (unsigned char)hit;
        n_chosen += hit;
    }
    /* Every listed name (and group) must match something, as in PEFT. */
    {
        for (const char *p = targets; *p;) {
            while (*p == ',' || *p == ' ') p++;
            const char *e = p;
            while (*e && *e != ',') e++;
            size_t len = (size_t)(e - p);
            while (len && p[len - 1] == ' ') len--;
            int any = 0;
            for (int i = 0; len && i < m->n_linears && !any; i++) {
                int hit = 0;
                any = group_matches(p, len, m->linears[i], &hit) ? hit : name_matches(m->linears[i]->path, p, len);
            }
            if (len && !any) {
                free(chosen);
                return finch_error(FINCH_ERR_INVALID_ARGUMENT,
                                   "finch_lora_attach: target module '%.*s' matches no linear layer of this %s model", (int)len,
                                   p, m->cfg.model_type);
            }
            p = e;
        }
    }
    if (!n_chosen) {
        free(chosen);
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_lora_attach: target_modules '%s' selects no layer", targets);
    }
    int rc = finch_lora_attach_modules(m, cfg->r, cfg->alpha, cfg->use_rslora, cfg->dropout, chosen);
    /* PEFT's init: A ~ kaiming_uniform(a = sqrt 5) = U(-1/sqrt(in), 1/sqrt(in)), B = 0. */
    size_t len = 1, cap = 256;
    char *json = malloc(cap);
    if (!json && !rc) rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    if (json) strcpy(json, "[");
    for (int i = 0; !rc && i < m->n_linears; i++) {
        if (!chosen[i]) continue;
        finch_linear_module *lin = m->linears[i];
        int64_t na = lin->lora_a.numel;
        float *a = malloc((size_t)(na > lin->lora_b.numel ? na : lin->lora_b.numel) * sizeof(float));
        if (!a) {
            rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
            break;
        }
        uint64_t state = cfg->seed * 0xD1B54A32D192ED03ull + lin->id * 0x9E3779B97F4A7C15ull + 1;
        double bound = 1.0 / sqrt((double)lin->in_features);
        for (int64_t j = 0; j < na; j++) a[j] = (float)((2.0 * next_uniform(&state) - 1.0) * bound);
        rc = finch_model_upload_f32(m, a, lin->lora_a.shape[0], lin->lora_a.shape[1], NULL, FINCH_DTYPE_F32, lin->lora_a.data);
        free(a);
        if (!rc && m->be->api->fill(m->be->dev, m->be->stream, lin->lora_b.data, FINCH_DTYPE_F32, lin->lora_b.numel, 0.0f))
            rc = finch_device_error(m->be, FINCH_ERR_DEVICE, "clearing lora_B");
        /* target_modules as PEFT saves them: the distinct leaf names. */
        int seen = 0;
        for (int j = 0; j < i && !seen; j++) seen = chosen[j] && !strcmp(m->linears[j]->leaf, lin->leaf);
        if (!rc && !seen) rc = append_json_name(&json, &len, &cap, lin->leaf);
    }
    free(chosen);
    if (!rc) {
        strcat(json, "]");
        rc = finch_vl_lora_targets(m, targets, &json);
    }
    if (!rc) {
        m->lora_targets_json = json;
        json = NULL;
    }
    free(json);
    if (rc) finch_lora_detach(m);
    return rc;
}
