/* QLoRA: 4-bit decoder linear weights — the load plan, loading one weight, reading it back, and
 * saving the base model as a bnb-4bit checkpoint. See core/model_quant.h. */
#include "core/model_quant.h"
#include "core/bnb_checkpoint.h"
#include "core/error.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the plan ----------------------------------------------------------------------------------- */

int finch_quant_plan_make(const char *dir, const finch_load_options *o, finch_quant_plan *out)
{
    memset(out, 0, sizeof *out);
    char path[1200];
    snprintf(path, sizeof path, "%s/config.json", dir);
    bnb_config c;
    int rc = bnb_config_load(path, &c);
    if (rc) return rc;
    if (o->quant_type != FINCH_QUANT_NF4 && o->quant_type != FINCH_QUANT_FP4)
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_model_load: quant_type %d is not FINCH_QUANT_NF4 or FINCH_QUANT_FP4",
                           o->quant_type);
    int64_t bs = o->quant_blocksize ? o->quant_blocksize : NF4_DEFAULT_BLOCKSIZE;
    if (!nf4_blocksize_valid(bs))
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_model_load: quant_blocksize %lld is not a power of two in 32..4096",
                           (long long)o->quant_blocksize);
    out->prequantized = c.quantized;
    out->quantize_dense = o->load_in_4bit != 0;
    out->type = o->quant_type == FINCH_QUANT_FP4 ? NF4_TYPE_FP4 : NF4_TYPE_NF4;
    out->blocksize = bs;
    out->double_quant = o->double_quant != 0;
    if (finch_quant_plan_active(out) && o->full_finetune)
        return finch_error(FINCH_ERR_UNSUPPORTED,
                           "%s: full fine-tuning needs dense weights, but this load keeps the decoder's linear weights in 4 bits "
                           "(%s); 4-bit weights are frozen: train LoRA adapters on them (QLoRA), or load a bf16/f16/f32 "
                           "checkpoint without load_in_4bit",
                           dir, out->prequantized ? "a bitsandbytes 4-bit checkpoint" : "load_in_4bit");
    return FINCH_OK;
}

/* ---- loading one weight -------------------------------------------------------------------------- */

/* Whole rows own whole absmax blocks (and whole bytes): rows can move without requantising. */
static int rows_own_blocks(int64_t in_features, int64_t blocksize) { return in_features % blocksize == 0; }

static size_t align256(size_t x) { return (x + 255) & ~(size_t)255; }

/* Byte offsets of the parts inside a weight's device buffer. */
typedef struct quant_layout {
    size_t packed, absmax, code, total;
} quant_layout;

static quant_layout layout_of(int64_t n, int64_t blocksize)
{
    quant_layout l;
    l.packed = 0;
    l.absmax = align256((size_t)nf4_packed_bytes(n));
    l.code = align256(l.absmax + (size_t)nf4_n_blocks(n, blocksize) * sizeof(float));
    l.total = l.code + 16 * sizeof(float);
    return l;
}

/* Rows r of packed/absmax take the checkpoint's row perm[r] (to_checkpoint: the inverse move).
 * Requires rows_own_blocks. */
static int permute_rows(nf4_weight *w, const int32_t *perm, int to_checkpoint)
{
    size_t row_bytes = (size_t)(w->cols / 2), row_blocks = (size_t)(w->cols / w->blocksize);
    uint8_t *packed = malloc((size_t)nf4_packed_bytes(nf4_weight_numel(w)));
    float *absmax = malloc((size_t)nf4_weight_blocks(w) * sizeof(float));
    if (!packed || !absmax) {
        free(packed);
        free(absmax);
        return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory reordering a 4-bit weight");
    }
    for (int64_t r = 0; r < w->rows; r++) {
        size_t ours = (size_t)r, theirs = (size_t)perm[r];
        size_t dst = to_checkpoint ? theirs : ours, src = to_checkpoint ? ours : theirs;
        memcpy(packed + dst * row_bytes, w->packed + src * row_bytes, row_bytes);
        memcpy(absmax + dst * row_blocks, w->absmax + src * row_blocks, row_blocks * sizeof(float));
    }
    free(w->packed);
    free(w->absmax);
    w->packed = packed;
    w->absmax = absmax;
    return FINCH_OK;
}

/* Quantises tensor t with its rows already in finch's order (the own-order case): the permuted copy
 * is one tensor in the checkpoint's dtype. */
static int quantize_permuted(const st_tensor *t, const int32_t *perm, const finch_quant_plan *plan, nf4_weight *w)
{
    size_t row_bytes = (size_t)t->shape[1] * st_dtype_size(t->dtype);
    unsigned char *rows = malloc(row_bytes * (size_t)t->shape[0] + 1);
    if (!rows) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory reordering '%s'", t->name);
    for (int64_t r = 0; r < t->shape[0]; r++)
        memcpy(rows + (size_t)r * row_bytes, (const unsigned char *)t->data + (size_t)perm[r] * row_bytes, row_bytes);
    st_tensor view = *t;
    view.data = rows;
    int rc = nf4_quantize_st_tensor(&view, plan->type, plan->blocksize, plan->double_quant, w);
    free(rows);
    return rc;
}

