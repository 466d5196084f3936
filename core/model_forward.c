/* One step of a decoder-only model: embedding, the decoder layers, final norm, lm head and loss;
 * then, for training, the backward pass over the tape, one layer at a time.
 *
 * Memory: the activations of a step come from the model's arena. Without gradient checkpointing
 * every layer's activations stay until backward; with it only the residual stream between layers
 * (x_0 .. x_L) stays (with offload_activations x_1 .. x_{L-2} in host memory, the device holding
 * two slots for them), and each layer is recomputed, differentiated and released in turn, what
 * follows its attention in token chunks for long sequences. Gradients of the residual stream use two
 * buffers in turn; everything else a layer's backward allocates is released when the layer is done,
 * and the head's when the head is. */
#include "core/error.h"
#include "core/half.h"
#include "core/kv_cache.h"
#include "core/model_layer.h"
#include "core/model_quant.h"
#include "core/model_vl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef finch_step_ctx step_ctx;

static int param_present(const finch_param *p) { return p->data.buf != NULL; }

static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

finch_linear_params finch_model_linear_params(const finch_model *m, const finch_linear_module *lin, int train)
{
    finch_linear_params p;
    memset(&p, 0, sizeof p);
    p.in_features = lin->in_features;
    p.out_features = lin->out_features;
    p.w = finch_quant_linear_weight(lin);
    p.dw = lin->weight.grad;
    p.param_type = FINCH_DTYPE_F32;
    p.bias = lin->bias.data;
    p.dbias = lin->bias.grad;
    p.rank = lin->rank;
    if (lin->rank) {
        p.lora_a = lin->lora_a.data;
        p.lora_b = lin->lora_b.data;
        p.da = lin->lora_a.grad;
        p.db = lin->lora_b.grad;
        p.scale = lin->scale;
        p.dropout = train ? lin->dropout : 0.0f;
        p.dropout_seed = mix64(m->step * 0x9E3779B97F4A7C15ull + lin->id);
    }
    return p;
}

static finch_linear_params step_linear_params(const step_ctx *s, const finch_linear_module *lin)
{
    finch_linear_params p = finch_model_linear_params(s->m, lin, s->train);
    /* Rows of a chunk keep the dropout mask of their place in the whole step: element (row0 + i, j)
     * is index (row0 + i) * in + j, i.e. the seed moves by row0 * in steps of the mask's stride. */
    p.dropout_seed += (uint64_t)s->row0 * (uint64_t)lin->in_features * 0x9E3779B97F4A7C15ull;
    return p;
}

/* Where the saved block keeps linear `which`'s xa for this step's rows (s->row0 on), or absent. */
static finch_dptr saved_xa(const step_ctx *s, int which, const finch_linear_module *lin)
{
    if (!s->saved || !s->saved->xa[which].buf || !lin->rank) return finch_dptr_none();
    return finch_dptr_at(s->saved->xa[which], (size_t)(s->row0 * lin->rank) * sizeof(float));
}

static int linear(step_ctx *s, const finch_tensor *x, const finch_linear_module *lin, finch_tensor *y)
{
    finch_linear_params p = step_linear_params(s, lin);
    return finch_op_linear(s->g, x, &p, y);
}

/* Linears of one input as one call when generating (one_tensor: their outputs column views of one
 * tensor): a decode step's products then stream their weights as one. Training keeps one product
 * each. */
static int linears(step_ctx *s, const finch_tensor *x, int count, const finch_linear_module *const *lin, int one_tensor,
                   finch_tensor *y)
{
    if (!s->cache) {
        for (int i = 0; i < count; i++) {
            int rc = linear(s, x, lin[i], &y[i]);
            if (rc) return rc;
        }
        return FINCH_OK;
    }
    finch_linear_params p[FINCH_LINEAR_GROUP_MAX];
    const finch_linear_params *pp[FINCH_LINEAR_GROUP_MAX];
    for (int i = 0; i < count; i++) {
        p[i] = step_linear_params(s, lin[i]);
        pp[i] = &p[i];
    }
    return finch_op_linear_group(s->g, x, count, pp, one_tensor, y);
}

/* Whether k's columns follow q's in one tensor (a qkv projection, or q/k/v as one call): then one
 * RoPE call rotates both. */
static int k_follows_q(const finch_tensor *q, const finch_tensor *k)
{
    return q->ld == k->ld && q->dtype == k->dtype && q->data.buf == k->data.buf && q->node == k->node &&
           k->data.offset == q->data.offset + (size_t)q->cols * finch_dtype_size(q->dtype) && k->node_off == q->node_off + q->cols;
}

/* A linear and a sum whose outputs flow only into the layer's output, through sums: in a recompute
 * for backward (s->outputs_unread) only their tape entries are made, the values go uncomputed. */
static int linear_to_out(step_ctx *s, const finch_tensor *x, const finch_linear_module *lin, int which, finch_tensor *y)
{
    finch_linear_params p = step_linear_params(s, lin);
    return finch_op_linear_at(s->g, x, &p, finch_dptr_none(), saved_xa(s, which, lin), !s->outputs_unread, y);
}

/* In the layer's sums b is a branch's output (attention's, the MLP's) that nothing else reads: its
 * gradient is the sum's, not a copy of it. */
static int add_to_out(step_ctx *s, const finch_tensor *a, const finch_tensor *b, const finch_tensor *dst, finch_tensor *y)
{
    finch_graph_sole_reader(s->g, b);
    return (s->outputs_unread ? finch_op_add_tape_only : finch_op_add)(s->g, a, b, dst, y);
}

static int norm(step_ctx *s, const finch_tensor *x, const finch_param *w, const finch_param *b, finch_tensor *y)
{
    const finch_model_config *c = &s->m->cfg;
    if (c->norm_kind == FINCH_NORM_LAYER) return finch_op_layernorm(s->g, x, w, param_present(b) ? b : NULL, (float)c->norm_eps, y);
    return finch_op_rmsnorm(s->g, x, w, c->norm_offset, (float)c->norm_eps, y);
}

/* RMSNorm over each head of x [n, heads * head_dim] (qwen3 / gemma3 q_norm, k_norm). */
static int head_norm(step_ctx *s, const finch_tensor *x, const finch_param *w, int64_t heads, finch_tensor *y)
{
    const finch_model_config *c = &s->m->cfg;
    int64_t n = x->rows;
    finch_tensor rows = finch_tensor_reshape(x, n * heads, c->head_dim), out;
    int rc = finch_op_rmsnorm(s->g, &rows, w, c->norm_offset, (float)c->norm_eps, &out);
    if (rc) return rc;
    *y = finch_tensor_reshape(&out, n, heads * c->head_dim);
    return FINCH_OK;
}

static finch_rope_params rope_params(const step_ctx *s, int64_t layer, int64_t heads)
{
    const finch_model *m = s->m;
    const finch_model_config *c = &m->cfg;
    const finch_rope_config *r = finch_model_config_rope(c, layer);
    int which = r == &c->rope_local ? 1 : 0;
    int use_long = r->inv_freq_long && s->seq_len > r->long_after;
    finch_rope_params p;
    memset(&p, 0, sizeof p);
    p.n_heads = heads;
    p.head_dim = c->head_dim;
    p.rot_dim = r->rot_dim;
    p.positions = s->positions;
    p.inv_freq = m->rope_inv[which][use_long];
    p.attn_factor = use_long ? r->attn_factor_long : r->attn_factor;
    /* Multimodal RoPE models get three rows of positions, in training steps (model_vl.c) and in
     * generation over the cache (model_decode.c). */
    p.n_sections = c->rope_n_sections;
    memcpy(p.sections, c->rope_sections, sizeof p.sections);
    return p;
}

