/* Row ops for moving features between tensors: a gather (reordering) and an in-place overwrite of
 * some rows by another tensor's rows (image features over token embeddings). Both differentiable. */
#ifndef FINCH_CORE_OPS_ROWS_H
#define FINCH_CORE_OPS_ROWS_H

#include "core/autograd.h"

/* y [n, x.cols] with y[i] = x[ids[i]]; ids: i32 [n] on the device, each in [0, x.rows); x contiguous.
 * Backward scatter-adds dy into dx (through the plugin's embedding entries). */
int finch_op_gather_rows(finch_graph *g, const finch_tensor *x, finch_dptr ids, int64_t n, finch_tensor *y);

/* A run of consecutive rows: dst rows [dst_row, dst_row + count) take src rows [src_row, ...). */
typedef struct finch_row_run {
    int64_t dst_row, src_row, count;
} finch_row_run;

/* Overwrites rows of dst (contiguous, same width as src) with rows of src, in place; dst keeps its
 * node. Backward: src's gradient is those rows of dst's gradient, which are then zeroed (dst's
 * earlier value no longer reaches the output there). runs must stay valid until backward. */
int finch_op_overwrite_rows(finch_graph *g, const finch_tensor *dst, const finch_tensor *src, const finch_row_run *runs,
                            int64_t n_runs);

#endif
