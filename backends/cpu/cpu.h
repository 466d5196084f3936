/* The built-in CPU backend: private pieces shared by its files.
 *
 * Device memory is host memory: a buffer is one 64-byte-aligned allocation and a finch_dptr resolves
 * to buffer->data + offset after a bounds check. Streams run synchronously. Storage may be f32, bf16
 * or f16; arithmetic is always f32, through the load/store converters below (cpu_convert.c, on the
 * scalar conversions of core/half.h). */
#ifndef FINCH_BACKENDS_CPU_CPU_H
#define FINCH_BACKENDS_CPU_CPU_H

#include "core/error.h"
#include "core/half.h"
#include "finch/plugin.h"

#include <stdint.h>
#include <string.h>

struct finch_plugin_buffer {
    void *data;
    size_t size;
};

struct finch_plugin_device {
    int index;
};

struct finch_plugin_stream {
    int unused;     /* work runs synchronously; the handle only has to be distinct and valid */
};

/* --- threads (cpu_parallel.c) ------------------------------------------------------------------ */

/* Threads the backend works on: finch_cpu_set_threads, or the cores this process may run on. */
int cpu_threads(void);
/* body(ctx, begin, end, chunk) for each chunk of [0, n): piece `chunk` of `chunks` contiguous, near-equal
 * pieces, run on the backend's threads and the caller's. Returns when all are done. */
typedef void (*cpu_chunk_fn)(void *ctx, int64_t begin, int64_t end, int chunk);
void cpu_parallel(int64_t n, int64_t chunks, void *ctx, cpu_chunk_fn body);
/* How many chunks cpu_parallel_for cuts [0, n) into: 1 when !wide (too little work to share) or one
 * thread, else a few per thread. Depends only on n, wide and the thread count. */
int64_t cpu_chunks(int64_t n, int wide);
void cpu_parallel_for(int64_t n, int wide, void *ctx, cpu_chunk_fn body);
/* Stops the pool's threads (cpu_shutdown); the next parallel call starts them again. */
void cpu_shutdown_threads(void);

/* --- dtypes and addresses (cpu_memory.c) ------------------------------------------------------ */

size_t cpu_dtype_size(finch_dtype t);      /* 0 for NF4 and unknown values */
const char *cpu_dtype_name(finch_dtype t);
/* F32, BF16 or F16, else FINCH_ERR_INVALID_ARGUMENT naming `what`. */
int cpu_check_float(finch_dtype t, const char *what);

/* Resolves p to a host pointer after checking that `bytes` bytes from it lie inside the buffer.
 * An absent p is an error, or *out = NULL with the _opt variants. */
int cpu_span(finch_dptr p, size_t bytes, const char *what, void **out);
int cpu_span_opt(finch_dptr p, size_t bytes, const char *what, void **out);
/* The same for rows x cols elements of t with row stride ld (ld >= cols). */
int cpu_matrix(finch_dptr p, finch_dtype t, int64_t rows, int64_t cols, int64_t ld, const char *what,
               void **out);
int cpu_matrix_opt(finch_dptr p, finch_dtype t, int64_t rows, int64_t cols, int64_t ld, const char *what,
                   void **out);
/* batch matrices, `stride` elements apart. */
int cpu_matrix_batch(finch_dptr p, finch_dtype t, int64_t batch, int64_t stride, int64_t rows, int64_t cols,
                     int64_t ld, const char *what, void **out);
int cpu_oom(size_t bytes, const char *what);

static inline void *cpu_at(finch_dtype t, const void *base, int64_t i)
{
    return (char *)base + (size_t)i * cpu_dtype_size(t);
}

/* --- conversion (cpu_convert.c) ---------------------------------------------------------------- */

/* n consecutive elements of t (a float type) to f32 and back. */
void cpu_load(finch_dtype t, const void *src, int64_t n, float *dst);
void cpu_store(finch_dtype t, const float *src, int64_t n, void *dst);
/* A rows x cols block of t with row stride ld as f32: the block itself when t is F32 (*ld_out = ld),
 * else converted into scratch (rows * cols floats, *ld_out = cols). */
