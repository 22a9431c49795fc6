// eaglex.cpu::GroupQueryAttention: onnxruntime's com.microsoft.GroupQueryAttention on the CPU, float32,
// batch 1, as eaglex's graphs call it (a tree mask as attention_bias, optionally packed QKV with RoPE
// inside). exporter/cpu_attention.py marks the nodes; the graph defines the op as an ONNX function that
// calls onnxruntime's, which runs wherever this kernel is not registered.
//
// Why: onnxruntime's kernel costs 35-40 us a layer for one row after 300 tokens on a 2-core Zen 5 (18-23%
// of an int4 target pass) for 0.3 MFLOP and 460 KB of cache: it rotates Q and K in a pass of their own,
// calls its GEMM once per head for a 1 x 300 x 64 product and allocates a [heads, rows, capacity] score
// buffer. Here a task rotates its queries, scores 16 columns at a time, takes the softmax and sums the
// values in registers: 25 us a layer in the same pass, about what reading the cache from memory costs
// (docs/BENCHMARKS.md, seventh sitting).
//
// Lossless by construction: a row attends to its visible columns gathered in slot order, so its scores,
// softmax and output are the same float operations in the same order as for the same sequence decoded one
// token at a time (same keys and values, same count and order of columns), whatever else the pass holds:
// siblings in the draft tree, other sequences' rows in a batched pass.
//
// Semantics (onnxruntime's, for what eaglex emits): total = seqlens_k[0] + 1, past = total - rows; the new
// keys (rotated) and values are written to slots [past, past + rows) of present_key/present_value (the
// same buffers as past_key/past_value when the caller binds them so); row s sees columns c <= past + s
// where attention_bias[s, c] != -inf, with scores q.k * scale + bias. A row that sees no column gets zeros.
// RoPE (do_rotary, half rotation) at position_ids, except in a pass with no past, at 0, 1, ... (as
// onnxruntime's kernel; eaglex's prefill is at those positions anyway).
#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "core.h"

#if defined(__x86_64__)
#include <immintrin.h>
// GCC 12 warns about the undefined vectors inside its own AVX-512 reductions.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace eaglex {
namespace {

#if defined(__x86_64__)
enum Input { kQuery, kKey, kValue, kPastKey, kPastValue, kSeqlensK, kTotal, kCos, kSin, kPositions, kBias, kInputs };

#define AVX512 __attribute__((target("avx512f")))
constexpr int kMaxChunks = 16;    // head_dim up to 256, in chunks of 16
constexpr int kMaxTogether = 8;  // query heads in one task

AVX512 inline __mmask16 tail(int64_t left) { return left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1); }

// Scores of 16 consecutive key columns against q (C chunks of 16 floats each): per column, one FMA chain
// over the chunks, then its 16 lanes summed by a fixed tree (distance 8, 4, 2, 1), done for the 16
// columns at once by shuffles. Every column's score is the same float operations wherever it sits in the
// block, which is what keeps a row's result independent of the other rows of the pass.
template <int C>
AVX512 inline __m512 scores16(const __m512 *q, const float *k, int64_t stride) {
  __m512 v[16];
  for (int c = 0; c < 16; ++c) {
    const float *col = k + c * stride;
    v[c] = _mm512_mul_ps(q[0], _mm512_loadu_ps(col));
    for (int i = 1; i < C; ++i) v[c] = _mm512_fmadd_ps(q[i], _mm512_loadu_ps(col + 16 * i), v[c]);
  }
  __m512 w[8], u[4], t[2];
  for (int i = 0; i < 8; ++i)  // quarters: [i: lanes l + l+8 (two quarters)] [i+8: the same]
    w[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[i], v[i + 8], 0x44), _mm512_shuffle_f32x4(v[i], v[i + 8], 0xEE));
  for (int i = 0; i < 4; ++i)  // quarters: columns i, i+8, i+4, i+12, four partial sums each
    u[i] = _mm512_add_ps(_mm512_shuffle_f32x4(w[i], w[i + 4], 0x88), _mm512_shuffle_f32x4(w[i], w[i + 4], 0xDD));
  for (int i = 0; i < 2; ++i)
    t[i] = _mm512_add_ps(_mm512_shuffle_ps(u[i], u[i + 2], 0x44), _mm512_shuffle_ps(u[i], u[i + 2], 0xEE));
  __m512 r = _mm512_add_ps(_mm512_shuffle_ps(t[0], t[1], 0x88), _mm512_shuffle_ps(t[0], t[1], 0xDD));
  // r's lanes hold columns 0 2 1 3, 8 10 9 11, 4 6 5 7, 12 14 13 15: back to 0..15.
  const __m512i order = _mm512_setr_epi32(0, 2, 1, 3, 8, 10, 9, 11, 4, 6, 5, 7, 12, 14, 13, 15);
  return _mm512_permutexvar_ps(order, r);
}

