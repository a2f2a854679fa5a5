/* engine.child._rowsample: the rows of one batch step sampled in native threads.
 *
 * Why this is C: after a decode step each generating sequence samples its own row of logits
 * (128k floats for Llama 3). llama.cpp's llama_sampler_sample first writes the whole row into the
 * chain's candidate array (12 bytes a token: 1.5 MB, src/llama-sampler.cpp) and top-k then sorts
 * part of it: sixteen such calls on sixteen threads still took 1.8 ms on an H200's host, and
 * Python threads cannot share out the numpy work that avoids the copy (short steps hold the
 * GIL): 1.5 ms a step for 16 rows, a fifth of the decode itself. Here every row is one vectorised pass that keeps only each 64-token chunk's
 * maximum; the k-th largest of those maxima is a threshold at least k tokens reach, so the row's
 * k best reach it too, and only about k chunks hold tokens that do. Those tokens are handed to
 * the request's own llama.cpp chain in vocabulary order, as llama.cpp writes them, so its top-k
 * keeps the same k tokens and every sampler after it sees only those: the token and the
 * chain's state (the dist sampler's generator, the penalties' history) are llama.cpp's, short of
 * the order of exact ties, which llama.cpp's unstable partial sort leaves open anyway.
 *
 * The rows run on a small pool of threads (engine/child/rowpool.c) with the GIL released; each thread keeps
 * its buffers between calls and frees them when it exits (engine/child/rowbuffers.c), and at
 * exit the pool's workers end (at_exit()). No Python object is touched without the GIL: the
 * caller passes addresses of plain arrays (engine/child/topk_cut.py). Calls from several
 * threads take turns.
 *
 * Built with the stable ABI (Py_LIMITED_API 3.10), so one binary serves every CPython >= 3.10.
 */
#define PY_SSIZE_T_CLEAN
#define Py_LIMITED_API 0x030A0000
#include <Python.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <math.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "rowbuffers.h"
#include "rowpool.h"

/* llama.h's candidate types (checked against llama_cpp's ctypes layout at import). */
typedef struct token_data {
    int32_t id;
    float logit;
    float p;
} token_data;

typedef struct {
    token_data *data;
    size_t size;
    int64_t selected;
    bool sorted;
} token_data_array;

typedef void (*apply_fn)(void *smpl, token_data_array *cur_p);
typedef void (*accept_fn)(void *smpl, int32_t token);

/* The row is read in chunks of CHUNK floats; the threshold comes from the chunks' maxima. */
enum { CHUNK = 64 };

#if defined(__SSE2__) || defined(_M_X64)
#include <emmintrin.h>
/* The largest of 64 floats; sets *has_nan when one is NaN. */
static float chunk_max(const float *v, int *has_nan) {
    __m128 m = _mm_loadu_ps(v), u = _mm_cmpunord_ps(m, m);
    for (int j = 4; j < CHUNK - 4; j += 8) {
        __m128 a = _mm_loadu_ps(v + j), b = _mm_loadu_ps(v + j + 4);
        u = _mm_or_ps(u, _mm_cmpunord_ps(a, b));
        m = _mm_max_ps(m, _mm_max_ps(a, b));
    }
    __m128 last = _mm_loadu_ps(v + CHUNK - 4); /* the loop read v[4..60); v[60..64) here */
    u = _mm_or_ps(u, _mm_cmpunord_ps(last, last));
    m = _mm_max_ps(m, last);
    m = _mm_max_ps(m, _mm_shuffle_ps(m, m, _MM_SHUFFLE(1, 0, 3, 2)));
    m = _mm_max_ps(m, _mm_shuffle_ps(m, m, _MM_SHUFFLE(2, 3, 0, 1)));
    *has_nan |= _mm_movemask_ps(u);
    return _mm_cvtss_f32(m);
}
#else
static float chunk_max(const float *v, int *has_nan) {
    float m = v[0];
    for (int j = 0; j < CHUNK; j++) {
        *has_nan |= v[j] != v[j];
        m = v[j] > m ? v[j] : m;
    }
    return m;
}
#endif

