/* `finch init` and `finch train` as programs ($FINCH_BIN_DIR/finch): a tiny llama from init with
 * finch's byte-level tokenizer, trained on a small arithmetic chat JSONL (the loss falls; metrics,
 * loss curve, checkpoints and a loadable PEFT adapter appear); a run stopped by a real SIGINT
 * checkpoints, exits 130, and `--resume latest` continues with the very losses of an uninterrupted
 * run; bad flags and an unusable --out fail cleanly. */
#include "finch/train.h"
#include "tests/testing.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char bin[512], dir[600], model[700], data[700];

static int exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* The "loss" of each step line of a metrics.jsonl, as written (%.17g), by step. */
static int read_losses(const char *path, char losses[][40], int max)
{
    FILE *f = fopen(path, "r");
    int n = 0;
    char line[1024];
    while (f && fgets(line, sizeof line, f)) {
        long step;
        char *l = strstr(line, "\"loss\": ");
        if (sscanf(line, "{\"step\": %ld", &step) != 1 || !l || step < 1 || step > max) continue;
        sscanf(l + 8, "%39[^,]", losses[step - 1]);
        if (step > n) n = (int)step;
    }
    if (f) fclose(f);
    return n;
}

static int count_lines(const char *path, const char *needle)
{
    FILE *f = fopen(path, "r");
    int n = 0;
    char line[1024];
    while (f && fgets(line, sizeof line, f)) n += strstr(line, needle) != NULL;
    if (f) fclose(f);
    return n;
}

#define TRAIN_ARGS "--lr-scheduler constant --learning-rate 3e-3 --batch-size 8 --grad-accum 1 --lora-r 8 --eval-split 0.1 --threads 1"

static void init_and_data(void)
{
    static char out[65536];
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "'%s/finch' init --arch llama --out '%s' --hidden 64 --layers 2 --heads 4 --kv-heads 2 --seed 5", bin, model);
    int rc = testing_run(cmd, out, sizeof out);
    CHECK(rc == 0 && strstr(out, "byte-level"), "finch init exited %d:\n%s", rc, out);
    rc = testing_run(cmd, out, sizeof out);
    CHECK(rc == 1 && strstr(out, "already holds a model"), "init over a model: %d\n%s", rc, out);
    /* The tokenizer loads with finch, round-trips any UTF-8, and renders ChatML. */
    finch_tokenizer *tok = NULL;
    finch_chat_template *t = NULL;
    CHECK(finch_tokenizer_load(model, &tok) == FINCH_OK, "tokenizer: %s", finch_last_error());
    if (tok) {
        const char *text = "Grüße, 世界! 12+30=42\n<|im_end|>";
        finch_tokens ids = {0};
        char *back = NULL;
        size_t len = 0;
        CHECK(finch_tokenizer_encode(tok, text, strlen(text), 0, &ids) == FINCH_OK &&
                  finch_tokenizer_decode(tok, ids.ids, ids.len, 0, &back, &len) == FINCH_OK && back && !strcmp(back, text),
              "round trip: '%s'", back ? back : finch_last_error());
        CHECK(ids.len && ids.ids[ids.len - 1] == 258, "<|im_end|> is one special token (last id %d)", ids.len ? ids.ids[ids.len - 1] : -1);
        finch_data_free(back);
        finch_tokens_free(&ids);
        CHECK(finch_chat_template_from_tokenizer(tok, &t) == FINCH_OK, "template: %s", finch_last_error());
        finch_chat_template_free(t);
        finch_tokenizer_free(tok);
    }
    CHECK(testing_write_sums_jsonl(data) == 0, "cannot write %s", data);
}

