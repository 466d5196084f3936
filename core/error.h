/* Error messages: one thread-local buffer behind finch_last_error(). */
#ifndef FINCH_CORE_ERROR_H
#define FINCH_CORE_ERROR_H

#include "finch/types.h"

/* Records a printf-style message and returns status, so callers write
 *     return finch_error(FINCH_ERR_FORMAT, "%s: tensor '%s' has shape ...", path, name);  */
int finch_error(int status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prefixes the current message with more context ("loading model X: " + old message); returns status. */
int finch_error_prefix(int status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void finch_error_clear(void);

#endif
