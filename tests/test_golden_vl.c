/* Parity of Qwen2.5-VL (Qwen2_5_VLForConditionalGeneration) with Hugging Face transformers + PEFT
 * (float64 references in $FINCH_SHARED_DIR/golden/qwen2_5_vl), in f32 on the CPU backend, or on the
 * backend named by the first argument (`test_golden_vl cuda`; exit 77 when it has no device here):
 * the image's pixel_values and grid from golden.safetensors go in with the batch; base logits, loss
 * and every full fine-tuning gradient (vision tower included); the same through the fused head with
 * gradient checkpointing; the golden adapter's logits, loss and LoRA gradients; bf16 within 2e-2;
 * the multimodal RoPE position ids; LoRA on the vision tower; and the batch errors. */
#include "core/model.h"
#include "core/mrope.h"
#include "core/vision_tower.h"
#include "tests/golden_common.h"

#include <cjson/cJSON.h>
#include <unistd.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *backend = "cpu";
static int32_t grid[3];
static float *pixels;
static int64_t n_patches;

static finch_batch image_batch(void)
{
    finch_batch b = {.batch = B, .seq_len = T, .input_ids = ids, .labels = labels, .pixel_values = pixels,
                     .image_grid_thw = grid, .n_images = 1, .n_patches = n_patches,
                     /* make_golden called the model without mm_token_type_ids: transformers 5 then
                      * numbers the positions 0, 1, 2, ... on all three M-RoPE rows. */
                     .text_positions = 1};
    return b;
}

static int step(finch_model *m, int want_logits, finch_step_result *r)
{
    finch_batch b = image_batch();
    finch_step_options so = {want_logits, 0.0f};
    return ok(finch_forward_backward(m, &b, &so, r), "finch_forward_backward");
}

/* Multimodal RoPE positions: what transformers 5.17's get_rope_index printed (with the processor's
 * mm_token_type_ids) for 5 text tokens, vision_start, a 1x4x6 image's 6 tokens, vision_end and
 * 3 more text tokens; then two images in one row and one in the next. */
