/* 4-bit blockwise weight quantisation exactly as bitsandbytes stores it (NF4; FP4 for loading).
 *
 * A weight [out, in] is flattened row-major to n = out * in elements and cut into blocks of
 * `blocksize` consecutive elements (a block may straddle rows; the last one may be partial).
 *     absmax[b] = max |x| over block b                                       (f32)
 *     q[i]      = nearest code to x[i] * (1 / absmax[b])    (f32 reciprocal, then f32 product)
 *     packed[j] = q[2j] << 4 | q[2j+1]     first element in the HIGH nibble; (n + 1) / 2 bytes
 *     x[i]     ~= code[q[i]] * absmax[b]
 * "Nearest" compares against thresholds halfway between value-adjacent table entries, computed in
 * f32 as (a + b) * 0.5f, with x > t, so a tie goes to the lower value, as bitsandbytes' CUDA
 * quantiser does (its NF4 decision tree's constants are exactly these midpoints). When n is odd the last low nibble holds the code of 0.0 (the padding element
 * bitsandbytes quantises). A block of zeros has absmax 0; 0 * (1/0) is NaN, which compares false
 * everywhere and gets the lowest code (byte 0x00 for NF4), again as bitsandbytes; it decodes to
 * -1 * 0 = -0.0, never NaN.
 *
 * Double quantisation ("compress_statistics") stores absmax itself in 8 bits:
 *     offset = mean(absmax);  absmax - offset quantised blockwise (nested_blocksize, 256) with the
 *     signed 8-bit dynamic map, same nearest rule;
 *     absmax[i] ~= nested_code[qabsmax[i]] * nested_absmax[i / nested_blocksize] + offset  (f32).
 *
 * Bit-exactness with bitsandbytes: NF4 packing and absmax are identical (see tests/test_nf4.c). The
 * double-quantised codes we WRITE can differ from bitsandbytes' in rare cases: its offset is a f32
 * torch mean (we average in double) and its 8-bit search breaks exact midpoint ties by search path.
 * Decoding stored codes is exact. FP4: decoding uses bitsandbytes' CUDA LUT; our FP4 quantiser is
 * plain nearest-value and is not bit-identical to bitsandbytes' FP4 pivots (FP4 is meant for loading).
 */
#ifndef FINCH_CORE_NF4_H
#define FINCH_CORE_NF4_H

#include "core/safetensors.h"
#include "finch/types.h"

#include <stddef.h>
#include <stdint.h>

#define NF4_DEFAULT_BLOCKSIZE 64
#define NF4_NESTED_BLOCKSIZE 256

typedef enum nf4_type { NF4_TYPE_NF4 = 0, NF4_TYPE_FP4 = 1 } nf4_type;

/* The 16-entry table of a type, indexed by 4-bit code. */
const float *nf4_code_table(nf4_type type);
const char *nf4_type_name(nf4_type type);                 /* "nf4", "fp4" */
/* The quant_map bitsandbytes saves for a type (get_4bit_type: NF4 = the table above; FP4 = its
 * Python table k/12 in f32, a few ulps from the CUDA LUT that nf4_code_table returns). */
void nf4_stored_quant_map(nf4_type type, float map[16]);
/* 32, 64, ..., 4096 (the blocksizes bitsandbytes accepts). */
int nf4_blocksize_valid(int64_t blocksize);
static inline int64_t nf4_n_blocks(int64_t n, int64_t blocksize) { return (n + blocksize - 1) / blocksize; }
static inline int64_t nf4_packed_bytes(int64_t n) { return (n + 1) / 2; }

/* Quantises n floats: writes nf4_packed_bytes(n) bytes to packed and nf4_n_blocks(n, blocksize)
 * scales to absmax. code is any 16-entry table (nf4_code_table(NF4_TYPE_NF4) for NF4).
 * FINCH_ERR_INVALID_ARGUMENT for a bad blocksize or a non-finite input (naming its index). */
int nf4_quantize(const float *w, int64_t n, int64_t blocksize, const float code[16], uint8_t *packed, float *absmax);
/* Inverse: out[i] = code[q[i]] * absmax[i / blocksize] for i < n. */
void nf4_dequantize(const uint8_t *packed, const float *absmax, int64_t n, int64_t blocksize, const float code[16],
                    float *out);

