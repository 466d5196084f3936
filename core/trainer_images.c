/* The trainer's image queue (core/trainer_images.h): one decoding thread, a bounded ring of decoded
 * images, consumed strictly in order. */
#include "core/trainer_images.h"
#include "core/error.h"
#include "core/train_data.h"
#include "core/vision_tower.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define PREFETCH_DEPTH 8   /* decoded images waiting at most */

typedef struct decoded {
    finch_image_patches p;
    int rc;
    char *msg;                 /* the worker's error message (finch_last_error is per thread) */
} decoded;

struct trainer_prefetch {
    const finch_train_data *data;
    pthread_t thread;
    int started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    size_t *jobs;              /* [n_jobs, 2]: example index, image index */
    size_t n_jobs, cap_jobs;
    size_t done, taken;        /* jobs decoded, jobs handed out; ring holds [taken, done) */
    decoded ring[PREFETCH_DEPTH];
    uint64_t generation;       /* bumped by every restart: a decode in flight for an older one is dropped */
    int stop;
    int64_t epoch, row;        /* the stream position of the next job: row `row` of epoch `epoch` */
};

static void decode(const finch_train_data *d, size_t ex, size_t k, decoded *out)
{
    memset(out, 0, sizeof *out);
    finch_image img;
    const char *path = d->images[ex].paths[k];
    out->rc = finch_image_load(path, &d->image_load, &img);
    if (!out->rc) {
        out->rc = finch_image_preprocess_qwen2vl(&img, &d->image_cfg, &out->p);
        finch_image_free(&img);
    }
    const int32_t *g = d->images[ex].grids + 3 * k;
    if (!out->rc && (out->p.grid_thw[0] != g[0] || out->p.grid_thw[1] != g[1] || out->p.grid_thw[2] != g[2])) {
        out->rc = finch_error(FINCH_ERR_STATE, "%s: decoded to a %dx%dx%d grid, its header promised %dx%dx%d (the file changed?)", path,
                              out->p.grid_thw[0], out->p.grid_thw[1], out->p.grid_thw[2], g[0], g[1], g[2]);
        finch_image_patches_free(&out->p);
    }
    if (out->rc) out->msg = strdup(finch_last_error());
}

static void decoded_free(decoded *x)
{
    finch_image_patches_free(&x->p);
    free(x->msg);
    memset(x, 0, sizeof *x);
}

static void *worker(void *arg)
{
    struct trainer_prefetch *q = arg;
    pthread_mutex_lock(&q->mu);
    for (;;) {
        while (!q->stop && (q->done == q->n_jobs || q->done - q->taken >= PREFETCH_DEPTH)) pthread_cond_wait(&q->cv, &q->mu);
        if (q->stop) break;
        size_t j = q->done, ex = q->jobs[2 * j], k = q->jobs[2 * j + 1];
        uint64_t gen = q->generation;
        pthread_mutex_unlock(&q->mu);
        decoded x;
        decode(q->data, ex, k, &x);
        pthread_mutex_lock(&q->mu);
        if (gen == q->generation) {
            q->ring[j % PREFETCH_DEPTH] = x;
            q->done++;
            pthread_cond_broadcast(&q->cv);
        } else {
            decoded_free(&x);
        }
    }
    pthread_mutex_unlock(&q->mu);
    return NULL;
}

/* Drops the queue and fills it with the images of rows [row, plan_rows) of the current plan. Called
 * with the lock held. */
static int restart(finch_trainer *t, int64_t epoch, int64_t row)
{
    struct trainer_prefetch *q = t->prefetch;
    for (size_t j = q->taken; j < q->done; j++) decoded_free(&q->ring[j % PREFETCH_DEPTH]);
    q->n_jobs = q->done = q->taken = 0;
    q->generation++;
    q->epoch = epoch;
    q->row = row;
    const finch_train_data *d = t->data;
    for (int64_t r = row; r < t->plan_rows; r++) {
        const train_images *im = &d->images[t->order_idx[r]];
        for (size_t k = 0; k < im->n; k++) {
            if (q->n_jobs == q->cap_jobs) {
                size_t cap = q->cap_jobs ? 2 * q->cap_jobs : 64;
                size_t *p = realloc(q->jobs, 2 * cap * sizeof *p);
                if (!p) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
                q->jobs = p;
                q->cap_jobs = cap;
            }
            q->jobs[2 * q->n_jobs] = t->order_idx[r];
            q->jobs[2 * q->n_jobs + 1] = k;
            q->n_jobs++;
        }
    }
    pthread_cond_broadcast(&q->cv);
    return FINCH_OK;
}

