/* Qwen2-VL image preprocessing, step for step as transformers' Qwen2VLImageProcessor does it:
 *
 *   1. smart_resize picks the output size: sides multiples of patch_size * merge_size (28), area
 *      within [min_pixels, max_pixels], Python rounding (ties to even) included;
 *   2. the RGB image is resized with Pillow's bicubic filter (transformers hands PIL the uint8 image);
 *   3. each value becomes (u * rescale_factor - mean) / std, in float32 as numpy computes it;
 *   4. the image is repeated to temporal_patch_size frames and cut into patches: row order
 *      (t, window row, window column, row in the merge window, column in it), and within a row
 *      (channel, frame, y, x) — the 9-D reshape/permute of the HF code, written as index arithmetic.
 *
 * Step 2 is re-derived from Pillow's resampler (libImaging/Resample.c), which the goldens match
 * exactly; the torchvision path (float, no intermediate rounding) differs by up to 7 levels on them. */
#include "core/image_preprocess.h"
#include "core/error.h"

#include <cjson/cJSON.h>

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define RESAMPLE_BICUBIC 3     /* PIL.Image.Resampling.BICUBIC */
#define PRECISION_BITS 22      /* Pillow's fixed-point weights for 8-bit images: 32 - 8 - 2 */
#define MAX_ASPECT_RATIO 200.0

double python_round(double x)
{
    double f = floor(x), frac = x - f;   /* exact for any double */
    if (frac > 0.5) return f + 1;
    if (frac < 0.5) return f;
    return fmod(f, 2.0) == 0 ? f : f + 1;
}

int qwen2vl_smart_resize(const char *name, long long height, long long width, int factor,
                         long long min_pixels, long long max_pixels, int *out_height, int *out_width)
{
    if (height <= 0 || width <= 0 || factor <= 0)
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "%s: cannot resize a %lldx%lld image with factor %d",
                           name, width, height, factor);
    double ratio = (double)(height > width ? height : width) / (double)(height < width ? height : width);
    if (ratio > MAX_ASPECT_RATIO)
        return finch_error(FINCH_ERR_UNSUPPORTED, "%s: %lldx%lld has an aspect ratio of %.1f, over the %g that "
                           "Qwen2-VL preprocessing accepts", name, width, height, ratio, MAX_ASPECT_RATIO);
    double h = (double)height, w = (double)width, f = (double)factor;
    double h_bar = python_round(h / f) * f, w_bar = python_round(w / f) * f;
    if (h_bar * w_bar > (double)max_pixels) {
        double beta = sqrt((double)(height * width) / (double)max_pixels);
        h_bar = fmax(f, floor(h / beta / f) * f);
        w_bar = fmax(f, floor(w / beta / f) * f);
    } else if (h_bar * w_bar < (double)min_pixels) {
        double beta = sqrt((double)min_pixels / (double)(height * width));
        h_bar = ceil(h * beta / f) * f;
        w_bar = ceil(w * beta / f) * f;
    }
    if (h_bar < f || w_bar < f || h_bar > INT_MAX || w_bar > INT_MAX)
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "%s: %lldx%lld resizes to %.0fx%.0f with min_pixels %lld, "
                           "max_pixels %lld", name, width, height, w_bar, h_bar, min_pixels, max_pixels);
    *out_height = (int)h_bar;
    *out_width = (int)w_bar;
    return FINCH_OK;
}

/* ---- Pillow's bicubic resampler ----------------------------------------------------------------- */

static double bicubic_filter(double x)
{
    const double a = -0.5;
    if (x < 0) x = -x;
    if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
    if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
    return 0;
}

/* For each output index: the first input index, how many inputs it reads, and their weights. */
typedef struct axis_plan {
    int taps;        /* weights per output index (a row stride; unused ones are zero) */
    int *first, *count;
    int32_t *weights;
} axis_plan;

static void axis_plan_free(axis_plan *p)
{
    free(p->first);
    free(p->count);
    free(p->weights);
}

