/* RMSNorm and LayerNorm: one work-group per row for the row statistics and dx; weight and bias
 * gradients are column sums, one work-item per column walking the rows. An absent weight is 1
 * (w_buf == 0 is tested through has_w). */

float norm_weight(int has_w, const global uchar *w, long j, int w_dt, float offset)
{
    return has_w ? load(w, j, w_dt) + offset : 1.0f;
}

/* One row of RMSNorm: y and rstd from x (for add_rmsnorm_forward, x is the sum as stored). */
void rmsnorm_row(local float *red, long row, long dim, int dt, const global uchar *x, int w_dt, int has_w,
                 const global uchar *w, float offset, float eps, global uchar *y, global float *rstd)
{
    float ss = 0.0f;
    for (long j = get_local_id(0); j < dim; j += get_local_size(0)) {
        float v = load(x, row * dim + j, dt);
        ss += v * v;
    }
    float r = rsqrt(group_sum(red, ss) / (float)dim + eps);
    for (long j = get_local_id(0); j < dim; j += get_local_size(0)) {
        float v = load(x, row * dim + j, dt);
        store(y, row * dim + j, dt, v * r * norm_weight(has_w, w, j, w_dt, offset));
    }
    if (get_local_id(0) == 0) rstd[row] = r;
}

kernel void rmsnorm_forward(long dim, int dt, BUF(x), int w_dt, int has_w, BUF(w), float offset, float eps,
                            BUF(y), BUF(rstd))
{
    local float red[FINCH_ROW_WG];
    rmsnorm_row(red, get_group_id(0), dim, dt, AT(x), w_dt, has_w, AT(w), offset, eps, AT(y), (global float *)AT(rstd));
}

/* sum = x + d (sum may alias x or d), then rmsnorm_forward's row of sum as stored. Each work-item
 * stores the elements it reads back first in rmsnorm_row, so no barrier is needed in between. */
kernel void add_rmsnorm_forward(long dim, int dt, BUF(x), int w_dt, int has_w, BUF(w), float offset, float eps,
                                BUF(y), BUF(rstd), BUF(d), BUF(sum))
{
    local float red[FINCH_ROW_WG];
    long row = get_group_id(0);
    for (long j = get_local_id(0); j < dim; j += get_local_size(0)) {
        long i = row * dim + j;
        store(AT(sum), i, dt, load(AT(x), i, dt) + load(AT(d), i, dt));
    }
    rmsnorm_row(red, row, dim, dt, AT(sum), w_dt, has_w, AT(w), offset, eps, AT(y), (global float *)AT(rstd));
}

/* dx = r g dy - x r^3 / dim * sum(dy g x), g = w + offset */
kernel void rmsnorm_backward(long dim, int dt, BUF(x), int w_dt, int has_w, BUF(w), float offset, BUF(rstd),
                             BUF(dy), BUF(dx), int dx_accumulate)
{
    local float red[FINCH_ROW_WG];
    long row = get_group_id(0);
    const global uchar *x = AT(x), *dy = AT(dy);
    float r = ((const global float *)AT(rstd))[row];
    float dot = 0.0f;
    for (long j = get_local_id(0); j < dim; j += get_local_size(0))
        dot += load(dy, row * dim + j, dt) * norm_weight(has_w, AT(w), j, w_dt, offset) * load(x, row * dim + j, dt);
    float c = group_sum(red, dot) * r * r * r / (float)dim;
    for (long j = get_local_id(0); j < dim; j += get_local_size(0)) {
        long idx = row * dim + j;
        float g = norm_weight(has_w, AT(w), j, w_dt, offset);
        float v = r * g * load(dy, idx, dt) - load(x, idx, dt) * c;
        if (dx_accumulate) v += load(AT(dx), idx, dt);
        store(AT(dx), idx, dt, v);
    }
}

