// The parts of eaglex.cpu::GroupQueryAttention (cpu_attention.cpp) that its instruction-set variants share:
// a pass's operands, and RoPE. cpu_attention_tasks.inc is the algorithm, compiled once per instruction set
// (cpu_attention_avx512.cpp, cpu_attention_avx2.cpp) with that set's vector primitives as `Simd`.
#pragma once

#include <cstddef>
#include <cstdint>

namespace eaglex {

constexpr int kMaxTogether = 8;  // query heads in one task
constexpr int64_t kMaxHeadDim = 256;

// One pass's operands, shared by its tasks.
struct AttentionPass {
  int64_t heads, kv_heads;
  float scale;  // 0: 1 / sqrt(head_dim)
  bool rotary;
  const float *query, *cos, *sin, *bias;
  const int64_t *positions;
  float *keys, *values, *out;
  int64_t rows, past, D, capacity, half, query_stride, bias_head_stride, bias_row_stride;
  int64_t together;  // query heads per task
};

// RoPE, half rotation, in place. onnxruntime's kernel reads position_ids only after a past: a first
// prompt sits at 0, 1, ...
inline void rotate(float *x, const AttentionPass &p, int64_t row) {
  int64_t position = p.positions && p.past > 0 ? p.positions[row] : p.past + row;
  const float *c = p.cos + position * p.half, *s = p.sin + position * p.half;
  for (int64_t i = 0; i < p.half; ++i) {
    float a = x[i], b = x[i + p.half];
    x[i] = a * c[i] - b * s[i];
    x[i + p.half] = b * c[i] + a * s[i];
  }
}

// Task t of a pass (an AttentionPass *): row t / per_row, query heads [h, h + together) with
// h = (t % per_row) * together and per_row = heads / together.
namespace avx512 {
void attention_task(void *pass, size_t t);
}
namespace avx2 {
void attention_task(void *pass, size_t t);
}

}  // namespace eaglex
