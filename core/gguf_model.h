/* How one of our models maps onto llama.cpp's GGUF conventions: the architecture name and its
 * hyper-parameter keys, tensor names (token_embd, blk.N.attn_q, ...), the transforms llama.cpp's
 * converter applies (the Q/K row permutation of llama-family attention, Falcon's [q | k | v] rows,
 * Gemma's 1 + w norms), RoPE scaling tables, and each tensor's type in a quantisation mix. The same
 * plan drives the writer and, inverted, `finch export --verify`. */
#ifndef FINCH_CORE_GGUF_MODEL_H
#define FINCH_CORE_GGUF_MODEL_H

#include "core/gguf.h"
#include "core/model_weights.h"
#include "finch/export.h"

enum { GGUF_PART_WEIGHT = 0, GGUF_PART_LORA_A = 1, GGUF_PART_LORA_B = 2 };

typedef struct gguf_plan_tensor {
    char name[GGUF_MAX_NAME + 1];      /* llama.cpp's name */
    const finch_model_tensor *src;     /* the checkpoint tensor (its linear for LoRA parts); NULL: generated */
    int part;                          /* GGUF_PART_* */
    int32_t *perm;                     /* GGUF row r holds checkpoint row perm[r]; NULL: same order */
    int own_perm;                      /* perm is ours to free */
    float add;                         /* stored value = checkpoint value + add */
    float *host;                       /* generated values (rope_freqs) */
    int n_dims;                        /* 1: ne = {rows} (cols is 1); 2: ne = {cols, rows} */
    int64_t rows, cols;                /* the checkpoint layout, row-major */
    int type;                          /* ggml type */
} gguf_plan_tensor;

typedef struct gguf_plan {
    const char *arch;                  /* "llama", "qwen2", ... */
    int is_adapter;
    gguf_plan_tensor *t;
    int n;
    finch_model_tensor *src;
    int n_src;
} gguf_plan;

/* The model (adapters merged) as a GGUF of the given type. */
int gguf_plan_model(const finch_model *m, finch_gguf_type type, gguf_plan *p);
/* The attached adapter: lora_a / lora_b per adapted linear, of type (f32, f16, bf16 or q8_0). */
int gguf_plan_adapter(const finch_model *m, finch_gguf_type type, gguf_plan *p);
void gguf_plan_free(gguf_plan *p);
/* general.* and <arch>.* keys (no tokenizer). */
int gguf_plan_keys(const finch_model *m, const gguf_plan *p, finch_gguf_type type, const char *name, gguf_writer *w);
/* The values to store for t: the checkpoint data transformed (rows x cols f32). */
int gguf_plan_values(const finch_model *m, const gguf_plan_tensor *t, float *dst);
/* The inverse: stored values back to the checkpoint layout, in place. */
void gguf_plan_unapply(const gguf_plan_tensor *t, const float *stored, float *dst);

/* ---- tokenizer (gguf_vocab.c) ------------------------------------------------------------------ */

typedef struct gguf_vocab_info {
    int has_tokenizer;
    char *chat_template;               /* tokenizer_config.json's, or NULL */
    char *eos_token;                   /* its text, or NULL */
} gguf_vocab_info;

/* tokenizer.ggml.* keys and tokenizer.chat_template from dir/tokenizer.json (+ tokenizer_config.json):
 * byte-level BPE as "gpt2" (tokens, token types, merges, the pre-tokenizer's llama.cpp name),
 * SentencePiece-style BPE (byte fallback, "▁" spaces) as "llama" (tokens, scores from the merge
 * ranks, token types). n_vocab is the model's: ids the tokenizer lacks become unused "[PAD<id>]"
 * tokens. Without a tokenizer.json, tokenizer.ggml.model is "none". */
int gguf_vocab_keys(const char *dir, int64_t n_vocab, gguf_writer *w, gguf_vocab_info *info);
void gguf_vocab_info_free(gguf_vocab_info *info);

#endif
