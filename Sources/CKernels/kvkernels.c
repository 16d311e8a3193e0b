/* Compressed KV cache kernels (QuantizedKV.swift): dequantization of a block into a scratch buffer,
   and attention computed straight from the codes. */
#include "ckernels.h"
#include "ckinternal.h"

/* The quantized caches keep codes packed along the channel axis of one row, planar like the
   official ZipCache packing: 4-bit byte j = c[j] | c[j + d/2] << 4; 2-bit byte j = c[j] |
   c[j + d/4] << 2 | c[j + d/2] << 4 | c[j + 3d/4] << 6; 8-bit one code per byte. Attention never
   rebuilds the cache: one block of one head is dequantized into a small scratch buffer, used for
   the scores (or the values) of every query of the group, and overwritten by the next block. */

static void unpack_codes(const uint8_t *src, int bits, int d, float *dst) {
    if (bits == 8) { for (int j = 0; j < d; j++) dst[j] = (float)src[j]; return; }
    if (bits == 4) {
        int h = d / 2;
        for (int j = 0; j < h; j++) { dst[j] = (float)(src[j] & 15); dst[j + h] = (float)(src[j] >> 4); }
        return;
    }
    int q = d / 4;
    for (int j = 0; j < q; j++) {
        uint8_t b = src[j];
        dst[j] = (float)(b & 3); dst[j + q] = (float)((b >> 2) & 3);
        dst[j + 2 * q] = (float)((b >> 4) & 3); dst[j + 3 * q] = (float)(b >> 6);
    }
}

#ifdef CK_X86
/* Codes of channels c..c+7 as floats. They lie in one plane when d/4 (2-bit) or d/2 (4-bit) is a
   multiple of 8, which callers check (head_dim 64 or 128; head_dim 100 takes the portable path). */
/* Planar packing: channel c of a row is in byte c mod (d*bits/8), at bit (c div (d*bits/8)) * bits.
   Returns the byte offset of channel c; *shift and *mask extract it. */
static inline int code_plane(int bits, int d, int c, int *shift, int *mask) {
    int width = bits == 8 ? d : d * bits / 8, plane = c / width;
    *shift = plane * bits; *mask = (1 << bits) - 1;
    return c - plane * width;
}

CK_AVX2 static inline __m256 codes8_avx2(const uint8_t *src, int bits, int d, int c) {
    int shift, mask, at = code_plane(bits, d, c, &shift, &mask);
    __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(src + at)));
    v = _mm256_and_si256(_mm256_srl_epi32(v, _mm_cvtsi32_si128(shift)), _mm256_set1_epi32(mask));
    return _mm256_cvtepi32_ps(v);
}

/* Codes of channels c..c+15 as floats (AVX-512; one plane when d/4 or d/2 is a multiple of 16). */
__attribute__((target("avx512f,avx2,fma,f16c"))) static inline __m512 codes16_avx512(const uint8_t *src, int bits, int d, int c) {
    int shift, mask, at = code_plane(bits, d, c, &shift, &mask);
    __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(src + at)));
    v = _mm512_and_si512(_mm512_srl_epi32(v, _mm_cvtsi32_si128(shift)), _mm512_set1_epi32(mask));
    return _mm512_cvtepi32_ps(v);
}

/* Dequantization with W-lane vectors (8: AVX2, 16: AVX-512). Same arithmetic as the portable loops
   (multiply, then add: no FMA, so every path gives the same floats). */
