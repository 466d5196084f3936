/* The model's tensors read back from the device as f32, under their checkpoint names and in the
 * checkpoint's layout (our row orders undone), with the LoRA adapters merged in on request. One
 * place reads base weights, so every exporter sees the same values and a new weight storage (NF4)
 * needs teaching here only. */
#ifndef FINCH_CORE_MODEL_WEIGHTS_H
#define FINCH_CORE_MODEL_WEIGHTS_H

#include "core/model.h"

typedef enum finch_weight_kind {
    FINCH_WEIGHT_PARAM,        /* an embedding, norm or lm_head: param as stored */
    FINCH_WEIGHT_LINEAR,       /* a linear layer's weight [out, in] */
    FINCH_WEIGHT_LINEAR_BIAS   /* a linear layer's bias [out] */
} finch_weight_kind;

typedef struct finch_model_tensor {
    const char *name;                  /* checkpoint name */
    finch_weight_kind kind;
    const finch_param *param;          /* the stored parameter (for a linear: its weight or bias) */
    const finch_linear_module *lin;    /* LINEAR, LINEAR_BIAS */
    int ndim;
    int64_t shape[2];                  /* checkpoint shape */
    int64_t numel;
} finch_model_tensor;

/* Every base tensor: the embedding, each layer's norms and linears (weight, bias), the final norm and
 * lm_head when it is not tied. Free *out with free(). */
int finch_model_tensors(const finch_model *m, finch_model_tensor **out, int *n);

/* The base weight of lin as f32 [out, in] in the checkpoint's row order. */
int finch_linear_weight_f32(const finch_model *m, const finch_linear_module *lin, float *dst);
/* The adapter factors of lin as f32: A [rank, in], B [out, rank] in the checkpoint's row order. */
int finch_lora_factors_f32(const finch_model *m, const finch_linear_module *lin, float *a, float *b);
/* W + scale * B A computed in f32 (just W without an adapter); a non-finite result is an error naming
 * the tensor. */
int finch_linear_merged_f32(const finch_model *m, const finch_linear_module *lin, float *dst);
/* t's values as f32 in the checkpoint layout; merge: fold adapters into linear weights. */
int finch_model_tensor_f32(const finch_model *m, const finch_model_tensor *t, int merge, float *dst);

#endif
