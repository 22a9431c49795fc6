// eaglex.cpu::MatMulNBits: onnxruntime's com.microsoft.MatMulNBits for 4-bit symmetric blocks with float32
// activations (accuracy_level 0 or 1, no zero points, no bias), for the few rows of a verify pass.
// exporter/int4_matmul.py marks the nodes; the graph defines the op as an ONNX function that calls
// onnxruntime's, which runs wherever this kernel is not registered.
//
// Why: onnxruntime's MatMulNBits with float32 activations has a one-row kernel that reads the 4-bit weights
// as they are, but for two rows or more it dequantizes every weight into a float buffer first: an int4
// SmolLM2 target pass costs 5.5 ms at one row and 16.8 ms at two (2-core Zen 5), which makes speculation
// slower than plain decoding at int4. Here (AVX-512, or AVX2 + FMA) the weights are repacked at load in
// panels of 16 columns (two k's a byte, the 16 columns' bytes side by side) and each pair of k's is unpacked
// into floats once for a block of up to 8 rows (AVX2: 4), whose FMAs then share it: a target pass costs
// 0.79-0.86x onnxruntime's at one row, 0.34x at two, 0.40-0.42x at four, 0.49-0.52x at eight
// (docs/BENCHMARKS.md, eighth sitting). The loops over a block's rows are unrolled first: GCC 12 otherwise
// keeps the accumulators in memory, which is why blocks of 4 and 8 rows first measured slower than 2.
//
// Each output is sum over blocks, in order, of scale x (one FMA chain over the block's k in order of
// a[k] (q[k] - 8)): the same float operations whatever the number of rows or threads, so a row's result does
// not depend on the rows verified with it (lossless by construction, as the float32 kernel).
#include <immintrin.h>

// GCC 12 warns about the undefined vectors inside its own AVX-512 conversions.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "core.h"

namespace eaglex {
namespace {

constexpr int64_t kPanel = 16;  // columns per panel: one AVX-512 register

struct Free {
  void operator()(void *p) const { std::free(p); }
};

struct Kernel {
  int64_t K = 0, N = 0, block = 0, blocks = 0;
  std::unique_ptr<uint8_t, Free> weights;  // [N / 16, K / 2, 16]: column j's byte holds k (low) and k + 1
  std::unique_ptr<float, Free> scales;     // [N / 16, blocks, 16]

  bool avx2 = false;  // the AVX2 + FMA variant (panel_avx2) instead of AVX-512

  Kernel(const OrtKernelInfo *info, bool avx2) : avx2(avx2) {
    Ort::ConstKernelInfo kinfo(info);
    K = kinfo.GetAttribute<int64_t>("K"), N = kinfo.GetAttribute<int64_t>("N");
    block = kinfo.GetAttribute<int64_t>("block_size");
    int bq = 0, sq = 0;
    Ort::ConstValue b = kinfo.GetTensorConstantInput(1, &bq), s = kinfo.GetTensorConstantInput(2, &sq);
    if (!bq || !sq || kinfo.GetAttribute<int64_t>("bits") != 4 || N % kPanel || K % block || block % 2)
      throw Ort::Exception("eaglex.cpu.MatMulNBits: constant 4-bit weights and scales, N of 16k and K of "
                           "whole blocks only (what exporter/int4_matmul.py marks)", ORT_INVALID_ARGUMENT);
    blocks = K / block;
    const uint8_t *src = b.GetTensorData<uint8_t>();  // [N, blocks, block / 2]
    const float *scale = s.GetTensorData<float>();    // [N, blocks]
    weights.reset(static_cast<uint8_t *>(std::aligned_alloc(64, size_t(N * K / 2))));
    scales.reset(static_cast<float *>(std::aligned_alloc(64, size_t(N * blocks) * sizeof(float))));
    if (!weights || !scales) throw Ort::Exception("eaglex.cpu.MatMulNBits: out of memory", ORT_FAIL);
    for (int64_t n = 0; n < N; ++n) {
      int64_t p = n / kPanel, j = n % kPanel;
      for (int64_t pair = 0; pair < K / 2; ++pair)  // byte `pair` of column n: k = 2 pair (low), 2 pair + 1
        weights.get()[(p * (K / 2) + pair) * kPanel + j] = src[n * (K / 2) + pair];
      for (int64_t kb = 0; kb < blocks; ++kb) scales.get()[(p * blocks + kb) * kPanel + j] = scale[n * blocks + kb];
    }
  }