static void check_mrope(int32_t image_token)
{
    int32_t ids1[16] = {5, 6, 7, 8, 9, 302, 300, 300, 300, 300, 300, 300, 303, 10, 11, 12}, g1[3] = {1, 4, 6}, pos[3 * 16];
    static const int32_t hf[3][16] = {{0, 1, 2, 3, 4, 5, 6, 6, 6, 6, 6, 6, 9, 10, 11, 12},
                                      {0, 1, 2, 3, 4, 5, 6, 6, 6, 7, 7, 7, 9, 10, 11, 12},
                                      {0, 1, 2, 3, 4, 5, 6, 7, 8, 6, 7, 8, 9, 10, 11, 12}};
    int same = ok(finch_mrope_positions(ids1, NULL, 1, 16, 300, g1, 1, 2, pos), "finch_mrope_positions") &&
               !memcmp(pos, hf, sizeof pos);
    CHECK(same, "M-RoPE positions differ from transformers'");
    /* Row 0: text, a 2x3 merged image, text, a 3x4 one (rows 5..7, columns 5..8 from 5); row 1: an
     * image first. */
    int32_t ids2[2 * 24], g2[9] = {1, 4, 6, 1, 6, 8, 1, 4, 6}, pos2[3 * 48];
    for (int i = 0; i < 48; i++) ids2[i] = 7;
    for (int i = 1; i < 7; i++) ids2[i] = 300;  /* row 0: positions 1..6 */
    for (int i = 8; i < 20; i++) ids2[i] = 300; /* row 0: positions 8..19 */
    for (int i = 24; i < 30; i++) ids2[i] = 300; /* row 1: positions 0..5 */
    int good = ok(finch_mrope_positions(ids2, NULL, 2, 24, 300, g2, 3, 2, pos2), "finch_mrope_positions, 3 images");
    const int32_t *t = pos2, *h = pos2 + 48, *w = pos2 + 96;
    good &= t[0] == 0 && t[1] == 1 && h[6] == 2 && w[6] == 3 && t[7] == 4;   /* first image from 1: 2 rows, 3 columns */
    good &= t[8] == 5 && h[8] == 5 && w[8] == 5 && h[19] == 7 && w[19] == 8; /* second from 5 */
    good &= t[20] == 9 && h[23] == 12 && w[23] == 12;                        /* text resumes at 5 + max(3, 4) */
    good &= t[24] == 0 && h[29] == 1 && w[29] == 2 && t[30] == 3;            /* row 1 starts over */
    CHECK(good, "M-RoPE positions over several images and rows");
    /* Packed: the two rows side by side in one row, as two segments, give the same positions. */
    int32_t seg[48], packed[3 * 48];
    for (int i = 0; i < 48; i++) seg[i] = i / 24;
    int same_packed = ok(finch_mrope_positions(ids2, seg, 1, 48, 300, g2, 3, 2, packed), "packed M-RoPE positions") &&
                      !memcmp(packed, pos2, sizeof packed);
    CHECK(same_packed, "packed M-RoPE positions differ from the rows run apart");
    /* text_positions: 0, 1, 2, ... on every row. */
    int plain = ok(finch_mrope_text_positions(ids1, NULL, 1, 16, 300, g1, 1, 2, pos), "finch_mrope_text_positions");
    for (int r = 0; r < 3; r++)
        for (int i = 0; i < 16; i++) plain &= pos[r * 16 + i] == i;
    CHECK(plain, "text positions");
    const st_tensor *gt = st_set_find(gold, "mrope_position_ids");
    if (gt) { /* [3, B, T], if a golden ever carries them (computed with mm_token_type_ids) */
        int64_t n = B * T;
        int32_t *ref = malloc((size_t)gt->numel * sizeof *ref), *mine = malloc((size_t)(3 * n) * sizeof *mine);
        int match = gt->numel == 3 * n && !st_to_i32(gt, ref) &&
                    !finch_mrope_positions(ids, NULL, B, T, image_token, grid, 1, 2, mine) && !memcmp(ref, mine, (size_t)(3 * n) * sizeof *ref);
        CHECK(match, "mrope_position_ids differ from the golden ones");
        free(ref);
        free(mine);
    }
    printf("  %-44s %s%s\n", "mrope positions", same && good && plain && same_packed ? "match" : "DIFFER",
           gt ? " (and the golden ids)" : "");
}

