/* Options of `finch train`: a JSON config file (Hugging Face TrainingArguments names) and command-
 * line flags that override it. */
#ifndef FINCH_SAMPLES_TRAIN_OPTIONS_H
#define FINCH_SAMPLES_TRAIN_OPTIONS_H

#include "finch/train.h"

#include <stdio.h>

typedef struct train_options {
    const char *config;              /* --config FILE */
    const char *model, *adapter, *data, *out, *resume, *backend, *dtype, *chat_template;
    const char *lr_scheduler, *optim, *target_modules;
    int full_finetune, gradient_checkpointing, offload_activations, threads, load_in_4bit, double_quant;
    int lora_r;
    double lora_alpha, lora_dropout;
    finch_trainer_config tc;         /* numeric training settings */
    int64_t switch_step[16];         /* --switch-backend-at STEP:NAME, in step order */
    const char *switch_backend[16];
    int n_switches;
    char *strings[64];               /* copies of config-file strings, freed by train_options_free */
    int n_strings;
} train_options;

/* Defaults, then the config file (if --config), then the flags. Returns 0, 2 on a usage error (message
 * printed), or -1 after --help. */
int train_options_parse(int argc, char **argv, train_options *o);
void train_options_free(train_options *o);
void train_options_usage(FILE *f);

#endif
