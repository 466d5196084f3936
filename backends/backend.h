/* What the core sees of devices: a loaded plugin's table plus one opened device and stream.
 * The registry (registry.c) finds plugin modules, checks their ABI and opens them; the CPU
 * backend (cpu/) is built in and always present. */
#ifndef FINCH_BACKENDS_BACKEND_H
#define FINCH_BACKENDS_BACKEND_H

#include "finch/finch.h"
#include "finch/plugin.h"

typedef struct finch_backend {
    const finch_plugin_api *api;
    finch_plugin_device *dev;
    finch_plugin_stream *stream;   /* NULL: the device's default stream */
    char name[32];                 /* "cpu", "cuda", ... */
    int device_index;
} finch_backend;

/* The built-in CPU backend's table (backends/cpu/cpu_plugin.c). */
const finch_plugin_api *finch_cpu_plugin_api(void);
/* Threads the CPU backend may use (0 = all cores); call before device_open. */
void finch_cpu_set_threads(int n_threads);

typedef struct finch_registry finch_registry;

/* Finds modules named libfinch-<name>.so in: plugin_path (if not NULL; FINCH_ERR_IO if it is not
 * a directory), each directory of $FINCH_PLUGIN_PATH (':'-separated), the directory of the running
 * executable, the directory of the shared object holding this code, and the installed plugin
 * directory. Loads each with dlopen(RTLD_NOW|RTLD_LOCAL), checks the ABI and init(); keeps a report
 * for every module, loaded or not (the first module of a name that loads wins; later ones are
 * reported as shadowed). The CPU backend is report 0. */
int finch_registry_open(const char *plugin_path, int cpu_threads, finch_registry **out);
void finch_registry_close(finch_registry *reg);

int finch_registry_backend_count(const finch_registry *reg);
int finch_registry_backend_report(const finch_registry *reg, int i, finch_backend_report *out);
int finch_registry_device_count(const finch_registry *reg);
int finch_registry_device_report(const finch_registry *reg, int i, finch_device_report *out);

/* Opens a device: spec is "auto" (largest discrete GPU, then iGPU, then CPU), "NAME" (device 0 of
 * that backend) or "NAME:INDEX". */
int finch_backend_open(finch_registry *reg, const char *spec, finch_backend *out);
void finch_backend_close(finch_backend *be);

/* Checks a plugin table before use: ABI major, struct size, every required entry present.
 * Returns FINCH_OK or FINCH_ERR_ABI with a message naming the module. */
int finch_plugin_api_check(const finch_plugin_api *api, const char *module);

#endif
