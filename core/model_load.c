#include "core/error.h"
#include "core/half.h"
#include "core/model.h"
#include "core/model_quant.h"
#include "core/safetensors.h"
#include "core/model_vl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

finch_load_options finch_load_options_default(void)
{
    finch_load_options o;
    memset(&o, 0, sizeof o);
    o.compute_dtype = FINCH_DTYPE_F32;
    o.quant_type = FINCH_QUANT_NF4;
    o.quant_blocksize = 64;
    return o;
}

/* ---- parameters ------------------------------------------------------------------------------ */

static int device_alloc(finch_model *m, size_t bytes, finch_dptr *out, const char *what)
{
    out->offset = 0;
    return finch_devmem_alloc(&m->mem, bytes, what, &out->buf);
}

int finch_param_alloc(finch_model *m, finch_param *p, finch_dtype dtype, int ndim, int64_t d0, int64_t d1)
{
    p->dtype = dtype;
    p->ndim = ndim;
    p->shape[0] = d0;
    p->shape[1] = ndim > 1 ? d1 : 1;
    p->numel = d0 * (ndim > 1 ? d1 : 1);
    return device_alloc(m, (size_t)p->numel * finch_dtype_size(dtype), &p->data, p->name);
}

/* The gradients share one buffer so that clearing them before a step is one fill, not one per
 * tensor (an 8B model's LoRA has 448); each starts at a 256-byte boundary, as the GEMMs that
 * accumulate into them like. */
#define GRAD_ALIGN 256

static size_t grad_slice_bytes(const finch_param *p)
{
    return ((size_t)p->numel * sizeof(float) + GRAD_ALIGN - 1) / GRAD_ALIGN * GRAD_ALIGN;
}

int finch_model_alloc_grads(finch_model *m)
{
    finch_model_release_grads(m);
    size_t bytes = 0;
    for (int i = 0; i < m->n_trainables; i++) bytes += grad_slice_bytes(m->trainables[i].param);
    if (!bytes) return FINCH_OK;
    int rc = finch_devmem_alloc(&m->mem, bytes, "gradients", &m->grad_arena);
    if (rc) return rc;
    m->grad_arena_bytes = bytes;
    size_t at = 0;
    for (int i = 0; i < m->n_trainables; i++) {
        finch_param *p = m->trainables[i].param;
        p->grad.buf = m->grad_arena;
        p->grad.offset = at;
        at += grad_slice_bytes(p);
    }
    return finch_zero_grads(m);
}

static void drop_ref(finch_plugin_buffer **ref, void *buf)
{
    if (*ref == buf) *ref = NULL;
}

void finch_model_release_grads(finch_model *m)
{
    finch_plugin_buffer *arena = m->grad_arena;
    if (!arena) return;
    finch_model_visit_devrefs(m, drop_ref, arena); /* every gradient's pointer, and grad_arena itself */
    finch_devmem_free(&m->mem, arena);
    m->grad_arena_bytes = 0;
}

void finch_param_release(finch_model *m, finch_param *p)
{
    finch_devmem_free(&m->mem, p->data.buf);
    if (p->grad.buf != m->grad_arena) finch_devmem_free(&m->mem, p->grad.buf);
    p->data = p->grad = finch_dptr_none();
}

/* ---- host <-> device with conversion and row order ------------------------------------------ */

/* Copies rows x row_elems elements of src_type to the device as dst_type; with perm, device row r
 * receives source row perm[r]. Conversion runs on the device (the plugin's cast). */
