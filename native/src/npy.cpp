// embed_tokens.npy ([vocab, hidden] little-endian float32, C order), memory-mapped read-only.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <cstdio>

#include "core.h"

namespace eaglex {

EmbeddingTable::EmbeddingTable(const std::string &path) {
  auto bad = [&](const std::string &why) {
    return Error(EAGLEX_ERR_ARTIFACT, path + " " + why + "; re-run eaglex export");
  };
  int fd = open(path.c_str(), O_RDONLY);
  if (fd < 0) throw bad("cannot be opened");
  struct stat st;
  fstat(fd, &st);
  map_bytes_ = size_t(st.st_size);
  map_ = map_bytes_ ? mmap(nullptr, map_bytes_, PROT_READ, MAP_SHARED, fd, 0) : MAP_FAILED;
  close(fd);
  if (map_ == MAP_FAILED) {
    map_ = nullptr;
    throw bad("cannot be memory-mapped");
  }
  // Header: magic, version (major, minor), header length (2 bytes in v1, 4 in v2/v3), a Python dict.
  const auto *bytes = static_cast<const unsigned char *>(map_);
  if (map_bytes_ < 12 || std::memcmp(bytes, "\x93NUMPY", 6) != 0) {
    munmap(map_, map_bytes_), map_ = nullptr;
    throw bad("is not a .npy file");
  }
  size_t header_len, start;
  if (bytes[6] == 1) {
    header_len = bytes[8] | size_t(bytes[9]) << 8, start = 10;
  } else {
    header_len = bytes[8] | size_t(bytes[9]) << 8 | size_t(bytes[10]) << 16 | size_t(bytes[11]) << 24;
    start = 12;
  }
  if (start + header_len > map_bytes_) {
    munmap(map_, map_bytes_), map_ = nullptr;
    throw bad("has a truncated header");
  }
  std::string header(reinterpret_cast<const char *>(bytes) + start, header_len);
  size_t shape = header.find("'shape': (");
  long long rows = 0, cols = 0;
  bool ok = header.find("'descr': '<f4'") != std::string::npos &&
            header.find("'fortran_order': False") != std::string::npos && shape != std::string::npos &&
            std::sscanf(header.c_str() + shape, "'shape': (%lld, %lld)", &rows, &cols) == 2 && rows > 0 &&
            cols > 0;
  rows_ = rows, cols_ = cols;
  size_t offset = start + header_len;
  if (!ok || offset + size_t(rows_ * cols_) * 4 > map_bytes_) {
    munmap(map_, map_bytes_), map_ = nullptr;
    throw bad("is not a [vocab, hidden] float32 C-order array");
  }
  data_ = reinterpret_cast<const float *>(bytes + offset);
}

EmbeddingTable::~EmbeddingTable() {
  if (map_) munmap(map_, map_bytes_);
  map_ = nullptr;
}

}  // namespace eaglex
