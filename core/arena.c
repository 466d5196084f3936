#include "core/arena.h"
#include "core/error.h"

#include <string.h>

void finch_arena_init(finch_arena *a, const finch_backend *be)
{
    memset(a, 0, sizeof *a);
    a->be = be;
}

static void release_chunks(finch_arena *a)
{
    for (int i = 0; i < a->n_chunks; i++)
        a->be->api->free(a->be->dev, a->chunks[i].buf);
    a->n_chunks = 0;
    a->generation++;
}

static int add_chunk(finch_arena *a, size_t cap)
{
    if (a->n_chunks == FINCH_ARENA_MAX_CHUNKS)
        return finch_error(FINCH_ERR_OUT_OF_MEMORY, "activation arena: more than %d chunks", FINCH_ARENA_MAX_CHUNKS);
    finch_plugin_buffer *buf = NULL;
    if (a->be->api->alloc(a->be->dev, cap, &buf) != FINCH_OK)
        return finch_error(FINCH_ERR_OUT_OF_MEMORY, "activation arena: cannot allocate %zu bytes on the %s device: %s",
                           cap, a->be->name, a->be->api->last_error());
    a->chunks[a->n_chunks].buf = buf;
    a->chunks[a->n_chunks].cap = cap;
    a->chunks[a->n_chunks].used = 0;
    a->n_chunks++;
    a->generation++;
    return FINCH_OK;
}

int finch_arena_begin(finch_arena *a)
{
    if (a->n_chunks > 1) {
        /* The last step outgrew its first chunk: one buffer of its peak size serves the next ones. */
        size_t peak = a->peak;
        release_chunks(a);
        int rc = add_chunk(a, peak);
        if (rc) return rc;
    }
    for (int i = 0; i < a->n_chunks; i++) a->chunks[i].used = 0;
    a->in_use = 0;
    return FINCH_OK;
}

int finch_arena_alloc(finch_arena *a, size_t bytes, finch_dptr *out)
{
    size_t need = (bytes + FINCH_ARENA_ALIGN - 1) & ~(size_t)(FINCH_ARENA_ALIGN - 1);
    if (need == 0) need = FINCH_ARENA_ALIGN;
    int at = 0;
    while (at < a->n_chunks && a->chunks[at].cap - a->chunks[at].used < need) at++;
    if (at == a->n_chunks) {
        /* Grow by a quarter of what is held (at least 16 MiB, at least this allocation): the first
         * step of a shape overshoots its peak by at most about that much, where doubling could hold
         * nearly twice the peak until the next step replaces the chunks with one buffer. Near the
         * device's limit (the longest contexts) the overshoot may not fit where this allocation
         * alone does. */
        size_t total = 0;
        for (int i = 0; i < a->n_chunks; i++) total += a->chunks[i].cap;
        size_t cap = total / 4 > need ? total / 4 : need;
        if (cap < ((size_t)16 << 20)) cap = (size_t)16 << 20;
        int rc = add_chunk(a, cap);
        if (rc && cap > need) rc = add_chunk(a, need);
        if (rc) return rc;
    }
    finch_arena_chunk *c = &a->chunks[at];
    out->buf = c->buf;
    out->offset = c->used;
    c->used += need;
    a->in_use += need;
    if (a->in_use > a->peak) a->peak = a->in_use;
    return FINCH_OK;
}

finch_arena_mark finch_arena_get_mark(const finch_arena *a)
{
    finch_arena_mark m;
    m.n_chunks = a->n_chunks;
    for (int i = 0; i < a->n_chunks; i++) m.used[i] = a->chunks[i].used;
    m.in_use = a->in_use;
    return m;
}

void finch_arena_reset(finch_arena *a, finch_arena_mark m)
{
    for (int i = 0; i < a->n_chunks; i++) a->chunks[i].used = i < m.n_chunks ? m.used[i] : 0;
    a->in_use = m.in_use;
}

void finch_arena_free(finch_arena *a)
{
    release_chunks(a);
    a->in_use = a->peak = 0;
}
