/* The trainer's failure paths: an output folder that cannot be written, a full disk while saving a
 * checkpoint (RLIMIT_FSIZE), a NaN loss, cancellation between micro-batches and from the progress
 * callback, a backend without the 8-bit optimizer entry. Each gives a clear error, leaves nothing
 * half-written, and the last good checkpoint resumes. Plus the LR schedules' values. */
#include "backends/backend.h"
#include "core/runtime.h"
#include "tests/train_fixtures.h"

#include <math.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>

static finch_trainer_config base_config(const char *out)
{
    finch_trainer_config c = finch_trainer_config_default();
    c.output_dir = out;
    c.max_steps = 4;
    c.per_device_train_batch_size = 2;
    c.gradient_accumulation_steps = 2;
    c.learning_rate = 1e-3;
    c.lora.r = 4;
    return c;
}

static int exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* Nothing but checkpoint-<N> folders (no temporary leftovers) in dir. */
static int only_checkpoints(const char *dir)
{
    char cmd[1400], line[512];
    snprintf(cmd, sizeof cmd, "ls -A '%s'", dir);
    FILE *p = popen(cmd, "r");
    int clean = p != NULL;
    while (p && fgets(line, sizeof line, p))
        if (strncmp(line, "checkpoint-", 11) || strchr(line, '.')) {
            fprintf(stderr, "  left over in %s: %s", dir, line);
            clean = 0;
        }
    if (p) pclose(p);
    return clean;
}

static void unwritable_output(finch_runtime *rt, const finch_train_data *data)
{
    char base[1200], out[1300];
    fx_tmp(base, sizeof base, "fail_unwritable");
    mkdir(base, 0755);
    snprintf(out, sizeof out, "%s/a_file", base);
    FILE *f = fopen(out, "w");
    if (f) fclose(f);
    snprintf(out, sizeof out, "%s/a_file/run", base);   /* a folder below a regular file: even root cannot */
    finch_model *m = fx_llama(rt, 0, 0);
    finch_trainer *t = NULL;
    finch_trainer_config c = base_config(out);
    int rc = m ? (int)finch_trainer_open(m, &c, data, &t) : -1;
    CHECK(rc == FINCH_ERR_IO && strstr(finch_last_error(), "output_dir") && strstr(finch_last_error(), "a_file"),
          "unwritable output_dir: %s '%s'", finch_status_name(rc), finch_last_error());
    printf("  unwritable output_dir: %s\n", finch_last_error());
    finch_trainer_close(t);
    finch_model_free(m);
}

static void disk_full(finch_runtime *rt, const finch_train_data *data)
{
    char out[1200], ck1[1300], ck2[1300];
    fx_tmp(out, sizeof out, "fail_disk_full");
    finch_model *m = fx_llama(rt, 0, 0);
    finch_trainer *t = NULL;
    finch_trainer_config c = base_config(out);
    if (!m || !fx_ok(finch_trainer_open(m, &c, data, &t), "open")) goto done;
    fx_ok(finch_trainer_step(t, NULL), "step 1");
    fx_ok(finch_trainer_save_checkpoint(t, ck1, sizeof ck1), "checkpoint 1");
    fx_ok(finch_trainer_step(t, NULL), "step 2");
    /* Files may not grow past 2 KiB: the checkpoint's tensors do not fit. */
    struct rlimit old, small;
    getrlimit(RLIMIT_FSIZE, &old);
    small = old;
    small.rlim_cur = 2048;
    void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
    setrlimit(RLIMIT_FSIZE, &small);
    int rc = finch_trainer_save_checkpoint(t, ck2, sizeof ck2);
    setrlimit(RLIMIT_FSIZE, &old);
    signal(SIGXFSZ, prev);
    snprintf(ck2, sizeof ck2, "%s/checkpoint-2", out);
    CHECK(rc == FINCH_ERR_IO && strstr(finch_last_error(), "checkpoint-2") && strstr(finch_last_error(), "intact"),
          "disk full: %s '%s'", finch_status_name(rc), finch_last_error());
    printf("  disk full: %s\n", finch_last_error());
    CHECK(!exists(ck2) && only_checkpoints(out), "a failed save left files behind");
    /* The trainer goes on, and the earlier checkpoint still resumes. */
    CHECK(fx_ok(finch_trainer_save_checkpoint(t, ck2, sizeof ck2), "save after the disk has room again") && exists(ck2), "checkpoint-2");
    finch_trainer_close(t);
    t = NULL;
    finch_model_free(m);
    m = fx_llama(rt, 0, 0);
    if (m && fx_ok(finch_trainer_open(m, &c, data, &t), "open")) {
        CHECK(fx_ok(finch_trainer_resume(t, ck1), "resume from checkpoint-1") && finch_trainer_global_step(t) == 1, "resumed at step %lld",
              (long long)finch_trainer_global_step(t));
    }
done:
    finch_trainer_close(t);
    finch_model_free(m);
}

