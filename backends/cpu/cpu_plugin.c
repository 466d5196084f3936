/* The CPU backend's plugin table, its one device and streams. */
#include "backends/backend.h"
#include "backends/cpu/cpu.h"

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int cpu_init(void)
{
    openblas_set_num_threads(1);   /* cpu_gemm runs products on the backend's own threads (cpu_parallel.c) */
    return FINCH_OK;
}

void cpu_shutdown(void) { cpu_shutdown_threads(); }

const char *cpu_last_error(void) { return finch_last_error(); }

int cpu_device_count(int *count)
{
    *count = 1;
    return FINCH_OK;
}

/* A "Key: value" line of a /proc file; 0 when absent. */
static int proc_field(const char *path, const char *key, char *value, size_t size)
{
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char line[512];
    size_t klen = strlen(key);
    int found = 0;
    while (!found && fgets(line, sizeof line, f)) {
        if (strncmp(line, key, klen) != 0) continue;
        const char *p = line + klen;
        while (*p == ' ' || *p == '\t') p++;
        if (*p != ':') continue;
        p++;
        while (*p == ' ' || *p == '\t') p++;
        snprintf(value, size, "%s", p);
        value[strcspn(value, "\n")] = 0;
        found = 1;
    }
    fclose(f);
    return found;
}

static uint64_t meminfo_bytes(const char *key)
{
    char v[128];
    if (!proc_field("/proc/meminfo", key, v, sizeof v)) return 0;
    return strtoull(v, NULL, 10) * 1024;   /* reported in kB */
}

int cpu_device_info(int index, finch_device_info *info)
{
    if (index != 0) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "cpu: no device %d (there is one: 0)", index);
    memset(info, 0, sizeof *info);
    if (!proc_field("/proc/cpuinfo", "model name", info->name, sizeof info->name) || !info->name[0])
        snprintf(info->name, sizeof info->name, "CPU");
    info->kind = FINCH_DEVICE_CPU;
    info->total_memory = meminfo_bytes("MemTotal");
    info->free_memory = meminfo_bytes("MemAvailable");
    info->compute_units = cpu_threads();
    info->supports_bf16 = 0;
    return FINCH_OK;
}

int cpu_device_details(int index, char *buf, size_t size)
{
    if (index != 0) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "cpu: no device %d (there is one: 0)", index);
    snprintf(buf, size,
             "threads: %d (%ld processors online)\n"
             "BLAS: %s\n"
             "BLAS threads: %d per product\n",
             cpu_threads(), sysconf(_SC_NPROCESSORS_ONLN), openblas_get_config(), openblas_get_num_threads());
    return FINCH_OK;
}

int cpu_device_open(int index, finch_plugin_device **out)
{
    *out = NULL;
    if (index != 0) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "cpu: no device %d (there is one: 0)", index);
    finch_plugin_device *dev = malloc(sizeof *dev);
    if (!dev) return cpu_oom(sizeof *dev, "device_open");
    dev->index = 0;
    openblas_set_num_threads(1);
    *out = dev;
    return FINCH_OK;
}

void cpu_device_close(finch_plugin_device *dev) { free(dev); }

int cpu_memory_info(finch_plugin_device *dev, uint64_t *free_bytes, uint64_t *total_bytes)
{
    *free_bytes = meminfo_bytes("MemAvailable");
    *total_bytes = meminfo_bytes("MemTotal");
    return FINCH_OK;
}

int cpu_stream_create(finch_plugin_device *dev, finch_plugin_stream **out)
{
    *out = malloc(sizeof **out);
    if (!*out) return cpu_oom(sizeof **out, "stream_create");
    (*out)->unused = 0;
    return FINCH_OK;
}

void cpu_stream_destroy(finch_plugin_device *dev, finch_plugin_stream *s) { free(s); }

int cpu_synchronize(finch_plugin_device *dev, finch_plugin_stream *s) { return FINCH_OK; }

/* Host memory is the device's: "pinned" memory is plain memory and the copies happen at once. */
int cpu_host_alloc(finch_plugin_device *dev, size_t bytes, void **out)
{
    *out = malloc(bytes ? bytes : 1);
    return *out ? FINCH_OK : cpu_oom(bytes, "host_alloc");
}

