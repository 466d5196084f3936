/* Gradient checkpointing recomputes only what backward reads (model_forward.c, s->outputs_unread):
 * the recompute of a layer for its backward leaves out the products whose values flow only into the
 * layer's output (the MLP's down projection but with sandwich norms, Falcon's parallel attention
 * projection, the residual sums into the output). On the golden models, on the CPU backend or the one
 * named (`test_recompute opencl`; exit 77 when it has no device here):
 *  - two checkpointed LoRA steps, each followed by an AdamW step, give bit for bit the losses,
 *    gradients and updated parameters of the same steps with everything recomputed
 *    (FINCH_RECOMPUTE_ALL=1 at load): every text architecture and Qwen2.5-VL's language model (with
 *    its image); with LoRA dropout, the MLP in chunks of 7 tokens, bf16 compute, 4-bit weights and
 *    full fine-tuning on some of them (llama, gemma2 with its sandwich norms, falcon, phi3);
 *  - the skip does run: each step makes exactly the expected number fewer linear_forward and axpby
 *    calls (per layer and MLP chunk: the down projection but with sandwich norms, plus Falcon's
 *    attention projection; the sum into the output, plus Falcon's sum of its two branches);
 *  - with activation offload (the checkpointed model only; where the backend has page-locked host
 *    memory) the layers also keep their attention half
 *    (o, its log-sum-exp, without sandwich norms x1, and q, k, v where they are products of their own
 *    without per-head norms): still bit for bit, and per layer one attention_forward fewer, per layer
 *    and chunk o's projection (and x1's sum) too, and per layer the q, k and v products. */
#include "core/model.h"
#include "core/runtime.h"
#include "tests/golden_common.h"

#include <stdint.h>

/* ---- the backend's table, counting linear_forward and axpby calls ---------------------------- */

static const finch_plugin_api *base_api;
static finch_plugin_api counting_api;
static int64_t n_linear, n_axpby, n_attention, n_copy;

static int counting_linear_forward(finch_plugin_device *dev, finch_plugin_stream *s, const finch_linear_desc *d)
{
    n_linear++;
    return base_api->linear_forward(dev, s, d);
}

static int counting_axpby(finch_plugin_device *dev, finch_plugin_stream *s, int64_t n, finch_dtype dtype, float alpha,
                          finch_dptr x, float beta, finch_dptr y, finch_dptr out)
{
    n_axpby++;
    return base_api->axpby(dev, s, n, dtype, alpha, x, beta, y, out);
}

static int counting_copy(finch_plugin_device *dev, finch_plugin_stream *s, finch_dptr dst, finch_dptr src, size_t bytes)
{
    n_copy++;
    return base_api->copy(dev, s, dst, src, bytes);
}

static int counting_attention_forward(finch_plugin_device *dev, finch_plugin_stream *s, const finch_attention_desc *d)
{
    n_attention++;
    return base_api->attention_forward(dev, s, d);
}

/* ---- one case --------------------------------------------------------------------------------- */

typedef struct test_case {
    const char *arch;
    const char *what;         /* printed */
    float dropout;
    int64_t mlp_chunk;        /* 0: the MLP whole (the library's choice at these sizes) */
    finch_dtype dtype;
    int in4, full;
    int offload;              /* the checkpointed model offloads its activations (and keeps attention halves) */
} test_case;

/* The image of the Qwen2.5-VL golden batch. */
static int32_t grid[3];
static float *pixels;
static int64_t n_patches;

static finch_batch golden_batch(void)
{
    finch_batch b = {.batch = B, .seq_len = T, .input_ids = ids, .labels = labels};
    if (pixels) {
        b.pixel_values = pixels;
        b.image_grid_thw = grid;
        b.n_images = 1;
        b.n_patches = n_patches;
        b.text_positions = 1;
    }
    return b;
}

