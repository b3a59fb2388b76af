/* The elementwise work of a CPU decode step, fused: one call where eager PyTorch runs 5-15 small ops.
 *
 * At one new token per row the matrices are a third of a decode step; the rest was ~30 eager ops a layer,
 * each a few microseconds of dispatch for a few hundred floats of work. These kernels do that work in one pass
 * each, single-threaded (the matrices keep torch's OpenMP team). Loaded with ctypes (cpu_kernels.py), so
 * they take raw pointers: every tensor contiguous, fp32 unless its flag says bf16 (the int4/int8 kernels'
 * activation dtype). bf16 is rounded to nearest even, as torch's casts round.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    u = (u & 0x7fffffffu) > 0x7f800000u ? (u | 0x00400000u) : u + 0x7fffu + ((u >> 16) & 1u);  /* NaN stays NaN */
    return (uint16_t)(u >> 16);
}

static inline float load(const void *p, int bf16, int64_t i) {
    return bf16 ? bf16_to_f32(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

static inline void store(void *p, int bf16, int64_t i, float f) {
    if (bf16)
        ((uint16_t *)p)[i] = f32_to_bf16(f);
    else
        ((float *)p)[i] = f;
}

/* x += delta (when given), then out = x * rsqrt(mean(x^2) + eps) * w: the residual add of the sublayer before
 * and the RMSNorm of the one after, per row of `dim`. */
void kwasi_add_rms_norm(float *x, const void *delta, int delta_bf16, const float *w, float eps, int64_t rows,
                        int64_t dim, void *out, int out_bf16) {
    for (int64_t r = 0; r < rows; r++) {
        float *xr = x + r * dim;
        if (delta) {
#pragma omp simd
            for (int64_t i = 0; i < dim; i++) xr[i] += load(delta, delta_bf16, r * dim + i);
        }
        float squares = 0.f;
#pragma omp simd reduction(+ : squares)
        for (int64_t i = 0; i < dim; i++) squares += xr[i] * xr[i];
        float scale = 1.0f / sqrtf(squares / (float)dim + eps);
#pragma omp simd
        for (int64_t i = 0; i < dim; i++) store(out, out_bf16, r * dim + i, xr[i] * scale * w[i]);
    }
}

/* out = silu(gate) * up for rows of [gate | up], each `ffn` wide. */
void kwasi_silu_mul(const void *gate_up, int in_bf16, int64_t rows, int64_t ffn, void *out, int out_bf16) {
    for (int64_t r = 0; r < rows; r++)
        for (int64_t i = 0; i < ffn; i++) {
            float g = load(gate_up, in_bf16, r * 2 * ffn + i), u = load(gate_up, in_bf16, r * 2 * ffn + ffn + i);
            store(out, out_bf16, r * ffn + i, g / (1.0f + expf(-g)) * u);
        }
}

/* One new token per row b, at position pos[b] of cache row slot0 + b. qkv rows are [q heads | k heads | v heads]
 * of `head_dim`. RoPE (cos and *signed* sin tables [len, head_dim]: out = x*cos + roll(x, head_dim/2)*sin)
 * rotates q and k; k and v are written into the fp32 caches [slots, kv_heads, len, head_dim].
 * With attend, out [rows, heads*head_dim] is the attention of each q head over positions lo..pos[b] of its KV
 * head (lo = pos - window + 1 for a sliding window, else 0); without, out is the rotated q [rows, heads,
 * head_dim] in fp32, for an attention computed elsewhere (long spans, where torch's threads win).
 * Returns 1, having written nothing, when a row or position lies outside the caches' `slots` x `len`. */
int kwasi_rope_attend(const void *qkv, int qkv_bf16, int64_t rows, const int64_t *pos, const float *cos,
                      const float *sin, float *keys, float *values, int64_t slots, int64_t slot0, int64_t heads,
                      int64_t kv_heads, int64_t head_dim, int64_t len, int64_t window, int attend, void *out,
                      int out_bf16) {
    if (slot0 < 0 || rows < 0 || slot0 + rows > slots || heads % kv_heads || head_dim % 2) return 1;
    for (int64_t b = 0; b < rows; b++)
        if (pos[b] < 0 || pos[b] >= len) return 1;
    const int64_t half = head_dim / 2, width = (heads + 2 * kv_heads) * head_dim, group = heads / kv_heads;
    const float scale = 1.0f / sqrtf((float)head_dim);
    float *q = malloc(sizeof(float) * (size_t)(heads * head_dim + len + head_dim));
    if (!q) abort();
    float *scores = q + heads * head_dim, *acc = scores + len;
    for (int64_t b = 0; b < rows; b++) {
        const int64_t p = pos[b], slot = slot0 + b, row = b * width;
        const float *c = cos + p * head_dim, *s = sin + p * head_dim;
        for (int64_t h = 0; h < heads + kv_heads; h++) {
            float *dst = h < heads ? (attend ? q : (float *)out + b * heads * head_dim) + h * head_dim
                                   : keys + ((slot * kv_heads + (h - heads)) * len + p) * head_dim;
            const int64_t at = row + h * head_dim;
            for (int64_t i = 0; i < head_dim; i++) {
                const float rolled = load(qkv, qkv_bf16, at + (i < half ? i + half : i - half));
                dst[i] = load(qkv, qkv_bf16, at + i) * c[i] + rolled * s[i];
            }
        }
        for (int64_t g = 0; g < kv_heads; g++) {
            float *dst = values + ((slot * kv_heads + g) * len + p) * head_dim;
            const int64_t at = row + (heads + kv_heads + g) * head_dim;
            for (int64_t i = 0; i < head_dim; i++) dst[i] = load(qkv, qkv_bf16, at + i);
        }
        if (!attend) continue;
        const int64_t lo = window > 0 && p + 1 > window ? p + 1 - window : 0;
        for (int64_t h = 0; h < heads; h++) {
            const int64_t kv = (slot * kv_heads + h / group) * len * head_dim;
            const float *qh = q + h * head_dim, *kb = keys + kv, *vb = values + kv;
            float top = -INFINITY, total = 0.f;
            for (int64_t j = lo; j <= p; j++) {
                const float *kj = kb + j * head_dim;
                float dot = 0.f;
#pragma omp simd reduction(+ : dot)
                for (int64_t i = 0; i < head_dim; i++) dot += qh[i] * kj[i];
                scores[j] = dot * scale;
                top = scores[j] > top ? scores[j] : top;
            }
            for (int64_t j = lo; j <= p; j++) {
                scores[j] = expf(scores[j] - top);
                total += scores[j];
            }
            for (int64_t i = 0; i < head_dim; i++) acc[i] = 0.f;
            for (int64_t j = lo; j <= p; j++) {
                const float *vj = vb + j * head_dim, e = scores[j];
#pragma omp simd
                for (int64_t i = 0; i < head_dim; i++) acc[i] += e * vj[i];
            }
            for (int64_t i = 0; i < head_dim; i++) store(out, out_bf16, (b * heads + h) * head_dim + i, acc[i] / total);
        }
    }
    free(q);
    return 0;
}
