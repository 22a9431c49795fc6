// eaglex.hpp: a header-only C++17 RAII wrapper over the C API (eaglex.h). Errors become eaglex::Error
// (status code + the one-line message); the engine is closed when the object goes out of scope.
#pragma once

#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "eaglex.h"

namespace eaglex {

class Error : public std::runtime_error {
 public:
  Error(int status, const std::string &message) : std::runtime_error(message), status(status) {}
  int status;
};

class Engine {
 public:
  explicit Engine(const std::string &artifact_dir, int threads = 2,
                  eaglex_verify verify = EAGLEX_VERIFY_SHA256) {
    eaglex_open_options options{threads, verify};
    check(eaglex_open_ex(artifact_dir.c_str(), &options, &engine_));
  }
  ~Engine() { eaglex_close(engine_); }
  Engine(const Engine &) = delete;
  Engine &operator=(const Engine &) = delete;
  Engine(Engine &&other) noexcept : engine_(other.engine_) { other.engine_ = nullptr; }
  Engine &operator=(Engine &&other) noexcept {
    std::swap(engine_, other.engine_);
    return *this;
  }

  eaglex_config default_config() const {
    eaglex_config cfg;
    eaglex_default_config(engine_, &cfg);
    return cfg;
  }

  // Streams each accepted chunk to on_tokens (return false to stop early); returns every new token.
  // Stopping early is not an error: the tokens delivered so far are returned.
  std::vector<int32_t> generate(const std::vector<int32_t> &prompt, const eaglex_config &cfg,
                                const std::function<bool(const int32_t *, size_t)> &on_tokens = {},
                                eaglex_stats *stats = nullptr) {
    struct Call {
      const std::function<bool(const int32_t *, size_t)> &on_tokens;
      std::vector<int32_t> out;
    } call{on_tokens, {}};
    auto trampoline = [](const int32_t *tokens, size_t n, void *user) -> int {
      auto *c = static_cast<Call *>(user);
      c->out.insert(c->out.end(), tokens, tokens + n);
      return c->on_tokens && !c->on_tokens(tokens, n);
    };
    int status = eaglex_generate(engine_, prompt.data(), prompt.size(), &cfg, trampoline, &call, stats);
    if (status != EAGLEX_CANCELLED) check(status);
    return call.out;
  }

  // UTF-8 bytes of ids (byte-level BPE tokenizers; see eaglex_detokenize).
  std::string detokenize(const int32_t *tokens, size_t n) const {
    size_t length = 0;
    check(eaglex_detokenize(engine_, tokens, n, nullptr, 0, &length));
    std::string text(length + 1, '\0');
    check(eaglex_detokenize(engine_, tokens, n, text.data(), text.size(), &length));
    text.resize(length);
    return text;
  }

  int32_t context_length() const { return eaglex_context_length(engine_); }
  eaglex_engine *get() const { return engine_; }

 private:
  static void check(int status) {
    if (status != EAGLEX_OK) throw Error(status, eaglex_last_error());
  }
  eaglex_engine *engine_ = nullptr;
};

}  // namespace eaglex
