#ifndef CKERNELS_H
#define CKERNELS_H
#include <stddef.h>
#include <stdint.h>

/* 1 when this CPU has AVX2 and FMA (the fast paths below are chosen at run time; the
   portable fallbacks give the same results up to rounding). */
int ck_has_avx2_fma(void);
/* 1 (default): use the AVX-512 kernels where the CPU has AVX-512F; 0 forces AVX2 (for comparisons). */
extern int ck_avx512_enabled;
/* 1 (default): use the AVX2 kernels where the CPU has them; 0 (with ck_avx512_enabled 0) forces the
   portable C loops (tests run every path the CPU has). */
extern int ck_avx2_enabled;

/* Decode-pass product for few rows against a big weight, streaming each weight row once:
     y[i*ldy + j] = sum_p x[i*k + p] * w[j*k + p]     for i in [0,m), j in [j0,j1)
   w is a PyTorch Linear weight [n, k] (row-major). x is [m, k]. Callers split [0,n) across
   threads by giving each a [j0,j1) range. */
void ck_gemm_rows(const float *x, int m, int k, const float *w, int j0, int j1, float *y, int ldy);

/* Same product with the weight stored as IEEE half floats (converted on the fly). */
void ck_gemm_rows_f16(const float *x, int m, int k, const uint16_t *w, int j0, int j1, float *y, int ldy);

/* Attention of nq queries that share one key/value head (same batch entry, same KV head) over n
   cache slots, reading every key and value row once for the whole group:
     for query i: s_ij = (q_i . k_j) * scale if mask_i[j] else -inf; p_i = softmax(s_i); out_i = sum_j p_ij v_j
   q_i = q[i*ldq ...], mask_i = masks + maskOffsets[i] (n entries), out_i = out[i*ldo ...].
   scores is scratch [nq * n]. A query with no visible slot gets a zero output.
   sab != 0: BiViT's softmax-aware binarization, p_ij -> 1 if p_ij >= 0.25 * max_j p_ij else 0 (no
   renormalisation), for models trained with it (config "attention_binarization": "sab"). */
void ck_attend_group(const float *q, int ldq, const float *k, const float *v, const uint8_t *masks,
                     const int *maskOffsets, int nq, int n, int d, float scale, int sab, float *scores,
                     float *out, int ldo);

/* The same with keys and values stored as IEEE half floats (the fp16 KV cache). */
void ck_attend_group_f16(const float *q, int ldq, const uint16_t *k, const uint16_t *v, const uint8_t *masks,
                         const int *maskOffsets, int nq, int n, int d, float scale, int sab, float *scores,
                         float *out, int ldo);

/* Attention scores of nq contiguous queries [nq, d] against n key rows [n, d] (fp32 or fp16):
   scores[i*ld + j] = q_i . k_j. */
void ck_attn_scores(const float *q, int nq, int d, const float *k, int n, float *scores, int ld);
void ck_attn_scores_f16(const float *q, int nq, int d, const uint16_t *k, int n, float *scores, int ld);

/* Float -> IEEE half (round to nearest even), n values. */
void ck_f32_to_f16(const float *src, uint16_t *dst, int n);

/* Compressed KV cache (KVQuant.swift). Codes of one row of d channels are packed planar (see
   kernels.c); head_dim <= 512. Parameters are IEEE halves. ids[r] (or r when ids is NULL) is the
   output row of code row r, so a block is rebuilt in slot order in out[block][d].
   Channel-wise: out = code * st[c] + mn[c] (one min/step per channel for all rows).
   Token-wise: row r has params[r*paramStride ...] = d/group mins then d/group steps;
   out = (code * step_g + min_g) * chanScale[c] (chanScale NULL = 1). */
void ck_kv_dequant_channel(const uint8_t *codes, int bits, int rows, int d, const uint16_t *mn, const uint16_t *st,
                           const uint16_t *ids, float *out);
