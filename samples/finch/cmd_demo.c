/* finch demo: the whole pipeline in one command, on the best device finch finds. It makes a small
 * model (finch init), writes the synthetic chat task of samples/demo/ (a training set and held-out
 * prompts whose words never occur in training), asks the untrained model the held-out questions,
 * trains a LoRA adapter (loss curve in the terminal and in loss.svg), asks again, shows both
 * answers beside the expected ones, saves the PEFT adapter, exports a GGUF file and verifies it. */
#include "core/error.h"
#include "core/fsutil.h"
#include "finch/export.h"
#include "finch/generate.h"
#include "finch/train.h"
#include "samples/demo/task.h"
#include "samples/finch/commands.h"
#include "samples/finch/init_model.h"
#include "samples/finch/train_report.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct demo_args {
    const char *out, *backend;
    int64_t steps, hidden, layers, heldout_per_skill;
    int batch, threads, lora_r;
    double lr;
    uint64_t seed;
} demo_args;

static void usage(FILE *f)
{
    fprintf(f, "usage: finch demo [--out DIR] [--backend auto] [--steps 1500] [--quick] [--threads N]\n"
               "Makes a small model, trains a LoRA adapter on the synthetic chat task of samples/demo/, shows the loss\n"
               "curve and the answers to held-out prompts before and after training, saves the adapter and exports GGUF.\n"
               "  --out DIR        where everything goes (finch-demo); the demo's earlier outputs there are replaced\n"
               "  --backend NAME   auto (the best device), cpu, cuda, opencl:0, ...\n"
               "  --steps N        optimizer steps of %d conversations (1500)\n"
               "  --quick          a short run (20 steps) that exercises every stage, for tests\n"
               "  --threads N      CPU backend threads (0: all cores)\n"
               "  --hidden N --layers N --lora-r N --learning-rate X --batch-size N --seed N   the model and training\n",
            16);
}

static int parse(int argc, char **argv, demo_args *a)
{
    memset(a, 0, sizeof *a);
    a->out = "finch-demo", a->backend = "auto";
    a->steps = 1500, a->hidden = 64, a->layers = 2, a->heldout_per_skill = 6;
    a->batch = 16, a->lora_r = 16, a->lr = 5e-3, a->seed = 3407, a->threads = 0;
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(s, "--help") || !strcmp(s, "-h")) {
            usage(stdout);
            return -1;
        }
        if (!strcmp(s, "--quick")) {
            a->steps = 20;
            continue;
        }
        const char **str = !strcmp(s, "--out") ? &a->out : !strcmp(s, "--backend") ? &a->backend : NULL;
        int64_t *i64 = !strcmp(s, "--steps") ? &a->steps : !strcmp(s, "--hidden") ? &a->hidden : !strcmp(s, "--layers") ? &a->layers : NULL;
        int *num = !strcmp(s, "--threads") ? &a->threads : !strcmp(s, "--lora-r") ? &a->lora_r : !strcmp(s, "--batch-size") ? &a->batch : NULL;
        int is_lr = !strcmp(s, "--learning-rate"), is_seed = !strcmp(s, "--seed");
        if (!str && !i64 && !num && !is_lr && !is_seed) {
            fprintf(stderr, "finch demo: unknown argument '%s'\n", s);
            usage(stderr);
            return 2;
        }
        if (!v) {
            fprintf(stderr, "finch demo: %s needs a value\n", s);
            return 2;
        }
        i++;
        if (str) {
            *str = v;
            continue;
        }
        char *end = NULL;
        double x = strtod(v, &end);
        if (end == v || *end || !(x >= 0) || (!is_lr && x != (double)(int64_t)x) || (!is_lr && !is_seed && x > 1e9)) {
            fprintf(stderr, "finch demo: %s: '%s' is not a valid number\n", s, v);
            return 2;
        }
        if (i64) *i64 = (int64_t)x;
        else if (num) *num = (int)x;
        else if (is_lr) a->lr = x;
        else a->seed = strtoull(v, NULL, 10);
    }
    if (a->steps < 1 || a->batch < 1 || a->lora_r < 1 || !(a->lr > 0)) {
        fprintf(stderr, "finch demo: --steps, --batch-size, --lora-r and --learning-rate must be positive\n");
        return 2;
    }
    return 0;
}

static double seconds_since(const struct timespec *t0)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)(t.tv_sec - t0->tv_sec) + 1e-9 * (double)(t.tv_nsec - t0->tv_nsec);
}

static void path_in(char *dst, size_t size, const char *dir, const char *name) { snprintf(dst, size, "%s/%s", dir, name); }

/* ---- asking the held-out questions ----------------------------------------------------------- */

typedef struct heldout {
    int n;
    demo_example *ex;
    char **before, **after;   /* the model's answers */
} heldout;

