#include "samples/finch/gen_setup.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char gen_setup_usage[] =
    "  --model DIR             Hugging Face model folder (config.json, safetensors, tokenizer.json)\n"
    "  --adapter DIR           a PEFT LoRA adapter, applied unmerged\n"
    "  --4bit                  quantise the decoder's linear weights to NF4 on load (QLoRA weights)\n"
    "  --backend NAME          auto (default), cpu, cuda, cuda:1, opencl:0, ...\n"
    "  --dtype f32|bf16        compute type (default: bf16 on a GPU, f32 on the CPU)\n"
    "  --template NAME         a built-in chat template instead of the tokenizer's\n"
    "  --system TEXT           a system message before the conversation\n"
    "  --max-new-tokens N      (256)\n"
    "  --greedy                always the most likely token\n"
    "  --temperature T         (1; 0 = greedy)   --top-k K (0 = off)   --top-p P (1 = off)   --min-p P (0 = off)\n"
    "  --repetition-penalty R  (1 = off)   --frequency-penalty F   --presence-penalty P   (0 = off)\n"
    "  --seed N                sampling seed (0)\n"
    "  --stop TEXT             stop when the output contains TEXT (repeatable)\n"
    "  --ignore-eos            do not stop on the model's end-of-sequence ids\n";

void gen_setup_init(gen_setup *g, const char *cmd)
{
    memset(g, 0, sizeof *g);
    g->cmd = cmd;
    g->backend = "auto";
    g->opts = finch_generate_options_default();
}

