/* A GGUF writer that streams: the header (key/values and tensor infos, with every offset known
 * from the declared types and shapes) is written first, then each tensor's bytes as the caller
 * produces them, so a model never has to be held in memory whole. */
#include "core/error.h"
#include "core/files.h"
#include "core/gguf.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct pending_tensor {
    char name[GGUF_MAX_NAME + 1];
    int type, n_dims;
    int64_t ne[GGUF_MAX_DIMS];
    size_t bytes;
} pending_tensor;

struct gguf_writer {
    unsigned char *kv;             /* serialised key/values */
    size_t kv_len, kv_cap;
    uint64_t n_kv;
    char **keys;
    pending_tensor *tensors;
    int n_tensors, cap_tensors;
    FILE *f;
    char path[4096];
    int next;                      /* next tensor whose data is due */
    int failed;
};

int gguf_writer_new(gguf_writer **out)
{
    *out = calloc(1, sizeof **out);
    return *out ? FINCH_OK : finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
}

void gguf_writer_free(gguf_writer *w)
{
    if (!w) return;
    if (w->f) {
        fclose(w->f);
        remove(w->path);
    }
    for (uint64_t i = 0; i < w->n_kv; i++) free(w->keys[i]);
    free(w->keys);
    free(w->kv);
    free(w->tensors);
    free(w);
}

static int put(gguf_writer *w, const void *p, size_t n)
{
    if (w->kv_cap - w->kv_len < n) {
        size_t cap = w->kv_cap ? w->kv_cap : 4096;
        while (cap - w->kv_len < n) cap *= 2;
        unsigned char *q = realloc(w->kv, cap);
        if (!q) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
        w->kv = q;
        w->kv_cap = cap;
    }
    memcpy(w->kv + w->kv_len, p, n);
    w->kv_len += n;
    return FINCH_OK;
}

static int put_u32(gguf_writer *w, uint32_t v) { return put(w, &v, 4); }
static int put_u64(gguf_writer *w, uint64_t v) { return put(w, &v, 8); }

static int put_str(gguf_writer *w, const char *s)
{
    size_t n = strlen(s);
    int rc = put_u64(w, n);
    return rc ? rc : put(w, s, n);
}

/* Starts a key/value: checks the key is new, writes it and the value type. */
static int begin_kv(gguf_writer *w, const char *key, uint32_t type)
{
    for (uint64_t i = 0; i < w->n_kv; i++)
        if (!strcmp(w->keys[i], key)) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "GGUF key '%s' set twice", key);
    char **k = realloc(w->keys, (size_t)(w->n_kv + 1) * sizeof *k);
    if (!k) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    w->keys = k;
    if (!(k[w->n_kv] = strdup(key))) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    w->n_kv++;
    int rc = put_str(w, key);
    return rc ? rc : put_u32(w, type);
}

int gguf_set_str(gguf_writer *w, const char *key, const char *value)
{
    int rc = begin_kv(w, key, GGUF_STRING);
    return rc ? rc : put_str(w, value);
}

int gguf_set_u32(gguf_writer *w, const char *key, uint32_t value)
{
    int rc = begin_kv(w, key, GGUF_U32);
    return rc ? rc : put_u32(w, value);
}

int gguf_set_i32(gguf_writer *w, const char *key, int32_t value)
{
    int rc = begin_kv(w, key, GGUF_I32);
    return rc ? rc : put(w, &value, 4);
}

int gguf_set_f32(gguf_writer *w, const char *key, float value)
{
    int rc = begin_kv(w, key, GGUF_F32);
    return rc ? rc : put(w, &value, 4);
}

int gguf_set_bool(gguf_writer *w, const char *key, int value)
{
    unsigned char b = value ? 1 : 0;
    int rc = begin_kv(w, key, GGUF_BOOL);
    return rc ? rc : put(w, &b, 1);
}

static int begin_array(gguf_writer *w, const char *key, uint32_t elem_type, size_t n)
{
    int rc = begin_kv(w, key, GGUF_ARRAY);
    if (!rc) rc = put_u32(w, elem_type);
    return rc ? rc : put_u64(w, n);
}

int gguf_set_arr_str(gguf_writer *w, const char *key, const char *const *values, size_t n)
{
    int rc = begin_array(w, key, GGUF_STRING, n);
    for (size_t i = 0; !rc && i < n; i++) rc = put_str(w, values[i]);
    return rc;
}

int gguf_set_arr_i32(gguf_writer *w, const char *key, const int32_t *values, size_t n)
{
    int rc = begin_array(w, key, GGUF_I32, n);
    return rc ? rc : put(w, values, 4 * n);
}

int gguf_set_arr_f32(gguf_writer *w, const char *key, const float *values, size_t n)
{
    int rc = begin_array(w, key, GGUF_F32, n);
    return rc ? rc : put(w, values, 4 * n);
}

