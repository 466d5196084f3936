/* QLoRA: decoder linear weights held in 4 bits on the device (bitsandbytes NF4/FP4 layout).
 *
 * At load time each decoder linear weight is either read as stored from a bnb-4bit checkpoint
 * (quantization_config in config.json; weight + quant_state tensors, core/bnb_checkpoint.h) or
 * quantised from its bf16/f16/f32 tensor when load_in_4bit is set, one tensor at a time
 * (nf4_quantize_from_set: host memory stays near one tensor's packed output). The device then
 * holds, in one buffer per weight, the packed codes, the f32 absmax (double quantisation expanded)
 * and the 16-entry code table: never a dense copy. The plugin's linear entries dequantise tiles
 * inside the matmul. Norms, embeddings, lm_head and biases stay dense.
 *
 * Row order: a module whose rows finch keeps in another order than the checkpoint's (falcon's fused
 * query_key_value, row_perm) is quantised in checkpoint order and moved whole rows at a time when
 * in_features is a multiple of the blocksize (rows then own whole blocks), which keeps the stored
 * quantisation exact. Otherwise quantise-on-load quantises the rows already permuted ("own order":
 * a valid 4-bit copy that cannot be saved back as bnb-4bit), and a pre-quantised weight is refused. */
#ifndef FINCH_CORE_MODEL_QUANT_H
#define FINCH_CORE_MODEL_QUANT_H

#include "core/model.h"
#include "core/nf4.h"
#include "core/safetensors.h"

/* How a model's decoder linears load, from the load options and config.json. */
typedef struct finch_quant_plan {
    int prequantized;          /* config.json has a bitsandbytes 4-bit quantization_config */
    int quantize_dense;        /* load_in_4bit: dense linear weights are quantised on load */
    nf4_type type;
    int64_t blocksize;
    int double_quant;
} finch_quant_plan;

/* One 4-bit linear weight. */
typedef struct finch_quant_weight {
    finch_weight w;            /* what the plugin reads: data, absmax and code inside lin->weight.data's buffer */
    nf4_weight meta;           /* on the host: type, shape, blocksize, source dtype and, with double
                                  quantisation, the 8-bit absmax as stored (packed and absmax are NULL:
                                  they live on the device) */
    int own_order;             /* quantised after the row permutation (see above) */
} finch_quant_weight;

/* Reads dir/config.json's quantization_config (GPTQ, AWQ, ...: FINCH_ERR_UNSUPPORTED naming the
 * scheme) and checks the options: bad quant_type/blocksize are FINCH_ERR_INVALID_ARGUMENT, full
 * fine-tuning with 4-bit weights FINCH_ERR_UNSUPPORTED. */
int finch_quant_plan_make(const char *dir, const finch_load_options *o, finch_quant_plan *out);
static inline int finch_quant_plan_active(const finch_quant_plan *p) { return p->prequantized || p->quantize_dense; }

/* Loads checkpoint tensor `name` (lin's [out, in] weight) in 4 bits when the plan says so: sets
 * lin->weight (dtype NF4, one device buffer) and lin->quant, and *loaded = 1. *loaded = 0 when the
 * weight stays dense (no plan, or a bnb-4bit checkpoint that stores it dense and no load_in_4bit). */
int finch_quant_load_linear(finch_model *m, const st_set *set, const char *dir, const finch_quant_plan *plan,
                            finch_linear_module *lin, const char *name, int *loaded);
void finch_quant_weight_free(finch_quant_weight *q);  /* host side; NULL-safe; frees q itself */

/* The plugin's view of lin's weight: the 4-bit weight, or the dense one. */
finch_weight finch_quant_linear_weight(const finch_linear_module *lin);
/* deq(W) as f32 [out, in] in the checkpoint's row order. */
int finch_quant_dequantize(const finch_model *m, const finch_linear_module *lin, float *dst);
/* A host copy of lin's 4-bit weight in the checkpoint's row order, ready for bnb_write
 * (nf4_weight_free). FINCH_ERR_UNSUPPORTED for an own-order weight. */
int finch_quant_download(const finch_model *m, const finch_linear_module *lin, nf4_weight *out);

#endif