// e^x for x <= 0 (scores minus their maximum): x = n ln2 + r, |r| <= ln2 / 2, e^r by its Taylor polynomial
// of degree 6 (relative error < 2e-7), times 2^n.
AVX512 inline __m512 exp_nonpositive(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)), _MM_FROUND_TO_NEAREST_INT);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145752f), x);  // ln2 in two parts: r stays exact
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860677e-6f), r);
  __m512 p = _mm512_set1_ps(1.0f / 720);
  for (float c : {1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f}) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
  return _mm512_scalef_ps(p, n);
}

struct Kernel {
  int64_t heads = 0, kv_heads = 0;
  float scale = 0;
  bool rotary = false;

  explicit Kernel(const OrtKernelInfo *info) {
    heads = attribute(info, "num_heads", 0), kv_heads = attribute(info, "kv_num_heads", 0);
    rotary = attribute(info, "do_rotary", 0) == 1;
    float given = 0;
    OrtStatus *status = Ort::GetApi().KernelInfoGetAttribute_float(info, "scale", &given);
    if (status) Ort::GetApi().ReleaseStatus(status), given = 0;
    scale = given;
    if (heads <= 0 || kv_heads <= 0 || heads % kv_heads || attribute(info, "rotary_interleaved", 0) ||
        attribute(info, "local_window_size", -1) != -1 || attribute(info, "smooth_softmax", 0))
      throw Ort::Exception("eaglex.cpu.GroupQueryAttention: unsupported attributes (it runs what "
                           "exporter/cpu_attention.py marks); re-export the artifact",
                           ORT_INVALID_ARGUMENT);
  }

  static int64_t attribute(const OrtKernelInfo *info, const char *name, int64_t fallback) {
    int64_t value = fallback;
    OrtStatus *status = Ort::GetApi().KernelInfoGetAttribute_int64(info, name, &value);
    if (status) Ort::GetApi().ReleaseStatus(status), value = fallback;
    return value;
  }

  // One pass's operands, shared by its tasks.
  struct Pass {
    const Kernel *self;
    const float *query, *cos, *sin, *bias;
    const int64_t *positions;
    float *keys, *values, *out;
    int64_t rows, past, D, capacity, half, query_stride, bias_head_stride, bias_row_stride;
    int64_t together;  // query heads per task
  };

  static void rotate(float *x, const Pass &p, int64_t row) {
    // onnxruntime's kernel reads position_ids only after a past: a first prompt sits at 0, 1, ...
    int64_t position = p.positions && p.past > 0 ? p.positions[row] : p.past + row;
    const float *c = p.cos + position * p.half, *s = p.sin + position * p.half;
    for (int64_t i = 0; i < p.half; ++i) {
      float a = x[i], b = x[i + p.half];
      x[i] = a * c[i] - b * s[i];
      x[i + p.half] = b * c[i] + a * s[i];
    }
  }

