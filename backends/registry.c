/* The plugin registry: finds backend modules, checks them, keeps a report for each, opens devices.
 *
 * Discovery looks for files named libfinch-<name>.so, in this order, in: the explicit plugin path,
 * each directory of $FINCH_PLUGIN_PATH, the directory of the running executable, the directory of
 * the shared object holding this code (when libfinch is linked into a host's .so), the plugin
 * directory of an installed tree relative to the executable (bin/../lib/finch, for an install moved
 * with --prefix), and the directory plugins are installed to (FINCH_PLUGIN_INSTALL_DIR). Within a directory modules are taken in
 * name order. The first module of a name that loads wins; later ones of that name are reported as
 * shadowed and not opened. The built-in CPU backend comes before all of them.
 *
 * A module that fails at any step (dlopen, missing entry symbol, ABI check, init, no device) stays
 * in the report with the reason and is unloaded. */
#include "backends/backend.h"
#include "core/error.h"

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Set by cmake/FinchInstall.cmake: the installed plugin directory, absolute and relative to the
 * installed executables' directory. */
#ifndef FINCH_PLUGIN_INSTALL_DIR
#define FINCH_PLUGIN_INSTALL_DIR ""
#endif
#ifndef FINCH_PLUGIN_DIR_FROM_BIN
#define FINCH_PLUGIN_DIR_FROM_BIN ""
#endif

#define MODULE_PREFIX "libfinch-"
#define MODULE_SUFFIX ".so"
#define BUILT_IN_PATH "(built in)"

/* Every entry of the ABI 1.0 table; a plugin must provide all of them. Entries appended in later
 * minors are not listed: they are optional, and absent (NULL) when past a plugin's struct_size. */
#define ENTRY(e) { #e, offsetof(finch_plugin_api, e) }
static const struct {
    const char *name;
    size_t offset;
} required_entries[] = {
    ENTRY(init), ENTRY(shutdown), ENTRY(last_error), ENTRY(device_count), ENTRY(device_info),
    ENTRY(device_open), ENTRY(device_close), ENTRY(memory_info), ENTRY(stream_create),
    ENTRY(stream_destroy), ENTRY(synchronize), ENTRY(alloc), ENTRY(free), ENTRY(write), ENTRY(read),
    ENTRY(copy), ENTRY(fill), ENTRY(copy_2d), ENTRY(cast), ENTRY(gemm), ENTRY(axpby), ENTRY(sum_squares),
    ENTRY(qmatmul_forward), ENTRY(qmatmul_backward), ENTRY(linear_forward), ENTRY(linear_backward),
    ENTRY(attention_forward), ENTRY(attention_backward), ENTRY(rmsnorm_forward), ENTRY(rmsnorm_backward),
    ENTRY(layernorm_forward), ENTRY(layernorm_backward), ENTRY(rope_forward), ENTRY(rope_backward),
    ENTRY(glu_forward), ENTRY(glu_backward), ENTRY(activation_forward), ENTRY(activation_backward),
    ENTRY(embedding_forward), ENTRY(embedding_backward), ENTRY(cross_entropy), ENTRY(linear_cross_entropy),
    ENTRY(adamw_step),
};
#undef ENTRY

#define ABI_1_0_TABLE_SIZE (offsetof(finch_plugin_api, adamw_step) + sizeof(void (*)(void)))
/* A struct_size beyond this is garbage, not a newer minor. */
#define TABLE_SIZE_LIMIT ((size_t)1 << 16)

typedef struct registry_module {
    finch_backend_report report;
    void *handle;            /* dlopen handle; NULL for the built-in CPU backend */
    finch_plugin_api table;  /* the plugin's table; entries past its struct_size are NULL */
} registry_module;

typedef struct registry_device {
    int module;
    finch_device_report report;
} registry_device;

struct finch_registry {
    registry_module *modules;
    int n_modules, cap_modules;
    registry_device *devices;
    int n_devices, cap_devices;
};

