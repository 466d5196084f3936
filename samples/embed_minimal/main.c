/* The smallest program embedding finch: open a runtime on a backend (default "cpu"), print the
 * device it computes on, close it. Build it against an installed finch with CMake
 * (find_package(finch), see CMakeLists.txt here) or with pkg-config:
 *     cc main.c $(pkg-config --cflags --libs --static finch) -o embed_minimal */
#include <finch/finch.h>

#include <stdio.h>

int main(int argc, char **argv)
{
    const char *backend = argc > 1 ? argv[1] : "cpu";
    finch_runtime *rt;
    if (finch_runtime_open(backend, &rt) != FINCH_OK) {
        fprintf(stderr, "embed_minimal: %s\n", finch_last_error());
        return 1;
    }
    finch_device_report dev;
    if (finch_runtime_active(rt, &dev) != FINCH_OK) {
        fprintf(stderr, "embed_minimal: %s\n", finch_last_error());
        finch_runtime_close(rt);
        return 1;
    }
    printf("finch %s, device: %s:%d %s (%.1f GiB)\n", finch_version_string(), dev.backend, dev.index, dev.name,
           (double)dev.total_memory / (1024.0 * 1024.0 * 1024.0));
    finch_runtime_close(rt);
    return 0;
}