  // Row `row`, query heads [head, head + G) (G <= kMaxTogether, all reading one KV head and seeing the
  // same columns), with D = 16 C. The heads share each block of keys and values while it is in L1; the
  // float operations for each (row, head) are the same whatever G is.
  template <int C>
  AVX512 static void attend(const Pass &p, int64_t row, int64_t head, int64_t G) {
    const Kernel &k = *p.self;
    const int64_t D = 16 * C, kv = head / (k.heads / k.kv_heads), limit = p.past + row + 1, stride = limit + 16;
    thread_local std::vector<float> floats;
    thread_local std::vector<int32_t> slots;
    floats.resize(size_t(G * (D + stride))), slots.resize(size_t(stride));
    float *query = floats.data(), *score = query + G * D;  // (a thread_local costs a call: read once)
    int32_t *slot = slots.data();
    for (int64_t g = 0; g < G; ++g) {
      std::memcpy(query + g * D, p.query + row * p.query_stride + (head + g) * D, size_t(D) * sizeof(float));
      if (k.rotary) rotate(query + g * D, p, row);
    }
    const float *keys = p.keys + kv * p.capacity * D, *values = p.values + kv * p.capacity * D;
    const float *bias = p.bias ? p.bias + head * p.bias_head_stride + row * p.bias_row_stride : nullptr;
    const __m512 alpha = _mm512_set1_ps(k.scale != 0 ? k.scale : 1.0f / std::sqrt(float(D)));
    const __m512 minus_infinity = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    // The visible columns, compacted in slot order, with each head's scores.
    int64_t n = 0;
    __m512 top[kMaxTogether];
    for (int64_t g = 0; g < G; ++g) top[g] = minus_infinity;
    for (int64_t c = 0; c < limit; c += 16) {
      const float *block = keys + c * D;
      alignas(64) float last[16 * 16 * C];
      if (c + 16 > p.capacity) {  // the cache's last columns: a full block to read (columns past the limit
        std::memset(last, 0, sizeof(last));  // are read, inside the cache, and dropped)
        std::memcpy(last, block, size_t((p.capacity - c) * D) * sizeof(float));
        block = last;
      }
      __mmask16 visible = tail(limit - c);
      __m512 b = _mm512_setzero_ps();
      if (bias) {
        b = _mm512_maskz_loadu_ps(visible, bias + c);
        visible = _mm512_mask_cmp_ps_mask(visible, b, minus_infinity, _CMP_NEQ_OQ);
      }
      for (int64_t g = 0; g < G; ++g) {
        __m512 q[C];
        for (int i = 0; i < C; ++i) q[i] = _mm512_loadu_ps(query + g * D + 16 * i);
        __m512 s = _mm512_add_ps(_mm512_mul_ps(scores16<C>(q, block, D), alpha), b);
        _mm512_mask_compressstoreu_ps(score + g * stride + n, visible, s);
        top[g] = _mm512_mask_max_ps(top[g], visible, top[g], s);
      }
      _mm512_mask_compressstoreu_epi32(slot + n, visible, _mm512_add_epi32(_mm512_set1_epi32(int32_t(c)), lanes));
      n += __builtin_popcount(visible);
    }
    for (int64_t g = 0; g < G; ++g) {  // softmax
      float *e = score + g * stride;
      __m512 sum = _mm512_setzero_ps(), shift = _mm512_set1_ps(_mm512_reduce_max_ps(top[g]));
      for (int64_t j = 0; j < n; j += 16) {
        __mmask16 m = tail(n - j);
        __m512 x = exp_nonpositive(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, e + j), shift));
        _mm512_mask_storeu_ps(e + j, m, x);
        sum = _mm512_mask_add_ps(sum, m, sum, x);
      }
      __m512 total = _mm512_set1_ps(_mm512_reduce_add_ps(sum));
      for (int64_t j = 0; j < n; j += 16) {
        __mmask16 m = tail(n - j);
        _mm512_mask_storeu_ps(e + j, m, _mm512_div_ps(_mm512_maskz_loadu_ps(m, e + j), total));
      }
    }
    // Each output element: U chains over the columns (j = u mod U) in order, added up in a fixed order at
    // the end (one chain would wait on each FMA's latency). Blocks of 16 columns: each head's chains are
    // kept in memory between blocks, each block of values is read once for all the heads.
    constexpr int U = C > 8 ? 1 : C > 4 ? 2 : C > 2 ? 4 : C > 1 ? 8 : 16;
    alignas(64) float chains[kMaxTogether][U][C][16];
    std::memset(chains, 0, size_t(G) * sizeof(chains[0]));
    for (int64_t j0 = 0; j0 < n; j0 += 16)
      for (int64_t g = 0; g < G; ++g) {
        __m512 acc[U][C];
        for (int u = 0; u < U; ++u)
          for (int i = 0; i < C; ++i) acc[u][i] = _mm512_load_ps(chains[g][u][i]);
        const float *weights = score + g * stride;
        for (int64_t j = j0; j < j0 + 16; j += U)  // 16 is a multiple of U: j + u is in chain u
          for (int u = 0; u < U; ++u) {
            if (j + u >= n) break;
            __m512 w = _mm512_set1_ps(weights[j + u]);
            const float *v = values + int64_t(slot[j + u]) * D;
            for (int i = 0; i < C; ++i) acc[u][i] = _mm512_fmadd_ps(w, _mm512_loadu_ps(v + 16 * i), acc[u][i]);
          }
        for (int u = 0; u < U; ++u)
          for (int i = 0; i < C; ++i) _mm512_store_ps(chains[g][u][i], acc[u][i]);
      }
    for (int64_t g = 0; g < G; ++g) {
      float *out = p.out + row * k.heads * D + (head + g) * D;
      for (int i = 0; i < C; ++i) {
        __m512 sum = _mm512_load_ps(chains[g][0][i]);
        for (int u = 1; u < U; ++u) sum = _mm512_add_ps(sum, _mm512_load_ps(chains[g][u][i]));
        _mm512_storeu_ps(out + 16 * i, sum);  // a row that sees no column: zeros
      }
    }
  }

  template <int... C>
  static constexpr std::array<void (*)(const Pass &, int64_t, int64_t, int64_t), sizeof...(C)> table(
      std::integer_sequence<int, C...>) {
    return {&attend<C + 1>...};
  }

  // Task t: row t / per_row, query heads [h, h + together) with h = (t % per_row) * together.
  static void task(void *data, size_t t) {
    const Pass &p = *static_cast<const Pass *>(data);
    static constexpr auto by_chunks = table(std::make_integer_sequence<int, kMaxChunks>{});
    int64_t per_row = p.self->heads / p.together;
    by_chunks[size_t(p.D / 16 - 1)](p, int64_t(t) / per_row, int64_t(t) % per_row * p.together, p.together);
  }

  void Compute(OrtKernelContext *context) {
    Ort::KernelContext ctx(context);
    auto input = [&](int i) { return i < int(ctx.GetInputCount()) ? ctx.GetInput(i) : Ort::ConstValue(nullptr); };
    Ort::ConstValue query = input(kQuery), key = input(kKey), value = input(kValue);
    Ort::ConstValue past_key = input(kPastKey), past_value = input(kPastValue), bias = input(kBias);
    auto qshape = query.GetTensorTypeAndShapeInfo().GetShape();
    auto cshape = past_key.GetTensorTypeAndShapeInfo().GetShape();
    if (qshape.size() != 3 || qshape[0] != 1 || cshape.size() != 4 || cshape[1] != kv_heads)
      throw Ort::Exception("eaglex.cpu.GroupQueryAttention: batch 1, query [1, S, width] and past_key "
                           "[1, kv_heads, capacity, head_dim] only", ORT_INVALID_ARGUMENT);
    const bool packed = !key;
    Pass p{};
    p.self = this, p.rows = qshape[1], p.D = cshape[3], p.capacity = cshape[2];
    if (p.D % 16 || p.D > 16 * kMaxChunks)
      throw Ort::Exception("eaglex.cpu.GroupQueryAttention: head_dim must be a multiple of 16 up to 256",
                           ORT_INVALID_ARGUMENT);
    int64_t total = int64_t(input(kSeqlensK).GetTensorData<int32_t>()[0]) + 1;
    p.past = total - p.rows;
    if (p.past < 0 || total > p.capacity)
      throw Ort::Exception("eaglex.cpu.GroupQueryAttention: seqlens_k out of range", ORT_INVALID_ARGUMENT);
    p.query_stride = qshape[2];
    if (qshape[2] != (packed ? heads + 2 * kv_heads : heads) * p.D)
      throw Ort::Exception("eaglex.cpu.GroupQueryAttention: query width does not match the heads", ORT_INVALID_ARGUMENT);
    p.query = query.GetTensorData<float>();
    if (rotary) {
      Ort::ConstValue cos = input(kCos), positions = input(kPositions);
      auto table = cos.GetTensorTypeAndShapeInfo().GetShape();
      p.half = table[1];
      p.cos = cos.GetTensorData<float>(), p.sin = input(kSin).GetTensorData<float>();
      p.positions = positions ? positions.GetTensorData<int64_t>() : nullptr;
      for (int64_t s = 0; s < p.rows && p.positions; ++s)
        if (p.positions[s] < 0 || p.positions[s] >= table[0] || 2 * p.half > p.D)
          throw Ort::Exception("eaglex.cpu.GroupQueryAttention: a position past the rotary tables", ORT_INVALID_ARGUMENT);
    }
    if (bias) {
      auto bshape = bias.GetTensorTypeAndShapeInfo().GetShape();
      if (bshape.size() != 4 || bshape[0] != 1 || bshape[2] != p.rows || bshape[3] < total)
        throw Ort::Exception("eaglex.cpu.GroupQueryAttention: attention_bias must be [1, 1 or heads, S, >= total]",
                             ORT_INVALID_ARGUMENT);
      p.bias = bias.GetTensorData<float>(), p.bias_row_stride = bshape[3];
      p.bias_head_stride = bshape[1] == 1 ? 0 : p.rows * bshape[3];
    }
    Ort::UnownedValue out = ctx.GetOutput(0, {1, p.rows, heads * p.D});
    Ort::UnownedValue present_key = ctx.GetOutput(1, cshape), present_value = ctx.GetOutput(2, cshape);
    p.out = out.GetTensorMutableData<float>();
    p.keys = present_key.GetTensorMutableData<float>(), p.values = present_value.GetTensorMutableData<float>();
    carry_past(past_key.GetTensorData<float>(), p.keys, p);
    carry_past(past_value.GetTensorData<float>(), p.values, p);
    // The new rows' keys (rotated) and values go to their slots before any row reads them.
    for (int64_t s = 0; s < p.rows; ++s)
      for (int64_t h = 0; h < kv_heads; ++h) {
        const float *k_new = packed ? p.query + s * p.query_stride + (heads + h) * p.D
                                    : key.GetTensorData<float>() + (s * kv_heads + h) * p.D;
        const float *v_new = packed ? p.query + s * p.query_stride + (heads + kv_heads + h) * p.D
                                    : value.GetTensorData<float>() + (s * kv_heads + h) * p.D;
        float *k_slot = p.keys + (h * p.capacity + p.past + s) * p.D;
        std::memcpy(k_slot, k_new, size_t(p.D) * sizeof(float));
        if (rotary) rotate(k_slot, p, s);
        std::memcpy(p.values + (h * p.capacity + p.past + s) * p.D, v_new, size_t(p.D) * sizeof(float));
      }
    // One row: a task per head, which splits the memory-bound reads of the cache evenly over the threads.
    // Several rows: the heads of a KV group together (when they see the same columns), so a block of the
    // cache is read from memory once for all of them.
    p.together = 1;
    if (p.rows > 1 && p.bias_head_stride == 0)
      for (int64_t g = std::min(heads / kv_heads, int64_t(kMaxTogether)); g > 1 && p.together == 1; --g)
        if ((heads / kv_heads) % g == 0) p.together = g;
    size_t tasks = size_t(p.rows * heads / p.together);
    if (tasks == 1)
      task(&p, 0);
    else
      ctx.ParallelFor(&Kernel::task, tasks, 0, &p);
  }

  // Where present is not the past buffer itself: the past rows, then zeros (as onnxruntime's kernel).
  static void carry_past(const float *past, float *present, const Pass &p) {
    if (past == present) return;
    for (int64_t h = 0; h < int64_t(p.self->kv_heads); ++h) {
      std::memcpy(present + h * p.capacity * p.D, past + h * p.capacity * p.D, size_t(p.past * p.D) * sizeof(float));
      std::memset(present + (h * p.capacity + p.past) * p.D, 0, size_t((p.capacity - p.past) * p.D) * sizeof(float));
    }
  }
};

struct Op : Ort::CustomOpBase<Op, Kernel> {
  void *CreateKernel(const OrtApi &, const OrtKernelInfo *info) const { return new Kernel(info); }
  const char *GetName() const { return "GroupQueryAttention"; }
  size_t GetInputTypeCount() const { return kInputs; }
  ONNXTensorElementDataType GetInputType(size_t i) const {
    if (i == kSeqlensK || i == kTotal) return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
    return i == kPositions ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t i) const {
    bool required = i == kQuery || i == kPastKey || i == kPastValue || i == kSeqlensK || i == kTotal;
    return required ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
  }
  size_t GetOutputTypeCount() const { return 3; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
};
#endif

}  // namespace

void add_cpu_attention(Ort::CustomOpDomain &domain) {
#if defined(__x86_64__)
  static Op op;
  domain.Add(&op);
#else
  (void)domain;
#endif
}

}  // namespace eaglex