void ck_kv_dequant_token(const uint8_t *codes, int bits, int rows, int d, int group, const uint16_t *params,
                         int paramStride, const uint16_t *chanScale, const uint16_t *ids, float *out);
/* Attention straight from one code set of a sealed block (no dequantized copy; kvkernels.c).
   Channel-wise keys (mn, st as in ck_kv_dequant_channel): scores[i*ld + ids[r]] = q_i . k_r for the
   nq queries q[nq][d] and every row r with ids[r] < len (ids NULL: r).
   Token-wise values (params, chanScale as in ck_kv_dequant_token): out[i*d + c] += sum_r p[i*ldp + ids[r]] * v_rc
   over rows with ids[r] < len. ck_kv_fused_fast(d): the AVX-512 path applies (head_dim 64); elsewhere
   these run portable loops, slower than dequantizing into a scratch block and using ck_attn_scores. */
int ck_kv_fused_fast(int d);
void ck_kv_scores_channel(const uint8_t *codes, int bits, int rows, int d, const uint16_t *mn, const uint16_t *st,
                          const uint16_t *ids, int len, const float *q, int nq, float *scores, int ld);
/* Scores of nq queries against token-wise quantized keys (int8: k_rc = mn_r + st_r * code_rc per group of
   `group` channels; params per row: groups mins, then groups steps), on the codes. */
void ck_kv_scores_token(const uint8_t *codes, int bits, int rows, int d, int group, const uint16_t *params, int paramStride,
                        const uint16_t *ids, int len, const float *q, int nq, float *scores, int ld);
void ck_kv_values_token(const uint8_t *codes, int bits, int rows, int d, int group, const uint16_t *params, int paramStride,
                        const uint16_t *chanScale, const uint16_t *ids, int len, const float *p, int nq, int ldp, float *out);
/* Masked, scaled softmax of nq score rows of n entries in place (a row with no visible slot becomes zeros);
   binarized by SAB when sab != 0 (as ck_attend_group). */
void ck_softmax_rows(const uint8_t *masks, const int *maskOffsets, int nq, int n, float scale, int sab, float *scores);
/* out[d] += sum_j p[j] * v[j*d ...] (fp32 or fp16 value rows); d <= 512. */
void ck_weighted_rows_acc(const float *p, const float *v, int n, int d, float *out);
void ck_weighted_rows_acc_f16(const float *p, const uint16_t *v, int n, int d, float *out);
/* IEEE half -> float, n values. */
void ck_f16_to_f32(const uint16_t *src, float *dst, int n);

/* a[i] = silu(a[i]) * b[i] (the SwiGLU gate), n values. */
void ck_swiglu(float *a, const float *b, int n);
/* Softmax of x[0..n) in place, -inf entries exactly 0; returns 0 (x zeroed) when all are -inf. */
int ck_softmax_inplace(float *x, int n);
/* The k-th largest (1 <= k <= n) of x[0..n), exactly: a histogram of `bins` bins between min and max
   finds the bin that holds it, a quickselect over that bin's values (copied to scratch[n]) finishes.
   counts is scratch [bins]. */
float ck_kth_largest(const float *x, int n, int k, int32_t *counts, int bins, float *scratch);
/* x[i] = -inf where x[i] < t. */
void ck_cut_below(float *x, int n, float t);
/* Multinomial draw: the first index whose running double sum of w exceeds u * sum(w); live: n ints of scratch. */
int ck_draw(const float *w, int n, double u, int32_t *live);

/* Sum of n floats, read as fast as the memory allows (bandwidth measurement). */
float ck_stream_sum(const float *x, size_t n);
/* Persistent worker pool (pool.c). ck_parallel runs fn(ctx, chunk, chunks, worker) for every chunk
   in [0, chunks), claimed by up to `participants` threads (the caller is worker 0, the others
   1..participants-1), and returns when all chunks are done. */
typedef void (*ck_task_fn)(void *ctx, int chunk, int chunks, int worker);
void ck_pool_start(int threads);
void ck_parallel(ck_task_fn fn, void *ctx, int chunks, int participants);
#endif
