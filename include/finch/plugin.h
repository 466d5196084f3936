/* finch plugin ABI — the one boundary between the finch core and a compute backend.
 *
 * A plugin is a shared module (libfinch-<name>.so) that exports one C symbol,
 *
 *     const finch_plugin_api *finch_plugin_entry(void);
 *
 * returning a static table of function pointers. The table carries the ABI major/minor it was built
 * for and its own size. The host refuses a table whose major differs from FINCH_PLUGIN_ABI_MAJOR and
 * reads only the first min(struct_size, sizeof(finch_plugin_api)) bytes: the table grows append-only,
 * each addition bumps the minor, and an entry past a plugin's struct_size is treated as absent.
 *
 * Rules every plugin follows:
 *  - No vendor types cross this boundary. Device memory is an opaque buffer handle plus a byte offset
 *    (finch_dptr): an OpenCL cl_mem cannot be offset like a pointer, so nothing here does pointer math
 *    on device memory.
 *  - Work is queued on an explicit stream (finch_plugin_stream); NULL means the device's default
 *    stream. Operations on one stream execute in order. read() returns when the bytes are on the host;
 *    write() returns when the host memory may be reused.
 *  - Every entry returns a finch_status; on failure last_error() describes it (thread-local).
 *    Nothing aborts or exits.
 *  - Matrices are row-major. A leading dimension ("ld") is the distance in elements between rows.
 *    Arithmetic is f32 whatever the storage type (f32/bf16/f16).
 *  - Parameter gradients (dw, dbias, da, db, dnorm weights, dtable) are f32 and are always ACCUMULATED
 *    (+=), so gradient accumulation over micro-batches needs no extra pass. Activation gradients are
 *    overwritten unless the entry's *_accumulate flag is set.
 *  - The CPU backend built into libfinch is the reference implementation of every entry.
 */
#ifndef FINCH_PLUGIN_H
#define FINCH_PLUGIN_H

#include "finch/types.h"

