/* A bump arena over device buffers for the activations and gradients of one step.
 *
 * Allocation is a pointer bump at the end of the first chunk with room for it (first fit over the
 * chunks' free tails, so the tail a large tensor skipped still serves the smaller ones after it);
 * when none has room a new chunk is added, a quarter of the size held (only the allocation itself
 * when the device cannot spare that). finch_arena_begin() starts a step: if the previous step needed
 * more than one chunk, the chunks are replaced by a single buffer as large as that step's peak, so a
 * step with the same shapes as the last one never allocates device memory. Marks let a caller free
 * everything allocated after a point (one layer's recomputation and gradients): a mark is every
 * chunk's fill level. */
#ifndef FINCH_CORE_ARENA_H
#define FINCH_CORE_ARENA_H

#include "backends/backend.h"

#define FINCH_ARENA_MAX_CHUNKS 64
#define FINCH_ARENA_ALIGN 256

typedef struct finch_arena_chunk {
    finch_plugin_buffer *buf;
    size_t cap, used;
} finch_arena_chunk;

typedef struct finch_arena {
    const finch_backend *be;
    finch_arena_chunk chunks[FINCH_ARENA_MAX_CHUNKS];
    int n_chunks;           /* chunks allocated */
    size_t in_use, peak;    /* bytes, summed over chunks */
    uint64_t generation;    /* changes whenever a chunk is allocated or freed (addresses held go stale) */
} finch_arena;

typedef struct finch_arena_mark {
    int n_chunks;
    size_t used[FINCH_ARENA_MAX_CHUNKS], in_use;
} finch_arena_mark;

void finch_arena_init(finch_arena *a, const finch_backend *be);
/* Starts a step: everything allocated before is released. */
int finch_arena_begin(finch_arena *a);
int finch_arena_alloc(finch_arena *a, size_t bytes, finch_dptr *out);
finch_arena_mark finch_arena_get_mark(const finch_arena *a);
void finch_arena_reset(finch_arena *a, finch_arena_mark m);
void finch_arena_free(finch_arena *a);

#endif