static void check_errors(finch_runtime *rt, const char *model_dir, const char *text_model_dir, int32_t image_token)
{
    finch_model *m = load(rt, model_dir, 0, 0, FINCH_DTYPE_F32);
    if (!m) return;
    finch_step_result r;
    finch_batch b = image_batch();
    /* Missing pixel values: image tokens but no image. */
    finch_batch none = b;
    none.pixel_values = NULL;
    none.image_grid_thw = NULL;
    none.n_images = 0;
    none.n_patches = 0;
    int rc = finch_forward(m, &none, NULL, &r);
    CHECK(rc == FINCH_ERR_INVALID_ARGUMENT && strstr(finch_last_error(), "image token"), "image tokens without images: %s",
          finch_last_error());
    /* n_images without pixel values. */
    none.n_images = 1;
    rc = finch_forward(m, &none, NULL, &r);
    CHECK(rc == FINCH_ERR_INVALID_ARGUMENT && strstr(finch_last_error(), "pixel_values"), "missing pixel_values: %s",
          finch_last_error());
    /* One image token too few. */
    int32_t *fewer = malloc((size_t)(B * T) * sizeof *fewer);
    memcpy(fewer, ids, (size_t)(B * T) * sizeof *fewer);
    for (int64_t t = 0; t < T; t++)
        if (fewer[t] == image_token) {
            fewer[t] = 7;
            break;
        }
    finch_batch bad = b;
    bad.input_ids = fewer;
    rc = finch_forward(m, &bad, NULL, &r);
    CHECK(rc == FINCH_ERR_INVALID_ARGUMENT && strstr(finch_last_error(), "needs"), "image token count mismatch: %s",
          finch_last_error());
    /* No image tokens at all for the image given. */
    for (int64_t t = 0; t < T; t++)
        if (fewer[t] == image_token) fewer[t] = 7;
    rc = finch_forward(m, &bad, NULL, &r);
    CHECK(rc == FINCH_ERR_INVALID_ARGUMENT && strstr(finch_last_error(), "image tokens for 0"), "unused image: %s",
          finch_last_error());
    free(fewer);
    /* Patch rows that do not add up to the grid. */
    bad = b;
    bad.n_patches = n_patches - 4;
    rc = finch_forward(m, &bad, NULL, &r);
    CHECK(rc == FINCH_ERR_INVALID_ARGUMENT && strstr(finch_last_error(), "grids add up"), "patch count mismatch: %s",
          finch_last_error());
    /* A grid that is not a multiple of the merge size. */
    int32_t odd[3] = {1, 3, 8};
    bad = b;
    bad.image_grid_thw = odd;
    rc = finch_forward(m, &bad, NULL, &r);
    CHECK(rc == FINCH_ERR_INVALID_ARGUMENT, "odd grid refused: %s", finch_last_error());
    /* A good batch still works after the errors. */
    CHECK(finch_forward(m, &b, NULL, &r) == FINCH_OK, "good batch after errors: %s", finch_last_error());
    finch_model_free(m);

    /* Images for a text model. */
    m = load(rt, text_model_dir, 0, 0, FINCH_DTYPE_F32);
    if (!m) return;
    int32_t tids[4] = {5, 6, 7, 8};
    finch_batch tb = {.batch = 1, .seq_len = 4, .input_ids = tids, .pixel_values = pixels, .image_grid_thw = grid,
                      .n_images = 1, .n_patches = n_patches};
    rc = finch_forward(m, &tb, NULL, &r);
    CHECK(rc == FINCH_ERR_INVALID_ARGUMENT && strstr(finch_last_error(), "no vision tower"), "images for a text model: %s",
          finch_last_error());
    finch_model_free(m);
}

/* The same model in the other layouts a checkpoint can have: transformers 4's flat config.json
 * (text fields at the top, rope_scaling {"type": "mrope"}, vision in_chans) with transformers 5's
 * tensor names (model.language_model.*, model.visual.*). Logits and trainable names must agree. */
