// eaglex.cpu::MatMul and eaglex.cpu::MatMulTransB: onnxruntime's MatMul by a constant float32 weight, for
// the few rows of a verify pass. Y[..., N] = A[..., K] @ W with W given as B [K, N] (MatMul) or as B [N, K]
// (MatMulTransB: a tied embedding table used as lm_head). exporter/packed_matmul.py marks them; the graph
// defines both ops as ONNX functions (MatMul, Transpose + MatMul), which onnxruntime inlines where this
// kernel is not registered.
//
// Why: a verify pass multiplies T rows (the draft tree) by every weight. onnxruntime's float32 GEMM spends
// 1.7-2x a one-row pass on 8 rows on a 2-core Zen 5 (compute-bound). Here the weight is packed at load, as
// onnxruntime packs it for its own GEMM, in panels of 16 columns (P[p, k, j] = W[k, 16 p + j]); a block of
// up to 8 rows by 3 panels keeps its accumulators in AVX-512 registers, each panel is loaded once per block
// and all the rows' FMAs run from registers (docs/BENCHMARKS.md, sixth sitting). Every output is one FMA
// chain over k in order, whatever the number of rows or threads: a row's result does not depend on the
// rows verified with it, as the lossless loop needs.
//
// AVX-512, or AVX2 + FMA (`block_avx2`: the same panels, two 8-wide halves each, up to 6 rows by one panel
// in its 16 registers; the same FMA chains, so both variants give the same bits). cpu_ops.cpp registers the
// AVX-512 variant where the CPU has it and the AVX2 one only when asked (EAGLEX_PACKED_MATMUL=avx2: it
// was measured only against onnxruntime's AVX-512 GEMM); elsewhere, or with EAGLEX_PACKED_MATMUL=onnxruntime,
// it registers nothing and the function bodies run onnxruntime's MatMul.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>

#include "core.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace eaglex {
namespace {

constexpr int64_t kPanel = 16;  // columns per panel: one AVX-512 register
constexpr int64_t kGroup = 3;   // panels per block: 3 panels x 8 rows = 24 of the 32 registers accumulate

#if defined(__x86_64__)
// One block: up to 8 rows of A against P (<= 3) consecutive panels, every accumulator a register; the
// compiler unrolls the fixed counts.
template <int M, int P>
__attribute__((target("avx512f"))) void block(const float *a, int64_t K, const float *w, float *y, int64_t ldy) {
  __m512 acc[M][P];
  for (int m = 0; m < M; ++m)
    for (int p = 0; p < P; ++p) acc[m][p] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    __m512 b[P];
    for (int p = 0; p < P; ++p) b[p] = _mm512_loadu_ps(w + (p * K + k) * kPanel);
    for (int m = 0; m < M; ++m) {
      __m512 x = _mm512_set1_ps(a[m * K + k]);
      for (int p = 0; p < P; ++p) acc[m][p] = _mm512_fmadd_ps(x, b[p], acc[m][p]);
    }
  }
  for (int m = 0; m < M; ++m)
    for (int p = 0; p < P; ++p) _mm512_storeu_ps(y + m * ldy + p * kPanel, acc[m][p]);
}

// The AVX2 + FMA block: up to 6 rows of A against one panel as two 8-wide halves (12 accumulators, 2 panel
// halves and a broadcast: 15 of the 16 registers). GCC 12 keeps these accumulators in registers only with
// the loops over rows unrolled before it scalarises the array (otherwise it stores them every k).
template <int M>
__attribute__((target("avx2,fma"))) void block_avx2(const float *a, int64_t K, const float *w, float *y,
                                                    int64_t ldy) {
  __m256 acc[M][2];
#pragma GCC unroll 8
  for (int m = 0; m < M; ++m) acc[m][0] = acc[m][1] = _mm256_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    __m256 b0 = _mm256_loadu_ps(w + k * kPanel), b1 = _mm256_loadu_ps(w + k * kPanel + 8);
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m) {
      __m256 x = _mm256_set1_ps(a[m * K + k]);
      acc[m][0] = _mm256_fmadd_ps(x, b0, acc[m][0]);
      acc[m][1] = _mm256_fmadd_ps(x, b1, acc[m][1]);
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < M; ++m) {
    _mm256_storeu_ps(y + m * ldy, acc[m][0]);
    _mm256_storeu_ps(y + m * ldy + 8, acc[m][1]);
  }
}

