/* Embedding entries. An id out of range is reported by the kernel through the stream's flag,
 * read back at the end of the entry (so these entries wait for the device). */
#include "ocl.h"

static int check_ids(finch_plugin_stream *s, const char *entry, int64_t vocab)
{
    int bad = 0;
    int rc = ocl_flag_read(s, &bad);
    if (!rc && bad)
        rc = ocl_fail(FINCH_ERR_INVALID_ARGUMENT, "opencl: %s: a token id is outside [0, %lld)", entry, (long long)vocab);
    return rc;
}

int ocl_embedding_forward(finch_plugin_device *dev, finch_plugin_stream *s, int64_t n_tokens, int64_t dim,
                          int64_t vocab, finch_dptr ids, finch_dtype table_type, finch_dptr table,
                          finch_dtype out_type, finch_dptr out, float scale)
{
    OCL_NEED(dev && n_tokens >= 0 && dim >= 0 && vocab >= 0, "opencl: embedding_forward: bad arguments");
    int rc = ocl_check_float_type(table_type, "embedding_forward table");
    if (!rc) rc = ocl_check_float_type(out_type, "embedding_forward output");
    if (rc || n_tokens == 0 || dim == 0) return rc;
    OCL_NEED(ids.buf && table.buf && out.buf, "opencl: embedding_forward: ids, table or out is absent");
    s = ocl_stream(dev, s);
    if ((rc = ocl_flag_clear(s))) return rc;
    ocl_args a = {0};
    ocl_arg_l(&a, n_tokens);
    ocl_arg_l(&a, dim);
    ocl_arg_l(&a, vocab);
    ocl_arg_ptr(&a, ocl_p(ids));
    ocl_arg_i(&a, table_type);
    ocl_arg_ptr(&a, ocl_p(table));
    ocl_arg_i(&a, out_type);
    ocl_arg_ptr(&a, ocl_p(out));
    ocl_arg_f(&a, scale);
    ocl_ptr flag = {s->flag, 0};
    ocl_arg_ptr(&a, flag);
    if ((rc = ocl_launch_2d(dev, s, OCL_K_embedding_forward, &a, dim, n_tokens))) return rc;
    return check_ids(s, "embedding_forward", vocab);
}

int ocl_embedding_backward(finch_plugin_device *dev, finch_plugin_stream *s, int64_t n_tokens, int64_t dim,
                           int64_t vocab, finch_dptr ids, finch_dtype dout_type, finch_dptr dout, finch_dptr dtable,
                           float scale)
{
    OCL_NEED(dev && n_tokens >= 0 && dim >= 0 && vocab >= 0, "opencl: embedding_backward: bad arguments");
    int rc = ocl_check_float_type(dout_type, "embedding_backward");
    if (rc || n_tokens == 0 || dim == 0) return rc;
    OCL_NEED(ids.buf && dout.buf && dtable.buf, "opencl: embedding_backward: ids, dout or dtable is absent");
    s = ocl_stream(dev, s);
    if ((rc = ocl_flag_clear(s))) return rc;
    ocl_args a = {0};
    ocl_arg_l(&a, n_tokens);
    ocl_arg_l(&a, dim);
    ocl_arg_l(&a, vocab);
    ocl_arg_ptr(&a, ocl_p(ids));
    ocl_arg_i(&a, dout_type);
    ocl_arg_ptr(&a, ocl_p(dout));
    ocl_arg_ptr(&a, ocl_p(dtable));
    ocl_arg_f(&a, scale);
    ocl_ptr flag = {s->flag, 0};
    ocl_arg_ptr(&a, flag);
    if ((rc = ocl_launch_1d(dev, s, OCL_K_embedding_backward, &a, dim))) return rc;
    return check_ids(s, "embedding_backward", vocab);
}
