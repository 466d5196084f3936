/* Fake plugin modules for the registry tests, one per way a module can be good or bad. Built once
 * per FAKE_* definition (tests/plugins/CMakeLists.txt). Only the lifetime and device entries do
 * anything; every compute entry points at one function returning FINCH_ERR_UNSUPPORTED, which the
 * registry never calls. */
#include "finch/plugin.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef FAKE_NAME
#error "FAKE_NAME must be defined"
#endif

static void log_event(const char *event)
{
    const char *path = getenv("FINCH_FAKE_LOG");
    FILE *f = path ? fopen(path, "a") : NULL;
    if (f) {
        fprintf(f, "%s %s\n", FAKE_NAME, event);
        fclose(f);
    }
}

static const char *fake_error = "";
static const char *fake_last_error(void) { return fake_error; }

static int fake_init(void)
{
#ifdef FAKE_INIT_FAILS
    fake_error = "libfakedriver.so.1: cannot open shared object file (fake driver missing)";
    return FINCH_ERR_DEVICE;
#else
    log_event("init");
    return FINCH_OK;
#endif
}

static void fake_shutdown(void) { log_event("shutdown"); }

/* fake_gpu: 0 an integrated GPU of 4 GiB, 1 a discrete GPU of 16 GiB, 2 a discrete GPU of 8 GiB. */
static const struct {
    const char *name;
    finch_device_kind kind;
    uint64_t gib;
} fake_devices[] = {
#if defined(FAKE_GPU)
    {"Fake iGPU", FINCH_DEVICE_IGPU, 4}, {"Fake GPU 16G", FINCH_DEVICE_GPU, 16}, {"Fake GPU 8G", FINCH_DEVICE_GPU, 8},
#elif defined(FAKE_NEWER)
    {"Fake accelerator", FINCH_DEVICE_OTHER, 64},
#else
    {"unused", FINCH_DEVICE_OTHER, 0},
#endif
};

static int fake_device_count(int *count)
{
#ifdef FAKE_NO_DEVICE
    *count = 0;
#else
    *count = (int)(sizeof fake_devices / sizeof fake_devices[0]);
#endif
    return FINCH_OK;
}

static int fake_device_info(int index, finch_device_info *info)
{
    int count;
    fake_device_count(&count);
    if (index < 0 || index >= count) {
        fake_error = "no such device";
        return FINCH_ERR_INVALID_ARGUMENT;
    }
    memset(info, 0, sizeof *info);
    snprintf(info->name, sizeof info->name, "%s", fake_devices[index].name);
    info->kind = fake_devices[index].kind;
    info->total_memory = fake_devices[index].gib << 30;
    info->free_memory = info->total_memory / 2;
    info->compute_units = 1;
    return FINCH_OK;
}

static int opened[8];

static int fake_device_open(int index, finch_plugin_device **out)
{
    opened[index] = 1;
    *out = (finch_plugin_device *)&opened[index];
    return FINCH_OK;
}

static void fake_device_close(finch_plugin_device *dev) { *(int *)dev = 0; }

static int fake_unsupported(void)
{
    fake_error = "fake plugin: not a compute backend";
    return FINCH_ERR_UNSUPPORTED;
}

/* A newer plugin's table is longer than this finch's: entries this finch does not know follow. */
static struct {
    finch_plugin_api api;
    void (*later_entries[8])(void);
} table;

static const finch_plugin_api *make_table(void)
{
    void (*unsupported)(void) = (void (*)(void))fake_unsupported;
    for (size_t off = offsetof(finch_plugin_api, init); off + sizeof unsupported <= sizeof table;
         off += sizeof unsupported)
        memcpy((char *)&table + off, &unsupported, sizeof unsupported);
    table.api.abi_major = FINCH_PLUGIN_ABI_MAJOR;
    table.api.abi_minor = FINCH_PLUGIN_ABI_MINOR;
    table.api.struct_size = sizeof table.api;
    table.api.name = FAKE_NAME;
    table.api.version = "0-fake";
    table.api.init = fake_init;
    table.api.shutdown = fake_shutdown;
    table.api.last_error = fake_last_error;
    table.api.device_count = fake_device_count;
    table.api.device_info = fake_device_info;
    table.api.device_open = fake_device_open;
    table.api.device_close = fake_device_close;
#ifdef FAKE_ABI99
    table.api.abi_major = 99;
#endif
#ifdef FAKE_NULL_ENTRY
    table.api.gemm = NULL;
#endif
#ifdef FAKE_NEWER
    table.api.abi_minor = FINCH_PLUGIN_ABI_MINOR + 7;
    table.api.struct_size = sizeof table;
#endif
#ifdef FAKE_MISNAMED
    table.api.name = "cpu";
#endif
    return &table.api;
}

#ifndef FAKE_NO_ENTRY
__attribute__((visibility("default"))) const finch_plugin_api *finch_plugin_entry(void) { return make_table(); }
#else
/* A good table behind a misspelt entry point. */
__attribute__((visibility("default"))) const finch_plugin_api *finch_plugin_entry_(void) { return make_table(); }
#endif
