// The sampling rule of libeaglex (probabilities + accept_sampling) on a synthetic target whose logits are
// a formula of the prefix, driven by tests/test_native.py, which compares the counts with the exact
// distribution by a chi-square test (as tests/test_sampling_e2e.py does for the Python rule).
//   eaglex_sampling_test counts RUNS SEED [flawed]   prints the joint counts of the first two tokens
// Each run: a round verifies a tree of the target's 3 likeliest tokens with 2 likeliest children each; if
// it emits a single token, a second round with a tree of 3 children gives the second. "flawed" accepts a
// child with probability p(c) instead of the renormalised residual, which the test must detect.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <vector>

#include "core.h"

using namespace eaglex;

constexpr int V = 8;
constexpr float TEMPERATURE = 0.7f;

// Logits after a prefix (the tokens emitted so far): the same formula in tests/test_native.py.
std::vector<float> logits_after(const std::vector<int64_t> &prefix) {
  double h = 0.5;
  for (size_t i = 0; i < prefix.size(); ++i) h += double(i + 1) * double(prefix[i] + 1) * 0.37;
  std::vector<float> out(V);
  for (int v = 0; v < V; ++v) out[size_t(v)] = float(2.0 * std::sin(1.3 * v + h) + 0.25 * v);
  return out;
}

std::vector<int64_t> top(const std::vector<float> &logits, int k) {
  std::vector<int64_t> order(V);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return logits[size_t(a)] > logits[size_t(b)]; });
  order.resize(size_t(k));
  return order;
}

void flawed_accept(const DraftTree &tree, const float *logits, Rng &rng, std::vector<int64_t> &path, int64_t &bonus) {
  path.assign(1, 0);
  std::vector<double> p, residual;
  while (true) {
    int64_t node = path.back();
    probabilities(logits + node * V, V, TEMPERATURE, 1.0f, 0, p);
    residual = p;
    bool moved = false;
    for (size_t c = size_t(node) + 1; c < tree.size() && !moved; ++c) {
      if (tree.parents[c] != node) continue;
      size_t token = size_t(tree.tokens[c]);
      if (rng.uniform() < p[token]) path.push_back(int64_t(c)), moved = true;
      else residual[token] = 0.0;
    }
    if (!moved) return void(bonus = sample(residual, rng));
  }
}

// One verify round over a tree built from the target's own top tokens; appends the emitted tokens.
void round(std::vector<int64_t> &emitted, int64_t root, bool two_levels, bool flawed, Rng &rng) {
  DraftTree tree = chain_tree(root);
  std::vector<std::vector<int64_t>> prefixes{emitted};  // the prefix each node's logits follow
  for (int64_t child : top(logits_after(emitted), 3)) {
    tree.tokens.push_back(child), tree.parents.push_back(0), tree.depths.push_back(1);
    auto with_child = emitted;
    with_child.push_back(child);
    prefixes.push_back(with_child);
  }
  if (two_levels)
    for (int64_t node = 1; node <= 3; ++node)
      for (int64_t grandchild : top(logits_after(prefixes[size_t(node)]), 2)) {
        tree.tokens.push_back(grandchild), tree.parents.push_back(node), tree.depths.push_back(2);
        auto with = prefixes[size_t(node)];
        with.push_back(grandchild);
        prefixes.push_back(with);
      }
  std::vector<float> logits;
  for (auto &prefix : prefixes) {
    auto l = logits_after(prefix);
    logits.insert(logits.end(), l.begin(), l.end());
  }
  std::vector<int64_t> path;
  int64_t bonus;
  if (flawed) flawed_accept(tree, logits.data(), rng, path, bonus);
  else accept_sampling(tree, logits.data(), V, TEMPERATURE, 1.0f, 0, rng, path, bonus);
  for (size_t i = 1; i < path.size(); ++i) emitted.push_back(tree.tokens[size_t(path[i])]);
  emitted.push_back(bonus);
}

