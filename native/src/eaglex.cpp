// The C API (include/eaglex.h): argument checks, error codes and the thread-local last error around the
// C++ engine. No exception crosses this boundary.
#include <dlfcn.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <mutex>
#include <new>

#include "engine.h"

#ifndef EAGLEX_ONNXRUNTIME_LIBRARY
#define EAGLEX_ONNXRUNTIME_LIBRARY "libonnxruntime.so.1"
#endif

struct eaglex_engine {
  eaglex::Engine engine;
};

namespace eaglex {

namespace {

thread_local std::string last_error;

int fail(int code, const std::string &message) {
  last_error = message;
  return code;
}

// onnxruntime is loaded at first use: the library named by $EAGLEX_ONNXRUNTIME_LIB, else the one found at
// build time (the onnxruntime Python wheel's, which ships libonnxruntime.so.1.x without a soname link, so
// it cannot be linked by name). Its C API is versioned: a newer library serves the headers' version.
Ort::Env &ort_env() {
  static std::once_flag once;
  static Ort::Env *env = nullptr;
  static std::string error;
  std::call_once(once, [] {
    const char *path = std::getenv("EAGLEX_ONNXRUNTIME_LIB");
    if (!path || !*path) path = EAGLEX_ONNXRUNTIME_LIBRARY;
    void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
      error = std::string("cannot load onnxruntime (") + dlerror() +
              "): pip install onnxruntime, or set EAGLEX_ONNXRUNTIME_LIB to a libonnxruntime.so";
      return;
    }
    auto get_base = reinterpret_cast<const OrtApiBase *(*)()>(dlsym(lib, "OrtGetApiBase"));
    const OrtApi *api = get_base ? get_base()->GetApi(ORT_API_VERSION) : nullptr;
    if (!api) {
      error = std::string(path) + " does not serve onnxruntime C API version " +
              std::to_string(ORT_API_VERSION) + ": use onnxruntime 1.21 or newer";
      return;
    }
    Ort::InitApi(api);
    env = new Ort::Env(ORT_LOGGING_LEVEL_ERROR, "eaglex");  // process-wide, never freed (as onnxruntime's)
  });
  if (!env) throw Error(EAGLEX_ERR_RUNTIME, error);
  return *env;
}

template <typename F>
int guarded(F &&body) {
  try {
    last_error.clear();
    return body();
  } catch (const Error &e) {
    return fail(e.code, e.what());
  } catch (const std::bad_alloc &) {
    return fail(EAGLEX_ERR_OUT_OF_MEMORY, "out of memory: close other engines or use a smaller artifact");
  } catch (const Ort::Exception &e) {
    return fail(EAGLEX_ERR_RUNTIME, std::string("onnxruntime: ") + e.what());
  } catch (const std::exception &e) {
    return fail(EAGLEX_ERR_RUNTIME, std::string("internal error: ") + e.what());
  }
}

}  // namespace

Engine::Engine(const std::string &dir, int threads, bool checksums) : manifest(load_manifest(dir, checksums)) {
  Ort::Env &env = ort_env();
  const Manifest &m = manifest;
  target_ = std::make_unique<Graph>(env, m.path(m.target_file), m.num_layers, m.num_kv_heads, m.head_dim,
                                    threads);
  if (!m.drafter_file.empty()) {
    drafter_graph_ = std::make_unique<Graph>(env, m.path(m.drafter_file), 1, m.drafter_kv_heads,
                                             m.drafter_head_dim, threads);
    embeddings_ = std::make_unique<EmbeddingTable>(m.path("embed_tokens.npy"));
    if (embeddings_->cols() != m.drafter_hidden || embeddings_->rows() < m.vocab_size)
      throw Error(EAGLEX_ERR_ARTIFACT, "embed_tokens.npy does not match the manifest's vocabulary and hidden "
                                       "size; re-run eaglex export");
    drafter_ = std::make_unique<Drafter>(*drafter_graph_, *embeddings_, 3 * m.hidden_size);
  }
}

void Engine::default_config(eaglex_config &cfg) const {
  cfg = eaglex_config{};
  cfg.max_new_tokens = 128;
  cfg.temperature = 0.0f;
  cfg.top_p = 1.0f;
  cfg.tree_top_k = int32_t(manifest.tree_top_k);
  cfg.tree_depth = int32_t(manifest.tree_depth);
  cfg.tree_total_tokens = int32_t(manifest.tree_total_tokens);
  cfg.speculative = drafter_ != nullptr && manifest.tree_speculative;  // as Engine.default_config in Python
  cfg.stop_at_eos = 1;
  cfg.ngram = int32_t(manifest.tree_ngram);
  cfg.tree_min_path_probability = manifest.tree_min_path_probability;
  cfg.tree_min_grow_probability = manifest.tree_min_grow_probability;
}

