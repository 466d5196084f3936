/* finch_gguf_verify: read a GGUF back, undo the export's transforms, check every tensor against the
 * model's (merged) weights, then rebuild a model from the file and compare logits with the original.
 *
 * The rebuilt model goes through the ordinary loaders: the tensors are written (f32, one safetensors
 * file per tensor so memory stays one tensor deep) with an index into a scratch folder beside the
 * file, loaded with finch_model_load (an adapter: the base from the model's folder plus
 * finch_lora_load of a PEFT folder made from the file), and run with finch_forward. */
#include "core/error.h"
#include "core/files.h"
#include "core/gguf_model.h"
#include "core/safetensors.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define VERIFY_TOKENS 24

typedef struct type_sums {
    int type, tensors;
    double diff2, ref2;
} type_sums;

static void add_sums(type_sums *s, int *n, int type, const float *a, const float *ref, int64_t count)
{
    int i = 0;
    while (i < *n && s[i].type != type) i++;
    if (i == *n) {
        if (*n == 8) return;
        memset(&s[i], 0, sizeof s[i]);
        s[i].type = type;
        (*n)++;
    }
    s[i].tensors++;
    for (int64_t k = 0; k < count; k++) {
        double d = (double)a[k] - ref[k];
        s[i].diff2 += d * d;
        s[i].ref2 += (double)ref[k] * ref[k];
    }
}

/* Writes one f32 tensor as dir/t<index>.safetensors and records it in the weight map. */
static int write_one(const char *dir, int index, const char *name, int ndim, int64_t rows, int64_t cols, const float *data, cJSON *map)
{
    char file[64], path[8400];
    snprintf(file, sizeof file, "t%05d.safetensors", index);
    snprintf(path, sizeof path, "%s/%s", dir, file);
    st_entry e = {name, ST_F32, ndim, {rows, cols}, data};
    if (ndim == 1) e.shape[0] = rows * cols;
    int rc = st_write(path, &e, 1, NULL);
    if (!rc && !cJSON_AddStringToObject(map, name, file)) rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    return rc;
}

static int write_json(const char *path, const cJSON *j)
{
    char *text = cJSON_Print(j);
    if (!text) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    int rc = finch_write_text_atomic(path, text);
    cJSON_free(text);
    return rc;
}

static int logits_of(finch_model *m, const int32_t *ids, float *out, size_t n)
{
    finch_batch b = {.batch = 1, .seq_len = VERIFY_TOKENS, .input_ids = ids};
    finch_step_options so = {1, 0};
    finch_step_result r;
    int rc = finch_forward(m, &b, &so, &r);
    if (!rc) rc = finch_model_logits(m, out, n);
    return rc;
}

/* Logits of m and of other on a fixed pseudo-random sequence: relative error, largest difference and
 * how many positions agree on the most likely token. */
static int compare_logits(finch_model *m, finch_model *other, finch_export_report *out)
{
    int64_t V = m->cfg.vocab;
    size_t nl = (size_t)(VERIFY_TOKENS * V);
    int32_t ids[VERIFY_TOKENS];
    uint64_t s = 0x9e3779b97f4a7c15ull;
    for (int i = 0; i < VERIFY_TOKENS; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        ids[i] = (int32_t)((s >> 33) % (uint64_t)V);
    }
    float *ref = malloc(nl * sizeof(float)), *got = malloc(nl * sizeof(float));
    int rc = ref && got ? FINCH_OK : finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    if (!rc && other->cfg.vocab != V) rc = finch_error(FINCH_ERR_FORMAT, "the rebuilt model has %lld tokens, not %lld", (long long)other->cfg.vocab, (long long)V);
    if (!rc) rc = logits_of(m, ids, ref, nl);
    if (!rc) rc = logits_of(other, ids, got, nl);
    if (!rc) {
        double d2 = 0, r2 = 0, mx = 0;
        for (size_t i = 0; i < nl; i++) {
            double d = (double)got[i] - ref[i];
            d2 += d * d;
            r2 += (double)ref[i] * ref[i];
            if (fabs(d) > mx) mx = fabs(d);
        }
        out->logits_rel_err = r2 > 0 ? sqrt(d2 / r2) : sqrt(d2);
        out->logits_max_abs = mx;
        out->positions = VERIFY_TOKENS;
        out->argmax_agree = 0;
        for (int t = 0; t < VERIFY_TOKENS; t++) {
            const float *a = ref + (size_t)t * (size_t)V, *b = got + (size_t)t * (size_t)V;
            int64_t ia = 0, ib = 0;
            for (int64_t v = 1; v < V; v++) {
                if (a[v] > a[ia]) ia = v;
                if (b[v] > b[ib]) ib = v;
            }
            out->argmax_agree += ia == ib;
        }
    }
    free(ref);
    free(got);
    return rc;
}

