/* The runtime behind the public finch_runtime handle: the plugin registry and the active device. */
#ifndef FINCH_CORE_RUNTIME_H
#define FINCH_CORE_RUNTIME_H

#include "backends/backend.h"

struct finch_runtime {
    finch_registry *registry;
    finch_backend backend;      /* the device everything runs on */
};

#endif
