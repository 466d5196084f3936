/* finch train: fine-tune a model on a JSONL (or pre-tokenized) dataset; progress, metrics.jsonl,
 * loss.svg, checkpoints (every --save-steps and on Ctrl-C) and the final PEFT adapter in --out. */
#include "finch/multimodal.h"
#include "finch/train.h"
#include "samples/finch/commands.h"
#include "samples/finch/train_options.h"
#include "samples/finch/train_report.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static finch_trainer *volatile active_trainer;
static volatile sig_atomic_t interrupted;

/* First Ctrl-C: stop at the next micro-batch and checkpoint. Second: the default action. */
static void on_sigint(int sig)
{
    interrupted = 1;
    if (active_trainer) finch_trainer_cancel(active_trainer);
    signal(sig, SIG_DFL);
}

/* What the progress callback works with: the report, and the backend switches still to come. */
typedef struct progress_ctx {
    train_report *rep;
    const train_options *o;
    int next_switch;
    int64_t logging_steps;     /* the user's: the trainer reports every step when switches are planned */
    int switch_failed;
} progress_ctx;

/* Moves the training to the next planned backends whose step has come. */
static int switch_due(progress_ctx *c, finch_trainer *t, int64_t step)
{
    for (; c->next_switch < c->o->n_switches && c->o->switch_step[c->next_switch] <= step; c->next_switch++) {
        const char *name = c->o->switch_backend[c->next_switch];
        train_report_end_line(c->rep);
        if (finch_trainer_switch_backend(t, name) != FINCH_OK) {
            fprintf(stderr, "finch train: %s\n", finch_last_error());
            c->switch_failed = 1;
            return 1;
        }
        printf("finch train: after step %lld, switched to backend %s\n", (long long)step, name);
        fflush(stdout);
    }
    return 0;
}