finch_status finch_merged_verify(finch_model *m, const char *dir, finch_export_report *out)
{
    if (!m || !dir || !out) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_merged_verify: NULL argument");
    memset(out, 0, sizeof *out);
    finch_load_options lo = finch_load_options_default();
    lo.compute_dtype = m->dtype;
    finch_model *merged = NULL;
    int rc = finch_model_load(m->rt, dir, &lo, &merged);
    if (!rc) rc = compare_logits(m, merged, out);
    finch_model_free(merged);
    return rc ? finch_error_prefix(rc, "verifying %s: ", dir) : FINCH_OK;
}

/* The PEFT adapter_config.json for the tensors of an adapter file. */
static cJSON *adapter_config(const gguf_plan *p, int64_t rank, float alpha)
{
    cJSON *c = cJSON_CreateObject(), *tm = cJSON_AddArrayToObject(c, "target_modules");
    if (!tm) {
        cJSON_Delete(c);
        return NULL;
    }
    cJSON_AddStringToObject(c, "peft_type", "LORA");
    cJSON_AddNumberToObject(c, "r", (double)rank);
    cJSON_AddNumberToObject(c, "lora_alpha", alpha);
    cJSON_AddStringToObject(c, "bias", "none");
    for (int i = 0; i < p->n; i++)
        if (p->t[i].part == GGUF_PART_LORA_A) cJSON_AddItemToArray(tm, cJSON_CreateString(p->t[i].src->lin->path));
    return c;
}

