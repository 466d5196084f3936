/* A decoder-only text model's configuration, read from a Hugging Face config.json (transformers 4
 * and 5 styles, nested text_config) and reduced to what the forward pass needs. */
#ifndef FINCH_CORE_MODEL_CONFIG_H
#define FINCH_CORE_MODEL_CONFIG_H

#include "finch/plugin.h"

typedef enum finch_arch {
    FINCH_ARCH_LLAMA, FINCH_ARCH_MISTRAL, FINCH_ARCH_QWEN2, FINCH_ARCH_QWEN3, FINCH_ARCH_GEMMA, FINCH_ARCH_GEMMA2,
    FINCH_ARCH_GEMMA3, FINCH_ARCH_PHI3, FINCH_ARCH_FALCON
} finch_arch;

typedef enum finch_rope_type {
    FINCH_ROPE_DEFAULT, FINCH_ROPE_LINEAR, FINCH_ROPE_LLAMA3, FINCH_ROPE_YARN, FINCH_ROPE_LONGROPE
} finch_rope_type;

/* One RoPE setting, reduced to inverse frequencies. Longrope has a second table for sequences
 * longer than original_max_position_embeddings. */
typedef struct finch_rope_config {
    finch_rope_type type;
    double theta;
    int64_t rot_dim;           /* head_dim * partial_rotary_factor */
    float *inv_freq;           /* rot_dim / 2 */
    float attn_factor;
    float *inv_freq_long;      /* longrope only */
    float attn_factor_long;
    int64_t long_after;        /* longrope: use the long table when max position + 1 > this */
} finch_rope_config;

enum { FINCH_NORM_RMS = 0, FINCH_NORM_LAYER = 1 };

typedef struct finch_model_config {
    char model_type[64];       /* as written (the text model's, for a nested text_config) */
    finch_arch arch;
    int64_t n_layers, hidden, n_heads, n_kv_heads, head_dim, intermediate, vocab, max_positions;
    double norm_eps;
    int norm_kind;             /* FINCH_NORM_* */
    float norm_offset;         /* 1: Gemma's (1 + w) */
    finch_activation act;
    int tie_embeddings;        /* -1: not stated (decided by the presence of lm_head.weight) */
    int qkv_bias, o_bias, mlp_bias;
    int qk_norm;               /* RMSNorm over head_dim on q and k before RoPE */
    int sandwich_norms;        /* gemma2/3: post-attention, pre- and post-feedforward norms */
    int scale_embeddings;      /* gemma: embeddings * sqrt(hidden) */
    float attn_scale, attn_softcap, final_softcap;
    int64_t sliding_window;    /* 0: none */
    unsigned char *layer_sliding; /* per layer: 1 for a "sliding_attention" layer (windowed when
                                     sliding_window > 0; gemma3's local RoPE) */
    finch_rope_config rope_global, rope_local;   /* local: sliding-window layers (gemma3) */
    int has_local_rope;
    /* falcon */
    int parallel_attn, new_decoder_arch, multi_query, n_ln_parallel;
    /* multimodal RoPE (qwen2_5_vl): rotary frequency pairs per position row t/h/w; 0 sections: plain RoPE */
    int rope_n_sections;
    int rope_sections[4];
    int has_vision;            /* config.json has a vision_config (qwen2_5_vl): see core/vision_tower.h */
} finch_model_config;

/* Reads dir/config.json. Errors name the file and the field. */
int finch_model_config_load(const char *dir, finch_model_config *cfg);
void finch_model_config_free(finch_model_config *cfg);
/* The RoPE setting of layer l. */
const finch_rope_config *finch_model_config_rope(const finch_model_config *cfg, int64_t layer);

#endif
