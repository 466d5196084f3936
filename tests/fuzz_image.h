/* The image decoder's fuzz check, shared by the libFuzzer target (fuzz_image_decode, FINCH_FUZZ=ON)
 * and the deterministic mutation test that always runs in CTest (test_image_mutations). */
#ifndef FINCH_TESTS_FUZZ_IMAGE_H
#define FINCH_TESTS_FUZZ_IMAGE_H

#include <stddef.h>

#define FUZZ_IMAGE_NAME "fuzz-input"
#define FUZZ_IMAGE_MAX_PIXELS (1 << 22)

/* Decodes data (named FUZZ_IMAGE_NAME, pixel limit FUZZ_IMAGE_MAX_PIXELS) and, if it decodes, runs the
 * Qwen2-VL preprocessing on it. Returns the finch status of the decode, or -1 when an invariant broke
 * (a status outside the documented ones, an error without a message naming the input, output left
 * set after a failure, impossible dimensions, non-finite pixel values), with why filled in. */
int fuzz_image_check(const unsigned char *data, size_t size, char *why, size_t why_len);

#endif
