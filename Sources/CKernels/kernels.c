/* Hot kernels for decode passes. The AVX2/FMA versions are compiled with a target attribute
   and picked at run time, so the package still runs (slower) on any x86-64 or non-x86 CPU. */
#include "ckernels.h"
#include "ckinternal.h"
#include <math.h>
#include <string.h>

int ck_avx512_enabled = 1;
int ck_avx2_enabled = 1;

static int cpu_has_avx2_fma(void) {
#ifdef CK_X86
    static int cached = -1;
    if (cached < 0) {
        __builtin_cpu_init();
        cached = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    }
    return cached;
#else
    return 0;
#endif
}

int ck_has_avx2_fma(void) {
#ifdef CK_X86
    return ck_avx2_enabled && cpu_has_avx2_fma();
#else
    return 0;
#endif
}

/* ------------------------------------------------------------------ portable fallbacks */

static void gemm_rows_generic(const float *x, int m, int k, const float *w, int j0, int j1, float *y, int ldy) {
    for (int j = j0; j < j1; j++) {
        const float *wr = w + (size_t)j * k;
        for (int i = 0; i < m; i++) {
            const float *xr = x + (size_t)i * k;
            float acc = 0;
            for (int p = 0; p < k; p++) acc += xr[p] * wr[p];
            y[(size_t)i * ldy + j] = acc;
        }
    }
}

static void gemm_rows_f16_generic(const float *x, int m, int k, const uint16_t *w, int j0, int j1, float *y, int ldy) {
    for (int j = j0; j < j1; j++) {
        const uint16_t *wr = w + (size_t)j * k;
        for (int i = 0; i < m; i++) {
            const float *xr = x + (size_t)i * k;
            float acc = 0;
            for (int p = 0; p < k; p++) acc += xr[p] * half_to_float(wr[p]);
            y[(size_t)i * ldy + j] = acc;
        }
    }
}

/* ------------------------------------------------------------------ AVX2 + FMA */
#ifdef CK_X86
CK_AVX2 static inline float hsum8(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}

/* Load 8 weights as floats, from fp32 or fp16 storage. */
#define LOAD_F32(ptr) _mm256_loadu_ps(ptr)
#define LOAD_F16(ptr) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(ptr)))

/* The tile: 3 weight rows x MI (1..4) activation rows = up to 12 accumulators + 3 weight registers +
   1 activation register, the 16 ymm registers. MI is a constant at every call (the switch below),
   so the loops unroll and the arrays live in registers. K is walked in blocks of KBLOCK so the 3
   weight-row pieces (12 KB) and one row group's activations (16 KB) stay in L1 while every row group
   passes over them: each weight byte comes from DRAM once per call whatever M is.
   While it computes, the tile prefetches what the next tile will read (pf[b] + p walks it in step
   with p, one prefetch per 64-byte line): the hardware prefetcher alone left a 1-row pass at
   1.3-1.6x the weight-streaming limit on Zen 3 (the AVX-512 kernel below does the same). */
#define KBLOCK 1024
#define DEFINE_TILE(NAME, WT, LOAD)                                                                  \
__attribute__((always_inline)) CK_AVX2 static inline void NAME(const float *x, size_t ldx, const WT *w0, \
        size_t ldw, int p0, int p1, const WT *const *pf, const int mi, float r[4][3]) {              \
    __m256 acc[4][3];                                                                                \
    for (int i = 0; i < mi; i++) for (int b = 0; b < 3; b++) acc[i][b] = _mm256_setzero_ps();        \
    for (int p = p0; p < p1; p += 8) {                                                               \
        if (!((p * (int)sizeof(WT)) & 63))                                                           \
            for (int b = 0; b < 3; b++) _mm_prefetch((const char *)(pf[b] + p), _MM_HINT_T0);        \
        __m256 v[3];                                                                                 \
        for (int b = 0; b < 3; b++) v[b] = LOAD(w0 + b * ldw + p);                                   \
        for (int i = 0; i < mi; i++) {                                                               \
            __m256 xv = _mm256_loadu_ps(x + i * ldx + p);                                            \
            for (int b = 0; b < 3; b++) acc[i][b] = _mm256_fmadd_ps(xv, v[b], acc[i][b]);            \
        }                                                                                            \
    }                                                                                                \
    for (int i = 0; i < mi; i++) for (int b = 0; b < 3; b++) r[i][b] = hsum8(acc[i][b]);             \
}

/* Rows are grouped 4 at a time, except that a remainder is balanced (6 = 3+3, 5 = 3+2) so that
   no group is tiny. */
static inline int group_rows(int left) { return left == 5 || left == 6 ? 3 : (left < 4 ? left : 4); }

#define DEFINE_GEMM_ROWS(NAME, TILE, WT, LOAD, TOF)                                                  \
CK_AVX2 static void NAME(const float *x, int m, int k, const WT *w, int j0, int j1, float *y, int ldy) { \
    int k8 = k & ~7;                                                                                 \
    int groups = 0;                                                                                  \
    for (int t = 0; t < m; t += group_rows(m - t)) groups++;                                         \
    int j = j0;                                                                                      \
    for (; j + 3 <= j1; j += 3) {                                                                    \
        const WT *w0 = w + (size_t)j * k;                                                            \
        for (int p0 = 0; p0 == 0 || p0 < k8; p0 += KBLOCK) {                                         \
          int p1 = p0 + KBLOCK < k8 ? p0 + KBLOCK : k8;                                              \
          int last = p1 >= k8;                                                                       \
          /* The next tile: the next k-block of these rows, or the next 3 rows (none: these). */    \
          const WT *pf[3];                                                                           \
          {                                                                                          \
            int nj = last ? j + 3 : j, np = last ? 0 : p1;                                           \
            if (nj + 3 > j1) { nj = j; np = p0; }                                                    \
            for (int b = 0; b < 3; b++) pf[b] = w + (size_t)(nj + b) * k + np - p0;                  \
          }                                                                                          \
          for (int i = 0, gi = 0; i < m; gi++) {                                                     \
            int mi = group_rows(m - i);                                                              \
            const float *x0 = x + (size_t)i * k;                                                     \
            float r[4][3];                                                                           \
            /* Several row groups share the prefetching: each takes its share of the next tile's   \
               rows, the others "prefetch" the line they load (an L1 hit). */                       \
            const WT *pg[3];                                                                         \
            for (int b = 0; b < 3; b++) pg[b] = b % groups == gi % groups ? pf[b] : w0 + (size_t)b * k; \
            switch (mi) {                                                                            \
            case 1: TILE(x0, k, w0, k, p0, p1, pg, 1, r); break;                                     \
            case 2: TILE(x0, k, w0, k, p0, p1, pg, 2, r); break;                                     \
            case 3: TILE(x0, k, w0, k, p0, p1, pg, 3, r); break;                                     \
            default: TILE(x0, k, w0, k, p0, p1, pg, 4, r); break;                                    \
            }                                                                                        \
            for (int a = 0; a < mi; a++)                                                             \
                for (int b = 0; b < 3; b++) {                                                        \
                    float acc = r[a][b];                                                             \
                    if (last) for (int p = k8; p < k; p++) acc += x0[(size_t)a * k + p] * TOF(w0[(size_t)b * k + p]); \
                    float *dst = y + (size_t)(i + a) * ldy + j + b;                                  \
                    *dst = p0 == 0 ? acc : *dst + acc;                                               \
                }                                                                                    \
            i += mi;                                                                                 \
          }                                                                                          \
          if (k8 == 0) break;                                                                        \
        }                                                                                            \
    }                                                                                                \
    for (; j < j1; j++) { /* leftover weight rows, one at a time */                                  \
        const WT *wr = w + (size_t)j * k;                                                            \
        for (int i = 0; i < m; i++) {                                                                \
            const float *xr = x + (size_t)i * k;                                                     \
            __m256 acc = _mm256_setzero_ps();                                                        \
            for (int p = 0; p < k8; p += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(xr + p), LOAD(wr + p), acc); \
            float s = hsum8(acc);                                                                    \
            for (int p = k8; p < k; p++) s += xr[p] * TOF(wr[p]);                                    \
            y[(size_t)i * ldy + j] = s;                                                              \
        }                                                                                            \
    }                                                                                                \
}

#define F32_ID(v) (v)
DEFINE_TILE(tile_f32, float, LOAD_F32)
DEFINE_TILE(tile_f16, uint16_t, LOAD_F16)
DEFINE_GEMM_ROWS(gemm_rows_avx2, tile_f32, float, LOAD_F32, F32_ID)
DEFINE_GEMM_ROWS(gemm_rows_f16_avx2, tile_f16, uint16_t, LOAD_F16, half_to_float)


CK_AVX2 static void axpy_avx2(float a, const float *x, float *y, int n) {
    __m256 va = _mm256_set1_ps(a);
    int p = 0;
    for (; p + 8 <= n; p += 8) _mm256_storeu_ps(y + p, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + p), _mm256_loadu_ps(y + p)));
    for (; p < n; p++) y[p] += a * x[p];
}