/* Attention up to its output projection: o from the normed input x. */
static int attention_core(step_ctx *s, int64_t l, const finch_tensor *x, finch_tensor *o)
{
    const finch_model_config *c = &s->m->cfg;
    const finch_layer *ly = &s->m->layers[l];
    int64_t nq = c->n_heads * c->head_dim, nkv = c->n_kv_heads * c->head_dim;
    finch_tensor q, k, v, qkv;
    int rc;
    if (param_present(&ly->qkv.weight)) {
        if ((rc = linear(s, x, &ly->qkv, &qkv))) return rc;
        q = finch_tensor_cols(&qkv, 0, nq);
        k = finch_tensor_cols(&qkv, nq, nkv);
        v = finch_tensor_cols(&qkv, nq + nkv, nkv);
    } else {
        const finch_linear_module *lin[3] = {&ly->q, &ly->k, &ly->v};
        finch_tensor y[3];
        const finch_layer_saved *sv = s->saved && s->saved->has_qkv ? s->saved : NULL;
        if (sv) {
            /* Kept: computed into the block by the forward, taped over it by the recompute. */
            for (int i = 0; i < 3; i++) {
                finch_linear_params p = step_linear_params(s, lin[i]);
                if ((rc = finch_op_linear_at(s->g, x, &p, sv->qkv[i], saved_xa(s, FINCH_SAVED_Q + i, lin[i]), !sv->reading, &y[i])))
                    return rc;
            }
        } else if ((rc = linears(s, x, 3, lin, !c->qk_norm, y))) {
            /* Per-head norms read each of q and k whole. */
            return rc;
        }
        q = y[0];
        k = y[1];
        v = y[2];
    }
    if (c->qk_norm) {
        if ((rc = head_norm(s, &q, &ly->q_norm, c->n_heads, &q)) || (rc = head_norm(s, &k, &ly->k_norm, c->n_kv_heads, &k)))
            return rc;
    }
    /* Over the cache, where the backend can, RoPE goes into the attention call with the append. */
    int rope_in_cache = s->cache && finch_kv_cache_rotates(s->cache);
    int (*rope)(finch_graph *, const finch_tensor *, const finch_rope_params *) =
        s->saved && s->saved->has_qkv && s->saved->reading ? finch_op_rope_tape_only : finch_op_rope;
    if (!rope_in_cache && k_follows_q(&q, &k)) {
        finch_tensor qk = finch_tensor_cols(&q, 0, nq + nkv);
        finch_rope_params r = rope_params(s, l, c->n_heads + c->n_kv_heads);
        if ((rc = rope(s->g, &qk, &r))) return rc;
    } else if (!rope_in_cache) {
        finch_rope_params rq = rope_params(s, l, c->n_heads), rk = rope_params(s, l, c->n_kv_heads);
        if ((rc = rope(s->g, &q, &rq)) || (rc = rope(s->g, &k, &rk))) return rc;
    }
    finch_attention_params ap;
    memset(&ap, 0, sizeof ap);
    ap.n_seqs = s->n_seqs;
    ap.max_seqlen = s->seq_len;
    ap.cu_seqlens = s->cu_seqlens;
    ap.n_heads = c->n_heads;
    ap.n_kv_heads = c->n_kv_heads;
    ap.head_dim = c->head_dim;
    ap.scale = c->attn_scale;
    ap.softcap = c->attn_softcap;
    ap.window = c->layer_sliding[l] ? c->sliding_window : 0;
    if (s->saved) return finch_op_attention_at(s->g, &q, &k, &v, &ap, s->saved->o, s->saved->lse, !s->saved->reading, o);
    if (!s->cache) return finch_op_attention(s->g, &q, &k, &v, &ap, o);
    if (!rope_in_cache) return finch_kv_cache_attention(s->cache, s->g, l, &q, &k, &v, &ap, NULL, o);
    finch_rope_params r = rope_params(s, l, c->n_heads);
    return finch_kv_cache_attention(s->cache, s->g, l, &q, &k, &v, &ap, &r, o);
}

/* Attention with its output projection, for Falcon's parallel layer: out goes only into its sums. */
static int attention_block(step_ctx *s, int64_t l, const finch_tensor *x, finch_tensor *out)
{
    finch_tensor o;
    int rc = attention_core(s, l, x, &o);
    return rc ? rc : linear_to_out(s, &o, &s->m->layers[l].o, FINCH_SAVED_O, out);
}

static int mlp_block(step_ctx *s, int64_t l, const finch_tensor *x, finch_tensor *out)
{
    const finch_model_config *c = &s->m->cfg;
    const finch_layer *ly = &s->m->layers[l];
    finch_tensor gate, up, gu, h;
    int rc;
    if (c->arch == FINCH_ARCH_FALCON) {
        if ((rc = linear(s, x, &ly->up, &up)) || (rc = finch_op_activation(s->g, c->act, 0.0f, &up, &h))) return rc;
    } else {
        if (param_present(&ly->gate_up.weight)) {
            if ((rc = linear(s, x, &ly->gate_up, &gu))) return rc;
            gate = finch_tensor_cols(&gu, 0, c->intermediate);
            up = finch_tensor_cols(&gu, c->intermediate, c->intermediate);
        } else {
            const finch_linear_module *lin[2] = {&ly->gate, &ly->up};
            finch_tensor y[2];
            if ((rc = linears(s, x, 2, lin, 1, y))) return rc;
            gate = y[0];
            up = y[1];
        }
        if ((rc = finch_op_glu(s->g, c->act, &gate, &up, &h))) return rc;
    }
    /* out goes only into the layer's sums, but for a sandwich norm's backward, which reads it. */
    return c->sandwich_norms ? linear(s, &h, &ly->down, out) : linear_to_out(s, &h, &ly->down, FINCH_SAVED_DOWN, out);
}

/* sum = a + b (into dst when not NULL) and y = norm(sum): for RMSNorm one fused op. */
static int add_norm(step_ctx *s, const finch_tensor *a, const finch_tensor *b, const finch_tensor *dst, finch_tensor *sum,
                    const finch_param *w, const finch_param *nb, finch_tensor *y)
{
    const finch_model_config *c = &s->m->cfg;
    finch_graph_sole_reader(s->g, b);
    if (c->norm_kind == FINCH_NORM_LAYER) {
        int rc = finch_op_add(s->g, a, b, dst, sum);
        return rc ? rc : norm(s, sum, w, nb, y);
    }
    return finch_op_add_rmsnorm(s->g, a, b, dst, sum, w, c->norm_offset, (float)c->norm_eps, y);
}

/* The MLP half: out = x1 + mlp(mlp_in) with mlp_in = norm(x1) (the MLP's output post-normed first
 * with sandwich norms), into out. Token by token, so it may run on any rows of x1, mlp_in and out
 * (s->row0: where they start). */
