/* The HIP plugin module as built: it dlopens without a GPU, its table is a complete "hip" table, and
 * init() either finds a device or fails cleanly with FINCH_ERR_DEVICE and a reason that says which of
 * driver or device is missing, every time it is called; the registry then reports that reason.
 * On an AMD machine the device must list and open. Exits 77 (skipped) where the module was not
 * built (FINCH_HIP=OFF, or no hipcc). */
#include "backends/backend.h"
#include "tests/testing.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int says_what_is_missing(const char *msg)
{
    return msg && (strncmp(msg, "no HIP driver: ", 15) == 0 || strcmp(msg, "no HIP device") == 0);
}

static void check_without_device(const finch_plugin_api *t, int rc)
{
    const char *msg = t->last_error();
    CHECK(rc == FINCH_ERR_DEVICE, "init() returned %d, not FINCH_ERR_DEVICE", rc);
    CHECK(says_what_is_missing(msg), "init() failed with '%s'", msg ? msg : "(NULL)");
    int count = -1;
    CHECK(t->device_count(&count) == FINCH_OK && count == 0, "device_count gave %d: %s", count, t->last_error());
    finch_plugin_device *dev = (finch_plugin_device *)1;
    CHECK(t->device_open(0, &dev) != FINCH_OK && dev == NULL, "device 0 opened without a device");
    CHECK(strstr(t->last_error(), "device 0") != NULL, "device_open(0) failed with '%s'", t->last_error());
}

static void check_with_device(const finch_plugin_api *t)
{
    int count = 0;
    CHECK(t->device_count(&count) == FINCH_OK && count > 0, "init() succeeded but device_count gave %d: %s", count,
          t->last_error());
    finch_device_info info;
    CHECK(t->device_info(0, &info) == FINCH_OK && info.name[0] && info.total_memory > 0, "device_info(0): %s",
          t->last_error());
    finch_plugin_device *dev = NULL;
    CHECK(t->device_open(0, &dev) == FINCH_OK && dev, "device_open(0): %s", t->last_error());
    if (dev) t->device_close(dev);
}

static void check_registry_report(const char *bin_dir, int device_found)
{
    finch_registry *reg = NULL;
    CHECK(finch_registry_open(bin_dir, 1, &reg) == FINCH_OK, "registry: %s", finch_last_error());
    if (!reg) return;
    int found = 0;
    for (int i = 0; i < finch_registry_backend_count(reg); i++) {
        finch_backend_report r;
        if (finch_registry_backend_report(reg, i, &r) != FINCH_OK || strcmp(r.name, "hip") != 0) continue;
        found = 1;
        CHECK(r.loaded == device_found, "registry: hip loaded = %d (%s)", r.loaded, r.reason);
        if (!device_found) CHECK(says_what_is_missing(r.reason), "registry: hip refused with '%s'", r.reason);
    }
    CHECK(found, "registry: no report for hip from %s", bin_dir);
    finch_registry_close(reg);
}

int main(void)
{
    const char *bin_dir = getenv("FINCH_BIN_DIR");
    char path[4096];
    snprintf(path, sizeof path, "%s/libfinch-hip.so", bin_dir ? bin_dir : ".");
    if (access(path, F_OK) != 0) {
        printf("skipped: %s was not built\n", path);
        return 77;
    }
    void *handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    CHECK(handle != NULL, "dlopen %s: %s", path, dlerror());
    if (!handle) return testing_finish();
    finch_plugin_entry_fn entry = (finch_plugin_entry_fn)dlsym(handle, FINCH_PLUGIN_ENTRY_SYMBOL);
    CHECK(entry != NULL, "no %s in %s", FINCH_PLUGIN_ENTRY_SYMBOL, path);
    const finch_plugin_api *t = entry ? entry() : NULL;
    CHECK(finch_plugin_api_check(t, "libfinch-hip.so") == FINCH_OK, "table: %s", finch_last_error());
    int device_found = 0;
    if (t && t->name && strcmp(t->name, "hip") == 0) {
        /* Twice: a failed init() leaves nothing behind that changes the next one. */
        for (int round = 0; round < 2; round++) {
            int rc = t->init();
            device_found = rc == FINCH_OK;
            if (device_found) check_with_device(t);
            else check_without_device(t, rc);
            t->shutdown();
        }
    } else {
        CHECK(0, "the table names itself '%s', not 'hip'", t && t->name ? t->name : "(NULL)");
    }
    dlclose(handle);
    check_registry_report(bin_dir ? bin_dir : ".", device_found);
    return testing_finish();
}