CK_AVX2 static float stream_sum_avx2(const float *x, size_t n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    size_t p = 0;
    for (; p + 32 <= n; p += 32) {
        s0 = _mm256_add_ps(s0, _mm256_loadu_ps(x + p));
        s1 = _mm256_add_ps(s1, _mm256_loadu_ps(x + p + 8));
        s2 = _mm256_add_ps(s2, _mm256_loadu_ps(x + p + 16));
        s3 = _mm256_add_ps(s3, _mm256_loadu_ps(x + p + 24));
    }
    float s = hsum8(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
    for (; p < n; p++) s += x[p];
    return s;
}
#endif


/* ------------------------------------------------------------------ AVX-512 (where the CPU has it) */
#ifdef CK_X86
#define CK_AVX512 __attribute__((target("avx512f,avx2,fma,f16c")))
#define LOAD512_F32(ptr) _mm512_loadu_ps(ptr)
#define LOAD512_F16(ptr) _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(ptr)))

/* The same streaming product with 512-bit registers: 4 weight rows x up to 6 activation rows
   = 24 accumulators + 4 weight + 1 activation register of the 32. A ZipAR pass of 3 tokens with CFG
   (6 rows) is one group: every weight load feeds 6 FMAs. */
#define KBLOCK512 1024
/* Into L1: an L2 hint (T1) measured no better for 4-8 rows and slower for 1-2. */
#define PF512(ptr) _mm_prefetch((const char *)(ptr), _MM_HINT_T0)

/* The tile's rows*4 accumulators ([row][weight row] order) become r[row][weight row], 16 at a time
   through reduce16's transpose-and-add tree: one horizontal sum per accumulator (24 at 6 rows) cost
   3-5% of a 6-row pass. */
CK_AVX512 static inline void reduce_tile512(const __m512 *acc, int rows, float r[6][4]) {
    for (int base = 0; base < rows; base += 4) {
        int n = (rows - base < 4 ? rows - base : 4) * 4;
        __m512 A[16];
        for (int i = 0; i < 16; i++) A[i] = i < n ? acc[base * 4 + i] : _mm512_setzero_ps();
        float t[16];
        _mm512_storeu_ps(t, reduce16(A));
        for (int i = 0; i < n; i++) r[base + i / 4][i % 4] = t[i];
    }
}
#define DEFINE_TILE512_1(NAME, WT, LOAD) \
CK_AVX512 static inline void NAME(const float *x, size_t ldx, const WT *w0, size_t ldw, int p0, int p1, const WT *const *pf, float r[6][4]) { \
    __m512 a00 = _mm512_setzero_ps(); __m512 a01 = _mm512_setzero_ps(); __m512 a02 = _mm512_setzero_ps(); __m512 a03 = _mm512_setzero_ps(); \
    const WT *w1 = w0 + ldw, *w2 = w1 + ldw, *w3 = w2 + ldw; \
    for (int p = p0; p < p1; p += 16) { \
        PF512(pf[0] + p); PF512(pf[1] + p); PF512(pf[2] + p); PF512(pf[3] + p); \
        __m512 v0 = LOAD(w0 + p), v1 = LOAD(w1 + p), v2 = LOAD(w2 + p), v3 = LOAD(w3 + p), xv; \
        xv = _mm512_loadu_ps(x + 0 * ldx + p); \
        a00 = _mm512_fmadd_ps(xv, v0, a00); a01 = _mm512_fmadd_ps(xv, v1, a01); a02 = _mm512_fmadd_ps(xv, v2, a02); a03 = _mm512_fmadd_ps(xv, v3, a03); \
    } \
    { const __m512 A_[4] = {a00, a01, a02, a03}; reduce_tile512(A_, 1, r); } \
}

#define DEFINE_TILE512_2(NAME, WT, LOAD) \
CK_AVX512 static inline void NAME(const float *x, size_t ldx, const WT *w0, size_t ldw, int p0, int p1, const WT *const *pf, float r[6][4]) { \
    __m512 a00 = _mm512_setzero_ps(); __m512 a01 = _mm512_setzero_ps(); __m512 a02 = _mm512_setzero_ps(); __m512 a03 = _mm512_setzero_ps(); __m512 a10 = _mm512_setzero_ps(); __m512 a11 = _mm512_setzero_ps(); __m512 a12 = _mm512_setzero_ps(); __m512 a13 = _mm512_setzero_ps(); \
    const WT *w1 = w0 + ldw, *w2 = w1 + ldw, *w3 = w2 + ldw; \
    for (int p = p0; p < p1; p += 16) { \
        PF512(pf[0] + p); PF512(pf[1] + p); PF512(pf[2] + p); PF512(pf[3] + p); \
        __m512 v0 = LOAD(w0 + p), v1 = LOAD(w1 + p), v2 = LOAD(w2 + p), v3 = LOAD(w3 + p), xv; \
        xv = _mm512_loadu_ps(x + 0 * ldx + p); \
        a00 = _mm512_fmadd_ps(xv, v0, a00); a01 = _mm512_fmadd_ps(xv, v1, a01); a02 = _mm512_fmadd_ps(xv, v2, a02); a03 = _mm512_fmadd_ps(xv, v3, a03); \
        xv = _mm512_loadu_ps(x + 1 * ldx + p); \
        a10 = _mm512_fmadd_ps(xv, v0, a10); a11 = _mm512_fmadd_ps(xv, v1, a11); a12 = _mm512_fmadd_ps(xv, v2, a12); a13 = _mm512_fmadd_ps(xv, v3, a13); \
    } \
    { const __m512 A_[8] = {a00, a01, a02, a03, a10, a11, a12, a13}; reduce_tile512(A_, 2, r); } \
}

#define DEFINE_TILE512_3(NAME, WT, LOAD) \
CK_AVX512 static inline void NAME(const float *x, size_t ldx, const WT *w0, size_t ldw, int p0, int p1, const WT *const *pf, float r[6][4]) { \
    __m512 a00 = _mm512_setzero_ps(); __m512 a01 = _mm512_setzero_ps(); __m512 a02 = _mm512_setzero_ps(); __m512 a03 = _mm512_setzero_ps(); __m512 a10 = _mm512_setzero_ps(); __m512 a11 = _mm512_setzero_ps(); __m512 a12 = _mm512_setzero_ps(); __m512 a13 = _mm512_setzero_ps(); __m512 a20 = _mm512_setzero_ps(); __m512 a21 = _mm512_setzero_ps(); __m512 a22 = _mm512_setzero_ps(); __m512 a23 = _mm512_setzero_ps(); \
    const WT *w1 = w0 + ldw, *w2 = w1 + ldw, *w3 = w2 + ldw; \
    for (int p = p0; p < p1; p += 16) { \
        PF512(pf[0] + p); PF512(pf[1] + p); PF512(pf[2] + p); PF512(pf[3] + p); \
        __m512 v0 = LOAD(w0 + p), v1 = LOAD(w1 + p), v2 = LOAD(w2 + p), v3 = LOAD(w3 + p), xv; \
        xv = _mm512_loadu_ps(x + 0 * ldx + p); \
        a00 = _mm512_fmadd_ps(xv, v0, a00); a01 = _mm512_fmadd_ps(xv, v1, a01); a02 = _mm512_fmadd_ps(xv, v2, a02); a03 = _mm512_fmadd_ps(xv, v3, a03); \
        xv = _mm512_loadu_ps(x + 1 * ldx + p); \
        a10 = _mm512_fmadd_ps(xv, v0, a10); a11 = _mm512_fmadd_ps(xv, v1, a11); a12 = _mm512_fmadd_ps(xv, v2, a12); a13 = _mm512_fmadd_ps(xv, v3, a13); \
        xv = _mm512_loadu_ps(x + 2 * ldx + p); \
        a20 = _mm512_fmadd_ps(xv, v0, a20); a21 = _mm512_fmadd_ps(xv, v1, a21); a22 = _mm512_fmadd_ps(xv, v2, a22); a23 = _mm512_fmadd_ps(xv, v3, a23); \
    } \
    { const __m512 A_[12] = {a00, a01, a02, a03, a10, a11, a12, a13, a20, a21, a22, a23}; reduce_tile512(A_, 3, r); } \
}

#define DEFINE_TILE512_4(NAME, WT, LOAD) \
CK_AVX512 static inline void NAME(const float *x, size_t ldx, const WT *w0, size_t ldw, int p0, int p1, const WT *const *pf, float r[6][4]) { \
    __m512 a00 = _mm512_setzero_ps(); __m512 a01 = _mm512_setzero_ps(); __m512 a02 = _mm512_setzero_ps(); __m512 a03 = _mm512_setzero_ps(); __m512 a10 = _mm512_setzero_ps(); __m512 a11 = _mm512_setzero_ps(); __m512 a12 = _mm512_setzero_ps(); __m512 a13 = _mm512_setzero_ps(); __m512 a20 = _mm512_setzero_ps(); __m512 a21 = _mm512_setzero_ps(); __m512 a22 = _mm512_setzero_ps(); __m512 a23 = _mm512_setzero_ps(); __m512 a30 = _mm512_setzero_ps(); __m512 a31 = _mm512_setzero_ps(); __m512 a32 = _mm512_setzero_ps(); __m512 a33 = _mm512_setzero_ps(); \
    const WT *w1 = w0 + ldw, *w2 = w1 + ldw, *w3 = w2 + ldw; \
    for (int p = p0; p < p1; p += 16) { \
        PF512(pf[0] + p); PF512(pf[1] + p); PF512(pf[2] + p); PF512(pf[3] + p); \
        __m512 v0 = LOAD(w0 + p), v1 = LOAD(w1 + p), v2 = LOAD(w2 + p), v3 = LOAD(w3 + p), xv; \
        xv = _mm512_loadu_ps(x + 0 * ldx + p); \
        a00 = _mm512_fmadd_ps(xv, v0, a00); a01 = _mm512_fmadd_ps(xv, v1, a01); a02 = _mm512_fmadd_ps(xv, v2, a02); a03 = _mm512_fmadd_ps(xv, v3, a03); \
        xv = _mm512_loadu_ps(x + 1 * ldx + p); \
        a10 = _mm512_fmadd_ps(xv, v0, a10); a11 = _mm512_fmadd_ps(xv, v1, a11); a12 = _mm512_fmadd_ps(xv, v2, a12); a13 = _mm512_fmadd_ps(xv, v3, a13); \
        xv = _mm512_loadu_ps(x + 2 * ldx + p); \
        a20 = _mm512_fmadd_ps(xv, v0, a20); a21 = _mm512_fmadd_ps(xv, v1, a21); a22 = _mm512_fmadd_ps(xv, v2, a22); a23 = _mm512_fmadd_ps(xv, v3, a23); \
        xv = _mm512_loadu_ps(x + 3 * ldx + p); \
        a30 = _mm512_fmadd_ps(xv, v0, a30); a31 = _mm512_fmadd_ps(xv, v1, a31); a32 = _mm512_fmadd_ps(xv, v2, a32); a33 = _mm512_fmadd_ps(xv, v3, a33); \
    } \
    { const __m512 A_[16] = {a00, a01, a02, a03, a10, a11, a12, a13, a20, a21, a22, a23, a30, a31, a32, a33}; reduce_tile512(A_, 4, r); } \
}

#define DEFINE_TILE512_5(NAME, WT, LOAD) \
CK_AVX512 static inline void NAME(const float *x, size_t ldx, const WT *w0, size_t ldw, int p0, int p1, const WT *const *pf, float r[6][4]) { \
    __m512 a00 = _mm512_setzero_ps(); __m512 a01 = _mm512_setzero_ps(); __m512 a02 = _mm512_setzero_ps(); __m512 a03 = _mm512_setzero_ps(); __m512 a10 = _mm512_setzero_ps(); __m512 a11 = _mm512_setzero_ps(); __m512 a12 = _mm512_setzero_ps(); __m512 a13 = _mm512_setzero_ps(); __m512 a20 = _mm512_setzero_ps(); __m512 a21 = _mm512_setzero_ps(); __m512 a22 = _mm512_setzero_ps(); __m512 a23 = _mm512_setzero_ps(); __m512 a30 = _mm512_setzero_ps(); __m512 a31 = _mm512_setzero_ps(); __m512 a32 = _mm512_setzero_ps(); __m512 a33 = _mm512_setzero_ps(); __m512 a40 = _mm512_setzero_ps(); __m512 a41 = _mm512_setzero_ps(); __m512 a42 = _mm512_setzero_ps(); __m512 a43 = _mm512_setzero_ps(); \
    const WT *w1 = w0 + ldw, *w2 = w1 + ldw, *w3 = w2 + ldw; \
    for (int p = p0; p < p1; p += 16) { \
        PF512(pf[0] + p); PF512(pf[1] + p); PF512(pf[2] + p); PF512(pf[3] + p); \
        __m512 v0 = LOAD(w0 + p), v1 = LOAD(w1 + p), v2 = LOAD(w2 + p), v3 = LOAD(w3 + p), xv; \
        xv = _mm512_loadu_ps(x + 0 * ldx + p); \
        a00 = _mm512_fmadd_ps(xv, v0, a00); a01 = _mm512_fmadd_ps(xv, v1, a01); a02 = _mm512_fmadd_ps(xv, v2, a02); a03 = _mm512_fmadd_ps(xv, v3, a03); \
        xv = _mm512_loadu_ps(x + 1 * ldx + p); \
        a10 = _mm512_fmadd_ps(xv, v0, a10); a11 = _mm512_fmadd_ps(xv, v1, a11); a12 = _mm512_fmadd_ps(xv, v2, a12); a13 = _mm512_fmadd_ps(xv, v3, a13); \
        xv = _mm512_loadu_ps(x + 2 * ldx + p); \
        a20 = _mm512_fmadd_ps(xv, v0, a20); a21 = _mm512_fmadd_ps(xv, v1, a21); a22 = _mm512_fmadd_ps(xv, v2, a22); a23 = _mm512_fmadd_ps(xv, v3, a23); \
        xv = _mm512_loadu_ps(x + 3 * ldx + p); \
        a30 = _mm512_fmadd_ps(xv, v0, a30); a31 = _mm512_fmadd_ps(xv, v1, a31); a32 = _mm512_fmadd_ps(xv, v2, a32); a33 = _mm512_fmadd_ps(xv, v3, a33); \
        xv = _mm512_loadu_ps(x + 4 * ldx + p); \
        a40 = _mm512_fmadd_ps(xv, v0, a40); a41 = _mm512_fmadd_ps(xv, v1, a41); a42 = _mm512_fmadd_ps(xv, v2, a42); a43 = _mm512_fmadd_ps(xv, v3, a43); \
    } \
    { const __m512 A_[20] = {a00, a01, a02, a03, a10, a11, a12, a13, a20, a21, a22, a23, a30, a31, a32, a33, a40, a41, a42, a43}; reduce_tile512(A_, 5, r); } \
}

#define DEFINE_TILE512_6(NAME, WT, LOAD) \
CK_AVX512 static inline void NAME(const float *x, size_t ldx, const WT *w0, size_t ldw, int p0, int p1, const WT *const *pf, float r[6][4]) { \
    __m512 a00 = _mm512_setzero_ps(); __m512 a01 = _mm512_setzero_ps(); __m512 a02 = _mm512_setzero_ps(); __m512 a03 = _mm512_setzero_ps(); __m512 a10 = _mm512_setzero_ps(); __m512 a11 = _mm512_setzero_ps(); __m512 a12 = _mm512_setzero_ps(); __m512 a13 = _mm512_setzero_ps(); __m512 a20 = _mm512_setzero_ps(); __m512 a21 = _mm512_setzero_ps(); __m512 a22 = _mm512_setzero_ps(); __m512 a23 = _mm512_setzero_ps(); __m512 a30 = _mm512_setzero_ps(); __m512 a31 = _mm512_setzero_ps(); __m512 a32 = _mm512_setzero_ps(); __m512 a33 = _mm512_setzero_ps(); __m512 a40 = _mm512_setzero_ps(); __m512 a41 = _mm512_setzero_ps(); __m512 a42 = _mm512_setzero_ps(); __m512 a43 = _mm512_setzero_ps(); __m512 a50 = _mm512_setzero_ps(); __m512 a51 = _mm512_setzero_ps(); __m512 a52 = _mm512_setzero_ps(); __m512 a53 = _mm512_setzero_ps(); \
    const WT *w1 = w0 + ldw, *w2 = w1 + ldw, *w3 = w2 + ldw; \
    for (int p = p0; p < p1; p += 16) { \
        PF512(pf[0] + p); PF512(pf[1] + p); PF512(pf[2] + p); PF512(pf[3] + p); \
        __m512 v0 = LOAD(w0 + p), v1 = LOAD(w1 + p), v2 = LOAD(w2 + p), v3 = LOAD(w3 + p), xv; \
        xv = _mm512_loadu_ps(x + 0 * ldx + p); \
        a00 = _mm512_fmadd_ps(xv, v0, a00); a01 = _mm512_fmadd_ps(xv, v1, a01); a02 = _mm512_fmadd_ps(xv, v2, a02); a03 = _mm512_fmadd_ps(xv, v3, a03); \
        xv = _mm512_loadu_ps(x + 1 * ldx + p); \
        a10 = _mm512_fmadd_ps(xv, v0, a10); a11 = _mm512_fmadd_ps(xv, v1, a11); a12 = _mm512_fmadd_ps(xv, v2, a12); a13 = _mm512_fmadd_ps(xv, v3, a13); \
        xv = _mm512_loadu_ps(x + 2 * ldx + p); \
        a20 = _mm512_fmadd_ps(xv, v0, a20); a21 = _mm512_fmadd_ps(xv, v1, a21); a22 = _mm512_fmadd_ps(xv, v2, a22); a23 = _mm512_fmadd_ps(xv, v3, a23); \
        xv = _mm512_loadu_ps(x + 3 * ldx + p); \
        a30 = _mm512_fmadd_ps(xv, v0, a30); a31 = _mm512_fmadd_ps(xv, v1, a31); a32 = _mm512_fmadd_ps(xv, v2, a32); a33 = _mm512_fmadd_ps(xv, v3, a33); \
        xv = _mm512_loadu_ps(x + 4 * ldx + p); \
        a40 = _mm512_fmadd_ps(xv, v0, a40); a41 = _mm512_fmadd_ps(xv, v1, a41); a42 = _mm512_fmadd_ps(xv, v2, a42); a43 = _mm512_fmadd_ps(xv, v3, a43); \
        xv = _mm512_loadu_ps(x + 5 * ldx + p); \
        a50 = _mm512_fmadd_ps(xv, v0, a50); a51 = _mm512_fmadd_ps(xv, v1, a51); a52 = _mm512_fmadd_ps(xv, v2, a52); a53 = _mm512_fmadd_ps(xv, v3, a53); \
    } \
    { const __m512 A_[24] = {a00, a01, a02, a03, a10, a11, a12, a13, a20, a21, a22, a23, a30, a31, a32, a33, a40, a41, a42, a43, a50, a51, a52, a53}; reduce_tile512(A_, 6, r); } \
}

static inline int group_rows512(int left) { return left <= 6 ? left : (left <= 8 ? (left + 1) / 2 : 6); }

#define DEFINE_GEMM_ROWS512(NAME, WT, LOAD, TOF, T1, T2, T3, T4, T5, T6)                           \
CK_AVX512 static void NAME(const float *x, int m, int k, const WT *w, int j0, int j1, float *y, int ldy) { \
    int k16 = k & ~15;                                                                               \
    int groups = 0;                                                                                  \
    for (int t = 0; t < m; t += group_rows512(m - t)) groups++;                                      \
    int j = j0;                                                                                      \
    for (; j + 4 <= j1; j += 4) {                                                                    \
        const WT *w0 = w + (size_t)j * k;                                                            \
        for (int p0 = 0; p0 == 0 || p0 < k16; p0 += KBLOCK512) {                                     \
          int p1 = p0 + KBLOCK512 < k16 ? p0 + KBLOCK512 : k16;                                      \
          int last = p1 >= k16;                                                                      \
          /* Prefetch what the next tile reads (the next k-block of these 4 rows, or the next 4     \
             rows) while this one computes: pf[r] + p walks it in step with p. */                   \
          const WT *pf[4];                                                                           \
          {                                                                                          \
            int nj = last ? j + 4 : j, np = last ? 0 : p1;                                           \
            if (nj + 4 > j1) { nj = j; np = p0; }                                                    \
            for (int b = 0; b < 4; b++) pf[b] = w + (size_t)(nj + b) * k + np - p0;                  \
          }                                                                                          \
          for (int i = 0, gi = 0; i < m; gi++) {                                                     \
            int mi = group_rows512(m - i);                                                           \
            const float *x0 = x + (size_t)i * k;                                                     \
            float r[6][4];                                                                           \
            /* With several row groups each prefetches its share of the next tile's rows, so      \
               memory keeps streaming while the later groups compute from L1; the other rows      \
               "prefetch" the line being loaded (an L1 hit). */                                    \
            const WT *pg[4];                                                                         \
            for (int b = 0; b < 4; b++) pg[b] = b % groups == gi % groups ? pf[b] : w0 + (size_t)b * k; \
            switch (mi) {                                                                            \
            case 1: T1(x0, k, w0, k, p0, p1, pg, r); break;                                          \
            case 2: T2(x0, k, w0, k, p0, p1, pg, r); break;                                          \
            case 3: T3(x0, k, w0, k, p0, p1, pg, r); break;                                          \
            case 4: T4(x0, k, w0, k, p0, p1, pg, r); break;                                          \
            case 5: T5(x0, k, w0, k, p0, p1, pg, r); break;                                          \
            default: T6(x0, k, w0, k, p0, p1, pg, r); break;                                         \
            }                                                                                        \
            for (int a = 0; a < mi; a++)                                                             \
                for (int b = 0; b < 4; b++) {                                                        \
                    float acc = r[a][b];                                                             \
                    if (last) for (int p = k16; p < k; p++) acc += x0[(size_t)a * k + p] * TOF(w0[(size_t)b * k + p]); \
                    float *dst = y + (size_t)(i + a) * ldy + j + b;                                  \
                    *dst = p0 == 0 ? acc : *dst + acc;                                               \
                }                                                                                    \
            i += mi;                                                                                 \
          }                                                                                          \
          if (k16 == 0) break;                                                                       \
        }                                                                                            \
    }                                                                                                \
    if (j < j1) NAME##_rest(x, m, k, w, j, j1, y, ldy);                                              \
}

/* Leftover weight rows (fewer than 4) go through the AVX2 kernel. */
static void gemm_rows512_f32_rest(const float *x, int m, int k, const float *w, int j0, int j1, float *y, int ldy) {
    gemm_rows_avx2(x, m, k, w, j0, j1, y, ldy);
}
static void gemm_rows512_f16_rest(const float *x, int m, int k, const uint16_t *w, int j0, int j1, float *y, int ldy) {
    gemm_rows_f16_avx2(x, m, k, w, j0, j1, y, ldy);
}
DEFINE_TILE512_1(t512_1_f32, float, LOAD512_F32)
DEFINE_TILE512_1(t512_1_f16, uint16_t, LOAD512_F16)
DEFINE_TILE512_2(t512_2_f32, float, LOAD512_F32)
DEFINE_TILE512_2(t512_2_f16, uint16_t, LOAD512_F16)
DEFINE_TILE512_3(t512_3_f32, float, LOAD512_F32)
DEFINE_TILE512_3(t512_3_f16, uint16_t, LOAD512_F16)
DEFINE_TILE512_4(t512_4_f32, float, LOAD512_F32)
DEFINE_TILE512_4(t512_4_f16, uint16_t, LOAD512_F16)
DEFINE_TILE512_5(t512_5_f32, float, LOAD512_F32)
DEFINE_TILE512_5(t512_5_f16, uint16_t, LOAD512_F16)
DEFINE_TILE512_6(t512_6_f32, float, LOAD512_F32)
DEFINE_TILE512_6(t512_6_f16, uint16_t, LOAD512_F16)
DEFINE_GEMM_ROWS512(gemm_rows512_f32, float, LOAD512_F32, F32_ID, t512_1_f32, t512_2_f32, t512_3_f32, t512_4_f32, t512_5_f32, t512_6_f32)
DEFINE_GEMM_ROWS512(gemm_rows512_f16, uint16_t, LOAD512_F16, half_to_float, t512_1_f16, t512_2_f16, t512_3_f16, t512_4_f16, t512_5_f16, t512_6_f16)

int ck_cpu_has_avx512(void) {
    static int cached = -1;
    if (cached < 0) { __builtin_cpu_init(); cached = cpu_has_avx2_fma() && __builtin_cpu_supports("avx512f"); }
    return cached && ck_avx2_enabled;
}
#endif

/* ------------------------------------------------------------------ dispatch */

void ck_gemm_rows(const float *x, int m, int k, const float *w, int j0, int j1, float *y, int ldy) {
#ifdef CK_X86
    if (ck_avx512_enabled && has_avx512()) { gemm_rows512_f32(x, m, k, w, j0, j1, y, ldy); return; }
    if (ck_has_avx2_fma()) { gemm_rows_avx2(x, m, k, w, j0, j1, y, ldy); return; }
#endif
    gemm_rows_generic(x, m, k, w, j0, j1, y, ldy);
}

void ck_gemm_rows_f16(const float *x, int m, int k, const uint16_t *w, int j0, int j1, float *y, int ldy) {
#ifdef CK_X86
    if (ck_avx512_enabled && has_avx512()) { gemm_rows512_f16(x, m, k, w, j0, j1, y, ldy); return; }
    if (ck_has_avx2_fma()) { gemm_rows_f16_avx2(x, m, k, w, j0, j1, y, ldy); return; }
#endif
    gemm_rows_f16_generic(x, m, k, w, j0, j1, y, ldy);
}




float ck_stream_sum(const float *x, size_t n) {
#ifdef CK_X86
    if (ck_has_avx2_fma()) return stream_sum_avx2(x, n);
#endif
    float s = 0;
    for (size_t p = 0; p < n; p++) s += x[p];
    return s;
}

/* out[d] = sum_j p[j] * v[j*d ...]: one query's weighted sum of value rows. */
#ifdef CK_X86
CK_AVX2 static void weighted_rows_avx2(const float *p, const float *v, int n, int d, float *out) {
    int c = 0;
    for (; c + 64 <= d; c += 64) {   /* 8 accumulators cover 64 columns */
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
        for (int j = 0; j < n; j++) {
            if (p[j] == 0.0f) continue;
            __m256 pj = _mm256_set1_ps(p[j]);
            const float *vj = v + (size_t)j * d + c;
            a0 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj), a0);      a1 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj + 8), a1);
            a2 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj + 16), a2); a3 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj + 24), a3);
            a4 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj + 32), a4); a5 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj + 40), a5);
            a6 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj + 48), a6); a7 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj + 56), a7);
        }
        _mm256_storeu_ps(out + c, a0);      _mm256_storeu_ps(out + c + 8, a1);
        _mm256_storeu_ps(out + c + 16, a2); _mm256_storeu_ps(out + c + 24, a3);
        _mm256_storeu_ps(out + c + 32, a4); _mm256_storeu_ps(out + c + 40, a5);
        _mm256_storeu_ps(out + c + 48, a6); _mm256_storeu_ps(out + c + 56, a7);
    }
    if (c < d) {   /* remaining columns (head_dim not a multiple of 64) */
        memset(out + c, 0, sizeof(float) * (size_t)(d - c));
        for (int j = 0; j < n; j++)
            if (p[j] != 0.0f) axpy_avx2(p[j], v + (size_t)j * d + c, out + c, d - c);
    }
}
#endif

