/* finch bench decode: batch-1 decode speed of a Llama-shaped model with random weights, against the
 * memory-bandwidth roofline.
 *
 *   finch bench decode [--shape 8b|1b|tiny] [--hidden N --layers N --heads N --kv-heads N
 *                      --intermediate N --vocab N] [--dtype bf16|f32] [--backend NAME]
 *                      [--prompt-tokens N] [--tokens N] [--dir DIR] [--keep] [--model DIR] [--4bit]
 *
 * The model (config.json + model.safetensors with random values) is written to DIR (default: /dev/shm
 * when it has room, else $TMPDIR or /tmp), loaded like any model and, unless --keep, deleted again.
 * --model DIR uses a checkpoint already there instead (one --keep left, say; its config.json gives
 * the shape). --4bit loads the decoder's linear weights as NF4 (load_in_4bit, blocks of 64, f32
 * absmax on the device): their bytes in the roofline are then 0.5 + 4/64 per weight.
 *
 * Roofline: a decode step reads every weight once (the embedding table only one row), so at batch 1
 * a step cannot take less than weight bytes / memory bandwidth. The bandwidth is measured with the
 * plugin's copy entry on the same device: a copy of N bytes moves 2N (read + write). Reported: the
 * measured tokens/s of session appends (one token each, logits read back) and of finch_generate
 * (greedy, with sampling on the host), and their fraction of roofline tokens/s. */
#include "core/runtime.h"
#include "finch/finch.h"
#include "finch/generate.h"
#include "samples/finch/bench_model.h"
#include "samples/finch/commands.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct {
    const char *name;
    bench_shape s;
} shapes[] = {
    {"8b", {4096, 32, 32, 8, 14336, 128256, 0}},   /* Llama 3 8B */
    {"1b", {2048, 16, 32, 8, 8192, 128256, 0}},    /* Llama 3.2 1B, untied */
    {"tiny", {256, 4, 8, 2, 688, 4096, 0}},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: finch bench decode [--shape 8b|1b|tiny] [--hidden N --layers N --heads N --kv-heads N --intermediate N --vocab N]\n"
               "                          [--dtype bf16|f32] [--backend NAME] [--prompt-tokens N] [--tokens N] [--dir DIR] [--keep]\n"
               "                          [--model DIR] [--4bit]\n");
}

/* Device copy bandwidth in bytes/s (read + write counted), from copies of `bytes` on the runtime's device. */
static int copy_bandwidth(finch_runtime *rt, size_t bytes, double *bw)
{
    const finch_backend *be = &rt->backend;
    finch_plugin_buffer *a = NULL, *b = NULL;
    if (be->api->alloc(be->dev, bytes, &a) || be->api->alloc(be->dev, bytes, &b)) {
        fprintf(stderr, "finch bench decode: cannot allocate 2 x %zu bytes: %s\n", bytes, be->api->last_error());
        if (a) be->api->free(be->dev, a);
        return 1;
    }
    finch_dptr da = {a, 0}, db = {b, 0};
    int rc = be->api->fill(be->dev, be->stream, da, FINCH_DTYPE_F32, (int64_t)(bytes / 4), 1.0f) ||
             be->api->copy(be->dev, be->stream, db, da, bytes) || be->api->synchronize(be->dev, be->stream);
    int reps = 10;
    double t0 = bench_now();
    for (int i = 0; !rc && i < reps; i++) rc = be->api->copy(be->dev, be->stream, i % 2 ? da : db, i % 2 ? db : da, bytes);
    if (!rc) rc = be->api->synchronize(be->dev, be->stream);
    double t = bench_now() - t0;
    be->api->free(be->dev, a);
    be->api->free(be->dev, b);
    if (rc) {
        fprintf(stderr, "finch bench decode: copy: %s\n", be->api->last_error());
        return 1;
    }
    *bw = 2.0 * (double)bytes * reps / t;
    return 0;
}

static int parse_i64(const char *opt, const char *v, int64_t *out)
{
    char *end = NULL;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno || end == v || *end || x < 1) {
        fprintf(stderr, "finch bench decode: %s needs a positive integer\n", opt);
        return 1;
    }
    *out = x;
    return 0;
}

