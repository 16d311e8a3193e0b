/* W1A8 GEMM (layouts and the identities in qkernels.h). The weights are one sign bit each, so a pass
   streams k/8 bytes per output row, and the arithmetic, not memory, sets the speed. Three paths, all
   computing the same exact int32:
   - AVX-512 with VPOPCNTQ, bit-serial: the activations (INT8 per token, as W8A8) are split into 8 bit
     planes once per call; with the 8 planes of a 64-column word side by side in one zmm, one AND and
     one VPOPCNTQ count all 8 planes of a (weight word, activation row) pair.
   - AVX2 (no vector popcount), byte-wise: 32 sign bits become a 32-byte mask (4 instructions, shared
     by every activation row); per activation row an AND keeps the INT8 activations where the bit is
     set and a VPMADDUBSW by ones adds them in pairs: 3 instructions per 32 columns and row, where
     bit-serial with a nibble-table popcount needs about 8 per 32 columns.
   - portable: bit-serial with __builtin_popcountll. */
#include "qkernels.h"
#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#define W1_X86 1
#endif

#ifdef W1_X86
static int w1_cpu_has_vpopcnt(void) {
    static int cached = -1;
    if (cached < 0) {
        __builtin_cpu_init();
        cached = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                 __builtin_cpu_supports("avx512vpopcntdq");
    }
    return cached;
}
#endif

/* AVX-512 where the CPU has VPOPCNTQ and the integer kernels are not forced below level 2, else AVX2
   at level 1 or above, else portable (ck_qkernel_force; the tests use it to run every path the
   machine has). */
int ck_w1_path(void) {
#ifdef W1_X86
    int level = ck_qkernel_level();
    return level == 2 && w1_cpu_has_vpopcnt() ? 2 : level >= 1 ? 1 : 0;
#else
    return 0;
#endif
}

/* ------------------------------------------------------------------ activation bit planes */

/* Bit b of the 8 bytes of x (byte t = column t) gathered into bits 0..7: after the mask the bits sit
   at 8t; the multiplier moves bit 8t to 56 + t (exponents 56 - 7t), and no two partial products share
   a bit position, so nothing carries. */
static inline uint64_t plane_byte(uint64_t x, int b) {
    return (((x >> b) & 0x0101010101010101ull) * 0x0102040810204080ull) >> 56;
}

static void planes_generic(const int8_t *xq, int m, int k, uint64_t *planes) {
    int words = k / 64;
    for (int i = 0; i < m; i++)
        for (int w = 0; w < words; w++) {
            uint64_t *dst = planes + ((size_t)i * words + w) * 8;
            for (int b = 0; b < 8; b++) dst[b] = 0;
            for (int c = 0; c < 8; c++) {
                uint64_t x;
                memcpy(&x, xq + (size_t)i * k + 64 * w + 8 * c, 8);
                x ^= 0x8080808080808080ull;   /* u = q + 128 is q with its sign bit flipped */
                for (int b = 0; b < 8; b++) dst[b] |= plane_byte(x, b) << (8 * c);
            }
        }
}

#ifdef W1_X86
#define W1_AVX __attribute__((target("avx512f,avx512bw,avx512vl,avx512vpopcntdq")))

/* vpmovb2m takes the top bit of 64 bytes at once: plane 7; doubling the bytes moves the next bit up. */
W1_AVX static void planes_avx512(const int8_t *xq, int m, int k, uint64_t *planes) {
    int words = k / 64;
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    for (int i = 0; i < m; i++)
        for (int w = 0; w < words; w++) {
            uint64_t *dst = planes + ((size_t)i * words + w) * 8;
            __m512i u = _mm512_xor_si512(_mm512_loadu_si512((const void *)(xq + (size_t)i * k + 64 * w)), flip);
            for (int b = 7; b >= 0; b--) {
                dst[b] = (uint64_t)_mm512_movepi8_mask(u);
                u = _mm512_add_epi8(u, u);
            }
        }
}
#endif

void ck_w1_planes(const int8_t *xq, int m, int k, uint64_t *planes) {
#ifdef W1_X86
    int path = ck_w1_path();
    if (path == 2) { planes_avx512(xq, m, k, planes); return; }
    if (path == 1) return;   /* the AVX2 path reads xq itself */
#endif
    planes_generic(xq, m, k, planes);
}

/* ------------------------------------------------------------------ GEMM */

/* acc = sum_p s[j,p] * q[i,p] from S1 = sum over the 1-bits of u (see qkernels.h). */
static inline int32_t w1_acc(int64_t s1, int32_t xsum, int32_t popc) {
    return (int32_t)(2 * s1 - xsum - 256 * (int64_t)popc);
}

