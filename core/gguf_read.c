/* A GGUF reader: maps the file and checks it as llama.cpp's loader does (magic, version 3, counts and
 * lengths inside the file, tensor names unique and short, known types, rows a whole number of blocks,
 * each offset the running padded sum in info order). Used by `finch export --verify` and the tests. */
#include "core/error.h"
#include "core/gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

struct gguf_file {
    char path[4096];
    const unsigned char *map;
    size_t size;
    gguf_kv *kvs;
    uint64_t n_kv;
    gguf_tensor *tensors;
    uint64_t n_tensors;
    uint32_t alignment;
};

typedef struct cursor {
    const gguf_file *f;
    size_t at;
} cursor;

static int need(cursor *c, size_t n, const char *what)
{
    if (n > c->f->size || c->at > c->f->size - n)
        return finch_error(FINCH_ERR_FORMAT, "%s: truncated at byte %zu reading %s", c->f->path, c->at, what);
    return FINCH_OK;
}

static int rd(cursor *c, void *dst, size_t n, const char *what)
{
    int rc = need(c, n, what);
    if (rc) return rc;
    memcpy(dst, c->f->map + c->at, n);
    c->at += n;
    return FINCH_OK;
}

static int rd_str(cursor *c, const char **s, uint64_t *len, const char *what)
{
    int rc = rd(c, len, 8, what);
    if (!rc) rc = need(c, (size_t)*len, what);
    if (rc) return rc;
    *s = (const char *)c->f->map + c->at;
    c->at += (size_t)*len;
    return FINCH_OK;
}

static size_t scalar_size(int type)
{
    switch (type) {
    case GGUF_U8: case GGUF_I8: case GGUF_BOOL: return 1;
    case GGUF_U16: case GGUF_I16: return 2;
    case GGUF_U32: case GGUF_I32: case GGUF_F32: return 4;
    case GGUF_U64: case GGUF_I64: case GGUF_F64: return 8;
    default: return 0;
    }
}

static int read_kv(cursor *c, gguf_kv *kv)
{
    const gguf_file *f = c->f;
    const char *key;
    uint64_t klen;
    uint32_t type;
    int rc = rd_str(c, &key, &klen, "a key");
    if (!rc && (klen == 0 || klen > 65535)) rc = finch_error(FINCH_ERR_FORMAT, "%s: a key of %llu bytes", f->path, (unsigned long long)klen);
    if (rc) return rc;
    if (!(kv->key = malloc((size_t)klen + 1))) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    memcpy(kv->key, key, (size_t)klen);
    kv->key[klen] = 0;
    if ((rc = rd(c, &type, 4, kv->key))) return rc;
    kv->type = (int)type;
    kv->n = 1;
    uint32_t elem = type;
    if (type == GGUF_ARRAY) {
        if ((rc = rd(c, &elem, 4, kv->key)) || (rc = rd(c, &kv->n, 8, kv->key))) return rc;
        if (elem == GGUF_ARRAY) return finch_error(FINCH_ERR_UNSUPPORTED, "%s: key '%s' holds nested arrays", f->path, kv->key);
        kv->arr_type = (int)elem;
    }
    kv->data = f->map + c->at;
    if (elem == GGUF_STRING) {
        if (type == GGUF_ARRAY) {
            if (kv->n > f->size / 8) return finch_error(FINCH_ERR_FORMAT, "%s: key '%s' claims %llu strings", f->path, kv->key, (unsigned long long)kv->n);
            if (!(kv->str_offsets = malloc((size_t)kv->n * 8 + 8))) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
        }
        for (uint64_t i = 0; i < kv->n; i++) {
            const char *s;
            uint64_t len;
            if (kv->str_offsets) kv->str_offsets[i] = (uint64_t)(f->map + c->at - kv->data);
            if ((rc = rd_str(c, &s, &len, kv->key))) return rc;
        }
        return FINCH_OK;
    }
    size_t es = scalar_size((int)elem);
    if (!es) return finch_error(FINCH_ERR_FORMAT, "%s: key '%s' has unknown value type %u", f->path, kv->key, elem);
    if (kv->n > f->size / es) return finch_error(FINCH_ERR_FORMAT, "%s: key '%s' claims %llu values", f->path, kv->key, (unsigned long long)kv->n);
    if ((rc = need(c, (size_t)kv->n * es, kv->key))) return rc;
    c->at += (size_t)kv->n * es;
    return FINCH_OK;
}