static int axis_plan_make(int in_size, int out_size, axis_plan *p)
{
    const double filter_support = 2.0;
    double scale = (double)in_size / out_size;
    double filterscale = scale < 1.0 ? 1.0 : scale;
    double support = filter_support * filterscale;
    p->taps = (int)ceil(support) * 2 + 1;
    p->first = malloc(sizeof(int) * (size_t)out_size);
    p->count = malloc(sizeof(int) * (size_t)out_size);
    p->weights = calloc((size_t)out_size * (size_t)p->taps, sizeof(int32_t));
    double *w = malloc(sizeof(double) * (size_t)p->taps);
    if (!p->first || !p->count || !p->weights || !w) {
        free(w);
        axis_plan_free(p);
        return finch_error(FINCH_ERR_OUT_OF_MEMORY, "resize: out of memory for %d x %d filter taps",
                           out_size, p->taps);
    }
    for (int o = 0; o < out_size; o++) {
        double center = (o + 0.5) * scale;
        int lo = (int)(center - support + 0.5);   /* C truncation, as Pillow does */
        if (lo < 0) lo = 0;
        int hi = (int)(center + support + 0.5);
        if (hi > in_size) hi = in_size;
        int n = hi - lo;
        double total = 0;
        for (int i = 0; i < n; i++) {
            w[i] = bicubic_filter((i + lo - center + 0.5) / filterscale);
            total += w[i];
        }
        int32_t *k = p->weights + (size_t)o * p->taps;
        for (int i = 0; i < n; i++) {
            double v = total != 0 ? w[i] / total : w[i];
            k[i] = v < 0 ? (int32_t)(-0.5 + v * (1 << PRECISION_BITS)) : (int32_t)(0.5 + v * (1 << PRECISION_BITS));
        }
        p->first[o] = lo;
        p->count[o] = n;
    }
    free(w);
    return FINCH_OK;
}

static unsigned char clip8(int64_t acc)
{
    if (acc <= 0) return 0;
    if (acc >= (int64_t)256 << PRECISION_BITS) return 255;
    return (unsigned char)(acc >> PRECISION_BITS);
}

/* One pass along an axis. The image is seen as `lines` lines of `in_len` RGB pixels, consecutive
 * pixels of a line `step` pixels apart and consecutive lines `line_step` pixels apart (in and out use
 * the same line geometry, with out's pixels along the axis at out_step/out_line_step). */
static void resample_pass(const unsigned char *in, size_t in_step, size_t in_line_step,
                          unsigned char *out, size_t out_step, size_t out_line_step,
                          int lines, int out_len, const axis_plan *p)
{
    for (int l = 0; l < lines; l++) {
        const unsigned char *src = in + (size_t)l * in_line_step * 3;
        unsigned char *dst = out + (size_t)l * out_line_step * 3;
        for (int o = 0; o < out_len; o++) {
            const int32_t *k = p->weights + (size_t)o * p->taps;
            const unsigned char *s = src + (size_t)p->first[o] * in_step * 3;
            for (int c = 0; c < 3; c++) {
                int64_t acc = (int64_t)1 << (PRECISION_BITS - 1);
                for (int i = 0; i < p->count[o]; i++) acc += (int64_t)s[(size_t)i * in_step * 3 + c] * k[i];
                dst[(size_t)o * out_step * 3 + c] = clip8(acc);
            }
        }
    }
}

int image_resize_bicubic(const unsigned char *src, int width, int height,
                         unsigned char *dst, int out_width, int out_height)
{
    if (width <= 0 || height <= 0 || out_width <= 0 || out_height <= 0)
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "resize: %dx%d to %dx%d", width, height, out_width, out_height);
    if (width == out_width && height == out_height) {
        memcpy(dst, src, (size_t)width * height * 3);
        return FINCH_OK;
    }
    axis_plan px = {0}, py = {0};
    unsigned char *tmp = NULL;
    int rc = FINCH_OK;
    const unsigned char *rows = src;  /* the horizontally resampled image (or src if no horizontal pass) */
    if (width != out_width) {
        if ((rc = axis_plan_make(width, out_width, &px))) goto done;
        unsigned char *hout = height == out_height ? dst : (tmp = malloc((size_t)out_width * height * 3));
        if (!hout) { rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "resize: out of memory"); goto done; }
        resample_pass(src, 1, (size_t)width, hout, 1, (size_t)out_width, height, out_width, &px);
        rows = hout;
    }
    if (height != out_height) {
        if ((rc = axis_plan_make(height, out_height, &py))) goto done;
        resample_pass(rows, (size_t)out_width, 1, dst, (size_t)out_width, 1, out_width, out_height, &py);
    }
done:
    free(tmp);
    axis_plan_free(&px);
    axis_plan_free(&py);
    return rc;
}

/* ---- configuration ---------------------------------------------------------------------------- */

finch_qwen2vl_image_config finch_qwen2vl_image_config_default(void)
{
    finch_qwen2vl_image_config c = {
        .min_pixels = 56 * 56, .max_pixels = 28 * 28 * 1280,
        .patch_size = 14, .temporal_patch_size = 2, .merge_size = 2,
        .do_resize = 1, .do_rescale = 1, .do_normalize = 1,
        .resample = RESAMPLE_BICUBIC, .rescale_factor = 1.0 / 255.0,
        .image_mean = {0.48145466f, 0.4578275f, 0.40821073f},
        .image_std = {0.26862954f, 0.26130258f, 0.27577711f},
    };
    return c;
}

