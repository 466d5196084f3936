/* bitsandbytes 4-bit checkpoints: quantization_config, loading and writing quantised weights. */
#include "core/bnb_checkpoint.h"
#include "core/error.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BNB_NAME_MAX 1024

static const char *const state_suffix[2] = {"quant_state.bitsandbytes__nf4", "quant_state.bitsandbytes__fp4"};

static int dtype_parse(const char *s, finch_dtype *out)
{
    if (!strncmp(s, "torch.", 6)) s += 6;
    if (!strcmp(s, "float32")) *out = FINCH_DTYPE_F32;
    else if (!strcmp(s, "bfloat16")) *out = FINCH_DTYPE_BF16;
    else if (!strcmp(s, "float16")) *out = FINCH_DTYPE_F16;
    else return 0;
    return 1;
}

static const char *dtype_name(finch_dtype t)
{
    return t == FINCH_DTYPE_BF16 ? "bfloat16" : t == FINCH_DTYPE_F16 ? "float16" : "float32";
}

static int type_parse(const char *s, nf4_type *out)
{
    if (!strcmp(s, "nf4")) *out = NF4_TYPE_NF4;
    else if (!strcmp(s, "fp4")) *out = NF4_TYPE_FP4;
    else return 0;
    return 1;
}

/* ---- config.json ------------------------------------------------------------------------------- */

/* A boolean field: absent -> dflt; a JSON bool -> its value; anything else -> -1. */
static int json_bool(const cJSON *o, const char *key, int dflt)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v || cJSON_IsNull(v)) return dflt;
    return cJSON_IsBool(v) ? cJSON_IsTrue(v) : -1;
}

static const char *method_label(const char *m)
{
    static const struct { const char *method, *label; } known[] = {
        {"gptq", "GPTQ"}, {"awq", "AWQ"}, {"aqlm", "AQLM"}, {"exl2", "ExLlamaV2"}, {"hqq", "HQQ"},
        {"quanto", "Quanto"}, {"eetq", "EETQ"}, {"fbgemm_fp8", "FBGEMM FP8"}, {"fp8", "FP8"},
        {"compressed-tensors", "compressed-tensors"}, {"torchao", "torchao"}, {"bitnet", "BitNet"},
        {"higgs", "HIGGS"}, {"vptq", "VPTQ"}, {"spqr", "SpQR"}, {"mxfp4", "MXFP4"},
    };
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (!strcmp(known[i].method, m)) return known[i].label;
    return "unknown scheme";
}

