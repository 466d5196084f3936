/* bitsandbytes 4-bit ("bnb-4bit") checkpoints: config.json's quantization_config, and the
 * safetensors tensors of one quantised Linear weight W (the name of its weight tensor):
 *
 *     W                                         packed nibbles, U8 [(n + 1) / 2, 1]  (n = out * in;
 *                                               any dtype is read as raw bytes: bnb_4bit_quant_storage)
 *     W.absmax                                  F32 [n_blocks], or U8 [n_blocks] with double quantisation
 *     W.quant_map                               F32 [16]
 *     W.nested_absmax                           F32 [ceil(n_blocks / nested_blocksize)]  (double quant)
 *     W.nested_quant_map                        F32 [256]                                 (double quant)
 *     W.quant_state.bitsandbytes__nf4 (__fp4)   U8 [len]: UTF-8 JSON {"quant_type", "blocksize", "dtype",
 *                                               "shape": [out, in], and with double quantisation
 *                                               "nested_blocksize", "nested_dtype", "nested_offset"}
 *
 * Stored maps are checked against the tables of core/nf4.h, never trusted: quant_map must be the
 * type's table, nested_quant_map the signed dynamic map (1e-6 relative tolerance; see nf4.h).
 * Decoding uses finch's 4-bit table (as bitsandbytes' CUDA kernels use their built-in one) and the
 * stored nested map (as bitsandbytes does), so the f32 absmax equals what bitsandbytes computes.
 */
#ifndef FINCH_CORE_BNB_CHECKPOINT_H
#define FINCH_CORE_BNB_CHECKPOINT_H

#include "core/nf4.h"
#include "core/safetensors.h"

struct cJSON;

/* config.json "quantization_config". */
typedef struct bnb_config {
    int quantized;              /* 0: no quantization_config: a plain checkpoint (quantise on load if asked) */
    nf4_type quant_type;        /* bnb_4bit_quant_type; bitsandbytes' default when absent is "fp4" */
    int double_quant;           /* bnb_4bit_use_double_quant */
    finch_dtype compute_dtype;  /* bnb_4bit_compute_dtype: F32 (also when null/absent), BF16 or F16 */
    char quant_storage[16];     /* bnb_4bit_quant_storage: "uint8" unless the file says otherwise */
} bnb_config;

/* Reads quantization_config from a parsed config.json object; `where` names the file in messages.
 * A quant_method other than "bitsandbytes" (gptq, awq, ...) or bitsandbytes 8-bit is
 * FINCH_ERR_UNSUPPORTED with a message saying which; malformed fields are FINCH_ERR_FORMAT. */
int bnb_config_parse(const struct cJSON *config, const char *where, bnb_config *out);
/* The same from a config.json path. */
int bnb_config_load(const char *config_json_path, bnb_config *out);
/* Adds "quantization_config" (BitsAndBytesConfig's serialised fields) to a config.json object. */
int bnb_config_add_to_json(const bnb_config *c, struct cJSON *config);

/* 1 if weight tensor `name` is stored bnb-4bit (it has a quant_state tensor), else 0. */
int bnb_weight_is_quantized(const st_set *s, const char *name);
/* Loads and validates the quantised weight `name` ("model.layers.0.self_attn.q_proj.weight").
 * *out owns copies of everything (nf4_weight_free); absmax is f32 with double quantisation expanded.
 * Errors (FINCH_ERR_FORMAT / FINCH_ERR_UNSUPPORTED) name the file and the tensor at fault. */
int bnb_load_weight(const st_set *s, const char *name, nf4_weight *out);

/* Writes weights (each under its weight tensor name) in the schema above, followed by the extra
 * dense tensors (norms, embeddings, biases; may be NULL), to path (temporary file + rename). A file
 * written from weights loaded by bnb_load_weight is byte-identical to one written from the originals. */
typedef struct bnb_named_weight {
    const char *name;
    const nf4_weight *w;
} bnb_named_weight;
int bnb_write(const char *path, const bnb_named_weight *weights, int n_weights, const st_entry *extra, int n_extra);

#endif
