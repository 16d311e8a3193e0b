/* Helpers shared by the kernel files of this module (not part of the Swift-visible API). */
#ifndef CKINTERNAL_H
#define CKINTERNAL_H
#include <stdint.h>
#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#define CK_X86 1
#endif

/* IEEE half -> float, exactly (portable; the SIMD paths use F16C). */
static inline float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
    if (exp == 0) {
        if (mant == 0) bits = sign;
        else { /* subnormal: normalise */
            exp = 127 - 15 + 1;
            while (!(mant & 0x400)) { mant <<= 1; exp--; }
            mant &= 0x3ff;
            bits = sign | (exp << 23) | (mant << 13);
        }
    } else if (exp == 31) bits = sign | 0x7f800000u | (mant << 13);
    else bits = sign | ((exp - 15 + 127) << 23) | (mant << 13);
    float f; memcpy(&f, &bits, 4); return f;
}

#ifdef CK_X86
/* Kernels compiled for AVX2 + FMA (+ F16C), picked at run time where the CPU has them. */
#define CK_AVX2 __attribute__((target("avx2,fma,f16c")))
/* Whether the CPU has AVX-512F (with AVX2/FMA/F16C); cached. ck_avx512_enabled switches it off. */
int ck_cpu_has_avx512(void);
#define has_avx512 ck_cpu_has_avx512
#define CK_AVX512B __attribute__((target("avx512f,avx2,fma,f16c")))

/* Sum of each of 16 vectors, as one vector (lane t = sum of A[t]): a transpose-and-add tree. */
CK_AVX512B static inline __m512 reduce16(__m512 *A) {
    __m512 B[8], C[4];
    for (int i = 0; i < 8; i++) B[i] = _mm512_add_ps(_mm512_unpacklo_ps(A[2 * i], A[2 * i + 1]), _mm512_unpackhi_ps(A[2 * i], A[2 * i + 1]));
    for (int i = 0; i < 4; i++) {
        __m512d x = _mm512_castps_pd(B[2 * i]), y = _mm512_castps_pd(B[2 * i + 1]);
        C[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)), _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
    }
    __m512 e01 = _mm512_add_ps(_mm512_shuffle_f32x4(C[0], C[1], 0x88), _mm512_shuffle_f32x4(C[0], C[1], 0xDD));
    __m512 e23 = _mm512_add_ps(_mm512_shuffle_f32x4(C[2], C[3], 0x88), _mm512_shuffle_f32x4(C[2], C[3], 0xDD));
    return _mm512_add_ps(_mm512_shuffle_f32x4(e01, e23, 0x88), _mm512_shuffle_f32x4(e01, e23, 0xDD));
}
#endif
#endif