Settings Engine::check(const int32_t *prompt, size_t n_prompt, const eaglex_config &cfg) const {
  const Manifest &m = manifest;
  auto bad = [](const std::string &message) { return Error(EAGLEX_ERR_SETTINGS, message); };
  if (n_prompt == 0) throw Error(EAGLEX_ERR_PROMPT, "the prompt is empty: give at least one token");
  if (!prompt) throw bad("prompt is NULL but n_prompt is " + std::to_string(n_prompt));
  if (int64_t(n_prompt) >= target_->capacity)
    throw Error(EAGLEX_ERR_PROMPT_TOO_LONG,
                "the prompt has " + std::to_string(n_prompt) + " tokens but the artifact's context limit is " +
                    std::to_string(target_->capacity) + " (prompt plus at least one new token): shorten the "
                    "prompt or re-export with a larger --max-context");
  for (size_t i = 0; i < n_prompt; ++i)
    if (prompt[i] < 0 || prompt[i] >= m.vocab_size)
      throw Error(EAGLEX_ERR_PROMPT, "token id " + std::to_string(prompt[i]) + " is outside the vocabulary of " +
                                         std::to_string(m.vocab_size));
  Settings s;
  if (cfg.max_new_tokens < 1) throw bad("max_new_tokens must be at least 1, got " + std::to_string(cfg.max_new_tokens));
  if (!(std::isfinite(cfg.temperature) && cfg.temperature >= 0))
    throw bad("temperature must be a finite number >= 0 (0 = greedy), got " + std::to_string(cfg.temperature));
  if (!(cfg.top_p > 0 && cfg.top_p <= 1)) throw bad("top_p must be in (0, 1], got " + std::to_string(cfg.top_p));
  if (cfg.top_k < 0) throw bad("top_k must be >= 0 (0 = off), got " + std::to_string(cfg.top_k));
  s.max_new_tokens = cfg.max_new_tokens, s.temperature = cfg.temperature, s.top_p = cfg.top_p;
  s.top_k = cfg.top_k, s.seed = cfg.seed;
  s.speculative = cfg.speculative != 0 && drafter_ != nullptr;
  s.tree_top_k = cfg.tree_top_k ? cfg.tree_top_k : m.tree_top_k;
  s.tree_depth = cfg.tree_depth ? cfg.tree_depth : m.tree_depth;
  s.tree_total_tokens = cfg.tree_total_tokens ? cfg.tree_total_tokens : m.tree_total_tokens;
  if (s.speculative) {
    if (s.tree_top_k < 1 || s.tree_top_k > m.max_top_k)
      throw bad("tree_top_k must be between 1 and " + std::to_string(m.max_top_k) + " for this artifact, got " +
                std::to_string(s.tree_top_k));
    if (s.tree_depth < 1) throw bad("tree_depth must be at least 1, got " + std::to_string(s.tree_depth));
    if (s.tree_total_tokens < 1 || s.tree_total_tokens > m.tree_max_total_tokens)
      throw bad("tree_total_tokens must be between 1 and " + std::to_string(m.tree_max_total_tokens) +
                ", got " + std::to_string(s.tree_total_tokens));
  }
  const int64_t drafted = s.speculative ? s.tree_total_tokens : 1;
  if (cfg.ngram < 0 || cfg.ngram > m.tree_max_total_tokens - drafted)
    throw bad("ngram must be between 0 and " + std::to_string(m.tree_max_total_tokens - drafted) + " (the "
              "artifact's " + std::to_string(m.tree_max_total_tokens) + " tree tokens less the " +
              std::to_string(drafted) + " drafted), got " + std::to_string(cfg.ngram));
  s.ngram = cfg.ngram;
  for (auto [name, value] : {std::pair{"tree_min_path_probability", cfg.tree_min_path_probability},
                             std::pair{"tree_min_grow_probability", cfg.tree_min_grow_probability}})
    if (!(value >= 0 && value <= 1))  // NaN fails too
      throw bad(std::string(name) + " must be between 0 and 1 (0 = off), got " + std::to_string(value));
  s.min_path_probability = cfg.tree_min_path_probability;
  s.min_grow_probability = cfg.tree_min_grow_probability;
  if (cfg.stop_at_eos) s.stop = m.eos_token_ids;
  return s;
}

}  // namespace eaglex

