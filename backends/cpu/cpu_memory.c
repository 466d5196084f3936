/* Dtypes, bounds-checked addresses, and the memory entries: alloc, free, read, write, copy, fill,
 * copy_2d, cast. A buffer is one 64-byte-aligned host allocation. */
#include "backends/cpu/cpu.h"

#include <inttypes.h>
#include <stdlib.h>

size_t cpu_dtype_size(finch_dtype t)
{
    switch (t) {
    case FINCH_DTYPE_F32: case FINCH_DTYPE_I32: return 4;
    case FINCH_DTYPE_BF16: case FINCH_DTYPE_F16: return 2;
    case FINCH_DTYPE_U8: return 1;
    case FINCH_DTYPE_NF4: return 0;
    }
    return 0;
}

const char *cpu_dtype_name(finch_dtype t)
{
    switch (t) {
    case FINCH_DTYPE_F32: return "f32";
    case FINCH_DTYPE_BF16: return "bf16";
    case FINCH_DTYPE_F16: return "f16";
    case FINCH_DTYPE_I32: return "i32";
    case FINCH_DTYPE_U8: return "u8";
    case FINCH_DTYPE_NF4: return "nf4";
    }
    return "unknown";
}

int cpu_check_float(finch_dtype t, const char *what)
{
    if (t == FINCH_DTYPE_F32 || t == FINCH_DTYPE_BF16 || t == FINCH_DTYPE_F16) return FINCH_OK;
    return finch_error(FINCH_ERR_INVALID_ARGUMENT, "cpu %s: dtype %s (%d) is not a float type (f32, bf16, f16)",
                       what, cpu_dtype_name(t), (int)t);
}

int cpu_oom(size_t bytes, const char *what)
{
    return finch_error(FINCH_ERR_OUT_OF_MEMORY, "cpu %s: out of memory allocating %zu bytes", what, bytes);
}

int cpu_span_opt(finch_dptr p, size_t bytes, const char *what, void **out)
{
    *out = NULL;
    if (!p.buf) return FINCH_OK;
    if (!p.buf->data && p.buf->size)
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "cpu %s: buffer handle is not a cpu buffer", what);
    if (p.offset > p.buf->size || bytes > p.buf->size - p.offset)
        return finch_error(FINCH_ERR_INVALID_ARGUMENT,
                           "cpu %s: offset %zu + %zu bytes is outside its buffer of %zu bytes", what, p.offset,
                           bytes, p.buf->size);
    *out = (char *)p.buf->data + p.offset;
    return FINCH_OK;
}

int cpu_span(finch_dptr p, size_t bytes, const char *what, void **out)
{
    if (!p.buf) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "cpu %s: required pointer is absent", what);
    return cpu_span_opt(p, bytes, what, out);
}

int cpu_matrix_batch(finch_dptr p, finch_dtype t, int64_t batch, int64_t stride, int64_t rows, int64_t cols,
                     int64_t ld, const char *what, void **out)
{
    *out = NULL;
    if (!p.buf) return FINCH_OK;
    size_t es = cpu_dtype_size(t);
    if (!es) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "cpu %s: dtype %s has no element size", what,
                                cpu_dtype_name(t));
    if (rows < 0 || cols < 0 || batch < 1 || stride < 0)
        return finch_error(FINCH_ERR_INVALID_ARGUMENT,
                           "cpu %s: bad shape (batch %" PRId64 ", rows %" PRId64 ", cols %" PRId64 ", stride %" PRId64 ")",
                           what, batch, rows, cols, stride);
    if (rows > 1 && ld < cols)
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "cpu %s: row stride %" PRId64 " < %" PRId64 " columns",
                           what, ld, cols);
    uint64_t elems = rows && cols ? (uint64_t)(rows - 1) * (uint64_t)ld + (uint64_t)cols : 0;
    if (elems) elems += (uint64_t)(batch - 1) * (uint64_t)stride;
    if (elems > (uint64_t)INT64_MAX / es)
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "cpu %s: extent overflows", what);
    return cpu_span_opt(p, (size_t)(elems * es), what, out);
}

int cpu_matrix_opt(finch_dptr p, finch_dtype t, int64_t rows, int64_t cols, int64_t ld, const char *what,
                   void **out)
{
    return cpu_matrix_batch(p, t, 1, 0, rows, cols, ld, what, out);
}

int cpu_matrix(finch_dptr p, finch_dtype t, int64_t rows, int64_t cols, int64_t ld, const char *what, void **out)
{
    if (!p.buf) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "cpu %s: required pointer is absent", what);
    return cpu_matrix_batch(p, t, 1, 0, rows, cols, ld, what, out);
}

