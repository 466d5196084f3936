/* CPU backend threads (backends/cpu/cpu_parallel.c): every chunk runs once, nested calls run inline,
 * products split across threads stay right, sums are the same on every run, and threads that have
 * no work use no CPU (they sleep rather than spin, which made two threads ten times slower than one
 * on a shared machine). */
#include "backends/cpu/cpu.h"
#include "tests/test_cpu_common.h"

#include <stdatomic.h>
#include <time.h>

enum { COVER_N = 1000 };

typedef struct cover_job {
    atomic_int visits[COVER_N];
    atomic_int bad_chunk;
    atomic_int nested_sum;
    int64_t chunks;
    int nest;
} cover_job;

static void count_nested(void *ctx, int64_t i0, int64_t i1, int chunk)
{
    atomic_fetch_add(&((cover_job *)ctx)->nested_sum, (int)(i1 - i0));
}

static void visit(void *ctx, int64_t i0, int64_t i1, int chunk)
{
    cover_job *j = ctx;
    if (chunk < 0 || chunk >= j->chunks || i0 != COVER_N * chunk / j->chunks || i1 != COVER_N * (chunk + 1) / j->chunks)
        atomic_store(&j->bad_chunk, 1);
    for (int64_t i = i0; i < i1; i++) atomic_fetch_add(&j->visits[i], 1);
    if (j->nest) cpu_parallel_for(10, 1, j, count_nested);   /* must not wait for the busy pool */
}

static void test_cover(void)
{
    for (int threads = 1; threads <= 4; threads++) {
        finch_cpu_set_threads(threads);
        for (int64_t chunks = 1; chunks <= 9; chunks += 4) {
            for (int nest = 0; nest < 2; nest++) {
                static cover_job j;
                memset(&j, 0, sizeof j);
                j.chunks = chunks, j.nest = nest;
                cpu_parallel(COVER_N, chunks, &j, visit);
                int once = 1;
                for (int i = 0; i < COVER_N; i++) once &= atomic_load(&j.visits[i]) == 1;
                CHECK(once && !atomic_load(&j.bad_chunk), "threads %d chunks %lld: each index once", threads,
                      (long long)chunks);
                CHECK(atomic_load(&j.nested_sum) == (nest ? 10 * chunks : 0), "threads %d: nested calls ran, %d",
                      threads, atomic_load(&j.nested_sum));
            }
        }
        CHECK(cpu_chunks(COVER_N, 0) == 1 && cpu_chunks(0, 1) == 0 && cpu_chunks(1, 1) == 1, "chunk counts");
        CHECK(threads == 1 ? cpu_chunks(COVER_N, 1) == 1 : cpu_chunks(COVER_N, 1) >= threads, "threads %d: %lld chunks",
              threads, (long long)cpu_chunks(COVER_N, 1));
    }
    finch_cpu_set_threads(0);
}

/* C = alpha op(A) op(B) + beta C against a double reference, with sizes that cut into uneven blocks
 * along rows (m >= n) and along columns (m < n). */
static void test_split_gemm(void)
{
    const int64_t shapes[][3] = {{203, 77, 61}, {45, 390, 33}};
    finch_cpu_set_threads(3);
    for (int s = 0; s < 2; s++) {
        int64_t m = shapes[s][0], n = shapes[s][1], k = shapes[s][2];
        for (int ta = 0; ta < 2; ta++) {
            for (int tb = 0; tb < 2; tb++) {
                float *a = rnd((size_t)(m * k), 11), *b = rnd((size_t)(k * n), 12), *c = rnd((size_t)(m * n), 13);
                double *ref = malloc((size_t)(m * n) * sizeof(double));
                for (int64_t i = 0; i < m; i++)
                    for (int64_t j = 0; j < n; j++) {
                        double acc = 0;
                        for (int64_t p = 0; p < k; p++)
                            acc += (double)(ta ? a[p * m + i] : a[i * k + p]) * (tb ? b[j * k + p] : b[p * n + j]);
                        ref[i * n + j] = 0.5 * acc - 2.0 * c[i * n + j];
                    }
                int mark = n_buffers;
                finch_gemm_desc d = {.trans_a = ta, .trans_b = tb, .m = m, .n = n, .k = k,
                                     .a_type = FINCH_DTYPE_F32, .b_type = FINCH_DTYPE_F32, .c_type = FINCH_DTYPE_F32,
                                     .a = upload(a, (size_t)(m * k), FINCH_DTYPE_F32),
                                     .b = upload(b, (size_t)(k * n), FINCH_DTYPE_F32),
                                     .c = upload(c, (size_t)(m * n), FINCH_DTYPE_F32),
                                     .lda = ta ? m : k, .ldb = tb ? k : n, .ldc = n, .batch = 1, .alpha = 0.5f,
                                     .beta = -2.0f};
                CHECK(api->gemm(dev, NULL, &d) == FINCH_OK, "gemm: %s", api->last_error());
                download(d.c, (size_t)(m * n), FINCH_DTYPE_F32, c);
                double err = rel_err_d(c, ref, (size_t)(m * n));
                CHECK(err < 1e-5, "gemm %lldx%lldx%lld ta %d tb %d: rel err %g", (long long)m, (long long)n,
                      (long long)k, ta, tb, err);
                free_buffers_from(mark);
                free(a), free(b), free(c), free(ref);
            }
        }
    }
    finch_cpu_set_threads(0);
}

