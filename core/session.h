/* The session behind the public finch_session handle: a key/value cache over a model, the arena and
 * graph its passes compute in, and the tokens each sequence's cache holds. model_decode.c runs the
 * passes; generate.c drives them to generate text. */
#ifndef FINCH_CORE_SESSION_H
#define FINCH_CORE_SESSION_H

#include "core/kv_cache.h"
#include "core/model.h"
#include "finch/generate.h"

struct finch_session {
    finch_model *m;
    int max_seqs;
    finch_kv_cache cache;
    finch_arena arena;
    finch_graph graph;
    finch_tokens *held;            /* [max_seqs]: the tokens whose keys and values the cache holds */
    uint64_t weights_version;      /* the model's, when the cache was filled */
    int32_t *host;                 /* staging for token ids and positions */
    size_t host_cap;
    int registered;                /* an owner of the model (model_move.c drops the cache on a move) */
};

#endif