static int upload_rows(finch_model *m, const void *src, finch_dtype src_type, int64_t rows, int64_t row_elems,
                       const int32_t *perm, finch_dtype dst_type, finch_dptr dst)
{
    const finch_plugin_api *api = m->be->api;
    size_t row_bytes = (size_t)row_elems * finch_dtype_size(src_type), bytes = row_bytes * (size_t)rows;
    unsigned char *ordered = NULL;
    if (perm) {
        ordered = malloc(bytes ? bytes : 1);
        if (!ordered) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
        for (int64_t r = 0; r < rows; r++)
            memcpy(ordered + (size_t)r * row_bytes, (const unsigned char *)src + (size_t)perm[r] * row_bytes, row_bytes);
        src = ordered;
    }
    int rc = FINCH_OK;
    if (src_type == dst_type) {
        if (api->write(m->be->dev, m->be->stream, dst, src, bytes)) rc = finch_device_error(m->be, FINCH_ERR_DEVICE, "upload");
    } else {
        finch_dptr staging;
        rc = device_alloc(m, bytes, &staging, "a conversion buffer");
        if (!rc) {
            if (api->write(m->be->dev, m->be->stream, staging, src, bytes) ||
                api->cast(m->be->dev, m->be->stream, rows * row_elems, src_type, staging, dst_type, dst))
                rc = finch_device_error(m->be, FINCH_ERR_DEVICE, "upload with conversion");
            else if (api->synchronize(m->be->dev, m->be->stream))
                rc = finch_device_error(m->be, FINCH_ERR_DEVICE, "synchronize");
            finch_devmem_free(&m->mem, staging.buf);
        }
    }
    free(ordered);
    return rc;
}

int finch_model_upload_f32(finch_model *m, const float *src, int64_t rows, int64_t row_elems, const int32_t *perm,
                           finch_dtype dtype, finch_dptr dst)
{
    return upload_rows(m, src, FINCH_DTYPE_F32, rows, row_elems, perm, dtype, dst);
}

int finch_model_download_f32(const finch_model *m, finch_dptr src, finch_dtype dtype, int64_t rows, int64_t row_elems,
                             const int32_t *perm, float *dst)
{
    const finch_plugin_api *api = m->be->api;
    int64_t n = rows * row_elems;
    size_t bytes = (size_t)n * sizeof(float);
    float *tmp = perm ? malloc(bytes ? bytes : 1) : dst;
    if (!tmp) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    int rc = FINCH_OK;
    if (dtype == FINCH_DTYPE_F32) {
        if (api->read(m->be->dev, m->be->stream, src, tmp, bytes)) rc = finch_device_error(m->be, FINCH_ERR_DEVICE, "download");
    } else {
        finch_plugin_buffer *buf = NULL;
        if (api->alloc(m->be->dev, bytes ? bytes : 1, &buf)) {
            rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "cannot allocate %zu bytes on the %s device", bytes, m->be->name);
        } else {
            finch_dptr staging = {buf, 0};
            if (api->cast(m->be->dev, m->be->stream, n, dtype, src, FINCH_DTYPE_F32, staging) ||
                api->read(m->be->dev, m->be->stream, staging, tmp, bytes))
                rc = finch_device_error(m->be, FINCH_ERR_DEVICE, "download with conversion");
            api->free(m->be->dev, buf);
        }
    }
    if (perm) {
        if (!rc)
            for (int64_t r = 0; r < rows; r++)
                memcpy(dst + (size_t)perm[r] * (size_t)row_elems, tmp + (size_t)r * (size_t)row_elems,
                       (size_t)row_elems * sizeof(float));
        free(tmp);
    }
    return rc;
}

/* ---- checkpoint tensors ---------------------------------------------------------------------- */

typedef struct loader {
    finch_model *m;
    st_set *set;
    const char *dir;
    int flatten;         /* accept [d0, a, b, ...] with a * b * ... == d1 for a 2-D parameter */
    finch_quant_plan quant;
} loader;

static int st_to_finch_dtype(st_dtype t, finch_dtype *out)
{
    switch (t) {
    case ST_F32: *out = FINCH_DTYPE_F32; return 1;
    case ST_BF16: *out = FINCH_DTYPE_BF16; return 1;
    case ST_F16: *out = FINCH_DTYPE_F16; return 1;
    default: return 0;
    }
}