int bnb_config_parse(const cJSON *config, const char *where, bnb_config *out)
{
    memset(out, 0, sizeof *out);
    out->compute_dtype = FINCH_DTYPE_F32;
    strcpy(out->quant_storage, "uint8");
    const cJSON *qc = cJSON_GetObjectItemCaseSensitive(config, "quantization_config");
    if (!qc || cJSON_IsNull(qc)) return FINCH_OK;
    if (!cJSON_IsObject(qc)) return finch_error(FINCH_ERR_FORMAT, "%s: quantization_config is not an object", where);

    const cJSON *qm = cJSON_GetObjectItemCaseSensitive(qc, "quant_method");
    int in4 = json_bool(qc, "load_in_4bit", -2), in8 = json_bool(qc, "load_in_8bit", -2);
    if (in4 == -2) in4 = json_bool(qc, "_load_in_4bit", 0);
    if (in8 == -2) in8 = json_bool(qc, "_load_in_8bit", 0);
    const char *method;
    if (cJSON_IsString(qm)) method = qm->valuestring;
    else if (!qm && (cJSON_HasObjectItem(qc, "load_in_4bit") || cJSON_HasObjectItem(qc, "load_in_8bit")))
        method = "bitsandbytes"; /* configs older than transformers' quant_method field */
    else return finch_error(FINCH_ERR_FORMAT, "%s: quantization_config has no string 'quant_method'", where);
    if (strcmp(method, "bitsandbytes") != 0)
        return finch_error(FINCH_ERR_UNSUPPORTED,
                           "%s: quantization_config.quant_method '%s' (%s) is not supported; finch loads bitsandbytes 4-bit "
                           "(NF4/FP4) checkpoints, or quantises bf16/f16/f32 checkpoints to NF4 itself",
                           where, method, method_label(method));
    if (in4 < 0 || in8 < 0)
        return finch_error(FINCH_ERR_FORMAT, "%s: quantization_config.load_in_4bit/load_in_8bit must be true or false", where);
    if (in8)
        return finch_error(FINCH_ERR_UNSUPPORTED,
                           "%s: bitsandbytes 8-bit (LLM.int8, load_in_8bit) checkpoints are not supported; only 4-bit NF4/FP4", where);
    if (!in4) return finch_error(FINCH_ERR_FORMAT, "%s: bitsandbytes quantization_config has neither load_in_4bit nor load_in_8bit set", where);

    const cJSON *qt = cJSON_GetObjectItemCaseSensitive(qc, "bnb_4bit_quant_type");
    out->quant_type = NF4_TYPE_FP4;
    if (qt && !cJSON_IsNull(qt)) {
        if (!cJSON_IsString(qt)) return finch_error(FINCH_ERR_FORMAT, "%s: bnb_4bit_quant_type is not a string", where);
        if (!type_parse(qt->valuestring, &out->quant_type))
            return finch_error(FINCH_ERR_UNSUPPORTED, "%s: bnb_4bit_quant_type '%s' is not supported (nf4 or fp4)", where, qt->valuestring);
    }
    out->double_quant = json_bool(qc, "bnb_4bit_use_double_quant", 0);
    if (out->double_quant < 0) return finch_error(FINCH_ERR_FORMAT, "%s: bnb_4bit_use_double_quant must be true or false", where);
    const cJSON *cd = cJSON_GetObjectItemCaseSensitive(qc, "bnb_4bit_compute_dtype");
    if (cd && !cJSON_IsNull(cd)) {
        if (!cJSON_IsString(cd)) return finch_error(FINCH_ERR_FORMAT, "%s: bnb_4bit_compute_dtype is not a string", where);
        if (!dtype_parse(cd->valuestring, &out->compute_dtype))
            return finch_error(FINCH_ERR_UNSUPPORTED, "%s: bnb_4bit_compute_dtype '%s' is not supported (float32, bfloat16, float16)",
                               where, cd->valuestring);
    }
    const cJSON *qs = cJSON_GetObjectItemCaseSensitive(qc, "bnb_4bit_quant_storage");
    if (qs && !cJSON_IsNull(qs)) {
        static const char *const storages[] = {"uint8", "int8", "float16", "bfloat16", "float32"};
        int ok = 0;
        for (size_t i = 0; cJSON_IsString(qs) && i < sizeof storages / sizeof storages[0]; i++)
            ok |= !strcmp(qs->valuestring, storages[i]) || (!strncmp(qs->valuestring, "torch.", 6) && !strcmp(qs->valuestring + 6, storages[i]));
        if (!ok) return finch_error(FINCH_ERR_UNSUPPORTED, "%s: bnb_4bit_quant_storage is not one of uint8, int8, float16, bfloat16, float32", where);
        snprintf(out->quant_storage, sizeof out->quant_storage, "%s", qs->valuestring + (strncmp(qs->valuestring, "torch.", 6) ? 0 : 6));
    }
    out->quantized = 1;
    return FINCH_OK;
}

