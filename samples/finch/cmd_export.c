/* finch export: a model (and its adapter) as a PEFT adapter folder, a merged Hugging Face folder, a
 * GGUF file for llama.cpp / Ollama, or a GGUF LoRA adapter; --verify reads the output back and
 * compares its logits with the model finch has in memory. */
#include "finch/export.h"
#include "finch/finch.h"
#include "samples/finch/commands.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f, "usage: finch export --model DIR [--adapter DIR] --out PATH --format peft|merged|gguf|gguf-lora\n"
               "                    [--type f32|f16|bf16|q8_0|q4_0|q4_K_M|q5_K_M|q6_K] [--dtype f32|bf16|f16]\n"
               "                    [--shard-size BYTES] [--tokenizer DIR] [--no-modelfile] [--verify] [--backend NAME]\n"
               "  peft       the adapter folder (adapter_config.json + adapter_model.safetensors); needs --adapter\n"
               "  merged     a Hugging Face folder with the adapter folded in (W + scale B A in f32), in --dtype\n"
               "             (default: the checkpoint's), shards of --shard-size bytes (default 5 GB)\n"
               "  gguf       one GGUF file of --type (default f16) with the adapter merged, and an Ollama Modelfile\n"
               "             beside it (PATH without .gguf + .Modelfile) unless --no-modelfile\n"
               "  gguf-lora  the adapter as a GGUF LoRA for llama.cpp's --lora (--type f32, f16, bf16 or q8_0)\n"
               "  --verify   read the output back and compare logits with the model in memory (GGUF: also the\n"
               "             weight error per tensor type)\n");
}

typedef struct export_args {
    const char *model, *adapter, *out, *format, *type, *dtype, *shard, *tokenizer, *backend;
    int verify, no_modelfile;
} export_args;

static int parse_args(int argc, char **argv, export_args *a)
{
    memset(a, 0, sizeof *a);
    a->backend = "auto";
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        const char **slot = !strcmp(s, "--model") ? &a->model : !strcmp(s, "--adapter") ? &a->adapter
                          : !strcmp(s, "--out") ? &a->out : !strcmp(s, "--format") ? &a->format
                          : !strcmp(s, "--type") ? &a->type : !strcmp(s, "--dtype") ? &a->dtype
                          : !strcmp(s, "--shard-size") ? &a->shard : !strcmp(s, "--tokenizer") ? &a->tokenizer
                          : !strcmp(s, "--backend") ? &a->backend : NULL;
        if (slot) {
            if (i + 1 >= argc) {
                fprintf(stderr, "finch export: %s needs a value\n", s);
                return 2;
            }
            *slot = argv[++i];
        } else if (!strcmp(s, "--verify")) {
            a->verify = 1;
        } else if (!strcmp(s, "--no-modelfile")) {
            a->no_modelfile = 1;
        } else if (!strcmp(s, "--help") || !strcmp(s, "-h")) {
            usage(stdout);
            return -1;
        } else {
            fprintf(stderr, "finch export: unknown argument '%s'\n", s);
            usage(stderr);
            return 2;
        }
    }
    if (!a->model || !a->out || !a->format) {
        fprintf(stderr, "finch export: --model, --out and --format are required\n");
        usage(stderr);
        return 2;
    }
    const char *formats[] = {"peft", "merged", "gguf", "gguf-lora"};
    int known = 0;
    for (int i = 0; i < 4; i++) known |= !strcmp(a->format, formats[i]);
    if (!known) {
        fprintf(stderr, "finch export: --format must be peft, merged, gguf or gguf-lora\n");
        return 2;
    }
    if ((!strcmp(a->format, "peft") || !strcmp(a->format, "gguf-lora")) && !a->adapter) {
        fprintf(stderr, "finch export: --format %s needs --adapter\n", a->format);
        return 2;
    }
    if (a->dtype && strcmp(a->dtype, "f32") && strcmp(a->dtype, "bf16") && strcmp(a->dtype, "f16")) {
        fprintf(stderr, "finch export: --dtype must be f32, bf16 or f16\n");
        return 2;
    }
    return 0;
}

static void print_report(const finch_export_report *r)
{
    for (int i = 0; i < r->n_types; i++)
        printf("  %-6s %3d tensors  weight error %.3e (relative)\n", r->types[i].type, r->types[i].tensors, r->types[i].rel_err);
    printf("  logits: relative error %.3e, max |diff| %.3e, argmax agrees at %lld of %lld positions\n", r->logits_rel_err,
           r->logits_max_abs, (long long)r->argmax_agree, (long long)r->positions);
}

static int run(const export_args *a)
{
    finch_runtime *rt = NULL;
    finch_model *m = NULL;
    finch_export_report report;
    int rc = finch_runtime_open(a->backend, &rt);
    if (!rc) rc = finch_model_load(rt, a->model, NULL, &m);  /* f32: the merge and the reference in full precision */
    if (!rc && a->adapter) rc = finch_lora_load(m, a->adapter);
    if (rc) goto done;
    if (!strcmp(a->format, "peft")) {
        if (!(rc = finch_lora_save(m, a->out))) printf("wrote the adapter to %s\n", a->out);
    } else if (!strcmp(a->format, "merged")) {
        finch_merged_options o = finch_merged_options_default();
        if (a->dtype) o.dtype = !strcmp(a->dtype, "bf16") ? FINCH_DTYPE_BF16 : !strcmp(a->dtype, "f16") ? FINCH_DTYPE_F16 : FINCH_DTYPE_F32;
        if (a->shard) {
            char *end;
            o.shard_bytes = strtoull(a->shard, &end, 10);
            if (*end || !o.shard_bytes) {
                fprintf(stderr, "finch export: --shard-size must be a positive number of bytes\n");
                rc = -2;
                goto done;
            }
        }
        if (!(rc = finch_export_merged(m, a->out, &o))) printf("wrote the merged model to %s\n", a->out);
        if (!rc && a->verify && !(rc = finch_merged_verify(m, a->out, &report))) {
            printf("verify %s:\n", a->out);
            print_report(&report);
        }
    } else {
        finch_gguf_options o = finch_gguf_options_default();
        int lora = !strcmp(a->format, "gguf-lora");
        if (lora) o.type = FINCH_GGUF_F32;
        if (a->type && (rc = finch_gguf_type_parse(a->type, &o.type))) goto done;
        o.tokenizer_dir = a->tokenizer;
        o.modelfile = !a->no_modelfile;
        rc = lora ? finch_export_gguf_lora(m, a->out, o.type) : finch_export_gguf(m, a->out, &o);
        if (!rc) printf("wrote %s (%s%s)\n", a->out, finch_gguf_type_name(o.type), lora ? " LoRA adapter" : "");
        if (!rc && a->verify && !(rc = finch_gguf_verify(m, a->out, &report))) {
            printf("verify %s:\n", a->out);
            print_report(&report);
        }
    }
done:
    finch_model_free(m);
    finch_runtime_close(rt);
    return rc;
}

int finch_cmd_export(int argc, char **argv)
{
    export_args a;
    int rc = parse_args(argc, argv, &a);
    if (rc) return rc < 0 ? 0 : rc;
    rc = run(&a);
    if (rc == -2) return 2;
    if (rc) {
        fprintf(stderr, "finch export: %s\n", finch_last_error());
        return 1;
    }
    return 0;
}
