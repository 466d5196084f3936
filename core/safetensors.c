/* safetensors: mmap'd reader with a fully validated header, sharded sets, and an atomic writer. */
#include "core/safetensors.h"
#include "core/error.h"
#include "core/half.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define ST_MAX_HEADER (100u << 20) /* 100 MiB, as the reference implementation */

struct st_file {
    char *path;
    void *map;
    size_t map_size;
    st_tensor *tensors;     /* sorted by name */
    int count;
    char **meta_keys, **meta_values;
    int meta_count;
};

static const struct { const char *name; st_dtype dtype; size_t size; } st_dtypes[] = {
    {"F64", ST_F64, 8}, {"F32", ST_F32, 4}, {"F16", ST_F16, 2}, {"BF16", ST_BF16, 2},
    {"I64", ST_I64, 8}, {"I32", ST_I32, 4}, {"I16", ST_I16, 2}, {"I8", ST_I8, 1},
    {"U8", ST_U8, 1}, {"BOOL", ST_BOOL, 1}, {"F8_E4M3", ST_F8_E4M3, 1}, {"F8_E5M2", ST_F8_E5M2, 1},
};
#define ST_N_DTYPES (int)(sizeof st_dtypes / sizeof st_dtypes[0])

size_t st_dtype_size(st_dtype t)
{
    for (int i = 0; i < ST_N_DTYPES; i++)
        if (st_dtypes[i].dtype == t) return st_dtypes[i].size;
    return 0;
}

const char *st_dtype_name(st_dtype t)
{
    for (int i = 0; i < ST_N_DTYPES; i++)
        if (st_dtypes[i].dtype == t) return st_dtypes[i].name;
    return "?";
}

static int st_dtype_parse(const char *s, st_dtype *out)
{
    for (int i = 0; i < ST_N_DTYPES; i++)
        if (!strcmp(st_dtypes[i].name, s)) { *out = st_dtypes[i].dtype; return 1; }
    return 0;
}

static int cmp_tensor_name(const void *a, const void *b)
{
    return strcmp(((const st_tensor *)a)->name, ((const st_tensor *)b)->name);
}

static int cmp_tensor_offset(const void *a, const void *b)
{
    const st_tensor *x = *(const st_tensor *const *)a, *y = *(const st_tensor *const *)b;
    return x->data < y->data ? -1 : x->data > y->data;
}

void st_close(st_file *f)
{
    if (!f) return;
    for (int i = 0; i < f->count; i++) free((char *)f->tensors[i].name);
    for (int i = 0; i < f->meta_count; i++) { free(f->meta_keys[i]); free(f->meta_values[i]); }
    free(f->meta_keys);
    free(f->meta_values);
    free(f->tensors);
    if (f->map) munmap(f->map, f->map_size);
    free(f->path);
    free(f);
}

