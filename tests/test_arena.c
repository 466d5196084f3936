/* The activation arena: first fit over the chunks' free tails, marks that free everything after
 * them whichever chunk it landed in, growth that falls back to the allocation's own size when the
 * device cannot spare a quarter more, and one buffer of the peak for the next step. */
#include "backends/backend.h"
#include "core/arena.h"
#include "fault_backend.h"
#include "testing.h"

#define MiB ((size_t)1 << 20)

static size_t held(const finch_arena *a)
{
    size_t total = 0;
    for (int i = 0; i < a->n_chunks; i++) total += a->chunks[i].cap;
    return total;
}

static int same_place(finch_dptr a, finch_dptr b) { return a.buf == b.buf && a.offset == b.offset; }

int main(void)
{
    finch_backend fb;
    if (fault_backend_open(finch_cpu_plugin_api(), &fb)) {
        fprintf(stderr, "cannot open the CPU device\n");
        return 1;
    }
    finch_arena a;
    finch_arena_init(&a, &fb);
    CHECK(finch_arena_begin(&a) == FINCH_OK, "begin");

    /* 10 MiB in the first (16 MiB) chunk; 12 MiB does not fit its tail: a new chunk; 4 MiB then
     * goes back to the first chunk's tail. */
    finch_dptr p10, p12, p4, p5;
    CHECK(finch_arena_alloc(&a, 10 * MiB, &p10) == FINCH_OK && a.n_chunks == 1, "10 MiB");
    finch_arena_mark m = finch_arena_get_mark(&a);
    CHECK(finch_arena_alloc(&a, 12 * MiB, &p12) == FINCH_OK && a.n_chunks == 2 && p12.buf != p10.buf, "12 MiB: a second chunk");
    CHECK(finch_arena_alloc(&a, 4 * MiB, &p4) == FINCH_OK && p4.buf == p10.buf && p4.offset == 10 * MiB,
          "4 MiB fills the first chunk's tail (offset %zu)", p4.offset);
    CHECK(a.in_use == 26 * MiB && a.peak == 26 * MiB, "in use %zu", a.in_use);

    /* The mark frees both, in both chunks. */
    finch_arena_reset(&a, m);
    CHECK(a.in_use == 10 * MiB, "in use after reset %zu", a.in_use);
    finch_dptr again;
    CHECK(finch_arena_alloc(&a, 4 * MiB, &again) == FINCH_OK && same_place(again, p4), "the tail is free again");
    CHECK(finch_arena_alloc(&a, 12 * MiB, &again) == FINCH_OK && same_place(again, p12), "the second chunk is free again");
    CHECK(a.n_chunks == 2, "no growth on reuse: %d chunks", a.n_chunks);

    /* Near the limit: a quarter more does not fit, the allocation alone does. */
    size_t before = held(&a);
    fault_byte_limit = (long long)(before + 30 * MiB);
    CHECK(finch_arena_alloc(&a, 30 * MiB, &p5) == FINCH_OK && held(&a) == before + 30 * MiB,
          "30 MiB under a limit of what is held + 30 MiB: held %zu -> %zu", before, held(&a));
    finch_dptr none;
    CHECK(finch_arena_alloc(&a, 5 * MiB, &none) != FINCH_OK, "past the limit (no tail has 5 MiB): out of memory");
    size_t peak = a.peak;
    fault_byte_limit = -1;

    /* The next step holds one buffer of the last step's peak; the same allocations fit in it. */
    CHECK(finch_arena_begin(&a) == FINCH_OK && a.n_chunks == 1 && a.chunks[0].cap == peak, "one chunk of the peak (%zu)", peak);
    CHECK(finch_arena_alloc(&a, 10 * MiB, &p10) == FINCH_OK && finch_arena_alloc(&a, 12 * MiB, &p12) == FINCH_OK &&
              finch_arena_alloc(&a, 4 * MiB, &p4) == FINCH_OK && finch_arena_alloc(&a, 30 * MiB, &p5) == FINCH_OK && a.n_chunks == 1,
          "the step fits its buffer: %d chunks", a.n_chunks);
    finch_arena_free(&a);
    CHECK(fault_live_bytes == 0, "all freed (%lld live)", fault_live_bytes);
    fb.api->device_close(fb.dev);
    return testing_finish();
}
