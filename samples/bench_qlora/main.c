/* bench_qlora: QLoRA training-step throughput and peak device memory at a given model shape.
 *
 *     bench_qlora [--shape 8b|8b-eighth|tiny] [--layers N] [--seq T] [--batch B] [--steps N] [--rank R]
 *                 [--mode qlora|lora] [--backend NAME] [--dir SCRATCH] [--reuse] [--offload]
 *                 [--optim none|adamw|adamw8bit]
 *
 * Builds a Llama-architecture checkpoint with random weights at the shape (8b: Llama-3.1-8B's dims,
 * hidden 4096, 32 layers, 32 heads, 8 kv heads, intermediate 14336, vocab 128256), nothing
 * downloaded. qlora mode writes it as a bitsandbytes 4-bit checkpoint: each linear weight is
 * generated and quantised to NF4 on the host one tensor at a time (threads over blocks), embeddings,
 * lm_head and norms bf16; lora mode writes everything bf16 (the baseline: bf16 LoRA). The scratch
 * folder (--dir, default $TMPDIR or /tmp) holds it: about 6 GiB (qlora) or 16 GiB (lora) at 8b.
 * Then: load (bf16 compute, gradient checkpointing; --offload: layer inputs in host memory), r=16
 * LoRA on all linear layers, one warm-up step and --steps timed steps on random tokens, B x T each:
 * (--steps 0: the warm-up step is the measured one, for steps that take minutes)
 * whole training steps through finch_trainer (forward, backward, the optimizer: --optim adamw, the
 * default, or adamw8bit; constant lr 1e-4, weight decay 0.01, no clipping), or with --optim none
 * forward + backward only.
 *
 * Reports tokens/s over the timed steps and peak device memory: the most bytes finch had allocated
 * on the device at once (counted at the plugin's alloc/free, comparable to torch's
 * max_memory_allocated) over the whole run and, with --steps >= 2, over the timed steps after the
 * first (steady_peak: the first step of a shape grows the activation arena piece by piece, the next
 * replaces the pieces by one buffer of the peak they held),
 * and the device's used memory (total - free, as nvidia-smi shows it,
 * including the driver context and any plugin caching) after the steps. */
#include "core/bnb_checkpoint.h"
#include "core/error.h"
#include "core/half.h"
#include "core/runtime.h"
#include "finch/finch.h"
#include "finch/train.h"
#include "samples/finch/bench_model.h"

#include <errno.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

typedef struct shape {
    int64_t hidden, layers, heads, kv_heads, head_dim, inter, vocab;
} shape;

typedef struct args {
    shape s;
    const char *shape_name, *mode, *backend, *dir;
    int64_t seq, batch, steps, rank;
    int reuse, offload;
    const char *optim;      /* "none", or an optimizer name for finch_optimizer_parse */
} args;

static double gib(double bytes) { return bytes / (1024.0 * 1024.0 * 1024.0); }
static double mib(double bytes) { return bytes / (1024.0 * 1024.0); }

/* ---- the random checkpoint --------------------------------------------------------------------- */

/* Uniform values of standard deviation `std` from (seed, index): the same weights at any thread count. */
static void fill_random(float *x, int64_t n, uint64_t seed, float std)
{
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull;
    for (int64_t i = 0; i < n; i++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        x[i] = ((float)(s >> 40) * (1.0f / 16777216.0f) * 2.0f - 1.0f) * std * 1.7320508f;
    }
}

enum { GEN_CHUNK = 1 << 20 }; /* elements per generated piece: a multiple of every blocksize */

/* A random [rows, cols] weight quantised to NF4 piece by piece on all threads; host memory is the
 * packed result plus one f32 piece per thread. */
