// cpu_attention_tasks.inc over AVX-512 (this file is compiled with -mavx512f -mfma; it runs only where
// cpu_attention.cpp found AVX-512).
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include "cpu_attention.h"

// GCC 12 warns about the undefined vectors inside its own AVX-512 reductions.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace eaglex::avx512 {

struct Simd {
  using F = __m512;
  using M = __mmask16;
  static constexpr int W = 16, kRegisters = 32;

  static F zero() { return _mm512_setzero_ps(); }
  static F set1(float x) { return _mm512_set1_ps(x); }
  static F load(const float *p) { return _mm512_loadu_ps(p); }
  static F load(M m, const float *p) { return _mm512_maskz_loadu_ps(m, p); }
  static void store(float *p, F x) { _mm512_storeu_ps(p, x); }
  static void store(float *p, M m, F x) { _mm512_mask_storeu_ps(p, m, x); }
  static F add(F a, F b) { return _mm512_add_ps(a, b); }
  static F add(F a, M m, F b) { return _mm512_mask_add_ps(a, m, a, b); }  // a + b in m's lanes, a elsewhere
  static F sub(F a, F b) { return _mm512_sub_ps(a, b); }
  static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static F div(F a, F b) { return _mm512_div_ps(a, b); }
  static F fmadd(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static F max(F a, M m, F b) { return _mm512_mask_max_ps(a, m, a, b); }
  static M first(int64_t n) { return n >= 16 ? M(0xFFFF) : M((1u << n) - 1); }
  static M finite(M m, F x) {  // the lanes of m where x is not -inf
    return _mm512_mask_cmp_ps_mask(m, x, set1(-std::numeric_limits<float>::infinity()), _CMP_NEQ_OQ);
  }
  static void compress(float *out, M m, F x) { _mm512_mask_compressstoreu_ps(out, m, x); }
  static void compress_columns(int32_t *out, M m, int32_t first) {
    __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    _mm512_mask_compressstoreu_epi32(out, m, _mm512_add_epi32(_mm512_set1_epi32(first), lanes));
  }
  static int64_t count(M m) { return __builtin_popcount(m); }
  static float reduce_add(F x) { return _mm512_reduce_add_ps(x); }
  static float reduce_max(F x) { return _mm512_reduce_max_ps(x); }

  // Scores of 16 consecutive key columns against q (C chunks of 16 floats): per column, one FMA chain over
  // the chunks, then its 16 lanes summed by a fixed tree (distance 8, 4, 2, 1), done for the 16 columns at
  // once by shuffles. Every column's score is the same float operations wherever it sits in the block.
  template <int C>
  static F scores(const F *q, const float *k, int64_t stride) {
    F v[16];
    for (int c = 0; c < 16; ++c) {
      const float *col = k + c * stride;
      v[c] = _mm512_mul_ps(q[0], _mm512_loadu_ps(col));
      for (int i = 1; i < C; ++i) v[c] = _mm512_fmadd_ps(q[i], _mm512_loadu_ps(col + 16 * i), v[c]);
    }
    F w[8], u[4], t[2];
    for (int i = 0; i < 8; ++i)  // quarters: [i: lanes l + l+8 (two quarters)] [i+8: the same]
      w[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[i], v[i + 8], 0x44), _mm512_shuffle_f32x4(v[i], v[i + 8], 0xEE));
    for (int i = 0; i < 4; ++i)  // quarters: columns i, i+8, i+4, i+12, four partial sums each
      u[i] = _mm512_add_ps(_mm512_shuffle_f32x4(w[i], w[i + 4], 0x88), _mm512_shuffle_f32x4(w[i], w[i + 4], 0xDD));
    for (int i = 0; i < 2; ++i)
      t[i] = _mm512_add_ps(_mm512_shuffle_ps(u[i], u[i + 2], 0x44), _mm512_shuffle_ps(u[i], u[i + 2], 0xEE));
    F r = _mm512_add_ps(_mm512_shuffle_ps(t[0], t[1], 0x88), _mm512_shuffle_ps(t[0], t[1], 0xDD));
    // r's lanes hold columns 0 2 1 3, 8 10 9 11, 4 6 5 7, 12 14 13 15: back to 0..15.
    const __m512i order = _mm512_setr_epi32(0, 2, 1, 3, 8, 10, 9, 11, 4, 6, 5, 7, 12, 14, 13, 15);
    return _mm512_permutexvar_ps(order, r);
  }

  // e^x for x <= 0 (scores minus their maximum): x = n ln2 + r, |r| <= ln2 / 2, e^r by its Taylor
  // polynomial of degree 6 (relative error < 2e-7), times 2^n.
  static F exp_nonpositive(F x) {
    x = _mm512_max_ps(x, set1(-87.0f));
    F n = _mm512_roundscale_ps(_mm512_mul_ps(x, set1(1.44269504f)), _MM_FROUND_TO_NEAREST_INT);
    F r = _mm512_fnmadd_ps(n, set1(0.693145752f), x);  // ln2 in two parts: r stays exact
    r = _mm512_fnmadd_ps(n, set1(1.42860677e-6f), r);
    F p = set1(1.0f / 720);
    for (float c : {1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f}) p = _mm512_fmadd_ps(p, r, set1(c));
    return _mm512_scalef_ps(p, n);
  }
};

#include "cpu_attention_tasks.inc"

}  // namespace eaglex::avx512
