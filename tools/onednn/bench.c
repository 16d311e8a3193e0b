/* zipar W8A8 kernel (Sources/CKernels/qkernels.c) against oneDNN's int8 matmul, same problem, same
   thread count. See README.md next to this file; built and run by run.sh.

   Problem (as `zipar bench --kernels`): y[M,N] = x[M,K] . W[N,K]^T with N = 65536, K = 768, int8 weights
   with one float scale per output row, float activations quantized to int8 per token (ck_quantize_act,
   the same call for both sides), int32 accumulation, float output y = acc * rowscale[n] * sx[m].

   (a) zipar: ck_qgemm_w8 over its 16-row packed layout, 16-row blocks split in min(4 threads, blocks/4)
       chunks over the threads of zipar's own pool (pool.c), exactly as QuantizedLinear.run does it.
   (b) oneDNN: matmul s8 x s8 -> f32, weights reordered ONCE into the layout the primitive asks for
       (format_tag any), per-N output scales fixed at creation, per-token scale sx[m] as a binary-mul
       post-op on a [M,1] tensor where the fast (brgemm) kernel accepts it, which in oneDNN 2.6 is M = 1
       only (M > 1 gets ref_int8); otherwise a separate loop over y after the matmul, timed. (Posing
       the product as [1,M,K] x [1,K,N] makes brgemm accept a [1,M,1] post-op, but measured 2x slower
       even without it, so it is not used.) oneDNN runs on its OpenMP runtime.
   Threads: BENCH_THREADS = OMP_NUM_THREADS (run.sh: THREADS, default 2) on both sides.
   A second oneDNN primitive with s32 output checks the integer accumulators bit for bit.

   Timing: for each M, every run times zipar, oneDNN and a 51 MB read of a 512 MB buffer (the memory
   limit), in an order that rotates from run to run; each item is preceded (untimed) by streaming a
   128 MB buffer, so the weights come from DRAM as they do in a decode pass over a model larger than
   the last-level cache, and by a 30 ms sleep, so neither side's spinning threads steal the other's
   core. Reported: the median over the runs, the median of the per-run oneDNN / zipar ratio, and the
   fastest run. */
#define _GNU_SOURCE
#include <math.h>
#include <oneapi/dnnl/dnnl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <immintrin.h>
#include "ckernels.h"
#include "qkernels.h"

#define CHECK(f) do { dnnl_status_t s_ = (f); if (s_ != dnnl_success) { \
    fprintf(stderr, "%s:%d: %s -> status %d\n", __FILE__, __LINE__, #f, (int)s_); exit(1); } } while (0)

static const int N = 65536, K = 768;
static int THREADS = 2;   /* BENCH_THREADS, set by run.sh together with OMP_NUM_THREADS */

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
static int cmpd(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return (x > y) - (x < y); }
static double median(double *v, int n) { qsort(v, n, sizeof *v, cmpd); return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]); }
static uint64_t rng = 0x9E3779B97F4A7C15ull;
static uint32_t rnd(void) { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return (uint32_t)(rng >> 16); }
static float rndn(void) { float s = 0; for (int i = 0; i < 4; i++) s += (rnd() & 0xFFFF) / 65536.0f - 0.5f; return s * 1.7f; }
static void *xalloc(size_t n) { void *p = NULL; if (posix_memalign(&p, 4096, n)) { perror("alloc"); exit(1); } return p; }

