// eaglex.cpu::GroupQueryAttention: onnxruntime's com.microsoft.GroupQueryAttention on the CPU, float32,
// batch 1, as eaglex's graphs call it (a tree mask as attention_bias, optionally packed QKV with RoPE
// inside). exporter/cpu_attention.py marks the nodes; the graph defines the op as an ONNX function that
// calls onnxruntime's, which runs wherever this kernel is not registered.
//
// Why: onnxruntime's kernel costs 35-40 us a layer for one row after 300 tokens on a 2-core Zen 5 (18-23%
// of an int4 target pass) for 0.3 MFLOP and 460 KB of cache: it rotates Q and K in a pass of their own,
// calls its GEMM once per head for a 1 x 300 x 64 product and allocates a [heads, rows, capacity] score
// buffer. Here a task rotates its queries, scores a vector's width of columns at a time, takes the softmax
// and sums the values in registers (cpu_attention_tasks.inc, for AVX-512 or AVX2): 22 us a layer in the same
// pass, about what reading the cache from memory costs (docs/BENCHMARKS.md, seventh sitting).
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
#include <cstring>

#include "core.h"
#include "cpu_attention.h"

namespace eaglex {
namespace {

#if defined(__x86_64__)
enum Input { kQuery, kKey, kValue, kPastKey, kPastValue, kSeqlensK, kTotal, kCos, kSin, kPositions, kBias, kInputs };

struct Kernel {
  int64_t heads = 0, kv_heads = 0;
  float scale = 0;
  bool rotary = false;
  void (*task)(void *, size_t);

  Kernel(const OrtKernelInfo *info, void (*task)(void *, size_t)) : task(task) {
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
    AttentionPass p{};
    p.heads = heads, p.kv_heads = kv_heads, p.scale = scale, p.rotary = rotary;
    p.rows = qshape[1], p.D = cshape[3], p.capacity = cshape[2];
    if (p.D % 16 || p.D > kMaxHeadDim)
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
      ctx.ParallelFor(task, tasks, 0, &p);
  }

  // Where present is not the past buffer itself: the past rows, then zeros (as onnxruntime's kernel).
  static void carry_past(const float *past, float *present, const AttentionPass &p) {
    if (past == present) return;
    for (int64_t h = 0; h < p.kv_heads; ++h) {
      std::memcpy(present + h * p.capacity * p.D, past + h * p.capacity * p.D, size_t(p.past * p.D) * sizeof(float));
      std::memset(present + (h * p.capacity + p.past) * p.D, 0, size_t((p.capacity - p.past) * p.D) * sizeof(float));
    }
  }
};

struct Op : Ort::CustomOpBase<Op, Kernel> {
  void (*task)(void *, size_t);  // the instruction set's attention_task
  explicit Op(void (*task)(void *, size_t)) : task(task) {}
  void *CreateKernel(const OrtApi &, const OrtKernelInfo *info) const { return new Kernel(info, task); }
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

void add_cpu_attention(Ort::CustomOpDomain &domain, bool avx2) {
#if defined(__x86_64__)
  static Op wide(&avx512::attention_task), narrow(&avx2::attention_task);
  domain.Add(avx2 ? &narrow : &wide);
#else
  (void)domain, (void)avx2;
#endif
}

}  // namespace eaglex