  // Rows [0, M) (M <= 8) of A against panel p: per block, the block's FMA chains, then times its scale.
  template <int M>
  __attribute__((target("avx512f"))) void panel(const float *a, int64_t p, float *y) const {
    const uint8_t *w = weights.get() + p * (K / 2) * kPanel;
    const float *s = scales.get() + p * blocks * kPanel;
    const __m512i low = _mm512_set1_epi32(0xF);
    const __m512 eight = _mm512_set1_ps(8.0f);
    __m512 acc[M];
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m) acc[m] = _mm512_setzero_ps();
    for (int64_t kb = 0; kb < blocks; ++kb) {
      __m512 part[M];
#pragma GCC unroll 8
      for (int m = 0; m < M; ++m) part[m] = _mm512_setzero_ps();
      for (int64_t k = kb * block; k < (kb + 1) * block; k += 2) {
        __m512i bytes = _mm512_cvtepu8_epi32(_mm_load_si128(reinterpret_cast<const __m128i *>(w + k / 2 * kPanel)));
        __m512 even = _mm512_sub_ps(_mm512_cvtepi32_ps(_mm512_and_si512(bytes, low)), eight);
        __m512 odd = _mm512_sub_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(bytes, 4)), eight);
#pragma GCC unroll 8
        for (int m = 0; m < M; ++m) {
          part[m] = _mm512_fmadd_ps(_mm512_set1_ps(a[m * K + k]), even, part[m]);
          part[m] = _mm512_fmadd_ps(_mm512_set1_ps(a[m * K + k + 1]), odd, part[m]);
        }
      }
      __m512 scale = _mm512_load_ps(s + kb * kPanel);
#pragma GCC unroll 8
      for (int m = 0; m < M; ++m) acc[m] = _mm512_fmadd_ps(part[m], scale, acc[m]);
    }
    for (int m = 0; m < M; ++m) _mm512_storeu_ps(y + m * N + p * kPanel, acc[m]);
  }

  // panel() with AVX2 + FMA: the panel's 16 columns as two halves of 8, both in one pass over k for up to 2
  // rows, one after the other for 4 (so that they fit the 16 registers); the same float operations per output.
  template <int M>
  __attribute__((target("avx2,fma"))) void panel_avx2(const float *a, int64_t p, float *y) const {
    constexpr int H = M <= 2 ? 2 : 1;  // halves per pass over k
    const uint8_t *w = weights.get() + p * (K / 2) * kPanel;
    const float *s = scales.get() + p * blocks * kPanel;
    const __m256i low = _mm256_set1_epi32(0xF);
    const __m256 eight = _mm256_set1_ps(8.0f);
    for (int first = 0; first < 2; first += H) {
      __m256 acc[M][H];
#pragma GCC unroll 8
      for (int m = 0; m < M; ++m)
#pragma GCC unroll 2
        for (int h = 0; h < H; ++h) acc[m][h] = _mm256_setzero_ps();
      for (int64_t kb = 0; kb < blocks; ++kb) {
        __m256 part[M][H];
#pragma GCC unroll 8
        for (int m = 0; m < M; ++m)
#pragma GCC unroll 2
          for (int h = 0; h < H; ++h) part[m][h] = _mm256_setzero_ps();
        for (int64_t k = kb * block; k < (kb + 1) * block; k += 2) {
#pragma GCC unroll 2
          for (int h = 0; h < H; ++h) {
            const void *bytes = w + k / 2 * kPanel + 8 * (first + h);
            __m256i x = _mm256_cvtepu8_epi32(_mm_loadl_epi64(static_cast<const __m128i *>(bytes)));
            __m256 even = _mm256_sub_ps(_mm256_cvtepi32_ps(_mm256_and_si256(x, low)), eight);
            __m256 odd = _mm256_sub_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(x, 4)), eight);
#pragma GCC unroll 8
            for (int m = 0; m < M; ++m) {
              part[m][h] = _mm256_fmadd_ps(_mm256_set1_ps(a[m * K + k]), even, part[m][h]);
              part[m][h] = _mm256_fmadd_ps(_mm256_set1_ps(a[m * K + k + 1]), odd, part[m][h]);
            }
          }
        }
#pragma GCC unroll 2
        for (int h = 0; h < H; ++h) {
          __m256 scale = _mm256_load_ps(s + kb * kPanel + 8 * (first + h));
#pragma GCC unroll 8
          for (int m = 0; m < M; ++m) acc[m][h] = _mm256_fmadd_ps(part[m][h], scale, acc[m][h]);
        }
      }