static void format_shape(char *buf, size_t size, int ndim, const int64_t *shape)
{
    size_t at = (size_t)snprintf(buf, size, "[");
    for (int i = 0; i < ndim && at < size; i++) at += (size_t)snprintf(buf + at, size - at, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (at < size) snprintf(buf + at, size - at, "]");
}

/* Finds tensor `name` for p (which takes the name), checks its shape ([d0] for ndim 1, or [d0, d1])
 * and returns its values and storage type; F64 is converted to f32 in *converted (free it). */
static int source_tensor(loader *L, finch_param *p, const char *name, int ndim, int64_t d0, int64_t d1, const void **out,
                         finch_dtype *out_type, float **out_converted)
{
    finch_model *m = L->m;
    snprintf(p->name, sizeof p->name, "%s", name);
    const st_tensor *t = st_set_find(L->set, name);
    int64_t want[2] = {d0, d1};
    char expected[64], found[160];
    format_shape(expected, sizeof expected, ndim, want);
    if (!t)
        return finch_error(FINCH_ERR_FORMAT, "%s: missing tensor '%s' (expected shape %s) for model_type '%s'", L->dir, name,
                           expected, m->cfg.model_type);
    const char *file = st_set_file_of(L->set, name);
    int64_t trailing = 1;
    for (int i = 1; i < t->ndim; i++) trailing *= t->shape[i];
    int flat_ok = L->flatten && ndim == 2 && t->ndim > 2 && t->shape[0] == d0 && trailing == d1;
    if (!flat_ok && (t->ndim != ndim || t->shape[0] != d0 || (ndim > 1 && t->shape[1] != d1))) {
        format_shape(found, sizeof found, t->ndim, t->shape);
        return finch_error(FINCH_ERR_FORMAT, "%s: tensor '%s' has shape %s, but config.json implies %s", file ? file : L->dir,
                           name, found, expected);
    }
    finch_dtype src_type;
    float *converted = NULL;
    const void *src = t->data;
    if (!st_to_finch_dtype(t->dtype, &src_type)) {
        if (t->dtype != ST_F64)
            return finch_error(FINCH_ERR_UNSUPPORTED, "%s: tensor '%s' has dtype %s; weights must be F32, BF16, F16 or F64",
                               file ? file : L->dir, name, st_dtype_name(t->dtype));
        converted = malloc((size_t)t->numel * sizeof(float) + 1);
        if (!converted) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
        int rc = st_to_f32(t, converted);
        if (rc) {
            free(converted);
            return rc;
        }
        src = converted;
        src_type = FINCH_DTYPE_F32;
    }
    *out = src;
    *out_type = src_type;
    *out_converted = converted;
    return FINCH_OK;
}

/* Loads tensor `name` into p, which must be absent; shape [d0] (ndim 1) or [d0, d1]. */
static int load_param(loader *L, finch_param *p, const char *name, finch_dtype dtype, int ndim, int64_t d0, int64_t d1,
                      const int32_t *perm)
{
    finch_model *m = L->m;
    const void *src = NULL;
    finch_dtype src_type;
    float *converted = NULL;
    int rc = source_tensor(L, p, name, ndim, d0, d1, &src, &src_type, &converted);
    if (rc) return rc;
    rc = finch_param_alloc(m, p, dtype, ndim, d0, d1);
    if (!rc) rc = upload_rows(m, src, src_type, p->shape[0], p->shape[1], perm, dtype, p->data);
    free(converted);
    if (!rc) m->n_params += p->numel;
    return rc;
}

/* Loads the 2-D tensor `name` into host memory (*host, in dtype) for p, which gets its name, dtype
 * and shape but no device data. */
static int load_param_host(loader *L, finch_param *p, const char *name, finch_dtype dtype, int64_t d0, int64_t d1, void **host)
{
    const void *src = NULL;
    finch_dtype src_type;
    float *converted = NULL;
    int rc = source_tensor(L, p, name, 2, d0, d1, &src, &src_type, &converted);
    if (rc) return rc;
    p->dtype = dtype;
    p->ndim = 2;
    p->shape[0] = d0;
    p->shape[1] = d1;
    p->numel = d0 * d1;
    size_t n = (size_t)p->numel, es = finch_dtype_size(dtype);
    unsigned char *dst = malloc(n * es + 1);
    if (!dst) {
        free(converted);
        return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory for '%s'", name);
    }
    if (src_type == dtype) {
        memcpy(dst, src, n * es);
    } else {
        const unsigned char *s = src;
        size_t ss = finch_dtype_size(src_type);
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            float f;
            if (src_type == FINCH_DTYPE_BF16) memcpy(&h, s + i * ss, 2), f = finch_bf16_to_f32(h);
            else if (src_type == FINCH_DTYPE_F16) memcpy(&h, s + i * ss, 2), f = finch_f16_to_f32(h);
            else memcpy(&f, s + i * ss, 4);
            if (dtype == FINCH_DTYPE_BF16) h = finch_f32_to_bf16(f), memcpy(dst + i * es, &h, 2);
            else if (dtype == FINCH_DTYPE_F16) h = finch_f32_to_f16(f), memcpy(dst + i * es, &h, 2);
            else memcpy(dst + i * es, &f, 4);
        }
    }
    free(converted);
    *host = dst;
    L->m->n_params += p->numel;
    return FINCH_OK;
}