const float *cpu_load_block(finch_dtype t, const void *src, int64_t rows, int64_t cols, int64_t ld,
                            float *scratch, int64_t *ld_out);
/* Where f32 results for a block of t should be written: the block itself for F32, else scratch. */
float *cpu_out_block(finch_dtype t, void *dst, int64_t ld, float *scratch, int64_t *ld_out);
/* Stores an f32 block into dst (a no-op when src is dst, as cpu_out_block gives for F32). */
void cpu_store_block(finch_dtype t, const float *src, int64_t ld_src, int64_t rows, int64_t cols, void *dst,
                     int64_t ld);

/* --- matrix products (cpu_gemm.c) --------------------------------------------------------------- */

/* An operand op(X) of a product: stored row-major with row stride ld; trans: stored as its transpose. */
typedef struct cpu_mat {
    finch_dtype type;
    const void *p;
    int64_t ld;
    int trans;
} cpu_mat;

/* C [m, n] (c_type, ldc) = alpha * a [m, k] b [k, n] + beta * C, f32 arithmetic through OpenBLAS.
 * Non-f32 operands are converted a panel at a time. Call from serial code only. */
int cpu_gemm(int64_t m, int64_t n, int64_t k, float alpha, cpu_mat a, cpu_mat b, float beta, finch_dtype c_type,
             void *c, int64_t ldc);

/* --- weights: dense or 4-bit blockwise (cpu_qmatmul.c) ------------------------------------------ */

typedef struct cpu_weight {
    finch_dtype dtype;          /* F32/BF16/F16, or NF4 */
    const void *data;
    const float *absmax, *code; /* NF4 only */
    int64_t blocksize;
} cpu_weight;

/* Validates w as an [out, in] weight and resolves its pointers. */
int cpu_weight_resolve(const finch_weight *w, int64_t out_features, int64_t in_features, const char *what,
                       cpu_weight *rw);
/* y [m, out] = x [m, in] W^T + beta * y. */
int cpu_weight_matmul_t(const cpu_weight *w, int64_t out_features, int64_t in_features, int64_t m, cpu_mat x,
                        float beta, finch_dtype y_type, void *y, int64_t ldy);
/* dx [m, in] = dy [m, out] W + beta * dx. */
int cpu_weight_matmul(const cpu_weight *w, int64_t out_features, int64_t in_features, int64_t m, cpu_mat dy,
                      float beta, finch_dtype dx_type, void *dx, int64_t lddx);

/* --- activations (cpu_activation.c) -------------------------------------------------------------- */

/* a[i] = act(x[i]) and, when da != NULL, da[i] = act'(x[i]); param is the SOFTCAP cap. */
void cpu_act_row(finch_activation act, float param, const float *x, int64_t n, float *a, float *da);
int cpu_check_act(finch_activation act, float param, const char *what);

/* --- losses (cpu_loss.c) -------------------------------------------------------------------------- */

/* Cross-entropy of one row of logits z against label (already checked in range); returns the loss.
 * With dz: dz = grad_scale * dloss/dz through the softcap; dz may be z. */
double cpu_ce_row(const float *z, float *dz, int64_t vocab, int label, float softcap, float grad_scale);

/* --- entries ----------------------------------------------------------------------------------- */

int cpu_init(void);
void cpu_shutdown(void);
const char *cpu_last_error(void);
int cpu_device_count(int *count);
int cpu_device_info(int index, finch_device_info *info);
int cpu_device_details(int index, char *buf, size_t size);
int cpu_host_alloc(finch_plugin_device *dev, size_t bytes, void **out);
void cpu_host_free(finch_plugin_device *dev, void *ptr);
int cpu_device_open(int index, finch_plugin_device **out);
void cpu_device_close(finch_plugin_device *dev);
int cpu_memory_info(finch_plugin_device *dev, uint64_t *free_bytes, uint64_t *total_bytes);
int cpu_stream_create(finch_plugin_device *dev, finch_plugin_stream **out);
void cpu_stream_destroy(finch_plugin_device *dev, finch_plugin_stream *s);
int cpu_synchronize(finch_plugin_device *dev, finch_plugin_stream *s);
int cpu_alloc(finch_plugin_device *dev, size_t bytes, finch_plugin_buffer **out);
void cpu_free(finch_plugin_device *dev, finch_plugin_buffer *buf);
int cpu_write(finch_plugin_device *dev, finch_plugin_stream *s, finch_dptr dst, const void *src, size_t bytes);
int cpu_read(finch_plugin_device *dev, finch_plugin_stream *s, finch_dptr src, void *dst, size_t bytes);
int cpu_copy(finch_plugin_device *dev, finch_plugin_stream *s, finch_dptr dst, finch_dptr src, size_t bytes);
int cpu_fill(finch_plugin_device *dev, finch_plugin_stream *s, finch_dptr dst, finch_dtype dtype, int64_t count,
             float value);
