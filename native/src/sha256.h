// SHA-256 of a file (FIPS 180-4), to check the artifact's checksums as the Python runtime does.
#pragma once

#include <string>

namespace eaglex {

// Lowercase hex digest of the file's bytes; throws std::runtime_error if it cannot be read.
std::string sha256_file(const std::string &path);

}  // namespace eaglex
