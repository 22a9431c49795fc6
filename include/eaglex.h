/*
 * eaglex.h: libeaglex, the native eaglex runtime behind a small, stable C ABI.
 *
 * libeaglex loads an artifact written by `eaglex export` (docs/ARTIFACT.md) and runs the same lossless
 * EAGLE-3 draft-verify loop as the Python runtime (runtime/generate.py) on onnxruntime's CPU execution
 * provider: greedy output equals plain greedy decoding token for token, and sampling keeps the target's
 * distribution. Guide: docs/EMBEDDING.md.
 *
 * Conventions
 * - Every function that can fail returns an eaglex_status: 0 (EAGLEX_OK) on success, a positive code
 *   otherwise. After a failure, eaglex_last_error() gives a one-line message for the calling thread that
 *   says what is wrong and what to do.
 * - Token ids are the target's vocabulary ids (int32). libeaglex does not tokenize text: encode prompts with
 *   the artifact's tokenizer.json (any Hugging Face tokenizers binding); eaglex_detokenize turns ids into
 *   text for byte-level BPE tokenizers.
 * - Threads: engines share nothing, so several engines may run at once in several threads. One engine
 *   runs one generation at a time; a second concurrent eaglex_generate on the same engine is refused
 *   with EAGLEX_ERR_BUSY (it never corrupts the first).
 * - ABI: structs are passed by pointer and only grow at their end under a new EAGLEX_ABI_VERSION; compare
 *   eaglex_abi_version() with EAGLEX_ABI_VERSION when loading the library dynamically.
 */
#ifndef EAGLEX_H
#define EAGLEX_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define EAGLEX_ABI_VERSION 4

#if defined(_WIN32)
#define EAGLEX_API __declspec(dllexport)
#else
#define EAGLEX_API __attribute__((visibility("default")))
#endif

/* Return codes. */
typedef enum {
  EAGLEX_OK = 0,
  EAGLEX_ERR_ARTIFACT = 1,         /* artifact missing, damaged (size/checksum), unknown version, unloadable */
  EAGLEX_ERR_SETTINGS = 2,         /* invalid argument or eaglex_config field (NULL pointer, top_p 0, ...) */
  EAGLEX_ERR_PROMPT = 3,           /* prompt empty or holds a token id outside the vocabulary */
  EAGLEX_ERR_PROMPT_TOO_LONG = 4,  /* prompt tokens >= the artifact's context (max_context) */
  EAGLEX_ERR_OUT_OF_MEMORY = 5,    /* an allocation failed */
  EAGLEX_CANCELLED = 6,            /* the token callback returned non-zero; the tokens so far were delivered */
  EAGLEX_ERR_BUSY = 7,             /* this engine is already generating (another thread, or its callback) */
  EAGLEX_ERR_RUNTIME = 8           /* onnxruntime failed while running a graph (message says which) */
} eaglex_status;

/* Opaque engine: an artifact's graphs, preallocated KV caches and embedding table. */
typedef struct eaglex_engine eaglex_engine;

/* Per-call settings. Fill with eaglex_default_config, then change fields. */
typedef struct {
  int32_t max_new_tokens; /* >= 1; also capped by the context left after the prompt */
  float temperature;      /* 0 = greedy; > 0 samples from softmax(logits / temperature) */
  float top_p;            /* nucleus, in (0, 1]; 1 = off */
  int32_t top_k;          /* sampling: keep the k likeliest tokens (and ties) before top_p; 0 = off */
  uint64_t seed;          /* sampling seed: the same seed, prompt and settings give the same tokens */
  int32_t tree_top_k;     /* draft tree: children per node and frontier width, 1..drafter max_top_k */
  int32_t tree_depth;     /* draft tree: levels below the root (drafter calls per round), >= 1 */
  int32_t tree_total_tokens; /* draft tree: nodes verified per target pass, root included, 1..max_total */
  /* tree fields 0 = the artifact's tuned tree (manifest "tree") */
  int32_t speculative; /* 0 = plain decoding (the drafter is not used) */
  int32_t stop_at_eos; /* 1 = stop after the artifact's eos token ids (default); 0 = ignore them */
  /* ABI 2: */
  int32_t ngram; /* prompt lookup: up to this many tokens copied from the context join each draft tree
                    (0 = off; default: the manifest's tree.ngram; at most the artifact's max_total_tokens
                    less the drafted nodes) */
  /* ABI 3: the tree shrinks where the drafter is unsure; tree_top_k, tree_depth and tree_total_tokens
     stay its caps. Both in [0, 1], 0 = off; default: the manifest's tree (written by eaglex tune). */
  double tree_min_path_probability; /* verify a drafted node only if the drafter gives its path at least
                                       this probability */
  double tree_min_grow_probability; /* grow the tree a level deeper only while its likeliest path is at
                                       least this likely */
} eaglex_config;

