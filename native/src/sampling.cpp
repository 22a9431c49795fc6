// The target's next-token distribution and the two acceptance rules (runtime/sampling.py and
// runtime/accept.py, where the proofs are): emitted tokens follow plain decoding with the target exactly.
#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <numeric>

#include "core.h"

namespace eaglex {

namespace {

uint64_t splitmix64(uint64_t &x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

// Zeroes every weight below the n-th largest (ties with it are all kept, so a sort's tie order does not
// matter); `scratch` receives the weights in descending order up to n.
void keep_largest(std::vector<double> &probs, size_t n, std::vector<double> &scratch) {
  scratch = probs;
  std::nth_element(scratch.begin(), scratch.begin() + long(n - 1), scratch.end(), std::greater<double>());
  double threshold = scratch[n - 1];
  for (double &p : probs)
    if (p < threshold) p = 0.0;
}

void normalise(std::vector<double> &probs) {
  double total = std::accumulate(probs.begin(), probs.end(), 0.0);
  for (double &p : probs) p /= total;
}

}  // namespace

Rng::Rng(uint64_t seed) {
  for (uint64_t &s : s_) s = splitmix64(seed);
}

double Rng::uniform() {
  const uint64_t result = rotl(s_[1] * 5, 7) * 9, t = s_[1] << 17;
  s_[2] ^= s_[0], s_[3] ^= s_[1], s_[1] ^= s_[2], s_[0] ^= s_[3], s_[2] ^= t, s_[3] = rotl(s_[3], 45);
  return double(result >> 11) * 0x1.0p-53;
}

// Compiled for AVX-512, AVX2 and the baseline, chosen at load time (as numpy dispatches its argmax).
#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
int64_t argmax(const float *values, int64_t n) {
  // Two passes: the maximum over 32 independent lanes (vectorised compares and blends, no index to carry),
  // then the first index holding it, as numpy's argmax breaks ties. 5.5 us for 49,152 logits against 9 us
  // for one pass that carried indices (Zen 5).
  constexpr int L = 32;
  float best[L];
  for (int j = 0; j < L; ++j) best[j] = -std::numeric_limits<float>::infinity();
  int64_t i = 0;
  for (; i + L <= n; i += L)
    for (int j = 0; j < L; ++j) best[j] = values[i + j] > best[j] ? values[i + j] : best[j];
  float max = -std::numeric_limits<float>::infinity();
  for (int j = 0; j < L; ++j) max = best[j] > max ? best[j] : max;
  for (; i < n; ++i) max = values[i] > max ? values[i] : max;
  for (int64_t k = 0; k < n; ++k)
    if (values[k] == max) return k;
  return std::max_element(values, values + n) - values;  // NaNs only
}

void probabilities(const float *logits, int64_t vocab, float temperature, float top_p, int32_t top_k,
                   std::vector<double> &probs) {
  probs.assign(size_t(vocab), 0.0);
  if (temperature == 0) {
    probs[size_t(argmax(logits, vocab))] = 1.0;
    return;
  }
  double max = *std::max_element(logits, logits + vocab) / double(temperature);
  for (int64_t i = 0; i < vocab; ++i) probs[size_t(i)] = std::exp(double(logits[i]) / double(temperature) - max);
  normalise(probs);
  thread_local std::vector<double> desc;
  if (top_k > 0 && top_k < vocab) {
    keep_largest(probs, size_t(top_k), desc);
    normalise(probs);
  }
  if (top_p < 1) {
    // The nucleus ends at the first token (in descending order) whose inclusion reaches top_p; tokens tied
    // with the last kept one are all kept. Only the largest values matter: sort the top 1024 unless they
    // fall short of top_p (a very flat distribution).
    size_t m = std::min(size_t(vocab), size_t(1024));
    while (true) {
      desc = probs;
      std::partial_sort(desc.begin(), desc.begin() + long(m), desc.end(), std::greater<double>());
      double cum = 0;
      size_t n_keep = 0;
      for (size_t i = 0; i < m; ++i) {
        if (cum < top_p) n_keep = i + 1;  // cum - desc[i] < top_p, with cum the sum before token i
        cum += desc[i];
      }
      if (cum >= top_p || m == size_t(vocab)) {
        keep_largest(probs, n_keep, desc);
        break;
      }
      m = size_t(vocab);
    }
    normalise(probs);
  }
}

int64_t sample(const std::vector<double> &weights, Rng &rng) {
  // Inverse CDF, first index whose running sum exceeds u * total: never a zero-weight index.
  double total = std::accumulate(weights.begin(), weights.end(), 0.0);
  double x = rng.uniform() * total, cum = 0;
  for (size_t i = 0; i < weights.size(); ++i) {
    cum += weights[i];
    if (cum > x) return int64_t(i);
  }
  // Rounding can leave x == total; the last index with weight is then the right answer.
  for (size_t i = weights.size(); i-- > 0;)
    if (weights[i] > 0) return int64_t(i);
  return 0;
}

namespace {

// Children of `node` in ascending index order: the order in which acceptance tries siblings.
template <typename F>
bool for_children(const DraftTree &tree, int64_t node, F &&visit) {
  for (size_t c = size_t(node) + 1; c < tree.size(); ++c)
    if (tree.parents[c] == node && visit(int64_t(c))) return true;
  return false;
}

}  // namespace

void accept_greedy(const DraftTree &tree, const float *logits, int64_t vocab, std::vector<int64_t> &path,
                   int64_t &bonus) {
  path.assign(1, 0);
  while (true) {
    int64_t node = path.back(), want = argmax(logits + node * vocab, vocab), next = -1;
    for_children(tree, node, [&](int64_t c) { return tree.tokens[size_t(c)] == want ? (next = c, true) : false; });
    if (next < 0) {
      bonus = want;
      return;
    }
    path.push_back(next);
  }
}

void accept_sampling(const DraftTree &tree, const float *logits, int64_t vocab, float temperature,
                     float top_p, int32_t top_k, Rng &rng, std::vector<int64_t> &path, int64_t &bonus) {
  // At each node, with p the target distribution: accept child c with probability r(c), r = p with the
  // already-rejected siblings zeroed and renormalised; when all are rejected, the bonus is drawn from r.
  path.assign(1, 0);
  thread_local std::vector<double> residual;
  while (true) {
    int64_t node = path.back();
    probabilities(logits + node * vocab, vocab, temperature, top_p, top_k, residual);
    bool moved = for_children(tree, node, [&](int64_t c) {
      size_t token = size_t(tree.tokens[size_t(c)]);
      // The mass is re-summed rather than updated by subtraction: with one token left its acceptance
      // probability is then exactly 1, so the residual never ends up all zero.
      double mass = std::accumulate(residual.begin(), residual.end(), 0.0);
      if (rng.uniform() * mass < residual[token]) return path.push_back(c), true;
      residual[token] = 0.0;
      return false;
    });
    if (!moved) {
      bonus = sample(residual, rng);
      return;
    }
  }
}

}  // namespace eaglex
