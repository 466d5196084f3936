/* Decoding images to 8-bit RGB with stb_image, linked from Debian's libstb.
 *
 * Order of work, so that a hostile file costs little: sniff the signature, read only the header
 * (stbi_info) for the dimensions, refuse zero-sized images and those over the pixel limit, and only
 * then decode. stb_image reports failures through stbi_failure_reason() (thread-local in this build);
 * its short reason is appended to our message. */
#include "core/image.h"
#include "core/error.h"

#include <stb/stb_image.h>

#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static int starts_with(const unsigned char *data, size_t size, const char *magic, size_t n)
{
    return size >= n && memcmp(data, magic, n) == 0;
}

image_format image_sniff(const unsigned char *data, size_t size)
{
    if (starts_with(data, size, "\x89PNG\r\n\x1a\n", 8)) return IMAGE_PNG;
    if (size >= 2 && data[0] == 0xff) {   /* stb, like libjpeg, allows fill bytes before SOI */
        size_t i = 1;
        while (i < size && data[i] == 0xff) i++;
        if (i < size && data[i] == 0xd8) return IMAGE_JPEG;
    }
    if (starts_with(data, size, "BM", 2)) return IMAGE_BMP;
    if (starts_with(data, size, "GIF87a", 6) || starts_with(data, size, "GIF89a", 6)) return IMAGE_GIF;
    if (starts_with(data, size, "8BPS", 4) || starts_with(data, size, "#?RADIANCE\n", 11) ||
        starts_with(data, size, "#?RGBE\n", 7) || starts_with(data, size, "\x53\x80\xf6\x34", 4) ||
        starts_with(data, size, "P5", 2) || starts_with(data, size, "P6", 2))
        return IMAGE_REFUSED;
    return IMAGE_UNKNOWN;
}

const char *image_format_name(image_format f)
{
    switch (f) {
    case IMAGE_PNG: return "PNG";
    case IMAGE_JPEG: return "JPEG";
    case IMAGE_BMP: return "BMP";
    case IMAGE_GIF: return "GIF";
    case IMAGE_REFUSED: return "PSD/HDR/PIC/PNM";
    case IMAGE_UNKNOWN: break;
    }
    return "unknown format";
}

static const char *reason(void)
{
    const char *r = stbi_failure_reason();
    return r && *r ? r : "no details";
}

static unsigned be16(const unsigned char *p) { return (unsigned)p[0] << 8 | p[1]; }
static unsigned le16(const unsigned char *p) { return (unsigned)p[1] << 8 | p[0]; }
static uint32_t be32(const unsigned char *p) { return (uint32_t)be16(p) << 16 | be16(p + 2); }

/* The dimensions a header claims, read by us for the messages when stb rejects a header (its reason
 * is then only "unknown image type"). Returns 0 when they cannot be found. */
static int peek_dimensions(image_format fmt, const unsigned char *p, size_t n, long long *w, long long *h)
{
    switch (fmt) {
    case IMAGE_PNG:
        if (n < 24 || memcmp(p + 12, "IHDR", 4) != 0) return 0;
        *w = be32(p + 16);
        *h = be32(p + 20);
        return 1;
    case IMAGE_GIF:
        if (n < 10) return 0;
        *w = le16(p + 6);
        *h = le16(p + 8);
        return 1;
    case IMAGE_BMP:
        if (n < 26) return 0;
        *w = (int32_t)(le16(p + 18) | (uint32_t)le16(p + 20) << 16);
        *h = (int32_t)(le16(p + 22) | (uint32_t)le16(p + 24) << 16);
        if (*h < 0) *h = -*h;   /* top-down bitmap */
        return 1;
    case IMAGE_JPEG:
        /* Walk the marker segments to the first start-of-frame (SOF0..SOF15 but DHT, JPG, DAC). */
        for (size_t i = 2; i + 9 <= n;) {
            if (p[i] != 0xff) return 0;
            unsigned m = p[i + 1];
            if (m == 0xff) { i++; continue; }
            if (m == 0xd8) { i += 2; continue; }
            if (m >= 0xc0 && m <= 0xcf && m != 0xc4 && m != 0xc8 && m != 0xcc) {
                *h = be16(p + i + 5);
                *w = be16(p + i + 7);
                return 1;
            }
            i += 2 + be16(p + i + 2);
        }
        return 0;
    default:
        return 0;
    }
}

/* stb_image as Debian packages it (2022 snapshot) trusts the 16 code counts of a JPEG Huffman table
 * (DHT): past 256 codes it writes beyond its tables, corrupting its own decoder state. Every place a
 * DHT marker (FF C4) occurs is read the way stb reads one (length, then tables until the length is
 * used up, bytes past the end reading as 0) and refused if a table has more than 256 codes. FF C4
 * cannot occur inside entropy-coded data (FF is followed by 00 there), so valid files are only ever
 * checked at their real DHT segments; a budget bounds the work on hostile files full of FF C4. */