/* Reads one tensor entry of the header; returns FINCH_OK or a format error naming the tensor. */
static int parse_entry(const char *path, const cJSON *e, const unsigned char *data, size_t data_size, st_tensor *t)
{
    const char *name = e->string;
    if (!cJSON_IsObject(e)) return finch_error(FINCH_ERR_FORMAT, "%s: tensor '%s': header entry is not an object", path, name);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *offs = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!cJSON_IsString(dt)) return finch_error(FINCH_ERR_FORMAT, "%s: tensor '%s': missing string field 'dtype'", path, name);
    if (!st_dtype_parse(dt->valuestring, &t->dtype))
        return finch_error(FINCH_ERR_FORMAT, "%s: tensor '%s': unknown dtype '%s'", path, name, dt->valuestring);
    if (!cJSON_IsArray(shape)) return finch_error(FINCH_ERR_FORMAT, "%s: tensor '%s': missing array field 'shape'", path, name);
    int nd = cJSON_GetArraySize(shape);
    if (nd > ST_MAX_DIMS) return finch_error(FINCH_ERR_FORMAT, "%s: tensor '%s': %d dimensions (at most %d supported)", path, name, nd, ST_MAX_DIMS);
    t->ndim = nd;
    uint64_t numel = 1;
    for (int i = 0; i < nd; i++) {
        const cJSON *d = cJSON_GetArrayItem(shape, i);
        if (!cJSON_IsNumber(d) || d->valuedouble < 0 || d->valuedouble != (double)(int64_t)d->valuedouble || d->valuedouble > 9e15)
            return finch_error(FINCH_ERR_FORMAT, "%s: tensor '%s': shape[%d] is not a non-negative integer", path, name, i);
        t->shape[i] = (int64_t)d->valuedouble;
        if (t->shape[i] != 0 && numel > UINT64_MAX / (uint64_t)t->shape[i])
            return finch_error(FINCH_ERR_FORMAT, "%s: tensor '%s': shape overflows", path, name);
        numel *= (uint64_t)t->shape[i];
    }
    t->numel = (int64_t)numel;
    if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2)
        return finch_error(FINCH_ERR_FORMAT, "%s: tensor '%s': 'data_offsets' must be [begin, end]", path, name);
    double b = cJSON_GetArrayItem(offs, 0)->valuedouble, en = cJSON_GetArrayItem(offs, 1)->valuedouble;
    if (!cJSON_IsNumber(cJSON_GetArrayItem(offs, 0)) || !cJSON_IsNumber(cJSON_GetArrayItem(offs, 1)) || b < 0 || en < b ||
        b != (double)(uint64_t)b || en != (double)(uint64_t)en)
        return finch_error(FINCH_ERR_FORMAT, "%s: tensor '%s': invalid data_offsets [%.0f, %.0f]", path, name, b, en);
    if (en > (double)data_size)
        return finch_error(FINCH_ERR_FORMAT, "%s: tensor '%s': data_offsets [%.0f, %.0f] run past the end of the data (%zu bytes; file truncated?)",
                           path, name, b, en, data_size);
    size_t es = st_dtype_size(t->dtype);
    t->nbytes = (size_t)(en - b);
    if (numel > SIZE_MAX / es || numel * es != t->nbytes)
        return finch_error(FINCH_ERR_FORMAT, "%s: tensor '%s': %s shape holds %llu bytes but data_offsets span %zu",
                           path, name, dt->valuestring, (unsigned long long)(numel * es), t->nbytes);
    t->data = data + (size_t)b;
    return FINCH_OK;
}

static int parse_metadata(const char *path, const cJSON *m, st_file *f)
{
    if (!cJSON_IsObject(m)) return finch_error(FINCH_ERR_FORMAT, "%s: '__metadata__' is not an object", path);
    int n = cJSON_GetArraySize(m);
    f->meta_keys = calloc((size_t)n + 1, sizeof(char *));
    f->meta_values = calloc((size_t)n + 1, sizeof(char *));
    if (!f->meta_keys || !f->meta_values) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "%s: out of memory", path);
    const cJSON *e;
    cJSON_ArrayForEach(e, m) {
        if (!cJSON_IsString(e)) return finch_error(FINCH_ERR_FORMAT, "%s: metadata '%s' is not a string", path, e->string);
        f->meta_keys[f->meta_count] = strdup(e->string);
        f->meta_values[f->meta_count] = strdup(e->valuestring);
        if (!f->meta_keys[f->meta_count] || !f->meta_values[f->meta_count])
            return finch_error(FINCH_ERR_OUT_OF_MEMORY, "%s: out of memory", path);
        f->meta_count++;
    }
    return FINCH_OK;
}

