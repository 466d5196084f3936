/* Vision-language fine-tuning on the CPU: a multimodal ChatML JSONL (text and image parts, images
 * written by this test next to it, paths relative to the file) loaded with the image tokens expanded
 * and masked; the trainer decodes the images in its background thread and the loss falls; the same
 * run twice gives the same losses bit for bit, and so does a run resumed from a checkpoint;
 * evaluation with images; LoRA on the tower; QLoRA; the errors (missing image, packing, a text
 * model, an image past max_seq_length); `finch train` on the same data; and `finch chat --image`
 * against the library's generation with the image.
 * Model: the qwen2_5_vl golden with a small tokenizer that puts the vision tokens at the config's ids. */
#include "finch/finch.h"
#include "finch/generate.h"
#include "finch/multimodal.h"
#include "finch/train.h"
#include "tests/image_encode.h"
#include "tests/testing.h"
#include "tests/tiny_tokenizer.h"

#include <cjson/cJSON.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char work[1024], model_dir[1200], data_path[1200];

static int ok(int rc, const char *what)
{
    CHECK(rc == FINCH_OK, "%s: %s (%s)", what, finch_status_name(rc), finch_last_error());
    return rc == FINCH_OK;
}

/* The Qwen2-VL special tokens at the ids of the golden's config (image 300, vision start 302, end 303). */
static const char *const specials[] = {"<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>",
                                       "<|im_start|>",  "<|im_end|>",    "<|endoftext|>"};

static int make_model_dir(void)
{
    snprintf(model_dir, sizeof model_dir, "%s/model", work);
    mkdir(model_dir, 0755);
    const char *files[] = {"model/config.json", "model/generation_config.json", "model/model.safetensors", "preprocessor_config.json"};
    for (int i = 0; i < 4; i++) {
        char src[1300], dst[1300];
        snprintf(src, sizeof src, "%s/golden/qwen2_5_vl/%s", testing_shared_dir(), files[i]);
        snprintf(dst, sizeof dst, "%s/%s", model_dir, strchr(files[i], '/') ? strchr(files[i], '/') + 1 : files[i]);
        unlink(dst);
        if (symlink(src, dst)) return 1;
    }
    return write_tiny_tokenizer(model_dir, specials, 7);
}

/* A w x h PNG: one colour with a diagonal stripe of another. */
static int write_png(const char *name, int w, int h, const unsigned char rgb[3])
{
    unsigned char *px = malloc((size_t)w * h * 3);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            for (int c = 0; c < 3; c++) px[3 * (y * w + x) + c] = (x + y) % 17 < 4 ? (unsigned char)(255 - rgb[c]) : rgb[c];
    size_t size = 0;
    unsigned char *png = encode_image("png", w, h, 3, px, &size);
    free(px);
    char path[1300];
    snprintf(path, sizeof path, "%s/%s", work, name);
    FILE *f = png ? fopen(path, "wb") : NULL;
    int bad = !f || fwrite(png, 1, size, f) != size;
    if (f) fclose(f);
    free(png);
    return bad;
}

static const char *const lines[] = {
    "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image\",\"image\":\"imgs/red.png\"},{\"type\":\"text\",\"text\":\"colour?\"}]},"
    "{\"role\":\"assistant\",\"content\":\"red\"}]}",
    "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"colour? \"},{\"type\":\"image_url\",\"image_url\":{\"url\":\"imgs/green.png\"}}]},"
    "{\"role\":\"assistant\",\"content\":\"green\"}]}",
    "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image\",\"image\":\"imgs/blue.png\"},{\"type\":\"text\",\"text\":\"colour?\"}]},"
    "{\"role\":\"assistant\",\"content\":\"blue\"}]}",
    "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image\",\"image\":\"imgs/red.png\"},{\"type\":\"image\",\"path\":\"imgs/blue.png\"},"
    "{\"type\":\"text\",\"text\":\"both?\"}]},{\"role\":\"assistant\",\"content\":\"red blue\"}]}",
    "{\"messages\":[{\"role\":\"user\",\"content\":\"no image here\"},{\"role\":\"assistant\",\"content\":\"text\"}]}",
    "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image\",\"image\":\"imgs/green.png\"},{\"type\":\"text\",\"text\":\"colour?\"}]},"
    "{\"role\":\"assistant\",\"content\":\"green\"}]}",
};
#define N_LINES 6