#ifdef CK_X86
/* fp16 values: 8 columns at a time, converted with F16C, accumulated in fp32. */
CK_AVX2 static void weighted_rows_f16_avx2(const float *p, const uint16_t *v, int n, int d, float *out) {
    for (int c = 0; c < d; c += 64) {
        int w = d - c < 64 ? (d - c) / 8 : 8;
        __m256 acc[8];
        for (int t = 0; t < 8; t++) acc[t] = _mm256_setzero_ps();
        for (int j = 0; j < n; j++) {
            if (p[j] == 0.0f) continue;
            __m256 pj = _mm256_set1_ps(p[j]);
            const uint16_t *vj = v + (size_t)j * d + c;
            for (int t = 0; t < w; t++)
                acc[t] = _mm256_fmadd_ps(pj, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(vj + 8 * t))), acc[t]);
        }
        for (int t = 0; t < w; t++) _mm256_storeu_ps(out + c + 8 * t, acc[t]);
    }
}
#endif

#ifdef CK_X86
/* out[d] = sum_j p[j] * v[j*d ...] with 512-bit registers, keys taken in pairs: with head_dim 64 one
   key is only 4 FMAs, so a single accumulator set would wait on FMA latency; two sets (even and odd
   keys) keep both FMA ports busy. d is a multiple of 64. */
