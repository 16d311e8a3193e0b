/* A tiny persistent thread pool for the decode passes. A pass makes ~70 parallel calls of
   0.1-1 ms each; waking GCD or fresh threads for each costs a noticeable share of that, so the
   workers spin briefly on a generation counter before they sleep on a condition variable. */
#include "ckernels.h"
#include <pthread.h>
#include <stdatomic.h>
#if defined(__x86_64__)
#include <immintrin.h>
#define CPU_RELAX() _mm_pause()
#else
#define CPU_RELAX() ((void)0)
#endif

#define MAX_WORKERS 63
#define SPIN_ITERATIONS 200000   /* ~1-2 ms of spinning before a worker sleeps */

static pthread_t workers[MAX_WORKERS];
static int nworkers = 0;
static _Atomic unsigned generation = 0;
static _Atomic int pending = 0;
static _Atomic int sleepers = 0;
static ck_task_fn task_fn;
static void *task_ctx;
static int task_parts;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static pthread_mutex_t call_mu = PTHREAD_MUTEX_INITIALIZER;   /* one parallel call at a time */

static void *worker_main(void *arg) {
    int index = (int)(size_t)arg;
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
        if (index + 1 < task_parts) task_fn(task_ctx, index + 1, task_parts);
        atomic_fetch_sub_explicit(&pending, 1, memory_order_release);
    }
    return NULL;
}

int ck_pool_size(void) { return nworkers + 1; }

void ck_pool_start(int threads) {
    pthread_mutex_lock(&call_mu);
    int want = threads - 1;
    if (want > MAX_WORKERS) want = MAX_WORKERS;
    /* Workers are only ever added: a smaller request just uses fewer parts. */
    while (nworkers < want) {
        if (pthread_create(&workers[nworkers], NULL, worker_main, (void *)(size_t)nworkers) != 0) break;
        pthread_detach(workers[nworkers]);
        nworkers++;
    }
    pthread_mutex_unlock(&call_mu);
}

void ck_parallel(ck_task_fn fn, void *ctx, int parts) {
    if (parts > nworkers + 1) parts = nworkers + 1;
    if (parts <= 1) { fn(ctx, 0, 1); return; }
    pthread_mutex_lock(&call_mu);
    task_fn = fn; task_ctx = ctx; task_parts = parts;
    atomic_store_explicit(&pending, nworkers, memory_order_relaxed);
    atomic_fetch_add_explicit(&generation, 1, memory_order_release);
    if (atomic_load(&sleepers) > 0) {
        pthread_mutex_lock(&mu);
        pthread_cond_broadcast(&cv);
        pthread_mutex_unlock(&mu);
    }
    fn(ctx, 0, parts);
    while (atomic_load_explicit(&pending, memory_order_acquire) > 0) CPU_RELAX();
    pthread_mutex_unlock(&call_mu);
}
