/* finch_model_save_4bit: the base model with its 4-bit decoder weights as a bitsandbytes 4-bit
 * checkpoint folder — config.json (the loaded one plus quantization_config) and model.safetensors
 * (each 4-bit weight in bnb's schema, core/bnb_checkpoint.h; everything else dense in the model's
 * storage dtype, in the checkpoint's names and row order). */
#include "core/bnb_checkpoint.h"
#include "core/error.h"
#include "core/files.h"
#include "core/fsutil.h"
#include "core/half.h"
#include "core/model_quant.h"
#include "core/model_weights.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The loaded model's config.json with quantization_config describing the saved weights. */
static int write_config(const finch_model *m, const char *dir, const nf4_weight *first)
{
    char src[1200], dst[4200];
    snprintf(src, sizeof src, "%s/config.json", m->dir);
    snprintf(dst, sizeof dst, "%s/config.json", dir);
    char *text = NULL;
    int rc = finch_read_file(src, &text, NULL);
    if (rc) return rc;
    cJSON *root = cJSON_Parse(text);
    free(text);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return finch_error(FINCH_ERR_FORMAT, "%s: not a JSON object", src);
    }
    bnb_config c;
    memset(&c, 0, sizeof c);
    c.quantized = 1;
    c.quant_type = first->type;
    c.double_quant = first->nested;
    c.compute_dtype = m->dtype;
    snprintf(c.quant_storage, sizeof c.quant_storage, "uint8");
    rc = bnb_config_add_to_json(&c, root);
    char *out = rc ? NULL : cJSON_Print(root);
    cJSON_Delete(root);
    if (rc) return rc;
    if (!out) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of memory");
    rc = finch_write_text_atomic(dst, out);
    free(out);
    return rc;
}

/* Tensor t in its storage dtype (bf16 stays bf16; everything else f32) into a new buffer. */
static int dense_entry(const finch_model *m, const finch_model_tensor *t, st_entry *e, void **owned)
{
    float *v = malloc((size_t)t->numel * sizeof(float) + 1);
    *owned = v;
    if (!v) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory saving '%s'", t->name);
    int rc = finch_model_tensor_f32(m, t, 0, v);
    if (rc) return rc;
    memset(e, 0, sizeof *e);
    e->name = t->name;
    e->ndim = t->ndim;
    e->shape[0] = t->shape[0];
    e->shape[1] = t->shape[1];
    e->dtype = ST_F32;
    e->data = v;
    if (t->param->dtype == FINCH_DTYPE_BF16) { /* in place: the bf16 halves fit in the f32 array */
        uint16_t *h = (uint16_t *)v;
        for (int64_t i = 0; i < t->numel; i++) h[i] = finch_f32_to_bf16(v[i]);
        e->dtype = ST_BF16;
    }
    return FINCH_OK;
}

finch_status finch_model_save_4bit(const finch_model *m, const char *dir)
{
    if (!m || !dir) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_model_save_4bit: NULL argument");
    int n_quant = 0;
    for (int i = 0; i < m->n_linears; i++) n_quant += m->linears[i]->quant != NULL;
    if (!n_quant)
        return finch_error(FINCH_ERR_STATE, "finch_model_save_4bit: the model has no 4-bit weights (load it with load_in_4bit)");
    finch_model_tensor *t = NULL;
    int n = 0, rc = finch_mkdirs(dir);
    if (!rc) rc = finch_model_tensors(m, &t, &n);
    if (rc) return rc;
    nf4_weight *w = calloc((size_t)n, sizeof *w);
    bnb_named_weight *nw = calloc((size_t)n, sizeof *nw);
    st_entry *dense = calloc((size_t)n, sizeof *dense);
    void **owned = calloc((size_t)n, sizeof *owned);
    int n_w = 0, n_d = 0;
    if (!w || !nw || !dense || !owned) rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    for (int i = 0; !rc && i < n; i++) {
        if (t[i].kind == FINCH_WEIGHT_LINEAR && t[i].lin->quant) {
            rc = finch_quant_download(m, t[i].lin, &w[n_w]);
            nw[n_w].name = t[i].name;
            nw[n_w].w = &w[n_w];
            n_w++;
        } else {
            rc = dense_entry(m, &t[i], &dense[n_d], &owned[n_d]);
            n_d++;
        }
    }
    char path[4200];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (!rc) rc = bnb_write(path, nw, n_w, dense, n_d);
    if (!rc) rc = write_config(m, dir, &w[0]);
    for (int i = 0; w && i < n_w; i++) nf4_weight_free(&w[i]);
    for (int i = 0; owned && i < n_d; i++) free(owned[i]);
    free(w);
    free(nw);
    free(dense);
    free(owned);
    free(t);
    return rc;
}
