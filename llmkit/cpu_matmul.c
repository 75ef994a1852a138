/* Matrix products with weights stored in llmkit's int4, int8 and bf16 formats, for decoding on the CPU:
 * y (rows, out) = x (rows, in) @ W.T, with x and y fp32 and W dequantized on the fly, never in memory.
 * Built with cpu_kernels.c by llmkit/cpu_kernels.py (cc -O3 -march=native -fopenmp); called through
 * ctypes by llmkit/quantize/kernels.py (llmkit_quantized_matmul, llmkit_bf16_matmul). Output rows are
 * shared out among torch's OpenMP threads; each thread reads its rows of W once and keeps every row of x in registers against them, so a batch of a
 * few rows costs about one pass over the weights.
 *
 * Formats (llmkit/quantize/tensors.py writes them; the docstrings there are the reference):
 * - int4: a row is cut into chunks of 64 inputs stored in 32 bytes; the little-endian 16-bit word i
 *   (i < 16) of a chunk holds input 16k + i of the chunk in bits 4k..4k+3 (k < 4), so the four
 *   16-lane vectors of a chunk come out of one 32-byte load by shifts, and a 16-entry table lookup
 *   (vpermps) turns nibbles into floats. Rows are padded to whole chunks with zero nibbles.
 * - int8: a row of `in` bytes, int8 (symmetric) or uint8 (asymmetric).
 * - scales and minimums: fp16, one per (row, group of `group` inputs); the last group of a row may be
 *   shorter. Symmetric: w = scale * (q - zero) with zero 8 for int4, 0 for int8; asymmetric:
 *   w = scale * q + min. These are GGUF's Q4_0, Q4_1 and Q8_0 formulas, so those files load as is.
 *
 * The sum over a group is sum_j scale * q_j * x_j + min * sum_j x_j: the kernels accumulate q_j * x_j
 * per group in fp32, scale it, and add min times the group's input sum (computed once per call).
 * Results equal dequantize-then-matmul up to fp32 rounding and summation order (relative ~1e-7).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_bf16.h"
#if defined(__AVX512F__) || defined(__AVX2__) || defined(__F16C__)
#include <immintrin.h>
#endif
/* The vector path: AVX-512 (16 lanes), else AVX2 with FMA (8 lanes), else portable C. */
#if defined(__AVX512F__)
#define LLMKIT_AVX512 1
#elif defined(__AVX2__) && defined(__FMA__)
#define LLMKIT_AVX2 1
#endif

#define CHUNK 64    /* int4 inputs per 32-byte chunk */
#define ROW_BLOCK 4 /* rows of x kept in registers against one row of W */

/* The row kernels take the number of x rows n as a compile-time constant (ROWS_CASES inlines one copy
 * per n): with a variable n their per-row accumulators would live on the stack, not in registers. */
#if defined(__GNUC__)
#define ALWAYS_INLINE static inline __attribute__((always_inline))
#else
#define ALWAYS_INLINE static inline
#endif
#define ROWS_CASES(CALL)                                                                                     \
    switch (n) {                                                                                             \
    case 1: CALL(1); break;                                                                                  \
    case 2: CALL(2); break;                                                                                  \
    case 3: CALL(3); break;                                                                                  \
    default: CALL(4); break;                                                                                 \
    }

static inline float f16_to_f32(uint16_t h) {
#if defined(__F16C__)
    return _cvtsh_ss(h);
#else
    /* IEEE half -> float, exact (what F16C's vcvtph2ps does) */
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1F, man = h & 0x3FF, bits;
    if (exp == 0x1F) bits = sign | 0x7F800000 | (man << 13);
    else if (exp) bits = sign | ((exp + 112) << 23) | (man << 13);
    else if (!man) bits = sign;
    else { /* subnormal: normalise */
        exp = 113;
        while (!(man & 0x400)) { man <<= 1; exp--; }
        bits = sign | (exp << 23) | ((man & 0x3FF) << 13);
    }
    union { uint32_t u; float f; } v = {.u = bits};
    return v.f;
#endif
}

/* Per call: x copied into whole chunks (zero padded, so a padded weight of any value adds 0) and the
 * input sums of each (row, group), both owned by the caller of prepare() and freed after. */
typedef struct { float *x, *sums; int64_t stride, groups; } Prepared;

/* sums[g] += the sum of x's inputs in group g, group by group (a division per input cost ~25 cycles) */
static void group_sums(const float *x, int64_t in, int64_t group, float *sums) {
    for (int64_t g = 0, start = 0; start < in; g++, start += group) {
        const int64_t end = start + group < in ? start + group : in;
        float t = 0.0f;
        for (int64_t i = start; i < end; i++) t += x[i];
        sums[g] += t;
    }
}