static void train_end_to_end(char baseline[][40], int steps)
{
    static char out[1 << 17];
    char cmd[8192], path[1500];
    snprintf(cmd, sizeof cmd, "'%s/finch' train --model '%s' --data '%s' --out '%s/run' --max-steps %d --save-steps 6 " TRAIN_ARGS, bin, model, data,
             dir, steps);
    int rc = testing_run(cmd, out, sizeof out);
    CHECK(rc == 0 && strstr(out, "done"), "finch train exited %d:\n%s", rc, out);
    snprintf(path, sizeof path, "%s/run/metrics.jsonl", dir);
    int n = read_losses(path, baseline, steps);
    CHECK(n == steps && count_lines(path, "eval_loss") == 1, "metrics: %d step lines, %d eval lines", n, count_lines(path, "eval_loss"));
    if (n == steps) {
        double first = atof(baseline[0]), last = (atof(baseline[steps - 1]) + atof(baseline[steps - 2]) + atof(baseline[steps - 3])) / 3;
        CHECK(last < first - 0.3, "the loss did not fall: %.4f -> %.4f", first, last);
        printf("  finch train: loss %.4f -> %.4f over %d steps\n", first, last, steps);
    }
    snprintf(path, sizeof path, "%s/run/loss.svg", dir);
    CHECK(count_lines(path, "<polyline") == 1 && count_lines(path, "</svg>") == 1, "loss.svg");
    snprintf(path, sizeof path, "%s/run/checkpoint-6/trainer_state.safetensors", dir);
    CHECK(exists(path), "no %s", path);
    /* The adapter in --out loads onto the model. */
    finch_runtime *rt = NULL;
    finch_model *m = NULL;
    snprintf(path, sizeof path, "%s/run", dir);
    CHECK(finch_runtime_open("cpu", &rt) == FINCH_OK && finch_model_load(rt, model, NULL, &m) == FINCH_OK && finch_lora_load(m, path) == FINCH_OK &&
              finch_trainable_count(m) == 2 * 2 * 7,
          "the trained adapter does not load: %s", finch_last_error());
    finch_model_free(m);
    finch_runtime_close(rt);
}

static void interrupt_and_resume(char baseline[][40], int steps)
{
    char out_dir[1300], metrics[1400], log[1400], ck[1500];
    snprintf(out_dir, sizeof out_dir, "%s/run_int", dir);
    snprintf(metrics, sizeof metrics, "%s/metrics.jsonl", out_dir);
    snprintf(log, sizeof log, "%s/int.log", dir);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        FILE *f = freopen(log, "w", stdout);
        if (f) dup2(fileno(stdout), 2);
        char exe[1100];
        snprintf(exe, sizeof exe, "%s/finch", bin);
        execl(exe, "finch", "train", "--model", model, "--data", data, "--out", out_dir, "--max-steps", "100000", "--lr-scheduler", "constant",
              "--learning-rate", "3e-3", "--batch-size", "8", "--grad-accum", "1", "--lora-r", "8", "--eval-split", "0.1", "--threads", "1",
              (char *)NULL);
        _exit(127);
    }
    /* Wait for three logged steps, then Ctrl-C. */
    int seen = 0, st = 0, gone = 0;
    for (int i = 0; i < 6000 && seen < 3 && !gone; i++) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
        seen = count_lines(metrics, "\"loss\"");
        gone = waitpid(pid, &st, WNOHANG) == pid;
    }
    CHECK(seen >= 3 && !gone, "the interrupted run logged %d steps%s", seen, gone ? " and ended by itself" : "");
    if (!gone) {
        kill(pid, SIGINT);
        waitpid(pid, &st, 0);
    }
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 130, "after SIGINT: %s %d", WIFEXITED(st) ? "exit" : "signal",
          WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
    CHECK(count_lines(log, "interrupted") == 1 && count_lines(log, "--resume latest") == 1, "no interruption message in %s", log);
    int k = finch_trainer_latest_checkpoint(out_dir, ck, sizeof ck) == FINCH_OK ? atoi(strrchr(ck, '-') + 1) : 0;
    CHECK(k >= 3, "no checkpoint after the interrupt: %s", finch_last_error());
    printf("  SIGINT after %d logged steps: exit 130, %s\n", seen, ck);
    if (k < 3 || k >= steps) return;
    /* Resume in a new process: the same losses as the uninterrupted run, digit for digit. */
    static char out[1 << 17];
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "'%s/finch' train --model '%s' --data '%s' --out '%s' --max-steps %d --resume latest " TRAIN_ARGS, bin, model, data,
             out_dir, steps);
    int rc = testing_run(cmd, out, sizeof out);
    CHECK(rc == 0 && strstr(out, "resumed from"), "resume exited %d:\n%s", rc, out);
    char losses[64][40];
    memset(losses, 0, sizeof losses);
    int n = read_losses(metrics, losses, steps);
    int same = n == steps;
    for (int i = 0; same && i < steps; i++) same = !strcmp(losses[i], baseline[i]);
    CHECK(same, "interrupted at %d and resumed: the losses differ from the uninterrupted run", k);
    for (int i = 0; !same && i < n; i++) fprintf(stderr, "  step %d: %s vs %s\n", i + 1, losses[i], baseline[i]);
    printf("  resumed from step %d in a new process: %d losses identical to the uninterrupted run\n", k, steps);
}