/* Chunks are handed to whichever thread is free, but sums are formed per chunk and added in order. */
static void test_same_sums(void)
{
    enum { N = 1 << 20, RUNS = 8 };
    float *x = rnd(N, 21);
    finch_dptr xd = upload(x, N, FINCH_DTYPE_F32), sd = zeros(1, FINCH_DTYPE_F32);
    finch_cpu_set_threads(3);
    float first = 0;
    int same = 1;
    for (int r = 0; r < RUNS; r++) {
        float zero = 0, got;
        api->write(dev, NULL, sd, &zero, sizeof zero);
        CHECK(api->sum_squares(dev, NULL, N, FINCH_DTYPE_F32, xd, sd) == FINCH_OK, "sum_squares");
        download(sd, 1, FINCH_DTYPE_F32, &got);
        if (r == 0) first = got;
        same &= memcmp(&got, &first, sizeof got) == 0;
    }
    CHECK(same, "sum_squares: the same bits on every run");
    finch_cpu_set_threads(0);
    free(x);
}

static double cpu_seconds(void)
{
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void nap_ms(long ms)
{
    struct timespec t = {ms / 1000, (ms % 1000) * 1000 * 1000};
    while (nanosleep(&t, &t) != 0) {}
}

/* After parallel work, the process sleeps for 300 ms: its threads may use a sliver of that (wake-up,
 * scheduling: about 0.05 ms measured), never the time spinning or polling workers burn (30 to 90 ms
 * with libgomp's and OpenBLAS's own threads on a loaded 2-core machine). */
static void test_idle_threads_sleep(void)
{
    nap_ms(400);   /* OpenBLAS's own workers, started when it loads, poll for about 0.1 s and then sleep */
    enum { M = 384, N = 1 << 20 };
    float *a = rnd(M * M, 31), *x = rnd(N, 32);
    finch_dptr ad = upload(a, M * M, FINCH_DTYPE_F32), cd = zeros(M * M, FINCH_DTYPE_F32);
    finch_dptr xd = upload(x, N, FINCH_DTYPE_F32), od = zeros(N, FINCH_DTYPE_F32);
    finch_cpu_set_threads(4);
    finch_gemm_desc d = {.m = M, .n = M, .k = M, .a_type = FINCH_DTYPE_F32, .b_type = FINCH_DTYPE_F32,
                         .c_type = FINCH_DTYPE_F32, .a = ad, .b = ad, .c = cd, .lda = M, .ldb = M, .ldc = M,
                         .batch = 1, .alpha = 1, .beta = 0};
    for (int r = 0; r < 3; r++) {
        CHECK(api->gemm(dev, NULL, &d) == FINCH_OK, "gemm");
        CHECK(api->axpby(dev, NULL, N, FINCH_DTYPE_F32, 2.0f, xd, 1.0f, xd, od) == FINCH_OK, "axpby");
    }
    double c0 = cpu_seconds();
    nap_ms(300);
    double busy = cpu_seconds() - c0;
    CHECK(busy < 0.015, "idle threads used %.0f ms of CPU during a 300 ms sleep", busy * 1e3);
    finch_cpu_set_threads(0);
    free(a), free(x);
}

int main(void)
{
    cpu_test_begin();
    test_cover();
    test_split_gemm();
    test_same_sums();
    test_idle_threads_sleep();
    return cpu_test_end();
}
