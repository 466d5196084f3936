/* Attention over packed sequences, one work-item per (row, head), streaming the keys with an
 * online softmax (FlashAttention's recurrence) so no score matrix is stored. The backward pass
 * recomputes the probabilities from lse: one kernel gathers dq per query row, another dk and dv
 * per key row (looping over the query heads that share its kv head), so nothing is scattered
 * and no float atomics are needed. Row vectors live in private arrays of FINCH_MAX_HEAD_DIM. */

typedef struct attn_span {
    long lo, hi; /* visible rows, inclusive; lo > hi when none */
} attn_span;

/* The sequence holding row t: the largest s with cu[s] <= t. */
int attn_sequence(const global int *cu, int n_seqs, long t)
{
    int lo = 0, hi = n_seqs - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) >> 1;
        if (cu[mid] <= t) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

/* Keys visible from query i: j <= i when causal, i - j < window when window > 0. */
attn_span attn_keys(const global int *cu, int n_seqs, long i, int causal, long window)
{
    int s = attn_sequence(cu, n_seqs, i);
    attn_span sp = {cu[s], (long)cu[s + 1] - 1};
    if (i < sp.lo || i > sp.hi) { sp.lo = 1; sp.hi = 0; return sp; }
    if (causal) sp.hi = i;
    if (window > 0) sp.lo = max(sp.lo, i - window + 1);
    return sp;
}

/* Queries that see key j: the same rules read the other way. */
attn_span attn_queries(const global int *cu, int n_seqs, long j, int causal, long window)
{
    int s = attn_sequence(cu, n_seqs, j);
    attn_span sp = {cu[s], (long)cu[s + 1] - 1};
    if (j < sp.lo || j > sp.hi) { sp.lo = 1; sp.hi = 0; return sp; }
    if (causal) sp.lo = j;
    if (window > 0) sp.hi = min(sp.hi, j + window - 1);
    return sp;
}

kernel void attention_forward(long n_tokens, int n_seqs, BUF(cu), int n_heads, int n_kv_heads, int hd, int dt,
                              BUF(q), long ldq, BUF(k), long ldk, BUF(v), long ldv, BUF(o), long ldo, BUF(lse),
                              float scale, float softcap, int causal, long window)
{
    long i = get_global_id(0);
    int h = (int)get_global_id(1);
    if (i >= n_tokens || h >= n_heads) return;
    int g = h / (n_heads / n_kv_heads);
    const global uchar *pq = AT(q), *pk = AT(k), *pv = AT(v);
    float qi[FINCH_MAX_HEAD_DIM], acc[FINCH_MAX_HEAD_DIM];
    for (int d = 0; d < hd; d++) {
        qi[d] = load(pq, i * ldq + h * hd + d, dt);
        acc[d] = 0.0f;
    }
    attn_span sp = attn_keys((const global int *)AT(cu), n_seqs, i, causal, window);
    float mx = -INFINITY, l = 0.0f;
    for (long j = sp.lo; j <= sp.hi; j++) {
        float s = 0.0f;
        for (int d = 0; d < hd; d++) s = fma(qi[d], load(pk, j * ldk + g * hd + d, dt), s);
        s = softcap_apply(s * scale, softcap);
        if (s > mx) {
            float corr = exp(mx - s);
            l *= corr;
            for (int d = 0; d < hd; d++) acc[d] *= corr;
            mx = s;
        }
        float p = exp(s - mx);
        l += p;
        for (int d = 0; d < hd; d++) acc[d] = fma(p, load(pv, j * ldv + g * hd + d, dt), acc[d]);
    }
    float inv = l > 0.0f ? 1.0f / l : 0.0f;
    for (int d = 0; d < hd; d++) store(AT(o), i * ldo + h * hd + d, dt, acc[d] * inv);
    ((global float *)AT(lse))[(long)h * n_tokens + i] = l > 0.0f ? mx + log(l) : -INFINITY;
}

/* Attention over a key/value cache: query row i of sequence s (rows cu[s] ..) sits at position
 * p = kv_len[s] - q_len + (i - cu[s]) among the sequence's keys, which are rows kv_start[s] .. of k, v. */
