/* The thread pool of engine/child/rowsample.c (the rows of one batch step); see rowpool.h. */
#ifndef _WIN32
#define _POSIX_C_SOURCE 200809L /* clock_gettime, nanosleep, pthread_atfork under a strict -std */
#endif
#include <stdbool.h>
#include <stdint.h>

#include "rowbuffers.h"
#include "rowpool.h"

/* Rows are claimed one at a time by whichever thread is free. */
static void work(rowjob_t *job) {
    for (int r; (r = atomic_fetch_add(&job->next, 1)) < job->n_rows;) {
        job->row(job, r);
        atomic_fetch_add(&job->done, 1);
    }
}

#ifndef _WIN32
/* A pool of sleeping workers. The calling thread claims rows itself at once and waits only for
 * rows another thread has claimed, never for a worker to wake up: waking a core that idled
 * through the decode (a halted vCPU on a cloud host) can take longer than the rows themselves,
 * and an OpenMP region's closing barrier waits for the slowest one. A worker that wakes late
 * finds nothing left and sleeps again. */
#include <pthread.h>

#if defined(__x86_64__) || defined(__i386__)
#define RELAX() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define RELAX() __asm__ __volatile__("yield")
#else
#define RELAX() ((void)0)
#endif

#include <time.h>

enum { SLICE_NS = 100000, SPINS_BEFORE_YIELD = 4096 };

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static pthread_mutex_t pool_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t pool_cv = PTHREAD_COND_INITIALIZER;
static rowjob_t *pool_job;      /* the job in progress, NULL between jobs (pool_mu) */
static uint64_t pool_gen;    /* bumped for each job (pool_mu) */
static int pool_workers;     /* started so far (pool_mu) */
static atomic_int pool_busy; /* workers inside work() for pool_job */
static void *worker(void *arg);
static atomic_ullong pool_gen_a;  /* pool_gen, for workers spinning without the lock */
static uint64_t pool_wake;        /* bumped by rowpool_prewake() (pool_mu) */
static long long pool_wake_at;    /* when prewoken workers start spinning, now_ns() (pool_mu) */
static atomic_llong pool_spin_end; /* ... and until when, now_ns() */
static bool pool_closed;                /* by rowpool_stop(): no worker starts or stays (pool_mu) */
static pthread_cond_t pool_left_cv = PTHREAD_COND_INITIALIZER; /* a worker ended (pool_mu) */
static bool pool_forked; /* this process is a fork's child: the workers were its parent's */

static void start_workers(int n) { /* with pool_mu held */
    while (!pool_closed && pool_workers < n) {
        pthread_t t;
        if (pthread_create(&t, NULL, worker, NULL) != 0) {
            break; /* fewer helpers: the rows still all get done by the caller */
        }
        pthread_detach(t);
        pool_workers++;
    }
}

static void *worker(void *arg) {
    (void)arg;
    uint64_t seen = 0, seen_wake = 0;
    for (;;) {
        pthread_mutex_lock(&pool_mu);
        while (!pool_closed && pool_gen == seen && pool_wake == seen_wake) {
            pthread_cond_wait(&pool_cv, &pool_mu);
        }
        if (pool_closed) {
            break;
        }
        if (pool_gen == seen) { /* prewoken: sleep on, then spin until the job comes or time is up */
            seen_wake = pool_wake;
            long long at = pool_wake_at;
            pthread_mutex_unlock(&pool_mu);
            /* in slices, so that a job due earlier than expected still finds this worker */
            for (long long left; atomic_load(&pool_gen_a) == seen && (left = at - now_ns()) > 0;) {
                long long slice = left < SLICE_NS ? left : SLICE_NS;
                struct timespec d = {0, (long)slice};
                nanosleep(&d, NULL);
            }
            while (atomic_load(&pool_gen_a) == seen && now_ns() < atomic_load(&pool_spin_end)) {
                RELAX();
            }
            continue;
        }
        seen = pool_gen;
        rowjob_t *job = pool_job;
        if (job != NULL) {
            atomic_fetch_add(&pool_busy, 1); /* under the lock: the caller sees it before it may end */
        }
        pthread_mutex_unlock(&pool_mu);
        if (job != NULL) {
            work(job);
            atomic_fetch_sub(&pool_busy, 1);
        }
    }
    /* The pool stops (with pool_mu held): this worker's buffers go before rowpool_stop() counts
     * it gone, so that none are left when it returns. */
    pthread_mutex_unlock(&pool_mu);
    rowbuf_release();
    pthread_mutex_lock(&pool_mu);
    pool_workers--;
    pthread_cond_signal(&pool_left_cv);
    pthread_mutex_unlock(&pool_mu);
    return NULL;
}