static int write_data(const char *path, const char *const *ls, int n)
{
    FILE *f = fopen(path, "w");
    if (!f) return 1;
    for (int i = 0; i < n; i++) fprintf(f, "%s\n", ls[i]);
    return fclose(f);
}

static int load_data(const char *path, finch_train_data **out)
{
    finch_tokenizer *tok = NULL;
    finch_chat_template *tmpl = NULL;
    finch_image_data_options io = finch_image_data_options_default();
    char pp[1300];
    snprintf(pp, sizeof pp, "%s/preprocessor_config.json", model_dir);
    int rc = finch_tokenizer_load(model_dir, &tok);
    if (!rc) rc = finch_chat_template_from_tokenizer(tok, &tmpl);
    if (!rc) rc = finch_qwen2vl_image_config_load(pp, &io.image);
    if (!rc) rc = finch_train_data_from_jsonl_images(path, tok, tmpl, NULL, NULL, &io, out);
    finch_chat_template_free(tmpl);
    finch_tokenizer_free(tok);
    return rc;
}

/* Image tokens: one block per image of grid h*w/4 tokens, never trained; the answer is trained. */
static void check_examples(const finch_train_data *d)
{
    CHECK(finch_train_data_count(d) == N_LINES, "%zu examples", finch_train_data_count(d));
    static const size_t n_images[N_LINES] = {1, 1, 1, 2, 0, 1};
    static const int sides[N_LINES][2][2] = {{{56, 56}}, {{84, 56}}, {{56, 112}}, {{56, 56}, {56, 112}}, {{0}}, {{84, 56}}};
    int good = 1;
    for (size_t i = 0; i < finch_train_data_count(d) && i < N_LINES; i++) {
        const finch_example *e = finch_train_data_example(d, i);
        size_t n = finch_train_data_image_count(d, i), want_tokens = 0, image_tokens = 0, trained_images = 0, trained = 0;
        good &= n == n_images[i];
        for (size_t k = 0; k < n && k < 2; k++) {
            const char *path = NULL;
            int32_t g[3];
            good &= finch_train_data_image(d, i, k, &path, g) == FINCH_OK && !strncmp(path, work, strlen(work));
            good &= g[0] == 1 && g[1] == sides[i][k][1] / 14 && g[2] == sides[i][k][0] / 14;
            want_tokens += (size_t)(g[1] * g[2] / 4);
        }
        for (size_t t = 0; t < e->ids.len; t++) {
            image_tokens += e->ids.ids[t] == 300;
            trained_images += e->ids.ids[t] == 300 && e->labels.ids[t] != FINCH_LABEL_IGNORE;
            trained += e->labels.ids[t] != FINCH_LABEL_IGNORE;
            /* Everything up to the assistant's answer (the prompt, the vision tokens) is masked. */
            if (e->ids.ids[t] >= 302 && e->ids.ids[t] <= 303) good &= e->labels.ids[t] == FINCH_LABEL_IGNORE;
        }
        good &= image_tokens == want_tokens && trained_images == 0 && trained > 0;
        if (!good) {
            CHECK(0, "example %zu: %zu images, %zu image tokens (want %zu), %zu trained image tokens", i, n, image_tokens, want_tokens,
                  trained_images);
            return;
        }
    }
    CHECK(finch_train_data_image_count(d, 99) == 0 && finch_train_data_image(d, 0, 1, NULL, NULL) == FINCH_ERR_INVALID_ARGUMENT,
          "out-of-range image queries");
    printf("  %-48s %zu examples, image tokens expanded and masked\n", "multimodal JSONL", finch_train_data_count(d));
}