static int mlp_half(step_ctx *s, int64_t l, const finch_tensor *x1, const finch_tensor *mlp_in, const finch_tensor *out)
{
    const finch_model_config *c = &s->m->cfg;
    const finch_layer *ly = &s->m->layers[l];
    finch_tensor mo, raw, res;
    int rc;
    if ((rc = mlp_block(s, l, mlp_in, &mo))) return rc;
    if (c->sandwich_norms) {
        raw = mo;
        if ((rc = norm(s, &raw, &ly->post_ffn_norm, NULL, &mo))) return rc;
    }
    return add_to_out(s, x1, &mo, out, &res);
}

/* Rows [s->row0, s->row0 + rows) of a saved [tokens, hidden] tensor, with a gradient node when req. */
static int saved_rows(step_ctx *s, finch_dptr at, int64_t rows, int req, finch_tensor *out)
{
    int64_t H = s->m->cfg.hidden;
    at = finch_dptr_at(at, (size_t)(s->row0 * H) * finch_dtype_size(s->m->dtype));
    return finch_graph_tensor_at(s->g, s->m->dtype, rows, H, at, req, out);
}

/* What follows attention, token by token, so on any rows of x, o and out (s->row0: where they
 * start): x1 = x + o_proj(o) (post-normed first with sandwich norms), out = x1 + mlp(norm(x1)).
 * With x1 saved the forward writes it there, and the recompute for backward takes it from there:
 * o_proj and the sum only get their tape entries. */
static int after_attention(step_ctx *s, int64_t l, const finch_tensor *x, const finch_tensor *o, const finch_tensor *out)
{
    const finch_layer *ly = &s->m->layers[l];
    const finch_layer_saved *sv = s->saved && s->saved->has_x1 ? s->saved : NULL;
    finch_tensor attn, raw, x1, mlp_in, at;
    int rc;
    if (sv && sv->reading) {
        finch_linear_params p = step_linear_params(s, &ly->o);
        if ((rc = finch_op_linear_at(s->g, o, &p, finch_dptr_none(), saved_xa(s, FINCH_SAVED_O, &ly->o), 0, &attn)) ||
            (rc = saved_rows(s, sv->x1, x->rows, x->node >= 0 || attn.node >= 0, &at)))
            return rc;
        finch_graph_sole_reader(s->g, &attn);
        if ((rc = finch_op_add_tape_only(s->g, x, &attn, &at, &x1)) || (rc = norm(s, &x1, &ly->mlp_norm, &ly->mlp_norm_b, &mlp_in)))
            return rc;
        return mlp_half(s, l, &x1, &mlp_in, out);
    }
    finch_linear_params po = step_linear_params(s, &ly->o);
    rc = finch_op_linear_at(s->g, o, &po, finch_dptr_none(), saved_xa(s, FINCH_SAVED_O, &ly->o), 1, &attn);
    if (!rc && s->m->cfg.sandwich_norms) {
        raw = attn;
        rc = norm(s, &raw, &ly->post_attn_norm, NULL, &attn);
    }
    if (!rc && sv) rc = saved_rows(s, sv->x1, x->rows, 0, &at);
    if (!rc) rc = add_norm(s, x, &attn, sv ? &at : NULL, &x1, &ly->mlp_norm, &ly->mlp_norm_b, &mlp_in);
    return rc ? rc : mlp_half(s, l, &x1, &mlp_in, out);
}

/* Tokens per MLP chunk when a pass over n tokens runs the MLP in chunks, else 0. The MLP's
 * intermediates dominate a layer's working set: in a chunk's backward about seven [tokens,
 * intermediate] tensors (gate, up, their product and the three gradients). Pieces of equal size
 * with at most ~448 MiB of them bound that part of a long sequence's memory (pieces of ~2000
 * tokens at Llama-8B's width; an 8B-shape B2xT2048 step in two: 0.5 GiB less at ~2% of its time on
 * an H200). The output projection and the residual sums go with the MLP (after_attention). Falcon's
 * parallel layers read x in both halves (no split). */
#define FINCH_MLP_CHUNK_BYTES ((int64_t)448 << 20)
static int64_t mlp_chunk(const step_ctx *s)
{
    const finch_model *m = s->m;
    int64_t n = s->n_tokens, chunk = m->mlp_chunk_tokens;
    if (s->cache || (m->cfg.arch == FINCH_ARCH_FALCON && m->cfg.parallel_attn)) return 0;
    if (chunk <= 0) {
        int64_t per_token = 7 * m->cfg.intermediate * (int64_t)finch_dtype_size(m->dtype);
        int64_t pieces = (n * per_token + FINCH_MLP_CHUNK_BYTES - 1) / FINCH_MLP_CHUNK_BYTES;
        chunk = pieces > 1 ? ((n + pieces - 1) / pieces + 63) / 64 * 64 : n;
    }
    return n <= chunk ? 0 : chunk;
}

/* One decoder layer: x -> out (out is preallocated and keeps its gradient node). A pass that keeps no
 * tape (inference, the forward of gradient checkpointing) runs long sequences' part after attention
 * in chunks, each chunk's intermediates released before the next. */
int finch_layer_forward(step_ctx *s, int64_t l, const finch_tensor *x, const finch_tensor *out)
{
    const finch_model_config *c = &s->m->cfg;
    const finch_layer *ly = &s->m->layers[l];
    int rc;
    if (c->arch == FINCH_ARCH_FALCON && c->parallel_attn) {
        /* Falcon: attention and MLP read the same input; both add to the residual. */
        finch_tensor a, attn, mlp_in, mo, sum, res;
        if ((rc = norm(s, x, &ly->attn_norm, &ly->attn_norm_b, &a)) || (rc = attention_block(s, l, &a, &attn))) return rc;
        if (param_present(&ly->mlp_norm)) {
            if ((rc = norm(s, x, &ly->mlp_norm, &ly->mlp_norm_b, &mlp_in))) return rc;
        } else {
            mlp_in = a;
        }
        if ((rc = mlp_block(s, l, &mlp_in, &mo)) || (rc = add_to_out(s, &mo, &attn, NULL, &sum))) return rc;
        return add_to_out(s, x, &sum, out, &res);
    }
    finch_tensor a, o;
    if ((rc = norm(s, x, &ly->attn_norm, &ly->attn_norm_b, &a)) || (rc = attention_core(s, l, &a, &o))) return rc;
    int64_t chunk = s->g->recording || s->g->want_grad ? 0 : mlp_chunk(s);
    if (!chunk) return after_attention(s, l, x, &o, out);
    for (int64_t r0 = 0; !rc && r0 < s->n_tokens; r0 += chunk) {
        int64_t n = s->n_tokens - r0 < chunk ? s->n_tokens - r0 : chunk;
        finch_arena_mark am = finch_arena_get_mark(&s->m->arena);
        finch_tensor xc = finch_tensor_rows(x, r0, n), oc = finch_tensor_rows(&o, r0, n), outc = finch_tensor_rows(out, r0, n);
        s->row0 = r0;
        rc = after_attention(s, l, &xc, &oc, &outc);
        s->row0 = 0;
        finch_arena_reset(&s->m->arena, am);
    }
    return rc;
}

