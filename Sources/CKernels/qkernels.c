/* Integer GEMM kernels for quantized Linear weights (layouts in qkernels.h). Decode passes have
   1-30 activation rows and are bound by weight bytes, so every kernel walks the weights once per
   call: for each 16-row block, all activation rows (in register tiles) are updated from the same
   decoded codes while they sit in L1. Results are exact int32 dot products on every path
   (portable C, AVX2, AVX-512 VNNI), so the paths agree bit for bit. */
#include "qkernels.h"
#include <math.h>
#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#define QK_X86 1
#endif

static int forced_level = -1;
void ck_qkernel_force(int level) { forced_level = level; }

static int cpu_level(void) {
#ifdef QK_X86
    static int cached = -1;
    if (cached < 0) {
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
            __builtin_cpu_supports("avx512vnni")) cached = 2;
        else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) cached = 1;
        else cached = 0;
    }
    return cached;
#else
    return 0;
#endif
}

int ck_qkernel_level(void) {
    int best = cpu_level();
    return forced_level >= 0 && forced_level < best ? forced_level : best;
}

static inline int32_t load4(const int8_t *p) { int32_t v; memcpy(&v, p, 4); return v; }

/* ------------------------------------------------------------------ activations */

#ifdef QK_X86
/* The same, 16 columns at a time; identical results (RNE rounding and a true divide are exact). */
__attribute__((target("avx512f,avx512bw,avx512vl"))) static void quantize_row_avx512(const float *xr, int k, float s, int lo, int group,
                                                                                 int8_t *q, int32_t *gsum) {
    __m512 vs = _mm512_set1_ps(s), vlo = _mm512_set1_ps((float)lo), vhi = _mm512_set1_ps(127.0f);
    for (int g = 0; g < k / group; g++) {
        int32_t sum = 0;
        int p = g * group, end = (g + 1) * group;
        for (; p + 16 <= end; p += 16) {
            __m512 v = _mm512_roundscale_ps(_mm512_div_ps(_mm512_loadu_ps(xr + p), vs), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            v = _mm512_min_ps(_mm512_max_ps(v, vlo), vhi);
            __m512i iv = _mm512_cvtps_epi32(v);
            _mm_storeu_si128((__m128i *)(q + p), _mm512_cvtsepi32_epi8(iv));
            sum += _mm512_reduce_add_epi32(iv);
        }
        for (; p < end; p++) {
            float v = nearbyintf(xr[p] / s);
            v = v > (float)lo ? v : (float)lo;
            v = v < 127.0f ? v : 127.0f;
            q[p] = (int8_t)v; sum += (int8_t)v;
        }
        gsum[g] = sum;
    }
}
#endif

void ck_quantize_act(const float *x, int m, int k, int ldx, float static_scale, int lo, int group,
                     int8_t *xq, float *sx, int32_t *gsum) {
    int ng = k / group;
    for (int i = 0; i < m; i++) {
        const float *xr = x + (size_t)i * ldx;
        float s = static_scale;
        if (!(s > 0)) {
            float amax = 0;
            for (int p = 0; p < k; p++) { float a = fabsf(xr[p]); if (a > amax) amax = a; }
            s = (amax > 1e-5f ? amax : 1e-5f) / 127.0f;
        }
        sx[i] = s;
        int8_t *q = xq + (size_t)i * k;
#ifdef QK_X86
        if (ck_qkernel_level() == 2) { quantize_row_avx512(xr, k, s, lo, group, q, gsum + (size_t)i * ng); continue; }
#endif
        for (int g = 0; g < ng; g++) {
            int32_t sum = 0;
            for (int p = g * group; p < (g + 1) * group; p++) {
                float v = nearbyintf(xr[p] / s);      /* RNE in the default rounding mode */
                /* Written so a NaN becomes lo, as the vector max/min do (and the cast stays defined). */
                v = v > (float)lo ? v : (float)lo;
                v = v < 127.0f ? v : 127.0f;
                q[p] = (int8_t)v;
                sum += (int8_t)v;
            }
            gsum[(size_t)i * ng + g] = sum;
        }
    }
}

/* DGQ search step for one row piece (quantizer_helper.searchquant, both phases):
     v = min(max(src[c], lo), hi);  if (clamped) clamped[c] = v;
     q = min(max(RNE(v / s) + z, qlo), qhi);  diff[c] = w[c] - s * (q - z)
   Phase 1 passes the carried-over clamped weight as src and clamped; phase 2 the weight itself. */
#ifdef QK_X86
__attribute__((target("avx512f"))) static int fakequant_avx512(const float *w, const float *src, float *clamped, int n, float lo, float hi,
                                                              float s, float z, float qlo, float qhi, float *diff) {
    __m512 vlo = _mm512_set1_ps(lo), vhi = _mm512_set1_ps(hi), vs = _mm512_set1_ps(s), vz = _mm512_set1_ps(z);
    __m512 vqlo = _mm512_set1_ps(qlo), vqhi = _mm512_set1_ps(qhi);
    int c = 0;
    for (; c + 16 <= n; c += 16) {
        __m512 v = _mm512_min_ps(_mm512_max_ps(_mm512_loadu_ps(src + c), vlo), vhi);
        if (clamped) _mm512_storeu_ps(clamped + c, v);
        __m512 q = _mm512_add_ps(_mm512_roundscale_ps(_mm512_div_ps(v, vs), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), vz);
        q = _mm512_min_ps(_mm512_max_ps(q, vqlo), vqhi);
        _mm512_storeu_ps(diff + c, _mm512_sub_ps(_mm512_loadu_ps(w + c), _mm512_mul_ps(vs, _mm512_sub_ps(q, vz))));
    }
    return c;
}
#endif

void ck_dgq_fakequant(const float *w, const float *src, float *clamped, int n, float lo, float hi,
                      float s, float z, float qlo, float qhi, float *diff) {
    int c = 0;
#ifdef QK_X86
    if (ck_qkernel_level() == 2) c = fakequant_avx512(w, src, clamped, n, lo, hi, s, z, qlo, qhi, diff);
#endif
    for (; c < n; c++) {
        /* max/min written as comparisons in the same order as the vector min(max(.)) */
        float v = src[c] > lo ? src[c] : lo;
        v = v < hi ? v : hi;
        if (clamped) clamped[c] = v;
        float q = nearbyintf(v / s) + z;
        q = q > qlo ? q : qlo;
        q = q < qhi ? q : qhi;
        diff[c] = w[c] - s * (q - z);
    }
}

/* ------------------------------------------------------------------ portable reference */

static void w4_generic(const int8_t *xq, const float *sx, const int32_t *gsum, int m, int k, int group,
                       const uint8_t *packed, const int8_t *S, const int8_t *Z, const float *rowscale, int n,
                       int b0, int b1, float *y, int ldy, int32_t *accOut, int ldacc) {
    int ng = k / group, chunks = k / 8;
    for (int b = b0; b < b1; b++) {
        const uint8_t *wb = packed + (size_t)b * chunks * 64;
        for (int l = 0; l < 16; l++) {
            int j = 16 * b + l;
            if (j >= n) break;
            for (int i = 0; i < m; i++) {
                const int8_t *xr = xq + (size_t)i * k;
                int32_t acc = 0;
                for (int g = 0; g < ng; g++) {
                    int32_t part = 0;
                    for (int c = g * group / 8; c < (g + 1) * group / 8; c++) {
                        const uint8_t *byte = wb + (size_t)c * 64 + 4 * l;
                        for (int t = 0; t < 4; t++) {
                            part += (int32_t)xr[8 * c + t] * (byte[t] & 15);
                            part += (int32_t)xr[8 * c + 4 + t] * (byte[t] >> 4);
                        }
                    }
                    size_t sz = ((size_t)b * ng + g) * 16 + l;
                    acc += (int32_t)S[sz] * (part - (int32_t)Z[sz] * gsum[(size_t)i * ng + g]);
                }
                if (accOut) accOut[(size_t)i * ldacc + j] = acc;
                y[(size_t)i * ldy + j] = (float)acc * (rowscale[j] * sx[i]);
            }
        }
    }
}

static void w8_generic(const int8_t *xq, const float *sx, const int32_t *gsum, int m, int k,
                       const uint8_t *packed, const float *rowscale, int n,
                       int b0, int b1, float *y, int ldy, int32_t *accOut, int ldacc) {
    (void)gsum;
    int chunks = k / 4;
    for (int b = b0; b < b1; b++) {
        const uint8_t *wb = packed + (size_t)b * chunks * 64;
        for (int l = 0; l < 16; l++) {
            int j = 16 * b + l;
            if (j >= n) break;
            for (int i = 0; i < m; i++) {
                const int8_t *xr = xq + (size_t)i * k;
                int32_t acc = 0;
                for (int c = 0; c < chunks; c++)
                    for (int t = 0; t < 4; t++) acc += (int32_t)xr[4 * c + t] * ((int32_t)wb[(size_t)c * 64 + 4 * l + t] - 128);
                if (accOut) accOut[(size_t)i * ldacc + j] = acc;
                y[(size_t)i * ldy + j] = (float)acc * (rowscale[j] * sx[i]);
            }
        }
    }
}

#ifdef QK_X86
/* ------------------------------------------------------------------ AVX-512 VNNI */
#define QK_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")))
#define QK_INLINE static inline __attribute__((always_inline))
#define QK_MAXMI 8   /* activation rows per register tile: 8 group + 8 total accumulators */
#define QK_PREFETCH 1024

/* Epilogue for one 16-row block and MI activation rows: y = float(acc) * (rowscale * sx). */
QK_INLINE QK_VNNI void store16_vnni(int MI, const __m512i *res, const float *sx, const float *rowscale, int j0, int n,
                                    float *y, int ldy, int32_t *accOut, int ldacc) {
    __mmask16 mask = n - j0 >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - j0)) - 1);
    __m512 rs = _mm512_maskz_loadu_ps(mask, rowscale + j0);
    for (int r = 0; r < MI; r++) {
        __m512 alpha = _mm512_mul_ps(rs, _mm512_set1_ps(sx[r]));
        _mm512_mask_storeu_ps(y + (size_t)r * ldy + j0, mask, _mm512_mul_ps(_mm512_cvtepi32_ps(res[r]), alpha));
        if (accOut) _mm512_mask_storeu_epi32(accOut + (size_t)r * ldacc + j0, mask, res[r]);
    }
}

