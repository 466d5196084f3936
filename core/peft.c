/* PEFT LoRA adapter folders: adapter_config.json + adapter_model.safetensors with tensors named
 * base_model.model.<module path>.lora_A.weight / lora_B.weight. */
#include "core/error.h"
#include "core/files.h"
#include "core/model.h"
#include "core/safetensors.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- target_modules: a list of names or a regular expression (PEFT: re.fullmatch) ---------- */

typedef struct targets {
    const cJSON *list;
    pcre2_code *re;
    pcre2_match_data *md;
} targets;

static int targets_parse(const char *path, const cJSON *tm, targets *t)
{
    memset(t, 0, sizeof *t);
    if (cJSON_IsArray(tm)) {
        const cJSON *e;
        cJSON_ArrayForEach(e, tm) {
            if (!cJSON_IsString(e)) return finch_error(FINCH_ERR_FORMAT, "%s: field 'target_modules' must hold strings", path);
        }
        t->list = tm;
        return FINCH_OK;
    }
    if (!cJSON_IsString(tm))
        return finch_error(FINCH_ERR_FORMAT, "%s: field 'target_modules' must be a list of names or a regular expression", path);
    int err;
    PCRE2_SIZE at;
    t->re = pcre2_compile((PCRE2_SPTR)tm->valuestring, PCRE2_ZERO_TERMINATED, PCRE2_ANCHORED | PCRE2_ENDANCHORED, &err, &at,
                          NULL);
    if (!t->re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        return finch_error(FINCH_ERR_UNSUPPORTED, "%s: target_modules regular expression '%s' cannot be used (at offset %zu: %s)",
                           path, tm->valuestring, (size_t)at, (const char *)msg);
    }
    t->md = pcre2_match_data_create_from_pattern(t->re, NULL);
    if (!t->md) {
        pcre2_code_free(t->re);
        t->re = NULL;
        return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    }
    return FINCH_OK;
}

static void targets_free(targets *t)
{
    if (t->md) pcre2_match_data_free(t->md);
    if (t->re) pcre2_code_free(t->re);
}

static int targets_match(const targets *t, const finch_linear_module *lin)
{
    if (t->re) return pcre2_match(t->re, (PCRE2_SPTR)lin->path, PCRE2_ZERO_TERMINATED, 0, 0, t->md, NULL) >= 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, t->list) {
        int hit;
        finch_lora_module_targeted(e->valuestring, lin, &hit);
        if (hit) return 1;
    }
    return 0;
}

/* ---- adapter_config.json --------------------------------------------------------------------- */

