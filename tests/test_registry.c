/* The plugin registry and the runtime API: discovery, refusals with reasons, "auto", backend specs,
 * shadowing, shutdown before unload, and NULL arguments. Uses the fake modules of tests/plugins. */
#include "backends/backend.h"
#include "finch/finch.h"
#include "tests/testing.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *plugin_dir;

static int find_report(finch_registry *reg, const char *name, int loaded, finch_backend_report *out)
{
    for (int i = 0; i < finch_registry_backend_count(reg); i++)
        if (finch_registry_backend_report(reg, i, out) == FINCH_OK && strcmp(out->name, name) == 0 &&
            (loaded < 0 || out->loaded == loaded))
            return 1;
    return 0;
}

static void check_refused(finch_registry *reg, const char *name, const char *why1, const char *why2)
{
    finch_backend_report r;
    CHECK(find_report(reg, name, -1, &r), "%s is not in the report", name);
    CHECK(!r.loaded, "%s loaded", name);
    CHECK(strstr(r.path, name) && strstr(r.path, plugin_dir), "%s: path '%s'", name, r.path);
    CHECK(strstr(r.reason, why1), "%s: reason '%s' lacks '%s'", name, r.reason, why1);
    if (why2)
        CHECK(strstr(r.reason, why2), "%s: reason '%s' lacks '%s'", name, r.reason, why2);
}

static int auto_rank(int kind) { return kind == FINCH_DEVICE_GPU ? 0 : kind == FINCH_DEVICE_IGPU ? 1 : kind == FINCH_DEVICE_CPU ? 2 : 3; }

/* "auto" opened the most preferred kind and, within it, a device with the most memory. */
static void check_auto_is_best(finch_registry *reg, const finch_backend *be)
{
    finch_device_report picked = {0}, d;
    int found = 0;
    for (int i = 0; i < finch_registry_device_count(reg); i++)
        if (finch_registry_device_report(reg, i, &d) == FINCH_OK && strcmp(d.backend, be->name) == 0 &&
            d.index == be->device_index)
            picked = d, found = 1;
    CHECK(found, "auto opened %s:%d, which is not listed", be->name, be->device_index);
    for (int i = 0; i < finch_registry_device_count(reg); i++) {
        finch_registry_device_report(reg, i, &d);
        int better = auto_rank(d.kind) < auto_rank(picked.kind) ||
                     (auto_rank(d.kind) == auto_rank(picked.kind) && d.total_memory > picked.total_memory);
        CHECK(!better, "auto picked %s:%d but %s:%d is better", picked.backend, picked.index, d.backend, d.index);
    }
}

static void test_api_check(void)
{
    finch_plugin_api t;
    memset(&t, 0, sizeof t);
    CHECK(finch_plugin_api_check(NULL, "libfinch-x.so") == FINCH_ERR_ABI, "a NULL table passed");
    t.abi_major = 99;
    t.struct_size = sizeof t;
    CHECK(finch_plugin_api_check(&t, "libfinch-x.so") == FINCH_ERR_ABI, "ABI 99 passed");
    CHECK(strstr(finch_last_error(), "libfinch-x.so") && strstr(finch_last_error(), "99") &&
              strstr(finch_last_error(), "speaks 1"),
          "message '%s'", finch_last_error());
    t.abi_major = FINCH_PLUGIN_ABI_MAJOR;
    t.name = "x";
    CHECK(finch_plugin_api_check(&t, "libfinch-x.so") == FINCH_ERR_ABI, "a table of NULLs passed");
    CHECK(strstr(finch_last_error(), "'init'"), "message '%s'", finch_last_error());
    t.struct_size = 16;
    CHECK(finch_plugin_api_check(&t, "libfinch-x.so") == FINCH_ERR_ABI, "a 16-byte table passed");
    CHECK(strstr(finch_last_error(), "16 bytes"), "message '%s'", finch_last_error());
    /* The built-in CPU table passes, also when it claims to be a longer, newer minor. */
    t = *finch_cpu_plugin_api();
    CHECK(finch_plugin_api_check(&t, "cpu") == FINCH_OK, "the CPU table fails: %s", finch_last_error());
    t.struct_size = sizeof t; /* a newer minor's longer table is only read up to this finch's size */
    t.abi_minor = 5;
    CHECK(finch_plugin_api_check(&t, "cpu") == FINCH_OK, "minor 5 refused: %s", finch_last_error());
    t.gemm = NULL;
    CHECK(finch_plugin_api_check(&t, "cpu") == FINCH_ERR_ABI && strstr(finch_last_error(), "'gemm'"),
          "NULL gemm: '%s'", finch_last_error());
}

