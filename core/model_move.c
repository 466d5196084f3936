/* Moving a loaded model to another backend between steps (finch_model_move).
 *
 * Everything the model and its owners (the optimizer, generation sessions) keep on the device beyond
 * a step is a buffer of the model's ledger (core/devmem.h), and every pointer into those buffers is
 * reported by a visitor. A move is therefore three loops over records, whatever the features in use
 * (dense or 4-bit weights, a vision tower, adapters, gradients, AdamW or 8-bit AdamW state):
 *
 *   1. check: every reported pointer is a ledger buffer, and every owner accepts the target;
 *   2. copy:  each ledger buffer is allocated on the target and its bytes copied through the host;
 *   3. commit: the per-step arena and the generation caches are dropped on the old device, every
 *      reported pointer is rewritten to its new buffer, the old buffers are freed and the model
 *      takes the new backend.
 *
 * Steps 1 and 2 change nothing the model uses: when the target fails (out of memory, a failed write,
 * a device that does not open because its kernels do not build) its new buffers are freed and the
 * model is exactly as it was, still usable where it is. When the OLD device fails while its bytes
 * are read (a lost device), nothing is moved either, and the error says the state on that device is
 * lost: the model cannot compute any more and must be freed and loaded again (a trainer resumes from
 * its last checkpoint). Step 3 cannot fail. */
#include "core/error.h"
#include "core/model.h"
#include "core/model_quant.h"
#include "core/vision_tower.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STAGING_BYTES ((size_t)64 << 20)

/* ---- owners ------------------------------------------------------------------------------------ */

int finch_model_add_owner(finch_model *m, const finch_model_owner *o)
{
    finch_model_owner *p = realloc(m->owners, (size_t)(m->n_owners + 1) * sizeof *p);
    if (!p) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    m->owners = p;
    m->owners[m->n_owners++] = *o;
    return FINCH_OK;
}

void finch_model_remove_owner(finch_model *m, void *self)
{
    for (int i = 0; i < m->n_owners; i++)
        if (m->owners[i].self == self) {
            memmove(&m->owners[i], &m->owners[i + 1], (size_t)(m->n_owners - i - 1) * sizeof *m->owners);
            m->n_owners--;
            return;
        }
}

/* ---- the model's own pointers ------------------------------------------------------------------ */

static void visit_param(finch_param *p, finch_devref_fn fn, void *ctx)
{
    fn(&p->data.buf, ctx);
    fn(&p->grad.buf, ctx);
}

void finch_model_visit_devrefs(finch_model *m, finch_devref_fn fn, void *ctx)
{
    visit_param(&m->embed, fn, ctx);
    visit_param(&m->final_norm, fn, ctx);
    visit_param(&m->final_norm_b, fn, ctx);
    visit_param(&m->lm_head_own, fn, ctx);
    for (int64_t l = 0; m->layers && l < m->cfg.n_layers; l++) {
        finch_layer *ly = &m->layers[l];
        finch_param *norms[] = {&ly->attn_norm, &ly->attn_norm_b, &ly->mlp_norm, &ly->mlp_norm_b,
                                &ly->post_attn_norm, &ly->post_ffn_norm, &ly->q_norm, &ly->k_norm};
        for (size_t i = 0; i < sizeof norms / sizeof norms[0]; i++) visit_param(norms[i], fn, ctx);
    }
    for (int i = 0; i < m->n_linears; i++) {   /* the decoder's and the vision tower's */
        finch_linear_module *lin = m->linears[i];
        visit_param(&lin->weight, fn, ctx);
        visit_param(&lin->bias, fn, ctx);
        visit_param(&lin->lora_a, fn, ctx);
        visit_param(&lin->lora_b, fn, ctx);
        if (lin->quant) {
            fn(&lin->quant->w.data.buf, ctx);
            fn(&lin->quant->w.absmax.buf, ctx);
            fn(&lin->quant->w.code.buf, ctx);
        }
    }
    if (m->vision) finch_vision_visit_devrefs(m->vision, fn, ctx);
    fn(&m->persistent, ctx);
    fn(&m->grad_arena, ctx);
    fn(&m->loss_buf.buf, ctx);
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2; j++) fn(&m->rope_inv[i][j].buf, ctx);
}

static void visit_all(finch_model *m, finch_devref_fn fn, void *ctx)
{
    finch_model_visit_devrefs(m, fn, ctx);
    for (int i = 0; i < m->n_owners; i++)
        if (m->owners[i].visit) m->owners[i].visit(m->owners[i].self, fn, ctx);
}

