/* finch_model_save_4bit: the base model with its 4-bit decoder weights as a bitsandbytes 4-bit
 * checkpoint folder — config.json (the loaded one plus quantization_config) and model.safetensors
 * (each 4-bit weight in bnb's schema, core/bnb_checkpoint.h; everything else dense in the model's
 * storage dtype, in the checkpoint's names and row order). */
#include "core/bnb_checkpoint.h"
#include "core/error.h"
#include "core/half.h"
#include "core/model_quant.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int make_dirs(const char *dir)
{
    char p[4096];
    snprintf(p, sizeof p, "%s", dir);
    for (char *s = p + 1;; s++) {
        if (*s == '/' || *s == 0) {
            char c = *s;
            *s = 0;
            if (mkdir(p, 0755) && errno != EEXIST) return finch_error(FINCH_ERR_IO, "cannot create directory %s: %s", p, strerror(errno));
            *s = c;
            if (!c) break;
        }
    }
    return FINCH_OK;
}

/* The loaded model's config.json with quantization_config describing the saved weights. */
static int write_config(const finch_model *m, const char *dir, const nf4_weight *first)
{
    char src[1200], dst[4200], tmp[4300];
    snprintf(src, sizeof src, "%s/config.json", m->dir);
    snprintf(dst, sizeof dst, "%s/config.json", dir);
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", dst, (long)getpid());
    FILE *f = fopen(src, "rb");
    if (!f) return finch_error(FINCH_ERR_IO, "%s: cannot open: %s", src, strerror(errno));
    char *text = NULL;
    size_t len = 0;
    for (size_t cap = 0;;) {
        if (len + 4096 > cap) {
            char *t = realloc(text, cap = cap ? 2 * cap : 65536);
            if (!t) break;
            text = t;
        }
        size_t got = fread(text + len, 1, 4096, f);
        len += got;
        if (got < 4096) break;
    }
    fclose(f);
    cJSON *root = text ? cJSON_ParseWithLength(text, len) : NULL;
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
    int rc = bnb_config_add_to_json(&c, root);
    char *out = rc ? NULL : cJSON_Print(root);
    cJSON_Delete(root);
    if (rc) return rc;
    if (!out) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of memory");
    f = fopen(tmp, "wb");
    int ok = f && fwrite(out, 1, strlen(out), f) == strlen(out) && fputc('\n', f) != EOF;
    if (f) ok = (fclose(f) == 0) && ok;
    free(out);
    if (!ok || rename(tmp, dst)) {
        int e = errno;
        remove(tmp);
        return finch_error(FINCH_ERR_IO, "cannot write %s: %s", dst, strerror(e));
    }
    return FINCH_OK;
}

typedef struct dense_list {
    st_entry *e;
    void **data;
    int n, cap;
} dense_list;

/* Appends parameter p (if present) as a dense tensor in its storage dtype and checkpoint row order. */
static int add_dense(const finch_model *m, dense_list *l, const finch_param *p, const int32_t *perm)
{
    if (!p->data.buf) return FINCH_OK;
    if (l->n == l->cap) return finch_error(FINCH_ERR_STATE, "finch_model_save_4bit: more dense tensors than counted");
    int64_t rows = p->shape[0], cols = p->numel / (rows ? rows : 1);
    float *v = malloc((size_t)p->numel * sizeof(float) + 1);
    if (!v) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory saving '%s'", p->name);
    l->data[l->n] = v;
    int rc = finch_model_download_f32(m, p->data, p->dtype, rows, cols, perm, v);
    if (rc) return rc;
    st_entry *e = &l->e[l->n++];
    memset(e, 0, sizeof *e);
    e->name = p->name;
    e->ndim = p->ndim;
    e->shape[0] = p->shape[0];
    e->shape[1] = p->shape[1];
    e->dtype = ST_F32;
    e->data = v;
    if (p->dtype == FINCH_DTYPE_BF16) { /* in place: the bf16 halves fit in the f32 array */
        uint16_t *h = (uint16_t *)v;
        for (int64_t i = 0; i < p->numel; i++) h[i] = finch_f32_to_bf16(v[i]);
        e->dtype = ST_BF16;
    }
    return FINCH_OK;
}

static int collect_dense(const finch_model *m, dense_list *l)
{
    int rc = add_dense(m, l, &m->embed, NULL);
    for (int64_t i = 0; !rc && i < m->cfg.n_layers; i++) {
        const finch_layer *ly = &m->layers[i];
        const finch_param *norms[] = {&ly->attn_norm, &ly->attn_norm_b, &ly->mlp_norm, &ly->mlp_norm_b,
                                      &ly->post_attn_norm, &ly->post_ffn_norm, &ly->q_norm, &ly->k_norm};
        for (size_t k = 0; !rc && k < sizeof norms / sizeof norms[0]; k++) rc = add_dense(m, l, norms[k], NULL);
        for (int k = 0; !rc && k < ly->n_linears; k++) {
            const finch_linear_module *lin = ly->linears[k];
            if (!lin->quant) rc = add_dense(m, l, &lin->weight, lin->row_perm);
            if (!rc) rc = add_dense(m, l, &lin->bias, lin->row_perm);
        }
    }
    if (!rc) rc = add_dense(m, l, &m->final_norm, NULL);
    if (!rc) rc = add_dense(m, l, &m->final_norm_b, NULL);
    if (!rc && !m->tied) rc = add_dense(m, l, &m->lm_head_own, NULL);
    return rc;
}

finch_status finch_model_save_4bit(const finch_model *m, const char *dir)
{
    if (!m || !dir) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_model_save_4bit: NULL argument");
    int n_quant = 0;
    for (int i = 0; i < m->n_linears; i++) n_quant += m->linears[i]->quant != NULL;
    if (!n_quant)
        return finch_error(FINCH_ERR_STATE, "finch_model_save_4bit: the model has no 4-bit weights (load it with load_in_4bit)");
    int rc = make_dirs(dir);
    if (rc) return rc;
    nf4_weight *w = calloc((size_t)n_quant, sizeof *w);
    bnb_named_weight *nw = calloc((size_t)n_quant, sizeof *nw);
    dense_list l = {NULL, NULL, 0, 4 + (int)m->cfg.n_layers * 8 + 2 * m->n_linears};
    l.e = calloc((size_t)l.cap, sizeof *l.e);
    l.data = calloc((size_t)l.cap, sizeof *l.data);
    if (!w || !nw || !l.e || !l.data) rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    for (int i = 0, k = 0; !rc && i < m->n_linears; i++) {
        const finch_linear_module *lin = m->linears[i];
        if (!lin->quant) continue;
        rc = finch_quant_download(m, lin, &w[k]);
        nw[k].name = lin->weight.name;
        nw[k].w = &w[k];
        k++;
    }
    if (!rc) rc = collect_dense(m, &l);
    char path[4200];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (!rc) rc = bnb_write(path, nw, n_quant, l.e, l.n);
    if (!rc) rc = write_config(m, dir, &w[0]);
    for (int i = 0; w && i < n_quant; i++) nf4_weight_free(&w[i]);
    for (int i = 0; l.data && i < l.cap; i++) free(l.data[i]);
    free(w);
    free(nw);
    free(l.e);
    free(l.data);
    return rc;
}