static int read_json(const char *path, cJSON **out)
{
    FILE *f = fopen(path, "rb");
    if (!f) return finch_error(FINCH_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    char *buf = NULL;
    size_t len = 0, cap = 0, n;
    do {
        if (cap - len < 4096) {
            cap = cap ? 2 * cap : 65536;
            char *p = realloc(buf, cap + 1);
            if (!p) {
                free(buf);
                fclose(f);
                return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
            }
            buf = p;
        }
        n = fread(buf + len, 1, cap - len, f);
        len += n;
    } while (n);
    fclose(f);
    buf[len] = 0;
    const char *end = NULL;
    *out = cJSON_ParseWithOpts(buf, &end, 1);
    long at = end ? (long)(end - buf) : -1;
    free(buf);
    if (!*out) return finch_error(FINCH_ERR_FORMAT, "%s: malformed JSON near byte %ld", path, at);
    if (!cJSON_IsObject(*out)) {
        cJSON_Delete(*out);
        return finch_error(FINCH_ERR_FORMAT, "%s: the top level must be a JSON object", path);
    }
    return FINCH_OK;
}

static const cJSON *get(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return v && !cJSON_IsNull(v) ? v : NULL;
}

/* Settings PEFT can carry that change what the adapter computes; refuse rather than ignore them. */
static int check_unsupported(const char *path, const cJSON *c)
{
    const cJSON *v;
    if ((v = get(c, "peft_type")) && (!cJSON_IsString(v) || strcmp(v->valuestring, "LORA")))
        return finch_error(FINCH_ERR_UNSUPPORTED, "%s: peft_type must be \"LORA\"", path);
    if ((v = get(c, "use_dora")) && cJSON_IsTrue(v)) return finch_error(FINCH_ERR_UNSUPPORTED, "%s: use_dora (DoRA) is not supported", path);
    if ((v = get(c, "fan_in_fan_out")) && cJSON_IsTrue(v))
        return finch_error(FINCH_ERR_UNSUPPORTED, "%s: fan_in_fan_out is not supported", path);
    if ((v = get(c, "lora_bias")) && cJSON_IsTrue(v)) return finch_error(FINCH_ERR_UNSUPPORTED, "%s: lora_bias is not supported", path);
    if ((v = get(c, "bias")) && (!cJSON_IsString(v) || strcmp(v->valuestring, "none")))
        return finch_error(FINCH_ERR_UNSUPPORTED, "%s: bias must be \"none\"", path);
    static const char *const nonempty[] = {"rank_pattern", "alpha_pattern", "modules_to_save", "layers_to_transform",
                                           "exclude_modules", "layer_replication", "trainable_token_indices"};
    for (size_t i = 0; i < sizeof nonempty / sizeof nonempty[0]; i++)
        if ((v = get(c, nonempty[i])) && ((!cJSON_IsObject(v) && !cJSON_IsArray(v)) || cJSON_GetArraySize(v) > 0))
            return finch_error(FINCH_ERR_UNSUPPORTED, "%s: field '%s' is not supported", path, nonempty[i]);
    return FINCH_OK;
}

/* ---- load ------------------------------------------------------------------------------------ */

static int load_factor(finch_model *m, const st_set *set, const char *file, const char *name, int64_t d0, int64_t d1,
                       const int32_t *perm, finch_param *dst)
{
    const st_tensor *t = st_set_find(set, name);
    if (!t) return finch_error(FINCH_ERR_FORMAT, "%s: missing tensor '%s'", file, name);
    if (t->ndim != 2 || t->shape[0] != d0 || t->shape[1] != d1)
        return finch_error(FINCH_ERR_FORMAT, "%s: tensor '%s' has shape [%lld%s%lld], expected [%lld, %lld]", file, name,
                           (long long)t->shape[0], t->ndim > 1 ? ", " : "", t->ndim > 1 ? (long long)t->shape[1] : 0LL,
                           (long long)d0, (long long)d1);
    if (!dst) return FINCH_OK;
    float *host = malloc((size_t)t->numel * sizeof(float) + 1);
    if (!host) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    int rc = st_to_f32(t, host);
    if (rc) rc = finch_error_prefix(rc, "%s: tensor '%s': ", file, name);
    if (!rc) rc = finch_model_upload_f32(m, host, d0, d1, perm, FINCH_DTYPE_F32, dst->data);
    free(host);
    return rc;
}

static int parse_number(const char *path, const cJSON *c, const char *key, int required, double dflt, double *out)
{
    const cJSON *v = get(c, key);
    if (!v) {
        if (required) return finch_error(FINCH_ERR_FORMAT, "%s: missing field '%s'", path, key);
        *out = dflt;
        return FINCH_OK;
    }
    if (!cJSON_IsNumber(v)) return finch_error(FINCH_ERR_FORMAT, "%s: field '%s' must be a number", path, key);
    *out = v->valuedouble;
    return FINCH_OK;
}

finch_status finch_lora_load(finch_model *m, const char *adapter_dir)
{
    if (!m || !adapter_dir) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_lora_load: NULL argument");
    if (m->full_finetune) return finch_error(FINCH_ERR_STATE, "finch_lora_load: the model was loaded for full fine-tuning");
    if (m->lora_attached) return finch_error(FINCH_ERR_STATE, "finch_lora_load: an adapter is already attached");
    char cpath[4096], wpath[4096];
    snprintf(cpath, sizeof cpath, "%s/adapter_config.json", adapter_dir);
    snprintf(wpath, sizeof wpath, "%s/adapter_model.safetensors", adapter_dir);
    cJSON *c = NULL;
    int rc = read_json(cpath, &c);
    if (rc) return rc;
    double r = 0, alpha = 8, dropout = 0;
    const cJSON *rs = get(c, "use_rslora"), *tm = get(c, "target_modules");
    targets t;
    memset(&t, 0, sizeof t);
    if ((rc = check_unsupported(cpath, c)) || (rc = parse_number(cpath, c, "r", 1, 0, &r)) ||
        (rc = parse_number(cpath, c, "lora_alpha", 0, 8, &alpha)) || (rc = parse_number(cpath, c, "lora_dropout", 0, 0, &dropout)))
        goto done;
    if (r != floor(r) || r < 1 || r > 65536) {
        rc = finch_error(FINCH_ERR_FORMAT, "%s: field 'r' must be a positive integer", cpath);
        goto done;
    }
    if (!(alpha > 0) || !(dropout >= 0 && dropout < 1)) {
        rc = finch_error(FINCH_ERR_FORMAT, "%s: lora_alpha must be positive and lora_dropout in [0, 1)", cpath);
        goto done;
    }
    if (rs && !cJSON_IsBool(rs)) {
        rc = finch_error(FINCH_ERR_FORMAT, "%s: field 'use_rslora' must be true or false", cpath);
        goto done;
    }
    if (!tm) {
        rc = finch_error(FINCH_ERR_FORMAT, "%s: missing field 'target_modules'", cpath);
        goto done;
    }
    if ((rc = targets_parse(cpath, tm, &t))) goto done;

    unsigned char *chosen = calloc((size_t)m->n_linears + 1, 1);
    st_set *set = NULL;
    if (!chosen) {
        rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
        goto done;
    }
    int n_chosen = 0;
    for (int i = 0; i < m->n_linears; i++) n_chosen += chosen[i] = (unsigned char)targets_match(&t, m->linears[i]);
    if (!n_chosen) rc = finch_error(FINCH_ERR_FORMAT, "%s: target_modules selects no linear layer of this %s model", cpath, m->cfg.model_type);
    if (!rc) rc = st_set_open_file(wpath, &set);
    /* Check every tensor before attaching anything. */
    char na[256], nb[256];
    for (int i = 0; !rc && i < m->n_linears; i++) {
        if (!chosen[i]) continue;
        const finch_linear_module *lin = m->linears[i];
        snprintf(na, sizeof na, "base_model.model.%s.lora_A.weight", lin->path);
        snprintf(nb, sizeof nb, "base_model.model.%s.lora_B.weight", lin->path);
        if (!(rc = load_factor(m, set, wpath, na, (int64_t)r, lin->in_features, NULL, NULL)))
            rc = load_factor(m, set, wpath, nb, lin->out_features, (int64_t)r, NULL, NULL);
    }
    if (!rc && st_set_count(set) != 2 * n_chosen) {
        for (int j = 0; j < st_set_count(set) && !rc; j++) {
            const char *name = st_set_at(set, j)->name;
            int used = 0;
            for (int i = 0; i < m->n_linears && !used; i++) {
                if (!chosen[i]) continue;
                snprintf(na, sizeof na, "base_model.model.%s.lora_A.weight", m->linears[i]->path);
                snprintf(nb, sizeof nb, "base_model.model.%s.lora_B.weight", m->linears[i]->path);
                used = !strcmp(name, na) || !strcmp(name, nb);
            }
            if (!used)
                rc = finch_error(FINCH_ERR_UNSUPPORTED, "%s: tensor '%s' belongs to no module that target_modules selects", wpath,
                                 name);
        }
    }
    if (!rc) rc = finch_lora_attach_modules(m, (int)r, (float)alpha, rs && cJSON_IsTrue(rs), (float)dropout, chosen);
    for (int i = 0; !rc && i < m->n_linears; i++) {
        if (!chosen[i]) continue;
        finch_linear_module *lin = m->linears[i];
        snprintf(na, sizeof na, "base_model.model.%s.lora_A.weight", lin->path);
        snprintf(nb, sizeof nb, "base_model.model.%s.lora_B.weight", lin->path);
        if (!(rc = load_factor(m, set, wpath, na, (int64_t)r, lin->in_features, NULL, &lin->lora_a)))
            rc = load_factor(m, set, wpath, nb, lin->out_features, (int64_t)r, lin->row_perm, &lin->lora_b);
    }
    if (!rc) {
        m->lora_targets_json = cJSON_PrintUnformatted(tm);
        if (!m->lora_targets_json) rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    }
    if (rc && m->lora_attached) finch_lora_detach(m);
    if (set) st_set_close(set);
    free(chosen);
done:
    targets_free(&t);
    cJSON_Delete(c);
    return rc;
}

/* ---- save ------------------------------------------------------------------------------------ */

static cJSON *adapter_config_json(const finch_model *m)
{
    cJSON *c = cJSON_CreateObject();
    if (!c) return NULL;
    cJSON *tm = cJSON_Parse(m->lora_targets_json ? m->lora_targets_json : "[]");
    cJSON_AddItemToObject(c, "alpha_pattern", cJSON_CreateObject());
    cJSON_AddNullToObject(c, "auto_mapping");
    cJSON_AddStringToObject(c, "base_model_name_or_path", m->dir);
    cJSON_AddStringToObject(c, "bias", "none");
    cJSON_AddNullToObject(c, "exclude_modules");
    cJSON_AddFalseToObject(c, "fan_in_fan_out");
    cJSON_AddTrueToObject(c, "inference_mode");
    cJSON_AddTrueToObject(c, "init_lora_weights");
    cJSON_AddNullToObject(c, "layer_replication");
    cJSON_AddNullToObject(c, "layers_pattern");
    cJSON_AddNullToObject(c, "layers_to_transform");
    cJSON_AddItemToObject(c, "loftq_config", cJSON_CreateObject());
    cJSON_AddNumberToObject(c, "lora_alpha", m->lora_alpha);
    cJSON_AddFalseToObject(c, "lora_bias");
    cJSON_AddNumberToObject(c, "lora_dropout", m->lora_dropout);
    cJSON_AddNullToObject(c, "megatron_config");
    cJSON_AddStringToObject(c, "megatron_core", "megatron.core");
    cJSON_AddNullToObject(c, "modules_to_save");
    cJSON_AddStringToObject(c, "peft_type", "LORA");
    cJSON_AddNumberToObject(c, "r", m->lora_r);
    cJSON_AddItemToObject(c, "rank_pattern", cJSON_CreateObject());
    cJSON_AddNullToObject(c, "revision");
    if (tm) cJSON_AddItemToObject(c, "target_modules", tm);
    cJSON_AddStringToObject(c, "task_type", "CAUSAL_LM");
    cJSON_AddFalseToObject(c, "use_dora");
    cJSON_AddBoolToObject(c, "use_rslora", m->lora_use_rslora);
    if (!tm) {
        cJSON_Delete(c);
        return NULL;
    }
    return c;
}

finch_status finch_lora_save(const finch_model *m, const char *adapter_dir)
{
    if (!m || !adapter_dir) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_lora_save: NULL argument");
    if (!m->lora_attached) return finch_error(FINCH_ERR_STATE, "finch_lora_save: no adapter is attached");
    int rc = finch_mkdirs(adapter_dir);
    if (rc) return rc;
    int n = 0;
    size_t floats = 0;
    for (int i = 0; i < m->n_linears; i++)
        if (m->linears[i]->rank) {
            n += 2;
            floats += (size_t)(m->linears[i]->lora_a.numel + m->linears[i]->lora_b.numel);
        }
    st_entry *e = calloc((size_t)n + 1, sizeof *e);
    float *host = malloc(floats * sizeof(float) + 1);
    if (!e || !host) {
        free(e);
        free(host);
        return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    }
    int k = 0;
    float *at = host;
    for (int i = 0; !rc && i < m->n_linears; i++) {
        const finch_linear_module *lin = m->linears[i];
        if (!lin->rank) continue;
        const finch_param *ps[2] = {&lin->lora_a, &lin->lora_b};
        for (int j = 0; j < 2 && !rc; j++) {
            rc = finch_model_download_f32(m, ps[j]->data, ps[j]->dtype, ps[j]->shape[0], ps[j]->shape[1], j ? lin->row_perm : NULL, at);
            e[k].name = ps[j]->name;
            e[k].dtype = ST_F32;
            e[k].ndim = 2;
            e[k].shape[0] = ps[j]->shape[0];
            e[k].shape[1] = ps[j]->shape[1];
            e[k].data = at;
            at += ps[j]->numel;
            k++;
        }
    }
    char path[4096];
    if (!rc) {
        static const char *const meta[] = {"format", "pt", NULL};
        snprintf(path, sizeof path, "%s/adapter_model.safetensors", adapter_dir);
        rc = st_write(path, e, k, meta);
    }
    free(e);
    free(host);
    if (rc) return rc;
    cJSON *c = adapter_config_json(m);
    char *text = c ? cJSON_Print(c) : NULL;
    cJSON_Delete(c);
    if (!text) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    snprintf(path, sizeof path, "%s/adapter_config.json", adapter_dir);
    rc = finch_write_text_atomic(path, text);
    cJSON_free(text);
    return rc;
}