/* How far ahead the row is prefetched: the logits were just written by the device's copy, so
 * the row comes from memory, and a core's own prefetcher stops at every 4 KiB page. On the GPU
 * hosts one core read a 128k row in 35-60 us (about 10 GB/s, benchmarks/results/step-sampling-*),
 * far below what the core's loads could take. */
enum { AHEAD = 2048 }; /* floats: two pages */

/* maxima[c] = the largest of x[c*CHUNK, (c+1)*CHUNK) for every c < n_full; whether one is NaN. */
static int row_maxima_portable(const float *x, int64_t n_full, float *maxima) {
    int has_nan = 0;
    for (int64_t c = 0; c < n_full; c++) {
        maxima[c] = chunk_max(x + c * CHUNK, &has_nan);
    }
    return has_nan;
}

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>
#define ROW_MAXIMA_AVX 1
/* The same with 256-bit vectors, each chunk's four cache lines prefetched AHEAD floats early
 * (prefetches past the row's end are harmless: they never fault). Used where the CPU has AVX
 * (checked once, rowsample_init); the module itself is built for baseline x86-64. */
__attribute__((target("avx"))) static int row_maxima_avx(const float *x, int64_t n_full, float *maxima) {
    __m256 u = _mm256_setzero_ps();
    for (int64_t c = 0; c < n_full; c++) {
        const float *v = x + c * CHUNK;
        for (int l = 0; l < CHUNK; l += 16) {
            _mm_prefetch((const char *)(v + AHEAD + l), _MM_HINT_T0);
        }
        __m256 a0 = _mm256_loadu_ps(v), a1 = _mm256_loadu_ps(v + 8);
        __m256 a2 = _mm256_loadu_ps(v + 16), a3 = _mm256_loadu_ps(v + 24);
        __m256 a4 = _mm256_loadu_ps(v + 32), a5 = _mm256_loadu_ps(v + 40);
        __m256 a6 = _mm256_loadu_ps(v + 48), a7 = _mm256_loadu_ps(v + 56);
        u = _mm256_or_ps(u, _mm256_or_ps(_mm256_or_ps(_mm256_cmp_ps(a0, a1, _CMP_UNORD_Q),
                                                      _mm256_cmp_ps(a2, a3, _CMP_UNORD_Q)),
                                         _mm256_or_ps(_mm256_cmp_ps(a4, a5, _CMP_UNORD_Q),
                                                      _mm256_cmp_ps(a6, a7, _CMP_UNORD_Q))));
        __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_max_ps(a0, a1), _mm256_max_ps(a2, a3)),
                                 _mm256_max_ps(_mm256_max_ps(a4, a5), _mm256_max_ps(a6, a7)));
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        h = _mm_max_ps(h, _mm_shuffle_ps(h, h, _MM_SHUFFLE(1, 0, 3, 2)));
        h = _mm_max_ps(h, _mm_shuffle_ps(h, h, _MM_SHUFFLE(2, 3, 0, 1)));
        maxima[c] = _mm_cvtss_f32(h);
    }
    return _mm256_movemask_ps(u);
}
#endif

typedef int (*row_maxima_fn)(const float *x, int64_t n_full, float *maxima);
static row_maxima_fn row_maxima = row_maxima_portable;

/* Picks the row pass this CPU runs best (once, at import). */
static void rowsample_init(void) {
#ifdef ROW_MAXIMA_AVX
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx")) {
        row_maxima = row_maxima_avx;
    }
#endif
}

static bool reserve(void **buf, size_t *cap, size_t n, size_t size) {
    if (*cap >= n) {
        return true;
    }
    void *p = realloc(*buf, n * size);
    if (p == NULL) {
        return false;
    }
    *buf = p;
    *cap = n;
    return true;
}

/* Min-heap of the k largest values seen: heap[0] is the k-th largest. */
static void sift_down(float *heap, int k, int i) {
    float v = heap[i];
    for (;;) {
        int c = 2 * i + 1;
        if (c >= k) {
            break;
        }
        if (c + 1 < k && heap[c + 1] < heap[c]) {
            c++;
        }
        if (heap[c] >= v) {
            break;
        }
        heap[i] = heap[c];
        i = c;
    }
    heap[i] = v;
}

