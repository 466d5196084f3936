/* The model behind the public finch_model handle: configuration, weights on the device, the
 * adapters, the trainable-tensor list and the per-step state (arena, tape). Internal to libfinch;
 * the trainer reaches parameters and gradients through it. */
#ifndef FINCH_CORE_MODEL_H
#define FINCH_CORE_MODEL_H

#include "core/devmem.h"
#include "core/model_config.h"
#include "core/ops.h"
#include "core/runtime.h"
#include "core/safetensors.h"

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
    int vision;                  /* 1: a vision-tower linear ("all-linear" LoRA leaves it alone) */
    struct finch_quant_weight *quant; /* 4-bit weight (core/model_quant.h; weight.dtype NF4), or NULL */
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

/* Something outside the model that keeps device state of it (the optimizer, generation sessions):
 * told when the model moves to another backend (model_move.c). Each callback may be NULL. */
typedef struct finch_model_owner {
    void *self;
    /* May refuse the target before anything moves (an optimizer entry it lacks). */
    int (*check)(void *self, const finch_backend *to);
    /* Reports every pointer it keeps into the model's ledger (m->mem). */
    void (*visit)(void *self, finch_devref_fn fn, void *ctx);
    /* Drops per-device state that does not move (a generation cache), on the old backend. */
    void (*release)(void *self);
} finch_model_owner;

struct finch_model {
    finch_runtime *rt;
    const finch_backend *be;                 /* &backend */
    finch_backend backend;                   /* the device the model lives on */
    int backend_owned;                       /* 1: opened by a move, closed with the model; 0: the runtime's */
    finch_devmem mem;                        /* every device buffer the model owns beyond a step */
    finch_model_owner *owners;
    int n_owners;
    finch_model_config cfg;
    finch_dtype dtype;                       /* compute: weights and activations */
    char dir[1024];
    char prefix[64];                         /* decoder prefix: "model.", "transformer.", ... */
    finch_param embed, final_norm, final_norm_b, lm_head_own;
    /* The embedding table in host memory ([vocab, hidden] in embed.dtype) when it is kept off the
     * device (a 4-bit model's frozen, untied table: the device then holds only the rows of a step);
     * embed keeps its name, dtype and shape but has no device data. NULL otherwise. */
    void *embed_host;
    finch_param *lm_head;                    /* &embed when tied */
    int tied;
    finch_layer *layers;
    struct finch_vision *vision;             /* the image encoder of a vision-language model, or NULL */
    finch_linear_module **linears;           /* every decoder linear, in module order (then the vision tower's) */
    int n_linears;
    finch_dptr rope_inv[2][2];               /* inv_freq, f32: [global, local][short, long] */
    int64_t n_params;

    int full_finetune, gradient_checkpointing;
    int offload_activations;                 /* with checkpointing: layer inputs in host memory (model_forward.c) */
    int64_t mlp_chunk_tokens;                /* MLP recomputed this many tokens at a time (0: pieces of <= ~448 MiB, model_forward.c) */
    int save_attention;                      /* with offload, layers keep their attention half: 2 with q, k, v, 1 without, 0 none
                                              * (FINCH_OFFLOAD_ATTENTION=0|1, default 2; for A/B); 0 once page-locked
                                              * host memory could not hold them (model_forward.c) */
    int recompute_all;                       /* checkpointing recomputes outputs nothing reads too (FINCH_RECOMPUTE_ALL=1; for A/B) */
    /* LoRA */
    int lora_attached;
    int lora_r, lora_use_rslora;
    float lora_alpha, lora_dropout;
    char *lora_targets_json;                 /* target_modules as saved: a JSON list or string */
    finch_trainable *trainables;
    int n_trainables;
    finch_plugin_buffer *grad_arena;         /* the trainables' f32 gradients, one after another */
    size_t grad_arena_bytes;
    /* Bumped whenever weights or adapters may change (attach, detach, writes, backward passes), so
     * a generation cache knows its keys and values are stale. */
    uint64_t weights_version;

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
    unsigned char *offload_host;             /* x_1 .. x_{L-1} of the step when offloading activations */
    size_t offload_cap;                      /* bytes */
    int offload_pinned;                      /* offload_host came from the backend's host_alloc */
    finch_plugin_stream *offload_stream;     /* the copies' own stream when the backend orders streams */
    finch_plugin_event *offload_events[5];   /* compute reached; slot 0/1 copied out; slot 0/1 loaded */
    size_t host_i32_cap;
};

/* model_load.c */
/* The host copy of p when it lives in host memory (m->embed_host for m->embed), else NULL. */
static inline const void *finch_model_param_host(const finch_model *m, const finch_param *p)
{
    return p == &m->embed ? m->embed_host : NULL;
}
int finch_model_upload_f32(finch_model *m, const float *src, int64_t rows, int64_t row_elems, const int32_t *perm,
                           finch_dtype dtype, finch_dptr dst);
int finch_model_download_f32(const finch_model *m, finch_dptr src, finch_dtype dtype, int64_t rows, int64_t row_elems,
                             const int32_t *perm, float *dst);
int finch_param_alloc(finch_model *m, finch_param *p, finch_dtype dtype, int ndim, int64_t d0, int64_t d1);
void finch_param_release(finch_model *m, finch_param *p);
/* Gives every trainable a cleared f32 gradient in one buffer, m->grad_arena (dropping the gradients
 * of an earlier list); finch_model_release_grads drops them all. */
int finch_model_alloc_grads(finch_model *m);
void finch_model_release_grads(finch_model *m);

/* Loads checkpoint tensor `name` into p (which takes that name), shape [d0] (ndim 1) or [d0, d1].
 * With flatten, a tensor of more dimensions whose trailing ones multiply to d1 loads as [d0, d1]
 * (a convolution whose kernel equals its stride is a linear layer over the flattened patch). */
int finch_model_load_param(finch_model *m, const st_set *set, const char *dir, finch_param *p, const char *name, finch_dtype dtype,
                           int ndim, int64_t d0, int64_t d1, int flatten);

/* model_forward.c: one step; backward when do_backward. */
int finch_model_step(finch_model *m, const finch_batch *b, const finch_step_options *opts, int do_backward,
                     finch_step_result *out);
/* The op-level view of a linear module for one step (train: LoRA dropout on). */
finch_linear_params finch_model_linear_params(const finch_model *m, const finch_linear_module *lin, int train);

/* model_move.c */
int finch_model_add_owner(finch_model *m, const finch_model_owner *o);
void finch_model_remove_owner(finch_model *m, void *self);
/* Frees the activation-offload host buffer (page-locked through the backend, or plain). */
void finch_model_offload_release(finch_model *m);
/* Every pointer the model itself keeps into its ledger (the visit of the model as an owner). */
void finch_model_visit_devrefs(finch_model *m, finch_devref_fn fn, void *ctx);
/* Moves m and its owners' state onto the opened backend `to` (see finch_model_move). On success the
 * model takes `to` (closing it with the model when take is 1); on failure nothing changed and the
 * caller still holds `to`. */
int finch_model_move_backend(finch_model *m, const finch_backend *to, int take);
/* Bytes of the model's ledger: what it (and its owners) hold on the device beyond a step. */
uint64_t finch_model_device_bytes(const finch_model *m);

/* lora.c */
int finch_lora_module_targeted(const char *targets, const finch_linear_module *lin, int *hit);
int finch_lora_attach_modules(finch_model *m, int r, float alpha, int use_rslora, float dropout, const unsigned char *chosen);
void finch_lora_detach(finch_model *m);
int finch_model_rebuild_trainables(finch_model *m);

#endif