static void test_discovery(void)
{
    finch_registry *reg = NULL;
    unsetenv("FINCH_PLUGIN_PATH");
    CHECK(finch_registry_open(plugin_dir, 1, &reg) == FINCH_OK, "registry_open: %s", finch_last_error());
    if (!reg)
        return;
    finch_backend_report r;
    CHECK(finch_registry_backend_report(reg, 0, &r) == FINCH_OK && strcmp(r.name, "cpu") == 0 && r.loaded &&
              strcmp(r.path, "(built in)") == 0 && r.n_devices >= 1,
          "backend 0 is not the built-in cpu: %s %s", r.name, r.path);
    check_refused(reg, "fake_abi99", "ABI major 99", "speaks 1");
    check_refused(reg, "fake_initfail", "libfakedriver.so.1: cannot open shared object file", NULL);
    check_refused(reg, "fake_noentry", "finch_plugin_entry", NULL);
    check_refused(reg, "fake_nullentry", "'gemm'", NULL);
    check_refused(reg, "fake_nodevice", "no device", NULL);
    check_refused(reg, "fake_misnamed", "'cpu'", NULL);
    CHECK(find_report(reg, "fake_abi99", 0, &r) && r.abi_major == 99, "abi_major %d", r.abi_major);

    CHECK(find_report(reg, "fake_gpu", 1, &r) && r.n_devices == 3 && r.abi_major == FINCH_PLUGIN_ABI_MAJOR,
          "fake_gpu: loaded %d, %d devices", r.loaded, r.n_devices);
    CHECK(find_report(reg, "fake_newer", 1, &r) && r.abi_minor == FINCH_PLUGIN_ABI_MINOR + 7,
          "fake_newer (a newer minor) did not load: %s", r.reason);

    finch_backend be;
    CHECK(finch_backend_open(reg, "auto", &be) == FINCH_OK, "auto: %s", finch_last_error());
    CHECK(be.api && be.dev && (strcmp(be.name, "fake_gpu") != 0 || be.device_index == 1),
          "auto picked %s:%d, not the 16 GiB fake_gpu:1", be.name, be.device_index);
    check_auto_is_best(reg, &be);
    finch_backend_close(&be);
    CHECK(be.api == NULL && be.dev == NULL, "backend_close left the handle set");

    CHECK(finch_backend_open(reg, "fake_gpu", &be) == FINCH_OK && be.device_index == 0, "fake_gpu: %s",
          finch_last_error());
    finch_backend_close(&be);
    CHECK(finch_backend_open(reg, "fake_gpu:2", &be) == FINCH_OK && be.device_index == 2, "fake_gpu:2: %s",
          finch_last_error());
    finch_backend_close(&be);
    CHECK(finch_backend_open(reg, "cpu:0", &be) == FINCH_OK && strcmp(be.name, "cpu") == 0, "cpu:0: %s",
          finch_last_error());
    finch_backend_close(&be);

    CHECK(finch_backend_open(reg, "fake_gpu:3", &be) == FINCH_ERR_INVALID_ARGUMENT &&
              strstr(finch_last_error(), "3 devices"),
          "fake_gpu:3: '%s'", finch_last_error());
    const char *bad_specs[] = {"fake_gpu:", "fake_gpu:x", "fake_gpu:-1", "fake_gpu:+1", "fake_gpu:1x", "", ":0",
                               "a_name_that_is_far_too_long_to_be_a_backend"};
    for (size_t i = 0; i < sizeof bad_specs / sizeof bad_specs[0]; i++)
        CHECK(finch_backend_open(reg, bad_specs[i], &be) == FINCH_ERR_INVALID_ARGUMENT, "spec '%s' accepted",
              bad_specs[i]);
    CHECK(finch_backend_open(reg, "nosuch", &be) == FINCH_ERR_INVALID_ARGUMENT, "unknown backend accepted");
    const char *msg = finch_last_error();
    CHECK(strstr(msg, "unknown backend 'nosuch'") && strstr(msg, "cpu") && strstr(msg, "fake_gpu") &&
              strstr(msg, "fake_abi99") && strstr(msg, "ABI major 99"),
          "unknown backend message: '%s'", msg);
    CHECK(finch_backend_open(reg, "fake_initfail", &be) == FINCH_ERR_DEVICE &&
              strstr(finch_last_error(), "did not load") && strstr(finch_last_error(), "libfakedriver"),
          "a backend that did not load: '%s'", finch_last_error());
    CHECK(finch_backend_open(NULL, "cpu", &be) == FINCH_ERR_INVALID_ARGUMENT, "NULL registry");
    CHECK(finch_backend_open(reg, "cpu", NULL) == FINCH_ERR_INVALID_ARGUMENT, "NULL out");
    CHECK(finch_registry_backend_report(reg, -1, &r) == FINCH_ERR_INVALID_ARGUMENT, "report -1");
    CHECK(finch_registry_backend_report(reg, finch_registry_backend_count(reg), &r) == FINCH_ERR_INVALID_ARGUMENT,
          "report past the end");
    finch_registry_close(reg);
}

