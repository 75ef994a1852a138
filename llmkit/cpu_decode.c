/* One decoding step of a Llama-family model (RoPE, RMSNorm, SwiGLU, grouped-query attention; Qwen2's
 * q/k/v biases) for one sequence, all in C: the token's embedding -> every block -> the logits, reading
 * and extending the model's own KV cache. Called once a token through ctypes by
 * llmkit/inference/native.py, which describes the model's tensors (Model below) and checks that the
 * model is one this code computes exactly (else the torch step runs).
 *
 * Why: with the matrix products already in C (cpu_matmul.c), what is left of a torch decoding step of a
 * small model is Python: SmolLM2-135M int4, compiled, 19 ms a token of which the kernels were 10.8
 * (their own Python and ctypes ~1.5), dynamo's guards 0.3-2.4, the compiled graph's Python wrapper 2.8,
 * attention 1.0. Here a step is one call and one OpenMP region on torch's threads: the matrix products are
 * cpu_matmul.c's kernels (q/k/v and gate/up of one format in one pass each) with their output rows shared
 * out among the threads, attention is split by heads and SwiGLU by blocks, and the rest (norms, RoPE, the
 * residual adds) runs on one thread between barriers. SmolLM2 int4 at 2 threads: 19 -> 6-8 ms a step.
 *
 * Arithmetic is fp32 throughout, with weights of any of llmkit's decode formats (fp32, bf16, int4, int8)
 * and a cache of fp32 or bf16 (rounded on write as torch's copy into a bf16 buffer rounds, cpu_bf16.h):
 * the values of the torch forward in fp32 up to summation order (tests/test_native_step.py).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_bf16.h"
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

/* cpu_matmul.c's entry points (the same library): the _team ones run inside a parallel region, their rows
 * shared out among its threads, and end with a barrier */
void llmkit_quantized_matvec_team(const float *x, int64_t in, int bits, int64_t count, const void *const *q,
                                  const uint16_t *const *scales, const uint16_t *const *mins, const int64_t *outs,
                                  int64_t group, float *const *y, float *xbuf, float *sums);
void llmkit_bf16_matmul_team(const float *x, int64_t rows, int64_t in, const uint16_t *w, int64_t out, float *y);
int llmkit_dequantize(int bits, const void *q, const uint16_t *scales, const uint16_t *mins, int64_t rows,
                      int64_t in, int64_t group, void *w, int threads, int bf16);

/* A weight (out, in), row-major: kind 32 fp32, 16 bf16, 4 int4 and 8 int8 in llmkit.quantize.tensors'
 * layout (scales fp16 per (row, group), mins NULL for symmetric formats); bias fp32 or NULL. */
typedef struct {
    int64_t kind, out, in, group;
    const void *w;
    const uint16_t *scales, *mins;
    const float *bias;
} Matrix;

typedef struct {
    const float *attn_norm, *mlp_norm; /* fp32 (d_model) */
    Matrix q, k, v, o, gate, up, down;
    void *k_cache, *v_cache; /* (n_kv_head, max_len, head_dim), fp32 or bf16 (cache_bf16) */
} Layer;

typedef struct {
    int64_t n_layer, d_model, n_head, n_kv_head, head_dim, max_len, cache_bf16;
    float norm_eps, attn_scale;
    const float *inv_freq; /* RoPE (head_dim / 2) */
    Matrix embed;          /* the token table: a row per token id */
    const float *final_norm;
    Matrix head;
    const Layer *layers;
} Model;

static int64_t row_bytes(const Matrix *m) { /* bytes of one stored row of w */
    switch (m->kind) {
    case 32: return m->in * 4;
    case 16: return m->in * 2;
    case 4: return (m->in + 63) / 64 * 32;
    default: return m->in;
    }
}

/* row `id` of the table as fp32 */
static void embedding_row(const Matrix *m, int64_t id, float *x) {
    const uint8_t *row = (const uint8_t *)m->w + id * row_bytes(m);
    if (m->kind == 32) {
        memcpy(x, row, (size_t)m->in * sizeof(float));
    } else if (m->kind == 16) {
        for (int64_t i = 0; i < m->in; i++) x[i] = bf16_to_f32(((const uint16_t *)row)[i]);
    } else {
        const int64_t groups = (m->in + m->group - 1) / m->group;
        llmkit_dequantize((int)m->kind, row, m->scales + id * groups, m->mins ? m->mins + id * groups : NULL, 1, m->in,
                          m->group, x, 1, 0);
    }
}