// Every row of A against P panels with the AVX2 block, panel by panel.
void rows_avx2(const float *a, int64_t M, int64_t K, const float *w, int64_t P, float *y, int64_t ldy) {
  for (int64_t p = 0; p < P; ++p, w += K * kPanel, y += kPanel) {
    int64_t m = 0;
    // Blocks of 6, but 8 left as 4 + 4: a 2-row block's 4 accumulator chains wait on FMA latency.
    for (int64_t left = M; left >= 6 && left != 8 && left != 9; left = M - m)
      block_avx2<6>(a + m * K, K, w, y + m * ldy, ldy), m += 6;
    for (; M - m >= 4; m += 4) block_avx2<4>(a + m * K, K, w, y + m * ldy, ldy);
    if (M - m >= 2) block_avx2<2>(a + m * K, K, w, y + m * ldy, ldy), m += 2;
    if (M - m >= 1) block_avx2<1>(a + m * K, K, w, y + m * ldy, ldy);
  }
}

// Every row of A against P panels, 8 rows at a time: the panels are read from memory once, the later
// blocks of rows find them in cache.
template <int P>
void rows(const float *a, int64_t M, int64_t K, const float *w, float *y, int64_t ldy) {
  int64_t m = 0;
  for (; m + 8 <= M; m += 8) block<8, P>(a + m * K, K, w, y + m * ldy, ldy);
  if (M - m >= 4) block<4, P>(a + m * K, K, w, y + m * ldy, ldy), m += 4;
  if (M - m >= 2) block<2, P>(a + m * K, K, w, y + m * ldy, ldy), m += 2;
  if (M - m >= 1) block<1, P>(a + m * K, K, w, y + m * ldy, ldy);
}

// Once packed, a weight that onnxruntime mapped from the artifact's file is not read again, but its pages
// would stay resident (onnxruntime unmaps the weights its own GEMM packs; it cannot know that this kernel
// did). MADV_PAGEOUT asks the kernel to reclaim them: no data is lost (a page read again comes back from
// the file), so the weights are resident once, packed, as with onnxruntime's GEMM. Memory that is not a
// file mapping (onnxruntime's own copy) is left alone.
void release_if_mapped(const void *data, size_t bytes) {
  uintptr_t begin = uintptr_t(data), end = begin + bytes;
  std::ifstream maps("/proc/self/maps");
  for (std::string line; std::getline(maps, line);) {
    unsigned long lo = 0, hi = 0, inode = 0;
    char perms[8] = {0}, offset[32] = {0}, device[32] = {0};
    if (std::sscanf(line.c_str(), "%lx-%lx %7s %31s %31s %lu", &lo, &hi, perms, offset, device, &inode) != 6)
      continue;
    if (begin < lo || end > hi) continue;
    if (inode == 0) return;  // anonymous: onnxruntime's own copy
    uintptr_t page = uintptr_t(sysconf(_SC_PAGESIZE));
    uintptr_t first = (begin + page - 1) & ~(page - 1), last = end & ~(page - 1);
#ifdef MADV_PAGEOUT
    if (first < last) madvise(reinterpret_cast<void *>(first), last - first, MADV_PAGEOUT);  // a hint
#endif
    return;
  }
}

struct Aligned {
  void operator()(float *p) const { std::free(p); }
};

struct Kernel {
  std::unique_ptr<float, Aligned> packed;  // [panels, K, 16]
  int64_t panels = 0, K = 0;
  bool avx2 = false;  // block_avx2 instead of the AVX-512 blocks