static finch_model *load_model(finch_runtime *rt, int load_in_4bit)
{
    finch_load_options lo = finch_load_options_default();
    lo.load_in_4bit = load_in_4bit;
    lo.quant_blocksize = 32;
    finch_model *m = NULL;
    return ok(finch_model_load(rt, model_dir, &lo, &m), "finch_model_load") ? m : NULL;
}

static finch_trainer_config train_config(int64_t steps)
{
    finch_trainer_config c = finch_trainer_config_default();
    c.max_steps = steps;
    c.per_device_train_batch_size = 2;
    c.gradient_accumulation_steps = 1;
    c.learning_rate = 1e-2;
    c.max_grad_norm = 0;
    c.weight_decay = 0;
    c.lr_scheduler_type = FINCH_LR_CONSTANT;
    c.lora.r = 8;
    c.lora.alpha = 16;
    c.pad_token_id = 306;
    c.max_seq_length = 128;
    return c;
}

/* Runs `steps` steps, writing each step's loss. */
static int train(finch_runtime *rt, const finch_train_data *d, finch_trainer_config c, int load_in_4bit, double *losses, double *eval)
{
    finch_model *m = load_model(rt, load_in_4bit);
    finch_trainer *t = NULL;
    int good = m && ok(finch_trainer_open(m, &c, d, &t), "finch_trainer_open");
    for (int64_t s = 0; good && s < c.max_steps; s++) {
        finch_train_progress p;
        good = ok(finch_trainer_step(t, &p), "finch_trainer_step");
        if (good) losses[s] = p.loss;
    }
    if (good && eval) good = ok(finch_trainer_evaluate(t, eval), "finch_trainer_evaluate");
    finch_trainer_close(t);
    finch_model_free(m);
    return good;
}

static double mean(const double *x, int n)
{
    double s = 0;
    for (int i = 0; i < n; i++) s += x[i];
    return s / n;
}

static void check_training(finch_runtime *rt, const finch_train_data *d)
{
    enum { STEPS = 24 };
    double a[STEPS], b[STEPS], ev = NAN;
    finch_trainer_config c = train_config(STEPS);
    if (!train(rt, d, c, 0, a, NULL)) return;
    double first = mean(a, 3), last = mean(a + STEPS - 3, 3);
    CHECK(last < 0.9 * first, "multimodal LoRA training: loss %.4f -> %.4f", first, last);
    printf("  %-48s loss %.4f -> %.4f in %d steps\n", "trainer on images (background decoding)", first, last, STEPS);
    /* The background thread's timing never changes what a step sees. */
    if (train(rt, d, c, 0, b, NULL)) CHECK(!memcmp(a, b, sizeof a), "two identical runs gave different losses");
    /* A resumed run goes on with the same images: step 6 after a checkpoint at step 5 is step 6. */
    {
        char ck[1300];
        snprintf(ck, sizeof ck, "%s/resume-ckpt", work);
        finch_model *m = load_model(rt, 0), *m2 = load_model(rt, 0);
        finch_trainer *t = NULL, *t2 = NULL;
        finch_train_progress p;
        int good = m && m2 && ok(finch_trainer_open(m, &c, d, &t), "finch_trainer_open");
        for (int s = 0; good && s < 5; s++) good = ok(finch_trainer_step(t, &p), "finch_trainer_step");
        good = good && ok(finch_trainer_save(t, ck), "finch_trainer_save") && ok(finch_trainer_open(m2, &c, d, &t2), "finch_trainer_open") &&
               ok(finch_trainer_resume(t2, ck), "finch_trainer_resume") && ok(finch_trainer_step(t2, &p), "resumed step");
        if (good) CHECK(p.loss == a[5], "resumed step 6: loss %.9g, uninterrupted %.9g", p.loss, a[5]);
        finch_trainer_close(t);
        finch_trainer_close(t2);
        finch_model_free(m);
        finch_model_free(m2);
    }
    /* Vision LoRA too, and an eval split whose examples have images. */
    c.lora.target_modules = "all-linear,vision-blocks,vision-merger";
    c.eval_split = 0.34;
    c.max_steps = 8;
    if (train(rt, d, c, 0, b, &ev)) {
        CHECK(isfinite(ev) && ev > 0 && b[7] < b[0], "vision LoRA + eval: loss %.4f -> %.4f, eval %.4f", b[0], b[7], ev);
        printf("  %-48s loss %.4f -> %.4f, eval loss %.4f\n", "LoRA on the tower too, eval split", b[0], b[7], ev);
    }
    /* QLoRA: the language model's linear weights in NF4, the tower dense. */
    c = train_config(STEPS);
    if (train(rt, d, c, 1, b, NULL)) {
        first = mean(b, 3);
        last = mean(b + STEPS - 3, 3);
        CHECK(last < 0.9 * first, "QLoRA on the VL model: loss %.4f -> %.4f", first, last);
        printf("  %-48s loss %.4f -> %.4f in %d steps\n", "QLoRA (NF4 language model)", first, last, STEPS);
    }
}

