/* `finch generate --prompt-ids ... --print-ids` as a comparison script runs it: on golden models (no
 * tokenizer.json in their folders) the printed ids equal finch_generate's greedy continuation through
 * the library; a malformed list, an id outside the vocabulary and --chat with ids fail with a message. */
#include "finch/finch.h"
#include "finch/generate.h"
#include "tests/testing.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NEW_TOKENS 12

static char finch_bin[1024], log_path[1100];

/* Runs the finch binary with args (NULL-terminated), stdout to log_path and stderr to log_path.err. */
static int run_finch(const char *const *args)
{
    char err_path[1200];
    snprintf(err_path, sizeof err_path, "%s.err", log_path);
    return testing_exec(finch_bin, args, log_path, err_path);
}

/* The first line of the file at path (stdout, or with suffix ".err" stderr) into buf. */
static void first_line(const char *suffix, char *buf, size_t size)
{
    char path[1200];
    snprintf(path, sizeof path, "%s%s", log_path, suffix);
    buf[0] = 0;
    FILE *f = fopen(path, "r");
    if (!f) return;
    if (!fgets(buf, (int)size, f)) buf[0] = 0;
    fclose(f);
    buf[strcspn(buf, "\n")] = 0;
}

static void ids_case(const char *arch, const int32_t *prompt, int64_t len)
{
    char model[1100], list[512] = "", expect[1024] = "", got[4096], n_new[16];
    snprintf(model, sizeof model, "%s/golden/%s/model", testing_shared_dir(), arch);
    for (int64_t i = 0; i < len; i++) snprintf(list + strlen(list), sizeof list - strlen(list), "%s%d", i ? "," : "", prompt[i]);

    finch_runtime *rt = NULL;
    finch_model *m = NULL;
    finch_load_options lo = finch_load_options_default();
    lo.compute_dtype = FINCH_DTYPE_F32;
    finch_generate_options o = finch_generate_options_default();
    o.sampling.greedy = 1;
    o.max_new_tokens = NEW_TOKENS;
    o.use_model_eos = 0;
    finch_generation g;
    int rc = finch_runtime_open("cpu", &rt);
    if (!rc) rc = finch_model_load(rt, model, &lo, &m);
    if (!rc) rc = finch_generate(m, 1, &prompt, &len, &o, &g);
    CHECK(rc == FINCH_OK, "%s: library generate: %s", arch, finch_last_error());
    if (!rc) {
        for (size_t i = 0; i < g.tokens.len; i++) snprintf(expect + strlen(expect), sizeof expect - strlen(expect), "%s%d", i ? "," : "", g.tokens.ids[i]);
        finch_generation_free(&g);
    }
    finch_model_free(m);
    finch_runtime_close(rt);

    snprintf(n_new, sizeof n_new, "%d", NEW_TOKENS);
    const char *args[] = {"generate", "--model", model, "--prompt-ids", list, "--print-ids", "--greedy", "--ignore-eos",
                          "--max-new-tokens", n_new, "--backend", "cpu", "--dtype", "f32", NULL};
    int status = run_finch(args);
    first_line("", got, sizeof got);
    CHECK(status == 0, "%s: finch generate --prompt-ids exited %d", arch, status);
    CHECK(rc == FINCH_OK && !strcmp(got, expect), "%s: printed ids '%s', the library gives '%s'", arch, got, expect);
}

static void bad_inputs(void)
{
    char model[1100], err[1024];
    snprintf(model, sizeof model, "%s/golden/llama/model", testing_shared_dir());
    const char *malformed[] = {"generate", "--model", model, "--prompt-ids", "1,x,3", "--print-ids", "--backend", "cpu", NULL};
    CHECK(run_finch(malformed) == 2, "a malformed id list is a usage error");
    first_line(".err", err, sizeof err);
    CHECK(strstr(err, "comma-separated integers") != NULL, "malformed list message: '%s'", err);

    const char *empty[] = {"generate", "--model", model, "--prompt-ids", "", "--print-ids", "--backend", "cpu", NULL};
    CHECK(run_finch(empty) == 2, "an empty id list is a usage error");

    const char *outside[] = {"generate", "--model", model, "--prompt-ids", "1,99999", "--print-ids", "--backend", "cpu", NULL};
    CHECK(run_finch(outside) == 1, "an id outside the vocabulary fails");
    char path[1200];
    snprintf(path, sizeof path, "%s.err", log_path);
    FILE *f = fopen(path, "r");
    size_t n = f ? fread(err, 1, sizeof err - 1, f) : 0;
    err[n] = 0;
    if (f) fclose(f);
    CHECK(strstr(err, "99999") && strstr(err, "vocabulary"), "invalid id message: '%s'", err);

    const char *chat[] = {"generate", "--model", model, "--prompt-ids", "1,2", "--chat", "--backend", "cpu", NULL};
    CHECK(run_finch(chat) == 2, "--chat with --prompt-ids is a usage error");
}

int main(void)
{
    snprintf(finch_bin, sizeof finch_bin, "%s/finch", testing_bin_dir());
    snprintf(log_path, sizeof log_path, "%s/generate_ids_cli.log", testing_tmp_dir());
    if (access(finch_bin, X_OK) != 0) {
        fprintf(stderr, "no finch binary at %s\n", finch_bin);
        return 1;
    }
    const int32_t p1[] = {1, 17, 42, 99, 5, 250, 3};
    const int32_t p2[] = {2, 311, 7};
    ids_case("llama", p1, 7);
    ids_case("gemma2", p2, 3);
    ids_case("falcon", p1, 5);
    bad_inputs();
    return testing_finish();
}