CK_AVX512B static void weighted_rows_avx512(const float *p, const float *v, int n, int d, float *out) {
    for (int c = 0; c < d; c += 64) {   /* d % 64 == 0: constant trip counts keep a0..b3 in registers */
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
        for (int j = 0; j < n;) {
            const float *v0 = v + (size_t)j * d + c;
            if (j + 1 < n && p[j] != 0.0f && p[j + 1] != 0.0f) {
                __m512 p0 = _mm512_set1_ps(p[j]), p1 = _mm512_set1_ps(p[j + 1]);
                const float *v1 = v0 + d;
                a0 = _mm512_fmadd_ps(p0, _mm512_loadu_ps(v0), a0);      b0 = _mm512_fmadd_ps(p1, _mm512_loadu_ps(v1), b0);
                a1 = _mm512_fmadd_ps(p0, _mm512_loadu_ps(v0 + 16), a1); b1 = _mm512_fmadd_ps(p1, _mm512_loadu_ps(v1 + 16), b1);
                a2 = _mm512_fmadd_ps(p0, _mm512_loadu_ps(v0 + 32), a2); b2 = _mm512_fmadd_ps(p1, _mm512_loadu_ps(v1 + 32), b2);
                a3 = _mm512_fmadd_ps(p0, _mm512_loadu_ps(v0 + 48), a3); b3 = _mm512_fmadd_ps(p1, _mm512_loadu_ps(v1 + 48), b3);
                j += 2;
                continue;
            }
            /* A row with probability 0 is skipped, not multiplied: a compressed cache leaves stale
               (possibly non-finite) values in the evicted rows of its scratch. */
            if (p[j] != 0.0f) {
                __m512 p0 = _mm512_set1_ps(p[j]);
                a0 = _mm512_fmadd_ps(p0, _mm512_loadu_ps(v0), a0);      a1 = _mm512_fmadd_ps(p0, _mm512_loadu_ps(v0 + 16), a1);
                a2 = _mm512_fmadd_ps(p0, _mm512_loadu_ps(v0 + 32), a2); a3 = _mm512_fmadd_ps(p0, _mm512_loadu_ps(v0 + 48), a3);
            }
            j += 1;
        }
        _mm512_storeu_ps(out + c, _mm512_add_ps(a0, b0));      _mm512_storeu_ps(out + c + 16, _mm512_add_ps(a1, b1));
        _mm512_storeu_ps(out + c + 32, _mm512_add_ps(a2, b2)); _mm512_storeu_ps(out + c + 48, _mm512_add_ps(a3, b3));
    }
}

