/* Fuzz target for the image decoder: libFuzzer's entry point when built with FINCH_FUZZ_ENTRY
 * (tests/CMakeLists.txt, FINCH_FUZZ=ON, clang), and the check itself, which test_image_mutations also
 * runs over deterministic mutations of real images. */
#include "finch/finch.h"
#include "finch/vision.h"
#include "tests/fuzz_image.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

static int check_patches(const finch_image *img, char *why, size_t why_len)
{
    finch_qwen2vl_image_config cfg = finch_qwen2vl_image_config_default();
    cfg.max_pixels = 28 * 28 * 16;   /* keep each run small; the resampler still sees the whole image */
    finch_image_patches p;
    int rc = finch_image_preprocess_qwen2vl(img, &cfg, &p);
    if (rc == FINCH_ERR_UNSUPPORTED && strstr(finch_last_error(), "aspect ratio")) return 0;
    if (rc != FINCH_OK) {
        snprintf(why, why_len, "preprocessing a decoded %dx%d image failed: %s", img->width, img->height,
                 finch_last_error());
        return -1;
    }
    /* The area can leave [min_pixels, max_pixels] at extreme aspect ratios (transformers' rounding does
     * the same), so only the grid's shape is checked. */
    int bad = p.num_patches != (long long)p.grid_thw[0] * p.grid_thw[1] * p.grid_thw[2] || p.patch_dim != 1176 ||
              p.grid_thw[0] != 1 || p.grid_thw[1] % 2 || p.grid_thw[2] % 2 || p.num_patches * 196 < cfg.min_pixels;
    for (long long i = 0; !bad && i < p.num_patches * p.patch_dim; i++)
        bad = !isfinite(p.pixel_values[i]) || fabsf(p.pixel_values[i]) > 2.5f;
    if (bad) snprintf(why, why_len, "bad patches from a %dx%d image: grid %d,%d,%d", img->width, img->height,
                      p.grid_thw[0], p.grid_thw[1], p.grid_thw[2]);
    finch_image_patches_free(&p);
    return bad ? -1 : 0;
}

int fuzz_image_check(const unsigned char *data, size_t size, char *why, size_t why_len)
{
    finch_image_load_options opts = {.max_pixels = FUZZ_IMAGE_MAX_PIXELS, .alpha_on_white = (int)(size & 1)};
    finch_image img;
    int rc = finch_image_load_memory(data, size, FUZZ_IMAGE_NAME, &opts, &img);
    if (rc != FINCH_OK) {
        const char *msg = finch_last_error();
        if (rc != FINCH_ERR_FORMAT && rc != FINCH_ERR_UNSUPPORTED && rc != FINCH_ERR_OUT_OF_MEMORY) {
            snprintf(why, why_len, "unexpected status %d: %s", rc, msg);
            return -1;
        }
        if (strstr(msg, FUZZ_IMAGE_NAME) == NULL) {
            snprintf(why, why_len, "error message does not name the input: '%s'", msg);
            return -1;
        }
        if (img.rgb || img.source || img.width || img.height) {
            snprintf(why, why_len, "output left set after error %d", rc);
            return -1;
        }
        return rc;
    }
    int bad = 0;
    if (img.width <= 0 || img.height <= 0 || (long long)img.width * img.height > FUZZ_IMAGE_MAX_PIXELS || !img.rgb ||
        !img.source || strcmp(img.source, FUZZ_IMAGE_NAME) != 0) {
        snprintf(why, why_len, "decoded image with impossible fields %dx%d", img.width, img.height);
        bad = 1;
    }
    if (!bad) {
        /* Touch every byte so that a short buffer shows up under ASan. */
        unsigned sum = 0;
        for (size_t i = 0; i < (size_t)img.width * img.height * 3; i++) sum += img.rgb[i];
        (void)sum;
        bad = check_patches(&img, why, why_len) != 0;
    }
    finch_image_free(&img);
    return bad ? -1 : FINCH_OK;
}

#ifdef FINCH_FUZZ_ENTRY
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char why[512];
    if (fuzz_image_check(data, size, why, sizeof why) < 0) {
        fprintf(stderr, "fuzz_image_decode: %s\n", why);
        __builtin_trap();
    }
    return 0;
}
#endif
