/* finch bench train: LoRA training-step throughput and peak device memory on random-weight Llama
 * models, in the configurations of ../shared/bench/hf_peft_baseline.py (Hugging Face + PEFT), so the
 * two can run on the same card in the same call and their JSON lines be compared field by field.
 *
 *   finch bench train [--config llama1b-gc|llama1b|llama8b-gc|llama8b-8k|all] [--shape full|tiny]
 *                     [--backend NAME] [--warmup N] [--steps N] [--optim adamw|adamw8bit] [--dir DIR]
 *                     [--batch N] [--seq N] [--mlp-chunk N] [--offload on|off]
 *
 * Each configuration: a Llama model with random bf16 weights (llama1b: hidden 2048, intermediate
 * 8192, 16 layers, 32 heads, 8 kv heads, vocab 128256, tied embeddings; llama8b: 4096 / 14336 / 32 /
 * 32 / 8 / 128256, untied), LoRA r=16 alpha=16 on q,k,v,o,gate,up,down, AdamW (lr 1e-4, weight decay
 * 0.01, no gradient clipping, as torch.optim.AdamW in the baseline), the same random B x T token
 * batch every step (labels = inputs), --warmup steps (3) and then --steps (8) timed optimizer steps
 * (forward, backward, optimizer). --batch/--seq replace the configuration's B and T (a smaller step for a
 * slower backend; the JSON line then no longer pairs with the baseline's). --mlp-chunk: tokens per MLP
 * chunk under gradient checkpointing (without it, the library's choice; a large N: no chunks). --offload on: with
 * checkpointing, the layer inputs wait for the backward in page-locked host memory (finch_load_options'
 * offload_activations), copied out and back beside the compute. --shape tiny keeps the configurations but shrinks the model and
 * T so the command runs anywhere (the CPU backend included).
 *
 * The checkpoint is written to a scratch folder (--dir, else /dev/shm, $TMPDIR or /tmp) once per
 * model shape and loaded like any model; configurations of one shape share the loaded model (the
 * adapter is made again for each).
 *
 * Printed per configuration, one JSON object a line, with the baseline's fields: name, B, T, gc,
 * params_B, step_s, tokens_per_s, peak_GiB (the most bytes finch held on the device during the
 * timed steps: its buffers, as torch's max_memory_allocated counts its own), weights_GiB (finch's
 * device bytes after loading the model), model_TFLOPs (the baseline's formula), loss (of the last
 * step); plus device_used_GiB (total - free after the steps, driver context and plugin pools included). */
#include "core/model.h"
#include "core/runtime.h"
#include "finch/finch.h"
#include "finch/train.h"
#include "samples/finch/bench_model.h"
#include "samples/finch/commands.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct bench_config {
    const char *id, *name;          /* --config id; "name" as the baseline prints it */
    int shape;                      /* index into shapes[] */
    int64_t batch, seq;
    int gc;
} bench_config;

static const bench_shape shapes[] = {
    {2048, 16, 32, 8, 8192, 128256, 1},     /* Llama 3.2 1B */
    {4096, 32, 32, 8, 14336, 128256, 0},    /* Llama 3.1 8B */
};
static const bench_shape tiny = {256, 2, 8, 2, 688, 4096, 0};

/* The baseline's order; configurations of one shape are adjacent, so each model is written once. */
static const bench_config configs[] = {
    {"llama1b-gc", "llama1b", 0, 4, 2048, 1},
    {"llama1b", "llama1b", 0, 4, 2048, 0},
    {"llama8b-gc", "llama8b", 1, 2, 2048, 1},
    {"llama8b-8k", "llama8b", 1, 1, 8192, 1},
};
enum { N_CONFIGS = sizeof configs / sizeof configs[0] };

static double gib(double bytes) { return bytes / (1024.0 * 1024.0 * 1024.0); }

static void usage(FILE *f)
{
    fprintf(f, "usage: finch bench train [--config llama1b-gc|llama1b|llama8b-gc|llama8b-8k|all] [--shape full|tiny]\n"
               "                         [--backend NAME] [--warmup N] [--steps N] [--optim adamw|adamw8bit] [--dir DIR]\n"
               "                         [--batch N] [--seq N] [--mlp-chunk N] [--offload on|off]\n");
}

typedef struct run_options {
    int tiny;
    int64_t warmup, steps;
    finch_optimizer optim;
    int64_t batch, seq;             /* 0: the configuration's */
    int64_t mlp_chunk;              /* 0: the library's choice */
    int offload;                    /* layer inputs in host memory under checkpointing */
} run_options;

