/* The per-thread buffers of engine/child/rowsample.c, freed when their thread exits
 * (engine/child/rowbuffers.c says how). */
#ifndef KVDECK_ROWBUFFERS_H
#define KVDECK_ROWBUFFERS_H

#include <stddef.h>

#if defined(_MSC_VER)
#define THREAD_LOCAL __declspec(thread)
#else
#define THREAD_LOCAL _Thread_local
#endif

struct token_data; /* llama.h's llama_token_data (rowsample.c) */

/* One thread's buffers, grown as needed and kept for its next rows. */
typedef struct {
    struct token_data *cand; /* a row's candidates */
    size_t cand_cap;
    float *heap; /* the k largest chunk maxima */
    size_t heap_cap;
    float *chunk_max; /* a row's chunk maxima */
    size_t chunk_cap;
} rowbuf_t;

/* The calling thread's buffers, NULL before its first row: the one read on every row. */
extern THREAD_LOCAL rowbuf_t *rowbuf_mine;

/* Makes the calling thread's (empty) buffers, to be freed when it exits; NULL when that
 * cannot be had (no memory, no destructor slot left), and the row goes to llama.cpp. */
rowbuf_t *rowbuf_new(void);

/* Frees the calling thread's buffers now, if it has any (a pool worker that ends, the thread
 * that finalizes Python). */
void rowbuf_release(void);

/* How many threads hold buffers, after waiting up to timeout_ms for at most at_most to
 * (for tests: a thread frees its buffers as it exits, which may be just after Python's
 * Thread.join() has returned). */
int rowbuf_live(int at_most, long long timeout_ms);

#endif
