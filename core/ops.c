#include "core/ops.h"
#include "core/error.h"

#include <string.h>

#define API (g->be->api)
#define DEV g->be->dev, g->be->stream

static size_t esize(finch_dtype t) { return finch_dtype_size(t); }

static int has_node(const finch_tensor *t) { return t->node >= 0; }

static int check(finch_graph *g, int rc, const char *what)
{
    return rc ? finch_device_error(g->be, rc, what) : FINCH_OK;
}

static int internal(const char *what)
{
    return finch_error(FINCH_ERR_INVALID_ARGUMENT, "internal: %s", what);
}

/* ---- embedding ---------------------------------------------------------------------------- */

typedef struct embedding_record {
    finch_dptr ids, dtable;
    int64_t n_tokens, dim, vocab;
    float scale;
    finch_tensor y;
} embedding_record;

static int embedding_backward(finch_graph *g, const void *rec)
{
    const embedding_record *r = rec;
    finch_dptr dy;
    int rc = finch_grad_of_output(g, &r->y, &dy);
    if (rc || !dy.buf) return rc;
    return check(g, API->embedding_backward(DEV, r->n_tokens, r->dim, r->vocab, r->ids, r->y.dtype, dy, r->dtable, r->scale),
                 "embedding backward");
}

int finch_op_embedding(finch_graph *g, finch_dptr ids, int64_t n_tokens, const finch_param *table, finch_dtype out_type,
                       float scale, finch_tensor *y)
{
    int64_t vocab = table->shape[0], dim = table->shape[1];
    int rc = finch_graph_tensor(g, out_type, n_tokens, dim, table->grad.buf != NULL, y);
    if (rc) return rc;
    rc = API->embedding_forward(DEV, n_tokens, dim, vocab, ids, table->dtype, table->data, out_type, y->data, scale);
    if (rc) return check(g, rc, "embedding");
    if (!g->recording || !has_node(y)) return FINCH_OK;
    embedding_record r = {ids, table->grad, n_tokens, dim, vocab, scale, *y};
    return finch_graph_record(g, embedding_backward, &r, sizeof r);
}

/* ---- normalisation ------------------------------------------------------------------------ */

typedef struct norm_record {
    finch_tensor x, y;
    finch_dtype w_type;
    finch_dptr w, b, dw, db, mean, rstd;
    float weight_offset;
    int layer;           /* 1: LayerNorm, 0: RMSNorm */
} norm_record;

static int norm_backward(finch_graph *g, const void *rec)
{
    const norm_record *r = rec;
    finch_dptr dy, dx;
    int acc, rc = finch_grad_of_output(g, &r->y, &dy);
    if (rc || !dy.buf) return rc;
    rc = finch_grad_target(g, &r->x, &dx, &acc);
    if (rc) return rc;
    if (!dx.buf && !r->dw.buf && !r->db.buf) return FINCH_OK;
    if (r->layer)
        rc = API->layernorm_backward(DEV, r->x.rows, r->x.cols, r->x.dtype, r->x.data, r->w_type, r->w, r->mean, r->rstd, dy,
                                     dx, acc, r->dw, r->db);
    else
        rc = API->rmsnorm_backward(DEV, r->x.rows, r->x.cols, r->x.dtype, r->x.data, r->w_type, r->w, r->weight_offset,
                                   r->rstd, dy, dx, acc, r->dw);
    if (rc) return check(g, rc, r->layer ? "layernorm backward" : "rmsnorm backward");
    finch_grad_written(g, &r->x);
    return FINCH_OK;
}

/* Allocates y and the statistics of a norm of x and fills its record, for the forward to write. */
static int norm_prepare(finch_graph *g, const finch_tensor *x, const finch_param *w, const finch_param *b,
                        float weight_offset, int layer, finch_tensor *y, norm_record *r)
{
    if (!finch_tensor_contiguous(x)) return internal("normalisation of a strided view");
    int trainable = (w && w->grad.buf) || (b && b->grad.buf);
    int rc = finch_graph_tensor(g, x->dtype, x->rows, x->cols, has_node(x) || trainable, y);
    if (rc) return rc;
    memset(r, 0, sizeof *r);
    r->x = *x;
    r->y = *y;
    r->w_type = w ? w->dtype : x->dtype;
    r->w = w ? w->data : finch_dptr_none();
    r->b = b ? b->data : finch_dptr_none();
    r->dw = w ? w->grad : finch_dptr_none();
    r->db = b ? b->grad : finch_dptr_none();
    r->weight_offset = weight_offset;
    r->layer = layer;
    size_t stats = (size_t)x->rows * sizeof(float);
    if ((rc = finch_arena_alloc(g->arena, stats, &r->rstd))) return rc;
    if (layer && (rc = finch_arena_alloc(g->arena, stats, &r->mean))) return rc;
    return FINCH_OK;
}

