// The EAGLE-2/3 dynamic draft tree, grown level by level and pruned to the best-scoring nodes: the same
// order, ties and masks as runtime/tree.py (DraftTreeBuilder), so both runtimes verify identical trees.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "core.h"

namespace eaglex {

namespace {

// Indices of `scores` by descending score, ties in index order (numpy's argsort(-scores, kind="stable")).
std::vector<int64_t> rank(const std::vector<double> &scores) {
  std::vector<int64_t> order(scores.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return scores[a] > scores[b]; });
  return order;
}

// The score a probability threshold compares with (runtime/tree.py log_probability; 0: no cut).
double log_probability(double probability) {
  return probability > 0 ? std::log(probability) : -std::numeric_limits<double>::infinity();
}

}  // namespace

DraftTree chain_tree(int64_t root) { return DraftTree{{root}, {-1}, {0}}; }

void DraftTree::truncate(size_t n) {
  if (n < size()) tokens.resize(n), parents.resize(n), depths.resize(n);
}

std::vector<int64_t> lookup(const std::vector<int64_t> &context, size_t length, int64_t max_ngram,
                            int64_t min_ngram) {
  const int64_t size = int64_t(context.size());
  for (int64_t n = std::min(max_ngram, size - 1); n >= min_ngram; --n) {
    const auto tail = context.end() - n;
    // The latest window context[i, i + n) that ends before the tail: the most recent text recurs likeliest.
    for (int64_t i = size - 1 - n; i >= 0; --i)
      if (std::equal(tail, context.end(), context.begin() + i)) {
        const auto follow = context.begin() + i + n;
        return {follow, follow + std::min<int64_t>(int64_t(length), context.end() - follow)};
      }
  }
  return {};
}

void graft(DraftTree &tree, const std::vector<int64_t> &path) {
  const int64_t existing = int64_t(tree.size());
  int64_t node = 0;
  for (int64_t token : path) {
    if (node < existing) {  // still inside the drafted tree: follow a child that holds the token
      int64_t match = -1;
      for (int64_t child = node + 1; child < existing && match < 0; ++child)
        if (tree.parents[size_t(child)] == node && tree.tokens[size_t(child)] == token) match = child;
      if (match >= 0) {
        node = match;
        continue;
      }
    }
    tree.tokens.push_back(token);
    tree.parents.push_back(node);
    tree.depths.push_back(tree.depths[size_t(node)] + 1);
    node = int64_t(tree.size()) - 1;
  }
}

Mask DraftTree::attention_mask(int64_t prefix) const {
  const int64_t n = int64_t(size());
  Mask mask{n, prefix, n, std::vector<uint8_t>(size_t(n * n), 0)};
  for (int64_t i = 0; i < n; ++i)
    for (int64_t node = i; node >= 0; node = parents[size_t(node)]) mask.block[size_t(i * n + node)] = 1;
  return mask;
}

TreeBuilder::TreeBuilder(int64_t root, int64_t top_k) : root_(root), top_k_(top_k) {}

void TreeBuilder::add_level(const float *logprobs, const int64_t *ids, int64_t n_rows, int64_t k,
                            std::vector<int64_t> &tokens, std::vector<int64_t> &parent_rows) {
  if (n_rows != int64_t(frontier_.size()) || n_rows * k < top_k_)
    throw Error(EAGLEX_ERR_RUNTIME, "the drafter returned a top-k of the wrong shape; re-run eaglex export");
  const int64_t base = int64_t(tokens_.size());
  std::vector<double> level(size_t(n_rows * k));
  ++levels_;
  for (int64_t r = 0; r < n_rows; ++r)
    for (int64_t c = 0; c < k; ++c) {
      // A log-prob is <= 0; clamping rounding noise keeps every child's score <= its parent's, which makes
      // the set kept by build() closed under ancestors.
      double score = frontier_scores_[size_t(r)] + std::min(double(logprobs[r * k + c]), 0.0);
      level[size_t(r * k + c)] = score;
      tokens_.push_back(ids[r * k + c]);
      parents_.push_back(frontier_[size_t(r)]);
      scores_.push_back(score);
      depths_.push_back(levels_);
    }
  std::vector<int64_t> best = rank(level);
  best.resize(size_t(top_k_));
  tokens.resize(best.size()), parent_rows.resize(best.size());
  std::vector<int64_t> frontier(best.size());
  std::vector<double> frontier_scores(best.size());
  // A new frontier node sees the scratch rows its parent saw (its ancestors) plus its own new row.
  const int64_t width = scratch_width_ + top_k_;
  std::vector<uint8_t> scratch(size_t(top_k_ * width), 0);
  for (size_t i = 0; i < best.size(); ++i) {
    int64_t b = best[i], parent = b / k;
    tokens[i] = ids[b], parent_rows[i] = parent;
    frontier[i] = base + b, frontier_scores[i] = level[size_t(b)];
    std::copy_n(scratch_.begin() + parent * scratch_width_, scratch_width_, scratch.begin() + int64_t(i) * width);
    scratch[i * size_t(width) + size_t(scratch_width_) + i] = 1;
  }
  frontier_.swap(frontier), frontier_scores_.swap(frontier_scores), scratch_.swap(scratch);
  scratch_width_ = width;
}

bool TreeBuilder::worth_growing(double min_grow_probability) const {
  return frontier_scores_[0] >= log_probability(min_grow_probability);
}

DraftTree TreeBuilder::build(int64_t total_tokens, double min_path_probability) const {
  if (tokens_.empty()) return chain_tree(root_);
  std::vector<int64_t> keep = rank(scores_);
  // Ranked best first, so the likely ones are a prefix; a child never scores above its parent, so the
  // kept set stays closed under ancestors.
  const double floor = log_probability(min_path_probability);
  const auto likely = std::find_if(keep.begin(), keep.end(), [&](int64_t i) { return scores_[size_t(i)] < floor; });
  keep.resize(std::min(size_t(likely - keep.begin()), size_t(total_tokens - 1)));
  std::sort(keep.begin(), keep.end());
  // Pool index -> tree index, shifted by one so that the root (pool index -1) maps to node 0.
  std::vector<int64_t> tree_index(tokens_.size() + 1, -1);
  tree_index[0] = 0;
  for (size_t i = 0; i < keep.size(); ++i) tree_index[size_t(keep[i] + 1)] = int64_t(i + 1);
  DraftTree tree = chain_tree(root_);
  for (int64_t p : keep) {
    int64_t parent = tree_index[size_t(parents_[size_t(p)] + 1)];
    if (parent < 0) throw Error(EAGLEX_ERR_RUNTIME, "internal error: a draft tree node lost its parent");
    tree.tokens.push_back(tokens_[size_t(p)]);
    tree.parents.push_back(parent);
    tree.depths.push_back(depths_[size_t(p)]);
  }
  return tree;
}

}  // namespace eaglex