/* Gradient checkpointing's backward of layer l in chunks: attention up to its output o is
 * recomputed and taped; then each chunk of what follows (o's projection, the residual sums, the
 * MLP) is recomputed, taped and differentiated (its gradient rows land in o's and x's gradients,
 * allocated before the chunks and zeroed by the first view that writes them) and released; last
 * attention is differentiated. Of the layer's [tokens, hidden]-sized tensors only the normed input,
 * q/k/v, o and their gradients are ever whole. The chunks' output values are not read (only their
 * gradient, in out's node): out_to_scratch puts them in scratch. */
static int layer_backward_chunked(step_ctx *s, int64_t l, const finch_tensor *x, const finch_tensor *out, int64_t chunk,
                                  int out_to_scratch)
{
    finch_graph *g = s->g;
    finch_arena *arena = &s->m->arena;
    const finch_layer *ly = &s->m->layers[l];
    finch_graph_mark gm = finch_graph_get_mark(g);
    finch_tensor a, o;
    int rc = norm(s, x, &ly->attn_norm, &ly->attn_norm_b, &a);
    if (!rc) rc = attention_core(s, l, &a, &o);
    if (!rc && o.node >= 0) {
        finch_dptr d;
        int acc;
        rc = finch_grad_target(g, &o, &d, &acc);
    }
    for (int64_t r0 = 0; !rc && r0 < s->n_tokens; r0 += chunk) {
        int64_t n = s->n_tokens - r0 < chunk ? s->n_tokens - r0 : chunk;
        finch_graph_mark gc = finch_graph_get_mark(g);
        finch_arena_mark ac = finch_arena_get_mark(arena);
        finch_tensor xc = finch_tensor_rows(x, r0, n), oc = finch_tensor_rows(&o, r0, n), outc = finch_tensor_rows(out, r0, n);
        if (out_to_scratch) rc = finch_arena_alloc(arena, (size_t)(n * outc.cols) * finch_dtype_size(outc.dtype), &outc.data);
        s->row0 = r0;
        if (!rc) rc = after_attention(s, l, &xc, &oc, &outc);
        s->row0 = 0;
        if (!rc) rc = finch_graph_backward(g, gc.n_tape);
        finch_graph_reset(g, gc);
        finch_arena_reset(arena, ac);
    }
    if (!rc) rc = finch_graph_backward(g, gm.n_tape);
    finch_graph_reset(g, gm);
    return rc;
}

static int layer_trainable(const finch_layer *ly)
{
    const finch_param *ps[] = {&ly->attn_norm, &ly->attn_norm_b, &ly->mlp_norm, &ly->mlp_norm_b,
                               &ly->post_attn_norm, &ly->post_ffn_norm, &ly->q_norm, &ly->k_norm};
    for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++)
        if (ps[i]->grad.buf) return 1;
    for (int i = 0; i < ly->n_linears; i++) {
        const finch_linear_module *lin = ly->linears[i];
        if (lin->weight.grad.buf || lin->bias.grad.buf || (lin->rank && (lin->lora_a.grad.buf || lin->lora_b.grad.buf)))
            return 1;
    }
    return 0;
}

/* ---- batch upload ---------------------------------------------------------------------------- */

/* A new sequence starts at token t of a row when it is the row's first or its segment id differs
 * from the previous token's (without segment ids every row is one sequence). */
static int segment_starts(const finch_batch *b, int64_t i, int64_t t)
{
    return t == 0 || (b->segment_ids && b->segment_ids[i * b->seq_len + t] != b->segment_ids[i * b->seq_len + t - 1]);
}

static int upload_batch(step_ctx *s, const finch_batch *b, int64_t *count)
{
    finch_model *m = s->m;
    int64_t B = b->batch, T = b->seq_len, n = B * T, V = m->cfg.vocab;
    int64_t n_seqs = 0;
    for (int64_t i = 0; i < B; i++)
        for (int64_t t = 0; t < T; t++) n_seqs += segment_starts(b, i, t);
    size_t need = (size_t)(3 * n + n_seqs + 1);
    if (need > m->host_i32_cap) {
        int32_t *p = realloc(m->host_i32, need * sizeof *p);
        if (!p) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
        m->host_i32 = p;
        m->host_i32_cap = need;
    }
    int32_t *ids = m->host_i32, *labels = ids + n, *pos = labels + n, *cu = pos + n;
    const int32_t *lab = b->labels ? b->labels : b->input_ids;
    int64_t counted = 0, seq = 0, start = 0;
    for (int64_t i = 0; i < B; i++) {
        for (int64_t t = 0; t < T; t++) {
            int64_t at = i * T + t;
            int32_t id = b->input_ids[at];
            if (id < 0 || id >= V)
                return finch_error(FINCH_ERR_INVALID_ARGUMENT, "input_ids[%lld][%lld] = %d is outside the vocabulary [0, %lld)",
                                   (long long)i, (long long)t, id, (long long)V);
            int32_t l = lab[at];
            if (l != FINCH_IGNORE_INDEX && (l < 0 || l >= V))
                return finch_error(FINCH_ERR_INVALID_ARGUMENT, "labels[%lld][%lld] = %d is neither -100 nor in [0, %lld)",
                                   (long long)i, (long long)t, l, (long long)V);
            if (segment_starts(b, i, t)) {
                cu[seq++] = (int32_t)at;
                start = t;
            }
            ids[at] = id;
            pos[at] = (int32_t)(t - start);
            /* Row t predicts the label of position t + 1, inside its own sequence and never from padding. */
            int same = t + 1 < T && !segment_starts(b, i, t + 1) && !(b->segment_ids && b->segment_ids[at] < 0);
            labels[at] = same ? lab[at + 1] : FINCH_IGNORE_INDEX;
            counted += labels[at] != FINCH_IGNORE_INDEX;
        }
    }
    cu[n_seqs] = (int32_t)n;
    finch_dptr d;
    int rc = finch_arena_alloc(&m->arena, need * sizeof(int32_t), &d);
    if (rc) return rc;
    if (m->be->api->write(m->be->dev, m->be->stream, d, m->host_i32, need * sizeof(int32_t)))
        return finch_device_error(m->be, FINCH_ERR_DEVICE, "uploading the batch");
    s->ids = d;
    s->labels = finch_dptr_at(d, (size_t)n * 4);
    s->positions = finch_dptr_at(d, (size_t)(2 * n) * 4);
    s->cu_seqlens = finch_dptr_at(d, (size_t)(3 * n) * 4);
    s->n_seqs = n_seqs;
    *count = counted;
    return FINCH_OK;
}