/* The k-th largest of v[0, n), n >= k, none NaN. */
static float kth_largest(const float *v, int64_t n, int k, float *heap) {
    for (int i = 0; i < k; i++) {
        heap[i] = v[i];
    }
    for (int i = k / 2 - 1; i >= 0; i--) {
        sift_down(heap, k, i);
    }
    for (int64_t i = k; i < n; i++) {
        if (v[i] > heap[0]) {
            heap[0] = v[i];
            sift_down(heap, k, 0);
        }
    }
    return heap[0];
}

/* The candidates of one row, written to b->cand in vocabulary order: every token of a chunk
 * whose maximum is among the k largest chunk maxima, if its logit reaches the k-th of those.
 * That threshold is reached by at least k tokens (one a chunk), so each of the row's k best
 * reaches it too, and only about k chunks hold candidates: one pass over the row that writes
 * nothing but a maximum per chunk. Returns their number, or -1 when the row holds a NaN
 * (llama.cpp's own path decides then) or a buffer could not be had. */
static int64_t candidates(rowbuf_t *b, const float *x, int64_t n, int k) {
    int64_t n_full = n / CHUNK, n_chunks = n_full + (n % CHUNK != 0);
    if (!reserve((void **)&b->heap, &b->heap_cap, (size_t)k, sizeof(float)) ||
        !reserve((void **)&b->chunk_max, &b->chunk_cap, (size_t)n_chunks, sizeof(float))) {
        return -1;
    }
    float *maxima = b->chunk_max;
    int has_nan = row_maxima(x, n_full, maxima);
    if (n_chunks > n_full) { /* the last, short chunk */
        float m = x[n_full * CHUNK];
        for (int64_t i = n_full * CHUNK; i < n; i++) {
            has_nan |= x[i] != x[i];
            m = x[i] > m ? x[i] : m;
        }
        maxima[n_full] = m;
    }
    if (has_nan) {
        return -1;
    }
    /* Fewer chunks than k (a tiny vocabulary): every token is a candidate. */
    float t = n_chunks >= k ? kth_largest(maxima, n_chunks, k, b->heap) : -INFINITY;
    int64_t count = 0;
    for (int64_t c = 0; c < n_chunks; c++) {
        if (maxima[c] < t) {
            continue;
        }
        int64_t end = c < n_full ? (c + 1) * CHUNK : n;
        if (!reserve((void **)&b->cand, &b->cand_cap, (size_t)(count + CHUNK) * 2, sizeof(token_data))) {
            return -1;
        }
        token_data *cand = b->cand;
        for (int64_t i = c * CHUNK; i < end; i++) {
            if (x[i] >= t) {
                cand[count].id = (int32_t)i;
                cand[count].logit = x[i];
                cand[count].p = 0.0f;
                count++;
            }
        }
    }
    return count;
}

/* A row the device already cut (engine/child/device_cut.py): its n candidates, ids[j] with
 * logit x[j], as they are. */
static int64_t given(rowbuf_t *b, const float *x, const int32_t *ids, int64_t n) {
    if (!reserve((void **)&b->cand, &b->cand_cap, (size_t)n, sizeof(token_data))) {
        return -1;
    }
    for (int64_t j = 0; j < n; j++) {
        b->cand[j].id = ids[j];
        b->cand[j].logit = x[j];
        b->cand[j].p = 0.0f;
    }
    return n;
}

/* The greedy token of n candidates the device kept (ids[j] with logit x[j], in no order): the
 * greatest logit, the lowest id among equals, as llama.cpp's greedy sampler takes the first
 * greatest of the vocabulary; -1 on a NaN. */
static int32_t greedy_given(const float *x, const int32_t *ids, int64_t n) {
    int64_t best = -1;
    for (int64_t j = 0; j < n; j++) {
        if (x[j] != x[j]) {
            return -1;
        }
        if (best < 0 || x[j] > x[best] || (x[j] == x[best] && ids[j] < ids[best])) {
            best = j;
        }
    }
    return best < 0 ? -1 : ids[best];
}