/* ---------------------------------------------------------------- read bandwidth (zipar's pool, 2 threads) */
typedef struct { const uint8_t *buf; size_t bytes; int prefetch; int64_t sums[64 * 8]; } bw_ctx;
__attribute__((target("avx512f"))) static void bw_task(void *c, int chunk, int chunks, int worker) {
    (void)worker;
    bw_ctx *b = c;
    size_t per = b->bytes / chunks, lo = per * chunk, hi = lo + per;
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t p = lo; p < hi; p += 256) {
        if (b->prefetch)
            for (int l = 0; l < 256; l += 64) _mm_prefetch((const char *)(b->buf + p + b->prefetch + l), _MM_HINT_T0);
        a0 = _mm512_add_epi64(a0, _mm512_load_si512((const void *)(b->buf + p)));
        a1 = _mm512_add_epi64(a1, _mm512_load_si512((const void *)(b->buf + p + 64)));
        a2 = _mm512_add_epi64(a2, _mm512_load_si512((const void *)(b->buf + p + 128)));
        a3 = _mm512_add_epi64(a3, _mm512_load_si512((const void *)(b->buf + p + 192)));
    }
    b->sums[chunk * 8] = _mm512_reduce_add_epi64(_mm512_add_epi64(_mm512_add_epi64(a0, a1), _mm512_add_epi64(a2, a3)));
}
/* Streams a 512 MB buffer with 2 threads in 10 slices of 51 MB (about one weight matrix each), 3 passes,
   and takes the median slice: on 2 shared vCPUs a 50 ms read is almost always preempted somewhere,
   while the GEMM calls last a few ms, so per-slice timing is the comparable figure. Once with plain
   loads and once with software prefetch 1 KB ahead (as zipar's kernels do); the better is the limit. */
static uint8_t *bw_buf;
static const size_t bw_total = (size_t)512 << 20, bw_slice = ((size_t)512 << 20) / 10;
static double read_bandwidth(double *plain) {
    static bw_ctx b;
    size_t slice = bw_slice;
    uint8_t *buf = bw_buf = xalloc(bw_total + 4096);
    memset(buf, 1, bw_total + 4096);
    double best = 0;
    for (int pf = 0; pf < 2; pf++) {
        b.prefetch = pf ? 1024 : 0;
        b.bytes = slice;
        double t[30];
        for (int pass = 0; pass < 3; pass++)
            for (int sl = 0; sl < 10; sl++) {
                b.buf = buf + sl * slice;
                double t0 = now(); ck_parallel(bw_task, &b, 2 * THREADS, THREADS); t[pass * 10 + sl] = now() - t0;
            }
        double bw = slice / median(t, 30);
        if (!pf) *plain = bw;
        if (bw > best) best = bw;
        usleep(20000);
    }
    return best;
}

/* One timed slice read (prefetching), the next slice of the 512 MB buffer each time: the third
   interleaved item of every run, so the limit is measured under the same load as the GEMMs. */
static double slice_read_seconds(void) {
    static bw_ctx b; static int next;
    b.prefetch = 1024; b.bytes = bw_slice; b.buf = bw_buf + (size_t)(next++ % 10) * bw_slice;
    double t0 = now(); ck_parallel(bw_task, &b, 2 * THREADS, THREADS); return now() - t0;
}

/* Streams a buffer larger than the L3 (untimed) so the next call reads its weights from DRAM. */
static uint8_t *evict_buf; static size_t evict_bytes = (size_t)128 << 20;
static volatile uint64_t evict_sink;
static void evict(void) {
    uint64_t s = 0;
    for (size_t p = 0; p < evict_bytes; p += 64) s += evict_buf[p];
    evict_sink += s;
}

/* ---------------------------------------------------------------- zipar side (QuantizedLinear.run) */
typedef struct {
    const int8_t *xq; const float *sx; const int32_t *gsum; int m;
    const uint8_t *packed; const float *rowscale; float *y; int32_t *acc;
} zctx;
static const int BLOCKS = 65536 / 16;
static void z_task(void *c, int part, int parts, int worker) {
    (void)worker;
    zctx *z = c;
    /* Parallel.range(part, of: parts, n: blocks) */
    int lo = (int)((long)BLOCKS * part / parts), hi = (int)((long)BLOCKS * (part + 1) / parts);
    if (lo >= hi) return;
    ck_qgemm_w8(z->xq, z->sx, z->gsum, z->m, K, z->packed, z->rowscale, N, lo, hi, z->y, N, z->acc, N);
}
static void zipar_apply(const float *x, int m, int8_t *xq, float *sx, int32_t *gsum, const uint8_t *packed,
                        const float *rowscale, float *y, int32_t *acc) {
    ck_quantize_act(x, m, K, K, 0, -127, K, xq, sx, gsum);
    zctx z = { xq, sx, gsum, m, packed, rowscale, y, acc };
    /* chunks = min(4 * Parallel.threads, max(1, blocks / 4)) */
    int chunks = 4 * THREADS < BLOCKS / 4 ? 4 * THREADS : BLOCKS / 4;
    ck_parallel(z_task, &z, chunks, THREADS);
}