static void nan_loss(finch_runtime *rt, const finch_train_data *data)
{
    char out[1200], ck[1300];
    fx_tmp(out, sizeof out, "fail_nan");
    finch_model *m = fx_llama(rt, 1, 0);
    finch_trainer *t = NULL;
    finch_trainer_config c = base_config(out);
    c.save_steps = 1;
    if (!m || !fx_ok(finch_trainer_open(m, &c, data, &t), "open")) goto done;
    fx_ok(finch_trainer_step(t, NULL), "step 1");
    fx_ok(finch_trainer_save_checkpoint(t, ck, sizeof ck), "checkpoint 1");
    /* Poison one weight: the next loss is NaN. */
    finch_tensor_info ti;
    finch_trainable_info(m, 0, &ti);
    float *w = malloc((size_t)ti.numel * sizeof(float));
    finch_trainable_read(m, 0, w, ti.numel);
    w[0] = NAN;
    finch_trainable_write(m, 0, w, ti.numel);
    /* Weights that are not finite are never saved, not even over the same step's checkpoint. */
    int rc = finch_trainer_save_checkpoint(t, NULL, 0);
    CHECK(rc == FINCH_ERR_NUMERIC && strstr(finch_last_error(), "NaN"), "saving NaN weights: %s '%s'", finch_status_name(rc),
          finch_last_error());
    size_t n = 0;
    float *before = fx_read_all(m, 0, &n);
    rc = finch_trainer_run(t, NULL, NULL);
    float *after = fx_read_all(m, 0, &n);
    CHECK(rc == FINCH_ERR_NUMERIC && strstr(finch_last_error(), "NaN") && strstr(finch_last_error(), "checkpoint-1") &&
              finch_trainer_global_step(t) == 1,
          "NaN loss: %s '%s' at step %lld", finch_status_name(rc), finch_last_error(), (long long)finch_trainer_global_step(t));
    printf("  NaN loss: %s\n", finch_last_error());
    CHECK(!memcmp(before, after, n * sizeof(float)), "the failed step changed the weights");
    snprintf(ck, sizeof ck, "%s/checkpoint-2", out);
    CHECK(!exists(ck) && only_checkpoints(out), "a checkpoint was written after the NaN");
    free(w);
    free(before);
    free(after);
    /* The last good checkpoint resumes into a fresh model. */
    finch_trainer_close(t);
    t = NULL;
    finch_model_free(m);
    m = fx_llama(rt, 1, 0);
    snprintf(ck, sizeof ck, "%s/checkpoint-1", out);
    if (m && fx_ok(finch_trainer_open(m, &c, data, &t), "open") && fx_ok(finch_trainer_resume(t, ck), "resume")) {
        finch_train_progress p;
        CHECK(fx_ok(finch_trainer_step(t, &p), "step after resume") && isfinite(p.loss) && p.step == 2, "step %lld loss %g", (long long)p.step,
              p.loss);
    }
done:
    finch_trainer_close(t);
    finch_model_free(m);
}

static int stop_at_2(const finch_train_progress *p, void *user)
{
    int *events = user;
    events[p->event]++;
    return p->event == FINCH_TRAIN_EVENT_STEP && p->step == 2;
}

static void cancellation(finch_runtime *rt, const finch_train_data *data)
{
    char out[1200], ck[1300];
    fx_tmp(out, sizeof out, "fail_cancel");
    finch_model *m = fx_llama(rt, 0, 0);
    finch_trainer *t = NULL;
    finch_trainer_config c = base_config(out);
    if (!m || !fx_ok(finch_trainer_open(m, &c, data, &t), "open")) goto done;
    /* A cancel request before a micro-batch drops the step. */
    size_t n = 0;
    float *before = fx_read_all(m, 0, &n);
    finch_trainer_cancel(t);
    int rc = finch_trainer_step(t, NULL);
    float *after = fx_read_all(m, 0, &n);
    CHECK(rc == FINCH_ERR_CANCELLED && finch_trainer_global_step(t) == 0 && !memcmp(before, after, n * sizeof(float)),
          "cancelled step: %s, step %lld", finch_status_name(rc), (long long)finch_trainer_global_step(t));
    free(before);
    free(after);
    /* The callback stops the run after step 2; it checkpoints that step. */
    int events[3] = {0, 0, 0};
    rc = finch_trainer_run(t, stop_at_2, events);
    snprintf(ck, sizeof ck, "%s/checkpoint-2", out);
    CHECK(rc == FINCH_ERR_CANCELLED && finch_trainer_global_step(t) == 2 && exists(ck) && events[FINCH_TRAIN_EVENT_STEP] == 2 &&
              events[FINCH_TRAIN_EVENT_CHECKPOINT] == 1 && strstr(finch_last_error(), "checkpoint-2"),
          "cancel from the callback: %s '%s', step %lld, %d step and %d checkpoint events", finch_status_name(rc), finch_last_error(),
          (long long)finch_trainer_global_step(t), events[0], events[2]);
    printf("  cancelled: %s\n", finch_last_error());
    /* The request was consumed: the run continues to the end. */
    CHECK(fx_ok(finch_trainer_run(t, NULL, NULL), "run after a cancel") && finch_trainer_global_step(t) == 4, "step %lld",
          (long long)finch_trainer_global_step(t));
done:
    finch_trainer_close(t);
    finch_model_free(m);
}