static int read_tensor_info(cursor *c, gguf_tensor *t)
{
    const gguf_file *f = c->f;
    const char *name;
    uint64_t len;
    uint32_t n_dims, type;
    int rc = rd_str(c, &name, &len, "a tensor name");
    if (rc) return rc;
    if (len == 0 || len > GGUF_MAX_NAME) return finch_error(FINCH_ERR_FORMAT, "%s: a tensor name of %llu bytes (at most %d)", f->path, (unsigned long long)len, GGUF_MAX_NAME);
    memcpy(t->name, name, (size_t)len);
    t->name[len] = 0;
    if ((rc = rd(c, &n_dims, 4, t->name))) return rc;
    if (n_dims < 1 || n_dims > GGUF_MAX_DIMS) return finch_error(FINCH_ERR_FORMAT, "%s: tensor '%s' has %u dimensions", f->path, t->name, n_dims);
    t->n_dims = (int)n_dims;
    t->numel = 1;
    for (int d = 0; d < GGUF_MAX_DIMS; d++) t->ne[d] = 1;
    for (uint32_t d = 0; d < n_dims; d++) {
        uint64_t ne;
        if ((rc = rd(c, &ne, 8, t->name))) return rc;
        if (ne == 0 || ne > ((uint64_t)1 << 40) || (uint64_t)t->numel > (((uint64_t)1 << 62) / ne))
            return finch_error(FINCH_ERR_FORMAT, "%s: tensor '%s' has a bad dimension %llu", f->path, t->name, (unsigned long long)ne);
        t->ne[d] = (int64_t)ne;
        t->numel *= (int64_t)ne;
    }
    if ((rc = rd(c, &type, 4, t->name))) return rc;
    t->type = (int)type;
    if (!gguf_type_known(t->type)) return finch_error(FINCH_ERR_UNSUPPORTED, "%s: tensor '%s' has type %u, which finch does not read", f->path, t->name, type);
    if (t->ne[0] % gguf_block_elems(t->type))
        return finch_error(FINCH_ERR_FORMAT, "%s: tensor '%s': %lld values per row is not a multiple of %s's block", f->path, t->name, (long long)t->ne[0], gguf_type_name(t->type));
    t->bytes = gguf_row_bytes(t->type, t->numel);
    uint64_t offset;
    if ((rc = rd(c, &offset, 8, t->name))) return rc;
    t->data = (const void *)(uintptr_t)offset; /* resolved once the data section is known */
    return FINCH_OK;
}