static void f32_matvec_team(const float *x, const Matrix *m, float *y) {
    const float *w = (const float *)m->w;
    const int64_t in = m->in;
#pragma omp for schedule(static)
    for (int64_t o = 0; o < m->out; o++) {
        const float *row = w + o * in;
        float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
        for (int64_t i = 0; i < in; i++) acc += row[i] * x[i];
        y[o] = acc;
    }
}

/* Scratch the quantized kernels share within a step: x padded to whole chunks, and its group sums. */
typedef struct { float *x, *sums; } Scratch;

/* y_i = x @ W_i.T (+ bias_i) for `count` matrices reading the same x (one row), by every thread of the
 * enclosing region: quantized ones of one format share one kernel pass. Ends with a barrier. */
static void matvec_many_team(const float *x, const Matrix *const *ms, int count, float *const *ys, const Scratch *sc) {
    const Matrix *m0 = ms[0];
    int same = m0->kind == 4 || m0->kind == 8;
    for (int i = 1; i < count && same; i++)
        same = ms[i]->kind == m0->kind && ms[i]->group == m0->group && (ms[i]->mins == NULL) == (m0->mins == NULL);
    if (same) {
        const void *q[4];
        const uint16_t *s[4], *mn[4];
        int64_t outs[4];
        for (int i = 0; i < count; i++) {
            q[i] = ms[i]->w;
            s[i] = ms[i]->scales;
            mn[i] = ms[i]->mins;
            outs[i] = ms[i]->out;
        }
        llmkit_quantized_matvec_team(x, m0->in, (int)m0->kind, count, q, s, mn, outs, m0->group, ys, sc->x, sc->sums);
    } else {
        for (int i = 0; i < count; i++) {
            const Matrix *m = ms[i];
            if (m->kind == 32) f32_matvec_team(x, m, ys[i]);
            else if (m->kind == 16) llmkit_bf16_matmul_team(x, 1, m->in, (const uint16_t *)m->w, m->out, ys[i]);
            else matvec_many_team(x, &ms[i], 1, &ys[i], sc);
        }
    }
    int biased = 0;
    for (int i = 0; i < count; i++) biased |= ms[i]->bias != NULL;
    if (biased) {
#pragma omp single
        for (int i = 0; i < count; i++)
            if (ms[i]->bias)
                for (int64_t o = 0; o < ms[i]->out; o++) ys[i][o] += ms[i]->bias[o];
    }
}

static void matvec_team(const float *x, const Matrix *m, float *y, const Scratch *sc) {
    matvec_many_team(x, &m, 1, &y, sc);
}

/* out = weight * x / sqrt(mean(x^2) + eps) (llmkit.models.layers.RMSNorm in fp32) */
static void rms_norm(const float *x, const float *weight, int64_t n, float eps, float *out) {
    float ss = 0.0f;
    for (int64_t i = 0; i < n; i++) ss += x[i] * x[i];
    const float r = 1.0f / sqrtf(ss / (float)n + eps);
    for (int64_t i = 0; i < n; i++) out[i] = weight[i] * (x[i] * r);
}

/* rotate-half RoPE (Hugging Face Llama's layout) of `heads` vectors of head_dim at position pos */
static void rope(float *x, int64_t heads, int64_t head_dim, const float *cos_, const float *sin_) {
    const int64_t half = head_dim / 2;
    for (int64_t h = 0; h < heads; h++) {
        float *v = x + h * head_dim;
        for (int64_t d = 0; d < half; d++) {
            const float a = v[d], b = v[d + half];
            v[d] = a * cos_[d] - b * sin_[d];
            v[d + half] = b * cos_[d + half] + a * sin_[d + half];
        }
    }
}

static void cache_store(void *cache, int64_t cache_bf16, int64_t offset, const float *v, int64_t n) {
    if (cache_bf16)
        for (int64_t i = 0; i < n; i++) ((uint16_t *)cache)[offset + i] = f32_to_bf16(v[i]);
    else memcpy((float *)cache + offset, v, (size_t)n * sizeof(float));
}

/* v[i] = exp(v[i] - shift) for i < n; returns their sum. AVX-512: 16 at a time, exp(r) on |r| <= ln 2 / 2 by
 * its Taylor polynomial to degree 7 (relative error < 2e-8, below fp32's rounding) times 2^k (vscalefps);
 * expf elsewhere. Scalar expf had the softmax and SiLU of a step on one thread. */