static float round_to(finch_dtype t, float x)
{
    if (t != FINCH_DTYPE_BF16) return x;
    uint32_t u;
    memcpy(&u, &x, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    u &= 0xffff0000u;
    memcpy(&x, &u, 4);
    return x;
}

static float load_elem(finch_dtype t, const unsigned char *p)
{
    uint16_t h;
    float f;
    switch (t) {
    case FINCH_DTYPE_BF16: memcpy(&h, p, 2); return finch_bf16_to_f32(h);
    case FINCH_DTYPE_F16: memcpy(&h, p, 2); return finch_f16_to_f32(h);
    default: memcpy(&f, p, 4); return f;
    }
}

static void store_elem(finch_dtype t, float v, unsigned char *p)
{
    uint16_t h;
    switch (t) {
    case FINCH_DTYPE_BF16: h = finch_f32_to_bf16(v); memcpy(p, &h, 2); return;
    case FINCH_DTYPE_F16: h = finch_f32_to_f16(v); memcpy(p, &h, 2); return;
    default: memcpy(p, &v, 4); return;
    }
}

/* x_0 from a host-resident table (m->embed_host): the step's rows are gathered on the host with the
 * plugin's arithmetic (out = scale * row, in f32, stored in the compute dtype) and uploaded a slab
 * at a time. The table is frozen, so nothing is recorded for backward. */
static int embed_from_host(step_ctx *s, float escale, finch_tensor *x0)
{
    finch_model *m = s->m;
    const finch_param *p = &m->embed;
    const unsigned char *table = m->embed_host;
    int64_t n = s->n_tokens, V = p->shape[0], H = p->shape[1];
    if (!s->host_ids) return finch_error(FINCH_ERR_STATE, "embedding: the table is in host memory but the step has no host ids");
    int rc = finch_graph_tensor(s->g, m->dtype, n, H, 0, x0);
    if (rc) return rc;
    size_t ts = finch_dtype_size(p->dtype), os = finch_dtype_size(m->dtype), in_row = (size_t)H * ts, out_row = (size_t)H * os;
    int64_t slab = (int64_t)(((size_t)8 << 20) / out_row);
    slab = slab < 1 ? 1 : slab > n ? n : slab;
    unsigned char *buf = malloc((size_t)slab * out_row);
    if (!buf) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    int same = p->dtype == m->dtype && escale == 1.0f;
    for (int64_t t0 = 0; t0 < n && !rc; t0 += slab) {
        int64_t rows = n - t0 < slab ? n - t0 : slab;
        for (int64_t r = 0; r < rows && !rc; r++) {
            int32_t id = s->host_ids[t0 + r];
            if (id < 0 || id >= V) {
                rc = finch_error(FINCH_ERR_INVALID_ARGUMENT, "embedding: token id %d is outside the vocabulary [0, %lld)", id, (long long)V);
                break;
            }
            const unsigned char *src = table + (size_t)id * in_row;
            unsigned char *dst = buf + (size_t)r * out_row;
            if (same) {
                memcpy(dst, src, in_row);
            } else {
                for (int64_t j = 0; j < H; j++) store_elem(m->dtype, escale * load_elem(p->dtype, src + (size_t)j * ts), dst + (size_t)j * os);
            }
        }
        if (!rc && m->be->api->write(m->be->dev, m->be->stream, finch_dptr_at(x0->data, (size_t)t0 * (size_t)x0->ld * os), buf,
                                     (size_t)rows * out_row))
            rc = finch_device_error(m->be, FINCH_ERR_DEVICE, "uploading the step's embeddings");
    }
    free(buf);
    return rc;
}

int finch_model_embed(step_ctx *s, finch_tensor *x0)
{
    finch_model *m = s->m;
    float escale = m->cfg.scale_embeddings ? round_to(m->dtype, (float)sqrt((double)m->cfg.hidden)) : 1.0f;
    if (m->embed_host) return embed_from_host(s, escale, x0);
    return finch_op_embedding(s->g, s->ids, s->n_tokens, &m->embed, m->dtype, escale, x0);
}

int finch_model_final_norm(step_ctx *s, const finch_tensor *x, finch_tensor *y)
{
    return norm(s, x, &s->m->final_norm, &s->m->final_norm_b, y);
}

/* ---- loss ------------------------------------------------------------------------------------ */

static int head_and_loss(step_ctx *s, const finch_tensor *xL, int want_logits, int backward, float grad_scale)
{
    finch_model *m = s->m;
    const finch_model_config *c = &m->cfg;
    const finch_plugin_api *api = m->be->api;
    finch_graph *g = s->g;
    finch_tensor hn;
    int rc = finch_model_final_norm(s, xL, &hn);
    if (rc) return rc;
    finch_dptr loss_sum = m->loss_buf, count = finch_dptr_at(m->loss_buf, 4);
    if ((rc = api->fill(m->be->dev, m->be->stream, loss_sum, FINCH_DTYPE_F32, 2, 0.0f)))
        return finch_device_error(m->be, rc, "clearing the loss");
    if (!want_logits) {
        /* Fused head and cross-entropy: the logits never exist in full. */
        finch_linear_cross_entropy_desc d;
        memset(&d, 0, sizeof d);
        d.n_tokens = s->n_tokens;
        d.dim = c->hidden;
        d.vocab = c->vocab;
        /* ~128 MiB of logits in the activations' type a chunk (512 tokens of a 128K vocabulary in
         * bf16), in whole tiles of 128 tokens of the products. Every chunk reads the whole lm head
         * twice (logits, then dhidden): with 32 MiB chunks (65 tokens) a Llama-8B B2xT2048 step read
         * its 1 GB head 126 times and the loss took 60 ms of 0.56 s on an H200. */
        int64_t chunk = ((int64_t)128 << 20) / (c->vocab * (int64_t)finch_dtype_size(hn.dtype));
        if (chunk >= 128) chunk -= chunk % 128;
        d.chunk_tokens = chunk < 1 ? 1 : chunk > s->n_tokens ? s->n_tokens : chunk;
        d.act_type = hn.dtype;
        d.hidden = hn.data;
        d.ldh = hn.ld;
        d.w.dtype = m->lm_head->dtype;
        d.w.data = m->lm_head->data;
        d.labels = s->labels;
        d.softcap = c->final_softcap;
        d.loss_sum = loss_sum;
        d.count = count;
        if (backward) {
            d.grad_scale = grad_scale;
            if ((rc = finch_grad_target(g, &hn, &d.dhidden, &d.dhidden_accumulate))) return rc;
            d.lddh = hn.ld;
            d.dw = m->lm_head->grad;
        }
        if ((rc = api->linear_cross_entropy(m->be->dev, m->be->stream, &d)))
            return finch_device_error(m->be, rc, "lm head and cross-entropy");
        if (backward) finch_grad_written(g, &hn);
        return FINCH_OK;
    }
    finch_tensor logits;
    if ((rc = finch_op_logits(g, &hn, m->lm_head, &logits))) return rc;
    finch_cross_entropy_desc d;
    memset(&d, 0, sizeof d);
    d.n_tokens = s->n_tokens;
    d.vocab = c->vocab;
    d.dtype = FINCH_DTYPE_F32;
    d.logits = logits.data;
    d.ld = logits.ld;
    d.labels = s->labels;
    d.softcap = c->final_softcap;
    d.loss_sum = loss_sum;
    d.count = count;
    int acc = 0;
    if (backward) {
        d.grad_scale = grad_scale;
        if ((rc = finch_grad_target(g, &logits, &d.dlogits, &acc))) return rc;
        d.lddlogits = logits.ld;
    }
    if ((rc = api->cross_entropy(m->be->dev, m->be->stream, &d))) return finch_device_error(m->be, rc, "cross-entropy");
    if (backward) finch_grad_written(g, &logits);
    m->logits = logits.data;
    m->logits_count = s->n_tokens * c->vocab;
    if (c->final_softcap > 0) {
        /* The logits a caller sees are capped, as Hugging Face returns them. */
        finch_dptr capped;
        if ((rc = finch_arena_alloc(&m->arena, (size_t)m->logits_count * 4, &capped))) return rc;
        if ((rc = api->activation_forward(m->be->dev, m->be->stream, FINCH_ACT_SOFTCAP, c->final_softcap, m->logits_count,
                                          FINCH_DTYPE_F32, logits.data, capped)))
            return finch_device_error(m->be, rc, "final logit softcap");
        m->logits = capped;
    }
    return FINCH_OK;
}

/* ---- activation offload ----------------------------------------------------------------------- */

/* With checkpointing and offload, x_1 .. x_L share two device slots (x_l in slot l % 2): each layer
 * reads one and writes the other. x_1 .. x_{L-2} are copied to host memory as they are produced and
 * copied back into their slot for their layer's recomputation in backward. x_0 (the embeddings),
 * x_{L-1} and x_L stay on the device.
 *
 * With m->save_attention each layer l also keeps its attention half (finch_layer_saved: o, its
 * log-sum-exp, x1, at level 2 q, k, v, and the adapters' xa of the products the recompute then only
 * tapes) in a second pair of slots (block l in slot l % 2), and
 * blocks 0 .. L-3 travel with the inputs: the recompute for backward then runs the input norm and what
 * follows x1 (level 1: also the products q, k and v and RoPE, which attention's backward reads), not
 * attention nor o's projection. An 8B-shape layer of 4096 tokens moves 32 MB (x_l) and 64 MB (level 1)
 * or 112 MB (level 2) each way. Layer l's copies out (x_{l+1} and block l) and back (x_l and block l)
 * each end in one event.
 *
 * Where the backend orders streams (events) and has page-locked memory, the copies run on a stream
 * of their own beside the compute: a copy out starts when its layer is done and must end before the
 * slot is written again two layers later; the copy back of x_{l-1} runs while layer l is
 * differentiated (whose recomputed output then goes to scratch memory, not to x_{l+1}'s slot, the
 * one x_{l-1} comes back to). Otherwise the copies are queued on the compute stream. */
typedef struct offload {
    int on;
    int async;                    /* copies on m->offload_stream, ordered by m->offload_events */
    finch_dptr slot[2];
    size_t bytes;                 /* of one x_l */
    int save;                     /* attention halves kept (m->save_attention where the layers allow) */
    finch_dptr block[2];
    size_t block_bytes, lse_at, x1_at, qkv_at[3];   /* one block: o at 0, then lse, x1, q, k, v, the xa */
    size_t xa_at[FINCH_SAVED_XA], xa_bytes[FINCH_SAVED_XA];
    int has_x1, has_qkv;
} offload;

enum { EV_COMPUTE, EV_COPIED, EV_LOADED = EV_COPIED + 2 };

/* Page-locked memory when the backend has it (the copies then run in stream order without holding
 * up the host: far cheaper than a synchronous copy from pageable memory), else plain memory. */
static int has_async_copies(const finch_model *m)
{
    const finch_plugin_api *api = m->be->api;
    return api->host_alloc && api->host_free && api->read_async && api->write_async;
}

static int has_events(const finch_model *m)
{
    const finch_plugin_api *api = m->be->api;
    return api->event_create && api->event_destroy && api->event_record && api->stream_wait_event;
}

static void release_copy_stream(finch_model *m)
{
    const finch_plugin_api *api = m->be->api;
    for (int i = 0; i < 5; i++) {
        if (m->offload_events[i]) api->event_destroy(m->be->dev, m->offload_events[i]);
        m->offload_events[i] = NULL;
    }
    if (m->offload_stream) api->stream_destroy(m->be->dev, m->offload_stream); /* waits for its copies */
    m->offload_stream = NULL;
}

void finch_model_offload_release(finch_model *m)
{
    release_copy_stream(m);
    if (m->offload_pinned && m->offload_host) m->be->api->host_free(m->be->dev, m->offload_host);
    else free(m->offload_host);
    m->offload_host = NULL;
    m->offload_cap = 0;
    m->offload_pinned = 0;
}

/* The copy stream and its events; on any failure the copies stay on the compute stream. */
static void open_copy_stream(finch_model *m)
{
    const finch_plugin_api *api = m->be->api;
    int rc = api->stream_create(m->be->dev, &m->offload_stream);
    for (int i = 0; i < 5 && !rc; i++) rc = api->event_create(m->be->dev, &m->offload_events[i]);
    if (rc) release_copy_stream(m);
}

static size_t align256(size_t n) { return (n + 255) & ~(size_t)255; }

/* What a block holds at level 2 (o, lse, x1, q, k, v), 1 (o, lse, x1) or 0 (nothing), as far as the
 * layers allow. */
static void block_layout(const finch_model *m, int64_t n, int level, offload *o)
{
    const finch_model_config *c = &m->cfg;
    size_t es = finch_dtype_size(m->dtype);
    int64_t nq = c->n_heads * c->head_dim, nkv = c->n_kv_heads * c->head_dim;
    o->save = level > 0 && !(c->arch == FINCH_ARCH_FALCON && c->parallel_attn);
    o->has_x1 = o->save && !c->sandwich_norms;
    o->has_qkv = o->save && level >= 2 && !c->qk_norm && !param_present(&m->layers[0].qkv.weight);
    o->lse_at = align256((size_t)(n * nq) * es);
    o->x1_at = o->lse_at + align256((size_t)(n * c->n_heads) * sizeof(float));
    o->qkv_at[0] = o->x1_at + (o->has_x1 ? align256(o->bytes) : 0);
    o->qkv_at[1] = o->qkv_at[0] + (o->has_qkv ? align256((size_t)(n * nq) * es) : 0);
    o->qkv_at[2] = o->qkv_at[1] + (o->has_qkv ? align256((size_t)(n * nkv) * es) : 0);
    size_t at = o->qkv_at[2] + (o->has_qkv ? align256((size_t)(n * nkv) * es) : 0);
    /* The xa of the products the recompute only tapes, at the largest rank any layer gives them. */
    int kept[FINCH_SAVED_XA] = {o->has_qkv, o->has_qkv, o->has_qkv, o->has_x1, o->save && !c->sandwich_norms};
    for (int i = 0; i < FINCH_SAVED_XA; i++) {
        int64_t rank = 0;
        for (int64_t l = 0; kept[i] && l < c->n_layers; l++) {
            const finch_layer *ly = &m->layers[l];
            const finch_linear_module *lin[FINCH_SAVED_XA] = {&ly->q, &ly->k, &ly->v, &ly->o, &ly->down};
            if (lin[i]->rank > rank) rank = lin[i]->rank;
        }
        o->xa_at[i] = at;
        o->xa_bytes[i] = align256((size_t)(n * rank) * sizeof(float));
        at += o->xa_bytes[i];
    }
    o->block_bytes = o->save ? at : 0;
}

/* Attention halves are kept while their two device slots take at most this much (an 8B-shape layer of
 * 8192 tokens with q, k and v: 2 x 230 MB); longer steps keep less or nothing, so that offload still
 * bounds a long context's device memory. */
#define FINCH_KEPT_SLOTS_BYTES ((size_t)512 << 20)

static int offload_begin(finch_model *m, int64_t n, int64_t H, offload *o)
{
    int64_t L = m->cfg.n_layers;
    o->bytes = (size_t)(n * H) * finch_dtype_size(m->dtype);
    int level = m->save_attention;
    block_layout(m, n, level, o);
    while (level > 0 && 2 * o->block_bytes > FINCH_KEPT_SLOTS_BYTES) block_layout(m, n, --level, o);
    size_t need = o->bytes * (size_t)(L - 1) + o->block_bytes * (size_t)L;
    if (need > m->offload_cap) {
        /* The streams may still be copying into the old buffer (the previous step's reloads). */
        if (m->offload_pinned && m->be->api->synchronize(m->be->dev, m->be->stream))
            return finch_device_error(m->be, FINCH_ERR_DEVICE, "synchronize");
        finch_model_offload_release(m);
        void *p = NULL;
        if (has_async_copies(m) && m->be->api->host_alloc(m->be->dev, need, &p) != FINCH_OK && o->save) {
            /* Too much to page-lock with the attention halves: the layer inputs alone, from now on. */
            m->save_attention = 0;
            block_layout(m, n, 0, o);
            need = o->bytes * (size_t)(L - 1);
            if (m->be->api->host_alloc(m->be->dev, need, &p) != FINCH_OK) p = NULL;
        }
        if (p) {
            m->offload_pinned = 1;
        } else {
            /* Too much to page-lock: plain memory, synchronous copies (nothing kept but the inputs). */
            block_layout(m, n, 0, o);
            need = o->bytes * (size_t)(L - 1);
            p = malloc(need);
        }
        if (!p) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "activation offload: cannot hold %zu bytes in host memory", need);
        m->offload_host = p;
        m->offload_cap = need;
    }
    if (m->offload_pinned && has_events(m) && !m->offload_stream) open_copy_stream(m);
    o->async = m->offload_stream != NULL;
    int rc = FINCH_OK;
    for (int i = 0; i < 2 && !rc; i++) rc = finch_arena_alloc(&m->arena, o->bytes, &o->slot[i]);
    for (int i = 0; i < 2 && !rc && o->save; i++) rc = finch_arena_alloc(&m->arena, o->block_bytes, &o->block[i]);
    o->on = !rc;
    return rc;
}