static finch_model *load_case(finch_runtime *rt, const char *dir, const test_case *c, int recompute_all)
{
    finch_load_options o = finch_load_options_default();
    o.full_finetune = c->full;
    o.gradient_checkpointing = 1;
    o.compute_dtype = c->dtype;
    o.load_in_4bit = c->in4;
    o.offload_activations = c->offload && !recompute_all;
    finch_model *m = NULL;
    if (!ok(finch_model_load(rt, dir, &o, &m), dir)) return NULL;
    CHECK(!m->recompute_all, "%s: recompute_all %d after loading without FINCH_RECOMPUTE_ALL", dir, m->recompute_all);
    m->recompute_all = recompute_all;
    m->mlp_chunk_tokens = c->mlp_chunk;
    if (c->full) return m;
    /* r = 4 on every linear, B non-zero (the same on both models) so every gradient carries. */
    finch_lora_config lc = finch_lora_config_default();
    lc.r = 4;
    lc.alpha = 8;
    lc.seed = 5;
    lc.dropout = c->dropout;
    if (!ok(finch_lora_attach(m, &lc), "finch_lora_attach")) {
        finch_model_free(m);
        return NULL;
    }
    ok(testing_lora_b_random(m, 300, 0.2f), "finch_trainable_write");
    return m;
}

/* Every trainable's gradient (grads = 1) or value (grads = 0), concatenated. */
static float *trainables(finch_model *m, int grads, int64_t *n)
{
    *n = 0;
    for (int64_t i = 0; i < finch_trainable_count(m); i++) {
        finch_tensor_info ti;
        finch_trainable_info(m, i, &ti);
        *n += ti.numel;
    }
    float *v = malloc((size_t)*n * sizeof(float) + 1);
    int64_t at = 0;
    for (int64_t i = 0; v && i < finch_trainable_count(m); i++) {
        finch_tensor_info ti;
        finch_trainable_info(m, i, &ti);
        ok((grads ? finch_trainable_grad_read : finch_trainable_read)(m, i, v + at, ti.numel), "reading a trainable");
        at += ti.numel;
    }
    return v;
}

/* Both arrays of n floats alike bit for bit, and the gradients of a step not all zero. */
static int same_bits(float *a, float *b, int64_t n, int nonzero)
{
    int same = a && b && !memcmp(a, b, (size_t)n * sizeof(float)), any = 0;
    for (int64_t i = 0; nonzero && same && i < n; i++) any |= a[i] != 0.0f;
    free(a);
    free(b);
    return same && (!nonzero || any);
}

/* One checkpointed step: its loss, and the plugin calls it made. */
static int step(finch_model *m, double *loss, int64_t *linears, int64_t *axpbys, int64_t *attentions, int64_t *copies)
{
    finch_batch b = golden_batch();
    finch_step_result r;
    n_linear = n_axpby = n_attention = n_copy = 0;
    if (!ok(finch_zero_grads(m), "finch_zero_grads") || !ok(finch_forward_backward(m, &b, NULL, &r), "finch_forward_backward"))
        return 0;
    *loss = r.loss;
    *linears = n_linear;
    *axpbys = n_axpby;
    *attentions = n_attention;
    *copies = n_copy;
    return 1;
}

