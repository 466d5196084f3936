/* The model behind the public finch_model handle: configuration, weights on the device, the
 * adapters, the trainable-tensor list and the per-step state (arena, tape). Internal to libfinch;
 * the trainer reaches parameters and gradients through it. */
#ifndef FINCH_CORE_MODEL_H
#define FINCH_CORE_MODEL_H

#include "core/model_config.h"
#include "core/ops.h"
#include "core/runtime.h"

typedef struct finch_linear_module {
    char path[160];              /* module path in the checkpoint: "model.layers.0.self_attn.q_proj" */
    const char *leaf;            /* its last component: "q_proj" */
    int64_t in_features, out_features;
    finch_param weight, bias;    /* bias.data absent when the layer has none; bias is f32 */
    int32_t *row_perm;           /* our row r is the checkpoint's row row_perm[r]; NULL: same order */
    int rank;                    /* 0: no adapter */
    float scale, dropout;
    finch_param lora_a, lora_b;  /* f32 [rank, in], [out, rank] */
    uint64_t id;                 /* position in the model, for dropout seeds */
} finch_linear_module;

typedef struct finch_layer {
    finch_param attn_norm, attn_norm_b;      /* input_layernorm (falcon: or ln_attn; LayerNorm bias) */
    finch_param mlp_norm, mlp_norm_b;        /* the norm before the MLP; absent for falcon's shared norm */
    finch_param post_attn_norm, post_ffn_norm; /* gemma2/3 */
    finch_param q_norm, k_norm;              /* qwen3, gemma3 */
    finch_linear_module q, k, v, qkv, o, gate, up, gate_up, down;
    finch_linear_module *linears[8];         /* the ones this architecture has, in module order */
    int n_linears;
} finch_layer;

typedef struct finch_trainable {
    finch_param *param;
    const finch_linear_module *module;       /* for row_perm; NULL for non-linear parameters */
    int perm_rows;                           /* 1: rows follow module->row_perm */
} finch_trainable;

struct finch_model {
    finch_runtime *rt;
    const finch_backend *be;
    finch_model_config cfg;
    finch_dtype dtype;                       /* compute: weights and activations */
    char dir[1024];
    char prefix[64];                         /* decoder prefix: "model.", "transformer.", ... */
    finch_param embed, final_norm, final_norm_b, lm_head_own;
    finch_param *lm_head;                    /* &embed when tied */
    int tied;
    finch_layer *layers;
    finch_linear_module **linears;           /* every decoder linear, in module order */
    int n_linears;
    finch_dptr rope_inv[2][2];               /* inv_freq, f32: [global, local][short, long] */
    int64_t n_params;

    int full_finetune, gradient_checkpointing;
    /* LoRA */
    int lora_attached;
    int lora_r, lora_use_rslora;
    float lora_alpha, lora_dropout;
    char *lora_targets_json;                 /* target_modules as saved: a JSON list or string */
    finch_trainable *trainables;
    int n_trainables;

    /* per-step state */
    finch_arena arena;
    finch_graph graph;
    finch_dptr loss_buf;                     /* f32 [2]: loss_sum, count */
    finch_plugin_buffer *persistent;         /* rope tables and loss_buf */
    finch_dptr logits;                       /* f32 [logits_count] of the last step that kept them */
    int64_t logits_count;
    uint64_t step;
    finch_tensor *stream;                    /* x_0 .. x_L, the residual stream between layers */
    int *segments;                           /* tape position where each layer's entries start */
    int32_t *host_i32;                       /* staging for ids, labels, positions */
    size_t host_i32_cap;
};

/* model_load.c */
int finch_model_upload_f32(finch_model *m, const float *src, int64_t rows, int64_t row_elems, const int32_t *perm,
                           finch_dtype dtype, finch_dptr dst);
int finch_model_download_f32(const finch_model *m, finch_dptr src, finch_dtype dtype, int64_t rows, int64_t row_elems,
                             const int32_t *perm, float *dst);
int finch_param_alloc(finch_model *m, finch_param *p, finch_dtype dtype, int ndim, int64_t d0, int64_t d1);
void finch_param_release(finch_model *m, finch_param *p);
int finch_param_alloc_grad(finch_model *m, finch_param *p);

/* model_forward.c: one step; backward when do_backward. */
int finch_model_step(finch_model *m, const finch_batch *b, const finch_step_options *opts, int do_backward,
                     finch_step_result *out);

/* lora.c */
int finch_lora_module_targeted(const char *targets, const finch_linear_module *lin, int *hit);
int finch_lora_attach_modules(finch_model *m, int r, float alpha, int use_rslora, float dropout, const unsigned char *chosen);
void finch_lora_detach(finch_model *m);
int finch_model_rebuild_trainables(finch_model *m);

#endif