/* Greedy answers of the model (with its adapter, if attached) to every held-out prompt. */
static int answer_all(finch_model *m, const finch_tokenizer *tok, const finch_chat_template *tpl, const heldout *h, char **answers)
{
    finch_tokens *ids = calloc((size_t)h->n, sizeof *ids);
    const int32_t **prompts = calloc((size_t)h->n, sizeof *prompts);
    int64_t *lens = calloc((size_t)h->n, sizeof *lens);
    finch_generation *gen = calloc((size_t)h->n, sizeof *gen);
    int rc = ids && prompts && lens && gen ? FINCH_OK : finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of memory");
    finch_chat_options co = finch_chat_options_for(tok);
    co.add_generation_prompt = 1;
    for (int i = 0; !rc && i < h->n; i++) {
        cJSON *msgs = cJSON_CreateArray(), *msg = cJSON_CreateObject();
        cJSON_AddStringToObject(msg, "role", "user");
        cJSON_AddStringToObject(msg, "content", h->ex[i].prompt);
        cJSON_AddItemToArray(msgs, msg);
        char *json = cJSON_PrintUnformatted(msgs), *text = NULL;
        cJSON_Delete(msgs);
        rc = json ? (int)finch_chat_template_render(tpl, json, &co, &text) : finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of memory");
        if (!rc) rc = finch_tokenizer_encode(tok, text, strlen(text), 0, &ids[i]);
        free(json);
        finch_data_free(text);
        prompts[i] = ids[i].ids;
        lens[i] = (int64_t)ids[i].len;
    }
    finch_generate_options o = finch_generate_options_default();
    o.sampling.greedy = 1;
    o.max_new_tokens = 2 * DEMO_TEXT_MAX / 8;
    o.tokenizer = tok;
    if (!rc) rc = finch_generate(m, h->n, prompts, lens, &o, gen);
    for (int i = 0; i < h->n; i++) {
        if (!rc) {
            free(answers[i]);
            answers[i] = strdup(gen[i].text ? gen[i].text : "");
            if (!answers[i]) rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of memory");
        }
        if (gen) finch_generation_free(&gen[i]);
        if (ids) finch_tokens_free(&ids[i]);
    }
    free(ids);
    free(prompts);
    free(lens);
    free(gen);
    return rc;
}

static int correct(const char *answer, const char *expected)
{
    while (*answer == ' ' || *answer == '\n') answer++;
    size_t n = strlen(answer);
    while (n && (answer[n - 1] == ' ' || answer[n - 1] == '\n')) n--;
    return n == strlen(expected) && !strncmp(answer, expected, n);
}

/* An answer as one short printable cell: control bytes as '.', non-ASCII as '?', cut at width. */
static void cell(char *dst, const char *s, int width)
{
    int n = 0;
    for (; s[n] && n < width; n++) {
        unsigned char c = (unsigned char)s[n];
        dst[n] = c < 0x20 ? '.' : c >= 0x7F ? '?' : (char)c;
    }
    if (s[n] && n >= 2) dst[n - 1] = '~';
    dst[n] = 0;
}

static void print_table(const heldout *h)
{
    int ok_before = 0, ok_after = 0;
    char p[32], e[32], b[32], a[32];
    printf("\n  %-22s %-24s %-18s %s\n", "held-out prompt", "expected", "before training", "after training");
    for (int i = 0; i < h->n; i++) {
        int cb = correct(h->before[i], h->ex[i].answer), ca = correct(h->after[i], h->ex[i].answer);
        ok_before += cb, ok_after += ca;
        cell(p, h->ex[i].prompt, 22), cell(e, h->ex[i].answer, 24), cell(b, h->before[i], 16), cell(a, h->after[i], 24);
        printf("  %-22s %-24s %s %-16s %s %s\n", p, e, cb ? "+" : "-", b, ca ? "+" : "-", a);
    }
    printf("\n  correct (+): %d of %d before training, %d of %d after\n", ok_before, h->n, ok_after, h->n);
    for (int s = 0; s < demo_task_skills(); s++) {
        int n = 0, ok = 0;
        for (int i = 0; i < h->n; i++)
            if (!strcmp(h->ex[i].skill, demo_task_skill_name(s))) n++, ok += correct(h->after[i], h->ex[i].answer);
        printf("%s%s %d/%d", s ? ", " : "  after training, by skill: ", demo_task_skill_name(s), ok, n);
    }
    printf("\n");
}

/* ---- the loss curve in the terminal --------------------------------------------------------- */

