/* Cross-entropy, one work-group per row. Each row leaves (loss, counted) in rows[2t..2t+1] for
 * sum_strided to add to loss_sum and count; a label outside [0, vocab) that is not the ignore
 * index sets *bad. dlogits may alias logits: every read of the row ends before the first write
 * (the reductions end with a barrier). */
kernel void cross_entropy_rows(long vocab, int dt, BUF(logits), long ld, BUF(labels), float softcap,
                               float grad_scale, int write_grad, int grad_dt, BUF(dlogits), long lddl,
                               BUF(rows), BUF(bad))
{
    local float red[FINCH_ROW_WG];
    long t = get_group_id(0);
    const global uchar *z = AT(logits);
    int label = ((const global int *)AT(labels))[t];
    int counted = label != IGNORE_INDEX && label >= 0 && label < vocab;
    if (label != IGNORE_INDEX && !counted && get_local_id(0) == 0) *(global int *)AT(bad) = 1;

    float mx = -INFINITY;
    for (long j = get_local_id(0); j < vocab; j += get_local_size(0))
        mx = fmax(mx, softcap_apply(load(z, t * ld + j, dt), softcap));
    mx = group_max(red, mx);
    float se = 0.0f;
    for (long j = get_local_id(0); j < vocab; j += get_local_size(0))
        se += exp(softcap_apply(load(z, t * ld + j, dt), softcap) - mx);
    float zl = counted ? softcap_apply(load(z, t * ld + label, dt), softcap) : 0.0f;
    float lse = mx + log(group_sum(red, se));
    if (get_local_id(0) == 0) {
        global float *r = (global float *)AT(rows);
        r[2 * t] = counted ? lse - zl : 0.0f;
        r[2 * t + 1] = counted ? 1.0f : 0.0f;
    }
    if (!write_grad) return;
    for (long j = get_local_id(0); j < vocab; j += get_local_size(0)) {
        float g = 0.0f;
        if (counted) {
            float zc = softcap_apply(load(z, t * ld + j, dt), softcap);
            g = (exp(zc - lse) - (j == label ? 1.0f : 0.0f)) * grad_scale * softcap_grad(zc, softcap);
        }
        store(AT(dlogits), t * lddl + j, grad_dt, g);
    }
}