#define DEFINE_DEQUANT(SUF, TARGET, VEC, W, CODES, LOAD, SET1, ADD, MUL, STORE)                          \
TARGET static void dequant_channel_##SUF(const uint8_t *codes, int bits, int rows, int d, const float *s, \
                                         const float *m, const uint16_t *ids, float *out) {              \
    size_t rb = (size_t)bits * (size_t)d / 8;                                                            \
    for (int r = 0; r < rows; r++) {                                                                     \
        float *o = out + (size_t)(ids ? ids[r] : r) * d;                                                 \
        const uint8_t *src = codes + r * rb;                                                             \
        for (int c = 0; c < d; c += W) STORE(o + c, ADD(MUL(CODES(src, bits, d, c), LOAD(s + c)), LOAD(m + c))); \
    }                                                                                                    \
}                                                                                                        \
TARGET static void dequant_token_##SUF(const uint8_t *codes, int bits, int rows, int d, int group,       \
                                       const uint16_t *params, int paramStride, const float *cs,         \
                                       const uint16_t *ids, float *out) {                                \
    int groups = d / group;                                                                              \
    size_t rb = (size_t)bits * (size_t)d / 8;                                                            \
    for (int r = 0; r < rows; r++) {                                                                     \
        float *o = out + (size_t)(ids ? ids[r] : r) * d;                                                 \
        const uint8_t *src = codes + r * rb;                                                             \
        const uint16_t *p = params + (size_t)r * paramStride;                                            \
        for (int g = 0; g < groups; g++) {                                                               \
            VEC mn = SET1(half_to_float(p[g])), st = SET1(half_to_float(p[groups + g]));                  \
            for (int c = g * group; c < (g + 1) * group; c += W) {                                       \
                VEC x = ADD(MUL(CODES(src, bits, d, c), st), mn);                                        \
                if (cs) x = MUL(x, LOAD(cs + c));                                                        \
                STORE(o + c, x);                                                                         \
            }                                                                                            \
        }                                                                                                \
    }                                                                                                    \
}
DEFINE_DEQUANT(avx2, CK_AVX2, __m256, 8, codes8_avx2, _mm256_loadu_ps, _mm256_set1_ps, _mm256_add_ps, _mm256_mul_ps, _mm256_storeu_ps)
DEFINE_DEQUANT(avx512, __attribute__((target("avx512f,avx2,fma,f16c"))), __m512, 16, codes16_avx512, _mm512_loadu_ps, _mm512_set1_ps, _mm512_add_ps, _mm512_mul_ps, _mm512_storeu_ps)
#endif

/* The AVX-512 path: 16 channels per step in one code plane, groups of whole vectors. */
static int simd512_layout_ok(int bits, int d, int group) {
#ifdef CK_X86
    return ck_avx512_enabled && has_avx512() && d % 64 == 0 && group % 16 == 0 && (bits == 2 || bits == 4 || bits == 8);
#else
    return 0;
#endif
}

static int simd_layout_ok(int bits, int d, int group) {
    return d % 32 == 0 && group % 8 == 0 && (bits == 2 || bits == 4 || bits == 8);
}

void ck_kv_dequant_channel(const uint8_t *codes, int bits, int rows, int d, const uint16_t *mn, const uint16_t *st,
                           const uint16_t *ids, float *out) {
    float m[512], s[512];
    for (int c = 0; c < d; c++) { m[c] = half_to_float(mn[c]); s[c] = half_to_float(st[c]); }
#ifdef CK_X86
    if (simd512_layout_ok(bits, d, 16)) { dequant_channel_avx512(codes, bits, rows, d, s, m, ids, out); return; }
    if (ck_has_avx2_fma() && simd_layout_ok(bits, d, 8)) { dequant_channel_avx2(codes, bits, rows, d, s, m, ids, out); return; }
#endif
    size_t rb = (size_t)bits * (size_t)d / 8;
    for (int r = 0; r < rows; r++) {
        float *o = out + (size_t)(ids ? ids[r] : r) * d;
        unpack_codes(codes + r * rb, bits, d, o);
        for (int c = 0; c < d; c++) o[c] = o[c] * s[c] + m[c];
    }
}

void ck_kv_dequant_token(const uint8_t *codes, int bits, int rows, int d, int group, const uint16_t *params,
                         int paramStride, const uint16_t *chanScale, const uint16_t *ids, float *out) {
    float cs[512];
    if (chanScale) for (int c = 0; c < d; c++) cs[c] = half_to_float(chanScale[c]);
#ifdef CK_X86
    if (simd512_layout_ok(bits, d, group)) {
        dequant_token_avx512(codes, bits, rows, d, group, params, paramStride, chanScale ? cs : NULL, ids, out);
        return;
    }
    if (ck_has_avx2_fma() && simd_layout_ok(bits, d, group)) {
        dequant_token_avx2(codes, bits, rows, d, group, params, paramStride, chanScale ? cs : NULL, ids, out);
        return;
    }
#endif
    int groups = d / group;
    size_t rb = (size_t)bits * (size_t)d / 8;
    for (int r = 0; r < rows; r++) {
        float *o = out + (size_t)(ids ? ids[r] : r) * d;
        const uint16_t *p = params + (size_t)r * paramStride;
        unpack_codes(codes + r * rb, bits, d, o);
        for (int g = 0; g < groups; g++) {
            float mn = half_to_float(p[g]), st = half_to_float(p[groups + g]);
            for (int c = g * group; c < (g + 1) * group; c++) o[c] = o[c] * st + mn;
        }
        if (chanScale) for (int c = 0; c < d; c++) o[c] *= cs[c];
    }
}

