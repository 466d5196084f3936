/* Moving a model between backends mid-training (finch_model_move / finch_trainer_switch_backend),
 * on the CPU backend and a wrapper of it that counts device memory and fails on command
 * (tests/fault_backend.h):
 *  - 10 steps, switch, 10 steps gives the losses of 20 steps (LoRA with dropout, AdamW; and full
 *    fine-tuning with 8-bit AdamW), and every byte on the old device is freed by the switch;
 *  - out of memory half-way through a move: an error, nothing left on the target, the model trains
 *    on as if nothing happened;
 *  - a target whose kernels do not build: the step fails there, the model moves back and trains on;
 *  - a device lost mid-step: the step and the move fail with a "state is lost" error naming the last
 *    checkpoint; reloading and resuming from it on the CPU continues the run;
 *  - an adamw8bit trainer refuses a target without adamw8bit_step; a 4-bit (NF4) model moves and
 *    computes the same loss; a generation session forgets its sequences and works on the new device. */
#include "core/model.h"
#include "core/runtime.h"
#include "finch/generate.h"
#include "tests/fault_backend.h"
#include "tests/train_fixtures.h"

#include <math.h>

#define STEPS 20
#define SWITCH 10

static finch_trainer_config config(finch_optimizer optim, const char *out)
{
    finch_trainer_config c = finch_trainer_config_default();
    c.output_dir = out;
    c.max_steps = STEPS;
    c.per_device_train_batch_size = 2;
    c.gradient_accumulation_steps = 2;
    c.learning_rate = 3e-3;
    c.lr_scheduler_type = FINCH_LR_COSINE;
    c.warmup_steps = 2;
    c.max_grad_norm = 0.5;
    c.optim = optim;
    c.seed = 7;
    c.lora.r = 4;
    c.lora.alpha = 8;
    c.lora.dropout = 0.1f;
    return c;
}

typedef struct run {
    finch_model *m;
    finch_trainer *t;
} run;

static int run_open(finch_runtime *rt, const finch_train_data *data, int full, finch_optimizer optim, const char *out, run *r)
{
    finch_trainer_config c = config(optim, out);
    r->t = NULL;
    r->m = fx_llama(rt, 0, full);
    return r->m && fx_ok(finch_trainer_open(r->m, &c, data, &r->t), "finch_trainer_open");
}

static void run_close(run *r)
{
    finch_trainer_close(r->t);
    finch_model_free(r->m);
    r->t = NULL;
    r->m = NULL;
}

static int steps(run *r, int64_t until, double *losses)
{
    while (finch_trainer_global_step(r->t) < until) {
        finch_train_progress p;
        int64_t k = finch_trainer_global_step(r->t);
        if (!fx_ok(finch_trainer_step(r->t, &p), "finch_trainer_step")) return 0;
        losses[k] = p.loss;
    }
    return 1;
}

static void same_losses(const char *what, const double *got, const double *ref, int from, int to, double tol)
{
    double worst = 0;
    for (int k = from; k < to; k++) {
        double e = fabs(got[k] - ref[k]) / fmax(fabs(ref[k]), 1e-12);
        if (e > worst) worst = e;
    }
    CHECK(worst <= tol, "%s: losses of steps %d..%d differ from the reference by %.3g (relative; tolerance %.1g)", what, from + 1,
          to, worst, tol);
}

/* The model's own memory and nothing else is on the fault device right after a move there. */
static void check_on_fault(const char *what, const finch_model *m)
{
    finch_device_report d;
    fx_ok(finch_model_device(m, &d), "finch_model_device");
    CHECK(!strcmp(d.backend, "fault"), "%s: the model reports backend '%s', not fault", what, d.backend);
    CHECK(fault_live_bytes == (long long)finch_model_device_bytes(m), "%s: %lld bytes live on the device, the model's ledger has %llu",
          what, fault_live_bytes, (unsigned long long)finch_model_device_bytes(m));
}

static int move_to_fault(finch_model *m)
{
    finch_backend fb;
    if (!fx_ok(fault_backend_open(finch_cpu_plugin_api(), &fb), "open the fault device")) return 0;
    int rc = finch_model_move_backend(m, &fb, 1);
    if (rc) finch_backend_close(&fb);
    return rc == FINCH_OK;
}