/* x and its group sums into p's buffers (rows * stride and rows * groups floats) */
static void fill(const float *x, int64_t rows, int64_t in, int64_t group, Prepared *p) {
    memset(p->x, 0, (size_t)(rows * p->stride) * sizeof(float));
    memset(p->sums, 0, (size_t)(rows * p->groups) * sizeof(float));
    for (int64_t r = 0; r < rows; r++) {
        memcpy(p->x + r * p->stride, x + r * in, (size_t)in * sizeof(float));
        group_sums(x + r * in, in, group, p->sums + r * p->groups);
    }
}

static int prepare(const float *x, int64_t rows, int64_t in, int64_t group, Prepared *p) {
    p->stride = (in + CHUNK - 1) / CHUNK * CHUNK;
    p->groups = (in + group - 1) / group;
    p->x = malloc((size_t)(rows * p->stride) * sizeof(float));
    p->sums = malloc((size_t)(rows * p->groups) * sizeof(float));
    if (!p->x || !p->sums) { free(p->x); free(p->sums); return -1; }
    fill(x, rows, in, group, p);
    return 0;
}

/* The minimums' term of row o for x rows [r0, r0 + n) (asymmetric formats only): the kernels multiply x
 * by q - zero, centred on the grid's middle (int4 8, int8 128) so that the sum does not cancel against a
 * large offset, and add sum_g (min_g + zero * scale_g) * sum(x in g) here. */
static void add_offsets(const Prepared *p, const uint16_t *scales, const uint16_t *mins, float zero, int64_t o,
                        int64_t r0, int n, int64_t out, float *y) {
    const uint16_t *s = scales + o * p->groups, *m = mins + o * p->groups;
    for (int r = 0; r < n; r++) {
        const float *sums = p->sums + (r0 + r) * p->groups;
        float t = 0.0f;
        int64_t g = 0;
#if defined(LLMKIT_AVX512)
        /* 16 groups a step: the scalar loop's fp16 conversions were ~15% of a Q4_1 row's time (SmolLM2, perf) */
        __m512 tv = _mm512_setzero_ps();
        const __m512 zv = _mm512_set1_ps(zero);
        for (; g + 16 <= p->groups; g += 16) {
            __m512 mv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(m + g)));
            __m512 sv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(s + g)));
            tv = _mm512_fmadd_ps(_mm512_fmadd_ps(zv, sv, mv), _mm512_loadu_ps(sums + g), tv);
        }
        t = _mm512_reduce_add_ps(tv);
#endif
        for (; g < p->groups; g++) t += (f16_to_f32(m[g]) + zero * f16_to_f32(s[g])) * sums[g];
        y[(r0 + r) * out + o] += t;
    }
}

/* ---- int4 ----------------------------------------------------------------------------------- */
#if defined(LLMKIT_AVX512)
/* weights 16k + i (i < 16) of a chunk as q - 8 in floats: vpermps reads the low 4 bits of each 32-bit lane */
#define NIBBLES(words, k, table) _mm512_permutexvar_ps(_mm512_srli_epi32(words, 4 * (k)), table)

/* rows [r0, r0 + n) of x against row o of W: sum_g scale_g * sum_j (q_j - 8) x_j, into y */
ALWAYS_INLINE void int4_row(const Prepared *p, int64_t r0, const int n, const uint8_t *q, const uint16_t *scales, int64_t o,
                     int64_t group, int64_t out, float *y) {
    const __m512 table = _mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7); /* q - 8 */
    const int64_t chunks = p->stride / CHUNK, per_group = group / CHUNK; /* chunks per group (0: group 32) */
    const uint8_t *row = q + o * (p->stride / 2);
    const uint16_t *s = scales + o * p->groups;
    const float *x[ROW_BLOCK];
    /* two accumulators a row: a single one chains two dependent FMAs (~8 cycles) through every chunk */
    __m512 acc[ROW_BLOCK], acc2[ROW_BLOCK], part[ROW_BLOCK], part2[ROW_BLOCK];
    for (int r = 0; r < n; r++) {
        x[r] = p->x + (r0 + r) * p->stride;
        acc[r] = acc2[r] = part[r] = part2[r] = _mm512_setzero_ps();
    }
    for (int64_t c = 0; c < chunks; c++) {
        __m512i words = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(row + c * 32)));
        __m512 w0 = NIBBLES(words, 0, table), w1 = NIBBLES(words, 1, table);
        __m512 w2 = NIBBLES(words, 2, table), w3 = NIBBLES(words, 3, table);
        const int64_t at = c * CHUNK;
        /* the chunk's first and second halves (a group of 32 each when group is 32) */
        __m512 half0[ROW_BLOCK], half1[ROW_BLOCK];
        for (int r = 0; r < n; r++) {
            half0[r] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x[r] + at + 16), _mm512_mul_ps(w0, _mm512_loadu_ps(x[r] + at)));
            half1[r] = _mm512_fmadd_ps(w3, _mm512_loadu_ps(x[r] + at + 48), _mm512_mul_ps(w2, _mm512_loadu_ps(x[r] + at + 32)));
        }
        if (group == 32) { /* two groups per chunk; a padded second half has no scale */
            __m512 s0 = _mm512_set1_ps(f16_to_f32(s[2 * c]));
            __m512 s1 = _mm512_set1_ps(2 * c + 1 < p->groups ? f16_to_f32(s[2 * c + 1]) : 0.0f);
            for (int r = 0; r < n; r++) {
                acc[r] = _mm512_fmadd_ps(half0[r], s0, acc[r]);
                acc2[r] = _mm512_fmadd_ps(half1[r], s1, acc2[r]);
            }
        } else { /* whole chunks per group: sum the group, then scale it */
            for (int r = 0; r < n; r++) {
                part[r] = _mm512_add_ps(part[r], half0[r]);
                part2[r] = _mm512_add_ps(part2[r], half1[r]);
            }
            if ((c + 1) % per_group == 0 || c + 1 == chunks) {
                __m512 sg = _mm512_set1_ps(f16_to_f32(s[c / per_group]));
                for (int r = 0; r < n; r++) {
                    acc[r] = _mm512_fmadd_ps(_mm512_add_ps(part[r], part2[r]), sg, acc[r]);
                    part[r] = part2[r] = _mm512_setzero_ps();
                }
            }
        }
    }
    for (int r = 0; r < n; r++) y[(r0 + r) * out + o] = _mm512_reduce_add_ps(_mm512_add_ps(acc[r], acc2[r]));
}
#elif defined(LLMKIT_AVX2)
static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