static void missing_8bit_entry(finch_runtime *rt, const finch_train_data *data)
{
    /* A 1.0 plugin table (without the 1.1 entry) still passes the registry's check... */
    finch_plugin_api old = *finch_cpu_plugin_api();
    old.abi_minor = 0;
    old.struct_size = offsetof(finch_plugin_api, adamw8bit_step);
    old.adamw8bit_step = NULL;
    CHECK(finch_plugin_api_check(&old, "libfinch-old.so") == FINCH_OK, "a 1.0 table is refused: %s", finch_last_error());
    /* ...and a trainer on it asks for adamw8bit in vain, with a clear message. */
    const finch_plugin_api *saved = rt->backend.api;
    rt->backend.api = &old;
    finch_model *m = fx_llama(rt, 0, 0);
    finch_trainer *t = NULL;
    finch_trainer_config c = base_config(NULL);
    c.optim = FINCH_OPTIM_ADAMW_8BIT;
    int rc = m ? (int)finch_trainer_open(m, &c, data, &t) : -1;
    CHECK(rc == FINCH_ERR_UNSUPPORTED && strstr(finch_last_error(), "adamw8bit") && strstr(finch_last_error(), "1.1"),
          "adamw8bit on a 1.0 backend: %s '%s'", finch_status_name(rc), finch_last_error());
    c.optim = FINCH_OPTIM_ADAMW;
    if (m && fx_ok(finch_trainer_open(m, &c, data, &t), "adamw on a 1.0 backend")) CHECK(fx_ok(finch_trainer_step(t, NULL), "step"), "step");
    finch_trainer_close(t);
    finch_model_free(m);
    rt->backend.api = saved;
}

static void schedules(void)
{
    /* Hugging Face's get_scheduler: warmup 2 of 10 steps, base 1e-3. */
    struct { finch_lr_scheduler s; int64_t step; double want; } v[] = {
        {FINCH_LR_LINEAR, 0, 0.0},         {FINCH_LR_LINEAR, 1, 5e-4},     {FINCH_LR_LINEAR, 2, 1e-3},
        {FINCH_LR_LINEAR, 6, 5e-4},        {FINCH_LR_LINEAR, 9, 1.25e-4},  {FINCH_LR_LINEAR, 10, 0.0},
        {FINCH_LR_CONSTANT, 1, 5e-4},      {FINCH_LR_CONSTANT, 9, 1e-3},   {FINCH_LR_COSINE, 2, 1e-3},
        {FINCH_LR_COSINE, 6, 5e-4},        {FINCH_LR_COSINE, 4, 1e-3 * 0.5 * (1 + cos(M_PI * 0.25))},
        {FINCH_LR_COSINE, 10, 0.0},
    };
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        double got = finch_lr_at(v[i].s, 1e-3, v[i].step, 2, 10);
        CHECK(fabs(got - v[i].want) <= 1e-15, "%s step %lld: lr %.17g, want %.17g", finch_lr_scheduler_name(v[i].s), (long long)v[i].step, got,
              v[i].want);
    }
    CHECK(finch_lr_at(FINCH_LR_LINEAR, 1e-3, 0, 0, 10) == 1e-3, "no warmup: the first step runs at the base LR");
    finch_lr_scheduler s;
    CHECK(finch_lr_scheduler_parse("cosine", &s) == FINCH_OK && s == FINCH_LR_COSINE, "parse cosine");
    CHECK(finch_lr_scheduler_parse("cosine_with_restarts", &s) == FINCH_ERR_INVALID_ARGUMENT && strstr(finch_last_error(), "cosine_with_restarts"),
          "unknown scheduler message '%s'", finch_last_error());
}

int main(void)
{
    finch_runtime *rt = NULL;
    if (!(rt = fx_runtime())) return testing_finish();
    finch_train_data *data = fx_conversations(8, 11, 320);
    schedules();
    unwritable_output(rt, data);
    disk_full(rt, data);
    nan_loss(rt, data);
    cancellation(rt, data);
    missing_8bit_entry(rt, data);
    finch_train_data_free(data);
    finch_runtime_close(rt);
    return testing_finish();
}