QK_INLINE QK_VNNI void w4_tile_vnni(int MI, const int8_t *xq, const float *sx, const int32_t *gsum, int k, int group,
                                    const uint8_t *wb, const int8_t *Sb, const int8_t *Zb, const float *rowscale,
                                    int j0, int n, float *y, int ldy, int32_t *accOut, int ldacc) {
    int ng = k / group, cpg = group / 8;
    const __m512i nib = _mm512_set1_epi8(15);
    /* Low and high nibbles feed separate accumulators: two independent vpdpbusd chains per row, so
       a single-row (decode) pass is not bound by the instruction's latency. */
    __m512i res[QK_MAXMI], acc[QK_MAXMI], acc2[QK_MAXMI];
    for (int r = 0; r < MI; r++) res[r] = _mm512_setzero_si512();
    for (int g = 0; g < ng; g++) {
        for (int r = 0; r < MI; r++) { acc[r] = _mm512_setzero_si512(); acc2[r] = _mm512_setzero_si512(); }
        const uint8_t *wg = wb + (size_t)g * cpg * 64;
        const int8_t *xg = xq + (size_t)g * group;
        for (int c = 0; c < cpg; c++) {
            _mm_prefetch((const char *)(wg + c * 64 + QK_PREFETCH), _MM_HINT_T0);
            __m512i w = _mm512_loadu_si512((const void *)(wg + c * 64));
            __m512i lo = _mm512_and_si512(w, nib), hi = _mm512_and_si512(_mm512_srli_epi16(w, 4), nib);
            for (int r = 0; r < MI; r++) {
                const int8_t *xp = xg + (size_t)r * k + 8 * c;
                acc[r] = _mm512_dpbusd_epi32(acc[r], lo, _mm512_set1_epi32(load4(xp)));
                acc2[r] = _mm512_dpbusd_epi32(acc2[r], hi, _mm512_set1_epi32(load4(xp + 4)));
            }
        }
        for (int r = 0; r < MI; r++) acc[r] = _mm512_add_epi32(acc[r], acc2[r]);
        __m512i Sv = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(Sb + (size_t)g * 16)));
        __m512i Zv = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(Zb + (size_t)g * 16)));
        for (int r = 0; r < MI; r++) {
            __m512i t = _mm512_sub_epi32(acc[r], _mm512_mullo_epi32(Zv, _mm512_set1_epi32(gsum[(size_t)r * ng + g])));
            res[r] = _mm512_add_epi32(res[r], _mm512_mullo_epi32(Sv, t));
        }
    }
    store16_vnni(MI, res, sx, rowscale, j0, n, y, ldy, accOut, ldacc);
}