/* What a generation did. */
typedef struct {
  int32_t prompt_tokens;
  int32_t new_tokens;
  int32_t target_passes;   /* verify passes after the prefill (one per decoding round) */
  int32_t drafter_calls;
  double prefill_seconds;  /* prompt pass (+ the drafter's first extend) */
  double decode_seconds;   /* all rounds: drafting + verification + host work between them */
  double graph_seconds;    /* of decode_seconds, the time inside onnxruntime (both graphs) */
  /* ABI 4: decode_seconds in parts, as the Python runtime's GenerationStats splits it. */
  double draft_seconds;  /* drafter calls, tree growth and prompt lookup */
  double verify_seconds; /* target passes */
} eaglex_stats;

/* Receives the tokens of each target pass as they are accepted (n >= 1). Return 0 to go on, non-zero
 * to stop early: eaglex_generate then returns EAGLEX_CANCELLED. */
typedef int (*eaglex_on_tokens)(const int32_t *tokens, size_t n, void *user);

/* Checks done by eaglex_open_ex on the artifact's files (manifest "files"). */
typedef enum {
  EAGLEX_VERIFY_SHA256 = 0, /* sizes and sha256 checksums (default; reads every byte once, ~1-3 s) */
  EAGLEX_VERIFY_SIZES = 1   /* sizes only: a truncated file is caught, silent corruption is not */
} eaglex_verify;

typedef struct {
  int32_t threads; /* onnxruntime intra-op threads per graph, >= 1 (2 on a 2-core machine) */
  int32_t verify;  /* an eaglex_verify */
} eaglex_open_options;

/* The header's ABI version as the library was built (EAGLEX_ABI_VERSION). */
EAGLEX_API int eaglex_abi_version(void);

/* Loads an artifact folder with `threads` onnxruntime threads and sha256 checks. On success *out holds
 * an engine to free with eaglex_close; on failure *out is NULL. */
EAGLEX_API int eaglex_open(const char *artifact_dir, int threads, eaglex_engine **out);

/* The same with explicit options (options may be NULL: threads 2, sha256). */
EAGLEX_API int eaglex_open_ex(const char *artifact_dir, const eaglex_open_options *options,
                              eaglex_engine **out);

/* Fills cfg with the defaults: 128 new tokens, greedy, top_p 1, seed 0, the artifact's tuned tree,
 * speculative when the artifact has a drafter and its manifest does not say plain decoding is faster
 * (tree.speculative, written by eaglex tune), stop at eos, and prompt lookup where the manifest asks for it
 * (tree.ngram, written by eaglex tune where it was faster; else 0; set it to 0 when choosing another
 * mode, as the Python API does). */
EAGLEX_API void eaglex_default_config(const eaglex_engine *e, eaglex_config *cfg);

/* Generates a continuation of prompt[0..n_prompt). cfg may be NULL (defaults); cb and stats may be NULL.
 * Settings are checked before any work (EAGLEX_ERR_SETTINGS, EAGLEX_ERR_PROMPT, EAGLEX_ERR_PROMPT_TOO_LONG).
 * stats, when given, is filled on return whatever the status. */
EAGLEX_API int eaglex_generate(eaglex_engine *e, const int32_t *prompt, size_t n_prompt,
                               const eaglex_config *cfg, eaglex_on_tokens cb, void *user,
                               eaglex_stats *stats);

/* Text of token ids, for byte-level BPE tokenizers (SmolLM2, Llama 3, Qwen2: tokenizer.json with a BPE model
 * and a ByteLevel decoder); special tokens are skipped. Writes the UTF-8 bytes to out, NUL-terminated,
 * truncated to capacity - 1 bytes, and sets *length to the full length (call again with a larger buffer
 * when *length >= capacity). Bytes of consecutive chunks concatenate to the bytes of the whole sequence,
 * so a stream may decode each chunk as it arrives (a chunk can end inside a multi-byte character).
 * The tokenizer is read at the first call (EAGLEX_ERR_ARTIFACT for other tokenizer kinds). Thread-safe. */
EAGLEX_API int eaglex_detokenize(eaglex_engine *e, const int32_t *tokens, size_t n, char *out,
                                 size_t capacity, size_t *length);

/* Frees an engine (NULL is fine). Must not race a running eaglex_generate on the same engine. */
EAGLEX_API void eaglex_close(eaglex_engine *e);

/* The calling thread's last error message ("" if none): one line, says what to do. Valid until the
 * thread's next libeaglex call. */
EAGLEX_API const char *eaglex_last_error(void);

/* Artifact facts: the KV capacity (max_context), the vocabulary size, whether it has a drafter. */
EAGLEX_API int32_t eaglex_context_length(const eaglex_engine *e);
EAGLEX_API int32_t eaglex_vocab_size(const eaglex_engine *e);
EAGLEX_API int eaglex_has_drafter(const eaglex_engine *e);

#ifdef __cplusplus
}
#endif

#endif /* EAGLEX_H */