/* Appends the norm's backward while the graph records. */
static int norm_keep(finch_graph *g, const norm_record *r)
{
    if (!g->recording || !has_node(&r->y)) return FINCH_OK;
    return finch_graph_record(g, norm_backward, r, sizeof *r);
}

static int norm_forward(finch_graph *g, const finch_tensor *x, const finch_param *w, const finch_param *b,
                        float weight_offset, float eps, int layer, finch_tensor *y)
{
    norm_record r;
    int rc = norm_prepare(g, x, w, b, weight_offset, layer, y, &r);
    if (rc) return rc;
    if (layer)
        rc = API->layernorm_forward(DEV, x->rows, x->cols, x->dtype, x->data, r.w_type, r.w, r.b, eps, y->data, r.mean,
                                    r.rstd);
    else
        rc = API->rmsnorm_forward(DEV, x->rows, x->cols, x->dtype, x->data, r.w_type, r.w, weight_offset, eps, y->data,
                                  r.rstd);
    if (rc) return check(g, rc, layer ? "layernorm" : "rmsnorm");
    return norm_keep(g, &r);
}

int finch_op_rmsnorm(finch_graph *g, const finch_tensor *x, const finch_param *w, float weight_offset, float eps,
                     finch_tensor *y)
{
    return norm_forward(g, x, w, NULL, weight_offset, eps, 0, y);
}

int finch_op_layernorm(finch_graph *g, const finch_tensor *x, const finch_param *w, const finch_param *b, float eps,
                       finch_tensor *y)
{
    return norm_forward(g, x, w, b, 0.0f, eps, 1, y);
}

/* ---- linear (with LoRA) ------------------------------------------------------------------- */

typedef struct linear_record {
    finch_linear_desc d;
    finch_tensor x, y;
} linear_record;

static int linear_backward(finch_graph *g, const void *rec)
{
    const linear_record *r = rec;
    finch_linear_desc d = r->d;
    int rc = finch_grad_of_output(g, &r->y, &d.dy);
    if (rc || !d.dy.buf) return rc;
    d.lddy = r->y.ld;
    rc = finch_grad_target(g, &r->x, &d.dx, &d.dx_accumulate);
    if (rc) return rc;
    d.lddx = r->x.ld;
    if (!d.dx.buf && !d.dw.buf && !d.dbias.buf && !d.da.buf && !d.db.buf) return FINCH_OK;
    rc = API->linear_backward(DEV, &d);
    if (rc) return check(g, rc, "linear backward");
    finch_grad_written(g, &r->x);
    return FINCH_OK;
}

static int linear_trainable(const finch_linear_params *p)
{
    return p->dw.buf || p->dbias.buf || (p->rank && (p->da.buf || p->db.buf));
}

/* The forward descriptor of linear p from x into y (allocated by the caller), with room for xa when
 * the tape will want it and the forward runs (compute; else xa stays absent and the backward forms it
 * from x, finch_linear_desc), or xa at xa_at when given (written there by a forward that computes,
 * taken from there by the backward); *keep: record it. */
static int linear_prepare(finch_graph *g, const finch_tensor *x, const finch_linear_params *p, const finch_tensor *y,
                          finch_dptr xa_at, int compute, linear_record *r, int *keep)
{
    if (x->cols != p->in_features) return internal("linear input width");
    memset(r, 0, sizeof *r);
    finch_linear_desc *d = &r->d;
    d->m = x->rows;
    d->in_features = p->in_features;
    d->out_features = p->out_features;
    d->rank = p->rank;
    d->act_type = x->dtype;
    d->x = x->data;
    d->ldx = x->ld;
    d->y = y->data;
    d->ldy = y->ld;
    d->w = p->w;
    d->param_type = p->param_type;
    d->bias = p->bias;
    d->lora_a = p->lora_a;
    d->lora_b = p->lora_b;
    d->scale = p->scale;
    d->dropout = p->dropout;
    d->dropout_seed = p->dropout_seed;
    d->dw = p->dw;
    d->dbias = p->dbias;
    d->da = p->rank ? p->da : finch_dptr_none();
    d->db = p->rank ? p->db : finch_dptr_none();
    r->x = *x;
    r->y = *y;
    *keep = g->recording && has_node(y);
    if (p->rank && d->db.buf && xa_at.buf) {
        d->xa = xa_at;
        return FINCH_OK;
    }
    if (!compute || !*keep || !p->rank || !d->db.buf) return FINCH_OK;
    return finch_arena_alloc(g->arena, (size_t)(x->rows * p->rank) * sizeof(float), &d->xa);
}

