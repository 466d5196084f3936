/* FINCH_CUDA_PROFILE=1: where a program's time goes, per ABI entry, at the cost of two events and
 * two clock reads a call. The plugin then hands out a copy of its table whose entries wrap the real
 * ones: each call's host time (wall clock inside the entry) and, for entries that queue work on a
 * stream, its device time (events recorded on that stream before and after the call: the span the
 * stream spent on the call's work, idle gaps inside the call included).
 *
 * A report goes to stderr at every explicit synchronize() and at shutdown, covering the window since
 * the last one: its wall time, the device time summed over entries (one stream runs one thing at a
 * time, so wall minus that sum is the stream's idle time: the host not keeping the device fed,
 * synchronous copies, allocations), and a line per entry, largest device time first. A benchmark
 * that synchronizes before and after its timed steps gets a report of exactly those steps. */
#include "gpu_plugin.h"

#include <algorithm>
#include <mutex>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <vector>

namespace {

/* The wrapped entries: ID and name of each. */
#define PROFILED_ENTRIES(X)                                                                                                \
    X(synchronize) X(alloc) X(free) X(write) X(read) X(copy) X(fill) X(copy_2d) X(cast) X(gemm) X(axpby) X(sum_squares)  \
    X(qmatmul_forward) X(qmatmul_backward) X(linear_forward) X(linear_backward) X(attention_forward)                    \
    X(attention_backward) X(rmsnorm_forward) X(rmsnorm_backward) X(layernorm_forward) X(layernorm_backward)              \
    X(rope_forward) X(rope_backward) X(glu_forward) X(glu_backward) X(activation_forward) X(activation_backward)        \
    X(embedding_forward) X(embedding_backward) X(cross_entropy) X(linear_cross_entropy) X(adamw_step)                   \
    X(adamw8bit_step) X(attention_cache_forward) X(memory_info) X(copy_rows) X(linear_forward_group)                 \
    X(add_rmsnorm_forward) X(attention_cache_append_forward) X(adamw_step_multi) X(sum_squares_multi)

enum {
#define ID_OF(name) E_##name,
    PROFILED_ENTRIES(ID_OF)
#undef ID_OF
    N_ENTRIES
};

const char *const entry_names[N_ENTRIES] = {
#define NAME_OF(name) #name,
    PROFILED_ENTRIES(NAME_OF)
#undef NAME_OF
};

struct entry_stats {
    long long calls;
    double host_s, device_ms;
};

struct event_pair {
    int id;
    gpuEvent_t start, end;
};

struct profile_state {
    std::mutex lock;
    finch_plugin_api api;                 /* the wrapped table handed out */
    const finch_plugin_api *base;         /* the real one */
    entry_stats stats[N_ENTRIES];
    std::vector<event_pair> pending, spare;
    double window_start;
    int windows;
};

profile_state *state;

double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The stream an entry queues on: entries whose first two parameters are a device and a stream. */
template <typename... R> gpuStream_t stream_of(finch_plugin_device *dev, finch_plugin_stream *s, R...)
{
    return s ? s->stream : dev ? dev->stream : NULL;
}
template <typename... R> gpuStream_t stream_of(R...) { return NULL; }

/* Adds the device time of every queued pair to its entry (the caller holds the lock). */
void resolve_pending(void)
{
    for (event_pair &p : state->pending) {
        float ms = 0;
        if (gpuEventSynchronize(p.end) == gpuSuccess && gpuEventElapsedTime(&ms, p.start, p.end) == gpuSuccess)
            state->stats[p.id].device_ms += ms;
        state->spare.push_back(p);
    }
    state->pending.clear();
}

void report(const char *why)
{
    resolve_pending();
    double t = now_s(), wall_ms = (t - state->window_start) * 1e3, device_ms = 0;
    int order[N_ENTRIES], n = 0;
    for (int i = 0; i < N_ENTRIES; i++) {
        device_ms += state->stats[i].device_ms;
        if (state->stats[i].calls) order[n++] = i;
    }
    std::sort(order, order + n, [](int a, int b) {
        const entry_stats &x = state->stats[a], &y = state->stats[b];
        return x.device_ms != y.device_ms ? x.device_ms > y.device_ms : x.host_s > y.host_s;
    });
    fprintf(stderr, "finch-cuda profile, window %d (to %s): wall %.3f ms, device busy %.3f ms (%.1f%%), idle %.3f ms\n",
            ++state->windows, why, wall_ms, device_ms, wall_ms > 0 ? 100.0 * device_ms / wall_ms : 0.0, wall_ms - device_ms);
    fprintf(stderr, "finch-cuda profile: %-24s %9s %12s %12s %10s\n", "entry", "calls", "device ms", "host ms", "host us/call");
    for (int k = 0; k < n; k++) {
        const entry_stats &e = state->stats[order[k]];
        fprintf(stderr, "finch-cuda profile: %-24s %9lld %12.3f %12.3f %10.1f\n", entry_names[order[k]], e.calls, e.device_ms,
                e.host_s * 1e3, e.host_s * 1e6 / (double)e.calls);
    }
    memset(state->stats, 0, sizeof state->stats);
    state->window_start = now_s();
}

/* A pair of events for one call, or false when none can be made (the call is then timed on the host only). */
bool take_pair(event_pair *p)
{
    if (!state->spare.empty()) {
        *p = state->spare.back();
        state->spare.pop_back();
        return true;
    }
    if (gpuEventCreate(&p->start) != gpuSuccess) return false;
    if (gpuEventCreate(&p->end) != gpuSuccess) {
        gpuEventDestroy(p->start);
        return false;
    }
    return true;
}

template <int ID, typename F> struct timed;

template <int ID, typename... A> struct timed<ID, int (*)(A...)> {
    static inline int (*real)(A...) = NULL;
    static int call(A... a)
    {
        gpuStream_t st = stream_of(a...);
        event_pair p;
        bool ev = false;
        if (st) {
            std::lock_guard<std::mutex> g(state->lock);
            ev = take_pair(&p) && gpuEventRecord(p.start, st) == gpuSuccess;
        }
        double t0 = now_s();
        int rc = real(a...);
        double dt = now_s() - t0;
        std::lock_guard<std::mutex> g(state->lock);
        if (ev) {
            p.id = ID;
            if (gpuEventRecord(p.end, st) == gpuSuccess) state->pending.push_back(p);
            else state->spare.push_back(p);
        }
        state->stats[ID].calls++;
        state->stats[ID].host_s += dt;
        if (ID == E_synchronize && rc == FINCH_OK) report("synchronize");
        return rc;
    }
};

template <int ID, typename... A> struct timed<ID, void (*)(A...)> {
    static inline void (*real)(A...) = NULL;
    static void call(A... a)
    {
        double t0 = now_s();
        real(a...);
        double dt = now_s() - t0;
        std::lock_guard<std::mutex> g(state->lock);
        state->stats[ID].calls++;
        state->stats[ID].host_s += dt;
    }
};

void profiled_shutdown(void)
{
    {
        std::lock_guard<std::mutex> g(state->lock);
        report("shutdown");
        for (event_pair &p : state->spare) {
            gpuEventDestroy(p.start);
            gpuEventDestroy(p.end);
        }
        state->spare.clear();
    }
    state->base->shutdown();
}

} /* namespace */

const finch_plugin_api *gpu_profiled_api(const finch_plugin_api *base)
{
    static std::once_flag once;
    std::call_once(once, [base]() {
        state = new profile_state();
        state->base = base;
        state->api = *base;
        state->window_start = now_s();
#define WRAP(name)                                                                              \
    timed<E_##name, decltype(base->name)>::real = base->name;                                   \
    state->api.name = base->name ? timed<E_##name, decltype(base->name)>::call : NULL;
        PROFILED_ENTRIES(WRAP)
#undef WRAP
        state->api.shutdown = profiled_shutdown;
        /* Timing events around each call cannot be read back from recorded work: no recording. */
        state->api.capture_begin = NULL;
        state->api.capture_end = NULL;
        state->api.graph_launch = NULL;
        state->api.graph_free = NULL;
    });
    return &state->api;
}
