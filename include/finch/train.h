/* finch — training: data, the optimizer loop, learning-rate schedules, checkpoints and progress.
 *
 *     finch_train_data *data;  finch_train_data_from_jsonl("chats.jsonl", tok, tmpl, NULL, &data);
 *     finch_trainer_config c = finch_trainer_config_default();
 *     c.output_dir = "out";  c.max_steps = 100;
 *     finch_trainer *t;  finch_trainer_open(model, &c, data, &t);   (attaches c.lora if no adapter)
 *     finch_trainer_run(t, on_progress, NULL);                      (checkpoints to out/checkpoint-N)
 *     finch_lora_save(model, "out/adapter");
 *     finch_trainer_close(t);  finch_train_data_free(data);
 *
 * One optimizer step takes gradient_accumulation_steps micro-batches of per_device_train_batch_size
 * rows. The loss of a step is the sum of token losses over all its micro-batches divided by the
 * number of trained tokens in all of them (not a mean of per-micro-batch means), so 1 x 8, 2 x 4
 * and 8 x 1 give the same update. Checkpoints hold the trainable weights, the optimizer state, the
 * step, the data position and the model's step counter (LoRA dropout seeds): resuming continues
 * exactly as an uninterrupted run would (bit for bit on the CPU backend in f32).
 *
 * Names follow Hugging Face TrainingArguments where one exists.
 */
#ifndef FINCH_TRAIN_H
#define FINCH_TRAIN_H

#include "finch/data.h"
#include "finch/finch.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- training data: tokenized examples in memory --------------------------------------------- */

typedef struct finch_train_data finch_train_data;

/* A JSONL dataset (messages / ShareGPT / Alpaca / text, see data.h) rendered with tmpl (NULL for text
 * files) and tokenized. dataset and labels may be NULL (defaults). Conversations the template cannot
 * render, or that have no trained token, follow dataset->bad_lines. */
finch_status finch_train_data_from_jsonl(const char *path, const finch_tokenizer *tok, const finch_chat_template *tmpl,
                                         const finch_dataset_options *dataset, const finch_label_options *labels,
                                         finch_train_data **out);
/* Pre-tokenized rows: a safetensors file with integer input_ids [N, T] and optionally labels [N, T]
 * (-100 = ignored; without labels every token is trained). Each row is one example of length T. */
finch_status finch_train_data_from_safetensors(const char *path, finch_train_data **out);
/* Copies n examples. */
finch_status finch_train_data_from_examples(const finch_example *examples, size_t n, finch_train_data **out);
size_t finch_train_data_count(const finch_train_data *d);
/* Example i (valid until the data is freed). */
const finch_example *finch_train_data_example(const finch_train_data *d, size_t i);
void finch_train_data_free(finch_train_data *d);

/* ---- configuration ------------------------------------------------------------------------------ */

typedef enum finch_lr_scheduler {
    FINCH_LR_LINEAR = 0,      /* warmup, then linear decay to 0 at the last step */
    FINCH_LR_CONSTANT = 1,    /* warmup, then constant */
    FINCH_LR_COSINE = 2       /* warmup, then half a cosine down to 0 */
} finch_lr_scheduler;

typedef enum finch_optimizer {
    FINCH_OPTIM_ADAMW = 0,      /* f32 moments (and f32 master weights under bf16 compute) */
    FINCH_OPTIM_ADAMW_8BIT = 1  /* bitsandbytes-style blockwise 8-bit moments (tensors >= 4096 elements) */
} finch_optimizer;

typedef struct finch_trainer_config {
    const char *output_dir;          /* checkpoints: output_dir/checkpoint-<step>; NULL: no checkpoints */
    int64_t max_steps;               /* > 0: the number of optimizer steps, whatever num_train_epochs says */
    double num_train_epochs;         /* 1 */
    int per_device_train_batch_size; /* rows per micro-batch: 2 */
    int gradient_accumulation_steps; /* micro-batches per optimizer step: 4 */
    double learning_rate;            /* 2e-4 */
    double embedding_learning_rate;  /* full fine-tuning: LR of embed_tokens and lm_head; 0 = learning_rate */
    finch_lr_scheduler lr_scheduler_type; /* linear */
    int64_t warmup_steps;            /* 0; when > 0 it wins over warmup_ratio */
    double warmup_ratio;             /* 0 */
    double weight_decay;             /* 0.01; never applied to biases and norm weights */
    double adam_beta1, adam_beta2, adam_epsilon; /* 0.9, 0.999, 1e-8 */
    double max_grad_norm;            /* clip the global gradient norm to this; 0 = no clipping. 1.0 */
    finch_optimizer optim;           /* adamw */
    uint64_t seed;                   /* 3407: the data order and a freshly attached adapter */
    int shuffle;                     /* 1: a new seeded order every epoch; 0: file order */
    int64_t max_seq_length;          /* 2048: longer examples are truncated */
    int packing;                     /* 0; 1: several examples per row of max_seq_length tokens */
    int32_t pad_token_id;            /* 0: the id that fills padded rows (never trained) */
    double eval_split;               /* fraction of the examples held out for evaluation: 0 */
    int64_t eval_steps;              /* evaluate every N steps; 0 = at the end only (when eval_split > 0) */
    int64_t save_steps;              /* checkpoint every N steps; 0 = none during the run */
    int save_total_limit;            /* keep the last K checkpoints; 0 = all */
    int64_t logging_steps;           /* progress callback every N steps: 1 */
    finch_lora_config lora;          /* attached by finch_trainer_open when the model has no trainable tensor;
                                        r 16, alpha 16, all-linear; lora.seed 0 = use seed */
} finch_trainer_config;

