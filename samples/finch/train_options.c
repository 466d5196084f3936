/* `finch train` options: one table maps each setting to its flag and its config-file key; the file
 * is applied first, the flags after it. */
#include "samples/finch/train_options.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum { T_STR, T_INT, T_I64, T_U64, T_DBL, T_BOOL, T_SWITCH } opt_type;

typedef struct opt_def {
    const char *flag, *key;          /* "--learning-rate", "learning_rate" */
    opt_type type;
    size_t offset;                   /* into train_options */
    const char *help;
} opt_def;

#define O(field) offsetof(train_options, field)
#define TC(field) (offsetof(train_options, tc) + offsetof(finch_trainer_config, field))
static const opt_def defs[] = {
    {"--model", "model", T_STR, O(model), "DIR  Hugging Face model folder (config.json, safetensors, tokenizer)"},
    {"--data", "data", T_STR, O(data), "FILE  JSONL (messages / conversations / alpaca / text) or pre-tokenized .safetensors"},
    {"--out", "output_dir", T_STR, O(out), "DIR  checkpoints, metrics.jsonl, loss.svg and the final adapter"},
    {"--adapter", "adapter", T_STR, O(adapter), "DIR  start from this PEFT adapter instead of a fresh one"},
    {"--resume", "resume_from_checkpoint", T_STR, O(resume), "DIR|latest  continue from a checkpoint (latest: the newest in --out)"},
    {"--config", NULL, T_STR, O(config), "FILE  JSON settings named as below (flags override them)"},
    {"--max-steps", "max_steps", T_I64, TC(max_steps), "N  optimizer steps (wins over --num-epochs)"},
    {"--num-epochs", "num_train_epochs", T_DBL, TC(num_train_epochs), "X  passes over the data (1)"},
    {"--batch-size", "per_device_train_batch_size", T_INT, TC(per_device_train_batch_size), "N  rows per micro-batch (2)"},
    {"--grad-accum", "gradient_accumulation_steps", T_INT, TC(gradient_accumulation_steps), "N  micro-batches per step (4)"},
    {"--learning-rate", "learning_rate", T_DBL, TC(learning_rate), "X  (2e-4)"},
    {"--embedding-learning-rate", "embedding_learning_rate", T_DBL, TC(embedding_learning_rate),
     "X  full fine-tuning: LR of embed_tokens / lm_head (default: --learning-rate)"},
    {"--lr-scheduler", "lr_scheduler_type", T_STR, O(lr_scheduler), "linear|constant|cosine  (linear)"},
    {"--warmup-steps", "warmup_steps", T_I64, TC(warmup_steps), "N  (0)"},
    {"--warmup-ratio", "warmup_ratio", T_DBL, TC(warmup_ratio), "X  warmup as a fraction of the steps (0)"},
    {"--weight-decay", "weight_decay", T_DBL, TC(weight_decay), "X  (0.01; never on norms and biases)"},
    {"--max-grad-norm", "max_grad_norm", T_DBL, TC(max_grad_norm), "X  clip the global gradient norm (1.0; 0 = off)"},
    {"--optimizer", "optim", T_STR, O(optim), "adamw|adamw8bit  (adamw)"},
    {"--seed", "seed", T_U64, TC(seed), "N  data order and adapter init (3407)"},
    {"--lora-r", "lora_r", T_INT, O(lora_r), "N  adapter rank (16)"},
    {"--lora-alpha", "lora_alpha", T_DBL, O(lora_alpha), "X  (16)"},
    {"--lora-dropout", "lora_dropout", T_DBL, O(lora_dropout), "X  (0)"},
    {"--target-modules", "target_modules", T_STR, O(target_modules), "LIST  all-linear or q_proj,v_proj,...; vision models: add vision-blocks, vision-merger (all-linear)"},
    {"--full-finetune", "full_finetune", T_BOOL, O(full_finetune), "  train every weight instead of an adapter"},
    {"--gradient-checkpointing", "gradient_checkpointing", T_BOOL, O(gradient_checkpointing), "  recompute activations in backward"},
    {"--offload-activations", "offload_activations", T_BOOL, O(offload_activations),
     "  with --gradient-checkpointing: layer inputs in host memory (less device memory, slower steps)"},
    {"--load-in-4bit", "load_in_4bit", T_BOOL, O(load_in_4bit), "  QLoRA: decoder linear weights in NF4 (a bnb-4bit model loads so anyway)"},
    {"--double-quant", "bnb_4bit_use_double_quant", T_BOOL, O(double_quant), "  with --load-in-4bit: 8-bit absmax, as bitsandbytes"},
    {"--packing", "packing", T_BOOL, TC(packing), "  several examples per row"},
    {"--max-seq-length", "max_seq_length", T_I64, TC(max_seq_length), "N  longer examples are truncated (2048)"},
    {"--template", "chat_template", T_STR, O(chat_template), "NAME  built-in chat template (default: the tokenizer's)"},
    {"--eval-split", "eval_split", T_DBL, TC(eval_split), "X  fraction held out for eval loss (0)"},
    {"--eval-steps", "eval_steps", T_I64, TC(eval_steps), "N  evaluate every N steps (0: at the end)"},
    {"--save-steps", "save_steps", T_I64, TC(save_steps), "N  checkpoint every N steps (0: none; Ctrl-C always saves)"},
    {"--save-total-limit", "save_total_limit", T_INT, TC(save_total_limit), "N  keep the last N checkpoints (0: all)"},
    {"--logging-steps", "logging_steps", T_I64, TC(logging_steps), "N  report every N steps (1)"},
    {"--backend", "backend", T_STR, O(backend), "NAME  auto, cpu, cuda, opencl:0, ... (auto)"},
    {"--dtype", "dtype", T_STR, O(dtype), "f32|bf16  compute type (bf16 on GPUs, f32 on CPU)"},
    {"--threads", "threads", T_INT, O(threads), "N  CPU backend threads (0: all cores)"},
    {"--switch-backend-at", "switch_backend_at", T_SWITCH, O(n_switches),
     "STEP:NAME  after optimizer step STEP, move the model and optimizer state to backend NAME (repeatable)"},
};
#undef O
#undef TC
#define N_DEFS (int)(sizeof defs / sizeof defs[0])