int bnb_config_load(const char *path, bnb_config *out)
{
    memset(out, 0, sizeof *out);
    FILE *fp = fopen(path, "rb");
    if (!fp) return finch_error(FINCH_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    char *text = NULL;
    size_t len = 0, cap = 0;
    int rc = FINCH_OK;
    for (;;) {
        if (len + 4097 > cap) {
            cap = cap ? 2 * cap : 16384;
            char *t = cap > (64u << 20) ? NULL : realloc(text, cap);
            if (!t) { rc = finch_error(FINCH_ERR_FORMAT, "%s: too large for a config.json", path); break; }
            text = t;
        }
        size_t got = fread(text + len, 1, 4096, fp);
        len += got;
        if (got < 4096) break;
    }
    if (!rc && ferror(fp)) rc = finch_error(FINCH_ERR_IO, "%s: read error", path);
    fclose(fp);
    cJSON *root = NULL;
    if (!rc) {
        root = cJSON_ParseWithLength(text, len);
        if (!cJSON_IsObject(root)) rc = finch_error(FINCH_ERR_FORMAT, "%s: not a JSON object", path);
    }
    free(text);
    if (!rc) rc = bnb_config_parse(root, path, out);
    cJSON_Delete(root);
    return rc;
}

int bnb_config_add_to_json(const bnb_config *c, cJSON *config)
{
    cJSON *qc = cJSON_CreateObject();
    if (!qc) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of memory");
    cJSON_AddStringToObject(qc, "quant_method", "bitsandbytes");
    cJSON_AddBoolToObject(qc, "_load_in_4bit", 1);
    cJSON_AddBoolToObject(qc, "_load_in_8bit", 0);
    cJSON_AddStringToObject(qc, "bnb_4bit_compute_dtype", dtype_name(c->compute_dtype));
    cJSON_AddStringToObject(qc, "bnb_4bit_quant_storage", c->quant_storage[0] ? c->quant_storage : "uint8");
    cJSON_AddStringToObject(qc, "bnb_4bit_quant_type", nf4_type_name(c->quant_type));
    cJSON_AddBoolToObject(qc, "bnb_4bit_use_double_quant", c->double_quant);
    cJSON_AddBoolToObject(qc, "llm_int8_enable_fp32_cpu_offload", 0);
    cJSON_AddBoolToObject(qc, "llm_int8_has_fp16_weight", 0);
    cJSON_AddNullToObject(qc, "llm_int8_skip_modules");
    cJSON_AddNumberToObject(qc, "llm_int8_threshold", 6.0);
    cJSON_AddBoolToObject(qc, "load_in_4bit", 1);
    cJSON_AddBoolToObject(qc, "load_in_8bit", 0);
    cJSON_DeleteItemFromObjectCaseSensitive(config, "quantization_config");
    if (!cJSON_AddItemToObject(config, "quantization_config", qc)) {
        cJSON_Delete(qc);
        return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of memory");
    }
    return FINCH_OK;
}

/* ---- loading ---------------------------------------------------------------------------------- */

static int name_join(char *buf, const char *name, const char *suffix)
{
    int k = snprintf(buf, BNB_NAME_MAX, "%s.%s", name, suffix);
    if (k < 0 || k >= BNB_NAME_MAX) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "tensor name '%s' is too long", name);
    return FINCH_OK;
}

int bnb_weight_is_quantized(const st_set *s, const char *name)
{
    char key[BNB_NAME_MAX];
    for (int t = 0; t < 2; t++)
        if (!name_join(key, name, state_suffix[t]) && st_set_find(s, key)) return 1;
    return 0;
}

/* A JSON number that is an integer in [lo, hi]. */
static int json_int(const cJSON *o, const char *key, int64_t lo, int64_t hi, int64_t *v)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsNumber(x) || x->valuedouble != floor(x->valuedouble) || x->valuedouble < (double)lo || x->valuedouble > (double)hi)
        return 0;
    *v = (int64_t)x->valuedouble;
    return 1;
}