/* 8 lanes: words 0-7 and 8-15 of a chunk in turn; weight 16k + i is (word_i >> 4k) & 15, less 8 */
ALWAYS_INLINE void int4_row(const Prepared *p, int64_t r0, const int n, const uint8_t *q, const uint16_t *scales,
                            int64_t o, int64_t group, int64_t out, float *y) {
    const int64_t chunks = p->stride / CHUNK;
    const uint8_t *row = q + o * (p->stride / 2);
    const uint16_t *s = scales + o * p->groups;
    const __m256i low4 = _mm256_set1_epi32(15);
    const __m256 eight = _mm256_set1_ps(8.0f);
    __m256 acc[ROW_BLOCK], part[ROW_BLOCK];
    for (int r = 0; r < n; r++) acc[r] = part[r] = _mm256_setzero_ps();
    for (int64_t c = 0; c < chunks; c++) {
        __m256i words[2] = {_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(row + c * 32))),
                            _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(row + c * 32 + 16)))};
        for (int k = 0; k < 4; k++) { /* weights 16k .. 16k + 15 */
            for (int h = 0; h < 2; h++) {
                __m256i nib = _mm256_and_si256(_mm256_srlv_epi32(words[h], _mm256_set1_epi32(4 * k)), low4);
                __m256 w = _mm256_sub_ps(_mm256_cvtepi32_ps(nib), eight);
                for (int r = 0; r < n; r++)
                    part[r] = _mm256_fmadd_ps(w, _mm256_loadu_ps(p->x + (r0 + r) * p->stride + c * CHUNK + 16 * k + 8 * h),
                                              part[r]);
            }
            int64_t at = c * CHUNK + 16 * k + 16; /* weights done in this row */
            if (at % group == 0 || (c + 1 == chunks && k == 3)) {
                int64_t g = (at - 1) / group;
                __m256 sg = _mm256_set1_ps(g < p->groups ? f16_to_f32(s[g]) : 0.0f);
                for (int r = 0; r < n; r++) {
                    acc[r] = _mm256_fmadd_ps(part[r], sg, acc[r]);
                    part[r] = _mm256_setzero_ps();
                }
            }
        }
    }
    for (int r = 0; r < n; r++) y[(r0 + r) * out + o] = hsum8(acc[r]);
}
#else
ALWAYS_INLINE void int4_row(const Prepared *p, int64_t r0, const int n, const uint8_t *q, const uint16_t *scales, int64_t o,
                     int64_t group, int64_t out, float *y) {
    const uint8_t *row = q + o * (p->stride / 2);
    for (int r = 0; r < n; r++) {
        const float *x = p->x + (r0 + r) * p->stride;
        float acc = 0.0f;
        for (int64_t g = 0; g < p->groups; g++) {
            float part = 0.0f;
            for (int64_t i = g * group; i < (g + 1) * group && i < p->stride; i++) {
                int64_t chunk = i / CHUNK, j = i % CHUNK, word = j % 16, k = j / 16;
                const uint8_t *b = row + chunk * 32 + 2 * word;
                uint16_t bits = (uint16_t)(b[0] | (b[1] << 8));
                part += (float)((int)((bits >> (4 * k)) & 15) - 8) * x[i];
            }
            acc += f16_to_f32(scales[o * p->groups + g]) * part;
        }
        y[(r0 + r) * out + o] = acc;
    }
}
#endif

