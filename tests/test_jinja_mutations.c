/* The Jinja parser and renderer's fuzz check (fuzz_jinja.c) over deterministic mutations of the test
 * templates and of the real chat templates in ../shared/tokenizers, so that CI runs it without libFuzzer. */
#include "finch/finch.h"
#include "tests/fuzz_text.h"
#include "tests/jinja_cases.h"
#include "tests/mutate.h"
#include "tests/testing.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MUTATIONS_PER_CASE 60
#define MUTATIONS_PER_REAL 800

static const char *DICT[] = {"{{", "}}", "{%", "%}", "{#", "#}", "{%-", "-%}", "(", ")", "[", "]", "|", ".", ",", "'", "\"",
                             " if ", " else ", "endif", "for ", " in ", "endfor", "set ", "macro ", "endmacro", "loop.",
                             "messages", "message['content']", "range(", "namespace(", "tojson", "trim", "length",
                             "raise_exception(", " ~ ", " * ", " ** ", " // ", " % ", "[::-1]", "none", "true", "1e308",
                             "99999999999", "-1", "\\", "\xff", "\xC3\xA9"};

static int run(const char *tpl, const char *vars, mutator *m, int count, const char *what)
{
    static uint8_t seed[65536], buf[70000];
    char why[512];
    /* template, NUL, messages (the "messages" of vars when it has them) */
    size_t n = strlen(tpl);
    if (n + 1 >= sizeof seed) return 0;
    memcpy(seed, tpl, n);
    size_t size = n;
    cJSON *v = vars ? cJSON_Parse(vars) : NULL;
    char *msgs = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(v, "messages"));
    if (msgs && n + 1 + strlen(msgs) < sizeof seed) {
        seed[n] = 0;
        memcpy(seed + n + 1, msgs, strlen(msgs));
        size = n + 1 + strlen(msgs);
    }
    free(msgs);
    cJSON_Delete(v);
    int violations = 0;
    if (fuzz_jinja_check(seed, size, why, sizeof why) < 0) { violations++; CHECK(0, "%s: %s", what, why); }
    for (int i = 0; i < count && violations < 3; i++) {
        size_t k = mutate(m, seed, size, buf, sizeof buf);
        if (fuzz_jinja_check(buf, k, why, sizeof why) < 0) {
            violations++;
            CHECK(0, "%s mutation %d: %s", what, i, why);
        }
    }
    return violations;
}

/* What libFuzzer found: 64-bit overflow in arithmetic, literals and range(), runaway repetition. Each must
 * fail cleanly (under UBSan in the sanitizer run, without undefined behaviour). */
static const char *FOUND[] = {
    "{{ 9223372036854775807 + 1 }}", "{{ -9223372036854775807 - 2 }}", "{{ 4611686018427387904 * 2 }}",
    "{{ 3 ** 40 }}", "{{ 2 ** 99999999999 }}", "{{ (-9223372036854775807 - 1) // -1 }}",
    "{{ (-9223372036854775807 - 1) % -1 }}", "{{ -(-9223372036854775807 - 1) }}", "{{ 99999999999999999999 }}",
    "{{ 8888888-880888888-8800000000000000000000000126 != 1 }}", "{{ 'ab' * 99999999999 }}", "{{ [1, 2] * 4611686018427387904 }}",
    "{{ range(-9223372036854775807, 9223372036854775807) | length }}", "{{ range(9223372036854775807, -9223372036854775807, -1) }}",
    "{{ 1.00000000000000000000000000000000000000000000000000000000000000000001 }}",
};

int main(void)
{
    mutator m = {0x2545F4914F6CDD1Dull, DICT, sizeof DICT / sizeof *DICT};
    int violations = 0;
    for (size_t i = 0; i < sizeof FOUND / sizeof *FOUND; i++) {
        char why[512];
        int bad = fuzz_jinja_check((const uint8_t *)FOUND[i], strlen(FOUND[i]), why, sizeof why) < 0;
        violations += bad;
        CHECK(!bad, "%s: %s", FOUND[i], bad ? why : "");
    }
    for (size_t i = 0; i < sizeof JINJA_CASES / sizeof *JINJA_CASES; i++) {
        char what[64];
        snprintf(what, sizeof what, "jinja case %zu", i);
        violations += run(JINJA_CASES[i].tpl, JINJA_CASES[i].vars, &m, MUTATIONS_PER_CASE, what);
    }
    static const char *REAL[] = {"qwen3", "llama3"}; /* the SentencePiece-style one has no template */
    for (size_t i = 0; i < 2; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/tokenizers/%s/tokenizer_config.json", testing_shared_dir(), REAL[i]);
        char *text = testing_read_file(path);
        cJSON *cfg = text ? cJSON_Parse(text) : NULL;
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(cfg, "chat_template");
        CHECK(cJSON_IsString(t), "%s has a chat_template", path);
        if (cJSON_IsString(t)) violations += run(t->valuestring, NULL, &m, MUTATIONS_PER_REAL, REAL[i]);
        cJSON_Delete(cfg);
        free(text);
    }
    CHECK(violations == 0, "%d mutated templates broke an invariant", violations);
    return testing_finish();
}
