/* Test helper: encodes pixels to PNG/BMP/TGA/JPEG bytes in memory with libstb's stb_image_write. */
#ifndef FINCH_TESTS_IMAGE_ENCODE_H
#define FINCH_TESTS_IMAGE_ENCODE_H

#include <stb/stb_image_write.h>

#include <stdlib.h>
#include <string.h>

typedef struct encoded_image {
    unsigned char *bytes;
    size_t size, cap;
    int failed;
} encoded_image;

static void encoded_image_put(void *ctx, void *data, int n)
{
    encoded_image *e = ctx;
    if (e->failed || n <= 0) return;
    if (e->size + (size_t)n > e->cap) {
        size_t cap = (e->size + (size_t)n) * 2;
        unsigned char *p = realloc(e->bytes, cap);
        if (!p) { e->failed = 1; return; }
        e->bytes = p;
        e->cap = cap;
    }
    memcpy(e->bytes + e->size, data, (size_t)n);
    e->size += (size_t)n;
}

/* kind: "png", "bmp", "tga" or "jpg" (quality 95). Returns malloc'd bytes (*size set), NULL on failure. */
static inline unsigned char *encode_image(const char *kind, int w, int h, int comp, const unsigned char *pixels,
                                          size_t *size)
{
    encoded_image e = {0};
    int ok = 0;
    if (!strcmp(kind, "png")) ok = stbi_write_png_to_func(encoded_image_put, &e, w, h, comp, pixels, w * comp);
    else if (!strcmp(kind, "bmp")) ok = stbi_write_bmp_to_func(encoded_image_put, &e, w, h, comp, pixels);
    else if (!strcmp(kind, "tga")) ok = stbi_write_tga_to_func(encoded_image_put, &e, w, h, comp, pixels);
    else if (!strcmp(kind, "jpg")) ok = stbi_write_jpg_to_func(encoded_image_put, &e, w, h, comp, pixels, 95);
    if (!ok || e.failed) {
        free(e.bytes);
        return NULL;
    }
    *size = e.size;
    return e.bytes;
}

#endif
