/* `finch forward` as a user runs it: for every golden architecture, the output file's logits, loss
 * and gradients (full fine-tuning, and the golden PEFT adapter) match the Hugging Face references;
 * bad input exits non-zero with a message and writes no output file. */
#include "core/safetensors.h"
#include "finch/finch.h"
#include "tests/testing.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define TOL 1e-4

static const char *archs[] = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "phi3", "falcon"};

static char finch_bin[1024], tmp[1024], log_path[1100];

/* Runs the finch binary with args (NULL-terminated), stdout+stderr to log_path; returns the exit status. */
static int run_finch(const char *const *args) { return testing_exec(finch_bin, args, log_path, NULL); }

static char *read_log(void)
{
    static char buf[8192];
    FILE *f = fopen(log_path, "r");
    size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
    if (f) fclose(f);
    buf[n] = 0;
    return buf;
}

static float *f32_of(const st_set *s, const char *name, int64_t *numel)
{
    const st_tensor *t = st_set_find(s, name);
    if (!t) return NULL;
    float *v = malloc((size_t)t->numel * sizeof(float) + 1);
    if (v && st_to_f32(t, v) != FINCH_OK) { free(v); return NULL; }
    *numel = t->numel;
    return v;
}

static double rel_err_of(const st_set *out, const char *name, const st_set *gold, const char *ref_name)
{
    int64_t n = 0, nr = 0;
    float *a = f32_of(out, name, &n), *b = f32_of(gold, ref_name, &nr);
    double e = (a && b && n == nr) ? testing_rel_err(a, b, (size_t)n) : 1e30;
    free(a);
    free(b);
    return e;
}

/* Compares every grad.<name> in out against <ref_prefix><name> in gold and checks none is missing. */
static void compare_grads(const st_set *out, const st_set *gold, const char *ref_prefix, const char *what)
{
    int matched = 0, expected = 0;
    double worst = 0;
    size_t plen = strlen(ref_prefix);
    for (int i = 0; i < st_set_count(gold); i++) {
        const char *rn = st_set_at(gold, i)->name;
        if (strncmp(rn, ref_prefix, plen)) continue;
        expected++;
        char name[512];
        snprintf(name, sizeof name, "grad.%s", rn + plen);
        double e = rel_err_of(out, name, gold, rn);
        CHECK(e <= TOL, "%s: %s rel err %.3g", what, name, e);
        if (e <= TOL) matched++;
        if (e > worst) worst = e;
    }
    CHECK(expected > 0 && matched == expected, "%s: %d of %d gradients match", what, matched, expected);
    printf("  %-28s %d gradients, worst rel err %.2e\n", what, expected, worst);
}

static void forward_case(const char *arch, int with_adapter)
{
    char model[1200], adapter[1200], gold_path[1200], out_path[1200];
    snprintf(model, sizeof model, "%s/golden/%s/model", testing_shared_dir(), arch);
    snprintf(adapter, sizeof adapter, "%s/golden/%s/adapter", testing_shared_dir(), arch);
    snprintf(gold_path, sizeof gold_path, "%s/golden/%s/golden.safetensors", testing_shared_dir(), arch);
    snprintf(out_path, sizeof out_path, "%s/forward_%s_%d.safetensors", tmp, arch, with_adapter);
    unlink(out_path);
    const char *full_args[] = {"forward", "--model", model, "--batch", gold_path, "--grads", "--full", "--backend", "cpu",
                               "--out", out_path, NULL};
    const char *lora_args[] = {"forward", "--model", model, "--adapter", adapter, "--batch", gold_path, "--grads",
                               "--backend", "cpu", "--out", out_path, NULL};
    int rc = run_finch(with_adapter ? lora_args : full_args);
    CHECK(rc == 0, "finch forward %s (%s) exited %d: %s", arch, with_adapter ? "adapter" : "full", rc, read_log());
    if (rc) return;
    st_set *out = NULL, *gold = NULL;
    if (st_set_open_file(out_path, &out) || st_set_open_file(gold_path, &gold)) {
        CHECK(0, "%s: cannot read outputs: %s", arch, finch_last_error());
        st_set_close(out);
        return;
    }
    const char *prefix = with_adapter ? "lora" : "base";
    char ref[64];
    snprintf(ref, sizeof ref, "%s.logits", prefix);
    double e = rel_err_of(out, "logits", gold, ref);
    CHECK(e <= TOL, "%s %s logits rel err %.3g", arch, prefix, e);
    snprintf(ref, sizeof ref, "%s.loss", prefix);
    double el = rel_err_of(out, "loss", gold, ref);
    CHECK(el <= TOL, "%s %s loss rel err %.3g", arch, prefix, el);
    printf("%s %s: logits %.2e, loss %.2e\n", arch, prefix, e, el);
    snprintf(ref, sizeof ref, "%s.grad.", prefix);
    compare_grads(out, gold, ref, with_adapter ? "LoRA gradients" : "full gradients");
    st_set_close(out);
    st_set_close(gold);
}