/* ---- int8 ----------------------------------------------------------------------------------- */
/* q_j as float: int8 for symmetric formats, uint8 for asymmetric ones */
#if defined(LLMKIT_AVX512)
/* 16 inputs at a time; each group's vector sum scaled into a vector accumulator, reduced once a row */
#define INT8_ROW(NAME, T, LOAD16, CENTRE)                                                                            \
    ALWAYS_INLINE void NAME(const Prepared *p, int64_t r0, const int n, const T *q, const uint16_t *scales, int64_t o,       \
                     int64_t in, int64_t group, int64_t out, float *y) {                                       \
        const T *row = q + o * in;                                                                            \
        __m512 acc[ROW_BLOCK];                                                                                \
        float tail[ROW_BLOCK] = {0};                                                                          \
        for (int r = 0; r < n; r++) acc[r] = _mm512_setzero_ps();                                             \
        for (int64_t g = 0; g < p->groups; g++) {                                                             \
            int64_t start = g * group, end = start + group < in ? start + group : in, i = start;              \
            __m512 part[ROW_BLOCK];                                                                           \
            float rest[ROW_BLOCK] = {0};                                                                      \
            for (int r = 0; r < n; r++) part[r] = _mm512_setzero_ps();                                        \
            for (; i + 16 <= end; i += 16) {                                                                  \
                __m512 w = _mm512_cvtepi32_ps(LOAD16(_mm_loadu_si128((const __m128i *)(row + i))));           \
                for (int r = 0; r < n; r++)                                                                   \
                    part[r] = _mm512_fmadd_ps(w, _mm512_loadu_ps(p->x + (r0 + r) * p->stride + i), part[r]);  \
            }                                                                                                 \
            for (; i < end; i++)                                                                              \
                for (int r = 0; r < n; r++) rest[r] += ((float)row[i] - CENTRE) * p->x[(r0 + r) * p->stride + i];\
            float sg = f16_to_f32(scales[o * p->groups + g]);                                                 \
            __m512 sv = _mm512_set1_ps(sg);                                                                   \
            for (int r = 0; r < n; r++) {                                                                     \
                acc[r] = _mm512_fmadd_ps(part[r], sv, acc[r]);                                                \
                tail[r] += sg * rest[r];                                                                      \
            }                                                                                                 \
        }                                                                                                     \
        for (int r = 0; r < n; r++) y[(r0 + r) * out + o] = _mm512_reduce_add_ps(acc[r]) + tail[r];           \
    }
/* The same for rows whose groups are whole multiples of 16 inputs (GGUF's Q8_0 blocks of 32, per-channel
 * rows of a multiple of 16): each 16 weights scaled as floats once for all x rows, two accumulators a row,
 * and no per-group sum, tail or reduction, which cost as much as the products for groups of 32 (perf). */
#define INT8_ROW_WHOLE(NAME, T, LOAD16)                                                                        \
    ALWAYS_INLINE void NAME(const Prepared *p, int64_t r0, const int n, const T *q, const uint16_t *scales,     \
                            int64_t o, int64_t in, int64_t group, int64_t out, float *y) {                     \
        const T *row = q + o * in;                                                                            \
        const uint16_t *s = scales + o * p->groups;                                                           \
        __m512 acc0[ROW_BLOCK], acc1[ROW_BLOCK];                                                              \
        for (int r = 0; r < n; r++) acc0[r] = acc1[r] = _mm512_setzero_ps();                                 \
        for (int64_t g = 0; g < p->groups; g++) {                                                             \
            const __m512 sv = _mm512_set1_ps(f16_to_f32(s[g]));                                               \
            const int64_t end = (g + 1) * group;                                                              \
            int64_t i = g * group;                                                                            \
            for (; i + 32 <= end; i += 32) {                                                                  \
                __m512 w0 = _mm512_mul_ps(sv, _mm512_cvtepi32_ps(LOAD16(_mm_loadu_si128((const __m128i *)(row + i)))));\
                __m512 w1 = _mm512_mul_ps(sv, _mm512_cvtepi32_ps(LOAD16(_mm_loadu_si128((const __m128i *)(row + i + 16)))));\
                for (int r = 0; r < n; r++) {                                                                 \
                    const float *xr = p->x + (r0 + r) * p->stride + i;                                        \
                    acc0[r] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xr), acc0[r]);                              \
                    acc1[r] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xr + 16), acc1[r]);                         \
                }                                                                                             \
            }                                                                                                 \
            if (i < end) { /* a group of 16 * odd */                                                          \
                __m512 w = _mm512_mul_ps(sv, _mm512_cvtepi32_ps(LOAD16(_mm_loadu_si128((const __m128i *)(row + i)))));\
                for (int r = 0; r < n; r++)                                                                   \
                    acc0[r] = _mm512_fmadd_ps(w, _mm512_loadu_ps(p->x + (r0 + r) * p->stride + i), acc0[r]);  \
            }                                                                                                 \
        }                                                                                                     \
        for (int r = 0; r < n; r++) y[(r0 + r) * out + o] = _mm512_reduce_add_ps(_mm512_add_ps(acc0[r], acc1[r]));\
    }
