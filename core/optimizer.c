/* AdamW over the trainable tensors, state on the device. Per tensor: the f32 master copy when the
 * parameter is stored in bf16/f16, and the two moments, f32 or (8-bit, tensors of at least
 * FINCH_OPTIM_8BIT_MIN_NUMEL elements) u8 codes with one f32 scale per 256-element block.
 * Weight decay skips biases and norm weights (1-D tensors), as Hugging Face's Trainer does. */
#include "core/optimizer.h"
#include "core/error.h"
#include "core/nf4.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct optim_slot {
    finch_param *param;
    int decay;                    /* weight decay applies */
    int embed;                    /* embed_tokens or lm_head: the embedding LR */
    int eight_bit;
    finch_plugin_buffer *buf;     /* master, m, v, absmaxes */
    finch_dptr master, m, v, m_absmax, v_absmax;
} optim_slot;

/* One checkpoint tensor: a buffer of a slot. */
typedef struct optim_entry {
    finch_optim_tensor info;
    finch_dptr ptr;
} optim_entry;

struct finch_optim {
    finch_model *m;
    finch_optim_config cfg;
    optim_slot *slots;
    int n_slots;
    finch_plugin_buffer *misc;    /* f32: the two 8-bit maps [512], the squared norm [1] */
    finch_dptr maps, sum_sq;
    optim_entry *entries;
    int n_entries;
    int registered;               /* an owner of the model's device state (it moves with the model) */
};

const char *finch_optimizer_name(finch_optimizer o)
{
    return o == FINCH_OPTIM_ADAMW ? "adamw" : o == FINCH_OPTIM_ADAMW_8BIT ? "adamw8bit" : "unknown";
}

finch_status finch_optimizer_parse(const char *name, finch_optimizer *out)
{
    if (name && (!strcmp(name, "adamw") || !strcmp(name, "adamw_torch"))) *out = FINCH_OPTIM_ADAMW;
    else if (name && (!strcmp(name, "adamw8bit") || !strcmp(name, "adamw_8bit") || !strcmp(name, "adamw_bnb_8bit")))
        *out = FINCH_OPTIM_ADAMW_8BIT;
    else return finch_error(FINCH_ERR_INVALID_ARGUMENT, "unknown optimizer '%s' (adamw or adamw8bit)", name ? name : "(null)");
    return FINCH_OK;
}

static int no_decay(const finch_param *p)
{
    size_t n = strlen(p->name);
    return p->ndim == 1 || strstr(p->name, "norm") || (n >= 4 && !strcmp(p->name + n - 4, "bias"));
}

static int add_entry(finch_optim *o, const char *name, const char *suffix, finch_dtype dtype, int64_t numel, finch_dptr ptr)
{
    optim_entry *e = &o->entries[o->n_entries++];
    snprintf(e->info.name, sizeof e->info.name, "%s%s", name, suffix);
    e->info.dtype = dtype;
    e->info.numel = numel;
    e->ptr = ptr;
    return FINCH_OK;
}