/* ------------------------------------------------------------------ attention on the codes */
/* Attention without a dequantized copy of the block (quant-spec 1.7). With channel-wise keys
   k_rc = mn_c + st_c * code_rc, a score is a constant per query and code set plus a dot product with
   the codes:   q . k_r = sum_c q_c mn_c + sum_c (q_c st_c) code_rc.
   With token-wise values v_rc = (mn_rg + st_rg * code_rc) * cs_c (g = the channel's group):
   sum_r p_r v_rc = cs_c * (sum_r p_r mn_rg + sum_r (p_r st_rg) code_rc).
   So a pass unpacks each code once into a register (or a 4 KB tile shared by the queries) and never
   writes or re-reads a float copy of the block: one query per head, the decode-step case, reads
   about half the instructions of dequantize-then-attend. The AVX-512 path covers head_dim 64
   (every LlamaGen GPT but the 3B); ck_kv_fused_fast says when it applies. */

int ck_kv_fused_fast(int d) {
#ifdef CK_X86
    return ck_avx512_enabled && has_avx512() && d == 64;
#else
    (void)d; return 0;
#endif
}

static void scores_channel_generic(const uint8_t *codes, int bits, int rows, int d, const uint16_t *mn, const uint16_t *st,
                                   const uint16_t *ids, int len, const float *q, int nq, float *scores, int ld) {
    float u[512], qs[512];
    size_t rb = (size_t)bits * (size_t)d / 8;
    for (int i = 0; i < nq; i++) {
        const float *qi = q + (size_t)i * d;
        float base = 0;
        for (int c = 0; c < d; c++) { qs[c] = qi[c] * half_to_float(st[c]); base += qi[c] * half_to_float(mn[c]); }
        for (int r = 0; r < rows; r++) {
            int id = ids ? ids[r] : r;
            if (id >= len) continue;
            unpack_codes(codes + r * rb, bits, d, u);
            float acc = 0;
            for (int c = 0; c < d; c++) acc += qs[c] * u[c];
            scores[(size_t)i * ld + id] = base + acc;
        }
    }
}

/* Token-wise keys (int8): k_rc = mn_rg + st_rg * code_rc, so q . k_r = sum_g (mn_rg * qsum_g + st_rg * sum_{c in g} q_c code_rc). */
static void scores_token_generic(const uint8_t *codes, int bits, int rows, int d, int group, const uint16_t *params,
                                 int paramStride, const uint16_t *ids, int len, const float *q, int nq, float *scores, int ld) {
    float u[512], qsum[512];
    int groups = d / group;
    size_t rb = (size_t)bits * (size_t)d / 8;
    for (int i = 0; i < nq; i++) {
        const float *qi = q + (size_t)i * d;
        for (int g = 0; g < groups; g++) { qsum[g] = 0; for (int c = g * group; c < (g + 1) * group; c++) qsum[g] += qi[c]; }
        for (int r = 0; r < rows; r++) {
            int id = ids ? ids[r] : r;
            if (id >= len) continue;
            const uint16_t *par = params + (size_t)r * paramStride;
            unpack_codes(codes + r * rb, bits, d, u);
            float s = 0;
            for (int g = 0; g < groups; g++) {
                float dot = 0;
                for (int c = g * group; c < (g + 1) * group; c++) dot += qi[c] * u[c];
                s += half_to_float(par[g]) * qsum[g] + half_to_float(par[groups + g]) * dot;
            }
            scores[(size_t)i * ld + id] = s;
        }
    }
}

static void values_token_generic(const uint8_t *codes, int bits, int rows, int d, int group, const uint16_t *params,
                                 int paramStride, const uint16_t *chanScale, const uint16_t *ids, int len,
                                 const float *p, int nq, int ldp, float *out) {
    float u[512], acc[512], bsum[512];
    int groups = d / group;
    size_t rb = (size_t)bits * (size_t)d / 8;
    for (int i = 0; i < nq; i++) {
        memset(acc, 0, sizeof(float) * (size_t)d);
        memset(bsum, 0, sizeof(float) * (size_t)groups);
        for (int r = 0; r < rows; r++) {
            int id = ids ? ids[r] : r;
            float pr = id < len ? p[(size_t)i * ldp + id] : 0.0f;
            if (pr == 0.0f) continue;
            const uint16_t *par = params + (size_t)r * paramStride;
            unpack_codes(codes + r * rb, bits, d, u);
            for (int g = 0; g < groups; g++) {
                float w = pr * half_to_float(par[groups + g]);
                bsum[g] += pr * half_to_float(par[g]);
                for (int c = g * group; c < (g + 1) * group; c++) acc[c] += w * u[c];
            }
        }
        for (int c = 0; c < d; c++)
            out[(size_t)i * d + c] += (chanScale ? half_to_float(chanScale[c]) : 1.0f) * (acc[c] + bsum[c / group]);
    }
}