/* Finds tensor name.suffix, which must have the given dtype and element count. */
static int find_part(const st_set *s, const char *where, const char *name, const char *suffix, st_dtype dtype,
                     int64_t numel, const st_tensor **out)
{
    char key[BNB_NAME_MAX];
    int rc = name_join(key, name, suffix);
    if (rc) return rc;
    const st_tensor *t = st_set_find(s, key);
    if (!t) return finch_error(FINCH_ERR_FORMAT, "%s: tensor '%s' is missing", where, key);
    if (t->dtype != dtype || t->numel != numel)
        return finch_error(FINCH_ERR_FORMAT, "%s: tensor '%s' is %s with %lld elements; %s with %lld expected", where, key,
                           st_dtype_name(t->dtype), (long long)t->numel, st_dtype_name(dtype), (long long)numel);
    *out = t;
    return FINCH_OK;
}

static int check_map(const char *where, const st_tensor *t, const float *ref, int n)
{
    float *stored = malloc((size_t)n * sizeof(float));
    if (!stored) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of memory");
    memcpy(stored, t->data, (size_t)n * sizeof(float));
    int bad = 0, ok = nf4_map_matches(stored, ref, n, &bad);
    float got = stored[bad];
    free(stored);
    if (ok) return FINCH_OK;
    return finch_error(FINCH_ERR_FORMAT, "%s: tensor '%s' is not the expected code table: entry %d is %.9g, expected %.9g",
                       where, t->name, bad, (double)got, (double)ref[bad]);
}

static int check_finite(const char *where, const st_tensor *t, const float *v, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(v[i]))
            return finch_error(FINCH_ERR_FORMAT, "%s: tensor '%s': element %lld is not finite", where, t->name, (long long)i);
    return FINCH_OK;
}

/* Reads the quant_state JSON into the scalar fields of w. */
static int parse_state(const char *where, const st_tensor *qs, nf4_type type, nf4_weight *w)
{
    if (qs->dtype != ST_U8 || qs->ndim != 1)
        return finch_error(FINCH_ERR_FORMAT, "%s: tensor '%s' is %s with %d dimensions; a 1-D U8 tensor of JSON expected",
                           where, qs->name, st_dtype_name(qs->dtype), qs->ndim);
    cJSON *j = cJSON_ParseWithLength(qs->data, qs->nbytes);
    int rc = FINCH_OK;
    int64_t v;
    if (!cJSON_IsObject(j)) {
        rc = finch_error(FINCH_ERR_FORMAT, "%s: tensor '%s' does not hold a JSON object", where, qs->name);
        goto done;
    }
    const cJSON *qt = cJSON_GetObjectItemCaseSensitive(j, "quant_type");
    nf4_type jt;
    if (!cJSON_IsString(qt) || !type_parse(qt->valuestring, &jt) || jt != type) {
        rc = finch_error(FINCH_ERR_FORMAT, "%s: tensor '%s': quant_type %s%s%s does not match the tensor name (%s)", where, qs->name,
                         cJSON_IsString(qt) ? "'" : "", cJSON_IsString(qt) ? qt->valuestring : "(missing)", cJSON_IsString(qt) ? "'" : "",
                         nf4_type_name(type));
        goto done;
    }
    w->type = type;
    if (!json_int(j, "blocksize", 0, 1 << 30, &v) || !nf4_blocksize_valid(v)) {
        rc = finch_error(FINCH_ERR_FORMAT, "%s: tensor '%s': blocksize is missing or not a power of two in 32..4096", where, qs->name);
        goto done;
    }
    w->blocksize = v;
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(j, "dtype");
    if (!cJSON_IsString(dt) || !dtype_parse(dt->valuestring, &w->dtype)) {
        rc = finch_error(cJSON_IsString(dt) ? FINCH_ERR_UNSUPPORTED : FINCH_ERR_FORMAT,
                         "%s: tensor '%s': dtype %s is not float32, bfloat16 or float16", where, qs->name,
                         cJSON_IsString(dt) ? dt->valuestring : "(missing)");
        goto done;
    }
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(j, "shape");
    int64_t dims[2] = {0, 0};
    int shape_ok = cJSON_IsArray(shape) && cJSON_GetArraySize(shape) == 2;
    for (int d = 0; shape_ok && d < 2; d++) {
        const cJSON *x = cJSON_GetArrayItem(shape, d);
        shape_ok = cJSON_IsNumber(x) && x->valuedouble == floor(x->valuedouble) && x->valuedouble >= 1 && x->valuedouble <= 1e12;
        if (shape_ok) dims[d] = (int64_t)x->valuedouble;
    }
    if (!shape_ok) {
        rc = finch_error(FINCH_ERR_FORMAT, "%s: tensor '%s': shape must be [out_features, in_features] of positive integers", where, qs->name);
        goto done;
    }
    w->rows = dims[0];
    w->cols = dims[1];
    int has_nbs = cJSON_HasObjectItem(j, "nested_blocksize"), has_off = cJSON_HasObjectItem(j, "nested_offset");
    w->nested = has_nbs || has_off || cJSON_HasObjectItem(j, "nested_dtype");
    if (w->nested) {
        const cJSON *off = cJSON_GetObjectItemCaseSensitive(j, "nested_offset");
        const cJSON *nd = cJSON_GetObjectItemCaseSensitive(j, "nested_dtype");
        if (!json_int(j, "nested_blocksize", 0, 1 << 30, &v) || !nf4_blocksize_valid(v)) {
            rc = finch_error(FINCH_ERR_FORMAT, "%s: tensor '%s': nested_blocksize is missing or not a power of two in 32..4096", where, qs->name);
        } else if (!cJSON_IsNumber(off) || !isfinite((float)off->valuedouble)) {
            rc = finch_error(FINCH_ERR_FORMAT, "%s: tensor '%s': nested_offset is missing or not a finite number", where, qs->name);
        } else if (nd && !(cJSON_IsString(nd) && !strcmp(nd->valuestring + (strncmp(nd->valuestring, "torch.", 6) ? 0 : 6), "float32"))) {
            rc = finch_error(FINCH_ERR_FORMAT, "%s: tensor '%s': nested_dtype must be float32", where, qs->name);
        } else {
            w->nested_blocksize = v;
            w->nested_offset = (float)off->valuedouble;
        }
    }
done:
    cJSON_Delete(j);
    return rc;
}

