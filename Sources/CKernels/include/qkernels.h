#ifndef QKERNELS_H
#define QKERNELS_H
#include <stddef.h>
#include <stdint.h>

/* Integer GEMM for quantized Linear weights (qkernels.c): int8 activations x integer weights,
   int32 accumulation, one float rescale per output. Weights are re-laid-out once at load time in
   blocks of 16 output rows (the 16 int32 lanes of a 512-bit register):

   W4 (DGQ A8W4): packed[block][k/8][64 bytes]; byte 4*l + t of a 64-byte chunk holds, for row
     16*block + l, the 4-bit code of column k0+t in its low nibble and of column k0+4+t in its high
     nibble. S[block][group][16] and Z[block][group][16] are the integer group scale and zero point.
     Effective int8 weight: w8 = S * (q - Z), always within [-127, 127].
   W8 (per-channel W8A8): packed[block][k/4][64 bytes]; byte 4*l + t = w8[16*block + l][k0 + t] + 128.

   Rows past n are padding (codes 0, S 1, Z 0, rowscale 0). k must be a multiple of 8 (W4) or 4 (W8),
   and group a multiple of 8 dividing k. */

/* Which integer kernels run: 2 = AVX-512 VNNI, 1 = AVX2, 0 = portable C. ck_qkernel_level() is the
   best this CPU has; ck_qkernel_force(-1) restores automatic choice (tests force the lower levels). */
int ck_qkernel_level(void);
void ck_qkernel_force(int level);

/* Activation quantization, one row at a time: if static_scale > 0 every row uses it, else row i uses
   sx[i] = max(max_p |x[i,p]|, 1e-5) / 127. xq = clamp(RNE(x / sx), lo, 127) with a true divide
   (lo = -128 as the DGQ kernel path, or -127). gsum[i*(k/group) + g] = sum of xq over group g. */
void ck_quantize_act(const float *x, int m, int k, int ldx, float static_scale, int lo, int group,
                     int8_t *xq, float *sx, int32_t *gsum);

/* y[i*ldy + j] = (float)acc[i][j] * (rowscale[j] * sx[i])  for i < m, j in [16*b0, min(16*b1, n)), with
   W4: acc[i][j] = sum_g S[j,g] * (sum_{p in g} xq[i,p] * q[j,p] - Z[j,g] * gsum[i,g])  (= sum_p xq * w8, exact)
   W8: acc[i][j] = sum_p xq[i,p] * w8[j,p]                                            (gsum has group = k)
   If accOut is not NULL the int32 accumulators are stored there too (accOut[i*ldacc + j]; for tests). */
void ck_qgemm_w4(const int8_t *xq, const float *sx, const int32_t *gsum, int m, int k, int group,
                 const uint8_t *packed, const int8_t *S, const int8_t *Z, const float *rowscale, int n,
                 int b0, int b1, float *y, int ldy, int32_t *accOut, int ldacc);
void ck_qgemm_w8(const int8_t *xq, const float *sx, const int32_t *gsum, int m, int k,
                 const uint8_t *packed, const float *rowscale, int n,
                 int b0, int b1, float *y, int ldy, int32_t *accOut, int ldacc);
/* ------------------------------------------------------------------ W1A8 (binarized weights, w1kernels.c)
   Weight (j, p) = alpha[j] * s[j,p] with s = +1 where bit p of row j is set, -1 where it is clear.
   bits: row j is k/64 uint64 words at bits + j*(k/64), bit t of word w = column 64w + t (the file's
   U8 [n, k/8] bytes read as little-endian words). popc[j] = number of 1-bits of row j. k % 64 == 0.
   Activations are the W8A8 ones (xq in [-127, 127], per-token sx, xsum[i] = sum_p xq[i,p]).
   With u = q + 128 in [0, 255] split into planes u = sum_b 2^b u_b, and S1 = sum over the 1-bits
   of u = sum_b 2^b popcount(bits & plane_b):
     acc[i][j] = sum_p s[j,p] q[i,p] = 2*sum_{1-bits} q - sum q = 2*S1 - xsum[i] - 256*popc[j]   (exact)
   planes[(i*(k/64) + w)*8 + b] = plane b of u over columns 64w..64w+63 of row i (m*k bytes). */

