/* The thread pool of engine/child/rowsample.c: a job's rows, claimed one at a time by whichever
 * thread is free (engine/child/rowpool.c: a pthreads pool whose caller never waits for a worker
 * to wake, or OpenMP under MSVC). */
#ifndef KVDECK_ROWPOOL_H
#define KVDECK_ROWPOOL_H

#ifdef _WIN32
/* MSVC's C11 atomics need VS 2022 17.5 and a flag; the two counters need only these. */
#include <windows.h>
typedef volatile long atomic_int;
#define atomic_init(p, v) (*(p) = (v))
#define atomic_load(p) InterlockedCompareExchange((p), 0, 0)
#define atomic_fetch_add(p, v) InterlockedExchangeAdd((p), (v))
#else
#include <stdatomic.h>
#endif

/* A job: n_rows rows, row r done by row(job, r) on any thread; a caller embeds it first in its
 * own struct. next and done start at 0. */
typedef struct rowjob {
    void (*row)(struct rowjob *job, int r);
    int n_rows;
    atomic_int next; /* the next row to claim */
    atomic_int done; /* rows finished */
} rowjob_t;

/* Every row of job done, by the calling thread and at most n_threads - 1 workers; calls from
 * several threads take turns. */
void rowpool_run(rowjob_t *job, int n_threads);

/* Have the workers for n_threads running in delay_us, spinning for the next job at most spin_us. */
void rowpool_prewake(int n_threads, long long delay_us, long long spin_us);

/* At exit: every worker ends, freeing its buffers; rowpool_init() once at import. */
void rowpool_stop(void);
void rowpool_init(void);

/* Whether rows run on several threads (else one after another). */
int rowpool_threaded(void);

#endif