int finch_plugin_api_check(const finch_plugin_api *api, const char *module)
{
    if (!module)
        module = "(unnamed module)";
    if (!api)
        return finch_error(FINCH_ERR_ABI, "%s: %s() returned NULL", module, FINCH_PLUGIN_ENTRY_SYMBOL);
    if (api->abi_major != FINCH_PLUGIN_ABI_MAJOR)
        return finch_error(FINCH_ERR_ABI, "%s: built for plugin ABI major %u, this finch speaks %d", module,
                           (unsigned)api->abi_major, FINCH_PLUGIN_ABI_MAJOR);
    if (api->struct_size < ABI_1_0_TABLE_SIZE || api->struct_size > TABLE_SIZE_LIMIT)
        return finch_error(FINCH_ERR_ABI, "%s: table size %zu bytes is not a plugin ABI %d table (%zu to %zu bytes)",
                           module, api->struct_size, FINCH_PLUGIN_ABI_MAJOR, (size_t)ABI_1_0_TABLE_SIZE,
                           (size_t)TABLE_SIZE_LIMIT);
    if (!api->name || !api->name[0] || strlen(api->name) >= sizeof ((finch_backend_report *)0)->name)
        return finch_error(FINCH_ERR_ABI, "%s: the table's name is missing or longer than %zu characters", module,
                           sizeof ((finch_backend_report *)0)->name - 1);
    for (size_t i = 0; i < sizeof required_entries / sizeof required_entries[0]; i++) {
        void (*fn)(void);
        memcpy(&fn, (const char *)api + required_entries[i].offset, sizeof fn);
        if (!fn)
            return finch_error(FINCH_ERR_ABI, "%s: required entry '%s' is NULL", module, required_entries[i].name);
    }
    return FINCH_OK;
}

/* ---- bookkeeping ------------------------------------------------------------------------------- */

/* snprintf into a fixed field, truncating silently: report fields are for people to read. */
__attribute__((format(printf, 3, 4))) static void set_text(char *dst, size_t size, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(dst, size, fmt, ap);
    va_end(ap);
}

static registry_module *add_module(finch_registry *reg, const char *name, const char *path)
{
    if (reg->n_modules == reg->cap_modules) {
        int cap = reg->cap_modules ? 2 * reg->cap_modules : 8;
        registry_module *m = realloc(reg->modules, (size_t)cap * sizeof *m);
        if (!m)
            return NULL;
        reg->modules = m;
        reg->cap_modules = cap;
    }
    registry_module *m = &reg->modules[reg->n_modules++];
    memset(m, 0, sizeof *m);
    set_text(m->report.name, sizeof m->report.name, "%s", name);
    set_text(m->report.path, sizeof m->report.path, "%s", path);
    return m;
}

static int add_device(finch_registry *reg, int module, int index, const finch_device_info *info)
{
    if (reg->n_devices == reg->cap_devices) {
        int cap = reg->cap_devices ? 2 * reg->cap_devices : 8;
        registry_device *d = realloc(reg->devices, (size_t)cap * sizeof *d);
        if (!d)
            return finch_error(FINCH_ERR_OUT_OF_MEMORY, "plugin registry: out of memory listing devices");
        reg->devices = d;
        reg->cap_devices = cap;
    }
    registry_device *d = &reg->devices[reg->n_devices++];
    memset(d, 0, sizeof *d);
    d->module = module;
    set_text(d->report.backend, sizeof d->report.backend, "%s", reg->modules[module].report.name);
    d->report.index = index;
    set_text(d->report.name, sizeof d->report.name, "%s", info->name);
    d->report.kind = (int)info->kind;
    d->report.total_memory = info->total_memory;
    d->report.free_memory = info->free_memory;
    const finch_plugin_api *t = &reg->modules[module].table;
    if (t->device_details && t->device_details(index, d->report.details, sizeof d->report.details) != FINCH_OK)
        d->report.details[0] = 0;
    d->report.details[sizeof d->report.details - 1] = 0;
    return FINCH_OK;
}

static void set_reason(registry_module *m, const char *reason)
{
    set_text(m->report.reason, sizeof m->report.reason, "%s", reason);
}

static const char *plugin_message(const finch_plugin_api *t, int status)
{
    const char *msg = t->last_error ? t->last_error() : NULL;
    return msg && msg[0] ? msg : finch_status_name((finch_status)status);
}

/* ---- bringing up one backend ------------------------------------------------------------------ */

/* Checks and copies the table, runs init() and lists the devices. On failure the reason is in the
 * report and nothing of the plugin is left running. */
