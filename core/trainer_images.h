/* The images of the trainer's micro-batches: decoded and preprocessed ahead of use by one background
 * thread, in the exact order the micro-batches take them. Internal to libfinch.
 *
 * The queue follows the data stream: it holds the images of the current epoch's rows from the next
 * row on, and at most PREFETCH_DEPTH decoded images wait in it. A micro-batch taken at another
 * position than the queue's (a new epoch, a resume, a step retried after a cancel) restarts it there,
 * so the images a micro-batch gets never depend on timing. */
#ifndef FINCH_CORE_TRAINER_IMAGES_H
#define FINCH_CORE_TRAINER_IMAGES_H

#include "core/trainer.h"

/* For data with images: checks them against the model and the configuration (no packing; every
 * image token within max_seq_length) and starts the decoding thread. Nothing for text data. */
int trainer_images_open(finch_trainer *t);
void trainer_images_close(finch_trainer *t);
/* Fills mb's pixel values and grids with the images of rows [r0, r1) of the plan of `epoch`. */
int trainer_images_attach(finch_trainer *t, int64_t epoch, int64_t r0, int64_t r1, trainer_micro *mb);
/* The same for examples idx[0..n) of the data, decoded on the calling thread (evaluation). */
int trainer_images_attach_examples(finch_trainer *t, const size_t *idx, size_t n, trainer_micro *mb);

#endif
