/* finch — text generation: a key/value cache, sampling, stop conditions and streaming.
 *
 * The model computes with the same plugin entries as in training, without the autograd tape; LoRA
 * adapters stay unmerged, so finch_lora_unload + finch_lora_load switch adapters on a loaded model.
 *
 * Typical use:
 *     finch_generate_options o = finch_generate_options_default();
 *     o.max_new_tokens = 128;  o.tokenizer = tok;  o.sampling.temperature = 0.7f;
 *     finch_generation out[2];
 *     finch_generate(m, 2, prompts, prompt_lens, &o, out);      (prompts: token ids)
 *     ... out[i].tokens.ids, out[i].text ...
 *     finch_generation_free(&out[0]);  finch_generation_free(&out[1]);
 *
 * A finch_session keeps the cache between calls (multi-turn chat: a prompt that extends the previous
 * conversation computes only its new tokens). */
#ifndef FINCH_GENERATE_H
#define FINCH_GENERATE_H

#include "finch/data.h"
#include "finch/finch.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- sampling ---------------------------------------------------------------------------------- */

/* How the next token is chosen from the logits, in this order:
 *   penalties: repetition (Hugging Face's: a logit z of a token already in the prompt or output
 *              becomes z / p if z > 0, else z * p), then z -= frequency_penalty * (times generated)
 *              + presence_penalty * (generated at all), over the tokens generated so far;
 *   greedy (or temperature == 0): the largest logit, the lowest id on ties;
 *   otherwise z / temperature, softmax, then top_k (the k most likely), top_p (the smallest set of
 *   most likely tokens whose probability reaches top_p), min_p (tokens at least min_p times as likely
 *   as the most likely one), and a draw from what remains, renormalised. */
typedef struct finch_sampling {
    int greedy;
    float temperature;         /* 1; 0 = greedy */
    int top_k;                 /* 0 = off */
    float top_p;               /* 1 = off */
    float min_p;               /* 0 = off */
    float repetition_penalty;  /* 1 = off */
    float frequency_penalty, presence_penalty; /* 0 = off */
    uint64_t seed;             /* draws come from finch's own generator: same seed, same tokens */
} finch_sampling;

finch_sampling finch_sampling_default(void);

/* One sequence's sampling state: the generator and the counts the penalties need. */
typedef struct finch_sampler finch_sampler;

/* vocab: logits per call; stream distinguishes the random streams of sequences sharing a seed. */
finch_status finch_sampler_create(const finch_sampling *s, int64_t vocab, uint64_t stream, finch_sampler **out);
void finch_sampler_free(finch_sampler *sp);
/* Tokens that count for the repetition penalty only (the prompt). */
finch_status finch_sampler_add_context(finch_sampler *sp, const int32_t *ids, size_t n);
/* Chooses a token from logits [vocab] (modified in place) and records it as generated. */
finch_status finch_sampler_next(finch_sampler *sp, float *logits, int32_t *token);
/* The probabilities the last finch_sampler_next drew from ([vocab], zero for excluded tokens; a
 * one-hot vector after a greedy choice). For tests and for hosts that show alternatives. */
finch_status finch_sampler_last_probs(const finch_sampler *sp, float *probs, int64_t vocab);

/* ---- generation -------------------------------------------------------------------------------- */

typedef enum finch_finish_reason {
    FINCH_FINISH_LENGTH = 0,   /* max_new_tokens generated */
    FINCH_FINISH_EOS = 1,      /* an end-of-sequence id (kept in tokens, not in text) */
    FINCH_FINISH_STOP = 2,     /* a stop string (text ends before it) */
    FINCH_FINISH_CONTEXT = 3,  /* the model's context (max_position_embeddings) is full */
    FINCH_FINISH_CANCELLED = 4 /* the callback asked to stop */
} finch_finish_reason;

/* Called once per generated token: seq is the prompt's index; text and len are the newly settled
 * output text (may be empty: text is held back while it could still become a stop string or an
 * incomplete UTF-8 character; NULL without a tokenizer). Return non-zero to stop: generation of
 * every sequence ends, and the call returns FINCH_ERR_CANCELLED with the outputs filled so far. */