/* A JSON config with flags over it; continued pre-training on text with full fine-tuning. */
static void config_and_text(void)
{
    static char out[1 << 16];
    char cmd[8192], path[1400];
    snprintf(path, sizeof path, "%s/train.json", dir);
    FILE *f = fopen(path, "w");
    if (f) {
        fprintf(f, "{\"learning_rate\": 3e-3, \"per_device_train_batch_size\": 8, \"gradient_accumulation_steps\": 1,\n"
                   " \"lr_scheduler_type\": \"cosine\", \"target_modules\": [\"q_proj\", \"v_proj\"], \"lora_r\": 4,\n"
                   " \"max_steps\": 2, \"threads\": 1, \"packing\": true, \"max_seq_length\": 64}\n");
        fclose(f);
    }
    snprintf(cmd, sizeof cmd, "'%s/finch' train --config '%s' --model '%s' --data '%s' --out '%s/run_cfg' --max-steps 3", bin, path, model, data, dir);
    int rc = testing_run(cmd, out, sizeof out);
    snprintf(path, sizeof path, "%s/run_cfg/metrics.jsonl", dir);
    CHECK(rc == 0 && count_lines(path, "\"loss\"") == 3, "config file + --max-steps 3: exit %d, %d steps\n%s", rc, count_lines(path, "\"loss\""), out);
    snprintf(path, sizeof path, "%s/run_cfg/adapter_config.json", dir);
    CHECK(count_lines(path, "q_proj") == 1 && count_lines(path, "v_proj") == 1 && count_lines(path, "up_proj") == 0,
          "target_modules from the config file are not in %s", path);

    char text[1400];
    snprintf(text, sizeof text, "%s/text.jsonl", dir);
    f = fopen(text, "w");
    for (int i = 0; f && i < 16; i++) fprintf(f, "{\"text\": \"The number %d comes after %d and before %d.\"}\n", i + 1, i, i + 2);
    if (f) fclose(f);
    snprintf(cmd, sizeof cmd,
             "'%s/finch' train --model '%s' --data '%s' --out '%s/run_text' --max-steps 3 --full-finetune --embedding-learning-rate 1e-4 "
             "--batch-size 4 --grad-accum 1 --threads 1",
             bin, model, text, dir);
    rc = testing_run(cmd, out, sizeof out);
    snprintf(path, sizeof path, "%s/run_text/checkpoint-3/trainer_state.safetensors", dir);
    CHECK(rc == 0 && strstr(out, "weights in") && exists(path), "full fine-tuning on text: exit %d\n%s", rc, out);
}

static void failures(void)
{
    static char out[65536];
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "'%s/finch' train --model '%s' --data '%s' --out '%s/run' --bogus 1", bin, model, data, dir);
    int rc = testing_run(cmd, out, sizeof out);
    CHECK(rc == 2 && strstr(out, "--bogus"), "unknown flag: %d\n%s", rc, out);
    snprintf(cmd, sizeof cmd, "'%s/finch' train --model '%s' --data '%s' --out '%s/run/metrics.jsonl/x' --max-steps 1 --threads 1", bin, model, data, dir);
    rc = testing_run(cmd, out, sizeof out);
    CHECK(rc == 1 && strstr(out, "output_dir") && strstr(out, "metrics.jsonl"), "unusable --out: %d\n%s", rc, out);
    snprintf(cmd, sizeof cmd, "'%s/finch' train --model '%s' --data '%s' --out '%s/run_x' --optimizer sgd", bin, model, data, dir);
    rc = testing_run(cmd, out, sizeof out);
    CHECK(rc == 2 && strstr(out, "sgd"), "unknown optimizer: %d\n%s", rc, out);
}

int main(void)
{
    const char *b = getenv("FINCH_BIN_DIR");
    if (!b) {
        fprintf(stderr, "FINCH_BIN_DIR is not set (run through ctest)\n");
        return 1;
    }
    snprintf(bin, sizeof bin, "%s", b);
    snprintf(dir, sizeof dir, "%s/cli_train", testing_tmp_dir());
    char cmd[1400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s'", dir, dir);
    if (system(cmd)) return 1;
    snprintf(model, sizeof model, "%s/model", dir);
    snprintf(data, sizeof data, "%s/data.jsonl", dir);
    enum { STEPS = 24 };
    char baseline[STEPS][40];
    memset(baseline, 0, sizeof baseline);
    init_and_data();
    train_end_to_end(baseline, STEPS);
    interrupt_and_resume(baseline, STEPS);
    config_and_text();
    failures();
    return testing_finish();
}
