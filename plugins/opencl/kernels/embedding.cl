/* Embedding lookup and its gradient. An id outside [0, vocab) sets *bad (the host reports it).
 * The backward pass gives one work-item per column, walking the tokens in order: rows that
 * share an id never race, and no float atomics are needed. */
kernel void embedding_forward(long n_tokens, long dim, long vocab, BUF(ids), int table_dt, BUF(table),
                              int out_dt, BUF(out), float scale, BUF(bad))
{
    long j = get_global_id(0), t = get_global_id(1);
    if (j >= dim || t >= n_tokens) return;
    int id = ((const global int *)AT(ids))[t];
    if (id < 0 || id >= vocab) {
        *(global int *)AT(bad) = 1;
        return;
    }
    store(AT(out), t * dim + j, out_dt, scale * load(AT(table), (long)id * dim + j, table_dt));
}

kernel void embedding_backward(long n_tokens, long dim, long vocab, BUF(ids), int dout_dt, BUF(dout),
                               BUF(dtable), float scale, BUF(bad))
{
    long j = get_global_id(0);
    if (j >= dim) return;
    const global int *ids = (const global int *)AT(ids);
    global float *grad = (global float *)AT(dtable);
    for (long t = 0; t < n_tokens; t++) {
        int id = ids[t];
        if (id < 0 || id >= vocab) {
            *(global int *)AT(bad) = 1;
            continue;
        }
        grad[(long)id * dim + j] += scale * load(AT(dout), t * dim + j, dout_dt);
    }
}
