/* Shared by the `finch bench` commands (and samples/bench_qlora): random-weight Llama checkpoints
 * written to a scratch folder, and a count of the device memory finch allocates. */
#ifndef FINCH_SAMPLES_BENCH_MODEL_H
#define FINCH_SAMPLES_BENCH_MODEL_H

#include "finch/finch.h"
#include "finch/train.h"

#include <stddef.h>
#include <stdint.h>

typedef struct bench_shape {
    int64_t hidden, layers, heads, kv_heads, intermediate, vocab;
    int tied;                       /* lm_head shares the embedding table */
} bench_shape;

double bench_now(void);
/* Bytes of a checkpoint of shape s with elements of elem_size bytes. */
double bench_weight_bytes(const bench_shape *s, double elem_size);
/* A new folder for a checkpoint of `bytes` in dir_opt, else /dev/shm, $TMPDIR or /tmp, whichever
 * has room, named finch-bench-<tag>-<pid>. Prints why and returns non-zero when none has. */
int bench_make_dir(const char *dir_opt, double bytes, const char *tag, char *out, size_t size);
/* config.json and model.safetensors of a Llama model of shape s with random values (norms 1). */
int bench_write_llama(const char *dir, const bench_shape *s, int bf16, double *file_bytes);
/* Deletes what bench_write_llama wrote, and the folder. */
void bench_remove_dir(const char *dir);

/* Replaces the runtime's plugin table by one whose alloc/free count bytes; then bench_device_live
 * and bench_device_peak say how much finch holds on the device, as torch's memory_allocated and
 * max_memory_allocated do (buffers the core asked for; not the driver context or plugin caches). */
void bench_count_device_memory(finch_runtime *rt);
uint64_t bench_device_live(void);
uint64_t bench_device_peak(void);
void bench_device_reset_peak(void);    /* peak = live */

/* A trainer over B rows of T tokens (labels = inputs, no shuffling) with the benchmarks' settings:
 * LoRA r = alpha = rank on the seven Llama linears, no dropout, constant lr 1e-4, weight decay 0.01,
 * no clipping, `optim`, max_steps steps. The data copies ids; free it after the trainer closes. */
int bench_trainer_open(finch_model *m, const int32_t *ids, int64_t B, int64_t T, int rank, finch_optimizer optim,
                       int64_t max_steps, finch_trainer **out, finch_train_data **data);

#endif
