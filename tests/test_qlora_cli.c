/* The QLoRA command-line pieces, run as programs from $FINCH_BIN_DIR: `finch forward --load-in-4bit`
 * (its loss equals the library's 4-bit load, differs from the dense one; --full is refused),
 * `finch train --load-in-4bit` on a tiny `finch init` model (the loss falls), and
 * samples/bench_qlora at a tiny shape (it generates its 4-bit checkpoint, trains and reports). */
#include "core/safetensors.h"
#include "finch/finch.h"
#include "tests/testing.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

static int run(const char *cmd, char *out, size_t size)
{
    char full[4096];
    snprintf(full, sizeof full, "%s 2>&1", cmd);
    FILE *p = popen(full, "r");
    if (!p) return -1;
    size_t n = fread(out, 1, size - 1, p);
    out[n] = 0;
    int status = pclose(p);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* "loss X over N tokens" as the CLI prints it. */
static double printed_loss(const char *out)
{
    const char *p = strstr(out, "loss ");
    return p ? atof(p + 5) : -1.0;
}

int main(void)
{
    const char *bin = getenv("FINCH_BIN_DIR"), *tmp = testing_tmp_dir(), *shared = testing_shared_dir();
    if (!bin) {
        fprintf(stderr, "FINCH_BIN_DIR is not set (run through ctest)\n");
        return 1;
    }
    static char out[65536];
    char cmd[4096], g[1200];
    snprintf(g, sizeof g, "%s/golden/llama", shared);

    /* the library's own 4-bit loss on the golden batch */
    double lib_loss = -1;
    finch_runtime *rt = NULL;
    st_set *gs = NULL;
    char path[1300];
    snprintf(path, sizeof path, "%s/golden.safetensors", g);
    if (finch_runtime_open("cpu", &rt) == FINCH_OK && st_set_open_file(path, &gs) == FINCH_OK) {
        const st_tensor *ti = st_set_find(gs, "input_ids"), *tl = st_set_find(gs, "labels");
        int32_t *ids = malloc((size_t)ti->numel * sizeof *ids), *labels = malloc((size_t)tl->numel * sizeof *labels);
        st_to_i32(ti, ids);
        st_to_i32(tl, labels);
        snprintf(path, sizeof path, "%s/model", g);
        finch_load_options o = finch_load_options_default();
        o.load_in_4bit = 1;
        finch_model *m = NULL;
        finch_batch b = {.batch = ti->shape[0], .seq_len = ti->shape[1], .input_ids = ids, .labels = labels};
        finch_step_result r;
        if (finch_model_load(rt, path, &o, &m) == FINCH_OK && finch_forward(m, &b, NULL, &r) == FINCH_OK) lib_loss = r.loss;
        finch_model_free(m);
        free(ids);
        free(labels);
    }
    st_set_close(gs);
    if (rt) finch_runtime_close(rt);
    CHECK(lib_loss > 0, "library 4-bit forward: %s", finch_last_error());

    snprintf(cmd, sizeof cmd, "'%s/finch' forward --backend cpu --model '%s/model' --batch '%s/golden.safetensors' --out '%s/qlora_cli_dense.safetensors'",
             bin, g, g, tmp);
    int rc = run(cmd, out, sizeof out);
    double dense = printed_loss(out);
    CHECK(rc == 0 && dense > 0, "finch forward (dense) exited %d:\n%s", rc, out);
    snprintf(cmd, sizeof cmd, "'%s/finch' forward --backend cpu --load-in-4bit --model '%s/model' --batch '%s/golden.safetensors' --out '%s/qlora_cli_4bit.safetensors'",
             bin, g, g, tmp);
    rc = run(cmd, out, sizeof out);
    double q = printed_loss(out);
    CHECK(rc == 0 && q > 0, "finch forward --load-in-4bit exited %d:\n%s", rc, out);
    CHECK(q > 0 && dense > 0 && q != dense, "4-bit loss %.6f differs from the dense %.6f", q, dense);
    CHECK(fabs(q - lib_loss) < 2e-6, "CLI 4-bit loss %.6f is the library's %.7f", q, lib_loss);

    snprintf(cmd, sizeof cmd, "'%s/finch' forward --backend cpu --load-in-4bit --full --model '%s/model' --batch '%s/golden.safetensors' --out '%s/qlora_cli_full.safetensors'",
             bin, g, g, tmp);
    rc = run(cmd, out, sizeof out);
    CHECK(rc != 0 && strstr(out, "full fine-tuning needs dense weights"), "--full --load-in-4bit is refused (exit %d):\n%s", rc, out);

    /* QLoRA training from the CLI */
    char dir[1200];
    snprintf(dir, sizeof dir, "%s/qlora_cli_train", tmp);
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s' && '%s/finch' init --arch llama --out '%s/model' --hidden 64 --layers 2 --heads 4 --kv-heads 2 --seed 5",
             dir, dir, bin, dir);
    rc = run(cmd, out, sizeof out);
    CHECK(rc == 0, "finch init exited %d:\n%s", rc, out);
    snprintf(path, sizeof path, "%s/data.jsonl", dir);
    FILE *f = fopen(path, "w");
    unsigned sd = 7;
    for (int i = 0; f && i < 64; i++) {
        sd = sd * 1103515245u + 12345u;
        int x = (int)(sd >> 16) % 10, y = (int)(sd >> 8) % 10;
        fprintf(f, "{\"messages\": [{\"role\": \"user\", \"content\": \"%d+%d=\"}, {\"role\": \"assistant\", \"content\": \"%d\"}]}\n", x, y, x + y);
    }
    if (f) fclose(f);
    snprintf(cmd, sizeof cmd, "'%s/finch' train --load-in-4bit --model '%s/model' --data '%s' --out '%s/run' --max-steps 16 --lr-scheduler constant "
             "--learning-rate 3e-3 --batch-size 8 --grad-accum 1 --lora-r 8 --threads 1", bin, dir, path, dir);
    rc = run(cmd, out, sizeof out);
    CHECK(rc == 0, "finch train --load-in-4bit exited %d:\n%s", rc, out);
    snprintf(path, sizeof path, "%s/run/metrics.jsonl", dir);
    f = fopen(path, "r");
    double first = -1, recent[3] = {0, 0, 0};
    int steps = 0;
    char line[1024];
    while (f && fgets(line, sizeof line, f)) {
        long step;
        const char *l = strstr(line, "\"loss\": ");
        if (sscanf(line, "{\"step\": %ld", &step) != 1 || !l) continue;
        double v = atof(l + 8);
        if (step == 1) first = v;
        recent[steps++ % 3] = v;
    }
    if (f) fclose(f);
    double last = (recent[0] + recent[1] + recent[2]) / 3;
    CHECK(steps == 16 && first > 0 && last < first - 0.3, "QLoRA training: %d steps, loss %.4f -> %.4f", steps, first, last);
    printf("  finch train --load-in-4bit: loss %.4f -> %.4f over %d steps\n", first, last, steps);

    snprintf(cmd, sizeof cmd, "'%s/bench_qlora' --shape tiny --seq 32 --batch 2 --steps 2 --backend cpu --dir '%s'", bin, tmp);
    rc = run(cmd, out, sizeof out);
    const char *res = strstr(out, "RESULT ");
    const char *tps = res ? strstr(res, "tokens_per_s=") : NULL, *pk = res ? strstr(res, "peak_alloc_gib=") : NULL;
    CHECK(rc == 0 && tps && atof(tps + 13) > 0 && pk && atof(pk + 15) > 0, "bench_qlora exited %d:\n%s", rc, out);
    CHECK(strstr(out, "mode qlora: NF4") != NULL, "bench_qlora runs on NF4 weights:\n%s", out);
    return testing_finish();
}
