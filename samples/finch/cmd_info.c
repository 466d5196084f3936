/* finch info [--plugin-path DIR]: every backend module found (loaded, or why not), every device with
 * its memory, and the device "auto" picks. */
#include "samples/finch/commands.h"
#include "finch/finch.h"
#include "finch/plugin.h"

#include <stdio.h>
#include <string.h>

static const char *kind_name(int kind)
{
    switch (kind) {
    case FINCH_DEVICE_CPU: return "cpu";
    case FINCH_DEVICE_GPU: return "gpu";
    case FINCH_DEVICE_IGPU: return "igpu";
    default: return "other";
    }
}

static double gib(uint64_t bytes) { return (double)bytes / (1024.0 * 1024.0 * 1024.0); }

static void print_device(const char *label, int width, const finch_device_report *d)
{
    char id[48];
    snprintf(id, sizeof id, "%s:%d", d->backend, d->index);
    printf("%s%-*s  %-5s  %s  (%.2f GiB total, %.2f GiB free)\n", label, width, id, kind_name(d->kind), d->name,
           gib(d->total_memory), gib(d->free_memory));
}

/* The plugin's "key: value" lines, indented under the device. */
static void print_details(int indent, const char *details)
{
    for (const char *p = details; *p;) {
        size_t n = strcspn(p, "\n");
        printf("%*s%.*s\n", indent, "", (int)n, p);
        p += n + (p[n] == '\n');
    }
}

static void info_usage(FILE *f)
{
    fprintf(f, "usage: finch info [--plugin-path DIR]\n"
               "  lists every backend module found (and why one did not load), every device, and the\n"
               "  device \"auto\" picks. Modules are searched in DIR, $FINCH_PLUGIN_PATH, next to the\n"
               "  finch executable and in the installed plugin directory.\n");
}

int finch_cmd_info(int argc, char **argv)
{
    finch_runtime_options opts = {.backend = "auto"};
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--plugin-path") == 0 && i + 1 < argc) {
            opts.plugin_path = argv[++i];
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            info_usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "finch info: unexpected argument '%s'\n", argv[i]);
            info_usage(stderr);
            return 2;
        }
    }

    /* Open as "auto" so that the device reported as auto's pick is the one auto really opens; if
     * that fails, the CPU backend still lets us list what was found. */
    char auto_error[1024] = "";
    finch_runtime *rt = NULL;
    if (finch_runtime_open_ex(&opts, &rt) != FINCH_OK) {
        snprintf(auto_error, sizeof auto_error, "%s", finch_last_error());
        opts.backend = "cpu";
        if (finch_runtime_open_ex(&opts, &rt) != FINCH_OK) {
            fprintf(stderr, "finch info: %s\n", auto_error);
            return 1;
        }
    }

    printf("finch %s, plugin ABI %d.%d\n\nbackends:\n", finch_version_string(), FINCH_PLUGIN_ABI_MAJOR,
           FINCH_PLUGIN_ABI_MINOR);
    int n = finch_runtime_backend_count(rt), width = 4;
    finch_backend_report b;
    for (int i = 0; i < n; i++)
        if (finch_runtime_backend(rt, i, &b) == FINCH_OK && (int)strlen(b.name) > width)
            width = (int)strlen(b.name);
    for (int i = 0; i < n; i++) {
        if (finch_runtime_backend(rt, i, &b) != FINCH_OK)
            continue;
        char abi[32] = "ABI ?";
        if (b.abi_major || b.abi_minor)
            snprintf(abi, sizeof abi, "ABI %d.%d", b.abi_major, b.abi_minor);
        printf("  %-*s  %-10s  %-8s  %s\n", width, b.name, b.loaded ? "loaded" : "not loaded", abi, b.path);
        if (b.loaded)
            printf("  %-*s  %d device%s\n", width, "", b.n_devices, b.n_devices == 1 ? "" : "s");
        else
            printf("  %-*s  reason: %s\n", width, "", b.reason);
    }

    printf("\ndevices:\n");
    n = finch_runtime_device_count(rt);
    width += 3;
    finch_device_report d;
    for (int i = 0; i < n; i++)
        if (finch_runtime_device(rt, i, &d) == FINCH_OK) {
            print_device("  ", width, &d);
            print_details(width + 4, d.details);
        }

    printf("\n");
    if (auto_error[0])
        printf("auto: failed: %s\n", auto_error);
    else if (finch_runtime_active(rt, &d) == FINCH_OK)
        print_device("auto: ", 0, &d);
    finch_runtime_close(rt);
    return auto_error[0] ? 1 : 0;
}