/* uint8 q - 128 as int8: flip the top bit */
#define CENTRED_U8(b) _mm512_cvtepi8_epi32(_mm_xor_si128(b, _mm_set1_epi8((char)0x80)))
INT8_ROW(int8_row_signed, int8_t, _mm512_cvtepi8_epi32, 0.0f)
INT8_ROW(int8_row_unsigned, uint8_t, CENTRED_U8, 128.0f)
INT8_ROW_WHOLE(int8_row_signed_whole, int8_t, _mm512_cvtepi8_epi32)
INT8_ROW_WHOLE(int8_row_unsigned_whole, uint8_t, CENTRED_U8)
#elif defined(LLMKIT_AVX2)
#define INT8_ROW(NAME, T, LOAD8, CENTRE)                                                                            \
    ALWAYS_INLINE void NAME(const Prepared *p, int64_t r0, const int n, const T *q, const uint16_t *scales, int64_t o,       \
                     int64_t in, int64_t group, int64_t out, float *y) {                                       \
        const T *row = q + o * in;                                                                            \
        __m256 acc[ROW_BLOCK];                                                                                \
        float tail[ROW_BLOCK] = {0};                                                                          \
        for (int r = 0; r < n; r++) acc[r] = _mm256_setzero_ps();                                             \
        for (int64_t g = 0; g < p->groups; g++) {                                                             \
            int64_t start = g * group, end = start + group < in ? start + group : in, i = start;              \
            __m256 part[ROW_BLOCK];                                                                           \
            float rest[ROW_BLOCK] = {0};                                                                      \
            for (int r = 0; r < n; r++) part[r] = _mm256_setzero_ps();                                        \
            for (; i + 8 <= end; i += 8) {                                                                    \
                __m256 w = _mm256_cvtepi32_ps(LOAD8(_mm_loadl_epi64((const __m128i *)(row + i))));            \
                for (int r = 0; r < n; r++)                                                                   \
                    part[r] = _mm256_fmadd_ps(w, _mm256_loadu_ps(p->x + (r0 + r) * p->stride + i), part[r]);  \
            }                                                                                                 \
            for (; i < end; i++)                                                                              \
                for (int r = 0; r < n; r++) rest[r] += ((float)row[i] - CENTRE) * p->x[(r0 + r) * p->stride + i];\
            float sg = f16_to_f32(scales[o * p->groups + g]);                                                 \
            __m256 sv = _mm256_set1_ps(sg);                                                                   \
            for (int r = 0; r < n; r++) {                                                                     \
                acc[r] = _mm256_fmadd_ps(part[r], sv, acc[r]);                                                \
                tail[r] += sg * rest[r];                                                                      \
            }                                                                                                 \
        }                                                                                                     \
        for (int r = 0; r < n; r++) y[(r0 + r) * out + o] = hsum8(acc[r]) + tail[r];                          \
    }
#define CENTRED_U8_8(b) _mm256_cvtepi8_epi32(_mm_xor_si128(b, _mm_set1_epi8((char)0x80)))
INT8_ROW(int8_row_signed, int8_t, _mm256_cvtepi8_epi32, 0.0f)
INT8_ROW(int8_row_unsigned, uint8_t, CENTRED_U8_8, 128.0f)
#else
#define INT8_ROW(NAME, T, CENTRE)                                                                                  \
    ALWAYS_INLINE void NAME(const Prepared *p, int64_t r0, const int n, const T *q, const uint16_t *scales, int64_t o,       \
                     int64_t in, int64_t group, int64_t out, float *y) {                                       \
        const T *row = q + o * in;                                                                            \
        for (int r = 0; r < n; r++) {                                                                         \
            const float *x = p->x + (r0 + r) * p->stride;                                                     \
            float acc = 0.0f;                                                                                 \
            for (int64_t g = 0; g < p->groups; g++) {                                                         \
                int64_t start = g * group, end = start + group < in ? start + group : in;                     \
                float part = 0.0f;                                                                            \
                for (int64_t i = start; i < end; i++) part += ((float)row[i] - CENTRE) * x[i];                \
                acc += f16_to_f32(scales[o * p->groups + g]) * part;                                          \
            }                                                                                                 \
            y[(r0 + r) * out + o] = acc;                                                                      \
        }                                                                                                     \
    }
INT8_ROW(int8_row_signed, int8_t, 0.0f)
INT8_ROW(int8_row_unsigned, uint8_t, 128.0f)
#endif
#if !defined(LLMKIT_AVX512) /* the other paths have one loop for every group size */
#define int8_row_signed_whole int8_row_signed
#define int8_row_unsigned_whole int8_row_unsigned
#endif