static int jpeg_huffman_tables_ok(const unsigned char *p, size_t n)
{
    size_t budget = 64 * n + (1u << 20);
    for (size_t at = 0; at + 1 < n; at++) {
        if (p[at] != 0xff || p[at + 1] != 0xc4) continue;
        size_t pos = at + 2;
#define BYTE(i) ((i) < n ? p[(i)] : 0)
        long remaining = (long)((unsigned)BYTE(pos) << 8 | BYTE(pos + 1)) - 2;
        pos += 2;
        while (remaining > 0) {
            unsigned q = BYTE(pos);
            if ((q >> 4) > 1 || (q & 15) > 3) break;   /* stb stops here with "bad DHT header" */
            unsigned codes = 0;
            for (int i = 1; i <= 16; i++) codes += BYTE(pos + (size_t)i);
            if (codes > 256) return 0;
            if (budget < 17) return 0;
            budget -= 17;
            pos += 17 + codes;
            remaining -= 17 + (long)codes;
        }
#undef BYTE
    }
    return 1;
}

static int check_dimensions(const char *name, const char *fmt_name, long long w, long long h, long long max_pixels)
{
    if (w <= 0 || h <= 0)
        return finch_error(FINCH_ERR_FORMAT, "%s: %s image has no pixels (%lldx%lld)", name, fmt_name, w, h);
    if (w > max_pixels / h)   /* w * h > max_pixels without overflow: a header may claim 2^32 x 2^32 */
        return finch_error(FINCH_ERR_UNSUPPORTED, "%s: %s image is %lldx%lld = %llu pixels, over the limit of %lld "
                           "(finch_image_load_options.max_pixels)", name, fmt_name, w, h,
                           (unsigned long long)w * (unsigned long long)h, max_pixels);
    return FINCH_OK;
}

/* Over-white compositing as PIL's paste with an alpha mask does it: round((c*a + 255*(255-a)) / 255). */
static void rgba_to_rgb(const unsigned char *rgba, unsigned char *rgb, size_t n_pixels, int on_white)
{
    for (size_t i = 0; i < n_pixels; i++) {
        unsigned a = rgba[4 * i + 3];
        for (int c = 0; c < 3; c++) {
            unsigned v = rgba[4 * i + c];
            rgb[3 * i + c] = on_white ? (unsigned char)((v * a + 255u * (255u - a) + 127u) / 255u) : (unsigned char)v;
        }
    }
}

/* Everything before decoding: the signature, the header's dimensions and the pixel limit. */
static int probe(const unsigned char *bytes, size_t size, const char *name, long long max_pixels, image_format *out_fmt,
                 int *out_w, int *out_h, int *out_comp)
{
    if (size == 0) return finch_error(FINCH_ERR_FORMAT, "%s: empty file, not an image", name);
    if (size > INT_MAX)
        return finch_error(FINCH_ERR_UNSUPPORTED, "%s: %zu bytes, more than the image decoder reads (%d)",
                           name, size, INT_MAX);
    image_format fmt = image_sniff(bytes, size);
    if (fmt == IMAGE_REFUSED)
        return finch_error(FINCH_ERR_UNSUPPORTED, "%s: PSD/HDR/PIC/PNM images are not accepted "
                           "(use PNG, JPEG, BMP, GIF or TGA)", name);

    if (fmt == IMAGE_JPEG && !jpeg_huffman_tables_ok(bytes, size))
        return finch_error(FINCH_ERR_FORMAT, "%s: corrupt JPEG (a Huffman table with more than 256 codes)", name);

    int w = 0, h = 0, comp = 0;
    if (!stbi_info_from_memory(bytes, (int)size, &w, &h, &comp)) {
        if (fmt == IMAGE_UNKNOWN)
            return finch_error(FINCH_ERR_FORMAT, "%s: not an image (no PNG, JPEG, BMP, GIF or TGA header)", name);
        long long pw, ph;
        int rc;
        if (!peek_dimensions(fmt, bytes, size, &pw, &ph))
            return finch_error(FINCH_ERR_FORMAT, "%s: corrupt or truncated %s header", name, image_format_name(fmt));
        if ((rc = check_dimensions(name, image_format_name(fmt), pw, ph, max_pixels))) return rc;
        return finch_error(FINCH_ERR_FORMAT, "%s: corrupt or unsupported %s header (claiming %lldx%lld)",
                           name, image_format_name(fmt), pw, ph);
    }
    const char *fmt_name = fmt == IMAGE_UNKNOWN ? "TGA" : image_format_name(fmt);
    int rc = check_dimensions(name, fmt_name, w, h, max_pixels);
    if (rc) return rc;
    *out_fmt = fmt;
    *out_w = w;
    *out_h = h;
    *out_comp = comp;
    return FINCH_OK;
}

