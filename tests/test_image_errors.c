/* Bad images: truncated, a header claiming 100000x100000, over the pixel limit, zero-sized, missing,
 * not an image, refused formats. Each must give a clear error naming the file, and no crash. */
#include "finch/finch.h"
#include "finch/vision.h"
#include "tests/testing.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char tmp[512];

static void write_bytes(const char *path, const void *data, size_t n)
{
    FILE *fp = fopen(path, "wb");
    if (fp) { fwrite(data, 1, n, fp); fclose(fp); }
}

static unsigned char *read_all(const char *path, size_t *n)
{
    FILE *fp = fopen(path, "rb");
    if (!fp) return NULL;
    unsigned char *buf = malloc(1 << 20);
    *n = fread(buf, 1, 1 << 20, fp);
    fclose(fp);
    return buf;
}

static uint32_t crc32_png(const unsigned char *p, size_t n)
{
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1)));
    }
    return c ^ 0xffffffffu;
}

static size_t put_be32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24); p[1] = (unsigned char)(v >> 16); p[2] = (unsigned char)(v >> 8); p[3] = (unsigned char)v;
    return 4;
}

static size_t put_chunk(unsigned char *p, const char *type, const unsigned char *data, uint32_t len)
{
    size_t n = put_be32(p, len);
    memcpy(p + n, type, 4);
    if (len) memcpy(p + n + 4, data, len);
    n += 4 + len;
    return n + put_be32(p + n, crc32_png(p + 4, 4 + len));
}

/* A well-formed PNG (valid CRCs) whose IHDR claims width x height 8-bit RGB, with a tiny IDAT (a zlib
 * stream of one empty stored block) and IEND. */
static size_t craft_png(unsigned char *p, uint32_t width, uint32_t height)
{
    size_t n = 0;
    memcpy(p, "\x89PNG\r\n\x1a\n", 8);
    n += 8;
    unsigned char ihdr[13] = {0};
    put_be32(ihdr, width);
    put_be32(ihdr + 4, height);
    ihdr[8] = 8;   /* bit depth */
    ihdr[9] = 2;   /* RGB */
    n += put_chunk(p + n, "IHDR", ihdr, 13);
    static const unsigned char idat[] = {0x78, 0x01, 0x01, 0x00, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x01};
    n += put_chunk(p + n, "IDAT", idat, sizeof idat);
    n += put_chunk(p + n, "IEND", NULL, 0);
    return n;
}

static int is_zeroed(const finch_image *img) { return img->rgb == NULL && img->source == NULL && img->width == 0 && img->height == 0; }

static void expect_file_error(const char *label, const char *path, const finch_image_load_options *opts,
                              int status, const char *needle)
{
    finch_image img;
    int rc = finch_image_load(path, opts, &img);
    const char *msg = finch_last_error();
    CHECK(rc == status, "%s: status %d (%s), want %d; message: %s", label, rc, finch_status_name(rc), status, msg);
    CHECK(strstr(msg, path) != NULL, "%s: message does not name the file: %s", label, msg);
    CHECK(!needle || strstr(msg, needle) != NULL, "%s: message lacks '%s': %s", label, needle, msg);
    CHECK(is_zeroed(&img), "%s: output not zeroed on failure", label);
    printf("  %-26s -> %s\n", label, msg);
    finch_image_free(&img);
}

static void test_truncated(void)
{
    char src[600], path[600];
    snprintf(src, sizeof src, "%s/golden/qwen2_5_vl/image0.png", testing_shared_dir());
    size_t n = 0;
    unsigned char *png = read_all(src, &n);
    CHECK(png && n > 60, "reading %s", src);
    if (!png || n <= 60) { free(png); return; }
    /* Find where the IDAT data ends, to cut inside it. */
    size_t pos = 8, idat_end = 0;
    while (pos + 8 <= n) {
        uint32_t len = (uint32_t)png[pos] << 24 | (uint32_t)png[pos + 1] << 16 | (uint32_t)png[pos + 2] << 8 | png[pos + 3];
        if (!memcmp(png + pos + 4, "IDAT", 4)) idat_end = pos + 8 + len;
        pos += 12 + (size_t)len;
    }
    CHECK(idat_end > 0 && idat_end < n, "IDAT in %s", src);
    const size_t cuts[] = {4, 8, 20, 33, 41, n / 2, idat_end - 7, idat_end - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        snprintf(path, sizeof path, "%s/truncated_%zu.png", tmp, cuts[i]);
        write_bytes(path, png, cuts[i]);
        char label[64];
        snprintf(label, sizeof label, "PNG cut at %zu of %zu", cuts[i], n);
        expect_file_error(label, path, NULL, FINCH_ERR_FORMAT, NULL);
    }
    /* The untouched file still loads, and a pixel limit below its size refuses it before decoding. */
    finch_image img;
    CHECK(finch_image_load(src, NULL, &img) == FINCH_OK && img.width == 84 && img.height == 56, "image0 loads: %s",
          finch_last_error());
    finch_image_free(&img);
    finch_image_load_options tight = {.max_pixels = 84 * 56 - 1};
    expect_file_error("84x56 over a 4703 limit", src, &tight, FINCH_ERR_UNSUPPORTED, "over the limit");
    tight.max_pixels = 84 * 56;
    CHECK(finch_image_load(src, &tight, &img) == FINCH_OK, "84x56 at a limit of 4704: %s", finch_last_error());
    finch_image_free(&img);
    free(png);
}