static void check_layouts(finch_runtime *rt, const char *model_dir)
{
    char path[1400], dir[1200];
    snprintf(path, sizeof path, "%s/config.json", model_dir);
    FILE *f = fopen(path, "rb");
    char text[16384];
    size_t len = f ? fread(text, 1, sizeof text - 1, f) : 0;
    if (f) fclose(f);
    text[len] = 0;
    cJSON *cfg = cJSON_Parse(text);
    CHECK(cfg != NULL, "%s", path);
    if (!cfg) return;
    /* Flatten: text_config's fields go to the top; RoPE as transformers 4 wrote it. */
    cJSON *tc = cJSON_DetachItemFromObject(cfg, "text_config"), *e;
    cJSON *rp = cJSON_DetachItemFromObject(tc, "rope_parameters");
    cJSON_ArrayForEach(e, tc) {
        if (!cJSON_GetObjectItem(cfg, e->string)) cJSON_AddItemToObject(cfg, e->string, cJSON_Duplicate(e, 1));
    }
    cJSON_AddNumberToObject(cfg, "rope_theta", cJSON_GetObjectItem(rp, "rope_theta")->valuedouble);
    cJSON *scaling = cJSON_AddObjectToObject(cfg, "rope_scaling");
    cJSON_AddStringToObject(scaling, "type", "mrope");
    cJSON_AddItemToObject(scaling, "mrope_section", cJSON_Duplicate(cJSON_GetObjectItem(rp, "mrope_section"), 1));
    cJSON *vc = cJSON_GetObjectItem(cfg, "vision_config");
    cJSON_AddNumberToObject(vc, "in_chans", cJSON_GetObjectItem(vc, "in_channels")->valuedouble);
    cJSON_DeleteItemFromObject(vc, "in_channels");
    cJSON_DeleteItemFromObject(vc, "rope_parameters");
    cJSON_Delete(tc);
    cJSON_Delete(rp);
    snprintf(dir, sizeof dir, "%s/qwen2_5_vl_layouts", testing_tmp_dir());
    char cmd[1300];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", dir);
    CHECK(system(cmd) == 0, "mkdir %s", dir);
    char *out = cJSON_Print(cfg);
    snprintf(path, sizeof path, "%s/config.json", dir);
    f = fopen(path, "wb");
    CHECK(f && fputs(out, f) >= 0 && fclose(f) == 0, "writing %s", path);
    cJSON_free(out);
    cJSON_Delete(cfg);

    /* Tensors under their transformers 5 names. */
    st_set *src = NULL;
    snprintf(path, sizeof path, "%s/model.safetensors", model_dir);
    if (!ok(st_set_open_file(path, &src), path)) return;
    int n = st_set_count(src);
    st_entry *ent = calloc((size_t)n, sizeof *ent);
    char (*names)[256] = calloc((size_t)n, sizeof *names);
    for (int i = 0; i < n; i++) {
        const st_tensor *t = st_set_at(src, i);
        if (!strncmp(t->name, "visual.", 7)) snprintf(names[i], sizeof names[i], "model.%s", t->name);
        else if (!strncmp(t->name, "model.", 6)) snprintf(names[i], sizeof names[i], "model.language_model.%s", t->name + 6);
        else snprintf(names[i], sizeof names[i], "%s", t->name);
        ent[i].name = names[i];
        ent[i].dtype = t->dtype;
        ent[i].ndim = t->ndim;
        memcpy(ent[i].shape, t->shape, sizeof ent[i].shape);
        ent[i].data = t->data;
    }
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    ok(st_write(path, ent, n, NULL), "st_write");
    st_set_close(src);
    free(ent);
    free(names);

    finch_model *m = load(rt, dir, 1, 0, FINCH_DTYPE_F32), *ref = load(rt, model_dir, 1, 0, FINCH_DTYPE_F32);
    finch_step_result r;
    if (m && ref && step(m, 1, &r)) {
        compare_logits(m, &r, "base", TOL, "");
        int same = finch_trainable_count(m) == finch_trainable_count(ref);
        for (int64_t i = 0; same && i < finch_trainable_count(m); i++) {
            finch_tensor_info a, b;
            finch_trainable_info(m, i, &a);
            finch_trainable_info(ref, i, &b);
            same = !strcmp(a.name, b.name);
        }
        CHECK(same, "trainable names differ between the two checkpoint layouts");
        printf("  %-44s %s\n", "flat config + transformers 5 names", same ? "same names" : "NAMES DIFFER");
    }
    finch_model_free(m);
    finch_model_free(ref);
}

/* The golden row twice, packed into one row as two segments (two images), with M-RoPE positions:
 * twice the loss of the row alone, and the same logits in each half. */