finch_trainer_config finch_trainer_config_default(void);
/* F32 on the CPU backend, BF16 on GPUs: the compute dtype to load a model with for training. */
finch_dtype finch_train_default_dtype(const finch_runtime *rt);

const char *finch_lr_scheduler_name(finch_lr_scheduler s);
finch_status finch_lr_scheduler_parse(const char *name, finch_lr_scheduler *out);  /* "linear", "constant", "cosine" */
const char *finch_optimizer_name(finch_optimizer o);
finch_status finch_optimizer_parse(const char *name, finch_optimizer *out);        /* "adamw", "adamw8bit" */
/* The learning rate of 0-based optimizer step `step` of total_steps (Hugging Face's schedules). */
double finch_lr_at(finch_lr_scheduler s, double base_lr, int64_t step, int64_t warmup_steps, int64_t total_steps);

/* ---- the trainer --------------------------------------------------------------------------------- */

typedef struct finch_trainer finch_trainer;

typedef enum finch_train_event {
    FINCH_TRAIN_EVENT_STEP = 0,       /* an optimizer step finished */
    FINCH_TRAIN_EVENT_EVAL = 1,       /* an evaluation finished: eval_loss */
    FINCH_TRAIN_EVENT_CHECKPOINT = 2  /* a checkpoint was written: checkpoint */
} finch_train_event;

typedef struct finch_train_progress {
    finch_train_event event;
    int64_t step, total_steps;       /* optimizer steps done, and planned */
    double epoch;                    /* fractional epochs of data consumed */
    double loss;                     /* the step's mean token loss */
    double learning_rate;            /* the LR the step used */
    double grad_norm;                /* global gradient norm before clipping */
    int64_t tokens;                  /* trained (label) tokens in the step */
    double tokens_per_second;        /* input tokens per second, over this run */
    double elapsed_seconds, eta_seconds;
    uint64_t device_memory_used, device_memory_total;  /* bytes, as the backend reports them */
    double eval_loss;                /* EVAL events; NaN otherwise */
    const char *checkpoint;          /* CHECKPOINT events: the folder; NULL otherwise */
} finch_train_progress;

/* Called from finch_trainer_run; a non-zero return stops the run after this step (as finch_trainer_cancel). */
typedef int (*finch_train_callback)(const finch_train_progress *p, void *user);

/* Opens a trainer on a loaded model (see finch_train_default_dtype; full fine-tuning when the model was
 * loaded with full_finetune). data must outlive the trainer. Fails early, naming the folder, when
 * output_dir cannot be created or written, and with FINCH_ERR_UNSUPPORTED when the backend lacks the
 * optimizer (adamw8bit needs plugin ABI 1.1). */
finch_status finch_trainer_open(finch_model *m, const finch_trainer_config *cfg, const finch_train_data *data,
                                finch_trainer **out);
void finch_trainer_close(finch_trainer *t);

/* One optimizer step; out (may be NULL) gets its numbers (event STEP). A non-finite loss or gradient
 * norm is FINCH_ERR_NUMERIC: nothing is updated and the last checkpoint is intact. A cancel request
 * seen between micro-batches is FINCH_ERR_CANCELLED: the step is dropped, the state is that of the
 * last finished step. FINCH_ERR_STATE when every planned step is done. */
finch_status finch_trainer_step(finch_trainer *t, finch_train_progress *out);
/* Steps until total_steps, evaluating and checkpointing as configured. On a cancel (callback or
 * finch_trainer_cancel) it writes a checkpoint of the last finished step when output_dir is set and
 * returns FINCH_ERR_CANCELLED. */
finch_status finch_trainer_run(finch_trainer *t, finch_train_callback cb, void *user);
/* Mean token loss over the held-out examples (FINCH_ERR_STATE when eval_split is 0). */
finch_status finch_trainer_evaluate(finch_trainer *t, double *eval_loss);
/* Asks the trainer to stop at the next micro-batch boundary. Async-signal-safe. */
void finch_trainer_cancel(finch_trainer *t);

/* Moves the model and the optimizer state to another backend between steps (finch_model_move): the
 * step, data position, learning-rate schedule and random streams continue, so N steps before and M
 * after the switch give the losses of N + M steps where training started (within the backends'
 * tolerance). Errors as finch_model_move's, prefixed with the step. */
finch_status finch_trainer_switch_backend(finch_trainer *t, const char *backend);

int64_t finch_trainer_global_step(const finch_trainer *t);
int64_t finch_trainer_total_steps(const finch_trainer *t);

/* Writes a checkpoint folder at dir (a temporary folder renamed into place: a failure leaves nothing
 * half-written and any older checkpoint untouched). With LoRA it also holds the PEFT adapter files. */
finch_status finch_trainer_save(finch_trainer *t, const char *dir);
/* output_dir/checkpoint-<step>, then removes the oldest beyond save_total_limit. path (may be NULL)
 * gets the folder. */
finch_status finch_trainer_save_checkpoint(finch_trainer *t, char *path, size_t size);
/* Restores a checkpoint written by finch_trainer_save into a trainer opened with the same model,
 * data and data-shaping settings (batch size, accumulation, seed, packing, lengths). */
finch_status finch_trainer_resume(finch_trainer *t, const char *dir);
/* The checkpoint-<step> folder of output_dir with the highest step (FINCH_ERR_IO if none). */
finch_status finch_trainer_latest_checkpoint(const char *output_dir, char *path, size_t size);

#ifdef __cplusplus
}
#endif

#endif
