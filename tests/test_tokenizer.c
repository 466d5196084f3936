/* Exact parity with Hugging Face `tokenizers` on ../shared/tokenizers/golden.json: every string of every
 * tokenizer encodes to the same ids (with and without special tokens) and decodes to the same text;
 * chat renderings encode to the same ids. */
#include "finch/data.h"
#include "finch/finch.h"
#include "tests/testing.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

static int ids_equal(const finch_tokens *t, const cJSON *ref, const char *what, const char *name, const char *text)
{
    int n = cJSON_GetArraySize(ref);
    int ok = (size_t)n == t->len;
    for (int i = 0; ok && i < n; i++) ok = t->ids[i] == (int32_t)cJSON_GetArrayItem(ref, i)->valuedouble;
    if (!ok) {
        fprintf(stderr, "%s %s mismatch for %.60s\n  got:", name, what, text);
        for (size_t i = 0; i < t->len && i < 40; i++) fprintf(stderr, " %d", t->ids[i]);
        fprintf(stderr, "\n want:");
        for (int i = 0; i < n && i < 40; i++) fprintf(stderr, " %d", (int)cJSON_GetArrayItem(ref, i)->valuedouble);
        fprintf(stderr, "\n");
    }
    return ok;
}

static void check_tokenizer(const char *dir, const char *name, const cJSON *cases)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/tokenizers/%s", dir, name);
    finch_tokenizer *tok = NULL;
    int rc = finch_tokenizer_load(path, &tok);
    CHECK(rc == FINCH_OK, "%s: load failed: %s", name, finch_last_error());
    if (rc) return;
    const cJSON *strings = cJSON_GetObjectItem(cases, "strings");
    int n_ok = 0, n = 0;
    for (const cJSON *s = strings ? strings->child : NULL; s; s = s->next, n++) {
        const char *text = cJSON_GetObjectItem(s, "text")->valuestring;
        finch_tokens t = {0};
        rc = finch_tokenizer_encode(tok, text, strlen(text), 0, &t);
        CHECK(rc == FINCH_OK, "%s: encode failed: %s", name, finch_last_error());
        int ok1 = ids_equal(&t, cJSON_GetObjectItem(s, "ids"), "ids", name, text);
        CHECK(ok1, "%s: ids of \"%.40s\"", name, text);
        char *dec = NULL;
        rc = finch_tokenizer_decode(tok, t.ids, t.len, 0, &dec, NULL);
        const char *want = cJSON_GetObjectItem(s, "decoded")->valuestring;
        int ok2 = rc == FINCH_OK && dec && strcmp(dec, want) == 0;
        CHECK(ok2, "%s: decode of \"%.40s\" gave \"%s\"", name, text, dec ? dec : finch_last_error());
        finch_data_free(dec);
        t.len = 0;
        rc = finch_tokenizer_encode(tok, text, strlen(text), FINCH_ENCODE_ADD_SPECIAL, &t);
        int ok3 = rc == FINCH_OK && ids_equal(&t, cJSON_GetObjectItem(s, "ids_with_special"), "ids_with_special", name, text);
        CHECK(ok3, "%s: ids_with_special of \"%.40s\"", name, text);
        n_ok += ok1 && ok2 && ok3;
        finch_tokens_free(&t);
    }
    const cJSON *chats = cJSON_GetObjectItem(cases, "chats");
    int c_ok = 0, c = 0;
    for (const cJSON *ch = chats ? chats->child : NULL; ch; ch = ch->next, c++) {
        const char *text = cJSON_GetObjectItem(ch, "text")->valuestring;
        finch_tokens t = {0};
        rc = finch_tokenizer_encode(tok, text, strlen(text), 0, &t);
        int ok = rc == FINCH_OK && ids_equal(&t, cJSON_GetObjectItem(ch, "ids"), "chat ids", name, text);
        CHECK(ok, "%s: chat %d ids", name, c);
        c_ok += ok;
        finch_tokens_free(&t);
    }
    printf("%s: %d/%d strings, %d/%d chat texts match Hugging Face\n", name, n_ok, n, c_ok, c);
    finch_tokenizer_free(tok);
}

int main(void)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/tokenizers/golden.json", testing_shared_dir());
    char *text = testing_read_file(path);
    CHECK(text != NULL, "cannot read %s", path);
    if (!text) return testing_finish();
    cJSON *root = cJSON_Parse(text);
    free(text);
    CHECK(root != NULL, "golden.json does not parse");
    for (const cJSON *t = root ? root->child : NULL; t; t = t->next) check_tokenizer(testing_shared_dir(), t->string, t);
    cJSON_Delete(root);
    return testing_finish();
}
