/* Device tensors as the core sees them.
 *
 * finch_tensor is an activation: a 2-D row-major view [rows, cols] with row stride ld (elements) over
 * device memory. Views of one allocation (the q, k and v column blocks of a fused qkv projection) share
 * the autograd node that holds their gradient; node_off says where the view starts inside it.
 *
 * finch_param is a tensor the model owns for its lifetime (a weight, a norm, a LoRA factor), with an
 * f32 gradient buffer when it is trainable. */
#ifndef FINCH_CORE_TENSOR_H
#define FINCH_CORE_TENSOR_H

#include "finch/plugin.h"

typedef struct finch_tensor {
    finch_dtype dtype;
    int64_t rows, cols, ld;
    finch_dptr data;
    int node;            /* autograd node holding the gradient; -1: no gradient flows here */
    int64_t node_off;    /* element offset of data inside the node's allocation */
} finch_tensor;

typedef struct finch_param {
    char name[192];      /* checkpoint name ("model.layers.0.self_attn.q_proj.weight") or PEFT name */
    finch_dtype dtype;
    int ndim;
    int64_t shape[2];
    int64_t numel;
    finch_dptr data;     /* absent for a parameter the checkpoint does not have */
    finch_dptr grad;     /* f32 [numel]; absent unless trainable */
} finch_param;

static inline int finch_dptr_present(finch_dptr p) { return p.buf != NULL; }

static inline finch_dptr finch_dptr_at(finch_dptr p, size_t bytes)
{
    finch_dptr r = p;
    if (r.buf) r.offset += bytes;
    return r;
}

static inline finch_dptr finch_dptr_none(void)
{
    finch_dptr r = {0, 0};
    return r;
}

/* Columns [c0, c0 + n) of t: a strided view sharing t's gradient node. */
finch_tensor finch_tensor_cols(const finch_tensor *t, int64_t c0, int64_t n);
/* Rows [r0, r0 + n) of t, a view sharing t's memory and gradient node. */
finch_tensor finch_tensor_rows(const finch_tensor *t, int64_t r0, int64_t n);
/* The same memory seen as [rows, cols] (t must be contiguous). */
finch_tensor finch_tensor_reshape(const finch_tensor *t, int64_t rows, int64_t cols);
static inline int finch_tensor_contiguous(const finch_tensor *t) { return t->ld == t->cols; }
static inline int64_t finch_tensor_numel(const finch_tensor *t) { return t->rows * t->cols; }

#endif