/* bitsandbytes' signed 8-bit dynamic map (create_dynamic_map(signed=True)): 256 ascending values in
 * [-1, 1], 0 at index 127, 1.0 at 255. bitsandbytes builds it with torch.linspace, whose last bits
 * depend on the machine's vector width, so stored maps are compared with a tolerance (nf4_map_matches). */
void nf4_dynamic_map(float map[256]);
/* The unsigned map (create_dynamic_map(signed=False)): 256 ascending values in [0, 1], 0 at index 0,
 * 1.0 at 255; 8-bit optimizers store the second moment with it. */
void nf4_dynamic_map_unsigned(float map[256]);
/* 1 if stored[i] equals ref[i] within 1e-6 relative (zeros exactly, either sign) for all i < n;
 * else 0 and *bad_index = the first mismatch. */
int nf4_map_matches(const float *stored, const float *ref, int n, int *bad_index);

/* Double quantisation of n_blocks absmax values with nested blocksize nbs (a valid blocksize) and
 * the 256-entry map: qabsmax [n_blocks], nested_absmax [ceil(n_blocks / nbs)], *offset. */
int nf4_double_quantize(const float *absmax, int64_t n_blocks, int64_t nbs, const float map[256], uint8_t *qabsmax,
                        float *nested_absmax, float *offset);
void nf4_double_dequantize(const uint8_t *qabsmax, const float *nested_absmax, float offset, int64_t n_blocks,
                           int64_t nbs, const float map[256], float *absmax);

/* A quantised [rows, cols] weight on the host, ready to upload as a finch_weight (plugin.h):
 * packed bytes + f32 absmax (double quantisation already expanded) + code + blocksize. The nested
 * fields keep the double-quantised form so that saving it again reproduces the file bit for bit. */
typedef struct nf4_weight {
    nf4_type type;
    int64_t rows, cols;         /* [out_features, in_features] */
    int64_t blocksize;
    finch_dtype dtype;          /* dtype it was quantised from: F32, BF16 or F16 ("dtype" in bnb's quant_state) */
    uint8_t *packed;            /* nf4_packed_bytes(rows * cols) */
    float *absmax;              /* nf4_n_blocks(rows * cols, blocksize), as used to decode */
    float code[16];
    int nested;                 /* 1: absmax is double-quantised; the fields below are set */
    int64_t nested_blocksize;
    uint8_t *qabsmax;           /* [n_blocks] */
    float *nested_absmax;       /* [ceil(n_blocks / nested_blocksize)] */
    float nested_code[256];
    float nested_offset;
} nf4_weight;

static inline int64_t nf4_weight_numel(const nf4_weight *w) { return w->rows * w->cols; }
static inline int64_t nf4_weight_blocks(const nf4_weight *w) { return nf4_n_blocks(w->rows * w->cols, w->blocksize); }
void nf4_weight_free(nf4_weight *w);   /* frees the buffers and zeroes *w; NULL-safe */
/* out [rows * cols] f32. */
void nf4_weight_dequantize(const nf4_weight *w, float *out);

/* Quantise-on-load: converts a 2-D F32/BF16/F16/F64 tensor to *out in chunks of 64Ki elements, so
 * host memory is the packed output + absmax + a 256 KiB buffer, never an f32 copy of the tensor.
 * double_quant adds the nested absmax (blocksize 256). Errors name the tensor. t->data may be any
 * memory (it is only read). */
int nf4_quantize_st_tensor(const st_tensor *t, nf4_type type, int64_t blocksize, int double_quant, nf4_weight *out);
/* The same for tensor `name` of a set (FINCH_ERR_FORMAT if absent). The set's data are file
 * mappings, so the source pages already converted are also dropped from the resident set as it
 * goes: loading a whole model tensor by tensor keeps the process near one tensor's output. */
int nf4_quantize_from_set(const st_set *s, const char *name, nf4_type type, int64_t blocksize, int double_quant,
                          nf4_weight *out);

#endif
