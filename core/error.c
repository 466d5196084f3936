#include "core/error.h"
#include "finch/finch.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char error_message[2048];

const char *finch_last_error(void) { return error_message; }

void finch_error_clear(void) { error_message[0] = 0; }

int finch_error(int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(error_message, sizeof error_message, fmt, ap);
    va_end(ap);
    return status;
}

int finch_error_prefix(int status, const char *fmt, ...)
{
    char prefix[1024], old[sizeof error_message];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, error_message, sizeof old);
    size_t n = strlen(prefix);
    if (n >= sizeof error_message) n = sizeof error_message - 1;
    memcpy(error_message, prefix, n);
    size_t rest = strlen(old);
    if (rest > sizeof error_message - 1 - n) rest = sizeof error_message - 1 - n;
    memcpy(error_message + n, old, rest);
    error_message[n + rest] = 0;
    return status;
}

const char *finch_status_name(finch_status s)
{
    switch (s) {
    case FINCH_OK: return "ok";
    case FINCH_ERR_INVALID_ARGUMENT: return "invalid argument";
    case FINCH_ERR_IO: return "i/o error";
    case FINCH_ERR_FORMAT: return "malformed file";
    case FINCH_ERR_UNSUPPORTED: return "unsupported";
    case FINCH_ERR_OUT_OF_MEMORY: return "out of memory";
    case FINCH_ERR_DEVICE: return "device error";
    case FINCH_ERR_ABI: return "plugin ABI mismatch";
    case FINCH_ERR_CANCELLED: return "cancelled";
    case FINCH_ERR_STATE: return "invalid state";
    case FINCH_ERR_NUMERIC: return "non-finite value";
    }
    return "unknown status";
}

const char *finch_version_string(void)
{
#define FINCH_STR2(x) #x
#define FINCH_STR(x) FINCH_STR2(x)
    return FINCH_STR(FINCH_VERSION_MAJOR) "." FINCH_STR(FINCH_VERSION_MINOR) "." FINCH_STR(FINCH_VERSION_PATCH);
}
