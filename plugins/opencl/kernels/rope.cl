/* Rotary embedding in the rotate-half layout, in place; one work-item per (token, head, pair).
 * direction = +1 turns by theta (forward), -1 by -theta (backward: the transpose). */
kernel void rope(long n_tokens, long n_heads, long head_dim, long rot_dim, int dt, BUF(x), long ldx,
                 BUF(positions), BUF(inv_freq), int n_sections, int s0, int s1, int s2, int s3,
                 float attn_factor, float direction)
{
    long d = get_global_id(0), h = get_global_id(1), t = get_global_id(2);
    long half_rot = rot_dim / 2;
    if (d >= half_rot || h >= n_heads || t >= n_tokens) return;
    int sections[4] = {s0, s1, s2, s3};
    int sec = 0;
    long end = sections[0];
    while (sec + 1 < n_sections && d >= end) end += sections[++sec];
    float pos = (float)((const global int *)AT(positions))[sec * n_tokens + t];
    float theta = pos * ((const global float *)AT(inv_freq))[d];
    float c = cos(theta) * attn_factor, s = direction * sin(theta) * attn_factor;
    global uchar *px = AT(x);
    long i1 = t * ldx + h * head_dim + d, i2 = i1 + half_rot;
    float x1 = load(px, i1, dt), x2 = load(px, i2, dt);
    store(px, i1, dt, x1 * c - x2 * s);
    store(px, i2, dt, x2 * c + x1 * s);
}