static int parse_header(st_file *f, const char *json, size_t json_len, const unsigned char *data, size_t data_size)
{
    cJSON *root = cJSON_ParseWithLength(json, json_len);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return finch_error(FINCH_ERR_FORMAT, "%s: header is not a JSON object", f->path);
    }
    int rc = FINCH_OK, n = cJSON_GetArraySize(root);
    f->tensors = calloc((size_t)n + 1, sizeof(st_tensor));
    if (!f->tensors) rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "%s: out of memory", f->path);
    const cJSON *e;
    cJSON_ArrayForEach(e, root) {
        if (rc) break;
        if (!strcmp(e->string, "__metadata__")) { rc = parse_metadata(f->path, e, f); continue; }
        st_tensor *t = &f->tensors[f->count];
        rc = parse_entry(f->path, e, data, data_size, t);
        if (rc) break;
        if (!(t->name = strdup(e->string))) { rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "%s: out of memory", f->path); break; }
        f->count++;
    }
    cJSON_Delete(root);
    if (rc) return rc;

    qsort(f->tensors, (size_t)f->count, sizeof(st_tensor), cmp_tensor_name);
    for (int i = 1; i < f->count; i++)
        if (!strcmp(f->tensors[i - 1].name, f->tensors[i].name))
            return finch_error(FINCH_ERR_FORMAT, "%s: tensor '%s' appears twice in the header", f->path, f->tensors[i].name);

    /* Data regions must not overlap. */
    const st_tensor **by_off = malloc(((size_t)f->count + 1) * sizeof *by_off);
    if (!by_off) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "%s: out of memory", f->path);
    for (int i = 0; i < f->count; i++) by_off[i] = &f->tensors[i];
    qsort(by_off, (size_t)f->count, sizeof *by_off, cmp_tensor_offset);
    for (int i = 1; i < f->count; i++) {
        const st_tensor *a = by_off[i - 1], *b = by_off[i];
        if ((const unsigned char *)a->data + a->nbytes > (const unsigned char *)b->data) {
            rc = finch_error(FINCH_ERR_FORMAT, "%s: data of tensors '%s' and '%s' overlap", f->path, a->name, b->name);
            break;
        }
    }
    free(by_off);
    return rc;
}

int st_open(const char *path, st_file **out)
{
    *out = NULL;
    st_file *f = calloc(1, sizeof *f);
    if (!f || !(f->path = strdup(path))) { free(f); return finch_error(FINCH_ERR_OUT_OF_MEMORY, "%s: out of memory", path); }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        st_close(f);
        return finch_error(FINCH_ERR_IO, "%s: cannot open: %s", path, strerror(e));
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        st_close(f);
        return finch_error(FINCH_ERR_IO, "%s: not a regular file", path);
    }
    size_t size = (size_t)sb.st_size;
    if (size < 8) {
        close(fd);
        st_close(f);
        return finch_error(FINCH_ERR_FORMAT, "%s: %zu bytes is too short for a safetensors file (truncated?)", path, size);
    }
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (map == MAP_FAILED) {
        st_close(f);
        return finch_error(FINCH_ERR_IO, "%s: cannot map: %s", path, strerror(e));
    }
    f->map = map;
    f->map_size = size;

    const unsigned char *bytes = map;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | bytes[i];
    if (hlen > ST_MAX_HEADER || hlen > size - 8) {
        int rc = finch_error(FINCH_ERR_FORMAT, "%s: header length %llu exceeds the file size %zu (truncated or not safetensors)",
                             path, (unsigned long long)hlen, size);
        st_close(f);
        return rc;
    }
    int rc = parse_header(f, (const char *)bytes + 8, (size_t)hlen, bytes + 8 + hlen, size - 8 - (size_t)hlen);
    if (rc) { st_close(f); return rc; }
    *out = f;
    return FINCH_OK;
}

const char *st_path(const st_file *f) { return f->path; }
int st_count(const st_file *f) { return f->count; }
const st_tensor *st_at(const st_file *f, int i) { return (i >= 0 && i < f->count) ? &f->tensors[i] : NULL; }

const st_tensor *st_find(const st_file *f, const char *name)
{
    st_tensor key = {.name = name};
    return bsearch(&key, f->tensors, (size_t)f->count, sizeof(st_tensor), cmp_tensor_name);
}

const char *st_metadata(const st_file *f, const char *key)
{
    for (int i = 0; i < f->meta_count; i++)
        if (!strcmp(f->meta_keys[i], key)) return f->meta_values[i];
    return NULL;
}

/* ---- sets of files ------------------------------------------------------------------------ */

struct st_set {
    st_file **files;
    int n_files;
    const st_tensor **tensors;   /* sorted by name, across files */
    int *file_of;                /* parallel to tensors */
    int count;
};

void st_set_close(st_set *s)
{
    if (!s) return;
    for (int i = 0; i < s->n_files; i++) st_close(s->files[i]);
    free(s->files);
    free(s->tensors);
    free(s->file_of);
    free(s);
}

static int cmp_tensor_ptr_name(const void *a, const void *b)
{
    return strcmp((*(const st_tensor *const *)a)->name, (*(const st_tensor *const *)b)->name);
}