/* 10 steps on cpu, 5 on the fault wrapper, 5 on cpu: the reference losses; the wrapper ends empty. */
static void switch_case(finch_runtime *rt, const finch_train_data *data, int full, finch_optimizer optim, const char *name)
{
    double ref[STEPS], got[STEPS];
    run r;
    if (!run_open(rt, data, full, optim, NULL, &r) || !steps(&r, STEPS, ref)) {
        run_close(&r);
        return;
    }
    run_close(&r);
    if (!run_open(rt, data, full, optim, NULL, &r) || !steps(&r, SWITCH, got)) {
        run_close(&r);
        return;
    }
    int good = fx_ok(move_to_fault(r.m) ? FINCH_OK : FINCH_ERR_DEVICE, "move to the fault device");
    if (good) check_on_fault(name, r.m);
    good = good && steps(&r, SWITCH + 5, got);
    good = good && fx_ok(finch_trainer_switch_backend(r.t, "cpu"), "finch_trainer_switch_backend(cpu)");
    CHECK(fault_live_bytes == 0 && fault_live_buffers == 0, "%s: after moving away, %lld bytes in %lld buffers are left on the old device",
          name, fault_live_bytes, fault_live_buffers);
    good = good && steps(&r, STEPS, got);
    if (good) same_losses(name, got, ref, 0, STEPS, 1e-6);   /* the same CPU kernels: the same numbers */
    run_close(&r);
}

static void failures_case(finch_runtime *rt, const finch_train_data *data)
{
    double ref[STEPS], got[STEPS];
    char out[1200], ck[1400];
    fx_tmp(out, sizeof out, "backend_switch");
    run r;
    if (!run_open(rt, data, 0, FINCH_OPTIM_ADAMW, NULL, &r) || !steps(&r, STEPS, ref)) {
        run_close(&r);
        return;
    }
    run_close(&r);
    if (!run_open(rt, data, 0, FINCH_OPTIM_ADAMW, out, &r) || !steps(&r, 4, got)) {
        run_close(&r);
        return;
    }

    /* Out of memory half-way through the move: nothing moved, nothing left behind. */
    finch_backend fb;
    fx_ok(fault_backend_open(finch_cpu_plugin_api(), &fb), "open the fault device");
    fault_alloc_budget = r.m->mem.n / 2;
    int rc = finch_model_move_backend(r.m, &fb, 1);
    CHECK(rc == FINCH_ERR_OUT_OF_MEMORY, "out of memory mid-move: %s (%s)", finch_status_name(rc), finch_last_error());
    CHECK(strstr(finch_last_error(), "stays on cpu:0") != NULL, "the message says where the model is: %s", finch_last_error());
    CHECK(fault_live_bytes == 0, "out of memory mid-move: %lld bytes left on the target", fault_live_bytes);
    CHECK(r.m->be->api == rt->backend.api, "out of memory mid-move: the model left the cpu");
    finch_backend_close(&fb);
    if (!steps(&r, 6, got)) goto done;

    /* A target whose kernels do not build: the step fails there; back on the cpu it runs as before. */
    if (!move_to_fault(r.m)) goto done;
    fault_no_kernels = 1;
    finch_train_progress p;
    rc = finch_trainer_step(r.t, &p);
    CHECK(rc == FINCH_ERR_DEVICE && strstr(finch_last_error(), "clBuildProgram"), "kernels that do not build: %s (%s)",
          finch_status_name(rc), finch_last_error());
    if (!fx_ok(finch_trainer_switch_backend(r.t, "cpu"), "move back after the kernel failure")) goto done;
    CHECK(fault_live_bytes == 0, "kernel failure: %lld bytes left on the old device", fault_live_bytes);
    if (!steps(&r, 8, got)) goto done;
    same_losses("after out-of-memory and kernel failures", got, ref, 0, 8, 1e-6);
    if (!fx_ok(finch_trainer_save_checkpoint(r.t, ck, sizeof ck), "save_checkpoint")) goto done;

    /* A device lost mid-step: the step fails, the move says the state is lost and names the checkpoint. */
    if (!move_to_fault(r.m) || !steps(&r, 9, got)) goto done;
    fault_lost = 1;
    rc = finch_trainer_step(r.t, &p);
    CHECK(rc == FINCH_ERR_DEVICE, "device lost mid-step: %s (%s)", finch_status_name(rc), finch_last_error());
    rc = finch_trainer_switch_backend(r.t, "cpu");
    CHECK(rc == FINCH_ERR_DEVICE && strstr(finch_last_error(), "is lost") && strstr(finch_last_error(), ck),
          "moving off a lost device: %s (%s)", finch_status_name(rc), finch_last_error());
    run_close(&r);   /* freeing a model on a lost device works */
    fault_lost = 0;
    CHECK(fault_live_bytes == 0, "device lost: %lld bytes left after freeing the model", fault_live_bytes);
    /* What the error tells the user to do: load again and resume from the checkpoint, here on the cpu. */
    if (!run_open(rt, data, 0, FINCH_OPTIM_ADAMW, out, &r)) goto done;
    if (!fx_ok(finch_trainer_resume(r.t, ck), "resume after the lost device") || !steps(&r, STEPS, got)) goto done;
    same_losses("recovered from a lost device", got, ref, 8, STEPS, 1e-6);
done:
    run_close(&r);
}

