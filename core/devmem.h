/* The ledger of a model's device memory: every allocation that lives longer than one step (weights,
 * 4-bit weights, adapters, gradients, optimizer state, RoPE tables) is made through it, so the model
 * can list, count and move all of it (core/model_move.c). Per-step memory (the arena) and generation
 * caches are not in it: they are dropped, not moved.
 *
 * Every place that keeps a pointer into a ledger buffer reports it to a visitor (finch_devref_fn):
 * moving the model to another backend copies each ledger buffer to the new device and rewrites every
 * reported pointer, one loop over records, whatever feature the memory belongs to. */
#ifndef FINCH_CORE_DEVMEM_H
#define FINCH_CORE_DEVMEM_H

#include "backends/backend.h"

typedef struct finch_devmem_entry {
    finch_plugin_buffer *buf;
    size_t bytes;
    char what[96];          /* for messages: "model.layers.0.self_attn.q_proj.weight", "optimizer state of ..." */
} finch_devmem_entry;

typedef struct finch_devmem {
    const finch_backend *be;  /* where the buffers live (the model's backend) */
    finch_devmem_entry *entries;
    int n, cap;
    size_t bytes;             /* the sum of entries' bytes */
} finch_devmem;

void finch_devmem_init(finch_devmem *d, const finch_backend *be);
/* FINCH_ERR_OUT_OF_MEMORY naming `what` and the backend when the device refuses. */
int finch_devmem_alloc(finch_devmem *d, size_t bytes, const char *what, finch_plugin_buffer **out);
/* Frees a ledger buffer (NULL is ignored). */
void finch_devmem_free(finch_devmem *d, finch_plugin_buffer *buf);
/* Index of buf in the ledger, or -1. */
int finch_devmem_find(const finch_devmem *d, const finch_plugin_buffer *buf);
/* Frees every buffer still listed (the model's teardown). */
void finch_devmem_release_all(finch_devmem *d);

/* A visitor over the places that hold a device buffer handle: a finch_dptr's buf, a bare
 * finch_plugin_buffer *. The visitor may rewrite *ref. */
typedef void (*finch_devref_fn)(finch_plugin_buffer **ref, void *ctx);

#endif