/* The path ck_qgemm_w1/ck_w1_planes take: 2 = AVX-512 VPOPCNTQ (CPU support and ck_qkernel_level() == 2),
   1 = AVX2 byte masks (ck_qkernel_level() >= 1), 0 = portable (__builtin_popcountll); all give
   identical results. The AVX2 path reads xq (acc = 2 * sum of q over the 1-bits - xsum) and no planes:
   on it ck_w1_planes writes nothing. */
int ck_w1_path(void);
void ck_w1_planes(const int8_t *xq, int m, int k, uint64_t *planes);
/* y[i*ldy + j] = (float)acc[i][j] * (alpha[j] * sx[i]) for i < m, j in [j0, j1); accOut as ck_qgemm_w8.
   xq [m, k] in [-127, 127] (the AVX2 path's int16 sums rely on it); planes from ck_w1_planes(xq). */
void ck_qgemm_w1(const int8_t *xq, const uint64_t *planes, const float *sx, const int32_t *xsum, int m, int k,
                 const uint64_t *bits, const int32_t *popc, const float *alpha, int j0, int j1,
                 float *y, int ldy, int32_t *accOut, int ldacc);

/* One DGQ search candidate over n weights (see qkernels.c); used by DGQ.search on both phases. */
void ck_dgq_fakequant(const float *w, const float *src, float *clamped, int n, float lo, float hi,
                      float s, float z, float qlo, float qhi, float *diff);
/* ------------------------------------------------------------------ INT8 convolution (VQ decoder)
   Activations UINT8 with a per-tensor zero point (x ~ sx * (q - zero)), weights INT8 per output
   channel (w ~ ws[c] * w8). Output pixels sit in the vector lanes (16 per zmm) and the weights are
   broadcast, so the output comes out in the [Cout, H*W] layout with no transpose.

   K order is (ky, kx, c) with c fastest; C must be a multiple of 4. The packed activations ("cols")
   for groups of 16 output pixels (raster index p = 16*g + t) are
     cols[g - g0][K/4][16][4]: byte 4*t + e of chunk j = q[c][y+ky-k/2][x+kx-k/2], with 4*j + e the K index
   of (ky, kx, c), and `zero` outside the image (padding is a real 0). Pixels past H*W are zero. */

/* q[i] = clamp(RNE(x[i] * inv_scale) + zero, 0, 255) for i < count. */
void ck_conv_quantize(const float *x, size_t count, float inv_scale, int zero, uint8_t *q);

/* im2col of the quantized planes q[C][H][W] for pixel groups [g0, g1) into cols (layout above). */
void ck_conv_pack(const uint8_t *q, int C, int H, int W, int k, int zero, int g0, int g1, uint8_t *cols);

/* For pixel groups [g0, g1) and every output channel c < cout (p < H*W):
     acc = sum_K cols * w[c*K + K index] - zero * wsum[c]     (exact int32; wsum[c] = sum of w row c)
     out[c*ldo + p] = (accumulate ? out[..] : 0) + (float)acc * (sx * ws[c]) + bias[c]
   w is [cout][K] in the K order above. accOut (tests; may be NULL) gets acc at [c*ldo + p]. */
void ck_conv_gemm(const uint8_t *cols, int g0, int g1, int npix, int K, const int8_t *w, const int32_t *wsum,
                  const float *ws, const float *bias, float sx, int zero, int cout, float *out, int ldo,
                  int accumulate, int32_t *accOut);

/* sum |a[i] - b[i]| (b NULL: sum |a[i]|) in double: the calibration's MAE, called ~10^3 times per decoder. */
double ck_sum_abs_diff(const float *a, const float *b, size_t n);
#endif
