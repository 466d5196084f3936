/* Training data with images (multimodal.h): conversations whose image parts become the chat
 * template's image text, each image's grid read from its header, and its pad token repeated once per
 * merged patch. The pixels are decoded later, by the trainer (core/trainer_images.c). */
#include "core/error.h"
#include "core/train_data.h"

#include <stdlib.h>
#include <string.h>

finch_image_data_options finch_image_data_options_default(void)
{
    finch_image_data_options o;
    memset(&o, 0, sizeof o);
    o.image = finch_qwen2vl_image_config_default();
    return o;
}

int train_data_vl_begin(finch_train_data *d, const finch_tokenizer *tok, const finch_image_data_options *images)
{
    const char *pad = images->image_pad ? images->image_pad : FINCH_QWEN2VL_IMAGE_PAD;
    const char *text = images->image_text ? images->image_text : FINCH_QWEN2VL_IMAGE_TEXT;
    if (!strstr(text, pad))
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "image text '%s' does not hold the image pad token '%s'", text, pad);
    int32_t id = finch_tokenizer_token_to_id(tok, pad);
    if (id < 0) return finch_error(FINCH_ERR_FORMAT, "the tokenizer has no image pad token '%s'", pad);
    d->image_cfg = images->image;
    d->image_load = images->load;
    d->image_token_id = id;
    if (!(d->image_text = strdup(text))) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    return FINCH_OK;
}

/* The folder of the JSONL file ("" for a bare file name: paths stay relative to the working folder). */
static char *folder_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    size_t n = slash ? (size_t)(slash - path) + (slash == path) : 0;
    char *dir = malloc(n + 1);
    if (dir) {
        memcpy(dir, path, n);
        dir[n] = 0;
    }
    return dir;
}

int train_data_vl_example(const finch_train_data *d, const char *jsonl_path, const finch_tokenizer *tok, const finch_chat_template *tmpl,
                          const char *messages_json, const finch_chat_options *chat, const finch_label_options *labels,
                          finch_example *ex, train_images *img)
{
    char *dir = folder_of(jsonl_path), *msgs = NULL, **paths = NULL;
    size_t n = 0;
    if (!dir) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    int rc = finch_messages_extract_images(messages_json, dir, d->image_text, &msgs, &paths, &n);
    free(dir);
    if (!rc) rc = finch_example_from_chat(tok, tmpl, msgs, chat, labels, ex);
    finch_data_free(msgs);
    int32_t *grids = rc ? NULL : malloc((3 * n + 1) * sizeof *grids);
    int64_t *counts = rc ? NULL : malloc((n + 1) * sizeof *counts);
    if (!rc && (!grids || !counts)) rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    const int64_t merge2 = (int64_t)d->image_cfg.merge_size * d->image_cfg.merge_size;
    for (size_t k = 0; !rc && k < n; k++) {
        int w, h, g[3];
        if (!(rc = finch_image_info(paths[k], &d->image_load, &w, &h)) &&
            !(rc = finch_qwen2vl_image_grid(&d->image_cfg, paths[k], w, h, g))) {
            memcpy(grids + 3 * k, g, sizeof g);
            counts[k] = (int64_t)g[0] * g[1] * g[2] / merge2;
        }
    }
    if (!rc) rc = finch_example_expand_image_tokens(ex, d->image_token_id, counts, n);
    free(counts);
    if (rc) {
        free(grids);
        finch_image_paths_free(paths, n);
        finch_example_free(ex);
        return rc;
    }
    img->paths = paths;
    img->grids = grids;
    img->n = n;
    return FINCH_OK;
}

finch_status finch_train_data_from_jsonl_images(const char *path, const finch_tokenizer *tok, const finch_chat_template *tmpl,
                                                const finch_dataset_options *dataset, const finch_label_options *labels,
                                                const finch_image_data_options *images, finch_train_data **out)
{
    finch_image_data_options o = images ? *images : finch_image_data_options_default();
    if (!tmpl) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_train_data_from_jsonl_images: a chat template is needed");
    return train_data_load_jsonl(path, tok, tmpl, dataset, labels, &o, out);
}

size_t finch_train_data_image_count(const finch_train_data *d, size_t i)
{
    return d && d->images && i < d->n ? d->images[i].n : 0;
}

finch_status finch_train_data_image(const finch_train_data *d, size_t i, size_t k, const char **path, int32_t grid_thw[3])
{
    if (!d || i >= d->n || k >= finch_train_data_image_count(d, i))
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_train_data_image: no image %zu of example %zu", k, i);
    if (path) *path = d->images[i].paths[k];
    if (grid_thw) memcpy(grid_thw, d->images[i].grids + 3 * k, 3 * sizeof *grid_thw);
    return FINCH_OK;
}
