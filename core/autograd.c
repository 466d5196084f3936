#include "core/autograd.h"
#include "core/error.h"

#include <stdlib.h>
#include <string.h>

void finch_graph_init(finch_graph *g, const finch_backend *be, finch_arena *arena)
{
    memset(g, 0, sizeof *g);
    g->be = be;
    g->arena = arena;
}

void finch_graph_free(finch_graph *g)
{
    free(g->nodes);
    free(g->tape);
    free(g->records);
    memset(g, 0, sizeof *g);
}

void finch_graph_clear(finch_graph *g)
{
    g->n_nodes = 0;
    g->n_tape = 0;
    g->n_records = 0;
}

finch_graph_mark finch_graph_get_mark(const finch_graph *g)
{
    finch_graph_mark m = {g->n_nodes, g->n_tape, g->n_records};
    return m;
}

void finch_graph_reset(finch_graph *g, finch_graph_mark m)
{
    g->n_nodes = m.n_nodes;
    g->n_tape = m.n_tape;
    g->n_records = m.n_records;
}

int finch_device_error(const finch_backend *be, int rc, const char *what)
{
    const char *msg = be->api->last_error ? be->api->last_error() : "";
    return finch_error(rc ? rc : FINCH_ERR_DEVICE, "%s on the %s backend failed: %s", what, be->name,
                       msg && *msg ? msg : "(no message)");
}

static int grow(void **p, int *cap, int need, size_t elem)
{
    if (need <= *cap) return FINCH_OK;
    int n = *cap ? *cap : 256;
    while (n < need) n *= 2;
    void *q = realloc(*p, (size_t)n * elem);
    if (!q) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "autograd: out of host memory");
    *p = q;
    *cap = n;
    return FINCH_OK;
}

static int new_node(finch_graph *g, finch_dtype dtype, int64_t rows, int64_t ld, finch_dptr grad, int *out)
{
    int rc = grow((void **)&g->nodes, &g->cap_nodes, g->n_nodes + 1, sizeof *g->nodes);
    if (rc) return rc;
    finch_node *n = &g->nodes[g->n_nodes];
    n->grad = grad;
    n->dtype = dtype;
    n->rows = rows;
    n->ld = ld;
    n->state = FINCH_GRAD_NONE;
    n->sole_reader = 0;
    *out = g->n_nodes++;
    return FINCH_OK;
}

int finch_graph_tensor_at(finch_graph *g, finch_dtype dtype, int64_t rows, int64_t cols, finch_dptr data, int requires_grad,
                          finch_tensor *out)
{
    if (!data.buf) {
        int rc = finch_arena_alloc(g->arena, (size_t)(rows * cols) * finch_dtype_size(dtype), &data);
        if (rc) return rc;
    }
    memset(out, 0, sizeof *out);
    out->dtype = dtype;
    out->rows = rows;
    out->cols = cols;
    out->ld = cols;
    out->data = data;
    out->node = -1;
    if (requires_grad && g->want_grad) return new_node(g, dtype, rows, cols, finch_dptr_none(), &out->node);
    return FINCH_OK;
}

int finch_graph_tensor(finch_graph *g, finch_dtype dtype, int64_t rows, int64_t cols, int requires_grad,
                       finch_tensor *out)
{
    return finch_graph_tensor_at(g, dtype, rows, cols, finch_dptr_none(), requires_grad, out);
}

int finch_graph_bind_grad(finch_graph *g, finch_tensor *t, finch_dptr grad)
{
    t->node_off = 0;
    return new_node(g, t->dtype, t->rows, t->ld, grad, &t->node);
}

void finch_graph_rebind_grad(finch_graph *g, const finch_tensor *t, finch_dptr grad)
{
    g->nodes[t->node].grad = grad;
    g->nodes[t->node].state = FINCH_GRAD_NONE;
}

int finch_graph_record(finch_graph *g, finch_backward_fn fn, const void *record, size_t size)
{
    int rc = grow((void **)&g->tape, &g->cap_tape, g->n_tape + 1, sizeof *g->tape);
    if (rc) return rc;
    size_t off = (g->n_records + 15) & ~(size_t)15;
    if (off + size > g->cap_records) {
        size_t cap = g->cap_records ? g->cap_records : 65536;
        while (cap < off + size) cap *= 2;
        unsigned char *p = realloc(g->records, cap);
        if (!p) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "autograd: out of host memory");
        g->records = p;
        g->cap_records = cap;
    }
    memcpy(g->records + off, record, size);
    g->n_records = off + size;
    g->tape[g->n_tape].backward = fn;
    g->tape[g->n_tape].record_offset = off;
    g->n_tape++;
    return FINCH_OK;
}

int finch_graph_backward(finch_graph *g, int first)
{
    for (int i = g->n_tape - 1; i >= first; i--) {
        int rc = g->tape[i].backward(g, g->records + g->tape[i].record_offset);
        if (rc) return rc;
    }
    return FINCH_OK;
}

