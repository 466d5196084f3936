/* Multimodal chat data: image parts out of JSONL messages (paths resolved against the file's folder),
 * rendered and tokenized with a real Qwen tokenizer, image tokens expanded and never trained. */
#include "finch/data.h"
#include "finch/finch.h"
#include "finch/multimodal.h"
#include "tests/testing.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int ok(int rc, const char *what)
{
    CHECK(rc == FINCH_OK, "%s: %s (%s)", what, finch_status_name(rc), finch_last_error());
    return rc == FINCH_OK;
}

static void test_extract(void)
{
    const char *msgs =
        "[{\"role\":\"system\",\"content\":\"Be brief.\"},"
        "{\"role\":\"user\",\"content\":[{\"type\":\"image\",\"image\":\"img/a.png\"},{\"type\":\"text\",\"text\":\"What is "
        "this?\"},{\"type\":\"image_url\",\"image_url\":{\"url\":\"file:///data/b.jpg\"}},{\"type\":\"image_url\",\"image_url\":"
        "\"c.gif\"}]},"
        "{\"role\":\"assistant\",\"content\":[{\"type\":\"text\",\"text\":\"A cat.\"}]}]";
    char *out = NULL, **paths = NULL;
    size_t n = 0;
    if (ok(finch_messages_extract_images(msgs, "/jsonl/dir", NULL, &out, &paths, &n), "extract")) {
        CHECK(n == 3, "%zu images", n);
        CHECK(n == 3 && !strcmp(paths[0], "/jsonl/dir/img/a.png") && !strcmp(paths[1], "/data/b.jpg") &&
                  !strcmp(paths[2], "/jsonl/dir/c.gif"),
              "paths %s %s %s", n > 0 ? paths[0] : "", n > 1 ? paths[1] : "", n > 2 ? paths[2] : "");
        CHECK(strstr(out, "\"content\":\"<|vision_start|><|image_pad|><|vision_end|>What is this?<|vision_start|><|image_pad|>"
                          "<|vision_end|><|vision_start|><|image_pad|><|vision_end|>\"") != NULL,
              "joined user content: %s", out);
        CHECK(strstr(out, "\"content\":\"A cat.\"") && strstr(out, "\"content\":\"Be brief.\""), "other contents: %s", out);
    }
    finch_data_free(out);
    finch_image_paths_free(paths, n);

    /* Errors name the message and the part. */
    struct {
        const char *msgs, *needle;
        int status;
    } bad[] = {
        {"[{\"role\":\"user\",\"content\":[{\"type\":\"image\",\"image\":\"https://x/y.png\"}]}]", "messages[0].content[0]",
         FINCH_ERR_UNSUPPORTED},
        {"[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},{\"type\":\"image\"}]}]", "messages[0].content[1]",
         FINCH_ERR_FORMAT},
        {"[{\"role\":\"user\",\"content\":\"x\"},{\"role\":\"user\",\"content\":[{\"type\":\"audio\",\"audio\":\"a.wav\"}]}]",
         "messages[1].content[0]", FINCH_ERR_UNSUPPORTED},
        {"[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{\"url\":\"data:image/png;base64,AAAA\"}}]}]",
         "not a local file", FINCH_ERR_UNSUPPORTED},
        {"{\"role\":\"user\"}", "not a JSON array", FINCH_ERR_FORMAT},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        out = NULL;
        paths = NULL;
        int rc = finch_messages_extract_images(bad[i].msgs, "/d", NULL, &out, &paths, &n);
        CHECK(rc == bad[i].status && strstr(finch_last_error(), bad[i].needle) && !out && !paths,
              "bad case %zu: %s (%s)", i, finch_status_name(rc), finch_last_error());
    }
}

