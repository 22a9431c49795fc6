#include "json.h"

#include <cstdlib>
#include <stdexcept>

namespace eaglex {

const Json *Json::get(const std::string &key) const {
  if (kind != Object) return nullptr;
  auto it = object.find(key);
  return it == object.end() ? nullptr : &it->second;
}

namespace {

struct Parser {
  const std::string &s;
  size_t i = 0;
  int depth = 0;

  [[noreturn]] void fail(const char *what) const {
    throw std::runtime_error(std::string(what) + " at offset " + std::to_string(i));
  }
  void skip() {
    while (i < s.size() && (s[i] == ' ' || s[i] == '\n' || s[i] == '\r' || s[i] == '\t')) ++i;
  }
  bool eat(char c) {
    skip();
    if (i < s.size() && s[i] == c) return ++i, true;
    return false;
  }
  void expect(const char *word) {
    for (const char *p = word; *p; ++p, ++i)
      if (i >= s.size() || s[i] != *p) fail("unexpected character");
  }

  Json value() {
    skip();
    if (i >= s.size()) fail("unexpected end of text");
    if (++depth > 64) fail("nesting too deep");
    Json v;
    char c = s[i];
    if (c == '{') {
      v.kind = Json::Object, ++i;
      if (!eat('}')) {
        do {
          skip();
          if (i >= s.size() || s[i] != '"') fail("expected a string key");
          std::string key = string();
          if (!eat(':')) fail("expected ':'");
          v.object[key] = value();
        } while (eat(','));
        if (!eat('}')) fail("expected ',' or '}'");
      }
    } else if (c == '[') {
      v.kind = Json::Array, ++i;
      if (!eat(']')) {
        do v.array.push_back(value());
        while (eat(','));
        if (!eat(']')) fail("expected ',' or ']'");
      }
    } else if (c == '"') {
      v.kind = Json::String, v.string = string();
    } else if (c == 't') {
      expect("true"), v.kind = Json::Bool, v.boolean = true;
    } else if (c == 'f') {
      expect("false"), v.kind = Json::Bool;
    } else if (c == 'n') {
      expect("null");
    } else if (c == '-' || (c >= '0' && c <= '9')) {
      const char *start = s.c_str() + i;
      char *end = nullptr;
      v.kind = Json::Number, v.number = std::strtod(start, &end);
      if (end == start) fail("bad number");
      i += size_t(end - start);
    } else {
      fail("unexpected character");
    }
    --depth;
    return v;
  }

  std::string string() {
    std::string out;
    ++i;  // opening quote
    while (true) {
      if (i >= s.size()) fail("unterminated string");
      char c = s[i++];
      if (c == '"') return out;
      if (c != '\\') {
        out += c;
        continue;
      }
      if (i >= s.size()) fail("unterminated string");
      char e = s[i++];
      switch (e) {
        case 'n': out += '\n'; break;
        case 't': out += '\t'; break;
        case 'r': out += '\r'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'u': {
          if (i + 4 > s.size()) fail("bad \\u escape");
          unsigned code = unsigned(std::strtoul(s.substr(i, 4).c_str(), nullptr, 16));
          i += 4;
          // UTF-8 of the BMP code point (surrogate pairs are kept as two 3-byte sequences: file names in
          // a manifest are ASCII, so nothing here depends on them).
          if (code < 0x80) {
            out += char(code);
          } else if (code < 0x800) {
            out += char(0xC0 | (code >> 6)), out += char(0x80 | (code & 0x3F));
          } else {
            out += char(0xE0 | (code >> 12)), out += char(0x80 | ((code >> 6) & 0x3F));
            out += char(0x80 | (code & 0x3F));
          }
          break;
        }
        default: out += e;  // \" \\ \/
      }
    }
  }
};

}  // namespace

Json parse_json(const std::string &text) {
  Parser p{text};
  Json v = p.value();
  p.skip();
  if (p.i != text.size()) p.fail("trailing characters");
  return v;
}

}  // namespace eaglex
