// libeaglex internals: the same pieces as the Python runtime (runtime/*.py), one idea per file.
#pragma once

#ifndef ORT_API_MANUAL_INIT
#define ORT_API_MANUAL_INIT
#endif
#include <onnxruntime_cxx_api.h>

#include <cstdint>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "eaglex.h"

namespace eaglex {

// An error with its eaglex_status; the message is one line that says what to do.
struct Error : std::runtime_error {
  int code;
  Error(int code, const std::string &message) : std::runtime_error(message), code(code) {}
};

// ---- manifest.cpp: manifest.json, checked as runtime/manifest.py checks it -----------------------------
struct Manifest {
  std::string root;
  std::string target_file, drafter_file;  // drafter_file empty: no drafter
  int64_t hidden_size = 0, num_layers = 0, num_kv_heads = 0, head_dim = 0, vocab_size = 0;
  int64_t drafter_kv_heads = 0, drafter_head_dim = 0, drafter_hidden = 0, max_top_k = 1;
  int64_t tree_top_k = 1, tree_depth = 1, tree_total_tokens = 1, tree_max_total_tokens = 1;
  bool tree_speculative = true;  // false where eaglex tune found plain decoding faster (manifest tree)
  int64_t tree_ngram = 0;        // prompt lookup's tokens per tree where eaglex tune found it faster
  double tree_min_path_probability = 0, tree_min_grow_probability = 0;  // the tree's cuts; 0: off
  std::vector<int64_t> eos_token_ids;
  std::string path(const std::string &name) const { return root + "/" + name; }
};
Manifest load_manifest(const std::string &dir, bool checksums);

// ---- npy.cpp: embed_tokens.npy, memory-mapped: only the rows used are read ------------------------------
class EmbeddingTable {
 public:
  explicit EmbeddingTable(const std::string &path);
  ~EmbeddingTable();
  EmbeddingTable(const EmbeddingTable &) = delete;
  EmbeddingTable &operator=(const EmbeddingTable &) = delete;
  const float *row(int64_t token) const { return data_ + token * cols_; }
  int64_t rows() const { return rows_; }
  int64_t cols() const { return cols_; }

 private:
  void *map_ = nullptr;
  size_t map_bytes_ = 0;
  const float *data_ = nullptr;
  int64_t rows_ = 0, cols_ = 0;
};

// ---- cpu_ops.cpp: the eaglex.cpu custom-op domain (exporter/packed_matmul.py, exporter/cpu_attention.py) ---
// packed_matmul.cpp: the few-row float32 MatMul; cpu_attention.cpp: GroupQueryAttention; int4_matmul.cpp:
// 4-bit MatMulNBits; each on AVX-512 or AVX2 + FMA CPUs (the MatMul's AVX2 variant only when asked). Each
// runs unless EAGLEX_PACKED_MATMUL / EAGLEX_CPU_ATTENTION / EAGLEX_INT4_MATMUL is "onnxruntime" ("avx2":
// the AVX2 variant, on any CPU with it).
// Each takes its AVX2 variant where `avx2` (cpu_ops.cpp's mode() decides).
void add_packed_matmul(Ort::CustomOpDomain &domain, bool avx2);
void add_cpu_attention(Ort::CustomOpDomain &domain, bool avx2);
void add_int4_matmul(Ort::CustomOpDomain &domain, bool avx2);  // x86 builds only
bool cpu_ops_on();                              // whether any kernel of the domain runs here
void add_cpu_ops(Ort::SessionOptions &options);  // registers the domain where cpu_ops_on()

// ---- graph.cpp: one graph with its KV cache bound in place (runtime/backends/onnxruntime.py) -------------
// The attention mask of a call: row s may attend to every slot < prefix, and to slot prefix + j where
// block[s * width + j] (width = total - prefix). That is every mask the loop builds.
struct Mask {
  int64_t rows = 0, prefix = 0, width = 0;
  std::vector<uint8_t> block;  // [rows, width]
  int64_t total() const { return prefix + width; }
};

struct Feed {
  const char *name;
  Ort::Value value;
};

class Graph {
 public:
  Graph(Ort::Env &env, const std::string &path, int64_t layers, int64_t kv_heads, int64_t head_dim,
        int threads);
  // Runs the graph on new rows written to cache slots [cache_len, mask.total()); returns the outputs
  // other than the caches, in the order of `outputs`.
  // shapes: when given, one per output: float outputs written into buffers this graph keeps and reuses
  // (valid until the next call), instead of tensors onnxruntime allocates per call.
  std::vector<Ort::Value> run(std::vector<Feed> &feeds, const Mask &mask,
                              const std::vector<const char *> &outputs,
                              const std::vector<std::vector<int64_t>> *shapes = nullptr);
  // Rows `slots` (absolute, ascending) move to start, start+1, ... (runtime/kv_cache.py's keep).
  void keep(int64_t start, const std::vector<int64_t> &slots);
  int64_t capacity = 0;
  double run_seconds = 0;  // time inside onnxruntime since construction

