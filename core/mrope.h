/* Multimodal rotary position ids (M-RoPE) of Qwen2-VL / Qwen2.5-VL, as Hugging Face's
 * get_rope_index computes them for text and images: three rows (time, height, width). A text token
 * takes the next position in all three rows; an image's block of tokens starts where the next text
 * token would, its rows advancing over the merged grid (frame, row, column); the text after it
 * resumes at the block's start + max(merged rows, merged columns) (checked against transformers
 * 5.17, where the processor's mm_token_type_ids switch this on). */
#ifndef FINCH_CORE_MROPE_H
#define FINCH_CORE_MROPE_H

#include <stdint.h>

/* ids [batch, seq_len]; segment_ids [batch, seq_len] or NULL (packed rows: positions restart where
 * the id changes, as finch_batch.segment_ids says); images are taken in order through the rows (row 0's first). grid_thw
 * [n_images, 3] in patches; merge: spatial_merge_size. Writes pos [3, batch * seq_len].
 * An image block whose length does not match its image's grid, image tokens left over when the
 * images run out, or images left unused are an error naming the row, position and image. */
int finch_mrope_positions(const int32_t *ids, const int32_t *segment_ids, int64_t batch, int64_t seq_len,
                          int32_t image_token_id, const int32_t *grid_thw, int64_t n_images, int64_t merge, int32_t *pos);
/* The same checks, with positions 0, 1, 2, ... per row on all three rows. */
int finch_mrope_text_positions(const int32_t *ids, const int32_t *segment_ids, int64_t batch, int64_t seq_len,
                               int32_t image_token_id, const int32_t *grid_thw, int64_t n_images, int64_t merge, int32_t *pos);

#endif