int cpu_copy_2d(finch_plugin_device *dev, finch_plugin_stream *s, finch_dtype dtype, int64_t rows, int64_t cols,
                finch_dptr src, int64_t ld_src, finch_dptr dst, int64_t ld_dst);
int cpu_copy_rows(finch_plugin_device *dev, finch_plugin_stream *s, finch_dtype dtype, int64_t n, int64_t cols, finch_dptr src,
                  int64_t ld_src, finch_dptr rows, finch_dptr dst, int64_t ld_dst);
int cpu_cast(finch_plugin_device *dev, finch_plugin_stream *s, int64_t n, finch_dtype src_type, finch_dptr src,
             finch_dtype dst_type, finch_dptr dst);
int cpu_gemm_entry(finch_plugin_device *dev, finch_plugin_stream *s, const finch_gemm_desc *d);
int cpu_axpby(finch_plugin_device *dev, finch_plugin_stream *s, int64_t n, finch_dtype dtype, float alpha,
              finch_dptr x, float beta, finch_dptr y, finch_dptr out);
int cpu_sum_squares(finch_plugin_device *dev, finch_plugin_stream *s, int64_t n, finch_dtype dtype, finch_dptr x,
                    finch_dptr sum_sq);
int cpu_sum_squares_multi(finch_plugin_device *dev, finch_plugin_stream *s, int count, const int64_t *n, const finch_dtype *dtype,
                          const finch_dptr *x, finch_dptr sum_sq);
int cpu_qmatmul_forward(finch_plugin_device *dev, finch_plugin_stream *s, const finch_weight *w,
                        int64_t out_features, int64_t in_features, int64_t m, finch_dtype act_type, finch_dptr x,
                        int64_t ldx, finch_dptr y, int64_t ldy, float beta);
int cpu_qmatmul_backward(finch_plugin_device *dev, finch_plugin_stream *s, const finch_weight *w,
                         int64_t out_features, int64_t in_features, int64_t m, finch_dtype act_type, finch_dptr dy,
                         int64_t lddy, finch_dptr dx, int64_t lddx, float beta);
int cpu_linear_forward(finch_plugin_device *dev, finch_plugin_stream *s, const finch_linear_desc *d);
int cpu_linear_forward_group(finch_plugin_device *dev, finch_plugin_stream *s, const finch_linear_desc *descs, int count);
int cpu_linear_backward(finch_plugin_device *dev, finch_plugin_stream *s, const finch_linear_desc *d);
int cpu_attention_forward(finch_plugin_device *dev, finch_plugin_stream *s, const finch_attention_desc *d);
int cpu_attention_backward(finch_plugin_device *dev, finch_plugin_stream *s, const finch_attention_desc *d);
int cpu_attention_cache_forward(finch_plugin_device *dev, finch_plugin_stream *s, const finch_attention_cache_desc *d);
int cpu_attention_cache_append_forward(finch_plugin_device *dev, finch_plugin_stream *s, const finch_attention_cache_desc *c,
                                       const finch_rope_desc *rope, finch_dptr k_new, int64_t ldk_new, finch_dptr v_new,
                                       int64_t ldv_new, finch_dptr rows);
int cpu_rmsnorm_forward(finch_plugin_device *dev, finch_plugin_stream *s, int64_t n, int64_t dim,
                        finch_dtype dtype, finch_dptr x, finch_dtype w_type, finch_dptr w, float weight_offset,
                        float eps, finch_dptr y, finch_dptr rstd);