static int start_backend(finch_registry *reg, int module, const finch_plugin_api *api, const char *label)
{
    registry_module *m = &reg->modules[module];
    if (api) {
        m->report.abi_major = (int)api->abi_major;
        m->report.abi_minor = (int)api->abi_minor;
    }
    if (finch_plugin_api_check(api, label) != FINCH_OK) {
        set_reason(m, finch_last_error());
        return FINCH_ERR_ABI;
    }
    if (strcmp(api->name, m->report.name) != 0) {
        finch_error(FINCH_ERR_ABI, "%s: the table names itself '%s', not '%s'", label, api->name, m->report.name);
        set_reason(m, finch_last_error());
        return FINCH_ERR_ABI;
    }
    size_t n = api->struct_size < sizeof m->table ? api->struct_size : sizeof m->table;
    memcpy(&m->table, api, n);
    m->table.struct_size = n;

    const finch_plugin_api *t = &m->table;
    int rc = t->init();
    if (rc != FINCH_OK) {
        set_reason(m, plugin_message(t, rc));
        return FINCH_ERR_DEVICE;
    }
    int count = 0;
    rc = t->device_count(&count);
    if (rc != FINCH_OK || count <= 0) {
        set_reason(m, rc != FINCH_OK ? plugin_message(t, rc) : "no device");
        t->shutdown();
        return FINCH_ERR_DEVICE;
    }
    char first_failure[256] = "";
    for (int i = 0; i < count; i++) {
        finch_device_info info;
        memset(&info, 0, sizeof info);
        rc = t->device_info(i, &info);
        if (rc != FINCH_OK) {
            if (!first_failure[0])
                snprintf(first_failure, sizeof first_failure, "device %d: %s", i, plugin_message(t, rc));
            continue;
        }
        info.name[sizeof info.name - 1] = 0;
        if (add_device(reg, module, i, &info) != FINCH_OK) {
            t->shutdown();
            return FINCH_ERR_OUT_OF_MEMORY;
        }
        m = &reg->modules[module];
        m->report.n_devices++;
    }
    if (m->report.n_devices == 0) {
        char reason[sizeof m->report.reason];
        set_text(reason, sizeof reason, "no usable device (%s)", first_failure);
        set_reason(m, reason);
        t->shutdown();
        return FINCH_ERR_DEVICE;
    }
    m->report.loaded = 1;
    return FINCH_OK;
}

static int find_loaded(const finch_registry *reg, const char *name)
{
    for (int i = 0; i < reg->n_modules; i++)
        if (reg->modules[i].report.loaded && strcmp(reg->modules[i].report.name, name) == 0)
            return i;
    return -1;
}

static int load_module(finch_registry *reg, const char *name, const char *path)
{
    registry_module *m = add_module(reg, name, path);
    if (!m)
        return finch_error(FINCH_ERR_OUT_OF_MEMORY, "plugin registry: out of memory");
    int module = reg->n_modules - 1;
    int winner = find_loaded(reg, name);
    if (winner >= 0) {
        char reason[sizeof m->report.reason];
        set_text(reason, sizeof reason, "shadowed by %s", reg->modules[winner].report.path);
        set_reason(m, reason);
        return FINCH_OK;
    }
    dlerror();
    void *handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
        const char *err = dlerror();
        set_reason(m, err ? err : "dlopen failed");
        return FINCH_OK;
    }
    finch_plugin_entry_fn entry = (finch_plugin_entry_fn)dlsym(handle, FINCH_PLUGIN_ENTRY_SYMBOL);
    if (!entry) {
        set_reason(m, "no " FINCH_PLUGIN_ENTRY_SYMBOL " symbol: not a finch plugin");
        dlclose(handle);
        return FINCH_OK;
    }
    const char *file = strrchr(path, '/');
    int rc = start_backend(reg, module, entry(), file ? file + 1 : path);
    if (rc == FINCH_ERR_OUT_OF_MEMORY) {
        dlclose(handle);
        return rc;
    }
    if (rc != FINCH_OK) {
        dlclose(handle);
        return FINCH_OK;
    }
    reg->modules[module].handle = handle;
    return FINCH_OK;
}

/* ---- discovery --------------------------------------------------------------------------------- */

typedef struct dir_list {
    char **dirs;
    int n, cap;
} dir_list;

