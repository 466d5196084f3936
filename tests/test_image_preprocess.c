/* Qwen2-VL image preprocessing against transformers 5.17's Qwen2VLImageProcessor (the goldens in
 * ../shared/golden/qwen2_5_vl), smart_resize and Python rounding against values printed by the
 * transformers formula in Python, decoding of the other formats and alpha/grey conversion. */
#include "core/error.h"
#include "core/image_preprocess.h"
#include "core/safetensors.h"
#include "finch/finch.h"
#include "finch/vision.h"
#include "tests/image_encode.h"
#include "tests/testing.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char golden_dir[600];

static void test_golden_image(st_file *g, const finch_qwen2vl_image_config *cfg, int k, double tol)
{
    char path[700], name[64];
    snprintf(path, sizeof path, "%s/image%d.png", golden_dir, k);
    finch_image img;
    int rc = finch_image_load(path, NULL, &img);
    CHECK(rc == FINCH_OK, "load %s: %s", path, finch_last_error());
    if (rc) return;
    finch_image_patches p;
    rc = finch_image_preprocess_qwen2vl(&img, cfg, &p);
    CHECK(rc == FINCH_OK, "preprocess %s: %s", path, finch_last_error());
    snprintf(name, sizeof name, "image%d.grid_thw", k);
    const st_tensor *thw = st_find(g, name);
    snprintf(name, sizeof name, "image%d.pixel_values", k);
    const st_tensor *pv = st_find(g, name);
    CHECK(thw && pv && thw->numel == 3 && pv->ndim == 2, "golden tensors for image%d", k);
    if (rc == FINCH_OK && thw && pv && thw->numel == 3 && pv->ndim == 2) {
        int32_t ref_thw[3];
        st_to_i32(thw, ref_thw);
        CHECK(memcmp(ref_thw, p.grid_thw, sizeof ref_thw) == 0, "image%d grid_thw %d,%d,%d vs golden %d,%d,%d", k,
              p.grid_thw[0], p.grid_thw[1], p.grid_thw[2], ref_thw[0], ref_thw[1], ref_thw[2]);
        CHECK(p.num_patches == pv->shape[0] && p.patch_dim == pv->shape[1], "image%d shape [%lld,%lld] vs [%lld,%lld]",
              k, p.num_patches, p.patch_dim, (long long)pv->shape[0], (long long)pv->shape[1]);
        if (p.num_patches == pv->shape[0] && p.patch_dim == pv->shape[1]) {
            float *ref = malloc(sizeof(float) * (size_t)pv->numel);
            st_to_f32(pv, ref);
            double rel = testing_rel_err(p.pixel_values, ref, (size_t)pv->numel), max_abs = 0;
            for (int64_t i = 0; i < pv->numel; i++) max_abs = fmax(max_abs, fabs((double)p.pixel_values[i] - ref[i]));
            printf("image%d (%dx%d -> grid %d,%d,%d): relative error %.3g, max abs error %.3g (tolerance %g)\n", k,
                   img.width, img.height, p.grid_thw[0], p.grid_thw[1], p.grid_thw[2], rel, max_abs, tol);
            CHECK(rel <= tol, "image%d pixel_values relative error %g > %g", k, rel, tol);
            free(ref);
        }
    }
    finch_image_patches_free(&p);
    finch_image_free(&img);
}

static void test_goldens(void)
{
    snprintf(golden_dir, sizeof golden_dir, "%s/golden/qwen2_5_vl", testing_shared_dir());
    finch_qwen2vl_image_config cfg;
    int rc = finch_qwen2vl_image_config_load(golden_dir, &cfg);
    CHECK(rc == FINCH_OK, "config: %s", finch_last_error());
    if (rc) return;
    CHECK(cfg.min_pixels == 3136 && cfg.max_pixels == 1003520 && cfg.patch_size == 14 && cfg.merge_size == 2 &&
          cfg.temporal_patch_size == 2 && cfg.resample == 3 && cfg.do_resize && cfg.do_rescale && cfg.do_normalize,
          "config values");
    CHECK(fabs(cfg.rescale_factor - 1.0 / 255) < 1e-15 && cfg.image_std[2] == 0.27577711f, "config numbers");
    char path[700];
    snprintf(path, sizeof path, "%s/golden.safetensors", golden_dir);
    st_file *g = NULL;
    rc = st_open(path, &g);
    CHECK(rc == FINCH_OK, "%s", finch_last_error());
    if (rc) return;
    test_golden_image(g, &cfg, 0, 1e-5);   /* no resize */
    test_golden_image(g, &cfg, 1, 2e-2);   /* 70x50 -> 56x56, bicubic */
    st_close(g);
}

