/* The model half of the public API: info, forward/backward, logits, trainable tensors. */
#include "core/error.h"
#include "core/model.h"
#include "core/vision_tower.h"

#include <stdio.h>
#include <string.h>

finch_status finch_model_info_get(const finch_model *m, finch_model_info *out)
{
    if (!m || !out) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_model_info_get: NULL argument");
    memset(out, 0, sizeof *out);
    const finch_model_config *c = &m->cfg;
    snprintf(out->model_type, sizeof out->model_type, "%s", c->model_type);
    out->n_layers = c->n_layers;
    out->hidden_size = c->hidden;
    out->n_heads = c->n_heads;
    out->n_kv_heads = c->n_kv_heads;
    out->head_dim = c->head_dim;
    out->intermediate_size = c->intermediate;
    out->vocab_size = c->vocab;
    out->n_params = m->n_params;
    for (int i = 0; i < m->n_trainables; i++) out->n_trainable += m->trainables[i].param->numel;
    out->compute_dtype = m->dtype;
    out->image_token_id = m->vision ? m->vision->cfg.image_token_id : -1;
    return FINCH_OK;
}

finch_status finch_forward(finch_model *m, const finch_batch *b, const finch_step_options *opts, finch_step_result *out)
{
    return finch_model_step(m, b, opts, 0, out);
}

finch_status finch_forward_backward(finch_model *m, const finch_batch *b, const finch_step_options *opts,
                                    finch_step_result *out)
{
    return finch_model_step(m, b, opts, 1, out);
}

finch_status finch_model_logits(const finch_model *m, float *dst, size_t count)
{
    if (!m || !dst) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_model_logits: NULL argument");
    if (!m->logits.buf) return finch_error(FINCH_ERR_STATE, "finch_model_logits: the last step did not keep its logits (want_logits)");
    if (count != (size_t)m->logits_count)
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_model_logits: count %zu, but the last step has %lld logits", count,
                           (long long)m->logits_count);
    if (m->be->api->read(m->be->dev, m->be->stream, m->logits, dst, count * sizeof(float)))
        return finch_device_error(m->be, FINCH_ERR_DEVICE, "reading the logits");
    return FINCH_OK;
}

int64_t finch_trainable_count(const finch_model *m) { return m ? m->n_trainables : 0; }

static int trainable_at(const finch_model *m, int64_t i, int64_t numel, const char *fn, const finch_trainable **out)
{
    if (!m) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "%s: NULL model", fn);
    if (i < 0 || i >= m->n_trainables)
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "%s: index %lld is outside [0, %d)", fn, (long long)i, m->n_trainables);
    *out = &m->trainables[i];
    if (numel >= 0 && numel != (*out)->param->numel)
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "%s: '%s' has %lld elements, not %lld", fn, (*out)->param->name,
                           (long long)(*out)->param->numel, (long long)numel);
    return FINCH_OK;
}

finch_status finch_trainable_info(const finch_model *m, int64_t i, finch_tensor_info *out)
{
    const finch_trainable *t = NULL;
    int rc = trainable_at(m, i, -1, "finch_trainable_info", &t);
    if (rc) return rc;
    if (!out) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_trainable_info: NULL output");
    memset(out, 0, sizeof *out);
    snprintf(out->name, sizeof out->name, "%s", t->param->name);
    out->ndim = t->param->ndim;
    out->shape[0] = t->param->shape[0];
    if (out->ndim > 1) out->shape[1] = t->param->shape[1];
    out->numel = t->param->numel;
    return FINCH_OK;
}

static const int32_t *perm_of(const finch_trainable *t) { return t->perm_rows ? t->module->row_perm : NULL; }

finch_status finch_trainable_read(const finch_model *m, int64_t i, float *dst, int64_t numel)
{
    const finch_trainable *t = NULL;
    int rc = trainable_at(m, i, numel, "finch_trainable_read", &t);
    if (rc) return rc;
    if (!dst) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_trainable_read: NULL destination");
    const finch_param *p = t->param;
    return finch_model_download_f32(m, p->data, p->dtype, p->shape[0], p->numel / p->shape[0], perm_of(t), dst);
}

finch_status finch_trainable_write(finch_model *m, int64_t i, const float *src, int64_t numel)
{
    const finch_trainable *t = NULL;
    int rc = trainable_at(m, i, numel, "finch_trainable_write", &t);
    if (rc) return rc;
    if (!src) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_trainable_write: NULL source");
    const finch_param *p = t->param;
    m->weights_version++;
    return finch_model_upload_f32(m, src, p->shape[0], p->numel / p->shape[0], perm_of(t), p->dtype, p->data);
}

finch_status finch_trainable_grad_read(const finch_model *m, int64_t i, float *dst, int64_t numel)
{
    const finch_trainable *t = NULL;
    int rc = trainable_at(m, i, numel, "finch_trainable_grad_read", &t);
    if (rc) return rc;
    if (!dst) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_trainable_grad_read: NULL destination");
    const finch_param *p = t->param;
    return finch_model_download_f32(m, p->grad, FINCH_DTYPE_F32, p->shape[0], p->numel / p->shape[0], perm_of(t), dst);
}

finch_status finch_zero_grads(finch_model *m)
{
    if (!m) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_zero_grads: NULL model");
    if (!m->grad_arena) return FINCH_OK;
    finch_dptr all = {m->grad_arena, 0};
    int rc = m->be->api->fill(m->be->dev, m->be->stream, all, FINCH_DTYPE_F32, (int64_t)(m->grad_arena_bytes / sizeof(float)), 0.0f);
    return rc ? finch_device_error(m->be, rc, "clearing gradients") : FINCH_OK;
}
