/* The training data behind finch_train_data (train.h), shared by the text loaders (train_data.c)
 * and the multimodal loader (train_data_vl.c). Internal to libfinch. */
#ifndef FINCH_CORE_TRAIN_DATA_H
#define FINCH_CORE_TRAIN_DATA_H

#include "finch/multimodal.h"
#include "finch/train.h"
#include "finch/vision.h"

/* The images of one example, in the order of its image-token blocks. */
typedef struct train_images {
    char **paths;             /* resolved file names */
    int32_t *grids;           /* [n, 3]: each image's grid_thw, from its header and the preprocessing */
    size_t n;
} train_images;

struct finch_train_data {
    finch_example *ex;
    train_images *images;     /* [cap], parallel to ex; NULL when no example has an image */
    size_t n, cap;
    /* Multimodal data: how its images are decoded and preprocessed, and their token. */
    finch_qwen2vl_image_config image_cfg;
    finch_image_load_options image_load;
    int32_t image_token_id;   /* -1: text data */
    char *image_text;         /* what an image part became in the text */
};

int train_data_new(finch_train_data **out);
/* Appends ex and, when img is not NULL, its images (taking both's buffers and zeroing them). */
int train_data_push(finch_train_data *d, finch_example *ex, train_images *img);
void train_images_free(train_images *img);
/* finch_train_data_from_jsonl, and finch_train_data_from_jsonl_images when images is not NULL. */
int train_data_load_jsonl(const char *path, const finch_tokenizer *tok, const finch_chat_template *tmpl,
                          const finch_dataset_options *dataset, const finch_label_options *labels,
                          const finch_image_data_options *images, finch_train_data **out);

/* train_data_vl.c: the multimodal side of the loader. begin records the image settings and the pad
 * token's id in d; example makes one conversation's example (image tokens expanded) and its images. */
int train_data_vl_begin(finch_train_data *d, const finch_tokenizer *tok, const finch_image_data_options *images);
int train_data_vl_example(const finch_train_data *d, const char *jsonl_path, const finch_tokenizer *tok, const finch_chat_template *tmpl,
                          const char *messages_json, const finch_chat_options *chat, const finch_label_options *labels,
                          finch_example *ex, train_images *img);

#endif
