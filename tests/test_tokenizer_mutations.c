/* The tokenizer's fuzz check (fuzz_tokenizer.c) over deterministic mutations, so that CI runs it without
 * libFuzzer: the golden strings, mutated, encoded by the real tokenizers (fast paths against plain ones,
 * invalid UTF-8 rejected, Llama 3 round trips), and small tokenizer.json files of both BPE styles,
 * mutated, loaded and used. */
#include "finch/finch.h"
#include "tests/fuzz_text.h"
#include "tests/mutate.h"
#include "tests/testing.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TEXT_MUTATIONS 8
#define JSON_MUTATIONS 700

static const char *BYTE_LEVEL_JSON =
    "{\"version\": \"1.0\", \"added_tokens\": [{\"id\": 17, \"content\": \"<|im_end|>\", \"single_word\": false, \"lstrip\": false,"
    " \"rstrip\": false, \"normalized\": false, \"special\": true}, {\"id\": 18, \"content\": \"<x>\", \"single_word\": true,"
    " \"lstrip\": true, \"rstrip\": true, \"normalized\": true, \"special\": false}],"
    " \"normalizer\": {\"type\": \"Sequence\", \"normalizers\": [{\"type\": \"NFC\"}, {\"type\": \"Lowercase\"}]},"
    " \"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Split\", \"pattern\": {\"Regex\":"
    " \"(?i:'s|'t)|[^\\\\r\\\\n\\\\p{L}\\\\p{N}]?\\\\p{L}+|\\\\p{N}{1,3}| ?[^\\\\s\\\\p{L}\\\\p{N}]+[\\\\r\\\\n]*|\\\\s+(?!\\\\S)|\\\\s+\"},"
    " \"behavior\": \"Isolated\", \"invert\": false}, {\"type\": \"Digits\", \"individual_digits\": true},"
    " {\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"trim_offsets\": true, \"use_regex\": false}]},"
    " \"post_processor\": {\"type\": \"ByteLevel\", \"add_prefix_space\": true, \"trim_offsets\": false, \"use_regex\": true},"
    " \"decoder\": {\"type\": \"ByteLevel\", \"add_prefix_space\": true, \"trim_offsets\": true, \"use_regex\": true},"
    " \"model\": {\"type\": \"BPE\", \"dropout\": null, \"unk_token\": null, \"continuing_subword_prefix\": null,"
    " \"end_of_word_suffix\": null, \"fuse_unk\": false, \"byte_fallback\": false, \"ignore_merges\": true,"
    " \"vocab\": {\"h\": 0, \"e\": 1, \"l\": 2, \"o\": 3, \"\\u0120\": 4, \"w\": 5, \"r\": 6, \"d\": 7, \"he\": 8, \"ll\": 9,"
    " \"hell\": 10, \"hello\": 11, \"\\u0120w\": 12, \"or\": 13, \"\\u0120wor\": 14, \"ld\": 15, \"\\u0120world\": 16},"
    " \"merges\": [\"h e\", \"l l\", \"he ll\", \"hell o\", \"\\u0120 w\", \"o r\", \"\\u0120w or\", \"l d\", [\"\\u0120wor\", \"ld\"]]}}";

static const char *SENTENCEPIECE_JSON =
    "{\"version\": \"1.0\", \"added_tokens\": [{\"id\": 0, \"content\": \"<unk>\", \"single_word\": false, \"lstrip\": false,"
    " \"rstrip\": false, \"normalized\": false, \"special\": true}, {\"id\": 1, \"content\": \"<s>\", \"single_word\": false,"
    " \"lstrip\": false, \"rstrip\": false, \"normalized\": false, \"special\": true}],"
    " \"normalizer\": {\"type\": \"Sequence\", \"normalizers\": [{\"type\": \"Prepend\", \"prepend\": \"\\u2581\"},"
    " {\"type\": \"Replace\", \"pattern\": {\"String\": \" \"}, \"content\": \"\\u2581\"}]},"
    " \"pre_tokenizer\": null,"
    " \"post_processor\": {\"type\": \"TemplateProcessing\", \"single\": [{\"SpecialToken\": {\"id\": \"<s>\", \"type_id\": 0}},"
    " {\"Sequence\": {\"id\": \"A\", \"type_id\": 0}}], \"pair\": [], \"special_tokens\": {\"<s>\": {\"id\": \"<s>\","
    " \"ids\": [1], \"tokens\": [\"<s>\"]}}},"
    " \"decoder\": {\"type\": \"Sequence\", \"decoders\": [{\"type\": \"Replace\", \"pattern\": {\"String\": \"\\u2581\"},"
    " \"content\": \" \"}, {\"type\": \"ByteFallback\"}, {\"type\": \"Fuse\"}, {\"type\": \"Strip\", \"content\": \" \","
    " \"start\": 1, \"stop\": 0}]},"
    " \"model\": {\"type\": \"BPE\", \"dropout\": null, \"unk_token\": \"<unk>\", \"continuing_subword_prefix\": null,"
    " \"end_of_word_suffix\": null, \"fuse_unk\": true, \"byte_fallback\": true, \"vocab\": {\"<unk>\": 0, \"<s>\": 1,"
    " \"<0x0A>\": 2, \"<0xC3>\": 3, \"<0xA9>\": 4, \"<0xE4>\": 5, \"\\u2581\": 6, \"h\": 7, \"e\": 8, \"l\": 9, \"o\": 10,"
    " \"\\u2581h\": 11, \"ll\": 12, \"\\u2581he\": 13, \"\\u2581hell\": 14, \"\\u2581hello\": 15, \"a\": 16, \"aa\": 17, \"aaaa\": 18},"
    " \"merges\": [\"\\u2581 h\", \"l l\", \"\\u2581h e\", \"\\u2581he ll\", \"\\u2581hell o\", \"a a\", \"aa aa\"]}}";