static int load_weight(const st_set *s, const char *name, nf4_weight *w)
{
    const char *where = st_set_file_of(s, name);
    char key[BNB_NAME_MAX];
    const st_tensor *qs[2];
    for (int t = 0; t < 2; t++) {
        int rc = name_join(key, name, state_suffix[t]);
        if (rc) return rc;
        qs[t] = st_set_find(s, key);
    }
    if (!where) where = "checkpoint";
    if (qs[0] && qs[1])
        return finch_error(FINCH_ERR_FORMAT, "%s: weight '%s' has both %s and %s", where, name, state_suffix[0], state_suffix[1]);
    if (!qs[0] && !qs[1])
        return finch_error(FINCH_ERR_FORMAT, "%s: weight '%s' has no %s tensor: not a bitsandbytes 4-bit weight", where, name, state_suffix[0]);
    nf4_type type = qs[0] ? NF4_TYPE_NF4 : NF4_TYPE_FP4;
    where = st_set_file_of(s, qs[type]->name);
    int rc = parse_state(where, qs[type], type, w);
    if (rc) return rc;
    if (w->rows > INT64_MAX / w->cols) return finch_error(FINCH_ERR_FORMAT, "%s: weight '%s': shape overflows", where, name);
    int64_t n = w->rows * w->cols, nb = nf4_n_blocks(n, w->blocksize);

    const st_tensor *packed = st_set_find(s, name);
    if (!packed) return finch_error(FINCH_ERR_FORMAT, "%s: tensor '%s' (the packed weight) is missing", where, name);
    if ((int64_t)packed->nbytes != nf4_packed_bytes(n))
        return finch_error(FINCH_ERR_FORMAT, "%s: tensor '%s' holds %zu bytes but shape [%lld, %lld] packs into %lld", where, name,
                           packed->nbytes, (long long)w->rows, (long long)w->cols, (long long)nf4_packed_bytes(n));

    const st_tensor *qmap, *absmax, *nabs = NULL, *nmap = NULL;
    rc = find_part(s, where, name, "quant_map", ST_F32, 16, &qmap);
    if (!rc) {
        float ref[16];
        nf4_stored_quant_map(type, ref);
        rc = check_map(where, qmap, ref, 16);
    }
    if (!rc) rc = find_part(s, where, name, "absmax", w->nested ? ST_U8 : ST_F32, nb, &absmax);
    if (!rc && w->nested) {
        rc = find_part(s, where, name, "nested_absmax", ST_F32, nf4_n_blocks(nb, w->nested_blocksize), &nabs);
        if (!rc) rc = find_part(s, where, name, "nested_quant_map", ST_F32, 256, &nmap);
        if (!rc) {
            float ref[256];
            nf4_dynamic_map(ref);
            rc = check_map(where, nmap, ref, 256);
        }
    } else if (!rc) {
        for (int k = 0; k < 2 && !rc; k++) {
            rc = name_join(key, name, k ? "nested_quant_map" : "nested_absmax");
            if (!rc && st_set_find(s, key))
                rc = finch_error(FINCH_ERR_FORMAT, "%s: tensor '%s' is present but the quant_state has no nested_* fields", where, key);
        }
    }
    if (rc) return rc;

    memcpy(w->code, nf4_code_table(type), sizeof w->code);
    w->packed = malloc((size_t)nf4_packed_bytes(n));
    w->absmax = malloc((size_t)nb * sizeof(float));
    if (w->nested) {
        w->qabsmax = malloc((size_t)nb);
        w->nested_absmax = malloc(nabs->nbytes);
    }
    if (!w->packed || !w->absmax || (w->nested && (!w->qabsmax || !w->nested_absmax)))
        return finch_error(FINCH_ERR_OUT_OF_MEMORY, "%s: out of memory loading '%s'", where, name);
    memcpy(w->packed, packed->data, packed->nbytes);
    if (!w->nested) {
        memcpy(w->absmax, absmax->data, absmax->nbytes);
        return check_finite(where, absmax, w->absmax, nb);
    }
    memcpy(w->qabsmax, absmax->data, absmax->nbytes);
    memcpy(w->nested_absmax, nabs->data, nabs->nbytes);
    memcpy(w->nested_code, nmap->data, nmap->nbytes);
    rc = check_finite(where, nabs, w->nested_absmax, nabs->numel);
    if (!rc)
        nf4_double_dequantize(w->qabsmax, w->nested_absmax, w->nested_offset, nb, w->nested_blocksize, w->nested_code, w->absmax);
    return rc;
}