/* One configuration on a loaded model (no adapter attached); prints its JSON line. */
static int run_config(finch_runtime *rt, finch_model *m, const bench_config *c, const run_options *o, uint64_t weight_bytes)
{
    int64_t B = o->batch ? o->batch : c->batch, T = o->seq ? o->seq : o->tiny ? (c->seq > 2048 ? 256 : 64) : c->seq;
    finch_model_info info;
    finch_model_info_get(m, &info);
    m->gradient_checkpointing = c->gc;
    m->mlp_chunk_tokens = o->mlp_chunk;
    m->offload_activations = o->offload && c->gc;

    /* B rows of random tokens; labels = inputs, as the baseline's labels=ids. */
    int32_t *ids = malloc((size_t)(B * T) * sizeof *ids);
    if (!ids) {
        fprintf(stderr, "finch bench train: out of host memory\n");
        return 1;
    }
    uint64_t x = 12345;
    for (int64_t i = 0; i < B * T; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        ids[i] = (int32_t)((x >> 33) % (uint64_t)info.vocab_size);
    }
    finch_train_data *data = NULL;
    finch_trainer *t = NULL;
    int rc = bench_trainer_open(m, ids, B, T, 16, o->optim, o->warmup + o->steps, &t, &data);
    free(ids);
    finch_train_progress p;
    memset(&p, 0, sizeof p);
    for (int64_t i = 0; !rc && i < o->warmup; i++) rc = finch_trainer_step(t, &p);
    const finch_backend *be = &rt->backend;
    if (!rc) rc = be->api->synchronize(be->dev, be->stream);
    bench_device_reset_peak();
    double t0 = bench_now();
    for (int64_t i = 0; !rc && i < o->steps; i++) rc = finch_trainer_step(t, &p);
    if (!rc) rc = be->api->synchronize(be->dev, be->stream);
    double dt = (bench_now() - t0) / (double)o->steps;
    if (rc) {
        fprintf(stderr, "finch bench train: %s B%lld T%lld gc %d: %s\n", c->id, (long long)B, (long long)T, c->gc, finch_last_error());
        printf("FAIL %s (%lld, %lld, %s) %s\n", c->name, (long long)B, (long long)T, c->gc ? "True" : "False", finch_last_error());
    } else {
        finch_model_info_get(m, &info);
        uint64_t free_b = 0, total_b = 0;
        be->api->memory_info(be->dev, &free_b, &total_b);
        double nparam = (double)info.n_params + (double)info.n_trainable, hd = (double)info.head_dim;
        double attn_f = 2.0 * 2.0 * (double)B * (double)T * (double)T * (double)info.n_heads * hd * (double)info.n_layers / 2.0;
        double model_flops = 4.0 * nparam * (double)B * (double)T + attn_f * 3.5;
        printf("{\"name\": \"%s\", \"B\": %lld, \"T\": %lld, \"gc\": %s, \"params_B\": %.6f, \"step_s\": %.6f, \"tokens_per_s\": %.2f, "
               "\"peak_GiB\": %.4f, \"weights_GiB\": %.4f, \"model_TFLOPs\": %.3f, \"loss\": %.6f, \"device_used_GiB\": %.4f, "
               "\"optim\": \"%s\", \"shape\": \"%s\", \"offload\": %s}\n",
               c->name, (long long)B, (long long)T, c->gc ? "true" : "false", nparam / 1e9, dt, (double)(B * T) / dt,
               gib((double)bench_device_peak()), gib((double)weight_bytes), model_flops / dt / 1e12, p.loss,
               gib((double)(total_b - free_b)), finch_optimizer_name(o->optim), o->tiny ? "tiny" : "full",
               m->offload_activations ? "true" : "false");
        fflush(stdout);
    }
    finch_trainer_close(t);
    finch_train_data_free(data);
    if (finch_lora_unload(m) && !rc) {
        fprintf(stderr, "finch bench train: removing the adapter: %s\n", finch_last_error());
        rc = 1;
    }
    return rc ? 1 : 0;
}

static int parse_i64(const char *opt, const char *v, int64_t *out)
{
    char *end = NULL;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno || end == v || *end || x < 1) {
        fprintf(stderr, "finch bench train: %s needs a positive integer\n", opt);
        return 1;
    }
    *out = x;
    return 0;
}