static int upload(finch_model *m, finch_linear_module *lin, const char *name, nf4_weight *w, int own_order)
{
    const finch_plugin_api *api = m->be->api;
    int64_t n = nf4_weight_numel(w);
    quant_layout l = layout_of(n, w->blocksize);
    finch_quant_weight *q = calloc(1, sizeof *q);
    if (!q) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    finch_plugin_buffer *buf = NULL;
    char what[96];
    snprintf(what, sizeof what, "the 4-bit weight '%s'", name);
    int rc = finch_devmem_alloc(&m->mem, l.total, what, &buf);
    if (rc) {
        free(q);
        return rc;
    }
    finch_param *p = &lin->weight;
    snprintf(p->name, sizeof p->name, "%s", name);
    p->dtype = FINCH_DTYPE_NF4;
    p->ndim = 2;
    p->shape[0] = w->rows;
    p->shape[1] = w->cols;
    p->numel = n;
    p->data = (finch_dptr){buf, l.packed};
    q->w.dtype = FINCH_DTYPE_NF4;
    q->w.data = p->data;
    q->w.absmax = (finch_dptr){buf, l.absmax};
    q->w.code = (finch_dptr){buf, l.code};
    q->w.blocksize = w->blocksize;
    q->own_order = own_order;
    lin->quant = q;
    if (api->write(m->be->dev, m->be->stream, q->w.data, w->packed, (size_t)nf4_packed_bytes(n)) ||
        api->write(m->be->dev, m->be->stream, q->w.absmax, w->absmax, (size_t)nf4_weight_blocks(w) * sizeof(float)) ||
        api->write(m->be->dev, m->be->stream, q->w.code, w->code, sizeof w->code))
        return finch_device_error(m->be, FINCH_ERR_DEVICE, "uploading a 4-bit weight");
    /* The host keeps everything but the two large arrays. */
    free(w->packed);
    free(w->absmax);
    w->packed = NULL;
    w->absmax = NULL;
    q->meta = *w;
    memset(w, 0, sizeof *w);
    m->n_params += n;
    return FINCH_OK;
}

int finch_quant_load_linear(finch_model *m, const st_set *set, const char *dir, const finch_quant_plan *plan,
                            finch_linear_module *lin, const char *name, int *loaded)
{
    *loaded = 0;
    if (!finch_quant_plan_active(plan)) return FINCH_OK;
    int stored = plan->prequantized && bnb_weight_is_quantized(set, name);
    if (!stored && !plan->quantize_dense) return FINCH_OK;
    int64_t out = lin->out_features, in = lin->in_features;
    const int32_t *perm = lin->row_perm;
    const char *file = st_set_file_of(set, name);
    if (!file) file = dir;
    nf4_weight w;
    memset(&w, 0, sizeof w);
    int rc, own_order = 0;
    if (stored) {
        rc = bnb_load_weight(set, name, &w);
        if (!rc && (w.rows != out || w.cols != in))
            rc = finch_error(FINCH_ERR_FORMAT, "%s: 4-bit weight '%s' has shape [%lld, %lld], but config.json implies [%lld, %lld]",
                             file, name, (long long)w.rows, (long long)w.cols, (long long)out, (long long)in);
        if (!rc && perm && !rows_own_blocks(in, w.blocksize))
            rc = finch_error(FINCH_ERR_UNSUPPORTED,
                             "%s: 4-bit weight '%s': finch reorders its rows, which needs in_features (%lld) to be a multiple of "
                             "the blocksize (%lld); load the bf16/f16/f32 checkpoint with load_in_4bit instead",
                             file, name, (long long)in, (long long)w.blocksize);
    } else {
        const st_tensor *t = st_set_find(set, name);
        if (!t)
            return finch_error(FINCH_ERR_FORMAT, "%s: missing tensor '%s' (expected shape [%lld, %lld]) for model_type '%s'", dir,
                               name, (long long)out, (long long)in, m->cfg.model_type);
        if (t->ndim != 2 || t->shape[0] != out || t->shape[1] != in)
            return finch_error(FINCH_ERR_FORMAT, "%s: tensor '%s' has %d dimensions [%lld, %lld, ...], but config.json implies [%lld, %lld]",
                               file, name, t->ndim, (long long)t->shape[0], (long long)(t->ndim > 1 ? t->shape[1] : 0),
                               (long long)out, (long long)in);
        if (perm && !rows_own_blocks(in, plan->blocksize)) {
            own_order = 1;
            rc = quantize_permuted(t, perm, plan, &w);
            if (rc) finch_error_prefix(rc, "%s: ", file);
        } else {
            rc = nf4_quantize_from_set(set, name, plan->type, plan->blocksize, plan->double_quant, &w);
        }
    }
    if (!rc && perm && !own_order) rc = permute_rows(&w, perm, 0);
    if (!rc) rc = upload(m, lin, name, &w, own_order);
    nf4_weight_free(&w);
    if (!rc) *loaded = 1;
    return rc;
}

