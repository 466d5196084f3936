/* Qwen2-VL image preprocessing (finch_image_preprocess_qwen2vl and its config) and the pieces it is
 * built from, exposed for tests: Python's round(), smart_resize, and PIL's bicubic resampler. */
#ifndef FINCH_CORE_IMAGE_PREPROCESS_H
#define FINCH_CORE_IMAGE_PREPROCESS_H

#include "finch/vision.h"

/* Python 3's round(x) for a float: nearest integer, ties to even. */
double python_round(double x);

/* transformers' smart_resize(height, width, factor, min_pixels, max_pixels): both sides become
 * multiples of factor with an area within [min_pixels, max_pixels] and about the same aspect ratio.
 * Fails (FINCH_ERR_UNSUPPORTED) when the aspect ratio exceeds 200, as transformers does; name is the
 * image in messages. */
int qwen2vl_smart_resize(const char *name, long long height, long long width, int factor,
                         long long min_pixels, long long max_pixels, int *out_height, int *out_width);

/* Resizes 8-bit RGB exactly as Pillow's Image.resize(..., BICUBIC) does for an "RGB" image: separable
 * a = -0.5 cubic widened by the scale when shrinking, 22-bit fixed-point weights, a horizontal pass
 * rounded to 8 bits, then a vertical pass (a pass is skipped when its side is unchanged). */
int image_resize_bicubic(const unsigned char *src, int width, int height,
                         unsigned char *dst, int out_width, int out_height);

#endif