static float exp_shifted(float *v, int64_t n, float shift) {
    float total = 0.0f;
    int64_t i = 0;
#if defined(__AVX512F__)
    const __m512 log2e = _mm512_set1_ps(1.44269504088896341f), ln2_hi = _mm512_set1_ps(0.693359375f);
    const __m512 ln2_lo = _mm512_set1_ps(-2.12194440e-4f), lo = _mm512_set1_ps(-103.0f), hi = _mm512_set1_ps(88.7f);
    const __m512 c[8] = {_mm512_set1_ps(1.0f / 5040), _mm512_set1_ps(1.0f / 720), _mm512_set1_ps(1.0f / 120),
                         _mm512_set1_ps(1.0f / 24), _mm512_set1_ps(1.0f / 6), _mm512_set1_ps(0.5f),
                         _mm512_set1_ps(1.0f), _mm512_set1_ps(1.0f)};
    __m512 sum = _mm512_setzero_ps();
    for (; i + 16 <= n; i += 16) {
        __m512 x = _mm512_sub_ps(_mm512_loadu_ps(v + i), _mm512_set1_ps(shift));
        x = _mm512_min_ps(_mm512_max_ps(x, lo), hi);
        __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        __m512 r = _mm512_fnmadd_ps(k, ln2_hi, x);
        r = _mm512_fnmadd_ps(k, ln2_lo, r);
        __m512 p = c[0];
        for (int j = 1; j < 8; j++) p = _mm512_fmadd_ps(p, r, c[j]);
        p = _mm512_scalef_ps(p, k);
        _mm512_storeu_ps(v + i, p);
        sum = _mm512_add_ps(sum, p);
    }
    total = _mm512_reduce_add_ps(sum);
#endif
    for (; i < n; i++) {
        v[i] = expf(v[i] - shift);
        total += v[i];
    }
    return total;
}

/* softmax(scale * q . k_j) . v_j over the positions j <= pos of each head's kv head (query head h reads
 * kv head h / (n_head / n_kv_head), as SDPA's enable_gqa does), heads shared out among the threads of the
 * enclosing region; scores: (n_head, pos + 1) scratch. Ends with a barrier. */
static void attend_team(const Model *m, const Layer *l, const float *q, int64_t pos, float *scores, float *out) {
    const int64_t D = m->head_dim, S = pos + 1, per_kv = m->n_head / m->n_kv_head;
#pragma omp for schedule(static)
    for (int64_t h = 0; h < m->n_head; h++) {
        const int64_t base = (h / per_kv) * m->max_len * D;
        const float *qh = q + h * D;
        float *s = scores + h * S, *o = out + h * D, best = -INFINITY;
        for (int64_t j = 0; j < S; j++) {
            float dot = 0.0f;
            if (m->cache_bf16) {
                const uint16_t *k = (const uint16_t *)l->k_cache + base + j * D;
#pragma omp simd reduction(+ : dot)
                for (int64_t d = 0; d < D; d++) dot += qh[d] * bf16_to_f32(k[d]);
            } else {
                const float *k = (const float *)l->k_cache + base + j * D;
#pragma omp simd reduction(+ : dot)
                for (int64_t d = 0; d < D; d++) dot += qh[d] * k[d];
            }
            s[j] = dot * m->attn_scale;
            best = s[j] > best ? s[j] : best;
        }
        const float total = exp_shifted(s, S, best);
        for (int64_t d = 0; d < D; d++) o[d] = 0.0f;
        for (int64_t j = 0; j < S; j++) { /* separate loops per cache dtype: each vectorises over d */
            const float p = s[j];
            if (m->cache_bf16) {
                const uint16_t *v = (const uint16_t *)l->v_cache + base + j * D;
#pragma omp simd
                for (int64_t d = 0; d < D; d++) o[d] += p * bf16_to_f32(v[d]);
            } else {
                const float *v = (const float *)l->v_cache + base + j * D;
#pragma omp simd
                for (int64_t d = 0; d < D; d++) o[d] += p * v[d];
            }
        }
        for (int64_t d = 0; d < D; d++) o[d] /= total;
    }
}

/* gate[f] = silu(gate[f]) * up[f], the rows shared out among the threads of the region (Qwen2.5-0.5B: 4864 a
 * layer, ~1 ms a step of expf on one thread while the other waited). Ends with a barrier. */
