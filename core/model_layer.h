/* The decoder's per-layer code (model_forward.c), shared by training steps and by generation over
 * a key/value cache (model_decode.c): one description of each architecture's layer serves both. */
#ifndef FINCH_CORE_MODEL_LAYER_H
#define FINCH_CORE_MODEL_LAYER_H

#include "core/model.h"

typedef struct finch_kv_cache finch_kv_cache;

/* One pass over the layers: the tokens' device arrays and where attention finds its keys. */
/* Under gradient checkpointing with offload, what a layer's forward keeps of its attention half so
 * that the recompute for its backward need not run it again (model_forward.c): the attention output
 * o, its log-sum-exp, without sandwich norms x1 = x + o_proj(o), and where q, k and v are products
 * of their own without per-head norms, q and k turned and v; with them the adapters' xa of the
 * products the recompute only tapes (q, k, v, o and the down projection: f32 [tokens, rank] each). */
enum { FINCH_SAVED_Q, FINCH_SAVED_K, FINCH_SAVED_V, FINCH_SAVED_O, FINCH_SAVED_DOWN, FINCH_SAVED_XA };
typedef struct finch_layer_saved {
    int reading;                       /* 0: the forward writes them; 1: the recompute takes them */
    int has_x1, has_qkv;
    finch_dptr o, lse, x1, qkv[3];
    finch_dptr xa[FINCH_SAVED_XA];     /* absent where not kept */
} finch_layer_saved;

typedef struct finch_step_ctx {
    finch_model *m;
    finch_graph *g;
    int64_t batch, seq_len, n_tokens;  /* with a cache: sequences, longest cached + new length, new tokens */
    finch_dptr ids, labels, positions, cu_seqlens;
    int train;                         /* LoRA dropout on */
    finch_kv_cache *cache;             /* NULL: attention within the batch's rows; else over the cache */
    int64_t n_seqs;                    /* sequences in cu_seqlens: one per row, or per segment of packed rows */
    const int32_t *host_ids;           /* ids on the host (n_tokens), for a host-resident embedding table */
    int64_t row0;                      /* the first token row of the tensors at hand (MLP chunks): LoRA dropout masks */
    int outputs_unread;                /* a recompute for backward: the layer's output values are not read (model_forward.c) */
    const finch_layer_saved *saved;    /* NULL, or where the layer at hand keeps its attention half */
} finch_step_ctx;

/* x_0: the embeddings of s->ids (scaled where the architecture scales them). */
int finch_model_embed(finch_step_ctx *s, finch_tensor *x0);
/* One decoder layer: x -> out (out is preallocated). */
int finch_layer_forward(finch_step_ctx *s, int64_t l, const finch_tensor *x, const finch_tensor *out);
/* The final norm before the head. */
int finch_model_final_norm(finch_step_ctx *s, const finch_tensor *x, finch_tensor *y);

#endif