  Kernel(const OrtKernelInfo *info, bool trans_b, bool avx2) : avx2(avx2) {
    Ort::ConstKernelInfo kinfo(info);
    int constant = 0;
    Ort::ConstValue b = kinfo.GetTensorConstantInput(1, &constant);
    auto shape = b.GetTensorTypeAndShapeInfo().GetShape();
    int64_t N = shape.size() == 2 ? shape[trans_b ? 0 : 1] : 0;
    if (!constant || N == 0 || N % kPanel)
      throw Ort::Exception("eaglex.cpu.MatMul: B must be a constant 2-D float32 initializer of 16k columns",
                           ORT_INVALID_ARGUMENT);
    K = shape[trans_b ? 1 : 0], panels = N / kPanel;
    packed.reset(static_cast<float *>(std::aligned_alloc(64, size_t(N * K) * sizeof(float))));
    if (!packed) throw Ort::Exception("eaglex.cpu.MatMul: out of memory packing the weight", ORT_FAIL);
    const float *src = b.GetTensorData<float>();
    float *dst = packed.get();
    for (int64_t p = 0; p < panels; ++p)
      for (int64_t k = 0; k < K; ++k)
        for (int64_t j = 0; j < kPanel; ++j) {
          int64_t n = p * kPanel + j;
          *dst++ = trans_b ? src[n * K + k] : src[k * N + n];
        }
    release_if_mapped(src, size_t(N * K) * sizeof(float));
  }

  struct Job {
    const Kernel *self;
    const float *a;
    float *y;
    int64_t M;
  };

  static void run_group(void *data, size_t g) {
    auto *job = static_cast<Job *>(data);
    const Kernel &k = *job->self;
    int64_t first = int64_t(g) * kGroup, count = std::min(kGroup, k.panels - first);
    const float *w = k.packed.get() + first * k.K * kPanel;
    float *y = job->y + first * kPanel;
    int64_t ldy = k.panels * kPanel;
    if (k.avx2) rows_avx2(job->a, job->M, k.K, w, count, y, ldy);
    else if (count == 3) rows<3>(job->a, job->M, k.K, w, y, ldy);
    else if (count == 2) rows<2>(job->a, job->M, k.K, w, y, ldy);
    else rows<1>(job->a, job->M, k.K, w, y, ldy);
  }

  void Compute(OrtKernelContext *context) {
    Ort::KernelContext ctx(context);
    Ort::ConstValue a = ctx.GetInput(0);
    auto shape = a.GetTensorTypeAndShapeInfo().GetShape();
    if (shape.empty() || shape.back() != K)
      throw Ort::Exception("eaglex.cpu.MatMul: A's last dimension must be B's K", ORT_INVALID_ARGUMENT);
    int64_t M = 1;
    for (size_t i = 0; i + 1 < shape.size(); ++i) M *= shape[i];
    shape.back() = panels * kPanel;
    Ort::UnownedValue out = ctx.GetOutput(0, shape);
    if (M == 0) return;
    Job job{this, a.GetTensorData<float>(), out.GetTensorMutableData<float>(), M};
    ctx.ParallelFor(&Kernel::run_group, size_t((panels + kGroup - 1) / kGroup), 0, &job);
  }
};

template <bool TransB>
struct Op : Ort::CustomOpBase<Op<TransB>, Kernel> {
  bool avx2;
  explicit Op(bool avx2) : avx2(avx2) {}
  void *CreateKernel(const OrtApi &, const OrtKernelInfo *info) const { return new Kernel(info, TransB, avx2); }
  const char *GetName() const { return TransB ? "MatMulTransB" : "MatMul"; }
  size_t GetInputTypeCount() const { return 2; }
  ONNXTensorElementDataType GetInputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
};

#endif

}  // namespace

void add_packed_matmul(Ort::CustomOpDomain &domain, bool avx2) {
#if defined(__x86_64__)
  static Op<false> plain(false), plain_avx2(true);
  static Op<true> transposed(false), transposed_avx2(true);
  domain.Add(avx2 ? &plain_avx2 : &plain);
  domain.Add(avx2 ? &transposed_avx2 : &transposed);
#else
  (void)domain, (void)avx2;
#endif
}

}  // namespace eaglex
