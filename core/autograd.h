/* The autograd tape of one step.
 *
 * While recording, every op appends ONE entry: its backward function and a record (the op's
 * descriptor and the tensors its backward needs), copied into a host byte buffer. Backward runs the
 * entries in reverse. Gradients of activations live in nodes: a node is one device allocation's
 * gradient, allocated from the arena on first write. The first op (in backward order) that writes a
 * node overwrites it, later ones accumulate, so no gradient buffer is ever cleared except when a
 * strided view covers only part of its node. Nothing is freed per op: a step reuses the host buffers
 * of the previous one and allocates device memory only from the arena. */
#ifndef FINCH_CORE_AUTOGRAD_H
#define FINCH_CORE_AUTOGRAD_H

#include "core/arena.h"
#include "core/tensor.h"

enum { FINCH_GRAD_NONE = 0, FINCH_GRAD_ZEROED = 1, FINCH_GRAD_WRITTEN = 2 };

typedef struct finch_node {
    finch_dptr grad;
    finch_dtype dtype;
    int64_t rows, ld;     /* the allocation's shape: rows x ld elements */
    int state;            /* FINCH_GRAD_* */
    int sole_reader;      /* read only by a sum, which may hand it its own gradient (finch_grad_borrow) */
} finch_node;

typedef struct finch_graph finch_graph;
typedef int (*finch_backward_fn)(finch_graph *g, const void *record);

typedef struct finch_tape_entry {
    finch_backward_fn backward;
    size_t record_offset;
} finch_tape_entry;

struct finch_graph {
    const finch_backend *be;
    finch_arena *arena;
    int recording;        /* ops append entries; otherwise they only compute */
    int want_grad;        /* new tensors get nodes (gradients will flow) */
    finch_node *nodes; int n_nodes, cap_nodes;
    finch_tape_entry *tape; int n_tape, cap_tape;
    unsigned char *records; size_t n_records, cap_records;
};

typedef struct finch_graph_mark {
    int n_nodes, n_tape;
    size_t n_records;
} finch_graph_mark;

void finch_graph_init(finch_graph *g, const finch_backend *be, finch_arena *arena);
void finch_graph_free(finch_graph *g);
/* Forgets all nodes and entries (the host buffers are kept for the next step). */
void finch_graph_clear(finch_graph *g);
finch_graph_mark finch_graph_get_mark(const finch_graph *g);
void finch_graph_reset(finch_graph *g, finch_graph_mark m);

/* Allocates an activation [rows, cols] from the arena; it gets a node when requires_grad. */
int finch_graph_tensor(finch_graph *g, finch_dtype dtype, int64_t rows, int64_t cols, int requires_grad,
                       finch_tensor *out);
/* The same over device memory the caller holds (data, contiguous); data absent: from the arena. */
int finch_graph_tensor_at(finch_graph *g, finch_dtype dtype, int64_t rows, int64_t cols, finch_dptr data, int requires_grad,
                          finch_tensor *out);
/* Gives t a node whose gradient lives in grad (a caller-owned buffer, e.g. the residual stream's). */
int finch_graph_bind_grad(finch_graph *g, finch_tensor *t, finch_dptr grad);
void finch_graph_rebind_grad(finch_graph *g, const finch_tensor *t, finch_dptr grad);

int finch_graph_record(finch_graph *g, finch_backward_fn fn, const void *record, size_t size);
/* Runs entries [first, n_tape) in reverse order. */
int finch_graph_backward(finch_graph *g, int first);

/* Backward helpers. The gradient of an op's output: present only once something wrote it. */
int finch_grad_of_output(finch_graph *g, const finch_tensor *t, finch_dptr *dy);
/* Where to write the gradient of an input: *accumulate says whether to add to what is there.
 * Call finch_grad_written() for every target after the op ran. Absent dptr: t needs no gradient. */
int finch_grad_target(finch_graph *g, const finch_tensor *t, finch_dptr *dx, int *accumulate);
void finch_grad_written(finch_graph *g, const finch_tensor *t);
/* Marks t as read by nothing but one residual sum, whose backward may then give t the sum's own
 * gradient dy (y's, laid out as t) as its gradient, instead of a copy: finch_grad_borrow says whether
 * it did. Everything that reads t's gradient afterwards must only read it. */
void finch_graph_sole_reader(finch_graph *g, const finch_tensor *t);
int finch_grad_borrow(finch_graph *g, const finch_tensor *t, const finch_tensor *y, finch_dptr dy);

/* For ops that can only overwrite: a destination for t's gradient; when the node already holds a
 * gradient it is a zeroed scratch of the node's shape and finch_grad_commit() adds it in. */
typedef struct finch_grad_slot {
    finch_dptr dst;       /* write the gradient here (row stride: the tensor's ld) */
    finch_dptr scratch;   /* node-shaped scratch to add into the node, or absent */
    int node;
} finch_grad_slot;
int finch_grad_overwrite_slot(finch_graph *g, const finch_tensor *t, finch_grad_slot *slot);
int finch_grad_commit(finch_graph *g, const finch_tensor *t, const finch_grad_slot *slot);

/* Reports a failed plugin call: status FINCH_ERR_DEVICE (or the plugin's) with its message. */
int finch_device_error(const finch_backend *be, int rc, const char *what);

#endif