/* Indexes all tensors of all files; a name present in two shards is an error. */
static int st_set_index(st_set *s)
{
    int total = 0;
    for (int i = 0; i < s->n_files; i++) total += st_count(s->files[i]);
    s->tensors = malloc(((size_t)total + 1) * sizeof *s->tensors);
    s->file_of = malloc(((size_t)total + 1) * sizeof *s->file_of);
    if (!s->tensors || !s->file_of) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of memory indexing safetensors");
    for (int i = 0; i < s->n_files; i++)
        for (int j = 0; j < st_count(s->files[i]); j++) s->tensors[s->count++] = st_at(s->files[i], j);
    qsort(s->tensors, (size_t)s->count, sizeof *s->tensors, cmp_tensor_ptr_name);
    for (int i = 0; i < s->count; i++) {
        if (i > 0 && !strcmp(s->tensors[i - 1]->name, s->tensors[i]->name))
            return finch_error(FINCH_ERR_FORMAT, "tensor '%s' is stored in two shards", s->tensors[i]->name);
        s->file_of[i] = -1;
        for (int k = 0; k < s->n_files && s->file_of[i] < 0; k++)
            if (st_find(s->files[k], s->tensors[i]->name) == s->tensors[i]) s->file_of[i] = k;
    }
    return FINCH_OK;
}

static int st_set_add(st_set *s, const char *path)
{
    st_file **nf = realloc(s->files, ((size_t)s->n_files + 1) * sizeof *nf);
    if (!nf) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of memory");
    s->files = nf;
    int rc = st_open(path, &s->files[s->n_files]);
    if (rc) return rc;
    s->n_files++;
    return FINCH_OK;
}

int st_set_open_file(const char *path, st_set **out)
{
    *out = NULL;
    st_set *s = calloc(1, sizeof *s);
    if (!s) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of memory");
    int rc = st_set_add(s, path);
    if (!rc) rc = st_set_index(s);
    if (rc) { st_set_close(s); return rc; }
    *out = s;
    return FINCH_OK;
}

static char *read_text_file(const char *path, size_t max_size, int *rc)
{
    FILE *fp = fopen(path, "rb");
    if (!fp) { *rc = finch_error(FINCH_ERR_IO, "%s: cannot open: %s", path, strerror(errno)); return NULL; }
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len + 4096 + 1 > cap) {
            cap = cap ? cap * 2 : 8192;
            char *nb = realloc(buf, cap);
            if (!nb) { free(buf); fclose(fp); *rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "%s: out of memory", path); return NULL; }
            buf = nb;
        }
        size_t got = fread(buf + len, 1, 4096, fp);
        len += got;
        if (len > max_size) { free(buf); fclose(fp); *rc = finch_error(FINCH_ERR_FORMAT, "%s: file too large", path); return NULL; }
        if (got < 4096) break;
    }
    int err = ferror(fp);
    fclose(fp);
    if (err) { free(buf); *rc = finch_error(FINCH_ERR_IO, "%s: read error", path); return NULL; }
    buf[len] = 0;
    *rc = FINCH_OK;
    return buf;
}

/* Opens the shards named by model.safetensors.index.json's weight_map and checks that every
 * tensor it names is in the shard it names. */