/* ---------------------------------------------------------------- oneDNN side */
static dnnl_engine_t eng;
static dnnl_stream_t strm;
typedef struct {
    dnnl_primitive_t prim;
    dnnl_memory_t src, wei, dst, sxm;   /* sxm: the [M,1] per-token scale for the post-op (or NULL) */
    int postop;                         /* 1: sx applied inside oneDNN; 0: a separate loop after it */
    const char *impl;
    char why[96];                       /* why the post-op was not kept */
    dnnl_memory_desc_t wmd;
} dnn_mm;

static dnnl_memory_t mem(const dnnl_memory_desc_t *md, void *ptr) {
    dnnl_memory_t m;
    CHECK(dnnl_memory_create(&m, md, eng, ptr ? ptr : DNNL_MEMORY_ALLOCATE));
    return m;
}

/* The packed weights, by layout: reordered once from the user's [N,K] int8 (= [K,N] with strides {1,K}). */
typedef struct { dnnl_memory_desc_t md; dnnl_memory_t m; } packed_w;
static packed_w packs[8]; static int npacks;
static dnnl_memory_t user_w;
static dnnl_memory_t weights_for(const dnnl_memory_desc_t *md) {
    for (int i = 0; i < npacks; i++) if (dnnl_memory_desc_equal(&packs[i].md, md)) return packs[i].m;
    dnnl_primitive_desc_t rpd; dnnl_primitive_t r;
    const dnnl_memory_desc_t *umd; CHECK(dnnl_memory_get_memory_desc(user_w, &umd));
    CHECK(dnnl_reorder_primitive_desc_create(&rpd, umd, eng, md, eng, NULL));
    CHECK(dnnl_primitive_create(&r, rpd));
    dnnl_memory_t out = mem(md, NULL);
    dnnl_exec_arg_t a[2] = { { DNNL_ARG_FROM, user_w }, { DNNL_ARG_TO, out } };
    CHECK(dnnl_primitive_execute(r, strm, 2, a));
    CHECK(dnnl_stream_wait(strm));
    dnnl_primitive_destroy(r); dnnl_primitive_desc_destroy(rpd);
    packs[npacks].md = *md; packs[npacks].m = out; npacks++;
    return out;
}

