/* finch — exporting a fine-tuned model for other tools.
 *
 *   merged:    a Hugging Face folder (sharded safetensors, config.json, tokenizer files) with every
 *              LoRA adapter folded into its base weight, W' = W + scale * B A computed in f32;
 *   GGUF:      one file llama.cpp and Ollama load (the adapters merged), in f32, f16, bf16, q8_0,
 *              q4_0 or the q4_K_M / q5_K_M / q6_K mixes, with the tokenizer and chat template, and an
 *              Ollama Modelfile beside it;
 *   GGUF LoRA: the adapter alone, for llama.cpp's --lora.
 *
 * The PEFT adapter folder itself is finch_lora_save() (finch.h). Every output is written under a
 * temporary name and renamed into place once complete: a failure leaves earlier files untouched.
 *
 *     finch_export_merged(m, "out/merged", NULL);
 *     finch_gguf_options g = finch_gguf_options_default();  g.type = FINCH_GGUF_Q4_K_M;
 *     finch_export_gguf(m, "out/model.gguf", &g);
 *     finch_export_report r;  finch_gguf_verify(m, "out/model.gguf", &r);   // logits error vs m
 */
#ifndef FINCH_EXPORT_H
#define FINCH_EXPORT_H

#include "finch/finch.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- merged Hugging Face folder ---------------------------------------------------------------- */

typedef struct finch_merged_options {
    int dtype;              /* FINCH_DTYPE_F32, _BF16 or _F16; -1: the checkpoint's own (config.json) */
    uint64_t shard_bytes;   /* largest shard; 0: 5 GB. Larger models get model-0000k-of-0000n files */
} finch_merged_options;

finch_merged_options finch_merged_options_default(void);
/* Writes out_dir/{model.safetensors | model-*-of-*.safetensors + model.safetensors.index.json},
 * config.json (as loaded, without quantization_config) and the tokenizer and generation files found
 * in the model's folder. opts may be NULL. */
finch_status finch_export_merged(const finch_model *m, const char *out_dir, const finch_merged_options *opts);

/* ---- GGUF ---------------------------------------------------------------------------------------- */

typedef enum finch_gguf_type {
    FINCH_GGUF_F32, FINCH_GGUF_F16, FINCH_GGUF_BF16, FINCH_GGUF_Q8_0, FINCH_GGUF_Q4_0,
    FINCH_GGUF_Q4_K_M, FINCH_GGUF_Q5_K_M, FINCH_GGUF_Q6_K
} finch_gguf_type;

const char *finch_gguf_type_name(finch_gguf_type t);          /* "f16", "q4_K_M", ... */
finch_status finch_gguf_type_parse(const char *name, finch_gguf_type *out);

typedef struct finch_gguf_options {
    finch_gguf_type type;
    const char *tokenizer_dir;   /* tokenizer.json (+ tokenizer_config.json); NULL: the model's folder */
    const char *name;            /* general.name; NULL: the model folder's name */
    int modelfile;               /* 1 (default): also write an Ollama Modelfile beside the file */
} finch_gguf_options;

finch_gguf_options finch_gguf_options_default(void);
/* The model, adapters merged, as one GGUF file at path (and path's folder/Modelfile). */
finch_status finch_export_gguf(const finch_model *m, const char *path, const finch_gguf_options *opts);
/* The attached adapter as a GGUF LoRA file (type: f32, f16, bf16 or q8_0). */
finch_status finch_export_gguf_lora(const finch_model *m, const char *path, finch_gguf_type type);

/* Weight error of one GGUF tensor type: ||dequantised - exported|| / ||exported|| over its tensors. */
typedef struct finch_gguf_type_error {
    char type[16];               /* "q4_K", "f32", ... */
    int tensors;
    double rel_err;
} finch_gguf_type_error;

/* What a verification measured. */
typedef struct finch_export_report {
    int is_adapter;
    int n_types;
    finch_gguf_type_error types[8];
    double logits_rel_err;       /* ||logits(from the file) - logits(m)|| / ||logits(m)|| */
    double logits_max_abs;
    int64_t positions, argmax_agree;
} finch_export_report;

/* Loads the merged folder dir (finch_export_merged's output) and compares its logits with m's. */
finch_status finch_merged_verify(finch_model *m, const char *dir, finch_export_report *out);

/* Reads path back, dequantises every tensor, compares it with m's (merged) weights, builds a model
 * from the file (for an adapter: m's base with the file's adapter) and compares its logits with m's
 * on a fixed token sequence. m must be the model the file was exported from. */
finch_status finch_gguf_verify(finch_model *m, const char *path, finch_export_report *out);
/* The model finch_gguf_verify compares with: the file's tensors dequantised to f32 in a new model
 * (for an adapter file: m's base with the file's adapter), on m's runtime. Free with finch_model_free. */
finch_status finch_gguf_rebuild(finch_model *m, const char *path, finch_model **out);

#ifdef __cplusplus
}
#endif

#endif
