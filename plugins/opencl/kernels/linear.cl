/* The pieces of the fused LoRA linear that are not GEMMs: the bias, and LoRA dropout applied
 * with the shared mask (element (i, j) of an [m, in] activation has index i * in + j). */

/* y[i, j] += bias[j] */
kernel void add_bias(long m, long n, int dt, BUF(y), long ldy, int bias_dt, BUF(bias))
{
    long j = get_global_id(0), i = get_global_id(1);
    if (j >= n || i >= m) return;
    long idx = i * ldy + j;
    store(AT(y), idx, dt, load(AT(y), idx, dt) + load(AT(bias), j, bias_dt));
}

/* out (f32, [m, in] contiguous) = drop(x) */
kernel void dropout_apply(long m, long in, int dt, BUF(x), long ldx, float p, ulong seed, BUF(out))
{
    long j = get_global_id(0), i = get_global_id(1);
    if (j >= in || i >= m) return;
    float keep = dropout_keep(seed, (ulong)(i * in + j), p) ? 1.0f / (1.0f - p) : 0.0f;
    ((global float *)AT(out))[i * in + j] = keep * load(AT(x), i * ldx + j, dt);
}

/* dx[i, j] += scale * drop'(t)[i, j], t f32 [m, in] contiguous */
kernel void dropout_accumulate(long m, long in, float p, ulong seed, float scale, BUF(t), int dt, BUF(dx),
                               long lddx)
{
    long j = get_global_id(0), i = get_global_id(1);
    if (j >= in || i >= m) return;
    float keep = dropout_keep(seed, (ulong)(i * in + j), p) ? 1.0f / (1.0f - p) : 0.0f;
    long idx = i * lddx + j;
    float v = scale * keep * ((const global float *)AT(t))[i * in + j];
    store(AT(dx), idx, dt, load(AT(dx), idx, dt) + v);
}