int gguf_add_tensor(gguf_writer *w, const char *name, int type, int n_dims, const int64_t *ne)
{
    if (strlen(name) > GGUF_MAX_NAME) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "GGUF tensor name '%s' is longer than %d bytes", name, GGUF_MAX_NAME);
    if (!gguf_type_known(type)) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "GGUF tensor '%s': unknown type %d", name, type);
    if (n_dims < 1 || n_dims > GGUF_MAX_DIMS) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "GGUF tensor '%s': %d dimensions", name, n_dims);
    for (int i = 0; i < w->n_tensors; i++)
        if (!strcmp(w->tensors[i].name, name)) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "GGUF tensor '%s' added twice", name);
    if (ne[0] % gguf_block_elems(type))
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "GGUF tensor '%s': %lld values per row is not a multiple of %s's block of %lld",
                           name, (long long)ne[0], gguf_type_name(type), (long long)gguf_block_elems(type));
    if (w->n_tensors == w->cap_tensors) {
        int cap = w->cap_tensors ? 2 * w->cap_tensors : 64;
        pending_tensor *t = realloc(w->tensors, (size_t)cap * sizeof *t);
        if (!t) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
        w->tensors = t;
        w->cap_tensors = cap;
    }
    pending_tensor *t = &w->tensors[w->n_tensors++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->type = type;
    t->n_dims = n_dims;
    int64_t numel = 1;
    for (int i = 0; i < n_dims; i++) {
        t->ne[i] = ne[i];
        numel *= ne[i];
    }
    t->bytes = gguf_row_bytes(type, numel);
    return FINCH_OK;
}

static size_t pad(size_t n)
{
    return (n + GGUF_ALIGNMENT - 1) / GGUF_ALIGNMENT * GGUF_ALIGNMENT;
}

static int file_write(gguf_writer *w, const void *p, size_t n)
{
    if (n && fwrite(p, 1, n, w->f) != n) {
        w->failed = 1;
        return finch_error(FINCH_ERR_IO, "cannot write %s: %s", w->path, strerror(errno));
    }
    return FINCH_OK;
}

static int file_pad(gguf_writer *w, size_t written)
{
    static const unsigned char zeros[GGUF_ALIGNMENT];
    return file_write(w, zeros, pad(written) - written);
}

int gguf_write_begin(gguf_writer *w, const char *path)
{
    if (w->f) return finch_error(FINCH_ERR_STATE, "GGUF writer: already writing %s", w->path);
    snprintf(w->path, sizeof w->path, "%s", path);
    /* tensor infos go after the key/values in the same buffer */
    size_t kv_end = w->kv_len, offset = 0;
    int rc = FINCH_OK;
    for (int i = 0; !rc && i < w->n_tensors; i++) {
        const pending_tensor *t = &w->tensors[i];
        rc = put_str(w, t->name);
        if (!rc) rc = put_u32(w, (uint32_t)t->n_dims);
        for (int d = 0; !rc && d < t->n_dims; d++) rc = put_u64(w, (uint64_t)t->ne[d]);
        if (!rc) rc = put_u32(w, (uint32_t)t->type);
        if (!rc) rc = put_u64(w, offset);
        offset += pad(t->bytes);
    }
    if (rc) {
        w->kv_len = kv_end;
        return rc;
    }
    w->f = fopen(path, "wb");
    if (!w->f) {
        w->kv_len = kv_end;
        return finch_error(FINCH_ERR_IO, "cannot create %s: %s", path, strerror(errno));
    }
    unsigned char head[24];
    uint32_t magic_version[2] = {0x46554747u /* "GGUF" */, GGUF_VERSION};
    uint64_t counts[2] = {(uint64_t)w->n_tensors, w->n_kv};
    memcpy(head, magic_version, 8);
    memcpy(head + 8, counts, 16);
    rc = file_write(w, head, 24);
    if (!rc) rc = file_write(w, w->kv, w->kv_len);
    if (!rc) rc = file_pad(w, 24 + w->kv_len);
    w->kv_len = kv_end;
    w->next = 0;
    return rc;
}

int gguf_write_tensor(gguf_writer *w, const void *data, size_t bytes)
{
    if (!w->f || w->failed) return finch_error(FINCH_ERR_STATE, "GGUF writer: not writing");
    if (w->next >= w->n_tensors) return finch_error(FINCH_ERR_STATE, "GGUF writer: more tensors than declared");
    const pending_tensor *t = &w->tensors[w->next];
    if (bytes != t->bytes)
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "GGUF tensor '%s': %zu bytes given, %zu expected", t->name, bytes, t->bytes);
    int rc = file_write(w, data, bytes);
    if (!rc) rc = file_pad(w, bytes);
    if (!rc) w->next++;
    return rc;
}

int gguf_write_end(gguf_writer *w)
{
    if (!w->f) return finch_error(FINCH_ERR_STATE, "GGUF writer: not writing");
    if (w->next != w->n_tensors) {
        fclose(w->f);
        w->f = NULL;
        remove(w->path);
        return finch_error(FINCH_ERR_STATE, "GGUF writer: %d of %d tensors written to %s", w->next, w->n_tensors, w->path);
    }
    FILE *f = w->f;
    w->f = NULL;
    int rc = finch_close_checked(f, w->path);
    if (rc) remove(w->path);
    return rc;
}