static void check_packed(finch_runtime *rt, const char *model_dir)
{
    finch_model *m = load(rt, model_dir, 0, 0, FINCH_DTYPE_F32);
    if (!m || B != 1) {
        finch_model_free(m);
        return;
    }
    int64_t V = m->cfg.vocab;
    int32_t *ids2 = malloc((size_t)(2 * T) * 4), *lab2 = malloc((size_t)(2 * T) * 4), *seg = malloc((size_t)(2 * T) * 4), g2[6];
    float *px2 = malloc((size_t)(2 * n_patches * 1176) * sizeof(float));
    for (int64_t t = 0; t < 2 * T; t++) {
        ids2[t] = ids[t % T];
        lab2[t] = labels[t % T];
        seg[t] = (int32_t)(t / T);
    }
    memcpy(g2, grid, sizeof grid);
    memcpy(g2 + 3, grid, sizeof grid);
    memcpy(px2, pixels, (size_t)(n_patches * 1176) * sizeof(float));
    memcpy(px2 + n_patches * 1176, pixels, (size_t)(n_patches * 1176) * sizeof(float));
    finch_batch one = image_batch();
    one.text_positions = 0;
    finch_batch two = {.batch = 1, .seq_len = 2 * T, .input_ids = ids2, .labels = lab2, .segment_ids = seg, .pixel_values = px2,
                       .image_grid_thw = g2, .n_images = 2, .n_patches = 2 * n_patches};
    finch_step_options so = {1, 0.0f};
    finch_step_result r1, r2;
    float *l1 = malloc((size_t)(T * V) * 4), *l2 = malloc((size_t)(2 * T * V) * 4);
    if (ok(finch_forward(m, &one, &so, &r1), "single row") && ok(finch_model_logits(m, l1, (size_t)(T * V)), "logits") &&
        ok(finch_forward(m, &two, &so, &r2), "packed row") && ok(finch_model_logits(m, l2, (size_t)(2 * T * V)), "logits")) {
        double e0 = testing_rel_err(l2, l1, (size_t)(T * V)), e1 = testing_rel_err(l2 + T * V, l1, (size_t)(T * V));
        CHECK(e0 <= 1e-5 && e1 <= 1e-5 && fabs(r2.loss_sum - 2 * r1.loss_sum) <= 1e-4 * r1.loss_sum &&
                  r2.token_count == 2 * r1.token_count,
              "packed: logits rel err %.3g / %.3g, loss_sum %.6f vs 2 x %.6f", e0, e1, r2.loss_sum, r1.loss_sum);
        printf("  %-44s logits rel err %.1e / %.1e, loss_sum x2\n", "packed multimodal row (2 segments, 2 images)", e0, e1);
    }
    free(l1);
    free(l2);
    free(ids2);
    free(lab2);
    free(seg);
    free(px2);
    finch_model_free(m);
}

/* A few AdamW steps of LoRA (language model and the tower's qkv) on the image batch, with
 * M-RoPE positions and LoRA dropout: the loss falls. */
static void train_smoke(finch_runtime *rt, const char *model_dir)
{
    finch_model *m = load(rt, model_dir, 0, 0, FINCH_DTYPE_F32);
    if (!m) return;
    finch_lora_config lc = finch_lora_config_default();
    lc.r = 8;
    lc.dropout = 0.05f;
    lc.target_modules = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj,qkv";
    finch_plugin_buffer **state = ok(finch_lora_attach(m, &lc), "finch_lora_attach") ? adamw_state(m) : NULL;
    double first = 0, last = 0;
    finch_batch b = image_batch();
    b.text_positions = 0;
    for (int s = 1; state && s <= 30; s++) {
        finch_step_result r;
        finch_zero_grads(m);
        if (!ok(finch_forward_backward(m, &b, NULL, &r), "training step")) break;
        if (s == 1) first = r.loss;
        last = r.loss;
        adamw_step_all(m, state, s, 0.0f);
    }
    CHECK(last < 0.8 * first, "multimodal LoRA training: loss %.4f -> %.4f", first, last);
    printf("  %-44s loss %.4f -> %.4f in 30 steps\n", "LoRA training on the image batch", first, last);
    adamw_state_free(m, state);
    finch_model_free(m);
}