static void w1_generic(const uint64_t *planes, const float *sx, const int32_t *xsum, int m, int k,
                       const uint64_t *bits, const int32_t *popc, const float *alpha, int j0, int j1,
                       float *y, int ldy, int32_t *accOut, int ldacc) {
    int words = k / 64;
    for (int j = j0; j < j1; j++) {
        const uint64_t *wr = bits + (size_t)j * words;
        for (int i = 0; i < m; i++) {
            const uint64_t *pr = planes + (size_t)i * words * 8;
            int64_t s1 = 0;
            for (int w = 0; w < words; w++)
                for (int b = 0; b < 8; b++) s1 += (int64_t)__builtin_popcountll(wr[w] & pr[8 * w + b]) << b;
            int32_t acc = w1_acc(s1, xsum[i], popc[j]);
            if (accOut) accOut[(size_t)i * ldacc + j] = acc;
            y[(size_t)i * ldy + j] = (float)acc * (alpha[j] * sx[i]);
        }
    }
}

#ifdef W1_X86
#define W1_INLINE static inline __attribute__((always_inline))
#define W1_MAXMI 8
/* Activation rows per tile: 8 at a time; a remainder is balanced so no tile is tiny (10 = 5+5). */
W1_INLINE int w1_tile_rows(int left) {
    return left <= W1_MAXMI ? left : (left < 2 * W1_MAXMI ? (left + 1) / 2 : W1_MAXMI);
}
/* A tile of 1-8 rows calls CALL(MI) with MI a constant, so each size compiles to its own unrolled loop. */
#define W1_DISPATCH8(CALL) switch (mi) { \
    case 1: CALL(1); break; case 2: CALL(2); break; case 3: CALL(3); break; case 4: CALL(4); break; \
    case 5: CALL(5); break; case 6: CALL(6); break; case 7: CALL(7); break; default: CALL(8); break; }

/* One weight row (the n % 8 rest) against MI activation rows: lane b of acc[r] counts plane b over the whole row,
   weighted by 2^b only once at the end. */
W1_INLINE W1_AVX void w1_tile(int MI, const uint64_t *planes, const float *sx, const int32_t *xsum, int words,
                              const uint64_t *wr, int32_t popc, float alpha, int j, float *y, int ldy, int32_t *accOut, int ldacc) {
    __m512i acc[W1_MAXMI];
    for (int r = 0; r < MI; r++) acc[r] = _mm512_setzero_si512();
    for (int w = 0; w < words; w++) {
        __m512i wv = _mm512_set1_epi64((long long)wr[w]);
        for (int r = 0; r < MI; r++) {
            __m512i p = _mm512_loadu_si512((const void *)(planes + ((size_t)r * words + w) * 8));
            acc[r] = _mm512_add_epi64(acc[r], _mm512_popcnt_epi64(_mm512_and_si512(p, wv)));
        }
    }
    const __m512i shift = _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0);
    for (int r = 0; r < MI; r++) {
        int64_t s1 = _mm512_reduce_add_epi64(_mm512_sllv_epi64(acc[r], shift));
        int32_t a = w1_acc(s1, xsum[r], popc);
        if (accOut) accOut[(size_t)r * ldacc + j] = a;
        y[(size_t)r * ldy + j] = (float)a * (alpha * sx[r]);
    }
}