/* Host memory: x_1 .. x_{L-1}, then blocks 0 .. L-1. */
static unsigned char *offload_at(finch_model *m, const offload *o, int64_t l) { return m->offload_host + (size_t)(l - 1) * o->bytes; }

static unsigned char *block_at(finch_model *m, const offload *o, int64_t l)
{
    return m->offload_host + (size_t)(m->cfg.n_layers - 1) * o->bytes + (size_t)l * o->block_bytes;
}

static int travels_x(const finch_model *m, int64_t l) { return l >= 1 && l <= m->cfg.n_layers - 2; }
static int travels_block(const finch_model *m, const offload *o, int64_t l) { return o->save && l >= 0 && l <= m->cfg.n_layers - 3; }

/* Layer l's attention half in its slot, for the forward to write (reading 0) or the recompute to read. */
static finch_layer_saved saved_block(const offload *o, int64_t l, int reading)
{
    finch_dptr b = o->block[l % 2];
    finch_layer_saved sv = {reading, o->has_x1, o->has_qkv, b, finch_dptr_at(b, o->lse_at), finch_dptr_at(b, o->x1_at), {{0}}, {{0}}};
    for (int i = 0; i < 3; i++) sv.qkv[i] = finch_dptr_at(b, o->qkv_at[i]);
    for (int i = 0; i < FINCH_SAVED_XA; i++) sv.xa[i] = o->xa_bytes[i] ? finch_dptr_at(b, o->xa_at[i]) : finch_dptr_none();
    return sv;
}