static void test_python_round(void)
{
    const double in[] = {0.5, 1.5, 2.5, -0.5, -1.5, 3.5, 2.4999999, 2.5000001, 0.0, 7.0};
    const double want[] = {0, 2, 2, 0, -2, 4, 2, 3, 0, 7};
    for (size_t i = 0; i < sizeof in / sizeof in[0]; i++)
        CHECK(python_round(in[i]) == want[i], "round(%g) = %g, Python gives %g", in[i], python_round(in[i]), want[i]);
}

/* Expected sizes printed by transformers' smart_resize formula in Python 3. */
static void test_smart_resize(void)
{
    static const struct { int h, w; long long max_px; int want_h, want_w; } cases[] = {
        {50, 70, 1003520, 56, 56},      /* 70/28 = 2.5 rounds to 2 (ties to even) */
        {56, 84, 1003520, 56, 84},
        {42, 42, 1003520, 56, 56},      /* 1.5 -> 2 */
        {70, 70, 1003520, 56, 56},      /* 2.5 -> 2, and 56*56 is exactly min_pixels */
        {126, 98, 1003520, 112, 112},   /* 4.5 -> 4, 3.5 -> 4 */
        {98, 126, 1003520, 112, 112},
        {10, 20, 1003520, 56, 84},      /* under min_pixels: scaled up, ceil */
        {3, 3, 1003520, 56, 56},
        {14, 14, 1003520, 56, 56},
        {1, 199, 1003520, 28, 812},
        {20, 4000, 1003520, 28, 4004},  /* aspect ratio exactly 200 is allowed */
        {4000, 3000, 1003520, 1148, 840},   /* over max_pixels: scaled down, floor */
        {1080, 1920, 1003520, 728, 1316},
        {8000, 6000, 1003520, 1148, 840},
        {4000, 3000, 12845056, 4004, 2996},
        {1080, 1920, 12845056, 1092, 1932},
        {8000, 6000, 12845056, 4116, 3080},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int h = 0, w = 0;
        int rc = qwen2vl_smart_resize("t", cases[i].h, cases[i].w, 28, 3136, cases[i].max_px, &h, &w);
        CHECK(rc == FINCH_OK && h == cases[i].want_h && w == cases[i].want_w, "smart_resize(%d, %d, max %lld) = %d, %d; "
              "want %d, %d (%s)", cases[i].h, cases[i].w, cases[i].max_px, h, w, cases[i].want_h, cases[i].want_w,
              finch_last_error());
    }
    int h, w;
    int rc = qwen2vl_smart_resize("wide.png", 1, 201, 28, 3136, 1003520, &h, &w);
    CHECK(rc == FINCH_ERR_UNSUPPORTED && strstr(finch_last_error(), "wide.png") && strstr(finch_last_error(), "aspect"),
          "aspect ratio 201: %d %s", rc, finch_last_error());
    rc = qwen2vl_smart_resize("tall.png", 5000, 20, 28, 3136, 1003520, &h, &w);
    CHECK(rc == FINCH_ERR_UNSUPPORTED, "aspect ratio 250: %d", rc);
}

static void test_resize_properties(void)
{
    /* A constant image stays constant through up- and down-sampling (weights sum to one). */
    enum { W = 37, H = 23 };
    unsigned char src[W * H * 3], dst[90 * 11 * 3];
    for (int i = 0; i < W * H; i++) { src[3 * i] = 200; src[3 * i + 1] = 7; src[3 * i + 2] = 128; }
    CHECK(image_resize_bicubic(src, W, H, dst, 90, 11) == FINCH_OK, "resize");
    int constant = 1;
    for (int i = 0; i < 90 * 11; i++) constant &= dst[3 * i] == 200 && dst[3 * i + 1] == 7 && dst[3 * i + 2] == 128;
    CHECK(constant, "constant image changed by resizing");
    /* A horizontal ramp resized only vertically keeps every column's value. */
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            for (int c = 0; c < 3; c++) src[(y * W + x) * 3 + c] = (unsigned char)(x * 6 + c);
    unsigned char tall[W * 50 * 3];
    CHECK(image_resize_bicubic(src, W, H, tall, W, 50) == FINCH_OK, "resize");
    int same = 1;
    for (int y = 0; y < 50; y++)
        for (int x = 0; x < W; x++) same &= tall[(y * W + x) * 3 + 1] == x * 6 + 1;
    CHECK(same, "vertical-only resize altered a horizontal ramp");
    CHECK(image_resize_bicubic(src, 0, H, dst, 5, 5) == FINCH_ERR_INVALID_ARGUMENT, "zero-size resize");
}

static void write_file(const char *path, const char *text)
{
    FILE *fp = fopen(path, "wb");
    if (fp) { fputs(text, fp); fclose(fp); }
}