/* adamw8bit refuses a target without adamw8bit_step; the trainer goes on where it is. */
static void refusal_case(finch_runtime *rt, const finch_train_data *data)
{
    run r;
    double got[STEPS];
    if (!run_open(rt, data, 1, FINCH_OPTIM_ADAMW_8BIT, NULL, &r) || !steps(&r, 1, got)) {
        run_close(&r);
        return;
    }
    finch_backend fb;
    fx_ok(fault_backend_open(finch_cpu_plugin_api(), &fb), "open the fault device");
    fault_table.adamw8bit_step = NULL;
    int rc = finch_model_move_backend(r.m, &fb, 1);
    CHECK(rc == FINCH_ERR_UNSUPPORTED && strstr(finch_last_error(), "adamw8bit"), "adamw8bit onto a plugin without it: %s (%s)",
          finch_status_name(rc), finch_last_error());
    CHECK(fault_live_bytes == 0, "refused move: %lld bytes on the target", fault_live_bytes);
    finch_backend_close(&fb);
    steps(&r, 2, got);
    rc = finch_model_move(r.m, "nosuch");
    CHECK(rc == FINCH_ERR_INVALID_ARGUMENT && strstr(finch_last_error(), "stays on cpu:0"), "an unknown backend: %s (%s)",
          finch_status_name(rc), finch_last_error());
    CHECK(finch_model_move(r.m, "cpu") == FINCH_OK, "moving where the model is does nothing: %s", finch_last_error());
    steps(&r, 3, got);
    run_close(&r);
}

static double forward_loss(finch_model *m, const int32_t *ids, int64_t T)
{
    finch_batch b = {.batch = 1, .seq_len = T, .input_ids = ids};
    finch_step_result res;
    if (!fx_ok(finch_forward(m, &b, NULL, &res), "finch_forward")) return NAN;
    return res.loss;
}

/* A 4-bit model with an adapter and a generation session: the loss and the logits are those of
 * before the move; the session forgot its sequence. */
static void quant_session_case(finch_runtime *rt)
{
    char dir[1200];
    fx_golden_dir(dir, sizeof dir, "llama", "model");
    finch_load_options o = finch_load_options_default();
    o.load_in_4bit = 1;
    finch_model *m = NULL;
    if (!fx_ok(finch_model_load(rt, dir, &o, &m), "load in 4 bits")) return;
    finch_lora_config lc = finch_lora_config_default();
    lc.r = 4;
    fx_ok(finch_lora_attach(m, &lc), "finch_lora_attach");
    finch_model_info info;
    finch_model_info_get(m, &info);
    int32_t ids[12];
    for (int i = 0; i < 12; i++) ids[i] = (int32_t)((i * 37 + 5) % info.vocab_size);
    finch_session *s = NULL;
    fx_ok(finch_session_create(m, 1, &s), "finch_session_create");
    float *a = malloc((size_t)info.vocab_size * sizeof(float)), *b = malloc((size_t)info.vocab_size * sizeof(float));
    const int32_t *toks[1] = {ids};
    int seq = 0;
    int64_t n = 12;
    double before = forward_loss(m, ids, 12);
    fx_ok(finch_session_append(s, 1, &seq, toks, &n, a), "finch_session_append");
    if (move_to_fault(m)) {
        check_on_fault("4-bit model", m);
        CHECK(finch_session_length(s, 0) == 0, "the session still holds %lld tokens after the move", (long long)finch_session_length(s, 0));
        double after = forward_loss(m, ids, 12);
        CHECK(after == before, "4-bit model: loss %.9g after the move, %.9g before", after, before);
        fx_ok(finch_session_append(s, 1, &seq, toks, &n, b), "finch_session_append after the move");
        CHECK(testing_rel_err(b, a, (size_t)info.vocab_size) == 0, "session logits differ after the move");
        CHECK(fx_ok(finch_model_move(m, "cpu"), "back to cpu") && fault_live_bytes == 0, "4-bit model: %lld bytes left on the old device",
              fault_live_bytes);
    }
    free(a);
    free(b);
    finch_session_free(s);
    finch_model_free(m);
}

int main(void)
{
    finch_runtime *rt = fx_runtime();
    if (!rt) return testing_finish();
    finch_train_data *data = fx_conversations(24, 3, 200);
    switch_case(rt, data, 0, FINCH_OPTIM_ADAMW, "LoRA, adamw");
    switch_case(rt, data, 1, FINCH_OPTIM_ADAMW_8BIT, "full fine-tuning, adamw8bit");
    failures_case(rt, data);
    refusal_case(rt, data);
    quant_session_case(rt);
    finch_train_data_free(data);
    finch_runtime_close(rt);
    return testing_finish();
}
