/* Laying tokenized examples out in rows: padding-free packing (several examples per row, positions
 * restarting at each, the first label of each masked so no loss crosses a boundary) or one padded
 * example per row; truncation to max_seq_length with a count; deterministic shuffling. */
#include "core/error.h"
#include "finch/data.h"

#include <stdlib.h>
#include <string.h>

void finch_packed_batch_free(finch_packed_batch *b)
{
    if (!b) return;
    free(b->input_ids);
    free(b->labels);
    free(b->position_ids);
    free(b->attention_mask);
    free(b->seq_ids);
    free(b->cu_seqlens);
    free(b->n_seqs);
    memset(b, 0, sizeof *b);
}

finch_status finch_pack_examples(const finch_example *ex, size_t n, const finch_pack_options *opts,
                                 finch_packed_batch *out, finch_pack_stats *stats)
{
    if ((!ex && n) || !opts || !out) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_pack_examples: NULL argument");
    if (opts->max_seq_length < 2) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "max_seq_length %lld is too small", (long long)opts->max_seq_length);
    memset(out, 0, sizeof *out);
    finch_pack_stats st = {0};
    int64_t L = opts->max_seq_length;
    /* assign examples to rows: first fit (in order) when packing, one per row otherwise */
    int64_t *row_of = malloc((n + 1) * sizeof *row_of), *row_used = calloc(n + 1, sizeof *row_used);
    int32_t *row_count = calloc(n + 1, sizeof *row_count);
    if (!row_of || !row_used || !row_count) { free(row_of); free(row_used); free(row_count); return finch_error(FINCH_ERR_OUT_OF_MEMORY, "packing"); }
    int64_t rows = 0, longest = 0, max_seqs = 1;
    for (size_t i = 0; i < n; i++) {
        if (ex[i].ids.len != ex[i].labels.len) {
            free(row_of); free(row_used); free(row_count);
            return finch_error(FINCH_ERR_INVALID_ARGUMENT, "example %zu has %zu ids but %zu labels", i, ex[i].ids.len, ex[i].labels.len);
        }
        int64_t len = (int64_t)ex[i].ids.len < L ? (int64_t)ex[i].ids.len : L;
        st.truncated += (int64_t)ex[i].ids.len > L;
        int64_t r = rows;
        if (opts->packing)
            for (int64_t k = 0; k < rows; k++) if (row_used[k] + len <= L) { r = k; break; }
        if (r == rows) rows++;
        row_of[i] = r;
        row_used[r] += len;
        row_count[r]++;
        if (row_used[r] > longest) longest = row_used[r];
        if (row_count[r] > max_seqs) max_seqs = row_count[r];
    }
    int64_t T = opts->packing ? L : (longest > 0 ? longest : 1);
    size_t cells = (size_t)(rows ? rows : 0) * (size_t)T;
    out->rows = rows;
    out->seq_len = T;
    out->max_seqs = max_seqs;
    out->input_ids = malloc((cells + 1) * sizeof *out->input_ids);
    out->labels = malloc((cells + 1) * sizeof *out->labels);
    out->position_ids = malloc((cells + 1) * sizeof *out->position_ids);
    out->attention_mask = calloc(cells + 1, 1);
    out->seq_ids = malloc((cells + 1) * sizeof *out->seq_ids);
    out->cu_seqlens = calloc((size_t)rows * (size_t)(max_seqs + 1) + 1, sizeof *out->cu_seqlens);
    out->n_seqs = calloc((size_t)rows + 1, sizeof *out->n_seqs);
    if (!out->input_ids || !out->labels || !out->position_ids || !out->attention_mask || !out->seq_ids || !out->cu_seqlens || !out->n_seqs) {
        free(row_of); free(row_used); free(row_count);
        finch_packed_batch_free(out);
        return finch_error(FINCH_ERR_OUT_OF_MEMORY, "packing %lld rows of %lld tokens", (long long)rows, (long long)T);
    }
    for (size_t c = 0; c < cells; c++) {
        out->input_ids[c] = opts->pad_id;
        out->labels[c] = FINCH_LABEL_IGNORE;
        out->position_ids[c] = 0;
        out->seq_ids[c] = -1;
    }
    memset(row_used, 0, (n + 1) * sizeof *row_used);
    for (size_t i = 0; i < n; i++) {
        int64_t r = row_of[i], full = (int64_t)ex[i].ids.len, len = full < L ? full : L;
        int64_t skip = opts->truncate_left && full > L ? full - L : 0;
        int64_t off = row_used[r];
        int32_t s = out->n_seqs[r]++;
        for (int64_t k = 0; k < len; k++) {
            size_t c = (size_t)(r * T + off + k);
            out->input_ids[c] = ex[i].ids.ids[skip + k];
            out->labels[c] = k == 0 ? FINCH_LABEL_IGNORE : ex[i].labels.ids[skip + k];
            out->position_ids[c] = (int32_t)k;
            out->attention_mask[c] = 1;
            out->seq_ids[c] = s;
            st.trained_tokens += k > 0 && out->labels[c] != FINCH_LABEL_IGNORE;
        }
        row_used[r] += len;
        out->cu_seqlens[r * (max_seqs + 1) + s + 1] = (int32_t)row_used[r];
        st.tokens += len;
    }
    /* rows with fewer examples repeat their end offset */
    for (int64_t r = 0; r < rows; r++)
        for (int64_t s = out->n_seqs[r] + 1; s <= max_seqs; s++)
            out->cu_seqlens[r * (max_seqs + 1) + s] = out->cu_seqlens[r * (max_seqs + 1) + out->n_seqs[r]];
    st.examples = (int64_t)n;
    st.rows = rows;
    if (stats) *stats = st;
    free(row_of);
    free(row_used);
    free(row_count);
    return FINCH_OK;
}

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void finch_shuffle_indices(size_t *idx, size_t n, uint64_t seed)
{
    uint64_t s = seed;
    for (size_t i = 0; i < n; i++) idx[i] = i;
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)(splitmix64(&s) % i);
        size_t t = idx[i - 1];
        idx[i - 1] = idx[j];
        idx[j] = t;
    }
}