/* A JSONL line through the dataset reader, the chat template and the tokenizer, then expansion. */
static void test_example(void)
{
    char tokdir[1100], jsonl[1200];
    snprintf(tokdir, sizeof tokdir, "%s/tokenizers/qwen3", testing_shared_dir());
    snprintf(jsonl, sizeof jsonl, "%s/mm_data.jsonl", testing_tmp_dir());
    FILE *f = fopen(jsonl, "wb");
    CHECK(f != NULL, "cannot write %s", jsonl);
    if (!f) return;
    fputs("{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image\",\"image\":\"a.png\"},{\"type\":\"text\",\"text\":"
          "\"Describe.\"},{\"type\":\"image\",\"image\":\"b.png\"}]},{\"role\":\"assistant\",\"content\":\"Two cats.\"}]}\n",
          f);
    fclose(f);

    finch_tokenizer *tok = NULL;
    finch_chat_template *tpl = NULL;
    finch_dataset *ds = NULL;
    if (!ok(finch_tokenizer_load(tokdir, &tok), "tokenizer") || !ok(finch_chat_template_builtin("chatml", &tpl), "chatml") ||
        !ok(finch_dataset_open(jsonl, NULL, &ds), "dataset")) {
        finch_dataset_close(ds);
        finch_chat_template_free(tpl);
        finch_tokenizer_free(tok);
        return;
    }
    int32_t pad = finch_tokenizer_token_to_id(tok, FINCH_QWEN2VL_IMAGE_PAD);
    int32_t vstart = finch_tokenizer_token_to_id(tok, "<|vision_start|>"), vend = finch_tokenizer_token_to_id(tok, "<|vision_end|>");
    CHECK(pad >= 0 && vstart >= 0 && vend >= 0, "Qwen vision tokens in the tokenizer");
    finch_record rec;
    int has = 0;
    char *msgs = NULL, **paths = NULL;
    size_t n = 0;
    finch_example ex = {{0}, {0}};
    finch_chat_options co = finch_chat_options_for(tok);
    finch_label_options lo = finch_label_options_default();
    if (ok(finch_dataset_next(ds, &rec, &has), "dataset next") && has &&
        ok(finch_messages_extract_images(rec.messages_json, "/base", NULL, &msgs, &paths, &n), "extract") &&
        ok(finch_example_from_chat(tok, tpl, msgs, &co, &lo, &ex), "example")) {
        CHECK(n == 2 && !strcmp(paths[0], "/base/a.png"), "dataset images: %zu", n);
        size_t pads = 0, starts = 0, trained = 0;
        for (size_t i = 0; i < ex.ids.len; i++) {
            pads += ex.ids.ids[i] == pad;
            starts += ex.ids.ids[i] == vstart && i + 2 < ex.ids.len && ex.ids.ids[i + 1] == pad && ex.ids.ids[i + 2] == vend;
        }
        CHECK(pads == 2 && starts == 2, "rendered: %zu pad tokens, %zu vision_start/pad/end triples", pads, starts);
        size_t before = ex.ids.len;
        int64_t counts[2] = {6, 12};
        for (size_t i = 0; i < ex.labels.len; i++)
            if (ex.labels.ids[i] != FINCH_LABEL_IGNORE) trained++;
        if (ok(finch_example_expand_image_tokens(&ex, pad, counts, 2), "expand")) {
            size_t pads2 = 0, pads_trained = 0, trained2 = 0, first = 0;
            for (size_t i = 0; i < ex.ids.len; i++) {
                if (ex.ids.ids[i] == pad) {
                    if (!pads2) first = i;
                    pads2++;
                    pads_trained += ex.labels.ids[i] != FINCH_LABEL_IGNORE;
                }
                trained2 += ex.labels.ids[i] != FINCH_LABEL_IGNORE;
            }
            CHECK(ex.ids.len == before + 16 && ex.labels.len == ex.ids.len, "expanded length %zu (was %zu)", ex.ids.len, before);
            CHECK(pads2 == 18 && pads_trained == 0, "%zu pad tokens, %zu trained", pads2, pads_trained);
            CHECK(trained2 == trained && trained > 0, "the answer stays trained: %zu -> %zu", trained, trained2);
            CHECK(ex.ids.ids[first - 1] == vstart && ex.ids.ids[first + 6] == vend, "the first image's 6 tokens sit between "
                                                                                    "vision_start and vision_end");
            /* The count must match the pad tokens. */
            CHECK(finch_example_expand_image_tokens(&ex, pad, counts, 2) == FINCH_ERR_FORMAT &&
                      strstr(finch_last_error(), "18 image pad tokens"),
                  "count mismatch: %s", finch_last_error());
        }
    }
    finch_example_free(&ex);
    finch_data_free(msgs);
    finch_image_paths_free(paths, n);
    finch_dataset_close(ds);
    finch_chat_template_free(tpl);
    finch_tokenizer_free(tok);
}

int main(void)
{
    test_extract();
    test_example();
    return testing_finish();
}
