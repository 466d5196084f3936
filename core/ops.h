/* Ops: thin wrappers over the plugin entries. Each allocates its output from the arena, runs the
 * plugin's forward and, while the graph records, appends its one backward to the tape. An output
 * gets a gradient node when an input has one or the op owns a trainable parameter. */
#ifndef FINCH_CORE_OPS_H
#define FINCH_CORE_OPS_H

#include "core/autograd.h"

/* A linear layer as the op sees it: y = x W^T + bias + scale (drop(x) A^T) B^T. */
typedef struct finch_linear_params {
    int64_t in_features, out_features;
    finch_weight w;
    finch_dptr dw;                /* f32 gradient of W (full fine-tuning) or absent */
    finch_dtype param_type;       /* storage of bias, lora_a, lora_b */
    finch_dptr bias, dbias;
    int64_t rank;                 /* 0: no adapter */
    finch_dptr lora_a, lora_b, da, db;
    float scale, dropout;
    uint64_t dropout_seed;
} finch_linear_params;

typedef struct finch_rope_params {
    int64_t n_heads, head_dim, rot_dim;
    finch_dptr positions;         /* i32 [n_sections, n_tokens] */
    finch_dptr inv_freq;          /* f32 [rot_dim / 2] */
    float attn_factor;
    int n_sections;               /* 0: one row of positions; else positions has n_sections rows and */
    int sections[4];              /* section s turns sections[s] frequency pairs (M-RoPE, 2-D RoPE) */
} finch_rope_params;

typedef struct finch_attention_params {
    int64_t n_seqs, max_seqlen;
    finch_dptr cu_seqlens;
    int64_t n_heads, n_kv_heads, head_dim;
    float scale, softcap;
    int64_t window;
    int bidirectional;            /* 1: every token of a sequence sees all of it (vision towers); 0: causal */
} finch_attention_params;

int finch_op_embedding(finch_graph *g, finch_dptr ids, int64_t n_tokens, const finch_param *table, finch_dtype out_type,
                       float scale, finch_tensor *y);
/* RMSNorm over the rows of a contiguous x; weight_offset 1 is Gemma's (1 + w). */
int finch_op_rmsnorm(finch_graph *g, const finch_tensor *x, const finch_param *w, float weight_offset, float eps,
                     finch_tensor *y);
int finch_op_layernorm(finch_graph *g, const finch_tensor *x, const finch_param *w, const finch_param *b, float eps,
                       finch_tensor *y);
int finch_op_linear(finch_graph *g, const finch_tensor *x, const finch_linear_params *p, finch_tensor *y);
/* Linears over one x (q/k/v, gate/up) in one backend call where it has linear_forward_group: y[i] =
 * linear p[i] of x, taped as count linears; one_tensor: the y[i] are column views of one [rows, sum
 * of out_features] tensor in order, else tensors of their own. */
#define FINCH_LINEAR_GROUP_MAX 4
int finch_op_linear_group(finch_graph *g, const finch_tensor *x, int count, const finch_linear_params *const *p,
                          int one_tensor, finch_tensor *y);
/* Rotates x in place (x may be a column view). Only valid when nothing else reads the unrotated x. */
int finch_op_rope(finch_graph *g, const finch_tensor *x, const finch_rope_params *p);
/* The backend's description of rotating x [rows, p->n_heads * p->head_dim] as p says. */
finch_rope_desc finch_rope_desc_of(const finch_tensor *x, const finch_rope_params *p);
int finch_op_attention(finch_graph *g, const finch_tensor *q, const finch_tensor *k, const finch_tensor *v,
                       const finch_attention_params *p, finch_tensor *y);
/* Attention whose output and log-sum-exp live at o ([rows, n_heads * head_dim], contiguous) and lse
 * (f32 [n_heads * rows]) instead of the arena: compute 1 writes them there; compute 0 takes them as
 * they are (kept from an earlier forward of the same inputs) and makes only y and its tape entry. */
int finch_op_attention_at(finch_graph *g, const finch_tensor *q, const finch_tensor *k, const finch_tensor *v,
                          const finch_attention_params *p, finch_dptr o, finch_dptr lse, int compute, finch_tensor *y);
int finch_op_glu(finch_graph *g, finch_activation act, const finch_tensor *gate, const finch_tensor *up, finch_tensor *y);
int finch_op_activation(finch_graph *g, finch_activation act, float param, const finch_tensor *x, finch_tensor *y);
/* y = a + b; when dst is not NULL the sum is written into it (it keeps its node). */
int finch_op_add(finch_graph *g, const finch_tensor *a, const finch_tensor *b, const finch_tensor *dst, finch_tensor *y);
/* sum = a + b (into dst when not NULL, as finch_op_add), then y = finch_op_rmsnorm(sum): one fused
 * call where the backend has add_rmsnorm_forward, the two ops' calls otherwise. The tape holds the
 * same two entries either way. */
int finch_op_add_rmsnorm(finch_graph *g, const finch_tensor *a, const finch_tensor *b, const finch_tensor *dst,
                         finch_tensor *sum, const finch_param *w, float weight_offset, float eps, finch_tensor *y);
/* The same ops without their forward arithmetic, for an output whose values nothing reads, only its
 * gradient (a layer's output recomputed for backward under gradient checkpointing): y is allocated
 * (or is dst) and gets its node and tape entry, its values are left as they were. The backward is the
 * full op's. (A linear's: finch_op_linear_at with compute 0; its backward then forms xa = drop(x) A^T
 * itself unless xa is given.) */
int finch_op_add_tape_only(finch_graph *g, const finch_tensor *a, const finch_tensor *b, const finch_tensor *dst, finch_tensor *y);
int finch_op_rope_tape_only(finch_graph *g, const finch_tensor *x, const finch_rope_params *p);
/* A linear whose output lives at `at` ([rows, out_features], contiguous; absent: from the arena) and,
 * with an adapter, its xa = drop(x) A^T at xa (f32 [rows, rank]; absent: as finch_op_linear): compute 1
 * writes them there, compute 0 takes them as they are (kept from an earlier forward) and makes only y
 * and its tape entry. */
int finch_op_linear_at(finch_graph *g, const finch_tensor *x, const finch_linear_params *p, finch_dptr at, finch_dptr xa,
                       int compute, finch_tensor *y);
/* f32 logits [rows, vocab] = h W^T; dw: f32 gradient of W or absent. */
int finch_op_logits(finch_graph *g, const finch_tensor *h, const finch_param *w, finch_tensor *logits);

#endif
