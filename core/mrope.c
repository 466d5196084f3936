#include "core/mrope.h"
#include "core/error.h"

/* Token t of a row starts a new sequence (its positions restart). */
static int starts(const int32_t *seg, int64_t t)
{
    return t == 0 || (seg && seg[t] != seg[t - 1]);
}

int finch_mrope_positions(const int32_t *ids, const int32_t *segment_ids, int64_t batch, int64_t seq_len,
                          int32_t image_token_id, const int32_t *grid_thw, int64_t n_images, int64_t merge, int32_t *pos)
{
    int64_t n = batch * seq_len, image = 0;
    int32_t *pt = pos, *ph = pos + n, *pw = pos + 2 * n;
    for (int64_t b = 0; b < batch; b++) {
        const int32_t *row = ids + b * seq_len, *seg = segment_ids ? segment_ids + b * seq_len : NULL;
        int64_t next = 0, base = b * seq_len;
        for (int64_t t = 0; t < seq_len;) {
            if (starts(seg, t)) next = 0;
            if (row[t] != image_token_id) {
                pt[base + t] = ph[base + t] = pw[base + t] = (int32_t)next++;
                t++;
                continue;
            }
            if (image >= n_images)
                return finch_error(FINCH_ERR_INVALID_ARGUMENT,
                                   "batch row %lld: image token (id %d) at position %lld, but the batch's %lld image(s) are "
                                   "already used up (missing pixel values?)",
                                   (long long)b, image_token_id, (long long)t, (long long)n_images);
            const int32_t *g = grid_thw + 3 * image;
            int64_t gh = g[1] / merge, gw = g[2] / merge, count = (int64_t)g[0] * gh * gw;
            int64_t run = 0;
            while (t + run < seq_len && row[t + run] == image_token_id && run < count && (!run || !starts(seg, t + run))) run++;
            if (run != count)
                return finch_error(FINCH_ERR_INVALID_ARGUMENT,
                                   "batch row %lld: image %lld (grid %dx%dx%d) needs %lld image tokens (id %d) from position "
                                   "%lld, but the row has %lld there",
                                   (long long)b, (long long)image, g[0], g[1], g[2], (long long)count, image_token_id,
                                   (long long)t, (long long)run);
            /* Frames advance time by 1 for an image (transformers 5; a still image has one frame). */
            for (int64_t k = 0; k < count; k++) {
                int64_t at = base + t + k;
                pt[at] = (int32_t)(next + k / (gh * gw));
                ph[at] = (int32_t)(next + (k / gw) % gh);
                pw[at] = (int32_t)(next + k % gw);
            }
            next += gh > gw ? gh : gw;
            t += count;
            image++;
        }
    }
    if (image != n_images)
        return finch_error(FINCH_ERR_INVALID_ARGUMENT,
                           "the batch has %lld image(s) but its input_ids hold image tokens for %lld of them", (long long)n_images,
                           (long long)image);
    return FINCH_OK;
}

int finch_mrope_text_positions(const int32_t *ids, const int32_t *segment_ids, int64_t batch, int64_t seq_len,
                               int32_t image_token_id, const int32_t *grid_thw, int64_t n_images, int64_t merge, int32_t *pos)
{
    int rc = finch_mrope_positions(ids, segment_ids, batch, seq_len, image_token_id, grid_thw, n_images, merge, pos);
    if (rc) return rc;
    int64_t n = batch * seq_len;
    for (int64_t b = 0; b < batch; b++) {
        const int32_t *seg = segment_ids ? segment_ids + b * seq_len : NULL;
        for (int64_t t = 0, first = 0; t < seq_len; t++) {
            if (starts(seg, t)) first = t;
            int64_t i = b * seq_len + t;
            pos[i] = pos[n + i] = pos[2 * n + i] = (int32_t)(t - first);
        }
    }
    return FINCH_OK;
}
