/* The C API from C, driven by tests/test_native.py.
 *   c_api_test generate ARTIFACT THREADS key=value...  prompts (token ids, one per line) on stdin; prints
 *       "ids: ..." and "stats: ..." per prompt. keys: max_new temperature top_p top_k seed tree_top_k
 *       tree_depth tree_total speculative stop_at_eos ngram verify(0 sha256, 1 sizes)
 *   c_api_test threads ARTIFACT ROUNDS  prompts on stdin; two engines in two threads at once, each output
 *       compared with the single-threaded one ("threads: ok")
 *   c_api_test errors ARTIFACT DAMAGED_ARTIFACT  bad input returns the documented codes ("errors: ok")
 *   c_api_test detokenize ARTIFACT  token id lines on stdin; prints "hex: ..." (the text's bytes) per line,
 *       each chunk of 3 ids detokenized on its own and concatenated, as a stream would
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eaglex.h"

#define MAX_PROMPTS 16
#define MAX_TOKENS 4096

typedef struct {
  int32_t ids[MAX_TOKENS];
  size_t n;
  int stop_after; /* chunks to accept before asking to stop; 0 = never */
  int chunks;
} Collect;

static int collect(const int32_t *tokens, size_t n, void *user) {
  Collect *c = (Collect *)user;
  for (size_t i = 0; i < n && c->n < MAX_TOKENS; ++i) c->ids[c->n++] = tokens[i];
  c->chunks++;
  return c->stop_after && c->chunks >= c->stop_after;
}

static int32_t prompts[MAX_PROMPTS][MAX_TOKENS];
static size_t prompt_len[MAX_PROMPTS];
static int n_prompts;

static void read_prompts(void) {
  char line[65536];
  while (n_prompts < MAX_PROMPTS && fgets(line, sizeof line, stdin)) {
    size_t n = 0;
    for (char *tok = strtok(line, " \n"); tok && n < MAX_TOKENS; tok = strtok(NULL, " \n"))
      prompts[n_prompts][n++] = (int32_t)atol(tok);
    if (n) prompt_len[n_prompts++] = n;
  }
}

static int parse_config(eaglex_config *cfg, int *verify, int argc, char **argv) {
  for (int i = 0; i < argc; ++i) {
    const char *eq = strchr(argv[i], '=');
    if (!eq || eq - argv[i] >= 32) return fprintf(stderr, "bad setting %s\n", argv[i]), 0;
    char k[32];
    memcpy(k, argv[i], (size_t)(eq - argv[i]));
    k[eq - argv[i]] = 0;
    const char *v = eq + 1;
    if (!strcmp(k, "max_new")) cfg->max_new_tokens = atoi(v);
    else if (!strcmp(k, "temperature")) cfg->temperature = (float)atof(v);
    else if (!strcmp(k, "top_p")) cfg->top_p = (float)atof(v);
    else if (!strcmp(k, "top_k")) cfg->top_k = atoi(v);
    else if (!strcmp(k, "seed")) cfg->seed = strtoull(v, NULL, 10);
    else if (!strcmp(k, "tree_top_k")) cfg->tree_top_k = atoi(v);
    else if (!strcmp(k, "tree_depth")) cfg->tree_depth = atoi(v);
    else if (!strcmp(k, "tree_total")) cfg->tree_total_tokens = atoi(v);
    else if (!strcmp(k, "speculative")) cfg->speculative = atoi(v);
    else if (!strcmp(k, "stop_at_eos")) cfg->stop_at_eos = atoi(v);
    else if (!strcmp(k, "ngram")) cfg->ngram = atoi(v);
    else if (!strcmp(k, "verify")) *verify = atoi(v);
    else return fprintf(stderr, "unknown setting %s\n", k), 0;
  }
  return 1;
}