static int slot_init(finch_optim *o, optim_slot *s)
{
    finch_model *m = o->m;
    const finch_plugin_api *api = m->be->api;
    finch_param *p = s->param;
    int64_t n = p->numel, nb = (n + FINCH_OPTIM_8BIT_BLOCKSIZE - 1) / FINCH_OPTIM_8BIT_BLOCKSIZE;
    int master = p->dtype != FINCH_DTYPE_F32;
    size_t state = s->eight_bit ? ((size_t)n + 3) & ~(size_t)3 : (size_t)n * 4, scales = s->eight_bit ? (size_t)nb * 4 : 0;
    size_t off_m = master ? (size_t)n * 4 : 0, off_v = off_m + state, off_ma = off_v + state;
    size_t total = off_ma + 2 * scales;
    char what[256];
    snprintf(what, sizeof what, "the optimizer state of '%s'", p->name);
    int rc = finch_devmem_alloc(&m->mem, total, what, &s->buf);
    if (rc) return rc;
    finch_dptr base = {s->buf, 0};
    s->master = master ? base : finch_dptr_none();
    s->m = finch_dptr_at(base, off_m);
    s->v = finch_dptr_at(base, off_v);
    s->m_absmax = s->eight_bit ? finch_dptr_at(base, off_ma) : finch_dptr_none();
    s->v_absmax = s->eight_bit ? finch_dptr_at(base, off_ma + scales) : finch_dptr_none();
    /* Zero moments and scales: all bytes 0 (an 8-bit code with scale 0 decodes to 0). */
    rc = api->fill(m->be->dev, m->be->stream, s->m, FINCH_DTYPE_F32, (int64_t)((2 * state + 2 * scales) / 4), 0.0f);
    if (!rc && master) rc = api->cast(m->be->dev, m->be->stream, n, p->dtype, p->data, FINCH_DTYPE_F32, s->master);
    if (rc) return finch_device_error(m->be, rc, "initialising the optimizer state");
    add_entry(o, p->name, "", p->dtype, n, p->data);
    if (master) add_entry(o, p->name, ".master", FINCH_DTYPE_F32, n, s->master);
    add_entry(o, p->name, ".exp_avg", s->eight_bit ? FINCH_DTYPE_U8 : FINCH_DTYPE_F32, n, s->m);
    add_entry(o, p->name, ".exp_avg_sq", s->eight_bit ? FINCH_DTYPE_U8 : FINCH_DTYPE_F32, n, s->v);
    if (s->eight_bit) {
        add_entry(o, p->name, ".exp_avg.absmax", FINCH_DTYPE_F32, nb, s->m_absmax);
        add_entry(o, p->name, ".exp_avg_sq.absmax", FINCH_DTYPE_F32, nb, s->v_absmax);
    }
    return FINCH_OK;
}

/* As an owner of model state: the target must have the step entry, and the state moves with the model. */
static int optim_check(void *self, const finch_backend *to)
{
    const finch_optim *o = self;
    if (o->cfg.kind == FINCH_OPTIM_ADAMW_8BIT && !to->api->adamw8bit_step)
        return finch_error(FINCH_ERR_UNSUPPORTED, "the optimizer is adamw8bit and the %s backend has no adamw8bit_step (plugin ABI 1.1)",
                           to->name);
    return FINCH_OK;
}

static void optim_visit(void *self, finch_devref_fn fn, void *ctx)
{
    finch_optim *o = self;
    for (int i = 0; i < o->n_slots; i++) {
        optim_slot *s = &o->slots[i];
        finch_dptr *ptrs[] = {&s->master, &s->m, &s->v, &s->m_absmax, &s->v_absmax};
        fn(&s->buf, ctx);
        for (size_t k = 0; k < sizeof ptrs / sizeof ptrs[0]; k++) fn(&ptrs[k]->buf, ctx);
    }
    fn(&o->misc, ctx);
    fn(&o->maps.buf, ctx);
    fn(&o->sum_sq.buf, ctx);
    for (int i = 0; i < o->n_entries; i++) fn(&o->entries[i].ptr.buf, ctx);
}

int finch_optim_create(finch_model *m, const finch_optim_config *cfg, finch_optim **out)
{
    *out = NULL;
    const finch_plugin_api *api = m->be->api;
    if (cfg->kind == FINCH_OPTIM_ADAMW_8BIT && !api->adamw8bit_step)
        return finch_error(FINCH_ERR_UNSUPPORTED,
                           "optimizer adamw8bit: the %s backend has no adamw8bit_step (plugin ABI 1.1); use --optimizer adamw",
                           m->be->name);
    if (cfg->kind != FINCH_OPTIM_ADAMW && cfg->kind != FINCH_OPTIM_ADAMW_8BIT)
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "unknown optimizer %d", (int)cfg->kind);
    if (m->n_trainables == 0) return finch_error(FINCH_ERR_STATE, "the model has no trainable tensor (attach an adapter first)");
    finch_optim *o = calloc(1, sizeof *o);
    if (!o) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    o->m = m;
    o->cfg = *cfg;
    o->n_slots = m->n_trainables;
    o->slots = calloc((size_t)o->n_slots, sizeof *o->slots);
    o->entries = calloc((size_t)o->n_slots * 6, sizeof *o->entries);
    int rc = o->slots && o->entries ? FINCH_OK : finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    if (!rc) rc = finch_devmem_alloc(&m->mem, 513 * sizeof(float), "the optimizer's maps and scratch", &o->misc);
    if (!rc) {
        finch_model_owner owner = {o, optim_check, optim_visit, NULL};
        if (!(rc = finch_model_add_owner(m, &owner))) o->registered = 1;
    }
    if (!rc) {
        o->maps = (finch_dptr){o->misc, 0};
        o->sum_sq = (finch_dptr){o->misc, 512 * sizeof(float)};
        float maps[512];
        nf4_dynamic_map(maps);
        nf4_dynamic_map_unsigned(maps + 256);
        if (api->write(m->be->dev, m->be->stream, o->maps, maps, sizeof maps))
            rc = finch_device_error(m->be, FINCH_ERR_DEVICE, "uploading the 8-bit maps");
    }
    for (int i = 0; !rc && i < o->n_slots; i++) {
        optim_slot *s = &o->slots[i];
        s->param = m->trainables[i].param;
        s->decay = !no_decay(s->param);
        s->embed = s->param == &m->embed || s->param == &m->lm_head_own;
        s->eight_bit = cfg->kind == FINCH_OPTIM_ADAMW_8BIT && s->param->numel >= FINCH_OPTIM_8BIT_MIN_NUMEL;
        rc = slot_init(o, s);
    }
    if (rc) {
        finch_optim_free(o);
        return rc;
    }
    *out = o;
    return FINCH_OK;
}