/* `finch forward --image image0.png` decodes and preprocesses the PNG itself: the golden's logits,
 * loss and full fine-tuning gradients come out of the file it writes. */
static void check_cli(const char *base)
{
    char bin[1100], model[1100], image[1100], batch[1200], out[1200], log[1200];
    snprintf(bin, sizeof bin, "%s/finch", testing_bin_dir());
    snprintf(model, sizeof model, "%s/model", base);
    snprintf(image, sizeof image, "%s/image0.png", base);
    snprintf(batch, sizeof batch, "%s/golden.safetensors", base);
    snprintf(out, sizeof out, "%s/forward_qwen2_5_vl.safetensors", testing_tmp_dir());
    snprintf(log, sizeof log, "%s/forward_qwen2_5_vl.log", testing_tmp_dir());
    unlink(out);
    const char *args[] = {"forward", "--model", model, "--batch", batch, "--image", image, "--text-positions", "--full", "--grads",
                          "--backend", backend, "--out", out, NULL};
    int status = testing_exec(bin, args, log, NULL);
    CHECK(status == 0, "finch forward --image exited with status %d (log %s)", status, log);
    st_set *res = NULL;
    if (!ok(st_set_open_file(out, &res), out)) return;
    int64_t n = 0, nr = 0, worst_at = -1;
    double worst = 0;
    int grads = 0;
    for (int i = 0; i < st_set_count(gold); i++) {
        const char *name = st_set_at(gold, i)->name;
        char mine[400];
        if (!strcmp(name, "base.logits") || !strcmp(name, "base.loss")) snprintf(mine, sizeof mine, "%s", name + 5);
        else if (!strncmp(name, "base.grad.", 10)) snprintf(mine, sizeof mine, "grad.%s", name + 10);
        else continue;
        const st_tensor *t = st_set_find(res, mine);
        float *a = t ? malloc((size_t)t->numel * sizeof(float)) : NULL, *ref = gold_f32(name, &nr);
        n = t ? t->numel : -1;
        double e = a && ref && n == nr && !st_to_f32(t, a) ? testing_rel_err(a, ref, (size_t)n) : 1.0;
        CHECK(e <= TOL, "finch forward --image: %s rel err %.3g", mine, e);
        if (e > worst) {
            worst = e;
            worst_at = i;
        }
        grads += !strncmp(mine, "grad.", 5);
        free(a);
        free(ref);
    }
    CHECK(grads > 50, "finch forward --image: %d gradients", grads);
    printf("  %-44s %d gradients + logits + loss, worst rel err %.2e (%s)\n", "finch forward --image image0.png", grads, worst,
           worst_at >= 0 ? st_set_at(gold, (int)worst_at)->name : "");
    st_set_close(res);
}