QK_INLINE QK_VNNI void w8_tile_vnni(int MI, const int8_t *xq, const float *sx, const int32_t *gsum, int k,
                                    const uint8_t *wb, const float *rowscale,
                                    int j0, int n, float *y, int ldy, int32_t *accOut, int ldacc) {
    __m512i acc[QK_MAXMI];
    for (int r = 0; r < MI; r++) acc[r] = _mm512_setzero_si512();
    for (int c = 0; c < k / 4; c++) {
        _mm_prefetch((const char *)(wb + c * 64 + QK_PREFETCH), _MM_HINT_T0);
        __m512i w = _mm512_loadu_si512((const void *)(wb + c * 64));
        for (int r = 0; r < MI; r++)
            acc[r] = _mm512_dpbusd_epi32(acc[r], w, _mm512_set1_epi32(load4(xq + (size_t)r * k + 4 * c)));
    }
    /* The codes carry +128 (vpdpbusd wants unsigned weights): take 128 * sum(x) back out. */
    for (int r = 0; r < MI; r++) acc[r] = _mm512_sub_epi32(acc[r], _mm512_set1_epi32(128 * gsum[r]));
    store16_vnni(MI, acc, sx, rowscale, j0, n, y, ldy, accOut, ldacc);
}

/* Rows are taken 8 at a time; a remainder is balanced so no tile is tiny (10 = 5+5). */
static inline int tile_rows(int left) { return left <= QK_MAXMI ? left : (left < 2 * QK_MAXMI ? (left + 1) / 2 : QK_MAXMI); }