/* s8 src [M,K] x s8 weights (layout any) -> dst (f32 with scales, or s32 without). */
static dnn_mm dnn_create(int m, dnnl_data_type_t dt, const float *rowscale, int8_t *xq, void *y, float *sx, int try_postop) {
    dnn_mm d = {0};
    dnnl_memory_desc_t smd, wmd, dmd, sxmd;
    dnnl_dims_t sd = { m, K }, wd = { K, N }, dd = { m, N }, xd = { m, 1 };
    CHECK(dnnl_memory_desc_init_by_tag(&smd, 2, sd, dnnl_s8, dnnl_ab));
    CHECK(dnnl_memory_desc_init_by_tag(&wmd, 2, wd, dnnl_s8, dnnl_format_tag_any));
    CHECK(dnnl_memory_desc_init_by_tag(&dmd, 2, dd, dt, dnnl_ab));
    CHECK(dnnl_memory_desc_init_by_tag(&sxmd, 2, xd, dnnl_f32, dnnl_ab));
    dnnl_matmul_desc_t md;
    CHECK(dnnl_matmul_desc_init(&md, &smd, &wmd, NULL, &dmd));
    for (int attempt = try_postop ? 1 : 0; attempt >= 0; attempt--) {
        dnnl_primitive_attr_t attr;
        CHECK(dnnl_primitive_attr_create(&attr));
        if (dt == dnnl_f32) CHECK(dnnl_primitive_attr_set_output_scales(attr, N, 1 << 1, rowscale));
        if (attempt) {
            dnnl_post_ops_t po;
            CHECK(dnnl_post_ops_create(&po));
            CHECK(dnnl_post_ops_append_binary(po, dnnl_binary_mul, &sxmd));
            CHECK(dnnl_primitive_attr_set_post_ops(attr, po));
            dnnl_post_ops_destroy(po);
        }
        dnnl_primitive_desc_t pd;
        dnnl_status_t st = dnnl_primitive_desc_create(&pd, &md, attr, eng, NULL);
        dnnl_primitive_attr_destroy(attr);
        if (st != dnnl_success) {
            if (attempt) { snprintf(d.why, sizeof d.why, "(post-op: no implementation, status %d)", (int)st); continue; }
            CHECK(st);
        }
        const char *impl = NULL;
        CHECK(dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl));
        /* Keep the post-op only if the primitive is still a blocked (brgemm / jit) kernel, not a reference one. */
        if (attempt && strstr(impl, "ref")) {
            snprintf(d.why, sizeof d.why, "(post-op: only %s)", impl);
            dnnl_primitive_desc_destroy(pd); continue;
        }
        d.impl = strdup(impl);
        d.postop = attempt;
        d.wmd = *dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
        CHECK(dnnl_primitive_create(&d.prim, pd));
        dnnl_primitive_desc_destroy(pd);
        break;
    }
    d.src = mem(&smd, xq);
    d.dst = mem(&dmd, y);
    d.wei = weights_for(&d.wmd);
    if (d.postop) d.sxm = mem(&sxmd, sx);
    return d;
}

static void dnn_run(dnn_mm *d) {
    dnnl_exec_arg_t a[4] = { { DNNL_ARG_SRC, d->src }, { DNNL_ARG_WEIGHTS, d->wei }, { DNNL_ARG_DST, d->dst },
                             { DNNL_ARG_ATTR_MULTIPLE_POST_OP(0) | DNNL_ARG_SRC_1, d->sxm } };
    CHECK(dnnl_primitive_execute(d->prim, strm, d->postop ? 4 : 3, a));
    CHECK(dnnl_stream_wait(strm));
}

/* The per-token scale when the post-op could not carry it: on the calling thread while y is at most
   8 MB (M <= 32; an OpenMP region would make the call wait for the slower of two shared vCPUs once
   more), on oneDNN's OpenMP threads above that. */
static void scale_rows(int m, const float *sx, float *y) {
    int parts = N / 4096;
#pragma omp parallel for num_threads(THREADS) schedule(static) if ((size_t)m * N * 4 > ((size_t)8 << 20))
    for (int i = 0; i < m * parts; i++) {
        float *yr = y + (size_t)(i / parts) * N + (size_t)(i % parts) * 4096, s = sx[i / parts];
        for (int j = 0; j < 4096; j++) yr[j] *= s;
    }
}

static void dnn_apply(dnn_mm *d, const float *x, int m, int8_t *xq, float *sx, int32_t *gsum, float *y) {
    ck_quantize_act(x, m, K, K, 0, -127, K, xq, sx, gsum);
    dnn_run(d);
    if (!d->postop) scale_rows(m, sx, y);
}

