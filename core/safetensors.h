/* safetensors files: read (mmap'd, header validated) and write (temporary file + rename).
 * Format: u64 little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets}},
 * optional "__metadata__" {str: str}, then the data; offsets are relative to the end of the header. */
#ifndef FINCH_CORE_SAFETENSORS_H
#define FINCH_CORE_SAFETENSORS_H

#include "finch/types.h"

#include <stddef.h>
#include <stdint.h>

#define ST_MAX_DIMS 8

typedef enum st_dtype {
    ST_F64, ST_F32, ST_F16, ST_BF16, ST_I64, ST_I32, ST_I16, ST_I8, ST_U8, ST_BOOL, ST_F8_E4M3, ST_F8_E5M2
} st_dtype;

typedef struct st_tensor {
    const char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    int64_t numel;
    const void *data;       /* into the mapping; may be unaligned for its dtype */
    size_t nbytes;
} st_tensor;

typedef struct st_file st_file;

/* Maps and validates path: header length within the file, JSON well-formed, every dtype known,
 * shape * element size == data_offsets span, offsets inside the data section and non-overlapping.
 * Errors (FINCH_ERR_IO / FINCH_ERR_FORMAT) name the file and the tensor at fault. */
int st_open(const char *path, st_file **out);
void st_close(st_file *f);
const char *st_path(const st_file *f);
int st_count(const st_file *f);
const st_tensor *st_at(const st_file *f, int i);
const st_tensor *st_find(const st_file *f, const char *name);   /* NULL if absent */
const char *st_metadata(const st_file *f, const char *key);      /* NULL if absent */

/* A model's weights: one model.safetensors, or shards listed by model.safetensors.index.json. */
typedef struct st_set st_set;
int st_set_open_dir(const char *dir, st_set **out);
int st_set_open_file(const char *path, st_set **out);
void st_set_close(st_set *s);
int st_set_count(const st_set *s);
const st_tensor *st_set_at(const st_set *s, int i);
const st_tensor *st_set_find(const st_set *s, const char *name);
const char *st_set_file_of(const st_set *s, const char *name);  /* which file holds it, for messages */

size_t st_dtype_size(st_dtype t);
const char *st_dtype_name(st_dtype t);
/* Converts numel elements of a tensor (F64/F32/F16/BF16) to f32; FINCH_ERR_UNSUPPORTED otherwise. */
int st_to_f32(const st_tensor *t, float *dst);
/* Converts numel elements of an integer tensor (I64/I32/I16/I8/U8) to i32 (range-checked). */
int st_to_i32(const st_tensor *t, int32_t *dst);

/* Writing: entries are written in the order given; data is copied from each entry's data. */
typedef struct st_entry {
    const char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const void *data;
} st_entry;

/* Writes to "<path>.tmp.<pid>" then renames over path; metadata: NULL or pairs {key, value, ...}
 * terminated by NULL. */
int st_write(const char *path, const st_entry *entries, int n, const char *const *metadata);

#endif
