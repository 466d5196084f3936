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
    /* Multimodal RoPE: a sequence's next position is its length + rope_delta (images advance the
     * positions by less than their token count), and image_end is its length after its last image
     * token (a cache cut below it is dropped whole). */
    int64_t *rope_delta, *image_end, *pending_delta;
    int registered;                /* an owner of the model (model_move.c drops the cache on a move) */

    /* Decode passes recorded once and replayed (plugins with capture_begin; model_decode.c). A pass is
     * the same work at every position when these are unchanged: */
    struct finch_pass_key {
        int n;                     /* sequences, one new token each */
        int *slots;                /* [max_seqs]: which, in order (one allocation: replay's, last's, scratch) */
        uint64_t weights_version, arena_generation, cache_generation;
        int rope_long;             /* longrope's long tables in use */
    } replay_key, last_key;
    int last_key_set;              /* last_key: a pass run directly that allocated nothing */
    finch_plugin_graph *replay;    /* the recording of replay_key's pass, or NULL */
    finch_tensor replay_logits;    /* where its logits land */
    int replay_off;                /* recording failed once: this session runs passes directly */
    finch_session_stats stats;
};

/* finch_session_append with images for the new tokens (a vision-language model): their pixel values
 * and grids as finch_batch holds them (the other fields of images are not read), for the image-pad
 * blocks of the sequences in order; NULL for none. A sequence's images must all be in this pass. */
int finch_session_append_images(finch_session *s, int n, const int *seqs, const int32_t *const *tokens, const int64_t *n_tokens,
                                const finch_batch *images, float *logits);
/* Keeps the first `tokens` of sequence seq (all of it dropped when that would cut off images). */
void finch_session_truncate(finch_session *s, int seq, int64_t tokens);

#endif
