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

/* ------------------------------------------------------------------ INT8 convolution (VQ decoder)
   Decoder convolutions have many output pixels (M up to 65536 per image) and small weights
   (<= 2.4 MB), the opposite of the decode-pass Linears above: here a weight tile stays in L1 while
   the packed activations of a few pixel groups stay in L2, and each vpdpbusd does 16 pixels x 4
   K values for one output channel (pixels in the lanes, weights broadcast). The unsigned operand of
   vpdpbusd is the activation, so activations are UINT8 with a zero point and weights signed INT8,
   and the instruction does not saturate: the int32 sums are exact. */

#ifdef QK_X86
__attribute__((target("avx512f,avx512bw,avx512vl"))) static void conv_quantize_avx512(const float *x, size_t count, float inv_scale,
                                                                                 int zero, uint8_t *q) {
    __m512 vi = _mm512_set1_ps(inv_scale), vz = _mm512_set1_ps((float)zero), v0 = _mm512_setzero_ps(), v255 = _mm512_set1_ps(255.0f);
    size_t i = 0;
    for (; i + 16 <= count; i += 16) {
        __m512 v = _mm512_roundscale_ps(_mm512_mul_ps(_mm512_loadu_ps(x + i), vi), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        v = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(v, vz), v0), v255);
        _mm_storeu_si128((__m128i *)(q + i), _mm512_cvtusepi32_epi8(_mm512_cvtps_epu32(v)));
    }
    for (; i < count; i++) {
        float v = nearbyintf(x[i] * inv_scale) + (float)zero;
        v = v > 0.0f ? v : 0.0f;
        v = v < 255.0f ? v : 255.0f;
        q[i] = (uint8_t)v;
    }
}
#endif

void ck_conv_quantize(const float *x, size_t count, float inv_scale, int zero, uint8_t *q) {
    size_t i = 0;
#ifdef QK_X86
    if (ck_qkernel_level() == 2) {
        conv_quantize_avx512(x, count, inv_scale, zero, q);
        return;
    }
#endif
    for (; i < count; i++) {
        float v = nearbyintf(x[i] * inv_scale) + (float)zero;
        v = v > 0.0f ? v : 0.0f;     /* NaN -> 0, as the vector max */
        v = v < 255.0f ? v : 255.0f;
        q[i] = (uint8_t)v;
    }
}

/* 4 planes x 16 bytes -> 16 pixels x 4 bytes (the cols chunk layout). */
static inline void transpose4x16(const uint8_t *a, const uint8_t *b, const uint8_t *c, const uint8_t *d, uint8_t *out) {
#ifdef QK_X86
    __m128i va = _mm_loadu_si128((const __m128i *)a), vb = _mm_loadu_si128((const __m128i *)b);
    __m128i vc = _mm_loadu_si128((const __m128i *)c), vd = _mm_loadu_si128((const __m128i *)d);
    __m128i ab0 = _mm_unpacklo_epi8(va, vb), ab1 = _mm_unpackhi_epi8(va, vb);
    __m128i cd0 = _mm_unpacklo_epi8(vc, vd), cd1 = _mm_unpackhi_epi8(vc, vd);
    _mm_storeu_si128((__m128i *)out, _mm_unpacklo_epi16(ab0, cd0));
    _mm_storeu_si128((__m128i *)(out + 16), _mm_unpackhi_epi16(ab0, cd0));
    _mm_storeu_si128((__m128i *)(out + 32), _mm_unpacklo_epi16(ab1, cd1));
    _mm_storeu_si128((__m128i *)(out + 48), _mm_unpackhi_epi16(ab1, cd1));
#else
    for (int t = 0; t < 16; t++) { out[4 * t] = a[t]; out[4 * t + 1] = b[t]; out[4 * t + 2] = c[t]; out[4 * t + 3] = d[t]; }
#endif
}