int bnb_load_weight(const st_set *s, const char *name, nf4_weight *out)
{
    memset(out, 0, sizeof *out);
    int rc = load_weight(s, name, out);
    if (rc) nf4_weight_free(out);
    return rc;
}

/* ---- writing ------------------------------------------------------------------------------------ */

/* Shortest decimal that reads back as the same double (Python's repr style, "0.0" not "0"). */
static void format_float(char *buf, size_t n, double x)
{
    for (int p = 1; p <= 17; p++) {
        snprintf(buf, n, "%.*g", p, x);
        if (strtod(buf, NULL) == x) break;
    }
    if (!strpbrk(buf, ".eE")) strncat(buf, ".0", n - strlen(buf) - 1);
}

/* The quant_state JSON as json.dumps writes it (keys in QuantState.as_dict order). */
static char *state_json(const nf4_weight *w)
{
    char *j = malloc(512), off[64];
    if (!j) return NULL;
    int k = snprintf(j, 512, "{\"quant_type\": \"%s\", \"blocksize\": %lld, \"dtype\": \"%s\", \"shape\": [%lld, %lld]",
                     nf4_type_name(w->type), (long long)w->blocksize, dtype_name(w->dtype), (long long)w->rows, (long long)w->cols);
    if (w->nested) {
        format_float(off, sizeof off, (double)w->nested_offset);
        k += snprintf(j + k, 512 - (size_t)k, ", \"nested_blocksize\": %lld, \"nested_dtype\": \"float32\", \"nested_offset\": %s",
                      (long long)w->nested_blocksize, off);
    }
    snprintf(j + k, 512 - (size_t)k, "}");
    return j;
}

