/* Element-wise kernels: one work-item per element (per row-element for 2-D views). */

kernel void fill(BUF(dst), int dt, long n, float value)
{
    long i = get_global_id(0);
    if (i < n) store(AT(dst), i, dt, value);
}

kernel void cast(long n, int src_dt, BUF(src), int dst_dt, BUF(dst))
{
    long i = get_global_id(0);
    if (i < n) store(AT(dst), i, dst_dt, load(AT(src), i, src_dt));
}

/* rows x cols elements of esize bytes, moved as raw bits (no conversion). */
kernel void copy_2d(int esize, long rows, long cols, BUF(src), long ld_src, BUF(dst), long ld_dst)
{
    long c = get_global_id(0), r = get_global_id(1);
    if (c >= cols || r >= rows) return;
    long si = r * ld_src + c, di = r * ld_dst + c;
    if (esize == 4) ((global uint *)AT(dst))[di] = ((const global uint *)AT(src))[si];
    else if (esize == 2) ((global ushort *)AT(dst))[di] = ((const global ushort *)AT(src))[si];
    else AT(dst)[di] = AT(src)[si];
}

/* Row r of src to row rows[r] of dst; rows outside the destination's dst_bytes are skipped. */
kernel void copy_rows(int esize, long n, long cols, BUF(src), long ld_src, BUF(rows), BUF(dst), long ld_dst, ulong dst_bytes)
{
    long c = get_global_id(0), r = get_global_id(1);
    if (c >= cols || r >= n) return;
    long to = ((const global int *)AT(rows))[r];
    if (to < 0 || (ulong)((to * ld_dst + cols) * esize) > dst_bytes) return;
    long si = r * ld_src + c, di = to * ld_dst + c;
    if (esize == 4) ((global uint *)AT(dst))[di] = ((const global uint *)AT(src))[si];
    else if (esize == 2) ((global ushort *)AT(dst))[di] = ((const global ushort *)AT(src))[si];
    else AT(dst)[di] = AT(src)[si];
}

kernel void axpby(long n, int dt, float alpha, BUF(x), float beta, int has_y, BUF(y), BUF(out))
{
    long i = get_global_id(0);
    if (i >= n) return;
    float v = alpha * load(AT(x), i, dt);
    if (has_y) v += beta * load(AT(y), i, dt);
    store(AT(out), i, dt, v);
}

#define ACT_SILU 0
#define ACT_GELU_ERF 1
#define ACT_GELU_TANH 2
#define ACT_RELU 3
#define ACT_SOFTCAP 4
#define SQRT_2_OVER_PI 0.7978845608028654f
#define INV_SQRT_2 0.7071067811865476f
#define INV_SQRT_2PI 0.3989422804014327f

float act_value(int act, float x, float param)
{
    switch (act) {
    case ACT_SILU: return x / (1.0f + exp(-x));
    case ACT_GELU_ERF: return 0.5f * x * (1.0f + erf(x * INV_SQRT_2));
    case ACT_GELU_TANH: return 0.5f * x * (1.0f + tanh(SQRT_2_OVER_PI * (x + 0.044715f * x * x * x)));
    case ACT_RELU: return x > 0.0f ? x : 0.0f;
    default: return param * tanh(x / param);
    }
}

float act_grad(int act, float x, float param)
{
    switch (act) {
    case ACT_SILU: {
        float s = 1.0f / (1.0f + exp(-x));
        return s * (1.0f + x * (1.0f - s));
    }
    case ACT_GELU_ERF:
        return 0.5f * (1.0f + erf(x * INV_SQRT_2)) + x * INV_SQRT_2PI * exp(-0.5f * x * x);
    case ACT_GELU_TANH: {
        float t = tanh(SQRT_2_OVER_PI * (x + 0.044715f * x * x * x));
        return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * SQRT_2_OVER_PI * (1.0f + 3.0f * 0.044715f * x * x);
    }
    case ACT_RELU: return x > 0.0f ? 1.0f : 0.0f;
    default: {
        float t = tanh(x / param);
        return 1.0f - t * t;
    }
    }
}

kernel void activation_forward(int act, float param, long n, int dt, BUF(x), BUF(y))
{
    long i = get_global_id(0);
    if (i < n) store(AT(y), i, dt, act_value(act, load(AT(x), i, dt), param));
}

kernel void activation_backward(int act, float param, long n, int dt, BUF(x), BUF(dy), BUF(dx))
{
    long i = get_global_id(0);
    if (i < n) store(AT(dx), i, dt, load(AT(dy), i, dt) * act_grad(act, load(AT(x), i, dt), param));
}

kernel void glu_forward(int act, long n, long dim, int dt, BUF(gate), long ldg, BUF(up), long ldu, BUF(out))
{
    long j = get_global_id(0), i = get_global_id(1);
    if (j >= dim || i >= n) return;
    float g = load(AT(gate), i * ldg + j, dt), u = load(AT(up), i * ldu + j, dt);
    store(AT(out), i * dim + j, dt, act_value(act, g, 0.0f) * u);
}