static void check_errors(finch_runtime *rt, const finch_train_data *d)
{
    char path[1300];
    finch_train_data *bad = NULL;
    /* A missing image: the line and the file are named. */
    const char *missing[] = {lines[0], "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image\",\"image\":\"imgs/nope.png\"}]},"
                                       "{\"role\":\"assistant\",\"content\":\"x\"}]}"};
    snprintf(path, sizeof path, "%s/missing.jsonl", work);
    write_data(path, missing, 2);
    int rc = (int)load_data(path, &bad);
    CHECK(rc == FINCH_ERR_IO && strstr(finch_last_error(), "missing.jsonl:2") && strstr(finch_last_error(), "imgs/nope.png"),
          "missing image: %s (%s)", finch_status_name(rc), finch_last_error());
    finch_train_data_free(bad);

    finch_model *m = load_model(rt, 0);
    finch_trainer *t = NULL;
    finch_trainer_config c = train_config(2);
    c.packing = 1;
    rc = m ? (int)finch_trainer_open(m, &c, d, &t) : -1;
    CHECK(rc == FINCH_ERR_UNSUPPORTED && strstr(finch_last_error(), "packing"), "packing with images: %s", finch_last_error());
    finch_trainer_close(t);
    t = NULL;
    c = train_config(2);
    c.max_seq_length = 12;
    rc = m ? (int)finch_trainer_open(m, &c, d, &t) : -1;
    CHECK(rc == FINCH_ERR_INVALID_ARGUMENT && strstr(finch_last_error(), "max_seq_length"), "image past max_seq_length: %s",
          finch_last_error());
    finch_trainer_close(t);
    t = NULL;
    finch_model_free(m);

    char text_dir[1200];
    snprintf(text_dir, sizeof text_dir, "%s/golden/qwen2/model", testing_shared_dir());
    m = NULL;
    if (ok(finch_model_load(rt, text_dir, NULL, &m), "loading the qwen2 golden")) {
        rc = finch_trainer_open(m, &c, d, &t);
        CHECK(rc == FINCH_ERR_INVALID_ARGUMENT && strstr(finch_last_error(), "no vision tower"), "images for a text model: %s",
              finch_last_error());
        finch_trainer_close(t);
    }
    finch_model_free(m);
    printf("  %-48s missing image, packing, max_seq_length, text model\n", "errors");
}