typedef int (*finch_token_callback)(void *user, int seq, int32_t token, const char *text, size_t len);

typedef struct finch_generate_options {
    finch_sampling sampling;
    int64_t max_new_tokens;           /* 256 */
    const finch_tokenizer *tokenizer; /* for text, stop strings and the tokenizer's EOS; may be NULL */
    int use_model_eos;                /* 1: stop on generation_config.json's eos_token_id (int or list;
                                         else config.json's) and the tokenizer's EOS */
    const int32_t *eos_ids;           /* more ids that end a sequence */
    int n_eos_ids;
    const char *const *stop_strings;  /* matched on the output text, across token boundaries */
    int n_stop_strings;
    int skip_special;                 /* 1: special tokens are left out of text */
    finch_token_callback on_token;
    void *user;
    /* Vision-language models: the images of the prompts' image-pad blocks, in order (prompt 0's
     * first), as finch_batch holds them (finch_image_preprocess_qwen2vl). Prompts are then computed
     * whole in one pass (a session keeps none of their cached prefix), with multimodal RoPE
     * positions; generated tokens continue after the largest position, as in transformers. */
    const float *pixel_values;        /* [n_patches, patch_dim] */
    const int32_t *image_grid_thw;    /* [n_images, 3] */
    int64_t n_images, n_patches;
} finch_generate_options;

finch_generate_options finch_generate_options_default(void);

typedef struct finch_generation {
    finch_tokens tokens;              /* generated ids (the prompt is not repeated) */
    char *text;                       /* decoded output (NUL-terminated), NULL without a tokenizer */
    size_t text_len;
    finch_finish_reason finish;
} finch_generation;

void finch_generation_free(finch_generation *g);

/* Generates a continuation for each of n prompts (token ids; lengths may differ), as a batch.
 * Errors: an empty prompt, a token id outside the vocabulary, a prompt longer than the model's
 * context. Results are independent of how prompts are batched. out[0..n) must be writable; they
 * are filled on FINCH_OK and FINCH_ERR_CANCELLED and must then be freed. */
finch_status finch_generate(finch_model *m, int n, const int32_t *const *prompts, const int64_t *prompt_lens,
                            const finch_generate_options *opts, finch_generation *out);

/* ---- sessions: the cache kept between calls ----------------------------------------------------- */

typedef struct finch_session finch_session;

/* A cache for up to max_seqs sequences of m (which must outlive it). */
finch_status finch_session_create(finch_model *m, int max_seqs, finch_session **out);
void finch_session_free(finch_session *s);
/* Forgets every sequence (the memory is kept). */
finch_status finch_session_reset(finch_session *s);
/* Tokens the cache holds for sequence seq. */
int64_t finch_session_length(const finch_session *s, int seq);
/* Passes the session ran (appends, prefill and decode), and how many of them were launched from a
 * recording: on a backend that records (CUDA), a pass of one new token per sequence is recorded the
 * second time it comes with the same sequences and launched whole from then on (FINCH_CUDA_GRAPHS=0
 * turns it off; see the README). */
typedef struct finch_session_stats {
    int64_t passes, replayed;
} finch_session_stats;
void finch_session_stats_get(const finch_session *s, finch_session_stats *out);
/* Appends n_tokens[i] >= 1 tokens to sequence seqs[i] for i < n (distinct sequences) and writes the
 * logits after each one's last new token to logits [n, vocab] (f32, final softcap applied). */
finch_status finch_session_append(finch_session *s, int n, const int *seqs, const int32_t *const *tokens,
                                  const int64_t *n_tokens, float *logits);
/* finch_generate on sequences 0 .. n-1 of the session. A sequence keeps the cached part of its
 * previous prompt + output that the new prompt starts with, and computes only the rest. The cache is
 * dropped by itself when the model's weights or adapter changed since it was filled. */
finch_status finch_session_generate(finch_session *s, int n, const int32_t *const *prompts, const int64_t *prompt_lens,
                                    const finch_generate_options *opts, finch_generation *out);

#ifdef __cplusplus
}
#endif

#endif
