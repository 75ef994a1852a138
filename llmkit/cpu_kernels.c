/* llmkit's CPU kernels, built once per machine by llmkit/cpu_kernels.py (cc -O3 -march=native
 * -fopenmp) and called through ctypes (llmkit/models/dropout.py) on raw tensor memory. Nothing here
 * allocates or keeps state.
 *
 * Dropout in one pass over the tensor, its mask never stored: element i keeps its value when the 16-bit
 * lane i % 4 of word i / 4 of a SplitMix64 stream (Steele, Lea and Flood 2014: state seed + k * gamma,
 * output mix(state)) is at least `threshold` (= round(p * 2^16), so p is exact to 2^-17). The stream is
 * a function of (seed, element index) alone, so the output does not depend on the thread count, and
 * backward regenerates the same mask from the same seed (what CUDA's Philox dropout does). Kept values
 * are multiplied by `scale` and dropped ones by 0, as torch's `x * mask` does (-x * 0 is -0, inf * 0 NaN).
 */
#include <stdint.h>
#include <string.h>

#include "cpu_bf16.h"

#define GAMMA 0x9E3779B97F4A7C15ULL
#define BLOCK 4096 /* elements per task: a multiple of 4, so a block starts on a word */

static inline uint64_t splitmix64_mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* The 16-bit draws of elements [start, start + BLOCK): word k of the stream is mix(seed + (k + 1) * gamma)
 * and element i takes the 16-bit lane i % 4 of word i / 4 in memory order (the low bits first on x86).
 * memcpy is the defined way to view a word as lanes; compilers turn it into a plain store. */
static inline void draws(uint64_t seed, int64_t start, uint16_t *bits) {
    uint64_t first = (uint64_t)(start / 4) + 1;
    for (int64_t j = 0; j < BLOCK / 4; j++) {
        uint64_t word = splitmix64_mix(seed + (first + (uint64_t)j) * GAMMA);
        memcpy(bits + 4 * j, &word, sizeof word);
    }
}

void llmkit_dropout_draws(int64_t n, uint64_t seed, uint16_t *out) {
    /* the raw draws, for tests: the mask is out >= threshold */
    uint16_t bits[BLOCK];
    for (int64_t start = 0; start < n; start += BLOCK) {
        draws(seed, start, bits);
        int64_t end = start + BLOCK < n ? start + BLOCK : n;
        for (int64_t i = start; i < end; i++) out[i] = bits[i - start];
    }
}

/* x times the element's mask value (scale or 0), in the element type's own arithmetic */
static inline float times_f32(float x, float m) { return x * m; }
static inline uint16_t times_bf16(uint16_t x, float m) { return f32_to_bf16(bf16_to_f32(x) * m); }

/* One dropout kernel per element type: blocks of BLOCK elements shared out among the threads, each
 * block drawing its own words of the stream. */
#define DROPOUT_KERNEL(NAME, T, TIMES)                                                                      \
    void NAME(const T *x, T *out, int64_t n, uint64_t seed, uint32_t threshold, float scale, int threads) { \
        int64_t blocks = (n + BLOCK - 1) / BLOCK;                                                           \
        _Pragma("omp parallel for num_threads(threads) schedule(static)")                                   \
        for (int64_t b = 0; b < blocks; b++) {                                                              \
            uint16_t bits[BLOCK];                                                                           \
            int64_t start = b * BLOCK, end = start + BLOCK < n ? start + BLOCK : n;                         \
            draws(seed, start, bits);                                                                       \
            for (int64_t i = start; i < end; i++)                                                           \
                out[i] = TIMES(x[i], bits[i - start] >= threshold ? scale : 0.0f);                          \
        }                                                                                                   \
    }

DROPOUT_KERNEL(llmkit_dropout_f32, float, times_f32)
DROPOUT_KERNEL(llmkit_dropout_bf16, uint16_t, times_bf16)