/* ---- entry points ----------------------------------------------------------------------------- */
/* Row o of one matrix against rows [r0, r0 + n) of x. */
static void matrix_row(const Prepared *p, int bits, const void *q, const uint16_t *scales, const uint16_t *mins,
                       int64_t in, int64_t group, int64_t o, int64_t out, float *y, int64_t r0, int n) {
    if (bits == 4) {
#define INT4_ROWS(N) int4_row(p, r0, N, (const uint8_t *)q, scales, o, group, out, y)
        ROWS_CASES(INT4_ROWS)
        if (mins) add_offsets(p, scales, mins, 8.0f, o, r0, n, out, y);
        return;
    }
    const int whole = group % 16 == 0 && in % group == 0; /* every group a whole number of 16-input vectors */
#define INT8_UNSIGNED(N) int8_row_unsigned(p, r0, N, (const uint8_t *)q, scales, o, in, group, out, y)
#define INT8_UNSIGNED_WHOLE(N) int8_row_unsigned_whole(p, r0, N, (const uint8_t *)q, scales, o, in, group, out, y)
#define INT8_SIGNED(N) int8_row_signed(p, r0, N, (const int8_t *)q, scales, o, in, group, out, y)
#define INT8_SIGNED_WHOLE(N) int8_row_signed_whole(p, r0, N, (const int8_t *)q, scales, o, in, group, out, y)
    if (mins) {
        if (whole) { ROWS_CASES(INT8_UNSIGNED_WHOLE) }
        else { ROWS_CASES(INT8_UNSIGNED) }
        add_offsets(p, scales, mins, 128.0f, o, r0, n, out, y);
    } else if (whole) {
        ROWS_CASES(INT8_SIGNED_WHOLE)
    } else {
        ROWS_CASES(INT8_SIGNED)
    }
}

/* `count` matrices of one format (int4 or int8, `bits`) that read the same x, in one call: the
 * attention's q, k and v, the MLP's gate and up. x is copied and summed once, and one parallel loop
 * shares out the rows of all of them, where a call per matrix would pay the call, the copy and the
 * thread hand-off each time. Matrix i has outs[i] rows and writes y[i] (rows, outs[i]); mins[i] NULL:
 * symmetric (int8 q signed; int4 w = scale * (q - 8)), else asymmetric (int8 q unsigned). */
/* The output rows of all matrices shared out among the threads of the enclosing parallel region (an
 * orphaned worksharing loop: alone, outside any region, the calling thread does them all). */
static void quantized_rows(const Prepared *p, int64_t rows, int64_t in, int bits, int64_t count, const void *const *q,
                           const uint16_t *const *scales, const uint16_t *const *mins, const int64_t *outs,
                           int64_t group, float *const *y) {
    int64_t total = 0;
    for (int64_t i = 0; i < count; i++) total += outs[i];
#pragma omp for schedule(static)
    for (int64_t t = 0; t < total; t++) {
        int64_t i = 0, o = t;
        while (o >= outs[i]) o -= outs[i++]; /* which matrix, which of its rows */
        for (int64_t r0 = 0; r0 < rows; r0 += ROW_BLOCK) {
            int n = rows - r0 < ROW_BLOCK ? (int)(rows - r0) : ROW_BLOCK;
            matrix_row(p, bits, q[i], scales[i], mins[i], in, group, o, outs[i], y[i], r0, n);
        }
    }
}

int llmkit_quantized_matmul(const float *x, int64_t rows, int64_t in, int bits, int64_t count, const void *const *q,
                            const uint16_t *const *scales, const uint16_t *const *mins, const int64_t *outs,
                            int64_t group, float *const *y, int threads) {
    Prepared p;
    if (prepare(x, rows, in, group, &p)) return -1;
#pragma omp parallel num_threads(threads)
    quantized_rows(&p, rows, in, bits, count, q, scales, mins, outs, group, y);
    free(p.x);
    free(p.sums);
    return 0;
}

/* llmkit_quantized_matmul for one row of x, called by every thread of an enclosing parallel region
 * (cpu_decode.c's step, which keeps one region for a whole token: starting a region a matrix woke the
 * other threads from sleep each time, ~2 ms of a 9 ms SmolLM2 step). xbuf and sums are scratch the caller
 * shares, of at least in rounded up to 64 and in / group (rounded up) floats. Ends with a barrier. */
void llmkit_quantized_matvec_team(const float *x, int64_t in, int bits, int64_t count, const void *const *q,
                                  const uint16_t *const *scales, const uint16_t *const *mins, const int64_t *outs,
                                  int64_t group, float *const *y, float *xbuf, float *sums) {
    Prepared p = {xbuf, sums, (in + CHUNK - 1) / CHUNK * CHUNK, (in + group - 1) / group};
#pragma omp single
    fill(x, 1, in, group, &p);
    quantized_rows(&p, 1, in, bits, count, q, scales, mins, outs, group, y);
}

