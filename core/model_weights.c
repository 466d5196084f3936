#include "core/model_weights.h"
#include "core/error.h"
#include "core/half.h"
#include "core/model_quant.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static int add_tensor(finch_model_tensor **list, int *n, int *cap, finch_weight_kind kind, const finch_param *p,
                      const finch_linear_module *lin, int on_host)
{
    if (!finch_dptr_present(p->data) && !on_host) return FINCH_OK;
    if (*n == *cap) {
        int nc = *cap ? 2 * *cap : 64;
        finch_model_tensor *q = realloc(*list, (size_t)nc * sizeof *q);
        if (!q) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
        *list = q;
        *cap = nc;
    }
    finch_model_tensor *t = &(*list)[(*n)++];
    t->name = p->name;
    t->kind = kind;
    t->param = p;
    t->lin = lin;
    t->ndim = p->ndim;
    t->shape[0] = p->shape[0];
    t->shape[1] = p->ndim > 1 ? p->shape[1] : 1;
    t->numel = p->numel;
    return FINCH_OK;
}

int finch_model_tensors(const finch_model *m, finch_model_tensor **out, int *n_out)
{
    finch_model_tensor *list = NULL;
    int n = 0, cap = 0, rc = add_tensor(&list, &n, &cap, FINCH_WEIGHT_PARAM, &m->embed, NULL, m->embed_host != NULL);
    for (int64_t l = 0; !rc && l < m->cfg.n_layers; l++) {
        const finch_layer *ly = &m->layers[l];
        const finch_param *norms[] = {&ly->attn_norm, &ly->attn_norm_b, &ly->mlp_norm, &ly->mlp_norm_b,
                                      &ly->post_attn_norm, &ly->post_ffn_norm, &ly->q_norm, &ly->k_norm};
        for (size_t i = 0; !rc && i < sizeof norms / sizeof norms[0]; i++)
            rc = add_tensor(&list, &n, &cap, FINCH_WEIGHT_PARAM, norms[i], NULL, 0);
        for (int i = 0; !rc && i < ly->n_linears; i++) {
            const finch_linear_module *lin = ly->linears[i];
            rc = add_tensor(&list, &n, &cap, FINCH_WEIGHT_LINEAR, &lin->weight, lin, 0);
            if (!rc) rc = add_tensor(&list, &n, &cap, FINCH_WEIGHT_LINEAR_BIAS, &lin->bias, lin, 0);
        }
    }
    if (!rc) rc = add_tensor(&list, &n, &cap, FINCH_WEIGHT_PARAM, &m->final_norm, NULL, 0);
    if (!rc) rc = add_tensor(&list, &n, &cap, FINCH_WEIGHT_PARAM, &m->final_norm_b, NULL, 0);
    if (!rc && !m->tied) rc = add_tensor(&list, &n, &cap, FINCH_WEIGHT_PARAM, &m->lm_head_own, NULL, 0);
    if (rc) {
        free(list);
        return rc;
    }
    *out = list;
    *n_out = n;
    return FINCH_OK;
}

static int read_param(const finch_model *m, const finch_param *p, const int32_t *perm, float *dst)
{
    if (p->dtype != FINCH_DTYPE_F32 && p->dtype != FINCH_DTYPE_BF16 && p->dtype != FINCH_DTYPE_F16)
        return finch_error(FINCH_ERR_UNSUPPORTED, "reading tensor '%s': weights stored as %s cannot be read back", p->name,
                           finch_dtype_name(p->dtype));
    const unsigned char *host = finch_model_param_host(m, p);
    if (host) {   /* a host-resident table (rows in checkpoint order: never permuted) */
        size_t es = finch_dtype_size(p->dtype);
        for (int64_t i = 0; i < p->numel; i++) {
            uint16_t h;
            if (p->dtype == FINCH_DTYPE_F32) memcpy(&dst[i], host + (size_t)i * es, 4);
            else memcpy(&h, host + (size_t)i * es, 2), dst[i] = p->dtype == FINCH_DTYPE_BF16 ? finch_bf16_to_f32(h) : finch_f16_to_f32(h);
        }
        return FINCH_OK;
    }
    int rc = finch_model_download_f32(m, p->data, p->dtype, p->shape[0], p->ndim > 1 ? p->shape[1] : 1, perm, dst);
    return rc ? finch_error_prefix(rc, "reading tensor '%s': ", p->name) : FINCH_OK;
}

int finch_linear_weight_f32(const finch_model *m, const finch_linear_module *lin, float *dst)
{
    if (lin->quant) return finch_quant_dequantize(m, lin, dst);   /* 4-bit: deq(W) */
    return read_param(m, &lin->weight, lin->row_perm, dst);
}

int finch_lora_factors_f32(const finch_model *m, const finch_linear_module *lin, float *a, float *b)
{
    if (!lin->rank) return finch_error(FINCH_ERR_STATE, "%s has no adapter", lin->path);
    int rc = read_param(m, &lin->lora_a, NULL, a);
    return rc ? rc : read_param(m, &lin->lora_b, lin->row_perm, b);
}

int finch_linear_merged_f32(const finch_model *m, const finch_linear_module *lin, float *dst)
{
    int rc = finch_linear_weight_f32(m, lin, dst);
    if (rc || !lin->rank) return rc;
    int64_t out = lin->out_features, in = lin->in_features, r = lin->rank;
    float *a = malloc((size_t)(r * in) * sizeof(float)), *b = malloc((size_t)(out * r) * sizeof(float));
    if (!a || !b) rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory merging %s", lin->path);
    if (!rc) rc = finch_lora_factors_f32(m, lin, a, b);
    if (!rc) {
        const float s = lin->scale;
        int64_t bad = -1;
#pragma omp parallel for schedule(static)
        for (int64_t o = 0; o < out; o++) {
            float *w = dst + o * in;
            for (int64_t k = 0; k < r; k++) {
                const float c = s * b[o * r + k];
                const float *ak = a + k * in;
                for (int64_t i = 0; i < in; i++) w[i] += c * ak[i];
            }
            for (int64_t i = 0; i < in; i++)
                if (!isfinite(w[i])) {
#pragma omp critical
                    if (bad < 0 || o * in + i < bad) bad = o * in + i;
                    break;
                }
        }
        if (bad >= 0)
            rc = finch_error(FINCH_ERR_FORMAT, "merging the adapter into %s gives a non-finite value at [%lld, %lld]",
                             lin->weight.name, (long long)(bad / in), (long long)(bad % in));
    }
    free(a);
    free(b);
    return rc;
}

int finch_model_tensor_f32(const finch_model *m, const finch_model_tensor *t, int merge, float *dst)
{
    switch (t->kind) {
    case FINCH_WEIGHT_LINEAR:
        return merge ? finch_linear_merged_f32(m, t->lin, dst) : finch_linear_weight_f32(m, t->lin, dst);
    case FINCH_WEIGHT_LINEAR_BIAS:
        return read_param(m, t->param, t->lin->row_perm, dst);
    default:
        return read_param(m, t->param, NULL, dst);
    }
}