/* Constants of the Cephes exp polynomial shared by exp512 and exp256 (NN.exp8 in Swift has the same):
   x = n ln2 + r with ln2 split in a high and a low part, e^r by a degree-6 polynomial. */
#define EXP_LOG2E 1.44269504088896341f
#define EXP_LN2_HI 0.693359375f
#define EXP_LN2_LO -2.12194440e-4f
#define EXP_P0 1.9875691500e-4f
#define EXP_P1 1.3981999507e-3f
#define EXP_P2 8.3334519073e-3f
#define EXP_P3 4.1665795894e-2f
#define EXP_P4 1.6666665459e-1f
#define EXP_P5 5.0000001201e-1f
/* out = e^r, r = x - n ln2, on W-bit vectors, W = 512 or 256 (the intrinsic names are pasted
   together): exp512 and exp256 differ only in how they round n and apply 2^n. */
#define EXP_POLY(W, x, n, out) do {                                                             \
    __m##W r_ = _mm##W##_sub_ps(x, _mm##W##_mul_ps(n, _mm##W##_set1_ps(EXP_LN2_HI)));           \
    r_ = _mm##W##_sub_ps(r_, _mm##W##_mul_ps(n, _mm##W##_set1_ps(EXP_LN2_LO)));                 \
    __m##W q_ = _mm##W##_set1_ps(EXP_P0);                                                       \
    q_ = _mm##W##_fmadd_ps(q_, r_, _mm##W##_set1_ps(EXP_P1));                                   \
    q_ = _mm##W##_fmadd_ps(q_, r_, _mm##W##_set1_ps(EXP_P2));                                   \
    q_ = _mm##W##_fmadd_ps(q_, r_, _mm##W##_set1_ps(EXP_P3));                                   \
    q_ = _mm##W##_fmadd_ps(q_, r_, _mm##W##_set1_ps(EXP_P4));                                   \
    q_ = _mm##W##_fmadd_ps(q_, r_, _mm##W##_set1_ps(EXP_P5));                                   \
    out = _mm##W##_add_ps(_mm##W##_fmadd_ps(_mm##W##_mul_ps(q_, r_), r_, r_), _mm##W##_set1_ps(1.0f)); \
} while (0)

/* e^x for 16 lanes, the Cephes polynomial of NN.exp8 (Swift): x = n ln2 + r, |r| <= ln2/2, degree 6,
   times 2^n (scalef). 1-2 ulp; inputs clamped to [-87, 88]. */
CK_AVX512B static inline __m512 exp512(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(88.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(EXP_LOG2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 q;
    EXP_POLY(512, x, n, q);
    return _mm512_scalef_ps(q, n);
}

/* The first min(left, 16) lanes. */
static inline __mmask16 tail16(int left) { return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1); }

/* Visible lanes (mask byte != 0; every lane when m is NULL) of 16 slots; `left` < 16 limits a tail. */
CK_AVX512B static inline __mmask16 visible16(const uint8_t *m, int left) {
    if (!m) return tail16(left);
    __m128i bytes;
    if (left >= 16) bytes = _mm_loadu_si128((const __m128i *)m);
    else { uint8_t tail[16] = {0}; memcpy(tail, m, (size_t)left); bytes = _mm_loadu_si128((const __m128i *)tail); }
    return _mm512_mask_test_epi32_mask(tail16(left), _mm512_cvtepu8_epi32(bytes), _mm512_cvtepu8_epi32(bytes));
}

/* Masked (m NULL = all visible), scaled softmax of one row in place: invisible and -inf entries get
   exactly 0 (a visible slot can carry a -inf score: ZipVL eviction, top-k filtering). Returns 0, with
   the row zeroed, when nothing is left. */
CK_AVX512B static int softmax_row_avx512(float *s, const uint8_t *m, int n, float scale) {
    __m512 mx = _mm512_set1_ps(-INFINITY), sc = _mm512_set1_ps(scale), ninf = mx;
    for (int j = 0; j < n; j += 16) {
        __mmask16 k = visible16(m ? m + j : NULL, n - j);
        mx = _mm512_mask_max_ps(mx, k, mx, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, s + j), sc));
    }
    float top = _mm512_reduce_max_ps(mx);
    if (top == -INFINITY) { memset(s, 0, sizeof(float) * (size_t)n); return 0; }
    __m512 t = _mm512_set1_ps(top), sum = _mm512_setzero_ps();
    for (int j = 0; j < n; j += 16) {
        __mmask16 k = visible16(m ? m + j : NULL, n - j);
        __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, s + j), sc);
        __mmask16 live = _mm512_mask_cmp_ps_mask(k, v, ninf, _CMP_NEQ_OQ);
        __m512 e = _mm512_maskz_mov_ps(live, exp512(_mm512_sub_ps(v, t)));
        _mm512_mask_storeu_ps(s + j, tail16(n - j), e);
        sum = _mm512_add_ps(sum, e);
    }
    __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(sum));
    for (int j = 0; j < n; j += 16)
        _mm512_mask_storeu_ps(s + j, tail16(n - j), _mm512_mul_ps(_mm512_maskz_loadu_ps(tail16(n - j), s + j), inv));
    return 1;
}

