/* Training data in memory: tokenized examples (ids + unshifted labels) from a JSONL dataset, from a
 * pre-tokenized safetensors file, or copied from the caller. The trainer orders and packs them. */
#include "core/error.h"
#include "core/safetensors.h"
#include "core/train_data.h"

#include <stdlib.h>
#include <string.h>

int train_data_new(finch_train_data **out)
{
    *out = calloc(1, sizeof **out);
    if (!*out) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    (*out)->image_token_id = -1;
    return FINCH_OK;
}

void train_images_free(train_images *img)
{
    if (!img) return;
    for (size_t i = 0; i < img->n; i++) free(img->paths[i]);
    free(img->paths);
    free(img->grids);
    memset(img, 0, sizeof *img);
}

int train_data_push(finch_train_data *d, finch_example *ex, train_images *img)
{
    if (d->n == d->cap || (img && !d->images)) {
        size_t cap = d->n == d->cap ? (d->cap ? d->cap * 2 : 64) : d->cap;
        finch_example *p = realloc(d->ex, cap * sizeof *p);
        if (!p) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
        d->ex = p;
        if (img || d->images) {
            train_images *q = realloc(d->images, cap * sizeof *q);
            if (!q) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
            size_t old = d->images ? d->cap : 0;
            memset(q + old, 0, (cap - old) * sizeof *q);
            d->images = q;
        }
        d->cap = cap;
    }
    if (img) {
        d->images[d->n] = *img;
        memset(img, 0, sizeof *img);
    }
    d->ex[d->n++] = *ex;
    memset(ex, 0, sizeof *ex);
    return FINCH_OK;
}

static int tokens_copy(finch_tokens *dst, const int32_t *src, size_t n)
{
    dst->ids = malloc((n ? n : 1) * sizeof(int32_t));
    if (!dst->ids) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    if (n) memcpy(dst->ids, src, n * sizeof(int32_t));
    dst->len = dst->cap = n;
    return FINCH_OK;
}

size_t finch_train_data_count(const finch_train_data *d) { return d ? d->n : 0; }

const finch_example *finch_train_data_example(const finch_train_data *d, size_t i)
{
    return d && i < d->n ? &d->ex[i] : NULL;
}

void finch_train_data_free(finch_train_data *d)
{
    if (!d) return;
    for (size_t i = 0; i < d->n; i++) {
        finch_example_free(&d->ex[i]);
        if (d->images) train_images_free(&d->images[i]);
    }
    free(d->ex);
    free(d->images);
    free(d->image_text);
    free(d);
}

finch_status finch_train_data_from_examples(const finch_example *examples, size_t n, finch_train_data **out)
{
    if (!out || (!examples && n)) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_train_data_from_examples: NULL argument");
    *out = NULL;
    finch_train_data *d;
    int rc = train_data_new(&d);
    for (size_t i = 0; !rc && i < n; i++) {
        const finch_example *e = &examples[i];
        if (e->ids.len != e->labels.len || !e->ids.len) {
            rc = finch_error(FINCH_ERR_INVALID_ARGUMENT, "example %zu has %zu ids and %zu labels (equal and non-zero needed)", i,
                             e->ids.len, e->labels.len);
            break;
        }
        finch_example c;
        memset(&c, 0, sizeof c);
        rc = tokens_copy(&c.ids, e->ids.ids, e->ids.len);
        if (!rc) rc = tokens_copy(&c.labels, e->labels.ids, e->labels.len);
        if (!rc) rc = train_data_push(d, &c, NULL);
        finch_example_free(&c);
    }
    if (rc) {
        finch_train_data_free(d);
        return rc;
    }
    *out = d;
    return FINCH_OK;
}