static int generate_mode(const char *artifact, int threads, int argc, char **argv) {
  eaglex_config cfg;
  int verify = EAGLEX_VERIFY_SHA256;
  eaglex_default_config(NULL, &cfg);
  eaglex_config probe = cfg;
  if (!parse_config(&probe, &verify, argc, argv)) return 2;
  eaglex_open_options options = {threads, verify};
  eaglex_engine *e = NULL;
  int status = eaglex_open_ex(artifact, &options, &e);
  if (status) return fprintf(stderr, "error %d: %s\n", status, eaglex_last_error()), 2;
  eaglex_default_config(e, &cfg);
  parse_config(&cfg, &verify, argc, argv); /* the same settings over the artifact's defaults */
  read_prompts();
  for (int p = 0; p < n_prompts; ++p) {
    Collect c = {.n = 0};
    eaglex_stats st;
    status = eaglex_generate(e, prompts[p], prompt_len[p], &cfg, collect, &c, &st);
    if (status) return fprintf(stderr, "error %d: %s\n", status, eaglex_last_error()), 2;
    printf("ids:");
    for (size_t i = 0; i < c.n; ++i) printf(" %d", c.ids[i]);
    printf("\nstats: prompt=%d new=%d passes=%d drafter_calls=%d prefill=%.6f decode=%.6f graph=%.6f\n",
           st.prompt_tokens, st.new_tokens, st.target_passes, st.drafter_calls, st.prefill_seconds,
           st.decode_seconds, st.graph_seconds);
  }
  eaglex_close(e);
  return 0;
}

/* ---- two engines in two threads ---- */
typedef struct {
  eaglex_engine *engine;
  int rounds;
  Collect out[MAX_PROMPTS];
  int status;
} Worker;

static eaglex_config thread_cfg;

static void *work(void *arg) {
  Worker *w = (Worker *)arg;
  for (int r = 0; r < w->rounds; ++r)
    for (int p = 0; p < n_prompts; ++p) {
      Collect c = {.n = 0};
      int status = eaglex_generate(w->engine, prompts[p], prompt_len[p], &thread_cfg, collect, &c, NULL);
      if (status) w->status = status;
      /* Every round must give the same tokens: keep the first and compare the others with it. */
      if (r == 0) w->out[p] = c;
      else if (c.n != w->out[p].n || memcmp(c.ids, w->out[p].ids, c.n * sizeof(int32_t))) w->status = -1;
    }
  return NULL;
}

static int threads_mode(const char *artifact, int rounds) {
  read_prompts();
  eaglex_engine *engines[2];
  for (int i = 0; i < 2; ++i)
    if (eaglex_open(artifact, 1, &engines[i])) return fprintf(stderr, "%s\n", eaglex_last_error()), 2;
  eaglex_default_config(engines[0], &thread_cfg);
  thread_cfg.max_new_tokens = 24;
  thread_cfg.stop_at_eos = 0;
  Worker single = {engines[0], 1, {{{0}}}, 0};
  work(&single); /* the reference: one engine, one thread */
  static Worker workers[2];
  pthread_t ids[2];
  for (int i = 0; i < 2; ++i) {
    workers[i].engine = engines[i], workers[i].rounds = rounds, workers[i].status = 0;
    pthread_create(&ids[i], NULL, work, &workers[i]);
  }
  for (int i = 0; i < 2; ++i) pthread_join(ids[i], NULL);
  int ok = single.status == 0;
  for (int i = 0; i < 2; ++i) {
    ok &= workers[i].status == 0;
    for (int p = 0; p < n_prompts; ++p)
      ok &= workers[i].out[p].n == single.out[p].n &&
            !memcmp(workers[i].out[p].ids, single.out[p].ids, single.out[p].n * sizeof(int32_t));
  }
  for (int i = 0; i < 2; ++i) eaglex_close(engines[i]);
  printf("threads: %s\n", ok ? "ok" : "MISMATCH");
  return ok ? 0 : 1;
}

/* ---- bad input ---- */
static int failures;

/* A callback that calls back into the engine generating: refused as busy, like a second thread. */
typedef struct {
  eaglex_engine *engine;
  int status;
  char message[256];
} Reenter;