int main(int argc, char **argv)
{
    if (argc > 1) backend = argv[1];
    char base[1024], model_dir[1100], adapter_dir[1100], text_dir[1100];
    snprintf(base, sizeof base, "%s/golden/qwen2_5_vl", testing_shared_dir());
    snprintf(model_dir, sizeof model_dir, "%s/model", base);
    snprintf(adapter_dir, sizeof adapter_dir, "%s/adapter", base);
    snprintf(text_dir, sizeof text_dir, "%s/golden/qwen2/model", testing_shared_dir());
    printf("golden qwen2_5_vl on %s\n", backend);

    finch_runtime *rt = NULL;
    if (finch_runtime_open(backend, &rt) != FINCH_OK) {
        printf("skipped: backend %s unavailable: %s\n", backend, finch_last_error());
        return 77;
    }
    if (!open_gold(base)) return testing_finish();
    const st_tensor *pv = st_set_find(gold, "image0.pixel_values"), *gt = st_set_find(gold, "image0.grid_thw");
    CHECK(pv && pv->ndim == 2 && gt && gt->numel == 3, "%s: image0.pixel_values, image0.grid_thw", gold_path);
    if (!pv || pv->ndim != 2 || !gt || gt->numel != 3) return testing_finish();
    n_patches = pv->shape[0];
    pixels = gold_f32("image0.pixel_values", NULL);
    st_to_i32(gt, grid);
    finch_step_result r;

    /* Base model, full fine-tuning, logits kept: every gradient, the vision tower's included. */
    finch_model *m = load(rt, model_dir, 1, 0, FINCH_DTYPE_F32);
    int32_t image_token = -1;
    if (m) {
        finch_model_info info;
        ok(finch_model_info_get(m, &info), "finch_model_info_get");
        CHECK(!strcmp(info.model_type, "qwen2_5_vl"), "model_type %s", info.model_type);
        CHECK(m->vision != NULL, "no vision tower");
        if (m->vision) image_token = m->vision->cfg.image_token_id;
    }
    if (m && step(m, 1, &r)) {
        compare_logits(m, &r, "base", TOL, "flat config: ");
        int64_t vis = compare_grads(m, "base.grad.", 1.0, "base.grad (logits path)", "visual");
        CHECK(vis > 20, "only %lld vision-tower gradients compared", (long long)vis);
    }
    finch_model_free(m);

    /* Fused head + gradient checkpointing; two calls accumulate twice the gradient. */
    m = load(rt, model_dir, 1, 1, FINCH_DTYPE_F32);
    if (m && step(m, 0, &r) && step(m, 0, &r)) {
        float *loss = gold_f32("base.loss", NULL);
        CHECK(loss && fabs(r.loss - loss[0]) <= TOL * fabs(loss[0]), "fused loss %.7f", r.loss);
        free(loss);
        compare_grads(m, "base.grad.", 2.0, "2 x base.grad (fused, checkpointed)", NULL);
    }
    finch_model_free(m);

    /* The golden PEFT adapter (target_modules: a regex that leaves the vision tower alone). */
    m = load(rt, model_dir, 0, 0, FINCH_DTYPE_F32);
    if (m && ok(finch_lora_load(m, adapter_dir), "finch_lora_load") && step(m, 1, &r)) {
        compare_logits(m, &r, "lora", TOL, "");
        compare_grads(m, "lora.grad.", 1.0, "lora.grad", NULL);
    }
    finch_model_free(m);

    /* bf16 compute within 2e-2. */
    m = load(rt, model_dir, 0, 0, FINCH_DTYPE_BF16);
    if (m && ok(finch_lora_load(m, adapter_dir), "bf16 finch_lora_load") && step(m, 1, &r)) compare_logits(m, &r, "lora", 2e-2, "bf16 ");
    finch_model_free(m);

    /* "all-linear" LoRA stays on the language model; named vision modules get adapters too, and
     * their gradients flow through the tower. */
    m = load(rt, model_dir, 0, 0, FINCH_DTYPE_F32);
    if (m) {
        finch_lora_config lc = finch_lora_config_default();
        lc.r = 4;
        if (ok(finch_lora_attach(m, &lc), "finch_lora_attach all-linear")) {
            int vision = 0;
            for (int64_t i = 0; i < finch_trainable_count(m); i++) {
                finch_tensor_info ti;
                finch_trainable_info(m, i, &ti);
                vision += strstr(ti.name, "visual") != NULL;
            }
            CHECK(vision == 0 && finch_trainable_count(m) == 2 * 7 * 2, "all-linear: %lld trainables, %d in the vision tower",
                  (long long)finch_trainable_count(m), vision);
            /* Saved so that PEFT (and finch) put it back on the same modules only: the tower's MLP
             * shares the leaf names gate_proj/up_proj/down_proj. */
            char dir[1200], cfg_path[1300];
            snprintf(dir, sizeof dir, "%s/qwen2_5_vl_all_linear_adapter", testing_tmp_dir());
            snprintf(cfg_path, sizeof cfg_path, "%s/adapter_config.json", dir);
            finch_model *m2 = NULL;
            if (ok(finch_lora_save(m, dir), "finch_lora_save") && (m2 = load(rt, model_dir, 0, 0, FINCH_DTYPE_F32)) &&
                ok(finch_lora_load(m2, dir), "finch_lora_load of the saved all-linear adapter")) {
                FILE *f = fopen(cfg_path, "rb");
                char text[8192];
                size_t len = f ? fread(text, 1, sizeof text - 1, f) : 0;
                if (f) fclose(f);
                text[len] = 0;
                cJSON *c = cJSON_Parse(text);
                const cJSON *tm = cJSON_GetObjectItem(c, "target_modules");
                CHECK(cJSON_IsString(tm) && strstr(tm->valuestring, "(?!.*visual)"), "saved target_modules: %s",
                      cJSON_IsString(tm) ? tm->valuestring : "(not a string)");
                cJSON_Delete(c);
                int same = finch_trainable_count(m2) == finch_trainable_count(m);
                for (int64_t i = 0; same && i < finch_trainable_count(m); i++) {
                    finch_tensor_info a, b;
                    finch_trainable_info(m, i, &a);
                    finch_trainable_info(m2, i, &b);
                    float *x = malloc((size_t)a.numel * 4), *y = malloc((size_t)a.numel * 4);
                    same = !strcmp(a.name, b.name) && a.numel == b.numel && !finch_trainable_read(m, i, x, a.numel) &&
                           !finch_trainable_read(m2, i, y, b.numel) && !memcmp(x, y, (size_t)a.numel * 4);
                    free(x);
                    free(y);
                }
                CHECK(same, "the reloaded all-linear adapter differs");
                printf("  %-44s %s\n", "all-linear adapter save/reload", same ? "bit-exact, tower left out" : "DIFFERS");
            }
            finch_model_free(m2);
        }
    }
    finch_model_free(m);
    m = load(rt, model_dir, 0, 0, FINCH_DTYPE_F32);
    if (m) {
        finch_lora_config lc = finch_lora_config_default();
        lc.r = 4;
        lc.target_modules = "q_proj,v_proj,qkv,mlp.0,mlp.2";
        if (ok(finch_lora_attach(m, &lc), "finch_lora_attach with vision modules")) {
            /* B = 0 at init, so gradients reach every lora_B (and only they are non-zero). */
            int64_t nt = finch_trainable_count(m), vision_b = 0, vision_b_nonzero = 0;
            if (step(m, 0, &r)) {
                for (int64_t i = 0; i < nt; i++) {
                    finch_tensor_info ti;
                    finch_trainable_info(m, i, &ti);
                    if (!strstr(ti.name, "visual") || !strstr(ti.name, "lora_B")) continue;
                    float *gr = malloc((size_t)ti.numel * sizeof(float));
                    finch_trainable_grad_read(m, i, gr, ti.numel);
                    double s = 0;
                    for (int64_t j = 0; j < ti.numel; j++) s += fabs(gr[j]);
                    vision_b++;
                    vision_b_nonzero += s > 0;
                    free(gr);
                }
            }
            CHECK(vision_b == 2 * 1 + 2 && vision_b_nonzero == vision_b, "vision LoRA: %lld lora_B in the tower, %lld with gradient",
                  (long long)vision_b, (long long)vision_b_nonzero);
            printf("  %-44s %lld vision lora_B tensors with gradient\n", "vision LoRA", (long long)vision_b_nonzero);
        }
    }
    finch_model_free(m);

    check_layouts(rt, model_dir);
    check_cli(base);
    train_smoke(rt, model_dir);
    check_packed(rt, model_dir);
    check_mrope(image_token);
    check_errors(rt, model_dir, text_dir, image_token);

    st_set_close(gold);
    free(ids);
    free(labels);
    free(pixels);
    finch_runtime_close(rt);
    return testing_finish();
}