int finch_model_load_param(finch_model *m, const st_set *set, const char *dir, finch_param *p, const char *name, finch_dtype dtype,
                           int ndim, int64_t d0, int64_t d1, int flatten)
{
    loader L = {m, (st_set *)set, dir, flatten, {0}};
    return load_param(&L, p, name, dtype, ndim, d0, d1, NULL);
}

static int load_norm(loader *L, finch_param *w, finch_param *b, const char *base, int64_t dim)
{
    char name[256];
    snprintf(name, sizeof name, "%s.weight", base);
    int rc = load_param(L, w, name, L->m->dtype, 1, dim, 1, NULL);
    if (rc || !b) return rc;
    snprintf(name, sizeof name, "%s.bias", base);
    return load_param(L, b, name, L->m->dtype, 1, dim, 1, NULL);
}

static int load_linear(loader *L, finch_layer *layer, finch_linear_module *lin, const char *path, int64_t in, int64_t out,
                       int has_bias)
{
    finch_model *m = L->m;
    snprintf(lin->path, sizeof lin->path, "%s", path);
    const char *dot = strrchr(lin->path, '.');
    lin->leaf = dot ? dot + 1 : lin->path;
    lin->in_features = in;
    lin->out_features = out;
    lin->id = (uint64_t)m->n_linears;
    char name[256];
    snprintf(name, sizeof name, "%s.weight", path);
    int quantized = 0;
    int rc = finch_quant_load_linear(m, L->set, L->dir, &L->quant, lin, name, &quantized);
    if (!rc && !quantized) rc = load_param(L, &lin->weight, name, m->dtype, 2, out, in, lin->row_perm);
    if (!rc && has_bias) {
        snprintf(name, sizeof name, "%s.bias", path);
        rc = load_param(L, &lin->bias, name, FINCH_DTYPE_F32, 1, out, 1, lin->row_perm);
    }
    if (rc) return rc;
    layer->linears[layer->n_linears++] = lin;
    finch_linear_module **p = realloc(m->linears, (size_t)(m->n_linears + 1) * sizeof *p);
    if (!p) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    m->linears = p;
    m->linears[m->n_linears++] = lin;
    return FINCH_OK;
}

/* Falcon's fused query_key_value rows in our order [q heads | k heads | v heads]: perm[r] is the
 * checkpoint row. Multi-query checkpoints are already in that order. */
