/* `finch info` and the CLI's dispatcher, run as a program: $FINCH_BIN_DIR/finch. */
#include "tests/testing.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

/* The line of `finch info` output that starts (after spaces) with name, and the line after it. */
static const char *backend_lines(const char *out, const char *name, char *dst, size_t size)
{
    char key[64];
    snprintf(key, sizeof key, "\n  %s ", name);
    const char *p = strstr(out, key);
    if (!p)
        return NULL;
    p++;
    const char *end = strchr(p, '\n');
    end = end ? strchr(end + 1, '\n') : NULL;
    size_t n = end ? (size_t)(end - p) : strlen(p);
    if (n >= size)
        n = size - 1;
    memcpy(dst, p, n);
    dst[n] = 0;
    return dst;
}

int main(void)
{
    const char *bin = getenv("FINCH_BIN_DIR"), *plugins = getenv("FINCH_TEST_PLUGIN_DIR");
    if (!bin || !plugins) {
        fprintf(stderr, "FINCH_BIN_DIR / FINCH_TEST_PLUGIN_DIR are not set (run through ctest)\n");
        return 1;
    }
    static char out[65536];
    char cmd[2048], lines[1024];

    snprintf(cmd, sizeof cmd, "env -u FINCH_PLUGIN_PATH '%s/finch' info --plugin-path '%s'", bin, plugins);
    int rc = testing_run(cmd, out, sizeof out);
    CHECK(rc == 0, "finch info exited %d:\n%s", rc, out);
    CHECK(backend_lines(out, "cpu", lines, sizeof lines) && strstr(lines, "loaded") && strstr(lines, "(built in)") &&
              strstr(lines, "ABI 1."),
          "no built-in cpu line:\n%s", out);
    CHECK(backend_lines(out, "fake_abi99", lines, sizeof lines) && strstr(lines, "not loaded") &&
              strstr(lines, "libfinch-fake_abi99.so") && strstr(lines, "ABI major 99, this finch speaks 1"),
          "fake_abi99 is not explained:\n%s", out);
    CHECK(backend_lines(out, "fake_initfail", lines, sizeof lines) && strstr(lines, "not loaded") &&
              strstr(lines, "reason: libfakedriver.so.1: cannot open shared object file"),
          "fake_initfail is not explained:\n%s", out);
    CHECK(backend_lines(out, "fake_noentry", lines, sizeof lines) && strstr(lines, "finch_plugin_entry"),
          "fake_noentry is not explained:\n%s", out);
    CHECK(backend_lines(out, "fake_nodevice", lines, sizeof lines) && strstr(lines, "reason: no device"),
          "fake_nodevice is not explained:\n%s", out);
    CHECK(backend_lines(out, "fake_gpu", lines, sizeof lines) && strstr(lines, "loaded") && strstr(lines, "3 devices"),
          "fake_gpu is not listed as loaded:\n%s", out);
    CHECK(strstr(out, "\n  cpu:0 ") && strstr(out, "\n  fake_gpu:1 ") && strstr(out, "Fake GPU 16G") &&
              strstr(out, "16.00 GiB total, 8.00 GiB free"),
          "devices are not listed:\n%s", out);
    CHECK(strstr(out, "\nauto: "), "no auto line:\n%s", out);

    /* Without the fakes the CPU is listed and auto picks something loaded. */
    snprintf(cmd, sizeof cmd, "env -u FINCH_PLUGIN_PATH '%s/finch' info", bin);
    rc = testing_run(cmd, out, sizeof out);
    CHECK(rc == 0 && strstr(out, "\n  cpu:0 ") && strstr(out, "\nauto: ") && !strstr(out, "fake_"),
          "finch info (no plugin path) exited %d:\n%s", rc, out);
    /* Device details (ABI 1.2): the CPU's BLAS; an OpenCL device's versions and extensions. */
    CHECK(strstr(out, " BLAS: "), "no BLAS line under cpu:0:\n%s", out);
    const char *ocl = strstr(out, "\n  opencl:0 ");
    if (ocl)
        CHECK(strstr(ocl, "platform version: OpenCL ") && strstr(ocl, "device version: OpenCL ") && strstr(ocl, "OpenCL C: ") &&
                  strstr(ocl, "extensions: "),
              "opencl:0 without its versions and extensions:\n%s", out);
    printf("details: cpu BLAS line%s\n", ocl ? ", opencl versions + extensions" : " (no OpenCL device here)");

    snprintf(cmd, sizeof cmd, "'%s/finch' info --plugin-path /nonexistent/finch-plugins", bin);
    rc = testing_run(cmd, out, sizeof out);
    CHECK(rc == 1 && strstr(out, "/nonexistent/finch-plugins"), "a missing plugin path: exit %d:\n%s", rc, out);
    snprintf(cmd, sizeof cmd, "'%s/finch' info --bogus", bin);
    CHECK(testing_run(cmd, out, sizeof out) == 2 && strstr(out, "usage: finch info"), "info --bogus:\n%s", out);

    /* The dispatcher. */
    snprintf(cmd, sizeof cmd, "'%s/finch' --version", bin);
    CHECK(testing_run(cmd, out, sizeof out) == 0 && strstr(out, "finch 0.") && strstr(out, "plugin ABI 1."), "--version:\n%s",
          out);
    snprintf(cmd, sizeof cmd, "'%s/finch' --help", bin);
    CHECK(testing_run(cmd, out, sizeof out) == 0 && strstr(out, "usage: finch") && strstr(out, "info") && strstr(out, "forward"),
          "--help:\n%s", out);
    snprintf(cmd, sizeof cmd, "'%s/finch' frobnicate", bin);
    CHECK(testing_run(cmd, out, sizeof out) == 2 && strstr(out, "unknown command 'frobnicate'") && strstr(out, "usage:"),
          "unknown command:\n%s", out);
    snprintf(cmd, sizeof cmd, "'%s/finch'", bin);
    CHECK(testing_run(cmd, out, sizeof out) == 2 && strstr(out, "usage:"), "no command:\n%s", out);
    return testing_finish();
}
