/* finch — the command-line tool: `finch <command> [options]`. Each command lives in its own
 * cmd_<name>.c (declared in commands.h); this file only dispatches. */
#include "samples/finch/commands.h"
#include "finch/finch.h"
#include "finch/plugin.h"

#include <stdio.h>
#include <string.h>

static const struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} commands[] = {
    {"demo", finch_cmd_demo, "the whole pipeline on a small model: init, train on a synthetic chat task, before/after answers, export"},
    {"info", finch_cmd_info, "list backends (and why a plugin did not load), devices, and what \"auto\" picks"},
    {"forward", finch_cmd_forward, "run a model on a batch: logits, loss and optionally gradients to a file"},
    {"tokenize", finch_cmd_tokenize, "encode text or a chat with a model's tokenizer and template; show ids and labels"},
    {"train", finch_cmd_train, "fine-tune a model (LoRA or full) on a JSONL dataset, with checkpoints and a loss curve"},
    {"init", finch_cmd_init, "create a new model folder (config, random weights, tokenizer) to train from scratch"},
    {"generate", finch_cmd_generate, "generate text from a prompt or a JSONL file of prompts (JSON lines out)"},
    {"chat", finch_cmd_chat, "talk to a model (and its adapter) through its chat template, replies streamed"},
    {"bench", finch_cmd_bench, "benchmarks on random-weight models (finch bench decode: decode speed vs the memory roofline; finch bench train: LoRA training vs HF + PEFT)"},
    {"export", finch_cmd_export, "write a PEFT adapter, a merged Hugging Face folder, a GGUF file or a GGUF LoRA"},
};
#define N_COMMANDS (int)(sizeof commands / sizeof commands[0])

static void usage(FILE *f)
{
    fprintf(f, "usage: finch <command> [options]\n\ncommands:\n");
    for (int i = 0; i < N_COMMANDS; i++)
        fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\n  finch <command> --help   options of a command\n"
               "  finch --version          version of finch and of the plugin ABI\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(cmd, "--version") == 0) {
        printf("finch %s (plugin ABI %d.%d)\n", finch_version_string(), FINCH_PLUGIN_ABI_MAJOR, FINCH_PLUGIN_ABI_MINOR);
        return 0;
    }
    for (int i = 0; i < N_COMMANDS; i++)
        if (strcmp(cmd, commands[i].name) == 0)
            return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "finch: unknown command '%s'\n\n", cmd);
    usage(stderr);
    return 2;
}
