/* Storage <-> f32 conversion: the one place that knows bf16 and f16 bit layouts (with cpu.h). */
#include "backends/cpu/cpu.h"

void cpu_load(finch_dtype t, const void *src, int64_t n, float *dst)
{
    if (t == FINCH_DTYPE_F32) {
        if ((const void *)dst != src) memmove(dst, src, (size_t)n * sizeof(float));
    } else if (t == FINCH_DTYPE_BF16) {
        const uint16_t *h = src;
        for (int64_t i = 0; i < n; i++) dst[i] = finch_bf16_to_f32(h[i]);
    } else {
        const uint16_t *h = src;
        for (int64_t i = 0; i < n; i++) dst[i] = finch_f16_to_f32(h[i]);
    }
}

void cpu_store(finch_dtype t, const float *src, int64_t n, void *dst)
{
    if (t == FINCH_DTYPE_F32) {
        if ((const void *)src != dst) memmove(dst, src, (size_t)n * sizeof(float));
    } else if (t == FINCH_DTYPE_BF16) {
        uint16_t *h = dst;
        for (int64_t i = 0; i < n; i++) h[i] = finch_f32_to_bf16(src[i]);
    } else {
        uint16_t *h = dst;
        for (int64_t i = 0; i < n; i++) h[i] = finch_f32_to_f16(src[i]);
    }
}

/* Rows of a block converted between t and f32 (to f32 when `load`), for the chunk body below. */
typedef struct block_job {
    finch_dtype t;
    int load;
    const void *src;
    void *dst;
    int64_t cols, ld_src, ld_dst;
} block_job;

static void convert_rows(void *ctx, int64_t r0, int64_t r1, int chunk)
{
    const block_job *b = ctx;
    for (int64_t r = r0; r < r1; r++) {
        if (b->load) cpu_load(b->t, cpu_at(b->t, b->src, r * b->ld_src), b->cols, (float *)b->dst + r * b->ld_dst);
        else cpu_store(b->t, (const float *)b->src + r * b->ld_src, b->cols, cpu_at(b->t, b->dst, r * b->ld_dst));
    }
}

const float *cpu_load_block(finch_dtype t, const void *src, int64_t rows, int64_t cols, int64_t ld,
                            float *scratch, int64_t *ld_out)
{
    if (t == FINCH_DTYPE_F32) {
        *ld_out = ld;
        return src;
    }
    block_job b = {t, 1, src, scratch, cols, ld, cols};
    cpu_parallel_for(rows, rows * cols > (1 << 16), &b, convert_rows);
    *ld_out = cols;
    return scratch;
}

float *cpu_out_block(finch_dtype t, void *dst, int64_t ld, float *scratch, int64_t *ld_out)
{
    if (t == FINCH_DTYPE_F32) {
        *ld_out = ld;
        return dst;
    }
    return scratch;
}

void cpu_store_block(finch_dtype t, const float *src, int64_t ld_src, int64_t rows, int64_t cols, void *dst,
                     int64_t ld)
{
    if (t == FINCH_DTYPE_F32 && (const void *)src == dst && ld_src == ld) return;
    block_job b = {t, 0, src, dst, cols, ld_src, ld};
    cpu_parallel_for(rows, rows * cols > (1 << 16), &b, convert_rows);
}
