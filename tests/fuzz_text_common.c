/* Scratch files for the text fuzz checks (the parsers under test read files). */
#include "tests/fuzz_text.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

const char *fuzz_scratch_path(const char *suffix)
{
    static char path[4096];
    const char *dir = getenv("FINCH_TEST_TMP");
    if (!dir || !*dir) dir = getenv("TMPDIR");
    if (!dir || !*dir) dir = "/tmp";
    snprintf(path, sizeof path, "%s/finch-fuzz-%ld-%s", dir, (long)getpid(), suffix);
    return path;
}

int fuzz_write_file(const char *path, const uint8_t *data, size_t size)
{
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    int ok = fwrite(data, 1, size, f) == size;
    return fclose(f) == 0 && ok ? 0 : -1;
}
