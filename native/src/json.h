// A small JSON reader for manifest.json: objects, arrays, strings, numbers, true/false/null.
// Enough for the artifact contract; it parses, it does not write.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace eaglex {

struct Json {
  enum Kind { Null, Bool, Number, String, Array, Object } kind = Null;
  bool boolean = false;
  double number = 0;
  std::string string;
  std::vector<Json> array;
  std::map<std::string, Json> object;

  // Member lookup: nullptr when this is not an object or lacks the key.
  const Json *get(const std::string &key) const;
  bool is_null() const { return kind == Null; }
};

// Parses text; throws std::runtime_error("... at offset N") on malformed input.
Json parse_json(const std::string &text);

}  // namespace eaglex