void ck_conv_pack(const uint8_t *q, int C, int H, int W, int k, int zero, int g0, int g1, uint8_t *cols) {
    int pad = k / 2, c4n = C / 4, npix = H * W;
    size_t hw = (size_t)H * W, gbytes = (size_t)k * k * c4n * 64;
    for (int g = g0; g < g1; g++) {
        uint8_t *dst = cols + (size_t)(g - g0) * gbytes;
        int p0 = 16 * g;
        if (p0 + 16 <= npix && p0 % W + 16 <= W) {
            /* The usual case: 16 pixels of one image row; each (ky, kx) is a shifted row of every plane. */
            int y = p0 / W, x0 = p0 % W;
            for (int ky = 0; ky < k; ky++) {
                int sy = y + ky - pad;
                for (int kx = 0; kx < k; kx++) {
                    uint8_t *d = dst + (size_t)(ky * k + kx) * c4n * 64;
                    int sx0 = x0 + kx - pad;
                    if (sy < 0 || sy >= H) { memset(d, zero, (size_t)c4n * 64); continue; }
                    if (sx0 >= 0 && sx0 + 16 <= W) {
                        const uint8_t *src = q + (size_t)sy * W + sx0;
                        for (int c4 = 0; c4 < c4n; c4++) {
                            const uint8_t *s = src + (size_t)4 * c4 * hw;
                            transpose4x16(s, s + hw, s + 2 * hw, s + 3 * hw, d + (size_t)c4 * 64);
                        }
                    } else {
                        for (int c = 0; c < C; c++)
                            for (int t = 0; t < 16; t++) {
                                int sx = sx0 + t;
                                d[(size_t)(c / 4) * 64 + 4 * t + c % 4] = sx >= 0 && sx < W ? q[c * hw + (size_t)sy * W + sx] : (uint8_t)zero;
                            }
                    }
                }
            }
            continue;
        }
        /* Groups that wrap a row (W not a multiple of 16) or run past the image: pixel by pixel. */
        for (int t = 0; t < 16; t++) {
            int p = p0 + t, y = p / W, x = p % W;
            for (int ky = 0; ky < k; ky++)
                for (int kx = 0; kx < k; kx++) {
                    int sy = y + ky - pad, sx = x + kx - pad;
                    int inside = p < npix && sy >= 0 && sy < H && sx >= 0 && sx < W;
                    uint8_t *d = dst + (size_t)(ky * k + kx) * c4n * 64 + 4 * t;
                    for (int c = 0; c < C; c++)
                        d[(size_t)(c / 4) * 64 + c % 4] = p >= npix ? 0 : inside ? q[c * hw + (size_t)sy * W + sx] : (uint8_t)zero;
                }
        }
    }
}

static void conv_gemm_generic(const uint8_t *cols, int g0, int g1, int npix, int K, const int8_t *w, const int32_t *wsum,
                              const float *ws, const float *bias, float sx, int zero, int cout, float *out, int ldo,
                              int accumulate, int32_t *accOut) {
    for (int g = g0; g < g1; g++) {
        const uint8_t *a = cols + (size_t)(g - g0) * K * 16;
        for (int c = 0; c < cout; c++) {
            const int8_t *wr = w + (size_t)c * K;
            float scale = sx * ws[c];
            for (int t = 0; t < 16; t++) {
                int p = 16 * g + t;
                if (p >= npix) break;
                int32_t acc = 0;
                for (int j = 0; j < K / 4; j++)
                    for (int e = 0; e < 4; e++) acc += (int32_t)a[(size_t)j * 64 + 4 * t + e] * wr[4 * j + e];
                acc -= zero * wsum[c];
                float v = (float)acc * scale;
                v = v + bias[c];
                float *o = out + (size_t)c * ldo + p;
                *o = accumulate ? *o + v : v;
                if (accOut) accOut[(size_t)c * ldo + p] = acc;
            }
        }
    }
}

#ifdef QK_X86
#define QC_MC 6   /* output channels per register tile */
#define QC_NP 4   /* 16-pixel groups per register tile: 24 accumulators + 4 activation registers */

