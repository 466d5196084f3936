/* The Qwen2.5-VL vision tower (Qwen2_5_VisionTransformerPretrainedModel): patch embedding, blocks
 * of windowed or full bidirectional attention with 2-D rotary positions, and the patch merger that
 * turns each spatial_merge_size x spatial_merge_size cell of patches into one language-model token.
 *
 * Token order: Hugging Face regroups the patches window by window (window_index) before the first
 * block and undoes it after the merger. finch permutes the pixel rows on the host instead, so every
 * block sees the windows as contiguous packed sequences (cu_seqlens), and the merger's outputs are
 * gathered back into image-token order. */
#ifndef FINCH_CORE_VISION_TOWER_H
#define FINCH_CORE_VISION_TOWER_H

#include "core/model.h"
#include "core/ops_rows.h"

typedef struct finch_vision_config {
    int64_t depth, hidden, n_heads, head_dim, intermediate, out_hidden;
    int64_t in_channels, patch_size, temporal_patch_size, merge_size, window_size;
    int64_t patch_dim;             /* in_channels * temporal_patch_size * patch_size^2 (1176) */
    int64_t merge_unit;            /* merge_size^2 patches per language-model token */
    int64_t window_units;          /* window side in merged units: window_size / merge_size / patch_size */
    unsigned char *full_attention; /* per block: 1 for the fullatt_block_indexes */
    finch_activation act;          /* the blocks' MLP (silu) */
    double norm_eps;
    double rope_theta;
    int32_t image_token_id, video_token_id, vision_start_token_id;
} finch_vision_config;

/* Reads vision_config (and the image token ids) from dir/config.json, transformers 4 and 5 layouts. */
int finch_vision_config_load(const char *dir, finch_vision_config *vc);
void finch_vision_config_free(finch_vision_config *vc);

typedef struct finch_vision_block {
    finch_param norm1, norm2;
    finch_linear_module qkv, proj, gate, up, down;
} finch_vision_block;

typedef struct finch_vision {
    finch_vision_config cfg;
    finch_linear_module patch_embed;   /* Conv3d with kernel == stride: a linear over the patch, no bias */
    finch_vision_block *blocks;
    finch_param merger_norm;           /* ln_q (RMSNorm) */
    finch_linear_module merger_fc1, merger_fc2;
    finch_dptr rope_inv_freq;          /* f32 [head_dim / 2]: the head_dim / 4 frequencies for rows h, then w */
    finch_plugin_buffer *tables;
    int32_t *host;                     /* per-step layout staging */
    size_t host_cap;
    float *pixels;                     /* per-step pixel rows in window order */
    size_t pixels_cap;
    finch_row_run *runs;               /* per-step runs of image tokens in the batch */
    size_t runs_cap;
} finch_vision;

/* The host-side layout of one step's images (see the file comment). */
typedef struct finch_vision_layout {
    int64_t n_images, n_patches, n_units;
    int32_t *pixel_row;            /* [n_patches]: window-order row r holds pixel row pixel_row[r] */
    int32_t *rope_pos;             /* [2, n_patches]: h then w position of each window-order row */
    int32_t *cu_window;            /* [n_windows + 1] */
    int64_t n_windows, max_window;
    int32_t *cu_frame;             /* [n_frames + 1]: full attention, one sequence per frame */
    int64_t n_frames, max_frame;
    int32_t *token_unit;           /* [n_units]: image token k is merged row token_unit[k] */
} finch_vision_layout;

/* Computes the layout into v's staging; errors name the image whose grid is invalid. */
int finch_vision_layout_make(finch_vision *v, const int32_t *grid_thw, int64_t n_images, int64_t n_patches,
                             finch_vision_layout *out);

/* Loads the tower's tensors (visual.* or model.visual.*) into a new m->vision and registers its
 * block and merger linears in m->linears (LoRA targets). */
int finch_vision_load(finch_model *m, const st_set *set, const char *dir);
void finch_vision_free(finch_model *m);
/* Its pointers into the model's ledger other than its linears' (which are in m->linears). */
void finch_vision_visit_devrefs(finch_vision *v, finch_devref_fn fn, void *ctx);

/* pixel_values [n_patches, patch_dim] (f32, host) -> out [n_units, out_hidden] in image-token order. */
int finch_vision_forward(finch_model *m, finch_graph *g, const float *pixel_values, const int32_t *grid_thw,
                         int64_t n_images, int64_t n_patches, int train, finch_tensor *out);

#endif