int cpu_alloc(finch_plugin_device *dev, size_t bytes, finch_plugin_buffer **out)
{
    *out = NULL;
    finch_plugin_buffer *b = malloc(sizeof *b);
    if (!b) return cpu_oom(sizeof *b, "alloc");
    size_t rounded = (bytes + 63) & ~(size_t)63;
    if (rounded < bytes) {
        free(b);
        return cpu_oom(bytes, "alloc");
    }
    b->data = rounded ? aligned_alloc(64, rounded) : NULL;
    if (rounded && !b->data) {
        free(b);
        return cpu_oom(bytes, "alloc");
    }
    b->size = bytes;
    *out = b;
    return FINCH_OK;
}

void cpu_free(finch_plugin_device *dev, finch_plugin_buffer *buf)
{
    if (!buf) return;
    free(buf->data);
    free(buf);
}

int cpu_write(finch_plugin_device *dev, finch_plugin_stream *s, finch_dptr dst, const void *src, size_t bytes)
{
    void *p;
    int rc = cpu_span(dst, bytes, "write: dst", &p);
    if (rc) return rc;
    if (bytes && !src) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "cpu write: host source is NULL");
    if (bytes) memcpy(p, src, bytes);
    return FINCH_OK;
}

int cpu_read(finch_plugin_device *dev, finch_plugin_stream *s, finch_dptr src, void *dst, size_t bytes)
{
    void *p;
    int rc = cpu_span(src, bytes, "read: src", &p);
    if (rc) return rc;
    if (bytes && !dst) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "cpu read: host destination is NULL");
    if (bytes) memcpy(dst, p, bytes);
    return FINCH_OK;
}

int cpu_copy(finch_plugin_device *dev, finch_plugin_stream *s, finch_dptr dst, finch_dptr src, size_t bytes)
{
    void *d, *p;
    int rc = cpu_span(dst, bytes, "copy: dst", &d);
    if (!rc) rc = cpu_span(src, bytes, "copy: src", &p);
    if (rc) return rc;
    if (bytes) memmove(d, p, bytes);
    return FINCH_OK;
}

/* One fill, copy_2d or cast call, for the chunk bodies below. */
typedef struct fill_job {
    void *dst;
    int size;   /* 2 or 4 bytes an element */
    uint32_t bits;
} fill_job;

static void fill_range(void *ctx, int64_t i0, int64_t i1, int chunk)
{
    const fill_job *f = ctx;
    if (f->size == 4)
        for (int64_t i = i0; i < i1; i++) ((uint32_t *)f->dst)[i] = f->bits;
    else
        for (int64_t i = i0; i < i1; i++) ((uint16_t *)f->dst)[i] = (uint16_t)f->bits;
}

typedef struct copy_job {
    finch_dtype src_type, dst_type;
    const void *src;
    void *dst;
    int64_t ld_src, ld_dst, cols;   /* cast: cols is the element count */
} copy_job;

static void copy_rows(void *ctx, int64_t r0, int64_t r1, int chunk)
{
    const copy_job *c = ctx;
    size_t row_bytes = (size_t)c->cols * cpu_dtype_size(c->src_type);
    for (int64_t r = r0; r < r1; r++)
        memmove(cpu_at(c->dst_type, c->dst, r * c->ld_dst), cpu_at(c->src_type, c->src, r * c->ld_src), row_bytes);
}

enum { CAST_CHUNK = 1024 };

static void cast_chunks(void *ctx, int64_t c0, int64_t c1, int chunk)
{
    const copy_job *c = ctx;
    int64_t n = c->cols;
    for (int64_t ci = c0; ci < c1; ci++) {
        float buf[CAST_CHUNK];
        int64_t i0 = ci * CAST_CHUNK, len = n - i0 < CAST_CHUNK ? n - i0 : CAST_CHUNK;
        cpu_load(c->src_type, cpu_at(c->src_type, c->src, i0), len, buf);
        cpu_store(c->dst_type, buf, len, cpu_at(c->dst_type, c->dst, i0));
    }
}

