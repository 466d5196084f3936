/* Reductions. sum_squares is two-stage: every work-group writes a partial sum, then a single
 * work-group adds the partials to the result. Column sums (bias gradient) give one work-item per
 * column walking the rows, so no two work-items ever add into the same float. */

kernel void sum_squares_partial(long n, int dt, BUF(x), BUF(partial))
{
    local float red[FINCH_ROW_WG];
    float acc = 0.0f;
    for (long i = get_global_id(0); i < n; i += get_global_size(0)) {
        float v = load(AT(x), i, dt);
        acc += v * v;
    }
    float total = group_sum(red, acc);
    if (get_local_id(0) == 0) ((global float *)AT(partial))[get_group_id(0)] = total;
}

/* out[k] += sum over i of in[i * stride + k] for k < width, i < n (one work-group). */
kernel void sum_strided(long n, int stride, int width, BUF(in), BUF(out))
{
    local float red[FINCH_ROW_WG];
    const global float *p = (const global float *)AT(in);
    for (int k = 0; k < width; k++) {
        float acc = 0.0f;
        for (long i = get_local_id(0); i < n; i += get_local_size(0)) acc += p[i * stride + k];
        float total = group_sum(red, acc);
        if (get_local_id(0) == 0) ((global float *)AT(out))[k] += total;
    }
}

/* dbias[j] += sum over rows of dy[i, j]. */
kernel void column_sum(long rows, long cols, int dt, BUF(dy), long lddy, BUF(out))
{
    long j = get_global_id(0);
    if (j >= cols) return;
    float acc = 0.0f;
    for (long i = 0; i < rows; i++) acc += load(AT(dy), i * lddy + j, dt);
    ((global float *)AT(out))[j] += acc;
}