#define QK_DISPATCH(CALL) switch (mi) { \
    case 1: CALL(1); break; case 2: CALL(2); break; case 3: CALL(3); break; case 4: CALL(4); break; \
    case 5: CALL(5); break; case 6: CALL(6); break; case 7: CALL(7); break; default: CALL(8); break; }

QK_VNNI static void w4_vnni(const int8_t *xq, const float *sx, const int32_t *gsum, int m, int k, int group,
                            const uint8_t *packed, const int8_t *S, const int8_t *Z, const float *rowscale, int n,
                            int b0, int b1, float *y, int ldy, int32_t *accOut, int ldacc) {
    int ng = k / group, chunks = k / 8;
    for (int b = b0; b < b1; b++) {
        const uint8_t *wb = packed + (size_t)b * chunks * 64;
        const int8_t *Sb = S + (size_t)b * ng * 16, *Zb = Z + (size_t)b * ng * 16;
        for (int i = 0; i < m;) {
            int mi = tile_rows(m - i);
#define W4CALL(MI) w4_tile_vnni(MI, xq + (size_t)i * k, sx + i, gsum + (size_t)i * ng, k, group, wb, Sb, Zb, rowscale, \
                                16 * b, n, y + (size_t)i * ldy, ldy, accOut ? accOut + (size_t)i * ldacc : 0, ldacc)
            QK_DISPATCH(W4CALL)
#undef W4CALL
            i += mi;
        }
    }
}

QK_VNNI static void w8_vnni(const int8_t *xq, const float *sx, const int32_t *gsum, int m, int k,
                            const uint8_t *packed, const float *rowscale, int n,
                            int b0, int b1, float *y, int ldy, int32_t *accOut, int ldacc) {
    int chunks = k / 4;
    for (int b = b0; b < b1; b++) {
        const uint8_t *wb = packed + (size_t)b * chunks * 64;
        for (int i = 0; i < m;) {
            int mi = tile_rows(m - i);
#define W8CALL(MI) w8_tile_vnni(MI, xq + (size_t)i * k, sx + i, gsum + i, k, wb, rowscale, 16 * b, n, \
                                y + (size_t)i * ldy, ldy, accOut ? accOut + (size_t)i * ldacc : 0, ldacc)
            QK_DISPATCH(W8CALL)
#undef W8CALL
            i += mi;
        }
    }
}

/* ------------------------------------------------------------------ AVX2 (no VNNI)
   vpmaddubsw multiplies unsigned by signed bytes into int16 pairs, vpmaddwd with ones sums them to
   int32. A ymm holds 8 of the 16 rows of a block, so each block is done in two halves. For W4 the
   pair sums stay below 2*15*128; for W8 the weights are made signed again and the sign moved onto x
   (|w| * sign(x, w), llama.cpp's trick), which is exact because x never is -128 there. */