/* dgate/dup may alias gate/up: each work-item reads its element before writing it. */
kernel void glu_backward(int act, long n, long dim, int dt, BUF(gate), long ldg, BUF(up), long ldu,
                         BUF(dout), BUF(dgate), BUF(dup))
{
    long j = get_global_id(0), i = get_global_id(1);
    if (j >= dim || i >= n) return;
    float g = load(AT(gate), i * ldg + j, dt), u = load(AT(up), i * ldu + j, dt);
    float d = load(AT(dout), i * dim + j, dt);
    store(AT(dgate), i * ldg + j, dt, d * u * act_grad(act, g, 0.0f));
    store(AT(dup), i * ldu + j, dt, d * act_value(act, g, 0.0f));
}

kernel void adamw_step(long n, int param_dt, BUF(param), int has_master, BUF(master), BUF(grad), BUF(m),
                       BUF(v), float lr, float beta1, float beta2, float eps, float weight_decay,
                       float grad_scale, float bias_correction1, float bias_correction2)
{
    long i = get_global_id(0);
    if (i >= n) return;
    global float *pm = (global float *)AT(m), *pv = (global float *)AT(v);
    global float *p32 = (global float *)(has_master ? AT(master) : AT(param));
    float g = ((const global float *)AT(grad))[i] * grad_scale;
    float p = p32[i];
    p -= lr * weight_decay * p;
    float mi = beta1 * pm[i] + (1.0f - beta1) * g;
    float vi = beta2 * pv[i] + (1.0f - beta2) * g * g;
    p -= lr * (mi / bias_correction1) / (sqrt(vi / bias_correction2) + eps);
    pm[i] = mi;
    pv[i] = vi;
    p32[i] = p;
    if (has_master) store(AT(param), i, param_dt, p);
}

/* The nearest of 256 ascending map values: the number of midpoints below x (ties go down). */
uchar nearest_code(const global float *map, float x)
{
    int lo = 0, hi = 255;
    while (lo < hi) {
        int k = (lo + hi) / 2;
        if (x > (map[k] + map[k + 1]) * 0.5f) lo = k + 1;
        else hi = k;
    }
    return (uchar)lo;
}

/* One work-group per block of bs elements (plugin.h, finch_adamw8bit_desc). The moments are computed
 * twice, identically: once to update the parameter and find the block's new scales, once to encode
 * them against those scales (each element's codes are read and written by one work-item only).
 * decay = 1 - lr wd, step = lr / bias_correction1 and rbc2 = 1 / sqrt(bias_correction2) come from
 * the host, correctly rounded. */
kernel void adamw8bit_step(long n, long bs, int param_dt, BUF(param), int has_master, BUF(master), BUF(grad),
                           BUF(mc), BUF(vc), BUF(ma), BUF(va), BUF(mmap), BUF(vmap), float beta1, float beta2,
                           float eps, float grad_scale, float decay, float step, float rbc2)
{
#pragma OPENCL FP_CONTRACT OFF
    local float red[FINCH_ROW_WG];
    long b = get_group_id(0), i0 = b * bs, len = min(bs, n - i0);
    global float *p32 = (global float *)(has_master ? AT(master) : AT(param));
    const global float *g = (const global float *)AT(grad), *mmap = (const global float *)AT(mmap),
                       *vmap = (const global float *)AT(vmap);
    global uchar *mcode = AT(mc), *vcode = AT(vc);
    global float *mabs = (global float *)AT(ma), *vabs = (global float *)AT(va);
    float m_scale = mabs[b], v_scale = vabs[b], m_max = 0.0f, v_max = 0.0f;
    for (long k = get_local_id(0); k < len; k += get_local_size(0)) {
        long i = i0 + k;
        float gi = g[i] * grad_scale;
        float m = beta1 * (mmap[mcode[i]] * m_scale) + (1.0f - beta1) * gi;
        float v = beta2 * (vmap[vcode[i]] * v_scale) + (1.0f - beta2) * gi * gi;
        float p = p32[i] * decay - step * m / (sqrt(v) * rbc2 + eps);
        p32[i] = p;
        if (has_master) store(AT(param), i, param_dt, p);
        m_max = fmax(m_max, fabs(m));
        v_max = fmax(v_max, fabs(v));
    }
    m_max = group_max(red, m_max);
    v_max = group_max(red, v_max);
    for (long k = get_local_id(0); k < len; k += get_local_size(0)) {
        long i = i0 + k;
        float gi = g[i] * grad_scale;
        float m = beta1 * (mmap[mcode[i]] * m_scale) + (1.0f - beta1) * gi;
        float v = beta2 * (vmap[vcode[i]] * v_scale) + (1.0f - beta2) * gi * gi;
        mcode[i] = nearest_code(mmap, m_max > 0.0f ? m / m_max : 0.0f);
        vcode[i] = nearest_code(vmap, v_max > 0.0f ? v / v_max : 0.0f);
    }
    if (get_local_id(0) == 0) {
        mabs[b] = m_max;
        vabs[b] = v_max;
    }
}