finch_status finch_image_load_memory(const void *data, size_t size, const char *name,
                                     const finch_image_load_options *opts, finch_image *out)
{
    if (!out) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_image_load: out is NULL");
    memset(out, 0, sizeof *out);
    if (!name) name = "<memory>";
    if (!data && size) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "%s: data is NULL", name);
    long long max_pixels = opts && opts->max_pixels > 0 ? opts->max_pixels : FINCH_IMAGE_DEFAULT_MAX_PIXELS;
    int on_white = opts ? opts->alpha_on_white : 0;

    const unsigned char *bytes = data;
    image_format fmt;
    int w = 0, h = 0, comp = 0;
    int rc = probe(bytes, size, name, max_pixels, &fmt, &w, &h, &comp);
    if (rc) return rc;
    const char *fmt_name = fmt == IMAGE_UNKNOWN ? "TGA" : image_format_name(fmt);

    int has_alpha = comp == 2 || comp == 4;
    int want = has_alpha && on_white ? 4 : 3;
    int dw = 0, dh = 0, dn = 0;
    unsigned char *pixels = stbi_load_from_memory(bytes, (int)size, &dw, &dh, &dn, want);
    if (!pixels) {
        if (strcmp(reason(), "outofmem") == 0)
            return finch_error(FINCH_ERR_OUT_OF_MEMORY, "%s: out of memory decoding a %dx%d %s image",
                               name, w, h, fmt_name);
        return finch_error(FINCH_ERR_FORMAT, "%s: corrupt or truncated %s image (%s)", name, fmt_name, reason());
    }
    if (dw != w || dh != h) {
        stbi_image_free(pixels);
        return finch_error(FINCH_ERR_FORMAT, "%s: %s header says %dx%d but the image decodes as %dx%d",
                           name, fmt_name, w, h, dw, dh);
    }

    size_t n = (size_t)w * (size_t)h;
    out->rgb = malloc(n * 3);
    out->source = strdup(name);
    if (!out->rgb || !out->source) {
        stbi_image_free(pixels);
        finch_image_free(out);
        return finch_error(FINCH_ERR_OUT_OF_MEMORY, "%s: out of memory for a %dx%d image", name, w, h);
    }
    if (want == 4) rgba_to_rgb(pixels, out->rgb, n, 1);
    else memcpy(out->rgb, pixels, n * 3);
    stbi_image_free(pixels);
    out->width = w;
    out->height = h;
    return FINCH_OK;
}

/* The bytes of an image file (a regular file the decoder can take). */
static int read_image_file(const char *path, unsigned char **out, size_t *out_size)
{
    FILE *fp = fopen(path, "rb");
    if (!fp) return finch_error(FINCH_ERR_IO, "%s: cannot open image: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(fp), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(fp);
        return finch_error(FINCH_ERR_IO, "%s: not a regular file", path);
    }
    if ((unsigned long long)st.st_size > INT_MAX) {
        fclose(fp);
        return finch_error(FINCH_ERR_UNSUPPORTED, "%s: %lld bytes, more than the image decoder reads (%d)",
                           path, (long long)st.st_size, INT_MAX);
    }
    size_t size = (size_t)st.st_size;
    unsigned char *buf = malloc(size ? size : 1);
    if (!buf) {
        fclose(fp);
        return finch_error(FINCH_ERR_OUT_OF_MEMORY, "%s: out of memory reading %zu bytes", path, size);
    }
    size_t got = fread(buf, 1, size, fp);
    int read_failed = ferror(fp);
    fclose(fp);
    if (read_failed || got != size) {
        free(buf);
        return finch_error(FINCH_ERR_IO, "%s: read %zu of %zu bytes", path, got, size);
    }
    *out = buf;
    *out_size = size;
    return FINCH_OK;
}

finch_status finch_image_load(const char *path, const finch_image_load_options *opts, finch_image *out)
{
    if (!out) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_image_load: out is NULL");
    memset(out, 0, sizeof *out);
    if (!path) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_image_load: path is NULL");
    unsigned char *buf = NULL;
    size_t size = 0;
    finch_status rc = read_image_file(path, &buf, &size);
    if (rc) return rc;
    rc = finch_image_load_memory(buf, size, path, opts, out);
    free(buf);
    return rc;
}

finch_status finch_image_info(const char *path, const finch_image_load_options *opts, int *width, int *height)
{
    if (!path || !width || !height) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_image_info: NULL argument");
    *width = *height = 0;
    unsigned char *buf = NULL;
    size_t size = 0;
    int rc = read_image_file(path, &buf, &size);
    if (rc) return rc;
    image_format fmt;
    int comp = 0;
    rc = probe(buf, size, path, opts && opts->max_pixels > 0 ? opts->max_pixels : FINCH_IMAGE_DEFAULT_MAX_PIXELS, &fmt, width, height,
               &comp);
    free(buf);
    return rc;
}

void finch_image_free(finch_image *img)
{
    if (!img) return;
    free(img->rgb);
    free(img->source);
    memset(img, 0, sizeof *img);
}