void cpu_host_free(finch_plugin_device *dev, void *ptr) { free(ptr); }

/* Work on a CPU stream is done when its call returns: every mark is reached as it is made. */
struct finch_plugin_event {
    int unused;
};

static int cpu_event_create(finch_plugin_device *dev, finch_plugin_event **out)
{
    *out = calloc(1, sizeof **out);
    return *out ? FINCH_OK : cpu_oom(sizeof **out, "event_create");
}

static void cpu_event_destroy(finch_plugin_device *dev, finch_plugin_event *ev) { free(ev); }
static int cpu_event_record(finch_plugin_device *dev, finch_plugin_stream *s, finch_plugin_event *ev) { return FINCH_OK; }
static int cpu_stream_wait_event(finch_plugin_device *dev, finch_plugin_stream *s, finch_plugin_event *ev) { return FINCH_OK; }

static const finch_plugin_api cpu_api = {
    .abi_major = FINCH_PLUGIN_ABI_MAJOR,
    .abi_minor = FINCH_PLUGIN_ABI_MINOR,
    .struct_size = sizeof(finch_plugin_api),
    .name = "cpu",
    .version = "finch-cpu 0.1.0",
    .init = cpu_init,
    .shutdown = cpu_shutdown,
    .last_error = cpu_last_error,
    .device_count = cpu_device_count,
    .device_info = cpu_device_info,
    .device_details = cpu_device_details,
    .host_alloc = cpu_host_alloc,
    .host_free = cpu_host_free,
    .write_async = cpu_write,
    .read_async = cpu_read,
    .device_open = cpu_device_open,
    .device_close = cpu_device_close,
    .memory_info = cpu_memory_info,
    .stream_create = cpu_stream_create,
    .stream_destroy = cpu_stream_destroy,
    .synchronize = cpu_synchronize,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .write = cpu_write,
    .read = cpu_read,
    .copy = cpu_copy,
    .fill = cpu_fill,
    .copy_2d = cpu_copy_2d,
    .cast = cpu_cast,
    .gemm = cpu_gemm_entry,
    .axpby = cpu_axpby,
    .sum_squares = cpu_sum_squares,
    .qmatmul_forward = cpu_qmatmul_forward,
    .qmatmul_backward = cpu_qmatmul_backward,
    .linear_forward = cpu_linear_forward,
    .linear_backward = cpu_linear_backward,
    .attention_forward = cpu_attention_forward,
    .attention_backward = cpu_attention_backward,
    .rmsnorm_forward = cpu_rmsnorm_forward,
    .rmsnorm_backward = cpu_rmsnorm_backward,
    .layernorm_forward = cpu_layernorm_forward,
    .layernorm_backward = cpu_layernorm_backward,
    .rope_forward = cpu_rope_forward,
    .rope_backward = cpu_rope_backward,
    .glu_forward = cpu_glu_forward,
    .glu_backward = cpu_glu_backward,
    .activation_forward = cpu_activation_forward,
    .activation_backward = cpu_activation_backward,
    .embedding_forward = cpu_embedding_forward,
    .embedding_backward = cpu_embedding_backward,
    .cross_entropy = cpu_cross_entropy,
    .linear_cross_entropy = cpu_linear_cross_entropy,
    .adamw_step = cpu_adamw_step,
    .adamw8bit_step = cpu_adamw8bit_step,
    .attention_cache_forward = cpu_attention_cache_forward,
    .copy_rows = cpu_copy_rows,
    .event_create = cpu_event_create,
    .event_destroy = cpu_event_destroy,
    .event_record = cpu_event_record,
    .stream_wait_event = cpu_stream_wait_event,
    .linear_forward_group = cpu_linear_forward_group,
    .add_rmsnorm_forward = cpu_add_rmsnorm_forward,
    .attention_cache_append_forward = cpu_attention_cache_append_forward,
    .adamw_step_multi = cpu_adamw_step_multi,
    .sum_squares_multi = cpu_sum_squares_multi,
};

const finch_plugin_api *finch_cpu_plugin_api(void) { return &cpu_api; }