/* `finch train` on the JSONL: it finds the images and the loss falls. */
static void check_cli(void)
{
    const char *bin = getenv("FINCH_BIN_DIR");
    char exe[1100], out[1300], log[1300], cmd[8000];
    snprintf(exe, sizeof exe, "%s/finch", bin && *bin ? bin : "bin");
    snprintf(out, sizeof out, "%s/out", work);
    snprintf(log, sizeof log, "%s/train.log", work);
    snprintf(cmd, sizeof cmd,
             "'%s' train --model '%s' --data '%s' --out '%s' --max-steps 24 --batch-size 2 --grad-accum 1 --learning-rate 1e-2 "
             "--lr-scheduler constant --max-grad-norm 0 --lora-r 8 --target-modules all-linear,vision-blocks --backend cpu --threads 1 > '%s' 2>&1",
             exe, model_dir, data_path, out, log);
    int status = system(cmd);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "finch train on image data exited with %d (log %s)", status, log);
    char metrics[1400];
    snprintf(metrics, sizeof metrics, "%s/metrics.jsonl", out);
    FILE *f = fopen(metrics, "r");
    double first = -1, last = -1;
    char line[4096];
    while (f && fgets(line, sizeof line, f)) {
        const char *p = strstr(line, "\"loss\":");
        if (!p) continue;
        last = atof(p + 7);
        if (first < 0) first = last;
    }
    if (f) fclose(f);
    CHECK(first > 0 && last < 0.9 * first, "finch train on image data: loss %.4f -> %.4f (%s)", first, last, metrics);
    char adapter[1400];
    snprintf(adapter, sizeof adapter, "%s/adapter_config.json", out);
    CHECK(access(adapter, R_OK) == 0, "no %s", adapter);
    /* The saved target_modules (a regular expression over the language model and the tower's blocks)
     * select the same modules when the adapter is loaded again. */
    finch_runtime *rt = NULL;
    finch_model *m = NULL;
    finch_runtime_options ro = {"cpu", NULL, 1};
    if (ok(finch_runtime_open_ex(&ro, &rt), "finch_runtime_open") && (m = load_model(rt, 0)) && ok(finch_lora_load(m, out), "finch_lora_load"))
        CHECK(finch_trainable_count(m) == 2 * (2 * 7 + 2 * 5), "the reloaded adapter has %lld tensors", (long long)finch_trainable_count(m));
    finch_model_free(m);
    finch_runtime_close(rt);
    printf("  %-48s loss %.4f -> %.4f\n", "finch train --data multimodal.jsonl", first, last);
}

/* `finch chat --image imgs/red.png`, two turns: the replies finch_generate gives for each turn's
 * whole conversation, the image's tokens in the first user message. */