/* One row: its chain's token (the chain has accepted it), its first greatest logit without a
 * chain (llama.cpp's greedy sampler), or -1 for llama.cpp's own path. With ``ids`` the row is
 * n candidates the device kept, not the vocabulary. */
static int32_t sample_row(const float *x, int64_t n, int k, void *chain, apply_fn apply, accept_fn accept,
                          const int32_t *ids) {
    if (chain == NULL && ids != NULL) {
        return greedy_given(x, ids, n);
    }
    if (chain != NULL && k < 1) {
        return -1; /* no top-k to stand in for: llama.cpp's own path */
    }
    rowbuf_t *b = rowbuf_mine; /* the hot path: one thread-local read */
    if (b == NULL && (b = rowbuf_new()) == NULL) {
        return -1;
    }
    int64_t count = ids != NULL ? given(b, x, ids, n) : candidates(b, x, n, chain == NULL ? 1 : k);
    if (count <= 0) {
        return -1;
    }
    if (chain == NULL) {
        return b->cand[0].id;
    }
    token_data_array arr = {b->cand, (size_t)count, -1, false};
    apply(chain, &arr);
    if (arr.selected < 0 || (size_t)arr.selected >= arr.size) {
        return -1; /* cannot happen with a chain that ends in a selecting sampler */
    }
    int32_t tok = arr.data[arr.selected].id; /* top-k may hand back another array */
    accept(chain, tok);
    return tok;
}

/* One step's rows (the pool's job first: engine/child/rowpool.h). */
typedef struct {
    rowjob_t base;
    const float *const *rows;
    void *const *chains;
    const int32_t *ks;
    const int32_t *const *ids; /* per row, the device's candidate ids, or NULL: whole rows */
    const int64_t *counts;     /* per row with ids, how many */
    int32_t *out;
    int64_t n_vocab;
    apply_fn apply;
    accept_fn accept;
} job_t;

static void do_row(rowjob_t *base, int r) {
    job_t *job = (job_t *)base;
    const int32_t *ids = job->ids != NULL ? job->ids[r] : NULL;
    int64_t n = ids != NULL ? job->counts[r] : job->n_vocab;
    job->out[r] = sample_row(job->rows[r], n, job->ks[r], job->chains[r], job->apply, job->accept, ids);
}

