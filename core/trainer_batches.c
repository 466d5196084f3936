/* The trainer's data stream: the train/eval split, each epoch's seeded order and packing, and the
 * micro-batches read from it (see core/trainer.h for the position it keeps). */
#include "core/error.h"
#include "core/trainer.h"
#include "core/trainer_images.h"

#include <stdlib.h>
#include <string.h>

/* Seeds of the split and of each epoch's order, kept apart from each other. */
#define SPLIT_SEED_MIX 0x5851F42D4C957F2Dull
#define EPOCH_SEED_MIX 0x9E3779B97F4A7C15ull

static int cmp_size(const void *a, const void *b)
{
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    return (x > y) - (x < y);
}

int trainer_split(finch_trainer *t)
{
    size_t n = finch_train_data_count(t->data);
    size_t n_eval = 0;
    if (t->cfg.eval_split > 0) {
        n_eval = (size_t)(t->cfg.eval_split * (double)n + 0.5);
        if (n_eval < 1) n_eval = 1;
        if (n_eval >= n)
            return finch_error(FINCH_ERR_INVALID_ARGUMENT, "eval_split %g of %zu examples leaves none to train on", t->cfg.eval_split, n);
    }
    size_t *perm = malloc((n + 1) * sizeof *perm);
    t->train_idx = malloc((n + 1) * sizeof *t->train_idx);
    t->eval_idx = malloc((n_eval + 1) * sizeof *t->eval_idx);
    if (!perm || !t->train_idx || !t->eval_idx) {
        free(perm);
        return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    }
    finch_shuffle_indices(perm, n, t->cfg.seed ^ SPLIT_SEED_MIX);
    /* The held-out examples are a seeded choice; both sets stay in file order. */
    memcpy(t->eval_idx, perm, n_eval * sizeof *perm);
    qsort(t->eval_idx, n_eval, sizeof *perm, cmp_size);
    memcpy(t->train_idx, perm + n_eval, (n - n_eval) * sizeof *perm);
    qsort(t->train_idx, n - n_eval, sizeof *perm, cmp_size);
    t->n_eval = n_eval;
    t->n_train = n - n_eval;
    free(perm);
    return FINCH_OK;
}

void trainer_plan_free(finch_trainer *t)
{
    free(t->order);
    free(t->order_idx);
    t->order = NULL;
    t->order_idx = NULL;
    finch_packed_batch_free(&t->packed);
    t->plan_epoch = -1;
    t->plan_rows = 0;
}

static finch_pack_options pack_options(const finch_trainer *t, int packing)
{
    finch_pack_options po;
    memset(&po, 0, sizeof po);
    po.max_seq_length = t->cfg.max_seq_length;
    po.packing = packing;
    po.pad_id = t->cfg.pad_token_id;
    return po;
}

/* Makes the plan of `epoch` current. */
static int plan_epoch(finch_trainer *t, int64_t epoch)
{
    if (t->plan_epoch == epoch) return FINCH_OK;
    trainer_plan_free(t);
    size_t n = t->n_train;
    size_t *perm = malloc((n + 1) * sizeof *perm);
    t->order = malloc((n + 1) * sizeof *t->order);
    t->order_idx = malloc((n + 1) * sizeof *t->order_idx);
    if (!perm || !t->order || !t->order_idx) {
        free(perm);
        return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    }
    if (t->cfg.shuffle) {
        finch_shuffle_indices(perm, n, t->cfg.seed + (uint64_t)epoch * EPOCH_SEED_MIX);
    } else {
        for (size_t i = 0; i < n; i++) perm[i] = i;
    }
    for (size_t i = 0; i < n; i++) {
        t->order_idx[i] = t->train_idx[perm[i]];
        t->order[i] = *finch_train_data_example(t->data, t->order_idx[i]);
    }
    free(perm);
    t->plan_rows = (int64_t)n;
    if (t->cfg.packing) {
        finch_pack_options po = pack_options(t, 1);
        int rc = finch_pack_examples(t->order, n, &po, &t->packed, NULL);
        if (rc) return finch_error_prefix(rc, "packing epoch %lld: ", (long long)epoch);
        t->plan_rows = t->packed.rows;
    }
    t->plan_epoch = epoch;
    return FINCH_OK;
}

int trainer_epoch_rows(finch_trainer *t, int64_t epoch, int64_t *rows)
{
    int rc = plan_epoch(t, epoch);
    if (!rc) *rows = t->plan_rows;
    return rc;
}

