/* The trainer behind the public finch_trainer handle (train.h). Internal to libfinch.
 *
 * Data position: the trainer reads rows of the current epoch's plan in order. An epoch's plan is
 * the training examples in a seeded order (seed + epoch), packed into rows of max_seq_length when
 * packing, else one example per row (padded per micro-batch to its longest). A micro-batch is the
 * next per_device_train_batch_size rows of the epoch (fewer at its end); the next epoch starts a
 * new plan. (epoch, row) is all a checkpoint needs to continue the stream. */
#ifndef FINCH_CORE_TRAINER_H
#define FINCH_CORE_TRAINER_H

#include "core/model.h"
#include "core/optimizer.h"
#include "finch/train.h"

#include <signal.h>

/* One micro-batch ready for finch_forward_backward. */
typedef struct trainer_micro {
    finch_batch batch;
    finch_packed_batch owned;   /* unpacked rows padded for this micro-batch (else empty) */
    int64_t targets;            /* tokens with a trained label after the shift */
    int64_t tokens;             /* real (non-padding) input tokens */
    float *pixels;              /* the rows' images (core/trainer_images.h), or NULL */
    int32_t *grids;
} trainer_micro;

struct finch_trainer {
    finch_model *m;
    finch_trainer_config cfg;
    char *output_dir;
    const finch_train_data *data;
    finch_optim *opt;

    size_t *train_idx, n_train;         /* examples of the data, in file order */
    size_t *eval_idx, n_eval;

    int64_t plan_epoch;                 /* the epoch `order` / `packed` belong to; -1: none */
    finch_example *order;               /* the epoch's examples in order (shallow copies) */
    size_t *order_idx;                  /* their indexes in the data */
    finch_packed_batch packed;          /* packing: the epoch's rows */
    int64_t plan_rows;

    int64_t step, total_steps, warmup_steps;
    int64_t epoch, row;                 /* the next row to read */
    int64_t rows_per_epoch;             /* of epoch 0, for the step count and fractional epochs */

    volatile sig_atomic_t cancel;
    double run_start, run_tokens;       /* seconds (monotonic) and input tokens of this process */
    int64_t run_steps;
    int64_t last_saved_step;
    char last_checkpoint[4096];
    trainer_micro *micro;               /* gradient_accumulation_steps slots */
    struct trainer_prefetch *prefetch;  /* image data: the decoding thread (core/trainer_images.c) */
};

/* trainer_batches.c */
int trainer_split(finch_trainer *t);
int trainer_epoch_rows(finch_trainer *t, int64_t epoch, int64_t *rows);
/* Builds the micro-batch at (*epoch, *row) and advances them past it. */
int trainer_next_micro(finch_trainer *t, int64_t *epoch, int64_t *row, trainer_micro *mb);
/* The eval examples [first, first + count) as a padded micro-batch. */
int trainer_eval_micro(finch_trainer *t, size_t first, size_t count, trainer_micro *mb);
void trainer_micro_release(trainer_micro *mb);
void trainer_plan_free(finch_trainer *t);

/* trainer_checkpoint.c */
int trainer_check_output_dir(const char *dir);

#endif