#ifdef CK_X86
#define CK_INLINE __attribute__((always_inline)) static inline
#define FD 64              /* the head_dim of the AVX-512 path */
#define FV (FD / 16)       /* vectors per row */

/* The FV code vectors of one row, in channel order (bits a constant at every call site, so the
   plane arithmetic folds away). */
CK_AVX512B CK_INLINE void row_codes512(const uint8_t *src, int bits, __m512 *u) {
    for (int v = 0; v < FV; v++) u[v] = codes16_avx512(src, bits, FD, 16 * v);
}

/* Unpacks rows r..r+n-1 (n <= 16) of a code set into a 16-row L1 tile (rows past n are zero). */
CK_AVX512B CK_INLINE void codes_tile512(const uint8_t *codes, int bits, int r, int n, float *tile) {
    size_t rb = (size_t)bits * FD / 8;
    for (int t = 0; t < 16; t++) {
        __m512 u[FV];
        if (t < n) row_codes512(codes + (size_t)(r + t) * rb, bits, u);
        else for (int v = 0; v < FV; v++) u[v] = _mm512_setzero_ps();
        for (int v = 0; v < FV; v++) _mm512_store_ps(tile + t * FD + 16 * v, u[v]);
    }
}

/* The 16 dot products of q[FD] with the tile's rows, summed side by side (reduce16). */
CK_AVX512B CK_INLINE __m512 tile_dots512(const float *tile, const float *q) {
    __m512 A[16];
    for (int t = 0; t < 16; t++) {
        A[t] = _mm512_mul_ps(_mm512_loadu_ps(q), _mm512_load_ps(tile + t * FD));
        for (int v = 1; v < FV; v++) A[t] = _mm512_fmadd_ps(_mm512_loadu_ps(q + 16 * v), _mm512_load_ps(tile + t * FD + 16 * v), A[t]);
    }
    return reduce16(A);
}

/* Scores of up to 8 queries (qs = q * st, base = q . mn) against one code set: 16 rows at a time
   are unpacked into an L1 tile, then each query sums its 16 dot products side by side (reduce16). */
CK_AVX512B CK_INLINE void scores_channel512(const uint8_t *codes, int bits, int rows, const float *qs, const float *base, int nq,
                                            const uint16_t *ids, int len, float *scores, int ld) {
    size_t rb = (size_t)bits * FD / 8;
    float tile[16 * FD] __attribute__((aligned(64))), out[16] __attribute__((aligned(64)));
    int r = 0;
    for (; r + 16 <= rows; r += 16) {
        codes_tile512(codes, bits, r, 16, tile);
        for (int i = 0; i < nq; i++) {
            _mm512_store_ps(out, _mm512_add_ps(tile_dots512(tile, qs + i * FD), _mm512_set1_ps(base[i])));
            float *si = scores + (size_t)i * ld;
            for (int t = 0; t < 16; t++) {
                int id = ids ? ids[r + t] : r + t;
                if (id < len) si[id] = out[t];
            }
        }
    }
    for (; r < rows; r++) {   /* the last rows % 16 one at a time */
        int id = ids ? ids[r] : r;
        if (id >= len) continue;
        __m512 u[FV];
        row_codes512(codes + (size_t)r * rb, bits, u);
        for (int i = 0; i < nq; i++) {
            __m512 a = _mm512_mul_ps(_mm512_loadu_ps(qs + i * FD), u[0]);
            for (int v = 1; v < FV; v++) a = _mm512_fmadd_ps(_mm512_loadu_ps(qs + i * FD + 16 * v), u[v], a);
            scores[(size_t)i * ld + id] = base[i] + _mm512_reduce_add_ps(a);
        }
    }
}

