/* Helpers every kernel uses. Storage may be f32, bf16 (ushort, converted by hand with
 * round-to-nearest-even), f16 (vload_half/vstore_half_rte) or i32; arithmetic is always f32.
 * A tensor argument is a (buffer, byte offset) pair: BUF(x) declares it, AT(x) is its start. */
#define DT_F32 0
#define DT_BF16 1
#define DT_F16 2
#define DT_I32 3
#define DT_NF4 5
#define IGNORE_INDEX (-100)

#define BUF(name) global uchar *name##_buf, ulong name##_off
#define AT(name) (name##_buf + name##_off)

float bf16_to_f32(ushort h)
{
    return as_float((uint)h << 16);
}

ushort f32_to_bf16(float f)
{
    uint u = as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (ushort)((u >> 16) | 0x40u); /* NaN stays NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (ushort)(u >> 16);
}

float load(const global uchar *p, long i, int dt)
{
    if (dt == DT_F32) return ((const global float *)p)[i];
    if (dt == DT_BF16) return bf16_to_f32(((const global ushort *)p)[i]);
    if (dt == DT_F16) return vload_half((size_t)i, (const global half *)p);
    return (float)((const global int *)p)[i];
}

void store(global uchar *p, long i, int dt, float v)
{
    if (dt == DT_F32) ((global float *)p)[i] = v;
    else if (dt == DT_BF16) ((global ushort *)p)[i] = f32_to_bf16(v);
    else if (dt == DT_F16) vstore_half_rte(v, (size_t)i, (global half *)p);
    else ((global int *)p)[i] = (int)v;
}

/* finch_dropout_keep() of plugin.h, bit for bit: splitmix64 of seed + index, top 24 bits vs p. */
int dropout_keep(ulong seed, ulong index, float p)
{
    ulong z = seed + index * 0x9E3779B97F4A7C15UL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
    z ^= z >> 31;
    return (float)(z >> 40) * (1.0f / 16777216.0f) >= p;
}

/* Sum / max of one value per work-item over the work-group (size a power of two); red is a
 * local array of get_local_size(0) floats. Every work-item gets the result. */
float group_sum(local float *red, float v)
{
    int l = (int)get_local_id(0);
    red[l] = v;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int s = (int)get_local_size(0) / 2; s > 0; s >>= 1) {
        if (l < s) red[l] += red[l + s];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    float r = red[0];
    barrier(CLK_LOCAL_MEM_FENCE);
    return r;
}

float group_max(local float *red, float v)
{
    int l = (int)get_local_id(0);
    red[l] = v;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int s = (int)get_local_size(0) / 2; s > 0; s >>= 1) {
        if (l < s) red[l] = fmax(red[l], red[l + s]);
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    float r = red[0];
    barrier(CLK_LOCAL_MEM_FENCE);
    return r;
}

/* A cap z = c * tanh(z / c) (c > 0), and its derivative expressed through the capped value. */
float softcap_apply(float z, float c)
{
    return c > 0.0f ? c * tanh(z / c) : z;
}

float softcap_grad(float capped, float c)
{
    if (c <= 0.0f) return 1.0f;
    float t = capped / c;
    return 1.0f - t * t;
}