kernel void attention_cache_forward(long n_tokens, int n_seqs, BUF(cu), BUF(kv_start), BUF(kv_len), int n_heads,
                                    int n_kv_heads, int hd, int dt, BUF(q), long ldq, BUF(k), long ldk, BUF(v),
                                    long ldv, BUF(o), long ldo, BUF(lse), int has_lse, float scale, float softcap,
                                    int causal, long window)
{
    long i = get_global_id(0);
    int h = (int)get_global_id(1);
    if (i >= n_tokens || h >= n_heads) return;
    int g = h / (n_heads / n_kv_heads);
    const global int *pcu = (const global int *)AT(cu);
    int s = attn_sequence(pcu, n_seqs, i);
    long klen = ((const global int *)AT(kv_len))[s], k0 = ((const global int *)AT(kv_start))[s];
    long p = klen - ((long)pcu[s + 1] - pcu[s]) + (i - pcu[s]);
    long lo = window > 0 ? max(0L, p - window + 1) : 0L, hi = causal ? p : klen - 1;
    const global uchar *pq = AT(q), *pk = AT(k), *pv = AT(v);
    float qi[FINCH_MAX_HEAD_DIM], acc[FINCH_MAX_HEAD_DIM];
    for (int d = 0; d < hd; d++) {
        qi[d] = load(pq, i * ldq + h * hd + d, dt);
        acc[d] = 0.0f;
    }
    float mx = -INFINITY, l = 0.0f;
    for (long j = k0 + lo; j <= k0 + hi; j++) {
        float sc = 0.0f;
        for (int d = 0; d < hd; d++) sc = fma(qi[d], load(pk, j * ldk + g * hd + d, dt), sc);
        sc = softcap_apply(sc * scale, softcap);
        if (sc > mx) {
            float corr = exp(mx - sc);
            l *= corr;
            for (int d = 0; d < hd; d++) acc[d] *= corr;
            mx = sc;
        }
        float e = exp(sc - mx);
        l += e;
        for (int d = 0; d < hd; d++) acc[d] = fma(e, load(pv, j * ldv + g * hd + d, dt), acc[d]);
    }
    float inv = l > 0.0f ? 1.0f / l : 0.0f;
    for (int d = 0; d < hd; d++) store(AT(o), i * ldo + h * hd + d, dt, acc[d] * inv);
    if (has_lse) ((global float *)AT(lse))[(long)h * n_tokens + i] = l > 0.0f ? mx + log(l) : -INFINITY;
}

/* delta[h, i] = dout_i . o_i, the softmax-backward correction term. */
kernel void attention_delta(long n_tokens, int n_heads, int hd, int dt, BUF(o), long ldo, BUF(dout),
                            long lddout, BUF(delta))
{
    long i = get_global_id(0);
    int h = (int)get_global_id(1);
    if (i >= n_tokens || h >= n_heads) return;
    float s = 0.0f;
    for (int d = 0; d < hd; d++)
        s = fma(load(AT(o), i * ldo + h * hd + d, dt), load(AT(dout), i * lddout + h * hd + d, dt), s);
    ((global float *)AT(delta))[(long)h * n_tokens + i] = s;
}

