// cpu_attention_tasks.inc over AVX2 and FMA (this file is compiled with -mavx2 -mfma; it runs only where
// cpu_attention.cpp found both and no AVX-512, or where EAGLEX_CPU_ATTENTION=avx2 asks for it).
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include "cpu_attention.h"

namespace eaglex::avx2 {

struct Simd {
  using F = __m256;
  using M = uint32_t;  // one bit a lane
  static constexpr int W = 8, kRegisters = 16;

  static __m256 lanes(M m) {  // the mask as a vector: all ones in m's lanes
    const __m256i bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    return _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(int(m)), bit), bit));
  }
  static F zero() { return _mm256_setzero_ps(); }
  static F set1(float x) { return _mm256_set1_ps(x); }
  static F load(const float *p) { return _mm256_loadu_ps(p); }
  static F load(M m, const float *p) { return _mm256_maskload_ps(p, _mm256_castps_si256(lanes(m))); }
  static void store(float *p, F x) { _mm256_storeu_ps(p, x); }
  static void store(float *p, M m, F x) { _mm256_maskstore_ps(p, _mm256_castps_si256(lanes(m)), x); }
  static F add(F a, F b) { return _mm256_add_ps(a, b); }
  static F add(F a, M m, F b) { return _mm256_blendv_ps(a, _mm256_add_ps(a, b), lanes(m)); }
  static F sub(F a, F b) { return _mm256_sub_ps(a, b); }
  static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static F div(F a, F b) { return _mm256_div_ps(a, b); }
  static F fmadd(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static F max(F a, M m, F b) { return _mm256_blendv_ps(a, _mm256_max_ps(a, b), lanes(m)); }
  static M first(int64_t n) { return n >= 8 ? M(0xFF) : M((1u << n) - 1); }
  static M finite(M m, F x) {
    F minus_infinity = set1(-std::numeric_limits<float>::infinity());
    return m & M(_mm256_movemask_ps(_mm256_cmp_ps(x, minus_infinity, _CMP_NEQ_OQ)));
  }
  static void compress(float *out, M m, F x) {
    if (m == 0xFF) return store(out, x);
    alignas(32) float all[8];
    _mm256_store_ps(all, x);
    for (int lane = 0; m; ++lane, m >>= 1)
      if (m & 1) *out++ = all[lane];
  }
  static void compress_columns(int32_t *out, M m, int32_t first) {
    for (int lane = 0; m; ++lane, m >>= 1)
      if (m & 1) *out++ = first + lane;
  }
  static int64_t count(M m) { return __builtin_popcount(m); }
  static __m128 halves(F x) { return _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1)); }
  static float reduce_add(F x) {  // a fixed tree: distance 4, 2, 1
    __m128 h = halves(x);
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    return _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
  }
  static float reduce_max(F x) {
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    return _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)));
  }

  // Scores of 8 consecutive key columns against q (C chunks of 8 floats): per column, one FMA chain over
  // the chunks, then its 8 lanes summed by a fixed tree (distance 4, 2, 1) for the 8 columns at once.
  template <int C>
  static F scores(const F *q, const float *k, int64_t stride) {
    F v[8];
    for (int c = 0; c < 8; ++c) {
      const float *col = k + c * stride;
      v[c] = _mm256_mul_ps(q[0], _mm256_loadu_ps(col));
      for (int i = 1; i < C; ++i) v[c] = _mm256_fmadd_ps(q[i], _mm256_loadu_ps(col + 8 * i), v[c]);
    }
    F u[4], t[2];
    for (int i = 0; i < 4; ++i)  // halves: column i, column i + 4; lanes l + l+4
      u[i] = _mm256_add_ps(_mm256_permute2f128_ps(v[i], v[i + 4], 0x20), _mm256_permute2f128_ps(v[i], v[i + 4], 0x31));
    for (int i = 0; i < 2; ++i)
      t[i] = _mm256_add_ps(_mm256_shuffle_ps(u[i], u[i + 2], 0x44), _mm256_shuffle_ps(u[i], u[i + 2], 0xEE));
    F r = _mm256_add_ps(_mm256_shuffle_ps(t[0], t[1], 0x88), _mm256_shuffle_ps(t[0], t[1], 0xDD));
    // r's lanes hold columns 0 2 1 3, 4 6 5 7: back to 0..7.
    return _mm256_permutevar8x32_ps(r, _mm256_setr_epi32(0, 2, 1, 3, 4, 6, 5, 7));
  }

  // e^x for x <= 0, as the AVX-512 variant; 2^n goes into the exponent bits (n >= -126 after the clamp).
  static F exp_nonpositive(F x) {
    x = _mm256_max_ps(x, set1(-87.0f));
    F n = _mm256_round_ps(_mm256_mul_ps(x, set1(1.44269504f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    F r = _mm256_fnmadd_ps(n, set1(0.693145752f), x);
    r = _mm256_fnmadd_ps(n, set1(1.42860677e-6f), r);
    F p = set1(1.0f / 720);
    for (float c : {1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f}) p = _mm256_fmadd_ps(p, r, set1(c));
    __m256i exponent = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(exponent));
  }
};

#include "cpu_attention_tasks.inc"

}  // namespace eaglex::avx2