using eaglex::fail;
using eaglex::guarded;

extern "C" {

int eaglex_abi_version(void) { return EAGLEX_ABI_VERSION; }

int eaglex_open_ex(const char *artifact_dir, const eaglex_open_options *options, eaglex_engine **out) {
  return guarded([&] {
    if (!out) return fail(EAGLEX_ERR_SETTINGS, "eaglex_open: out is NULL");
    *out = nullptr;
    if (!artifact_dir) return fail(EAGLEX_ERR_SETTINGS, "eaglex_open: artifact_dir is NULL");
    eaglex_open_options o = options ? *options : eaglex_open_options{2, EAGLEX_VERIFY_SHA256};
    if (o.threads < 1) return fail(EAGLEX_ERR_SETTINGS, "threads must be at least 1, got " + std::to_string(o.threads));
    if (o.verify != EAGLEX_VERIFY_SHA256 && o.verify != EAGLEX_VERIFY_SIZES)
      return fail(EAGLEX_ERR_SETTINGS, "verify must be EAGLEX_VERIFY_SHA256 or EAGLEX_VERIFY_SIZES");
    *out = new eaglex_engine{eaglex::Engine(artifact_dir, o.threads, o.verify == EAGLEX_VERIFY_SHA256)};
    return int(EAGLEX_OK);
  });
}

int eaglex_open(const char *artifact_dir, int threads, eaglex_engine **out) {
  eaglex_open_options options{threads, EAGLEX_VERIFY_SHA256};
  return eaglex_open_ex(artifact_dir, &options, out);
}

void eaglex_default_config(const eaglex_engine *e, eaglex_config *cfg) {
  if (!cfg) return;
  if (e) {
    e->engine.default_config(*cfg);
  } else {  // no artifact: plain greedy decoding settings
    *cfg = eaglex_config{};
    cfg->max_new_tokens = 128, cfg->top_p = 1.0f, cfg->stop_at_eos = 1;
  }
}

int eaglex_generate(eaglex_engine *e, const int32_t *prompt, size_t n_prompt, const eaglex_config *cfg,
                    eaglex_on_tokens cb, void *user, eaglex_stats *stats) {
  eaglex_stats local{};
  eaglex_stats &st = stats ? *stats : local;
  st = eaglex_stats{};
  return guarded([&] {
    if (!e) return fail(EAGLEX_ERR_SETTINGS, "eaglex_generate: engine is NULL (did eaglex_open fail?)");
    eaglex_config defaults;
    if (!cfg) e->engine.default_config(defaults), cfg = &defaults;
    eaglex::Settings s = e->engine.check(prompt, n_prompt, *cfg);
    if (e->engine.busy.exchange(true))
      return fail(EAGLEX_ERR_BUSY, "this engine is already generating (in another thread or from its own "
                                   "callback): open one engine per thread");
    struct Release {
      std::atomic<bool> &flag;
      ~Release() { flag = false; }
    } release{e->engine.busy};
    std::vector<int64_t> ids(prompt, prompt + n_prompt);
    int status = e->engine.generate(ids, s, cb, user, st);
    if (status == EAGLEX_CANCELLED) fail(status, "generation stopped early by the token callback");
    return status;
  });
}

int eaglex_detokenize(eaglex_engine *e, const int32_t *tokens, size_t n, char *out, size_t capacity,
                      size_t *length) {
  return guarded([&] {
    if (!e || !length || (n && !tokens) || (capacity && !out))
      return fail(EAGLEX_ERR_SETTINGS, "eaglex_detokenize: engine, length, tokens or out is NULL");
    std::string text = e->engine.detokenize(tokens, n);
    *length = text.size();
    if (capacity) {
      size_t copied = std::min(capacity - 1, text.size());
      std::memcpy(out, text.data(), copied);
      out[copied] = 0;
    }
    return int(EAGLEX_OK);
  });
}

void eaglex_close(eaglex_engine *e) { delete e; }

const char *eaglex_last_error(void) { return eaglex::last_error.c_str(); }

int32_t eaglex_context_length(const eaglex_engine *e) { return e ? int32_t(e->engine.target_->capacity) : 0; }

int32_t eaglex_vocab_size(const eaglex_engine *e) { return e ? int32_t(e->engine.manifest.vocab_size) : 0; }

int eaglex_has_drafter(const eaglex_engine *e) { return e && e->engine.drafter_ ? 1 : 0; }

}  // extern "C"