/* a = silu(a) * b (SwiGLU), 16 lanes; the tail through a masked load. */
CK_AVX512B static void swiglu_avx512(float *a, const float *b, int n) {
    __m512 one = _mm512_set1_ps(1.0f);
    for (int i = 0; i < n; i += 16) {
        __mmask16 in = tail16(n - i);
        __m512 x = _mm512_maskz_loadu_ps(in, a + i), y = _mm512_maskz_loadu_ps(in, b + i);
        __m512 sig = _mm512_div_ps(x, _mm512_add_ps(one, exp512(_mm512_sub_ps(_mm512_setzero_ps(), x))));
        _mm512_mask_storeu_ps(a + i, in, _mm512_mul_ps(sig, y));
    }
}

/* Attention scores scores[i*n + j] = q_i . k_j for a group of nq queries (d a multiple of 16). The
   streaming product would sum each (query, key) pair with a full horizontal reduction (~8 shuffle/add
   uops for just d/16 FMAs at head_dim 64); here 16 keys are accumulated side by side and reduced
   together by a transpose-and-add tree (45 uops per 16 scores, reduce16). Keys of one head sit in L2. */
/* Queries go innermost: each 16-key block (4 KB at head_dim 64) comes from memory once and the other
   queries of the group reuse it from L1, so a ZipAR pass's extra queries compute while the key stream
   goes on instead of re-reading every key from L2 after it. */
#define DEFINE_SCORES512(NAME, WT, LOAD) \
CK_AVX512B static void NAME(const float *q, int nq, const WT *k, int n, int d, float *scores, int ld) { \
    int n16 = n & ~15; \
    for (int j0 = 0; j0 < n16; j0 += 16) { \
        const WT *kb = k + (size_t)j0 * d; \
        for (int i = 0; i < nq; i++) {   /* constant trip counts: A stays in registers */ \
            const float *qi = q + (size_t)i * d; \
            __m512 A[16]; \
            __m512 qc = _mm512_loadu_ps(qi); \
            for (int t = 0; t < 16; t++) A[t] = _mm512_mul_ps(qc, LOAD(kb + (size_t)t * d)); \
            for (int c = 16; c < d; c += 16) { \
                qc = _mm512_loadu_ps(qi + c); \
                for (int t = 0; t < 16; t++) A[t] = _mm512_fmadd_ps(qc, LOAD(kb + (size_t)t * d + c), A[t]); \
            } \
            _mm512_storeu_ps(scores + (size_t)i * ld + j0, reduce16(A)); \
        } \
    } \
    for (int j = n16; j < n; j++) {   /* the last n % 16 keys one at a time */ \
        for (int i = 0; i < nq; i++) { \
            const float *qi = q + (size_t)i * d; \
            __m512 acc = _mm512_setzero_ps(); \
            for (int c = 0; c < d; c += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(qi + c), LOAD(k + (size_t)j * d + c), acc); \
            scores[(size_t)i * ld + j] = _mm512_reduce_add_ps(acc); \
        } \
    } \
}
DEFINE_SCORES512(scores512_f32, float, LOAD512_F32)
DEFINE_SCORES512(scores512_f16, uint16_t, LOAD512_F16)

/* out[i*ldo ...] = sum_j p[i*n + j] * v[j*d ...] for a group of nq >= 2 queries (d a multiple of 64):
   each value row is loaded once for up to 4 queries (4 x 4 accumulators), for the same reason as the
   scores above. Rows with probability 0 are skipped, not multiplied (see weighted_rows_avx512). */
#define DEFINE_VALUES_MULTI512(NAME, WT, LOAD) \
CK_AVX512B __attribute__((always_inline)) static inline void NAME##_m(const float *p, int n, const int M, const WT *v, int d, \
                                                                   int c, float *out, int ldo) { \
    __m512 acc[4][4]; \
    for (int i = 0; i < M; i++) for (int u = 0; u < 4; u++) acc[i][u] = _mm512_setzero_ps(); \
    for (int j = 0; j < n; j++) { \
        const WT *vj = v + (size_t)j * d + c; \
        __m512 x0 = LOAD(vj), x1 = LOAD(vj + 16), x2 = LOAD(vj + 32), x3 = LOAD(vj + 48); \
        for (int i = 0; i < M; i++) { \
            float pij = p[(size_t)i * n + j]; \
            if (pij == 0.0f) continue; \
            __m512 pp = _mm512_set1_ps(pij); \
            acc[i][0] = _mm512_fmadd_ps(pp, x0, acc[i][0]); acc[i][1] = _mm512_fmadd_ps(pp, x1, acc[i][1]); \
            acc[i][2] = _mm512_fmadd_ps(pp, x2, acc[i][2]); acc[i][3] = _mm512_fmadd_ps(pp, x3, acc[i][3]); \
        } \
    } \
    for (int i = 0; i < M; i++) for (int u = 0; u < 4; u++) _mm512_storeu_ps(out + (size_t)i * ldo + c + 16 * u, acc[i][u]); \
} \
CK_AVX512B static void NAME(const float *p, int nq, const WT *v, int n, int d, float *out, int ldo) { \
    for (int i0 = 0; i0 < nq; i0 += 4) { \
        int m = nq - i0 < 4 ? nq - i0 : 4; \
        const float *pi = p + (size_t)i0 * n; \
        float *oi = out + (size_t)i0 * ldo; \
        for (int c = 0; c < d; c += 64) { \
            if (m == 1) NAME##_m(pi, n, 1, v, d, c, oi, ldo); \
            else if (m == 2) NAME##_m(pi, n, 2, v, d, c, oi, ldo); \
            else if (m == 3) NAME##_m(pi, n, 3, v, d, c, oi, ldo); \
            else NAME##_m(pi, n, 4, v, d, c, oi, ldo); \
        } \
    } \
}
DEFINE_VALUES_MULTI512(values_multi512_f32, float, LOAD512_F32)
DEFINE_VALUES_MULTI512(values_multi512_f16, uint16_t, LOAD512_F16)
#endif

/* Masked, scaled softmax of one score row in place (masked slots become exactly 0); returns 0, with
   the row zeroed, when no slot is visible. */
#ifdef CK_X86
/* e^x for 8 lanes: exp512's polynomial, with 2^n built in the exponent bits (AVX2 has no scalef;
   n stays in [-126, 127] for x in [-87, 88], so the result is the same). */
CK_AVX2 static inline __m256 exp256(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(EXP_LOG2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 q;
    EXP_POLY(256, x, n, q);
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(q, _mm256_castsi256_ps(e));
}

/* All-ones lanes for the first min(left, 8) of 8. */
CK_AVX2 static inline __m256i tail8(int left) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(left), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* All-ones lanes where the slot is visible (mask byte != 0; every lane when m is NULL), tail cut. */
CK_AVX2 static inline __m256i visible8(const uint8_t *m, int left) {
    __m256i t = tail8(left);
    if (!m) return t;
    uint8_t tail[8] = {0};
    const uint8_t *b = m;
    if (left < 8) { memcpy(tail, m, (size_t)left); b = tail; }
    __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)b));
    return _mm256_andnot_si256(_mm256_cmpeq_epi32(v, _mm256_setzero_si256()), t);
}

/* softmax_row_avx512 with 8 lanes: the libm expf per score was most of a ZipAR pass's attention
   time on CPUs without AVX-512. */
CK_AVX2 static int softmax_row_avx2(float *s, const uint8_t *m, int n, float scale) {
    const __m256 sc = _mm256_set1_ps(scale), ninf = _mm256_set1_ps(-INFINITY);
    __m256 mx = ninf;
    for (int j = 0; j < n; j += 8) {
        __m256i k = visible8(m ? m + j : NULL, n - j);
        __m256 v = _mm256_mul_ps(_mm256_maskload_ps(s + j, k), sc);
        mx = _mm256_max_ps(mx, _mm256_blendv_ps(ninf, v, _mm256_castsi256_ps(k)));
    }
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    float top = _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)));
    if (top == -INFINITY) { memset(s, 0, sizeof(float) * (size_t)n); return 0; }
    __m256 t = _mm256_set1_ps(top), sum = _mm256_setzero_ps();
    for (int j = 0; j < n; j += 8) {
        __m256i k = visible8(m ? m + j : NULL, n - j);
        __m256 v = _mm256_mul_ps(_mm256_maskload_ps(s + j, k), sc);
        __m256 live = _mm256_and_ps(_mm256_castsi256_ps(k), _mm256_cmp_ps(v, ninf, _CMP_NEQ_OQ));
        __m256 e = _mm256_and_ps(live, exp256(_mm256_sub_ps(v, t)));
        _mm256_maskstore_ps(s + j, tail8(n - j), e);
        sum = _mm256_add_ps(sum, e);
    }
    __m256 inv = _mm256_set1_ps(1.0f / hsum8(sum));
    for (int j = 0; j < n; j += 8) {
        __m256i k = tail8(n - j);
        _mm256_maskstore_ps(s + j, k, _mm256_mul_ps(_mm256_maskload_ps(s + j, k), inv));
    }
    return 1;
}