CK_AVX512B static void scores_channel512_any(const uint8_t *codes, int bits, int rows, const uint16_t *mn, const uint16_t *st,
                                             const uint16_t *ids, int len, const float *q, int nq, float *scores, int ld) {
    __m512 m[FV], s[FV];
    for (int v = 0; v < FV; v++) {
        m[v] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(mn + 16 * v)));
        s[v] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(st + 16 * v)));
    }
    for (int i0 = 0; i0 < nq; i0 += 8) {   /* 8 queries share each unpacked tile */
        int k = nq - i0 < 8 ? nq - i0 : 8;
        float qs[8 * FD] __attribute__((aligned(64))), base[8];
        for (int i = 0; i < k; i++) {
            const float *qi = q + (size_t)(i0 + i) * FD;
            __m512 b = _mm512_setzero_ps();
            for (int v = 0; v < FV; v++) {
                __m512 x = _mm512_loadu_ps(qi + 16 * v);
                _mm512_store_ps(qs + i * FD + 16 * v, _mm512_mul_ps(x, s[v]));
                b = _mm512_fmadd_ps(x, m[v], b);
            }
            base[i] = _mm512_reduce_add_ps(b);
        }
        float *sc = scores + (size_t)i0 * ld;
        if (bits == 2) scores_channel512(codes, 2, rows, qs, base, k, ids, len, sc, ld);
        else if (bits == 4) scores_channel512(codes, 4, rows, qs, base, k, ids, len, sc, ld);
        else scores_channel512(codes, 8, rows, qs, base, k, ids, len, sc, ld);
    }
}

/* Token-wise keys with one group per row (int8): 16 rows are unpacked into an L1 tile shared by all
   queries; each query's 16 dot products q . code_r are summed side by side (reduce16), then
   score_r = mn_r * sum(q) + st_r * (q . code_r). */
CK_AVX512B static void scores_token512_any(const uint8_t *codes, int bits, int rows, const uint16_t *params, int paramStride,
                                           const uint16_t *ids, int len, const float *q, int nq, float *scores, int ld) {
    float tile[16 * FD] __attribute__((aligned(64))), out[16] __attribute__((aligned(64)));
    for (int r = 0; r < rows; r += 16) {
        int n = rows - r < 16 ? rows - r : 16;
        codes_tile512(codes, bits, r, n, tile);
        for (int i = 0; i < nq; i++) {
            const float *qi = q + (size_t)i * FD;
            _mm512_store_ps(out, tile_dots512(tile, qi));
            __m512 qv = _mm512_loadu_ps(qi);
            for (int v = 1; v < FV; v++) qv = _mm512_add_ps(qv, _mm512_loadu_ps(qi + 16 * v));
            float *si = scores + (size_t)i * ld, qs = _mm512_reduce_add_ps(qv);
            for (int t = 0; t < n; t++) {
                int id = ids ? ids[r + t] : r + t;
                if (id >= len) continue;
                const uint16_t *par = params + (size_t)(r + t) * paramStride;
                si[id] = _cvtsh_ss(par[0]) * qs + _cvtsh_ss(par[1]) * out[t];
            }
        }
    }
}

/* Values of NQ <= 4 queries from one code set with groups of GROUP channels: each row's codes are
   unpacked once into registers and feed NQ x FV FMAs (acc), the min terms go to bsum. */
CK_AVX512B CK_INLINE void values_token512(const uint8_t *codes, int bits, const int GROUP, const int NQ, int rows,
                                          const uint16_t *params, int paramStride, const uint16_t *ids, int len,
                                          const float *p, int ldp, __m512 acc[4][FV], float bsum[4][FV]) {
    const int G = FD / GROUP;
    size_t rb = (size_t)bits * FD / 8;
    for (int i = 0; i < NQ; i++) for (int v = 0; v < FV; v++) { acc[i][v] = _mm512_setzero_ps(); bsum[i][v] = 0; }
    for (int r = 0; r < rows; r++) {
        int id = ids ? ids[r] : r;
        if (id >= len) continue;
        float pr[4];
        int any = 0;
        for (int i = 0; i < NQ; i++) { pr[i] = p[(size_t)i * ldp + id]; any |= pr[i] != 0.0f; }
        if (!any) continue;   /* masked, evicted or SAB-zeroed for every query */
        const uint16_t *par = params + (size_t)r * paramStride;
        __m512 u[FV];
        row_codes512(codes + (size_t)r * rb, bits, u);
        for (int g = 0; g < G; g++) {
            float mn = _cvtsh_ss(par[g]), st = _cvtsh_ss(par[G + g]);
            for (int i = 0; i < NQ; i++) {
                __m512 w = _mm512_set1_ps(pr[i] * st);
                bsum[i][g] += pr[i] * mn;
                for (int v = g * GROUP / 16; v < (g + 1) * GROUP / 16; v++) acc[i][v] = _mm512_fmadd_ps(w, u[v], acc[i][v]);
            }
        }
    }
}