void train_options_usage(FILE *f)
{
    fprintf(f, "usage: finch train --model DIR --data FILE --out DIR [options]\n\noptions:\n");
    for (int i = 0; i < N_DEFS; i++) {
        const char *sp = strchr(defs[i].help, ' ');
        int arg = (int)(sp ? sp - defs[i].help : 0);
        fprintf(f, "  %s %-.*s%*s%s\n", defs[i].flag, arg, defs[i].help, (int)(34 - strlen(defs[i].flag) - arg > 0 ? 34 - strlen(defs[i].flag) - arg : 1), "",
                sp ? sp + 2 : "");
    }
    fprintf(f, "\nThe config file's keys are Hugging Face TrainingArguments names (learning_rate, per_device_train_batch_size,\n"
               "gradient_accumulation_steps, lr_scheduler_type, optim, output_dir, ...).\n");
}

/* "STEP:NAME[,STEP:NAME...]" appended to the switches, kept in step order. */
static int add_switches(train_options *o, const char *text)
{
    for (const char *at = text; *at;) {
        char *end = NULL;
        errno = 0;
        long long step = strtoll(at, &end, 10);
        const char *name = end && *end == ':' ? end + 1 : NULL;
        size_t len = name ? strcspn(name, ",") : 0;
        if (end == at || errno || step < 0 || !name || !len || o->n_switches == 16) return 1;
        char *copy = strndup(name, len);
        if (!copy || o->n_strings == (int)(sizeof o->strings / sizeof o->strings[0])) {
            free(copy);
            return 1;
        }
        o->strings[o->n_strings++] = copy;
        int i = o->n_switches++;
        for (; i > 0 && o->switch_step[i - 1] > step; i--) {
            o->switch_step[i] = o->switch_step[i - 1];
            o->switch_backend[i] = o->switch_backend[i - 1];
        }
        o->switch_step[i] = step;
        o->switch_backend[i] = copy;
        at = name + len + (name[len] == ',');
    }
    return 0;
}

static int set_value(train_options *o, const opt_def *d, const char *text, const char *where)
{
    char *p = (char *)o + d->offset, *end = NULL;
    errno = 0;
    switch (d->type) {
    case T_SWITCH:
        if (!add_switches(o, text)) return 0;
        break;
    case T_STR: *(const char **)p = text; return 0;
    case T_BOOL:
        if (!strcmp(text, "true") || !strcmp(text, "1")) *(int *)p = 1;
        else if (!strcmp(text, "false") || !strcmp(text, "0")) *(int *)p = 0;
        else break;
        return 0;
    case T_INT: {
        long v = strtol(text, &end, 10);
        if (*text && !*end && !errno && v >= -2147483647L && v <= 2147483647L) { *(int *)p = (int)v; return 0; }
        break;
    }
    case T_I64: {
        long long v = strtoll(text, &end, 10);
        if (*text && !*end && !errno) { *(int64_t *)p = v; return 0; }
        break;
    }
    case T_U64: {
        unsigned long long v = strtoull(text, &end, 10);
        if (*text && *text != '-' && !*end && !errno) { *(uint64_t *)p = v; return 0; }
        break;
    }
    case T_DBL: {
        double v = strtod(text, &end);
        if (*text && !*end && !errno) { *(double *)p = v; return 0; }
        break;
    }
    }
    fprintf(stderr, "finch train: %s: '%s' is not a valid value for %s\n", where, text, d->flag);
    return 2;
}

static char *keep(train_options *o, const char *s)
{
    if (o->n_strings == (int)(sizeof o->strings / sizeof o->strings[0])) return NULL;
    return o->strings[o->n_strings++] = strdup(s);
}