int cpu_fill(finch_plugin_device *dev, finch_plugin_stream *s, finch_dptr dst, finch_dtype dtype, int64_t count,
             float value)
{
    if (count < 0) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "cpu fill: count %" PRId64 " < 0", count);
    if (dtype != FINCH_DTYPE_I32 && cpu_check_float(dtype, "fill")) return FINCH_ERR_INVALID_ARGUMENT;
    void *p;
    int rc = cpu_matrix(dst, dtype, 1, count, count, "fill: dst", &p);
    if (rc) return rc;
    if (dtype == FINCH_DTYPE_F32 || dtype == FINCH_DTYPE_I32) {
        uint32_t bits;
        if (dtype == FINCH_DTYPE_F32) {
            memcpy(&bits, &value, 4);
        } else {
            int32_t iv = (int32_t)value;
            memcpy(&bits, &iv, 4);
        }
        fill_job f = {p, 4, bits};
        cpu_parallel_for(count, count > (1 << 18), &f, fill_range);
    } else {
        fill_job f = {p, 2, dtype == FINCH_DTYPE_BF16 ? finch_f32_to_bf16(value) : finch_f32_to_f16(value)};
        cpu_parallel_for(count, count > (1 << 18), &f, fill_range);
    }
    return FINCH_OK;
}

int cpu_copy_2d(finch_plugin_device *dev, finch_plugin_stream *s, finch_dtype dtype, int64_t rows, int64_t cols,
                finch_dptr src, int64_t ld_src, finch_dptr dst, int64_t ld_dst)
{
    void *sp, *dp;
    int rc = cpu_matrix(src, dtype, rows, cols, ld_src, "copy_2d: src", &sp);
    if (!rc) rc = cpu_matrix(dst, dtype, rows, cols, ld_dst, "copy_2d: dst", &dp);
    if (rc) return rc;
    copy_job c = {dtype, dtype, sp, dp, ld_src, ld_dst, cols};
    cpu_parallel_for(rows, rows * cols > (1 << 18), &c, copy_rows);
    return FINCH_OK;
}

int cpu_copy_rows(finch_plugin_device *dev, finch_plugin_stream *s, finch_dtype dtype, int64_t n, int64_t cols, finch_dptr src,
                  int64_t ld_src, finch_dptr rows, finch_dptr dst, int64_t ld_dst)
{
    size_t es = cpu_dtype_size(dtype);
    if (!es) return finch_error(FINCH_ERR_UNSUPPORTED, "cpu copy_rows: dtype %s", cpu_dtype_name(dtype));
    if (n < 0 || cols < 0 || ld_src < cols || ld_dst < cols)
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "cpu copy_rows: %" PRId64 " x %" PRId64 " with row strides %" PRId64 ", %" PRId64,
                           n, cols, ld_src, ld_dst);
    void *sp, *ip;
    int rc = cpu_matrix(src, dtype, n, cols, ld_src, "copy_rows: src", &sp);
    if (!rc) rc = cpu_matrix(rows, FINCH_DTYPE_I32, 1, n, n, "copy_rows: rows", &ip);
    if (rc) return rc;
    const int32_t *ix = ip;
    /* The destination rows are data (a device could not report a bad one without waiting for it):
     * a row that would fall outside dst's buffer is skipped. */
    if (!dst.buf) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "cpu copy_rows: dst is absent");
    size_t row = (size_t)cols * es, size = dst.buf->size;
    for (int64_t i = 0; i < n; i++) {
        size_t off = (size_t)ix[i] * (size_t)ld_dst * es;
        if (ix[i] < 0 || dst.offset > size || row > size - dst.offset || off > size - dst.offset - row) continue;
        memmove((char *)dst.buf->data + dst.offset + off, cpu_at(dtype, sp, i * ld_src), row);
    }
    return FINCH_OK;
}

int cpu_cast(finch_plugin_device *dev, finch_plugin_stream *s, int64_t n, finch_dtype src_type, finch_dptr src,
             finch_dtype dst_type, finch_dptr dst)
{
    if (n < 0) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "cpu cast: n %" PRId64 " < 0", n);
    void *sp, *dp;
    int rc = cpu_matrix(src, src_type, 1, n, n, "cast: src", &sp);
    if (!rc) rc = cpu_matrix(dst, dst_type, 1, n, n, "cast: dst", &dp);
    if (rc) return rc;
    if (src_type == dst_type) {
        if (n) memmove(dp, sp, (size_t)n * cpu_dtype_size(src_type));
        return FINCH_OK;
    }
    if (cpu_check_float(src_type, "cast: src") || cpu_check_float(dst_type, "cast: dst"))
        return finch_error(FINCH_ERR_UNSUPPORTED, "cpu cast: %s -> %s is not supported (float types only)",
                           cpu_dtype_name(src_type), cpu_dtype_name(dst_type));
    copy_job c = {src_type, dst_type, sp, dp, 0, 0, n};
    cpu_parallel_for((n + CAST_CHUNK - 1) / CAST_CHUNK, n > (1 << 16), &c, cast_chunks);
    return FINCH_OK;
}
