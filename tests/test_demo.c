/* `finch demo --quick` ($FINCH_BIN_DIR/finch), the README's main job in a short run: it succeeds,
 * prints the before/after table, and every output it names exists and loads — the model folder, the
 * task files (no held-out prompt among the training conversations), metrics.jsonl and loss.svg, the
 * PEFT adapter (finch_lora_load onto the model) and the GGUF file (read back by finch_gguf_verify,
 * whose logits match the model with the adapter). A second run over the same folder replaces the
 * first one's outputs; bad flags fail cleanly. */
#include "finch/export.h"
#include "finch/finch.h"
#include "tests/testing.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

static char bin[512], dir[600];

static int count(const char *s, const char *needle)
{
    int n = 0;
    for (const char *p = s; p && (p = strstr(p, needle)); p += strlen(needle)) n++;
    return n;
}

static char *file_in(const char *name)
{
    static char path[4][1400];
    static int k;
    k = (k + 1) % 4;
    snprintf(path[k], sizeof path[k], "%s/%s", dir, name);
    return path[k];
}

static void demo_run(void)
{
    static char out[1 << 18];
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "'%s/finch' demo --quick --out '%s'", bin, dir);
    int rc = testing_run(cmd, out, sizeof out);
    CHECK(rc == 0 && strstr(out, "before training") && strstr(out, "after training") && strstr(out, "correct (+):") && strstr(out, "done in"),
          "finch demo exited %d:\n%s", rc, out);
    CHECK(strstr(out, "loss  ") != NULL, "no loss curve in the terminal:\n%s", out);
    if (rc) return;

    /* The task: 20 steps of 16 conversations, 6 held-out prompts of each of 4 skills, none trained on. */
    char *train = testing_read_file(file_in("data/train.jsonl")), *held = testing_read_file(file_in("data/heldout.jsonl"));
    CHECK(train && count(train, "\n") == 20 * 16 && count(train, "\"assistant\"") == 20 * 16, "train.jsonl");
    CHECK(held && count(held, "\n") == 24, "heldout.jsonl");
    int seen = 0, prompts = 0;
    for (const char *p = held; p && (p = strstr(p, "\"user\",\"content\":\"")); p++) {
        char needle[160];
        const char *q = p + strlen("\"user\",\"content\":\""), *end = strchr(q, '"');
        if (!end || end - q > 100) break;
        snprintf(needle, sizeof needle, "\"content\":\"%.*s\"", (int)(end - q), q);
        seen += train && strstr(train, needle) != NULL;
        prompts++;
    }
    CHECK(prompts == 24 && seen == 0, "%d of %d held-out prompts occur in the training data", seen, prompts);
    free(train);
    free(held);

    char *metrics = testing_read_file(file_in("train/metrics.jsonl")), *svg = testing_read_file(file_in("train/loss.svg"));
    CHECK(metrics && count(metrics, "\"loss\"") == 20, "metrics.jsonl: %d step lines", count(metrics, "\"loss\""));
    CHECK(svg && count(svg, "<polyline") == 1 && count(svg, "</svg>") == 1, "loss.svg");
    free(metrics);
    free(svg);
    struct stat st;
    CHECK(stat(file_in("finch-demo.Modelfile"), &st) == 0, "no Modelfile");

    /* The adapter loads onto the model, and the GGUF file reads back to the same logits. */
    finch_runtime *rt = NULL;
    finch_model *m = NULL;
    finch_export_report r;
    int ok = finch_runtime_open("cpu", &rt) == FINCH_OK && finch_model_load(rt, file_in("model"), NULL, &m) == FINCH_OK &&
             finch_lora_load(m, file_in("adapter")) == FINCH_OK;
    CHECK(ok && finch_trainable_count(m) > 0, "the adapter does not load: %s", finch_last_error());
    if (ok) {
        int rc2 = finch_gguf_verify(m, file_in("finch-demo.gguf"), &r);
        CHECK(rc2 == FINCH_OK && r.logits_rel_err < 1e-2 && r.argmax_agree == r.positions, "GGUF read back: %s (rel. error %g, %lld/%lld)",
              rc2 ? finch_last_error() : "ok", r.logits_rel_err, (long long)r.argmax_agree, (long long)r.positions);
    }
    finch_model_free(m);
    finch_runtime_close(rt);
}

static void rerun_and_bad_flags(void)
{
    static char out[1 << 18];
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "'%s/finch' demo --steps 3 --out '%s' --threads 1", bin, dir);
    int rc = testing_run(cmd, out, sizeof out);
    char *metrics = testing_read_file(file_in("train/metrics.jsonl")), *train = testing_read_file(file_in("data/train.jsonl"));
    CHECK(rc == 0 && metrics && count(metrics, "\"loss\"") == 3 && train && count(train, "\n") == 3 * 16,
          "a second run over the same folder (exit %d):\n%s", rc, out);
    free(metrics);
    free(train);
    snprintf(cmd, sizeof cmd, "'%s/finch' demo --steps 0 --out '%s'", bin, dir);
    rc = testing_run(cmd, out, sizeof out);
    CHECK(rc == 2 && strstr(out, "must be positive"), "--steps 0: exit %d\n%s", rc, out);
    snprintf(cmd, sizeof cmd, "'%s/finch' demo --bogus", bin);
    rc = testing_run(cmd, out, sizeof out);
    CHECK(rc == 2 && strstr(out, "unknown argument"), "--bogus: exit %d\n%s", rc, out);
}

int main(void)
{
    const char *b = getenv("FINCH_BIN_DIR");
    snprintf(bin, sizeof bin, "%s", b ? b : "bin");
    snprintf(dir, sizeof dir, "%s/demo", testing_tmp_dir());
    demo_run();
    rerun_and_bad_flags();
    return testing_finish();
}