int finch_cmd_bench_train(int argc, char **argv)
{
    const char *config = "all", *backend = "auto", *dir_opt = NULL;
    run_options o = {0, 3, 8, FINCH_OPTIM_ADAMW, 0, 0, 0, 0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "finch bench train: unknown or incomplete argument '%s'\n", a);
            usage(stderr);
            return 2;
        }
        const char *v = argv[++i];
        if (!strcmp(a, "--config")) config = v;
        else if (!strcmp(a, "--backend")) backend = v;
        else if (!strcmp(a, "--dir")) dir_opt = v;
        else if (!strcmp(a, "--warmup")) {
            if (parse_i64(a, v, &o.warmup)) return 2;
        } else if (!strcmp(a, "--steps")) {
            if (parse_i64(a, v, &o.steps)) return 2;
        } else if (!strcmp(a, "--batch")) {
            if (parse_i64(a, v, &o.batch)) return 2;
        } else if (!strcmp(a, "--seq")) {
            if (parse_i64(a, v, &o.seq)) return 2;
        } else if (!strcmp(a, "--mlp-chunk")) {
            if (parse_i64(a, v, &o.mlp_chunk)) return 2;
        } else if (!strcmp(a, "--offload") && (!strcmp(v, "on") || !strcmp(v, "off"))) {
            o.offload = !strcmp(v, "on");
        } else if (!strcmp(a, "--shape") && (!strcmp(v, "full") || !strcmp(v, "tiny"))) {
            o.tiny = !strcmp(v, "tiny");
        } else if (!strcmp(a, "--optim")) {
            if (finch_optimizer_parse(v, &o.optim)) {
                fprintf(stderr, "finch bench train: %s\n", finch_last_error());
                return 2;
            }
        } else {
            fprintf(stderr, "finch bench train: unknown argument '%s %s'\n", a, v);
            usage(stderr);
            return 2;
        }
    }
    int chosen[N_CONFIGS] = {0}, any = 0;
    for (int i = 0; i < N_CONFIGS; i++) any |= chosen[i] = !strcmp(config, "all") || !strcmp(config, configs[i].id);
    if (!any) {
        fprintf(stderr, "finch bench train: --config is llama1b-gc, llama1b, llama8b-gc, llama8b-8k or all\n");
        return 2;
    }

    finch_runtime *rt = NULL;
    if (finch_runtime_open(backend, &rt)) {
        fprintf(stderr, "finch bench train: %s\n", finch_last_error());
        return 1;
    }
    finch_device_report dev;
    finch_runtime_active(rt, &dev);
    printf("device: %s %d: %s\n", dev.backend, dev.index, dev.name);
    fflush(stdout);
    bench_count_device_memory(rt);
    int bf16 = dev.kind != FINCH_DEVICE_CPU, failures = 0;
    for (int first = 0; first < N_CONFIGS;) {
        int last = first;
        while (last + 1 < N_CONFIGS && configs[last + 1].shape == configs[first].shape) last++;
        int wanted = 0;
        for (int i = first; i <= last; i++) wanted |= chosen[i];
        if (!wanted) {
            first = last + 1;
            continue;
        }
        const bench_shape *s = o.tiny ? &tiny : &shapes[configs[first].shape];
        bench_shape ts = *s;
        ts.tied = shapes[configs[first].shape].tied;
        char dir[4096];
        double file_bytes = 0, t0 = bench_now();
        finch_model *m = NULL;
        int rc = bench_make_dir(dir_opt, bench_weight_bytes(&ts, bf16 ? 2 : 4), "train", dir, sizeof dir);
        if (!rc) {
            rc = bench_write_llama(dir, &ts, bf16, &file_bytes);
            if (!rc) printf("model %s: %.2f GB of %s weights written in %.1f s\n", configs[first].name, file_bytes / 1e9,
                            bf16 ? "bf16" : "f32", bench_now() - t0);
            finch_load_options lo = finch_load_options_default();
            lo.compute_dtype = bf16 ? FINCH_DTYPE_BF16 : FINCH_DTYPE_F32;
            t0 = bench_now();
            if (!rc && finch_model_load(rt, dir, &lo, &m)) {
                fprintf(stderr, "finch bench train: loading: %s\n", finch_last_error());
                rc = 1;
            }
            bench_remove_dir(dir);
        }
        if (!rc) printf("loaded in %.1f s\n", bench_now() - t0);
        fflush(stdout);
        uint64_t weights = bench_device_live();
        for (int i = first; i <= last; i++)
            if (chosen[i]) failures += rc ? 1 : run_config(rt, m, &configs[i], &o, weights);
        finch_model_free(m);
        first = last + 1;
    }
    finch_runtime_close(rt);
    return failures ? 1 : 0;
}
