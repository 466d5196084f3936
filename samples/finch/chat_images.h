/* `finch chat --image PATH` (repeatable): the images go with the first user message of each
 * conversation, decoded and preprocessed once, and every turn's prompt gets their image tokens. */
#ifndef FINCH_SAMPLES_CHAT_IMAGES_H
#define FINCH_SAMPLES_CHAT_IMAGES_H

#include "samples/finch/gen_setup.h"

typedef struct chat_images {
    const char *paths[16];
    int n;
    float *pixels;            /* all images' patches, image after image */
    int32_t *grids;           /* [n, 3] */
    int64_t n_patches;
    int merge;                /* spatial merge size: merge^2 patches per image token */
} chat_images;

/* Takes --image PATH at argv[*i]: 1 taken, 0 not this option, -1 bad (message printed). */
int chat_images_option(chat_images *ci, const char *cmd, int argc, char **argv, int *i);
/* Decodes the images with the model's preprocessing (0, or 1 with a message printed) and points
 * g->opts at them. */
int chat_images_open(chat_images *ci, gen_setup *g);
void chat_images_close(chat_images *ci);
/* The first user message's text with the images in front (free with free()). */
char *chat_images_message(const chat_images *ci, const char *text);
/* Expands the image pad tokens of a conversation's ids: each image's block becomes its grid's tokens. */
int chat_images_expand(const chat_images *ci, gen_setup *g, finch_tokens *ids);

#endif