/* The next decoded image, which must be image k of example ex. Called with the lock held. */
static int take(struct trainer_prefetch *q, size_t ex, size_t k, decoded *out)
{
    if (q->taken >= q->n_jobs || q->jobs[2 * q->taken] != ex || q->jobs[2 * q->taken + 1] != k)
        return finch_error(FINCH_ERR_STATE, "image queue: expected image %zu of example %zu next", k, ex);
    while (q->taken == q->done) pthread_cond_wait(&q->cv, &q->mu);
    *out = q->ring[q->taken % PREFETCH_DEPTH];
    memset(&q->ring[q->taken % PREFETCH_DEPTH], 0, sizeof *out);
    q->taken++;
    pthread_cond_broadcast(&q->cv);
    return FINCH_OK;
}

/* ---- filling micro-batches -------------------------------------------------------------------- */

/* Sizes mb's buffers for the images of examples idx[0..n). */
static int alloc_images(finch_trainer *t, const size_t *idx, size_t n, trainer_micro *mb)
{
    const finch_train_data *d = t->data;
    const finch_qwen2vl_image_config *c = &d->image_cfg;
    int64_t images = 0, patches = 0, patch_dim = 3ll * c->temporal_patch_size * c->patch_size * c->patch_size;
    for (size_t i = 0; i < n; i++) {
        const train_images *im = &d->images[idx[i]];
        images += (int64_t)im->n;
        for (size_t k = 0; k < im->n; k++) patches += (int64_t)im->grids[3 * k] * im->grids[3 * k + 1] * im->grids[3 * k + 2];
    }
    if (!images) return FINCH_OK;
    mb->pixels = malloc((size_t)(patches * patch_dim) * sizeof *mb->pixels);
    mb->grids = malloc((size_t)(3 * images) * sizeof *mb->grids);
    if (!mb->pixels || !mb->grids)
        return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory for %lld image patches", (long long)patches);
    mb->batch.pixel_values = mb->pixels;
    mb->batch.image_grid_thw = mb->grids;
    mb->batch.n_images = images;
    mb->batch.n_patches = patches;
    mb->batch.text_positions = 0;
    return FINCH_OK;
}

/* Appends image number `at` (its patches at patch row *row) to mb. */
static int put(trainer_micro *mb, int64_t at, int64_t *row, decoded *x)
{
    if (x->rc) return finch_error(x->rc, "%s", x->msg ? x->msg : "image decoding failed");
    memcpy(mb->pixels + *row * x->p.patch_dim, x->p.pixel_values, (size_t)(x->p.num_patches * x->p.patch_dim) * sizeof(float));
    memcpy(mb->grids + 3 * at, x->p.grid_thw, 3 * sizeof(int32_t));
    *row += x->p.num_patches;
    return FINCH_OK;
}

int trainer_images_attach(finch_trainer *t, int64_t epoch, int64_t r0, int64_t r1, trainer_micro *mb)
{
    struct trainer_prefetch *q = t->prefetch;
    if (!q) return FINCH_OK;
    int rc = alloc_images(t, t->order_idx + r0, (size_t)(r1 - r0), mb);
    pthread_mutex_lock(&q->mu);
    if (!rc && (q->epoch != epoch || q->row != r0)) rc = restart(t, epoch, r0);
    int64_t at = 0, row = 0;
    for (int64_t r = r0; !rc && r < r1; r++) {
        size_t ex = t->order_idx[r];
        for (size_t k = 0; !rc && k < t->data->images[ex].n; k++) {
            decoded x;
            if (!(rc = take(q, ex, k, &x))) rc = put(mb, at++, &row, &x);
            decoded_free(&x);
        }
    }
    if (rc) q->epoch = -1;   /* whatever happens next starts the queue again */
    else q->row = r1;
    pthread_mutex_unlock(&q->mu);
    return rc;
}

