// One exported graph on onnxruntime's CPU provider, with its KV cache preallocated and bound in place:
// each layer's slice of one buffer is passed as both past_* input and present_* output, which
// GroupQueryAttention recognises as a shared buffer, so a call costs no cache copy (the same binding as
// runtime/backends/onnxruntime.py).
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "core.h"

namespace eaglex {

namespace {

// The Python runtime's session_options(threads), field for field.
Ort::SessionOptions session_options(int threads) {
  Ort::SessionOptions options;
  options.AddConfigEntry("session.intra_op.allow_spinning", "1");
  options.AddConfigEntry("session.force_spinning_stop", "1");  // sleep between calls: the graphs take turns
  options.SetIntraOpNumThreads(threads);
  options.SetInterOpNumThreads(1);
  options.SetExecutionMode(ORT_SEQUENTIAL);
  options.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
  options.SetLogSeverityLevel(3);
  add_cpu_ops(options);  // the nodes exporter/packed_matmul.py and cpu_attention.py mark: eaglex's kernels
  return options;
}

std::string first_line(const char *message) {
  std::string s(message);
  size_t end = s.find('\n');
  return end == std::string::npos ? s : s.substr(0, end);
}

}  // namespace

Graph::Graph(Ort::Env &env, const std::string &path, int64_t layers, int64_t kv_heads, int64_t head_dim,
             int threads)
    : cpu_(Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault)),
      layers_(layers),
      kv_heads_(kv_heads),
      head_dim_(head_dim),
      cache_(nullptr, std::free) {
  try {
    session_ = std::make_unique<Ort::Session>(env, path.c_str(), session_options(threads));
  } catch (const Ort::Exception &e) {
    throw Error(EAGLEX_ERR_ARTIFACT,
                "onnxruntime cannot load " + path + " (" + first_line(e.what()) + "); re-run eaglex export");
  }
  Ort::AllocatorWithDefaultOptions allocator;
  bool has_bias = false;
  for (size_t i = 0; i < session_->GetInputCount(); ++i) {
    std::string name = session_->GetInputNameAllocated(i, allocator).get();
    if (name == "attention_bias") has_bias = true;
    if (name == "past_key.0") {
      auto shape = session_->GetInputTypeInfo(i).GetTensorTypeAndShapeInfo().GetShape();
      capacity = shape.size() == 4 ? shape[2] : -1;
    }
  }
  if (!has_bias || capacity <= 0)
    throw Error(EAGLEX_ERR_ARTIFACT, path + " lacks the inputs of an onnxruntime-flavoured eaglex graph "
                                            "(attention_bias, past_key.0 [1, heads, capacity, dim]); re-run "
                                            "eaglex export");
  // calloc: the pages of a large cache are only committed once the graph writes them (as np.zeros).
  size_t per_tensor = size_t(kv_heads * capacity * head_dim);
  cache_.reset(static_cast<float *>(std::calloc(size_t(layers) * 2 * per_tensor, sizeof(float))));
  if (!cache_) throw Error(EAGLEX_ERR_OUT_OF_MEMORY, "cannot allocate the KV cache of " + path);
  for (int64_t i = 0; i < layers; ++i)
    for (const char *kind : {"key", "value"}) {
      kv_input_names_.push_back(std::string("past_") + kind + "." + std::to_string(i));
      kv_output_names_.push_back(std::string("present_") + kind + "." + std::to_string(i));
    }
  std::vector<int64_t> kv_shape{1, kv_heads_, capacity, head_dim_};
  for (size_t t = 0; t < kv_input_names_.size(); ++t) {
    float *slice = cache_.get() + t * per_tensor;
    kv_inputs_.push_back(tensor(cpu_, slice, per_tensor, kv_shape));
    kv_outputs_.push_back(tensor(cpu_, slice, per_tensor, kv_shape));  // the same buffer: written in place
  }
}