/* ---- the move ---------------------------------------------------------------------------------- */

typedef struct move_ctx {
    const finch_devmem *mem;
    finch_plugin_buffer **to;    /* [mem->n]: the new buffer of ledger entry i */
    int stray;                   /* pointers found outside the ledger */
} move_ctx;

static void check_ref(finch_plugin_buffer **ref, void *ctx)
{
    move_ctx *c = ctx;
    if (*ref && finch_devmem_find(c->mem, *ref) < 0) c->stray++;
}

static void rebind_ref(finch_plugin_buffer **ref, void *ctx)
{
    move_ctx *c = ctx;
    int i = *ref ? finch_devmem_find(c->mem, *ref) : -1;
    if (i >= 0) *ref = c->to[i];  /* a pointer visited twice is already new: not in the old ledger */
}

static void describe(const finch_backend *be, char *dst, size_t size)
{
    snprintf(dst, size, "%s:%d", be->name, be->device_index);
}

/* Copies ledger entry e from the model's device to `to` through host staging. *old_failed says which
 * side failed. */
static int copy_entry(const finch_model *m, const finch_devmem_entry *e, const finch_backend *to, finch_plugin_buffer *dst,
                      unsigned char *staging, int *old_failed)
{
    const finch_backend *from = m->be;
    for (size_t at = 0; at < e->bytes; at += STAGING_BYTES) {
        size_t n = e->bytes - at < STAGING_BYTES ? e->bytes - at : STAGING_BYTES;
        if (from->api->read(from->dev, from->stream, (finch_dptr){e->buf, at}, staging, n)) {
            *old_failed = 1;
            return finch_device_error(from, FINCH_ERR_DEVICE, "reading");
        }
        if (to->api->write(to->dev, to->stream, (finch_dptr){dst, at}, staging, n))
            return finch_device_error(to, FINCH_ERR_DEVICE, "writing");
    }
    return FINCH_OK;
}

int finch_model_move_backend(finch_model *m, const finch_backend *to, int take)
{
    char from_name[64], to_name[64];
    describe(m->be, from_name, sizeof from_name);
    describe(to, to_name, sizeof to_name);
    move_ctx c = {&m->mem, NULL, 0};
    visit_all(m, check_ref, &c);
    if (c.stray)
        return finch_error(FINCH_ERR_STATE, "moving the model from %s to %s: %d device pointer(s) are outside the model's ledger "
                           "(an internal error: some state could not be moved)", from_name, to_name, c.stray);
    for (int i = 0; i < m->n_owners; i++) {
        int rc = m->owners[i].check ? m->owners[i].check(m->owners[i].self, to) : FINCH_OK;
        if (rc) return finch_error_prefix(rc, "moving the model from %s to %s: ", from_name, to_name);
    }
    /* Pending work on the old device finishes first: its buffers are read next. */
    if (m->be->api->synchronize(m->be->dev, m->be->stream)) {
        finch_device_error(m->be, FINCH_ERR_DEVICE, "synchronize");
        return finch_error_prefix(FINCH_ERR_DEVICE,
                                  "moving the model from %s to %s: the %s device failed; the model's state on it is lost (free "
                                  "the model and load it again; a trainer resumes from its last checkpoint): ",
                                  from_name, to_name, from_name);
    }

    int n = m->mem.n, done = 0, old_failed = 0, rc = FINCH_OK;
    size_t biggest = 0;
    for (int i = 0; i < n; i++)
        if (m->mem.entries[i].bytes > biggest) biggest = m->mem.entries[i].bytes;
    size_t staging_bytes = biggest < STAGING_BYTES ? biggest : STAGING_BYTES;
    c.to = calloc((size_t)n + 1, sizeof *c.to);
    unsigned char *staging = malloc(staging_bytes + 1);
    if (!c.to || !staging) rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    for (; !rc && done < n; done++) {
        const finch_devmem_entry *e = &m->mem.entries[done];
        if (to->api->alloc(to->dev, e->bytes ? e->bytes : 1, &c.to[done]) != FINCH_OK) {
            rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "cannot allocate %zu bytes for %s: %s", e->bytes, e->what,
                             to->api->last_error());
            break;
        }
        rc = copy_entry(m, e, to, c.to[done], staging, &old_failed);
        if (rc) finch_error_prefix(rc, "%s: ", e->what);
    }
    if (!rc && to->api->synchronize(to->dev, to->stream)) rc = finch_device_error(to, FINCH_ERR_DEVICE, "synchronize");
    free(staging);
    if (rc) {
        for (int i = 0; i < n; i++)
            if (c.to[i]) to->api->free(to->dev, c.to[i]);
        free(c.to);
        if (old_failed)
            return finch_error_prefix(FINCH_ERR_DEVICE,
                                      "moving the model from %s to %s: the %s device failed while its memory was read; the model's "
                                      "state on it is lost (free the model and load it again; a trainer resumes from its last "
                                      "checkpoint): ", from_name, to_name, from_name);
        return finch_error_prefix(rc, "moving the model from %s to %s (the model stays on %s, unchanged): ", from_name, to_name,
                                  from_name);
    }

    /* Commit: nothing below can fail. Per-device state that does not move goes first, on the old device. */
    for (int i = 0; i < m->n_owners; i++)
        if (m->owners[i].release) m->owners[i].release(m->owners[i].self);
    finch_model_offload_release(m);   /* page-locked by the old backend; waits for the copies' stream */
    finch_arena_free(&m->arena);
    finch_graph_clear(&m->graph);
    m->logits = finch_dptr_none();
    m->logits_count = 0;
    visit_all(m, rebind_ref, &c);
    for (int i = 0; i < n; i++) {
        m->be->api->free(m->be->dev, m->mem.entries[i].buf);
        m->mem.entries[i].buf = c.to[i];
    }
    free(c.to);
    if (m->backend_owned) finch_backend_close(&m->backend);
    m->backend = *to;
    m->backend_owned = take;
    m->weights_version++;   /* generation caches are gone */
    return FINCH_OK;
}