static int st_set_open_index(st_set *s, const char *dir, const char *index_path)
{
    int rc;
    char *text = read_text_file(index_path, 64u << 20, &rc);
    if (!text) return rc;
    cJSON *root = cJSON_Parse(text);
    free(text);
    const cJSON *map = root ? cJSON_GetObjectItemCaseSensitive(root, "weight_map") : NULL;
    if (!cJSON_IsObject(map)) {
        cJSON_Delete(root);
        return finch_error(FINCH_ERR_FORMAT, "%s: not JSON with a 'weight_map' object", index_path);
    }
    /* distinct shard names, in order of first appearance */
    const cJSON *e;
    char **names = NULL;
    int n_names = 0;
    rc = FINCH_OK;
    cJSON_ArrayForEach(e, map) {
        if (!cJSON_IsString(e) || strchr(e->valuestring, '/') || !strcmp(e->valuestring, "..")) {
            rc = finch_error(FINCH_ERR_FORMAT, "%s: weight_map['%s'] is not a shard file name", index_path, e->string);
            break;
        }
        int seen = 0;
        for (int i = 0; i < n_names && !seen; i++) seen = !strcmp(names[i], e->valuestring);
        if (seen) continue;
        char **nn = realloc(names, ((size_t)n_names + 1) * sizeof *nn);
        if (!nn) { rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of memory"); break; }
        names = nn;
        names[n_names++] = e->valuestring;
    }
    for (int i = 0; i < n_names && !rc; i++) {
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        rc = st_set_add(s, path);
    }
    if (!rc) rc = st_set_index(s);
    if (!rc) {
        cJSON_ArrayForEach(e, map) {
            const char *file = st_set_file_of(s, e->string);
            const char *slash = file ? strrchr(file, '/') : NULL;
            if (!file || strcmp(slash ? slash + 1 : file, e->valuestring)) {
                rc = finch_error(FINCH_ERR_FORMAT, "%s: tensor '%s' is listed in shard '%s' but not stored there",
                                 index_path, e->string, e->valuestring);
                break;
            }
        }
    }
    free(names);
    cJSON_Delete(root);
    return rc;
}

int st_set_open_dir(const char *dir, st_set **out)
{
    *out = NULL;
    char index_path[PATH_MAX], single[PATH_MAX];
    snprintf(index_path, sizeof index_path, "%s/model.safetensors.index.json", dir);
    snprintf(single, sizeof single, "%s/model.safetensors", dir);
    struct stat sb;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return finch_error(FINCH_ERR_IO, "%s: not a directory", dir);
    if (access(single, F_OK) == 0 && access(index_path, F_OK) != 0) return st_set_open_file(single, out);
    if (access(index_path, F_OK) != 0)
        return finch_error(FINCH_ERR_IO, "%s: no model.safetensors or model.safetensors.index.json", dir);
    st_set *s = calloc(1, sizeof *s);
    if (!s) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of memory");
    int rc = st_set_open_index(s, dir, index_path);
    if (rc) { st_set_close(s); return rc; }
    *out = s;
    return FINCH_OK;
}

int st_set_count(const st_set *s) { return s->count; }
const st_tensor *st_set_at(const st_set *s, int i) { return (i >= 0 && i < s->count) ? s->tensors[i] : NULL; }

static int st_set_lookup(const st_set *s, const char *name)
{
    int lo = 0, hi = s->count - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2, c = strcmp(s->tensors[mid]->name, name);
        if (!c) return mid;
        if (c < 0) lo = mid + 1; else hi = mid - 1;
    }
    return -1;
}

const st_tensor *st_set_find(const st_set *s, const char *name)
{
    int i = st_set_lookup(s, name);
    return i < 0 ? NULL : s->tensors[i];
}

const char *st_set_file_of(const st_set *s, const char *name)
{
    int i = st_set_lookup(s, name);
    return (i < 0 || s->file_of[i] < 0) ? NULL : st_path(s->files[s->file_of[i]]);
}

/* ---- conversions ---------------------------------------------------------------------------- */

int st_to_f32(const st_tensor *t, float *dst)
{
    const unsigned char *p = t->data;
    switch (t->dtype) {
    case ST_F32: memcpy(dst, p, (size_t)t->numel * 4); return FINCH_OK;
    case ST_F64:
        for (int64_t i = 0; i < t->numel; i++) { double d; memcpy(&d, p + 8 * i, 8); dst[i] = (float)d; }
        return FINCH_OK;
    case ST_F16:
        for (int64_t i = 0; i < t->numel; i++) { uint16_t h; memcpy(&h, p + 2 * i, 2); dst[i] = finch_f16_to_f32(h); }
        return FINCH_OK;
    case ST_BF16:
        for (int64_t i = 0; i < t->numel; i++) { uint16_t h; memcpy(&h, p + 2 * i, 2); dst[i] = finch_bf16_to_f32(h); }
        return FINCH_OK;
    default:
        return finch_error(FINCH_ERR_UNSUPPORTED, "tensor '%s': dtype %s is not a float type", t->name, st_dtype_name(t->dtype));
    }
}

