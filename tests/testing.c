#include "tests/testing.h"
#include "finch/finch.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#define FINCH_TESTING_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define FINCH_TESTING_ASAN 1
#endif
#endif
#ifdef FINCH_TESTING_ASAN
#include <sanitizer/lsan_interface.h>
#endif

int testing_passed, testing_failed;

/* Under AddressSanitizer the leak check runs here, at the end of main, instead of at exit: there it
 * raced with PoCL's threads being torn down, and LeakSanitizer's tracer crashed (signal 11) in ~7% of
 * test_backend_switch_opencl's runs after every check had passed; 0 of 72 runs so. The check is the same
 * (what is still reachable from globals is not a leak). */
int testing_finish(void)
{
    printf("%d passed, %d failed\n", testing_passed, testing_failed);
    fflush(stdout);
#ifdef FINCH_TESTING_ASAN
    __lsan_do_leak_check();
#endif
    return (testing_failed == 0 && testing_passed > 0) ? 0 : 1;
}

const char *testing_shared_dir(void)
{
    const char *d = getenv("FINCH_SHARED_DIR");
    return d && *d ? d : "../shared";
}

const char *testing_tmp_dir(void)
{
    const char *d = getenv("FINCH_TEST_TMP");
    return d && *d ? d : "/tmp";
}

const char *testing_bin_dir(void)
{
    static char own[4096];
    const char *d = getenv("FINCH_BIN_DIR");
    if (d && *d) return d;
    ssize_t len = readlink("/proc/self/exe", own, sizeof own - 16);
    if (len > 0) {
        own[len] = 0;
        char *slash = strrchr(own, '/');
        if (slash) {
            strcpy(slash, "/finch");
            int beside = access(own, X_OK) == 0;
            *slash = 0;
            if (beside) return own;
        }
    }
    return "bin";
}

double testing_rel_err(const float *a, const float *ref, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - (double)ref[i];
        num += d * d;
        den += (double)ref[i] * (double)ref[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

void testing_fill_random(float *x, size_t n, unsigned long long seed)
{
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = 0; i < n; i++) {
        s ^= s << 13; s ^= s >> 7; s ^= s << 17;
        x[i] = (float)((double)(s >> 11) / 9007199254740992.0 * 2.0 - 1.0);
    }
}

int testing_run(const char *cmd, char *out, size_t size)
{
    size_t len = strlen(cmd) + 8;
    char *full = malloc(len);
    if (!full) return -1;
    snprintf(full, len, "%s 2>&1", cmd);
    FILE *p = popen(full, "r");
    free(full);
    if (!p) return -1;
    size_t n = fread(out, 1, size - 1, p);
    out[n] = 0;
    char rest[4096];   /* what does not fit is read and dropped, so the command never blocks on a full pipe */
    while (fread(rest, 1, sizeof rest, p) > 0) {}
    int status = pclose(p);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

int testing_exec(const char *bin, const char *const *args, const char *out_path, const char *err_path)
{
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        if (!freopen(out_path, "w", stdout)) _exit(126);
        if (err_path ? !freopen(err_path, "w", stderr) : dup2(fileno(stdout), 2) < 0) _exit(126);
        char *argv[32];
        int n = 0;
        argv[n++] = (char *)bin;
        for (int i = 0; args[i] && n < 31; i++) argv[n++] = (char *)args[i];
        argv[n] = NULL;
        execv(bin, argv);
        _exit(127);
    }
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) < 0) return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

char *testing_read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (s && fread(s, 1, (size_t)n, f) != (size_t)n) {
        free(s);
        s = NULL;
    }
    if (s) s[n] = 0;
    fclose(f);
    return s;
}

int testing_write_sums_jsonl(const char *path)
{
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    unsigned s = 7;
    for (int i = 0; i < 64; i++) {
        s = s * 1103515245u + 12345u;
        int x = (int)(s >> 16) % 10, y = (int)(s >> 8) % 10;
        fprintf(f, "{\"messages\": [{\"role\": \"user\", \"content\": \"%d+%d=\"}, {\"role\": \"assistant\", \"content\": \"%d\"}]}\n",
                x, y, x + y);
    }
    return fclose(f) == 0 ? 0 : -1;
}

int testing_lora_b_random(finch_model *m, unsigned long long seed, float scale)
{
    for (int64_t i = 0; i < finch_trainable_count(m); i++) {
        finch_tensor_info ti;
        finch_trainable_info(m, i, &ti);
        if (!strstr(ti.name, "lora_B")) continue;
        float *v = malloc((size_t)ti.numel * sizeof(float));
        if (!v) return FINCH_ERR_OUT_OF_MEMORY;
        testing_fill_random(v, (size_t)ti.numel, seed + (unsigned long long)i);
        for (int64_t j = 0; j < ti.numel; j++) v[j] *= scale;
        int rc = finch_trainable_write(m, i, v, ti.numel);
        free(v);
        if (rc) return rc;
    }
    return FINCH_OK;
}