/* The losses averaged into at most 60 columns, drawn with the eight block characters. */
static void sparkline(const train_report *r)
{
    static const char *const blocks[8] = {"\u2581", "\u2582", "\u2583", "\u2584", "\u2585", "\u2586", "\u2587", "\u2588"};
    size_t n = r->n_loss, cols = n < 60 ? n : 60;
    if (!cols) return;
    double v[60], lo = 1e300, hi = -1e300;
    for (size_t c = 0; c < cols; c++) {
        size_t a = c * n / cols, b = (c + 1) * n / cols;
        double sum = 0;
        for (size_t i = a; i < b; i++) sum += r->loss[i].value;
        v[c] = sum / (double)(b - a);
        lo = v[c] < lo ? v[c] : lo, hi = v[c] > hi ? v[c] : hi;
    }
    printf("\n  loss  %.3f ", v[0]);
    for (size_t c = 0; c < cols; c++) fputs(blocks[hi > lo ? (int)((v[c] - lo) / (hi - lo) * 7.999) : 0], stdout);
    printf(" %.3f   (steps 1..%lld, each mark the mean of %zu steps)\n", v[cols - 1], (long long)r->loss[n - 1].step, (n + cols - 1) / cols);
}

/* ---- the pipeline ---------------------------------------------------------------------------- */

static int on_progress(const finch_train_progress *p, void *user)
{
    train_report_event(user, p);
    return 0;
}

static int fail(const char *what)
{
    fprintf(stderr, "finch demo: %s: %s\n", what, finch_last_error());
    return 1;
}

