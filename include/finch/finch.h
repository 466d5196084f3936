/* finch — fine-tune LLMs on the user's own GPU, from C.
 *
 * Every call returns a finch_status (FINCH_OK == 0). On failure finch_last_error() gives a message
 * naming the file, tensor or field at fault. The library never aborts or exits on bad input or on
 * device errors, and never writes a user-visible file in place: outputs go to a temporary file that
 * is renamed over the destination once complete.
 *
 * Typical use:
 *     finch_runtime *rt;  finch_runtime_open("auto", &rt);
 *     finch_model *m;     finch_model_load(rt, "path/to/hf-model", NULL, &m);
 *     finch_lora_config lc = finch_lora_config_default();  finch_lora_attach(m, &lc);
 *     finch_batch b = { .batch = 2, .seq_len = 512, .input_ids = ids, .labels = labels };
 *     finch_step_result r;  finch_forward_backward(m, &b, NULL, &r);
 *     finch_lora_save(m, "out/adapter");
 *     finch_model_free(m);  finch_runtime_close(rt);
 */
#ifndef FINCH_H
#define FINCH_H

#include "finch/types.h"

#ifdef __cplusplus
extern "C" {
#endif

#define FINCH_VERSION_MAJOR 0
#define FINCH_VERSION_MINOR 1
#define FINCH_VERSION_PATCH 0

typedef struct finch_runtime finch_runtime;
typedef struct finch_model finch_model;

/* The message of the last failed call on this thread ("" if none). */
const char *finch_last_error(void);
const char *finch_version_string(void);
const char *finch_status_name(finch_status s);
size_t finch_dtype_size(finch_dtype t);  /* bytes per element; 0 for NF4 (half a byte) */
const char *finch_dtype_name(finch_dtype t);

/* ---- runtime: backends and devices ------------------------------------------------------------- */

typedef struct finch_runtime_options {
    const char *backend;      /* "auto" (best device), "cpu", "cuda", "cuda:1", "opencl:0", ...; NULL = "auto" */
    const char *plugin_path;  /* a directory searched first for plugin modules, or NULL */
    int n_threads;            /* CPU backend threads; 0 = all cores */
} finch_runtime_options;

finch_status finch_runtime_open(const char *backend, finch_runtime **out);
finch_status finch_runtime_open_ex(const finch_runtime_options *opts, finch_runtime **out);
void finch_runtime_close(finch_runtime *rt);

/* Every backend module found, loaded or not, and each loaded backend's devices. */
typedef struct finch_backend_report {
    char name[32];            /* "cpu", "cuda", ... */
    char path[512];           /* module file; "(built in)" for the CPU backend */
    int loaded;               /* 1 if usable */
    char reason[512];         /* why it did not load (driver missing, ABI mismatch, no device) */
    int abi_major, abi_minor;
    int n_devices;
} finch_backend_report;

typedef struct finch_device_report {
    char backend[32];
    int index;                /* device index within its backend */
    char name[128];
    int kind;                 /* finch_device_kind from plugin.h: 0 cpu, 1 gpu, 2 igpu, 3 other */
    uint64_t total_memory, free_memory;
    char details[2048];       /* versions, driver, features, extensions: "key: value" lines; "" if the
                                 plugin does not say (ABI < 1.2) */
} finch_device_report;

int finch_runtime_backend_count(const finch_runtime *rt);
finch_status finch_runtime_backend(const finch_runtime *rt, int i, finch_backend_report *out);
int finch_runtime_device_count(const finch_runtime *rt);
finch_status finch_runtime_device(const finch_runtime *rt, int i, finch_device_report *out);
/* The backend and device the runtime computes on. */
finch_status finch_runtime_active(const finch_runtime *rt, finch_device_report *out);

/* ---- models ------------------------------------------------------------------------------------ */

typedef struct finch_load_options {
    finch_dtype compute_dtype; /* F32 or BF16 (weights and activations); default F32 on CPU, BF16 on GPUs */
    int full_finetune;         /* 1: every weight is trainable (no LoRA) */
    int gradient_checkpointing;/* 1: keep only layer inputs in forward, recompute in backward */
    /* QLoRA. A bitsandbytes 4-bit checkpoint (quantization_config in config.json) always loads with
     * its decoder linear weights in 4 bits, as stored. load_in_4bit quantises every decoder linear
     * weight of a bf16/f16/f32 checkpoint (and any a bnb-4bit checkpoint left dense) as it loads,
     * tensor by tensor; norms, embeddings, lm_head and biases stay dense. 4-bit weights are frozen:
     * full_finetune is refused with them. */
    int load_in_4bit;
    int quant_type;            /* FINCH_QUANT_NF4 (0) or FINCH_QUANT_FP4 */
    int64_t quant_blocksize;   /* elements per absmax scale: 32..4096, a power of two; 0 = 64 */
    int double_quant;          /* 1: absmax itself in 8 bits (bitsandbytes' compress_statistics) */
    /* With gradient checkpointing: the layer inputs kept for backward go to host memory as each layer
     * finishes and come back one layer at a time in backward, so the device holds two of them instead
     * of one per layer (long contexts). Where the backend has page-locked memory and events (CUDA)
     * the copies run on a stream of their own beside the compute; elsewhere between kernels. With
     * page-locked memory each layer's attention half (its output, q, k, v and the residual after it)
     * travels too, so that backward recomputes only the MLP: faster, at ~4.7x the host memory
     * (Llama-8B at 4096 tokens a step: 4.6 GB page-locked instead of 1 GB) and two such blocks on the
     * device, kept only while those fit in 512 MiB (long contexts keep less or nothing). */
    int offload_activations;
} finch_load_options;

enum { FINCH_QUANT_NF4 = 0, FINCH_QUANT_FP4 = 1 };

finch_load_options finch_load_options_default(void);

/* Loads a Hugging Face model folder: config.json and model.safetensors or a sharded
 * model.safetensors.index.json. opts may be NULL. */
finch_status finch_model_load(finch_runtime *rt, const char *dir, const finch_load_options *opts, finch_model **out);
void finch_model_free(finch_model *m);
/* Writes the base model with its 4-bit decoder weights as a bitsandbytes 4-bit checkpoint folder
 * (config.json with quantization_config, model.safetensors) that finch and transformers load.
 * FINCH_ERR_STATE when the model holds no 4-bit weights. */
finch_status finch_model_save_4bit(const finch_model *m, const char *dir);

/* Moves a loaded model, between steps, to another backend of its runtime's registry ("cpu",
 * "opencl:0", "cuda", "auto"; as finch_runtime_open names them): every weight (4-bit ones and the
 * vision tower included), adapter, gradient and, when a trainer is open on the model, its optimizer
 * state, then frees all of it on the old device. Host-side state (a trainer's step, data position,
 * schedule, dropout seeds) is untouched, so training continues as it would have where it was, to the
 * backends' numerical tolerance. Generation sessions of the model forget their sequences (their
 * caches are freed on the old device and grow again on the new one). Moving where the model already
 * is does nothing.
 * Atomic: when the target fails (it does not open, its kernels do not build, out of memory, a failed
 * copy) or refuses the state (an adamw8bit trainer on a plugin without adamw8bit_step), the model is
 * unchanged and still usable where it was. When the CURRENT device fails while it is read (a lost
 * device), FINCH_ERR_DEVICE says that the state on it is lost: free the model and load it again (a
 * trainer resumes from its last checkpoint); finch keeps no host copy of device state. */
finch_status finch_model_move(finch_model *m, const char *backend);
/* The backend and device the model lives on, with the device's current memory. */
finch_status finch_model_device(const finch_model *m, finch_device_report *out);

typedef struct finch_model_info {
    char model_type[64];       /* as in config.json: "llama", "gemma2", ... */
    int64_t n_layers, hidden_size, n_heads, n_kv_heads, head_dim, intermediate_size, vocab_size;
    int64_t n_params;          /* base model parameters */
    int64_t n_trainable;       /* trainable parameters (adapter, or all in full fine-tuning) */
    finch_dtype compute_dtype;
    int32_t image_token_id;    /* a vision-language model's image pad token; -1 for a text model */
} finch_model_info;

finch_status finch_model_info_get(const finch_model *m, finch_model_info *out);

/* ---- LoRA ---------------------------------------------------------------------------------------- */

typedef struct finch_lora_config {
    int r;                     /* rank (16) */
    float alpha;               /* scaling numerator (16): scale = alpha / r, or alpha / sqrt(r) with rslora */
    int use_rslora;
    float dropout;             /* on the adapter input; 0 = off */
    const char *target_modules;/* "all-linear", or comma-separated module names ("q_proj,v_proj") */
    uint64_t seed;             /* initialisation: A kaiming-uniform(a = sqrt 5) from this seed, B = 0 */
} finch_lora_config;

finch_lora_config finch_lora_config_default(void);

finch_status finch_lora_attach(finch_model *m, const finch_lora_config *cfg);
/* Loads a PEFT adapter folder (adapter_config.json + adapter_model.safetensors), attaching it. */
finch_status finch_lora_load(finch_model *m, const char *adapter_dir);
/* Removes the attached adapter, keeping the base model loaded, so another can be loaded or attached
 * (switching adapters for generation). A trainer over the model must be made again afterwards. */
finch_status finch_lora_unload(finch_model *m);
/* Writes a PEFT adapter folder that PEFT's PeftModel.from_pretrained loads. */
finch_status finch_lora_save(const finch_model *m, const char *adapter_dir);

/* ---- forward, loss, backward ------------------------------------------------------------------- */

/* A batch of token rows. labels may be NULL (then input_ids are the labels). Labels are NOT shifted:
 * position t's label is the target of position t-1, as in Hugging Face; -100 is ignored. */
typedef struct finch_batch {
    int64_t batch, seq_len;
    const int32_t *input_ids;  /* [batch, seq_len] */
    const int32_t *labels;     /* [batch, seq_len] or NULL */
    const int32_t *segment_ids;/* [batch, seq_len] or NULL (each row one sequence). Packed rows: tokens of a row
                                  with the same id, side by side, form one sequence; positions restart at
                                  each new sequence, attention stays inside it and no label is predicted
                                  across a boundary; a negative id marks padding (no loss) */
    /* Images, for a vision-language model (qwen2_5_vl); NULL / 0 for text. pixel_values holds the
     * patches of every image of the batch, image after image, as the model's image processor makes
     * them (finch_image_preprocess_qwen2vl); input_ids hold, for each image in the same order, a
     * block of grid_t * grid_h * grid_w / spatial_merge_size^2 image tokens (image_token_id). */
    const float *pixel_values;      /* [n_patches, patch_dim]: patch_dim = 3 * 2 * 14 * 14 = 1176 */
    const int32_t *image_grid_thw;  /* [n_images, 3]: frames, rows, columns of each image, in patches */
    int64_t n_images, n_patches;
    /* 1: positions 0, 1, 2, ... on all three multimodal RoPE rows, ignoring the image grids: what
     * transformers 5 computes when the model is called without mm_token_type_ids (its goldens were
     * made so). 0: the image tokens take their grid's rows and columns, as with the processor. */
    int text_positions;
} finch_batch;

typedef struct finch_step_options {
    int want_logits;           /* keep the logits [batch, seq_len, vocab] for finch_model_logits() */
    float grad_scale;          /* gradient of (loss_sum * grad_scale); 0 = 1 / token_count (mean loss) */
} finch_step_options;

typedef struct finch_step_result {
    double loss;               /* loss_sum / token_count */
    double loss_sum;
    int64_t token_count;       /* tokens whose shifted label is not -100 */
} finch_step_result;

/* Forward and loss only. opts may be NULL. */
finch_status finch_forward(finch_model *m, const finch_batch *b, const finch_step_options *opts, finch_step_result *out);
/* Forward, loss and backward: gradients ACCUMULATE into the trainable tensors' gradients until
 * finch_zero_grads(). */
finch_status finch_forward_backward(finch_model *m, const finch_batch *b, const finch_step_options *opts,
                                    finch_step_result *out);
/* Copies the logits of the last step that asked for them (f32, batch*seq_len*vocab values). */
finch_status finch_model_logits(const finch_model *m, float *dst, size_t count);

/* ---- trainable tensors ----------------------------------------------------------------------- */

typedef struct finch_tensor_info {
    char name[256];            /* PEFT name for adapters ("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"),
                                  checkpoint name in full fine-tuning ("model.layers.0.self_attn.q_proj.weight") */
    int ndim;
    int64_t shape[4];
    int64_t numel;
} finch_tensor_info;

int64_t finch_trainable_count(const finch_model *m);
finch_status finch_trainable_info(const finch_model *m, int64_t i, finch_tensor_info *out);
/* Values and gradients as f32, numel elements. */
finch_status finch_trainable_read(const finch_model *m, int64_t i, float *dst, int64_t numel);
finch_status finch_trainable_write(finch_model *m, int64_t i, const float *src, int64_t numel);
finch_status finch_trainable_grad_read(const finch_model *m, int64_t i, float *dst, int64_t numel);
finch_status finch_zero_grads(finch_model *m);

#ifdef __cplusplus
}
#endif

/* The rest of the public API: tokenizer, chat templates and datasets; images. */
#include "finch/data.h"
#include "finch/vision.h"

#endif
