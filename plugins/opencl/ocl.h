/* The OpenCL plugin's internals: devices, buffers, streams, the kernel program, and the
 * entries of the plugin table, one file per family (ocl_*.c). */
#ifndef FINCH_PLUGINS_OPENCL_OCL_H
#define FINCH_PLUGINS_OPENCL_OCL_H

#define CL_TARGET_OPENCL_VERSION 120
#include <CL/cl.h>
#include <pthread.h>

#include "finch/plugin.h"

#define OCL_ROW_WG 256          /* work-group size of the row kernels (a power of two) */
#define OCL_MAX_HEAD_DIM 256    /* attention's private row vectors */

/* Every kernel of the one program, by name; ocl_kernel_names[] in ocl_program.c follows it. */
#define OCL_KERNELS(X)                                                                            \
    X(fill) X(cast) X(copy_2d) X(copy_rows) X(axpby) X(activation_forward) X(activation_backward) X(glu_forward) \
    X(glu_backward) X(adamw_step) X(sum_squares_partial) X(sum_strided) X(column_sum) X(gemm)      \
    X(add_bias) X(dropout_apply) X(dropout_accumulate) X(rmsnorm_forward) X(rmsnorm_backward)      \
    X(rmsnorm_dw) X(layernorm_forward) X(layernorm_backward) X(layernorm_dwdb) X(rope)             \
    X(embedding_forward) X(embedding_backward) X(cross_entropy_rows) X(attention_forward)          \
    X(attention_delta) X(attention_dq) X(attention_dkdv) X(adamw8bit_step) X(attention_cache_forward) \
    X(add_rmsnorm_forward)

typedef enum ocl_kernel_id {
#define OCL_KERNEL_ENUM(name) OCL_K_##name,
    OCL_KERNELS(OCL_KERNEL_ENUM)
#undef OCL_KERNEL_ENUM
    OCL_K_COUNT
} ocl_kernel_id;

struct finch_plugin_buffer {
    cl_mem mem;
    size_t bytes;
};

struct finch_plugin_stream {
    cl_command_queue queue;
    cl_mem scratch;             /* temporaries of one entry; in-order queue, so reuse is safe */
    size_t scratch_bytes;
    cl_mem flag;                /* one int a kernel sets to report bad input (an id out of range) */
};

struct finch_plugin_device {
    int index;
    cl_platform_id platform;
    cl_device_id device;
    cl_context context;
    cl_program program;
    cl_kernel kernels[OCL_K_COUNT];
    pthread_mutex_t launch_lock;    /* a cl_kernel's arguments are shared state */
    finch_plugin_stream default_stream;
    size_t max_work_group;
    uint64_t total_memory;
    uint64_t allocated;             /* bytes held by alloc(), for memory_info */
    pthread_mutex_t alloc_lock;
};

/* A device address inside the plugin: a cl_mem (or NULL) and a byte offset. */
typedef struct ocl_ptr {
    cl_mem mem;
    size_t off;
} ocl_ptr;

static inline ocl_ptr ocl_p(finch_dptr d)
{
    ocl_ptr p = {d.buf ? d.buf->mem : NULL, d.offset};
    return p;
}

static inline ocl_ptr ocl_at(ocl_ptr p, size_t bytes)
{
    ocl_ptr q = {p.mem, p.off + bytes};
    return q;
}

