/* bfloat16 <-> float as torch converts them, for every C file of llmkit's kernel library: widening is exact,
 * narrowing rounds to nearest even and turns every NaN into 0x7FC0 (c10::BFloat16's round_to_nearest_even;
 * the bare rounding would carry a NaN's top payload bits into the sign, 0x7FFFFFFF becoming -0). */
#ifndef LLMKIT_CPU_BF16_H
#define LLMKIT_CPU_BF16_H
#include <stdint.h>

static inline float bf16_to_f32(uint16_t h) {
    union { uint32_t u; float f; } v = {.u = (uint32_t)h << 16};
    return v.f;
}

static inline uint16_t f32_to_bf16(float f) {
    union { float f; uint32_t u; } v = {.f = f};
    if (f != f) return 0x7FC0;
    return (uint16_t)((v.u + 0x7FFFu + ((v.u >> 16) & 1u)) >> 16);
}
#endif
