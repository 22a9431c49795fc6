// Token ids -> UTF-8 bytes for byte-level BPE tokenizers (GPT-2 style: SmolLM2, Llama 3, Qwen2), read from
// the artifact's tokenizer.json. Each vocabulary entry spells its bytes with GPT-2's byte-to-character
// table, so decoding is a per-token lookup and the bytes of consecutive chunks simply concatenate:
// a stream of chunks decodes to the same bytes as the whole sequence (Hugging Face's decode with
// skip_special_tokens=True, before its lossy UTF-8 conversion).
#include <fstream>
#include <sstream>

#include "engine.h"
#include "json.h"

namespace eaglex {

namespace {

// GPT-2's bytes_to_unicode, inverted: printable bytes stand for themselves, the other 68 bytes were
// shifted to code points 256, 257, ... in byte order.
std::vector<int> unicode_to_byte() {
  std::vector<int> table(512, -1);
  int shifted = 0;
  for (int b = 0; b < 256; ++b) {
    bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    table[size_t(printable ? b : 256 + shifted++)] = b;
  }
  return table;
}

// The bytes a vocabulary entry spells, or false if it is not a byte-level spelling.
bool spelled_bytes(const std::string &utf8, const std::vector<int> &table, std::string &out) {
  out.clear();
  for (size_t i = 0; i < utf8.size();) {
    unsigned c = (unsigned char)utf8[i];
    unsigned code;
    if (c < 0x80) code = c, i += 1;
    else if ((c >> 5) == 6 && i + 1 < utf8.size()) code = (c & 0x1F) << 6 | (utf8[i + 1] & 0x3F), i += 2;
    else return false;  // byte-level spellings use code points below 512 only
    if (code >= table.size() || table[code] < 0) return false;
    out += char(table[code]);
  }
  return true;
}

}  // namespace

void Engine::load_detokenizer() {
  const std::string path = manifest.path("tokenizer.json");
  auto unsupported = [&](const std::string &why) {
    return Error(EAGLEX_ERR_ARTIFACT, path + " " + why + ": libeaglex detokenizes byte-level BPE tokenizers "
                                                         "only; decode ids with the tokenizers library");
  };
  std::ifstream in(path, std::ios::binary);
  if (!in) throw unsupported("cannot be read");
  std::stringstream buffer;
  buffer << in.rdbuf();
  Json tokenizer;
  try {
    tokenizer = parse_json(buffer.str());
  } catch (const std::runtime_error &e) {
    throw unsupported(std::string("is not valid JSON (") + e.what() + ")");
  }
  const Json *model = tokenizer.get("model"), *decoder = tokenizer.get("decoder");
  const Json *type = model ? model->get("type") : nullptr, *decoder_type = decoder ? decoder->get("type") : nullptr;
  if (!type || type->string != "BPE" || !decoder_type || decoder_type->string != "ByteLevel")
    throw unsupported("is not a byte-level BPE tokenizer");
  const Json *vocab = model->get("vocab");
  if (!vocab || vocab->kind != Json::Object) throw unsupported("has no model.vocab");
  const std::vector<int> table = unicode_to_byte();
  pieces_.assign(size_t(manifest.vocab_size), std::string());
  std::string bytes;
  for (const auto &[spelling, id] : vocab->object) {
    int64_t index = int64_t(id.number);
    if (index >= 0 && index < manifest.vocab_size && spelled_bytes(spelling, table, bytes))
      pieces_[size_t(index)] = bytes;
  }
  // Added tokens: special ones are skipped (skip_special_tokens), the others read as their content.
  if (const Json *added = tokenizer.get("added_tokens"); added && added->kind == Json::Array)
    for (const Json &token : added->array) {
      const Json *id = token.get("id"), *content = token.get("content"), *special = token.get("special");
      if (!id || !content || id->number < 0 || id->number >= double(manifest.vocab_size)) continue;
      pieces_[size_t(id->number)] = special && special->boolean ? std::string() : content->string;
    }
}

std::string Engine::detokenize(const int32_t *tokens, size_t n) {
  std::call_once(detokenizer_once_, [this] {
    try {
      load_detokenizer();
    } catch (const Error &e) {
      detokenizer_error_ = e.what();
    }
  });
  if (!detokenizer_error_.empty()) throw Error(EAGLEX_ERR_ARTIFACT, detokenizer_error_);
  std::string text;
  for (size_t i = 0; i < n; ++i) {
    if (tokens[i] < 0 || tokens[i] >= manifest.vocab_size)
      throw Error(EAGLEX_ERR_PROMPT, "token id " + std::to_string(tokens[i]) + " is outside the vocabulary of " +
                                         std::to_string(manifest.vocab_size));
    text += pieces_[size_t(tokens[i])];
  }
  return text;
}

}  // namespace eaglex