/* Adds a directory once (compared by real path); ignores ones that do not exist. */
static int dir_list_add(dir_list *l, const char *dir)
{
    char real[PATH_MAX];
    if (!dir || !dir[0] || !realpath(dir, real))
        return FINCH_OK;
    for (int i = 0; i < l->n; i++)
        if (strcmp(l->dirs[i], real) == 0)
            return FINCH_OK;
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 8;
        char **d = realloc(l->dirs, (size_t)cap * sizeof *d);
        if (!d)
            return finch_error(FINCH_ERR_OUT_OF_MEMORY, "plugin registry: out of memory");
        l->dirs = d;
        l->cap = cap;
    }
    if (!(l->dirs[l->n] = strdup(real)))
        return finch_error(FINCH_ERR_OUT_OF_MEMORY, "plugin registry: out of memory");
    l->n++;
    return FINCH_OK;
}

static void dir_list_free(dir_list *l)
{
    for (int i = 0; i < l->n; i++)
        free(l->dirs[i]);
    free(l->dirs);
}

static int dir_list_add_parent(dir_list *l, const char *file)
{
    char copy[PATH_MAX];
    if (!file || !file[0] || strlen(file) >= sizeof copy)
        return FINCH_OK;
    strcpy(copy, file);
    return dir_list_add(l, dirname(copy));
}

static int search_dirs(const char *plugin_path, dir_list *l)
{
    int rc = FINCH_OK;
    if (plugin_path) {
        struct stat st;
        if (stat(plugin_path, &st) != 0)
            return finch_error(FINCH_ERR_IO, "plugin path '%s': %s", plugin_path, strerror(errno));
        if (!S_ISDIR(st.st_mode))
            return finch_error(FINCH_ERR_IO, "plugin path '%s': not a directory", plugin_path);
        rc = dir_list_add(l, plugin_path);
    }
    const char *env = getenv("FINCH_PLUGIN_PATH");
    if (env && rc == FINCH_OK) {
        char *copy = strdup(env), *save = NULL;
        if (!copy)
            return finch_error(FINCH_ERR_OUT_OF_MEMORY, "plugin registry: out of memory");
        for (char *d = strtok_r(copy, ":", &save); d && rc == FINCH_OK; d = strtok_r(NULL, ":", &save))
            rc = dir_list_add(l, d);
        free(copy);
    }
    char exe[PATH_MAX];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (len > 0 && rc == FINCH_OK) {
        exe[len] = 0;
        rc = dir_list_add_parent(l, exe);
        char *slash = strrchr(exe, '/');
        if (rc == FINCH_OK && slash && FINCH_PLUGIN_DIR_FROM_BIN[0]) {
            char installed[PATH_MAX];
            *slash = 0;
            if ((size_t)snprintf(installed, sizeof installed, "%s/%s", exe, FINCH_PLUGIN_DIR_FROM_BIN) < sizeof installed)
                rc = dir_list_add(l, installed);
        }
    }
    Dl_info self;
    if (rc == FINCH_OK && dladdr((void *)search_dirs, &self) && self.dli_fname)
        rc = dir_list_add_parent(l, self.dli_fname);
    if (rc == FINCH_OK)
        rc = dir_list_add(l, FINCH_PLUGIN_INSTALL_DIR);
    return rc;
}

/* The <name> of libfinch-<name>.so, or 0 when the file is not a module. */
static int module_name(const char *file, char name[32])
{
    size_t len = strlen(file), pre = strlen(MODULE_PREFIX), suf = strlen(MODULE_SUFFIX);
    if (len <= pre + suf || strncmp(file, MODULE_PREFIX, pre) != 0 || strcmp(file + len - suf, MODULE_SUFFIX) != 0)
        return 0;
    size_t n = len - pre - suf;
    if (n >= 32)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = file[pre + i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'))
            return 0;
    }
    memcpy(name, file + pre, n);
    name[n] = 0;
    return 1;
}

static int is_module_file(const struct dirent *e)
{
    char name[32];
    return module_name(e->d_name, name);
}

static int scan_dir(finch_registry *reg, const char *dir)
{
    struct dirent **entries = NULL;
    int n = scandir(dir, &entries, is_module_file, alphasort);
    if (n < 0)
        return FINCH_OK; /* unreadable directories are skipped like missing ones */
    int rc = FINCH_OK;
    for (int i = 0; i < n; i++) {
        char name[32], path[PATH_MAX];
        module_name(entries[i]->d_name, name);
        if (rc == FINCH_OK && (size_t)snprintf(path, sizeof path, "%s/%s", dir, entries[i]->d_name) < sizeof path)
            rc = load_module(reg, name, path);
        free(entries[i]);
    }
    free(entries);
    return rc;
}

