/* The training loop: micro-batches with exact gradient accumulation, the global gradient norm and
 * clipping, the LR schedule, the optimizer step; evaluation; the run with progress, checkpoints and
 * cancellation. */
#include "core/trainer.h"
#include "core/trainer_images.h"
#include "core/error.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

finch_trainer_config finch_trainer_config_default(void)
{
    finch_trainer_config c;
    memset(&c, 0, sizeof c);
    c.num_train_epochs = 1;
    c.per_device_train_batch_size = 2;
    c.gradient_accumulation_steps = 4;
    c.learning_rate = 2e-4;
    c.lr_scheduler_type = FINCH_LR_LINEAR;
    c.weight_decay = 0.01;
    c.adam_beta1 = 0.9;
    c.adam_beta2 = 0.999;
    c.adam_epsilon = 1e-8;
    c.max_grad_norm = 1.0;
    c.optim = FINCH_OPTIM_ADAMW;
    c.seed = 3407;
    c.shuffle = 1;
    c.max_seq_length = 2048;
    c.logging_steps = 1;
    c.lora = finch_lora_config_default();
    c.lora.seed = 0;   /* 0: the adapter is initialised from `seed` */
    return c;
}

finch_dtype finch_train_default_dtype(const finch_runtime *rt)
{
    finch_device_report d;
    if (rt && finch_runtime_active(rt, &d) == FINCH_OK && d.kind != FINCH_DEVICE_CPU) return FINCH_DTYPE_BF16;
    return FINCH_DTYPE_F32;
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int check_config(const finch_trainer_config *c)
{
#define BAD(...) return finch_error(FINCH_ERR_INVALID_ARGUMENT, __VA_ARGS__)
    if (c->per_device_train_batch_size < 1) BAD("per_device_train_batch_size %d must be >= 1", c->per_device_train_batch_size);
    if (c->gradient_accumulation_steps < 1) BAD("gradient_accumulation_steps %d must be >= 1", c->gradient_accumulation_steps);
    if (c->max_steps <= 0 && !(c->num_train_epochs > 0)) BAD("set max_steps > 0 or num_train_epochs > 0");
    if (!(c->learning_rate >= 0) || !(c->embedding_learning_rate >= 0)) BAD("learning rates must be >= 0");
    if ((unsigned)c->lr_scheduler_type > FINCH_LR_COSINE) BAD("unknown lr_scheduler_type %d", (int)c->lr_scheduler_type);
    if (c->warmup_steps < 0 || !(c->warmup_ratio >= 0 && c->warmup_ratio <= 1)) BAD("warmup_steps must be >= 0 and warmup_ratio in [0, 1]");
    if (!(c->weight_decay >= 0)) BAD("weight_decay %g must be >= 0", c->weight_decay);
    if (!(c->adam_beta1 >= 0 && c->adam_beta1 < 1) || !(c->adam_beta2 >= 0 && c->adam_beta2 < 1) || !(c->adam_epsilon > 0))
        BAD("adam_beta1/adam_beta2 must be in [0, 1) and adam_epsilon > 0");
    if (!(c->max_grad_norm >= 0)) BAD("max_grad_norm %g must be >= 0 (0 = off)", c->max_grad_norm);
    if (c->max_seq_length < 2) BAD("max_seq_length %lld must be >= 2", (long long)c->max_seq_length);
    if (!(c->eval_split >= 0 && c->eval_split < 1)) BAD("eval_split %g must be in [0, 1)", c->eval_split);
    if (c->eval_steps < 0 || c->save_steps < 0 || c->save_total_limit < 0 || c->logging_steps < 0)
        BAD("eval_steps, save_steps, save_total_limit and logging_steps must be >= 0");
#undef BAD
    return FINCH_OK;
}

void finch_trainer_close(finch_trainer *t)
{
    if (!t) return;
    trainer_images_close(t);
    for (int k = 0; t->micro && k < t->cfg.gradient_accumulation_steps; k++) trainer_micro_release(&t->micro[k]);
    free(t->micro);
    trainer_plan_free(t);
    finch_optim_free(t->opt);
    free(t->train_idx);
    free(t->eval_idx);
    free(t->output_dir);
    free(t);
}

finch_status finch_trainer_open(finch_model *m, const finch_trainer_config *cfg, const finch_train_data *data,
                                finch_trainer **out)
{
    if (!m || !cfg || !data || !out) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_trainer_open: NULL argument");
    *out = NULL;
    int rc = check_config(cfg);
    if (rc) return rc;
    if (finch_train_data_count(data) == 0) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_trainer_open: the data has no example");
    if (cfg->output_dir && (rc = trainer_check_output_dir(cfg->output_dir))) return rc;
    if (m->n_trainables == 0) {
        finch_lora_config lc = cfg->lora;
        if (!lc.seed) lc.seed = cfg->seed;
        if ((rc = finch_lora_attach(m, &lc))) return rc;
    }
    finch_trainer *t = calloc(1, sizeof *t);
    if (!t) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    t->m = m;
    t->cfg = *cfg;
    t->data = data;
    t->plan_epoch = -1;
    t->last_saved_step = -1;
    if (cfg->output_dir && !(t->output_dir = strdup(cfg->output_dir))) rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    t->cfg.output_dir = t->output_dir;
    t->micro = calloc((size_t)cfg->gradient_accumulation_steps, sizeof *t->micro);
    if (!rc && !t->micro) rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    if (!rc) rc = trainer_split(t);
    if (!rc) rc = trainer_images_open(t);
    if (!rc) rc = trainer_epoch_rows(t, 0, &t->rows_per_epoch);
    if (!rc) {
        finch_optim_config oc = {cfg->optim, cfg->adam_beta1, cfg->adam_beta2, cfg->adam_epsilon, cfg->weight_decay};
        rc = finch_optim_create(m, &oc, &t->opt);
    }
    if (rc) {
        finch_trainer_close(t);
        return rc;
    }
    int64_t B = cfg->per_device_train_batch_size, A = cfg->gradient_accumulation_steps;
    int64_t micro_per_epoch = (t->rows_per_epoch + B - 1) / B;
    if (cfg->max_steps > 0) {
        t->total_steps = cfg->max_steps;
    } else {
        t->total_steps = (int64_t)ceil(cfg->num_train_epochs * (double)micro_per_epoch / (double)A);
        if (t->total_steps < 1) t->total_steps = 1;
    }
    t->warmup_steps = cfg->warmup_steps > 0 ? cfg->warmup_steps : (int64_t)ceil(cfg->warmup_ratio * (double)t->total_steps);
    *out = t;
    return FINCH_OK;
}

void finch_trainer_cancel(finch_trainer *t)
{
    if (t) t->cancel = 1;
}

static const char *last_good(const finch_trainer *t);

finch_status finch_trainer_switch_backend(finch_trainer *t, const char *backend)
{
    if (!t || !backend) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_trainer_switch_backend: NULL argument");
    /* The optimizer is an owner of the model's device state: it moves with the model. */
    int rc = finch_model_move(t->m, backend);
    if (rc) finch_error_prefix(rc, "switching backend after step %lld (last checkpoint: %s): ", (long long)t->step, last_good(t));
    return rc;
}

int64_t finch_trainer_global_step(const finch_trainer *t) { return t ? t->step : 0; }
int64_t finch_trainer_total_steps(const finch_trainer *t) { return t ? t->total_steps : 0; }

static double epoch_of(const finch_trainer *t)
{
    return (double)t->epoch + (t->rows_per_epoch ? (double)t->row / (double)t->rows_per_epoch : 0.0);
}

static void fill_common(const finch_trainer *t, finch_train_progress *p)
{
    memset(p, 0, sizeof *p);
    p->step = t->step;
    p->total_steps = t->total_steps;
    p->epoch = epoch_of(t);
    p->eval_loss = NAN;
    double el = t->run_start > 0 ? now_seconds() - t->run_start : 0;
    p->elapsed_seconds = el;
    p->tokens_per_second = el > 0 ? t->run_tokens / el : 0;
    p->eta_seconds = t->run_steps ? el / (double)t->run_steps * (double)(t->total_steps - t->step) : 0;
    uint64_t free_b = 0, total_b = 0;
    const finch_backend *be = t->m->be;
    if (be->api->memory_info(be->dev, &free_b, &total_b) == FINCH_OK && total_b >= free_b) {
        p->device_memory_used = total_b - free_b;
        p->device_memory_total = total_b;
    }
}

static const char *last_good(const finch_trainer *t)
{
    return t->last_checkpoint[0] ? t->last_checkpoint : "(none written yet)";
}

static int step_once(finch_trainer *t, finch_train_progress *out);

finch_status finch_trainer_step(finch_trainer *t, finch_train_progress *out)
{
    if (!t) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_trainer_step: NULL trainer");
    if (t->step >= t->total_steps)
        return finch_error(FINCH_ERR_STATE, "finch_trainer_step: all %lld steps are done", (long long)t->total_steps);
    /* A step that fails (a device error, a cancel) leaves no trace: the model's pass counter, which
     * seeds LoRA dropout, goes back too, so retrying the step (on this or another backend after
     * finch_trainer_switch_backend) computes what it would have. */
    uint64_t model_step = t->m->step;
    int rc = step_once(t, out);
    if (rc) t->m->step = model_step;
    return rc;
}

static int step_once(finch_trainer *t, finch_train_progress *out)
{
    if (t->run_start == 0) t->run_start = now_seconds();
    int A = t->cfg.gradient_accumulation_steps;
    int64_t epoch = t->epoch, row = t->row, targets = 0, tokens = 0;
    int rc = FINCH_OK;
    for (int k = 0; !rc && k < A; k++) {
        rc = trainer_next_micro(t, &epoch, &row, &t->micro[k]);
        targets += t->micro[k].targets;
        tokens += t->micro[k].tokens;
    }
    if (rc) return rc;
    /* Every micro-batch's gradient is d(its loss sum) / (all trained tokens of the step). */
    finch_step_options so = {0, targets ? 1.0f / (float)targets : 1.0f};
    double loss_sum = 0;
    if ((rc = finch_zero_grads(t->m))) return rc;
    for (int k = 0; k < A; k++) {
        if (t->cancel) {
            t->cancel = 0;
            return finch_error(FINCH_ERR_CANCELLED, "cancelled during step %lld; the state is that of step %lld", (long long)t->step + 1,
                               (long long)t->step);
        }
        finch_step_result r;
        if ((rc = finch_forward_backward(t->m, &t->micro[k].batch, &so, &r)))
            return finch_error_prefix(rc, "step %lld, micro-batch %d: ", (long long)t->step + 1, k + 1);
        if (r.token_count != t->micro[k].targets)
            return finch_error(FINCH_ERR_STATE, "step %lld: the model counted %lld trained tokens, the trainer %lld", (long long)t->step + 1,
                               (long long)r.token_count, (long long)t->micro[k].targets);
        loss_sum += r.loss_sum;
    }
    double loss = targets ? loss_sum / (double)targets : 0.0, norm = 0;
    if (!isfinite(loss))
        return finch_error(FINCH_ERR_NUMERIC, "step %lld: the loss is %s; the weights were not updated. Last good checkpoint: %s "
                           "(resume from it with a lower learning rate)", (long long)t->step + 1, isnan(loss) ? "NaN" : "infinite", last_good(t));
    if ((rc = finch_optim_grad_norm(t->opt, &norm))) return rc;
    if (!isfinite(norm))
        return finch_error(FINCH_ERR_NUMERIC, "step %lld: the gradient norm is %s (loss %.4g); the weights were not updated. Last good "
                           "checkpoint: %s (resume from it with a lower learning rate)", (long long)t->step + 1, isnan(norm) ? "NaN" : "infinite",
                           loss, last_good(t));
    double clip = 1.0;
    if (t->cfg.max_grad_norm > 0) {
        clip = t->cfg.max_grad_norm / (norm + 1e-6);
        if (clip > 1.0) clip = 1.0;
    }
    const finch_trainer_config *c = &t->cfg;
    double lr = finch_lr_at(c->lr_scheduler_type, c->learning_rate, t->step, t->warmup_steps, t->total_steps);
    double elr = finch_lr_at(c->lr_scheduler_type, c->embedding_learning_rate > 0 ? c->embedding_learning_rate : c->learning_rate, t->step,
                             t->warmup_steps, t->total_steps);
    if ((rc = finch_optim_step(t->opt, t->step + 1, lr, elr, (float)clip))) return rc;
    t->step++;
    t->epoch = epoch;
    t->row = row;
    t->run_steps++;
    t->run_tokens += (double)tokens;
    if (out) {
        fill_common(t, out);
        out->event = FINCH_TRAIN_EVENT_STEP;
        out->loss = loss;
        out->learning_rate = lr;
        out->grad_norm = norm;
        out->tokens = targets;
    }
    return FINCH_OK;
}

finch_status finch_trainer_evaluate(finch_trainer *t, double *eval_loss)
{
    if (!t || !eval_loss) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_trainer_evaluate: NULL argument");
    if (!t->n_eval) return finch_error(FINCH_ERR_STATE, "finch_trainer_evaluate: no eval split (set eval_split > 0)");
    size_t B = (size_t)t->cfg.per_device_train_batch_size;
    double sum = 0;
    int64_t count = 0;
    trainer_micro mb;
    memset(&mb, 0, sizeof mb);
    int rc = FINCH_OK;
    for (size_t i = 0; !rc && i < t->n_eval; i += B) {
        size_t n = t->n_eval - i < B ? t->n_eval - i : B;
        finch_step_result r;
        finch_step_options so = {0, 0.0f};
        if (!(rc = trainer_eval_micro(t, i, n, &mb)) && !(rc = finch_forward(t->m, &mb.batch, &so, &r))) {
            sum += r.loss_sum;
            count += r.token_count;
        }
    }
    trainer_micro_release(&mb);
    if (rc) return finch_error_prefix(rc, "evaluation: ");
    *eval_loss = count ? sum / (double)count : 0.0;
    return FINCH_OK;
}

static int notify(finch_trainer *t, finch_train_callback cb, void *user, const finch_train_progress *p)
{
    if (cb && cb(p, user)) t->cancel = 1;
    return FINCH_OK;
}

static int eval_and_notify(finch_trainer *t, finch_train_callback cb, void *user)
{
    finch_train_progress p;
    double el;
    int rc = finch_trainer_evaluate(t, &el);
    if (rc) return rc;
    fill_common(t, &p);
    p.event = FINCH_TRAIN_EVENT_EVAL;
    p.eval_loss = el;
    return notify(t, cb, user, &p);
}

static int save_and_notify(finch_trainer *t, finch_train_callback cb, void *user)
{
    char path[4096];
    int rc = finch_trainer_save_checkpoint(t, path, sizeof path);
    if (rc) return rc;
    finch_train_progress p;
    fill_common(t, &p);
    p.event = FINCH_TRAIN_EVENT_CHECKPOINT;
    p.checkpoint = path;
    return notify(t, cb, user, &p);
}

finch_status finch_trainer_run(finch_trainer *t, finch_train_callback cb, void *user)
{
    if (!t) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_trainer_run: NULL trainer");
    const finch_trainer_config *c = &t->cfg;
    int rc = FINCH_OK, cancelled = 0;
    while (!rc && t->step < t->total_steps) {
        if (t->cancel) {
            cancelled = 1;
            break;
        }
        finch_train_progress p;
        rc = finch_trainer_step(t, &p);
        if (rc == FINCH_ERR_CANCELLED) {
            cancelled = 1;
            rc = FINCH_OK;
            break;
        }
        if (rc) return rc;
        int last = t->step == t->total_steps;
        if (c->logging_steps == 0 || t->step % c->logging_steps == 0 || last) notify(t, cb, user, &p);
        if (t->n_eval && ((c->eval_steps > 0 && t->step % c->eval_steps == 0) || last)) rc = eval_and_notify(t, cb, user);
        if (!rc && t->output_dir && c->save_steps > 0 && (t->step % c->save_steps == 0 || last))
            rc = save_and_notify(t, cb, user);
    }
    if (rc) return rc;
    if (!cancelled) return FINCH_OK;
    t->cancel = 0;
    if (t->output_dir && t->step > 0 && t->last_saved_step != t->step && (rc = save_and_notify(t, cb, user))) return rc;
    t->cancel = 0;
    return finch_error(FINCH_ERR_CANCELLED, "training stopped after step %lld of %lld%s%s", (long long)t->step, (long long)t->total_steps,
                       t->last_checkpoint[0] ? "; last checkpoint: " : "", t->last_checkpoint);
}
