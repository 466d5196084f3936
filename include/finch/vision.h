/* finch — images for vision-language models: decoding and Qwen2-VL preprocessing.
 *
 *     finch_image img;
 *     finch_image_load("photo.jpg", NULL, &img);               // decoded to 8-bit RGB
 *     finch_qwen2vl_image_config cfg;
 *     finch_qwen2vl_image_config_load("model/preprocessor_config.json", &cfg);
 *     finch_image_patches p;
 *     finch_image_preprocess_qwen2vl(&img, &cfg, &p);          // p.pixel_values [num_patches, patch_dim]
 *     ...
 *     finch_image_patches_free(&p);
 *     finch_image_free(&img);
 *
 * Decoding (stb_image, from Debian's libstb) reads PNG, JPEG, BMP, GIF (first frame) and TGA; the other
 * formats stb knows (PSD, HDR, PIC, PNM) are refused. The image's dimensions are read from its header
 * and checked against a pixel limit before any pixel memory is allocated. 16-bit PNGs are reduced to
 * 8 bits. EXIF orientation is not applied (Hugging Face processors do not apply it either). */
#ifndef FINCH_VISION_H
#define FINCH_VISION_H

#include "finch/types.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Images with more pixels than this are refused unless the caller raises the limit. */
#define FINCH_IMAGE_DEFAULT_MAX_PIXELS (64ll * 1000 * 1000)

typedef struct finch_image {
    int width, height;
    unsigned char *rgb;       /* height rows of width pixels, 3 bytes each (R, G, B) */
    char *source;             /* the file name (or the name given for a memory buffer), for messages */
} finch_image;

typedef struct finch_image_load_options {
    long long max_pixels;     /* refuse width*height above this; 0 = FINCH_IMAGE_DEFAULT_MAX_PIXELS */
    int alpha_on_white;       /* 0: drop alpha (PIL's convert("RGB"), what HF processors do);
                               * 1: composite transparent pixels over white (what qwen-vl-utils does) */
} finch_image_load_options;

/* Decodes a file (opts may be NULL). Errors name the file: FINCH_ERR_IO (missing, unreadable),
 * FINCH_ERR_FORMAT (not an image, truncated, corrupt, zero-sized), FINCH_ERR_UNSUPPORTED (over the
 * pixel limit, dimensions the decoder cannot handle, or a format other than those above). On failure
 * *out is zeroed and owns nothing. */
finch_status finch_image_load(const char *path, const finch_image_load_options *opts, finch_image *out);
/* The same from bytes in memory; name is used in messages (NULL = "<memory>"). */
finch_status finch_image_load_memory(const void *data, size_t size, const char *name,
                                     const finch_image_load_options *opts, finch_image *out);
void finch_image_free(finch_image *img);
/* The width and height of an image file from its header, after the checks finch_image_load makes
 * before decoding (format, pixel limit); no pixel is decoded. */
finch_status finch_image_info(const char *path, const finch_image_load_options *opts, int *width, int *height);

/* Qwen2-VL / Qwen2.5-VL image processor settings, as in preprocessor_config.json. */
typedef struct finch_qwen2vl_image_config {
    long long min_pixels, max_pixels; /* size.shortest_edge / size.longest_edge (or min_pixels/max_pixels) */
    int patch_size;           /* 14 */
    int temporal_patch_size;  /* 2: a still image is repeated to this many frames */
    int merge_size;           /* 2: the resized sides are multiples of patch_size * merge_size */
    int do_resize, do_rescale, do_normalize;
    int resample;             /* PIL filter code; 3 (bicubic) is the one supported */
    double rescale_factor;    /* 1/255 */
    float image_mean[3], image_std[3];
} finch_qwen2vl_image_config;

/* Transformers' class defaults (min 56*56, max 28*28*1280 pixels, CLIP mean/std, bicubic). */
finch_qwen2vl_image_config finch_qwen2vl_image_config_default(void);
/* Reads preprocessor_config.json (path of the file, or of a model directory holding it); keys that
 * are absent keep the defaults. Top-level min_pixels/max_pixels override size.{shortest,longest}_edge. */
finch_status finch_qwen2vl_image_config_load(const char *path, finch_qwen2vl_image_config *out);

typedef struct finch_image_patches {
    float *pixel_values;      /* [num_patches, patch_dim], row-major */
    long long num_patches;    /* grid_thw[0] * grid_thw[1] * grid_thw[2] */
    long long patch_dim;      /* 3 * temporal_patch_size * patch_size * patch_size (1176) */
    int grid_thw[3];          /* frames / temporal_patch_size, height / patch_size, width / patch_size */
} finch_image_patches;

/* smart_resize + bicubic resize + rescale + normalise + patchify, matching transformers'
 * Qwen2VLImageProcessor: rows are ordered (t, row of merge windows, column of merge windows, 2x2 cell
 * row-major); each row holds (channel, frame, y, x). On failure *out is zeroed. */
finch_status finch_image_preprocess_qwen2vl(const finch_image *img, const finch_qwen2vl_image_config *cfg,
                                            finch_image_patches *out);
void finch_image_patches_free(finch_image_patches *p);
/* The grid_thw finch_image_preprocess_qwen2vl gives an image of width x height (a still image: one
 * frame), without its pixels: the image takes grid_thw[1] * grid_thw[2] / merge_size^2 tokens. */
finch_status finch_qwen2vl_image_grid(const finch_qwen2vl_image_config *cfg, const char *name, int width, int height, int grid_thw[3]);

#ifdef __cplusplus
}
#endif

#endif