/* ---- the registry ----------------------------------------------------------------------------- */

int finch_registry_open(const char *plugin_path, int cpu_threads, finch_registry **out)
{
    if (!out)
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_registry_open: out is NULL");
    *out = NULL;
    finch_registry *reg = calloc(1, sizeof *reg);
    if (!reg)
        return finch_error(FINCH_ERR_OUT_OF_MEMORY, "plugin registry: out of memory");

    finch_cpu_set_threads(cpu_threads);
    int rc = add_module(reg, "cpu", BUILT_IN_PATH) ? FINCH_OK
                                                  : finch_error(FINCH_ERR_OUT_OF_MEMORY, "plugin registry: out of memory");
    if (rc == FINCH_OK && start_backend(reg, 0, finch_cpu_plugin_api(), "built-in cpu backend") == FINCH_ERR_OUT_OF_MEMORY)
        rc = FINCH_ERR_OUT_OF_MEMORY;

    dir_list dirs = {0};
    if (rc == FINCH_OK)
        rc = search_dirs(plugin_path, &dirs);
    for (int i = 0; i < dirs.n && rc == FINCH_OK; i++)
        rc = scan_dir(reg, dirs.dirs[i]);
    dir_list_free(&dirs);
    if (rc != FINCH_OK) {
        finch_registry_close(reg);
        return rc;
    }
    finch_error_clear();
    *out = reg;
    return FINCH_OK;
}

void finch_registry_close(finch_registry *reg)
{
    if (!reg)
        return;
    for (int i = reg->n_modules - 1; i >= 0; i--) {
        registry_module *m = &reg->modules[i];
        if (m->report.loaded)
            m->table.shutdown();
        if (m->handle)
            dlclose(m->handle);
    }
    free(reg->modules);
    free(reg->devices);
    free(reg);
}

int finch_registry_backend_count(const finch_registry *reg) { return reg ? reg->n_modules : 0; }

int finch_registry_backend_report(const finch_registry *reg, int i, finch_backend_report *out)
{
    if (!reg || !out)
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "backend report: registry or out is NULL");
    if (i < 0 || i >= reg->n_modules)
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "backend report: index %d is not in [0, %d)", i, reg->n_modules);
    *out = reg->modules[i].report;
    return FINCH_OK;
}

int finch_registry_device_count(const finch_registry *reg) { return reg ? reg->n_devices : 0; }

int finch_registry_device_report(const finch_registry *reg, int i, finch_device_report *out)
{
    if (!reg || !out)
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "device report: registry or out is NULL");
    if (i < 0 || i >= reg->n_devices)
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "device report: index %d is not in [0, %d)", i, reg->n_devices);
    *out = reg->devices[i].report;
    return FINCH_OK;
}

/* ---- opening a device -------------------------------------------------------------------------- */

static int open_device(finch_registry *reg, const registry_device *d, finch_backend *out)
{
    const finch_plugin_api *t = &reg->modules[d->module].table;
    finch_plugin_device *dev = NULL;
    int rc = t->device_open(d->report.index, &dev);
    if (rc != FINCH_OK || !dev)
        return finch_error(rc != FINCH_OK ? rc : FINCH_ERR_DEVICE, "opening %s:%d (%s): %s", d->report.backend,
                           d->report.index, d->report.name, plugin_message(t, rc != FINCH_OK ? rc : FINCH_ERR_DEVICE));
    memset(out, 0, sizeof *out);
    out->api = t;
    out->dev = dev;
    out->stream = NULL;
    snprintf(out->name, sizeof out->name, "%s", d->report.backend);
    out->device_index = d->report.index;
    return FINCH_OK;
}

/* Lower is preferred by "auto": discrete GPUs, then integrated, then the CPU; "other" devices
 * (unknown accelerators) are never picked automatically. */
static int auto_rank(int kind)
{
    switch (kind) {
    case FINCH_DEVICE_GPU: return 0;
    case FINCH_DEVICE_IGPU: return 1;
    case FINCH_DEVICE_CPU: return 2;
    default: return -1;
    }
}

static int auto_better(const finch_device_report *a, const finch_device_report *b)
{
    int ra = auto_rank(a->kind), rb = auto_rank(b->kind);
    if (ra != rb)
        return ra < rb;
    return a->total_memory > b->total_memory;
}