/* Stream a waits for what stream b has queued so far (through event ev). */
static int stream_after(finch_model *m, finch_plugin_stream *a, finch_plugin_stream *b, finch_plugin_event *ev)
{
    const finch_plugin_api *api = m->be->api;
    if (api->event_record(m->be->dev, b, ev) || api->stream_wait_event(m->be->dev, a, ev))
        return finch_device_error(m->be, FINCH_ERR_DEVICE, "ordering the activation copies");
    return FINCH_OK;
}

/* The compute stream waits for the copy that recorded ev. */
static int compute_waits(finch_model *m, finch_plugin_event *ev)
{
    if (m->be->api->stream_wait_event(m->be->dev, m->be->stream, ev))
        return finch_device_error(m->be, FINCH_ERR_DEVICE, "ordering the activation copies");
    return FINCH_OK;
}

/* Before layer l writes x_{l+1}: the copy out of the slot's last occupant (x_{l-1}) is done. */
static int offload_before_forward(finch_model *m, const offload *o, int64_t l)
{
    return o->async ? compute_waits(m, m->offload_events[EV_COPIED + (l + 1) % 2]) : FINCH_OK;
}

static int copy_one(finch_model *m, finch_plugin_stream *cs, finch_dptr dev, unsigned char *host, size_t bytes, int back)
{
    const finch_plugin_api *api = m->be->api;
    if (back ? (m->offload_pinned ? api->write_async : api->write)(m->be->dev, cs, dev, host, bytes)
             : (m->offload_pinned ? api->read_async : api->read)(m->be->dev, cs, dev, host, bytes))
        return finch_device_error(m->be, FINCH_ERR_DEVICE, back ? "reloading a layer's activations from host memory"
                                                                : "offloading a layer's activations to host memory");
    return FINCH_OK;
}

/* Layer l's activations to host memory when it was just computed (back = 0: x_{l+1} and block l), or
 * back into their slots (back = 1: x_l and block l): queued before layer l + 1 is differentiated
 * (beside the compute: it runs meanwhile) or, on the compute stream, just before layer l. */
static int offload_layer(finch_model *m, const offload *o, const finch_tensor *x, int64_t l, int back)
{
    int64_t xi = back ? l : l + 1;
    int do_x = travels_x(m, xi), do_block = travels_block(m, o, l);
    if (!do_x && !do_block) return FINCH_OK;
    finch_plugin_stream *cs = o->async ? m->offload_stream : m->be->stream;
    int rc = o->async ? stream_after(m, cs, m->be->stream, m->offload_events[EV_COMPUTE]) : FINCH_OK;
    if (!rc && do_x) rc = copy_one(m, cs, x[xi].data, offload_at(m, o, xi), o->bytes, back);
    if (!rc && do_block) rc = copy_one(m, cs, o->block[l % 2], block_at(m, o, l), o->block_bytes, back);
    if (!rc && o->async && m->be->api->event_record(m->be->dev, cs, m->offload_events[(back ? EV_LOADED : EV_COPIED) + xi % 2]))
        return finch_device_error(m->be, FINCH_ERR_DEVICE, "ordering the activation copies");
    return rc;
}

/* Before layer l is differentiated: its input and block are back. */
static int offload_before_backward(finch_model *m, const offload *o, int64_t l)
{
    if (!o->async || (!travels_x(m, l) && !travels_block(m, o, l))) return FINCH_OK;
    return compute_waits(m, m->offload_events[EV_LOADED + l % 2]);
}