static int random_nf4(int64_t rows, int64_t cols, uint64_t seed, float std, nf4_weight *w)
{
    memset(w, 0, sizeof *w);
    int64_t n = rows * cols;
    w->type = NF4_TYPE_NF4;
    w->rows = rows;
    w->cols = cols;
    w->blocksize = NF4_DEFAULT_BLOCKSIZE;
    w->dtype = FINCH_DTYPE_BF16;
    memcpy(w->code, nf4_code_table(NF4_TYPE_NF4), sizeof w->code);
    w->packed = malloc((size_t)nf4_packed_bytes(n));
    w->absmax = malloc((size_t)nf4_n_blocks(n, w->blocksize) * sizeof(float));
    if (!w->packed || !w->absmax) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    int64_t pieces = (n + GEN_CHUNK - 1) / GEN_CHUNK;
    int rc = FINCH_OK;
    #pragma omp parallel
    {
        float *buf = malloc((size_t)GEN_CHUNK * sizeof(float));
        #pragma omp for schedule(dynamic)
        for (int64_t p = 0; p < pieces; p++) {
            int64_t start = p * GEN_CHUNK, len = n - start < GEN_CHUNK ? n - start : GEN_CHUNK;
            if (!buf) {
                rc = FINCH_ERR_OUT_OF_MEMORY;
                continue;
            }
            fill_random(buf, len, seed * 1000003u + (uint64_t)p, std);
            if (nf4_quantize(buf, len, w->blocksize, w->code, w->packed + start / 2, w->absmax + start / w->blocksize))
                rc = FINCH_ERR_INVALID_ARGUMENT;
        }
        free(buf);
    }
    return rc ? finch_error(rc, "generating a random 4-bit weight") : FINCH_OK;
}

/* A random dense bf16 tensor (or all `fill` when std == 0). */
static uint16_t *random_bf16(int64_t n, uint64_t seed, float std, float fill)
{
    uint16_t *h = malloc((size_t)n * sizeof *h);
    if (!h) return NULL;
    int64_t pieces = (n + GEN_CHUNK - 1) / GEN_CHUNK;
    #pragma omp parallel
    {
        float *buf = malloc((size_t)GEN_CHUNK * sizeof(float));
        #pragma omp for schedule(dynamic)
        for (int64_t p = 0; p < pieces; p++) {
            int64_t start = p * GEN_CHUNK, len = n - start < GEN_CHUNK ? n - start : GEN_CHUNK;
            if (!buf) continue;
            if (std > 0) fill_random(buf, len, seed * 1000003u + (uint64_t)p, std);
            for (int64_t i = 0; i < len; i++) h[start + i] = finch_f32_to_bf16(std > 0 ? buf[i] : fill);
        }
        free(buf);
    }
    return h;
}

static int write_config(const args *a, const char *dir)
{
    char path[1200];
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "wb");
    if (!f) return finch_error(FINCH_ERR_IO, "cannot create %s: %s", path, strerror(errno));
    const shape *s = &a->s;
    fprintf(f,
            "{\n  \"architectures\": [\"LlamaForCausalLM\"],\n  \"model_type\": \"llama\",\n  \"hidden_size\": %lld,\n"
            "  \"intermediate_size\": %lld,\n  \"num_hidden_layers\": %lld,\n  \"num_attention_heads\": %lld,\n"
            "  \"num_key_value_heads\": %lld,\n  \"head_dim\": %lld,\n  \"vocab_size\": %lld,\n"
            "  \"max_position_embeddings\": %lld,\n  \"rms_norm_eps\": 1e-05,\n  \"hidden_act\": \"silu\",\n"
            "  \"tie_word_embeddings\": false,\n  \"attention_bias\": false,\n  \"mlp_bias\": false,\n"
            "  \"rope_theta\": 500000.0,\n  \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0, \"low_freq_factor\": 1.0,"
            " \"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 8192},\n  \"torch_dtype\": \"bfloat16\"",
            (long long)s->hidden, (long long)s->inter, (long long)s->layers, (long long)s->heads, (long long)s->kv_heads,
            (long long)s->head_dim, (long long)s->vocab, (long long)(a->seq > 131072 ? a->seq : 131072)); /* Llama 3.1's, or longer */
    if (!strcmp(a->mode, "qlora"))
        fprintf(f, ",\n  \"quantization_config\": {\"quant_method\": \"bitsandbytes\", \"load_in_4bit\": true, "
                   "\"bnb_4bit_quant_type\": \"nf4\", \"bnb_4bit_use_double_quant\": false, \"bnb_4bit_compute_dtype\": \"bfloat16\"}");
    fprintf(f, "\n}\n");
    return fclose(f) ? finch_error(FINCH_ERR_IO, "cannot write %s", path) : FINCH_OK;
}

typedef struct tensor_spec {
    char name[128];
    int64_t rows, cols;      /* cols 0: a 1-D norm */
    int linear;
} tensor_spec;

