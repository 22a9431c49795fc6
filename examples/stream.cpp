// An example service loop over libeaglex: loads an artifact, reads prompts as token ids from stdin (one
// prompt per line, ids separated by spaces) and streams each completion's ids to stdout as they are
// accepted, one line per prompt; with "text", streams the completion's text instead (byte-level BPE
// tokenizers). Tokenize prompts with the artifact's tokenizer.json.
//   eaglex_stream ARTIFACT [max_new_tokens] [threads] [text]  <  prompts.txt
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <sstream>
#include <string>

#include "eaglex.hpp"

int main(int argc, char **argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s ARTIFACT [max_new_tokens] [threads] < token-id lines\n", argv[0]);
    return 2;
  }
  try {
    eaglex::Engine engine(argv[1], argc > 3 ? std::atoi(argv[3]) : 2);
    eaglex_config cfg = engine.default_config();
    if (argc > 2) cfg.max_new_tokens = std::atoi(argv[2]);
    const bool text = argc > 4 && std::string(argv[4]) == "text";
    std::string line;
    while (std::getline(std::cin, line)) {
      std::istringstream in(line);
      std::vector<int32_t> prompt;
      for (int32_t id; in >> id;) prompt.push_back(id);
      if (prompt.empty()) continue;
      eaglex_stats stats{};
      engine.generate(
          prompt, cfg,
          [&](const int32_t *tokens, size_t n) {
            if (text) {
              std::string piece = engine.detokenize(tokens, n);  // bytes: may end inside a character
              std::fwrite(piece.data(), 1, piece.size(), stdout);
            } else {
              for (size_t i = 0; i < n; ++i) std::printf("%d ", tokens[i]);
            }
            std::fflush(stdout);  // streamed: each verify pass's tokens appear as soon as they are accepted
            return true;
          },
          &stats);
      std::printf("\n");
      std::fprintf(stderr, "%d new tokens, %d target passes, %.1f tok/s\n", stats.new_tokens,
                   stats.target_passes, stats.decode_seconds > 0 ? (stats.new_tokens - 1) / stats.decode_seconds : 0.0);
    }
  } catch (const eaglex::Error &e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  }
  return 0;
}