static int reenter(const int32_t *tokens, size_t n, void *user) {
  Reenter *r = (Reenter *)user;
  r->status = eaglex_generate(r->engine, tokens, n, NULL, NULL, NULL, NULL);
  snprintf(r->message, sizeof r->message, "%s", eaglex_last_error());
  return 1;
}

static void expect(const char *what, int got, int want) {
  const char *message = eaglex_last_error();
  int one_line = strchr(message, '\n') == NULL && (want == 0 || strlen(message) > 10);
  printf("%s: status %d (want %d): %s\n", what, got, want, message);
  if (got != want || !one_line) failures++, printf("  FAILED\n");
}

static int errors_mode(const char *artifact, const char *damaged) {
  eaglex_engine *e = (eaglex_engine *)1;
  expect("missing artifact", eaglex_open("/nonexistent/artifact", 1, &e), EAGLEX_ERR_ARTIFACT);
  if (e != NULL) failures++, printf("  FAILED: *out not cleared\n");
  expect("damaged artifact", eaglex_open(damaged, 1, &e), EAGLEX_ERR_ARTIFACT);
  expect("NULL out", eaglex_open(artifact, 1, NULL), EAGLEX_ERR_SETTINGS);
  expect("zero threads", eaglex_open(artifact, 0, &e), EAGLEX_ERR_SETTINGS);
  int32_t prompt[3] = {5, 17, 42};
  expect("NULL engine", eaglex_generate(NULL, prompt, 3, NULL, NULL, NULL, NULL), EAGLEX_ERR_SETTINGS);

  eaglex_open_options sizes = {1, EAGLEX_VERIFY_SIZES};
  expect("open", eaglex_open_ex(artifact, &sizes, &e), EAGLEX_OK);
  if (!e) return 1;
  eaglex_config cfg, bad;
  eaglex_default_config(e, &cfg);
  cfg.max_new_tokens = 4;
  bad = cfg, bad.top_p = 0;
  expect("top_p 0", eaglex_generate(e, prompt, 3, &bad, NULL, NULL, NULL), EAGLEX_ERR_SETTINGS);
  bad = cfg, bad.temperature = -1;
  expect("temperature -1", eaglex_generate(e, prompt, 3, &bad, NULL, NULL, NULL), EAGLEX_ERR_SETTINGS);
  bad = cfg, bad.max_new_tokens = 0;
  expect("max_new_tokens 0", eaglex_generate(e, prompt, 3, &bad, NULL, NULL, NULL), EAGLEX_ERR_SETTINGS);
  bad = cfg, bad.tree_top_k = 1000;
  expect("tree_top_k 1000", eaglex_generate(e, prompt, 3, &bad, NULL, NULL, NULL), EAGLEX_ERR_SETTINGS);
  bad = cfg, bad.tree_total_tokens = 100000;
  expect("tree_total 100000", eaglex_generate(e, prompt, 3, &bad, NULL, NULL, NULL), EAGLEX_ERR_SETTINGS);
  bad = cfg, bad.ngram = -1;
  expect("ngram -1", eaglex_generate(e, prompt, 3, &bad, NULL, NULL, NULL), EAGLEX_ERR_SETTINGS);
  bad = cfg, bad.ngram = 100000;
  expect("ngram 100000", eaglex_generate(e, prompt, 3, &bad, NULL, NULL, NULL), EAGLEX_ERR_SETTINGS);
  bad = cfg, bad.tree_min_path_probability = 1.5;
  expect("path probability 1.5", eaglex_generate(e, prompt, 3, &bad, NULL, NULL, NULL), EAGLEX_ERR_SETTINGS);
  bad = cfg, bad.tree_min_grow_probability = -0.1;
  expect("grow probability -0.1", eaglex_generate(e, prompt, 3, &bad, NULL, NULL, NULL), EAGLEX_ERR_SETTINGS);
  expect("empty prompt", eaglex_generate(e, prompt, 0, &cfg, NULL, NULL, NULL), EAGLEX_ERR_PROMPT);
  int32_t outside[2] = {1, eaglex_vocab_size(e)};
  expect("token outside vocabulary", eaglex_generate(e, outside, 2, &cfg, NULL, NULL, NULL), EAGLEX_ERR_PROMPT);
  size_t n_long = (size_t)eaglex_context_length(e);
  int32_t *long_prompt = calloc(n_long, sizeof(int32_t));
  expect("prompt over the context", eaglex_generate(e, long_prompt, n_long, &cfg, NULL, NULL, NULL),
         EAGLEX_ERR_PROMPT_TOO_LONG);
  /* A prompt that leaves room for exactly one new token still works. */
  expect("prompt at the context limit", eaglex_generate(e, long_prompt, n_long - 1, &cfg, NULL, NULL, NULL),
         EAGLEX_OK);
  free(long_prompt);
  Collect c = {.n = 0, .stop_after = 2};
  cfg.max_new_tokens = 32, cfg.stop_at_eos = 0;
  expect("callback stops", eaglex_generate(e, prompt, 3, &cfg, collect, &c, NULL), EAGLEX_CANCELLED);
  if (c.chunks != 2) failures++, printf("  FAILED: %d chunks delivered after stopping at 2\n", c.chunks);
  Reenter r = {e, -1, ""};
  expect("callback stops", eaglex_generate(e, prompt, 3, &cfg, reenter, &r, NULL), EAGLEX_CANCELLED);
  printf("engine busy: status %d (want %d): %s\n", r.status, EAGLEX_ERR_BUSY, r.message);
  if (r.status != EAGLEX_ERR_BUSY || !strstr(r.message, "already generating")) failures++, printf("  FAILED\n");
  expect("engine usable after errors", eaglex_generate(e, prompt, 3, &cfg, NULL, NULL, NULL), EAGLEX_OK);
  eaglex_close(e);
  eaglex_close(NULL);
  printf("errors: %s\n", failures ? "FAILED" : "ok");
  return failures != 0;
}

