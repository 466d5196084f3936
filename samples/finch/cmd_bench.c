/* finch bench <what>: benchmarks that need no download (models with random weights are made on the
 * spot). Each lives in cmd_bench_<what>.c. */
#include "samples/finch/commands.h"

#include <stdio.h>
#include <string.h>

static const struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} benches[] = {
    {"decode", finch_cmd_bench_decode, "batch-1 decode tokens/s of a random-weight model against the memory-bandwidth roofline"},
    {"train", finch_cmd_bench_train, "LoRA training tokens/s and peak memory in the Hugging Face + PEFT baseline's configurations"},
};

int finch_cmd_bench(int argc, char **argv)
{
    for (size_t i = 0; argc > 1 && i < sizeof benches / sizeof benches[0]; i++)
        if (!strcmp(argv[1], benches[i].name)) return benches[i].run(argc - 1, argv + 1);
    fprintf(argc > 1 && strcmp(argv[1], "--help") ? stderr : stdout, "usage: finch bench <what> [options]\n");
    for (size_t i = 0; i < sizeof benches / sizeof benches[0]; i++)
        fprintf(stderr, "  %-8s %s\n", benches[i].name, benches[i].summary);
    return argc > 1 && !strcmp(argv[1], "--help") ? 0 : 2;
}