std::vector<Ort::Value> Graph::run(std::vector<Feed> &feeds, const Mask &mask,
                                   const std::vector<const char *> &outputs,
                                   const std::vector<std::vector<int64_t>> *shapes) {
  const int64_t total = mask.total(), rows = mask.rows;
  if (total > capacity)
    throw Error(EAGLEX_ERR_RUNTIME, std::to_string(total) + " rows exceed the KV cache of " +
                                        std::to_string(capacity) + "; re-export with a larger --max-context");
  // attention_bias [1, 1, rows, total]: 0 where a row may attend, -inf elsewhere.
  bias_.resize(size_t(rows * total));
  const float minus_inf = -std::numeric_limits<float>::infinity();
  for (int64_t s = 0; s < rows; ++s) {
    float *row = bias_.data() + s * total;
    std::fill(row, row + mask.prefix, 0.0f);
    const uint8_t *block = mask.block.data() + s * mask.width;
    for (int64_t j = 0; j < mask.width; ++j) row[mask.prefix + j] = block[j] ? 0.0f : minus_inf;
  }
  int32_t seqlens_k = int32_t(total - 1), total_length = int32_t(total);
  in_names_.clear(), in_values_.clear(), out_names_.assign(outputs.begin(), outputs.end()), out_values_.clear();
  for (Feed &f : feeds) in_names_.push_back(f.name), in_values_.push_back(std::move(f.value));
  in_names_.push_back("attention_bias");
  in_values_.push_back(tensor(cpu_, bias_.data(), bias_.size(), {1, 1, rows, total}));
  in_names_.push_back("seqlens_k");
  in_values_.push_back(tensor(cpu_, &seqlens_k, 1, {1}));
  in_names_.push_back("total_sequence_length");
  in_values_.push_back(tensor(cpu_, &total_length, 1, {}));
  if (shapes) {
    out_buffers_.resize(outputs.size());
    for (size_t i = 0; i < outputs.size(); ++i) {
      const std::vector<int64_t> &shape = (*shapes)[i];
      size_t count = 1;
      for (int64_t d : shape) count *= size_t(d);
      if (out_buffers_[i].size() < count) out_buffers_[i].resize(count);
      out_values_.push_back(tensor(cpu_, out_buffers_[i].data(), count, shape));
    }
  } else {
    for (size_t i = 0; i < outputs.size(); ++i) out_values_.emplace_back(nullptr);  // onnxruntime allocates
  }
  // The cache tensors go by pointer: Run takes arrays of values, so they are moved in and back out.
  for (size_t t = 0; t < kv_inputs_.size(); ++t) {
    in_names_.push_back(kv_input_names_[t].c_str()), in_values_.push_back(std::move(kv_inputs_[t]));
    out_names_.push_back(kv_output_names_[t].c_str()), out_values_.push_back(std::move(kv_outputs_[t]));
  }
  auto start = std::chrono::steady_clock::now();
  try {
    session_->Run(Ort::RunOptions{nullptr}, in_names_.data(), in_values_.data(), in_values_.size(),
                  out_names_.data(), out_values_.data(), out_values_.size());
  } catch (const Ort::Exception &e) {
    restore_cache_values();
    int code = e.GetOrtErrorCode() == ORT_FAIL && std::strstr(e.what(), "alloc") ? EAGLEX_ERR_OUT_OF_MEMORY
                                                                                 : EAGLEX_ERR_RUNTIME;
    throw Error(code, "onnxruntime failed running a graph (" + first_line(e.what()) + ")");
  }
  run_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  restore_cache_values();
  std::vector<Ort::Value> results;
  for (size_t i = 0; i < outputs.size(); ++i) results.push_back(std::move(out_values_[i]));
  return results;
}

void Graph::restore_cache_values() {
  const size_t feeds = in_values_.size() - kv_inputs_.size(), outs = out_values_.size() - kv_outputs_.size();
  for (size_t t = 0; t < kv_inputs_.size(); ++t) {
    kv_inputs_[t] = std::move(in_values_[feeds + t]);
    kv_outputs_[t] = std::move(out_values_[outs + t]);
  }
}

void Graph::keep(int64_t start, const std::vector<int64_t> &slots) {
  const int64_t n = int64_t(slots.size());
  // A chain accepted in full is already in place. Otherwise slots[i] >= start + i and slots ascend, so an
  // ascending copy never overwrites a row it still has to read.
  if (!n || (slots[0] == start && slots[n - 1] == start + n - 1)) return;
  const size_t row = size_t(head_dim_);
  for (int64_t tensor_index = 0; tensor_index < layers_ * 2 * kv_heads_; ++tensor_index) {
    float *base = cache_.get() + tensor_index * capacity * head_dim_;
    for (int64_t i = 0; i < n; ++i)
      if (slots[i] != start + i) std::memcpy(base + (start + i) * row, base + slots[i] * row, row * 4);
  }
}

}  // namespace eaglex