static void swiglu_team(float *gate, const float *up, int64_t n) {
    const int64_t block = 256, blocks = (n + block - 1) / block;
#pragma omp for schedule(static)
    for (int64_t b = 0; b < blocks; b++) {
        const int64_t start = b * block, len = start + block <= n ? block : n - start;
        float e[256];
        for (int64_t i = 0; i < len; i++) e[i] = -gate[start + i];
        exp_shifted(e, len, 0.0f); /* exp(-g) */
        for (int64_t i = 0; i < len; i++) gate[start + i] = gate[start + i] / (1.0f + e[i]) * up[start + i];
    }
}

/* The next-token logits (vocab) after `token` at position `pos` (0-based; positions < pos are in the
 * cache, and this token's keys and values are written at pos). One parallel region for the whole token:
 * the matrix products and attention share out their rows among its threads, the little between them runs
 * on one (omp single), and the threads wait for each other at barriers, spinning: a region per matrix woke
 * sleeping threads each time (SmolLM2 int8: 9.5 -> 7.6 ms a step when they never sleep). Returns 0, or -1
 * when out of memory. */
int llmkit_decode_step(const Model *m, int64_t token, int64_t pos, float *logits, int threads) {
    const int64_t C = m->d_model, D = m->head_dim, H = m->n_head, K = m->n_kv_head;
    const int64_t F = m->layers[0].gate.out, half = D / 2;
    int64_t widest = C > F ? C : F;
    widest = widest > H * D ? widest : H * D;
    widest = (widest + 63) / 64 * 64;
    const int64_t sizes[] = {C, C, H * D, K * D, K * D, H * D, C, F, F, H * (pos + 1), D, D, widest, widest};
    int64_t total = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) total += sizes[i];
    float *work = malloc((size_t)total * sizeof(float));
    if (!work) return -1;
    float *x = work, *h = x + C, *q = h + C, *k = q + H * D, *v = k + K * D, *att = v + K * D, *proj = att + H * D;
    float *gate = proj + C, *up = gate + F, *scores = up + F, *cos_ = scores + H * (pos + 1), *sin_ = cos_ + D;
    const Scratch sc = {sin_ + D, sin_ + D + widest};
    for (int64_t d = 0; d < half; d++) { /* angles as llmkit.models.layers.Rotary: fp32 pos * inv_freq */
        const float angle = (float)pos * m->inv_freq[d];
        cos_[d] = cos_[d + half] = cosf(angle);
        sin_[d] = sin_[d + half] = sinf(angle);
    }
    embedding_row(&m->embed, token, x);
#pragma omp parallel num_threads(threads)
    {
        for (int64_t i = 0; i < m->n_layer; i++) {
            const Layer *l = &m->layers[i];
#pragma omp single
            rms_norm(x, l->attn_norm, C, m->norm_eps, h);
            const Matrix *qkv[3] = {&l->q, &l->k, &l->v};
            float *qkv_out[3] = {q, k, v};
            matvec_many_team(h, qkv, 3, qkv_out, &sc);
#pragma omp single
            {
                rope(q, H, D, cos_, sin_);
                rope(k, K, D, cos_, sin_);
                for (int64_t j = 0; j < K; j++) {
                    cache_store(l->k_cache, m->cache_bf16, (j * m->max_len + pos) * D, k + j * D, D);
                    cache_store(l->v_cache, m->cache_bf16, (j * m->max_len + pos) * D, v + j * D, D);
                }
            }
            attend_team(m, l, q, pos, scores, att);
            matvec_team(att, &l->o, proj, &sc);
#pragma omp single
            {
                for (int64_t c = 0; c < C; c++) x[c] += proj[c];
                rms_norm(x, l->mlp_norm, C, m->norm_eps, h);
            }
            const Matrix *gu[2] = {&l->gate, &l->up};
            float *gu_out[2] = {gate, up};
            matvec_many_team(h, gu, 2, gu_out, &sc);
            swiglu_team(gate, up, F);
            matvec_team(gate, &l->down, proj, &sc);
#pragma omp single
            for (int64_t c = 0; c < C; c++) x[c] += proj[c];
        }
#pragma omp single
        rms_norm(x, m->final_norm, C, m->norm_eps, h);
        matvec_team(h, &m->head, logits, &sc);
    }
    free(work);
    return 0;
}
