// The EAGLE-3 drafter at run time (runtime/draft.py): keeps the committed context in its KV cache and
// grows a draft tree. Row t pairs the target's feature at position t with token t+1, so after every verify
// pass the accepted rows are fed in one call (extend), whose last row already gives the first tree level.
// Deeper levels feed the drafter its own hidden output and live in scratch slots after the committed
// ones, overwritten next round.
#include <algorithm>

#include "core.h"

namespace eaglex {

namespace {
const std::vector<const char *> OUTPUTS{"hidden_out", "topk_logprobs", "topk_ids"};
}

Drafter::Drafter(Graph &graph, const EmbeddingTable &embeddings, int64_t feature_width)
    : graph_(graph), embeddings_(embeddings), feature_width_(feature_width), hidden_(embeddings.cols()) {}

std::vector<Ort::Value> Drafter::run(const std::vector<int64_t> &tokens, const float *features,
                                     int64_t n_features, const float *hidden, int64_t n_hidden,
                                     int64_t position_start, bool same_position, const Mask &mask,
                                     int64_t logit_rows, int64_t top_k) {
  ++calls;
  const int64_t n = int64_t(tokens.size());
  Ort::MemoryInfo cpu = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
  embeds_.resize(size_t(n * hidden_));
  for (int64_t i = 0; i < n; ++i) {
    if (tokens[size_t(i)] < 0 || tokens[size_t(i)] >= embeddings_.rows())
      throw Error(EAGLEX_ERR_RUNTIME, "token id " + std::to_string(tokens[size_t(i)]) +
                                          " is outside embed_tokens.npy; re-run eaglex export");
    std::copy_n(embeddings_.row(tokens[size_t(i)]), hidden_, embeds_.begin() + i * hidden_);
  }
  positions_.resize(size_t(n));
  for (int64_t i = 0; i < n; ++i) positions_[size_t(i)] = position_start + (same_position ? 0 : i);
  logit_index_.resize(size_t(logit_rows));
  for (int64_t i = 0; i < logit_rows; ++i) logit_index_[size_t(i)] = n - logit_rows + i;
  top_k_value_ = top_k;
  // Zero-row inputs still need a valid address.
  float *feature_data = n_features ? const_cast<float *>(features) : &empty_;
  float *hidden_data = n_hidden ? const_cast<float *>(hidden) : &empty_;
  std::vector<Feed> feeds;
  feeds.push_back({"input_embeds", tensor(cpu, embeds_.data(), embeds_.size(), {1, n, hidden_})});
  feeds.push_back({"features", tensor(cpu, feature_data, size_t(n_features * feature_width_),
                                      {1, n_features, feature_width_})});
  feeds.push_back({"hidden", tensor(cpu, hidden_data, size_t(n_hidden * hidden_), {1, n_hidden, hidden_})});
  feeds.push_back({"position_ids", tensor(cpu, positions_.data(), positions_.size(), {1, n})});
  feeds.push_back({"logit_index", tensor(cpu, logit_index_.data(), logit_index_.size(), {logit_rows})});
  feeds.push_back({"top_k", tensor(cpu, &top_k_value_, 1, {1})});
  return graph_.run(feeds, mask, OUTPUTS);
}

void Drafter::extend(const std::vector<int64_t> &tokens, const float *features, int64_t top_k) {
  const int64_t n = int64_t(tokens.size()), start = cache_len_;
  Mask mask{n, start, n, std::vector<uint8_t>(size_t(n * n), 0)};  // committed slots, causal among new rows
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j <= i; ++j) mask.block[size_t(i * n + j)] = 1;
  auto out = run(tokens, features, n, nullptr, 0, start, false, mask, 1, top_k);
  cache_len_ += n;
  const float *logprobs = out[1].GetTensorData<float>();
  const int64_t *ids = out[2].GetTensorData<int64_t>();
  const float *hidden = out[0].GetTensorData<float>();
  last_logprobs_.assign(logprobs, logprobs + top_k);
  last_ids_.assign(ids, ids + top_k);
  last_hidden_.assign(hidden + (n - 1) * hidden_, hidden + n * hidden_);
}

DraftTree Drafter::propose(int64_t root, int64_t top_k, int64_t depth, int64_t total_tokens,
                           double min_path_probability, double min_grow_probability) {
  TreeBuilder builder(root, top_k);
  std::vector<int64_t> tokens, parent_rows;
  builder.add_level(last_logprobs_.data(), last_ids_.data(), 1, top_k, tokens, parent_rows);
  hidden_buf_.resize(size_t(top_k * hidden_));
  for (int64_t i = 0; i < top_k; ++i) std::copy_n(last_hidden_.begin(), hidden_, hidden_buf_.begin() + i * hidden_);
  const int64_t committed = cache_len_;
  depth = std::min(depth, 1 + (graph_.capacity - committed) / top_k);  // scratch must fit the cache
  std::vector<float> next_hidden;
  for (int64_t level = 2; level <= depth && builder.worth_growing(min_grow_probability); ++level) {
    // Frontier rows see every committed slot plus their ancestors' scratch rows and their own.
    Mask mask{top_k, committed, builder.scratch_width(), builder.scratch()};
    auto out = run(tokens, nullptr, 0, hidden_buf_.data(), top_k, committed + level - 2, true, mask, top_k, top_k);
    const float *hidden = out[0].GetTensorData<float>();
    builder.add_level(out[1].GetTensorData<float>(), out[2].GetTensorData<int64_t>(), top_k, top_k, tokens,
                      parent_rows);
    next_hidden.resize(size_t(top_k * hidden_));
    for (int64_t i = 0; i < top_k; ++i)
      std::copy_n(hidden + parent_rows[size_t(i)] * hidden_, hidden_, next_hidden.begin() + i * hidden_);
    hidden_buf_.swap(next_hidden);
  }
  return builder.build(total_tokens, min_path_probability);
}

}  // namespace eaglex
