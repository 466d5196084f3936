#include "core/tensor.h"
#include "finch/finch.h"

finch_tensor finch_tensor_cols(const finch_tensor *t, int64_t c0, int64_t n)
{
    finch_tensor v = *t;
    v.cols = n;
    v.data = finch_dptr_at(t->data, (size_t)c0 * finch_dtype_size(t->dtype));
    v.node_off = t->node_off + c0;
    return v;
}

finch_tensor finch_tensor_rows(const finch_tensor *t, int64_t r0, int64_t n)
{
    finch_tensor v = *t;
    v.rows = n;
    v.data = finch_dptr_at(t->data, (size_t)(r0 * t->ld) * finch_dtype_size(t->dtype));
    v.node_off = t->node_off + r0 * t->ld;
    return v;
}

finch_tensor finch_tensor_reshape(const finch_tensor *t, int64_t rows, int64_t cols)
{
    finch_tensor v = *t;
    v.rows = rows;
    v.cols = cols;
    v.ld = cols;
    return v;
}

size_t finch_dtype_size(finch_dtype t)
{
    switch (t) {
    case FINCH_DTYPE_F32: return 4;
    case FINCH_DTYPE_BF16: return 2;
    case FINCH_DTYPE_F16: return 2;
    case FINCH_DTYPE_I32: return 4;
    case FINCH_DTYPE_U8: return 1;
    case FINCH_DTYPE_NF4: return 0;
    }
    return 0;
}

const char *finch_dtype_name(finch_dtype t)
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