static int on_progress(const finch_train_progress *p, void *user)
{
    progress_ctx *c = user;
    int64_t every = c->logging_steps;
    if (p->event != FINCH_TRAIN_EVENT_STEP || every <= 1 || p->step % every == 0 || p->step == p->total_steps)
        train_report_event(c->rep, p);
    if (p->event == FINCH_TRAIN_EVENT_STEP && active_trainer && switch_due(c, active_trainer, p->step)) return 1;
    return interrupted;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

static int load_data(const train_options *o, const finch_model *m, finch_trainer_config *tc, finch_train_data **out)
{
    if (ends_with(o->data, ".safetensors")) return finch_train_data_from_safetensors(o->data, out);
    finch_tokenizer *tok = NULL;
    finch_chat_template *tmpl = NULL;
    int rc = finch_tokenizer_load(o->model, &tok);
    if (rc) return rc;
    if (o->chat_template) rc = finch_chat_template_builtin(o->chat_template, &tmpl);
    else if (finch_chat_template_from_tokenizer(tok, &tmpl) != FINCH_OK) tmpl = NULL;  /* fine for text data */
    finch_tokenizer_config tcfg;
    if (!rc && finch_tokenizer_config_get(tok, &tcfg) == FINCH_OK)
        tc->pad_token_id = tcfg.pad_id >= 0 ? tcfg.pad_id : tcfg.eos_id >= 0 ? tcfg.eos_id : 0;
    finch_model_info info;
    if (!rc) rc = finch_model_info_get(m, &info);
    finch_image_data_options io = finch_image_data_options_default();
    if (!rc && info.image_token_id >= 0 && tmpl) {  /* a vision-language model: image parts in the messages */
        if (!(rc = finch_cli_image_config(o->model, NULL, &io.image)))
            rc = finch_train_data_from_jsonl_images(o->data, tok, tmpl, NULL, NULL, &io, out);
    } else if (!rc) {
        rc = finch_train_data_from_jsonl(o->data, tok, tmpl, NULL, NULL, out);
    }
    finch_chat_template_free(tmpl);
    finch_tokenizer_free(tok);
    return rc;
}

static int run(train_options *o)
{
    finch_runtime *rt = NULL;
    finch_model *m = NULL;
    finch_train_data *data = NULL;
    finch_trainer *t = NULL;
    train_report rep;
    memset(&rep, 0, sizeof rep);
    char resume[4200] = "";
    int status = 1;

    finch_runtime_options ro = {o->backend, NULL, o->threads};
    int rc = finch_runtime_open_ex(&ro, &rt);
    finch_load_options lo = finch_load_options_default();
    if (!rc) {
        lo.compute_dtype = o->dtype ? (strcmp(o->dtype, "bf16") ? FINCH_DTYPE_F32 : FINCH_DTYPE_BF16) : finch_train_default_dtype(rt);
        lo.full_finetune = o->full_finetune;
        lo.gradient_checkpointing = o->gradient_checkpointing;
        lo.offload_activations = o->offload_activations;
        lo.load_in_4bit = o->load_in_4bit;
        lo.double_quant = o->double_quant;
        rc = finch_model_load(rt, o->model, &lo, &m);
    }
    if (!rc && o->adapter) rc = finch_lora_load(m, o->adapter);
    if (!rc) rc = load_data(o, m, &o->tc, &data);
    progress_ctx pc = {&rep, o, 0, o->tc.logging_steps, 0};
    if (o->n_switches) o->tc.logging_steps = 1;   /* every step reaches the callback, which switches */
    if (!rc) rc = finch_trainer_open(m, &o->tc, data, &t);
    if (!rc && o->resume) {
        if (!strcmp(o->resume, "latest")) rc = finch_trainer_latest_checkpoint(o->out, resume, sizeof resume);
        else snprintf(resume, sizeof resume, "%s", o->resume);
        if (!rc) rc = finch_trainer_resume(t, resume);
    }
    if (rc) {
        fprintf(stderr, "finch train: %s\n", finch_last_error());
        if (strstr(finch_last_error(), "no chat template")) fprintf(stderr, "  pass --template NAME (chatml, llama-3, ...)\n");
        goto done;
    }
    if (train_report_open(&rep, o->out, finch_trainer_global_step(t))) goto done;
    finch_device_report dev;
    finch_model_info info;
    finch_runtime_active(rt, &dev);
    finch_model_info_get(m, &info);
    printf("finch train: %s on %s:%d (%s), %s, %lld trainable of %lld parameters, %zu examples, %lld steps%s%s\n", info.model_type, dev.backend,
           dev.index, dev.name, finch_dtype_name(info.compute_dtype), (long long)info.n_trainable, (long long)info.n_params,
           finch_train_data_count(data), (long long)finch_trainer_total_steps(t), resume[0] ? ", resumed from " : "", resume);
    fflush(stdout);

    active_trainer = t;
    void (*prev)(int) = signal(SIGINT, on_sigint);
    rc = switch_due(&pc, t, finch_trainer_global_step(t)) ? FINCH_ERR_DEVICE
         : interrupted                                    ? FINCH_ERR_CANCELLED
                                                          : finch_trainer_run(t, on_progress, &pc);
    signal(SIGINT, prev);
    active_trainer = NULL;
    train_report_end_line(&rep);
    train_report_svg(&rep);
    if (pc.switch_failed) {
        fprintf(stderr, "finch train: stopped: the backend switch failed%s\n",
                rc == FINCH_ERR_CANCELLED ? " (a checkpoint of the last step is in --out)" : "");
        goto done;
    }
    if (rc == FINCH_ERR_CANCELLED) {
        fprintf(stderr, "finch train: interrupted: %s\n  continue with the same command and --resume latest\n", finch_last_error());
        status = 130;
        goto done;
    }
    if (rc) {
        fprintf(stderr, "finch train: %s\n", finch_last_error());
        goto done;
    }
    /* The result: the PEFT adapter in --out; full fine-tuning keeps its weights in a final checkpoint. */
    char path[4300];
    if (lo.full_finetune) {
        rc = finch_trainer_save_checkpoint(t, path, sizeof path);
    } else {
        snprintf(path, sizeof path, "%s", o->out);
        rc = finch_lora_save(m, o->out);
    }
    if (rc) {
        fprintf(stderr, "finch train: %s\n", finch_last_error());
        goto done;
    }
    printf("finch train: done, %lld steps; %s in %s; metrics %s; loss curve %s\n", (long long)finch_trainer_global_step(t),
           lo.full_finetune ? "weights" : "adapter", path, rep.metrics_path, rep.svg_path);
    status = 0;
done:
    train_report_close(&rep);
    finch_trainer_close(t);
    finch_train_data_free(data);
    finch_model_free(m);
    finch_runtime_close(rt);
    return status;
}

int finch_cmd_train(int argc, char **argv)
{
    train_options o;
    int rc = train_options_parse(argc, argv, &o);
    if (!rc) rc = run(&o);
    train_options_free(&o);
    return rc < 0 ? 0 : rc;
}