static int list_tensors(const shape *s, tensor_spec **out)
{
    int n = 0, cap = 3 + (int)s->layers * 9;
    tensor_spec *t = calloc((size_t)cap, sizeof *t);
    if (!t) return -1;
#define ADD(r, c, lin, ...) (snprintf(t[n].name, sizeof t[n].name, __VA_ARGS__), t[n].rows = (r), t[n].cols = (c), t[n].linear = (lin), n++)
    int64_t h = s->hidden, q = s->heads * s->head_dim, kv = s->kv_heads * s->head_dim;
    ADD(s->vocab, h, 0, "model.embed_tokens.weight");
    for (int64_t l = 0; l < s->layers; l++) {
        ADD(h, 0, 0, "model.layers.%lld.input_layernorm.weight", (long long)l);
        ADD(h, 0, 0, "model.layers.%lld.post_attention_layernorm.weight", (long long)l);
        ADD(q, h, 1, "model.layers.%lld.self_attn.q_proj.weight", (long long)l);
        ADD(kv, h, 1, "model.layers.%lld.self_attn.k_proj.weight", (long long)l);
        ADD(kv, h, 1, "model.layers.%lld.self_attn.v_proj.weight", (long long)l);
        ADD(h, q, 1, "model.layers.%lld.self_attn.o_proj.weight", (long long)l);
        ADD(s->inter, h, 1, "model.layers.%lld.mlp.gate_proj.weight", (long long)l);
        ADD(s->inter, h, 1, "model.layers.%lld.mlp.up_proj.weight", (long long)l);
        ADD(h, s->inter, 1, "model.layers.%lld.mlp.down_proj.weight", (long long)l);
    }
    ADD(h, 0, 0, "model.norm.weight");
    ADD(s->vocab, h, 0, "lm_head.weight");
#undef ADD
    *out = t;
    return n;
}

/* Writes dir/config.json and dir/model.safetensors (bnb-4bit linears in qlora mode). */
static int write_checkpoint(const args *a, const char *dir)
{
    if (mkdir(dir, 0755) && errno != EEXIST) return finch_error(FINCH_ERR_IO, "cannot create %s: %s", dir, strerror(errno));
    int rc = write_config(a, dir);
    if (rc) return rc;
    tensor_spec *t = NULL;
    int n = list_tensors(&a->s, &t), quant = !strcmp(a->mode, "qlora");
    if (n < 0) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    nf4_weight *w = calloc((size_t)n, sizeof *w);
    bnb_named_weight *nw = calloc((size_t)n, sizeof *nw);
    st_entry *dense = calloc((size_t)n, sizeof *dense);
    int n_w = 0, n_d = 0;
    if (!w || !nw || !dense) rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    for (int i = 0; i < n && !rc; i++) {
        float std = t[i].cols ? 0.02f : 0.0f;
        if (quant && t[i].linear) {
            rc = random_nf4(t[i].rows, t[i].cols, (uint64_t)i + 1, std, &w[n_w]);
            nw[n_w].name = t[i].name;
            nw[n_w].w = &w[n_w];
            n_w++;
        } else {
            uint16_t *v = random_bf16(t[i].rows * (t[i].cols ? t[i].cols : 1), (uint64_t)i + 1, std, 1.0f);
            if (!v) rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
            dense[n_d] = (st_entry){t[i].name, ST_BF16, t[i].cols ? 2 : 1, {t[i].rows, t[i].cols}, v};
            n_d++;
        }
    }
    char path[1200];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (!rc) rc = bnb_write(path, nw, n_w, dense, n_d);
    for (int i = 0; i < n_w; i++) nf4_weight_free(&w[i]);
    for (int i = 0; i < n_d; i++) free((void *)dense[i].data);
    free(w);
    free(nw);
    free(dense);
    free(t);
    return rc;
}