static void test_config_variants(void)
{
    char path[600];
    snprintf(path, sizeof path, "%s/preproc_flat.json", testing_tmp_dir());
    /* transformers 4 checkpoints (e.g. Qwen2.5-VL-7B-Instruct) give min/max_pixels at the top level. */
    write_file(path, "{\"min_pixels\": 3136, \"max_pixels\": 12845056, \"patch_size\": 14, \"temporal_patch_size\": 2,"
                     " \"merge_size\": 2, \"image_mean\": [0.5, 0.5, 0.5], \"image_std\": 0.5,"
                     " \"image_processor_type\": \"Qwen2VLImageProcessor\"}");
    finch_qwen2vl_image_config c;
    int rc = finch_qwen2vl_image_config_load(path, &c);
    CHECK(rc == FINCH_OK && c.max_pixels == 12845056 && c.min_pixels == 3136 && c.image_std[1] == 0.5f &&
          c.image_mean[2] == 0.5f && c.resample == 3, "flat config: %s", finch_last_error());
    write_file(path, "{\"size\": {\"shortest_edge\": 100, \"longest_edge\": 2000}, \"max_pixels\": 5000}");
    rc = finch_qwen2vl_image_config_load(path, &c);
    CHECK(rc == FINCH_OK && c.min_pixels == 100 && c.max_pixels == 5000, "max_pixels overrides size.longest_edge");
    write_file(path, "{\"resample\": 2}");
    rc = finch_qwen2vl_image_config_load(path, &c);
    CHECK(rc == FINCH_ERR_UNSUPPORTED && strstr(finch_last_error(), "resample"), "resample 2: %s", finch_last_error());
    write_file(path, "{\"size\": {\"height\": 224, \"width\": 224}}");
    rc = finch_qwen2vl_image_config_load(path, &c);
    CHECK(rc == FINCH_ERR_FORMAT && strstr(finch_last_error(), "shortest_edge"), "size without edges: %s", finch_last_error());
    write_file(path, "{\"image_std\": [0.2, 0, 0.2]}");
    rc = finch_qwen2vl_image_config_load(path, &c);
    CHECK(rc == FINCH_ERR_FORMAT && strstr(finch_last_error(), "image_std"), "zero std: %s", finch_last_error());
    write_file(path, "{\"patch_size\": 14.5}");
    rc = finch_qwen2vl_image_config_load(path, &c);
    CHECK(rc == FINCH_ERR_FORMAT && strstr(finch_last_error(), "patch_size"), "fractional patch: %s", finch_last_error());
    write_file(path, "{\"min_pixels\": ");
    rc = finch_qwen2vl_image_config_load(path, &c);
    CHECK(rc == FINCH_ERR_FORMAT && strstr(finch_last_error(), "preproc_flat.json"), "bad JSON: %s", finch_last_error());
    snprintf(path, sizeof path, "%s/no_such_dir/preprocessor_config.json", testing_tmp_dir());
    rc = finch_qwen2vl_image_config_load(path, &c);
    CHECK(rc == FINCH_ERR_IO && strstr(finch_last_error(), "no_such_dir"), "missing config: %s", finch_last_error());
}

/* The patch layout, independently of the goldens: with normalisation off and no resize every value
 * is a pixel, and the row/column of each can be predicted from the HF reshape. */
static void test_patch_layout(void)
{
    enum { W = 56, H = 84 };
    finch_image img = {.width = W, .height = H, .rgb = malloc(W * H * 3), .source = NULL};
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            for (int c = 0; c < 3; c++) img.rgb[(y * W + x) * 3 + c] = (unsigned char)((x + 3 * y + 100 * c) & 255);
    finch_qwen2vl_image_config cfg = finch_qwen2vl_image_config_default();
    cfg.do_rescale = cfg.do_normalize = 0;
    cfg.temporal_patch_size = 3;
    finch_image_patches p;
    int rc = finch_image_preprocess_qwen2vl(&img, &cfg, &p);
    CHECK(rc == FINCH_OK && p.grid_thw[0] == 1 && p.grid_thw[1] == 6 && p.grid_thw[2] == 4 && p.patch_dim == 3 * 3 * 196,
          "layout grid: %s", finch_last_error());
    int ok = rc == FINCH_OK;
    for (int y = 0; ok && y < H; y++)
        for (int x = 0; x < W; x++)
            for (int c = 0; c < 3; c++)
                for (int t = 0; t < 3; t++) {
                    int gy = y / 14, gx = x / 14;
                    long long row = ((gy / 2) * 2 + gx / 2) * 4 + (gy % 2) * 2 + gx % 2;
                    long long col = ((c * 3 + t) * 14 + y % 14) * 14 + x % 14;
                    ok &= p.pixel_values[row * p.patch_dim + col] == (float)img.rgb[(y * W + x) * 3 + c];
                }
    CHECK(ok, "patch layout differs from (t, window row, window col, cell row, cell col) x (c, t, y, x)");
    finch_image_patches_free(&p);
    cfg.do_resize = 0;
    img.width = 50;   /* not a multiple of 28 without resizing */
    rc = finch_image_preprocess_qwen2vl(&img, &cfg, &p);
    CHECK(rc == FINCH_ERR_INVALID_ARGUMENT && p.pixel_values == NULL, "do_resize off with 50 wide: %d", rc);
    free(img.rgb);
}