/* compute 0: y and its tape entry only; y at `at`, xa at xa_at when present. */
static int linear_op(finch_graph *g, const finch_tensor *x, const finch_linear_params *p, finch_dptr at, finch_dptr xa_at,
                     int compute, finch_tensor *y)
{
    int req = has_node(x) || linear_trainable(p);
    int rc = finch_graph_tensor_at(g, x->dtype, x->rows, p->out_features, at, req, y);
    linear_record r;
    int keep = 0;
    if (!rc) rc = linear_prepare(g, x, p, y, xa_at, compute, &r, &keep);
    if (rc) return rc;
    if (compute && (rc = API->linear_forward(DEV, &r.d))) return check(g, rc, "linear");
    return keep ? finch_graph_record(g, linear_backward, &r, sizeof r) : FINCH_OK;
}

int finch_op_linear(finch_graph *g, const finch_tensor *x, const finch_linear_params *p, finch_tensor *y)
{
    return linear_op(g, x, p, finch_dptr_none(), finch_dptr_none(), 1, y);
}

int finch_op_linear_group(finch_graph *g, const finch_tensor *x, int count, const finch_linear_params *const *p,
                          int one_tensor, finch_tensor *y)
{
    if (count < 1 || count > FINCH_LINEAR_GROUP_MAX) return internal("linear group size");
    int64_t width = 0;
    int grad = has_node(x);
    for (int i = 0; i < count; i++) {
        width += p[i]->out_features;
        grad |= linear_trainable(p[i]);
    }
    finch_tensor all;
    int rc = one_tensor ? finch_graph_tensor(g, x->dtype, x->rows, width, grad, &all) : FINCH_OK;
    if (rc) return rc;
    linear_record r[FINCH_LINEAR_GROUP_MAX];
    finch_linear_desc d[FINCH_LINEAR_GROUP_MAX];
    int keep[FINCH_LINEAR_GROUP_MAX];
    for (int i = 0, c0 = 0; i < count; c0 += (int)p[i]->out_features, i++) {
        if (one_tensor) y[i] = finch_tensor_cols(&all, c0, p[i]->out_features);
        else if ((rc = finch_graph_tensor(g, x->dtype, x->rows, p[i]->out_features, has_node(x) || linear_trainable(p[i]), &y[i])))
            return rc;
        if ((rc = linear_prepare(g, x, p[i], &y[i], finch_dptr_none(), 1, &r[i], &keep[i]))) return rc;
        d[i] = r[i].d;
    }
    if (API->linear_forward_group) {
        rc = API->linear_forward_group(DEV, d, count);
    } else {
        for (int i = 0; !rc && i < count; i++) rc = API->linear_forward(DEV, &d[i]);
    }
    if (rc) return check(g, rc, "linear group");
    for (int i = 0; i < count; i++)
        if (keep[i] && (rc = finch_graph_record(g, linear_backward, &r[i], sizeof r[i]))) return rc;
    return FINCH_OK;
}

int finch_op_linear_at(finch_graph *g, const finch_tensor *x, const finch_linear_params *p, finch_dptr at, finch_dptr xa,
                       int compute, finch_tensor *y)
{
    return linear_op(g, x, p, at, xa, compute, y);
}

/* ---- rotary embedding --------------------------------------------------------------------- */

typedef struct rope_record {
    finch_rope_desc d;
    finch_tensor x;
} rope_record;

static int rope_backward(finch_graph *g, const void *rec)
{
    const rope_record *r = rec;
    finch_rope_desc d = r->d;
    int rc = finch_grad_of_output(g, &r->x, &d.x);
    if (rc || !d.x.buf) return rc;
    return check(g, API->rope_backward(DEV, &d), "rope backward");
}