static int file_contains(const char *path, const char *text)
{
    char buf[4096] = "";
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = 0;
    fclose(f);
    return strstr(buf, text) != NULL;
}

static void test_env_path_shadowing_and_shutdown(void)
{
    char shadow[1024], env[2200], log[1024], winner[1100];
    snprintf(shadow, sizeof shadow, "%s/shadow", plugin_dir);
    snprintf(log, sizeof log, "%s/fake-plugin.log", testing_tmp_dir());
    remove(log);
    setenv("FINCH_FAKE_LOG", log, 1);

    /* Empty and missing entries are skipped; the first directory holding fake_gpu wins. */
    snprintf(env, sizeof env, "/nonexistent/finch::%s:%s", shadow, plugin_dir);
    setenv("FINCH_PLUGIN_PATH", env, 1);
    finch_registry *reg = NULL;
    CHECK(finch_registry_open(NULL, 1, &reg) == FINCH_OK, "registry_open: %s", finch_last_error());
    if (!reg)
        return;
    finch_backend_report r;
    snprintf(winner, sizeof winner, "%s/libfinch-fake_gpu.so", shadow);
    CHECK(find_report(reg, "fake_gpu", 1, &r) && strstr(r.path, "/shadow/"), "FINCH_PLUGIN_PATH: fake_gpu from '%s'",
          r.path);
    int shadowed = 0;
    for (int i = 0; i < finch_registry_backend_count(reg); i++)
        if (finch_registry_backend_report(reg, i, &r) == FINCH_OK && strcmp(r.name, "fake_gpu") == 0 && !r.loaded)
            shadowed += strstr(r.reason, "shadowed by") && strstr(r.reason, winner);
    CHECK(shadowed == 1, "the second fake_gpu is not reported as shadowed by %s", winner);
    CHECK(!file_contains(log, "fake_gpu shutdown"), "shutdown before close");
    finch_registry_close(reg);
    CHECK(file_contains(log, "fake_gpu init\n") && file_contains(log, "fake_gpu shutdown\n"),
          "fake_gpu was not shut down on close");
    CHECK(!file_contains(log, "fake_initfail"), "a module whose init failed was shut down");

    /* The explicit path comes before FINCH_PLUGIN_PATH. */
    CHECK(finch_registry_open(plugin_dir, 1, &reg) == FINCH_OK, "registry_open: %s", finch_last_error());
    if (reg) {
        CHECK(find_report(reg, "fake_gpu", 1, &r) && !strstr(r.path, "/shadow/"), "plugin_path: fake_gpu from '%s'",
              r.path);
        finch_registry_close(reg);
    }
    unsetenv("FINCH_PLUGIN_PATH");
    unsetenv("FINCH_FAKE_LOG");

    CHECK(finch_registry_open("/nonexistent/finch-plugins", 1, &reg) == FINCH_ERR_IO && !reg &&
              strstr(finch_last_error(), "/nonexistent/finch-plugins"),
          "a missing explicit plugin path: '%s'", finch_last_error());
}

/* Without the fakes, "auto" takes a real GPU when a real plugin loaded one, else the CPU. */
static void test_auto_without_fakes(void)
{
    unsetenv("FINCH_PLUGIN_PATH");
    finch_registry *reg = NULL;
    CHECK(finch_registry_open(NULL, 1, &reg) == FINCH_OK, "registry_open: %s", finch_last_error());
    if (!reg)
        return;
    int gpus = 0;
    finch_device_report d;
    for (int i = 0; i < finch_registry_device_count(reg); i++)
        if (finch_registry_device_report(reg, i, &d) == FINCH_OK)
            gpus += d.kind == FINCH_DEVICE_GPU || d.kind == FINCH_DEVICE_IGPU;
    finch_backend be;
    CHECK(finch_backend_open(reg, "auto", &be) == FINCH_OK, "auto: %s", finch_last_error());
    if (!gpus)
        CHECK(strcmp(be.name, "cpu") == 0, "auto picked %s with no GPU present", be.name);
    check_auto_is_best(reg, &be);
    finch_backend_close(&be);
    finch_registry_close(reg);
}

