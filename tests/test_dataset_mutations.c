/* The JSONL dataset reader's fuzz check (fuzz_dataset.c) over deterministic mutations of valid and
 * broken files of every shape, so that CI runs it without libFuzzer. */
#include "finch/finch.h"
#include "tests/fuzz_text.h"
#include "tests/mutate.h"
#include "tests/testing.h"

#include <stdlib.h>
#include <string.h>

#define MUTATIONS 600

static const char *SEEDS[] = {
    "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": \"user\", \"content\": \"Hi\"}, {\"role\": \"assistant\", \"content\": \"Hello!\"}]}\n"
    "{\"messages\": [{\"role\": \"user\", \"content\": \"2+2?\"}, {\"role\": \"assistant\", \"content\": null, \"tool_calls\": [{\"type\": \"function\", \"function\": {\"name\": \"add\", \"arguments\": {\"a\": 2}}}]}, {\"role\": \"tool\", \"content\": \"4\"}]}\n",
    "{\"conversations\": [{\"from\": \"human\", \"value\": \"Hi\"}, {\"from\": \"gpt\", \"value\": \"Hello\"}]}\r\n\r\n"
    "{\"conversations\": [{\"from\": \"system\", \"value\": \"s\"}, {\"from\": \"human\", \"value\": \"q\"}, {\"from\": \"gpt\", \"value\": \"a\"}]}\n",
    "{\"instruction\": \"Add\", \"input\": \"2 and 2\", \"output\": \"4\"}\n{\"instruction\": \"Greet\", \"input\": null, \"output\": \"Hi\"}\n",
    "\xEF\xBB\xBF{\"text\": \"plain text with \\u00e9 and \\ud83d\\ude00\"}\n  \n{\"text\": \"more\\n\\ttext\"}",
    "{\"messages\": [{\"role\": \"wizard\", \"content\": \"x\"}]}\n{\"text\": 3}\nnot json\n[1, 2]\n{\"messages\": []}\n{\"instruction\": \"x\"}\n",
};

static const char *DICT[] = {"{", "}", "[", "]", ",", ":", "\"", "\\", "\\u0000", "\\ud800", "\\\"", "\n", "\r", " ", "null",
                             "true", "1e999", "-0", "\"role\"", "\"content\"", "\"messages\"", "\"conversations\"",
                             "\"from\"", "\"value\"", "\"gpt\"", "\"human\"", "\"assistant\"", "\"tool_calls\"",
                             "\"instruction\"", "\"output\"", "\"text\"", "\xff", "\xC3", "\xEF\xBB\xBF", "\xF0\x9F\x98\x80"};

int main(void)
{
    mutator m = {0x9E3779B97F4A7C15ull, DICT, sizeof DICT / sizeof *DICT};
    static uint8_t buf[8192];
    char why[512];
    int violations = 0;
    for (size_t s = 0; s < sizeof SEEDS / sizeof *SEEDS; s++) {
        const uint8_t *seed = (const uint8_t *)SEEDS[s];
        size_t n = strlen(SEEDS[s]);
        if (fuzz_dataset_check(seed, n, why, sizeof why) < 0) { violations++; CHECK(0, "seed %zu: %s", s, why); }
        for (int i = 0; i < MUTATIONS && violations < 5; i++) {
            size_t size = mutate(&m, seed, n, buf, sizeof buf);
            if (fuzz_dataset_check(buf, size, why, sizeof why) < 0) {
                violations++;
                CHECK(0, "seed %zu mutation %d (%zu bytes): %s", s, i, size, why);
            }
        }
    }
    CHECK(violations == 0, "%d mutated datasets broke an invariant", violations);
    return testing_finish();
}
