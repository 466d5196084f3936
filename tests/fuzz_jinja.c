/* Fuzz check of the Jinja chat-template parser and renderer (see fuzz_text.h); libFuzzer's entry point
 * with FINCH_FUZZ_ENTRY. */
#include "finch/finch.h"
#include "tests/fuzz_text.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_TEMPLATE_NAME "fuzz-template"

static const char *DEFAULT_MESSAGES =
    "[{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": \"user\", \"content\": \"Hi <b>'x'</b>\"},"
    " {\"role\": \"assistant\", \"content\": \"<think>\\nhm\\n</think>\\n\\nHello!\"},"
    " {\"role\": \"assistant\", \"content\": null, \"tool_calls\": [{\"type\": \"function\", \"function\": {\"name\": \"f\", \"arguments\": {\"a\": 1}}}]},"
    " {\"role\": \"tool\", \"content\": \"42\"}, {\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": \"part\"}]}]";

static int expected_status(int rc)
{
    return rc == FINCH_ERR_FORMAT || rc == FINCH_ERR_INVALID_ARGUMENT || rc == FINCH_ERR_UNSUPPORTED ||
           rc == FINCH_ERR_OUT_OF_MEMORY;
}

int fuzz_jinja_check(const uint8_t *data, size_t size, char *why, size_t why_len)
{
    size_t tlen = 0;
    while (tlen < size && data[tlen]) tlen++;
    char *src = malloc(size + 1);
    if (!src) return 0;
    memcpy(src, data, size);
    src[size] = 0;
    const char *messages = tlen < size ? src + tlen + 1 : DEFAULT_MESSAGES;
    finch_chat_template *t = NULL;
    int bad = 0, rc = finch_chat_template_parse(src, FUZZ_TEMPLATE_NAME, &t);
    if (rc) {
        const char *msg = finch_last_error();
        if (!expected_status(rc) || !strstr(msg, FUZZ_TEMPLATE_NAME) || t) {
            snprintf(why, why_len, "parse: status %d, message '%.300s'", rc, msg);
            bad = 1;
        }
    } else {
        finch_chat_options o = finch_chat_options_default();
        o.add_generation_prompt = (int)(size & 1);
        o.bos_token = "<s>";
        o.eos_token = "</s>";
        o.enable_thinking = (int)(size % 3) - 1;
        o.tools_json = size & 2 ? "[{\"type\": \"function\", \"function\": {\"name\": \"f\", \"parameters\": {}}}]" : NULL;
        char *out = NULL;
        rc = finch_chat_template_render(t, messages, &o, &out);
        if (rc) {
            const char *msg = finch_last_error();
            if (!expected_status(rc) || !*msg || out) {
                snprintf(why, why_len, "render: status %d, message '%.300s'", rc, msg);
                bad = 1;
            }
        } else if (!out) {
            snprintf(why, why_len, "render succeeded without output");
            bad = 1;
        } else {
            volatile size_t n = strlen(out); /* the whole output must be readable */
            (void)n;
        }
        finch_data_free(out);
        finch_chat_template_free(t);
    }
    free(src);
    return bad ? -1 : 0;
}

#ifdef FINCH_FUZZ_ENTRY
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char why[512];
    if (fuzz_jinja_check(data, size, why, sizeof why) < 0) {
        fprintf(stderr, "fuzz_jinja: %s\n", why);
        abort();
    }
    return 0;
}
#endif
