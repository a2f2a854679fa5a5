/* The per-thread buffers of engine/child/rowsample.c, freed when their thread exits.
 *
 * Why: each thread that samples rows keeps its buffers between calls (a row's chunk maxima and
 * candidates, up to ~3 MB), reached on every row through one thread-local pointer. A
 * thread-local variable is never freed by itself, so every thread that sampled and then
 * exited (a test's, a benchmark's, one of a pool's) would leave its buffers behind. A thread's
 * first row therefore also hands its buffers to the platform's per-thread destructor, which
 * frees them when the thread exits: a pthread key (POSIX) or a fiber-local slot's callback
 * (Windows, where it runs at thread exit as well). Every later row still reads only the
 * pointer. A count of the threads holding buffers lets the tests see them go.
 */
#include "rowbuffers.h"

#include <stdbool.h>
#include <stdlib.h>

THREAD_LOCAL rowbuf_t *rowbuf_mine;

static int live; /* threads holding buffers (under the lock below) */

static void destroy(void *p);

#ifdef _WIN32
#include <windows.h>

static SRWLOCK lock = SRWLOCK_INIT;
static CONDITION_VARIABLE live_changed = CONDITION_VARIABLE_INIT;
static INIT_ONCE slot_once = INIT_ONCE_STATIC_INIT;
static DWORD slot = FLS_OUT_OF_INDEXES;

static void NTAPI slot_exit(void *p) { destroy(p); }

static BOOL CALLBACK make_slot(PINIT_ONCE once, void *param, void **context) {
    (void)once;
    (void)param;
    (void)context;
    slot = FlsAlloc(slot_exit);
    return TRUE;
}

static bool slot_ready(void) {
    InitOnceExecuteOnce(&slot_once, make_slot, NULL, NULL);
    return slot != FLS_OUT_OF_INDEXES;
}

static bool slot_set(rowbuf_t *b) { return FlsSetValue(slot, b) != 0; }
static void lock_take(void) { AcquireSRWLockExclusive(&lock); }
static void lock_drop(void) { ReleaseSRWLockExclusive(&lock); }
static void live_changed_all(void) { WakeAllConditionVariable(&live_changed); }

int rowbuf_live(int at_most, long long timeout_ms) {
    ULONGLONG until = GetTickCount64() + (ULONGLONG)(timeout_ms > 0 ? timeout_ms : 0);
    lock_take();
    for (ULONGLONG now; live > at_most && (now = GetTickCount64()) < until;) {
        SleepConditionVariableSRW(&live_changed, &lock, (DWORD)(until - now), 0);
    }
    int n = live;
    lock_drop();
    return n;
}
#else
#include <pthread.h>
#include <time.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t live_changed = PTHREAD_COND_INITIALIZER;
static pthread_once_t slot_once = PTHREAD_ONCE_INIT;
static pthread_key_t slot;
static bool slot_made;

static void make_slot(void) { slot_made = pthread_key_create(&slot, destroy) == 0; }

static bool slot_ready(void) {
    pthread_once(&slot_once, make_slot);
    return slot_made;
}

static bool slot_set(rowbuf_t *b) { return pthread_setspecific(slot, b) == 0; }
static void lock_take(void) { pthread_mutex_lock(&lock); }
static void lock_drop(void) { pthread_mutex_unlock(&lock); }
static void live_changed_all(void) { pthread_cond_broadcast(&live_changed); }

int rowbuf_live(int at_most, long long timeout_ms) {
    struct timespec until; /* the condition variable's clock */
    clock_gettime(CLOCK_REALTIME, &until);
    if (timeout_ms > 0) {
        until.tv_sec += (time_t)(timeout_ms / 1000);
        until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
        until.tv_sec += until.tv_nsec / 1000000000L;
        until.tv_nsec %= 1000000000L;
    }
    lock_take();
    for (int rc = 0; live > at_most && rc == 0;) {
        rc = pthread_cond_timedwait(&live_changed, &lock, &until);
    }
    int n = live;
    lock_drop();
    return n;
}
#endif

/* The destructor: runs in the exiting thread, with that thread's buffers. */
static void destroy(void *p) {
    rowbuf_t *b = p;
    if (b == NULL) {
        return;
    }
    if (rowbuf_mine == b) {
        rowbuf_mine = NULL;
    }
    free(b->cand);
    free(b->heap);
    free(b->chunk_max);
    free(b);
    lock_take();
    live--;
    live_changed_all();
    lock_drop();
}

rowbuf_t *rowbuf_new(void) {
    if (!slot_ready()) {
        return NULL;
    }
    rowbuf_t *b = calloc(1, sizeof *b);
    if (b == NULL) {
        return NULL;
    }
    if (!slot_set(b)) {
        free(b);
        return NULL;
    }
    rowbuf_mine = b;
    lock_take();
    live++;
    live_changed_all();
    lock_drop();
    return b;
}

void rowbuf_release(void) {
    rowbuf_t *b = rowbuf_mine;
    if (b != NULL && slot_set(NULL)) { /* the destructor no longer has them */
        destroy(b);
    }
}