void finch_optim_free(finch_optim *o)
{
    if (!o) return;
    finch_model *m = o->m;
    if (o->registered) finch_model_remove_owner(m, o);
    for (int i = 0; o->slots && i < o->n_slots; i++) finch_devmem_free(&m->mem, o->slots[i].buf);
    finch_devmem_free(&m->mem, o->misc);
    free(o->slots);
    free(o->entries);
    free(o);
}

/* The tensor of slot i that sum_squares reads: its gradient (grads) or its weight (the f32 master
 * copy where there is one). */
static void squares_of(const finch_optim *o, int i, int grads, int64_t *n, finch_dtype *t, finch_dptr *x)
{
    const optim_slot *s = &o->slots[i];
    const finch_param *p = s->param;
    *n = p->numel;
    *t = grads || s->master.buf ? FINCH_DTYPE_F32 : p->dtype;
    *x = grads ? p->grad : s->master.buf ? s->master : p->data;
}

/* The sum of squares of every gradient (grads) or every weight, into one f32: one call for all
 * where the backend has sum_squares_multi (ABI 1.7). */
static int sum_squares(finch_optim *o, int grads, float *out)
{
    const finch_backend *be = o->m->be;
    int rc = be->api->fill(be->dev, be->stream, o->sum_sq, FINCH_DTYPE_F32, 1, 0.0f);
    if (!rc && be->api->sum_squares_multi && o->n_slots > 0) {
        int64_t *n = malloc((size_t)o->n_slots * sizeof *n);
        finch_dtype *t = malloc((size_t)o->n_slots * sizeof *t);
        finch_dptr *x = malloc((size_t)o->n_slots * sizeof *x);
        if (!n || !t || !x) {
            free(n);
            free(t);
            free(x);
            return finch_error(FINCH_ERR_OUT_OF_MEMORY, "the list of %d tensors for a norm", o->n_slots);
        }
        for (int i = 0; i < o->n_slots; i++) squares_of(o, i, grads, &n[i], &t[i], &x[i]);
        rc = be->api->sum_squares_multi(be->dev, be->stream, o->n_slots, n, t, x, o->sum_sq);
        free(n);
        free(t);
        free(x);
    } else {
        for (int i = 0; !rc && i < o->n_slots; i++) {
            int64_t n;
            finch_dtype t;
            finch_dptr x;
            squares_of(o, i, grads, &n, &t, &x);
            rc = be->api->sum_squares(be->dev, be->stream, n, t, x, o->sum_sq);
        }
    }
    if (!rc) rc = be->api->read(be->dev, be->stream, o->sum_sq, out, sizeof *out);
    return rc ? finch_device_error(be, rc, grads ? "the gradient norm" : "the weight norm") : FINCH_OK;
}

int finch_optim_grad_norm(finch_optim *o, double *norm)
{
    float ss = 0;
    int rc = sum_squares(o, 1, &ss);
    if (!rc) *norm = sqrt((double)ss);
    return rc;
}

int finch_optim_weights_finite(finch_optim *o, int *finite)
{
    float ss = 0;
    int rc = sum_squares(o, 0, &ss);
    if (!rc) *finite = isfinite(ss);
    return rc;
}

