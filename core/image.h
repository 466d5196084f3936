/* Image decoding through Debian's libstb (stb_image): the public finch_image_* calls of
 * include/finch/vision.h, plus the format sniffing they use for messages. */
#ifndef FINCH_CORE_IMAGE_H
#define FINCH_CORE_IMAGE_H

#include "finch/vision.h"

#include <stddef.h>

typedef enum image_format {
    IMAGE_UNKNOWN,  /* no signature we know: may still be a TGA, which has none */
    IMAGE_PNG, IMAGE_JPEG, IMAGE_BMP, IMAGE_GIF,
    IMAGE_REFUSED   /* PSD, HDR, PIC, PNM: stb reads them, finch does not accept them */
} image_format;

/* The format named by the first bytes of a file. */
image_format image_sniff(const unsigned char *data, size_t size);
const char *image_format_name(image_format f);

#endif