 private:
  void restore_cache_values();
  std::unique_ptr<Ort::Session> session_;
  Ort::MemoryInfo cpu_;
  int64_t layers_, kv_heads_, head_dim_;
  std::unique_ptr<float, void (*)(void *)> cache_;  // [layers, 2, 1, kv_heads, capacity, head_dim]
  std::vector<std::string> kv_input_names_, kv_output_names_;
  // The cache tensors are made once: per call only the feeds, the mask and the outputs change.
  std::vector<Ort::Value> kv_inputs_, kv_outputs_;
  std::vector<const char *> in_names_, out_names_;
  std::vector<Ort::Value> in_values_, out_values_;
  std::vector<float> bias_;
  std::vector<std::vector<float>> out_buffers_;
};

// Wraps a host buffer as a tensor (no copy): the buffer must outlive the call.
template <typename T>
Ort::Value tensor(const Ort::MemoryInfo &info, T *data, size_t count, std::vector<int64_t> shape) {
  return Ort::Value::CreateTensor<T>(info, data, count, shape.data(), shape.size());
}

// ---- tree.cpp: the dynamic draft tree (runtime/tree.py) -------------------------------------------------
struct DraftTree {
  std::vector<int64_t> tokens, parents, depths;  // node 0 = root, parents precede children
  size_t size() const { return tokens.size(); }
  void truncate(size_t n);
  Mask attention_mask(int64_t prefix) const;  // the target's verify mask over `prefix` committed slots
};
DraftTree chain_tree(int64_t root);
// Prompt lookup (runtime/ngram.py): up to `length` tokens that followed the latest earlier occurrence of the
// context's last n tokens, n from max_ngram down to min_ngram; and that path grafted under the root.
std::vector<int64_t> lookup(const std::vector<int64_t> &context, size_t length, int64_t max_ngram = 3,
                            int64_t min_ngram = 2);
void graft(DraftTree &tree, const std::vector<int64_t> &path);

class TreeBuilder {
 public:
  TreeBuilder(int64_t root, int64_t top_k);
  // Adds the drafter's top-k ([n_rows, k] row-major) of every frontier row; fills the next frontier's
  // tokens and the input rows they came from. Same order and ties as DraftTreeBuilder.add_level.
  void add_level(const float *logprobs, const int64_t *ids, int64_t n_rows, int64_t k,
                 std::vector<int64_t> &tokens, std::vector<int64_t> &parent_rows);
  const std::vector<uint8_t> &scratch() const { return scratch_; }  // [top_k, levels * top_k]
  int64_t scratch_width() const { return scratch_width_; }
  // Whether the frontier's likeliest path is at least this likely (a drafter call for the next level pays).
  bool worth_growing(double min_grow_probability) const;
  // The root and the best total_tokens - 1 pool entries of those whose path is at least this likely.
  DraftTree build(int64_t total_tokens, double min_path_probability = 0) const;

 private:
  int64_t root_, top_k_;
  std::vector<int64_t> tokens_, parents_, depths_;  // the pool; parents are pool indices, -1 = root
  std::vector<double> scores_;
  std::vector<int64_t> frontier_{-1};
  std::vector<double> frontier_scores_{0.0};
  std::vector<uint8_t> scratch_;
  int64_t scratch_width_ = 0, levels_ = 0;
};

// ---- sampling.cpp: the target's distribution and the acceptance rules (runtime/sampling.py, accept.py) ----
// xoshiro256** seeded by splitmix64: small, fast, and the same stream on every platform (numpy's PCG64
// is not reproduced, so sampled tokens differ from the Python runtime's for the same seed).
class Rng {
 public:
  explicit Rng(uint64_t seed);
  double uniform();  // [0, 1), 53 bits

 private:
  uint64_t s_[4];
};

// softmax(logits / temperature), top-k then nucleus, renormalised; temperature 0 gives a one-hot argmax.
void probabilities(const float *logits, int64_t vocab, float temperature, float top_p, int32_t top_k,
                   std::vector<double> &probs);
int64_t sample(const std::vector<double> &weights, Rng &rng);
int64_t argmax(const float *values, int64_t n);
// Accepted node indices (root first) and the bonus token. Greedy reads the argmax of the visited nodes'
// logit rows only (runtime/accept.py's RowArgmax): 2-4 rows of a 24-node tree, not all of them.
void accept_greedy(const DraftTree &tree, const float *logits, int64_t vocab, std::vector<int64_t> &path,
                   int64_t &bonus);
void accept_sampling(const DraftTree &tree, const float *logits, int64_t vocab, float temperature,
                     float top_p, int32_t top_k, Rng &rng, std::vector<int64_t> &path, int64_t &bonus);

// ---- drafter.cpp: the EAGLE-3 drafter at run time (runtime/draft.py) -------------------------------------
class Drafter {
 public:
  Drafter(Graph &graph, const EmbeddingTable &embeddings, int64_t feature_width);
  void reset() { cache_len_ = 0, calls = 0; }
  // Commits rows (features[i], tokens[i]); the last row's top-k becomes the next tree's first level.
  void extend(const std::vector<int64_t> &tokens, const float *features, int64_t top_k);
  DraftTree propose(int64_t root, int64_t top_k, int64_t depth, int64_t total_tokens,
                    double min_path_probability, double min_grow_probability);
  int64_t calls = 0;

 private:
  std::vector<Ort::Value> run(const std::vector<int64_t> &tokens, const float *features, int64_t n_features,
                              const float *hidden, int64_t n_hidden, int64_t position_start,
                              bool same_position, const Mask &mask, int64_t logit_rows, int64_t top_k);
  Graph &graph_;
  const EmbeddingTable &embeddings_;
  int64_t feature_width_, hidden_;
  int64_t cache_len_ = 0;
  std::vector<float> last_logprobs_, last_hidden_;
  std::vector<int64_t> last_ids_;
  std::vector<float> embeds_, hidden_buf_;
  std::vector<int64_t> positions_, logit_index_;
  int64_t top_k_value_ = 0;
  float empty_ = 0;
};

}  // namespace eaglex