int finch_optim_step(finch_optim *o, int64_t step, double lr, double embed_lr, float grad_scale)
{
    const finch_backend *be = o->m->be;
    const finch_optim_config *c = &o->cfg;
    float bc1 = (float)(1.0 - pow(c->beta1, (double)step)), bc2 = (float)(1.0 - pow(c->beta2, (double)step));
    /* The f32-moment tensors go to adamw_step_multi together where the backend has it (ABI 1.7). */
    finch_adamw_desc *batch = be->api->adamw_step_multi && o->n_slots > 0 ? malloc((size_t)o->n_slots * sizeof *batch) : NULL;
    int batched = 0;
    for (int i = 0; i < o->n_slots; i++) {
        const optim_slot *s = &o->slots[i];
        const finch_param *p = s->param;
        float slr = (float)(s->embed ? embed_lr : lr), wd = s->decay ? (float)c->weight_decay : 0.0f;
        int rc;
        if (s->eight_bit) {
            finch_adamw8bit_desc d;
            memset(&d, 0, sizeof d);
            d.n = p->numel;
            d.blocksize = FINCH_OPTIM_8BIT_BLOCKSIZE;
            d.param_type = p->dtype;
            d.param = p->data;
            d.master = s->master;
            d.grad = p->grad;
            d.m_codes = s->m;
            d.v_codes = s->v;
            d.m_absmax = s->m_absmax;
            d.v_absmax = s->v_absmax;
            d.m_map = o->maps;
            d.v_map = finch_dptr_at(o->maps, 256 * sizeof(float));
            d.lr = slr;
            d.beta1 = (float)c->beta1;
            d.beta2 = (float)c->beta2;
            d.eps = (float)c->eps;
            d.weight_decay = wd;
            d.grad_scale = grad_scale;
            d.bias_correction1 = bc1;
            d.bias_correction2 = bc2;
            rc = be->api->adamw8bit_step(be->dev, be->stream, &d);
        } else {
            finch_adamw_desc d;
            memset(&d, 0, sizeof d);
            d.n = p->numel;
            d.param_type = p->dtype;
            d.param = p->data;
            d.master = s->master;
            d.grad = p->grad;
            d.m = s->m;
            d.v = s->v;
            d.lr = slr;
            d.beta1 = (float)c->beta1;
            d.beta2 = (float)c->beta2;
            d.eps = (float)c->eps;
            d.weight_decay = wd;
            d.grad_scale = grad_scale;
            d.bias_correction1 = bc1;
            d.bias_correction2 = bc2;
            if (batch) {
                batch[batched++] = d;
                continue;
            }
            rc = be->api->adamw_step(be->dev, be->stream, &d);
        }
        if (rc) {
            free(batch);
            return finch_device_error(be, rc, s->eight_bit ? "adamw8bit_step" : "adamw_step");
        }
    }
    int rc = batched ? be->api->adamw_step_multi(be->dev, be->stream, batched, batch) : FINCH_OK;
    free(batch);
    return rc ? finch_device_error(be, rc, "adamw_step_multi") : FINCH_OK;
}

int finch_optim_tensor_count(const finch_optim *o) { return o->n_entries; }

void finch_optim_tensor_info(const finch_optim *o, int i, finch_optim_tensor *out) { *out = o->entries[i].info; }

static size_t entry_bytes(const optim_entry *e) { return (size_t)e->info.numel * finch_dtype_size(e->info.dtype); }

int finch_optim_tensor_read(const finch_optim *o, int i, void *dst)
{
    const finch_backend *be = o->m->be;
    const optim_entry *e = &o->entries[i];
    if (be->api->read(be->dev, be->stream, e->ptr, dst, entry_bytes(e)))
        return finch_device_error(be, FINCH_ERR_DEVICE, "reading optimizer state");
    return FINCH_OK;
}

int finch_optim_tensor_write(finch_optim *o, int i, const void *src)
{
    const finch_backend *be = o->m->be;
    const optim_entry *e = &o->entries[i];
    if (be->api->write(be->dev, be->stream, e->ptr, src, entry_bytes(e)))
        return finch_device_error(be, FINCH_ERR_DEVICE, "writing optimizer state");
    return FINCH_OK;
}
