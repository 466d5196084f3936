#include "core/devmem.h"
#include "core/error.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void finch_devmem_init(finch_devmem *d, const finch_backend *be)
{
    memset(d, 0, sizeof *d);
    d->be = be;
}

int finch_devmem_alloc(finch_devmem *d, size_t bytes, const char *what, finch_plugin_buffer **out)
{
    *out = NULL;
    if (d->n == d->cap) {
        int cap = d->cap ? 2 * d->cap : 256;
        finch_devmem_entry *e = realloc(d->entries, (size_t)cap * sizeof *e);
        if (!e) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
        d->entries = e;
        d->cap = cap;
    }
    finch_plugin_buffer *buf = NULL;
    if (d->be->api->alloc(d->be->dev, bytes ? bytes : 1, &buf) != FINCH_OK)
        return finch_error(FINCH_ERR_OUT_OF_MEMORY, "cannot allocate %zu bytes on the %s device for %s: %s", bytes, d->be->name,
                           what, d->be->api->last_error());
    finch_devmem_entry *e = &d->entries[d->n++];
    e->buf = buf;
    e->bytes = bytes;
    snprintf(e->what, sizeof e->what, "%s", what);
    d->bytes += bytes;
    *out = buf;
    return FINCH_OK;
}

int finch_devmem_find(const finch_devmem *d, const finch_plugin_buffer *buf)
{
    /* Newest first: a free usually follows its allocation closely (staging buffers). */
    for (int i = d->n - 1; i >= 0; i--)
        if (d->entries[i].buf == buf) return i;
    return -1;
}

void finch_devmem_free(finch_devmem *d, finch_plugin_buffer *buf)
{
    if (!buf) return;
    int i = finch_devmem_find(d, buf);
    d->be->api->free(d->be->dev, buf);
    if (i < 0) return;  /* not ours: freed all the same, nothing to unlist */
    d->bytes -= d->entries[i].bytes;
    d->entries[i] = d->entries[--d->n];
}

void finch_devmem_release_all(finch_devmem *d)
{
    for (int i = 0; i < d->n; i++) d->be->api->free(d->be->dev, d->entries[i].buf);
    free(d->entries);
    const finch_backend *be = d->be;
    finch_devmem_init(d, be);
}