static void run_case(finch_runtime *rt, const test_case *c)
{
    char dir[1100];
    snprintf(dir, sizeof dir, "%s/golden/%s/model", testing_shared_dir(), c->arch);
    finch_model *skip = load_case(rt, dir, c, 0), *all = load_case(rt, dir, c, 1);
    finch_plugin_buffer **st_skip = skip && all ? adamw_state(skip) : NULL, **st_all = st_skip ? adamw_state(all) : NULL;
    if (st_all) {
        const finch_model_config *cfg = &skip->cfg;
        int64_t n = B * T, pieces = c->mlp_chunk && n > c->mlp_chunk ? (n + c->mlp_chunk - 1) / c->mlp_chunk : 1;
        int parallel = cfg->arch == FINCH_ARCH_FALCON && cfg->parallel_attn;
        int64_t want_linear = cfg->n_layers * pieces * (parallel ? 2 : cfg->sandwich_norms ? 0 : 1);
        int64_t want_axpby = cfg->n_layers * pieces * (parallel ? 2 : 1);
        /* Attention halves are kept only with page-locked host memory (model_forward.c). */
        int keeps = c->offload && !parallel && base_api->host_alloc && base_api->read_async && base_api->write_async;
        int64_t want_attention = keeps ? cfg->n_layers : 0;
        if (keeps && !cfg->sandwich_norms) {
            /* x1 kept: o's projection and x1's sum (an axpby unless fused with the norm) not run. */
            int fused = cfg->norm_kind != FINCH_NORM_LAYER && base_api->add_rmsnorm_forward;
            want_linear += cfg->n_layers * pieces;
            want_axpby += fused ? 0 : cfg->n_layers * pieces;
        }
        if (keeps && !cfg->qk_norm && !skip->layers[0].qkv.weight.data.buf)
            want_linear += 3 * cfg->n_layers; /* q, k and v kept (products of their own, no per-head norms) */
        int same = 1;
        for (int s = 1; s <= 2; s++) {
            double ls, la;
            int64_t lin_s, lin_a, ax_s, ax_a, at_s, at_a, cp_s, cp_a, ng;
            if (!step(skip, &ls, &lin_s, &ax_s, &at_s, &cp_s) || !step(all, &la, &lin_a, &ax_a, &at_a, &cp_a)) {
                same = 0;
                break;
            }
            CHECK(ls == la, "%s (%s) step %d: loss %.9g with the skip, %.9g without", c->arch, c->what, s, ls, la);
            /* The layer's two sums give the branch they add (attention's output, the MLP's) their own
             * gradient, no copy: one copy a layer and chunk for the residual input, and at most three more. */
            CHECK(parallel || (cp_s <= cfg->n_layers * pieces + 3 && cp_a <= cfg->n_layers * pieces + 3),
                  "%s (%s) step %d: %lld and %lld device copies, more than %lld", c->arch, c->what, s, (long long)cp_s,
                  (long long)cp_a, (long long)(cfg->n_layers * pieces + 3));
            CHECK(at_a - at_s == want_attention, "%s (%s) step %d: %lld attention_forward calls fewer, not %lld", c->arch, c->what,
                  s, (long long)(at_a - at_s), (long long)want_attention);
            CHECK(lin_a - lin_s == want_linear && ax_a - ax_s == want_axpby,
                  "%s (%s) step %d: the skip saves %lld linear_forward and %lld axpby calls (%lld vs %lld, %lld vs %lld), "
                  "not %lld and %lld",
                  c->arch, c->what, s, (long long)(lin_a - lin_s), (long long)(ax_a - ax_s), (long long)lin_s, (long long)lin_a,
                  (long long)ax_s, (long long)ax_a, (long long)want_linear, (long long)want_axpby);
            float *gs = trainables(skip, 1, &ng), *ga = trainables(all, 1, &ng);
            int g_same = same_bits(gs, ga, ng, 1);
            CHECK(g_same, "%s (%s) step %d: gradients differ with the skip (or are all zero)", c->arch, c->what, s);
            adamw_step_all(skip, st_skip, s, 0.01f);
            adamw_step_all(all, st_all, s, 0.01f);
            float *ps = trainables(skip, 0, &ng), *pa = trainables(all, 0, &ng);
            int p_same = same_bits(ps, pa, ng, 0);
            CHECK(p_same, "%s (%s) step %d: parameters after AdamW differ with the skip", c->arch, c->what, s);
            same &= ls == la && g_same && p_same;
        }
        printf("  %-10s %-26s %s; per step %lld linear_forward, %lld axpby calls fewer\n", c->arch, c->what,
               same ? "bit for bit" : "DIFFERENT", (long long)want_linear, (long long)want_axpby);
    }
    adamw_state_free(skip, st_skip);
    adamw_state_free(all, st_all);
    finch_model_free(skip);
    finch_model_free(all);
}

/* FINCH_RECOMPUTE_ALL=1 at load sets the switch. Checked before any backend runs threads of its own:
 * setenv beside a thread that reads the environment (PoCL's do) is a data race. */
static void check_env_switch(void)
{
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/golden/llama/model", testing_shared_dir());
    finch_runtime *rt = NULL;
    finch_model *m = NULL;
    setenv("FINCH_RECOMPUTE_ALL", "1", 1);
    finch_load_options o = finch_load_options_default();
    o.gradient_checkpointing = 1;
    if (ok(finch_runtime_open("cpu", &rt), "finch_runtime_open cpu") && ok(finch_model_load(rt, dir, &o, &m), dir))
        CHECK(m->recompute_all == 1, "recompute_all %d after loading with FINCH_RECOMPUTE_ALL=1", m->recompute_all);
    unsetenv("FINCH_RECOMPUTE_ALL");
    finch_model_free(m);
    finch_runtime_close(rt);
}

