/* A tiny persistent thread pool for the decode passes. A pass makes ~70 parallel calls of
   0.05-1 ms each; waking GCD or fresh threads for each costs a noticeable share of that, so the
   workers spin briefly on a generation counter before they sleep on a condition variable.
   Work is split into chunks that every participant (the caller included) claims from a shared
   counter: if a worker is descheduled (another process holds the core), the caller simply does
   its chunks instead of waiting for it. */
#include "ckernels.h"
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#if defined(__x86_64__)
#include <immintrin.h>
#define CPU_RELAX() _mm_pause()
#else
#define CPU_RELAX() ((void)0)
#endif

#define MAX_WORKERS 63
#define SPIN_ITERATIONS 20000   /* ~1-3 ms of spinning before a worker sleeps */

static pthread_t workers[MAX_WORKERS];
static int nworkers = 0;
static _Atomic unsigned generation = 0;
/* (generation << 32) | next chunk index: a claim is valid only for the generation it names. */
static _Atomic uint64_t claim = 0;
static _Atomic int done = 0;
static _Atomic int sleepers = 0;
static ck_task_fn task_fn;
static void *task_ctx;
static int task_chunks, task_participants;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static pthread_mutex_t call_mu = PTHREAD_MUTEX_INITIALIZER;   /* one parallel call at a time */

/* Claims and runs chunks of generation g until none is left. */
static void run_chunks(unsigned g, int worker) {
    for (;;) {
        uint64_t c = atomic_load_explicit(&claim, memory_order_acquire);
        if ((unsigned)(c >> 32) != g || (int)(uint32_t)c >= task_chunks) return;
        if (!atomic_compare_exchange_weak_explicit(&claim, &c, c + 1, memory_order_acq_rel, memory_order_acquire)) continue;
        task_fn(task_ctx, (int)(uint32_t)c, task_chunks, worker);
        atomic_fetch_add_explicit(&done, 1, memory_order_release);
    }
}

static void *worker_main(void *arg) {
    int index = (int)(size_t)arg;   /* worker id = index + 1; the caller is 0 */
    unsigned seen = 0;
    for (;;) {
        unsigned g;
        int spins = 0;
        while ((g = atomic_load_explicit(&generation, memory_order_acquire)) == seen && spins < SPIN_ITERATIONS) {
            CPU_RELAX();
            spins++;
        }
        if (g == seen) {
            pthread_mutex_lock(&mu);
            atomic_fetch_add(&sleepers, 1);
            while ((g = atomic_load_explicit(&generation, memory_order_acquire)) == seen) pthread_cond_wait(&cv, &mu);
            atomic_fetch_sub(&sleepers, 1);
            pthread_mutex_unlock(&mu);
        }
        seen = g;
        if (index + 1 < task_participants) run_chunks(g, index + 1);
    }
    return NULL;
}

void ck_pool_start(int threads) {
    pthread_mutex_lock(&call_mu);
    int want = threads - 1;
    if (want > MAX_WORKERS) want = MAX_WORKERS;
    /* Workers are only ever added: a smaller request just uses fewer participants. */
    while (nworkers < want) {
        if (pthread_create(&workers[nworkers], NULL, worker_main, (void *)(size_t)nworkers) != 0) break;
        pthread_detach(workers[nworkers]);
        nworkers++;
    }
    pthread_mutex_unlock(&call_mu);
}

void ck_parallel(ck_task_fn fn, void *ctx, int chunks, int participants) {
    if (participants > nworkers + 1) participants = nworkers + 1;
    if (chunks <= 1 || participants <= 1) {
        for (int i = 0; i < chunks; i++) fn(ctx, i, chunks, 0);
        return;
    }
    pthread_mutex_lock(&call_mu);
    task_fn = fn; task_ctx = ctx; task_chunks = chunks; task_participants = participants;
    atomic_store_explicit(&done, 0, memory_order_relaxed);
    unsigned g = atomic_load(&generation) + 1;
    atomic_store_explicit(&claim, (uint64_t)g << 32, memory_order_release);
    atomic_fetch_add_explicit(&generation, 1, memory_order_acq_rel);
    if (atomic_load(&sleepers) > 0) {
        pthread_mutex_lock(&mu);
        pthread_cond_broadcast(&cv);
        pthread_mutex_unlock(&mu);
    }
    run_chunks(g, 0);
    /* Every chunk is claimed; wait only for chunks a worker is still running. */
    while (atomic_load_explicit(&done, memory_order_acquire) < chunks) CPU_RELAX();
    pthread_mutex_unlock(&call_mu);
}
