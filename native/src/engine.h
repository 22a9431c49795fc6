// The engine behind the C API: an artifact's graphs, caches and embedding table (runtime/engine.py).
#pragma once

#include <atomic>
#include <mutex>

#include "core.h"

namespace eaglex {

// eaglex_config after defaults and checks.
struct Settings {
  int64_t max_new_tokens = 128;
  float temperature = 0, top_p = 1;
  int32_t top_k = 0;
  uint64_t seed = 0;
  int64_t tree_top_k = 1, tree_depth = 1, tree_total_tokens = 1;
  bool speculative = false;
  int64_t ngram = 0;  // prompt lookup: tokens copied from the context per tree (runtime/ngram.py)
  double min_path_probability = 0, min_grow_probability = 0;  // the tree's cuts (runtime/tree.py)
  std::vector<int64_t> stop;
};

class Engine {
 public:
  Engine(const std::string &dir, int threads, bool checksums);
  // Checks the prompt and settings before any work (Engine.check in Python); throws Error.
  Settings check(const int32_t *prompt, size_t n_prompt, const eaglex_config &cfg) const;
  int generate(const std::vector<int64_t> &prompt, const Settings &s, eaglex_on_tokens cb, void *user,
               eaglex_stats &stats);
  void default_config(eaglex_config &cfg) const;
  double graph_seconds() const { return target_->run_seconds + (drafter_graph_ ? drafter_graph_->run_seconds : 0); }

  // UTF-8 bytes of tokens (byte-level BPE tokenizers; special tokens skipped). Thread-safe.
  std::string detokenize(const int32_t *tokens, size_t n);

  Manifest manifest;
  std::unique_ptr<Graph> target_, drafter_graph_;
  std::unique_ptr<EmbeddingTable> embeddings_;
  std::unique_ptr<Drafter> drafter_;
  std::atomic<bool> busy{false};

 private:
  void load_detokenizer();  // tokenizer.json, read at the first detokenize call
  std::once_flag detokenizer_once_;
  std::string detokenizer_error_;
  std::vector<std::string> pieces_;  // token id -> its bytes
};

}  // namespace eaglex