/* Lane r of the result = the sum of the 8 lanes of v[r] (three rounds of pairwise adds). */
W1_INLINE W1_AVX __m512i w1_reduce8(const __m512i *v) {
    __m512i p[4];
    for (int t = 0; t < 4; t++)   /* [a0+a1, b0+b1, a2+a3, b2+b3, ...] */
        p[t] = _mm512_add_epi64(_mm512_unpacklo_epi64(v[2 * t], v[2 * t + 1]), _mm512_unpackhi_epi64(v[2 * t], v[2 * t + 1]));
    __m512i q0 = _mm512_add_epi64(_mm512_shuffle_i64x2(p[0], p[1], _MM_SHUFFLE(2, 0, 2, 0)), _mm512_shuffle_i64x2(p[0], p[1], _MM_SHUFFLE(3, 1, 3, 1)));
    __m512i q1 = _mm512_add_epi64(_mm512_shuffle_i64x2(p[2], p[3], _MM_SHUFFLE(2, 0, 2, 0)), _mm512_shuffle_i64x2(p[2], p[3], _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm512_add_epi64(_mm512_shuffle_i64x2(q0, q1, _MM_SHUFFLE(2, 0, 2, 0)), _mm512_shuffle_i64x2(q0, q1, _MM_SHUFFLE(3, 1, 3, 1)));
}

#define W1_TM 3   /* activation rows per 8-weight-row tile: 24 accumulators + 3 plane registers */

/* Weight rows j0..j0+7 against MI activation rows: each plane vector loaded once serves 8 weight
   rows, and the 8 outputs of an activation row are reduced and stored together. */
W1_INLINE W1_AVX void w1_tile8(int MI, const uint64_t *planes, const float *sx, const int32_t *xsum, int words,
                               const uint64_t *wr, const int32_t *popc, const float *alpha, int j0,
                               float *y, int ldy, int32_t *accOut, int ldacc) {
    __m512i acc[W1_TM][8];
    for (int r = 0; r < MI; r++) for (int c = 0; c < 8; c++) acc[r][c] = _mm512_setzero_si512();
    for (int w = 0; w < words; w++) {
        __m512i p[W1_TM];
        for (int r = 0; r < MI; r++) p[r] = _mm512_loadu_si512((const void *)(planes + ((size_t)r * words + w) * 8));
        for (int c = 0; c < 8; c++) {
            __m512i wv = _mm512_set1_epi64((long long)wr[(size_t)c * words + w]);
            for (int r = 0; r < MI; r++) acc[r][c] = _mm512_add_epi64(acc[r][c], _mm512_popcnt_epi64(_mm512_and_si512(p[r], wv)));
        }
    }
    const __m512i shift = _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0);
    __m256i pc256 = _mm256_slli_epi32(_mm256_loadu_si256((const __m256i *)(popc + j0)), 8);
    __m256 al = _mm256_loadu_ps(alpha + j0);
    for (int r = 0; r < MI; r++) {
        for (int c = 0; c < 8; c++) acc[r][c] = _mm512_sllv_epi64(acc[r][c], shift);
        __m256i s1 = _mm512_cvtepi64_epi32(w1_reduce8(acc[r]));   /* S1 <= 255 k: fits int32 */
        __m256i a = _mm256_sub_epi32(_mm256_sub_epi32(_mm256_add_epi32(s1, s1), _mm256_set1_epi32(xsum[r])), pc256);
        _mm256_storeu_ps(y + (size_t)r * ldy + j0, _mm256_mul_ps(_mm256_cvtepi32_ps(a), _mm256_mul_ps(al, _mm256_set1_ps(sx[r]))));
        if (accOut) _mm256_storeu_si256((__m256i *)(accOut + (size_t)r * ldacc + j0), a);
    }
}

/* Weight rows outside (8 at a time, the rest one by one), activation rows inside: each weight row is
   read from memory once per call and stays in L1 while every tile of activation rows (their planes:
   m*k bytes, in L1/L2) passes over it. */
W1_AVX static void w1_avx512(const uint64_t *planes, const float *sx, const int32_t *xsum, int m, int k,
                             const uint64_t *bits, const int32_t *popc, const float *alpha, int j0, int j1,
                             float *y, int ldy, int32_t *accOut, int ldacc) {
    int words = k / 64, j = j0;
    for (; j + 8 <= j1; j += 8) {
        const uint64_t *wr = bits + (size_t)j * words;
        for (int i = 0; i < m;) {
            int left = m - i, mi = left <= W1_TM ? left : left == 4 ? 2 : W1_TM;   /* 4 = 2+2, 5 = 3+2, ... */
#define W1CALL8(MI) w1_tile8(MI, planes + (size_t)i * words * 8, sx + i, xsum + i, words, wr, popc, alpha, j, \
                             y + (size_t)i * ldy, ldy, accOut ? accOut + (size_t)i * ldacc : 0, ldacc)
            switch (mi) { case 1: W1CALL8(1); break; case 2: W1CALL8(2); break; default: W1CALL8(3); break; }
#undef W1CALL8
            i += mi;
        }
    }
    for (; j < j1; j++) {
        const uint64_t *wr = bits + (size_t)j * words;
        for (int i = 0; i < m;) {
            int mi = w1_tile_rows(m - i);
#define W1CALL(MI) w1_tile(MI, planes + (size_t)i * words * 8, sx + i, xsum + i, words, wr, popc[j], alpha[j], j, \
                           y + (size_t)i * ldy, ldy, accOut ? accOut + (size_t)i * ldacc : 0, ldacc)
            W1_DISPATCH8(W1CALL)
#undef W1CALL
            i += mi;
        }
    }
}
#endif