#ifdef __cplusplus
extern "C" {
#endif

#define FINCH_PLUGIN_ABI_MAJOR 1
#define FINCH_PLUGIN_ABI_MINOR 7
#define FINCH_PLUGIN_ENTRY_SYMBOL "finch_plugin_entry"
#define FINCH_IGNORE_INDEX (-100)

typedef struct finch_plugin_device finch_plugin_device; /* one opened device, plugin-defined  */
typedef struct finch_plugin_buffer finch_plugin_buffer; /* one device allocation              */
typedef struct finch_plugin_stream finch_plugin_stream; /* an in-order queue of device work   */
typedef struct finch_plugin_graph finch_plugin_graph;   /* recorded stream work (ABI 1.3)      */
typedef struct finch_plugin_event finch_plugin_event;   /* a point in a stream (ABI 1.4)       */

/* A device address: a buffer and a byte offset into it. buf == NULL means "absent". */
typedef struct finch_dptr {
    finch_plugin_buffer *buf;
    size_t offset;
} finch_dptr;

typedef enum finch_device_kind {
    FINCH_DEVICE_CPU = 0,
    FINCH_DEVICE_GPU = 1,      /* discrete accelerator */
    FINCH_DEVICE_IGPU = 2,     /* integrated, shares host memory */
    FINCH_DEVICE_OTHER = 3
} finch_device_kind;

typedef struct finch_device_info {
    char name[128];
    finch_device_kind kind;
    uint64_t total_memory;  /* bytes */
    uint64_t free_memory;   /* bytes, at the time of the query */
    int compute_units;      /* SMs, CUs, or CPU threads */
    int supports_bf16;      /* native bf16 arithmetic; bf16 storage is always accepted */
} finch_device_info;

typedef enum finch_activation {
    FINCH_ACT_SILU = 0,        /* x * sigmoid(x)                               */
    FINCH_ACT_GELU_ERF = 1,    /* 0.5 x (1 + erf(x / sqrt 2))                  */
    FINCH_ACT_GELU_TANH = 2,   /* 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) */
    FINCH_ACT_RELU = 3,
    FINCH_ACT_SOFTCAP = 4      /* param * tanh(x / param)                      */
} finch_activation;

/* A [out_features, in_features] weight: dense, or NF4-quantised (bitsandbytes layout). */
typedef struct finch_weight {
    finch_dtype dtype;      /* F32, BF16, F16 (dense, row-major [out, in]) or NF4 */
    finch_dptr data;        /* dense values, or ceil(out*in/2) packed bytes over the flattened weight */
    finch_dptr absmax;      /* NF4: f32 [ceil(out*in / blocksize)], one scale per block */
    finch_dptr code;        /* NF4: f32 [16] code table (the NF4 or FP4 values) */
    int64_t blocksize;      /* NF4: elements per absmax block (64 by default) */
} finch_weight;

/* C[b] = alpha * op(A[b]) op(B[b]) + beta * C[b] for b < batch; op(A) is [m,k], op(B) is [k,n]. */
typedef struct finch_gemm_desc {
    int trans_a, trans_b;           /* 1: the stored matrix is the transpose of op(X) */
    int64_t m, n, k;
    finch_dtype a_type, b_type, c_type;
    finch_dptr a, b, c;
    int64_t lda, ldb, ldc;          /* row strides of the stored matrices, elements */
    int64_t stride_a, stride_b, stride_c; /* batch strides, elements */
    int64_t batch;                  /* >= 1 */
    float alpha, beta;
} finch_gemm_desc;

/* Fused linear with optional bias and LoRA adapter:
 *     y = x W^T + bias + scale * (drop(x) A^T) B^T
 * x [m, in] (row stride ldx), y [m, out] (ldy), A [rank, in], B [out, rank].
 * rank == 0 means no adapter. drop() zeroes element (i, j) of x when
 * finch_dropout_keep(dropout_seed, i * in + j, dropout) is 0 and scales kept ones by 1/(1-dropout).
 * Forward writes xa = drop(x) A^T [m, rank] (f32) for the backward pass when xa.buf != NULL; a
 * backward given no xa forms it from x the same way.
 * Backward, with dy [m, out]:
 *     dx  = dy W + scale * drop'((dy B) A)      (when dx.buf; accumulated if dx_accumulate)
 *     dA += scale * (dy B)^T drop(x)            (f32)
 *     dB += scale * dy^T xa                     (f32)
 *     dW += dy^T x   (dense W only, full fine-tuning)   dbias += sum over rows of dy
 * The adapted weight W + scale*B*A is never formed. */
typedef struct finch_linear_desc {
    int64_t m, in_features, out_features, rank;
    finch_dtype act_type;           /* storage of x, y, dy, dx */
    finch_dptr x; int64_t ldx;
    finch_dptr y; int64_t ldy;
    finch_weight w;
    finch_dtype param_type;         /* storage of bias, lora_a, lora_b */
    finch_dptr bias;                /* [out] or absent */
    finch_dptr lora_a, lora_b;
    float scale;
    float dropout;                  /* 0 = off */
    uint64_t dropout_seed;
    finch_dptr xa;                  /* f32 [m, rank] */
    /* backward only */
    finch_dptr dy; int64_t lddy;
    finch_dptr dx; int64_t lddx; int dx_accumulate;
    finch_dptr dw, dbias, da, db;   /* f32, accumulated; each may be absent */
} finch_linear_desc;

/* Attention over packed sequences. Tokens of all sequences are flattened to n_tokens rows;
 * sequence s owns rows [cu_seqlens[s], cu_seqlens[s+1]) and a token attends only inside its
 * sequence. Row t of q holds n_heads heads of head_dim elements, head h at element h*head_dim;
 * k and v hold n_kv_heads heads; query head h reads kv head h / (n_heads / n_kv_heads).
 * Within a sequence, with i the query and j the key position:
 *     visible(i, j) = (!causal || j <= i) && (window == 0 || i - j < window)
 *     s_ij = scale * q_i . k_j;  if softcap > 0: s_ij = softcap * tanh(s_ij / softcap)
 *     o_i  = sum_j softmax_j(s_ij) v_j,   lse[h, i] = log sum_j exp(s_ij)  (f32 [n_heads, n_tokens])
 * Backward recomputes the probabilities from lse and writes (overwrites) dq, dk, dv. */
typedef struct finch_attention_desc {
    int64_t n_tokens, n_seqs, max_seqlen;
    finch_dptr cu_seqlens;          /* i32 [n_seqs + 1] */
    int64_t n_heads, n_kv_heads, head_dim;
    finch_dtype dtype;              /* storage of q, k, v, o, dout, dq, dk, dv */
    finch_dptr q; int64_t ldq;
    finch_dptr k; int64_t ldk;
    finch_dptr v; int64_t ldv;
    finch_dptr o; int64_t ldo;
    finch_dptr lse;
    float scale, softcap;
    int causal;
    int64_t window;
    /* backward only */
    finch_dptr dout; int64_t lddout;
    finch_dptr dq; int64_t lddq;
    finch_dptr dk; int64_t lddk;
    finch_dptr dv; int64_t lddv;
} finch_attention_desc;

/* Attention of new query rows over a key/value cache (ABI 1.1; prefill and decode, forward only).
 * Sequence s has q_len = cu_seqlens_q[s+1] - cu_seqlens_q[s] query rows in q and kv_len[s] >= q_len
 * key and value rows in k and v, at rows kv_start[s] .. kv_start[s] + kv_len[s] - 1 (sequences may
 * sit anywhere in k and v: a cache with room to grow). Its queries are the LAST q_len of its kv_len
 * positions: query row i of the sequence is at position p = kv_len[s] - q_len + i, and with j a key
 * position, visibility and scores are those of finch_attention_desc (causal: j <= p; window: p - j <
 * window). With kv_len == q_len and kv_start == cu_seqlens_q this is attention_forward. lse, when
 * present, is f32 [n_heads, n_tokens] as there. */
typedef struct finch_attention_cache_desc {
    int64_t n_tokens, n_seqs;       /* query rows, sequences */
    int64_t max_q_len, max_kv_len;  /* the largest q_len; at least the largest kv_len[s] */
    finch_dptr cu_seqlens_q;        /* i32 [n_seqs + 1] */
    finch_dptr kv_start, kv_len;    /* i32 [n_seqs] each */
    int64_t kv_rows;                /* rows of k and v: kv_start[s] + kv_len[s] <= kv_rows */
    int64_t n_heads, n_kv_heads, head_dim;
    finch_dtype dtype;              /* storage of q, k, v, o */
    finch_dptr q; int64_t ldq;
    finch_dptr k; int64_t ldk;
    finch_dptr v; int64_t ldv;
    finch_dptr o; int64_t ldo;
    finch_dptr lse;                 /* or absent */
    float scale, softcap;
    int causal;
    int64_t window;
} finch_attention_cache_desc;

/* Rotary embedding, applied in place to x [n_tokens, n_heads * head_dim] (row stride ldx) in the
 * "rotate half" layout: within each head, element d < rot_dim/2 pairs with d + rot_dim/2; elements
 * at and beyond rot_dim are left alone (partial rotary). Pair d turns by angle
 *     theta = positions[section(d)][t] * inv_freq[d]
 * where section(d) is the s with sections[0] + .. + sections[s-1] <= d < .. + sections[s]
 * (n_sections == 1 for ordinary RoPE; 3 for multimodal M-RoPE with rows t/h/w; 2 for 2-D vision RoPE).
 * positions: i32 [n_sections, n_tokens]. cos and sin are multiplied by attn_factor (YaRN/longrope;
 * 1 otherwise). rope_backward applies the transpose (turns by -theta), which is the gradient. */
typedef struct finch_rope_desc {
    int64_t n_tokens, n_heads, head_dim, rot_dim;
    finch_dtype dtype;
    finch_dptr x; int64_t ldx;
    finch_dptr positions;
    finch_dptr inv_freq;            /* f32 [rot_dim / 2] */
    int n_sections;
    int sections[4];                /* frequency-pair counts; sum == rot_dim / 2 */
    float attn_factor;
} finch_rope_desc;

/* Cross-entropy over rows of logits [n_tokens, vocab] (row stride ld). labels: i32 [n_tokens],
 * already shifted so labels[t] is the target of row t; FINCH_IGNORE_INDEX rows are skipped.
 * With softcap > 0 the logits are first capped: z = softcap * tanh(z / softcap).
 * loss_sum (f32 [1]) += sum of token losses; count (f32 [1]) += number of counted tokens.
 * If dlogits.buf: dlogits = grad_scale * d(loss_sum)/d(logits), through the cap; it may alias logits. */
typedef struct finch_cross_entropy_desc {
    int64_t n_tokens, vocab;
    finch_dtype dtype;
    finch_dptr logits; int64_t ld;
    finch_dptr labels;
    float softcap, grad_scale;
    finch_dptr loss_sum, count;
    finch_dptr dlogits; int64_t lddlogits;
} finch_cross_entropy_desc;

/* Fused lm-head + cross-entropy: logits = hidden W^T are produced chunk_tokens rows at a time and
 * never exist in full. Same loss/count/softcap/grad_scale rules as above; with grad_scale != 0 it
 * also writes dhidden [n_tokens, dim] (accumulated if dhidden_accumulate) and dw += (f32, if present). */
typedef struct finch_linear_cross_entropy_desc {
    int64_t n_tokens, dim, vocab, chunk_tokens;
    finch_dtype act_type;
    finch_dptr hidden; int64_t ldh;
    finch_weight w;
    finch_dptr labels;
    float softcap, grad_scale;
    finch_dptr loss_sum, count;
    finch_dptr dhidden; int64_t lddh; int dhidden_accumulate;
    finch_dptr dw;
} finch_linear_cross_entropy_desc;

/* One AdamW step (decoupled weight decay, as torch.optim.AdamW):
 *     g = grad * grad_scale;  p -= lr * weight_decay * p
 *     m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2
 *     p -= lr * (m / bias_correction1) / (sqrt(v / bias_correction2) + eps)
 * p is the f32 master copy when master.buf, else param itself (which must be f32); when a master
 * is present the updated value is also stored to param in param_type. */
typedef struct finch_adamw_desc {
    int64_t n;
    finch_dtype param_type;
    finch_dptr param, master, grad, m, v;   /* grad, m, v, master: f32 */
    float lr, beta1, beta2, eps, weight_decay, grad_scale;
    float bias_correction1, bias_correction2; /* 1 - beta^step */
} finch_adamw_desc;

/* One AdamW step with 8-bit blockwise moments (bitsandbytes' blockwise 8-bit Adam). ABI 1.1.
 * The n elements are cut into blocks of blocksize consecutive elements (the last may be partial).
 * In block b, with the stored moments decoded as
 *     m_i = m_map[m_codes[i]] * m_absmax[b],   v_i = v_map[v_codes[i]] * v_absmax[b],
 * each element takes exactly the f32 update of adamw_step (same operations, same order, no fused
 * multiply-add), on the master copy when master.buf:
 *     g = grad * grad_scale;  m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g g
 *     p = p (1 - lr weight_decay) - (lr / bias_correction1) m / (sqrt(v) (1 / sqrt(bias_correction2)) + eps)
 * and then the block is re-quantised from the updated m and v:
 *     m_absmax[b] = max |m| over the block;  m_codes[i] = nearest(m_map, m / m_absmax[b])  (f32 division)
 * and the same for v. nearest(map, x) for 256 ascending values is the number of k < 255 with
 * x > (map[k] + map[k+1]) * 0.5f (ties go to the lower code); a block whose absmax is 0 stores
 * nearest(map, 0). m_map is bitsandbytes' signed dynamic map, v_map its unsigned one. grad: f32. */
typedef struct finch_adamw8bit_desc {
    int64_t n, blocksize;
    finch_dtype param_type;
    finch_dptr param, master, grad;          /* master, grad: f32 */
    finch_dptr m_codes, v_codes;             /* u8 [n] */
    finch_dptr m_absmax, v_absmax;           /* f32 [ceil(n / blocksize)] */
    finch_dptr m_map, v_map;                 /* f32 [256], ascending */
    float lr, beta1, beta2, eps, weight_decay, grad_scale;
    float bias_correction1, bias_correction2; /* 1 - beta^step */
} finch_adamw8bit_desc;

typedef struct finch_plugin_api {
    /* --- identity and lifetime ------------------------------------------------------------ */
    uint32_t abi_major, abi_minor;
    size_t struct_size;             /* sizeof(finch_plugin_api) as the plugin was compiled */
    const char *name;               /* "cpu", "cuda", "hip", "opencl" */
    const char *version;
    /* Loads drivers and enumerates devices. FINCH_ERR_DEVICE with a reason when the driver library
     * is missing or there is no device; the host then unloads the module. */
    int (*init)(void);
    /* Frees everything and joins the plugin's threads; called before dlclose. */
    void (*shutdown)(void);
    const char *(*last_error)(void);

    /* --- devices, streams, memory --------------------------------------------------------- */
    int (*device_count)(int *count);
    int (*device_info)(int index, finch_device_info *info);
    int (*device_open)(int index, finch_plugin_device **out);
    void (*device_close)(finch_plugin_device *dev);
    int (*memory_info)(finch_plugin_device *dev, uint64_t *free_bytes, uint64_t *total_bytes);
    int (*stream_create)(finch_plugin_device *dev, finch_plugin_stream **out);
    void (*stream_destroy)(finch_plugin_device *dev, finch_plugin_stream *s);
    int (*synchronize)(finch_plugin_device *dev, finch_plugin_stream *s);
    int (*alloc)(finch_plugin_device *dev, size_t bytes, finch_plugin_buffer **out);
    void (*free)(finch_plugin_device *dev, finch_plugin_buffer *buf);
    int (*write)(finch_plugin_device *dev, finch_plugin_stream *s, finch_dptr dst, const void *src, size_t bytes);
    int (*read)(finch_plugin_device *dev, finch_plugin_stream *s, finch_dptr src, void *dst, size_t bytes);
    int (*copy)(finch_plugin_device *dev, finch_plugin_stream *s, finch_dptr dst, finch_dptr src, size_t bytes);
    /* dst[i] = value for count elements of dtype (F32/BF16/F16/I32; I32 takes (int32_t)value). */
    int (*fill)(finch_plugin_device *dev, finch_plugin_stream *s, finch_dptr dst, finch_dtype dtype,
                int64_t count, float value);
    /* Strided 2-D copy of rows x cols elements of dtype, with row strides in elements. */
    int (*copy_2d)(finch_plugin_device *dev, finch_plugin_stream *s, finch_dtype dtype, int64_t rows,
                   int64_t cols, finch_dptr src, int64_t ld_src, finch_dptr dst, int64_t ld_dst);
    /* dst = (dst_type) src, element-wise over n elements. */
    int (*cast)(finch_plugin_device *dev, finch_plugin_stream *s, int64_t n, finch_dtype src_type,
                finch_dptr src, finch_dtype dst_type, finch_dptr dst);

    /* --- dense math ----------------------------------------------------------------------- */
    int (*gemm)(finch_plugin_device *dev, finch_plugin_stream *s, const finch_gemm_desc *d);
    /* out = alpha * x + beta * y over n elements; y may be absent (treated as 0); out may alias x or y. */
    int (*axpby)(finch_plugin_device *dev, finch_plugin_stream *s, int64_t n, finch_dtype dtype,
                 float alpha, finch_dptr x, float beta, finch_dptr y, finch_dptr out);
    /* sum_sq (f32 [1]) += sum of x[i]^2 over n elements: the building block of the global grad norm. */
    int (*sum_squares)(finch_plugin_device *dev, finch_plugin_stream *s, int64_t n, finch_dtype dtype,
                       finch_dptr x, finch_dptr sum_sq);

    /* --- quantised matmul (NF4/FP4 blocks with f32 absmax) ----------------------------------- */
    /* y [m, out] = x [m, in] deq(W)^T (+ beta * y). */
    int (*qmatmul_forward)(finch_plugin_device *dev, finch_plugin_stream *s, const finch_weight *w,
                           int64_t out_features, int64_t in_features, int64_t m, finch_dtype act_type,
                           finch_dptr x, int64_t ldx, finch_dptr y, int64_t ldy, float beta);
    /* dx [m, in] = dy [m, out] deq(W) (+ beta * dx). */
    int (*qmatmul_backward)(finch_plugin_device *dev, finch_plugin_stream *s, const finch_weight *w,
                            int64_t out_features, int64_t in_features, int64_t m, finch_dtype act_type,
                            finch_dptr dy, int64_t lddy, finch_dptr dx, int64_t lddx, float beta);

    /* --- fused layers ----------------------------------------------------------------------- */
    int (*linear_forward)(finch_plugin_device *dev, finch_plugin_stream *s, const finch_linear_desc *d);
    int (*linear_backward)(finch_plugin_device *dev, finch_plugin_stream *s, const finch_linear_desc *d);

    int (*attention_forward)(finch_plugin_device *dev, finch_plugin_stream *s, const finch_attention_desc *d);
    int (*attention_backward)(finch_plugin_device *dev, finch_plugin_stream *s, const finch_attention_desc *d);

    /* RMSNorm over rows of x [n, dim]: y = x * rstd * (w + weight_offset), rstd = 1/sqrt(mean(x^2) + eps)
     * (weight_offset = 1 for Gemma's (1 + w)). rstd: f32 [n], written by forward. x and y contiguous. */
    int (*rmsnorm_forward)(finch_plugin_device *dev, finch_plugin_stream *s, int64_t n, int64_t dim,
                           finch_dtype dtype, finch_dptr x, finch_dtype w_type, finch_dptr w,
                           float weight_offset, float eps, finch_dptr y, finch_dptr rstd);
    int (*rmsnorm_backward)(finch_plugin_device *dev, finch_plugin_stream *s, int64_t n, int64_t dim,
                            finch_dtype dtype, finch_dptr x, finch_dtype w_type, finch_dptr w,
                            float weight_offset, finch_dptr rstd, finch_dptr dy, finch_dptr dx,
                            int dx_accumulate, finch_dptr dw);
    /* LayerNorm: y = (x - mean) * rstd * w + b; w and b may be absent (1 and 0). mean, rstd: f32 [n]. */
    int (*layernorm_forward)(finch_plugin_device *dev, finch_plugin_stream *s, int64_t n, int64_t dim,
                             finch_dtype dtype, finch_dptr x, finch_dtype w_type, finch_dptr w, finch_dptr b,
                             float eps, finch_dptr y, finch_dptr mean, finch_dptr rstd);
    int (*layernorm_backward)(finch_plugin_device *dev, finch_plugin_stream *s, int64_t n, int64_t dim,
                              finch_dtype dtype, finch_dptr x, finch_dtype w_type, finch_dptr w,
                              finch_dptr mean, finch_dptr rstd, finch_dptr dy, finch_dptr dx,
                              int dx_accumulate, finch_dptr dw, finch_dptr db);

    int (*rope_forward)(finch_plugin_device *dev, finch_plugin_stream *s, const finch_rope_desc *d);
    int (*rope_backward)(finch_plugin_device *dev, finch_plugin_stream *s, const finch_rope_desc *d);

    /* Gated unit: out[i, j] = act(gate[i, j]) * up[i, j] for i < n, j < dim; gate and up are strided
     * views (row strides ldg, ldu) so a fused gate_up projection needs no copy; out is [n, dim].
     * Backward overwrites dgate and dup (same strides as gate/up; they may alias gate/up: in place). */
    int (*glu_forward)(finch_plugin_device *dev, finch_plugin_stream *s, finch_activation act, int64_t n,
                       int64_t dim, finch_dtype dtype, finch_dptr gate, int64_t ldg, finch_dptr up,
                       int64_t ldu, finch_dptr out);
    int (*glu_backward)(finch_plugin_device *dev, finch_plugin_stream *s, finch_activation act, int64_t n,
                        int64_t dim, finch_dtype dtype, finch_dptr gate, int64_t ldg, finch_dptr up,
                        int64_t ldu, finch_dptr dout, finch_dptr dgate, finch_dptr dup);
    /* Element-wise y = act(x) (param: the SOFTCAP cap); backward dx = dy * act'(x) (dx may alias dy). */
    int (*activation_forward)(finch_plugin_device *dev, finch_plugin_stream *s, finch_activation act,
                              float param, int64_t n, finch_dtype dtype, finch_dptr x, finch_dptr y);
    int (*activation_backward)(finch_plugin_device *dev, finch_plugin_stream *s, finch_activation act,
                               float param, int64_t n, finch_dtype dtype, finch_dptr x, finch_dptr dy,
                               finch_dptr dx);

    /* out[t, :] = scale * table[ids[t], :]; ids i32 [n_tokens], an id outside [0, vocab) is an error
     * (FINCH_ERR_INVALID_ARGUMENT). Backward: dtable[ids[t], :] += scale * dout[t, :] (f32). */
    int (*embedding_forward)(finch_plugin_device *dev, finch_plugin_stream *s, int64_t n_tokens, int64_t dim,
                             int64_t vocab, finch_dptr ids, finch_dtype table_type, finch_dptr table,
                             finch_dtype out_type, finch_dptr out, float scale);
    int (*embedding_backward)(finch_plugin_device *dev, finch_plugin_stream *s, int64_t n_tokens,
                              int64_t dim, int64_t vocab, finch_dptr ids, finch_dtype dout_type,
                              finch_dptr dout, finch_dptr dtable, float scale);

    int (*cross_entropy)(finch_plugin_device *dev, finch_plugin_stream *s, const finch_cross_entropy_desc *d);
    int (*linear_cross_entropy)(finch_plugin_device *dev, finch_plugin_stream *s,
                                const finch_linear_cross_entropy_desc *d);

    int (*adamw_step)(finch_plugin_device *dev, finch_plugin_stream *s, const finch_adamw_desc *d);

    /* --- ABI 1.1: optional; NULL (or past a 1.0 plugin's struct_size) when the plugin lacks them --- */
    int (*adamw8bit_step)(finch_plugin_device *dev, finch_plugin_stream *s, const finch_adamw8bit_desc *d);
    int (*attention_cache_forward)(finch_plugin_device *dev, finch_plugin_stream *s,
                                   const finch_attention_cache_desc *d);

    /* --- ABI 1.2: optional --- */
    /* What a user asks when a device misbehaves: runtime and driver versions, the device's own
     * version strings, features the plugin uses, extensions. Plain text, "key: value" lines, written
     * NUL-terminated into buf (cut to size); callable after init, before any device_open. */
    int (*device_details)(int index, char *buf, size_t size);

    /* Transfers that overlap the host: host_alloc gives page-locked host memory (host_free returns
     * it); read_async/write_async queue a copy between it and the device on stream s and return.
     * The host memory must come from host_alloc and must not be read, written or freed until s is
     * synchronized; work queued later on s sees the copy done (stream order). A backend may copy
     * synchronously. All four or none. */
    int (*host_alloc)(finch_plugin_device *dev, size_t bytes, void **out);
    void (*host_free)(finch_plugin_device *dev, void *ptr);
    int (*write_async)(finch_plugin_device *dev, finch_plugin_stream *s, finch_dptr dst, const void *src, size_t bytes);
    int (*read_async)(finch_plugin_device *dev, finch_plugin_stream *s, finch_dptr src, void *dst, size_t bytes);

    /* --- ABI 1.3: optional --- */
    /* Rows to places named on the device: dst row rows[i] = src row i for i < n (rows: i32 [n], device
     * memory; each row of cols elements of dtype; destinations distinct). A row that would fall outside
     * dst's buffer, or rows[i] < 0, is skipped (a device cannot report it without waiting). A key/value
     * cache append whose places are data, not arguments, so a recorded pass (below) replays at any
     * position. */
    int (*copy_rows)(finch_plugin_device *dev, finch_plugin_stream *s, finch_dtype dtype, int64_t n, int64_t cols,
                     finch_dptr src, int64_t ld_src, finch_dptr rows, finch_dptr dst, int64_t ld_dst);

    /* Recording: between capture_begin and capture_end the calls queued on stream s (every entry that
     * takes s; no read, write, synchronize, alloc or free) are recorded instead of run; capture_end
     * returns them as a graph, and graph_launch queues the whole of it on s again and again with the
     * same arguments: the same device addresses, whose contents may change between launches. A batch-1
     * decode step is hundreds of small calls; replayed, it costs one. On failure capture_end leaves no
     * graph and s out of recording. All four or none. */
    int (*capture_begin)(finch_plugin_device *dev, finch_plugin_stream *s);
    int (*capture_end)(finch_plugin_device *dev, finch_plugin_stream *s, finch_plugin_graph **out);
    int (*graph_launch)(finch_plugin_device *dev, finch_plugin_stream *s, finch_plugin_graph *g);
    void (*graph_free)(finch_plugin_device *dev, finch_plugin_graph *g);

    /* --- ABI 1.4: optional --- */
    /* Order between two streams of a device: event_record marks the point stream s has reached (the
     * work queued on it so far); stream_wait_event makes work queued on s after the call wait until
     * the work before the event's latest mark is done. Neither blocks the host. An event may be
     * recorded again and again; a wait refers to the mark at the time of the wait. Lets copies to and
     * from host memory run on a second stream beside the compute. All four or none. */
    int (*event_create)(finch_plugin_device *dev, finch_plugin_event **out);
    void (*event_destroy)(finch_plugin_device *dev, finch_plugin_event *ev);
    int (*event_record)(finch_plugin_device *dev, finch_plugin_stream *s, finch_plugin_event *ev);
    int (*stream_wait_event)(finch_plugin_device *dev, finch_plugin_stream *s, finch_plugin_event *ev);

    /* --- ABI 1.5: optional; each may be NULL on its own --- */
    /* Several linears over one input in one call: descs[i], i < count, share m, in_features, act_type,
     * x and ldx; each writes its y (and xa) exactly as linear_forward would. A decode step's q/k/v and
     * gate/up products then read x once and stream their weights as one product. */
    int (*linear_forward_group)(finch_plugin_device *dev, finch_plugin_stream *s, const finch_linear_desc *descs,
                                int count);
    /* The residual add fused with the RMSNorm that follows it, over rows of [n, dim] (contiguous):
     * sum = x + d (stored as dtype; it may alias x or d), then y and rstd as rmsnorm_forward computes
     * them from sum as stored, so the result equals axpby followed by rmsnorm_forward. */
    int (*add_rmsnorm_forward)(finch_plugin_device *dev, finch_plugin_stream *s, int64_t n, int64_t dim,
                               finch_dtype dtype, finch_dptr x, finch_dptr d, finch_dptr sum, finch_dtype w_type,
                               finch_dptr w, float weight_offset, float eps, finch_dptr y, finch_dptr rstd);

    /* --- ABI 1.6: optional; each may be NULL on its own --- */
    /* A decode step's attention from its projections: RoPE turns q (d->q) and the new keys k_new
     * [n_tokens, n_kv_heads * head_dim] (row stride ldk_new) as rope_forward with *rope would (rope->x,
     * ldx and n_heads ignored: q has d->n_heads heads, k_new d->n_kv_heads; rope may be NULL: no
     * rotation), the rows of k_new and v_new go to rows rows[t] (i32 [n_tokens], as copy_rows) of d->k and
     * d->v, then attention_cache_forward(d). The results are o, lse and the cache rows; q and k_new are
     * scratch (their contents afterwards are unspecified). */
    int (*attention_cache_append_forward)(finch_plugin_device *dev, finch_plugin_stream *s,
                                          const finch_attention_cache_desc *d, const finch_rope_desc *rope,
                                          finch_dptr k_new, int64_t ldk_new, finch_dptr v_new, int64_t ldv_new,
                                          finch_dptr rows);

    /* --- ABI 1.7: optional; each may be NULL on its own --- */
    /* adamw_step for count tensors in one call (where the backend has it, a few launches for all: a
     * LoRA model steps hundreds of small tensors); each tensor's result equals adamw_step(&descs[i])
     * bit for bit. */
    int (*adamw_step_multi)(finch_plugin_device *dev, finch_plugin_stream *s, int count, const finch_adamw_desc *descs);
    /* sum_squares over count tensors (n[i] elements of dtype[i] at x[i]) into the one f32 sum_sq. */
    int (*sum_squares_multi)(finch_plugin_device *dev, finch_plugin_stream *s, int count, const int64_t *n,
                             const finch_dtype *dtype, const finch_dptr *x, finch_dptr sum_sq);
} finch_plugin_api;

typedef const finch_plugin_api *(*finch_plugin_entry_fn)(void);

/* For linear_forward_group: the index of the first desc that does not share descs[0]'s input (m,
 * in_features, act_type, x, ldx), or -1 when all do. */
static inline int finch_linear_group_mismatch(const finch_linear_desc *descs, int count)
{
    for (int i = 1; i < count; i++) {
        const finch_linear_desc *a = &descs[0], *b = &descs[i];
        if (b->m != a->m || b->in_features != a->in_features || b->act_type != a->act_type || b->x.buf != a->x.buf ||
            b->x.offset != a->x.offset || b->ldx != a->ldx)
            return i;
    }
    return -1;
}

/* The LoRA-dropout mask, shared by every backend so that they agree bit for bit:
 * element `index` is kept when the top 24 bits of splitmix64(seed + index) / 2^24 >= p.
 * CUDA/HIP kernels call this same function on the device. */
#if defined(__CUDACC__) || defined(__HIPCC__)
#define FINCH_HOST_DEVICE __host__ __device__
#else
#define FINCH_HOST_DEVICE
#endif
static inline FINCH_HOST_DEVICE int finch_dropout_keep(uint64_t seed, uint64_t index, float p)
{
    uint64_t z = seed + index * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (float)(z >> 40) * (1.0f / 16777216.0f) >= p;
}

#ifdef __cplusplus
}
#endif

#endif