finch_rope_desc finch_rope_desc_of(const finch_tensor *x, const finch_rope_params *p)
{
    finch_rope_desc d;
    memset(&d, 0, sizeof d);
    d.n_tokens = x->rows;
    d.n_heads = p->n_heads;
    d.head_dim = p->head_dim;
    d.rot_dim = p->rot_dim;
    d.dtype = x->dtype;
    d.x = x->data;
    d.ldx = x->ld;
    d.positions = p->positions;
    d.inv_freq = p->inv_freq;
    d.n_sections = p->n_sections > 0 ? p->n_sections : 1;
    if (p->n_sections > 0) memcpy(d.sections, p->sections, sizeof d.sections);
    else d.sections[0] = (int)(p->rot_dim / 2);
    d.attn_factor = p->attn_factor;
    return d;
}

static int rope_op(finch_graph *g, const finch_tensor *x, const finch_rope_params *p, int compute)
{
    if (x->cols != p->n_heads * p->head_dim) return internal("rope width");
    rope_record r;
    memset(&r, 0, sizeof r);
    r.d = finch_rope_desc_of(x, p);
    int rc = compute ? API->rope_forward(DEV, &r.d) : FINCH_OK;
    if (rc) return check(g, rc, "rope");
    if (!g->recording || !has_node(x)) return FINCH_OK;
    r.x = *x;
    return finch_graph_record(g, rope_backward, &r, sizeof r);
}

int finch_op_rope(finch_graph *g, const finch_tensor *x, const finch_rope_params *p) { return rope_op(g, x, p, 1); }

int finch_op_rope_tape_only(finch_graph *g, const finch_tensor *x, const finch_rope_params *p) { return rope_op(g, x, p, 0); }

/* ---- attention ---------------------------------------------------------------------------- */

typedef struct attention_record {
    finch_attention_desc d;
    finch_tensor q, k, v, o;
} attention_record;

/* Overwrite-only outputs: a slot for each input, scratch for one that needs no gradient. */
static int slot_or_scratch(finch_graph *g, const finch_tensor *t, finch_grad_slot *s)
{
    int rc = finch_grad_overwrite_slot(g, t, s);
    if (rc || s->dst.buf) return rc;
    return finch_arena_alloc(g->arena, (size_t)(t->rows * t->ld) * esize(t->dtype), &s->dst);
}

static int attention_backward(finch_graph *g, const void *rec)
{
    const attention_record *r = rec;
    finch_attention_desc d = r->d;
    int rc = finch_grad_of_output(g, &r->o, &d.dout);
    if (rc || !d.dout.buf) return rc;
    d.lddout = r->o.ld;
    finch_grad_slot sq, sk, sv;
    if ((rc = slot_or_scratch(g, &r->q, &sq)) || (rc = slot_or_scratch(g, &r->k, &sk)) ||
        (rc = slot_or_scratch(g, &r->v, &sv)))
        return rc;
    d.dq = sq.dst;
    d.lddq = r->q.ld;
    d.dk = sk.dst;
    d.lddk = r->k.ld;
    d.dv = sv.dst;
    d.lddv = r->v.ld;
    rc = API->attention_backward(DEV, &d);
    if (rc) return check(g, rc, "attention backward");
    if ((rc = finch_grad_commit(g, &r->q, &sq)) || (rc = finch_grad_commit(g, &r->k, &sk)) ||
        (rc = finch_grad_commit(g, &r->v, &sv)))
        return rc;
    return FINCH_OK;
}

/* at_o, at_lse absent: y and the log-sum-exp from the arena. */
static int attention_op(finch_graph *g, const finch_tensor *q, const finch_tensor *k, const finch_tensor *v,
                        const finch_attention_params *p, finch_dptr at_o, finch_dptr at_lse, int compute, finch_tensor *y)
{
    int req = has_node(q) || has_node(k) || has_node(v);
    int64_t width = p->n_heads * p->head_dim;
    int rc = finch_graph_tensor_at(g, q->dtype, q->rows, width, at_o, req, y);
    if (rc) return rc;
    attention_record r;
    memset(&r, 0, sizeof r);
    finch_attention_desc *d = &r.d;
    d->n_tokens = q->rows;
    d->n_seqs = p->n_seqs;
    d->max_seqlen = p->max_seqlen;
    d->cu_seqlens = p->cu_seqlens;
    d->n_heads = p->n_heads;
    d->n_kv_heads = p->n_kv_heads;
    d->head_dim = p->head_dim;
    d->dtype = q->dtype;
    d->q = q->data;
    d->ldq = q->ld;
    d->k = k->data;
    d->ldk = k->ld;
    d->v = v->data;
    d->ldv = v->ld;
    d->o = y->data;
    d->ldo = y->ld;
    d->scale = p->scale;
    d->softcap = p->softcap;
    d->causal = !p->bidirectional;
    d->window = p->window;
    d->lse = at_lse;
    if (!at_o.buf && (rc = finch_arena_alloc(g->arena, (size_t)(p->n_heads * q->rows) * sizeof(float), &d->lse))) return rc;
    if (compute && (rc = API->attention_forward(DEV, d))) return check(g, rc, "attention");
    if (!g->recording || !has_node(y)) return FINCH_OK;
    r.q = *q;
    r.k = *k;
    r.v = *v;
    r.o = *y;
    return finch_graph_record(g, attention_backward, &r, sizeof r);
}