void finch_quant_weight_free(finch_quant_weight *q)
{
    if (!q) return;
    nf4_weight_free(&q->meta);
    free(q);
}

finch_weight finch_quant_linear_weight(const finch_linear_module *lin)
{
    if (lin->quant) return lin->quant->w;
    finch_weight w;
    memset(&w, 0, sizeof w);
    w.dtype = lin->weight.dtype;
    w.data = lin->weight.data;
    return w;
}

/* ---- reading back ---------------------------------------------------------------------------- */

/* packed and absmax of lin's weight in finch's row order, into w (shape and blocksize from meta). */
static int download_arrays(const finch_model *m, const finch_linear_module *lin, nf4_weight *w)
{
    const finch_quant_weight *q = lin->quant;
    if (!q) return finch_error(FINCH_ERR_STATE, "'%s' is not a 4-bit weight", lin->weight.name);
    int64_t n = nf4_weight_numel(&q->meta), nb = nf4_weight_blocks(&q->meta);
    w->packed = malloc((size_t)nf4_packed_bytes(n));
    w->absmax = malloc((size_t)nb * sizeof(float));
    if (!w->packed || !w->absmax) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory reading '%s'", lin->weight.name);
    const finch_plugin_api *api = m->be->api;
    if (api->read(m->be->dev, m->be->stream, q->w.data, w->packed, (size_t)nf4_packed_bytes(n)) ||
        api->read(m->be->dev, m->be->stream, q->w.absmax, w->absmax, (size_t)nb * sizeof(float)))
        return finch_device_error(m->be, FINCH_ERR_DEVICE, "reading a 4-bit weight");
    return FINCH_OK;
}

int finch_quant_dequantize(const finch_model *m, const finch_linear_module *lin, float *dst)
{
    nf4_weight w;
    memset(&w, 0, sizeof w);
    int rc = download_arrays(m, lin, &w);
    const nf4_weight *meta = lin->quant ? &lin->quant->meta : NULL;
    float *ours = NULL;
    if (!rc && lin->row_perm) {
        ours = malloc((size_t)nf4_weight_numel(meta) * sizeof(float));
        if (!ours) rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory reading '%s'", lin->weight.name);
    }
    if (!rc) nf4_dequantize(w.packed, w.absmax, nf4_weight_numel(meta), meta->blocksize, meta->code, ours ? ours : dst);
    if (!rc && ours)
        for (int64_t r = 0; r < meta->rows; r++)
            memcpy(dst + (size_t)lin->row_perm[r] * (size_t)meta->cols, ours + (size_t)r * (size_t)meta->cols,
                   (size_t)meta->cols * sizeof(float));
    free(ours);
    nf4_weight_free(&w);
    return rc;
}

int finch_quant_download(const finch_model *m, const finch_linear_module *lin, nf4_weight *out)
{
    memset(out, 0, sizeof *out);
    const finch_quant_weight *q = lin->quant;
    if (q && q->own_order)
        return finch_error(FINCH_ERR_UNSUPPORTED,
                           "'%s' was quantised in finch's row order (in_features %lld is not a multiple of the blocksize %lld), "
                           "which a bnb-4bit checkpoint cannot store",
                           lin->weight.name, (long long)lin->in_features, (long long)q->meta.blocksize);
    int rc = download_arrays(m, lin, out);
    if (rc) {
        nf4_weight_free(out);
        return rc;
    }
    uint8_t *packed = out->packed;
    float *absmax = out->absmax;
    *out = q->meta;
    out->packed = packed;
    out->absmax = absmax;
    out->qabsmax = NULL;
    out->nested_absmax = NULL;
    if (q->meta.nested) {
        int64_t nb = nf4_weight_blocks(&q->meta), nn = nf4_n_blocks(nb, q->meta.nested_blocksize);
        out->qabsmax = malloc((size_t)nb);
        out->nested_absmax = malloc((size_t)nn * sizeof(float));
        if (!out->qabsmax || !out->nested_absmax) rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
        else {
            memcpy(out->qabsmax, q->meta.qabsmax, (size_t)nb);
            memcpy(out->nested_absmax, q->meta.nested_absmax, (size_t)nn * sizeof(float));
        }
    }
    if (!rc && lin->row_perm) rc = permute_rows(out, lin->row_perm, 1);
    if (rc) nf4_weight_free(out);
    return rc;
}