static void test_runtime(void)
{
    finch_runtime *rt = NULL;
    finch_device_report d;
    finch_backend_report b;
    CHECK(finch_runtime_open("cpu", NULL) == FINCH_ERR_INVALID_ARGUMENT, "open with NULL out");
    CHECK(finch_runtime_open_ex(NULL, &rt) == FINCH_ERR_INVALID_ARGUMENT && !rt, "open_ex with NULL opts");
    finch_runtime_options bad = {.backend = "cpu", .n_threads = -2};
    CHECK(finch_runtime_open_ex(&bad, &rt) == FINCH_ERR_INVALID_ARGUMENT && !rt, "n_threads -2 accepted");
    finch_runtime_close(NULL);
    CHECK(finch_runtime_backend_count(NULL) == 0, "backend_count(NULL)");
    CHECK(finch_runtime_device_count(NULL) == 0, "device_count(NULL)");
    CHECK(finch_runtime_backend(NULL, 0, &b) == FINCH_ERR_INVALID_ARGUMENT, "backend(NULL)");
    CHECK(finch_runtime_device(NULL, 0, &d) == FINCH_ERR_INVALID_ARGUMENT, "device(NULL)");
    CHECK(finch_runtime_active(NULL, &d) == FINCH_ERR_INVALID_ARGUMENT, "active(NULL)");

    CHECK(finch_runtime_open("nosuch", &rt) == FINCH_ERR_INVALID_ARGUMENT && !rt, "unknown backend opened");
    CHECK(strstr(finch_last_error(), "nosuch") && strstr(finch_last_error(), "cpu"), "message '%s'",
          finch_last_error());

    finch_runtime_options opts = {.backend = "fake_gpu:1", .plugin_path = plugin_dir, .n_threads = 1};
    CHECK(finch_runtime_open_ex(&opts, &rt) == FINCH_OK, "open fake_gpu:1: %s", finch_last_error());
    if (rt) {
        CHECK(finch_runtime_active(rt, &d) == FINCH_OK && strcmp(d.backend, "fake_gpu") == 0 && d.index == 1 &&
                  strcmp(d.name, "Fake GPU 16G") == 0 && d.kind == FINCH_DEVICE_GPU && d.total_memory == 16ull << 30,
              "active: %s:%d %s", d.backend, d.index, d.name);
        CHECK(finch_runtime_backend_count(rt) >= 9, "%d backends", finch_runtime_backend_count(rt));
        CHECK(finch_runtime_device_count(rt) >= 5, "%d devices", finch_runtime_device_count(rt));
        CHECK(finch_runtime_backend(rt, 0, NULL) == FINCH_ERR_INVALID_ARGUMENT, "backend(rt, 0, NULL)");
        CHECK(finch_runtime_device(rt, -1, &d) == FINCH_ERR_INVALID_ARGUMENT, "device(rt, -1)");
        CHECK(finch_runtime_device(rt, 0, NULL) == FINCH_ERR_INVALID_ARGUMENT, "device(rt, 0, NULL)");
        CHECK(finch_runtime_active(rt, NULL) == FINCH_ERR_INVALID_ARGUMENT, "active(rt, NULL)");
        finch_runtime_close(rt);
    }

    CHECK(finch_runtime_open(NULL, &rt) == FINCH_OK, "open(NULL = auto): %s", finch_last_error());
    if (rt) {
        CHECK(finch_runtime_active(rt, &d) == FINCH_OK, "active: %s", finch_last_error());
        finch_runtime_close(rt);
    }
    CHECK(finch_runtime_open("cpu", &rt) == FINCH_OK, "open cpu: %s", finch_last_error());
    if (rt) {
        CHECK(finch_runtime_active(rt, &d) == FINCH_OK && strcmp(d.backend, "cpu") == 0 && d.index == 0 &&
                  d.kind == FINCH_DEVICE_CPU && d.total_memory > 0,
              "active: %s:%d kind %d", d.backend, d.index, d.kind);
        finch_runtime_close(rt);
    }
}

int main(void)
{
    static char real[4096];
    const char *dir = getenv("FINCH_TEST_PLUGIN_DIR");
    if (!dir || !*dir || !realpath(dir, real)) {
        fprintf(stderr, "FINCH_TEST_PLUGIN_DIR is not set or missing (run through ctest)\n");
        return 1;
    }
    plugin_dir = real; /* the registry reports real paths */
    test_api_check();
    test_discovery();
    test_env_path_shadowing_and_shutdown();
    test_auto_without_fakes();
    test_runtime();
    return testing_finish();
}