int finch_op_attention(finch_graph *g, const finch_tensor *q, const finch_tensor *k, const finch_tensor *v,
                       const finch_attention_params *p, finch_tensor *y)
{
    return attention_op(g, q, k, v, p, finch_dptr_none(), finch_dptr_none(), 1, y);
}

int finch_op_attention_at(finch_graph *g, const finch_tensor *q, const finch_tensor *k, const finch_tensor *v,
                          const finch_attention_params *p, finch_dptr o, finch_dptr lse, int compute, finch_tensor *y)
{
    if (!o.buf || !lse.buf) return internal("attention output or log-sum-exp not given");
    return attention_op(g, q, k, v, p, o, lse, compute, y);
}

/* ---- gated unit and activations ----------------------------------------------------------- */

typedef struct glu_record {
    finch_activation act;
    finch_tensor gate, up, y;
} glu_record;

static int glu_backward(finch_graph *g, const void *rec)
{
    const glu_record *r = rec;
    finch_dptr dy;
    int rc = finch_grad_of_output(g, &r->y, &dy);
    if (rc || !dy.buf) return rc;
    finch_grad_slot sg, su;
    if ((rc = slot_or_scratch(g, &r->gate, &sg)) || (rc = slot_or_scratch(g, &r->up, &su))) return rc;
    rc = API->glu_backward(DEV, r->act, r->y.rows, r->y.cols, r->y.dtype, r->gate.data, r->gate.ld, r->up.data, r->up.ld, dy,
                           sg.dst, su.dst);
    if (rc) return check(g, rc, "gated unit backward");
    if ((rc = finch_grad_commit(g, &r->gate, &sg)) || (rc = finch_grad_commit(g, &r->up, &su))) return rc;
    return FINCH_OK;
}

int finch_op_glu(finch_graph *g, finch_activation act, const finch_tensor *gate, const finch_tensor *up, finch_tensor *y)
{
    if (gate->ld != up->ld) return internal("gate and up strides differ");
    int rc = finch_graph_tensor(g, gate->dtype, gate->rows, gate->cols, has_node(gate) || has_node(up), y);
    if (rc) return rc;
    rc = API->glu_forward(DEV, act, gate->rows, gate->cols, gate->dtype, gate->data, gate->ld, up->data, up->ld, y->data);
    if (rc) return check(g, rc, "gated unit");
    if (!g->recording || !has_node(y)) return FINCH_OK;
    glu_record r = {act, *gate, *up, *y};
    return finch_graph_record(g, glu_backward, &r, sizeof r);
}

typedef struct activation_record {
    finch_activation act;
    float param;
    finch_tensor x, y;
} activation_record;

static int activation_backward(finch_graph *g, const void *rec)
{
    const activation_record *r = rec;
    finch_dptr dy;
    int rc = finch_grad_of_output(g, &r->y, &dy);
    if (rc || !dy.buf) return rc;
    finch_grad_slot s;
    if ((rc = finch_grad_overwrite_slot(g, &r->x, &s)) || !s.dst.buf) return rc;
    rc = API->activation_backward(DEV, r->act, r->param, finch_tensor_numel(&r->x), r->x.dtype, r->x.data, dy, s.dst);
    if (rc) return check(g, rc, "activation backward");
    return finch_grad_commit(g, &r->x, &s);
}