/* ---- main ------------------------------------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f, "usage: bench_qlora [--shape 8b|8b-eighth|tiny] [--layers N] [--seq T] [--batch B] [--steps N] [--rank R]\n"
               "                   [--mode qlora|lora] [--backend NAME] [--dir SCRATCH] [--reuse] [--offload]\n"
               "                   [--optim none|adamw|adamw8bit]\n");
}

static int parse(int argc, char **argv, args *a)
{
    memset(a, 0, sizeof *a);
    a->shape_name = "8b";
    a->mode = "qlora";
    a->backend = "auto";
    a->seq = 2048;
    a->batch = 1;
    a->steps = 3;
    a->rank = 16;
    a->optim = "adamw";
    int64_t layers = 0;
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int64_t *num = !strcmp(s, "--layers") ? &layers : !strcmp(s, "--seq") ? &a->seq : !strcmp(s, "--batch") ? &a->batch
                     : !strcmp(s, "--steps") ? &a->steps : !strcmp(s, "--rank") ? &a->rank : NULL;
        const char **str = !strcmp(s, "--shape") ? &a->shape_name : !strcmp(s, "--mode") ? &a->mode
                         : !strcmp(s, "--backend") ? &a->backend : !strcmp(s, "--dir") ? &a->dir
                         : !strcmp(s, "--optim") ? &a->optim : NULL;
        if (!strcmp(s, "--reuse")) {
            a->reuse = 1;
        } else if (!strcmp(s, "--offload")) {
            a->offload = 1;
        } else if ((num || str) && v) {
            if (num) *num = atoll(v);
            else *str = v;
            i++;
        } else {
            usage(stderr);
            return 0;
        }
    }
    if (!strcmp(a->shape_name, "8b")) a->s = (shape){4096, 32, 32, 8, 128, 14336, 128256};
    else if (!strcmp(a->shape_name, "tiny")) a->s = (shape){64, 2, 4, 2, 16, 128, 320};
    /* 8B's proportions at an eighth of its width (head_dim 128, 4:1 GQA, intermediate 3.5x hidden):
     * per-token activation memory is 1/8 of 8B's, measurable on a CPU. */
    else if (!strcmp(a->shape_name, "8b-eighth")) a->s = (shape){512, 32, 4, 1, 128, 1792, 16032};
    else {
        usage(stderr);
        return 0;
    }
    if (layers > 0) a->s.layers = layers;
    if (strcmp(a->mode, "qlora") && strcmp(a->mode, "lora")) {
        usage(stderr);
        return 0;
    }
    finch_optimizer opt;
    if (strcmp(a->optim, "none") && finch_optimizer_parse(a->optim, &opt)) {
        usage(stderr);
        return 0;
    }
    if (a->seq < 2 || a->batch < 1 || a->steps < 0 || a->rank < 1) {
        fprintf(stderr, "bench_qlora: --seq >= 2, --steps >= 0, --batch and --rank >= 1\n");
        return 0;
    }
    return 1;
}

static int fail(const char *what)
{
    fprintf(stderr, "bench_qlora: %s: %s\n", what, finch_last_error());
    return 1;
}