#define QK_AVX2 __attribute__((target("avx2,fma")))
#define QK_MAXMI2 4

QK_INLINE QK_AVX2 void store8_avx2(int MI, const __m256i *res, const float *sx, const float *rowscale, int j0, int n,
                                   float *y, int ldy, int32_t *accOut, int ldacc) {
    for (int r = 0; r < MI; r++) {
        int32_t a[8]; float f[8];
        _mm256_storeu_si256((__m256i *)a, res[r]);
        for (int l = 0; l < 8 && j0 + l < n; l++) {
            f[l] = (float)a[l] * (rowscale[j0 + l] * sx[r]);
            y[(size_t)r * ldy + j0 + l] = f[l];
            if (accOut) accOut[(size_t)r * ldacc + j0 + l] = a[l];
        }
    }
}

QK_INLINE QK_AVX2 void w4_tile_avx2(int MI, int half, const int8_t *xq, const float *sx, const int32_t *gsum, int k, int group,
                                    const uint8_t *wb, const int8_t *Sb, const int8_t *Zb, const float *rowscale,
                                    int j0, int n, float *y, int ldy, int32_t *accOut, int ldacc) {
    int ng = k / group, cpg = group / 8;
    const __m256i nib = _mm256_set1_epi8(15), ones = _mm256_set1_epi16(1);
    __m256i res[QK_MAXMI2], acc[QK_MAXMI2];
    for (int r = 0; r < MI; r++) res[r] = _mm256_setzero_si256();
    for (int g = 0; g < ng; g++) {
        for (int r = 0; r < MI; r++) acc[r] = _mm256_setzero_si256();
        const uint8_t *wg = wb + (size_t)g * cpg * 64 + 32 * half;
        const int8_t *xg = xq + (size_t)g * group;
        for (int c = 0; c < cpg; c++) {
            __m256i w = _mm256_loadu_si256((const __m256i *)(wg + c * 64));
            __m256i lo = _mm256_and_si256(w, nib), hi = _mm256_and_si256(_mm256_srli_epi16(w, 4), nib);
            for (int r = 0; r < MI; r++) {
                const int8_t *xp = xg + (size_t)r * k + 8 * c;
                __m256i p0 = _mm256_maddubs_epi16(lo, _mm256_set1_epi32(load4(xp)));
                __m256i p1 = _mm256_maddubs_epi16(hi, _mm256_set1_epi32(load4(xp + 4)));
                acc[r] = _mm256_add_epi32(acc[r], _mm256_madd_epi16(_mm256_add_epi16(p0, p1), ones));
            }
        }
        __m256i Sv = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(Sb + (size_t)g * 16 + 8 * half)));
        __m256i Zv = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(Zb + (size_t)g * 16 + 8 * half)));
        for (int r = 0; r < MI; r++) {
            __m256i t = _mm256_sub_epi32(acc[r], _mm256_mullo_epi32(Zv, _mm256_set1_epi32(gsum[(size_t)r * ng + g])));
            res[r] = _mm256_add_epi32(res[r], _mm256_mullo_epi32(Sv, t));
        }
    }
    store8_avx2(MI, res, sx, rowscale, j0 + 8 * half, n, y, ldy, accOut, ldacc);
}

QK_INLINE QK_AVX2 void w8_tile_avx2(int MI, int half, const int8_t *xq, const float *sx, int k,
                                    const uint8_t *wb, const float *rowscale,
                                    int j0, int n, float *y, int ldy, int32_t *accOut, int ldacc) {
    const __m256i bias = _mm256_set1_epi8((char)0x80), ones = _mm256_set1_epi16(1);
    __m256i acc[QK_MAXMI2];
    for (int r = 0; r < MI; r++) acc[r] = _mm256_setzero_si256();
    for (int c = 0; c < k / 4; c++) {
        __m256i w = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(wb + c * 64 + 32 * half)), bias);
        __m256i aw = _mm256_abs_epi8(w);
        for (int r = 0; r < MI; r++) {
            __m256i xv = _mm256_sign_epi8(_mm256_set1_epi32(load4(xq + (size_t)r * k + 4 * c)), w);
            acc[r] = _mm256_add_epi32(acc[r], _mm256_madd_epi16(_mm256_maddubs_epi16(aw, xv), ones));
        }
    }
    store8_avx2(MI, acc, sx, rowscale, j0 + 8 * half, n, y, ldy, accOut, ldacc);
}