int finch_op_activation(finch_graph *g, finch_activation act, float param, const finch_tensor *x, finch_tensor *y)
{
    if (!finch_tensor_contiguous(x)) return internal("activation of a strided view");
    int rc = finch_graph_tensor(g, x->dtype, x->rows, x->cols, has_node(x), y);
    if (rc) return rc;
    rc = API->activation_forward(DEV, act, param, finch_tensor_numel(x), x->dtype, x->data, y->data);
    if (rc) return check(g, rc, "activation");
    if (!g->recording || !has_node(y)) return FINCH_OK;
    activation_record r = {act, param, *x, *y};
    return finch_graph_record(g, activation_backward, &r, sizeof r);
}

/* ---- residual sum ------------------------------------------------------------------------- */

typedef struct add_record {
    finch_tensor a, b, y;
} add_record;

/* x's share of the gradient dy of the sum y: dy itself where x may take it (finch_grad_borrow), else
 * copied or added into x's gradient. */
static int pass_gradient(finch_graph *g, const finch_tensor *x, const finch_tensor *y, finch_dptr dy)
{
    if (finch_grad_borrow(g, x, y, dy)) return FINCH_OK;
    finch_dptr dx;
    int acc, rc = finch_grad_target(g, x, &dx, &acc);
    if (rc || !dx.buf) return rc;
    int64_t n = finch_tensor_numel(x);
    if (acc)
        rc = API->axpby(DEV, n, x->dtype, 1.0f, dy, 1.0f, dx, dx);
    else
        rc = API->copy(DEV, dx, dy, (size_t)n * esize(x->dtype));
    if (rc) return check(g, rc, "residual backward");
    finch_grad_written(g, x);
    return FINCH_OK;
}

static int add_backward(finch_graph *g, const void *rec)
{
    const add_record *r = rec;
    finch_dptr dy;
    int rc = finch_grad_of_output(g, &r->y, &dy);
    if (rc || !dy.buf) return rc;
    if ((rc = pass_gradient(g, &r->a, &r->y, dy))) return rc;
    return pass_gradient(g, &r->b, &r->y, dy);
}

/* Checks a residual sum's operands and allocates y (or takes dst). */
static int add_prepare(finch_graph *g, const finch_tensor *a, const finch_tensor *b, const finch_tensor *dst, finch_tensor *y)
{
    if (!finch_tensor_contiguous(a) || !finch_tensor_contiguous(b) || a->rows != b->rows || a->cols != b->cols)
        return internal("residual sum of mismatched tensors");
    if (dst) {
        *y = *dst;
        return FINCH_OK;
    }
    return finch_graph_tensor(g, a->dtype, a->rows, a->cols, has_node(a) || has_node(b), y);
}

/* Appends the sum's backward while the graph records and a gradient flows through it. */
static int add_keep(finch_graph *g, const finch_tensor *a, const finch_tensor *b, const finch_tensor *y)
{
    if (!g->recording || !has_node(y) || (!has_node(a) && !has_node(b))) return FINCH_OK;
    add_record r = {*a, *b, *y};
    return finch_graph_record(g, add_backward, &r, sizeof r);
}

/* compute 0: y and its tape entry only (finch_op_add_tape_only). */
static int add_op(finch_graph *g, const finch_tensor *a_in, const finch_tensor *b_in, const finch_tensor *dst, int compute,
                  finch_tensor *y)
{
    finch_tensor a_copy = *a_in, b_copy = *b_in; /* y may alias an input */
    const finch_tensor *a = &a_copy, *b = &b_copy;
    int rc = add_prepare(g, a, b, dst, y);
    if (rc) return rc;
    if (compute && (rc = API->axpby(DEV, finch_tensor_numel(a), a->dtype, 1.0f, a->data, 1.0f, b->data, y->data)))
        return check(g, rc, "residual sum");
    return add_keep(g, a, b, y);
}

int finch_op_add(finch_graph *g, const finch_tensor *a, const finch_tensor *b, const finch_tensor *dst, finch_tensor *y)
{
    return add_op(g, a, b, dst, 1, y);
}

int finch_op_add_tape_only(finch_graph *g, const finch_tensor *a, const finch_tensor *b, const finch_tensor *dst, finch_tensor *y)
{
    return add_op(g, a, b, dst, 0, y);
}