/* At exit: every worker ends and frees its buffers; a later call runs its rows on its own
 * thread. In a fork's child the workers were the parent's, and none is here to wait for. */
void rowpool_stop(void) {
    if (pool_forked) {
        return;
    }
    pthread_mutex_lock(&pool_mu);
    pool_closed = true;
    pool_gen++; /* ends a prewoken worker's sleep and spin at once */
    atomic_store(&pool_gen_a, pool_gen);
    pthread_cond_broadcast(&pool_cv);
    while (pool_workers > 0) {
        pthread_cond_wait(&pool_left_cv, &pool_mu);
    }
    pthread_mutex_unlock(&pool_mu);
}

static void pool_forked_child(void) { pool_forked = true; }

void rowpool_init(void) { pthread_atfork(NULL, NULL, pool_forked_child); }

#include <sched.h>

/* Spin, and after a while give the core away: the thread we wait for may have been preempted. */
static void wait_a_little(int spins) {
    if (spins < SPINS_BEFORE_YIELD) {
        RELAX();
    } else {
        sched_yield();
    }
}

static pthread_mutex_t run_mu = PTHREAD_MUTEX_INITIALIZER; /* one job at a time in the pool */

void rowpool_run(rowjob_t *job, int n_threads) {
    pthread_mutex_lock(&run_mu);
    int helpers = (n_threads < job->n_rows ? n_threads : job->n_rows) - 1;
    if (helpers > 0) {
        pthread_mutex_lock(&pool_mu);
        start_workers(helpers);
        pool_job = job;
        pool_gen++;
        atomic_store(&pool_gen_a, pool_gen);
        if (helpers >= pool_workers) {
            pthread_cond_broadcast(&pool_cv);
        } else {
            for (int i = 0; i < helpers; i++) {
                pthread_cond_signal(&pool_cv); /* the others sleep on (a spinning one sees the job) */
            }
        }
        pthread_mutex_unlock(&pool_mu);
    }
    work(job);
    for (int spins = 0; atomic_load(&job->done) < job->n_rows; spins++) {
        wait_a_little(spins); /* rows claimed by a worker: a few tens of microseconds */
    }
    if (helpers > 0) {
        pthread_mutex_lock(&pool_mu);
        pool_job = NULL; /* no worker picks this job up any more */
        pthread_mutex_unlock(&pool_mu);
        for (int spins = 0; atomic_load(&pool_busy) > 0; spins++) {
            wait_a_little(spins); /* a worker that found no row is on its way out of work() */
        }
    }
    pthread_mutex_unlock(&run_mu);
}

/* Wake the workers a step's rows will need while the device still decodes: they sleep on for
 * delay_us, then spin for at most spin_us, so that the next rowpool_run() finds them running. */
void rowpool_prewake(int n_threads, long long delay_us, long long spin_us) {
    pthread_mutex_lock(&pool_mu);
    start_workers(n_threads - 1);
    long long now = now_ns();
    pool_wake_at = now + delay_us * 1000;
    atomic_store(&pool_spin_end, pool_wake_at + spin_us * 1000);
    pool_wake++;
    pthread_cond_broadcast(&pool_cv);
    pthread_mutex_unlock(&pool_mu);
}

int rowpool_threaded(void) { return 1; }
#else
void rowpool_prewake(int n_threads, long long delay_us, long long spin_us) {
    (void)n_threads;
    (void)delay_us;
    (void)spin_us;
}

/* The OpenMP runtime owns its threads: each frees its buffers when it exits (rowbuffers.c). */
void rowpool_stop(void) {}

void rowpool_init(void) {}

/* Windows: the rows on OpenMP threads where MSVC has it, else one after another. */
void rowpool_run(rowjob_t *job, int n_threads) {
#ifdef _OPENMP
    int nt = n_threads < job->n_rows ? n_threads : job->n_rows;
#pragma omp parallel num_threads(nt > 0 ? nt : 1)
#endif
    work(job);
    (void)n_threads;
}

int rowpool_threaded(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}
#endif
