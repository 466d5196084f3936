/* The CPU backend's threads: one pool whose idle workers sleep on a condition variable.
 *
 * Why not OpenMP's parallel regions or OpenBLAS's own threads: both keep finished workers
 * busy-waiting for the next piece of work (libgomp spins for about 3 ms after every region unless the
 * user sets OMP_WAIT_POLICY=passive before the program starts, OpenBLAS's pthread workers poll with
 * sched_yield), and the two pools run one after the other all through a training step. On a machine
 * whose cores are shared, a spinning thread holds a core the working threads need, and a thread
 * waiting at a barrier for one that was preempted burns its own: two threads ran ten times slower
 * than one. A library cannot ask its host to set environment variables before main, and libgomp reads
 * them only once, at load. So the work is cut into chunks here, handed out from an atomic counter
 * (the caller's thread takes chunks too, so a preempted worker delays at most the chunk it holds),
 * finished workers sleep at once, and OpenBLAS is kept to one thread per call (cpu_gemm splits
 * products itself). Chunk boundaries depend only on n and the thread count, never on timing, so
 * per-chunk partial sums give the same result on every run. */
#include "backends/cpu/cpu.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <unistd.h>

enum { MAX_WORKERS = 255, CHUNKS_PER_THREAD = 4 };

static int requested_threads;   /* finch_cpu_set_threads; 0 = all cores */

static struct {
    pthread_mutex_t lock;
    pthread_cond_t wake, done_cond;
    pthread_t workers[MAX_WORKERS];
    int n_workers;
    int quit;
    uint64_t generation;       /* bumped for each job */
    int busy;                  /* workers that took the current job and have not let go of it */
    cpu_chunk_fn body;         /* the current job */
    void *ctx;
    int64_t n, chunks;
    atomic_int_fast64_t next;  /* next chunk to hand out */
    atomic_int_fast64_t finished;
} pool = {.lock = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER, .done_cond = PTHREAD_COND_INITIALIZER};

static pthread_mutex_t call_lock = PTHREAD_MUTEX_INITIALIZER;   /* one job at a time */
static _Thread_local int in_job;   /* a chunk body running here; a parallel call inside it runs inline */

void finch_cpu_set_threads(int n_threads) { requested_threads = n_threads > 0 ? n_threads : 0; }

int cpu_threads(void)
{
    if (requested_threads > 0) return requested_threads < MAX_WORKERS + 1 ? requested_threads : MAX_WORKERS + 1;
    /* Read once: every parallel call asks, and the system call costs more than a small op. */
    static int cores;
    if (cores == 0) {
        cpu_set_t set;
        int n = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : (int)sysconf(_SC_NPROCESSORS_ONLN);
        cores = n < 1 ? 1 : n < MAX_WORKERS + 1 ? n : MAX_WORKERS + 1;
    }
    return cores;
}

/* Takes chunks of the current job until none is left. */
static void run_chunks(cpu_chunk_fn body, void *ctx, int64_t n, int64_t chunks)
{
    for (;;) {
        int64_t c = atomic_fetch_add(&pool.next, 1);
        if (c >= chunks) return;
        body(ctx, n * c / chunks, n * (c + 1) / chunks, (int)c);
        if (atomic_fetch_add(&pool.finished, 1) + 1 == chunks) {
            pthread_mutex_lock(&pool.lock);
            pthread_cond_broadcast(&pool.done_cond);
            pthread_mutex_unlock(&pool.lock);
        }
    }
}

static void *worker_main(void *unused)
{
    uint64_t seen = 0;
    in_job = 1;
    pthread_mutex_lock(&pool.lock);
    for (;;) {
        while (!pool.quit && pool.generation == seen) pthread_cond_wait(&pool.wake, &pool.lock);
        if (pool.quit) break;
        seen = pool.generation;
        cpu_chunk_fn body = pool.body;
        void *ctx = pool.ctx;
        int64_t n = pool.n, chunks = pool.chunks;
        pool.busy++;
        pthread_mutex_unlock(&pool.lock);
        run_chunks(body, ctx, n, chunks);
        pthread_mutex_lock(&pool.lock);
        if (--pool.busy == 0) pthread_cond_broadcast(&pool.done_cond);
    }
    pthread_mutex_unlock(&pool.lock);
    return NULL;
}

static void stop_workers(void)
{
    pthread_mutex_lock(&pool.lock);
    pool.quit = 1;
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.lock);
    for (int i = 0; i < pool.n_workers; i++) pthread_join(pool.workers[i], NULL);
    pool.n_workers = 0;
    pool.quit = 0;
}

/* Makes the pool hold `want` workers; fewer when threads cannot be created (the caller's thread
 * still does all the work then). */
static void resize_pool(int want)
{
    if (pool.n_workers == want) return;
    stop_workers();
    while (pool.n_workers < want && pthread_create(&pool.workers[pool.n_workers], NULL, worker_main, NULL) == 0)
        pool.n_workers++;
}

void cpu_shutdown_threads(void)
{
    pthread_mutex_lock(&call_lock);
    stop_workers();
    pthread_mutex_unlock(&call_lock);
}

int64_t cpu_chunks(int64_t n, int wide)
{
    int threads = cpu_threads();
    if (!wide || threads < 2 || n < 2) return n > 0 ? 1 : 0;
    int64_t chunks = (int64_t)threads * CHUNKS_PER_THREAD;
    return chunks < n ? chunks : n;
}

void cpu_parallel(int64_t n, int64_t chunks, void *ctx, cpu_chunk_fn body)
{
    if (n <= 0 || chunks <= 0) return;
    if (chunks == 1 || in_job) {
        for (int64_t c = 0; c < chunks; c++) body(ctx, n * c / chunks, n * (c + 1) / chunks, (int)c);
        return;
    }
    pthread_mutex_lock(&call_lock);
    resize_pool(cpu_threads() - 1);
    pthread_mutex_lock(&pool.lock);
    while (pool.busy > 0) pthread_cond_wait(&pool.done_cond, &pool.lock);   /* late takers of the last job */
    pool.body = body, pool.ctx = ctx, pool.n = n, pool.chunks = chunks;
    atomic_store(&pool.next, 0);
    atomic_store(&pool.finished, 0);
    pool.generation++;
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.lock);
    in_job = 1;
    run_chunks(body, ctx, n, chunks);
    in_job = 0;
    pthread_mutex_lock(&pool.lock);
    while (atomic_load(&pool.finished) < chunks) pthread_cond_wait(&pool.done_cond, &pool.lock);
    pthread_mutex_unlock(&pool.lock);
    pthread_mutex_unlock(&call_lock);
}

void cpu_parallel_for(int64_t n, int wide, void *ctx, cpu_chunk_fn body)
{
    cpu_parallel(n, cpu_chunks(n, wide), ctx, body);
}