/* a = silu(a) * b (SwiGLU), 8 lanes. */
CK_AVX2 static void swiglu_avx2(float *a, const float *b, int n) {
    const __m256 one = _mm256_set1_ps(1.0f);
    for (int i = 0; i < n; i += 8) {
        __m256i in = tail8(n - i);
        __m256 x = _mm256_maskload_ps(a + i, in), y = _mm256_maskload_ps(b + i, in);
        __m256 sig = _mm256_div_ps(x, _mm256_add_ps(one, exp256(_mm256_sub_ps(_mm256_setzero_ps(), x))));
        _mm256_maskstore_ps(a + i, in, _mm256_mul_ps(sig, y));
    }
}
#endif

static int softmax_row(float *s, const uint8_t *m, int n, float scale) {
#ifdef CK_X86
    if (ck_avx512_enabled && has_avx512()) return softmax_row_avx512(s, m, n, scale);
    if (ck_has_avx2_fma()) return softmax_row_avx2(s, m, n, scale);
#endif
    float mx = -INFINITY, sum = 0;
    for (int j = 0; j < n; j++) {
        s[j] = !m || m[j] ? s[j] * scale : -INFINITY;
        if (s[j] > mx) mx = s[j];
    }
    if (mx == -INFINITY) { memset(s, 0, sizeof(float) * (size_t)n); return 0; }
    for (int j = 0; j < n; j++) { float e = s[j] == -INFINITY ? 0.0f : expf(s[j] - mx); s[j] = e; sum += e; }
    float inv = 1.0f / sum;
    for (int j = 0; j < n; j++) s[j] *= inv;
    return 1;
}

static void weighted_rows(const float *p, const float *v, int n, int d, float *out) {
#ifdef CK_X86
    if (ck_avx512_enabled && has_avx512() && d % 64 == 0) { weighted_rows_avx512(p, v, n, d, out); return; }
    if (ck_has_avx2_fma()) { weighted_rows_avx2(p, v, n, d, out); return; }
#endif
    memset(out, 0, sizeof(float) * (size_t)d);
    for (int j = 0; j < n; j++)
        if (p[j] != 0.0f) for (int c = 0; c < d; c++) out[c] += p[j] * v[(size_t)j * d + c];
}

static void weighted_rows_f16(const float *p, const uint16_t *v, int n, int d, float *out) {
#ifdef CK_X86
    if (ck_has_avx2_fma() && d % 8 == 0) {
        weighted_rows_f16_avx2(p, v, n, d, out);
        return;
    }
#endif
    memset(out, 0, sizeof(float) * (size_t)d);
    for (int j = 0; j < n; j++)
        if (p[j] != 0.0f) for (int c = 0; c < d; c++) out[c] += p[j] * half_to_float(v[(size_t)j * d + c]);
}

void ck_attn_scores(const float *q, int nq, int d, const float *k, int n, float *scores, int ld) {
#ifdef CK_X86
    if (d % 16 == 0 && ck_avx512_enabled && has_avx512()) { scores512_f32(q, nq, k, n, d, scores, ld); return; }
#endif
    ck_gemm_rows(q, nq, d, k, 0, n, scores, ld);   /* the streaming product: each key row read once */
}

void ck_attn_scores_f16(const float *q, int nq, int d, const uint16_t *k, int n, float *scores, int ld) {
#ifdef CK_X86
    if (d % 16 == 0 && ck_avx512_enabled && has_avx512()) { scores512_f16(q, nq, k, n, d, scores, ld); return; }
#endif
    ck_gemm_rows_f16(q, nq, d, k, 0, n, scores, ld);
}

/* BiViT's softmax-aware binarization of one row of probabilities: 1 where p >= 0.25 * max p, else
   0 (masked slots have p = 0 and stay 0). No renormalisation, as the official code. */
static void sab_row(float *p, int n) {
    float mx = 0;
    for (int j = 0; j < n; j++) if (p[j] > mx) mx = p[j];
    float t = 0.25f * mx;
    for (int j = 0; j < n; j++) p[j] = p[j] >= t && p[j] > 0 ? 1.0f : 0.0f;
}

/* Masked softmax of each query's scores (binarized with SAB when sab != 0), then its weighted sum
   of value rows. */
static void softmax_and_values(const uint8_t *masks, const int *maskOffsets, int nq, int n, int d, float scale, int sab,
                               float *scores, float *out, int ldo, const float *v, const uint16_t *v16) {
    /* A query that sees no slot gets an all-zero row, hence a zero output. */
    ck_softmax_rows(masks, maskOffsets, nq, n, scale, sab, scores);
#ifdef CK_X86
    if (nq > 1 && d % 64 == 0 && ck_avx512_enabled && has_avx512()) {
        if (v16) values_multi512_f16(scores, nq, v16, n, d, out, ldo);
        else values_multi512_f32(scores, nq, v, n, d, out, ldo);
        return;
    }
#endif
    for (int i = 0; i < nq; i++) {
        if (v16) weighted_rows_f16(scores + (size_t)i * n, v16, n, d, out + (size_t)i * ldo);
        else weighted_rows(scores + (size_t)i * n, v, n, d, out + (size_t)i * ldo);
    }
}

void ck_attend_group(const float *q, int ldq, const float *k, const float *v, const uint8_t *masks,
                     const int *maskOffsets, int nq, int n, int d, float scale, int sab, float *scores,
                     float *out, int ldo) {
    if (ldq == d) ck_attn_scores(q, nq, d, k, n, scores, n);
    else for (int i = 0; i < nq; i++) ck_gemm_rows(q + (size_t)i * ldq, 1, d, k, 0, n, scores + (size_t)i * n, n);
    softmax_and_values(masks, maskOffsets, nq, n, d, scale, sab, scores, out, ldo, v, NULL);
}

void ck_attend_group_f16(const float *q, int ldq, const uint16_t *k, const uint16_t *v, const uint8_t *masks,
                         const int *maskOffsets, int nq, int n, int d, float scale, int sab, float *scores,
                         float *out, int ldo) {
    if (ldq == d) ck_attn_scores_f16(q, nq, d, k, n, scores, n);
    else for (int i = 0; i < nq; i++) ck_gemm_rows_f16(q + (size_t)i * ldq, 1, d, k, 0, n, scores + (size_t)i * n, n);
    softmax_and_values(masks, maskOffsets, nq, n, d, scale, sab, scores, out, ldo, NULL, v);
}

static uint16_t float_to_half(float f) {
    uint32_t x; memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000, mant = x & 0x7fffff;
    int exp = (int)((x >> 23) & 0xff) - 127 + 15;
    if (((x >> 23) & 0xff) == 0xff) return (uint16_t)(sign | 0x7c00 | (mant ? 0x200 : 0));   /* inf / nan */
    if (exp >= 31) return (uint16_t)(sign | 0x7c00);                                            /* overflow */
    if (exp <= 0) {                                                                              /* subnormal */
        if (exp < -10) return (uint16_t)sign;
        mant |= 0x800000;
        int shift = 14 - exp;
        uint32_t h = mant >> shift, rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (h & 1))) h++;
        return (uint16_t)(sign | h);
    }
    uint32_t h = ((uint32_t)exp << 10) | (mant >> 13), rem = mant & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++;                                         /* may carry into exp: ok */
    return (uint16_t)(sign | h);
}

#ifdef CK_X86
CK_AVX2 static void f32_to_f16_avx2(const float *src, uint16_t *dst, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(dst + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) dst[i] = float_to_half(src[i]);
}
#endif

void ck_f32_to_f16(const float *src, uint16_t *dst, int n) {
#ifdef CK_X86
    if (ck_has_avx2_fma()) { f32_to_f16_avx2(src, dst, n); return; }
#endif
    for (int i = 0; i < n; i++) dst[i] = float_to_half(src[i]);
}

void ck_softmax_rows(const uint8_t *masks, const int *maskOffsets, int nq, int n, float scale, int sab, float *scores) {
    for (int i = 0; i < nq; i++)
        if (softmax_row(scores + (size_t)i * n, masks + maskOffsets[i], n, scale) && sab) sab_row(scores + (size_t)i * n, n);
}

void ck_weighted_rows_acc(const float *p, const float *v, int n, int d, float *out) {
    float tmp[512];
    weighted_rows(p, v, n, d, tmp);
    for (int c = 0; c < d; c++) out[c] += tmp[c];
}

void ck_weighted_rows_acc_f16(const float *p, const uint16_t *v, int n, int d, float *out) {
    float tmp[512];
    weighted_rows_f16(p, v, n, d, tmp);
    for (int c = 0; c < d; c++) out[c] += tmp[c];
}

#ifdef CK_X86
CK_AVX2 static void f16_to_f32_avx2(const uint16_t *src, float *dst, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
    for (; i < n; i++) dst[i] = half_to_float(src[i]);
}
#endif