/* Grey, grey+alpha and RGBA PNGs written by stb_image_write, and the same image as BMP, TGA and JPEG. */
static int load_encoded(const char *kind, int w, int h, int comp, const unsigned char *pixels,
                        const finch_image_load_options *opts, finch_image *img)
{
    size_t len = 0;
    unsigned char *bytes = encode_image(kind, w, h, comp, pixels, &len);
    CHECK(bytes != NULL, "encoding %s", kind);
    char name[32];
    snprintf(name, sizeof name, "test.%s", kind);
    int rc = bytes ? finch_image_load_memory(bytes, len, name, opts, img) : FINCH_ERR_FORMAT;
    free(bytes);
    return rc;
}

/* Grey, grey+alpha and RGBA PNGs written by stb_image_write, and an RGB image as BMP, TGA and JPEG. */
static void test_channels_and_formats(void)
{
    enum { W = 5, H = 3 };
    unsigned char grey[W * H], ga[W * H * 2], rgba[W * H * 4], rgb[W * H * 3];
    for (int i = 0; i < W * H; i++) {
        grey[i] = (unsigned char)(i * 17);
        ga[2 * i] = grey[i]; ga[2 * i + 1] = (unsigned char)(i * 18);
        rgba[4 * i] = (unsigned char)(i * 11); rgba[4 * i + 1] = (unsigned char)(250 - i); rgba[4 * i + 2] = 3;
        rgba[4 * i + 3] = (unsigned char)(i * 18);
    }
    for (int i = 0; i < W * H * 3; i++) rgb[i] = (unsigned char)(100 + (i % 3) * 20 + (i / 3));
    finch_image img;
    int rc = load_encoded("png", W, H, 1, grey, NULL, &img);
    int ok = rc == FINCH_OK && img.width == W && img.height == H;
    for (int i = 0; ok && i < W * H; i++) ok = img.rgb[3 * i] == grey[i] && img.rgb[3 * i + 1] == grey[i] && img.rgb[3 * i + 2] == grey[i];
    CHECK(ok, "grey PNG to RGB: %s", finch_last_error());
    CHECK(rc == FINCH_OK && img.source && strcmp(img.source, "test.png") == 0, "source name kept");
    finch_image_free(&img);

    rc = load_encoded("png", W, H, 2, ga, NULL, &img);
    ok = rc == FINCH_OK;
    for (int i = 0; ok && i < W * H; i++) ok = img.rgb[3 * i] == grey[i] && img.rgb[3 * i + 2] == grey[i];
    CHECK(ok, "grey+alpha PNG: alpha dropped by default: %s", finch_last_error());
    finch_image_free(&img);

    rc = load_encoded("png", W, H, 4, rgba, NULL, &img);
    ok = rc == FINCH_OK;
    for (int i = 0; ok && i < W * H; i++)
        for (int c = 0; c < 3; c++) ok &= img.rgb[3 * i + c] == rgba[4 * i + c];
    CHECK(ok, "RGBA PNG: alpha dropped by default");
    finch_image_free(&img);
    finch_image_load_options white = {.alpha_on_white = 1};
    rc = load_encoded("png", W, H, 4, rgba, &white, &img);
    ok = rc == FINCH_OK;
    for (int i = 0; ok && i < W * H; i++)
        for (int c = 0; c < 3; c++) {
            double a = rgba[4 * i + 3] / 255.0, want = rgba[4 * i + c] * a + 255 * (1 - a);
            ok &= fabs(img.rgb[3 * i + c] - want) <= 0.5 + 1e-9;
        }
    CHECK(ok, "RGBA PNG composited on white");
    finch_image_free(&img);

    const char *kinds[] = {"bmp", "tga", "jpg"};
    for (int k = 0; k < 3; k++) {
        rc = load_encoded(kinds[k], W, H, 3, rgb, NULL, &img);
        double worst = 0;
        for (int i = 0; rc == FINCH_OK && i < W * H * 3; i++) worst = fmax(worst, fabs((double)img.rgb[i] - rgb[i]));
        CHECK(rc == FINCH_OK && img.width == W && img.height == H && worst <= (k == 2 ? 12 : 0),
              "%s: rc %d, worst difference %g (%s)", kinds[k], rc, worst, finch_last_error());
        finch_image_free(&img);
    }
}

int main(void)
{
    test_goldens();
    test_python_round();
    test_smart_resize();
    test_resize_properties();
    test_config_variants();
    test_patch_layout();
    test_channels_and_formats();
    return testing_finish();
}
