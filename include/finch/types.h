/* finch — shared scalar types of the public API and the plugin ABI. */
#ifndef FINCH_TYPES_H
#define FINCH_TYPES_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Status codes. Every finch call returns one; FINCH_OK is zero. */
typedef enum finch_status {
    FINCH_OK = 0,
    FINCH_ERR_INVALID_ARGUMENT = 1, /* a caller bug: NULL handle, bad shape, out-of-range value  */
    FINCH_ERR_IO = 2,               /* a file could not be opened, read, written or renamed      */
    FINCH_ERR_FORMAT = 3,           /* a file is malformed: corrupt safetensors, bad config.json */
    FINCH_ERR_UNSUPPORTED = 4,      /* well-formed but not supported: unknown model_type, dtype  */
    FINCH_ERR_OUT_OF_MEMORY = 5,    /* host or device allocation failed                          */
    FINCH_ERR_DEVICE = 6,           /* a device, driver or plugin failed                         */
    FINCH_ERR_ABI = 7,              /* a plugin was built for another ABI major                  */
    FINCH_ERR_CANCELLED = 8,        /* a callback asked to stop                                  */
    FINCH_ERR_STATE = 9,            /* the call is not valid in the object's current state       */
    FINCH_ERR_NUMERIC = 10          /* a loss or gradient became NaN or infinite                 */
} finch_status;

/* Element types of tensors. NF4 packs two 4-bit codes per byte (first element in the high nibble). */
typedef enum finch_dtype {
    FINCH_DTYPE_F32 = 0,
    FINCH_DTYPE_BF16 = 1,
    FINCH_DTYPE_F16 = 2,
    FINCH_DTYPE_I32 = 3,
    FINCH_DTYPE_U8 = 4,
    FINCH_DTYPE_NF4 = 5
} finch_dtype;

#ifdef __cplusplus
}
#endif

#endif