static int falcon_qkv_perm(const finch_model_config *c, int32_t **out)
{
    *out = NULL;
    if (!c->new_decoder_arch && c->multi_query) return FINCH_OK;
    int64_t hd = c->head_dim, nh = c->n_heads, nkv = c->n_kv_heads, rows = (nh + 2 * nkv) * hd;
    int32_t *p = malloc((size_t)rows * sizeof *p);
    if (!p) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    int64_t qpg = nh / nkv;
    for (int64_t h = 0; h < nh; h++)
        for (int64_t d = 0; d < hd; d++) {
            int64_t src = c->new_decoder_arch ? ((h / qpg) * (qpg + 2) + h % qpg) * hd + d : (h * 3) * hd + d;
            p[h * hd + d] = (int32_t)src;
        }
    for (int64_t g = 0; g < nkv; g++)
        for (int64_t d = 0; d < hd; d++) {
            int64_t k = c->new_decoder_arch ? (g * (qpg + 2) + qpg) * hd + d : (g * 3 + 1) * hd + d;
            int64_t v = c->new_decoder_arch ? (g * (qpg + 2) + qpg + 1) * hd + d : (g * 3 + 2) * hd + d;
            p[(nh + g) * hd + d] = (int32_t)k;
            p[(nh + nkv + g) * hd + d] = (int32_t)v;
        }
    *out = p;
    return FINCH_OK;
}

