/* The optimizer over a model's trainable tensors: AdamW with f32 moments (plugin adamw_step) or
 * 8-bit blockwise moments (plugin adamw8bit_step), f32 master copies of non-f32 parameters, weight-
 * decay groups, a separate LR for embeddings / lm_head, and the global gradient norm. All state
 * lives on the device; a step reads one f32 from it (the squared gradient norm). */
#ifndef FINCH_CORE_OPTIMIZER_H
#define FINCH_CORE_OPTIMIZER_H

#include "core/model.h"
#include "finch/train.h"

#define FINCH_OPTIM_8BIT_BLOCKSIZE 256
#define FINCH_OPTIM_8BIT_MIN_NUMEL 4096   /* smaller tensors keep f32 moments, as bitsandbytes' min_8bit_size */

typedef struct finch_optim finch_optim;

typedef struct finch_optim_config {
    finch_optimizer kind;
    double beta1, beta2, eps, weight_decay;
} finch_optim_config;

/* FINCH_ERR_UNSUPPORTED when the backend lacks the entry the kind needs. */
int finch_optim_create(finch_model *m, const finch_optim_config *cfg, finch_optim **out);
void finch_optim_free(finch_optim *o);

/* sqrt of the sum of squares of every trainable gradient (one device read). */
int finch_optim_grad_norm(finch_optim *o, double *norm);
/* *finite = 0 when any trainable value (or master copy) is NaN or infinite (one device read). */
int finch_optim_weights_finite(finch_optim *o, int *finite);
/* Step number `step` (1-based: bias corrections 1 - beta^step). Gradients are multiplied by
 * grad_scale (clipping); embed_lr applies to embed_tokens / lm_head, lr to everything else. */
int finch_optim_step(finch_optim *o, int64_t step, double lr, double embed_lr, float grad_scale);

/* The state as named tensors for a checkpoint: every buffer of every trainable (values, master,
 * moments, 8-bit codes and scales), raw bytes in device order. n and the names stay fixed for a
 * given model and config; read/write move one buffer between host and device. */
typedef struct finch_optim_tensor {
    char name[256];
    finch_dtype dtype;       /* F32, BF16, F16 or U8 */
    int64_t numel;
} finch_optim_tensor;

int finch_optim_tensor_count(const finch_optim *o);
void finch_optim_tensor_info(const finch_optim *o, int i, finch_optim_tensor *out);
int finch_optim_tensor_read(const finch_optim *o, int i, void *dst);
int finch_optim_tensor_write(finch_optim *o, int i, const void *src);

#endif