static PyObject *sample(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long rows_p, chains_p, ks_p, out_p, apply_p, accept_p, ids_p = 0, counts_p = 0;
    long long n_vocab;
    int n_rows, n_threads;
    if (!PyArg_ParseTuple(args, "KLiKKKKKi|KK", &rows_p, &n_vocab, &n_rows, &chains_p, &ks_p, &out_p, &apply_p,
                          &accept_p, &n_threads, &ids_p, &counts_p)) {
        return NULL;
    }
    job_t job;
    job.rows = (const float *const *)(uintptr_t)rows_p;
    job.chains = (void *const *)(uintptr_t)chains_p;
    job.ks = (const int32_t *)(uintptr_t)ks_p;
    job.ids = (const int32_t *const *)(uintptr_t)ids_p;
    job.counts = (const int64_t *)(uintptr_t)counts_p;
    job.out = (int32_t *)(uintptr_t)out_p;
    job.n_vocab = n_vocab;
    job.apply = (apply_fn)(uintptr_t)apply_p;
    job.accept = (accept_fn)(uintptr_t)accept_p;
    job.base.row = do_row;
    job.base.n_rows = n_rows;
    atomic_init(&job.base.next, 0);
    atomic_init(&job.base.done, 0);
    Py_BEGIN_ALLOW_THREADS
    rowpool_run(&job.base, n_threads);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *prewake_py(PyObject *self, PyObject *args) {
    (void)self;
    int n_threads;
    long long delay_us, spin_us;
    if (!PyArg_ParseTuple(args, "iLL", &n_threads, &delay_us, &spin_us)) {
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    rowpool_prewake(n_threads, delay_us, spin_us);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* row_pass(name=None): the row pass in use ("avx" or "portable"); with a name, use that one (for
 * tests and benchmarks: both must give the same rows). */
static PyObject *row_pass(PyObject *self, PyObject *args) {
    (void)self;
    const char *name = NULL;
    if (!PyArg_ParseTuple(args, "|z", &name)) {
        return NULL;
    }
    if (name != NULL) {
        row_maxima_fn want = NULL;
        if (strcmp(name, "portable") == 0) {
            want = row_maxima_portable;
        }
#ifdef ROW_MAXIMA_AVX
        if (strcmp(name, "avx") == 0 && __builtin_cpu_supports("avx")) {
            want = row_maxima_avx;
        }
#endif
        if (want == NULL) {
            PyErr_Format(PyExc_ValueError, "no row pass %s on this CPU", name);
            return NULL;
        }
        row_maxima = want;
    }
#ifdef ROW_MAXIMA_AVX
    if (row_maxima == row_maxima_avx) {
        return PyUnicode_FromString("avx");
    }
#endif
    return PyUnicode_FromString("portable");
}

static PyObject *layout(PyObject *self, PyObject *args) {
    (void)self;
    (void)args;
    return Py_BuildValue("(nnnn)", (Py_ssize_t)sizeof(token_data), (Py_ssize_t)sizeof(token_data_array),
                         (Py_ssize_t)offsetof(token_data_array, selected),
                         (Py_ssize_t)offsetof(token_data_array, sorted));
}

/* Py_AtExit, after Python has finalized: the pool's workers end and free their buffers, and so
 * does this thread; any other thread frees its own as it exits. */
static void at_exit(void) {
    rowpool_stop();
    rowbuf_release();
}

static PyObject *live_buffers(PyObject *self, PyObject *args) {
    (void)self;
    int at_most = INT_MAX;
    double timeout_s = 0.0;
    if (!PyArg_ParseTuple(args, "|id", &at_most, &timeout_s)) {
        return NULL;
    }
    int n;
    Py_BEGIN_ALLOW_THREADS
    n = rowbuf_live(at_most, (long long)(timeout_s * 1000.0));
    Py_END_ALLOW_THREADS
    return PyLong_FromLong(n);
}

static PyObject *threaded(PyObject *self, PyObject *args) {
    (void)self;
    (void)args;
    return PyBool_FromLong(rowpool_threaded());
}

static PyMethodDef methods[] = {
    {"sample", sample, METH_VARARGS,
     "sample(rows, n_vocab, n_rows, chains, ks, out, apply, accept, n_threads): addresses of a float* "
     "per row, a llama_sampler* per row (0: greedy), an int32 k per row and an int32 result per row "
     "(-1: leave the row to llama.cpp), and of llama_sampler_apply / llama_sampler_accept."},
    {"prewake", prewake_py, METH_VARARGS,
     "prewake(n_threads, delay_us, spin_us): the workers of the next sample() sleep delay_us, then spin "
     "for it at most spin_us."},
    {"row_pass", row_pass, METH_VARARGS,
     "row_pass(name=None): the row pass in use, 'avx' or 'portable'; with a name, use that one."},
    {"layout", layout, METH_NOARGS, "(sizeof token_data, sizeof array, offsetof selected, offsetof sorted)"},
    {"threaded", threaded, METH_NOARGS, "Whether rows run on several threads (else one after another)."},
    {"live_buffers", live_buffers, METH_VARARGS,
     "live_buffers(at_most=INT_MAX, timeout_s=0.0): for tests, how many threads hold sampling buffers, "
     "after waiting up to timeout_s for at most at_most to (a thread frees them as it exits, which may "
     "be just after Thread.join() returned)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_rowsample", "The rows of a batch step sampled in native threads.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__rowsample(void) {
    static bool once;
    if (!once) {
        once = true;
        rowpool_init();
        rowsample_init();
        Py_AtExit(at_exit); /* none left (32 a process): the workers just live until the exit */
    }
    return PyModule_Create(&module);
}