static void check_chat(void)
{
    const char *bin = getenv("FINCH_BIN_DIR");
    finch_runtime_options ro = {"cpu", NULL, 1};
    finch_runtime *rt = NULL;
    finch_model *m = NULL;
    finch_tokenizer *tok = NULL;
    finch_chat_template *tpl = NULL;
    finch_image img;
    finch_image_patches px;
    finch_qwen2vl_image_config ic;
    char image[1300], pp[1300], adapter[1300];
    snprintf(image, sizeof image, "%s/imgs/red.png", work);
    snprintf(adapter, sizeof adapter, "%s/out", work);   /* trained by check_cli */
    snprintf(pp, sizeof pp, "%s/preprocessor_config.json", model_dir);
    memset(&px, 0, sizeof px);
    if (!ok(finch_runtime_open_ex(&ro, &rt), "runtime") || !(m = load_model(rt, 0)) || !ok(finch_lora_load(m, adapter), "adapter") || !ok(finch_tokenizer_load(model_dir, &tok), "tokenizer") ||
        !ok(finch_chat_template_from_tokenizer(tok, &tpl), "template") || !ok(finch_qwen2vl_image_config_load(pp, &ic), "preprocessor") ||
        !ok(finch_image_load(image, NULL, &img), "image") || !ok(finch_image_preprocess_qwen2vl(&img, &ic, &px), "preprocess"))
        goto done;
    finch_image_free(&img);
    const char *turns[2] = {FINCH_QWEN2VL_IMAGE_TEXT "colour?", "again?"};
    char want[4096] = "";
    cJSON *msgs = cJSON_CreateArray();
    finch_generate_options o = finch_generate_options_default();
    o.sampling.greedy = 1;
    o.max_new_tokens = 6;
    o.use_model_eos = 0;
    o.tokenizer = tok;
    o.pixel_values = px.pixel_values;
    o.image_grid_thw = px.grid_thw;
    o.n_images = 1;
    o.n_patches = px.num_patches;
    for (int t = 0; t < 2; t++) {
        cJSON *u = cJSON_CreateObject();
        cJSON_AddStringToObject(u, "role", "user");
        cJSON_AddStringToObject(u, "content", turns[t]);
        cJSON_AddItemToArray(msgs, u);
        char *json = cJSON_PrintUnformatted(msgs), *text = NULL;
        finch_chat_options co = finch_chat_options_for(tok);
        co.add_generation_prompt = 1;
        finch_example ex;
        memset(&ex, 0, sizeof ex);
        int64_t count = px.grid_thw[1] * px.grid_thw[2] / 4;
        finch_generation g;
        int good = ok(finch_chat_template_render(tpl, json, &co, &text), "render") &&
                   ok(finch_tokenizer_encode(tok, text, strlen(text), 0, &ex.ids), "encode") &&
                   ok(finch_tokenizer_encode(tok, text, strlen(text), 0, &ex.labels), "encode") &&
                   ok(finch_example_expand_image_tokens(&ex, 300, &count, 1), "expand");
        const int32_t *ip = ex.ids.ids;
        int64_t il = (int64_t)ex.ids.len;
        if (good && ok(finch_generate(m, 1, &ip, &il, &o, &g), "generate with the image")) {
            strncat(want, g.text, sizeof want - strlen(want) - 2);
            strcat(want, "\n");
            cJSON *a = cJSON_CreateObject();
            cJSON_AddStringToObject(a, "role", "assistant");
            cJSON_AddStringToObject(a, "content", g.text);
            cJSON_AddItemToArray(msgs, a);
            finch_generation_free(&g);
        }
        free(json);
        finch_data_free(text);
        finch_example_free(&ex);
    }
    cJSON_Delete(msgs);
    char cmd[6000], out[4096] = "";
    snprintf(cmd, sizeof cmd, "printf 'colour?\\nagain?\\n/quit\\n' | '%s/finch' chat --backend cpu --model '%s' --adapter '%s' "
             "--image '%s' --greedy --max-new-tokens 6 --ignore-eos 2>/dev/null", bin && *bin ? bin : "bin", model_dir, adapter, image);
    FILE *p = popen(cmd, "r");
    size_t n = p ? fread(out, 1, sizeof out - 1, p) : 0;
    out[n] = 0;
    int status = p ? pclose(p) : -1;
    int same = status == 0 && !strcmp(out, want);
    CHECK(same, "finch chat --image (status %d) wrote\n'%s'\nexpected\n'%s'", status, out, want);
    for (char *c = want; *c; c++) *c = *c == '\n' ? '|' : *c;
    printf("  %-48s %s: %s\n", "finch chat --image (two turns)", same ? "as finch_generate" : "DIFFERS", want);
done:
    finch_image_patches_free(&px);
    finch_chat_template_free(tpl);
    finch_tokenizer_free(tok);
    finch_model_free(m);
    finch_runtime_close(rt);
}

int main(void)
{
    snprintf(work, sizeof work, "%s/vl_train", testing_tmp_dir());
    mkdir(work, 0755);
    char imgs[1100];
    snprintf(imgs, sizeof imgs, "%s/imgs", work);
    mkdir(imgs, 0755);
    static const unsigned char red[3] = {220, 30, 30}, green[3] = {30, 200, 40}, blue[3] = {20, 40, 230};
    snprintf(data_path, sizeof data_path, "%s/multimodal.jsonl", work);
    int setup = !make_model_dir() && !write_png("imgs/red.png", 56, 56, red) && !write_png("imgs/green.png", 84, 56, green) &&
                !write_png("imgs/blue.png", 56, 112, blue) && !write_data(data_path, lines, N_LINES);
    CHECK(setup, "writing the model folder, images and data under %s", work);
    if (!setup) return testing_finish();
    printf("vision-language training\n");

    finch_runtime_options ro = {"cpu", NULL, 1};
    finch_runtime *rt = NULL;
    finch_train_data *d = NULL;
    if (!ok(finch_runtime_open_ex(&ro, &rt), "finch_runtime_open") || !ok(load_data(data_path, &d), "loading multimodal.jsonl")) {
        finch_runtime_close(rt);
        return testing_finish();
    }
    check_examples(d);
    check_training(rt, d);
    check_errors(rt, d);
    check_cli();
    check_chat();
    finch_train_data_free(d);
    finch_runtime_close(rt);
    return testing_finish();
}