int finch_cmd_bench_decode(int argc, char **argv)
{
    bench_shape s = shapes[0].s;
    const char *backend = "auto", *dtype = "bf16", *dir_opt = NULL, *model_dir = NULL;
    int64_t prompt_tokens = 128, tokens = 64;
    int keep = 0, nf4 = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--keep") || !strcmp(a, "--4bit")) {
            *(a[2] == 'k' ? &keep : &nf4) = 1;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "finch bench decode: unknown or incomplete argument '%s'\n", a);
            usage(stderr);
            return 2;
        }
        const char *v = argv[++i];
        int64_t *num = !strcmp(a, "--hidden") ? &s.hidden : !strcmp(a, "--layers") ? &s.layers : !strcmp(a, "--heads") ? &s.heads
                     : !strcmp(a, "--kv-heads") ? &s.kv_heads : !strcmp(a, "--intermediate") ? &s.intermediate
                     : !strcmp(a, "--vocab") ? &s.vocab : !strcmp(a, "--prompt-tokens") ? &prompt_tokens
                     : !strcmp(a, "--tokens") ? &tokens : NULL;
        if (num) {
            if (parse_i64(a, v, num)) return 2;
        } else if (!strcmp(a, "--shape")) {
            size_t k = 0;
            while (k < sizeof shapes / sizeof shapes[0] && strcmp(shapes[k].name, v)) k++;
            if (k == sizeof shapes / sizeof shapes[0]) {
                fprintf(stderr, "finch bench decode: --shape is 8b, 1b or tiny\n");
                return 2;
            }
            s = shapes[k].s;
        } else if (!strcmp(a, "--dtype") && (!strcmp(v, "bf16") || !strcmp(v, "f32"))) {
            dtype = v;
        } else if (!strcmp(a, "--backend")) {
            backend = v;
        } else if (!strcmp(a, "--dir")) {
            dir_opt = v;
        } else if (!strcmp(a, "--model")) {
            model_dir = v;
        } else {
            fprintf(stderr, "finch bench decode: unknown argument '%s %s'\n", a, v);
            usage(stderr);
            return 2;
        }
    }
    if (s.hidden % s.heads || s.heads % s.kv_heads) {
        fprintf(stderr, "finch bench decode: hidden must divide by heads, heads by kv-heads\n");
        return 2;
    }
    int bf16 = !strcmp(dtype, "bf16");
    double est = bench_weight_bytes(&s, bf16 ? 2 : 4);

    finch_runtime *rt = NULL;
    if (finch_runtime_open(backend, &rt)) {
        fprintf(stderr, "finch bench decode: %s\n", finch_last_error());
        return 1;
    }
    finch_device_report dev;
    finch_runtime_active(rt, &dev);
    printf("device: %s %d: %s\n", dev.backend, dev.index, dev.name);
    size_t copy_bytes = (size_t)1 << 30;
    if (dev.free_memory && copy_bytes > dev.free_memory / 8) copy_bytes = (size_t)(dev.free_memory / 8) & ~(size_t)255;
    double bw = 0;
    if (copy_bandwidth(rt, copy_bytes, &bw)) {
        finch_runtime_close(rt);
        return 1;
    }
    printf("copy bandwidth: %.1f GB/s (copies of %.0f MiB, read + write counted)\n", bw / 1e9, copy_bytes / 1048576.0);

    char dir[4096];
    double t0 = bench_now(), file_bytes = 0;
    int rc = 0;
    if (model_dir) {
        snprintf(dir, sizeof dir, "%s", model_dir);
        keep = 1;
    } else if (bench_make_dir(dir_opt, est, "decode", dir, sizeof dir)) {
        finch_runtime_close(rt);
        return 1;
    } else {
        rc = bench_write_llama(dir, &s, bf16, &file_bytes);
        printf("model: %s, %.2f GB of %s weights written in %.1f s\n", dir, file_bytes / 1e9, dtype, bench_now() - t0);
    }
    finch_model *m = NULL;
    if (!rc) {
        finch_load_options lo = finch_load_options_default();
        lo.compute_dtype = bf16 ? FINCH_DTYPE_BF16 : FINCH_DTYPE_F32;
        lo.load_in_4bit = nf4;
        t0 = bench_now();
        if (finch_model_load(rt, dir, &lo, &m)) {
            fprintf(stderr, "finch bench decode: loading: %s\n", finch_last_error());
            rc = 1;
        } else {
            printf("loaded in %.1f s\n", bench_now() - t0);
        }
    }
    if (!keep) bench_remove_dir(dir);
    finch_model_info info;
    finch_session *ss = NULL;
    int32_t *ids = NULL;
    float *logits = NULL;
    if (!rc) {
        finch_model_info_get(m, &info);
        ids = malloc((size_t)(prompt_tokens + tokens + 16) * sizeof *ids);
        logits = malloc((size_t)info.vocab_size * sizeof *logits);
        if (!ids || !logits || finch_session_create(m, 1, &ss)) {
            fprintf(stderr, "finch bench decode: %s\n", finch_last_error());
            rc = 1;
        }
    }
    double step_s = 0, gen_s = 0;
    if (!rc) {
        uint64_t x = 12345;
        for (int64_t i = 0; i < prompt_tokens + tokens + 16; i++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            ids[i] = (int32_t)(3 + (x >> 33) % (uint64_t)(info.vocab_size - 3));
        }
        int seq = 0;
        const int32_t *p = ids;
        int64_t n = prompt_tokens, one = 1;
        t0 = bench_now();
        rc = finch_session_append(ss, 1, &seq, &p, &n, logits);
        printf("prefill: %lld tokens in %.3f s\n", (long long)prompt_tokens, bench_now() - t0);
        for (int64_t i = 0; !rc && i < 8 + tokens; i++) {
            if (i == 8) t0 = bench_now();
            p = ids + prompt_tokens + i;
            rc = finch_session_append(ss, 1, &seq, &p, &one, logits);
        }
        step_s = (bench_now() - t0) / (double)tokens;
        if (rc) fprintf(stderr, "finch bench decode: decode: %s\n", finch_last_error());
        finch_session_stats st;
        finch_session_stats_get(ss, &st);
        printf("passes: %lld, replayed from a recording: %lld\n", (long long)st.passes, (long long)st.replayed);
    }
    if (!rc) {
        finch_generate_options o = finch_generate_options_default();
        o.sampling.greedy = 1;
        o.max_new_tokens = tokens;
        o.use_model_eos = 0;
        const int32_t *p = ids;
        int64_t n = prompt_tokens;
        finch_generation g;
        finch_generation warm;
        int64_t small = 1;
        t0 = bench_now();
        rc = finch_generate(m, 1, &p, &small, &o, &warm); /* allocations and first-use costs */
        if (!rc) finch_generation_free(&warm);
        o.max_new_tokens = 1;
        double t_pre = bench_now();
        if (!rc) rc = finch_generate(m, 1, &p, &n, &o, &warm);
        t_pre = bench_now() - t_pre;
        if (!rc) finch_generation_free(&warm);
        o.max_new_tokens = tokens;
        t0 = bench_now();
        if (!rc) rc = finch_generate(m, 1, &p, &n, &o, &g);
        gen_s = bench_now() - t0 - t_pre; /* the prefill and first token subtracted */
        if (!rc) {
            gen_s /= (double)(g.tokens.len > 1 ? g.tokens.len - 1 : 1);
            finch_generation_free(&g);
        } else {
            fprintf(stderr, "finch bench decode: finch_generate: %s\n", finch_last_error());
        }
    }
    if (!rc) {
        /* Bytes a decode step must read: every weight but the embedding table (one row of it). */
        double es = bf16 ? 2 : 4, weight_bytes = ((double)info.n_params - (double)(info.vocab_size * info.hidden_size)) * es;
        if (nf4) { /* the decoder's linear weights: 4-bit codes and an f32 absmax per 64 */
            double H = (double)info.hidden_size, hd = (double)info.head_dim;
            double linear = (double)info.n_layers * (2 * H * info.n_heads * hd + 2 * H * info.n_kv_heads * hd + 3 * H * info.intermediate_size);
            weight_bytes -= linear * (es - (0.5 + 4.0 / 64));
        }
        double kv_bytes = 2.0 * info.n_layers * info.n_kv_heads * info.head_dim * es * (double)(prompt_tokens + 8 + tokens / 2);
        double roof = bw / weight_bytes;
        printf("params: %.3f B; bytes read per token: %.3f GB weights + %.4f GB cache (mean)\n", info.n_params / 1e9, weight_bytes / 1e9,
               kv_bytes / 1e9);
        printf("roofline: %.1f tokens/s (%.2f ms/token)\n", roof, 1e3 / roof);
        printf("decode (session appends): %.1f tokens/s (%.2f ms/token) = %.1f%% of roofline\n", 1.0 / step_s, step_s * 1e3,
               100.0 / step_s / roof);
        printf("decode (finch_generate, greedy): %.1f tokens/s = %.1f%% of roofline\n", 1.0 / gen_s, 100.0 / gen_s / roof);
        printf("{\"bench\": \"decode\", \"device\": \"%s\", \"backend\": \"%s\", \"dtype\": \"%s\", \"weights\": \"%s\", \"hidden\": %lld, \"layers\": %lld, "
               "\"params\": %lld, \"weight_bytes\": %.0f, \"copy_bw_gbs\": %.2f, \"roofline_tps\": %.2f, \"decode_tps\": %.2f, "
               "\"generate_tps\": %.2f, \"fraction_of_roofline\": %.4f, \"prompt_tokens\": %lld, \"tokens\": %lld}\n",
               dev.name, dev.backend, dtype, nf4 ? "nf4" : dtype, (long long)info.hidden_size, (long long)info.n_layers, (long long)info.n_params, weight_bytes,
               bw / 1e9, roof, 1.0 / step_s, 1.0 / gen_s, 1.0 / step_s / roof, (long long)prompt_tokens, (long long)tokens);
    }
    free(ids);
    free(logits);
    finch_session_free(ss);
    finch_model_free(m);
    finch_runtime_close(rt);
    return rc ? 1 : 0;
}