int finch_op_add_rmsnorm(finch_graph *g, const finch_tensor *a_in, const finch_tensor *b_in, const finch_tensor *dst,
                         finch_tensor *sum, const finch_param *w, float weight_offset, float eps, finch_tensor *y)
{
    if (!API->add_rmsnorm_forward) {
        int rc = finch_op_add(g, a_in, b_in, dst, sum);
        return rc ? rc : finch_op_rmsnorm(g, sum, w, weight_offset, eps, y);
    }
    finch_tensor a_copy = *a_in, b_copy = *b_in, s; /* sum may alias an input */
    const finch_tensor *a = &a_copy, *b = &b_copy;
    norm_record r;
    int rc = add_prepare(g, a, b, dst, &s);
    if (!rc) rc = norm_prepare(g, &s, w, NULL, weight_offset, 0, y, &r);
    if (rc) return rc;
    *sum = s;
    rc = API->add_rmsnorm_forward(DEV, a->rows, a->cols, a->dtype, a->data, b->data, s.data, r.w_type, r.w, weight_offset,
                                  eps, y->data, r.rstd);
    if (rc) return check(g, rc, "residual sum and rmsnorm");
    if ((rc = add_keep(g, a, b, &s))) return rc;
    return norm_keep(g, &r);
}

/* ---- language-model head with f32 logits -------------------------------------------------- */

typedef struct logits_record {
    finch_tensor h, logits;
    finch_dtype w_type;
    finch_dptr w, dw;
    int64_t vocab;
} logits_record;

static finch_gemm_desc gemm_desc(void)
{
    finch_gemm_desc d;
    memset(&d, 0, sizeof d);
    d.batch = 1;
    d.alpha = 1.0f;
    return d;
}

static int logits_backward(finch_graph *g, const void *rec)
{
    const logits_record *r = rec;
    finch_dptr dlogits, dh;
    int acc, rc = finch_grad_of_output(g, &r->logits, &dlogits);
    if (rc || !dlogits.buf) return rc;
    int64_t n = r->h.rows, dim = r->h.cols, vocab = r->vocab;
    if ((rc = finch_grad_target(g, &r->h, &dh, &acc))) return rc;
    if (dh.buf) { /* dh = dlogits W */
        finch_gemm_desc d = gemm_desc();
        d.m = n; d.n = dim; d.k = vocab;
        d.a_type = FINCH_DTYPE_F32; d.a = dlogits; d.lda = vocab;
        d.b_type = r->w_type; d.b = r->w; d.ldb = dim;
        d.c_type = r->h.dtype; d.c = dh; d.ldc = r->h.ld;
        d.beta = acc ? 1.0f : 0.0f;
        if ((rc = API->gemm(DEV, &d))) return check(g, rc, "lm head backward");
        finch_grad_written(g, &r->h);
    }
    if (r->dw.buf) { /* dW += dlogits^T h */
        finch_gemm_desc d = gemm_desc();
        d.trans_a = 1;
        d.m = vocab; d.n = dim; d.k = n;
        d.a_type = FINCH_DTYPE_F32; d.a = dlogits; d.lda = vocab;
        d.b_type = r->h.dtype; d.b = r->h.data; d.ldb = r->h.ld;
        d.c_type = FINCH_DTYPE_F32; d.c = r->dw; d.ldc = dim;
        d.beta = 1.0f;
        if ((rc = API->gemm(DEV, &d))) return check(g, rc, "lm head weight gradient");
    }
    return FINCH_OK;
}

int finch_op_logits(finch_graph *g, const finch_tensor *h, const finch_param *w, finch_tensor *logits)
{
    int64_t vocab = w->shape[0], dim = w->shape[1];
    if (h->cols != dim) return internal("lm head width");
    int rc = finch_graph_tensor(g, FINCH_DTYPE_F32, h->rows, vocab, has_node(h) || w->grad.buf, logits);
    if (rc) return rc;
    finch_gemm_desc d = gemm_desc();
    d.trans_b = 1;
    d.m = h->rows; d.n = vocab; d.k = dim;
    d.a_type = h->dtype; d.a = h->data; d.lda = h->ld;
    d.b_type = w->dtype; d.b = w->data; d.ldb = dim;
    d.c_type = FINCH_DTYPE_F32; d.c = logits->data; d.ldc = vocab;
    if ((rc = API->gemm(DEV, &d))) return check(g, rc, "lm head");
    if (!g->recording || !has_node(logits)) return FINCH_OK;
    logits_record r = {*h, *logits, w->dtype, w->data, w->grad, vocab};
    return finch_graph_record(g, logits_backward, &r, sizeof r);
}
