/* Images for a vision-language model, as the finch commands take them (--image PATH, repeatable):
 * decoded and preprocessed with the model's preprocessor_config.json into the batch's pixel values
 * and grids. */
#include "core/error.h"
#include "finch/finch.h"
#include "samples/finch/commands.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int finch_cli_image_config(const char *model_dir, const char *processor, finch_qwen2vl_image_config *cfg)
{
    *cfg = finch_qwen2vl_image_config_default();
    char path[4096];
    snprintf(path, sizeof path, "%s/preprocessor_config.json", model_dir);
    if (!processor && access(path, R_OK) == 0) processor = path;
    return processor ? finch_qwen2vl_image_config_load(processor, cfg) : FINCH_OK;
}

int finch_cli_load_images(const char *model_dir, const char *processor, const char *const *paths, int n, float **pixels,
                          int32_t **grids, int64_t *n_patches)
{
    *pixels = NULL;
    *grids = NULL;
    *n_patches = 0;
    finch_qwen2vl_image_config cfg;
    int rc = finch_cli_image_config(model_dir, processor, &cfg);
    int32_t *g = calloc((size_t)n * 3 + 1, sizeof *g);
    if (!rc && !g) rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    float *all = NULL;
    size_t used = 0;
    for (int i = 0; !rc && i < n; i++) {
        finch_image img;
        finch_image_patches p;
        if ((rc = finch_image_load(paths[i], NULL, &img))) break;
        rc = finch_image_preprocess_qwen2vl(&img, &cfg, &p);
        finch_image_free(&img);
        if (rc) break;
        size_t count = (size_t)(p.num_patches * p.patch_dim);
        float *grown = realloc(all, (used + count) * sizeof *all);
        if (!grown) {
            finch_image_patches_free(&p);
            rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory for %s", paths[i]);
            break;
        }
        all = grown;
        memcpy(all + used, p.pixel_values, count * sizeof *all);
        used += count;
        memcpy(g + 3 * i, p.grid_thw, 3 * sizeof *g);
        *n_patches += p.num_patches;
        finch_image_patches_free(&p);
    }
    if (rc) {
        free(all);
        free(g);
        *n_patches = 0;
        return rc;
    }
    *pixels = all;
    *grids = g;
    return FINCH_OK;
}