/* --- errors (ocl_error.c) ------------------------------------------------------------------- */
int ocl_fail(int status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* A CL error: the status that fits it (OUT_OF_MEMORY for allocation failures, else DEVICE)
 * and a message "<what>: <call> failed with CL_ERROR_NAME". */
int ocl_cl_fail(cl_int err, const char *call, const char *what);
const char *ocl_cl_error_name(cl_int err);
const char *ocl_last_error(void);

/* Returns FINCH_ERR_INVALID_ARGUMENT with a message unless cond holds. */
#define OCL_NEED(cond, ...)                                                          \
    do {                                                                             \
        if (!(cond)) return ocl_fail(FINCH_ERR_INVALID_ARGUMENT, __VA_ARGS__);       \
    } while (0)

/* --- enumeration (ocl_plugin.c) -------------------------------------------------------------- */
int ocl_device_lookup(int index, cl_platform_id *platform, cl_device_id *device);

/* --- program (ocl_program.c) ----------------------------------------------------------------- */
int ocl_program_load(finch_plugin_device *dev);

/* --- streams and scratch (ocl_device.c) ------------------------------------------------------ */
finch_plugin_stream *ocl_stream(finch_plugin_device *dev, finch_plugin_stream *s);
/* Makes the stream's scratch hold at least bytes; valid until the next entry on that stream. */
int ocl_scratch(finch_plugin_device *dev, finch_plugin_stream *s, size_t bytes, ocl_ptr *out);
/* Zeroes the stream's bad-input flag, and reads it back (blocking) after the kernels ran. */
int ocl_flag_clear(finch_plugin_stream *s);
int ocl_flag_read(finch_plugin_stream *s, int *value);

/* --- kernel launches (ocl_launch.c) ---------------------------------------------------------- */
#define OCL_MAX_ARGS 40
typedef struct ocl_args {
    int n;
    struct {
        size_t size;
        int null_mem;
        union { cl_mem mem; cl_ulong u; cl_long l; cl_int i; cl_float f; } v;
    } a[OCL_MAX_ARGS];
} ocl_args;

void ocl_arg_ptr(ocl_args *a, ocl_ptr p);   /* two arguments: the buffer and the byte offset */
void ocl_arg_i(ocl_args *a, int v);
void ocl_arg_l(ocl_args *a, int64_t v);
void ocl_arg_u(ocl_args *a, uint64_t v);
void ocl_arg_f(ocl_args *a, float v);
/* Sets the arguments and enqueues; global sizes are rounded up to multiples of local. */
int ocl_launch(finch_plugin_device *dev, finch_plugin_stream *s, ocl_kernel_id k, const ocl_args *a, int dims,
               const size_t *global, const size_t *local);
/* A 1-D launch over n items in work-groups of 256 (or the device's limit). */
int ocl_launch_1d(finch_plugin_device *dev, finch_plugin_stream *s, ocl_kernel_id k, const ocl_args *a, int64_t n);
/* A 2-D launch over cols x rows items (cols fastest). */
int ocl_launch_2d(finch_plugin_device *dev, finch_plugin_stream *s, ocl_kernel_id k, const ocl_args *a,
                  int64_t cols, int64_t rows);
/* One work-group of OCL_ROW_WG per row. */
int ocl_launch_rows(finch_plugin_device *dev, finch_plugin_stream *s, ocl_kernel_id k, const ocl_args *a,
                    int64_t rows);

/* --- shared pieces of the entries ------------------------------------------------------------ */
size_t ocl_dtype_size(finch_dtype t);       /* 0 for NF4 and unknown types */
int ocl_check_float_type(finch_dtype t, const char *what);

/* The GEMM every matmul entry goes through (ocl_gemm.c). B may be NF4 (w != NULL gives its
 * absmax/code/blocksize); C = alpha op(A) op(B) + beta C. */
typedef struct ocl_gemm_call {
    int trans_a, trans_b;
    int64_t m, n, k;
    finch_dtype a_type, b_type, c_type;
    ocl_ptr a, b, c;
    int64_t lda, ldb, ldc;
    int64_t stride_a, stride_b, stride_c, batch;
    const finch_weight *w;          /* NF4 parameters when b_type == NF4 */
    float alpha, beta;
} ocl_gemm_call;
int ocl_gemm_run(finch_plugin_device *dev, finch_plugin_stream *s, const ocl_gemm_call *g);
/* op(B) = W^T (trans 1) or W (trans 0) for a dense or NF4 [out, in] weight. */
int ocl_gemm_weight(finch_plugin_device *dev, finch_plugin_stream *s, const finch_weight *w, int trans_w,
                    int64_t m, int64_t n, int64_t k, finch_dtype a_type, ocl_ptr a, int64_t lda,
                    finch_dtype c_type, ocl_ptr c, int64_t ldc, float alpha, float beta);
int ocl_check_weight(const finch_weight *w, int64_t out_features, int64_t in_features, const char *entry);

/* Cross-entropy rows into (loss, count) pairs at rows, then added into loss_sum/count (ocl_loss.c). */
typedef struct ocl_ce_call {
    int64_t n_tokens, vocab;
    finch_dtype dtype;
    ocl_ptr logits; int64_t ld;
    ocl_ptr labels;
    float softcap, grad_scale;
    int write_grad;
    finch_dtype grad_type;
    ocl_ptr dlogits; int64_t lddlogits;
    ocl_ptr rows;                   /* f32 [2 * n_tokens] scratch */
    ocl_ptr loss_sum, count;
} ocl_ce_call;
int ocl_cross_entropy_run(finch_plugin_device *dev, finch_plugin_stream *s, const ocl_ce_call *c);

/* --- the entries ----------------------------------------------------------------------------- */
int ocl_device_open(int index, finch_plugin_device **out);
void ocl_device_close(finch_plugin_device *dev);
int ocl_memory_info(finch_plugin_device *dev, uint64_t *free_bytes, uint64_t *total_bytes);
int ocl_stream_create(finch_plugin_device *dev, finch_plugin_stream **out);
void ocl_stream_destroy(finch_plugin_device *dev, finch_plugin_stream *s);
int ocl_event_create(finch_plugin_device *dev, finch_plugin_event **out);
void ocl_event_destroy(finch_plugin_device *dev, finch_plugin_event *ev);
int ocl_event_record(finch_plugin_device *dev, finch_plugin_stream *s, finch_plugin_event *ev);
int ocl_stream_wait_event(finch_plugin_device *dev, finch_plugin_stream *s, finch_plugin_event *ev);
int ocl_synchronize(finch_plugin_device *dev, finch_plugin_stream *s);
int ocl_alloc(finch_plugin_device *dev, size_t bytes, finch_plugin_buffer **out);
void ocl_free(finch_plugin_device *dev, finch_plugin_buffer *buf);
int ocl_write(finch_plugin_device *dev, finch_plugin_stream *s, finch_dptr dst, const void *src, size_t bytes);
int ocl_read(finch_plugin_device *dev, finch_plugin_stream *s, finch_dptr src, void *dst, size_t bytes);
int ocl_copy(finch_plugin_device *dev, finch_plugin_stream *s, finch_dptr dst, finch_dptr src, size_t bytes);

int ocl_fill(finch_plugin_device *dev, finch_plugin_stream *s, finch_dptr dst, finch_dtype dtype, int64_t count,
             float value);
int ocl_copy_2d(finch_plugin_device *dev, finch_plugin_stream *s, finch_dtype dtype, int64_t rows, int64_t cols,
                finch_dptr src, int64_t ld_src, finch_dptr dst, int64_t ld_dst);
int ocl_copy_rows(finch_plugin_device *dev, finch_plugin_stream *s, finch_dtype dtype, int64_t n, int64_t cols, finch_dptr src,
                  int64_t ld_src, finch_dptr rows, finch_dptr dst, int64_t ld_dst);
int ocl_cast(finch_plugin_device *dev, finch_plugin_stream *s, int64_t n, finch_dtype src_type, finch_dptr src,
             finch_dtype dst_type, finch_dptr dst);
int ocl_axpby(finch_plugin_device *dev, finch_plugin_stream *s, int64_t n, finch_dtype dtype, float alpha,
              finch_dptr x, float beta, finch_dptr y, finch_dptr out);
int ocl_activation_forward(finch_plugin_device *dev, finch_plugin_stream *s, finch_activation act, float param,
                           int64_t n, finch_dtype dtype, finch_dptr x, finch_dptr y);
int ocl_activation_backward(finch_plugin_device *dev, finch_plugin_stream *s, finch_activation act, float param,
                            int64_t n, finch_dtype dtype, finch_dptr x, finch_dptr dy, finch_dptr dx);
int ocl_glu_forward(finch_plugin_device *dev, finch_plugin_stream *s, finch_activation act, int64_t n, int64_t dim,
                    finch_dtype dtype, finch_dptr gate, int64_t ldg, finch_dptr up, int64_t ldu, finch_dptr out);
int ocl_glu_backward(finch_plugin_device *dev, finch_plugin_stream *s, finch_activation act, int64_t n, int64_t dim,
                     finch_dtype dtype, finch_dptr gate, int64_t ldg, finch_dptr up, int64_t ldu, finch_dptr dout,
                     finch_dptr dgate, finch_dptr dup);
int ocl_adamw_step(finch_plugin_device *dev, finch_plugin_stream *s, const finch_adamw_desc *d);
int ocl_adamw8bit_step(finch_plugin_device *dev, finch_plugin_stream *s, const finch_adamw8bit_desc *d);
int ocl_sum_squares(finch_plugin_device *dev, finch_plugin_stream *s, int64_t n, finch_dtype dtype, finch_dptr x,
                    finch_dptr sum_sq);

int ocl_gemm(finch_plugin_device *dev, finch_plugin_stream *s, const finch_gemm_desc *d);
int ocl_qmatmul_forward(finch_plugin_device *dev, finch_plugin_stream *s, const finch_weight *w,
                        int64_t out_features, int64_t in_features, int64_t m, finch_dtype act_type, finch_dptr x,
                        int64_t ldx, finch_dptr y, int64_t ldy, float beta);
int ocl_qmatmul_backward(finch_plugin_device *dev, finch_plugin_stream *s, const finch_weight *w,
                         int64_t out_features, int64_t in_features, int64_t m, finch_dtype act_type, finch_dptr dy,
                         int64_t lddy, finch_dptr dx, int64_t lddx, float beta);
int ocl_linear_forward(finch_plugin_device *dev, finch_plugin_stream *s, const finch_linear_desc *d);
int ocl_linear_forward_group(finch_plugin_device *dev, finch_plugin_stream *s, const finch_linear_desc *descs, int count);
int ocl_linear_backward(finch_plugin_device *dev, finch_plugin_stream *s, const finch_linear_desc *d);
int ocl_attention_forward(finch_plugin_device *dev, finch_plugin_stream *s, const finch_attention_desc *d);
int ocl_attention_backward(finch_plugin_device *dev, finch_plugin_stream *s, const finch_attention_desc *d);
int ocl_attention_cache_forward(finch_plugin_device *dev, finch_plugin_stream *s, const finch_attention_cache_desc *d);
int ocl_rmsnorm_forward(finch_plugin_device *dev, finch_plugin_stream *s, int64_t n, int64_t dim, finch_dtype dtype,
                        finch_dptr x, finch_dtype w_type, finch_dptr w, float weight_offset, float eps,
                        finch_dptr y, finch_dptr rstd);
int ocl_add_rmsnorm_forward(finch_plugin_device *dev, finch_plugin_stream *s, int64_t n, int64_t dim, finch_dtype dtype,
                            finch_dptr x, finch_dptr d, finch_dptr sum, finch_dtype w_type, finch_dptr w,
                            float weight_offset, float eps, finch_dptr y, finch_dptr rstd);
int ocl_rmsnorm_backward(finch_plugin_device *dev, finch_plugin_stream *s, int64_t n, int64_t dim,
                         finch_dtype dtype, finch_dptr x, finch_dtype w_type, finch_dptr w, float weight_offset,
                         finch_dptr rstd, finch_dptr dy, finch_dptr dx, int dx_accumulate, finch_dptr dw);
int ocl_layernorm_forward(finch_plugin_device *dev, finch_plugin_stream *s, int64_t n, int64_t dim,
                          finch_dtype dtype, finch_dptr x, finch_dtype w_type, finch_dptr w, finch_dptr b,
                          float eps, finch_dptr y, finch_dptr mean, finch_dptr rstd);
int ocl_layernorm_backward(finch_plugin_device *dev, finch_plugin_stream *s, int64_t n, int64_t dim,
                           finch_dtype dtype, finch_dptr x, finch_dtype w_type, finch_dptr w, finch_dptr mean,
                           finch_dptr rstd, finch_dptr dy, finch_dptr dx, int dx_accumulate, finch_dptr dw,
                           finch_dptr db);
int ocl_rope_forward(finch_plugin_device *dev, finch_plugin_stream *s, const finch_rope_desc *d);
int ocl_rope_backward(finch_plugin_device *dev, finch_plugin_stream *s, const finch_rope_desc *d);
int ocl_embedding_forward(finch_plugin_device *dev, finch_plugin_stream *s, int64_t n_tokens, int64_t dim,
                          int64_t vocab, finch_dptr ids, finch_dtype table_type, finch_dptr table,
                          finch_dtype out_type, finch_dptr out, float scale);
int ocl_embedding_backward(finch_plugin_device *dev, finch_plugin_stream *s, int64_t n_tokens, int64_t dim,
                           int64_t vocab, finch_dptr ids, finch_dtype dout_type, finch_dptr dout, finch_dptr dtable,
                           float scale);
int ocl_cross_entropy(finch_plugin_device *dev, finch_plugin_stream *s, const finch_cross_entropy_desc *d);
int ocl_linear_cross_entropy(finch_plugin_device *dev, finch_plugin_stream *s,
                             const finch_linear_cross_entropy_desc *d);

#endif