static int parse(gguf_file *f)
{
    cursor c = {f, 0};
    uint32_t magic, version;
    int rc = rd(&c, &magic, 4, "the magic");
    if (!rc && magic != 0x46554747u) rc = finch_error(FINCH_ERR_FORMAT, "%s: not a GGUF file", f->path);
    if (!rc) rc = rd(&c, &version, 4, "the version");
    if (!rc && version != GGUF_VERSION) rc = finch_error(FINCH_ERR_UNSUPPORTED, "%s: GGUF version %u (finch reads version 3)", f->path, version);
    if (!rc) rc = rd(&c, &f->n_tensors, 8, "the tensor count");
    if (!rc) rc = rd(&c, &f->n_kv, 8, "the key/value count");
    if (rc) return rc;
    if (f->n_kv > f->size / 13 || f->n_tensors > f->size / 29)
        return finch_error(FINCH_ERR_FORMAT, "%s: counts larger than the file (%llu key/values, %llu tensors)", f->path,
                           (unsigned long long)f->n_kv, (unsigned long long)f->n_tensors);
    f->kvs = calloc((size_t)f->n_kv + 1, sizeof *f->kvs);
    f->tensors = calloc((size_t)f->n_tensors + 1, sizeof *f->tensors);
    if (!f->kvs || !f->tensors) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    f->alignment = GGUF_ALIGNMENT;
    for (uint64_t i = 0; i < f->n_kv; i++) {
        if ((rc = read_kv(&c, &f->kvs[i]))) return rc;
        for (uint64_t j = 0; j < i; j++)
            if (!strcmp(f->kvs[j].key, f->kvs[i].key)) return finch_error(FINCH_ERR_FORMAT, "%s: key '%s' appears twice", f->path, f->kvs[i].key);
        if (!strcmp(f->kvs[i].key, "general.alignment")) {
            uint32_t a;
            if (f->kvs[i].type != GGUF_U32) return finch_error(FINCH_ERR_FORMAT, "%s: general.alignment must be a u32", f->path);
            memcpy(&a, f->kvs[i].data, 4);
            if (!a || (a & (a - 1))) return finch_error(FINCH_ERR_FORMAT, "%s: general.alignment %u is not a power of two", f->path, a);
            f->alignment = a;
        }
    }
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        if ((rc = read_tensor_info(&c, &f->tensors[i]))) return rc;
        for (uint64_t j = 0; j < i; j++)
            if (!strcmp(f->tensors[j].name, f->tensors[i].name)) return finch_error(FINCH_ERR_FORMAT, "%s: tensor '%s' appears twice", f->path, f->tensors[i].name);
    }
    size_t data_start = (c.at + f->alignment - 1) / f->alignment * f->alignment, expected = 0;
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        gguf_tensor *t = &f->tensors[i];
        size_t offset = (size_t)(uintptr_t)t->data;
        if (offset != expected)
            return finch_error(FINCH_ERR_FORMAT, "%s: tensor '%s' has offset %zu, expected %zu", f->path, t->name, offset, expected);
        if (data_start > f->size || t->bytes > f->size - data_start || offset > f->size - data_start - t->bytes)
            return finch_error(FINCH_ERR_FORMAT, "%s: tensor '%s' extends past the end of the file", f->path, t->name);
        t->data = f->map + data_start + offset;
        expected += (t->bytes + f->alignment - 1) / f->alignment * f->alignment;
    }
    return FINCH_OK;
}

int gguf_open(const char *path, gguf_file **out)
{
    *out = NULL;
    gguf_file *f = calloc(1, sizeof *f);
    if (!f) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    snprintf(f->path, sizeof f->path, "%s", path);
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        free(f);
        return finch_error(FINCH_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    }
    struct stat st;
    int rc = FINCH_OK;
    if (fstat(fd, &st)) rc = finch_error(FINCH_ERR_IO, "cannot stat %s: %s", path, strerror(errno));
    else if (st.st_size < 24) rc = finch_error(FINCH_ERR_FORMAT, "%s: too short for a GGUF file (%lld bytes)", path, (long long)st.st_size);
    if (!rc) {
        f->size = (size_t)st.st_size;
        void *p = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) rc = finch_error(FINCH_ERR_IO, "cannot map %s: %s", path, strerror(errno));
        else f->map = p;
    }
    close(fd);
    if (!rc) rc = parse(f);
    if (rc) {
        gguf_close(f);
        return rc;
    }
    *out = f;
    return FINCH_OK;
}

void gguf_close(gguf_file *f)
{
    if (!f) return;
    for (uint64_t i = 0; f->kvs && i < f->n_kv; i++) {
        free(f->kvs[i].key);
        free(f->kvs[i].str_offsets);
    }
    free(f->kvs);
    free(f->tensors);
    if (f->map) munmap((void *)f->map, f->size);
    free(f);
}

int gguf_tensor_count(const gguf_file *f) { return (int)f->n_tensors; }
const gguf_tensor *gguf_tensor_at(const gguf_file *f, int i) { return &f->tensors[i]; }
int gguf_kv_count(const gguf_file *f) { return (int)f->n_kv; }
const gguf_kv *gguf_kv_at(const gguf_file *f, int i) { return &f->kvs[i]; }
uint32_t gguf_data_alignment(const gguf_file *f) { return f->alignment; }

const gguf_tensor *gguf_find_tensor(const gguf_file *f, const char *name)
{
    for (uint64_t i = 0; i < f->n_tensors; i++)
        if (!strcmp(f->tensors[i].name, name)) return &f->tensors[i];
    return NULL;
}