int main(int argc, char **argv)
{
    const char *backend = argc > 1 ? argv[1] : "cpu";
    check_env_switch();
    finch_runtime *rt = NULL;
    if (finch_runtime_open(backend, &rt) != FINCH_OK) {
        printf("skipped: backend %s unavailable: %s\n", backend, finch_last_error());
        return 77;
    }
    base_api = rt->backend.api;
    counting_api = *base_api;
    counting_api.linear_forward = counting_linear_forward;
    counting_api.axpby = counting_axpby;
    counting_api.attention_forward = counting_attention_forward;
    counting_api.copy = counting_copy;
    rt->backend.api = &counting_api;

    const finch_dtype F32 = FINCH_DTYPE_F32, BF16 = FINCH_DTYPE_BF16;
    const test_case cases[] = {
        {"llama", "LoRA", 0, 0, F32, 0, 0, 0},
        {"llama", "LoRA dropout 0.25", 0.25f, 0, F32, 0, 0, 0},
        {"llama", "MLP chunks of 7, dropout", 0.25f, 7, F32, 0, 0, 0},
        {"llama", "bf16", 0, 0, BF16, 0, 0, 0},
        {"llama", "NF4 weights", 0, 0, F32, 1, 0, 0},
        {"llama", "full fine-tuning", 0, 0, F32, 0, 1, 0},
        {"mistral", "LoRA", 0, 0, F32, 0, 0, 0},
        {"qwen2", "LoRA", 0, 0, F32, 0, 0, 0},
        {"qwen3", "LoRA", 0, 0, F32, 0, 0, 0},
        {"gemma", "LoRA", 0, 0, F32, 0, 0, 0},
        {"gemma2", "LoRA", 0, 0, F32, 0, 0, 0},
        {"gemma2", "MLP chunks of 7, dropout", 0.25f, 7, F32, 0, 0, 0},
        {"gemma2", "full fine-tuning", 0, 0, F32, 0, 1, 0},
        {"gemma3", "LoRA", 0, 0, F32, 0, 0, 0},
        {"phi3", "LoRA, MLP chunks of 7", 0, 7, F32, 0, 0, 0},
        {"falcon", "LoRA", 0, 0, F32, 0, 0, 0},
        {"falcon", "LoRA dropout 0.25", 0.25f, 0, F32, 0, 0, 0},
        {"falcon", "full fine-tuning", 0, 0, F32, 0, 1, 0},
        {"qwen2_5_vl", "LoRA, with its image", 0.25f, 7, F32, 0, 0, 0},
        {"llama", "offload", 0, 0, F32, 0, 0, 1},
        {"llama", "offload, MLP chunks of 7, drop", 0.25f, 7, F32, 0, 0, 1},
        {"llama", "offload, bf16", 0, 0, BF16, 0, 0, 1},
        {"gemma2", "offload (sandwich norms)", 0, 0, F32, 0, 0, 1},
        {"phi3", "offload, full fine-tuning", 0, 0, F32, 0, 1, 1},
        {"falcon", "offload", 0, 0, F32, 0, 0, 1},
        {"qwen2_5_vl", "offload, with its image", 0.25f, 7, F32, 0, 0, 1},
    };
    printf("checkpointed steps on %s with the recompute's unread outputs skipped = everything recomputed\n", backend);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char base[1024];
        snprintf(base, sizeof base, "%s/golden/%s", testing_shared_dir(), cases[i].arch);
        if (!open_gold(base)) break;
        if (!strcmp(cases[i].arch, "qwen2_5_vl")) {
            const st_tensor *pv = st_set_find(gold, "image0.pixel_values"), *gt = st_set_find(gold, "image0.grid_thw");
            CHECK(pv && pv->ndim == 2 && gt && gt->numel == 3, "%s: image0.pixel_values, image0.grid_thw", gold_path);
            if (pv && pv->ndim == 2 && gt && gt->numel == 3) {
                n_patches = pv->shape[0];
                pixels = gold_f32("image0.pixel_values", NULL);
                st_to_i32(gt, grid);
            }
        }
        if (pixels || strcmp(cases[i].arch, "qwen2_5_vl")) run_case(rt, &cases[i]);
        free(pixels);
        pixels = NULL;
        free(ids);
        free(labels);
        st_set_close(gold);
    }
    finch_runtime_close(rt);
    return testing_finish();
}