static int detokenize_mode(const char *artifact) {
  eaglex_open_options sizes = {1, EAGLEX_VERIFY_SIZES};
  eaglex_engine *e = NULL;
  if (eaglex_open_ex(artifact, &sizes, &e)) return fprintf(stderr, "error: %s\n", eaglex_last_error()), 2;
  read_prompts();
  static char text[1 << 20];
  for (int p = 0; p < n_prompts; ++p) {
    size_t length = 0, total = 0;
    for (size_t start = 0; start < prompt_len[p]; start += 3) {
      size_t n = prompt_len[p] - start < 3 ? prompt_len[p] - start : 3;
      int status = eaglex_detokenize(e, prompts[p] + start, n, text + total, sizeof text - total, &length);
      if (status) return fprintf(stderr, "error %d: %s\n", status, eaglex_last_error()), 2;
      total += length;
    }
    /* A small buffer: truncated and NUL-terminated, with the full length reported. */
    char small[4];
    size_t full = 0;
    if (eaglex_detokenize(e, prompts[p], prompt_len[p], small, sizeof small, &full) || full != total ||
        strlen(small) != (total < 3 ? total : 3))
      return fprintf(stderr, "small buffer: length %zu, want %zu\n", full, total), 1;
    printf("hex:");
    for (size_t i = 0; i < total; ++i) printf("%02x", (unsigned char)text[i]);
    printf("\n");
  }
  eaglex_close(e);
  return 0;
}

int main(int argc, char **argv) {
  if (eaglex_abi_version() != EAGLEX_ABI_VERSION) return fprintf(stderr, "ABI version mismatch\n"), 2;
  if (argc >= 4 && !strcmp(argv[1], "generate")) return generate_mode(argv[2], atoi(argv[3]), argc - 4, argv + 4);
  if (argc == 4 && !strcmp(argv[1], "threads")) return threads_mode(argv[2], atoi(argv[3]));
  if (argc == 4 && !strcmp(argv[1], "errors")) return errors_mode(argv[2], argv[3]);
  if (argc == 3 && !strcmp(argv[1], "detokenize")) return detokenize_mode(argv[2]);
  fprintf(stderr, "usage: see the comment at the top of c_api_test.c\n");
  return 2;
}