/* Tries devices from the most to the least preferred; the first that opens is used. */
static int open_auto(finch_registry *reg, finch_backend *out)
{
    char *tried = calloc((size_t)reg->n_devices + 1, 1);
    if (!tried)
        return finch_error(FINCH_ERR_OUT_OF_MEMORY, "plugin registry: out of memory");
    int rc = finch_error(FINCH_ERR_DEVICE, "backend \"auto\": no device is available");
    char first_error[1024] = "";
    for (;;) {
        int best = -1;
        for (int i = 0; i < reg->n_devices; i++)
            if (!tried[i] && auto_rank(reg->devices[i].report.kind) >= 0 &&
                (best < 0 || auto_better(&reg->devices[i].report, &reg->devices[best].report)))
                best = i;
        if (best < 0)
            break;
        tried[best] = 1;
        rc = open_device(reg, &reg->devices[best], out);
        if (rc == FINCH_OK)
            break;
        if (!first_error[0])
            snprintf(first_error, sizeof first_error, "%s", finch_last_error());
    }
    free(tried);
    if (rc != FINCH_OK && first_error[0])
        finch_error(rc, "backend \"auto\": %s", first_error);
    return rc;
}

/* Appends a list of the loaded backends and of modules that did not load, for error messages. */
static void describe_backends(const finch_registry *reg, char *buf, size_t size)
{
    size_t len = strlen(buf);
    const char *sep = "; available: ";
    for (int i = 0; i < reg->n_modules && len < size; i++) {
        const finch_backend_report *r = &reg->modules[i].report;
        if (r->loaded) {
            len += (size_t)snprintf(buf + len, size - len, "%s%s (%d device%s)", sep, r->name, r->n_devices,
                                    r->n_devices == 1 ? "" : "s");
            sep = ", ";
        }
    }
    sep = "; not loaded: ";
    for (int i = 0; i < reg->n_modules && len < size; i++) {
        const finch_backend_report *r = &reg->modules[i].report;
        if (!r->loaded) {
            len += (size_t)snprintf(buf + len, size - len, "%s%s (%s: %s)", sep, r->name, r->path, r->reason);
            sep = ", ";
        }
    }
}

int finch_backend_open(finch_registry *reg, const char *spec, finch_backend *out)
{
    if (!reg || !out)
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_backend_open: registry or out is NULL");
    memset(out, 0, sizeof *out);
    if (!spec || strcmp(spec, "auto") == 0)
        return open_auto(reg, out);

    char name[32];
    const char *colon = strchr(spec, ':');
    size_t name_len = colon ? (size_t)(colon - spec) : strlen(spec);
    if (name_len == 0 || name_len >= sizeof name)
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "backend '%s': expected \"auto\", NAME or NAME:INDEX", spec);
    memcpy(name, spec, name_len);
    name[name_len] = 0;
    long index = 0;
    if (colon) {
        char *end = NULL;
        errno = 0;
        index = strtol(colon + 1, &end, 10);
        if (colon[1] < '0' || colon[1] > '9' || *end || errno || index > INT_MAX)
            return finch_error(FINCH_ERR_INVALID_ARGUMENT, "backend '%s': the device index must be a number >= 0", spec);
    }

    int module = find_loaded(reg, name);
    if (module < 0) {
        char msg[1800];
        int known = 0;
        for (int i = 0; i < reg->n_modules; i++)
            known |= strcmp(reg->modules[i].report.name, name) == 0;
        snprintf(msg, sizeof msg, known ? "backend '%s' did not load" : "unknown backend '%s'", name);
        describe_backends(reg, msg, sizeof msg);
        return finch_error(known ? FINCH_ERR_DEVICE : FINCH_ERR_INVALID_ARGUMENT, "%s", msg);
    }
    for (int i = 0; i < reg->n_devices; i++)
        if (reg->devices[i].module == module && reg->devices[i].report.index == index)
            return open_device(reg, &reg->devices[i], out);
    return finch_error(FINCH_ERR_INVALID_ARGUMENT, "backend '%s': no device %ld (%s has %d device%s)", spec, index, name,
                       reg->modules[module].report.n_devices, reg->modules[module].report.n_devices == 1 ? "" : "s");
}

void finch_backend_close(finch_backend *be)
{
    if (!be)
        return;
    if (be->api && be->dev) {
        if (be->stream)
            be->api->stream_destroy(be->dev, be->stream);
        be->api->device_close(be->dev);
    }
    memset(be, 0, sizeof *be);
}