#define CHECK(cond)                                              \
  if (!(cond)) {                                                 \
    std::fprintf(stderr, "selftest failed: %s\n", #cond);        \
    return 1;                                                    \
  }

// probabilities' filters and sample on small hand-computed cases; prints "selftest: ok".
int selftest() {
  Rng a(7), b(7), c(8);
  bool differs = false;
  for (int i = 0; i < 100; ++i) {
    double x = a.uniform();
    CHECK(x == b.uniform() && x >= 0 && x < 1);
    differs |= x != c.uniform();
  }
  CHECK(differs);
  // softmax of log(0.5, 0.25, 0.125, 0.125): the probabilities themselves.
  const float logits[4] = {std::log(0.5f), std::log(0.25f), std::log(0.125f), std::log(0.125f)};
  std::vector<double> p;
  probabilities(logits, 4, 1.0f, 1.0f, 0, p);
  CHECK(std::fabs(p[0] - 0.5) < 1e-6 && std::fabs(p[3] - 0.125) < 1e-6);
  probabilities(logits, 4, 0.0f, 1.0f, 0, p);  // temperature 0: one-hot argmax
  CHECK(p[0] == 1.0 && p[1] == 0.0);
  probabilities(logits, 4, 1.0f, 0.7f, 0, p);  // the nucleus reaches 0.7 with the top two tokens
  CHECK(std::fabs(p[0] - 2.0 / 3) < 1e-6 && std::fabs(p[1] - 1.0 / 3) < 1e-6 && p[2] == 0 && p[3] == 0);
  probabilities(logits, 4, 1.0f, 0.8f, 0, p);  // 0.75 < 0.8: the third token joins, and its tie too
  CHECK(p[2] > 0 && p[3] > 0 && std::fabs(p[0] - 0.5) < 1e-6);
  probabilities(logits, 4, 1.0f, 1.0f, 1, p);  // top-k 1
  CHECK(p[0] == 1.0 && p[1] == 0.0);
  probabilities(logits, 4, 1.0f, 1.0f, 3, p);  // top-k 3 keeps the tie at the edge: all four
  CHECK(p[3] > 0);
  // sample never returns a zero-weight index, and follows the weights.
  std::vector<double> w{0.0, 3.0, 0.0, 1.0};
  int counts[4] = {0, 0, 0, 0};
  for (int i = 0; i < 40000; ++i) counts[sample(w, a)]++;
  CHECK(counts[0] == 0 && counts[2] == 0 && std::abs(counts[1] - 30000) < 600);
  std::printf("selftest: ok\n");
  return 0;
}

int main(int argc, char **argv) {
  if (argc >= 2 && !std::strcmp(argv[1], "selftest")) return selftest();
  if (argc < 4 || std::strcmp(argv[1], "counts")) return std::fprintf(stderr, "usage: counts RUNS SEED [flawed]\n"), 2;
  long runs = std::atol(argv[2]);
  bool flawed = argc > 4 && !std::strcmp(argv[4], "flawed");
  Rng rng(std::strtoull(argv[3], nullptr, 10));
  std::vector<long> counts(V * V, 0);
  for (long r = 0; r < runs; ++r) {
    // The first token is the prefill's sample; rounds then follow from it, as in generate.cpp.
    std::vector<double> p;
    auto first = logits_after({});
    probabilities(first.data(), V, TEMPERATURE, 1.0f, 0, p);
    std::vector<int64_t> emitted{sample(p, rng)};
    round(emitted, emitted[0], true, flawed, rng);
    if (emitted.size() < 3) round(emitted, emitted.back(), false, flawed, rng);
    counts[size_t(emitted[1] * V + emitted[2])]++;
  }
  for (int i = 0; i < V; ++i) {
    for (int j = 0; j < V; ++j) std::printf("%ld ", counts[size_t(i * V + j)]);
    std::printf("\n");
  }
  return 0;
}
