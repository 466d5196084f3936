/* The image decoder's fuzz check over a fixed set of mutations, so that CI exercises it without
 * libFuzzer: every truncation of image0.png, and thousands of seeded random byte flips, field
 * overwrites, insertions and truncations of image0 as PNG, JPEG, BMP and TGA, and of a tiny GIF. Every input must
 * either decode to a sane image or fail with a documented status and a message naming it. */
#include "finch/finch.h"
#include "finch/vision.h"
#include "tests/fuzz_image.h"
#include "tests/image_encode.h"
#include "tests/testing.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MUTATIONS_PER_SEED 2500

static uint64_t rng_state = 0x243f6a8885a308d3ull;

static uint32_t rnd(uint32_t n)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)((rng_state >> 16) % n);
}

static int counts[16], decoded, violations;

static int run(const unsigned char *data, size_t size, const char *what)
{
    char why[512];
    int rc = fuzz_image_check(data, size, why, sizeof why);
    if (rc < 0) {
        violations++;
        CHECK(0, "%s (%zu bytes): %s", what, size, why);
        return rc;
    }
    if (rc == FINCH_OK) decoded++;
    counts[rc & 15]++;
    return rc;
}

/* One random mutation of seed into buf (capacity cap); returns the new size. */
static size_t mutate(const unsigned char *seed, size_t n, unsigned char *buf, size_t cap)
{
    memcpy(buf, seed, n);
    size_t size = n;
    int ops = 1 + (int)rnd(3);
    for (int k = 0; k < ops && size > 0; k++) {
        switch (rnd(5)) {
        case 0:   /* flip a few random bytes */
            for (int i = 0, m = 1 + (int)rnd(8); i < m; i++) buf[rnd((uint32_t)size)] ^= (unsigned char)(1 + rnd(255));
            break;
        case 1: { /* overwrite a 1/2/4-byte field with an extreme value (sizes, counts, lengths) */
            static const uint32_t extremes[] = {0, 1, 0x7f, 0x80, 0xff, 0x7fff, 0x8000, 0xffff, 0x7fffffff, 0x80000000u,
                                                0xffffffffu, 100000};
            uint32_t v = extremes[rnd(sizeof extremes / sizeof extremes[0])];
            int width = 1 << rnd(3);
            size_t at = rnd((uint32_t)size);
            for (int i = 0; i < width && at + (size_t)i < size; i++) buf[at + (size_t)i] = (unsigned char)(v >> (8 * (width - 1 - i)));
            break;
        }
        case 2:   /* truncate */
            size = rnd((uint32_t)size);
            break;
        case 3: { /* insert random bytes */
            size_t m = 1 + rnd(16), at = rnd((uint32_t)size + 1);
            if (size + m > cap) break;
            memmove(buf + at + m, buf + at, size - at);
            for (size_t i = 0; i < m; i++) buf[at + i] = (unsigned char)rnd(256);
            size += m;
            break;
        }
        default: { /* copy a block of the file over another place */
            size_t m = 1 + rnd(32), from = rnd((uint32_t)size), to = rnd((uint32_t)size);
            if (from + m > size) m = size - from;
            if (to + m > size) m = size - to;
            memmove(buf + to, buf + from, m);
            break;
        }
        }
    }
    return size;
}

int main(void)
{
    char path[600];
    snprintf(path, sizeof path, "%s/golden/qwen2_5_vl/image0.png", testing_shared_dir());
    FILE *fp = fopen(path, "rb");
    CHECK(fp != NULL, "cannot open %s", path);
    if (!fp) return testing_finish();
    unsigned char png[4096];
    size_t png_size = fread(png, 1, sizeof png, fp);
    fclose(fp);

    finch_image img;
    int rc = finch_image_load(path, NULL, &img);
    CHECK(rc == FINCH_OK, "%s", finch_last_error());
    if (rc) return testing_finish();

    /* A 1x1 GIF89a (global colour table, transparency extension, one LZW-coded pixel): stb has no GIF writer. */
    static unsigned char gif[] = {'G', 'I', 'F', '8', '9', 'a', 1, 0, 1, 0, 0x80, 0, 0, 0xff, 0xff, 0xff, 0, 0, 0,
                                  0x21, 0xf9, 4, 1, 0, 0, 0, 0, 0x2c, 0, 0, 0, 0, 1, 0, 1, 0, 0, 2, 2, 0x44, 1, 0, 0x3b};
    struct { const char *kind; unsigned char *bytes; size_t size; } seeds[5] = {{"png", png, png_size}, {"gif", gif, sizeof gif}};
    const char *kinds[] = {"jpg", "bmp", "tga"};
    for (int i = 0; i < 3; i++) {
        seeds[i + 2].kind = kinds[i];
        seeds[i + 2].bytes = encode_image(kinds[i], img.width, img.height, 3, img.rgb, &seeds[i + 2].size);
        CHECK(seeds[i + 2].bytes != NULL, "encoding image0 as %s", kinds[i]);
    }

    for (size_t cut = 0; cut <= png_size; cut++) run(png, cut, "image0.png truncated");

    size_t cap = 0;
    for (int s = 0; s < 5; s++) cap = seeds[s].size + 64 > cap ? seeds[s].size + 64 : cap;
    unsigned char *buf = malloc(cap);
    for (int s = 0; s < 5; s++) {
        if (!seeds[s].bytes) continue;
        CHECK(run(seeds[s].bytes, seeds[s].size, seeds[s].kind) == FINCH_OK, "the unmutated %s seed does not decode",
              seeds[s].kind);
        int before = decoded;
        char what[64];
        snprintf(what, sizeof what, "mutated %s", seeds[s].kind);
        for (int i = 0; i < MUTATIONS_PER_SEED; i++) run(buf, mutate(seeds[s].bytes, seeds[s].size, buf, cap), what);
        printf("%s seed (%zu bytes): %d of %d mutations still decode\n", seeds[s].kind, seeds[s].size,
               decoded - before, MUTATIONS_PER_SEED);
    }
    printf("%d inputs: %d decoded, %d malformed, %d unsupported, %d out of memory, %d invariant violations\n",
           counts[FINCH_OK] + counts[FINCH_ERR_FORMAT] + counts[FINCH_ERR_UNSUPPORTED] + counts[FINCH_ERR_OUT_OF_MEMORY] +
               violations, decoded, counts[FINCH_ERR_FORMAT], counts[FINCH_ERR_UNSUPPORTED],
           counts[FINCH_ERR_OUT_OF_MEMORY], violations);
    CHECK(counts[FINCH_ERR_FORMAT] > 0, "no mutation was rejected: the mutator is not mutating");
    free(buf);
    for (int s = 2; s < 5; s++) free(seeds[s].bytes);
    finch_image_free(&img);
    return testing_finish();
}