static int load_layer(loader *L, int64_t i)
{
    finch_model *m = L->m;
    const finch_model_config *c = &m->cfg;
    finch_layer *ly = &m->layers[i];
    int64_t h = c->hidden, hd = c->head_dim, nq = c->n_heads * hd, nkv = c->n_kv_heads * hd, I = c->intermediate;
    char p[128], name[256];
    int rc;
    if (c->arch == FINCH_ARCH_FALCON) {
        snprintf(p, sizeof p, "%sh.%lld.", m->prefix, (long long)i);
        if (c->new_decoder_arch && c->n_ln_parallel == 2) {
            snprintf(name, sizeof name, "%sln_attn", p);
            if ((rc = load_norm(L, &ly->attn_norm, &ly->attn_norm_b, name, h))) return rc;
            snprintf(name, sizeof name, "%sln_mlp", p);
            if ((rc = load_norm(L, &ly->mlp_norm, &ly->mlp_norm_b, name, h))) return rc;
        } else {
            snprintf(name, sizeof name, "%sinput_layernorm", p);
            if ((rc = load_norm(L, &ly->attn_norm, &ly->attn_norm_b, name, h))) return rc;
            if (!c->parallel_attn) {
                snprintf(name, sizeof name, "%spost_attention_layernorm", p);
                if ((rc = load_norm(L, &ly->mlp_norm, &ly->mlp_norm_b, name, h))) return rc;
            }
        }
        if ((rc = falcon_qkv_perm(c, &ly->qkv.row_perm))) return rc;
        snprintf(name, sizeof name, "%sself_attention.query_key_value", p);
        if ((rc = load_linear(L, ly, &ly->qkv, name, h, nq + 2 * nkv, c->qkv_bias))) return rc;
        snprintf(name, sizeof name, "%sself_attention.dense", p);
        if ((rc = load_linear(L, ly, &ly->o, name, nq, h, c->o_bias))) return rc;
        snprintf(name, sizeof name, "%smlp.dense_h_to_4h", p);
        if ((rc = load_linear(L, ly, &ly->up, name, h, I, c->mlp_bias))) return rc;
        snprintf(name, sizeof name, "%smlp.dense_4h_to_h", p);
        return load_linear(L, ly, &ly->down, name, I, h, c->mlp_bias);
    }
    snprintf(p, sizeof p, "%slayers.%lld.", m->prefix, (long long)i);
    snprintf(name, sizeof name, "%sinput_layernorm", p);
    if ((rc = load_norm(L, &ly->attn_norm, NULL, name, h))) return rc;
    if (c->sandwich_norms) {
        snprintf(name, sizeof name, "%spost_attention_layernorm", p);
        if ((rc = load_norm(L, &ly->post_attn_norm, NULL, name, h))) return rc;
        snprintf(name, sizeof name, "%spre_feedforward_layernorm", p);
        if ((rc = load_norm(L, &ly->mlp_norm, NULL, name, h))) return rc;
        snprintf(name, sizeof name, "%spost_feedforward_layernorm", p);
        if ((rc = load_norm(L, &ly->post_ffn_norm, NULL, name, h))) return rc;
    } else {
        snprintf(name, sizeof name, "%spost_attention_layernorm", p);
        if ((rc = load_norm(L, &ly->mlp_norm, NULL, name, h))) return rc;
    }
    if (c->arch == FINCH_ARCH_PHI3) {
        snprintf(name, sizeof name, "%sself_attn.qkv_proj", p);
        if ((rc = load_linear(L, ly, &ly->qkv, name, h, nq + 2 * nkv, c->qkv_bias))) return rc;
    } else {
        snprintf(name, sizeof name, "%sself_attn.q_proj", p);
        if ((rc = load_linear(L, ly, &ly->q, name, h, nq, c->qkv_bias))) return rc;
        snprintf(name, sizeof name, "%sself_attn.k_proj", p);
        if ((rc = load_linear(L, ly, &ly->k, name, h, nkv, c->qkv_bias))) return rc;
        snprintf(name, sizeof name, "%sself_attn.v_proj", p);
        if ((rc = load_linear(L, ly, &ly->v, name, h, nkv, c->qkv_bias))) return rc;
    }
    snprintf(name, sizeof name, "%sself_attn.o_proj", p);
    if ((rc = load_linear(L, ly, &ly->o, name, nq, h, c->o_bias))) return rc;
    if (c->qk_norm) {
        snprintf(name, sizeof name, "%sself_attn.q_norm", p);
        if ((rc = load_norm(L, &ly->q_norm, NULL, name, hd))) return rc;
        snprintf(name, sizeof name, "%sself_attn.k_norm", p);
        if ((rc = load_norm(L, &ly->k_norm, NULL, name, hd))) return rc;
    }
    if (c->arch == FINCH_ARCH_PHI3) {
        snprintf(name, sizeof name, "%smlp.gate_up_proj", p);
        if ((rc = load_linear(L, ly, &ly->gate_up, name, h, 2 * I, c->mlp_bias))) return rc;
    } else {
        snprintf(name, sizeof name, "%smlp.gate_proj", p);
        if ((rc = load_linear(L, ly, &ly->gate, name, h, I, c->mlp_bias))) return rc;
        snprintf(name, sizeof name, "%smlp.up_proj", p);
        if ((rc = load_linear(L, ly, &ly->up, name, h, I, c->mlp_bias))) return rc;
    }
    snprintf(name, sizeof name, "%smlp.down_proj", p);
    return load_linear(L, ly, &ly->down, name, I, h, c->mlp_bias);
}