/* Reads path, fills out's weight errors and builds the model the file describes. */
static int rebuild(finch_model *m, const char *path, finch_export_report *out, finch_model **rebuilt_out)
{
    *rebuilt_out = NULL;
    memset(out, 0, sizeof *out);
    gguf_file *f = NULL;
    int rc = gguf_open(path, &f);
    if (rc) return rc;
    const char *gtype = NULL;
    size_t gtype_len = 0;
    int is_adapter = !gguf_get_str(f, "general.type", &gtype, &gtype_len) && gtype_len == 7 && !strncmp(gtype, "adapter", 7);
    gguf_plan plan = {0};
    rc = is_adapter ? gguf_plan_adapter(m, FINCH_GGUF_F32, &plan) : gguf_plan_model(m, FINCH_GGUF_F32, &plan);
    if (rc) {
        gguf_close(f);
        return rc;
    }
    out->is_adapter = is_adapter;

    char dir[4200];
    snprintf(dir, sizeof dir, "%s.verify.%ld", path, (long)getpid());
    cJSON *index = cJSON_CreateObject(), *map = index ? cJSON_AddObjectToObject(index, "weight_map") : NULL;
    type_sums sums[8];
    int n_sums = 0;
    finch_model *rebuilt = NULL;
    int64_t rank = 0;
    if (!map) rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    if (!rc) rc = finch_mkdirs(dir);
    if (!rc && gguf_tensor_count(f) != plan.n)
        rc = finch_error(FINCH_ERR_FORMAT, "%s holds %d tensors, the export of this model has %d", path, gguf_tensor_count(f), plan.n);
    for (int i = 0; !rc && i < plan.n; i++) {
        const gguf_plan_tensor *t = &plan.t[i];
        const gguf_tensor *g = gguf_find_tensor(f, t->name);
        int64_t n = t->rows * t->cols;
        if (!g) {
            rc = finch_error(FINCH_ERR_FORMAT, "%s: tensor '%s' is missing", path, t->name);
            break;
        }
        int64_t want0 = t->n_dims == 1 ? t->rows : t->cols;
        if (g->n_dims != t->n_dims || g->ne[0] != want0 || (t->n_dims == 2 && g->ne[1] != t->rows)) {
            rc = finch_error(FINCH_ERR_FORMAT, "%s: tensor '%s' has ne [%lld, %lld], expected [%lld, %lld]", path, t->name,
                             (long long)g->ne[0], (long long)g->ne[1], (long long)want0, (long long)(t->n_dims == 2 ? t->rows : 1));
            break;
        }
        float *stored = malloc((size_t)n * sizeof(float) + 1), *mine = malloc((size_t)n * sizeof(float) + 1);
        float *back = malloc((size_t)n * sizeof(float) + 1);
        if (!stored || !mine || !back) rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
        if (!rc) rc = gguf_tensor_f32(g, stored);
        if (!rc) rc = gguf_plan_values(m, t, mine);
        if (!rc) {
            add_sums(sums, &n_sums, g->type, stored, mine, n);
            gguf_plan_unapply(t, stored, back);
            if (t->part == GGUF_PART_LORA_A && !rank) rank = t->rows;
            if (t->src) {
                char name[256];
                const char *hf = t->src->name;
                if (t->part != GGUF_PART_WEIGHT) {
                    snprintf(name, sizeof name, "base_model.model.%s.lora_%s.weight", t->src->lin->path, t->part == GGUF_PART_LORA_A ? "A" : "B");
                    hf = name;
                }
                rc = write_one(dir, i, hf, t->n_dims, t->rows, t->cols, back, map);
            }
        }
        free(stored);
        free(mine);
        free(back);
    }
    for (int i = 0; i < n_sums; i++) {
        finch_gguf_type_error *e = &out->types[out->n_types++];
        snprintf(e->type, sizeof e->type, "%s", gguf_type_name(sums[i].type));
        e->tensors = sums[i].tensors;
        e->rel_err = sums[i].ref2 > 0 ? sqrt(sums[i].diff2 / sums[i].ref2) : sqrt(sums[i].diff2);
    }

    /* the model the file describes */
    char p2[4400], p3[4400];
    finch_load_options lo = finch_load_options_default();
    lo.compute_dtype = m->dtype;
    if (!rc && !is_adapter) {
        snprintf(p2, sizeof p2, "%s/model.safetensors.index.json", dir);
        snprintf(p3, sizeof p3, "%s/config.json", m->dir);
        char p4[4400];
        snprintf(p4, sizeof p4, "%s/config.json", dir);
        int copied;
        if (!(rc = write_json(p2, index)) && !(rc = finch_copy_file_atomic(p3, p4, &copied)))
            rc = finch_model_load(m->rt, dir, &lo, &rebuilt);
    } else if (!rc) {
        float alpha = 0;
        cJSON *cfg = NULL;
        if (!(rc = gguf_get_f32(f, "adapter.lora.alpha", &alpha)) && !(cfg = adapter_config(&plan, rank, alpha)))
            rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
        /* one file for the adapter: PEFT folders hold adapter_model.safetensors */
        st_entry *e = NULL;
        float **bufs = NULL;
        int ne = 0;
        if (!rc) {
            e = calloc((size_t)plan.n + 1, sizeof *e);
            bufs = calloc((size_t)plan.n + 1, sizeof *bufs);
            if (!e || !bufs) rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
        }
        for (const cJSON *it = map ? map->child : NULL; !rc && it; it = it->next, ne++) {
            snprintf(p2, sizeof p2, "%s/%s", dir, it->valuestring);
            st_file *sf = NULL;
            if ((rc = st_open(p2, &sf))) break;
            const st_tensor *st = st_at(sf, 0);
            bufs[ne] = malloc((size_t)st->numel * sizeof(float) + 1);
            if (!bufs[ne]) rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
            else rc = st_to_f32(st, bufs[ne]);
            e[ne].name = it->string;
            e[ne].dtype = ST_F32;
            e[ne].ndim = st->ndim;
            memcpy(e[ne].shape, st->shape, sizeof e[ne].shape);
            e[ne].data = bufs[ne];
            st_close(sf);
        }
        snprintf(p2, sizeof p2, "%s/adapter_model.safetensors", dir);
        snprintf(p3, sizeof p3, "%s/adapter_config.json", dir);
        if (!rc && !(rc = st_write(p2, e, ne, NULL)) && !(rc = write_json(p3, cfg)) && !(rc = finch_model_load(m->rt, m->dir, &lo, &rebuilt)))
            rc = finch_lora_load(rebuilt, dir);
        for (int i = 0; bufs && i < ne; i++) free(bufs[i]);
        free(bufs);
        free(e);
        cJSON_Delete(cfg);
    }
    if (rc) finch_model_free(rebuilt);
    else *rebuilt_out = rebuilt;
    finch_remove_tree(dir);
    cJSON_Delete(index);
    gguf_plan_free(&plan);
    gguf_close(f);
    return rc;
}

finch_status finch_gguf_verify(finch_model *m, const char *path, finch_export_report *out)
{
    if (!m || !path || !out) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_gguf_verify: NULL argument");
    finch_model *rebuilt = NULL;
    int rc = rebuild(m, path, out, &rebuilt);
    if (!rc) rc = compare_logits(m, rebuilt, out);
    finch_model_free(rebuilt);
    return rc ? finch_error_prefix(rc, "verifying %s: ", path) : FINCH_OK;
}

finch_status finch_gguf_rebuild(finch_model *m, const char *path, finch_model **out)
{
    if (!out) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_gguf_rebuild: NULL argument");
    *out = NULL;
    if (!m || !path) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_gguf_rebuild: NULL argument");
    finch_export_report unused;
    int rc = rebuild(m, path, &unused, out);
    return rc ? finch_error_prefix(rc, "loading %s: ", path) : FINCH_OK;
}