static int run(const demo_args *a)
{
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    char model_dir[4200], data_dir[4200], train_path[4300], heldout_path[4300], train_dir[4200], adapter_dir[4200], gguf_path[4200],
        modelfile[4200];
    path_in(model_dir, sizeof model_dir, a->out, "model");
    path_in(data_dir, sizeof data_dir, a->out, "data");
    path_in(train_path, sizeof train_path, data_dir, "train.jsonl");
    path_in(heldout_path, sizeof heldout_path, data_dir, "heldout.jsonl");
    path_in(train_dir, sizeof train_dir, a->out, "train");
    path_in(adapter_dir, sizeof adapter_dir, a->out, "adapter");
    path_in(gguf_path, sizeof gguf_path, a->out, "finch-demo.gguf");
    path_in(modelfile, sizeof modelfile, a->out, "finch-demo.Modelfile");

    finch_runtime *rt = NULL;
    finch_model *m = NULL;
    finch_tokenizer *tok = NULL;
    finch_chat_template *tpl = NULL;
    finch_train_data *data = NULL;
    finch_trainer *t = NULL;
    train_report rep;
    memset(&rep, 0, sizeof rep);
    heldout h = {0};
    int status = 1;

    /* 1. The device. */
    finch_runtime_options ro = {a->backend, NULL, a->threads};
    if (finch_runtime_open_ex(&ro, &rt)) return fail("opening the backend");
    finch_device_report dev;
    finch_runtime_active(rt, &dev);
    printf("finch demo: on %s:%d (%s)\n", dev.backend, dev.index, dev.name);

    /* 2. The task: training conversations and held-out prompts (their words never occur in training). */
    const char *const outputs[] = {model_dir, data_dir, train_dir, adapter_dir, gguf_path, modelfile};
    int rc = finch_mkdirs(a->out);
    for (size_t i = 0; !rc && i < sizeof outputs / sizeof outputs[0]; i++) rc = finch_remove_tree(outputs[i]);
    if (!rc) rc = finch_mkdirs(data_dir);
    int64_t n_train = a->steps * a->batch;
    h.n = (int)(a->heldout_per_skill * demo_task_skills());
    h.ex = calloc((size_t)h.n, sizeof *h.ex);
    h.before = calloc((size_t)h.n, sizeof *h.before);
    h.after = calloc((size_t)h.n, sizeof *h.after);
    if (!rc && (!h.ex || !h.before || !h.after)) rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of memory");
    for (int i = 0; !rc && i < h.n; i++) demo_task_heldout_example(a->seed, i, &h.ex[i]);
    if (!rc) rc = demo_task_write_jsonl(train_path, a->seed, n_train, 0);
    if (!rc) rc = demo_task_write_jsonl(heldout_path, a->seed, h.n, 1);
    if (rc) {
        fail("writing the task");
        goto done;
    }
    printf("finch demo: task: %lld training conversations (%s), %d held-out prompts (%s); skills:", (long long)n_train, train_path, h.n,
           heldout_path);
    for (int s = 0; s < demo_task_skills(); s++) printf("%s %s", s ? "," : "", demo_task_skill_name(s));
    printf("\n");

    /* 3. A new model with random weights. */
    init_spec spec;
    init_spec_default(&spec);
    spec.arch = "llama", spec.out = model_dir, spec.hidden = a->hidden, spec.layers = a->layers, spec.max_position = 256;
    spec.heads = a->hidden >= 64 ? a->hidden / 32 : 1, spec.init_std = 0.1, spec.seed = a->seed;
    char summary[4600];
    if (init_spec_check(&spec) || init_model_write(&spec, summary, sizeof summary)) {
        fail("making the model");
        goto done;
    }
    printf("finch demo: %s\n", summary);
    finch_load_options lo = finch_load_options_default();
    lo.compute_dtype = finch_train_default_dtype(rt);
    if (finch_model_load(rt, model_dir, &lo, &m) || finch_tokenizer_load(model_dir, &tok) || finch_chat_template_from_tokenizer(tok, &tpl)) {
        fail("loading the model");
        goto done;
    }

    /* 4. Before training. */
    if (answer_all(m, tok, tpl, &h, h.before)) {
        fail("generating");
        goto done;
    }

    /* 5. Training a LoRA adapter. */
    finch_trainer_config tc = finch_trainer_config_default();
    tc.output_dir = NULL;
    tc.max_steps = a->steps;
    tc.per_device_train_batch_size = a->batch;
    tc.gradient_accumulation_steps = 1;
    tc.learning_rate = a->lr;
    tc.lr_scheduler_type = FINCH_LR_COSINE;
    tc.warmup_steps = a->steps / 20;
    tc.weight_decay = 0;
    tc.seed = a->seed;
    tc.max_seq_length = 128;
    tc.lora.r = a->lora_r;
    tc.lora.alpha = (float)a->lora_r;
    finch_tokenizer_config tcfg;
    if (finch_tokenizer_config_get(tok, &tcfg) == FINCH_OK && tcfg.pad_id >= 0) tc.pad_token_id = tcfg.pad_id;
    if (finch_mkdirs(train_dir) || finch_train_data_from_jsonl(train_path, tok, tpl, NULL, NULL, &data) || finch_trainer_open(m, &tc, data, &t)) {
        fail("preparing training");
        goto done;
    }
    finch_model_info info;
    finch_model_info_get(m, &info);
    printf("finch demo: training a LoRA adapter (r %d, %lld trainable parameters) for %lld steps of %d conversations, %s\n", a->lora_r,
           (long long)info.n_trainable, (long long)a->steps, a->batch, finch_dtype_name(info.compute_dtype));
    fflush(stdout);
    if (train_report_open(&rep, train_dir, 0)) goto done;
    rep.print_every = a->steps >= 40 ? a->steps / 20 : 1;
    rc = finch_trainer_run(t, on_progress, &rep);
    train_report_end_line(&rep);
    if (rc) {
        fail("training");
        goto done;
    }
    sparkline(&rep);
    if (train_report_svg(&rep)) fprintf(stderr, "finch demo: could not write %s\n", rep.svg_path);

    /* 6. After training: the answers side by side. */
    if (answer_all(m, tok, tpl, &h, h.after)) {
        fail("generating");
        goto done;
    }
    print_table(&h);

    /* 7. The outputs: the PEFT adapter, a GGUF file (adapter merged) read back and checked. */
    if (finch_lora_save(m, adapter_dir)) {
        fail("saving the adapter");
        goto done;
    }
    finch_gguf_options go = finch_gguf_options_default();
    go.name = "finch-demo";
    finch_export_report vr;
    if (finch_export_gguf(m, gguf_path, &go) || finch_gguf_verify(m, gguf_path, &vr)) {
        fail("exporting GGUF");
        goto done;
    }
    printf("\nfinch demo: done in %.0f s. Outputs:\n", seconds_since(&t0));
    printf("  %-22s %s\n", "model (random base)", model_dir);
    printf("  %-22s %s, %s\n", "task", train_path, heldout_path);
    printf("  %-22s %s, %s\n", "loss curve", rep.svg_path, rep.metrics_path);
    printf("  %-22s %s\n", "LoRA adapter (PEFT)", adapter_dir);
    printf("  %-22s %s (%s, adapter merged; read back: logits rel. error %.1e, %lld/%lld greedy tokens agree)\n", "GGUF", gguf_path,
           finch_gguf_type_name(go.type), vr.logits_rel_err, (long long)vr.argmax_agree, (long long)vr.positions);
    printf("  %-22s %s\n", "Ollama Modelfile", modelfile);
    printf("Try it: ./build/bin/finch chat --model %s --adapter %s --greedy\n", model_dir, adapter_dir);
    status = 0;
done:
    train_report_close(&rep);
    for (int i = 0; i < h.n; i++) {
        if (h.before) free(h.before[i]);
        if (h.after) free(h.after[i]);
    }
    free(h.ex);
    free(h.before);
    free(h.after);
    finch_trainer_close(t);
    finch_train_data_free(data);
    finch_chat_template_free(tpl);
    finch_tokenizer_free(tok);
    finch_model_free(m);
    finch_runtime_close(rt);
    return status;
}

int finch_cmd_demo(int argc, char **argv)
{
    demo_args a;
    int rc = parse(argc, argv, &a);
    if (rc) return rc < 0 ? 0 : rc;
    return run(&a);
}