/* ---- bf16 ----------------------------------------------------------------------------------- */
ALWAYS_INLINE void bf16_row(const float *x, int64_t r0, const int n, int64_t in, const uint16_t *row, int64_t o,
                            int64_t out, float *y) {
    float acc[ROW_BLOCK] = {0};
    int64_t i = 0;
#if defined(LLMKIT_AVX512)
    __m512 va[2][ROW_BLOCK]; /* two accumulators a row, alternate vectors: one chains the FMAs' latency */
    for (int r = 0; r < n; r++) va[0][r] = va[1][r] = _mm512_setzero_ps();
    for (; i + 32 <= in; i += 32) { /* (constant indices keep the accumulators in registers) */
        __m512 v0 = _mm512_castsi512_ps(
            _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(row + i))), 16));
        __m512 v1 = _mm512_castsi512_ps(
            _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(row + i + 16))), 16));
        for (int r = 0; r < n; r++) {
            va[0][r] = _mm512_fmadd_ps(v0, _mm512_loadu_ps(x + (r0 + r) * in + i), va[0][r]);
            va[1][r] = _mm512_fmadd_ps(v1, _mm512_loadu_ps(x + (r0 + r) * in + i + 16), va[1][r]);
        }
    }
    if (i + 16 <= in) {
        __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(row + i)));
        __m512 v = _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
        for (int r = 0; r < n; r++) va[0][r] = _mm512_fmadd_ps(v, _mm512_loadu_ps(x + (r0 + r) * in + i), va[0][r]);
        i += 16;
    }
    for (int r = 0; r < n; r++) acc[r] = _mm512_reduce_add_ps(_mm512_add_ps(va[0][r], va[1][r]));
#elif defined(LLMKIT_AVX2)
    __m256 va[ROW_BLOCK];
    for (int r = 0; r < n; r++) va[r] = _mm256_setzero_ps();
    for (; i + 8 <= in; i += 8) {
        __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(row + i)));
        __m256 v = _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
        for (int r = 0; r < n; r++) va[r] = _mm256_fmadd_ps(v, _mm256_loadu_ps(x + (r0 + r) * in + i), va[r]);
    }
    for (int r = 0; r < n; r++) acc[r] = hsum8(va[r]);
#endif
    for (; i < in; i++)
        for (int r = 0; r < n; r++) acc[r] += bf16_to_f32(row[i]) * x[(r0 + r) * in + i];
    for (int r = 0; r < n; r++) y[(r0 + r) * out + o] = acc[r];
}

/* its rows shared out among the threads of the enclosing parallel region (ends with a barrier) */
void llmkit_bf16_matmul_team(const float *x, int64_t rows, int64_t in, const uint16_t *w, int64_t out, float *y) {
#pragma omp for schedule(static)
    for (int64_t o = 0; o < out; o++) {
        const uint16_t *row = w + o * in;
        for (int64_t r0 = 0; r0 < rows; r0 += ROW_BLOCK) {
            int n = rows - r0 < ROW_BLOCK ? (int)(rows - r0) : ROW_BLOCK;
#define BF16_ROWS(N) bf16_row(x, r0, N, in, row, o, out, y)
            ROWS_CASES(BF16_ROWS)
        }
    }
}

int llmkit_bf16_matmul(const float *x, int64_t rows, int64_t in, const uint16_t *w, int64_t out, float *y,
                       int threads) {
#pragma omp parallel num_threads(threads)
    llmkit_bf16_matmul_team(x, rows, in, w, out, y);
    return 0;
}

/* ---- dequantize ---------------------------------------------------------------------------- */
static void dequantize_row_scalar(int bits, const void *q, const uint16_t *scales, const uint16_t *mins, int64_t o,
                                  int64_t in, int64_t group, int64_t groups, int64_t width, float zero, void *out,
                                  int bf16) {
    for (int64_t i = 0; i < in; i++) {
        float v;
        if (bits == 4) {
            const uint8_t *b = (const uint8_t *)q + o * width + (i / CHUNK) * 32 + 2 * (i % 16);
            uint16_t word = (uint16_t)(b[0] | (b[1] << 8));
            v = (float)((word >> (4 * ((i % CHUNK) / 16))) & 15);
        } else {
            v = mins ? (float)((const uint8_t *)q)[o * in + i] : (float)((const int8_t *)q)[o * in + i];
        }
        int64_t g = o * groups + i / group;
        float scaled = f16_to_f32(scales[g]) * (v - zero);
        float value = mins ? scaled + f16_to_f32(mins[g]) : scaled;
        if (bf16) ((uint16_t *)out)[i] = f32_to_bf16(value);
        else ((float *)out)[i] = value;
    }
}