/* dS_ij = p_ij (dout_i . v_j - delta_i) through the cap; dq_i = scale sum_j dS_ij k_j */
kernel void attention_dq(long n_tokens, int n_seqs, BUF(cu), int n_heads, int n_kv_heads, int hd, int dt,
                         BUF(q), long ldq, BUF(k), long ldk, BUF(v), long ldv, BUF(lse), BUF(delta),
                         BUF(dout), long lddout, BUF(dq), long lddq, float scale, float softcap, int causal,
                         long window)
{
    long i = get_global_id(0);
    int h = (int)get_global_id(1);
    if (i >= n_tokens || h >= n_heads) return;
    int g = h / (n_heads / n_kv_heads);
    const global uchar *pk = AT(k), *pv = AT(v);
    float qi[FINCH_MAX_HEAD_DIM], doi[FINCH_MAX_HEAD_DIM], acc[FINCH_MAX_HEAD_DIM];
    for (int d = 0; d < hd; d++) {
        qi[d] = load(AT(q), i * ldq + h * hd + d, dt);
        doi[d] = load(AT(dout), i * lddout + h * hd + d, dt);
        acc[d] = 0.0f;
    }
    float li = ((const global float *)AT(lse))[(long)h * n_tokens + i];
    float di = ((const global float *)AT(delta))[(long)h * n_tokens + i];
    attn_span sp = attn_keys((const global int *)AT(cu), n_seqs, i, causal, window);
    for (long j = sp.lo; j <= sp.hi; j++) {
        float s = 0.0f, dp = 0.0f;
        for (int d = 0; d < hd; d++) {
            s = fma(qi[d], load(pk, j * ldk + g * hd + d, dt), s);
            dp = fma(doi[d], load(pv, j * ldv + g * hd + d, dt), dp);
        }
        s = softcap_apply(s * scale, softcap);
        float ds = exp(s - li) * (dp - di) * softcap_grad(s, softcap) * scale;
        for (int d = 0; d < hd; d++) acc[d] = fma(ds, load(pk, j * ldk + g * hd + d, dt), acc[d]);
    }
    for (int d = 0; d < hd; d++) store(AT(dq), i * lddq + h * hd + d, dt, acc[d]);
}

/* dv_j = sum_i p_ij dout_i, dk_j = scale sum_i dS_ij q_i, over every query head of kv head g. */
kernel void attention_dkdv(long n_tokens, int n_seqs, BUF(cu), int n_heads, int n_kv_heads, int hd, int dt,
                           BUF(q), long ldq, BUF(k), long ldk, BUF(v), long ldv, BUF(lse), BUF(delta),
                           BUF(dout), long lddout, BUF(dk), long lddk, BUF(dv), long lddv, float scale,
                           float softcap, int causal, long window)
{
    long j = get_global_id(0);
    int g = (int)get_global_id(1);
    if (j >= n_tokens || g >= n_kv_heads) return;
    int group = n_heads / n_kv_heads;
    const global uchar *pq = AT(q), *pdo = AT(dout);
    const global float *lse = (const global float *)AT(lse), *delta = (const global float *)AT(delta);
    float kj[FINCH_MAX_HEAD_DIM], vj[FINCH_MAX_HEAD_DIM], dkj[FINCH_MAX_HEAD_DIM], dvj[FINCH_MAX_HEAD_DIM];
    for (int d = 0; d < hd; d++) {
        kj[d] = load(AT(k), j * ldk + g * hd + d, dt);
        vj[d] = load(AT(v), j * ldv + g * hd + d, dt);
        dkj[d] = 0.0f;
        dvj[d] = 0.0f;
    }
    attn_span sp = attn_queries((const global int *)AT(cu), n_seqs, j, causal, window);
    for (int h = g * group; h < (g + 1) * group; h++) {
        for (long i = sp.lo; i <= sp.hi; i++) {
            float s = 0.0f, dp = 0.0f;
            for (int d = 0; d < hd; d++) {
                s = fma(load(pq, i * ldq + h * hd + d, dt), kj[d], s);
                dp = fma(load(pdo, i * lddout + h * hd + d, dt), vj[d], dp);
            }
            s = softcap_apply(s * scale, softcap);
            float p = exp(s - lse[(long)h * n_tokens + i]);
            float ds = p * (dp - delta[(long)h * n_tokens + i]) * softcap_grad(s, softcap) * scale;
            for (int d = 0; d < hd; d++) {
                dvj[d] = fma(p, load(pdo, i * lddout + h * hd + d, dt), dvj[d]);
                dkj[d] = fma(ds, load(pq, i * ldq + h * hd + d, dt), dkj[d]);
            }
        }
    }
    for (int d = 0; d < hd; d++) {
        store(AT(dk), j * lddk + g * hd + d, dt, dkj[d]);
        store(AT(dv), j * lddv + g * hd + d, dt, dvj[d]);
    }
}