static char *read_text_file(const char *path)
{
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        finch_error(FINCH_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    char *buf = NULL;
    long n = -1;
    if (fseek(fp, 0, SEEK_END) == 0) n = ftell(fp);
    if (n < 0 || n > (64l << 20) || fseek(fp, 0, SEEK_SET) != 0) {
        fclose(fp);
        finch_error(FINCH_ERR_FORMAT, "%s: not a readable JSON file of at most 64 MiB", path);
        return NULL;
    }
    buf = malloc((size_t)n + 1);
    if (!buf || fread(buf, 1, (size_t)n, fp) != (size_t)n) {
        finch_error(buf ? FINCH_ERR_IO : FINCH_ERR_OUT_OF_MEMORY, "%s: cannot read %ld bytes", path, n);
        free(buf);
        fclose(fp);
        return NULL;
    }
    buf[n] = 0;
    fclose(fp);
    return buf;
}

/* Reads an optional integer field in [lo, hi]; absent leaves *dst alone. */
static int json_int(const char *path, const cJSON *obj, const char *key, long long lo, long long hi, long long *dst)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v || cJSON_IsNull(v)) return FINCH_OK;
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < (double)lo ||
        v->valuedouble > (double)hi)
        return finch_error(FINCH_ERR_FORMAT, "%s: '%s' must be an integer in [%lld, %lld]", path, key, lo, hi);
    *dst = (long long)v->valuedouble;
    return FINCH_OK;
}

static int json_bool(const char *path, const cJSON *obj, const char *key, int *dst)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v || cJSON_IsNull(v)) return FINCH_OK;
    if (!cJSON_IsBool(v)) return finch_error(FINCH_ERR_FORMAT, "%s: '%s' must be true or false", path, key);
    *dst = cJSON_IsTrue(v);
    return FINCH_OK;
}

/* image_mean / image_std: three numbers, or one for all channels. */
static int json_triple(const char *path, const cJSON *obj, const char *key, int positive, float dst[3])
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v || cJSON_IsNull(v)) return FINCH_OK;
    double x[3];
    if (cJSON_IsNumber(v)) {
        x[0] = x[1] = x[2] = v->valuedouble;
    } else if (cJSON_IsArray(v) && cJSON_GetArraySize(v) == 3) {
        for (int i = 0; i < 3; i++) {
            const cJSON *e = cJSON_GetArrayItem(v, i);
            if (!cJSON_IsNumber(e)) return finch_error(FINCH_ERR_FORMAT, "%s: '%s'[%d] is not a number", path, key, i);
            x[i] = e->valuedouble;
        }
    } else {
        return finch_error(FINCH_ERR_FORMAT, "%s: '%s' must be a number or a list of 3 numbers", path, key);
    }
    for (int i = 0; i < 3; i++) {
        if (!isfinite(x[i]) || (positive && !(x[i] > 0)))
            return finch_error(FINCH_ERR_FORMAT, "%s: '%s'[%d] = %g is not %s", path, key, i, x[i],
                               positive ? "a positive number" : "finite");
        dst[i] = (float)x[i];
    }
    return FINCH_OK;
}