int st_to_i32(const st_tensor *t, int32_t *dst)
{
    const unsigned char *p = t->data;
    for (int64_t i = 0; i < t->numel; i++) {
        int64_t v;
        switch (t->dtype) {
        case ST_I64: memcpy(&v, p + 8 * i, 8); break;
        case ST_I32: { int32_t x; memcpy(&x, p + 4 * i, 4); v = x; break; }
        case ST_I16: { int16_t x; memcpy(&x, p + 2 * i, 2); v = x; break; }
        case ST_I8: v = (int8_t)p[i]; break;
        case ST_U8: v = p[i]; break;
        default:
            return finch_error(FINCH_ERR_UNSUPPORTED, "tensor '%s': dtype %s is not an integer type", t->name, st_dtype_name(t->dtype));
        }
        if (v < INT32_MIN || v > INT32_MAX)
            return finch_error(FINCH_ERR_FORMAT, "tensor '%s': element %lld = %lld does not fit in int32", t->name, (long long)i, (long long)v);
        dst[i] = (int32_t)v;
    }
    return FINCH_OK;
}

/* ---- writer ----------------------------------------------------------------------------------- */

static int write_all(FILE *fp, const void *p, size_t n) { return n == 0 || fwrite(p, 1, n, fp) == n; }

int st_write(const char *path, const st_entry *entries, int n, const char *const *metadata)
{
    cJSON *root = cJSON_CreateObject();
    int rc = root ? FINCH_OK : finch_error(FINCH_ERR_OUT_OF_MEMORY, "%s: out of memory", path);
    if (!rc && metadata && metadata[0]) {
        cJSON *m = cJSON_AddObjectToObject(root, "__metadata__");
        for (int i = 0; m && metadata[i] && metadata[i + 1]; i += 2) cJSON_AddStringToObject(m, metadata[i], metadata[i + 1]);
    }
    uint64_t offset = 0;
    for (int i = 0; i < n && !rc; i++) {
        const st_entry *e = &entries[i];
        if (e->ndim < 0 || e->ndim > ST_MAX_DIMS || st_dtype_size(e->dtype) == 0) {
            rc = finch_error(FINCH_ERR_INVALID_ARGUMENT, "%s: tensor '%s': bad dtype or rank", path, e->name);
            break;
        }
        uint64_t numel = 1;
        cJSON *t = cJSON_AddObjectToObject(root, e->name), *shape = cJSON_CreateArray(), *offs = cJSON_CreateArray();
        for (int d = 0; d < e->ndim; d++) {
            numel *= (uint64_t)e->shape[d];
            cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)e->shape[d]));
        }
        uint64_t nbytes = numel * st_dtype_size(e->dtype);
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)offset));
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)(offset + nbytes)));
        if (!t) { cJSON_Delete(shape); cJSON_Delete(offs); rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "%s: out of memory writing '%s'", path, e->name); break; }
        cJSON_AddStringToObject(t, "dtype", st_dtype_name(e->dtype));
        cJSON_AddItemToObject(t, "shape", shape);
        cJSON_AddItemToObject(t, "data_offsets", offs);
        offset += nbytes;
    }
    char *json = rc ? NULL : cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (rc) return rc;
    if (!json) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "%s: out of memory", path);

    size_t jlen = strlen(json), padded = (jlen + 7) & ~(size_t)7;
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    FILE *fp = fopen(tmp, "wb");
    if (!fp) {
        free(json);
        return finch_error(FINCH_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
    }
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    int ok = write_all(fp, len8, 8) && write_all(fp, json, jlen) && write_all(fp, "        ", padded - jlen);
    free(json);
    for (int i = 0; i < n && ok; i++) {
        uint64_t numel = 1;
        for (int d = 0; d < entries[i].ndim; d++) numel *= (uint64_t)entries[i].shape[d];
        ok = write_all(fp, entries[i].data, (size_t)numel * st_dtype_size(entries[i].dtype));
    }
    ok = (fflush(fp) == 0) && ok && fsync(fileno(fp)) == 0;
    ok = (fclose(fp) == 0) && ok;
    if (!ok || rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        return finch_error(FINCH_ERR_IO, "%s: write failed: %s", path, strerror(e));
    }
    return FINCH_OK;
}