#ifdef W1_X86
#define W1_AVX2 __attribute__((target("avx2,fma")))
/* 32-column chunks summed in int16 lanes before they are widened: a lane gains two activations of
   |q| <= 127 per chunk, and 128 * 254 = 32512 < 32767. */
#define W1_KB 128

W1_INLINE W1_AVX2 int32_t w1_hsum_avx2(__m256i v) {
    __m128i t = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0x4E));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0xB1));
    return _mm_cvtsi128_si32(t);
}

/* One weight row against MI activation rows. S[r] = sum of q[r, p] over the set bits p of the row;
   acc = 2 S - xsum (the +1 columns count once, the -1 columns are xsum - S). */
W1_INLINE W1_AVX2 void w1_row_avx2(int MI, const int8_t *xq, const float *sx, const int32_t *xsum, int k,
                                   const uint64_t *wr, float alpha, int j, float *y, int ldy, int32_t *accOut, int ldacc) {
    /* byte t of the mask <- bit t of 32: broadcast the 4 bytes, route byte t/8 to byte t, test bit t%8 */
    const __m256i route = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                           2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ull);
    const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
    const uint8_t *wb = (const uint8_t *)wr;
    int32_t S[W1_MAXMI] = {0};
    int chunks = k / 32;
    for (int c0 = 0; c0 < chunks; c0 += W1_KB) {
        int c1 = c0 + W1_KB < chunks ? c0 + W1_KB : chunks;
        __m256i acc[W1_MAXMI];
        for (int r = 0; r < MI; r++) acc[r] = _mm256_setzero_si256();
        for (int c = c0; c < c1; c++) {
            uint32_t b32;
            memcpy(&b32, wb + 4 * c, 4);
            __m256i mask = _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_shuffle_epi8(_mm256_set1_epi32((int)b32), route), bit), bit);
            for (int r = 0; r < MI; r++) {
                __m256i q = _mm256_and_si256(mask, _mm256_loadu_si256((const __m256i *)(xq + (size_t)r * k + 32 * c)));
                acc[r] = _mm256_add_epi16(acc[r], _mm256_maddubs_epi16(ones8, q));
            }
        }
        for (int r = 0; r < MI; r++) S[r] += w1_hsum_avx2(_mm256_madd_epi16(acc[r], ones16));
    }
    for (int r = 0; r < MI; r++) {
        int32_t a = 2 * S[r] - xsum[r];
        if (accOut) accOut[(size_t)r * ldacc + j] = a;
        y[(size_t)r * ldy + j] = (float)a * (alpha * sx[r]);
    }
}

/* Weight rows outside, activation rows inside in tiles of up to 8: a weight row's mask is built once
   per tile, and the activations of all rows (m*k bytes) stay in L1/L2 while the weights stream by. */
W1_AVX2 static void w1_avx2(const int8_t *xq, const float *sx, const int32_t *xsum, int m, int k,
                            const uint64_t *bits, const float *alpha, int j0, int j1,
                            float *y, int ldy, int32_t *accOut, int ldacc) {
    int words = k / 64;
    for (int j = j0; j < j1; j++) {
        const uint64_t *wr = bits + (size_t)j * words;
        for (int i = 0; i < m;) {
            int mi = w1_tile_rows(m - i);
#define W1CALL2(MI) w1_row_avx2(MI, xq + (size_t)i * k, sx + i, xsum + i, k, wr, alpha[j], j, y + (size_t)i * ldy, ldy, \
                                accOut ? accOut + (size_t)i * ldacc : 0, ldacc)
            W1_DISPATCH8(W1CALL2)
#undef W1CALL2
            i += mi;
        }
    }
}
#endif

void ck_qgemm_w1(const int8_t *xq, const uint64_t *planes, const float *sx, const int32_t *xsum, int m, int k,
                 const uint64_t *bits, const int32_t *popc, const float *alpha, int j0, int j1,
                 float *y, int ldy, int32_t *accOut, int ldacc) {
#ifdef W1_X86
    int path = ck_w1_path();
    if (path == 2) { w1_avx512(planes, sx, xsum, m, k, bits, popc, alpha, j0, j1, y, ldy, accOut, ldacc); return; }
    if (path == 1) { w1_avx2(xq, sx, xsum, m, k, bits, alpha, j0, j1, y, ldy, accOut, ldacc); return; }
#endif
    w1_generic(planes, sx, xsum, m, k, bits, popc, alpha, j0, j1, y, ldy, accOut, ldacc);
}