static int apply_config_file(train_options *o, const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "finch train: cannot open config %s: %s\n", path, strerror(errno));
        return 2;
    }
    static char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    cJSON *root = cJSON_Parse(buf);
    if (!cJSON_IsObject(root)) {
        fprintf(stderr, "finch train: %s is not a JSON object\n", path);
        cJSON_Delete(root);
        return 2;
    }
    int rc = 0;
    for (const cJSON *e = root->child; e && !rc; e = e->next) {
        const opt_def *d = NULL;
        for (int i = 0; i < N_DEFS && !d; i++)
            if (defs[i].key && !strcmp(defs[i].key, e->string)) d = &defs[i];
        if (!d) {
            fprintf(stderr, "finch train: %s: unknown setting \"%s\"\n", path, e->string);
            rc = 2;
            break;
        }
        char text[4096], where[1200];
        snprintf(where, sizeof where, "%s: \"%s\"", path, e->string);
        if (cJSON_IsString(e)) snprintf(text, sizeof text, "%s", e->valuestring);
        else if (cJSON_IsBool(e)) snprintf(text, sizeof text, "%s", cJSON_IsTrue(e) ? "true" : "false");
        else if (cJSON_IsNumber(e)) snprintf(text, sizeof text, "%.17g", e->valuedouble);
        else if (cJSON_IsArray(e) && (d->type == T_STR || d->type == T_SWITCH)) {   /* target_modules, switches as lists */
            size_t at = 0;
            text[0] = 0;
            for (const cJSON *x = e->child; x; x = x->next)
                if (cJSON_IsString(x)) at += (size_t)snprintf(text + at, at < sizeof text ? sizeof text - at : 0, "%s%s", at ? "," : "", x->valuestring);
        } else {
            fprintf(stderr, "finch train: %s has an unusable value\n", where);
            rc = 2;
            break;
        }
        const char *v = d->type == T_STR ? keep(o, text) : text;
        rc = v ? set_value(o, d, v, where) : 2;
    }
    cJSON_Delete(root);
    return rc;
}

static const opt_def *find_flag(const char *flag)
{
    for (int i = 0; i < N_DEFS; i++)
        if (!strcmp(defs[i].flag, flag)) return &defs[i];
    return NULL;
}

int train_options_parse(int argc, char **argv, train_options *o)
{
    memset(o, 0, sizeof *o);
    o->tc = finch_trainer_config_default();
    o->backend = "auto";
    o->lora_r = o->tc.lora.r;
    o->lora_alpha = o->tc.lora.alpha;
    o->lora_dropout = o->tc.lora.dropout;
    o->target_modules = o->tc.lora.target_modules;
    o->lr_scheduler = finch_lr_scheduler_name(o->tc.lr_scheduler_type);
    o->optim = finch_optimizer_name(o->tc.optim);
    /* The config file first, wherever --config stands. */
    for (int i = 1; i + 1 < argc; i++)
        if (!strcmp(argv[i], "--config")) {
            int rc = apply_config_file(o, argv[i + 1]);
            if (rc) return rc;
        }
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            train_options_usage(stdout);
            return -1;
        }
        const opt_def *d = find_flag(argv[i]);
        if (!d) {
            fprintf(stderr, "finch train: unknown argument '%s' (finch train --help lists the options)\n", argv[i]);
            return 2;
        }
        if (d->type == T_BOOL && (i + 1 >= argc || strncmp(argv[i + 1], "--", 2) == 0 || (strcmp(argv[i + 1], "true") && strcmp(argv[i + 1], "false")))) {
            *(int *)((char *)o + d->offset) = 1;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "finch train: %s needs a value\n", argv[i]);
            return 2;
        }
        int rc = set_value(o, d, argv[++i], "command line");
        if (rc) return rc;
    }
    if (!o->model || !o->data || !o->out) {
        fprintf(stderr, "finch train: --model, --data and --out are required (finch train --help)\n");
        return 2;
    }
    if (finch_lr_scheduler_parse(o->lr_scheduler, &o->tc.lr_scheduler_type) || finch_optimizer_parse(o->optim, &o->tc.optim)) {
        fprintf(stderr, "finch train: %s\n", finch_last_error());
        return 2;
    }
    if (o->dtype && strcmp(o->dtype, "f32") && strcmp(o->dtype, "bf16")) {
        fprintf(stderr, "finch train: --dtype must be f32 or bf16\n");
        return 2;
    }
    if (o->full_finetune && o->adapter) {
        fprintf(stderr, "finch train: --full-finetune and --adapter exclude each other\n");
        return 2;
    }
    o->tc.output_dir = o->out;
    o->tc.lora.r = o->lora_r;
    o->tc.lora.alpha = (float)o->lora_alpha;
    o->tc.lora.dropout = (float)o->lora_dropout;
    o->tc.lora.target_modules = o->target_modules;
    o->tc.lora.seed = o->tc.seed;
    return 0;
}

void train_options_free(train_options *o)
{
    for (int i = 0; i < o->n_strings; i++) free(o->strings[i]);
    o->n_strings = 0;
}
