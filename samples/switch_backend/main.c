/* switch_backend: a host application that fine-tunes on one backend, moves the live training session
 * to another between steps, and carries on — the weights, adapter and optimizer state move; the step,
 * data position and schedule continue.
 *
 *     switch_backend MODEL_DIR DATA.jsonl [FIRST SECOND ...]     (default: auto then cpu)
 *
 * Trains 4 steps on each backend in turn (e.g. "cuda opencl cpu") and prints each step's loss and
 * where it ran. A switch that fails leaves the training where it was: the program says so and goes on
 * there. */
#include "finch/train.h"

#include <stdio.h>
#include <string.h>

#define STEPS_PER_BACKEND 4

static int fail(const char *what)
{
    fprintf(stderr, "switch_backend: %s: %s\n", what, finch_last_error());
    return 1;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: switch_backend MODEL_DIR DATA.jsonl [BACKEND ...]   (default: auto cpu)\n");
        return 2;
    }
    const char *defaults[] = {"auto", "cpu"};
    const char *const *backends = argc > 3 ? (const char *const *)argv + 3 : defaults;
    int n_backends = argc > 3 ? argc - 3 : 2;

    finch_runtime *rt = NULL;
    finch_model *m = NULL;
    finch_tokenizer *tok = NULL;
    finch_chat_template *tmpl = NULL;
    finch_train_data *data = NULL;
    finch_trainer *t = NULL;
    int status = 1;
    if (finch_runtime_open(backends[0], &rt)) return fail("opening the first backend");
    finch_load_options lo = finch_load_options_default();
    lo.compute_dtype = FINCH_DTYPE_F32;   /* one dtype everywhere: every backend computes in f32 */
    if (finch_model_load(rt, argv[1], &lo, &m)) { fail("loading the model"); goto done; }
    if (finch_tokenizer_load(argv[1], &tok)) { fail("loading the tokenizer"); goto done; }
    if (finch_chat_template_from_tokenizer(tok, &tmpl)) tmpl = NULL;   /* plain text data needs none */
    if (finch_train_data_from_jsonl(argv[2], tok, tmpl, NULL, NULL, &data)) { fail("reading the data"); goto done; }

    finch_trainer_config c = finch_trainer_config_default();
    c.max_steps = STEPS_PER_BACKEND * n_backends;
    c.learning_rate = 1e-3;
    c.per_device_train_batch_size = 2;
    c.gradient_accumulation_steps = 1;
    c.lora.r = 8;
    if (finch_trainer_open(m, &c, data, &t)) { fail("opening the trainer"); goto done; }

    for (int b = 0; b < n_backends; b++) {
        if (b > 0 && finch_trainer_switch_backend(t, backends[b]) != FINCH_OK)
            fprintf(stderr, "switch_backend: staying where we are: %s\n", finch_last_error());
        finch_device_report where;
        finch_model_device(m, &where);
        for (int k = 0; k < STEPS_PER_BACKEND; k++) {
            finch_train_progress p;
            if (finch_trainer_step(t, &p)) { fail("training"); goto done; }
            printf("step %2lld  loss %.6f  on %s:%d (%s), %.1f MiB of device memory in use\n", (long long)p.step, p.loss, where.backend,
                   where.index, where.name, (double)p.device_memory_used / (1 << 20));
        }
    }
    status = 0;
done:
    finch_trainer_close(t);
    finch_train_data_free(data);
    finch_chat_template_free(tmpl);
    finch_tokenizer_free(tok);
    finch_model_free(m);
    finch_runtime_close(rt);
    return status;
}
