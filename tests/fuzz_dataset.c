/* Fuzz check of the JSONL dataset reader (see fuzz_text.h); libFuzzer's entry point with FINCH_FUZZ_ENTRY. */
#include "finch/finch.h"
#include "tests/fuzz_text.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int valid_messages(const char *json)
{
    cJSON *a = cJSON_Parse(json);
    int ok = cJSON_IsArray(a) && cJSON_GetArraySize(a) > 0;
    for (const cJSON *m = ok ? a->child : NULL; ok && m; m = m->next) {
        const cJSON *r = cJSON_GetObjectItemCaseSensitive(m, "role");
        ok = cJSON_IsObject(m) && cJSON_IsString(r) &&
             (!strcmp(r->valuestring, "system") || !strcmp(r->valuestring, "user") ||
              !strcmp(r->valuestring, "assistant") || !strcmp(r->valuestring, "tool"));
    }
    cJSON_Delete(a);
    return ok;
}

static int read_all(const char *path, finch_dataset_format format, finch_bad_line_policy policy,
                    const finch_chat_template *chatml, size_t n_lines, char *why, size_t why_len)
{
    finch_dataset_options opts = finch_dataset_options_default();
    opts.format = format;
    opts.bad_lines = policy;
    opts.alpaca_system = format == FINCH_DATASET_ALPACA ? "be brief" : NULL;
    finch_dataset *ds = NULL;
    if (finch_dataset_open(path, &opts, &ds)) {
        snprintf(why, why_len, "cannot open the scratch file: %s", finch_last_error());
        return -1;
    }
    int bad = 0;
    int64_t last_line = 0;
    for (int pass = 0; pass < 2 && !bad; pass++) { /* the second pass after a rewind */
        for (;;) {
            finch_record rec;
            int has = 0, rc = finch_dataset_next(ds, &rec, &has);
            if (rc) {
                const char *msg = finch_last_error();
                if (rc != FINCH_ERR_FORMAT || policy == FINCH_BAD_LINE_SKIP || !strstr(msg, path) || !strchr(msg, ':')) {
                    snprintf(why, why_len, "format %d policy %d: status %d, message '%.200s'", format, policy, rc, msg);
                    bad = 1;
                }
                break;
            }
            if (!has) break;
            if (rec.line <= last_line || rec.line > (int64_t)n_lines) {
                snprintf(why, why_len, "record line %lld after %lld (%zu lines)", (long long)rec.line, (long long)last_line, n_lines);
                bad = 1;
                break;
            }
            last_line = rec.line;
            if (rec.format == FINCH_DATASET_TEXT) {
                if (!rec.text || rec.messages_json || strlen(rec.text) != rec.text_len) {
                    snprintf(why, why_len, "line %lld: a text record without its text", (long long)rec.line);
                    bad = 1;
                    break;
                }
                continue;
            }
            if (!rec.messages_json || rec.text || !valid_messages(rec.messages_json)) {
                snprintf(why, why_len, "line %lld: malformed messages %.200s", (long long)rec.line,
                         rec.messages_json ? rec.messages_json : "(null)");
                bad = 1;
                break;
            }
            finch_chat_options co = finch_chat_options_default();
            char *out = NULL;
            int rc2 = finch_chat_template_render(chatml, rec.messages_json, &co, &out);
            if (rc2 && (rc2 != FINCH_ERR_FORMAT && rc2 != FINCH_ERR_INVALID_ARGUMENT && rc2 != FINCH_ERR_UNSUPPORTED)) {
                snprintf(why, why_len, "line %lld: chatml render: status %d: %s", (long long)rec.line, rc2, finch_last_error());
                bad = 1;
            }
            finch_data_free(out);
            if (bad) break;
        }
        if (!bad && finch_dataset_rewind(ds)) {
            snprintf(why, why_len, "rewind failed: %s", finch_last_error());
            bad = 1;
        }
        last_line = 0;
    }
    finch_dataset_close(ds);
    return bad ? -1 : 0;
}

int fuzz_dataset_check(const uint8_t *data, size_t size, char *why, size_t why_len)
{
    static finch_chat_template *chatml;
    if (!chatml && finch_chat_template_builtin("chatml", &chatml)) {
        snprintf(why, why_len, "no chatml template: %s", finch_last_error());
        return -1;
    }
    const char *path = fuzz_scratch_path("dataset.jsonl");
    if (fuzz_write_file(path, data, size)) {
        snprintf(why, why_len, "cannot write %s", path);
        return -1;
    }
    size_t n_lines = 1;
    for (size_t i = 0; i < size; i++) n_lines += data[i] == '\n';
    static const finch_dataset_format formats[] = {FINCH_DATASET_AUTO, FINCH_DATASET_MESSAGES, FINCH_DATASET_SHAREGPT,
                                                   FINCH_DATASET_ALPACA, FINCH_DATASET_TEXT};
    int rc = 0;
    for (size_t f = 0; f < sizeof formats / sizeof *formats && !rc; f++)
        for (int policy = 0; policy < 2 && !rc; policy++)
            rc = read_all(path, formats[f], (finch_bad_line_policy)policy, chatml, n_lines, why, why_len);
    remove(path);
    return rc;
}

#ifdef FINCH_FUZZ_ENTRY
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char why[512];
    if (fuzz_dataset_check(data, size, why, sizeof why) < 0) {
        fprintf(stderr, "fuzz_dataset: %s\n", why);
        abort();
    }
    return 0;
}
#endif