/* A broken input must fail with a message and leave no output behind. */
static void expect_failure(const char *what, const char *model_dir, const char *batch)
{
    char out_path[1200];
    snprintf(out_path, sizeof out_path, "%s/forward_bad.safetensors", tmp);
    unlink(out_path);
    const char *args[] = {"forward", "--model", model_dir, "--batch", batch, "--backend", "cpu", "--out", out_path, NULL};
    int rc = run_finch(args);
    const char *log = read_log();
    CHECK(rc != 0 && rc < 128, "%s: exit status %d (want a clean non-zero exit)", what, rc);
    CHECK(strlen(log) > 10, "%s: no message", what);
    CHECK(access(out_path, F_OK) != 0, "%s: an output file was written", what);
    printf("%s -> exit %d: %s", what, rc, log);
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (f) { fputs(text, f); fclose(f); }
}

static void bad_inputs(void)
{
    char gold[1200], dir[1200], path[1300];
    snprintf(gold, sizeof gold, "%s/golden/llama/golden.safetensors", testing_shared_dir());
    expect_failure("missing model folder", "/nonexistent/model", gold);

    snprintf(dir, sizeof dir, "%s/forward_badcfg", tmp);
    mkdir(dir, 0755);
    snprintf(path, sizeof path, "%s/config.json", dir);
    write_file(path, "{\"model_type\": \"llama\", \"hidden_size\": ");
    expect_failure("malformed config.json", dir, gold);

    write_file(path, "{\"model_type\": \"transformer-xl\"}");
    expect_failure("unknown model_type", dir, gold);

    /* a real config with a weights file cut in half */
    char src_cfg[1200], src_w[1200];
    snprintf(src_cfg, sizeof src_cfg, "%s/golden/llama/model/config.json", testing_shared_dir());
    snprintf(src_w, sizeof src_w, "%s/golden/llama/model/model.safetensors", testing_shared_dir());
    FILE *in = fopen(src_cfg, "r");
    char cfg[8192];
    size_t n = in ? fread(cfg, 1, sizeof cfg - 1, in) : 0;
    if (in) fclose(in);
    cfg[n] = 0;
    write_file(path, cfg);
    in = fopen(src_w, "rb");
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    FILE *out = fopen(path, "wb");
    if (in && out) {
        fseek(in, 0, SEEK_END);
        long size = ftell(in);
        fseek(in, 0, SEEK_SET);
        char *buf = malloc((size_t)size);
        if (buf && fread(buf, 1, (size_t)size, in) == (size_t)size) fwrite(buf, 1, (size_t)size / 2, out);
        free(buf);
    }
    if (in) fclose(in);
    if (out) fclose(out);
    expect_failure("truncated model.safetensors", dir, gold);

    char model[1200];
    snprintf(model, sizeof model, "%s/golden/llama/model", testing_shared_dir());
    expect_failure("batch file that is not safetensors", model, src_cfg);
}

int main(void)
{
    snprintf(finch_bin, sizeof finch_bin, "%s/finch", testing_bin_dir());
    snprintf(tmp, sizeof tmp, "%s", testing_tmp_dir());
    snprintf(log_path, sizeof log_path, "%s/forward_cli.log", tmp);
    if (access(finch_bin, X_OK) != 0) {
        fprintf(stderr, "no finch binary at %s\n", finch_bin);
        return 1;
    }
    for (size_t i = 0; i < sizeof archs / sizeof archs[0]; i++) {
        forward_case(archs[i], 0);
        forward_case(archs[i], 1);
    }
    bad_inputs();
    return testing_finish();
}