/* ---- the public calls -------------------------------------------------------------------------- */

/* "NAME" or "NAME:INDEX" naming the device be is. */
static int spec_names(const char *spec, const finch_backend *be)
{
    if (!be->api) return 0;
    const char *colon = strchr(spec, ':');
    size_t len = colon ? (size_t)(colon - spec) : strlen(spec);
    if (len != strlen(be->name) || strncmp(spec, be->name, len)) return 0;
    if (!colon) return be->device_index == 0;
    char *end = NULL;
    long index = strtol(colon + 1, &end, 10);
    return colon[1] >= '0' && colon[1] <= '9' && !*end && index == be->device_index;
}

finch_status finch_model_move(finch_model *m, const char *backend)
{
    if (!m || !backend) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_model_move: NULL argument");
    if (spec_names(backend, m->be)) return FINCH_OK;   /* already there */
    if (spec_names(backend, &m->rt->backend)) return (finch_status)finch_model_move_backend(m, &m->rt->backend, 0);
    finch_backend to;
    int rc = finch_backend_open(m->rt->registry, backend, &to);
    if (rc) {
        char from_name[64];
        describe(m->be, from_name, sizeof from_name);
        return finch_error_prefix(rc, "moving the model to '%s' (the model stays on %s, unchanged): ", backend, from_name);
    }
    if (to.api == m->be->api && to.device_index == m->be->device_index) {   /* "auto" naming where it is */
        finch_backend_close(&to);
        return FINCH_OK;
    }
    if (to.api == m->rt->backend.api && to.device_index == m->rt->backend.device_index) {
        finch_backend_close(&to);
        return (finch_status)finch_model_move_backend(m, &m->rt->backend, 0);
    }
    rc = finch_model_move_backend(m, &to, 1);
    if (rc) finch_backend_close(&to);
    return (finch_status)rc;
}

finch_status finch_model_device(const finch_model *m, finch_device_report *out)
{
    if (!m || !out) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_model_device: NULL argument");
    memset(out, 0, sizeof *out);
    int n = finch_registry_device_count(m->rt->registry);
    for (int i = 0; i < n; i++) {
        finch_device_report d;
        if (finch_registry_device_report(m->rt->registry, i, &d) == FINCH_OK && d.index == m->be->device_index &&
            !strcmp(d.backend, m->be->name)) {
            *out = d;
            break;
        }
    }
    snprintf(out->backend, sizeof out->backend, "%s", m->be->name);
    out->index = m->be->device_index;
    uint64_t free_b = 0, total_b = 0;
    if (m->be->api->memory_info(m->be->dev, &free_b, &total_b) == FINCH_OK) {
        out->free_memory = free_b;
        out->total_memory = total_b;
    }
    return FINCH_OK;
}

uint64_t finch_model_device_bytes(const finch_model *m) { return m ? (uint64_t)m->mem.bytes : 0; }
