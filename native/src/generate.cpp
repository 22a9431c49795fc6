// The draft-verify loop (runtime/generate.py, step for step). Plain decoding is the same loop with a tree
// that holds only its root.
#include <algorithm>
#include <chrono>

#include "engine.h"

namespace eaglex {

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }
const std::vector<const char *> TARGET_OUTPUTS{"logits", "features"};

std::vector<Ort::Value> run_target(Graph &target, std::vector<int64_t> &tokens, std::vector<int64_t> &positions,
                                   std::vector<int64_t> &logit_rows, const Mask &mask, int64_t vocab,
                                   int64_t feature_width) {
  Ort::MemoryInfo cpu = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
  const int64_t n = int64_t(tokens.size());
  std::vector<Feed> feeds;
  feeds.push_back({"input_ids", tensor(cpu, tokens.data(), tokens.size(), {1, n})});
  feeds.push_back({"position_ids", tensor(cpu, positions.data(), positions.size(), {1, n})});
  feeds.push_back({"logit_index", tensor(cpu, logit_rows.data(), logit_rows.size(), {int64_t(logit_rows.size())})});
  const int64_t rows = int64_t(logit_rows.size());
  const std::vector<std::vector<int64_t>> shapes{{1, rows, vocab}, {1, n, feature_width}};
  return target.run(feeds, mask, TARGET_OUTPUTS, &shapes);
}

// The accepted tokens and the bonus, cut after the first stop token and at the length budget (_stop_at).
std::vector<int64_t> emitted(const DraftTree &tree, const std::vector<int64_t> &path, int64_t bonus,
                             int64_t room, const std::vector<int64_t> &stop) {
  std::vector<int64_t> tokens;
  for (size_t i = 1; i < path.size(); ++i) tokens.push_back(tree.tokens[size_t(path[i])]);
  tokens.push_back(bonus);
  tokens.resize(std::min<size_t>(tokens.size(), size_t(room)));
  for (size_t i = 0; i < tokens.size(); ++i)
    if (std::find(stop.begin(), stop.end(), tokens[i]) != stop.end()) {
      tokens.resize(i + 1);
      break;
    }
  return tokens;
}

}  // namespace

int Engine::generate(const std::vector<int64_t> &prompt, const Settings &s, eaglex_on_tokens cb, void *user,
                     eaglex_stats &stats) {
  Graph &target = *target_;
  Drafter *drafter = s.speculative ? drafter_.get() : nullptr;
  const bool greedy = s.temperature == 0;
  const int64_t n = int64_t(prompt.size()), capacity = target.capacity, vocab = manifest.vocab_size;
  const int64_t budget = std::min<int64_t>(s.max_new_tokens, capacity - n);  // never outgrow the KV cache
  const int64_t feature_width = 3 * manifest.hidden_size;
  auto is_stop = [&](int64_t t) { return std::find(s.stop.begin(), s.stop.end(), t) != s.stop.end(); };
  Rng rng(s.seed);
  std::vector<int64_t> generated, new_tokens, path, context;
  std::vector<float> features;
  std::vector<double> probs;
  auto deliver = [&](const std::vector<int64_t> &chunk) {
    std::vector<int32_t> ids(chunk.begin(), chunk.end());
    return cb && cb(ids.data(), ids.size(), user) != 0;
  };
  stats.prompt_tokens = int32_t(n);

  auto clock = Clock::now();
  std::vector<int64_t> tokens(prompt), positions(static_cast<size_t>(n)), logit_rows{n - 1};
  for (int64_t i = 0; i < n; ++i) positions[size_t(i)] = i;
  Mask causal{n, 0, n, std::vector<uint8_t>(size_t(n * n), 0)};
  for (int64_t i = 0; i < n; ++i) std::fill_n(causal.block.begin() + i * n, i + 1, 1);
  auto out = run_target(target, tokens, positions, logit_rows, causal, vocab, feature_width);
  const float *logits = out[0].GetTensorData<float>();
  if (!greedy) probabilities(logits, vocab, s.temperature, s.top_p, s.top_k, probs);
  int64_t root = greedy ? argmax(logits, vocab) : sample(probs, rng);
  generated.push_back(root);
  int64_t cache_len = n;
  if (drafter) drafter->reset();
  if (drafter && budget > 1 && !is_stop(root)) {
    std::vector<int64_t> shifted(prompt.begin() + 1, prompt.end());
    shifted.push_back(root);
    drafter->extend(shifted, out[1].GetTensorData<float>(), s.tree_top_k);
  }
  stats.prefill_seconds = since(clock);
  const double graph_decode_start = graph_seconds();
  bool cancelled = deliver(generated);

  while (!cancelled && !is_stop(generated.back()) && int64_t(generated.size()) < budget) {
    clock = Clock::now();
    DraftTree tree = drafter ? drafter->propose(root, s.tree_top_k, s.tree_depth, s.tree_total_tokens,
                                                s.min_path_probability, s.min_grow_probability)
                             : chain_tree(root);
    if (s.ngram) {
      context.assign(prompt.begin(), prompt.end());
      context.insert(context.end(), generated.begin(), generated.end());
      graft(tree, lookup(context, size_t(s.ngram)));
    }
    tree.truncate(size_t(capacity - cache_len));  // parents precede children, so a prefix is a tree
    const int64_t t = int64_t(tree.size());
    positions.resize(size_t(t)), logit_rows.resize(size_t(t));
    for (int64_t i = 0; i < t; ++i)
      positions[size_t(i)] = cache_len + tree.depths[size_t(i)], logit_rows[size_t(i)] = i;
    const Mask mask = tree.attention_mask(cache_len);
    const auto drafted = Clock::now();
    stats.draft_seconds += std::chrono::duration<double>(drafted - clock).count();
    out = run_target(target, tree.tokens, positions, logit_rows, mask, vocab, feature_width);
    stats.verify_seconds += since(drafted);
    logits = out[0].GetTensorData<float>();
    int64_t bonus;
    if (greedy) {
      accept_greedy(tree, logits, vocab, path, bonus);
    } else {
      accept_sampling(tree, logits, vocab, s.temperature, s.top_p, s.top_k, rng, path, bonus);
    }
    new_tokens = emitted(tree, path, bonus, budget - int64_t(generated.size()), s.stop);
    generated.insert(generated.end(), new_tokens.begin(), new_tokens.end());
    ++stats.target_passes;

    std::vector<int64_t> slots(path.size());
    for (size_t i = 0; i < path.size(); ++i) slots[i] = cache_len + path[i];
    target.keep(cache_len, slots);  // accepted nodes move next to the committed context
    cache_len += int64_t(path.size());
    root = bonus;
    if (drafter && !is_stop(generated.back()) && int64_t(generated.size()) < budget) {
      const float *all = out[1].GetTensorData<float>();
      features.resize(path.size() * size_t(feature_width));
      for (size_t i = 0; i < path.size(); ++i)
        std::copy_n(all + path[i] * feature_width, feature_width, features.begin() + long(i) * feature_width);
      const auto extending = Clock::now();
      drafter->extend(new_tokens, features.data(), s.tree_top_k);
      stats.draft_seconds += since(extending);
    }
    stats.decode_seconds += since(clock);
    cancelled = deliver(new_tokens);
  }
  stats.new_tokens = int32_t(generated.size());
  stats.drafter_calls = drafter ? int32_t(drafter->calls) : 0;
  stats.graph_seconds = graph_seconds() - graph_decode_start;
  return cancelled ? EAGLEX_CANCELLED : EAGLEX_OK;
}

}  // namespace eaglex
