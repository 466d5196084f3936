/* Subcommands of the finch command-line tool; main.c dispatches on argv[1]. Each returns the
 * process exit status (0 ok, 1 failure with a message on stderr, 2 usage error). */
#ifndef FINCH_SAMPLES_COMMANDS_H
#define FINCH_SAMPLES_COMMANDS_H

#include "finch/vision.h"

int finch_cmd_info(int argc, char **argv);
int finch_cmd_forward(int argc, char **argv);
int finch_cmd_tokenize(int argc, char **argv);
int finch_cmd_train(int argc, char **argv);
int finch_cmd_init(int argc, char **argv);
int finch_cmd_generate(int argc, char **argv);
int finch_cmd_chat(int argc, char **argv);
int finch_cmd_bench(int argc, char **argv);
int finch_cmd_bench_decode(int argc, char **argv);
int finch_cmd_bench_train(int argc, char **argv);
int finch_cmd_export(int argc, char **argv);
int finch_cmd_demo(int argc, char **argv);

/* images.c: the image preprocessing settings of a vision-language model: preprocessor_config.json from
 * `processor`, else from model_dir, else the Qwen2-VL defaults. */
int finch_cli_image_config(const char *model_dir, const char *processor, finch_qwen2vl_image_config *cfg);
/* images.c: decodes and preprocesses n images for a vision-language model (preprocessor_config.json
 * from `processor`, else from model_dir, else the Qwen2-VL defaults): pixel values of all images one
 * after the other [n_patches, patch_dim] and their grids [n, 3]; free both with free(). */
#include <stdint.h>
int finch_cli_load_images(const char *model_dir, const char *processor, const char *const *paths, int n, float **pixels,
                          int32_t **grids, int64_t *n_patches);

#endif