/* ---------------------------------------------------------------- main */
int main(int argc, char **argv) {
    int runs = argc > 1 ? atoi(argv[1]) : 15;
    int Ms[] = { 1, 2, 4, 8, 16, 32, 256 }, nM = sizeof Ms / sizeof *Ms, maxM = 256;
    if (getenv("BENCH_THREADS")) THREADS = atoi(getenv("BENCH_THREADS"));
    if (THREADS < 1) THREADS = 1;
    ck_pool_start(THREADS);
    const dnnl_version_t *v = dnnl_version();
    printf("oneDNN %d.%d.%d (cpu runtime %s), zipar qkernel level %d (2 = AVX-512 VNNI), %d threads, N=%d K=%d, %d runs\n",
           v->major, v->minor, v->patch, v->cpu_runtime == DNNL_RUNTIME_OMP ? "OpenMP" : "other", ck_qkernel_level(), THREADS, N, K, runs);
    const char *omp = getenv("OMP_NUM_THREADS");
    if (!omp || atoi(omp) != THREADS) { fprintf(stderr, "set OMP_NUM_THREADS=%d (run.sh does)\n", THREADS); return 1; }

    /* Weights: int8 in [-127, 127], user layout [N,K] row-major; zipar's packed copy (QuantizedLinear.w8a8 layout). */
    int8_t *W = xalloc((size_t)N * K);
    for (size_t i = 0; i < (size_t)N * K; i++) W[i] = (int8_t)((int)(rnd() % 255) - 127);
    uint8_t *packed = xalloc((size_t)N * K);
    for (int b = 0; b < BLOCKS; b++)
        for (int l = 0; l < 16; l++)
            for (int p = 0; p < K; p++)
                packed[(size_t)b * (K / 4) * 64 + (p / 4) * 64 + 4 * l + p % 4] = (uint8_t)(W[(size_t)(16 * b + l) * K + p] + 128);
    float *rowscale = xalloc(N * sizeof(float));
    for (int j = 0; j < N; j++) rowscale[j] = 1e-3f * (1 + (rnd() % 1000) / 1000.0f);
    float *x = xalloc((size_t)maxM * K * sizeof(float));
    for (int i = 0; i < maxM * K; i++) x[i] = rndn();
    int8_t *xq = xalloc((size_t)maxM * K);
    float *sx = xalloc(maxM * sizeof(float));
    int32_t *gsum = xalloc(maxM * sizeof(int32_t));
    float *yz = xalloc((size_t)maxM * N * sizeof(float)), *yd = xalloc((size_t)maxM * N * sizeof(float));
    int32_t *accz = xalloc((size_t)maxM * N * 4), *accd = xalloc((size_t)maxM * N * 4);
    evict_buf = xalloc(evict_bytes);
    memset(evict_buf, 3, evict_bytes);

    CHECK(dnnl_engine_create(&eng, dnnl_cpu, 0));
    CHECK(dnnl_stream_create(&strm, eng, dnnl_stream_default_flags));
    dnnl_dims_t wd = { K, N }, ws = { 1, K };   /* W[N,K] row-major seen as [K,N] */
    dnnl_memory_desc_t umd;
    CHECK(dnnl_memory_desc_init_by_strides(&umd, 2, wd, dnnl_s8, ws));
    user_w = mem(&umd, W);

    double plain = 0, bw = read_bandwidth(&plain);
    double limit_ms = (double)N * K / bw * 1e3;
    printf("read bandwidth (512 MB in 51 MB slices, %d threads, median): %.1f GB/s plain loads, %.1f GB/s with prefetch -> weight-read limit %.2f ms for %.1f MB of int8 weights\n\n",
           THREADS, plain / 1e9, bw / 1e9, limit_ms, (double)N * K / 1e6);

    double zm[16], dm[16], zb[16], db[16], lim[16], ratio[16], loopms[16] = {0};
    const char *impls[16]; int post[16];
    for (int mi = 0; mi < nM; mi++) {
        int m = Ms[mi];
        /* Primitives and packed weights: created once, outside the timing. */
        /* BENCH_NO_POSTOP=1: always the separate per-token loop (to compare it with the post-op at M = 1). */
        dnn_mm f = dnn_create(m, dnnl_f32, rowscale, xq, yd, sx, !getenv("BENCH_NO_POSTOP"));
        dnn_mm s = dnn_create(m, dnnl_s32, NULL, xq, accd, sx, 0);
        impls[mi] = f.impl; post[mi] = f.postop;

        /* Agreement: exact int32 accumulators, float outputs within rounding. */
        zipar_apply(x, m, xq, sx, gsum, packed, rowscale, yz, accz);
        dnn_run(&s);
        dnn_apply(&f, x, m, xq, sx, gsum, yd);
        size_t bad = 0; double maxrel = 0;
        for (size_t i = 0; i < (size_t)m * N; i++) {
            if (accz[i] != accd[i]) bad++;
            double d = fabs((double)yz[i] - yd[i]) / (fabs((double)yz[i]) + 1e-6);
            if (d > maxrel) maxrel = d;
        }
        if (bad || maxrel > 1e-5) { fprintf(stderr, "M=%d: MISMATCH %zu int32 differences, max rel float diff %.2e\n", m, bad, maxrel); return 1; }
        printf("M=%d: int32 accumulators identical (%zu values), float max rel diff %.1e; oneDNN impl %s, weights %s, sx %s %s\n",
               m, (size_t)m * N, maxrel, f.impl, npacks > 1 ? "(layout differs by M, packed per layout)" : "packed once",
               f.postop ? "by binary post-op" : "by a loop after the matmul", f.postop ? "" : f.why);

        if (!f.postop) {   /* what the separate per-token loop costs (part of the oneDNN times) */
            double tl[9];
            for (int r = 0; r < 9; r++) { double t0 = now(); scale_rows(m, sx, yd); tl[r] = now() - t0; }
            loopms[mi] = median(tl, 9) * 1e3;
            printf("      per-token scale loop alone: %.3f ms (median of 9, y warm in cache where it fits)\n", loopms[mi]);
        }
        double tz[64], td[64], tb[64];
        int R = runs > 64 ? 64 : runs;
        for (int r = 0; r < R; r++) {
            /* zipar, oneDNN and a bandwidth slice, in an order that rotates from run to run */
            for (int item = 0; item < 3; item++) {
                int which = (item + r) % 3;
                evict(); usleep(30000);
                if (which == 2) { tb[r] = slice_read_seconds(); continue; }
                double t0 = now();
                if (which == 0) zipar_apply(x, m, xq, sx, gsum, packed, rowscale, yz, NULL);
                else dnn_apply(&f, x, m, xq, sx, gsum, yd);
                double t = now() - t0;
                if (which == 0) tz[r] = t; else td[r] = t;
            }
        }
        double pr[64];
        for (int r = 0; r < R; r++) pr[r] = td[r] / tz[r];   /* paired: the two calls of one run */
        ratio[mi] = median(pr, R);
        zm[mi] = median(tz, R) * 1e3; dm[mi] = median(td, R) * 1e3;   /* median() sorts: [0] is the best */
        zb[mi] = tz[0] * 1e3; db[mi] = td[0] * 1e3;
        lim[mi] = (double)N * K / (bw_slice / median(tb, R)) * 1e3;
        dnnl_primitive_destroy(f.prim); dnnl_primitive_destroy(s.prim);
        dnnl_memory_destroy(f.src); dnnl_memory_destroy(f.dst); dnnl_memory_destroy(s.src); dnnl_memory_destroy(s.dst);
        if (f.sxm) dnnl_memory_destroy(f.sxm);
    }
    printf("\n| M | zipar W8A8 ms | oneDNN s8 ms | oneDNN / zipar | paired ratio | limit ms | zipar / limit | oneDNN / limit | best zipar | best oneDNN | sx loop |\n"
           "|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (int mi = 0; mi < nM; mi++)
        printf("| %d | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f |\n", Ms[mi], zm[mi], dm[mi], dm[mi] / zm[mi], ratio[mi],
               lim[mi], zm[mi] / lim[mi], dm[mi] / lim[mi], zb[mi], db[mi], loopms[mi]);
    printf("\nlimit = %.1f MB of weights / read bandwidth, the median of the 51 MB slice reads interleaved with that row's runs\n"
           "(%.2f ms at the start-up figure above). Times include the int8 quantization of x (same call on both sides).\n"
           "ms columns: median of %d interleaved runs; paired ratio = median over runs of oneDNN / zipar within the run;\n"
           "best = fastest run; sx loop = the per-token scale pass oneDNN needs after the matmul for M > 1 (included\n"
           "in its times; measured alone, y warm).\n",
           (double)N * K / 1e6, limit_ms, runs > 64 ? 64 : runs);
    printf("oneDNN implementations: ");
    for (int mi = 0; mi < nM; mi++) printf("%sM=%d %s%s", mi ? ", " : "", Ms[mi], impls[mi], post[mi] ? "" : " (+sx loop)");
    printf("\n");
    return 0;
}