static const char *DICT[] = {"{", "}", "[", "]", ",", ":", "\"", "\\u0000", "\\ud800", "null", "true", "false", "-1",
                             "99999999999", "\"type\"", "\"Sequence\"", "\"BPE\"", "\"Split\"", "\"ByteLevel\"",
                             "\"Metaspace\"", "\"Regex\"", "\"String\"", "(?", "\\\\p{L}", "*", "+", "\"vocab\"",
                             "\"merges\"", "\"added_tokens\"", "\"special\"", "\"<unk>\"", " ", "\xff", "<s>", "<|im_end|>",
                             "\xE2\x96\x81", "\xC3\xA9", "\xF0\x9F\x98\x80", "\xCC\x81", "\n"};

static int check(const uint8_t *data, size_t size, const char *what, int *violations)
{
    char why[512];
    if (fuzz_tokenizer_check(data, size, why, sizeof why) < 0) {
        (*violations)++;
        CHECK(0, "%s (%zu bytes): %s", what, size, why);
        return -1;
    }
    return 0;
}

int main(void)
{
    mutator m = {0xD1B54A32D192ED03ull, DICT, sizeof DICT / sizeof *DICT};
    static uint8_t seed[16384], buf[17000];
    int violations = 0;

    /* text: every golden string (mode byte 0), and mutations of it */
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizers/golden.json", testing_shared_dir());
    char *golden_text = testing_read_file(path);
    cJSON *golden = golden_text ? cJSON_Parse(golden_text) : NULL;
    CHECK(golden != NULL, "read %s", path);
    int strings = 0;
    for (const cJSON *tok = golden ? golden->child : NULL; tok && violations < 5; tok = tok->next) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(tok, "strings");
        for (const cJSON *e = list ? list->child : NULL; e && violations < 5; e = e->next) {
            const cJSON *t = cJSON_GetObjectItemCaseSensitive(e, "text");
            if (!cJSON_IsString(t) || strlen(t->valuestring) + 1 > sizeof seed) continue;
            size_t n = strlen(t->valuestring) + 1;
            seed[0] = 0;
            memcpy(seed + 1, t->valuestring, n - 1);
            strings++;
            check(seed, n, "golden string", &violations);
            for (int i = 0; i < TEXT_MUTATIONS && violations < 5; i++) {
                size_t k = mutate(&m, seed, n, buf, sizeof buf);
                if (k) buf[0] &= 0xFE; /* stay in text mode */
                check(buf, k, "mutated golden string", &violations);
            }
        }
    }
    CHECK(strings > 10, "golden strings encoded (%d)", strings);
    cJSON_Delete(golden);
    free(golden_text);

    /* tokenizer.json (mode byte 1): both seeds load and work, then mutations */
    const char *jsons[] = {BYTE_LEVEL_JSON, SENTENCEPIECE_JSON};
    for (int j = 0; j < 2 && violations < 5; j++) {
        size_t n = strlen(jsons[j]) + 1;
        seed[0] = 1;
        memcpy(seed + 1, jsons[j], n - 1);
        check(seed, n, "seed tokenizer.json", &violations);
        /* the seed itself must load: otherwise the mutations only exercise the error paths */
        const char *p = fuzz_scratch_path("seed-tokenizer.json");
        finch_tokenizer *tok = NULL;
        int ok = fuzz_write_file(p, seed + 1, n - 1) == 0 && finch_tokenizer_load(p, &tok) == FINCH_OK;
        CHECK(ok, "seed tokenizer %d loads: %s", j, ok ? "" : finch_last_error());
        if (ok) {
            finch_tokens t = {0};
            ok = finch_tokenizer_encode(tok, "hello world", 11, 0, &t) == FINCH_OK && t.len > 0;
            CHECK(ok, "seed tokenizer %d encodes", j);
            finch_tokens_free(&t);
        }
        finch_tokenizer_free(tok);
        remove(p);
        for (int i = 0; i < JSON_MUTATIONS && violations < 5; i++) {
            size_t k = mutate(&m, seed, n, buf, sizeof buf);
            if (k) buf[0] |= 1;
            check(buf, k, "mutated tokenizer.json", &violations);
        }
    }
    CHECK(violations == 0, "%d mutated inputs broke an invariant", violations);
    return testing_finish();
}