static int config_from_json(const char *path, const cJSON *root, finch_qwen2vl_image_config *c)
{
    const long long big = 1ll << 40;
    long long min_px = c->min_pixels, max_px = c->max_pixels, patch = c->patch_size, temporal = c->temporal_patch_size,
              merge = c->merge_size, resample = c->resample;
    int rc;
    const cJSON *size = cJSON_GetObjectItemCaseSensitive(root, "size");
    if (size && !cJSON_IsNull(size)) {
        if (!cJSON_IsObject(size) || !cJSON_GetObjectItemCaseSensitive(size, "shortest_edge") ||
            !cJSON_GetObjectItemCaseSensitive(size, "longest_edge"))
            return finch_error(FINCH_ERR_FORMAT, "%s: 'size' must hold 'shortest_edge' and 'longest_edge'", path);
        if ((rc = json_int(path, size, "shortest_edge", 1, big, &min_px)) ||
            (rc = json_int(path, size, "longest_edge", 1, big, &max_px)))
            return finch_error_prefix(rc, "size: ");
    }
    if ((rc = json_int(path, root, "min_pixels", 1, big, &min_px)) ||
        (rc = json_int(path, root, "max_pixels", 1, big, &max_px)) ||
        (rc = json_int(path, root, "patch_size", 1, 1024, &patch)) ||
        (rc = json_int(path, root, "temporal_patch_size", 1, 64, &temporal)) ||
        (rc = json_int(path, root, "merge_size", 1, 64, &merge)) ||
        (rc = json_int(path, root, "resample", 0, 5, &resample)) ||
        (rc = json_bool(path, root, "do_resize", &c->do_resize)) ||
        (rc = json_bool(path, root, "do_rescale", &c->do_rescale)) ||
        (rc = json_bool(path, root, "do_normalize", &c->do_normalize)) ||
        (rc = json_triple(path, root, "image_mean", 0, c->image_mean)) ||
        (rc = json_triple(path, root, "image_std", 1, c->image_std)))
        return rc;
    const cJSON *rf = cJSON_GetObjectItemCaseSensitive(root, "rescale_factor");
    if (rf && !cJSON_IsNull(rf)) {
        if (!cJSON_IsNumber(rf) || !isfinite(rf->valuedouble))
            return finch_error(FINCH_ERR_FORMAT, "%s: 'rescale_factor' must be a number", path);
        c->rescale_factor = rf->valuedouble;
    }
    if (min_px > max_px)
        return finch_error(FINCH_ERR_FORMAT, "%s: min_pixels %lld exceeds max_pixels %lld", path, min_px, max_px);
    if (resample != RESAMPLE_BICUBIC)
        return finch_error(FINCH_ERR_UNSUPPORTED, "%s: resample %lld is not supported (only 3, bicubic)", path, resample);
    c->min_pixels = min_px;
    c->max_pixels = max_px;
    c->patch_size = (int)patch;
    c->temporal_patch_size = (int)temporal;
    c->merge_size = (int)merge;
    c->resample = (int)resample;
    return FINCH_OK;
}

finch_status finch_qwen2vl_image_config_load(const char *path, finch_qwen2vl_image_config *out)
{
    if (!path || !out) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_qwen2vl_image_config_load: NULL argument");
    char file[4096];
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        if ((size_t)snprintf(file, sizeof file, "%s/preprocessor_config.json", path) >= sizeof file)
            return finch_error(FINCH_ERR_INVALID_ARGUMENT, "%s: path too long", path);
    } else {
        if ((size_t)snprintf(file, sizeof file, "%s", path) >= sizeof file)
            return finch_error(FINCH_ERR_INVALID_ARGUMENT, "%s: path too long", path);
    }
    char *text = read_text_file(file);
    if (!text) return FINCH_ERR_IO;
    cJSON *root = cJSON_Parse(text);
    free(text);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return finch_error(FINCH_ERR_FORMAT, "%s: not a JSON object", file);
    }
    finch_qwen2vl_image_config c = finch_qwen2vl_image_config_default();
    int rc = config_from_json(file, root, &c);
    cJSON_Delete(root);
    if (rc == FINCH_OK) *out = c;
    return rc;
}

/* ---- preprocessing ---------------------------------------------------------------------------- */

static int check_config(const char *name, const finch_qwen2vl_image_config *c)
{
    if (c->patch_size <= 0 || c->patch_size > 1024 || c->temporal_patch_size <= 0 || c->temporal_patch_size > 64 ||
        c->merge_size <= 0 || c->merge_size > 64 || c->min_pixels <= 0 || c->max_pixels < c->min_pixels)
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "%s: invalid Qwen2-VL image config (patch %d, temporal %d, "
                           "merge %d, pixels %lld..%lld)", name, c->patch_size, c->temporal_patch_size,
                           c->merge_size, c->min_pixels, c->max_pixels);
    if (c->do_resize && c->resample != RESAMPLE_BICUBIC)
        return finch_error(FINCH_ERR_UNSUPPORTED, "%s: resample %d is not supported (only 3, bicubic)", name, c->resample);
    for (int i = 0; c->do_normalize && i < 3; i++)
        if (!(c->image_std[i] > 0) || !isfinite(c->image_mean[i]))
            return finch_error(FINCH_ERR_INVALID_ARGUMENT, "%s: image_std[%d] = %g, image_mean[%d] = %g",
                               name, i, c->image_std[i], i, c->image_mean[i]);
    return FINCH_OK;
}

/* The size the image is resized to (smart_resize), or its own when do_resize is off. */
static int target_size(const char *name, const finch_qwen2vl_image_config *cfg, int width, int height, int *out_w, int *out_h)
{
    const int factor = cfg->patch_size * cfg->merge_size;
    *out_w = width;
    *out_h = height;
    if (cfg->do_resize) return qwen2vl_smart_resize(name, height, width, factor, cfg->min_pixels, cfg->max_pixels, out_h, out_w);
    if (height % factor || width % factor)
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "%s: with do_resize off, %dx%d must be multiples of %d", name, width, height,
                           factor);
    return FINCH_OK;
}