/* ---- the step -------------------------------------------------------------------------------- */

int finch_model_step(finch_model *m, const finch_batch *b, const finch_step_options *opts, int do_backward,
                     finch_step_result *out)
{
    if (!m || !b || !out) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "NULL argument");
    if (b->batch <= 0 || b->seq_len <= 0 || !b->input_ids)
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "batch: batch (%lld) and seq_len (%lld) must be positive and input_ids set",
                           (long long)b->batch, (long long)b->seq_len);
    if (b->batch * b->seq_len > INT32_MAX / 4)
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "batch: %lld tokens is too many", (long long)(b->batch * b->seq_len));
    memset(out, 0, sizeof *out);
    const finch_model_config *c = &m->cfg;
    finch_graph *g = &m->graph;
    const finch_plugin_api *api = m->be->api;
    int want_logits = opts && opts->want_logits;
    m->logits = finch_dptr_none();
    m->logits_count = 0;
    m->step++;

    int rc = finch_arena_begin(&m->arena);
    if (rc) return rc;
    finch_graph_clear(g);
    step_ctx s = {m, g, b->batch, b->seq_len, b->batch * b->seq_len, {0}, {0}, {0}, {0}, do_backward, NULL, 0, NULL, 0, 0, NULL};
    if (do_backward) m->weights_version++; /* an optimizer step will follow: cached keys go stale */
    int64_t count = 0;
    if ((rc = upload_batch(&s, b, &count)) || (rc = finch_vl_positions(m, b, &s.positions))) return rc;
    s.host_ids = m->host_i32;
    float grad_scale = opts && opts->grad_scale != 0 ? opts->grad_scale : count ? 1.0f / (float)count : 0.0f;
    int ckpt = do_backward && m->gradient_checkpointing;
    int64_t L = c->n_layers, n = s.n_tokens, H = c->hidden;
    offload off = {0};
    if (ckpt && m->offload_activations && L >= 2 && (rc = offload_begin(m, n, H, &off))) return rc;

    g->want_grad = do_backward;
    g->recording = do_backward;
    finch_dptr gbuf[2] = {{0}, {0}};
    if (do_backward) {
        for (int i = 0; i < 2; i++)
            if ((rc = finch_arena_alloc(&m->arena, (size_t)(n * H) * finch_dtype_size(m->dtype), &gbuf[i]))) return rc;
    }

    /* x[0] .. x[L]: the residual stream between layers. */
    finch_tensor *x = m->stream;
    int *seg = m->segments;
    rc = finch_model_embed(&s, &x[0]);
    if (!rc) rc = finch_vl_embed_images(m, g, b, do_backward, &x[0]);
    seg[0] = g->n_tape;
    for (int64_t l = 0; !rc && l < L; l++) {
        int req = do_backward && (x[l].node >= 0 || layer_trainable(&m->layers[l]));
        if (off.on) {
            rc = finch_graph_tensor_at(g, m->dtype, n, H, off.slot[(l + 1) % 2], req, &x[l + 1]);
            continue;
        }
        rc = finch_graph_tensor(g, m->dtype, n, H, req, &x[l + 1]);
        if (!rc && req && x[l + 1].node < 0) rc = finch_graph_bind_grad(g, &x[l + 1], finch_dptr_none());
    }
    for (int64_t l = 0; !rc && l < L; l++) {
        if (ckpt) {
            /* Keep only the layer's output; its internals are recomputed in backward. */
            finch_arena_mark am = finch_arena_get_mark(&m->arena);
            g->recording = 0;
            g->want_grad = 0;
            finch_layer_saved sv = saved_block(&off, l, 0);
            s.saved = off.save ? &sv : NULL;
            if (off.on) rc = offload_before_forward(m, &off, l);
            if (!rc) rc = finch_layer_forward(&s, l, &x[l], &x[l + 1]);
            s.saved = NULL;
            finch_arena_reset(&m->arena, am);
            if (!rc && off.on) rc = offload_layer(m, &off, x, l, 0);
        } else {
            rc = finch_layer_forward(&s, l, &x[l], &x[l + 1]);
        }
        seg[l + 1] = g->n_tape;
    }
    g->recording = do_backward;
    g->want_grad = do_backward;
    finch_arena_mark head_mark = finch_arena_get_mark(&m->arena);
    if (!rc) rc = head_and_loss(&s, &x[L], want_logits, do_backward, grad_scale);

    if (!rc && do_backward) {
        if (x[L].node >= 0) finch_graph_rebind_grad(g, &x[L], gbuf[L % 2]);
        rc = finch_graph_backward(g, seg[L]);
        /* The head's normed input and its gradient are done with (x_L's gradient is in gbuf): the
         * layers' backward reuses their memory, two [tokens, hidden] tensors of a long context. */
        if (!want_logits) finch_arena_reset(&m->arena, head_mark);
        for (int64_t l = L - 1; !rc && l >= 0; l--) {
            if (x[l].node >= 0) finch_graph_rebind_grad(g, &x[l], gbuf[l % 2]);
            finch_arena_mark am = finch_arena_get_mark(&m->arena);
            if (off.on) {
                /* Beside the compute x_{l-1} comes back while layer l is differentiated; else x_l
                 * just before. */
                int64_t back = off.async ? l - 1 : l;
                if (back >= 0) rc = offload_layer(m, &off, x, back, 1);
                if (!rc) rc = offload_before_backward(m, &off, l);
            }
            if (rc) break;
            int64_t chunk = ckpt ? mlp_chunk(&s) : 0;
            s.outputs_unread = ckpt && !m->recompute_all;
            finch_layer_saved sv = saved_block(&off, l, 1);
            s.saved = off.save ? &sv : NULL;
            if (chunk) {
                rc = layer_backward_chunked(&s, l, &x[l], &x[l + 1], chunk, off.async);
            } else if (ckpt) {
                /* The recomputed output's values are not needed, only its gradient (node): the ops
                 * that make only them are not run (s->outputs_unread); with copies beside the compute
                 * they go to scratch (x_{l+1}'s slot is x_{l-1}'s) when they are. */
                finch_tensor out = x[l + 1];
                if (off.async) rc = finch_arena_alloc(&m->arena, off.bytes, &out.data);
                finch_graph_mark gm = finch_graph_get_mark(g);
                if (!rc) rc = finch_layer_forward(&s, l, &x[l], &out);
                if (!rc) rc = finch_graph_backward(g, gm.n_tape);
                finch_graph_reset(g, gm);
            } else {
                g->n_tape = seg[l + 1];
                rc = finch_graph_backward(g, seg[l]);
            }
            s.saved = NULL;
            finch_arena_reset(&m->arena, am);
        }
        if (!rc) {
            g->n_tape = seg[0];
            rc = finch_graph_backward(g, 0);
        }
    }
    if (rc) return rc;

    float sums[2];
    if (api->read(m->be->dev, m->be->stream, m->loss_buf, sums, sizeof sums))
        return finch_device_error(m->be, FINCH_ERR_DEVICE, "reading the loss");
    out->loss_sum = sums[0];
    out->token_count = count;
    out->loss = count ? sums[0] / (double)count : 0.0;
    return FINCH_OK;
}