#define VALUES512_CASE(B, GR, N) \
    if (bits == B && group == GR && k == N) { values_token512(codes, B, GR, N, rows, params, paramStride, ids, len, pi, ldp, acc, bsum); goto done; }
#define VALUES512_NQ(B, GR) VALUES512_CASE(B, GR, 1) VALUES512_CASE(B, GR, 2) VALUES512_CASE(B, GR, 3) VALUES512_CASE(B, GR, 4)

CK_AVX512B static void values_token512_any(const uint8_t *codes, int bits, int rows, int group, const uint16_t *params,
                                           int paramStride, const uint16_t *chanScale, const uint16_t *ids, int len,
                                           const float *p, int nq, int ldp, float *out) {
    __m512 cs[FV];
    for (int v = 0; v < FV; v++)
        cs[v] = chanScale ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(chanScale + 16 * v))) : _mm512_set1_ps(1.0f);
    for (int i0 = 0; i0 < nq; i0 += 4) {
        int k = nq - i0 < 4 ? nq - i0 : 4;
        const float *pi = p + (size_t)i0 * ldp;
        __m512 acc[4][FV];
        float bsum[4][FV];
        VALUES512_NQ(2, 64) VALUES512_NQ(4, 64) VALUES512_NQ(8, 64)
        VALUES512_NQ(2, 32) VALUES512_NQ(4, 32) VALUES512_NQ(8, 32)
        VALUES512_NQ(2, 16) VALUES512_NQ(4, 16) VALUES512_NQ(8, 16)
        return;   /* unreachable: ck_kv_values_token checks the layout */
    done:
        for (int i = 0; i < k; i++) {
            float *o = out + (size_t)(i0 + i) * FD;
            for (int v = 0; v < FV; v++) {
                __m512 b = _mm512_set1_ps(bsum[i][v * 16 / group]);
                _mm512_storeu_ps(o + 16 * v, _mm512_fmadd_ps(cs[v], _mm512_add_ps(acc[i][v], b), _mm512_loadu_ps(o + 16 * v)));
            }
        }
    }
}
#endif

void ck_kv_scores_channel(const uint8_t *codes, int bits, int rows, int d, const uint16_t *mn, const uint16_t *st,
                          const uint16_t *ids, int len, const float *q, int nq, float *scores, int ld) {
#ifdef CK_X86
    if (ck_kv_fused_fast(d) && (bits == 2 || bits == 4 || bits == 8)) {
        scores_channel512_any(codes, bits, rows, mn, st, ids, len, q, nq, scores, ld);
        return;
    }
#endif
    scores_channel_generic(codes, bits, rows, d, mn, st, ids, len, q, nq, scores, ld);
}

void ck_kv_scores_token(const uint8_t *codes, int bits, int rows, int d, int group, const uint16_t *params, int paramStride,
                        const uint16_t *ids, int len, const float *q, int nq, float *scores, int ld) {
#ifdef CK_X86
    if (ck_kv_fused_fast(d) && group == d && (bits == 2 || bits == 4 || bits == 8)) {
        scores_token512_any(codes, bits, rows, params, paramStride, ids, len, q, nq, scores, ld);
        return;
    }
#endif
    scores_token_generic(codes, bits, rows, d, group, params, paramStride, ids, len, q, nq, scores, ld);
}

void ck_kv_values_token(const uint8_t *codes, int bits, int rows, int d, int group, const uint16_t *params, int paramStride,
                        const uint16_t *chanScale, const uint16_t *ids, int len, const float *p, int nq, int ldp, float *out) {
#ifdef CK_X86
    if (ck_kv_fused_fast(d) && (bits == 2 || bits == 4 || bits == 8) && (group == 64 || group == 32 || group == 16)) {
        values_token512_any(codes, bits, rows, group, params, paramStride, chanScale, ids, len, p, nq, ldp, out);
        return;
    }
#endif
    values_token_generic(codes, bits, rows, d, group, params, paramStride, chanScale, ids, len, p, nq, ldp, out);
}