const gguf_kv *gguf_find_kv(const gguf_file *f, const char *key)
{
    for (uint64_t i = 0; i < f->n_kv; i++)
        if (!strcmp(f->kvs[i].key, key)) return &f->kvs[i];
    return NULL;
}

static int find_scalar(const gguf_file *f, const char *key, const gguf_kv **kv)
{
    *kv = gguf_find_kv(f, key);
    if (!*kv) return finch_error(FINCH_ERR_FORMAT, "%s: key '%s' is missing", f->path, key);
    if ((*kv)->type == GGUF_ARRAY) return finch_error(FINCH_ERR_FORMAT, "%s: key '%s' is an array", f->path, key);
    return FINCH_OK;
}

int gguf_get_u32(const gguf_file *f, const char *key, uint32_t *out)
{
    const gguf_kv *kv;
    int rc = find_scalar(f, key, &kv);
    if (rc) return rc;
    uint64_t u = 0;
    int64_t s = 0;
    int is_signed = 0;
    switch (kv->type) {
    case GGUF_U8: u = kv->data[0]; break;
    case GGUF_U16: { uint16_t v; memcpy(&v, kv->data, 2); u = v; } break;
    case GGUF_U32: { uint32_t v; memcpy(&v, kv->data, 4); u = v; } break;
    case GGUF_U64: memcpy(&u, kv->data, 8); break;
    case GGUF_I8: s = (int8_t)kv->data[0]; is_signed = 1; break;
    case GGUF_I16: { int16_t v; memcpy(&v, kv->data, 2); s = v; is_signed = 1; } break;
    case GGUF_I32: { int32_t v; memcpy(&v, kv->data, 4); s = v; is_signed = 1; } break;
    case GGUF_I64: memcpy(&s, kv->data, 8); is_signed = 1; break;
    default: return finch_error(FINCH_ERR_FORMAT, "%s: key '%s' is not an integer", f->path, key);
    }
    if (is_signed) {
        if (s < 0) return finch_error(FINCH_ERR_FORMAT, "%s: key '%s' is negative", f->path, key);
        u = (uint64_t)s;
    }
    if (u > UINT32_MAX) return finch_error(FINCH_ERR_FORMAT, "%s: key '%s' does not fit 32 bits", f->path, key);
    *out = (uint32_t)u;
    return FINCH_OK;
}

int gguf_get_f32(const gguf_file *f, const char *key, float *out)
{
    const gguf_kv *kv;
    int rc = find_scalar(f, key, &kv);
    if (rc) return rc;
    if (kv->type == GGUF_F32) memcpy(out, kv->data, 4);
    else if (kv->type == GGUF_F64) {
        double d;
        memcpy(&d, kv->data, 8);
        *out = (float)d;
    } else return finch_error(FINCH_ERR_FORMAT, "%s: key '%s' is not a float", f->path, key);
    return FINCH_OK;
}

int gguf_get_bool(const gguf_file *f, const char *key, int *out)
{
    const gguf_kv *kv;
    int rc = find_scalar(f, key, &kv);
    if (rc) return rc;
    if (kv->type != GGUF_BOOL) return finch_error(FINCH_ERR_FORMAT, "%s: key '%s' is not a bool", f->path, key);
    *out = kv->data[0] != 0;
    return FINCH_OK;
}

int gguf_get_str(const gguf_file *f, const char *key, const char **s, size_t *len)
{
    const gguf_kv *kv;
    int rc = find_scalar(f, key, &kv);
    if (rc) return rc;
    if (kv->type != GGUF_STRING) return finch_error(FINCH_ERR_FORMAT, "%s: key '%s' is not a string", f->path, key);
    uint64_t n;
    memcpy(&n, kv->data, 8);
    *s = (const char *)kv->data + 8;
    *len = (size_t)n;
    return FINCH_OK;
}

void gguf_kv_arr_str(const gguf_kv *kv, uint64_t i, const char **s, size_t *len)
{
    const unsigned char *p = kv->data + kv->str_offsets[i];
    uint64_t n;
    memcpy(&n, p, 8);
    *s = (const char *)p + 8;
    *len = (size_t)n;
}

int gguf_tensor_f32(const gguf_tensor *t, float *dst)
{
    gguf_dequantize(t->type, t->data, t->numel, dst);
    return FINCH_OK;
}