finch_status finch_train_data_from_safetensors(const char *path, finch_train_data **out)
{
    if (!path || !out) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_train_data_from_safetensors: NULL argument");
    *out = NULL;
    st_set *set = NULL;
    int rc = st_set_open_file(path, &set);
    if (rc) return rc;
    const st_tensor *ids = st_set_find(set, "input_ids"), *labels = st_set_find(set, "labels");
    int32_t *iv = NULL, *lv = NULL;
    finch_train_data *d = NULL;
    if (!ids) rc = finch_error(FINCH_ERR_FORMAT, "%s: no tensor 'input_ids'", path);
    else if (ids->ndim != 2 || ids->shape[0] < 1 || ids->shape[1] < 2)
        rc = finch_error(FINCH_ERR_FORMAT, "%s: 'input_ids' must be [N, T] with N >= 1, T >= 2", path);
    else if (labels && (labels->ndim != 2 || labels->shape[0] != ids->shape[0] || labels->shape[1] != ids->shape[1]))
        rc = finch_error(FINCH_ERR_FORMAT, "%s: 'labels' must have the shape of 'input_ids' [%lld, %lld]", path,
                         (long long)ids->shape[0], (long long)ids->shape[1]);
    if (!rc) {
        iv = malloc((size_t)ids->numel * sizeof(int32_t));
        lv = malloc((size_t)ids->numel * sizeof(int32_t));
        if (!iv || !lv) rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    }
    if (!rc && (rc = st_to_i32(ids, iv))) finch_error_prefix(rc, "%s: 'input_ids': ", path);
    if (!rc && labels && (rc = st_to_i32(labels, lv))) finch_error_prefix(rc, "%s: 'labels': ", path);
    if (!rc && !labels) memcpy(lv, iv, (size_t)ids->numel * sizeof(int32_t));
    if (!rc) rc = train_data_new(&d);
    int64_t N = rc ? 0 : ids->shape[0], T = rc ? 0 : ids->shape[1];
    for (int64_t r = 0; !rc && r < N; r++) {
        finch_example c;
        memset(&c, 0, sizeof c);
        rc = tokens_copy(&c.ids, iv + r * T, (size_t)T);
        if (!rc) rc = tokens_copy(&c.labels, lv + r * T, (size_t)T);
        if (!rc) rc = train_data_push(d, &c, NULL);
        finch_example_free(&c);
    }
    free(iv);
    free(lv);
    st_set_close(set);
    if (rc) {
        finch_train_data_free(d);
        return rc;
    }
    *out = d;
    return FINCH_OK;
}

int train_data_load_jsonl(const char *path, const finch_tokenizer *tok, const finch_chat_template *tmpl,
                          const finch_dataset_options *dataset, const finch_label_options *labels,
                          const finch_image_data_options *images, finch_train_data **out)
{
    if (!path || !tok || !out) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_train_data_from_jsonl: NULL argument");
    *out = NULL;
    finch_dataset_options dopts = dataset ? *dataset : finch_dataset_options_default();
    finch_label_options lopts = labels ? *labels : finch_label_options_default();
    finch_chat_options chat = finch_chat_options_for(tok);
    finch_dataset *ds = NULL;
    finch_train_data *d = NULL;
    int rc = finch_dataset_open(path, &dopts, &ds);
    if (!rc) rc = train_data_new(&d);
    if (!rc && images) rc = train_data_vl_begin(d, tok, images);
    for (int has = 1; !rc;) {
        finch_record rec;
        if ((rc = finch_dataset_next(ds, &rec, &has)) || !has) break;
        finch_example ex;
        train_images img;
        memset(&ex, 0, sizeof ex);
        memset(&img, 0, sizeof img);
        if (rec.text) {
            rc = finch_example_from_text(tok, rec.text, rec.text_len, &lopts, &ex);
        } else if (!tmpl) {
            rc = finch_error(FINCH_ERR_INVALID_ARGUMENT, "%s:%lld: a conversation, but no chat template was given", path,
                             (long long)rec.line);
        } else if (images) {
            rc = train_data_vl_example(d, path, tok, tmpl, rec.messages_json, &chat, &lopts, &ex, &img);
        } else {
            rc = finch_example_from_chat(tok, tmpl, rec.messages_json, &chat, &lopts, &ex);
        }
        if (rc && rc != FINCH_ERR_OUT_OF_MEMORY && dopts.bad_lines == FINCH_BAD_LINE_SKIP) {
            rc = FINCH_OK;  /* skipped, as the skip policy skips bad JSON lines */
        } else if (rc) {
            finch_error_prefix(rc, "%s:%lld: ", path, (long long)rec.line);
        } else {
            rc = train_data_push(d, &ex, images ? &img : NULL);
        }
        finch_example_free(&ex);
        train_images_free(&img);
    }
    if (!rc && d->n == 0) rc = finch_error(FINCH_ERR_FORMAT, "%s: no usable example", path);
    finch_dataset_close(ds);
    if (rc) {
        finch_train_data_free(d);
        return rc;
    }
    *out = d;
    return FINCH_OK;
}

finch_status finch_train_data_from_jsonl(const char *path, const finch_tokenizer *tok, const finch_chat_template *tmpl,
                                         const finch_dataset_options *dataset, const finch_label_options *labels,
                                         finch_train_data **out)
{
    return train_data_load_jsonl(path, tok, tmpl, dataset, labels, NULL, out);
}