/* dw[j] += sum over rows of dy * x * rstd */
kernel void rmsnorm_dw(long n, long dim, int dt, BUF(x), BUF(rstd), BUF(dy), BUF(dw))
{
    long j = get_global_id(0);
    if (j >= dim) return;
    const global float *r = (const global float *)AT(rstd);
    float acc = 0.0f;
    for (long i = 0; i < n; i++) acc += load(AT(dy), i * dim + j, dt) * load(AT(x), i * dim + j, dt) * r[i];
    ((global float *)AT(dw))[j] += acc;
}

kernel void layernorm_forward(long dim, int dt, BUF(x), int w_dt, int has_w, BUF(w), int has_b, BUF(b),
                              float eps, BUF(y), BUF(mean), BUF(rstd))
{
    local float red[FINCH_ROW_WG];
    long row = get_group_id(0);
    const global uchar *x = AT(x);
    float s = 0.0f;
    for (long j = get_local_id(0); j < dim; j += get_local_size(0)) s += load(x, row * dim + j, dt);
    float mu = group_sum(red, s) / (float)dim;
    float ss = 0.0f;
    for (long j = get_local_id(0); j < dim; j += get_local_size(0)) {
        float d = load(x, row * dim + j, dt) - mu;
        ss += d * d;
    }
    float r = rsqrt(group_sum(red, ss) / (float)dim + eps);
    for (long j = get_local_id(0); j < dim; j += get_local_size(0)) {
        float v = (load(x, row * dim + j, dt) - mu) * r * norm_weight(has_w, AT(w), j, w_dt, 0.0f);
        if (has_b) v += load(AT(b), j, w_dt);
        store(AT(y), row * dim + j, dt, v);
    }
    if (get_local_id(0) == 0) {
        ((global float *)AT(mean))[row] = mu;
        ((global float *)AT(rstd))[row] = r;
    }
}

/* dx = r (g - mean(g) - xhat mean(g xhat)), g = dy w, xhat = (x - mean) r */
kernel void layernorm_backward(long dim, int dt, BUF(x), int w_dt, int has_w, BUF(w), BUF(mean), BUF(rstd),
                               BUF(dy), BUF(dx), int dx_accumulate)
{
    local float red[FINCH_ROW_WG];
    long row = get_group_id(0);
    const global uchar *x = AT(x), *dy = AT(dy);
    float mu = ((const global float *)AT(mean))[row], r = ((const global float *)AT(rstd))[row];
    float sg = 0.0f, sgx = 0.0f;
    for (long j = get_local_id(0); j < dim; j += get_local_size(0)) {
        long idx = row * dim + j;
        float g = load(dy, idx, dt) * norm_weight(has_w, AT(w), j, w_dt, 0.0f);
        sg += g;
        sgx += g * (load(x, idx, dt) - mu) * r;
    }
    float mg = group_sum(red, sg) / (float)dim;
    float mgx = group_sum(red, sgx) / (float)dim;
    for (long j = get_local_id(0); j < dim; j += get_local_size(0)) {
        long idx = row * dim + j;
        float g = load(dy, idx, dt) * norm_weight(has_w, AT(w), j, w_dt, 0.0f);
        float xhat = (load(x, idx, dt) - mu) * r;
        float v = r * (g - mg - xhat * mgx);
        if (dx_accumulate) v += load(AT(dx), idx, dt);
        store(AT(dx), idx, dt, v);
    }
}

/* dw[j] += sum dy xhat, db[j] += sum dy (either may be absent) */
kernel void layernorm_dwdb(long n, long dim, int dt, BUF(x), BUF(mean), BUF(rstd), BUF(dy), int has_dw, BUF(dw),
                           int has_db, BUF(db))
{
    long j = get_global_id(0);
    if (j >= dim) return;
    const global float *mu = (const global float *)AT(mean), *r = (const global float *)AT(rstd);
    float aw = 0.0f, ab = 0.0f;
    for (long i = 0; i < n; i++) {
        float d = load(AT(dy), i * dim + j, dt);
        aw += d * (load(AT(x), i * dim + j, dt) - mu[i]) * r[i];
        ab += d;
    }
    if (has_dw) ((global float *)AT(dw))[j] += aw;
    if (has_db) ((global float *)AT(db))[j] += ab;
}
