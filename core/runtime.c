/* The public runtime: a plugin registry plus the one device everything computes on. */
#include "core/runtime.h"
#include "core/error.h"

#include <stdlib.h>
#include <string.h>

finch_status finch_runtime_open(const char *backend, finch_runtime **out)
{
    finch_runtime_options opts = {.backend = backend};
    return finch_runtime_open_ex(&opts, out);
}

finch_status finch_runtime_open_ex(const finch_runtime_options *opts, finch_runtime **out)
{
    if (!out)
        return (finch_status)finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_runtime_open: out is NULL");
    *out = NULL;
    if (!opts)
        return (finch_status)finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_runtime_open_ex: opts is NULL");
    if (opts->n_threads < 0)
        return (finch_status)finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_runtime_open_ex: n_threads is %d (0 = all cores)",
                                         opts->n_threads);
    finch_runtime *rt = calloc(1, sizeof *rt);
    if (!rt)
        return (finch_status)finch_error(FINCH_ERR_OUT_OF_MEMORY, "finch_runtime_open: out of memory");
    int rc = finch_registry_open(opts->plugin_path, opts->n_threads, &rt->registry);
    if (rc == FINCH_OK)
        rc = finch_backend_open(rt->registry, opts->backend ? opts->backend : "auto", &rt->backend);
    if (rc != FINCH_OK) {
        finch_runtime_close(rt);
        return (finch_status)rc;
    }
    *out = rt;
    return FINCH_OK;
}

void finch_runtime_close(finch_runtime *rt)
{
    if (!rt)
        return;
    finch_backend_close(&rt->backend);
    finch_registry_close(rt->registry);
    free(rt);
}

int finch_runtime_backend_count(const finch_runtime *rt)
{
    if (!rt) {
        finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_runtime_backend_count: runtime is NULL");
        return 0;
    }
    return finch_registry_backend_count(rt->registry);
}

finch_status finch_runtime_backend(const finch_runtime *rt, int i, finch_backend_report *out)
{
    if (!rt)
        return (finch_status)finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_runtime_backend: runtime is NULL");
    return (finch_status)finch_registry_backend_report(rt->registry, i, out);
}

int finch_runtime_device_count(const finch_runtime *rt)
{
    if (!rt) {
        finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_runtime_device_count: runtime is NULL");
        return 0;
    }
    return finch_registry_device_count(rt->registry);
}

finch_status finch_runtime_device(const finch_runtime *rt, int i, finch_device_report *out)
{
    if (!rt)
        return (finch_status)finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_runtime_device: runtime is NULL");
    return (finch_status)finch_registry_device_report(rt->registry, i, out);
}

finch_status finch_runtime_active(const finch_runtime *rt, finch_device_report *out)
{
    if (!rt || !out)
        return (finch_status)finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_runtime_active: runtime or out is NULL");
    int n = finch_registry_device_count(rt->registry);
    for (int i = 0; i < n; i++) {
        finch_device_report d;
        if (finch_registry_device_report(rt->registry, i, &d) == FINCH_OK && d.index == rt->backend.device_index &&
            strcmp(d.backend, rt->backend.name) == 0) {
            *out = d;
            return FINCH_OK;
        }
    }
    return (finch_status)finch_error(FINCH_ERR_STATE, "finch_runtime_active: the runtime has no open device");
}
