/* finch — multimodal chat data for vision-language models (Qwen2-VL / Qwen2.5-VL).
 *
 * A training line's user content may be a list of parts:
 *     {"role": "user", "content": [{"type": "image", "image": "scans/001.png"},
 *                                  {"type": "text", "text": "What does this show?"}]}
 * Image parts: {"type": "image", "image" | "path" | "url": PATH} or
 * {"type": "image_url", "image_url": {"url": PATH} | PATH}, PATH a local file (optionally
 * "file://..."), resolved against the JSONL file's folder unless absolute.
 *
 * The steps, per example:
 *   1. finch_messages_extract_images(): content lists become strings, each image becoming the chat
 *      template's image text ("<|vision_start|><|image_pad|><|vision_end|>"), and the image paths
 *      are listed in order;
 *   2. finch_example_from_chat() renders and tokenizes the rewritten messages (data.h);
 *   3. each image is decoded and preprocessed (vision.h), which gives its grid;
 *   4. finch_example_expand_image_tokens() repeats each image's pad token grid_t*grid_h*grid_w /
 *      merge^2 times, never trained (labels FINCH_LABEL_IGNORE);
 *   5. the ids, labels, pixel values and grids go to the model in a finch_batch (finch.h). */
#ifndef FINCH_MULTIMODAL_H
#define FINCH_MULTIMODAL_H

#include "finch/data.h"
#include "finch/train.h"
#include "finch/vision.h"

#ifdef __cplusplus
extern "C" {
#endif

/* What an image part becomes in the text: Qwen2-VL's chat templates write this. */
#define FINCH_QWEN2VL_IMAGE_TEXT "<|vision_start|><|image_pad|><|vision_end|>"
#define FINCH_QWEN2VL_IMAGE_PAD "<|image_pad|>"

/* messages_json: a JSON array of {"role", "content"} objects. Writes the messages with every content
 * list joined into a string (text parts as they are, image parts as image_text; NULL =
 * FINCH_QWEN2VL_IMAGE_TEXT) to *out_messages_json, and the images' paths in order to *out_paths
 * (*out_n of them; NULL when none). base_dir: the folder relative paths are resolved against (NULL:
 * as given). Remote URLs, data: URIs, unknown part types and parts without a path are errors naming
 * the message and part. Free with finch_data_free and finch_image_paths_free. */
finch_status finch_messages_extract_images(const char *messages_json, const char *base_dir, const char *image_text,
                                           char **out_messages_json, char ***out_paths, size_t *out_n);
void finch_image_paths_free(char **paths, size_t n);

/* Replaces the k-th pad_id token of ex (k < n, in order) by counts[k] copies of it, all with label
 * FINCH_LABEL_IGNORE. The example must hold exactly n pad tokens (else FINCH_ERR_FORMAT). */
finch_status finch_example_expand_image_tokens(finch_example *ex, int32_t pad_id, const int64_t *counts, size_t n);

/* ---- training data with images ------------------------------------------------------------------ */

typedef struct finch_image_data_options {
    finch_qwen2vl_image_config image;  /* the model's preprocessing (preprocessor_config.json): each image's grid */
    finch_image_load_options load;     /* decoding: pixel limit, alpha */
    const char *image_text;            /* what an image part becomes in the text; NULL = FINCH_QWEN2VL_IMAGE_TEXT */
    const char *image_pad;             /* its pad token (the model's image_token_id); NULL = FINCH_QWEN2VL_IMAGE_PAD */
} finch_image_data_options;

finch_image_data_options finch_image_data_options_default(void);

/* finch_train_data_from_jsonl for a vision-language model: conversations whose content lists hold
 * image parts (steps 1-4 above; paths relative to the JSONL file's folder). Only each image's header
 * is read here, for its grid and so its number of image tokens (never trained, as the prompt is
 * not under train_on_responses_only); the trainer decodes and preprocesses the pixels in a background
 * thread as it reaches them. A missing or bad image fails the line (or skips it under
 * FINCH_BAD_LINE_SKIP). images may be NULL (defaults). */
finch_status finch_train_data_from_jsonl_images(const char *path, const finch_tokenizer *tok, const finch_chat_template *tmpl,
                                                const finch_dataset_options *dataset, const finch_label_options *labels,
                                                const finch_image_data_options *images, finch_train_data **out);
/* The images of example i: their count, and image k's file and grid. */
size_t finch_train_data_image_count(const finch_train_data *d, size_t i);
finch_status finch_train_data_image(const finch_train_data *d, size_t i, size_t k, const char **path, int32_t grid_thw[3]);

#ifdef __cplusplus
}
#endif

#endif