int cpu_add_rmsnorm_forward(finch_plugin_device *dev, finch_plugin_stream *s, int64_t n, int64_t dim,
                            finch_dtype dtype, finch_dptr x, finch_dptr d, finch_dptr sum, finch_dtype w_type,
                            finch_dptr w, float weight_offset, float eps, finch_dptr y, finch_dptr rstd);
int cpu_rmsnorm_backward(finch_plugin_device *dev, finch_plugin_stream *s, int64_t n, int64_t dim,
                         finch_dtype dtype, finch_dptr x, finch_dtype w_type, finch_dptr w, float weight_offset,
                         finch_dptr rstd, finch_dptr dy, finch_dptr dx, int dx_accumulate, finch_dptr dw);
int cpu_layernorm_forward(finch_plugin_device *dev, finch_plugin_stream *s, int64_t n, int64_t dim,
                          finch_dtype dtype, finch_dptr x, finch_dtype w_type, finch_dptr w, finch_dptr b,
                          float eps, finch_dptr y, finch_dptr mean, finch_dptr rstd);
int cpu_layernorm_backward(finch_plugin_device *dev, finch_plugin_stream *s, int64_t n, int64_t dim,
                           finch_dtype dtype, finch_dptr x, finch_dtype w_type, finch_dptr w, finch_dptr mean,
                           finch_dptr rstd, finch_dptr dy, finch_dptr dx, int dx_accumulate, finch_dptr dw,
                           finch_dptr db);
int cpu_rope_forward(finch_plugin_device *dev, finch_plugin_stream *s, const finch_rope_desc *d);
int cpu_rope_backward(finch_plugin_device *dev, finch_plugin_stream *s, const finch_rope_desc *d);
int cpu_glu_forward(finch_plugin_device *dev, finch_plugin_stream *s, finch_activation act, int64_t n,
                    int64_t dim, finch_dtype dtype, finch_dptr gate, int64_t ldg, finch_dptr up, int64_t ldu,
                    finch_dptr out);
int cpu_glu_backward(finch_plugin_device *dev, finch_plugin_stream *s, finch_activation act, int64_t n,
                     int64_t dim, finch_dtype dtype, finch_dptr gate, int64_t ldg, finch_dptr up, int64_t ldu,
                     finch_dptr dout, finch_dptr dgate, finch_dptr dup);
int cpu_activation_forward(finch_plugin_device *dev, finch_plugin_stream *s, finch_activation act, float param,
                           int64_t n, finch_dtype dtype, finch_dptr x, finch_dptr y);
int cpu_activation_backward(finch_plugin_device *dev, finch_plugin_stream *s, finch_activation act, float param,
                            int64_t n, finch_dtype dtype, finch_dptr x, finch_dptr dy, finch_dptr dx);
int cpu_embedding_forward(finch_plugin_device *dev, finch_plugin_stream *s, int64_t n_tokens, int64_t dim,
                          int64_t vocab, finch_dptr ids, finch_dtype table_type, finch_dptr table,
                          finch_dtype out_type, finch_dptr out, float scale);
int cpu_embedding_backward(finch_plugin_device *dev, finch_plugin_stream *s, int64_t n_tokens, int64_t dim,
                           int64_t vocab, finch_dptr ids, finch_dtype dout_type, finch_dptr dout,
                           finch_dptr dtable, float scale);
int cpu_cross_entropy(finch_plugin_device *dev, finch_plugin_stream *s, const finch_cross_entropy_desc *d);
int cpu_linear_cross_entropy(finch_plugin_device *dev, finch_plugin_stream *s,
                             const finch_linear_cross_entropy_desc *d);
int cpu_adamw_step(finch_plugin_device *dev, finch_plugin_stream *s, const finch_adamw_desc *d);
int cpu_adamw_step_multi(finch_plugin_device *dev, finch_plugin_stream *s, int count, const finch_adamw_desc *descs);
int cpu_adamw8bit_step(finch_plugin_device *dev, finch_plugin_stream *s, const finch_adamw8bit_desc *d);

#endif
