/* GGUF v3 files, the format of llama.cpp: the block formats of the tensor types we write
 * (gguf_quant.c), a streaming writer (gguf_write.c) and a validating reader (gguf_read.c).
 *
 * Layout (little-endian): "GGUF", u32 version 3, u64 n_tensors, u64 n_kv; n_kv key/values
 * {string key, u32 value type, value}; n_tensors infos {string name, u32 n_dims, u64 ne[n_dims],
 * u32 type, u64 offset}; zero padding to general.alignment (32); the data, each tensor at its offset,
 * offsets being the running sum of the tensors' sizes padded to the alignment. A string is u64 length
 * + bytes; an array is u32 element type, u64 count, elements. ne[0] is the contiguous dimension, so a
 * row-major [rows, cols] matrix has ne = {cols, rows}. */
#ifndef FINCH_CORE_GGUF_H
#define FINCH_CORE_GGUF_H

#include <stddef.h>
#include <stdint.h>

#define GGUF_VERSION 3
#define GGUF_ALIGNMENT 32
#define GGUF_MAX_DIMS 4
#define GGUF_MAX_NAME 63   /* llama.cpp refuses longer tensor names */

enum gguf_value_type {
    GGUF_U8 = 0, GGUF_I8 = 1, GGUF_U16 = 2, GGUF_I16 = 3, GGUF_U32 = 4, GGUF_I32 = 5, GGUF_F32 = 6, GGUF_BOOL = 7,
    GGUF_STRING = 8, GGUF_ARRAY = 9, GGUF_U64 = 10, GGUF_I64 = 11, GGUF_F64 = 12
};

/* ggml tensor types (the ids are llama.cpp's) */
enum ggml_type {
    GGML_F32 = 0, GGML_F16 = 1, GGML_Q4_0 = 2, GGML_Q8_0 = 8, GGML_Q4_K = 12, GGML_Q5_K = 13, GGML_Q6_K = 14, GGML_BF16 = 30
};

/* ---- block formats (gguf_quant.c) -------------------------------------------------------------- */

int gguf_type_known(int type);
const char *gguf_type_name(int type);             /* "q4_K", ...; "?" when unknown */
int64_t gguf_block_elems(int type);               /* 1, 32 or 256 */
size_t gguf_block_bytes(int type);
/* Bytes of n elements (n a multiple of the block size). */
size_t gguf_row_bytes(int type, int64_t n);
/* n elements (a multiple of the block size) to/from their blocks. */
void gguf_quantize(int type, const float *x, int64_t n, void *dst);
void gguf_dequantize(int type, const void *src, int64_t n, float *y);

/* ---- writer (gguf_write.c) --------------------------------------------------------------------- */

typedef struct gguf_writer gguf_writer;

int gguf_writer_new(gguf_writer **out);
void gguf_writer_free(gguf_writer *w);   /* also closes and removes a file that was not finished */
/* Key/values, in the order given. Keys must be unique. */
int gguf_set_str(gguf_writer *w, const char *key, const char *value);
int gguf_set_u32(gguf_writer *w, const char *key, uint32_t value);
int gguf_set_i32(gguf_writer *w, const char *key, int32_t value);
int gguf_set_f32(gguf_writer *w, const char *key, float value);
int gguf_set_bool(gguf_writer *w, const char *key, int value);
int gguf_set_arr_str(gguf_writer *w, const char *key, const char *const *values, size_t n);
int gguf_set_arr_i32(gguf_writer *w, const char *key, const int32_t *values, size_t n);
int gguf_set_arr_f32(gguf_writer *w, const char *key, const float *values, size_t n);
/* Declares the next tensor: ne[0] contiguous, ne[0] a multiple of the type's block size. */
int gguf_add_tensor(gguf_writer *w, const char *name, int type, int n_dims, const int64_t *ne);
/* Opens path and writes everything up to the data; then each tensor's bytes in declaration order
 * (exactly gguf_row_bytes(type, numel) of them); gguf_write_end checks and closes the file. */
int gguf_write_begin(gguf_writer *w, const char *path);
int gguf_write_tensor(gguf_writer *w, const void *data, size_t bytes);
int gguf_write_end(gguf_writer *w);

/* ---- reader (gguf_read.c) ---------------------------------------------------------------------- */

typedef struct gguf_file gguf_file;

typedef struct gguf_tensor {
    char name[GGUF_MAX_NAME + 1];
    int type;
    int n_dims;
    int64_t ne[GGUF_MAX_DIMS];
    int64_t numel;
    const void *data;                  /* into the mapping */
    size_t bytes;
} gguf_tensor;

typedef struct gguf_kv {
    char *key;
    int type;                          /* GGUF_* */
    int arr_type;                      /* for GGUF_ARRAY */
    uint64_t n;                        /* array length (1 for a scalar) */
    const unsigned char *data;         /* the value (for an array: its first element) in the mapping */
    uint64_t *str_offsets;             /* string arrays: offset of each element from data */
} gguf_kv;

/* Maps and validates path (magic, version, bounds, names, types, offsets as llama.cpp checks them). */
int gguf_open(const char *path, gguf_file **out);
void gguf_close(gguf_file *f);
int gguf_tensor_count(const gguf_file *f);
const gguf_tensor *gguf_tensor_at(const gguf_file *f, int i);
const gguf_tensor *gguf_find_tensor(const gguf_file *f, const char *name);
int gguf_kv_count(const gguf_file *f);
const gguf_kv *gguf_kv_at(const gguf_file *f, int i);
const gguf_kv *gguf_find_kv(const gguf_file *f, const char *key);
uint32_t gguf_data_alignment(const gguf_file *f);
/* Typed access; FINCH_ERR_FORMAT when the key is absent or of another type. Integers of any width
 * convert to the asked one when they fit. */
int gguf_get_u32(const gguf_file *f, const char *key, uint32_t *out);
int gguf_get_f32(const gguf_file *f, const char *key, float *out);
int gguf_get_bool(const gguf_file *f, const char *key, int *out);
/* A string (scalar, or element i of a string array) as pointer + length, not NUL-terminated. */
int gguf_get_str(const gguf_file *f, const char *key, const char **s, size_t *len);
void gguf_kv_arr_str(const gguf_kv *kv, uint64_t i, const char **s, size_t *len);
/* A copy of tensor t dequantised to f32 (numel values). */
int gguf_tensor_f32(const gguf_tensor *t, float *dst);

#endif
