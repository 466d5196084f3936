/* Generation with images on the qwen2_5_vl golden (CPU, f32), against full forward passes without a
 * cache: the prompt holds image0's block of image tokens; the cache's logits after the prompt and
 * after each greedy token equal finch_forward's (multimodal RoPE positions, decode positions
 * continuing after the largest one); finch_generate's greedy tokens are the no-cache argmax; two
 * prompts with an image each in one batch give what each gives alone; and the errors for images
 * that do not match the prompts' image tokens, and for image tokens without images. */
#include "core/safetensors.h"
#include "core/session.h"
#include "finch/finch.h"
#include "finch/generate.h"
#include "tests/testing.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NEW_TOKENS 12

static int ok(int rc, const char *what)
{
    CHECK(rc == FINCH_OK, "%s: %s (%s)", what, finch_status_name(rc), finch_last_error());
    return rc == FINCH_OK;
}

static int32_t argmax(const float *x, int64_t n)
{
    int64_t best = 0;
    for (int64_t i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return (int32_t)best;
}

int main(void)
{
    char base[1100], path[1200];
    snprintf(base, sizeof base, "%s/golden/qwen2_5_vl", testing_shared_dir());
    snprintf(path, sizeof path, "%s/golden.safetensors", base);
    printf("generation with images (qwen2_5_vl)\n");
    st_set *gold = NULL;
    finch_runtime *rt = NULL;
    finch_model *m = NULL;
    finch_runtime_options ro = {"cpu", NULL, 1};
    if (!ok(st_set_open_file(path, &gold), path) || !ok(finch_runtime_open_ex(&ro, &rt), "finch_runtime_open")) return testing_finish();
    snprintf(path, sizeof path, "%s/model", base);
    if (!ok(finch_model_load(rt, path, NULL, &m), "finch_model_load")) return testing_finish();
    const st_tensor *ti = st_set_find(gold, "input_ids"), *tp = st_set_find(gold, "image0.pixel_values"),
                    *tg = st_set_find(gold, "image0.grid_thw");
    CHECK(ti && tp && tg, "golden tensors");
    if (!ti || !tp || !tg) return testing_finish();
    int64_t T = ti->shape[1], n_patches = tp->shape[0], patch_dim = tp->shape[1], V = 320;
    int32_t *rows = malloc((size_t)ti->numel * 4), grid[3], seq[256];
    float *pixels = malloc((size_t)tp->numel * 4);
    st_to_i32(ti, rows);
    st_to_i32(tg, grid);
    st_to_f32(tp, pixels);
    memcpy(seq, rows, (size_t)T * 4);   /* row 0: text, image0's block of image tokens, text */
    int image_tokens = 0;
    for (int64_t t = 0; t < T; t++) image_tokens += seq[t] == 300;
    CHECK(image_tokens == grid[1] * grid[2] / 4 && T + NEW_TOKENS < 256, "the golden prompt holds %d image tokens", image_tokens);

    /* The reference: a full forward pass over prompt + tokens so far, argmax of the last row. */
    float *ref = malloc((size_t)((NEW_TOKENS + 1) * V) * 4), *lg = malloc((size_t)((T + NEW_TOKENS) * V) * 4);
    int32_t want[NEW_TOKENS];
    int good = 1;
    for (int k = 0; good && k <= NEW_TOKENS; k++) {
        finch_batch b = {0};
        b.batch = 1;
        b.seq_len = T + k;
        b.input_ids = seq;
        b.pixel_values = pixels;
        b.image_grid_thw = grid;
        b.n_images = 1;
        b.n_patches = n_patches;
        finch_step_options so = {1, 0};
        finch_step_result r;
        good = ok(finch_forward(m, &b, &so, &r), "finch_forward") && ok(finch_model_logits(m, lg, (size_t)((T + k) * V)), "logits");
        if (!good) break;
        memcpy(ref + k * V, lg + (T + k - 1) * V, (size_t)V * 4);
        if (k < NEW_TOKENS) want[k] = seq[T + k] = argmax(ref + k * V, V);
    }

    /* The cache: the prompt with its image in one pass, then one token at a time. */
    finch_session *s = NULL;
    if (good && ok(finch_session_create(m, 2, &s), "finch_session_create")) {
        finch_batch images = {0};
        images.pixel_values = pixels;
        images.image_grid_thw = grid;
        images.n_images = 1;
        images.n_patches = n_patches;
        int q = 0;
        const int32_t *p = seq;
        int64_t one = 1;
        double worst = 0;
        float got[320];
        int rc = finch_session_append_images(s, 1, &q, &p, &T, &images, got);
        for (int k = 0; ok(rc, "session pass") && k <= NEW_TOKENS; k++) {
            double e = testing_rel_err(got, ref + k * V, (size_t)V);
            if (e > worst) worst = e;
            if (k == NEW_TOKENS) break;
            p = &want[k];
            rc = finch_session_append(s, 1, &q, &p, &one, got);
        }
        CHECK(worst < 1e-4, "cached logits vs full forward: rel err %.3g", worst);
        printf("  %-46s worst rel err %.2e over %d steps\n", "cache logits = forward logits (M-RoPE)", worst, NEW_TOKENS + 1);

        /* Two prompts, an image each: batched as alone. */
        finch_generate_options o = finch_generate_options_default();
        o.sampling.greedy = 1;
        o.max_new_tokens = NEW_TOKENS;
        o.use_model_eos = 0;
        o.pixel_values = pixels;
        o.image_grid_thw = grid;
        o.n_images = 1;
        o.n_patches = n_patches;
        finch_generation g1, g2[2];
        const int32_t *prompts[2] = {seq, seq};
        int64_t lens[2] = {T, T};
        if (ok(finch_generate(m, 1, prompts, lens, &o, &g1), "finch_generate")) {
            int same = g1.tokens.len == NEW_TOKENS && !memcmp(g1.tokens.ids, want, sizeof want);
            CHECK(same, "greedy generation with the image differs from the no-cache argmax");
            printf("  %-46s %s\n", "finch_generate greedy = no-cache argmax", same ? "yes" : "NO");
            finch_generation_free(&g1);
        }
        float *two = malloc((size_t)(2 * n_patches * patch_dim) * 4);
        int32_t grids[6];
        memcpy(two, pixels, (size_t)(n_patches * patch_dim) * 4);
        memcpy(two + n_patches * patch_dim, pixels, (size_t)(n_patches * patch_dim) * 4);
        memcpy(grids, grid, 12);
        memcpy(grids + 3, grid, 12);
        o.pixel_values = two;
        o.image_grid_thw = grids;
        o.n_images = 2;
        o.n_patches = 2 * n_patches;
        if (ok(finch_session_generate(s, 2, prompts, lens, &o, g2), "batched finch_session_generate")) {
            int same = 1;
            for (int i = 0; i < 2; i++) same &= g2[i].tokens.len == NEW_TOKENS && !memcmp(g2[i].tokens.ids, want, sizeof want);
            CHECK(same, "two prompts with an image each differ from one alone");
            printf("  %-46s %s\n", "two image prompts in one batch", same ? "as alone" : "DIFFER");
            finch_generation_free(&g2[0]);
            finch_generation_free(&g2[1]);
        }
        /* Errors: one image for two image blocks; an image grid that does not match its block. */
        o.n_images = 1;
        o.n_patches = n_patches;
        rc = finch_session_generate(s, 2, prompts, lens, &o, g2);
        CHECK(rc == FINCH_ERR_INVALID_ARGUMENT && strstr(finch_last_error(), "image"), "too few images: %s (%s)", finch_status_name(rc),
              finch_last_error());
        grids[1] = grid[1] * 2;
        o.image_grid_thw = grids;
        o.n_patches = 2 * n_patches;
        rc = finch_session_generate(s, 1, prompts, lens, &o, g2);
        CHECK(rc == FINCH_ERR_INVALID_ARGUMENT, "a grid that does not match the image block: %s (%s)", finch_status_name(rc), finch_last_error());
        /* A prompt with image tokens and no images. */
        o.n_images = 0;
        o.pixel_values = NULL;
        o.image_grid_thw = NULL;
        o.n_patches = 0;
        finch_session_reset(s);
        rc = finch_session_generate(s, 1, prompts, lens, &o, g2);
        CHECK(rc == FINCH_ERR_INVALID_ARGUMENT && strstr(finch_last_error(), "no images"), "image tokens without images: %s (%s)",
              finch_status_name(rc), finch_last_error());
        free(two);
    }
    finch_session_free(s);
    free(ref);
    free(lg);
    free(rows);
    free(pixels);
    finch_model_free(m);
    finch_runtime_close(rt);
    st_set_close(gold);
    return testing_finish();
}