static int check_weight(const char *path, const char *name, const nf4_weight *w)
{
    if (w->rows <= 0 || w->cols <= 0 || !nf4_blocksize_valid(w->blocksize) || !w->packed || !w->absmax ||
        (w->nested && (!nf4_blocksize_valid(w->nested_blocksize) || !w->qabsmax || !w->nested_absmax || !isfinite(w->nested_offset))))
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "%s: weight '%s' is not a complete quantised weight", path, name);
    return FINCH_OK;
}

int bnb_write(const char *path, const bnb_named_weight *weights, int n_weights, const st_entry *extra, int n_extra)
{
    int cap = 6 * n_weights + n_extra, n = 0, rc = FINCH_OK;
    st_entry *e = calloc((size_t)cap + 1, sizeof *e);
    char **owned = calloc(7 * (size_t)n_weights + 1, sizeof *owned); /* names and JSON we allocate */
    float (*maps)[16] = calloc((size_t)n_weights + 1, sizeof *maps);
    int n_owned = 0;
    if (!e || !owned || !maps) rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "%s: out of memory", path);
    for (int i = 0; i < n_weights && !rc; i++) {
        const char *name = weights[i].name;
        const nf4_weight *w = weights[i].w;
        rc = check_weight(path, name, w);
        if (rc) break;
        int64_t numel = nf4_weight_numel(w), nb = nf4_weight_blocks(w);
        nf4_stored_quant_map(w->type, maps[i]);
        char *json = state_json(w);
        struct { const char *suffix; st_dtype dtype; int ndim; int64_t d0, d1; const void *data; } parts[6] = {
            {NULL, ST_U8, 2, nf4_packed_bytes(numel), 1, w->packed},
            {"absmax", w->nested ? ST_U8 : ST_F32, 1, nb, 0, w->nested ? (const void *)w->qabsmax : (const void *)w->absmax},
            {"quant_map", ST_F32, 1, 16, 0, maps[i]},
            {"nested_absmax", ST_F32, 1, w->nested ? nf4_n_blocks(nb, w->nested_blocksize) : 0, 0, w->nested_absmax},
            {"nested_quant_map", ST_F32, 1, 256, 0, w->nested_code},
            {state_suffix[w->type], ST_U8, 1, json ? (int64_t)strlen(json) : 0, 0, json},
        };
        owned[n_owned++] = json;
        if (!json) { rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "%s: out of memory", path); break; }
        for (int p = 0; p < 6 && !rc; p++) {
            if (!w->nested && (p == 3 || p == 4)) continue;
            char *full = malloc(BNB_NAME_MAX);
            owned[n_owned++] = full;
            if (!full) { rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "%s: out of memory", path); break; }
            if (parts[p].suffix) rc = name_join(full, name, parts[p].suffix);
            else snprintf(full, BNB_NAME_MAX, "%s", name);
            e[n] = (st_entry){.name = full, .dtype = parts[p].dtype, .ndim = parts[p].ndim, .shape = {parts[p].d0, parts[p].d1},
                              .data = parts[p].data};
            n++;
        }
    }
    for (int i = 0; i < n_extra && !rc; i++) e[n++] = extra[i];
    static const char *const meta[] = {"format", "pt", NULL};
    if (!rc) rc = st_write(path, e, n, meta);
    for (int i = 0; i < n_owned; i++) free(owned[i]);
    free(owned);
    free(maps);
    free(e);
    return rc;
}