int main(int argc, char **argv)
{
    args a;
    if (!parse(argc, argv, &a)) return 2;
    const shape *s = &a.s;
    char dir[1024];
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/finch_bench_%s_%s_%lldl", a.dir ? a.dir : tmp && *tmp ? tmp : "/tmp", a.shape_name, a.mode,
             (long long)s->layers);
    int64_t lin_params = s->layers * (s->hidden * (2 * s->heads + 2 * s->kv_heads) * s->head_dim + 3 * s->hidden * s->inter);
    int64_t params = lin_params + 2 * s->vocab * s->hidden + (2 * s->layers + 1) * s->hidden;
    printf("shape %s: hidden %lld, layers %lld, heads %lld/%lld kv, head_dim %lld, intermediate %lld, vocab %lld: %.3g params (%.3g in linear layers)\n",
           a.shape_name, (long long)s->hidden, (long long)s->layers, (long long)s->heads, (long long)s->kv_heads,
           (long long)s->head_dim, (long long)s->inter, (long long)s->vocab, (double)params, (double)lin_params);
    printf("mode %s: %s, bf16 compute, gradient checkpointing%s, LoRA r=%lld all-linear, batch %lld x %lld tokens, %d threads on the host\n",
           a.mode, strcmp(a.mode, "qlora") ? "bf16 weights" : "NF4 linear weights (bnb-4bit checkpoint)",
           a.offload ? " (layer inputs offloaded to host memory)" : "", (long long)a.rank,
           (long long)a.batch, (long long)a.seq, omp_get_max_threads());

    struct stat st;
    char path[1200];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (!(a.reuse && !stat(path, &st))) {
        double t0 = bench_now();
        if (write_checkpoint(&a, dir)) return fail("writing the random checkpoint");
        stat(path, &st);
        printf("checkpoint: %s, %.1f MiB, written in %.1f s\n", dir, mib((double)st.st_size), bench_now() - t0);
    } else {
        printf("checkpoint: %s, %.1f MiB (reused)\n", dir, mib((double)st.st_size));
    }

    finch_runtime *rt = NULL;
    if (finch_runtime_open(a.backend, &rt)) return fail("opening the backend");
    finch_device_report dev;
    finch_runtime_active(rt, &dev);
    printf("device: %s %d: %s, %.1f GiB\n", dev.backend, dev.index, dev.name, gib((double)dev.total_memory));
    bench_count_device_memory(rt);

    finch_load_options o = finch_load_options_default();
    o.compute_dtype = FINCH_DTYPE_BF16;
    o.gradient_checkpointing = 1;
    o.offload_activations = a.offload;
    finch_model *m = NULL;
    double t0 = bench_now();
    if (finch_model_load(rt, dir, &o, &m)) return fail("loading the model");
    uint64_t weights = bench_device_live();
    printf("load: %.1f s; device memory for the weights: %.1f MiB (load peak %.1f MiB)\n", bench_now() - t0, mib((double)weights),
           mib((double)bench_device_peak()));

    int64_t n = a.batch * a.seq;
    int32_t *ids = malloc((size_t)n * sizeof *ids);
    if (!ids) return fail("allocating the batch");
    uint64_t r = 12345;
    for (int64_t i = 0; i < n; i++) {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        ids[i] = (int32_t)((r >> 33) % (uint64_t)s->vocab);
    }
    int use_trainer = strcmp(a.optim, "none") != 0;
    finch_trainer *trainer = NULL;
    finch_train_data *data = NULL;
    finch_batch b = {.batch = a.batch, .seq_len = a.seq, .input_ids = ids};
    if (use_trainer) {
        finch_optimizer opt;
        finch_optimizer_parse(a.optim, &opt);
        if (bench_trainer_open(m, ids, a.batch, a.seq, (int)a.rank, opt, 1 + a.steps, &trainer, &data))
            return fail("opening the trainer");
    } else {
        finch_lora_config lc = finch_lora_config_default();
        lc.r = (int)a.rank;
        lc.alpha = (float)a.rank;
        lc.target_modules = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj";
        if (finch_lora_attach(m, &lc)) return fail("attaching LoRA");
    }
    finch_model_info info;
    finch_model_info_get(m, &info);
    printf("LoRA: %lld trainable parameters; %s\n", (long long)info.n_trainable,
           use_trainer ? "whole training steps (finch_trainer)" : "forward + backward only");

    finch_step_result res;
    finch_train_progress p;
    memset(&p, 0, sizeof p);
    t0 = bench_now();
    if (use_trainer ? finch_trainer_step(trainer, &p) : finch_forward_backward(m, &b, NULL, &res)) return fail("warm-up step");
    double warm_s = bench_now() - t0;
    printf("warm-up step: %.2f s, loss %.4f, device peak so far %.3f GiB\n", warm_s, use_trainer ? p.loss : res.loss,
           gib((double)bench_device_peak()));
    uint64_t overall_peak = bench_device_peak();
    double total = 0;
    /* --steps 0 (a step that takes minutes, e.g. the longest context): the warm-up step is the one measured. */
    if (a.steps == 0) total = warm_s;
    for (int64_t i = 0; i < a.steps; i++) {
        if (!use_trainer && finch_zero_grads(m)) return fail("clearing gradients");
        t0 = bench_now();
        if (use_trainer ? finch_trainer_step(trainer, &p) : finch_forward_backward(m, &b, NULL, &res)) return fail("training step");
        double dt = bench_now() - t0;
        total += dt;
        printf("step %lld: %.3f s, loss %.4f, %.0f tokens/s\n", (long long)(i + 1), dt, use_trainer ? p.loss : res.loss,
               (double)n / dt);
        if (bench_device_peak() > overall_peak) overall_peak = bench_device_peak();
        if (i == 0 && a.steps > 1) bench_device_reset_peak(); /* the arena is one buffer from the first timed step on */
    }
    uint64_t free_b = 0, total_b = 0;
    const finch_backend *be = &rt->backend;
    int have_info = be->api->memory_info(be->dev, &free_b, &total_b) == FINCH_OK;
    double steady_gib = a.steps > 1 ? gib((double)bench_device_peak()) : -1.0; /* -1: not measured (one step) */
    printf("RESULT shape=%s mode=%s offload=%d optim=%s layers=%lld B=%lld T=%lld r=%lld tokens_per_s=%.1f peak_alloc_gib=%.3f "
           "steady_peak_gib=%.3f weights_gib=%.3f",
           a.shape_name, a.mode, a.offload, a.optim, (long long)s->layers, (long long)a.batch, (long long)a.seq, (long long)a.rank,
           (double)(n * (a.steps ? a.steps : 1)) / total, gib((double)overall_peak), steady_gib, gib((double)weights));
    if (have_info) printf(" device_used_gib=%.3f device_total_gib=%.3f", gib((double)(total_b - free_b)), gib((double)total_b));
    printf(" device=\"%s\"\n", dev.name);
    free(ids);
    finch_trainer_close(trainer);
    finch_train_data_free(data);
    finch_model_free(m);
    finch_runtime_close(rt);
    return 0;
}