static size_t node_bytes(const finch_node *n) { return (size_t)(n->rows * n->ld) * finch_dtype_size(n->dtype); }

static finch_dptr view_of(const finch_node *n, const finch_tensor *t, finch_dptr base)
{
    return finch_dptr_at(base, (size_t)t->node_off * finch_dtype_size(n->dtype));
}

int finch_grad_of_output(finch_graph *g, const finch_tensor *t, finch_dptr *dy)
{
    *dy = finch_dptr_none();
    if (t->node < 0) return FINCH_OK;
    const finch_node *n = &g->nodes[t->node];
    if (n->state == FINCH_GRAD_WRITTEN) *dy = view_of(n, t, n->grad);
    return FINCH_OK;
}

static int ensure_grad(finch_graph *g, const finch_tensor *t)
{
    finch_node *n = &g->nodes[t->node];
    if (!n->grad.buf) {
        int rc = finch_arena_alloc(g->arena, node_bytes(n), &n->grad);
        if (rc) return rc;
    }
    int whole = t->node_off == 0 && ((t->cols == n->ld && t->rows == n->rows) ||
                                     (t->ld == t->cols && t->rows * t->cols == n->rows * n->ld));
    int partial = !whole;
    if (n->state == FINCH_GRAD_NONE && partial) {
        /* A view writes only its columns: the rest of the node must read as zero. */
        const finch_plugin_api *api = g->be->api;
        int rc = api->fill(g->be->dev, g->be->stream, n->grad, n->dtype, n->rows * n->ld, 0.0f);
        if (rc) return finch_device_error(g->be, rc, "clearing a gradient");
        n->state = FINCH_GRAD_ZEROED;
    }
    return FINCH_OK;
}

int finch_grad_target(finch_graph *g, const finch_tensor *t, finch_dptr *dx, int *accumulate)
{
    *dx = finch_dptr_none();
    *accumulate = 0;
    if (t->node < 0) return FINCH_OK;
    int rc = ensure_grad(g, t);
    if (rc) return rc;
    const finch_node *n = &g->nodes[t->node];
    *dx = view_of(n, t, n->grad);
    *accumulate = n->state == FINCH_GRAD_WRITTEN;
    return FINCH_OK;
}

void finch_grad_written(finch_graph *g, const finch_tensor *t)
{
    if (t->node >= 0) g->nodes[t->node].state = FINCH_GRAD_WRITTEN;
}

void finch_graph_sole_reader(finch_graph *g, const finch_tensor *t)
{
    if (t->node >= 0) g->nodes[t->node].sole_reader = 1;
}

int finch_grad_borrow(finch_graph *g, const finch_tensor *t, const finch_tensor *y, finch_dptr dy)
{
    if (t->node < 0) return 0;
    finch_node *n = &g->nodes[t->node];
    int same_layout = t->node_off == 0 && t->rows == n->rows && t->cols == n->ld && finch_tensor_contiguous(t) &&
                      finch_tensor_contiguous(y) && y->rows == t->rows && y->cols == t->cols && y->dtype == n->dtype;
    if (!n->sole_reader || n->grad.buf || n->state != FINCH_GRAD_NONE || !same_layout) return 0;
    n->grad = dy;
    n->state = FINCH_GRAD_WRITTEN;
    return 1;
}

int finch_grad_overwrite_slot(finch_graph *g, const finch_tensor *t, finch_grad_slot *slot)
{
    slot->dst = finch_dptr_none();
    slot->scratch = finch_dptr_none();
    slot->node = t->node;
    if (t->node < 0) return FINCH_OK;
    int acc = 0;
    int rc = finch_grad_target(g, t, &slot->dst, &acc);
    if (rc || !acc) return rc;
    const finch_node *n = &g->nodes[t->node];
    rc = finch_arena_alloc(g->arena, node_bytes(n), &slot->scratch);
    if (rc) return rc;
    rc = g->be->api->fill(g->be->dev, g->be->stream, slot->scratch, n->dtype, n->rows * n->ld, 0.0f);
    if (rc) return finch_device_error(g->be, rc, "clearing a gradient");
    slot->dst = view_of(n, t, slot->scratch);
    return FINCH_OK;
}

int finch_grad_commit(finch_graph *g, const finch_tensor *t, const finch_grad_slot *slot)
{
    if (t->node < 0) return FINCH_OK;
    finch_node *n = &g->nodes[t->node];
    if (slot->scratch.buf) {
        int rc = g->be->api->axpby(g->be->dev, g->be->stream, n->rows * n->ld, n->dtype, 1.0f, slot->scratch, 1.0f,
                                   n->grad, n->grad);
        if (rc) return finch_device_error(g->be, rc, "accumulating a gradient");
    }
    n->state = FINCH_GRAD_WRITTEN;
    return FINCH_OK;
}
