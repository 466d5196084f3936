/* The key/value cache of generation: for every layer, the keys and values of each sequence's tokens
 * so far, so a new token attends to them without recomputing them.
 *
 * One device buffer holds [layer][keys | values][slot][capacity][n_kv_heads * head_dim] in the compute
 * dtype: every slot (a sequence) has room for `capacity` tokens. Capacity is reserved up front for
 * the expected length and grows in chunks (a larger buffer, the held rows copied over) when a pass
 * needs more.
 *
 * A pass (finch_kv_cache_begin .. finch_kv_cache_commit) appends new tokens to some slots: each
 * layer's attention writes the new keys and values after the held ones and attends over all of them
 * through the plugin's attention_cache_forward (or attention_cache_append_forward, which also turns
 * the step's queries and keys: one call for what would be rope, two appends and the attention). */
#ifndef FINCH_CORE_KV_CACHE_H
#define FINCH_CORE_KV_CACHE_H

#include "core/ops.h"

#define FINCH_KV_CACHE_CHUNK 256   /* capacity grows in multiples of this many tokens */

struct finch_kv_cache {
    const finch_backend *be;
    int64_t n_layers, n_slots, width;  /* width: n_kv_heads * head_dim */
    finch_dtype dtype;
    int64_t capacity;                  /* tokens per slot */
    finch_plugin_buffer *buf;
    uint64_t generation;               /* changes whenever buf is replaced or freed */
    int64_t *len;                      /* [n_slots]: tokens held */

    /* the current pass */
    int n_active;
    int *slots;                        /* [n_slots]: the slots of the pass, in batch order */
    int64_t *n_new;                    /* [n_slots]: tokens each appends */
    int32_t *host;                     /* staging for the arrays below */
    size_t host_cap;                   /* entries */
    finch_dptr cu_q, kv_start, kv_len; /* i32 device arrays of the pass */
    finch_dptr rows;                   /* i32 [new tokens]: each new token's row in a layer's keys (copy_rows) */
    int64_t max_q, max_kv;             /* one new token each: max_kv is the capacity, so a recorded pass
                                        * replays at any length up to it */
};
typedef struct finch_kv_cache finch_kv_cache;

int finch_kv_cache_init(finch_kv_cache *c, const finch_backend *be, int64_t n_layers, int64_t n_slots, int64_t width,
                        finch_dtype dtype);
void finch_kv_cache_free(finch_kv_cache *c);
/* Frees the device memory and forgets every slot's tokens (the cache stays usable: it grows again). */
void finch_kv_cache_drop(finch_kv_cache *c);
/* Makes room for `tokens` tokens in every slot. */
int finch_kv_cache_reserve(finch_kv_cache *c, int64_t tokens);
/* Starts a pass: slot slots[i] gains n_new[i] tokens (rows cu .. of the pass's packed batch). The
 * pass's device arrays come from the arena. */
int finch_kv_cache_begin(finch_kv_cache *c, finch_arena *arena, int n, const int *slots, const int64_t *n_new);
/* Whether finch_kv_cache_attention can take rope: the backend turns q and k, appends and attends in
 * one call (attention_cache_append_forward). */
int finch_kv_cache_rotates(const finch_kv_cache *c);
/* Layer l's attention in the pass: appends k and v (the pass's new rows) and attends q over the slot's
 * held and new keys. o is allocated from the graph. With rope (only where finch_kv_cache_rotates), q
 * and k come unturned and are turned as finch_op_rope would with rope (its n_heads ignored) on the way;
 * their contents afterwards are unspecified. */
int finch_kv_cache_attention(finch_kv_cache *c, finch_graph *g, int64_t layer, const finch_tensor *q,
                             const finch_tensor *k, const finch_tensor *v, const finch_attention_params *p,
                             const finch_rope_params *rope, finch_tensor *o);
/* Ends a successful pass: the new tokens are held. (A failed pass is simply not committed.) */
void finch_kv_cache_commit(finch_kv_cache *c);
/* Keeps the first `tokens` tokens of a slot. */
void finch_kv_cache_truncate(finch_kv_cache *c, int slot, int64_t tokens);

#endif