void ck_f16_to_f32(const uint16_t *src, float *dst, int n) {
#ifdef CK_X86
    if (ck_has_avx2_fma()) { f16_to_f32_avx2(src, dst, n); return; }
#endif
    for (int i = 0; i < n; i++) dst[i] = half_to_float(src[i]);
}

/* ------------------------------------------------------------------ elementwise and sampling */

void ck_swiglu(float *a, const float *b, int n) {
#ifdef CK_X86
    if (ck_avx512_enabled && has_avx512()) { swiglu_avx512(a, b, n); return; }
    if (ck_has_avx2_fma()) { swiglu_avx2(a, b, n); return; }
#endif
    for (int i = 0; i < n; i++) a[i] = a[i] / (1.0f + expf(-a[i])) * b[i];
}

int ck_softmax_inplace(float *x, int n) { return softmax_row(x, NULL, n, 1.0f); }

/* Hoare quickselect of the k-th largest (1-based) of a[0..n), in place. */
static float quickselect_desc(float *a, int n, int k) {
    int lo = 0, hi = n - 1, target = k - 1;
    while (lo < hi) {
        float pivot = a[(lo + hi) / 2];
        int i = lo, j = hi;
        while (i <= j) {
            while (a[i] > pivot) i++;
            while (a[j] < pivot) j--;
            if (i <= j) { float t = a[i]; a[i] = a[j]; a[j] = t; i++; j--; }
        }
        if (target <= j) hi = j; else if (target >= i) lo = i; else break;
    }
    return a[target];
}

/* The bin holding the k-th largest, counted down from the top bin; *above = values in higher bins. */
static int boundary_bin(const int32_t *counts, int bins, int k, int *above) {
    int b = bins - 1;
    *above = 0;
    while (b > 0 && *above + counts[b] < k) { *above += counts[b]; b--; }
    return b;
}

/* One histogram round of ck_kth_largest over src[0..*n): gathers the k-th value's bin into scratch,
   updates *n and *k and returns 1; returns 2 with every value equal to *equal, 0 when the range is
   not finite (quickselect takes it from there). */
static int kth_round(const float *src, int *n_, int *k_, int32_t *counts, int bins, float *scratch, float *equal) {
    int n = *n_;
    float mn = src[0], mx = src[0];
    for (int i = 1; i < n; i++) { mn = src[i] < mn ? src[i] : mn; mx = src[i] > mx ? src[i] : mx; }
    if (mx == mn) { *equal = mx; return 2; }
    float range = mx - mn;
    if (!isfinite(range)) return 0;
    float scale = (float)bins / range, top = (float)(bins - 1);
    memset(counts, 0, sizeof(int32_t) * (size_t)bins);
#define CK_BIN(v) ({ float t_ = ((v) - mn) * scale; (int)(t_ < top ? (t_ > 0 ? t_ : 0) : top); })
    for (int i = 0; i < n; i++) counts[CK_BIN(src[i])]++;
    int above, b = boundary_bin(counts, bins, *k_, &above);
    int m = 0;   /* gathering in place (src == scratch) is safe: m <= i */
    for (int i = 0; i < n; i++) if (CK_BIN(src[i]) == b) scratch[m++] = src[i];
#undef CK_BIN
    *n_ = m; *k_ -= above;
    return 1;
}

#ifdef CK_X86
/* Indices of the positive entries of w[0..n16), in order, for ck_draw; *done = n16. */
CK_AVX512B static int positive_indices_avx512(const float *w, int n, int32_t *live, int *done) {
    int n16 = n & ~15, m = 0;
    __m512i idx = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), step = _mm512_set1_epi32(16);
    for (int i = 0; i < n16; i += 16, idx = _mm512_add_epi32(idx, step)) {
        __mmask16 pos = _mm512_cmp_ps_mask(_mm512_loadu_ps(w + i), _mm512_setzero_ps(), _CMP_GT_OQ);
        _mm512_mask_compressstoreu_epi32(live + m, pos, idx);
        m += __builtin_popcount((unsigned)pos);
    }
    *done = n16;
    return m;
}

/* Bins of 16 values, as the scalar CK_BIN: trunc(clamp((v - mn) * scale, 0, top)). */
CK_AVX512B static inline __m512i bins16(__m512 v, __m512 mn, __m512 scale, __m512 top) {
    __m512 t = _mm512_mul_ps(_mm512_sub_ps(v, mn), scale);
    return _mm512_cvttps_epi32(_mm512_min_ps(_mm512_max_ps(t, _mm512_setzero_ps()), top));
}

/* kth_round, 16 values at a time (the scalar round spends ~19 cycles per logit: ~0.1 ms of every
   token of a 16k vocabulary at top-k 2000). */
CK_AVX512B static int kth_round_avx512(const float *src, int *n_, int *k_, int32_t *counts, int bins, float *scratch,
                                      float *equal) {
    int n = *n_, n16 = n & ~15;
    __m512 vmn = _mm512_set1_ps(src[0]), vmx = vmn;
    for (int i = 0; i < n16; i += 16) {
        __m512 v = _mm512_loadu_ps(src + i);
        vmn = _mm512_min_ps(v, vmn); vmx = _mm512_max_ps(v, vmx);   /* NaN lanes keep the old value */
    }
    float mn = _mm512_reduce_min_ps(vmn), mx = _mm512_reduce_max_ps(vmx);
    for (int i = n16; i < n; i++) { mn = src[i] < mn ? src[i] : mn; mx = src[i] > mx ? src[i] : mx; }
    if (mx == mn) { *equal = mx; return 2; }
    float range = mx - mn;
    if (!isfinite(range)) return 0;
    float scale = (float)bins / range, top = (float)(bins - 1);
    __m512 smn = _mm512_set1_ps(mn), ssc = _mm512_set1_ps(scale), stop = _mm512_set1_ps(top);
    memset(counts, 0, sizeof(int32_t) * (size_t)bins);
    int32_t idx[16];
    for (int i = 0; i < n; i += 16) {
        __mmask16 in = tail16(n - i);
        _mm512_storeu_si512(idx, bins16(_mm512_maskz_loadu_ps(in, src + i), smn, ssc, stop));
        for (int l = 0; l < 16 && i + l < n; l++) counts[idx[l]]++;
    }
    int above, b = boundary_bin(counts, bins, *k_, &above);
    int m = 0;   /* gathering in place (src == scratch) is safe: m <= i, and each block is loaded first */
    __m512i vb = _mm512_set1_epi32(b);
    for (int i = 0; i < n; i += 16) {
        __mmask16 in = tail16(n - i);
        __m512 v = _mm512_maskz_loadu_ps(in, src + i);
        __mmask16 hit = _mm512_mask_cmpeq_epi32_mask(in, bins16(v, smn, ssc, stop), vb);
        _mm512_mask_compressstoreu_ps(scratch + m, hit, v);
        m += __builtin_popcount((unsigned)hit);
    }
    *n_ = m; *k_ -= above;
    return 1;
}
#endif

float ck_kth_largest(const float *x, int n, int k, int32_t *counts, int bins, float *scratch) {
    /* Each round keeps only the bin that holds the k-th value; when logits cluster (a few outliers
       stretch the range), one bin can still hold thousands, so the histogram is redone on it. */
    int (*round_fn)(const float *, int *, int *, int32_t *, int, float *, float *) = kth_round;
#ifdef CK_X86
    if (ck_avx512_enabled && has_avx512()) round_fn = kth_round_avx512;
#endif
    const float *src = x;
    for (int round = 0; round < 4 && n > 64; round++) {
        float equal = 0;
        int r = round_fn(src, &n, &k, counts, bins, scratch, &equal);
        if (r == 2) return equal;
        if (r == 0) break;
        src = scratch;
    }
    if (src != scratch) memcpy(scratch, src, sizeof(float) * (size_t)n);
    return quickselect_desc(scratch, n, k);
}

/* x[i] = -inf where x[i] < t (top-k's cut), branch-free. */
void ck_cut_below(float *x, int n, float t) {
    for (int i = 0; i < n; i++) x[i] = x[i] < t ? -INFINITY : x[i];
}

/* One multinomial draw from non-negative weights: the first index whose running sum (in double,
   index order) exceeds u * total. Only the positive weights are visited: after top-k or top-p
   most of a large vocabulary is exactly 0, and skipping a 0 leaves both sums bit for bit the
   same. `live` is scratch for n indices. With no positive weight the answer is 0. */
int ck_draw(const float *w, int n, double u, int32_t *live) {
    int m = 0, i = 0;
#ifdef CK_X86
    if (ck_avx512_enabled && has_avx512()) m = positive_indices_avx512(w, n, live, &i);
#endif
    for (; i < n; i++) if (w[i] > 0) live[m++] = i;
    double total = 0;
    for (int j = 0; j < m; j++) total += (double)w[live[j]];
    double target = u * total, acc = 0;
    int last = 0;
    for (int j = 0; j < m; j++) {
        acc += (double)w[live[j]]; last = live[j];
        if (acc > target) return last;
    }
    return last;
}