#pragma GCC unroll 8
      for (int m = 0; m < M; ++m)
#pragma GCC unroll 2
        for (int h = 0; h < H; ++h) _mm256_storeu_ps(y + m * N + p * kPanel + 8 * (first + h), acc[m][h]);
    }
  }

  struct Job {
    const Kernel *self;
    const float *a;
    float *y;
    int64_t M;
  };

  // Rows [m, m + M) against panel p, in the variant this kernel runs (AVX2 takes at most 4 rows).
  template <int M>
  void rows(const Job &job, int64_t m, int64_t p) const {
    if constexpr (M <= 4)
      if (avx2) return panel_avx2<M>(job.a + m * K, p, job.y + m * N);
    panel<M>(job.a + m * K, p, job.y + m * N);
  }

  // Task t: every row against panel t, 8 rows at a time (4 with AVX2), then 4, 2, 1: the panel's bytes
  // come from cache after the first block, and each unpacked pair of k's serves the block's rows.
  static void run_panel(void *data, size_t t) {
    const Job &job = *static_cast<Job *>(data);
    const Kernel &k = *job.self;
    int64_t m = 0, p = int64_t(t);
    for (; !k.avx2 && m + 8 <= job.M; m += 8) k.rows<8>(job, m, p);
    for (; m + 4 <= job.M; m += 4) k.rows<4>(job, m, p);
    if (job.M - m >= 2) k.rows<2>(job, m, p), m += 2;
    if (job.M - m >= 1) k.rows<1>(job, m, p);
  }

  void Compute(OrtKernelContext *context) {
    Ort::KernelContext ctx(context);
    Ort::ConstValue a = ctx.GetInput(0);
    auto shape = a.GetTensorTypeAndShapeInfo().GetShape();
    if (shape.empty() || shape.back() != K)
      throw Ort::Exception("eaglex.cpu.MatMulNBits: A's last dimension must be K", ORT_INVALID_ARGUMENT);
    int64_t M = 1;
    for (size_t i = 0; i + 1 < shape.size(); ++i) M *= shape[i];
    shape.back() = N;
    Ort::UnownedValue out = ctx.GetOutput(0, shape);
    if (M == 0) return;
    Job job{this, a.GetTensorData<float>(), out.GetTensorMutableData<float>(), M};
    ctx.ParallelFor(&Kernel::run_panel, size_t(N / kPanel), 0, &job);
  }
};

struct Op : Ort::CustomOpBase<Op, Kernel> {
  bool avx2;
  explicit Op(bool avx2) : avx2(avx2) {}
  void *CreateKernel(const OrtApi &, const OrtKernelInfo *info) const { return new Kernel(info, avx2); }
  const char *GetName() const { return "MatMulNBits"; }
  size_t GetInputTypeCount() const { return 3; }
  ONNXTensorElementDataType GetInputType(size_t i) const {
    return i == 1 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
};

}  // namespace

void add_int4_matmul(Ort::CustomOpDomain &domain, bool avx2) {
  static Op wide(false), narrow(true);
  domain.Add(avx2 ? &narrow : &wide);
}

}  // namespace eaglex