finch_status finch_qwen2vl_image_grid(const finch_qwen2vl_image_config *cfg, const char *name, int width, int height, int grid_thw[3])
{
    if (!cfg || !grid_thw) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_qwen2vl_image_grid: NULL argument");
    if (!name) name = "<image>";
    if (width <= 0 || height <= 0) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "%s: %dx%d image", name, width, height);
    int w, h, rc = check_config(name, cfg);
    if (!rc) rc = target_size(name, cfg, width, height, &w, &h);
    if (rc) return rc;
    grid_thw[0] = 1;
    grid_thw[1] = h / cfg->patch_size;
    grid_thw[2] = w / cfg->patch_size;
    return FINCH_OK;
}

finch_status finch_image_preprocess_qwen2vl(const finch_image *img, const finch_qwen2vl_image_config *cfg,
                                            finch_image_patches *out)
{
    if (!out) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_image_preprocess_qwen2vl: out is NULL");
    memset(out, 0, sizeof *out);
    if (!img || !cfg || !img->rgb || img->width <= 0 || img->height <= 0)
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_image_preprocess_qwen2vl: no image");
    const char *name = img->source ? img->source : "<image>";
    int rc = check_config(name, cfg);
    if (rc) return rc;

    const int patch = cfg->patch_size, merge = cfg->merge_size, frames = cfg->temporal_patch_size;
    int h, w;
    if ((rc = target_size(name, cfg, img->width, img->height, &w, &h))) return rc;

    const int gh = h / patch, gw = w / patch;
    const long long patch_dim = 3ll * frames * patch * patch;
    const long long num_patches = (long long)gh * gw;
    if ((unsigned long long)num_patches > SIZE_MAX / sizeof(float) / (unsigned long long)patch_dim)
        return finch_error(FINCH_ERR_OUT_OF_MEMORY, "%s: %dx%d gives too many patches", name, w, h);

    const unsigned char *rgb = img->rgb;
    unsigned char *resized = NULL;
    if (h != img->height || w != img->width) {
        resized = malloc((size_t)w * h * 3);
        if (!resized) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "%s: out of memory resizing to %dx%d", name, w, h);
        if ((rc = image_resize_bicubic(img->rgb, img->width, img->height, resized, w, h))) {
            free(resized);
            return finch_error_prefix(rc, "%s: ", name);
        }
        rgb = resized;
    }

    /* The 256 possible values of each channel, as numpy computes them: float32(float64(u) * factor),
     * then (x - mean) / std in float32. */
    float lut[3][256];
    for (int c = 0; c < 3; c++)
        for (int u = 0; u < 256; u++) {
            float x = cfg->do_rescale ? (float)((double)u * cfg->rescale_factor) : (float)u;
            lut[c][u] = cfg->do_normalize ? (x - cfg->image_mean[c]) / cfg->image_std[c] : x;
        }

    float *pv = malloc((size_t)num_patches * (size_t)patch_dim * sizeof(float));
    if (!pv) {
        free(resized);
        return finch_error(FINCH_ERR_OUT_OF_MEMORY, "%s: out of memory for %lld patches", name, num_patches);
    }
    float *row = pv;
    for (int wy = 0; wy < gh / merge; wy++)
        for (int wx = 0; wx < gw / merge; wx++)
            for (int my = 0; my < merge; my++)
                for (int mx = 0; mx < merge; mx++, row += patch_dim) {
                    const int y0 = (wy * merge + my) * patch, x0 = (wx * merge + mx) * patch;
                    float *v = row;
                    for (int c = 0; c < 3; c++)
                        for (int t = 0; t < frames; t++)       /* every frame is the same still image */
                            for (int y = 0; y < patch; y++)
                                for (int x = 0; x < patch; x++)
                                    *v++ = lut[c][rgb[((size_t)(y0 + y) * w + (size_t)(x0 + x)) * 3 + c]];
                }
    free(resized);
    out->pixel_values = pv;
    out->num_patches = num_patches;
    out->patch_dim = patch_dim;
    out->grid_thw[0] = 1;
    out->grid_thw[1] = gh;
    out->grid_thw[2] = gw;
    return FINCH_OK;
}

void finch_image_patches_free(finch_image_patches *p)
{
    if (!p) return;
    free(p->pixel_values);
    memset(p, 0, sizeof *p);
}