QK_INLINE QK_VNNI void conv_tile_vnni(int MC, int NP, const uint8_t *a, size_t gbytes, int K, const int8_t *w,
                                      const int32_t *wsum, const float *ws, const float *bias, float sx, int zero,
                                      int c0, int p0, int npix, float *out, int ldo, int accumulate, int32_t *accOut) {
    __m512i acc[QC_MC][QC_NP];
    for (int c = 0; c < MC; c++) for (int p = 0; p < NP; p++) acc[c][p] = _mm512_setzero_si512();
    for (int j = 0; j < K / 4; j++) {
        __m512i x[QC_NP];
        for (int p = 0; p < NP; p++) x[p] = _mm512_loadu_si512((const void *)(a + p * gbytes + (size_t)j * 64));
        for (int c = 0; c < MC; c++) {
            __m512i wb = _mm512_set1_epi32(load4(w + (size_t)(c0 + c) * K + 4 * j));
            for (int p = 0; p < NP; p++) acc[c][p] = _mm512_dpbusd_epi32(acc[c][p], x[p], wb);
        }
    }
    for (int c = 0; c < MC; c++) {
        int ch = c0 + c;
        __m512i corr = _mm512_set1_epi32(zero * wsum[ch]);
        __m512 scale = _mm512_set1_ps(sx * ws[ch]), b = _mm512_set1_ps(bias[ch]);
        for (int p = 0; p < NP; p++) {
            int px = p0 + 16 * p;
            if (px >= npix) break;
            __mmask16 mask = npix - px >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (npix - px)) - 1);
            __m512i v = _mm512_sub_epi32(acc[c][p], corr);
            __m512 y = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(v), scale), b);
            float *o = out + (size_t)ch * ldo + px;
            if (accumulate) y = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, o), y);
            _mm512_mask_storeu_ps(o, mask, y);
            if (accOut) _mm512_mask_storeu_epi32(accOut + (size_t)ch * ldo + px, mask, v);
        }
    }
}

QK_VNNI static void conv_gemm_vnni(const uint8_t *cols, int g0, int g1, int npix, int K, const int8_t *w, const int32_t *wsum,
                                   const float *ws, const float *bias, float sx, int zero, int cout, float *out, int ldo,
                                   int accumulate, int32_t *accOut) {
    size_t gbytes = (size_t)K * 16;
    /* Channel tiles outside: a tile's weights (<= 6 x K bytes) stay in L1 across the pixel groups,
       whose packed activations (the caller passes a few groups) stay in L2. */
    for (int c0 = 0; c0 < cout; c0 += QC_MC) {
        int mc = cout - c0 < QC_MC ? cout - c0 : QC_MC;
        for (int g = g0; g < g1; g += QC_NP) {
            int np = g1 - g < QC_NP ? g1 - g : QC_NP;
            const uint8_t *a = cols + (size_t)(g - g0) * gbytes;
#define QC_CALL(MC, NP) conv_tile_vnni(MC, NP, a, gbytes, K, w, wsum, ws, bias, sx, zero, c0, 16 * g, npix, out, ldo, accumulate, accOut)
#define QC_NPS(MC) switch (np) { case 1: QC_CALL(MC, 1); break; case 2: QC_CALL(MC, 2); break; case 3: QC_CALL(MC, 3); break; default: QC_CALL(MC, 4); break; }
            switch (mc) {
            case 1: QC_NPS(1) break; case 2: QC_NPS(2) break; case 3: QC_NPS(3) break;
            case 4: QC_NPS(4) break; case 5: QC_NPS(5) break; default: QC_NPS(6) break;
            }
#undef QC_NPS
#undef QC_CALL
        }
    }
}
#endif

void ck_conv_gemm(const uint8_t *cols, int g0, int g1, int npix, int K, const int8_t *w, const int32_t *wsum,
                  const float *ws, const float *bias, float sx, int zero, int cout, float *out, int ldo,
                  int accumulate, int32_t *accOut) {
#ifdef QK_X86
    if (ck_qkernel_level() == 2) { conv_gemm_vnni(cols, g0, g1, npix, K, w, wsum, ws, bias, sx, zero, cout, out, ldo, accumulate, accOut); return; }
#endif
    conv_gemm_generic(cols, g0, g1, npix, K, w, wsum, ws, bias, sx, zero, cout, out, ldo, accumulate, accOut);
}

double ck_sum_abs_diff(const float *a, const float *b, size_t n) {
    double s = 0;
    if (b) for (size_t i = 0; i < n; i++) s += fabsf(a[i] - b[i]);
    else for (size_t i = 0; i < n; i++) s += fabsf(a[i]);
    return s;
}