#if defined(LLMKIT_AVX512)
/* 16 weights (inputs i .. i + 15 of row o, all in group g) from their values as floats, into out + i */
static inline void dequantize_store(__m512 v, const uint16_t *scales, const uint16_t *mins, int64_t g, float zero,
                                    int64_t i, int64_t in, void *out, int bf16) {
    __m512 w = _mm512_mul_ps(_mm512_set1_ps(f16_to_f32(scales[g])), _mm512_sub_ps(v, _mm512_set1_ps(zero)));
    if (mins) w = _mm512_add_ps(w, _mm512_set1_ps(f16_to_f32(mins[g])));
    if (bf16) { /* f32_to_bf16 on 16 lanes (weights are finite), then the top halves packed */
        __m512i u = _mm512_castps_si512(w);
        __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
        u = _mm512_add_epi32(u, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF)));
        __m256i h = _mm512_cvtepi32_epi16(_mm512_srli_epi32(u, 16));
        uint16_t *o16 = (uint16_t *)out + i;
        if (i + 16 <= in) _mm256_storeu_si256((__m256i *)o16, h);
        else { /* the row's last, partial vector */
            uint16_t lanes[16];
            _mm256_storeu_si256((__m256i *)lanes, h);
            memcpy(o16, lanes, (size_t)(in - i) * sizeof(uint16_t));
        }
        return;
    }
    float *o32 = (float *)out;
    if (i + 16 <= in) _mm512_storeu_ps(o32 + i, w);
    else _mm512_mask_storeu_ps(o32 + i, (__mmask16)((1u << (in - i)) - 1), w);
}

static void dequantize_row_avx512(int bits, const void *q, const uint16_t *scales, const uint16_t *mins, int64_t o,
                                  int64_t in, int64_t group, int64_t groups, int64_t width, float zero, void *out,
                                  int bf16) {
    const uint16_t *s = scales + o * groups, *m = mins ? mins + o * groups : NULL;
    if (bits == 4) {
        const uint8_t *row = (const uint8_t *)q + o * width;
        const __m512i low4 = _mm512_set1_epi32(15);
        for (int64_t c = 0; c * CHUNK < in; c++) {
            __m512i words = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(row + c * 32)));
            for (int k = 0; k < 4; k++) {
                int64_t i = c * CHUNK + 16 * k;
                if (i >= in) break;
                __m512 v = _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srli_epi32(words, 4 * k), low4));
                dequantize_store(v, s, m, i / group, zero, i, in, out, bf16);
            }
        }
    } else {
        for (int64_t i = 0; i < in; i += 16) {
            __mmask16 lanes = i + 16 <= in ? (__mmask16)0xFFFF : (__mmask16)((1u << (in - i)) - 1);
            __m128i b = _mm_maskz_loadu_epi8(lanes, (const uint8_t *)q + o * in + i);
            __m512i v = mins ? _mm512_cvtepu8_epi32(b) : _mm512_cvtepi8_epi32(b);
            dequantize_store(_mm512_cvtepi32_ps(v), s, m, i / group, zero, i, in, out, bf16);
        }
    }
}
#endif

/* The whole stored matrix as fp32 (rows, in), or those values rounded once to bf16 (``bf16`` 1: a server's
 * bf16 batches, without an fp32 copy written and read again): w = scale * (q - zero) + min, as llmkit.quantize.tensors
 * reads it back, for inputs of many rows (a long prompt, a batch of the server), where BLAS on the floats
 * beats the row kernels. scale * (q - zero) is exact in fp32 (an fp16 scale times an integer of at most
 * 8 bits), so the only rounding is the one addition of min, as in torch: the result is bit for bit
 * tensors'. The AVX-512 path does 16 weights an instruction (groups a multiple of 16, as every GGUF
 * block and llmkit default is); other groups and machines take the scalar loop. Why it matters: a batch
 * of 64 rows dequantizes every matrix each step, and the scalar loop took about 2.5 ns a weight. */
int llmkit_dequantize(int bits, const void *q, const uint16_t *scales, const uint16_t *mins, int64_t rows,
                      int64_t in, int64_t group, void *w, int threads, int bf16) {
    const int64_t groups = (in + group - 1) / group, width = bits == 4 ? (in + CHUNK - 1) / CHUNK * 32 : in;
    const float zero = bits == 4 ? (mins ? 0.0f : 8.0f) : 0.0f;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t o = 0; o < rows; o++) {
        void *row_out = bf16 ? (void *)((uint16_t *)w + o * in) : (void *)((float *)w + o * in);
#if defined(LLMKIT_AVX512)
        if (group % 16 == 0) { /* every 16-weight vector lies in one group */
            dequantize_row_avx512(bits, q, scales, mins, o, in, group, groups, width, zero, row_out, bf16);
            continue;
        }
#endif
        dequantize_row_scalar(bits, q, scales, mins, o, in, group, groups, width, zero, row_out, bf16);
    }
    return 0;
}