int trainer_images_attach_examples(finch_trainer *t, const size_t *idx, size_t n, trainer_micro *mb)
{
    if (!t->prefetch) return FINCH_OK;
    int rc = alloc_images(t, idx, n, mb);
    int64_t at = 0, row = 0;
    for (size_t i = 0; !rc && i < n; i++)
        for (size_t k = 0; !rc && k < t->data->images[idx[i]].n; k++) {
            decoded x;
            decode(t->data, idx[i], k, &x);
            rc = put(mb, at++, &row, &x);
            decoded_free(&x);
        }
    return rc;
}

/* ---- open / close --------------------------------------------------------------------------- */

static int check(const finch_trainer *t)
{
    const finch_train_data *d = t->data;
    const finch_vision *v = t->m->vision;
    if (!v)
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "the training data has images, but model_type '%s' has no vision tower",
                           t->m->cfg.model_type);
    if (v->cfg.image_token_id != d->image_token_id)
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "the data's image pad token has id %d, the model's image_token_id is %d",
                           d->image_token_id, v->cfg.image_token_id);
    const finch_qwen2vl_image_config *c = &d->image_cfg;
    if (c->patch_size != v->cfg.patch_size || c->merge_size != v->cfg.merge_size || c->temporal_patch_size != v->cfg.temporal_patch_size)
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "the image preprocessing (patch %d, merge %d, temporal %d) does not match the "
                           "model's vision_config (patch %lld, merge %lld, temporal %lld)", c->patch_size, c->merge_size,
                           c->temporal_patch_size, (long long)v->cfg.patch_size, (long long)v->cfg.merge_size,
                           (long long)v->cfg.temporal_patch_size);
    if (t->cfg.packing)
        return finch_error(FINCH_ERR_UNSUPPORTED, "packing is not supported with image data (set packing 0)");
    /* A truncated example must keep all of its image tokens, or its images would not match them. */
    for (size_t i = 0; i < d->n; i++) {
        if (!d->images[i].n) continue;
        const finch_example *e = &d->ex[i];
        size_t last = 0;
        for (size_t p = 0; p < e->ids.len; p++)
            if (e->ids.ids[p] == d->image_token_id) last = p;
        if ((int64_t)last >= t->cfg.max_seq_length)
            return finch_error(FINCH_ERR_INVALID_ARGUMENT, "example %zu: its image tokens reach position %zu, past max_seq_length %lld "
                               "(raise max_seq_length, or lower the images' max_pixels)", i, last, (long long)t->cfg.max_seq_length);
    }
    return FINCH_OK;
}

int trainer_images_open(finch_trainer *t)
{
    if (!t->data->images) return FINCH_OK;
    int rc = check(t);
    if (rc) return rc;
    struct trainer_prefetch *q = calloc(1, sizeof *q);
    if (!q) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    q->data = t->data;
    q->epoch = -1;
    pthread_mutex_init(&q->mu, NULL);
    pthread_cond_init(&q->cv, NULL);
    t->prefetch = q;
    if (pthread_create(&q->thread, NULL, worker, q)) return finch_error(FINCH_ERR_STATE, "cannot start the image decoding thread");
    q->started = 1;
    return FINCH_OK;
}

void trainer_images_close(finch_trainer *t)
{
    struct trainer_prefetch *q = t->prefetch;
    if (!q) return;
    pthread_mutex_lock(&q->mu);
    q->stop = 1;
    pthread_cond_broadcast(&q->cv);
    pthread_mutex_unlock(&q->mu);
    if (q->started) pthread_join(q->thread, NULL);
    for (size_t j = q->taken; j < q->done; j++) decoded_free(&q->ring[j % PREFETCH_DEPTH]);
    pthread_mutex_destroy(&q->mu);
    pthread_cond_destroy(&q->cv);
    free(q->jobs);
    free(q);
    t->prefetch = NULL;
}