static inline int tile_rows2(int left) { return left <= QK_MAXMI2 ? left : (left < 2 * QK_MAXMI2 ? (left + 1) / 2 : QK_MAXMI2); }
#define QK_DISPATCH2(CALL) switch (mi) { case 1: CALL(1); break; case 2: CALL(2); break; case 3: CALL(3); break; default: CALL(4); break; }

QK_AVX2 static void w4_avx2(const int8_t *xq, const float *sx, const int32_t *gsum, int m, int k, int group,
                            const uint8_t *packed, const int8_t *S, const int8_t *Z, const float *rowscale, int n,
                            int b0, int b1, float *y, int ldy, int32_t *accOut, int ldacc) {
    int ng = k / group, chunks = k / 8;
    for (int b = b0; b < b1; b++) {
        const uint8_t *wb = packed + (size_t)b * chunks * 64;
        const int8_t *Sb = S + (size_t)b * ng * 16, *Zb = Z + (size_t)b * ng * 16;
        for (int half = 0; half < 2 && 16 * b + 8 * half < n; half++)
            for (int i = 0; i < m;) {
                int mi = tile_rows2(m - i);
#define W4CALL2(MI) w4_tile_avx2(MI, half, xq + (size_t)i * k, sx + i, gsum + (size_t)i * ng, k, group, wb, Sb, Zb, rowscale, \
                                 16 * b, n, y + (size_t)i * ldy, ldy, accOut ? accOut + (size_t)i * ldacc : 0, ldacc)
                QK_DISPATCH2(W4CALL2)
#undef W4CALL2
                i += mi;
            }
    }
}

QK_AVX2 static void w8_avx2(const int8_t *xq, const float *sx, int m, int k,
                            const uint8_t *packed, const float *rowscale, int n,
                            int b0, int b1, float *y, int ldy, int32_t *accOut, int ldacc) {
    int chunks = k / 4;
    for (int b = b0; b < b1; b++) {
        const uint8_t *wb = packed + (size_t)b * chunks * 64;
        for (int half = 0; half < 2 && 16 * b + 8 * half < n; half++)
            for (int i = 0; i < m;) {
                int mi = tile_rows2(m - i);
#define W8CALL2(MI) w8_tile_avx2(MI, half, xq + (size_t)i * k, sx + i, k, wb, rowscale, 16 * b, n, \
                                 y + (size_t)i * ldy, ldy, accOut ? accOut + (size_t)i * ldacc : 0, ldacc)
                QK_DISPATCH2(W8CALL2)
#undef W8CALL2
                i += mi;
            }
    }
}
#endif

void ck_qgemm_w4(const int8_t *xq, const float *sx, const int32_t *gsum, int m, int k, int group,
                 const uint8_t *packed, const int8_t *S, const int8_t *Z, const float *rowscale, int n,
                 int b0, int b1, float *y, int ldy, int32_t *accOut, int ldacc) {
#ifdef QK_X86
    int level = ck_qkernel_level();
    if (level == 2) { w4_vnni(xq, sx, gsum, m, k, group, packed, S, Z, rowscale, n, b0, b1, y, ldy, accOut, ldacc); return; }
    if (level == 1) { w4_avx2(xq, sx, gsum, m, k, group, packed, S, Z, rowscale, n, b0, b1, y, ldy, accOut, ldacc); return; }
#endif
    w4_generic(xq, sx, gsum, m, k, group, packed, S, Z, rowscale, n, b0, b1, y, ldy, accOut, ldacc);
}

void ck_qgemm_w8(const int8_t *xq, const float *sx, const int32_t *gsum, int m, int k,
                 const uint8_t *packed, const float *rowscale, int n,
                 int b0, int b1, float *y, int ldy, int32_t *accOut, int ldacc) {
#ifdef QK_X86
    int level = ck_qkernel_level();
    if (level == 2) { w8_vnni(xq, sx, gsum, m, k, packed, rowscale, n, b0, b1, y, ldy, accOut, ldacc); return; }
    if (level == 1) { w8_avx2(xq, sx, m, k, packed, rowscale, n, b0, b1, y, ldy, accOut, ldacc); return; }
#endif
    w8_generic(xq, sx, gsum, m, k, packed, rowscale, n, b0, b1, y, ldy, accOut, ldacc);
}