static int number(const gen_setup *g, const char *opt, const char *s, double lo, double hi, double *out)
{
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi)) {
        fprintf(stderr, "%s: %s needs a number in [%g, %g], not '%s'\n", g->cmd, opt, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

int gen_setup_option(gen_setup *g, int argc, char **argv, int *i)
{
    const char *a = argv[*i];
    finch_sampling *s = &g->opts.sampling;
    if (!strcmp(a, "--greedy")) {
        s->greedy = 1;
        return 1;
    }
    if (!strcmp(a, "--4bit") || !strcmp(a, "--load-in-4bit")) {
        g->load_in_4bit = 1;
        return 1;
    }
    if (!strcmp(a, "--ignore-eos")) {
        g->opts.use_model_eos = 0;
        return 1;
    }
    const char **str = !strcmp(a, "--model") ? &g->model : !strcmp(a, "--adapter") ? &g->adapter
                     : !strcmp(a, "--backend") ? &g->backend : !strcmp(a, "--dtype") ? &g->dtype
                     : !strcmp(a, "--template") ? &g->template_name : !strcmp(a, "--system") ? &g->system : NULL;
    static const char *const numeric[] = {"--max-new-tokens", "--temperature", "--top-k", "--top-p", "--min-p",
                                          "--repetition-penalty", "--frequency-penalty", "--presence-penalty", "--seed"};
    int num = -1;
    for (int k = 0; k < (int)(sizeof numeric / sizeof numeric[0]); k++)
        if (!strcmp(a, numeric[k])) num = k;
    if (!str && num < 0 && strcmp(a, "--stop")) return 0;
    if (*i + 1 >= argc) {
        fprintf(stderr, "%s: %s needs a value\n", g->cmd, a);
        return -1;
    }
    const char *v = argv[++*i];
    if (str) {
        *str = v;
        if (str == &g->dtype && strcmp(v, "f32") && strcmp(v, "bf16")) {
            fprintf(stderr, "%s: --dtype must be f32 or bf16\n", g->cmd);
            return -1;
        }
        return 1;
    }
    if (num < 0) {
        if (g->n_stop == GEN_MAX_STOP || !*v) {
            fprintf(stderr, "%s: --stop: at most %d non-empty stop strings\n", g->cmd, GEN_MAX_STOP);
            return -1;
        }
        g->stop[g->n_stop++] = v;
        return 1;
    }
    double x;
    switch (num) {
    case 0: if (number(g, a, v, 0, 1e9, &x)) return -1; g->opts.max_new_tokens = (int64_t)x; break;
    case 1: if (number(g, a, v, 0, 1e6, &x)) return -1; s->temperature = (float)x; break;
    case 2: if (number(g, a, v, 0, 1e9, &x)) return -1; s->top_k = (int)x; break;
    case 3: if (number(g, a, v, 1e-9, 1, &x)) return -1; s->top_p = (float)x; break;
    case 4: if (number(g, a, v, 0, 1, &x)) return -1; s->min_p = (float)x; break;
    case 5: if (number(g, a, v, 1e-6, 1e6, &x)) return -1; s->repetition_penalty = (float)x; break;
    case 6: if (number(g, a, v, -1e6, 1e6, &x)) return -1; s->frequency_penalty = (float)x; break;
    case 7: if (number(g, a, v, -1e6, 1e6, &x)) return -1; s->presence_penalty = (float)x; break;
    default: if (number(g, a, v, 0, 18446744073709551615.0, &x)) return -1; s->seed = (uint64_t)x; break;
    }
    return 1;
}

static int fail(const gen_setup *g, const char *what)
{
    fprintf(stderr, "%s: %s: %s\n", g->cmd, what, finch_last_error());
    return 1;
}

int gen_setup_open(gen_setup *g, int want_template)
{
    if (!g->model) {
        fprintf(stderr, "%s: --model is required\n", g->cmd);
        return 1;
    }
    if (finch_runtime_open(g->backend, &g->rt)) return fail(g, "opening the backend");
    finch_load_options lo = finch_load_options_default();
    finch_device_report dev;
    if (g->dtype) lo.compute_dtype = !strcmp(g->dtype, "bf16") ? FINCH_DTYPE_BF16 : FINCH_DTYPE_F32;
    else if (finch_runtime_active(g->rt, &dev) == FINCH_OK && dev.kind != 0) lo.compute_dtype = FINCH_DTYPE_BF16;
    lo.load_in_4bit = g->load_in_4bit;
    if (finch_model_load(g->rt, g->model, &lo, &g->m)) return fail(g, "loading the model");
    if (g->adapter && finch_lora_load(g->m, g->adapter)) return fail(g, "loading the adapter");
    if (g->tokenizer_optional && !want_template && !g->template_name && !g->n_stop) {
        char path[4200];
        snprintf(path, sizeof path, "%s/tokenizer.json", g->model);
        FILE *f = fopen(path, "rb");
        if (f) fclose(f);
        if (f && finch_tokenizer_load(g->model, &g->tok)) return fail(g, "loading the tokenizer");
    } else if (finch_tokenizer_load(g->model, &g->tok)) {
        return fail(g, "loading the tokenizer");
    }
    if (want_template || g->template_name) {
        int rc = g->template_name ? finch_chat_template_builtin(g->template_name, &g->tpl) : finch_chat_template_from_tokenizer(g->tok, &g->tpl);
        if (rc) {
            fprintf(stderr, "%s: chat template: %s%s\n", g->cmd, finch_last_error(),
                    g->template_name ? "" : " (name a built-in one with --template)");
            return 1;
        }
    }
    g->opts.tokenizer = g->tok;
    g->opts.stop_strings = g->stop;
    g->opts.n_stop_strings = g->n_stop;
    return 0;
}

void gen_setup_close(gen_setup *g)
{
    finch_chat_template_free(g->tpl);
    finch_tokenizer_free(g->tok);
    finch_model_free(g->m);
    finch_runtime_close(g->rt);
    g->tpl = NULL;
    g->tok = NULL;
    g->m = NULL;
    g->rt = NULL;
}

int gen_encode_text(gen_setup *g, const char *text, finch_tokens *out)
{
    out->len = 0;
    if (finch_tokenizer_encode(g->tok, text, strlen(text), FINCH_ENCODE_ADD_SPECIAL, out)) return fail(g, "encoding the prompt");
    return 0;
}

int gen_encode_chat(gen_setup *g, const char *messages_json, finch_tokens *out)
{
    out->len = 0;
    cJSON *msgs = cJSON_Parse(messages_json);
    if (!cJSON_IsArray(msgs)) {
        cJSON_Delete(msgs);
        fprintf(stderr, "%s: messages must be a JSON array\n", g->cmd);
        return 1;
    }
    const cJSON *first = cJSON_GetArrayItem(msgs, 0);
    const cJSON *role = cJSON_GetObjectItemCaseSensitive(first, "role");
    if (g->system && !(cJSON_IsString(role) && !strcmp(role->valuestring, "system"))) {
        cJSON *sys = cJSON_CreateObject();
        cJSON_AddStringToObject(sys, "role", "system");
        cJSON_AddStringToObject(sys, "content", g->system);
        cJSON_InsertItemInArray(msgs, 0, sys);
    }
    char *json = cJSON_PrintUnformatted(msgs);
    cJSON_Delete(msgs);
    finch_chat_options co = finch_chat_options_for(g->tok);
    co.add_generation_prompt = 1;
    char *text = NULL;
    int rc = json ? finch_chat_template_render(g->tpl, json, &co, &text) : FINCH_ERR_OUT_OF_MEMORY;
    free(json);
    if (rc) return fail(g, "rendering the chat template");
    /* The rendering already holds the template's special tokens (BOS and turn markers). */
    rc = finch_tokenizer_encode(g->tok, text, strlen(text), 0, out);
    finch_data_free(text);
    if (rc) return fail(g, "encoding the conversation");
    return 0;
}

const char *gen_finish_name(finch_finish_reason r)
{
    switch (r) {
    case FINCH_FINISH_LENGTH: return "length";
    case FINCH_FINISH_EOS: return "eos";
    case FINCH_FINISH_STOP: return "stop";
    case FINCH_FINISH_CONTEXT: return "context";
    case FINCH_FINISH_CANCELLED: return "cancelled";
    }
    return "?";
}