static int load_weights(loader *L)
{
    finch_model *m = L->m;
    const finch_model_config *c = &m->cfg;
    int falcon = c->arch == FINCH_ARCH_FALCON;
    const char *embed_leaf = falcon ? "word_embeddings.weight" : "embed_tokens.weight";
    static const char *prefixes[] = {"model.", "transformer.", "model.language_model.", "language_model.model."};
    char name[256];
    size_t np = sizeof prefixes / sizeof prefixes[0];
    size_t i;
    for (i = 0; i < np; i++) {
        snprintf(name, sizeof name, "%s%s", prefixes[i], embed_leaf);
        if (st_set_find(L->set, name)) break;
    }
    snprintf(m->prefix, sizeof m->prefix, "%s", i < np ? prefixes[i] : falcon ? "transformer." : "model.");
    snprintf(name, sizeof name, "%s%s", m->prefix, embed_leaf);
    const char *head = !strcmp(m->prefix, "language_model.model.") ? "language_model.lm_head.weight" : "lm_head.weight";
    m->tied = c->tie_embeddings == 1 || (c->tie_embeddings == -1 && !st_set_find(L->set, head));
    /* A 4-bit model's embedding table is frozen (its LoRA leaves it alone, full fine-tuning is refused)
     * and, untied, only gathered: it stays in host memory and a step uploads its rows. */
    int host_embed = finch_quant_plan_active(&L->quant) && !m->tied && !c->has_vision;
    int rc = host_embed ? load_param_host(L, &m->embed, name, m->dtype, c->vocab, c->hidden, &m->embed_host)
                        : load_param(L, &m->embed, name, m->dtype, 2, c->vocab, c->hidden, NULL);
    if (rc) return rc;
    m->layers = calloc((size_t)c->n_layers, sizeof *m->layers);
    if (!m->layers) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    for (int64_t l = 0; l < c->n_layers; l++)
        if ((rc = load_layer(L, l))) return rc;
    snprintf(name, sizeof name, "%s%s", m->prefix, falcon ? "ln_f" : "norm");
    if ((rc = load_norm(L, &m->final_norm, falcon ? &m->final_norm_b : NULL, name, c->hidden))) return rc;
    if (m->tied) {
        m->lm_head = &m->embed;
        return FINCH_OK;
    }
    m->lm_head = &m->lm_head_own;
    return load_param(L, &m->lm_head_own, head, m->dtype, 2, c->vocab, c->hidden, NULL);
}

/* inv_freq tables and the loss accumulators live in one persistent device buffer. */
static int upload_rope_tables(finch_model *m)
{
    const finch_model_config *c = &m->cfg;
    const finch_rope_config *r[2] = {&c->rope_global, c->has_local_rope ? &c->rope_local : &c->rope_global};
    size_t off = 256, at[2][2] = {{0}};
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2; j++) {
            const float *t = j ? r[i]->inv_freq_long : r[i]->inv_freq;
            if (!t) continue;
            at[i][j] = off;
            off += ((size_t)(r[i]->rot_dim / 2) * sizeof(float) + 255) & ~(size_t)255;
        }
    finch_dptr base;
    int rc = device_alloc(m, off, &base, "RoPE tables");
    if (rc) return rc;
    m->persistent = base.buf;
    m->loss_buf = base;
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2; j++) {
            const float *t = j ? r[i]->inv_freq_long : r[i]->inv_freq;
            m->rope_inv[i][j] = t ? finch_dptr_at(base, at[i][j]) : finch_dptr_none();
            if (t && (rc = upload_rows(m, t, FINCH_DTYPE_F32, 1, r[i]->rot_dim / 2, NULL, FINCH_DTYPE_F32, m->rope_inv[i][j])))
                return rc;
        }
    return FINCH_OK;
}

