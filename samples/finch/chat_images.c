/* Images in `finch chat` (chat_images.h). */
#include "samples/finch/chat_images.h"
#include "finch/multimodal.h"
#include "samples/finch/commands.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int chat_images_option(chat_images *ci, const char *cmd, int argc, char **argv, int *i)
{
    if (strcmp(argv[*i], "--image")) return 0;
    if (*i + 1 >= argc) {
        fprintf(stderr, "%s: --image needs a value\n", cmd);
        return -1;
    }
    if (ci->n == (int)(sizeof ci->paths / sizeof ci->paths[0])) {
        fprintf(stderr, "%s: at most %d --image\n", cmd, ci->n);
        return -1;
    }
    ci->paths[ci->n++] = argv[++*i];
    return 1;
}

int chat_images_open(chat_images *ci, gen_setup *g)
{
    if (!ci->n) return 0;
    finch_model_info info;
    if (finch_model_info_get(g->m, &info) || info.image_token_id < 0) {
        fprintf(stderr, "%s: --image needs a vision-language model (this one is %s)\n", g->cmd, info.model_type);
        return 1;
    }
    finch_qwen2vl_image_config cfg;
    if (finch_cli_image_config(g->model, NULL, &cfg) ||
        finch_cli_load_images(g->model, NULL, ci->paths, ci->n, &ci->pixels, &ci->grids, &ci->n_patches)) {
        fprintf(stderr, "%s: %s\n", g->cmd, finch_last_error());
        return 1;
    }
    ci->merge = cfg.merge_size;
    g->opts.pixel_values = ci->pixels;
    g->opts.image_grid_thw = ci->grids;
    g->opts.n_images = ci->n;
    g->opts.n_patches = ci->n_patches;
    return 0;
}

void chat_images_close(chat_images *ci)
{
    free(ci->pixels);
    free(ci->grids);
    ci->pixels = NULL;
    ci->grids = NULL;
}

char *chat_images_message(const chat_images *ci, const char *text)
{
    size_t n = strlen(FINCH_QWEN2VL_IMAGE_TEXT) * (size_t)ci->n + strlen(text) + 1;
    char *s = malloc(n);
    if (!s) return NULL;
    s[0] = 0;
    for (int k = 0; k < ci->n; k++) strcat(s, FINCH_QWEN2VL_IMAGE_TEXT);
    strcat(s, text);
    return s;
}

int chat_images_expand(const chat_images *ci, gen_setup *g, finch_tokens *ids)
{
    if (!ci->n) return 0;
    finch_model_info info;
    finch_model_info_get(g->m, &info);
    int64_t counts[16];
    for (int k = 0; k < ci->n; k++) counts[k] = (int64_t)ci->grids[3 * k] * ci->grids[3 * k + 1] * ci->grids[3 * k + 2] / (ci->merge * ci->merge);
    finch_example ex = {*ids, {0}};
    ex.labels.ids = malloc((ids->len + 1) * sizeof(int32_t));
    int rc = ex.labels.ids ? FINCH_OK : FINCH_ERR_OUT_OF_MEMORY;
    if (!rc) {
        memcpy(ex.labels.ids, ids->ids, ids->len * sizeof(int32_t));
        ex.labels.len = ex.labels.cap = ids->len;
        rc = finch_example_expand_image_tokens(&ex, info.image_token_id, counts, (size_t)ci->n);
    }
    *ids = ex.ids;
    finch_tokens_free(&ex.labels);
    if (rc) fprintf(stderr, "%s: %s\n", g->cmd, finch_last_error());
    return rc ? 1 : 0;
}