/* Trained targets after the shift and real tokens, by the rules of finch_forward. */
static void count_tokens(trainer_micro *mb, const uint8_t *mask)
{
    const finch_batch *b = &mb->batch;
    int64_t targets = 0, tokens = 0;
    for (int64_t i = 0; i < b->batch; i++) {
        const int32_t *lab = b->labels + i * b->seq_len, *seg = b->segment_ids ? b->segment_ids + i * b->seq_len : NULL;
        for (int64_t k = 0; k + 1 < b->seq_len; k++)
            targets += lab[k + 1] != FINCH_LABEL_IGNORE && (!seg || (seg[k] >= 0 && seg[k + 1] == seg[k]));
        for (int64_t k = 0; k < b->seq_len; k++) tokens += mask[i * b->seq_len + k];
    }
    mb->targets = targets;
    mb->tokens = tokens;
}

void trainer_micro_release(trainer_micro *mb)
{
    finch_packed_batch_free(&mb->owned);
    free(mb->pixels);
    free(mb->grids);
    memset(mb, 0, sizeof *mb);
}

/* Pads examples [0, count) of ex into the micro-batch, one per row. */
static int padded_micro(finch_trainer *t, const finch_example *ex, size_t count, trainer_micro *mb)
{
    finch_pack_options po = pack_options(t, 0);
    int rc = finch_pack_examples(ex, count, &po, &mb->owned, NULL);
    if (rc) return rc;
    mb->batch.batch = mb->owned.rows;
    mb->batch.seq_len = mb->owned.seq_len;
    mb->batch.input_ids = mb->owned.input_ids;
    mb->batch.labels = mb->owned.labels;
    mb->batch.segment_ids = NULL;   /* right padding: causal attention never lets a real token see it */
    count_tokens(mb, mb->owned.attention_mask);
    return FINCH_OK;
}

int trainer_next_micro(finch_trainer *t, int64_t *epoch, int64_t *row, trainer_micro *mb)
{
    trainer_micro_release(mb);
    int rc = plan_epoch(t, *epoch);
    if (rc) return rc;
    int64_t B = t->cfg.per_device_train_batch_size, r0 = *row, r1 = r0 + B < t->plan_rows ? r0 + B : t->plan_rows;
    if (r0 >= r1) return finch_error(FINCH_ERR_STATE, "data position (epoch %lld, row %lld) is past the epoch's %lld rows",
                                     (long long)*epoch, (long long)r0, (long long)t->plan_rows);
    if (t->cfg.packing) {
        /* A copy of the rows: the step's next micro-batch may come from the next epoch's plan. */
        const finch_packed_batch *p = &t->packed;
        size_t cells = (size_t)((r1 - r0) * p->seq_len), at = (size_t)(r0 * p->seq_len);
        finch_packed_batch *o = &mb->owned;
        o->rows = r1 - r0;
        o->seq_len = p->seq_len;
        o->input_ids = malloc(cells * sizeof(int32_t));
        o->labels = malloc(cells * sizeof(int32_t));
        o->seq_ids = malloc(cells * sizeof(int32_t));
        if (!o->input_ids || !o->labels || !o->seq_ids) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
        memcpy(o->input_ids, p->input_ids + at, cells * sizeof(int32_t));
        memcpy(o->labels, p->labels + at, cells * sizeof(int32_t));
        memcpy(o->seq_ids, p->seq_ids + at, cells * sizeof(int32_t));
        mb->batch.batch = o->rows;
        mb->batch.seq_len = o->seq_len;
        mb->batch.input_ids = o->input_ids;
        mb->batch.labels = o->labels;
        mb->batch.segment_ids = o->seq_ids;
        count_tokens(mb, p->attention_mask + at);
    } else if ((rc = padded_micro(t, t->order + r0, (size_t)(r1 - r0), mb))) {
        return rc;
    }
    if ((rc = trainer_images_attach(t, *epoch, r0, r1, mb))) return rc;
    if (r1 == t->plan_rows) {
        ++*epoch;
        *row = 0;
    } else {
        *row = r1;
    }
    return FINCH_OK;
}

int trainer_eval_micro(finch_trainer *t, size_t first, size_t count, trainer_micro *mb)
{
    trainer_micro_release(mb);
    finch_example *ex = malloc((count + 1) * sizeof *ex);
    if (!ex) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    for (size_t i = 0; i < count; i++) ex[i] = *finch_train_data_example(t->data, t->eval_idx[first + i]);
    int rc = padded_micro(t, ex, count, mb);
    free(ex);
    if (!rc) rc = trainer_images_attach_examples(t, t->eval_idx + first, count, mb);
    return rc;
}