finch_status finch_model_load(finch_runtime *rt, const char *dir, const finch_load_options *opts, finch_model **out)
{
    if (out) *out = NULL;
    if (!rt || !dir || !out) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_model_load: NULL argument");
    if (!rt->backend.api) return finch_error(FINCH_ERR_STATE, "finch_model_load: the runtime has no open device");
    finch_load_options o = opts ? *opts : finch_load_options_default();
    if (o.compute_dtype != FINCH_DTYPE_F32 && o.compute_dtype != FINCH_DTYPE_BF16)
        return finch_error(FINCH_ERR_UNSUPPORTED, "finch_model_load: compute dtype %s is not supported (f32 or bf16)",
                           finch_dtype_name(o.compute_dtype));
    finch_model *m = calloc(1, sizeof *m);
    if (!m) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    m->rt = rt;
    m->backend = rt->backend;   /* borrowed from the runtime until the model moves (model_move.c) */
    m->be = &m->backend;
    finch_devmem_init(&m->mem, m->be);
    m->dtype = o.compute_dtype;
    m->gradient_checkpointing = o.gradient_checkpointing;
    m->offload_activations = o.offload_activations;
    const char *all = getenv("FINCH_RECOMPUTE_ALL");   /* an A/B switch for measurements (model.h) */
    m->recompute_all = all && !strcmp(all, "1");
    const char *keep = getenv("FINCH_OFFLOAD_ATTENTION");   /* likewise */
    m->save_attention = keep && (!strcmp(keep, "0") || !strcmp(keep, "1")) ? keep[0] - '0' : 2;
    snprintf(m->dir, sizeof m->dir, "%s", dir);
    finch_arena_init(&m->arena, m->be);
    finch_graph_init(&m->graph, m->be, &m->arena);
    int rc = finch_model_config_load(dir, &m->cfg);
    if (rc) {
        free(m);
        return rc;
    }
    m->stream = malloc((size_t)(m->cfg.n_layers + 1) * sizeof *m->stream);
    m->segments = malloc((size_t)(m->cfg.n_layers + 2) * sizeof *m->segments);
    if (!m->stream || !m->segments) {
        finch_model_free(m);
        return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    }
    loader L = {m, NULL, dir, 0, {0}};
    rc = finch_quant_plan_make(dir, &o, &L.quant);
    if (!rc) rc = st_set_open_dir(dir, &L.set);
    if (!rc) rc = load_weights(&L);
    if (!rc && m->cfg.has_vision) rc = finch_vl_load(m, L.set, dir);
    if (L.set) st_set_close(L.set);
    if (!rc) rc = upload_rope_tables(m);
    if (!rc && o.full_finetune) {
        m->full_finetune = 1;
        rc = finch_model_rebuild_trainables(m);
    }
    if (rc) {
        finch_model_free(m);
        return rc;
    }
    *out = m;
    return FINCH_OK;
}

static void release_linear(finch_model *m, finch_linear_module *lin)
{
    finch_param_release(m, &lin->weight);
    finch_param_release(m, &lin->bias);
    finch_param_release(m, &lin->lora_a);
    finch_param_release(m, &lin->lora_b);
    finch_quant_weight_free(lin->quant);
    free(lin->row_perm);
}

void finch_model_free(finch_model *m)
{
    if (!m) return;
    if (m->layers) {
        for (int64_t l = 0; l < m->cfg.n_layers; l++) {
            finch_layer *ly = &m->layers[l];
            finch_param *norms[] = {&ly->attn_norm, &ly->attn_norm_b, &ly->mlp_norm, &ly->mlp_norm_b, &ly->post_attn_norm,
                                    &ly->post_ffn_norm, &ly->q_norm, &ly->k_norm};
            for (size_t i = 0; i < sizeof norms / sizeof norms[0]; i++) finch_param_release(m, norms[i]);
            finch_linear_module *lins[] = {&ly->q, &ly->k, &ly->v, &ly->qkv, &ly->o, &ly->gate, &ly->up, &ly->gate_up, &ly->down};
            for (size_t i = 0; i < sizeof lins / sizeof lins[0]; i++) release_linear(m, lins[i]);
        }
    }
    finch_param_release(m, &m->embed);
    free(m->embed_host);
    finch_param_release(m, &m->final_norm);
    finch_param_release(m, &m->final_norm_b);
    finch_param_release(m, &m->lm_head_own);
    finch_vl_free(m);
    finch_devmem_free(&m->mem, m->persistent);
    finch_model_offload_release(m);   /* page-locked through the backend, its copies' stream: first */
    finch_arena_free(&m->arena);
    finch_devmem_release_all(&m->mem);
    free(m->mem.entries);
    if (m->backend_owned) finch_backend_close(&m->backend);
    free(m->owners);
    finch_graph_free(&m->graph);
    finch_model_config_free(&m->cfg);
    free(m->layers);
    free(m->linears);
    free(m->trainables);
    free(m->lora_targets_json);
    free(m->host_i32);
    free(m->stream);
    free(m->segments);
    free(m);
}