static void test_huge_headers(void)
{
    unsigned char png[256];
    char path[600];
    size_t n = craft_png(png, 100000, 100000);
    snprintf(path, sizeof path, "%s/huge_100000x100000.png", tmp);
    write_bytes(path, png, n);
    expect_file_error("100000x100000 header", path, NULL, FINCH_ERR_UNSUPPORTED, "over the limit");
    finch_image_load_options huge = {.max_pixels = 1ll << 40};
    expect_file_error("100000x100000, no limit", path, &huge, FINCH_ERR_FORMAT, "claiming 100000x100000");

    /* 10000x10000 passes stb's own header checks; finch's 64-megapixel default refuses it. */
    n = craft_png(png, 10000, 10000);
    snprintf(path, sizeof path, "%s/big_10000x10000.png", tmp);
    write_bytes(path, png, n);
    expect_file_error("10000x10000 header", path, NULL, FINCH_ERR_UNSUPPORTED, "over the limit");

    n = craft_png(png, 0xffffffffu, 0xffffffffu);   /* w * h overflows 64 bits if multiplied carelessly */
    snprintf(path, sizeof path, "%s/max_u32.png", tmp);
    write_bytes(path, png, n);
    expect_file_error("4294967295^2 header", path, NULL, FINCH_ERR_UNSUPPORTED, "over the limit");

    n = craft_png(png, 0, 16);
    snprintf(path, sizeof path, "%s/zero_width.png", tmp);
    write_bytes(path, png, n);
    expect_file_error("0x16 header", path, NULL, FINCH_ERR_FORMAT, "no pixels");

    n = craft_png(png, 3, 2);   /* plausible size, but the IDAT holds no pixels */
    snprintf(path, sizeof path, "%s/empty_idat.png", tmp);
    write_bytes(path, png, n);
    expect_file_error("3x2 with empty IDAT", path, NULL, FINCH_ERR_FORMAT, "corrupt or truncated");
}

static void test_not_images(void)
{
    char path[600];
    snprintf(path, sizeof path, "%s/definitely_missing.png", tmp);
    remove(path);
    expect_file_error("missing file", path, NULL, FINCH_ERR_IO, "No such file");

    snprintf(path, sizeof path, "%s/notes.txt", tmp);
    const char *text = "This is a text file, not an image.\n";
    write_bytes(path, text, strlen(text));
    expect_file_error("text file", path, NULL, FINCH_ERR_FORMAT, "not an image");

    snprintf(path, sizeof path, "%s/empty.png", tmp);
    write_bytes(path, "", 0);
    expect_file_error("empty file", path, NULL, FINCH_ERR_FORMAT, "empty");

    expect_file_error("a directory", tmp, NULL, FINCH_ERR_IO, "not a regular file");

    snprintf(path, sizeof path, "%s/image.ppm", tmp);
    const char ppm[] = "P6\n2 1\n255\n\xff\x00\x00\x00\xff\x00";
    write_bytes(path, ppm, sizeof ppm - 1);
    expect_file_error("PPM (refused format)", path, NULL, FINCH_ERR_UNSUPPORTED, "not accepted");

    snprintf(path, sizeof path, "%s/garbage.jpg", tmp);
    unsigned char junk[300];
    junk[0] = 0xff; junk[1] = 0xd8;
    for (int i = 2; i < 300; i++) junk[i] = (unsigned char)(i * 37 + 11);
    write_bytes(path, junk, sizeof junk);
    expect_file_error("JPEG signature + junk", path, NULL, FINCH_ERR_FORMAT, "JPEG");

    /* A Huffman table claiming 512 codes: the packaged stb_image would write past its tables. Also
     * behind fill bytes (FF FF D8), which stb accepts as a JPEG start too. */
    unsigned char dht[64] = {0xff, 0xd8, 0xff, 0xc4, 0x00, 0x13, 0x00};
    for (int i = 7; i < 23; i++) dht[i] = 0x20;
    snprintf(path, sizeof path, "%s/bad_huffman.jpg", tmp);
    write_bytes(path, dht, sizeof dht);
    expect_file_error("JPEG with a 512-code DHT", path, NULL, FINCH_ERR_FORMAT, "Huffman");
    unsigned char filled[65] = {0xff};
    memcpy(filled + 1, dht, sizeof dht);
    snprintf(path, sizeof path, "%s/bad_huffman_fill.jpg", tmp);
    write_bytes(path, filled, sizeof filled);
    expect_file_error("same after a fill byte", path, NULL, FINCH_ERR_FORMAT, "Huffman");

    finch_image img;
    CHECK(finch_image_load(NULL, NULL, &img) == FINCH_ERR_INVALID_ARGUMENT && is_zeroed(&img), "NULL path");
    CHECK(finch_image_load(path, NULL, NULL) == FINCH_ERR_INVALID_ARGUMENT, "NULL out");
    CHECK(finch_image_load_memory(NULL, 10, "x", NULL, &img) == FINCH_ERR_INVALID_ARGUMENT, "NULL data");
    CHECK(finch_image_load_memory("", 0, NULL, NULL, &img) == FINCH_ERR_FORMAT && strstr(finch_last_error(), "<memory>"),
          "empty memory buffer: %s", finch_last_error());
    finch_image_free(NULL);
    finch_image_free(&img);
}

int main(void)
{
    snprintf(tmp, sizeof tmp, "%s", testing_tmp_dir());
    test_truncated();
    test_huge_headers();
    test_not_images();
    return testing_finish();
}
