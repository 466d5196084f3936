/* A tiny test harness: CHECK() records a result; testing_finish() prints "N passed, N failed"
 * and returns the process exit status. */
#ifndef FINCH_TESTS_TESTING_H
#define FINCH_TESTS_TESTING_H

#include <stddef.h>
#include <stdio.h>

extern int testing_passed, testing_failed;

#define CHECK(cond, ...)                                                                  \
    do {                                                                                  \
        if (cond) {                                                                       \
            testing_passed++;                                                             \
        } else {                                                                          \
            testing_failed++;                                                             \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                          \
            fprintf(stderr, __VA_ARGS__);                                                 \
            fputc('\n', stderr);                                                          \
        }                                                                                 \
    } while (0)

/* Prints the summary line; returns 0 when nothing failed and something was checked. */
int testing_finish(void);
/* ../shared (or $FINCH_SHARED_DIR). */
const char *testing_shared_dir(void);
/* A scratch directory for files a test writes ($FINCH_TEST_TMP, else /tmp). */
const char *testing_tmp_dir(void);
/* Where the finch tool and the plugin modules are: $FINCH_BIN_DIR (ctest sets it), else the test's own
 * folder when the tool is beside it (a GPU bundle's bin/), else "bin". */
const char *testing_bin_dir(void);
/* ||a - ref|| / ||ref|| (or ||a|| when ref is all zeros). */
double testing_rel_err(const float *a, const float *ref, size_t n);
/* Deterministic pseudo-random floats in [-1, 1). */
void testing_fill_random(float *x, size_t n, unsigned long long seed);
/* Every LoRA B factor of m (zero after finch_lora_attach) to scale * testing_fill_random(seed + i), i its
 * trainable index, so that every adapter's gradients carry; FINCH_OK or the first error. */
typedef struct finch_model finch_model;
int testing_lora_b_random(finch_model *m, unsigned long long seed, float scale);
/* Runs a shell command with its stdout and stderr in out (NUL-terminated, cut at size - 1 bytes);
 * returns its exit status, or -1 when it could not run or did not exit. */
int testing_run(const char *cmd, char *out, size_t size);
/* Runs program bin with args (NULL-terminated, at most 30) without a shell: stdout to out_path,
 * stderr to err_path (NULL: into out_path too). Returns the exit status, 128 + the signal when
 * killed, -1 when it could not run. */
int testing_exec(const char *bin, const char *const *args, const char *out_path, const char *err_path);
/* The whole file, NUL-terminated (free() it), or NULL. */
char *testing_read_file(const char *path);
/* Writes the CLI tests' training set to path: 64 chats "x+y=" -> "<x+y>" with digits from a fixed
 * sequence, one JSON object a line. Returns 0, or -1 when the file cannot be written. */
int testing_write_sums_jsonl(const char *path);

#endif
